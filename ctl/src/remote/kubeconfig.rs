//! `cairnctl kubeconfig`: k3s's admin kubeconfig from the device, made usable from here.
//!
//! The device hands the file over as k3s wrote it, for its own loopback
//! (`server: https://127.0.0.1:6443`); the address is replaced with the host cairnctl reached
//! the device at, the port kept. Written to a file, it is created with mode 0600: it holds the
//! cluster admin's private key.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The kubeconfig with every loopback `server:` pointing at `host` instead.
pub fn for_host(kubeconfig: &str, host: &str) -> anyhow::Result<String> {
    let host = match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_string(),
    };
    let mut replaced = 0;
    let mut out = String::with_capacity(kubeconfig.len());
    for line in kubeconfig.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let rewritten = trimmed.strip_prefix("server:").and_then(|rest| {
            let url = rest.trim();
            let after = url.strip_prefix("https://")?;
            let (authority, path) = after.split_at(after.find('/').unwrap_or(after.len()));
            let port = ["127.0.0.1", "localhost", "[::1]"]
                .iter()
                .find_map(|h| authority.strip_prefix(h))
                .filter(|p| p.is_empty() || p.starts_with(':'))?;
            let end = if line.ends_with('\n') { "\n" } else { "" };
            Some(format!("{indent}server: https://{host}{port}{path}{end}"))
        });
        match rewritten {
            Some(l) => {
                replaced += 1;
                out.push_str(&l);
            }
            None => out.push_str(line),
        }
    }
    if replaced == 0 {
        anyhow::bail!(
            "the device's kubeconfig has no loopback `server: https://127.0.0.1:…` line to point at {host}"
        );
    }
    Ok(out)
}

/// Writes it to `path` with mode 0600 (also when the file was there with a wider mode).
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K3S: &str = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\nkind: Config\n";

    #[test]
    fn the_server_becomes_the_device_address() {
        let out = for_host(K3S, "192.168.1.10").unwrap();
        assert_eq!(out, K3S.replace("127.0.0.1:6443", "192.168.1.10:6443"));
        let out = for_host(K3S, "fd00::10").unwrap();
        assert!(
            out.contains("    server: https://[fd00::10]:6443\n"),
            "{out}"
        );
        let e = for_host("apiVersion: v1\n", "edge").unwrap_err();
        assert!(e.to_string().contains("no loopback `server:"), "{e}");
    }

    #[test]
    fn the_file_is_private() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("k");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&path, K3S).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), K3S);
    }
}
