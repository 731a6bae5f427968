//! What the bundle fuzz targets feed `cairn-bundle`, and the seed corpus they start from.
//!
//! The one idea: random bytes almost never carry a valid signature, so fuzzing whole files alone
//! would stop at the signature check and never reach the strict manifest decoder or the payload
//! reader behind it. Two targets share one oracle ([`check_bundle`]):
//!
//! - `bundle`: the input is a whole `.cairn` file. It reaches everything before the signature
//!   check, and, from seeds that are real bundles signed by [`test_key`], the payload reader with
//!   valid manifests (flipped, truncated or extended payload bytes and padding).
//! - `manifest`: the input is the manifest CBOR. The target signs it with [`test_key`] and lays it
//!   out with the fixed [`payloads`], so every input passes the signature check and the decoder
//!   and the payload reader see hostile manifests over real payload bytes.
//!
//! A crash artifact of `bundle` is a `.cairn` file as it is; one of `manifest` becomes a bundle
//! with [`signed_bundle`].

use std::io::Read;

use cairn_bundle::{
    inspect, open_verified, verify_all, Keyring, ManifestMeta, PayloadSource, Role, SecretKey,
    Version, HEADER_LEN, MIN_CHUNK_SIZE,
};
use coset::{iana, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use ed25519_dalek::{Signer, SigningKey};

/// The seed of the fixed test signing key. Never a real key: it is public.
const TEST_KEY_SEED: [u8; 32] = [0xf2; 32];

/// The fixed test signing key every seed and every `manifest` input is signed with.
pub fn test_key() -> SecretKey {
    SecretKey::from_bytes(TEST_KEY_SEED)
}

/// A keyring trusting only [`test_key`].
pub fn keyring() -> Keyring {
    Keyring::from_keys([test_key().public()]).expect("one key fits a keyring")
}

/// Deterministic, non-repeating bytes (xorshift32).
fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The payloads laid out after every `manifest` input, and carried by the seed bundles: a rootfs
/// of two chunks (the last one short) and a kernel of one short chunk. Small, so an execution
/// costs well under a millisecond.
pub fn payloads() -> Vec<(&'static str, Role, Vec<u8>)> {
    vec![
        (
            "rootfs",
            Role::Rootfs,
            data(MIN_CHUNK_SIZE as usize + 1500, 1),
        ),
        ("kernel", Role::Kernel, data(3000, 2)),
    ]
}

/// `manifest_cbor` wrapped in the COSE_Sign1 `cairn_bundle::create` writes (protected
/// `{1: -8, 4: kid}`, empty unprotected header), signed by [`test_key`]. Done here rather than
/// through a hook in the bundle crate; [`seeds`] checks it matches `create` byte for byte.
pub fn sign_manifest(manifest_cbor: &[u8]) -> Vec<u8> {
    let signer = SigningKey::from_bytes(&TEST_KEY_SEED);
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(test_key().key_id().0.to_vec())
        .build();
    CoseSign1Builder::new()
        .protected(protected)
        .payload(manifest_cbor.to_vec())
        .create_signature(b"", |m| signer.sign(m).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        .expect("a COSE_Sign1 with a byte-string payload encodes")
}

/// A bundle file: header, `signed` manifest, then `payloads`, each on a 4096-byte boundary.
pub fn lay_out(signed: &[u8], payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + signed.len() + 4096 * (payloads.len() + 1));
    out.extend_from_slice(b"CAIRNBDL");
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&(signed.len() as u32).to_be_bytes());
    out.extend_from_slice(signed);
    for p in payloads {
        out.resize(out.len().next_multiple_of(4096), 0);
        out.extend_from_slice(p);
    }
    out
}

/// The bundle the `manifest` target builds from its input: `manifest_cbor` signed by
/// [`test_key`], followed by the fixed [`payloads`].
pub fn signed_bundle(manifest_cbor: &[u8]) -> Vec<u8> {
    let payloads = payloads();
    let bytes: Vec<&[u8]> = payloads.iter().map(|(_, _, b)| &b[..]).collect();
    lay_out(&sign_manifest(manifest_cbor), &bytes)
}

