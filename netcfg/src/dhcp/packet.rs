//! DHCPv4 messages: the client's requests, built with dhcproto, and the server's replies, read
//! into a bounded, validated [`Reply`].
//!
//! The one idea: a reply is hostile input, so dhcproto never sees it whole. [`parse`] walks the
//! options itself first, keeps only the ones the client uses (joining split ones, RFC 3396), and
//! checks each one's length and text, and then lets dhcproto decode that cleaned message. That
//! matters because dhcproto stops decoding options, silently, at the first one it cannot read,
//! and some of its option decoders assert on lengths. What dhcproto yields is then checked again
//! (a subnet mask must be contiguous, an MTU at least 576, addresses usable) and capped (at most
//! [`MAX_ADDRESSES`] per address list, [`MAX_SEARCH`] search domains). Option overload (52) is
//! not followed: the client announces a [`MAX_MESSAGE_LEN`] large enough that a server has no
//! reason to use it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

/// UDP port servers listen on.
pub const SERVER_PORT: u16 = 67;
/// UDP port clients listen on.
pub const CLIENT_PORT: u16 = 68;
/// Longest message parsed, and the maximum message size the client announces (option 57).
pub const MAX_MESSAGE_LEN: usize = 1500;
/// Requests are padded to this length: BOOTP's minimum, which some relays still insist on.
pub const MIN_REQUEST_LEN: usize = 300;
/// Addresses kept per list (routers, DNS servers, NTP servers); the rest are dropped.
pub const MAX_ADDRESSES: usize = 8;
/// Search domains kept; the rest are dropped.
pub const MAX_SEARCH: usize = 6;
/// Smallest MTU accepted (RFC 2132 §5.1, RFC 791).
pub const MIN_MTU: u16 = 576;
/// Shortest lease accepted, in seconds: anything shorter would have the client renewing in a
/// tight loop.
pub const MIN_LEASE_SECS: u32 = 10;
/// Longest host or domain name (RFC 1035 presentation form, without the final dot).
pub const MAX_NAME: usize = 253;
/// Longest server message (option 56) kept, for logs.
pub const MAX_SERVER_MESSAGE: usize = 128;

/// Length of the fixed BOOTP header, up to and including the magic cookie.
const FIXED_LEN: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const HTYPE_ETHERNET: u8 = 1;

/// The options the client asks for (option 55), in this order.
pub const PARAMETER_REQUEST_LIST: [u8; 13] = [1, 3, 6, 12, 15, 26, 28, 42, 51, 54, 58, 59, 119];

/// Who the client is, in every message it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub mac: [u8; 6],
    /// Option 61, sent as is (the default is hardware type 1 and the MAC).
    pub client_id: Vec<u8>,
    /// Option 12, if the device has a name to announce.
    pub hostname: Option<String>,
}

impl Identity {
    /// The identity with the customary client identifier (hardware type 1, then the MAC) and no
    /// hostname.
    pub fn new(mac: [u8; 6]) -> Identity {
        let mut client_id = vec![HTYPE_ETHERNET];
        client_id.extend_from_slice(&mac);
        Identity {
            mac,
            client_id,
            hostname: None,
        }
    }
}

/// The four kinds of DHCPREQUEST (RFC 2131 §4.3.2, table 5), which differ in `ciaddr`, the
/// requested-address option (50) and the server identifier (54).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Taking an offer: requested address and server identifier, no `ciaddr`.
    Selecting {
        requested: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// Asking again for a remembered address after a restart: requested address only.
    InitReboot { requested: Ipv4Addr },
    /// Extending the lease with the server that granted it (unicast): `ciaddr` only.
    Renewing { ciaddr: Ipv4Addr },
    /// Extending the lease with any server (broadcast): `ciaddr` only.
    Rebinding { ciaddr: Ipv4Addr },
}

