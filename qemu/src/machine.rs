//! A running QEMU machine: launch, console waits, QMP control, and guaranteed teardown.
//!
//! The one idea: a [`Machine`] owns exactly one QEMU process and is the only thing that ever
//! stops it, by its own pid: gracefully through QMP, or with `SIGKILL` when the value is dropped.
//! Should the test process die first, `PR_SET_PDEATHSIG` takes QEMU with it. Tests wait for
//! console lines (never fixed sleeps), each wait continuing from where the previous one matched.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_board::RemovableDisk;
use serde_json::{json, Value};

use crate::args::{qemu_args, DiskArg};
use crate::console::{Console, Wait, TAIL_LINES};
use crate::disk;
use crate::error::{Error, Result};
use crate::options::{LaunchOptions, WorkPaths};
use crate::qmp::Qmp;
use crate::stick::{self, StickReads};
use crate::timeouts::Timeouts;

/// Longest a single QMP reply may take (before scaling).
const QMP_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `shutdown` gives QEMU to exit after `quit` before killing it (before scaling).
const QUIT_GRACE: Duration = Duration::from_secs(10);
/// How long QEMU's exit and the end of its console may lag one another (before scaling).
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(5);
/// `sun_path` holds 108 bytes including the terminating NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;
/// How much of QEMU's stderr an error message quotes.
const STDERR_TAIL_BYTES: u64 = 4096;
/// How often waits on QMP state ask QEMU again. QMP delivers events only while a command runs
/// on our one connection, so waiting for an event is asking a cheap question at this pace.
const QMP_POLL: Duration = Duration::from_millis(50);

/// A console line that satisfied a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineMatch {
    /// Index into the needles that were passed.
    pub needle: usize,
    /// Index of the line in [`Machine::lines`].
    pub index: usize,
    pub line: String,
}

/// How [`Machine::shutdown`] ended the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// QEMU had exited before shutdown was asked for.
    AlreadyExited(ExitStatus),
    /// The guest handled the ACPI power button and powered off.
    PoweredOff(ExitStatus),
    /// The guest ignored the power button; QMP `quit` stopped QEMU.
    Quit(ExitStatus),
    /// QEMU did not answer `quit` in time and was killed.
    Killed(ExitStatus),
}

impl Shutdown {
    pub fn status(self) -> ExitStatus {
        match self {
            Shutdown::AlreadyExited(s)
            | Shutdown::PoweredOff(s)
            | Shutdown::Quit(s)
            | Shutdown::Killed(s) => s,
        }
    }
}

/// What [`Machine::start`] needs: the command line and the run's files, decided by the caller.
pub(crate) struct Start {
    pub binary: PathBuf,
    /// The board's QEMU (a missing one is a setup problem) rather than a test's stand-in.
    pub is_board_binary: bool,
    pub args: Vec<std::ffi::OsString>,
    pub env: Vec<(String, std::ffi::OsString)>,
    pub paths: WorkPaths,
    pub echo_console: bool,
    pub removable: Option<RemovableDisk>,
    pub timeouts: Timeouts,
    pub qmp_connect_timeout: Duration,
    pub reused_disk: bool,
}

/// One running (or exited, not yet dropped) QEMU process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that launched QEMU exits, not only the process:
/// keep a machine in the thread that launched it (the usual shape of a test).
#[derive(Debug)]
pub struct Machine {
    child: Child,
    pid: u32,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    /// Index of the first console line the next wait looks at.
    cursor: usize,
    paths: WorkPaths,
    qmp: Option<Qmp>,
    /// QMP events, kept across reconnects and after `quit`.
    events: Vec<Value>,
    /// Index of the first event the next [`Machine::wait_for_event`] looks at.
    event_cursor: usize,
    /// Where a stick goes; `None` on a machine without a socket for one.
    removable: Option<RemovableDisk>,
    timeouts: Timeouts,
    qmp_connect_timeout: Duration,
    reused_disk: bool,
}

