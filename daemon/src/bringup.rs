//! Storage bring-up, the first thing cairnd does: STATE on `/var/lib/cairn` and, when
//! encrypted, DATA on `/var`.
//!
//! - First boot (STATE is the image's plain FAT seed): with a TPM and `storage.encrypt`, DATA
//!   and then STATE become LUKS2 volumes whose key is sealed in the TPM (docs/storage.md). DATA
//!   keeps a synced copy of the seed until STATE holds it again, so a power cut loses nothing.
//! - Later boots: the TPM unlocks both; an interrupted first boot is finished from DATA's copy.
//! - The TPM refuses: maintenance mode takes the recovery key over the API ([`maintenance`]).
//!
//! What came of it is a [`StorageStatus`]: the health gate's `storage` check, an event, and
//! whether the box may run workloads (`storage.require_encryption`).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_netcfg::agent::Netcfg;

use crate::block;
use crate::config::MachineConfig;
use crate::log::{self, say};
use crate::storage::{Opened, Partitions};
use crate::system::ESP;
use crate::{settings, storage};

/// Where STATE is mounted (plain or decrypted).
pub const STATE_MOUNT: &str = "/var/lib/cairn";
/// Where the image build puts what `cairnctl gen secrets` made for devices (on STATE), and
/// where the API's server certificate is kept.
pub const SECRETS_DIR: &str = "/var/lib/cairn/api";
/// Where DATA is mounted when it is encrypted.
const DATA_MOUNT: &str = "/var";
/// The recovery key, on the encrypted STATE, until `cairnctl recovery-key` fetches it.
pub const RECOVERY_KEY_FILE: &str = "recovery-key";
/// On DATA during the first boot's encryption: a copy of the seed and the recovery key, kept
/// until STATE holds them, so a power cut after STATE was wiped loses nothing.
const PROVISIONING: &str = "/var/.cairn-provisioning";
/// This boot's [`StorageStatus`], for a cairnd that init restarts (the mounts stay).
const STATUS_FILE: &str = "/run/cairn/storage";
/// How much of DATA's start is read to tell a blank partition from one holding something.
const PROBE_LEN: usize = 1 << 20;

/// What storage bring-up came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageStatus {
    /// STATE and DATA are LUKS2 volumes, unlocked and mounted.
    Encrypted,
    /// Not encrypted, by choice: `storage.encrypt: false`, or no TPM and encryption not
    /// required. STATE is plain; DATA is plain ext4 on /var ([`plain_data`]).
    Plain(String),
    /// Encryption was wanted and could not be set up; STATE is plain, DATA is not used, and the
    /// next boot tries again.
    Failed(String),
    /// As `Failed`, but `storage.require_encryption` is set: maintenance mode, no workloads.
    Refused(String),
}

impl StorageStatus {
    /// The health gate's `storage` check.
    pub fn check(&self) -> Result<(), String> {
        match self {
            StorageStatus::Encrypted | StorageStatus::Plain(_) => Ok(()),
            StorageStatus::Failed(why) => Err(format!("STATE and DATA are not encrypted: {why}")),
            StorageStatus::Refused(why) => Err(format!(
                "encryption is required (storage.require_encryption) and could not be set up: \
                 {why}; no workloads run on plain storage"
            )),
        }
    }

    /// Whether workloads may start: never on storage that should have been encrypted.
    pub fn allows_workloads(&self) -> bool {
        !matches!(self, StorageStatus::Refused(_))
    }

    /// One line for the console and the event.
    pub fn summary(&self) -> String {
        match self {
            StorageStatus::Encrypted => {
                "STATE and DATA are encrypted (LUKS2, key sealed in the TPM)".into()
            }
            StorageStatus::Plain(why) => format!("STATE and DATA are not encrypted: {why}"),
            failed => failed.check().unwrap_err(),
        }
    }

    fn encode(&self) -> String {
        let (kind, why) = match self {
            StorageStatus::Encrypted => ("encrypted", ""),
            StorageStatus::Plain(w) => ("plain", w.as_str()),
            StorageStatus::Failed(w) => ("failed", w.as_str()),
            StorageStatus::Refused(w) => ("refused", w.as_str()),
        };
        format!("{kind}\n{why}\n")
    }

    fn decode(text: &str) -> Option<StorageStatus> {
        let (kind, why) = text.split_once('\n')?;
        let why = why.trim_end().to_string();
        Some(match kind {
            "encrypted" => StorageStatus::Encrypted,
            "plain" => StorageStatus::Plain(why),
            "failed" => StorageStatus::Failed(why),
            "refused" => StorageStatus::Refused(why),
            _ => return None,
        })
    }

