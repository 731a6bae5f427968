//! What "Kubernetes is healthy" means for an update, judged from k3s's own API:
//!
//! - `kubernetes readyz`: `GET /readyz?verbose` answers 200; otherwise the checks it marks
//!   `[-]` are the reason;
//! - `kubernetes node <name>`: the Node's `Ready` condition is `True` and its
//!   `lastHeartbeatTime` is newer than the configured age (40 s: the node lifecycle
//!   controller's grace period, after which it would turn `Unknown` by itself);
//! - `kubernetes kube-system pods`: every pod in kube-system is in phase `Running` with
//!   condition `Ready=True`; `Succeeded` pods (k3s's finished `helm-install-*` jobs) are left
//!   out, `Failed` ones are unhealthy, `Pending` ones not ready yet;
//! - `kubernetes <Kind> <namespace>/<name>` for each configured workload: a Deployment's
//!   condition `Available=True`, a DaemonSet's `numberAvailable == desiredNumberScheduled`.
//!
//! The judging functions take the parsed answers and are pure; the checks fetch fresh answers
//! through [`Client`] every round, so a pod that stops being ready fails the next round.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_facts::kubernetes::{Workload, WorkloadKind};
use cairn_updater::health::Check;
use serde_json::Value;

use super::client::Client;

/// Most `[-]` lines quoted in a readyz failure.
const MAX_FAILED_LINES: usize = 5;

/// Judges a `/readyz?verbose` answer.
pub fn readyz(status: u16, body: &[u8]) -> Result<(), String> {
    if status == 200 {
        return Ok(());
    }
    let text = String::from_utf8_lossy(body);
    let failed: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("[-]"))
        .collect();
    if failed.is_empty() {
        let first = text.lines().next().unwrap_or("").trim();
        return Err(format!("/readyz answered {status}: {}", clip(first)));
    }
    let mut shown: Vec<String> = failed
        .iter()
        .take(MAX_FAILED_LINES)
        .map(|l| clip(l))
        .collect();
    if failed.len() > MAX_FAILED_LINES {
        shown.push(format!("and {} more", failed.len() - MAX_FAILED_LINES));
    }
    Err(format!("/readyz answered {status}: {}", shown.join(", ")))
}

/// Judges a Node: `Ready=True`, heard from within `max_age` of `now`.
pub fn node(node: &Value, now: SystemTime, max_age: Duration) -> Result<(), String> {
    let conditions = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .ok_or("the Node has no status.conditions")?;
    let ready = conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .ok_or("the Node has no Ready condition")?;
    let text = |k: &str| ready.get(k).and_then(Value::as_str).unwrap_or("");
    if text("status") != "True" {
        return Err(format!(
            "Ready is {} ({}: {})",
            text("status"),
            text("reason"),
            clip(text("message"))
        ));
    }
    let beat = text("lastHeartbeatTime");
    let at = parse_time(beat).ok_or_else(|| format!("lastHeartbeatTime {beat:?} is not a time"))?;
    let age = now.duration_since(at).unwrap_or(Duration::ZERO);
    if age > max_age {
        return Err(format!(
            "Ready, but its last heartbeat ({beat}) is {} s old (more than {} s)",
            age.as_secs(),
            max_age.as_secs()
        ));
    }
    Ok(())
}

/// Judges kube-system's PodList.
pub fn pods(list: &Value) -> Result<(), String> {
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .ok_or("the PodList has no items")?;
    let mut bad = Vec::new();
    for pod in items {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Unknown");
        match phase {
            "Succeeded" => {}
            "Running" => {
                let ready = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                    })
                    .and_then(|c| c.get("status").and_then(Value::as_str));
                if ready != Some("True") {
                    bad.push(format!("{name} running but not ready"));
                }
            }
            "Failed" => bad.push(format!("{name} failed")),
            other => bad.push(format!("{name} {}", other.to_lowercase())),
        }
    }
    match bad.is_empty() {
        true => Ok(()),
        false => Err(bad.join(", ")),
    }
}

