//! The whole network loop ([`Netcfg`]) in a namespace, wired to a real dnsmasq in another: the
//! default config takes a lease and applies it, writes the resolver config, follows the cable,
//! takes a static config, refuses a bad one with the network untouched, and applies an
//! unchanged one with no netlink change at all.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_netcfg::agent::{Netcfg, Options};
use cairn_netcfg::config::{Network, RawNetwork};
use support::{Dnsmasq, NetNs};

const WAIT: Duration = Duration::from_secs(20);

fn network(yaml: &str) -> Network {
    let raw: RawNetwork = serde_norway::from_str(yaml).unwrap();
    raw.check().unwrap()
}

/// Log lines the loop printed, shared with the test.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn log(&self) -> cairn_netcfg::agent::Log {
        let lines = self.0.clone();
        Arc::new(move |l: &str| lines.lock().unwrap().push(l.to_string()))
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.0.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn options(dir: &std::path::Path) -> Options {
    Options {
        resolv_conf: dir.join("resolv.conf"),
        set_hostname: false,
        sync_clock: false,
        default_ntp: Vec::new(),
        dhcp_retransmit: cairn_netcfg::dhcp::Retransmit {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(2),
            jitter: Duration::from_millis(100),
        },
    }
}

/// `ip -j` views of the client's addresses and routes, to compare before and after.
fn snapshot(ns: &NetNs) -> (String, String) {
    (
        ns.ip_output(&["-j", "addr", "show", "dev", "c0"]),
        ns.ip_output(&["-j", "route", "show", "table", "main"]),
    )
}

#[test]
fn default_dhcp_then_static_then_a_refused_config() {
    let server = NetNs::new("agent-srv");
    let client = NetNs::new("agent-cli");
    server.veth_to("s0", &client, "c0");
    server.ip(&["addr", "add", "10.78.0.1/24", "dev", "s0"]);
    let dir = tempfile::tempdir().unwrap();
    let _dnsmasq = Dnsmasq::start(
        &server,
        "s0",
        dir.path(),
        &[
            "--dhcp-range=10.78.0.100,10.78.0.150,255.255.255.0,2m",
            "--dhcp-option=option:router,10.78.0.1",
            "--dhcp-option=option:dns-server,10.78.0.53",
            "--dhcp-option=option:domain-name,lab.example",
        ],
    );
    // The veth in the client namespace is down until the loop brings it up.
    client.ip(&["link", "set", "c0", "down"]);

    let lines = Lines::default();
    let opts = options(dir.path());
    let log = lines.log();
    let agent = client.run(move || Netcfg::start(Network::default(), opts, log).unwrap());

    // Default config: DHCP on the wire; the lease's address and default route applied.
    let lease = lines.wait_for("c0: DHCP lease ");
    assert!(lease.contains("from 10.78.0.1"), "{lease}");
    lines.wait_for("add address 10.78.0.");
    let addrs = client.ip_output(&["-4", "-o", "addr", "show", "dev", "c0"]);
    assert!(addrs.contains("inet 10.78.0.1"), "{addrs}");
    let routes = client.ip_output(&["route", "show", "default"]);
    assert!(
        routes.contains("default via 10.78.0.1 dev c0 proto dhcp metric 1024"),
        "{routes}"
    );
    lines.wait_for("nameservers 10.78.0.53, search lab.example");
    let resolv = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
    assert!(
        resolv.contains("nameserver 10.78.0.53") && resolv.contains("search lab.example"),
        "{resolv}"
    );
    assert!(agent
        .status()
        .links
        .iter()
        .any(|l| l.name == "c0" && l.dhcp.is_some()));

    // The cable: the server's end goes down and comes back.
    server.ip(&["link", "set", "s0", "down"]);
    lines.wait_for("c0: carrier lost");
    server.ip(&["link", "set", "s0", "up"]);
    lines.wait_for("c0: carrier up");

    // A static config replaces the lease: the DHCP client releases, the static address and
    // route go in, and the lease's are removed.
    let static_config = network(
        "interfaces:\n  - name: c0\n    addresses: [10.78.0.9/24]\n    mtu: 1400\n    \
         routes: [{to: 10.99.0.0/16, via: 10.78.0.1, metric: 5}]\n\
         nameservers: [10.78.0.1]\n",
    );
    let n = agent.apply(static_config.clone()).unwrap();
    assert!(n >= 3, "{n} changes");
    let addrs = client.ip_output(&["-4", "-o", "addr", "show", "dev", "c0"]);
    assert!(addrs.contains("inet 10.78.0.9/24"), "{addrs}");
    assert_eq!(
        addrs.lines().count(),
        1,
        "the lease's address is still there: {addrs}"
    );
    let link = client.ip_output(&["link", "show", "dev", "c0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    let routes = client.ip_output(&["route", "show"]);
    assert!(
        routes.contains("10.99.0.0/16 via 10.78.0.1 dev c0 proto static metric 5"),
        "{routes}"
    );
    assert!(!routes.contains("default"), "{routes}");

    // The same config again: nothing to do.
    assert_eq!(agent.apply(static_config).unwrap(), 0);

    // Bad configs: refused with a reason naming the problem, and nothing changes.
    let before = snapshot(&client);
    let err = agent
        .apply(network(
            "interfaces: [{name: eth7, addresses: [10.5.0.2/24]}]",
        ))
        .unwrap_err();
    assert!(err.contains("eth7"), "{err}");
    let err = agent
        .apply(network(
            "interfaces: [{name: c0, routes: [{to: 10.1.0.0/16, via: 192.0.2.1}]}]",
        ))
        .unwrap_err();
    assert!(err.contains("192.0.2.1"), "{err}");
    assert_eq!(snapshot(&client), before);
    assert!(agent.status().error.is_some());

    agent.stop();
}
