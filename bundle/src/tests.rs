//! End-to-end tests: bundles written by `create` and read back, and hostile bundles built by hand
//! (crafted manifests signed with a test key) to check each rejection names the right problem.

use std::io::Read;
use std::path::Path;

use ciborium::Value;

use crate::*;

const CHUNK: u32 = 64 * 1024;
const ROOTFS_LEN: usize = 3 * CHUNK as usize + 3392; // 4 chunks, the last one short
const KERNEL_LEN: usize = CHUNK as usize + 4465; // 2 chunks

fn key() -> SecretKey {
    SecretKey::from_bytes([42; 32])
}

fn keyring() -> Keyring {
    Keyring::from_keys([key().public()]).unwrap()
}

/// Deterministic, non-repeating test data.
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

fn meta() -> ManifestMeta {
    ManifestMeta {
        compatible: vec!["qemu-aarch64".into()],
        arch: "aarch64".into(),
        version: Version::parse("2.1.0").unwrap(),
        security_version: 7,
        min_installed_version: Version::parse("2.0.0").unwrap(),
        created: 1_750_000_000,
    }
}

fn source(dir: &Path, name: &str, role: Role, bytes: &[u8]) -> PayloadSource {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    PayloadSource {
        name: name.into(),
        role,
        path,
        chunk_size: CHUNK,
    }
}

struct Fixture {
    bundle: Vec<u8>,
    manifest: Manifest,
    rootfs: Vec<u8>,
    kernel: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = data(ROOTFS_LEN, 1);
        let kernel = data(KERNEL_LEN, 2);
        let sources = [
            source(dir.path(), "rootfs", Role::Rootfs, &rootfs),
            source(dir.path(), "kernel", Role::Kernel, &kernel),
        ];
        let mut bundle = Vec::new();
        let manifest = create(&mut bundle, &meta(), &sources, &key()).unwrap();
        Fixture {
            bundle,
            manifest,
            rootfs,
            kernel,
        }
    }

    fn manifest_len(&self) -> usize {
        u32::from_be_bytes(self.bundle[12..16].try_into().unwrap()) as usize
    }

    fn rootfs_offset(&self) -> usize {
        (HEADER_LEN + self.manifest_len()).next_multiple_of(4096)
    }

    fn kernel_offset(&self) -> usize {
        (self.rootfs_offset() + ROOTFS_LEN).next_multiple_of(4096)
    }

    fn with_byte_flipped(&self, offset: usize) -> Vec<u8> {
        let mut b = self.bundle.clone();
        b[offset] ^= 0x01;
        b
    }
}

fn verify(bytes: &[u8]) -> Result<Manifest> {
    verify_all(bytes, &keyring())
}

/// A bundle with `manifest_cbor` signed by `key` and the given payload bytes, laid out by the rules.
fn hand_made(manifest_cbor: Vec<u8>, key: &SecretKey, payloads: &[&[u8]]) -> Vec<u8> {
    let signed = crate::cose::sign(manifest_cbor, key).unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(b"CAIRNBDL");
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&(signed.len() as u32).to_be_bytes());
    out.extend_from_slice(&signed);
    for (i, p) in payloads.iter().enumerate() {
        if i == 0 || !out.len().is_multiple_of(4096) {
            out.resize(out.len().next_multiple_of(4096), 0);
        }
        out.extend_from_slice(p);
    }
    out
}

/// The fixture's manifest as a CBOR value, for editing.
fn manifest_value(m: &Manifest) -> Vec<(Value, Value)> {
    match ciborium::de::from_reader(&m.to_cbor()[..]).unwrap() {
        Value::Map(entries) => entries,
        _ => unreachable!(),
    }
}

fn encode(map: Vec<(Value, Value)>) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Value::Map(map), &mut out).unwrap();
    out
}

fn payloads_of(map: &mut [(Value, Value)]) -> &mut Vec<Value> {
    match &mut map
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("payloads"))
        .unwrap()
        .1
    {
        Value::Array(items) => items,
        _ => unreachable!(),
    }
}

fn set_field(entry: &mut Value, key: &str, value: Value) {
    let Value::Map(fields) = entry else {
        unreachable!()
    };
    fields
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap()
        .1 = value;
}