/// Judges a Deployment or DaemonSet.
pub fn workload(kind: WorkloadKind, object: &Value) -> Result<(), String> {
    match kind {
        WorkloadKind::Deployment => {
            let available = object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some("Available"))
                });
            match available {
                Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => Ok(()),
                Some(c) => Err(format!(
                    "not Available ({})",
                    clip(c.get("message").and_then(Value::as_str).unwrap_or(""))
                )),
                None => Err("no Available condition yet".into()),
            }
        }
        WorkloadKind::DaemonSet => {
            let number = |k: &str| {
                object
                    .pointer(&format!("/status/{k}"))
                    .and_then(Value::as_u64)
            };
            let desired = number("desiredNumberScheduled").unwrap_or(0);
            let available = number("numberAvailable").unwrap_or(0);
            match desired == available && object.get("status").is_some() {
                true => Ok(()),
                false => Err(format!("{available} of {desired} pods available")),
            }
        }
    }
}

/// An RFC 3339 time as the API server writes `metav1.Time`: `2024-09-12T06:21:11Z` (UTC,
/// whole seconds; fractions and offsets are read too).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + s - offset;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Text from the API server for a reason: one line, at most 120 characters.
fn clip(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match line.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// The checks of the Kubernetes gate, each fetching fresh answers when run.
pub fn checks(
    client: &Arc<Client>,
    node_name: &str,
    heartbeat_max_age: Duration,
    workloads: &[Workload],
) -> Vec<Box<dyn Check>> {
    let mut checks: Vec<Box<dyn Check>> = vec![
        Box::new(ReadyzCheck(client.clone())),
        Box::new(NodeCheck {
            client: client.clone(),
            name: node_name.to_string(),
            max_age: heartbeat_max_age,
        }),
        Box::new(PodsCheck(client.clone())),
    ];
    checks.extend(workloads.iter().map(|w| {
        Box::new(WorkloadCheck {
            client: client.clone(),
            workload: w.clone(),
        }) as Box<dyn Check>
    }));
    checks
}

struct ReadyzCheck(Arc<Client>);

impl Check for ReadyzCheck {
    fn name(&self) -> String {
        "kubernetes readyz".into()
    }
    fn run(&self) -> Result<(), String> {
        let answer = self.0.get("/readyz?verbose")?;
        if matches!(answer.status.code, 401 | 403) {
            return Err(format!(
                "/readyz answered {}: the API server refused our credentials",
                answer.status
            ));
        }
        readyz(answer.status.code, &answer.body)
    }
}

struct NodeCheck {
    client: Arc<Client>,
    name: String,
    max_age: Duration,
}

impl Check for NodeCheck {
    fn name(&self) -> String {
        format!("kubernetes node {}", self.name)
    }
    fn run(&self) -> Result<(), String> {
        let n = self
            .client
            .get_json(&format!("/api/v1/nodes/{}", self.name))?;
        node(&n, SystemTime::now(), self.max_age)
    }
}

struct PodsCheck(Arc<Client>);

impl Check for PodsCheck {
    fn name(&self) -> String {
        "kubernetes kube-system pods".into()
    }
    fn run(&self) -> Result<(), String> {
        pods(&self.0.get_json("/api/v1/namespaces/kube-system/pods")?)
    }
}

struct WorkloadCheck {
    client: Arc<Client>,
    workload: Workload,
}

impl Check for WorkloadCheck {
    fn name(&self) -> String {
        format!("kubernetes {}", self.workload)
    }
    fn run(&self) -> Result<(), String> {
        let w = &self.workload;
        let plural = match w.kind {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::DaemonSet => "daemonsets",
        };
        let object = self.client.get_json(&format!(
            "/apis/apps/v1/namespaces/{}/{plural}/{}",
            w.namespace, w.name
        ))?;
        workload(w.kind, &object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_the_api_server_writes_them() {
        let t = |s| parse_time(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("2019-06-05T18:38:35Z"), Some(1_559_759_915));
        assert_eq!(t("2024-02-29T12:00:00.123456Z"), Some(1_709_208_000));
        assert_eq!(t("2024-02-29T13:00:00+01:00"), Some(1_709_208_000));
        for bad in [
            "",
            "2019-06-05 18:38:35Z",
            "2019-13-05T18:38:35Z",
            "2019-06-05T18:38:35",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn readyz_failures_name_the_failing_checks() {
        assert_eq!(readyz(200, b"[+]ping ok\nreadyz check passed\n"), Ok(()));
        let body = b"[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]informer-sync ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\nreadyz check failed\n";
        assert_eq!(
            readyz(500, body),
            Err("/readyz answered 500: etcd failed: reason withheld, \
                 poststarthook/rbac/bootstrap-roles failed: reason withheld"
                .into())
        );
        assert_eq!(
            readyz(503, b"Service Unavailable\n"),
            Err("/readyz answered 503: Service Unavailable".into())
        );
    }
}
