//! The syscalls PID 1 makes, behind one trait so the boot and shutdown logic runs in unit tests.
//!
//! [`Real`] performs them (and is only ever constructed by `entry` after checking that we are
//! process 1); `fake::Fake` (tests only) records them, answers from a script, and keeps a
//! virtual clock so that timeouts and delays cost no wall time. Everything that mutates the
//! machine goes through here; code outside may only read files under a [`crate::paths::Paths`]
//! root.

mod real;

#[cfg(test)]
pub mod fake;

pub use real::Real;

use std::io;
use std::path::Path;
use std::time::Duration;

pub use rustix::mount::MountFlags;

/// One `mount(2)` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    pub source: &'a str,
    pub target: &'a Path,
    pub fstype: &'a str,
    pub flags: MountFlags,
    pub data: &'a str,
}

/// `reboot(2)` commands init uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootCmd {
    /// Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
    CadOff,
    PowerOff,
    Restart,
}

/// Signals init sends to every other process during shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillSignal {
    Term,
    Kill,
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
    Other,
}

/// `umount2(2)` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Umount {
    Normal,
    /// `MNT_DETACH`: lazy unmount, for mounts that are still busy.
    Detach,
}

/// The syscalls of PID 1. Paths are absolute (already joined onto the [`crate::paths::Paths`]
/// root) except where a method says otherwise.
pub trait Syscalls {
    fn mount(&self, m: &Mount<'_>) -> io::Result<()>;
    /// `mount --move from to`.
    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `mount -o remount,ro target`.
    fn remount_read_only(&self, target: &Path) -> io::Result<()>;
    fn umount(&self, target: &Path, mode: Umount) -> io::Result<()>;
    /// `mkdir(2)`; an existing directory is an `AlreadyExists` error for the caller to accept.
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// `open` + `finit_module(2)`.
    fn load_module(&self, path: &Path, params: &str) -> io::Result<()>;
    /// The same calls, shareable between threads, when the implementation allows it (the real
    /// one does; the test fake records calls on one thread and answers `None`).
    fn shared(&self) -> Option<&(dyn Syscalls + Sync)> {
        None
    }
    /// Does not return on success for `PowerOff` and `Restart` (the fake does).
    fn reboot(&self, cmd: RebootCmd) -> io::Result<()>;
    /// `reboot(2)` with `LINUX_REBOOT_CMD_RESTART2`: restart, handing `arg` to the firmware.
    fn reboot_with_argument(&self, arg: &str) -> io::Result<()>;
    /// `kill(-1, sig)`: every process except init itself.
    fn kill_all(&self, sig: KillSignal) -> io::Result<()>;
    /// `waitpid(-1, WNOHANG)`: `Ok(None)` if children exist but none has exited,
    /// `Err(ECHILD)` if there are no children.
    fn reap(&self) -> io::Result<Option<(i32, ChildExit)>>;
    fn chroot(&self, path: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// `execve(path, argv, env)` with exactly `env`; returns only on failure.
    fn exec(&self, path: &Path, argv: &[&str], env: &[(&str, &str)]) -> io::Error;
    /// Starts `path` with `argv` (`argv[0]` included) and an empty signal mask; returns its pid.
    fn spawn(&self, path: &Path, argv: &[&str]) -> io::Result<i32>;
    /// Opens `console` and makes it stdin, stdout and stderr.
    fn stdio_to_console(&self, console: &Path) -> io::Result<()>;
    fn sync(&self);
    fn sleep(&self, d: Duration);
    /// `CLOCK_BOOTTIME`: time since boot, including suspend.
    fn boottime(&self) -> Duration;
    /// `statfs(2)` `f_type` of the filesystem holding `path`.
    fn fs_magic(&self, path: &Path) -> io::Result<u64>;
    /// Deletes everything under `root` that is on the same filesystem as `root`, except `keep`,
    /// without following symlinks or crossing mount points (see [`crate::switch_root`]).
    fn remove_tree_same_fs(&self, root: &Path, keep: &Path) -> io::Result<()>;
    /// Opens `control` (`/dev/mapper/control`) and sends `cmd` with `buf`, a request built by
    /// [`cairn_dm::Request`]; the kernel's reply overwrites `buf`. A failed command is an `Err`
    /// with the kernel's errno. `buf` must hold at least the `data_size` its header declares.
    fn dm_ioctl(&self, control: &Path, cmd: cairn_dm::Command, buf: &mut [u8]) -> io::Result<()>;
}

pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
