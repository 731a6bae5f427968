//! The update capability: install a signed bundle into the other slot and arm its trial,
//! download one over HTTPS, roll back over the API, and after a boot either judge the trial
//! (health window, then commit or roll back) or report what became of the last update.
//!
//! One lock covers installs and rollbacks, whichever source asked first (a stick or the API),
//! so two of them never overlap; once a rollback has marked the running slot bad, nothing may
//! install or commit until the reboot.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cairn_api::proto::{self, events_response::Event};
use cairn_api::DeviceError;
use cairn_boot::Slot;
use cairn_bundle::{DeviceFacts, Keyring, Version};
use cairn_updater::health::{self, Verdict};
use cairn_updater::install::{Installed, Installer, Layout, Phase, Progress};
use cairn_updater::state::{Outcome, SlotRecord, SlotSource, StateDir, TrialRecord};

use crate::block;
use crate::events::{proto_slot, Events};
use crate::health::{FailedRounds, Health};
use crate::heartbeat::Heartbeat;
use crate::log::{say, unix_ms};
use crate::settings::Settings;
use crate::system::{self, bootloader, with_esp_rw, Boot, ESP, RELEASE};

const KEYRING: &str = "/etc/cairn/keyring";

pub struct Updates {
    boot: Boot,
    state: StateDir,
    heart: Heartbeat,
    events: Arc<Events>,
    settings: Arc<Settings>,
    /// Held while a bundle is installed or a rollback is made.
    lock: Mutex<()>,
    /// Set (under `lock`) once a rollback has marked the running slot bad: the reboot is
    /// coming, and nothing may mark the slot good or install in the meantime.
    rolled_back: AtomicBool,
}

impl Updates {
    pub fn new(
        boot: Boot,
        state: StateDir,
        heart: Heartbeat,
        events: Arc<Events>,
        settings: Arc<Settings>,
    ) -> Updates {
        Updates {
            boot,
            state,
            heart,
            events,
            settings,
            lock: Mutex::new(()),
            rolled_back: AtomicBool::new(false),
        }
    }

    /// The version running now.
    pub fn running_version(&self) -> Result<Version, String> {
        Version::parse(&self.boot.release.version)
            .map_err(|e| format!("{RELEASE}: VERSION {}: {e}", self.boot.release.version))
    }

    /// The record of the last update on STATE (a damaged one reads as none, and says so).
    pub fn last_record(&self) -> Option<TrialRecord> {
        self.state.trial().unwrap_or_else(|e| {
            say!("{e}: ignoring the record of the last update");
            None
        })
    }

    /// Verifies and installs a bundle into the other slot and arms its trial. `what` names the
    /// source in messages. Refused while another install or a rollback runs.
    pub fn install(
        &self,
        what: &str,
        // Not generic: one copy of the installer serves sticks, uploads and downloads (the
        // device binary has a size budget).
        reader: &mut dyn Read,
        len: Option<u64>,
        report: &mut dyn FnMut(&Progress),
    ) -> Result<Installed, DeviceError> {
        let Ok(_busy) = self.lock.try_lock() else {
            return Err(DeviceError::failed_precondition(
                "another update or a rollback is in progress: try again when it is done",
            ));
        };
        if self.rolled_back.load(Ordering::SeqCst) {
            return Err(DeviceError::failed_precondition(
                "the device is rolling back and about to reboot",
            ));
        }
        let installed_version = Version::parse(&self.boot.release.version).map_err(|e| {
            DeviceError::internal(format!(
                "{RELEASE}: VERSION {}: {e}",
                self.boot.release.version
            ))
        })?;
        let keyring = load_keyring().map_err(DeviceError::failed_precondition)?;
        let layout = Layout {
            roots: [
                block::find_partition("ROOT-A").map_err(DeviceError::internal)?,
                block::find_partition("ROOT-B").map_err(DeviceError::internal)?,
            ],
            esp: PathBuf::from(ESP),
        };
        let tries = self
            .settings
            .current()
            .map_or(cairn_updater::install::DEFAULT_TRIES, |c| c.tries);
        let installer = Installer {
            keyring: &keyring,
            device: DeviceFacts {
                board: self.boot.release.board.clone(),
                arch: std::env::consts::ARCH.to_string(),
                installed_version,
                security_floor: 0,
            },
            running: self.boot.running,
            layout,
            state: self.state.clone(),
            tries,
        };
        self.events.push(Event::Update(proto::UpdateEvent {
            stage: proto::update_event::Stage::Started as i32,
            os_version: String::new(),
            detail: what.to_string(),
        }));
        let heart = self.heart.clone();
        let mut failure = None;
        let result = with_esp_rw(|| {
            installer
                .install(reader, len, &mut |p| {
                    heart.beat();
                    report(p);
                })
                .map_err(|e| {
                    let message = format!("{what} refused: {}", chain(&e));
                    failure = Some(install_error(&e, message.clone()));
                    message
                })
        });
        match result {
            Ok(installed) => {
                self.events.push(Event::Update(proto::UpdateEvent {
                    stage: proto::update_event::Stage::Installed as i32,
                    os_version: installed.version.clone(),
                    detail: format!("slot {}", installed.slot),
                }));
                Ok(installed)
            }
            Err(message) => {
                self.events.push(Event::Update(proto::UpdateEvent {
                    stage: proto::update_event::Stage::Failed as i32,
                    os_version: String::new(),
                    detail: message.clone(),
                }));
                Err(failure.unwrap_or_else(|| DeviceError::internal(message)))
            }
        }
    }

