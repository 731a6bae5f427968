//! Leaving the initramfs for the real root, the way busybox `switch_root` does.
//!
//! The sequence, in [`switch_root`]: mount the root squashfs read-only on `/newroot` (from the
//! dm-verity device that stage 1 set up, so every block read is checked); check that it has
//! `/sbin/init` and the mount points for `/dev /proc /sys /run`; move those four mounts under
//! it; confirm `/` is a ramfs/tmpfs and delete the initramfs's files (without crossing
//! mount points, so `/newroot` and the moved mounts are untouched) to give their RAM back; then
//! `chdir /newroot`, `mount --move . /`, `chroot .`, `chdir /`, and exec `/sbin/init` with
//! `CAIRN_INIT_START_NS` (stage 1's `CLOCK_BOOTTIME` start in ns) and `CAIRN_SLOT` (`a`/`b`).
//! Every check that can fail runs before the first destructive step.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmdline::Slot;
use crate::error::{Error, Result};
use crate::log::Logger;
use crate::mounts::ensure_dir;
use crate::paths::{self, Paths};
use crate::sys::{Mount, MountFlags, Syscalls, RAMFS_MAGIC, TMPFS_MAGIC};

/// The mounts carried over into the new root, in move order.
pub const MOVED_MOUNTS: [&str; 4] = ["dev", "proc", "sys", "run"];

/// What runs on the mounted and checked root before the switch (the containers extension's
/// overlay); it is given `/newroot`.
pub type BeforeSwitch<'a> = &'a dyn Fn(&Path);

/// Switches to the root filesystem on `device` and executes its init. Returns only on failure.
pub fn switch_root(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    device: &Path,
    slot: Slot,
    start: Duration,
    before: Option<BeforeSwitch<'_>>,
) -> Error {
    match try_switch_root(sys, log, paths, device, slot, start, before) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_switch_root(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    device: &Path,
    slot: Slot,
    start: Duration,
    before: Option<BeforeSwitch<'_>>,
) -> Result<std::convert::Infallible> {
    let newroot = paths.at(paths::NEWROOT);
    ensure_dir(sys, &newroot)?;
    let dev = device.to_string_lossy();
    sys.mount(&Mount {
        source: &dev,
        target: &newroot,
        fstype: "squashfs",
        flags: MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
        data: "",
    })
    .map_err(|source| Error::Mount {
        fstype: "squashfs".into(),
        source_name: dev.to_string(),
        target: newroot.clone(),
        source,
    })?;

    let bad_root = |what: String| Error::BadNewRoot {
        root: newroot.clone(),
        what,
    };
    let init = newroot.join(paths::STAGE2_INIT.trim_start_matches('/'));
    if !std::fs::metadata(&init).is_ok_and(|m| m.is_file()) {
        return Err(bad_root(format!("{} (regular file)", paths::STAGE2_INIT)));
    }
    for m in MOVED_MOUNTS {
        if !newroot.join(m).is_dir() {
            return Err(bad_root(format!(
                "/{m} directory to move the {m} mount onto"
            )));
        }
    }

    if let Some(before) = before {
        before(&newroot);
    }
    for m in MOVED_MOUNTS {
        let (from, to) = (paths.at(m), newroot.join(m));
        sys.mount_move(&from, &to)
            .map_err(|source| Error::MoveMount { from, to, source })?;
    }

    let root = paths.root();
    let magic = sys.fs_magic(root).map_err(|source| Error::Sys {
        op: "statfs",
        path: root.to_owned(),
        source,
    })?;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return Err(Error::NotInitramfs {
            path: root.to_owned(),
            magic,
        });
    }
    // Not fatal: a file left behind costs RAM, not correctness.
    if let Err(e) = sys.remove_tree_same_fs(root, &newroot) {
        log.warn(format_args!("could not fully delete the initramfs: {e}"));
    }

    let sys_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Sys { op, path, source }
    };
    sys.chdir(&newroot).map_err(sys_err("chdir", &newroot))?;
    sys.mount_move(Path::new("."), root)
        .map_err(|source| Error::MoveMount {
            from: newroot.clone(),
            to: root.to_owned(),
            source,
        })?;
    sys.chroot(Path::new("."))
        .map_err(sys_err("chroot", &newroot))?;
    sys.chdir(Path::new("/"))
        .map_err(sys_err("chdir", Path::new("/")))?;

    log.debug(format_args!(
        "root switched at {} ms; exec {}",
        sys.boottime().as_millis(),
        paths::STAGE2_INIT
    ));
    let start_ns = start.as_nanos().to_string();
    let init = Path::new(paths::STAGE2_INIT);
    let source = sys.exec(
        init,
        &[paths::STAGE2_INIT],
        &[
            (paths::ENV_START_NS, start_ns.as_str()),
            (paths::ENV_SLOT, slot.as_str()),
        ],
    );
    Err(Error::Exec {
        path: init.to_owned(),
        source,
    })
}

/// Deletes everything below `root` on `root`'s filesystem except `keep`; symlinks are removed,
/// never followed, and directories on other filesystems (mount points) are skipped whole.
/// Keeps going after errors and returns the first.
pub fn remove_tree_same_fs(root: &Path, keep: &Path) -> io::Result<()> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut first_err = None;
    remove_children(root, keep, dev, &mut first_err);
    first_err.map_or(Ok(()), Err)
}

