//! Health probes that need no shell: a TCP connect, or an HTTP/1.1 GET whose status is checked.
//!
//! A probe is one line of machine config (`{"tcp": "127.0.0.1:22", "timeout_s": 2}` or
//! `{"http": "http://127.0.0.1:8080/healthz", "status": 200, "timeout_s": 2}`), checked when it
//! is parsed, so that running it can only fail for reasons that concern the probed service. The
//! device has no resolver: hosts are IP literals or `localhost` (taken as 127.0.0.1), and only
//! plain `http://` is spoken. [`Probe::run`] (in [`run`]) is bounded in time and memory whatever
//! the peer does: the whole probe (connect, send, read) shares one deadline of `timeout`, and at
//! most [`MAX_RESPONSE_HEAD`] bytes of the response are read. Its failure is a one-line reason
//! ([`ProbeFailure`]) meant for logs and for the updater's health verdict.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::error::ProbeSpecError;

pub mod run;

pub use run::{Failure, Phase, ProbeFailure, MAX_RESPONSE_HEAD};

/// Timeout of a probe whose config gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest accepted `timeout_s`; a probe is one step of a health round, not a wait.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Status an HTTP probe expects when its config gives none.
pub const DEFAULT_STATUS: u16 = 200;
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

impl Probe {
    /// Parses one probe from its JSON value. Unknown keys are refused.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ProbeSpecError> {
        Self::deserialize(value).map_err(|e| ProbeSpecError(format!("invalid health probe: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(json: &str) -> Result<Probe, ProbeSpecError> {
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
}
