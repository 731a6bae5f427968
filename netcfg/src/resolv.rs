//! `/run/resolv.conf`: the name servers and search domains of the static config and of DHCP
//! leases, merged, rendered and written atomically.
//!
//! The one idea: the file is derived, never edited. [`Resolvers::merge`] puts the static config
//! first and drops duplicates, [`render`] applies the limits that the C resolvers (glibc, musl)
//! read, so what is written is what they use, and [`write`] replaces the file only when its text
//! changes, by rename, so a reader sees the old file or the new one, never half of one.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Where the device's resolver configuration lives.
pub const PATH: &str = "/run/resolv.conf";
/// Name servers the resolvers read (`MAXNS`); later ones would be ignored.
pub const MAX_NAMESERVERS: usize = 3;
/// Search domains of one `search` line (resolv.conf(5)).
pub const MAX_SEARCH_DOMAINS: usize = 6;
/// Characters of the `search` line's domains, with the spaces between them (resolv.conf(5)).
pub const MAX_SEARCH_CHARS: usize = 256;
/// Longest domain name, in its dotted text form without the final dot.
pub const MAX_DOMAIN_LEN: usize = 253;
pub const MAX_LABEL_LEN: usize = 63;

const HEADER: &str =
    "# Written by cairnd from the network config and DHCP leases; edits are lost.\n";

/// Errors of this module.
#[derive(Debug, Error)]
pub enum Error {
    #[error("search domain {domain:?} is not a valid domain name: {reason}")]
    BadDomain { domain: String, reason: String },

    #[error("{path}: {op}", path = path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A valid domain name: labels of 1 to 63 letters, digits and hyphens (no hyphen first or
/// last), at most 253 characters. Kept in lower case without a final dot, so that equal names
/// compare equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Domain {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadDomain {
            domain: s.to_owned(),
            reason,
        };
        let name = s.strip_suffix('.').unwrap_or(s);
        if name.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if name.len() > MAX_DOMAIN_LEN {
            return Err(bad(format!("longer than {MAX_DOMAIN_LEN} characters")));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(bad(
                    "it has an empty label (a leading dot or two in a row)".into()
                ));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(bad(format!(
                    "label {label:?} is longer than {MAX_LABEL_LEN} characters"
                )));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
            {
                return Err(bad(format!(
                    "{c:?} is not allowed (letters, digits, '-' and '.')"
                )));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad(format!("label {label:?} starts or ends with '-'")));
            }
        }
        Ok(Self(name.to_ascii_lowercase()))
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Name servers and search domains from one source: the static config or one DHCP lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolvers {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<Domain>,
}

impl Resolvers {
    /// All `sources` in order (the static config first, then the leases), each address and
    /// domain once. Addresses that cannot be a server (unspecified, multicast, IPv4 broadcast),
    /// as a careless DHCP server may offer, are dropped.
    pub fn merge<'a>(sources: impl IntoIterator<Item = &'a Resolvers>) -> Resolvers {
        let mut merged = Resolvers::default();
        let (mut seen_ns, mut seen_search) = (HashSet::new(), HashSet::new());
        for source in sources {
            for &ns in &source.nameservers {
                if can_serve(ns) && seen_ns.insert(ns) {
                    merged.nameservers.push(ns);
                }
            }
            for domain in &source.search {
                if seen_search.insert(domain) {
                    merged.search.push(domain.clone());
                }
            }
        }
        merged
    }
}

fn can_serve(ip: IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_unspecified() || ip.is_multicast() || broadcast)
}

/// The text of resolv.conf: at most [`MAX_NAMESERVERS`] `nameserver` lines, and one `search`
/// line of the first domains that fit in [`MAX_SEARCH_DOMAINS`] and [`MAX_SEARCH_CHARS`].
/// What is left out is what the resolvers would not read anyway.
pub fn render(nameservers: &[IpAddr], search: &[Domain]) -> String {
    let mut out = String::from(HEADER);
    for ns in nameservers.iter().take(MAX_NAMESERVERS) {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    let mut line = String::new();
    for domain in search.iter().take(MAX_SEARCH_DOMAINS) {
        let sep = usize::from(!line.is_empty());
        if line.len() + sep + domain.0.len() > MAX_SEARCH_CHARS {
            break;
        }
        if sep == 1 {
            line.push(' ');
        }
        line.push_str(&domain.0);
    }
    if !line.is_empty() {
        out.push_str(&format!("search {line}\n"));
    }
    out
}

/// Whether [`write`] changed the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Updated,
    /// The file already said this; it was not touched.
    Unchanged,
}

/// Renders and writes `path` (normally [`PATH`]) when its text changes: a temporary file in the
/// same directory, fsync'd, renamed over `path`, and the directory fsync'd.
pub fn write(path: &Path, nameservers: &[IpAddr], search: &[Domain]) -> Result<Written> {
    write_text(path, &render(nameservers, search))
}

fn write_text(path: &Path, text: &str) -> Result<Written> {
    let fail = |path: &Path, op| {
        let path = path.to_owned();
        move |source| Error::Io { path, op, source }
    };
    match fs::read(path) {
        Ok(old) if old == text.as_bytes() => return Ok(Written::Unchanged),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(path, "reading the current file")(e)),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| fail(path, "finding the file name")(io::ErrorKind::InvalidInput.into()))?;
    // Unique per writer, so two writers never share a temporary file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_synced(&tmp, text)
        .map_err(fail(&tmp, "writing the new file"))
        .and_then(|()| fs::rename(&tmp, path).map_err(fail(path, "renaming the new file over it")));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail(dir, "syncing the directory"))?;
    Ok(Written::Updated)
}

