//! `cairnd`: the device daemon, started and restarted by init. This file is its wiring: which
//! capabilities start, in what order, and what each is given. The work is in the modules.
//!
//! 1. The heartbeat and the watchdog feeder ([`heartbeat`]), `lo` up.
//! 2. Storage ([`bringup`]): STATE on `/var/lib/cairn` and DATA on `/var`, encrypted on the
//!    first boot with a TPM, unlocked by it later, or by the recovery key in maintenance mode
//!    ([`maintenance`]).
//! 3. The machine config and the network ([`settings`], netcfg).
//! 4. Host containers ([`containers`]) when DATA allows workloads, k3s when the config runs it
//!    ([`crate::kubernetes`]), health ([`health`], gated by both) and updates ([`update`]), then
//!    the management API ([`remote`]) over all of them.
//! 5. A trial boot runs the health window and commits or rolls back; a normal boot reports the
//!    last update. Then the machine config's `update.source` ([`source`]), its hawkBit server
//!    ([`hawkbit`]) and bundles from USB sticks ([`sticks`]).
//!
//! Every line it prints starts with `cairnd: `; tests and operators read them on the console.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use cairn_api::proto::{self, events_response::Event};
use cairn_netcfg::agent::{self as netcfg, Netcfg};
use cairn_updater::state::StateDir;

use crate::bringup::{self, StorageStatus, STATE_MOUNT};
use crate::events::{proto_slot, Events};
use crate::health::Health;
use crate::heartbeat::{self, Heartbeat};
use crate::kubernetes::Kubernetes;
use crate::log::say;
use crate::settings::{self, Settings};
use crate::system::{self, Boot};
use crate::update::Updates;
use crate::{bench, containers, hawkbit, maintenance, netif, remote, source, sticks};

