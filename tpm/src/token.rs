//! The sealed blob as a LUKS2 `systemd-tpm2` token, field for field as systemd-cryptenroll
//! writes it.
//!
//! `tpm2-blob` is base64 of the marshalled `TPM2B_PRIVATE` followed by the marshalled
//! `TPM2B_PUBLIC` (each with its 16-bit size prefix). A signed policy is recorded as systemd
//! does: `tpm2_pubkey` (base64 of the PEM public key) and `tpm2_pubkey_pcrs` (`[11]`), with
//! `tpm2-pcrs` the PCRs fixed besides it; Cairn adds `cairn_floor_nv`, the anti-rollback
//! floor's NV index that its signed policies check. Token features this crate does not
//! implement (a PIN, pcrlock) are refused rather than ignored, since ignoring them would unseal
//! under a weaker policy than the token states.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::floor::FLOOR_NV_INDEX;
use crate::marshal::{Reader, Writer};
use crate::pcrsig::{PcrPublicKey, UKI_PCR};
use crate::policy::{PcrBank, PcrSelection, PCR_COUNT};
use crate::seal::{PrimaryAlg, SealedBlob};
use crate::{Error, Result};

/// The token's `type`.
pub const TOKEN_TYPE: &str = "systemd-tpm2";

/// The largest token JSON read; real tokens are about 1 KiB.
const MAX_JSON: usize = 64 * 1024;
/// The largest decoded `tpm2-blob`: a private and a public area of at most 4 KiB each.
const MAX_BLOB: usize = 8 * 1024;
/// LUKS2 has 32 keyslots.
const MAX_KEYSLOTS: usize = 32;

/// A `systemd-tpm2` token: the sealed blob and the LUKS2 keyslots its secret opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub keyslots: Vec<u32>,
    pub sealed: SealedBlob,
}

#[derive(Serialize)]
struct TokenJson<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    keyslots: Vec<String>,
    #[serde(rename = "tpm2-blob")]
    blob: String,
    #[serde(rename = "tpm2-pcrs")]
    pcrs: &'a [u8],
    #[serde(rename = "tpm2-pcr-bank")]
    pcr_bank: &'a str,
    #[serde(rename = "tpm2-primary-alg")]
    primary_alg: &'a str,
    #[serde(rename = "tpm2-policy-hash")]
    policy_hash: String,
    #[serde(rename = "tpm2-pin")]
    pin: bool,
    #[serde(rename = "tpm2_srk", skip_serializing_if = "Option::is_none")]
    srk: Option<&'a str>,
    #[serde(rename = "tpm2_pubkey", skip_serializing_if = "Option::is_none")]
    pubkey: Option<String>,
    #[serde(rename = "tpm2_pubkey_pcrs", skip_serializing_if = "Option::is_none")]
    pubkey_pcrs: Option<[u8; 1]>,
    #[serde(rename = "cairn_floor_nv", skip_serializing_if = "Option::is_none")]
    floor_nv: Option<String>,
}

impl Token {
    /// The token JSON, as it goes into the LUKS2 header.
    pub fn to_json(&self) -> String {
        let s = &self.sealed;
        let mut blob = Writer::default();
        blob.tpm2b(&s.private).tpm2b(&s.public);
        let json = TokenJson {
            kind: TOKEN_TYPE,
            keyslots: self.keyslots.iter().map(u32::to_string).collect(),
            blob: BASE64.encode(blob.as_slice()),
            pcrs: s.pcrs.pcrs(),
            pcr_bank: s.pcrs.bank().name(),
            primary_alg: s.primary_alg.name(),
            policy_hash: hex::encode(s.policy_hash),
            pin: false,
            srk: s.srk.as_deref(),
            pubkey: s.signed.as_ref().map(|k| BASE64.encode(k.to_pem())),
            pubkey_pcrs: s.signed.as_ref().map(|_| [UKI_PCR]),
            floor_nv: s.signed.as_ref().map(|_| format!("{FLOOR_NV_INDEX:#010x}")),
        };
        serde_json::to_string(&json).expect("token JSON serialises")
    }

