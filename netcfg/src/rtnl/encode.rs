//! The rtnetlink messages for each change, and for the dumps that read the kernel's state.
//!
//! They ask for what `iproute2` would: `ip link add … type vlan`, `ip link set … mtu/up`,
//! `ip addr replace … valid_lft`, `ip route add … proto static metric`, and deletions that name
//! every field of the route the kernel reported, so nothing else matches.

use std::net::IpAddr;

use super::desired::{Address, Route};
use super::kernel::KernelRoute;
use super::wire::{self, Request, RtMsg};

pub fn dump_links() -> Request {
    Request::new(wire::RTM_GETLINK, 0, &wire::ifinfomsg(0, 0, 0))
}

pub fn dump_addresses() -> Request {
    Request::new(wire::RTM_GETADDR, 0, &wire::ifaddrmsg(0, 0, 0, 0, 0))
}

/// Every table's routes of one family (`AF_INET` or `AF_INET6`); the main table's are kept.
pub fn dump_routes(family: u8) -> Request {
    let header = RtMsg {
        family,
        ..RtMsg::default()
    };
    Request::new(wire::RTM_GETROUTE, 0, &header.bytes())
}

/// `RTM_GETLINK` for one link by name.
pub fn get_link(name: &str) -> Request {
    Request::new(wire::RTM_GETLINK, 0, &wire::ifinfomsg(0, 0, 0)).attr_str(wire::IFLA_IFNAME, name)
}

pub fn create_vlan(name: &str, parent: u32, id: u16, mtu: Option<u32>) -> Request {
    // In iproute2's order (`ip link add link P name N mtu M type vlan id I`).
    let mut request = Request::new(
        wire::RTM_NEWLINK,
        wire::NLM_F_CREATE | wire::NLM_F_EXCL,
        &wire::ifinfomsg(0, 0, 0),
    );
    if let Some(mtu) = mtu {
        request = request.attr_u32(wire::IFLA_MTU, mtu);
    }
    let mut data = Vec::new();
    wire::put_attr(&mut data, wire::IFLA_VLAN_ID, &id.to_ne_bytes());
    let mut info = Vec::new();
    wire::put_attr(&mut info, wire::IFLA_INFO_KIND, b"vlan\0");
    wire::put_attr(&mut info, wire::IFLA_INFO_DATA, &data);
    request
        .attr_u32(wire::IFLA_LINK, parent)
        .attr_str(wire::IFLA_IFNAME, name)
        .attr(wire::IFLA_LINKINFO, &info)
}

pub fn set_mtu(index: u32, mtu: u32) -> Request {
    Request::new(wire::RTM_SETLINK, 0, &wire::ifinfomsg(index, 0, 0)).attr_u32(wire::IFLA_MTU, mtu)
}

pub fn set_up(index: u32) -> Request {
    let header = wire::ifinfomsg(index, wire::IFF_UP, wire::IFF_UP);
    Request::new(wire::RTM_SETLINK, 0, &header)
}

/// Adds the address, or replaces the lifetimes of the one that is there (`ip addr replace`).
pub fn add_address(index: u32, a: &Address) -> Request {
    let mut request = address_request(
        wire::RTM_NEWADDR,
        wire::NLM_F_CREATE | wire::NLM_F_REPLACE,
        index,
        a.addr,
        a.prefix,
    );
    if let IpAddr::V4(v4) = a.addr {
        if a.prefix < 31 {
            let host = u32::MAX.checked_shr(u32::from(a.prefix)).unwrap_or(0);
            let broadcast = IpAddr::V4((u32::from(v4) | host).into());
            request = request.attr_ip(wire::IFA_BROADCAST, broadcast);
        }
    }
    let lft = a.valid_lft.unwrap_or(u32::MAX);
    request.attr(wire::IFA_CACHEINFO, &wire::ifa_cacheinfo(lft, lft))
}

