//! The rtnetlink wire format, for exactly the messages this module sends and reads: links,
//! addresses and routes, and the netlink framing around them (`NLMSG_DONE`, `NLMSG_ERROR`).
//!
//! The one idea: a message is a 16-byte `nlmsghdr`, a fixed family header (`ifinfomsg`,
//! `ifaddrmsg`, `rtmsg`), then attributes, each a 4-byte `nlattr` (length including itself, type)
//! and its payload padded to 4 bytes. Everything is in host byte order. Building a request
//! cannot go wrong; reading checks every length against the bytes that are really there before
//! it looks, so a truncated or garbled datagram is a [`DecodeError`], never a panic. Attributes
//! this module does not use are skipped, and so are message types it does not read.
//!
//! Field layouts are the kernel UAPI's (`linux/netlink.h`, `linux/rtnetlink.h`,
//! `linux/if_link.h`, `linux/if_addr.h`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::DecodeError;

pub const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
/// `NLA_TYPE_MASK`: the attribute type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

// Message types.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_SETLINK: u16 = 19;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;

// `nlmsghdr` flags. REPLACE/EXCL/CREATE (new objects) share bits with ROOT/MATCH (dumps).
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an `NLMSG_ERROR`'s own header: only the request's header is echoed, not its body.
const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR`'s own header: extended-ack attributes follow the echoed request.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Longest extended-ack message kept.
const MAX_EXT_ACK: usize = 512;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

// `IFF_*` link flags.
pub const IFF_UP: u32 = 0x1;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_LOWER_UP: u32 = 0x1_0000;

// `IFLA_*` link attributes, and the nested `IFLA_INFO_*` and `IFLA_VLAN_*`.
pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_OPERSTATE: u16 = 16;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const IFLA_VLAN_ID: u16 = 1;

// `IFA_*` address attributes.
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_BROADCAST: u16 = 4;
pub const IFA_CACHEINFO: u16 = 6;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_PROTO: u16 = 11;

// `RTA_*` route attributes.
pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PRIORITY: u16 = 6;
pub const RTA_TABLE: u16 = 15;

pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RT_SCOPE_HOST: u8 = 254;
/// Matches a route of any scope in a deletion.
pub const RT_SCOPE_NOWHERE: u8 = 255;
pub const RT_TABLE_MAIN: u8 = 254;
pub const RTN_UNICAST: u8 = 1;

const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;
const IFA_CACHEINFO_LEN: usize = 16;

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A request without its `nlmsghdr`: the type, the `NLM_F_*` flags that say what to do with the
/// object (`NLM_F_CREATE`…), the family header and the attributes. The socket adds the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: u16,
    pub flags: u16,
    body: Vec<u8>,
}

impl Request {
    /// A request of type `kind` whose body starts with the family header `header`.
    pub fn new(kind: u16, flags: u16, header: &[u8]) -> Self {
        let mut body = header.to_vec();
        body.resize(align(body.len()), 0);
        Request { kind, flags, body }
    }

    /// Appends an attribute.
    pub fn attr(mut self, kind: u16, payload: &[u8]) -> Self {
        put_attr(&mut self.body, kind, payload);
        self
    }

    pub fn attr_u32(self, kind: u16, value: u32) -> Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A string attribute, NUL-terminated like the kernel's own `nla_put_string`.
    pub fn attr_str(self, kind: u16, value: &str) -> Self {
        let mut payload = Vec::with_capacity(value.len() + 1);
        payload.extend_from_slice(value.as_bytes());
        payload.push(0);
        self.attr(kind, &payload)
    }

    pub fn attr_ip(self, kind: u16, addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => self.attr(kind, &a.octets()),
            IpAddr::V6(a) => self.attr(kind, &a.octets()),
        }
    }

    /// The whole message: `nlmsghdr` (with `NLM_F_REQUEST`, this request's flags and
    /// `extra_flags`, sequence number `seq`, port 0) and the body.
    pub fn message(&self, extra_flags: u16, seq: u32) -> Vec<u8> {
        let len = NLMSG_HDRLEN + self.body.len();
        let mut out = Vec::with_capacity(len);
        // The body is at most a few hundred bytes (names are checked before they get here).
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&self.kind.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | self.flags | extra_flags).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// Appends one attribute, padded to 4 bytes, to `buf`.
///
/// # Panics
///
/// When `payload` does not fit the 16-bit length; every caller passes at most an interface
/// name (checked to be 15 bytes), an IPv6 address, or a nest of those.
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(NLA_HDRLEN + payload.len())
        .expect("a netlink attribute's payload is under 64 KiB");
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align(buf.len()), 0);
}

/// `struct ifinfomsg` with family `AF_UNSPEC` and device type 0.
pub fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut h = [0; IFINFOMSG_LEN];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// `struct ifaddrmsg`: family, prefix length, the low 8 `IFA_F_*` flags, scope, link index.
pub fn ifaddrmsg(family: u8, prefix: u8, flags: u8, scope: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut h = [family, prefix, flags, scope, 0, 0, 0, 0];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// `struct rtmsg`. Source prefix, TOS and `RTM_F_*` flags are always 0 here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtMsg {
    pub family: u8,
    pub dst_len: u8,
    pub table: u8,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
}

impl RtMsg {
    pub fn bytes(&self) -> [u8; RTMSG_LEN] {
        let mut h = [0; RTMSG_LEN];
        h[0] = self.family;
        h[1] = self.dst_len;
        h[4] = self.table;
        h[5] = self.protocol;
        h[6] = self.scope;
        h[7] = self.kind;
        h
    }
}

pub fn family_of(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// `struct ifa_cacheinfo`'s two lifetimes, in seconds (`u32::MAX` is forever); the time stamps
/// are the kernel's and left 0 in requests.
pub fn ifa_cacheinfo(preferred: u32, valid: u32) -> [u8; IFA_CACHEINFO_LEN] {
    let mut c = [0; IFA_CACHEINFO_LEN];
    c[0..4].copy_from_slice(&preferred.to_ne_bytes());
    c[4..8].copy_from_slice(&valid.to_ne_bytes());
    c
}

/// `struct nlmsghdr` as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
}

/// One netlink message of a datagram: its header and the payload its length covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// The netlink messages in one datagram. After the first malformed one, nothing more is read.
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<Message<'_>, DecodeError>> + '_ {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let message = split_message(rest);
        rest = match &message {
            Ok((_, next)) => next,
            Err(_) => &[],
        };
        Some(message.map(|(m, _)| m))
    })
}

/// The first message of `bytes`, and what follows it (from the next 4-byte boundary).
fn split_message(bytes: &[u8]) -> Result<(Message<'_>, &[u8]), DecodeError> {
    let Some(h) = bytes.first_chunk::<NLMSG_HDRLEN>() else {
        return Err(DecodeError::Short {
            what: "a netlink message header",
            len: bytes.len(),
            need: NLMSG_HDRLEN,
        });
    };
    let claimed = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if claimed < NLMSG_HDRLEN || claimed > bytes.len() {
        return Err(DecodeError::MessageLength {
            claimed,
            left: bytes.len(),
        });
    }
    let header = Header {
        kind: u16::from_ne_bytes([h[4], h[5]]),
        flags: u16::from_ne_bytes([h[6], h[7]]),
        seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
    };
    let message = Message {
        header,
        payload: &bytes[NLMSG_HDRLEN..claimed],
    };
    Ok((message, bytes.get(align(claimed)..).unwrap_or_default()))
}

/// What a message says, as far as this module reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// `RTM_NEWLINK` or `RTM_DELLINK` (the header's type tells which).
    Link(LinkMessage),
    /// `RTM_NEWADDR` or `RTM_DELADDR`.
    Address(AddressMessage),
    /// `RTM_NEWROUTE` or `RTM_DELROUTE`.
    Route(RouteMessage),
    /// The end of a dump, with its error code (0, or a negative errno).
    Done(i32),
    /// `NLMSG_ERROR` with code 0: the request was done.
    Ack,
    /// `NLMSG_ERROR` with a negative errno: the request was refused. `errno` is positive.
    Refused { errno: i32, message: Option<String> },
    /// Any other type (`NLMSG_NOOP`, `NLMSG_OVERRUN`, neighbours, rules…): not read.
    Other,
}

impl Message<'_> {
    pub fn decode(&self) -> Result<Payload, DecodeError> {
        Ok(match self.header.kind {
            RTM_NEWLINK | RTM_DELLINK => Payload::Link(LinkMessage::decode(self.payload)?),
            RTM_NEWADDR | RTM_DELADDR => Payload::Address(AddressMessage::decode(self.payload)?),
            RTM_NEWROUTE | RTM_DELROUTE => Payload::Route(RouteMessage::decode(self.payload)?),
            NLMSG_DONE => Payload::Done(i32_at(self.payload, "NLMSG_DONE")?),
            NLMSG_ERROR => {
                let code = i32_at(self.payload, "NLMSG_ERROR")?;
                if code == 0 {
                    Payload::Ack
                } else {
                    Payload::Refused {
                        errno: code.saturating_abs(),
                        message: ext_ack_message(
                            self.header.flags,
                            self.payload.get(4..).unwrap_or_default(),
                        ),
                    }
                }
            }
            _ => Payload::Other,
        })
    }
}

/// The leading `int` of `NLMSG_DONE` and `NLMSG_ERROR`.
fn i32_at(payload: &[u8], what: &'static str) -> Result<i32, DecodeError> {
    payload
        .first_chunk::<4>()
        .map(|b| i32::from_ne_bytes(*b))
        .ok_or(DecodeError::Short {
            what,
            len: payload.len(),
            need: 4,
        })
}

/// The kernel's extended-ack text in an `NLMSG_ERROR`, whose payload after the error code is the
/// request's header (and, unless capped, its body), then the attributes. The text only adds to
/// the errno, so an extended ack that does not parse is dropped rather than an error.
fn ext_ack_message(flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let request = after_code.first_chunk::<NLMSG_HDRLEN>()?;
    let request_len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(*request.first_chunk::<4>()?) as usize
    };
    let tlvs = after_code.get(align(request_len)..)?;
    for attr in attributes(tlvs, "the extended ack") {
        let (kind, value) = attr.ok()?;
        if kind == NLMSGERR_ATTR_MSG {
            let text = value.split(|&b| b == 0).next().unwrap_or_default();
            let text = String::from_utf8_lossy(&text[..text.len().min(MAX_EXT_ACK)]);
            return Some(text.trim().to_owned()).filter(|t| !t.is_empty());
        }
    }
    None
}

/// The attributes in `bytes`, as (type without flag bits, payload). `what` names the message in
/// errors. After the first malformed one, nothing more is read.
fn attributes<'a>(
    bytes: &'a [u8],
    what: &'static str,
) -> impl Iterator<Item = Result<(u16, &'a [u8]), DecodeError>> + 'a {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(&[l0, l1, k0, k1]) = rest.first_chunk::<NLA_HDRLEN>() else {
            let left = rest.len();
            rest = &[];
            return Some(Err(DecodeError::AttributeLength {
                what,
                claimed: NLA_HDRLEN,
                left,
            }));
        };
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        if len < NLA_HDRLEN || len > rest.len() {
            let left = rest.len();
            rest = &[];
            return Some(Err(DecodeError::AttributeLength {
                what,
                claimed: len,
                left,
            }));
        }
        let kind = u16::from_ne_bytes([k0, k1]) & NLA_TYPE_MASK;
        let value = &rest[NLA_HDRLEN..len];
        // The last attribute's padding may be cut off by the message's end.
        rest = rest.get(align(len)..).unwrap_or_default();
        Some(Ok((kind, value)))
    })
}

/// The fixed family header at the start of `payload`, and the attributes after it.
fn split_header<'a, const N: usize>(
    payload: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8; N], &'a [u8]), DecodeError> {
    let header = payload.first_chunk::<N>().ok_or(DecodeError::Short {
        what,
        len: payload.len(),
        need: N,
    })?;
    Ok((header, payload.get(align(N)..).unwrap_or_default()))
}

fn fixed<const N: usize>(value: &[u8], name: &'static str) -> Result<[u8; N], DecodeError> {
    <[u8; N]>::try_from(value).map_err(|_| DecodeError::AttributeSize {
        name,
        len: value.len(),
        want: N,
    })
}

fn u32_attr(value: &[u8], name: &'static str) -> Result<u32, DecodeError> {
    fixed::<4>(value, name).map(u32::from_ne_bytes)
}

/// A string attribute: up to its first NUL (the kernel's are NUL-terminated).
fn str_attr(value: &[u8]) -> String {
    let text = value.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

/// An address attribute of a message of `family`: 4 bytes for `AF_INET`, 16 for `AF_INET6`.
/// `None` for other families, whose addresses this module does not read.
fn ip_attr(family: u8, value: &[u8], name: &'static str) -> Result<Option<IpAddr>, DecodeError> {
    Ok(match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(fixed::<4>(value, name)?))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(fixed::<16>(value, name)?))),
        _ => None,
    })
}

/// An `RTM_NEWLINK`/`RTM_DELLINK`: the `ifinfomsg` fields and the attributes this module reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkMessage {
    pub index: u32,
    /// `IFF_*`.
    pub flags: u32,
    /// `IFLA_IFNAME`.
    pub name: Option<String>,
    /// `IFLA_ADDRESS`: the hardware address, of the link type's length.
    pub address: Option<Vec<u8>>,
    /// `IFLA_MTU`.
    pub mtu: Option<u32>,
    /// `IFLA_OPERSTATE`: an `IF_OPER_*` value.
    pub oper_state: Option<u8>,
    /// `IFLA_LINK`: the index of the link this one sits on (a VLAN's parent).
    pub link: Option<u32>,
    /// `IFLA_LINKINFO` / `IFLA_INFO_KIND`: the virtual link's driver ("vlan", "veth"…).
    pub info_kind: Option<String>,
    /// `IFLA_LINKINFO` / `IFLA_INFO_DATA` / `IFLA_VLAN_ID`, read when the kind is "vlan".
    pub vlan_id: Option<u16>,
}

impl LinkMessage {
    const WHAT: &'static str = "a link message";

    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let (h, attrs) = split_header::<IFINFOMSG_LEN>(payload, Self::WHAT)?;
        let mut msg = LinkMessage {
            index: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
            flags: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            ..Default::default()
        };
        for attr in attributes(attrs, Self::WHAT) {
            let (kind, value) = attr?;
            match kind {
                IFLA_IFNAME => msg.name = Some(str_attr(value)),
                IFLA_ADDRESS => msg.address = Some(value.to_vec()),
                IFLA_MTU => msg.mtu = Some(u32_attr(value, "IFLA_MTU")?),
                IFLA_OPERSTATE => {
                    msg.oper_state = Some(fixed::<1>(value, "IFLA_OPERSTATE")?[0]);
                }
                IFLA_LINK => msg.link = Some(u32_attr(value, "IFLA_LINK")?),
                IFLA_LINKINFO => msg.decode_link_info(value)?,
                _ => {}
            }
        }
        Ok(msg)
    }

    fn decode_link_info(&mut self, nest: &[u8]) -> Result<(), DecodeError> {
        const WHAT: &str = "IFLA_LINKINFO";
        let mut data = None;
        for attr in attributes(nest, WHAT) {
            let (kind, value) = attr?;
            match kind {
                IFLA_INFO_KIND => self.info_kind = Some(str_attr(value)),
                IFLA_INFO_DATA => data = Some(value),
                _ => {}
            }
        }
        // What IFLA_INFO_DATA holds depends on the kind.
        if let (Some("vlan"), Some(data)) = (self.info_kind.as_deref(), data) {
            for attr in attributes(data, "IFLA_INFO_DATA") {
                let (kind, value) = attr?;
                if kind == IFLA_VLAN_ID {
                    self.vlan_id = Some(u16::from_ne_bytes(fixed(value, "IFLA_VLAN_ID")?));
                }
            }
        }
        Ok(())
    }
}

/// `struct ifa_cacheinfo`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheInfo {
    /// Seconds the address stays preferred; `u32::MAX` is forever.
    pub preferred: u32,
    /// Seconds until the kernel removes it; `u32::MAX` is forever.
    pub valid: u32,
}

/// An `RTM_NEWADDR`/`RTM_DELADDR`: the `ifaddrmsg` fields and the attributes this module reads.
/// Addresses are read for `AF_INET` and `AF_INET6` only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressMessage {
    pub family: u8,
    pub prefix_len: u8,
    /// The low 8 bits of the `IFA_F_*` flags.
    pub flags: u8,
    pub scope: u8,
    pub index: u32,
    /// `IFA_ADDRESS`: the peer on point-to-point links, else the address itself.
    pub address: Option<IpAddr>,
    /// `IFA_LOCAL`: the address itself (IPv4).
    pub local: Option<IpAddr>,
    /// `IFA_FLAGS`: all the `IFA_F_*` flags.
    pub all_flags: Option<u32>,
    /// `IFA_PROTO`: who made the address.
    pub proto: Option<u8>,
    /// `IFA_CACHEINFO`.
    pub cache: Option<CacheInfo>,
}

impl AddressMessage {
    const WHAT: &'static str = "an address message";

    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let (h, attrs) = split_header::<IFADDRMSG_LEN>(payload, Self::WHAT)?;
        let mut msg = AddressMessage {
            family: h[0],
            prefix_len: h[1],
            flags: h[2],
            scope: h[3],
            index: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
            ..Default::default()
        };
        for attr in attributes(attrs, Self::WHAT) {
            let (kind, value) = attr?;
            match kind {
                IFA_ADDRESS => msg.address = ip_attr(msg.family, value, "IFA_ADDRESS")?,
                IFA_LOCAL => msg.local = ip_attr(msg.family, value, "IFA_LOCAL")?,
                IFA_FLAGS => msg.all_flags = Some(u32_attr(value, "IFA_FLAGS")?),
                IFA_PROTO => msg.proto = Some(fixed::<1>(value, "IFA_PROTO")?[0]),
                IFA_CACHEINFO => {
                    let c = fixed::<IFA_CACHEINFO_LEN>(value, "IFA_CACHEINFO")?;
                    msg.cache = Some(CacheInfo {
                        preferred: u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
                        valid: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                    });
                }
                _ => {}
            }
        }
        Ok(msg)
    }
}

/// An `RTM_NEWROUTE`/`RTM_DELROUTE`: the `rtmsg` fields and the attributes this module reads.
/// Addresses are read for `AF_INET` and `AF_INET6` only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteMessage {
    pub header: RtMsg,
    /// `RTA_TABLE`: the table, also for ids above 255 (the header then says 252).
    pub table: Option<u32>,
    /// `RTA_DST`; absent for a default route.
    pub dst: Option<IpAddr>,
    /// `RTA_GATEWAY`.
    pub gateway: Option<IpAddr>,
    /// `RTA_OIF`: the output link's index.
    pub oif: Option<u32>,
    /// `RTA_PRIORITY`: the metric.
    pub priority: Option<u32>,
}

impl RouteMessage {
    const WHAT: &'static str = "a route message";

    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let (h, attrs) = split_header::<RTMSG_LEN>(payload, Self::WHAT)?;
        let mut msg = RouteMessage {
            header: RtMsg {
                family: h[0],
                dst_len: h[1],
                table: h[4],
                protocol: h[5],
                scope: h[6],
                kind: h[7],
            },
            ..Default::default()
        };
        let family = msg.header.family;
        for attr in attributes(attrs, Self::WHAT) {
            let (kind, value) = attr?;
            match kind {
                RTA_TABLE => msg.table = Some(u32_attr(value, "RTA_TABLE")?),
                RTA_DST => msg.dst = ip_attr(family, value, "RTA_DST")?,
                RTA_GATEWAY => msg.gateway = ip_attr(family, value, "RTA_GATEWAY")?,
                RTA_OIF => msg.oif = Some(u32_attr(value, "RTA_OIF")?),
                RTA_PRIORITY => msg.priority = Some(u32_attr(value, "RTA_PRIORITY")?),
                _ => {}
            }
        }
        Ok(msg)
    }
}

/// The captured datagrams are a little-endian kernel's, like every target this is built for.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::rtnl::kernel::{self, AddrFlags, KernelRoute, LinkKind, OperState, RouteProto};

    /// Datagrams a kernel sent; see the file's header.
    const CAPTURED: &str = include_str!("testdata/captured.hex");

    fn captured(name: &str) -> Vec<u8> {
        let line = CAPTURED
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no datagram {name}"));
        (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
            .collect()
    }

    fn all_captured() -> Vec<Vec<u8>> {
        CAPTURED
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| captured(l.split(' ').next().unwrap()))
            .collect()
    }

    /// Every message of a datagram, decoded.
    fn decode_all(datagram: &[u8]) -> Result<Vec<(Header, Payload)>, DecodeError> {
        messages(datagram)
            .map(|m| {
                let m = m?;
                Ok((m.header, m.decode()?))
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_link_lookup_reads_the_link_then_the_capped_ack() {
        let replies = decode_all(&captured("getlink-0")).unwrap();
        let [(header, Payload::Link(msg))] = &replies[..] else {
            panic!("{replies:?}")
        };
        assert_eq!((header.kind, header.seq), (RTM_NEWLINK, 1));
        let link = kernel::link_from(msg).unwrap();
        assert_eq!(link.name, "d0");
        assert_eq!(link.index, 3);
        assert_eq!(link.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(link.mtu, 1400);
        assert!(link.up && link.carrier);
        assert_eq!(link.oper, OperState::Up);
        assert_eq!(link.kind, LinkKind::Other("veth".into()));
        assert_eq!(msg.link, Some(2));

        let replies = decode_all(&captured("getlink-1")).unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!((replies[0].0.seq, &replies[0].1), (1, &Payload::Ack));
    }

    #[test]
    fn refusals_carry_the_errno_and_the_extended_ack() {
        let replies = decode_all(&captured("nodev")).unwrap();
        assert_eq!(
            replies[0].1,
            Payload::Refused {
                errno: libc::ENODEV,
                message: None
            }
        );
        let replies = decode_all(&captured("badgw")).unwrap();
        assert_eq!(
            replies[0].1,
            Payload::Refused {
                errno: libc::ENETUNREACH,
                message: Some("Nexthop has invalid gateway".into())
            }
        );
    }

    #[test]
    fn the_address_dump_reads_every_address_and_ends_with_done() {
        let replies = decode_all(&captured("addrs-0")).unwrap();
        let addresses: Vec<_> = replies
            .iter()
            .filter_map(|(_, p)| match p {
                Payload::Address(a) => kernel::address_from(a),
                _ => None,
            })
            .collect();
        assert_eq!(addresses.len(), replies.len());
        let find = |addr| addresses.iter().find(|a| a.addr == ip(addr)).unwrap();
        let v4 = find("192.0.2.10");
        // Captured 4 s after the address was added with 3600 s.
        assert_eq!((v4.index, v4.prefix, v4.valid_lft), (3, 24, Some(3596)));
        assert!(!v4.flags.has(AddrFlags::PERMANENT));
        let v6 = find("2001:db8::5");
        assert_eq!((v6.index, v6.prefix, v6.valid_lft), (3, 64, None));
        assert!(v6.flags.has(AddrFlags::NODAD) && v6.flags.has(AddrFlags::PERMANENT));
        let lo = find("127.0.0.1");
        assert_eq!((lo.index, lo.prefix, lo.valid_lft), (1, 8, None));
        // IPv6's loopback address carries IFA_PROTO 1 (kernel loopback).
        assert_eq!(find("::1").proto, 1);

        let done = decode_all(&captured("addrs-1")).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].0.seq, &done[0].1), (3, &Payload::Done(0)));
    }

    fn main_routes(name: &str) -> Vec<KernelRoute> {
        decode_all(&captured(name))
            .unwrap()
            .iter()
            .filter_map(|(_, p)| match p {
                Payload::Route(r) => kernel::route_from(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_route_dumps_keep_the_main_table() {
        let v4 = main_routes("routes4-0");
        let ours = KernelRoute {
            dst: ip("198.51.100.0"),
            prefix: 24,
            gateway: Some(ip("192.0.2.1")),
            oif: Some(3),
            metric: 5,
            protocol: RouteProto::STATIC,
            unicast: true,
        };
        let prefix_route = KernelRoute {
            dst: ip("192.0.2.0"),
            prefix: 24,
            gateway: None,
            oif: Some(3),
            metric: 0,
            protocol: RouteProto::KERNEL,
            unicast: true,
        };
        // The local table's routes (127.0.0.1, 192.0.2.10…) are in the dump and left out.
        assert_eq!(v4, [prefix_route, ours]);

        let v6 = main_routes("routes6-0");
        let default = v6.iter().find(|r| r.prefix == 0).unwrap();
        assert_eq!(
            default.to_string(),
            "::/0 via 2001:db8::1 metric 1024 proto dhcp"
        );
        assert_eq!(default.oif, Some(3));
        assert!(v6.iter().any(|r| r.dst == ip("2001:db8::")
            && r.prefix == 64
            && r.protocol == RouteProto::KERNEL));
    }

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_attr(&mut out, kind, payload);
        out
    }

    /// One message of type `kind` with `body` (family header and attributes), sequence 9.
    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&9u32.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        // The next message starts at a 4-byte boundary.
        out.resize(align(out.len()), 0);
        out
    }

    fn vlan_link(info_kind: &[u8]) -> Vec<u8> {
        let mut body = ifinfomsg(7, IFF_UP, 0).to_vec();
        body.extend(attr(IFLA_IFNAME, b"eth0.100\0"));
        body.extend(attr(IFLA_LINK, &2u32.to_ne_bytes()));
        // IFLA_LINKINFO as the kernel nests it (NLA_F_NESTED is not set by rtnetlink, but an
        // attribute type is read without its flag bits either way).
        let mut info = attr(IFLA_INFO_KIND, info_kind);
        info.extend(attr(
            IFLA_INFO_DATA | 0x8000,
            &attr(IFLA_VLAN_ID, &100u16.to_ne_bytes()),
        ));
        body.extend(attr(IFLA_LINKINFO, &info));
        message(RTM_NEWLINK, &body)
    }

    #[test]
    fn a_vlan_is_read_from_the_nested_link_info() {
        let replies = decode_all(&vlan_link(b"vlan\0")).unwrap();
        let Payload::Link(msg) = &replies[0].1 else {
            panic!()
        };
        let link = kernel::link_from(msg).unwrap();
        assert_eq!(link.name, "eth0.100");
        assert_eq!(link.kind, LinkKind::Vlan { parent: 2, id: 100 });
        // The data of another kind is not read as a VLAN's.
        let replies = decode_all(&vlan_link(b"macvlan\0")).unwrap();
        let Payload::Link(msg) = &replies[0].1 else {
            panic!()
        };
        assert_eq!(msg.vlan_id, None);
        assert_eq!(msg.info_kind.as_deref(), Some("macvlan"));
    }

    #[test]
    fn unknown_attributes_and_message_types_are_skipped() {
        let mut body = ifaddrmsg(AF_INET, 24, 0, 0, 2).to_vec();
        body.extend(attr(0x3ffe, b"unknown, odd length"));
        body.extend(attr(IFA_LOCAL, &[10, 0, 0, 2]));
        let mut datagram = message(RTM_NEWADDR, &body);
        datagram.extend(message(68, b"a neighbour")); // RTM_NEWNEIGH
        datagram.extend(message(RTM_NEWADDR, &body));
        let replies = decode_all(&datagram).unwrap();
        assert_eq!(replies.len(), 3);
        let Payload::Address(a) = &replies[0].1 else {
            panic!()
        };
        assert_eq!(a.local, Some(ip("10.0.0.2")));
        assert_eq!(replies[1].1, Payload::Other);
        assert_eq!(replies[0].1, replies[2].1);
    }

    #[test]
    fn the_last_attribute_may_lack_its_padding() {
        let mut body = ifinfomsg(1, 0, 0).to_vec();
        body.extend(attr(IFLA_IFNAME, b"lo\0"));
        body.pop(); // "lo\0" is 7 bytes with its header, padded to 8
        let replies = decode_all(&message(RTM_NEWLINK, &body)).unwrap();
        let Payload::Link(msg) = &replies[0].1 else {
            panic!()
        };
        assert_eq!(msg.name.as_deref(), Some("lo"));
    }

    #[test]
    fn bad_lengths_are_errors() {
        let link = |attrs: &[u8]| {
            let mut body = ifinfomsg(1, 0, 0).to_vec();
            body.extend_from_slice(attrs);
            decode_all(&message(RTM_NEWLINK, &body))
        };
        // An attribute shorter than its own header, longer than what is left, or a stub.
        assert!(matches!(
            link(&[3, 0, 4, 0, 0, 0, 0, 0]),
            Err(DecodeError::AttributeLength { claimed: 3, .. })
        ));
        assert!(matches!(
            link(&[12, 0, 4, 0, 0, 0, 0, 0]),
            Err(DecodeError::AttributeLength {
                claimed: 12,
                left: 8,
                ..
            })
        ));
        assert!(link(&[8, 0]).is_err());
        // Fixed-size attributes of the wrong size.
        assert_eq!(
            link(&attr(IFLA_MTU, &[0, 5, 0])),
            Err(DecodeError::AttributeSize {
                name: "IFLA_MTU",
                len: 3,
                want: 4
            })
        );
        assert!(link(&attr(IFLA_OPERSTATE, &[6, 0])).is_err());
        let mut body = ifaddrmsg(AF_INET, 24, 0, 0, 2).to_vec();
        body.extend(attr(IFA_ADDRESS, &[0; 16]));
        assert!(decode_all(&message(RTM_NEWADDR, &body)).is_err());
        let mut body = RtMsg {
            family: AF_INET6,
            ..Default::default()
        }
        .bytes()
        .to_vec();
        body.extend(attr(RTA_GATEWAY, &[0; 4]));
        assert!(decode_all(&message(RTM_NEWROUTE, &body)).is_err());
        // A family header cut short, an error code missing.
        assert!(decode_all(&message(RTM_NEWROUTE, &[2, 0, 0])).is_err());
        assert!(decode_all(&message(NLMSG_ERROR, &[])).is_err());
        assert!(decode_all(&message(NLMSG_DONE, &[0, 0])).is_err());
        // A message length below the header's or past the datagram.
        let mut m = message(NLMSG_DONE, &[0; 4]);
        m[0] = 15;
        assert!(decode_all(&m).is_err());
        m[0] = 21;
        assert!(matches!(
            decode_all(&m),
            Err(DecodeError::MessageLength {
                claimed: 21,
                left: 20
            })
        ));
    }

    #[test]
    fn every_prefix_of_a_captured_datagram_decodes_or_fails_cleanly() {
        for datagram in all_captured() {
            assert!(decode_all(&datagram).is_ok());
            for len in 0..datagram.len() {
                let prefix = &datagram[..len];
                let result = decode_all(prefix);
                // Only a cut at a message boundary leaves whole messages.
                let whole = len == 0
                    || messages(&datagram).any(|m| {
                        let m = m.unwrap();
                        let end = m.payload.as_ptr() as usize + m.payload.len()
                            - datagram.as_ptr() as usize;
                        (end + 3) & !3 == len
                    });
                assert_eq!(result.is_ok(), whole, "cut at {len}: {result:?}");
            }
        }
    }

    /// Messages whose length covers less than the kernel wrote: every attribute boundary is
    /// checked against the shortened message, not the datagram.
    #[test]
    fn every_shortened_message_decodes_or_fails_cleanly() {
        for datagram in all_captured() {
            let first = messages(&datagram).next().unwrap().unwrap();
            for len in NLMSG_HDRLEN..NLMSG_HDRLEN + first.payload.len() {
                let mut bytes = datagram.clone();
                bytes[..4].copy_from_slice(&(len as u32).to_ne_bytes());
                let first = messages(&bytes).next().unwrap();
                let _ = first.map(|m| m.decode());
            }
        }
    }

    /// Random corruption (a fixed xorshift sequence, so failures reproduce): no panic, and
    /// nothing read past the message.
    #[test]
    fn corrupted_datagrams_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let originals = all_captured();
        for _ in 0..20_000 {
            let mut bytes = originals[next() as usize % originals.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = next() as usize % bytes.len();
                bytes[at] = next() as u8;
            }
            let _ = decode_all(&bytes);
        }
    }

    #[test]
    fn the_extended_ack_is_found_after_a_capped_or_a_full_request() {
        let text = b"Nexthop has invalid gateway\0";
        let tlv = attr(NLMSGERR_ATTR_MSG, text);
        let mut capped = vec![0u8; NLMSG_HDRLEN];
        capped.extend_from_slice(&tlv);
        let flags = NLM_F_CAPPED | NLM_F_ACK_TLVS;
        assert_eq!(
            ext_ack_message(flags, &capped).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &capped), None);
        // Uncapped: the whole request (here 28 bytes, padded to 28) comes first.
        let mut full = vec![0u8; 28];
        full[..4].copy_from_slice(&28u32.to_ne_bytes());
        full.extend_from_slice(&tlv);
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &full).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        // A request length past the end, or a broken attribute: no text, no error.
        full[..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &full), None);
        capped[NLMSG_HDRLEN] = 200;
        assert_eq!(ext_ack_message(flags, &capped), None);
    }
}
