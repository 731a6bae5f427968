//! Writing an OCI image layout archive (the tar `ctr images import` and cairnd's host containers
//! take): one uncompressed layer holding the given files, an image config for one platform, a
//! manifest, `index.json` and `oci-layout`. Tests build their container images with it, so no
//! registry or image tool is needed.
//!
//! std, serde_json and sha2 only, so that a test crate outside systest can include this file
//! (`#[path = "…/systest/src/oci.rs"] mod oci;`).

use std::io;

use sha2::{Digest, Sha256};

/// A file of the layer: its path in the image (relative, e.g. `bin/busybox`), mode and bytes.
pub struct LayerFile {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// A symlink of the layer: its path and target.
pub struct LayerLink {
    pub path: String,
    pub target: String,
}

/// One image: its files, the platform it is for (OCI names: `amd64`, `arm64`), its command.
pub struct Image {
    pub files: Vec<LayerFile>,
    pub links: Vec<LayerLink>,
    pub architecture: String,
    pub cmd: Vec<String>,
    /// The tag the index names the image by (`org.opencontainers.image.ref.name`).
    pub tag: String,
}

/// The OCI name of a Rust/Linux architecture (`x86_64` → `amd64`, `aarch64` → `arm64`).
pub fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A ustar header for `path`.
fn header(path: &str, size: u64, mode: u32, kind: u8, link: &str) -> io::Result<[u8; 512]> {
    let mut h = [0u8; 512];
    if path.len() > 100 || link.len() > 100 {
        return Err(io::Error::other(format!("{path}: name too long for ustar")));
    }
    h[..path.len()].copy_from_slice(path.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}", width = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    };
    octal(&mut h[100..108], mode.into());
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// A tar writer into memory, for the layer and the archive.
#[derive(Default)]
pub struct Tar(Vec<u8>);

impl Tar {
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let h = header(path, 0, 0o755, b'5', "")?;
        self.0.extend_from_slice(&h);
        Ok(())
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let h = header(path, data.len() as u64, mode, b'0', "")?;
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    pub fn link(&mut self, path: &str, target: &str) -> io::Result<()> {
        let h = header(path, 0, 0o777, b'2', target)?;
        self.0.extend_from_slice(&h);
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

/// Every directory above `path`, outermost first (`a/b/c` → `a/`, `a/b/`).
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len())
        .map(|n| format!("{}/", parts[..n].join("/")))
        .collect()
}

impl Image {
    /// The OCI archive, as bytes.
    pub fn archive(&self) -> io::Result<Vec<u8>> {
        let mut layer = Tar::default();
        let mut dirs: Vec<String> = Vec::new();
        let paths = self
            .files
            .iter()
            .map(|f| &f.path)
            .chain(self.links.iter().map(|l| &l.path));
        for p in paths {
            for d in parents(p) {
                if !dirs.contains(&d) {
                    layer.dir(&d)?;
                    dirs.push(d);
                }
            }
        }
        for f in &self.files {
            layer.file(&f.path, f.mode, &f.data)?;
        }
        for l in &self.links {
            layer.link(&l.path, &l.target)?;
        }
        let layer = layer.finish();
        let layer_digest = sha256_hex(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": {"Cmd": self.cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        }))?;
        let config_digest = sha256_hex(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer.len(),
            }],
        }))?;
        let manifest_digest = sha256_hex(&manifest);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest.len(),
                "platform": {"architecture": self.architecture, "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": self.tag},
            }],
        }))?;
        let mut tar = Tar::default();
        tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        tar.file("index.json", 0o644, &index)?;
        tar.dir("blobs/")?;
        tar.dir("blobs/sha256/")?;
        for (digest, data) in [
            (&layer_digest, &layer),
            (&config_digest, &config),
            (&manifest_digest, &manifest),
        ] {
            tar.file(&format!("blobs/sha256/{digest}"), 0o644, data)?;
        }
        Ok(tar.finish())
    }
}

/// A busybox image for `arch` (`x86_64`/`aarch64`, or OCI's `amd64`/`arm64`): the static
/// `busybox` binary given, `/www/index.html` holding `page`, and busybox's applets `sh`,
/// `httpd` and `sleep` linked in `/bin`; `cmd` as its command.
pub fn busybox_image(busybox: Vec<u8>, arch: &str, page: &str, cmd: &[&str]) -> Image {
    Image {
        files: vec![
            LayerFile {
                path: "bin/busybox".into(),
                mode: 0o755,
                data: busybox,
            },
            LayerFile {
                path: "www/index.html".into(),
                mode: 0o644,
                data: page.as_bytes().to_vec(),
            },
        ],
        links: ["sh", "httpd", "sleep"]
            .iter()
            .map(|a| LayerLink {
                path: format!("bin/{a}"),
                target: "busybox".into(),
            })
            .collect(),
        architecture: oci_arch(arch).to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tag: "latest".into(),
    }
}
