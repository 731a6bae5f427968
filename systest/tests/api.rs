//! The management API end to end on qemu-aarch64, driven by the real `cairnctl` over a port
//! forwarded to the guest's API (mutual TLS with the development secrets xtask put on STATE).
//!
//! A reader may look but not upgrade; an operator uploads a bundle of version 0.2.0, which
//! cairnd installs into slot B while `cairnctl logs -f` (a second connection) shows it
//! happen; the machine reboots into the trial and commits; `cairnctl rollback` then brings A
//! back, and A's cairnd reports the update rolled back over the API. Then an admin applies a
//! machine config that trusts a bundle server's CA (`apply-config`, dry run first), and the
//! operator has the device download the bundle from that HTTPS server on the host (Python's
//! http.server behind TLS, reached at 10.0.2.2) into slot B without rebooting.
//!
//! Before the upgrade, a hostile client that is not ours (Python grpcio, `systest/abuse/`)
//! tries what a management API must refuse or survive: no certificate, another CA, an expired
//! certificate, each mutating call with too low a role, an upload dropped halfway, a second
//! upgrade during one, an oversize message and 100 connections that never speak.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_image::RootExtras;
use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward};
use cairn_systest::ctl::Ctl;
use cairn_systest::release::{build_release, dev_key, sign_bundle};
use cairn_systest::{image_dir, qemu_lock, rig_dir};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const API_PORT: u16 = 50000;

