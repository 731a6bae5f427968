//! What can go wrong talking to the kernel, and what `plan` refuses.

use std::fmt;
use std::io;
use std::net::IpAddr;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure on the netlink socket, or a request the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a NETLINK_ROUTE socket")]
    Open(#[source] io::Error),
    #[error("netlink socket: {op} failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel did not answer {what} within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("the kernel refused to {what}")]
    Refused {
        what: String,
        #[source]
        source: Refusal,
    },
    #[error("cannot decode the kernel's answer to {what}")]
    Decode {
        what: String,
        #[source]
        source: DecodeError,
    },
    #[error("a {len}-byte netlink datagram did not fit the {max}-byte receive buffer")]
    Truncated { len: usize, max: usize },
    #[error("the {what} dump changed under us {tries} times in a row; giving up")]
    DumpInterrupted { what: &'static str, tries: u32 },
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error("link events were lost (the netlink socket overflowed); re-read the kernel state")]
    Overflow,
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// The kernel's `NLMSG_ERROR` for one request: the errno, and the extended-ack message when
/// the kernel gave one ("Nexthop has invalid gateway").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Positive errno.
    pub errno: i32,
    pub message: Option<String>,
}

impl Refusal {
    pub fn io_error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{m} ({})", self.io_error()),
            None => write!(f, "{}", self.io_error()),
        }
    }
}

impl std::error::Error for Refusal {}

/// What is wrong with a netlink message the kernel sent (or that arrived garbled).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("a netlink message claims {claimed} bytes, but {left} are left in the datagram")]
    MessageLength { claimed: usize, left: usize },
    #[error("{what} has {len} bytes, fewer than its {need}-byte header")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("an attribute in {what} claims {claimed} bytes, but {left} are left")]
    AttributeLength {
        what: &'static str,
        claimed: usize,
        left: usize,
    },
    #[error("attribute {name} has {len} bytes instead of {want}")]
    AttributeSize {
        name: &'static str,
        len: usize,
        want: usize,
    },
}

/// Why a desired state cannot be reached. Nothing has been changed when `plan` returns one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error("interface #{0} does not exist")]
    NoSuchIndex(u32),
    /// The name is quoted: it is refused, so it may hold anything, a line break included.
    #[error("interface {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("interface {0} is listed twice")]
    DuplicateLink(String),
    #[error("VLAN {name}: id {id} is outside 1..=4094")]
    BadVlanId { name: String, id: u16 },
    #[error("VLAN {name}: parent interface {parent} does not exist")]
    NoVlanParent { name: String, parent: String },
    #[error("VLAN {name}: {name} already exists and is not VLAN {id} of {parent}")]
    NotThatVlan {
        name: String,
        parent: String,
        id: u16,
    },
    #[error("VLAN {name}: mtu {mtu} is larger than its parent {parent}'s {parent_mtu}")]
    VlanMtuOverParent {
        name: String,
        mtu: u32,
        parent: String,
        parent_mtu: u32,
    },
    #[error("interface {link}: mtu {mtu} is below IPv6's minimum of 1280, so its IPv6 addresses cannot be set")]
    MtuTooSmallForIpv6 { link: String, mtu: u32 },
    #[error("address {addr}/{prefix} on {link}: the prefix length must be at most {max}")]
    BadAddressPrefix {
        link: String,
        addr: IpAddr,
        prefix: u8,
        max: u8,
    },
    #[error("address {addr}/{prefix} on {link}: a lifetime of 0 s would remove it at once")]
    ZeroLifetime {
        link: String,
        addr: IpAddr,
        prefix: u8,
    },
    #[error("address {addr} is desired on both {first} and {second}")]
    DuplicateAddress {
        addr: IpAddr,
        first: String,
        second: String,
    },
    #[error("address {addr} is listed twice on {link}")]
    DuplicateAddressOnLink { addr: IpAddr, link: String },
    #[error("route {dst}/{prefix}: the prefix length must be at most {max}")]
    BadRoutePrefix { dst: IpAddr, prefix: u8, max: u8 },
    #[error("route {dst}/{prefix}: host bits are set (the network is {network}/{prefix})")]
    HostBitsSet {
        dst: IpAddr,
        prefix: u8,
        network: IpAddr,
    },
    #[error("route {dst}/{prefix}: gateway {gateway} is not of the same address family")]
    GatewayFamily {
        dst: IpAddr,
        prefix: u8,
        gateway: IpAddr,
    },
    #[error("route {dst}/{prefix}: gateway {gateway} is not on any link")]
    GatewayNotOnLink {
        dst: IpAddr,
        prefix: u8,
        gateway: IpAddr,
    },
    #[error("route {dst}/{prefix}: gateway {gateway} is on {other}, but the route is on {link}")]
    GatewayOnOtherLink {
        dst: IpAddr,
        prefix: u8,
        gateway: IpAddr,
        link: String,
        other: String,
    },
    #[error("route {dst}/{prefix} metric {metric} is desired on both {first} and {second}; give one a different metric")]
    DuplicateRoute {
        dst: IpAddr,
        prefix: u8,
        metric: u32,
        first: String,
        second: String,
    },
    #[error("route {dst}/{prefix} metric {metric} on {link}: the kernel already has a proto {owner} route there that is not managed here")]
    RouteTaken {
        dst: IpAddr,
        prefix: u8,
        metric: u32,
        link: String,
        owner: String,
    },
}
