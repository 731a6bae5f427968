//! The manifest: what a bundle contains and which devices may take it, as a CBOR map.
//!
//! Decoding is strict because the manifest is outside data: every key must be known, every key
//! appears once, every string, array and byte string is bounded, and the semantic rules (chunk
//! hash count, unique names, chunk size range) are checked before a [`Manifest`] exists.

use std::collections::BTreeMap;
use std::fmt;

use ciborium::Value;
use semver::Version;

use crate::error::{Error, Result};
use crate::format::{
    MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_NAME_LEN, MAX_PAYLOADS, MAX_PAYLOAD_SIZE, MIN_CHUNK_SIZE,
    PRODUCT,
};
use crate::keys::KeyId;

/// The most board names a manifest's `compatible` list may hold.
pub const MAX_COMPATIBLE: usize = 16;

/// What a payload is for; tells the installer where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The root filesystem image for the inactive slot.
    Rootfs,
    /// The kernel image.
    Kernel,
    /// The initramfs.
    Initramfs,
    /// Files for the boot partition (an archive the installer unpacks).
    BootFiles,
    /// A unified kernel image (kernel, initramfs and command line, possibly signed for Secure
    /// Boot) for one slot; the payload name says which (`uki-a.efi`, `uki-b.efi`).
    Uki,
}

impl Role {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Rootfs => "rootfs",
            Role::Kernel => "kernel",
            Role::Initramfs => "initramfs",
            Role::BootFiles => "boot-files",
            Role::Uki => "uki",
        }
    }

    /// Parses the manifest spelling.
    pub fn parse(text: &str) -> Option<Role> {
        [
            Role::Rootfs,
            Role::Kernel,
            Role::Initramfs,
            Role::BootFiles,
            Role::Uki,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One payload as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadEntry {
    /// Unique within the bundle; 1..=64 bytes of `[a-z0-9.-]` (no `_`), starting with `[a-z0-9]`.
    pub name: String,
    /// What the payload is for.
    pub role: Role,
    /// Exact size in bytes, 1..=64 GiB.
    pub size: u64,
    /// sha256 of the whole payload.
    pub sha256: [u8; 32],
    /// Chunk size for `chunk_hashes`: a power of two in 64 KiB..=16 MiB.
    pub chunk_size: u32,
    /// sha256 of each chunk in order; the last chunk may be short.
    pub chunk_hashes: Vec<[u8; 32]>,
}

impl PayloadEntry {
    /// Number of chunks a payload of `size` bytes has with `chunk_size`.
    pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
        size.div_ceil(u64::from(chunk_size))
    }
}

/// The decoded, validated manifest. `product` is always [`PRODUCT`] and is not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Board names that may install the bundle, 1..=16.
    pub compatible: Vec<String>,
    /// CPU architecture, e.g. `aarch64`.
    pub arch: String,
    /// The release this bundle installs.
    pub version: Version,
    /// The anti-rollback floor this bundle raises the device to.
    pub security_version: u32,
    /// The oldest installed version allowed to take this bundle.
    pub min_installed_version: Version,
    /// Creation time, unix seconds.
    pub created: u64,
    /// The signing key's id; equals the COSE kid.
    pub key_id: KeyId,
    /// The payloads in file order, 1..=16.
    pub payloads: Vec<PayloadEntry>,
}

fn is_identifier(text: &str, allow_underscore: bool) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text.as_bytes()[0].is_ascii_alphanumeric()
        && text.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'.'
                || b == b'-'
                || (allow_underscore && b == b'_')
        })
}

/// Checks a payload name: 1..=64 bytes of `[a-z0-9.-]`, starting with a letter or digit.
pub(crate) fn check_payload_name(name: &str) -> std::result::Result<(), String> {
    if is_identifier(name, false) {
        Ok(())
    } else {
        Err(format!(
            "payload name {name:?} must be 1..={MAX_NAME_LEN} characters of [a-z0-9.-] starting with a letter or digit"
        ))
    }
}

/// Checks a board name or architecture: like a payload name, `_` also allowed (`x86_64`).
fn check_board_word(what: &str, word: &str) -> std::result::Result<(), String> {
    if is_identifier(word, true) {
        Ok(())
    } else {
        Err(format!(
            "{what} {word:?} must be 1..={MAX_NAME_LEN} characters of [a-z0-9._-], starting with a letter or digit"
        ))
    }
}

