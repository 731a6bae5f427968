//! A hawkBit DDI server double for tests: the device API of Eclipse hawkBit (DDI v1) as
//! hawkBit documents it, over HTTPS on a loopback port, with targets, actions, artifacts and
//! rollouts kept in memory.
//!
//! What it does as hawkBit does (docs: `apis/ddi_api.md`, `concepts/rollout-management.md`,
//! the DDI model classes):
//! - `GET /{tenant}/controller/v1/{controllerId}`: `config.polling.sleep` and `_links` with
//!   `deploymentBase` (`…/deploymentBase/{actionId}?c=…`) while an action runs, `cancelAction`
//!   while one is being canceled, `configData` until the target has sent its attributes.
//!   An unknown controller is registered on its first poll (hawkBit's default).
//! - `GET …/deploymentBase/{actionId}`: `id`, `deployment.{download, update,
//!   maintenanceWindow, chunks[].artifacts[]{filename, hashes{sha1, md5, sha256}, size,
//!   _links{download, download-http}}}`, `actionHistory`.
//! - `POST …/deploymentBase/{actionId}/feedback`: `status.execution` must be one of hawkBit's
//!   words and `status.result.finished` one of success/failure/none, else 400; `closed` with
//!   `success` makes the action FINISHED, with `failure` ERROR; `canceled` CANCELED. Feedback
//!   to a closed action is 410; past 1000 status entries per action, 403 (hawkBit's
//!   `maxStatusEntriesPerAction`).
//! - `GET/POST …/cancelAction/{id}[/feedback]`: `closed` or `canceled` cancels the action,
//!   `rejected` puts it back to running.
//! - `PUT …/configData`: `{mode, data}` kept per target.
//! - Artifacts at `…/softwaremodules/{id}/artifacts/{filename}`, with `Range` (206), an ETag,
//!   and optionally one connection cut mid-body.
//! - Auth: `TargetToken` (per target) or `GatewayToken` (per tenant), 401 otherwise; and
//!   optionally a client certificate required by TLS.
//! - Rollouts: targets in groups; a group starts when the one before reached its success
//!   threshold; an error threshold crossed in a running group pauses the rollout (no further
//!   group starts, the group's unstarted... none: actions already assigned stay).
//!
//! Behind the `testing` feature: none of this is in the device binary.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::testing_registry::Ca;

pub const TENANT: &str = "DEFAULT";
/// Status entries hawkBit keeps per action by default.
pub const MAX_STATUS: usize = 1000;

/// How the double checks who a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdiAuth {
    /// Anonymous (hawkBit's "anonymous access" setting).
    None,
    /// `TargetToken` with each target's own token ([`Ddi::token`]).
    Target,
    /// `GatewayToken` with this tenant-wide token.
    Gateway(String),
}

/// An action's status, as hawkBit's management API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionStatus {
    Running,
    Canceling,
    Canceled,
    Finished,
    Error,
}

/// A deployment assigned to a target.
#[derive(Debug, Clone)]
pub struct Action {
    pub id: u64,
    pub target: String,
    pub status: ActionStatus,
    pub download: String,
    pub update: String,
    /// `"available"`, `"unavailable"` or none.
    pub window: Option<String>,
    pub artifact: String,
    /// The sha256 the deployment announces (the artifact's own unless a test says otherwise).
    pub announced_sha256: String,
    /// Every feedback body the device sent, in order.
    pub feedback: Vec<Value>,
    /// Every cancel feedback body.
    pub cancel_feedback: Vec<Value>,
}

