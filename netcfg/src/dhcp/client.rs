//! The DHCP client's state machine (RFC 2131 §4.4), without I/O.
//!
//! The one idea: [`Client`] never reads a clock, a socket or a random source. The caller passes
//! the time into every call, gives a seed once, and carries out the [`Action`]s that come back:
//! send these bytes, apply this lease, remove it. It then calls [`Client::on_timeout`] when
//! [`Client::deadline`] passes and [`Client::on_reply`] when a reply arrives. So every timer,
//! backoff and lease expiry is unit-tested by handing in instants, and the socket loop in
//! [`super::socket`] stays a thin translation.
//!
//! The states and what moves between them:
//!
//! ```text
//! start        ─> INIT-REBOOT with a remembered address, else SELECTING
//! INIT-REBOOT  ─ ACK ─> BOUND;     NAK, or 2 REQUESTs unanswered ─> SELECTING   (broadcast)
//! SELECTING    ─ OFFER ─> REQUESTING             (DISCOVER, retransmitted with backoff)
//! REQUESTING   ─ ACK ─> BOUND;     NAK, or 4 REQUESTs unanswered ─> SELECTING   (broadcast)
//! BOUND        ─ T1 ─> RENEWING
//! RENEWING     ─ ACK ─> BOUND;     T2 ─> REBINDING;   NAK ─> Lost, SELECTING    (unicast)
//! REBINDING    ─ ACK ─> BOUND;     NAK or expiry ─> Lost, SELECTING             (broadcast)
//! any          ─ release ─> RELEASE (unicast) and Lost if bound; STOPPED
//! ```
//!
//! Repeated NAKs without a lease in between wait before SELECTING again (INIT), as
//! retransmissions do, so a server that refuses everything is not flooded.
//!
//! Retransmission follows RFC 2131 §4.1: the first message goes out at once, then after 4, 8,
//! 16, 32, 64, 64 … seconds, each randomised by ±1 s ([`Retransmit`] makes these shorter for
//! tests). RENEWING and REBINDING retransmit after half the time left until T2 or expiry, at
//! least 60 s (§4.4.5). T1 and T2 default to 0.5 and 0.875 of the lease when the server sends
//! none or inconsistent ones. Lease times count from when the REQUEST that won the ACK was
//! first sent, as §4.4.1 asks.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::packet::{self, dns_name, Identity, Reply, ReplyKind, Request};

/// REQUESTs sent in REQUESTING before starting over with a DISCOVER.
const MAX_REQUESTS: u32 = 4;
/// REQUESTs sent in INIT-REBOOT before giving up on the remembered address.
const MAX_REBOOT_REQUESTS: u32 = 2;
/// Shortest wait between REQUESTs in RENEWING and REBINDING (RFC 2131 §4.4.5).
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(60);
/// Longest jitter accepted; more would make the retransmission times meaningless.
const MAX_JITTER: Duration = Duration::from_secs(10);
/// Longest client identifier: one option.
const MAX_CLIENT_ID: usize = 255;

/// Retransmission timing (RFC 2131 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmit {
    /// Wait before the first retransmission; doubled for each next one.
    pub initial: Duration,
    /// Longest wait between retransmissions.
    pub max: Duration,
    /// Each wait is moved by a uniformly random amount in ±`jitter`.
    pub jitter: Duration,
}

impl Default for Retransmit {
    fn default() -> Self {
        Retransmit {
            initial: Duration::from_secs(4),
            max: Duration::from_secs(64),
            jitter: Duration::from_secs(1),
        }
    }
}

/// What the client says about itself and how patient it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Sent as option 12 so the server can name the lease.
    pub hostname: Option<String>,
    /// Option 61; by default hardware type 1 followed by the MAC.
    pub client_id: Option<Vec<u8>>,
    /// The address of an earlier lease, asked for first (INIT-REBOOT).
    pub previous: Option<Ipv4Addr>,
    pub retransmit: Retransmit,
}

/// Why [`Options`] cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("DHCP hostname {0:?} is not a valid host name")]
    Hostname(String),
    #[error("DHCP client identifier of {0} bytes is not 2 to {MAX_CLIENT_ID} bytes long")]
    ClientId(usize),
    #[error("DHCP previous address {0} is not a usable unicast address")]
    Previous(Ipv4Addr),
    #[error(
        "DHCP retransmission timing {0:?} is invalid: the initial wait must be positive, at \
         most the maximum, and longer than the jitter, and the jitter at most 10 s"
    )]
    Retransmit(Retransmit),
}

