//! An SNTP client (RFC 4330; NTPv4 client mode) that measures how far the local clock is from a
//! server's, and [`Sync`], the small policy that steps the clock when it is far off.
//!
//! The one idea: an NTP timestamp carries seconds since 1900 *modulo 2^32* (the era is not sent),
//! so every timestamp is read in the era that puts it closest to the local clock
//! ([`NtpTimestamp::to_unix_nanos`]). That is what keeps the client right across the rollover of
//! 2036-02-07, as long as the local clock is within 68 years of the truth, which a board whose RTC
//! restarts at 1970 still is.
//!
//! The request's transmit timestamp is a random cookie, not the local time: the server echoes it
//! as the reply's origin, so a reply with the cookie answers this request and an off-path forger
//! must guess 64 bits. The local send time T1 is kept aside. Datagrams that do not carry the
//! cookie are ignored, not reported, since nothing says they came from the server.
//!
//! The clock is behind the [`Clock`] trait: [`SystemClock`] reads and sets `CLOCK_REALTIME`, and
//! tests use a fake one, so no test ever sets the host's clock.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::rand::{getrandom, GetRandomFlags};
use rustix::time::{clock_gettime, clock_settime, ClockId, Timespec};
use thiserror::Error;

/// The NTP port, used when a configured server names none.
pub const PORT: u16 = 123;
/// Length of an NTP header, all SNTP needs; anything after it (extensions, MAC) is ignored.
pub const PACKET_LEN: usize = 48;
/// Bytes read of one reply: the header and room for extensions, which are not looked at.
const RECV_BUF: usize = 512;

const VERSION: u8 = 4;
const MODE_CLIENT: u8 = 3;
const MODE_SERVER: u8 = 4;
const LEAP_UNSYNCHRONISED: u8 = 3;
/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
const NTP_TO_UNIX_SECS: i128 = 2_208_988_800;
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Errors of the SNTP client and of [`Sync`].
#[derive(Debug, Error)]
pub enum Error {
    #[error("ntp server {server:?} is not host or host:port: {reason}")]
    BadServer {
        server: String,
        reason: &'static str,
    },

    #[error("cannot resolve ntp server {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },

    #[error("ntp server {host} resolves to no address")]
    NoAddress { host: String },

    #[error("ntp server {server}: {op}")]
    Socket {
        server: SocketAddr,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "ntp server {server} did not answer within {timeout:?}{}",
        ignored_note(*ignored)
    )]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
        /// Datagrams that arrived but did not answer our request (short, or a wrong origin).
        ignored: u32,
    },

    #[error("ntp server {server} sent an unusable reply")]
    Reply {
        server: SocketAddr,
        #[source]
        source: ReplyError,
    },

    #[error("stepping the clock by {offset}")]
    Step {
        offset: Offset,
        #[source]
        source: io::Error,
    },

    #[error("no ntp server answered (tried {tried})")]
    NoServerAnswered {
        tried: String,
        #[source]
        last: Box<Error>,
    },

    #[error("no ntp server is configured")]
    NoServers,
}

impl Error {
    /// The error and every cause under it on one line ("no ntp server answered (tried …): ntp
    /// server … sent an unusable reply: kiss-o'-death DENY: …"), as the network status and the
    /// log show it: the top line alone would not say what the server did wrong.
    pub fn one_line(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cause = e.source();
        }
        out
    }
}

fn ignored_note(ignored: u32) -> String {
    match ignored {
        0 => String::new(),
        n => format!(" ({n} datagrams that were not its answer were ignored)"),
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a reply that carries our cookie (or could not be matched at all) cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("{len} bytes is shorter than an NTP header ({PACKET_LEN} bytes)")]
    Short { len: usize },

    #[error("its origin timestamp is not the one we sent")]
    WrongOrigin,

    #[error("mode {mode}, not 4 (server)")]
    NotServer { mode: u8 },

    #[error("NTP version {version}, not 3 or 4")]
    Version { version: u8 },

    #[error("kiss-o'-death {code}: {}", code.meaning())]
    KissOfDeath { code: KissCode },

    #[error("the server is not synchronised (leap indicator 3)")]
    Unsynchronised,

    #[error("stratum {stratum} is out of range (1 to 15)")]
    Stratum { stratum: u8 },

    #[error("its {which} timestamp is zero")]
    MissingTimestamp { which: &'static str },
}

/// The four ASCII characters of a kiss-o'-death reply (stratum 0), such as `RATE` or `DENY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KissCode(pub [u8; 4]);

impl KissCode {
    /// What the code asks of the client (RFC 5905, section 7.4).
    pub fn meaning(&self) -> &'static str {
        match &self.0 {
            b"RATE" => "the server asks us to query less often",
            b"DENY" | b"RSTR" => "the server refuses us; use another server",
            _ => "the server refused the request",
        }
    }
}

impl fmt::Display for KissCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic()) {
            self.0
                .iter()
                .try_for_each(|&b| write!(f, "{}", char::from(b)))
        } else {
            write!(f, "0x{:08x}", u32::from_be_bytes(self.0))
        }
    }
}

