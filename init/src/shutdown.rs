//! Clean power-off and reboot, and the fatal-error reboot.
//!
//! [`shutdown`]: SIGTERM to every process; reap them for up to [`TERM_GRACE`]; SIGKILL to every
//! process; sync; unmount everything in `/proc/self/mountinfo` in reverse order except `/`
//! (falling back to a lazy `MNT_DETACH` unmount; failures are logged, never fatal); remount `/`
//! read-only; sync; `reboot(2)`.
//!
//! [`fatal`]: log `fatal: <error>; rebooting in N s`, wait N s so the line can be read, sync,
//! `reboot(RESTART)`. The caller sleeps forever if that returns.

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::log::Logger;
use crate::mounts::parse_mountinfo;
use crate::paths::{self, limits, read_limited, Paths};
use crate::sys::{KillSignal, RebootCmd, Syscalls, Umount};

/// How long processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
const REAP_POLL: Duration = Duration::from_millis(20);

/// What a shutdown ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    Off,
    Reboot,
}

impl Power {
    fn verb(self) -> &'static str {
        match self {
            Power::Off => "power-off",
            Power::Reboot => "reboot",
        }
    }
}

/// Runs the clean shutdown sequence. Returns only if `reboot(2)` returned (its error).
pub fn shutdown(sys: &dyn Syscalls, log: &Logger, paths: &Paths, power: Power) -> io::Result<()> {
    // Read before /run is unmounted.
    let reboot_arg = match power {
        Power::Reboot => reboot_param(log, paths),
        Power::Off => None,
    };
    log.info(format_args!(
        "{}: sending SIGTERM to all processes",
        power.verb()
    ));
    let _ = sys.kill_all(KillSignal::Term);
    let start = sys.boottime();
    let left = loop {
        match sys.reap() {
            Ok(Some(_)) => continue,
            Ok(None) if sys.boottime().saturating_sub(start) < TERM_GRACE => sys.sleep(REAP_POLL),
            Ok(None) => break true,
            Err(_) => break false, // ECHILD: nothing left
        }
    };
    if left {
        log.info(format_args!(
            "{}: processes still running after {} s; sending SIGKILL",
            power.verb(),
            TERM_GRACE.as_secs()
        ));
    }
    let _ = sys.kill_all(KillSignal::Kill);
    while let Ok(Some(_)) = sys.reap() {}
    sys.sync();

    unmount_all(sys, log, paths);
    if let Err(e) = sys.remount_read_only(Path::new("/")) {
        log.warn(format_args!("remounting / read-only: {e}"));
    }
    sys.sync();
    log.info(format_args!(
        "{}: filesystems synced and unmounted; {}",
        power.verb(),
        match power {
            Power::Off => "powering off",
            Power::Reboot => "rebooting",
        }
    ));
    match (power, reboot_arg) {
        (Power::Reboot, Some(arg)) => {
            log.info(format_args!("reboot argument {arg:?}"));
            if let Err(e) = sys.reboot_with_argument(&arg) {
                log.warn(format_args!(
                    "reboot with argument {arg:?}: {e}; rebooting without it"
                ));
                return sys.reboot(RebootCmd::Restart);
            }
            Ok(())
        }
        (Power::Reboot, None) => sys.reboot(RebootCmd::Restart),
        (Power::Off, _) => sys.reboot(RebootCmd::PowerOff),
    }
}

/// The argument requested for this reboot in [`paths::REBOOT_PARAM`], if any and if usable:
/// one line of printable ASCII. Anything else is ignored with a warning, so a bad file can
/// never stop the machine from restarting.
fn reboot_param(log: &Logger, paths: &Paths) -> Option<String> {
    let path = paths.at(paths::REBOOT_PARAM);
    if !path.exists() {
        return None;
    }
    // One byte over the limit is enough to tell "too long" from "fits".
    let text = match read_limited(&path, limits::REBOOT_PARAM + 2) {
        Ok(t) => t,
        Err(e) => {
            log.warn(format_args!(
                "ignoring {}: {}",
                path.display(),
                crate::error::chain(&e)
            ));
            return None;
        }
    };
    let arg = text.strip_suffix('\n').unwrap_or(&text);
    let usable = !arg.is_empty()
        && arg.len() <= limits::REBOOT_PARAM
        && arg.bytes().all(|b| (0x20..0x7f).contains(&b));
    if usable {
        Some(arg.to_string())
    } else {
        log.warn(format_args!(
            "ignoring {}: not one line of at most {} printable ASCII characters",
            path.display(),
            limits::REBOOT_PARAM
        ));
        None
    }
}