impl Options {
    fn check(&self, mac: [u8; 6]) -> Result<Identity, OptionsError> {
        let mut id = Identity::new(mac);
        if let Some(name) = &self.hostname {
            match dns_name(name.as_bytes()) {
                Some(clean) if clean == *name => id.hostname = Some(clean),
                _ => return Err(OptionsError::Hostname(name.clone())),
            }
        }
        if let Some(cid) = &self.client_id {
            if !(2..=MAX_CLIENT_ID).contains(&cid.len()) {
                return Err(OptionsError::ClientId(cid.len()));
            }
            id.client_id = cid.clone();
        }
        if let Some(prev) = self.previous {
            if !packet::is_usable(prev) {
                return Err(OptionsError::Previous(prev));
            }
        }
        let r = self.retransmit;
        if r.initial.is_zero()
            || r.initial > r.max
            || r.jitter >= r.initial
            || r.jitter > MAX_JITTER
        {
            return Err(OptionsError::Retransmit(r));
        }
        Ok(id)
    }
}

/// An address lease and everything the server said with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    /// From the subnet mask; the address's classful prefix when the server sent none.
    pub prefix: u8,
    pub broadcast: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub hostname: Option<String>,
    pub ntp: Vec<Ipv4Addr>,
    pub mtu: Option<u16>,
    pub lease_time: Duration,
    /// When to start renewing, counted from `obtained`.
    pub t1: Duration,
    /// When to start rebinding, counted from `obtained`.
    pub t2: Duration,
    pub server: Ipv4Addr,
    /// When the REQUEST that won this lease was first sent: the lease's times count from here.
    pub obtained: Instant,
}

impl Lease {
    /// Builds the lease an ACK grants, `None` if the ACK lacks what a lease needs (a
    /// [`packet::parse`]d ACK never does).
    fn from_ack(reply: &Reply, obtained: Instant) -> Option<Lease> {
        let lease_secs = reply.lease_time?;
        let (t1, t2) = timers(lease_secs, reply.t1, reply.t2);
        Some(Lease {
            address: reply.yiaddr,
            prefix: reply
                .prefix
                .unwrap_or_else(|| classful_prefix(reply.yiaddr)),
            broadcast: reply.broadcast,
            routers: reply.routers.clone(),
            dns: reply.dns.clone(),
            domain: reply.domain.clone(),
            search: reply.search.clone(),
            hostname: reply.hostname.clone(),
            ntp: reply.ntp.clone(),
            mtu: reply.mtu,
            lease_time: secs(lease_secs),
            t1: secs(t1),
            t2: secs(t2),
            server: reply.server_id?,
            obtained,
        })
    }

    /// T1: when to ask the granting server to extend the lease.
    pub fn renew_at(&self) -> Instant {
        // At most u32::MAX seconds (136 years) past a monotonic instant: no overflow.
        self.obtained + self.t1
    }

    /// T2: when to ask any server.
    pub fn rebind_at(&self) -> Instant {
        self.obtained + self.t2
    }

    /// When the address must no longer be used.
    pub fn expires_at(&self) -> Instant {
        self.obtained + self.lease_time
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// T1 and T2 in seconds: the server's when they are consistent (0 < T1 ≤ T2 < lease), else RFC
/// 2131's defaults of 0.5 and 0.875 of the lease.
fn timers(lease: u32, t1: Option<u32>, t2: Option<u32>) -> (u32, u32) {
    let lease64 = u64::from(lease);
    let t2 = t2
        .filter(|&t| t > 0 && t < lease)
        .unwrap_or((lease64 * 7 / 8) as u32);
    let t1 = t1
        .filter(|&t| t > 0 && t <= t2)
        .unwrap_or((lease / 2).min(t2));
    (t1, t2)
}

/// The prefix of the address's class (RFC 791), for a server that sends no subnet mask.
fn classful_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:67
    Broadcast,
    /// The server's address, port 67.
    Unicast(Ipv4Addr),
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The DHCP message (the UDP payload).
    pub bytes: Vec<u8>,
    pub to: Destination,
    /// The client's address, or `None` while it has none: the message must then go out through
    /// the link layer, from 0.0.0.0.
    pub from: Option<Ipv4Addr>,
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send(Transmit),
    /// Apply this lease. `took` is the time from the start of the exchange (the first DISCOVER
    /// or INIT-REBOOT REQUEST) to the ACK.
    Bound {
        lease: Lease,
        took: Duration,
    },
    /// The lease was extended (the address is unchanged); update its times and options.
    Renewed(Lease),
    /// The lease is gone (expired, refused by a NAK, or released): remove the address.
    Lost,
}

/// Where the client is in RFC 2131's state diagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting to start over after repeated NAKs.
    Init,
    InitReboot,
    Selecting,
    Requesting,
    Bound,
    Renewing,
    Rebinding,
    /// Released or never started; does nothing more.
    Stopped,
}

/// The state machine for one interface. See the module documentation.
#[derive(Debug)]
pub struct Client {
    identity: Identity,
    retransmit: Retransmit,
    previous: Option<Ipv4Addr>,
    rng: SplitMix64,
    phase: Phase,
    /// The transaction in progress; replies with another xid are ignored.
    xid: u32,
    /// Messages sent so far in this phase.
    sent: u32,
    /// When this exchange started: for `secs` and for `took`.
    since: Instant,
    /// When the first REQUEST of this exchange went out: the lease's times count from here.
    requested_at: Instant,
    /// REQUESTING and INIT-REBOOT: the REQUEST being sent (RENEWING and REBINDING derive
    /// theirs from the lease).
    asking: Option<Request>,
    deadline: Option<Instant>,
    /// NAKs since the last lease, to slow down a server that refuses everything.
    naks: u32,
    lease: Option<Lease>,
}