/// A signed span of time in nanoseconds (±292 years): how far the local clock is behind the
/// server (positive: the clock must move forward).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// The size of the offset, whichever its direction.
    pub const fn abs(self) -> Duration {
        Duration::from_nanos(self.0.unsigned_abs())
    }

    fn saturating_from(nanos: i128) -> Self {
        Self(nanos.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:+.6} s", self.as_secs_f64())
    }
}

/// Nanoseconds since the Unix epoch of `t`, negative before it.
pub fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// The time `nanos` after the Unix epoch, or `None` when `SystemTime` cannot hold it.
pub fn from_unix_nanos(nanos: i128) -> Option<SystemTime> {
    let span = Duration::new(
        u64::try_from(nanos.unsigned_abs() / NANOS_PER_SEC as u128).ok()?,
        (nanos.unsigned_abs() % NANOS_PER_SEC as u128) as u32,
    );
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    }
}

/// An NTP timestamp as it is on the wire: 32 bits of seconds since 1900 modulo 2^32 and 32 bits
/// of fraction of a second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    pub const fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub const fn fraction(self) -> u32 {
        self.0 as u32
    }

    /// The wire form of a time given in nanoseconds since the Unix epoch; its era is dropped.
    pub fn from_unix_nanos(nanos: i128) -> Self {
        let since_1900 = nanos + NTP_TO_UNIX_SECS * NANOS_PER_SEC;
        // Truncating to u32 is the modulo 2^32 that drops the era.
        let secs = since_1900.div_euclid(NANOS_PER_SEC) as u32;
        let fraction = ((since_1900.rem_euclid(NANOS_PER_SEC) << 32) / NANOS_PER_SEC) as u32;
        Self((u64::from(secs) << 32) | u64::from(fraction))
    }

    /// Nanoseconds since the Unix epoch of this timestamp, read in the era that puts it closest
    /// to `pivot` (nanoseconds since the Unix epoch, normally the local clock).
    pub fn to_unix_nanos(self, pivot: i128) -> i128 {
        let pivot_secs = (pivot + NTP_TO_UNIX_SECS * NANOS_PER_SEC).div_euclid(NANOS_PER_SEC);
        // The signed distance modulo 2^32 is the one within ±68 years of the pivot.
        let ahead = self.seconds().wrapping_sub(pivot_secs as u32) as i32;
        let secs = pivot_secs + i128::from(ahead) - NTP_TO_UNIX_SECS;
        let fraction_nanos = (i128::from(self.fraction()) * NANOS_PER_SEC + (1 << 31)) >> 32;
        secs * NANOS_PER_SEC + fraction_nanos
    }
}

/// An NTP header, the whole of an SNTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Leap indicator, 2 bits; 3 means the sender is not synchronised.
    pub leap: u8,
    /// Version number, 3 bits.
    pub version: u8,
    /// Mode, 3 bits: 3 is a client, 4 a server.
    pub mode: u8,
    /// 1 for a primary server, up to 15; 0 marks a kiss-o'-death.
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub root_delay: u32,
    pub root_dispersion: u32,
    /// The reference's identifier, or the kiss code when the stratum is 0.
    pub reference_id: [u8; 4],
    pub reference: NtpTimestamp,
    /// T1 as the client sent it, echoed by the server.
    pub origin: NtpTimestamp,
    /// T2: when the server received the request.
    pub receive: NtpTimestamp,
    /// T3: when the server sent the reply (in a request: our cookie).
    pub transmit: NtpTimestamp,
}

impl Packet {
    /// A client request whose transmit timestamp is `cookie`; all else is zero.
    pub fn request(cookie: NtpTimestamp) -> Self {
        Self {
            leap: 0,
            version: VERSION,
            mode: MODE_CLIENT,
            stratum: 0,
            poll: 0,
            precision: 0,
            root_delay: 0,
            root_dispersion: 0,
            reference_id: [0; 4],
            reference: NtpTimestamp(0),
            origin: NtpTimestamp(0),
            receive: NtpTimestamp(0),
            transmit: cookie,
        }
    }

    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut out = [0; PACKET_LEN];
        out[0] = (self.leap & 0b11) << 6 | (self.version & 0b111) << 3 | (self.mode & 0b111);
        out[1] = self.stratum;
        out[2] = self.poll as u8;
        out[3] = self.precision as u8;
        out[4..8].copy_from_slice(&self.root_delay.to_be_bytes());
        out[8..12].copy_from_slice(&self.root_dispersion.to_be_bytes());
        out[12..16].copy_from_slice(&self.reference_id);
        out[16..24].copy_from_slice(&self.reference.0.to_be_bytes());
        out[24..32].copy_from_slice(&self.origin.0.to_be_bytes());
        out[32..40].copy_from_slice(&self.receive.0.to_be_bytes());
        out[40..48].copy_from_slice(&self.transmit.0.to_be_bytes());
        out
    }

    /// Reads the header at the start of `bytes`; what follows it is ignored. Any input is safe.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReplyError> {
        let Some(h) = bytes.first_chunk::<PACKET_LEN>() else {
            return Err(ReplyError::Short { len: bytes.len() });
        };
        let word = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let stamp = |at: usize| NtpTimestamp(u64::from(word(at)) << 32 | u64::from(word(at + 4)));
        Ok(Self {
            leap: h[0] >> 6,
            version: (h[0] >> 3) & 0b111,
            mode: h[0] & 0b111,
            stratum: h[1],
            poll: h[2] as i8,
            precision: h[3] as i8,
            root_delay: word(4),
            root_dispersion: word(8),
            reference_id: [h[12], h[13], h[14], h[15]],
            reference: stamp(16),
            origin: stamp(24),
            receive: stamp(32),
            transmit: stamp(40),
        })
    }

    /// Checks that this packet is a usable server answer to the request whose transmit
    /// timestamp was `cookie`. The origin is checked first: only a reply that carries the
    /// cookie is known to come from the server, so only then are its other faults worth
    /// reporting (a forged kiss-o'-death must not stop us).
    pub fn check_reply(&self, cookie: NtpTimestamp) -> Result<(), ReplyError> {
        if self.origin != cookie {
            return Err(ReplyError::WrongOrigin);
        }
        if self.mode != MODE_SERVER {
            return Err(ReplyError::NotServer { mode: self.mode });
        }
        if !(3..=4).contains(&self.version) {
            return Err(ReplyError::Version {
                version: self.version,
            });
        }
        if self.stratum == 0 {
            return Err(ReplyError::KissOfDeath {
                code: KissCode(self.reference_id),
            });
        }
        if self.leap == LEAP_UNSYNCHRONISED {
            return Err(ReplyError::Unsynchronised);
        }
        if self.stratum > 15 {
            return Err(ReplyError::Stratum {
                stratum: self.stratum,
            });
        }
        if self.transmit.0 == 0 {
            return Err(ReplyError::MissingTimestamp { which: "transmit" });
        }
        if self.receive.0 == 0 {
            return Err(ReplyError::MissingTimestamp { which: "receive" });
        }
        Ok(())
    }
}

