//! Authenticode signatures on PE images, as UEFI Secure Boot checks them (RSA-2048 with
//! SHA-256, which OVMF's and AAVMF's verifier take).
//!
//! The signature is a PKCS#7 `SignedData` whose content is an `SpcIndirectDataContent`
//! (OID 1.3.6.1.4.1.311.2.1.4) carrying the image's Authenticode hash ([`Pe::authenticode_sha256`]).
//! One signer, identified by issuer and serial number; its signed attributes are the content
//! type, the message digest and an empty `SpcSpOpusInfo`. The message digest is the SHA-256 of
//! the `SpcIndirectDataContent`'s DER *value* (without its SEQUENCE tag and length): that is
//! what Authenticode hashes and what EDK II's `AuthenticodeVerify` hands to PKCS#7 verification.
//! The `SignedData` goes into a `WIN_CERTIFICATE` (revision 0x0200, type
//! `WIN_CERT_TYPE_PKCS_SIGNED_DATA`), appended 8-byte aligned at the end of the file and named
//! by the certificate table data directory.

use std::path::Path;

use der::asn1::ObjectIdentifier;
use der::{Decode, DecodePem, Encode};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer as _};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use crate::error::{Error, Result};
use crate::pe::Pe;

const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const OID_SPC_INDIRECT_DATA: &str = "1.3.6.1.4.1.311.2.1.4";
const OID_SPC_PE_IMAGE_DATA: &str = "1.3.6.1.4.1.311.2.1.15";
const OID_SPC_SP_OPUS_INFO: &str = "1.3.6.1.4.1.311.2.1.12";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_CONTENT_TYPE: &str = "1.2.840.113549.1.9.3";
const OID_MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";

const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

/// One DER TLV with a definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn oid(text: &str) -> Vec<u8> {
    ObjectIdentifier::new_unwrap(text)
        .to_der()
        .expect("an OID always encodes")
}

fn sha256_algorithm() -> Vec<u8> {
    seq(&[&oid(OID_SHA256), &[0x05, 0x00]])
}

/// The `SpcIndirectDataContent` for an image hash, DER.
fn indirect_data(image_hash: &[u8; 32]) -> Vec<u8> {
    // "<<<Obsolete>>>" as a BMPString, in SpcLink's `file` choice, as signing tools write it.
    let obsolete: Vec<u8> = "<<<Obsolete>>>"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    let link = tlv(0xa2, &tlv(0x80, &obsolete));
    let pe_image_data = seq(&[&[0x03, 0x01, 0x00], &tlv(0xa0, &link)]);
    let data = seq(&[&oid(OID_SPC_PE_IMAGE_DATA), &pe_image_data]);
    let digest = seq(&[&sha256_algorithm(), &tlv(0x04, image_hash)]);
    seq(&[&data, &digest])
}

/// The value bytes of a DER TLV (after its tag and length).
fn der_value(tlv: &[u8]) -> &[u8] {
    let len_byte = tlv[1];
    let header = if len_byte < 0x80 {
        2
    } else {
        2 + (len_byte & 0x7f) as usize
    };
    &tlv[header..]
}

/// A signing key and its certificate (the `db` key of `cairnctl keys gen-secureboot`).
pub struct Signer {
    key: RsaPrivateKey,
    cert: Certificate,
    cert_der: Vec<u8>,
}

impl Signer {
    /// A PKCS#8 PEM RSA key and the PEM certificate of its public half.
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Signer> {
        Self::from_pem_named(key_pem, cert_pem, "signing key", "signing certificate")
    }

    /// As [`Signer::from_pem`], naming the key and certificate (their paths) in errors.
    fn from_pem_named(
        key_pem: &str,
        cert_pem: &str,
        key_name: &str,
        cert_name: &str,
    ) -> Result<Signer> {
        let key = RsaPrivateKey::from_pkcs8_pem(key_pem).map_err(|e| Error::BadKey {
            what: key_name.into(),
            reason: format!("is not a PKCS#8 PEM RSA private key ({e})"),
        })?;
        let cert = Certificate::from_pem(cert_pem).map_err(|e| Error::BadKey {
            what: cert_name.into(),
            reason: format!("is not a PEM X.509 certificate ({e})"),
        })?;
        let cert_der = cert.to_der().map_err(|e| Error::BadKey {
            what: cert_name.into(),
            reason: e.to_string(),
        })?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        let public = rsa::RsaPublicKey::from_pkcs1_der(spki).map_err(|e| Error::BadKey {
            what: cert_name.into(),
            reason: format!("does not hold an RSA public key ({e})"),
        })?;
        if public.n() != key.n() || public.e() != key.e() {
            return Err(Error::BadKey {
                what: key_name.into(),
                reason: format!("does not belong to the certificate {cert_name}"),
            });
        }
        if key.size() != 256 {
            return Err(Error::BadKey {
                what: key_name.into(),
                reason: format!(
                    "is RSA-{}; UEFI Secure Boot verifiers take RSA-2048",
                    key.size() * 8
                ),
            });
        }
        Ok(Signer {
            key,
            cert,
            cert_der,
        })
    }

