//! Fetching a bundle from an `https://` URL: a blocking HTTP/1.1 GET over rustls that resumes
//! after a dropped connection.
//!
//! The one idea: [`Fetch`] is a [`Read`] of the body that hides broken connections but never
//! splices two files together. When a connection breaks before the announced length has
//! arrived, it connects again and asks for the rest (`Range: bytes=<received>-`, with
//! `If-Range` carrying the first answer's strong ETag, or else its Last-Modified), and takes
//! only a `206` whose `Content-Range` starts at the byte it needs and has the same total
//! length, and whose validators match the first answer's. A server that answers `200` instead
//! (it ignores ranges, or the file changed) ends the download with an error once bytes have
//! been read, rather than starting over behind the reader's back.
//!
//! Deliberately small, for the static device binary: TLS 1.3 with ring, the server checked
//! against the roots the caller gives, one request per connection (`Connection: close`), no
//! proxies, no compression. A body needs a `Content-Length` or chunked transfer encoding (only
//! the first can resume); one that just runs until the connection closes is refused, since a
//! cut-off download could not be told from a whole one. Every size read from the server is
//! bounded by [`FetchLimits`]. Failures are one line naming the URL.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

type Tls = StreamOwned<ClientConnection, Timed>;

/// Every bound and timeout of a fetch.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// The status line and headers of one answer, and a chunked body's chunk-size lines and
    /// trailers.
    pub max_header: usize,
    /// Redirects followed for one request.
    pub max_redirects: u32,
    /// The largest body taken.
    pub max_len: u64,
    /// Attempts to connect again after a failure, before giving up; the count starts over
    /// once one connection has delivered [`FetchLimits::progress`] bytes.
    pub retries: u32,
    /// Body bytes one connection must deliver before the retry count starts over, so a server
    /// that sends a little and then stalls, again and again, is given up on.
    pub progress: u64,
    /// The wait before the first retry; it doubles with each retry, up to four times this.
    pub backoff: Duration,
    pub connect_timeout: Duration,
    /// How long the TLS handshake and an answer's status line and headers may take in all,
    /// however the server spaces its bytes; then the connection counts as broken.
    pub head_timeout: Duration,
    /// How long a read may wait for the server; then the connection counts as broken.
    pub read_timeout: Duration,
    /// The slowest body taken, in bytes per second, averaged over each `read_timeout`; a
    /// connection that trickles slower counts as broken.
    pub min_speed: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_header: 16 * 1024,
            max_redirects: 5,
            max_len: 8 * 1024 * 1024 * 1024,
            retries: 5,
            progress: 1024 * 1024,
            backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            head_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(30),
            min_speed: 1024,
        }
    }
}

/// A failed fetch: one line naming the URL; the cause, if any, is the [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the bundle URL {url:?} cannot be fetched: {why}")]
    Url { url: String, why: &'static str },
    #[error("{url} redirected to {location}, which cannot be fetched: {why}")]
    BadRedirect {
        url: String,
        /// Quoted, and shortened when long.
        location: String,
        why: &'static str,
    },
    #[error("{url} redirected more than {max} times")]
    Redirects { url: String, max: u32 },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url} presented a certificate that this device does not trust (checked against its trusted roots)")]
    Certificate {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the TLS handshake with {url} failed")]
    Tls {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the connection to {url} broke after {received} bytes of the bundle")]
    Broke {
        url: String,
        received: u64,
        #[source]
        source: io::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: Status },
    #[error("{url} sent a malformed answer: {why}")]
    Malformed { url: String, why: String },
    #[error("{url} answered without a Content-Length or chunked encoding, so a cut-off download could not be told from a whole one")]
    NoFraming { url: String },
    #[error("{url} is {len} bytes long; the device takes at most {max}")]
    TooLong { url: String, len: u64, max: u64 },
    #[error("{url} answered {status} to a request for the bytes from {from} on, so the download cannot resume: {why}")]
    CannotResume {
        url: String,
        status: Status,
        from: u64,
        why: &'static str,
    },
    #[error("the download from {url} broke after {received} bytes and cannot resume: the answer had no Content-Length")]
    NoLength {
        url: String,
        received: u64,
        #[source]
        source: io::Error,
    },
    #[error("gave up on {url} after {retries} retries, {received} bytes in")]
    GaveUp {
        url: String,
        retries: u32,
        received: u64,
        #[source]
        source: Box<FetchError>,
    },
    #[error("the download from {url} has failed already")]
    Failed { url: String },
}

impl FetchError {
    /// Worth another try: the network, or a server that is busy for now.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Connect { .. } | FetchError::Broke { .. } => true,
            FetchError::Status { status, .. } => {
                matches!(status.code, 408 | 429 | 500 | 502 | 503 | 504)
            }
            _ => false,
        }
    }
}

impl From<FetchError> for io::Error {
    fn from(e: FetchError) -> io::Error {
        let kind = match e {
            FetchError::Url { .. } => io::ErrorKind::InvalidInput,
            FetchError::Malformed { .. } | FetchError::NoFraming { .. } => {
                io::ErrorKind::InvalidData
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// An HTTP status code and the server's reason phrase ("404 Not Found").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub reason: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.reason)
        }
    }
}

// The daemon hands a download to a thread of its own.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Fetch>();
};

/// The body of an `https://` URL, read as it downloads; see the module documentation.
pub struct Fetch {
    url: Url,
    config: Arc<ClientConfig>,
    /// Extra request headers (a registry's Accept and Authorization), sent only to the first
    /// URL's host: a redirect elsewhere (a storage service) does not get them.
    headers: Vec<(String, String)>,
    limits: FetchLimits,
    first: FirstAnswer,
    received: u64,
    body: Option<Body>,
    /// Failed attempts in a row.
    failures: u32,
    /// Body bytes the current connection has delivered.
    delivered: u64,
    /// The time spent waiting for the current connection's body, and the bytes that came in
    /// it, since the last speed check.
    window: (Duration, u64),
    state: State,
}

