//! `rtnl` against the kernel, in network namespaces of its own: a veth pair between a
//! "device" namespace and a peer, configured through `Rtnl` and checked with `ip -j`, the
//! independent reader. Zero change requests on a re-apply is proven by an `ip monitor` that
//! prints nothing between two markers.

mod support;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn_netcfg::rtnl::{
    Address, Desired, DesiredLink, Error, LinkEvent, LinkKind, Monitor, Protocol, Route, Rtnl,
    VlanOf,
};
use serde_json::Value;
use support::{NetNs, Proc};

const WAIT: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> Address {
    let (a, p) = s.split_once('/').unwrap();
    Address {
        addr: ip(a),
        prefix: p.parse().unwrap(),
        valid_lft: None,
    }
}

fn route(dst: &str, gateway: &str, metric: Option<u32>) -> Route {
    let (a, p) = dst.split_once('/').unwrap();
    Route {
        dst: ip(a),
        prefix: p.parse().unwrap(),
        gateway: Some(ip(gateway)),
        metric,
        protocol: Protocol::Static,
    }
}

/// A device namespace and a peer joined by veth0 (device) / veth0p (peer), both up, with DAD
/// off so that IPv6 addresses do not change flags (and emit events) after they are added.
fn pair(tag: &str) -> (NetNs, NetNs) {
    let dev = NetNs::new(tag);
    let peer = NetNs::new(&format!("{tag}p"));
    for ns in [&dev, &peer] {
        for scope in ["all", "default"] {
            let status = ns
                .command("sysctl")
                .args(["-qw", &format!("net.ipv6.conf.{scope}.accept_dad=0")])
                .status()
                .expect("run sysctl");
            assert!(status.success(), "sysctl accept_dad");
        }
    }
    dev.veth_to("veth0", &peer, "veth0p");
    (dev, peer)
}

/// Whether the kernel has 802.1Q (`CONFIG_VLAN_8021Q`); some CI kernels lack it, and the VLAN
/// parts of these tests are then left out, saying so.
fn vlans_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let ns = NetNs::new("vlanprobe");
        ns.ip(&["link", "add", "probe0", "type", "veth", "peer", "name", "probe1"]);
        let status = Command::new("ip")
            .args(["-n", &ns.name, "link", "add", "link", "probe0", "name", "probe0.5", "type", "vlan", "id", "5"])
            .stderr(Stdio::null())
            .status()
            .expect("run ip");
        if !status.success() {
            eprintln!("NOTE: this kernel cannot make VLAN links; the VLAN parts of this test are left out");
        }
        status.success()
    })
}

fn rtnl_in(ns: &NetNs) -> Rtnl {
    ns.run(|| Rtnl::open().expect("open rtnetlink"))
}

/// veth0 at 1400 bytes with IPv4 and IPv6 addresses and routes, and VLAN 100 on it when the
/// kernel has VLANs.
fn static_config() -> Desired {
    let mut desired = Desired {
        links: vec![
            DesiredLink {
                name: "veth0".into(),
                mtu: Some(1400),
                addresses: vec![addr("192.168.7.2/24"), addr("2001:db8:7::2/64")],
                routes: vec![
                    route("10.9.0.0/16", "192.168.7.1", Some(100)),
                    route("0.0.0.0/0", "192.168.7.1", None),
                    route("2001:db8:9::/48", "2001:db8:7::1", None),
                ],
                ..DesiredLink::default()
            },
            DesiredLink {
                name: "veth0.100".into(),
                mtu: Some(1300),
                vlan: Some(VlanOf {
                    parent: "veth0".into(),
                    id: 100,
                }),
                addresses: vec![addr("172.16.0.2/24")],
                routes: vec![route("172.17.0.0/16", "172.16.0.1", Some(10))],
            },
        ],
    };
    if !vlans_supported() {
        desired.links.pop();
    }
    desired
}

fn json(ns: &NetNs, args: &[&str]) -> Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    serde_json::from_str(&ns.ip_output(&all)).expect("ip -j prints JSON")
}

/// `addr/prefix` of every address on `dev`.
fn addresses(ns: &NetNs, dev: &str) -> Vec<String> {
    let links = json(ns, &["addr", "show", "dev", dev]);
    links[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The main table's routes of one family (`-4`/`-6`), as `dst via gw dev d proto p metric m`.
fn routes(ns: &NetNs, family: &str) -> Vec<String> {
    let table = json(ns, &[family, "route", "show", "table", "main"]);
    table
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut s = r["dst"].as_str().unwrap().to_owned();
            if let Some(gw) = r["gateway"].as_str() {
                s += &format!(" via {gw}");
            }
            s += &format!(
                " dev {} proto {} metric {}",
                r["dev"].as_str().unwrap(),
                r["protocol"].as_str().unwrap_or("boot"),
                r["metric"].as_u64().unwrap_or(0)
            );
            s
        })
        .collect()
}

