//! The health gate: the checks a trial boot must pass before its slot is committed, and the
//! same checks on demand for the API's Health call (with how many times in a row each gave the
//! same answer).
//!
//! The checks: every service init supervises is running, loopback is up, the machine config's
//! network section is applied, STATE and DATA are as the config asked (encrypted, or plain by
//! choice), and the config's probes; then each [`Gate`]'s: host containers
//! ([`crate::containers`]) and k3s ([`crate::kubernetes`]). A new capability that must gate
//! updates implements [`Gate`] and is handed to [`Health::with_gate`].

use std::fs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_api::proto;
use cairn_netcfg::agent as netcfg;
use cairn_updater::health::{self, Check, Verdict};

use crate::bringup::StorageStatus;
use crate::heartbeat::{BeatingClock, Heartbeat};
use crate::log::{say, unix_ms};
use crate::netif;
use crate::settings::Settings;
use crate::system::SERVICES_STATUS;

/// A capability whose state must be good before a trial is committed (host containers,
/// Kubernetes). Its checks run beside the OS checks in every round of a trial and in the API's
/// Health call; a failing one names the capability's object and why.
pub trait Gate: Send + Sync {
    fn checks(&self) -> Vec<Box<dyn Check>>;
}

/// The health capability.
pub struct Health {
    settings: Arc<Settings>,
    storage: StorageStatus,
    /// Set while the running slot is on trial: when the health window ends.
    trial_deadline: Mutex<Option<SystemTime>>,
    /// Per health check: passing, and for how many checks in a row.
    streaks: Mutex<Vec<(String, bool, u32)>>,
    gates: Vec<Arc<dyn Gate>>,
    /// What the firmware said about Secure Boot at this boot.
    secure_boot: crate::secureboot::SecureBoot,
}

impl Health {
    pub fn new(settings: Arc<Settings>, storage: StorageStatus) -> Health {
        Health {
            settings,
            storage,
            trial_deadline: Mutex::new(None),
            streaks: Mutex::new(Vec::new()),
            gates: Vec::new(),
            secure_boot: crate::secureboot::SecureBoot::Unknown,
        }
    }

    /// Records the firmware's Secure Boot state, reported with every Health answer.
    pub fn with_secure_boot(mut self, state: crate::secureboot::SecureBoot) -> Health {
        self.secure_boot = state;
        self
    }

    /// Adds a capability's checks to every round and to the Health call.
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Health {
        self.gates.push(gate);
        self
    }

    /// The checks a trial must pass; the API's Health runs the same ones.
    fn checks(&self) -> Vec<Box<dyn Check>> {
        let mut checks: Vec<Box<dyn Check>> = vec![
            Box::new(ServicesCheck),
            Box::new(LoopbackCheck),
            Box::new(NetworkConfigCheck(self.settings.network_view())),
            Box::new(StorageCheck(self.storage.clone())),
        ];
        match self.settings.current() {
            Ok(c) => checks.extend(
                c.probes
                    .into_iter()
                    .map(|p| Box::new(ProbeCheck(p)) as Box<dyn Check>),
            ),
            Err(e) => checks.push(Box::new(Failed(e))),
        }
        for gate in &self.gates {
            checks.extend(gate.checks());
        }
        checks
    }

