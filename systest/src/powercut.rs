//! Power cuts at any write: an update from a USB stick is run once with every write to the disk
//! recorded (QEMU's blklogwrites, [`cairn_qemu::writelog`]), and the disk is then rebuilt as it
//! stood right before and right after chosen writes, and booted, as if the power had gone at
//! that instant.
//!
//! The traced run covers three phases: the install (the stick is plugged in; cairnd verifies
//! the bundle, writes slot B and arms the trial, the machine reboots), the trial boot of B up to
//! its commit (cairnd prints the verdict once the commit is on disk), and what B's cairnd writes
//! after the commit until it waits for sticks. Cut
//! points are writes picked at random within the phases in turn (seeded and printed, so a run
//! is reproduced by its seed), each cut right before or right after its write.
//!
//! After each cut the machine boots the rebuilt disk with no help and these must hold:
//! - it reaches `cairn-init: ready` on the old committed slot (A, 0.1.0) or the new one (B,
//!   0.2.0); a trial of B either commits or goes back to A by itself;
//! - STATE mounts, and each of its files is exactly as it was at one of the traced run's
//!   flushes (the content something wrote and synced), never a mix; scratch files (`.name.tmp`)
//!   are exempt;
//! - the slot state it came up with lets the next update start: a newer bundle on a stick is
//!   installed (every `install_every`-th point, as that costs a full install).
//!
//! DATA is not checked here: without a TPM the images leave it unused.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_board::Board;
use cairn_image::RootExtras;
use cairn_qemu::writelog::{Op, WriteLog};
use cairn_qemu::{LaunchOptions, Machine};

use crate::release::{build_release, dev_key, sign_bundle};
use crate::stick::{make_stick, StickFile};
use crate::{image_dir, partition};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
const OLD: &str = "0.1.0";
const NEW: &str = "0.2.0";
/// The version of a STATE file that may be missing after a cut (no FAT file holds this).
const ABSENT: &[u8] = b"\0absent\0";
/// A release newer than both, for the "next update" check on a machine that runs B.
const NEXT: &str = "0.3.0";

/// What a sweep is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub board: &'static Board,
    /// Cut states to try in all.
    pub points: usize,
    pub seed: u64,
    /// Check that the next update installs after every this-many points (1: after each).
    pub install_every: usize,
}

/// One traced phase: the entries of the log it spans.
#[derive(Debug, Clone)]
pub struct Span {
    pub phase: &'static str,
    pub entries: std::ops::Range<usize>,
}