/// The role's entry point. Returns only on a fatal error (init restarts it).
pub fn run() -> ExitCode {
    match start().and_then(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything that runs, once started.
struct Daemon {
    boot: Boot,
    heart: Heartbeat,
    events: Arc<Events>,
    storage: StorageStatus,
    health: Arc<Health>,
    updates: Arc<Updates>,
    settings: Arc<Settings>,
    /// Kept for as long as the daemon lives.
    _api: Option<cairn_api::Server>,
}

fn start() -> Result<Daemon, String> {
    let heart = Heartbeat::new();
    heartbeat::start_feeder(heart.clone());
    let boot = Boot::read()?;
    if let Err(e) = netif::set_up("lo") {
        say!("bringing up lo: {e}");
    }
    let beat = || heart.beat();
    let release = boot.release.clone();
    let (storage, early_network) = bringup::bring_up(&beat, &|parts, tpm, why| {
        maintenance::run(parts, tpm, why, &release, &beat)
    })?;
    let events = Arc::new(Events::open(Path::new(STATE_MOUNT)));
    events.push(Event::Storage(storage_event(&storage)));
    let config = settings::load(Path::new(STATE_MOUNT));
    if let Err(e) = &config {
        say!("machine config unusable: {e}");
    }
    // An unusable config still gets the default network (DHCP on every wire), so the box
    // stays reachable for a fix.
    let network_config = config
        .as_ref()
        .map(|c| c.network.clone())
        .unwrap_or_default();
    let network = match early_network {
        Some(network) => {
            if let Err(e) = network.apply(network_config) {
                say!("network config: {e}");
            }
            network
        }
        None => Netcfg::start(
            network_config,
            netcfg::Options::device(),
            Arc::new(|line: &str| say!("{line}")),
        )
        .map_err(|e| format!("starting the network: {e}"))?,
    };
    let kubernetes = start_kubernetes(&config, &boot, &storage);
    let state = StateDir::new(STATE_MOUNT);
    let settings = Arc::new(Settings::new(
        config,
        network,
        state.clone(),
        events.clone(),
    ));
    // Host containers need DATA (their images and state live there).
    let containers = if storage.allows_workloads() {
        let config = settings.current().map(|c| c.containers).unwrap_or_default();
        containers::start_device(&config)
    } else {
        None
    };
    if storage.allows_workloads() && bench::requested() {
        bench::spawn(containers.as_ref().and_then(|c| c.containerd().cloned()));
    }
    let mut health =
        Health::new(settings.clone(), storage.clone()).with_secure_boot(crate::secureboot::read());
    if let Some(c) = &containers {
        health = health.with_gate(c.clone());
    }
    if let Some(k) = &kubernetes {
        health = health.with_gate(k.clone());
    }
    let health = Arc::new(health);
    let updates = Arc::new(Updates::new(
        boot.clone(),
        state.clone(),
        heart.clone(),
        events.clone(),
        settings.clone(),
    ));
    let api = remote::start(remote::Api {
        boot: boot.clone(),
        state,
        events: events.clone(),
        settings: settings.clone(),
        health: health.clone(),
        updates: updates.clone(),
        kubernetes,
        containers,
    });
    Ok(Daemon {
        boot,
        heart,
        events,
        storage,
        health,
        updates,
        settings,
        _api: api,
    })
}

/// k3s, when the machine config runs it and the storage allows workloads. It starts before the
/// trial is judged: its health is part of the verdict.
fn start_kubernetes(
    config: &Result<crate::config::MachineConfig, String>,
    boot: &Boot,
    storage: &StorageStatus,
) -> Option<Arc<Kubernetes>> {
    let config = config.as_ref().ok()?;
    let section = config.kubernetes.clone()?;
    if !storage.allows_workloads() {
        say!("k3s not started: no workloads in maintenance mode");
        return None;
    }
    let trial = match system::bootloader(boot).status() {
        Ok(s) => s.trial,
        Err(e) => {
            say!("k3s: reading the boot state: {e}; taking this boot as no trial");
            false
        }
    };
    Some(Kubernetes::start(
        section,
        config.network.hostname.as_deref(),
        Path::new(STATE_MOUNT),
        &boot.running.to_string(),
        trial,
    ))
}

fn serve(d: Daemon) -> Result<(), String> {
    let bootloader = d.boot.release.bootloader.as_str();
    if bootloader != "systemd-boot" && bootloader != system::TRYBOOT {
        say!("updates are not supported with {bootloader} yet; only feeding the watchdog");
        d.heart.idle();
    }
    let status = match system::bootloader(&d.boot).status() {
        Ok(status) => status,
        Err(e) => {
            // Nothing about the slots can be judged or changed without the boot entries, but
            // exiting would only have init start cairnd again on the same files and, between
            // starts, the watchdog reset the box: a reset loop on a committed slot. Instead the
            // box stays up and reachable, the API names the problem, and a trial is left to the
            // bootloader's counter at the next reset.
            say!("boot entries unreadable: {e}; updates are off until they are mended");
            d.heart.idle();
        }
    };
    d.events.push(Event::Boot(proto::BootEvent {
        slot: proto_slot(d.boot.running) as i32,
        os_version: d.boot.release.version.clone(),
        trial: status.trial,
    }));
    d.updates.record_running_slot();
    // A damaged record must not stop the daemon (and with it the watchdog feeding).
    let record = d.updates.last_record();
    if status.trial {
        d.updates.judge_trial(&d.health, record)?;
    } else {
        d.updates.after_normal_boot(record)?;
    }
    if bootloader == system::TRYBOOT {
        // Trials are judged and committed above; writing a bundle into BOOT-B/ROOT-B is not
        // implemented for the Raspberry Pi yet.
        say!("bundle installs are not supported with {bootloader} yet; only feeding the watchdog");
        d.heart.idle();
    }
    if !d.storage.allows_workloads() {
        // Maintenance: reachable over the network and the API (which can install a fixed
        // release), nothing else.
        say!("maintenance mode: network and API only");
        d.heart.idle();
    }
    match cairn_bundle::Version::parse(&d.boot.release.version) {
        Ok(running) => source::follow(d.updates.clone(), d.settings.clone(), running),
        Err(e) => say!("update source not followed: the running version: {e}"),
    }
    // After the trial's verdict: only a committed slot may report a deployment's success.
    hawkbit::follow(
        hawkbit::Cairnd {
            updates: d.updates.clone(),
            health: d.health.clone(),
            boot: d.boot.clone(),
        },
        d.settings.clone(),
    );
    sticks::watch(&d.updates, &d.heart)
}

fn storage_event(status: &StorageStatus) -> proto::StorageEvent {
    use proto::storage_event::State;
    let state = match status {
        StorageStatus::Encrypted => State::Encrypted,
        StorageStatus::Plain(_) => State::Plain,
        StorageStatus::Failed(_) => State::Failed,
        StorageStatus::Refused(_) => State::Refused,
    };
    proto::StorageEvent {
        state: state as i32,
        detail: status.summary(),
    }
}
