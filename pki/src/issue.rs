//! Issuing leaf certificates: client certificates (role in O, EKU clientAuth) from the client CA,
//! server certificates (names in SANs, EKU serverAuth) from the device CA, and the self-signed
//! server identity of a device in maintenance mode. Every leaf gets a fresh ECDSA P-256 key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData as _, SanType, PKCS_ECDSA_P256_SHA256,
};

use crate::ca::{pem_text, Ca, CaKind, Validity};
use crate::error::{Error, Result};
use crate::fingerprint::Fingerprint;
use crate::role::Role;

/// The most subject alternative names a server certificate may carry (the ones always added
/// included). A device has a hostname and a handful of addresses.
pub const MAX_SANS: usize = 64;

/// Longest common name accepted (the X.509 upper bound for CN).
const MAX_COMMON_NAME: usize = 64;

/// A subject alternative name: a name or an address a client may dial the device by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum San {
    /// A DNS name (a hostname, `localhost`, or a fully qualified name).
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl From<IpAddr> for San {
    fn from(ip: IpAddr) -> San {
        San::Ip(ip)
    }
}

impl std::str::FromStr for San {
    type Err = Error;

    /// An IP address if it parses as one, else a DNS name (checked).
    fn from_str(s: &str) -> Result<San> {
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(San::Ip(ip)),
            Err(_) => {
                check_dns_name(s)?;
                Ok(San::Dns(s.to_string()))
            }
        }
    }
}

/// A freshly issued certificate and its secret key.
pub struct Issued {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The secret key, PKCS#8 PEM.
    pub key_pem: String,
}