impl Manifest {
    /// Checks every rule that does not depend on the encoding.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if self.compatible.is_empty() || self.compatible.len() > MAX_COMPATIBLE {
            return Err(format!(
                "compatible lists {} boards, expected 1..={MAX_COMPATIBLE}",
                self.compatible.len()
            ));
        }
        for (i, board) in self.compatible.iter().enumerate() {
            check_board_word("board name", board)?;
            if self.compatible[..i].contains(board) {
                return Err(format!("board {board:?} is listed twice in compatible"));
            }
        }
        check_board_word("arch", &self.arch)?;
        if self.payloads.is_empty() || self.payloads.len() > MAX_PAYLOADS {
            return Err(format!(
                "the bundle has {} payloads, expected 1..={MAX_PAYLOADS}",
                self.payloads.len()
            ));
        }
        let mut total_chunks = 0u64;
        for (i, p) in self.payloads.iter().enumerate() {
            check_payload_name(&p.name)?;
            if self.payloads[..i].iter().any(|q| q.name == p.name) {
                return Err(format!("payload name {:?} is used twice", p.name));
            }
            if p.size == 0 || p.size > MAX_PAYLOAD_SIZE {
                return Err(format!(
                    "payload {:?} has size {}, expected 1..={MAX_PAYLOAD_SIZE}",
                    p.name, p.size
                ));
            }
            if !p.chunk_size.is_power_of_two()
                || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&p.chunk_size)
            {
                return Err(format!(
                    "payload {:?} has chunk_size {}, expected a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                    p.name, p.chunk_size
                ));
            }
            let chunks = PayloadEntry::chunk_count(p.size, p.chunk_size);
            total_chunks += chunks;
            if total_chunks > MAX_CHUNKS {
                return Err(format!(
                    "the payloads have {total_chunks} chunks up to {:?}, more than the {MAX_CHUNKS} a bundle may have (use a larger chunk_size)",
                    p.name
                ));
            }
            if p.chunk_hashes.len() as u64 != chunks {
                return Err(format!(
                    "payload {:?} has {} bytes of chunk_hashes, expected {} ({chunks} chunks of 32 bytes)",
                    p.name,
                    p.chunk_hashes.len() * 32,
                    chunks * 32
                ));
            }
        }
        Ok(())
    }

    /// The manifest as CBOR, keys in the order the format document lists them.
    pub(crate) fn to_cbor(&self) -> Vec<u8> {
        let text = |s: &str| Value::Text(s.to_string());
        let uint = |n: u64| Value::Integer(n.into());
        let payloads = self
            .payloads
            .iter()
            .map(|p| {
                Value::Map(vec![
                    (text("name"), text(&p.name)),
                    (text("role"), text(p.role.as_str())),
                    (text("size"), uint(p.size)),
                    (text("sha256"), Value::Bytes(p.sha256.to_vec())),
                    (text("chunk_size"), uint(p.chunk_size.into())),
                    (text("chunk_hashes"), Value::Bytes(p.chunk_hashes.concat())),
                ])
            })
            .collect();
        let map = Value::Map(vec![
            (text("product"), text(PRODUCT)),
            (
                text("compatible"),
                Value::Array(self.compatible.iter().map(|b| text(b)).collect()),
            ),
            (text("arch"), text(&self.arch)),
            (text("version"), text(&self.version.to_string())),
            (text("security_version"), uint(self.security_version.into())),
            (
                text("min_installed_version"),
                text(&self.min_installed_version.to_string()),
            ),
            (text("created"), uint(self.created)),
            (text("key_id"), Value::Bytes(self.key_id.0.to_vec())),
            (text("payloads"), Value::Array(payloads)),
        ]);
        let mut out = Vec::new();
        ciborium::ser::into_writer(&map, &mut out).expect("writing CBOR to a Vec cannot fail");
        out
    }

    /// Decodes and validates manifest CBOR. The caller bounds `bytes` (at most the manifest limit).
    pub(crate) fn from_cbor(mut bytes: &[u8]) -> Result<Manifest> {
        let invalid = |reason: String| Error::Manifest { reason };
        crate::cbor_bounds::check(bytes).map_err(invalid)?;
        let value: Value = ciborium::de::from_reader(&mut bytes)
            .map_err(|e| invalid(format!("not valid CBOR: {e}")))?;
        if !bytes.is_empty() {
            return Err(invalid(format!(
                "{} extra bytes after the manifest map",
                bytes.len()
            )));
        }
        let manifest = decode_manifest(value).map_err(invalid)?;
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }
}

