//! Signed PCR policies in systemd's `tpm2-pcr-signature.json` format, and the RSA public key
//! that checks them (a UKI's `.pcrsig` and `.pcrpkey`).
//!
//! The JSON maps a bank name to a list of entries `{"pcrs":[11],"pkfp":…,"pol":…,"sig":…}`:
//! `pol` is a policy digest the key approves (hex), `sig` the RSASSA-PKCS1-v1_5 SHA-256
//! signature (base64) over `pol` followed by a policy reference, and `pkfp` the SHA-256 of the
//! key's PKCS#1 `RSAPublicKey` DER (hex). systemd signs a bare PolicyPCR digest with an empty
//! reference ([`policy_pcr11`]); Cairn's releases sign PolicyPCR(11) followed by a PolicyNV
//! check of the device's anti-rollback floor ([`release_policy`]) under the reference
//! [`RELEASE_POLICY_REF`], so a bare PCR 11 signature made with the same key (by
//! `systemd-measure sign`, say) can never stand in for a release's.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::floor;
use crate::marshal::{Reader, Writer};
use crate::policy::{policy_pcr_digest, PcrSelection};
use crate::{Error, Result};

/// The PCR a UKI's stub measures into.
pub const UKI_PCR: u8 = 11;
/// The policy reference of a release's signature (TPM2_PolicyAuthorize's `policyRef`).
pub const RELEASE_POLICY_REF: &[u8] = b"cairn release";
/// The JSON field naming the release's security version in Cairn's entries.
const SECURITY_VERSION_FIELD: &str = "cairn-security-version";
/// The largest signature JSON read; a UKI's is under 2 KiB.
const MAX_JSON: usize = 64 * 1024;
/// RSA moduli accepted: 2048 to 4096 bits (TPMs take 2048; some 3072).
const MIN_MODULUS: usize = 256;
const MAX_MODULUS: usize = 512;

const ALG_RSA: u16 = 0x0001;
const ALG_SHA256: u16 = 0x000B;
const ALG_NULL: u16 = 0x0010;
/// TPMA_OBJECT: decrypt, sign, userWithAuth (systemd's template for the loaded key).
const KEY_ATTRIBUTES: u32 = (1 << 17) | (1 << 18) | (1 << 6);

/// An RSA public key that signs PCR policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrPublicKey {
    /// The modulus, big-endian, without leading zeros.
    modulus: Vec<u8>,
    exponent: u32,
}

