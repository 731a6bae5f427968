//! A fake [`Device`] for the tests and benchmarks of this crate and of its clients (cairnctl).
//!
//! It answers from constants as a device running 1.4.0 from slot A with 1.5.0 on trial in slot
//! B would, records every call that reaches it and what the call carried, and has knobs for what
//! a test needs beyond that: a call that takes long ([`FakeDevice::delay`]), a call held inside
//! the device until the test lets it go ([`FakeDevice::hold`]), an upload written into a file
//! ([`FakeDevice::uploads_into`]). Failures come from the input, as a device's would: an unknown
//! service, a wrong recovery key, the recovery key asked for twice, a URL to fetch.
//!
//! Behind the `testing` feature, which only dev-dependencies turn on: none of this is in the
//! device binary.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::{proto, Device, DeviceError, Rpc, Sink, UpgradeSource};

/// The fake's release, as Version and Events report it.
pub const OS_VERSION: &str = "1.4.0";

/// The fake's recovery key (systemd's format): RecoveryKey hands it out, Unlock takes only it.
pub const RECOVERY_KEY: &str =
    "cbdefghi-jklnrtuv-bcdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv";

/// The fake's k3s kubeconfig, in the shape k3s writes (its server is the device's loopback).
pub const KUBECONFIG: &str = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\nkind: Config\nusers:\n- name: default\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";

/// How often a stream that follows checks whether its client has gone.
const POLL: Duration = Duration::from_millis(20);

/// See the module documentation. Build it with [`FakeDevice::new`] and the builder methods, put
/// it in an `Arc`, serve it, and ask it afterwards what reached it.
pub struct FakeDevice {
    follow_events: bool,
    quote_wrong_keys: bool,
    upload_file: Option<PathBuf>,
    state: Mutex<State>,
}

/// What the calls left behind, and what the test set up for the next ones.
#[derive(Default)]
struct State {
    calls: Vec<Rpc>,
    logs: Vec<proto::LogsRequest>,
    applied: Vec<proto::ApplyConfigRequest>,
    unlock_keys: Vec<String>,
    last_upgrade: Option<Upgraded>,
    /// RecoveryKey has answered, and the key is forgotten.
    handed_out: bool,
    delays: HashMap<Rpc, Duration>,
    holds: HashMap<Rpc, Gate>,
}

/// The device's side of a [`Held`] call.
struct Gate {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

/// A call that [`FakeDevice::hold`] keeps inside the device until [`Held::release`] (or until
/// this is dropped).
pub struct Held {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl Held {
    /// Waits up to `timeout` for the call to reach the point where it is held; false if it did
    /// not.
    pub fn entered(&self, timeout: Duration) -> bool {
        self.entered.recv_timeout(timeout).is_ok()
    }

    /// Lets the call answer.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

/// What the last upgrade that succeeded brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgraded {
    /// The uploaded bundle; empty when uploads go into a file ([`FakeDevice::uploads_into`]).
    pub bundle: Vec<u8>,
    /// Whether the client asked to reboot into it.
    pub reboot: bool,
}

impl Default for FakeDevice {
    fn default() -> FakeDevice {
        FakeDevice::new()
    }
}

impl FakeDevice {
    pub fn new() -> FakeDevice {
        FakeDevice {
            follow_events: true,
            quote_wrong_keys: false,
            upload_file: None,
            state: Mutex::default(),
        }
    }

    /// Events sends the recent events and ends the stream, where a device follows until the
    /// client goes: for tests that read every stream to its end.
    pub fn events_end(mut self) -> FakeDevice {
        self.follow_events = false;
        self
    }

    /// Unlock's error for a wrong key quotes the key, as a careless device might: for tests of
    /// the server, which must keep the key out of what it logs anyway.
    pub fn quoting_wrong_keys(mut self) -> FakeDevice {
        self.quote_wrong_keys = true;
        self
    }

    /// Upgrade writes each upload into `path` (created, or truncated) instead of keeping it in
    /// memory: for uploads too large to keep, and to pay for a write as a device does.
    pub fn uploads_into(mut self, path: impl Into<PathBuf>) -> FakeDevice {
        self.upload_file = Some(path.into());
        self
    }

    /// Every later call of `rpc` takes `by` longer, after it has taken its input (read the
    /// upload, recorded the key) and before it answers.
    pub fn delay(&self, rpc: Rpc, by: Duration) {
        self.state().delays.insert(rpc, by);
    }

