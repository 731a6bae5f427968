//! From the kernel's state and the desired one to an ordered list of changes, with no kernel.
//!
//! `plan` checks the whole desired state before it lists a single change, so a config that
//! cannot be reached (an interface that does not exist, a gateway off every link, an address
//! on two links) changes nothing. When it is reachable, the changes come in an order the kernel
//! accepts: links grow their MTU parents first, VLANs are created before they are addressed,
//! links are up before routes go through them, stale routes go before stale addresses, and
//! routes straight onto a link come before routes through a gateway on it.
//!
//! The kernel has side effects that the plan accounts for, so that one pass converges and the
//! next plans nothing: removing a link's last IPv4 address flushes every IPv4 route through
//! the link (they are added back), and removing an IPv4 primary address takes the secondaries
//! of its subnet with it, or promotes one, depending on a sysctl (so they are removed first and
//! added back, which is the same either way).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::desired::{Address, Desired, DesiredLink, Route};
use super::error::PlanError;
use super::kernel::{
    AddrFlags, KernelAddress, KernelRoute, KernelState, Link, LinkKind, RouteProto,
};
use super::prefix;

/// Longest interface name (`IFNAMSIZ` less its NUL).
const MAX_NAME_LEN: usize = 15;
/// The smallest MTU at which the kernel keeps IPv6 on a link.
const IPV6_MIN_MTU: u32 = 1280;
/// The metric of the prefix route the kernel adds for an IPv6 address (`IP6_RT_PRIO_ADDRCONF`).
const IPV6_PREFIX_ROUTE_METRIC: u32 = 256;

/// One change request to the kernel. Links are named; `apply` looks their index up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new 802.1Q sub-interface of `parent`, created down.
    CreateVlan {
        name: String,
        parent: String,
        id: u16,
        mtu: Option<u32>,
    },
    SetMtu {
        link: String,
        mtu: u32,
    },
    /// Sets `IFF_UP`.
    SetUp {
        link: String,
    },
    /// Removes exactly the route the kernel reported.
    RemoveRoute {
        link: String,
        route: KernelRoute,
    },
    RemoveAddress {
        link: String,
        addr: IpAddr,
        prefix: u8,
    },
    /// Adds the address, or replaces the lifetime of the one that is there.
    AddAddress {
        link: String,
        address: Address,
    },
    AddRoute {
        link: String,
        route: Route,
    },
}

/// Reads as the object of "the kernel refused to …".
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateVlan {
                name, parent, id, ..
            } => {
                write!(f, "create VLAN {name} (id {id} on {parent})")
            }
            Self::SetMtu { link, mtu } => write!(f, "set the MTU of {link} to {mtu}"),
            Self::SetUp { link } => write!(f, "set {link} up"),
            Self::RemoveRoute { link, route } => write!(f, "remove route {route} from {link}"),
            Self::RemoveAddress { link, addr, prefix } => {
                write!(f, "remove address {addr}/{prefix} from {link}")
            }
            Self::AddAddress { link, address } => write!(f, "add address {address} to {link}"),
            Self::AddRoute { link, route } => write!(f, "add route {route} to {link}"),
        }
    }
}

/// The changes that take `kernel` to `desired`, in order; none when it is there already.
pub fn plan(kernel: &KernelState, desired: &Desired) -> Result<Vec<Change>, PlanError> {
    let links = managed_links(kernel, desired)?;
    let create = creation_order(kernel, &links)?;
    check_mtus(kernel, &links)?;
    check_addresses(&links)?;
    check_routes(kernel, &links)?;
    Ok(changes(kernel, &links, &create))
}

/// The changes that remove everything of ours from the link with `index`: every address the
/// kernel did not make itself (none on loopback) and every `proto static`/`proto dhcp` route.
pub fn plan_flush(kernel: &KernelState, index: u32) -> Result<Vec<Change>, PlanError> {
    let link = kernel
        .link_by_index(index)
        .ok_or(PlanError::NoSuchIndex(index))?;
    let mut out: Vec<Change> = kernel
        .routes_on(index)
        .filter(|r| r.protocol.is_ours())
        .map(|r| Change::RemoveRoute {
            link: link.name.clone(),
            route: r.clone(),
        })
        .collect();
    if link.kind != LinkKind::Loopback {
        let mut addrs: Vec<&KernelAddress> = kernel
            .addresses_on(index)
            .filter(|a| !a.is_kernel_made())
            .collect();
        secondaries_first(&mut addrs);
        out.extend(addrs.into_iter().map(|a| remove_address(link, a)));
    }
    Ok(out)
}

