//! The real k3s flow on qemu-x86_64, with an operator's k3s binary: it cannot run without one
//! (k3s is in no registry these machines reach), so it runs only when `CAIRN_K3S_BIN` names
//! the file (optionally `CAIRN_K3S_IMAGES`, an airgap images tarball, and
//! `CAIRN_K3S_BIN_UPGRADE`, another k3s release for the downgrade part) and is skipped with one
//! printed line otherwise. How to run it: docs/kubernetes.md.
//!
//! The flow: an image with k3s and a `kubernetes:` section boots; k3s's health (readyz, the
//! Node, kube-system pods, coredns Available) passes in `cairnctl health`; boot → Node Ready is
//! printed; `cairnctl kubeconfig --out` writes a 0600 file that the k3s binary's own kubectl
//! uses through a forwarded port to create a ConfigMap `before`. With an upgrade k3s: a release
//! carrying it is installed, its trial boot saves the datastore and commits on k3s's health,
//! a ConfigMap `after` is created, `cairnctl rollback` returns to slot A, whose cairnd restores
//! the datastore: `before` is there, `after` is gone.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_image::{ApiSecrets, BuildOptions, RootExtras};
use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward};
use cairn_systest::ctl::Ctl;
use cairn_systest::release::{dev_key, sign_bundle};
use cairn_systest::{cache_dir, device_bin, keys_dir, qemu_lock, rig_dir};

const API_PORT: u16 = 50000;
const K8S_PORT: u16 = 6443;
/// k3s under TCG takes minutes to become ready.
const K3S_TIMEOUT: Duration = Duration::from_secs(1800);

const MACHINE_CONFIG: &str = "health:\n  window_s: 1800\nkubernetes:\n  disable: [traefik, servicelb, metrics-server]\n  workloads:\n    - {kind: Deployment, namespace: kube-system, name: coredns}\n";

/// The operator's files, or `None` after printing the one line that says the test is skipped.
fn operator_files() -> Option<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    let Some(bin) = std::env::var_os("CAIRN_K3S_BIN") else {
        // Written to stdout directly, past the test harness's capture, so the suite's output
        // shows it.
        let _ = writeln!(
            std::io::stdout(),
            "skipped the real k3s flow: CAIRN_K3S_BIN is not set (an operator's k3s binary; see docs/kubernetes.md)"
        );
        return None;
    };
    let path = |v: &str| std::env::var_os(v).map(PathBuf::from);
    Some((
        PathBuf::from(bin),
        path("CAIRN_K3S_IMAGES"),
        path("CAIRN_K3S_BIN_UPGRADE"),
    ))
}

fn build(out: &Path, version: &str, k3s: &Path, images: Option<&Path>, api: bool) -> PathBuf {
    let board = cairn_board::find("qemu-x86_64").unwrap();
    let secrets = api.then(|| {
        let s = cairn_pki::secrets::DeviceSecrets::load(&keys_dir().join("secrets")).unwrap();
        ApiSecrets {
            client_ca: s.client_ca,
            device_ca: s.device_ca,
            device_ca_key: s.device_ca_key,
        }
    });
    cairn_image::build(&BuildOptions {
        board,
        out: out.to_path_buf(),
        cache: cache_dir(),
        device_bin: device_bin(board.arch),
        version: version.into(),
        seed: format!("systest-k3s-{version}"),
        root: RootExtras {
            keyring: Some(std::fs::read_to_string(keys_dir().join("dev.pub")).unwrap()),
            machine_config: Some(MACHINE_CONFIG.into()),
            api_secrets: secrets,
            ..Default::default()
        },
        secure_boot: None,
        extension: Some(cairn_image::extension::ExtensionOptions {
            k3s: Some(cairn_image::extension::K3sInput {
                binary: k3s.to_path_buf(),
                sha256: None,
                images: images.map(Path::to_path_buf),
            }),
        }),
    })
    .unwrap();
    out.to_path_buf()
}

