//! The system tests (`systest/tests/*.rs`, most of them QEMU boots), one test per process, a few
//! side by side.
//!
//! A QEMU test spends much of its time waiting on the guest (a health window, a watchdog
//! timeout, a stick's hotplug), so one machine at a time leaves the host's cores idle for long
//! stretches. Here each test runs as its own process (`<test binary> --exact NAME`), up to
//! [`DEFAULT_LANES`] at once (`CAIRN_SYSTEST_LANES` overrides; 1 runs them one after another).
//! Within one process the tests still take `cairn_systest::qemu_lock`, so a lane never runs two
//! machines.
//!
//! Longest first keeps the lanes even: the times of the last run are kept in
//! `target/cairn/systest-times.tsv`; a test with no recorded time goes first (it may be long),
//! tests of bigger files before smaller ones. Each test's output goes to its own log under
//! `target/cairn/systest-logs/`; a failure prints the log's tail and the run goes on, so every
//! failure shows at once.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, root, step, target_dir};

/// Tests side by side unless `CAIRN_SYSTEST_LANES` says otherwise: two guests of two vCPUs on
/// the two cores CI has keep both busy through each other's waits.
const DEFAULT_LANES: usize = 2;

/// The tests `cargo xtask test` leaves to `cargo xtask matrix`: the second board of a scenario
/// the suite already proves on the other one, where both boards run the same code on the same
/// path (the board-specific parts, such as each board's stick, watchdog driver and Secure Boot
/// firmware, stay in the suite through the tests listed beside each). `cargo xtask matrix` runs
/// every test, these included.
pub const MATRIX_ONLY: &[(&str, &str)] = &[
    (
        "update::qemu_x86_64_good_update_from_a_usb_stick",
        "the same install, trial and commit as the aarch64 one; x86_64's USB stick is in \
         stick::qemu_x86_64_sees_a_usb_stick_and_loads_its_watchdog, its API install in secureboot",
    ),
    (
        "update::qemu_aarch64_unhealthy_update_rolls_back",
        "the same health verdict and rollback as the x86_64 one",
    ),
    (
        "update::qemu_aarch64_hanging_init_falls_back_by_watchdog",
        "boot counting as on x86_64; softdog itself is in \
         stick::qemu_aarch64_sees_a_hotplugged_disk_and_loads_softdog",
    ),
    (
        "secureboot::qemu_aarch64_secure_boot_signed_releases_unlock_and_changed_ukis_do_not",
        "the x86_64 flow on AAVMF; aarch64's Secure Boot refusal and signed PCR 11 are in \
         secureboot::qemu_aarch64_secure_boot_on_then_an_unsigned_cmdline_cannot_unseal",
    ),
    (
        "storage_variants::qemu_x86_64_first_boot_encrypts_without_api_secrets_or_config",
        "the same first boot as the aarch64 one; x86_64's TPM is in storage and secureboot",
    ),
    (
        "storage_variants::qemu_aarch64_first_boot_encrypts_with_a_machine_config_only",
        "between the two variants the suite keeps: the first boot without API secrets or \
         config and the one with both",
    ),
    (
        "storage::qemu_aarch64_encrypted_state_and_data",
        "the same unlocks, recovery key and DATA as on x86_64; aarch64's TPM sealing and first \
         boot are in the storage_variants tests",
    ),
    (
        "slots::qemu_aarch64_trial_commit_and_mark_bad",
        "the same systemd-boot counting as on x86_64 (both boards boot through systemd-boot); \
         aarch64's trial and commit are in update::qemu_aarch64_good_update_from_a_stick",
    ),
    (
        "slots::qemu_x86_64_tampered_root_falls_back_to_a",
        "the same verity refusal and fallback as on aarch64",
    ),
];

/// Which system tests a run takes.
#[derive(Clone, Copy, PartialEq)]
pub enum Selection {
    /// `cargo xtask test` and `cargo xtask systests`: all but [`MATRIX_ONLY`].
    Suite,
    /// `cargo xtask matrix`: every test.
    Matrix,
}

/// Lines of a failed test's log printed in the run's output.
const TAIL_LINES: usize = 60;

/// One test: its file (the test binary's name), its name, and the binary.
#[derive(Clone)]
struct Test {
    file: String,
    name: String,
    exe: PathBuf,
    /// The file's size, the order for tests with no recorded time.
    file_len: u64,
}

/// A test with its time in seconds and its outcome.
type Outcome = (Test, f64, Result<(), String>);

