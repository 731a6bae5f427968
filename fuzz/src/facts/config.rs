//! The `machine_config` target: the input is a machine config as cairnd reads it from STATE or
//! takes it over the API (`ApplyConfig`), parsed by [`MachineConfig::parse`]. The certificate
//! checks are the API crate's (fuzzed by `fuzz/src/api.rs`); here they take any text but one marker,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzzer's first finding: a tab in a key came back in the refusal as it was.
    #[test]
    fn a_key_with_a_tab() {
        check_config(
            b"# A trunk port: untagged traffic by DHCP on eth0, VLAN 20 (eth0.20) with a fixed \
              address for\n# the plant network, VLAN 30 (eth0.30) by DHCP.\nnetwork:\n  \
              hostn\tme: edge-03\n  interfaces:\n    vlans:\n        - id: 20\n          \
              addresses: [10.20.0.2/24]\n          routes:\n            - {to: 10.200.0.0/16, \
              via: 10.20.0.1}\n          mtu: 1500\n        - {id: 30, dhcp4: true}\n",
        );
    }

    /// The fuzzer's second finding: a file that is mostly one string came back whole, over a
    /// thousand bytes, in the refusal.
    #[test]
    fn a_refusal_quoting_the_file() {
        let text = [
            "# H+CrC7g== -----probes that gate veery A\n\n\n\n\n\na new slot is",
            " committed only\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
            "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nry Aup1988lkqiU2blY",
            "FAiA2udRTBUxC7EwF1H7A5bv6GYz8Q/Y=1A0dzlOO\n    +CrC4\n\n\n\n\n\n\n\n\n",
            "\n\n\n\n\n'\n\ne \n\n\n\n\n\n\n\n\n\n\n\n\n\n&\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\na ",
            "new slot is commupdate:2 He lth probes tha8Q/Y=1A0dzlOO\n    ",
            "+CrC4\n\n\n\n\n\n\n\n\n\n\n\n\n\n'\n\ne \n\n\n\n\n\n\n\n\n\n\n\n\n\n&\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
            "\n\n\n\n\n\n\n\n\n\n\n\na new slot is committed only\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
            "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
            "\n\n\n\n\n\nry Aup1988lkqiU2blYFAiA2udRTBUxC7EwF1H7A5bv6GYz8Q/Y=1A",
            "0dzlOO\n    +CrC4\n\n\n\n\n\n\n\n\n\n\n\n\n\n'\n\ne \n\n\n\n\n\n\n\n\n\n\n\n\n\n&\n\n\n\n\n\n\n\n\n\n",
            "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\na new slot is committed onl\n\n\n\n\n\n\n\n\n\n",
            "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nI\n\n",
            "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n#\n\n\n\n\n\n]\n\n\n when all",
            "2}\n",
        ]
        .concat();
        check_config(text.as_bytes());
    }

    /// The fuzzer's third finding: a probe's unknown key holding line breaks came back as it
    /// was (the probe reader quotes it; every refusal now goes through one escaping step).
    #[test]
    fn a_probe_key_with_line_breaks() {
        let text = [
            "# Heais committed only .\nhealth:\n  window_s: 600\n  probes:\n ",
            "   - {tcp: \"127.0.0.1:6443\", timeout_s:Yz8Q/Y=1A0dzlOO +CrC4",
            "\n\n\n\n\n\n\n\n\n\n\n\n!!!!!!!!! 200, timeout_s: 2}\n",
        ]
        .concat();
        check_config(text.as_bytes());
    }
}
