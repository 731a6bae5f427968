//! Reading an OCI image layout archive (a tar of `oci-layout`, `index.json`, `blobs/sha256/…`)
//! far enough to say which platform its image is for, before containerd imports it: an archive
//! that is not one, or whose image is for another architecture, is refused with one line and
//! nothing is imported.
//!
//! The one idea: only the tar headers and the small JSON documents (index, manifest, config)
//! are read, each bounded ([`MAX_JSON`], [`MAX_ENTRIES`]); layers are only checked to be there
//! with their stated size. containerd checks every digest when it imports.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Largest index, manifest or config read.
pub const MAX_JSON: u64 = 1 << 20;
/// Most tar entries looked at.
pub const MAX_ENTRIES: usize = 100_000;
/// Nested indexes followed, at most.
const MAX_DEPTH: usize = 4;

/// What an archive holds, once checked: the platform of the image cairnd would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// OCI architecture, e.g. `arm64`.
    pub architecture: String,
    pub os: String,
    /// The manifest's digest (`sha256:…`).
    pub manifest: String,
}

/// The OCI architecture of the machine this runs on.
pub fn machine_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An archive's regular files: name → (offset of the data, size).
struct Entries {
    file: File,
    entries: HashMap<String, (u64, u64)>,
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl Entries {
    fn read(path: &Path) -> Result<Entries, String> {
        let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let mut entries = HashMap::new();
        let mut offset = 0u64;
        let mut header = [0u8; 512];
        let mut long_name: Option<String> = None;
        loop {
            if entries.len() > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} entries"));
            }
            if offset + 512 > len {
                return Err("not a tar archive: it ends inside a header".into());
            }
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut header))
                .map_err(|e| format!("reading: {e}"))?;
            if header.iter().all(|&b| b == 0) {
                break;
            }
            let stored: u64 = octal(&header[148..156]).ok_or("not a tar archive")?;
            let sum: u64 = header
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            if stored != sum {
                return Err(format!(
                    "not a tar archive: bad header checksum at byte {offset}"
                ));
            }
            let size = octal(&header[124..136]).ok_or("not a tar archive: bad size field")?;
            let data = offset + 512;
            if data + size > len {
                return Err("truncated: an entry runs past the end".into());
            }
            let mut name = cstr(&header[..100]);
            if &header[257..262] == b"ustar" {
                let prefix = cstr(&header[345..500]);
                if !prefix.is_empty() {
                    name = format!("{prefix}/{name}");
                }
            }
            if let Some(long) = long_name.take() {
                name = long;
            }
            match header[156] {
                b'0' | 0 => {
                    let name = name.trim_start_matches("./").to_string();
                    entries.insert(name, (data, size));
                }
                // GNU long name: the next entry's name is this entry's data.
                b'L' if size <= 4096 => {
                    let mut buf = vec![0u8; size as usize];
                    file.seek(SeekFrom::Start(data))
                        .and_then(|_| file.read_exact(&mut buf))
                        .map_err(|e| format!("reading: {e}"))?;
                    long_name = Some(cstr(&buf));
                }
                _ => {}
            }
            offset = data + size.div_ceil(512) * 512;
        }
        Ok(Entries { file, entries })
    }

    fn json(&mut self, name: &str) -> Result<serde_json::Value, String> {
        let &(offset, size) = self.entries.get(name).ok_or(format!("no {name}"))?;
        if size > MAX_JSON {
            return Err(format!("{name} is larger than {MAX_JSON} bytes"));
        }
        let mut buf = vec![0u8; size as usize];
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|e| format!("reading {name}: {e}"))?;
        serde_json::from_slice(&buf).map_err(|e| format!("{name} is not JSON: {e}"))
    }

    /// The blob a descriptor names, checked to be there with its size.
    fn blob(&self, desc: &serde_json::Value) -> Result<String, String> {
        let digest = desc["digest"]
            .as_str()
            .ok_or("a descriptor has no digest")?;
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(format!("{digest:?} is not a sha256 digest"))?;
        let name = format!("blobs/sha256/{hex}");
        let &(_, size) = self
            .entries
            .get(&name)
            .ok_or(format!("blob {digest} is missing"))?;
        if desc["size"].as_u64() != Some(size) {
            return Err(format!(
                "blob {digest} is {size} bytes, not its stated size"
            ));
        }
        Ok(name)
    }
}

