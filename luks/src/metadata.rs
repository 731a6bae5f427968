//! The LUKS2 JSON metadata: keyslots, tokens, segments, digests and config.
//!
//! Objects keep the fields this crate does not interpret (`extra`), so a header written by
//! cryptsetup survives a round trip through this crate. The specification stores 64-bit
//! offsets and sizes as decimal strings; the `u64_string` helpers do that conversion.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most keyslots a LUKS2 header may hold (cryptsetup's `LUKS2_KEYSLOTS_MAX`).
pub const MAX_KEYSLOTS: usize = 32;
/// Most tokens a LUKS2 header may hold (cryptsetup's `LUKS2_TOKENS_MAX`).
pub const MAX_TOKENS: usize = 32;

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The whole JSON area.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub keyslots: BTreeMap<u32, Keyslot>,
    pub tokens: BTreeMap<u32, Token>,
    pub segments: BTreeMap<u32, Segment>,
    pub digests: BTreeMap<u32, DigestEntry>,
    pub config: Config,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A keyslot: a passphrase-derived key that decrypts an AF-split copy of the volume key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyslot {
    #[serde(rename = "type")]
    pub kind: String,
    /// Size of the volume key stored in this slot, in bytes.
    pub key_size: u32,
    pub af: Af,
    pub area: Area,
    pub kdf: KdfJson,
    /// 0 = ignore unless named, 1 = normal, 2 = try first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Af {
    #[serde(rename = "type")]
    pub kind: String,
    pub stripes: u32,
    pub hash: String,
}

/// Where a keyslot's encrypted key material lives, relative to the device start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Area {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "u64_string")]
    pub offset: u64,
    #[serde(with = "u64_string")]
    pub size: u64,
    pub encryption: String,
    pub key_size: u32,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A keyslot's key derivation: `pbkdf2` (hash, iterations) or `argon2i`/`argon2id` (time,
/// memory in KiB, cpus). `salt` is base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KdfJson {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    pub salt: String,
}

/// A token: a typed JSON object bound to keyslots, for external unlock methods such as
/// `systemd-tpm2`. Fields other than `type` and `keyslots` are kept as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    #[serde(rename = "type")]
    pub kind: String,
    /// Keyslot numbers, as decimal strings like everywhere in LUKS2.
    pub keyslots: Vec<String>,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// The encrypted data area.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "u64_string")]
    pub offset: u64,
    /// `"dynamic"` (up to the end of the device) or a byte count.
    pub size: String,
    pub iv_tweak: String,
    pub encryption: String,
    pub sector_size: u32,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A volume-key digest, used to recognise the right key after a keyslot is decrypted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub keyslots: Vec<String>,
    pub segments: Vec<String>,
    pub hash: String,
    pub iterations: u32,
    pub salt: String,
    pub digest: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(with = "u64_string")]
    pub json_size: u64,
    #[serde(with = "u64_string")]
    pub keyslots_size: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like the output of `cryptsetup luksFormat --type luks2` (2.6).
    const CRYPTSETUP_JSON: &str = r#"{"keyslots":{"0":{"type":"luks2","key_size":64,
      "af":{"type":"luks1","stripes":4000,"hash":"sha256"},
      "area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},
      "kdf":{"type":"argon2id","time":4,"memory":32768,"cpus":1,"salt":"AAAA"}}},
      "tokens":{"0":{"type":"systemd-tpm2","keyslots":["0"],"tpm2-pcrs":[7]}},
      "segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0",
        "encryption":"aes-xts-plain64","sector_size":4096}},
      "digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256",
        "iterations":1000,"salt":"AAAA","digest":"AAAA"}},
      "config":{"json_size":"12288","keyslots_size":"16744448","flags":["allow-discards"]}}"#;

    #[test]
    fn parses_cryptsetup_json_and_keeps_unknown_fields() {
        let m: Metadata = serde_json::from_str(CRYPTSETUP_JSON).unwrap();
        assert_eq!(m.keyslots[&0].area.offset, 32768);
        assert_eq!(m.segments[&0].offset, 16 << 20);
        assert_eq!(m.config.keyslots_size, 16744448);
        assert_eq!(m.tokens[&0].fields["tpm2-pcrs"], serde_json::json!([7]));
        let out = serde_json::to_value(&m).unwrap();
        let orig: Value = serde_json::from_str(CRYPTSETUP_JSON).unwrap();
        assert_eq!(out, orig);
    }
}
