//! `cargo xtask report`: every figure Cairn claims, measured, in one table with its budget.
//!
//! Per board, five runs; each run boots a fresh private copy of the image twice, with a fresh
//! software TPM on the UEFI boards (as `cargo xtask demo` boots it): the first boot encrypts STATE
//! and DATA and seals the key, the second unlocks them with the TPM. Boot figures are taken from
//! both boots of every run (ten samples); unlock times from the boot they belong to (five each).
//! The Raspberry Pi 4 image boots under QEMU's `raspi4b` with the harness in the firmware's place
//! (`cairn_qemu::rpi`) and has no TPM.
//!
//! What the console says, and what each row is made of:
//!
//! - `cairn-init: ready … boot_ms=B` and `cairn-init: init_ms=I rss_kib=R`: `B` is
//!   `CLOCK_BOOTTIME` at ready (since the kernel started), `I` init's own share (its first
//!   instruction in the initramfs to ready). kernel → init is `B - I`.
//! - firmware → kernel is the host's wall time from launching QEMU to seeing the ready line,
//!   minus `B`: QEMU's own start, the firmware and the boot loader (the harness on the Pi).
//! - `cairnd: management API on port … boot_ms=A rss_kib=C`: ready → API serving is `A - B`
//!   (on the first boot it includes encrypting STATE and DATA, so it is reported for later boots).
//! - `cairnd: encrypted STATE and DATA in S s` (first boot) and `cairnd: unlocked STATE and DATA
//!   with the TPM in U ms` (later boots).
//! - Host containers (containerd's memory, cairnd's added memory, a container's start next to
//!   `ctr run` by hand): `cargo xtask bench-containers`' [`crate::bench_containers::measure`],
//!   once per QEMU board, on an image of its own.
//! - Sizes from the image's `image.json` and the device binaries; install throughput from
//!   `cargo xtask bench-install` (RAUC and the machine's limit, `../shared/bench/`), API latency
//!   from `cargo xtask bench-api`, both on the host, once.
//!
//! The table is printed and written to `docs/benchmarks.md`. To add a row, push a [`Row`] onto
//! the [`Table`] in [`run`] (see "More rows" there): a name, a unit, a budget, and samples per
//! column; medians, min/max and met/missed follow.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use cairn_board::Board;

use crate::{cargo, device_bin, root, step, target_dir, ARCHES};

/// Runs per board; each boots twice (first boot, later boot). `CAIRN_REPORT_RUNS` overrides
/// it for a quick look (the table then says how many it took).
const RUNS: usize = 5;

fn runs() -> usize {
    std::env::var("CAIRN_REPORT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(RUNS)
}

/// `CAIRN_REPORT_HOST=0` leaves out the host benchmarks (install, API), which take minutes.
fn host_benches() -> bool {
    std::env::var("CAIRN_REPORT_HOST").map_or(true, |v| v != "0")
}

/// `CAIRN_REPORT_CONTAINERS=0` leaves out the host container benchmark (an image build and a
/// boot per QEMU board).
fn containers_bench() -> bool {
    std::env::var("CAIRN_REPORT_CONTAINERS").map_or(true, |v| v != "0")
}

/// The column of figures measured on the host rather than on a board.
pub const HOST: &str = "host";

/// `key=value` words of console lines.
pub fn fields(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a row's median must stay under or over; `only` limits it to one column.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    None,
    AtMost(f64),
    AtLeast(f64),
}

/// One line of the table: samples per column (board name or [`HOST`]).
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub budget: Budget,
    /// Columns the budget applies to; empty means all.
    pub budget_on: Vec<&'static str>,
    pub samples: BTreeMap<String, Vec<f64>>,
}

impl Row {
    pub fn new(name: &str, unit: &'static str, budget: Budget) -> Self {
        Self {
            name: name.into(),
            unit,
            budget,
            budget_on: Vec::new(),
            samples: BTreeMap::new(),
        }
    }

    /// The budget holds for `column` only (reported for the others).
    pub fn budget_on(&mut self, column: &'static str) -> &mut Self {
        if !self.budget_on.contains(&column) {
            self.budget_on.push(column);
        }
        self
    }

