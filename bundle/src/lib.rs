//! Cairn's signed offline update bundle (`*.cairn`): writing, inspecting and verifying it.
//!
//! A bundle is a small fixed header, a manifest signed as a COSE_Sign1 (RFC 9052) with an Ed25519
//! key, and the payload images, each starting on a 4096-byte boundary. The one idea: nothing read
//! from a bundle is trusted before it is checked. The manifest's signature is verified before its
//! contents are decoded, and a payload byte is handed out only after the whole chunk holding it has
//! matched the chunk hash the signed manifest lists, so an installer never writes unverified data.
//! `docs/bundle-format.md` specifies the format precisely enough for an independent verifier.

mod cbor_bounds;
mod cose;
mod create;
mod error;
mod format;
mod install;
mod keys;
mod manifest;
mod read;

pub use create::{create, ManifestMeta, PayloadSource};
pub use error::{Error, Refusal, Result};
pub use format::{
    ALIGNMENT, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_MANIFEST_LEN,
    MAX_NAME_LEN, MAX_PAYLOADS, MAX_PAYLOAD_SIZE, MIN_CHUNK_SIZE, PRODUCT,
};
pub use install::{check_install, DeviceFacts};
pub use keys::{KeyId, Keyring, KeyringEntry, PublicKey, SecretKey, MAX_KEYRING_KEYS};
pub use manifest::{Manifest, PayloadEntry, Role, MAX_COMPATIBLE};
pub use read::{inspect, open_verified, verify_all, PayloadReader, VerifiedBundle};
pub use semver::Version;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
