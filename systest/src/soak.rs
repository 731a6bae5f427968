//! The soak: one machine, many updates in a row, each ending where it should.
//!
//! Cycles go in turn through four kinds, all over the API as an operator would run them:
//! - **good**: a healthy bundle is uploaded; the other slot is tried, passes and is committed;
//! - **rollback**: `cairnctl rollback` gives up the running slot for the other, committed one;
//! - **unhealthy**: a bundle whose health probe never passes is tried and rolled back;
//! - **hang**: a bundle whose init hangs right after the watchdog is armed; the watchdog resets
//!   each try and the bootloader's counting brings the running slot back.
//!
//! After each cycle the machine must run the slot and version the cycle leads to. Every
//! `sample_every` cycles (and before the first) cairnd's resident memory and open file
//! descriptors are read from `cairnctl services`; the report prints them so that growth shows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_board::Board;
use cairn_image::RootExtras;
use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward};

use crate::ctl::Ctl;
use crate::fault_init::{self, Fault};
use crate::image_dir;
use crate::release::signed_release;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
const API_PORT: u16 = 50000;
const FIRST: &str = "0.1.0";

/// What one cycle does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Good,
    Rollback,
    Unhealthy,
    Hang,
}

impl Kind {
    const TURN: [Kind; 4] = [Kind::Good, Kind::Rollback, Kind::Unhealthy, Kind::Hang];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Good => "good",
            Kind::Rollback => "rollback",
            Kind::Unhealthy => "unhealthy",
            Kind::Hang => "hang",
        }
    }
}

/// Where a machine runs: (slot, version).
pub type Place = (String, String);

/// One cycle and how it ended.
#[derive(Debug, Clone)]
pub struct Cycle {
    pub n: usize,
    pub kind: Kind,
    pub from: Place,
    pub expected: Place,
    /// Where it ended, or what went wrong on the way.
    pub got: Result<Place, String>,
    pub seconds: f64,
}

impl Cycle {
    pub fn right(&self) -> bool {
        self.got.as_ref() == Ok(&self.expected)
    }
}

/// cairnd's resident memory and open descriptors after a cycle (0: before the first).
#[derive(Debug, Clone)]
pub struct Sample {
    pub after_cycle: usize,
    pub rss_kib: u64,
    pub open_fds: u64,
}

#[derive(Debug)]
pub struct Report {
    pub board: &'static str,
    pub asked: usize,
    pub cycles: Vec<Cycle>,
    pub samples: Vec<Sample>,
}

impl Report {
    pub fn table(&self) -> String {
        let right = self.cycles.iter().filter(|c| c.right()).count();
        let mut out = format!(
            "soak on {}: {right}/{} cycles ended where they should ({} asked)\n\
             {:<10} {:>6} {:>6} {:>14}\n",
            self.board,
            self.cycles.len(),
            self.asked,
            "kind",
            "cycles",
            "right",
            "median time s"
        );
        for kind in Kind::TURN {
            let of: Vec<&Cycle> = self.cycles.iter().filter(|c| c.kind == kind).collect();
            let mut secs: Vec<f64> = of.iter().map(|c| c.seconds).collect();
            secs.sort_by(f64::total_cmp);
            out.push_str(&format!(
                "{:<10} {:>6} {:>6} {:>14}\n",
                kind.name(),
                of.len(),
                of.iter().filter(|c| c.right()).count(),
                secs.get(secs.len() / 2)
                    .map_or("-".to_string(), |s| format!("{s:.0}"))
            ));
        }
        out.push_str("slot history: ");
        let mut history = vec![format!("{}:{}", "a", FIRST)];
        for c in &self.cycles {
            history.push(match &c.got {
                Ok((slot, version)) => format!("{slot}:{version}"),
                Err(_) => "?".to_string(),
            });
        }
        out.push_str(&history.join(" "));
        out.push('\n');
        out.push_str(&format!(
            "{:>12} {:>14} {:>9}\n",
            "after cycle", "cairnd RSS KiB", "open fds"
        ));
        for s in &self.samples {
            out.push_str(&format!(
                "{:>12} {:>14} {:>9}\n",
                s.after_cycle, s.rss_kib, s.open_fds
            ));
        }
        for c in self.cycles.iter().filter(|c| !c.right()) {
            out.push_str(&format!(
                "WRONG cycle {} ({}, from {}:{}): expected {}:{}, {}\n",
                c.n,
                c.kind.name(),
                c.from.0,
                c.from.1,
                c.expected.0,
                c.expected.1,
                match &c.got {
                    Ok((s, v)) => format!("ended on {s}:{v}"),
                    Err(e) => e.clone(),
                }
            ));
        }
        out
    }
}

