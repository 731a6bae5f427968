//! Stage 2's main loop: reap zombies, run services, and turn signals and the power key into a
//! clean shutdown.
//!
//! Signals are blocked with `sigprocmask` and read from a `signalfd` (blocked signals are queued
//! even for PID 1, which the kernel otherwise shields from default-action signals). One `poll(2)`
//! waits on the signalfd and every power-key input device; its timeout rescans input devices every
//! [`RESCAN_INTERVAL`] (drivers can bind late) and wakes for service restarts.
//!
//! | signal | sent by | action |
//! |---|---|---|
//! | `SIGCHLD` | kernel | reap every exited child (`waitpid(-1, WNOHANG)` until none) |
//! | `SIGINT` | kernel on Ctrl-Alt-Del (init disables the immediate CAD reboot) | clean reboot |
//! | `SIGTERM` | anyone (e.g. cairnd) | clean reboot |
//! | `SIGUSR1`, `SIGUSR2`, `SIGPWR` | anyone; `SIGPWR` by UPS/power daemons | clean power-off |
//! | `KEY_POWER` press, `/dev/input/eventN` | power button; QEMU `system_powerdown` | power-off |
//!
//! Any other signal is left unblocked, and the kernel discards it for PID 1.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::input::PowerKeys;
use crate::log::Logger;
use crate::paths::Paths;
use crate::services::{ServiceSpec, Services};
use crate::shutdown::Power;
use crate::sys::Syscalls;

pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// The signals init handles (see the table in the module docs).
pub const SIGNALS: [i32; 6] = [
    libc::SIGCHLD,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
];

/// What a signal asks of init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    Reap,
    Shutdown(Power),
    Ignore,
}

/// The signal table.
pub fn action_for(signo: i32) -> SignalAction {
    match signo {
        libc::SIGCHLD => SignalAction::Reap,
        libc::SIGINT | libc::SIGTERM => SignalAction::Shutdown(Power::Reboot),
        libc::SIGUSR1 | libc::SIGUSR2 | libc::SIGPWR => SignalAction::Shutdown(Power::Off),
        _ => SignalAction::Ignore,
    }
}

fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGINT => "SIGINT (ctrl-alt-del)",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPWR => "SIGPWR",
        libc::SIGCHLD => "SIGCHLD",
        _ => "signal",
    }
}

/// Reaps every exited child; hands services' exits to `services`.
pub fn reap_all(sys: &dyn Syscalls, log: &Logger, services: &mut Services) {
    let now = sys.boottime();
    while let Ok(Some((pid, exit))) = sys.reap() {
        if !services.exited(pid, exit, now, log) {
            log.debug(format_args!("reaped pid {pid}: {exit:?}"));
        }
    }
}

/// A signalfd for [`SIGNALS`], which are blocked for the whole process from creation on.
struct SignalFd {
    file: File,
}

impl SignalFd {
    fn new() -> Result<Self> {
        let err = |op| move |source| Error::Signals { op, source };
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for s in SIGNALS {
                libc::sigaddset(&mut set, s);
            }
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return Err(err("sigprocmask")(io::Error::last_os_error()));
        }
        // SAFETY: -1 asks for a new fd; `set` is initialised; the flags are valid.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(err("signalfd")(io::Error::last_os_error()));
        }
        // SAFETY: signalfd just returned this fd and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            file: File::from(owned),
        })
    }

    /// Drains pending signals; returns their numbers in arrival order.
    fn read_all(&mut self) -> Vec<i32> {
        const INFO_SIZE: usize = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut buf = [0u8; INFO_SIZE * 16];
        let mut out = Vec::new();
        loop {
            match self.file.read(&mut buf) {
                Ok(n) if n >= INFO_SIZE => {
                    // ssi_signo (u32) is the first field of each record.
                    out.extend(
                        buf[..n]
                            .chunks_exact(INFO_SIZE)
                            .map(|r| u32::from_ne_bytes([r[0], r[1], r[2], r[3]]) as i32),
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => return out,
            }
        }
    }
}

/// Stage 2's supervisor, set up (signals blocked, power keys open, services started) before the
/// ready line so that a shutdown request sent right after it is not lost.
pub struct Supervisor<'a> {
    sys: &'a dyn Syscalls,
    log: &'a Logger,
    paths: &'a Paths,
    signals: SignalFd,
    keys: PowerKeys,
    services: Services,
    next_scan: Duration,
    /// Print the `supervising:` line with init's resident memory at the next periodic scan.
    report_resident: bool,
}

