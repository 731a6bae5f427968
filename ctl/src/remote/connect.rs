//! The connection to a device: TCP, then TLS 1.3 with our client certificate, then tonic's
//! HTTP/2 channel over it.
//!
//! The one idea: we make the TLS connection ourselves (tonic gets it through a connector) so
//! that every way it can fail is seen where it happens and explained by
//! [`Target`](super::config::Target). Two failures need help to be seen at all. The device's
//! certificate is only visible inside the verifier, so [`Recording`] keeps it when it is
//! refused. And in TLS 1.3 the client's handshake is over before the server has checked the
//! client's certificate: a refusal arrives as an alert, or a closed socket, on the first read.
//! The device sends no application data to a client it refused, so [`Watched`] takes a
//! connection that ends before any data arrived as a refused certificate, and the call that
//! fails on it is explained so rather than as an HTTP/2 transport error.
//!
//! A device in maintenance mode has no certificate a CA vouches for: `unlock` connects with
//! [`ServerIdentity::AnyKey`], which names the device's key instead (see [`super::unverified`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_api::proto::device_service_client::DeviceServiceClient;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::config::Target;
use super::explain::tls_error;
use super::unverified::AnyKey;

/// How long TCP and the TLS handshake may take together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a unary call (or the start of a stream) may take. The device gives itself 30 s.
pub const CALL_DEADLINE: Duration = Duration::from_secs(35);
/// HTTP/2 pings notice a device that vanished while a stream was quiet.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the device's certificate is checked.
pub enum ServerIdentity {
    /// It chains to `ca:` and names the endpoint's host: every command but `unlock`.
    Ca,
    /// One that chains to `ca:`, or else the key `expect` names (the fingerprint a device in
    /// maintenance mode shows on its console), or else, with `risk_unverified`, any key, which
    /// is named: `unlock`.
    AnyKey {
        expect: Option<cairn_pki::Fingerprint>,
        risk_unverified: bool,
    },
}

/// A connected client and what is needed to explain its failures.
pub struct Session {
    client: DeviceServiceClient<Channel>,
    link: Arc<Link>,
}

/// What the connections of a session have seen.
struct Link {
    target: Target,
    /// The first failure that explains everything after it, as the line to print.
    failure: Mutex<Option<String>>,
}

impl Link {
    fn fail(&self, why: String) -> String {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(why).clone()
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Session {
    /// The device's host as this session reached it (the endpoint without its port).
    pub fn host(&self) -> &str {
        &self.link.target.host
    }

    /// Connects to the device `target` names, checking its certificate as `identity` says.
    pub async fn connect(target: Target, identity: ServerIdentity) -> anyhow::Result<Session> {
        let tls = tls_config(&target, identity)?;
        let server_name = ServerName::try_from(target.host.clone()).map_err(|_| {
            anyhow::anyhow!(
                "{:?} is not a host name or address (`endpoint:` in {}, or --endpoint)",
                target.host,
                target.config.display()
            )
        })?;
        let link = Arc::new(Link {
            target,
            failure: Mutex::new(None),
        });
        let dialer = Dialer {
            connector: TlsConnector::from(tls.config),
            verifier: tls.verifier,
            server_name,
            link: link.clone(),
        };
        let endpoint = &link.target.endpoint;
        let uri = |scheme: &str| {
            format!("{scheme}://{endpoint}")
                .parse::<Uri>()
                .map_err(|_| anyhow::anyhow!("endpoint {endpoint:?} is not host:port"))
        };
        // The connector ignores the URI's scheme, since TLS is ours; requests still say https.
        let channel = Endpoint::from(uri("http")?)
            .origin(uri("https")?)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_with_connector(tower::service_fn(move |_: Uri| dialer.clone().dial()))
            .await;
        let channel = match channel {
            Ok(channel) => channel,
            Err(e) => {
                return Err(anyhow::anyhow!(link.failure().unwrap_or_else(|| format!(
                    "cannot connect to the device at {endpoint}: {}",
                    chain(&e)
                ))))
            }
        };
        // Devices cap messages at 1 MiB + 1 KiB; so do we, for what they send.
        let client = DeviceServiceClient::new(channel)
            .max_decoding_message_size(cairn_api::Limits::default().max_message)
            .max_encoding_message_size(cairn_api::Limits::default().max_message);
        Ok(Session { client, link })
    }

    /// A client for one call (clients are cheap handles on the one connection).
    pub fn client(&self) -> DeviceServiceClient<Channel> {
        self.client.clone()
    }

    /// Waits for a unary call (or a stream's start) for at most [`CALL_DEADLINE`].
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(CALL_DEADLINE, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.explain(what, &status)),
            Err(_) => Err(anyhow::anyhow!(
                "{what}: the device at {} did not answer within {} s",
                self.link.target.endpoint,
                CALL_DEADLINE.as_secs()
            )),
        }
    }

