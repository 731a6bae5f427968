//! Passphrase key derivation for keyslots (argon2id, argon2i, PBKDF2-SHA256) and the PBKDF2
//! volume-key digest, with the limits this crate accepts from a header.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::metadata::KdfJson;

/// Largest argon2 memory cost accepted from a header, in KiB (cryptsetup's maximum, 4 GiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Largest argon2 time cost accepted from a header.
pub const MAX_ARGON2_TIME: u32 = 1 << 16;
/// Largest argon2 parallelism accepted from a header (cryptsetup's maximum).
pub const MAX_ARGON2_CPUS: u32 = 4;
/// Salt length written for keyslots and digests (cryptsetup writes 32 bytes).
pub const SALT_LEN: usize = 32;
/// Largest salt accepted from a header.
const MAX_SALT_LEN: usize = 128;

/// How a new keyslot turns its passphrase into the key that encrypts its area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// Argon2id: `time` passes over `memory_kib` KiB using `cpus` lanes.
    Argon2id {
        time: u32,
        memory_kib: u32,
        cpus: u32,
    },
    /// PBKDF2 with HMAC-SHA256.
    Pbkdf2 { iterations: u32 },
}

impl Kdf {
    pub(crate) fn to_json(self, salt: &[u8]) -> KdfJson {
        let salt = B64.encode(salt);
        match self {
            Kdf::Argon2id {
                time,
                memory_kib,
                cpus,
            } => KdfJson {
                kind: "argon2id".into(),
                hash: None,
                iterations: None,
                time: Some(time),
                memory: Some(memory_kib),
                cpus: Some(cpus),
                salt,
            },
            Kdf::Pbkdf2 { iterations } => KdfJson {
                kind: "pbkdf2".into(),
                hash: Some("sha256".into()),
                iterations: Some(iterations),
                time: None,
                memory: None,
                cpus: None,
                salt,
            },
        }
    }
}

pub(crate) fn decode_salt(s: &str) -> Result<Vec<u8>> {
    let salt = B64
        .decode(s)
        .map_err(|e| Error::BadMetadata(format!("salt is not base64: {e}")))?;
    if salt.len() > MAX_SALT_LEN {
        return Err(Error::BadMetadata(format!("salt of {} bytes", salt.len())));
    }
    Ok(salt)
}

fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) -> Result<()> {
    if iterations == 0 {
        return Err(Error::BadMetadata("pbkdf2 with 0 iterations".into()));
    }
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out);
    Ok(())
}

/// Derives `len` bytes from `passphrase` as the keyslot's `kdf` object says.
pub(crate) fn derive(kdf: &KdfJson, passphrase: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let salt = decode_salt(&kdf.salt)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    match kdf.kind.as_str() {
        "pbkdf2" => {
            match kdf.hash.as_deref() {
                Some("sha256") => {}
                other => return Err(Error::Unsupported(format!("pbkdf2 hash {other:?}"))),
            }
            let iterations = kdf
                .iterations
                .ok_or_else(|| Error::BadMetadata("pbkdf2 without iterations".into()))?;
            pbkdf2_sha256(passphrase, &salt, iterations, &mut out)?;
        }
        kind @ ("argon2id" | "argon2i") => {
            let (Some(time), Some(memory), Some(cpus)) = (kdf.time, kdf.memory, kdf.cpus) else {
                return Err(Error::BadMetadata(format!(
                    "{kind} without time/memory/cpus"
                )));
            };
            if time > MAX_ARGON2_TIME || memory > MAX_ARGON2_MEMORY_KIB || cpus > MAX_ARGON2_CPUS {
                return Err(Error::BadMetadata(format!(
                    "{kind} costs out of range: time {time}, memory {memory} KiB, cpus {cpus}"
                )));
            }
            let alg = if kind == "argon2id" {
                argon2::Algorithm::Argon2id
            } else {
                argon2::Algorithm::Argon2i
            };
            argon2_raw(alg, passphrase, &salt, time, memory, cpus, &mut out)?;
        }
        other => return Err(Error::Unsupported(format!("keyslot kdf {other:?}"))),
    }
    Ok(out)
}

fn argon2_raw(
    alg: argon2::Algorithm,
    passphrase: &[u8],
    salt: &[u8],
    time: u32,
    memory_kib: u32,
    cpus: u32,
    out: &mut [u8],
) -> Result<()> {
    let params = argon2::Params::new(memory_kib, time, cpus, Some(out.len()))
        .map_err(|e| Error::Kdf(format!("argon2 parameters: {e}")))?;
    argon2::Argon2::new(alg, argon2::Version::V0x13, params)
        .hash_password_into(passphrase, salt, out)
        .map_err(|e| Error::Kdf(format!("argon2: {e}")))
}

/// Derives with `kdf` and a fresh salt; returns the key and the JSON to store.
pub(crate) fn derive_new(
    kdf: Kdf,
    passphrase: &[u8],
    salt: &[u8],
    len: usize,
) -> Result<(Zeroizing<Vec<u8>>, KdfJson)> {
    let json = kdf.to_json(salt);
    let key = derive(&json, passphrase, len)?;
    Ok((key, json))
}

/// The PBKDF2-SHA256 digest of a volume key, as stored in a `pbkdf2` digest object.
pub(crate) fn volume_key_digest(
    hash: &str,
    vk: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Result<[u8; 32]> {
    if hash != "sha256" {
        return Err(Error::Unsupported(format!("digest hash {hash:?}")));
    }
    let mut out = [0u8; 32];
    pbkdf2_sha256(vk, salt, iterations, &mut out)?;
    Ok(out)
}

/// Derives 64 bytes with argon2id exactly as a keyslot does; for measuring costs.
pub fn argon2id(
    passphrase: &[u8],
    salt: &[u8],
    time: u32,
    memory_kib: u32,
    cpus: u32,
) -> Result<Zeroizing<[u8; 64]>> {
    let mut out = Zeroizing::new([0u8; 64]);
    argon2_raw(
        argon2::Algorithm::Argon2id,
        passphrase,
        salt,
        time,
        memory_kib,
        cpus,
        &mut out[..],
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_sha256_rfc7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64).
        let mut out = [0u8; 64];
        pbkdf2_sha256(b"passwd", b"salt", 1, &mut out).unwrap();
        assert_eq!(
            hex::encode(out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        );
    }

    #[test]
    fn out_of_range_argon2_costs_are_refused() {
        let mut j = Kdf::Argon2id {
            time: 1,
            memory_kib: 8,
            cpus: 1,
        }
        .to_json(&[0; 32]);
        j.memory = Some(MAX_ARGON2_MEMORY_KIB + 1);
        assert!(matches!(derive(&j, b"x", 64), Err(Error::BadMetadata(_))));
    }
}
