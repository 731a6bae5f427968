use std::net::IpAddr;

use super::*;
use crate::rtnl::desired::{Protocol, VlanOf};
use crate::rtnl::kernel::{OperState, IPV6_DEFAULT_METRIC};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> (IpAddr, u8) {
    let (a, p) = s.split_once('/').unwrap();
    (ip(a), p.parse().unwrap())
}

fn link(index: u32, name: &str) -> Link {
    Link {
        index,
        name: name.into(),
        mac: Some([2, 0, 0, 0, 0, index as u8]),
        mtu: 1500,
        up: true,
        carrier: true,
        oper: OperState::Up,
        kind: if name == "lo" {
            LinkKind::Loopback
        } else {
            LinkKind::Physical
        },
    }
}

fn kaddr(index: u32, s: &str) -> KernelAddress {
    let (addr, prefix) = cidr(s);
    KernelAddress {
        index,
        addr,
        prefix,
        flags: AddrFlags(AddrFlags::PERMANENT),
        proto: 0,
        valid_lft: None,
    }
}

fn kroute(
    index: u32,
    s: &str,
    gateway: Option<&str>,
    metric: u32,
    protocol: RouteProto,
) -> KernelRoute {
    let (dst, prefix) = cidr(s);
    KernelRoute {
        dst,
        prefix,
        gateway: gateway.map(ip),
        oif: Some(index),
        metric,
        protocol,
        unicast: true,
    }
}

fn addr(s: &str) -> Address {
    let (addr, prefix) = cidr(s);
    Address {
        addr,
        prefix,
        valid_lft: None,
    }
}

fn route(s: &str, gateway: Option<&str>, metric: Option<u32>) -> Route {
    let (dst, prefix) = cidr(s);
    Route {
        dst,
        prefix,
        gateway: gateway.map(ip),
        metric,
        protocol: Protocol::Static,
    }
}

fn want(name: &str, addresses: &[&str], routes: Vec<Route>) -> DesiredLink {
    DesiredLink {
        name: name.into(),
        addresses: addresses.iter().map(|s| addr(s)).collect(),
        routes,
        ..DesiredLink::default()
    }
}

/// lo and eth0 (index 2, 10.0.0.2/24 and its prefix route, fe80 link-local) and eth1.
fn kernel() -> KernelState {
    KernelState {
        links: vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1")],
        addresses: vec![
            kaddr(1, "127.0.0.1/8"),
            kaddr(1, "::1/128"),
            kaddr(2, "10.0.0.2/24"),
            kaddr(2, "fe80::2/64"),
        ],
        routes: vec![
            kroute(2, "10.0.0.0/24", None, 0, RouteProto::KERNEL),
            kroute(2, "fe80::/64", None, 256, RouteProto::KERNEL),
        ],
    }
}

/// What the kernel does with each change, as far as `plan` looks: enough to show that a
/// plan, once applied, plans nothing.
fn model_apply(k: &mut KernelState, changes: &[Change]) {
    let index = |k: &KernelState, name: &str| k.link(name).expect("link exists").index;
    for c in changes {
        match c {
            Change::CreateVlan {
                name,
                parent,
                id,
                mtu,
            } => {
                let parent = k.link(parent).unwrap().clone();
                let index = k.links.iter().map(|l| l.index).max().unwrap() + 1;
                k.links.push(Link {
                    index,
                    name: name.clone(),
                    mtu: mtu.unwrap_or(parent.mtu),
                    up: false,
                    kind: LinkKind::Vlan {
                        parent: parent.index,
                        id: *id,
                    },
                    ..parent
                });
            }
            Change::SetMtu { link, mtu } => {
                let i = index(k, link);
                k.links.iter_mut().find(|l| l.index == i).unwrap().mtu = *mtu;
            }
            Change::SetUp { link } => {
                let i = index(k, link);
                k.links.iter_mut().find(|l| l.index == i).unwrap().up = true;
            }
            Change::RemoveRoute { route, .. } => {
                let before = k.routes.len();
                k.routes.retain(|r| r != route);
                assert_eq!(
                    k.routes.len(),
                    before - 1,
                    "removing a route that is not there"
                );
            }
            Change::RemoveAddress { link, addr, prefix } => {
                let i = index(k, link);
                let before = k.addresses.len();
                k.addresses
                    .retain(|a| !(a.index == i && a.addr == *addr && a.prefix == *prefix));
                assert_eq!(
                    k.addresses.len(),
                    before - 1,
                    "removing an address that is not there"
                );
                let net = prefix::network(*addr, *prefix);
                k.routes.retain(|r| {
                    !(r.oif == Some(i) && r.protocol == RouteProto::KERNEL && r.dst == net)
                });
                if addr.is_ipv4() && !k.addresses.iter().any(|a| a.index == i && a.addr.is_ipv4()) {
                    k.routes.retain(|r| !(r.oif == Some(i) && r.dst.is_ipv4()));
                }
            }
            Change::AddAddress { link, address } => {
                let i = index(k, link);
                k.addresses
                    .retain(|a| !(a.index == i && a.addr == address.addr));
                k.addresses.push(KernelAddress {
                    valid_lft: address.valid_lft,
                    ..kaddr(i, &format!("{}/{}", address.addr, address.prefix))
                });
                if address.prefix < prefix::max_len(address.addr) {
                    let net = prefix::network(address.addr, address.prefix);
                    let metric = if net.is_ipv4() { 0 } else { 256 };
                    let kernel_route = kroute(
                        i,
                        &format!("{net}/{}", address.prefix),
                        None,
                        metric,
                        RouteProto::KERNEL,
                    );
                    if !k.routes.contains(&kernel_route) {
                        k.routes.push(kernel_route);
                    }
                }
            }
            Change::AddRoute { link, route } => {
                let i = index(k, link);
                let dst = format!("{}/{}", route.dst, route.prefix);
                let gw = route.gateway.map(|g| g.to_string());
                let new = kroute(
                    i,
                    &dst,
                    gw.as_deref(),
                    route.effective_metric(),
                    route.protocol.proto(),
                );
                assert!(
                    !k.routes.iter().any(|r| r.dst == new.dst
                        && r.prefix == new.prefix
                        && r.metric == new.metric),
                    "adding {new} where the kernel has a route already"
                );
                k.routes.push(new);
            }
        }
    }
}