    /// Keeps the status for a restarted cairnd (in `/run`, gone at reboot).
    fn remember(&self) {
        let path = Path::new(STATUS_FILE);
        let _ = path.parent().map(fs::create_dir_all);
        if let Err(e) = fs::write(path, self.encode()) {
            say!("keeping the storage status in {STATUS_FILE}: {e}");
        }
    }
}

/// Mounts STATE on [`STATE_MOUNT`] (and DATA on [`DATA_MOUNT`] when encrypted): on the first
/// boot with a TPM it encrypts both, on later boots it unlocks them with the TPM (finishing an
/// interrupted first boot if DATA says so), and when the TPM refuses it runs maintenance mode
/// until the recovery key arrives. Returns what came of it, and the network when maintenance
/// mode started it.
pub fn bring_up(
    beat: &dyn Fn(),
    maintenance: &Maintenance<'_>,
) -> Result<(StorageStatus, Option<Netcfg>), String> {
    let waited = wait_for_late_modules(
        Path::new(LATE_MODULE_LIST),
        Path::new(LATE_MODULES_DONE),
        LATE_MODULES_WAIT,
        beat,
    );
    match waited {
        Ok(Some(t)) => say!("waited {} ms for init's late kernel modules", t.as_millis()),
        Ok(None) => {}
        Err(e) => say!("{e}"),
    }
    let (status, network) = bring_up_inner(beat, maintenance)?;
    status.remember();
    Ok((status, network))
}

/// The list of kernel modules init loads right after `ready` (init/src/late.rs): ext4,
/// dm-crypt, the TPM's driver, the network card. An image without it loaded them all before
/// the root.
const LATE_MODULE_LIST: &str = "/etc/cairn/modules-late";
/// Written by init once it has loaded that list (`loaded=N`, `failed=names`).
pub const LATE_MODULES_DONE: &str = "/run/cairn/modules-late";
/// Far more than the list takes, even under emulation; after it, storage is tried anyway.
const LATE_MODULES_WAIT: Duration = Duration::from_secs(60);

/// Waits until init has loaded the late kernel modules (`done` exists), when the image has a
/// late list (`list`). Returns how long it waited (`None` without a list), or after `timeout`
/// the line to say (storage is then tried with whatever drivers are in).
pub fn wait_for_late_modules(
    list: &Path,
    done: &Path,
    timeout: Duration,
    beat: &dyn Fn(),
) -> Result<Option<Duration>, String> {
    if !list.exists() {
        return Ok(None);
    }
    let start = Instant::now();
    while !done.exists() {
        if start.elapsed() >= timeout {
            return Err(format!(
                "init did not say it loaded the kernel modules of {} (no {} after {} s); \
                 going on without waiting",
                list.display(),
                done.display(),
                timeout.as_secs()
            ));
        }
        beat();
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Some(start.elapsed()))
}

/// Maintenance mode, when the TPM will not open the volumes: given the partitions, the TPM (if
/// it answers) and why, it returns the volumes opened with the recovery key, and the network it
/// started. The wiring supplies it (it serves an API of its own).
pub type Maintenance<'a> =
    dyn Fn(Partitions, Option<cairn_tpm::Tpm>, &str) -> Result<(Opened, Netcfg), String> + 'a;