#[test]
fn round_trip_yields_the_payloads_and_manifest() {
    let f = Fixture::new();
    assert_eq!(&f.bundle[..12], b"CAIRNBDL\0\0\0\x01");
    assert_eq!(f.bundle.len(), f.kernel_offset() + KERNEL_LEN);
    assert_eq!(&f.bundle[f.rootfs_offset()..][..ROOTFS_LEN], &f.rootfs[..]);
    assert_eq!(&f.bundle[f.kernel_offset()..][..KERNEL_LEN], &f.kernel[..]);

    let m = &f.manifest;
    assert_eq!(m.key_id, key().key_id());
    assert_eq!(m.payloads.len(), 2);
    assert_eq!(m.payloads[0].size, ROOTFS_LEN as u64);
    assert_eq!(m.payloads[0].chunk_hashes.len(), 4);
    assert_eq!(m.payloads[1].chunk_hashes.len(), 2);
    use sha2::Digest;
    assert_eq!(
        m.payloads[1].sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(&f.kernel))
    );

    let mut bundle = open_verified(&f.bundle[..], &keyring()).unwrap();
    assert_eq!(bundle.manifest(), m);
    assert_eq!(bundle.key_id(), key().key_id());
    let mut got = Vec::new();
    while let Some(mut p) = bundle.next_payload().unwrap() {
        let name = p.entry().name.clone();
        let mut bytes = Vec::new();
        p.read_to_end(&mut bytes).unwrap();
        got.push((name, bytes));
    }
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["rootfs", "kernel"]);
    assert!(got[0].1 == f.rootfs, "rootfs bytes differ");
    assert!(got[1].1 == f.kernel, "kernel bytes differ");
    assert!(bundle.next_payload().unwrap().is_none());
    assert_eq!(verify(&f.bundle).unwrap(), *m);
}

#[test]
fn skipping_a_payload_still_verifies_it() {
    let f = Fixture::new();
    let bad = f.with_byte_flipped(f.rootfs_offset() + 10);
    let mut bundle = open_verified(&bad[..], &keyring()).unwrap();
    assert!(bundle.next_payload().unwrap().is_some());
    let err = bundle.next_payload().err().unwrap();
    assert!(
        matches!(err, Error::ChunkMismatch { chunk: 0, .. }),
        "{err}"
    );
}

#[test]
fn inspect_reads_the_manifest_without_a_keyring() {
    let f = Fixture::new();
    let (m, kid) = inspect(&f.bundle[..]).unwrap();
    assert_eq!(m, f.manifest);
    assert_eq!(kid, key().key_id());
    // Inspect does not check the signature, but a broken signature is not a broken manifest.
    let sig_byte = HEADER_LEN + f.manifest_len() - 1;
    assert!(inspect(&f.with_byte_flipped(sig_byte)[..]).is_ok());
}

#[test]
fn unknown_and_revoked_keys_are_distinct_errors() {
    let f = Fixture::new();
    let other = SecretKey::from_bytes([9; 32]).public();
    let ring = Keyring::from_keys([other]).unwrap();
    match verify_all(&f.bundle[..], &ring).unwrap_err() {
        Error::UntrustedKey { kid, trusted } => {
            assert_eq!(kid, key().key_id());
            assert_eq!(trusted, vec![other.key_id()]);
        }
        e => panic!("unexpected {e}"),
    }
    let text = format!(
        "{}{} revoked\n",
        other.to_text(),
        key().public().to_text().trim_end()
    );
    let ring = Keyring::parse(&text).unwrap();
    let err = verify_all(&f.bundle[..], &ring).unwrap_err();
    assert!(
        matches!(err, Error::RevokedKey { kid } if kid == key().key_id()),
        "{err}"
    );
    assert!(err.to_string().contains("revoked"));
}

#[test]
fn a_flipped_manifest_byte_breaks_the_signature() {
    let f = Fixture::new();
    // Inside the manifest payload: the text "qemu-aarch64".
    let pos = f.bundle[..HEADER_LEN + f.manifest_len()]
        .windows(12)
        .position(|w| w == b"qemu-aarch64")
        .unwrap();
    let err = verify(&f.with_byte_flipped(pos + 3)).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    // The signature's last byte.
    let err = verify(&f.with_byte_flipped(HEADER_LEN + f.manifest_len() - 1)).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    // A flipped kid names a key the device does not know.
    let kid = key().key_id().0;
    let pos = f.bundle.windows(8).position(|w| w == kid).unwrap();
    let err = verify(&f.with_byte_flipped(pos)).unwrap_err();
    assert!(matches!(err, Error::UntrustedKey { .. }), "{err}");
}

