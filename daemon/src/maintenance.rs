//! Maintenance mode: STATE and DATA are encrypted and the TPM would not open them.
//!
//! The box brings up the network (DHCP on every wire: the machine config is on the locked
//! STATE) and an API that answers one call, Unlock, with the recovery key. The API's usual
//! certificates are on STATE too, so the server uses a key made now with a self-signed
//! certificate; its fingerprint goes to the console for the operator to compare with what
//! `cairnctl unlock` prints. Clients still need a certificate from the client CA, whose
//! (public) certificate cairnd keeps a copy of on the ESP for this moment.
//!
//! Once the recovery key opens the volumes (and a new key is sealed to the PCRs as they are
//! now), the API stops and the boot goes on as usual.

use std::fs;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::{proto, Device, DeviceError, Sink, UpgradeSource};
use cairn_netcfg::agent::{self as netcfg, Netcfg};
use cairn_tpm::Tpm;

use crate::bringup::CLIENT_CA_COPY;
use crate::log::say;
use crate::storage::{self, Opened, Partitions};
use crate::system::{self, Release, API_PORT};

const LOCKED: &str = "the box is in maintenance mode: STATE and DATA are locked; \
                      send the recovery key with `cairnctl unlock`";

struct Maintenance {
    parts: Partitions,
    tpm: Mutex<Option<Tpm>>,
    release: Release,
    unlocked: AtomicBool,
    tx: Mutex<mpsc::Sender<Opened>>,
}

fn locked<T>() -> Result<T, DeviceError> {
    Err(DeviceError::failed_precondition(LOCKED))
}

impl Device for Maintenance {
    fn version(&self) -> Result<proto::VersionResponse, DeviceError> {
        Ok(proto::VersionResponse {
            os_version: self.release.version.clone(),
            security_version: self.release.security_version,
            security_floor: 0,
            board: self.release.board.clone(),
            arch: std::env::consts::ARCH.into(),
            running_slot: 0,
            hostname: system::hostname(),
            booted_unix_ms: 0,
            api_version: cairn_api::API_VERSION.into(),
        })
    }

    fn health(&self) -> Result<proto::HealthResponse, DeviceError> {
        locked()
    }

    fn slot_status(&self) -> Result<proto::SlotStatusResponse, DeviceError> {
        locked()
    }

    fn service_list(&self) -> Result<proto::ServiceListResponse, DeviceError> {
        locked()
    }

    fn service_restart(&self, _: &str) -> Result<proto::ServiceRestartResponse, DeviceError> {
        locked()
    }

    fn logs(
        &self,
        _: &proto::LogsRequest,
        _: &Sink<proto::LogsResponse>,
    ) -> Result<(), DeviceError> {
        locked()
    }

    fn upgrade(
        &self,
        _: UpgradeSource,
        _: bool,
        _: &mut dyn FnMut(proto::UpgradeProgress),
    ) -> Result<proto::UpgradeDone, DeviceError> {
        locked()
    }

    fn rollback(&self) -> Result<proto::RollbackResponse, DeviceError> {
        locked()
    }

    fn reboot(&self) -> Result<(), DeviceError> {
        locked()
    }

    fn shutdown(&self) -> Result<(), DeviceError> {
        locked()
    }

    fn apply_config(
        &self,
        _: &proto::ApplyConfigRequest,
    ) -> Result<proto::ApplyConfigResponse, DeviceError> {
        locked()
    }

    fn confirm_config(&self, _: u64) -> Result<(), DeviceError> {
        locked()
    }

    fn events(
        &self,
        _: &proto::EventsRequest,
        _: &Sink<proto::EventsResponse>,
    ) -> Result<(), DeviceError> {
        locked()
    }

    fn unlock(&self, recovery_key: &str) -> Result<proto::UnlockResponse, DeviceError> {
        // One unlock at a time; the lock is held through the (slow) key derivation.
        let mut tpm = self.tpm.lock().unwrap_or_else(|e| e.into_inner());
        if self.unlocked.load(Ordering::SeqCst) {
            return Err(DeviceError::failed_precondition(
                "STATE and DATA are unlocked already; the boot is going on",
            ));
        }
        storage::normalize_recovery_key(recovery_key).map_err(DeviceError::invalid_argument)?;
        say!("unlocking STATE and DATA with a recovery key");
        match storage::unlock_with_recovery(&self.parts, tpm.as_mut(), recovery_key) {
            Ok((opened, message)) => {
                self.unlocked.store(true, Ordering::SeqCst);
                say!("{message}");
                let _ = self
                    .tx
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send(opened);
                Ok(proto::UnlockResponse { message })
            }
            Err(e) => {
                say!("unlock refused: {e}");
                Err(DeviceError::invalid_argument(e))
            }
        }
    }
}

/// Runs maintenance mode until the recovery key opens the volumes; returns them and the
/// network, which keeps running.
pub fn run(
    parts: Partitions,
    tpm: Option<Tpm>,
    why: &str,
    release: &Release,
    beat: &dyn Fn(),
) -> Result<(Opened, Netcfg), String> {
    say!("STATE and DATA stay locked: {why}");
    say!(
        "maintenance mode: network and API only; unlock with `cairnctl unlock` and the recovery key"
    );
    let network = Netcfg::start(
        Default::default(),
        netcfg::Options::device(),
        Arc::new(|line: &str| say!("{line}")),
    )
    .map_err(|e| format!("starting the network: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let device = Arc::new(Maintenance {
        parts,
        tpm: Mutex::new(tpm),
        release: release.clone(),
        unlocked: AtomicBool::new(false),
        tx: Mutex::new(tx),
    });
    // `device` keeps the channel's sender alive even when there is no server.
    let server = match serve(device.clone()) {
        Ok(server) => Some(server),
        Err(e) => {
            say!("no maintenance API ({e}); this box cannot be unlocked remotely and waits");
            None
        }
    };
    loop {
        beat();
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(opened) => {
                // Let the Unlock answer reach the client before the server goes.
                std::thread::sleep(Duration::from_millis(500));
                drop(server);
                return Ok((opened, network));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("maintenance mode ended without an unlock".into())
            }
        }
    }
}

fn serve(device: Arc<Maintenance>) -> Result<cairn_api::Server, String> {
    let ca = fs::read_to_string(CLIENT_CA_COPY)
        .map_err(|e| format!("reading the client CA {CLIENT_CA_COPY}: {e}"))?;
    let identity = cairn_pki::ephemeral_server_identity(&system::hostname())
        .map_err(|e| format!("making a maintenance key: {e}"))?;
    let tls =
        cairn_api::TlsConfig::from_pem(ca.as_bytes(), identity.0.as_bytes(), identity.1.as_bytes())
            .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(("::", API_PORT))
        .or_else(|_| TcpListener::bind(("0.0.0.0", API_PORT)))
        .map_err(|e| format!("port {}: {e}", API_PORT))?;
    let mut options = cairn_api::Options {
        log: Arc::new(|line: &str| say!("api: {line}")),
        ..Default::default()
    };
    // Two argon2id derivations under a slow CPU take a while.
    options.limits.call_deadline = Duration::from_secs(600);
    let server = cairn_api::serve(listener, &tls, device, options).map_err(|e| e.to_string())?;
    say!(
        "maintenance API on port {} (mutual TLS); its key's fingerprint is {}",
        API_PORT,
        identity.2
    );
    Ok(server)
}