/// A DHCPDISCOVER.
pub fn discover(id: &Identity, xid: u32, secs: u16) -> Vec<u8> {
    let mut msg = message(id, xid, secs, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
    ask_for_parameters(&mut msg, id);
    encode(&msg)
}

/// A DHCPREQUEST of the given kind.
pub fn request(id: &Identity, xid: u32, secs: u16, kind: Request) -> Vec<u8> {
    let ciaddr = match kind {
        Request::Renewing { ciaddr } | Request::Rebinding { ciaddr } => ciaddr,
        Request::Selecting { .. } | Request::InitReboot { .. } => Ipv4Addr::UNSPECIFIED,
    };
    let mut msg = message(id, xid, secs, MessageType::Request, ciaddr);
    match kind {
        Request::Selecting { requested, server } => {
            msg.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(requested));
            msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        }
        Request::InitReboot { requested } => {
            msg.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(requested));
        }
        Request::Renewing { .. } | Request::Rebinding { .. } => {}
    }
    ask_for_parameters(&mut msg, id);
    encode(&msg)
}

/// A DHCPRELEASE of `address`, for the server that leased it.
pub fn release(id: &Identity, xid: u32, address: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    let mut msg = message(id, xid, 0, MessageType::Release, address);
    msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    encode(&msg)
}

/// The header and the options every message carries. The BROADCAST flag is set exactly when
/// the client has no address yet (`ciaddr` is zero), so that the reply reaches it.
fn message(id: &Identity, xid: u32, secs: u16, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
    let zero = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(xid, ciaddr, zero, zero, zero, &id.mac);
    let flags = if ciaddr.is_unspecified() && kind != MessageType::Release {
        Flags::default().set_broadcast()
    } else {
        Flags::default()
    };
    msg.set_opcode(Opcode::BootRequest)
        .set_secs(secs)
        .set_flags(flags);
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    msg.opts_mut()
        .insert(DhcpOption::ClientIdentifier(id.client_id.clone()));
    msg
}

/// Options of DISCOVER and REQUEST: what the client wants to hear, how much it can take, and its
/// name.
fn ask_for_parameters(msg: &mut Message, id: &Identity) {
    let codes = PARAMETER_REQUEST_LIST.iter().map(|&c| OptionCode::from(c));
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::ParameterRequestList(codes.collect()));
    opts.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE_LEN as u16));
    if let Some(name) = &id.hostname {
        opts.insert(DhcpOption::Hostname(name.clone()));
    }
}

fn encode(msg: &Message) -> Vec<u8> {
    // Encoding into a Vec fails only on an option too long for its length byte, and the
    // client's options are all short (the hostname and client id are checked in `Options`).
    let mut bytes = msg
        .to_vec()
        .expect("a request with short options always encodes");
    if bytes.len() < MIN_REQUEST_LEN {
        bytes.resize(MIN_REQUEST_LEN, 0); // pad after the end option
    }
    bytes
}

/// A server message the client acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// A server's reply, validated: every address is usable, every name is a plain DNS name, every
/// list is capped. An OFFER or ACK always has a usable `yiaddr`, a server identifier and a lease
/// time of at least [`MIN_LEASE_SECS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub xid: u32,
    pub chaddr: [u8; 6],
    /// The address offered or granted (unspecified in a NAK).
    pub yiaddr: Ipv4Addr,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 51, seconds.
    pub lease_time: Option<u32>,
    /// Option 58, seconds.
    pub t1: Option<u32>,
    /// Option 59, seconds.
    pub t2: Option<u32>,
    /// Option 1, as a prefix length (1..=32).
    pub prefix: Option<u8>,
    /// Option 28.
    pub broadcast: Option<Ipv4Addr>,
    /// Option 3.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 42.
    pub ntp: Vec<Ipv4Addr>,
    /// Option 15, without a trailing dot.
    pub domain: Option<String>,
    /// Option 119, without trailing dots.
    pub search: Vec<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 56, the server's explanation (usually of a NAK), printable ASCII only.
    pub message: Option<String>,
}