#[test]
fn a_flipped_payload_byte_names_the_payload_and_chunk() {
    let f = Fixture::new();
    let cases = [
        (f.rootfs_offset(), "rootfs", 0, 4),
        (f.rootfs_offset() + 2 * CHUNK as usize + 17, "rootfs", 2, 4),
        (f.rootfs_offset() + ROOTFS_LEN - 1, "rootfs", 3, 4),
        (f.kernel_offset() + 5, "kernel", 0, 2),
        (f.kernel_offset() + KERNEL_LEN - 1, "kernel", 1, 2),
    ];
    for (offset, name, index, count) in cases {
        let err = verify(&f.with_byte_flipped(offset)).unwrap_err();
        match &err {
            Error::ChunkMismatch {
                payload,
                chunk,
                chunks,
                ..
            } => {
                assert_eq!((payload.as_str(), *chunk, *chunks), (name, index, count));
            }
            e => panic!("offset {offset}: unexpected {e}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("payload \"{name}\": chunk {index} of {count}")),
            "{text}"
        );
    }
}

#[test]
fn no_byte_of_a_bad_chunk_is_handed_out() {
    let f = Fixture::new();
    let bad = f.with_byte_flipped(f.rootfs_offset() + 2 * CHUNK as usize + 1000);
    let mut bundle = open_verified(&bad[..], &keyring()).unwrap();
    let mut reader = bundle.next_payload().unwrap().unwrap();
    let mut got = Vec::new();
    let mut piece = [0u8; 1000];
    let err = loop {
        match reader.read(&mut piece) {
            Ok(0) => panic!("read the whole payload despite a bad chunk"),
            Ok(n) => got.extend_from_slice(&piece[..n]),
            Err(e) => break Error::from_io(e),
        }
    };
    assert!(
        matches!(err, Error::ChunkMismatch { chunk: 2, .. }),
        "{err}"
    );
    // Exactly the two good chunks came out, unaltered.
    assert_eq!(got.len(), 2 * CHUNK as usize);
    assert!(
        got == f.rootfs[..2 * CHUNK as usize],
        "good chunks came out altered"
    );
    // And the reader stays failed rather than moving on to chunk 3.
    let again = reader.read(&mut piece).map_err(Error::from_io).unwrap_err();
    assert!(matches!(again, Error::AlreadyFailed), "{again}");
    assert!(matches!(bundle.next_payload(), Err(Error::AlreadyFailed)));
}

#[test]
fn a_bad_whole_payload_hash_is_caught_before_the_last_chunk_is_handed_out() {
    let f = Fixture::new();
    let mut map = manifest_value(&f.manifest);
    set_field(
        &mut payloads_of(&mut map)[1],
        "sha256",
        Value::Bytes(vec![0; 32]),
    );
    let bad = hand_made(encode(map), &key(), &[&f.rootfs, &f.kernel]);
    let mut bundle = open_verified(&bad[..], &keyring()).unwrap();
    bundle
        .next_payload()
        .unwrap()
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap();
    let mut kernel = bundle.next_payload().unwrap().unwrap();
    let mut got = Vec::new();
    let err = Error::from_io(kernel.read_to_end(&mut got).unwrap_err());
    assert!(
        matches!(&err, Error::PayloadMismatch { payload } if payload == "kernel"),
        "{err}"
    );
    assert_eq!(got.len(), CHUNK as usize);
}

#[test]
fn non_zero_padding_is_refused() {
    let f = Fixture::new();
    for offset in [
        HEADER_LEN + f.manifest_len(),
        f.rootfs_offset() - 1,
        f.kernel_offset() - 1,
    ] {
        let err = verify(&f.with_byte_flipped(offset)).unwrap_err();
        assert!(
            matches!(err, Error::NonZeroPadding { offset: o } if o == offset as u64),
            "{err}"
        );
    }
}

