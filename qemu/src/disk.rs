//! The machine's writable state: a qcow2 overlay over the built image and a private copy of the
//! UEFI variable store.
//!
//! The built `disk.img` is only ever a read-only backing file, so one image serves many test runs
//! and a test can compare it byte for byte afterwards. The overlay and the variables are the
//! machine's "disk": keeping both (`reuse_disk`) boots the same machine again.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};
use crate::options::WorkPaths;

/// Creates a fresh overlay and variable store unless `reuse` is set and both already exist.
/// Returns whether existing state was kept. With `writable_image` the image itself is the disk
/// and only the variable store is prepared.
pub(crate) fn prepare(
    paths: &WorkPaths,
    disk_image: &Path,
    vars_template: &Path,
    reuse: bool,
    writable_image: bool,
) -> Result<bool> {
    if writable_image {
        if !disk_image.is_file() {
            return Err(Error::DiskImage {
                path: disk_image.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        if reuse && paths.vars.is_file() {
            return Ok(true);
        }
        copy_vars(vars_template, paths)?;
        return Ok(false);
    }
    if reuse && paths.overlay.is_file() && paths.vars.is_file() {
        return Ok(true);
    }
    // qemu-img records the backing path as given; relative paths would resolve against the
    // overlay's directory, not ours.
    let backing = std::fs::canonicalize(disk_image).map_err(|source| Error::DiskImage {
        path: disk_image.to_path_buf(),
        source,
    })?;
    create_overlay(&backing, &paths.overlay)?;
    copy_vars(vars_template, paths)?;
    Ok(false)
}

fn copy_vars(vars_template: &Path, paths: &WorkPaths) -> Result<()> {
    std::fs::copy(vars_template, &paths.vars).map_err(|source| Error::CopyVars {
        from: vars_template.to_path_buf(),
        to: paths.vars.clone(),
        source,
    })?;
    Ok(())
}

fn create_overlay(backing: &Path, overlay: &Path) -> Result<()> {
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(backing)
        .arg(overlay)
        .output()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotInstalled {
                binary: "qemu-img".into(),
                source,
            },
            _ => Error::Spawn {
                binary: "qemu-img".into(),
                source,
            },
        })?;
    if !output.status.success() {
        return Err(Error::QemuImg {
            overlay: overlay.to_path_buf(),
            backing: backing.to_path_buf(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
