//! `cairnd`: the device daemon, started and restarted by init.
//!
//! What it does, in order:
//!
//! 1. Brings up `lo`, starts feeding the watchdog init armed (see [`Feeder`]), mounts STATE on
//!    `/var/lib/cairn`, and reads the slot state from the ESP init mounted on `/boot`.
//! 2. Reports what became of the last update (committed, rolled back with its reason, or
//!    abandoned: the trial never reported because it crashed or hung).
//! 3. On a trial boot, runs the health window ([`cairn_updater::health`]): every supervised
//!    service running, `lo` up, and the machine config's probes. Healthy: mark the slot good and
//!    raise the security floor. Not healthy by the deadline: mark it bad, record why, reboot into
//!    the other slot.
//! 4. Waits for block devices (kernel uevents). A new one is mounted read-only in a private
//!    place; the newest `*.cairn` at its root is installed into the other slot and the machine
//!    reboots into the trial.
//!
//! Every line it prints starts with `cairnd: `; tests and operators read them on the console.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use cairn_api::proto::{self, events_response::Event};
use cairn_api::DeviceError;

use cairn_boot::fs::DirFs;
use cairn_boot::sdboot::SdBoot;
use cairn_boot::{Bootloader, Slot};
use cairn_bundle::{DeviceFacts, Keyring, Version};
use cairn_updater::health::{self, Check, Clock, Verdict};
use cairn_updater::install::{Installer, Layout, Phase, Progress};
use cairn_updater::state::{Outcome, StateDir, TrialRecord};

use crate::block;
use crate::config::{self, MachineConfig};
use crate::journal::Ring;
use crate::{maintenance, netif, remote, storage, uevent, watchdog};
use cairn_netcfg::agent::{self as netcfg, Netcfg};

const RELEASE: &str = "/etc/cairn/release";
const KEYRING: &str = "/etc/cairn/keyring";
pub const ESP: &str = "/boot";
pub const STATE_MOUNT: &str = "/var/lib/cairn";
const STICK_MOUNT: &str = "/run/cairn/stick";
const SERVICES_STATUS: &str = "/run/cairn/services";
const WATCHDOG: &str = "/dev/watchdog";
/// The timeout cairnd keeps (init arms it with the same one).
const WATCHDOG_TIMEOUT_S: u32 = 30;
/// How long the main loop may go without a heartbeat before the feeder stops feeding.
const HUNG_AFTER: Duration = Duration::from_secs(60);
/// Most `*.cairn` files looked at on one stick.
const MAX_BUNDLES: usize = 64;

/// Lines kept for the API's Logs call.
const LOG_LINES: usize = 2000;
/// Events kept for the API's Events call.
const EVENTS: usize = 256;
/// The machine config written over the API; it takes precedence over the image's.
pub const STATE_CONFIG: &str = "machine.yaml";

static LOG: OnceLock<Ring<(i64, String)>> = OnceLock::new();

/// cairnd's log: what it printed, newest last.
pub fn log_ring() -> &'static Ring<(i64, String)> {
    LOG.get_or_init(|| Ring::new(LOG_LINES))
}

/// Set once DATA is mounted: log lines are appended to [`LOG_PATH`] too. The file is opened
/// per line, so nothing holds DATA busy when it must be unmounted.
static LOG_TO_DATA: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Where cairnd's log is kept across boots when DATA is encrypted.
const LOG_PATH: &str = "/var/log/cairnd.log";
/// The log file is started over (the old one kept as `.1`) past this size.
const LOG_FILE_MAX: u64 = 1 << 20;

/// Prints a line on the console (`cairnd: …`) and keeps it for the API, and in
/// [`LOG_PATH`] when DATA is encrypted.
pub fn log(args: std::fmt::Arguments) {
    let line = args.to_string();
    eprintln!("cairnd: {line}");
    let now = remote::unix_ms(SystemTime::now());
    if LOG_TO_DATA.load(Ordering::Relaxed) {
        use std::io::Write as _;
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(LOG_PATH) {
            let _ = writeln!(f, "{now} {line}");
        }
    }
    log_ring().push((now, line));
}

/// Starts keeping the log in [`LOG_PATH`] (on the encrypted DATA), after putting the previous
/// boots' last lines into the ring, so `cairnctl logs cairnd` shows them too.
fn keep_log_on_data() {
    let path = Path::new(LOG_PATH);
    let _ = fs::create_dir_all("/var/log");
    if fs::metadata(path).is_ok_and(|m| m.len() > LOG_FILE_MAX) {
        let _ = fs::rename(path, format!("{LOG_PATH}.1"));
    }
    let earlier = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = earlier.lines().collect();
    let ring = log_ring();
    let mut kept = Vec::new();
    for l in &lines[lines.len().saturating_sub(LOG_LINES / 2)..] {
        if let Some((ms, text)) = l.split_once(' ') {
            if let Ok(ms) = ms.parse::<i64>() {
                kept.push((ms, text.to_string()));
            }
        }
    }
    // The lines of this boot so far come after the earlier boots' lines.
    ring.prepend(kept);
    match fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(_) => LOG_TO_DATA.store(true, Ordering::Relaxed),
        Err(e) => log(format_args!("keeping the log in {LOG_PATH}: {e}")),
    }
}

fn say(args: std::fmt::Arguments) {
    log(args)
}

macro_rules! say {
    ($($t:tt)*) => { say(format_args!($($t)*)) };
}

/// Where DATA is mounted when it is encrypted.
const DATA_MOUNT: &str = "/var";
/// The recovery key, on the encrypted STATE, until `cairnctl recovery-key` fetches it.
pub const RECOVERY_KEY_FILE: &str = "recovery-key";

/// On DATA during the first boot's encryption: a copy of the seed and the recovery key, kept
/// until STATE holds them, so a power cut after STATE was wiped loses nothing.
const PROVISIONING: &str = "/var/.cairn-provisioning";