/// What the first answer said about the file; a resumed answer must agree with it.
#[derive(Debug, Default)]
struct FirstAnswer {
    /// Its Content-Length.
    len: Option<u64>,
    /// Its strong ETag and its Last-Modified.
    etag: Option<String>,
    last_modified: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Done,
    Failed,
}

impl fmt::Debug for Fetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetch")
            .field("url", &self.url.to_string())
            .field("len", &self.first.len)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Fetch {
    /// Connects and reads the answer's headers (following redirects, retrying what may pass),
    /// so a missing file or an untrusted server fails here. Server certificates are checked
    /// against `roots`.
    pub fn new(url: &str, roots: RootCertStore) -> Result<Fetch, FetchError> {
        Fetch::with_limits(url, roots, FetchLimits::default())
    }

    /// [`Fetch::new`] with other bounds.
    pub fn with_limits(
        url: &str,
        roots: RootCertStore,
        limits: FetchLimits,
    ) -> Result<Fetch, FetchError> {
        let config = client_config(roots, None).map_err(|why| FetchError::Malformed {
            url: url.to_string(),
            why,
        })?;
        Fetch::with_config(url, config, Vec::new(), limits)
    }

    /// [`Fetch::with_limits`] with the caller's TLS config ([`client_config`]) and extra
    /// request headers, sent to the first URL's host only.
    pub fn with_config(
        url: &str,
        config: Arc<ClientConfig>,
        headers: Vec<(String, String)>,
        limits: FetchLimits,
    ) -> Result<Fetch, FetchError> {
        let parsed = Url::parse(url).map_err(|why| FetchError::Url {
            url: url.to_string(),
            why,
        })?;
        let mut fetch = Fetch {
            url: parsed,
            config,
            headers,
            limits,
            first: FirstAnswer::default(),
            received: 0,
            body: None,
            failures: 0,
            delivered: 0,
            window: (Duration::ZERO, 0),
            state: State::Reading,
        };
        fetch.body = Some(fetch.open_retrying(None)?);
        Ok(fetch)
    }

    /// The body's length, from the first answer's Content-Length (none when chunked).
    #[allow(
        clippy::len_without_is_empty,
        reason = "the announced length of a download, not a collection's"
    )]
    pub fn len(&self) -> Option<u64> {
        self.first.len
    }

    /// Body bytes read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Opens the body at `self.received`, retrying while the failures are transient: the
    /// first with `failed` when it is given.
    fn open_retrying(&mut self, mut failed: Option<FetchError>) -> Result<Body, FetchError> {
        loop {
            if let Some(e) = failed.take() {
                if !e.is_transient() {
                    return Err(e);
                }
                if self.failures >= self.limits.retries {
                    return Err(FetchError::GaveUp {
                        url: self.url.to_string(),
                        retries: self.failures,
                        received: self.received,
                        source: Box::new(e),
                    });
                }
                let factor = 1u32 << self.failures.min(2);
                std::thread::sleep(self.limits.backoff * factor);
                self.failures += 1;
            }
            match self.open() {
                Ok(body) => {
                    self.delivered = 0;
                    self.window = (Duration::ZERO, 0);
                    return Ok(body);
                }
                Err(e) => failed = Some(e),
            }
        }
    }

    /// One GET (following redirects) for the body from `self.received` on, checked against
    /// the first answer when it resumes.
    fn open(&mut self) -> Result<Body, FetchError> {
        let from = self.received;
        let (url, head, tls) = self.get(from)?;
        let (framing, limit) = self.first.check(&url, from, &head, self.limits.max_len)?;
        Ok(Body {
            stream: tls,
            framing,
            limit,
            url,
        })
    }

    /// Sends the request and reads the answer's head, following redirects.
    fn get(&self, from: u64) -> Result<(Url, Head, Tls), FetchError> {
        let mut url = self.url.clone();
        let mut redirects = 0;
        loop {
            let mut tls = self.connect(&url)?;
            let broke = |source| FetchError::Broke {
                url: url.to_string(),
                received: from,
                source,
            };
            let mut request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cairn\r\nAccept: */*\r\n\
                 Accept-Encoding: identity\r\nConnection: close\r\n",
                url.target,
                url.authority()
            );
            if url.same_origin(&self.url) {
                for (name, value) in &self.headers {
                    request.push_str(&format!("{name}: {value}\r\n"));
                }
            }
            if from > 0 {
                request.push_str(&format!("Range: bytes={from}-\r\n"));
                let first = &self.first;
                if let Some(validator) = first.etag.as_ref().or(first.last_modified.as_ref()) {
                    request.push_str(&format!("If-Range: {validator}\r\n"));
                }
            }
            request.push_str("\r\n");
            tls.write_all(request.as_bytes())
                .and_then(|()| tls.flush())
                .map_err(broke)?;
            let head = match Head::read(&mut tls, self.limits.max_header) {
                // The body has its own bounds: the read timeout and the slowest speed.
                Ok(head) => {
                    tls.sock.end_deadline().map_err(broke)?;
                    head
                }
                Err(Broken::Dropped(e)) => return Err(broke(e)),
                Err(Broken::Malformed(why)) => {
                    return Err(FetchError::Malformed {
                        url: url.to_string(),
                        why,
                    })
                }
            };
            if !matches!(head.status.code, 301 | 302 | 303 | 307 | 308) {
                return Ok((url, head, tls));
            }
            let Some(location) = head.get("location") else {
                return Err(FetchError::Malformed {
                    url: url.to_string(),
                    why: format!("a {} answer without Location", head.status.code),
                });
            };
            if redirects == self.limits.max_redirects {
                return Err(FetchError::Redirects {
                    url: self.url.to_string(),
                    max: self.limits.max_redirects,
                });
            }
            redirects += 1;
            url = url.join(location).map_err(|why| FetchError::BadRedirect {
                url: url.to_string(),
                location: quote(location),
                why,
            })?;
        }
    }

    fn connect(&self, url: &Url) -> Result<Tls, FetchError> {
        connect(url, &self.config, &self.limits)
    }
}

/// A TCP connection and a finished TLS handshake, so a certificate the device does not trust is
/// told apart from a network that failed.
fn connect(url: &Url, config: &Arc<ClientConfig>, limits: &FetchLimits) -> Result<Tls, FetchError> {
    {
        let failed = |source| FetchError::Connect {
            url: url.to_string(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        let mut tcp = None;
        for addr in (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(failed)?
        {
            match TcpStream::connect_timeout(&addr, limits.connect_timeout) {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| failed(last))?;
        tcp.set_read_timeout(Some(limits.read_timeout))
            .and_then(|()| tcp.set_write_timeout(Some(limits.read_timeout)))
            .map_err(failed)?;
        let tcp = Timed {
            tcp,
            read_timeout: limits.read_timeout,
            head_timeout: limits.head_timeout,
            deadline: Some(Instant::now() + limits.head_timeout),
        };
        let name = ServerName::try_from(url.host.clone()).map_err(|_| FetchError::Url {
            url: url.to_string(),
            why: "the host is not a valid name",
        })?;
        let tls_failed = |source| FetchError::Tls {
            url: url.to_string(),
            source,
        };
        let connection = ClientConnection::new(config.clone(), name).map_err(tls_failed)?;
        let mut tls = StreamOwned::new(connection, tcp);
        while tls.conn.is_handshaking() {
            match tls.conn.complete_io(&mut tls.sock) {
                Ok((0, 0)) => {
                    return Err(failed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    )))
                }
                Ok(_) => {}
                Err(e) => {
                    let rustls_error = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
                    return Err(match rustls_error {
                        Some(source @ rustls::Error::InvalidCertificate(_)) => {
                            FetchError::Certificate {
                                url: url.to_string(),
                                source: source.clone(),
                            }
                        }
                        Some(source) => tls_failed(source.clone()),
                        None => failed(e),
                    });
                }
            }
        }
        Ok(tls)
    }
}

/// A whole answer of any status: what [`get`] and [`request`] return.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: Status,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Where the answer came from, after redirects.
    pub url: String,
}

impl Answer {
    /// The first header of that name (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One GET of a small resource on a service the device runs itself (k3s's API): the caller
/// brings the TLS config (its roots and, where the service asks for one, a client
/// certificate: [`client_config`]), any status is returned with its body, read whole up to
/// `limits.max_len`. No redirects are followed and nothing is retried; the head and body
/// bounds and timeouts are [`Fetch`]'s.
pub fn get(
    url: &str,
    config: &Arc<ClientConfig>,
    limits: &FetchLimits,
) -> Result<Answer, FetchError> {
    let accept = [("Accept".to_string(), "application/json, */*".to_string())];
    request("GET", url, &accept, None, false, config, limits)
}

/// One request, its answer read whole (up to `limits.max_len`) whatever its status: what an
/// OCI registry client needs beside [`Fetch`]. `headers` go to the first URL's host only.
/// `body` is sent with its length as Content-Length; a reader that ends early fails the
/// request. Redirects are followed (to `https://` only) when `follow` is set and there is no
/// body. Nothing is retried.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    mut body: Option<(&mut dyn Read, u64)>,
    follow: bool,
    config: &Arc<ClientConfig>,
    limits: &FetchLimits,
) -> Result<Answer, FetchError> {
    let first = Url::parse(url).map_err(|why| FetchError::Url {
        url: url.to_string(),
        why,
    })?;
    let mut url = first.clone();
    let mut redirects = 0;
    loop {
        let mut tls = connect(&url, config, limits)?;
        let broke = |source| FetchError::Broke {
            url: url.to_string(),
            received: 0,
            source,
        };
        let malformed = |why: String| FetchError::Malformed {
            url: url.to_string(),
            why,
        };
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cairn\r\n\
             Accept-Encoding: identity\r\nConnection: close\r\n",
            url.target,
            url.authority()
        );
        if url.same_origin(&first) {
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        match &body {
            Some((_, len)) => head.push_str(&format!("Content-Length: {len}\r\n")),
            None if matches!(method, "POST" | "PUT" | "PATCH") => {
                head.push_str("Content-Length: 0\r\n")
            }
            None => {}
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).map_err(broke)?;
        if let Some((reader, len)) = body.as_mut() {
            let sent = io::copy(&mut reader.take(*len), &mut tls).map_err(broke)?;
            if sent != *len {
                return Err(broke(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the request body ended after {sent} of its {len} bytes"),
                )));
            }
        }
        tls.flush().map_err(broke)?;
        let answer = match Head::read(&mut tls, limits.max_header) {
            Ok(head) => head,
            Err(Broken::Dropped(e)) => return Err(broke(e)),
            Err(Broken::Malformed(why)) => return Err(malformed(why)),
        };
        tls.sock.end_deadline().map_err(broke)?;
        let redirect = matches!(answer.status.code, 301 | 302 | 303 | 307 | 308);
        if follow && body.is_none() && redirect {
            let Some(location) = answer.get("location") else {
                return Err(malformed(format!(
                    "a {} answer without Location",
                    answer.status.code
                )));
            };
            if redirects == limits.max_redirects {
                return Err(FetchError::Redirects {
                    url: first.to_string(),
                    max: limits.max_redirects,
                });
            }
            redirects += 1;
            url = url.join(location).map_err(|why| FetchError::BadRedirect {
                url: url.to_string(),
                location: quote(location),
                why,
            })?;
            continue;
        }
        let empty = method == "HEAD" || matches!(answer.status.code, 204 | 304);
        let framing = match empty {
            true => Framing::Length(0),
            false => answer.framing_of(&url)?,
        };
        if let Framing::Length(len) = framing {
            if len > limits.max_len {
                return Err(FetchError::TooLong {
                    url: url.to_string(),
                    len,
                    max: limits.max_len,
                });
            }
        }
        let mut reader = Body {
            stream: tls,
            framing,
            limit: None,
            url: url.clone(),
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf, limits.max_header) {
                Ok(0) => break,
                Ok(n) => {
                    if (out.len() + n) as u64 > limits.max_len {
                        return Err(FetchError::TooLong {
                            url: url.to_string(),
                            len: (out.len() + n) as u64,
                            max: limits.max_len,
                        });
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                Err(Broken::Dropped(e)) => {
                    return Err(FetchError::Broke {
                        url: url.to_string(),
                        received: out.len() as u64,
                        source: e,
                    })
                }
                Err(Broken::Malformed(why)) => return Err(malformed(why)),
            }
        }
        return Ok(Answer {
            status: answer.status,
            headers: answer.headers,
            body: out,
            url: url.to_string(),
        });
    }
}

