//! The machine config, `/etc/cairn/machine.yaml` in the root (baked in at image build with
//! `cairnctl image build --machine-config`). YAML, so JSON works too. Every part is optional:
//!
//! ```yaml
//! health:
//!   window_s: 300
//!   probes:
//!     - {tcp: "127.0.0.1:6443", timeout_s: 2}
//!     - {http: "http://127.0.0.1:8080/healthz", status: 200, timeout_s: 2}
//! update:
//!   tries: 2
//!   source: oci://registry.example:5000/cairn/edge:stable
//! registries:
//!   - {host: "registry.example:5000", ca: "-----BEGIN CERTIFICATE-----…", username: edge, password: "…"}
//! network:
//!   hostname: edge-01
//!   interfaces:
//!     - {name: eth0, addresses: [192.168.1.10/24], routes: [{to: 0.0.0.0/0, via: 192.168.1.1}]}
//!   nameservers: [192.168.1.1]
//! ```
//!
//! The `network` section is described in [`crate::network`], a probe in [`crate::probe`], the
//! `containers` section in [`crate::containers`].
//! Unknown keys are errors, so a misspelt probe is not silently skipped. The whole schema is
//! published as JSON Schema (`cairnctl config schema`, docs/machine-config.schema.json).
//!
//! The one idea: [`MachineConfig::parse`] is the only way to a config, and it refuses what the
//! device could not use, with one line naming the field. The PEM text a config may carry
//! (`update.fetch_ca`, `registries[].ca`, `api.server_cert`/`server_key`) is checked too, by the [`CertCheck`]
//! named in the type: this crate has no X.509 or TLS code, so the device and cairnctl both
//! name the management API's (`cairn_api::TlsCheck`) and refuse the same configs.

use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;

use crate::containers::{self, Container, RawContainer};
use crate::kubernetes::{Kubernetes, RawKubernetes};
use crate::network::{Network, RawNetwork};
use crate::probe::Probe;

/// Largest accepted config file.
pub const MAX_LEN: usize = 64 * 1024;
/// Where the root carries it.
pub const PATH: &str = "/etc/cairn/machine.yaml";
/// The health window of a config that sets no `health.window_s`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Boot attempts a new slot gets before the bootloader gives up on it, when the config sets no
/// `update.tries`.
pub const DEFAULT_TRIES: u32 = 2;
/// Most boot attempts `update.tries` may ask for: what every bootloader backend counts to
/// (systemd-boot's limit, `cairn_boot::sdboot::MAX_TRIES`, is the lowest; cairn-boot's tests
/// hold the two together).
pub const MAX_TRIES: u32 = 10;
/// PCRs in a TPM 2.0 bank: `storage.pcrs` takes 0 to `PCR_COUNT - 1` (as `cairn_tpm` does).
pub const PCR_COUNT: u8 = 24;
const MAX_PROBES: usize = 32;
const MAX_REGISTRIES: usize = 32;
/// The interval between checks of `update.source` when the config sets none, and its bounds.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(6 * 3600);
const MIN_CHECK_S: u64 = 60;
const MAX_CHECK_S: u64 = 7 * 24 * 3600;
const MAX_WINDOW_S: u64 = 24 * 3600;

/// The checks of the certificates and keys in a config, which need an X.509 parser and a TLS
/// stack that this crate does not carry. Each returns a one-line reason; [`MachineConfig::parse`]
/// prefixes the field.
pub trait CertCheck {
    /// `update.fetch_ca`: one or more CA certificates (PEM) an HTTPS client can trust.
    fn trust_anchors(pem: &str) -> Result<(), String>;
    /// `api.server_cert` and `api.server_key`: a certificate chain (PEM, leaf first) and the
    /// leaf's key (PEM), as the API's TLS server would take them.
    fn server_identity(cert: &str, key: &str) -> Result<(), String>;
    /// `update.source` when it is `oci://…`, and a container's `oci://…` image: an OCI
    /// reference the registry client takes. The default takes any text.
    fn oci_reference(text: &str) -> Result<(), String> {
        let _ = text;
        Ok(())
    }
    /// `hawkbit.client_cert` and `hawkbit.client_key`: a client certificate chain and its key
    /// (PEM), as a TLS client would show them. The default checks them as a server identity.
    fn client_identity(cert: &str, key: &str) -> Result<(), String> {
        Self::server_identity(cert, key)
    }
}