impl Machine {
    /// Prepares the work directory (overlay, variable store) and starts QEMU.
    pub fn launch(opts: LaunchOptions) -> Result<Machine> {
        let board = opts.board;
        let profile = board
            .qemu
            .as_ref()
            .ok_or(Error::NoQemuProfile { board: board.name })?;
        let secure = match &opts.secure_boot {
            Some(_) => Some(crate::secure_boot_profile(board.name, profile)?),
            None => None,
        };
        let profile = secure.as_ref().map_or(profile, |(p, _)| p);
        let timeouts = match opts.timeouts {
            Some(t) => t,
            None => Timeouts::from_env()?,
        };

        let work_err = |source| Error::WorkDir {
            path: opts.work_dir.clone(),
            source,
        };
        fs::create_dir_all(&opts.work_dir).map_err(work_err)?;
        let work_dir = fs::canonicalize(&opts.work_dir).map_err(work_err)?;
        let paths = WorkPaths::new(&work_dir);
        let socket_len = paths.qmp_socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(Error::SocketPathTooLong {
                path: paths.qmp_socket,
                len: socket_len,
                max: MAX_SOCKET_PATH,
            });
        }

        let binary = match &opts.binary_override {
            Some(b) => b.clone(),
            None => {
                for fw in [profile.firmware_code, profile.firmware_vars] {
                    if !Path::new(fw).is_file() {
                        return Err(Error::FirmwareMissing {
                            path: fw.into(),
                            package: profile.firmware_package,
                        });
                    }
                }
                PathBuf::from(profile.binary)
            }
        };

        let reused_disk = disk::prepare(
            &paths,
            &opts.disk_image,
            Path::new(profile.firmware_vars),
            opts.reuse_disk,
            opts.writable_image,
        )?;