impl Action {
    /// `(execution, finished)` of each feedback.
    pub fn steps(&self) -> Vec<(String, String)> {
        self.feedback
            .iter()
            .map(|f| {
                (
                    f.pointer("/status/execution")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    f.pointer("/status/result/finished")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }
}

#[derive(Debug, Default, Clone)]
pub struct Target {
    pub polls: u64,
    pub config_data: Option<Value>,
}

/// A rollout group's thresholds, in percent of the group's targets (hawkBit's
/// `successCondition` and `errorCondition`, both of type THRESHOLD).
#[derive(Debug, Clone)]
pub struct Group {
    pub targets: Vec<String>,
    pub success_percent: u32,
    pub error_percent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    Scheduled,
    Running,
    Finished,
    /// Its error threshold was crossed: the rollout stopped here.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutStatus {
    Running,
    Finished,
    /// An error threshold was crossed (hawkBit's error action PAUSE).
    Paused,
}

#[derive(Debug, Clone)]
pub struct Rollout {
    pub groups: Vec<(Group, GroupStatus)>,
    pub status: RolloutStatus,
    artifact: String,
}

#[derive(Default)]
struct State {
    sleep: String,
    auth: Option<DdiAuth>,
    targets: BTreeMap<String, Target>,
    actions: Vec<Action>,
    artifacts: BTreeMap<String, Vec<u8>>,
    rollout: Option<Rollout>,
    /// Cut the next artifact answer after this many body bytes.
    cut_after: Option<u64>,
    /// Request lines, in order.
    log: Vec<String>,
    next_id: u64,
}

/// The double, serving until dropped.
pub struct Ddi {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
}

/// How to start it.
#[derive(Default)]
pub struct Options {
    /// Extra names and addresses in the server certificate (a QEMU guest reaches the host as
    /// 10.0.2.2).
    pub names: Vec<String>,
    /// Require a client certificate chaining to these roots.
    pub client_ca: Option<RootCertStore>,
    /// Bind to this address instead of 127.0.0.1:0.
    pub bind: Option<SocketAddr>,
}

impl Ddi {
    pub fn start(auth: DdiAuth) -> Ddi {
        Ddi::start_with(auth, Options::default())
    }

    pub fn start_with(auth: DdiAuth, options: Options) -> Ddi {
        let ca = Ca::new("cairn test hawkBit CA");
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        names.extend(options.names);
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "cairn test hawkBit");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &ca.issuer).expect("a leaf");
        let chain = CertificateDer::pem_slice_iter(cert.pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM");
        let pkey = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("a key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS versions");
        let builder = match options.client_ca {
            None => builder.with_no_client_auth(),
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .expect("a client verifier"),
            ),
        };
        let mut config = builder
            .with_single_cert(chain, pkey)
            .expect("a server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Arc::new(config);
        let listener =
            TcpListener::bind(options.bind.unwrap_or(([127, 0, 0, 1], 0).into())).expect("bind");
        let addr = listener.local_addr().expect("an address");
        let state = Arc::new(Mutex::new(State {
            sleep: "00:00:01".into(),
            auth: Some(auth),
            next_id: 1,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (s, st, rq) = (state.clone(), stop.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, tls, rq) = (s.clone(), tls.clone(), rq.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, tls, &s, addr, &rq);
                });
            }
        });
        Ddi {
            addr,
            ca_pem: ca.issuer.pem(),
            state,
            stop,
            requests,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn roots(&self) -> RootCertStore {
        crate::fetch::roots_from_pem(&self.ca_pem).expect("the CA")
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The polling sleep the server sets (`HH:MM:SS`).
    pub fn set_sleep(&self, sleep: &str) {
        self.state().sleep = sleep.into();
    }

    /// A target's TargetToken (hawkBit generates one per target; here derived from its name).
    pub fn token(controller: &str) -> String {
        hexs(&Sha256::digest(controller.as_bytes())[..16])
    }

    /// Uploads an artifact (a software module's file).
    pub fn add_artifact(&self, filename: &str, bytes: Vec<u8>) {
        self.state().artifacts.insert(filename.into(), bytes);
    }

    /// Assigns a deployment of `artifact` to `target` (a distribution set assignment): a new
    /// running action, whose id is returned. Earlier open actions of the target are canceled
    /// first, as hawkBit does with a new assignment.
    pub fn assign(&self, target: &str, artifact: &str, download: &str, update: &str) -> u64 {
        let mut s = self.state();
        let sha = hexs(Sha256::digest(
            s.artifacts.get(artifact).expect("the artifact is uploaded"),
        ));
        assign(&mut s, target, artifact, &sha, download, update)
    }

    /// Changes what an action's deployment announces.
    pub fn edit(&self, action: u64, f: impl FnOnce(&mut Action)) {
        let mut s = self.state();
        let a = s
            .actions
            .iter_mut()
            .find(|a| a.id == action)
            .expect("the action");
        f(a);
    }

    /// Asks the target to cancel `action` (hawkBit's "cancel assignment"): CANCELING.
    pub fn cancel(&self, action: u64) {
        self.edit(action, |a| {
            if a.status == ActionStatus::Running {
                a.status = ActionStatus::Canceling;
            }
        });
    }

    pub fn action(&self, id: u64) -> Action {
        self.state()
            .actions
            .iter()
            .find(|a| a.id == id)
            .expect("the action")
            .clone()
    }

    pub fn actions(&self) -> Vec<Action> {
        self.state().actions.clone()
    }

    pub fn target(&self, name: &str) -> Option<Target> {
        self.state().targets.get(name).cloned()
    }

    /// Cuts the next artifact download after `bytes` body bytes.
    pub fn cut_next_download(&self, bytes: u64) {
        self.state().cut_after = Some(bytes);
    }

    /// The requests seen with the status answered (`GET /DEFAULT/controller/v1/x 200`), in
    /// order.
    pub fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    /// Starts a rollout of `artifact` (download and update forced) over `groups`.
    pub fn start_rollout(&self, artifact: &str, groups: Vec<Group>) {
        let mut s = self.state();
        s.rollout = Some(Rollout {
            groups: groups
                .into_iter()
                .map(|g| (g, GroupStatus::Scheduled))
                .collect(),
            status: RolloutStatus::Running,
            artifact: artifact.into(),
        });
        advance_rollout(&mut s);
    }

    pub fn rollout(&self) -> Option<Rollout> {
        self.state().rollout.clone()
    }
}

impl Drop for Ddi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn assign(
    s: &mut State,
    target: &str,
    artifact: &str,
    sha: &str,
    download: &str,
    update: &str,
) -> u64 {
    for a in s.actions.iter_mut().filter(|a| a.target == target) {
        if matches!(a.status, ActionStatus::Running | ActionStatus::Canceling) {
            a.status = ActionStatus::Canceled;
        }
    }
    let id = s.next_id;
    s.next_id += 1;
    s.actions.push(Action {
        id,
        target: target.into(),
        status: ActionStatus::Running,
        download: download.into(),
        update: update.into(),
        window: None,
        artifact: artifact.into(),
        announced_sha256: sha.into(),
        feedback: Vec::new(),
        cancel_feedback: Vec::new(),
    });
    s.targets.entry(target.into()).or_default();
    id
}

/// hawkBit's rollout logic: the first scheduled group starts when every group before it has
/// finished; a running group finishes when its successful share reaches its success
/// threshold, and fails (pausing the rollout) when its error share exceeds its error threshold.
fn advance_rollout(s: &mut State) {
    let Some(mut rollout) = s.rollout.take() else {
        return;
    };
    loop {
        if rollout.status != RolloutStatus::Running {
            break;
        }
        let Some(i) = rollout
            .groups
            .iter()
            .position(|(_, st)| matches!(st, GroupStatus::Scheduled | GroupStatus::Running))
        else {
            rollout.status = RolloutStatus::Finished;
            break;
        };
        let (group, status) = rollout.groups[i].clone();
        if status == GroupStatus::Scheduled {
            let sha = hexs(Sha256::digest(
                s.artifacts.get(&rollout.artifact).expect("the artifact"),
            ));
            for t in &group.targets {
                assign(s, t, &rollout.artifact, &sha, "forced", "forced");
            }
            rollout.groups[i].1 = GroupStatus::Running;
        }
        let n = group.targets.len().max(1) as u64;
        let last = |t: &String| s.actions.iter().rev().find(|a| &a.target == t);
        let ok = group
            .targets
            .iter()
            .filter(|t| last(t).is_some_and(|a| a.status == ActionStatus::Finished))
            .count() as u64;
        let err = group
            .targets
            .iter()
            .filter(|t| last(t).is_some_and(|a| a.status == ActionStatus::Error))
            .count() as u64;
        if err * 100 > n * u64::from(group.error_percent) {
            rollout.groups[i].1 = GroupStatus::Error;
            rollout.status = RolloutStatus::Paused;
            break;
        }
        if ok * 100 >= n * u64::from(group.success_percent) {
            rollout.groups[i].1 = GroupStatus::Finished;
            continue;
        }
        break;
    }
    s.rollout = Some(rollout);
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len.min(1 << 20)];
    r.read_exact(&mut body)?;
    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
    }))
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Body bytes to send before cutting the connection.
    cut: Option<u64>,
}

