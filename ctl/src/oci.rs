//! `cairnctl bundle push` and `bundle pull`: a bundle as an OCI artifact in a registry
//! ([`cairn_api::registry`], the same client the device pulls with).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cairn_api::registry::{self, Client, Credentials, Reference};
use clap::Args;
use rustls::RootCertStore;

/// The password of `--username` comes from this variable, never from the command line.
pub const PASSWORD_ENV: &str = "CAIRN_REGISTRY_PASSWORD";
/// The system's CA bundle (Debian's), trusted when no `--ca` is given.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// CA certificates (PEM) of the registry's HTTPS server (default: the system's).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A user name for the registry (Basic or its token server); the password is read from
    /// CAIRN_REGISTRY_PASSWORD.
    #[arg(long)]
    username: Option<String>,
}

impl RegistryArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let roots = match &self.ca {
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                cairn_api::fetch::roots_from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => system_roots()?,
        };
        let credentials = match &self.username {
            None => None,
            Some(username) => Some(Credentials {
                username: username.clone(),
                password: std::env::var(PASSWORD_ENV).map_err(|_| {
                    anyhow::anyhow!("--username {username} needs the password in {PASSWORD_ENV}")
                })?,
            }),
        };
        Ok(Client::new(roots, credentials)?)
    }
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(SYSTEM_CAS)
        .with_context(|| format!("reading {SYSTEM_CAS} (or give the registry's CA with --ca)"))?;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
    let (added, _) = roots.add_parsable_certificates(certs);
    anyhow::ensure!(added > 0, "{SYSTEM_CAS} holds no usable CA certificate");
    Ok(roots)
}

/// Uploads `bundle` to `reference` as an artifact; prints the manifest's digest.
pub fn push(bundle: &Path, reference: &str, args: &RegistryArgs) -> anyhow::Result<()> {
    let r = Reference::parse(reference)?;
    let mut file =
        std::fs::File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
    let (manifest, _) = cairn_bundle::inspect(std::io::BufReader::new(&file))
        .with_context(|| format!("{} is not a bundle", bundle.display()))?;
    let mut annotations = BTreeMap::new();
    annotations.insert(
        registry::ANNOTATION_BOARD.to_string(),
        manifest.compatible.join(","),
    );
    annotations.insert(registry::ANNOTATION_ARCH.to_string(), manifest.arch.clone());
    annotations.insert(
        registry::ANNOTATION_VERSION.to_string(),
        manifest.version.to_string(),
    );
    let title = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle.cairn".into());
    let digest = args
        .client()?
        .push_bundle(&r, &mut file, &title, annotations)?;
    println!(
        "pushed {} ({}) as oci://{r}",
        bundle.display(),
        manifest.version
    );
    println!("digest {digest}");
    Ok(())
}

/// Downloads the bundle `reference` names into `out` (which must not exist), byte-identical
/// to what was pushed: the layer's digest is checked before the file is put in place.
pub fn pull(reference: &str, out: &Path, args: &RegistryArgs) -> anyhow::Result<()> {
    let r = Reference::parse(reference)?;
    anyhow::ensure!(
        !out.exists(),
        "{} exists already; remove it or name another file",
        out.display()
    );
    let client = args.client()?;
    let (manifest, layer) = client.bundle(&r)?;
    let mut blob = client.blob(&r, &layer)?;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))
        .context("creating a file beside the output")?;
    let copied = std::io::copy(&mut blob, tmp.as_file_mut())
        .with_context(|| format!("downloading oci://{r}"))?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(out)
        .map_err(|e| anyhow::anyhow!("writing {}: {}", out.display(), e.error))?;
    println!(
        "pulled oci://{r} ({copied} bytes, version {}) into {}",
        manifest
            .doc
            .annotations
            .get(registry::ANNOTATION_VERSION)
            .map_or("unknown", String::as_str),
        out.display()
    );
    println!("digest {}", manifest.digest);
    Ok(())
}