fn remove_children(dir: &Path, keep: &Path, dev: u64, err: &mut Option<io::Error>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return note(err, e),
    };
    for entry in entries {
        let path: PathBuf = match entry {
            Ok(e) => e.path(),
            Err(e) => {
                note(err, e);
                continue;
            }
        };
        if path == keep {
            continue;
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                note(err, e);
                continue;
            }
        };
        let result = if meta.is_dir() {
            if meta.dev() != dev {
                continue;
            }
            remove_children(&path, keep, dev, err);
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = result {
            note(err, e);
        }
    }
}

fn note(slot: &mut Option<io::Error>, e: io::Error) {
    slot.get_or_insert(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};

    /// An initramfs-like tree whose "newroot" looks like a mounted Cairn root.
    fn setup() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in [
            "newroot/sbin",
            "newroot/dev",
            "newroot/proc",
            "newroot/sys",
            "newroot/run",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("newroot/sbin/init"), "cairn").unwrap();
        let paths = Paths::under(r);
        (dir, paths)
    }

    #[test]
    fn call_sequence() {
        let (dir, paths) = setup();
        let r = dir.path();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let dev = r.join("dev/vda2");
        let err = switch_root(
            &sys,
            &log,
            &paths,
            &dev,
            Slot::B,
            Duration::from_millis(812),
            None,
        );
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        let nr = r.join("newroot");
        let mv = |m: &str| Call::MountMove(r.join(m), nr.join(m));
        assert_eq!(
            sys.calls(),
            [
                Call::Mount {
                    source: dev.to_string_lossy().into(),
                    target: nr.clone(),
                    fstype: "squashfs".into(),
                    flags: MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
                    data: "".into(),
                },
                mv("dev"),
                mv("proc"),
                mv("sys"),
                mv("run"),
                Call::RemoveTree {
                    root: r.to_owned(),
                    keep: nr.clone()
                },
                Call::Chdir(nr.clone()),
                Call::MountMove(".".into(), r.to_owned()),
                Call::Chroot(".".into()),
                Call::Chdir("/".into()),
                Call::Exec {
                    path: "/sbin/init".into(),
                    argv: vec!["/sbin/init".into()],
                    env: vec![
                        ("CAIRN_INIT_START_NS".into(), "812000000".into()),
                        ("CAIRN_SLOT".into(), "b".into())
                    ],
                },
            ]
        );
    }

    #[test]
    fn root_without_init_is_refused_before_anything_moves() {
        let (dir, paths) = setup();
        std::fs::remove_file(dir.path().join("newroot/sbin/init")).unwrap();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = switch_root(
            &sys,
            &log,
            &paths,
            Path::new("/dev/vda2"),
            Slot::A,
            Duration::ZERO,
            None,
        );
        assert!(err.to_string().contains("has no /sbin/init"), "{err}");
        assert_eq!(
            sys.calls().len(),
            1,
            "only the squashfs mount: {:?}",
            sys.calls()
        );
    }

    #[test]
    fn missing_mount_point_in_root_is_refused() {
        let (dir, paths) = setup();
        std::fs::remove_dir(dir.path().join("newroot/run")).unwrap();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = switch_root(
            &sys,
            &log,
            &paths,
            Path::new("/dev/vda2"),
            Slot::A,
            Duration::ZERO,
            None,
        );
        assert!(err.to_string().contains("has no /run directory"), "{err}");
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::MountMove(..))));
    }

    #[test]
    fn refuses_to_delete_a_disk_root() {
        let (_dir, paths) = setup();
        let sys = Fake::new();
        sys.set_fs_magic(0xEF53); // ext4
        let (log, _) = Logger::memory();
        let err = switch_root(
            &sys,
            &log,
            &paths,
            Path::new("/dev/vda2"),
            Slot::A,
            Duration::ZERO,
            None,
        );
        assert!(
            matches!(err, Error::NotInitramfs { magic: 0xEF53, .. }),
            "{err}"
        );
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::RemoveTree { .. } | Call::Chroot(_))));
    }

    #[test]
    fn deletion_failure_is_not_fatal() {
        let (_dir, paths) = setup();
        let sys = Fake::new();
        sys.fail_when(|c| matches!(c, Call::RemoveTree { .. }), libc::EBUSY);
        let (log, mem) = Logger::memory();
        let err = switch_root(
            &sys,
            &log,
            &paths,
            Path::new("/dev/vda2"),
            Slot::A,
            Duration::ZERO,
            None,
        );
        assert!(matches!(err, Error::Exec { .. }));
        assert!(mem.text().contains("could not fully delete the initramfs"));
    }

    #[test]
    fn remove_tree_keeps_newroot_and_does_not_follow_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "x").unwrap();
        let (dir, _) = setup();
        let r = dir.path();
        std::fs::create_dir_all(r.join("lib/modules")).unwrap();
        std::fs::write(r.join("lib/modules/a.ko"), "ko").unwrap();
        std::fs::write(r.join("init"), "bin").unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("link")).unwrap();
        remove_tree_same_fs(r, &r.join("newroot")).unwrap();
        let left: Vec<_> = std::fs::read_dir(r)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["newroot"]);
        assert!(r.join("newroot/sbin/init").exists());
        assert!(outside.path().join("precious").exists());
    }
}
