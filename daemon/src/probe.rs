//! Health probes that need no shell: a TCP connect, or an HTTP/1.1 GET whose status is checked.
//!
//! A probe is one line of machine config (`{"tcp": "127.0.0.1:22", "timeout_s": 2}` or
//! `{"http": "http://127.0.0.1:8080/healthz", "status": 200, "timeout_s": 2}`), checked when it
//! is parsed, so that running it can only fail for reasons that concern the probed service. The
//! device has no resolver: hosts are IP literals or `localhost` (taken as 127.0.0.1), and only
//! plain `http://` is spoken. [`Probe::run`] is bounded in time and memory whatever the peer
//! does: the whole probe (connect, send, read) shares one deadline of `timeout`, and at most
//! [`MAX_RESPONSE_HEAD`] bytes of the response are read. Its failure is a one-line reason
//! ([`ProbeFailure`]) meant for logs and for the updater's health verdict.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Timeout of a probe whose config gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest accepted `timeout_s`; a probe is one step of a health round, not a wait.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Status an HTTP probe expects when its config gives none.
pub const DEFAULT_STATUS: u16 = 200;
/// Bytes of response read at most, to find the status line (after any 1xx interim responses).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Longest accepted probe URL or address.
pub const MAX_TARGET_LEN: usize = 2048;

/// One health probe, validated.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(
    try_from = "serde_json::Map<String, serde_json::Value>",
    into = "ProbeSpec"
)]
pub enum Probe {
    /// Healthy when a TCP connection to `addr` is accepted.
    Tcp { addr: SocketAddr, timeout: Duration },
    /// Healthy when `GET url` answers with status `expect_status`.
    Http {
        url: HttpUrl,
        expect_status: u16,
        timeout: Duration,
    },
}

/// The JSON form of a probe, as the machine config carries it. Exactly one of `tcp` and `http`;
/// `status` only with `http`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProbeSpec {
    /// `host:port` that must accept a TCP connection (an IP address, no name lookup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// `http://` URL that must answer `GET` with `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// HTTP status expected (default 200); only with `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Seconds one attempt may take (default 2, at most 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

/// Why a [`ProbeSpec`] is not a valid probe (the reason alone; serde or [`Probe::from_json`]
/// add the context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpecError(String);

impl fmt::Display for ProbeSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeSpecError {}

impl Probe {
    /// Parses one probe from its JSON value. Unknown keys are refused.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        Self::deserialize(value).map_err(|e| Error::BadProbe {
            reason: e.to_string(),
        })
    }

    /// What the probe checks, for logs: `tcp 127.0.0.1:22` or the URL.
    pub fn name(&self) -> String {
        self.to_string()
    }

    pub fn timeout(&self) -> Duration {
        match self {
            Self::Tcp { timeout, .. } | Self::Http { timeout, .. } => *timeout,
        }
    }

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

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { addr, .. } => write!(f, "tcp {addr}"),
            Self::Http { url, .. } => write!(f, "{url}"),
        }
    }
}

impl TryFrom<ProbeSpec> for Probe {
    type Error = ProbeSpecError;

    fn try_from(spec: ProbeSpec) -> Result<Self, ProbeSpecError> {
        let bad = |what: &str, reason: String| ProbeSpecError(format!("{what}: {reason}"));
        let timeout = match spec.timeout_s {
            None => DEFAULT_TIMEOUT,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT.as_secs_f64() => {
                // Sub-millisecond precision means nothing on a TCP connect.
                Duration::from_millis((s * 1000.0).round().max(1.0) as u64)
            }
            Some(s) => {
                return Err(ProbeSpecError(format!(
                    "timeout_s {s} is out of range (more than 0, at most {})",
                    MAX_TIMEOUT.as_secs()
                )))
            }
        };
        match (spec.tcp, spec.http) {
            (Some(tcp), None) => {
                if spec.status.is_some() {
                    return Err(bad(
                        &format!("tcp {tcp:?}"),
                        "\"status\" applies to http probes only".into(),
                    ));
                }
                let addr = parse_host_port(&tcp, None)
                    .map_err(|reason| bad(&format!("tcp {tcp:?}"), reason))?;
                Ok(Self::Tcp { addr, timeout })
            }
            (None, Some(http)) => {
                let expect_status = spec.status.unwrap_or(DEFAULT_STATUS);
                if !(100..=599).contains(&expect_status) {
                    return Err(bad(
                        &format!("http {http:?}"),
                        format!("status {expect_status} is not an HTTP status (100 to 599)"),
                    ));
                }
                let url = http
                    .parse()
                    .map_err(|e: ProbeSpecError| bad(&format!("http {http:?}"), e.0))?;
                Ok(Self::Http {
                    url,
                    expect_status,
                    timeout,
                })
            }
            (Some(_), Some(_)) => Err(ProbeSpecError(
                "a probe has either \"tcp\" or \"http\", not both".into(),
            )),
            (None, None) => Err(ProbeSpecError(
                "a probe needs \"tcp\": \"host:port\" or \"http\": \"http://host:port/path\""
                    .into(),
            )),
        }
    }
}

