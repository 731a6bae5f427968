//! The DHCP client against a real dnsmasq, across a veth pair between two network namespaces.
//!
//! The server namespace has `s0` (10.77.0.1/24) and dnsmasq; the client namespace has `c0`, no
//! address, and strict reverse-path filtering (`rp_filter=1`), under which a client that
//! listened on a UDP socket before it had an address would never hear the server. The client
//! runs on a thread in its namespace; its [`LeaseSink`] applies leases with `ip addr` and
//! reports them on a channel. dnsmasq's lease time is its minimum (2 min) with T1 = 4 s and
//! T2 = 6 s, so renewing and rebinding happen within seconds. A [`Capture`] in the server
//! namespace records what reached the server and whether it was broadcast or unicast.
//!
//! The last test does the same against QEMU's user-mode network (libslirp), which a guest on
//! `-netdev user` gets: QEMU runs without a machine, slirp joined through a hub to a tap.
//!
//! Needs root (namespaces), /usr/sbin/dnsmasq and qemu-system-x86_64 (`cargo xtask setup`).

mod support;

use std::net::Ipv4Addr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_netcfg::dhcp::{self, Lease, LeaseSink, Options, Retransmit, Stop};
use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use support::{Capture, Dnsmasq, NetNs};

const MAC: [u8; 6] = [0x02, 0xca, 0x12, 0x77, 0x00, 0x01];
const MAC_TEXT: &str = "02:ca:12:77:00:01";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Options every test's dnsmasq gets: a range, short timers, and one of each option the
/// client reads.
const SERVER_ARGS: &[&str] = &[
    "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,2m",
    "--dhcp-option=option:T1,4",
    "--dhcp-option=option:T2,6",
    "--dhcp-option=option:dns-server,10.77.0.53,10.77.0.54",
    "--dhcp-option=option:ntp-server,10.77.0.123",
    "--dhcp-option=option:domain-name,cairn.test",
    "--dhcp-option=option:domain-search,a.cairn.test,b.cairn.test",
    "--dhcp-option=option:mtu,1400",
    "--dhcp-host=02:ca:12:77:00:01,cairn-dev",
];

/// Two namespaces joined by a veth pair, and a scratch folder for dnsmasq.
struct Net {
    server: NetNs,
    client: NetNs,
    dir: tempfile::TempDir,
}