#[test]
fn truncation_names_what_is_missing() {
    let f = Fixture::new();
    let manifest_end = HEADER_LEN + f.manifest_len();
    let cases = [
        (0, "the header".to_string(), 16),
        (5, "the header".to_string(), 11),
        (
            HEADER_LEN + 10,
            "the manifest".to_string(),
            f.manifest_len() - 10,
        ),
        (
            manifest_end + 1,
            "the padding before the first payload".to_string(),
            f.rootfs_offset() - manifest_end - 1,
        ),
        (
            f.rootfs_offset() + 100_000,
            "payload \"rootfs\"".to_string(),
            ROOTFS_LEN - 100_000,
        ),
        (
            f.rootfs_offset() + ROOTFS_LEN,
            "the padding before payload \"kernel\"".to_string(),
            f.kernel_offset() - f.rootfs_offset() - ROOTFS_LEN,
        ),
        (f.bundle.len() - 1, "payload \"kernel\"".to_string(), 1),
    ];
    for (len, part, missing) in cases {
        let err = verify(&f.bundle[..len]).unwrap_err();
        match &err {
            Error::Truncated { expected, what } => {
                assert_eq!(
                    (what.as_str(), *expected),
                    (part.as_str(), missing as u64),
                    "cut at {len}"
                );
            }
            e => panic!("cut at {len}: unexpected {e}"),
        }
        assert_eq!(
            err.to_string(),
            format!("bundle is truncated: expected {missing} more bytes of {part}")
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let f = Fixture::new();
    for extra in [&[0u8][..], b"garbage"] {
        let mut b = f.bundle.clone();
        b.extend_from_slice(extra);
        let err = verify(&b).unwrap_err();
        assert!(
            matches!(err, Error::TrailingData { offset } if offset == f.bundle.len() as u64),
            "{err}"
        );
    }
}

#[test]
fn headers_are_checked_before_anything_else() {
    let garbage = data(10_000, 3);
    assert!(matches!(verify(&garbage), Err(Error::BadMagic { .. })));
    assert!(matches!(inspect(&garbage[..]), Err(Error::BadMagic { .. })));

    let f = Fixture::new();
    let mut b = f.bundle.clone();
    b[..8].copy_from_slice(b"CAIRNBDM");
    let err = verify(&b).unwrap_err();
    assert!(err.to_string().contains("not a Cairn bundle"), "{err}");

    let mut b = f.bundle.clone();
    b[8..12].copy_from_slice(&2u32.to_be_bytes());
    let err = verify(&b).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedFormat { version: 2 }),
        "{err}"
    );

    // A huge length is refused from the header alone: nothing follows it here, so any attempt to
    // read (or allocate for) the manifest would have reported truncation instead.
    let mut header = b"CAIRNBDL\0\0\0\x01".to_vec();
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = verify(&header).unwrap_err();
    assert!(
        matches!(err, Error::ManifestLength { len: u32::MAX, .. }),
        "{err}"
    );
    assert!(matches!(
        inspect(&header[..]),
        Err(Error::ManifestLength { .. })
    ));
    let mut header = b"CAIRNBDL\0\0\0\x01".to_vec();
    header.extend_from_slice(&(MAX_MANIFEST_LEN + 1).to_be_bytes());
    assert!(matches!(verify(&header), Err(Error::ManifestLength { .. })));
    header[12..].copy_from_slice(&0u32.to_be_bytes());
    assert!(matches!(
        verify(&header),
        Err(Error::ManifestLength { len: 0, .. })
    ));
}

#[test]
fn the_manifest_is_decoded_only_after_the_signature_verifies() {
    // Garbage signed by an untrusted key: the key is the error, not the garbage.
    let stranger = SecretKey::from_bytes([8; 32]);
    let b = hand_made(vec![0xff, 0xff], &stranger, &[]);
    assert!(matches!(verify(&b), Err(Error::UntrustedKey { .. })));
    // Signed by the trusted key, the same garbage is a manifest error.
    let b = hand_made(vec![0xff, 0xff], &key(), &[]);
    assert!(matches!(verify(&b), Err(Error::Manifest { .. })));
}

fn manifest_reason(bytes: &[u8]) -> String {
    match verify(bytes) {
        Err(Error::Manifest { reason }) => {
            // inspect applies the same rules.
            assert!(matches!(inspect(bytes), Err(Error::Manifest { .. })));
            reason
        }
        other => panic!("expected a manifest error, got {other:?}"),
    }
}

