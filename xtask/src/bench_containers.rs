//! `cargo xtask bench-containers [BOARD…]`: host containers measured in the guest, under QEMU
//! TCG, per board (both QEMU boards when none is named).
//!
//! It builds an image of the board with the containers extension whose kernel command line
//! carries `cairn.bench=containers`, boots it (no TPM: DATA is plain ext4, made on this first
//! boot), and plugs in a stick whose `containers/bench.tar` is a busybox image (Debian's
//! `busybox-static` for the board's architecture). cairnd's benchmark (daemon/src/bench.rs)
//! then times, in five rounds of alternating order after a warm-up round, its own path (the archive checked,
//! imported, `ctr run` supervised) and the same image imported and started by hand with
//! `ctr images import` and `ctr run -d` in the host's network, each from the request to the container
//! answering HTTP in the guest; the store is emptied between rounds. It also reads containerd's
//! idle resident memory and cairnd's own added by supervising the container.
//!
//! Printed per board: the medians (min–max), the ratio of the medians, and the containers
//! extension's size in a slot (from image.json; `cargo xtask report` shows that one from the
//! report's own images). `cargo xtask report` takes the same [`measure`] for its rows.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use cairn_board::Board;

use crate::report::median;
use crate::{cache_dir, dev_keyring, device, device_bin, step, target_dir};

/// What one board's run measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub containerd_idle_kib: f64,
    /// Per round: cairnd's request to the container answering, ms.
    pub cairnd_ms: Vec<f64>,
    /// Per round: `ctr images import` + `ctr run -d` by hand to the container answering, ms.
    pub ctr_ms: Vec<f64>,
    /// Per round: cairnd's resident memory while supervising the container, less before, KiB.
    pub added_kib: Vec<f64>,
    /// Per round, of each start: the request to the image imported, ms.
    pub cairnd_import_ms: Vec<f64>,
    pub ctr_import_ms: Vec<f64>,
    /// The containers extension in one slot (image.json), bytes.
    pub extension_bytes: u64,
}

impl Figures {
    /// cairnd's median over the by-hand median.
    pub fn ratio(&self) -> f64 {
        median(&self.cairnd_ms) / median(&self.ctr_ms)
    }
}

