//! Errors of this crate: [`Error`] for reading, writing and verifying bundles and keys, and
//! [`Refusal`] for a verified bundle that this particular device must not install.

use std::path::PathBuf;

use crate::keys::KeyId;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn key_list(keys: &[KeyId]) -> String {
    if keys.is_empty() {
        return "none".to_string();
    }
    keys.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn line_label(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" line {line}")
    }
}

/// Everything that can go wrong with a bundle or a key. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying reader failed.
    #[error("cannot read the bundle")]
    Read {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The output failed while a bundle was being written.
    #[error("cannot write the bundle")]
    Write {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A payload file given to [`crate::create`] could not be read.
    #[error("cannot read payload file {}", path.display())]
    PayloadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A payload file changed between hashing and writing.
    #[error("payload file {} changed while the bundle was being written", path.display())]
    PayloadChanged {
        /// The file.
        path: PathBuf,
    },
    /// The arguments to [`crate::create`] cannot make a valid bundle.
    #[error("cannot create bundle: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },
    /// The input ended early.
    #[error("bundle is truncated: expected {expected} more bytes of {what}")]
    Truncated {
        /// Bytes still missing from the part being read.
        expected: u64,
        /// The part being read, e.g. `payload "rootfs"`.
        what: String,
    },
    /// The file does not start with `CAIRNBDL`.
    #[error(
        "not a Cairn bundle: it starts with {} instead of \"CAIRNBDL\"",
        hex::encode(found)
    )]
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The header names a format version this build does not read.
    #[error("unsupported bundle format version {version} (this build reads version 1)")]
    UnsupportedFormat {
        /// The version in the header.
        version: u32,
    },
    /// The header's manifest length is zero or above the limit.
    #[error("bundle manifest length {len} is outside the allowed 1..={max} bytes")]
    ManifestLength {
        /// The length in the header.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The COSE_Sign1 envelope is malformed or uses parameters Cairn does not accept.
    #[error("malformed manifest signature envelope: {reason}")]
    Cose {
        /// What is wrong.
        reason: String,
    },
    /// The signing key is not in the keyring.
    #[error(
        "bundle rejected: signed by key {kid}, which this device does not trust (trusted: {})",
        key_list(trusted)
    )]
    UntrustedKey {
        /// The key id in the COSE header.
        kid: KeyId,
        /// The usable keys of the keyring.
        trusted: Vec<KeyId>,
    },
    /// The signing key is in the keyring but revoked.
    #[error("bundle rejected: signed by key {kid}, which this device's keyring marks as revoked")]
    RevokedKey {
        /// The key id in the COSE header.
        kid: KeyId,
    },
    /// The signature does not verify: the manifest was altered or signed by another key.
    #[error("bundle rejected: the manifest signature does not verify with key {kid}")]
    BadSignature {
        /// The key id in the COSE header.
        kid: KeyId,
    },
    /// The manifest's contents break a rule of the format.
    #[error("invalid bundle manifest: {reason}")]
    Manifest {
        /// What is wrong.
        reason: String,
    },
    /// The manifest's `key_id` differs from the COSE header's kid.
    #[error("invalid bundle manifest: key_id {manifest} differs from the signing key {cose}")]
    KeyIdMismatch {
        /// The kid in the COSE header.
        cose: KeyId,
        /// The key_id in the manifest.
        manifest: KeyId,
    },
    /// Alignment padding contains a non-zero byte.
    #[error("bundle padding at byte offset {offset} is not zero")]
    NonZeroPadding {
        /// Offset of the first non-zero byte from the start of the file.
        offset: u64,
    },
    /// A chunk of a payload does not match its hash in the manifest.
    #[error("payload \"{payload}\": chunk {chunk} of {chunks} (0-based; bytes {start}..{end}) does not match its hash")]
    ChunkMismatch {
        /// Payload name.
        payload: String,
        /// 0-based chunk index.
        chunk: u64,
        /// Number of chunks in the payload.
        chunks: u64,
        /// First byte of the chunk within the payload.
        start: u64,
        /// One past the last byte of the chunk within the payload.
        end: u64,
    },
    /// The whole payload does not match its sha256.
    #[error("payload \"{payload}\" does not match its sha256")]
    PayloadMismatch {
        /// Payload name.
        payload: String,
    },
    /// There are bytes after the last payload.
    #[error("bundle has unexpected bytes after its last payload, at byte offset {offset}")]
    TrailingData {
        /// Offset of the first extra byte.
        offset: u64,
    },
    /// An earlier error left the bundle reader at an unknown point.
    #[error("bundle reading already failed; the rest of this bundle cannot be trusted")]
    AlreadyFailed,
    /// A key's text form is wrong.
    #[error("invalid key: {reason}")]
    Key {
        /// What is wrong.
        reason: String,
    },
    /// A keyring line is wrong.
    #[error("keyring{}: {reason}", line_label(*line))]
    Keyring {
        /// 1-based line number; 0 for what concerns the whole keyring.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The operating system could not provide randomness for a new key.
    #[error("cannot generate a key: no randomness available")]
    Random {
        /// The cause.
        #[source]
        source: rand_core::Error,
    },
}

impl Error {
    /// Recovers an [`Error`] that a [`std::io::Read`] adapter wrapped in an `io::Error`.
    pub fn from_io(err: std::io::Error) -> Error {
        if !err.get_ref().is_some_and(|e| e.is::<Error>()) {
            return Error::Read { source: err };
        }
        let kind = err.kind();
        match err.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(e)) => *e,
            Some(Err(other)) => Error::Read {
                source: std::io::Error::new(kind, other),
            },
            None => Error::Read {
                source: kind.into(),
            },
        }
    }
}

/// Why a genuine, verified bundle must not be installed on this device. Each message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The device's board is not among the bundle's compatible boards.
    #[error("bundle is for boards {}, not this board \"{board}\"", compatible.join(", "))]
    WrongBoard {
        /// This device's board.
        board: String,
        /// The bundle's compatible list.
        compatible: Vec<String>,
    },
    /// The bundle was built for another CPU architecture.
    #[error("bundle is built for {bundle}, but this device is {device}")]
    WrongArch {
        /// The bundle's arch.
        bundle: String,
        /// This device's arch.
        device: String,
    },
    /// The installed version is too old to take this bundle directly.
    #[error("installed version {installed} is older than {minimum}, the oldest this bundle can update; install an intermediate release first")]
    InstalledTooOld {
        /// The running version.
        installed: semver::Version,
        /// The manifest's min_installed_version.
        minimum: semver::Version,
    },
    /// Installing would lower the device's security version.
    #[error("bundle security version {bundle} is below this device's floor {floor}; it would roll back a security fix")]
    SecurityRollback {
        /// The manifest's security_version.
        bundle: u32,
        /// The device's anti-rollback floor.
        floor: u32,
    },
}