/// A checked machine config; `C` checked the certificates and keys in it.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig<C> {
    pub health_window: Duration,
    pub probes: Vec<Probe>,
    pub tries: u32,
    /// PEM CA certificates for bundle downloads (checked).
    pub fetch_ca: Option<String>,
    /// Where the device looks for updates by itself: `oci://registry/repo:tag` (checked).
    pub update_source: Option<String>,
    /// Time between checks of `update_source`.
    pub check_interval: Duration,
    /// OCI registries: their CA and credentials, by host.
    pub registries: Vec<Registry>,
    pub network: Network,
    /// A server certificate chain and key for the API (PEM), checked to match.
    pub api_identity: Option<(String, String)>,
    /// Whether STATE and DATA are encrypted on first boot, and the PCRs the key is sealed to.
    pub storage: Storage,
    /// A single-node k3s server and its health ([`crate::kubernetes`]); only on images with k3s.
    pub kubernetes: Option<Kubernetes>,
    /// Host containers cairnd runs through containerd ([`crate::containers`]).
    pub containers: Vec<Container>,
    /// An Eclipse hawkBit server the device takes deployments from (DDI).
    pub hawkbit: Option<Hawkbit>,
    checked_by: PhantomData<C>,
}

/// The `hawkbit:` section, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Hawkbit {
    /// `https://host[:port][/prefix]`, no trailing slash.
    pub url: String,
    pub tenant: String,
    pub controller_id: String,
    pub auth: HawkbitAuth,
    /// PEM CA certificates of the server (checked); the section's own or `update.fetch_ca`.
    pub ca: String,
    /// A client certificate chain and key (PEM) for mutual TLS (checked).
    pub client_identity: Option<(String, String)>,
}

/// How the device authenticates to hawkBit besides a client certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum HawkbitAuth {
    None,
    TargetToken(String),
    GatewayToken(String),
}

/// Names the kind only: a token is a secret.
impl std::fmt::Debug for HawkbitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HawkbitAuth::None => "none",
            HawkbitAuth::TargetToken(_) => "target_token",
            HawkbitAuth::GatewayToken(_) => "gateway_token",
        })
    }
}

impl std::fmt::Debug for Hawkbit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hawkbit")
            .field("url", &self.url)
            .field("tenant", &self.tenant)
            .field("controller_id", &self.controller_id)
            .field("auth", &self.auth)
            .field("client_identity", &self.client_identity.is_some())
            .finish()
    }
}

/// One `registries:` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Registry {
    /// `host` or `host:port`, as references name it.
    pub host: String,
    /// PEM CA certificates of its HTTPS server (checked); `None`: `update.fetch_ca`.
    pub ca: Option<String>,
    /// User name and password, for Basic auth or the token flow.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("ca", &self.ca.is_some())
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}

impl<C> MachineConfig<C> {
    /// The CA (PEM) and credentials for a registry `host`: its `registries:` entry, the CA
    /// falling back to `update.fetch_ca`. `None` when the device trusts no CA for it.
    pub fn registry(&self, host: &str) -> Option<(String, Option<(String, String)>)> {
        let entry = self
            .registries
            .iter()
            .find(|r| r.host.eq_ignore_ascii_case(host));
        let ca = entry
            .and_then(|r| r.ca.clone())
            .or_else(|| self.fetch_ca.clone())?;
        Some((ca, entry.and_then(|r| r.credentials.clone())))
    }
}

/// `storage:`, read once, on the first boot (the seed config), when STATE and DATA are formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Encrypt STATE and DATA when the device has a TPM (default true).
    pub encrypt: bool,
    /// The sha256-bank PCRs the disk key is sealed to (default `[7]`, the Secure Boot state).
    pub pcrs: Vec<u8>,
    /// When encryption cannot be set up, run no workloads on plain storage (maintenance mode).
    /// `None`: required wherever there is a TPM.
    pub require_encryption: Option<bool>,
    /// Refuse to encrypt (maintenance mode, nothing changed on disk) unless the firmware says
    /// Secure Boot is on (default false).
    pub require_secure_boot: bool,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            encrypt: true,
            pcrs: vec![7],
            require_encryption: None,
            require_secure_boot: false,
        }
    }
}

impl<C> Default for MachineConfig<C> {
    fn default() -> Self {
        MachineConfig {
            health_window: DEFAULT_WINDOW,
            probes: Vec::new(),
            tries: DEFAULT_TRIES,
            fetch_ca: None,
            update_source: None,
            check_interval: DEFAULT_CHECK_INTERVAL,
            registries: Vec::new(),
            network: Network::default(),
            api_identity: None,
            storage: Storage::default(),
            kubernetes: None,
            containers: Vec::new(),
            hawkbit: None,
            checked_by: PhantomData,
        }
    }
}