/// Everything `ip` shows of the namespace's network state.
fn snapshot(ns: &NetNs) -> String {
    [
        ns.ip_output(&["-j", "-d", "link", "show"]),
        ns.ip_output(&["-j", "addr", "show"]),
        ns.ip_output(&["-j", "-4", "route", "show", "table", "all"]),
        ns.ip_output(&["-j", "-6", "route", "show", "table", "all"]),
    ]
    .join("\n")
}

/// A snapshot once the kernel's own follow-ups (operstate, link-local addresses) have settled:
/// two in a row that agree.
fn settled_snapshot(ns: &NetNs) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = snapshot(ns);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = snapshot(ns);
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the namespace's state never settled"
        );
        last = now;
    }
}

/// `ip monitor link address route` in a namespace, read line by line on a thread.
struct IpMonitor<'a> {
    ns: &'a NetNs,
    lines: Receiver<String>,
    _proc: Proc,
}

impl<'a> IpMonitor<'a> {
    fn start(ns: &'a NetNs) -> Self {
        let mut child = Command::new("ip")
            .args(["-n", &ns.name, "monitor", "link", "address", "route"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ip monitor");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        IpMonitor {
            ns,
            lines,
            _proc: Proc(child),
        }
    }

    /// Makes a link named `name` (a dummy, or a bridge when the kernel has no dummies) and waits until the monitor prints it; returns the
    /// event lines printed before it (continuation lines, which start with a space, and lines
    /// about earlier markers left out).
    fn mark(&self, name: &str, earlier: &[&str]) -> Vec<String> {
        let made = |kind: &str| {
            Command::new("ip")
                .args(["-n", &self.ns.name, "link", "add", name, "type", kind])
                .stderr(Stdio::null())
                .status()
                .expect("run ip")
                .success()
        };
        assert!(
            made("dummy") || made("bridge"),
            "cannot make marker link {name}"
        );
        let deadline = Instant::now() + WAIT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("ip monitor never printed marker {name}; it printed {before:#?}")
            });
            if line.contains(name) {
                return before;
            }
            if !line.starts_with(char::is_whitespace) && !earlier.iter().any(|m| line.contains(m)) {
                before.push(line);
            }
        }
    }
}

#[test]
fn static_config_is_applied_and_reapplying_it_sends_nothing() {
    let (dev, _peer) = pair("rtnl-static");
    dev.ip(&["link", "set", "veth0", "down"]);
    let mut rtnl = rtnl_in(&dev);
    let desired = static_config();

    // MTU, up, 2 addresses, 3 routes; and the VLAN's creation, up, address and route.
    let sent = rtnl.reconcile(&desired).expect("apply the static config");
    assert_eq!(sent, if vlans_supported() { 11 } else { 7 });

    let veth = &json(&dev, &["link", "show", "dev", "veth0"])[0];
    assert_eq!(veth["mtu"], 1400);
    assert!(
        veth["flags"].as_array().unwrap().contains(&"UP".into()),
        "{veth}"
    );

    let on_veth = addresses(&dev, "veth0");
    for a in ["192.168.7.2/24", "2001:db8:7::2/64"] {
        assert!(
            on_veth.contains(&a.to_owned()),
            "{a} missing from {on_veth:?}"
        );
    }
    assert!(
        on_veth.iter().any(|a| a.starts_with("fe80::")),
        "the kernel's link-local went: {on_veth:?}"
    );

    let v4 = routes(&dev, "-4");
    for r in [
        "default via 192.168.7.1 dev veth0 proto static metric 0",
        "10.9.0.0/16 via 192.168.7.1 dev veth0 proto static metric 100",
        "192.168.7.0/24 dev veth0 proto kernel metric 0",
    ] {
        assert!(v4.contains(&r.to_owned()), "{r} missing from {v4:#?}");
    }
    let v6 = routes(&dev, "-6");
    let r = "2001:db8:9::/48 via 2001:db8:7::1 dev veth0 proto static metric 1024";
    assert!(v6.contains(&r.to_owned()), "{r} missing from {v6:#?}");

    // What this module reads back agrees with ip.
    let state = rtnl.state().unwrap();
    let parent = state.link("veth0").unwrap();
    assert_eq!(state.link("lo").unwrap().kind, LinkKind::Loopback);
    assert_eq!(
        state.link("veth0").unwrap().kind,
        LinkKind::Other("veth".into())
    );

    if vlans_supported() {
        let vlan = &json(&dev, &["-d", "link", "show", "dev", "veth0.100"])[0];
        assert_eq!(vlan["mtu"], 1300);
        assert_eq!(vlan["link"], "veth0");
        assert_eq!(vlan["linkinfo"]["info_kind"], "vlan");
        assert_eq!(vlan["linkinfo"]["info_data"]["id"], 100);
        assert!(
            vlan["flags"].as_array().unwrap().contains(&"UP".into()),
            "{vlan}"
        );
        assert_eq!(addresses(&dev, "veth0.100"), ["172.16.0.2/24"]);
        let r = "172.17.0.0/16 via 172.16.0.1 dev veth0.100 proto static metric 10";
        assert!(v4.contains(&r.to_owned()), "{r} missing from {v4:#?}");
        let kind = &state.link("veth0.100").unwrap().kind;
        assert_eq!(
            kind,
            &LinkKind::Vlan {
                parent: parent.index,
                id: 100
            }
        );
    }
    let mac: Vec<String> = parent
        .mac
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(veth["address"], mac.join(":"));

    // The second time: no change requests, and an independent listener hears nothing.
    let monitor = IpMonitor::start(&dev);
    monitor.mark("mark-before", &[]);
    assert_eq!(rtnl.reconcile(&desired).unwrap(), 0);
    let heard = monitor.mark("mark-after", &["mark-before"]);
    assert!(
        heard.is_empty(),
        "re-applying changed the kernel: {heard:#?}"
    );
}

