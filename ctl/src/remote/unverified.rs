//! Talking to a device whose certificate no CA vouches for: a device in maintenance mode,
//! whose own certificate is on its locked STATE partition, serves a self-signed one made at
//! that boot and shows its key's fingerprint on the console.
//!
//! The one idea: [`AnyKey`] accepts a certificate that chains to `ca:` as usual, and otherwise
//! only the key whose fingerprint the operator gives with `--expect-fingerprint` (read off the
//! device's console), so the recovery key never goes to a device nobody vouched for. Without
//! either it refuses, naming the key it saw, unless the operator passes
//! `--send-key-to-unverified-device`, which says what it risks. The handshake signatures are
//! still checked with the crypto provider: they prove the peer holds the key the fingerprint
//! names, which is what makes the fingerprint mean anything. Our client certificate is sent as
//! usual.

use std::sync::{Arc, Mutex};

use cairn_pki::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Accepts a certificate from `ca`, or the key `expect` names, or (only with `risk_unverified`)
/// any key, which it names.
#[derive(Debug)]
pub struct AnyKey {
    provider: Arc<CryptoProvider>,
    /// `ca:` from the client config, when it could be read.
    ca: Option<Arc<WebPkiServerVerifier>>,
    expect: Option<Fingerprint>,
    /// `--send-key-to-unverified-device`.
    risk_unverified: bool,
    endpoint: String,
    /// The key last printed, so a reconnection to the same key prints nothing new.
    shown: Mutex<Option<Fingerprint>>,
    /// Why a key was refused, as the line to print.
    refusal: Mutex<Option<String>>,
}

impl AnyKey {
    pub fn new(
        provider: Arc<CryptoProvider>,
        ca: Option<Arc<WebPkiServerVerifier>>,
        expect: Option<Fingerprint>,
        risk_unverified: bool,
        endpoint: &str,
    ) -> AnyKey {
        AnyKey {
            provider,
            ca,
            expect,
            risk_unverified,
            endpoint: endpoint.to_string(),
            shown: Mutex::new(None),
            refusal: Mutex::new(None),
        }
    }

    /// The line explaining a refused key, if that is why the handshake failed.
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn refuse(&self, why: String) -> rustls::Error {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }

    /// Prints the device's key once per key; stderr, so it shows even with `--json`.
    fn show(&self, key: Fingerprint) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        if *shown == Some(key) {
            return;
        }
        *shown = Some(key);
        match self.expect {
            Some(_) => eprintln!(
                "cairnctl: the device at {} has key {key:#}, as --expect-fingerprint says",
                self.endpoint
            ),
            None => eprintln!(
                "cairnctl: the device at {} has key {key:#}; NOT verified, sent anyway \
                 (--send-key-to-unverified-device): compare it with the fingerprint on the \
                 device's console, and if they differ, the recovery key went elsewhere",
                self.endpoint
            ),
        }
    }
}

impl ServerCertVerifier for AnyKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // A device whose own certificate the CA signed is verified the usual way.
        if let Some(ca) = &self.ca {
            if ca
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .is_ok()
            {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let key = cairn_pki::fingerprint(end_entity).map_err(|e| {
            self.refuse(format!(
                "the device at {} sent a certificate that cannot be read: {e}",
                self.endpoint
            ))
        })?;
        if let Some(expected) = self.expect.filter(|&expected| expected != key) {
            return Err(self.refuse(format!(
                "the device at {} has key {key:#}, not {expected:#} (--expect-fingerprint): \
                 nothing was sent; check the fingerprint on the device's console and that \
                 --endpoint names that device",
                self.endpoint
            )));
        }
        if self.expect.is_none() && !self.risk_unverified {
            return Err(self.refuse(format!(
                "the device at {} has key {key:#}, which `ca:` does not vouch for (a device in \
                 maintenance mode has a self-signed certificate): nothing was sent; if the \
                 device's console shows that fingerprint, run `cairnctl unlock \
                 --expect-fingerprint {key:#}`",
                self.endpoint
            )));
        }
        self.show(key);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(expect: Option<Fingerprint>) -> AnyKey {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        AnyKey::new(provider, None, expect, false, "127.0.0.1:50000")
    }

    fn risking() -> AnyKey {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        AnyKey::new(provider, None, None, true, "127.0.0.1:50000")
    }

    fn check(v: &AnyKey, cert: &[u8]) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        v.verify_server_cert(
            &CertificateDer::from(cert),
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn any_key_passes_unless_another_is_expected() {
        let (chain, _, fp) = cairn_pki::ephemeral_server_identity("cairn-01").unwrap();
        let der = cairn_pki::pem_to_der(&chain).unwrap();
        // No CA vouches for it and no fingerprint was given: refused, naming the key.
        let v = verifier(None);
        assert!(check(&v, &der).is_err());
        let why = v.refusal().unwrap();
        assert!(
            why.contains(&format!("has key {fp}, which `ca:` does not vouch for"))
                && why.contains("nothing was sent"),
            "{why}"
        );
        assert!(check(&risking(), &der).is_ok());
        let expected = super::super::recovery::parse_fingerprint(&fp).unwrap();
        assert!(check(&verifier(Some(expected)), &der).is_ok());

        let other = Fingerprint([7; 20]);
        let v = verifier(Some(other));
        assert!(check(&v, &der).is_err());
        let why = v.refusal().unwrap();
        assert!(
            why.contains(&format!("has key {fp}, not {other:#}")),
            "{why}"
        );

        let v = risking();
        assert!(check(&v, b"not a certificate").is_err());
        assert!(v.refusal().unwrap().contains("cannot be read"));
    }

    /// A server that presents `chain` and signs the handshake with `key`.
    #[derive(Debug)]
    struct Presents(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Presents {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// A TLS 1.3 handshake in memory; the client's verdict.
    fn handshake(chain: &str, key: &str, verifier: Arc<AnyKey>) -> Result<(), rustls::Error> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::PrivateKeyDer;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let signer = provider.key_provider.load_private_key(key).unwrap();
        let chain = vec![CertificateDer::from(cairn_pki::pem_to_der(chain).unwrap())];
        // CertifiedKey::new does not check that the key is the certificate's: this server can lie.
        let presents = Presents(Arc::new(rustls::sign::CertifiedKey::new(chain, signer)));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(presents));
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let name = ServerName::try_from("cairn-01").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut flight = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut flight).unwrap();
            }
            server.read_tls(&mut flight.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut flight = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut flight).unwrap();
            }
            client.read_tls(&mut flight.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn handshake_signatures_are_still_checked() {
        let (chain, key, fp) = cairn_pki::ephemeral_server_identity("cairn-01").unwrap();
        let (_, other_key, _) = cairn_pki::ephemeral_server_identity("cairn-01").unwrap();
        let expected = super::super::recovery::parse_fingerprint(&fp).unwrap();
        let verifier = || Arc::new(verifier(Some(expected)));
        handshake(&chain, &key, verifier()).unwrap();
        // The certificate with the expected key, and a signature by another key: a server
        // that copied the device's certificate but does not hold its key.
        let e = handshake(&chain, &other_key, verifier()).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::BadSignature)
            ),
            "{e:?}"
        );
    }
}
