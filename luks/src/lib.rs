//! LUKS2 in pure Rust: the on-disk format cryptsetup reads and writes, without cryptsetup.
//!
//! A LUKS2 device starts with two copies of a header (binary header plus JSON metadata), then
//! a keyslots area, then the encrypted data. Each keyslot holds the volume key, AF-split and
//! encrypted with a key derived from a passphrase; a PBKDF2 digest of the volume key tells
//! which candidate key is right. [`Luks2`] reads and changes headers; [`dm_crypt`] maps the
//! data segment through dm-crypt once the volume key is known.

mod af;
mod cipher;
pub mod dm_crypt;
mod error;
mod header;
mod kdf;
mod metadata;
mod volume;

pub use af::STRIPES;
pub use error::{Error, Result};
pub use header::DEFAULT_HDR_SIZE;
pub use kdf::{argon2id, Kdf};
pub use metadata::{Metadata, Segment, Token, MAX_KEYSLOTS, MAX_TOKENS};
pub use volume::{
    Credential, FormatOptions, Luks2, ReadAt, VolumeKey, DEFAULT_DATA_OFFSET, MAX_KEYSLOTS_SIZE,
    MAX_KEY_SIZE, SEGMENT_CIPHER, VOLUME_KEY_SIZE,
};
