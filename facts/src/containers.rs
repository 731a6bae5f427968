//! The machine config's `containers:` section: host containers cairnd runs through containerd,
//! without Kubernetes.
//!
//! ```yaml
//! containers:
//!   - name: web
//!     image: /var/lib/cairn-images/web.tar
//!     args: [httpd, -f, -p, "8080"]
//!     env: {GREETING: hello}
//!     restart: always
//!     probe: {http: "http://127.0.0.1:8080/", status: 200}
//!     memory_mib: 64
//!     volumes:
//!       - {host: /var/lib/cairn-volumes/web, path: /data}
//! ```
//!
//! `image` is an OCI image layout archive (a tar of `oci-layout`, `index.json` and `blobs/`):
//! an absolute path on DATA (under `/var/`), read when the container starts (and waited for
//! while it is not there). A USB stick brings archives: the `*.tar` files in its `containers/`
//! folder are copied to [`ARCHIVE_DIR`] when it is plugged in. Or `image` is an OCI reference
//! `oci://registry/repo:tag` (or `@sha256:…`): cairnd pulls the image for the device's
//! architecture from the registry (its CA and credentials from the config's `registries:`)
//! into an archive under [`PULLED_DIR`], and runs that.
//!
//! The one idea, as for the rest of the config: [`Container::check`] refuses what cairnd could
//! not run, with one line naming the field (`containers[1].name: …`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::probe::Probe;

/// Most host containers a config may name.
pub const MAX_CONTAINERS: usize = 32;
/// Longest container name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Most arguments and environment entries of one container, and the longest of each.
const MAX_ARGS: usize = 256;
const MAX_ARG_LEN: usize = 4096;
/// Largest memory limit accepted, in MiB (1 TiB).
const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Where an `image` archive may be: DATA.
pub const IMAGE_ROOT: &str = "/var/";
/// Where cairnd copies the archives a USB stick carries in its `containers/` folder.
pub const ARCHIVE_DIR: &str = "/var/lib/cairn-images";
/// Where cairnd writes the archives it pulls from registries, one per container.
pub const PULLED_DIR: &str = "/var/lib/cairn-images/pulled";
/// Most volumes of one container.
const MAX_VOLUMES: usize = 16;
/// Folders on /var a volume may not be (or be inside): STATE (mounted on /var/lib/cairn, not
/// DATA) and the container runtime's and k3s's own state.
pub const VOLUME_EXCLUDED: [&str; 7] = [
    "/var/lib/cairn",
    "/var/lib/containerd",
    "/var/lib/rancher",
    "/var/lib/cni",
    "/var/lib/cairn-etc",
    "/var/lib/cairn-k3s",
    "/var/lib/cairn-images",
];

/// One host container, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// A DNS label: lower-case letters, digits and `-`, not starting or ending with `-`.
    pub name: String,
    pub image: ImageSource,
    /// The command and its arguments; empty: the image's own entrypoint and cmd.
    pub args: Vec<String>,
    /// Extra environment, beside the image's.
    pub env: BTreeMap<String, String>,
    pub restart: Restart,
    pub probe: Option<Probe>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// Folders on DATA bound into the container.
    pub volumes: Vec<Volume>,
}

/// A folder on DATA bound into a container: it outlives the container, and, DATA being shared
/// by both slots, updates and rollbacks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Volume {
    /// The folder on DATA: an absolute path under `/var/`, not STATE (`/var/lib/cairn`) nor
    /// the runtime's own state; cairnd makes it when it is missing.
    pub host: PathBuf,
    /// Where the container sees it: an absolute path, not `/`.
    pub path: PathBuf,
    /// Bound read-only (default: false).
    #[serde(default)]
    pub read_only: bool,
}

/// Where a container's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An OCI image layout archive on DATA.
    Archive(PathBuf),
    /// An image in an OCI registry, with what the device needs to reach it.
    Registry(RegistryImage),
}

/// An `oci://` image and its registry's CA and credentials (from the config's `registries:`,
/// the CA falling back to `update.fetch_ca`).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryImage {
    /// `oci://registry/repo:tag` or `…@sha256:…` (checked to parse).
    pub reference: String,
    /// PEM; filled in by [`crate::config::MachineConfig::parse`], which refuses a registry
    /// without one.
    pub ca: String,
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for RegistryImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryImage")
            .field("reference", &self.reference)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .finish_non_exhaustive()
    }
}

impl RegistryImage {
    /// The registry host the reference names.
    pub fn host(&self) -> &str {
        let rest = self.reference.trim_start_matches("oci://");
        rest.split('/').next().unwrap_or(rest)
    }
}