#[test]
fn refused_configs_leave_the_state_as_it_was() {
    let (dev, _peer) = pair("rtnl-refuse");
    dev.ip(&[
        "link", "add", "veth1", "type", "veth", "peer", "name", "veth1p",
    ]);
    let mut rtnl = rtnl_in(&dev);
    let mut good = static_config();
    good.links.push(DesiredLink {
        name: "veth1".into(),
        addresses: vec![addr("10.1.0.2/24")],
        ..DesiredLink::default()
    });
    rtnl.reconcile(&good).expect("apply the static config");
    let before = settled_snapshot(&dev);

    // Each bad config also asks for changes that would be fine on their own.
    let variant = |bad: &dyn Fn(&mut Desired)| {
        let mut d = good.clone();
        d.links[0].mtu = Some(1450);
        d.links[0].addresses.push(addr("192.168.7.9/24"));
        d.links[0].routes.remove(0);
        bad(&mut d);
        d
    };
    let cases: [(&str, Desired); 3] = [
        (
            "interface eth7 does not exist",
            variant(&|d| {
                d.links.push(DesiredLink {
                    name: "eth7".into(),
                    ..DesiredLink::default()
                })
            }),
        ),
        (
            "route 10.9.0.0/16: gateway 192.168.8.1 is not on any link",
            variant(&|d| {
                d.links[0]
                    .routes
                    .push(route("10.9.0.0/16", "192.168.8.1", None))
            }),
        ),
        (
            "address 192.168.7.2 is desired on both veth0 and veth1",
            variant(&|d| {
                d.links
                    .last_mut()
                    .unwrap()
                    .addresses
                    .push(addr("192.168.7.2/24"))
            }),
        ),
    ];
    for (message, desired) in cases {
        match rtnl.reconcile(&desired) {
            Err(Error::Plan(e)) => assert_eq!(e.to_string(), message),
            other => panic!("{message}: got {other:?}"),
        }
        assert_eq!(
            snapshot(&dev),
            before,
            "refusing ({message}) changed the kernel's state"
        );
    }
}

#[test]
fn a_changed_config_converges() {
    let (dev, _peer) = pair("rtnl-change");
    let mut rtnl = rtnl_in(&dev);
    let mut desired = Desired {
        links: vec![DesiredLink {
            name: "veth0".into(),
            addresses: vec![addr("192.168.7.2/24"), addr("2001:db8:7::2/64")],
            routes: vec![
                route("10.9.0.0/16", "192.168.7.1", Some(100)),
                route("10.10.0.0/16", "192.168.7.1", None),
            ],
            ..DesiredLink::default()
        }],
    };
    rtnl.reconcile(&desired).expect("apply the first config");
    // Someone else's address on a managed link goes; someone else's route stays.
    dev.ip(&["addr", "add", "192.168.7.50/24", "dev", "veth0"]);
    dev.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:11::/48",
        "via",
        "2001:db8:7::1",
        "dev",
        "veth0",
        "proto",
        "boot",
    ]);

    desired.links[0].addresses[0] = addr("192.168.7.3/24");
    desired.links[0].routes.pop();
    assert!(rtnl.reconcile(&desired).unwrap() > 0);

    assert_eq!(
        addresses(&dev, "veth0")
            .into_iter()
            .filter(|a| !a.starts_with("fe80"))
            .collect::<Vec<_>>(),
        ["192.168.7.3/24", "2001:db8:7::2/64"]
    );
    let v4 = routes(&dev, "-4");
    assert_eq!(
        v4,
        [
            "10.9.0.0/16 via 192.168.7.1 dev veth0 proto static metric 100",
            "192.168.7.0/24 dev veth0 proto kernel metric 0",
        ]
    );
    let v6 = routes(&dev, "-6");
    let theirs = "2001:db8:11::/48 via 2001:db8:7::1 dev veth0 proto boot metric 1024";
    assert!(v6.contains(&theirs.to_owned()), "{v6:#?}");
    assert_eq!(rtnl.reconcile(&desired).unwrap(), 0);
}

