//! Installing a bundle into the inactive slot of a systemd-boot device.
//!
//! Order of work, and what an interruption at each point leaves behind:
//!
//! 1. Read the header and manifest, verify the signature against the keyring, check the manifest
//!    against the device (board, arch, installed version, the security floor on STATE) and the
//!    payloads against the slot (roles, sizes). Nothing has been written; a refusal changes
//!    nothing.
//! 2. Refuse while the running slot is itself on trial (it must commit first: installing would
//!    overwrite the only known-good slot).
//! 3. Mark the target slot bad and forget its record on STATE ([`crate::state::SlotRecord`]).
//!    From here on nothing boots it until step 6; the running slot and its entry are never
//!    written.
//! 4. Stream each payload to its place, every chunk checked before it is written: `rootfs` onto
//!    the slot's ROOT partition, the slot's own UKI (`uki-<slot>.efi`, whose signed command line
//!    names the slot) to `EFI/Linux/.cairn-uki.tmp`, which systemd-boot ignores. Each is synced
//!    and read back, and the read-back's sha256 compared with the manifest ([`crate::stream`]).
//!    The other slot's UKI is hashed and dropped; `boot.json` is checked in memory.
//! 5. Record what the slot now holds and the trial on STATE ([`crate::state::SlotRecord`], and
//!    [`crate::state::TrialRecord`] with outcome `installing`).
//! 6. Rename the UKI to the slot's entry name (still bad, `+0-0`), then put it on trial
//!    ([`cairn_boot::Bootloader::set_trial`]), then record the outcome `installed`. The next
//!    reboot boots it, counted. A power cut before that last record leaves `installing`, which
//!    the other slot's next boot reports as an interrupted install (never booted, the version
//!    not held against it) rather than an abandoned trial.
//!
//! Memory use is bounded by [`crate::stream::IN_FLIGHT`] chunks (a chunk is at most 16 MiB) and
//! `boot.json` (64 KiB), whatever the bundle's size.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cairn_boot::fs::DirFs;
use cairn_boot::sdboot::{self, SdBoot};
use cairn_boot::{Bootloader, Slot};
use cairn_bundle::{DeviceFacts, Keyring, Manifest, Role};
use cairn_facts::bootspec::{self, BootSpec};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::state::{Outcome, SlotRecord, SlotSource, StateDir, TrialRecord};
use crate::stream;

pub use cairn_facts::config::DEFAULT_TRIES;
pub use cairn_facts::layout::{uki_payload, MAX_BOOT_FILE};

/// Where each slot's parts live on this device.
#[derive(Debug, Clone)]
pub struct Layout {
    /// ROOT-A and ROOT-B (block devices on a device, files in tests), by [`Slot::index`].
    pub roots: [PathBuf; 2],
    /// The ESP, mounted read-write.
    pub esp: PathBuf,
}

/// Phases reported to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Signature, manifest and policy checks.
    Verifying,
    /// Streaming a payload into the slot.
    Writing,
    /// Boot entry and trial.
    Arming,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Verifying => "verifying",
            Phase::Writing => "writing",
            Phase::Arming => "arming",
        }
    }
}

/// Where an install stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// The payload being written (empty outside [`Phase::Writing`]).
    pub payload: String,
    /// Payload bytes written so far, over all payloads.
    pub done: u64,
    /// All payload bytes of the bundle (0 until the manifest is verified).
    pub total: u64,
}

/// A finished install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub slot: Slot,
    pub version: String,
    pub security_version: u32,
    pub bytes: u64,
}

/// Everything an install needs to know about the device.
pub struct Installer<'a> {
    pub keyring: &'a Keyring,
    /// Board, arch and installed version; the security floor is read from `state`.
    pub device: DeviceFacts,
    pub running: Slot,
    pub layout: Layout,
    pub state: StateDir,
    pub tries: u32,
}

/// The payload indexes by role, checked.
struct Plan {
    rootfs: usize,
}

