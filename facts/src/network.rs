//! The `network` section of the machine config, and the checks that can be made without a
//! kernel. `cairn_netcfg` applies it (and re-exports this module as `cairn_netcfg::config`).
//!
//! ```yaml
//! network:
//!   hostname: edge-01
//!   interfaces:
//!     - name: eth0                  # or `mac: "52:54:00:12:34:56"`
//!       addresses: [192.168.1.10/24, "2001:db8::10/64"]
//!       mtu: 1500
//!       routes:
//!         - {to: 0.0.0.0/0, via: 192.168.1.1, metric: 100}
//!       vlans:
//!         - {id: 20, dhcp4: true}   # named eth0.20
//!     - mac: "52:54:00:aa:bb:cc"    # no addresses: DHCPv4
//!   nameservers: [192.168.1.1]
//!   search: [example.com]
//!   ntp: [pool.ntp.org]
//! ```
//!
//! No `network` section, or one without `interfaces`, means DHCPv4 on every physical link that
//! has a carrier. An interface takes DHCPv4 when it has no static address, unless `dhcp4` says
//! otherwise. What can only be checked against the kernel (that the interface exists, that a
//! gateway is on a link once DHCP has answered) is checked when the config is applied, and a
//! refusal there leaves the network as it was.
//!
//! The raw types ([`RawNetwork`] and friends) are what serde reads and what the published JSON
//! Schema describes; [`RawNetwork::check`] turns them into [`Network`], whose values are parsed
//! and whose errors name the field (`network.interfaces[0].addresses[1]: …`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

pub mod prefix;

/// Longest interface name the kernel takes (`IFNAMSIZ` less its NUL).
pub const MAX_IFNAME: usize = 15;
const MAX_INTERFACES: usize = 64;
const MAX_ADDRESSES: usize = 64;
const MAX_ROUTES: usize = 256;
const MAX_VLANS: usize = 64;
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH: usize = 6;
const MAX_NTP: usize = 8;
/// The smallest MTU IPv4 allows a link (RFC 791's 576 would refuse real links; the kernel's
/// own floor for IPv4 is 68) and the largest jumbo frame Linux drivers take.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// `network` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawNetwork {
    /// The machine's hostname (RFC 1123 labels). A DHCP-offered name is used when absent.
    pub hostname: Option<String>,
    /// Interfaces to configure. Absent or empty: DHCPv4 on every physical link with carrier.
    #[serde(default)]
    pub interfaces: Vec<RawInterface>,
    /// DNS servers, before any a DHCP server offers (at most 3).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// DNS search domains, before any DHCP offers (at most 6).
    #[serde(default)]
    pub search: Vec<String>,
    /// NTP servers, `host` or `host:port`, before any DHCP offers (at most 8).
    #[serde(default)]
    pub ntp: Vec<String>,
}

/// One interface as written: selected by `name` or by `mac`, exactly one of them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawInterface {
    /// Kernel interface name, such as `eth0`.
    pub name: Option<String>,
    /// Hardware address, `52:54:00:12:34:56`.
    pub mac: Option<String>,
    /// DHCPv4 on this link. Default: true when `addresses` is empty, false otherwise.
    pub dhcp4: Option<bool>,
    /// Static addresses with prefix length: `192.168.1.10/24`, `2001:db8::10/64`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Link MTU in bytes (68..=65535).
    pub mtu: Option<u32>,
    /// Static routes through this link.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// 802.1Q sub-interfaces of this link.
    #[serde(default)]
    pub vlans: Vec<RawVlan>,
}

/// What an interface or VLAN carries, as written (the same four fields in both).
struct RawSettings<'a> {
    dhcp4: Option<bool>,
    addresses: &'a [String],
    mtu: Option<u32>,
    routes: &'a [RawRoute],
}

/// A VLAN sub-interface as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawVlan {
    /// VLAN id, 1..=4094.
    pub id: u16,
    /// Interface name; default `<parent>.<id>`.
    pub name: Option<String>,
    /// DHCPv4 on this link. Default: true when `addresses` is empty, false otherwise.
    pub dhcp4: Option<bool>,
    /// Static addresses with prefix length: `192.168.1.10/24`, `2001:db8::10/64`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Link MTU in bytes (68..=65535).
    pub mtu: Option<u32>,
    /// Static routes through this link.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// A route as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RawRoute {
    /// Destination with prefix length; `0.0.0.0/0` or `::/0` for the default route.
    pub to: String,
    /// Gateway; absent for a route straight onto the link.
    pub via: Option<String>,
    /// Route metric (priority); lower wins. Default 0.
    pub metric: Option<u32>,
}