/// A desired link and the kernel's link of that name, if there is one.
struct Managed<'a> {
    want: &'a DesiredLink,
    have: Option<&'a Link>,
}

fn managed_links<'a>(
    kernel: &'a KernelState,
    desired: &'a Desired,
) -> Result<Vec<Managed<'a>>, PlanError> {
    let mut seen = HashSet::new();
    let mut links = Vec::with_capacity(desired.links.len());
    for want in &desired.links {
        check_name(&want.name)?;
        if !seen.insert(want.name.as_str()) {
            return Err(PlanError::DuplicateLink(want.name.clone()));
        }
        let have = kernel.link(&want.name);
        match (&want.vlan, have) {
            (None, None) => return Err(PlanError::NoSuchLink(want.name.clone())),
            (None, Some(_)) => {}
            (Some(vlan), have) => {
                if !(1..=4094).contains(&vlan.id) {
                    return Err(PlanError::BadVlanId {
                        name: want.name.clone(),
                        id: vlan.id,
                    });
                }
                let parent = kernel.link(&vlan.parent).map(|p| p.index);
                let is_it = |l: &Link| matches!(l.kind, LinkKind::Vlan { parent: p, id } if Some(p) == parent && id == vlan.id);
                if have.is_some_and(|l| !is_it(l)) {
                    return Err(PlanError::NotThatVlan {
                        name: want.name.clone(),
                        parent: vlan.parent.clone(),
                        id: vlan.id,
                    });
                }
            }
        }
        links.push(Managed { want, have });
    }
    Ok(links)
}