        if let Some(log) = &opts.write_log {
            // blklogwrites opens the log; it starts empty for each launch.
            std::fs::File::create(log).map_err(|source| Error::DiskImage {
                path: log.clone(),
                source,
            })?;
        }
        let disk = match (&opts.write_log, opts.writable_image) {
            (Some(log), true) => DiskArg::Logged {
                disk: &opts.disk_image,
                log,
            },
            (None, true) => DiskArg::Raw(&opts.disk_image),
            (Some(_), false) => return Err(Error::WriteLogNeedsWritableImage),
            (None, false) => DiskArg::Overlay(&paths.overlay),
        };
        if let (Some(keys), false) = (&opts.secure_boot, reused_disk) {
            let cert = |name: &str| {
                cairn_secureboot::keys::cert_der(keys, name).map_err(|e| Error::VarStore {
                    path: paths.vars.clone(),
                    reason: format!("cannot enroll Secure Boot keys: {e}"),
                })
            };
            crate::efivars::enroll_secure_boot(
                &paths.vars,
                &cert("PK")?,
                &cert("KEK")?,
                &cert("db")?,
            )?;
        }
        let mut extra_args = secure
            .as_ref()
            .map(|(_, args)| args.clone())
            .unwrap_or_default();
        extra_args.extend(opts.extra_args.iter().cloned());
        let args = qemu_args(
            profile,
            &paths,
            disk,
            &opts.port_forwards,
            opts.tpm.as_deref(),
            &extra_args,
        );
        Machine::start(Start {
            is_board_binary: opts.binary_override.is_none(),
            binary,
            args,
            env: Vec::new(),
            paths,
            echo_console: opts.echo_console,
            removable: Some(profile.removable),
            timeouts,
            qmp_connect_timeout: opts.qmp_connect_timeout,
            reused_disk,
        })
    }

    /// Starts QEMU with a finished command line in a prepared work directory.
    pub(crate) fn start(start: Start) -> Result<Machine> {
        let Start {
            binary,
            is_board_binary,
            args,
            env,
            paths,
            echo_console,
            removable,
            timeouts,
            qmp_connect_timeout,
            reused_disk,
        } = start;
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::WorkDir { path, source }
        };
        match fs::remove_file(&paths.qmp_socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(file_err(&paths.qmp_socket)(e))
            }
            _ => {}
        }
        let log = File::create(&paths.console_log).map_err(file_err(&paths.console_log))?;
        let stderr = File::create(&paths.stderr_log).map_err(file_err(&paths.stderr_log))?;

        let mut cmd = Command::new(&binary);
        cmd.args(args)
            .envs(env)
            .current_dir(&paths.work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let parent = std::process::id();
        let die_with_parent = move || {
            // SAFETY: PR_SET_PDEATHSIG takes a signal number; no pointers are involved.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If the launching thread died before prctl, the signal will never come: refuse to
            // start an orphan.
            // SAFETY: getppid has no arguments and cannot fail.
            if unsafe { libc::getppid() } as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        };
        // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
        // allowed; it makes two such syscalls (prctl, getppid) and allocates nothing
        // (`from_raw_os_error` and `last_os_error` build an error without allocating).
        unsafe {
            cmd.pre_exec(die_with_parent);
        }
        let mut child = spawn(&mut cmd, &binary, is_board_binary)?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let console = Arc::new(Console::default());
        let mut machine = Machine {
            child,
            pid,
            console: Arc::clone(&console),
            reader: None,
            cursor: 0,
            paths,
            qmp: None,
            events: Vec::new(),
            event_cursor: 0,
            removable,
            timeouts,
            qmp_connect_timeout,
            reused_disk,
        };
        // From here on an early return drops `machine`, which kills QEMU.
        let stdout = stdout.ok_or_else(|| Error::Spawn {
            binary: binary.clone(),
            source: std::io::Error::other("stdout was not piped"),
        })?;
        let echo = echo_console;
        let reader = std::thread::Builder::new()
            .name(format!("qemu-console-{pid}"))
            .spawn(move || console.pump(stdout, log, echo))
            .map_err(|source| Error::Spawn { binary, source })?;
        machine.reader = Some(reader);
        Ok(machine)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn paths(&self) -> &WorkPaths {
        &self.paths
    }

    pub fn console_log_path(&self) -> &Path {
        &self.paths.console_log
    }

    /// Whether this launch kept the overlay and variables of an earlier one.
    pub fn reused_disk(&self) -> bool {
        self.reused_disk
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The console's last lines, indented, as timeouts and exits quote them.
    pub fn console_tail(&self) -> String {
        self.console.tail()
    }

    /// Every console line so far (cleaned of escapes).
    pub fn lines(&self) -> Vec<String> {
        self.console.lines()
    }

    /// Waits for a console line containing `needle`, looking only at lines after the one the
    /// previous successful wait matched. `timeout` is scaled by [`Timeouts`].
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[needle], timeout).map(|m| m.line)
    }

    /// Like [`Machine::wait_for_line`] for the first line containing any of `needles`.
    pub fn wait_for_any(&mut self, needles: &[&str], timeout: Duration) -> Result<LineMatch> {
        let timeout = self.timeouts.scale(timeout);
        match self
            .console
            .wait_for(self.cursor, needles, Instant::now() + timeout)
        {
            Wait::Found(index, needle, line) => {
                self.cursor = index + 1;
                Ok(LineMatch {
                    needle,
                    index,
                    line,
                })
            }
            Wait::TimedOut => Err(self.timeout_error(describe(needles), timeout)),
            Wait::Closed => Err(self.exited_error(describe(needles))),
        }
    }

    /// QEMU's exit status if it has exited (reaping it), without waiting.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        // std keeps the status once reaped, so asking again is cheap and stable.
        self.child.try_wait().map_err(|source| Error::Wait {
            pid: self.pid,
            source,
        })
    }

    /// Waits for QEMU to exit on its own (after a guest poweroff, `quit`, …).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let timeout = self.timeouts.scale(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                // Let the reader drain what QEMU wrote last, so `lines()` is complete.
                self.console
                    .wait_closed(Instant::now() + self.timeouts.scale(EXIT_AFTER_CLOSE));
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout_error("QEMU to exit".into(), timeout));
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Runs a QMP command, connecting first if needed, and returns its `return` value.
    pub fn qmp(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut qmp = match self.qmp.take() {
            Some(q) => q,
            None => {
                let console = &self.console;
                let connected = Qmp::connect(
                    &self.paths.qmp_socket,
                    self.timeouts.scale(self.qmp_connect_timeout),
                    self.timeouts.scale(QMP_IO_TIMEOUT),
                    || console.is_closed(),
                );
                match connected {
                    Ok(q) => q,
                    Err(_) if self.console.is_closed() => {
                        return Err(self.exited_error("the QMP socket".into()))
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let result = qmp.execute(command, arguments);
        self.events.append(&mut qmp.take_events());
        // A broken or confused stream is not reused; the next command reconnects.
        if !matches!(result, Err(Error::QmpIo { .. } | Error::QmpProtocol { .. })) {
            self.qmp = Some(qmp);
        }
        result
    }

    /// QMP events received so far (`POWERDOWN`, `SHUTDOWN`, `RESET`, …), oldest first.
    pub fn qmp_events(&self) -> &[Value] {
        &self.events
    }

    /// Waits for a QMP event named `name` (`WATCHDOG`, `RESET`, `DEVICE_DELETED`, …), looking
    /// only at events after the one the previous successful wait returned, and returns it whole
    /// (`{"event": …, "data": …, "timestamp": …}`). `timeout` is scaled by [`Timeouts`].
    pub fn wait_for_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let (index, event) = self.wait_event_from(
            self.event_cursor,
            |e| e["event"] == name,
            format!("the QMP event {name}"),
            timeout,
        )?;
        self.event_cursor = index + 1;
        Ok(event)
    }

    /// Plugs the raw disk image `image` into the running machine as a removable disk named
    /// `id`, read-only: a USB stick on boards with USB storage, a hot-plugged virtio-blk disk on
    /// the others (see [`cairn_board::RemovableDisk`]). Returns once QEMU has added the device;
    /// the guest notices it asynchronously ([`Machine::wait_for_stick_read`] waits for that).
    /// Nothing may write `image` while it is plugged in.
    pub fn attach_stick(&mut self, image: &Path, id: &str) -> Result<()> {
        stick::check_id(id)?;
        let path = fs::canonicalize(image).map_err(|source| Error::DiskImage {
            path: image.to_path_buf(),
            source,
        })?;
        self.qmp("blockdev-add", Some(stick::blockdev_add(id, &path)))?;
        let removable = self.removable.ok_or(Error::NoStickSocket)?;
        if let Err(e) = self.qmp("device_add", Some(stick::device_add(removable, id))) {
            // Leave no node behind that would make a second attempt with this id fail.
            let _ = self.qmp(
                "blockdev-del",
                Some(json!({ "node-name": stick::node_name(id) })),
            );
            return Err(e);
        }
        Ok(())
    }

    /// Unplugs stick `id` and waits until QEMU reports the device gone, then releases the image
    /// file. A USB stick goes at once; a PCIe hot-plugged disk waits for the guest, whose
    /// `pciehp` powers the slot off about 5 s after the (virtual) attention button.
    pub fn detach_stick(&mut self, id: &str, timeout: Duration) -> Result<()> {
        stick::check_id(id)?;
        let from = self.events.len();
        let scaled = self.timeouts.scale(timeout);
        let deadline = Instant::now() + scaled;
        // Just after a plug the guest is still powering the PCIe slot on; QEMU refuses the
        // unplug ("guest is busy (power indicator blinking)") until the indicator settles.
        loop {
            match self.qmp("device_del", Some(json!({ "id": id }))) {
                Ok(_) => break,
                Err(Error::QmpRefused { desc, .. })
                    if stick::is_busy(&desc) && Instant::now() < deadline =>
                {
                    std::thread::sleep(QMP_POLL)
                }
                Err(e) => return Err(e),
            }
        }
        self.wait_event_from(
            from,
            |e| stick::is_deleted(e, id),
            format!("QEMU to report stick {id} unplugged (DEVICE_DELETED)"),
            timeout,
        )?;
        self.qmp(
            "blockdev-del",
            Some(json!({ "node-name": stick::node_name(id) })),
        )
        .map(drop)
    }

    /// What the guest has read from stick `id` so far (QMP `query-blockstats`). Reads come
    /// only from the guest (its kernel, or its firmware before the kernel runs): QEMU itself
    /// reads nothing from a raw image it plugs in.
    pub fn stick_reads(&mut self, id: &str) -> Result<StickReads> {
        let stats = self.qmp("query-blockstats", None)?;
        stick::reads(&stats, id).ok_or_else(|| Error::NoStick { id: id.to_string() })
    }

    /// Waits until the guest has read from stick `id`: its kernel found the disk and scanned
    /// the partition table, which the kernel does for every new disk, `quiet` or not.
    pub fn wait_for_stick_read(&mut self, id: &str, timeout: Duration) -> Result<StickReads> {
        let timeout = self.timeouts.scale(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let reads = self.stick_reads(id)?;
            if reads.operations > 0 {
                return Ok(reads);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error(format!("the guest to read stick {id}"), timeout));
            }
            std::thread::sleep(QMP_POLL);
        }
    }

    /// Waits for the first event at index `from` or later that `matches`; returns its index and
    /// the event. Asks QEMU `query-status` between looks, which is what delivers new events.
    fn wait_event_from(
        &mut self,
        from: usize,
        matches: impl Fn(&Value) -> bool,
        waiting_for: String,
        timeout: Duration,
    ) -> Result<(usize, Value)> {
        let timeout = self.timeouts.scale(timeout);
        let deadline = Instant::now() + timeout;
        let mut failed = None;
        loop {
            if let Some((i, e)) = self
                .events
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, e)| matches(e))
            {
                return Ok((i, e.clone()));
            }
            // Checked after the events: the last reply before QEMU exits may carry the event
            // (`SHUTDOWN`) that was waited for.
            if let Some(e) = failed {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error(waiting_for, timeout));
            }
            std::thread::sleep(QMP_POLL);
            failed = self.qmp("query-status", None).err();
        }
    }

    /// Presses the ACPI power button (`system_powerdown`); the guest decides what happens.
    pub fn powerdown(&mut self) -> Result<()> {
        self.qmp("system_powerdown", None).map(drop)
    }

    /// Hard reset, like the reset button (`system_reset`).
    pub fn system_reset(&mut self) -> Result<()> {
        self.qmp("system_reset", None).map(drop)
    }

    /// Asks QEMU to exit immediately (`quit`). Follow with [`Machine::wait_exit`].
    pub fn quit(&mut self) -> Result<()> {
        let result = self.qmp("quit", None);
        // QEMU may close the socket before its reply arrives; either way it is going.
        self.qmp = None;
        match result {
            Ok(_) | Err(Error::QmpIo { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Kills QEMU with `SIGKILL` (by pid) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let wait_err = |source| Error::Wait {
            pid: self.pid,
            source,
        };
        self.child.kill().map_err(wait_err)?;
        self.child.wait().map_err(wait_err)
    }

    /// Ends the machine as gently as it allows: ACPI power button and up to `timeout` for the
    /// guest to power off, then QMP `quit`, then `SIGKILL`.
    pub fn shutdown(mut self, timeout: Duration) -> Result<Shutdown> {
        if let Some(status) = self.try_exit()? {
            return Ok(Shutdown::AlreadyExited(status));
        }
        if self.powerdown().is_ok() {
            match self.wait_exit(timeout) {
                Ok(status) => return Ok(Shutdown::PoweredOff(status)),
                Err(Error::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if self.quit().is_ok() {
            if let Ok(status) = self.wait_exit(QUIT_GRACE) {
                return Ok(Shutdown::Quit(status));
            }
        }
        self.kill().map(Shutdown::Killed)
    }

    fn timeout_error(&self, waiting_for: String, timeout: Duration) -> Error {
        Error::Timeout {
            waiting_for,
            timeout,
            log: self.paths.console_log.clone(),
            tail: self.console.tail(),
        }
    }

    /// The console closed: collect the exit status (briefly waiting for it) and QEMU's stderr.
    fn exited_error(&mut self, waiting_for: String) -> Error {
        let deadline = Instant::now() + self.timeouts.scale(EXIT_AFTER_CLOSE);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break None,
            }
        };
        Error::Exited {
            waiting_for,
            status,
            log: self.paths.console_log.clone(),
            tail: self.console.tail(),
            stderr: stderr_tail(&self.paths.stderr_log),
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.qmp = None;
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            // Our own child, by its pid: never a search by name.
            if let Err(e) = self.child.kill() {
                eprintln!("cairn-qemu: cannot kill QEMU pid {}: {e}", self.pid);
            }
            if let Err(e) = self.child.wait() {
                eprintln!("cairn-qemu: cannot reap QEMU pid {}: {e}", self.pid);
            }
        }
        // The reader ends at EOF, which follows QEMU's exit unless something else inherited its
        // stdout; never let that hang a test.
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() && reader.join().is_err() {
                eprintln!("cairn-qemu: console reader of pid {} panicked", self.pid);
            }
        }
    }
}

/// Spawns, retrying briefly on `ETXTBSY`: another thread's fork can hold a just-written
/// executable (a test's fake QEMU script) open for writing until its exec.
fn spawn(cmd: &mut Command, binary: &Path, is_board_binary: bool) -> Result<Child> {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) if is_board_binary && source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotInstalled {
                    binary: binary.display().to_string(),
                    source,
                })
            }
            Err(source) => {
                return Err(Error::Spawn {
                    binary: binary.to_path_buf(),
                    source,
                })
            }
        }
    }
}

fn describe(needles: &[&str]) -> String {
    match needles {
        [one] => format!("a console line containing {one:?}"),
        many => format!("a console line containing any of {many:?}"),
    }
}

/// The last lines of QEMU's stderr, indented, for error messages.
fn stderr_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL_BYTES)))
            .is_ok()
            && f.take(STDERR_TAIL_BYTES).read_to_end(&mut buf).is_ok()
        {
            text = String::from_utf8_lossy(&buf).into_owned();
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "    (nothing)\n".into();
    }
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..]
        .iter()
        .map(|l| format!("    ! {l}\n"))
        .collect()
}
