//! `cargo xtask bench-install`: Cairn's installer write path next to RAUC 1.8 and the machine's
//! limit, in one run of `../shared/bench/rauc-baseline.sh` (or `$CAIRN_RAUC_BASELINE`).
//!
//! The script makes a 512 MiB payload and times, side by side and in rotated order, `rauc
//! install`, an in-place `dd` + `openssl dgst -sha256` of the same bytes (the limit), and the
//! candidate. Here the candidate is `cairnctl bundle extract` of a bundle holding that payload
//! as `rootfs`: signature check, every 4 MiB chunk hashed before it is written, large writes,
//! fsync, and the read-back (page cache dropped) hashed and compared, the same code path as an
//! install into a slot. Preparing the bundle (`bench-prep`, run by the script once) is untimed.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, root, run, step, target_dir};

pub fn run_bench() -> Result<()> {
    step("building cairnctl (release)");
    run(cargo().args(["build", "--release", "--quiet", "--package", "cairnctl"]))?;
    let cairnctl = target_dir().join("release/cairnctl");
    let script = std::env::var_os("CAIRN_RAUC_BASELINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/bench/rauc-baseline.sh"));
    if !script.is_file() {
        bail!("{} not found (set CAIRN_RAUC_BASELINE)", script.display());
    }
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    step("rauc-baseline.sh with Cairn as the candidate");
    let status = Command::new("bash")
        .arg(&script)
        .env("CANDIDATE_PREP_CMD", format!("{} bench-prep", xtask.display()))
        .env(
            "CANDIDATE_CMD",
            format!(
                "{} bundle extract --pubkey \"$RB_DIR/cairn.pub\" --payload rootfs --to \"$RB_TARGET\" \"$RB_DIR/payload.cairn\"",
                cairnctl.display()
            ),
        )
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// Untimed: a key and a bundle holding `$RB_PAYLOAD` as its rootfs, in `$RB_DIR`.
pub fn prep() -> Result<()> {
    let dir = PathBuf::from(std::env::var_os("RB_DIR").context("RB_DIR is not set")?);
    let payload = PathBuf::from(std::env::var_os("RB_PAYLOAD").context("RB_PAYLOAD is not set")?);
    let key = cairn_bundle::SecretKey::generate()?;
    std::fs::write(dir.join("cairn.pub"), key.public().to_text())?;
    let out = dir.join("payload.cairn");
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
    cairn_bundle::create(
        &mut file,
        &cairn_bundle::ManifestMeta {
            compatible: vec!["bench".into()],
            arch: std::env::consts::ARCH.into(),
            version: cairn_bundle::Version::new(1, 0, 0),
            security_version: 0,
            min_installed_version: cairn_bundle::Version::new(0, 0, 0),
            created: 0,
        },
        &[cairn_bundle::PayloadSource {
            name: "rootfs".into(),
            role: cairn_bundle::Role::Rootfs,
            path: payload,
            chunk_size: cairn_image::bundle_input::ROOTFS_CHUNK,
        }],
        &key,
    )?;
    use std::io::Write as _;
    file.flush()?;
    Ok(())
}