type Fields = BTreeMap<&'static str, Value>;

/// Splits a CBOR map into its fields, refusing non-text, unknown and repeated keys.
fn fields(value: Value, what: &str, known: &[&'static str]) -> std::result::Result<Fields, String> {
    let Value::Map(entries) = value else {
        return Err(format!("{what} is not a map"));
    };
    let mut out = Fields::new();
    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(format!("{what} has a key that is not text"));
        };
        let Some(&known_key) = known.iter().find(|k| **k == key) else {
            return Err(format!("{what} has unknown key {key:?}"));
        };
        if out.insert(known_key, value).is_some() {
            return Err(format!("{what} has key {key:?} twice"));
        }
    }
    Ok(out)
}

fn take(f: &mut Fields, key: &str, what: &str) -> std::result::Result<Value, String> {
    f.remove(key)
        .ok_or_else(|| format!("{what} lacks the key {key:?}"))
}

fn text(v: Value, field: &str, max: usize) -> std::result::Result<String, String> {
    match v {
        Value::Text(s) if s.len() <= max => Ok(s),
        Value::Text(s) => Err(format!(
            "{field} is {} bytes long, at most {max} allowed",
            s.len()
        )),
        _ => Err(format!("{field} is not a text string")),
    }
}

fn uint(v: Value, field: &str) -> std::result::Result<u64, String> {
    match v {
        Value::Integer(i) => {
            u64::try_from(i).map_err(|_| format!("{field} is negative or too large"))
        }
        _ => Err(format!("{field} is not an unsigned integer")),
    }
}

fn u32_field(v: Value, field: &str) -> std::result::Result<u32, String> {
    u32::try_from(uint(v, field)?).map_err(|_| format!("{field} does not fit in 32 bits"))
}

fn fixed_bytes<const N: usize>(v: Value, field: &str) -> std::result::Result<[u8; N], String> {
    match v {
        Value::Bytes(b) => b
            .try_into()
            .map_err(|b: Vec<u8>| format!("{field} is {} bytes, expected {N}", b.len())),
        _ => Err(format!("{field} is not a byte string")),
    }
}

fn array(v: Value, field: &str, max: usize) -> std::result::Result<Vec<Value>, String> {
    match v {
        Value::Array(items) if !items.is_empty() && items.len() <= max => Ok(items),
        Value::Array(items) => Err(format!(
            "{field} has {} entries, expected 1..={max}",
            items.len()
        )),
        _ => Err(format!("{field} is not an array")),
    }
}

fn version(v: Value, field: &str) -> std::result::Result<Version, String> {
    let s = text(v, field, MAX_NAME_LEN)?;
    Version::parse(&s).map_err(|e| format!("{field} {s:?} is not a semantic version: {e}"))
}

const MANIFEST_KEYS: &[&str] = &[
    "product",
    "compatible",
    "arch",
    "version",
    "security_version",
    "min_installed_version",
    "created",
    "key_id",
    "payloads",
];
const PAYLOAD_KEYS: &[&str] = &[
    "name",
    "role",
    "size",
    "sha256",
    "chunk_size",
    "chunk_hashes",
];

fn decode_manifest(value: Value) -> std::result::Result<Manifest, String> {
    let what = "the manifest";
    let mut f = fields(value, what, MANIFEST_KEYS)?;
    let product = text(take(&mut f, "product", what)?, "product", MAX_NAME_LEN)?;
    if product != PRODUCT {
        return Err(format!("product is {product:?}, expected {PRODUCT:?}"));
    }
    let compatible = array(
        take(&mut f, "compatible", what)?,
        "compatible",
        MAX_COMPATIBLE,
    )?
    .into_iter()
    .map(|v| text(v, "a compatible board name", MAX_NAME_LEN))
    .collect::<std::result::Result<_, _>>()?;
    let arch = text(take(&mut f, "arch", what)?, "arch", MAX_NAME_LEN)?;
    let version_v = version(take(&mut f, "version", what)?, "version")?;
    let security_version = u32_field(take(&mut f, "security_version", what)?, "security_version")?;
    let min_installed_version = version(
        take(&mut f, "min_installed_version", what)?,
        "min_installed_version",
    )?;
    let created = uint(take(&mut f, "created", what)?, "created")?;
    let key_id = KeyId(fixed_bytes(take(&mut f, "key_id", what)?, "key_id")?);
    let payloads = array(take(&mut f, "payloads", what)?, "payloads", MAX_PAYLOADS)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| decode_payload(i, v))
        .collect::<std::result::Result<_, _>>()?;
    Ok(Manifest {
        compatible,
        arch,
        version: version_v,
        security_version,
        min_installed_version,
        created,
        key_id,
        payloads,
    })
}

