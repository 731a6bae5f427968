//! `hawkbit:`: cairnd as an Eclipse hawkBit DDI client. It polls the controller base at the
//! interval the server sets, takes a `deploymentBase`, streams its artifact (a signed bundle)
//! into the other slot through the same install path as every other source, and reports.
//!
//! The one idea: `closed/success` is sent only by the new slot, after its health window
//! passed and it committed; after a rollback the old slot sends `closed/failure` with the
//! reason. Between the install and that report the action lives on STATE (`hawkbit-action`,
//! replaced durably like the other STATE records), so the reboot or a power cut loses
//! nothing: whichever slot comes up reads it and reports what became of it.
//!
//! Also: `proceeding` feedback with progress while downloading and installing; the
//! deployment's `download`/`update` handling (`skip` waits, `attempt` and `forced` install)
//! and maintenance window (`unavailable` waits); a `cancelAction` is accepted while nothing
//! is installed and rejected once the slot is armed; `configData` (board, version, slot,
//! health) whenever the server asks or it changed. An artifact whose bytes do not hash to
//! the deployment's sha256 is refused before its last bytes reach the installer, so nothing
//! is armed. A server that cannot be reached is polled again after a pause that doubles
//! from a minute up to the polling interval, never in a loop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_api::ddi::{self, Client, DdiError, Execution, Feedback, Finished, Handling};
use cairn_updater::state::{Outcome, TrialRecord};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::log::say;

/// The STATE record of the action being installed or judged.
pub const ACTION: &str = "hawkbit-action";
/// The first pause after a failed poll.
pub const FIRST_RETRY: Duration = Duration::from_secs(60);

/// What the agent needs from the device; cairnd's is [`Cairnd`], tests bring their own.
pub trait Device: Send {
    /// `board`, `version`, `slot`, `health` for configData.
    fn facts(&self) -> Vec<(String, String)>;
    /// The slot running now (`a` or `b`).
    fn running_slot(&self) -> String;
    /// The last update's record on STATE.
    fn last_trial(&self) -> Option<TrialRecord>;
    /// Installs a bundle into the other slot and arms its trial: `(version, slot)`.
    fn install(
        &self,
        what: &str,
        reader: &mut dyn Read,
        len: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(String, String), String>;
    /// A refusal before any install began, as one line in `events`.
    fn refused(&self, what: &str, why: &str);
    /// Reboots into the armed trial (soon: the feedback has been sent).
    fn reboot(&self);
}

/// The action on STATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    /// `installing` until the trial is armed, then `trial`.
    pub stage: String,
    pub version: String,
    pub slot: String,
    /// While `installing`: the update record on STATE as it was before the install
    /// ([`trial_key`]), so a power cut after the trial was armed but before this record
    /// said so is told from one before the install got that far.
    pub before: String,
}

/// A trial record in one line, to tell whether the installer has written a new one.
pub fn trial_key(t: Option<&TrialRecord>) -> String {
    t.map_or_else(String::new, |t| {
        format!("{} {} {:?}", t.slot, t.version, t.outcome)
    })
}

impl Record {
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"id": self.id, "stage": self.stage,
            "version": self.version, "slot": self.slot, "before": self.before}))
        .expect("JSON")
    }

    fn parse(bytes: &[u8]) -> Result<Record, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let f = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| format!("no {k}"))
        };
        Ok(Record {
            id: f("id")?,
            stage: f("stage")?,
            version: f("version")?,
            slot: f("slot")?,
            before: f("before").unwrap_or_default(),
        })
    }
}

/// Reads the record (a damaged one reads as none, and says so).
pub fn read_record(state: &Path) -> Option<Record> {
    let bytes = std::fs::read(state.join(ACTION)).ok()?;
    Record::parse(&bytes)
        .map_err(|e| say!("hawkBit: {ACTION} on STATE is damaged ({e}); forgetting it"))
        .ok()
}

fn write_record(state: &Path, r: &Record) -> Result<(), String> {
    cairn_updater::state::replace(state, ACTION, &r.to_json())
        .map_err(|e| format!("recording the hawkBit action: {e}"))
}