#[test]
fn a_lease_is_refreshed_and_flushed() {
    let (dev, _peer) = pair("rtnl-lease");
    let mut rtnl = rtnl_in(&dev);
    let lease = Address {
        valid_lft: Some(300),
        ..addr("192.168.7.2/24")
    };
    let desired = Desired {
        links: vec![DesiredLink {
            name: "veth0".into(),
            addresses: vec![lease],
            routes: vec![Route {
                protocol: Protocol::Dhcp,
                ..route("0.0.0.0/0", "192.168.7.1", None)
            }],
            ..DesiredLink::default()
        }],
    };
    rtnl.reconcile(&desired).unwrap();
    let valid = |dev: &NetNs| -> u64 {
        let links = json(dev, &["-4", "addr", "show", "dev", "veth0"]);
        links[0]["addr_info"][0]["valid_life_time"]
            .as_u64()
            .unwrap()
    };
    assert!((250..=300).contains(&valid(&dev)), "valid {}", valid(&dev));
    assert!(routes(&dev, "-4")
        .contains(&"default via 192.168.7.1 dev veth0 proto dhcp metric 0".to_owned()));
    assert_eq!(
        rtnl.reconcile(&desired).unwrap(),
        0,
        "planning does not renew a lease"
    );

    let index = rtnl.state().unwrap().link("veth0").unwrap().index;
    rtnl.refresh_address(
        index,
        Address {
            valid_lft: Some(3600),
            ..lease
        },
    )
    .unwrap();
    assert!(
        (3500..=3600).contains(&valid(&dev)),
        "valid {}",
        valid(&dev)
    );

    assert_eq!(rtnl.flush(index).unwrap(), 2);
    let left = addresses(&dev, "veth0");
    assert!(
        left.iter().all(|a| a.starts_with("fe80::")) && !left.is_empty(),
        "{left:?}"
    );
    assert_eq!(routes(&dev, "-4"), Vec::<String>::new());
}

#[test]
fn monitor_follows_admin_state_and_carrier() {
    let (dev, peer) = pair("rtnl-monitor");
    let mut monitor = dev.run(|| Monitor::open().expect("open the monitor"));
    let mut expect = |what: &str, want: &dyn Fn(&LinkEvent) -> bool| {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(event) = monitor
            .next(deadline.saturating_duration_since(Instant::now()))
            .unwrap()
        {
            if event.name == "veth0" && want(&event) {
                return;
            }
            seen.push(event);
        }
        panic!("no event for {what}; saw {seen:#?}");
    };

    dev.ip(&["link", "set", "veth0", "down"]);
    expect("admin down", &|e| !e.up && !e.carrier);
    dev.ip(&["link", "set", "veth0", "up"]);
    expect("admin up with carrier", &|e| e.up && e.carrier);
    peer.ip(&["link", "set", "veth0p", "down"]);
    expect("carrier lost", &|e| e.up && !e.carrier);
    peer.ip(&["link", "set", "veth0p", "up"]);
    expect("carrier back", &|e| e.up && e.carrier);
    dev.ip(&["link", "del", "veth0"]);
    expect("removal", &|e| e.removed);
}

#[test]
fn a_kernel_refusal_names_the_change() {
    let (dev, _peer) = pair("rtnl-nack");
    let mut rtnl = rtnl_in(&dev);
    // A change list made by hand, as `plan` would never produce it: a route through a
    // gateway on no subnet.
    let changes = [cairn_netcfg::rtnl::Change::AddRoute {
        link: "veth0".into(),
        route: route("10.9.0.0/16", "192.168.8.1", None),
    }];
    let e = rtnl.apply(&changes).unwrap_err();
    let Error::Refused { what, source } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        what,
        "add route 10.9.0.0/16 via 192.168.8.1 metric 0 to veth0"
    );
    assert_eq!(source.errno, libc::ENETUNREACH, "{source}");
}