#[test]
fn hostile_signed_manifests_are_refused() {
    let f = Fixture::new();
    let payloads: &[&[u8]] = &[&f.rootfs, &f.kernel];

    let mut map = manifest_value(&f.manifest);
    let list = payloads_of(&mut map);
    let template = list[1].clone();
    for i in 0..15 {
        let mut p = template.clone();
        set_field(&mut p, "name", Value::Text(format!("extra{i}")));
        list.push(p);
    }
    let r = manifest_reason(&hand_made(encode(map), &key(), payloads));
    assert!(r.contains("payloads has 17 entries"), "{r}");

    let mut map = manifest_value(&f.manifest);
    set_field(
        &mut payloads_of(&mut map)[0],
        "name",
        Value::Text("../etc".into()),
    );
    let r = manifest_reason(&hand_made(encode(map), &key(), payloads));
    assert!(r.contains("payload name \"../etc\""), "{r}");

    let mut map = manifest_value(&f.manifest);
    set_field(
        &mut payloads_of(&mut map)[1],
        "name",
        Value::Text("rootfs".into()),
    );
    let r = manifest_reason(&hand_made(encode(map), &key(), payloads));
    assert!(r.contains("used twice"), "{r}");

    let mut map = manifest_value(&f.manifest);
    let hashes = f.manifest.payloads[0].chunk_hashes[..3].concat();
    set_field(
        &mut payloads_of(&mut map)[0],
        "chunk_hashes",
        Value::Bytes(hashes),
    );
    let r = manifest_reason(&hand_made(encode(map), &key(), payloads));
    assert!(r.contains("96 bytes of chunk_hashes, expected 128"), "{r}");

    let mut map = manifest_value(&f.manifest);
    set_field(
        &mut payloads_of(&mut map)[0],
        "size",
        Value::Integer((MAX_PAYLOAD_SIZE + 1).into()),
    );
    let r = manifest_reason(&hand_made(encode(map), &key(), payloads));
    assert!(r.contains("size"), "{r}");

    let mut map = manifest_value(&f.manifest);
    map.push((Value::Text("debug".into()), Value::Bool(true)));
    let r = manifest_reason(&hand_made(encode(map), &key(), payloads));
    assert!(r.contains("unknown key \"debug\""), "{r}");
}

#[test]
fn cbor_bombs_are_refused_before_decoding() {
    // An envelope whose unprotected header is a map of 100000 entries: refused as malformed
    // before any decoder builds values, and before the signature is even looked at.
    let f = Fixture::new();
    let mut envelope = vec![0xd2, 0x84, 0x40, 0xba, 0x00, 0x01, 0x86, 0xa0];
    envelope.extend(std::iter::repeat_n([0x00, 0x00], 100_000).flatten());
    envelope.extend_from_slice(&[0x40, 0x40]);
    let mut b = b"CAIRNBDL\0\0\0\x01".to_vec();
    b.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
    b.extend_from_slice(&envelope);
    let err = verify(&b).unwrap_err();
    assert!(
        matches!(&err, Error::Cose { reason } if reason.contains("more than")),
        "{err}"
    );
    assert!(matches!(inspect(&b[..]), Err(Error::Cose { .. })));

    // A signed manifest with 10000 board names.
    let mut map = manifest_value(&f.manifest);
    map.iter_mut()
        .find(|(k, _)| k.as_text() == Some("compatible"))
        .unwrap()
        .1 = Value::Array(vec![Value::Text("b".into()); 10_000]);
    let r = manifest_reason(&hand_made(encode(map), &key(), &[&f.rootfs, &f.kernel]));
    assert!(r.contains("more than"), "{r}");
}

#[test]
fn manifest_key_id_must_match_the_signing_key() {
    let f = Fixture::new();
    let mut map = manifest_value(&f.manifest);
    map.iter_mut()
        .find(|(k, _)| k.as_text() == Some("key_id"))
        .unwrap()
        .1 = Value::Bytes(vec![0; 8]);
    let b = hand_made(encode(map), &key(), &[&f.rootfs, &f.kernel]);
    assert!(matches!(verify(&b), Err(Error::KeyIdMismatch { .. })));
    assert!(matches!(inspect(&b[..]), Err(Error::KeyIdMismatch { .. })));
}