impl Client {
    /// A client for the interface with hardware address `mac`. `seed` drives the transaction
    /// ids and the jitter: random in use, fixed in tests.
    pub fn new(
        mac: [u8; 6],
        options: &Options,
        seed: u64,
        now: Instant,
    ) -> Result<Client, OptionsError> {
        let identity = options.check(mac)?;
        Ok(Client {
            identity,
            retransmit: options.retransmit,
            previous: options.previous,
            rng: SplitMix64(seed),
            phase: Phase::Stopped,
            xid: 0,
            sent: 0,
            since: now,
            requested_at: now,
            asking: None,
            deadline: None,
            naks: 0,
            lease: None,
        })
    }

    /// Starts: asks for the previous address if there is one, else discovers.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        match self.previous {
            Some(requested) => {
                self.begin(Phase::InitReboot);
                self.xid = self.next_u32();
                self.since = now;
                self.requested_at = now;
                self.asking = Some(Request::InitReboot { requested });
                self.schedule_retransmit(now);
                vec![self.send_request(now)]
            }
            None => self.discover(now),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When [`Client::on_timeout`] must next be called; `None` when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }

    pub fn mac(&self) -> [u8; 6] {
        self.identity.mac
    }

    /// Whether `reply` answers the transaction in progress (xid and hardware address).
    pub fn expects(&self, reply: &Reply) -> bool {
        reply.xid == self.xid && reply.chaddr == self.identity.mac
    }

    /// A reply arrived. Replies to other transactions, and those the current phase has no use
    /// for, are ignored.
    pub fn on_reply(&mut self, reply: &Reply, now: Instant) -> Vec<Action> {
        if !self.expects(reply) {
            return Vec::new();
        }
        match (self.phase, reply.kind) {
            (Phase::Selecting, ReplyKind::Offer) => self.take_offer(reply, now),
            (Phase::Requesting | Phase::InitReboot, ReplyKind::Ack) => self.bind(reply, now),
            (Phase::Requesting | Phase::InitReboot, ReplyKind::Nak) => self.refused(reply, now),
            (Phase::Renewing | Phase::Rebinding, ReplyKind::Ack) => self.extend(reply, now),
            (Phase::Renewing | Phase::Rebinding, ReplyKind::Nak) => self.refused(reply, now),
            _ => Vec::new(),
        }
    }

    /// Time passed. Does nothing before [`Client::deadline`].
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        if self.deadline.is_none_or(|d| now < d) {
            return Vec::new();
        }
        match self.phase {
            Phase::Init => self.discover(now),
            Phase::Selecting => {
                self.schedule_retransmit(now);
                vec![self.send_discover(now)]
            }
            Phase::Requesting if self.sent >= MAX_REQUESTS => self.discover(now),
            Phase::InitReboot if self.sent >= MAX_REBOOT_REQUESTS => self.discover(now),
            Phase::Requesting | Phase::InitReboot => {
                self.schedule_retransmit(now);
                vec![self.send_request(now)]
            }
            Phase::Bound | Phase::Renewing | Phase::Rebinding => self.lease_timer(now),
            Phase::Stopped => Vec::new(),
        }
    }

    /// Gives the lease back (for a shutdown) and stops. The caller sends the RELEASE and
    /// removes the address.
    pub fn release(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(lease) = self.lease.take() {
            self.xid = self.next_u32();
            let bytes = packet::release(&self.identity, self.xid, lease.address, lease.server);
            out.push(Action::Send(Transmit {
                bytes,
                to: Destination::Unicast(lease.server),
                from: Some(lease.address),
            }));
            out.push(Action::Lost);
        }
        self.begin(Phase::Stopped);
        self.deadline = None;
        out
    }

    /// Enters `phase`: nothing sent yet in it.
    fn begin(&mut self, phase: Phase) {
        self.phase = phase;
        self.sent = 0;
    }

    /// SELECTING, with a new transaction and a DISCOVER sent now.
    fn discover(&mut self, now: Instant) -> Vec<Action> {
        self.begin(Phase::Selecting);
        self.xid = self.next_u32();
        self.since = now;
        self.asking = None;
        self.schedule_retransmit(now);
        vec![self.send_discover(now)]
    }

    fn take_offer(&mut self, offer: &Reply, now: Instant) -> Vec<Action> {
        let Some(server) = offer.server_id else {
            return Vec::new();
        };
        self.begin(Phase::Requesting);
        self.asking = Some(Request::Selecting {
            requested: offer.yiaddr,
            server,
        });
        self.requested_at = now;
        self.schedule_retransmit(now);
        vec![self.send_request(now)]
    }

    /// An ACK in REQUESTING or INIT-REBOOT.
    fn bind(&mut self, ack: &Reply, now: Instant) -> Vec<Action> {
        if let Some(Request::Selecting { server, .. }) = self.asking {
            if ack.server_id != Some(server) {
                return Vec::new(); // another server's ACK to a REQUEST that chose this one
            }
        }
        let Some(lease) = Lease::from_ack(ack, self.requested_at) else {
            return Vec::new();
        };
        let took = now.saturating_duration_since(self.since);
        self.hold(lease.clone());
        vec![Action::Bound { lease, took }]
    }

    /// An ACK in RENEWING or REBINDING.
    fn extend(&mut self, ack: &Reply, now: Instant) -> Vec<Action> {
        let Some(lease) = Lease::from_ack(ack, self.requested_at) else {
            return Vec::new();
        };
        let same_address = self.lease.as_ref().map(|l| l.address) == Some(lease.address);
        self.hold(lease.clone());
        if same_address {
            vec![Action::Renewed(lease)]
        } else {
            // A server gave a different address while rebinding: drop the old one first.
            let took = now.saturating_duration_since(self.since);
            vec![Action::Lost, Action::Bound { lease, took }]
        }
    }

    /// BOUND with `lease`, waiting for T1.
    fn hold(&mut self, lease: Lease) {
        self.begin(Phase::Bound);
        self.naks = 0;
        self.asking = None;
        self.deadline = Some(lease.renew_at());
        self.lease = Some(lease);
    }

    /// A NAK: whatever the client held or asked for is refused, so it starts over. The first
    /// NAK restarts at once; further ones in a row wait as retransmissions do, so a server that
    /// refuses everything is not flooded.
    fn refused(&mut self, nak: &Reply, now: Instant) -> Vec<Action> {
        let from = match (self.phase, self.asking, &self.lease) {
            (Phase::Requesting, Some(Request::Selecting { server, .. }), _) => Some(server),
            (Phase::Renewing, _, Some(lease)) => Some(lease.server),
            _ => None, // INIT-REBOOT and REBINDING ask every server
        };
        if let (Some(expected), Some(sender)) = (from, nak.server_id) {
            if expected != sender {
                return Vec::new();
            }
        }
        let mut out = Vec::new();
        if self.lease.take().is_some() {
            out.push(Action::Lost);
        }
        self.naks += 1;
        if self.naks == 1 {
            out.extend(self.discover(now));
        } else {
            let wait = self.retransmit_delay(self.naks - 2);
            self.begin(Phase::Init);
            self.deadline = Some(now + wait);
        }
        out
    }

    /// T1, T2 or expiry passed, or a RENEWING/REBINDING retransmission is due. Works from the
    /// lease's times, not from the phase alone, so a late call (after a suspend) does the right
    /// thing.
    fn lease_timer(&mut self, now: Instant) -> Vec<Action> {
        let Some(lease) = self.lease.clone() else {
            return self.discover(now);
        };
        if now >= lease.expires_at() {
            self.lease = None;
            let mut out = vec![Action::Lost];
            out.extend(self.discover(now));
            return out;
        }
        let (phase, until) = if now >= lease.rebind_at() {
            (Phase::Rebinding, lease.expires_at())
        } else {
            (Phase::Renewing, lease.rebind_at())
        };
        if phase != self.phase {
            self.begin(phase);
            self.xid = self.next_u32();
            self.since = now;
            self.requested_at = now;
        }
        // Half the time left, at least a minute, but never past the next transition.
        let wait = (until.saturating_duration_since(now) / 2).max(MIN_RENEW_INTERVAL);
        self.deadline = Some((now + wait).min(until));
        vec![self.send_request(now)]
    }

    fn schedule_retransmit(&mut self, now: Instant) {
        let wait = self.retransmit_delay(self.sent);
        self.deadline = Some(now + wait);
    }

    /// The wait after the `n`th message (counting from 0): `initial · 2ⁿ`, at most `max`, moved
    /// by up to ±`jitter`.
    fn retransmit_delay(&mut self, n: u32) -> Duration {
        let r = self.retransmit;
        let base = r.initial.saturating_mul(1 << n.min(16)).min(r.max);
        let jitter = r.jitter.as_millis() as u64; // at most MAX_JITTER
        if jitter == 0 {
            return base;
        }
        let shift = self.rng.next() % (2 * jitter + 1);
        (base + Duration::from_millis(shift)).saturating_sub(Duration::from_millis(jitter))
    }

    fn send_discover(&mut self, now: Instant) -> Action {
        self.sent += 1;
        let bytes = packet::discover(&self.identity, self.xid, self.secs(now));
        Action::Send(Transmit {
            bytes,
            to: Destination::Broadcast,
            from: None,
        })
    }

    /// The REQUEST this phase sends.
    fn send_request(&mut self, now: Instant) -> Action {
        self.sent += 1;
        let held = self.lease.as_ref().map(|l| (l.address, l.server));
        let (kind, to, from) = match (self.phase, held, self.asking) {
            (Phase::Renewing, Some((ciaddr, server)), _) => (
                Request::Renewing { ciaddr },
                Destination::Unicast(server),
                Some(ciaddr),
            ),
            (Phase::Rebinding, Some((ciaddr, _)), _) => (
                Request::Rebinding { ciaddr },
                Destination::Broadcast,
                Some(ciaddr),
            ),
            // Without an address: INIT-REBOOT or REQUESTING.
            (_, _, Some(kind)) => (kind, Destination::Broadcast, None),
            _ => unreachable!("a REQUEST is only sent with an offer, an old address or a lease"),
        };
        let bytes = packet::request(&self.identity, self.xid, self.secs(now), kind);
        Action::Send(Transmit { bytes, to, from })
    }

    /// Seconds since the exchange began, for the `secs` field.
    fn secs(&self, now: Instant) -> u16 {
        let s = now.saturating_duration_since(self.since).as_secs();
        u16::try_from(s).unwrap_or(u16::MAX)
    }

    fn next_u32(&mut self) -> u32 {
        (self.rng.next() >> 32) as u32
    }
}

