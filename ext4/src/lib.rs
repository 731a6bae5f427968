//! An empty ext4 file system, made in Rust: what cairnd puts on DATA (and STATE) on a first
//! boot, so container images, their layers and the other state that needs a Linux file system
//! (symlinks, owners, overlayfs upper directories) live on the disk.
//!
//! The one idea: everything is decided by the size ([`Geometry`]) and written in one pass, with
//! the features Debian's kernels mount read-write and e2fsck checks: extents, `sparse_super`,
//! 256-byte inodes, `dir_index`, crc32c metadata checksums (`metadata_csum`) and a jbd2 journal
//! in inode 8, so a power cut after the format leaves a file system the kernel recovers. The
//! file system's first MiB is written last, so a power cut during the format leaves a blank
//! partition's start blank.

mod crc32c;
mod error;
mod format;
mod geometry;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

pub use error::Error;
pub use format::{format, Options};
pub use geometry::{Geometry, BLOCK_SIZE};

/// Makes the file system on all of `file` (a block device or a regular file, sized by seeking
/// to its end).
pub fn format_all(file: &File, opts: &Options) -> Result<Geometry, Error> {
    let size = (&mut &*file)
        .seek(SeekFrom::End(0))
        .map_err(|source| Error::Io {
            what: "sizing the device for",
            source,
        })?;
    format(file, size, opts)
}

/// Whether `file` starts with an ext2/3/4 superblock (the magic at byte 1080).
pub fn probe(file: &File) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    match file.read_exact_at(&mut magic, 1024 + 0x38) {
        Ok(()) => Ok(u16::from_le_bytes(magic) == 0xEF53),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}