    pub fn add(&mut self, column: &str, value: f64) {
        self.samples
            .entry(column.to_string())
            .or_default()
            .push(value);
    }

    fn budget_text(&self) -> String {
        let on = if self.budget_on.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.budget_on.join(", "))
        };
        match self.budget {
            Budget::None => "—".into(),
            Budget::AtMost(v) => format!("≤ {}{on}", num(v)),
            Budget::AtLeast(v) => format!("≥ {}{on}", num(v)),
        }
    }

    /// `met`, `missed (board…)`, or `—` without a budget or figures.
    fn verdict(&self) -> String {
        let mut missed = Vec::new();
        let mut judged = 0;
        for (col, v) in &self.samples {
            if !self.budget_on.is_empty() && !self.budget_on.contains(&col.as_str()) {
                continue;
            }
            let m = median(v);
            let ok = match self.budget {
                Budget::None => continue,
                Budget::AtMost(b) => m <= b,
                Budget::AtLeast(b) => m >= b,
            };
            judged += 1;
            if !ok {
                missed.push(col.clone());
            }
        }
        match (judged, missed.is_empty()) {
            (0, _) => "—".into(),
            (_, true) => "met".into(),
            (_, false) => format!("MISSED ({})", missed.join(", ")),
        }
    }

    fn cell(&self, column: &str) -> String {
        match self.samples.get(column) {
            None => String::new(),
            Some(v) if v.len() == 1 => num(v[0]),
            Some(v) => {
                let (lo, hi) = v
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
                format!("{} ({}–{})", num(median(v)), num(lo), num(hi))
            }
        }
    }
}

/// Whole numbers as such, the rest with one decimal (two below 10).
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The rows, in order, and the columns they fill.
#[derive(Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

impl Table {
    /// The row named `name`, made with `unit` and `budget` the first time.
    pub fn row(&mut self, name: &str, unit: &'static str, budget: Budget) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.name == name) {
            return &mut self.rows[i];
        }
        self.rows.push(Row::new(name, unit, budget));
        self.rows.last_mut().expect("just pushed")
    }

    fn header(&self) -> Vec<String> {
        let mut h = vec!["figure".to_string(), "unit".into(), "budget".into()];
        h.extend(self.columns.iter().cloned());
        h.push("verdict".into());
        h
    }

    fn lines(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| {
                let mut l = vec![r.name.clone(), r.unit.to_string(), r.budget_text()];
                l.extend(self.columns.iter().map(|c| r.cell(c)));
                l.push(r.verdict());
                l
            })
            .collect()
    }

    /// Aligned plain text for the terminal.
    pub fn text(&self) -> String {
        let mut all = vec![self.header()];
        all.extend(self.lines());
        let widths: Vec<usize> = (0..all[0].len())
            .map(|i| all.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for l in &all {
            let cells: Vec<String> = l
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        out
    }

    /// A Markdown table.
    pub fn markdown(&self) -> String {
        let h = self.header();
        let mut out = format!("| {} |\n", h.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(h.len()));
        for l in self.lines() {
            let _ = writeln!(out, "| {} |", l.join(" | "));
        }
        out
    }
}

/// What one boot said.
#[derive(Debug, Default)]
struct Boot {
    wall_ms: f64,
    boot_ms: f64,
    init_ms: f64,
    init_rss_kib: f64,
    /// Of init's resident memory, the pages of its binary (shared with cairnd's, same file).
    init_file_kib: Option<f64>,
    /// init's resident memory once it is only supervising (`cairn-init: supervising:`).
    supervising_rss_kib: Option<f64>,
    supervising_file_kib: Option<f64>,
    /// Stage 2's loading of the late modules after ready, and cairnd's wait for it.
    late_ms: Option<f64>,
    cairnd_wait_ms: Option<f64>,
    api_boot_ms: f64,
    cairnd_rss_kib: f64,
    /// The first boot's encryption (ms), or a later boot's TPM unlock (ms).
    encrypt_ms: Option<f64>,
    unlock_ms: Option<f64>,
}

fn number(f: &BTreeMap<String, String>, key: &str, line: &str) -> Result<f64> {
    f.get(key)
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .with_context(|| format!("no {key}= on the console: {line}"))
}

/// The number just before `unit` after `marker` in `line`: `… in 4.5 s` → 4.5.
fn number_before(line: &str, marker: &str, unit: &str) -> Option<f64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let end = rest.find(unit)?;
    rest[..end].trim().parse().ok()
}

