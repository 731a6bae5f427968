//! The errors of every LUKS2 operation, each naming the header, keyslot or token involved.

use std::io;

/// What can go wrong reading, writing or unlocking a LUKS2 header.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("no valid LUKS2 header: {primary}; secondary: {secondary}")]
    NoValidHeader { primary: String, secondary: String },
    #[error("LUKS2 metadata is invalid: {0}")]
    BadMetadata(String),
    #[error("LUKS2 metadata JSON does not parse")]
    Json(#[source] serde_json::Error),
    #[error("LUKS2 metadata needs {needed} bytes but the JSON area holds {available}")]
    MetadataTooLarge { needed: usize, available: usize },
    #[error("unsupported LUKS2 feature: {0}")]
    Unsupported(String),
    #[error("no keyslot accepts this passphrase")]
    WrongPassphrase,
    #[error("the volume key does not match the header's digest")]
    WrongVolumeKey,
    #[error("keyslot {0} does not exist")]
    NoSuchKeyslot(u32),
    #[error("token {0} does not exist")]
    NoSuchToken(u32),
    #[error("all {0} keyslots are in use")]
    KeyslotsFull(usize),
    #[error("the keyslots area has no room for another {0}-byte keyslot")]
    KeyslotAreaFull(u64),
    #[error("refusing to remove keyslot {0}: it is the last one and the volume key would be lost")]
    LastKeyslot(u32),
    #[error("token {token} names keyslot {keyslot}, which does not exist")]
    TokenKeyslot { token: u32, keyslot: u32 },
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error(
        "the device is {size} bytes, smaller than the {needed}-byte LUKS2 header and keyslots"
    )]
    DeviceTooSmall { size: u64, needed: u64 },
    #[error(transparent)]
    DeviceMapper(#[from] cairn_dm::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}