/// One measurement of the local clock against a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub server: SocketAddr,
    /// θ: what to add to the local clock to agree with the server.
    pub offset: Offset,
    /// δ: the round trip, less the time the server held the request.
    pub delay: Duration,
    pub stratum: u8,
}

impl Sample {
    /// The sample that `reply` (already checked) gives, for a request sent at local time `t1`
    /// and answered at local time `t4` (nanoseconds since the Unix epoch).
    pub fn measure(server: SocketAddr, reply: &Packet, t1: i128, t4: i128) -> Self {
        let t2 = reply.receive.to_unix_nanos(t1);
        let t3 = reply.transmit.to_unix_nanos(t4);
        let (offset, delay) = offset_and_delay(t1, t2, t3, t4);
        Self {
            server,
            offset,
            delay,
            stratum: reply.stratum,
        }
    }
}

/// θ = ((T2 − T1) + (T3 − T4)) / 2 and δ = (T4 − T1) − (T3 − T2), all in nanoseconds. A negative
/// delay (clock granularity, or a clock stepped mid-query) counts as zero.
pub fn offset_and_delay(t1: i128, t2: i128, t3: i128, t4: i128) -> (Offset, Duration) {
    let offset = Offset::saturating_from(((t2 - t1) + (t3 - t4)) / 2);
    let delay = ((t4 - t1) - (t3 - t2)).clamp(0, u64::MAX.into()) as u64;
    (offset, Duration::from_nanos(delay))
}

/// The clock that SNTP measures and [`Sync`] steps.
pub trait Clock {
    /// The time now, on this clock.
    fn now(&self) -> SystemTime;
    /// Moves the clock by `by` at once (positive: forward).
    fn step(&mut self, by: Offset) -> io::Result<()>;
}

/// The system's wall clock, `CLOCK_REALTIME`. Stepping it needs CAP_SYS_TIME.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    fn read() -> io::Result<Timespec> {
        Ok(clock_gettime(ClockId::Realtime))
    }

    fn timespec_nanos(ts: &Timespec) -> i128 {
        i128::from(ts.tv_sec) * NANOS_PER_SEC + i128::from(ts.tv_nsec)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        // CLOCK_REALTIME cannot fail to be read; std reads the same clock.
        Self::read()
            .ok()
            .and_then(|ts| from_unix_nanos(Self::timespec_nanos(&ts)))
            .unwrap_or_else(SystemTime::now)
    }

    fn step(&mut self, by: Offset) -> io::Result<()> {
        let mut ts = Self::read()?;
        let target = Self::timespec_nanos(&ts) + i128::from(by.as_nanos());
        let out_of_range = || io::Error::new(io::ErrorKind::InvalidInput, "time out of range");
        ts.tv_sec = target
            .div_euclid(NANOS_PER_SEC)
            .try_into()
            .map_err(|_| out_of_range())?;
        ts.tv_nsec = target
            .rem_euclid(NANOS_PER_SEC)
            .try_into()
            .map_err(|_| out_of_range())?;
        clock_settime(ClockId::Realtime, ts).map_err(io::Error::from)
    }
}

/// A random request cookie, or, when the kernel has no randomness yet (early boot), the local
/// time `t1` as RFC 4330 has it: the reply is still matched, only easier to forge.
fn cookie(t1: i128) -> NtpTimestamp {
    let mut buf = [0u8; 8];
    let got = getrandom(&mut buf, GetRandomFlags::NONBLOCK);
    let random = u64::from_ne_bytes(buf);
    if got.is_ok_and(|n| n == buf.len()) && random != 0 {
        NtpTimestamp(random)
    } else {
        // Distinct even when two queries start in the same nanosecond.
        static SEQ: AtomicU64 = AtomicU64::new(1);
        NtpTimestamp(NtpTimestamp::from_unix_nanos(t1).0 ^ SEQ.fetch_add(1, Ordering::Relaxed))
    }
}

