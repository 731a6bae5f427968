//! A new secrets folder, as `cairnctl gen secrets` writes it: both CAs, one client certificate per
//! role, what the image build embeds, and a cairnctl config.
//!
//! ```text
//! <out>/                     mode 0700
//!   cairnctl.yaml            endpoint placeholder, device-ca.crt, admin.crt, admin.key
//!   client-ca.crt            the client CA (devices trust it for clients)
//!   client-ca.key   0600     keep offline: it issues client certificates
//!   device-ca.crt            the device CA (cairnctl trusts it for servers)
//!   admin.crt     admin.key     0600  O=cairn:admin
//!   operator.crt  operator.key  0600  O=cairn:operator
//!   reader.crt    reader.key    0600  O=cairn:reader
//!   device/                  exactly what the image build embeds
//!     client-ca.crt
//!     device-ca.crt
//!     device-ca.key 0600     lets each device issue its own server certificate
//! ```
//!
//! The folder appears whole or not at all: everything is written into a hidden sibling that is
//! then renamed into place.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::ca::{Ca, CaKind, Validity};
use crate::client_config::ClientConfig;
use crate::error::{Error, Result};
use crate::fingerprint::Fingerprint;
use crate::issue::{issue_client, Issued};
use crate::role::Role;

/// The client config's file name.
pub const CLIENT_CONFIG: &str = "cairnctl.yaml";
/// The client CA certificate's file name (at the top and in `device/`).
pub const CLIENT_CA_CERT: &str = "client-ca.crt";
/// The client CA key's file name.
pub const CLIENT_CA_KEY: &str = "client-ca.key";
/// The device CA certificate's file name (at the top and in `device/`).
pub const DEVICE_CA_CERT: &str = "device-ca.crt";
/// The device CA key's file name (in `device/` only).
pub const DEVICE_CA_KEY: &str = "device-ca.key";
/// The folder the image build embeds.
pub const DEVICE_DIR: &str = "device";
/// The endpoint written into the config until the operator edits it: a QEMU forward on loopback.
pub const PLACEHOLDER_ENDPOINT: &str = "127.0.0.1:50000";

/// What goes into a new secrets folder.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of the CAs' common names (`<name> client CA …`), to tell fleets apart.
    pub name: String,
    /// Validity of the client certificates, in days.
    pub client_days: u32,
}

/// A freshly generated set of secrets, in memory.
#[derive(Debug)]
pub struct Secrets {
    /// Issues client certificates.
    pub client_ca: Ca,
    /// Issues device server certificates.
    pub device_ca: Ca,
    /// One client certificate per role, admin first.
    pub clients: Vec<(Role, Issued)>,
}

impl Secrets {
    /// Both CAs and a client certificate per role (common name = the role's short name).
    pub fn generate(options: &Options) -> Result<Secrets> {
        let client_ca = Ca::generate(CaKind::Client, &format!("{} client CA", options.name))?;
        let device_ca = Ca::generate(CaKind::Device, &format!("{} device CA", options.name))?;
        let validity = Validity::days_from_now(options.client_days);
        // Admin first: it is the certificate the folder's cairnctl.yaml uses, so `gen secrets`
        // lists it at the top.
        let clients = Role::ALL
            .into_iter()
            .rev()
            .map(|role| Ok((role, issue_client(&client_ca, role.name(), role, validity)?)))
            .collect::<Result<_>>()?;
        Ok(Secrets {
            client_ca,
            device_ca,
            clients,
        })
    }

