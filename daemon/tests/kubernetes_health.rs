//! The Kubernetes health gate against an API double over TLS that, like k3s's API server,
//! wants a client certificate from its client CA, and serves the answers k3s gives.
//!
//! Where the answers come from: they are written by hand from the Kubernetes API reference
//! (Node, Pod, Deployment and DaemonSet status fields; the `/readyz?verbose` text format of
//! k8s.io/apiserver's healthz package, "[+]name ok" / "[-]name failed: reason withheld" and a
//! last line "readyz check failed"), with the pod names and phases a fresh k3s shows in
//! kube-system (coredns, local-path-provisioner, metrics-server, traefik, svclb-traefik, and
//! the helm-install jobs whose pods end `Succeeded`, shown as Completed). They are not
//! recorded from a running k3s (k3s cannot run here); their shape was compared with answers
//! recorded from a real kind v1.30 cluster (Arnavion/k8s-openapi,
//! k8s-openapi-tests/test-replays/v1-30/pod-list.json and deployment-list.json).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cairn_daemon::kubernetes::client::Client;
use cairn_daemon::kubernetes::health;
use cairn_facts::kubernetes::{Workload, WorkloadKind};
use cairn_pki::{Ca, CaKind, Role, San};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

type Answers = Arc<Mutex<HashMap<String, (u16, String)>>>;

/// An HTTPS server on loopback answering GETs from a table the test changes between rounds.
struct ApiDouble {
    port: u16,
    answers: Answers,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiDouble {
    fn start(server_ca: &Ca, client_ca: &Ca) -> ApiDouble {
        let issued = cairn_pki::issue_server(
            server_ca,
            "k3s",
            &[San::Ip("127.0.0.1".parse().unwrap())],
            server_ca.validity(),
        )
        .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(client_ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answers: Answers = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (answers.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = conn else { continue };
                // A refused handshake (a wrong client certificate) ends only that connection.
                let _ = serve(tcp, &config, &a);
            }
        });
        ApiDouble {
            port,
            answers,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, path: &str, status: u16, body: impl Into<String>) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, body.into()));
    }
}

impl Drop for ApiDouble {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn serve(
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    answers: &Answers,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let conn = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let (status, body): (u16, String) = answers.lock().unwrap().get(&path).cloned().unwrap_or((
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": format!("the server could not find the requested resource ({path})"),
               "reason": "NotFound", "code": 404})
        .to_string(),
    ));
    let kind = if path.starts_with("/readyz") {
        "text/plain; charset=utf-8"
    } else {
        "application/json"
    };
    // As Go's net/http does: a Content-Length for a short answer, chunks for a longer one
    // (a PodList is always longer).
    if body.len() < 2048 {
        write!(
            tls,
            "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    } else {
        write!(
            tls,
            "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )?;
        for chunk in body.as_bytes().chunks(1000) {
            write!(tls, "{:x}\r\n", chunk.len())?;
            tls.write_all(chunk)?;
            write!(tls, "\r\n")?;
        }
        write!(tls, "0\r\n\r\n")?;
    }
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    Ok(())
}

/// A kubeconfig as k3s writes it, for the double's address and these credentials.
fn kubeconfig(dir: &Path, port: u16, server_ca: &Ca, cert: &str, key: &str) -> std::path::PathBuf {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let text = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(server_ca.cert_pem()),
        b64(cert),
        b64(key)
    );
    let path = dir.join(format!("k3s-{port}-{}.yaml", text.len()));
    std::fs::write(&path, text).unwrap();
    path
}

/// RFC 3339 in UTC, as the API server writes `metav1.Time`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, beat: &str) -> Value {
    json!({"type": kind, "status": status, "lastHeartbeatTime": beat,
           "lastTransitionTime": "2026-12-06T19:58:02Z", "reason": reason, "message": message})
}

fn node(name: &str, heartbeat: SystemTime) -> String {
    let beat = rfc3339(heartbeat);
    json!({"kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"node-role.kubernetes.io/control-plane": "true",
                     "node-role.kubernetes.io/master": "true", "node.kubernetes.io/instance-type": "k3s"}},
        "spec": {"podCIDR": "10.42.0.0/24", "providerID": format!("k3s://{name}")},
        "status": {"conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", &beat),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", &beat),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", &beat),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", &beat)],
          "nodeInfo": {"kubeletVersion": "v1.31.2+k3s1", "containerRuntimeVersion": "containerd://1.6.20"}}})
    .to_string()
}

