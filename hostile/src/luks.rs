//! LUKS2 headers a device must refuse when it unlocks STATE (each file is the start of the
//! partition: one 16 KiB header copy, the rest of the partition zeros): no magic, a checksum
//! that does not hold, JSON that is not JSON or not NUL-terminated, sizes that do not agree, a
//! keyslot area outside the keyslots area, too many keyslots, an unknown KDF, Argon2 costs past
//! the limits, and a well-formed header whose keyslot the key does not open.

use base64::Engine as _;
use sha2::{Digest, Sha256};

const HDR_SIZE: usize = 16 * 1024;
const BIN_SIZE: usize = 4096;

/// One header copy: the binary header, `json` in the JSON area, the checksum over both.
fn header(json: &str, hdr_size_field: u64, magic: &[u8; 6]) -> Vec<u8> {
    let mut h = vec![0u8; HDR_SIZE];
    h[..6].copy_from_slice(magic);
    h[6..8].copy_from_slice(&2u16.to_be_bytes());
    h[8..16].copy_from_slice(&hdr_size_field.to_be_bytes());
    h[16..24].copy_from_slice(&7u64.to_be_bytes());
    h[24..29].copy_from_slice(b"STATE");
    h[72..78].copy_from_slice(b"sha256");
    h[104..168].fill(0x11);
    h[168..204].copy_from_slice(b"0c4e5b7e-1d2a-4f1e-9a53-5f2c6e0d7a11");
    let n = json.len().min(HDR_SIZE - BIN_SIZE);
    h[BIN_SIZE..BIN_SIZE + n].copy_from_slice(&json.as_bytes()[..n]);
    let sum: [u8; 32] = Sha256::digest(&h).into();
    h[448..480].copy_from_slice(&sum);
    h
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Metadata shaped like cryptsetup's, with one keyslot; `kdf` is the keyslot's `kdf` object.
fn json_with(keyslots: &str) -> String {
    let digest = b64(&[0x42; 32]);
    let salt = b64(&[0x24; 32]);
    format!(
        r#"{{"keyslots":{{{keyslots}}},"tokens":{{}},"segments":{{"0":{{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}}}},"digests":{{"0":{{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":"{salt}","digest":"{digest}"}}}},"config":{{"json_size":"12288","keyslots_size":"16744448"}}}}"#
    )
}

fn keyslot(id: u32, offset: u64, stripes: u32, kdf: &str) -> String {
    format!(
        r#""{id}":{{"type":"luks2","key_size":64,"af":{{"type":"luks1","stripes":{stripes},"hash":"sha256"}},"area":{{"type":"raw","offset":"{offset}","size":"258048","encryption":"aes-xts-plain64","key_size":64}},"kdf":{kdf}}}"#
    )
}

fn pbkdf2() -> String {
    format!(
        r#"{{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"{}"}}"#,
        b64(&[0x33; 32])
    )
}

pub fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let primary = b"LUKS\xba\xbe";
    let good_json = json_with(&keyslot(0, 32768, 4000, &pbkdf2()));
    let good = header(&good_json, HDR_SIZE as u64, primary);
    let mut checksum_bad = good.clone();
    checksum_bad[BIN_SIZE + 3] ^= 0x20;
    let many: Vec<String> = (0..33)
        .map(|i| keyslot(i, 32768, 4000, &pbkdf2()))
        .collect();
    let argon = |time: u64, memory: u64| {
        json_with(&keyslot(
            0,
            32768,
            4000,
            &format!(
                r#"{{"type":"argon2id","time":{time},"memory":{memory},"cpus":1,"salt":"{}"}}"#,
                b64(&[0x33; 32])
            ),
        ))
    };
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("no-magic.img", vec![0; HDR_SIZE], "no LUKS2 magic"),
        ("checksum-bad.img", checksum_bad, "checksum"),
        (
            "json-garbage.img",
            header("{\"keyslots\": [", HDR_SIZE as u64, primary),
            "JSON",
        ),
        (
            "json-not-terminated.img",
            header(&"x".repeat(HDR_SIZE - BIN_SIZE), HDR_SIZE as u64, primary),
            "NUL",
        ),
        (
            "header-size-odd.img",
            header(&good_json, HDR_SIZE as u64 + 1, primary),
            "header size",
        ),
        (
            "json-size-mismatch.img",
            header(
                &good_json.replace("\"12288\"", "\"28672\""),
                HDR_SIZE as u64,
                primary,
            ),
            "json_size",
        ),
        (
            "keyslot-area-outside.img",
            header(
                &json_with(&keyslot(0, 1 << 40, 4000, &pbkdf2())),
                HDR_SIZE as u64,
                primary,
            ),
            "outside the keyslots area",
        ),
        (
            "keyslot-stripes-1.img",
            header(
                &json_with(&keyslot(0, 32768, 1, &pbkdf2())),
                HDR_SIZE as u64,
                primary,
            ),
            "stripes",
        ),
        (
            "too-many-keyslots.img",
            header(&json_with(&many.join(",")), HDR_SIZE as u64, primary),
            "too many keyslots",
        ),
        (
            "kdf-unknown.img",
            header(
                &json_with(&keyslot(
                    0,
                    32768,
                    4000,
                    r#"{"type":"scrypt","salt":"AAAA"}"#,
                )),
                HDR_SIZE as u64,
                primary,
            ),
            "scrypt",
        ),
        (
            "argon2-memory-64gib.img",
            header(&argon(4, 64 << 20), HDR_SIZE as u64, primary),
            "costs out of range",
        ),
        (
            "argon2-time-huge.img",
            header(&argon(1 << 30, 1024), HDR_SIZE as u64, primary),
            "costs out of range",
        ),
        ("wrong-key.img", good, "opens no keyslot"),
    ];
    cases
        .into_iter()
        .map(|(n, b, e)| (n.to_string(), b, e))
        .collect()
}