/// A probe is a JSON object: going through a map refuses the array form that a derived
/// `Deserialize` would also accept for [`ProbeSpec`].
impl TryFrom<serde_json::Map<String, serde_json::Value>> for Probe {
    type Error = ProbeSpecError;

    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, ProbeSpecError> {
        let spec = ProbeSpec::deserialize(serde_json::Value::Object(map))
            .map_err(|e| ProbeSpecError(e.to_string()))?;
        Self::try_from(spec)
    }
}

impl From<Probe> for ProbeSpec {
    fn from(probe: Probe) -> Self {
        let timeout_s = Some(probe.timeout().as_secs_f64());
        match probe {
            Probe::Tcp { addr, .. } => Self {
                tcp: Some(addr.to_string()),
                timeout_s,
                ..Self::default()
            },
            Probe::Http {
                url, expect_status, ..
            } => Self {
                http: Some(url.text),
                status: Some(expect_status),
                timeout_s,
                ..Self::default()
            },
        }
    }
}

/// A validated `http://host[:port][/path][?query]` URL whose host is an IP literal or
/// `localhost`. Displays as it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    addr: SocketAddr,
    /// The authority as written, for the `Host` header.
    host: String,
    /// Path and query, for the request line; at least `/`.
    target: String,
}

impl HttpUrl {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Path and query as sent in the request line.
    pub fn request_target(&self) -> &str {
        &self.target
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for HttpUrl {
    type Err = ProbeSpecError;

    fn from_str(text: &str) -> Result<Self, ProbeSpecError> {
        let bad = |s: &str| Err(ProbeSpecError(s.to_owned()));
        if text.len() > MAX_TARGET_LEN {
            return Err(ProbeSpecError(format!(
                "longer than {MAX_TARGET_LEN} bytes"
            )));
        }
        // Also keeps CR/LF out of the request we write.
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("URLs may contain only printable ASCII without spaces");
        }
        let scheme_end = text.find("://").map_or(0, |i| i + 3);
        let rest = match &text[..scheme_end] {
            s if s.eq_ignore_ascii_case("http://") => &text[scheme_end..],
            s if s.eq_ignore_ascii_case("https://") => {
                return bad("https is not supported; probes speak plain http://")
            }
            _ => return bad("expected http://host:port/path"),
        };
        // No fragment is ever sent.
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (host, target) = rest.split_at(split);
        if host.contains('@') {
            return bad("user info (user@host) is not supported");
        }
        let addr = parse_host_port(host, Some(80)).map_err(ProbeSpecError)?;
        let target = match target.as_bytes().first() {
            None => "/".to_owned(),
            Some(b'?') => format!("/{target}"),
            Some(_) => target.to_owned(),
        };
        Ok(Self {
            text: text.to_owned(),
            addr,
            host: host.to_owned(),
            target,
        })
    }
}

/// Parses `ip:port`, `[ipv6]:port` or `localhost:port`; the port may be left out only when
/// `default_port` is given.
fn parse_host_port(text: &str, default_port: Option<u16>) -> Result<SocketAddr, String> {
    if text.len() > MAX_TARGET_LEN {
        return Err(format!("longer than {MAX_TARGET_LEN} bytes"));
    }
    if let Ok(addr) = SocketAddr::from_str(text) {
        return check_port(addr);
    }
    let (host, port) = match text.rsplit_once(':') {
        // "::1" without brackets is an address, not host "::" and port 1.
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (text, None),
    };
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))?,
        (None, Some(p)) => p,
        (None, None) => return Err("no port (expected host:port)".into()),
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse()
            .map_err(|_| format!("{v6:?} is not an IPv6 address"))?
    } else {
        host.parse().map_err(|_| {
            format!(
                "host {host:?} is not an IP address or localhost (the device resolves no \
                 names; IPv6 goes in brackets)"
            )
        })?
    };
    check_port(SocketAddr::new(ip, port))
}

