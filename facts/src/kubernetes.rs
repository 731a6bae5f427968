//! The machine config's `kubernetes:` section: a single-node k3s server on the device's
//! containerd, and what its health means for an update.
//!
//! ```yaml
//! kubernetes:
//!   disable: [traefik, servicelb]
//!   flannel_backend: vxlan
//!   node_name: edge-01
//!   manifests: [app.yaml]
//!   workloads:
//!     - {kind: Deployment, namespace: kube-system, name: coredns}
//!   heartbeat_max_age_s: 40
//! ```
//!
//! The one idea: everything here is checked against what k3s itself accepts (its documented
//! `--disable` items and `--flannel-backend` values, Kubernetes' object name rules), so a
//! config the device takes is one k3s starts with. A section only makes sense on an image that
//! carries k3s ([`K3S_BIN`]): [`require_k3s`] says so in one line, for cairnd, the image
//! builder and `cairnctl config validate` alike.

use serde::Deserialize;

/// Where the system extension puts an operator-supplied k3s binary.
pub const K3S_BIN: &str = "/usr/bin/k3s";
/// The folder on STATE (under its mount point) whose files `manifests` names.
pub const MANIFESTS_DIR: &str = "kubernetes/manifests";
/// How old the Node's last heartbeat may be by default: the node lifecycle controller's grace
/// period, after which it turns `Ready` to `Unknown` itself.
pub const DEFAULT_HEARTBEAT_MAX_AGE_S: u64 = 40;
const MAX_MANIFESTS: usize = 64;
const MAX_WORKLOADS: usize = 64;

/// The components k3s's `--disable` takes (docs.k3s.io, `k3s server --help`).
pub const COMPONENTS: [&str; 6] = [
    "coredns",
    "servicelb",
    "traefik",
    "local-storage",
    "metrics-server",
    "runtimes",
];

/// `--flannel-backend`'s values.
pub const FLANNEL_BACKENDS: [&str; 4] = ["vxlan", "host-gw", "wireguard-native", "none"];

/// A checked `kubernetes:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    /// Packaged components k3s does not deploy, each one of [`COMPONENTS`], no repeats.
    pub disable: Vec<String>,
    /// One of [`FLANNEL_BACKENDS`] (default vxlan).
    pub flannel_backend: String,
    /// The Node's name; `None`: the device's hostname.
    pub node_name: Option<String>,
    /// File names in STATE's [`MANIFESTS_DIR`], deployed by k3s at every start.
    pub manifests: Vec<String>,
    /// Deployments and DaemonSets that must be available before an update is committed.
    pub workloads: Vec<Workload>,
    /// The oldest Node heartbeat a healthy node may show, in seconds.
    pub heartbeat_max_age_s: u64,
}

/// A Deployment or DaemonSet the health gate waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum WorkloadKind {
    Deployment,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// The section as written; what the JSON Schema describes.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub(crate) struct RawKubernetes {
    /// Packaged components k3s must not deploy: coredns, servicelb, traefik, local-storage,
    /// metrics-server, runtimes.
    #[serde(default)]
    disable: Vec<String>,
    /// Flannel's backend: vxlan (default), host-gw, wireguard-native or none.
    flannel_backend: Option<String>,
    /// The Node's name (default: the device's hostname).
    node_name: Option<String>,
    /// Manifests k3s deploys at every start: file names (.yaml, .yml or .json) in the
    /// `kubernetes/manifests/` folder on STATE.
    #[serde(default)]
    manifests: Vec<String>,
    /// Deployments and DaemonSets that must be Available before an update is committed.
    #[serde(default)]
    workloads: Vec<RawWorkload>,
    /// The oldest Node heartbeat a healthy node may show, seconds (10..=300; default 40).
    heartbeat_max_age_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub(crate) struct RawWorkload {
    /// Deployment (Available=True) or DaemonSet (every scheduled pod available).
    kind: WorkloadKind,
    namespace: String,
    name: String,
}

