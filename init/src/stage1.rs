//! Stage 1: PID 1 in the initramfs, from the kernel's hand-off to exec'ing the root's init.
//!
//! Mount proc, sysfs, devtmpfs and `/run`; log to kmsg and the console; disable the immediate
//! Ctrl-Alt-Del reboot (the kernel sends SIGINT instead); read `cairn.slot`; load the listed
//! modules; wait for `ROOT-<SLOT>`; [`switch_root`] into it. Stage 1 is selected by the presence
//! of `/etc/cairn/initramfs`.

use std::time::Duration;

use crate::cmdline::Cmdline;
use crate::error::{Error, Result};
use crate::log::Logger;
use crate::paths::{self, limits, read_limited, Paths};
use crate::switch_root::switch_root;
use crate::sys::{RebootCmd, Syscalls};
use crate::{modules, mounts, partition};

/// Runs stage 1; returns only on failure. `start` is `CLOCK_BOOTTIME` when init started.
pub fn run(sys: &dyn Syscalls, log: &Logger, paths: &Paths, start: Duration) -> Error {
    match try_run(sys, log, paths, start) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_run(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    start: Duration,
) -> Result<std::convert::Infallible> {
    mounts::apply(sys, paths, &mounts::early())?;
    if let Err(e) = sys.stdio_to_console(&paths.at(paths::DEV_CONSOLE)) {
        log.warn(format_args!("no console for stdio: {e}"));
    }
    log.attach(paths);
    if let Err(e) = sys.reboot(RebootCmd::CadOff) {
        log.warn(format_args!("disabling ctrl-alt-del reboot: {e}"));
    }

    let cmdline = Cmdline::parse(&read_limited(
        &paths.at(paths::PROC_CMDLINE),
        limits::CMDLINE,
    )?);
    for w in &cmdline.warnings {
        log.warn(format_args!("{w}"));
    }
    let slot = cmdline.slot()?;
    let label = slot.root_partition();

    let loaded = modules::load_all(sys, log, paths)?;
    let t_modules = sys.boottime();
    let device = partition::wait_for(sys, paths, label, partition::TIMEOUT)?;
    let now = sys.boottime();
    log.info(format_args!(
        "slot {}: {loaded} modules loaded in {} ms, {label} is {} after {} ms; switching root",
        slot.as_str(),
        t_modules.saturating_sub(start).as_millis(),
        device.display(),
        now.saturating_sub(t_modules).as_millis(),
    ));
    Err(switch_root(sys, log, paths, &device, slot, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};

    /// A fake initramfs + /sys + /dev + mounted newroot, everything stage 1 reads.
    pub(crate) fn initramfs(cmdline: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let w = |p: &str, s: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w(paths::INITRAMFS_MARKER, "");
        w(paths::PROC_CMDLINE, cmdline);
        w(
            paths::MODULE_LIST,
            "lib/modules/virtio_blk.ko\nlib/modules/squashfs.ko\n",
        );
        w(
            "sys/class/block/vda2/uevent",
            "DEVNAME=vda2\nPARTNAME=ROOT-A\n",
        );
        w(
            "sys/class/block/vda3/uevent",
            "DEVNAME=vda3\nPARTNAME=ROOT-B\n",
        );
        w("dev/vda2", "");
        w("dev/vda3", "");
        w("newroot/sbin/init", "");
        for d in ["newroot/dev", "newroot/proc", "newroot/sys", "newroot/run"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        dir
    }

    #[test]
    fn full_sequence() {
        let dir = initramfs("console=ttyAMA0 quiet panic=5 cairn.slot=b cairn.x=1\n");
        let r = dir.path();
        let sys = Fake::new();
        let (log, mem) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(r), Duration::from_millis(700));
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        let kinds: Vec<String> = sys
            .actions()
            .iter()
            .map(|c| match c {
                Call::Mount { fstype, .. } => format!("mount {fstype}"),
                Call::MountMove(a, _) => format!("move {}", a.display()),
                Call::LoadModule(p, _) => {
                    format!("load {}", p.file_name().unwrap().to_str().unwrap())
                }
                Call::Reboot(c) => format!("reboot {c:?}"),
                Call::Exec { env, .. } => format!("exec {env:?}"),
                Call::Mkdir(..) => "mkdir".into(),
                other => format!("{other:?}")
                    .split(['(', ' ', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            })
            .collect();
        let moved = |m: &str| format!("move {}", r.join(m).display());
        assert_eq!(
            kinds,
            [
                "mount proc".to_string(),
                "mount sysfs".into(),
                "mount devtmpfs".into(),
                "mkdir".into(),
                "mount tmpfs".into(),
                "StdioToConsole".into(),
                "reboot CadOff".into(),
                "load virtio_blk.ko".into(),
                "load squashfs.ko".into(),
                "mount squashfs".into(),
                moved("dev"),
                moved("proc"),
                moved("sys"),
                moved("run"),
                "RemoveTree".into(),
                "Chdir".into(),
                "move .".into(),
                "Chroot".into(),
                "Chdir".into(),
                r#"exec [("CAIRN_INIT_START_NS", "700000000"), ("CAIRN_SLOT", "b")]"#.into(),
            ]
        );
        assert!(sys.calls().contains(&Call::Mount {
            source: r.join("dev/vda3").display().to_string(),
            target: r.join("newroot"),
            fstype: "squashfs".into(),
            flags: crate::sys::MountFlags::RDONLY
                | crate::sys::MountFlags::NODEV
                | crate::sys::MountFlags::NOSUID,
            data: "".into(),
        }));
        let text = mem.text();
        assert!(
            text.contains("ignoring unknown kernel parameter cairn.x"),
            "{text}"
        );
        assert!(text.contains("ROOT-B is"), "{text}");
    }

    #[test]
    fn missing_slot_fails_before_modules() {
        let dir = initramfs("console=ttyAMA0 quiet");
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert!(matches!(err, Error::MissingSlot));
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::LoadModule(..))));
    }

    #[test]
    fn proc_mount_failure_is_reported() {
        let dir = initramfs("cairn.slot=a");
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::Mount { fstype, .. } if fstype == "proc"),
            libc::EPERM,
        );
        let (log, _) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        let line = crate::error::chain(&err);
        assert!(line.starts_with("mounting proc proc on "), "{line}");
        assert!(
            line.ends_with("Operation not permitted (os error 1)"),
            "{line}"
        );
        assert_eq!(sys.calls().len(), 1, "nothing after the failed mount");
    }
}