pub fn remove_address(index: u32, addr: IpAddr, prefix: u8) -> Request {
    address_request(wire::RTM_DELADDR, 0, index, addr, prefix)
}

fn address_request(kind: u16, flags: u16, index: u32, addr: IpAddr, prefix: u8) -> Request {
    // IPv4 takes the scope from the request (IPv6 works it out): 127/8 is host-only.
    let scope = match addr {
        IpAddr::V4(a) if a.is_loopback() => wire::RT_SCOPE_HOST,
        _ => wire::RT_SCOPE_UNIVERSE,
    };
    let header = wire::ifaddrmsg(wire::family_of(addr), prefix, 0, scope, index);
    Request::new(kind, flags, &header)
        .attr_ip(wire::IFA_LOCAL, addr)
        .attr_ip(wire::IFA_ADDRESS, addr)
}

/// `NLM_F_EXCL`, so a route already in the slot is an error rather than a silent second path.
pub fn add_route(index: u32, r: &Route) -> Request {
    let scope = match (r.dst, r.gateway) {
        (IpAddr::V4(_), None) => wire::RT_SCOPE_LINK,
        _ => wire::RT_SCOPE_UNIVERSE,
    };
    route_request(
        wire::RTM_NEWROUTE,
        wire::NLM_F_CREATE | wire::NLM_F_EXCL,
        (r.dst, r.prefix),
        r.gateway,
        Some(index),
        r.protocol.proto().0,
        scope,
    )
    .attr_u32(wire::RTA_PRIORITY, r.effective_metric())
}

pub fn remove_route(r: &KernelRoute) -> Request {
    route_request(
        wire::RTM_DELROUTE,
        0,
        (r.dst, r.prefix),
        r.gateway,
        r.oif,
        r.protocol.0,
        // RT_SCOPE_NOWHERE matches a route of any scope.
        wire::RT_SCOPE_NOWHERE,
    )
    .attr_u32(wire::RTA_PRIORITY, r.metric)
}

fn route_request(
    kind: u16,
    flags: u16,
    (dst, prefix): (IpAddr, u8),
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    protocol: u8,
    scope: u8,
) -> Request {
    let header = RtMsg {
        family: wire::family_of(dst),
        dst_len: prefix,
        table: wire::RT_TABLE_MAIN,
        protocol,
        scope,
        kind: wire::RTN_UNICAST,
    };
    let mut request = Request::new(kind, flags, &header.bytes());
    if prefix > 0 {
        request = request.attr_ip(wire::RTA_DST, dst);
    }
    if let Some(gw) = gateway {
        request = request.attr_ip(wire::RTA_GATEWAY, gw);
    }
    if let Some(oif) = oif {
        request = request.attr_u32(wire::RTA_OIF, oif);
    }
    request
}

