//! Which cairnctl config a remote command uses, and what it names: the endpoint, the device CA
//! to trust, and the client certificate and key to present.
//!
//! The lookup order is `--config`, then `$CAIRNCTL_CONFIG`, then `./cairnctl.yaml`, then
//! `$XDG_CONFIG_HOME/cairn/cairnctl.yaml` (`~/.config/cairn/cairnctl.yaml`). A path given
//! explicitly (flag or variable) is used even when it does not exist, so a typo is reported
//! rather than skipped in favour of another fleet's config.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cairn_pki::client_config::ClientConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The config's file name, in the current folder and in the user's config folder.
const FILE_NAME: &str = cairn_pki::secrets::CLIENT_CONFIG;

/// Where the config is, or `None` when nothing says and no default file exists.
fn choose(
    flag: Option<&Path>,
    env: Option<OsString>,
    user_config_dir: Option<PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_path_buf());
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Some(path.into());
    }
    let local = PathBuf::from(FILE_NAME);
    if exists(&local) {
        return Some(local);
    }
    user_config_dir
        .map(|dir| dir.join("cairn").join(FILE_NAME))
        .filter(|p| exists(p))
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
fn user_config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

/// The config file to use, following the lookup order.
pub fn find(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    choose(
        flag,
        std::env::var_os("CAIRNCTL_CONFIG"),
        user_config_dir(),
        Path::is_file,
    )
    .ok_or_else(|| {
        anyhow::anyhow!(
            "no cairnctl config: make one with `cairnctl gen secrets --out DIR`, then pass \
             `--config DIR/cairnctl.yaml` (or set CAIRNCTL_CONFIG, or copy it to \
             ~/.config/cairn/cairnctl.yaml)"
        )
    })
}

/// Everything a connection needs, read from the config and the files it names.
pub struct Target {
    /// The config file, for messages that say what to edit.
    pub config: PathBuf,
    /// `host:port`, from `--endpoint` or the config.
    pub endpoint: String,
    /// The endpoint's host: the name the device's certificate must carry.
    pub host: String,
    pub ca_path: PathBuf,
    pub ca: CertificateDer<'static>,
    pub cert_path: PathBuf,
    /// The client certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Target {
    /// Reads the config at `path` (with `endpoint` in place of its own, if given) and the
    /// certificates and key it names.
    pub fn load(path: &Path, endpoint: Option<&str>) -> anyhow::Result<Target> {
        let config = ClientConfig::load(path)?;
        let endpoint = endpoint.map_or(config.endpoint, str::to_string);
        let host = host_of(&endpoint).with_context(|| {
            format!(
                "endpoint {endpoint:?} is not host:port (`endpoint:` in {}, or --endpoint)",
                path.display()
            )
        })?;
        let named = |field: &str, file: &Path| {
            format!("{} (`{field}:` in {})", file.display(), path.display())
        };
        let ca = CertificateDer::pem_file_iter(&config.ca)
            .and_then(|mut certs| certs.next().transpose())
            .with_context(|| format!("cannot read the device CA {}", named("ca", &config.ca)))?
            .with_context(|| format!("{} holds no certificate", named("ca", &config.ca)))?;
        let chain = CertificateDer::pem_file_iter(&config.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| {
                format!(
                    "cannot read the client certificate {}",
                    named("cert", &config.cert)
                )
            })?;
        anyhow::ensure!(
            !chain.is_empty(),
            "{} holds no certificate",
            named("cert", &config.cert)
        );
        let key = PrivateKeyDer::from_pem_file(&config.key)
            .with_context(|| format!("cannot read the client key {}", named("key", &config.key)))?;
        Ok(Target {
            config: path.to_path_buf(),
            endpoint,
            host,
            ca_path: config.ca,
            ca,
            cert_path: config.cert,
            chain,
            key,
        })
    }
}

/// The host of `host:port`, without the brackets of an IPv6 address.
fn host_of(endpoint: &str) -> Option<String> {
    let (host, port) = endpoint.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|&p| p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        // An IPv6 address needs its brackets, or its last group reads as the port.
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order() {
        let none = |_: &Path| false;
        let all = |_: &Path| true;
        let user = || Some(PathBuf::from("/home/u/.config"));
        let flag = Path::new("/etc/fleet.yaml");
        assert_eq!(
            choose(Some(flag), Some("/env.yaml".into()), user(), all),
            Some(flag.to_path_buf())
        );
        // Explicit paths are taken even when missing: the read then names them.
        assert_eq!(
            choose(None, Some("/env.yaml".into()), user(), none),
            Some(PathBuf::from("/env.yaml"))
        );
        assert_eq!(
            choose(None, Some("".into()), user(), all),
            Some(PathBuf::from("cairnctl.yaml"))
        );
        let only_user = |p: &Path| p.is_absolute();
        assert_eq!(
            choose(None, None, user(), only_user),
            Some(PathBuf::from("/home/u/.config/cairn/cairnctl.yaml"))
        );
        assert_eq!(choose(None, None, user(), none), None);
        assert_eq!(choose(None, None, None, only_user), None);
    }

    #[test]
    fn hosts_of_endpoints() {
        assert_eq!(host_of("127.0.0.1:50000").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("box.lan:1").as_deref(), Some("box.lan"));
        assert_eq!(host_of("[::1]:50000").as_deref(), Some("::1"));
        for bad in ["box.lan", ":50000", "box:0", "box:x", "::1:50000", "[::1:5"] {
            assert_eq!(host_of(bad), None, "{bad}");
        }
    }
}
