//! Eclipse hawkBit's Direct Device Integration API (DDI v1), the device's side: poll the
//! controller base, read a deployment, send feedback, answer a cancel, report configData, and
//! download an artifact (resuming after a drop, through [`crate::fetch::Fetch`]).
//!
//! The one idea: every answer from the server is read into a small typed value here, and
//! anything the device would act on is checked first (the artifact's size and sha256, a
//! deployment's handling words), so the daemon decides on facts, never on raw JSON. Blocking,
//! over the same HTTPS/TLS 1.3 code as bundle downloads: no async runtime on the device.
//!
//! The JSON shapes are hawkBit's DDI model classes (`DdiControllerBase`, `DdiDeploymentBase`,
//! `DdiActionFeedback`, `DdiCancel`, `DdiConfigData`). Feedback carries the action's `id` as
//! well as its `status`: hawkBit ignores it, older servers and `hawkbit_mock` expect it.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use serde_json::{json, Map, Value};

use crate::fetch::{self, Fetch, FetchLimits};

/// How the device proves who it is, besides a client certificate in the TLS config.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `Authorization: TargetToken …`: this device's own token.
    Target(String),
    /// `Authorization: GatewayToken …`: the tenant's token.
    Gateway(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Target(_) => "TargetToken",
            Auth::Gateway(_) => "GatewayToken",
        })
    }
}

/// The longest polling sleep taken from a server (hawkBit's own upper bound is a day).
pub const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);
/// The shortest: a server asking for less is taken as asking for this.
pub const MIN_SLEEP: Duration = Duration::from_secs(1);

/// What one poll of the controller base said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// `config.polling.sleep`, bounded to [`MIN_SLEEP`]..=[`MAX_SLEEP`].
    pub sleep: Duration,
    /// `_links.deploymentBase.href`
    pub deployment: Option<String>,
    /// `_links.cancelAction.href`
    pub cancel: Option<String>,
    /// `_links.configData.href`: the server asks for the device's attributes.
    pub config_data: Option<String>,
}

/// `deployment.download` and `deployment.update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Skip,
    Attempt,
    Forced,
}

/// One artifact of a deployment, checked: a name, a size, a sha256 and an https link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub filename: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// `_links.download.href` (https).
    pub url: String,
}

/// A `deploymentBase` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: String,
    pub download: Handling,
    pub update: Handling,
    /// `maintenanceWindow`: `Some(true)` available, `Some(false)` unavailable, `None` no window.
    pub window: Option<bool>,
    /// Every artifact of every chunk, in order.
    pub artifacts: Vec<Artifact>,
}

/// A `cancelAction` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancel {
    pub id: String,
    /// The action the server wants stopped.
    pub stop_id: String,
}

/// `status.execution` of a feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    Proceeding,
    Closed,
    Canceled,
    Rejected,
    Scheduled,
    Resumed,
    Downloaded,
    Download,
}

impl Execution {
    pub fn as_str(self) -> &'static str {
        match self {
            Execution::Proceeding => "proceeding",
            Execution::Closed => "closed",
            Execution::Canceled => "canceled",
            Execution::Rejected => "rejected",
            Execution::Scheduled => "scheduled",
            Execution::Resumed => "resumed",
            Execution::Downloaded => "downloaded",
            Execution::Download => "download",
        }
    }

    pub fn parse(text: &str) -> Option<Execution> {
        [
            Execution::Proceeding,
            Execution::Closed,
            Execution::Canceled,
            Execution::Rejected,
            Execution::Scheduled,
            Execution::Resumed,
            Execution::Downloaded,
            Execution::Download,
        ]
        .into_iter()
        .find(|e| e.as_str() == text)
    }
}

/// `status.result.finished` of a feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Success,
    Failure,
    None,
}

