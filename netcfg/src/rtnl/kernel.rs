//! The kernel's links, addresses and routes as this module sees them, and how they are read
//! out of rtnetlink messages.
//!
//! Only what `plan` compares is kept, in the form the kernel reports it back: a route's metric
//! is the number the kernel stores (IPv6 turns 0 into 1024), a missing `RTA_DST` is the
//! family's unspecified address with prefix 0, an address's lifetime is `None` when infinite.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::AddressFamily;

use super::prefix;

/// The main routing table (`RT_TABLE_MAIN`); routes in other tables are not read.
pub const MAIN_TABLE: u32 = 254;
/// The metric the kernel gives an IPv6 route added with none (`IP6_RT_PRIO_USER`).
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// Everything `plan` looks at, from one dump of each kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub links: Vec<Link>,
    /// IPv4 and IPv6 addresses on every link.
    pub addresses: Vec<KernelAddress>,
    /// Routes in the main table, both families.
    pub routes: Vec<KernelRoute>,
}

impl KernelState {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn addresses_on(&self, index: u32) -> impl Iterator<Item = &KernelAddress> {
        self.addresses.iter().filter(move |a| a.index == index)
    }

    pub fn routes_on(&self, index: u32) -> impl Iterator<Item = &KernelRoute> {
        self.routes.iter().filter(move |r| r.oif == Some(index))
    }
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The lower layer is up: a cable, a peer (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// RFC 2863 operational state.
    pub oper: OperState,
    pub kind: LinkKind,
}

/// What sort of link it is, as far as `plan` cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Loopback,
    /// No `IFLA_INFO_KIND`: a driver's own device (Ethernet, Wi-Fi…).
    Physical,
    /// An 802.1Q sub-interface of `parent` (an index).
    Vlan {
        parent: u32,
        id: u16,
    },
    /// Any other kind of virtual link (`veth`, `bridge`, `dummy`…), by the kernel's name.
    Other(String),
}

/// `IF_OPER_*` (RFC 2863).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperState {
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
    Other(u8),
}

impl From<State> for OperState {
    fn from(s: State) -> Self {
        match s {
            State::Unknown => Self::Unknown,
            State::NotPresent => Self::NotPresent,
            State::Down => Self::Down,
            State::LowerLayerDown => Self::LowerLayerDown,
            State::Testing => Self::Testing,
            State::Dormant => Self::Dormant,
            State::Up => Self::Up,
            other => Self::Other(u8::from(other)),
        }
    }
}

/// `IFA_F_*` address flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrFlags(pub u32);

impl AddrFlags {
    /// IPv4: another address of the same subnet came first (it goes when that one goes).
    pub const SECONDARY: u32 = 0x01;
    pub const NODAD: u32 = 0x02;
    pub const DADFAILED: u32 = 0x08;
    pub const TENTATIVE: u32 = 0x40;
    /// No lifetime: it stays until removed.
    pub const PERMANENT: u32 = 0x80;
    pub const NOPREFIXROUTE: u32 = 0x200;

    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
}

/// An IP address on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelAddress {
    /// The link's index.
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    pub flags: AddrFlags,
    /// `IFA_PROTO` (Linux 6.3+): 1 loopback, 2 router advertisement, 3 link-local when the
    /// kernel made it; 0 when absent or unset.
    pub proto: u8,
    /// Seconds until the kernel removes it; `None` for forever.
    pub valid_lft: Option<u32>,
}

impl KernelAddress {
    /// `IFA_PROTO` values the kernel gives addresses it made itself.
    const KERNEL_PROTOS: [u8; 3] = [1, 2, 3];

    /// Whether the kernel made this address itself (IPv6 link-local, SLAAC, loopback), so it
    /// is never removed. Before `IFA_PROTO` (Linux 6.3) the kernel's link-local address is told
    /// by its shape: an `fe80::/64` address; such an address added by hand is then kept too.
    pub fn is_kernel_made(&self) -> bool {
        Self::KERNEL_PROTOS.contains(&self.proto)
            || (self.proto == 0 && self.prefix == 64 && prefix::is_ipv6_link_local(self.addr))
    }
}

/// `RTPROT_*`: who put a route there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteProto(pub u8);

impl RouteProto {
    pub const UNSPEC: Self = Self(0);
    pub const REDIRECT: Self = Self(1);
    /// Made by the kernel: an address's prefix route, IPv6 `fe80::/64`.
    pub const KERNEL: Self = Self(2);
    /// `ip route add` without `proto`.
    pub const BOOT: Self = Self(3);
    /// This module's routes from the config.
    pub const STATIC: Self = Self(4);
    /// Learned from IPv6 router advertisements.
    pub const RA: Self = Self(9);
    /// This module's routes from a DHCP lease.
    pub const DHCP: Self = Self(16);

    /// Whether routes with this protocol are this module's to remove.
    pub fn is_ours(self) -> bool {
        self == Self::STATIC || self == Self::DHCP
    }
}

impl fmt::Display for RouteProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UNSPEC => f.write_str("unspec"),
            Self::REDIRECT => f.write_str("redirect"),
            Self::KERNEL => f.write_str("kernel"),
            Self::BOOT => f.write_str("boot"),
            Self::STATIC => f.write_str("static"),
            Self::RA => f.write_str("ra"),
            Self::DHCP => f.write_str("dhcp"),
            Self(n) => write!(f, "{n}"),
        }
    }
}