    /// Holds the next call of `rpc` where [`FakeDevice::delay`] would, until the test releases
    /// it.
    pub fn hold(&self, rpc: Rpc) -> Held {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let gate = Gate {
            entered: entered_tx,
            release: release_rx,
        };
        self.state().holds.insert(rpc, gate);
        Held { entered, release }
    }

    /// The calls that reached the device since the last time, in order; forgets them.
    pub fn take_calls(&self) -> Vec<Rpc> {
        std::mem::take(&mut self.state().calls)
    }

    /// Whether a call of `rpc` reached the device (and was not taken by
    /// [`FakeDevice::take_calls`]).
    pub fn called(&self, rpc: Rpc) -> bool {
        self.state().calls.contains(&rpc)
    }

    /// Every Logs request, in order.
    pub fn logs_requests(&self) -> Vec<proto::LogsRequest> {
        self.state().logs.clone()
    }

    /// Every ApplyConfig request, in order.
    pub fn applied(&self) -> Vec<proto::ApplyConfigRequest> {
        self.state().applied.clone()
    }

    /// Every key Unlock was given, as the device saw it, in order.
    pub fn unlock_keys(&self) -> Vec<String> {
        self.state().unlock_keys.clone()
    }

    /// The last upgrade that succeeded, if any.
    pub fn last_upgrade(&self) -> Option<Upgraded> {
        self.state().last_upgrade.clone()
    }

    /// A test that failed an assertion while holding the lock has failed already; the others
    /// should still see what the device recorded.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, rpc: Rpc) {
        self.state().calls.push(rpc);
    }

    /// Where a call waits for its [`FakeDevice::delay`] and [`FakeDevice::hold`].
    fn pause(&self, rpc: Rpc) {
        let (delay, gate) = {
            let mut state = self.state();
            (state.delays.get(&rpc).copied(), state.holds.remove(&rpc))
        };
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        if let Some(gate) = gate {
            // A test that dropped its Held has let the call go.
            let _ = gate.entered.send(());
            let _ = gate.release.recv();
        }
    }
}

impl Device for FakeDevice {
    fn version(&self) -> Result<proto::VersionResponse, DeviceError> {
        self.record(Rpc::Version);
        self.pause(Rpc::Version);
        Ok(proto::VersionResponse {
            os_version: OS_VERSION.into(),
            security_version: 3,
            security_floor: 2,
            board: "qemu-aarch64".into(),
            arch: "aarch64".into(),
            running_slot: proto::Slot::A as i32,
            hostname: "edge-01".into(),
            booted_unix_ms: 1_700_000_000_000,
            api_version: crate::API_VERSION.into(),
        })
    }

    fn health(&self) -> Result<proto::HealthResponse, DeviceError> {
        self.record(Rpc::Health);
        self.pause(Rpc::Health);
        Ok(proto::HealthResponse {
            healthy: false,
            checks: vec![
                proto::HealthCheck {
                    name: "services".into(),
                    state: proto::CheckState::Passing as i32,
                    detail: String::new(),
                    checked_unix_ms: 1_700_000_001_000,
                    streak: 4,
                },
                proto::HealthCheck {
                    name: "tcp 127.0.0.1:6443".into(),
                    state: proto::CheckState::Failing as i32,
                    detail: "connection refused".into(),
                    checked_unix_ms: 1_700_000_001_000,
                    streak: 2,
                },
            ],
            trial: false,
            trial_deadline_unix_ms: 0,
            secure_boot: "on".into(),
        })
    }

    fn slot_status(&self) -> Result<proto::SlotStatusResponse, DeviceError> {
        self.record(Rpc::SlotStatus);
        self.pause(Rpc::SlotStatus);
        Ok(proto::SlotStatusResponse {
            slots: vec![
                proto::SlotInfo {
                    slot: proto::Slot::A as i32,
                    state: proto::SlotState::Good as i32,
                    os_version: OS_VERSION.into(),
                    security_version: 3,
                    tries_left: 0,
                    installed_unix_ms: 0,
                },
                proto::SlotInfo {
                    slot: proto::Slot::B as i32,
                    state: proto::SlotState::Trial as i32,
                    os_version: "1.5.0".into(),
                    security_version: 3,
                    tries_left: 2,
                    installed_unix_ms: 1_700_000_100_000,
                },
            ],
            running: proto::Slot::A as i32,
            next_boot: proto::Slot::B as i32,
            last_update: proto::UpdateOutcome::Pending as i32,
            last_update_detail: "1.5.0".into(),
        })
    }