    /// Runs every check now.
    pub fn now(&self) -> proto::HealthResponse {
        let now = unix_ms(SystemTime::now());
        let results: Vec<(String, Result<(), String>)> =
            self.checks().iter().map(|c| (c.name(), c.run())).collect();
        let mut streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        let checks = results
            .into_iter()
            .map(|(name, result)| {
                let ok = result.is_ok();
                let streak = match streaks.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(entry) => {
                        entry.2 = if entry.1 == ok { entry.2 + 1 } else { 1 };
                        entry.1 = ok;
                        entry.2
                    }
                    None => {
                        streaks.push((name.clone(), ok, 1));
                        1
                    }
                };
                proto::HealthCheck {
                    name,
                    state: if ok {
                        proto::CheckState::Passing
                    } else {
                        proto::CheckState::Failing
                    } as i32,
                    detail: result.err().unwrap_or_default(),
                    checked_unix_ms: now,
                    streak,
                }
            })
            .collect::<Vec<_>>();
        let deadline = *self
            .trial_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        proto::HealthResponse {
            healthy: checks
                .iter()
                .all(|c| c.state == proto::CheckState::Passing as i32),
            checks,
            trial: deadline.is_some(),
            trial_deadline_unix_ms: deadline.map_or(0, unix_ms),
            secure_boot: self.secure_boot.as_str().into(),
        }
    }

    /// The trial's health window: the checks every few seconds until all pass often enough or
    /// `window` runs out. The API's Health shows the deadline meanwhile. `on_round` sees every
    /// round's failures (none for the round that passed).
    pub fn watch_trial(
        &self,
        window: Duration,
        heart: &Heartbeat,
        on_round: &mut dyn FnMut(u32, &[String]),
    ) -> Verdict {
        self.set_deadline(Some(SystemTime::now() + window));
        let checks = self.checks();
        let clock = BeatingClock(heart, Instant::now());
        let verdict = health::watch(
            &checks,
            window,
            health::DEFAULT_INTERVAL,
            &clock,
            &mut |round, failures| {
                if !failures.is_empty() && round % 5 == 1 {
                    say!("health round {round}: {}", failures.join("; "));
                }
                on_round(round, failures);
            },
        );
        self.set_deadline(None);
        verdict
    }

    fn set_deadline(&self, deadline: Option<SystemTime>) {
        *self
            .trial_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = deadline;
    }
}

/// The failed rounds of a trial as events: rounds in a row that failed the same way become one
/// [`proto::HealthEvent`], handed to `emit` when the failures change or [`FailedRounds::finish`]
/// is called. At most [`FailedRounds::MAX_EVENTS`] are emitted, so that a long window with
/// changing failures cannot push the rest of the story out of the event log.
pub struct FailedRounds<F: FnMut(proto::HealthEvent)> {
    emit: F,
    /// The run being summed up: first round, last round, the failures.
    run: Option<(u32, u32, Vec<String>)>,
    emitted: usize,
}

impl<F: FnMut(proto::HealthEvent)> FailedRounds<F> {
    pub const MAX_EVENTS: usize = 20;

    pub fn new(emit: F) -> Self {
        FailedRounds {
            emit,
            run: None,
            emitted: 0,
        }
    }

    /// One round's failures (empty: it passed).
    pub fn round(&mut self, round: u32, failures: &[String]) {
        if let Some((_, last, same)) = &mut self.run {
            if !failures.is_empty() && same.as_slice() == failures {
                *last = round;
                return;
            }
        }
        self.flush();
        if !failures.is_empty() {
            self.run = Some((round, round, failures.to_vec()));
        }
    }

    /// Emits the run still open.
    pub fn finish(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        let Some((first, last, failures)) = self.run.take() else {
            return;
        };
        if self.emitted == Self::MAX_EVENTS {
            return;
        }
        self.emitted += 1;
        let rounds = if first == last {
            format!("round {first}")
        } else {
            format!("rounds {first}-{last}")
        };
        (self.emit)(proto::HealthEvent {
            healthy: false,
            detail: format!("{rounds} failed: {}", failures.join("; ")),
            first_round: first,
            last_round: last,
        });
    }
}

/// Every supervised service is running (init's status file).
struct ServicesCheck;

impl Check for ServicesCheck {
    fn name(&self) -> String {
        "services".into()
    }
    fn run(&self) -> Result<(), String> {
        let text = fs::read_to_string(SERVICES_STATUS)
            .map_err(|e| format!("reading {SERVICES_STATUS}: {e}"))?;
        let down: Vec<&str> = text
            .lines()
            .filter(|l| l.split_whitespace().nth(1) != Some("running"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("not running: {}", down.join(", ")))
        }
    }
}

/// Loopback is up (the network check until netcfg configures interfaces).
struct LoopbackCheck;

