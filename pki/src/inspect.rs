//! Reading certificates: the role a client certificate carries, fingerprints, and a diagnostic
//! check of "was this issued by that CA, and is it usable now" that names what is wrong.
//!
//! The TLS stack (rustls) is what enforces trust on a connection; these functions explain a
//! refusal in one line and read the role once a connection is trusted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::ca::{kind_of, CaKind, Validity};
use crate::error::{Error, Result};
use crate::fingerprint::Fingerprint;
use crate::role::Role;

/// Longest subject quoted in an error message; the rest is cut.
const MAX_SUBJECT_IN_MESSAGE: usize = 160;

/// The DER of the first `CERTIFICATE` block in PEM text (at most [`crate::MAX_PEM_BYTES`]).
pub fn pem_to_der(text: &str) -> Result<Vec<u8>> {
    pem_block(text, "CERTIFICATE", "the certificate")
}

/// The fingerprint of a certificate's public key (DER certificate).
pub fn fingerprint(cert_der: &[u8]) -> Result<Fingerprint> {
    let cert = parse_der(cert_der, "the certificate")?;
    Ok(Fingerprint::of_spki(cert.public_key().raw))
}

/// The fingerprint of the CA that issued a certificate, from its Authority Key Identifier; `None`
/// when it has none or one of another length (not issued by a Cairn CA).
pub fn issuer_fingerprint(cert_der: &[u8]) -> Result<Option<Fingerprint>> {
    let cert = parse_der(cert_der, "the certificate")?;
    Ok(authority_key_id(&cert))
}

/// The subject's first Common Name (a device server certificate's hostname).
pub fn common_name(cert_der: &[u8]) -> Result<String> {
    let cert = parse_der(cert_der, "the certificate")?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    Ok(cn.to_string())
}

/// The IP addresses among a certificate's subject alternative names.
pub fn san_ips(cert_der: &[u8]) -> Result<Vec<std::net::IpAddr>> {
    use x509_parser::extensions::GeneralName;
    let cert = parse_der(cert_der, "the certificate")?;
    let mut ips = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::IPAddress(bytes) = name {
                    match bytes.len() {
                        4 => ips.push(<[u8; 4]>::try_from(*bytes).unwrap_or_default().into()),
                        16 => ips.push(<[u8; 16]>::try_from(*bytes).unwrap_or_default().into()),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(ips)
}

/// The role a client certificate carries: its subject's one Organization, which must be
/// `cairn:admin`, `cairn:operator` or `cairn:reader` exactly. Does not check who issued it: call
/// it on a certificate the TLS stack has verified.
pub fn role_of(cert_der: &[u8]) -> Result<Role> {
    let cert = parse_der(cert_der, "the client certificate")?;
    let subject = subject_of(&cert);
    let mut orgs = cert.subject().iter_organization();
    let (Some(org), None) = (orgs.next(), orgs.next()) else {
        let count = cert.subject().iter_organization().count();
        return Err(Error::RoleCount { subject, count });
    };
    let org = org.as_str().map_err(|_| Error::UnknownRole {
        subject: subject.clone(),
        organization: "(not a string)".into(),
    })?;
    Role::from_organization(org).ok_or_else(|| Error::UnknownRole {
        subject,
        organization: org.chars().take(MAX_SUBJECT_IN_MESSAGE).collect(),
    })
}

/// Whether `cert_der` was issued by the Cairn CA `ca_der`, is valid at `at`, and has the EKU that
/// CA issues for (clientAuth from the client CA, serverAuth from the device CA). The error names
/// the first thing wrong: the issuing CA against the trusted one, the signature, the dates, the
/// usage.
pub fn check_issued_by(cert_der: &[u8], ca_der: &[u8], at: SystemTime) -> Result<()> {
    let ca = parse_der(ca_der, "the CA certificate")?;
    let kind = kind_of(&ca)?;
    let trusted = Fingerprint::of_spki(ca.public_key().raw);
    let cert = parse_der(cert_der, "the certificate")?;
    let issuer = authority_key_id(&cert);
    if issuer != Some(trusted) || cert.issuer() != ca.subject() {
        return Err(Error::NotIssuedBy { issuer, trusted });
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| Error::BadSignature { trusted })?;
    let validity = validity_of(&cert);
    if at < validity.not_before {
        return Err(Error::NotYetValid {
            subject: subject_of(&cert),
            not_before: cert.validity().not_before.to_string(),
        });
    }
    if at > validity.not_after {
        return Err(Error::Expired {
            subject: subject_of(&cert),
            not_after: cert.validity().not_after.to_string(),
        });
    }
    let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
    let usable = match kind {
        CaKind::Client => eku.is_some_and(|e| e.client_auth),
        CaKind::Device => eku.is_some_and(|e| e.server_auth),
    };
    if !usable {
        return Err(Error::WrongUsage {
            subject: subject_of(&cert),
            needed: match kind {
                CaKind::Client => "clientAuth",
                CaKind::Device => "serverAuth",
            },
        });
    }
    Ok(())
}

pub(crate) fn pem_block(text: &str, label: &str, what: &str) -> Result<Vec<u8>> {
    if text.len() > crate::MAX_PEM_BYTES {
        return Err(Error::TooLarge { what: what.into() });
    }
    let block = pem::parse(text).map_err(|e| Error::Pem {
        what: what.into(),
        reason: e.to_string(),
    })?;
    if block.tag() != label {
        return Err(Error::Pem {
            what: what.into(),
            reason: format!("its first block is {}, expected {label}", block.tag()),
        });
    }
    Ok(block.into_contents())
}

pub(crate) fn parse_der<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| Error::Parse {
        what: what.into(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(Error::Parse {
            what: what.into(),
            reason: format!("{} bytes follow the certificate", rest.len()),
        });
    }
    Ok(cert)
}

pub(crate) fn validity_of(cert: &X509Certificate<'_>) -> Validity {
    let time = |t: i64| {
        let secs = Duration::from_secs(t.unsigned_abs());
        if t >= 0 {
            UNIX_EPOCH + secs
        } else {
            UNIX_EPOCH - secs
        }
    };
    Validity {
        not_before: time(cert.validity().not_before.timestamp()),
        not_after: time(cert.validity().not_after.timestamp()),
    }
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Fingerprint> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .and_then(|id| Fingerprint::from_key_id(id.0))
}

fn subject_of(cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if subject.chars().count() <= MAX_SUBJECT_IN_MESSAGE {
        return subject;
    }
    let mut cut: String = subject.chars().take(MAX_SUBJECT_IN_MESSAGE).collect();
    cut.push('…');
    cut
}