    /// Reads a token JSON; fields this crate does not know are ignored, features it does not
    /// implement are refused.
    pub fn from_json(json: &str) -> Result<Self> {
        if json.len() > MAX_JSON {
            return Err(bad(format!("{} bytes, more than {MAX_JSON}", json.len())));
        }
        let v: Value = serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let field = |name: &str| obj.get(name);

        match field("type") {
            Some(Value::String(t)) if t == TOKEN_TYPE => {}
            other => return Err(bad(format!("type is {other:?}, not {TOKEN_TYPE:?}"))),
        }
        let keyslots = parse_keyslots(field("keyslots"))?;

        for refused in ["tpm2-pin", "tpm2_pcrlock"] {
            if field(refused).and_then(Value::as_bool) == Some(true) {
                return Err(bad(format!(
                    "{refused} is set; this feature is not supported"
                )));
            }
        }
        let signed = parse_signed(&field)?;

        let (private, public) = parse_blob(field("tpm2-blob"))?;
        let pcrs = parse_pcrs(field("tpm2-pcrs"))?;
        if pcrs.is_empty() && signed.is_none() {
            return Err(bad(
                "tpm2-pcrs is empty and there is no tpm2_pubkey: no policy",
            ));
        }
        // systemd before 250 wrote neither field; it used sha256 and ECC then.
        let bank = match field("tpm2-pcr-bank") {
            None => PcrBank::Sha256,
            Some(Value::String(b)) => PcrBank::from_name(b).map_err(|e| bad(e.to_string()))?,
            Some(other) => return Err(bad(format!("tpm2-pcr-bank is {other}, not a string"))),
        };
        let primary_alg = match field("tpm2-primary-alg") {
            None => PrimaryAlg::Ecc,
            Some(Value::String(a)) => PrimaryAlg::from_name(a)
                .ok_or_else(|| bad(format!("tpm2-primary-alg {a:?} is neither ecc nor rsa")))?,
            Some(other) => return Err(bad(format!("tpm2-primary-alg is {other}, not a string"))),
        };
        let policy_hash = match field("tpm2-policy-hash") {
            Some(Value::String(h)) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out)
                    .map_err(|e| bad(format!("tpm2-policy-hash is not 32 hex bytes: {e}")))?;
                out
            }
            _ => return Err(bad("tpm2-policy-hash is missing")),
        };
        let srk = match field("tpm2_srk") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(bad(format!("tpm2_srk is {other}, not a string"))),
        };

        Ok(Token {
            keyslots,
            sealed: SealedBlob {
                private,
                public,
                pcrs: if pcrs.is_empty() {
                    PcrSelection::none(bank)
                } else {
                    PcrSelection::new(bank, &pcrs).map_err(|e| bad(e.to_string()))?
                },
                signed,
                primary_alg,
                policy_hash,
                srk,
            },
        })
    }
}

impl SealedBlob {
    /// This blob as a `systemd-tpm2` token JSON for the given LUKS2 keyslots.
    pub fn to_token_json(&self, keyslots: &[u32]) -> String {
        Token {
            keyslots: keyslots.to_vec(),
            sealed: self.clone(),
        }
        .to_json()
    }

    /// Reads a `systemd-tpm2` token JSON (see [`Token::from_json`]).
    pub fn from_token_json(json: &str) -> Result<Token> {
        Token::from_json(json)
    }
}

fn bad(what: impl Into<String>) -> Error {
    Error::Token(what.into())
}

/// `tpm2_pubkey`, `tpm2_pubkey_pcrs` and `cairn_floor_nv`: a signed policy over PCR 11 with
/// Cairn's floor, or none (empty or absent fields, as systemd writes for an unsigned one).
fn parse_signed<'a>(field: &impl Fn(&str) -> Option<&'a Value>) -> Result<Option<PcrPublicKey>> {
    let pubkey = match field("tpm2_pubkey") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(bad(format!("tpm2_pubkey is {other}, not a string"))),
    };
    let pcrs = match field("tpm2_pubkey_pcrs") {
        None | Some(Value::Null) => Vec::new(),
        p => parse_pcrs(p)
            .map_err(|e| bad(e.to_string().replace("tpm2-pcrs", "tpm2_pubkey_pcrs")))?,
    };
    let Some(pubkey) = pubkey else {
        if !pcrs.is_empty() {
            return Err(bad("tpm2_pubkey_pcrs is set without tpm2_pubkey"));
        }
        return Ok(None);
    };
    if pcrs != [UKI_PCR] {
        return Err(bad(format!(
            "tpm2_pubkey_pcrs is {pcrs:?}; only [11] (the UKI's PCR) is supported"
        )));
    }
    let wanted = format!("{FLOOR_NV_INDEX:#010x}");
    match field("cairn_floor_nv") {
        Some(Value::String(s)) if *s == wanted => {}
        other => {
            return Err(bad(format!(
                "cairn_floor_nv is {other:?}, not {wanted:?}: a signed policy without Cairn's \
                 anti-rollback floor is not supported"
            )))
        }
    }
    let pem = BASE64
        .decode(pubkey)
        .map_err(|e| bad(format!("tpm2_pubkey is not base64: {e}")))?;
    PcrPublicKey::from_pem(&pem)
        .map(Some)
        .map_err(|e| bad(format!("tpm2_pubkey: {e}")))
}