/// A TLS 1.3 client config for [`get`]: servers checked against `roots`, and with `identity`
/// (a certificate chain and its key, PEM) a client certificate shown to servers that ask.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
            if chain.is_empty() {
                return Err("no PEM CERTIFICATE block in the client certificate".into());
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("the client key is not a PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl FirstAnswer {
    /// Checks an answer to a request for the bytes from `from` on: the first (`from` 0) is
    /// remembered, a later one must continue the same file. Returns how its body ends and the
    /// most body bytes it may carry.
    fn check(
        &mut self,
        url: &Url,
        from: u64,
        head: &Head,
        max_len: u64,
    ) -> Result<(Framing, Option<u64>), FetchError> {
        let cannot_resume = |why| FetchError::CannotResume {
            url: url.to_string(),
            status: head.status.clone(),
            from,
            why,
        };
        match head.status.code {
            200 if from == 0 => {}
            200 => {
                return Err(cannot_resume(
                    "the server ignores ranges, or the file has changed",
                ))
            }
            206 if from > 0 => {}
            _ => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status: head.status.clone(),
                })
            }
        }
        let malformed = |why: String| FetchError::Malformed {
            url: url.to_string(),
            why,
        };
        let framing = head.framing_of(&url)?;
        let length = match framing {
            Framing::Length(n) => Some(n),
            Framing::Chunked { .. } => None,
        };
        if from == 0 {
            if let Some(len) = length.filter(|&n| n > max_len) {
                return Err(FetchError::TooLong {
                    url: url.to_string(),
                    len,
                    max: max_len,
                });
            }
            *self = FirstAnswer {
                len: length,
                etag: head
                    .get("etag")
                    .filter(|t| is_strong_etag(t))
                    .map(Into::into),
                last_modified: head.get("last-modified").map(Into::into),
            };
            return Ok((framing, length));
        }
        let range = head
            .get("content-range")
            .ok_or_else(|| malformed("a 206 answer without Content-Range".into()))?;
        let (start, end, total) = content_range(range).ok_or_else(|| {
            malformed(format!(
                "the Content-Range {} is not bytes N-M/T",
                quote(range)
            ))
        })?;
        if start != from || Some(total) != self.len || end >= total {
            return Err(cannot_resume("its Content-Range does not match the file"));
        }
        let size = end - start + 1;
        if length.is_some_and(|n| n != size) {
            return Err(malformed(format!(
                "the Content-Length does not match the Content-Range {}",
                quote(range)
            )));
        }
        let same = |theirs: Option<&str>, ours: &Option<String>| match (theirs, ours) {
            (Some(theirs), Some(ours)) => theirs == ours,
            _ => true,
        };
        if !same(head.get("etag"), &self.etag)
            || !same(head.get("last-modified"), &self.last_modified)
        {
            return Err(cannot_resume("the file has changed"));
        }
        // A chunked body is held to its Content-Range too.
        Ok((framing, Some(size)))
    }
}