/// Mounts STATE on [`STATE_MOUNT`] (and DATA on [`DATA_MOUNT`] when encrypted): on the first
/// boot with a TPM it encrypts both, on later boots it unlocks them with the TPM (finishing an
/// interrupted first boot if DATA says so), and when the TPM refuses it runs maintenance mode
/// until the recovery key arrives. Returns the network when maintenance mode started it.
fn bring_up_storage(heart: &Heartbeat, release: &Release) -> Result<Option<Netcfg>, String> {
    let state_mount = Path::new(STATE_MOUNT);
    if block::is_mount_point(state_mount) {
        if !Path::new(PROVISIONING).exists() {
            // cairnd restarted: init keeps the mounts; the log goes on where it was kept.
            if block::is_mount_point(Path::new(DATA_MOUNT)) {
                keep_log_on_data();
            }
            return Ok(None);
        }
        // A cairnd that stopped while it encrypted STATE: start over from DATA's copy.
        block::unmount(state_mount).map_err(|e| format!("unmounting STATE to start over: {e}"))?;
    }
    let beat = || heart.beat();
    // A cairnd that stopped between mounting DATA and STATE: start over.
    if block::is_mount_point(Path::new(DATA_MOUNT)) {
        LOG_TO_DATA.store(false, Ordering::Relaxed);
        block::unmount(Path::new(DATA_MOUNT))
            .map_err(|e| format!("unmounting DATA to start over: {e}"))?;
    }
    storage::close(storage::Volume::State);
    storage::close(storage::Volume::Data);
    let state_dev = block::find_partition("STATE")?;
    if !storage::is_luks(&state_dev)? {
        match block::mount_rw_once(&state_dev, state_mount, "vfat") {
            Ok(()) => return first_boot(&state_dev, &beat).map(|()| None),
            Err(e) => {
                // Neither LUKS nor FAT: STATE was wiped by a first boot that was cut short, and
                // DATA holds the seed, unless DATA is not encrypted either.
                let data_dev = block::find_partition("DATA")?;
                if !storage::is_luks(&data_dev)? {
                    return Err(format!(
                        "{e}; STATE holds neither the image's seed nor an encrypted volume: \
                         flash the image again"
                    ));
                }
            }
        }
    }
    let parts = storage::Partitions {
        state: state_dev,
        data: block::find_partition("DATA")?,
    };
    let mut tpm = match open_tpm() {
        Some(Ok(tpm)) => Some(tpm),
        Some(Err(e)) => {
            say!("{e}");
            None
        }
        None => None,
    };
    let mut cache = storage::SecretCache::default();
    let mut times = storage::UnlockTimes::default();
    let unlocked = storage::unlock_volume(
        &parts.data,
        storage::Volume::Data,
        tpm.as_mut(),
        &mut cache,
        &mut times,
    )
    .and_then(|(data, seal)| {
        mount_data(&data).map_err(storage::TpmUnlockError::Failed)?;
        if Path::new(PROVISIONING).exists() {
            return Ok(Some(seal));
        }
        let unlocked = storage::unlock_volume(
            &parts.state,
            storage::Volume::State,
            tpm.as_mut(),
            &mut cache,
            &mut times,
        )
        .and_then(|(state, _)| mount_state(&state).map_err(storage::TpmUnlockError::Failed));
        if unlocked.is_err() {
            LOG_TO_DATA.store(false, Ordering::Relaxed);
            let _ = block::unmount(Path::new(DATA_MOUNT));
            storage::close(storage::Volume::Data);
        }
        unlocked.map(|()| None)
    });
    drop(cache);
    match unlocked {
        Ok(Some(seal)) => {
            say!("finishing the encryption of STATE that an earlier boot began");
            let started = Instant::now();
            let seed = storage::read_tree(&Path::new(PROVISIONING).join("seed"))?;
            let recovery = zeroize::Zeroizing::new(
                fs::read_to_string(Path::new(PROVISIONING).join(RECOVERY_KEY_FILE))
                    .map_err(|e| format!("reading the recovery key kept on DATA: {e}"))?,
            );
            finish_state(&parts.state, &seal, &recovery, &seed, started, &beat)?;
            Ok(None)
        }
        Ok(None) => {
            say!(
                "unlocked STATE and DATA with the TPM in {} ms (unseal {} ms, keyslots {} ms)",
                times.total.as_millis(),
                times.unseal.as_millis(),
                times.keyslots.as_millis()
            );
            remember_client_ca();
            Ok(None)
        }
        Err(storage::TpmUnlockError::Refused(why) | storage::TpmUnlockError::Failed(why)) => {
            let (opened, network) = maintenance::run(parts, tpm, &why, release, &beat)?;
            mount_data(&opened.data)?;
            mount_state(&opened.state)?;
            remember_client_ca();
            Ok(Some(network))
        }
    }
}

/// The TPM, if there is one; the kernel's random pool is seeded from it while still empty.
fn open_tpm() -> Option<Result<cairn_tpm::Tpm, String>> {
    let mut tpm = storage::open_tpm(Duration::from_secs(2));
    if let Some(Ok(t)) = tpm.as_mut() {
        match storage::seed_kernel_random(t) {
            Ok(true) => {
                say!("the kernel's random pool was not initialised: seeded it from the TPM")
            }
            Ok(false) => {}
            Err(e) => say!("could not seed the kernel's random pool from the TPM: {e}"),
        }
    }
    tpm
}

