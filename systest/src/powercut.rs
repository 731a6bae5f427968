//! Power cuts at any write or instant: an update is run once with every write to the disk
//! recorded (QEMU's blklogwrites, [`cairn_qemu::writelog`]), and the disk is then rebuilt as it
//! stood at chosen moments of that run, and booted, as if the power had gone then.
//!
//! Two traced runs (scenarios), each from a fresh disk that first boots and settles:
//! - **stick**: a good bundle on a USB stick. Phases: the install (the stick is plugged in;
//!   cairnd verifies the bundle, writes slot B and arms the trial, the machine reboots), the trial
//!   boot of B up to its commit (cairnd prints the verdict once the commit is on disk), and what
//!   B's cairnd writes after the commit until it waits for sticks.
//! - **api**: a bundle whose health checks fail, uploaded with `cairnctl upgrade`. Phases: the
//!   install over the API (up to the trial's kernel), the trial and its rollback (up to A's cairnd
//!   waiting for sticks again), and a machine config applied with `cairnctl apply-config`.
//!
//! Cut points are picked at random within the phases in turn (seeded and printed, so a run is
//! reproduced by its seed), half of them at a write (right before or right after it) and half
//! at an instant of the run's clock (the log's entries that were whole at that instant, sampled
//! from the log file's length as the run went).
//!
//! After each cut these must hold:
//! - the machine boots the rebuilt disk with no help and reaches `cairn-init: ready` on a slot
//!   the scenario allows: the old committed one (A, 0.1.0) or, in the stick scenario, the new
//!   one (B, 0.2.0); a trial either commits (a good bundle) or goes back to A by itself;
//! - STATE mounts, and each of its files is exactly as it was at one of the traced run's
//!   flushes (the content something wrote and synced), never a mix; scratch files (`.name.tmp`)
//!   are exempt;
//! - DATA (plain ext4 without a TPM) is consistent as the cut left it: e2fsck replays its
//!   journal and then finds nothing to fix;
//! - the slot state it came up with lets the next update start: a newer bundle on a stick is
//!   installed (every `install_every`-th point, as that costs a full install).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_board::Board;
use cairn_image::RootExtras;
use cairn_qemu::writelog::{Op, WriteLog};
use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward, Swtpm};

use crate::ctl::Ctl;
use crate::release::signed_release;
use crate::stick::{make_stick, StickFile};
use crate::{image_dir, partition};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
const API_PORT: u16 = 50000;
const OLD: &str = "0.1.0";
const NEW: &str = "0.2.0";
/// The version of the bundle whose health checks fail (api scenario).
const SICK: &str = "0.2.1";
/// The version of a STATE file that may be missing after a cut (no FAT file holds this).
const ABSENT: &[u8] = b"\0absent\0";
/// A release newer than all of them, for the "next update" check on a machine that runs B.
const NEXT: &str = "0.3.0";
/// What cairnd says once STATE and DATA are encrypted and open (TPM boxes): at the first boot
/// (or the boot that finishes one a cut stopped), and at every later one.
const UNLOCKED: [&str; 2] = [
    "cairnd: encrypted STATE and DATA in",
    "cairnd: unlocked STATE and DATA with the TPM",
];
/// What it says when they are not (each ends the storage bring-up of that boot).
const NOT_UNLOCKED: [&str; 4] = [
    "STATE and DATA are not encrypted",
    "cairnd: maintenance mode:",
    "the next boot tries again",
    "STATE and DATA stay locked",
];
/// How often the traced run notes the write log's length, for cuts at instants.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// One traced run and the phases it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A good bundle from a USB stick: install, trial and commit, after the commit.
    Stick,
    /// An unhealthy bundle over the API: install, trial and rollback, then a config apply.
    Api,
    /// A first boot with a TPM attached: STATE and DATA encrypted (LUKS2, key sealed in the TPM).
    Encrypt,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Stick, Scenario::Api, Scenario::Encrypt];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Stick => "stick",
            Scenario::Api => "api",
            Scenario::Encrypt => "encrypt",
        }
    }

    /// The scenario called `name`; the error lists the names there are.
    pub fn parse(name: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                format!("no power-cut scenario {name:?} (there are: stick, api, encrypt)")
            })
    }

    /// Where a machine may settle (slot, version), and what it may try on the way.
    fn allowed(
        self,
    ) -> (
        &'static [(&'static str, &'static str)],
        (&'static str, &'static str),
    ) {
        match self {
            Scenario::Stick => (&[("a", OLD), ("b", NEW)], ("b", NEW)),
            Scenario::Api => (&[("a", OLD)], ("b", SICK)),
            // Nothing is installed: a trial of B would be wrong.
            Scenario::Encrypt => (&[("a", OLD)], ("", "")),
        }
    }
}