impl RawKubernetes {
    /// Checks the section; the error is one line naming the field.
    pub(crate) fn check(self) -> Result<Kubernetes, String> {
        let mut disable: Vec<String> = Vec::new();
        for (i, c) in self.disable.into_iter().enumerate() {
            if !COMPONENTS.contains(&c.as_str()) {
                return Err(format!(
                    "kubernetes.disable[{i}]: {c:?} is not a k3s component (one of {})",
                    COMPONENTS.join(", ")
                ));
            }
            if disable.contains(&c) {
                return Err(format!("kubernetes.disable[{i}]: {c:?} is named twice"));
            }
            disable.push(c);
        }
        let flannel_backend = match self.flannel_backend {
            None => "vxlan".to_string(),
            Some(b) if FLANNEL_BACKENDS.contains(&b.as_str()) => b,
            Some(b) => {
                return Err(format!(
                    "kubernetes.flannel_backend: {b:?} is not one of {}",
                    FLANNEL_BACKENDS.join(", ")
                ))
            }
        };
        if let Some(n) = &self.node_name {
            check_subdomain(n).map_err(|e| format!("kubernetes.node_name: {e}"))?;
        }
        if self.manifests.len() > MAX_MANIFESTS {
            return Err(format!(
                "kubernetes.manifests: more than {MAX_MANIFESTS} files"
            ));
        }
        for (i, m) in self.manifests.iter().enumerate() {
            check_manifest_name(m).map_err(|e| format!("kubernetes.manifests[{i}]: {e}"))?;
            if self.manifests[..i].contains(m) {
                return Err(format!("kubernetes.manifests[{i}]: {m:?} is named twice"));
            }
        }
        if self.workloads.len() > MAX_WORKLOADS {
            return Err(format!(
                "kubernetes.workloads: more than {MAX_WORKLOADS} workloads"
            ));
        }
        let mut workloads: Vec<Workload> = Vec::new();
        for (i, w) in self.workloads.into_iter().enumerate() {
            check_label(&w.namespace)
                .map_err(|e| format!("kubernetes.workloads[{i}].namespace: {e}"))?;
            check_subdomain(&w.name).map_err(|e| format!("kubernetes.workloads[{i}].name: {e}"))?;
            let w = Workload {
                kind: w.kind,
                namespace: w.namespace,
                name: w.name,
            };
            if workloads.contains(&w) {
                return Err(format!("kubernetes.workloads[{i}]: {w} is named twice"));
            }
            workloads.push(w);
        }
        let heartbeat_max_age_s = match self.heartbeat_max_age_s {
            None => DEFAULT_HEARTBEAT_MAX_AGE_S,
            Some(s) if (10..=300).contains(&s) => s,
            Some(s) => {
                return Err(format!(
                    "kubernetes.heartbeat_max_age_s {s} must be 10..=300"
                ))
            }
        };
        Ok(Kubernetes {
            disable,
            flannel_backend,
            node_name: self.node_name,
            manifests: self.manifests,
            workloads,
            heartbeat_max_age_s,
        })
    }
}

/// Refuses a `kubernetes:` section for a system without k3s, in one line; `what` names the
/// system ("this image", "this device").
pub fn require_k3s(section: Option<&Kubernetes>, has_k3s: bool, what: &str) -> Result<(), String> {
    match (section, has_k3s) {
        (Some(_), false) => Err(format!(
            "kubernetes: {what} has no k3s ({K3S_BIN}): build the image with `cairnctl image build --k3s FILE`, or remove the kubernetes section"
        )),
        _ => Ok(()),
    }
}

/// A DNS-1123 label (a namespace): 1 to 63 of a-z, 0-9 and `-`, starting and ending
/// alphanumeric.
fn check_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{s:?} is not a Kubernetes name (1-63 of a-z, 0-9 and '-', alphanumeric at both ends)"
        )),
    }
}

/// A DNS-1123 subdomain (a Node, Deployment or DaemonSet name): labels joined by `.`, at most
/// 253 characters.
fn check_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| check_label(l).is_ok());
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{s:?} is not a Kubernetes name (lower-case DNS labels joined by '.', at most 253 characters)"
        )),
    }
}

