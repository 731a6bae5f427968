//! The TLS side: TLS 1.3 only, ring as the crypto provider, and a client certificate required.
//!
//! The client verifier is webpki's: the client's chain must lead to one of the configured CA
//! certificates, be valid now, and carry the clientAuth extended key usage. A client that
//! fails any of that never gets an HTTP/2 connection. ALPN is `h2`, as gRPC requires. There is
//! no session resumption, so that check runs on every connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::Error;

/// What the server needs to run TLS: the CA that issues client certificates, and the device's
/// own certificate chain and key.
#[derive(Debug)]
pub struct TlsConfig {
    client_ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsConfig {
    fn clone(&self) -> Self {
        TlsConfig {
            client_ca: self.client_ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The machine config's certificate checks ([`cairn_facts::config::CertCheck`]) made with this
/// crate's TLS stack, so a config is refused on the device and by `cairnctl` exactly when the API
/// server or the bundle download would refuse its certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsCheck;

impl cairn_facts::config::CertCheck for TlsCheck {
    fn trust_anchors(pem: &str) -> Result<(), String> {
        crate::fetch::roots_from_pem(pem).map(drop)
    }

    fn server_identity(cert: &str, key: &str) -> Result<(), String> {
        TlsConfig::check_server_identity(cert.as_bytes(), key.as_bytes()).map_err(|e| e.to_string())
    }

    fn client_identity(cert: &str, key: &str) -> Result<(), String> {
        crate::fetch::client_config(
            rustls::RootCertStore::empty(),
            Some((cert.as_bytes(), key.as_bytes())),
        )
        .map(drop)
    }

    fn oci_reference(text: &str) -> Result<(), String> {
        crate::registry::Reference::parse(text)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl TlsConfig {
    /// From PEM: the client CA certificate(s), the server certificate chain (leaf first), and
    /// the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(client_ca: &[u8], chain: &[u8], key: &[u8]) -> Result<TlsConfig, Error> {
        Ok(TlsConfig {
            client_ca: certificates(client_ca, "client CA")?,
            chain: certificates(chain, "server certificate")?,
            key: PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
                rustls::pki_types::pem::Error::NoItemsFound => Error::Empty {
                    what: "server key",
                    expected: "PRIVATE KEY",
                },
                source => Error::Pem {
                    what: "server key",
                    source,
                },
            })?,
        })
    }

    /// [`TlsConfig::from_pem`] from three files.
    pub fn from_files(client_ca: &Path, chain: &Path, key: &Path) -> Result<TlsConfig, Error> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| Error::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        TlsConfig::from_pem(
            &read("client CA", client_ca)?,
            &read("server certificate", chain)?,
            &read("server key", key)?,
        )
    }

    /// Checks a server certificate chain and key as [`TlsConfig::server_config`] would take
    /// them: both parse, and the key is the leaf certificate's.
    pub fn check_server_identity(chain: &[u8], key: &[u8]) -> Result<(), Error> {
        // The chain stands in for the client CA: only the server side is being checked.
        TlsConfig::from_pem(chain, chain, key)?
            .server_config()
            .map(|_| ())
    }

    /// The rustls server config: mutual TLS 1.3 with ring.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for (index, ca) in self.client_ca.iter().enumerate() {
            roots
                .add(ca.clone())
                .map_err(|source| Error::Anchor { index, source })?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(Error::Verifier)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Error::ServerCert)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(Error::ServerCert)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        // No resumption: every connection shows its certificate again, so one that expired or
        // whose CA was replaced is refused at once rather than when a ticket runs out. A
        // management API gains nothing from saving a handshake.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem { what, source })?;
    if certs.is_empty() {
        return Err(Error::Empty {
            what,
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_garbage_pem_are_named() {
        let e = TlsConfig::from_pem(b"", b"", b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the client CA holds no CERTIFICATE: give a PEM file with a \"-----BEGIN CERTIFICATE-----\" block"
        );
        let bad = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = TlsConfig::from_pem(bad, b"", b"").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Pem {
                    what: "client CA",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