fn parse_keyslots(v: Option<&Value>) -> Result<Vec<u32>> {
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| bad("keyslots is missing or not a list"))?;
    if list.len() > MAX_KEYSLOTS {
        return Err(bad(format!(
            "{} keyslots, more than {MAX_KEYSLOTS}",
            list.len()
        )));
    }
    list.iter()
        .map(|k| {
            k.as_str()
                .and_then(|s| s.parse::<u32>().ok())
                .filter(|&n| (n as usize) < MAX_KEYSLOTS)
                .ok_or_else(|| bad(format!("keyslot {k} is not a keyslot number in a string")))
        })
        .collect()
}

fn parse_blob(v: Option<&Value>) -> Result<(Vec<u8>, Vec<u8>)> {
    let text = match v {
        Some(Value::String(s)) => s,
        Some(Value::Array(_)) => return Err(bad("several tpm2-blob entries are not supported")),
        _ => return Err(bad("tpm2-blob is missing")),
    };
    if text.len() > MAX_BLOB * 4 / 3 + 4 {
        return Err(bad("tpm2-blob is too large"));
    }
    let raw = BASE64
        .decode(text)
        .map_err(|e| bad(format!("tpm2-blob is not base64: {e}")))?;
    let mut r = Reader::new("tpm2-blob", &raw);
    let parts = (|| {
        let private = r.tpm2b()?.to_vec();
        let public = r.tpm2b()?.to_vec();
        r.finish()?;
        Ok::<_, Error>((private, public))
    })();
    parts.map_err(|e| {
        bad(format!(
            "tpm2-blob is not TPM2B_PRIVATE || TPM2B_PUBLIC: {e}"
        ))
    })
}

fn parse_pcrs(v: Option<&Value>) -> Result<Vec<u8>> {
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| bad("tpm2-pcrs is missing or not a list"))?;
    if list.len() > usize::from(PCR_COUNT) {
        return Err(bad(format!("{} PCRs listed", list.len())));
    }
    list.iter()
        .map(|p| {
            p.as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .filter(|&n| n < PCR_COUNT)
                .ok_or_else(|| bad(format!("tpm2-pcrs entry {p} is not a PCR number")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_blob() -> SealedBlob {
        SealedBlob {
            private: vec![0xAA; 5],
            public: vec![0, 8, 0, 0x0B, 0, 0, 0, 0x12, 0, 32],
            pcrs: PcrSelection::sha256(&[7, 11]).unwrap(),
            primary_alg: PrimaryAlg::Ecc,
            policy_hash: [0x5C; 32],
            srk: None,
            signed: None,
        }
    }

    #[test]
    fn round_trip() {
        let blob = sample_blob();
        let json = blob.to_token_json(&[1]);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["type"], "systemd-tpm2");
        assert_eq!(v["keyslots"], serde_json::json!(["1"]));
        assert_eq!(v["tpm2-pcrs"], serde_json::json!([7, 11]));
        assert_eq!(v["tpm2-pcr-bank"], "sha256");
        assert_eq!(v["tpm2-primary-alg"], "ecc");
        assert_eq!(v["tpm2-policy-hash"], "5c".repeat(32));
        // TPM2B_PRIVATE then TPM2B_PUBLIC, each size-prefixed
        let raw = BASE64.decode(v["tpm2-blob"].as_str().unwrap()).unwrap();
        assert_eq!(&raw[..7], &[0, 5, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA]);
        assert_eq!(&raw[7..9], &[0, 10]);
        let back = SealedBlob::from_token_json(&json).unwrap();
        assert_eq!(back.keyslots, [1]);
        assert_eq!(back.sealed, blob);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let blob = sample_blob();
        let mut v: Value = serde_json::from_str(&blob.to_token_json(&[0])).unwrap();
        v["tpm2-pin"] = true.into();
        let err = Token::from_json(&v.to_string()).unwrap_err().to_string();
        assert_eq!(
            err,
            "systemd-tpm2 token rejected: tpm2-pin is set; this feature is not supported"
        );

        let mut v: Value = serde_json::from_str(&blob.to_token_json(&[0])).unwrap();
        v["tpm2-pcrs"] = serde_json::json!([7, 99]);
        let err = Token::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("tpm2-pcrs entry 99"), "{err}");

        let mut v: Value = serde_json::from_str(&blob.to_token_json(&[0])).unwrap();
        v["tpm2-blob"] = "AAUB".into();
        let err = Token::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("tpm2-blob is not TPM2B_PRIVATE"), "{err}");

        assert!(Token::from_json(r#"{"type":"luks2-keyring"}"#).is_err());
    }
}