/// The first boot: STATE holds the image's seed and is mounted on [`STATE_MOUNT`]. Encrypts
/// STATE and DATA when the seed's config wants it and there is a TPM; otherwise leaves STATE as
/// it is. DATA is done first and keeps a copy of the seed until STATE holds it again.
fn first_boot(state_dev: &Path, beat: &dyn Fn()) -> Result<(), String> {
    let state_mount = Path::new(STATE_MOUNT);
    let wanted = load_config(state_mount)
        .map(|c| c.storage)
        .unwrap_or_default();
    let plain = |why: String| {
        say!("STATE and DATA are not encrypted: {why}");
        Ok(())
    };
    if !wanted.encrypt {
        return plain("the machine config says storage.encrypt: false".into());
    }
    let data_dev = match block::find_partition("DATA") {
        Ok(d) => d,
        Err(e) => return plain(e),
    };
    let mut tpm = match open_tpm() {
        None => return plain(format!("this box has no TPM ({})", storage::TPM_DEVICE)),
        Some(Err(e)) => return plain(e),
        Some(Ok(tpm)) => tpm,
    };
    let pcrs = cairn_tpm::PcrSelection::sha256(&wanted.pcrs).map_err(|e| e.to_string())?;
    // The client CA's public certificate, for maintenance mode, while it is at hand: without
    // it a box whose TPM refuses could not be unlocked remotely.
    if let Err(e) = maintenance::remember_client_ca(Path::new(remote::SECRETS_DIR)) {
        return plain(e);
    }
    let list: Vec<String> = wanted.pcrs.iter().map(|p| p.to_string()).collect();
    say!(
        "first boot: encrypting STATE and DATA (LUKS2), the key sealed in the TPM to PCR {}",
        list.join(", ")
    );
    let started = Instant::now();
    let seed = storage::read_tree(state_mount)?;
    let recovery = storage::new_recovery_key();
    block::unmount(state_mount).map_err(|e| format!("unmounting the seed STATE: {e}"))?;
    // Until STATE is wiped, a failure leaves the seed where it was and STATE unencrypted.
    let data_ready = storage::new_seal(&mut tpm, &pcrs).and_then(|seal| {
        let data =
            storage::create_volume(&data_dev, storage::Volume::Data, &seal, &recovery, beat)?;
        mount_data(&data)?;
        let copy = Path::new(PROVISIONING);
        storage::write_tree(&copy.join("seed"), &seed)?;
        fs::write(copy.join(RECOVERY_KEY_FILE), recovery.as_bytes())
            .map_err(|e| format!("keeping the recovery key on DATA: {e}"))?;
        block::sync_fs(copy).map_err(|e| format!("syncing DATA: {e}"))?;
        Ok(seal)
    });
    let seal = match data_ready {
        Ok(seal) => seal,
        Err(e) => {
            LOG_TO_DATA.store(false, Ordering::Relaxed);
            let _ = block::unmount(Path::new(DATA_MOUNT));
            storage::close(storage::Volume::Data);
            block::mount_rw_once(state_dev, state_mount, "vfat")?;
            return plain(format!("encrypting DATA failed: {e}"));
        }
    };
    say!("DATA is encrypted and holds a copy of the seed; now STATE");
    finish_state(state_dev, &seal, &recovery, &seed, started, beat)
}