fn clear_record(state: &Path) {
    match std::fs::remove_file(state.join(ACTION)) {
        Ok(()) => {
            if let Ok(dir) = std::fs::File::open(state) {
                let _ = dir.sync_all();
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => say!("hawkBit: removing {ACTION}: {e}"),
    }
}

/// What one cycle ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Poll again after this.
    Sleep(Duration),
    /// A trial is armed and the device reboots into it.
    Rebooting,
}

/// The client of one hawkBit server for one device.
pub struct Agent<D: Device> {
    pub client: Client,
    pub device: D,
    pub state: PathBuf,
    pub first_retry: Duration,
    /// configData last sent.
    sent: Option<Vec<(String, String)>>,
}

/// What became of an installed action, from the slot that runs now.
pub fn outcome(record: &Record, running: &str, trial: Option<&TrialRecord>) -> Option<Feedback> {
    if running == record.slot {
        return match trial {
            Some(t) if t.outcome == Outcome::Committed && t.slot == record.slot => {
                Some(Feedback::new(
                    Execution::Closed,
                    Finished::Success,
                    format!(
                        "version {} committed in slot {} after passing its health window",
                        record.version, record.slot
                    ),
                ))
            }
            // Still on trial: the verdict comes first.
            _ => None,
        };
    }
    let why = match trial {
        Some(t) if t.slot == record.slot => match t.outcome {
            Outcome::RolledBack | Outcome::Abandoned => format!(
                "rolled back: {}",
                t.reason.as_deref().unwrap_or("no reason recorded")
            ),
            Outcome::Interrupted | Outcome::Installing => {
                "the install stopped before its trial was armed".into()
            }
            other => format!("slot {} is not running (its record says {other:?})", t.slot),
        },
        _ => "the new slot left no record of its trial".into(),
    };
    Some(Feedback::new(
        Execution::Closed,
        Finished::Failure,
        format!(
            "version {} in slot {}: {why}; running slot {running} again",
            record.version, record.slot
        ),
    ))
}

impl<D: Device> Agent<D> {
    pub fn new(client: Client, device: D, state: PathBuf) -> Agent<D> {
        Agent {
            client,
            device,
            state,
            first_retry: FIRST_RETRY,
            sent: None,
        }
    }

    /// One poll cycle.
    pub fn cycle(&mut self) -> Result<Step, DdiError> {
        let mut record = read_record(&self.state);
        if let Some(r) = record.take() {
            let r = match r.stage.as_str() {
                "installing" => self.after_cut(r),
                _ => Some(r),
            };
            record = r.clone();
            let running = self.device.running_slot();
            let trial = self.device.last_trial();
            if let Some((r, f)) = r.and_then(|r| {
                let f = outcome(&r, &running, trial.as_ref())?;
                Some((r, f))
            }) {
                self.client.feedback(&r.id, &f)?;
                say!(
                    "hawkBit: action {} reported {}: {}",
                    r.id,
                    f.finished.as_str(),
                    f.details[0]
                );
                clear_record(&self.state);
                record = None;
            }
        }
        let poll = self.client.poll()?;
        let facts = self.device.facts();
        if poll.config_data.is_some() || self.sent.as_ref() != Some(&facts) {
            self.client.config_data(&facts)?;
            self.sent = Some(facts);
        }
        if let Some(href) = &poll.cancel {
            let cancel = self.client.cancel(href)?;
            let armed = record.as_ref().is_some_and(|r| r.id == cancel.stop_id);
            let f = match armed {
                true => Feedback::new(
                    Execution::Rejected,
                    Finished::Success,
                    "the update is installed and on trial: its result follows",
                ),
                false => Feedback::new(
                    Execution::Closed,
                    Finished::Success,
                    "canceled before the install started",
                ),
            };
            self.client.cancel_feedback(&cancel.id, &f)?;
            say!(
                "hawkBit: cancel of action {}: {}",
                cancel.stop_id,
                f.details[0]
            );
            return Ok(Step::Sleep(poll.sleep));
        }
        let Some(href) = &poll.deployment else {
            return Ok(Step::Sleep(poll.sleep));
        };
        let d = self.client.deployment(href)?;
        if record.as_ref().is_some_and(|r| r.id == d.id) {
            // Installed; its result is sent once the trial is judged.
            return Ok(Step::Sleep(poll.sleep));
        }
        if d.download == Handling::Skip || d.update == Handling::Skip {
            say!("hawkBit: action {} asks to skip for now; waiting", d.id);
            return Ok(Step::Sleep(poll.sleep));
        }
        if d.window == Some(false) {
            say!("hawkBit: action {} waits for its maintenance window", d.id);
            return Ok(Step::Sleep(poll.sleep));
        }
        self.deploy(&d).map(|rebooting| match rebooting {
            true => Step::Rebooting,
            false => Step::Sleep(poll.sleep),
        })
    }

    /// A record left `installing` (a power cut or a restart during the install): when the
    /// installer had written a new update record that got past `installing`, the trial was
    /// armed and its result is this action's; otherwise the slot was never armed, the record is
    /// dropped and the action, still offered by the server, is taken again.
    fn after_cut(&self, r: Record) -> Option<Record> {
        match self.device.last_trial() {
            Some(t)
                if trial_key(Some(&t)) != r.before
                    && !matches!(t.outcome, Outcome::Installing | Outcome::Interrupted) =>
            {
                let armed = Record {
                    stage: "trial".into(),
                    version: t.version.clone(),
                    slot: t.slot.clone(),
                    before: String::new(),
                    ..r
                };
                if let Err(e) = write_record(&self.state, &armed) {
                    say!("hawkBit: {e}");
                }
                Some(armed)
            }
            _ => {
                say!(
                    "hawkBit: action {} was interrupted during its install; taking it again",
                    r.id
                );
                clear_record(&self.state);
                None
            }
        }
    }

    /// Installs a deployment; `Ok(true)` when the trial is armed.
    fn deploy(&mut self, d: &ddi::Deployment) -> Result<bool, DdiError> {
        let fail = |agent: &Self, why: String| -> Result<bool, DdiError> {
            say!("hawkBit: action {}: {why}", d.id);
            agent.client.feedback(
                &d.id,
                &Feedback::new(Execution::Closed, Finished::Failure, why),
            )?;
            Ok(false)
        };
        let [artifact] = d.artifacts.as_slice() else {
            let why = format!(
                "a Cairn deployment carries exactly one artifact, a bundle; this one has {}",
                d.artifacts.len()
            );
            self.device
                .refused(&format!("hawkBit action {}", d.id), &why);
            return fail(self, why);
        };
        let what = format!("hawkBit action {} ({})", d.id, artifact.filename);
        write_record(
            &self.state,
            &Record {
                id: d.id.clone(),
                stage: "installing".into(),
                version: String::new(),
                slot: String::new(),
                before: trial_key(self.device.last_trial().as_ref()),
            },
        )
        .map_err(|message| DdiError {
            message,
            retry: true,
        })?;
        let mut start = Feedback::new(
            Execution::Proceeding,
            Finished::None,
            format!(
                "downloading {} ({} bytes) into the other slot",
                artifact.filename, artifact.size
            ),
        );
        start.progress = Some((0, 100));
        if let Err(e) = self.client.feedback(&d.id, &start) {
            clear_record(&self.state);
            return Err(e);
        }
        say!("hawkBit: {what}: installing");
        let download = match self.client.download(artifact) {
            Ok(f) => f,
            Err(e) => {
                clear_record(&self.state);
                return fail(self, e.message);
            }
        };
        let mut reader = Verified {
            inner: download,
            size: artifact.size,
            sha256: artifact.sha256.clone(),
            hash: Sha256::new(),
            seen: 0,
        };
        let client = self.client.clone();
        let id = d.id.clone();
        let mut last = 0;
        let mut progress = |done: u64, total: u64| {
            let pct = (done * 100).checked_div(total).unwrap_or(0);
            // A status entry per quarter: hawkBit keeps at most 1000 per action.
            if pct / 25 > last / 25 {
                last = pct;
                let mut f = Feedback::new(
                    Execution::Proceeding,
                    Finished::None,
                    format!("written {done} of {total} bytes"),
                );
                f.progress = Some((pct, 100));
                if let Err(e) = client.feedback(&id, &f) {
                    say!("hawkBit: progress of action {id}: {e}");
                }
            }
        };
        let installed = self
            .device
            .install(&what, &mut reader, artifact.size, &mut progress);
        match installed {
            Err(why) => {
                clear_record(&self.state);
                fail(self, why)
            }
            Ok((version, slot)) => {
                let record = Record {
                    id: d.id.clone(),
                    stage: "trial".into(),
                    version: version.clone(),
                    slot: slot.clone(),
                    before: String::new(),
                };
                if let Err(e) = write_record(&self.state, &record) {
                    // Without the record no slot could report the result: say so now.
                    return fail(self, e);
                }
                let mut f = Feedback::new(
                    Execution::Proceeding,
                    Finished::None,
                    format!(
                        "installed version {version} into slot {slot}; rebooting into its trial, the result follows its health window"
                    ),
                );
                f.progress = Some((100, 100));
                if let Err(e) = self.client.feedback(&d.id, &f) {
                    say!("hawkBit: action {}: {e}", d.id);
                }
                say!("hawkBit: {what}: installed version {version} into slot {slot}; rebooting into the trial");
                self.device.reboot();
                Ok(true)
            }
        }
    }

    /// Polls until `stop` says so (checked at least every 200 ms), backing off after failures.
    pub fn run_until(&mut self, stop: &dyn Fn() -> bool) {
        let mut retry = self.first_retry;
        while !stop() {
            let pause = match self.cycle() {
                Ok(Step::Sleep(d)) => {
                    retry = self.first_retry;
                    d
                }
                Ok(Step::Rebooting) => return,
                Err(e) => {
                    let max = ddi::MAX_SLEEP
                        .min(Duration::from_secs(3600))
                        .max(self.first_retry);
                    let pause = retry.min(max);
                    say!("hawkBit: {e}; polling again in {} s", pause.as_secs_f32());
                    retry = (retry * 2).min(max);
                    pause
                }
            };
            let until = Instant::now() + pause;
            while !stop() && Instant::now() < until {
                std::thread::sleep(
                    until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200)),
                );
            }
        }
    }
}

