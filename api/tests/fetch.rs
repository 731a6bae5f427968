//! The bundle fetcher against an HTTPS server on loopback written here (std sockets and
//! rustls, its certificate from a test CA): whole, resumed, chunked and redirected downloads,
//! and the ones it must refuse.

mod common;

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::fetch::{Fetch, FetchError, FetchLimits};
use common::{Ca, Pem};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

const MIB: usize = 1024 * 1024;
const ETAG: &str = "\"v1\"";

/// What the server does with `GET /bundle`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bundle {
    /// 200 with Content-Length, an ETag, and ranges honoured.
    Whole,
    /// Chunked transfer encoding, no Content-Length.
    Chunked,
    /// The first answer stops after 1 MiB and the connection closes; later ones honour Range.
    DropOnce,
    /// Like `DropOnce`, but later answers ignore Range and send the whole file with 200.
    DropThenIgnoreRanges,
    /// 503 to everything.
    Busy,
}

struct Server {
    addr: std::net::SocketAddr,
    /// Every request head received, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Serves `file` as /bundle, with the certificate `cert` (for 127.0.0.1 and localhost).
    fn start(cert: &Pem, bundle: Bundle, file: Arc<Vec<u8>>) -> Server {
        let config = common::https_server_config(cert);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let bundles_served = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let connection = Connection {
                    config: config.clone(),
                    bundle,
                    file: file.clone(),
                    requests: seen.clone(),
                    bundles_served: bundles_served.clone(),
                };
                // The client hanging up (or refusing the certificate) is part of some tests.
                std::thread::spawn(move || connection.serve(tcp));
            }
        });
        Server { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

struct Connection {
    config: Arc<ServerConfig>,
    bundle: Bundle,
    file: Arc<Vec<u8>>,
    requests: Arc<Mutex<Vec<String>>>,
    bundles_served: Arc<AtomicUsize>,
}

impl Connection {
    fn serve(self, tcp: TcpStream) -> io::Result<()> {
        let connection = ServerConnection::new(self.config.clone()).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(connection, tcp);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if tls.read_line(&mut head)? == 0 {
                return Ok(());
            }
        }
        self.requests.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Range: bytes="))
            .map(|r| r.trim_end_matches('-').parse::<usize>().unwrap());
        let file = &self.file[..];
        match path.as_str() {
            "/bundle" => {}
            "/old/place" => return answer(&mut tls, "302 Found", "Location: ../bundle\r\n", b""),
            "/loop" => return answer(&mut tls, "302 Found", "Location: /loop\r\n", b""),
            "/huge-header" => {
                let header = format!("X-Padding: {}\r\n", "x".repeat(20 * 1024));
                return answer(&mut tls, "200 OK", &header, b"");
            }
            _ => return answer(&mut tls, "404 Not Found", "", b"no such file\n"),
        }
        let first = self.bundles_served.fetch_add(1, Ordering::SeqCst) == 0;
        match (self.bundle, range) {
            (Bundle::Busy, _) => answer(&mut tls, "503 Service Unavailable", "", b""),
            (Bundle::Chunked, _) => {
                write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                )?;
                for (i, chunk) in file.chunks(100_000).enumerate() {
                    // Extensions are allowed after the size; the client must skip them.
                    let extension = if i == 1 { ";name=value" } else { "" };
                    write!(tls, "{:x}{extension}\r\n", chunk.len())?;
                    tls.write_all(chunk)?;
                    tls.write_all(b"\r\n")?;
                }
                tls.write_all(b"0\r\nX-Trailer: yes\r\n\r\n")?;
                tls.flush()
            }
            (Bundle::DropOnce | Bundle::DropThenIgnoreRanges, None) if first => {
                write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {ETAG}\r\n\r\n",
                    file.len()
                )?;
                tls.write_all(&file[..MIB])?;
                tls.flush()?;
                // Gone without a TLS close_notify, as when a link drops.
                tls.sock.shutdown(Shutdown::Both)
            }
            (Bundle::DropThenIgnoreRanges, _) | (_, None) => {
                let header = format!("ETag: {ETAG}\r\n");
                answer(&mut tls, "200 OK", &header, file)
            }
            (_, Some(start)) => {
                assert!(head.contains(&format!("If-Range: {ETAG}\r\n")), "{head}");
                let header = format!(
                    "ETag: {ETAG}\r\nContent-Range: bytes {start}-{}/{}\r\n",
                    file.len() - 1,
                    file.len()
                );
                answer(&mut tls, "206 Partial Content", &header, &file[start..])
            }
        }
    }
}

fn answer(
    tls: &mut StreamOwned<ServerConnection, TcpStream>,
    status: &str,
    headers: &str,
    body: &[u8],
) -> io::Result<()> {
    write!(
        tls,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    )?;
    tls.write_all(body)?;
    tls.flush()
}

/// 3 MiB that differ at every offset that matters.
fn file() -> Arc<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes = (0..3 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Arc::new(bytes)
}

fn roots(ca: &Ca) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    roots
}

/// The default limits with short waits, so retries do not slow the tests down.
fn limits() -> FetchLimits {
    FetchLimits {
        backoff: Duration::from_millis(10),
        ..FetchLimits::default()
    }
}

fn fetch(ca: &Ca, url: &str) -> Result<Fetch, FetchError> {
    Fetch::with_limits(url, roots(ca), limits())
}

/// Reads the body in odd-sized pieces, as a reader of the bundle would.
fn read_all(fetch: &mut Fetch) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut buf = vec![0; 100_003];
    loop {
        match fetch.read(&mut buf)? {
            0 => return Ok(body),
            n => body.extend_from_slice(&buf[..n]),
        }
    }
}