/// Runs the operator's k3s as kubectl against the device.
fn kubectl(k3s: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(k3s)
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Waits until every `kubernetes …` check passes; returns how long it took.
fn until_kubernetes_healthy(reader: &Ctl, since: Instant) -> Duration {
    let deadline = Instant::now() + K3S_TIMEOUT;
    loop {
        let (_, health) = reader.health();
        let checks = health["checks"].as_array().cloned().unwrap_or_default();
        let k8s: Vec<_> = checks
            .iter()
            .filter(|c| {
                c["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("kubernetes "))
            })
            .collect();
        if !k8s.is_empty() && k8s.iter().all(|c| c["state"] == "passing") {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "k3s never became healthy: {health}"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}

#[test]
fn qemu_x86_64_real_k3s_health_kubeconfig_and_downgrade_safety() {
    let Some((k3s, images, upgrade)) = operator_files() else {
        return;
    };
    let tmp = rig_dir("cairn-k3s-");
    let image = build(
        &tmp.path().join("v1"),
        "0.1.0",
        &k3s,
        images.as_deref(),
        true,
    );
    let release = upgrade.as_ref().map(|new| {
        let dir = build(
            &tmp.path().join("v2"),
            "0.2.0",
            new,
            images.as_deref(),
            false,
        );
        sign_bundle(&dir, &dev_key())
    });
    let board = cairn_board::find("qemu-x86_64").unwrap();
    let disk = tmp.path().join("disk.img");
    cairn_image::copy_sparse(&image.join("disk.img"), &disk).unwrap();

    let _lock = qemu_lock();
    let (api_port, k8s_port) = (free_local_port().unwrap(), free_local_port().unwrap());
    let mut opts = LaunchOptions::new(board, &disk, tmp.path().join("work"));
    opts.writable_image = true;
    opts.echo_console = true;
    opts.extra_args = vec!["-m".into(), "3072".into()];
    opts.port_forwards = vec![
        PortForward::new(api_port, API_PORT),
        PortForward::new(k8s_port, K8S_PORT),
    ];
    let launched = Instant::now();
    let mut m = Machine::launch(opts).unwrap();
    m.wait_for_line("cairnd: k3s ", K3S_TIMEOUT).unwrap();
    let endpoint = format!("127.0.0.1:{api_port}");
    let ctl = |role: &str| Ctl::for_role(role, tmp.path(), &endpoint);
    let (admin, operator, reader) = (ctl("admin"), ctl("operator"), ctl("reader"));
    let ready = until_kubernetes_healthy(&reader, launched);
    eprintln!(
        "figure: boot → k3s healthy (Node Ready, kube-system ready, coredns Available) under TCG: {:.0} s",
        ready.as_secs_f64()
    );

    // The kubeconfig: admin only, written 0600, pointing at the address cairnctl used.
    let (ok, _, err) = operator.run(&["kubeconfig"]);
    assert!(!ok && err.contains("admin"), "{err}");
    let kubeconfig = tmp.path().join("kubeconfig");
    let (ok, _, err) = admin.run(&["kubeconfig", "--out", kubeconfig.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(text.contains("server: https://127.0.0.1:6443"), "{text}");
    // Through the forwarded port (k3s's certificate names 127.0.0.1).
    std::fs::write(&kubeconfig, text.replace(":6443", &format!(":{k8s_port}"))).unwrap();
    let (ok, out) = kubectl(
        &k3s,
        &kubeconfig,
        &["create", "configmap", "before", "--from-literal=k=v"],
    );
    assert!(ok, "{out}");

    let Some(bundle) = release else {
        println!("skipped the downgrade part: CAIRN_K3S_BIN_UPGRADE is not set");
        m.quit().unwrap();
        m.wait_exit(Duration::from_secs(60)).unwrap();
        return;
    };
    let done = operator.json(&["upgrade", bundle.to_str().unwrap()]);
    assert_eq!(done["slot"], "b", "{done}");
    m.wait_for_line(
        "datastore saved as /var/lib/cairn-k3s/snapshots/a-",
        K3S_TIMEOUT,
    )
    .unwrap();
    m.wait_for_line("cairnd: slot b healthy", K3S_TIMEOUT)
        .unwrap();
    let (ok, out) = kubectl(
        &k3s,
        &kubeconfig,
        &["create", "configmap", "after", "--from-literal=k=v"],
    );
    assert!(ok, "{out}");

    let answer = operator.json(&["rollback"]);
    assert_eq!(answer["target"], "a", "{answer}");
    m.wait_for_line(
        "k3s datastore restored from /var/lib/cairn-k3s/snapshots/a-",
        K3S_TIMEOUT,
    )
    .unwrap();
    until_kubernetes_healthy(&reader, Instant::now());
    let (ok, out) = kubectl(&k3s, &kubeconfig, &["get", "configmap", "before"]);
    assert!(ok, "the ConfigMap made before the upgrade is gone: {out}");
    let (ok, out) = kubectl(&k3s, &kubeconfig, &["get", "configmap", "after"]);
    assert!(
        !ok && out.contains("NotFound"),
        "the ConfigMap made after the upgrade survived: {out}"
    );

    m.quit().unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap();
}
