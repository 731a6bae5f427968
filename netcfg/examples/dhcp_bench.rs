//! How long from link up to a DHCP lease: brings a veth up, starts the client on it, and times
//! the `bound` callback, against dnsmasq (`--no-ping`, so it offers at once) in a neighbouring
//! network namespace. A benchmark, not a test: it prints, and asserts nothing about speed.
//!
//! `sudo cargo run --release -p cairn-netcfg --example dhcp_bench [rounds]` (default 10). Needs
//! root and /usr/sbin/dnsmasq, like `tests/dhcp.rs`, whose helpers it shares.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_netcfg::agent::{Netcfg, Options as LoopOptions};
use cairn_netcfg::config::{Network, RawNetwork};
use cairn_netcfg::dhcp::{self, Lease, LeaseSink, Options, Stop};
use support::{Dnsmasq, NetNs};

const MAC: [u8; 6] = [0x02, 0xca, 0x12, 0x77, 0x00, 0x02];

/// Applies the lease (so the RELEASE at the end of a round can be sent from it) and reports
/// when `bound` was called, and the client's own `took`.
struct Sink {
    ns: String,
    current: Option<String>,
    bound: mpsc::Sender<(Instant, Duration)>,
}

impl LeaseSink for Sink {
    fn bound(&mut self, lease: &Lease, took: Duration) {
        let at = Instant::now();
        let cidr = format!("{}/{}", lease.address, lease.prefix);
        support::ip(&["-n", &self.ns, "addr", "add", &cidr, "dev", "c0"]);
        self.current = Some(cidr);
        let _ = self.bound.send((at, took));
    }

    fn renewed(&mut self, _: &Lease) {}

    fn lost(&mut self) {
        if let Some(cidr) = self.current.take() {
            support::ip(&["-n", &self.ns, "addr", "del", &cidr, "dev", "c0"]);
        }
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("rounds: a whole number"))
        .unwrap_or(10);
    let server = NetNs::new("bench-s");
    let client = NetNs::new("bench-c");
    server.veth_to("s0", &client, "c0");
    server.ip(&["addr", "add", "10.77.0.1/24", "dev", "s0"]);
    client.ip(&["link", "set", "c0", "down"]);
    let dir = tempfile::tempdir().unwrap();
    let _dnsmasq = Dnsmasq::start(
        &server,
        "s0",
        dir.path(),
        &["--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,2m"],
    );

    let mut link_up_to_lease = Vec::new();
    let mut exchange = Vec::new();
    for _ in 0..rounds {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(Stop::new().unwrap());
        let mut sink = Sink {
            ns: client.name.clone(),
            current: None,
            bound: tx,
        };
        client.ip(&["link", "set", "c0", "up"]);
        let link_up = Instant::now();
        let stop2 = stop.clone();
        let thread =
            client.spawn(move || dhcp::run("c0", MAC, &Options::default(), &mut sink, &stop2));
        let (at, took) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no lease within 30 s");
        link_up_to_lease.push(at - link_up);
        exchange.push(took);
        stop.request();
        thread.join().unwrap().expect("the DHCP client failed");
        client.ip(&["link", "set", "c0", "down"]);
    }
    report("link up → lease", &mut link_up_to_lease);
    report("first DISCOVER → ACK (the client's `took`)", &mut exchange);
    whole_loop(&client, rounds, dir.path());
}

/// The same through cairnd's whole network loop: from start (the link down, no config) to the
/// lease's address on the link; then how many netlink change requests re-applying the same
/// config sends, for the default (DHCP) config and a static one.
fn whole_loop(client: &NetNs, rounds: usize, dir: &std::path::Path) {
    let mut to_address = Vec::new();
    let mut reapply = Vec::new();
    for _ in 0..rounds {
        client.ip(&["link", "set", "c0", "down"]);
        let options = loop_options(dir);
        let (tx, rx) = mpsc::channel();
        let log: cairn_netcfg::agent::Log = Arc::new(move |line: &str| {
            if line.contains("add address 10.77.0.") {
                let _ = tx.send(Instant::now());
            }
        });
        let start = Instant::now();
        let agent = client.run(move || Netcfg::start(Network::default(), options, log).unwrap());
        let at = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no lease applied within 30 s");
        to_address.push(at - start);
        reapply.push(agent.apply(Network::default()).expect("re-apply"));
        agent.stop();
    }
    report("netcfg start → lease address on the link", &mut to_address);
    println!(
        "re-apply of the unchanged default config: {:?} netlink change requests",
        reapply
    );
    let raw: RawNetwork = serde_norway::from_str(
        "interfaces: [{name: c0, addresses: [10.77.0.9/24], mtu: 1400, \
         routes: [{to: 10.99.0.0/16, via: 10.77.0.1}]}]",
    )
    .unwrap();
    let config = raw.check().unwrap();
    let options = loop_options(dir);
    let log: cairn_netcfg::agent::Log = Arc::new(|_: &str| {});
    let first = config.clone();
    let agent = client.run(move || Netcfg::start(first, options, log).unwrap());
    let first_changes = agent.status().last_changes;
    let again = agent.apply(config).expect("re-apply");
    agent.stop();
    println!(
        "static config: first apply {first_changes} netlink change requests, re-apply {again}"
    );
}

/// The loop's options for a namespace: nothing outside it touched (hostname, clock).
fn loop_options(dir: &std::path::Path) -> LoopOptions {
    LoopOptions {
        resolv_conf: dir.join("resolv.conf"),
        set_hostname: false,
        sync_clock: false,
        default_ntp: Vec::new(),
        dhcp_retransmit: dhcp::Retransmit::default(),
    }
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = if times.len() % 2 == 1 {
        ms(times[times.len() / 2])
    } else {
        (ms(times[times.len() / 2 - 1]) + ms(times[times.len() / 2])) / 2.0
    };
    println!(
        "{what}: median {median:.1} ms over {} (min {:.1}, max {:.1})",
        times.len(),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
}