impl Test {
    fn id(&self) -> String {
        format!("{}::{}", self.file, self.name)
    }
}

/// Builds every system test binary, lists their tests, runs them side by side; fails if any did.
/// `env` is what every test needs (image, key and cache folders, the device binaries).
pub fn run(env: &[(&str, PathBuf)], selection: Selection) -> Result<()> {
    step("system tests: build the test binaries");
    let binaries = build(env)?;
    let mut tests = Vec::new();
    for (file, exe) in &binaries {
        let file_len = std::fs::metadata(root().join("systest/tests").join(format!("{file}.rs")))
            .map(|m| m.len())
            .unwrap_or(0);
        for name in list(exe, env)? {
            tests.push(Test {
                file: file.clone(),
                name,
                exe: exe.clone(),
                file_len,
            });
        }
    }
    let listed: Vec<String> = tests.iter().map(Test::id).collect();
    for (id, _) in MATRIX_ONLY {
        if !listed.iter().any(|t| t == id) {
            bail!("MATRIX_ONLY names {id}, which is not a system test (renamed?)");
        }
    }
    if selection == Selection::Suite {
        tests.retain(|t| !MATRIX_ONLY.iter().any(|(id, _)| *id == t.id()));
        eprintln!(
            "    {} tests on the other board are left to `cargo xtask matrix`",
            MATRIX_ONLY.len()
        );
    }
    let lanes = lanes()?;
    let history = read_history();
    order(&mut tests, &history);
    step(&format!(
        "system tests: {} tests from {} files, {lanes} side by side",
        tests.len(),
        binaries.len()
    ));
    let logs = target_dir().join("cairn/systest-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let queue = Mutex::new(tests.into_iter().collect::<VecDeque<_>>());
    let results: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..lanes {
            s.spawn(|| loop {
                let Some(test) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                    break;
                };
                let log = logs.join(format!("{}--{}.log", test.file, test.name));
                let began = Instant::now();
                let outcome = run_one(&test, &log, env);
                let secs = began.elapsed().as_secs_f64();
                match &outcome {
                    Ok(()) => eprintln!("    {secs:>7.1} s  {}  ok", test.id()),
                    Err(e) => {
                        eprintln!("    {secs:>7.1} s  {}  FAILED: {e}", test.id());
                        for line in tail(&log) {
                            eprintln!("      | {line}");
                        }
                        eprintln!("      (the whole log: {})", log.display());
                    }
                }
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((test, secs, outcome));
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    write_history(&history, &results);
    summary(&results, wall, lanes);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.2.is_err())
        .map(|r| r.0.id())
        .collect();
    if !failed.is_empty() {
        bail!("system tests failed: {}", failed.join(", "));
    }
    Ok(())
}

fn lanes() -> Result<usize> {
    match std::env::var("CAIRN_SYSTEST_LANES") {
        Err(_) => Ok(DEFAULT_LANES),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=8).contains(&n))
            .with_context(|| format!("CAIRN_SYSTEST_LANES={v:?}: want a whole number 1..=8")),
    }
}

/// `cargo test --no-run` for the systest package's test files; their names and executables.
///
/// The build is the whole workspace's, as `cargo test --workspace` makes it: features are unified
/// over the packages a cargo command selects, so `--package cairn-systest` alone compiled some
/// fifty crates again with other features than the unit tests' run had just used. With the
/// same selection those are reused, and the host's cairnctl (which the tests drive the machines
/// with) comes out of the same build, as every test run of cargo builds the workspace's
/// binaries into target/debug.
fn build(env: &[(&str, PathBuf)]) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--quiet",
        "--workspace",
        "--no-run",
        "--message-format=json",
    ])
    .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("building the system tests")?;
    if !out.status.success() {
        bail!("building the system tests failed ({})", out.status);
    }
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // The test files, and the library's own unit tests (its test harness).
        let is_test_file = msg["reason"] == "compiler-artifact"
            && msg["manifest_path"]
                .as_str()
                .is_some_and(|p| Path::new(p) == root().join("systest/Cargo.toml"))
            && msg["target"]["kind"].as_array().is_some_and(|k| {
                k.iter()
                    .any(|k| k == "test" || (k == "lib" && msg["profile"]["test"] == true))
            });
        if let (true, Some(name), Some(exe)) = (
            is_test_file,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            binaries.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    if binaries.is_empty() {
        bail!("cargo built no system test binary");
    }
    let cairnctl = target_dir().join("debug/cairnctl");
    if !cairnctl.is_file() {
        bail!("the workspace's test build left no {}", cairnctl.display());
    }
    Ok(binaries.into_iter().collect())
}

