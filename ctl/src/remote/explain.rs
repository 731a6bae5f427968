//! One line for each way a connection to a device fails, saying what to do about it.
//!
//! TLS refusals are where operators get stuck, so they are named by the CAs involved: the
//! fingerprint of the CA that issued the device's certificate against the one `ca:` points at,
//! or the CA that issued our client certificate when the device refuses it. A CA's fingerprint
//! is the key identifier every certificate it issued carries, so both sides can be named from
//! the certificates alone.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::{AlertDescription, CertificateError};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::config::Target;
use super::show;

/// The alerts a TLS server sends when it refuses the client's certificate.
fn refuses_client_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
    )
}

/// The rustls error inside an I/O error from tokio-rustls, if that is what it is.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

impl Target {
    /// Where to fix the endpoint.
    fn endpoint_hint(&self) -> String {
        format!(
            "check that the device is up and that `endpoint:` in {} (or --endpoint) is its API \
             address",
            self.config.display()
        )
    }

    /// TCP did not connect.
    pub fn unreachable(&self, e: &io::Error) -> String {
        format!(
            "cannot connect to the device at {}: {e}; {}",
            self.endpoint,
            self.endpoint_hint()
        )
    }

    /// Nothing answered within the connect timeout.
    pub fn timed_out(&self, secs: u64) -> String {
        format!(
            "no answer from the device at {} within {secs} s; {}",
            self.endpoint,
            self.endpoint_hint()
        )
    }

    /// The TLS handshake failed; `presented` is the certificate the device showed, if any.
    pub fn handshake_failed(&self, e: &io::Error, presented: Option<&[u8]>) -> String {
        match tls_error(e) {
            Some(rustls::Error::InvalidCertificate(why)) => self.server_refused(why, presented),
            Some(rustls::Error::AlertReceived(alert)) if refuses_client_certificate(*alert) => {
                self.client_refused(Some(*alert))
            }
            Some(other) => format!(
                "TLS with the device at {} failed: {other}; is {} the device's API port?",
                self.endpoint, self.endpoint
            ),
            None => format!(
                "the connection to {} closed during the TLS handshake ({e}); is it the device's \
                 API port?",
                self.endpoint
            ),
        }
    }

    /// We refused the device's certificate.
    fn server_refused(&self, why: &CertificateError, presented: Option<&[u8]>) -> String {
        let config = self.config.display();
        let cert = presented.and_then(parse);
        match why {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = cert
                    .as_ref()
                    .map(|c| names_of(c).join(", "))
                    .unwrap_or_default();
                format!(
                    "the device's certificate is for {names}, not {}: connect by one of those \
                     names (`endpoint:` in {config}, or --endpoint)",
                    self.host
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                let until = cert.as_ref().map_or("-".into(), |c| {
                    show::time_s(c.validity().not_after.timestamp())
                });
                format!(
                    "the device's certificate expired on {until}; check the device's clock and \
                     this machine's, or give the device a new certificate"
                )
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                let from = cert.as_ref().map_or("-".into(), |c| {
                    show::time_s(c.validity().not_before.timestamp())
                });
                format!(
                    "the device's certificate is not valid before {from}; check this machine's \
                     clock"
                )
            }
            _ => {
                // A device in maintenance mode: its own certificate is on its locked disk.
                if let Some(c) = cert.as_ref().filter(|c| c.issuer() == c.subject()) {
                    let key = cairn_pki::Fingerprint::of_spki(c.public_key().raw);
                    return format!(
                        "the device's certificate is self-signed (key {key:#}), as in \
                         maintenance mode, when its TPM refused to unlock the disks: if the \
                         device's console shows that fingerprint, run `cairnctl unlock \
                         --expect-fingerprint {key:#}`"
                    );
                }
                let issuer = match presented.map(cairn_pki::issuer_fingerprint) {
                    Some(Ok(Some(fp))) => format!("CA {fp}"),
                    Some(_) => "a CA that does not name its key".to_string(),
                    None => "an unknown CA".to_string(),
                };
                let trusted = match cairn_pki::fingerprint(&self.ca) {
                    Ok(fp) => format!("CA {fp}"),
                    Err(_) => "not a certificate Cairn can read".to_string(),
                };
                format!(
                    "the device's certificate was issued by {issuer}, but {} is {trusted}: \
                     point `ca:` in {config} at the device CA of this fleet (device-ca.crt from \
                     `cairnctl gen secrets`)",
                    self.ca_path.display()
                )
            }
        }
    }

    /// The device refused our client certificate: it sent `alert`, or closed the connection
    /// before answering anything.
    pub fn client_refused(&self, alert: Option<AlertDescription>) -> String {
        let leaf = self.chain.first().map(|c| c.as_ref()).unwrap_or_default();
        let issuer = match cairn_pki::issuer_fingerprint(leaf) {
            Ok(Some(fp)) => format!("CA {fp}"),
            _ => "a CA that does not name its key".to_string(),
        };
        let said = match alert {
            Some(alert) => format!("TLS alert {alert:?}"),
            None => "it closed the connection after seeing the certificate".to_string(),
        };
        let cert = self.cert_path.display();
        let config = self.config.display();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let expired = parse(leaf)
            .map(|c| c.validity().not_after.timestamp())
            .filter(|&t| t < now);
        match expired {
            Some(t) => format!(
                "the device does not trust this client certificate ({cert}): it was issued by \
                 {issuer} and expired on {}; issue a new one from that CA and point `cert:` and \
                 `key:` in {config} at it ({said})",
                show::time_s(t)
            ),
            None => format!(
                "the device does not trust this client certificate ({cert}): it was issued by \
                 {issuer}, which is not the client CA the device was built with; point `cert:` \
                 and `key:` in {config} at a certificate from that CA ({said})"
            ),
        }
    }
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

/// The DNS names and addresses a certificate is valid for.
fn names_of(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
                16 => {
                    Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string())
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}
