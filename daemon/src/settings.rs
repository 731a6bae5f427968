//! The machine config in force, and changing it while the device runs: checked first, the
//! network changed live (and put back if the kernel refuses), then written to STATE. A change
//! "on trial" is applied without being written and reverts by itself unless confirmed in time,
//! so a config that cuts the device off its network undoes itself.
//!
//! The config on STATE (written over the API) wins over the one the image carries.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_api::proto::{self, events_response::Event};
use cairn_api::DeviceError;
use cairn_netcfg::agent::{self as netcfg, Netcfg};
use cairn_updater::state::StateDir;

use crate::config::{self, MachineConfig};
use crate::containerd;
use crate::events::Events;
use crate::log::{say, unix_ms};

/// The machine config written over the API; it takes precedence over the image's.
pub const STATE_CONFIG: &str = "machine.yaml";

/// The config capability: the config in force, one on trial, and the network loop that
/// applies its network section.
pub struct Settings {
    /// The network loop; it runs on its own threads for as long as the daemon lives.
    network: Netcfg,
    state: StateDir,
    events: Arc<Events>,
    inner: Mutex<ConfigState>,
}

/// The machine config in force, and one on trial (applied with a timeout, not yet confirmed).
struct ConfigState {
    current: Result<MachineConfig, String>,
    /// Counts changes since boot; a try is confirmed by its number.
    generation: u64,
    pending: Option<Pending>,
}

struct Pending {
    generation: u64,
    text: String,
    previous: Result<MachineConfig, String>,
}

