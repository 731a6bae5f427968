//! What the updater keeps on the STATE partition, in one directory:
//!
//! | file | contents |
//! |---|---|
//! | `security-floor` | decimal `u32` and a newline: the lowest `security_version` this device accepts |
//! | `trial.json` | the last install and what became of it ([`TrialRecord`]) |
//! | `slot-a.json`, `slot-b.json` | what is in each slot and since when ([`SlotRecord`]) |
//!
//! A slot's record is removed before an install writes anything into the slot and written again
//! once the slot holds the whole new release, so a slot without a record holds nothing usable
//! (never installed, or an install that did not finish). The slot the image was written with
//! gets its record when it first boots.
//!
//! Each file is replaced whole: written under a temporary name, synced, renamed over the old one,
//! and the directory synced. A missing floor is 0 (a new device). A floor file that exists but
//! does not parse refuses every install rather than guessing a lower floor.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use cairn_boot::Slot;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const FLOOR_FILE: &str = "security-floor";
pub const TRIAL_FILE: &str = "trial.json";
const MAX_FILE: u64 = 64 * 1024;

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The slot is written and recorded; its trial is not armed yet. Found on the next boot of
    /// the other slot, the install stopped there (a power cut): see [`Outcome::Interrupted`].
    Installing,
    /// Installed, trial boot armed; nothing has run it yet.
    Installed,
    /// The trial booted and passed its health checks.
    Committed,
    /// The trial failed its health checks and was marked bad.
    RolledBack,
    /// The device came back up on the other slot without the trial reporting (crash, hang,
    /// watchdog, or boot counting ran out).
    Abandoned,
    /// The install stopped before the trial was armed: the slot was never booted, and the
    /// same version may be installed again.
    Interrupted,
}

/// The last install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialRecord {
    pub slot: String,
    pub version: String,
    pub security_version: u32,
    pub outcome: Outcome,
    /// Why it was rolled back or abandoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a slot's contents came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotSource {
    /// Found running with no record: written with the disk image (or by a release that kept
    /// no records); `installed_unix_ms` is when it was first seen running.
    Image,
    /// Installed from a bundle; `installed_unix_ms` is when the install finished.
    Bundle,
}

/// What one slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRecord {
    pub version: String,
    pub security_version: u32,
    /// Milliseconds since the Unix epoch.
    pub installed_unix_ms: i64,
    pub source: SlotSource,
}

/// The updater's directory on STATE.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The anti-rollback floor (0 when never set).
    pub fn security_floor(&self) -> Result<u32> {
        let path = self.root.join(FLOOR_FILE);
        let Some(text) = read_small(&path)? else {
            return Ok(0);
        };
        String::from_utf8(text)
            .ok()
            .and_then(|t| t.strip_suffix('\n').and_then(|n| n.parse().ok()))
            .ok_or_else(|| Error::State {
                path,
                reason: "expected a decimal number and a newline".into(),
            })
    }

    /// Raises the floor to `to`; a lower value leaves it as it is. Returns the floor now set.
    pub fn raise_floor(&self, to: u32) -> Result<u32> {
        let now = self.security_floor()?;
        if to <= now {
            return Ok(now);
        }
        replace(&self.root, FLOOR_FILE, format!("{to}\n").as_bytes())?;
        Ok(to)
    }

    pub fn trial(&self) -> Result<Option<TrialRecord>> {
        let path = self.root.join(TRIAL_FILE);
        let Some(bytes) = read_small(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State {
                path,
                reason: e.to_string(),
            })
    }

    pub fn set_trial(&self, record: &TrialRecord) -> Result<()> {
        let mut text = serde_json::to_string(record).expect("a record always serialises");
        text.push('\n');
        replace(&self.root, TRIAL_FILE, text.as_bytes())
    }

    /// What `slot` holds (None: nothing usable).
    pub fn slot(&self, slot: Slot) -> Result<Option<SlotRecord>> {
        let path = self.root.join(slot_file(slot));
        let Some(bytes) = read_small(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State {
                path,
                reason: e.to_string(),
            })
    }

    pub fn set_slot(&self, slot: Slot, record: &SlotRecord) -> Result<()> {
        let mut text = serde_json::to_string(record).expect("a record always serialises");
        text.push('\n');
        replace(&self.root, &slot_file(slot), text.as_bytes())
    }

    /// Forgets what `slot` held, durably: done before an install writes into it.
    pub fn clear_slot(&self, slot: Slot) -> Result<()> {
        let path = self.root.join(slot_file(slot));
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &path, e)),
        }
    }
}