impl PcrPublicKey {
    /// Reads a PEM public key: `PUBLIC KEY` (SubjectPublicKeyInfo, what `openssl rsa -pubout`
    /// and the `.pcrpkey` section hold) or `RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let bad = |what: String| Error::PublicKey(what);
        let text = std::str::from_utf8(pem).map_err(|_| bad("not text".into()))?;
        let (label, der) = pem_decode(text).map_err(bad)?;
        match label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&der),
            "RSA PUBLIC KEY" => Self::from_pkcs1_der(&der),
            other => Err(bad(format!("a PEM {other:?}, not a PUBLIC KEY"))),
        }
    }

    /// A SubjectPublicKeyInfo holding an RSA key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        let bad = |what: &str| Error::PublicKey(what.into());
        let mut outer = Der::new(der);
        let mut spki = outer.sequence().map_err(|e| bad(&e))?;
        outer.end().map_err(|e| bad(&e))?;
        let mut alg = spki.sequence().map_err(|e| bad(&e))?;
        // 1.2.840.113549.1.1.1, rsaEncryption
        const RSA_OID: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
        if alg.element(0x06).map_err(|e| bad(&e))? != RSA_OID {
            return Err(bad("not an RSA key (only RSA keys sign PCR policies)"));
        }
        let bits = spki.element(0x03).map_err(|e| bad(&e))?;
        match bits.split_first() {
            Some((0, key)) => Self::from_pkcs1_der(key),
            _ => Err(bad("the key's BIT STRING does not hold whole bytes")),
        }
    }

    /// A PKCS#1 `RSAPublicKey`.
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self> {
        let bad = |what: String| Error::PublicKey(what);
        let mut outer = Der::new(der);
        let mut key = outer.sequence().map_err(bad)?;
        outer.end().map_err(bad)?;
        let modulus = unsigned(key.element(0x02).map_err(bad)?);
        let exponent = unsigned(key.element(0x02).map_err(bad)?);
        key.end().map_err(bad)?;
        if !(MIN_MODULUS..=MAX_MODULUS).contains(&modulus.len()) {
            return Err(bad(format!(
                "a {}-bit modulus; 2048 to 4096 bits are accepted",
                modulus.len() * 8
            )));
        }
        if exponent.is_empty() || exponent.len() > 4 {
            return Err(bad("the public exponent is not a 32-bit number".into()));
        }
        let exponent = exponent.iter().fold(0u32, |e, b| (e << 8) | u32::from(*b));
        Ok(PcrPublicKey {
            modulus: modulus.to_vec(),
            exponent,
        })
    }

    /// The PKCS#1 `RSAPublicKey` DER.
    pub fn pkcs1_der(&self) -> Vec<u8> {
        let n = der_integer(&self.modulus);
        let e = der_integer(&self.exponent.to_be_bytes());
        der_tlv(0x30, &[n, e].concat())
    }

    /// The SubjectPublicKeyInfo PEM, as `openssl rsa -pubout` writes it.
    pub fn to_pem(&self) -> String {
        let alg = der_tlv(
            0x30,
            &[
                der_tlv(
                    0x06,
                    &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01],
                ),
                vec![0x05, 0x00],
            ]
            .concat(),
        );
        let bits = der_tlv(0x03, &[&[0u8][..], &self.pkcs1_der()].concat());
        let spki = der_tlv(0x30, &[alg, bits].concat());
        let b64 = BASE64.encode(spki);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// systemd's `pkfp`: the SHA-256 of the PKCS#1 DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.pkcs1_der()).into()
    }

    pub fn modulus_bits(&self) -> usize {
        self.modulus.len() * 8
    }

    /// The key's `TPMT_PUBLIC` for TPM2_LoadExternal: an RSASSA-capable RSA key, SHA-256 name,
    /// no policy, the default exponent written as 0 (as the TPM reports it).
    pub(crate) fn tpm_public(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let exponent = if self.exponent == 65537 {
            0
        } else {
            self.exponent
        };
        w.u16(ALG_RSA)
            .u16(ALG_SHA256)
            .u32(KEY_ATTRIBUTES)
            .tpm2b(&[])
            .u16(ALG_NULL) // symmetric
            .u16(ALG_NULL) // scheme: any
            .u16(u16::try_from(self.modulus_bits()).expect("at most 4096 bits"))
            .u32(exponent)
            .tpm2b(&self.modulus);
        w.as_slice().to_vec()
    }

    /// The key's TPM Name: `TPM_ALG_SHA256 || SHA-256(TPMT_PUBLIC)`, which PolicyAuthorize
    /// binds into the sealed object's policy.
    pub fn tpm_name(&self) -> Vec<u8> {
        let mut name = ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(self.tpm_public()));
        name
    }
}

/// One signed policy of a `tpm2-pcr-signature.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    /// The PCRs whose values the policy covers.
    pub pcrs: Vec<u8>,
    /// The signing key's fingerprint ([`PcrPublicKey::fingerprint`]).
    pub pkfp: [u8; 32],
    /// The approved policy digest.
    pub pol: [u8; 32],
    /// RSASSA-PKCS1-v1_5 with SHA-256 over `pol || policyRef`.
    pub sig: Vec<u8>,
    /// For a Cairn release: the release's security version, which the policy compares with
    /// the device's anti-rollback floor.
    pub security_version: Option<u64>,
}

/// A `tpm2-pcr-signature.json`: signed policies for the sha256 bank.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PcrSignature {
    pub sha256: Vec<SignedPolicy>,
}