/// Refuses what the kernel would refuse (`dev_valid_name`), with the reason.
pub(super) fn check_name(name: &str) -> Result<(), PlanError> {
    let bad = |reason| {
        Err(PlanError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad("a name must have 1 to 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("a name must not be . or ..");
    }
    if name.contains(|c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace()) {
        return bad("a name must not contain '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// Indexes into `links` of the VLANs to create, each after its parent.
fn creation_order(kernel: &KernelState, links: &[Managed]) -> Result<Vec<usize>, PlanError> {
    let mut pending: Vec<usize> = (0..links.len())
        .filter(|&i| links[i].have.is_none())
        .collect();
    let mut created: HashSet<&str> = HashSet::new();
    let mut order = Vec::with_capacity(pending.len());
    while let Some(&first) = pending.first() {
        let before = pending.len();
        let mut i = 0;
        while i < pending.len() {
            let want = links[pending[i]].want;
            let parent = want.vlan.as_ref().map_or("", |v| v.parent.as_str());
            if kernel.link(parent).is_some() || created.contains(parent) {
                created.insert(&want.name);
                order.push(pending.remove(i));
            } else {
                i += 1;
            }
        }
        if pending.len() == before {
            let want = links[first].want;
            let parent = want
                .vlan
                .as_ref()
                .map_or(String::new(), |v| v.parent.clone());
            return Err(PlanError::NoVlanParent {
                name: want.name.clone(),
                parent,
            });
        }
    }
    Ok(order)
}

fn check_mtus(kernel: &KernelState, links: &[Managed]) -> Result<(), PlanError> {
    let final_mtu = |name: &str| -> Option<u32> {
        let managed = links.iter().find(|m| m.want.name == name);
        managed
            .and_then(|m| m.want.mtu)
            .or_else(|| kernel.link(name).map(|l| l.mtu))
    };
    for m in links {
        let name = &m.want.name;
        if let Some(mtu) = final_mtu(name) {
            if mtu < IPV6_MIN_MTU && m.want.addresses.iter().any(|a| a.addr.is_ipv6()) {
                return Err(PlanError::MtuTooSmallForIpv6 {
                    link: name.clone(),
                    mtu,
                });
            }
        }
        if let (Some(vlan), Some(mtu)) = (&m.want.vlan, m.want.mtu) {
            match final_mtu(&vlan.parent) {
                Some(parent_mtu) if mtu > parent_mtu => {
                    return Err(PlanError::VlanMtuOverParent {
                        name: name.clone(),
                        mtu,
                        parent: vlan.parent.clone(),
                        parent_mtu,
                    })
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_addresses(links: &[Managed]) -> Result<(), PlanError> {
    let mut owner: HashMap<IpAddr, &str> = HashMap::new();
    for m in links {
        let link = m.want.name.as_str();
        for a in &m.want.addresses {
            let max = prefix::max_len(a.addr);
            if a.prefix > max {
                return Err(PlanError::BadAddressPrefix {
                    link: link.to_owned(),
                    addr: a.addr,
                    prefix: a.prefix,
                    max,
                });
            }
            if a.valid_lft == Some(0) {
                return Err(PlanError::ZeroLifetime {
                    link: link.to_owned(),
                    addr: a.addr,
                    prefix: a.prefix,
                });
            }
            match owner.insert(a.addr, link) {
                None => {}
                Some(first) if first == link => {
                    return Err(PlanError::DuplicateAddressOnLink {
                        addr: a.addr,
                        link: link.to_owned(),
                    })
                }
                Some(first) => {
                    return Err(PlanError::DuplicateAddress {
                        addr: a.addr,
                        first: first.to_owned(),
                        second: link.to_owned(),
                    })
                }
            }
        }
    }
    Ok(())
}

/// A route's place in a table: the kernel refuses a second route with the same destination,
/// prefix and metric (with `NLM_F_EXCL`), whatever its link or gateway.
type Slot = (IpAddr, u8, u32);

fn check_routes(kernel: &KernelState, links: &[Managed]) -> Result<(), PlanError> {
    let on_link: Vec<Vec<(IpAddr, u8)>> = links.iter().map(|m| on_link(kernel, m)).collect();
    let mut slots: HashMap<Slot, &str> = HashMap::new();
    for (i, m) in links.iter().enumerate() {
        let link = m.want.name.as_str();
        for r in &m.want.routes {
            check_route_shape(r)?;
            if let Some(gateway) = r.gateway {
                check_gateway(r, gateway, i, links, &on_link)?;
            }
            let slot = (r.dst, r.prefix, r.effective_metric());
            if let Some(first) = slots.insert(slot, link) {
                return Err(PlanError::DuplicateRoute {
                    dst: r.dst,
                    prefix: r.prefix,
                    metric: slot.2,
                    first: first.to_owned(),
                    second: link.to_owned(),
                });
            }
        }
    }
    for (slot, owner) in staying_slots(kernel, links) {
        if let Some(link) = slots.get(&slot) {
            return Err(PlanError::RouteTaken {
                dst: slot.0,
                prefix: slot.1,
                metric: slot.2,
                link: (*link).to_owned(),
                owner: owner.to_string(),
            });
        }
    }
    Ok(())
}

fn check_route_shape(r: &Route) -> Result<(), PlanError> {
    let max = prefix::max_len(r.dst);
    if r.prefix > max {
        return Err(PlanError::BadRoutePrefix {
            dst: r.dst,
            prefix: r.prefix,
            max,
        });
    }
    let network = prefix::network(r.dst, r.prefix);
    if network != r.dst {
        // The kernel refuses these for IPv4 and silently masks them for IPv6, after which
        // the route it reports back would never match the one asked for.
        return Err(PlanError::HostBitsSet {
            dst: r.dst,
            prefix: r.prefix,
            network,
        });
    }
    match r.gateway {
        Some(gw) if gw.is_ipv4() != r.dst.is_ipv4() || gw.is_unspecified() => {
            Err(PlanError::GatewayFamily {
                dst: r.dst,
                prefix: r.prefix,
                gateway: gw,
            })
        }
        _ => Ok(()),
    }
}

/// The gateway must be on the route's own link; the error names the link it is on instead.
fn check_gateway(
    r: &Route,
    gateway: IpAddr,
    link: usize,
    links: &[Managed],
    on_link: &[Vec<(IpAddr, u8)>],
) -> Result<(), PlanError> {
    let reaches = |i: usize| {
        on_link[i]
            .iter()
            .any(|&(net, len)| prefix::contains(net, len, gateway))
    };
    if prefix::is_ipv6_link_local(gateway) || reaches(link) {
        return Ok(());
    }
    match (0..links.len()).find(|&i| reaches(i)) {
        Some(other) => Err(PlanError::GatewayOnOtherLink {
            dst: r.dst,
            prefix: r.prefix,
            gateway,
            link: links[link].want.name.clone(),
            other: links[other].want.name.clone(),
        }),
        None => Err(PlanError::GatewayNotOnLink {
            dst: r.dst,
            prefix: r.prefix,
            gateway,
        }),
    }
}

/// The subnets directly on a managed link once the plan is applied: its desired addresses'
/// and gatewayless routes', the addresses the kernel made itself, and gatewayless routes
/// that other programs put there.
fn on_link(kernel: &KernelState, m: &Managed) -> Vec<(IpAddr, u8)> {
    let mut nets: Vec<(IpAddr, u8)> = m
        .want
        .addresses
        .iter()
        .map(|a| (a.addr, a.prefix))
        .collect();
    nets.extend(
        m.want
            .routes
            .iter()
            .filter(|r| r.gateway.is_none())
            .map(|r| (r.dst, r.prefix)),
    );
    if let Some(link) = m.have {
        nets.extend(
            kernel
                .addresses_on(link.index)
                .filter(|a| a.is_kernel_made())
                .map(|a| (a.addr, a.prefix)),
        );
        nets.extend(
            kernel
                .routes_on(link.index)
                .filter(|r| r.unicast && r.gateway.is_none() && stays(r))
                .map(|r| (r.dst, r.prefix)),
        );
    }
    nets
}

/// Whether a route on a managed link outlives the plan whatever it is: not ours (ours are
/// matched or removed) and not the kernel's (its prefix routes follow the addresses).
fn stays(r: &KernelRoute) -> bool {
    !r.protocol.is_ours() && r.protocol != RouteProto::KERNEL
}

/// The route slots the kernel will hold once the plan is applied, apart from the desired
/// routes themselves, with who holds them.
fn staying_slots(kernel: &KernelState, links: &[Managed]) -> Vec<(Slot, RouteProto)> {
    let managed: HashSet<u32> = links
        .iter()
        .filter_map(|m| m.have.map(|l| l.index))
        .collect();
    let mut slots: Vec<(Slot, RouteProto)> = kernel
        .routes
        .iter()
        .filter(|r| !r.oif.is_some_and(|i| managed.contains(&i)) || stays(r))
        .map(|r| ((r.dst, r.prefix, r.metric), r.protocol))
        .collect();
    // The prefix routes the kernel will add for the desired addresses, and fe80::/64.
    let link_local = (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 64);
    let kernel_route = |(net, len): (IpAddr, u8)| {
        let metric = if net.is_ipv4() {
            0
        } else {
            IPV6_PREFIX_ROUTE_METRIC
        };
        ((prefix::network(net, len), len, metric), RouteProto::KERNEL)
    };
    for m in links {
        let subnets = m
            .want
            .addresses
            .iter()
            .filter(|a| a.prefix < prefix::max_len(a.addr));
        slots.extend(subnets.map(|a| kernel_route((a.addr, a.prefix))));
        slots.push(kernel_route(link_local));
    }
    slots
}

/// Whether the kernel's route is exactly the desired one, as the kernel reports it back.
fn route_matches(k: &KernelRoute, w: &Route) -> bool {
    k.unicast
        && k.dst == w.dst
        && k.prefix == w.prefix
        && k.gateway == w.gateway
        && k.metric == w.effective_metric()
        && k.protocol == w.protocol.proto()
}

/// IPv4 secondaries before primaries, so removing a primary never takes others with it.
fn secondaries_first(addrs: &mut [&KernelAddress]) {
    addrs.sort_by_key(|a| !a.flags.has(AddrFlags::SECONDARY));
}

fn remove_address(link: &Link, a: &KernelAddress) -> Change {
    Change::RemoveAddress {
        link: link.name.clone(),
        addr: a.addr,
        prefix: a.prefix,
    }
}

/// The address removals on one existing, managed link.
struct Removals<'a> {
    addresses: Vec<&'a KernelAddress>,
    /// Every IPv4 address goes, so the kernel flushes the link's IPv4 routes.
    flushes_ipv4: bool,
}

fn address_removals<'a>(kernel: &'a KernelState, want: &DesiredLink, link: &Link) -> Removals<'a> {
    let present: Vec<&KernelAddress> = kernel.addresses_on(link.index).collect();
    if link.kind == LinkKind::Loopback {
        return Removals {
            addresses: Vec::new(),
            flushes_ipv4: false,
        };
    }
    let wanted = |k: &KernelAddress| {
        want.addresses
            .iter()
            .any(|a| a.addr == k.addr && a.prefix == k.prefix)
    };
    let mut remove: Vec<&KernelAddress> = present
        .iter()
        .copied()
        .filter(|k| !k.is_kernel_made() && !wanted(k))
        .collect();
    let primaries: Vec<&KernelAddress> = remove
        .iter()
        .copied()
        .filter(|k| k.addr.is_ipv4() && !k.flags.has(AddrFlags::SECONDARY))
        .collect();
    let orphaned = present.iter().copied().filter(|k| {
        k.flags.has(AddrFlags::SECONDARY)
            && wanted(k)
            && primaries
                .iter()
                .any(|p| p.prefix == k.prefix && prefix::contains(p.addr, p.prefix, k.addr))
    });
    remove.extend(orphaned);
    secondaries_first(&mut remove);
    let ipv4 = |a: &&&KernelAddress| a.addr.is_ipv4();
    let before = present.iter().filter(ipv4).count();
    let flushes_ipv4 = before > 0 && remove.iter().filter(ipv4).count() == before;
    Removals {
        addresses: remove,
        flushes_ipv4,
    }
}

fn changes(kernel: &KernelState, links: &[Managed], create: &[usize]) -> Vec<Change> {
    let mut out = Vec::new();
    let existing = || links.iter().filter_map(|m| m.have.map(|l| (m.want, l)));
    let is_vlan = |l: &Link| matches!(l.kind, LinkKind::Vlan { .. });

    // A VLAN's MTU cannot exceed its parent's: parents first, then new VLANs, then old ones.
    let set_mtu = |want: &DesiredLink, l: &Link| {
        want.mtu
            .filter(|&mtu| mtu != l.mtu)
            .map(|mtu| Change::SetMtu {
                link: l.name.clone(),
                mtu,
            })
    };
    out.extend(
        existing()
            .filter(|(_, l)| !is_vlan(l))
            .filter_map(|(w, l)| set_mtu(w, l)),
    );
    for &i in create {
        let want = links[i].want;
        let vlan = want.vlan.as_ref().expect("only VLANs are created");
        out.push(Change::CreateVlan {
            name: want.name.clone(),
            parent: vlan.parent.clone(),
            id: vlan.id,
            mtu: want.mtu,
        });
    }
    out.extend(
        existing()
            .filter(|(_, l)| is_vlan(l))
            .filter_map(|(w, l)| set_mtu(w, l)),
    );

    // Up before anything is routed through it (IPv4 refuses a gateway on a down link).
    out.extend(
        existing()
            .filter(|(_, l)| !l.up)
            .map(|(_, l)| Change::SetUp {
                link: l.name.clone(),
            }),
    );
    out.extend(create.iter().map(|&i| Change::SetUp {
        link: links[i].want.name.clone(),
    }));

    // Stale routes first: removing addresses may take routes with it, and then they are gone.
    for (want, l) in existing() {
        let stale = kernel
            .routes_on(l.index)
            .filter(|r| r.protocol.is_ours() && !want.routes.iter().any(|w| route_matches(r, w)));
        out.extend(stale.map(|r| Change::RemoveRoute {
            link: l.name.clone(),
            route: r.clone(),
        }));
    }

    let mut removed: Vec<&KernelAddress> = Vec::new();
    let mut flushed: HashSet<u32> = HashSet::new();
    for (want, l) in existing() {
        let r = address_removals(kernel, want, l);
        if r.flushes_ipv4 {
            flushed.insert(l.index);
        }
        out.extend(r.addresses.iter().map(|a| remove_address(l, a)));
        removed.extend(r.addresses);
    }

    for m in links {
        for a in &m.want.addresses {
            let current = m.have.and_then(|l| {
                kernel
                    .addresses_on(l.index)
                    .find(|k| k.addr == a.addr && k.prefix == a.prefix)
                    .filter(|k| !removed.iter().any(|r| std::ptr::eq(*r, *k)))
            });
            let fine = current.is_some_and(|k| k.valid_lft.is_some() == a.valid_lft.is_some());
            if !fine {
                out.push(Change::AddAddress {
                    link: m.want.name.clone(),
                    address: *a,
                });
            }
        }
    }

    // Routes onto the link before routes through a gateway on it.
    for through_gateway in [false, true] {
        for m in links {
            let wanted = m
                .want
                .routes
                .iter()
                .filter(|r| r.gateway.is_some() == through_gateway);
            for w in wanted {
                let present = m.have.is_some_and(|l| {
                    !(w.dst.is_ipv4() && flushed.contains(&l.index))
                        && kernel.routes_on(l.index).any(|k| route_matches(k, w))
                });
                if !present {
                    out.push(Change::AddRoute {
                        link: m.want.name.clone(),
                        route: *w,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