fn answer(status: u16, body: Value) -> Answer {
    Answer {
        status,
        headers: vec![("Content-Type".into(), "application/hal+json".into())],
        body: if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).expect("JSON")
        },
        cut: None,
    }
}

fn error(status: u16, message: &str) -> Answer {
    answer(
        status,
        json!({"errorCode": format!("hawkbit.server.error.{status}"), "message": message}),
    )
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        _ => "",
    }
}

fn serve(
    conn: TcpStream,
    tls: Arc<ServerConfig>,
    state: &Mutex<State>,
    addr: SocketAddr,
    requests: &AtomicU64,
) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let tls = ServerConnection::new(tls).map_err(io::Error::other)?;
    let mut stream = BufReader::new(StreamOwned::new(tls, conn));
    // Keep-alive as HTTP/1.1 allows (swupdate's libcurl reuses connections); the device's own
    // client sends Connection: close.
    while let Some(req) = read_request(&mut stream)? {
        requests.fetch_add(1, Ordering::SeqCst);
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let a = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let a = route(&mut s, &req, addr);
            s.log
                .push(format!("{} {} {}", req.method, req.path, a.status));
            a
        };
        let out = stream.get_mut();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            a.status,
            reason(a.status),
            a.body.len()
        );
        for (n, v) in &a.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(if close {
            "Connection: close\r\n\r\n"
        } else {
            "\r\n"
        });
        out.write_all(head.as_bytes())?;
        if req.method == "HEAD" {
            out.flush()?;
            continue;
        }
        match a.cut {
            Some(n) => {
                out.write_all(&a.body[..(n as usize).min(a.body.len())])?;
                out.flush()?;
                out.sock.shutdown(std::net::Shutdown::Both)?;
                return Ok(());
            }
            None => out.write_all(&a.body)?,
        }
        out.flush()?;
        if close {
            out.conn.send_close_notify();
            let _ = out.flush();
            break;
        }
    }
    Ok(())
}

