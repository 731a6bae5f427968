//! The machine config as the device reads it: [`cairn_facts::config`], with the certificates and
//! keys in it checked by the management API's TLS stack ([`cairn_api::TlsCheck`]), the same
//! check `cairnctl config validate` makes.

pub use cairn_facts::config::*;

/// The machine config, its certificates checked as the API server and the bundle download will
/// use them.
pub type MachineConfig = cairn_facts::config::MachineConfig<cairn_api::TlsCheck>;

/// Parses a config for this system: [`MachineConfig::parse`], and a `kubernetes:` section only
/// where the image carries k3s.
pub fn parse_here(text: &str) -> Result<MachineConfig, String> {
    let config = MachineConfig::parse(text)?;
    let has_k3s = std::path::Path::new(cairn_facts::kubernetes::K3S_BIN).exists();
    cairn_facts::kubernetes::require_k3s(config.kubernetes.as_ref(), has_k3s, "this system")?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_certificate_needs_its_own_key() {
        let ca = cairn_pki::Ca::generate(cairn_pki::CaKind::Device, "test").unwrap();
        let v = ca.validity();
        let a = cairn_pki::issue_server(&ca, "edge", &[], v).unwrap();
        let b = cairn_pki::issue_server(&ca, "edge", &[], v).unwrap();
        let yaml = |cert: &str, key: &str| {
            let indent = |t: &str| t.lines().map(|l| format!("    {l}\n")).collect::<String>();
            format!(
                "api:\n  server_cert: |\n{}  server_key: |\n{}",
                indent(cert),
                indent(key)
            )
        };
        let c = MachineConfig::parse(&yaml(&a.cert_pem, &a.key_pem)).unwrap();
        assert_eq!(
            c.api_identity,
            Some((a.cert_pem.clone(), a.key_pem.clone()))
        );
        let e = MachineConfig::parse(&yaml(&a.cert_pem, &b.key_pem)).unwrap_err();
        assert!(e.starts_with("api.server_cert/server_key:"), "{e}");
    }

    #[test]
    fn a_fetch_ca_must_be_certificates() {
        let ca = cairn_pki::Ca::generate(cairn_pki::CaKind::Device, "test").unwrap();
        let indented: String = ca
            .cert_pem()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect();
        let c = MachineConfig::parse(&format!("update:\n  fetch_ca: |\n{indented}")).unwrap();
        assert!(c.fetch_ca.is_some());
        let e = MachineConfig::parse("update: {fetch_ca: not pem}").unwrap_err();
        assert!(
            e.starts_with("update.fetch_ca: no PEM CERTIFICATE block"),
            "{e}"
        );
    }

    /// This host has no k3s at /usr/bin/k3s, like a device whose image was built without it.
    #[test]
    fn a_kubernetes_section_is_refused_without_k3s() {
        if std::path::Path::new(cairn_facts::kubernetes::K3S_BIN).exists() {
            println!(
                "skipped: this host has {}",
                cairn_facts::kubernetes::K3S_BIN
            );
            return;
        }
        let e = parse_here("kubernetes: {}").unwrap_err();
        assert!(
            e.starts_with("kubernetes: this system has no k3s (/usr/bin/k3s): build the image"),
            "{e}"
        );
        assert!(parse_here("health: {window_s: 60}").is_ok());
    }

    /// `storage.pcrs` takes exactly what the TPM code seals to.
    #[test]
    fn pcr_limits_agree_with_the_tpm() {
        assert_eq!(PCR_COUNT, cairn_tpm::PCR_COUNT);
        for pcr in 0..=u8::MAX {
            let yaml = format!("storage: {{pcrs: [{pcr}]}}");
            assert_eq!(
                MachineConfig::parse(&yaml).is_ok(),
                cairn_tpm::PcrSelection::sha256(&[pcr]).is_ok(),
                "PCR {pcr}"
            );
        }
    }
}
