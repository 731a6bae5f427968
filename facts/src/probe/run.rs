//! Running a probe: one TCP connect, or one HTTP/1.1 GET read up to its final status line,
//! all of it within the probe's one deadline. std only: no async runtime, no resolver. cairnd
//! runs it ([`Probe::run`]) in its health checks; the host tools link it and never call it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{HttpUrl, Probe};

/// Bytes of response read at most, to find the status line (after any 1xx interim responses).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

impl Probe {
    /// Runs the probe once, within its timeout.
    pub fn run(&self) -> Result<(), ProbeFailure> {
        let deadline = Deadline::new(self.timeout());
        let outcome = match self {
            Self::Tcp { addr, .. } => connect(*addr, &deadline).map(drop),
            Self::Http {
                url, expect_status, ..
            } => http_get(url, &deadline).and_then(|got| {
                if got == *expect_status {
                    Ok(())
                } else {
                    Err(Failure::Status {
                        got,
                        expected: *expect_status,
                    })
                }
            }),
        };
        outcome.map_err(|reason| ProbeFailure {
            probe: self.name(),
            reason,
        })
    }
}

/// A failed probe: which one, and why, rendered as one line
/// (`tcp 127.0.0.1:9: connection refused`).
#[derive(Debug)]
pub struct ProbeFailure {
    /// [`Probe::name`] of the probe that failed.
    pub probe: String,
    pub reason: Failure,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.probe, self.reason)
    }
}

impl std::error::Error for ProbeFailure {}

/// Why a probe failed. Displays as a lowercase phrase without the probe's name.
#[derive(Debug)]
pub enum Failure {
    /// The deadline passed during `during`.
    TimedOut {
        after: Duration,
        during: Phase,
    },
    /// A socket error other than a timeout.
    Io {
        during: Phase,
        source: io::Error,
    },
    /// The peer closed the connection before sending a complete status line.
    Closed,
    /// The response does not start with an HTTP/1.x status line.
    Malformed {
        line: String,
    },
    /// No final status line within [`MAX_RESPONSE_HEAD`] bytes.
    HeadTooLarge,
    Status {
        got: u16,
        expected: u16,
    },
}

/// The step of a probe at which it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Send,
    Receive,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { after, during } => {
                write!(f, "timed out after {} ({during})", human(*after))
            }
            Self::Io { during, source } => match io_phrase(source) {
                // Connect errors speak for themselves ("connection refused").
                Some(p) if *during == Phase::Connect => f.write_str(p),
                Some(p) => write!(f, "{p} ({during})"),
                None => write!(f, "{during}: {source}"),
            },
            Self::Closed => f.write_str("connection closed before a complete status line"),
            Self::Malformed { line } => write!(f, "not an HTTP/1.x status line: {line:?}"),
            Self::HeadTooLarge => write!(
                f,
                "no status line in the first {} KiB of the response",
                MAX_RESPONSE_HEAD / 1024
            ),
            Self::Status { got, expected } => write!(f, "status {got}, expected {expected}"),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connecting",
            Self::Send => "sending the request",
            Self::Receive => "reading the response",
        })
    }
}

/// The usual socket errors as short phrases; `None` for the rest, which print std's message.
fn io_phrase(e: &io::Error) -> Option<&'static str> {
    use io::ErrorKind as K;
    Some(match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by peer",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe => "connection closed by peer",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::NetworkDown => "network down",
        K::AddrNotAvailable => "address not available",
        _ => return None,
    })
}

/// `2 s`, `1.5 s`, `250 ms`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else if d.as_secs() > 0 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// One deadline shared by every step of a probe.
struct Deadline {
    total: Duration,
    at: Instant,
}

impl Deadline {
    fn new(total: Duration) -> Self {
        Self {
            total,
            at: Instant::now() + total,
        }
    }

