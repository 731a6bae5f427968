//! The `cairnd` role of the device binary, in three layers; arrows only point down
//! (docs/architecture.md):
//!
//! - **wiring**: [`cairnd`] decides which capabilities start, in what order, with what.
//! - **API adapters**: [`remote`] maps `cairn.v1` calls onto the capabilities; [`maintenance`]
//!   serves the one call a locked box answers. Nothing below imports them.
//! - **capabilities**, each with its own state and a narrow interface: [`bringup`] (STATE and
//!   DATA: first-boot encryption, unlock), [`settings`] (the machine config in force, applied
//!   live), [`health`] (the health gate), [`update`] (install, trial, commit, rollback),
//!   [`sticks`] (bundles from USB sticks), [`containers`] (host containers, gating updates),
//!   [`kubernetes`] (k3s, its health gate and datastore snapshots).
//! - **mechanisms** they share, each owning one kernel interface or one format and nothing else:
//!   [`storage`] (LUKS2 + TPM volumes), [`block`] (partitions and mounts), [`probe`] (TCP and
//!   HTTP health probes without a shell), [`uevent`] (the kernel's device events), [`watchdog`],
//!   [`netif`], [`containerd`] (the container runtime, driven through `ctr`), [`oci`] (OCI
//!   image archives), [`heartbeat`], [`events`], [`journal`], [`log`], [`system`] (this boot, and
//!   signals to init), [`bench`] (the host container benchmark, only on an image built for it).
//!
//! There is no async runtime here and no C dependency: everything is std, or libc where std has
//! no call.

// Wiring.
pub mod cairnd;

// API adapters.
pub mod maintenance;
pub mod remote;

// Capabilities.
pub mod bringup;
pub mod containers;
pub mod hawkbit;
pub mod health;
pub mod kubernetes;
pub mod settings;
pub mod source;
pub mod sticks;
pub mod update;

// Mechanisms.
pub mod bench;
pub mod block;
pub mod config;
pub mod containerd;
pub mod error;
pub mod eventlog;
pub mod events;
pub mod heartbeat;
pub mod journal;
pub mod log;
pub mod netif;
pub mod oci;
pub mod registry;
pub mod secureboot;
pub mod storage;
pub mod system;
pub mod uevent;
pub mod watchdog;

pub use cairn_facts::probe;

/// The OCI archive writer the tests build their container images with.
#[cfg(test)]
#[path = "../../systest/src/oci.rs"]
pub(crate) mod oci_writer;
pub use error::{Error, Result};

#[cfg(test)]
mod testns {
    //! Running a test inside a network namespace of its own, so it can change interfaces
    //! without reaching the host's.

    /// Runs `f` on a new thread that first moves into a new, empty network namespace
    /// (`unshare(CLONE_NEWNET)` applies to the calling thread only; the namespace goes away
    /// when the thread and its sockets do). Returns `None` after printing why when that is not
    /// possible here (not root, or unshare refused); a panic in `f` fails the test.
    ///
    /// Inside, /proc/net and /sys/class/net still show the host's namespace (they follow the
    /// process and the sysfs mount, not the thread): use netlink or socket ioctls.
    pub fn in_fresh_netns<T: Send + 'static>(
        what: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped {what}: needs root to create a network namespace");
            return None;
        }
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match thread.join() {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                println!("skipped {what}: unshare(CLONE_NEWNET) failed: {e}");
                None
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
