//! A recording [`Syscalls`] for unit tests: a call log, scripted failures and a virtual clock.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ChildExit, KillSignal, Mount, MountFlags, RebootCmd, Syscalls, Umount, RAMFS_MAGIC};

/// One recorded syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        flags: MountFlags,
        data: String,
    },
    MountMove(PathBuf, PathBuf),
    RemountRo(PathBuf),
    Umount(PathBuf, Umount),
    Mkdir(PathBuf, u32),
    LoadModule(PathBuf, String),
    Reboot(RebootCmd),
    RebootWithArgument(String),
    KillAll(KillSignal),
    Reap,
    Chroot(PathBuf),
    Chdir(PathBuf),
    Exec {
        path: PathBuf,
        argv: Vec<String>,
        env: Vec<(String, String)>,
    },
    Spawn {
        path: PathBuf,
        argv: Vec<String>,
    },
    StdioToConsole(PathBuf),
    Sync,
    Sleep(Duration),
    RemoveTree {
        root: PathBuf,
        keep: PathBuf,
    },
    /// The request as sent, before any scripted reply overwrote it.
    DmIoctl {
        control: PathBuf,
        cmd: cairn_dm::Command,
        request: Vec<u8>,
    },
}

type Predicate = Box<dyn Fn(&Call) -> bool>;
type ReapResult = io::Result<Option<(i32, ChildExit)>>;
type SleepHook = Box<dyn FnMut(Duration)>;
type DmHook = Box<dyn FnMut(cairn_dm::Command, &mut [u8])>;

/// Records every call; fails those matching a registered predicate.
#[derive(Default)]
pub struct Fake {
    calls: RefCell<Vec<Call>>,
    failures: RefCell<Vec<(Predicate, i32)>>,
    clock: Cell<Duration>,
    reaps: RefCell<VecDeque<ReapResult>>,
    magic: Cell<Option<u64>>,
    next_pid: Cell<i32>,
    on_sleep: RefCell<Option<SleepHook>>,
    on_dm_ioctl: RefCell<Option<DmHook>>,
}

impl Fake {
    pub fn new() -> Self {
        let f = Self::default();
        f.clock.set(Duration::from_secs(1));
        f.next_pid.set(100);
        f
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The modules loaded so far (their paths), in order.
    pub fn loaded_modules(&self) -> Vec<PathBuf> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::LoadModule(p, _) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Calls except sleeps and reaps (which polling loops make many of).
    pub fn actions(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::Sleep(_) | Call::Reap))
            .collect()
    }

    /// Makes calls matching `pred` fail with `errno`.
    pub fn fail_when(&self, pred: impl Fn(&Call) -> bool + 'static, errno: i32) {
        self.failures.borrow_mut().push((Box::new(pred), errno));
    }

    /// Queues results for `reap`; once empty, `reap` answers ECHILD (no children).
    pub fn script_reaps(
        &self,
        results: impl IntoIterator<Item = io::Result<Option<(i32, ChildExit)>>>,
    ) {
        self.reaps.borrow_mut().extend(results);
    }

    pub fn set_fs_magic(&self, magic: u64) {
        self.magic.set(Some(magic));
    }

    pub fn now(&self) -> Duration {
        self.clock.get()
    }

    /// Runs `hook` with the new virtual time after every sleep.
    pub fn on_sleep(&self, hook: impl FnMut(Duration) + 'static) {
        *self.on_sleep.borrow_mut() = Some(Box::new(hook));
    }

    /// Runs `reply(cmd, buf)` on every device-mapper ioctl that does not fail, to write the
    /// kernel's answer into the buffer. Without it the buffer comes back unchanged.
    pub fn on_dm_ioctl(&self, reply: impl FnMut(cairn_dm::Command, &mut [u8]) + 'static) {
        *self.on_dm_ioctl.borrow_mut() = Some(Box::new(reply));
    }

    fn record(&self, call: Call) -> io::Result<()> {
        let errno = self
            .failures
            .borrow()
            .iter()
            .find(|(pred, _)| pred(&call))
            .map(|(_, errno)| *errno);
        self.calls.borrow_mut().push(call);
        match errno {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Syscalls for Fake {
    fn mount(&self, m: &Mount<'_>) -> io::Result<()> {
        self.record(Call::Mount {
            source: m.source.into(),
            target: m.target.into(),
            fstype: m.fstype.into(),
            flags: m.flags,
            data: m.data.into(),
        })
    }

    fn mount_move(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(Call::MountMove(from.into(), to.into()))
    }

    fn remount_read_only(&self, target: &Path) -> io::Result<()> {
        self.record(Call::RemountRo(target.into()))
    }

    fn umount(&self, target: &Path, mode: Umount) -> io::Result<()> {
        self.record(Call::Umount(target.into(), mode))
    }

    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(Call::Mkdir(path.into(), mode))
    }

    fn load_module(&self, path: &Path, params: &str) -> io::Result<()> {
        self.record(Call::LoadModule(path.into(), params.into()))
    }

    fn reboot(&self, cmd: RebootCmd) -> io::Result<()> {
        self.record(Call::Reboot(cmd))
    }

    fn reboot_with_argument(&self, arg: &str) -> io::Result<()> {
        self.record(Call::RebootWithArgument(arg.to_string()))
    }

    fn kill_all(&self, sig: KillSignal) -> io::Result<()> {
        self.record(Call::KillAll(sig))
    }

    fn reap(&self) -> io::Result<Option<(i32, ChildExit)>> {
        self.record(Call::Reap)?;
        self.reaps
            .borrow_mut()
            .pop_front()
            .unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::ECHILD)))
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chroot(path.into()))
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chdir(path.into()))
    }

    fn exec(&self, path: &Path, argv: &[&str], env: &[(&str, &str)]) -> io::Error {
        let call = Call::Exec {
            path: path.into(),
            argv: strings(argv),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        // A fake exec "fails" (returns) even when no failure is scripted: it cannot replace us.
        self.record(call)
            .err()
            .unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn spawn(&self, path: &Path, argv: &[&str]) -> io::Result<i32> {
        self.record(Call::Spawn {
            path: path.into(),
            argv: strings(argv),
        })?;
        let pid = self.next_pid.get();
        self.next_pid.set(pid + 1);
        Ok(pid)
    }

    fn stdio_to_console(&self, console: &Path) -> io::Result<()> {
        self.record(Call::StdioToConsole(console.into()))
    }

    fn sync(&self) {
        let _ = self.record(Call::Sync);
    }

    fn sleep(&self, d: Duration) {
        let _ = self.record(Call::Sleep(d));
        self.clock.set(self.clock.get() + d);
        if let Some(hook) = self.on_sleep.borrow_mut().as_mut() {
            hook(self.clock.get());
        }
    }

    fn boottime(&self) -> Duration {
        self.clock.get()
    }

    fn fs_magic(&self, _path: &Path) -> io::Result<u64> {
        Ok(self.magic.get().unwrap_or(RAMFS_MAGIC))
    }

    fn remove_tree_same_fs(&self, root: &Path, keep: &Path) -> io::Result<()> {
        self.record(Call::RemoveTree {
            root: root.into(),
            keep: keep.into(),
        })
    }

    fn dm_ioctl(&self, control: &Path, cmd: cairn_dm::Command, buf: &mut [u8]) -> io::Result<()> {
        self.record(Call::DmIoctl {
            control: control.into(),
            cmd,
            request: buf.to_vec(),
        })?;
        if let Some(reply) = self.on_dm_ioctl.borrow_mut().as_mut() {
            reply(cmd, buf);
        }
        Ok(())
    }
}