/// The binary's tests, ignored ones included (the QEMU tests are ignored without images).
fn list(exe: &Path, env: &[(&str, PathBuf)]) -> Result<Vec<String>> {
    let mut cmd = Command::new(exe);
    cmd.args(["--list", "--include-ignored"])
        .current_dir(root().join("systest"))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("listing the tests of {}", exe.display()))?;
    if !out.status.success() {
        bail!("listing the tests of {} failed", exe.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

fn run_one(test: &Test, log: &Path, env: &[(&str, PathBuf)]) -> Result<(), String> {
    let out = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&test.exe);
    // As `cargo test` runs it: from the package's folder.
    cmd.args(["--include-ignored", "--exact", &test.name])
        .current_dir(root().join("systest"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("starting {}: {e}", test.exe.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exit {status}"))
    }
}

fn tail(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn history_path() -> PathBuf {
    target_dir().join("cairn/systest-times.tsv")
}

/// Each test's time in a whole fresh-clone run of the suite on a 2-core machine (before four of
/// its tests moved to the matrix), kept in the repository: the order of a checkout's first run, which has no times of its own
/// (every CI run is one). Without it the longest test (the power-cut sample, in a small file)
/// started last and ran alone. Only an ordering hint; a checkout's own runs override it.
const KEPT_TIMES: &str = include_str!("../systest-times.tsv");

/// `file::name` → seconds: the last run's where there is one, else [`KEPT_TIMES`].
fn read_history() -> BTreeMap<String, f64> {
    let own = std::fs::read_to_string(history_path()).unwrap_or_default();
    [KEPT_TIMES, own.as_str()]
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|l| {
            let (id, secs) = l.split_once('\t')?;
            Some((id.to_string(), secs.parse().ok()?))
        })
        .collect()
}

fn write_history(old: &BTreeMap<String, f64>, results: &[Outcome]) {
    let mut all = old.clone();
    for (test, secs, _) in results {
        all.insert(test.id(), *secs);
    }
    let text: String = all
        .iter()
        .map(|(id, s)| format!("{id}\t{s:.1}\n"))
        .collect();
    // Only an ordering hint: losing it costs nothing but balance.
    let _ = std::fs::write(history_path(), text);
}

/// Longest first: unknown tests (bigger files first), then by the last run's time.
fn order(tests: &mut [Test], history: &BTreeMap<String, f64>) {
    tests.sort_by(|a, b| {
        let (ta, tb) = (history.get(&a.id()), history.get(&b.id()));
        match (ta, tb) {
            (None, None) => b.file_len.cmp(&a.file_len).then(a.name.cmp(&b.name)),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => y.total_cmp(x),
        }
    });
}

/// Per file: its tests' summed time, so a file's growth shows even though they overlap.
fn summary(results: &[Outcome], wall: f64, lanes: usize) {
    let mut files: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for (test, secs, _) in results {
        let e = files.entry(&test.file).or_default();
        e.0 += 1;
        e.1 += secs;
    }
    let busy: f64 = files.values().map(|f| f.1).sum();
    eprintln!("\n==> system tests per file (each test's own time; {lanes} ran side by side)");
    let mut rows: Vec<_> = files.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    for (file, (n, secs)) in rows {
        eprintln!("    {secs:>7.1} s  systest/tests/{file}.rs ({n} tests)");
    }
    eprintln!("    {busy:>7.1} s  in all, done in {wall:.1} s of wall time");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(file: &str, name: &str, len: u64) -> Test {
        Test {
            file: file.into(),
            name: name.into(),
            exe: PathBuf::new(),
            file_len: len,
        }
    }

    #[test]
    fn unknown_tests_go_first_by_file_size_then_the_longest_known() {
        let mut tests = vec![
            t("boot", "b1", 100),
            t("update", "u1", 900),
            t("slots", "s1", 200),
            t("new", "n1", 50),
            t("update", "u2", 900),
        ];
        let history = BTreeMap::from([
            ("boot::b1".to_string(), 20.0),
            ("slots::s1".to_string(), 90.0),
            ("update::u2".to_string(), 150.0),
        ]);
        order(&mut tests, &history);
        let ids: Vec<String> = tests.iter().map(Test::id).collect();
        assert_eq!(
            ids,
            [
                "update::u1",
                "new::n1",
                "update::u2",
                "slots::s1",
                "boot::b1"
            ]
        );
    }
}