fn check_port(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.port() == 0 {
        return Err("port 0 cannot be probed".into());
    }
    Ok(addr)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    fn probe(json: &str) -> Result<Probe> {
        Probe::from_json(&serde_json::from_str(json).unwrap())
    }

    fn err(json: &str) -> String {
        probe(json).unwrap_err().to_string()
    }

    #[test]
    fn parses_tcp_and_http_probes() {
        assert_eq!(
            probe(r#"{"tcp": "127.0.0.1:22", "timeout_s": 2}"#).unwrap(),
            Probe::Tcp {
                addr: "127.0.0.1:22".parse().unwrap(),
                timeout: Duration::from_secs(2)
            }
        );
        assert_eq!(
            probe(r#"{"tcp": "localhost:6443"}"#).unwrap(),
            Probe::Tcp {
                addr: "127.0.0.1:6443".parse().unwrap(),
                timeout: DEFAULT_TIMEOUT
            }
        );
        let p = probe(r#"{"tcp": "[::1]:22", "timeout_s": 0.25}"#).unwrap();
        assert_eq!(p.timeout(), Duration::from_millis(250));
        assert_eq!(p.name(), "tcp [::1]:22");

        let Probe::Http {
            url,
            expect_status,
            timeout,
        } = probe(
            r#"{"http": "http://127.0.0.1:8080/healthz?x=1", "status": 204, "timeout_s": 3}"#,
        )
        .unwrap()
        else {
            panic!("not http")
        };
        assert_eq!(url.addr(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(url.request_target(), "/healthz?x=1");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/healthz?x=1");
        assert_eq!((expect_status, timeout), (204, Duration::from_secs(3)));

        let Probe::Http {
            url, expect_status, ..
        } = probe(r#"{"http": "http://localhost"}"#).unwrap()
        else {
            panic!("not http")
        };
        assert_eq!(url.addr(), "127.0.0.1:80".parse().unwrap());
        assert_eq!(url.request_target(), "/");
        assert_eq!(expect_status, DEFAULT_STATUS);

        let Probe::Http { url, .. } = probe(r#"{"http": "http://[::1]:9000?ready#x"}"#).unwrap()
        else {
            panic!("not http")
        };
        assert_eq!(url.addr(), "[::1]:9000".parse().unwrap());
        assert_eq!(url.request_target(), "/?ready");
    }

    #[test]
    fn refuses_bad_probes_with_a_reason() {
        let cases = [
            (
                r#"{"tcp": "127.0.0.1:22", "timeout": 2}"#,
                "unknown field `timeout`",
            ),
            (r#"{"tcp": "127.0.0.1"}"#, "no port"),
            (r#"{"tcp": "127.0.0.1:0"}"#, "port 0"),
            (
                r#"{"tcp": "127.0.0.1:99999"}"#,
                "not a number from 1 to 65535",
            ),
            (
                r#"{"tcp": "example.com:80"}"#,
                "not an IP address or localhost",
            ),
            (r#"{"tcp": "::1:22"}"#, "no port"),
            (
                r#"{"tcp": "127.0.0.1:22", "status": 200}"#,
                "http probes only",
            ),
            (
                r#"{"tcp": "127.0.0.1:22", "timeout_s": 0}"#,
                "timeout_s 0 is out of range",
            ),
            (
                r#"{"tcp": "127.0.0.1:22", "timeout_s": 61}"#,
                "out of range",
            ),
            (
                r#"{"tcp": "127.0.0.1:22", "timeout_s": "2"}"#,
                "invalid type",
            ),
            (r#"{"tcp": 22}"#, "invalid type"),
            (r#"{}"#, "a probe needs"),
            (
                r#"{"tcp": "127.0.0.1:1", "http": "http://127.0.0.1/"}"#,
                "not both",
            ),
            (
                r#"{"http": "https://127.0.0.1/"}"#,
                "https is not supported",
            ),
            (r#"{"http": "ftp://127.0.0.1/"}"#, "expected http://"),
            (r#"{"http": "127.0.0.1:80/"}"#, "expected http://"),
            (r#"{"http": "http://user@127.0.0.1/"}"#, "user info"),
            (r#"{"http": "http://127.0.0.1/a b"}"#, "printable ASCII"),
            (
                r#"{"http": "http://127.0.0.1/\r\nX: y"}"#,
                "printable ASCII",
            ),
            (r#"{"http": "http://host.local/"}"#, "not an IP address"),
            (
                r#"{"http": "http://127.0.0.1/", "status": 42}"#,
                "not an HTTP status",
            ),
            (
                r#"{"http": "http://127.0.0.1/", "status": 70000}"#,
                "invalid value",
            ),
            ("[]", "invalid type: sequence, expected a map"),
            (
                r#"["127.0.0.1:22"]"#,
                "invalid type: sequence, expected a map",
            ),
        ];
        for (json, want) in cases {
            let got = err(json);
            assert!(got.starts_with("invalid health probe: "), "{json}: {got}");
            assert!(got.contains(want), "{json}: {got:?} lacks {want:?}");
            assert!(!got.contains('\n'), "{got}");
        }
        let long = format!(r#"{{"http": "http://127.0.0.1/{}"}}"#, "a".repeat(3000));
        assert!(err(&long).contains("longer than"));
    }

    #[test]
    fn round_trips_through_json() {
        for json in [
            r#"{"tcp":"127.0.0.1:22","timeout_s":2.0}"#,
            r#"{"http":"http://localhost:8080/healthz","status":200,"timeout_s":0.5}"#,
        ] {
            let p = probe(json).unwrap();
            assert_eq!(serde_json::to_string(&p).unwrap(), json);
            let back: Probe = serde_json::from_str(json).unwrap();
            assert_eq!(back, p);
        }
        // As part of a bigger config, serde's error still names the reason.
        let e = serde_json::from_str::<Vec<Probe>>(r#"[{"tcp": "nope:1"}]"#).unwrap_err();
        assert!(e.to_string().contains("not an IP address"), "{e}");
    }

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