/// Reads a booted machine's console up to cairnd serving its API.
fn watch(m: &mut cairn_qemu::Machine, started: Instant, encrypted: bool) -> Result<Boot> {
    let ready = m.wait_for_line("cairn-init: ready", Duration::from_secs(300))?;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let stats = m.wait_for_line("cairn-init: init_ms=", Duration::from_secs(30))?;
    let api = m.wait_for_line("cairnd: management API on port", Duration::from_secs(300))?;
    let (r, s, a) = (fields(&ready), fields(&stats), fields(&api));
    let mut boot = Boot {
        wall_ms,
        boot_ms: number(&r, "boot_ms", &ready)?,
        init_ms: number(&s, "init_ms", &stats)?,
        init_rss_kib: number(&s, "rss_kib", &stats)?,
        init_file_kib: number(&s, "file_kib", &stats).ok(),
        api_boot_ms: number(&a, "boot_ms", &api)?,
        cairnd_rss_kib: number(&a, "rss_kib", &api)?,
        ..Default::default()
    };
    // Printed about two seconds after the boot work, before or after the API line.
    let supervising = line_with(m, "cairn-init: supervising: ", Duration::from_secs(30))?;
    let sv = fields(&supervising);
    boot.supervising_rss_kib = number(&sv, "rss_kib", &supervising).ok();
    boot.supervising_file_kib = number(&sv, "file_kib", &supervising).ok();
    let lines = m.lines();
    boot.late_ms = lines
        .iter()
        .filter(|l| l.contains(" late kernel modules loaded ("))
        .find_map(|l| number_before(l, " at a time) in ", " ms"));
    boot.cairnd_wait_ms = lines
        .iter()
        .find_map(|l| number_before(l, "cairnd: waited ", " ms for init's late kernel modules"));
    if encrypted {
        boot.encrypt_ms = lines
            .iter()
            .find_map(|l| number_before(l, "cairnd: encrypted STATE and DATA in ", " s"))
            .map(|s| s * 1000.0);
        boot.unlock_ms = lines.iter().find_map(|l| {
            number_before(l, "cairnd: unlocked STATE and DATA with the TPM in ", " ms")
        });
    }
    Ok(boot)
}