    fn service_list(&self) -> Result<proto::ServiceListResponse, DeviceError> {
        self.record(Rpc::ServiceList);
        self.pause(Rpc::ServiceList);
        Ok(proto::ServiceListResponse {
            services: vec![
                proto::ServiceInfo {
                    name: "containerd".into(),
                    state: proto::ServiceState::Running as i32,
                    pid: 812,
                    restarts: 0,
                    since_unix_ms: 1_700_000_002_000,
                    last_exit: String::new(),
                    rss_bytes: 6 << 20,
                    open_fds: 14,
                },
                proto::ServiceInfo {
                    name: "ntp".into(),
                    state: proto::ServiceState::Backoff as i32,
                    pid: 0,
                    restarts: 12,
                    since_unix_ms: 1_700_000_003_000,
                    last_exit: "exit status 1".into(),
                    rss_bytes: 0,
                    open_fds: 0,
                },
            ],
        })
    }

    fn service_restart(&self, name: &str) -> Result<proto::ServiceRestartResponse, DeviceError> {
        self.record(Rpc::ServiceRestart);
        self.pause(Rpc::ServiceRestart);
        if name != "containerd" {
            return Err(DeviceError::not_found(format!(
                "no service {name:?}; ServiceList shows them"
            )));
        }
        Ok(proto::ServiceRestartResponse { pid: 42 })
    }