impl PcrSignature {
    /// The JSON exactly as `systemd-measure sign` prints it (short form, one line, newline).
    pub fn to_json(&self) -> String {
        let entries: Vec<Value> = self
            .sha256
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("pcrs".into(), e.pcrs.clone().into());
                m.insert("pkfp".into(), hex::encode(e.pkfp).into());
                m.insert("pol".into(), hex::encode(e.pol).into());
                m.insert("sig".into(), BASE64.encode(&e.sig).into());
                if let Some(v) = e.security_version {
                    m.insert(SECURITY_VERSION_FIELD.into(), v.into());
                }
                Value::Object(m)
            })
            .collect();
        let mut top = Map::new();
        top.insert("sha256".into(), entries.into());
        let mut json = Value::Object(top).to_string();
        json.push('\n');
        json
    }

    /// Reads a signature JSON; other banks are skipped, a malformed sha256 entry is an error.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let bad = |what: String| Error::Signature(what);
        if json.len() > MAX_JSON {
            return Err(bad(format!("{} bytes, more than {MAX_JSON}", json.len())));
        }
        // from_str, as the token's reader does: one JSON reader in the device binary.
        let text = std::str::from_utf8(json).map_err(|_| bad("not UTF-8 text".into()))?;
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let Some(list) = obj.get("sha256") else {
            return Err(bad("no sha256 bank".into()));
        };
        let list = list
            .as_array()
            .ok_or_else(|| bad("sha256 is not a list".into()))?;
        let sha256 = list
            .iter()
            .enumerate()
            .map(|(i, e)| parse_entry(e).map_err(|what| bad(format!("sha256 entry {i}: {what}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(PcrSignature { sha256 })
    }

    /// The entries for policy `pol` signed by `key`.
    pub fn find(&self, key: &PcrPublicKey, pol: &[u8]) -> Option<&SignedPolicy> {
        let fp = key.fingerprint();
        self.sha256.iter().find(|e| e.pkfp == fp && e.pol == pol)
    }
}

fn parse_entry(e: &Value) -> std::result::Result<SignedPolicy, String> {
    let obj = e.as_object().ok_or("not an object")?;
    let pcrs = obj
        .get("pcrs")
        .and_then(Value::as_array)
        .ok_or("pcrs is missing or not a list")?
        .iter()
        .map(|p| {
            p.as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .filter(|&n| n < crate::PCR_COUNT)
                .ok_or_else(|| format!("pcrs entry {p} is not a PCR number"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let hex32 = |name: &str| -> std::result::Result<[u8; 32], String> {
        let s = obj
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{name} is missing or not a string"))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| format!("{name} is not 32 hex bytes: {e}"))?;
        Ok(out)
    };
    let pkfp = hex32("pkfp")?;
    let pol = hex32("pol")?;
    let sig = obj
        .get("sig")
        .and_then(Value::as_str)
        .ok_or("sig is missing or not a string")?;
    let sig = BASE64
        .decode(sig)
        .map_err(|e| format!("sig is not base64: {e}"))?;
    if !(MIN_MODULUS..=MAX_MODULUS).contains(&sig.len()) {
        return Err(format!("sig is {} bytes, not an RSA signature", sig.len()));
    }
    let security_version = match obj.get(SECURITY_VERSION_FIELD) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| format!("{SECURITY_VERSION_FIELD} is {v}, not a number"))?,
        ),
    };
    Ok(SignedPolicy {
        pcrs,
        pkfp,
        pol,
        sig,
        security_version,
    })
}

/// The PolicyPCR digest over PCR 11 holding `pcr11`: the policy `systemd-measure sign` signs.
pub fn policy_pcr11(pcr11: &[u8; 32]) -> [u8; 32] {
    let sel = PcrSelection::sha256(&[UKI_PCR]).expect("PCR 11 exists");
    policy_pcr_digest(&sel, &[pcr11.to_vec()])
}

/// The policy a release signs: PolicyPCR(11 = `pcr11`), then PolicyNV: the device's
/// anti-rollback floor ([`floor`]) at most `security_version`.
pub fn release_policy(pcr11: &[u8; 32], security_version: u64) -> [u8; 32] {
    floor::policy_nv_at_most(&policy_pcr11(pcr11), security_version)
}

/// The PolicyAuthorize digest for `key_name` and `policy_ref`, from a fresh session:
/// `SHA-256(SHA-256(zeros || TPM_CC_PolicyAuthorize || keyName) || policyRef)`.
pub fn policy_authorize_digest(key_name: &[u8], policy_ref: &[u8]) -> [u8; 32] {
    let first: [u8; 32] = Sha256::new()
        .chain_update([0u8; 32])
        .chain_update(crate::marshal::POLICY_AUTHORIZE.code.to_be_bytes())
        .chain_update(key_name)
        .finalize()
        .into();
    Sha256::new()
        .chain_update(first)
        .chain_update(policy_ref)
        .finalize()
        .into()
}

/// A private key that signs PCR policies (host side: the image builder's release key).
#[cfg(feature = "sign")]
pub struct PcrSigningKey {
    pair: ring::rsa::KeyPair,
    public: PcrPublicKey,
}

#[cfg(feature = "sign")]
impl PcrSigningKey {
    /// Reads a PEM RSA private key: `PRIVATE KEY` (PKCS#8, what `openssl genrsa` writes) or
    /// `RSA PRIVATE KEY` (PKCS#1).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let bad = |what: String| Error::PrivateKey(what);
        let text = std::str::from_utf8(pem).map_err(|_| bad("not text".into()))?;
        let (label, der) = pem_decode(text).map_err(bad)?;
        let der = zeroize::Zeroizing::new(der);
        let pair = match label.as_str() {
            "PRIVATE KEY" => ring::rsa::KeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => ring::rsa::KeyPair::from_der(&der),
            other => return Err(bad(format!("a PEM {other:?}, not a PRIVATE KEY"))),
        }
        .map_err(|e| bad(format!("not an RSA key ring accepts: {e}")))?;
        let public =
            PcrPublicKey::from_pkcs1_der(ring::signature::KeyPair::public_key(&pair).as_ref())
                .map_err(|e| bad(e.to_string()))?;
        Ok(PcrSigningKey { pair, public })
    }

    pub fn public_key(&self) -> &PcrPublicKey {
        &self.public
    }

    /// Signs policy `pol` over `pcrs` with `policy_ref` (RSASSA-PKCS1-v1_5, SHA-256).
    pub fn sign(&self, pcrs: &[u8], pol: [u8; 32], policy_ref: &[u8]) -> SignedPolicy {
        let rng = ring::rand::SystemRandom::new();
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        let msg = [&pol[..], policy_ref].concat();
        self.pair
            .sign(&ring::signature::RSA_PKCS1_SHA256, &rng, &msg, &mut sig)
            .expect("PKCS#1 v1.5 signing with a parsed key cannot fail");
        SignedPolicy {
            pcrs: pcrs.to_vec(),
            pkfp: self.public.fingerprint(),
            pol,
            sig,
            security_version: None,
        }
    }

    /// What `systemd-measure sign` makes for one PCR 11 value: PolicyPCR(11) with an empty
    /// policy reference.
    pub fn sign_pcr11(&self, pcr11: &[u8; 32]) -> SignedPolicy {
        self.sign(&[UKI_PCR], policy_pcr11(pcr11), &[])
    }

    /// The `.pcrsig` of a UKI: the release signature ([`PcrSigningKey::sign_release`]) of the
    /// PCR 11 value its stub will measure for `parts` (which must hold the `.pcrpkey` the UKI
    /// carries: the stub measures it). `to_json()` of the result is the section's contents.
    pub fn sign_uki(
        &self,
        parts: &crate::uki::UkiParts<'_>,
        security_version: u64,
    ) -> PcrSignature {
        PcrSignature {
            sha256: vec![self.sign_release(&crate::uki::predict_pcr11(parts), security_version)],
        }
    }

    /// A release's signature for the PCR 11 value of its UKI: PolicyPCR(11) and the
    /// anti-rollback floor check ([`release_policy`]), under [`RELEASE_POLICY_REF`].
    pub fn sign_release(&self, pcr11: &[u8; 32], security_version: u64) -> SignedPolicy {
        SignedPolicy {
            security_version: Some(security_version),
            ..self.sign(
                &[UKI_PCR],
                release_policy(pcr11, security_version),
                RELEASE_POLICY_REF,
            )
        }
    }
}

/// Decodes one PEM block: its label and contents.
fn pem_decode(text: &str) -> std::result::Result<(String, Vec<u8>), String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let label = lines
        .next()
        .and_then(|l| l.strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or("not PEM (no -----BEGIN line)")?
        .to_string();
    let end = format!("-----END {label}-----");
    let mut b64 = String::new();
    for line in lines.by_ref() {
        if line == end {
            let der = BASE64
                .decode(&b64)
                .map_err(|e| format!("PEM {label} is not base64: {e}"))?;
            return Ok((label, der));
        }
        if line.contains(':') {
            return Err(format!("PEM {label} has headers (an encrypted key?)"));
        }
        b64.push_str(line);
    }
    Err(format!("PEM {label} has no END line"))
}

/// A DER reader of just what RSA keys need: SEQUENCEs, INTEGERs, OIDs, BIT STRINGs.
struct Der<'a>(Reader<'a>);

impl<'a> Der<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Der(Reader::new("DER", buf))
    }

    fn element(&mut self, tag: u8) -> std::result::Result<&'a [u8], String> {
        let r = &mut self.0;
        let short = |_| "DER ends early".to_string();
        let t = r.u8().map_err(short)?;
        if t != tag {
            return Err(format!("DER tag {t:#04x} where {tag:#04x} was expected"));
        }
        let first = r.u8().map_err(short)?;
        let len = match first {
            n if n < 0x80 => usize::from(n),
            0x81 => usize::from(r.u8().map_err(short)?),
            0x82 => usize::from(r.u16().map_err(short)?),
            _ => return Err("DER length over 64 KiB".into()),
        };
        r.bytes(len).map_err(short)
    }

    fn sequence(&mut self) -> std::result::Result<Der<'a>, String> {
        self.element(0x30).map(Der::new)
    }

    fn end(&self) -> std::result::Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the DER structure".into())
        }
    }
}