/// When a container that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Restart {
    /// Whatever its exit status (the default).
    #[default]
    Always,
    /// Only when it exits with a status other than 0 (or is killed).
    OnFailure,
    /// Never; a container that exited stays stopped (and fails its health check).
    Never,
}

/// A host container as written; what the JSON Schema describes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub(crate) struct RawContainer {
    /// A DNS label naming the container (unique; lower-case letters, digits, `-`, at most 63).
    /// Its health check is `container <name>`, and `cairnctl logs <name>` shows its output.
    name: String,
    /// An OCI image layout archive (tar): an absolute path under `/var/` (DATA; a USB stick's
    /// `containers/*.tar` are copied to `/var/lib/cairn-images/`); or an image in a registry,
    /// `oci://registry/repo:tag` or `oci://registry/repo@sha256:…` (the registry's CA from
    /// `registries:` or `update.fetch_ca`). Its image must be for the device's architecture.
    image: String,
    /// The command and its arguments (default: the image's entrypoint and cmd).
    #[serde(default)]
    args: Vec<String>,
    /// Environment variables added to the image's.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// When an exited container is started again: `always` (default), `on-failure`, `never`.
    #[serde(default)]
    restart: Restart,
    /// A TCP or HTTP probe that must pass for the container to count as healthy.
    #[cfg_attr(feature = "schema", schemars(with = "Option<crate::probe::ProbeSpec>"))]
    probe: Option<serde_json::Value>,
    /// Memory limit in MiB (1..=1048576); the container is killed past it.
    memory_mib: Option<u64>,
    /// Folders on DATA bound into the container (at most 16), kept across restarts, updates
    /// and rollbacks.
    #[serde(default)]
    volumes: Vec<Volume>,
}

