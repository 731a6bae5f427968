//! The cairnctl client config (`cairnctl.yaml`): which device to talk to, which CA its server
//! certificate must chain to, and which client certificate and key to present.
//!
//! ```yaml
//! endpoint: 127.0.0.1:50000
//! ca: device-ca.crt
//! cert: admin.crt
//! key: admin.key
//! ```
//!
//! Relative paths are relative to the config file's folder, so a secrets folder can be moved or
//! copied as a whole.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest config file read; a real one is a few hundred bytes.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// A cairnctl client config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `host:port` of the device's API.
    pub endpoint: String,
    /// The CA that device server certificates chain to (the device CA), PEM.
    pub ca: PathBuf,
    /// The client certificate, PEM.
    pub cert: PathBuf,
    /// The client certificate's secret key, PKCS#8 PEM.
    pub key: PathBuf,
}

impl ClientConfig {
    /// Reads a config file and makes its paths absolute against the file's folder.
    pub fn load(path: &Path) -> Result<ClientConfig> {
        let io = |source| Error::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: "it is larger than 64 KiB".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let base = path.parent().unwrap_or(Path::new("."));
        ClientConfig::parse(&text, base).map_err(|reason| Error::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses config text; relative paths are joined to `base`.
    pub fn parse(text: &str, base: &Path) -> std::result::Result<ClientConfig, String> {
        let mut config: ClientConfig = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        check_endpoint(&config.endpoint)?;
        for p in [&mut config.ca, &mut config.cert, &mut config.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// The config as YAML, with a comment saying what wrote it and how paths resolve.
    pub fn to_yaml(&self) -> String {
        let body = serde_norway::to_string(self).expect("a struct of strings serialises");
        format!(
            "# cairnctl client config (`cairnctl --config <this file>`), written by `cairnctl gen \
             secrets`.\n# Relative paths are relative to this file's folder.\n{body}"
        )
    }
}

fn check_endpoint(endpoint: &str) -> std::result::Result<(), String> {
    let port = endpoint
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .map(|(_, port)| port);
    match port.and_then(|p| p.parse::<u16>().ok()) {
        Some(p) if p != 0 => Ok(()),
        _ => Err(format!("endpoint {endpoint:?} is not host:port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClientConfig {
        ClientConfig {
            endpoint: "127.0.0.1:50000".into(),
            ca: "device-ca.crt".into(),
            cert: "admin.crt".into(),
            key: "/abs/admin.key".into(),
        }
    }

    #[test]
    fn round_trips_with_paths_resolved_against_the_folder() {
        let text = sample().to_yaml();
        assert!(text.starts_with("# cairnctl client config"), "{text}");
        let back = ClientConfig::parse(&text, Path::new("/secrets")).unwrap();
        assert_eq!(back.endpoint, "127.0.0.1:50000");
        assert_eq!(back.ca, Path::new("/secrets/device-ca.crt"));
        assert_eq!(back.cert, Path::new("/secrets/admin.crt"));
        assert_eq!(back.key, Path::new("/abs/admin.key"));
    }

    #[test]
    fn refuses_bad_endpoints_and_unknown_fields() {
        let with = |endpoint: &str| format!("endpoint: \"{endpoint}\"\nca: a\ncert: b\nkey: c\n");
        for ok in ["box.lan:50000", "[::1]:50000", "10.0.2.15:1"] {
            assert!(
                ClientConfig::parse(&with(ok), Path::new(".")).is_ok(),
                "{ok}"
            );
        }
        for bad in ["box.lan", ":50000", "box:0", "box:99999"] {
            let err = ClientConfig::parse(&with(bad), Path::new(".")).unwrap_err();
            assert!(err.contains("is not host:port"), "{bad}: {err}");
        }
        let err =
            ClientConfig::parse(&format!("{}port: 1\n", with("a:1")), Path::new(".")).unwrap_err();
        assert!(err.contains("unknown field `port`"), "{err}");
    }
}
