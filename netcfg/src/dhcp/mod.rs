//! A DHCPv4 client (RFC 2131) for one interface.
//!
//! Three layers, each testable on its own:
//!
//! - [`packet`]: the client's messages, built with dhcproto, and [`parse`], which reads a
//!   server's reply into a bounded, validated [`Reply`] (the fuzzed surface);
//! - [`client`]: the state machine (INIT → SELECTING → REQUESTING → BOUND → RENEWING →
//!   REBINDING, INIT-REBOOT with a remembered address), sans IO: time comes in as an `Instant`,
//!   randomness as a seed, and out come [`Action`]s and the next deadline;
//! - [`socket`]: the I/O and the loop ([`run`]) that feeds the state machine and tells a
//!   [`LeaseSink`] when to apply or remove the lease.
//!
//! The one idea of the I/O: until it holds a lease the client talks through a link-layer
//! (`AF_PACKET`) socket and writes the IPv4 and UDP headers itself ([`frame`]), because an
//! interface without an address cannot be trusted to receive over UDP: with reverse-path
//! filtering on, the kernel drops the server's reply. Once the lease is applied, renewing,
//! rebinding and releasing go over a plain UDP socket on port 68, which also lets the kernel
//! resolve the server's hardware address for unicast.

pub mod client;
pub mod frame;
pub mod packet;
pub mod socket;

pub use client::{
    Action, Client, Destination, Lease, Options, OptionsError, Phase, Retransmit, Transmit,
};
pub use packet::{parse, ParseError, Reply, ReplyKind};
pub use socket::{run, Error, LeaseSink, Stop};
