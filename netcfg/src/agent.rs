//! The reconcile loop: one thread that owns the netlink sockets and makes the kernel match the
//! config plus whatever the DHCP servers granted.
//!
//! Everything that can change the wanted state arrives on one channel: a lease bound, renewed
//! or lost (from one DHCP thread per link), a link event (carrier in or out, a link appearing),
//! or a new config. Each time, the loop rebuilds the whole desired state from scratch and lets
//! [`rtnl::plan`] find the difference, so the order events arrive in never matters and an
//! unchanged state costs no netlink change at all. A plan that is refused (an interface that
//! does not exist, a gateway on no link) changes nothing: the previous config stays in force
//! and the error, one line, goes to the log and back to whoever asked.
//!
//! After the links come the resolver (`/run/resolv.conf`), the hostname, and the clock (an
//! SNTP thread, restarted when the set of servers changes).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::{format_mac, Network, Select, Settings};
use crate::dhcp::{self, Lease, LeaseSink};
use crate::resolv::{self, Domain};
use crate::rtnl::{self, Address, Desired, DesiredLink, LinkKind, Protocol, Route, VlanOf};
use crate::sntp;

/// Metric of a DHCP default route; the n-th DHCP link gets `DHCP_METRIC + n`, so two leases
/// never fight over one route.
pub const DHCP_METRIC: u32 = 1024;
/// How soon SNTP asks again while no server has answered since boot.
const BOOT_SNTP_RETRY: Duration = Duration::from_secs(5);
/// How often the loop wakes to read link events when nothing else happens.
const TICK: Duration = Duration::from_millis(250);

/// Where a line of the network's log goes (cairnd prefixes and prints it).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// What the loop may touch besides the links.
#[derive(Clone)]
pub struct Options {
    /// Where the resolver config is written (`/run/resolv.conf` on the device).
    pub resolv_conf: PathBuf,
    /// Set the kernel's hostname (the device: yes; a test in a network namespace: no, the UTS
    /// namespace is the host's).
    pub set_hostname: bool,
    /// Keep the clock with SNTP, stepping it (the device: yes; tests: no).
    pub sync_clock: bool,
    /// NTP servers when neither the config nor a lease names any.
    pub default_ntp: Vec<String>,
    /// DHCP retransmission timing.
    pub dhcp_retransmit: dhcp::Retransmit,
}

impl Options {
    /// The device's options.
    pub fn device() -> Options {
        Options {
            resolv_conf: PathBuf::from("/run/resolv.conf"),
            set_hostname: true,
            sync_clock: true,
            default_ntp: vec!["pool.ntp.org".into()],
            dhcp_retransmit: dhcp::Retransmit::default(),
        }
    }
}

/// The network as the loop last saw and made it; what the log and the API show.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub links: Vec<LinkStatus>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub hostname: Option<String>,
    pub clock: Option<ClockStatus>,
    /// The last refused config or failed apply, if the latest attempt failed.
    pub error: Option<String>,
    /// Netlink change requests the last reconcile sent.
    pub last_changes: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub mac: Option<String>,
    pub up: bool,
    pub carrier: bool,
    pub mtu: u32,
    pub addresses: Vec<String>,
    pub routes: Vec<String>,
    pub dhcp: Option<LeaseStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LeaseStatus {
    pub address: String,
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub lease_s: u64,
    pub renew_in_s: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClockStatus {
    pub server: String,
    pub stratum: u8,
    /// Offset measured before any step, in seconds.
    pub offset_s: f64,
    pub stepped: bool,
    pub synced_unix_s: u64,
}

/// Reads the loop's [`Status`]; cheap to clone.
#[derive(Clone)]
pub struct StatusView(Arc<Mutex<Status>>);

impl StatusView {
    pub fn get(&self) -> Status {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

enum Msg {
    Bound {
        link: String,
        lease: Lease,
        took: Duration,
    },
    Renewed {
        link: String,
        lease: Lease,
    },
    Lost {
        link: String,
    },
    DhcpFailed {
        link: String,
        error: String,
    },
    Clock(Result<sntp::Status, String>),
    Apply {
        config: Network,
        reply: Sender<Result<usize, String>>,
    },
    Stop,
}

/// The running loop.
pub struct Netcfg {
    tx: Sender<Msg>,
    status: Arc<Mutex<Status>>,
    thread: Option<JoinHandle<()>>,
}

impl Netcfg {
    /// Starts the loop on a thread of its own, in the calling thread's network namespace, and
    /// applies `config` before returning (its outcome goes to the log and [`Netcfg::status`]).
    pub fn start(config: Network, options: Options, log: Log) -> std::io::Result<Netcfg> {
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(Status::default()));
        let mut state = State {
            config,
            options,
            log,
            tx: tx.clone(),
            status: status.clone(),
            rtnl: rtnl::Rtnl::open().map_err(std::io::Error::other)?,
            monitor: rtnl::Monitor::open().map_err(std::io::Error::other)?,
            leases: HashMap::new(),
            dhcp: HashMap::new(),
            carrier: HashMap::new(),
            clock: None,
            clock_error: None,
            hostname: None,
        };
        let (ready, started) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("netcfg".into())
            .spawn(move || state.run(rx, ready))?;
        // The first reconcile has run (its outcome is in the status) when this returns.
        let _ = started.recv();
        Ok(Netcfg {
            tx,
            status,
            thread: Some(thread),
        })
    }

    /// Applies a new config; returns the number of netlink changes it took, or the one-line
    /// reason it was refused, in which case the previous config stays in force.
    pub fn apply(&self, config: Network) -> Result<usize, String> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Msg::Apply { config, reply })
            .map_err(|_| "the network loop has stopped".to_string())?;
        answer
            .recv()
            .map_err(|_| "the network loop has stopped".to_string())?
    }

    pub fn status(&self) -> Status {
        self.view().get()
    }

    /// A handle that reads the status from anywhere, for as long as the loop runs.
    pub fn view(&self) -> StatusView {
        StatusView(self.status.clone())
    }

    /// Releases every lease and stops the loop.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Netcfg {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct DhcpThread {
    stop: Arc<dhcp::Stop>,
    thread: JoinHandle<()>,
}