/// SplitMix64: small, fast and good enough for transaction ids and jitter, which need to be
/// unpredictable across devices (the seed is), not cryptographically strong.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::packet::parse;
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable};

    const MAC: [u8; 6] = [0x02, 0, 0, 0x77, 0, 1];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const OTHER_SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn no_jitter() -> Options {
        Options {
            retransmit: Retransmit {
                jitter: Duration::ZERO,
                ..Retransmit::default()
            },
            ..Options::default()
        }
    }

    fn client(options: &Options, t0: Instant) -> Client {
        Client::new(MAC, options, 42, t0).unwrap()
    }

    /// The one message sent among `actions`, decoded.
    fn sent(actions: &[Action]) -> (Message, Destination, Option<Ipv4Addr>) {
        let sends: Vec<&Transmit> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(sends.len(), 1, "expected one message in {actions:?}");
        let msg = Message::decode(&mut Decoder::new(&sends[0].bytes)).unwrap();
        (msg, sends[0].to, sends[0].from)
    }

    fn kind(msg: &Message) -> MessageType {
        msg.opts().msg_type().unwrap()
    }

    /// A server reply of `kind` to `xid`, parsed as the client would see it.
    fn reply(kind: MessageType, xid: u32, server: Ipv4Addr, lease: u32) -> Reply {
        let zero = Ipv4Addr::UNSPECIFIED;
        let yiaddr = if kind == MessageType::Nak { zero } else { ADDR };
        let mut msg = Message::new_with_id(xid, zero, yiaddr, zero, zero, &MAC);
        msg.set_opcode(Opcode::BootReply);
        let o = msg.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(server));
        if kind != MessageType::Nak {
            o.insert(DhcpOption::AddressLeaseTime(lease));
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![server]));
        }
        parse(&msg.to_vec().unwrap()).unwrap()
    }

    /// A client bound at `t0` with a 1000 s lease (T1 500 s, T2 875 s).
    fn bound(t0: Instant) -> Client {
        let mut c = client(&no_jitter(), t0);
        c.start(t0);
        c.on_reply(&reply(MessageType::Offer, c.xid(), SERVER, 1000), t0);
        let out = c.on_reply(&reply(MessageType::Ack, c.xid(), SERVER, 1000), t0);
        assert!(matches!(out[..], [Action::Bound { .. }]), "{out:?}");
        c
    }

    #[test]
    fn discover_offer_request_ack() {
        let t0 = Instant::now();
        let mut c = client(&no_jitter(), t0);
        let (msg, to, from) = sent(&c.start(t0));
        assert_eq!(kind(&msg), MessageType::Discover);
        assert_eq!((to, from), (Destination::Broadcast, None));
        assert_eq!(c.phase(), Phase::Selecting);
        let xid = c.xid();

        // Replies to another transaction or another client are ignored.
        assert!(c
            .on_reply(&reply(MessageType::Offer, xid ^ 1, SERVER, 1000), t0)
            .is_empty());
        let mut foreign = reply(MessageType::Offer, xid, SERVER, 1000);
        foreign.chaddr[5] ^= 1;
        assert!(c.on_reply(&foreign, t0).is_empty());

        let t1 = t0 + Duration::from_millis(3);
        let (msg, to, from) = sent(&c.on_reply(&reply(MessageType::Offer, xid, SERVER, 1000), t1));
        assert_eq!(kind(&msg), MessageType::Request);
        assert_eq!(msg.xid(), xid, "REQUEST keeps the DISCOVER's xid");
        assert_eq!((to, from), (Destination::Broadcast, None));
        assert_eq!(
            msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(c.phase(), Phase::Requesting);

        // An ACK from a server that was not chosen is ignored.
        assert!(c
            .on_reply(&reply(MessageType::Ack, xid, OTHER_SERVER, 1000), t1)
            .is_empty());

        let t2 = t0 + Duration::from_millis(5);
        let out = c.on_reply(&reply(MessageType::Ack, xid, SERVER, 1000), t2);
        let [Action::Bound { lease, took }] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!(*took, Duration::from_millis(5));
        assert_eq!(lease.address, ADDR);
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.routers, [SERVER]);
        assert_eq!(lease.server, SERVER);
        assert_eq!(lease.obtained, t1, "lease times count from the REQUEST");
        assert_eq!((lease.t1, lease.t2), (s(500), s(875)), "RFC 2131 defaults");
        assert_eq!(c.phase(), Phase::Bound);
        assert_eq!(c.deadline(), Some(t1 + s(500)));
        // A repeated ACK changes nothing.
        assert!(c
            .on_reply(&reply(MessageType::Ack, xid, SERVER, 1000), t2)
            .is_empty());
    }

    #[test]
    fn discover_backs_off_exponentially_up_to_64_s() {
        let t0 = Instant::now();
        let mut c = client(&no_jitter(), t0);
        c.start(t0);
        let xid = c.xid();
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let next = c.deadline().unwrap();
            assert!(
                c.on_timeout(next - Duration::from_millis(1)).is_empty(),
                "early"
            );
            waits.push((next - now).as_secs());
            now = next;
            let (msg, _, _) = sent(&c.on_timeout(now));
            assert_eq!(kind(&msg), MessageType::Discover);
            assert_eq!(msg.xid(), xid, "retransmissions keep the xid");
            assert_eq!(u64::from(msg.secs()), (now - t0).as_secs());
        }
        assert_eq!(waits, [4, 8, 16, 32, 64, 64, 64]);
    }

    #[test]
    fn jitter_stays_within_one_second_and_depends_on_the_seed() {
        let t0 = Instant::now();
        let waits = |seed| {
            let mut c = Client::new(MAC, &Options::default(), seed, t0).unwrap();
            c.start(t0);
            let mut now = t0;
            let mut out = Vec::new();
            for n in 0..6u32 {
                let next = c.deadline().unwrap();
                let wait = next - now;
                let base = s(4 << n).min(s(64));
                assert!(
                    wait >= base - s(1) && wait <= base + s(1),
                    "{wait:?} vs {base:?}"
                );
                out.push(wait);
                now = next;
                c.on_timeout(now);
            }
            out
        };
        assert_eq!(waits(1), waits(1), "deterministic for a seed");
        assert_ne!(waits(1), waits(2));
    }

    #[test]
    fn short_initial_timeout_for_tests() {
        let t0 = Instant::now();
        let options = Options {
            retransmit: Retransmit {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(400),
                jitter: Duration::ZERO,
            },
            ..Options::default()
        };
        let mut c = client(&options, t0);
        c.start(t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let next = c.deadline().unwrap();
            waits.push((next - now).as_millis());
            now = next;
            c.on_timeout(now);
        }
        assert_eq!(waits, [100, 200, 400, 400]);
    }

    #[test]
    fn unanswered_requests_start_over() {
        let t0 = Instant::now();
        let mut c = client(&no_jitter(), t0);
        c.start(t0);
        let first_xid = c.xid();
        c.on_reply(&reply(MessageType::Offer, first_xid, SERVER, 1000), t0);
        let mut kinds = Vec::new();
        for _ in 0..MAX_REQUESTS {
            let now = c.deadline().unwrap();
            kinds.push(kind(&sent(&c.on_timeout(now)).0));
        }
        assert_eq!(
            kinds,
            [
                MessageType::Request,
                MessageType::Request,
                MessageType::Request,
                MessageType::Discover
            ]
        );
        assert_eq!(c.phase(), Phase::Selecting);
        assert_ne!(c.xid(), first_xid);
    }

    #[test]
    fn renew_at_t1_unicast_then_rebind_at_t2_broadcast_then_expire() {
        let t0 = Instant::now();
        let mut c = bound(t0);
        let bound_xid = c.xid();

        // T1: a unicast REQUEST with ciaddr, to the server, from the leased address.
        let out = c.on_timeout(t0 + s(500));
        let (msg, to, from) = sent(&out);
        assert_eq!(kind(&msg), MessageType::Request);
        assert_eq!((to, from), (Destination::Unicast(SERVER), Some(ADDR)));
        assert_eq!(msg.ciaddr(), ADDR);
        assert!(!msg.flags().broadcast());
        assert!(msg.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(msg.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert_ne!(c.xid(), bound_xid, "a renewal is a new transaction");
        assert_eq!(c.phase(), Phase::Renewing);
        // Half of the 375 s to T2, but at least 60 s: 187.5 s.
        assert_eq!(
            c.deadline(),
            Some(t0 + s(500) + Duration::from_millis(187_500))
        );
        // Retransmissions: half the time left to T2, at least 60 s, never past T2.
        let mut renew_deadlines = vec![c.deadline().unwrap()];
        while c.phase() == Phase::Renewing {
            let (msg, to, _) = sent(&c.on_timeout(c.deadline().unwrap()));
            assert_eq!(kind(&msg), MessageType::Request);
            if c.phase() == Phase::Renewing {
                assert_eq!(to, Destination::Unicast(SERVER));
                renew_deadlines.push(c.deadline().unwrap());
            } else {
                // T2: broadcast, still from the leased address, any server may answer.
                assert_eq!(to, Destination::Broadcast);
                assert_eq!(msg.ciaddr(), ADDR);
                assert!(msg.opts().get(OptionCode::ServerIdentifier).is_none());
            }
        }
        let ms = |d: &Instant| (*d - t0).as_millis();
        let renew_ms: Vec<u128> = renew_deadlines.iter().map(ms).collect();
        assert_eq!(renew_ms, [687_500, 781_250, 841_250, 875_000]);
        assert_eq!(c.phase(), Phase::Rebinding);

        // Rebinding retransmits by the same rule towards expiry.
        let mut rebind_deadlines = vec![c.deadline().unwrap()];
        while c.deadline().unwrap() < t0 + s(1000) {
            let (_, to, from) = sent(&c.on_timeout(c.deadline().unwrap()));
            assert_eq!((to, from), (Destination::Broadcast, Some(ADDR)));
            rebind_deadlines.push(c.deadline().unwrap());
        }
        let rebind_ms: Vec<u128> = rebind_deadlines.iter().map(ms).collect();
        assert_eq!(rebind_ms, [937_500, 997_500, 1_000_000]);

        // Expiry: the address is lost and the client starts over.
        let out = c.on_timeout(t0 + s(1000));
        assert_eq!(out[0], Action::Lost);
        let (msg, to, from) = sent(&out[1..]);
        assert_eq!(kind(&msg), MessageType::Discover);
        assert_eq!((to, from), (Destination::Broadcast, None));
        assert_eq!(c.phase(), Phase::Selecting);
        assert!(c.lease().is_none());
    }

    #[test]
    fn an_ack_while_renewing_extends_the_lease() {
        let t0 = Instant::now();
        let mut c = bound(t0);
        let t1 = t0 + s(500);
        c.on_timeout(t1);
        let out = c.on_reply(&reply(MessageType::Ack, c.xid(), SERVER, 1000), t1 + s(1));
        let [Action::Renewed(lease)] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!(lease.obtained, t1, "counted from the renewal REQUEST");
        assert_eq!(c.phase(), Phase::Bound);
        assert_eq!(c.deadline(), Some(t1 + s(500)));
    }

    #[test]
    fn a_late_wakeup_goes_straight_to_the_right_phase() {
        let t0 = Instant::now();
        let mut c = bound(t0);
        // Suspended past T2: rebind, not renew.
        let (_, to, _) = sent(&c.on_timeout(t0 + s(900)));
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(c.phase(), Phase::Rebinding);
        // Suspended past expiry.
        let mut c = bound(t0);
        let out = c.on_timeout(t0 + s(5000));
        assert_eq!(out[0], Action::Lost);
        assert_eq!(c.phase(), Phase::Selecting);
    }

    #[test]
    fn a_nak_while_renewing_loses_the_lease() {
        let t0 = Instant::now();
        let mut c = bound(t0);
        c.on_timeout(t0 + s(500));
        // A NAK naming another server is not this lease's server speaking.
        let nak = reply(MessageType::Nak, c.xid(), OTHER_SERVER, 0);
        assert!(c.on_reply(&nak, t0 + s(501)).is_empty());
        let out = c.on_reply(&reply(MessageType::Nak, c.xid(), SERVER, 0), t0 + s(501));
        assert_eq!(out[0], Action::Lost);
        assert_eq!(kind(&sent(&out[1..]).0), MessageType::Discover);
        assert!(c.lease().is_none());
    }

    #[test]
    fn repeated_naks_slow_down() {
        let t0 = Instant::now();
        let mut c = client(&no_jitter(), t0);
        c.start(t0);
        let mut now = t0;
        let mut restarts = Vec::new();
        for _ in 0..4 {
            c.on_reply(&reply(MessageType::Offer, c.xid(), SERVER, 1000), now);
            let out = c.on_reply(&reply(MessageType::Nak, c.xid(), SERVER, 0), now);
            if out.is_empty() {
                assert_eq!(c.phase(), Phase::Init);
                let at = c.deadline().unwrap();
                restarts.push((at - now).as_secs());
                now = at;
                assert_eq!(kind(&sent(&c.on_timeout(now)).0), MessageType::Discover);
            } else {
                restarts.push(0);
                assert_eq!(kind(&sent(&out).0), MessageType::Discover);
            }
        }
        assert_eq!(restarts, [0, 4, 8, 16]);
        // A lease resets the count.
        c.on_reply(&reply(MessageType::Offer, c.xid(), SERVER, 1000), now);
        c.on_reply(&reply(MessageType::Ack, c.xid(), SERVER, 1000), now);
        assert_eq!(c.naks, 0);
    }

    #[test]
    fn init_reboot_asks_for_the_previous_address() {
        let t0 = Instant::now();
        let options = Options {
            previous: Some(ADDR),
            ..no_jitter()
        };
        let mut c = client(&options, t0);
        let (msg, to, from) = sent(&c.start(t0));
        assert_eq!(c.phase(), Phase::InitReboot);
        assert_eq!((to, from), (Destination::Broadcast, None));
        assert_eq!(kind(&msg), MessageType::Request);
        assert!(msg.flags().broadcast());
        assert_eq!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert!(msg.opts().get(OptionCode::ServerIdentifier).is_none());
        let out = c.on_reply(&reply(MessageType::Ack, c.xid(), SERVER, 1000), t0 + s(1));
        assert!(matches!(&out[..], [Action::Bound { lease, .. }] if lease.address == ADDR));
    }

    #[test]
    fn init_reboot_nak_or_silence_falls_back_to_discover() {
        let t0 = Instant::now();
        let options = Options {
            previous: Some(ADDR),
            ..no_jitter()
        };
        let mut c = client(&options, t0);
        c.start(t0);
        let out = c.on_reply(&reply(MessageType::Nak, c.xid(), SERVER, 0), t0);
        assert_eq!(
            kind(&sent(&out).0),
            MessageType::Discover,
            "no Lost: nothing was bound"
        );

        let mut c = client(&options, t0);
        c.start(t0);
        let (msg, _, _) = sent(&c.on_timeout(c.deadline().unwrap()));
        assert_eq!(kind(&msg), MessageType::Request);
        let (msg, _, _) = sent(&c.on_timeout(c.deadline().unwrap()));
        assert_eq!(kind(&msg), MessageType::Discover);
    }

    #[test]
    fn release_sends_a_unicast_release_and_stops() {
        let t0 = Instant::now();
        let mut c = bound(t0);
        let out = c.release();
        let (msg, to, from) = sent(&out);
        assert_eq!(kind(&msg), MessageType::Release);
        assert_eq!((to, from), (Destination::Unicast(SERVER), Some(ADDR)));
        assert_eq!(msg.ciaddr(), ADDR);
        assert_eq!(out.last(), Some(&Action::Lost));
        assert_eq!(c.phase(), Phase::Stopped);
        assert_eq!(c.deadline(), None);
        assert!(c.on_timeout(t0 + s(600)).is_empty());

        // Without a lease there is nothing to release.
        let mut c = client(&no_jitter(), t0);
        c.start(t0);
        assert!(c.release().is_empty());
        assert_eq!(c.phase(), Phase::Stopped);
    }

    #[test]
    fn a_different_address_while_rebinding_replaces_the_lease() {
        let t0 = Instant::now();
        let mut c = bound(t0);
        c.on_timeout(t0 + s(900));
        let mut ack = reply(MessageType::Ack, c.xid(), OTHER_SERVER, 1000);
        ack.yiaddr = Ipv4Addr::new(10, 77, 0, 200);
        let out = c.on_reply(&ack, t0 + s(901));
        assert_eq!(out[0], Action::Lost);
        assert!(matches!(&out[1], Action::Bound { lease, .. } if lease.server == OTHER_SERVER));
    }

    #[test]
    fn timers_follow_the_server_when_consistent() {
        assert_eq!(timers(120, Some(4), Some(6)), (4, 6));
        assert_eq!(timers(1000, None, None), (500, 875));
        assert_eq!(
            timers(1000, Some(900), Some(800)),
            (500, 800),
            "T1 after T2"
        );
        assert_eq!(
            timers(1000, Some(0), Some(2000)),
            (500, 875),
            "zero and past expiry"
        );
        assert_eq!(timers(1000, None, Some(100)), (100, 100));
        assert_eq!(
            timers(u32::MAX, None, None).1,
            (u64::from(u32::MAX) * 7 / 8) as u32
        );
    }

    #[test]
    fn classful_prefix_without_a_mask() {
        assert_eq!(classful_prefix(Ipv4Addr::new(10, 0, 0, 1)), 8);
        assert_eq!(classful_prefix(Ipv4Addr::new(172, 16, 0, 1)), 16);
        assert_eq!(classful_prefix(Ipv4Addr::new(192, 168, 1, 1)), 24);
    }

    #[test]
    fn options_are_checked() {
        let t0 = Instant::now();
        let bad = |o: Options| Client::new(MAC, &o, 1, t0).unwrap_err();
        assert_eq!(
            bad(Options {
                hostname: Some("no spaces".into()),
                ..Options::default()
            }),
            OptionsError::Hostname("no spaces".into())
        );
        assert_eq!(
            bad(Options {
                client_id: Some(vec![1]),
                ..Options::default()
            }),
            OptionsError::ClientId(1)
        );
        assert_eq!(
            bad(Options {
                previous: Some(Ipv4Addr::BROADCAST),
                ..Options::default()
            }),
            OptionsError::Previous(Ipv4Addr::BROADCAST)
        );
        let r = Retransmit {
            initial: s(1),
            max: s(64),
            jitter: s(1),
        };
        assert_eq!(
            bad(Options {
                retransmit: r,
                ..Options::default()
            }),
            OptionsError::Retransmit(r)
        );
    }
}