/// Why a datagram is not a reply the client can use. Each message is one line naming the
/// problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("DHCP message of {len} bytes is shorter than the {FIXED_LEN}-byte header")]
    TooShort { len: usize },
    #[error("DHCP message of {len} bytes is longer than the {MAX_MESSAGE_LEN} bytes accepted")]
    TooLong { len: usize },
    #[error("BOOTP op {op} is not a reply (2)")]
    NotAReply { op: u8 },
    #[error("hardware type {htype} with address length {hlen} is not Ethernet (1, 6)")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("no DHCP magic cookie")]
    NoMagicCookie,
    #[error("option {code} runs past the end of the message")]
    OptionTruncated { code: u8 },
    #[error("option {code} has {len} bytes, which is not a valid length for it")]
    BadOptionLength { code: u8, len: usize },
    #[error("no DHCP message type (option 53)")]
    NoMessageType,
    #[error("DHCP message type {0} is not OFFER, ACK or NAK")]
    NotFromServer(u8),
    #[error("dhcproto could not decode the cleaned message: {0}")]
    Undecodable(String),
    #[error("{kind:?} has no {what} (option {code})")]
    Missing {
        kind: ReplyKind,
        what: &'static str,
        code: u8,
    },
    #[error("{what} {addr} is not a usable unicast address")]
    BadAddress { what: &'static str, addr: Ipv4Addr },
    #[error("subnet mask {0} is not contiguous")]
    BadMask(Ipv4Addr),
    #[error("MTU {0} is below the minimum of {MIN_MTU}")]
    MtuTooSmall(u16),
    #[error("lease time of {0} s is shorter than the minimum of {MIN_LEASE_SECS} s")]
    LeaseTooShort(u32),
}

/// Reads a server's reply. Never panics, whatever `bytes` holds; the work done is linear in
/// its length, which is at most [`MAX_MESSAGE_LEN`].
pub fn parse(bytes: &[u8]) -> Result<Reply, ParseError> {
    check_header(bytes)?;
    let options = collect_options(&bytes[FIXED_LEN..])?;
    let cleaned = rebuild(&bytes[..FIXED_LEN], &options);
    let msg = Message::decode(&mut Decoder::new(&cleaned))
        .map_err(|e| ParseError::Undecodable(e.to_string()))?;
    // Every option kept was checked to decode, so dhcproto dropping one is a bug, not input.
    if msg.opts().len() != options.len() {
        return Err(ParseError::Undecodable(format!(
            "{} of {} options decoded",
            msg.opts().len(),
            options.len()
        )));
    }
    reply_from(&msg)
}

fn check_header(bytes: &[u8]) -> Result<(), ParseError> {
    let len = bytes.len();
    if len < FIXED_LEN {
        return Err(ParseError::TooShort { len });
    }
    if len > MAX_MESSAGE_LEN {
        return Err(ParseError::TooLong { len });
    }
    if bytes[0] != 2 {
        return Err(ParseError::NotAReply { op: bytes[0] });
    }
    // dhcproto slices chaddr by hlen, so hlen is checked before it ever sees the message.
    if bytes[1] != HTYPE_ETHERNET || bytes[2] != 6 {
        return Err(ParseError::NotEthernet {
            htype: bytes[1],
            hlen: bytes[2],
        });
    }
    if bytes[236..FIXED_LEN] != MAGIC {
        return Err(ParseError::NoMagicCookie);
    }
    Ok(())
}

/// How long a kept option's value may be, after split parts are joined.
#[derive(Clone, Copy)]
enum Shape {
    /// Exactly this many bytes.
    Fixed(usize),
    /// A non-empty list of IPv4 addresses.
    Addresses,
    /// A DNS name; dropped (not an error) when it is not one.
    Name,
    /// Free text for logs; bytes outside printable ASCII are replaced.
    Text,
    /// RFC 1035 names with compression, decoded by dhcproto.
    Names,
}

/// The options the client reads, and their shapes.
fn shape(code: u8) -> Option<Shape> {
    Some(match code {
        1 | 28 | 54 => Shape::Fixed(4),
        3 | 6 | 42 => Shape::Addresses,
        12 | 15 => Shape::Name,
        26 => Shape::Fixed(2),
        51 | 58 | 59 => Shape::Fixed(4),
        53 => Shape::Fixed(1),
        56 => Shape::Text,
        119 => Shape::Names,
        _ => return None,
    })
}

