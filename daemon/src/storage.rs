//! STATE and DATA encrypted with LUKS2, the key sealed in the TPM.
//!
//! The image ships STATE as a plain FAT seed (machine config, API secrets) and DATA empty. On the
//! first boot with a TPM, cairnd seals a secret ([`new_seal`]) and makes DATA a LUKS2 volume
//! with ext4 inside ([`create_volume`]), keeps a copy of the seed there, then does the same to
//! STATE (wiping it first) and writes the seed back into it. Each volume gets two keyslots:
//!
//! - keyslot 0 opens with a random secret sealed in the TPM to the chosen PCRs (PolicyPCR), kept
//!   as a `systemd-tpm2` token; the passphrase is the secret in base64, as systemd-cryptenroll
//!   does, so its KDF is a token PBKDF2 (the secret has full entropy);
//! - keyslot 1 opens with the recovery key (systemd's format: 32 random bytes as 64 modhex
//!   characters), behind argon2id tuned for a Raspberry Pi 4 class CPU (docs/luks2.md).
//!
//! Later boots [`unlock_volume`] each. When the TPM refuses (the PCRs changed), the caller goes to
//! maintenance mode and, given the recovery key, [`unlock_with_recovery`] opens both volumes and
//! seals a new secret to the PCRs as they are now, replacing keyslot 0 and its token.
//!
//! Opened volumes are dm-crypt mappings made with our own device-mapper ioctls
//! ([`cairn_luks::dm_crypt`], through `cairn-dm`); nothing from cryptsetup runs on the device.
//!
//! Why one long file: sealing, formatting, unlocking and re-sealing share the volume and
//! keyslot conventions above; kept together, the conventions are read once.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cairn_luks::{dm_crypt, Credential, FormatOptions, Kdf, Luks2, VolumeKey};
use cairn_tpm::{PcrBank, PcrPublicKey, PcrSelection, PcrSignature, PrimaryAlg, SealedBlob, Tpm};
use zeroize::Zeroizing;

/// The device-mapper names of the opened volumes.
pub const STATE_MAP: &str = "cairn-state";
pub const DATA_MAP: &str = "cairn-data";
/// The TPM's resource-managed device node.
pub const TPM_DEVICE: &str = "/dev/tpmrm0";
/// PBKDF2-SHA256 iterations of the TPM keyslot (cryptsetup's minimum; the secret is random).
const TPM_KEYSLOT_ITERATIONS: u32 = 1000;
/// Iterations of the volume-key digest: it only tells a right key from a wrong one.
const DIGEST_ITERATIONS: u32 = 1000;
/// The token type systemd-cryptenroll writes, and the one we look for.
const TPM2_TOKEN: &str = "systemd-tpm2";
/// Where init leaves the booted UKI's `.pcrsig` and `.pcrpkey` (from the stub's `/.extra`).
pub const PCR_SIGNATURE: &str = "/run/cairn/pcr/tpm2-pcr-signature.json";
pub const PCR_PUBLIC_KEY: &str = "/run/cairn/pcr/tpm2-pcr-public-key.pem";
/// The largest signature or key file read.
const PCR_FILE_LIMIT: u64 = 64 * 1024;
/// systemd's modhex alphabet for recovery keys.
const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";

/// The two partitions, by their device nodes.
#[derive(Debug, Clone)]
pub struct Partitions {
    pub state: PathBuf,
    pub data: PathBuf,
}

/// The opened volumes' device nodes.
#[derive(Debug, Clone)]
pub struct Opened {
    pub state: PathBuf,
    pub data: PathBuf,
}

/// Whether a partition holds LUKS2 or something else (the plain seed, or nothing).
pub fn is_luks(dev: &Path) -> Result<bool, String> {
    let f = File::open(dev).map_err(|e| format!("opening {}: {e}", dev.display()))?;
    let mut magic = [0u8; 6];
    f.read_exact_at(&mut magic, 0)
        .map_err(|e| format!("reading {}: {e}", dev.display()))?;
    // A torn write of the primary header leaves the secondary copy, which opens the volume.
    Ok(&magic == b"LUKS\xba\xbe" || Luks2::open(&f).is_ok())
}

