//! The init role's entry point: the PID 1 guard, stage selection, and the never-exit rule.
//!
//! [`run`] refuses (exit 2) unless it is process 1, so `cairn init` on a workstation does nothing.
//! As PID 1 it never returns: stage 1 ends in `execve`, stage 2 in `reboot(2)`, and any error or
//! panic ends in the fatal path (log, wait `cairn.fatal_delay` seconds, sync, reboot). If even
//! reboot fails, it sleeps forever: PID 1 exiting would panic the kernel.

use std::process::ExitCode;
use std::time::Duration;

use crate::cmdline::{Cmdline, DEFAULT_FATAL_DELAY};
use crate::error::chain;
use crate::log::Logger;
use crate::paths::{self, limits, read_limited, Paths};
use crate::stage2::Handoff;
use crate::sys::{Real, Syscalls};
use crate::{shutdown, stage1, stage2};

/// Runs the init role. Returns (exit code 2) only when not process 1.
pub fn run() -> ExitCode {
    let pid = rustix::process::getpid();
    if !pid.is_init() {
        eprintln!(
            "cairn-init: refusing to start as pid {}: init only runs as process 1 on a Cairn \
             device",
            pid.as_raw_nonzero()
        );
        return ExitCode::from(2);
    }
    boot()
}

fn boot() -> ! {
    let sys = Real::new_for_pid1();
    let start = sys.boottime();
    std::panic::set_hook(Box::new(on_panic));
    let paths = Paths::system();
    let log = Logger::stderr();
    let err = if paths.at(paths::INITRAMFS_MARKER).exists() {
        stage1::run(&sys, &log, &paths, start)
    } else {
        let handoff = Handoff::from_env(|k| std::env::var(k).ok());
        match stage2::run(&sys, &log, &paths, handoff, start) {
            Ok(power) => {
                if let Err(e) = shutdown::shutdown(&sys, &log, &paths, power) {
                    log.error(format_args!("reboot(2) failed: {e}; halting"));
                }
                halt(&sys)
            }
            Err(e) => e,
        }
    };
    die(&sys, &log, &paths, &chain(&err))
}

/// The fatal path for errors and panics.
fn die(sys: &dyn Syscalls, log: &Logger, paths: &Paths, line: &str) -> ! {
    // Re-attach in case the failure came before or during the first attach.
    log.attach(paths);
    if let Err(e) = shutdown::fatal(sys, log, line, fatal_delay(paths)) {
        log.error(format_args!("reboot(2) failed: {e}; halting"));
    }
    halt(sys)
}

fn halt(sys: &dyn Syscalls) -> ! {
    loop {
        sys.sleep(Duration::from_secs(3600));
    }
}

/// `cairn.fatal_delay` re-read at the moment of failure, so no state is needed to know it.
fn fatal_delay(paths: &Paths) -> Duration {
    read_limited(&paths.at(paths::PROC_CMDLINE), limits::CMDLINE)
        .map(|c| Cmdline::parse(&c).fatal_delay)
        .unwrap_or(DEFAULT_FATAL_DELAY)
}

fn on_panic(info: &std::panic::PanicHookInfo<'_>) {
    let msg = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string payload)");
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let sys = Real::new_for_pid1();
    let paths = Paths::system();
    die(
        &sys,
        &Logger::stderr(),
        &paths,
        &format!("panic{at}: {msg}"),
    )
}