    /// `line 0`, `line 1`, … one second apart, then (when following) nothing until the client
    /// goes.
    fn logs(
        &self,
        request: &proto::LogsRequest,
        sink: &Sink<proto::LogsResponse>,
    ) -> Result<(), DeviceError> {
        self.record(Rpc::Logs);
        self.state().logs.push(request.clone());
        self.pause(Rpc::Logs);
        for i in 0..request.tail {
            let line = proto::LogsResponse {
                time_unix_ms: 1_700_000_000_000 + i64::from(i) * 1000,
                line: format!("line {i}"),
                dropped: 0,
                priority: 6,
            };
            if sink.send(line).is_err() {
                return Ok(());
            }
        }
        while request.follow && !sink.is_closed() {
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Reads the whole upload, reporting the bytes read as the rootfs written after each read
    /// (so a test sees progress while the upload is still coming), and installs 1.5.0 into B.
    fn upgrade(
        &self,
        source: UpgradeSource,
        reboot: bool,
        progress: &mut dyn FnMut(proto::UpgradeProgress),
    ) -> Result<proto::UpgradeDone, DeviceError> {
        self.record(Rpc::Upgrade);
        let mut upload = match source {
            UpgradeSource::Upload(upload) => upload,
            UpgradeSource::Registry { reference } => {
                return Err(DeviceError::failed_precondition(format!(
                    "this fake pulls nothing (asked for {reference})"
                )))
            }
            UpgradeSource::Fetch { .. } => {
                return Err(DeviceError::failed_precondition(
                    "this fake only takes uploads",
                ))
            }
        };
        let mut file =
            match &self.upload_file {
                Some(path) => Some(File::create(path).map_err(|e| {
                    DeviceError::internal(format!("creating {}: {e}", path.display()))
                })?),
                None => None,
            };
        let mut bundle = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = upload
                .read(&mut buf)
                .map_err(|e| DeviceError::invalid_argument(format!("reading: {e}")))?;
            if n == 0 {
                break;
            }
            match &mut file {
                Some(file) => file
                    .write_all(&buf[..n])
                    .map_err(|e| DeviceError::internal(format!("writing the upload: {e}")))?,
                None => bundle.extend_from_slice(&buf[..n]),
            }
            written += n as u64;
            progress(proto::UpgradeProgress {
                phase: proto::UpgradePhase::Writing as i32,
                written,
                total: upload.size(),
                payload: "rootfs".into(),
                ..Default::default()
            });
        }
        self.pause(Rpc::Upgrade);
        self.state().last_upgrade = Some(Upgraded { bundle, reboot });
        Ok(proto::UpgradeDone {
            slot: proto::Slot::B as i32,
            os_version: "1.5.0".into(),
            security_version: 3,
            rebooting: reboot,
        })
    }

    fn rollback(&self) -> Result<proto::RollbackResponse, DeviceError> {
        self.record(Rpc::Rollback);
        self.pause(Rpc::Rollback);
        Ok(proto::RollbackResponse {
            target: proto::Slot::B as i32,
        })
    }

    fn reboot(&self) -> Result<(), DeviceError> {
        self.record(Rpc::Reboot);
        self.pause(Rpc::Reboot);
        Ok(())
    }

    fn shutdown(&self) -> Result<(), DeviceError> {
        self.record(Rpc::Shutdown);
        self.pause(Rpc::Shutdown);
        Ok(())
    }

    /// Generation 7 is in force; applying makes 8, on trial for two minutes when asked to try.
    fn apply_config(
        &self,
        request: &proto::ApplyConfigRequest,
    ) -> Result<proto::ApplyConfigResponse, DeviceError> {
        self.record(Rpc::ApplyConfig);
        self.state().applied.push(request.clone());
        self.pause(Rpc::ApplyConfig);
        let trying = request.try_timeout_s > 0;
        Ok(proto::ApplyConfigResponse {
            changes: vec!["network.hostname: edge-01 -> edge-02".into()],
            generation: if request.dry_run { 7 } else { 8 },
            revert_unix_ms: if trying { 1_700_000_120_000 } else { 0 },
        })
    }

    fn confirm_config(&self, _generation: u64) -> Result<(), DeviceError> {
        self.record(Rpc::ConfirmConfig);
        self.pause(Rpc::ConfirmConfig);
        Ok(())
    }

    /// Up to `tail` of two recent events (the boot, a service in backoff), then nothing until
    /// the client goes, or the end of the stream with [`FakeDevice::events_end`].
    fn events(
        &self,
        request: &proto::EventsRequest,
        sink: &Sink<proto::EventsResponse>,
    ) -> Result<(), DeviceError> {
        use proto::events_response::Event;
        self.record(Rpc::Events);
        self.pause(Rpc::Events);
        let recent = [
            Event::Boot(proto::BootEvent {
                slot: proto::Slot::A as i32,
                os_version: OS_VERSION.into(),
                trial: false,
            }),
            Event::Service(proto::ServiceEvent {
                name: "ntp".into(),
                state: proto::ServiceState::Backoff as i32,
                detail: "exit status 1".into(),
            }),
        ];
        for (seq, event) in recent.into_iter().enumerate().take(request.tail as usize) {
            let event = proto::EventsResponse {
                seq: seq as u64 + 1,
                time_unix_ms: 1_700_000_000_000,
                event: Some(event),
            };
            if sink.send(event).is_err() {
                return Ok(());
            }
        }
        while self.follow_events && !sink.is_closed() {
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// [`RECOVERY_KEY`], once.
    fn recovery_key(&self) -> Result<proto::RecoveryKeyResponse, DeviceError> {
        self.record(Rpc::RecoveryKey);
        self.pause(Rpc::RecoveryKey);
        if std::mem::replace(&mut self.state().handed_out, true) {
            return Err(DeviceError::failed_precondition(
                "the recovery key was handed out once already and is forgotten",
            ));
        }
        Ok(proto::RecoveryKeyResponse {
            recovery_key: RECOVERY_KEY.into(),
        })
    }

    /// [`KUBECONFIG`].
    fn kubeconfig(&self) -> Result<proto::KubeconfigResponse, DeviceError> {
        self.record(Rpc::Kubeconfig);
        self.pause(Rpc::Kubeconfig);
        Ok(proto::KubeconfigResponse {
            kubeconfig: KUBECONFIG.into(),
        })
    }

    /// Opens the disks with [`RECOVERY_KEY`] and nothing else, as often as asked.
    fn unlock(&self, recovery_key: &str) -> Result<proto::UnlockResponse, DeviceError> {
        self.record(Rpc::Unlock);
        self.state().unlock_keys.push(recovery_key.into());
        self.pause(Rpc::Unlock);
        if recovery_key != RECOVERY_KEY {
            return Err(DeviceError::invalid_argument(if self.quote_wrong_keys {
                format!("{recovery_key} opens no keyslot of STATE")
            } else {
                "the recovery key opens neither STATE nor DATA".to_string()
            }));
        }
        Ok(proto::UnlockResponse {
            message: "unlocked STATE and DATA; sealed to PCR 7".into(),
        })
    }
}