/// The kept options by code, split parts joined in order of appearance, each one's length
/// checked and text cleaned.
fn collect_options(mut rest: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, ParseError> {
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    loop {
        match rest {
            [] | [255, ..] => break, // a missing end option is forgiven
            [0, tail @ ..] => rest = tail,
            [code, len, tail @ ..] => {
                let len = usize::from(*len);
                if tail.len() < len {
                    return Err(ParseError::OptionTruncated { code: *code });
                }
                if shape(*code).is_some() {
                    options.entry(*code).or_default().extend(&tail[..len]);
                }
                rest = &tail[len..];
            }
            [code] => return Err(ParseError::OptionTruncated { code: *code }),
        }
    }
    let mut kept = BTreeMap::new();
    for (code, value) in options {
        let Some(shape) = shape(code) else { continue };
        let bad = || ParseError::BadOptionLength {
            code,
            len: value.len(),
        };
        let value = match shape {
            Shape::Fixed(n) if value.len() == n => value,
            Shape::Addresses if !value.is_empty() && value.len() % 4 == 0 => value,
            Shape::Names if !value.is_empty() => value,
            Shape::Fixed(_) | Shape::Addresses | Shape::Names => return Err(bad()),
            Shape::Name => match dns_name(&value) {
                Some(name) => name.into_bytes(),
                None => continue,
            },
            Shape::Text => value
                .iter()
                .take(MAX_SERVER_MESSAGE)
                .map(|&b| if (b' '..=b'~').contains(&b) { b } else { b'?' })
                .collect(),
        };
        if !value.is_empty() {
            kept.insert(code, value);
        }
    }
    Ok(kept)
}

/// The fixed header followed by `options`, each split into parts of at most 255 bytes, and an
/// end option.
fn rebuild(header: &[u8], options: &BTreeMap<u8, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_MESSAGE_LEN);
    out.extend_from_slice(header);
    for (&code, value) in options {
        for part in value.chunks(255) {
            out.push(code);
            out.push(part.len() as u8);
            out.extend_from_slice(part);
        }
    }
    out.push(255);
    out
}

fn reply_from(msg: &Message) -> Result<Reply, ParseError> {
    let opts = msg.opts();
    let kind = match opts.msg_type() {
        None => return Err(ParseError::NoMessageType),
        Some(MessageType::Offer) => ReplyKind::Offer,
        Some(MessageType::Ack) => ReplyKind::Ack,
        Some(MessageType::Nak) => ReplyKind::Nak,
        Some(other) => return Err(ParseError::NotFromServer(u8::from(other))),
    };
    let mut chaddr = [0; 6];
    chaddr.copy_from_slice(msg.chaddr()); // hlen is 6, checked in `check_header`
    let mut reply = Reply {
        kind,
        xid: msg.xid(),
        chaddr,
        yiaddr: msg.yiaddr(),
        server_id: None,
        lease_time: None,
        t1: None,
        t2: None,
        prefix: None,
        broadcast: None,
        routers: Vec::new(),
        dns: Vec::new(),
        ntp: Vec::new(),
        domain: None,
        search: Vec::new(),
        hostname: None,
        mtu: None,
        message: None,
    };
    for (_, option) in opts.iter() {
        read_option(&mut reply, option)?;
    }
    if kind != ReplyKind::Nak {
        check_grant(&reply)?;
    }
    Ok(reply)
}

fn read_option(reply: &mut Reply, option: &DhcpOption) -> Result<(), ParseError> {
    match option {
        DhcpOption::SubnetMask(mask) => reply.prefix = Some(prefix_of(*mask)?),
        DhcpOption::BroadcastAddr(addr) => reply.broadcast = Some(*addr),
        DhcpOption::Router(list) => reply.routers = usable(list),
        DhcpOption::DomainNameServer(list) => reply.dns = usable(list),
        DhcpOption::NtpServers(list) => reply.ntp = usable(list),
        DhcpOption::Hostname(name) => reply.hostname = Some(name.clone()),
        DhcpOption::DomainName(name) => reply.domain = Some(name.clone()),
        DhcpOption::DomainSearch(names) => {
            reply.search = names
                .iter()
                .filter_map(|n| dns_name(n.to_ascii().as_bytes()))
                .take(MAX_SEARCH)
                .collect();
        }
        DhcpOption::InterfaceMtu(mtu) if *mtu < MIN_MTU => {
            return Err(ParseError::MtuTooSmall(*mtu));
        }
        DhcpOption::InterfaceMtu(mtu) => reply.mtu = Some(*mtu),
        DhcpOption::AddressLeaseTime(secs) => reply.lease_time = Some(*secs),
        DhcpOption::Renewal(secs) => reply.t1 = Some(*secs),
        DhcpOption::Rebinding(secs) => reply.t2 = Some(*secs),
        DhcpOption::ServerIdentifier(addr) => reply.server_id = Some(*addr),
        DhcpOption::Message(text) => reply.message = Some(text.clone()),
        _ => {}
    }
    Ok(())
}