fn bring_up_inner(
    beat: &dyn Fn(),
    maintenance: &Maintenance<'_>,
) -> Result<(StorageStatus, Option<Netcfg>), String> {
    let state_mount = Path::new(STATE_MOUNT);
    if block::is_mount_point(state_mount) {
        if !Path::new(PROVISIONING).exists() {
            // cairnd restarted: init keeps the mounts; the log goes on where it was kept.
            if block::is_mount_point(Path::new(DATA_MOUNT)) {
                log::keep_on_data();
            }
            let status = fs::read_to_string(STATUS_FILE)
                .ok()
                .and_then(|t| StorageStatus::decode(&t))
                .unwrap_or(StorageStatus::Encrypted);
            return Ok((status, None));
        }
        // A cairnd that stopped while it encrypted STATE: start over from DATA's copy.
        block::unmount(state_mount).map_err(|e| format!("unmounting STATE to start over: {e}"))?;
    }
    // A cairnd that stopped between mounting DATA and STATE: start over.
    if block::is_mount_point(Path::new(DATA_MOUNT)) {
        log::leave_data();
        block::unmount(Path::new(DATA_MOUNT))
            .map_err(|e| format!("unmounting DATA to start over: {e}"))?;
    }
    storage::close(storage::Volume::State);
    storage::close(storage::Volume::Data);
    let state_dev = block::find_partition("STATE")?;
    if !storage::is_luks(&state_dev)? {
        match block::mount_rw_found(&state_dev, state_mount) {
            Ok(_) => return first_boot(&state_dev, beat).map(|s| (s, None)),
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
            log::leave_data();
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
            finish_state(&parts.state, &seal, &recovery, &seed, started, beat)?;
            Ok((StorageStatus::Encrypted, None))
        }
        Ok(None) => {
            say!(
                "unlocked STATE and DATA with the TPM in {} ms (unseal {} ms, keyslots {} ms)",
                times.total.as_millis(),
                times.unseal.as_millis(),
                times.keyslots.as_millis()
            );
            remember_client_ca();
            Ok((StorageStatus::Encrypted, None))
        }
        Err(storage::TpmUnlockError::Refused(why) | storage::TpmUnlockError::Failed(why)) => {
            let (opened, network) = maintenance(parts, tpm, &why)?;
            mount_data(&opened.data)?;
            mount_state(&opened.state)?;
            remember_client_ca();
            Ok((StorageStatus::Encrypted, Some(network)))
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

/// What the first boot does about encryption, from the seed's machine config and the TPM.
struct Wanted {
    encrypt: bool,
    /// No workloads on plain storage when encryption cannot be set up.
    required: bool,
    pcrs: Vec<u8>,
    /// Refuse unless Secure Boot is on.
    require_secure_boot: bool,
}

/// The first boot: STATE holds the image's seed and is mounted on [`STATE_MOUNT`]. Encrypts
/// STATE and DATA when the seed's config wants it and there is a TPM; otherwise leaves STATE as
/// it is. DATA is done first and keeps a copy of the seed until STATE holds it again.
///
/// Whatever STATE held (nothing, API secrets, a machine config written over the API, or both)
/// is carried over. A failure before STATE is wiped leaves STATE as it was and DATA unused, so
/// the next boot can try again without losing anything.
fn first_boot(state_dev: &Path, beat: &dyn Fn()) -> Result<StorageStatus, String> {
    let state_mount = Path::new(STATE_MOUNT);
    let config = settings::load(state_mount).unwrap_or_else(|e| {
        say!("machine config unusable ({e}): storage takes the defaults");
        MachineConfig::default()
    });
    let storage = &config.storage;
    let tpm = if storage.encrypt { open_tpm() } else { None };
    let wanted = Wanted {
        encrypt: storage.encrypt,
        // The default: required wherever there is a TPM to do it with.
        required: storage
            .require_encryption
            .unwrap_or(storage.encrypt && tpm.is_some()),
        pcrs: storage.pcrs.clone(),
        require_secure_boot: storage.require_secure_boot,
    };
    let status = encrypt_first(state_dev, &wanted, tpm, beat)?;
    match &status {
        StorageStatus::Encrypted => {}
        StorageStatus::Refused(_) => say!(
            "maintenance mode: {}; the next boot tries again",
            status.summary()
        ),
        StorageStatus::Failed(_) => say!("{}; the next boot tries again", status.summary()),
        StorageStatus::Plain(_) => {
            say!("{}", status.summary());
            plain_data(state_dev);
        }
    }
    Ok(status)
}

fn encrypt_first(
    state_dev: &Path,
    wanted: &Wanted,
    tpm: Option<Result<cairn_tpm::Tpm, String>>,
    beat: &dyn Fn(),
) -> Result<StorageStatus, String> {
    let state_mount = Path::new(STATE_MOUNT);
    let failed = |why: String| {
        if wanted.required {
            StorageStatus::Refused(why)
        } else {
            StorageStatus::Failed(why)
        }
    };
    if !wanted.encrypt {
        return Ok(StorageStatus::Plain(
            "the machine config says storage.encrypt: false".into(),
        ));
    }
    let mut tpm = match tpm {
        None if wanted.required => {
            return Ok(failed(format!(
                "this box has no TPM ({})",
                storage::TPM_DEVICE
            )))
        }
        None => {
            return Ok(StorageStatus::Plain(format!(
                "this box has no TPM ({})",
                storage::TPM_DEVICE
            )))
        }
        Some(Err(e)) => return Ok(failed(e)),
        Some(Ok(tpm)) => tpm,
    };
    let data_dev = match block::find_partition("DATA") {
        Ok(d) => d,
        Err(e) => return Ok(failed(e)),
    };
    // DATA is formatted only when nothing of value can be on it: blank as the image left it,
    // or a LUKS2 volume an earlier, unfinished first boot made (STATE is still the seed, so no
    // boot ever ran with it).
    match unused(&data_dev) {
        Ok(true) => {}
        Ok(false) if block::fs_type(&data_dev) == Ok("ext4") => {
            return Ok(failed(format!(
                "{} holds this box's unencrypted /var (plain ext4): not formatting it (save what \
                 it holds, then wipe DATA to let the box encrypt it)",
                data_dev.display()
            )))
        }
        Ok(false) => {
            return Ok(failed(format!(
                "{} holds data that Cairn did not put there: not formatting it (flash the whole \
                 image, or wipe DATA, to let the box encrypt it)",
                data_dev.display()
            )))
        }
        Err(e) => return Ok(failed(e)),
    }
    let pcrs = match cairn_tpm::PcrSelection::sha256(&wanted.pcrs) {
        Ok(p) => p,
        Err(e) => return Ok(failed(format!("storage.pcrs: {e}"))),
    };
    // Signed (the booted UKI carries a release key) or PCRs only; refused here, with nothing
    // changed, when the config requires Secure Boot and it is off.
    let policy = match storage::seal_policy(
        &pcrs,
        wanted.require_secure_boot,
        storage::release_security_version(),
    ) {
        Ok(p) => p,
        Err(e) if wanted.require_secure_boot => return Ok(StorageStatus::Refused(e)),
        Err(e) => return Ok(failed(e)),
    };
    // The client CA's public certificate, for maintenance mode, while it is at hand: without
    // it a box whose TPM refuses could not be unlocked remotely.
    if let Err(e) = remember_client_ca_in(Path::new(SECRETS_DIR)) {
        return Ok(failed(e));
    }
    say!(
        "first boot: encrypting STATE and DATA (LUKS2), the key sealed in the TPM to {}",
        policy.describe()
    );
    let started = Instant::now();
    let seed = storage::read_tree(state_mount)?;
    let recovery = storage::new_recovery_key();
    block::unmount(state_mount).map_err(|e| format!("unmounting the seed STATE: {e}"))?;
    // Until STATE is wiped, a failure leaves the seed where it was and STATE unencrypted.
    let data_ready = storage::new_seal(&mut tpm, &policy).and_then(|seal| {
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
            log::leave_data();
            let _ = block::unmount(Path::new(DATA_MOUNT));
            storage::close(storage::Volume::Data);
            block::mount_rw_found(state_dev, state_mount)?;
            return Ok(failed(format!("encrypting DATA failed: {e}")));
        }
    };
    say!("DATA is encrypted and holds a copy of the seed; now STATE");
    finish_state(state_dev, &seal, &recovery, &seed, started, beat)?;
    Ok(StorageStatus::Encrypted)
}

/// Plain storage: DATA unencrypted on /var, so container state and cairnd's log are kept on the
/// disk. DATA is formatted (ext4) only when nothing can be lost, by the rule encryption follows
/// ([`unused`]); a DATA holding ext4 or FAT (an older release's) is mounted as it is; anything
/// else is left alone, said once, and /var stays the read-only root's.
fn plain_data(state_dev: &Path) {
    if let Err(e) = mount_plain_data(state_dev) {
        say!("DATA is not used: {e}");
    }
}

fn mount_plain_data(state_dev: &Path) -> Result<(), String> {
    let data_dev = block::find_partition("DATA")?;
    if unused(&data_dev)? {
        let started = Instant::now();
        storage::make_ext4(&data_dev, storage::Volume::Data.fs_label())?;
        say!(
            "DATA: made an ext4 file system (not encrypted) in {} ms",
            started.elapsed().as_millis()
        );
    } else if block::fs_type(&data_dev).is_err() {
        return Err(format!(
            "{} holds data that Cairn did not put there: not formatting it (wipe DATA to let \
             the box use it)",
            data_dev.display()
        ));
    }
    // STATE (the seed) is on the root's /var; DATA goes under it, then STATE back on top.
    let state_mount = Path::new(STATE_MOUNT);
    block::unmount(state_mount).map_err(|e| format!("unmounting STATE to mount DATA: {e}"))?;
    let mounted = mount_data(&data_dev);
    if mounted.is_err() {
        log::leave_data();
        let _ = block::unmount(Path::new(DATA_MOUNT));
    }
    mount_state(state_dev)?;
    mounted
}

/// Whether `dev` holds nothing a retry could lose: its first MiB is zeros (as the image leaves
/// DATA), or it is a LUKS2 volume (an earlier first boot's, which never got further).
fn unused(dev: &Path) -> Result<bool, String> {
    use std::io::Read as _;
    if storage::is_luks(dev)? {
        return Ok(true);
    }
    let mut head = vec![0u8; PROBE_LEN];
    let mut f = fs::File::open(dev).map_err(|e| format!("opening {}: {e}", dev.display()))?;
    let n = f
        .read(&mut head)
        .map_err(|e| format!("reading {}: {e}", dev.display()))?;
    Ok(head[..n].iter().all(|&b| b == 0))
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
        log::leave_data();
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
    crate::log::console(&format!(
        "recovery key (shown once; keep it safe): {recovery}"
    ));
    say!(
        "encrypted STATE and DATA in {:.1} s; the recovery key is on the console and \
         `cairnctl recovery-key` fetches it once",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Keeps the ESP's copy of the client CA current (it may change with a new config).
fn remember_client_ca() {
    if let Err(e) = remember_client_ca_in(Path::new(SECRETS_DIR)) {
        say!("{e}");
    }
}

/// DATA on /var, and the log kept there from now on.
fn mount_data(data: &Path) -> Result<(), String> {
    block::mount_rw_found(data, Path::new(DATA_MOUNT))?;
    log::keep_on_data();
    Ok(())
}

/// STATE on /var/lib/cairn, inside DATA.
fn mount_state(state: &Path) -> Result<(), String> {
    fs::create_dir_all(STATE_MOUNT).map_err(|e| format!("creating {STATE_MOUNT} on DATA: {e}"))?;
    block::mount_rw_found(state, Path::new(STATE_MOUNT)).map(drop)
}

/// Where cairnd keeps a copy of the client CA certificate (public) for maintenance mode.
pub const CLIENT_CA_COPY: &str = "/boot/cairn/client-ca.crt";

/// Copies the client CA certificate from the unlocked STATE to the ESP when it differs.
/// Without a client CA (an image with no API secrets) there is nothing to copy.
pub fn remember_client_ca_in(secrets: &Path) -> Result<(), String> {
    let from = secrets.join(cairn_pki::secrets::CLIENT_CA_CERT);
    let Ok(pem) = fs::read(&from) else {
        return Ok(());
    };
    let to = Path::new(CLIENT_CA_COPY);
    if fs::read(to).ok().as_deref() == Some(pem.as_slice()) {
        return Ok(());
    }
    let esp = Path::new(ESP);
    crate::block::remount(esp, false)
        .map_err(|e| format!("keeping the client CA for maintenance mode: {e}"))?;
    let written = to
        .parent()
        .map(fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| fs::write(to, &pem))
        .and_then(|()| crate::block::sync_fs(esp));
    let _ = crate::block::remount(esp, true);
    written
        .map_err(|e| format!("keeping the client CA for maintenance mode ({CLIENT_CA_COPY}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn waits_for_inits_late_modules_only_when_the_image_has_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules-late");
        let done = dir.path().join("run/modules-late");
        let beats = Cell::new(0);
        let beat = || beats.set(beats.get() + 1);
        // No list: an image whose initramfs loaded everything; nothing to wait for.
        assert_eq!(
            wait_for_late_modules(&list, &done, Duration::from_secs(5), &beat),
            Ok(None)
        );
        // A list: waits (feeding the heartbeat) until init writes the file.
        std::fs::write(&list, "x.ko\n").unwrap();
        let writer = {
            let done = done.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(60));
                std::fs::create_dir_all(done.parent().unwrap()).unwrap();
                std::fs::write(&done, "loaded=1\nfailed=\n").unwrap();
            })
        };
        let waited = wait_for_late_modules(&list, &done, Duration::from_secs(5), &beat)
            .unwrap()
            .unwrap();
        writer.join().unwrap();
        assert!(waited >= Duration::from_millis(60), "{waited:?}");
        assert!(beats.get() > 0);
        // Init never says: one line, and storage goes on.
        std::fs::remove_file(&done).unwrap();
        let err =
            wait_for_late_modules(&list, &done, Duration::from_millis(30), &beat).unwrap_err();
        assert!(
            err.starts_with("init did not say it loaded the kernel modules of ")
                && err.ends_with("after 0 s); going on without waiting"),
            "{err}"
        );
    }
}