/// The artifact as it downloads, checked against the deployment: never more than its size,
/// and the read that would deliver its last bytes fails instead when the sha256 differs, so
/// the installer never sees a whole bundle that the server did not announce.
struct Verified<R> {
    inner: R,
    size: u64,
    sha256: String,
    hash: Sha256,
    seen: u64,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the artifact is longer than the {} bytes the deployment announces",
                    self.size
                ),
            ));
        }
        self.hash.update(&buf[..n]);
        if n > 0 && self.seen == self.size {
            let got: String = self
                .hash
                .clone()
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if got != self.sha256 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the artifact's sha256 is {got}, the deployment announces {}",
                        self.sha256
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// The client the machine config's `hawkbit:` section describes.
pub fn client(h: &cairn_facts::config::Hawkbit) -> Result<Client, String> {
    let roots = cairn_api::fetch::roots_from_pem(&h.ca).map_err(|e| format!("hawkbit.ca: {e}"))?;
    let identity = h
        .client_identity
        .as_ref()
        .map(|(c, k)| (c.as_bytes(), k.as_bytes()));
    let tls = cairn_api::fetch::client_config(roots, identity)?;
    let auth = match &h.auth {
        cairn_facts::config::HawkbitAuth::None => ddi::Auth::None,
        cairn_facts::config::HawkbitAuth::TargetToken(t) => ddi::Auth::Target(t.clone()),
        cairn_facts::config::HawkbitAuth::GatewayToken(t) => ddi::Auth::Gateway(t.clone()),
    };
    Ok(Client::new(&h.url, &h.tenant, &h.controller_id, auth, tls))
}

/// The device as cairnd runs it.
pub struct Cairnd {
    pub updates: std::sync::Arc<crate::update::Updates>,
    pub health: std::sync::Arc<crate::health::Health>,
    pub boot: crate::system::Boot,
}

impl Device for Cairnd {
    fn facts(&self) -> Vec<(String, String)> {
        let h = self.health.now();
        let health = match h.healthy {
            true => "healthy".to_string(),
            false => {
                let failing: Vec<String> = h
                    .checks
                    .iter()
                    .filter(|c| c.state != cairn_api::proto::CheckState::Passing as i32)
                    .map(|c| c.name.clone())
                    .collect();
                format!("unhealthy: {}", failing.join(", "))
            }
        };
        vec![
            ("board".into(), self.boot.release.board.clone()),
            ("version".into(), self.boot.release.version.clone()),
            ("slot".into(), self.boot.running.to_string()),
            ("health".into(), health),
        ]
    }

    fn running_slot(&self) -> String {
        self.boot.running.to_string()
    }

    fn last_trial(&self) -> Option<TrialRecord> {
        self.updates.last_record()
    }

    fn install(
        &self,
        what: &str,
        reader: &mut dyn Read,
        len: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(String, String), String> {
        let mut lines = crate::update::ProgressReporter::default();
        self.updates
            .install(what, reader, Some(len), &mut |p| {
                lines.report(p);
                progress(p.done, p.total);
            })
            .map(|i| (i.version, i.slot.to_string()))
            .map_err(|e| e.message)
    }

    fn refused(&self, what: &str, why: &str) {
        self.updates.refused(what, why);
    }

    fn reboot(&self) {
        crate::system::reboot_soon();
    }
}

/// Starts the thread that follows the machine config's `hawkbit:` section (read at every
/// start of the thread's wait: a section applied later over the API is taken within a minute).
pub fn follow(device: Cairnd, settings: std::sync::Arc<crate::settings::Settings>) {
    let spawned = std::thread::Builder::new()
        .name("hawkbit".into())
        .spawn(move || loop {
            let section = settings.current().ok().and_then(|c| c.hawkbit);
            let Some(section) = section else {
                std::thread::sleep(Duration::from_secs(60));
                continue;
            };
            match client(&section) {
                Ok(client) => {
                    say!(
                        "hawkBit: polling {} as {} (tenant {})",
                        section.url,
                        section.controller_id,
                        section.tenant
                    );
                    let mut agent = Agent::new(client, device, crate::bringup::STATE_MOUNT.into());
                    agent.run_until(&|| false);
                    // Rebooting into a trial.
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
                Err(e) => {
                    say!("hawkBit: {e}");
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
        });
    if let Err(e) = spawned {
        say!("hawkBit: starting its thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(slot: &str, outcome: Outcome, reason: Option<&str>) -> TrialRecord {
        TrialRecord {
            slot: slot.into(),
            version: "2.0.0".into(),
            security_version: 0,
            outcome,
            reason: reason.map(String::from),
        }
    }

    #[test]
    fn success_only_from_the_committed_new_slot() {
        let r = Record {
            id: "4".into(),
            stage: "trial".into(),
            version: "2.0.0".into(),
            slot: "b".into(),
            before: String::new(),
        };
        // On the new slot, still on trial: nothing yet.
        assert_eq!(
            outcome(&r, "b", Some(&trial("b", Outcome::Installed, None))),
            None
        );
        let ok = outcome(&r, "b", Some(&trial("b", Outcome::Committed, None))).unwrap();
        assert_eq!(
            (ok.execution, ok.finished),
            (Execution::Closed, Finished::Success)
        );
        let bad = outcome(
            &r,
            "a",
            Some(&trial(
                "b",
                Outcome::RolledBack,
                Some("probe tcp 127.0.0.1:9 failed"),
            )),
        )
        .unwrap();
        assert_eq!(bad.finished, Finished::Failure);
        assert!(
            bad.details[0].contains("rolled back: probe tcp 127.0.0.1:9 failed"),
            "{bad:?}"
        );
        let lost = outcome(&r, "a", None).unwrap();
        assert_eq!(lost.finished, Finished::Failure);
    }

    #[test]
    fn a_record_survives_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            id: "12".into(),
            stage: "installing".into(),
            version: String::new(),
            slot: String::new(),
            before: "b 1.2.2 Committed".into(),
        };
        write_record(dir.path(), &r).unwrap();
        assert_eq!(read_record(dir.path()), Some(r));
        clear_record(dir.path());
        assert_eq!(read_record(dir.path()), None);
        std::fs::write(dir.path().join(ACTION), b"{").unwrap();
        assert_eq!(read_record(dir.path()), None);
    }

    #[test]
    fn a_wrong_hash_withholds_the_last_bytes() {
        let data = vec![7u8; 100_000];
        let sha: String = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut ok = Verified {
            inner: &data[..],
            size: 100_000,
            sha256: sha,
            hash: Sha256::new(),
            seen: 0,
        };
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let mut bad = Verified {
            inner: &data[..],
            size: 100_000,
            sha256: "0".repeat(64),
            hash: Sha256::new(),
            seen: 0,
        };
        let mut out = Vec::new();
        let e = bad.read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("the deployment announces"), "{e}");
        assert!(out.len() < data.len());
        let mut long = Verified {
            inner: &data[..],
            size: 10,
            sha256: "0".repeat(64),
            hash: Sha256::new(),
            seen: 0,
        };
        assert!(long
            .read_to_end(&mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("longer"));
    }
}