fn unsigned(int: &[u8]) -> &[u8] {
    let zeros = int.iter().take_while(|&&b| b == 0).count();
    &int[zeros..]
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => {
            out.push(0x82);
            out.extend_from_slice(&(u16::try_from(n).expect("DER under 64 KiB")).to_be_bytes());
        }
    }
    out.extend_from_slice(content);
    out
}

fn der_integer(be: &[u8]) -> Vec<u8> {
    let be = unsigned(be);
    let mut content = Vec::with_capacity(be.len() + 1);
    if be.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(be);
    der_tlv(0x02, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_keys_and_signatures_are_named() {
        let e = PcrPublicKey::from_pem(b"hello").unwrap_err().to_string();
        assert_eq!(e, "PCR public key rejected: not PEM (no -----BEGIN line)");
        let e =
            PcrPublicKey::from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .unwrap_err()
                .to_string();
        assert_eq!(
            e,
            "PCR public key rejected: DER tag 0x00 where 0x30 was expected"
        );
        let e = PcrSignature::from_json(b"{\"sha256\":[{\"pcrs\":[11],\"pkfp\":\"00\"}]}")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "PCR signature rejected: sha256 entry 0: pkfp is not 32 hex bytes: Invalid string length"
        );
        let e = PcrSignature::from_json(b"[").unwrap_err().to_string();
        assert!(e.starts_with("PCR signature rejected: not JSON"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn der_integers_keep_their_sign_byte() {
        assert_eq!(der_integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_integer(&[0, 0, 1, 0, 1]), [0x02, 0x03, 1, 0, 1]);
    }
}