pub fn command(args: &[String]) -> Result<()> {
    let boards: Vec<&'static Board> = if args.is_empty() {
        cairn_board::BOARDS
            .iter()
            .filter(|b| b.qemu.is_some())
            .collect()
    } else {
        args.iter()
            .map(|n| cairn_board::find(n))
            .collect::<Result<_, _>>()?
    };
    device()?;
    let mut all = Vec::new();
    for board in boards {
        all.push((board.name, measure(board)?));
    }
    step("host container benchmark (in the guest, QEMU TCG; median (min–max) of the rounds)");
    let range = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        format!("{:.0} ({lo:.0}–{hi:.0})", median(v))
    };
    for (name, f) in &all {
        let cairnd = median(&f.cairnd_ms);
        let by_hand = median(&f.ctr_ms);
        println!("{name}:");
        println!(
            "  containerd idle RSS                          {:.0} KiB",
            f.containerd_idle_kib
        );
        println!(
            "  cairnd's added RSS, one container            {} KiB   (budget ≤ 2048)",
            range(&f.added_kib)
        );
        println!(
            "  host container start, cairnd                 {} ms",
            range(&f.cairnd_ms)
        );
        println!(
            "  host container start, ctr run by hand        {} ms",
            range(&f.ctr_ms)
        );
        println!(
            "  … of which the import, cairnd / by hand      {} / {} ms",
            range(&f.cairnd_import_ms),
            range(&f.ctr_import_ms)
        );
        println!(
            "  cairnd / by hand                             {:.2}×  (budget ≤ 1.10×; ≤ 2000 ms: {})",
            f.ratio(),
            if cairnd <= 2000.0 { "met" } else { "MISSED" }
        );
        println!(
            "  cairnd - by hand                             {:.0} ms",
            cairnd - by_hand
        );
        println!(
            "  containers extension per slot (no k3s)       {:.1} MiB   (budget ≤ 60)",
            f.extension_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

/// Builds the bench image of `board`, boots it, runs the benchmark, and removes what it made.
pub fn measure(board: &'static Board) -> Result<Figures> {
    let work = target_dir().join(format!("cairn/bench-containers/{}", board.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = measure_in(board, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn measure_in(board: &'static Board, work: &Path) -> Result<Figures> {
    step(&format!(
        "{}: image with cairn.bench=containers on its kernel command line",
        board.name
    ));
    let image = work.join("image");
    cairn_image::build(&cairn_image::BuildOptions {
        board,
        out: image.clone(),
        cache: cache_dir(),
        device_bin: device_bin(board.arch),
        seed: format!("cairn-bench-containers-{}", board.name),
        version: env!("CARGO_PKG_VERSION").into(),
        root: cairn_image::RootExtras {
            keyring: Some(dev_keyring()?),
            kernel_args: vec!["cairn.bench=containers".into()],
            ..Default::default()
        },
        secure_boot: None,
        extension: Some(Default::default()),
    })?;
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image.join("image.json"))?)?;
    let extension_bytes = manifest["slots"][0]["extension"]["size"]
        .as_u64()
        .context("image.json has no slots[0].extension.size")?;

    let arch = board.arch.deb_arch();
    let pkg = cairn_image::deb::Cache::new(cache_dir()).fetch("busybox-static", arch)?;
    let busybox = std::fs::read(pkg.root.join("bin/busybox"))?;
    let archive = cairn_systest::oci::busybox_image(
        busybox,
        arch,
        "hello from bench\n",
        &["/bin/sh", "-c", "exec httpd -f -p 127.0.0.1:8090 -h /www"],
    )
    .archive()?;
    let stick = work.join("stick.img");
    cairn_systest::stick::make_stick(
        &stick,
        "BENCH",
        vec![cairn_systest::stick::StickFile::Bytes(
            "containers/bench.tar",
            archive,
        )],
    );

    step(&format!("{}: boot and benchmark", board.name));
    let mut opts = cairn_qemu::LaunchOptions::new(board, image.join("disk.img"), work.join("qemu"));
    opts.writable_image = true;
    let mut m = cairn_qemu::Machine::launch(opts)?;
    let result = (|| -> Result<Figures> {
        let long = Duration::from_secs(900);
        let up = m.wait_for_any(
            &[
                "cairnd: waiting for update bundles",
                "cairnd: bench containers: failed",
            ],
            long,
        )?;
        if up.needle == 1 {
            bail!("{}", up.line);
        }
        m.attach_stick(&stick, "bench")?;
        let mut f = Figures {
            extension_bytes,
            ..Default::default()
        };
        let started = Instant::now();
        loop {
            let hit = m.wait_for_any(
                &[
                    "cairnd: bench containers: containerd idle",
                    "cairnd: bench containers: round",
                    "cairnd: bench containers: done",
                    "cairnd: bench containers: failed",
                ],
                long,
            )?;
            let line = hit.line;
            eprintln!("    {line}");
            let fields = crate::report::fields(&line);
            let num = |k: &str| -> Result<f64> {
                fields
                    .get(k)
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no {k}= in {line:?}"))
            };
            if line.contains("failed") {
                bail!("{line}");
            } else if line.contains("done") {
                break;
            } else if line.contains("idle") {
                f.containerd_idle_kib = num("rss_kib")?;
            } else {
                f.cairnd_ms.push(num("cairnd_ms")?);
                f.ctr_ms.push(num("ctr_ms")?);
                f.added_kib.push(num("added_kib")?);
                f.cairnd_import_ms.push(num("cairnd_import_ms")?);
                f.ctr_import_ms.push(num("ctr_import_ms")?);
            }
            if started.elapsed() > Duration::from_secs(3600) {
                bail!("the benchmark took over an hour");
            }
        }
        if f.cairnd_ms.is_empty() {
            bail!("no rounds were measured");
        }
        Ok(f)
    })();
    let _ = m.quit();
    let _ = m.wait_exit(Duration::from_secs(60));
    result
}