fn net(tag: &str) -> Net {
    let server = NetNs::new(&format!("{tag}-s"));
    let client = NetNs::new(&format!("{tag}-c"));
    server.veth_to("s0", &client, "c0");
    server.ip(&["addr", "add", "10.77.0.1/24", "dev", "s0"]);
    client.ip(&["link", "set", "c0", "address", MAC_TEXT]);
    for key in ["all", "c0"] {
        let status = client
            .command("sysctl")
            .args(["-qw", &format!("net.ipv4.conf.{key}.rp_filter=1")])
            .status()
            .expect("run sysctl");
        assert!(
            status.success(),
            "setting rp_filter in the client namespace"
        );
    }
    Net {
        server,
        client,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Net {
    fn dnsmasq(&self, extra: &[&str]) -> Dnsmasq {
        let mut args = SERVER_ARGS.to_vec();
        args.extend_from_slice(extra);
        Dnsmasq::start(&self.server, "s0", self.dir.path(), &args)
    }

    /// The client's IPv4 addresses on c0, as `ip` prints them (`10.77.0.120/24`).
    fn client_addresses(&self) -> Vec<String> {
        let out = self
            .client
            .ip_output(&["-4", "-o", "addr", "show", "dev", "c0"]);
        out.lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
            .map(str::to_string)
            .collect()
    }
}

#[derive(Debug)]
enum Event {
    Bound(Lease, Duration),
    Renewed(Lease),
    Lost,
}

/// Applies leases with `ip addr` in the client namespace and reports every call.
struct Sink {
    ns: String,
    iface: String,
    current: Option<String>,
    events: Sender<(Instant, Event)>,
}

impl Sink {
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        support::ip(&all);
    }
}

impl LeaseSink for Sink {
    fn bound(&mut self, lease: &Lease, took: Duration) {
        let cidr = format!("{}/{}", lease.address, lease.prefix);
        self.ip(&["addr", "add", &cidr, "dev", &self.iface]);
        self.current = Some(cidr);
        let _ = self
            .events
            .send((Instant::now(), Event::Bound(lease.clone(), took)));
    }

    fn renewed(&mut self, lease: &Lease) {
        let _ = self
            .events
            .send((Instant::now(), Event::Renewed(lease.clone())));
    }

    fn lost(&mut self) {
        if let Some(cidr) = self.current.take() {
            self.ip(&["addr", "del", &cidr, "dev", &self.iface]);
        }
        let _ = self.events.send((Instant::now(), Event::Lost));
    }
}

/// The client running in the client namespace.
struct Client {
    stop: Arc<Stop>,
    events: Receiver<(Instant, Event)>,
    thread: Option<JoinHandle<Result<(), dhcp::Error>>>,
}

fn start_client(net: &Net, options: Options) -> Client {
    start_client_on(&net.client, "c0", MAC, options)
}

fn start_client_on(ns: &NetNs, iface: &str, mac: [u8; 6], options: Options) -> Client {
    let stop = Arc::new(Stop::new().unwrap());
    let (tx, rx) = mpsc::channel();
    let mut sink = Sink {
        ns: ns.name.clone(),
        iface: iface.to_string(),
        current: None,
        events: tx,
    };
    let stop2 = stop.clone();
    let iface = iface.to_string();
    let thread = ns.spawn(move || dhcp::run(&iface, mac, &options, &mut sink, &stop2));
    Client {
        stop,
        events: rx,
        thread: Some(thread),
    }
}

impl Client {
    fn next(&self) -> (Instant, Event) {
        self.events
            .recv_timeout(EVENT_TIMEOUT)
            .expect("no event from the DHCP client in time")
    }

    fn bound(&self) -> (Instant, Lease, Duration) {
        match self.next() {
            (at, Event::Bound(lease, took)) => (at, lease, took),
            other => panic!("expected Bound, got {other:?}"),
        }
    }

    /// Stops the client and returns what `run` returned.
    fn stop(mut self) -> Result<(), dhcp::Error> {
        self.stop.request();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.request();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sets strict reverse-path filtering for `iface` in `ns`.
fn strict_rp_filter(ns: &NetNs, iface: &str) {
    for key in ["all", iface] {
        let status = ns
            .command("sysctl")
            .args(["-qw", &format!("net.ipv4.conf.{key}.rp_filter=1")])
            .status()
            .expect("run sysctl");
        assert!(status.success(), "setting rp_filter in {}", ns.name);
    }
}

fn in_range(addr: Ipv4Addr) -> bool {
    (100..=150).contains(&addr.octets()[3]) && addr.octets()[..3] == [10, 77, 0]
}

fn fast_retransmit() -> Options {
    Options {
        retransmit: Retransmit {
            initial: Duration::from_millis(200),
            max: Duration::from_millis(800),
            jitter: Duration::ZERO,
        },
        ..Options::default()
    }
}

#[test]
fn obtains_a_lease_with_every_option() {
    let net = net("dhcp-lease");
    let server = net.dnsmasq(&[]);
    let options = Options {
        hostname: Some("cairn-dev".into()),
        ..Options::default()
    };
    let client = start_client(&net, options);
    let (_, lease, took) = client.bound();

    assert!(in_range(lease.address), "{lease:?}");
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.broadcast, Some(Ipv4Addr::new(10, 77, 0, 255)));
    assert_eq!(lease.routers, [SERVER]);
    assert_eq!(
        lease.dns,
        [Ipv4Addr::new(10, 77, 0, 53), Ipv4Addr::new(10, 77, 0, 54)]
    );
    assert_eq!(lease.ntp, [Ipv4Addr::new(10, 77, 0, 123)]);
    assert_eq!(lease.domain.as_deref(), Some("cairn.test"));
    assert_eq!(lease.search, ["a.cairn.test", "b.cairn.test"]);
    assert_eq!(lease.hostname.as_deref(), Some("cairn-dev"));
    assert_eq!(lease.mtu, Some(1400));
    assert_eq!(lease.lease_time, Duration::from_secs(120));
    assert_eq!(lease.t1, Duration::from_secs(4));
    assert_eq!(lease.t2, Duration::from_secs(6));
    assert_eq!(lease.server, SERVER);
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // The sink applied it, and dnsmasq saw one whole exchange and recorded the lease.
    assert_eq!(net.client_addresses(), [format!("{}/24", lease.address)]);
    for kind in ["DHCPDISCOVER", "DHCPOFFER", "DHCPREQUEST", "DHCPACK"] {
        assert_eq!(
            server.messages(kind).len(),
            1,
            "{kind}:\n{}",
            server.log_text()
        );
    }
    assert!(server.leases_text().contains(MAC_TEXT));
    // dnsmasq logs the client's hostname (option 12) with the lease.
    assert!(server.messages("DHCPACK")[0].contains("cairn-dev"));
    client.stop().unwrap();
}

#[test]
fn renews_at_t1_by_unicast_to_the_server() {
    let net = net("dhcp-renew");
    let server = net.dnsmasq(&[]);
    let capture = Capture::start(&net.server, "s0", 67);
    let client = start_client(&net, Options::default());
    let (bound_at, lease, _) = client.bound();

    let (renewed_at, renewed) = match client.next() {
        (at, Event::Renewed(l)) => (at, l),
        other => panic!("expected Renewed, got {other:?}"),
    };
    let after = renewed_at - bound_at;
    assert!(
        after > Duration::from_millis(3500) && after < Duration::from_secs(6),
        "renewed {after:?} after binding, T1 is 4 s"
    );
    assert_eq!(renewed.address, lease.address);
    assert!(renewed.obtained > lease.obtained);
    server.wait_for("DHCPACK", 2, Duration::from_secs(2));

    // The renewal REQUEST went to the server's address, with ciaddr and without the
    // options that only a client without an address sends.
    let requests: Vec<_> = capture
        .seen()
        .into_iter()
        .filter(|c| c.kind() == Some(MessageType::Request))
        .collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].destination, Ipv4Addr::BROADCAST);
    let renewal = &requests[1].message;
    assert_eq!(requests[1].destination, SERVER, "renewal must be unicast");
    assert_eq!(renewal.ciaddr(), lease.address);
    assert!(!renewal.flags().broadcast());
    assert!(renewal.opts().get(OptionCode::ServerIdentifier).is_none());
    assert!(renewal.opts().get(OptionCode::RequestedIpAddress).is_none());
    client.stop().unwrap();
}

