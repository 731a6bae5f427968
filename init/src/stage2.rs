//! Stage 2: PID 1 inside the root filesystem, from exec to supervision.
//!
//! Mounts `/tmp`, reads `VERSION` and `BOOTLOADER` from `/etc/cairn/release`, mounts the
//! bootloader's partition read-only on `/boot` to learn whether this boot is a trial
//! ([`crate::bootstate`]), starts the supervisor (signals blocked, power keys open) and then
//! prints the two lines boot tests wait for:
//!
//! ```text
//! cairn-init: ready slot=a trial=no version=0.1.0 boot_ms=1234
//! cairn-init: init_ms=412 rss_kib=1320 anon_kib=40 file_kib=1280
//! ```
//!
//! After them it loads the late kernel modules ([`crate::late`]) and the containers' modules,
//! then lets go of its boot-only pages ([`crate::trim`]); the supervisor prints
//! `cairn-init: supervising: rss_kib=… anon_kib=… file_kib=…` at its first periodic scan.
//!
//! `boot_ms` is `CLOCK_BOOTTIME` at that moment; `rss_kib` init's resident memory, split into
//! `anon_kib` (heap, stacks) and `file_kib` (its binary's pages); `init_ms` runs from stage 1's start (handed over
//! in `CAIRN_INIT_START_NS`) or, on a boot without initramfs, from stage 2's own start. The slot
//! comes from `CAIRN_SLOT`, else from `cairn.slot` on the command line. If `/proc` is not mounted
//! (no initramfs), stage 2 mounts the API filesystems itself.

use std::time::Duration;

use crate::bootstate::{self, Trial};
use crate::cmdline::{Cmdline, Slot};
use crate::error::{Error, Result};
use crate::log::Logger;
use crate::mounts;
use crate::paths::{self, limits, read_limited, Paths};
use crate::services::SERVICES;
use crate::shutdown::Power;
use crate::supervisor::Supervisor;
use crate::sys::Syscalls;

/// What stage 1 handed over in the environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    pub start: Option<Duration>,
    pub slot: Option<Slot>,
}

impl Handoff {
    /// Reads `CAIRN_INIT_START_NS` and `CAIRN_SLOT` through `get` (`std::env::var` on a device).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            start: get(paths::ENV_START_NS)
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_nanos),
            slot: get(paths::ENV_SLOT).and_then(|s| Slot::parse(&s)),
        }
    }
}

/// The exact ready line tests match on.
pub fn ready_line(slot: Slot, trial: Trial, version: &str, boot_ms: u128) -> String {
    format!(
        "ready slot={} trial={} version={version} boot_ms={boot_ms}",
        slot.as_str(),
        trial.as_str()
    )
}

/// What stage 2 learns before it reports ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFacts {
    pub slot: Slot,
    pub trial: Trial,
    pub version: String,
}

/// The timing line printed after the ready line.
pub fn timing_line(init_ms: u128, rss_kib: Option<u64>) -> String {
    match rss_kib {
        Some(kib) => format!("init_ms={init_ms} rss_kib={kib}"),
        None => format!("init_ms={init_ms} rss_kib=unknown"),
    }
}

/// `VERSION=` from a release file; surrounding quotes are removed.
pub fn parse_release_version(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("VERSION="))
        .map(|v| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
}

/// `VmRSS:` in kB from `/proc/<pid>/status`.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS:")
}

/// The kB figure of the `/proc/<pid>/status` line starting with `key`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Everything before supervision: returns the started supervisor (ready lines printed).
pub fn prepare<'a>(
    sys: &'a dyn Syscalls,
    log: &'a Logger,
    paths: &'a Paths,
    handoff: Handoff,
    own_start: Duration,
) -> Result<Supervisor<'a>> {
    let facts = boot_facts(sys, log, paths, handoff)?;
    log.debug(format_args!(
        "stage 2 up at {} ms (boottime)",
        own_start.as_millis()
    ));
    let mut supervisor = Supervisor::start(sys, log, paths, SERVICES)?;
    print_ready(sys, log, paths, &facts, handoff.start.unwrap_or(own_start));
    // The rest of the machine's drivers (cairnd waits for them), then what containers need.
    crate::late::load(sys, log, paths, crate::late::workers(paths));
    // A power key whose driver just loaded.
    supervisor.rescan_keys();
    crate::containers::setup(sys, log, paths);
    // The boot's code is done with: init keeps only the pages it runs from here on, and says
    // how much that is at the first periodic scan (crate::trim).
    crate::trim::release_boot_pages(log, paths);
    supervisor.report_resident_at_next_scan();
    Ok(supervisor)
}

/// Mounts and reads what the ready line needs (all the testable work of stage 2).
pub fn boot_facts(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    handoff: Handoff,
) -> Result<BootFacts> {
    if !mounts::is_mount_point(&paths.at("proc")) {
        let missing: Vec<_> = mounts::early()
            .into_iter()
            .filter(|m| !mounts::is_mount_point(&paths.at(m.target)))
            .collect();
        mounts::apply(sys, paths, &missing)?;
    }
    log.attach(paths);
    mounts::apply(sys, paths, &[mounts::tmp()])?;

    let slot = match handoff.slot {
        Some(s) => s,
        None => {
            let text = read_limited(&paths.at(paths::PROC_CMDLINE), limits::CMDLINE)?;
            Cmdline::parse(&text).slot()?
        }
    };
    let release = paths.at(paths::RELEASE);
    let text = read_limited(&release, limits::RELEASE)?;
    let version = parse_release_version(&text)
        .ok_or(Error::NoVersion { path: release })?
        .to_owned();
    let trial = bootstate::inspect(sys, log, paths, slot, bootstate::Kind::from_release(&text));
    Ok(BootFacts {
        slot,
        trial,
        version,
    })
}

