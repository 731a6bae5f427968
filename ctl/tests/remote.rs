//! The remote commands against a real API server (`cairn_api::serve` on loopback) with a fake
//! device, using certificates from `cairn_pki` as `cairnctl gen secrets` makes them: tables and
//! JSON, streams, uploads, roles, and the one-line explanations of refused connections.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use cairn_api::proto;
use cairn_api::testing::{FakeDevice, RECOVERY_KEY};
use cairn_api::{Options, Rpc, Server, TlsConfig};
use cairn_pki::client_config::ClientConfig;
use cairn_pki::secrets::{self, Secrets};
use cairn_pki::{Role, Validity};

/// A secrets folder as `cairnctl gen secrets` writes it, a device serving the API with a
/// server certificate from its device CA, and a scratch folder to run cairnctl in.
struct Fleet {
    dir: tempfile::TempDir,
    secrets: Secrets,
    device: Arc<FakeDevice>,
    server: Option<Server>,
}

impl Fleet {
    fn start() -> Fleet {
        Fleet::serving(|secrets| {
            let issued = cairn_pki::issue_server(
                &secrets.device_ca,
                "cairn-test",
                &[],
                secrets.device_ca.validity(),
            )
            .unwrap();
            (issued.cert_pem, issued.key_pem)
        })
    }

    /// A device in maintenance mode: a self-signed server certificate made now, the same
    /// client CA. Returns its key's fingerprint as the console shows it.
    fn maintenance() -> (Fleet, String) {
        let mut shown = String::new();
        let fleet = Fleet::serving(|_| {
            let (chain, key, fingerprint) =
                cairn_pki::ephemeral_server_identity("cairn-test").unwrap();
            shown = fingerprint;
            (chain, key)
        });
        (fleet, shown)
    }

    /// A device with the server certificate and key (PEM) `identity` makes.
    fn serving(identity: impl FnOnce(&Secrets) -> (String, String)) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let secrets = new_secrets("Test");
        secrets.write_new(&dir.path().join("secrets")).unwrap();
        let (chain, key) = identity(&secrets);
        let tls = TlsConfig::from_pem(
            secrets.client_ca.cert_pem().as_bytes(),
            chain.as_bytes(),
            key.as_bytes(),
        )
        .unwrap();
        let device = Arc::new(FakeDevice::new());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let options = Options {
            log: Arc::new(|_: &str| {}),
            ..Options::default()
        };
        let server = cairn_api::serve(listener, &tls, device.clone(), options).unwrap();
        let fleet = Fleet {
            dir,
            secrets,
            device,
            server: Some(server),
        };
        // The folder's own config, pointed at this device.
        fleet.config("secrets/cairnctl.yaml", "device-ca.crt", "admin");
        fleet
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn endpoint(&self) -> String {
        self.server.as_ref().unwrap().local_addr().to_string()
    }