impl Plan {
    fn of(m: &Manifest) -> Result<Plan> {
        let one = |role: Role| -> Result<usize> {
            let found: Vec<usize> = (0..m.payloads.len())
                .filter(|&i| m.payloads[i].role == role)
                .collect();
            match found[..] {
                [i] => Ok(i),
                _ => Err(Error::Unsuitable(format!(
                    "a bundle for this device needs exactly one {role} payload, this one has {}",
                    found.len()
                ))),
            }
        };
        let rootfs = one(Role::Rootfs)?;
        for role in [Role::Kernel, Role::Initramfs] {
            if m.payloads.iter().any(|p| p.role == role) {
                return Err(Error::Unsuitable(format!(
                    "this device boots unified kernel images: the bundle must carry uki-a.efi \
                     and uki-b.efi, not a separate {role} payload (make it from an image built \
                     by this cairnctl)"
                )));
            }
        }
        let ukis: Vec<&cairn_bundle::PayloadEntry> =
            m.payloads.iter().filter(|p| p.role == Role::Uki).collect();
        let mut names: Vec<&str> = ukis.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        let wanted = [uki_payload("a"), uki_payload("b")];
        if names != wanted {
            return Err(Error::Unsuitable(format!(
                "a bundle for this device needs exactly the uki payloads {wanted:?}, this one has \
                 {names:?}"
            )));
        }
        for p in ukis {
            if p.size > MAX_BOOT_FILE {
                return Err(Error::TooBig {
                    payload: p.name.clone(),
                    size: p.size,
                    target: "the ESP".into(),
                    capacity: MAX_BOOT_FILE,
                });
            }
        }
        let (role, name) = (Role::BootFiles, bootspec::PAYLOAD_NAME);
        let p = &m.payloads[one(role)?];
        if p.name != name {
            return Err(Error::Unsuitable(format!(
                "the {role} payload must be named {name:?}, not {:?}",
                p.name
            )));
        }
        if p.size > bootspec::MAX_LEN {
            return Err(Error::TooBig {
                payload: p.name.clone(),
                size: p.size,
                target: "the boot partition".into(),
                capacity: bootspec::MAX_LEN,
            });
        }
        Ok(Plan { rootfs })
    }
}

fn size_of(file: &mut File, path: &Path) -> Result<u64> {
    file.seek(SeekFrom::End(0))
        .map_err(|e| Error::io("measuring", path, e))
}