/// Feeds `bundle` to every reading entry point and checks what they say agrees. Returns normally
/// for any input the crate rejects with an error; panics (a finding) on a panic inside the crate
/// or on results that contradict each other.
///
/// `read_mode` picks how payloads are consumed, since the reader has separate paths for each:
/// 0 `Read` in odd-sized pieces, 1 `take_chunk`, 2 skipping (the reader must still verify),
/// 3 `Read` with the whole-payload hashes deferred to the caller.
pub fn check_bundle(bundle: &[u8], read_mode: u8) {
    let inspected = inspect(bundle);
    let ring = keyring();
    let Ok(mut verified) = open_verified(bundle, &ring) else {
        return;
    };
    let (manifest, key_id) = inspected.expect("open_verified accepted what inspect refused");
    assert_eq!(
        &manifest,
        verified.manifest(),
        "inspect and open_verified disagree"
    );
    assert_eq!(key_id, verified.key_id());
    let expected_len = verified.expected_len();
    let deferred = read_mode % 4 == 3;
    if deferred {
        verified.defer_payload_hashes();
    }

    let mut sizes = Vec::new();
    let outcome = (|| -> cairn_bundle::Result<()> {
        while let Some(mut payload) = verified.next_payload()? {
            let size = payload.entry().size;
            let mut got = 0u64;
            match read_mode % 4 {
                1 => {
                    while let Some(chunk) = payload.take_chunk(Vec::new())? {
                        assert!(!chunk.is_empty(), "take_chunk handed out an empty chunk");
                        got += chunk.len() as u64;
                    }
                }
                2 => got = size,
                _ => {
                    let mut buf = [0u8; 4099];
                    loop {
                        let n = payload
                            .read(&mut buf)
                            .map_err(cairn_bundle::Error::from_io)?;
                        if n == 0 {
                            break;
                        }
                        got += n as u64;
                    }
                }
            }
            sizes.push((got, size));
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            for (got, size) in sizes {
                assert_eq!(
                    got, size,
                    "a payload yielded a different byte count than listed"
                );
            }
            assert_eq!(
                expected_len,
                bundle.len() as u64,
                "a whole bundle verified at a length other than expected_len()"
            );
            // With deferred hashes only the chunks were checked; the whole-payload sha256 the
            // manifest lists may still be wrong, which verify_all rightly refuses.
            if !deferred {
                assert!(
                    verify_all(bundle, &ring).is_ok(),
                    "verify_all refused a bundle whose payloads all read"
                );
            }
        }
        Err(_) => assert!(
            verify_all(bundle, &ring).is_err(),
            "verify_all accepted a bundle whose payloads failed to read"
        ),
    }
}

/// The length of the signed manifest, from a bundle's header.
fn manifest_len(bundle: &[u8]) -> usize {
    u32::from_be_bytes(bundle[12..16].try_into().expect("4 bytes")) as usize
}

/// The manifest CBOR inside a bundle written by `create` (the COSE payload).
fn manifest_of(bundle: &[u8]) -> Vec<u8> {
    let signed = &bundle[HEADER_LEN..HEADER_LEN + manifest_len(bundle)];
    CoseSign1::from_tagged_slice(signed)
        .expect("create writes a tagged COSE_Sign1")
        .payload
        .expect("create attaches the manifest")
}

/// A real bundle of the named [`payloads`], written by `cairn_bundle::create` and signed by
/// [`test_key`].
fn created_bundle(dir: &std::path::Path, chunk_size: u32, names: &[&str]) -> Vec<u8> {
    let sources: Vec<PayloadSource> = payloads()
        .into_iter()
        .filter(|(name, _, _)| names.contains(name))
        .map(|(name, role, bytes)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).expect("writing a seed payload");
            PayloadSource {
                name: name.into(),
                role,
                path,
                chunk_size,
            }
        })
        .collect();
    let meta = ManifestMeta {
        compatible: vec!["qemu-aarch64".into(), "rpi4".into()],
        arch: "aarch64".into(),
        version: Version::parse("2.1.0-rc.1+build.5").expect("a version"),
        security_version: 7,
        min_installed_version: Version::parse("2.0.0").expect("a version"),
        created: 1_750_000_000,
    };
    let mut out = Vec::new();
    cairn_bundle::create(&mut out, &meta, &sources, &test_key()).expect("creating a seed bundle");
    out
}

/// The seed corpus, as (target, file name, bytes): real bundles written by `create`, and the
/// manifest of the one whose payloads are exactly [`payloads`]. Panics if [`signed_bundle`] does
/// not reproduce `create`'s bytes exactly, since the `manifest` target would then be fuzzing a
/// layout the crate never writes.
pub fn seeds(scratch: &std::path::Path) -> Vec<crate::Seed> {
    let full = created_bundle(scratch, MIN_CHUNK_SIZE, &["rootfs", "kernel"]);
    let manifest = manifest_of(&full);
    assert!(
        signed_bundle(&manifest) == full,
        "the manifest target's signing and layout drifted from cairn_bundle::create"
    );
    // Small, so mutations of it run fast: one short chunk of a larger chunk size.
    let one = created_bundle(scratch, MIN_CHUNK_SIZE * 4, &["kernel"]);
    let header_and_manifest = full[..HEADER_LEN + manifest_len(&full)].to_vec();
    vec![
        ("bundle", "two-payloads.cairn".into(), full),
        ("bundle", "one-payload.cairn".into(), one),
        ("bundle", "manifest-only.cairn".into(), header_and_manifest),
        ("manifest", "two-payloads.cbor".into(), manifest),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_verify_and_pass_the_oracle() {
        let dir = std::env::temp_dir().join(format!("cairn-fuzz-seeds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let seeds = seeds(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        for (target, name, bytes) in &seeds {
            let bundle = match *target {
                "bundle" => bytes.clone(),
                _ => signed_bundle(bytes),
            };
            if !name.starts_with("manifest-only") {
                verify_all(&bundle[..], &keyring()).unwrap();
            }
            for mode in 0..4 {
                check_bundle(&bundle, mode);
            }
        }
    }
}