    /// Time left for `during`, or the timeout failure when none is.
    fn remaining(&self, during: Phase) -> Result<Duration, Failure> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.timed_out(during))
        } else {
            Ok(left)
        }
    }

    fn timed_out(&self, during: Phase) -> Failure {
        Failure::TimedOut {
            after: self.total,
            during,
        }
    }

    /// Maps a socket error to a failure, telling timeouts (EAGAIN from SO_RCVTIMEO and
    /// SO_SNDTIMEO, ETIMEDOUT from connect) from the rest.
    fn fail(&self, during: Phase, source: io::Error) -> Failure {
        if is_timeout(&source) {
            self.timed_out(during)
        } else {
            Failure::Io { during, source }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn connect(addr: SocketAddr, deadline: &Deadline) -> Result<TcpStream, Failure> {
    let left = deadline.remaining(Phase::Connect)?;
    TcpStream::connect_timeout(&addr, left).map_err(|e| deadline.fail(Phase::Connect, e))
}

/// Sends `GET` and returns the final status code.
fn http_get(url: &HttpUrl, deadline: &Deadline) -> Result<u16, Failure> {
    let mut stream = connect(url.addr, deadline)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cairnd\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        url.target, url.host
    );
    let left = deadline.remaining(Phase::Send)?;
    stream
        .set_write_timeout(Some(left))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| deadline.fail(Phase::Send, e))?;

    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let eof = match head.len() {
            n if n >= MAX_RESPONSE_HEAD => return Err(Failure::HeadTooLarge),
            n => {
                let left = deadline.remaining(Phase::Receive)?;
                let want = chunk.len().min(MAX_RESPONSE_HEAD - n);
                let got = stream
                    .set_read_timeout(Some(left))
                    .and_then(|()| stream.read(&mut chunk[..want]));
                match got {
                    Ok(got) => {
                        head.extend_from_slice(&chunk[..got]);
                        got == 0
                    }
                    // The socket timer may round below our deadline: check it again.
                    Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(deadline.fail(Phase::Receive, e)),
                }
            }
        };
        match final_status(&head, eof) {
            Parsed::Status(code) => return Ok(code),
            Parsed::Bad(failure) => return Err(failure),
            Parsed::NeedMore if eof => return Err(Failure::Closed),
            Parsed::NeedMore => {}
        }
    }
}

/// What [`final_status`] made of the bytes so far.
#[derive(Debug)]
enum Parsed {
    NeedMore,
    Status(u16),
    Bad(Failure),
}

/// Finds the final status code in the start of a response: the first status line that is not
/// a 1xx interim response (`100 Continue`, `103 Early Hints`), whose heads are skipped. `eof`
/// says no more bytes will come.
fn final_status(mut buf: &[u8], eof: bool) -> Parsed {
    loop {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            // Refuse garbage as soon as it shows, rather than after 16 KiB of it.
            let prefix = &buf[..buf.len().min(7)];
            if !b"HTTP/1."[..prefix.len()].eq(prefix) {
                return Parsed::Bad(malformed(buf));
            }
            return if eof && !buf.is_empty() {
                Parsed::Bad(malformed(buf))
            } else {
                Parsed::NeedMore
            };
        };
        let line = &buf[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(code) = status_code(line) else {
            return Parsed::Bad(malformed(line));
        };
        if !(100..200).contains(&code) || code == 101 {
            return Parsed::Status(code);
        }
        let Some(end) = head_end(buf) else {
            return Parsed::NeedMore;
        };
        buf = &buf[end..];
    }
}

/// The code of `HTTP/1.x NNN[ reason]`.
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let (code, after) = rest.split_at_checked(3)?;
    if !minor.is_ascii_digit() || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !(after.is_empty() || after.starts_with(b" ")) {
        return None;
    }
    let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&code).then_some(code)
}

/// The offset just past the blank line that ends the head at the start of `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
        let line = &buf[at..at + nl];
        at += nl + 1;
        if line.is_empty() || line == b"\r" {
            return Some(at);
        }
    }
    None
}