impl Read for Fetch {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Failed => {
                    return Err(FetchError::Failed {
                        url: self.url.to_string(),
                    }
                    .into())
                }
                State::Reading => {}
            }
            let slow = self.body.is_some() && self.too_slow();
            let started = Instant::now();
            let read = match self.body.as_mut() {
                Some(_) if slow => Err(Broken::Dropped(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the server sent fewer than {} bytes a second",
                        self.limits.min_speed
                    ),
                ))),
                Some(body) => body.read(buf, self.limits.max_header),
                None => Err(Broken::Dropped(io::Error::other("not connected"))),
            };
            self.window.0 += started.elapsed();
            let cause = match read {
                Ok(0) if self.first.len.is_none_or(|len| self.received == len) => {
                    self.state = State::Done;
                    self.body = None;
                    return Ok(0);
                }
                // A 206 may carry less than the rest: ask for what is missing.
                Ok(0) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the answer ended before the whole file",
                ),
                Ok(n) => {
                    // Bytes past the limit are never handed over.
                    let n64 = n as u64;
                    if self.received + n64 > self.limits.max_len {
                        return Err(self.fail(FetchError::TooLong {
                            url: self.url.to_string(),
                            len: self.received + n64,
                            max: self.limits.max_len,
                        }));
                    }
                    self.received += n64;
                    self.delivered += n64;
                    self.window.1 += n64;
                    if self.delivered >= self.limits.progress {
                        self.failures = 0;
                    }
                    return Ok(n);
                }
                Err(Broken::Malformed(why)) => {
                    let url = self.body.as_ref().map_or(&self.url, |b| &b.url).to_string();
                    return Err(self.fail(FetchError::Malformed { url, why }));
                }
                Err(Broken::Dropped(e)) => e,
            };
            self.body = None;
            if self.received > 0 && self.first.len.is_none() {
                return Err(self.fail(FetchError::NoLength {
                    url: self.url.to_string(),
                    received: self.received,
                    source: cause,
                }));
            }
            let broke = FetchError::Broke {
                url: self.url.to_string(),
                received: self.received,
                source: cause,
            };
            match self.open_retrying(Some(broke)) {
                Ok(body) => self.body = Some(body),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }
}

