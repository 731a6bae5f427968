//! Debian packages as image inputs.
//!
//! Kernels and systemd-boot come from Debian's archive through the host's own apt configuration
//! (`apt-cache show`, `apt-get download`), so no mirror is named here and whatever sources the
//! machine trusts are used. Every package is pinned by the sha256 that apt's signed index
//! records for it: a download or a cached file that does not match is refused. Metapackages
//! such as `linux-image-cloud-arm64` are resolved to the versioned package they point at, and
//! both names are recorded, because the versioned one changes with Debian's security updates.
//!
//! Extracted trees are cached next to the .deb, keyed by its sha256, so repeated builds do not
//! unpack a 70 MiB kernel package again.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One package as apt's index describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageRecord {
    /// Package name without architecture qualifier.
    pub package: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    pub depends: String,
}

/// A package fetched into the cache and verified.
#[derive(Debug, Clone, Serialize)]
pub struct FetchedPackage {
    #[serde(flatten)]
    pub record: PackageRecord,
    /// The name the board asked for when it differs (a metapackage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    #[serde(skip)]
    pub deb: PathBuf,
    /// Where the package's files are unpacked (read-only use).
    #[serde(skip)]
    pub root: PathBuf,
}

/// Parses the first stanza of `apt-cache show` output.
pub fn parse_record(text: &str, requested: &str, arch: &str) -> Result<PackageRecord> {
    let mut fields: Vec<(&str, String)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            if fields.is_empty() {
                continue;
            }
            break;
        }
        if let Some(cont) = line.strip_prefix(' ') {
            if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(cont);
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k, v.trim().to_string()));
        }
    }
    let get = |field: &'static str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(field))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::PackageRecord {
                package: requested.to_string(),
                field,
            })
    };
    Ok(PackageRecord {
        package: get("Package")?,
        version: get("Version")?,
        arch: get("Architecture").unwrap_or_else(|_| arch.to_string()),
        sha256: get("SHA256")?.to_ascii_lowercase(),
        depends: get("Depends").unwrap_or_default(),
    })
}

