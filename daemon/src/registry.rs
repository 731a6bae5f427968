//! OCI registries as the machine config names them: a [`Client`] for a reference's registry,
//! trusting the CA and using the credentials of its `registries:` entry (the CA falling back
//! to `update.fetch_ca`). The update capability pulls bundles with it, the container
//! capability images.

use cairn_api::registry::{Client, Credentials, Platform, Reference, RegistryError};
use cairn_api::{DeviceError, ErrorKind};

use crate::config::MachineConfig;

/// A client for `reference`'s registry; the error is one line saying what to configure.
pub fn client(config: &MachineConfig, reference: &Reference) -> Result<Client, String> {
    let host = &reference.registry;
    let Some((ca, credentials)) = config.registry(host) else {
        return Err(format!(
            "{reference}: the device trusts no CA for the registry {host}: add it to registries: \
             in the machine config, or set update.fetch_ca"
        ));
    };
    let roots = cairn_api::fetch::roots_from_pem(&ca)
        .map_err(|e| format!("the CA of the registry {host}: {e}"))?;
    let credentials = credentials.map(|(username, password)| Credentials { username, password });
    Client::new(roots, credentials).map_err(|e| e.to_string())
}

/// The platform of the images this device runs.
pub fn platform() -> Platform {
    Platform {
        architecture: crate::oci::machine_arch().to_string(),
        os: "linux".into(),
        variant: None,
    }
}

/// The API's code for a registry failure: what the registry sent is the request's fault
/// (another artifactType, a wrong digest), the network and the registry's state are not.
pub fn device_error(e: RegistryError) -> DeviceError {
    DeviceError::new(device_error_kind(&e), e.to_string())
}

/// Pulls a container's registry image for this device's platform into an OCI layout archive
/// `dir/<name>.tar` (written beside, then renamed, so a cut-off pull leaves no archive), and
/// returns its path. When the registry cannot be reached and an archive pulled earlier from
/// the same reference is there, that one is used (said in the log). `Err((why, retry))`:
/// `retry` when the failure may pass (the network, the registry's state).
pub fn pull_archive(
    image: &cairn_facts::containers::RegistryImage,
    name: &str,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf, (String, bool)> {
    use std::io::Write as _;
    let reference = Reference::parse(&image.reference).map_err(|e| (e.to_string(), false))?;
    let roots = cairn_api::fetch::roots_from_pem(&image.ca).map_err(|e| {
        (
            format!("the CA of the registry {}: {e}", image.host()),
            false,
        )
    })?;
    let credentials = image
        .credentials
        .clone()
        .map(|(username, password)| Credentials { username, password });
    let client = Client::new(roots, credentials).map_err(|e| (e.to_string(), false))?;
    let path = dir.join(format!("{name}.tar"));
    let recorded = dir.join(format!("{name}.ref"));
    let partial = dir.join(format!("{name}.tar.part"));
    let io = |what: &str, e: std::io::Error| (format!("{what}: {e}"), true);
    std::fs::create_dir_all(dir).map_err(|e| io(&dir.display().to_string(), e))?;
    let pulled = (|| {
        let file = std::fs::File::create(&partial).map_err(|e| RegistryError::Io {
            what: partial.display().to_string(),
            source: e,
        })?;
        let mut out = std::io::BufWriter::new(file);
        let digest = client.pull_image_archive(&reference, &platform(), &mut out)?;
        out.flush()
            .and_then(|()| out.get_ref().sync_all())
            .map_err(|e| RegistryError::Io {
                what: partial.display().to_string(),
                source: e,
            })?;
        Ok::<_, RegistryError>(digest)
    })();
    match pulled {
        Ok(digest) => {
            std::fs::rename(&partial, &path).map_err(|e| io(&path.display().to_string(), e))?;
            let _ = std::fs::write(&recorded, &image.reference);
            crate::log::say!("container {name}: pulled oci://{reference} (manifest {digest})");
            Ok(path)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            let retry = matches!(device_error_kind(&e), ErrorKind::Unavailable);
            let same = std::fs::read_to_string(&recorded).is_ok_and(|r| r == image.reference);
            if retry && same && path.exists() {
                crate::log::say!(
                    "container {name}: {e}; running the image pulled earlier from the same reference"
                );
                return Ok(path);
            }
            Err((e.to_string(), retry))
        }
    }
}

fn device_error_kind(e: &RegistryError) -> ErrorKind {
    match e {
        RegistryError::Http { .. } | RegistryError::Io { .. } => ErrorKind::Unavailable,
        RegistryError::Status { status, .. } if status.code == 404 => ErrorKind::NotFound,
        RegistryError::Status { .. } => ErrorKind::Unavailable,
        RegistryError::Denied { .. } | RegistryError::NeedsCredentials { .. } => {
            ErrorKind::FailedPrecondition
        }
        _ => ErrorKind::InvalidArgument,
    }
}
