//! Fuzzing the parsers of outside data with libFuzzer on the pinned stable toolchain.
//!
//! Every fuzz target is a binary of one crate outside the main workspace (`fuzz/`), laid out as
//! cargo-fuzz lays out its crates (so `cargo fuzz run <target>` works there too), whose example
//! named `seeds` writes the seed corpus (into target/, never committed). One crate, so one build
//! compiles the dependencies once for every target.
//! xtask builds the targets itself, with the flags cargo-fuzz 0.13 gives a release build (see
//! [`rustflags`]): libFuzzer comes from the libfuzzer-sys crate, the coverage instrumentation
//! from stable `-C` flags, so nothing beyond cargo needs installing and no nightly toolchain or
//! RUSTC_BOOTSTRAP is involved. The code the targets reach has no `unsafe`: the fuzzed crates'
//! only `unsafe` blocks are in their socket code, which no target calls (netcfg's AF_PACKET
//! socket in `dhcp/socket.rs` and its NETLINK_ROUTE socket in `rtnl/socket.rs`, the daemon's
//! uevent netlink socket in `uevent.rs`), so AddressSanitizer would mostly cost speed; `--asan`
//! still offers it, through RUSTC_BOOTSTRAP=1 because `-Zsanitizer` is a nightly flag.
//!
//! `cargo xtask test` runs every target for a short while ([`run_brief`]; built at optimisation
//! level 1 and with cargo's usual 16 code units per crate, both for a shorter build, the
//! suite's longest part of fuzzing) and fails on any crash;
//! `cargo xtask fuzz [--seconds N] [--asan]` runs them for longer, in groups of [`GROUP`] side by
//! side (the brief run starts them all at once). Each reports its executions, its coverage
//! (libFuzzer's cov and ft) and its crashes (libFuzzer stops a target at its first crash, so
//! that is 0 or 1).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, host_triple, run, step, target_dir};

/// Seconds each target runs in `cargo xtask test`.
const BRIEF_SECONDS: u64 = 30;

/// For `cargo xtask fuzz`: targets run side by side in groups of at most this many, one group
/// after the other, enough to keep a small machine's cores busy while each target still gets a
/// useful share of them. The brief run in `cargo xtask test` runs them all at once.
const GROUP: usize = 7;

/// The cargo-fuzz crate (relative to the main workspace's root).
const PROJECT: &str = "fuzz";

/// Every fuzz target (a binary of [`PROJECT`]), by the crate it fuzzes.
const TARGETS: &[&str] = &[
    // cairn-bundle
    "bundle",
    "manifest",
    // cairn-netcfg
    "dhcp_reply",
    "dhcp_frame",
    "rtnl_datagram",
    "sntp_reply",
    // cairn-luks
    "header_json",
    "header_image",
    // cairn-api
    "fetch_answer",
    "oci_manifest",
    "cert_subject",
    "cert_der",
    // cairn-tpm
    "tpm_token",
    "tpm_response",
    // cairn-daemon
    "uevent",
    "eventlog",
    // cairn-facts
    "probe_status",
    "machine_config",
    // cairn-boot
    "uboot_env",
    // cairn-image
    "gpt",
];

/// Runs every fuzz target for a short while; fails if any finds a crash. For `cargo xtask test`.
pub fn run_brief() -> Result<()> {
    // All side by side: the brief run is a smoke test, and one round keeps the suite short.
    fuzz(BRIEF_SECONDS, Build::Brief, usize::MAX)
}

/// `cargo xtask fuzz [--seconds N] [--asan]`.
pub fn command(args: &[String]) -> Result<()> {
    let mut seconds = 300;
    let mut asan = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .context("--seconds takes a positive whole number")?;
            }
            "--asan" => asan = true,
            other => {
                bail!("unknown argument {other:?}; usage: cargo xtask fuzz [--seconds N] [--asan]")
            }
        }
    }
    fuzz(seconds, if asan { Build::Asan } else { Build::Full }, GROUP)
}

/// Where seeds, corpora, crash inputs and logs go.
fn work_dir() -> PathBuf {
    target_dir().join("cairn/fuzz")
}

/// How the targets are built. Each way has its own build folder, so switching never rebuilds.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    /// For the brief run in `cargo xtask test`: optimised at level 1, which compiles in about
    /// half the time of level 3 and still runs thousands of inputs a second.
    Brief,
    /// For `cargo xtask fuzz`: cargo-fuzz's usual release build.
    Full,
    /// `cargo xtask fuzz --asan`: release with AddressSanitizer.
    Asan,
}

