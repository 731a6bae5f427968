//! On-disk format writers for the image builder: GUIDs and the GPT that names partitions by
//! them, a bounded window onto a partition of `disk.img`, and three filesystem writers (cpio for
//! the initramfs, FAT32 for the ESP, squashfs for the root slots) that all consume one in-memory
//! [`tree::Tree`]. Every writer is deterministic: owners are 0:0, timestamps come from the caller
//! or a fixed constant, and iteration follows the tree's sorted order, so the same inputs give
//! the same bytes on any host.

pub mod cpio;
pub mod error;
pub mod fat;
pub mod fat_fs;
pub mod gpt;
pub mod guid;
pub mod region;
pub mod squashfs;
pub mod tree;
pub mod verity;

pub use error::FormatError;