/// A manifest's file name: no folders, no hidden files, a suffix k3s deploys.
fn check_manifest_name(s: &str) -> Result<(), String> {
    let plain = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        return Err(format!(
            "{s:?} is not a plain file name (letters, digits, '.', '_', '-'; not hidden)"
        ));
    }
    if ![".yaml", ".yml", ".json"].iter().any(|x| s.ends_with(x)) {
        return Err(format!(
            "{s:?} does not end in .yaml, .yml or .json (k3s deploys only those)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Kubernetes, String> {
        serde_norway::from_str::<RawKubernetes>(yaml)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn defaults() {
        let k = parse("{}").unwrap();
        assert_eq!(k.flannel_backend, "vxlan");
        assert!(k.disable.is_empty() && k.manifests.is_empty() && k.workloads.is_empty());
        assert_eq!(k.node_name, None);
        assert_eq!(k.heartbeat_max_age_s, 40);
    }

    #[test]
    fn reads_every_field() {
        let k = parse(
            "{disable: [traefik, servicelb], flannel_backend: host-gw, node_name: edge-01.lab, \
             manifests: [app.yaml, b.json], heartbeat_max_age_s: 60, \
             workloads: [{kind: Deployment, namespace: kube-system, name: coredns}, \
             {kind: DaemonSet, namespace: apps, name: agent}]}",
        )
        .unwrap();
        assert_eq!(k.disable, ["traefik", "servicelb"]);
        assert_eq!(k.flannel_backend, "host-gw");
        assert_eq!(k.node_name.as_deref(), Some("edge-01.lab"));
        assert_eq!(k.manifests, ["app.yaml", "b.json"]);
        assert_eq!(k.workloads[1].to_string(), "DaemonSet apps/agent");
        assert_eq!(k.heartbeat_max_age_s, 60);
    }

    #[test]
    fn each_bad_field_is_named() {
        for (yaml, want) in [
            ("{disable: [dns]}", "kubernetes.disable[0]: \"dns\" is not a k3s component"),
            ("{disable: [traefik, traefik]}", "kubernetes.disable[1]: \"traefik\" is named twice"),
            ("{flannel_backend: ipsec}", "kubernetes.flannel_backend: \"ipsec\" is not one of"),
            ("{node_name: Edge_01}", "kubernetes.node_name: \"Edge_01\" is not a Kubernetes name"),
            ("{manifests: [../x.yaml]}", "kubernetes.manifests[0]: \"../x.yaml\" is not a plain"),
            ("{manifests: [.x.yaml]}", "kubernetes.manifests[0]:"),
            ("{manifests: [app.txt]}", "kubernetes.manifests[0]: \"app.txt\" does not end in"),
            ("{manifests: [a.yaml, a.yaml]}", "kubernetes.manifests[1]: \"a.yaml\" is named twice"),
            (
                "{workloads: [{kind: Deployment, namespace: Kube, name: x}]}",
                "kubernetes.workloads[0].namespace: \"Kube\"",
            ),
            (
                "{workloads: [{kind: DaemonSet, namespace: a, name: -x}]}",
                "kubernetes.workloads[0].name: \"-x\"",
            ),
            (
                "{workloads: [{kind: Deployment, namespace: a, name: x}, {kind: Deployment, namespace: a, name: x}]}",
                "kubernetes.workloads[1]: Deployment a/x is named twice",
            ),
            ("{workloads: [{kind: Pod, namespace: a, name: x}]}", "unknown variant `Pod`"),
            ("{heartbeat_max_age_s: 5}", "kubernetes.heartbeat_max_age_s 5 must be 10..=300"),
            ("{nodename: x}", "unknown field `nodename`"),
        ] {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e} lacks {want}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let yaml = crate::doc_yaml(include_str!("kubernetes.rs"));
        let c = crate::config::MachineConfig::<NoCerts>::parse(&yaml).unwrap();
        let k = c.kubernetes.unwrap();
        assert_eq!(k.disable, ["traefik", "servicelb"]);
        assert_eq!(k.workloads[0].to_string(), "Deployment kube-system/coredns");
    }

    struct NoCerts;
    impl crate::config::CertCheck for NoCerts {
        fn trust_anchors(_: &str) -> Result<(), String> {
            Err("no certificates here".into())
        }
        fn server_identity(_: &str, _: &str) -> Result<(), String> {
            Err("no certificates here".into())
        }
    }

    #[test]
    fn a_section_needs_k3s() {
        let k = parse("{}").unwrap();
        let e = require_k3s(Some(&k), false, "this image").unwrap_err();
        assert!(
            e.starts_with("kubernetes: this image has no k3s (/usr/bin/k3s)"),
            "{e}"
        );
        assert!(require_k3s(Some(&k), true, "this image").is_ok());
        assert!(require_k3s(None, false, "this image").is_ok());
    }
}