/// The bundles the cycles upload.
struct Bundles {
    /// Two healthy releases, so that a good cycle always brings a version other than the one
    /// running.
    good: [(String, PathBuf); 2],
    unhealthy: (String, PathBuf),
    hang: (String, PathBuf),
}

fn release(board: &'static Board, dir: &Path, version: &str, extras: RootExtras) -> PathBuf {
    signed_release(board, dir, version, extras, "soak")
}

/// The bundles `cycles` cycles upload (only those: each is a whole image build).
fn bundles(board: &'static Board, dir: &Path, cycles: usize) -> Bundles {
    let sick = "health:\n  window_s: 10\n  probes:\n    - tcp: 127.0.0.1:9\n      timeout_s: 1\n";
    let init = dir.join("hanging-init");
    std::fs::write(&init, fault_init::elf(board.arch, Fault::Hang)).unwrap();
    // Cycle n (from 1) is of kind TURN[(n - 1) % 4]; the second good cycle is the fifth.
    let make = |v: &str, extras, first_cycle: usize| {
        let path = if cycles >= first_cycle {
            release(board, dir, v, extras)
        } else {
            PathBuf::new()
        };
        (v.to_string(), path)
    };
    Bundles {
        good: [
            make("0.2.0", RootExtras::default(), 1),
            make("0.3.0", RootExtras::default(), 5),
        ],
        unhealthy: make(
            "0.2.1",
            RootExtras {
                machine_config: Some(sick.into()),
                ..Default::default()
            },
            3,
        ),
        hang: make(
            "0.2.2",
            RootExtras {
                init_override: Some(init),
                ..Default::default()
            },
            4,
        ),
    }
}

fn other(slot: &str) -> String {
    if slot == "a" { "b" } else { "a" }.to_string()
}

/// The next ready line's (slot, trial, version).
fn ready(m: &mut Machine) -> Result<(String, String, String), String> {
    let line = m
        .wait_for_line("cairn-init: ready ", BOOT_TIMEOUT)
        .map_err(|e| format!("no ready line: {e}"))?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or("")
            .to_string()
    };
    Ok((field("slot="), field("trial="), field("version=")))
}

/// Waits until cairnd has settled after a boot: it serves the API and waits for sticks. The
/// two lines, and a trial's verdict, come in any order, so a line already printed since the
/// boot's ready line counts.
fn settled(m: &mut Machine) -> Result<(), String> {
    for needle in [
        "cairnd: management API on port",
        "cairnd: waiting for update bundles",
    ] {
        let lines = m.lines();
        let boot = lines
            .iter()
            .rposition(|l| l.contains("cairn-init: ready "))
            .unwrap_or(0);
        if !lines[boot..].iter().any(|l| l.contains(needle)) {
            m.wait_for_line(needle, STEP_TIMEOUT)
                .map_err(|e| format!("cairnd did not settle: {e}"))?;
        }
    }
    Ok(())
}

/// One cycle from `from`; returns where it expects to end and where it ended.
fn cycle(
    m: &mut Machine,
    ctl: &Ctl,
    kind: Kind,
    from: &Place,
    bundles: &Bundles,
) -> (Place, Result<Place, String>) {
    let (slot, version) = from;
    let upload = |path: &Path| -> Result<(), String> {
        let (ok, _, stderr) = ctl.run(&["upgrade", path.to_str().unwrap()]);
        ok.then_some(()).ok_or(format!("upgrade refused: {stderr}"))
    };
    let trial = |m: &mut Machine, want: &str| -> Result<(), String> {
        let (s, t, v) = ready(m)?;
        if (s.as_str(), t.as_str(), v.as_str()) == (&other(slot), "yes", want) {
            Ok(())
        } else {
            Err(format!(
                "expected a trial of {want} in {}, came up as {s} trial={t} {v}",
                other(slot)
            ))
        }
    };
    let expected: Place;
    let result = match kind {
        Kind::Good => {
            let (v, path) = bundles.good.iter().find(|(v, _)| v != version).unwrap();
            expected = (other(slot), v.clone());
            upload(path).and_then(|_| trial(m, v)).and_then(|_| {
                m.wait_for_line(
                    &format!("cairnd: slot {} healthy", other(slot)),
                    STEP_TIMEOUT,
                )
                .map(|_| ())
                .map_err(|e| format!("no commit: {e}"))
            })
        }
        Kind::Rollback => {
            let slots = ctl.json(&["slots"]);
            let there = slots["slots"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["slot"] == other(slot).as_str()))
                .and_then(|s| s["os_version"].as_str())
                .unwrap_or("")
                .to_string();
            expected = (other(slot), there);
            let (ok, _, stderr) = ctl.run(&["rollback"]);
            if ok {
                ready(m).map(|_| ())
            } else {
                Err(format!("rollback refused: {stderr}"))
            }
        }
        Kind::Unhealthy | Kind::Hang => {
            let (v, path) = if kind == Kind::Unhealthy {
                &bundles.unhealthy
            } else {
                &bundles.hang
            };
            expected = from.clone();
            let tried = upload(path).and_then(|_| {
                if kind == Kind::Unhealthy {
                    trial(m, v)
                } else {
                    Ok(())
                }
            });
            // Back on the running slot, not on trial, after however many tries it takes.
            tried.and_then(|_| loop {
                let (s, t, _) = ready(m)?;
                if &s == slot && t == "no" {
                    break Ok(());
                }
                if s == *slot {
                    break Err(format!("came back to {s} on trial"));
                }
            })
        }
    };
    let got = result.and_then(|_| settled(m)).and_then(|_| where_now(ctl));
    (expected, got)
}