/// The first console line so far containing `needle`, whatever the waits before matched;
/// polls until `timeout`.
fn line_with(m: &cairn_qemu::Machine, needle: &str, timeout: Duration) -> Result<String> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(l) = m.lines().into_iter().find(|l| l.contains(needle)) {
            return Ok(l);
        }
        if Instant::now() >= until {
            bail!("no console line with {needle:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the board is a Raspberry Pi, booted under raspi4b with the harness as its firmware.
fn is_pi(board: &Board) -> bool {
    matches!(board.boot, cairn_board::BootScheme::RpiTryboot { .. })
}

/// One run: a private copy of the image booted twice (with one software TPM on UEFI boards),
/// with Secure Boot on (the keys in `secure_boot` enrolled) or off.
fn run_twice(
    board: &'static Board,
    image_dir: &Path,
    run: usize,
    secure_boot: Option<&Path>,
) -> Result<[Boot; 2]> {
    let sb = if secure_boot.is_some() { "-sb" } else { "" };
    let work = target_dir().join(format!("cairn/report/{}{sb}-{run}", board.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let disk = work.join("disk.img");
    cairn_image::copy_sparse(&image_dir.join("disk.img"), &disk)?;
    let mut boots = Vec::new();
    for n in 0..2 {
        step(&format!(
            "{}{} run {}/{}: {} boot",
            board.name,
            if secure_boot.is_some() {
                ", Secure Boot on,"
            } else {
                ""
            },
            run + 1,
            runs(),
            if n == 0 { "first" } else { "second" }
        ));
        let boot = if is_pi(board) {
            let mut pi = cairn_qemu::rpi::Pi4::new(cairn_qemu::rpi::PiOptions {
                writable_image: true,
                ..cairn_qemu::rpi::PiOptions::new(&disk, work.join(format!("pi-{n}")))
            })?;
            let started = Instant::now();
            pi.power_on()?;
            let m = pi.machine().context("the Pi did not start")?;
            let boot = watch(m, started, false)?;
            // No ACPI power button on a Pi: the power is cut, as it would be.
            pi.power_off()?;
            boot
        } else {
            let tpm = cairn_qemu::Swtpm::start(&work.join("tpm"), 0)?;
            let mut opts =
                cairn_qemu::LaunchOptions::new(board, &disk, work.join(format!("qemu-{n}")));
            opts.writable_image = true;
            opts.tpm = Some(tpm.socket_path().to_path_buf());
            opts.secure_boot = secure_boot.map(Path::to_path_buf);
            let started = Instant::now();
            let mut m = cairn_qemu::Machine::launch(opts)?;
            let boot = watch(&mut m, started, true)?;
            m.powerdown()?;
            m.wait_exit(Duration::from_secs(120))?;
            drop(tpm);
            boot
        };
        boots.push(boot);
    }
    let second = boots.pop().expect("two boots");
    let first = boots.pop().expect("two boots");
    Ok([first, second])
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// The boot rows of one board.
fn boot_rows(table: &mut Table, board: &'static Board, image_dir: &Path) -> Result<()> {
    let col = board.name;
    for run in 0..runs() {
        let [first, later] = run_twice(board, image_dir, run, None)?;
        for b in [&first, &later] {
            table
                .row("firmware → kernel", "ms", Budget::None)
                .add(col, (b.wall_ms - b.boot_ms).round());
            table
                .row("kernel → init", "ms", Budget::None)
                .add(col, b.boot_ms - b.init_ms);
            table
                .row("init → ready", "ms", Budget::AtMost(150.0))
                .budget_on("qemu-aarch64")
                .add(col, b.init_ms);
            table
                .row("RSS of init at ready", "KiB", Budget::None)
                .add(col, b.init_rss_kib);
            if let Some(kib) = b.init_file_kib {
                table
                    .row("… of which its binary's pages", "KiB", Budget::None)
                    .add(col, kib);
            }
            if let Some(kib) = b.supervising_rss_kib {
                table
                    .row("RSS of init, supervising", "KiB", Budget::AtMost(1024.0))
                    .add(col, kib);
            }
            if let Some(kib) = b.supervising_file_kib {
                table
                    .row(
                        "… of which its binary's pages, supervising",
                        "KiB",
                        Budget::None,
                    )
                    .add(col, kib);
            }
            if let Some(ms) = b.late_ms {
                table
                    .row("late modules, loaded after ready", "ms", Budget::None)
                    .add(col, ms);
            }
            if let Some(ms) = b.cairnd_wait_ms {
                table
                    .row("… of which cairnd waited for", "ms", Budget::None)
                    .add(col, ms);
            }
            table
                .row(
                    "RSS of cairnd serving the API",
                    "KiB",
                    Budget::AtMost(16384.0),
                )
                .add(col, b.cairnd_rss_kib);
        }
        table
            .row(
                "ready → API serving, later boots",
                "ms",
                Budget::AtMost(300.0),
            )
            .add(col, later.api_boot_ms - later.boot_ms);
        table
            .row("ready → API serving, first boot", "ms", Budget::None)
            .add(col, first.api_boot_ms - first.boot_ms);
        if let Some(ms) = first.encrypt_ms {
            table
                .row(
                    "first boot: encrypt STATE+DATA, seal to TPM",
                    "ms",
                    Budget::None,
                )
                .add(col, ms);
        }
        if let Some(ms) = later.unlock_ms {
            table
                .row("later boots: TPM unlock of STATE+DATA", "ms", Budget::None)
                .add(col, ms);
        }
    }
    Ok(())
}

/// Secure Boot off and on, side by side, on one image signed with the development keys (whose
/// UKIs carry the release's PCR 11 signature): the later boot of each run, from launch and from
/// the kernel to ready, and its TPM unlock with the signed policy (PCR 11 alone with Secure
/// Boot off; PCR 11 and PCR 7 with it on).
fn secure_boot_rows(table: &mut Table, board: &'static Board) -> Result<()> {
    let col = board.name;
    let keys = crate::dev_secure_boot_keys()?;
    let image = crate::signed_image(board, &keys)?;
    for run in 0..runs() {
        let [_, off] = run_twice(board, &image, run, None)?;
        let [_, on] = run_twice(board, &image, run, Some(&keys))?;
        for (what, off, on) in [
            ("launch → ready", Some(off.wall_ms), Some(on.wall_ms)),
            ("kernel → ready", Some(off.boot_ms), Some(on.boot_ms)),
            ("TPM unlock, signed PCR policy", off.unlock_ms, on.unlock_ms),
        ] {
            for (mode, value) in [("off", off), ("on", on)] {
                if let Some(v) = value {
                    table
                        .row(
                            &format!("signed image, Secure Boot {mode}: {what}"),
                            "ms",
                            Budget::None,
                        )
                        .add(col, v.round());
                }
            }
        }
    }
    Ok(())
}

/// `CAIRN_REPORT_SECUREBOOT=0` leaves out the Secure Boot rows (a signed image and two more
/// runs per UEFI board).
fn secure_boot_bench() -> bool {
    std::env::var("CAIRN_REPORT_SECUREBOOT").map_or(true, |v| v != "0")
}

/// The size rows of one board, from its image.json.
fn size_rows(table: &mut Table, board: &'static Board, image_dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(image_dir.join("image.json"))?;
    let m: serde_json::Value = serde_json::from_str(&text)?;
    let get = |v: &serde_json::Value, what: &str| {
        v.as_u64()
            .with_context(|| format!("{}: no {what} in image.json", board.name))
    };
    let kernel = get(&m["kernel"]["image_size"], "kernel.image_size")?;
    let initramfs = get(&m["kernel"]["initramfs_size"], "kernel.initramfs_size")?;
    let slot = &m["slots"][0];
    let root = get(&slot["hash_offset"], "slots[0].hash_offset")?
        + get(&slot["hash_size"], "slots[0].hash_size")?;
    let ext = slot["extension"]["size"].as_u64().unwrap_or(0);
    let col = board.name;
    table
        // In bytes: a size rounded to 0.1 MiB could pass a budget it misses by a few KiB.
        .row(
            "device binary",
            "bytes",
            Budget::AtMost(4.0 * 1024.0 * 1024.0),
        )
        .add(col, std::fs::metadata(device_bin(board.arch))?.len() as f64);
    table
        .row("slot: kernel", "MiB", Budget::None)
        .add(col, mib(kernel));
    table
        .row("slot: initramfs", "MiB", Budget::None)
        .add(col, mib(initramfs));
    table
        .row("slot: root + verity", "MiB", Budget::None)
        .add(col, mib(root));
    table
        .row(
            "slot: containers extension",
            "MiB",
            Budget::AtMost(mib(cairn_image::extension::BUDGET)),
        )
        .add(col, mib(ext));
    table
        .row("slot footprint (sum of the four)", "MiB", Budget::None)
        .add(col, mib(kernel + initramfs + root + ext));
    table
        .row("image size", "MiB", Budget::None)
        .add(col, mib(get(&m["disk"]["size"], "disk.size")?));
    Ok(())
}

/// Runs `cmd` with its output shown and returns its standard output.
fn tee(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(text)
}

/// Install throughput next to RAUC and the machine's limit: bench-install's RESULT line.
fn install_rows(table: &mut Table) -> Result<()> {
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let text = tee(Command::new(xtask).arg("bench-install"))?;
    let line = text
        .lines()
        .rfind(|l| l.starts_with("RESULT "))
        .context("bench-install printed no RESULT line")?;
    let f = fields(line);
    let cand = number(&f, "candidate_mibs", line)?;
    let rauc = number(&f, "rauc_install_mibs", line)?;
    let limit = number(&f, "limit_mibs", line)?;
    table
        .row("install: Cairn", "MiB/s", Budget::None)
        .add(HOST, cand);
    table
        .row("install: RAUC", "MiB/s", Budget::None)
        .add(HOST, rauc);
    table
        .row(
            "install: machine limit (dd + sha256)",
            "MiB/s",
            Budget::None,
        )
        .add(HOST, limit);
    table
        .row("install: Cairn / machine limit", "×", Budget::AtLeast(0.8))
        .add(HOST, (cand / limit * 100.0).round() / 100.0);
    Ok(())
}

/// Host containers in the guest: `cargo xtask bench-containers`' figures for one board.
fn container_rows(table: &mut Table, col: &str, f: &crate::bench_containers::Figures) {
    table
        .row("containerd idle RSS", "KiB", Budget::None)
        .add(col, f.containerd_idle_kib);
    let added = table.row(
        "cairnd's added RSS, one host container",
        "KiB",
        Budget::AtMost(2048.0),
    );
    for v in &f.added_kib {
        added.add(col, *v);
    }
    let start = table.row(
        "host container start: cairnd's request → answering",
        "ms",
        Budget::AtMost(2000.0),
    );
    for v in &f.cairnd_ms {
        start.add(col, *v);
    }
    let hand = table.row(
        "host container start: ctr import + run by hand",
        "ms",
        Budget::None,
    );
    for v in &f.ctr_ms {
        hand.add(col, *v);
    }
    table
        .row(
            "host container start: cairnd / by hand (medians)",
            "×",
            Budget::AtMost(1.1),
        )
        .add(col, (f.ratio() * 100.0).round() / 100.0);
}

/// API Version latency: bench-api's `p50 … p99 …` line.
fn api_rows(table: &mut Table) -> Result<()> {
    let text = tee(cargo().args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "cairn-api",
        "--example",
        "api_bench",
    ]))?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("p50 "))
        .context("bench-api printed no p50 line")?;
    let after = |key: &str| -> Result<f64> {
        number_before(line, key, " ms").with_context(|| format!("no {key} in {line:?}"))
    };
    let budget = number_before(line, "budget p99 ≤ ", " ms").unwrap_or(f64::NAN);
    table
        .row("API Version call p50", "ms", Budget::None)
        .add(HOST, after("p50 ")?);
    table
        .row(
            "API Version call p99",
            "ms",
            if budget.is_nan() {
                Budget::None
            } else {
                Budget::AtMost(budget)
            },
        )
        .add(HOST, after("p99 ")?);
    Ok(())
}

pub fn run(images: &[(&'static Board, PathBuf)]) -> Result<()> {
    let mut table = Table::default();
    let boards: Vec<_> = images
        .iter()
        .filter(|(b, _)| b.qemu.is_some() || is_pi(b))
        .collect();
    table.columns = boards.iter().map(|(b, _)| b.name.to_string()).collect();
    table.columns.push(HOST.into());
    for (board, dir) in &boards {
        boot_rows(&mut table, board, dir)?;
    }
    if secure_boot_bench() {
        for (board, _) in boards.iter().filter(|(b, _)| {
            matches!(b.boot, cairn_board::BootScheme::SystemdBoot { .. }) && b.qemu.is_some()
        }) {
            secure_boot_rows(&mut table, board)?;
        }
    }
    for (board, dir) in &boards {
        size_rows(&mut table, board, dir)?;
    }
    if host_benches() {
        // A host benchmark that fails costs its rows, not the boots measured before it.
        step("bench-install (host)");
        if let Err(e) = install_rows(&mut table) {
            eprintln!("    bench-install: {e:#}; no install rows");
        }
        step("bench-api (host)");
        if let Err(e) = api_rows(&mut table) {
            eprintln!("    bench-api: {e:#}; no API rows");
        }
    }
    if containers_bench() {
        for (board, _) in boards.iter().filter(|(b, _)| b.qemu.is_some()) {
            step(&format!("bench-containers ({})", board.name));
            match crate::bench_containers::measure(board) {
                Ok(f) => container_rows(&mut table, board.name, &f),
                Err(e) => eprintln!("    bench-containers: {e:#}; no container rows"),
            }
        }
    }
    // More rows: measure, then `table.row(name, unit, budget).add(column, value)` once per
    // sample (columns are board names and HOST).

    step(&format!(
        "report (per board: {} runs of a first and a later boot, QEMU TCG; median (min–max))",
        runs()
    ));
    let text = table.text();
    print!("{text}");
    write_doc(&table)?;
    Ok(())
}

/// What the rows are made of, below the table.
const NOTES: &str = "
Reading the table:

- firmware → kernel includes QEMU's own start and, on the UEFI boards, the firmware and
  systemd-boot; on rpi4 it is the harness reading the SD card in the firmware's place.
- init → ready: stage 1 (modules, dm-verity, the containers extension, switch_root), the exec
  of the root's init and stage 2 (the boot partition, starting cairnd). init's console line
  `slot a: N modules loaded (k at a time) in … ms` gives the module share of each boot; the QEMU
  boards load one at a time (`cairn.module_workers=1`, docs/boot-slots.md).
- RSS of init at ready is `VmRSS` at the ready line; the next row is the part that is pages of
  its binary (mapped from the root's page cache, which cairnd, the same file, shares), the rest
  is heap and stacks. After the boot work (the late modules, containers) init drops its mappings
  of the binary's read-only pages (init/src/trim.rs; the pages stay in the page cache) and,
  about two seconds of supervising later, prints `cairn-init: supervising: rss_kib=…`: that is
  the RSS of init, supervising, which the 1 MiB budget applies to.
  Why it is over budget, measured on qemu-aarch64: right after the drop init holds 496 KiB
  (448 KiB of it file pages), and the supervising loop brings it back to about 1.9 MiB, because
  each fault on a file mapping also maps the neighbouring pages already in the page cache (the
  kernel's fault-around, 64 KiB at a time by default), and cairnd, running from the same file,
  keeps nearly all of it cached. With `fault_around_bytes` set to 4096 through debugfs, as an
  experiment, the same loop settles at 432 KiB; the device does not do that (the knob is
  global, and debugfs writes are refused under `lockdown=integrity`). Dropping the page cache's
  unmapped pages as well (`POSIX_FADV_DONTNEED`) only took it to 1.6 MiB. The budget needs
  init's supervising code in a file of its own, which is not done.
- Late modules: the drivers of the rest of the machine (ext4, dm-crypt, the TPM's, the network
  card's, input, USB), loaded by stage 2 right after ready; cairnd waits for them before it
  touches storage, so that wait is part of ready → API serving.
- ready → API serving runs from init's ready line to cairnd's `management API on port` line:
  cairnd serves the API after it has unlocked (or, on the first boot, encrypted) STATE and DATA,
  started the network and the containers, so the unlock rows are part of it.
- Secure Boot rows: one image per UEFI board signed with the development keys
  (`target/cairn/keys/secureboot`, made like `cairnctl keys gen-secureboot`), built without the
  containers extension, booted twice per run with Secure Boot off (the ordinary firmware) and
  twice with it on (the firmware's Secure Boot build, the keys enrolled); the figures are the
  later boots'. The unlock opens a seal to the release key's signed PCR 11 (and PCR 7 with
  Secure Boot on): docs/storage.md.
- Host container rows: `cargo xtask bench-containers` on an image of the board built for it,
  in the guest, five rounds after a warm-up (xtask/src/bench_containers.rs, daemon/src/bench.rs): cairnd's
  path and `ctr images import` + `ctr run -d` by hand, each from the request to the container
  answering HTTP, the store emptied between rounds; containerd's resident memory once it is up
  and idle; cairnd's own resident memory while it supervises the container, less before.
";

/// docs/benchmarks.md: the table and how it was made.
fn write_doc(table: &Table) -> Result<()> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let runs = runs();
    let arches: Vec<_> = ARCHES.iter().map(|a| a.rust_target()).collect();
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask report` (xtask/src/report.rs, which says how each figure is \
         measured) at commit {commit}, on a {cores}-core host; QEMU is TCG (no KVM) and \
         shares the host with other work, so wall times are noisy. Boot figures: per board, \
         {runs} runs of a fresh image copy booted twice (with a fresh software TPM on the UEFI \
         boards), median (min–max) of all boots; first-boot and later-boot figures of their \
         {runs} boots each. Device binaries: {}. The host column is `cargo xtask \
         bench-install` and `cargo xtask bench-api`.\n",
        arches.join(", ")
    );
    let mut left_out = Vec::new();
    if !host_benches() {
        left_out.push("the host benchmarks (`CAIRN_REPORT_HOST=0`)");
    }
    if !containers_bench() {
        left_out.push("the host container benchmark (`CAIRN_REPORT_CONTAINERS=0`)");
    }
    if !left_out.is_empty() {
        let _ = writeln!(out, "This run left out {}.\n", left_out.join(" and "));
    }
    out.push_str(&table.markdown());
    out.push_str(NOTES);
    let path = root().join("docs/benchmarks.md");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("    wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_judge_medians_against_budgets_per_column() {
        let mut t = Table {
            columns: vec!["a".into(), "b".into()],
            rows: vec![],
        };
        let r = t
            .row("init → ready", "ms", Budget::AtMost(150.0))
            .budget_on("a");
        for v in [100.0, 140.0, 400.0] {
            r.add("a", v);
        }
        r.add("b", 900.0);
        assert_eq!(t.rows[0].verdict(), "met");
        assert_eq!(t.rows[0].cell("a"), "140 (100–400)");
        t.row("install", "×", Budget::AtLeast(0.8)).add(HOST, 0.5);
        assert_eq!(t.rows[1].verdict(), "MISSED (host)");
        t.row("size", "MiB", Budget::None).add("b", 3.25);
        assert_eq!(t.rows[2].verdict(), "—");
        let md = t.markdown();
        assert!(
            md.contains("| init → ready | ms | ≤ 150 (a) | 140 (100–400) | 900 | met |"),
            "{md}"
        );
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), 2.5);
    }

    #[test]
    fn container_rows_judge_the_start_against_the_baseline() {
        let mut t = Table {
            columns: vec!["qemu-x86_64".into()],
            rows: vec![],
        };
        let f = crate::bench_containers::Figures {
            containerd_idle_kib: 40432.0,
            cairnd_ms: vec![7000.0, 7400.0, 9000.0],
            ctr_ms: vec![6000.0, 7000.0, 8000.0],
            added_kib: vec![12.0, 12.0, 24.0],
            ..Default::default()
        };
        container_rows(&mut t, "qemu-x86_64", &f);
        let verdict = |name: &str| {
            let r = t.rows.iter().find(|r| r.name.starts_with(name)).unwrap();
            (r.cell("qemu-x86_64"), r.verdict())
        };
        assert_eq!(verdict("containerd idle"), ("40432".into(), "—".into()));
        assert_eq!(
            verdict("cairnd's added"),
            ("12 (12–24)".into(), "met".into())
        );
        assert_eq!(
            verdict("host container start: cairnd's"),
            ("7400 (7000–9000)".into(), "MISSED (qemu-x86_64)".into())
        );
        assert_eq!(
            verdict("host container start: cairnd /"),
            ("1.06".into(), "met".into())
        );
    }

    #[test]
    fn numbers_come_from_console_lines() {
        assert_eq!(
            number_before(
                "cairnd: encrypted STATE and DATA in 4.5 s; the recovery key",
                "cairnd: encrypted STATE and DATA in ",
                " s"
            ),
            Some(4.5)
        );
        assert_eq!(
            number_before(
                "cairnd: unlocked STATE and DATA with the TPM in 812 ms (unseal 300 ms",
                "with the TPM in ",
                " ms"
            ),
            Some(812.0)
        );
    }
}
