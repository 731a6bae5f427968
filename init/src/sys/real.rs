//! The real syscalls, through rustix (libc only where rustix has no safe wrapper).

use std::ffi::CString;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_dm::{Control, Transport as _};
use rustix::fs::Mode;
use rustix::mount::{MountFlags, UnmountFlags};
use rustix::process::WaitOptions;
use rustix::system::RebootCommand;

use super::{ChildExit, KillSignal, Mount, RebootCmd, Syscalls, Umount};

/// `finit_module` flag: the file is compressed and the kernel decompresses it
/// (needs CONFIG_MODULE_DECOMPRESS).
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

/// The running kernel. Only `entry` constructs this, and only in process 1.
#[derive(Debug)]
pub struct Real {
    _private: (),
}

impl Real {
    /// # Safety contract (not `unsafe`, but read this)
    /// The methods mount, kill every process and reboot the machine. Only PID 1 on a Cairn device
    /// may hold one; `entry::run` checks `getpid() == 1` before calling this.
    pub(crate) fn new_for_pid1() -> Self {
        Self { _private: () }
    }
}

impl Syscalls for Real {
    fn mount(&self, m: &Mount<'_>) -> io::Result<()> {
        let data =
            CString::new(m.data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let data = (!m.data.is_empty()).then_some(data.as_c_str());
        rustix::mount::mount(m.source, m.target, m.fstype, m.flags, data)?;
        Ok(())
    }

    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()> {
        Ok(rustix::mount::mount_move(from, to)?)
    }

    fn remount_read_only(&self, target: &Path) -> io::Result<()> {
        Ok(rustix::mount::mount_remount(
            target,
            MountFlags::RDONLY,
            "",
        )?)
    }

    fn umount(&self, target: &Path, mode: Umount) -> io::Result<()> {
        let flags = match mode {
            Umount::Normal => UnmountFlags::empty(),
            Umount::Detach => UnmountFlags::DETACH,
        };
        Ok(rustix::mount::unmount(target, flags)?)
    }

    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkdir(path, Mode::from_raw_mode(mode))?)
    }

    fn shared(&self) -> Option<&(dyn Syscalls + Sync)> {
        Some(self)
    }

    fn load_module(&self, path: &Path, params: &str) -> io::Result<()> {
        let file = std::fs::File::open(path)?;
        let params =
            CString::new(params).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let name = path.as_os_str().as_encoded_bytes();
        let compressed = [&b".xz"[..], b".zst", b".gz"]
            .iter()
            .any(|ext| name.ends_with(ext));
        let flags = if compressed {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        Ok(rustix::system::finit_module(&file, &params, flags)?)
    }

    fn reboot(&self, cmd: RebootCmd) -> io::Result<()> {
        let cmd = match cmd {
            RebootCmd::CadOff => RebootCommand::CadOff,
            RebootCmd::PowerOff => RebootCommand::PowerOff,
            RebootCmd::Restart => RebootCommand::Restart,
        };
        Ok(rustix::system::reboot(cmd)?)
    }

    fn reboot_with_argument(&self, arg: &str) -> io::Result<()> {
        let arg = std::ffi::CString::new(arg)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in reboot argument"))?;
        // SAFETY: the magic numbers and command are plain integers; `arg` is a NUL-terminated
        // string that outlives the call, and the kernel only reads it (at most 256 bytes).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_reboot,
                libc::LINUX_REBOOT_MAGIC1,
                libc::LINUX_REBOOT_MAGIC2,
                libc::LINUX_REBOOT_CMD_RESTART2,
                arg.as_ptr(),
            )
        };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn kill_all(&self, sig: KillSignal) -> io::Result<()> {
        let sig = match sig {
            KillSignal::Term => libc::SIGTERM,
            KillSignal::Kill => libc::SIGKILL,
        };
        // rustix's kill takes only positive pids; -1 ("every process but init") needs libc.
        // SAFETY: kill(2) takes no pointers; any pid/signal pair is memory-safe.
        let rc = unsafe { libc::kill(-1, sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn reap(&self) -> io::Result<Option<(i32, ChildExit)>> {
        let Some((pid, status)) = rustix::process::waitpid(None, WaitOptions::NOHANG)? else {
            return Ok(None);
        };
        let exit = if let Some(code) = status.exit_status() {
            ChildExit::Code(code)
        } else if let Some(sig) = status.terminating_signal() {
            ChildExit::Signal(sig)
        } else {
            ChildExit::Other
        };
        Ok(Some((pid.as_raw_nonzero().get(), exit)))
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        Ok(rustix::process::chroot(path)?)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        Ok(rustix::process::chdir(path)?)
    }

    fn exec(&self, path: &Path, argv: &[&str], env: &[(&str, &str)]) -> io::Error {
        let mut cmd = Command::new(path);
        if let Some((arg0, rest)) = argv.split_first() {
            cmd.arg0(arg0).args(rest);
        }
        cmd.env_clear().envs(env.iter().copied());
        cmd.exec()
    }

    fn spawn(&self, path: &Path, argv: &[&str]) -> io::Result<i32> {
        let mut cmd = Command::new(path);
        if let Some((arg0, rest)) = argv.split_first() {
            cmd.arg0(arg0).args(rest);
        }
        // std resets the signal mask and dispositions in the child, so services do not inherit
        // init's blocked signals. The Child handle is dropped: init reaps with waitpid(-1).
        let child = cmd.env_clear().spawn()?;
        Ok(child.id() as i32)
    }

    fn stdio_to_console(&self, console: &Path) -> io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(console)?;
        rustix::stdio::dup2_stdin(&f)?;
        rustix::stdio::dup2_stdout(&f)?;
        rustix::stdio::dup2_stderr(&f)?;
        Ok(())
    }

    fn sync(&self) {
        rustix::fs::sync();
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn boottime(&self) -> Duration {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    fn fs_magic(&self, path: &Path) -> io::Result<u64> {
        Ok(rustix::fs::statfs(path)?.f_type as u64)
    }

    fn remove_tree_same_fs(&self, root: &Path, keep: &Path) -> io::Result<()> {
        crate::switch_root::remove_tree_same_fs(root, keep)
    }

    fn dm_ioctl(&self, control: &Path, cmd: cairn_dm::Command, buf: &mut [u8]) -> io::Result<()> {
        // std opens with O_CLOEXEC: the descriptor never reaches the services PID 1 starts.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(control)?;
        // cairn-dm checks the buffer against its declared size before the ioctl.
        Control::from(file).ioctl(cmd, buf)
    }
}
