//! [`Ca`]: a self-signed ECDSA P-256 certificate authority, generated or loaded from PEM, and the
//! [`Validity`] of what it issues.
//!
//! A CA knows its [`CaKind`] from its own certificate (EKU clientAuth or serverAuth), so the client
//! CA cannot issue a server certificate by mistake, nor the device CA a client certificate.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData as _,
    PKCS_ECDSA_P256_SHA256,
};

use crate::der::{self, Cert, OID_CLIENT_AUTH, OID_SERVER_AUTH};
use crate::error::{Error, Result};
use crate::fingerprint::Fingerprint;
use crate::inspect::{parse_der, pem_block, validity_of};

/// How long a CA is valid: ten years (and a leap day or two).
pub const CA_VALIDITY_DAYS: u32 = 3653;

/// Certificates start this long in the past, so a peer whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Which certificates a CA issues, and so who trusts it. See the crate docs for the trust model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaKind {
    /// Issues client certificates; its key stays with the operator; devices trust it.
    Client,
    /// Issues device server certificates; its key goes into images; cairnctl trusts it.
    Device,
}

impl CaKind {
    /// `client` or `device`, as in messages and file names.
    pub fn name(self) -> &'static str {
        match self {
            CaKind::Client => "client",
            CaKind::Device => "device",
        }
    }

    fn eku(self) -> ExtendedKeyUsagePurpose {
        match self {
            CaKind::Client => ExtendedKeyUsagePurpose::ClientAuth,
            CaKind::Device => ExtendedKeyUsagePurpose::ServerAuth,
        }
    }
}

