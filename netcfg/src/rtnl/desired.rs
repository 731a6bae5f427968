//! The state the caller wants, as plain data: built from the machine config and DHCP leases.
//!
//! Only the links named here are managed. On a managed link every address and every route of
//! ours (`proto static` or `proto dhcp`) that is not listed here is removed; what the kernel
//! made itself (IPv6 link-local addresses, prefix routes, router-advertisement routes) and what
//! other programs added with another protocol is left alone.

use std::fmt;
use std::net::IpAddr;

use super::kernel::{RouteProto, IPV6_DEFAULT_METRIC};

/// Every managed link and what it should carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub links: Vec<DesiredLink>,
}

/// One managed link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredLink {
    /// Kernel interface name. It must exist, unless `vlan` says how to create it.
    pub name: String,
    /// MTU in bytes; `None` leaves the link's MTU as it is.
    pub mtu: Option<u32>,
    /// Makes this an 802.1Q sub-interface, created when missing.
    pub vlan: Option<VlanOf>,
    pub addresses: Vec<Address>,
    /// Routes out of this link. A gateway must be inside one of this link's subnets: an
    /// address's, or a route's without a gateway (list `192.0.2.1/32` with no gateway to reach
    /// a gateway outside every subnet).
    pub routes: Vec<Route>,
}

/// The parent and id of a VLAN sub-interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlanOf {
    /// The parent link's name; it must exist or be another VLAN listed in the same `Desired`.
    pub parent: String,
    /// 802.1Q VLAN id, 1..=4094.
    pub id: u16,
}

/// An address on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    pub addr: IpAddr,
    /// Prefix length: the subnet the link is on.
    pub prefix: u8,
    /// Lifetime in seconds (a DHCP lease's); `None` for forever. The kernel removes the address
    /// when it runs out; [`super::Rtnl::refresh_address`] renews it. A re-plan does not renew
    /// it: addresses are compared by address, prefix and whether they expire at all.
    pub valid_lft: Option<u32>,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)?;
        if let Some(lft) = self.valid_lft {
            write!(f, " (valid {lft} s)")?;
        }
        Ok(())
    }
}

/// A route out of the link it is listed under, in the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination network, with no host bits set; unspecified with prefix 0 is the default.
    pub dst: IpAddr,
    pub prefix: u8,
    /// Next hop; `None` for a destination straight on the link.
    pub gateway: Option<IpAddr>,
    /// Lower wins. `None` is the kernel's default: 0 for IPv4 and 1024 for IPv6 (where 0 also
    /// means 1024).
    pub metric: Option<u32>,
    /// Who the route is for; it is written as the route's `proto`.
    pub protocol: Protocol,
}

impl Route {
    /// The metric as the kernel will store it and report it back.
    pub fn effective_metric(&self) -> u32 {
        match (self.dst, self.metric) {
            (IpAddr::V6(_), None | Some(0)) => IPV6_DEFAULT_METRIC,
            (_, m) => m.unwrap_or(0),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " metric {}", self.effective_metric())
    }
}

/// Where a route comes from; routes of both kinds are this module's to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// From the config (`RTPROT_STATIC`).
    Static,
    /// From a DHCP lease (`RTPROT_DHCP`).
    Dhcp,
}

impl Protocol {
    pub fn proto(self) -> RouteProto {
        match self {
            Self::Static => RouteProto::STATIC,
            Self::Dhcp => RouteProto::DHCP,
        }
    }
}