#[test]
fn a_hand_made_bundle_matches_create_byte_for_byte() {
    // Guards the documented layout: header, COSE manifest, zero padding, aligned payloads.
    let f = Fixture::new();
    let signed_manifest = &f.bundle[HEADER_LEN..HEADER_LEN + f.manifest_len()];
    let mut b = f.bundle[..HEADER_LEN].to_vec();
    b.extend_from_slice(signed_manifest);
    b.resize(f.rootfs_offset(), 0);
    b.extend_from_slice(&f.rootfs);
    b.resize(f.kernel_offset(), 0);
    b.extend_from_slice(&f.kernel);
    assert_eq!(b, f.bundle);
    // Ed25519 is deterministic, so the same inputs give the same bundle.
    assert_eq!(Fixture::new().bundle, f.bundle);
}

#[test]
fn create_refuses_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let ok = source(dir.path(), "rootfs", Role::Rootfs, &data(1000, 4));
    let mut out = Vec::new();
    let mut check = |sources: &[PayloadSource], meta: &ManifestMeta, needle: &str| {
        out.clear();
        let err = create(&mut out, meta, sources, &key()).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(out.is_empty(), "wrote output before refusing: {err}");
    };
    check(&[], &meta(), "0 payloads");
    let empty = source(dir.path(), "empty", Role::Kernel, b"");
    check(&[empty], &meta(), "is empty");
    check(&vec![ok.clone(); 17], &meta(), "17 payloads");
    let bad_name = PayloadSource {
        name: "Root FS".into(),
        ..ok.clone()
    };
    check(&[bad_name], &meta(), "payload name");
    let renamed = PayloadSource {
        path: ok.path.clone(),
        ..ok.clone()
    };
    check(&[ok.clone(), renamed], &meta(), "used twice");
    let bad_chunk = PayloadSource {
        chunk_size: 100_000,
        ..ok.clone()
    };
    check(&[bad_chunk], &meta(), "power of two");
    let no_boards = ManifestMeta {
        compatible: vec![],
        ..meta()
    };
    check(std::slice::from_ref(&ok), &no_boards, "compatible");

    let missing = PayloadSource {
        path: dir.path().join("nope"),
        ..ok
    };
    let err = create(&mut Vec::new(), &meta(), &[missing], &key()).unwrap_err();
    assert!(matches!(err, Error::PayloadFile { .. }), "{err}");
}

#[test]
fn a_payload_exactly_one_chunk_long_and_a_tiny_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let one = data(CHUNK as usize, 5);
    let tiny = data(1, 6);
    let sources = [
        source(dir.path(), "boot.tar", Role::BootFiles, &one),
        source(dir.path(), "initrd", Role::Initramfs, &tiny),
    ];
    let mut b = Vec::new();
    let m = create(&mut b, &meta(), &sources, &key()).unwrap();
    assert_eq!(m.payloads[0].chunk_hashes.len(), 1);
    assert_eq!(b.len() % 4096, 1);
    let mut bundle = open_verified(&b[..], &keyring()).unwrap();
    let mut got = Vec::new();
    while let Some(mut p) = bundle.next_payload().unwrap() {
        let mut v = Vec::new();
        p.read_to_end(&mut v).unwrap();
        got.push(v);
    }
    assert_eq!(got.len(), 2);
    assert!(got[0] == one && got[1] == tiny, "payload bytes differ");
}