/// Reads the archive at `path` and picks the image for `arch` (an OCI architecture) on Linux.
/// The error is one line without the path (the caller names the archive).
pub fn check_archive(path: &Path, arch: &str) -> Result<ArchiveImage, String> {
    let mut e = Entries::read(path)?;
    if !e.entries.contains_key("oci-layout") {
        return Err("not an OCI image layout: no oci-layout file".into());
    }
    let mut index = e.json("index.json")?;
    let mut seen = Vec::new();
    for _ in 0..MAX_DEPTH {
        let manifests = index["manifests"]
            .as_array()
            .ok_or("an index has no manifests list")?
            .clone();
        if manifests.is_empty() {
            return Err("the index names no image".into());
        }
        // An entry with a platform must match; one without is looked into.
        let mut next = None;
        for m in &manifests {
            let plat = &m["platform"];
            let a = plat["architecture"].as_str();
            if a.is_some_and(|a| a != arch) || plat["os"].as_str().is_some_and(|o| o != "linux") {
                seen.push(format!(
                    "{}/{}",
                    plat["os"].as_str().unwrap_or("?"),
                    a.unwrap_or("?")
                ));
                continue;
            }
            next = Some(m.clone());
            break;
        }
        let Some(desc) = next else {
            return Err(format!(
                "the image is for {}, not this machine's linux/{arch}",
                seen.join(", ")
            ));
        };
        let name = e.blob(&desc)?;
        let doc = e.json(&name)?;
        if doc.get("manifests").is_some() {
            index = doc;
            continue;
        }
        let config = e.blob(&doc["config"])?;
        for layer in doc["layers"]
            .as_array()
            .ok_or("a manifest has no layers list")?
        {
            e.blob(layer)?;
        }
        let config = e.json(&config)?;
        let architecture = config["architecture"]
            .as_str()
            .ok_or("the image config names no architecture")?
            .to_string();
        let os = config["os"].as_str().unwrap_or("").to_string();
        if architecture != arch || os != "linux" {
            return Err(format!(
                "the image is for {os}/{architecture}, not this machine's linux/{arch}"
            ));
        }
        return Ok(ArchiveImage {
            architecture,
            os,
            manifest: desc["digest"].as_str().unwrap_or("").to_string(),
        });
    }
    Err(format!("indexes nested deeper than {MAX_DEPTH}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci_writer::{busybox_image, Tar};

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn an_archive_for_this_machine_is_taken_and_others_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = busybox_image(b"not really busybox".to_vec(), "aarch64", "hi", &["sh"])
            .archive()
            .unwrap();
        let p = write(dir.path(), "good.tar", &good);
        let img = check_archive(&p, "arm64").unwrap();
        assert_eq!(
            (img.architecture.as_str(), img.os.as_str()),
            ("arm64", "linux")
        );
        assert!(img.manifest.starts_with("sha256:"));
        assert_eq!(
            check_archive(&p, "amd64").unwrap_err(),
            "the image is for linux/arm64, not this machine's linux/amd64"
        );
    }

    #[test]
    fn malformed_archives_are_refused_with_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = busybox_image(vec![7; 5000], "x86_64", "hi", &["sh"])
            .archive()
            .unwrap();
        let mut no_layout = Tar::default();
        no_layout.file("index.json", 0o644, b"{}").unwrap();
        let mut bad_index = Tar::default();
        bad_index.file("oci-layout", 0o644, b"{}").unwrap();
        bad_index.file("index.json", 0o644, b"{nope").unwrap();
        let mut missing_blob = Tar::default();
        missing_blob.file("oci-layout", 0o644, b"{}").unwrap();
        let index = format!(
            r#"{{"manifests":[{{"digest":"sha256:{}","size":3}}]}}"#,
            "a".repeat(64)
        );
        missing_blob
            .file("index.json", 0o644, index.as_bytes())
            .unwrap();
        for (name, bytes, want) in [
            (
                "text",
                b"hello, this is not a tar file".repeat(40),
                "not a tar archive",
            ),
            ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
            ("no-layout", no_layout.finish(), "no oci-layout file"),
            ("bad-index", bad_index.finish(), "index.json is not JSON"),
            ("missing-blob", missing_blob.finish(), "is missing"),
        ] {
            let p = write(dir.path(), name, &bytes);
            let e = check_archive(&p, "amd64").unwrap_err();
            assert!(e.contains(want), "{name}: {e} lacks {want}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
