//! Writing a bundle. Each payload file is read twice: once to hash it (whole and per chunk), since
//! the signed manifest precedes the payloads, and once to copy it out, re-hashing to catch a file
//! that changed in between. Memory use is one chunk buffer, whatever the payload sizes.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;

use semver::Version;
use sha2::{Digest, Sha256};

use crate::cose;
use crate::error::{Error, Result};
use crate::format::{padding_after, Header, HEADER_LEN, MAX_MANIFEST_LEN, MAX_PAYLOADS};
use crate::keys::SecretKey;
use crate::manifest::{check_payload_name, Manifest, PayloadEntry, Role};

/// The release facts of a bundle, i.e. the manifest minus what is computed from the payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestMeta {
    /// Board names that may install it.
    pub compatible: Vec<String>,
    /// CPU architecture.
    pub arch: String,
    /// The release it installs.
    pub version: Version,
    /// The anti-rollback floor it raises the device to.
    pub security_version: u32,
    /// The oldest installed version allowed to take it.
    pub min_installed_version: Version,
    /// Creation time in unix seconds (pass `SOURCE_DATE_EPOCH` for reproducible bundles).
    pub created: u64,
}

/// A payload to put into a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadSource {
    /// Name in the manifest.
    pub name: String,
    /// What it is for.
    pub role: Role,
    /// The file holding its bytes.
    pub path: PathBuf,
    /// Chunk size for its chunk hashes (a power of two, 64 KiB..=16 MiB).
    pub chunk_size: u32,
}

/// Size, whole hash and chunk hashes of one file, read in `chunk_size` pieces.
struct Digests {
    size: u64,
    sha256: [u8; 32],
    chunks: Vec<[u8; 32]>,
}

/// Reads `file` in whole chunks, hashing each and passing it to `each` (which may write it out).
fn stream_chunks(
    source: &PayloadSource,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Digests> {
    let file_err = |e| Error::PayloadFile {
        path: source.path.clone(),
        source: e,
    };
    let mut file = File::open(&source.path).map_err(file_err)?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(file_err(e)),
            }
        }
        if filled == 0 {
            break;
        }
        let chunk = &buf[..filled];
        whole.update(chunk);
        chunks.push(Sha256::digest(chunk).into());
        size += filled as u64;
        each(chunk)?;
        if filled < buf.len() {
            break;
        }
    }
    Ok(Digests {
        size,
        sha256: whole.finalize().into(),
        chunks,
    })
}

fn write_zeros(out: &mut impl Write, mut len: u64) -> Result<()> {
    let zeros = [0u8; 4096];
    while len > 0 {
        let n = len.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..n])
            .map_err(|source| Error::Write { source })?;
        len -= n as u64;
    }
    Ok(())
}

/// Writes a signed bundle of `payloads` (in that order) to `out` and returns its manifest.
///
/// Refuses, before writing anything, bad names, duplicate names, empty or oversized payloads, bad
/// chunk sizes and too many payloads.
pub fn create(
    out: &mut impl Write,
    meta: &ManifestMeta,
    payloads: &[PayloadSource],
    key: &SecretKey,
) -> Result<Manifest> {
    let invalid = |reason: String| Error::InvalidInput { reason };
    if payloads.is_empty() || payloads.len() > MAX_PAYLOADS {
        return Err(invalid(format!(
            "{} payloads given, expected 1..={MAX_PAYLOADS}",
            payloads.len()
        )));
    }
    for p in payloads {
        check_payload_name(&p.name).map_err(invalid)?;
    }
    let mut manifest = Manifest {
        compatible: meta.compatible.clone(),
        arch: meta.arch.clone(),
        version: meta.version.clone(),
        security_version: meta.security_version,
        min_installed_version: meta.min_installed_version.clone(),
        created: meta.created,
        key_id: key.key_id(),
        payloads: Vec::with_capacity(payloads.len()),
    };
    let mut buf = Vec::new();
    for source in payloads {
        // Checked here so the chunk buffer below is never sized from a bad value.
        let probe = PayloadEntry {
            name: source.name.clone(),
            role: source.role,
            size: 1,
            sha256: [0; 32],
            chunk_size: source.chunk_size,
            chunk_hashes: vec![[0; 32]],
        };
        let single = Manifest {
            payloads: vec![probe],
            ..manifest.clone()
        };
        single.validate().map_err(invalid)?;

        buf.resize(source.chunk_size as usize, 0);
        let digests = stream_chunks(source, &mut buf, |_| Ok(()))?;
        if digests.size == 0 {
            return Err(invalid(format!(
                "payload {:?} ({}) is empty",
                source.name,
                source.path.display()
            )));
        }
        manifest.payloads.push(PayloadEntry {
            name: source.name.clone(),
            role: source.role,
            size: digests.size,
            sha256: digests.sha256,
            chunk_size: source.chunk_size,
            chunk_hashes: digests.chunks,
        });
    }
    manifest.validate().map_err(invalid)?;

    let signed = cose::sign(manifest.to_cbor(), key)?;
    let manifest_len = u32::try_from(signed.len())
        .ok()
        .filter(|&n| n <= MAX_MANIFEST_LEN)
        .ok_or_else(|| {
            invalid(format!(
                "the signed manifest is {} bytes, above the {MAX_MANIFEST_LEN}-byte limit; use larger chunks",
                signed.len()
            ))
        })?;
    let write = |out: &mut dyn Write, bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(|source| Error::Write { source })
    };
    write(out, &Header::encode(manifest_len))?;
    write(out, &signed)?;
    let mut offset = (HEADER_LEN + signed.len()) as u64;
    write_zeros(out, padding_after(offset))?;
    offset += padding_after(offset);

    for (i, (source, entry)) in payloads.iter().zip(&manifest.payloads).enumerate() {
        buf.resize(source.chunk_size as usize, 0);
        let digests = stream_chunks(source, &mut buf, |chunk| write(out, chunk))?;
        if digests.size != entry.size || digests.sha256 != entry.sha256 {
            return Err(Error::PayloadChanged {
                path: source.path.clone(),
            });
        }
        offset += entry.size;
        if i + 1 < payloads.len() {
            write_zeros(out, padding_after(offset))?;
            offset += padding_after(offset);
        }
    }
    out.flush().map_err(|source| Error::Write { source })?;
    Ok(manifest)
}