    /// A bundle refused before an install began (a stick's file that is not a readable
    /// bundle): an event, like a refused install.
    pub fn refused(&self, what: &str, reason: &str) {
        self.events.push(Event::Update(proto::UpdateEvent {
            stage: proto::update_event::Stage::Failed as i32,
            os_version: String::new(),
            detail: format!("{what} refused: {reason}"),
        }));
    }

    /// Starts downloading a bundle, trusting the machine config's `update.fetch_ca`.
    pub fn fetch(&self, url: &str) -> Result<cairn_api::fetch::Fetch, DeviceError> {
        let Some(pem) = self.settings.current().ok().and_then(|c| c.fetch_ca) else {
            return Err(DeviceError::failed_precondition(format!(
                "{url}: the device trusts no HTTPS server for bundles: set update.fetch_ca in the \
                 machine config, or upload the file"
            )));
        };
        let roots = cairn_api::fetch::roots_from_pem(&pem)
            .map_err(|e| DeviceError::internal(format!("update.fetch_ca: {e}")))?;
        cairn_api::fetch::Fetch::new(url, roots)
            .map_err(|e| DeviceError::unavailable(e.to_string()))
    }

    /// The manifest digests installed from `update.source` so far ([`crate::source`]).
    pub fn source_tried(&self) -> Vec<String> {
        fs::read_to_string(self.state.root().join(crate::source::TRIED))
            .map(|t| t.lines().map(String::from).collect())
            .unwrap_or_default()
    }

    /// Adds `digest` to [`Updates::source_tried`] (durably, before its install starts).
    pub fn record_source_tried(&self, digest: &str) -> Result<(), String> {
        let mut tried = self.source_tried();
        tried.retain(|t| t != digest);
        tried.push(digest.to_string());
        let keep = tried.len().saturating_sub(16);
        let text: String = tried[keep..].iter().map(|t| format!("{t}\n")).collect();
        cairn_updater::state::replace(self.state.root(), crate::source::TRIED, text.as_bytes())
            .map_err(|e| format!("recording the update source's digest: {e}"))
    }

    /// Starts pulling the bundle artifact `reference` names from its registry (the machine
    /// config's CA and credentials for it): the manifest is fetched and checked (digest,
    /// artifactType, one layer), and the layer comes back as it downloads, checked against
    /// the manifest's size and digest. A refusal is also an event.
    pub fn pull(
        &self,
        reference: &cairn_api::registry::Reference,
    ) -> Result<(cairn_api::registry::Blob, String), DeviceError> {
        let refused = |e: DeviceError| {
            self.refused(&format!("oci://{reference}"), &e.message);
            e
        };
        let config = self
            .settings
            .current()
            .map_err(|e| refused(DeviceError::internal(format!("the machine config: {e}"))))?;
        let client = crate::registry::client(&config, reference)
            .map_err(|e| refused(DeviceError::failed_precondition(e)))?;
        let (manifest, layer) = client
            .bundle(reference)
            .map_err(|e| refused(crate::registry::device_error(e)))?;
        let blob = client
            .blob(reference, &layer)
            .map_err(|e| refused(crate::registry::device_error(e)))?;
        Ok((blob, manifest.digest))
    }