/// One cut and what came of it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub phase: &'static str,
    /// How many log entries the disk holds (the cut is right before entry `prefix`).
    pub prefix: usize,
    /// Which write of the log that is (1-based, counting writes only), and whether the cut
    /// came right after it (true) or right before it.
    pub write: usize,
    pub after: bool,
    /// `slot/version` it settled on, if it booted.
    pub booted: Option<String>,
    /// STATE problems found (empty: intact).
    pub state: Vec<String>,
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
    /// The table: per phase, points tried, booted to a good slot, STATE intact, and each
    /// failure with its seed and write index.
    pub fn table(&self) -> String {
        let mut out = format!(
            "power cuts on {} (seed {}, {} writes traced)\n\
             {:<16} {:>6} {:>8} {:>13} {:>12}\n",
            self.board,
            self.seed,
            self.writes,
            "phase",
            "points",
            "booted",
            "STATE intact",
            "next update"
        );
        for span in &self.spans {
            let of: Vec<&Outcome> = self
                .outcomes
                .iter()
                .filter(|o| o.phase == span.phase)
                .collect();
            let booted = of.iter().filter(|o| o.booted.is_some()).count();
            let intact = of.iter().filter(|o| o.state.is_empty()).count();
            let tried = of.iter().filter(|o| o.next_update.is_some()).count();
            let installed = of.iter().filter(|o| o.next_update == Some(true)).count();
            out.push_str(&format!(
                "{:<16} {:>6} {:>8} {:>13} {:>12}\n",
                span.phase,
                of.len(),
                format!("{booted}/{}", of.len()),
                format!("{intact}/{}", of.len()),
                format!("{installed}/{tried}")
            ));
        }
        for o in self.outcomes.iter().filter(|o| !o.good()) {
            out.push_str(&format!(
                "FAILED {} seed {} write {} ({}): {}\n",
                o.phase,
                self.seed,
                o.write,
                if o.after { "after" } else { "before" },
                o.failure.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

/// A small, fixed-seed generator (splitmix64): the same seed picks the same writes anywhere.
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
        (self.next() % n as u64) as usize
    }
}

/// The traced run's files.
struct Trace {
    dir: PathBuf,
    /// The disk as the log began (a copy of the built image).
    base: PathBuf,
    log: WriteLog,
    spans: Vec<Span>,
    /// Bundles for the next-update check: 0.2.0 (for a machine on A), 0.3.0 (on B).
    bundle_new: PathBuf,
    bundle_next: PathBuf,
}

fn copy(from: &Path, to: &Path) {
    cairn_image::copy_sparse(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}

fn launch(board: &'static Board, disk: &Path, work: &Path, log: Option<&Path>) -> Machine {
    let mut opts = LaunchOptions::new(board, disk, work);
    opts.echo_console = std::env::var_os("CAIRN_POWERCUT_ECHO").is_some();
    opts.writable_image = log.is_some();
    opts.write_log = log.map(Path::to_path_buf);
    Machine::launch(opts).unwrap()
}

/// How many whole entries the log at `path` holds now.
fn entries_now(path: &Path) -> usize {
    WriteLog::open(path)
        .map(|l| l.entries().len())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The traced run: boot A, plug in a stick with 0.2.0, the trial boot of B, its commit.
fn trace(board: &'static Board, dir: &Path) -> Trace {
    let base = dir.join("base.img");
    copy(&image_dir(board).join("disk.img"), &base);
    let release = |version: &str| {
        let image = build_release(
            board,
            &dir.join(format!("release-{version}")),
            version,
            0,
            &format!("systest-powercut-{}-{version}", board.name),
            RootExtras::default(),
        );
        sign_bundle(&image, &dev_key())
    };
    let bundle_new = release(NEW);
    let bundle_next = release(NEXT);

    let disk = dir.join("traced.img");
    copy(&base, &disk);
    let log_path = dir.join("writes.log");
    let mut m = launch(board, &disk, &dir.join("traced"), Some(&log_path));
    m.wait_for_line("cairn-init: ready slot=a", BOOT_TIMEOUT)
        .unwrap();
    m.wait_for_line("cairnd: waiting for update bundles", STEP_TIMEOUT)
        .unwrap();
    let plugged = entries_now(&log_path);
    let stick = dir.join("stick.img");
    make_stick(
        &stick,
        "UPDATE",
        vec![StickFile::Copy("update.cairn", bundle_new.clone())],
    );
    m.attach_stick(&stick, "stick1").unwrap();
    m.wait_for_line(&format!("cairnd: installed version {NEW}"), STEP_TIMEOUT)
        .unwrap();
    // The reboot follows at once; the install's last writes are those before the trial's kernel.
    m.wait_for_line("cairn-init: ready slot=b trial=yes", BOOT_TIMEOUT)
        .unwrap();
    let trial = entries_now(&log_path);
    // cairnd prints the verdict once the commit is on disk.
    m.wait_for_line("cairnd: slot b healthy", STEP_TIMEOUT)
        .unwrap();
    let committed = entries_now(&log_path);
    m.wait_for_line("cairnd: waiting for update bundles", STEP_TIMEOUT)
        .unwrap();
    m.quit().unwrap();
    m.wait_exit(STEP_TIMEOUT).unwrap();
    let log = WriteLog::open(&log_path).unwrap();
    // The install ends at the last write before the trial's boot began; taken as the trial
    // boot's start here, the reboot's own writes count with the trial.
    let spans = vec![
        Span {
            phase: "install (USB)",
            entries: plugged..trial,
        },
        Span {
            phase: "trial, commit",
            entries: trial..committed,
        },
        Span {
            phase: "after commit",
            entries: committed..log.entries().len(),
        },
    ];
    Trace {
        dir: dir.to_path_buf(),
        base,
        log,
        spans,
        bundle_new,
        bundle_next,
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

/// Picks the cut states: `plan.points` in all, spread over the phases in turn, each right
/// before or right after a random write of its phase.
fn pick(trace: &Trace, plan: &Plan) -> Vec<(usize, &'static str, usize, bool)> {
    let entries = trace.log.entries();
    let write_no: Vec<usize> = entries
        .iter()
        .scan(0, |n, e| {
            if e.op == Op::Write {
                *n += 1;
            }
            Some(*n)
        })
        .collect();
    let mut rng = Rng(plan.seed);
    let mut picked = BTreeSet::new();
    let writes_of = |span: &Span| -> Vec<usize> {
        span.entries
            .clone()
            .filter(|&i| entries[i].op == Op::Write)
            .collect()
    };
    let phases: Vec<(&'static str, Vec<usize>)> = trace
        .spans
        .iter()
        .map(|s| (s.phase, writes_of(s)))
        .filter(|(_, w)| !w.is_empty())
        .collect();
    let mut turn = 0;
    let mut tries = 0;
    while picked.len() < plan.points && tries < plan.points * 20 && !phases.is_empty() {
        tries += 1;
        let (phase, writes) = &phases[turn % phases.len()];
        turn += 1;
        let i = writes[rng.below(writes.len())];
        let after = rng.next() & 1 == 1;
        picked.insert((i + usize::from(after), *phase, write_no[i], after));
    }
    picked.into_iter().collect()
}

/// Follows a booting machine until cairnd settles (waits for sticks); returns `slot/version`.
/// A trial of B either commits or reboots into A; a crash that the bootloader's counting
/// recovers from is allowed too: only where it ends up counts.
fn settle(m: &mut Machine) -> Result<String, String> {
    const READY: &str = "cairn-init: ready ";
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
        match (slot.as_str(), version.as_str()) {
            ("a", OLD) | ("b", NEW) => {}
            _ => return Err(format!("came up as: {ready}")),
        }
        if trial == "yes" {
            let verdict = m
                .wait_for_any(&["cairnd: slot b healthy", READY], STEP_TIMEOUT)
                .map_err(|e| format!("the trial of b never ended: {e}"))?;
            if verdict.needle == 1 {
                ready = verdict.line;
                continue;
            }
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
    Err(format!("still rebooting after 6 boots, the last: {ready}"))
}

/// Runs a sweep as `plan` says.
pub fn run(plan: &Plan) -> Report {
    let tmp = crate::rig_dir("cairn-powercut-");
    let dir = tmp.path();
    let trace = trace(plan.board, dir);
    let state = partition(&trace.base, "STATE");
    let versions = state_versions(&trace, state);
    let points = pick(&trace, plan);
    let writes = trace
        .log
        .entries()
        .iter()
        .filter(|e| e.op == Op::Write)
        .count();
    eprintln!(
        "power cuts: {} writes traced ({}), {} cut points, seed {}",
        writes,
        trace
            .spans
            .iter()
            .map(|s| format!("{} {}", s.phase, s.entries.len()))
            .collect::<Vec<_>>()
            .join(", "),
        points.len(),
        plan.seed
    );
    // One disk moves forward through the log; each cut boots a copy of it.
    let cursor_path = dir.join("cursor.img");
    copy(&trace.base, &cursor_path);
    let mut cursor = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cursor_path)
        .unwrap();
    let mut at = 0;
    let mut outcomes = Vec::new();
    for (n, (prefix, phase, write, after)) in points.into_iter().enumerate() {
        trace.log.apply(at..prefix, &mut cursor).unwrap();
        at = prefix;
        cursor.sync_all().unwrap();
        let cut = trace.dir.join("cut.img");
        copy(&cursor_path, &cut);
        let state_problems = check_state(&cut, state, &versions);
        let work = dir.join(format!("cut-{n}"));
        let mut m = launch(plan.board, &cut, &work, None);
        let booted = settle(&mut m);
        let mut failure = match (&booted, state_problems.is_empty()) {
            (Err(e), _) => Some(format!("did not boot to a good slot: {e}")),
            (Ok(_), false) => Some(format!("STATE: {}", state_problems.join("; "))),
            _ => None,
        };
        let mut next_update = None;
        if let (Ok(on), true) = (&booted, n % plan.install_every.max(1) == 0) {
            let bundle = if on.starts_with("b/") {
                &trace.bundle_next
            } else {
                &trace.bundle_new
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
                failure = Some(format!(
                    "the next update did not install: {}",
                    got.map(|l| l.line).unwrap_or_else(|e| e.to_string())
                ));
            }
            next_update = Some(ok);
        }
        let _ = m.kill();
        let outcome = Outcome {
            phase,
            prefix,
            write,
            after,
            booted: booted.ok(),
            state: state_problems,
            next_update,
            failure,
        };
        eprintln!(
            "  cut {:>3}: {phase}, write {write} {}: {}",
            n + 1,
            if after { "after" } else { "before" },
            match &outcome.failure {
                None => format!("ok ({})", outcome.booted.as_deref().unwrap_or("")),
                Some(f) => format!("FAILED: {f}"),
            }
        );
        outcomes.push(outcome);
        let _ = std::fs::remove_dir_all(&work);
    }
    Report {
        board: plan.board.name,
        seed: plan.seed,
        spans: trace.spans,
        writes,
        outcomes,
    }
}