    /// Reads `<dir>/<name>.key` and `<dir>/<name>.crt`.
    pub fn load(dir: &Path, name: &str) -> Result<Signer> {
        let (key, cert) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.crt")),
        );
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| Error::Io {
                action: "reading",
                path: path.to_path_buf(),
                source,
            })
        };
        Signer::from_pem_named(
            &read(&key)?,
            &read(&cert)?,
            &key.display().to_string(),
            &cert.display().to_string(),
        )
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The PKCS#7 `SignedData` (as a `ContentInfo`, DER) over an image hash.
    pub fn signed_data(&self, image_hash: &[u8; 32]) -> Result<Vec<u8>> {
        let content = indirect_data(image_hash);
        let message_digest: [u8; 32] = Sha256::digest(der_value(&content)).into();
        let mut attrs = [
            seq(&[
                &oid(OID_CONTENT_TYPE),
                &tlv(0x31, &oid(OID_SPC_INDIRECT_DATA)),
            ]),
            seq(&[
                &oid(OID_MESSAGE_DIGEST),
                &tlv(0x31, &tlv(0x04, &message_digest)),
            ]),
            seq(&[&oid(OID_SPC_SP_OPUS_INFO), &tlv(0x31, &seq(&[]))]),
        ];
        // DER: a SET OF is sorted by its elements' encodings.
        attrs.sort();
        let attrs = attrs.concat();
        let signature = SigningKey::<Sha256>::new(self.key.clone())
            .try_sign(&tlv(0x31, &attrs))
            .map_err(|e| Error::Sign(e.to_string()))?
            .to_vec();
        let tbs = &self.cert.tbs_certificate;
        let der = |r: der::Result<Vec<u8>>| r.map_err(|e| Error::Sign(e.to_string()));
        let issuer = der(tbs.issuer.to_der())?;
        let serial = der(tbs.serial_number.to_der())?;
        let signer_info = seq(&[
            &[0x02, 0x01, 0x01],
            &seq(&[&issuer, &serial]),
            &sha256_algorithm(),
            &tlv(0xa0, &attrs),
            &seq(&[&oid(OID_RSA_ENCRYPTION), &[0x05, 0x00]]),
            &tlv(0x04, &signature),
        ]);
        let signed_data = seq(&[
            &[0x02, 0x01, 0x01],
            &tlv(0x31, &sha256_algorithm()),
            &seq(&[&oid(OID_SPC_INDIRECT_DATA), &tlv(0xa0, &content)]),
            &tlv(0xa0, &self.cert_der),
            &tlv(0x31, &signer_info),
        ]);
        Ok(seq(&[&oid(OID_SIGNED_DATA), &tlv(0xa0, &signed_data)]))
    }

    /// Signs an unsigned image: its Authenticode hash into a `SignedData`, appended as the
    /// certificate table.
    pub fn sign(&self, mut pe: Pe) -> Result<Vec<u8>> {
        if pe.is_signed() {
            return Err(Error::BadPe {
                what: pe_name(&pe),
                reason: "is already signed; sign the unsigned image".into(),
            });
        }
        pe.pad_for_cert_table();
        let pkcs7 = self.signed_data(&pe.authenticode_sha256())?;
        let len = 8 + pkcs7.len();
        let mut table = Vec::with_capacity(len + 8);
        table.extend_from_slice(&(len as u32).to_le_bytes());
        table.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
        table.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
        table.extend_from_slice(&pkcs7);
        table.resize(len.div_ceil(8) * 8, 0);
        pe.set_cert_table(&table)?;
        Ok(pe.into_bytes())
    }
}

fn pe_name(pe: &Pe) -> String {
    format!("PE image of {} bytes", pe.bytes().len())
}

/// Parses a DER certificate (for signature lists).
pub fn cert_from_der(der: &[u8]) -> Result<Certificate> {
    Certificate::from_der(der).map_err(|e| Error::BadKey {
        what: "certificate".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_definite_der() {
        assert_eq!(tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der_value(&long).len(), 300);
    }

    #[test]
    fn bad_keys_are_refused_with_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        crate::keys::generate(dir.path()).unwrap();
        let err = |dir: &Path| Signer::load(dir, "db").err().unwrap().to_string();
        let other = tempfile::tempdir().unwrap();
        for f in ["db.key", "db.crt"] {
            std::fs::copy(dir.path().join(f), other.path().join(f)).unwrap();
        }
        std::fs::copy(dir.path().join("PK.key"), other.path().join("db.key")).unwrap();
        let e = err(other.path());
        assert!(
            e.contains("db.key does not belong to the certificate "),
            "{e}"
        );
        std::fs::write(other.path().join("db.key"), "junk").unwrap();
        let e = err(other.path());
        assert!(
            e.contains("db.key is not a PKCS#8 PEM RSA private key"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        std::fs::write(other.path().join("db.crt"), "junk").unwrap();
        std::fs::copy(dir.path().join("db.key"), other.path().join("db.key")).unwrap();
        let e = err(other.path());
        assert!(e.contains("db.crt is not a PEM X.509 certificate"), "{e}");
    }

    #[test]
    fn indirect_data_carries_the_hash_at_its_end() {
        let c = indirect_data(&[0xab; 32]);
        assert_eq!(&c[c.len() - 34..c.len() - 32], &[0x04, 32]);
        assert!(c.ends_with(&[0xab; 32]));
    }
}