/// The message and its causes, as the daemon's log shows an error.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[test]
fn a_whole_file_arrives_with_its_length() {
    let ca = Ca::new("fetch test CA");
    let file = file();
    let server = Server::start(&ca.server(), Bundle::Whole, file.clone());
    let mut fetch = fetch(&ca, &server.url("/bundle")).unwrap();
    assert_eq!(fetch.len(), Some(file.len() as u64));
    let body = read_all(&mut fetch).unwrap();
    assert!(body == *file, "the body differs from the file");
    assert_eq!(fetch.received(), file.len() as u64);
    assert_eq!(fetch.read(&mut [0; 16]).unwrap(), 0);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with(&format!(
            "GET /bundle HTTP/1.1\r\nHost: {}\r\n",
            server.addr
        )),
        "{}",
        requests[0]
    );
}

#[test]
fn a_dropped_connection_resumes_where_it_stopped() {
    let ca = Ca::new("fetch test CA");
    let file = file();
    let server = Server::start(&ca.server(), Bundle::DropOnce, file.clone());
    let mut fetch = fetch(&ca, &server.url("/bundle")).unwrap();
    let body = read_all(&mut fetch).unwrap();
    assert!(body == *file, "the resumed body differs from the file");
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(!requests[0].contains("Range:"), "{}", requests[0]);
    assert!(
        requests[1].contains("\r\nRange: bytes=1048576-\r\n"),
        "{}",
        requests[1]
    );
    assert!(
        requests[1].contains(&format!("\r\nIf-Range: {ETAG}\r\n")),
        "{}",
        requests[1]
    );
}

#[test]
fn a_chunked_body_arrives_whole() {
    let ca = Ca::new("fetch test CA");
    let file = file();
    let server = Server::start(&ca.server(), Bundle::Chunked, file.clone());
    let mut fetch = fetch(&ca, &server.url("/bundle")).unwrap();
    assert_eq!(fetch.len(), None);
    let body = read_all(&mut fetch).unwrap();
    assert!(body == *file, "the chunked body differs from the file");
}

#[test]
fn a_missing_file_is_an_error_naming_the_url_and_status() {
    let ca = Ca::new("fetch test CA");
    let server = Server::start(&ca.server(), Bundle::Whole, file());
    let url = server.url("/missing.cairn");
    let e = fetch(&ca, &url).unwrap_err();
    assert_eq!(e.to_string(), format!("{url} answered 404 Not Found"));
    // Not worth retrying: one request only.
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("fetch test CA");
    let other = Ca::new("some other CA");
    let server = Server::start(&other.server(), Bundle::Whole, file());
    let url = server.url("/bundle");
    let e = fetch(&ca, &url).unwrap_err();
    assert!(matches!(e, FetchError::Certificate { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("{url} presented a certificate that this device does not trust (checked against its trusted roots)")
    );
    assert!(chain(&e).contains("UnknownIssuer"), "{}", chain(&e));
    assert!(server.requests().is_empty());
}

#[test]
fn redirects_are_followed_and_bounded() {
    let ca = Ca::new("fetch test CA");
    let file = file();
    let server = Server::start(&ca.server(), Bundle::Whole, file.clone());
    let mut fetch = fetch(&ca, &server.url("/old/place")).unwrap();
    let body = read_all(&mut fetch).unwrap();
    assert!(body == *file, "the redirected body differs from the file");
    let requests = server.requests();
    assert!(
        requests[0].starts_with("GET /old/place "),
        "{}",
        requests[0]
    );
    assert!(requests[1].starts_with("GET /bundle "), "{}", requests[1]);

    let url = server.url("/loop");
    let e = self::fetch(&ca, &url).unwrap_err();
    assert_eq!(e.to_string(), format!("{url} redirected more than 5 times"));
}

#[test]
fn a_server_that_ignores_ranges_after_a_drop_fails_clearly() {
    let ca = Ca::new("fetch test CA");
    let server = Server::start(&ca.server(), Bundle::DropThenIgnoreRanges, file());
    let url = server.url("/bundle");
    let mut fetch = fetch(&ca, &url).unwrap();
    let e = read_all(&mut fetch).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{url} answered 200 OK to a request for the bytes from 1048576 on, so the download \
             cannot resume: the server ignores ranges, or the file has changed"
        )
    );
    // It stays failed rather than starting over.
    assert!(fetch.read(&mut [0; 16]).is_err());
}

#[test]
fn only_https_urls_are_fetched() {
    let ca = Ca::new("fetch test CA");
    let e = fetch(&ca, "http://127.0.0.1:1/bundle").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the bundle URL \"http://127.0.0.1:1/bundle\" cannot be fetched: only https:// URLs are fetched"
    );
}

#[test]
fn a_busy_server_is_retried_then_given_up_on() {
    let ca = Ca::new("fetch test CA");
    let server = Server::start(&ca.server(), Bundle::Busy, file());
    let url = server.url("/bundle");
    let e = fetch(&ca, &url).unwrap_err();
    assert_eq!(
        chain(&e),
        format!(
            "gave up on {url} after 5 retries, 0 bytes in: {url} answered 503 Service Unavailable"
        )
    );
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn headers_over_the_limit_are_refused() {
    let ca = Ca::new("fetch test CA");
    let server = Server::start(&ca.server(), Bundle::Whole, file());
    let url = server.url("/huge-header");
    let e = fetch(&ca, &url).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{url} sent a malformed answer: its headers are longer than 16384 bytes")
    );
}