/// Every request against the bytes the kernel UAPI layout gives (`nlmsghdr`, then
/// `ifinfomsg`/`ifaddrmsg`/`rtmsg`, then attributes padded to 4 bytes). The vectors were
/// produced by the netlink-packet-route 0.34 encoder this module used before, and are
/// little-endian: every field is in host byte order.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::rtnl::desired::Protocol;
    use crate::rtnl::kernel::RouteProto;
    use crate::rtnl::wire::{NLM_F_ACK, NLM_F_DUMP};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn address(addr: &str, prefix: u8, valid_lft: Option<u32>) -> Address {
        Address {
            addr: ip(addr),
            prefix,
            valid_lft,
        }
    }

    fn route(
        dst: &str,
        prefix: u8,
        gateway: Option<&str>,
        metric: Option<u32>,
        protocol: Protocol,
    ) -> Route {
        Route {
            dst: ip(dst),
            prefix,
            gateway: gateway.map(ip),
            metric,
            protocol,
        }
    }

    fn kernel_route(
        dst: &str,
        prefix: u8,
        gateway: Option<&str>,
        oif: Option<u32>,
        metric: u32,
        protocol: RouteProto,
    ) -> KernelRoute {
        KernelRoute {
            dst: ip(dst),
            prefix,
            gateway: gateway.map(ip),
            oif,
            metric,
            protocol,
            unicast: true,
        }
    }

    /// The body of the request `ip link add link v0 name v0.5 mtu 1400 type vlan id 5` sends
    /// (iproute2 6.1, captured with strace; v0 had index 3), but for one thing: iproute2 sends
    /// the kind as "vlan" and this module as "vlan\0" (like `nla_put_string`), which pads it to
    /// 12 bytes and IFLA_LINKINFO to 28. The kernel reads both (`nla_strscpy`).
    const IPROUTE2_VLAN: &[u8] = b"\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x08\x00\x04\x00\x78\x05\x00\x00\
        \x08\x00\x05\x00\x03\x00\x00\x00\
        \x09\x00\x03\x00\x76\x30\x2e\x35\x00\x00\x00\x00\
        \x1c\x00\x12\x00\x09\x00\x01\x00\x76\x6c\x61\x6e\x00\x00\x00\x00\
        \x0c\x00\x02\x00\x06\x00\x01\x00\x05\x00\x00\x00";

    #[test]
    fn vlan_creation_is_what_iproute2_sends() {
        let request = create_vlan("v0.5", 3, 5, Some(1400));
        assert_eq!(request.flags, wire::NLM_F_CREATE | wire::NLM_F_EXCL);
        assert_eq!(&request.message(0, 0)[wire::NLMSG_HDRLEN..], IPROUTE2_VLAN);
    }

    #[test]
    fn encodes_dump_links() {
        let want: &[u8] = b"\
        \x20\x00\x00\x00\x12\x00\x01\x03\x07\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(dump_links().message(NLM_F_DUMP, 7), want);
    }

    #[test]
    fn encodes_dump_addresses() {
        let want: &[u8] = b"\
        \x18\x00\x00\x00\x16\x00\x01\x03\x07\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(dump_addresses().message(NLM_F_DUMP, 7), want);
    }

    #[test]
    fn encodes_dump_routes4() {
        let want: &[u8] = b"\
        \x1c\x00\x00\x00\x1a\x00\x01\x03\x07\x00\x00\x00\x00\x00\x00\x00\
        \x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(dump_routes(wire::AF_INET).message(NLM_F_DUMP, 7), want);
    }

    #[test]
    fn encodes_dump_routes6() {
        let want: &[u8] = b"\
        \x1c\x00\x00\x00\x1a\x00\x01\x03\x07\x00\x00\x00\x00\x00\x00\x00\
        \x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(dump_routes(wire::AF_INET6).message(NLM_F_DUMP, 7), want);
    }

    #[test]
    fn encodes_get_link() {
        let want: &[u8] = b"\
        \x2c\x00\x00\x00\x12\x00\x05\x00\x07\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x09\x00\x03\x00\x65\x74\x68\x30\x00\x00\x00\x00";
        assert_eq!(get_link("eth0").message(NLM_F_ACK, 7), want);
    }

    #[test]
    fn encodes_vlan_mtu() {
        let want: &[u8] = b"\
        \x58\x00\x00\x00\x10\x00\x05\x06\x07\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x08\x00\x04\x00\x78\x05\x00\x00\x08\x00\x05\x00\x03\x00\x00\x00\
        \x09\x00\x03\x00\x76\x30\x2e\x35\x00\x00\x00\x00\x1c\x00\x12\x00\
        \x09\x00\x01\x00\x76\x6c\x61\x6e\x00\x00\x00\x00\x0c\x00\x02\x00\
        \x06\x00\x01\x00\x05\x00\x00\x00";
        assert_eq!(
            create_vlan("v0.5", 3, 5, Some(1400)).message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_vlan() {
        let want: &[u8] = b"\
        \x54\x00\x00\x00\x10\x00\x05\x06\x07\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x08\x00\x05\x00\x02\x00\x00\x00\x10\x00\x03\x00\x75\x70\x6c\x69\
        \x6e\x6b\x2e\x34\x30\x39\x34\x00\x1c\x00\x12\x00\x09\x00\x01\x00\
        \x76\x6c\x61\x6e\x00\x00\x00\x00\x0c\x00\x02\x00\x06\x00\x01\x00\
        \xfe\x0f\x00\x00";
        assert_eq!(
            create_vlan("uplink.4094", 2, 4094, None).message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_set_mtu() {
        let want: &[u8] = b"\
        \x28\x00\x00\x00\x13\x00\x05\x00\x07\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x08\x00\x04\x00\x28\x23\x00\x00";
        assert_eq!(set_mtu(4, 9000).message(NLM_F_ACK, 7), want);
    }

    #[test]
    fn encodes_set_up() {
        let want: &[u8] = b"\
        \x20\x00\x00\x00\x13\x00\x05\x00\x07\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00";
        assert_eq!(set_up(4).message(NLM_F_ACK, 7), want);
    }

    #[test]
    fn encodes_addr4() {
        let want: &[u8] = b"\
        \x44\x00\x00\x00\x14\x00\x05\x05\x07\x00\x00\x00\x00\x00\x00\x00\
        \x02\x18\x00\x00\x02\x00\x00\x00\x08\x00\x02\x00\xc0\x00\x02\x0a\
        \x08\x00\x01\x00\xc0\x00\x02\x0a\x08\x00\x04\x00\xc0\x00\x02\xff\
        \x14\x00\x06\x00\x10\x0e\x00\x00\x10\x0e\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x00";
        assert_eq!(
            add_address(2, &address("192.0.2.10", 24, Some(3600))).message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_addr4_31() {
        let want: &[u8] = b"\
        \x3c\x00\x00\x00\x14\x00\x05\x05\x07\x00\x00\x00\x00\x00\x00\x00\
        \x02\x1f\x00\x00\x02\x00\x00\x00\x08\x00\x02\x00\xc0\x00\x02\x0a\
        \x08\x00\x01\x00\xc0\x00\x02\x0a\x14\x00\x06\x00\xff\xff\xff\xff\
        \xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(
            add_address(2, &address("192.0.2.10", 31, None)).message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_addr_lo() {
        let want: &[u8] = b"\
        \x44\x00\x00\x00\x14\x00\x05\x05\x07\x00\x00\x00\x00\x00\x00\x00\
        \x02\x08\x00\xfe\x01\x00\x00\x00\x08\x00\x02\x00\x7f\x00\x00\x02\
        \x08\x00\x01\x00\x7f\x00\x00\x02\x08\x00\x04\x00\x7f\xff\xff\xff\
        \x14\x00\x06\x00\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00\
        \x00\x00\x00\x00";
        assert_eq!(
            add_address(1, &address("127.0.0.2", 8, None)).message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_addr6() {
        let want: &[u8] = b"\
        \x54\x00\x00\x00\x14\x00\x05\x05\x07\x00\x00\x00\x00\x00\x00\x00\
        \x0a\x40\x00\x00\x03\x00\x00\x00\x14\x00\x02\x00\x20\x01\x0d\xb8\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x14\x00\x01\x00\
        \x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\
        \x14\x00\x06\x00\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00\
        \x00\x00\x00\x00";
        assert_eq!(
            add_address(3, &address("2001:db8::5", 64, None)).message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_deladdr4() {
        let want: &[u8] = b"\
        \x28\x00\x00\x00\x15\x00\x05\x00\x07\x00\x00\x00\x00\x00\x00\x00\
        \x02\x18\x00\x00\x02\x00\x00\x00\x08\x00\x02\x00\xc0\x00\x02\x0a\
        \x08\x00\x01\x00\xc0\x00\x02\x0a";
        assert_eq!(
            remove_address(2, ip("192.0.2.10"), 24).message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_deladdr6() {
        let want: &[u8] = b"\
        \x40\x00\x00\x00\x15\x00\x05\x00\x07\x00\x00\x00\x00\x00\x00\x00\
        \x0a\x40\x00\x00\x03\x00\x00\x00\x14\x00\x02\x00\x20\x01\x0d\xb8\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x14\x00\x01\x00\
        \x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05";
        assert_eq!(
            remove_address(3, ip("2001:db8::5"), 64).message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_route4_default() {
        let want: &[u8] = b"\
        \x34\x00\x00\x00\x18\x00\x05\x06\x07\x00\x00\x00\x00\x00\x00\x00\
        \x02\x00\x00\x00\xfe\x10\x00\x01\x00\x00\x00\x00\x08\x00\x05\x00\
        \xc0\x00\x02\x01\x08\x00\x04\x00\x02\x00\x00\x00\x08\x00\x06\x00\
        \x64\x00\x00\x00";
        assert_eq!(
            add_route(
                2,
                &route("0.0.0.0", 0, Some("192.0.2.1"), Some(100), Protocol::Dhcp)
            )
            .message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_route4_link() {
        let want: &[u8] = b"\
        \x34\x00\x00\x00\x18\x00\x05\x06\x07\x00\x00\x00\x00\x00\x00\x00\
        \x02\x18\x00\x00\xfe\x04\xfd\x01\x00\x00\x00\x00\x08\x00\x01\x00\
        \xc6\x33\x64\x00\x08\x00\x04\x00\x02\x00\x00\x00\x08\x00\x06\x00\
        \x00\x00\x00\x00";
        assert_eq!(
            add_route(2, &route("198.51.100.0", 24, None, None, Protocol::Static))
                .message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_route6() {
        let want: &[u8] = b"\
        \x54\x00\x00\x00\x18\x00\x05\x06\x07\x00\x00\x00\x00\x00\x00\x00\
        \x0a\x30\x00\x00\xfe\x04\x00\x01\x00\x00\x00\x00\x14\x00\x01\x00\
        \x20\x01\x0d\xb8\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x14\x00\x05\x00\xfe\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x00\x00\x00\x01\x08\x00\x04\x00\x03\x00\x00\x00\x08\x00\x06\x00\
        \x00\x04\x00\x00";
        assert_eq!(
            add_route(
                3,
                &route("2001:db8:1::", 48, Some("fe80::1"), None, Protocol::Static)
            )
            .message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_delroute4() {
        let want: &[u8] = b"\
        \x3c\x00\x00\x00\x19\x00\x05\x00\x07\x00\x00\x00\x00\x00\x00\x00\
        \x02\x18\x00\x00\xfe\x04\xff\x01\x00\x00\x00\x00\x08\x00\x01\x00\
        \xc6\x33\x64\x00\x08\x00\x05\x00\xc0\x00\x02\x01\x08\x00\x04\x00\
        \x02\x00\x00\x00\x08\x00\x06\x00\x05\x00\x00\x00";
        assert_eq!(
            remove_route(&kernel_route(
                "198.51.100.0",
                24,
                Some("192.0.2.1"),
                Some(2),
                5,
                RouteProto::STATIC
            ))
            .message(NLM_F_ACK, 7),
            want
        );
    }

    #[test]
    fn encodes_delroute6() {
        let want: &[u8] = b"\
        \x38\x00\x00\x00\x19\x00\x05\x00\x07\x00\x00\x00\x00\x00\x00\x00\
        \x0a\x00\x00\x00\xfe\x10\xff\x01\x00\x00\x00\x00\x14\x00\x05\x00\
        \xfe\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\
        \x08\x00\x06\x00\x00\x04\x00\x00";
        assert_eq!(
            remove_route(&kernel_route(
                "::",
                0,
                Some("fe80::1"),
                None,
                1024,
                RouteProto::DHCP
            ))
            .message(NLM_F_ACK, 7),
            want
        );
    }
}