impl Issued {
    /// The fingerprint of the certificate's key.
    pub fn fingerprint(&self) -> Fingerprint {
        crate::inspect::fingerprint(&self.cert_der).expect("a certificate this crate made parses")
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("fingerprint", &format_args!("{:#}", self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// A client certificate from the client CA: subject `CN=<common_name>, O=<role>`, EKU clientAuth,
/// keyUsage digitalSignature, CA:FALSE.
pub fn issue_client(ca: &Ca, common_name: &str, role: Role, validity: Validity) -> Result<Issued> {
    let issuer = ca.issuer(CaKind::Client)?;
    check_common_name(common_name)?;
    let mut params = leaf_params(validity, ExtendedKeyUsagePurpose::ClientAuth);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, role.organization());
    sign(
        params,
        &issuer,
        &format!("the {} client certificate", role.name()),
    )
}

/// A server certificate from the device CA for `hostname`: subject `CN=<hostname>`, EKU
/// serverAuth, SANs `hostname`, `localhost`, `127.0.0.1`, `::1` and then `sans` (duplicates
/// dropped). What a device does on first boot, with [`Ca::validity`] as `validity`.
pub fn issue_server(ca: &Ca, hostname: &str, sans: &[San], validity: Validity) -> Result<Issued> {
    let issuer = ca.issuer(CaKind::Device)?;
    let mut params = leaf_params(validity, ExtendedKeyUsagePurpose::ServerAuth);
    params.distinguished_name.push(DnType::CommonName, hostname);
    params.subject_alt_names = server_names(hostname, sans)?;
    sign(
        params,
        &issuer,
        &format!("the server certificate for {hostname}"),
    )
}

/// A self-signed server certificate and its key for `hostname`, made for one boot in
/// maintenance mode, when the device's own certificate is on the locked STATE partition.
/// Returns the certificate (PEM), the key (PKCS#8 PEM), and the key's [`Fingerprint`] in full
/// (`{:#}`: 40 lowercase hex digits) for the console, where an operator reads it to check what
/// `cairnctl unlock` shows.
///
/// Nothing vouches for this certificate but that fingerprint: clients cannot chain it to a CA.
/// It is valid from 2000 to 9999 (a board in maintenance mode may not know the time, and the
/// key lives only in memory) and carries the names [`issue_server`] gives, EKU serverAuth,
/// CA:FALSE and subject `CN=<hostname>, OU=maintenance mode`.
pub fn ephemeral_server_identity(hostname: &str) -> Result<(String, String, String)> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, hostname);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "maintenance mode");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    params.subject_alt_names = server_names(hostname, &[])?;
    let generate = |source| Error::Generate {
        what: format!("the maintenance mode certificate for {hostname}"),
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    let fingerprint = Fingerprint::of_spki(&key.subject_public_key_info());
    Ok((
        pem_text("CERTIFICATE", cert.der()),
        key.serialize_pem(),
        format!("{fingerprint:#}"),
    ))
}

/// The SANs of a server certificate: `hostname`, `localhost`, `127.0.0.1`, `::1`, then `sans`
/// (duplicates dropped, names checked, at most [`MAX_SANS`]).
fn server_names(hostname: &str, sans: &[San]) -> Result<Vec<SanType>> {
    check_dns_name(hostname)?;
    let mut all: Vec<San> = vec![
        San::Dns(hostname.to_string()),
        San::Dns("localhost".to_string()),
        San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for san in sans {
        if let San::Dns(name) = san {
            check_dns_name(name)?;
        }
        if !all.contains(san) {
            all.push(san.clone());
        }
    }
    if all.len() > MAX_SANS {
        return Err(Error::TooManySans {
            count: all.len(),
            max: MAX_SANS,
        });
    }
    all.into_iter()
        .map(|san| match san {
            San::Ip(ip) => Ok(SanType::IpAddress(ip)),
            San::Dns(name) => {
                name.as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| Error::InvalidName {
                        name,
                        reason: "not ASCII",
                    })
            }
        })
        .collect()
}

fn leaf_params(validity: Validity, eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params
}

fn sign(
    params: CertificateParams,
    issuer: &rcgen::Issuer<'_, &KeyPair>,
    what: &str,
) -> Result<Issued> {
    let generate = |source| Error::Generate {
        what: what.to_string(),
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let cert = params.signed_by(&key, issuer).map_err(generate)?;
    Ok(Issued {
        cert_der: cert.der().to_vec(),
        cert_pem: pem_text("CERTIFICATE", cert.der()),
        key_pem: key.serialize_pem(),
    })
}

fn check_common_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.chars().count() > MAX_COMMON_NAME {
        "it is longer than 64 characters"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// A hostname or DNS name: 1-253 characters, labels of 1-63 letters, digits and hyphens, not
/// starting or ending with a hyphen.
fn check_dns_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 253 {
        return invalid("a DNS name has 1 to 253 characters");
    }
    for label in name.strip_suffix('.').unwrap_or(name).split('.') {
        if label.is_empty() || label.len() > 63 {
            return invalid("each dot-separated label has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return invalid("only letters, digits, hyphens and dots are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid("a label may not start or end with a hyphen");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_checked() {
        for ok in ["cairn", "cairn-01", "cairn-01.lan", "localhost", "a.b.c."] {
            assert!(check_dns_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-cairn",
            "cairn-",
            "ca irn",
            "a..b",
            "caïrn",
            &"a".repeat(64),
        ] {
            let err = check_dns_name(bad).unwrap_err().to_string();
            assert!(err.contains("is not a valid name"), "{bad}: {err}");
        }
    }

    #[test]
    fn sans_parse_as_addresses_or_names() {
        assert_eq!(
            "10.0.2.15".parse::<San>().unwrap(),
            San::Ip("10.0.2.15".parse().unwrap())
        );
        assert_eq!(
            "fe80::1".parse::<San>().unwrap(),
            San::Ip("fe80::1".parse().unwrap())
        );
        assert_eq!(
            "box.lan".parse::<San>().unwrap(),
            San::Dns("box.lan".into())
        );
        assert!("box lan".parse::<San>().is_err());
    }

    #[test]
    fn common_names_are_bounded() {
        assert!(check_common_name("alice@example.com").is_ok());
        assert!(check_common_name("").is_err());
        assert!(check_common_name(&"x".repeat(65)).is_err());
        assert!(check_common_name("a\nb").is_err());
    }
}