/// What a sweep is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub board: &'static Board,
    pub scenarios: Vec<Scenario>,
    /// Cut states to try in all, over every phase of every scenario.
    pub points: usize,
    pub seed: u64,
    /// Check that the next update installs after every this-many points (1: after each).
    pub install_every: usize,
    /// How many cut disks boot at once (each QEMU takes one core under TCG).
    pub jobs: usize,
}

/// One traced phase: the entries of the log it spans, and when (since the traced run began).
#[derive(Debug, Clone)]
pub struct Span {
    pub phase: &'static str,
    pub entries: std::ops::Range<usize>,
    pub time: std::ops::Range<Duration>,
}

/// Where a cut fell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cut {
    /// Right before or right after the `write`-th write of the log (1-based, writes only).
    Write { write: usize, after: bool },
    /// At an instant of the traced run's clock.
    Instant { ms: u64 },
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Write { write, after } => write!(
                f,
                "{} write {write}",
                if *after {
                    "right after"
                } else {
                    "right before"
                }
            ),
            Cut::Instant { ms } => write!(f, "at {}.{:03} s", ms / 1000, ms % 1000),
        }
    }
}

/// One cut and what came of it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub phase: &'static str,
    /// How many log entries the disk holds (the cut is right before entry `prefix`).
    pub prefix: usize,
    pub cut: Cut,
    /// `slot/version` it settled on, if it booted.
    pub booted: Option<String>,
    /// STATE problems found (empty: intact).
    pub state: Vec<String>,
    /// What e2fsck found wrong with DATA after replaying its journal (None: consistent).
    pub data: Option<String>,
    /// Whether the next update installed (None: not tried at this point).
    pub next_update: Option<bool>,
    /// What went wrong, for the failure list.
    pub failure: Option<String>,
}

impl Outcome {
    pub fn good(&self) -> bool {
        self.failure.is_none()
    }
}