/// A child's stdout lines, collected on a thread as they come.
fn collect(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTPS file server for `dir` on the host (Python's http.server behind TLS), stopped by
/// its pid when dropped.
struct BundleServer(Child);

impl BundleServer {
    const SCRIPT: &'static str = r#"
import functools, http.server, ssl, sys
port, cert, key, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("serving", flush=True)
server.serve_forever()
"#;

    /// Serves `root` on 127.0.0.1:`port` with a certificate for 10.0.2.2 (the host as the
    /// guest sees it) from a new CA; returns the server and that CA's PEM.
    fn start(dir: &Path, root: &Path, port: u16) -> (BundleServer, String) {
        let ca = cairn_pki::Ca::generate(cairn_pki::CaKind::Device, "bundle server CA").unwrap();
        let host = std::net::IpAddr::from([10, 0, 2, 2]);
        let issued =
            cairn_pki::issue_server(&ca, "bundles", &[cairn_pki::San::Ip(host)], ca.validity())
                .unwrap();
        let (cert, key, script) = (dir.join("srv.crt"), dir.join("srv.key"), dir.join("srv.py"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        std::fs::write(&script, Self::SCRIPT).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .args([&cert, &key, &root.to_path_buf()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (`cargo xtask setup` installs it)");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), "serving");
        (BundleServer(child), ca.cert_pem().to_string())
    }
}

impl Drop for BundleServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready(m: &mut Machine) -> String {
    m.wait_for_line("cairn-init: ready ", BOOT_TIMEOUT).unwrap()
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_upgrade_and_rollback_with_cairnctl() {
    let board = cairn_board::find("qemu-aarch64").unwrap();
    let tmp = rig_dir("cairn-api-");
    let disk = tmp.path().join("disk.img");
    cairn_image::copy_sparse(&image_dir(board).join("disk.img"), &disk).unwrap();
    // The release to upgrade to, built before the machine takes both cores.
    let release = build_release(
        board,
        &tmp.path().join("release"),
        "0.2.0",
        0,
        "systest-api-0.2.0",
        RootExtras::default(),
    );
    let bundle = sign_bundle(&release, &dev_key());
    let bundle = bundle.to_str().unwrap();

    let _lock = qemu_lock();
    let port = free_local_port().unwrap();
    let mut opts = LaunchOptions::new(board, &disk, tmp.path().join("work"));
    opts.writable_image = true;
    opts.echo_console = true;
    opts.port_forwards = vec![PortForward::new(port, API_PORT)];
    let mut m = Machine::launch(opts).unwrap();
    assert!(ready(&mut m).contains("slot=a"));
    m.wait_for_line("cairnd: management API on port 50000", BOOT_TIMEOUT)
        .unwrap();

    let endpoint = format!("127.0.0.1:{port}");
    let ctl = |role: &str| Ctl::for_role(role, tmp.path(), &endpoint);
    let (admin, operator, reader) = (ctl("admin"), ctl("operator"), ctl("reader"));
    assert_eq!(reader.version(), ("0.1.0".into(), "a".into()));
    let services = reader.json(&["services"]);
    let rss = services["services"][0]["rss_bytes"].as_u64().unwrap();
    assert!(rss > 0, "{services}");
    eprintln!(
        "figure: cairnd resident memory after boot, API serving: {:.1} MiB (budget 16 MiB)",
        rss as f64 / (1 << 20) as f64
    );
    let (_, health) = reader.health();
    let checks = health["checks"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["name"] == "services"),
        "no services check in {health}"
    );
    let services = reader.json(&["services"]);
    assert_eq!(services["services"][0]["name"], "cairnd", "{services}");
    let (ok, stdout, _) = reader.run(&["logs", "-n", "5", "kernel"]);
    assert!(ok && stdout.lines().count() >= 5, "kernel log: {stdout}");

    // A reader may look, not upgrade: refused before a byte is sent, nothing changes.
    let (ok, _, stderr) = reader.run(&["upgrade", bundle]);
    assert!(!ok);
    assert!(stderr.contains("operator"), "{stderr}");

    // A hostile client that is not ours: who may not talk, what each role may not do, uploads
    // cut short or overlapping, an oversize message, a flood of silent connections. Each is
    // refused or survived; nothing is installed; the device still answers.
    let seen = cairn_systest::abuse::run(&endpoint, tmp.path(), Path::new(bundle));
    for case in ["no_certificate", "other_ca", "expired"] {
        let got = seen[case].as_str().unwrap();
        assert!(got.starts_with("UNAVAILABLE"), "{case}: {got}");
    }
    let denied = seen["denied"].as_object().unwrap();
    assert_eq!(denied.len(), 16, "{denied:?}");
    for (call, got) in denied {
        let got = got.as_str().unwrap();
        let needs = match call.split_once(' ').unwrap().1 {
            "ServiceRestart" | "Upgrade" | "Rollback" | "Reboot" => "operator",
            _ => "admin",
        };
        assert!(
            got.starts_with("PERMISSION_DENIED")
                && got.contains(&format!("needs the {needs} role")),
            "{call}: {got}"
        );
    }
    let half = seen["half_upload"].as_str().unwrap();
    assert!(half.starts_with("CANCELLED"), "{half}");
    // The device let go of the slot: a new upload was taken within the client's minute.
    let released = seen["lock_released_s"].as_f64().unwrap();
    assert!(released < 60.0, "the dropped upload kept the slot: {seen}");
    eprintln!("figure: an upload dropped halfway lets go of the slot after {released} s");
    let second = seen["second_upgrade"].as_str().unwrap();
    assert!(
        second.starts_with("FAILED_PRECONDITION") && second.contains("already running"),
        "{second}"
    );
    let first = seen["first_upgrade"].as_str().unwrap();
    assert!(
        first.starts_with("CANCELLED"),
        "the first upload got under way: {first}"
    );
    let oversize = seen["oversize"].as_str().unwrap();
    assert!(oversize.starts_with("RESOURCE_EXHAUSTED"), "{oversize}");
    assert_eq!(seen["during_idle_flood"], "OK", "{seen}");
    eprintln!(
        "figure: a good client's Version while 100 silent connections are open: {} s",
        seen["during_idle_flood_s"]
    );
    assert_eq!(seen["after"]["os_version"], "0.1.0", "{seen}");
    assert_eq!(seen["after"]["running_slot"], "SLOT_A", "{seen}");
    // Nothing was installed: B is as the image left it and A boots next.
    let slots = reader.json(&["slots"]);
    assert_eq!(slots["next_boot"], "a", "{slots}");
    let b = slots["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == "b")
        .unwrap();
    assert_eq!(b["os_version"], "", "{slots}");
    assert_ne!(b["state"], "good", "{slots}");
    assert_ne!(b["state"], "pending", "{slots}");

    // Follow cairnd's log on a second connection while the operator upgrades.
    let mut follow = reader
        .command(&["logs", "-f", "-n", "0", "cairnd"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let followed = collect(&mut follow);
    std::thread::sleep(Duration::from_secs(2));
    let done = operator.json(&["upgrade", bundle]);
    assert_eq!(done["os_version"], "0.2.0", "{done}");
    assert_eq!(done["slot"], "b", "{done}");
    wait_until(
        "the followed log to show the install",
        Duration::from_secs(30),
        || {
            followed
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("installed version 0.2.0") || l.contains("install: arming"))
        },
    );

    // The trial boot of B commits, and the API says so.
    let trial = ready(&mut m);
    assert!(
        trial.contains("slot=b") && trial.contains("version=0.2.0"),
        "{trial}"
    );
    m.wait_for_line("cairnd: slot b healthy", BOOT_TIMEOUT)
        .unwrap();
    // The follower's connection died with the reboot: stop it, by its pid.
    let _ = follow.kill();
    let _ = follow.wait();
    let lines = followed.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("install: writing rootfs")),
        "logs -f did not show the install: {lines:?}"
    );
    assert_eq!(reader.version(), ("0.2.0".into(), "b".into()));
    let slots = reader.json(&["slots"]);
    assert_eq!(slots["last_update"], "committed", "{slots}");

    // Rollback: A again, and A's cairnd says why.
    let answer = operator.json(&["rollback"]);
    assert_eq!(answer["target"], "a", "{answer}");
    let back = ready(&mut m);
    assert!(
        back.contains("slot=a") && back.contains("version=0.1.0"),
        "{back}"
    );
    m.wait_for_line(
        "last update: version 0.2.0 in slot b was rolled back: rolled back over the API",
        BOOT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(reader.version(), ("0.1.0".into(), "a".into()));

    // The device fetches a bundle over HTTPS once its config trusts the server's CA.
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(bundle, served.join("update.cairn")).unwrap();
    let server_port = free_local_port().unwrap();
    let (_server, server_ca) = BundleServer::start(tmp.path(), &served, server_port);
    let url = format!("https://10.0.2.2:{server_port}/update.cairn");
    let (ok, _, stderr) = operator.run(&["upgrade", &url, "--no-reboot"]);
    assert!(!ok && stderr.contains("fetch_ca"), "{stderr}");
    let config = tmp.path().join("machine.yaml");
    let indented: String = server_ca.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(&config, format!("update:\n  fetch_ca: |\n{indented}")).unwrap();
    let dry = admin.json(&["apply-config", config.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry["changes"][0], "update fetch CA", "{dry}");
    let (ok, _, stderr) = operator.run(&["apply-config", config.to_str().unwrap()]);
    assert!(!ok && stderr.contains("admin"), "{stderr}");
    let applied = admin.json(&["apply-config", config.to_str().unwrap()]);
    assert_eq!(applied["generation"], 1, "{applied}");
    let done = operator.json(&["upgrade", &url, "--no-reboot"]);
    assert_eq!(done["os_version"], "0.2.0", "{done}");
    assert_eq!(done["rebooting"], false, "{done}");
    let slots = reader.json(&["slots"]);
    assert_eq!(slots["next_boot"], "b", "{slots}");
    assert_eq!(slots["last_update"], "pending", "{slots}");

    m.quit().unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap();
}