fn pod(name: &str, phase: &str, ready: bool) -> Value {
    let (status, reason) = match (phase, ready) {
        (_, true) => ("True", Value::Null),
        ("Succeeded", false) => ("False", json!("PodCompleted")),
        _ => ("False", json!("ContainersNotReady")),
    };
    json!({"metadata": {"name": name, "namespace": "kube-system"},
        "status": {"phase": phase, "conditions": [
            {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-06T19:58:10Z"},
            {"type": "Ready", "status": status, "reason": reason, "lastProbeTime": null, "lastTransitionTime": "2026-12-06T19:58:31Z"},
            {"type": "ContainersReady", "status": status, "lastProbeTime": null, "lastTransitionTime": "2026-12-06T19:58:31Z"},
            {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-06T19:58:09Z"}]}})
}

fn pods(metrics_ready: bool) -> String {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "712"}, "items": [
        pod("coredns-7b98449c4-x2h5k", "Running", true),
        pod("helm-install-traefik-crd-9tw4g", "Succeeded", false),
        pod("helm-install-traefik-6dqxm", "Succeeded", false),
        pod("local-path-provisioner-595dcfc56f-q7kz8", "Running", true),
        pod("metrics-server-cdcc87586-v4m9s", "Running", metrics_ready),
        pod("svclb-traefik-4b1c7a2f-8jx2p", "Running", true),
        pod("traefik-d7c9c5778-lbq6w", "Running", true)]})
    .to_string()
}

const READYZ_OK: &str = "[+]ping ok\n[+]log ok\n[+]etcd ok\n[+]etcd-readiness ok\n[+]informer-sync ok\n[+]poststarthook/start-apiserver-admission-initializer ok\n[+]poststarthook/rbac/bootstrap-roles ok\n[+]shutdown ok\nreadyz check passed\n";
const READYZ_FAILING: &str = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]etcd-readiness ok\n[+]informer-sync ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\n[+]shutdown ok\nreadyz check failed\n";

fn round(checks: &[Box<dyn cairn_updater::health::Check>]) -> Vec<(String, Result<(), String>)> {
    checks.iter().map(|c| (c.name(), c.run())).collect()
}

fn failing(results: &[(String, Result<(), String>)]) -> Vec<String> {
    results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect()
}

#[test]
fn the_gate_follows_k3s_through_rounds() {
    let server_ca = Ca::generate(CaKind::Device, "k3s-server-ca").unwrap();
    let client_ca = Ca::generate(CaKind::Client, "k3s-client-ca").unwrap();
    let admin = cairn_pki::issue_client(
        &client_ca,
        "system:admin",
        Role::Admin,
        client_ca.validity(),
    )
    .unwrap();
    let api = ApiDouble::start(&server_ca, &client_ca);
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Client::new(kubeconfig(
        dir.path(),
        api.port,
        &server_ca,
        &admin.cert_pem,
        &admin.key_pem,
    )));
    let workloads = [
        Workload {
            kind: WorkloadKind::Deployment,
            namespace: "kube-system".into(),
            name: "coredns".into(),
        },
        Workload {
            kind: WorkloadKind::DaemonSet,
            namespace: "kube-system".into(),
            name: "svclb-traefik-4b1c7a2f".into(),
        },
    ];
    let checks = health::checks(&client, "edge-01", Duration::from_secs(40), &workloads);
    let names: Vec<String> = checks.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "kubernetes readyz",
            "kubernetes node edge-01",
            "kubernetes kube-system pods",
            "kubernetes Deployment kube-system/coredns",
            "kubernetes DaemonSet kube-system/svclb-traefik-4b1c7a2f",
        ]
    );

    // Round 1: k3s is starting. The API server is not ready, the Node not registered yet, the
    // DaemonSet's pod not available.
    api.set("/readyz?verbose", 500, READYZ_FAILING);
    api.set("/api/v1/namespaces/kube-system/pods", 200, pods(true));
    api.set("/apis/apps/v1/namespaces/kube-system/deployments/coredns", 200, json!({
        "kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "coredns", "namespace": "kube-system"},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
          "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "ReplicaSet \"coredns-7b98449c4\" has successfully progressed."}]}}).to_string());
    let daemonset = |available: u64| {
        json!({
        "kind": "DaemonSet", "apiVersion": "apps/v1", "metadata": {"name": "svclb-traefik-4b1c7a2f", "namespace": "kube-system"},
        "status": {"currentNumberScheduled": 1, "numberMisscheduled": 0, "desiredNumberScheduled": 1,
                   "numberReady": available, "observedGeneration": 1, "updatedNumberScheduled": 1,
                   "numberAvailable": available}}).to_string()
    };
    api.set(
        "/apis/apps/v1/namespaces/kube-system/daemonsets/svclb-traefik-4b1c7a2f",
        200,
        daemonset(0),
    );
    let r = failing(&round(&checks));
    assert_eq!(r, [
        "kubernetes readyz: /readyz answered 500: etcd failed: reason withheld, poststarthook/rbac/bootstrap-roles failed: reason withheld".to_string(),
        "kubernetes node edge-01: GET /api/v1/nodes/edge-01: 404 X: the server could not find the requested resource (/api/v1/nodes/edge-01)".into(),
        "kubernetes DaemonSet kube-system/svclb-traefik-4b1c7a2f: 0 of 1 pods available".into(),
    ]);

    // Round 2: all well. The Completed helm-install pods do not count against kube-system.
    api.set("/readyz?verbose", 200, READYZ_OK);
    api.set(
        "/api/v1/nodes/edge-01",
        200,
        node("edge-01", SystemTime::now() - Duration::from_secs(3)),
    );
    api.set(
        "/apis/apps/v1/namespaces/kube-system/daemonsets/svclb-traefik-4b1c7a2f",
        200,
        daemonset(1),
    );
    assert_eq!(failing(&round(&checks)), Vec::<String>::new());

    // Round 3: metrics-server stops being ready, and the kubelet has not been heard from for
    // a minute, though the Node still says Ready (the controller has not marked it yet).
    api.set("/api/v1/namespaces/kube-system/pods", 200, pods(false));
    api.set(
        "/api/v1/nodes/edge-01",
        200,
        node("edge-01", SystemTime::now() - Duration::from_secs(61)),
    );
    let r = failing(&round(&checks));
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        r[0].starts_with("kubernetes node edge-01: Ready, but its last heartbeat ("),
        "{r:?}"
    );
    assert!(r[0].ends_with(" s old (more than 40 s)"), "{r:?}");
    assert_eq!(
        r[1],
        "kubernetes kube-system pods: metrics-server-cdcc87586-v4m9s running but not ready"
    );

    // Round 4: the node controller has marked it: Ready Unknown; a pod failed; readyz back up.
    let mut n: Value = serde_json::from_str(&node(
        "edge-01",
        SystemTime::now() - Duration::from_secs(90),
    ))
    .unwrap();
    n["status"]["conditions"][3] = condition(
        "Ready",
        "Unknown",
        "NodeStatusUnknown",
        "Kubelet stopped posting node status.",
        &rfc3339(SystemTime::now()),
    );
    api.set("/api/v1/nodes/edge-01", 200, n.to_string());
    let mut list: Value = serde_json::from_str(&pods(true)).unwrap();
    list["items"][3]["status"]["phase"] = json!("Failed");
    api.set("/api/v1/namespaces/kube-system/pods", 200, list.to_string());
    let r = failing(&round(&checks));
    assert_eq!(r, [
        "kubernetes node edge-01: Ready is Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)".to_string(),
        "kubernetes kube-system pods: local-path-provisioner-595dcfc56f-q7kz8 failed".into(),
    ]);
}