/// The result of a sweep.
#[derive(Debug)]
pub struct Report {
    pub board: &'static str,
    pub seed: u64,
    pub spans: Vec<Span>,
    pub writes: usize,
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// The table: per phase, points tried (at writes / at instants), booted to a good slot,
    /// STATE intact, DATA consistent, the next update, and each failure with its seed and cut.
    pub fn table(&self) -> String {
        let mut out = format!(
            "power cuts on {} (seed {}, {} writes traced)\n\
             {:<18} {:>6} {:>16} {:>8} {:>13} {:>13} {:>12}\n",
            self.board,
            self.seed,
            self.writes,
            "phase",
            "points",
            "writes/instants",
            "booted",
            "STATE intact",
            "DATA fsck ok",
            "next update"
        );
        let ratio = |n: usize, of: usize| format!("{n}/{of}");
        for span in &self.spans {
            let of: Vec<&Outcome> = self
                .outcomes
                .iter()
                .filter(|o| o.phase == span.phase)
                .collect();
            let at_writes = of
                .iter()
                .filter(|o| matches!(o.cut, Cut::Write { .. }))
                .count();
            let count = |f: &dyn Fn(&Outcome) -> bool| of.iter().filter(|o| f(o)).count();
            out.push_str(&format!(
                "{:<18} {:>6} {:>16} {:>8} {:>13} {:>13} {:>12}\n",
                span.phase,
                of.len(),
                format!("{at_writes}/{}", of.len() - at_writes),
                ratio(count(&|o| o.booted.is_some()), of.len()),
                ratio(count(&|o| o.state.is_empty()), of.len()),
                ratio(count(&|o| o.data.is_none()), of.len()),
                ratio(
                    count(&|o| o.next_update == Some(true)),
                    count(&|o| o.next_update.is_some())
                )
            ));
        }
        let n = self.outcomes.len();
        let good = self.outcomes.iter().filter(|o| o.good()).count();
        out.push_str(&format!(
            "{:<18} {:>6} {:>16} {:>8} {:>13} {:>13}\n",
            "all",
            n,
            "",
            ratio(
                self.outcomes.iter().filter(|o| o.booted.is_some()).count(),
                n
            ),
            ratio(
                self.outcomes.iter().filter(|o| o.state.is_empty()).count(),
                n
            ),
            ratio(self.outcomes.iter().filter(|o| o.data.is_none()).count(), n),
        ));
        out.push_str(&format!("{good} of {n} cuts passed every check\n"));
        for o in self.outcomes.iter().filter(|o| !o.good()) {
            out.push_str(&format!(
                "FAILED {} seed {} {}: {}\n",
                o.phase,
                self.seed,
                o.cut,
                o.failure.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

/// A small, fixed-seed generator (splitmix64): the same seed picks the same cuts anywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One traced run's files.
struct Trace {
    scenario: Scenario,
    /// The disk as the log began (a copy of the built image).
    base: PathBuf,
    log: WriteLog,
    spans: Vec<Span>,
    /// (time since the run began, entries whole in the log by then), in time order.
    samples: Vec<(Duration, usize)>,
    /// The TPM's state after the run (its seeds, made at its first start, seal STATE's key), for
    /// the machines that boot the cuts; None for runs without a TPM.
    tpm: Option<PathBuf>,
}

/// Bundles shared by the traced runs and the next-update checks.
struct Bundles {
    /// 0.2.0, good: the stick scenario's update, and the next update of a machine on A.
    new: PathBuf,
    /// 0.2.1, failing its health checks: the api scenario's update.
    sick: PathBuf,
    /// 0.3.0: the next update of a machine on B.
    next: PathBuf,
}

fn copy(from: &Path, to: &Path) {
    cairn_image::copy_sparse(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}

fn launch_with(
    board: &'static Board,
    disk: &Path,
    work: &Path,
    log: Option<&Path>,
    port_forwards: Vec<PortForward>,
    tpm: Option<&Swtpm>,
) -> Machine {
    let mut opts = LaunchOptions::new(board, disk, work);
    opts.echo_console = std::env::var_os("CAIRN_POWERCUT_ECHO").is_some();
    opts.writable_image = log.is_some();
    opts.write_log = log.map(Path::to_path_buf);
    opts.port_forwards = port_forwards;
    opts.tpm = tpm.map(|t| t.socket_path().to_path_buf());
    Machine::launch(opts).unwrap()
}

/// How many whole entries the log at `path` holds now.
fn entries_now(path: &Path) -> usize {
    WriteLog::open(path)
        .map(|l| l.entries().len())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Notes the length of the log file at `path` every [`SAMPLE_EVERY`] until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(Duration, u64)>>>,
}

impl Sampler {
    fn start(path: &Path, began: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, path) = (Arc::clone(&stop), path.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                samples.push((began.elapsed(), len));
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(Duration, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Waits until cairnd has settled after a boot: it serves the API and waits for sticks (the
/// two lines come in either order).
fn api_and_sticks(m: &mut Machine) {
    let lines = [
        "cairnd: management API on port",
        "cairnd: waiting for update bundles",
    ];
    let first = m.wait_for_any(&lines, STEP_TIMEOUT).unwrap();
    m.wait_for_line(lines[1 - first.needle], STEP_TIMEOUT)
        .unwrap();
}

/// A phase boundary of a traced run: the entries whole in the log now, and the time.
fn mark(log_path: &Path, began: Instant) -> (usize, Duration) {
    (entries_now(log_path), began.elapsed())
}

fn release(board: &'static Board, dir: &Path, version: &str, extras: RootExtras) -> PathBuf {
    signed_release(board, dir, version, extras, "powercut")
}

/// A traced run of `scenario`, from a fresh copy of the built disk.
fn trace(board: &'static Board, scenario: Scenario, bundles: &Bundles, dir: &Path) -> Trace {
    let dir = dir.join(scenario.name());
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.img");
    copy(&image_dir(board).join("disk.img"), &base);
    let disk = dir.join("traced.img");
    copy(&base, &disk);
    let log_path = dir.join("writes.log");
    let port = free_local_port().unwrap();
    let tpm_dir = dir.join("tpm");
    let swtpm = (scenario == Scenario::Encrypt).then(|| Swtpm::start(&tpm_dir, 0).unwrap());
    let began = Instant::now();
    let mut m = launch_with(
        board,
        &disk,
        &dir.join("traced"),
        Some(&log_path),
        vec![PortForward::new(port, API_PORT)],
        swtpm.as_ref(),
    );
    let sampler = Sampler::start(&log_path, began);
    m.wait_for_line("cairn-init: ready slot=a", BOOT_TIMEOUT)
        .unwrap();
    api_and_sticks(&mut m);
    let bounds = match scenario {
        Scenario::Encrypt => {
            // The whole first boot, from the first write on.
            let start = (0, Duration::ZERO);
            let status = storage_line(&m);
            assert!(
                status.as_deref().is_some_and(|l| l.contains(UNLOCKED[0])),
                "the first boot: {status:?}"
            );
            vec![("first boot (LUKS)", start, mark(&log_path, began))]
        }
        Scenario::Stick => {
            let plugged = mark(&log_path, began);
            let stick = dir.join("stick.img");
            make_stick(
                &stick,
                "UPDATE",
                vec![StickFile::Copy("update.cairn", bundles.new.clone())],
            );
            m.attach_stick(&stick, "stick1").unwrap();
            m.wait_for_line(&format!("cairnd: installed version {NEW}"), STEP_TIMEOUT)
                .unwrap();
            // The reboot follows at once; the install's last writes are those before the
            // trial's kernel, and the reboot's own writes count with the trial.
            m.wait_for_line("cairn-init: ready slot=b trial=yes", BOOT_TIMEOUT)
                .unwrap();
            let trial = mark(&log_path, began);
            // cairnd prints the verdict once the commit is on disk.
            m.wait_for_line("cairnd: slot b healthy", STEP_TIMEOUT)
                .unwrap();
            let committed = mark(&log_path, began);
            m.wait_for_line("cairnd: waiting for update bundles", STEP_TIMEOUT)
                .unwrap();
            vec![
                ("install (USB)", plugged, trial),
                ("trial, commit", trial, committed),
                ("after commit", committed, mark(&log_path, began)),
            ]
        }
        Scenario::Api => {
            let ctl = |role: &str| Ctl::for_role(role, &dir, &format!("127.0.0.1:{port}"));
            let upload = mark(&log_path, began);
            let done = ctl("operator").json(&["upgrade", bundles.sick.to_str().unwrap()]);
            assert_eq!(done["os_version"], SICK, "{done}");
            m.wait_for_line("cairn-init: ready slot=b trial=yes", BOOT_TIMEOUT)
                .unwrap();
            let trial = mark(&log_path, began);
            m.wait_for_line("cairnd: slot b is not healthy", STEP_TIMEOUT)
                .unwrap();
            m.wait_for_line("cairn-init: ready slot=a trial=no", BOOT_TIMEOUT)
                .unwrap();
            api_and_sticks(&mut m);
            let back = mark(&log_path, began);
            let config = dir.join("machine.yaml");
            std::fs::write(&config, "health:\n  window_s: 45\n").unwrap();
            let applied = ctl("admin").json(&["apply-config", config.to_str().unwrap()]);
            assert_eq!(applied["generation"], 1, "{applied}");
            m.wait_for_line("cairnd: config generation 1 applied", STEP_TIMEOUT)
                .unwrap();
            // What follows the apply (its event on STATE) belongs to it too.
            std::thread::sleep(Duration::from_secs(2));
            vec![
                ("install (API)", upload, trial),
                ("trial, rollback", trial, back),
                ("config apply", back, mark(&log_path, began)),
            ]
        }
    };
    m.quit().unwrap();
    m.wait_exit(STEP_TIMEOUT).unwrap();
    let tpm = swtpm.map(|t| {
        t.stop().unwrap();
        let kept = dir.join("tpm-after");
        copy_tpm_state(&tpm_dir, &kept);
        kept
    });
    let lengths = sampler.finish();
    let log = WriteLog::open(&log_path).unwrap();
    let samples = lengths
        .into_iter()
        .map(|(t, len)| (t, log.entries_within(len)))
        .collect();
    let spans = bounds
        .into_iter()
        .map(|(phase, (from, t0), (to, t1))| Span {
            phase,
            entries: from..to,
            time: t0..t1,
        })
        .collect();
    Trace {
        scenario,
        base,
        log,
        spans,
        samples,
        tpm,
    }
}

/// Copies the TPM's own files (`tpm2-*`: its permanent state) from one swtpm state folder to a
/// new one; sockets and logs stay behind.
fn copy_tpm_state(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("tpm2-") {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Every file of a FAT file system image (path → bytes).
fn fat_files(image: Vec<u8>) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new())
        .map_err(|e| format!("STATE does not mount: {e}"))?;
    let mut out = BTreeMap::new();
    let mut dirs = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = dirs.pop() {
        for entry in dir.iter() {
            let entry = entry.map_err(|e| format!("STATE directory {prefix}/: {e}"))?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}/{name}");
            if entry.is_dir() {
                dirs.push((path, entry.to_dir()));
            } else {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry.to_file(), &mut bytes)
                    .map_err(|e| format!("STATE file {path}: {e}"))?;
                out.insert(path, bytes);
            }
        }
    }
    Ok(out)
}

fn read_range(disk: &Path, (start, len): (u64, u64)) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(disk).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Scratch files written and renamed into place; a cut may leave one half written.
fn scratch(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Each STATE file's contents as of every flush from the start of the first span to the end of
/// the log: the versions a cut may show.
fn state_versions(trace: &Trace, state: (u64, u64)) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
    let first = trace.spans[0].entries.start;
    let mut image = read_range(&trace.base, state);
    let mut versions: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    // The names each snapshot had: a file some snapshot lacked may be missing after a cut.
    let mut names: Vec<BTreeSet<String>> = Vec::new();
    let mut snapshot = |image: &Vec<u8>, versions: &mut BTreeMap<String, BTreeSet<Vec<u8>>>| {
        let files = fat_files(image.clone()).expect("STATE at a flush of the traced run");
        for (path, bytes) in &files {
            versions
                .entry(path.clone())
                .or_default()
                .insert(bytes.clone());
        }
        names.push(files.into_keys().collect());
    };
    let (start, len) = state;
    let entries = trace.log.entries();
    // Only a flush after STATE changed can show new versions.
    let mut dirty = false;
    for (i, e) in entries.iter().enumerate() {
        if i == first {
            snapshot(&image, &mut versions);
            dirty = false;
        }
        if e.op == Op::Write && e.offset < start + len && e.offset + e.len > start {
            dirty = true;
            let data = trace.log.data(i).unwrap();
            let from = e.offset.max(start);
            let to = (e.offset + e.len).min(start + len);
            image[(from - start) as usize..(to - start) as usize]
                .copy_from_slice(&data[(from - e.offset) as usize..(to - e.offset) as usize]);
        }
        if i >= first && e.op == Op::Flush && dirty {
            snapshot(&image, &mut versions);
            dirty = false;
        }
    }
    snapshot(&image, &mut versions);
    // Marked by a version no file can have.
    for (path, known) in versions.iter_mut() {
        if names.iter().any(|n| !n.contains(path)) {
            known.insert(ABSENT.to_vec());
        }
    }
    versions
}

/// STATE of the disk at `disk` against the versions the traced run synced.
fn check_state(
    disk: &Path,
    state: (u64, u64),
    versions: &BTreeMap<String, BTreeSet<Vec<u8>>>,
) -> Vec<String> {
    let files = match fat_files(read_range(disk, state)) {
        Ok(f) => f,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    for (path, bytes) in &files {
        if scratch(path) {
            continue;
        }
        match versions.get(path) {
            Some(known) if known.contains(bytes) => {}
            Some(known) if is_event_log(path) && same_records(bytes, known) => {}
            Some(_) if is_event_log(path) => {
                let read =
                    cairn_daemon::eventlog::parse(bytes, cairn_daemon::eventlog::Limits::EVENTS);
                problems.push(format!(
                    "{path}: {} bytes read as {} whole records (and {} torn bytes) that no flush \
                     of the traced run left there",
                    bytes.len(),
                    read.records.len(),
                    read.torn
                ))
            }
            Some(_) => problems.push(format!(
                "{path}: {} bytes that no flush of the traced run left there",
                bytes.len()
            )),
            None => problems.push(format!("{path}: a file no flush of the traced run had")),
        }
    }
    for (path, known) in versions {
        if !scratch(path) && !files.contains_key(path) && !known.contains(ABSENT) {
            problems.push(format!("{path}: missing"));
        }
    }
    problems
}

/// cairnd's event log on STATE: appended to one record at a time, each synced, and read up to
/// its first record that is not whole (`daemon/src/eventlog.rs`). A cut in an append may leave
/// the file's new length on the disk without the record's bytes, or with part of them: a torn
/// tail, which the reader leaves out and the next open cuts off.
fn is_event_log(path: &str) -> bool {
    path == format!("/{}", cairn_daemon::events::LOG_FILE)
}

/// Whether `bytes` reads as the same records as one of the `known` versions: what the device
/// sees is exactly those records, so a torn tail after them is no mix. Older records coming
/// back (a freed cluster of the log read again) would not match, and fails.
fn same_records(bytes: &[u8], known: &BTreeSet<Vec<u8>>) -> bool {
    use cairn_daemon::eventlog::{parse, Limits};
    let got = parse(bytes, Limits::EVENTS).records;
    known
        .iter()
        .any(|v| parse(v, Limits::EVENTS).records == got)
}

/// One chosen cut: which traced run, the log prefix the disk holds, the phase, and where.
struct Point {
    trace: usize,
    prefix: usize,
    phase: &'static str,
    cut: Cut,
}

/// The entries whole in the log at `at`, from the run's samples of the log file's length.
fn entries_at(samples: &[(Duration, usize)], at: Duration) -> usize {
    let i = samples.partition_point(|(t, _)| *t <= at);
    if i == 0 {
        0
    } else {
        samples[i - 1].1
    }
}

/// Picks the cut states: `plan.points` in all, spread over the phases of every traced run in
/// turn; each is, at random, right before or right after a random write of its phase, or a
/// random instant of it. Two picks that leave the same disk count once.
fn pick(traces: &[Trace], plan: &Plan) -> Vec<Point> {
    // The phases in turn: the first of each run, then the second of each, and so on, so that
    // a few points already reach every run.
    let mut phases: Vec<(usize, usize, &Span, Vec<usize>)> = Vec::new();
    let mut write_no: Vec<Vec<usize>> = Vec::new();
    for (t, trace) in traces.iter().enumerate() {
        let entries = trace.log.entries();
        write_no.push(
            entries
                .iter()
                .scan(0, |n, e| {
                    if e.op == Op::Write {
                        *n += 1;
                    }
                    Some(*n)
                })
                .collect(),
        );
        for (k, span) in trace.spans.iter().enumerate() {
            let writes: Vec<usize> = span
                .entries
                .clone()
                .filter(|&i| entries[i].op == Op::Write)
                .collect();
            if !writes.is_empty() {
                phases.push((k, t, span, writes));
            }
        }
    }
    phases.sort_by_key(|&(k, t, _, _)| (k, t));
    let mut rng = Rng(plan.seed);
    let mut picked: BTreeMap<(usize, usize), Point> = BTreeMap::new();
    let mut turn = 0;
    let mut tries = 0;
    while picked.len() < plan.points && tries < plan.points * 20 && !phases.is_empty() {
        tries += 1;
        let (_, t, span, writes) = &phases[turn % phases.len()];
        turn += 1;
        let point = if rng.next() & 1 == 0 {
            let i = writes[rng.below(writes.len())];
            let after = rng.next() & 1 == 1;
            Point {
                trace: *t,
                prefix: i + usize::from(after),
                phase: span.phase,
                cut: Cut::Write {
                    write: write_no[*t][i],
                    after,
                },
            }
        } else {
            let width = (span.time.end - span.time.start).as_millis() as usize;
            let at = span.time.start + Duration::from_millis(rng.below(width) as u64);
            let whole = entries_at(&traces[*t].samples, at);
            Point {
                trace: *t,
                prefix: whole.clamp(span.entries.start, span.entries.end),
                phase: span.phase,
                cut: Cut::Instant {
                    ms: at.as_millis() as u64,
                },
            }
        };
        picked.entry((point.trace, point.prefix)).or_insert(point);
    }
    picked.into_values().collect()
}

/// Follows a booting machine until cairnd settles (waits for sticks); returns `slot/version`.
/// A trial either commits or reboots into A; a crash that the bootloader's counting recovers
/// from is allowed too: only where it ends up counts, and that must be a place `scenario`
/// allows.
fn settle(m: &mut Machine, scenario: Scenario) -> Result<String, String> {
    const READY: &str = "cairn-init: ready ";
    let (settled, tried) = scenario.allowed();
    let mut ready = m
        .wait_for_line(READY, BOOT_TIMEOUT)
        .map_err(|e| format!("no ready line: {e}"))?;
    for _ in 0..6 {
        let field = |k: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or("")
                .to_string()
        };
        let (slot, trial, version) = (field("slot="), field("trial="), field("version="));
        let here = (slot.as_str(), version.as_str());
        if trial == "yes" {
            if here != tried {
                return Err(format!("came up on trial as: {ready}"));
            }
            let verdict = m
                .wait_for_any(&["cairnd: slot b healthy", READY], STEP_TIMEOUT)
                .map_err(|e| format!("the trial of b never ended: {e}"))?;
            if verdict.needle == 1 {
                ready = verdict.line;
                continue;
            }
        }
        if !settled.contains(&here) {
            return Err(format!("settled where it must not: {ready}"));
        }
        let next = m
            .wait_for_any(&["cairnd: waiting for update bundles", READY], STEP_TIMEOUT)
            .map_err(|e| format!("cairnd did not settle on {slot}: {e}"))?;
        if next.needle == 1 {
            ready = next.line;
            continue;
        }
        return Ok(format!("{slot}/{version}"));
    }
    // What went wrong is on the console before the reboots: its last lines, as a timeout says.
    Err(format!(
        "still rebooting after 6 boots, the last: {ready}; console log {}; last console lines:\n{}",
        m.console_log_path().display(),
        m.console_tail()
    ))
}

/// DATA as a cut left it, checked by Debian's e2fsck on a copy: the journal replayed (what the
/// kernel does when it mounts it), then nothing to fix. None: consistent.
fn check_data(disk: &Path, range: (u64, u64), dir: &Path) -> Option<String> {
    let data = dir.join("data.img");
    std::fs::write(&data, read_range(disk, range)).unwrap();
    let e2fsck = |args: &[&str]| {
        let out = Command::new("e2fsck")
            .args(args)
            .arg(&data)
            .output()
            .expect("running e2fsck (e2fsprogs)");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    // 0: nothing to do; 1: the journal was replayed.
    let (code, text) = e2fsck(&["-E", "journal_only", "-y"]);
    let found = if code > 1 {
        Some(format!(
            "e2fsck could not replay the journal (exit {code}): {text}"
        ))
    } else {
        let (code, text) = e2fsck(&["-f", "-n"]);
        (code != 0).then(|| format!("e2fsck -fn exit {code} after the journal: {text}"))
    };
    let _ = std::fs::remove_file(&data);
    found.map(|f| f.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// cairnd's last line on how STATE and DATA came up, over every boot so far.
fn storage_line(m: &Machine) -> Option<String> {
    m.lines()
        .into_iter()
        .rfind(|l| UNLOCKED.iter().chain(&NOT_UNLOCKED).any(|k| l.contains(k)))
}

/// On a TPM box that settled: STATE and DATA unlocked, and STATE's API secrets (the image's
/// seed) still those the development client trusts. None: both hold.
fn unlocked(m: &Machine, work: &Path, port: u16) -> Option<String> {
    match storage_line(m) {
        Some(l) if UNLOCKED.iter().any(|u| l.contains(u)) => {}
        Some(l) => return Some(l),
        None => return Some("cairnd never said whether STATE and DATA are open".into()),
    }
    let ctl = Ctl::for_role("reader", work, &format!("127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, _, stderr) = ctl.run(&["--json", "version"]);
        if ok {
            return None;
        }
        if Instant::now() > deadline {
            return Some(format!(
                "the API does not answer with the image's secrets: {}",
                stderr.trim()
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Runs a sweep as `plan` says.
/// Boots the disk of cut `n` (in `work`), checks where it settles and, every
/// `install_every`-th cut, that the next update installs; `checks` are what the host found on
/// its STATE and DATA before the boot.
fn boot_cut(
    plan: &Plan,
    trace: &Trace,
    bundles: &Bundles,
    n: usize,
    point: &Point,
    work: &Path,
    (mut state_problems, mut data): (Vec<String>, Option<String>),
) -> Outcome {
    let board = plan.board;
    let cut = work.join("cut.img");
    // The TPM as the traced run left it: the same seeds that sealed STATE's key.
    let swtpm = trace.tpm.as_ref().map(|kept| {
        copy_tpm_state(kept, &work.join("tpm"));
        Swtpm::start(&work.join("tpm"), 0).unwrap()
    });
    let port = free_local_port().unwrap();
    let mut m = launch_with(
        board,
        &cut,
        work,
        None,
        vec![PortForward::new(port, API_PORT)],
        swtpm.as_ref(),
    );
    let booted = settle(&mut m, trace.scenario);
    if booted.is_ok() && swtpm.is_some() {
        let problem = unlocked(&m, work, port);
        data = problem.clone();
        state_problems.extend(problem);
    }
    let mut failure = match (&booted, state_problems.is_empty(), &data) {
        (Err(e), _, _) => Some(format!("did not boot to a good slot: {e}")),
        (Ok(_), false, _) => Some(format!("STATE: {}", state_problems.join("; "))),
        (Ok(_), true, Some(d)) => Some(format!("DATA: {d}")),
        _ => None,
    };
    let mut next_update = None;
    if let (Ok(on), true) = (&booted, n.is_multiple_of(plan.install_every.max(1))) {
        let bundle = if on.starts_with("b/") {
            &bundles.next
        } else {
            &bundles.new
        };
        let stick = work.join("next.img");
        make_stick(
            &stick,
            "UPDATE",
            vec![StickFile::Copy("update.cairn", bundle.clone())],
        );
        m.attach_stick(&stick, "next").unwrap();
        // cairnd's own lines about this stick's bundle (other lines may say "failed").
        let got = m.wait_for_any(
            &[
                "cairnd: installed version",
                "update.cairn refused",
                "update.cairn not installed",
            ],
            STEP_TIMEOUT,
        );
        let ok = matches!(&got, Ok(l) if l.needle == 0);
        if !ok && failure.is_none() {
            // Whether the guest's kernel ever read the stick tells a disk the guest never saw
            // (the hot-plug) from one cairnd did not take.
            let seen = match m.stick_reads("next") {
                Ok(r) if r.operations > 0 => {
                    format!("the guest read the stick ({} bytes)", r.bytes)
                }
                Ok(_) => "the guest never read the stick".to_string(),
                Err(e) => format!("the stick's reads are unknown: {e}"),
            };
            failure = Some(format!(
                "the next update did not install ({seen}): {}",
                got.map(|l| l.line).unwrap_or_else(|e| e.to_string())
            ));
        }
        next_update = Some(ok);
    }
    let _ = m.kill();
    if let Some(t) = swtpm {
        let _ = t.stop();
    }
    let outcome = Outcome {
        phase: point.phase,
        prefix: point.prefix,
        cut: point.cut,
        booted: booted.ok(),
        state: state_problems,
        data,
        next_update,
        failure,
    };
    eprintln!(
        "  cut {:>3}: {}, {}: {}",
        n + 1,
        point.phase,
        point.cut,
        match &outcome.failure {
            None => format!("ok ({})", outcome.booted.as_deref().unwrap_or("")),
            Some(f) => format!("FAILED: {f}"),
        }
    );
    outcome
}

pub fn run(plan: &Plan) -> Report {
    let tmp = crate::rig_dir("cairn-powercut-");
    let dir = tmp.path();
    let board = plan.board;
    let sick_config =
        "health:\n  window_s: 10\n  probes:\n    - tcp: 127.0.0.1:9\n      timeout_s: 1\n";
    let bundles = Bundles {
        new: release(board, dir, NEW, RootExtras::default()),
        sick: if plan.scenarios.contains(&Scenario::Api) {
            release(
                board,
                dir,
                SICK,
                RootExtras {
                    machine_config: Some(sick_config.into()),
                    ..Default::default()
                },
            )
        } else {
            PathBuf::new()
        },
        next: release(board, dir, NEXT, RootExtras::default()),
    };
    let traces: Vec<Trace> = plan
        .scenarios
        .iter()
        .map(|&s| trace(board, s, &bundles, dir))
        .collect();
    // Where STATE and DATA are: the same on every disk of the sweep, so read once.
    let state = partition(&traces[0].base, "STATE");
    let data_range = partition(&traces[0].base, "DATA");
    // STATE's files are compared with the traced run's where STATE stays FAT; an encrypted
    // STATE is checked through the booted machine instead.
    let versions: Vec<_> = traces
        .iter()
        .map(|t| t.tpm.is_none().then(|| state_versions(t, state)))
        .collect();
    let points = pick(&traces, plan);
    let writes = traces
        .iter()
        .map(|t| t.log.entries().iter().filter(|e| e.op == Op::Write).count())
        .sum();
    eprintln!(
        "power cuts: {} writes traced ({}), {} cut points, seed {}",
        writes,
        traces
            .iter()
            .flat_map(|t| &t.spans)
            .map(|s| format!(
                "{} {} entries in {:.1} s",
                s.phase,
                s.entries.len(),
                (s.time.end - s.time.start).as_secs_f64()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        points.len(),
        plan.seed
    );
    // One disk per traced run moves forward through its log; each cut boots a copy of it.
    // Cuts go in batches of `jobs`: their disks are made one after the other (the cursor only
    // moves forward), then they boot side by side.
    let mut cursor: Option<(usize, File)> = None;
    let cursor_path = dir.join("cursor.img");
    let mut at = 0;
    let mut outcomes = Vec::new();
    let points: Vec<(usize, Point)> = points.into_iter().enumerate().collect();
    for batch in points.chunks(plan.jobs.max(1)) {
        let mut cuts = Vec::new();
        for (n, point) in batch {
            let trace = &traces[point.trace];
            if cursor.as_ref().map(|(t, _)| *t) != Some(point.trace) {
                copy(&trace.base, &cursor_path);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&cursor_path)
                    .unwrap();
                cursor = Some((point.trace, file));
                at = 0;
            }
            let file = &mut cursor.as_mut().unwrap().1;
            trace.log.apply(at..point.prefix, file).unwrap();
            at = point.prefix;
            file.sync_all().unwrap();
            // Named as the table numbers the cut.
            let work = dir.join(format!("cut-{}", n + 1));
            std::fs::create_dir_all(&work).unwrap();
            let cut = work.join("cut.img");
            copy(&cursor_path, &cut);
            let checks = match &versions[point.trace] {
                Some(v) => (
                    check_state(&cut, state, v),
                    check_data(&cut, data_range, &work),
                ),
                None => (Vec::new(), None),
            };
            cuts.push((*n, point, work, checks));
        }
        let done: Vec<Outcome> = std::thread::scope(|scope| {
            let running: Vec<_> = cuts
                .into_iter()
                .map(|(n, point, work, checks)| {
                    let trace = &traces[point.trace];
                    let bundles = &bundles;
                    scope.spawn(move || {
                        let outcome = boot_cut(plan, trace, bundles, n, point, &work, checks);
                        // A failed cut's disk and console stay for a look (the rig is kept).
                        if outcome.failure.is_none() {
                            let _ = std::fs::remove_dir_all(&work);
                        }
                        outcome
                    })
                })
                .collect();
            running.into_iter().map(|t| t.join().unwrap()).collect()
        });
        outcomes.extend(done);
    }
    if outcomes.iter().any(|o| o.failure.is_some()) {
        let kept = tmp.keep();
        eprintln!(
            "the rig is kept for the failed cuts: {}/cut-N/ (cut.img boots as the cut left it, \
             console.log is what it printed)",
            kept.display()
        );
    }
    Report {
        board: board.name,
        seed: plan.seed,
        spans: traces.into_iter().flat_map(|t| t.spans).collect(),
        writes,
        outcomes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_daemon::eventlog::frame;

    #[test]
    fn an_event_log_with_a_torn_tail_reads_as_its_flushed_records_and_stale_ones_do_not() {
        let first = frame(b"update started");
        let second = frame(b"update installed");
        let flushed: BTreeSet<Vec<u8>> =
            [first.clone(), [first.clone(), second.clone()].concat()].into();
        // The new length landed, the record's bytes did not (zeros), or only half of them.
        let zeros = [first.clone(), vec![0; second.len()]].concat();
        let half = [first.clone(), second[..second.len() / 2].to_vec()].concat();
        assert!(same_records(&zeros, &flushed));
        assert!(same_records(&half, &flushed));
        // A freed cluster read again: whole records, but not ones any flush left there.
        let stale = [first.clone(), frame(b"an event of the last boot")].concat();
        assert!(!same_records(&stale, &flushed));
        assert!(is_event_log("/events.log"));
        assert!(!is_event_log("/slots/a"));
    }
}