impl Finished {
    pub fn as_str(self) -> &'static str {
        match self {
            Finished::Success => "success",
            Finished::Failure => "failure",
            Finished::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Finished> {
        [Finished::Success, Finished::Failure, Finished::None]
            .into_iter()
            .find(|f| f.as_str() == text)
    }
}

/// A feedback to an action (deployment or cancel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub execution: Execution,
    pub finished: Finished,
    /// `(cnt, of)`
    pub progress: Option<(u64, u64)>,
    pub details: Vec<String>,
}

impl Feedback {
    pub fn new(execution: Execution, finished: Finished, detail: impl Into<String>) -> Feedback {
        Feedback {
            execution,
            finished,
            progress: None,
            details: vec![detail.into()],
        }
    }

    /// The JSON body (`DdiActionFeedback`), with the action's id.
    pub fn json(&self, id: &str) -> Value {
        let mut result = Map::new();
        if let Some((cnt, of)) = self.progress {
            result.insert("progress".into(), json!({"cnt": cnt, "of": of}));
        }
        result.insert("finished".into(), json!(self.finished.as_str()));
        json!({
            "id": id,
            "status": {
                "execution": self.execution.as_str(),
                "result": Value::Object(result),
                "details": self.details,
            }
        })
    }
}

/// A failed DDI exchange, one line. `retry`: the network or the server's state, which may pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdiError {
    pub message: String,
    pub retry: bool,
}

impl std::fmt::Display for DdiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DdiError {}

fn refused(message: String) -> DdiError {
    DdiError {
        message,
        retry: false,
    }
}