#[test]
fn rebinds_at_t2_by_broadcast_when_the_server_went_away() {
    let net = net("dhcp-rebind");
    let server = net.dnsmasq(&[]);
    let capture = Capture::start(&net.server, "s0", 67);
    let client = start_client(&net, Options::default());
    let (bound_at, lease, _) = client.bound();

    // The server goes away; the unicast renewal at T1 goes unanswered.
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(8);
    while !capture
        .seen()
        .iter()
        .any(|c| c.kind() == Some(MessageType::Request) && c.destination == SERVER)
    {
        assert!(Instant::now() < deadline, "no renewal seen at T1");
        std::thread::sleep(Duration::from_millis(20));
    }
    // It comes back with its lease file before T2, and hears the broadcast.
    let server = net.dnsmasq(&[]);
    let (renewed_at, renewed) = match client.next() {
        (at, Event::Renewed(l)) => (at, l),
        other => panic!("expected Renewed, got {other:?}"),
    };
    assert_eq!(renewed.address, lease.address);
    let after = renewed_at - bound_at;
    assert!(
        after > Duration::from_millis(5500) && after < Duration::from_secs(8),
        "rebound {after:?} after binding, T2 is 6 s"
    );
    let requests: Vec<_> = capture
        .seen()
        .into_iter()
        .filter(|c| c.kind() == Some(MessageType::Request))
        .collect();
    let destinations: Vec<Ipv4Addr> = requests.iter().map(|c| c.destination).collect();
    assert_eq!(
        destinations,
        [Ipv4Addr::BROADCAST, SERVER, Ipv4Addr::BROADCAST],
        "selecting, renewing (unicast, unanswered), rebinding (broadcast)"
    );
    let rebind = &requests[2].message;
    assert_eq!(rebind.ciaddr(), lease.address);
    assert!(rebind.opts().get(OptionCode::ServerIdentifier).is_none());
    // Only the rebinding REQUEST reached the restarted server; the renewal retransmits after
    // 60 s at the earliest (RFC 2131 §4.4.5), so none came in between.
    assert_eq!(server.messages("DHCPREQUEST").len(), 2);
    assert_eq!(server.messages("DHCPACK").len(), 2);
    client.stop().unwrap();
}