fn authorized(s: &State, req: &Request, target: &str) -> bool {
    let given = req.header("authorization").unwrap_or_default();
    match s.auth.as_ref() {
        None | Some(DdiAuth::None) => true,
        Some(DdiAuth::Target) => given == format!("TargetToken {}", Ddi::token(target)),
        Some(DdiAuth::Gateway(t)) => given == format!("GatewayToken {t}"),
    }
}

fn route(s: &mut State, req: &Request, addr: SocketAddr) -> Answer {
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    // {tenant}/controller/v1/{controllerId}/...
    if parts.len() < 4 || parts[1] != "controller" || parts[2] != "v1" {
        return error(404, "no such resource");
    }
    if parts[0] != TENANT {
        return error(404, "no such tenant");
    }
    let target = parts[3].to_string();
    if !authorized(s, req, &target) {
        return error(401, "the target is not authorized");
    }
    // Links name the host the request came to (hawkBit builds them from the request too), so a
    // QEMU guest that reaches the double as 10.0.2.2 is linked back there.
    let host = req
        .header("host")
        .map_or_else(|| addr.to_string(), String::from);
    let base = format!("https://{host}/{TENANT}/controller/v1/{target}");
    let rest = &parts[4..];
    let method = req.method.as_str();
    match (method, rest) {
        ("GET", []) => {
            let t = s.targets.entry(target.clone()).or_default();
            t.polls += 1;
            let wants_config = t.config_data.is_none();
            let mut links = serde_json::Map::new();
            let open = s
                .actions
                .iter()
                .find(|a| a.target == target && a.status == ActionStatus::Running);
            let canceling = s
                .actions
                .iter()
                .find(|a| a.target == target && a.status == ActionStatus::Canceling);
            if let Some(a) = canceling {
                links.insert(
                    "cancelAction".into(),
                    json!({"href": format!("{base}/cancelAction/{}", a.id)}),
                );
            } else if let Some(a) = open {
                // hawkBit's `c` is a hash of the action's state, so a client sees a change.
                let c = a.feedback.len() as i64 * 31 + a.id as i64;
                links.insert(
                    "deploymentBase".into(),
                    json!({"href": format!("{base}/deploymentBase/{}?c={c}", a.id)}),
                );
            }
            if wants_config {
                links.insert(
                    "configData".into(),
                    json!({"href": format!("{base}/configData")}),
                );
            }
            answer(
                200,
                json!({"config": {"polling": {"sleep": s.sleep}}, "_links": links}),
            )
        }
        ("GET", ["deploymentBase", id]) => {
            let Some(a) = find(s, &target, id) else {
                return error(404, "no such action");
            };
            if !matches!(a.status, ActionStatus::Running | ActionStatus::Canceling) {
                return error(404, "the action is not active");
            }
            let bytes = s.artifacts.get(&a.artifact).cloned().unwrap_or_default();
            let href = format!("{base}/softwaremodules/{}/artifacts/{}", a.id, a.artifact);
            let mut deployment = json!({
                "download": a.download,
                "update": a.update,
                "chunks": [{
                    "part": "os",
                    "name": "cairn",
                    "version": "1",
                    "artifacts": [{
                        "filename": a.artifact,
                        "hashes": {
                            "sha1": hexs(sha1_smol(&bytes)),
                            "md5": "",
                            "sha256": a.announced_sha256,
                        },
                        "size": bytes.len(),
                        // HTTPS only, as a hawkBit with plain HTTP downloads disabled links it.
                        "_links": {
                            "download": {"href": href},
                        }
                    }]
                }]
            });
            if let Some(w) = &a.window {
                deployment["maintenanceWindow"] = json!(w);
            }
            let history: Vec<String> = a
                .feedback
                .iter()
                .rev()
                .take(10)
                .filter_map(|f| f.pointer("/status/details/0").and_then(Value::as_str))
                .map(String::from)
                .collect();
            answer(
                200,
                json!({
                    "id": a.id.to_string(),
                    "deployment": deployment,
                    "actionHistory": {"status": "RUNNING", "messages": history},
                }),
            )
        }
        ("POST", ["deploymentBase", id, "feedback"]) => {
            let Some(a) = find_mut(s, &target, id) else {
                return error(404, "no such action");
            };
            let body: Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => return error(400, &format!("not JSON: {e}")),
            };
            let (execution, finished) = match check_feedback(&body) {
                Ok(v) => v,
                Err(why) => return error(400, &why),
            };
            if !matches!(a.status, ActionStatus::Running | ActionStatus::Canceling) {
                return error(410, "the action is closed");
            }
            if a.feedback.len() >= MAX_STATUS {
                return error(403, "too many status entries for this action");
            }
            a.feedback.push(body);
            match (execution.as_str(), finished.as_str()) {
                ("closed", "success") => a.status = ActionStatus::Finished,
                ("closed", "failure") => a.status = ActionStatus::Error,
                ("canceled", _) => a.status = ActionStatus::Canceled,
                ("rejected", _) => a.status = ActionStatus::Error,
                _ => {}
            }
            advance_rollout(s);
            answer(200, Value::Null)
        }
        ("GET", ["cancelAction", id]) => match find(s, &target, id) {
            Some(a) if a.status == ActionStatus::Canceling => answer(
                200,
                json!({"id": a.id.to_string(), "cancelAction": {"stopId": a.id.to_string()}}),
            ),
            _ => error(404, "no such cancel action"),
        },
        ("POST", ["cancelAction", id, "feedback"]) => {
            let body: Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => return error(400, &format!("not JSON: {e}")),
            };
            let (execution, _) = match check_feedback(&body) {
                Ok(v) => v,
                Err(why) => return error(400, &why),
            };
            let Some(a) = find_mut(s, &target, id) else {
                return error(404, "no such action");
            };
            if a.status != ActionStatus::Canceling {
                return error(410, "the action is not being canceled");
            }
            a.cancel_feedback.push(body);
            match execution.as_str() {
                "closed" | "canceled" => a.status = ActionStatus::Canceled,
                "rejected" => a.status = ActionStatus::Running,
                _ => {}
            }
            answer(200, Value::Null)
        }
        ("PUT", ["configData"]) => {
            let body: Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => return error(400, &format!("not JSON: {e}")),
            };
            let data_ok = body
                .get("data")
                .and_then(Value::as_object)
                .is_some_and(|d| d.values().all(Value::is_string));
            let mode_ok = match body.get("mode") {
                None => true,
                Some(m) => ["merge", "replace", "remove"].contains(&m.as_str().unwrap_or("")),
            };
            if !data_ok || !mode_ok {
                return error(
                    400,
                    "configData needs data{string: string} and mode merge|replace|remove",
                );
            }
            s.targets.entry(target).or_default().config_data = Some(body);
            answer(200, Value::Null)
        }
        ("GET" | "HEAD", ["softwaremodules", id, "artifacts", name]) => {
            let Some(a) = find(s, &target, id) else {
                return error(404, "no such software module");
            };
            if a.artifact != *name {
                return error(404, "no such artifact");
            }
            let bytes = s.artifacts.get(*name).cloned().unwrap_or_default();
            let etag = format!("\"{}\"", hexs(Sha256::digest(&bytes)));
            let mut a = artifact_answer(req, bytes, &etag);
            if a.status / 100 == 2 {
                a.cut = s.cut_after.take();
            }
            a
        }
        (
            _,
            ["deploymentBase", ..]
            | ["cancelAction", ..]
            | ["configData"]
            | ["softwaremodules", ..],
        )
        | (_, []) => error(405, "method not allowed"),
        _ => error(404, "no such resource"),
    }
}