impl<'a> Supervisor<'a> {
    pub fn start(
        sys: &'a dyn Syscalls,
        log: &'a Logger,
        paths: &'a Paths,
        services: &'static [ServiceSpec],
    ) -> Result<Self> {
        let signals = SignalFd::new()?;
        let now = sys.boottime();
        let mut keys = PowerKeys::default();
        keys.rescan(paths, log);
        let mut services = Services::new(services, now);
        // SIGCHLDs from before the signalfd existed were discarded (PID 1, default action).
        reap_all(sys, log, &mut services);
        services.start_due(sys, log, now);
        Ok(Self {
            sys,
            log,
            paths,
            signals,
            keys,
            services,
            next_scan: now + RESCAN_INTERVAL,
            report_resident: false,
        })
    }

    /// At the next periodic scan (a loop or two of supervising later), prints
    /// `supervising: rss_kib=R anon_kib=A file_kib=F`: init's resident memory as it stays.
    pub fn report_resident_at_next_scan(&mut self) {
        self.report_resident = true;
    }

    /// Looks for power keys now rather than at the next periodic scan (after loading drivers).
    pub fn rescan_keys(&mut self) {
        self.keys.rescan(self.paths, self.log);
    }

    /// Publishes the service table for cairnd's health check when it changed.
    fn write_status(&mut self) {
        let Some(text) = self.services.take_status() else {
            return;
        };
        let path = self.paths.at(crate::paths::SERVICES_STATUS);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        if let Err(e) = written {
            self.log
                .warn(format_args!("writing {}: {e}", path.display()));
        }
    }

    /// Supervises until a shutdown is requested; returns which.
    pub fn run(mut self) -> Power {
        loop {
            let now = self.sys.boottime();
            if now >= self.next_scan {
                self.keys.rescan(self.paths, self.log);
                self.next_scan = now + RESCAN_INTERVAL;
                if std::mem::take(&mut self.report_resident) {
                    self.log.info(format_args!(
                        "supervising: {}",
                        crate::trim::resident_words(self.paths)
                    ));
                }
            }
            self.services.start_due(self.sys, self.log, now);
            self.write_status();
            let wake = self
                .services
                .next_start()
                .map_or(self.next_scan, |t| t.min(self.next_scan));
            let timeout_ms = wake.saturating_sub(now).as_millis().clamp(1, 60_000) as i32;

            let keys = self.keys.fds();
            let mut fds: Vec<libc::pollfd> = std::iter::once(self.signals.file.as_raw_fd())
                .chain(keys.iter().map(|(_, fd)| *fd))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n <= 0 {
                continue; // timeout or EINTR
            }
            if fds[0].revents != 0 {
                for signo in self.signals.read_all() {
                    match action_for(signo) {
                        SignalAction::Reap => reap_all(self.sys, self.log, &mut self.services),
                        SignalAction::Shutdown(power) => {
                            self.log.info(format_args!(
                                "{} received: clean {}",
                                signal_name(signo),
                                match power {
                                    Power::Off => "power-off",
                                    Power::Reboot => "reboot",
                                }
                            ));
                            return power;
                        }
                        SignalAction::Ignore => {}
                    }
                }
            }
            for ((name, _), pfd) in keys.iter().zip(&fds[1..]) {
                if pfd.revents != 0 && self.keys.power_pressed(name) {
                    self.log
                        .info(format_args!("power key pressed ({name}): clean power-off"));
                    return Power::Off;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};
    use crate::sys::ChildExit;

    #[test]
    fn signal_table() {
        use SignalAction::*;
        assert_eq!(action_for(libc::SIGCHLD), Reap);
        assert_eq!(action_for(libc::SIGINT), Shutdown(Power::Reboot));
        assert_eq!(action_for(libc::SIGTERM), Shutdown(Power::Reboot));
        assert_eq!(action_for(libc::SIGUSR1), Shutdown(Power::Off));
        assert_eq!(action_for(libc::SIGUSR2), Shutdown(Power::Off));
        assert_eq!(action_for(libc::SIGPWR), Shutdown(Power::Off));
        assert_eq!(action_for(libc::SIGHUP), Ignore);
        for s in SIGNALS {
            assert_ne!(action_for(s), Ignore, "every blocked signal has an action");
        }
    }

    #[test]
    fn reaps_every_zombie() {
        let sys = Fake::new();
        sys.script_reaps([
            Ok(Some((10, ChildExit::Code(0)))),
            Ok(Some((11, ChildExit::Signal(9)))),
            Ok(None),
            Ok(Some((12, ChildExit::Code(0)))),
        ]);
        let (log, mem) = Logger::memory();
        let mut services = Services::new(&[], Duration::ZERO);
        reap_all(&sys, &log, &mut services);
        assert_eq!(sys.calls(), [Call::Reap, Call::Reap, Call::Reap]);
        assert_eq!(mem.lines().len(), 2);
    }
}