#[test]
fn a_client_certificate_the_api_server_does_not_trust_is_reported_as_such() {
    let server_ca = Ca::generate(CaKind::Device, "k3s-server-ca").unwrap();
    let client_ca = Ca::generate(CaKind::Client, "k3s-client-ca").unwrap();
    let stranger_ca = Ca::generate(CaKind::Client, "another-cluster").unwrap();
    let stranger = cairn_pki::issue_client(
        &stranger_ca,
        "system:admin",
        Role::Admin,
        stranger_ca.validity(),
    )
    .unwrap();
    let api = ApiDouble::start(&server_ca, &client_ca);
    api.set("/readyz?verbose", 200, READYZ_OK);
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(Client::new(kubeconfig(
        dir.path(),
        api.port,
        &server_ca,
        &stranger.cert_pem,
        &stranger.key_pem,
    )));
    let checks = health::checks(&client, "edge-01", Duration::from_secs(40), &[]);
    let e = checks[0].run().unwrap_err();
    assert!(
        e.contains("the API server refused our client certificate"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    // And a server whose certificate is not from the kubeconfig's CA is refused by us.
    let other_server = Ca::generate(CaKind::Device, "impostor").unwrap();
    let admin = cairn_pki::issue_client(
        &client_ca,
        "system:admin",
        Role::Admin,
        client_ca.validity(),
    )
    .unwrap();
    let client = Client::new(kubeconfig(
        dir.path(),
        api.port,
        &other_server,
        &admin.cert_pem,
        &admin.key_pem,
    ));
    let e = client.get("/readyz?verbose").unwrap_err();
    assert!(
        e.contains("presented a certificate that this device does not trust"),
        "{e}"
    );
}
