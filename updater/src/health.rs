//! The health window after a trial boot.
//!
//! Every round runs all checks; the trial is healthy as soon as one round passes whole. Checks
//! that fail are retried each round, because services and network need a moment after boot.
//! When the window closes without a passing round the verdict is unhealthy, with the failures of
//! the last round as the reason. What the checks are (services, network, probes from the machine
//! config) is the daemon's business; this module is the policy and is tested with a fake clock.

use std::time::Duration;

/// Default length of the health window (the machine config's `health.window_s`).
pub use cairn_facts::config::DEFAULT_WINDOW;
/// Time between rounds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// One health check.
pub trait Check {
    /// Shown in logs, e.g. `services` or `tcp 127.0.0.1:6443`.
    fn name(&self) -> String;
    /// `Err` holds a one-line reason.
    fn run(&self) -> Result<(), String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy { rounds: u32 },
    Unhealthy { reason: String },
}

/// Time as the window sees it.
pub trait Clock {
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

/// Runs rounds of `checks` until one passes whole or `window` has gone by; `on_round` sees each
/// round's failures (empty on success).
pub fn watch(
    checks: &[Box<dyn Check + '_>],
    window: Duration,
    interval: Duration,
    clock: &dyn Clock,
    on_round: &mut dyn FnMut(u32, &[String]),
) -> Verdict {
    let deadline = clock.now() + window;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let failures: Vec<String> = checks
            .iter()
            .filter_map(|c| c.run().err().map(|why| format!("{}: {why}", c.name())))
            .collect();
        on_round(rounds, &failures);
        if failures.is_empty() {
            return Verdict::Healthy { rounds };
        }
        let now = clock.now();
        if now >= deadline {
            return Verdict::Unhealthy {
                reason: format!(
                    "not healthy within {} s: {}",
                    window.as_secs(),
                    failures.join("; ")
                ),
            };
        }
        clock.sleep(interval.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    struct FakeClock(Cell<Duration>);
    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0.get()
        }
        fn sleep(&self, d: Duration) {
            self.0.set(self.0.get() + d);
        }
    }

    /// Fails until the clock reaches `ok_from`.
    struct After<'a> {
        name: &'static str,
        clock: &'a FakeClock,
        ok_from: Duration,
    }
    impl Check for After<'_> {
        fn name(&self) -> String {
            self.name.into()
        }
        fn run(&self) -> Result<(), String> {
            if self.clock.now() >= self.ok_from {
                Ok(())
            } else {
                Err("not yet".into())
            }
        }
    }

    #[test]
    fn healthy_once_every_check_passes_in_one_round() {
        let clock = FakeClock(Cell::new(Duration::ZERO));
        let checks: Vec<Box<dyn Check>> = vec![
            Box::new(After {
                name: "services",
                clock: &clock,
                ok_from: Duration::from_secs(3),
            }),
            Box::new(After {
                name: "tcp",
                clock: &clock,
                ok_from: Duration::from_secs(5),
            }),
        ];
        let mut seen = Vec::new();
        let v = watch(
            &checks,
            Duration::from_secs(60),
            DEFAULT_INTERVAL,
            &clock,
            &mut |r, f| seen.push((r, f.len())),
        );
        assert_eq!(v, Verdict::Healthy { rounds: 4 });
        assert_eq!(seen, [(1, 2), (2, 2), (3, 1), (4, 0)]);
    }

    #[test]
    fn the_deadline_gives_the_last_rounds_reasons() {
        let clock = FakeClock(Cell::new(Duration::from_secs(100)));
        let checks: Vec<Box<dyn Check>> = vec![
            Box::new(After {
                name: "services",
                clock: &clock,
                ok_from: Duration::ZERO,
            }),
            Box::new(After {
                name: "http://127.0.0.1/",
                clock: &clock,
                ok_from: Duration::MAX,
            }),
        ];
        let v = watch(
            &checks,
            Duration::from_secs(7),
            Duration::from_secs(2),
            &clock,
            &mut |_, _| {},
        );
        assert_eq!(
            v,
            Verdict::Unhealthy {
                reason: "not healthy within 7 s: http://127.0.0.1/: not yet".into()
            }
        );
        assert_eq!(
            clock.now(),
            Duration::from_secs(107),
            "the last round is at the deadline"
        );
    }
}