/// The running (slot, version) as the API tells it, asked again for 90 s while it comes up.
fn where_now(ctl: &Ctl) -> Result<Place, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, stdout, stderr) = ctl.run(&["--json", "version"]);
        if ok {
            let v: serde_json::Value =
                serde_json::from_str(&stdout).map_err(|e| format!("{e}: {stdout}"))?;
            let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
            return Ok((field("running_slot"), field("os_version")));
        }
        if Instant::now() > deadline {
            return Err(format!("the API does not answer: {}", stderr.trim()));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Runs `cycles` cycles on one machine of `board`, sampling cairnd every `sample_every`.
pub fn run(board: &'static Board, cycles: usize, sample_every: usize) -> Report {
    let tmp = crate::rig_dir("cairn-soak-");
    let dir = tmp.path();
    let bundles = bundles(board, dir, cycles);
    let disk = dir.join("disk.img");
    cairn_image::copy_sparse(&image_dir(board).join("disk.img"), &disk).unwrap();
    let port = free_local_port().unwrap();
    let mut opts = LaunchOptions::new(board, &disk, dir.join("work"));
    opts.writable_image = true;
    opts.echo_console = std::env::var_os("CAIRN_SOAK_ECHO").is_some();
    opts.port_forwards = vec![PortForward::new(port, API_PORT)];
    let mut m = Machine::launch(opts).unwrap();
    let ctl = Ctl::for_role("operator", dir, &format!("127.0.0.1:{port}"));
    let reader = Ctl::for_role("reader", dir, &format!("127.0.0.1:{port}"));
    let sample = |after_cycle: usize| {
        // Asked again while init has not yet listed its services after a boot.
        let services: serde_json::Value =
            serde_json::from_str(&reader.until_ok(&["--json", "services"])).unwrap();
        let cairnd = services["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "cairnd"))
            .cloned()
            .unwrap_or_default();
        Sample {
            after_cycle,
            rss_kib: cairnd["rss_bytes"].as_u64().unwrap_or(0) >> 10,
            open_fds: cairnd["open_fds"].as_u64().unwrap_or(0),
        }
    };
    let mut report = Report {
        board: board.name,
        asked: cycles,
        cycles: Vec::new(),
        samples: Vec::new(),
    };
    let first = ready(&mut m).and_then(|_| settled(&mut m));
    if let Err(e) = first {
        panic!("the soak's machine did not come up: {e}");
    }
    report.samples.push(sample(0));
    let mut at: Place = ("a".into(), FIRST.into());
    for n in 1..=cycles {
        let kind = Kind::TURN[(n - 1) % Kind::TURN.len()];
        let began = Instant::now();
        let (expected, got) = cycle(&mut m, &ctl, kind, &at, &bundles);
        let c = Cycle {
            n,
            kind,
            from: at.clone(),
            expected,
            got,
            seconds: began.elapsed().as_secs_f64(),
        };
        eprintln!(
            "soak cycle {n}/{cycles} {}: {} ({:.0} s)",
            kind.name(),
            match &c.got {
                Ok((s, v)) if c.right() => format!("ok, on {s}:{v}"),
                Ok((s, v)) => format!(
                    "WRONG: on {s}:{v}, expected {}:{}",
                    c.expected.0, c.expected.1
                ),
                Err(e) => format!("WRONG: {e}"),
            },
            c.seconds
        );
        let lost = c.got.is_err();
        if let Ok(place) = &c.got {
            at = place.clone();
        }
        report.cycles.push(c);
        if lost {
            // Where it is now, if it still answers; otherwise the soak cannot go on.
            match where_now(&ctl) {
                Ok(place) => at = place,
                Err(_) => break,
            }
        }
        if n % sample_every.max(1) == 0 {
            report.samples.push(sample(n));
        }
    }
    let _ = m.kill();
    report
}