#[test]
fn releases_the_lease_on_stop() {
    let net = net("dhcp-release");
    let server = net.dnsmasq(&[]);
    let client = start_client(&net, Options::default());
    let (_, lease, _) = client.bound();
    assert!(server.leases_text().contains(MAC_TEXT));
    assert_eq!(net.client_addresses().len(), 1);

    client.stop.request();
    match client.next() {
        (_, Event::Lost) => {}
        other => panic!("expected Lost, got {other:?}"),
    }
    client.stop().unwrap();

    server.wait_for("DHCPRELEASE", 1, Duration::from_secs(5));
    let release = &server.messages("DHCPRELEASE")[0];
    assert!(release.contains(&lease.address.to_string()), "{release}");
    assert!(release.contains(MAC_TEXT), "{release}");
    // dnsmasq rewrites its lease file when a lease is released.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.leases_text().contains(MAC_TEXT) {
        assert!(
            Instant::now() < deadline,
            "lease still in {}",
            server.leases_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        net.client_addresses().is_empty(),
        "the sink removed the address"
    );
}

#[test]
fn a_nak_to_init_reboot_falls_back_to_discover() {
    let net = net("dhcp-nak");
    // Authoritative, so dnsmasq NAKs a REQUEST for an address on a network it does not serve
    // instead of staying silent.
    let server = net.dnsmasq(&["--dhcp-authoritative"]);
    let stale = Ipv4Addr::new(10, 99, 0, 5);
    let options = Options {
        previous: Some(stale),
        ..fast_retransmit()
    };
    let client = start_client(&net, options);
    let (_, lease, _) = client.bound();
    assert!(in_range(lease.address), "{lease:?}");
    let naks = server.messages("DHCPNAK");
    assert_eq!(naks.len(), 1, "{}", server.log_text());
    assert!(naks[0].contains(&stale.to_string()), "{}", naks[0]);
    // The order of events on the server: the INIT-REBOOT request, its NAK, then a full exchange.
    let log = server.log_text();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle} in {log}"))
    };
    assert!(at(" DHCPNAK(") < at(" DHCPDISCOVER("));
    assert!(at(" DHCPDISCOVER(") < at(" DHCPACK("));
    assert_eq!(net.client_addresses(), [format!("{}/24", lease.address)]);
    client.stop().unwrap();
}