/// An address with its prefix length, `192.168.1.10/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`; the error says what was expected.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad =
            || format!("{text:?} is not an address with a prefix length (like 192.168.1.10/24)");
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        // Digits only: `u8::from_str` would take "+24".
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{text:?}: prefix length {prefix} is over {max}"));
        }
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        prefix::contains(self.addr, self.prefix, ip)
    }

    /// The network address: host bits cleared.
    pub fn network(&self) -> Cidr {
        Cidr {
            addr: prefix::network(self.addr, self.prefix),
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How an interface is picked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    Name(String),
    Mac([u8; 6]),
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Select::Name(n) => f.write_str(n),
            Select::Mac(m) => f.write_str(&format_mac(m)),
        }
    }
}

/// A checked route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub to: Cidr,
    pub via: Option<IpAddr>,
    pub metric: Option<u32>,
}

/// What a checked interface or VLAN carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub dhcp4: bool,
    pub addresses: Vec<Cidr>,
    pub mtu: Option<u32>,
    pub routes: Vec<RouteConfig>,
}

/// A checked VLAN; `name` is `None` when it is to be `<parent>.<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vlan {
    pub id: u16,
    pub name: Option<String>,
    pub settings: Settings,
}

/// A checked interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub select: Select,
    pub settings: Settings,
    pub vlans: Vec<Vlan>,
}

/// A checked `network` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    pub hostname: Option<String>,
    /// Empty: DHCPv4 on every physical link with carrier.
    pub interfaces: Vec<Interface>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub ntp: Vec<String>,
}

impl RawNetwork {
    /// Checks every value; the error is one line that starts with the field's path.
    pub fn check(&self) -> Result<Network, String> {
        let mut net = Network::default();
        if let Some(h) = &self.hostname {
            check_hostname(h).map_err(|e| format!("network.hostname: {e}"))?;
            net.hostname = Some(h.clone());
        }
        limit("network.interfaces", self.interfaces.len(), MAX_INTERFACES)?;
        for (i, raw) in self.interfaces.iter().enumerate() {
            let at = format!("network.interfaces[{i}]");
            net.interfaces.push(check_interface(&at, raw)?);
        }
        limit(
            "network.nameservers",
            self.nameservers.len(),
            MAX_NAMESERVERS,
        )?;
        for (i, s) in self.nameservers.iter().enumerate() {
            let ip = s
                .parse()
                .map_err(|_| format!("network.nameservers[{i}]: {s:?} is not an IP address"))?;
            net.nameservers.push(ip);
        }
        limit("network.search", self.search.len(), MAX_SEARCH)?;
        for (i, d) in self.search.iter().enumerate() {
            check_domain(d).map_err(|e| format!("network.search[{i}]: {e}"))?;
            net.search.push(d.clone());
        }
        limit("network.ntp", self.ntp.len(), MAX_NTP)?;
        for (i, s) in self.ntp.iter().enumerate() {
            check_ntp_server(s).map_err(|e| format!("network.ntp[{i}]: {e}"))?;
            net.ntp.push(s.clone());
        }
        check_across(&net)?;
        Ok(net)
    }
}

fn limit(at: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{at}: {len} entries, at most {max} are allowed"));
    }
    Ok(())
}