struct ClockThread {
    servers: Vec<String>,
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

struct State {
    config: Network,
    options: Options,
    log: Log,
    tx: Sender<Msg>,
    status: Arc<Mutex<Status>>,
    rtnl: rtnl::Rtnl,
    monitor: rtnl::Monitor,
    /// Current leases by link name.
    leases: HashMap<String, Lease>,
    dhcp: HashMap<String, DhcpThread>,
    /// Last seen carrier by link name, to log changes once.
    carrier: HashMap<String, bool>,
    clock: Option<ClockThread>,
    clock_error: Option<String>,
    hostname: Option<String>,
}

/// One managed link, resolved against the kernel's links.
struct Managed {
    name: String,
    vlan: Option<VlanOf>,
    settings: Settings,
}

impl State {
    fn say(&self, line: &str) {
        (self.log)(&format!("netcfg: {line}"));
    }

    fn run(&mut self, rx: Receiver<Msg>, ready: Sender<()>) {
        let config = self.config.clone();
        if let Err(e) = self.reconcile(&config) {
            self.say(&format!("network config not applied: {e}"));
        }
        let _ = ready.send(());
        loop {
            let mut dirty = false;
            // Link events first: they are what a DHCP thread waits for.
            loop {
                match self.monitor.next(Duration::ZERO) {
                    Ok(Some(ev)) => dirty |= self.link_event(&ev),
                    Ok(None) => break,
                    Err(e) => {
                        self.say(&format!("reading link events: {e}"));
                        break;
                    }
                }
            }
            match rx.recv_timeout(if dirty { Duration::ZERO } else { TICK }) {
                Ok(Msg::Stop) => break,
                Ok(msg) => dirty |= self.message(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if dirty {
                let config = self.config.clone();
                if let Err(e) = self.reconcile(&config) {
                    self.say(&format!("network config not applied: {e}"));
                }
            }
        }
        self.shutdown();
    }

    /// Handles one message; true when the links must be reconciled.
    fn message(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Bound { link, lease, took } => {
                self.say(&format!(
                    "{link}: DHCP lease {}/{} from {} in {} ms (routers {}, dns {}, lease {} s)",
                    lease.address,
                    lease.prefix,
                    lease.server,
                    took.as_millis(),
                    list(&lease.routers),
                    list(&lease.dns),
                    lease.lease_time.as_secs()
                ));
                self.leases.insert(link, lease);
                true
            }
            Msg::Renewed { link, lease } => {
                self.say(&format!(
                    "{link}: DHCP lease {}/{} renewed for {} s",
                    lease.address,
                    lease.prefix,
                    lease.lease_time.as_secs()
                ));
                if let Some(index) = self.index_of(&link) {
                    let address = lease_address(&lease);
                    if let Err(e) = self.rtnl.refresh_address(index, address) {
                        self.say(&format!("{link}: renewing the address's lifetime: {e}"));
                    }
                }
                self.leases.insert(link, lease);
                true
            }
            Msg::Lost { link } => {
                if let Some(l) = self.leases.remove(&link) {
                    self.say(&format!("{link}: DHCP lease {} ended", l.address));
                }
                true
            }
            Msg::DhcpFailed { link, error } => {
                self.say(&format!("{link}: DHCP client stopped: {error}"));
                self.dhcp.remove(&link);
                false
            }
            Msg::Clock(result) => {
                self.clock_report(result);
                false
            }
            Msg::Apply { config, reply } => {
                let old = std::mem::replace(&mut self.config, config.clone());
                let outcome = self.reconcile(&config);
                if let Err(e) = &outcome {
                    self.say(&format!(
                        "new network config refused, the previous one stays: {e}"
                    ));
                    self.config = old;
                }
                let _ = reply.send(outcome);
                false
            }
            Msg::Stop => false,
        }
    }

    /// Logs carrier changes; true when something that matters to the plan changed.
    fn link_event(&mut self, ev: &rtnl::LinkEvent) -> bool {
        if ev.removed {
            self.say(&format!("{}: removed", ev.name));
            self.carrier.remove(&ev.name);
            if let Some(t) = self.dhcp.remove(&ev.name) {
                t.stop.request();
                let _ = t.thread.join();
            }
            self.leases.remove(&ev.name);
            return true;
        }
        let before = self.carrier.insert(ev.name.clone(), ev.carrier);
        match before {
            None => true, // a link we have not seen: it may be one the config names
            Some(was) if was != ev.carrier => {
                let what = if ev.carrier {
                    "carrier up"
                } else {
                    "carrier lost"
                };
                self.say(&format!("{}: {what}", ev.name));
                true
            }
            Some(_) => false,
        }
    }

    fn index_of(&mut self, name: &str) -> Option<u32> {
        self.rtnl
            .state()
            .ok()
            .and_then(|k| k.link(name).map(|l| l.index))
    }

    /// Makes the kernel match `config` plus the leases; returns the netlink changes sent.
    fn reconcile(&mut self, config: &Network) -> Result<usize, String> {
        let outcome = self.reconcile_links(config);
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match &outcome {
            Ok(n) => {
                status.error = None;
                status.last_changes = *n;
            }
            Err(e) => status.error = Some(e.clone()),
        }
        drop(status);
        self.refresh_status();
        outcome
    }

    fn reconcile_links(&mut self, config: &Network) -> Result<usize, String> {
        let kernel = self.rtnl.state().map_err(|e| e.to_string())?;
        let managed = managed_links(config, &kernel)?;
        let desired = self.desired(&managed);
        let changes = rtnl::plan(&kernel, &desired).map_err(|e| e.to_string())?;
        let n = self.rtnl.apply(&changes).map_err(|e| e.to_string())?;
        if n > 0 {
            self.say(&format!("applied {n} change(s): {}", summary(&changes)));
        }
        // Leases on links that no longer take DHCP go; DHCP starts where it is wanted and the
        // link has a carrier.
        let kernel = self.rtnl.state().map_err(|e| e.to_string())?;
        let wanted: Vec<&Managed> = managed.iter().filter(|m| m.settings.dhcp4).collect();
        let stale: Vec<String> = self
            .dhcp
            .keys()
            .filter(|k| !wanted.iter().any(|m| &m.name == *k))
            .cloned()
            .collect();
        for name in stale {
            if let Some(t) = self.dhcp.remove(&name) {
                self.say(&format!("{name}: DHCP no longer wanted; releasing"));
                t.stop.request();
                let _ = t.thread.join();
            }
            self.leases.remove(&name);
        }
        for m in wanted {
            let Some(link) = kernel.link(&m.name) else {
                continue;
            };
            let finished = self
                .dhcp
                .get(&m.name)
                .is_some_and(|t| t.thread.is_finished());
            if finished {
                self.dhcp.remove(&m.name);
            }
            if link.carrier && !self.dhcp.contains_key(&m.name) {
                if let Some(mac) = link.mac {
                    self.start_dhcp(&m.name, mac);
                }
            }
        }
        self.resolver(config);
        self.set_hostname(config);
        self.clock(config);
        Ok(n)
    }

    /// The whole desired state: each managed link's static settings and its lease.
    fn desired(&self, managed: &[Managed]) -> Desired {
        let now = Instant::now();
        let mut dhcp_rank = 0;
        let links = managed
            .iter()
            .map(|m| {
                let mut link = DesiredLink {
                    name: m.name.clone(),
                    mtu: m.settings.mtu,
                    vlan: m.vlan.clone(),
                    addresses: m
                        .settings
                        .addresses
                        .iter()
                        .map(|c| Address {
                            addr: c.addr,
                            prefix: c.prefix,
                            valid_lft: None,
                        })
                        .collect(),
                    routes: m
                        .settings
                        .routes
                        .iter()
                        .map(|r| Route {
                            dst: r.to.addr,
                            prefix: r.to.prefix,
                            gateway: r.via,
                            metric: r.metric,
                            protocol: Protocol::Static,
                        })
                        .collect(),
                };
                // A lease counts only while its link still takes DHCP: a config that turns DHCP
                // off drops the lease's address in the same apply.
                let lease = self.leases.get(&m.name).filter(|_| m.settings.dhcp4);
                if let Some(lease) = lease {
                    if lease.expires_at() > now {
                        link.addresses.push(lease_address(lease));
                        if link.mtu.is_none() {
                            link.mtu = lease.mtu.map(u32::from);
                        }
                        if let Some(router) = lease.routers.first() {
                            link.routes.push(Route {
                                dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                                prefix: 0,
                                gateway: Some(IpAddr::V4(*router)),
                                metric: Some(DHCP_METRIC + dhcp_rank),
                                protocol: Protocol::Dhcp,
                            });
                            dhcp_rank += 1;
                        }
                    }
                }
                link
            })
            .collect();
        Desired { links }
    }

    fn start_dhcp(&mut self, name: &str, mac: [u8; 6]) {
        let stop = match dhcp::Stop::new() {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.say(&format!("{name}: cannot start DHCP: {e}"));
                return;
            }
        };
        let options = dhcp::Options {
            hostname: self.config.hostname.clone(),
            previous: self.leases.get(name).map(|l| l.address),
            retransmit: self.options.dhcp_retransmit,
            ..dhcp::Options::default()
        };
        let mut sink = Sink {
            link: name.to_string(),
            tx: self.tx.clone(),
        };
        let link = name.to_string();
        let thread_stop = stop.clone();
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dhcp-{name}"))
            .spawn(move || {
                if let Err(e) = dhcp::run(&link, mac, &options, &mut sink, &thread_stop) {
                    let _ = tx.send(Msg::DhcpFailed {
                        link,
                        error: e.to_string(),
                    });
                }
            });
        match spawned {
            Ok(thread) => {
                self.say(&format!("{name}: DHCPv4 started"));
                self.dhcp
                    .insert(name.to_string(), DhcpThread { stop, thread });
            }
            Err(e) => self.say(&format!("{name}: cannot start DHCP: {e}")),
        }
    }