fn write_synced(path: &Path, text: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    // Readable by every process whatever the umask: every program resolves names.
    file.set_permissions(Permissions::from_mode(0o644))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(names: &[&str]) -> Vec<Domain> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ips(addrs: &[&str]) -> Vec<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn domains_follow_label_rules() {
        assert_eq!(
            "Lab.Example.COM.".parse::<Domain>().unwrap().as_str(),
            "lab.example.com"
        );
        assert!("a-1.b2".parse::<Domain>().is_ok());
        let label63 = "a".repeat(63);
        assert!(format!("{label63}.com").parse::<Domain>().is_ok());
        let long = [label63.as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        for (bad, reason) in [
            ("", "it is empty"),
            (".", "it is empty"),
            (
                "a..b",
                "it has an empty label (a leading dot or two in a row)",
            ),
            (
                ".a",
                "it has an empty label (a leading dot or two in a row)",
            ),
            ("-a.com", "label \"-a\" starts or ends with '-'"),
            ("a-.com", "label \"a-\" starts or ends with '-'"),
            (
                "a_b.com",
                "'_' is not allowed (letters, digits, '-' and '.')",
            ),
            ("a b", "' ' is not allowed (letters, digits, '-' and '.')"),
            (
                "exämple.com",
                "'ä' is not allowed (letters, digits, '-' and '.')",
            ),
            (
                "a\nnameserver 1.2.3.4",
                "'\\n' is not allowed (letters, digits, '-' and '.')",
            ),
            (&long, "longer than 253 characters"),
        ] {
            let e = bad.parse::<Domain>().unwrap_err().to_string();
            assert_eq!(
                e,
                format!("search domain {bad:?} is not a valid domain name: {reason}")
            );
        }
        let e = format!("{}.com", "a".repeat(64))
            .parse::<Domain>()
            .unwrap_err();
        assert!(
            e.to_string().ends_with("is longer than 63 characters"),
            "{e}"
        );
    }

    #[test]
    fn render_writes_what_resolvers_read() {
        let text = render(
            &ips(&["10.0.0.1", "fd00::53"]),
            &domains(&["lab.example.com", "example.com"]),
        );
        assert_eq!(
            text,
            format!(
                "{HEADER}nameserver 10.0.0.1\nnameserver fd00::53\n\
                 search lab.example.com example.com\n"
            )
        );
        assert_eq!(render(&[], &[]), HEADER);
    }

    #[test]
    fn render_applies_the_limits() {
        let text = render(
            &ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            &domains(&["a", "b", "c", "d", "e", "f", "g"]),
        );
        assert_eq!(text.matches("nameserver").count(), 3);
        assert!(!text.contains("10.0.0.4"));
        assert!(text.ends_with("\nsearch a b c d e f\n"), "{text}");

        // Four 63-character domains and spaces make 255 characters; a fifth would pass 256.
        let long: Vec<Domain> = ('a'..='e')
            .map(|c| Domain(c.to_string().repeat(63)))
            .collect();
        let text = render(&[], &long);
        let search = text
            .lines()
            .last()
            .unwrap()
            .strip_prefix("search ")
            .unwrap();
        assert_eq!(search.len(), 255);
        assert_eq!(search.split(' ').count(), 4);
    }

    #[test]
    fn merge_puts_static_first_and_dedupes() {
        let fixed = Resolvers {
            nameservers: ips(&["1.1.1.1", "10.0.0.1"]),
            search: domains(&["corp.example"]),
        };
        let lease = Resolvers {
            nameservers: ips(&[
                "10.0.0.1",
                "0.0.0.0",
                "255.255.255.255",
                "224.0.0.1",
                "10.0.0.2",
            ]),
            search: domains(&["LAB.example", "corp.example."]),
        };
        let merged = Resolvers::merge([&fixed, &lease]);
        assert_eq!(
            merged.nameservers,
            ips(&["1.1.1.1", "10.0.0.1", "10.0.0.2"])
        );
        assert_eq!(merged.search, domains(&["corp.example", "lab.example"]));
    }

    #[test]
    fn write_replaces_atomically_and_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        let ns = ips(&["10.0.0.1"]);
        let search = domains(&["example.com"]);

        assert_eq!(write(&path, &ns, &search).unwrap(), Written::Updated);
        assert_eq!(fs::read_to_string(&path).unwrap(), render(&ns, &search));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);

        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&path);
        assert_eq!(write(&path, &ns, &search).unwrap(), Written::Unchanged);
        assert_eq!(inode(&path), before, "an unchanged file is not rewritten");

        let ns2 = ips(&["10.0.0.2"]);
        assert_eq!(write(&path, &ns2, &search).unwrap(), Written::Updated);
        assert_ne!(inode(&path), before, "a changed file is replaced by rename");
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("nameserver 10.0.0.2\n"));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn write_names_the_path_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("resolv.conf");
        let e = write(&path, &[], &[]).unwrap_err();
        let tmp_dir = dir.path().join("missing");
        assert!(
            e.to_string()
                .starts_with(&format!("{}/.resolv.conf.", tmp_dir.display())),
            "{e}"
        );
        assert!(e.to_string().ends_with(": writing the new file"), "{e}");
    }
}
