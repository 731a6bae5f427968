//! The test vectors in `bundle/vectors/`: how each is made, and that each has the outcome
//! `bundle/vectors/expected.txt` lists for it (docs/bundle-format.md section 8 lists them too).
//!
//! Every vector is generated here from the worked example of the format document, so the files
//! can be checked byte for byte and regenerated with `CAIRN_WRITE_VECTORS=1 cargo test -p
//! cairn-bundle vectors`. The bundles are signed with the example's key (seed `01` x 32), which
//! `keyring.txt` trusts, so a reader that accepts a malformed one is not stopped by the signature.

use std::path::PathBuf;

use ciborium::Value;

use crate::cbor_bounds::push_header;
use crate::*;

const PAYLOAD: &[u8] = b"hello, cairn\n";

fn key() -> SecretKey {
    SecretKey::from_bytes([1; 32])
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// The worked example's manifest as ordered (key, value) pairs.
fn example_pairs() -> Vec<(Value, Value)> {
    let manifest = Manifest {
        compatible: vec!["qemu-x86_64".into()],
        arch: "x86_64".into(),
        version: Version::parse("1.0.0").unwrap(),
        security_version: 1,
        min_installed_version: Version::parse("0.9.0").unwrap(),
        created: 1_700_000_000,
        key_id: key().key_id(),
        payloads: vec![PayloadEntry {
            name: "kernel".into(),
            role: Role::Kernel,
            size: PAYLOAD.len() as u64,
            sha256: sha(PAYLOAD),
            chunk_size: 65536,
            chunk_hashes: vec![sha(PAYLOAD)],
        }],
    };
    match ciborium::de::from_reader(&manifest.to_cbor()[..]).unwrap() {
        Value::Map(pairs) => pairs,
        _ => unreachable!(),
    }
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn cbor(pairs: Vec<(Value, Value)>) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Value::Map(pairs), &mut out).unwrap();
    out
}

fn set(pairs: &mut [(Value, Value)], key: &str, value: Value) {
    let slot = pairs
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap();
    slot.1 = value;
}

fn set_in_payload(pairs: &mut [(Value, Value)], key: &str, value: Value) {
    let payloads = pairs
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("payloads"))
        .unwrap();
    let Value::Array(list) = &mut payloads.1 else {
        unreachable!()
    };
    let Value::Map(payload) = &mut list[0] else {
        unreachable!()
    };
    set(payload, key, value);
}

/// Replaces the one occurrence of `from` in `bytes` with `to`.
fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    assert!(
        bytes[at + 1..].windows(from.len()).all(|w| w != from),
        "pattern appears once"
    );
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

fn protected_for(kid: KeyId) -> Vec<u8> {
    [&[0xa2, 0x01, 0x27, 0x04, 0x48][..], &kid.0].concat()
}

/// A tagged COSE_Sign1 around `manifest`, with `protected` exactly as given, signed over it.
fn envelope(protected: &[u8], manifest: &[u8]) -> Vec<u8> {
    let signature = key().sign(&crate::cose::sig_structure(protected, manifest));
    let mut out = vec![0xd2, 0x84];
    push_header(&mut out, 2, protected.len() as u64);
    out.extend_from_slice(protected);
    out.push(0xa0);
    push_header(&mut out, 2, manifest.len() as u64);
    out.extend_from_slice(manifest);
    push_header(&mut out, 2, 64);
    out.extend_from_slice(&signature);
    out
}

/// A bundle file: header, the envelope, zero padding, and the example's payload.
fn bundle(envelope: &[u8]) -> Vec<u8> {
    let mut out = b"CAIRNBDL".to_vec();
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
    out.extend_from_slice(envelope);
    out.resize(out.len().next_multiple_of(4096), 0);
    out.extend_from_slice(PAYLOAD);
    out
}

fn signed(manifest: &[u8]) -> Vec<u8> {
    bundle(&envelope(&protected_for(key().key_id()), manifest))
}

