//! Every way PID 1 can fail, each carrying the path, module or partition it concerns.
//!
//! Any `Err` that leaves stage 1 or stage 2 is fatal: `entry` prints it as one line (the chain of
//! sources joined by `: `, see [`chain`]) and reboots after `cairn.fatal_delay` seconds.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Errors of the init role.
#[derive(Debug, Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path} is larger than the {limit}-byte limit for this file")]
    TooLarge { path: PathBuf, limit: usize },

    #[error("creating directory {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("mounting {fstype} {source_name} on {target}")]
    Mount {
        fstype: String,
        source_name: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("moving mount {from} to {to}")]
    MoveMount {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("kernel command line has no cairn.slot= (expected cairn.slot=a or cairn.slot=b)")]
    MissingSlot,

    #[error("kernel command line has cairn.slot={value:?}; expected a or b")]
    BadSlot { value: String },

    #[error("cairn.roothash is missing: refusing to mount an unverified root")]
    MissingRootHash,

    #[error(
        "kernel command line has cairn.roothash={value:?}: {reason}; expected the 64 lowercase \
         hex digits of the root's dm-verity root hash"
    )]
    BadRootHash { value: String, reason: String },

    #[error(
        "cairn.hashoffset is missing: cairn.roothash needs the byte offset of the dm-verity hash \
         tree in the root partition"
    )]
    MissingHashOffset,

    #[error(
        "kernel command line has cairn.hashoffset={value:?}: {reason}; expected the decimal byte \
         offset of the dm-verity superblock, a positive multiple of 4096"
    )]
    BadHashOffset { value: String, reason: String },

    #[error("{path} line {line}: {reason}")]
    ModuleList {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },

    #[error("loading kernel module {name} ({path})")]
    Module {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "partition {label} did not appear within {waited_ms} ms; partitions seen: {seen} \
         (is the disk driver in /etc/cairn/modules?)"
    )]
    PartitionTimeout {
        label: String,
        waited_ms: u128,
        seen: String,
    },

    #[error("{path} has {value:?}; expected <major>:<minor>")]
    BadDevNumber { path: PathBuf, value: String },

    #[error("{path} has {value:?}; expected a number of 512-byte sectors")]
    BadPartitionSize { path: PathBuf, value: String },

    #[error("cairn.ext.offset={offset} lies outside the {partition_bytes}-byte root partition")]
    ExtensionOutside { offset: u64, partition_bytes: u64 },

    #[error("{path} did not appear within {waited_ms} ms ({hint})")]
    NodeTimeout {
        path: PathBuf,
        waited_ms: u128,
        hint: &'static str,
    },

    #[error("reading the dm-verity superblock of {device} at byte {offset}")]
    ReadVeritySuperblock {
        device: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error(
        "dm-verity superblock of {device} at byte {offset}: {field} is {found}, expected \
         {expected}"
    )]
    VeritySuperblock {
        device: PathBuf,
        offset: u64,
        field: &'static str,
        found: String,
        expected: String,
    },

    /// Building, sending or checking a device-mapper request (the dm-verity root).
    #[error(transparent)]
    Dm(#[from] cairn_dm::Error),

    /// An I/O error reading the dm-verity device: the kernel reports a block that does not match
    /// the hash tree as EIO (when it does not restart the machine outright).
    #[error("{}: the root of slot {slot} failed dm-verity verification", chain(inner.as_ref()))]
    RootVerification {
        slot: &'static str,
        inner: Box<Error>,
    },

    #[error("root filesystem {root} has no {what}; refusing to switch to it")]
    BadNewRoot { root: PathBuf, what: String },

    #[error(
        "refusing to delete the initramfs: {path} is not a ramfs/tmpfs \
         (filesystem magic {magic:#x})"
    )]
    NotInitramfs { path: PathBuf, magic: u64 },

    #[error("{op} {path}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("executing {path}")]
    Exec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path} has no VERSION= line")]
    NoVersion { path: PathBuf },

    #[error("setting up signal handling ({op})")]
    Signals {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Result alias for the init role.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Formats an error and its sources as one line: `outer: inner: innermost`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cur = e.source();
    }
    // The console line must stay one line whatever a source printed.
    line.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources_on_one_line() {
        let e = Error::Module {
            name: "virtio_blk".into(),
            path: "/lib/modules/virtio_blk.ko".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let line = chain(&e);
        assert!(line.starts_with(
            "loading kernel module virtio_blk (/lib/modules/virtio_blk.ko): No such file"
        ));
        assert!(line.contains("os error 2"), "{line}");
        assert!(!line.contains('\n'));
    }
}