fn decode_payload(index: usize, value: Value) -> std::result::Result<PayloadEntry, String> {
    let what = format!("payloads[{index}]");
    let mut f = fields(value, &what, PAYLOAD_KEYS)?;
    let field = |k: &str| format!("{what}.{k}");
    let name = text(take(&mut f, "name", &what)?, &field("name"), MAX_NAME_LEN)?;
    let role_text = text(take(&mut f, "role", &what)?, &field("role"), MAX_NAME_LEN)?;
    let role = Role::parse(&role_text).ok_or_else(|| {
        format!(
            "{} is {role_text:?}, expected rootfs, kernel, initramfs or boot-files",
            field("role")
        )
    })?;
    let size = uint(take(&mut f, "size", &what)?, &field("size"))?;
    let sha256 = fixed_bytes(take(&mut f, "sha256", &what)?, &field("sha256"))?;
    let chunk_size = u32_field(take(&mut f, "chunk_size", &what)?, &field("chunk_size"))?;
    let chunk_hashes = match take(&mut f, "chunk_hashes", &what)? {
        Value::Bytes(b) if b.len() % 32 == 0 => b
            .chunks_exact(32)
            .map(|c| c.try_into().expect("chunks_exact yields 32 bytes"))
            .collect(),
        Value::Bytes(b) => {
            return Err(format!(
                "{} is {} bytes, not a multiple of 32",
                field("chunk_hashes"),
                b.len()
            ))
        }
        _ => return Err(format!("{} is not a byte string", field("chunk_hashes"))),
    };
    Ok(PayloadEntry {
        name,
        role,
        size,
        sha256,
        chunk_size,
        chunk_hashes,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            compatible: vec!["qemu-x86_64".into(), "pc".into()],
            arch: "x86_64".into(),
            version: Version::parse("1.4.0-rc.1+g1234").unwrap(),
            security_version: 3,
            min_installed_version: Version::parse("1.2.0").unwrap(),
            created: 1_700_000_000,
            key_id: KeyId([1, 2, 3, 4, 5, 6, 7, 8]),
            payloads: vec![PayloadEntry {
                name: "rootfs".into(),
                role: Role::Rootfs,
                size: 65536 * 2 + 1,
                sha256: [9; 32],
                chunk_size: 65536,
                chunk_hashes: vec![[1; 32], [2; 32], [3; 32]],
            }],
        }
    }

    fn reason(bytes: &[u8]) -> String {
        match Manifest::from_cbor(bytes) {
            Err(Error::Manifest { reason }) => reason,
            other => panic!("expected a manifest error, got {other:?}"),
        }
    }

    /// The sample's CBOR with one top-level or payload field replaced (or added, or removed).
    fn edited(edit: impl FnOnce(&mut Vec<(Value, Value)>, &mut Vec<(Value, Value)>)) -> Vec<u8> {
        let cbor = sample().to_cbor();
        let Value::Map(mut top) = ciborium::de::from_reader::<Value, _>(&cbor[..]).unwrap() else {
            unreachable!()
        };
        let pos = top
            .iter()
            .position(|(k, _)| k.as_text() == Some("payloads"))
            .unwrap();
        let Value::Array(mut ps) = top[pos].1.clone() else {
            unreachable!()
        };
        let Value::Map(mut p0) = ps[0].clone() else {
            unreachable!()
        };
        edit(&mut top, &mut p0);
        ps[0] = Value::Map(p0);
        if let Some(slot) = top
            .iter_mut()
            .find(|(k, _)| k.as_text() == Some("payloads"))
        {
            slot.1 = Value::Array(ps);
        }
        let mut out = Vec::new();
        ciborium::ser::into_writer(&Value::Map(top), &mut out).unwrap();
        out
    }

    fn set(map: &mut [(Value, Value)], key: &str, value: Value) {
        map.iter_mut()
            .find(|(k, _)| k.as_text() == Some(key))
            .unwrap()
            .1 = value;
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::from_cbor(&m.to_cbor()).unwrap(), m);
    }

    #[test]
    fn unknown_repeated_and_missing_keys_are_refused() {
        let r = reason(&edited(|top, _| {
            top.push((Value::Text("extra".into()), Value::Null))
        }));
        assert!(r.contains("unknown key \"extra\""), "{r}");
        let r = reason(&edited(|_, p| {
            p.push((Value::Text("mode".into()), Value::Null))
        }));
        assert!(r.contains("payloads[0] has unknown key \"mode\""), "{r}");
        let r = reason(&edited(|top, _| {
            let dup = top[0].clone();
            top.push(dup)
        }));
        assert!(r.contains("twice"), "{r}");
        let r = reason(&edited(|top, _| {
            top.retain(|(k, _)| k.as_text() != Some("created"))
        }));
        assert!(r.contains("lacks the key \"created\""), "{r}");
        let r = reason(&edited(|top, _| {
            top.push((Value::Integer(1.into()), Value::Null))
        }));
        assert!(r.contains("not text"), "{r}");
    }

    #[test]
    fn field_rules_are_enforced() {
        let r = reason(&edited(|top, _| {
            set(top, "product", Value::Text("other".into()))
        }));
        assert!(r.contains("product"), "{r}");
        let r = reason(&edited(|top, _| {
            set(top, "version", Value::Text("1.2".into()))
        }));
        assert!(r.contains("not a semantic version"), "{r}");
        let r = reason(&edited(|top, _| {
            set(top, "security_version", Value::Integer((1u64 << 32).into()))
        }));
        assert!(r.contains("32 bits"), "{r}");
        let r = reason(&edited(|top, _| {
            set(top, "key_id", Value::Bytes(vec![0; 7]))
        }));
        assert!(r.contains("key_id is 7 bytes"), "{r}");
        let r = reason(&edited(|top, _| {
            set(top, "compatible", Value::Array(vec![]))
        }));
        assert!(r.contains("compatible has 0 entries"), "{r}");
        let r = reason(&edited(|top, _| {
            set(top, "arch", Value::Text("x".repeat(65)))
        }));
        assert!(r.contains("at most 64"), "{r}");
        let r = reason(&edited(|_, p| {
            set(p, "name", Value::Text("Root FS".into()))
        }));
        assert!(r.contains("payload name"), "{r}");
        let r = reason(&edited(|_, p| set(p, "name", Value::Text("..".into()))));
        assert!(r.contains("payload name"), "{r}");
        let r = reason(&edited(|_, p| {
            set(p, "role", Value::Text("bootloader".into()))
        }));
        assert!(r.contains("role"), "{r}");
        let r = reason(&edited(|_, p| set(p, "size", Value::Integer(0.into()))));
        assert!(r.contains("size 0"), "{r}");
        let r = reason(&edited(|_, p| {
            set(p, "chunk_size", Value::Integer(65537.into()))
        }));
        assert!(r.contains("power of two"), "{r}");
        let r = reason(&edited(|_, p| {
            set(p, "chunk_size", Value::Integer(32768.into()))
        }));
        assert!(r.contains("power of two"), "{r}");
        let r = reason(&edited(|_, p| {
            set(p, "chunk_hashes", Value::Bytes(vec![0; 64]))
        }));
        assert!(r.contains("64 bytes of chunk_hashes, expected 96"), "{r}");
        let r = reason(&edited(|_, p| {
            set(p, "chunk_hashes", Value::Bytes(vec![0; 95]))
        }));
        assert!(r.contains("multiple of 32"), "{r}");
    }

    #[test]
    fn trailing_bytes_and_non_maps_are_refused() {
        let mut cbor = sample().to_cbor();
        cbor.push(0);
        assert!(reason(&cbor).contains("1 bytes follow"));
        assert!(reason(&[0x80]).contains("not a map"));
        assert!(reason(&[0xff, 0x00]).contains("CBOR"));
    }

    #[test]
    fn role_spellings_round_trip() {
        for role in [Role::Rootfs, Role::Kernel, Role::Initramfs, Role::BootFiles] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("Rootfs"), None);
    }
}
