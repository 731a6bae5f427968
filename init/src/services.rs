//! The services PID 1 starts and restarts: a fixed table, a pid per running service, and an
//! exponential restart backoff.
//!
//! The one service is `cairnd`: the same binary, started as `/sbin/init` with `argv[0]` `cairnd`
//! (the role comes from `argv[0]`). A service that exits is restarted after [`FIRST_BACKOFF`], doubling per quick
//! failure up to [`MAX_BACKOFF`]; one that ran for [`STABLE_AFTER`] starts over at the first delay.
//! Children are spawned with an empty environment and signal mask, and reaped by the supervisor's
//! `waitpid(-1)` like any orphan.

use std::path::Path;
use std::time::Duration;

use crate::log::Logger;
use crate::sys::{ChildExit, Syscalls};

pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// A service init supervises.
#[derive(Clone, Copy, Debug)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub path: &'static str,
    /// Including `argv[0]`.
    pub argv: &'static [&'static str],
}

/// What stage 2 starts: cairnd, the device daemon (updates, health, watchdog).
pub const SERVICES: &[ServiceSpec] = &[ServiceSpec {
    name: "cairnd",
    path: "/sbin/init",
    argv: &["cairnd"],
}];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running { pid: i32, since: Duration },
    Waiting { until: Duration },
}

/// Runtime state of the service table.
pub struct Services {
    specs: &'static [ServiceSpec],
    state: Vec<State>,
    backoff: Vec<Duration>,
    /// Set when a service started or stopped since [`Services::take_status`].
    changed: bool,
}

impl Services {
    /// Every service due to start now.
    pub fn new(specs: &'static [ServiceSpec], now: Duration) -> Self {
        Self {
            specs,
            state: vec![State::Waiting { until: now }; specs.len()],
            backoff: vec![FIRST_BACKOFF; specs.len()],
            changed: true,
        }
    }

    /// The status file's text if anything changed since the last call: one line per service,
    /// `<name> running <pid>` or `<name> waiting`. cairnd's health check reads it from
    /// [`crate::paths::SERVICES_STATUS`].
    pub fn take_status(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let mut text = String::new();
        for (spec, state) in self.specs.iter().zip(&self.state) {
            match state {
                State::Running { pid, .. } => {
                    text.push_str(&format!("{} running {pid}\n", spec.name))
                }
                State::Waiting { .. } => text.push_str(&format!("{} waiting\n", spec.name)),
            }
        }
        Some(text)
    }

    /// Starts every service whose restart time has come.
    pub fn start_due(&mut self, sys: &dyn Syscalls, log: &Logger, now: Duration) {
        for (i, spec) in self.specs.iter().enumerate() {
            let State::Waiting { until } = self.state[i] else {
                continue;
            };
            if until > now {
                continue;
            }
            match sys.spawn(Path::new(spec.path), spec.argv) {
                Ok(pid) => {
                    log.info(format_args!("started {} (pid {pid})", spec.name));
                    self.state[i] = State::Running { pid, since: now };
                    self.changed = true;
                }
                Err(e) => {
                    log.error(format_args!("starting {} ({}): {e}", spec.name, spec.path));
                    self.schedule_restart(i, now, Duration::ZERO, log);
                }
            }
        }
    }

    /// Handles a reaped child; returns false if it was not one of ours (an orphan).
    pub fn exited(&mut self, pid: i32, exit: ChildExit, now: Duration, log: &Logger) -> bool {
        let Some(i) = self
            .state
            .iter()
            .position(|s| matches!(s, State::Running { pid: p, .. } if *p == pid))
        else {
            return false;
        };
        let State::Running { since, .. } = self.state[i] else {
            return false;
        };
        log.warn(format_args!(
            "{} (pid {pid}) exited: {exit:?}",
            self.specs[i].name
        ));
        self.schedule_restart(i, now, now.saturating_sub(since), log);
        true
    }

    fn schedule_restart(&mut self, i: usize, now: Duration, ran: Duration, log: &Logger) {
        if ran >= STABLE_AFTER {
            self.backoff[i] = FIRST_BACKOFF;
        }
        let delay = self.backoff[i];
        self.backoff[i] = (delay * 2).min(MAX_BACKOFF);
        log.info(format_args!(
            "restarting {} in {} s",
            self.specs[i].name,
            delay.as_secs()
        ));
        self.state[i] = State::Waiting { until: now + delay };
        self.changed = true;
    }

    /// When the next waiting service is due, if any.
    pub fn next_start(&self) -> Option<Duration> {
        self.state
            .iter()
            .filter_map(|s| match s {
                State::Waiting { until } => Some(*until),
                State::Running { .. } => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};

    static TABLE: &[ServiceSpec] = &[ServiceSpec {
        name: "cairnd",
        path: "/sbin/init",
        argv: &["cairnd"],
    }];

    #[test]
    fn starts_then_restarts_with_backoff() {
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let t0 = Duration::from_secs(10);
        let mut s = Services::new(TABLE, t0);
        assert_eq!(s.next_start(), Some(t0));
        s.start_due(&sys, &log, t0);
        assert_eq!(
            sys.calls(),
            [Call::Spawn {
                path: "/sbin/init".into(),
                argv: vec!["cairnd".into()]
            }]
        );
        assert_eq!(s.next_start(), None);
        assert!(!s.exited(4242, ChildExit::Code(0), t0, &log), "orphan");
        // Quick failures back off 1, 2, 4 s.
        let mut now = t0;
        let mut pid = 100;
        for want in [1, 2, 4] {
            assert!(s.exited(pid, ChildExit::Signal(9), now, &log));
            let due = s.next_start().unwrap();
            assert_eq!(due - now, Duration::from_secs(want));
            s.start_due(&sys, &log, due - Duration::from_millis(1));
            assert_eq!(s.next_start(), Some(due), "not started early");
            now = due;
            s.start_due(&sys, &log, now);
            pid += 1;
        }
        assert_eq!(s.take_status().as_deref(), Some("cairnd running 103\n"));
        assert_eq!(s.take_status(), None, "unchanged");
        // A long run resets the backoff.
        now += STABLE_AFTER;
        assert!(s.exited(pid, ChildExit::Code(1), now, &log));
        assert_eq!(s.next_start().unwrap() - now, FIRST_BACKOFF);
        assert_eq!(s.take_status().as_deref(), Some("cairnd waiting\n"));
    }

    #[test]
    fn spawn_failure_is_retried() {
        let sys = Fake::new();
        sys.fail_when(|c| matches!(c, Call::Spawn { .. }), libc::ENOENT);
        let (log, mem) = Logger::memory();
        let mut s = Services::new(TABLE, Duration::ZERO);
        s.start_due(&sys, &log, Duration::ZERO);
        assert_eq!(s.next_start(), Some(FIRST_BACKOFF));
        assert!(mem
            .text()
            .contains("starting cairnd (/sbin/init): No such file"));
    }
}