/// Plans, applies to the model, and checks that planning again gives nothing.
fn converge(k: &mut KernelState, d: &Desired) -> Vec<Change> {
    let changes = plan(k, d).unwrap();
    model_apply(k, &changes);
    assert_eq!(
        plan(k, d).unwrap(),
        vec![],
        "a second plan after {changes:#?}"
    );
    changes
}

fn desired(links: Vec<DesiredLink>) -> Desired {
    Desired { links }
}

#[test]
fn nothing_desired_changes_nothing() {
    assert_eq!(plan(&kernel(), &Desired::default()).unwrap(), vec![]);
}

#[test]
fn the_state_as_it_is_plans_nothing() {
    let d = desired(vec![want("eth0", &["10.0.0.2/24"], vec![])]);
    assert_eq!(plan(&kernel(), &d).unwrap(), vec![]);
}

#[test]
fn a_full_static_config_is_ordered_and_converges() {
    let mut k = kernel();
    k.links[2].up = false;
    let mut eth1 = want(
        "eth1",
        &["192.168.7.2/24", "2001:db8:7::2/64"],
        vec![
            route("10.9.0.0/16", Some("192.168.7.1"), Some(100)),
            route("2001:db8:9::/48", Some("2001:db8:7::1"), None),
            route("0.0.0.0/0", Some("192.168.7.1"), None),
        ],
    );
    eth1.mtu = Some(9000);
    let vlan = DesiredLink {
        vlan: Some(VlanOf {
            parent: "eth1".into(),
            id: 100,
        }),
        ..want(
            "eth1.100",
            &["172.16.0.2/24"],
            vec![route("172.17.0.0/16", Some("172.16.0.1"), None)],
        )
    };
    let d = desired(vec![eth1, vlan]);
    let changes = converge(&mut k, &d);
    let s: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        s,
        [
            "set the MTU of eth1 to 9000",
            "create VLAN eth1.100 (id 100 on eth1)",
            "set eth1 up",
            "set eth1.100 up",
            "add address 192.168.7.2/24 to eth1",
            "add address 2001:db8:7::2/64 to eth1",
            "add address 172.16.0.2/24 to eth1.100",
            "add route 10.9.0.0/16 via 192.168.7.1 metric 100 to eth1",
            "add route 2001:db8:9::/48 via 2001:db8:7::1 metric 1024 to eth1",
            "add route 0.0.0.0/0 via 192.168.7.1 metric 0 to eth1",
            "add route 172.17.0.0/16 via 172.16.0.1 metric 0 to eth1.100",
        ]
    );
}

