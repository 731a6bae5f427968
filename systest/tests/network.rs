//! The guest on the network: its address from QEMU's user-mode DHCP server by default, or a
//! static one from the machine config, reachable through a host port forward either way; and
//! its clock set by SNTP from a real NTP server (chrony) on the host.
//!
//! Reachability is shown without any listener in the guest: QEMU accepts a forwarded connection
//! and only then sends the guest a SYN. A guest that holds the forward's address answers with a
//! reset and QEMU closes our side at once; a guest without it never answers. Each test checks
//! both sides of that: the address the guest has answers, an address it does not have stays
//! silent.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_image::{build, BuildOptions, RootExtras};
use cairn_qemu::{
    forward_answer, free_local_port, ForwardAnswer, LaunchOptions, Machine, PortForward,
};
use cairn_systest::{cache_dir, device_bin, image_dir, keys_dir, qemu_lock, rig_dir};
use serde_json::json;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a forwarded connection waits for the guest's reset; it comes in milliseconds.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// A port nothing in the guest listens on (discard).
const GUEST_PORT: u16 = 9;
const STATIC_ADDR: &str = "10.0.2.50";

/// chronyd on 127.0.0.1, serving its own clock at stratum 1 and never touching the host's
/// (`-x`). QEMU's user-mode network hands the guest's packets for 10.0.2.2 to the host's
/// loopback, so the guest reaches it as 10.0.2.2:port.
struct Chrony {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Chrony {
    fn start() -> Chrony {
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "local stratum 1\nallow 127.0.0.1\nbindaddress 127.0.0.1\nport {port}\n\
                 cmdport 0\npidfile {}\n",
                dir.path().join("chronyd.pid").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("chronyd.log")).unwrap();
        let child = Command::new("chronyd")
            .args(["-d", "-x", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start chronyd (cargo xtask setup installs chrony)");
        let chrony = Chrony {
            child,
            port,
            _dir: dir,
        };
        let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = cairn_netcfg::sntp::query(server, Duration::from_millis(200)) {
            assert!(Instant::now() < deadline, "chronyd does not answer: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
        chrony
    }
}

impl Drop for Chrony {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn boot(disk: PathBuf, work: PathBuf, forwards: Vec<PortForward>, extra: &[&str]) -> Machine {
    let board = cairn_board::find("qemu-aarch64").unwrap();
    let mut opts = LaunchOptions::new(board, disk, work);
    opts.port_forwards = forwards;
    opts.echo_console = true;
    opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
    let mut m = Machine::launch(opts).unwrap();
    m.wait_for_line("cairn-init: ready", BOOT_TIMEOUT).unwrap();
    m
}

fn stop(mut m: Machine) {
    assert!(
        !m.lines().iter().any(|l| l.contains("cairn-init: fatal")),
        "init reported a fatal error"
    );
    m.quit().unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap();
}

/// Polls a forward until the guest answers (an address can lag the log line by a moment).
fn answers(port: u16) -> ForwardAnswer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = forward_answer(port, ANSWER_WAIT).unwrap();
        if a == ForwardAnswer::GuestRefused || Instant::now() > deadline {
            return a;
        }
    }
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_takes_a_dhcp_lease_and_is_reachable() {
    let _serial = qemu_lock();
    let board = cairn_board::find("qemu-aarch64").unwrap();
    let tmp = rig_dir("cairn-net-dhcp-");
    let to_lease = PortForward::new(free_local_port().unwrap(), GUEST_PORT);
    let to_other = PortForward {
        guest_addr: Some(STATIC_ADDR.parse().unwrap()),
        ..PortForward::new(free_local_port().unwrap(), GUEST_PORT)
    };
    let mut m = boot(
        image_dir(board).join("disk.img"),
        tmp.path().join("work"),
        vec![to_lease, to_other],
        &[],
    );
    let lease = m
        .wait_for_line("cairnd: netcfg: eth0: DHCP lease ", STEP_TIMEOUT)
        .unwrap();
    assert!(
        lease.contains("DHCP lease 10.0.2.15/24 from 10.0.2.2")
            && lease.contains("routers 10.0.2.2")
            && lease.contains("dns 10.0.2.3"),
        "{lease}"
    );
    let applied = m
        .wait_for_line("cairnd: netcfg: applied ", STEP_TIMEOUT)
        .unwrap();
    let applied = if applied.contains("10.0.2.15") {
        applied
    } else {
        // The first apply only sets the link up; the lease's comes next.
        m.wait_for_line("cairnd: netcfg: applied ", STEP_TIMEOUT)
            .unwrap()
    };
    assert!(
        applied.contains("add address 10.0.2.15/24")
            && applied.contains("add route 0.0.0.0/0 via 10.0.2.2"),
        "{applied}"
    );
    m.wait_for_line("nameservers 10.0.2.3", STEP_TIMEOUT)
        .unwrap();
    assert_eq!(answers(to_lease.host), ForwardAnswer::GuestRefused);
    assert_eq!(
        forward_answer(to_other.host, ANSWER_WAIT).unwrap(),
        ForwardAnswer::Silent,
        "{STATIC_ADDR} answered, but the guest should only hold its lease"
    );

    // The cable out and in again (QEMU's link state for the NIC): the guest follows it and
    // still answers afterwards.
    m.qmp("set_link", Some(json!({"name": "net0", "up": false})))
        .unwrap();
    m.wait_for_line("cairnd: netcfg: eth0: carrier lost", STEP_TIMEOUT)
        .unwrap();
    m.qmp("set_link", Some(json!({"name": "net0", "up": true})))
        .unwrap();
    m.wait_for_line("cairnd: netcfg: eth0: carrier up", STEP_TIMEOUT)
        .unwrap();
    assert_eq!(answers(to_lease.host), ForwardAnswer::GuestRefused);
    stop(m);
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_static_address_and_clock_from_ntp() {
    let _serial = qemu_lock();
    let board = cairn_board::find("qemu-aarch64").unwrap();
    let tmp = rig_dir("cairn-net-static-");
    let chrony = Chrony::start();
    let config = format!(
        "network:\n  hostname: edge-static\n  interfaces:\n    - name: eth0\n      \
         addresses: [{STATIC_ADDR}/24]\n      routes: [{{to: 0.0.0.0/0, via: 10.0.2.2}}]\n      \
         vlans: [{{id: 20, addresses: [10.20.0.2/24], mtu: 1400}}]\n  \
         nameservers: [10.0.2.3]\n  search: [example.internal]\n  ntp: [\"10.0.2.2:{}\"]\n",
        chrony.port
    );
    let out = tmp.path().join("image");
    build(&BuildOptions {
        board,
        out: out.clone(),
        cache: cache_dir(),
        device_bin: device_bin(board.arch),
        version: "0.1.0".into(),
        seed: "systest-network-static".into(),
        root: RootExtras {
            keyring: Some(std::fs::read_to_string(keys_dir().join("dev.pub")).unwrap()),
            machine_config: Some(config),
            ..Default::default()
        },
        secure_boot: None,
        extension: Some(Default::default()),
    })
    .unwrap();
    let to_static = PortForward {
        guest_addr: Some(STATIC_ADDR.parse().unwrap()),
        ..PortForward::new(free_local_port().unwrap(), GUEST_PORT)
    };
    let to_dhcp = PortForward::new(free_local_port().unwrap(), GUEST_PORT);
    // The guest's clock starts in 2001, so SNTP has something to correct.
    let mut m = boot(
        out.join("disk.img"),
        tmp.path().join("work"),
        vec![to_static, to_dhcp],
        &["-rtc", "base=2001-02-03T04:05:06"],
    );
    let applied = m
        .wait_for_line("cairnd: netcfg: applied ", STEP_TIMEOUT)
        .unwrap();
    assert!(
        applied.contains(&format!("add address {STATIC_ADDR}/24 to eth0"))
            && applied.contains("add route 0.0.0.0/0 via 10.0.2.2"),
        "{applied}"
    );
    // The guest kernel has 802.1Q (the board loads 8021q): the VLAN is created for real.
    assert!(
        applied.contains("create VLAN eth0.20 (id 20 on eth0)")
            && applied.contains("add address 10.20.0.2/24 to eth0.20"),
        "{applied}"
    );
    assert!(
        !m.lines()
            .iter()
            .any(|l| l.contains("network config not applied")),
        "the static config was refused"
    );
    m.wait_for_line(
        "nameservers 10.0.2.3, search example.internal",
        STEP_TIMEOUT,
    )
    .unwrap();
    m.wait_for_line("cairnd: netcfg: hostname edge-static", STEP_TIMEOUT)
        .unwrap();
    let clock = m
        .wait_for_line("cairnd: netcfg: clock stepped by ", STEP_TIMEOUT)
        .unwrap();
    assert!(
        clock.contains(&format!("server 10.0.2.2:{} stratum 1", chrony.port)),
        "{clock}"
    );
    // 2001 to now is more than 20 years: the step is forward by at least that.
    let secs: f64 = clock
        .split("stepped by ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.trim_start_matches('+').parse().ok())
        .unwrap_or_else(|| panic!("no offset in {clock}"));
    assert!(secs > 20.0 * 365.0 * 86400.0, "{clock}");
    assert_eq!(answers(to_static.host), ForwardAnswer::GuestRefused);
    assert_eq!(
        forward_answer(to_dhcp.host, ANSWER_WAIT).unwrap(),
        ForwardAnswer::Silent,
        "10.0.2.15 answered, but a static config must not take a DHCP lease"
    );
    assert!(
        !m.lines().iter().any(|l| l.contains("DHCP")),
        "a static interface ran DHCP"
    );
    stop(m);
}