/// From when to when a certificate is valid. Times are whole seconds in the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first moment it is valid.
    pub not_before: SystemTime,
    /// The last moment it is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clock skew) until `days` days from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - BACKDATE,
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    /// Whether `at` lies within the validity.
    pub fn contains(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A certificate authority: its certificate and its secret key.
pub struct Ca {
    kind: CaKind,
    cert_der: Vec<u8>,
    cert_pem: String,
    key: KeyPair,
    fingerprint: Fingerprint,
    validity: Validity,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("kind", &self.kind)
            .field("fingerprint", &format_args!("{:#}", self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA, valid for [`CA_VALIDITY_DAYS`]: ECDSA P-256, basicConstraints CA with
    /// path length 0 (it signs leaves only), keyUsage keyCertSign and cRLSign, EKU of its kind.
    /// Its common name is `<name> <first 8 hex digits of the fingerprint>`, so two CAs of the
    /// same name are told apart in a subject.
    pub fn generate(kind: CaKind, name: &str) -> Result<Ca> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate {
                what: format!("the {} CA key", kind.name()),
                source,
            })?;
        let fingerprint = Fingerprint::of_spki(&key.subject_public_key_info());
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{name} {}", hex::encode(&fingerprint.0[..4])),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.extended_key_usages = vec![kind.eku()];
        Validity::days_from_now(CA_VALIDITY_DAYS).apply(&mut params);
        let cert = params.self_signed(&key).map_err(|source| Error::Generate {
            what: format!("the {} CA certificate", kind.name()),
            source,
        })?;
        Ca::from_parts(cert.der().to_vec(), key)
    }

    /// A CA from its certificate and PKCS#8 key, as [`Ca::cert_pem`] and [`Ca::key_pem`] wrote
    /// them. Checks that the certificate is a Cairn CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let cert_der = pem_block(cert_pem, "CERTIFICATE", "the CA certificate")?;
        if key_pem.len() > crate::MAX_PEM_BYTES {
            return Err(Error::TooLarge {
                what: "the CA key".into(),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|source| Error::Key { source })?;
        Ca::from_parts(cert_der, key)
    }

    fn from_parts(cert_der: Vec<u8>, key: KeyPair) -> Result<Ca> {
        let cert = parse_der(&cert_der, "the CA certificate")?;
        let kind = kind_of(&cert)?;
        let fingerprint = Fingerprint::of_spki(cert.spki);
        if key.subject_public_key_info() != cert.spki {
            return Err(Error::KeyMismatch { ca: fingerprint });
        }
        let validity = validity_of(&cert);
        drop(cert);
        let cert_pem = pem_text("CERTIFICATE", &cert_der);
        Ok(Ca {
            kind,
            cert_der,
            cert_pem,
            key,
            fingerprint,
            validity,
        })
    }

    /// Which certificates this CA issues.
    pub fn kind(&self) -> CaKind {
        self.kind
    }

    /// The CA's fingerprint (also its Subject Key Identifier).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The CA certificate's own validity; device server certificates take it (see the crate docs).
    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's secret key, PKCS#8 PEM. Whoever has it can issue what this CA issues.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// An rcgen issuer for signing with this CA; checks the CA is of `kind` first.
    pub(crate) fn issuer(&self, kind: CaKind) -> Result<rcgen::Issuer<'_, &KeyPair>> {
        if self.kind != kind {
            return Err(Error::WrongCa {
                ca: self.fingerprint,
                is: self.kind,
                needed: kind,
            });
        }
        let what = || {
            format!(
                "an issuer from {} CA {}",
                self.kind.name(),
                self.fingerprint
            )
        };
        let bad = |reason: String| Error::Parse {
            what: what(),
            reason,
        };
        let cert = parse_der(&self.cert_der, "the CA certificate")?;
        // What rcgen would read from the certificate: its name, with each value's string type
        // as written, its key identifier and its key usages.
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        for a in der::attributes(cert.subject).map_err(bad)? {
            let text = || {
                String::from_utf8(a.value.to_vec())
                    .map_err(|_| bad("a name that is not UTF-8".into()))
            };
            let value = match a.tag {
                0x0c => DnValue::Utf8String(text()?),
                0x13 => DnValue::PrintableString(
                    text()?
                        .try_into()
                        .map_err(|_| bad("a PrintableString it cannot be".into()))?,
                ),
                0x16 => DnValue::Ia5String(
                    text()?
                        .try_into()
                        .map_err(|_| bad("an IA5String it cannot be".into()))?,
                ),
                tag => return Err(bad(format!("a name value of string type {tag:#04x}"))),
            };
            let ty = match a.oid {
                der::OID_COMMON_NAME => DnType::CommonName,
                der::OID_ORGANIZATION => DnType::OrganizationName,
                oid => {
                    return Err(bad(format!(
                        "a name attribute {oid:02x?} Cairn does not issue under"
                    )))
                }
            };
            name.push(ty, value);
        }
        params.distinguished_name = name;
        if let Some(id) = cert.subject_key_id {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id.to_vec());
        }
        params.key_usages = [
            (0, KeyUsagePurpose::DigitalSignature),
            (5, KeyUsagePurpose::KeyCertSign),
            (6, KeyUsagePurpose::CrlSign),
        ]
        .into_iter()
        .filter(|(bit, _)| cert.key_usage.is_some_and(|u| u & (1 << bit) != 0))
        .map(|(_, k)| k)
        .collect();
        Ok(rcgen::Issuer::new(params, &self.key))
    }
}

/// The kind of a Cairn CA certificate: a CA by basicConstraints, with EKU clientAuth or serverAuth
/// (exactly one).
pub(crate) fn kind_of(cert: &Cert<'_>) -> Result<CaKind> {
    let fingerprint = Fingerprint::of_spki(cert.spki);
    let not_cairn = |reason: &str| Error::NotCairnCa {
        ca: fingerprint,
        reason: reason.to_string(),
    };
    if !cert.is_ca {
        return Err(not_cairn(
            "it is not a CA (basicConstraints CA:FALSE or missing)",
        ));
    }
    if cert.ext_key_usage.is_none() {
        return Err(not_cairn(
            "it has no extendedKeyUsage to say whom it issues for",
        ));
    }
    match (
        cert.has_purpose(OID_CLIENT_AUTH),
        cert.has_purpose(OID_SERVER_AUTH),
    ) {
        (true, false) => Ok(CaKind::Client),
        (false, true) => Ok(CaKind::Device),
        _ => Err(not_cairn(
            "its extendedKeyUsage must be exactly one of clientAuth and serverAuth",
        )),
    }
}

/// PEM text of one DER block, with Unix line endings.
pub(crate) fn pem_text(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}