#[test]
fn unknown_interface_is_refused() {
    let d = desired(vec![want("eth7", &[], vec![])]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(e.to_string(), "interface eth7 does not exist");
}

#[test]
fn gateway_off_every_link_is_refused() {
    let d = desired(vec![want(
        "eth0",
        &["10.0.0.2/24"],
        vec![route("10.9.0.0/16", Some("192.168.7.1"), None)],
    )]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route 10.9.0.0/16: gateway 192.168.7.1 is not on any link"
    );
}

#[test]
fn gateway_on_another_link_is_named() {
    let d = desired(vec![
        want(
            "eth0",
            &["10.0.0.2/24"],
            vec![route("10.9.0.0/16", Some("192.168.7.1"), None)],
        ),
        want("eth1", &["192.168.7.2/24"], vec![]),
    ]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route 10.9.0.0/16: gateway 192.168.7.1 is on eth1, but the route is on eth0"
    );
}

#[test]
fn gateway_through_an_onlink_route_or_link_local_is_fine() {
    let d = desired(vec![want(
        "eth0",
        &[],
        vec![
            route("192.0.2.1/32", None, None),
            route("0.0.0.0/0", Some("192.0.2.1"), None),
            route("::/0", Some("fe80::1"), None),
        ],
    )]);
    let mut k = kernel();
    let changes = converge(&mut k, &d);
    // The on-link route goes in before the route through it.
    let first = changes
        .iter()
        .position(|c| matches!(c, Change::AddRoute { route, .. } if route.gateway.is_none()));
    let second = changes
        .iter()
        .position(|c| matches!(c, Change::AddRoute { route, .. } if route.gateway.is_some()));
    assert!(first < second, "{changes:#?}");
}

#[test]
fn the_same_address_on_two_links_is_refused() {
    let d = desired(vec![
        want("eth0", &["10.0.0.2/24"], vec![]),
        want("eth1", &["10.0.0.2/24"], vec![]),
    ]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "address 10.0.0.2 is desired on both eth0 and eth1"
    );
}

#[test]
fn vlan_with_a_missing_parent_is_refused() {
    let d = desired(vec![DesiredLink {
        vlan: Some(VlanOf {
            parent: "eth9".into(),
            id: 5,
        }),
        ..want("eth9.5", &[], vec![])
    }]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "VLAN eth9.5: parent interface eth9 does not exist"
    );
}

#[test]
fn vlan_of_a_new_vlan_is_created_after_it() {
    let d = desired(vec![
        DesiredLink {
            vlan: Some(VlanOf {
                parent: "eth0.5".into(),
                id: 7,
            }),
            ..want("eth0.5.7", &[], vec![])
        },
        DesiredLink {
            vlan: Some(VlanOf {
                parent: "eth0".into(),
                id: 5,
            }),
            ..want("eth0.5", &[], vec![])
        },
    ]);
    let changes = converge(&mut kernel(), &d);
    let created: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::CreateVlan { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(created, ["eth0.5", "eth0.5.7"]);
}

#[test]
fn a_link_of_the_vlans_name_that_is_not_that_vlan_is_refused() {
    let d = desired(vec![DesiredLink {
        vlan: Some(VlanOf {
            parent: "eth0".into(),
            id: 5,
        }),
        ..want("eth1", &[], vec![])
    }]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "VLAN eth1: eth1 already exists and is not VLAN 5 of eth0"
    );
}

#[test]
fn vlan_mtu_over_its_parent_is_refused() {
    let d = desired(vec![DesiredLink {
        vlan: Some(VlanOf {
            parent: "eth0".into(),
            id: 5,
        }),
        mtu: Some(9000),
        ..want("eth0.5", &[], vec![])
    }]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "VLAN eth0.5: mtu 9000 is larger than its parent eth0's 1500"
    );
}

#[test]
fn undesired_addresses_go_but_not_link_local_nor_loopback() {
    let mut k = kernel();
    k.addresses.push(kaddr(2, "10.0.0.3/24"));
    let d = desired(vec![
        want("eth0", &["10.0.0.2/24"], vec![]),
        want("lo", &[], vec![]),
    ]);
    let changes = converge(&mut k, &d);
    assert_eq!(
        changes,
        [Change::RemoveAddress {
            link: "eth0".into(),
            addr: ip("10.0.0.3"),
            prefix: 24
        }]
    );
    assert!(k.addresses.iter().any(|a| a.addr == ip("fe80::2")));
    assert!(k.addresses.iter().any(|a| a.addr == ip("127.0.0.1")));
}

#[test]
fn routes_of_other_protocols_are_left_alone() {
    let mut k = kernel();
    k.routes.push(kroute(
        2,
        "10.5.0.0/16",
        Some("10.0.0.1"),
        0,
        RouteProto::BOOT,
    ));
    k.routes.push(kroute(
        2,
        "2001:db8::/32",
        Some("fe80::1"),
        1024,
        RouteProto::RA,
    ));
    k.routes.push(kroute(
        2,
        "10.6.0.0/16",
        Some("10.0.0.1"),
        0,
        RouteProto::STATIC,
    ));
    k.routes.push(kroute(
        2,
        "10.7.0.0/16",
        Some("10.0.0.1"),
        0,
        RouteProto::DHCP,
    ));
    // Ours, but on a link that is not managed.
    k.routes
        .push(kroute(3, "10.8.0.0/16", None, 0, RouteProto::STATIC));
    let d = desired(vec![want("eth0", &["10.0.0.2/24"], vec![])]);
    let changes = converge(&mut k, &d);
    let removed: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::RemoveRoute { route, .. } => route.to_string(),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(
        removed,
        [
            "10.6.0.0/16 via 10.0.0.1 metric 0 proto static",
            "10.7.0.0/16 via 10.0.0.1 metric 0 proto dhcp"
        ]
    );
}

#[test]
fn metrics_compare_as_the_kernel_reports_them() {
    let mut k = kernel();
    k.addresses.push(kaddr(2, "2001:db8::2/64"));
    k.routes.push(kroute(
        2,
        "::/0",
        Some("2001:db8::1"),
        IPV6_DEFAULT_METRIC,
        RouteProto::STATIC,
    ));
    k.routes.push(kroute(
        2,
        "0.0.0.0/0",
        Some("10.0.0.1"),
        0,
        RouteProto::STATIC,
    ));
    let d = desired(vec![want(
        "eth0",
        &["10.0.0.2/24", "2001:db8::2/64"],
        vec![
            route("::/0", Some("2001:db8::1"), Some(0)),
            route("0.0.0.0/0", Some("10.0.0.1"), None),
        ],
    )]);
    assert_eq!(plan(&k, &d).unwrap(), vec![]);
}

#[test]
fn a_route_moving_from_dhcp_to_static_is_replaced() {
    let mut k = kernel();
    k.routes.push(kroute(
        2,
        "0.0.0.0/0",
        Some("10.0.0.1"),
        0,
        RouteProto::DHCP,
    ));
    let d = desired(vec![want(
        "eth0",
        &["10.0.0.2/24"],
        vec![route("0.0.0.0/0", Some("10.0.0.1"), None)],
    )]);
    let changes = converge(&mut k, &d);
    assert!(
        matches!(
            changes[..],
            [Change::RemoveRoute { .. }, Change::AddRoute { .. }]
        ),
        "{changes:#?}"
    );
}

#[test]
fn replacing_the_only_ipv4_address_re_adds_the_flushed_routes() {
    let mut k = kernel();
    k.routes.push(kroute(
        2,
        "10.9.0.0/16",
        Some("10.0.0.1"),
        0,
        RouteProto::STATIC,
    ));
    let d = desired(vec![want(
        "eth0",
        &["10.0.0.3/24"],
        vec![route("10.9.0.0/16", Some("10.0.0.1"), None)],
    )]);
    let changes = converge(&mut k, &d);
    assert_eq!(
        changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        [
            "remove address 10.0.0.2/24 from eth0",
            "add address 10.0.0.3/24 to eth0",
            "add route 10.9.0.0/16 via 10.0.0.1 metric 0 to eth0",
        ]
    );
}

#[test]
fn removing_a_primary_removes_and_re_adds_its_secondaries() {
    let mut k = kernel();
    let mut secondary = kaddr(2, "10.0.0.3/24");
    secondary.flags = AddrFlags(AddrFlags::PERMANENT | AddrFlags::SECONDARY);
    k.addresses.push(secondary);
    k.addresses.push(kaddr(2, "10.1.0.2/24"));
    let d = desired(vec![want("eth0", &["10.0.0.3/24", "10.1.0.2/24"], vec![])]);
    let changes = plan(&k, &d).unwrap();
    assert_eq!(
        changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        [
            "remove address 10.0.0.3/24 from eth0",
            "remove address 10.0.0.2/24 from eth0",
            "add address 10.0.0.3/24 to eth0",
        ]
    );
}

#[test]
fn a_lease_lifetime_is_not_renewed_by_planning_but_forever_is_restored() {
    let mut k = kernel();
    k.addresses[2].valid_lft = Some(1234);
    let mut leased = want("eth0", &["10.0.0.2/24"], vec![]);
    leased.addresses[0].valid_lft = Some(3600);
    assert_eq!(plan(&k, &desired(vec![leased])).unwrap(), vec![]);
    let forever = want("eth0", &["10.0.0.2/24"], vec![]);
    let changes = plan(&k, &desired(vec![forever])).unwrap();
    assert_eq!(
        changes,
        [Change::AddAddress {
            link: "eth0".into(),
            address: addr("10.0.0.2/24")
        }]
    );
}

#[test]
fn a_route_in_a_slot_held_by_another_protocol_is_refused() {
    let mut k = kernel();
    k.routes
        .push(kroute(3, "10.9.0.0/16", None, 0, RouteProto::BOOT));
    let d = desired(vec![want(
        "eth0",
        &["10.0.0.2/24"],
        vec![route("10.9.0.0/16", Some("10.0.0.1"), None)],
    )]);
    let e = plan(&k, &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route 10.9.0.0/16 metric 0 on eth0: the kernel already has a proto boot route there that is not managed here"
    );
}

#[test]
fn the_same_route_slot_on_two_links_is_refused() {
    let d = desired(vec![
        want(
            "eth0",
            &["10.0.0.2/24"],
            vec![route("0.0.0.0/0", Some("10.0.0.1"), None)],
        ),
        want(
            "eth1",
            &["10.1.0.2/24"],
            vec![route("0.0.0.0/0", Some("10.1.0.1"), None)],
        ),
    ]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route 0.0.0.0/0 metric 0 is desired on both eth0 and eth1; give one a different metric"
    );
}

#[test]
fn host_bits_in_a_destination_are_refused() {
    let d = desired(vec![want(
        "eth0",
        &["10.0.0.2/24"],
        vec![route("10.9.1.0/16", Some("10.0.0.1"), None)],
    )]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route 10.9.1.0/16: host bits are set (the network is 10.9.0.0/16)"
    );
}

#[test]
fn a_bad_interface_name_is_refused_with_the_reason() {
    let d = desired(vec![DesiredLink {
        vlan: Some(VlanOf {
            parent: "eth0".into(),
            id: 5,
        }),
        ..want("a-very-long-interface", &[], vec![])
    }]);
    let e = plan(&kernel(), &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "interface \"a-very-long-interface\": a name must have 1 to 15 bytes"
    );
}

#[test]
fn a_name_with_a_line_break_is_refused_on_one_line() {
    // Found by the rtnl_datagram fuzz target: a link the kernel reported as "lo\n", desired
    // by name, gave a refusal over two lines.
    let e = plan(&kernel(), &desired(vec![want("lo\n", &[], vec![])])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "interface \"lo\\n\": a name must not contain '/', ':', NUL or whitespace"
    );
}

#[test]
fn ipv6_on_a_small_mtu_is_refused() {
    let mut eth0 = want("eth0", &["2001:db8::2/64"], vec![]);
    eth0.mtu = Some(1000);
    let e = plan(&kernel(), &desired(vec![eth0])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "interface eth0: mtu 1000 is below IPv6's minimum of 1280, so its IPv6 addresses cannot be set"
    );
}

#[test]
fn flush_removes_ours_and_keeps_the_kernels() {
    let mut k = kernel();
    let mut secondary = kaddr(2, "10.0.0.3/24");
    secondary.flags = AddrFlags(AddrFlags::SECONDARY);
    k.addresses.push(secondary);
    k.routes.push(kroute(
        2,
        "0.0.0.0/0",
        Some("10.0.0.1"),
        0,
        RouteProto::DHCP,
    ));
    k.routes.push(kroute(
        2,
        "10.5.0.0/16",
        Some("10.0.0.1"),
        0,
        RouteProto::BOOT,
    ));
    let changes = plan_flush(&k, 2).unwrap();
    assert_eq!(
        changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        [
            "remove route 0.0.0.0/0 via 10.0.0.1 metric 0 proto dhcp from eth0",
            "remove address 10.0.0.3/24 from eth0",
            "remove address 10.0.0.2/24 from eth0",
        ]
    );
    assert_eq!(plan_flush(&k, 1).unwrap(), vec![], "nothing of ours on lo");
    assert_eq!(
        plan_flush(&k, 99).unwrap_err().to_string(),
        "interface #99 does not exist"
    );
}

#[test]
fn a_down_link_is_brought_up_before_routes_go_through_it() {
    let mut k = kernel();
    k.links[1].up = false;
    let d = desired(vec![want(
        "eth0",
        &["10.0.0.2/24"],
        vec![route("10.9.0.0/16", Some("10.0.0.1"), None)],
    )]);
    let changes = converge(&mut k, &d);
    assert_eq!(
        changes[0],
        Change::SetUp {
            link: "eth0".into()
        }
    );
}