impl Fetch {
    /// Whether the body came slower than [`FetchLimits::min_speed`] over the last
    /// `read_timeout` spent waiting for it; each check starts a new window.
    fn too_slow(&mut self) -> bool {
        let (waited, bytes) = self.window;
        if waited < self.limits.read_timeout {
            return false;
        }
        self.window = (Duration::ZERO, 0);
        (bytes as f64) < self.limits.min_speed as f64 * waited.as_secs_f64()
    }

    fn fail(&mut self, e: FetchError) -> io::Error {
        self.state = State::Failed;
        self.body = None;
        e.into()
    }
}

/// The TCP stream under TLS: until the answer's head is read, every read also waits for the
/// head's deadline, so a server that sends a byte just before each read timeout still ends.
struct Timed {
    tcp: TcpStream,
    read_timeout: Duration,
    head_timeout: Duration,
    deadline: Option<Instant>,
}

impl Timed {
    /// The head has arrived: from now on only the read timeout applies.
    fn end_deadline(&mut self) -> io::Result<()> {
        self.deadline = None;
        self.tcp.set_read_timeout(Some(self.read_timeout))
    }

    fn late(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the TLS handshake and the answer's headers took longer than {} s",
                self.head_timeout.as_secs_f64()
            ),
        )
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.late());
            }
            self.tcp
                .set_read_timeout(Some(left.min(self.read_timeout)))?;
        }
        match self.tcp.read(buf) {
            // The socket says "would block" when its timeout passes.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(match self.deadline {
                    Some(deadline) if Instant::now() >= deadline => self.late(),
                    _ => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server sent nothing for {} s",
                            self.read_timeout.as_secs_f64()
                        ),
                    ),
                })
            }
            other => other,
        }
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The URL parts a request needs: `https://host[:port]/path[?query]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Url {
    /// A name or an IP address (IPv6 without its brackets).
    host: String,
    port: u16,
    /// The path and query, starting with `/`.
    target: String,
}

impl Url {
    fn parse(text: &str) -> Result<Url, &'static str> {
        let Some(rest) = text
            .get(..8)
            .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
            .map(|_| &text[8..])
        else {
            return Err(if text.contains("://") {
                "only https:// URLs are fetched"
            } else {
                "it is not an https:// URL"
            });
        };
        check_chars(rest)?;
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let target = match target.starts_with('?') {
            true => format!("/{target}"),
            false => target.to_string(),
        };
        if authority.contains('@') {
            return Err("user names and passwords in the URL are not supported");
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed.split_once(']').ok_or("the IPv6 host has no ]")?;
                match after {
                    "" => (host, None),
                    _ => (
                        host,
                        Some(after.strip_prefix(':').ok_or("junk after the host")?),
                    ),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => 443,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or("the port is not a number from 1 to 65535")?,
        };
        if host.is_empty() {
            return Err("it has no host");
        }
        ServerName::try_from(host).map_err(|_| "the host is not a valid name")?;
        Ok(Url {
            host: host.to_string(),
            port,
            target,
        })
    }

    /// Where a redirect's Location leads from here.
    fn join(&self, location: &str) -> Result<Url, &'static str> {
        if location.starts_with("//") {
            return Url::parse(&format!("https:{location}"));
        }
        if location.contains("://") {
            return Url::parse(location);
        }
        check_chars(location)?;
        let location = location.split('#').next().unwrap_or_default();
        let target = if location.starts_with('/') {
            location.to_string()
        } else {
            let path = self.target.split('?').next().unwrap_or_default();
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Ok(Url {
            target: remove_dot_segments(&target),
            ..self.clone()
        })
    }

    /// The same host and port: where a request's credentials may go.
    fn same_origin(&self, other: &Url) -> bool {
        self.host.eq_ignore_ascii_case(&other.host) && self.port == other.port
    }

    /// The Host header's value.
    fn authority(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match self.port {
            443 => host,
            port => format!("{host}:{port}"),
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.target)
    }
}

/// Resolves `.` and `..` in a target's path (RFC 3986, 5.2.4); the query stays as it is.
fn remove_dot_segments(target: &str) -> String {
    let (path, query) = target.split_at(target.find('?').unwrap_or(target.len()));
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            segment => out.push(segment),
        }
    }
    format!("/{}{query}", out.join("/"))
}

/// A URL goes into the request line as it is, so it may hold only visible ASCII.
fn check_chars(text: &str) -> Result<(), &'static str> {
    match text.bytes().all(|b| b.is_ascii_graphic()) {
        true => Ok(()),
        false => Err("it holds spaces, control characters or non-ASCII (percent-encode them)"),
    }
}

/// Text from the server for an error message: quoted, with control characters escaped, and
/// cut after 64 characters of the escaped text so that the message stays one short line.
fn quote(text: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::from("\"");
    let mut shown = 0;
    for c in text.chars() {
        let mut buf = [0; 4];
        let escaped: String = c.encode_utf8(&mut buf).escape_debug().collect();
        shown += escaped.chars().count();
        if shown > MAX {
            out.push_str("\"…");
            return out;
        }
        out.push_str(&escaped);
    }
    out.push('"');
    out
}

/// A strong ETag (`"…"`, not `W/"…"`): only those may go into If-Range.
fn is_strong_etag(tag: &str) -> bool {
    tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"')
}

/// `bytes START-END/TOTAL`.
fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (unit, rest) = value.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, total) = rest.trim().split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let number = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end, total) = (number(start)?, number(end)?, number(total)?);
    (start <= end).then_some((start, end, total))
}

/// Why a read from the server stopped: the connection (worth resuming), or what it sent.
enum Broken {
    Dropped(io::Error),
    Malformed(String),
}

/// An answer's status line and headers.
#[derive(Debug)]
struct Head {
    status: Status,
    /// Names in lower case.
    headers: Vec<(String, String)>,
}

impl Head {
    /// Reads a head, skipping interim (1xx) answers; all of it within `max` bytes.
    fn read(tls: &mut impl BufRead, max: usize) -> Result<Head, Broken> {
        let mut budget = max;
        loop {
            let line = read_line(tls, &mut budget, max)?;
            let status = status_line(&line)
                .ok_or_else(|| Broken::Malformed(format!("the status line {}", quote(&line))))?;
            let mut headers = Vec::new();
            loop {
                let line = read_line(tls, &mut budget, max)?;
                if line.is_empty() {
                    break;
                }
                let (name, value) = line
                    .split_once(':')
                    .filter(|(name, _)| !name.is_empty() && !name.contains([' ', '\t']))
                    .ok_or_else(|| {
                        Broken::Malformed(format!("the header line {}", quote(&line)))
                    })?;
                headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
            match status.code {
                101 => return Err(Broken::Malformed("it switched protocols".into())),
                100..=199 => continue,
                _ => return Ok(Head { status, headers }),
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// How the body ends: chunked, or after Content-Length bytes; `None` when neither says.
    /// [`Head::framing`], with a malformed or missing one as the fetch's error for `url`.
    fn framing_of(&self, url: &impl std::fmt::Display) -> Result<Framing, FetchError> {
        self.framing()
            .map_err(|why| FetchError::Malformed {
                url: url.to_string(),
                why,
            })?
            .ok_or_else(|| FetchError::NoFraming {
                url: url.to_string(),
            })
    }

    fn framing(&self) -> Result<Option<Framing>, String> {
        let codings: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if let Some(last) = codings.last() {
            if codings.len() == 1 && last.eq_ignore_ascii_case("chunked") {
                return Ok(Some(Framing::Chunked {
                    left: 0,
                    first: true,
                    ended: false,
                }));
            }
            return Err(format!(
                "the Transfer-Encoding {} (only chunked is understood)",
                quote(&codings.join(", "))
            ));
        }
        let mut length = None;
        for (_, value) in self.headers.iter().filter(|(n, _)| n == "content-length") {
            for value in value.split(',').map(str::trim) {
                let n = value
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| value.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| format!("the Content-Length {}", quote(value)))?;
                if length.is_some_and(|l| l != n) {
                    return Err("Content-Length headers that disagree".into());
                }
                length = Some(n);
            }
        }
        Ok(length.map(Framing::Length))
    }
}

/// `HTTP/1.x CODE [REASON]`; the reason keeps printable ASCII only, and at most 64 characters.
fn status_line(line: &str) -> Option<Status> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let reason: String = reason
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect();
    Some(Status {
        code: code.parse().ok()?,
        reason,
    })
}

/// Reads a line ending in LF (or CR LF), without its end. `budget` is what the lines of this
/// head (or chunk) may still take, of `max` in all.
fn read_line(tls: &mut impl BufRead, budget: &mut usize, max: usize) -> Result<String, Broken> {
    let mut line = Vec::new();
    loop {
        let available = tls.fill_buf().map_err(Broken::Dropped)?;
        if available.is_empty() {
            return Err(Broken::Dropped(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        let (take, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if take > *budget {
            return Err(Broken::Malformed(format!(
                "its headers are longer than {max} bytes"
            )));
        }
        line.extend_from_slice(&available[..take]);
        *budget -= take;
        tls.consume(take);
        if end {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// A chunk-size line or a trailer, within what `budget` leaves of `max_line`.
fn read_chunk_line(
    stream: &mut impl BufRead,
    budget: &mut usize,
    max_line: usize,
) -> Result<String, Broken> {
    read_line(stream, budget, max_line).map_err(|e| match e {
        Broken::Malformed(_) => Broken::Malformed(format!(
            "a chunk-size line or its trailers are longer than {max_line} bytes"
        )),
        dropped => dropped,
    })
}

/// How a body ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// At the chunk of size 0; `left` is what remains of the current chunk.
    Chunked { left: u64, first: bool, ended: bool },
}

/// An answer's body, on its own connection.
struct Body<S = Tls> {
    stream: S,
    framing: Framing,
    /// The most body bytes the answer may still carry: what its Content-Length or its
    /// Content-Range announced.
    limit: Option<u64>,
    /// Where the answer came from (after redirects).
    url: Url,
}

impl<S: BufRead> Body<S> {
    /// Reads body bytes; `Ok(0)` at the end the framing announces, and only there.
    fn read(&mut self, buf: &mut [u8], max_line: usize) -> Result<usize, Broken> {
        loop {
            let left = match &mut self.framing {
                Framing::Length(0) => return Ok(0),
                Framing::Length(left) => left,
                Framing::Chunked { ended: true, .. } => return Ok(0),
                Framing::Chunked { left, first, ended } if *left == 0 => {
                    let mut budget = max_line;
                    if !*first
                        && !read_chunk_line(&mut self.stream, &mut budget, max_line)?.is_empty()
                    {
                        return Err(Broken::Malformed("a chunk longer than its size".into()));
                    }
                    *first = false;
                    let line = read_chunk_line(&mut self.stream, &mut budget, max_line)?;
                    *left = chunk_size(&line).ok_or_else(|| {
                        Broken::Malformed(format!("the chunk-size line {}", quote(&line)))
                    })?;
                    if *left == 0 {
                        // Trailers, to the empty line that ends the body.
                        while !read_chunk_line(&mut self.stream, &mut budget, max_line)?.is_empty()
                        {
                        }
                        *ended = true;
                    }
                    continue;
                }
                Framing::Chunked { left, .. } => left,
            };
            let allowed = (*left).min(self.limit.unwrap_or(u64::MAX));
            if allowed == 0 {
                return Err(Broken::Malformed(
                    "a chunked body longer than its Content-Range".into(),
                ));
            }
            let want = buf
                .len()
                .min(usize::try_from(allowed).unwrap_or(usize::MAX));
            let n = self
                .stream
                .read(&mut buf[..want])
                .map_err(Broken::Dropped)?;
            if n == 0 {
                return Err(Broken::Dropped(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
            *left -= n as u64;
            if let Some(limit) = &mut self.limit {
                *limit -= n as u64;
            }
            return Ok(n);
        }
    }
}

/// The hexadecimal size at the start of a chunk-size line (extensions after `;` ignored).
fn chunk_size(line: &str) -> Option<u64> {
    let size = line.split(';').next()?.trim();
    if size.is_empty() || size.len() > 15 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// The roots for [`Fetch`] from PEM text holding one or more CA certificates; the error is one
/// line naming what is wrong.
pub fn roots_from_pem(pem: &str) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {}: {e}", i + 1))?;
    }
    Ok(roots)
}

/// The answer reader on bytes in memory, for the fuzz targets in `fuzz/src/api.rs`; not part of the
/// API. It runs the same head, framing, resume and body code as [`Fetch`], without TLS.
#[doc(hidden)]
pub mod fuzzing {
    use super::{Body, Broken, FetchError, FetchLimits, FirstAnswer, Head, Url};

    /// What [`answers`] made of the server's bytes.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Outcome {
        /// The body bytes handed to the reader, in order: all that a sink would have written.
        pub body: Vec<u8>,
        /// The first answer's Content-Length.
        pub len: Option<u64>,
        /// Where the second answer was asked to start, when there was one.
        pub resumed_at: Option<u64>,
        /// The error the fetch ended with, as the daemon's log would show it.
        pub error: Option<String>,
    }

    /// Reads `first` as the answer to `GET` for a whole file and hands its body over in pieces
    /// of `piece` bytes. When the first answer announced a length, `resume` is the answer to
    /// the request a broken connection leads to: for the bytes from `cut` on (at most what
    /// had arrived), the first answer's body being cut there.
    pub fn answers(
        first: &[u8],
        resume: Option<(&[u8], u64)>,
        piece: usize,
        limits: &FetchLimits,
    ) -> Outcome {
        let url = Url::parse("https://fuzz.invalid/bundle").expect("a valid URL");
        let mut known = FirstAnswer::default();
        let mut out = Outcome {
            body: Vec::new(),
            len: None,
            resumed_at: None,
            error: None,
        };
        let mut piece = vec![0; piece.clamp(1, 1 << 16)];
        // One answer, as the fetcher reads it: its head checked against what is known, then its
        // body appended to `body`; whether the body ended.
        let mut answer = |bytes: &[u8],
                          from: u64,
                          known: &mut FirstAnswer,
                          body: &mut Vec<u8>|
         -> Result<bool, FetchError> {
            let (head, rest) = read_head(&url, bytes, limits)?;
            let (framing, limit) = known.check(&url, from, &head, limits.max_len)?;
            read_body(&url, rest, framing, limit, &mut piece, body, limits)
        };
        let result = (|| {
            let ended = answer(first, 0, &mut known, &mut out.body)?;
            out.len = known.len;
            let Some((second, cut)) = resume.filter(|_| known.len.is_some()) else {
                return Ok(());
            };
            let from = cut.min(out.body.len() as u64);
            if from == 0 || (ended && known.len == Some(from)) {
                return Ok(());
            }
            out.body.truncate(from as usize);
            out.resumed_at = Some(from);
            answer(second, from, &mut known, &mut out.body)?;
            Ok(())
        })();
        out.error = result.err().map(|e: FetchError| e.to_string());
        out
    }

    fn read_head<'a>(
        url: &Url,
        mut bytes: &'a [u8],
        limits: &FetchLimits,
    ) -> Result<(Head, &'a [u8]), FetchError> {
        match Head::read(&mut bytes, limits.max_header) {
            Ok(head) => Ok((head, bytes)),
            Err(e) => Err(broken(url, 0, e)),
        }
    }

    /// Reads a body to its end; `Ok(false)` when the bytes ran out first, as when a connection
    /// drops.
    fn read_body(
        url: &Url,
        stream: &[u8],
        framing: super::Framing,
        limit: Option<u64>,
        piece: &mut [u8],
        body: &mut Vec<u8>,
        limits: &FetchLimits,
    ) -> Result<bool, FetchError> {
        let mut answer = Body {
            stream,
            framing,
            limit,
            url: url.clone(),
        };
        loop {
            match answer.read(piece, limits.max_header) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    let received = body.len() as u64 + n as u64;
                    if received > limits.max_len {
                        return Err(FetchError::TooLong {
                            url: url.to_string(),
                            len: received,
                            max: limits.max_len,
                        });
                    }
                    body.extend_from_slice(&piece[..n]);
                }
                Err(Broken::Dropped(_)) => return Ok(false),
                Err(e) => return Err(broken(url, body.len() as u64, e)),
            }
        }
    }

    fn broken(url: &Url, received: u64, e: Broken) -> FetchError {
        match e {
            Broken::Dropped(source) => FetchError::Broke {
                url: url.to_string(),
                received,
                source,
            },
            Broken::Malformed(why) => FetchError::Malformed {
                url: url.to_string(),
                why,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_with_a_host() {
        let url = Url::parse("https://updates.example.com/b/1.5.0.cairn?sig=x#frag").unwrap();
        assert_eq!(url.host, "updates.example.com");
        assert_eq!(url.port, 443);
        assert_eq!(url.target, "/b/1.5.0.cairn?sig=x");
        assert_eq!(
            url.to_string(),
            "https://updates.example.com/b/1.5.0.cairn?sig=x"
        );

        let url = Url::parse("HTTPS://[::1]:8443").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 8443));
        assert_eq!(url.target, "/");
        assert_eq!(url.authority(), "[::1]:8443");

        let url = Url::parse("https://10.0.0.7:9000?x=1").unwrap();
        assert_eq!(url.to_string(), "https://10.0.0.7:9000/?x=1");

        for (bad, why) in [
            ("http://example.com/b", "only https://"),
            ("ftp://example.com/b", "only https://"),
            ("example.com/b", "not an https:// URL"),
            ("https:///b", "no host"),
            ("https://example.com:0/b", "port"),
            ("https://example.com:https/b", "port"),
            ("https://user:pw@example.com/b", "passwords"),
            ("https://example.com/a b", "spaces"),
            ("https://example.com/\r\nX: y", "control"),
            ("https://exa_mple..com/b", "valid name"),
        ] {
            let e = Url::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn redirects_resolve_against_the_current_url() {
        let base = Url::parse("https://a.example:444/dir/file?q=1").unwrap();
        let join = |l| base.join(l).unwrap().to_string();
        assert_eq!(join("/other"), "https://a.example:444/other");
        assert_eq!(join("next.cairn"), "https://a.example:444/dir/next.cairn");
        assert_eq!(join("../up?x=/.."), "https://a.example:444/up?x=/..");
        assert_eq!(join("./sub/./a/../b/"), "https://a.example:444/dir/sub/b/");
        assert_eq!(join("/../.."), "https://a.example:444/");
        assert_eq!(join("//b.example/x"), "https://b.example/x");
        assert_eq!(join("https://c.example/y"), "https://c.example/y");
        assert!(base.join("http://c.example/y").is_err());
        assert!(base.join("/a b").is_err());
    }

    #[test]
    fn content_ranges_and_chunk_sizes_parse_strictly() {
        assert_eq!(
            content_range("bytes 1048576-3145727/3145728"),
            Some((1048576, 3145727, 3145728))
        );
        for bad in [
            "bytes 1-2/*",
            "bytes */100",
            "items 1-2/3",
            "bytes 5-1/9",
            "bytes +1-2/3",
        ] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
        assert_eq!(chunk_size("1a2B"), Some(0x1a2b));
        assert_eq!(chunk_size("10;name=value"), Some(16));
        assert_eq!(chunk_size("0"), Some(0));
        for bad in ["", "+10", "0x10", "g", "1000000000000000"] {
            assert_eq!(chunk_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn status_lines_and_framing() {
        let status = status_line("HTTP/1.1 404 Not Found").unwrap();
        assert_eq!(status.to_string(), "404 Not Found");
        assert_eq!(status_line("HTTP/1.0 200").unwrap().to_string(), "200");
        assert!(status_line("HTTP/2 200 OK").is_none());
        assert!(status_line("HTTP/1.1 20 OK").is_none());

        let head = |headers: &[(&str, &str)]| Head {
            status: status_line("HTTP/1.1 200 OK").unwrap(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        assert!(matches!(
            head(&[("content-length", "12")]).framing(),
            Ok(Some(Framing::Length(12)))
        ));
        assert!(matches!(
            head(&[("transfer-encoding", "chunked"), ("content-length", "12")]).framing(),
            Ok(Some(Framing::Chunked { .. }))
        ));
        assert!(matches!(head(&[]).framing(), Ok(None)));
        assert!(head(&[("transfer-encoding", "gzip, chunked")])
            .framing()
            .is_err());
        assert!(head(&[("content-length", "1"), ("content-length", "2")])
            .framing()
            .is_err());
        assert!(head(&[("content-length", "-1")]).framing().is_err());
    }

    #[test]
    fn server_text_in_errors_is_quoted_and_short() {
        assert_eq!(quote("HTTP/1.1 2\u{7}00"), "\"HTTP/1.1 2\\u{7}00\"");
        let long = quote(&"\u{fffd}x".repeat(1000));
        assert!(
            long.ends_with("\"…") && long.chars().count() == 64 + 3,
            "{long}"
        );
        // Escapes count towards the length: a line of control characters stays short too.
        let escaped = quote(&format!("HTTP/1.1 20{}", "\u{1d}".repeat(1000)));
        assert!(escaped.ends_with("\\u{1d}\"…"), "{escaped}");
        assert!(escaped.chars().count() <= 64 + 3, "{escaped}");
    }

    #[test]
    fn a_resumed_chunked_body_is_held_to_its_content_range() {
        let limits = FetchLimits::default();
        let first = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
        let resume = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 4-5/10\r\n\
                       Transfer-Encoding: chunked\r\n\r\n6\r\n456789\r\n0\r\n\r\n";
        let out = fuzzing::answers(first, Some((resume, 4)), 3, &limits);
        assert_eq!(out.body, b"012345");
        assert_eq!(
            out.error.as_deref(),
            Some("https://fuzz.invalid/bundle sent a malformed answer: a chunked body longer than its Content-Range")
        );
    }

    #[test]
    fn roots_from_pem_names_what_is_wrong() {
        assert!(roots_from_pem("")
            .unwrap_err()
            .contains("no PEM CERTIFICATE"));
        assert!(
            roots_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err()
                .contains("certificate 1")
        );
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        assert_eq!(roots_from_pem(&ca.cert.pem()).unwrap().len(), 1);
    }
}