/// Makes STATE an encrypted volume holding `seed` and the recovery key, then drops DATA's copy
/// of them and shows the key. DATA is mounted. A failure leaves DATA's copy for the next try.
fn finish_state(
    state_dev: &Path,
    seal: &storage::Seal,
    recovery: &str,
    seed: &storage::Tree,
    started: Instant,
    beat: &dyn Fn(),
) -> Result<(), String> {
    let state_mount = Path::new(STATE_MOUNT);
    let done = storage::wipe_partition(state_dev, beat)
        .and_then(|()| {
            say!("STATE wiped; encrypting it");
            storage::create_volume(state_dev, storage::Volume::State, seal, recovery, beat)
        })
        .and_then(|state| {
            mount_state(&state)?;
            storage::write_tree(state_mount, seed)?;
            fs::write(state_mount.join(RECOVERY_KEY_FILE), recovery.as_bytes())
                .map_err(|e| format!("keeping the recovery key on STATE: {e}"))?;
            block::sync_fs(state_mount).map_err(|e| format!("syncing STATE: {e}"))
        });
    if let Err(e) = done {
        let _ = block::unmount(state_mount);
        storage::close(storage::Volume::State);
        LOG_TO_DATA.store(false, Ordering::Relaxed);
        let _ = block::unmount(Path::new(DATA_MOUNT));
        storage::close(storage::Volume::Data);
        return Err(format!(
            "encrypting STATE failed: {e}; DATA keeps the seed for the next try"
        ));
    }
    let copy = Path::new(PROVISIONING);
    let _ = storage::shred(&copy.join(RECOVERY_KEY_FILE));
    if let Err(e) = fs::remove_dir_all(copy).and_then(|()| block::sync_fs(Path::new(DATA_MOUNT))) {
        say!("removing the seed's copy from DATA: {e}");
    }
    remember_client_ca();
    // The console only: the log ring is served over the API.
    eprintln!("cairnd: recovery key (shown once; keep it safe): {recovery}");
    say!(
        "encrypted STATE and DATA in {:.1} s; the recovery key is on the console and \
         `cairnctl recovery-key` fetches it once",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Keeps the ESP's copy of the client CA current (it may change with a new config).
fn remember_client_ca() {
    if let Err(e) = maintenance::remember_client_ca(Path::new(remote::SECRETS_DIR)) {
        say!("{e}");
    }
}

/// DATA on /var, and the log kept there from now on.
fn mount_data(data: &Path) -> Result<(), String> {
    block::mount_rw_once(data, Path::new(DATA_MOUNT), "vfat")?;
    keep_log_on_data();
    Ok(())
}

/// STATE on /var/lib/cairn, inside DATA.
fn mount_state(state: &Path) -> Result<(), String> {
    fs::create_dir_all(STATE_MOUNT).map_err(|e| format!("creating {STATE_MOUNT} on DATA: {e}"))?;
    block::mount_rw_once(state, Path::new(STATE_MOUNT), "vfat")
}

/// The role's entry point. Returns only on a fatal error (init restarts it).
pub fn run() -> ExitCode {
    match Daemon::start().and_then(|mut d| d.serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `/etc/cairn/release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    pub board: String,
    pub bootloader: String,
    pub security_version: u32,
}

impl Release {
    pub fn parse(text: &str) -> Result<Release, String> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().to_string())
        };
        let need = |key: &str| get(key).ok_or_else(|| format!("{RELEASE} has no {key}= line"));
        Ok(Release {
            version: need("VERSION")?,
            board: need("BOARD")?,
            bootloader: need("BOOTLOADER")?,
            security_version: match get("SECURITY_VERSION") {
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{RELEASE}: SECURITY_VERSION={v} is not a number"))?,
                None => 0,
            },
        })
    }
}

/// The slot on the kernel command line.
pub fn cmdline_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.slot="))
        .and_then(|s| match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        })
}

/// Keeps feeding the watchdog while the main loop's heartbeat is fresh: a hung daemon (or a
/// hung system) stops the feeding and the watchdog resets the machine.
#[derive(Clone)]
struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    fn new() -> Heartbeat {
        Heartbeat {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Starts the feeding thread if the device has a watchdog.
fn start_feeder(heart: Heartbeat) {
    if !Path::new(WATCHDOG).exists() {
        say!("no watchdog device; a hung system will not reset itself");
        return;
    }
    let dog = match watchdog::Watchdog::open(Path::new(WATCHDOG), Some(WATCHDOG_TIMEOUT_S)) {
        Ok(d) => d,
        Err(e) => {
            say!("cannot open {WATCHDOG}: {e}");
            return;
        }
    };
    let timeout = dog.timeout();
    say!(
        "feeding the watchdog ({}, timeout {} s)",
        dog.identity(),
        timeout.as_secs()
    );
    let every = (timeout / 4).max(Duration::from_secs(1));
    std::thread::spawn(move || loop {
        if heart.age() < HUNG_AFTER {
            if let Err(e) = dog.keepalive() {
                say!("feeding the watchdog: {e}");
            }
        } else {
            say!(
                "main loop silent for {} s: no longer feeding the watchdog",
                heart.age().as_secs()
            );
        }
        std::thread::sleep(every);
    });
}

/// What cairnd knows and the API reads: one per daemon, shared by the main loop, the health
/// window and the API's threads.
pub struct Shared {
    pub release: Release,
    pub running: Slot,
    pub state: StateDir,
    pub booted: SystemTime,
    heart: Heartbeat,
    /// The network loop; it runs on its own threads for as long as the daemon lives.
    network: Netcfg,
    config: Mutex<ConfigState>,
    /// Held while a bundle is installed or a rollback is made, by whichever asked first (a
    /// stick or the API).
    install_lock: Mutex<()>,
    /// Set (under `install_lock`) once a rollback has marked the running slot bad: the reboot
    /// is coming, and nothing may mark the slot good or install in the meantime.
    rolled_back: std::sync::atomic::AtomicBool,
    pub events: Ring<(i64, Event)>,
    /// Set while the running slot is on trial: when the health window ends.
    trial_deadline: Mutex<Option<SystemTime>>,
    /// Per health check: passing, and for how many checks in a row.
    streaks: Mutex<Vec<(String, bool, u32)>>,
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

/// The ESP, remounted read-write only while the bootloader state is changed.
fn with_esp_rw<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    block::remount(Path::new(ESP), false)
        .map_err(|e| format!("remounting {ESP} read-write: {e}"))?;
    let out = f();
    if let Err(e) = block::remount(Path::new(ESP), true) {
        say!("remounting {ESP} read-only: {e}");
    }
    out
}

pub(crate) fn bootloader(running: Slot) -> SdBoot<DirFs> {
    SdBoot::new(DirFs::new(ESP), Some(running))
}

/// When the machine booted: now minus `/proc/uptime`.
pub fn boot_time() -> SystemTime {
    let up = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    SystemTime::now() - Duration::from_secs_f64(up)
}

/// init's status file: each service and its pid when running.
pub fn services() -> Result<Vec<(String, Option<u32>)>, String> {
    let text = fs::read_to_string(SERVICES_STATUS)
        .map_err(|e| format!("reading {SERVICES_STATUS}: {e}"))?;
    Ok(parse_services(&text))
}

pub fn parse_services(text: &str) -> Vec<(String, Option<u32>)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            let pid = match (w.next(), w.next()) {
                (Some("running"), Some(pid)) => pid.parse().ok(),
                _ => None,
            };
            Some((name, pid))
        })
        .collect()
}

/// The machine config: the one applied over the API (on STATE) if any, else the image's.
fn load_config(state_root: &Path) -> Result<MachineConfig, String> {
    let written = state_root.join(STATE_CONFIG);
    let path = if written.exists() {
        written
    } else {
        PathBuf::from(config::PATH)
    };
    match fs::read_to_string(&path) {
        Ok(text) => MachineConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MachineConfig::default()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// What changes between two configs, one line per section.
pub fn config_changes(old: &Result<MachineConfig, String>, new: &MachineConfig) -> Vec<String> {
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
    if old.api_identity != new.api_identity {
        changes.push("API server certificate (used from cairnd's next start)".to_string());
    }
    changes
}

impl Shared {
    pub fn state_root(&self) -> PathBuf {
        self.state.root().to_path_buf()
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

    pub(crate) fn config(&self) -> Result<MachineConfig, String> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    fn event(&self, event: Event) {
        self.events
            .push((remote::unix_ms(SystemTime::now()), event));
    }

    /// The checks a trial must pass; the API's Health runs the same ones.
    fn checks(&self) -> Vec<Box<dyn Check>> {
        let mut checks: Vec<Box<dyn Check>> = vec![
            Box::new(ServicesCheck),
            Box::new(LoopbackCheck),
            Box::new(NetworkConfigCheck(self.network.view())),
        ];
        match self.config() {
            Ok(c) => checks.extend(
                c.probes
                    .into_iter()
                    .map(|p| Box::new(ProbeCheck(p)) as Box<dyn Check>),
            ),
            Err(e) => checks.push(Box::new(Failed(e))),
        }
        checks
    }

    /// Runs every check now.
    pub fn health_now(&self) -> proto::HealthResponse {
        let now = remote::unix_ms(SystemTime::now());
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
            trial_deadline_unix_ms: deadline.map_or(0, remote::unix_ms),
        }
    }

    /// Verifies and installs a bundle into the other slot and arms its trial. `what` names the
    /// source in messages. Refused while another install or a rollback runs.
    pub fn install(
        &self,
        what: &str,
        reader: impl Read,
        len: Option<u64>,
        report: &mut dyn FnMut(&Progress),
    ) -> Result<cairn_updater::install::Installed, DeviceError> {
        let Ok(_busy) = self.install_lock.try_lock() else {
            return Err(DeviceError::failed_precondition(
                "another update or a rollback is in progress: try again when it is done",
            ));
        };
        if self.rolled_back.load(Ordering::SeqCst) {
            return Err(DeviceError::failed_precondition(
                "the device is rolling back and about to reboot",
            ));
        }
        let installed_version = Version::parse(&self.release.version).map_err(|e| {
            DeviceError::internal(format!("{RELEASE}: VERSION {}: {e}", self.release.version))
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
            .config()
            .map_or(cairn_updater::install::DEFAULT_TRIES, |c| c.tries);
        let installer = Installer {
            keyring: &keyring,
            device: DeviceFacts {
                board: self.release.board.clone(),
                arch: std::env::consts::ARCH.to_string(),
                installed_version,
                security_floor: 0,
            },
            running: self.running,
            layout,
            state: self.state.clone(),
            tries,
        };
        self.event(Event::Update(proto::UpdateEvent {
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
                    let message = format!("{what} refused: {e}");
                    failure = Some(install_error(&e, message.clone()));
                    message
                })
        });
        match result {
            Ok(installed) => {
                self.event(Event::Update(proto::UpdateEvent {
                    stage: proto::update_event::Stage::Installed as i32,
                    os_version: installed.version.clone(),
                    detail: format!("slot {}", installed.slot),
                }));
                Ok(installed)
            }
            Err(message) => {
                self.event(Event::Update(proto::UpdateEvent {
                    stage: proto::update_event::Stage::Failed as i32,
                    os_version: String::new(),
                    detail: message.clone(),
                }));
                Err(failure.unwrap_or_else(|| DeviceError::internal(message)))
            }
        }
    }

    /// Starts downloading a bundle, trusting the machine config's `update.fetch_ca`.
    pub fn fetch(&self, url: &str) -> Result<cairn_api::fetch::Fetch, DeviceError> {
        let Some(pem) = self.config().ok().and_then(|c| c.fetch_ca) else {
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

    /// Marks the running slot bad and reboots into the other one (shortly, so that the answer
    /// reaches the client).
    pub fn rollback(&self) -> Result<Slot, DeviceError> {
        let Ok(_busy) = self.install_lock.try_lock() else {
            return Err(DeviceError::failed_precondition(
                "an update is being installed: try again when it is done",
            ));
        };
        if self.rolled_back.load(Ordering::SeqCst) {
            return Err(DeviceError::failed_precondition(
                "already rolled back: the device is about to reboot",
            ));
        }
        let (running, target) = (self.running, self.running.other());
        with_esp_rw(|| {
            bootloader(running)
                .mark_bad(running)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| DeviceError::failed_precondition(format!("cannot roll back: {e}")))?;
        self.rolled_back.store(true, Ordering::SeqCst);
        let reason = "rolled back over the API";
        let record = TrialRecord {
            slot: running.to_string(),
            version: self.release.version.clone(),
            security_version: self.release.security_version,
            outcome: Outcome::RolledBack,
            reason: Some(reason.into()),
        };
        if let Err(e) = self.state.set_trial(&record) {
            say!("recording the rollback: {e}");
        }
        self.event(Event::Rollback(proto::RollbackEvent {
            from_slot: remote::proto_slot(running) as i32,
            to_slot: remote::proto_slot(target) as i32,
            reason: reason.into(),
        }));
        say!("slot {running} marked bad over the API; rebooting into slot {target}");
        self.reboot_soon();
        Ok(target)
    }

    /// Reboots after a second, on a thread of its own.
    pub fn reboot_soon(&self) {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(1));
            reboot();
        });
    }

    /// Powers off after a second.
    pub fn power_off_soon(&self) {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(1));
            // SAFETY: kill(2) with a pid and a signal number has no memory effects.
            unsafe {
                libc::kill(1, libc::SIGUSR2);
            }
        });
    }

    /// Exits after a second; init starts cairnd again.
    pub fn restart_self(&self) {
        say!("restarting over the API");
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(1));
            std::process::exit(0);
        });
    }

    /// Applies a machine config: checked, then the network changed live, then written to
    /// STATE. With `try_timeout_s`, it is not written, and reverted unless confirmed in time.
    pub fn apply_config(
        self: &Arc<Self>,
        text: &str,
        dry_run: bool,
        try_timeout_s: u32,
    ) -> Result<proto::ApplyConfigResponse, DeviceError> {
        let new = MachineConfig::parse(text)
            .map_err(|e| DeviceError::invalid_argument(format!("machine config: {e}")))?;
        let mut cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let changes = config_changes(&cfg.current, &new);
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
            revert_unix_ms: remote::unix_ms(revert_at),
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
        self.event(Event::Config(proto::ConfigEvent {
            change: change as i32,
            generation,
        }));
    }

    pub fn confirm_config(&self, generation: u64) -> Result<(), DeviceError> {
        let mut cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
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

struct Daemon {
    shared: Arc<Shared>,
    /// Kept for as long as the daemon lives.
    _api: Option<cairn_api::Server>,
}

impl std::ops::Deref for Daemon {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Daemon {
    fn start() -> Result<Daemon, String> {
        let heart = Heartbeat::new();
        heart.beat();
        start_feeder(heart.clone());
        let release = Release::parse(
            &fs::read_to_string(RELEASE).map_err(|e| format!("reading {RELEASE}: {e}"))?,
        )?;
        let cmdline = fs::read_to_string("/proc/cmdline")
            .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
        let running = cmdline_slot(&cmdline).ok_or("no cairn.slot= on the kernel command line")?;
        if let Err(e) = netif::set_up("lo") {
            say!("bringing up lo: {e}");
        }
        let early_network = bring_up_storage(&heart, &release)?;
        let config = load_config(Path::new(STATE_MOUNT));
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
        let shared = Arc::new(Shared {
            release,
            running,
            state: StateDir::new(STATE_MOUNT),
            booted: boot_time(),
            heart,
            network,
            config: Mutex::new(ConfigState {
                current: config,
                generation: 0,
                pending: None,
            }),
            install_lock: Mutex::new(()),
            rolled_back: std::sync::atomic::AtomicBool::new(false),
            events: Ring::new(EVENTS),
            trial_deadline: Mutex::new(None),
            streaks: Mutex::new(Vec::new()),
        });
        let api = remote::start(shared.clone());
        Ok(Daemon { shared, _api: api })
    }

    fn serve(&mut self) -> Result<(), String> {
        if self.release.bootloader != "systemd-boot" {
            say!(
                "updates are not supported with {} yet; only feeding the watchdog",
                self.release.bootloader
            );
            loop {
                self.heart.beat();
                std::thread::sleep(Duration::from_secs(5));
            }
        }
        let status = bootloader(self.running)
            .status()
            .map_err(|e| e.to_string())?;
        self.event(Event::Boot(proto::BootEvent {
            slot: remote::proto_slot(self.running) as i32,
            os_version: self.release.version.clone(),
            trial: status.trial,
        }));
        // A damaged record must not stop the daemon (and with it the watchdog feeding).
        let record = self.state.trial().unwrap_or_else(|e| {
            say!("{e}: ignoring the record of the last update");
            None
        });
        if status.trial {
            return self.judge_trial(record);
        }
        self.after_normal_boot(record)?;
        self.watch_for_sticks()
    }

    /// A boot that is not a trial: report the last update and keep the floor in step.
    fn after_normal_boot(&mut self, record: Option<TrialRecord>) -> Result<(), String> {
        let floor = match self.state.raise_floor(self.release.security_version) {
            Ok(f) => f.to_string(),
            Err(e) => format!("unreadable ({e}; installs are refused until it is repaired)"),
        };
        say!(
            "slot {} committed, version {}, security floor {floor}",
            self.running,
            self.release.version
        );
        let Some(mut rec) = record else {
            return Ok(());
        };
        match rec.outcome {
            Outcome::Installed if rec.slot != self.running.to_string() => {
                let reason = "it never reported healthy (crashed, hung or reset by the watchdog \
                              until the bootloader's tries ran out)";
                say!(
                    "last update: version {} in slot {} was abandoned: {reason}",
                    rec.version,
                    rec.slot
                );
                let other = self.running.other();
                with_esp_rw(|| {
                    bootloader(self.running)
                        .mark_bad(other)
                        .map_err(|e| e.to_string())
                })?;
                rec.outcome = Outcome::Abandoned;
                rec.reason = Some(reason.into());
                self.state.set_trial(&rec).map_err(|e| e.to_string())?;
            }
            Outcome::RolledBack | Outcome::Abandoned => say!(
                "last update: version {} in slot {} was rolled back: {}",
                rec.version,
                rec.slot,
                rec.reason.as_deref().unwrap_or("no reason recorded")
            ),
            Outcome::Committed => say!(
                "last update: version {} in slot {} committed",
                rec.version,
                rec.slot
            ),
            Outcome::Installed => {}
        }
        Ok(())
    }

    /// The trial boot: health window, then commit or roll back.
    fn judge_trial(&mut self, record: Option<TrialRecord>) -> Result<(), String> {
        let window = self
            .config()
            .map_or(health::DEFAULT_WINDOW, |c| c.health_window);
        say!(
            "slot {} is on trial: health checks for up to {} s",
            self.running,
            window.as_secs()
        );
        *self
            .trial_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now() + window);
        let checks = self.checks();
        let clock = BeatingClock(&self.heart, Instant::now());
        let verdict = health::watch(
            &checks,
            window,
            health::DEFAULT_INTERVAL,
            &clock,
            &mut |round, failures| {
                if !failures.is_empty() && round % 5 == 1 {
                    say!("health round {round}: {}", failures.join("; "));
                }
            },
        );
        *self
            .trial_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let mut rec = record.unwrap_or(TrialRecord {
            slot: self.running.to_string(),
            version: self.release.version.clone(),
            security_version: self.release.security_version,
            outcome: Outcome::Installed,
            reason: None,
        });
        let running = self.running;
        match verdict {
            Verdict::Healthy { rounds } => {
                let _busy = self.install_lock.lock().unwrap_or_else(|e| e.into_inner());
                if self.rolled_back.load(Ordering::SeqCst) {
                    // A rollback over the API came first: its reboot is on the way.
                    say!("slot {running} healthy, but it was rolled back meanwhile: not committed");
                    drop(_busy);
                    loop {
                        self.heart.beat();
                        std::thread::sleep(Duration::from_secs(5));
                    }
                }
                with_esp_rw(|| {
                    bootloader(running)
                        .mark_good(running)
                        .map_err(|e| e.to_string())
                })?;
                let floor = self
                    .state
                    .raise_floor(self.release.security_version)
                    .map_err(|e| e.to_string())?;
                rec.outcome = Outcome::Committed;
                rec.reason = None;
                self.state.set_trial(&rec).map_err(|e| e.to_string())?;
                drop(_busy);
                say!(
                    "slot {running} healthy after {rounds} round(s): committed version {}, security floor {floor}",
                    self.release.version
                );
                self.event(Event::Health(proto::HealthEvent {
                    healthy: true,
                    detail: format!("after {rounds} round(s)"),
                }));
                self.event(Event::Update(proto::UpdateEvent {
                    stage: proto::update_event::Stage::Committed as i32,
                    os_version: self.release.version.clone(),
                    detail: format!("slot {running}"),
                }));
                self.watch_for_sticks()
            }
            Verdict::Unhealthy { reason } => {
                say!("slot {running} is not healthy: {reason}");
                self.event(Event::Health(proto::HealthEvent {
                    healthy: false,
                    detail: reason.clone(),
                }));
                rec.outcome = Outcome::RolledBack;
                rec.reason = Some(reason.clone());
                self.state.set_trial(&rec).map_err(|e| e.to_string())?;
                with_esp_rw(|| {
                    bootloader(running)
                        .mark_bad(running)
                        .map_err(|e| e.to_string())
                })?;
                self.event(Event::Rollback(proto::RollbackEvent {
                    from_slot: remote::proto_slot(running) as i32,
                    to_slot: remote::proto_slot(running.other()) as i32,
                    reason,
                }));
                say!(
                    "slot {running} marked bad; rebooting into slot {}",
                    running.other()
                );
                reboot();
                Ok(())
            }
        }
    }

    fn watch_for_sticks(&mut self) -> Result<(), String> {
        let mut events = uevent::UeventSocket::open().map_err(|e| format!("uevent socket: {e}"))?;
        let boot_disk = block::find_partition("STATE")
            .ok()
            .and_then(|p| block::disk_of(&p));
        say!("waiting for update bundles on USB sticks and hot-plugged disks");
        loop {
            self.heart.beat();
            let event = match events.recv(Some(Duration::from_secs(5))) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => {
                    say!("reading uevents: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if event.action != uevent::Action::Add || event.subsystem.as_deref() != Some("block") {
                continue;
            }
            let Some(dev) = event.devname.clone() else {
                continue;
            };
            let disk = block::disk_of_name(&dev);
            if boot_disk.as_deref() == Some(disk.as_str()) {
                continue;
            }
            if event.devtype.as_deref() == Some("disk")
                && uevent::block_partitions_of(Path::new("/sys/class/block"), &dev)
                    .is_ok_and(|p| !p.is_empty())
            {
                continue; // its partitions arrive as their own events
            }
            match self.install_from(&dev) {
                Ok(true) => {
                    reboot();
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => say!("{e}"),
            }
        }
    }

    /// Mounts `/dev/<dev>` read-only and installs its newest bundle; true when installed.
    fn install_from(&mut self, dev: &str) -> Result<bool, String> {
        let path = PathBuf::from("/dev").join(dev);
        let mount = Path::new(STICK_MOUNT);
        let fstype = block::mount_ro_private(&path, mount)?;
        say!(
            "{} ({fstype}) mounted read-only on {STICK_MOUNT}",
            path.display()
        );
        let result = self.install_newest(mount);
        if let Err(e) = block::unmount(mount) {
            say!("unmounting {STICK_MOUNT}: {e}");
        }
        result
    }

    fn install_newest(&mut self, dir: &Path) -> Result<bool, String> {
        let Some((bundle, version)) = newest_bundle(dir)? else {
            say!("no *.cairn bundle at the root of the stick");
            return Ok(false);
        };
        let installed_version = Version::parse(&self.release.version)
            .map_err(|e| format!("{RELEASE}: VERSION {}: {e}", self.release.version))?;
        // A stick left in across reboots must not install the same thing over and over.
        if let Some(why) = skip_reason(
            &version,
            &installed_version,
            self.state.trial().ok().flatten(),
        ) {
            say!("{} not installed: {why}", bundle.display());
            return Ok(false);
        }
        say!("installing {} (version {version})", bundle.display());
        let file =
            fs::File::open(&bundle).map_err(|e| format!("opening {}: {e}", bundle.display()))?;
        let len = file.metadata().map(|m| m.len()).ok();
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut reporter = ProgressReporter::default();
        let result = self
            .shared
            .install(&bundle.display().to_string(), reader, len, &mut |p| {
                reporter.report(p)
            })
            .map_err(|e| e.message)?;
        say!(
            "installed version {} into slot {} ({} bytes); rebooting into the trial",
            result.version,
            result.slot,
            result.bytes
        );
        Ok(true)
    }
}

/// Why a stick's newest bundle is not installed: its version is the one running, or it is the
/// version whose trial failed last time (a stick left in would otherwise loop: install, fail,
/// roll back, install).
pub fn skip_reason(
    bundle: &Version,
    running: &Version,
    last: Option<TrialRecord>,
) -> Option<String> {
    if bundle == running {
        return Some(format!("version {bundle} is already running"));
    }
    let last = last?;
    let failed = matches!(last.outcome, Outcome::RolledBack | Outcome::Abandoned);
    if failed && Version::parse(&last.version).is_ok_and(|v| v == *bundle) {
        return Some(format!(
            "version {bundle} failed its trial before ({}); bring a different version",
            last.reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    None
}

/// Prints a progress line per phase and every 25 % of the bytes.
#[derive(Default)]
pub(crate) struct ProgressReporter {
    last: Option<(Phase, String, u64)>,
}

impl ProgressReporter {
    pub(crate) fn report(&mut self, p: &Progress) {
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
    Keyring::parse(&text).map_err(|e| format!("{KEYRING}: {e}"))
}

/// The `*.cairn` file at the root of `dir` with the highest manifest version (unverified: only
/// to choose; the install verifies). Files that are not readable bundles are reported as refused
/// and skipped.
pub fn newest_bundle(dir: &Path) -> Result<Option<(PathBuf, Version)>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    let mut best: Option<(PathBuf, Version)> = None;
    let mut looked = 0;
    for entry in entries.flatten().take(4096) {
        let path = entry.path();
        let is_bundle = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("cairn"))
            && entry.file_type().is_ok_and(|t| t.is_file());
        if !is_bundle {
            continue;
        }
        looked += 1;
        if looked > MAX_BUNDLES {
            say!(
                "more than {MAX_BUNDLES} bundles on the stick: looking at the first {MAX_BUNDLES}"
            );
            break;
        }
        let version = match fs::File::open(&path)
            .map_err(cairn_bundle::Error::from_io)
            .and_then(|f| cairn_bundle::inspect(std::io::BufReader::new(f).take(8 << 20)))
        {
            Ok((m, _)) => m.version,
            Err(e) => {
                say!("{} refused: {e}", path.display());
                continue;
            }
        };
        let newer = match &best {
            None => true,
            Some((p, v)) => version > *v || (version == *v && path > *p),
        };
        if newer {
            best = Some((path, version));
        }
    }
    Ok(best)
}

fn reboot() {
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    unsafe {
        libc::kill(1, libc::SIGTERM);
    }
    // init stops every service as part of the reboot; wait for it.
    loop {
        std::thread::sleep(Duration::from_secs(60));
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

/// Real time, beating the heart while it sleeps.
struct BeatingClock<'a>(&'a Heartbeat, Instant);

impl Clock for BeatingClock<'_> {
    fn now(&self) -> Duration {
        self.1.elapsed()
    }
    fn sleep(&self, d: Duration) {
        self.0.beat();
        std::thread::sleep(d);
        self.0.beat();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_and_cmdline() {
        let r = Release::parse(
            "VERSION=0.2.0\nBOARD=qemu-x86_64\nBOOTLOADER=systemd-boot\nSECURITY_VERSION=3\n",
        )
        .unwrap();
        assert_eq!(
            (r.version.as_str(), r.board.as_str(), r.security_version),
            ("0.2.0", "qemu-x86_64", 3)
        );
        assert_eq!(
            Release::parse("VERSION=1\nBOARD=x\nBOOTLOADER=y\n")
                .unwrap()
                .security_version,
            0
        );
        assert!(Release::parse("BOARD=x\n")
            .unwrap_err()
            .contains("no VERSION="));
        assert!(Release::parse("VERSION=1\nBOARD=x\nBOOTLOADER=y\nSECURITY_VERSION=x\n").is_err());
        assert_eq!(cmdline_slot("quiet cairn.slot=b panic=5"), Some(Slot::B));
        assert_eq!(cmdline_slot("cairn.slot=c"), None);
    }

    #[test]
    fn the_running_version_and_a_failed_one_are_not_installed_again() {
        let v = |t: &str| Version::parse(t).unwrap();
        let record = |outcome| TrialRecord {
            slot: "b".into(),
            version: "0.3.0".into(),
            security_version: 0,
            outcome,
            reason: Some("probe failed".into()),
        };
        assert!(skip_reason(&v("0.2.0"), &v("0.2.0"), None)
            .unwrap()
            .contains("already running"));
        assert_eq!(skip_reason(&v("0.3.0"), &v("0.2.0"), None), None);
        assert!(
            skip_reason(&v("0.3.0"), &v("0.2.0"), Some(record(Outcome::RolledBack)))
                .unwrap()
                .contains("failed its trial before (probe failed)")
        );
        assert!(skip_reason(&v("0.3.0"), &v("0.2.0"), Some(record(Outcome::Abandoned))).is_some());
        assert_eq!(
            skip_reason(&v("0.3.0"), &v("0.2.0"), Some(record(Outcome::Committed))),
            None
        );
        assert_eq!(
            skip_reason(&v("0.4.0"), &v("0.2.0"), Some(record(Outcome::RolledBack))),
            None
        );
    }

    #[test]
    fn newest_bundle_goes_by_manifest_version() {
        let dir = tempfile::tempdir().unwrap();
        let key = cairn_bundle::SecretKey::from_bytes([3; 32]);
        let payload = dir.path().join("p");
        fs::write(&payload, b"x").unwrap();
        let make = |name: &str, version: &str| {
            let mut out = fs::File::create(dir.path().join(name)).unwrap();
            cairn_bundle::create(
                &mut out,
                &cairn_bundle::ManifestMeta {
                    compatible: vec!["b".into()],
                    arch: "x86_64".into(),
                    version: Version::parse(version).unwrap(),
                    security_version: 0,
                    min_installed_version: Version::new(0, 0, 0),
                    created: 0,
                },
                &[cairn_bundle::PayloadSource {
                    name: "p".into(),
                    role: cairn_bundle::Role::Rootfs,
                    path: payload.clone(),
                    chunk_size: 65536,
                }],
                &key,
            )
            .unwrap();
        };
        make("a.cairn", "0.10.0");
        make("b.cairn", "0.9.0");
        fs::write(dir.path().join("c.cairn"), b"garbage").unwrap();
        fs::write(dir.path().join("d.txt"), b"x").unwrap();
        let (path, v) = newest_bundle(dir.path()).unwrap().unwrap();
        assert_eq!(
            (
                path.file_name().unwrap().to_str().unwrap(),
                v.to_string().as_str()
            ),
            ("a.cairn", "0.10.0")
        );
        fs::remove_file(dir.path().join("a.cairn")).unwrap();
        fs::remove_file(dir.path().join("b.cairn")).unwrap();
        assert_eq!(newest_bundle(dir.path()).unwrap(), None);
    }
}