impl Build {
    fn dir(self) -> PathBuf {
        target_dir().join(match self {
            Build::Brief => "fuzz-brief",
            Build::Full => "fuzz",
            Build::Asan => "fuzz-asan",
        })
    }
}

/// The flags cargo-fuzz 0.13's `cargo fuzz build` gives rustc (its defaults: coverage of every
/// edge as inline 8-bit counters with a PC table, compares traced, stack depth, no branch
/// folding, `--cfg fuzzing`, debug assertions), with the sanitizer of `build`. Full and ASan
/// builds are one code unit per crate, as cargo-fuzz makes them (with several, the sancov pass
/// keeps ThinLTO from importing anything and the targets run slower); the brief build keeps
/// cargo's 16, which compiles much faster on several cores, for runs of seconds.
fn rustflags(build: Build) -> String {
    let mut flags = vec![
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "--cfg",
        "fuzzing",
        "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
        "-Cllvm-args=-sanitizer-coverage-stack-depth",
        "-Cdebug-assertions",
    ];
    match build {
        Build::Brief => {}
        Build::Full => flags.push("-Ccodegen-units=1"),
        Build::Asan => flags.extend(["-Ccodegen-units=1", "-Zsanitizer=address"]),
    }
    flags.join(" ")
}

/// `cargo build` of every fuzz target, instrumented for libFuzzer. The host is named as the
/// target so that the flags reach the targets' code but not build scripts and procedural macros.
fn build_targets(build: Build, host: &str) -> Command {
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--release", "--bins", "--manifest-path"])
        .arg(Path::new(PROJECT).join("Cargo.toml"))
        .args(["--target", host, "--target-dir"])
        .arg(build.dir())
        // Panics name file and line, as in cargo-fuzz's release builds.
        .args(["--config", "profile.release.debug=\"line-tables-only\""])
        .env("RUSTFLAGS", rustflags(build));
    match build {
        Build::Asan => {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        Build::Brief => {
            cmd.env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1");
        }
        Build::Full => {}
    }
    cmd
}

/// A built target's executable.
fn target_exe(build: Build, host: &str, name: &str) -> PathBuf {
    build.dir().join(host).join("release").join(name)
}

/// One target's run in progress.
struct Running {
    name: &'static str,
    child: Child,
    log: PathBuf,
    exe: PathBuf,
}

fn fuzz(seconds: u64, build: Build, side_by_side: usize) -> Result<()> {
    let sanitizer = if build == Build::Asan {
        "AddressSanitizer"
    } else {
        "no sanitizer"
    };
    let work = work_dir();
    let seeds = work.join("seeds");
    // Everything is built before any target starts, so a build error leaves nothing running.
    step("fuzz crate: format, lints, unit tests");
    let manifest = Path::new(PROJECT).join("Cargo.toml");
    // Outside the main workspace, so its fmt and clippy steps never see it.
    run(cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(&manifest))?;
    run(cargo()
        .args(["clippy", "--quiet", "--all-targets", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(Build::Full.dir())
        .args(["--", "-D", "warnings"]))?;
    // Every module's seeds pass its own checks, and the checks' helpers do what they say.
    run(cargo()
        .args(["test", "--quiet", "--lib", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(Build::Full.dir()))?;
    step(&format!(
        "fuzz targets ({sanitizer}): build all {}, seed corpus",
        TARGETS.len()
    ));
    let host = host_triple()?;
    run(&mut build_targets(build, &host))?;
    run(cargo()
        .args(["run", "--quiet", "--example", "seeds", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(Build::Full.dir())
        .arg("--")
        .arg(&seeds))?;
    let targets = TARGETS;
    let group = side_by_side.clamp(1, targets.len().max(1));
    let groups = targets.len().div_ceil(group);
    step(&format!(
        "fuzzing {} targets for {seconds} s each, {group} side by side ({groups} rounds)",
        targets.len(),
    ));
    let started = Instant::now();
    let mut failed = Vec::new();
    for group in targets.chunks(group) {
        let mut running = Vec::new();
        for name in group {
            running.push(start(name, &seeds, &work, seconds, build, &host)?);
        }
        for mut target in running {
            let name = target.name;
            let status = target
                .child
                .wait()
                .with_context(|| format!("waiting for fuzz target {name}"))?;
            let text = std::fs::read_to_string(&target.log).unwrap_or_default();
            if status.success() {
                eprintln!("    {name:<14} 0 crashes, {}", summary(&text));
                continue;
            }
            eprintln!("    {name:<14} 1 crash ({status}), {}", summary(&text));
            for line in crash_report(&text, &target, build) {
                eprintln!("      {line}");
            }
            failed.push(name);
        }
    }
    eprintln!("    done in {:.0} s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!(
            "fuzzing found a crash in {} (details above)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Starts `cargo fuzz run` for one target, its output going to a log file.
fn start(
    name: &'static str,
    seeds: &Path,
    work: &Path,
    seconds: u64,
    build: Build,
    host: &str,
) -> Result<Running> {
    let corpus = work.join("corpus").join(name);
    let artifacts = work.join("artifacts").join(name);
    let logs = work.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = logs.join(format!("{name}.log"));
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let exe = target_exe(build, host, name);
    let mut cmd = Command::new(&exe);
    if build == Build::Asan {
        // As cargo-fuzz runs ASan builds: Rust's statics trip the ODR check.
        cmd.env("ASAN_OPTIONS", "detect_odr_violation=0");
    }
    // New inputs go to the first corpus folder, which persists between runs; seeds are read only.
    cmd.arg(format!("-max_total_time={seconds}"))
        // A hang is a finding too, rather than a stalled test suite.
        .arg("-timeout=20")
        .arg("-print_final_stats=1")
        // libFuzzer joins the prefix and the file name as strings: the trailing slash matters.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(seeds.join(name))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting fuzz target {name} ({})", exe.display()))?;
    Ok(Running {
        name,
        child,
        log,
        exe,
    })
}

/// "N runs in S s (R/s), cov C ft F, corpus K" from libFuzzer's output: cov is the code edges
/// reached, ft the features (edges with hit counts and comparisons) libFuzzer tells apart.
fn summary(log: &str) -> String {
    let stat = |key: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let runs = stat("stat::number_of_executed_units:");
    let rate = stat("stat::average_exec_per_sec:");
    // "Done 304537 runs in 31 second(s)", printed only when the time ran out.
    let seconds = log
        .lines()
        .find_map(|l| l.strip_prefix("Done "))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("?");
    // The last status line, e.g. "#304537 DONE cov: 1458 ft: 3280 corp: 348/804Kb ...".
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains(" cov: "));
    let field = |key: &str| {
        last.and_then(|l| l.split_whitespace().skip_while(|w| *w != key).nth(1))
            .map(|v| v.split('/').next().unwrap_or(v).to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "{runs} runs in {seconds} s ({rate}/s), cov {} ft {}, corpus {}",
        field("cov:"),
        field("ft:"),
        field("corp:")
    )
}

/// The lines of a failed run's log that say what went wrong, the saved input and how to replay it.
fn crash_report(log: &str, target: &Running, build: Build) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    if let Some(i) = lines.iter().position(|l| l.contains(" panicked at ")) {
        // The panic location, then its message up to the backtrace.
        out.extend(
            lines[i..]
                .iter()
                .take(6)
                .take_while(|l| !l.starts_with("stack backtrace:") && !l.starts_with("note:"))
                .map(|l| l.to_string()),
        );
    }
    out.extend(
        lines
            .iter()
            .filter(|l| l.contains("ERROR: libFuzzer:"))
            .map(|l| l.to_string()),
    );
    let input = lines
        .iter()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()));
    match input {
        Some(input) => {
            out.push(format!("input:     {input}"));
            let asan = if build == Build::Asan {
                "ASAN_OPTIONS=detect_odr_violation=0 "
            } else {
                ""
            };
            out.push(format!("replay:    {asan}{} {input}", target.exe.display()));
        }
        None => {
            out.push("no input was saved; the log ends:".into());
            out.extend(
                lines[lines.len().saturating_sub(15)..]
                    .iter()
                    .map(|l| l.to_string()),
            );
        }
    }
    out.push(format!("log:       {}", target.log.display()));
    out
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn summary_reads_executions_and_coverage_from_the_final_stats() {
        // The end of a real run's log (rtnl_datagram, 20 s).
        let log = "#1048576\tpulse  cov: 788 ft: 2540 corp: 510/280Kb lim: 4096 exec/s: 99864 rss: 57Mb\n\
                   #2074393\tDONE   cov: 792 ft: 2561 corp: 515/283Kb lim: 4096 exec/s: 98780 rss: 57Mb\n\
                   Done 2074393 runs in 21 second(s)\n\
                   stat::number_of_executed_units: 2074393\n\
                   stat::average_exec_per_sec:     98780\n\
                   stat::new_units_added:          1083\n";
        assert_eq!(
            summary(log),
            "2074393 runs in 21 s (98780/s), cov 792 ft 2561, corpus 515"
        );
        assert_eq!(summary(""), "? runs in ? s (?/s), cov ? ft ?, corpus ?");
    }
}