    /// The one line for a failed call. `what` is the command, e.g. `upgrade`.
    pub fn explain(&self, what: &str, status: &Status) -> anyhow::Error {
        if let Some(why) = self.link.failure() {
            return anyhow::anyhow!(why);
        }
        let target = &self.link.target;
        let message = status.message();
        match status.code() {
            Code::PermissionDenied => anyhow::anyhow!(
                "{what}: the device refused: {message}; point `cert:` and `key:` in {} at a \
                 certificate with that role",
                target.config.display()
            ),
            // tonic's own failures: the connection, not the device, said no.
            Code::Unavailable | Code::Unknown | Code::Cancelled
                if std::error::Error::source(status).is_some() =>
            {
                anyhow::anyhow!(
                    "{what}: lost the connection to the device at {}: {}",
                    target.endpoint,
                    chain(status)
                )
            }
            _ => anyhow::anyhow!("{what}: {message}"),
        }
    }
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

struct Tls {
    config: Arc<rustls::ClientConfig>,
    verifier: Verifier,
}

/// The verifier a session uses, kept to explain a failed handshake.
#[derive(Clone)]
enum Verifier {
    Ca(Arc<Recording>),
    AnyKey(Arc<AnyKey>),
}

impl Verifier {
    fn handshake_failed(&self, target: &Target, e: &io::Error) -> String {
        match self {
            Verifier::Ca(recording) => target.handshake_failed(e, recording.refused().as_deref()),
            Verifier::AnyKey(any) => any
                .refusal()
                .unwrap_or_else(|| target.handshake_failed(e, None)),
        }
    }

    fn rustls(&self) -> Arc<dyn ServerCertVerifier> {
        match self {
            Verifier::Ca(recording) => recording.clone(),
            Verifier::AnyKey(any) => any.clone(),
        }
    }
}

/// TLS 1.3 only, ring, ALPN h2, our certificate for the client, and for the device's the
/// device CA as the only root (or, for `unlock`, any key by its fingerprint).
fn tls_config(target: &Target, identity: ServerIdentity) -> anyhow::Result<Tls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match identity {
        ServerIdentity::Ca => Verifier::Ca(ca_verifier(target, &provider)?),
        ServerIdentity::AnyKey {
            expect,
            risk_unverified,
        } => Verifier::AnyKey(Arc::new(AnyKey::new(
            provider.clone(),
            Some(ca_verifier(target, &provider)?.inner.clone()),
            expect,
            risk_unverified,
            &target.endpoint,
        ))),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.rustls())
        .with_client_auth_cert(target.chain.clone(), target.key.clone_key())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot use {} with its key (`cert:` and `key:` in {}): {e}",
                target.cert_path.display(),
                target.config.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        verifier,
    })
}

/// webpki with `ca:` as the only root.
fn ca_verifier(
    target: &Target,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<Recording>> {
    let mut roots = RootCertStore::empty();
    roots.add(target.ca.clone()).map_err(|e| {
        anyhow::anyhow!(
            "{} (`ca:` in {}) is not a usable CA certificate: {e}",
            target.ca_path.display(),
            target.config.display()
        )
    })?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("cannot trust {}: {e}", target.ca_path.display()))?;
    Ok(Arc::new(Recording {
        inner: webpki,
        presented: Mutex::new(None),
    }))
}

/// webpki's verifier, keeping the certificate it refused so the refusal can name its issuer.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    presented: Mutex<Option<CertificateDer<'static>>>,
}

impl Recording {
    fn refused(&self) -> Option<CertificateDer<'static>> {
        self.presented
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if verdict.is_err() {
            *self.presented.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(end_entity.clone().into_owned());
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Makes one connection: what tonic calls to connect, and again after a connection dropped.
#[derive(Clone)]
struct Dialer {
    connector: TlsConnector,
    verifier: Verifier,
    server_name: ServerName<'static>,
    link: Arc<Link>,
}

impl Dialer {
    async fn dial(self) -> io::Result<TokioIo<Watched>> {
        let target = &self.link.target;
        let attempt = async {
            let tcp = TcpStream::connect(&target.endpoint)
                .await
                .map_err(|e| target.unreachable(&e))?;
            let _ = tcp.set_nodelay(true);
            self.connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| self.verifier.handshake_failed(target, &e))
        };
        let tls = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(why)) => return Err(io::Error::other(self.link.fail(why))),
            Err(_) => {
                let why = target.timed_out(CONNECT_TIMEOUT.as_secs());
                return Err(io::Error::other(self.link.fail(why)));
            }
        };
        Ok(TokioIo::new(Watched {
            inner: tls,
            link: self.link,
            answered: false,
        }))
    }
}

/// A TLS stream that notices when the device refuses our certificate after the handshake.
struct Watched {
    inner: TlsStream<TcpStream>,
    link: Arc<Link>,
    /// The device has sent application data: it accepted our certificate.
    answered: bool,
}

impl Watched {
    /// The connection ended or failed before the device said anything.
    fn ended_silently(&self, e: Option<&io::Error>) {
        if self.answered {
            return;
        }
        let alert = match e.and_then(tls_error) {
            Some(rustls::Error::AlertReceived(alert)) => Some(*alert),
            _ => None,
        };
        self.link.fail(self.link.target.client_refused(alert));
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.answered = true,
            Poll::Ready(Ok(())) => self.ended_silently(None),
            Poll::Ready(Err(e)) => self.ended_silently(Some(e)),
            Poll::Pending => {}
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &polled {
            self.ended_silently(Some(e));
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Err(e)) = &polled {
            self.ended_silently(Some(e));
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