/// Unmounts every mount but `/`, last mounted first.
fn unmount_all(sys: &dyn Syscalls, log: &Logger, paths: &Paths) {
    let mountinfo = match read_limited(&paths.at(paths::PROC_MOUNTINFO), limits::MOUNTINFO) {
        Ok(t) => t,
        Err(e) => {
            log.warn(format_args!("not unmounting: {}", crate::error::chain(&e)));
            return;
        }
    };
    for target in parse_mountinfo(&mountinfo).iter().rev() {
        if target == Path::new("/") {
            continue;
        }
        if sys.umount(target, Umount::Normal).is_ok() {
            continue;
        }
        if let Err(e) = sys.umount(target, Umount::Detach) {
            log.warn(format_args!("unmounting {}: {e}", target.display()));
        }
    }
}

/// The fatal-error path: tell, wait, sync, reboot. Returns the reboot error if it returns.
pub fn fatal(sys: &dyn Syscalls, log: &Logger, error: &str, delay: Duration) -> io::Result<()> {
    log.error(format_args!(
        "fatal: {error}; rebooting in {} s",
        delay.as_secs()
    ));
    sys.sleep(delay);
    sys.sync();
    sys.reboot(RebootCmd::Restart)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};
    use crate::sys::ChildExit;
    use std::path::PathBuf;

    fn proc_with_mountinfo() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        std::fs::write(
            dir.path().join(paths::PROC_MOUNTINFO),
            "22 1 254:2 / / ro,nodev,nosuid - squashfs /dev/vda2 ro\n\
             2 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n\
             3 22 0:20 / /proc rw - proc proc rw\n\
             4 22 0:21 / /sys rw - sysfs sysfs rw\n\
             5 22 0:22 / /run rw - tmpfs tmpfs rw\n\
             30 22 0:30 / /tmp rw - tmpfs tmpfs rw\n\
             31 30 0:31 / /tmp/a\\040b rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        let p = Paths::under(dir.path());
        (dir, p)
    }

    #[test]
    fn shutdown_order() {
        let (_dir, paths) = proc_with_mountinfo();
        let sys = Fake::new();
        sys.script_reaps([Ok(Some((7, ChildExit::Code(0)))), Ok(None)]);
        sys.fail_when(
            |c| *c == Call::Umount("/dev".into(), Umount::Normal),
            libc::EBUSY,
        );
        sys.fail_when(
            |c| matches!(c, Call::Umount(p, _) if p == Path::new("/sys")),
            libc::EINVAL,
        );
        let (log, mem) = Logger::memory();
        shutdown(&sys, &log, &paths, Power::Off).unwrap();
        let um = |p: &str, m| Call::Umount(PathBuf::from(p), m);
        assert_eq!(
            sys.actions(),
            [
                Call::KillAll(KillSignal::Term),
                Call::KillAll(KillSignal::Kill),
                Call::Sync,
                um("/tmp/a b", Umount::Normal),
                um("/tmp", Umount::Normal),
                um("/run", Umount::Normal),
                um("/sys", Umount::Normal),
                um("/sys", Umount::Detach),
                um("/proc", Umount::Normal),
                um("/dev", Umount::Normal),
                um("/dev", Umount::Detach),
                Call::RemountRo("/".into()),
                Call::Sync,
                Call::Reboot(RebootCmd::PowerOff),
            ]
        );
        let text = mem.text();
        assert!(text.contains("power-off: sending SIGTERM to all processes"));
        assert!(text.contains("unmounting /sys: Invalid argument"), "{text}");
        assert!(!text.contains("unmounting /dev"), "detach worked: {text}");
    }

    #[test]
    fn reboot_carries_the_requested_argument() {
        let (dir, paths) = proc_with_mountinfo();
        std::fs::create_dir_all(dir.path().join("run/cairn")).unwrap();
        std::fs::write(dir.path().join(paths::REBOOT_PARAM), "0 tryboot\n").unwrap();
        let (log, mem) = Logger::memory();

        let sys = Fake::new();
        shutdown(&sys, &log, &paths, Power::Reboot).unwrap();
        assert_eq!(
            sys.actions().last(),
            Some(&Call::RebootWithArgument("0 tryboot".into()))
        );
        assert!(mem.text().contains("reboot argument \"0 tryboot\""));

        // A power-off ignores it.
        let sys = Fake::new();
        shutdown(&sys, &log, &paths, Power::Off).unwrap();
        assert_eq!(
            sys.actions().last(),
            Some(&Call::Reboot(RebootCmd::PowerOff))
        );

        // If the kernel refuses the argument, the machine still restarts.
        let sys = Fake::new();
        sys.fail_when(|c| matches!(c, Call::RebootWithArgument(_)), libc::EINVAL);
        shutdown(&sys, &log, &paths, Power::Reboot).unwrap();
        assert_eq!(
            sys.actions().last(),
            Some(&Call::Reboot(RebootCmd::Restart))
        );
    }

    #[test]
    fn unusable_reboot_argument_is_ignored() {
        let (dir, paths) = proc_with_mountinfo();
        std::fs::create_dir_all(dir.path().join("run/cairn")).unwrap();
        for bad in ["", "two\nlines", "tab\there", &"x".repeat(300)] {
            std::fs::write(dir.path().join(paths::REBOOT_PARAM), bad).unwrap();
            let (log, mem) = Logger::memory();
            let sys = Fake::new();
            shutdown(&sys, &log, &paths, Power::Reboot).unwrap();
            assert_eq!(
                sys.actions().last(),
                Some(&Call::Reboot(RebootCmd::Restart)),
                "{bad:?}"
            );
            assert!(mem.text().contains("ignoring"), "{bad:?}");
        }
    }

    #[test]
    fn term_grace_is_bounded() {
        let (_dir, paths) = proc_with_mountinfo();
        let sys = Fake::new();
        // A child that never exits: reap keeps answering "none ready".
        sys.script_reaps(std::iter::repeat_with(|| Ok(None)).take(10_000));
        let (log, mem) = Logger::memory();
        let start = sys.now();
        shutdown(&sys, &log, &paths, Power::Reboot).unwrap();
        let waited = sys.now() - start;
        assert!(
            waited >= TERM_GRACE && waited < TERM_GRACE + REAP_POLL * 2,
            "{waited:?}"
        );
        assert!(mem.text().contains("sending SIGKILL"));
        assert_eq!(
            sys.actions().last(),
            Some(&Call::Reboot(RebootCmd::Restart))
        );
    }

    #[test]
    fn fatal_waits_then_reboots() {
        let sys = Fake::new();
        let (log, mem) = Logger::memory();
        fatal(&sys, &log, "mounting proc: EPERM", Duration::from_secs(7)).unwrap();
        assert_eq!(
            sys.calls(),
            [
                Call::Sleep(Duration::from_secs(7)),
                Call::Sync,
                Call::Reboot(RebootCmd::Restart)
            ]
        );
        assert_eq!(
            mem.lines(),
            ["cairn-init: fatal: mounting proc: EPERM; rebooting in 7 s"]
        );
    }

    #[test]
    fn fatal_reports_failed_reboot() {
        let sys = Fake::new();
        sys.fail_when(|c| matches!(c, Call::Reboot(_)), libc::EPERM);
        let (log, _) = Logger::memory();
        assert!(fatal(&sys, &log, "x", Duration::ZERO).is_err());
    }
}
