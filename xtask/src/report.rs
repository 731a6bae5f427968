//! `cargo xtask report`: the footprint and boot-time figures, measured, never asserted.
//!
//! For each QEMU board, three series of five boots each, medians printed side by side. The
//! Raspberry Pi 4 image boots under QEMU's `raspi4b` with the harness in the firmware's place
//! (`cairn_qemu::rpi`): direct kernel boot, so its wall time has no firmware stage, unlike the
//! UEFI boards', whose wall time includes AAVMF/OVMF and systemd-boot.
//!
//! - **slot A**: the pristine image, as flashed.
//! - **slot B**: a copy of the image on which slot B was put on trial and marked good through the
//!   same systemd-boot backend the device uses, so the firmware picks B's entry, kernel and root.
//! - **no verity**: the same image built with a benchmark-only device binary whose init mounts the
//!   root partition directly (feature `bench-unverified-root`); the difference to slot A is what
//!   dm-verity costs at boot.
//!
//! The figures are what init reports on the console: `boot_ms` (CLOCK_BOOTTIME at the ready
//! line, i.e. since the kernel started), `init_ms` (init's own share, from its first instruction
//! in the initramfs to ready) and `rss_kib` (init's resident memory right after ready).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use cairn_board::Board;
use cairn_boot::Slot;

use crate::{cache_dir, cargo, device_bin, run as run_cmd, step, target_dir};

const BOOTS: usize = 5;
const UNVERIFIED_FEATURE: &str = "bench-unverified-root";