impl Installer<'_> {
    /// Installs the bundle read from `reader` into the slot that is not running. `source_len` is
    /// the input's length when known (a file): a bundle of another length than its manifest
    /// describes is then refused before anything is written.
    pub fn install<R: Read>(
        &self,
        reader: R,
        source_len: Option<u64>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Installed> {
        let slot = self.running.other();
        let mut report = Progress {
            phase: Phase::Verifying,
            payload: String::new(),
            done: 0,
            total: 0,
        };
        progress(&report);

        // 1. Nothing is written until the bundle and the device agree.
        let mut bundle = cairn_bundle::open_verified(reader, self.keyring)?;
        let manifest = bundle.manifest().clone();
        let expected = bundle.expected_len();
        match source_len {
            Some(len) if len < expected => {
                return Err(cairn_bundle::Error::Truncated {
                    expected: expected - len,
                    what: "the bundle file".into(),
                }
                .into())
            }
            Some(len) if len > expected => {
                return Err(cairn_bundle::Error::TrailingData { offset: expected }.into())
            }
            _ => {}
        }
        let device = DeviceFacts {
            security_floor: self.state.security_floor()?,
            ..self.device.clone()
        };
        cairn_bundle::check_install(&manifest, &device)?;
        let plan = Plan::of(&manifest)?;
        let rootfs = &manifest.payloads[plan.rootfs];
        let root_path = &self.layout.roots[slot.index()];
        let root_name = slot.root_label().to_string();
        let mut root = File::options()
            .read(true)
            .write(true)
            .open(root_path)
            .map_err(|e| Error::io("opening", root_path, e))?;
        let capacity = size_of(&mut root, root_path)?;
        if rootfs.size > capacity {
            return Err(Error::TooBig {
                payload: rootfs.name.clone(),
                size: rootfs.size,
                target: root_name,
                capacity,
            });
        }
        report.total = manifest.payloads.iter().map(|p| p.size).sum();

        // 2. and 3.
        let mut boot = SdBoot::new(DirFs::new(&self.layout.esp), Some(self.running));
        if boot.status()?.trial {
            return Err(Error::RunningOnTrial {
                running: self.running,
            });
        }
        boot.mark_bad(slot)?;
        self.state.clear_slot(slot)?;

        // 4.
        bundle.defer_payload_hashes();
        let uki_dir = self.layout.esp.join(sdboot::UKI_DIR);
        fs::create_dir_all(&uki_dir).map_err(|e| Error::io("creating", &uki_dir, e))?;
        let own_uki = uki_payload(slot.name());
        let mut spec_bytes = Vec::new();
        let mut done_before = 0u64;
        while let Some(mut payload) = bundle.next_payload()? {
            let entry = payload.entry().clone();
            report.phase = Phase::Writing;
            report.payload = entry.name.clone();
            report.done = done_before;
            progress(&report);
            let mut on_bytes = |n: u64| {
                report.done = done_before + n;
                progress(&report);
            };
            match entry.role {
                Role::BootFiles => {
                    payload
                        .read_to_end(&mut spec_bytes)
                        .map_err(cairn_bundle::Error::from_io)?;
                    // The reader leaves whole-payload hashes to us (see stream).
                    if <[u8; 32]>::from(Sha256::digest(&spec_bytes)) != entry.sha256 {
                        return Err(cairn_bundle::Error::PayloadMismatch {
                            payload: entry.name,
                        }
                        .into());
                    }
                    // boot.json must describe the rootfs (the command line itself is in the
                    // UKI); checked before the UKI is written.
                    BootSpec::parse(&spec_bytes, rootfs.size)
                        .map_err(|e| Error::BootSpec(e.to_string()))?;
                }
                Role::Rootfs => {
                    stream::write_checked(
                        &root,
                        &root_name,
                        &entry.name,
                        entry.sha256,
                        |spare| Ok(payload.take_chunk(spare)?),
                        &mut on_bytes,
                    )?;
                }
                Role::Uki if entry.name == own_uki => {
                    let temp = uki_dir.join(sdboot::UKI_TEMP_NAME);
                    let file = File::options()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&temp)
                        .map_err(|e| Error::io("creating", &temp, e))?;
                    stream::write_checked(
                        &file,
                        &temp.display().to_string(),
                        &entry.name,
                        entry.sha256,
                        |spare| Ok(payload.take_chunk(spare)?),
                        &mut on_bytes,
                    )?;
                }
                Role::Uki => {
                    // The other slot's UKI: its command line names that slot. Checked like
                    // every payload, then dropped.
                    let mut hasher = Sha256::new();
                    let n = std::io::copy(&mut payload, &mut hasher)
                        .map_err(cairn_bundle::Error::from_io)?;
                    on_bytes(n);
                    if <[u8; 32]>::from(hasher.finalize()) != entry.sha256 {
                        return Err(cairn_bundle::Error::PayloadMismatch {
                            payload: entry.name,
                        }
                        .into());
                    }
                }
                Role::Kernel | Role::Initramfs => {
                    return Err(Error::Unsuitable(format!(
                        "payload {} is a separate {}; this device boots UKIs",
                        entry.name, entry.role
                    )))
                }
            }
            done_before += entry.size;
        }

        // 5. and 6.
        report.phase = Phase::Arming;
        report.payload.clear();
        progress(&report);
        let version = manifest.version.to_string();
        self.state.set_slot(
            slot,
            &SlotRecord {
                version: version.clone(),
                security_version: manifest.security_version,
                installed_unix_ms: unix_ms_now(),
                source: SlotSource::Bundle,
            },
        )?;
        let mut record = TrialRecord {
            slot: slot.to_string(),
            version: version.clone(),
            security_version: manifest.security_version,
            outcome: Outcome::Installing,
            reason: None,
        };
        self.state.set_trial(&record)?;
        boot.install_uki(slot)?;
        boot.set_trial(slot, self.tries)?;
        // Armed: from here a boot of the other slot means the trial was tried and abandoned,
        // not that the install was cut short.
        record.outcome = Outcome::Installed;
        self.state.set_trial(&record)?;
        Ok(Installed {
            slot,
            version,
            security_version: manifest.security_version,
            bytes: report.total,
        })
    }
}

/// Now, in milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