fn artifact_answer(req: &Request, bytes: Vec<u8>, etag: &str) -> Answer {
    let len = bytes.len() as u64;
    let mut headers = vec![
        (
            "Content-Type".to_string(),
            "application/octet-stream".to_string(),
        ),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
        ("ETag".to_string(), etag.to_string()),
    ];
    let range = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(from, to)| {
            let from: u64 = from.parse().ok()?;
            let to: u64 = if to.is_empty() {
                len.checked_sub(1)?
            } else {
                to.parse().ok()?
            };
            Some((from, to.min(len.saturating_sub(1))))
        });
    let if_range_ok = req.header("if-range").is_none_or(|v| v == etag);
    match range {
        Some((from, to)) if if_range_ok => {
            if from >= len || from > to {
                return Answer {
                    status: 416,
                    headers: vec![("Content-Range".into(), format!("bytes */{len}"))],
                    body: Vec::new(),
                    cut: None,
                };
            }
            headers.push(("Content-Range".into(), format!("bytes {from}-{to}/{len}")));
            Answer {
                status: 206,
                headers,
                body: bytes[from as usize..=to as usize].to_vec(),
                cut: None,
            }
        }
        _ => Answer {
            status: 200,
            headers,
            body: bytes,
            cut: None,
        },
    }
}