/// What an OFFER or ACK must carry for the client to use it.
fn check_grant(reply: &Reply) -> Result<(), ParseError> {
    let missing = |what, code| ParseError::Missing {
        kind: reply.kind,
        what,
        code,
    };
    if !is_usable(reply.yiaddr) {
        return Err(ParseError::BadAddress {
            what: "offered address",
            addr: reply.yiaddr,
        });
    }
    let server = reply
        .server_id
        .ok_or_else(|| missing("server identifier", 54))?;
    if !is_usable(server) {
        return Err(ParseError::BadAddress {
            what: "server identifier",
            addr: server,
        });
    }
    let lease = reply.lease_time.ok_or_else(|| missing("lease time", 51))?;
    if lease < MIN_LEASE_SECS {
        return Err(ParseError::LeaseTooShort(lease));
    }
    Ok(())
}

/// The prefix length of a contiguous, non-zero subnet mask.
fn prefix_of(mask: Ipv4Addr) -> Result<u8, ParseError> {
    let bits = u32::from(mask);
    let prefix = bits.leading_ones();
    if prefix == 0 || bits != u32::MAX << (32 - prefix) {
        return Err(ParseError::BadMask(mask));
    }
    Ok(prefix as u8)
}

/// An address a host can be given or talk to: not zero, broadcast, multicast, loopback or
/// reserved.
pub fn is_usable(addr: Ipv4Addr) -> bool {
    let first = addr.octets()[0];
    !(first == 0 || first == 127 || first >= 224)
}

/// The usable addresses of `list`, at most [`MAX_ADDRESSES`].
fn usable(list: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    list.iter()
        .copied()
        .filter(|a| is_usable(*a))
        .take(MAX_ADDRESSES)
        .collect()
}