#[test]
fn retransmits_with_exponential_backoff_when_nobody_answers() {
    let net = net("dhcp-silent");
    let capture = Capture::start(&net.server, "s0", 67);
    let client = start_client(&net, fast_retransmit());
    // 200, 400, 800, 800 ms: five DISCOVERs within 2.2 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    while capture.seen().len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", capture.seen());
        std::thread::sleep(Duration::from_millis(20));
    }
    client.stop().unwrap();
    let seen = capture.seen();
    assert!(seen.iter().all(|c| c.kind() == Some(MessageType::Discover)));
    assert!(seen.iter().all(|c| c.destination == Ipv4Addr::BROADCAST));
    let xid = seen[0].message.xid();
    assert!(
        seen.iter().all(|c| c.message.xid() == xid),
        "one transaction"
    );
    assert!(seen[0].message.flags().broadcast());
    let gaps: Vec<u128> = seen
        .windows(2)
        .take(4)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    for (gap, want) in gaps.iter().zip([200, 400, 800, 800]) {
        assert!(
            gap.abs_diff(want) <= 60,
            "gaps {gaps:?} ms, want 200, 400, 800, 800"
        );
    }
    // The secs field counts from the first DISCOVER.
    let secs: Vec<u16> = seen.iter().map(|c| c.message.secs()).collect();
    assert_eq!(secs[0], 0);
    assert!(secs.windows(2).all(|w| w[0] <= w[1]), "{secs:?}");
    assert!(seen[0]
        .message
        .opts()
        .get(OptionCode::ClientIdentifier)
        .is_some_and(|o| *o == DhcpOption::ClientIdentifier([&[1u8][..], &MAC].concat())));
}

/// QEMU's user-mode network (libslirp), as a guest on `-netdev user` sees it: QEMU runs with no
/// machine, its slirp joined through a hub to a tap in the client namespace.
#[test]
fn obtains_a_lease_from_qemu_user_networking() {
    let qemu = "qemu-system-x86_64";
    let ns = NetNs::new("dhcp-slirp");
    let _qemu = support::Proc(
        ns.command(qemu)
            .args(["-M", "none", "-nodefaults", "-display", "none"])
            .args([
                "-netdev",
                "user,id=u,hostname=cairn-guest,domainname=slirp.test",
            ])
            .args(["-netdev", "tap,id=t,ifname=tap0,script=no,downscript=no"])
            .args(["-netdev", "hubport,id=p1,hubid=0,netdev=u"])
            .args(["-netdev", "hubport,id=p2,hubid=0,netdev=t"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {qemu}: {e}")),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.ip_output(&["-o", "link"]).contains("tap0") {
        assert!(Instant::now() < deadline, "QEMU did not create tap0");
        std::thread::sleep(Duration::from_millis(20));
    }
    ns.ip(&["link", "set", "tap0", "address", MAC_TEXT, "up"]);
    strict_rp_filter(&ns, "tap0");
    let replies = Capture::start(&ns, "tap0", 68);

    // A stale address outside slirp's range: slirp NAKs it, without a server identifier.
    let options = Options {
        previous: Some(Ipv4Addr::new(10, 0, 2, 200)),
        ..fast_retransmit()
    };
    let client = start_client_on(&ns, "tap0", MAC, options);
    let (_, lease, _) = client.bound();
    let slirp = Ipv4Addr::new(10, 0, 2, 2);
    assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
    assert_eq!(lease.prefix, 24);
    assert_eq!(lease.routers, [slirp]);
    assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
    assert_eq!(lease.server, slirp);
    assert_eq!(lease.hostname.as_deref(), Some("cairn-guest"));
    assert_eq!(lease.domain.as_deref(), Some("slirp.test"));
    // slirp sends no T1 or T2: RFC 2131's defaults of its day-long lease.
    assert_eq!(lease.lease_time, Duration::from_secs(86_400));
    assert_eq!(lease.t1, Duration::from_secs(43_200));
    assert_eq!(lease.t2, Duration::from_secs(75_600));

    // slirp answers to 255.255.255.255 whatever the BROADCAST flag says.
    let seen = replies.seen();
    let kinds: Vec<_> = seen.iter().filter_map(|c| c.kind()).collect();
    assert_eq!(
        kinds,
        [MessageType::Nak, MessageType::Offer, MessageType::Ack],
        "{seen:?}"
    );
    assert!(seen.iter().all(|c| c.destination == Ipv4Addr::BROADCAST));
    assert!(seen[0]
        .message
        .opts()
        .get(OptionCode::ServerIdentifier)
        .is_none());
    client.stop().unwrap();
}