fn check_interface(at: &str, raw: &RawInterface) -> Result<Interface, String> {
    let select = match (&raw.name, &raw.mac) {
        (Some(name), None) => {
            check_ifname(name).map_err(|e| format!("{at}.name: {e}"))?;
            Select::Name(name.clone())
        }
        (None, Some(mac)) => Select::Mac(parse_mac(mac).map_err(|e| format!("{at}.mac: {e}"))?),
        (Some(_), Some(_)) => return Err(format!("{at}: give `name` or `mac`, not both")),
        (None, None) => return Err(format!("{at}: give the interface's `name` or its `mac`")),
    };
    let settings = check_settings(
        at,
        &RawSettings {
            dhcp4: raw.dhcp4,
            addresses: &raw.addresses,
            mtu: raw.mtu,
            routes: &raw.routes,
        },
    )?;
    limit(&format!("{at}.vlans"), raw.vlans.len(), MAX_VLANS)?;
    let mut vlans = Vec::new();
    for (i, v) in raw.vlans.iter().enumerate() {
        let vat = format!("{at}.vlans[{i}]");
        if !(1..=4094).contains(&v.id) {
            return Err(format!("{vat}.id: {} is not a VLAN id (1..=4094)", v.id));
        }
        if let Some(name) = &v.name {
            check_ifname(name).map_err(|e| format!("{vat}.name: {e}"))?;
        } else if let Select::Name(parent) = &select {
            check_ifname(&format!("{parent}.{}", v.id))
                .map_err(|e| format!("{vat}: the default name {e}; give `name`"))?;
        } else {
            return Err(format!(
                "{vat}: a VLAN on an interface picked by `mac` needs a `name`"
            ));
        }
        if vlans.iter().any(|o: &Vlan| o.id == v.id) {
            return Err(format!("{vat}.id: VLAN {} appears twice", v.id));
        }
        vlans.push(Vlan {
            id: v.id,
            name: v.name.clone(),
            settings: check_settings(
                &vat,
                &RawSettings {
                    dhcp4: v.dhcp4,
                    addresses: &v.addresses,
                    mtu: v.mtu,
                    routes: &v.routes,
                },
            )?,
        });
    }
    Ok(Interface {
        select,
        settings,
        vlans,
    })
}