    /// Marks the running slot bad and reboots into the other one (shortly, so that the answer
    /// reaches the client).
    pub fn rollback(&self) -> Result<Slot, DeviceError> {
        let Ok(_busy) = self.lock.try_lock() else {
            return Err(DeviceError::failed_precondition(
                "an update is being installed: try again when it is done",
            ));
        };
        if self.rolled_back.load(Ordering::SeqCst) {
            return Err(DeviceError::failed_precondition(
                "already rolled back: the device is about to reboot",
            ));
        }
        let (running, target) = (self.boot.running, self.boot.running.other());
        with_esp_rw(|| {
            bootloader(&self.boot)
                .mark_bad(running)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| DeviceError::failed_precondition(format!("cannot roll back: {e}")))?;
        self.rolled_back.store(true, Ordering::SeqCst);
        let reason = "rolled back over the API";
        let record = TrialRecord {
            slot: running.to_string(),
            version: self.boot.release.version.clone(),
            security_version: self.boot.release.security_version,
            outcome: Outcome::RolledBack,
            reason: Some(reason.into()),
        };
        if let Err(e) = self.state.set_trial(&record) {
            say!("recording the rollback: {e}");
        }
        self.events.push(Event::Rollback(proto::RollbackEvent {
            from_slot: proto_slot(running) as i32,
            to_slot: proto_slot(target) as i32,
            reason: reason.into(),
        }));
        say!("slot {running} marked bad over the API; rebooting into slot {target}");
        system::reboot_soon();
        Ok(target)
    }

    /// Records what the running slot holds when STATE has no record of it: it was written with
    /// the disk image (or by a release that kept no records), and is recorded as first seen now.
    pub fn record_running_slot(&self) {
        let running = self.boot.running;
        match self.state.slot(running) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => say!("{e}: recording slot {running} again"),
        }
        let record = SlotRecord {
            version: self.boot.release.version.clone(),
            security_version: self.boot.release.security_version,
            installed_unix_ms: unix_ms(SystemTime::now()),
            source: SlotSource::Image,
        };
        if let Err(e) = self.state.set_slot(running, &record) {
            say!("recording what slot {running} holds: {e}");
        }
    }

    /// A boot that is not a trial: report the last update and keep the floor in step.
    pub fn after_normal_boot(&self, record: Option<TrialRecord>) -> Result<(), String> {
        let floor = match self.state.raise_floor(self.boot.release.security_version) {
            Ok(f) => f.to_string(),
            Err(e) => format!("unreadable ({e}; installs are refused until it is repaired)"),
        };
        if let Some(line) = crate::storage::raise_tpm_floor(self.boot.release.security_version) {
            say!("{line}");
        }
        say!(
            "slot {} committed, version {}, security floor {floor}",
            self.boot.running,
            self.boot.release.version
        );
        let Some(mut rec) = record else {
            return Ok(());
        };
        match rec.outcome {
            Outcome::Installed if rec.slot != self.boot.running.to_string() => {
                let reason = "it never reported healthy (crashed, hung or reset by the watchdog \
                              until the bootloader's tries ran out)";
                say!(
                    "last update: version {} in slot {} was abandoned: {reason}",
                    rec.version,
                    rec.slot
                );
                let other = self.boot.running.other();
                with_esp_rw(|| {
                    bootloader(&self.boot)
                        .mark_bad(other)
                        .map_err(|e| e.to_string())
                })?;
                rec.outcome = Outcome::Abandoned;
                rec.reason = Some(reason.into());
                self.state.set_trial(&rec).map_err(|e| e.to_string())?;
                self.events.push(Event::Rollback(proto::RollbackEvent {
                    from_slot: proto_slot(other) as i32,
                    to_slot: proto_slot(self.boot.running) as i32,
                    reason: format!(
                        "version {} in slot {} was abandoned: {reason}",
                        rec.version, rec.slot
                    ),
                }));
            }
            Outcome::RolledBack | Outcome::Abandoned => say!(
                "last update: version {} in slot {} was rolled back: {}",
                rec.version,
                rec.slot,
                rec.reason.as_deref().unwrap_or("no reason recorded")
            ),
            Outcome::Installing if rec.slot != self.boot.running.to_string() => {
                let reason = "the install stopped before its trial was armed (a power cut?); the \
                              slot never booted, and this version may be installed again";
                say!(
                    "last update: version {} in slot {} was interrupted: {reason}",
                    rec.version,
                    rec.slot
                );
                rec.outcome = Outcome::Interrupted;
                rec.reason = Some(reason.into());
                self.state.set_trial(&rec).map_err(|e| e.to_string())?;
            }
            Outcome::Interrupted => say!(
                "last update: version {} in slot {} was interrupted: {}",
                rec.version,
                rec.slot,
                rec.reason.as_deref().unwrap_or("no reason recorded")
            ),
            Outcome::Committed => say!(
                "last update: version {} in slot {} committed",
                rec.version,
                rec.slot
            ),
            Outcome::Installed | Outcome::Installing => {}
        }
        Ok(())
    }

