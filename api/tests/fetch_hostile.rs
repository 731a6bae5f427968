//! The bundle fetcher against hostile HTTPS servers on loopback: garbage, an endless header, an
//! endless chunked body, a resume whose Content-Range does not fit, redirect loops, and servers
//! that stall or trickle.
//!
//! The one idea: whatever the server does, the fetch ends with a one-line error within the
//! limits it was given, and the sink (standing for the inactive slot) holds only a prefix of
//! the file, exactly the bytes counted as received, which is where a resume would continue.
//! Each server is a thread of the test, stopped and joined when the test ends.

mod common;

use std::io::{self, BufRead, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_api::fetch::{Fetch, FetchError, FetchLimits};
use common::Ca;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

const MIB: usize = 1024 * 1024;
const ETAG: &str = "\"v1\"";

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// One accepted connection, as a hostile server's script sees it.
struct Peer {
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    stop: Arc<AtomicBool>,
    /// 0 for the first connection, then 1, …
    index: usize,
}

impl Peer {
    /// Finishes the TLS handshake and reads the request head.
    fn request(self) -> io::Result<(Tls, String, Arc<AtomicBool>, usize)> {
        let connection = ServerConnection::new(self.config).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(connection, self.tcp);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if tls.read_line(&mut head)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok((tls, head, self.stop, self.index))
    }

    /// Waits, saying nothing, until the test ends.
    fn stall(stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

type Script = dyn Fn(Peer) -> io::Result<()> + Send + Sync;

/// A server running `script` for each connection, until it is dropped.
struct Hostile {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hostile {
    fn start(ca: &Ca, script: impl Fn(Peer) -> io::Result<()> + Send + Sync + 'static) -> Hostile {
        let config = common::https_server_config(&ca.server());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (count, stopped) = (connections.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                let tcp = match listener.accept() {
                    Ok((tcp, _)) => tcp,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                tcp.set_nonblocking(false).unwrap();
                // A script never waits on a client that has gone for longer than this.
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                tcp.set_write_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let peer = Peer {
                    tcp,
                    config: config.clone(),
                    stop: stopped.clone(),
                    index: count.fetch_add(1, Ordering::SeqCst),
                };
                let script = script.clone();
                // Errors are the client hanging up, which many of these tests expect.
                handlers.push(std::thread::spawn(move || drop(script(peer))));
            }
            for handler in handlers {
                handler.join().unwrap();
            }
        });
        Hostile {
            addr,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            if !std::thread::panicking() {
                joined.unwrap();
            }
        }
    }
}

/// Bytes that differ at every offset that matters: the file, and the garbage.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn file() -> Arc<Vec<u8>> {
    Arc::new(noise(0x9e37_79b9_7f4a_7c15, 3 * MIB))
}

fn roots(ca: &Ca) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    roots
}

/// Short waits and one retry, so that every case ends in a few seconds.
fn limits() -> FetchLimits {
    FetchLimits {
        retries: 1,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        head_timeout: Duration::from_millis(800),
        read_timeout: Duration::from_millis(400),
        ..FetchLimits::default()
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

/// What a fetch of `url` came to: the error, and what a sink was given before it.
struct Ended {
    error: FetchError,
    sink: Vec<u8>,
    received: u64,
    took: Duration,
}

impl Ended {
    /// The error as one short line.
    fn line(&self) -> String {
        let line = chain(&self.error);
        assert!(
            !line.contains(['\n', '\r']) && line.len() < 400,
            "not one short line: {line:?}"
        );
        line
    }

    /// The sink holds the first `received` bytes of `file`, nothing else.
    fn assert_prefix_of(&self, file: &[u8]) {
        assert_eq!(self.sink.len() as u64, self.received);
        assert!(
            file.starts_with(&self.sink),
            "the sink holds bytes that are not the file's"
        );
    }
}

/// Fetches `url` into a sink until it fails; a fetch that succeeds is a test failure.
fn fetch_failing(ca: &Ca, url: &str, limits: FetchLimits) -> Ended {
    let started = Instant::now();
    let mut sink = Vec::new();
    let (error, received) = match Fetch::with_limits(url, roots(ca), limits) {
        Err(e) => (e, 0),
        Ok(mut fetch) => {
            let e = io::copy(&mut fetch, &mut sink).expect_err("the fetch succeeded");
            let e = e
                .into_inner()
                .expect("an error with a cause")
                .downcast::<FetchError>()
                .expect("a FetchError");
            (*e, fetch.received())
        }
    };
    Ended {
        error,
        sink,
        received,
        took: started.elapsed(),
    }
}

fn head(tls: &mut Tls, head: &str) -> io::Result<()> {
    tls.write_all(head.as_bytes())?;
    tls.flush()
}

#[test]
fn garbage_instead_of_tls_is_a_tls_error() {
    let ca = Ca::new("hostile test CA");
    let server = Hostile::start(&ca, |mut peer| {
        peer.tcp.write_all(&noise(7, 64 * 1024))?;
        Peer::stall(&peer.stop);
        Ok(())
    });
    let url = server.url("/bundle");
    let ended = fetch_failing(&ca, &url, limits());
    assert!(
        matches!(ended.error, FetchError::Tls { .. }),
        "{:?}",
        ended.error
    );
    assert!(
        ended
            .line()
            .starts_with(&format!("the TLS handshake with {url} failed: ")),
        "{}",
        ended.line()
    );
    assert_eq!(server.connections(), 1, "a TLS failure is not retried");
}

#[test]
fn garbage_after_the_handshake_is_malformed_and_quoted_briefly() {
    let ca = Ca::new("hostile test CA");
    for garbage in [noise(11, 64 * 1024), [b'x'; 1000].to_vec()] {
        let server = Hostile::start(&ca, move |peer| {
            let (mut tls, ..) = peer.request()?;
            tls.write_all(&garbage)?;
            tls.write_all(b"\r\n\r\n")?;
            tls.flush()
        });
        let url = server.url("/bundle");
        let ended = fetch_failing(&ca, &url, limits());
        let line = ended.line();
        assert!(
            line.starts_with(&format!(
                "{url} sent a malformed answer: the status line \""
            )),
            "{line}"
        );
        assert_eq!(server.connections(), 1, "a malformed answer is not retried");
    }
}

#[test]
fn an_endless_header_stops_at_the_header_limit() {
    let ca = Ca::new("hostile test CA");
    // Many header lines, then one line that never ends.
    for line_ends in [true, false] {
        let server = Hostile::start(&ca, move |peer| {
            let (mut tls, _, stop, _) = peer.request()?;
            tls.write_all(b"HTTP/1.1 200 OK\r\nX-Endless: ")?;
            while !stop.load(Ordering::SeqCst) {
                tls.write_all(if line_ends {
                    b"a\r\nX-More: b"
                } else {
                    b"aaaa"
                })?;
            }
            Ok(())
        });
        let url = server.url("/bundle");
        let limits = FetchLimits {
            max_header: 4096,
            ..limits()
        };
        let ended = fetch_failing(&ca, &url, limits);
        assert_eq!(
            ended.line(),
            format!("{url} sent a malformed answer: its headers are longer than 4096 bytes")
        );
        assert!(ended.sink.is_empty());
    }
}

#[test]
fn an_endless_chunked_body_stops_at_the_length_limit() {
    let ca = Ca::new("hostile test CA");
    let endless = Arc::new(noise(13, 4 * MIB));
    let sent = endless.clone();
    let server = Hostile::start(&ca, move |peer| {
        let (mut tls, _, stop, _) = peer.request()?;
        head(
            &mut tls,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )?;
        for chunk in sent.chunks(10_000) {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            write!(tls, "{:x}\r\n", chunk.len())?;
            tls.write_all(chunk)?;
            tls.write_all(b"\r\n")?;
        }
        Ok(())
    });
    let url = server.url("/bundle");
    let limits = FetchLimits {
        max_len: MIB as u64,
        ..limits()
    };
    let ended = fetch_failing(&ca, &url, limits);
    let line = ended.line();
    assert!(line.starts_with(&format!("{url} is ")), "{line}");
    assert!(
        line.ends_with(" bytes long; the device takes at most 1048576"),
        "{line}"
    );
    assert!(ended.sink.len() <= MIB, "{} bytes taken", ended.sink.len());
    assert!(endless.starts_with(&ended.sink));
}

#[test]
fn an_endless_chunk_size_line_or_trailer_stops_at_the_line_limit() {
    let ca = Ca::new("hostile test CA");
    for (start, endless) in [(&b""[..], &b"0"[..]), (b"0\r\n", b"X-Trailer: t\r\n")] {
        let server = Hostile::start(&ca, move |peer| {
            let (mut tls, _, stop, _) = peer.request()?;
            head(
                &mut tls,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            )?;
            // A chunk-size line of zeros, or trailers, that never end.
            tls.write_all(start)?;
            while !stop.load(Ordering::SeqCst) {
                tls.write_all(endless)?;
            }
            Ok(())
        });
        let url = server.url("/bundle");
        let limits = FetchLimits {
            max_header: 2048,
            ..limits()
        };
        let ended = fetch_failing(&ca, &url, limits);
        assert_eq!(
            ended.line(),
            format!(
                "{url} sent a malformed answer: a chunk-size line or its trailers are longer \
                 than 2048 bytes"
            )
        );
        assert_eq!(ended.sink, b"hello");
    }
}

/// How the second answer (to the request for the rest) goes wrong.
#[derive(Clone, Copy, Debug)]
enum BadResume {
    /// Its Content-Range starts at another byte.
    OtherStart,
    /// Its Content-Range gives another total length.
    OtherTotal,
    /// Chunked, and longer than its Content-Range.
    LongerThanItsRange,
    /// Another ETag.
    OtherEtag,
}

#[test]
fn a_resume_that_does_not_continue_the_file_is_refused() {
    let ca = Ca::new("hostile test CA");
    let file = file();
    let len = file.len();
    for bad in [
        BadResume::OtherStart,
        BadResume::OtherTotal,
        BadResume::LongerThanItsRange,
        BadResume::OtherEtag,
    ] {
        let served = file.clone();
        let server = Hostile::start(&ca, move |peer| {
            let (mut tls, request, _, index) = peer.request()?;
            if index == 0 {
                head(
                    &mut tls,
                    &format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nETag: {ETAG}\r\n\r\n"),
                )?;
                tls.write_all(&served[..MIB])?;
                tls.flush()?;
                return tls.sock.shutdown(Shutdown::Both);
            }
            assert!(request.contains(&format!("\r\nRange: bytes={MIB}-\r\n")));
            let (start, end, total, etag) = match bad {
                BadResume::OtherStart => (0, len - 1, len, ETAG),
                BadResume::OtherTotal => (MIB, len - 1, len + 1, ETAG),
                BadResume::LongerThanItsRange => (MIB, 2 * MIB - 1, len, ETAG),
                BadResume::OtherEtag => (MIB, len - 1, len, "\"v2\""),
            };
            head(
                &mut tls,
                &format!(
                    "HTTP/1.1 206 Partial Content\r\nETag: {etag}\r\n\
                     Content-Range: bytes {start}-{end}/{total}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
                ),
            )?;
            // It sends the rest of the file whatever its Content-Range said.
            for chunk in served[start..].chunks(64 * 1024) {
                write!(tls, "{:x}\r\n", chunk.len())?;
                tls.write_all(chunk)?;
                tls.write_all(b"\r\n")?;
            }
            tls.write_all(b"0\r\n\r\n")?;
            tls.flush()
        });
        let url = server.url("/bundle");
        let ended = fetch_failing(&ca, &url, limits());
        let line = ended.line();
        let expected = match bad {
            BadResume::OtherStart | BadResume::OtherTotal => format!(
                "{url} answered 206 Partial Content to a request for the bytes from {MIB} on, so \
                 the download cannot resume: its Content-Range does not match the file"
            ),
            BadResume::OtherEtag => format!(
                "{url} answered 206 Partial Content to a request for the bytes from {MIB} on, so \
                 the download cannot resume: the file has changed"
            ),
            BadResume::LongerThanItsRange => format!(
                "{url} sent a malformed answer: a chunked body longer than its Content-Range"
            ),
        };
        assert_eq!(line, expected, "{bad:?}");
        ended.assert_prefix_of(&file);
        let kept = match bad {
            // What its Content-Range announced was taken, and nothing after it.
            BadResume::LongerThanItsRange => 2 * MIB,
            _ => MIB,
        };
        assert_eq!(ended.sink.len(), kept, "{bad:?}");
        assert_eq!(server.connections(), 2, "{bad:?}");
    }
}

#[test]
fn redirect_loops_end_at_the_redirect_limit() {
    let ca = Ca::new("hostile test CA");
    let server = Hostile::start(&ca, |peer| {
        let (mut tls, request, stop, _) = peer.request()?;
        // /a and /b send each other back and forth; /self to itself. Each answer has an
        // endless body, which a redirect's reader must not wait for.
        let location = match request.split(' ').nth(1) {
            Some("/a") => "/b",
            Some("/b") => "/a",
            _ => "/self",
        };
        head(
            &mut tls,
            &format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\n\r\n"),
        )?;
        while !stop.load(Ordering::SeqCst) {
            tls.write_all(&[b'r'; 4096])?;
        }
        Ok(())
    });
    for path in ["/a", "/self"] {
        let before = server.connections();
        let url = server.url(path);
        let limits = FetchLimits {
            max_redirects: 3,
            ..limits()
        };
        let ended = fetch_failing(&ca, &url, limits);
        assert_eq!(ended.line(), format!("{url} redirected more than 3 times"));
        assert_eq!(server.connections() - before, 4, "{path}");
        assert!(ended.took < Duration::from_secs(5), "{:?}", ended.took);
    }
}

/// Where a stalling server stops talking.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// Before the TLS handshake.
    Handshake,
    /// After the request, before any answer.
    Answer,
    /// In the middle of its headers.
    Headers,
    /// After half the body; a resume stalls the same way.
    Body,
}

#[test]
fn a_server_that_stalls_is_given_up_on_within_the_timeouts() {
    let ca = Ca::new("hostile test CA");
    let file = file();
    let len = file.len();
    for stall in [Stall::Handshake, Stall::Answer, Stall::Headers, Stall::Body] {
        let served = file.clone();
        let server = Hostile::start(&ca, move |peer| {
            if let Stall::Handshake = stall {
                Peer::stall(&peer.stop);
                return Ok(());
            }
            let (mut tls, request, stop, _) = peer.request()?;
            match stall {
                Stall::Headers => head(&mut tls, "HTTP/1.1 200 OK\r\nContent-Le")?,
                Stall::Body => {
                    let from = request
                        .lines()
                        .find_map(|l| l.strip_prefix("Range: bytes="))
                        .map_or(0, |r| r.trim_end_matches('-').parse::<usize>().unwrap());
                    let status = match from {
                        0 => format!("200 OK\r\nContent-Length: {len}"),
                        _ => format!(
                            "206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\n\
                             Content-Length: {}",
                            len - 1,
                            len - from
                        ),
                    };
                    head(
                        &mut tls,
                        &format!("HTTP/1.1 {status}\r\nETag: {ETAG}\r\n\r\n"),
                    )?;
                    tls.write_all(&served[from..from + MIB / 2])?;
                    tls.flush()?;
                }
                _ => {}
            }
            Peer::stall(&stop);
            Ok(())
        });
        let url = server.url("/bundle");
        let limits = limits();
        let ended = fetch_failing(&ca, &url, limits.clone());
        let line = ended.line();
        let received = match stall {
            Stall::Body => MIB,
            _ => 0,
        };
        assert!(
            line.starts_with(&format!(
                "gave up on {url} after 1 retries, {received} bytes in: "
            )),
            "{stall:?}: {line}"
        );
        let cause = match stall {
            Stall::Handshake => format!("cannot connect to {url}"),
            _ => format!("the connection to {url} broke after {received} bytes of the bundle"),
        };
        assert!(
            line.ends_with(&format!("{cause}: the server sent nothing for 0.4 s")),
            "{stall:?}: {line}"
        );
        ended.assert_prefix_of(&file);
        assert_eq!(ended.sink.len(), received, "{stall:?}");
        assert_eq!(server.connections(), 2, "{stall:?}");
        // Each of the two connections ends within the head timeout, or the read timeout once
        // the body flows, plus the backoff and some slack for a busy machine.
        let most = (limits.head_timeout + limits.read_timeout) * 2 + Duration::from_secs(2);
        assert!(ended.took < most, "{stall:?} took {:?}", ended.took);
    }
}

#[test]
fn a_server_that_trickles_is_given_up_on() {
    let ca = Ca::new("hostile test CA");
    let file = file();
    let len = file.len();
    // Headers a byte at a time, each well within the read timeout: only the head's deadline
    // ends them.
    let slow_headers = Hostile::start(&ca, |peer| {
        let (mut tls, _, stop, _) = peer.request()?;
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: "
            .iter()
            .chain([b'z'; 1000].iter())
        {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            tls.write_all(&[*byte])?;
            tls.flush()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    });
    let url = slow_headers.url("/bundle");
    let limits = limits();
    let ended = fetch_failing(&ca, &url, limits.clone());
    let line = ended.line();
    assert!(
        line.starts_with(&format!("gave up on {url} after 1 retries, 0 bytes in: ")),
        "{line}"
    );
    assert!(
        line.ends_with("the TLS handshake and the answer's headers took longer than 0.8 s"),
        "{line}"
    );
    assert!(ended.took < Duration::from_secs(4), "{:?}", ended.took);

    // A body that comes at about 1 KiB a second, each connection starting where the last
    // stopped: slower than the fetch takes, and never enough to count as progress.
    let served = file.clone();
    let slow_body = Hostile::start(&ca, move |peer| {
        let (mut tls, request, stop, _) = peer.request()?;
        let from = request
            .lines()
            .find_map(|l| l.strip_prefix("Range: bytes="))
            .map_or(0, |r| r.trim_end_matches('-').parse::<usize>().unwrap());
        let status = match from {
            0 => format!("200 OK\r\nContent-Length: {len}"),
            _ => format!(
                "206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\n\
                 Content-Length: {}",
                len - 1,
                len - from
            ),
        };
        head(
            &mut tls,
            &format!("HTTP/1.1 {status}\r\nETag: {ETAG}\r\n\r\n"),
        )?;
        for piece in served[from..].chunks(50) {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            tls.write_all(piece)?;
            tls.flush()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    });
    let url = slow_body.url("/bundle");
    let limits = FetchLimits {
        min_speed: 4096,
        ..limits
    };
    let ended = fetch_failing(&ca, &url, limits);
    let line = ended.line();
    assert!(
        line.starts_with(&format!("gave up on {url} after 1 retries, ")),
        "{line}"
    );
    assert!(
        line.ends_with("the server sent fewer than 4096 bytes a second"),
        "{line}"
    );
    ended.assert_prefix_of(&file);
    assert!(ended.received > 0);
    assert_eq!(slow_body.connections(), 2);
    assert!(ended.took < Duration::from_secs(4), "{:?}", ended.took);
}