/// A route in the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// The destination network (unspecified for a default route).
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    /// Output link; `None` for multipath routes.
    pub oif: Option<u32>,
    /// `RTA_PRIORITY`, 0 when absent.
    pub metric: u32,
    pub protocol: RouteProto,
    /// `RTN_UNICAST`, as opposed to blackhole, unreachable, prohibit…
    pub unicast: bool,
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " metric {} proto {}", self.metric, self.protocol)
    }
}

/// A link from an `RTM_NEWLINK`; `None` without a name (which the kernel always sends).
pub(super) fn link_from(msg: &LinkMessage) -> Option<Link> {
    let flags = msg.header.flags;
    let mut name = None;
    let mut mac = None;
    let mut mtu = 0;
    let mut oper = OperState::Unknown;
    let mut parent = None;
    let mut kind = None;
    let mut vlan_id = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::OperState(s) => oper = OperState::from(*s),
            LinkAttribute::Link(p) => parent = Some(*p),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Vlan(vlan)) => {
                            vlan_id = vlan.iter().find_map(|v| match v {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let kind = if flags.contains(LinkFlags::Loopback) {
        LinkKind::Loopback
    } else {
        match (kind, parent, vlan_id) {
            (None, _, _) => LinkKind::Physical,
            (Some(InfoKind::Vlan), Some(parent), Some(id)) => LinkKind::Vlan { parent, id },
            (Some(k), _, _) => LinkKind::Other(k.to_string()),
        }
    };
    Some(Link {
        index: msg.header.index,
        name: name?,
        mac,
        mtu,
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        oper,
        kind,
    })
}

/// An IPv4 or IPv6 address from an `RTM_NEWADDR`; `None` for other families.
pub(super) fn address_from(msg: &AddressMessage) -> Option<KernelAddress> {
    if !matches!(
        msg.header.family,
        AddressFamily::Inet | AddressFamily::Inet6
    ) {
        return None;
    }
    let mut local = None;
    let mut address = None;
    // The header holds only the low 8 flag bits; IFA_FLAGS, when present, has them all.
    let mut flags = AddrFlags(u32::from(msg.header.flags.bits()));
    let mut proto = 0;
    let mut valid_lft = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Flags(f) => flags = AddrFlags(f.bits()),
            AddressAttribute::Protocol(p) => proto = u8::from(*p),
            AddressAttribute::CacheInfo(c) => {
                valid_lft = (c.ifa_valid != u32::MAX).then_some(c.ifa_valid)
            }
            _ => {}
        }
    }
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links and
    // the only one IPv6 sends otherwise.
    Some(KernelAddress {
        index: msg.header.index,
        addr: local.or(address)?,
        prefix: msg.header.prefix_len,
        flags,
        proto,
        valid_lft,
    })
}

/// A route in the main table from an `RTM_NEWROUTE`; `None` for other tables and families.
pub(super) fn route_from(msg: &RouteMessage) -> Option<KernelRoute> {
    let header = &msg.header;
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut table = u32::from(header.table);
    let mut dst = unspecified;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip_of(a)?,
            RouteAttribute::Gateway(a) => gateway = Some(ip_of(a)?),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    (table == MAIN_TABLE).then_some(KernelRoute {
        dst,
        prefix: header.destination_prefix_length,
        gateway,
        oif,
        metric,
        protocol: RouteProto(u8::from(header.protocol)),
        unicast: header.kind == RouteType::Unicast,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::address::AddressFlags;
    use netlink_packet_route::route::RouteProtocol;

    use super::*;

    #[test]
    fn a_vlan_link_is_read_with_its_parent_and_id() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        msg.attributes = vec![
            LinkAttribute::IfName("eth0.100".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Mtu(1500),
            LinkAttribute::Link(2),
            LinkAttribute::OperState(State::Up),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(100)])),
            ]),
        ];
        let link = link_from(&msg).unwrap();
        assert_eq!(link.kind, LinkKind::Vlan { parent: 2, id: 100 });
        assert_eq!(link.mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(link.up && link.carrier);
        assert_eq!(link.oper, OperState::Up);
    }

    #[test]
    fn an_ipv4_address_is_its_local_and_full_flags_win() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 24;
        msg.header.index = 2;
        msg.attributes = vec![
            AddressAttribute::Address("10.0.0.255".parse().unwrap()),
            AddressAttribute::Local("10.0.0.2".parse().unwrap()),
            AddressAttribute::Flags(AddressFlags::Permanent | AddressFlags::Noprefixroute),
        ];
        let a = address_from(&msg).unwrap();
        assert_eq!(a.addr, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert!(a.flags.has(AddrFlags::NOPREFIXROUTE) && a.flags.has(AddrFlags::PERMANENT));
        assert_eq!(a.valid_lft, None);
        assert!(!a.is_kernel_made());
    }

    #[test]
    fn a_default_route_has_the_unspecified_destination_and_other_tables_are_skipped() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.table = 254;
        msg.header.protocol = RouteProtocol::Dhcp;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet6("fe80::1".parse().unwrap())),
            RouteAttribute::Oif(2),
            RouteAttribute::Priority(1024),
        ];
        let r = route_from(&msg).unwrap();
        assert_eq!((r.dst, r.prefix), (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0));
        assert_eq!(r.protocol, RouteProto::DHCP);
        assert_eq!(r.to_string(), "::/0 via fe80::1 metric 1024 proto dhcp");
        msg.attributes.push(RouteAttribute::Table(100));
        assert_eq!(route_from(&msg), None);
    }
}
