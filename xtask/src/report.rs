//! `cargo xtask report`: the footprint and boot-time figures, measured, never asserted.
//!
//! Boots each QEMU board five times from its pristine image and prints the medians of what init
//! reports on the console: `boot_ms` (CLOCK_BOOTTIME at the ready line, i.e. since the kernel
//! started), `init_ms` (init's own share: from its first instruction in the initramfs to ready)
//! and `rss_kib` (init's resident memory right after ready), next to the device binary's size
//! and the disk image's size.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cairn_board::Board;

use crate::{device_bin, step, target_dir};

const BOOTS: usize = 5;

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

pub fn run(images: &[(&'static Board, PathBuf)]) -> Result<()> {
    let mut rows = Vec::new();
    for (board, dir) in images {
        let mut boot = Vec::new();
        let mut init = Vec::new();
        let mut rss = Vec::new();
        let mut wall = Vec::new();
        for i in 0..BOOTS {
            step(&format!("{} boot {}/{BOOTS}", board.name, i + 1));
            let work = target_dir().join(format!("cairn/report/{}-{i}", board.name));
            let _ = std::fs::remove_dir_all(&work);
            let started = Instant::now();
            let mut m = cairn_qemu::Machine::launch(cairn_qemu::LaunchOptions::new(
                board,
                dir.join("disk.img"),
                work,
            ))?;
            let ready = m.wait_for_line("cairn-init: ready", Duration::from_secs(240))?;
            wall.push(started.elapsed().as_secs_f64());
            let stats = m.wait_for_line("cairn-init: init_ms=", Duration::from_secs(30))?;
            let f = fields(&format!("{ready} {stats}"));
            let num = |k: &str| -> Result<f64> {
                f.get(k)
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no {k}= on the console: {ready} / {stats}"))
            };
            boot.push(num("boot_ms")?);
            init.push(num("init_ms")?);
            rss.push(num("rss_kib")?);
            m.powerdown()?;
            m.wait_exit(Duration::from_secs(60))?;
        }
        let disk = std::fs::metadata(dir.join("disk.img"))?.len();
        let bin = std::fs::metadata(device_bin(board.arch))?.len();
        rows.push((
            board.name,
            bin,
            disk,
            median(boot),
            median(init),
            median(rss),
            median(wall),
        ));
    }
    step(&format!("report (medians of {BOOTS} boots, QEMU TCG)"));
    println!(
        "{:<14} {:>12} {:>10} {:>9} {:>9} {:>9} {:>14}",
        "board", "cairn bytes", "disk MiB", "boot_ms", "init_ms", "rss_kib", "wall-to-ready"
    );
    for (name, bin, disk, boot, init, rss, wall) in rows {
        println!(
            "{:<14} {:>12} {:>10} {:>9.0} {:>9.0} {:>9.0} {:>12.1} s",
            name,
            bin,
            disk >> 20,
            boot,
            init,
            rss,
            wall
        );
    }
    println!("budgets: cairn <= 2 MiB per arch, init_ms <= 150, rss_kib <= 1024");
    Ok(())
}