/// One device's view of one hawkBit server.
#[derive(Clone)]
pub struct Client {
    /// `https://host[:port]` with any path prefix, no trailing slash.
    base: String,
    tenant: String,
    controller: String,
    auth: Auth,
    tls: Arc<ClientConfig>,
    limits: FetchLimits,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("tenant", &self.tenant)
            .field("controller", &self.controller)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// The largest JSON answer taken from the server.
const MAX_ANSWER: u64 = 1024 * 1024;

impl Client {
    /// `tls` from [`fetch::client_config`] (the server's CA, and a client certificate for mTLS).
    pub fn new(
        base: &str,
        tenant: &str,
        controller: &str,
        auth: Auth,
        tls: Arc<ClientConfig>,
    ) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            tenant: tenant.to_string(),
            controller: controller.to_string(),
            auth,
            tls,
            limits: FetchLimits::default(),
        }
    }

    /// Other timeouts and retries (tests shorten them).
    pub fn with_limits(mut self, limits: FetchLimits) -> Client {
        self.limits = limits;
        self
    }

    /// The controller base URL: `{base}/{tenant}/controller/v1/{controllerId}`.
    pub fn controller_url(&self) -> String {
        format!(
            "{}/{}/controller/v1/{}",
            self.base, self.tenant, self.controller
        )
    }

    pub fn controller_id(&self) -> &str {
        &self.controller
    }

    fn headers(&self, json_body: bool) -> Vec<(String, String)> {
        let mut h = vec![(
            "Accept".to_string(),
            "application/hal+json, application/json".to_string(),
        )];
        match &self.auth {
            Auth::None => {}
            Auth::Target(t) => h.push(("Authorization".into(), format!("TargetToken {t}"))),
            Auth::Gateway(t) => h.push(("Authorization".into(), format!("GatewayToken {t}"))),
        }
        if json_body {
            h.push(("Content-Type".into(), "application/json".into()));
        }
        h
    }

    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, DdiError> {
        let limits = FetchLimits {
            max_len: MAX_ANSWER,
            ..self.limits.clone()
        };
        let bytes = body.map(|b| serde_json::to_vec(b).expect("a Value is JSON"));
        let len = bytes.as_ref().map_or(0, |b| b.len() as u64);
        let mut reader = bytes.as_deref();
        let send = reader.as_mut().map(|r| (r as &mut dyn std::io::Read, len));
        let answer = fetch::request(
            method,
            url,
            &self.headers(body.is_some()),
            send,
            body.is_none(),
            &self.tls,
            &limits,
        )
        .map_err(|e| DdiError {
            message: format!("hawkBit {method} {url}: {e}"),
            retry: true,
        })?;
        let code = answer.status.code;
        if !(200..300).contains(&code) {
            let why = String::from_utf8_lossy(&answer.body)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>();
            return Err(DdiError {
                message: format!("hawkBit {method} {url} answered {}: {why}", answer.status),
                // An unknown target, a bad token: the config's fault until it changes, but the
                // server may also be set up later, so it is retried on the slow path.
                retry: true,
            });
        }
        if answer.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&answer.body).map_err(|e| {
            refused(format!(
                "hawkBit {method} {url}: the answer is not JSON: {e}"
            ))
        })
    }

    /// `GET` the controller base.
    pub fn poll(&self) -> Result<Poll, DdiError> {
        let url = self.controller_url();
        let v = self.call("GET", &url, None)?;
        parse_poll(&v).map_err(|why| refused(format!("hawkBit {url}: {why}")))
    }

    /// `GET` a `deploymentBase` link.
    pub fn deployment(&self, href: &str) -> Result<Deployment, DdiError> {
        let v = self.call("GET", href, None)?;
        parse_deployment(&v).map_err(|why| refused(format!("hawkBit {href}: {why}")))
    }

    /// `POST …/deploymentBase/{id}/feedback`.
    pub fn feedback(&self, id: &str, feedback: &Feedback) -> Result<(), DdiError> {
        let url = format!("{}/deploymentBase/{id}/feedback", self.controller_url());
        self.call("POST", &url, Some(&feedback.json(id))).map(drop)
    }

    /// `GET` a `cancelAction` link.
    pub fn cancel(&self, href: &str) -> Result<Cancel, DdiError> {
        let v = self.call("GET", href, None)?;
        parse_cancel(&v).map_err(|why| refused(format!("hawkBit {href}: {why}")))
    }

    /// `POST …/cancelAction/{id}/feedback`.
    pub fn cancel_feedback(&self, id: &str, feedback: &Feedback) -> Result<(), DdiError> {
        let url = format!("{}/cancelAction/{id}/feedback", self.controller_url());
        self.call("POST", &url, Some(&feedback.json(id))).map(drop)
    }

    /// `PUT …/configData` with mode `merge`.
    pub fn config_data(&self, data: &[(String, String)]) -> Result<(), DdiError> {
        let url = format!("{}/configData", self.controller_url());
        self.call("PUT", &url, Some(&config_data_json(data)))
            .map(drop)
    }

    /// Starts downloading an artifact; a dropped connection resumes with Range. The token goes
    /// along only when the link is on the server itself (a CDN's link gets none).
    pub fn download(&self, artifact: &Artifact) -> Result<Fetch, DdiError> {
        let headers = match same_origin(&self.base, &artifact.url) {
            true => self
                .headers(false)
                .into_iter()
                .filter(|(n, _)| n == "Authorization")
                .collect(),
            false => Vec::new(),
        };
        Fetch::with_config(
            &artifact.url,
            self.tls.clone(),
            headers,
            self.limits.clone(),
        )
        .map_err(|e| DdiError {
            message: format!("hawkBit artifact {}: {e}", artifact.filename),
            retry: true,
        })
    }
}

/// Whether `url` is on the scheme, host and port of `base` (case-insensitive).
pub fn same_origin(base: &str, url: &str) -> bool {
    let origin = |u: &str| {
        let (scheme, rest) = u.split_once("://")?;
        let host = rest.split(['/', '?', '#']).next()?;
        Some(format!("{scheme}://{host}").to_ascii_lowercase())
    };
    origin(base).is_some() && origin(base) == origin(url)
}

/// The configData body: `{"mode": "merge", "data": {…}}`.
pub fn config_data_json(data: &[(String, String)]) -> Value {
    let data: Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({"mode": "merge", "data": data})
}

