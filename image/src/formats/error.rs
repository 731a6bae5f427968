//! The one error type of the format writers. Each variant names the thing that failed (a path
//! in the tree, a partition label, a byte offset in the image) so that the message alone tells
//! the reader what to fix; the underlying cause hangs off `#[source]`.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("Invalid GUID {text:?}: {reason}")]
    GuidSyntax { text: String, reason: &'static str },

    #[error("Invalid tree path {path:?}: {reason}")]
    TreePath { path: String, reason: &'static str },

    #[error("Tree path {path:?} goes through {parent:?}, which is not a directory")]
    TreeParentNotDir { path: String, parent: String },

    #[error("Tree path {path:?} already exists as a {existing}")]
    TreeExists {
        path: String,
        existing: &'static str,
    },

    #[error("Cannot read host file {path} for tree entry {entry:?}")]
    HostFile {
        entry: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("Host file {path} for tree entry {entry:?} changed size while being copied (expected {expected} bytes)")]
    HostFileChanged {
        entry: String,
        path: PathBuf,
        expected: u64,
    },

    #[error(
        "GPT partition label {label:?} is {units} UTF-16 code units long; GPT allows at most 36"
    )]
    GptLabelTooLong { label: String, units: usize },

    #[error("GPT disk of {disk_bytes} bytes is unusable: {reason}")]
    GptDiskSize {
        disk_bytes: u64,
        reason: &'static str,
    },

    #[error("{count} partitions requested; a GPT with 128 entries holds at most 128")]
    GptTooManyPartitions { count: usize },

    #[error("Partition {label:?} does not fit: it would end at LBA {last_lba}, past the last usable LBA {last_usable_lba} of a {disk_bytes}-byte disk")]
    GptDoesNotFit {
        label: String,
        last_lba: u64,
        last_usable_lba: u64,
        disk_bytes: u64,
    },

    #[error("Partition {label:?} is invalid: {reason}")]
    GptBadPartition { label: String, reason: String },

    #[error("{which} GPT at LBA {lba} is invalid: {reason}")]
    GptInvalid {
        which: &'static str,
        lba: u64,
        reason: String,
    },

    #[error("No valid GPT: the primary and the backup are both damaged (backup: {backup})")]
    GptNoValidCopy {
        backup: String,
        #[source]
        primary: Box<FormatError>,
    },

    #[error("I/O error {op} at byte offset {offset}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error("Writing cpio entry {path:?}")]
    CpioWrite {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("cpio entry {path:?} is {size} bytes; the newc format stores sizes in 32 bits")]
    CpioTooLarge { path: String, size: u64 },

    #[error("FAT32 volume of {size_bytes} bytes is too small: FAT32 needs at least {min_bytes} bytes (65525 clusters of 512 bytes plus the FATs)")]
    FatTooSmall { size_bytes: u64, min_bytes: u64 },

    #[error("FAT32 volume of {size_bytes} bytes is too large for 512-byte sectors")]
    FatTooLarge { size_bytes: u64 },

    #[error("Invalid FAT volume label {label:?}: {reason}")]
    FatLabel { label: String, reason: &'static str },

    #[error("FAT cannot store symlink {path:?}; put the target's content there instead")]
    FatSymlink { path: String },

    #[error("FAT32 {op} failed for {path:?}")]
    Fat {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("Adding {path:?} to the squashfs image")]
    SquashfsAdd {
        path: String,
        #[source]
        source: backhand::BackhandError,
    },

    #[error("Writing the squashfs image")]
    SquashfsWrite {
        #[source]
        source: backhand::BackhandError,
    },

    #[error("Invalid dm-verity parameters: {reason}")]
    VerityParams { reason: String },

    #[error(
        "dm-verity device is {len} bytes, too short for data and hash tree ending at byte {needed}"
    )]
    VerityDeviceTooShort { len: u64, needed: u64 },

    #[error(
        "dm-verity superblock at byte offset {offset} does not match the expected tree: {reason}"
    )]
    VeritySuperblock { offset: u64, reason: String },

    #[error("dm-verity hash block {index} of level {level} (byte offset {offset}) does not match {parent}; the hash tree is damaged or belongs to other data")]
    VerityHashBlock {
        level: usize,
        index: u64,
        offset: u64,
        parent: &'static str,
    },

    #[error("dm-verity data block {block} (byte offset {offset}) does not match {parent}; the data changed after the hash tree was written")]
    VerityDataBlock {
        block: u64,
        offset: u64,
        parent: &'static str,
    },
}