/// A feedback body as hawkBit's `DdiActionFeedback` takes it: `status` required, its
/// `execution` and `result.finished` from hawkBit's enumerations, `progress` numbers,
/// `details` strings.
pub fn check_feedback(body: &Value) -> Result<(String, String), String> {
    let status = body.get("status").ok_or("no status")?;
    let execution = status
        .get("execution")
        .and_then(Value::as_str)
        .ok_or("no status.execution")?;
    if crate::ddi::Execution::parse(execution).is_none() {
        return Err(format!(
            "status.execution {execution:?} is not a hawkBit execution"
        ));
    }
    let finished = status
        .pointer("/result/finished")
        .and_then(Value::as_str)
        .ok_or("no status.result.finished")?;
    if crate::ddi::Finished::parse(finished).is_none() {
        return Err(format!(
            "status.result.finished {finished:?} is not success, failure or none"
        ));
    }
    if let Some(p) = status.pointer("/result/progress") {
        if !(p.get("cnt").is_some_and(Value::is_u64) && p.get("of").is_none_or(Value::is_u64)) {
            return Err("status.result.progress needs cnt (and of) as numbers".into());
        }
    }
    if let Some(d) = status.get("details") {
        if !d.as_array().is_some_and(|d| d.iter().all(Value::is_string)) {
            return Err("status.details is not a list of strings".into());
        }
    }
    Ok((execution.to_string(), finished.to_string()))
}

fn hexs(b: impl AsRef<[u8]>) -> String {
    let b = b.as_ref();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn find<'a>(s: &'a State, target: &str, id: &str) -> Option<&'a Action> {
    let id: u64 = id.parse().ok()?;
    s.actions.iter().find(|a| a.id == id && a.target == target)
}

fn find_mut<'a>(s: &'a mut State, target: &str, id: &str) -> Option<&'a mut Action> {
    let id: u64 = id.parse().ok()?;
    s.actions
        .iter_mut()
        .find(|a| a.id == id && a.target == target)
}

/// SHA-1 for the `sha1` hash hawkBit also lists (no crate for it here; small and only for
/// the double's answers).
fn sha1_smol(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_of_abc() {
        assert_eq!(
            hexs(sha1_smol(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