/// Every vector file's name and bytes.
fn generate() -> Vec<(&'static str, Vec<u8>)> {
    let kid = key().key_id();
    let example = cbor(example_pairs());
    let mut v = Vec::new();

    v.push(("valid.cairn", signed(&example)));
    let mut reordered = example_pairs();
    reordered.reverse();
    v.push(("manifest-keys-reordered.cairn", signed(&cbor(reordered))));
    let version = |text: &str| {
        let mut pairs = example_pairs();
        set(&mut pairs, "version", Value::Text(text.into()));
        signed(&cbor(pairs))
    };
    v.push(("version-u64-max.cairn", version("18446744073709551615.0.0")));
    v.push((
        "version-above-u64.cairn",
        version("18446744073709551616.0.0"),
    ));

    let mut indefinite_map = vec![0xbf, 0x01, 0x27, 0x04, 0x48];
    indefinite_map.extend_from_slice(&kid.0);
    indefinite_map.push(0xff);
    v.push((
        "protected-indefinite-map.cairn",
        bundle(&envelope(&indefinite_map, &example)),
    ));
    let mut indefinite_kid = vec![0xa2, 0x01, 0x27, 0x04, 0x5f, 0x48];
    indefinite_kid.extend_from_slice(&kid.0);
    indefinite_kid.push(0xff);
    v.push((
        "protected-indefinite-kid.cairn",
        bundle(&envelope(&indefinite_kid, &example)),
    ));
    let mut labels_reordered = vec![0xa2, 0x04, 0x48];
    labels_reordered.extend_from_slice(&kid.0);
    labels_reordered.extend_from_slice(&[0x01, 0x27]);
    v.push((
        "protected-labels-reordered.cairn",
        bundle(&envelope(&labels_reordered, &example)),
    ));
    let long_kid = patch(&protected_for(kid), &[0x48], &[0x58, 0x08]);
    v.push((
        "protected-kid-long-form.cairn",
        bundle(&envelope(&long_kid, &example)),
    ));

    // created = 1700000000 as a 9-byte integer instead of 5 bytes.
    let long_int = patch(
        &example,
        &[0x1a, 0x65, 0x53, 0xf1, 0x00],
        &[0x1b, 0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00],
    );
    v.push(("manifest-integer-long-form.cairn", signed(&long_int)));
    // "cairn" with its length in a second byte (78 05) instead of the initial byte (65).
    let long_len = patch(&example, b"\x65cairn", b"\x78\x05cairn");
    v.push(("manifest-length-long-form.cairn", signed(&long_len)));
    let mut long_tag = envelope(&protected_for(kid), &example);
    long_tag.splice(0..1, [0xd8, 0x12]);
    v.push(("envelope-tag-long-form.cairn", bundle(&long_tag)));

    let mut underscore = example_pairs();
    set_in_payload(&mut underscore, "name", Value::Text("boot_kernel".into()));
    v.push(("payload-name-underscore.cairn", signed(&cbor(underscore))));
    // 8 GiB in 64 KiB chunks is 131072 chunks, above the 122880 a bundle may have.
    let mut many = example_pairs();
    set_in_payload(&mut many, "size", Value::Integer((8u64 << 30).into()));
    v.push(("too-many-chunks.cairn", signed(&cbor(many))));

    let a = key().public().to_text();
    let a = a.trim_end();
    let b = SecretKey::from_bytes([2; 32]).public().to_text();
    let b = b.trim_end();
    v.push((
        "keyring.txt",
        format!("# Test vectors' keyring: the example key, and a revoked one.\n\n{a}\n  # indented comment\n{b} revoked\n").into_bytes(),
    ));
    v.push(("keyring-crlf.txt", format!("{a}\r\n").into_bytes()));
    let upper = a.replace(&a[21..], &a[21..].to_uppercase());
    v.push(("keyring-uppercase.txt", format!("{upper}\n").into_bytes()));
    v.push(("keyring-padded.txt", format!("{a} \n").into_bytes()));
    v.push((
        "keyring-trusts-none.txt",
        format!("# no trusted key\n{b} revoked\n").into_bytes(),
    ));
    v
}

#[test]
fn vectors_match_their_generator() {
    let write = std::env::var_os("CAIRN_WRITE_VECTORS").is_some();
    for (name, bytes) in generate() {
        let path = dir().join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (CAIRN_WRITE_VECTORS=1 writes it)", path.display())
        });
        assert!(
            on_disk == bytes,
            "{name} differs from what the generator makes"
        );
    }
}

/// The outcome of one vector, as `expected.txt` spells it.
fn outcome(name: &str, keyring: &Keyring) -> Result<(), String> {
    let path = dir().join(name);
    if name.ends_with(".txt") {
        let text = std::fs::read_to_string(&path).unwrap();
        let ring = Keyring::parse(&text).map_err(|e| e.to_string())?;
        return ring.require_trusted().map_err(|e| e.to_string());
    }
    let file = std::fs::File::open(&path).unwrap();
    verify_all(file, keyring)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn vectors_have_their_documented_outcome() {
    let keyring =
        Keyring::parse(&std::fs::read_to_string(dir().join("keyring.txt")).unwrap()).unwrap();
    let expected = std::fs::read_to_string(dir().join("expected.txt")).unwrap();
    let mut listed = Vec::new();
    for line in expected
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut words = line.splitn(3, ' ');
        let name = words.next().unwrap();
        let verdict = words.next().unwrap();
        let phrase = words.next().unwrap_or("").trim();
        listed.push(name.to_string());
        match (verdict, outcome(name, &keyring)) {
            ("accept", Ok(())) => {}
            ("refuse", Err(reason)) => assert!(
                reason.contains(phrase),
                "{name}: refused with {reason:?}, expected a reason with {phrase:?}"
            ),
            (verdict, got) => panic!("{name}: expected {verdict}, got {got:?}"),
        }
    }
    let mut generated: Vec<String> = generate().into_iter().map(|(n, _)| n.into()).collect();
    generated.sort();
    listed.sort();
    assert_eq!(listed, generated, "expected.txt lists every vector once");
}

#[test]
fn cbor_shape_vectors_have_their_documented_outcome() {
    let text = std::fs::read_to_string(dir().join("cbor-shape.txt")).unwrap();
    let mut count = 0;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (verdict, rest) = line.split_once(' ').unwrap();
        let hex_part = rest.split(" #").next().unwrap().trim();
        let bytes = expand(hex_part);
        let got = crate::cbor_bounds::check(&bytes);
        match verdict {
            "accept" => assert!(got.is_ok(), "{line}: {got:?}"),
            "refuse" => assert!(got.is_err(), "{line}: accepted"),
            _ => panic!("{line}: unknown verdict"),
        }
        count += 1;
    }
    assert!(count >= 10, "cbor-shape.txt holds {count} vectors");
}

/// Hex with `xN` repetition: `81x8 00` is eight `81` bytes then `00`.
fn expand(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let (hex_part, times) = match word.split_once('x') {
            Some((h, n)) => (h, n.parse::<usize>().unwrap()),
            None => (word, 1),
        };
        let bytes = hex::decode(hex_part).unwrap();
        for _ in 0..times {
            out.extend_from_slice(&bytes);
        }
    }
    out
}
