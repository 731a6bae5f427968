//! Named network namespaces for the integration tests (`ip netns add`), so a real peer such as
//! dnsmasq can run inside one with `ip netns exec` while the code under test runs on a thread
//! that has joined it.
//!
//! The tests need root (CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN inside them); without it
//! they fail with a message that says so. Every namespace a test makes is deleted when its
//! [`NetNs`] drops, and every process it starts is stopped through its own [`Child`].

#![allow(dead_code)] // each test file uses its own part of this module

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

/// Runs `ip` with `args`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Output of `ip` with `args`, as text.
pub fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).unwrap()
}

impl NetNs {
    /// Makes a new, empty namespace with `lo` up. Panics when not root.
    pub fn new(tag: &str) -> NetNs {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "this test creates network namespaces and needs root; run it as root (cargo xtask test does)"
        );
        let name = format!(
            "cairn-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Output of `ip` inside the namespace.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip_output(&all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a new thread that has joined this namespace (`setns` moves only the calling
    /// thread); sockets `f` opens belong to the namespace. A panic in `f` fails the caller.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open the namespace");
        let thread = std::thread::spawn(move || {
            // SAFETY: the fd is a valid open namespace file for the duration of the call, and
            // CLONE_NEWNET with setns moves only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Creates a veth pair: `here` in this namespace, `there` in `other`, both up.
    pub fn veth_to(&self, here: &str, other: &NetNs, there: &str) {
        self.ip(&[
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            &other.name,
        ]);
        self.ip(&["link", "set", here, "up"]);
        other.ip(&["link", "set", there, "up"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process the test started; killed (by its own pid) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- dnsmasq and packet capture, for the DHCP tests ------------------------------------------

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

impl NetNs {
    /// Like [`NetNs::run`], but returns at once: `f` runs on a new thread in the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open the namespace");
        std::thread::spawn(move || {
            // SAFETY: as in `run`: a valid namespace fd, and setns moves only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        })
    }
}

/// A dnsmasq DHCP server (DNS off) on one interface of a namespace, logging every DHCP
/// exchange (`--log-dhcp`) to `<dir>/dnsmasq.log` and keeping leases in `<dir>/leases`.
/// Killed on drop; starting another on the same `dir` keeps the leases and appends to the log.
pub struct Dnsmasq {
    process: Proc,
    pub log: PathBuf,
    pub leases: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq with the fixed base options and `args`, and waits until it has bound its
    /// DHCP socket (it says so in its log).
    pub fn start(ns: &NetNs, iface: &str, dir: &Path, args: &[&str]) -> Dnsmasq {
        let log = dir.join("dnsmasq.log");
        let leases = dir.join("leases");
        let before = std::fs::read_to_string(&log).unwrap_or_default();
        let child = ns
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--no-ping",
                "--log-dhcp",
                "--bind-interfaces",
                "--user=root",
            ])
            .arg(format!("--interface={iface}"))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dnsmasq (Debian: dnsmasq-base)");
        let mut d = Dnsmasq {
            process: Proc(child),
            log,
            leases,
        };
        let ready = "DHCP, sockets bound exclusively to interface";
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.log_since(&before).matches(ready).count() == 0 {
            if let Ok(Some(status)) = d.process.0.try_wait() {
                let mut err = String::new();
                use std::io::Read as _;
                let _ = d.process.0.stderr.take().unwrap().read_to_string(&mut err);
                panic!("dnsmasq exited ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_since(&self, before: &str) -> String {
        let all = self.log_text();
        all.get(before.len()..).unwrap_or_default().to_string()
    }

    /// Lines of the log that record a DHCP message, e.g. `DHCPACK(s0) 10.77.0.120 02:…`.
    pub fn messages(&self, kind: &str) -> Vec<String> {
        let needle = format!(" {kind}(");
        self.log_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits until the log records `count` messages of `kind`; panics with the log if not.
    pub fn wait_for(&self, kind: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.messages(kind).len() < count {
            assert!(
                Instant::now() < deadline,
                "dnsmasq logged fewer than {count} {kind}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn leases_text(&self) -> String {
        std::fs::read_to_string(&self.leases).unwrap_or_default()
    }
}

/// A DHCP message a [`Capture`] saw.
#[derive(Clone, Debug)]
pub struct Captured {
    pub at: Instant,
    /// The IP destination: 255.255.255.255 for a broadcast, the server for a unicast.
    pub destination: Ipv4Addr,
    pub message: dhcproto::v4::Message,
}

impl Captured {
    pub fn kind(&self) -> Option<dhcproto::v4::MessageType> {
        self.message.opts().msg_type()
    }
}

/// Records every DHCP message on an interface (sent or received) for one UDP port, 67 for what
/// servers are sent and 68 for what clients are sent, from a thread in the interface's
/// namespace, until dropped. Shows what a server saw (or would have), and how it was addressed.
pub struct Capture {
    seen: Arc<Mutex<Vec<Captured>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start(ns: &NetNs, iface: &str, port: u16) -> Capture {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, st, name) = (seen.clone(), stop.clone(), iface.to_string());
        let thread = ns.spawn(move || capture_loop(&name, port, &s, &st, ready_tx));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture socket ready");
        Capture {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn capture_loop(
    iface: &str,
    port: u16,
    seen: &Mutex<Vec<Captured>>,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<()>,
) {
    use dhcproto::{Decodable, Decoder};
    let eth_p_ip = 0x0800u16.to_be();
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(eth_p_ip)) };
    assert!(
        fd >= 0,
        "capture socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh socket owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: a valid C string for the duration of the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "no interface {iface}");
    // SAFETY: all-zero sockaddr_ll is valid; fields are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = eth_p_ip;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is live and its size is passed with it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind capture: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: `timeout` is a live timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    ready.send(()).unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: reads at most `buf.len()` bytes into the live buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let at = Instant::now();
        // Checksums of locally sent packets may not be computed yet; not what is tested here.
        let Ok(d) = cairn_netcfg::dhcp::frame::datagram(&buf[..n as usize], false) else {
            continue;
        };
        if d.destination_port != port {
            continue;
        }
        if let Ok(message) = dhcproto::v4::Message::decode(&mut Decoder::new(d.payload)) {
            seen.lock().unwrap().push(Captured {
                at,
                destination: d.destination,
                message,
            });
        }
    }
}