impl Check for LoopbackCheck {
    fn name(&self) -> String {
        "network".into()
    }
    fn run(&self) -> Result<(), String> {
        match netif::status("lo") {
            Ok(st) if st.up && st.has_address() => Ok(()),
            Ok(st) if st.up => Err("lo has no address".into()),
            Ok(_) => Err("lo is down".into()),
            Err(e) => Err(format!("lo: {e}")),
        }
    }
}

/// The machine config's network section is applied: a new system whose network config the
/// kernel refuses (an interface it does not have, a gateway on no link) is not committed.
struct NetworkConfigCheck(netcfg::StatusView);

impl Check for NetworkConfigCheck {
    fn name(&self) -> String {
        "network config".into()
    }
    fn run(&self) -> Result<(), String> {
        match self.0.get().error {
            None => Ok(()),
            Some(e) => Err(format!("not applied: {e}")),
        }
    }
}

/// A probe from the machine config.
struct ProbeCheck(crate::probe::Probe);

impl Check for ProbeCheck {
    fn name(&self) -> String {
        self.0.name()
    }
    fn run(&self) -> Result<(), String> {
        self.0.run().map_err(|f| f.reason.to_string())
    }
}

/// A check that always fails with a fixed reason (an unusable machine config).
struct Failed(String);

impl Check for Failed {
    fn name(&self) -> String {
        "machine config".into()
    }
    fn run(&self) -> Result<(), String> {
        Err(self.0.clone())
    }
}

/// STATE and DATA are what the machine config asked for: a box that wanted encryption and did
/// not get it fails, with the reason; a box plain by choice (no TPM, `storage.encrypt: false`)
/// passes.
struct StorageCheck(StorageStatus);

impl Check for StorageCheck {
    fn name(&self) -> String {
        "storage".into()
    }
    fn run(&self) -> Result<(), String> {
        self.0.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summed(rounds: &[&[&str]]) -> Vec<(u32, u32, String)> {
        let mut out = Vec::new();
        let mut f = FailedRounds::new(|e: proto::HealthEvent| {
            assert!(!e.healthy);
            out.push((e.first_round, e.last_round, e.detail))
        });
        for (i, failures) in rounds.iter().enumerate() {
            let failures: Vec<String> = failures.iter().map(|s| s.to_string()).collect();
            f.round(i as u32 + 1, &failures);
        }
        f.finish();
        out
    }

    #[test]
    fn rounds_that_fail_the_same_way_are_one_event() {
        let refused: &[&str] = &["tcp 127.0.0.1:9: connection refused"];
        let both: &[&str] = &[
            "tcp 127.0.0.1:9: connection refused",
            "network config: eth7",
        ];
        assert_eq!(
            summed(&[refused, refused, refused, both, both, refused]),
            vec![
                (
                    1,
                    3,
                    "rounds 1-3 failed: tcp 127.0.0.1:9: connection refused".into()
                ),
                (
                    4,
                    5,
                    "rounds 4-5 failed: tcp 127.0.0.1:9: connection refused; network config: eth7"
                        .into()
                ),
                (
                    6,
                    6,
                    "round 6 failed: tcp 127.0.0.1:9: connection refused".into()
                ),
            ]
        );
        // A round that passed ends the run; a healthy trial after failures reports them.
        assert_eq!(
            summed(&[refused, &[]]),
            vec![(
                1,
                1,
                "round 1 failed: tcp 127.0.0.1:9: connection refused".into()
            )]
        );
        assert_eq!(summed(&[&[]]), vec![]);
    }

    #[test]
    fn changing_failures_are_capped() {
        let texts: Vec<String> = (0..100)
            .map(|i| format!("probe: {i} ms too slow"))
            .collect();
        let rounds: Vec<Vec<&str>> = texts.iter().map(|t| vec![t.as_str()]).collect();
        let rounds: Vec<&[&str]> = rounds.iter().map(|r| r.as_slice()).collect();
        let events = summed(&rounds);
        assert_eq!(
            events.len(),
            FailedRounds::<fn(proto::HealthEvent)>::MAX_EVENTS
        );
        assert_eq!(events[0].0, 1);
    }
}