fn check_settings(at: &str, raw: &RawSettings<'_>) -> Result<Settings, String> {
    limit(
        &format!("{at}.addresses"),
        raw.addresses.len(),
        MAX_ADDRESSES,
    )?;
    limit(&format!("{at}.routes"), raw.routes.len(), MAX_ROUTES)?;
    let mut s = Settings {
        dhcp4: raw.dhcp4.unwrap_or(raw.addresses.is_empty()),
        mtu: raw.mtu,
        ..Settings::default()
    };
    if let Some(mtu) = raw.mtu {
        if !MTU_RANGE.contains(&mtu) {
            return Err(format!(
                "{at}.mtu: {mtu} is outside {}..={}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ));
        }
    }
    for (i, a) in raw.addresses.iter().enumerate() {
        let cidr = Cidr::parse(a).map_err(|e| format!("{at}.addresses[{i}]: {e}"))?;
        if cidr.addr.is_unspecified() || cidr.addr.is_multicast() || cidr.addr.is_loopback() {
            return Err(format!(
                "{at}.addresses[{i}]: {a:?} cannot be an interface address"
            ));
        }
        if s.addresses.iter().any(|o| o.addr == cidr.addr) {
            return Err(format!("{at}.addresses[{i}]: {} appears twice", cidr.addr));
        }
        s.addresses.push(cidr);
    }
    for (i, r) in raw.routes.iter().enumerate() {
        let rat = format!("{at}.routes[{i}]");
        let to = Cidr::parse(&r.to).map_err(|e| format!("{rat}.to: {e}"))?;
        if to.network() != to {
            return Err(format!(
                "{rat}.to: {to} has host bits set; the network is {}",
                to.network()
            ));
        }
        let via = match &r.via {
            None => None,
            Some(v) => {
                let ip: IpAddr = v
                    .parse()
                    .map_err(|_| format!("{rat}.via: {v:?} is not an IP address"))?;
                if ip.is_ipv4() != to.addr.is_ipv4() {
                    return Err(format!(
                        "{rat}.via: {ip} and {to} are different IP versions"
                    ));
                }
                Some(ip)
            }
        };
        s.routes.push(RouteConfig {
            to,
            via,
            metric: r.metric,
        });
    }
    Ok(s)
}

/// Checks that need the whole section: one address on one link only, interfaces named once,
/// and a gateway on a static link's own subnets (a DHCP link's subnets are known only once the
/// server answers, so its gateways are checked when the lease is applied).
fn check_across(net: &Network) -> Result<(), String> {
    let mut seen_addr: HashMap<IpAddr, String> = HashMap::new();
    let mut seen_select: HashMap<String, String> = HashMap::new();
    let all_static: Vec<Cidr> = net
        .interfaces
        .iter()
        .flat_map(|i| {
            let vlan = i.vlans.iter().flat_map(|v| v.settings.addresses.iter());
            i.settings.addresses.iter().chain(vlan)
        })
        .copied()
        .collect();
    for (i, iface) in net.interfaces.iter().enumerate() {
        let at = format!("network.interfaces[{i}]");
        if let Some(first) = seen_select.insert(iface.select.to_string(), at.clone()) {
            return Err(format!(
                "{at}: {} is already configured by {first}",
                iface.select
            ));
        }
        let mut parts = vec![(at.clone(), &iface.settings)];
        for (j, v) in iface.vlans.iter().enumerate() {
            parts.push((format!("{at}.vlans[{j}]"), &v.settings));
        }
        for (pat, s) in parts {
            for (k, a) in s.addresses.iter().enumerate() {
                let here = format!("{pat}.addresses[{k}]");
                if let Some(first) = seen_addr.insert(a.addr, here.clone()) {
                    return Err(format!("{here}: {} is already given to {first}", a.addr));
                }
            }
            if s.dhcp4 {
                continue;
            }
            for (k, r) in s.routes.iter().enumerate() {
                if let Some(gw) = r.via {
                    if !all_static.iter().any(|c| c.contains(gw)) {
                        return Err(format!(
                            "{pat}.routes[{k}].via: gateway {gw} is not on any link \
                             (no configured address has it in its subnet)"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parses `52:54:00:12:34:56` (or with `-`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{text:?} is not a MAC address (like 52:54:00:12:34:56)");
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Interface names the kernel takes: 1..=15 bytes, no `/`, `:`, whitespace, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(format!("{name:?} is not 1..={MAX_IFNAME} bytes long"));
    }
    if name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || !b.is_ascii_graphic())
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

/// A DNS name: labels of 1..=63 letters, digits and hyphens, not starting or ending with a
/// hyphen, at most 253 bytes; one trailing dot allowed.
pub fn check_domain(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid domain name"))
    }
}

/// A hostname: one or more DNS labels, at most 64 bytes (the kernel's limit).
pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.len() > 64 || name.ends_with('.') {
        return Err(format!("{name:?} is not a valid hostname"));
    }
    check_domain(name).map_err(|_| format!("{name:?} is not a valid hostname"))
}

/// `host` or `host:port`, `[v6]:port`, or a bare IPv6 address.
fn check_ntp_server(text: &str) -> Result<(), String> {
    if text.parse::<IpAddr>().is_ok() || text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (text, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{text:?}: {p:?} is not a port number"));
        }
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_domain(host).map_err(|_| format!("{text:?} is not a host name or address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Network, String> {
        let raw: RawNetwork = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        raw.check()
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let yaml = crate::doc_yaml(include_str!("network.rs"));
        #[derive(Deserialize)]
        struct Doc {
            network: RawNetwork,
        }
        let d: Doc = serde_norway::from_str(&yaml).unwrap();
        let net = d.network.check().unwrap();
        assert_eq!(net.hostname.as_deref(), Some("edge-01"));
        let eth0 = &net.interfaces[0];
        assert_eq!(eth0.select, Select::Name("eth0".into()));
        assert!(!eth0.settings.dhcp4);
        assert_eq!(eth0.settings.addresses.len(), 2);
        assert_eq!(
            eth0.settings.routes[0].via,
            Some("192.168.1.1".parse().unwrap())
        );
        assert_eq!(eth0.vlans[0].id, 20);
        assert!(eth0.vlans[0].settings.dhcp4);
        assert_eq!(
            net.interfaces[1].select,
            Select::Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])
        );
        assert!(net.interfaces[1].settings.dhcp4);
        assert_eq!(net.ntp, ["pool.ntp.org"]);
    }

    #[test]
    fn no_interfaces_means_dhcp_everywhere() {
        assert_eq!(check("{}").unwrap(), Network::default());
        assert!(check("hostname: box").unwrap().interfaces.is_empty());
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let c = Cidr::parse("192.168.1.10/24").unwrap();
        assert!(c.contains("192.168.1.1".parse().unwrap()));
        assert!(!c.contains("192.168.2.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(c.network().to_string(), "192.168.1.0/24");
        let z = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(z.contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::10/64").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(Cidr::parse("::/0").unwrap().network().to_string(), "::/0");
        for bad in [
            "10.0.0.1",
            "10.0.0.300/24",
            "10.0.0.1/33",
            "10.0.0.1/+8",
            "x/8",
            "::1/129",
            "1.2.3.4/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (yaml, want) in [
            ("interfaces: [{name: eth0, addresses: [10.0.0.300/24]}]", "network.interfaces[0].addresses[0]: \"10.0.0.300/24\" is not an address"),
            ("interfaces: [{name: eth0, addresses: [10.0.0.1/24, 10.0.0.1/16]}]", "network.interfaces[0].addresses[1]: 10.0.0.1 appears twice"),
            ("interfaces: [{name: eth0, addresses: [10.0.0.1/24]}, {name: eth1, addresses: [10.0.0.1/24]}]", "network.interfaces[1].addresses[0]: 10.0.0.1 is already given to network.interfaces[0].addresses[0]"),
            ("interfaces: [{name: eth0, addresses: [10.0.0.1/24], routes: [{to: 0.0.0.0/0, via: 10.9.0.1}]}]", "network.interfaces[0].routes[0].via: gateway 10.9.0.1 is not on any link"),
            ("interfaces: [{name: eth0, routes: [{to: 10.1.2.3/16}]}]", "network.interfaces[0].routes[0].to: 10.1.2.3/16 has host bits set"),
            ("interfaces: [{name: eth0, routes: [{to: 10.0.0.0/8, via: \"::1\"}]}]", "different IP versions"),
            ("interfaces: [{name: eth0, mtu: 20}]", "network.interfaces[0].mtu: 20 is outside"),
            ("interfaces: [{name: eth0, mac: \"52:54:00:12:34:56\"}]", "not both"),
            ("interfaces: [{dhcp4: true}]", "give the interface's `name` or its `mac`"),
            ("interfaces: [{mac: \"52:54:00:12:34\"}]", "network.interfaces[0].mac: \"52:54:00:12:34\" is not a MAC address"),
            ("interfaces: [{name: averyveryverylongname}]", "network.interfaces[0].name"),
            ("interfaces: [{name: eth0}, {name: eth0}]", "network.interfaces[1]: eth0 is already configured by network.interfaces[0]"),
            ("interfaces: [{name: eth0, vlans: [{id: 0}]}]", "network.interfaces[0].vlans[0].id: 0 is not a VLAN id"),
            ("interfaces: [{name: enp0s31f6long, vlans: [{id: 100}]}]", "give `name`"),
            ("interfaces: [{mac: \"52:54:00:12:34:56\", vlans: [{id: 10}]}]", "needs a `name`"),
            ("nameservers: [1.1.1.1, dns.example]", "network.nameservers[1]: \"dns.example\" is not an IP address"),
            ("nameservers: [1.1.1.1, 1.0.0.1, 8.8.8.8, 8.8.4.4]", "network.nameservers: 4 entries, at most 3"),
            ("search: [-bad.example]", "network.search[0]"),
            ("hostname: \"under_score\"", "network.hostname"),
            ("ntp: [\"pool.ntp.org:0\"]", "network.ntp[0]"),
            ("interfaces: [{name: eth0, adresses: []}]", "unknown field `adresses`"),
        ] {
            let err = check(yaml).unwrap_err();
            assert!(err.contains(want), "{yaml}\n  gave {err}\n  lacks {want}");
        }
    }

    #[test]
    fn ntp_servers_take_ports_and_v6() {
        let net = check("ntp: [10.0.2.2, \"10.0.2.2:1123\", \"[2001:db8::1]:123\", \"2001:db8::1\", time.example:123]").unwrap();
        assert_eq!(net.ntp.len(), 5);
    }

    #[test]
    fn vlan_default_names_and_macs() {
        let net = check("interfaces: [{name: eth0, vlans: [{id: 7, addresses: [10.7.0.2/24]}]}]")
            .unwrap();
        assert_eq!(net.interfaces[0].vlans[0].name, None);
        assert_eq!(
            parse_mac("52-54-00-AA-bb-01").unwrap(),
            [0x52, 0x54, 0, 0xaa, 0xbb, 1]
        );
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xaa, 0xbb, 1]),
            "52:54:00:aa:bb:01"
        );
    }
}