/// The machine config: the one applied over the API (on STATE) if any, else the image's.
pub fn load(state_root: &Path) -> Result<MachineConfig, String> {
    let written = state_root.join(STATE_CONFIG);
    let path = if written.exists() {
        written
    } else {
        PathBuf::from(config::PATH)
    };
    match fs::read_to_string(&path) {
        Ok(text) => config::parse_here(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MachineConfig::default()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// What changes between two configs, one line per section.
pub fn changes(old: &Result<MachineConfig, String>, new: &MachineConfig) -> Vec<String> {
    let Ok(old) = old else {
        return vec!["the whole config (the one in force is unusable)".into()];
    };
    let mut changes = Vec::new();
    if old.network != new.network {
        changes.push("network".to_string());
    }
    if old.health_window != new.health_window {
        changes.push(format!(
            "health window: {} s -> {} s",
            old.health_window.as_secs(),
            new.health_window.as_secs()
        ));
    }
    if old.probes != new.probes {
        changes.push(format!(
            "health probes: {} -> {}",
            old.probes.len(),
            new.probes.len()
        ));
    }
    if old.tries != new.tries {
        changes.push(format!("update tries: {} -> {}", old.tries, new.tries));
    }
    if old.fetch_ca != new.fetch_ca {
        changes.push("update fetch CA".to_string());
    }
    if old.update_source != new.update_source || old.check_interval != new.check_interval {
        changes.push("update source (from its next check)".to_string());
    }
    if old.registries != new.registries {
        changes.push("registries".to_string());
    }
    if old.kubernetes != new.kubernetes {
        changes.push("kubernetes (used from cairnd's next start)".to_string());
    }
    if old.containers != new.containers {
        changes.push(format!(
            "containers: {} -> {} (from cairnd's next start)",
            old.containers.len(),
            new.containers.len()
        ));
    }
    if old.api_identity != new.api_identity {
        changes.push("API server certificate (used from cairnd's next start)".to_string());
    }
    changes
}

impl Settings {
    /// Takes over `network`, already running `current`'s network section.
    pub fn new(
        current: Result<MachineConfig, String>,
        network: Netcfg,
        state: StateDir,
        events: Arc<Events>,
    ) -> Settings {
        Settings {
            network,
            state,
            events,
            inner: Mutex::new(ConfigState {
                current,
                generation: 0,
                pending: None,
            }),
        }
    }

    /// The config in force (an unusable one as its error).
    pub fn current(&self) -> Result<MachineConfig, String> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    /// What the network loop reports, read when asked.
    pub fn network_view(&self) -> netcfg::StatusView {
        self.network.view()
    }

    /// The addresses on the device's links (not loopback, not IPv6 link-local), waiting up to
    /// `wait` for the first one (a DHCP lease comes a moment after the network starts).
    pub fn addresses(&self, wait: Duration) -> Vec<std::net::IpAddr> {
        let deadline = Instant::now() + wait;
        loop {
            let found: Vec<std::net::IpAddr> = self
                .network
                .status()
                .links
                .iter()
                .filter(|l| l.name != "lo")
                .flat_map(|l| l.addresses.iter())
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .filter(|a: &std::net::IpAddr| match a {
                    std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                    std::net::IpAddr::V6(v6) => {
                        !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80
                    }
                })
                .collect();
            if !found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Applies a machine config: checked, then the network changed live, then written to
    /// STATE. With `try_timeout_s`, it is not written, and reverted unless confirmed in time.
    pub fn apply(
        self: &Arc<Self>,
        text: &str,
        dry_run: bool,
        try_timeout_s: u32,
    ) -> Result<proto::ApplyConfigResponse, DeviceError> {
        let new = config::parse_here(text)
            .map_err(|e| DeviceError::invalid_argument(format!("machine config: {e}")))?;
        // Containers this image cannot run are refused here, not found failing later.
        if let Some(why) = containerd::refusal(&new.containers, &containerd::Paths::device()) {
            return Err(DeviceError::failed_precondition(format!(
                "machine config: {why}"
            )));
        }
        let mut cfg = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let changes = changes(&cfg.current, &new);
        if dry_run {
            return Ok(proto::ApplyConfigResponse {
                changes,
                generation: 0,
                revert_unix_ms: 0,
            });
        }
        if let Some(p) = &cfg.pending {
            return Err(DeviceError::failed_precondition(format!(
                "config generation {} is on trial: confirm it or wait for it to revert",
                p.generation
            )));
        }
        self.network
            .apply(new.network.clone())
            .map_err(|e| self.restore_network(&cfg.current, e))?;
        cfg.generation += 1;
        let generation = cfg.generation;
        let previous = std::mem::replace(&mut cfg.current, Ok(new));
        if try_timeout_s == 0 {
            self.persist(text)?;
            say!(
                "config generation {generation} applied: {}",
                changes.join(", ")
            );
            self.config_event(proto::config_event::Change::Applied, generation);
            return Ok(proto::ApplyConfigResponse {
                changes,
                generation,
                revert_unix_ms: 0,
            });
        }
        let timeout = Duration::from_secs(try_timeout_s.into());
        let revert_at = SystemTime::now() + timeout;
        cfg.pending = Some(Pending {
            generation,
            text: text.to_string(),
            previous,
        });
        drop(cfg);
        say!(
            "config generation {generation} on trial for {} s: {}",
            timeout.as_secs(),
            changes.join(", ")
        );
        self.config_event(proto::config_event::Change::Trying, generation);
        let me = Arc::clone(self);
        std::thread::spawn(move || {
            std::thread::sleep(timeout);
            me.revert_if_pending(generation);
        });
        Ok(proto::ApplyConfigResponse {
            changes,
            generation,
            revert_unix_ms: unix_ms(revert_at),
        })
    }

    /// Puts the network of `current` back after a refused apply and says why.
    fn restore_network(&self, current: &Result<MachineConfig, String>, e: String) -> DeviceError {
        let old = current
            .as_ref()
            .map(|c| c.network.clone())
            .unwrap_or_default();
        if let Err(again) = self.network.apply(old) {
            say!("restoring the network config: {again}");
        }
        DeviceError::invalid_argument(format!("network config not applied: {e}; nothing changed"))
    }

    fn persist(&self, text: &str) -> Result<(), DeviceError> {
        cairn_updater::state::replace(self.state.root(), STATE_CONFIG, text.as_bytes())
            .map_err(|e| DeviceError::internal(format!("writing the machine config: {e}")))
    }

    fn config_event(&self, change: proto::config_event::Change, generation: u64) {
        self.events.push(Event::Config(proto::ConfigEvent {
            change: change as i32,
            generation,
        }));
    }

    pub fn confirm(&self, generation: u64) -> Result<(), DeviceError> {
        let mut cfg = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &cfg.pending {
            Some(p) if p.generation == generation => {}
            Some(p) => {
                return Err(DeviceError::failed_precondition(format!(
                    "config generation {generation} is not on trial (generation {} is)",
                    p.generation
                )))
            }
            None => {
                return Err(DeviceError::failed_precondition(format!(
                    "config generation {generation} is not on trial: nothing to confirm (it may have reverted)"
                )))
            }
        }
        let pending = cfg.pending.take().expect("checked above");
        if let Err(e) = self.persist(&pending.text) {
            cfg.pending = Some(pending);
            return Err(e);
        }
        say!("config generation {generation} confirmed");
        self.config_event(proto::config_event::Change::Confirmed, generation);
        Ok(())
    }

    fn revert_if_pending(&self, generation: u64) {
        let mut cfg = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if cfg.pending.as_ref().map(|p| p.generation) != Some(generation) {
            return;
        }
        let pending = cfg.pending.take().expect("checked above");
        let old = pending
            .previous
            .as_ref()
            .map(|c| c.network.clone())
            .unwrap_or_default();
        if let Err(e) = self.network.apply(old) {
            say!("reverting the network config: {e}");
        }
        cfg.current = pending.previous;
        say!("config generation {generation} was not confirmed in time: reverted");
        self.config_event(proto::config_event::Change::Reverted, generation);
    }
}
