//! Prefix arithmetic on `IpAddr`: the network of an address, and whether a prefix holds one.
//! [`super::Cidr`] checks with it, and netcfg's route planning uses the same functions
//! (`cairn_netcfg::rtnl::prefix`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// 32 for IPv4, 128 for IPv6.
pub fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// `addr` with the bits past `len` cleared. `len` must be at most [`max_len`].
pub fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// Whether `ip` is inside `net/len` (false across families).
pub fn contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    net.is_ipv4() == ip.is_ipv4() && network(net, len) == network(ip, len)
}

/// `fe80::/10`, where a gateway is always reachable through the link's own `fe80::/64` route.
pub fn is_ipv6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.is_unicast_link_local())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks() {
        assert_eq!(network(ip("10.1.2.3"), 16), ip("10.1.0.0"));
        assert_eq!(network(ip("10.1.2.3"), 0), ip("0.0.0.0"));
        assert_eq!(network(ip("10.1.2.3"), 32), ip("10.1.2.3"));
        assert_eq!(network(ip("2001:db8::1"), 64), ip("2001:db8::"));
        assert_eq!(network(ip("2001:db8::1"), 128), ip("2001:db8::1"));
    }

    #[test]
    fn containment() {
        assert!(contains(ip("192.168.7.0"), 24, ip("192.168.7.1")));
        assert!(!contains(ip("192.168.7.0"), 24, ip("192.168.8.1")));
        assert!(contains(ip("0.0.0.0"), 0, ip("8.8.8.8")));
        assert!(!contains(ip("0.0.0.0"), 0, ip("::1")));
        assert!(is_ipv6_link_local(ip("fe80::1")));
        assert!(!is_ipv6_link_local(ip("2001:db8::1")));
    }
}
