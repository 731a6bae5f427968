//! Errors of the daemon primitives, each naming the device, interface or path concerned.
//!
//! A failing health probe is not an error of this crate but a verdict: see
//! [`crate::probe::ProbeFailure`]. Messages start with the thing concerned and never repeat
//! their `#[source]`; print them with the whole chain (`outer: inner`), as init's `chain` does.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Errors of the daemon primitives.
#[derive(Debug, Error)]
pub enum Error {
    #[error("kernel uevent socket: {op}")]
    UeventSocket {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The socket's receive buffer overflowed (ENOBUFS): events were dropped, so whatever the
    /// caller tracks from uevents must be rescanned from /sys.
    #[error("kernel uevents were lost (receive buffer overflow); rescan /sys")]
    UeventOverflow,

    /// A message from the kernel that is not a well-formed uevent. The socket stays usable.
    #[error("malformed kernel uevent: {reason}")]
    BadUevent { reason: String },

    #[error("block device name {name:?} is not a plain sysfs name")]
    BadBlockName { name: String },

    #[error("reading {path}")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("watchdog {path}: {op}")]
    Watchdog {
        path: PathBuf,
        op: String,
        #[source]
        source: io::Error,
    },

    #[error("watchdog {path}: timeout {timeout_s} s is out of range (1 to {max} s)")]
    WatchdogTimeout {
        path: PathBuf,
        timeout_s: u32,
        max: u32,
    },

    #[error(
        "watchdog {path} ({identity}) stops when its device is closed (no WDIOF_MAGICCLOSE), so \
         it cannot be armed and handed over; keep it open and feed it instead"
    )]
    WatchdogStopsOnClose { path: PathBuf, identity: String },

    #[error("network interface name {name:?} {reason}")]
    BadInterfaceName { name: String, reason: &'static str },

    #[error("network interface {name}: {op}")]
    Netif {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Result alias for the daemon primitives.
pub type Result<T, E = Error> = std::result::Result<T, E>;