/// `key=value` words of console lines.
pub fn fields(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians of one series of boots.
struct Series {
    slot: String,
    boot_ms: f64,
    init_ms: f64,
    rss_kib: f64,
    wall_s: f64,
}

/// Boots `disk` `BOOTS` times. `writable` boots the file itself (a private copy), otherwise a
/// fresh overlay (a fresh SD card copy on the Raspberry Pi) each time.
fn series(board: &'static Board, label: &str, disk: &Path, writable: bool) -> Result<Series> {
    let (mut boot, mut init, mut rss, mut wall) = (vec![], vec![], vec![], vec![]);
    let mut slot = String::new();
    for i in 0..BOOTS {
        step(&format!("{} {label}: boot {}/{BOOTS}", board.name, i + 1));
        let work = target_dir().join(format!("cairn/report/{}-{label}-{i}", board.name));
        let _ = std::fs::remove_dir_all(&work);
        let (ready, stats, seconds) = if is_pi(board) {
            boot_pi(disk, work, writable)?
        } else {
            boot_uefi(board, disk, work, writable)?
        };
        wall.push(seconds);
        let f = fields(&format!("{ready} {stats}"));
        let num = |k: &str| -> Result<f64> {
            f.get(k)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {k}= on the console: {ready} / {stats}"))
        };
        boot.push(num("boot_ms")?);
        init.push(num("init_ms")?);
        rss.push(num("rss_kib")?);
        slot = f.get("slot").cloned().unwrap_or_default();
    }
    Ok(Series {
        slot,
        boot_ms: median(boot),
        init_ms: median(init),
        rss_kib: median(rss),
        wall_s: median(wall),
    })
}

/// Whether the board is a Raspberry Pi, booted under raspi4b with the harness as its firmware.
fn is_pi(board: &Board) -> bool {
    matches!(board.boot, cairn_board::BootScheme::RpiTryboot { .. })
}

/// One boot through UEFI firmware: the ready line, the stats line, seconds from launch to ready.
fn boot_uefi(
    board: &'static Board,
    disk: &Path,
    work: PathBuf,
    writable: bool,
) -> Result<(String, String, f64)> {
    let mut opts = cairn_qemu::LaunchOptions::new(board, disk, work);
    opts.writable_image = writable;
    let started = Instant::now();
    let mut m = cairn_qemu::Machine::launch(opts)?;
    let ready = m.wait_for_line("cairn-init: ready", Duration::from_secs(240))?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = m.wait_for_line("cairn-init: init_ms=", Duration::from_secs(30))?;
    m.powerdown()?;
    m.wait_exit(Duration::from_secs(60))?;
    Ok((ready, stats, seconds))
}

/// One power-on of a Raspberry Pi 4 under raspi4b; the wall time includes the harness reading
/// the SD card and patching the device tree, as the firmware's own work would count.
fn boot_pi(disk: &Path, work: PathBuf, writable: bool) -> Result<(String, String, f64)> {
    let mut pi = cairn_qemu::rpi::Pi4::new(cairn_qemu::rpi::PiOptions {
        writable_image: writable,
        ..cairn_qemu::rpi::PiOptions::new(disk, work)
    })?;
    let started = Instant::now();
    pi.power_on()?;
    let m = pi.machine().context("the Pi did not start")?;
    let ready = m.wait_for_line("cairn-init: ready", Duration::from_secs(240))?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = m.wait_for_line("cairn-init: init_ms=", Duration::from_secs(30))?;
    // No ACPI power button on a Pi: the power is cut.
    pi.power_off()?;
    Ok((ready, stats, seconds))
}

/// A private copy of the image whose committed slot is B.
fn slot_b_disk(board: &Board, image_dir: &Path) -> Result<PathBuf> {
    let dir = target_dir().join(format!("cairn/report/{}-slot-b", board.name));
    let (disk, mut sd) = crate::private_copy(image_dir, &dir)?;
    sd.set_trial(Slot::B, 1)?;
    sd.mark_good(Slot::B)?;
    if sd.status()?.next != Some(Slot::B) {
        bail!(
            "slot B is not the next boot after mark_good on {}",
            disk.display()
        );
    }
    Ok(disk)
}

/// The board's image built around a device binary without dm-verity in init.
fn unverified_image(board: &'static Board) -> Result<PathBuf> {
    let bench_target = target_dir().join("cairn/bench-target");
    run_cmd(
        cargo()
            .args(["build", "--quiet", "--package", "cairn-device"])
            .args(["--profile", "device", "--features", UNVERIFIED_FEATURE])
            .args(["--target", board.arch.rust_target()])
            .arg("--target-dir")
            .arg(&bench_target),
    )?;
    let bin = bench_target
        .join(board.arch.rust_target())
        .join("device/cairn");
    let out = target_dir().join(format!("cairn/report/{}-unverified-image", board.name));
    let version = env!("CARGO_PKG_VERSION").to_string();
    cairn_image::build(&cairn_image::BuildOptions {
        board,
        out: out.clone(),
        cache: cache_dir(),
        device_bin: bin,
        seed: format!("cairn-{}-{}", board.name, version),
        version,
        root: Default::default(),
        extension: Some(Default::default()),
    })?;
    Ok(out.join("disk.img"))
}

pub fn run(images: &[(&'static Board, PathBuf)]) -> Result<()> {
    let mut rows = Vec::new();
    for (board, dir) in images.iter().filter(|(b, _)| b.qemu.is_some() || is_pi(b)) {
        let a = series(board, "slot-a", &dir.join("disk.img"), false)?;
        let b = series(board, "slot-b", &slot_b_disk(board, dir)?, true)?;
        step(&format!(
            "{}: benchmark image without dm-verity",
            board.name
        ));
        let plain = series(board, "no-verity", &unverified_image(board)?, false)?;
        if a.slot != "a" || b.slot != "b" {
            bail!(
                "{}: expected slots a and b, the ready lines said {} and {}",
                board.name,
                a.slot,
                b.slot
            );
        }
        let disk = std::fs::metadata(dir.join("disk.img"))?.len();
        let bin = std::fs::metadata(device_bin(board.arch))?.len();
        rows.push((board.name, bin, disk, a, b, plain));
    }
    // What the containers extension adds to each slot, from the images' image.json.
    let mut extensions = Vec::new();
    for (board, dir) in images {
        let text = std::fs::read_to_string(dir.join("image.json"))?;
        let m: serde_json::Value = serde_json::from_str(&text)?;
        extensions.push((board.name, m["extension"]["size"].as_u64()));
    }

    step(&format!("report (medians of {BOOTS} boots each, QEMU TCG)"));
    println!(
        "{:<14} {:>11} {:>8} {:>9} {:>9} {:>8} {:>8} {:>13}",
        "board",
        "cairn bytes",
        "disk MiB",
        "series",
        "boot_ms",
        "init_ms",
        "rss_kib",
        "wall-to-ready"
    );
    for (name, bin, disk, a, b, plain) in &rows {
        for (label, s) in [("slot A", a), ("slot B", b), ("no verity", plain)] {
            println!(
                "{:<14} {:>11} {:>8} {:>9} {:>9.0} {:>8.0} {:>8.0} {:>11.1} s",
                name,
                bin,
                disk >> 20,
                label,
                s.boot_ms,
                s.init_ms,
                s.rss_kib,
                s.wall_s
            );
        }
        println!(
            "{:<14} B/A boot_ms {:.2}x; dm-verity costs {:+.0} ms boot_ms ({:+.1}%), {:+.0} ms init_ms",
            name,
            b.boot_ms / a.boot_ms,
            a.boot_ms - plain.boot_ms,
            100.0 * (a.boot_ms - plain.boot_ms) / plain.boot_ms,
            a.init_ms - plain.init_ms,
        );
    }
    for (name, size) in &extensions {
        match size {
            Some(size) => println!(
                "{:<14} containers extension {:.1} MiB per slot{}",
                name,
                *size as f64 / (1024.0 * 1024.0),
                if *size > cairn_image::extension::BUDGET {
                    "  OVER BUDGET"
                } else {
                    ""
                }
            ),
            None => println!("{name:<14} no containers extension"),
        }
    }
    println!(
        "budgets: cairn <= 2 MiB per arch, init_ms <= 150, rss_kib <= 1024, containers \
         extension <= 60 MiB per slot"
    );
    Ok(())
}