/// Checks the section; the error is one line naming the field.
/// `reference` checks an `oci://` image.
pub(crate) fn check(
    raw: Vec<RawContainer>,
    reference: fn(&str) -> Result<(), String>,
) -> Result<Vec<Container>, String> {
    if raw.len() > MAX_CONTAINERS {
        return Err(format!("containers: more than {MAX_CONTAINERS}"));
    }
    let mut out: Vec<Container> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let c = Container::check(r, reference).map_err(|e| format!("containers[{i}].{e}"))?;
        if out.iter().any(|o| o.name == c.name) {
            return Err(format!(
                "containers[{i}].name: {:?} is already the name of another container",
                c.name
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// Why `name` is not a usable container name (a DNS label), if it is not.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Some(format!("{name:?} must be 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some(format!(
            "{name:?} may hold only lower-case letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!("{name:?} must not start or end with '-'"));
    }
    // The daemon's own logs share the namespace of `cairnctl logs`.
    if name == "cairnd" || name == "kernel" {
        return Some(format!(
            "{name:?} is the name of a log cairnd already serves"
        ));
    }
    None
}

impl Container {
    /// The error names the field, without the `containers[i].` prefix.
    fn check(
        r: RawContainer,
        reference: fn(&str) -> Result<(), String>,
    ) -> Result<Container, String> {
        if let Some(e) = name_problem(&r.name) {
            return Err(format!("name: {e}"));
        }
        let image = image_source(&r.image, reference).map_err(|e| format!("image: {e}"))?;
        if r.args.len() > MAX_ARGS {
            return Err(format!("args: more than {MAX_ARGS}"));
        }
        for (i, a) in r.args.iter().enumerate() {
            if a.len() > MAX_ARG_LEN || a.contains('\0') {
                return Err(format!(
                    "args[{i}]: longer than {MAX_ARG_LEN} bytes or holds a NUL"
                ));
            }
        }
        if r.env.len() > MAX_ARGS {
            return Err(format!("env: more than {MAX_ARGS} variables"));
        }
        for (k, v) in &r.env {
            let bad_key = k.is_empty()
                || k.bytes().next().is_some_and(|b| b.is_ascii_digit())
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if bad_key {
                return Err(format!(
                    "env: {k:?} is not a variable name (letters, digits, '_', not starting with a digit)"
                ));
            }
            if v.len() > MAX_ARG_LEN || v.contains('\0') {
                return Err(format!(
                    "env.{k}: longer than {MAX_ARG_LEN} bytes or holds a NUL"
                ));
            }
        }
        let probe = match &r.probe {
            Some(p) => Some(Probe::from_json(p).map_err(|e| format!("probe: {e}"))?),
            None => None,
        };
        let memory_limit = match r.memory_mib {
            Some(m) if !(1..=MAX_MEMORY_MIB).contains(&m) => {
                return Err(format!("memory_mib: {m} must be 1..={MAX_MEMORY_MIB}"))
            }
            Some(m) => Some(m << 20),
            None => None,
        };
        if r.volumes.len() > MAX_VOLUMES {
            return Err(format!("volumes: more than {MAX_VOLUMES}"));
        }
        for (i, v) in r.volumes.iter().enumerate() {
            v.check().map_err(|e| format!("volumes[{i}].{e}"))?;
            if r.volumes[..i].iter().any(|o| o.path == v.path) {
                return Err(format!(
                    "volumes[{i}].path: {} is already another volume's path",
                    v.path.display()
                ));
            }
        }
        Ok(Container {
            name: r.name,
            image,
            args: r.args,
            env: r.env,
            restart: r.restart,
            probe,
            memory_limit,
            volumes: r.volumes,
        })
    }
}

/// Why `path` is not a plain absolute path (`/` first, no `.`, `..` or empty components, no
/// NUL, not too long), if it is not.
fn path_problem(path: &std::path::Path) -> Option<String> {
    let text = path.to_str()?;
    let plain = text.starts_with('/')
        && text.len() <= MAX_ARG_LEN
        && !text.contains('\0')
        // ctr reads `--mount` as one CSV record.
        && !text.contains([',', '"'])
        && text[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    (!plain).then(|| format!("{text:?} is not a plain absolute path"))
}

impl Volume {
    /// The error names the field, without the `volumes[i].` prefix.
    fn check(&self) -> Result<(), String> {
        let host = self.host.to_str().unwrap_or("");
        if !host.starts_with(IMAGE_ROOT) {
            return Err(format!(
                "host: {host:?} must be a folder under {IMAGE_ROOT} (DATA)"
            ));
        }
        if let Some(e) = path_problem(&self.host) {
            return Err(format!("host: {e}"));
        }
        if let Some(ex) = VOLUME_EXCLUDED.iter().find(|ex| {
            self.host.starts_with(ex) || std::path::Path::new(ex).starts_with(&self.host)
        }) {
            return Err(format!(
                "host: {host:?} overlaps {ex}, which holds {}",
                if *ex == "/var/lib/cairn" {
                    "STATE (not DATA)"
                } else {
                    "the container runtime's own state"
                }
            ));
        }
        if self.path == std::path::Path::new("/") {
            return Err("path: \"/\" would hide the container's own files".into());
        }
        if let Some(e) = path_problem(&self.path) {
            return Err(format!("path: {e}"));
        }
        Ok(())
    }
}

fn image_source(
    text: &str,
    reference: fn(&str) -> Result<(), String>,
) -> Result<ImageSource, String> {
    if text.starts_with("oci://") {
        reference(text)?;
        return Ok(ImageSource::Registry(RegistryImage {
            reference: text.to_string(),
            ca: String::new(),
            credentials: None,
        }));
    }
    if text.starts_with("https://") || text.starts_with("http://") {
        return Err(format!(
            "{text:?}: write a registry image as oci://registry/repo:tag"
        ));
    }
    if !text.starts_with(IMAGE_ROOT) {
        return Err(format!(
            "{text:?} must be an OCI archive under {IMAGE_ROOT} (DATA)"
        ));
    }
    if text.split('/').any(|c| c == "..") || text.len() > MAX_ARG_LEN || text.contains('\0') {
        return Err(format!("{text:?} is not a plain absolute path"));
    }
    Ok(ImageSource::Archive(PathBuf::from(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<Container>, String> {
        let raw: Vec<RawContainer> = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        check(raw, |text| match text.contains(':') {
            true => Ok(()),
            false => Err("no tag".into()),
        })
    }

    #[test]
    fn the_documented_example_is_accepted() {
        // The example starts with its section's key; the list under it is what `check` reads.
        let doc = crate::doc_yaml(include_str!("containers.rs"));
        let yaml: String = doc.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let c = parse(&yaml).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "web");
        assert_eq!(
            c[0].image,
            ImageSource::Archive("/var/lib/cairn-images/web.tar".into())
        );
        assert_eq!(c[0].args, ["httpd", "-f", "-p", "8080"]);
        assert_eq!(c[0].env["GREETING"], "hello");
        assert_eq!(c[0].restart, Restart::Always);
        assert!(c[0].probe.is_some());
        assert_eq!(c[0].memory_limit, Some(64 << 20));
        assert_eq!(
            c[0].volumes,
            [Volume {
                host: "/var/lib/cairn-volumes/web".into(),
                path: "/data".into(),
                read_only: false
            }]
        );
    }

    #[test]
    fn volumes_are_folders_on_data() {
        let c = parse(
            "[{name: a, image: /var/a.tar, volumes: [{host: /var/www, path: /srv, read_only: true}, \
             {host: /var/lib/cairn-volumes/a, path: /data}]}]",
        )
        .unwrap();
        assert_eq!(c[0].volumes.len(), 2);
        assert!(c[0].volumes[0].read_only && !c[0].volumes[1].read_only);
        for (volume, want) in [
            (
                "{host: /etc, path: /x}",
                "volumes[0].host: \"/etc\" must be a folder under /var/ (DATA)",
            ),
            ("{host: data, path: /x}", "must be a folder under /var/"),
            (
                "{host: /var/, path: /x}",
                "\"/var/\" is not a plain absolute path",
            ),
            (
                "{host: /var/a/../lib/cairn, path: /x}",
                "is not a plain absolute path",
            ),
            (
                "{host: '/var/a,b', path: /x}",
                "is not a plain absolute path",
            ),
            (
                "{host: /var/lib/cairn/pki, path: /x}",
                "overlaps /var/lib/cairn, which holds STATE (not DATA)",
            ),
            (
                "{host: /var/lib, path: /x}",
                "overlaps /var/lib/cairn, which holds STATE",
            ),
            (
                "{host: /var/lib/containerd/x, path: /x}",
                "overlaps /var/lib/containerd, which holds the container runtime's own state",
            ),
            (
                "{host: /var/a, path: data}",
                "volumes[0].path: \"data\" is not a plain absolute path",
            ),
            (
                "{host: /var/a, path: /}",
                "volumes[0].path: \"/\" would hide",
            ),
            ("{host: /var/a, path: /x, mode: rw}", "unknown field `mode`"),
        ] {
            let e = parse(&format!(
                "[{{name: a, image: /var/a.tar, volumes: [{volume}]}}]"
            ))
            .unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = parse(
            "[{name: a, image: /var/a.tar, volumes: [{host: /var/a, path: /x}, {host: /var/b, path: /x}]}]",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "containers[0].volumes[1].path: /x is already another volume's path"
        );
    }

    #[test]
    fn defaults() {
        let c = parse("[{name: a, image: /var/lib/cairn-images/a.tar}]").unwrap();
        assert_eq!(c[0].restart, Restart::Always);
        assert!(c[0].args.is_empty() && c[0].env.is_empty());
        assert_eq!((c[0].probe.as_ref(), c[0].memory_limit), (None, None));
        let c = parse("[{name: a, image: /var/a.tar, restart: on-failure}]").unwrap();
        assert_eq!(c[0].restart, Restart::OnFailure);
    }

    #[test]
    fn bad_values_name_the_field() {
        for (yaml, want) in [
            ("[{name: Web, image: /var/a.tar}]", "containers[0].name: \"Web\" may hold only"),
            ("[{name: -a, image: /var/a.tar}]", "containers[0].name: \"-a\" must not start"),
            ("[{name: '', image: /var/a.tar}]", "containers[0].name: \"\" must be 1 to 63"),
            ("[{name: cairnd, image: /var/a.tar}]", "containers[0].name: \"cairnd\" is the name"),
            (
                "[{name: a, image: /var/a.tar}, {name: a, image: /var/b.tar}]",
                "containers[1].name: \"a\" is already the name",
            ),
            ("[{name: a, image: a.tar}]", "containers[0].image: \"a.tar\" must be an OCI archive under /var/ (DATA)"),
            ("[{name: a, image: /etc/a.tar}]", "containers[0].image: \"/etc/a.tar\" must be"),
            ("[{name: a, image: /var/../etc/a.tar}]", "is not a plain absolute path"),
            (
                "[{name: a, image: 'https://registry.example/a:1'}]",
                "containers[0].image: \"https://registry.example/a:1\": write a registry image as oci://registry/repo:tag",
            ),
            ("[{name: a, image: /var/a.tar, env: {1X: y}}]", "containers[0].env: \"1X\" is not a variable name"),
            ("[{name: a, image: /var/a.tar, memory_mib: 0}]", "containers[0].memory_mib: 0 must be"),
            ("[{name: a, image: /var/a.tar, probe: {ftp: x}}]", "containers[0].probe: invalid health probe"),
            ("[{name: a, image: /var/a.tar, restart: sometimes}]", "unknown variant `sometimes`"),
        ] {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