/// Measures the system clock against `server`, waiting at most `timeout` for its answer.
pub fn query(server: SocketAddr, timeout: Duration) -> Result<Sample> {
    query_with(&SystemClock, server, timeout)
}

/// Measures `clock` against `server`, waiting at most `timeout` for its answer. The socket is
/// connected, so the kernel drops datagrams from other addresses; those from the server that
/// do not carry our cookie are ignored until the deadline.
pub fn query_with(clock: &impl Clock, server: SocketAddr, timeout: Duration) -> Result<Sample> {
    let deadline = Instant::now() + timeout;
    let fail = |op| move |source| Error::Socket { server, op, source };
    let any: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).map_err(fail("binding a UDP socket"))?;
    socket.connect(server).map_err(fail("connecting"))?;

    let t1 = unix_nanos(clock.now());
    let cookie = cookie(t1);
    socket
        .send(&Packet::request(cookie).encode())
        .map_err(fail("sending the request"))?;

    let mut buf = [0u8; RECV_BUF];
    let mut ignored = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout {
                server,
                timeout,
                ignored,
            });
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(fail("setting the receive timeout"))?;
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail("receiving the reply")(e)),
        };
        let t4 = unix_nanos(clock.now());
        let received = buf.get(..len).unwrap_or(&buf);
        match Packet::parse(received).and_then(|p| p.check_reply(cookie).map(|()| p)) {
            Ok(reply) => return Ok(Sample::measure(server, &reply, t1, t4)),
            Err(ReplyError::Short { .. } | ReplyError::WrongOrigin) => ignored += 1,
            Err(source) => return Err(Error::Reply { server, source }),
        }
    }
}

/// A configured NTP server: a host name or IP address, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
}

impl Server {
    /// The server's addresses, resolved now (names may only resolve once the network is up).
    pub fn resolve(&self) -> Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|source| Error::Resolve {
                host: self.host.clone(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(Error::NoAddress {
                host: self.host.clone(),
            });
        }
        Ok(addrs)
    }
}

impl FromStr for Server {
    type Err = Error;

