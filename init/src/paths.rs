//! The file contract between init, the kernel and the image builder, rooted at one directory.
//!
//! Every path init reads or writes is a constant here, joined onto [`Paths::root`]: `/` on a
//! device, a tempdir in unit tests. Files are read with [`read_limited`], which caps their size,
//! because a PID 1 that allocates without bound can take the machine down with it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Present only in the initramfs (an empty file); its presence selects stage 1.
pub const INITRAMFS_MARKER: &str = "etc/cairn/initramfs";
/// Initramfs: modules to load, one path relative to `/` per line, in dependency order.
pub const MODULE_LIST: &str = "etc/cairn/modules";
/// Initramfs: the watchdog's driver and what it needs, in the same format, loaded before
/// anything else so that the watchdog runs as early as it can.
pub const WATCHDOG_MODULE_LIST: &str = "etc/cairn/modules-watchdog";
/// Root filesystem: `KEY=value` lines, at least `VERSION=`.
pub const RELEASE: &str = "etc/cairn/release";
/// Where stage 1 mounts the root filesystem before switching to it.
pub const NEWROOT: &str = "newroot";
/// What stage 1 executes inside the new root (the same `cairn` binary).
pub const STAGE2_INIT: &str = "/sbin/init";

pub const PROC_CMDLINE: &str = "proc/cmdline";
pub const PROC_MOUNTINFO: &str = "proc/self/mountinfo";
pub const PROC_STATUS: &str = "proc/self/status";
pub const PROC_PRINTK: &str = "proc/sys/kernel/printk";
pub const PROC_PRINTK_DEVKMSG: &str = "proc/sys/kernel/printk_devkmsg";
pub const SYS_CLASS_BLOCK: &str = "sys/class/block";
pub const SYS_CLASS_INPUT: &str = "sys/class/input";
pub const DEV_INPUT: &str = "dev/input";
pub const DEV_KMSG: &str = "dev/kmsg";
pub const DEV_WATCHDOG: &str = "dev/watchdog";
pub const DEV_CONSOLE: &str = "dev/console";
/// Device-mapper's control node; devtmpfs creates it when `dm_mod` loads.
pub const DEV_MAPPER_CONTROL: &str = "dev/mapper/control";
/// The argument for the next reboot, as `reboot(2)` `RESTART2` takes it (`0 tryboot` on a
/// Raspberry Pi). Written by whoever requests the reboot; systemd reads the same thing from
/// `/run/systemd/reboot-param`.
pub const REBOOT_PARAM: &str = "run/cairn/reboot-param";
/// The supervisor's service table, rewritten on every change (see `Services::take_status`).
pub const SERVICES_STATUS: &str = "run/cairn/services";

/// Environment variables stage 1 hands to stage 2 across `execve`.
pub const ENV_START_NS: &str = "CAIRN_INIT_START_NS";
pub const ENV_SLOT: &str = "CAIRN_SLOT";

/// Size caps for the files init parses.
pub mod limits {
    /// The kernel's own limit is 2048 (arm64) or 4096 bytes (x86) plus bootconfig.
    pub const CMDLINE: usize = 64 * 1024;
    pub const MODULE_LIST: usize = 256 * 1024;
    pub const MODULES: usize = 4096;
    pub const RELEASE: usize = 4096;
    pub const UEVENT: usize = 16 * 1024;
    pub const MOUNTINFO: usize = 4 * 1024 * 1024;
    pub const PROC_STATUS: usize = 64 * 1024;
    pub const SYSFS_ATTR: usize = 4096;
    /// The kernel copies at most 256 bytes of a RESTART2 argument.
    pub const REBOOT_PARAM: usize = 255;
}

/// The root that every contract path is relative to.
#[derive(Clone, Debug)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// The real system: everything under `/`.
    pub fn system() -> Self {
        Self::under("/")
    }

    /// Everything under `root` (tests pass a tempdir).
    pub fn under(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` (a contract path without leading `/`) under the root.
    pub fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }
}

/// Reads a whole text file, refusing files over `limit` bytes. Invalid UTF-8 is replaced.
pub fn read_limited(path: &Path, limit: usize) -> Result<String> {
    let read_err = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() > limit {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_joins_under_root() {
        let p = Paths::under("/tmp/x");
        assert_eq!(p.at(PROC_CMDLINE), Path::new("/tmp/x/proc/cmdline"));
        assert_eq!(p.at("/sbin/init"), Path::new("/tmp/x/sbin/init"));
        assert_eq!(Paths::system().at(NEWROOT), Path::new("/newroot"));
    }

    #[test]
    fn read_limited_caps_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "12345").unwrap();
        assert_eq!(read_limited(&f, 5).unwrap(), "12345");
        assert!(matches!(
            read_limited(&f, 4),
            Err(Error::TooLarge { limit: 4, .. })
        ));
        assert!(matches!(
            read_limited(&dir.path().join("missing"), 4),
            Err(Error::Read { .. })
        ));
    }
}