/// `HH:MM:SS` as hawkBit writes `config.polling.sleep`.
pub fn parse_sleep(text: &str) -> Result<Duration, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || format!("config.polling.sleep {text:?} is not HH:MM:SS");
    if parts.len() != 3 {
        return Err(bad());
    }
    let mut secs = 0u64;
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 2 && i > 0 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = p.parse().map_err(|_| bad())?;
        if i > 0 && n > 59 {
            return Err(bad());
        }
        secs = secs.saturating_mul(60).saturating_add(n);
    }
    Ok(Duration::from_secs(secs).clamp(MIN_SLEEP, MAX_SLEEP))
}

fn link(v: &Value, name: &str) -> Option<String> {
    v.get("_links")?
        .get(name)?
        .get("href")?
        .as_str()
        .map(String::from)
}

pub fn parse_poll(v: &Value) -> Result<Poll, String> {
    let sleep = match v.pointer("/config/polling/sleep") {
        None => return Err("no config.polling.sleep".into()),
        Some(s) => parse_sleep(s.as_str().ok_or("config.polling.sleep is not a string")?)?,
    };
    Ok(Poll {
        sleep,
        deployment: link(v, "deploymentBase"),
        cancel: link(v, "cancelAction"),
        config_data: link(v, "configData"),
    })
}

fn text<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no {field} string"))
}

/// An id: hawkBit sends a string, some servers a number.
fn id_of(v: &Value) -> Result<String, String> {
    match v.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err("no id".into()),
    }
}

fn handling(v: &Value, field: &str) -> Result<Handling, String> {
    match v
        .pointer(&format!("/deployment/{field}"))
        .and_then(Value::as_str)
    {
        Some("skip") => Ok(Handling::Skip),
        Some("attempt") => Ok(Handling::Attempt),
        Some("forced") => Ok(Handling::Forced),
        Some(other) => Err(format!(
            "deployment.{field} {other:?} is none of skip, attempt, forced"
        )),
        None => Err(format!("no deployment.{field}")),
    }
}

pub fn parse_deployment(v: &Value) -> Result<Deployment, String> {
    let id = id_of(v)?;
    let window = match v.pointer("/deployment/maintenanceWindow") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "available" => Some(true),
        Some(Value::String(s)) if s == "unavailable" => Some(false),
        Some(other) => {
            return Err(format!(
                "deployment.maintenanceWindow {other} is neither available nor unavailable"
            ))
        }
    };
    let chunks = v
        .pointer("/deployment/chunks")
        .and_then(Value::as_array)
        .ok_or("no deployment.chunks")?;
    let mut artifacts = Vec::new();
    for (c, chunk) in chunks.iter().enumerate() {
        let list = chunk
            .get("artifacts")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("chunk {c} has no artifacts list"))?;
        for a in list {
            let filename = text(a, "filename").map_err(|e| format!("chunk {c}: {e}"))?;
            let what = format!("artifact {filename:?}");
            let size = a
                .get("size")
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("{what} has no size"))?;
            let sha256 = a
                .pointer("/hashes/sha256")
                .and_then(Value::as_str)
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("{what} has no sha256 hash"))?
                .to_ascii_lowercase();
            let url =
                link(a, "download").ok_or_else(|| format!("{what} has no https download link"))?;
            artifacts.push(Artifact {
                filename: filename.to_string(),
                size,
                sha256,
                url,
            });
        }
    }
    Ok(Deployment {
        id,
        download: handling(v, "download")?,
        update: handling(v, "update")?,
        window,
        artifacts,
    })
}

