//! Reading certificates: the role a client certificate carries, fingerprints, and a diagnostic
//! check of "was this issued by that CA, and is it usable now" that names what is wrong.
//!
//! The TLS stack (rustls) is what enforces trust on a connection; these functions explain a
//! refusal in one line and read the role once a connection is trusted.

use std::time::SystemTime;

use crate::ca::{kind_of, CaKind, Validity};
use crate::der::{self, Cert, OID_CLIENT_AUTH, OID_ECDSA_SHA256, OID_SERVER_AUTH};
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
    Ok(Fingerprint::of_spki(cert.spki))
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
        .subject_attr(der::OID_COMMON_NAME)
        .map_err(|reason| Error::Parse {
            what: "the certificate's subject".into(),
            reason,
        })?;
    Ok(cn.unwrap_or_default())
}

/// The IP addresses among a certificate's subject alternative names.
pub fn san_ips(cert_der: &[u8]) -> Result<Vec<std::net::IpAddr>> {
    let cert = parse_der(cert_der, "the certificate")?;
    Ok(cert
        .san_ips
        .iter()
        .filter_map(|b| match b.len() {
            4 => Some(<[u8; 4]>::try_from(*b).ok()?.into()),
            16 => Some(<[u8; 16]>::try_from(*b).ok()?.into()),
            _ => None,
        })
        .collect())
}

/// The role a client certificate carries: its subject's one Organization, which must be
/// `cairn:admin`, `cairn:operator` or `cairn:reader` exactly. Does not check who issued it: call
/// it on a certificate the TLS stack has verified.
pub fn role_of(cert_der: &[u8]) -> Result<Role> {
    let cert = parse_der(cert_der, "the client certificate")?;
    let subject = subject_of(&cert);
    let attrs = der::attributes(cert.subject).map_err(|reason| Error::Parse {
        what: "the client certificate's subject".into(),
        reason,
    })?;
    let orgs: Vec<_> = attrs
        .iter()
        .filter(|a| a.oid == der::OID_ORGANIZATION)
        .collect();
    let [org] = orgs[..] else {
        return Err(Error::RoleCount {
            subject,
            count: orgs.len(),
        });
    };
    let org = std::str::from_utf8(org.value).map_err(|_| Error::UnknownRole {
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
    let trusted = Fingerprint::of_spki(ca.spki);
    let cert = parse_der(cert_der, "the certificate")?;
    let issuer = authority_key_id(&cert);
    if issuer != Some(trusted) || cert.issuer != ca.subject {
        return Err(Error::NotIssuedBy { issuer, trusted });
    }
    // Cairn's CAs are ECDSA P-256 keys signing with SHA-256.
    let verified = cert.signature_algorithm == OID_ECDSA_SHA256
        && ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            ca.public_key,
        )
        .verify(cert.tbs, cert.signature)
        .is_ok();
    if !verified {
        return Err(Error::BadSignature { trusted });
    }
    if at < cert.not_before {
        return Err(Error::NotYetValid {
            subject: subject_of(&cert),
            not_before: utc(cert.not_before),
        });
    }
    if at > cert.not_after {
        return Err(Error::Expired {
            subject: subject_of(&cert),
            not_after: utc(cert.not_after),
        });
    }
    let usable = match kind {
        CaKind::Client => cert.has_purpose(OID_CLIENT_AUTH),
        CaKind::Device => cert.has_purpose(OID_SERVER_AUTH),
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

pub(crate) fn parse_der<'a>(der: &'a [u8], what: &str) -> Result<Cert<'a>> {
    Cert::parse(der).map_err(|reason| Error::Parse {
        what: what.into(),
        reason,
    })
}

pub(crate) fn validity_of(cert: &Cert<'_>) -> Validity {
    Validity {
        not_before: cert.not_before,
        not_after: cert.not_after,
    }
}

fn authority_key_id(cert: &Cert<'_>) -> Option<Fingerprint> {
    cert.authority_key_id.and_then(Fingerprint::from_key_id)
}

fn subject_of(cert: &Cert<'_>) -> String {
    let subject = der::name_text(cert.subject);
    if subject.chars().count() <= MAX_SUBJECT_IN_MESSAGE {
        return subject;
    }
    let mut cut: String = subject.chars().take(MAX_SUBJECT_IN_MESSAGE).collect();
    cut.push('…');
    cut
}

/// `2026-12-07 01:02:03 UTC`, for messages.
fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod utc_tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn dates_in_messages_are_utc_civil_dates() {
        let at = |s: u64| utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_796_601_968), "2026-12-07 00:06:08 UTC");
        assert_eq!(at(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