    /// Writes the resolver config: the config's servers and domains first, then the leases'.
    fn resolver(&mut self, config: &Network) {
        let mut nameservers: Vec<IpAddr> = config.nameservers.clone();
        let mut search: Vec<String> = config.search.clone();
        for lease in self.sorted_leases() {
            nameservers.extend(lease.dns.iter().map(|&a| IpAddr::V4(a)));
            search.extend(lease.search.iter().cloned());
            search.extend(lease.domain.iter().cloned());
        }
        let mut ns: Vec<IpAddr> = Vec::new();
        for a in nameservers {
            if !ns.contains(&a) {
                ns.push(a);
            }
        }
        let mut domains: Vec<Domain> = Vec::new();
        for d in &search {
            // A lease's domain that is not a valid name is left out, not fatal.
            if let Ok(d) = d.parse::<Domain>() {
                if !domains.contains(&d) {
                    domains.push(d);
                }
            }
        }
        match resolv::write(&self.options.resolv_conf, &ns, &domains) {
            Ok(resolv::Written::Updated) => self.say(&format!(
                "{}: nameservers {}, search {}",
                self.options.resolv_conf.display(),
                list(&ns),
                if search.is_empty() {
                    "-".to_string()
                } else {
                    domains
                        .iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            )),
            Ok(resolv::Written::Unchanged) => {}
            Err(e) => self.say(&format!("writing the resolver config: {e}")),
        }
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.nameservers = ns;
        status.search = domains.iter().map(|d| d.as_str().to_string()).collect();
    }

    fn set_hostname(&mut self, config: &Network) {
        let lease_name = self
            .sorted_leases()
            .into_iter()
            .find_map(|l| l.hostname.clone());
        let Some(name) = config.hostname.clone().or(lease_name) else {
            return;
        };
        if self.hostname.as_deref() == Some(name.as_str()) {
            return;
        }
        if self.options.set_hostname {
            if let Err(e) = rustix_sethostname(&name) {
                self.say(&format!("setting the hostname to {name}: {e}"));
                return;
            }
            self.say(&format!("hostname {name}"));
        }
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hostname = Some(name.clone());
        self.hostname = Some(name);
    }

    /// (Re)starts the SNTP thread when the servers to use change.
    fn clock(&mut self, config: &Network) {
        if !self.options.sync_clock {
            return;
        }
        let mut servers = config.ntp.clone();
        if servers.is_empty() {
            servers = self
                .sorted_leases()
                .iter()
                .flat_map(|l| l.ntp.iter().map(|a| a.to_string()))
                .collect();
        }
        if servers.is_empty() {
            servers = self.options.default_ntp.clone();
        }
        // Nothing can reach a server before some link has an address.
        let reachable = !self.leases.is_empty()
            || config
                .interfaces
                .iter()
                .any(|i| !i.settings.addresses.is_empty());
        if !reachable || servers.is_empty() {
            return;
        }
        if self.clock.as_ref().is_some_and(|c| c.servers == servers) {
            return;
        }
        if let Some(old) = self.clock.take() {
            let _ = old.stop.send(());
            let _ = old.thread.join();
        }
        let parsed: Result<Vec<sntp::Server>, _> = servers.iter().map(|s| s.parse()).collect();
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.say(&format!("ntp servers: {e}"));
                return;
            }
        };
        let (stop, stopped) = mpsc::channel();
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("sntp".into())
            .spawn(move || {
                let report = |r: &sntp::Result<sntp::Status>| {
                    let r = match r {
                        Ok(s) => Ok(s.clone()),
                        Err(e) => Err(e.one_line()),
                    };
                    let _ = tx.send(Msg::Clock(r));
                };
                let mut sync = sntp::Sync::new(sntp::SyncConfig::new(parsed), sntp::SystemClock);
                // At boot the clock matters most (TLS checks dates): ask every few seconds until
                // a server answers, then settle into the policy's interval.
                loop {
                    let r = sync.round();
                    let ok = r.is_ok();
                    report(&r);
                    if ok {
                        break;
                    }
                    match stopped.recv_timeout(BOOT_SNTP_RETRY) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
                sync.run(&stopped, report);
            });
        match spawned {
            Ok(thread) => {
                self.say(&format!("time from {}", servers.join(", ")));
                self.clock = Some(ClockThread {
                    servers,
                    stop,
                    thread,
                });
            }
            Err(e) => self.say(&format!("cannot start SNTP: {e}")),
        }
    }