fn print_ready(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    facts: &BootFacts,
    start: Duration,
) {
    let now = sys.boottime();
    log.info(format_args!(
        "{}",
        ready_line(facts.slot, facts.trial, &facts.version, now.as_millis())
    ));
    let status = read_limited(&paths.at(paths::PROC_STATUS), limits::PROC_STATUS).ok();
    let rss = status.as_deref().and_then(parse_vmrss_kib);
    // What the resident memory is made of: the binary's pages (file) or heap and stacks (anon).
    let split = status
        .as_deref()
        .and_then(|s| Some((status_kib(s, "RssAnon:")?, status_kib(s, "RssFile:")?)))
        .map_or(String::new(), |(anon, file)| {
            format!(" anon_kib={anon} file_kib={file}")
        });
    log.info(format_args!(
        "{}{split}",
        timing_line(now.saturating_sub(start).as_millis(), rss)
    ));
}

/// Runs stage 2 until a shutdown is requested.
pub fn run(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    handoff: Handoff,
    own_start: Duration,
) -> Result<Power> {
    Ok(prepare(sys, log, paths, handoff, own_start)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};

    #[test]
    fn ready_line_format() {
        assert_eq!(
            format!(
                "cairn-init: {}",
                ready_line(Slot::A, Trial::No, "0.1.0", 1234)
            ),
            "cairn-init: ready slot=a trial=no version=0.1.0 boot_ms=1234"
        );
        assert_eq!(timing_line(412, Some(1320)), "init_ms=412 rss_kib=1320");
        let (log, mem) = Logger::memory();
        let sys = Fake::new(); // virtual clock at 1 s
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        std::fs::write(
            dir.path().join(paths::PROC_STATUS),
            "Name:\tinit\nVmHWM:\t    2000 kB\nVmRSS:\t    1320 kB\n",
        )
        .unwrap();
        let paths = Paths::under(dir.path());
        let facts = BootFacts {
            slot: Slot::B,
            trial: Trial::Yes {
                tries_left: Some(2),
            },
            version: "0.1.0".into(),
        };
        print_ready(&sys, &log, &paths, &facts, Duration::from_millis(400));
        assert_eq!(
            mem.lines(),
            [
                "cairn-init: ready slot=b trial=yes version=0.1.0 boot_ms=1000",
                "cairn-init: init_ms=600 rss_kib=1320"
            ]
        );
    }

    #[test]
    fn release_and_status_parsing() {
        assert_eq!(
            parse_release_version("BOARD=qemu-aarch64\nVERSION=0.1.0\n"),
            Some("0.1.0")
        );
        assert_eq!(parse_release_version("VERSION=\"1.2\"\n"), Some("1.2"));
        assert_eq!(parse_release_version("BOARD=x\n"), None);
        assert_eq!(parse_release_version("VERSION=\n"), None);
        assert_eq!(parse_vmrss_kib("VmRSS:\t     884 kB\n"), Some(884));
        assert_eq!(parse_vmrss_kib("VmSize: 1 kB\n"), None);
    }

    #[test]
    fn handoff_from_env() {
        let env = |k: &str| match k {
            "CAIRN_INIT_START_NS" => Some("812000123".to_string()),
            "CAIRN_SLOT" => Some("b".to_string()),
            _ => None,
        };
        assert_eq!(
            Handoff::from_env(env),
            Handoff {
                start: Some(Duration::from_nanos(812_000_123)),
                slot: Some(Slot::B)
            }
        );
        assert_eq!(Handoff::from_env(|_| None), Handoff::default());
    }

    fn root(release: &str, cmdline: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["etc/cairn", "tmp"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join(paths::RELEASE), release).unwrap();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(r.join(paths::PROC_CMDLINE), cmdline).unwrap();
        dir
    }

    #[test]
    fn boot_facts_mounts_tmp_and_reads_release() {
        let dir = root("VERSION=0.1.0\nBOARD=qemu-aarch64\n", "cairn.slot=b");
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let paths = Paths::under(dir.path());
        let handoff = Handoff {
            start: None,
            slot: Some(Slot::A),
        };
        let facts = boot_facts(&sys, &log, &paths, handoff).unwrap();
        assert_eq!(
            (facts.slot, facts.version.as_str()),
            (Slot::A, "0.1.0"),
            "env slot wins"
        );
        assert_eq!(facts.trial, Trial::Unknown, "no BOOTLOADER= line");
        let calls = sys.actions();
        // /proc in a tempdir is no mount point, so the API filesystems are mounted first.
        let fstypes: Vec<&str> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { fstype, .. } => Some(fstype.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(fstypes, ["proc", "sysfs", "devtmpfs", "tmpfs", "tmpfs"]);
        assert!(calls.contains(&Call::Mount {
            source: "tmpfs".into(),
            target: dir.path().join("tmp"),
            fstype: "tmpfs".into(),
            flags: crate::sys::MountFlags::NOSUID | crate::sys::MountFlags::NODEV,
            data: "mode=1777".into(),
        }));
        let facts = boot_facts(&sys, &log, &paths, Handoff::default()).unwrap();
        assert_eq!(facts.slot, Slot::B, "cmdline when no handoff");
    }

    #[test]
    fn release_without_version_is_an_error() {
        let dir = root("BOARD=x\n", "cairn.slot=a");
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err =
            boot_facts(&sys, &log, &Paths::under(dir.path()), Handoff::default()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("etc/cairn/release has no VERSION= line"),
            "{err}"
        );
    }
}