fn slot_file(slot: Slot) -> String {
    format!("slot-{}.json", slot.name())
}

fn read_small(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("opening", path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("reading", path, e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(Error::State {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_FILE} bytes"),
        });
    }
    Ok(Some(bytes))
}

/// Replaces `dir/name` with `bytes` durably (temporary file, fsync, rename, fsync of the dir).
pub fn replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    replace_with_mode(&dir.join(name), bytes, 0o644)
}

/// Replaces `path` with `bytes` durably, the new file made with permission bits `mode` (less
/// the umask) from its first byte: `.name.tmp` beside it, written and synced, renamed over
/// `path`, synced again and its directory synced. A cut at any instant leaves the old file or
/// the new one, and at worst a stray `.name.tmp`, which the next write replaces.
pub fn replace_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.tmp"));
    // A scratch file left by a cut keeps its own mode if opened again: it goes first.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing", &temp, e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| Error::io("creating", &temp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("writing", &temp, e))?;
    drop(file);
    rename_durably(&temp, path)
}

/// Renames `from` to `to` (same directory) so that it survives a power cut: the renamed file is
/// synced again, because FAT keeps a file's size in its directory entry and Linux's vfat writes
/// the new entry's size only with the inode, and then the directory is synced.
pub fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io("renaming", to, e))?;
    File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("syncing", to, e))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_starts_at_zero_and_only_rises() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        assert_eq!(s.security_floor().unwrap(), 0);
        assert_eq!(s.raise_floor(3).unwrap(), 3);
        assert_eq!(s.raise_floor(2).unwrap(), 3);
        assert_eq!(s.security_floor().unwrap(), 3);
        assert_eq!(
            fs::read_to_string(dir.path().join(FLOOR_FILE)).unwrap(),
            "3\n"
        );
        assert!(!dir.path().join(".security-floor.tmp").exists());
    }

    #[test]
    fn a_private_file_is_never_readable_by_others_and_a_stale_scratch_is_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        // A scratch file a power cut left behind, world-readable and longer than the new text.
        fs::write(dir.path().join(".server.key.tmp"), "stale stale stale").unwrap();
        fs::set_permissions(
            dir.path().join(".server.key.tmp"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        replace_with_mode(&path, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        assert!(!dir.path().join(".server.key.tmp").exists());
        // Had the stale scratch file been opened again, it would have kept its 0644.
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn a_corrupt_floor_is_an_error_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FLOOR_FILE), "seven\n").unwrap();
        let err = StateDir::new(dir.path()).security_floor().unwrap_err();
        assert!(
            err.to_string()
                .ends_with("security-floor is corrupt: expected a decimal number and a newline"),
            "{err}"
        );
    }

    #[test]
    fn slot_records_are_kept_per_slot_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        assert_eq!(s.slot(Slot::B).unwrap(), None);
        let r = SlotRecord {
            version: "0.2.0".into(),
            security_version: 1,
            installed_unix_ms: 1_700_000_000_000,
            source: SlotSource::Bundle,
        };
        s.set_slot(Slot::B, &r).unwrap();
        assert_eq!(s.slot(Slot::B).unwrap(), Some(r));
        assert_eq!(s.slot(Slot::A).unwrap(), None);
        assert_eq!(
            fs::read_to_string(dir.path().join("slot-b.json")).unwrap(),
            "{\"version\":\"0.2.0\",\"security_version\":1,\"installed_unix_ms\":1700000000000,\
             \"source\":\"bundle\"}\n"
        );
        s.clear_slot(Slot::B).unwrap();
        assert_eq!(s.slot(Slot::B).unwrap(), None);
        s.clear_slot(Slot::B).unwrap();
        fs::write(dir.path().join("slot-a.json"), "{").unwrap();
        assert!(s.slot(Slot::A).is_err());
    }

    #[test]
    fn trial_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        assert_eq!(s.trial().unwrap(), None);
        let r = TrialRecord {
            slot: "b".into(),
            version: "0.2.0".into(),
            security_version: 1,
            outcome: Outcome::RolledBack,
            reason: Some("tcp 127.0.0.1:9: connection refused".into()),
        };
        s.set_trial(&r).unwrap();
        assert_eq!(s.trial().unwrap(), Some(r));
        assert!(fs::read_to_string(dir.path().join(TRIAL_FILE))
            .unwrap()
            .contains("\"outcome\":\"rolled-back\""));
    }
}
