//! Declarative networking for the device, run inside `cairnd`.
//!
//! The machine config's `network` section ([`config`], parsed and checked without a kernel in
//! `cairn_facts::network`) says what the links should look like; this crate makes the kernel
//! agree and keeps it that way. Each module owns one protocol:
//!
//! - `rtnl`: the kernel's links, addresses and routes over rtnetlink, a pure `plan` from the
//!   kernel's state to a desired state, and link events;
//! - `dhcp`: a DHCPv4 client (packets on dhcproto, a sans-IO state machine, and its socket);
//! - `sntp`: an SNTP client that measures the clock's offset;
//! - `resolv`: `/run/resolv.conf`.
//!
//! Everything is synchronous and runs on threads the caller owns; sockets act in the calling
//! thread's network namespace, which is how the tests run it inside namespaces of their own.

pub mod agent;
pub mod dhcp;
pub mod resolv;
pub mod rtnl;
pub mod sntp;

/// The `network` section of the machine config, as [`agent`] takes it.
pub use cairn_facts::network as config;