pub fn parse_cancel(v: &Value) -> Result<Cancel, String> {
    let id = id_of(v)?;
    let stop = v
        .get("cancelAction")
        .ok_or("no cancelAction")
        .and_then(|c| {
            id_of(&json!({"id": c.get("stopId")})).map_err(|_| "no cancelAction.stopId")
        })?;
    Ok(Cancel { id, stop_id: stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_is_hh_mm_ss_and_bounded() {
        assert_eq!(parse_sleep("00:05:00"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_sleep("12:00:00"), Ok(Duration::from_secs(43200)));
        assert_eq!(parse_sleep("00:00:00"), Ok(MIN_SLEEP));
        assert_eq!(parse_sleep("99:00:00"), Ok(MAX_SLEEP));
        for bad in [
            "5",
            "00:60:00",
            "a:b:c",
            "00:00",
            "00:00:00:00",
            "-1:00:00",
            "",
        ] {
            assert!(parse_sleep(bad).is_err(), "{bad}");
        }
    }

    /// hawkBit's own example answers (DdiControllerBase, DdiDeploymentBase, DdiCancel).
    #[test]
    fn hawkbit_examples_are_read() {
        let poll = json!({"config":{"polling":{"sleep":"12:00:00"}},"_links":{
            "deploymentBase":{"href":"https://h/T/controller/v1/C/deploymentBase/5?c=-2127183556"},
            "configData":{"href":"https://h/T/controller/v1/C/configData"}}});
        let p = parse_poll(&poll).unwrap();
        assert_eq!(p.sleep, Duration::from_secs(43200));
        assert!(p
            .deployment
            .unwrap()
            .ends_with("deploymentBase/5?c=-2127183556"));
        assert!(p.config_data.is_some());
        assert!(p.cancel.is_none());
        let sha = "b3a04740".repeat(8);
        let d = json!({"id":"8","deployment":{"download":"forced","update":"attempt",
            "maintenanceWindow":"available","chunks":[{"part":"os","name":"one","version":"1.0",
            "artifacts":[{"filename":"binary.tgz","hashes":{"sha1":"x","md5":"y","sha256":sha},
            "size":13,"_links":{"download":{"href":"https://h/a"},
            "download-http":{"href":"http://h/a"}}}]}]},"actionHistory":{"status":"RUNNING"}});
        let d = parse_deployment(&d).unwrap();
        assert_eq!(d.id, "8");
        assert_eq!(
            (d.download, d.update),
            (Handling::Forced, Handling::Attempt)
        );
        assert_eq!(d.window, Some(true));
        assert_eq!(d.artifacts[0].url, "https://h/a");
        assert_eq!(d.artifacts[0].size, 13);
        let c = parse_cancel(&json!({"id":"11","cancelAction":{"stopId":"11"}})).unwrap();
        assert_eq!(c.stop_id, "11");
    }

    #[test]
    fn an_artifact_without_sha256_or_https_is_refused() {
        let d = |a: Value| {
            parse_deployment(&json!({"id":"1","deployment":{"download":"forced",
                "update":"forced","chunks":[{"artifacts":[a]}]}}))
        };
        let e = d(json!({"filename":"f","size":1,"hashes":{"md5":"x"},
            "_links":{"download":{"href":"https://h/f"}}}))
        .unwrap_err();
        assert!(e.contains("no sha256"), "{e}");
        let e = d(
            json!({"filename":"f","size":1,"hashes":{"sha256":"a".repeat(64)},
            "_links":{"download-http":{"href":"http://h/f"}}}),
        )
        .unwrap_err();
        assert!(e.contains("no https download link"), "{e}");
        let e = parse_deployment(&json!({"id":"1","deployment":{"download":"later",
            "update":"forced","chunks":[]}}))
        .unwrap_err();
        assert!(e.contains("none of skip"), "{e}");
    }

    #[test]
    fn the_token_goes_to_the_server_only() {
        assert!(same_origin(
            "https://hb.example:8443/p",
            "https://HB.example:8443/x/y?z"
        ));
        assert!(!same_origin(
            "https://hb.example:8443",
            "https://cdn.example/x"
        ));
        assert!(!same_origin(
            "https://hb.example:8443",
            "https://hb.example:9443/x"
        ));
        assert!(!same_origin(
            "https://hb.example",
            "https://hb.example.evil/x"
        ));
    }

    #[test]
    fn feedback_is_hawkbits_shape() {
        let mut f = Feedback::new(Execution::Proceeding, Finished::None, "downloading");
        f.progress = Some((2, 10));
        assert_eq!(
            f.json("7"),
            json!({"id":"7","status":{"execution":"proceeding",
                "result":{"finished":"none","progress":{"cnt":2,"of":10}},"details":["downloading"]}})
        );
    }
}
