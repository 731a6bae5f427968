//! What the LUKS2 fuzz targets feed `cairn-luks`, and the seed corpus they start from.
//!
//! The one idea: a header read from a device is hostile input, so reading one must never panic,
//! never allocate without bound, and any header it accepts must keep the promises the rest of
//! the crate relies on (every keyslot area inside the keyslots area, at most 32 keyslots and
//! tokens, tokens naming existing keyslots). Two targets:
//!
//! - `header_json`: the input is the JSON area; it is put behind a valid binary header with a
//!   correct checksum, so the JSON parser and the metadata checks see every input.
//! - `header_image`: the input is the start of a device as it is (usually failing the
//!   checksum: this exercises the binary header checks and the fallback to the secondary).
//!
//! For an accepted header the dm-crypt table is built, and unlocking is tried when the KDF
//! costs are small enough for a fuzzer.

use std::os::unix::fs::FileExt;

use cairn_luks::dm_crypt::CryptTable;
use cairn_luks::{FormatOptions, Kdf, Luks2, VolumeKey, DEFAULT_HDR_SIZE, MAX_KEYSLOTS};
use sha2::{Digest, Sha256};

const HDR: usize = DEFAULT_HDR_SIZE as usize;
const CSUM: std::ops::Range<usize> = 448..512;

/// A freshly formatted image's first 64 KiB (both header copies and the first keyslot's start).
fn template() -> Vec<u8> {
    static TEMPLATE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let f = tempfile::tempfile().expect("temp file");
            f.set_len((16 << 20) + 4096).expect("sizing the image");
            let opts = FormatOptions {
                kdf: Kdf::Pbkdf2 { iterations: 1000 },
                digest_iterations: 1000,
                ..FormatOptions::default()
            };
            Luks2::format(&f, &VolumeKey::from_bytes(&[1; 64]), b"pw", &opts).expect("format");
            let mut buf = vec![0u8; 64 << 10];
            f.read_exact_at(&mut buf, 0).expect("reading the image");
            buf
        })
        .clone()
}

fn fix_checksum(copy: &mut [u8]) {
    copy[CSUM].fill(0);
    let sum = Sha256::digest(&*copy);
    copy[CSUM.start..CSUM.start + 32].copy_from_slice(&sum);
}

/// Puts `json` in the primary copy's JSON area, fixes its checksum, breaks the secondary.
pub fn check_json(json: &[u8]) {
    let mut image = template();
    let area = &mut image[4096..HDR];
    let n = json.len().min(area.len());
    area.fill(0);
    area[..n].copy_from_slice(&json[..n]);
    fix_checksum(&mut image[..HDR]);
    image[HDR] = 0;
    check(&image);
}

/// Reads `image` as the start of a device.
pub fn check_image(image: &[u8]) {
    check(image);
}

fn check(image: &[u8]) {
    let Ok(luks) = Luks2::open(image) else {
        return;
    };
    let m = luks.metadata();
    assert!(m.keyslots.len() <= MAX_KEYSLOTS);
    assert_eq!(m.config.json_size + 4096, luks.hdr_size());
    let start = 2 * luks.hdr_size();
    for ks in m.keyslots.values() {
        assert!(ks.area.offset >= start);
        assert!(ks.area.offset + ks.area.size <= start + m.config.keyslots_size);
    }
    for t in m.tokens.values() {
        for k in &t.keyslots {
            assert!(m
                .keyslots
                .contains_key(&k.parse::<u32>().expect("numeric keyslot")));
        }
    }
    let _ = CryptTable::new(
        &luks,
        &VolumeKey::from_bytes(&[0; 64]),
        "/dev/x".as_ref(),
        1 << 30,
    );
    let cheap = m.keyslots.values().all(|k| {
        k.kdf.iterations.unwrap_or(0) <= 2000
            && k.kdf.memory.unwrap_or(0) <= 256
            && k.kdf.time.unwrap_or(0) <= 2
    }) && m.digests.values().all(|d| d.iterations <= 2000);
    if cheap {
        let _ = luks.unlock(image, b"pw");
    }
}

/// The seed corpus: (target, file name, bytes).
pub fn seeds() -> Vec<crate::Seed> {
    let image = template();
    let json_end = image[4096..HDR].iter().position(|&b| b == 0).unwrap_or(0);
    vec![
        (
            "header_json",
            "format.json".into(),
            image[4096..4096 + json_end].to_vec(),
        ),
        (
            "header_image",
            "format.img".into(),
            image[..2 * HDR].to_vec(),
        ),
        ("header_image", "format-keyslot.img".into(), image),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_are_accepted() {
        for (target, _, bytes) in super::seeds() {
            // Each seed is a header the reader accepts.
            let image = match target {
                "header_json" => {
                    super::check_json(&bytes);
                    let mut image = super::template();
                    image[4096..super::HDR].fill(0);
                    image[4096..4096 + bytes.len()].copy_from_slice(&bytes);
                    super::fix_checksum(&mut image[..super::HDR]);
                    image
                }
                _ => {
                    super::check_image(&bytes);
                    bytes
                }
            };
            cairn_luks::Luks2::open(&image[..]).expect("seed header opens");
        }
    }
}