/// The TPM, once its device node is there (the driver may still be probing), or `None`.
pub fn open_tpm(wait: Duration) -> Option<Result<Tpm, String>> {
    // Init loaded the drivers before cairnd started: no TPM class device, no TPM.
    let any = fs::read_dir("/sys/class/tpm").is_ok_and(|mut d| d.next().is_some());
    if !any {
        return None;
    }
    if !crate::block::wait_for_path(Path::new(TPM_DEVICE), wait) {
        return None;
    }
    Some(Tpm::open_device(TPM_DEVICE).map_err(|e| format!("opening {TPM_DEVICE}: {e}")))
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`, the same number on x86_64 and aarch64.
const RNDADDENTROPY: u32 = 0x4008_5203;

/// Bytes taken from the TPM, and the entropy credited for them (half a bit per bit).
const SEED_BYTES: usize = 64;
const SEED_CREDIT_BITS: i32 = 256;

/// Feeds the kernel's random pool from the TPM's generator and credits it, as rngd does with a
/// TPM source, when the pool is not yet initialised; returns whether it did.
///
/// Until the pool is initialised getrandom(2) blocks, and cairnd's first call (the policy
/// session's nonce, on the unlock path) would wait for the kernel's own jitter entropy: about a
/// second on a board without a CPU random instruction, such as the qemu-aarch64 Cortex-A57.
pub fn seed_kernel_random(tpm: &mut Tpm) -> Result<bool, String> {
    let mut probe = [0u8; 1];
    // SAFETY: probe is a valid, writable one-byte buffer.
    let n = unsafe { libc::getrandom(probe.as_mut_ptr().cast(), 1, libc::GRND_NONBLOCK) };
    if n == 1 {
        return Ok(false);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EAGAIN) {
        return Err(format!("getrandom: {err}"));
    }
    #[repr(C)]
    struct RandPoolInfo {
        entropy_count: i32,
        buf_size: i32,
        buf: [u8; SEED_BYTES],
    }
    let mut pool = RandPoolInfo {
        entropy_count: SEED_CREDIT_BITS,
        buf_size: SEED_BYTES as i32,
        buf: [0; SEED_BYTES],
    };
    let credit = |pool: &RandPoolInfo| -> Result<(), String> {
        let random = OpenOptions::new()
            .write(true)
            .open("/dev/random")
            .map_err(|e| format!("opening /dev/random: {e}"))?;
        // SAFETY: pool is a live rand_pool_info whose buf_size matches its buffer; the kernel
        // only reads it.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&random),
                RNDADDENTROPY as _,
                pool as *const RandPoolInfo,
            )
        };
        if rc != 0 {
            return Err(format!(
                "RNDADDENTROPY: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    };
    let result = fill_from_tpm(tpm, &mut pool.buf).and_then(|()| credit(&pool));
    zeroize::Zeroize::zeroize(&mut pool.buf);
    result.map(|()| true)
}

/// Fills `buf` from `TPM2_GetRandom`, which answers at most a digest's worth per call.
fn fill_from_tpm(tpm: &mut Tpm, buf: &mut [u8]) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        let want = (buf.len() - filled).min(32) as u16;
        let bytes = tpm.get_random(want).map_err(|e| e.to_string())?;
        if bytes.is_empty() {
            return Err("TPM2_GetRandom returned no bytes".into());
        }
        let take = bytes.len().min(buf.len() - filled);
        buf[filled..filled + take].copy_from_slice(&bytes[..take]);
        filled += take;
    }
    Ok(())
}

/// A fresh recovery key: 32 random bytes as 8 dash-separated groups of 8 modhex characters.
pub fn new_recovery_key() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
    let mut key = Zeroizing::new(String::with_capacity(71));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            key.push('-');
        }
        key.push(MODHEX[usize::from(b >> 4)] as char);
        key.push(MODHEX[usize::from(b & 15)] as char);
    }
    key
}

/// A recovery key as typed: surrounding space and case do not matter, and it must look like
/// one (so a typo is named as such rather than tried against argon2id twice).
pub fn normalize_recovery_key(typed: &str) -> Result<Zeroizing<String>, String> {
    let key = Zeroizing::new(typed.trim().to_ascii_lowercase());
    let groups: Vec<&str> = key.split('-').collect();
    let well_formed = groups.len() == 8
        && groups
            .iter()
            .all(|g| g.len() == 8 && g.bytes().all(|c| MODHEX.contains(&c)));
    if !well_formed {
        return Err(
            "that is not a recovery key: 8 groups of 8 characters from cbdefghijklnrtuv, joined by dashes"
                .into(),
        );
    }
    Ok(key)
}

/// The passphrase of the TPM keyslot: the unsealed secret in base64, as systemd-cryptenroll
/// does.
fn tpm_passphrase(secret: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(secret))
}

fn open_rw(dev: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("opening {}: {e}", dev.display()))
}

fn size_of(file: &File, dev: &Path) -> Result<u64, String> {
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .map_err(|e| format!("sizing {}: {e}", dev.display()))
}

/// Maps a volume through dm-crypt as `name`, replacing a mapping a crashed earlier run left.
fn map(
    name: &str,
    luks: &Luks2,
    key: &VolumeKey,
    dev: &Path,
    file: &File,
) -> Result<PathBuf, String> {
    let size = size_of(file, dev)?;
    let table = dm_crypt::CryptTable::new(luks, key, dev, size)
        .map_err(|e| format!("{}: {e}", dev.display()))?;
    let _ = dm_crypt::remove(name);
    dm_crypt::activate(name, &table, false).map_err(|e| format!("mapping {}: {e}", dev.display()))
}

/// Writes zeros over all of `file`, so nothing of what it held is left in the clear.
fn wipe(file: &File, dev: &Path, beat: &dyn Fn()) -> Result<(), String> {
    let size = size_of(file, dev)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| format!("wiping {}: {e}", dev.display()))?;
        at += n as u64;
        beat();
    }
    file.sync_all()
        .map_err(|e| format!("wiping {}: {e}", dev.display()))
}

/// An empty ext4 file system (with its journal) on an opened volume, or on plain DATA.
pub fn make_ext4(dev: &Path, label: &str) -> Result<(), String> {
    let f = open_rw(dev)?;
    let opts = cairn_ext4::Options {
        label: label.into(),
        ..cairn_ext4::Options::default()
    };
    cairn_ext4::format_all(&f, &opts)
        .map(drop)
        .map_err(|e| format!("making an ext4 file system on {}: {e}", dev.display()))
}

/// Formats one volume: keyslot 0 for the TPM secret, keyslot 1 for the recovery key, the
/// sealed blob as token 0. Returns the header and the new volume key.
fn format_volume(
    dev: &Path,
    label: &str,
    tpm_pass: &[u8],
    recovery: &[u8],
    sealed: &SealedBlob,
) -> Result<(File, Luks2, VolumeKey), String> {
    let file = open_rw(dev)?;
    let key = VolumeKey::generate();
    let opts = FormatOptions {
        kdf: Kdf::Pbkdf2 {
            iterations: TPM_KEYSLOT_ITERATIONS,
        },
        digest_iterations: DIGEST_ITERATIONS,
        label: label.into(),
        ..FormatOptions::default()
    };
    let e = |what: &str| {
        let what = what.to_string();
        let dev = dev.display().to_string();
        move |e: cairn_luks::Error| format!("{what} {dev}: {e}")
    };
    let mut luks = Luks2::format(&file, &key, tpm_pass, &opts).map_err(e("formatting"))?;
    let slot = luks.keyslots()[0];
    luks.add_keyslot(
        &file,
        Credential::VolumeKey(&key),
        recovery,
        FormatOptions::default().kdf,
    )
    .map_err(e("adding the recovery keyslot to"))?;
    luks.add_token(&file, luks_token(sealed, slot)?)
        .map_err(e("adding the TPM token to"))?;
    file.sync_all()
        .map_err(|err| format!("syncing {}: {err}", dev.display()))?;
    Ok((file, luks, key))
}

/// A sealed blob as a LUKS2 token for `keyslot`.
fn luks_token(sealed: &SealedBlob, keyslot: u32) -> Result<cairn_luks::Token, String> {
    serde_json::from_str(&sealed.to_token_json(&[keyslot]))
        .map_err(|e| format!("encoding the TPM token: {e}"))
}

/// One of the two volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volume {
    State,
    Data,
}

impl Volume {
    /// The device-mapper name of its mapping.
    pub fn map_name(self) -> &'static str {
        match self {
            Volume::State => STATE_MAP,
            Volume::Data => DATA_MAP,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Volume::State => "cairn-state",
            Volume::Data => "cairn-data",
        }
    }

    /// The file system's label inside the volume.
    pub fn fs_label(self) -> &'static str {
        match self {
            Volume::State => "STATE",
            Volume::Data => "DATA",
        }
    }
}

/// What the TPM keyslot and token of a volume are made of: the sealed blob and the passphrase
/// its secret gives.
pub struct Seal {
    sealed: SealedBlob,
    pass: Zeroizing<String>,
}

/// Whether the firmware says Secure Boot is on (as `cairnctl health` reports it); `None` when
/// it cannot tell (no UEFI, or a variable that does not read).
pub fn secure_boot() -> Option<bool> {
    use crate::secureboot::SecureBoot;
    match crate::secureboot::read() {
        SecureBoot::On => Some(true),
        SecureBoot::Off => Some(false),
        SecureBoot::NotUefi | SecureBoot::Unknown => None,
    }
}

/// A small file, or `None` when it is not there.
fn read_small(path: &str) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let mut buf = Vec::new();
    file.take(PCR_FILE_LIMIT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{path}: {e}"))?;
    if buf.len() as u64 > PCR_FILE_LIMIT {
        return Err(format!("{path}: more than {PCR_FILE_LIMIT} bytes"));
    }
    Ok(Some(buf))
}

/// The booted UKI's PCR-signing public key (`.pcrpkey`), if it carries one.
pub fn booted_pcr_key() -> Result<Option<PcrPublicKey>, String> {
    read_small(PCR_PUBLIC_KEY)?
        .map(|pem| PcrPublicKey::from_pem(&pem).map_err(|e| format!("{PCR_PUBLIC_KEY}: {e}")))
        .transpose()
}

/// The booted UKI's PCR signature (`.pcrsig`).
pub fn booted_pcr_signature() -> Result<PcrSignature, String> {
    let json = read_small(PCR_SIGNATURE)?.ok_or_else(|| {
        format!("the booted kernel carries no PCR signature ({PCR_SIGNATURE} is missing)")
    })?;
    PcrSignature::from_json(&json).map_err(|e| format!("{PCR_SIGNATURE}: {e}"))
}

/// What a new seal is bound to.
#[derive(Debug, Clone)]
pub enum SealPolicy {
    /// The current values of these PCRs (a boot without a signed UKI).
    Pcrs(PcrSelection),
    /// Any PCR 11 the release key signs for a release at or above the TPM's anti-rollback floor,
    /// and the current values of `fixed` (the configured PCRs with Secure Boot on, none off).
    Signed {
        key: PcrPublicKey,
        fixed: PcrSelection,
        security_version: u64,
    },
}

impl SealPolicy {
    /// For the console: "PCR 7" or "signed PCR 11 (release key 0123abcd…) and PCR 7".
    pub fn describe(&self) -> String {
        let list = |p: &PcrSelection| {
            let l: Vec<String> = p.pcrs().iter().map(|p| p.to_string()).collect();
            l.join(", ")
        };
        match self {
            SealPolicy::Pcrs(p) => format!("PCR {}", list(p)),
            SealPolicy::Signed { key, fixed, .. } => {
                let mut s = format!(
                    "PCR 11 signed by the release key {} (with the anti-rollback floor)",
                    hex::encode(&key.fingerprint()[..8])
                );
                if !fixed.is_empty() {
                    s.push_str(&format!(" and PCR {}", list(fixed)));
                }
                s
            }
        }
    }
}

/// The policy a first boot seals with: signed when the booted UKI carries a PCR public key,
/// plus `pcrs` when Secure Boot is on. With `require_secure_boot` and Secure Boot off (or no
/// UEFI), a one-line refusal, before anything is changed.
pub fn seal_policy(
    pcrs: &PcrSelection,
    require_secure_boot: bool,
    security_version: u32,
) -> Result<SealPolicy, String> {
    let sb = secure_boot();
    if require_secure_boot && sb != Some(true) {
        return Err(format!(
            "storage.require_secure_boot is set and Secure Boot is {}: not encrypting",
            match sb {
                Some(_) => "off",
                None => "not available (no UEFI SecureBoot variable)",
            }
        ));
    }
    Ok(match booted_pcr_key()? {
        None => SealPolicy::Pcrs(pcrs.clone()),
        Some(key) => SealPolicy::Signed {
            key,
            fixed: if sb == Some(true) {
                pcrs.clone()
            } else {
                PcrSelection::none(PcrBank::Sha256)
            },
            security_version: u64::from(security_version),
        },
    })
}

/// Seals a fresh random secret with `policy` and checks it by unsealing it once, so nothing is
/// written with a seal that would not open. A signed policy raises the TPM's anti-rollback
/// floor to this release's security version first (it never lowers it).
pub fn new_seal(tpm: &mut Tpm, policy: &SealPolicy) -> Result<Seal, String> {
    let (secret, sealed) = match policy {
        SealPolicy::Pcrs(pcrs) => cairn_tpm::seal(tpm, pcrs, PrimaryAlg::Ecc),
        SealPolicy::Signed {
            key,
            fixed,
            security_version,
        } => {
            cairn_tpm::floor::raise(tpm, *security_version)
                .map_err(|e| format!("raising the TPM's anti-rollback floor: {e}"))?;
            cairn_tpm::seal_signed(tpm, key, fixed)
        }
    }
    .map_err(|e| format!("sealing the disk key in the TPM: {e}"))?;
    let check = unseal_blob(tpm, &sealed)
        .map_err(|e| format!("the new seal does not unseal, so it is not used: {e}"))?;
    if *check != *secret {
        return Err("the new seal unsealed another secret, so it is not used".into());
    }
    Ok(Seal {
        sealed,
        pass: tpm_passphrase(&secret),
    })
}

/// Unseals a blob: with the booted UKI's PCR signature when the blob's policy is signed.
fn unseal_blob(tpm: &mut Tpm, sealed: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, String> {
    match &sealed.signed {
        None => unseal_retrying(tpm, sealed, None).map_err(|e| e.to_string()),
        Some(_) => {
            let signature = booted_pcr_signature()?;
            unseal_retrying(tpm, sealed, Some(&signature)).map_err(|e| e.to_string())
        }
    }
}

/// Writes zeros over all of a partition and syncs: STATE held the image's seed in the clear.
pub fn wipe_partition(dev: &Path, beat: &dyn Fn()) -> Result<(), String> {
    wipe(&open_rw(dev)?, dev, beat)
}

/// Makes `dev` a LUKS2 volume (see the module docs) for `seal` and `recovery`, maps it and
/// puts an empty ext4 file system in it; returns the mapping's device node.
pub fn create_volume(
    dev: &Path,
    which: Volume,
    seal: &Seal,
    recovery: &str,
    beat: &dyn Fn(),
) -> Result<PathBuf, String> {
    beat();
    let (file, luks, key) = format_volume(
        dev,
        which.label(),
        seal.pass.as_bytes(),
        recovery.as_bytes(),
        &seal.sealed,
    )?;
    beat();
    let mapped = map(which.map_name(), &luks, &key, dev, &file)?;
    make_ext4(&mapped, which.fs_label())?;
    Ok(mapped)
}

/// Removes a mapping this module made, if it is there.
pub fn close(which: Volume) {
    let _ = dm_crypt::remove(which.map_name());
}

/// Why the TPM path did not open the volumes.
#[derive(Debug)]
pub enum TpmUnlockError {
    /// The TPM refused (the PCRs changed) or is gone: the recovery key is the way in.
    Refused(String),
    /// Anything else (a damaged header, a device-mapper failure).
    Failed(String),
}

/// How long the TPM path took, for the boot log.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnlockTimes {
    pub unseal: Duration,
    pub keyslots: Duration,
    pub total: Duration,
}

/// The `systemd-tpm2` tokens of a header: (token id, parsed token).
fn tpm_tokens(luks: &Luks2) -> Vec<(u32, Result<cairn_tpm::Token, String>)> {
    luks.tokens()
        .iter()
        .filter(|(_, t)| t.kind == TPM2_TOKEN)
        .map(|(id, t)| {
            let parsed = serde_json::to_string(t)
                .map_err(|e| e.to_string())
                .and_then(|json| cairn_tpm::Token::from_json(&json).map_err(|e| e.to_string()));
            (*id, parsed)
        })
        .collect()
}

fn read_header(dev: &Path) -> Result<(File, Luks2), String> {
    let file = open_rw(dev)?;
    let luks = Luks2::open(&file).map_err(|e| format!("{}: {e}", dev.display()))?;
    Ok((file, luks))
}

/// Unseals, trying once more when a PCR changed during the policy session (something else
/// extended a PCR at that moment; the next try sees the settled value).
fn unseal_retrying(
    tpm: &mut Tpm,
    sealed: &SealedBlob,
    signature: Option<&PcrSignature>,
) -> cairn_tpm::Result<Zeroizing<Vec<u8>>> {
    let once = |tpm: &mut Tpm| match signature {
        Some(sig) => cairn_tpm::unseal_signed(tpm, sealed, sig),
        None => cairn_tpm::unseal(tpm, sealed),
    };
    match once(tpm) {
        Err(e) if e.response_code().map(|c| c.base()) == Some(PCR_CHANGED) => once(tpm),
        other => other,
    }
}

/// `TPM_RC_PCR_CHANGED`.
const PCR_CHANGED: u32 = 0x128;

/// Unsealed secrets, kept while both volumes are opened: they carry the same sealed blob.
#[derive(Default)]
pub struct SecretCache(Vec<(SealedBlob, Zeroizing<Vec<u8>>)>);

/// Opens one volume with the secret sealed in the TPM, adding to `times`; returns the
/// mapping's device node and the seal that opened it.
pub fn unlock_volume(
    dev: &Path,
    which: Volume,
    tpm: Option<&mut Tpm>,
    cache: &mut SecretCache,
    times: &mut UnlockTimes,
) -> Result<(PathBuf, Seal), TpmUnlockError> {
    let start = Instant::now();
    let Some(tpm) = tpm else {
        return Err(TpmUnlockError::Refused(format!(
            "no TPM ({TPM_DEVICE} is missing)"
        )));
    };
    let (file, luks) = read_header(dev).map_err(TpmUnlockError::Failed)?;
    // Every systemd-tpm2 token in turn: an interrupted re-seal leaves the old one beside the
    // new one, and only the new one unseals.
    let mut refusals = Vec::new();
    let mut found = None;
    for (id, token) in tpm_tokens(&luks) {
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                refusals.push(format!("token {id}: {e}"));
                continue;
            }
        };
        let t = Instant::now();
        let secret = match cache.0.iter().find(|(b, _)| *b == token.sealed) {
            Some((_, s)) => s.clone(),
            None => match unseal_blob(tpm, &token.sealed) {
                Ok(s) => {
                    cache.0.push((token.sealed.clone(), s.clone()));
                    s
                }
                Err(e) => {
                    times.unseal += t.elapsed();
                    refusals.push(format!("token {id}: the TPM did not unseal it: {e}"));
                    continue;
                }
            },
        };
        times.unseal += t.elapsed();
        let t = Instant::now();
        let pass = tpm_passphrase(&secret);
        // Only the token's keyslots: the recovery keyslot would cost an argon2id run.
        for &slot in &token.keyslots {
            match luks.try_keyslot(&file, slot, pass.as_bytes()) {
                Ok(Some(k)) => {
                    found = Some((
                        k,
                        Seal {
                            sealed: token.sealed.clone(),
                            pass: pass.clone(),
                        },
                    ));
                    break;
                }
                Ok(None) => refusals.push(format!("token {id}: keyslot {slot} refuses it")),
                Err(e) => refusals.push(format!("token {id}: keyslot {slot}: {e}")),
            }
        }
        times.keyslots += t.elapsed();
        if found.is_some() {
            break;
        }
    }
    let Some((key, seal)) = found else {
        if refusals.is_empty() {
            refusals.push(format!("no {TPM2_TOKEN} token"));
        }
        times.total += start.elapsed();
        return Err(TpmUnlockError::Refused(format!(
            "{}: {}",
            dev.display(),
            refusals.join("; ")
        )));
    };
    let mapped = map(which.map_name(), &luks, &key, dev, &file).map_err(TpmUnlockError::Failed);
    times.total += start.elapsed();
    Ok((mapped?, seal))
}

/// Opens both volumes with the recovery key and, when there is a TPM, seals a new secret to the
/// PCRs as they are now: a new keyslot and token are added before the old ones are removed, so
/// an interruption leaves a volume the recovery key still opens. Returns what it did.
pub fn unlock_with_recovery(
    parts: &Partitions,
    tpm: Option<&mut Tpm>,
    typed: &str,
) -> Result<(Opened, String), String> {
    let recovery = normalize_recovery_key(typed)?;
    // Check the key on both volumes before changing anything.
    let mut volumes = Vec::new();
    for dev in [&parts.state, &parts.data] {
        let (file, luks) = read_header(dev)?;
        let (slot, key) = luks
            .unlock(&file, recovery.as_bytes())
            .map_err(|e| match e {
                cairn_luks::Error::WrongPassphrase => {
                    format!("the recovery key opens no keyslot of {}", dev.display())
                }
                e => format!("{}: {e}", dev.display()),
            })?;
        volumes.push((dev, file, luks, slot, key));
    }
    // Open first: a TPM that cannot seal must not keep a right key out.
    let mut opened = Vec::new();
    for ((dev, file, luks, _, key), name) in volumes.iter().zip([STATE_MAP, DATA_MAP]) {
        opened.push(map(name, luks, key, dev, file)?);
    }
    let data = opened.pop().expect("two volumes");
    let state = opened.pop().expect("two volumes");
    let mut message = String::from("unlocked STATE and DATA with the recovery key");
    match tpm {
        Some(tpm) => match reseal(tpm, &mut volumes) {
            Ok(policy) => {
                message.push_str(&format!("; sealed a new key to {policy} as they are now"))
            }
            Err(e) => message.push_str(&format!(
                "; sealing a new key failed ({e}), so the next boot needs the recovery key again"
            )),
        },
        None => message.push_str("; no TPM, so the next boot needs the recovery key again"),
    }
    Ok((Opened { state, data }, message))
}

/// An opened volume during a recovery: device, header file, header, recovery keyslot, key.
type Recovered<'a> = (&'a PathBuf, File, Luks2, u32, VolumeKey);

/// Seals a new secret to the PCRs the volumes were sealed to, as they are now: a new keyslot
/// and token on each volume first, then the old TPM tokens and keyslots go, so an interruption
/// leaves volumes that the recovery key, and one of the tokens, still open. Returns the PCR
/// list.
fn reseal(tpm: &mut Tpm, volumes: &mut [Recovered<'_>]) -> Result<String, String> {
    // Keep the policy the volumes were sealed with (the config that chose it is on the locked
    // STATE): the token's PCRs, and its release key when it is signed; PCR 7 when the token is
    // unreadable.
    let sealed_with = tpm_tokens(&volumes[0].2)
        .into_iter()
        .find_map(|(_, t)| t.ok())
        .map(|t| t.sealed);
    let policy = match sealed_with {
        Some(SealedBlob {
            signed: Some(key),
            pcrs,
            ..
        }) => SealPolicy::Signed {
            key,
            fixed: pcrs,
            security_version: u64::from(release_security_version()),
        },
        Some(blob) => SealPolicy::Pcrs(blob.pcrs),
        None => SealPolicy::Pcrs(PcrSelection::sha256(&[7]).expect("PCR 7 is valid")),
    };
    // Sealed and checked by unsealing once before either volume changes.
    let Seal { sealed, pass } = new_seal(tpm, &policy)?;
    for (dev, file, luks, recovery_slot, key) in volumes.iter_mut() {
        let old: Vec<(u32, Vec<u32>)> = tpm_tokens(luks)
            .into_iter()
            .map(|(id, t)| (id, t.map(|t| t.keyslots).unwrap_or_default()))
            .collect();
        let e = |what: &'static str| {
            let dev = dev.display().to_string();
            move |e: cairn_luks::Error| format!("{what} {dev}: {e}")
        };
        let slot = luks
            .add_keyslot(
                file,
                Credential::VolumeKey(key),
                pass.as_bytes(),
                Kdf::Pbkdf2 {
                    iterations: TPM_KEYSLOT_ITERATIONS,
                },
            )
            .map_err(e("adding the new TPM keyslot to"))?;
        luks.add_token(file, luks_token(&sealed, slot)?)
            .map_err(e("adding the new TPM token to"))?;
        for (id, slots) in old {
            luks.remove_token(file, id)
                .map_err(e("removing the old TPM token from"))?;
            for s in slots {
                if s != *recovery_slot && s != slot && luks.keyslots().contains(&s) {
                    luks.remove_keyslot(file, s)
                        .map_err(e("removing the old TPM keyslot from"))?;
                }
            }
        }
        file.sync_all()
            .map_err(|err| format!("syncing {}: {err}", dev.display()))?;
    }
    Ok(policy.describe())
}

/// Raises the TPM's anti-rollback floor to a committed release's security version, on a box
/// whose disks are sealed with a signed policy (its first boot defined the floor; a box without
/// one is left alone). Returns a line for the console when the floor moved or could not.
pub fn raise_tpm_floor(security_version: u32) -> Option<String> {
    let mut tpm = match open_tpm(Duration::from_secs(2))? {
        Ok(t) => t,
        Err(e) => return Some(format!("TPM anti-rollback floor not raised: {e}")),
    };
    let v = u64::from(security_version);
    match cairn_tpm::floor::read(&mut tpm) {
        Ok(None) => None,
        Ok(Some(f)) if f >= v => None,
        Ok(Some(f)) => Some(match cairn_tpm::floor::raise(&mut tpm, v) {
            Ok(now) => format!(
                "TPM anti-rollback floor raised from {f} to {now}: releases below it cannot unseal"
            ),
            Err(e) => format!("TPM anti-rollback floor not raised: {e}"),
        }),
        Err(e) => Some(format!("TPM anti-rollback floor not raised: {e}")),
    }
}

/// This release's security version (`/etc/cairn/release`), 0 when unreadable.
pub fn release_security_version() -> u32 {
    fs::read_to_string(crate::system::RELEASE)
        .ok()
        .and_then(|t| crate::system::Release::parse(&t).ok())
        .map_or(0, |r| r.security_version)
}

/// A folder's contents in memory: (relative path, bytes), directories with `None`.
pub type Tree = Vec<(PathBuf, Option<Zeroizing<Vec<u8>>>)>;

/// Reads every file under `root` into memory.
pub fn read_tree(root: &Path) -> Result<Tree, String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| format!("listing {}: {e}", dir.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = rel.join(entry.file_name());
            let kind = entry
                .file_type()
                .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
            if kind.is_dir() {
                out.push((path.clone(), None));
                todo.push(path);
            } else if kind.is_file() {
                let bytes = fs::read(entry.path())
                    .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
                out.push((path, Some(Zeroizing::new(bytes))));
            }
        }
    }
    Ok(out)
}

/// Writes what [`read_tree`] read under `root`, creating `root` itself first: an empty tree
/// (a seed without API secrets) still leaves the folder, so what is written next to it lands.
pub fn write_tree(root: &Path, tree: &Tree) -> Result<(), String> {
    fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    for (rel, content) in tree {
        let path = root.join(rel);
        match content {
            None => fs::create_dir_all(&path),
            Some(bytes) => fs::write(&path, bytes.as_slice()),
        }
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Overwrites a file with zeros, syncs it and removes it.
pub fn shred(path: &Path) -> std::io::Result<()> {
    let len = fs::metadata(path)?.len();
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&vec![0u8; len as usize], 0)?;
    f.sync_all()?;
    drop(f);
    fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_keys_are_systemd_shaped_and_round_trip() {
        let a = new_recovery_key();
        let b = new_recovery_key();
        assert_ne!(*a, *b);
        assert_eq!(a.len(), 71);
        assert_eq!(a.split('-').count(), 8);
        let typed = format!("  {}\n", a.to_ascii_uppercase());
        assert_eq!(*normalize_recovery_key(&typed).unwrap(), *a);
    }

    #[test]
    fn malformed_recovery_keys_are_named() {
        for bad in ["", "abc", "cbdefghi-jklnrtuv", &"cbdefghi-".repeat(8)] {
            let e = normalize_recovery_key(bad).unwrap_err();
            assert!(e.starts_with("that is not a recovery key"), "{e}");
        }
        // 'a' is not modhex.
        let bad = ["cbdefgha"; 8].join("-");
        assert!(normalize_recovery_key(&bad).is_err());
    }

    #[test]
    fn the_tpm_passphrase_is_base64_of_the_secret() {
        assert_eq!(*tpm_passphrase(&[0xff, 0x00, 0x10]), "/wAQ");
    }

    #[test]
    fn trees_round_trip_and_shred_removes() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("api/device")).unwrap();
        fs::write(src.path().join("machine.yaml"), "a: 1\n").unwrap();
        fs::write(src.path().join("api/device/key.pem"), "secret").unwrap();
        let tree = read_tree(src.path()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        write_tree(dst.path(), &tree).unwrap();
        assert_eq!(
            fs::read(dst.path().join("api/device/key.pem")).unwrap(),
            b"secret"
        );
        assert_eq!(
            fs::read(dst.path().join("machine.yaml")).unwrap(),
            b"a: 1\n"
        );
        shred(&dst.path().join("machine.yaml")).unwrap();
        assert!(!dst.path().join("machine.yaml").exists());
    }

    /// The seeds users build: nothing (no API secrets), a file at the top, a folder only. Each
    /// lands in a folder that does not exist yet, as DATA's provisioning copy does.
    #[test]
    fn every_seed_shape_is_written_into_a_new_folder() {
        let seeds: [&[(&str, Option<&str>)]; 3] = [
            &[],
            &[("machine.yaml", Some("a: 1\n"))],
            &[("api", None), ("api/client-ca.crt", Some("pem"))],
        ];
        for seed in seeds {
            let tree: Tree = seed
                .iter()
                .map(|(p, c)| {
                    (
                        PathBuf::from(p),
                        c.map(|c| Zeroizing::new(c.as_bytes().to_vec())),
                    )
                })
                .collect();
            let dst = tempfile::tempdir().unwrap();
            let copy = dst.path().join(".cairn-provisioning/seed");
            write_tree(&copy, &tree).unwrap();
            assert!(copy.is_dir());
            assert_eq!(read_tree(&copy).unwrap(), tree);
            fs::write(copy.parent().unwrap().join("recovery-key"), "k").unwrap();
        }
    }

    /// The whole LUKS side of provisioning and both unlock paths, on plain files with a
    /// software TPM would need swtpm: see systest's storage test. Here: a header formatted by
    /// [`format_volume`]'s options opens with the base64 passphrase and with the recovery key.
    #[test]
    fn both_keyslots_open_a_volume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let f = File::create(&path).unwrap();
        f.set_len(20 << 20).unwrap();
        drop(f);
        let file = open_rw(&path).unwrap();
        let key = VolumeKey::generate();
        let pass = tpm_passphrase(&[7u8; 32]);
        let opts = FormatOptions {
            kdf: Kdf::Pbkdf2 {
                iterations: TPM_KEYSLOT_ITERATIONS,
            },
            digest_iterations: DIGEST_ITERATIONS,
            ..FormatOptions::default()
        };
        let mut luks = Luks2::format(&file, &key, pass.as_bytes(), &opts).unwrap();
        let recovery = new_recovery_key();
        let cheap = Kdf::Argon2id {
            time: 1,
            memory_kib: 64,
            cpus: 1,
        };
        luks.add_keyslot(
            &file,
            Credential::VolumeKey(&key),
            recovery.as_bytes(),
            cheap,
        )
        .unwrap();
        let luks = Luks2::open(&file).unwrap();
        assert_eq!(
            luks.unlock(&file, pass.as_bytes()).unwrap().1.as_bytes(),
            key.as_bytes()
        );
        assert_eq!(
            luks.unlock(&file, recovery.as_bytes())
                .unwrap()
                .1
                .as_bytes(),
            key.as_bytes()
        );
        assert!(luks.unlock(&file, b"wrong").is_err());
    }
}
