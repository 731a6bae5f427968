//! The kernel's links, addresses and routes as this module sees them, and how they are read
//! out of rtnetlink messages.
//!
//! Only what `plan` compares is kept, in the form the kernel reports it back: a route's metric
//! is the number the kernel stores (IPv6 turns 0 into 1024), a missing `RTA_DST` is the
//! family's unspecified address with prefix 0, an address's lifetime is `None` when infinite.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::prefix;
use super::wire::{self, AddressMessage, LinkMessage, RouteMessage};

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

impl From<u8> for OperState {
    fn from(s: u8) -> Self {
        match s {
            0 => Self::Unknown,
            1 => Self::NotPresent,
            2 => Self::Down,
            3 => Self::LowerLayerDown,
            4 => Self::Testing,
            5 => Self::Dormant,
            6 => Self::Up,
            other => Self::Other(other),
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
    let flags = msg.flags;
    let kind = if flags & wire::IFF_LOOPBACK != 0 {
        LinkKind::Loopback
    } else {
        match (msg.info_kind.as_deref(), msg.link, msg.vlan_id) {
            (None, _, _) => LinkKind::Physical,
            (Some("vlan"), Some(parent), Some(id)) => LinkKind::Vlan { parent, id },
            (Some(k), _, _) => LinkKind::Other(k.to_owned()),
        }
    };
    Some(Link {
        index: msg.index,
        name: msg.name.clone()?,
        mac: msg
            .address
            .as_deref()
            .and_then(|a| <[u8; 6]>::try_from(a).ok()),
        mtu: msg.mtu.unwrap_or(0),
        up: flags & wire::IFF_UP != 0,
        carrier: flags & wire::IFF_LOWER_UP != 0,
        oper: msg.oper_state.map_or(OperState::Unknown, OperState::from),
        kind,
    })
}

/// An IPv4 or IPv6 address from an `RTM_NEWADDR`; `None` for other families.
pub(super) fn address_from(msg: &AddressMessage) -> Option<KernelAddress> {
    if !matches!(msg.family, wire::AF_INET | wire::AF_INET6) {
        return None;
    }
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links and
    // the only one IPv6 sends otherwise.
    Some(KernelAddress {
        index: msg.index,
        addr: msg.local.or(msg.address)?,
        prefix: msg.prefix_len,
        // The header holds only the low 8 flag bits; IFA_FLAGS, when present, has them all.
        flags: AddrFlags(msg.all_flags.unwrap_or(u32::from(msg.flags))),
        proto: msg.proto.unwrap_or(0),
        valid_lft: msg
            .cache
            .and_then(|c| (c.valid != u32::MAX).then_some(c.valid)),
    })
}

/// A route in the main table from an `RTM_NEWROUTE`; `None` for other tables and families.
pub(super) fn route_from(msg: &RouteMessage) -> Option<KernelRoute> {
    let header = &msg.header;
    let unspecified = match header.family {
        wire::AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        wire::AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let table = msg.table.unwrap_or(u32::from(header.table));
    (table == MAIN_TABLE).then_some(KernelRoute {
        dst: msg.dst.unwrap_or(unspecified),
        prefix: header.dst_len,
        gateway: msg.gateway,
        oif: msg.oif,
        metric: msg.priority.unwrap_or(0),
        protocol: RouteProto(header.protocol),
        unicast: header.kind == wire::RTN_UNICAST,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtnl::wire::{CacheInfo, RtMsg};

    #[test]
    fn a_vlan_link_is_read_with_its_parent_and_id() {
        let msg = LinkMessage {
            index: 7,
            flags: wire::IFF_UP | wire::IFF_LOWER_UP,
            name: Some("eth0.100".into()),
            address: Some(vec![2, 0, 0, 0, 0, 1]),
            mtu: Some(1500),
            link: Some(2),
            oper_state: Some(6),
            info_kind: Some("vlan".into()),
            vlan_id: Some(100),
        };
        let link = link_from(&msg).unwrap();
        assert_eq!(link.kind, LinkKind::Vlan { parent: 2, id: 100 });
        assert_eq!(link.mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(link.up && link.carrier);
        assert_eq!(link.oper, OperState::Up);
    }

    #[test]
    fn a_link_without_a_name_or_of_another_kind() {
        let mut msg = LinkMessage {
            index: 3,
            flags: wire::IFF_LOOPBACK | wire::IFF_UP,
            name: Some("lo".into()),
            ..Default::default()
        };
        assert_eq!(link_from(&msg).unwrap().kind, LinkKind::Loopback);
        msg.flags = 0;
        msg.info_kind = Some("veth".into());
        let link = link_from(&msg).unwrap();
        assert_eq!(link.kind, LinkKind::Other("veth".into()));
        assert_eq!(
            (link.mtu, link.oper, link.mac),
            (0, OperState::Unknown, None)
        );
        msg.name = None;
        assert_eq!(link_from(&msg), None);
    }

    #[test]
    fn an_ipv4_address_is_its_local_and_full_flags_win() {
        let msg = AddressMessage {
            family: wire::AF_INET,
            prefix_len: 24,
            flags: 0,
            index: 2,
            address: Some("10.0.0.255".parse().unwrap()),
            local: Some("10.0.0.2".parse().unwrap()),
            all_flags: Some(AddrFlags::PERMANENT | AddrFlags::NOPREFIXROUTE),
            ..Default::default()
        };
        let a = address_from(&msg).unwrap();
        assert_eq!(a.addr, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert!(a.flags.has(AddrFlags::NOPREFIXROUTE) && a.flags.has(AddrFlags::PERMANENT));
        assert_eq!(a.valid_lft, None);
        assert!(!a.is_kernel_made());
    }

    #[test]
    fn an_address_lifetime_and_header_flags_without_ifa_flags() {
        let msg = AddressMessage {
            family: wire::AF_INET6,
            prefix_len: 64,
            flags: AddrFlags::TENTATIVE as u8,
            index: 2,
            address: Some("2001:db8::2".parse().unwrap()),
            proto: Some(2),
            cache: Some(CacheInfo {
                preferred: 100,
                valid: 200,
            }),
            ..Default::default()
        };
        let a = address_from(&msg).unwrap();
        assert_eq!(a.addr, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(a.flags, AddrFlags(AddrFlags::TENTATIVE));
        assert_eq!(a.valid_lft, Some(200));
        assert!(a.is_kernel_made());
        let other = AddressMessage { family: 17, ..msg };
        assert_eq!(address_from(&other), None);
    }

    #[test]
    fn a_default_route_has_the_unspecified_destination_and_other_tables_are_skipped() {
        let mut msg = RouteMessage {
            header: RtMsg {
                family: wire::AF_INET6,
                table: 254,
                protocol: 16,
                kind: wire::RTN_UNICAST,
                ..Default::default()
            },
            gateway: Some("fe80::1".parse().unwrap()),
            oif: Some(2),
            priority: Some(1024),
            ..Default::default()
        };
        let r = route_from(&msg).unwrap();
        assert_eq!((r.dst, r.prefix), (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0));
        assert_eq!(r.protocol, RouteProto::DHCP);
        assert_eq!(r.to_string(), "::/0 via fe80::1 metric 1024 proto dhcp");
        msg.table = Some(100);
        assert_eq!(route_from(&msg), None);
    }
}