    fn clock_report(&mut self, result: Result<sntp::Status, String>) {
        match result {
            Ok(s) => {
                let action = if s.stepped { "stepped by" } else { "offset" };
                self.say(&format!(
                    "clock {action} {} (server {} stratum {}, delay {} ms)",
                    s.offset,
                    s.address,
                    s.stratum,
                    s.delay.as_millis()
                ));
                let synced_unix_s =
                    s.at.duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                self.status.lock().unwrap_or_else(|e| e.into_inner()).clock = Some(ClockStatus {
                    server: s.address.to_string(),
                    stratum: s.stratum,
                    offset_s: s.offset.as_secs_f64(),
                    stepped: s.stepped,
                    synced_unix_s,
                });
            }
            Err(e) => {
                // Retries at boot come every few seconds: say each new reason once.
                if self.clock_error.as_deref() != Some(e.as_str()) {
                    self.say(&format!("clock not synced: {e}"));
                    self.clock_error = Some(e);
                }
                return;
            }
        }
        self.clock_error = None;
    }

    fn sorted_leases(&self) -> Vec<&Lease> {
        let mut names: Vec<&String> = self.leases.keys().collect();
        names.sort();
        names.into_iter().map(|n| &self.leases[n]).collect()
    }

    fn refresh_status(&mut self) {
        let Ok(kernel) = self.rtnl.state() else {
            return;
        };
        let now = Instant::now();
        let links = kernel
            .links
            .iter()
            .filter(|l| l.kind != LinkKind::Loopback)
            .map(|l| LinkStatus {
                name: l.name.clone(),
                mac: l.mac.as_ref().map(format_mac),
                up: l.up,
                carrier: l.carrier,
                mtu: l.mtu,
                addresses: kernel
                    .addresses_on(l.index)
                    .map(|a| format!("{}/{}", a.addr, a.prefix))
                    .collect(),
                routes: kernel
                    .routes_on(l.index)
                    .filter(|r| r.protocol.is_ours())
                    .map(|r| {
                        let mut s = format!("{}/{}", r.dst, r.prefix);
                        if let Some(gw) = r.gateway {
                            s.push_str(&format!(" via {gw}"));
                        }
                        s
                    })
                    .collect(),
                dhcp: self.leases.get(&l.name).map(|lease| LeaseStatus {
                    address: format!("{}/{}", lease.address, lease.prefix),
                    server: lease.server,
                    routers: lease.routers.clone(),
                    lease_s: lease.lease_time.as_secs(),
                    renew_in_s: lease.renew_at().saturating_duration_since(now).as_secs(),
                }),
            })
            .collect();
        self.status.lock().unwrap_or_else(|e| e.into_inner()).links = links;
    }