/// The worked example in docs/bundle-format.md: if this changes, update the document.
#[test]
fn documented_example_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let sources = [source(
        dir.path(),
        "kernel",
        Role::Kernel,
        b"hello, cairn\n",
    )];
    let meta = ManifestMeta {
        compatible: vec!["qemu-x86_64".into()],
        arch: "x86_64".into(),
        version: Version::parse("1.0.0").unwrap(),
        security_version: 1,
        min_installed_version: Version::parse("0.9.0").unwrap(),
        created: 1_700_000_000,
    };
    let key = SecretKey::from_bytes([1; 32]);
    assert_eq!(
        key.public().to_text(),
        "cairn-ed25519-public 8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c\n"
    );
    assert_eq!(key.key_id().to_string(), "34750f98bd59fcfc");
    let mut b = Vec::new();
    create(&mut b, &meta, &sources, &key).unwrap();
    assert_eq!(b.len(), 4109);
    assert_eq!(hex::encode(&b[..16]), "434149524e42444c0000000100000173");
    let expected = concat!(
        "d2844da20127044834750f98bd59fcfca059011da96770726f6475637465636169726e6a636f6d706174",
        "69626c65816b71656d752d7838365f36346461726368667838365f36346776657273696f6e65312e302e",
        "307073656375726974795f76657273696f6e01756d696e5f696e7374616c6c65645f76657273696f6e65",
        "302e392e3067637265617465641a6553f100666b65795f69644834750f98bd59fcfc687061796c6f6164",
        "7381a6646e616d65666b65726e656c64726f6c65666b65726e656c6473697a650d667368613235365820",
        "dd97d2ffe163c07298d0aa477c671b91fc4eb9779847afa8877c762db4e445336a6368756e6b5f73697a",
        "651a000100006c6368756e6b5f6861736865735820dd97d2ffe163c07298d0aa477c671b91fc4eb97798",
        "47afa8877c762db4e445335840bfea196b9b441a6788637ab57617a591184470b5a95eb567544c5ad2f3",
        "6e2499c411d31d6a818b68fab3b0333989cb3cc964f79e3ea48203ae29ba63be241d03",
    );
    assert_eq!(hex::encode(&b[16..16 + 371]), expected);
    assert!(b[16 + 371..4096].iter().all(|&x| x == 0));
    assert_eq!(&b[4096..], b"hello, cairn\n");
}

#[test]
fn take_chunk_hands_out_whole_verified_chunks_without_copies() {
    let f = Fixture::new();
    let mut bundle = open_verified(&f.bundle[..], &keyring()).unwrap();
    let mut rootfs = bundle.next_payload().unwrap().unwrap();
    // A few bytes through Read first: take_chunk then returns the rest of that chunk.
    let mut head = [0u8; 10];
    rootfs.read_exact(&mut head).unwrap();
    let mut got = head.to_vec();
    let mut sizes = Vec::new();
    let mut spare = Vec::new();
    while let Some(chunk) = rootfs.take_chunk(spare).unwrap() {
        sizes.push(chunk.len());
        got.extend_from_slice(&chunk);
        spare = chunk;
    }
    assert_eq!(got, f.rootfs);
    let c = CHUNK as usize;
    assert_eq!(sizes, [c - 10, c, c, ROOTFS_LEN - 3 * c]);
    assert!(bundle.next_payload().unwrap().is_some(), "kernel follows");
}

#[test]
fn deferred_payload_hashes_still_check_every_chunk() {
    let f = Fixture::new();
    // A wrong whole hash is left to the caller once deferred...
    let mut map = manifest_value(&f.manifest);
    set_field(
        &mut payloads_of(&mut map)[1],
        "sha256",
        Value::Bytes(vec![0; 32]),
    );
    let bad_whole = hand_made(encode(map), &key(), &[&f.rootfs, &f.kernel]);
    let mut bundle = open_verified(&bad_whole[..], &keyring()).unwrap();
    bundle.defer_payload_hashes();
    while bundle.next_payload().unwrap().is_some() {}
    // ...but a flipped payload byte is still caught at its chunk.
    let bad = f.with_byte_flipped(f.rootfs_offset() + 2 * CHUNK as usize + 5);
    let mut bundle = open_verified(&bad[..], &keyring()).unwrap();
    bundle.defer_payload_hashes();
    let mut rootfs = bundle.next_payload().unwrap().unwrap();
    let mut spare = Vec::new();
    let mut chunks = 0;
    let err = loop {
        match rootfs.take_chunk(spare) {
            Ok(Some(c)) => {
                chunks += 1;
                spare = c;
            }
            Ok(None) => panic!("the flipped byte was not caught"),
            Err(e) => break e,
        }
    };
    assert_eq!(chunks, 2);
    assert!(
        matches!(err, Error::ChunkMismatch { chunk: 2, .. }),
        "{err}"
    );
}

#[test]
fn expected_len_is_the_file_length() {
    let f = Fixture::new();
    let bundle = open_verified(&f.bundle[..], &keyring()).unwrap();
    assert_eq!(bundle.expected_len(), f.bundle.len() as u64);
}