    /// Writes a config at `rel` trusting `ca` (relative to the secrets folder) and presenting
    /// `<client>.crt` / `<client>.key` from the secrets folder; returns its path.
    fn config(&self, rel: &str, ca: &str, client: &str) -> String {
        let secrets = self.path("secrets");
        let config = ClientConfig {
            endpoint: self.endpoint(),
            ca: secrets.join(ca),
            cert: secrets.join(format!("{client}.crt")),
            key: secrets.join(format!("{client}.key")),
        };
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, config.to_yaml()).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// cairnctl with the admin config, run in the scratch folder with no config in the
    /// environment.
    fn admin(&self, args: &[&str]) -> (bool, String, String) {
        let config = self.path("secrets/cairnctl.yaml");
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// As [`Fleet::admin`], with the exit status's code.
    fn admin_code(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let config = self.path("secrets/cairnctl.yaml");
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = self.command(&all).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let home = self.path("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("CAIRNCTL_CONFIG")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", home);
        command
    }

    /// cairnctl with the admin config and `input` on its standard input.
    fn admin_with_input(&self, args: &[&str], input: &str) -> (bool, String, String) {
        let config = self.path("secrets/cairnctl.yaml");
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut child = self
            .command(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn unlock_keys(&self) -> Vec<String> {
        self.device.unlock_keys()
    }

    /// Starts cairnctl with piped output; the test kills it.
    fn spawn(&self, args: &[&str]) -> Child {
        let config = self.path("secrets/cairnctl.yaml");
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        self.command(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().unwrap();
        }
    }
}

fn new_secrets(name: &str) -> Secrets {
    Secrets::generate(&secrets::Options {
        name: name.into(),
        client_days: 30,
    })
    .unwrap()
}

fn one_line(stderr: &str) {
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
}

/// Reads `n` lines of a running child's stdout (each within the test's patience).
fn read_lines(child: &mut Child, n: usize) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    (0..n)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a line"))
        .collect()
}

#[test]
fn unary_answers_as_tables_and_json() {
    let fleet = Fleet::start();

    let (ok, out, err) = fleet.admin(&["version"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "hostname      edge-01\n\
         os version    1.4.0\n\
         security      version 3, floor 2\n\
         board         qemu-aarch64 (aarch64)\n\
         running slot  a\n\
         booted        2023-11-14 22:13:20Z\n\
         api version   1\n"
    );
    let (ok, out, err) = fleet.admin(&["version", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["running_slot"], "a");
    assert_eq!(v["security_floor"], 2);
    assert_eq!(v["booted_unix_ms"], 1_700_000_000_000i64);

    // Unhealthy: the report on stdout, nothing on stderr, and exit status 2 for scripts.
    let (code, out, err) = fleet.admin_code(&["health"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err, "");
    assert!(
        out.starts_with("unhealthy: 1 of 2 checks do not pass\nsecure_boot=on\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "CHECK               STATE    STREAK  CHECKED               DETAIL\n\
             services            passing  4       2023-11-14 22:13:21Z\n\
             tcp 127.0.0.1:6443  failing  2       2023-11-14 22:13:21Z  connection refused\n"
        ),
        "{out}"
    );
    let (code, out, _) = fleet.admin_code(&["--json", "health"]);
    assert_eq!(code, Some(2));
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["healthy"], false);
    assert_eq!(h["checks"][1]["state"], "failing");
    assert_eq!(h["checks"][1]["detail"], "connection refused");
    assert_eq!(h["secure_boot"], "on");

    let (ok, out, err) = fleet.admin(&["slots"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "SLOT  STATE  VERSION  SECURITY  TRIES LEFT  INSTALLED\n\
         a     good   1.4.0    3         -           -                     running\n\
         b     trial  1.5.0    3         2           2023-11-14 22:15:00Z  next boot\n\
         running a, next boot b\n\
         last update: pending (1.5.0)\n"
    );
    let (ok, out, _) = fleet.admin(&["slots", "--json"]);
    assert!(ok);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["slots"][1]["state"], "trial");
    assert_eq!(s["next_boot"], "b");
    assert_eq!(s["last_update"], "pending");

    let (ok, out, err) = fleet.admin(&["services"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "NAME        STATE    PID  MEMORY   FDS  RESTARTS  SINCE                 LAST EXIT\n\
         containerd  running  812  6.0 MiB  14   0         2023-11-14 22:13:22Z\n\
         ntp         backoff  -    -        -    12        2023-11-14 22:13:23Z  exit status 1\n"
    );
    let (ok, out, _) = fleet.admin(&["services", "--json"]);
    assert!(ok);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["services"][1]["state"], "backoff");
    assert_eq!(s["services"][1]["restarts"], 12);
    assert_eq!(s["services"][0]["rss_bytes"], 6 << 20);
    assert_eq!(s["services"][0]["open_fds"], 14);

    let (ok, out, err) = fleet.admin(&["restart", "containerd"]);
    assert!(ok, "{err}");
    assert_eq!(out, "restarted containerd (pid 42)\n");
    // The device's own message, one line.
    let (ok, _, err) = fleet.admin(&["restart", "nope"]);
    assert!(!ok);
    one_line(&err);
    assert!(
        err.contains("restart: no service \"nope\"; ServiceList shows them"),
        "{err}"
    );
}

#[test]
fn the_config_is_found_in_the_documented_order() {
    let fleet = Fleet::start();
    // No --config, nothing in the folder or the environment.
    let (ok, _, err) = fleet.run(&["version"]);
    assert!(!ok);
    one_line(&err);
    assert!(
        err.contains("cairnctl gen secrets --out DIR")
            && err.contains("--config DIR/cairnctl.yaml"),
        "{err}"
    );

    // ~/.config/cairn/cairnctl.yaml.
    fleet.config(
        "home/.config/cairn/cairnctl.yaml",
        "device-ca.crt",
        "reader",
    );
    let (ok, out, err) = fleet.run(&["version"]);
    assert!(ok, "{err}");
    assert!(out.contains("edge-01"), "{out}");

    // ./cairnctl.yaml comes before it: this one trusts the wrong CA, so which one was used
    // shows in the outcome.
    fleet.config("cairnctl.yaml", "client-ca.crt", "reader");
    let (ok, _, err) = fleet.run(&["version"]);
    assert!(!ok && err.contains("point `ca:`"), "{err}");

    // $CAIRNCTL_CONFIG comes before that, and --config before everything.
    let good = fleet.path("secrets/cairnctl.yaml");
    let out = fleet
        .command(&["version"])
        .env("CAIRNCTL_CONFIG", &good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = fleet
        .command(&["--config", good.to_str().unwrap(), "version"])
        .env("CAIRNCTL_CONFIG", fleet.path("nonexistent.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // A named file that is missing is an error, not a reason to look elsewhere.
    let missing = fleet.path("missing.yaml");
    let (ok, _, err) = fleet.run(&["--config", missing.to_str().unwrap(), "version"]);
    assert!(!ok && err.contains("missing.yaml"), "{err}");

    // --endpoint overrides the config's endpoint.
    let (ok, _, err) = fleet.admin(&["--endpoint", "127.0.0.1:1", "version"]);
    assert!(!ok && err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn logs_tail_and_follow() {
    let fleet = Fleet::start();
    let (ok, out, err) = fleet.admin(&["logs", "-n", "3", "containerd"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "2023-11-14 22:13:20Z  line 0\n\
         2023-11-14 22:13:21Z  line 1\n\
         2023-11-14 22:13:22Z  line 2\n"
    );
    let (ok, out, err) = fleet.admin(&["logs", "--json", "-n", "2", "kernel"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["line"], "line 1");
    assert_eq!(lines[1]["priority"], 6);
    {
        let requests = fleet.device.logs_requests();
        assert_eq!(
            requests[0].source,
            Some(proto::logs_request::Source::Service("containerd".into()))
        );
        assert_eq!((requests[0].tail, requests[0].follow), (3, false));
        assert_eq!(
            requests[1].source,
            Some(proto::logs_request::Source::Kernel(proto::KernelLog {}))
        );
    }

    // -f keeps the stream open after the tail.
    let mut child = fleet.spawn(&["logs", "-f", "-n", "2", "containerd"]);
    let lines = read_lines(&mut child, 2);
    assert!(lines[1].ends_with("line 1"), "{lines:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "logs -f ended by itself"
    );
    assert!(fleet.device.logs_requests()[2].follow);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn events_follow() {
    let fleet = Fleet::start();
    let mut child = fleet.spawn(&["events", "-n", "5"]);
    let lines = read_lines(&mut child, 2);
    assert_eq!(
        lines,
        [
            "2023-11-14 22:13:20Z  #1     boot      slot a, 1.4.0",
            "2023-11-14 22:13:20Z  #2     service   ntp backoff: exit status 1",
        ]
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "events ended by itself"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = fleet.spawn(&["events", "--json", "-n", "1"]);
    let lines = read_lines(&mut child, 1);
    let event: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(event["seq"], 1);
    assert_eq!(event["boot"]["slot"], "a");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A fake bundle a little over five chunks long, so the last chunk is a short one.
fn bundle(dir: &Path) -> (PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = b"CAIRN"
        .iter()
        .copied()
        .chain((0..1_310_000u32).map(|i| (i % 251) as u8))
        .collect();
    let path = dir.join("update.cairn");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[test]
fn upgrade_uploads_the_file_in_chunks() {
    let fleet = Fleet::start();
    let (path, bytes) = bundle(fleet.dir.path());
    let (ok, out, err) = fleet.admin(&["upgrade", "--no-reboot", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "installed 1.5.0 (security version 3) into slot b; it boots as a trial at the next \
         reboot (`cairnctl reboot`)\n"
    );
    let upgraded = fleet
        .device
        .last_upgrade()
        .expect("the upgrade reached the device");
    assert!(upgraded.bundle == bytes);
    assert!(!upgraded.reboot);
    // Not a terminal: plain progress lines, ending with the whole file, then the device's.
    assert!(
        err.contains("upgrade: upload 1.25 MiB of 1.25 MiB (100%)"),
        "{err}"
    );
    assert!(err.contains("upgrade: write rootfs"), "{err}");

    let (ok, out, err) = fleet.admin(&["upgrade", "--json", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let done: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(done["slot"], "b");
    assert_eq!(done["rebooting"], true);
    assert_eq!(fleet.device.last_upgrade().map(|u| u.reboot), Some(true));

    let (ok, _, err) = fleet.admin(&["upgrade", "/nonexistent/update.cairn"]);
    assert!(!ok && err.contains("/nonexistent/update.cairn"), "{err}");
    let (ok, _, err) = fleet.admin(&["upgrade", "http://example.com/update.cairn"]);
    assert!(!ok && err.contains("https://"), "{err}");
}

#[test]
fn a_second_upgrade_is_refused_with_the_devices_message() {
    let fleet = Fleet::start();
    let (path, _) = bundle(fleet.dir.path());
    let held = fleet.device.hold(Rpc::Upgrade);
    let first = fleet.spawn(&["upgrade", path.to_str().unwrap()]);
    assert!(
        held.entered(Duration::from_secs(10)),
        "the first upgrade reaches the device"
    );

    let (ok, _, err) = fleet.admin(&["upgrade", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.ends_with("upgrade: an upgrade or rollback is already running; this upgrade can start when it has finished\n"),
        "{err}"
    );

    held.release();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_reader_may_look_but_not_upgrade() {
    let fleet = Fleet::start();
    let reader = fleet.config("reader.yaml", "device-ca.crt", "reader");
    let (ok, _, err) = fleet.run(&["--config", &reader, "slots"]);
    assert!(ok, "{err}");
    let (path, _) = bundle(fleet.dir.path());
    let (ok, _, err) = fleet.run(&["--config", &reader, "upgrade", path.to_str().unwrap()]);
    assert!(!ok);
    one_line(&err);
    assert!(
        err.contains("Upgrade needs the operator role")
            && err.contains("has the reader role")
            && err.contains("reader.yaml at a certificate with that role"),
        "{err}"
    );
    assert!(!fleet.device.called(Rpc::Upgrade));
}

#[test]
fn apply_config_checks_locally_then_applies() {
    let fleet = Fleet::start();
    let good = fleet.path("machine.yaml");
    std::fs::write(
        &good,
        "update:\n  tries: 3\nnetwork:\n  hostname: edge-02\n",
    )
    .unwrap();
    let good = good.to_str().unwrap();

    let (ok, out, err) = fleet.admin(&["apply-config", "--dry-run", good]);
    assert!(ok, "{err}");
    assert!(
        out.contains("would change (nothing applied; generation 7 is in force)"),
        "{out}"
    );
    assert!(
        out.contains("  network.hostname: edge-01 -> edge-02\n"),
        "{out}"
    );
    {
        let applied = fleet.device.applied();
        assert!(applied[0].dry_run);
        assert_eq!(applied[0].try_timeout_s, 0);
        assert!(applied[0].config.contains("hostname: edge-02"));
    }

    let (ok, out, err) = fleet.admin(&["apply-config", "--try", "2m", good]);
    assert!(ok, "{err}");
    assert!(out.contains("generation 8 on trial"), "{out}");
    assert!(out.contains("`cairnctl confirm-config 8`"), "{out}");
    assert_eq!(fleet.device.applied()[1].try_timeout_s, 120);

    let (ok, out, err) = fleet.admin(&["confirm-config", "8", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "{}");

    let (ok, _, err) = fleet.admin(&["apply-config", "--try", "2d", good]);
    assert!(!ok && err.contains("90s, 2m or 1h"), "{err}");

    // Refused here with `config validate`'s line; the device never sees it.
    let bad = fleet.path("bad.yaml");
    std::fs::write(&bad, "update:\n  triez: 3\n").unwrap();
    let bad = bad.to_str().unwrap();
    let (_, _, validate_err) = fleet.run(&["config", "validate", bad]);
    let (ok, _, err) = fleet.admin(&["apply-config", bad]);
    assert!(!ok);
    one_line(&err);
    assert_eq!(err, validate_err);
    assert_eq!(fleet.device.applied().len(), 2);
}

#[test]
fn a_client_certificate_from_another_ca_is_explained() {
    let fleet = Fleet::start();
    let other = new_secrets("Other");
    other.write_new(&fleet.path("other")).unwrap();
    let config = fleet.config("stranger.yaml", "device-ca.crt", "../other/admin");
    let (ok, _, err) = fleet.run(&["--config", &config, "version"]);
    assert!(!ok);
    one_line(&err);
    assert!(
        err.contains("the device does not trust this client certificate")
            && err.contains("other/admin.crt")
            && err.contains(&format!("issued by CA {}", other.client_ca.fingerprint())),
        "{err}"
    );
    assert!(!fleet.device.called(Rpc::Version));

    // An expired certificate from the right CA: the line says so.
    let now = SystemTime::now();
    let expired = cairn_pki::issue_client(
        &fleet.secrets.client_ca,
        "old",
        Role::Admin,
        Validity {
            not_before: now - Duration::from_secs(3 * 86400),
            not_after: now - Duration::from_secs(86400),
        },
    )
    .unwrap();
    std::fs::write(fleet.path("secrets/old.crt"), &expired.cert_pem).unwrap();
    std::fs::write(fleet.path("secrets/old.key"), &expired.key_pem).unwrap();
    let config = fleet.config("old.yaml", "device-ca.crt", "old");
    let (ok, _, err) = fleet.run(&["--config", &config, "version"]);
    assert!(!ok);
    one_line(&err);
    assert!(
        err.contains("the device does not trust this client certificate")
            && err.contains("expired on"),
        "{err}"
    );
}

#[test]
fn a_wrong_ca_names_both_cas() {
    let fleet = Fleet::start();
    // The classic mistake: the client CA where the device CA belongs.
    let config = fleet.config("wrong-ca.yaml", "client-ca.crt", "admin");
    let (ok, _, err) = fleet.run(&["--config", &config, "version"]);
    assert!(!ok);
    one_line(&err);
    let device_ca = fleet.secrets.device_ca.fingerprint();
    let client_ca = fleet.secrets.client_ca.fingerprint();
    assert!(
        err.contains(&format!(
            "the device's certificate was issued by CA {device_ca}, but "
        )) && err.contains(&format!("client-ca.crt is CA {client_ca}: point `ca:` in ")),
        "{err}"
    );
    assert!(!fleet.device.called(Rpc::Version));
}

#[test]
fn an_unreachable_endpoint_is_named() {
    let fleet = Fleet::start();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let (ok, _, err) = fleet.admin(&["--endpoint", &closed, "health"]);
    assert!(!ok);
    one_line(&err);
    assert!(
        err.contains(&format!("cannot connect to the device at {closed}"))
            && err.contains("--endpoint"),
        "{err}"
    );
}

#[test]
fn completions_cover_the_remote_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in [
        "upgrade",
        "apply-config",
        "confirm-config",
        "--endpoint",
        "--no-reboot",
    ] {
        assert!(script.contains(word), "{word} missing");
    }
}

#[test]
fn recovery_key_is_printed_once_and_then_refused() {
    let fleet = Fleet::start();
    let reader = fleet.config("reader.yaml", "device-ca.crt", "reader");
    let (ok, out, err) = fleet.run(&["--config", &reader, "recovery-key"]);
    assert!(!ok && out.is_empty());
    one_line(&err);
    assert!(err.contains("RecoveryKey needs the admin role"), "{err}");
    assert!(!fleet.device.called(Rpc::RecoveryKey));

    let (ok, out, err) = fleet.admin(&["recovery-key"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("{RECOVERY_KEY}\n"));
    one_line(&err);
    assert!(
        err.contains("the device has now forgotten this key") && err.contains("store it"),
        "{err}"
    );
    assert!(!err.contains(RECOVERY_KEY), "{err}");

    let (ok, out, err) = fleet.admin(&["recovery-key"]);
    assert!(!ok && out.is_empty());
    one_line(&err);
    assert!(
        err.ends_with(
            "recovery-key: the recovery key was handed out once already and is forgotten\n"
        ),
        "{err}"
    );

    let fleet = Fleet::start();
    let (ok, out, err) = fleet.admin(&["recovery-key", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["recovery_key"], RECOVERY_KEY);
}

#[test]
fn unlock_takes_the_key_from_a_file_or_standard_input() {
    let (fleet, fingerprint) = Fleet::maintenance();
    let file = fleet.path("recovery.key");
    std::fs::write(&file, format!("{RECOVERY_KEY}\n")).unwrap();
    // A self-signed device and no fingerprint: nothing is sent, and the line says what to check.
    let (ok, out, err) = fleet.admin(&["unlock", "--recovery-key-file", file.to_str().unwrap()]);
    assert!(!ok && out.is_empty());
    one_line(&err);
    assert!(
        err.contains(&format!(
            "has key {fingerprint}, which `ca:` does not vouch for"
        )) && err.contains("nothing was sent")
            && err.contains(&format!("--expect-fingerprint {fingerprint}")),
        "{err}"
    );
    assert!(fleet.unlock_keys().is_empty());

    // The flag that says what it risks sends it, and names the key it went to.
    let (ok, out, err) = fleet.admin(&[
        "unlock",
        "--send-key-to-unverified-device",
        "--recovery-key-file",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "unlocked STATE and DATA; sealed to PCR 7\n");
    assert!(
        err.contains(&format!("has key {fingerprint}; NOT verified, sent anyway")),
        "{err}"
    );
    one_line(&err);
    assert_eq!(fleet.unlock_keys(), [RECOVERY_KEY]);

    let fp = fingerprint.as_str();
    let (ok, out, err) = fleet.admin_with_input(
        &["unlock", "--expect-fingerprint", fp],
        &format!("{RECOVERY_KEY}\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out, "unlocked STATE and DATA; sealed to PCR 7\n");
    let (ok, out, err) = fleet.admin_with_input(
        &["unlock", "--expect-fingerprint", fp, "--json"],
        RECOVERY_KEY,
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["message"], "unlocked STATE and DATA; sealed to PCR 7");
    assert_eq!(fleet.unlock_keys().len(), 3);

    // Nothing on standard input, and no file: refused before connecting.
    let (ok, _, err) = fleet.admin(&["unlock"]);
    assert!(!ok);
    one_line(&err);
    assert!(
        err.contains("no recovery key on standard input") && err.contains("--recovery-key-file"),
        "{err}"
    );
    let (ok, _, err) = fleet.admin_with_input(&["unlock"], "\n");
    assert!(
        !ok && err.contains("no recovery key on standard input"),
        "{err}"
    );
    let missing = fleet.path("missing.key");
    let (ok, _, err) = fleet.admin(&["unlock", "--recovery-key-file", missing.to_str().unwrap()]);
    assert!(!ok && err.contains("missing.key"), "{err}");
    assert_eq!(fleet.unlock_keys().len(), 3);

    // A wrong key: the device's line, and the key is not repeated.
    let wrong = RECOVERY_KEY.replace('c', "d");
    let (ok, _, err) = fleet.admin_with_input(&["unlock", "--expect-fingerprint", fp], &wrong);
    assert!(!ok);
    assert!(
        err.ends_with("unlock: the recovery key opens neither STATE nor DATA\n"),
        "{err}"
    );
    assert!(!err.contains(&wrong), "{err}");

    // Only admins unlock.
    let operator = fleet.config("operator.yaml", "device-ca.crt", "operator");
    let out = fleet
        .command(&[
            "--config",
            &operator,
            "unlock",
            "--expect-fingerprint",
            fp,
            "--recovery-key-file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Unlock needs the admin role"), "{err}");
    assert_eq!(fleet.unlock_keys().len(), 4);
}

#[test]
fn unlock_checks_the_expected_fingerprint_before_sending_the_key() {
    let (fleet, fingerprint) = Fleet::maintenance();
    let file = fleet.path("recovery.key");
    std::fs::write(&file, RECOVERY_KEY).unwrap();
    let file = file.to_str().unwrap();

    let other = "00112233445566778899aabbccddeeff00112233";
    let (ok, out, err) = fleet.admin(&[
        "unlock",
        "--recovery-key-file",
        file,
        "--expect-fingerprint",
        other,
    ]);
    assert!(!ok && out.is_empty());
    one_line(&err);
    assert!(
        err.contains(&format!(
            "has key {fingerprint}, not {other} (--expect-fingerprint)"
        )) && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(fleet.unlock_keys().is_empty());

    // As the console shows it, in capitals with colons as some people copy it, too.
    let spaced = fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    for expect in [fingerprint.as_str(), &spaced] {
        let (ok, out, err) = fleet.admin(&[
            "unlock",
            "--recovery-key-file",
            file,
            "--expect-fingerprint",
            expect,
        ]);
        assert!(ok, "{err}");
        assert_eq!(out, "unlocked STATE and DATA; sealed to PCR 7\n");
        assert!(
            err.contains(&format!(
                "has key {fingerprint}, as --expect-fingerprint says"
            )),
            "{err}"
        );
    }
    assert_eq!(fleet.unlock_keys().len(), 2);

    // The short form names CAs; it is too short to pin a key.
    let (ok, _, err) = fleet.admin(&[
        "unlock",
        "--recovery-key-file",
        file,
        "--expect-fingerprint",
        &fingerprint[..8],
    ]);
    assert!(!ok && err.contains("all 40 hex digits"), "{err}");

    // Every other command still checks the certificate against `ca:`, and says what it saw.
    let (ok, _, err) = fleet.admin(&["version"]);
    assert!(!ok);
    one_line(&err);
    assert!(
        err.contains(&format!("self-signed (key {fingerprint})"))
            && err.contains(&format!(
                "cairnctl unlock --expect-fingerprint {fingerprint}"
            )),
        "{err}"
    );
    assert!(!fleet.device.called(Rpc::Version));
}

#[test]
fn unlock_sends_the_key_to_a_device_the_ca_vouches_for_without_a_fingerprint() {
    let fleet = Fleet::start();
    let (ok, out, err) = fleet.admin_with_input(&["unlock"], RECOVERY_KEY);
    assert!(ok, "{err}");
    assert!(!out.is_empty());
    assert!(!err.contains("NOT verified"), "{err}");
    assert!(fleet.device.called(Rpc::Unlock));
}

#[test]
fn unlock_never_takes_the_key_from_the_command_line() {
    let (fleet, _) = Fleet::maintenance();
    for args in [
        &["unlock", RECOVERY_KEY][..],
        &["unlock", "--recovery-key", RECOVERY_KEY],
        &["unlock", &format!("--recovery-key={RECOVERY_KEY}")],
    ] {
        let (ok, _, err) = fleet.admin(args);
        assert!(!ok, "{args:?}: {err}");
    }
    assert!(fleet.unlock_keys().is_empty());

    let out = fleet.command(&["unlock", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--recovery-key-file <FILE>"), "{help}");
    assert!(help.contains("--expect-fingerprint <FP>"), "{help}");
    assert!(!help.contains("[KEY]") && !help.contains("<KEY>"), "{help}");
}

#[test]
fn kubeconfig_points_at_the_device_and_is_written_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let fleet = Fleet::start();
    let operator = fleet.config("operator.yaml", "device-ca.crt", "operator");
    let (ok, out, err) = fleet.run(&["--config", &operator, "kubeconfig"]);
    assert!(!ok && out.is_empty());
    one_line(&err);
    assert!(err.contains("Kubeconfig needs the admin role"), "{err}");
    assert!(!fleet.device.called(Rpc::Kubeconfig));

    // Reached as `localhost`, the kubeconfig's server says so, on k3s's port.
    let port = fleet.endpoint().rsplit_once(':').unwrap().1.to_string();
    let endpoint = format!("localhost:{port}");
    let (ok, out, err) = fleet.admin(&["--endpoint", &endpoint, "kubeconfig"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        cairn_api::testing::KUBECONFIG.replace("127.0.0.1:6443", "localhost:6443")
    );
    let file = fleet.path("kube/config");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let (ok, out, err) = fleet.admin(&[
        "--endpoint",
        &endpoint,
        "kubeconfig",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("(mode 0600)"), "{out}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("server: https://localhost:6443\n"));
}