/// The machine config as written; what the JSON Schema describes.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(title = "Cairn machine config"))]
struct Raw {
    /// What a trial boot must show before the update is committed.
    #[serde(default)]
    health: RawHealth,
    /// How updates are installed.
    #[serde(default)]
    update: RawUpdate,
    /// Links, addresses, routes, DNS and time.
    #[serde(default)]
    network: RawNetwork,
    /// The management API.
    #[serde(default)]
    api: RawApi,
    /// Disk encryption of STATE and DATA, decided on the first boot.
    #[serde(default)]
    storage: RawStorage,
    /// A single-node k3s server (images built with `--k3s` only).
    kubernetes: Option<RawKubernetes>,
    /// Host containers cairnd runs through containerd, each restarted by its policy and
    /// checked in every update's health window.
    #[serde(default)]
    containers: Vec<RawContainer>,
    /// OCI registries the device pulls from (`update.source`, `cairnctl upgrade oci://…`,
    /// container images `oci://…`): the CA of each and its credentials.
    #[serde(default)]
    registries: Vec<RawRegistry>,
    /// An Eclipse hawkBit server (its Direct Device Integration API) the device polls for
    /// deployments, reporting success only after the new slot passed its health window.
    hawkbit: Option<RawHawkbit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RawHawkbit {
    /// The server: `https://host[:port]`, optionally with a path prefix.
    url: String,
    /// The tenant (default `DEFAULT`).
    tenant: Option<String>,
    /// This device's controller id (letters, digits, `.`, `_`, `-`; at most 64).
    controller_id: String,
    /// The target's security token (`Authorization: TargetToken …`).
    target_token: Option<String>,
    /// The tenant's gateway token (`Authorization: GatewayToken …`); not with `target_token`.
    gateway_token: Option<String>,
    /// The CA certificates (PEM) of the server (default: `update.fetch_ca`).
    ca: Option<String>,
    /// A client certificate chain (PEM) for mutual TLS. Needs `client_key`.
    client_cert: Option<String>,
    /// The key of `client_cert` (PEM).
    client_key: Option<String>,
}

/// Checks the `hawkbit:` section; `fetch_ca` is `update.fetch_ca`.
fn check_hawkbit<C: CertCheck>(
    raw: RawHawkbit,
    fetch_ca: Option<&String>,
) -> Result<Hawkbit, String> {
    let url = raw.url.trim_end_matches('/').to_string();
    let host = url.strip_prefix("https://").unwrap_or_default();
    if host.is_empty()
        || url.len() > 512
        || host.starts_with('/')
        || host.contains(['?', '#', '@'])
        || !url.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "hawkbit.url {:?} is not https://host[:port][/prefix]",
            raw.url.chars().take(100).collect::<String>()
        ));
    }
    let name_ok = |t: &str| {
        !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let tenant = raw.tenant.unwrap_or_else(|| "DEFAULT".into());
    if !name_ok(&tenant) {
        return Err(format!(
            "hawkbit.tenant {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
            tenant.chars().take(100).collect::<String>()
        ));
    }
    if !name_ok(&raw.controller_id) {
        return Err(format!(
            "hawkbit.controller_id {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
            raw.controller_id.chars().take(100).collect::<String>()
        ));
    }
    let token_ok =
        |t: &str| !t.is_empty() && t.len() <= 256 && t.bytes().all(|b| b.is_ascii_graphic());
    let auth = match (raw.target_token, raw.gateway_token) {
        (Some(_), Some(_)) => {
            return Err("hawkbit: target_token and gateway_token exclude each other".into())
        }
        (Some(t), None) if token_ok(&t) => HawkbitAuth::TargetToken(t),
        (None, Some(t)) if token_ok(&t) => HawkbitAuth::GatewayToken(t),
        (Some(_), None) => {
            return Err(
                "hawkbit.target_token must be 1 to 256 printable characters, no spaces".into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "hawkbit.gateway_token must be 1 to 256 printable characters, no spaces".into(),
            )
        }
        (None, None) => HawkbitAuth::None,
    };
    let ca = match (raw.ca, fetch_ca) {
        (Some(pem), _) => {
            C::trust_anchors(&pem).map_err(|e| format!("hawkbit.ca: {e}"))?;
            pem
        }
        (None, Some(pem)) => pem.clone(),
        (None, None) => return Err(
            "hawkbit: the device trusts no CA for the server: set hawkbit.ca or update.fetch_ca"
                .into(),
        ),
    };
    let client_identity = match (raw.client_cert, raw.client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            C::client_identity(&cert, &key)
                .map_err(|e| format!("hawkbit.client_cert/client_key: {e}"))?;
            Some((cert, key))
        }
        (Some(_), None) => return Err("hawkbit.client_cert needs hawkbit.client_key".into()),
        (None, Some(_)) => return Err("hawkbit.client_key needs hawkbit.client_cert".into()),
    };
    if auth == HawkbitAuth::None && client_identity.is_none() {
        return Err(
            "hawkbit: give target_token, gateway_token or client_cert/client_key: the device does not poll anonymously"
                .into(),
        );
    }
    Ok(Hawkbit {
        url,
        tenant,
        controller_id: raw.controller_id,
        auth,
        ca,
        client_identity,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RawRegistry {
    /// The registry as references name it: `host` or `host:port`.
    host: String,
    /// The CA certificates (PEM) of its HTTPS server (default: `update.fetch_ca`).
    ca: Option<String>,
    /// A user name, for HTTP Basic or the registry's token server. Needs `password`.
    username: Option<String>,
    /// The password of `username`.
    password: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RawStorage {
    /// Format STATE and DATA as LUKS2 on the first boot, the key sealed in the TPM (default
    /// true; without a TPM they stay unencrypted either way).
    encrypt: Option<bool>,
    /// The PCRs (sha256 bank, 0..=23) the key is sealed to (default `[7]`).
    pcrs: Option<Vec<u8>>,
    /// When encryption cannot be set up on the first boot, come up in maintenance mode
    /// (network and API only, no workloads) rather than run on plain storage (default: true
    /// where the box has a TPM).
    require_encryption: Option<bool>,
    /// Seal the disk key only with Secure Boot on: with it off, the first boot refuses
    /// (maintenance mode, nothing on disk changed) instead of encrypting (default false).
    require_secure_boot: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RawApi {
    /// The API's server certificate chain (PEM, leaf first), instead of the one the device
    /// issues itself from the device CA. Clients must trust its issuer. Needs `server_key`.
    server_cert: Option<String>,
    /// The key of `server_cert` (PEM).
    server_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RawHealth {
    /// Seconds a trial boot has to become healthy (1..=86400; default 300).
    window_s: Option<u64>,
    /// TCP and HTTP probes that must all pass (at most 32).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<crate::probe::ProbeSpec>"))]
    probes: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RawUpdate {
    /// Boots a new slot gets to report healthy (default 2).
    tries: Option<u32>,
    /// The CA certificates (PEM) of the HTTPS servers the device downloads bundles from
    /// (`cairnctl upgrade https://…`), and of OCI registries without a `registries:` CA.
    /// Without either the device downloads nothing.
    fetch_ca: Option<String>,
    /// An OCI reference (`oci://registry/repo:tag`) cairnd checks for a newer bundle at
    /// every start and every `check_interval_s`, installing and rebooting into it.
    source: Option<String>,
    /// Seconds between checks of `source` (60..=604800; default 21600).
    check_interval_s: Option<u64>,
}

/// The JSON Schema of the machine config.
#[cfg(feature = "schema")]
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Raw)).expect("a schema is JSON")
}

/// Longest refusal [`MachineConfig::parse`] gives: serde's errors quote the file's keys and
/// values, and a value may be most of the file.
const MAX_REFUSAL: usize = 400;

/// `text` on one short line: control characters written as escapes (`\t`, `\n`; a quoted key
/// may hold a line break), and the middle of a long text cut out, keeping its start (what was
/// wrong) and its end (where, and what was expected).
fn one_line(text: &str) -> String {
    let mut chars = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            chars.extend(c.escape_default());
        } else {
            chars.push(c);
        }
    }
    if chars.len() <= MAX_REFUSAL {
        return chars.into_iter().collect();
    }
    let keep = (MAX_REFUSAL - 3) / 2;
    let mut out: String = chars[..keep].iter().collect();
    out.push_str(" … ");
    out.extend(&chars[chars.len() - keep..]);
    out
}

impl<C: CertCheck> MachineConfig<C> {
    /// Parses and checks a config; the error is one line naming the problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_checked(text).map_err(|e| one_line(&e))
    }

    /// [`MachineConfig::parse`], its error quoting the file as serde and the section readers
    /// quote it.
    fn parse_checked(text: &str) -> Result<Self, String> {
        if text.len() > MAX_LEN {
            return Err(format!("larger than {MAX_LEN} bytes"));
        }
        // An empty file (or only comments) is YAML's null: the defaults.
        let raw: Raw = match serde_norway::from_str::<Option<Raw>>(text) {
            Ok(raw) => raw.unwrap_or_default(),
            Err(e) => {
                let e = e.to_string();
                // serde names the Rust type; the user wrote a file.
                return Err(match e.split_once(", expected struct Raw") {
                    // The whole file (the type is `Raw` itself).
                    Some((what, "")) => format!(
                        "{what}: a machine config is a YAML mapping of health, update, network, api, storage, containers, kubernetes, registries and hawkbit"
                    ),
                    // A section (`RawNetwork`, `RawInterface`…): that section must be a mapping.
                    Some((what, rest)) => {
                        let at = rest.trim_start_matches(char::is_alphanumeric);
                        format!("{what}, expected a mapping{at}")
                    }
                    None => e,
                });
            }
        };
        let mut config = Self::default();
        if let Some(w) = raw.health.window_s {
            if !(1..=MAX_WINDOW_S).contains(&w) {
                return Err(format!("health.window_s {w} must be 1..={MAX_WINDOW_S}"));
            }
            config.health_window = Duration::from_secs(w);
        }
        if raw.health.probes.len() > MAX_PROBES {
            return Err(format!("more than {MAX_PROBES} health probes"));
        }
        for (i, p) in raw.health.probes.iter().enumerate() {
            config
                .probes
                .push(Probe::from_json(p).map_err(|e| format!("health.probes[{i}]: {e}"))?);
        }
        if let Some(t) = raw.update.tries {
            if !(1..=MAX_TRIES).contains(&t) {
                return Err(format!("update.tries {t} must be 1..={MAX_TRIES}"));
            }
            config.tries = t;
        }
        if let Some(pem) = raw.update.fetch_ca {
            C::trust_anchors(&pem).map_err(|e| format!("update.fetch_ca: {e}"))?;
            config.fetch_ca = Some(pem);
        }
        if let Some(source) = raw.update.source {
            if !source.starts_with("oci://") {
                return Err(format!(
                    "update.source {:?} is not an oci:// reference",
                    source.chars().take(100).collect::<String>()
                ));
            }
            C::oci_reference(&source).map_err(|e| format!("update.source: {e}"))?;
            config.update_source = Some(source);
        }
        if let Some(s) = raw.update.check_interval_s {
            if !(MIN_CHECK_S..=MAX_CHECK_S).contains(&s) {
                return Err(format!(
                    "update.check_interval_s {s} must be {MIN_CHECK_S}..={MAX_CHECK_S}"
                ));
            }
            config.check_interval = Duration::from_secs(s);
        }
        if raw.registries.len() > MAX_REGISTRIES {
            return Err(format!("registries: more than {MAX_REGISTRIES}"));
        }
        for (i, r) in raw.registries.into_iter().enumerate() {
            let host_ok = !r.host.is_empty()
                && r.host.len() <= 255
                && r.host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
            if !host_ok {
                return Err(format!(
                    "registries[{i}].host {:?} is not host or host:port",
                    r.host.chars().take(100).collect::<String>()
                ));
            }
            if config
                .registries
                .iter()
                .any(|o: &Registry| o.host.eq_ignore_ascii_case(&r.host))
            {
                return Err(format!("registries[{i}].host {:?} is listed twice", r.host));
            }
            if let Some(pem) = &r.ca {
                C::trust_anchors(pem).map_err(|e| format!("registries[{i}].ca: {e}"))?;
            }
            let credentials = match (r.username, r.password) {
                (None, None) => None,
                (Some(u), Some(p)) if !u.is_empty() && !u.contains(':') => Some((u, p)),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "registries[{i}].username must be non-empty and hold no ':'"
                    ))
                }
                (Some(_), None) => return Err(format!("registries[{i}].username needs password")),
                (None, Some(_)) => return Err(format!("registries[{i}].password needs username")),
            };
            config.registries.push(Registry {
                host: r.host,
                ca: r.ca,
                credentials,
            });
        }
        config.network = raw.network.check()?;
        config.api_identity = match (raw.api.server_cert, raw.api.server_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                C::server_identity(&cert, &key)
                    .map_err(|e| format!("api.server_cert/server_key: {e}"))?;
                Some((cert, key))
            }
            (Some(_), None) => return Err("api.server_cert needs api.server_key".into()),
            (None, Some(_)) => return Err("api.server_key needs api.server_cert".into()),
        };
        if let Some(e) = raw.storage.encrypt {
            config.storage.encrypt = e;
        }
        if let Some(pcrs) = raw.storage.pcrs {
            if pcrs.is_empty() {
                return Err("storage.pcrs is empty: name at least one PCR".into());
            }
            if let Some(bad) = pcrs.iter().find(|&&p| p >= PCR_COUNT) {
                return Err(format!(
                    "storage.pcrs: PCR {bad} does not exist (PCRs are 0..={})",
                    PCR_COUNT - 1
                ));
            }
            config.storage.pcrs = pcrs;
        }
        if let Some(r) = raw.storage.require_encryption {
            if r && !config.storage.encrypt {
                return Err("storage.require_encryption: true needs storage.encrypt: true".into());
            }
            config.storage.require_encryption = Some(r);
        }
        if let Some(r) = raw.storage.require_secure_boot {
            if r && !config.storage.encrypt {
                return Err("storage.require_secure_boot: true needs storage.encrypt: true".into());
            }
            config.storage.require_secure_boot = r;
        }
        config.kubernetes = raw.kubernetes.map(RawKubernetes::check).transpose()?;
        config.containers = containers::check(raw.containers, C::oci_reference)?;
        config.hawkbit = raw
            .hawkbit
            .map(|h| check_hawkbit::<C>(h, config.fetch_ca.as_ref()))
            .transpose()?;
        // Every registry the device would pull from must be one it can trust.
        let no_ca = |field: &str, host: &str| {
            format!(
                "{field}: the device trusts no CA for the registry {host}: give it one in registries: or set update.fetch_ca"
            )
        };
        if let Some(source) = &config.update_source {
            let host = source.trim_start_matches("oci://").split('/').next();
            if let Some(host) = host.filter(|h| config.registry(h).is_none()) {
                return Err(no_ca("update.source", host));
            }
        }
        let found: Vec<_> = config
            .containers
            .iter()
            .map(|c| match &c.image {
                containers::ImageSource::Registry(image) => Some(config.registry(image.host())),
                containers::ImageSource::Archive(_) => None,
            })
            .collect();
        for (i, (c, found)) in config.containers.iter_mut().zip(found).enumerate() {
            if let containers::ImageSource::Registry(image) = &mut c.image {
                let Some((ca, credentials)) = found.flatten() else {
                    return Err(no_ca(&format!("containers[{i}].image"), image.host()));
                };
                image.ca = ca;
                image.credentials = credentials;
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `ca` as a CA and `cert` with `key` as a server identity; refuses anything else.
    #[derive(Debug, Clone, PartialEq)]
    struct Fake;

    impl CertCheck for Fake {
        fn trust_anchors(pem: &str) -> Result<(), String> {
            match pem.trim() {
                "ca" => Ok(()),
                // The documented example's placeholder.
                pem if pem.starts_with("-----BEGIN CERTIFICATE-----") => Ok(()),
                _ => Err("no PEM CERTIFICATE block".into()),
            }
        }
        fn server_identity(cert: &str, key: &str) -> Result<(), String> {
            match (cert.trim(), key.trim()) {
                ("cert", "key") => Ok(()),
                _ => Err("the key is not the certificate's".into()),
            }
        }
    }

    type MachineConfig = super::MachineConfig<Fake>;

    #[test]
    fn a_hawkbit_section_is_checked_field_by_field() {
        let c = MachineConfig::parse(
            "hawkbit: {url: 'https://hb.example:8443/', controller_id: edge-01, target_token: abc, ca: ca}",
        )
        .unwrap();
        let h = c.hawkbit.unwrap();
        assert_eq!(h.url, "https://hb.example:8443");
        assert_eq!(h.tenant, "DEFAULT");
        assert_eq!(h.auth, HawkbitAuth::TargetToken("abc".into()));
        let c = MachineConfig::parse(
            "update: {fetch_ca: ca}\nhawkbit: {url: 'https://h', tenant: t1, controller_id: x, \
             client_cert: cert, client_key: key}",
        )
        .unwrap();
        let h = c.hawkbit.unwrap();
        assert_eq!((h.ca.as_str(), h.auth), ("ca", HawkbitAuth::None));
        assert!(h.client_identity.is_some());
        let err = |yaml: &str| MachineConfig::parse(yaml).unwrap_err();
        let base = "url: 'https://h', controller_id: x, ca: ca";
        for (yaml, want) in [
            (
                "hawkbit: {url: 'http://h', controller_id: x, target_token: t, ca: ca}".to_string(),
                "hawkbit.url \"http://h\" is not https://",
            ),
            (
                format!("hawkbit: {{{base}}}"),
                "hawkbit: give target_token, gateway_token or client_cert",
            ),
            (
                format!("hawkbit: {{{base}, target_token: a, gateway_token: b}}"),
                "hawkbit: target_token and gateway_token exclude",
            ),
            (
                format!("hawkbit: {{{base}, target_token: 'a b'}}"),
                "hawkbit.target_token must be",
            ),
            (
                "hawkbit: {url: 'https://h', controller_id: 'a/b', target_token: t, ca: ca}".into(),
                "hawkbit.controller_id \"a/b\"",
            ),
            (
                "hawkbit: {url: 'https://h', controller_id: x, target_token: t}".into(),
                "hawkbit: the device trusts no CA",
            ),
            (
                "hawkbit: {url: 'https://h', controller_id: x, target_token: t, ca: nope}".into(),
                "hawkbit.ca:",
            ),
            (
                format!("hawkbit: {{{base}, client_cert: cert}}"),
                "hawkbit.client_cert needs hawkbit.client_key",
            ),
            (
                format!("hawkbit: {{{base}, client_cert: cert, client_key: other}}"),
                "hawkbit.client_cert/client_key: the key is not",
            ),
            (
                format!("hawkbit: {{{base}, target_token: t, polling: 5}}"),
                "unknown field `polling`",
            ),
        ] {
            let e = err(&yaml);
            assert!(e.contains(want), "{yaml}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn registries_and_the_update_source_name_a_trusted_registry() {
        let c = MachineConfig::parse(
            "update: {source: 'oci://reg.example:5000/cairn/b:stable', check_interval_s: 600}\n\
             registries: [{host: reg.example:5000, ca: ca, username: u, password: p}]\n\
             containers: [{name: web, image: 'oci://reg.example:5000/web:1'}]",
        )
        .unwrap();
        assert_eq!(
            c.update_source.as_deref(),
            Some("oci://reg.example:5000/cairn/b:stable")
        );
        assert_eq!(c.check_interval, Duration::from_secs(600));
        assert_eq!(
            c.registry("REG.example:5000"),
            Some(("ca".into(), Some(("u".into(), "p".into()))))
        );
        assert_eq!(c.registry("other.example"), None);
        assert_eq!(
            c.containers[0].image,
            containers::ImageSource::Registry(containers::RegistryImage {
                reference: "oci://reg.example:5000/web:1".into(),
                ca: "ca".into(),
                credentials: Some(("u".into(), "p".into())),
            })
        );
        // Without a registries entry the CA is update.fetch_ca's.
        let c =
            MachineConfig::parse("update: {fetch_ca: ca, source: 'oci://r.example/b:1'}").unwrap();
        assert_eq!(c.registry("r.example"), Some(("ca".into(), None)));
        for (yaml, want) in [
            (
                "update: {source: 'https://r.example/b'}",
                "update.source \"https://r.example/b\" is not an oci:// reference",
            ),
            (
                "update: {source: 'oci://r.example/b:1'}",
                "update.source: the device trusts no CA for the registry r.example",
            ),
            (
                "containers: [{name: a, image: 'oci://r.example/a:1'}]",
                "containers[0].image: the device trusts no CA for the registry r.example",
            ),
            (
                "update: {check_interval_s: 5}",
                "update.check_interval_s 5 must be 60..=604800",
            ),
            (
                "registries: [{host: 'a b'}]",
                "registries[0].host \"a b\" is not host or host:port",
            ),
            (
                "registries: [{host: a}, {host: A}]",
                "registries[1].host \"A\" is listed twice",
            ),
            (
                "registries: [{host: a, ca: x}]",
                "registries[0].ca: no PEM CERTIFICATE block",
            ),
            (
                "registries: [{host: a, username: u}]",
                "registries[0].username needs password",
            ),
            (
                "registries: [{host: a, password: p}]",
                "registries[0].password needs username",
            ),
        ] {
            let e = MachineConfig::parse(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn certificates_and_keys_go_through_the_cert_check() {
        let c = MachineConfig::parse("api: {server_cert: cert, server_key: key}").unwrap();
        assert_eq!(c.api_identity, Some(("cert".into(), "key".into())));
        let e = MachineConfig::parse("api: {server_cert: cert, server_key: other}").unwrap_err();
        assert_eq!(
            e,
            "api.server_cert/server_key: the key is not the certificate's"
        );
        let e = MachineConfig::parse("api: {server_cert: x}").unwrap_err();
        assert!(e.contains("needs api.server_key"), "{e}");
        let e = MachineConfig::parse("api: {server_key: x}").unwrap_err();
        assert!(e.contains("needs api.server_cert"), "{e}");

        let c = MachineConfig::parse("update: {fetch_ca: ca}").unwrap();
        assert_eq!(c.fetch_ca.as_deref(), Some("ca"));
        let e = MachineConfig::parse("update: {fetch_ca: x}").unwrap_err();
        assert_eq!(e, "update.fetch_ca: no PEM CERTIFICATE block");
    }

    #[test]
    fn a_file_that_is_not_a_mapping_is_named_so() {
        let e = MachineConfig::parse("just a line\n").unwrap_err();
        assert!(e.contains("a machine config is a YAML mapping"), "{e}");
        assert!(!e.contains("Raw"), "{e}");
    }

    #[test]
    fn a_section_that_is_not_a_mapping_is_named_so() {
        // Was "network: invalid type: sequence: a machine config is a YAML mapping of health,
        // update…", which blamed the whole file (hostile/corpus/machine-configs).
        let e = MachineConfig::parse("network: [eth0]\n").unwrap_err();
        assert_eq!(
            e,
            "network: invalid type: sequence, expected a mapping at line 1 column 10"
        );
        let e = MachineConfig::parse("network:\n  interfaces: [eth0]\n").unwrap_err();
        assert!(
            e.starts_with(
                "network.interfaces[0]: invalid type: string \"eth0\", expected a mapping"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_key_with_a_line_break_is_quoted_on_one_line() {
        // Found by the machine_config fuzz target (a tab in a key); a quoted key can hold a
        // line break too.
        let e = MachineConfig::parse("network:\n  \"host\\nname\": x\n").unwrap_err();
        assert!(
            e.starts_with("network: unknown field `host\\nname`, expected one of"),
            "{e}"
        );
        let e = MachineConfig::parse("network:\n  hostn\tme: x\n").unwrap_err();
        assert!(e.starts_with("network: unknown field `hostn\\tme`"), "{e}");
    }

    #[test]
    fn a_refusal_quoting_most_of_the_file_is_cut_short() {
        // Found by the machine_config fuzz target: a file that is one long string came back
        // whole in the refusal.
        let text = format!("\"{}\"\n", "word ".repeat(2000));
        let e = MachineConfig::parse(&text).unwrap_err();
        assert!(e.chars().count() <= MAX_REFUSAL, "{} chars", e.len());
        assert!(e.starts_with("invalid type: string \"word word"), "{e}");
        assert!(e.contains(" … "), "{e}");
        assert!(
            e.ends_with("a machine config is a YAML mapping of health, update, network, api, storage, containers, kubernetes, registries and hawkbit"),
            "{e}"
        );
    }

    #[test]
    fn empty_config_is_the_defaults() {
        assert_eq!(
            MachineConfig::parse("{}").unwrap(),
            MachineConfig::default()
        );
        assert_eq!(
            MachineConfig::default().health_window,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn reads_window_probes_and_tries() {
        let c = MachineConfig::parse(
            r#"{"health":{"window_s":20,"probes":[{"tcp":"127.0.0.1:9","timeout_s":1}]},"update":{"tries":3}}"#,
        )
        .unwrap();
        assert_eq!(c.health_window, Duration::from_secs(20));
        assert_eq!(c.probes.len(), 1);
        assert_eq!(c.tries, 3);
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let yaml = crate::doc_yaml(include_str!("config.rs"));
        let c = MachineConfig::parse(&yaml).unwrap();
        assert_eq!(c.probes.len(), 2);
        assert_eq!(c.tries, 2);
        assert_eq!(c.network.hostname.as_deref(), Some("edge-01"));
        assert_eq!(c.network.interfaces[0].settings.addresses.len(), 1);
        assert!(c.update_source.is_some());
        assert!(c.registry("registry.example:5000").is_some());
    }

    #[test]
    fn storage_pcrs_are_checked() {
        let c = MachineConfig::parse("storage: {encrypt: false, pcrs: [0, 7]}").unwrap();
        assert!(!c.storage.encrypt);
        assert_eq!(c.storage.pcrs, vec![0, 7]);
        let e = MachineConfig::parse("storage: {pcrs: [7, 24]}").unwrap_err();
        assert_eq!(e, "storage.pcrs: PCR 24 does not exist (PCRs are 0..=23)");
        let c = MachineConfig::parse("storage: {pcrs: [23]}").unwrap();
        assert_eq!(c.storage.pcrs, vec![23]);
        let e = MachineConfig::parse("storage: {pcrs: []}").unwrap_err();
        assert!(e.contains("storage.pcrs is empty"), "{e}");
    }

    #[test]
    fn encryption_is_required_only_where_it_is_wanted() {
        let c = MachineConfig::parse("storage: {require_encryption: true}").unwrap();
        assert_eq!(c.storage.require_encryption, Some(true));
        let c =
            MachineConfig::parse("storage: {encrypt: false, require_encryption: false}").unwrap();
        assert_eq!(c.storage.require_encryption, Some(false));
        assert_eq!(MachineConfig::default().storage.require_encryption, None);
        let c = MachineConfig::parse("storage: {require_secure_boot: true}").unwrap();
        assert!(c.storage.require_secure_boot);
        assert!(!MachineConfig::default().storage.require_secure_boot);
        let e = MachineConfig::parse("storage: {encrypt: false, require_secure_boot: true}")
            .unwrap_err();
        assert_eq!(
            e,
            "storage.require_secure_boot: true needs storage.encrypt: true"
        );
        let e = MachineConfig::parse("storage: {encrypt: false, require_encryption: true}")
            .unwrap_err();
        assert!(e.starts_with("storage.require_encryption:"), "{e}");
    }

    #[test]
    fn empty_and_comment_only_files_are_the_defaults() {
        for text in ["", "\n", "# nothing here\n"] {
            assert_eq!(
                MachineConfig::parse(text).unwrap(),
                MachineConfig::default()
            );
        }
    }

    #[test]
    fn bad_configs_name_the_problem() {
        for (text, want) in [
            (r#"{"helth":{}}"#, "unknown field `helth`"),
            (r#"{"health":{"window_s":0}}"#, "window_s 0"),
            (r#"{"update":{"tries":0}}"#, "tries 0"),
            (
                r#"{"update":{"tries":11}}"#,
                "update.tries 11 must be 1..=10",
            ),
            (r#"{"health":{"probes":[{"ftp":"x"}]}}"#, "health.probes[0]"),
            (
                "not json",
                "invalid type: string \"not json\": a machine config is a YAML mapping",
            ),
            ("health: [1]", "health: invalid type: sequence"),
            (
                "network: {interfaces: [{name: eth0, addresses: [10.1.1.1]}]}",
                "network.interfaces[0].addresses[0]: \"10.1.1.1\" is not an address with a prefix",
            ),
        ] {
            let err = MachineConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