/// For a metapackage, the single `linux-image-*` (or other) package it depends on; `None` when
/// the package is itself the versioned one.
pub fn metapackage_target(record: &PackageRecord) -> Option<String> {
    // A versioned kernel package carries its ABI in the name: linux-image-6.1.0-56-amd64.
    let versioned = record
        .package
        .strip_prefix("linux-image-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
    if versioned || !record.package.starts_with("linux-image-") {
        return None;
    }
    record
        .depends
        .split(',')
        .map(|d| d.trim().split([' ', ':']).next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_string)
}

/// The package cache: a folder of verified .debs and their unpacked trees.
pub struct Cache {
    dir: PathBuf,
    /// `-o Name=Value` options for apt-cache and apt-get; empty for the host's own apt setup.
    apt_options: Vec<String>,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache {
            dir: dir.into(),
            apt_options: Vec::new(),
        }
    }

    /// A cache that looks packages up through a private apt configuration (say, a sources list
    /// of its own with `Dir::State::Lists` and `Dir::Cache` beside it): each `option` is passed
    /// to apt as `-o option`. The index is apt's, so the sha256 pinning is the same.
    pub fn with_apt_options(dir: impl Into<PathBuf>, options: Vec<String>) -> Self {
        Cache {
            dir: dir.into(),
            apt_options: options,
        }
    }

    /// `-o` arguments for apt.
    fn apt_args(&self) -> Vec<String> {
        self.apt_options
            .iter()
            .flat_map(|o| ["-o".to_string(), o.clone()])
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Looks `name` up for `arch`, follows a kernel metapackage to its versioned package,
    /// downloads it unless a verified copy is cached, and unpacks it.
    pub fn fetch(&self, name: &str, arch: &str) -> Result<FetchedPackage> {
        let mut record = apt_show(name, arch, &self.apt_args())?;
        let mut requested = None;
        if let Some(target) = metapackage_target(&record) {
            requested = Some(name.to_string());
            record = apt_show(&target, arch, &self.apt_args())?;
        }
        let deb = self.download(&record)?;
        let root = self.unpack(&record, &deb)?;
        Ok(FetchedPackage {
            record,
            requested,
            deb,
            root,
        })
    }

    /// [`Cache::fetch`] for several packages at once, with one `apt-cache` run for all of them
    /// (each run reads apt's whole index, a second or more). A package that run does not answer
    /// for (an `all` package under a foreign architecture, a metapackage) goes through
    /// [`Cache::fetch`] alone.
    pub fn fetch_all(&self, names: &[String], arch: &str) -> Result<Vec<FetchedPackage>> {
        let specs: Vec<String> = names.iter().map(|n| format!("{n}:{arch}")).collect();
        let output = apt_cache_show(&self.apt_args(), &specs)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut records = Vec::new();
        for stanza in stdout.split("\n\n").filter(|s| !s.trim().is_empty()) {
            if let Ok(r) = parse_record(stanza, "", arch) {
                records.push(r);
            }
        }
        names
            .iter()
            .map(|name| {
                match records
                    .iter()
                    .find(|r| &r.package == name && metapackage_target(r).is_none())
                {
                    Some(record) => {
                        let deb = self.download(record)?;
                        let root = self.unpack(record, &deb)?;
                        Ok(FetchedPackage {
                            record: record.clone(),
                            requested: None,
                            deb,
                            root,
                        })
                    }
                    None => self.fetch(name, arch),
                }
            })
            .collect()
    }

    fn download(&self, record: &PackageRecord) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        fs::create_dir_all(&debs).map_err(|e| Error::io("creating", &debs, e))?;
        let file = debs.join(format!(
            "{}_{}_{}.deb",
            record.package,
            record.version.replace(':', "%3a"),
            record.arch
        ));
        if file.exists() {
            let actual = sha256_file(&file)?;
            if actual != record.sha256 {
                return Err(Error::CacheMismatch {
                    path: file,
                    expected: record.sha256.clone(),
                    actual,
                });
            }
            return Ok(file);
        }

        // Download into a private folder, verify, then rename: a cut download never looks cached.
        let partial = debs.join(format!(
            ".download-{}-{}",
            record.package,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).map_err(|e| Error::io("creating", &partial, e))?;
        let spec = format!("{}:{}={}", record.package, record.arch, record.version);
        let result = run(Command::new("apt-get")
            .args(self.apt_args())
            .args(["download", "-q", &spec])
            .current_dir(&partial));
        let downloaded = result.and_then(|_| {
            let entry = fs::read_dir(&partial)
                .map_err(|e| Error::io("reading", &partial, e))?
                .filter_map(|e| e.ok())
                .find(|e| e.path().extension().is_some_and(|x| x == "deb"))
                .ok_or_else(|| Error::ToolFailed {
                    command: format!("apt-get download {spec}"),
                    stderr: "no .deb file was written".into(),
                })?;
            let got = entry.path();
            let actual = sha256_file(&got)?;
            if actual != record.sha256 {
                return Err(Error::DownloadMismatch {
                    path: got,
                    expected: record.sha256.clone(),
                    actual,
                });
            }
            fs::rename(&got, &file).map_err(|e| Error::io("moving", &file, e))
        });
        let _ = fs::remove_dir_all(&partial);
        downloaded.map(|_| file)
    }

    fn unpack(&self, record: &PackageRecord, deb: &Path) -> Result<PathBuf> {
        let root = self.dir.join("unpacked").join(&record.sha256);
        let done = root.join(".cairn-complete");
        if done.exists() {
            return Ok(root);
        }
        // Unpack into a private folder and rename it into place, so that two builds sharing
        // the cache never extract into the same tree at once.
        static UNPACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = UNPACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let partial = self.dir.join("unpacked").join(format!(
            ".{}-{}-{n}",
            record.sha256,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).map_err(|e| Error::io("creating", &partial, e))?;
        let marker = partial.join(".cairn-complete");
        let unpacked = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))
            .and_then(|_| fs::write(&marker, b"").map_err(|e| Error::io("writing", &marker, e)));
        if let Err(e) = unpacked {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        if !done.exists() {
            // A stale, incomplete tree from an interrupted build is in the way.
            let _ = fs::remove_dir_all(&root);
        }
        match fs::rename(&partial, &root) {
            Ok(()) => Ok(root),
            // Another build finished the same package first; its tree is as good as ours.
            Err(_) if done.exists() => {
                let _ = fs::remove_dir_all(&partial);
                Ok(root)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                Err(Error::io("moving into place", &root, e))
            }
        }
    }
}

/// `apt-cache show --no-all-versions` of `specs` (`name:arch`), with `apt_args`' options.
fn apt_cache_show(apt_args: &[String], specs: &[String]) -> Result<std::process::Output> {
    Command::new("apt-cache")
        .args(apt_args)
        .args(["show", "--no-all-versions"])
        .args(specs)
        .output()
        .map_err(|source| Error::ToolMissing {
            command: "apt-cache".into(),
            source,
        })
}

/// The index record of `name` for `arch`, or for `all` when the package is
/// architecture-independent (firmware, for one).
fn apt_show(name: &str, arch: &str, apt_args: &[String]) -> Result<PackageRecord> {
    for candidate in [arch, "all"] {
        let spec = format!("{name}:{candidate}");
        let output = apt_cache_show(apt_args, std::slice::from_ref(&spec))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && !stdout.trim().is_empty() {
            return parse_record(&stdout, name, candidate);
        }
    }
    Err(Error::PackageNotFound {
        package: name.to_string(),
        arch: arch.to_string(),
    })
}

/// Runs a host tool, turning a missing tool or a failure into one readable line.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = cmd.output().map_err(|source| Error::ToolMissing {
        command: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The last few lines, on one line: a tool's final line often only says that a
        // subprocess failed (dpkg-deb about tar), and the reason is just above it.
        let mut lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("W:"))
            .rev()
            .take(3)
            .collect();
        lines.reverse();
        let text = if lines.is_empty() {
            "exited with an error".to_string()
        } else {
            lines.join(" / ")
        };
        return Err(Error::ToolFailed {
            command: shown,
            stderr: text,
        });
    }
    Ok(())
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "Package: linux-image-cloud-arm64\nSource: linux-signed-arm64 (6.1.192+2)\nVersion: 6.1.192-2\nArchitecture: arm64\nDepends: linux-image-6.1.0-56-cloud-arm64 (= 6.1.192-2)\nDescription: Linux for arm64 cloud (meta-package)\n more text\nSHA256: AB97b5c2\n\nPackage: second-stanza\n";

    #[test]
    fn parses_first_stanza_and_lowercases_hash() {
        let r = parse_record(META, "linux-image-cloud-arm64", "arm64").unwrap();
        assert_eq!(r.package, "linux-image-cloud-arm64");
        assert_eq!(r.version, "6.1.192-2");
        assert_eq!(r.sha256, "ab97b5c2");
        assert!(r.depends.starts_with("linux-image-6.1.0-56"));
    }

    #[test]
    fn missing_hash_is_an_error() {
        let err = parse_record("Package: x\nVersion: 1\n", "x", "amd64").unwrap_err();
        assert!(err.to_string().contains("SHA256"), "{err}");
    }

    #[test]
    fn metapackage_resolves_to_versioned_kernel() {
        let r = parse_record(META, "linux-image-cloud-arm64", "arm64").unwrap();
        assert_eq!(
            metapackage_target(&r).as_deref(),
            Some("linux-image-6.1.0-56-cloud-arm64")
        );
        let versioned = PackageRecord {
            package: "linux-image-6.1.0-56-amd64".into(),
            depends: "kmod, linux-base (>= 4.3~)".into(),
            ..r.clone()
        };
        assert_eq!(metapackage_target(&versioned), None);
        let other = PackageRecord {
            package: "systemd-boot-efi".into(),
            ..r
        };
        assert_eq!(metapackage_target(&other), None);
    }

    /// Two builds sharing a cache unpack the same package at once: both get a complete tree.
    #[test]
    fn concurrent_unpacks_of_one_package_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        std::fs::write(
            pkg.join("DEBIAN/control"),
            "Package: cairn-test\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n",
        )
        .unwrap();
        for i in 0..200 {
            let f = pkg.join(format!("usr/share/cairn-test/{i}/file"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, vec![i as u8; 4096]).unwrap();
        }
        let deb = dir.path().join("t.deb");
        let built = Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&pkg)
            .arg(&deb)
            .output()
            .expect("dpkg-deb (from dpkg) is installed by `cargo xtask setup`");
        assert!(built.status.success(), "{built:?}");
        let record = PackageRecord {
            package: "cairn-test".into(),
            version: "1.0".into(),
            arch: "all".into(),
            sha256: sha256_file(&deb).unwrap(),
            depends: String::new(),
        };
        let cache = Cache::new(dir.path().join("cache"));
        let roots: Vec<PathBuf> = std::thread::scope(|s| {
            let a = s.spawn(|| cache.unpack(&record, &deb).unwrap());
            let b = s.spawn(|| cache.unpack(&record, &deb).unwrap());
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert_eq!(roots[0], roots[1]);
        for i in 0..200 {
            let f = roots[0].join(format!("usr/share/cairn-test/{i}/file"));
            assert_eq!(std::fs::read(&f).unwrap(), vec![i as u8; 4096]);
        }
        // No private folders are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("cache/unpacked"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