fn malformed(line: &[u8]) -> Failure {
    let shown = &line[..line.len().min(60)];
    Failure::Malformed {
        line: String::from_utf8_lossy(shown).into_owned(),
    }
}
/// The response-head reader on bytes in memory, for the fuzz target in `fuzz/src/facts`; not part
/// of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// What the probe makes of the first bytes of a response: `Ok(None)` while it needs more,
    /// the final status code, or the failure as the health report shows it.
    pub fn final_status(head: &[u8], eof: bool) -> Result<Option<u16>, String> {
        match super::final_status(head, eof) {
            super::Parsed::NeedMore => Ok(None),
            super::Parsed::Status(code) => Ok(Some(code)),
            super::Parsed::Bad(failure) => Err(failure.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    fn tcp(addr: SocketAddr, timeout: Duration) -> Probe {
        Probe::Tcp { addr, timeout }
    }

    fn http(addr: SocketAddr, path: &str, status: u16, timeout: Duration) -> Probe {
        let url = format!("http://{addr}{path}").parse().unwrap();
        Probe::Http {
            url,
            expect_status: status,
            timeout,
        }
    }

    /// A port on loopback with nothing listening (bound, then released).
    fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// Serves one connection: reads the request head, sends `response`, closes. The request
    /// comes back on the channel.
    fn serve_once(response: Vec<u8>) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") && req.len() < 8192 {
                match conn.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let _ = conn.write_all(&response);
            let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
        });
        (addr, rx)
    }

    #[test]
    fn tcp_probe_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        tcp(addr, Duration::from_secs(2)).run().unwrap();

        let addr = closed_port();
        let e = tcp(addr, Duration::from_secs(2)).run().unwrap_err();
        assert_eq!(e.to_string(), format!("tcp {addr}: connection refused"));
    }

    #[test]
    fn http_probe_sends_a_plain_get_and_checks_the_status() {
        let (addr, rx) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
        );
        http(addr, "/healthz", 200, Duration::from_secs(2))
            .run()
            .unwrap();
        let req = rx.recv().unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");

        let (addr, _rx) = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n".to_vec());
        let e = http(addr, "/healthz", 200, Duration::from_secs(2))
            .run()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("http://{addr}/healthz: status 503, expected 200")
        );
        assert!(matches!(
            e.reason,
            Failure::Status {
                got: 503,
                expected: 200
            }
        ));
    }

    #[test]
    fn http_probe_skips_interim_responses() {
        let (addr, _rx) = serve_once(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.0 204 No Content\r\n\r\n"
                .to_vec(),
        );
        http(addr, "/", 204, Duration::from_secs(2)).run().unwrap();
    }

    #[test]
    fn http_probe_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        thread::spawn(move || {
            // Accept and then say nothing until the test is over.
            let conn = listener.accept();
            let _ = done_rx.recv();
            drop(conn);
        });
        let started = Instant::now();
        let e = http(addr, "/healthz", 200, Duration::from_millis(300))
            .run()
            .unwrap_err();
        let took = started.elapsed();
        let _ = done_tx.send(());
        assert_eq!(
            e.to_string(),
            format!("http://{addr}/healthz: timed out after 300 ms (reading the response)")
        );
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn http_probe_refuses_garbage() {
        let (addr, _rx) = serve_once(b"hello there\r\n\r\n".to_vec());
        let e = http(addr, "/", 200, Duration::from_secs(2))
            .run()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("http://{addr}/: not an HTTP/1.x status line: \"hello there\"")
        );

        // An endless status line is cut off at the head limit.
        let mut endless = b"HTTP/1.1 200 ".to_vec();
        endless.resize(MAX_RESPONSE_HEAD + 100, b'x');
        let (addr, _rx) = serve_once(endless);
        let e = http(addr, "/", 200, Duration::from_secs(2))
            .run()
            .unwrap_err();
        assert!(matches!(e.reason, Failure::HeadTooLarge), "{e}");

        let (addr, _rx) = serve_once(b"HTTP/1.1 20".to_vec());
        let e = http(addr, "/", 200, Duration::from_secs(2))
            .run()
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("not an HTTP/1.x status line: \"HTTP/1.1 20\""),
            "{e}"
        );

        let (addr, _rx) = serve_once(Vec::new());
        let e = http(addr, "/", 200, Duration::from_secs(2))
            .run()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("http://{addr}/: connection closed before a complete status line")
        );
    }

    #[test]
    fn http_probe_reports_a_refused_connection() {
        let addr = closed_port();
        let e = http(addr, "/healthz", 200, Duration::from_secs(2))
            .run()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("http://{addr}/healthz: connection refused")
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 404"), Some(404));
        assert_eq!(status_code(b"HTTP/1.1 200"), Some(200));
        for bad in [
            &b"HTTP/2 200 OK"[..],
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 abc",
            b"HTTP/1.1  200",
            b"HTTP/1.x 200",
            b"HTTP/1.1 999 what",
            b"",
        ] {
            assert_eq!(status_code(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(
            final_status(b"HTTP/1.1 2", false),
            Parsed::NeedMore
        ));
        assert!(matches!(final_status(b"HTTX", false), Parsed::Bad(_)));
        assert!(matches!(
            final_status(b"HTTP/1.1 100 Continue\r\n", false),
            Parsed::NeedMore
        ));
        assert!(matches!(
            final_status(b"HTTP/1.1 100 Continue\n\nHTTP/1.1 500 x\n", false),
            Parsed::Status(500)
        ));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(2)), "2 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
    }
}