    fn shutdown(&mut self) {
        for (name, t) in self.dhcp.drain() {
            t.stop.request();
            if t.thread.join().is_err() {
                (self.log)(&format!("netcfg: {name}: DHCP thread panicked"));
            }
        }
        if let Some(c) = self.clock.take() {
            let _ = c.stop.send(());
            let _ = c.thread.join();
        }
    }
}

/// The links the config manages, by kernel name. With no interfaces configured: every physical
/// link (a veth counts: it is what a container or namespace has for a wire), with DHCPv4.
fn managed_links(config: &Network, kernel: &rtnl::KernelState) -> Result<Vec<Managed>, String> {
    let mut out = Vec::new();
    if config.interfaces.is_empty() {
        for l in &kernel.links {
            let wire = match &l.kind {
                LinkKind::Physical => true,
                LinkKind::Other(kind) => kind == "veth",
                _ => false,
            };
            if wire {
                out.push(Managed {
                    name: l.name.clone(),
                    vlan: None,
                    settings: Settings {
                        dhcp4: true,
                        ..Settings::default()
                    },
                });
            }
        }
        return Ok(out);
    }
    for (i, iface) in config.interfaces.iter().enumerate() {
        let name = match &iface.select {
            Select::Name(n) => n.clone(),
            Select::Mac(mac) => kernel
                .links
                .iter()
                .find(|l| l.mac.as_ref() == Some(mac) && !matches!(l.kind, LinkKind::Vlan { .. }))
                .map(|l| l.name.clone())
                .ok_or_else(|| {
                    format!(
                        "network.interfaces[{i}].mac: no interface has MAC {}",
                        format_mac(mac)
                    )
                })?,
        };
        for v in &iface.vlans {
            out.push(Managed {
                name: v.name.clone().unwrap_or_else(|| format!("{name}.{}", v.id)),
                vlan: Some(VlanOf {
                    parent: name.clone(),
                    id: v.id,
                }),
                settings: v.settings.clone(),
            });
        }
        out.insert(
            out.len() - iface.vlans.len(),
            Managed {
                name,
                vlan: None,
                settings: iface.settings.clone(),
            },
        );
    }
    Ok(out)
}

fn lease_address(lease: &Lease) -> Address {
    let left = lease
        .expires_at()
        .saturating_duration_since(Instant::now())
        .as_secs();
    Address {
        addr: IpAddr::V4(lease.address),
        prefix: lease.prefix,
        valid_lft: Some(u32::try_from(left).unwrap_or(u32::MAX).max(1)),
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn summary(changes: &[rtnl::Change]) -> String {
    changes
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn rustix_sethostname(name: &str) -> std::io::Result<()> {
    rustix::system::sethostname(name.as_bytes()).map_err(std::io::Error::from)
}

/// Forwards a DHCP thread's lease events to the loop.
struct Sink {
    link: String,
    tx: Sender<Msg>,
}

impl LeaseSink for Sink {
    fn bound(&mut self, lease: &Lease, took: Duration) {
        let _ = self.tx.send(Msg::Bound {
            link: self.link.clone(),
            lease: lease.clone(),
            took,
        });
    }

    fn renewed(&mut self, lease: &Lease) {
        let _ = self.tx.send(Msg::Renewed {
            link: self.link.clone(),
            lease: lease.clone(),
        });
    }

    fn lost(&mut self) {
        let _ = self.tx.send(Msg::Lost {
            link: self.link.clone(),
        });
    }
}