    /// The trial boot: the health window, then commit (returns) or roll back (reboots).
    pub fn judge_trial(&self, health: &Health, record: Option<TrialRecord>) -> Result<(), String> {
        let window = self
            .settings
            .current()
            .map_or(health::DEFAULT_WINDOW, |c| c.health_window);
        say!(
            "slot {} is on trial: health checks for up to {} s",
            self.boot.running,
            window.as_secs()
        );
        let mut failed = FailedRounds::new(|e| self.events.push(Event::Health(e)));
        let mut rounds = 0;
        let verdict = health.watch_trial(window, &self.heart, &mut |round, failures| {
            rounds = round;
            failed.round(round, failures);
        });
        failed.finish();
        let mut rec = record.unwrap_or(TrialRecord {
            slot: self.boot.running.to_string(),
            version: self.boot.release.version.clone(),
            security_version: self.boot.release.security_version,
            outcome: Outcome::Installed,
            reason: None,
        });
        let running = self.boot.running;
        match verdict {
            Verdict::Healthy { rounds } => {
                let _busy = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                if self.rolled_back.load(Ordering::SeqCst) {
                    // A rollback over the API came first: its reboot is on the way.
                    say!("slot {running} healthy, but it was rolled back meanwhile: not committed");
                    drop(_busy);
                    self.heart.idle();
                }
                with_esp_rw(|| {
                    bootloader(&self.boot)
                        .mark_good(running)
                        .map_err(|e| e.to_string())
                })?;
                let floor = self
                    .state
                    .raise_floor(self.boot.release.security_version)
                    .map_err(|e| e.to_string())?;
                if let Some(line) =
                    crate::storage::raise_tpm_floor(self.boot.release.security_version)
                {
                    say!("{line}");
                }
                rec.outcome = Outcome::Committed;
                rec.reason = None;
                self.state.set_trial(&rec).map_err(|e| e.to_string())?;
                drop(_busy);
                say!(
                    "slot {running} healthy after {rounds} round(s): committed version {}, security floor {floor}",
                    self.boot.release.version
                );
                self.events.push(Event::Health(proto::HealthEvent {
                    healthy: true,
                    detail: format!("after {rounds} round(s)"),
                    ..Default::default()
                }));
                self.events.push(Event::Update(proto::UpdateEvent {
                    stage: proto::update_event::Stage::Committed as i32,
                    os_version: self.boot.release.version.clone(),
                    detail: format!("slot {running}"),
                }));
                Ok(())
            }
            Verdict::Unhealthy { reason } => {
                say!("slot {running} is not healthy: {reason}");
                self.events.push(Event::Health(proto::HealthEvent {
                    healthy: false,
                    detail: format!("after {rounds} round(s), {reason}"),
                    ..Default::default()
                }));
                rec.outcome = Outcome::RolledBack;
                rec.reason = Some(reason.clone());
                self.state.set_trial(&rec).map_err(|e| e.to_string())?;
                with_esp_rw(|| {
                    bootloader(&self.boot)
                        .mark_bad(running)
                        .map_err(|e| e.to_string())
                })?;
                self.events.push(Event::Rollback(proto::RollbackEvent {
                    from_slot: proto_slot(running) as i32,
                    to_slot: proto_slot(running.other()) as i32,
                    reason,
                }));
                say!(
                    "slot {running} marked bad; rebooting into slot {}",
                    running.other()
                );
                system::reboot();
            }
        }
    }
}

/// The API's code for an install that failed: the bundle's fault, the device's state, or the
/// device's failure.
fn install_error(e: &cairn_updater::Error, message: String) -> DeviceError {
    use cairn_updater::Error as E;
    match e {
        E::Bundle(_) | E::Refused(_) | E::Unsuitable(_) | E::BootSpec(_) | E::TooBig { .. } => {
            DeviceError::invalid_argument(message)
        }
        E::RunningOnTrial { .. } => DeviceError::failed_precondition(message),
        _ => DeviceError::internal(message),
    }
}

/// Prints a progress line per phase and every 25 % of the bytes.
#[derive(Default)]
pub struct ProgressReporter {
    last: Option<(Phase, String, u64)>,
}

impl ProgressReporter {
    pub fn report(&mut self, p: &Progress) {
        let quarter = (p.done * 4).checked_div(p.total).unwrap_or(0);
        let key = (p.phase, p.payload.clone(), quarter);
        if self.last.as_ref() == Some(&key) {
            return;
        }
        self.last = Some(key);
        if p.payload.is_empty() {
            say!("install: {}", p.phase.as_str());
        } else {
            say!(
                "install: {} {} ({} of {} bytes)",
                p.phase.as_str(),
                p.payload,
                p.done,
                p.total
            );
        }
    }
}

fn load_keyring() -> Result<Keyring, String> {
    let text = match fs::read_to_string(KEYRING) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "this system trusts no signing keys ({KEYRING} is missing): it installs no bundles"
            ))
        }
        Err(e) => return Err(format!("reading {KEYRING}: {e}")),
    };
    let ring = Keyring::parse(&text).map_err(|e| format!("{KEYRING}: {e}"))?;
    ring.require_trusted()
        .map_err(|e| format!("{KEYRING}: {e}"))?;
    Ok(ring)
}

/// An error and its causes on one line (`cannot read the bundle: blob …: wrong digest …`), so
/// the event names what went wrong in the download too.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