/// `bytes` as a DNS name in presentation form without the final dot, if it is one: labels of
/// 1 to 63 letters, digits, hyphens or underscores, at most [`MAX_NAME`] characters. Anything
/// else (spaces, escapes, control characters) is refused, so a name can be written into
/// resolv.conf or a log as it is.
pub fn dns_name(bytes: &[u8]) -> Option<String> {
    let bytes = bytes.strip_suffix(b".").unwrap_or(bytes);
    if bytes.is_empty() || bytes.len() > MAX_NAME {
        return None;
    }
    let label_ok = |l: &[u8]| {
        (1..=63).contains(&l.len())
            && l.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !bytes.split(|&b| b == b'.').all(label_ok) {
        return None;
    }
    String::from_utf8(bytes.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0x77, 0, 1];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

    fn identity() -> Identity {
        Identity {
            hostname: Some("cairn-dev".into()),
            ..Identity::new(MAC)
        }
    }

    fn decode(bytes: &[u8]) -> Message {
        Message::decode(&mut Decoder::new(bytes)).unwrap()
    }

    /// A server reply as dnsmasq would send it, for tests to alter.
    fn server_reply(kind: MessageType) -> Message {
        let zero = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(0x1234_5678, zero, ADDR, SERVER, zero, &MAC);
        msg.set_opcode(Opcode::BootReply);
        let o = msg.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        o.insert(DhcpOption::AddressLeaseTime(120));
        o.insert(DhcpOption::Renewal(4));
        o.insert(DhcpOption::Rebinding(6));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 77, 0, 255)));
        o.insert(DhcpOption::Router(vec![SERVER]));
        o.insert(DhcpOption::DomainNameServer(vec![
            Ipv4Addr::new(10, 77, 0, 53),
            Ipv4Addr::new(10, 77, 0, 54),
        ]));
        o.insert(DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 77, 0, 123)]));
        o.insert(DhcpOption::DomainName("cairn.test".into()));
        o.insert(DhcpOption::Hostname("cairn-dev".into()));
        o.insert(DhcpOption::InterfaceMtu(1400));
        o.insert(DhcpOption::DomainSearch(vec![
            "a.cairn.test.".parse().unwrap(),
            "b.cairn.test.".parse().unwrap(),
        ]));
        msg
    }

    /// The raw option area of `bytes` with options in the given raw form, for hostile inputs
    /// dhcproto would refuse to encode.
    fn with_raw_options(raw: &[u8]) -> Vec<u8> {
        let mut msg = server_reply(MessageType::Ack).to_vec().unwrap();
        msg.truncate(FIXED_LEN);
        msg.extend_from_slice(raw);
        msg
    }

    #[test]
    fn discover_asks_for_everything_with_the_broadcast_flag() {
        let msg = decode(&discover(&identity(), 0xdead_beef, 3));
        assert_eq!(msg.opcode(), Opcode::BootRequest);
        assert_eq!(msg.xid(), 0xdead_beef);
        assert_eq!(msg.secs(), 3);
        assert_eq!(msg.chaddr(), MAC);
        assert!(msg.flags().broadcast());
        assert_eq!(msg.ciaddr(), Ipv4Addr::UNSPECIFIED);
        let o = msg.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Discover));
        let Some(DhcpOption::ParameterRequestList(list)) = o.get(OptionCode::ParameterRequestList)
        else {
            panic!("no parameter request list");
        };
        let codes: Vec<u8> = list.iter().map(|&c| u8::from(c)).collect();
        assert_eq!(codes, PARAMETER_REQUEST_LIST);
        assert_eq!(
            o.get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![1, 2, 0, 0, 0x77, 0, 1]))
        );
        assert_eq!(
            o.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("cairn-dev".into()))
        );
        assert!(o.get(OptionCode::RequestedIpAddress).is_none());
    }

    #[test]
    fn requests_follow_rfc_2131_table_5() {
        let id = identity();
        let kinds = [
            (
                Request::Selecting {
                    requested: ADDR,
                    server: SERVER,
                },
                true,
                Some(ADDR),
                Some(SERVER),
                Ipv4Addr::UNSPECIFIED,
            ),
            (
                Request::InitReboot { requested: ADDR },
                true,
                Some(ADDR),
                None,
                Ipv4Addr::UNSPECIFIED,
            ),
            (Request::Renewing { ciaddr: ADDR }, false, None, None, ADDR),
            (Request::Rebinding { ciaddr: ADDR }, false, None, None, ADDR),
        ];
        for (kind, broadcast, requested, server, ciaddr) in kinds {
            let bytes = request(&id, 7, 0, kind);
            assert!(bytes.len() >= MIN_REQUEST_LEN);
            let msg = decode(&bytes);
            assert_eq!(
                msg.opts().msg_type(),
                Some(MessageType::Request),
                "{kind:?}"
            );
            assert_eq!(msg.flags().broadcast(), broadcast, "{kind:?}");
            assert_eq!(msg.ciaddr(), ciaddr, "{kind:?}");
            let get_addr = |code| match msg.opts().get(code) {
                Some(DhcpOption::RequestedIpAddress(a) | DhcpOption::ServerIdentifier(a)) => {
                    Some(*a)
                }
                _ => None,
            };
            assert_eq!(
                get_addr(OptionCode::RequestedIpAddress),
                requested,
                "{kind:?}"
            );
            assert_eq!(get_addr(OptionCode::ServerIdentifier), server, "{kind:?}");
            assert!(msg.opts().get(OptionCode::ParameterRequestList).is_some());
        }
    }

    #[test]
    fn release_names_the_address_and_the_server() {
        let msg = decode(&release(&identity(), 9, ADDR, SERVER));
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(msg.ciaddr(), ADDR);
        assert!(!msg.flags().broadcast());
        assert_eq!(
            msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(msg.opts().get(OptionCode::ParameterRequestList).is_none());
        assert!(msg.opts().get(OptionCode::RequestedIpAddress).is_none());
    }

    #[test]
    fn an_ack_parses_into_every_field() {
        let reply = parse(&server_reply(MessageType::Ack).to_vec().unwrap()).unwrap();
        assert_eq!(
            reply,
            Reply {
                kind: ReplyKind::Ack,
                xid: 0x1234_5678,
                chaddr: MAC,
                yiaddr: ADDR,
                server_id: Some(SERVER),
                lease_time: Some(120),
                t1: Some(4),
                t2: Some(6),
                prefix: Some(24),
                broadcast: Some(Ipv4Addr::new(10, 77, 0, 255)),
                routers: vec![SERVER],
                dns: vec![Ipv4Addr::new(10, 77, 0, 53), Ipv4Addr::new(10, 77, 0, 54)],
                ntp: vec![Ipv4Addr::new(10, 77, 0, 123)],
                domain: Some("cairn.test".into()),
                search: vec!["a.cairn.test".into(), "b.cairn.test".into()],
                hostname: Some("cairn-dev".into()),
                mtu: Some(1400),
                message: None,
            }
        );
    }

    #[test]
    fn a_nak_like_qemus_parses_without_server_id() {
        // QEMU's user-mode server: message type and text only.
        let zero = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(5, zero, zero, zero, zero, &MAC);
        msg.set_opcode(Opcode::BootReply);
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Nak));
        msg.opts_mut().insert(DhcpOption::Message(
            "requested address not available".into(),
        ));
        let reply = parse(&msg.to_vec().unwrap()).unwrap();
        assert_eq!(reply.kind, ReplyKind::Nak);
        assert_eq!(reply.server_id, None);
        assert_eq!(
            reply.message.as_deref(),
            Some("requested address not available")
        );
    }

    #[test]
    fn split_options_are_joined() {
        // Router list in two parts (RFC 3396), the parts separated by another option.
        let mut raw = vec![53, 1, 5, 54, 4, 10, 77, 0, 1, 51, 4, 0, 0, 0, 120];
        raw.extend_from_slice(&[3, 4, 10, 77, 0, 1, 26, 2, 5, 220, 3, 4, 10, 77, 0, 2, 255]);
        let reply = parse(&with_raw_options(&raw)).unwrap();
        assert_eq!(
            reply.routers,
            [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)]
        );
        assert_eq!(reply.mtu, Some(1500));
    }

    #[test]
    fn lists_are_capped_and_unusable_addresses_dropped() {
        let mut msg = server_reply(MessageType::Ack);
        let mut dns: Vec<Ipv4Addr> = (1..=20).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        dns.insert(0, Ipv4Addr::BROADCAST);
        dns.insert(1, Ipv4Addr::new(224, 0, 0, 1));
        msg.opts_mut().insert(DhcpOption::DomainNameServer(dns));
        let names = (0..10)
            .map(|i| format!("d{i}.test.").parse().unwrap())
            .collect();
        msg.opts_mut().insert(DhcpOption::DomainSearch(names));
        let reply = parse(&msg.to_vec().unwrap()).unwrap();
        assert_eq!(reply.dns.len(), MAX_ADDRESSES);
        assert_eq!(reply.dns[0], Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(reply.search.len(), MAX_SEARCH);
    }

    #[test]
    fn names_that_are_not_dns_names_are_dropped() {
        let mut msg = server_reply(MessageType::Ack);
        msg.opts_mut().insert(DhcpOption::DomainName(
            "evil.test\nnameserver 6.6.6.6".into(),
        ));
        msg.opts_mut().insert(DhcpOption::Hostname("a b".into()));
        let reply = parse(&msg.to_vec().unwrap()).unwrap();
        assert_eq!(reply.domain, None);
        assert_eq!(reply.hostname, None);
        // Other options are unaffected.
        assert_eq!(reply.mtu, Some(1400));
        assert_eq!(dns_name(b"ok.example."), Some("ok.example".into()));
        assert_eq!(dns_name(b"a..b"), None);
        assert_eq!(dns_name(&[b'a'; 64]), None);
    }

    #[test]
    fn hostile_replies_are_refused_with_the_reason() {
        let ack = || server_reply(MessageType::Ack);
        let bytes = |m: Message| m.to_vec().unwrap();
        let cases: Vec<(Vec<u8>, ParseError)> = vec![
            (vec![2; 100], ParseError::TooShort { len: 100 }),
            (vec![0; 2000], ParseError::TooLong { len: 2000 }),
            (bytes(Message::default()), ParseError::NotAReply { op: 1 }),
            (
                {
                    let mut b = bytes(ack());
                    b[2] = 200;
                    b
                },
                ParseError::NotEthernet {
                    htype: 1,
                    hlen: 200,
                },
            ),
            (
                {
                    let mut b = bytes(ack());
                    b[236] = 0;
                    b
                },
                ParseError::NoMagicCookie,
            ),
            (
                with_raw_options(&[53, 1, 5, 3, 8, 10]),
                ParseError::OptionTruncated { code: 3 },
            ),
            (
                with_raw_options(&[53, 1, 5, 77]),
                ParseError::OptionTruncated { code: 77 },
            ),
            (
                with_raw_options(&[53, 2, 5, 5]),
                ParseError::BadOptionLength { code: 53, len: 2 },
            ),
            (
                with_raw_options(&[53, 1, 5, 6, 3, 1, 2, 3]),
                ParseError::BadOptionLength { code: 6, len: 3 },
            ),
            (
                with_raw_options(&[53, 1, 5, 26, 0]),
                ParseError::BadOptionLength { code: 26, len: 0 },
            ),
            (
                with_raw_options(&[54, 4, 10, 77, 0, 1]),
                ParseError::NoMessageType,
            ),
            (with_raw_options(&[53, 1, 3]), ParseError::NotFromServer(3)),
            (
                {
                    let mut m = ack();
                    m.opts_mut()
                        .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
                    bytes(m)
                },
                ParseError::BadMask(Ipv4Addr::new(255, 0, 255, 0)),
            ),
            (
                {
                    let mut m = ack();
                    m.opts_mut()
                        .insert(DhcpOption::SubnetMask(Ipv4Addr::UNSPECIFIED));
                    bytes(m)
                },
                ParseError::BadMask(Ipv4Addr::UNSPECIFIED),
            ),
            (
                {
                    let mut m = ack();
                    m.opts_mut().insert(DhcpOption::InterfaceMtu(575));
                    bytes(m)
                },
                ParseError::MtuTooSmall(575),
            ),
            (
                {
                    let mut m = ack();
                    m.opts_mut().insert(DhcpOption::AddressLeaseTime(9));
                    bytes(m)
                },
                ParseError::LeaseTooShort(9),
            ),
            (
                {
                    let mut m = ack();
                    m.opts_mut().remove(OptionCode::AddressLeaseTime);
                    bytes(m)
                },
                ParseError::Missing {
                    kind: ReplyKind::Ack,
                    what: "lease time",
                    code: 51,
                },
            ),
            (
                {
                    let mut m = server_reply(MessageType::Offer);
                    m.opts_mut().remove(OptionCode::ServerIdentifier);
                    bytes(m)
                },
                ParseError::Missing {
                    kind: ReplyKind::Offer,
                    what: "server identifier",
                    code: 54,
                },
            ),
            (
                {
                    let mut m = ack();
                    m.set_yiaddr(Ipv4Addr::BROADCAST);
                    bytes(m)
                },
                ParseError::BadAddress {
                    what: "offered address",
                    addr: Ipv4Addr::BROADCAST,
                },
            ),
            (
                {
                    let mut m = ack();
                    m.opts_mut()
                        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST));
                    bytes(m)
                },
                ParseError::BadAddress {
                    what: "server identifier",
                    addr: Ipv4Addr::LOCALHOST,
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(&input), Err(expected.clone()), "{expected}");
        }
    }

    #[test]
    fn options_that_trip_dhcproto_never_reach_it() {
        // Rapid commit with a length, FQDN and bulk lease query status shorter than dhcproto
        // assumes: debug assertions and a subtraction overflow inside dhcproto if decoded.
        let raw = [
            53, 1, 5, 54, 4, 10, 77, 0, 1, 51, 4, 0, 0, 0, 120, 80, 1, 0, 81, 0, 151, 0, 255,
        ];
        let reply = parse(&with_raw_options(&raw)).unwrap();
        assert_eq!(reply.kind, ReplyKind::Ack);
    }

    #[test]
    fn every_truncation_and_byte_flip_is_handled() {
        let good = server_reply(MessageType::Ack).to_vec().unwrap();
        for len in 0..good.len() {
            let _ = parse(&good[..len]);
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                if let Ok(reply) = parse(&b) {
                    assert!(reply.dns.len() <= MAX_ADDRESSES);
                    assert!(reply.mtu.is_none_or(|m| m >= MIN_MTU));
                }
            }
        }
    }
}
