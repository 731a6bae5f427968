//! The `machine_config` target: the input is a machine config as cairnd reads it from STATE or
//! takes it over the API (`ApplyConfig`), parsed by [`MachineConfig::parse`]. The certificate
//! checks are the API crate's (fuzzed by `api/fuzz`); here they take any text but one marker,
//! so the fuzzer reaches everything after them. Checked: a refusal is one line of printable
//! text short enough to read, and an accepted config is within every documented bound and
//! parses the same way twice.

use cairn_facts::config::{CertCheck, MachineConfig, MAX_LEN, MAX_TRIES};

/// Takes every certificate and key but the text `bad`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyCert;

impl CertCheck for AnyCert {
    fn trust_anchors(pem: &str) -> Result<(), String> {
        (pem.trim() != "bad")
            .then_some(())
            .ok_or("no PEM CERTIFICATE block".into())
    }
    fn server_identity(cert: &str, key: &str) -> Result<(), String> {
        (cert.trim() != "bad" && key.trim() != "bad")
            .then_some(())
            .ok_or("the key is not the certificate's".into())
    }
}

/// Longest refusal accepted: one line an operator can read in a terminal or an API error.
pub const MAX_REFUSAL: usize = 1024;

/// Parses `bytes` as a machine config; panics (a finding) on a broken promise.
pub fn check_config(bytes: &[u8]) {
    // The device reads the file as UTF-8 text, and the API's field is a string.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match MachineConfig::<AnyCert>::parse(text) {
        Err(e) => {
            assert!(!e.is_empty(), "an empty refusal");
            assert!(!e.chars().any(char::is_control), "not one line: {e:?}");
            assert!(e.len() <= MAX_REFUSAL, "a {}-byte refusal", e.len());
        }
        Ok(config) => {
            assert!(text.len() <= MAX_LEN);
            assert!((1..=MAX_TRIES).contains(&config.tries));
            assert!(config.probes.len() <= 32 && config.registries.len() <= 32);
            assert!(!config.health_window.is_zero());
            assert_eq!(MachineConfig::<AnyCert>::parse(text).as_ref(), Ok(&config));
        }
    }
}

/// The documented examples (`examples/machine-config/`), as (file name, bytes).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let examples: [(&str, &str); 6] = [
        (
            "api-certificate.yaml",
            include_str!("../../../examples/machine-config/api-certificate.yaml"),
        ),
        (
            "dhcp.yaml",
            include_str!("../../../examples/machine-config/dhcp.yaml"),
        ),
        (
            "probes.yaml",
            include_str!("../../../examples/machine-config/probes.yaml"),
        ),
        (
            "static.yaml",
            include_str!("../../../examples/machine-config/static.yaml"),
        ),
        (
            "storage-pcrs.yaml",
            include_str!("../../../examples/machine-config/storage-pcrs.yaml"),
        ),
        (
            "vlan.yaml",
            include_str!("../../../examples/machine-config/vlan.yaml"),
        ),
    ];
    examples
        .iter()
        .map(|(name, text)| {
            if let Err(e) = MachineConfig::<AnyCert>::parse(text) {
                panic!("seed {name} does not parse: {e}");
            }
            ((*name).to_string(), text.as_bytes().to_vec())
        })
        .collect()
}