    /// Writes the folder described in the module docs at `out`, which must not exist or be an
    /// empty folder.
    pub fn write_new(&self, out: &Path) -> Result<()> {
        refuse_existing(out)?;
        let staging = staging_path(out);
        // Named as `out`: the staging folder is an implementation detail.
        make_dir(&staging).map_err(|e| match e {
            Error::Io { action, source, .. } => Error::Io {
                action,
                path: out.to_path_buf(),
                source,
            },
            other => other,
        })?;
        let result = self
            .write_into(&staging)
            .and_then(|()| replace_empty(&staging, out));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn write_into(&self, dir: &Path) -> Result<()> {
        let device = dir.join(DEVICE_DIR);
        make_dir(&device)?;
        let (public, secret) = (0o644, 0o600);
        write(&dir.join(CLIENT_CA_CERT), self.client_ca.cert_pem(), public)?;
        write(&dir.join(CLIENT_CA_KEY), &self.client_ca.key_pem(), secret)?;
        write(&dir.join(DEVICE_CA_CERT), self.device_ca.cert_pem(), public)?;
        write(
            &device.join(CLIENT_CA_CERT),
            self.client_ca.cert_pem(),
            public,
        )?;
        write(
            &device.join(DEVICE_CA_CERT),
            self.device_ca.cert_pem(),
            public,
        )?;
        write(
            &device.join(DEVICE_CA_KEY),
            &self.device_ca.key_pem(),
            secret,
        )?;
        for (role, issued) in &self.clients {
            write(
                &dir.join(format!("{}.crt", role.name())),
                &issued.cert_pem,
                public,
            )?;
            write(
                &dir.join(format!("{}.key", role.name())),
                &issued.key_pem,
                secret,
            )?;
        }
        let config = ClientConfig {
            endpoint: PLACEHOLDER_ENDPOINT.into(),
            ca: DEVICE_CA_CERT.into(),
            cert: "admin.crt".into(),
            key: "admin.key".into(),
        };
        write(&dir.join(CLIENT_CONFIG), &config.to_yaml(), public)
    }
}

fn refuse_existing(out: &Path) -> Result<()> {
    let empty = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if empty {
        return Ok(());
    }
    Err(Error::OutNotEmpty {
        path: out.to_path_buf(),
    })
}

/// `<parent>/.<name>.tmp-<pid>`: same file system as `out`, so the final rename is atomic.
fn staging_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or("secrets".into(), |n| n.to_string_lossy());
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Moves `staging` to `out`, removing `out` first if it is an empty folder.
fn replace_empty(staging: &Path, out: &Path) -> Result<()> {
    if out.is_dir() {
        // Fails (and so refuses) if something appeared in it meanwhile.
        std::fs::remove_dir(out).map_err(|_| Error::OutNotEmpty {
            path: out.to_path_buf(),
        })?;
    }
    std::fs::rename(staging, out).map_err(|source| Error::Io {
        action: "create",
        path: out.to_path_buf(),
        source,
    })
}

fn make_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| Error::Io {
            action: "create",
            path: path.to_path_buf(),
            source,
        })
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let io = |source| Error::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)
}

/// What a device needs from a secrets folder, read back and checked: the client CA it trusts,
/// and the device CA (with its key) it issues its server certificate from.
#[derive(Debug, Clone)]
pub struct DeviceSecrets {
    pub client_ca: String,
    pub device_ca: String,
    pub device_ca_key: String,
}

impl DeviceSecrets {
    /// Reads `dir/device/` (a folder `cairnctl gen secrets` wrote) or `dir` itself when it is
    /// such a `device/` folder. The CAs must be Cairn CAs of the right kind, the key the device
    /// CA's.
    pub fn load(dir: &Path) -> Result<DeviceSecrets> {
        let device = if dir.join(DEVICE_DIR).is_dir() {
            dir.join(DEVICE_DIR)
        } else {
            dir.to_path_buf()
        };
        let read = |name: &str| {
            let path = device.join(name);
            std::fs::read_to_string(&path).map_err(|source| Error::Io {
                action: "read",
                path,
                source,
            })
        };
        let secrets = DeviceSecrets {
            client_ca: read(CLIENT_CA_CERT)?,
            device_ca: read(DEVICE_CA_CERT)?,
            device_ca_key: read(DEVICE_CA_KEY)?,
        };
        let ca = Ca::from_pem(&secrets.device_ca, &secrets.device_ca_key)?;
        if ca.kind() != CaKind::Device {
            return Err(Error::WrongCa {
                ca: ca.fingerprint(),
                is: ca.kind(),
                needed: CaKind::Device,
            });
        }
        let client_der = crate::pem_to_der(&secrets.client_ca)?;
        let client = crate::inspect::parse_der(&client_der, "the client CA certificate")?;
        let kind = crate::ca::kind_of(&client)?;
        if kind != CaKind::Client {
            return Err(Error::WrongCa {
                ca: Fingerprint::of_spki(client.spki),
                is: kind,
                needed: CaKind::Client,
            });
        }
        Ok(secrets)
    }
}
