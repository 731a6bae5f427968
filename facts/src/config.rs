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
//! (`update.fetch_ca`, `api.server_cert`/`server_key`) is checked too, by the [`CertCheck`]
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
}

/// A checked machine config; `C` checked the certificates and keys in it.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig<C> {
    pub health_window: Duration,
    pub probes: Vec<Probe>,
    pub tries: u32,
    /// PEM CA certificates for bundle downloads (checked).
    pub fetch_ca: Option<String>,
    pub network: Network,
    /// A server certificate chain and key for the API (PEM), checked to match.
    pub api_identity: Option<(String, String)>,
    /// Whether STATE and DATA are encrypted on first boot, and the PCRs the key is sealed to.
    pub storage: Storage,
    /// A single-node k3s server and its health ([`crate::kubernetes`]); only on images with k3s.
    pub kubernetes: Option<Kubernetes>,
    /// Host containers cairnd runs through containerd ([`crate::containers`]).
    pub containers: Vec<Container>,
    checked_by: PhantomData<C>,
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
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            encrypt: true,
            pcrs: vec![7],
            require_encryption: None,
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
            network: Network::default(),
            api_identity: None,
            storage: Storage::default(),
            kubernetes: None,
            containers: Vec::new(),
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
    /// (`cairnctl upgrade https://…`). Without it the device downloads nothing.
    fetch_ca: Option<String>,
}

/// The JSON Schema of the machine config.
#[cfg(feature = "schema")]
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Raw)).expect("a schema is JSON")
}

impl<C: CertCheck> MachineConfig<C> {
    /// Parses and checks a config; the error is one line naming the problem.
    pub fn parse(text: &str) -> Result<Self, String> {
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
                    Some((what, _)) => format!(
                        "{what}: a machine config is a YAML mapping of health, update, network, api, storage, containers and kubernetes"
                    ),
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
        config.kubernetes = raw.kubernetes.map(RawKubernetes::check).transpose()?;
        config.containers = containers::check(raw.containers)?;
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