    /// `host`, `host:port`, an IP address, or `[v6]:port`; the port defaults to 123.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::BadServer {
            server: s.to_owned(),
            reason,
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self {
                host: ip.to_string(),
                port: PORT,
            });
        }
        let (host, port) = match s.split_once(':') {
            None => (s, PORT),
            Some((host, port)) => {
                let port = port
                    .parse()
                    .map_err(|_| bad("the port is not 0 to 65535"))?;
                (host, port)
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if port == 0 {
            return Err(bad("port 0 cannot be queried"));
        }
        if host.contains(|c: char| c.is_whitespace() || c.is_control() || "[]:/".contains(c)) {
            return Err(bad("the host has characters no name or address has"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How [`Sync`] samples, when it steps, and how often it checks again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Asked in order; the first that answers is used for the round.
    pub servers: Vec<Server>,
    /// Queries per round to the answering server; the one with the lowest delay is kept.
    pub samples: u32,
    /// Pause between two queries of a round, so that servers' rate limits are not hit.
    pub sample_spacing: Duration,
    /// How long one query waits for its answer.
    pub timeout: Duration,
    /// The clock is stepped when it is off by more than this; smaller offsets are reported.
    pub step_threshold: Duration,
    /// Interval after a step or a failure; it doubles after each quiet round, up to the maximum.
    pub min_interval: Duration,
    pub max_interval: Duration,
}

impl SyncConfig {
    /// The defaults: 3 samples 2 s apart, 2 s timeout, 128 ms step threshold (as ntpd), checks
    /// every 64 s doubling to 1024 s.
    pub fn new(servers: Vec<Server>) -> Self {
        Self {
            servers,
            samples: 3,
            sample_spacing: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            step_threshold: Duration::from_millis(128),
            min_interval: Duration::from_secs(64),
            max_interval: Duration::from_secs(1024),
        }
    }
}

/// The outcome of the last successful round, for the caller's log and status API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// When the round ended, on the clock after any step.
    pub at: SystemTime,
    /// The server as configured, and the address that answered.
    pub server: String,
    pub address: SocketAddr,
    pub stratum: u8,
    /// The measured offset (before any step) and the sample's delay.
    pub offset: Offset,
    pub delay: Duration,
    /// Whether this round stepped the clock by `offset`.
    pub stepped: bool,
}

/// Keeps a [`Clock`] near the configured servers' time: [`Sync::boot`] once, then [`Sync::run`]
/// (or [`Sync::round`] every [`Sync::interval`] on the caller's own schedule).
pub struct Sync<C: Clock> {
    config: SyncConfig,
    clock: C,
    status: Option<Status>,
    interval: Duration,
}

impl<C: Clock> Sync<C> {
    pub fn new(config: SyncConfig, clock: C) -> Self {
        let interval = config.min_interval;
        Self {
            config,
            clock,
            status: None,
            interval,
        }
    }

    /// The last successful round, if any.
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    /// How long to wait before the next round.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// One check: samples the first server that answers, steps the clock if it is off by more
    /// than the threshold, and records the outcome.
    pub fn round(&mut self) -> Result<Status> {
        let (server, sample) = match self.best_sample() {
            Ok(found) => found,
            Err(e) => {
                self.interval = self.config.min_interval;
                return Err(e);
            }
        };
        let stepped = sample.offset.abs() > self.config.step_threshold;
        if stepped {
            self.clock
                .step(sample.offset)
                .map_err(|source| Error::Step {
                    offset: sample.offset,
                    source,
                })?;
        }
        self.interval = if stepped || self.status.is_none() {
            self.config.min_interval
        } else {
            (self.interval * 2).min(self.config.max_interval)
        };
        let status = Status {
            at: self.clock.now(),
            server,
            address: sample.server,
            stratum: sample.stratum,
            offset: sample.offset,
            delay: sample.delay,
            stepped,
        };
        self.status = Some(status.clone());
        Ok(status)
    }

    /// Rounds until one succeeds, waiting 1 s, 2 s, 4 s … (at most the minimum interval) between
    /// them, for at most `give_up_after` (`Duration::MAX`: until a server answers).
    pub fn boot(&mut self, give_up_after: Duration) -> Result<Status> {
        let deadline = Instant::now().checked_add(give_up_after);
        let mut wait = Duration::from_secs(1);
        loop {
            match self.round() {
                Ok(status) => return Ok(status),
                Err(e) if deadline.is_some_and(|d| Instant::now() + wait >= d) => return Err(e),
                Err(_) => std::thread::sleep(wait),
            }
            wait = (wait * 2).min(self.config.min_interval);
        }
    }

    /// Runs a round every [`Sync::interval`] and hands each outcome to `report`, until a
    /// message arrives on `stop` or its sender is dropped.
    pub fn run(&mut self, stop: &Receiver<()>, mut report: impl FnMut(&Result<Status>)) {
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(self.interval) {
            report(&self.round());
        }
    }

    /// The servers in order; from the first that answers, the lowest-delay sample of a round.
    fn best_sample(&self) -> Result<(String, Sample)> {
        let mut last = Error::NoServers;
        for server in &self.config.servers {
            let addrs = match server.resolve() {
                Ok(addrs) => addrs,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            for addr in addrs {
                match self.sample(addr) {
                    Ok(sample) => return Ok((server.to_string(), sample)),
                    Err(e) => last = e,
                }
            }
        }
        if self.config.servers.is_empty() {
            return Err(last);
        }
        let tried = self.config.servers.iter().map(Server::to_string);
        Err(Error::NoServerAnswered {
            tried: tried.collect::<Vec<_>>().join(", "),
            last: Box::new(last),
        })
    }

    /// Up to `samples` queries of `addr`; stops at the first failure and keeps what it has.
    fn sample(&self, addr: SocketAddr) -> Result<Sample> {
        let mut best: Option<Sample> = None;
        for i in 0..self.config.samples.max(1) {
            if i > 0 {
                std::thread::sleep(self.config.sample_spacing);
            }
            match query_with(&self.clock, addr, self.config.timeout) {
                Ok(s) if best.is_none_or(|b| s.delay < b.delay) => best = Some(s),
                Ok(_) => {}
                Err(e) => return best.ok_or(e),
            }
        }
        best.ok_or(Error::NoServers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const SEC: i128 = NANOS_PER_SEC;
    /// 2036-02-07T06:28:16Z, where NTP era 0 ends.
    const ERA1_UNIX_SECS: i128 = (1 << 32) - NTP_TO_UNIX_SECS;

    #[test]
    fn timestamps_known_vectors() {
        // The Unix epoch is 2_208_988_800 s after 1900.
        assert_eq!(NtpTimestamp::from_unix_nanos(0).0, 0x83AA_7E80_0000_0000);
        // 2000-01-01T00:00:00.5Z.
        let y2k = 946_684_800 * SEC + SEC / 2;
        assert_eq!(NtpTimestamp::from_unix_nanos(y2k).0, 0xBC17_C200_8000_0000);
        assert_eq!(NtpTimestamp(0xBC17_C200_8000_0000).to_unix_nanos(y2k), y2k);
        // 1900-01-01 itself.
        assert_eq!(NtpTimestamp::from_unix_nanos(-NTP_TO_UNIX_SECS * SEC).0, 0);
    }

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        for nanos in [
            0,
            1,
            999_999_999,
            1_700_000_000 * SEC + 123_456_789,
            ERA1_UNIX_SECS * SEC - 1,
            ERA1_UNIX_SECS * SEC + 987_654_321,
            -5 * SEC + 3,
        ] {
            let ts = NtpTimestamp::from_unix_nanos(nanos);
            assert_eq!(ts.to_unix_nanos(nanos), nanos, "{nanos}");
            assert_eq!(
                ts.to_unix_nanos(nanos + 60 * 365 * 86_400 * SEC),
                nanos,
                "{nanos}"
            );
        }
    }

    #[test]
    fn era_is_the_one_closest_to_the_pivot() {
        let zero = NtpTimestamp(0);
        // Seconds 0 read near 1900 is 1900; read in 2036 or 2100 it is the start of era 1.
        assert_eq!(
            zero.to_unix_nanos(-NTP_TO_UNIX_SECS * SEC),
            -NTP_TO_UNIX_SECS * SEC
        );
        assert_eq!(
            zero.to_unix_nanos(ERA1_UNIX_SECS * SEC),
            ERA1_UNIX_SECS * SEC
        );
        assert_eq!(
            zero.to_unix_nanos(4_102_444_800 * SEC),
            ERA1_UNIX_SECS * SEC
        );
        // The last second of era 0, read just after the rollover, stays in era 0.
        let last = NtpTimestamp(0xFFFF_FFFF_0000_0000);
        let after = (ERA1_UNIX_SECS + 1) * SEC;
        assert_eq!(last.to_unix_nanos(after), (ERA1_UNIX_SECS - 1) * SEC);
        // A clock reset to 1970 still reads a 2025 server time as 2025 (55 years < 68).
        let t2025 = 1_735_689_600 * SEC;
        assert_eq!(NtpTimestamp::from_unix_nanos(t2025).to_unix_nanos(0), t2025);
    }

    #[test]
    fn offset_and_delay_math() {
        // Server 1 s ahead, 20 ms each way, 1 ms inside the server.
        let t1 = 1_000 * SEC;
        let t2 = t1 + SEC + 20_000_000;
        let t3 = t2 + 1_000_000;
        let t4 = t1 + 41_000_000;
        let (offset, delay) = offset_and_delay(t1, t2, t3, t4);
        assert_eq!(offset, Offset::from_nanos(1_000_000_000));
        assert_eq!(delay, Duration::from_millis(40));
        // Server held the request longer than the round trip took: delay counts as zero.
        let (offset, delay) = offset_and_delay(0, 30, 50, 10);
        assert_eq!((offset, delay), (Offset::from_nanos(35), Duration::ZERO));
        let (offset, _) = offset_and_delay(3_600 * SEC, 0, 0, 3_600 * SEC);
        assert_eq!(offset.as_nanos(), -3_600 * 1_000_000_000);
        assert_eq!(offset.abs(), Duration::from_secs(3_600));
        assert_eq!(offset.to_string(), "-3600.000000 s");
    }

    #[test]
    fn offset_across_the_2036_rollover() {
        // Local clock just before the rollover, server 2 s ahead: its timestamps wrap to
        // era 1 and must still read as 2 s ahead, not 136 years behind.
        let t1 = ERA1_UNIX_SECS * SEC - SEC;
        let t4 = t1 + 10_000_000;
        let mut reply = Packet::request(NtpTimestamp(1));
        reply.receive = NtpTimestamp::from_unix_nanos(t1 + 2 * SEC + 5_000_000);
        reply.transmit = NtpTimestamp::from_unix_nanos(t1 + 2 * SEC + 5_000_000);
        assert!(reply.receive.seconds() < 5, "the server's time is in era 1");
        let server = "127.0.0.1:123".parse().unwrap();
        let sample = Sample::measure(server, &reply, t1, t4);
        assert_eq!(sample.offset, Offset::from_nanos(2_000_000_000));
        assert_eq!(sample.delay, Duration::from_millis(10));
    }

    fn reply_to(cookie: NtpTimestamp) -> Packet {
        let now = unix_nanos(SystemTime::now());
        Packet {
            leap: 0,
            version: 4,
            mode: MODE_SERVER,
            stratum: 2,
            poll: 6,
            precision: -20,
            root_delay: 0x10,
            root_dispersion: 0x20,
            reference_id: *b"GPS\0",
            reference: NtpTimestamp::from_unix_nanos(now - SEC),
            origin: cookie,
            receive: NtpTimestamp::from_unix_nanos(now),
            transmit: NtpTimestamp::from_unix_nanos(now + 1_000),
        }
    }

    #[test]
    fn request_encoding() {
        let bytes = Packet::request(NtpTimestamp(0x0102_0304_0506_0708)).encode();
        assert_eq!(bytes[0], 0x23, "LI 0, VN 4, mode 3");
        assert!(bytes[1..40].iter().all(|&b| b == 0));
        assert_eq!(bytes[40..], [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn packet_round_trips_and_ignores_trailing_bytes() {
        let p = reply_to(NtpTimestamp(42));
        let mut bytes = p.encode().to_vec();
        assert_eq!(Packet::parse(&bytes), Ok(p));
        bytes.extend_from_slice(&[0xAA; 20]); // an extension field or MAC
        assert_eq!(Packet::parse(&bytes), Ok(p));
        assert_eq!(p.check_reply(NtpTimestamp(42)), Ok(()));
    }

    #[test]
    fn hostile_replies_are_refused() {
        let cookie = NtpTimestamp(0xDEAD_BEEF_0000_0001);
        let good = reply_to(cookie);
        let check = |p: Packet| Packet::parse(&p.encode()).unwrap().check_reply(cookie);

        assert_eq!(
            Packet::parse(&[0x24; 47]),
            Err(ReplyError::Short { len: 47 })
        );
        assert_eq!(Packet::parse(&[]), Err(ReplyError::Short { len: 0 }));
        assert_eq!(
            check(Packet { mode: 3, ..good }),
            Err(ReplyError::NotServer { mode: 3 })
        );
        assert_eq!(
            check(Packet { mode: 5, ..good }),
            Err(ReplyError::NotServer { mode: 5 })
        );
        assert_eq!(
            check(Packet { version: 7, ..good }),
            Err(ReplyError::Version { version: 7 })
        );
        assert_eq!(
            check(Packet {
                origin: NtpTimestamp(cookie.0 + 1),
                ..good
            }),
            Err(ReplyError::WrongOrigin)
        );
        // Unanswered requests leave origin zero; that never matches a cookie.
        assert_eq!(
            check(Packet {
                origin: NtpTimestamp(0),
                ..good
            }),
            Err(ReplyError::WrongOrigin)
        );
        let kod = Packet {
            leap: 3,
            stratum: 0,
            reference_id: *b"RATE",
            ..good
        };
        assert_eq!(
            check(kod),
            Err(ReplyError::KissOfDeath {
                code: KissCode(*b"RATE")
            })
        );
        let deny = check(Packet {
            stratum: 0,
            reference_id: *b"DENY",
            ..good
        });
        assert_eq!(
            deny.unwrap_err().to_string(),
            "kiss-o'-death DENY: the server refuses us; use another server"
        );
        assert_eq!(KissCode([0, 1, 2, 0xff]).to_string(), "0x000102ff");
        assert_eq!(
            check(Packet { leap: 3, ..good }),
            Err(ReplyError::Unsynchronised)
        );
        assert_eq!(
            check(Packet {
                stratum: 16,
                ..good
            }),
            Err(ReplyError::Stratum { stratum: 16 })
        );
        assert_eq!(
            check(Packet {
                transmit: NtpTimestamp(0),
                ..good
            }),
            Err(ReplyError::MissingTimestamp { which: "transmit" })
        );
        assert_eq!(
            check(Packet {
                receive: NtpTimestamp(0),
                ..good
            }),
            Err(ReplyError::MissingTimestamp { which: "receive" })
        );
        // A forged kiss-o'-death without our cookie is only "not ours".
        let forged = Packet {
            origin: NtpTimestamp(7),
            ..kod
        };
        assert_eq!(check(forged), Err(ReplyError::WrongOrigin));
    }

    #[test]
    fn parse_never_panics() {
        // xorshift64*: deterministic noise of every length around the header's.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let cookie = NtpTimestamp(next());
        for round in 0..20_000 {
            let len = (next() % 100) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && len >= PACKET_LEN {
                bytes[24..32].copy_from_slice(&cookie.0.to_be_bytes());
            }
            if let Ok(p) = Packet::parse(&bytes) {
                assert!(len >= PACKET_LEN);
                assert_eq!(&p.encode()[..], &bytes[..PACKET_LEN]);
                if p.check_reply(cookie).is_ok() {
                    let t = unix_nanos(SystemTime::now());
                    let server = "127.0.0.1:1".parse().unwrap();
                    let _ = Sample::measure(server, &p, t, t);
                }
            }
        }
    }

    #[test]
    fn servers_parse() {
        let s = |text: &str| text.parse::<Server>();
        assert_eq!(
            s("pool.ntp.org").unwrap(),
            Server {
                host: "pool.ntp.org".into(),
                port: 123
            }
        );
        assert_eq!(s("10.0.0.1:1123").unwrap().to_string(), "10.0.0.1:1123");
        assert_eq!(s("fd00::1").unwrap().to_string(), "[fd00::1]:123");
        assert_eq!(s("[fd00::1]:9").unwrap().port, 9);
        assert_eq!(s("time:123").unwrap().host, "time");
        for bad in [
            "",
            ":123",
            "time:",
            "time:70000",
            "time:0",
            "a b",
            "[fd00::1",
        ] {
            let e = s(bad).unwrap_err().to_string();
            assert!(e.starts_with("ntp server"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cookies_differ() {
        let t = unix_nanos(SystemTime::now());
        assert_ne!(cookie(t), cookie(t));
        assert_ne!(cookie(t).0, 0);
    }

    #[test]
    fn system_clock_reads_the_real_time() {
        // Only `now`: no test steps the host's clock.
        let diff = unix_nanos(SystemClock.now()) - unix_nanos(SystemTime::now());
        assert!(diff.abs() < SEC, "{diff}");
    }

    /// A clock `skew` ahead of the real one, whose steps are recorded and applied to the skew.
    #[derive(Clone, Default)]
    struct FakeClock {
        skew: Arc<Mutex<i64>>,
        steps: Arc<Mutex<Vec<Offset>>>,
    }

    impl Clock for FakeClock {
        fn now(&self) -> SystemTime {
            let nanos = unix_nanos(SystemTime::now()) + i128::from(*self.skew.lock().unwrap());
            from_unix_nanos(nanos).unwrap()
        }

        fn step(&mut self, by: Offset) -> io::Result<()> {
            *self.skew.lock().unwrap() += by.as_nanos();
            self.steps.lock().unwrap().push(by);
            Ok(())
        }
    }

    /// A server on the host's loopback that answers each of `count` requests with the datagrams
    /// `answer(request)` gives (none: it stays silent).
    fn fake_server(
        count: usize,
        answer: impl Fn(&Packet) -> Vec<Vec<u8>> + Send + 'static,
    ) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0; 128];
            for _ in 0..count {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let request = Packet::parse(&buf[..len]).unwrap();
                for datagram in answer(&request) {
                    socket.send_to(&datagram, from).unwrap();
                }
            }
        });
        addr
    }

    fn honest(request: &Packet) -> Vec<Vec<u8>> {
        vec![reply_to(request.transmit).encode().to_vec()]
    }

    fn config(addr: SocketAddr) -> SyncConfig {
        SyncConfig {
            sample_spacing: Duration::ZERO,
            timeout: Duration::from_millis(500),
            ..SyncConfig::new(vec![addr.to_string().parse().unwrap()])
        }
    }

    #[test]
    fn query_skips_datagrams_that_are_not_its_answer() {
        let stray = |request: &Packet| {
            let wrong_origin = Packet {
                origin: NtpTimestamp(!request.transmit.0),
                ..reply_to(request.transmit)
            };
            vec![b"short".to_vec(), wrong_origin.encode().to_vec()]
        };
        let addr = fake_server(1, move |request| {
            let mut out = stray(request);
            out.push(reply_to(request.transmit).encode().to_vec());
            out
        });
        let sample = query(addr, Duration::from_secs(2)).unwrap();
        assert_eq!((sample.server, sample.stratum), (addr, 2));

        let addr = fake_server(1, stray);
        let e = query(addr, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, Error::Timeout { ignored: 2, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "ntp server {addr} did not answer within 300ms \
                 (2 datagrams that were not its answer were ignored)"
            )
        );
    }

    #[test]
    fn query_reports_a_kiss_of_death_naming_the_server() {
        let addr = fake_server(1, |request| {
            let kod = Packet {
                stratum: 0,
                reference_id: *b"DENY",
                ..reply_to(request.transmit)
            };
            vec![kod.encode().to_vec()]
        });
        let e = query(addr, Duration::from_secs(2)).unwrap_err();
        let Error::Reply { server, source } = &e else {
            panic!("{e}")
        };
        assert_eq!(*server, addr);
        assert!(matches!(source, ReplyError::KissOfDeath { .. }), "{source}");
        assert_eq!(
            e.to_string(),
            format!("ntp server {addr} sent an unusable reply")
        );
    }

    #[test]
    fn a_refused_round_says_what_the_server_did_wrong() {
        // The network status showed only "no ntp server answered (tried …)", which hid that
        // the server had sent a kiss-o'-death (found by hostile/corpus/sntp).
        let addr = fake_server(1, |request| {
            let kod = Packet {
                stratum: 0,
                reference_id: *b"DENY",
                ..reply_to(request.transmit)
            };
            vec![kod.encode().to_vec()]
        });
        let mut sync = Sync::new(config(addr), FakeClock::default());
        let text = sync.round().unwrap_err().one_line();
        assert!(text.starts_with("no ntp server answered (tried "), "{text}");
        assert!(
            text.ends_with(&format!(
                "ntp server {addr} sent an unusable reply: kiss-o'-death DENY: the server \
                 refuses us; use another server"
            )),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn sync_steps_only_beyond_the_threshold_and_backs_off() {
        let addr = fake_server(6, honest);
        let clock = FakeClock::default();
        *clock.skew.lock().unwrap() = -5_000_000_000; // 5 s behind
        let mut sync = Sync::new(config(addr), clock.clone());
        assert_eq!(sync.interval(), Duration::from_secs(64));

        let first = sync.round().unwrap();
        assert!(first.stepped);
        assert_eq!(first.stratum, 2);
        assert_eq!(first.address, addr);
        assert!(
            (first.offset.as_secs_f64() - 5.0).abs() < 0.1,
            "{}",
            first.offset
        );
        assert_eq!(clock.steps.lock().unwrap().as_slice(), &[first.offset]);
        assert_eq!(sync.interval(), Duration::from_secs(64));

        let second = sync.round().unwrap();
        assert!(!second.stepped, "offset {}", second.offset);
        assert!(second.offset.abs() < Duration::from_millis(100));
        assert_eq!(clock.steps.lock().unwrap().len(), 1);
        assert_eq!(sync.interval(), Duration::from_secs(128));
        assert_eq!(sync.status(), Some(&second));
    }

    #[test]
    fn sync_names_every_server_when_none_answers() {
        let silent = fake_server(10, |_| vec![]);
        let mut cfg = config(silent);
        cfg.timeout = Duration::from_millis(200);
        cfg.servers.push("127.0.0.1:9".parse().unwrap());
        let mut sync = Sync::new(cfg, FakeClock::default());
        let e = sync.round().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("no ntp server answered (tried {silent}, 127.0.0.1:9)")
        );
        assert!(sync.status().is_none());
        let e = Sync::new(SyncConfig::new(vec![]), FakeClock::default())
            .round()
            .unwrap_err();
        assert!(matches!(e, Error::NoServers), "{e}");
    }

    #[test]
    fn sync_run_stops_when_told() {
        let addr = fake_server(1, honest);
        let mut cfg = config(addr);
        cfg.min_interval = Duration::from_millis(10);
        cfg.samples = 1;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sync = Sync::new(cfg, FakeClock::default());
        let mut outcomes = Vec::new();
        sync.run(&rx, |r| {
            outcomes.push(r.as_ref().map(|s| s.stepped).map_err(|e| e.to_string()));
            tx.send(()).unwrap();
        });
        assert_eq!(outcomes, vec![Ok(false)]);
    }
}
