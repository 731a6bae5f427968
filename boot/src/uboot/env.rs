//! The U-Boot environment block in its redundant layout, byte-compatible with U-Boot's `saveenv`
//! (`CONFIG_SYS_REDUNDAND_ENVIRONMENT`) and libubootenv's `fw_setenv`.
//!
//! The environment lives in two copies of `size` bytes each. One copy is
//!
//! ```text
//! offset 0  crc32 (IEEE, little-endian u32) over bytes 5..size
//! offset 4  flags: a serial counter, one byte
//! offset 5  "key=value\0key=value\0...\0" then padding up to size
//! ```
//!
//! Variables are written sorted by name (U-Boot's `hexport_r` and libubootenv both sort). U-Boot
//! pads with 0x00; libubootenv 0.3 leaves its buffer uninitialised, so the padding is whatever was
//! in memory; `mkenvimage` pads with 0xff. The CRC covers the padding, so a reader must take it
//! as it is and stop at the empty string that ends the list.
//!
//! The one idea: a write never touches the copy that is in use. The active copy is the one whose
//! CRC holds; if both hold, the one with the higher flags byte, where 0 beats 255 (the counter
//! wraps), and the first copy wins a tie. A write goes to the other copy with the active copy's
//! flags plus one (wrapping). A power cut during the write leaves that copy with a bad CRC, so
//! the old copy stays active: every write is atomic.
//!
//! (On NOR flash U-Boot uses a boolean active/obsolete flag instead, and libubootenv follows it
//! for MTD NOR devices only; files, block devices, NAND and UBI use the counter implemented here.)

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Error;

/// Bytes before the data area of a copy: the CRC and the flags byte.
pub const HEADER_LEN: usize = 5;

/// Longest variable name accepted. U-Boot has no fixed limit; nothing sane comes close.
pub const MAX_KEY_LEN: usize = 256;

/// Caps on what is read from a device, so a hostile or corrupt environment cannot make Cairn
/// allocate without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest size of one copy, header included.
    pub max_size: usize,
    /// Most variables in one environment.
    pub max_vars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // U-Boot environments are 8 KiB..128 KiB in practice; 1 MiB leaves room for any board.
        Limits {
            max_size: 1 << 20,
            max_vars: 4096,
        }
    }
}

impl Limits {
    /// The smallest copy: the header and an empty list (one NUL).
    pub const MIN_SIZE: usize = HEADER_LEN + 1;

    fn check_size(&self, size: usize) -> Result<(), Error> {
        if (Self::MIN_SIZE..=self.max_size).contains(&size) {
            Ok(())
        } else {
            Err(Error::EnvSize {
                size,
                min: Self::MIN_SIZE,
                max: self.max_size,
            })
        }
    }
}

/// Checks a variable name: printable ASCII without `=` (it ends the name) and not starting with
/// `#` (U-Boot's importer skips such entries as comments). No spaces either: U-Boot's text
/// import and `fw_setenv -s` split on them.
pub fn check_key(key: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::EnvKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("it is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("it is longer than 256 bytes");
    }
    if key.starts_with('#') {
        return bad("U-Boot reads a leading `#` as a comment");
    }
    if key.contains('=') {
        return bad("it contains `=`");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII without spaces is allowed");
    }
    Ok(())
}

/// Checks a value: anything but NUL, which ends it. An empty value is refused because U-Boot
/// reads `key=` as "delete key" while libubootenv keeps it: the two would disagree.
pub fn check_value(key: &str, value: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::EnvValue {
            key: key.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("it is empty (use unset to remove a variable)");
    }
    if value.contains('\0') {
        return bad("it contains a NUL byte");
    }
    Ok(())
}

/// The variables of one environment, kept sorted by name as U-Boot and libubootenv write them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    map: BTreeMap<String, String>,
}

impl Vars {
    pub fn new() -> Self {
        Vars::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        check_key(key)?;
        check_value(key, value)?;
        self.map.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Removes a variable, returning its value if it was set.
    pub fn unset(&mut self, key: &str) -> Option<String> {
        self.map.remove(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes the list takes in a data area, including the empty string that ends it.
    pub fn encoded_len(&self) -> usize {
        self.map
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
            + 1
    }

    /// Writes the list into a data area and zero-fills the rest, as U-Boot's `saveenv` does.
    fn encode_into(&self, data: &mut [u8]) -> Result<(), Error> {
        let needed = self.encoded_len();
        if needed > data.len() {
            return Err(Error::EnvFull {
                needed,
                available: data.len(),
            });
        }
        data.fill(0);
        let mut pos = 0;
        for (k, v) in &self.map {
            for part in [k.as_bytes(), b"=", v.as_bytes()] {
                data[pos..pos + part.len()].copy_from_slice(part);
                pos += part.len();
            }
            pos += 1; // the NUL is already there
        }
        Ok(())
    }

    /// Reads the list from a data area. Strict where U-Boot and libubootenv would disagree or
    /// where only corruption explains the bytes: an entry without `=`, a bad name, a duplicate,
    /// a list without its terminating empty string. An entry `key=` is skipped: U-Boot, the
    /// authority at boot, treats it as a deletion.
    fn decode(data: &[u8], limits: &Limits) -> Result<Vars, String> {
        let mut vars = Vars::new();
        let mut pos = 0;
        loop {
            let Some(len) = data[pos..].iter().position(|&b| b == 0) else {
                return Err("the variable list runs past the end of the data area".into());
            };
            if len == 0 {
                return Ok(vars);
            }
            let entry = &data[pos..pos + len];
            pos += len + 1;
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                return Err(format!(
                    "entry {:?} has no `=`",
                    String::from_utf8_lossy(entry)
                ));
            };
            let key = std::str::from_utf8(&entry[..eq])
                .map_err(|_| "a variable name is not UTF-8".to_string())?;
            check_key(key).map_err(|e| e.to_string())?;
            let value = std::str::from_utf8(&entry[eq + 1..])
                .map_err(|_| format!("the value of `{key}` is not UTF-8"))?;
            if value.is_empty() {
                continue;
            }
            if vars.map.len() == limits.max_vars {
                return Err(Error::EnvTooManyVars {
                    max: limits.max_vars,
                }
                .to_string());
            }
            if vars.map.insert(key.into(), value.into()).is_some() {
                return Err(format!("`{key}` is set twice"));
            }
        }
    }
}

/// One of the two copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvCopy {
    First,
    Second,
}

impl EnvCopy {
    pub fn other(self) -> EnvCopy {
        match self {
            EnvCopy::First => EnvCopy::Second,
            EnvCopy::Second => EnvCopy::First,
        }
    }

    /// 0 or 1: the line of fw_env.config that describes this copy.
    pub fn index(self) -> usize {
        match self {
            EnvCopy::First => 0,
            EnvCopy::Second => 1,
        }
    }
}

/// The CRC a copy must carry: crc32 over everything after the header.
pub fn data_crc(copy: &[u8]) -> u32 {
    crc32fast::hash(&copy[HEADER_LEN..])
}

/// The header of a copy whose CRC holds, or `None`.
pub fn valid_flags(copy: &[u8]) -> Option<u8> {
    if copy.len() < Limits::MIN_SIZE {
        return None;
    }
    let stored = u32::from_le_bytes([copy[0], copy[1], copy[2], copy[3]]);
    (stored == data_crc(copy)).then_some(copy[4])
}

/// Which copy is active, given the flags of the copies whose CRC holds. Mirrors U-Boot's
/// `env_import_redund` and libubootenv's `libuboot_load` (incremental flags).
pub fn select_active(first: Option<u8>, second: Option<u8>) -> Option<EnvCopy> {
    match (first, second) {
        (None, None) => None,
        (Some(_), None) => Some(EnvCopy::First),
        (None, Some(_)) => Some(EnvCopy::Second),
        (Some(a), Some(b)) => Some(match (a, b) {
            (255, 0) => EnvCopy::Second,
            (0, 255) => EnvCopy::First,
            (a, b) if b > a => EnvCopy::Second,
            _ => EnvCopy::First,
        }),
    }
}

/// Encodes one complete copy: header, list, zero padding.
pub fn encode_copy(vars: &Vars, size: usize, flags: u8) -> Result<Vec<u8>, Error> {
    let mut copy = vec![0u8; size];
    vars.encode_into(&mut copy[HEADER_LEN..])?;
    copy[4] = flags;
    let crc = data_crc(&copy);
    copy[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(copy)
}

/// A redundant environment held in memory: the variables, which copy they came from and its
/// flags. Knows where the next write must go; does no I/O itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedundantEnv {
    size: usize,
    active: EnvCopy,
    flags: u8,
    /// False for an environment that was never written: neither copy is valid yet.
    valid: bool,
    vars: Vars,
}

impl RedundantEnv {
    /// Parses the two copies as read from the device; each must be exactly `size` bytes.
    pub fn parse(first: &[u8], second: &[u8], limits: &Limits) -> Result<Self, Error> {
        let size = first.len();
        limits.check_size(size)?;
        if second.len() != size {
            return Err(Error::EnvCopyLength {
                got: second.len(),
                expected: size,
            });
        }
        let (f1, f2) = (valid_flags(first), valid_flags(second));
        let active = select_active(f1, f2).ok_or_else(|| Error::EnvNoValidCopy {
            location: "the given buffers".into(),
        })?;
        let (bytes, flags) = match active {
            EnvCopy::First => (first, f1),
            EnvCopy::Second => (second, f2),
        };
        let vars =
            Vars::decode(&bytes[HEADER_LEN..], limits).map_err(|reason| Error::EnvMalformed {
                copy: active.index() + 1,
                reason,
            })?;
        Ok(RedundantEnv {
            size,
            active,
            flags: flags.unwrap_or_default(),
            valid: true,
            vars,
        })
    }

    /// An environment for a device where neither copy is valid yet. As with `fw_setenv`, the
    /// first copy counts as active with flags 0, so the first write goes to the second copy with
    /// flags 1.
    pub fn blank(size: usize, limits: &Limits) -> Result<Self, Error> {
        limits.check_size(size)?;
        Ok(RedundantEnv {
            size,
            active: EnvCopy::First,
            flags: 0,
            valid: false,
            vars: Vars::new(),
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The copy the variables were read from (or last written to); `None` if never written.
    pub fn active(&self) -> Option<EnvCopy> {
        self.valid.then_some(self.active)
    }

    /// The flags byte of the active copy.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    pub fn vars(&self) -> &Vars {
        &self.vars
    }

    pub fn vars_mut(&mut self) -> &mut Vars {
        &mut self.vars
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key)
    }

    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        self.vars.set(key, value)
    }

    pub fn unset(&mut self, key: &str) -> Option<String> {
        self.vars.unset(key)
    }

    /// The next write: the inactive copy, and its full bytes with the flags one past the active
    /// copy's. Call [`RedundantEnv::committed`] once those bytes are durably stored.
    pub fn serialize(&self) -> Result<(EnvCopy, Vec<u8>), Error> {
        let target = self.active.other();
        Ok((
            target,
            encode_copy(&self.vars, self.size, self.flags.wrapping_add(1))?,
        ))
    }

    /// Records that the bytes from [`RedundantEnv::serialize`] reached the device.
    pub fn committed(&mut self) {
        self.active = self.active.other();
        self.flags = self.flags.wrapping_add(1);
        self.valid = true;
    }
}

/// Where the copies live: a byte-addressed medium that can be made durable.
pub trait Storage {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Returns once everything written so far is durable.
    fn sync(&mut self) -> io::Result<()>;
    /// For error messages: a path or a name.
    fn describe(&self) -> String;
}

/// A file or block device.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
}

impl FileStorage {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Io {
                action: "open",
                what: path.display().to_string(),
                source,
            })?;
        Ok(FileStorage {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl Storage for FileStorage {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// The order in which the sectors of one write reach the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistOrder {
    /// First sector first: the header lands before the data it covers.
    Forward,
    /// Last sector first: the header lands last.
    Reverse,
}

/// An in-memory medium for tests that can lose power. Sectors of [`MemStorage::SECTOR`] bytes
/// are atomic; after a power cut nothing more persists and every call fails, as if the process
/// had died. Clones share the medium, so both copies can live on one `MemStorage`.
#[derive(Debug, Clone)]
pub struct MemStorage {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Debug)]
struct MemInner {
    bytes: Vec<u8>,
    /// Sectors that may still persist before the power goes; `None` = no cut planned.
    budget: Option<usize>,
    order: PersistOrder,
    sectors_written: usize,
    cut: bool,
}

impl MemStorage {
    pub const SECTOR: usize = 512;

    pub fn new(bytes: Vec<u8>) -> Self {
        MemStorage {
            inner: Arc::new(Mutex::new(MemInner {
                bytes,
                budget: None,
                order: PersistOrder::Forward,
                sectors_written: 0,
                cut: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        // A panic while holding the lock can only come from a test assertion; the bytes are
        // still meaningful, so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets `sectors` more sectors persist, then cuts the power.
    pub fn cut_power_after(&self, sectors: usize, order: PersistOrder) {
        let mut inner = self.lock();
        inner.budget = Some(sectors);
        inner.order = order;
    }

    /// What survived: the medium's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Sectors persisted so far (a write of 8 KiB at an aligned offset counts 16).
    pub fn sectors_written(&self) -> usize {
        self.lock().sectors_written
    }

    pub fn power_was_cut(&self) -> bool {
        self.lock().cut
    }
}

fn power_cut() -> io::Error {
    io::Error::other("power cut (test double)")
}

impl Storage for MemStorage {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let inner = self.lock();
        if inner.cut {
            return Err(power_cut());
        }
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = inner
            .bytes
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.cut {
            return Err(power_cut());
        }
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start + data.len();
        if end > inner.bytes.len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // Split the write at absolute sector boundaries.
        let mut pieces = Vec::new();
        let mut pos = start;
        while pos < end {
            let next = ((pos / Self::SECTOR + 1) * Self::SECTOR).min(end);
            pieces.push(pos..next);
            pos = next;
        }
        if inner.order == PersistOrder::Reverse {
            pieces.reverse();
        }
        for piece in pieces {
            if let Some(budget) = inner.budget.as_mut() {
                if *budget == 0 {
                    inner.cut = true;
                    return Err(power_cut());
                }
                *budget -= 1;
            }
            let src = &data[piece.start - start..piece.end - start];
            inner.bytes[piece].copy_from_slice(src);
            inner.sectors_written += 1;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.lock().cut {
            return Err(power_cut());
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// One copy's place: a medium and the offset on it.
#[derive(Debug)]
pub struct Area<S> {
    pub storage: S,
    pub offset: u64,
}

impl<S: Storage> Area<S> {
    pub fn new(storage: S, offset: u64) -> Self {
        Area { storage, offset }
    }

    fn read(&mut self, size: usize) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; size];
        self.storage
            .read_at(self.offset, &mut buf)
            .map_err(|source| self.io_error("read", source))?;
        Ok(buf)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.storage
            .write_at(self.offset, bytes)
            .and_then(|()| self.storage.sync())
            .map_err(|source| self.io_error("write", source))
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> Error {
        Error::Io {
            action,
            what: format!("{} at offset {:#x}", self.storage.describe(), self.offset),
            source,
        }
    }

    fn describe(&self) -> String {
        format!("{}@{:#x}", self.storage.describe(), self.offset)
    }
}

/// The lock file libubootenv's `fw_printenv`/`fw_setenv` hold (flock, exclusive) while they read
/// and write; [`FwEnvConfig::open`] takes it too, so Cairn and those tools never interleave.
pub const FW_ENV_LOCK: &str = "/var/lock/fw_printenv.lock";

/// A redundant environment on storage: reads both copies, writes only the inactive one.
#[derive(Debug)]
pub struct EnvStore<S> {
    areas: [Area<S>; 2],
    limits: Limits,
    env: RedundantEnv,
    lock_file: Option<PathBuf>,
}

impl<S: Storage> EnvStore<S> {
    /// Opens an environment that has been written before; fails if neither copy is valid.
    pub fn open(
        first: Area<S>,
        second: Area<S>,
        size: usize,
        limits: Limits,
    ) -> Result<Self, Error> {
        limits.check_size(size)?;
        let mut areas = [first, second];
        let env = read_env(&mut areas, size, &limits)?;
        Ok(EnvStore {
            areas,
            limits,
            env,
            lock_file: None,
        })
    }

    /// Replaces the whole environment with `vars` in one write, whatever the copies hold. On a
    /// medium where no copy is valid this is what `fw_setenv` does on a blank device: the
    /// write goes to the second copy, flags 1. Otherwise it goes to the inactive copy as usual,
    /// even if the active one is malformed.
    pub fn format(
        first: Area<S>,
        second: Area<S>,
        size: usize,
        limits: Limits,
        vars: Vars,
    ) -> Result<Self, Error> {
        let mut areas = [first, second];
        let mut env = RedundantEnv::blank(size, &limits)?;
        let flags = [areas[0].read(size)?, areas[1].read(size)?].map(|c| valid_flags(&c));
        if let Some(active) = select_active(flags[0], flags[1]) {
            env.active = active;
            env.flags = flags[active.index()].unwrap_or_default();
            env.valid = true;
        }
        *env.vars_mut() = vars;
        let mut store = EnvStore {
            areas,
            limits,
            env,
            lock_file: None,
        };
        store.write()?;
        Ok(store)
    }

    /// Holds an exclusive flock on `path` during [`EnvStore::reload`] and [`EnvStore::update`],
    /// as libubootenv does around its read-modify-write. If the lock file cannot be opened
    /// (no `/var/lock`, no permission), the store goes on without it, as libubootenv does.
    pub fn with_lock_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.lock_file = Some(path.into());
        self
    }

    pub fn env(&self) -> &RedundantEnv {
        &self.env
    }

    pub fn vars(&self) -> &Vars {
        self.env.vars()
    }

    /// Re-reads both copies: someone else (`fw_setenv`, U-Boot) may have written since.
    pub fn reload(&mut self) -> Result<(), Error> {
        let _lock = self.lock()?;
        self.reload_locked()
    }

    fn reload_locked(&mut self) -> Result<(), Error> {
        self.env = read_env(&mut self.areas, self.env.size(), &self.limits)?;
        Ok(())
    }

    /// Re-reads, lets `change` edit the variables, and writes the result in one write. If
    /// `change` fails, nothing is written.
    pub fn update<T>(
        &mut self,
        change: impl FnOnce(&mut Vars) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let _lock = self.lock()?;
        self.reload_locked()?;
        let mut vars = self.env.vars().clone();
        let out = change(&mut vars)?;
        *self.env.vars_mut() = vars;
        self.write()?;
        Ok(out)
    }

    /// Writes the current variables to the inactive copy and makes it the active one. On error
    /// the in-memory view may be ahead of the device: reload before trusting it.
    pub fn write(&mut self) -> Result<(), Error> {
        let (target, bytes) = self.env.serialize()?;
        self.areas[target.index()].write(&bytes)?;
        self.env.committed();
        Ok(())
    }

    pub fn into_areas(self) -> [Area<S>; 2] {
        self.areas
    }

    /// The lock, released when the returned file is dropped.
    fn lock(&self) -> Result<Option<File>, Error> {
        let Some(path) = &self.lock_file else {
            return Ok(None);
        };
        let Ok(file) = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
        else {
            return Ok(None);
        };
        file.lock().map_err(|source| Error::Io {
            action: "lock",
            what: path.display().to_string(),
            source,
        })?;
        Ok(Some(file))
    }
}

fn read_env<S: Storage>(
    areas: &mut [Area<S>; 2],
    size: usize,
    limits: &Limits,
) -> Result<RedundantEnv, Error> {
    let first = areas[0].read(size)?;
    let second = areas[1].read(size)?;
    RedundantEnv::parse(&first, &second, limits).map_err(|e| match e {
        Error::EnvNoValidCopy { .. } => Error::EnvNoValidCopy {
            location: format!("{} and {}", areas[0].describe(), areas[1].describe()),
        },
        e => e,
    })
}

/// The two lines of an `fw_env.config` (libubootenv's plain format) that describe a redundant
/// environment: `<device> <offset> <size> [<sector size> [<sectors>]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    pub copies: [ConfigCopy; 2],
    /// Size of each copy, header included.
    pub size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigCopy {
    pub device: PathBuf,
    pub offset: u64,
}

impl FwEnvConfig {
    /// Parses the text the way libubootenv's `libuboot_read_config` does (`sscanf("%s %lli %zx
    /// ...")`): `#` starts a comment line; the offset is C integer syntax (`0x` hex, leading `0`
    /// octal, else decimal); the size is always hexadecimal, `0x` optional, so `4000` means
    /// 16 KiB. Stricter than libubootenv: a line it would skip silently is an error here, and
    /// so is a third entry, a negative offset (counted from the end of a block device), or a
    /// single entry (a non-redundant environment).
    pub fn parse(text: &str, path: &str) -> Result<Self, Error> {
        let err = |line: usize, reason: String| Error::FwEnvConfig {
            path: path.to_string(),
            line,
            reason,
        };
        // (line, device, offset, size)
        type Entry = (usize, PathBuf, u64, usize);
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.starts_with('#') || raw.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = raw.split_whitespace().collect();
            if fields.len() < 3 {
                return Err(err(line, "expected `<device> <offset> <size>`".to_string()));
            }
            if entries.len() == 2 {
                return Err(err(
                    line,
                    "a redundant environment has exactly two copies".into(),
                ));
            }
            let offset = parse_c_integer(fields[1])
                .ok_or_else(|| err(line, format!("offset {:?} is not a number", fields[1])))?;
            let offset = u64::try_from(offset).map_err(|_| {
                err(
                    line,
                    format!(
                        "offset {} counts from the device end; not supported",
                        fields[1]
                    ),
                )
            })?;
            let size = parse_hex(fields[2])
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| err(line, format!("size {:?} is not hexadecimal", fields[2])))?;
            entries.push((line, PathBuf::from(fields[0]), offset, size));
        }
        if entries.len() != 2 {
            return Err(err(
                entries.first().map_or(0, |e| e.0),
                format!(
                    "found {} environment copies; Cairn needs two (redundant)",
                    entries.len()
                ),
            ));
        }
        let (first, second) = (&entries[0], &entries[1]);
        if first.3 != second.3 {
            return Err(err(
                second.0,
                format!(
                    "size {:#x} differs from the first copy's {:#x}",
                    second.3, first.3
                ),
            ));
        }
        let copy = |e: &Entry| ConfigCopy {
            device: e.1.clone(),
            offset: e.2,
        };
        Ok(FwEnvConfig {
            copies: [copy(first), copy(second)],
            size: first.3,
        })
    }

    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "read",
            what: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The config text, readable by `fw_printenv -c` / `fw_setenv -c`.
    pub fn render(&self) -> String {
        let mut out = String::from("# Device\tOffset\tSize (hex)\n");
        for c in &self.copies {
            out += &format!(
                "{}\t{:#x}\t{:#x}\n",
                c.device.display(),
                c.offset,
                self.size
            );
        }
        out
    }

    /// Opens the devices the config names.
    pub fn open(&self, limits: Limits) -> Result<EnvStore<FileStorage>, Error> {
        let [a, b] = self.areas()?;
        let mut store = EnvStore::open(a, b, self.size, limits)?.with_lock_file(FW_ENV_LOCK);
        // Read again under the lock: a concurrent fw_setenv may have been mid-write.
        store.reload()?;
        Ok(store)
    }

    /// Writes `vars` as the first environment on the devices the config names.
    pub fn format(&self, limits: Limits, vars: Vars) -> Result<EnvStore<FileStorage>, Error> {
        let [a, b] = self.areas()?;
        Ok(EnvStore::format(a, b, self.size, limits, vars)?.with_lock_file(FW_ENV_LOCK))
    }

    fn areas(&self) -> Result<[Area<FileStorage>; 2], Error> {
        let area = |c: &ConfigCopy| Ok(Area::new(FileStorage::open(&c.device)?, c.offset));
        Ok([area(&self.copies[0])?, area(&self.copies[1])?])
    }
}

/// C's `%lli`: optional sign, then `0x` hex, leading `0` octal, or decimal.
fn parse_c_integer(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<u64>().ok()?
    };
    let value = i64::try_from(value).ok()?;
    Some(if neg { -value } else { value })
}

/// C's `%zx`: hexadecimal with an optional `0x`.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").or(s.strip_prefix("0X")).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 0x400;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::new();
        for (k, val) in pairs {
            v.set(k, val).unwrap();
        }
        v
    }

    #[test]
    fn crc_is_ieee_crc32_over_data_area_little_endian() {
        let copy = encode_copy(&vars(&[("a", "1")]), 16, 7).unwrap();
        // data area: "a=1\0" "\0" then zero padding to 11 bytes.
        assert_eq!(&copy[5..], b"a=1\0\0\0\0\0\0\0\0");
        assert_eq!(copy[4], 7);
        // crc32 of those 11 bytes, computed independently (zlib.crc32 in Python).
        assert_eq!(
            u32::from_le_bytes(copy[..4].try_into().unwrap()),
            0x5e9a_250d
        );
        assert_eq!(valid_flags(&copy), Some(7));
        let mut bad = copy.clone();
        bad[9] ^= 1;
        assert_eq!(valid_flags(&bad), None);
    }

    #[test]
    fn serializes_sorted_like_hexport() {
        let v = vars(&[("bootcmd", "run x"), ("BOOT_ORDER", "A B"), ("arch", "arm")]);
        let copy = encode_copy(&v, 64, 0).unwrap();
        assert!(copy[5..].starts_with(b"BOOT_ORDER=A B\0arch=arm\0bootcmd=run x\0\0"));
        assert_eq!(
            v.encoded_len(),
            "BOOT_ORDER=A B\0arch=arm\0bootcmd=run x\0\0".len()
        );
    }

    #[test]
    fn selects_higher_flag_with_wraparound() {
        use EnvCopy::*;
        assert_eq!(select_active(Some(1), Some(2)), Some(Second));
        assert_eq!(select_active(Some(9), Some(8)), Some(First));
        assert_eq!(select_active(Some(255), Some(0)), Some(Second));
        assert_eq!(select_active(Some(0), Some(255)), Some(First));
        assert_eq!(select_active(Some(254), Some(255)), Some(Second));
        assert_eq!(select_active(Some(4), Some(4)), Some(First));
        assert_eq!(select_active(None, Some(0)), Some(Second));
        assert_eq!(select_active(Some(200), None), Some(First));
        assert_eq!(select_active(None, None), None);
    }

    #[test]
    fn parse_takes_the_valid_copy_when_one_is_corrupt() {
        let old = encode_copy(&vars(&[("k", "old")]), SIZE, 3).unwrap();
        let mut new = encode_copy(&vars(&[("k", "new")]), SIZE, 4).unwrap();
        let env = RedundantEnv::parse(&old, &new, &Limits::default()).unwrap();
        assert_eq!(
            (env.active(), env.get("k")),
            (Some(EnvCopy::Second), Some("new"))
        );
        new[100] = 0xff; // a torn write
        let env = RedundantEnv::parse(&old, &new, &Limits::default()).unwrap();
        assert_eq!(
            (env.active(), env.get("k")),
            (Some(EnvCopy::First), Some("old"))
        );
        let garbage = vec![0xffu8; SIZE];
        assert!(matches!(
            RedundantEnv::parse(&garbage, &new, &Limits::default()),
            Err(Error::EnvNoValidCopy { .. })
        ));
    }

    #[test]
    fn writes_go_to_the_inactive_copy_and_wrap_the_counter() {
        let a = encode_copy(&vars(&[("k", "a")]), SIZE, 254).unwrap();
        let b = encode_copy(&vars(&[("k", "b")]), SIZE, 255).unwrap();
        let mut env = RedundantEnv::parse(&a, &b, &Limits::default()).unwrap();
        assert_eq!((env.active(), env.flags()), (Some(EnvCopy::Second), 255));
        env.set("k", "c").unwrap();
        let (target, bytes) = env.serialize().unwrap();
        assert_eq!((target, bytes[4]), (EnvCopy::First, 0));
        // The written copy (flags 0) beats the old one (255).
        let reread = RedundantEnv::parse(&bytes, &b, &Limits::default()).unwrap();
        assert_eq!(
            (reread.active(), reread.get("k")),
            (Some(EnvCopy::First), Some("c"))
        );
        env.committed();
        assert_eq!((env.active(), env.flags()), (Some(EnvCopy::First), 0));
        let (target, bytes) = env.serialize().unwrap();
        assert_eq!((target, bytes[4]), (EnvCopy::Second, 1));
    }

    #[test]
    fn accepts_any_padding_but_requires_a_terminated_list() {
        let mut copy = encode_copy(&vars(&[("x", "1")]), 32, 1).unwrap();
        // mkenvimage pads with 0xff; the CRC covers it.
        copy[5 + 5..].fill(0xff);
        let crc = data_crc(&copy);
        copy[..4].copy_from_slice(&crc.to_le_bytes());
        let env = RedundantEnv::parse(&copy, &copy, &Limits::default()).unwrap();
        assert_eq!(env.get("x"), Some("1"));

        let fix = |mut c: Vec<u8>| {
            let crc = data_crc(&c);
            c[..4].copy_from_slice(&crc.to_le_bytes());
            c
        };
        let mut unterminated = vec![0u8; 16];
        unterminated[5..].fill(b'a');
        unterminated[6] = b'=';
        let unterminated = fix(unterminated);
        let err = RedundantEnv::parse(&unterminated, &unterminated, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs past the end"), "{err}");

        let mut no_eq = vec![0u8; 16];
        no_eq[5..8].copy_from_slice(b"abc");
        let no_eq = fix(no_eq);
        let err = RedundantEnv::parse(&no_eq, &no_eq, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no `=`"), "{err}");

        let mut dup = vec![0u8; 16];
        dup[5..13].copy_from_slice(b"a=1\0a=2\0");
        let dup = fix(dup);
        assert!(RedundantEnv::parse(&dup, &dup, &Limits::default()).is_err());

        // `key=` is a deletion to U-Boot: absent.
        let mut empty = vec![0u8; 16];
        empty[5..12].copy_from_slice(b"a=\0b=2\0");
        let empty = fix(empty);
        let env = RedundantEnv::parse(&empty, &empty, &Limits::default()).unwrap();
        assert_eq!((env.get("a"), env.get("b")), (None, Some("2")));
    }

    #[test]
    fn enforces_limits() {
        let mut v = Vars::new();
        for bad in ["", "a=b", "#x", "a b", "tab\t", "é", &"k".repeat(257)] {
            assert!(
                matches!(v.set(bad, "1"), Err(Error::EnvKey { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(v.set("k", "a\0b"), Err(Error::EnvValue { .. })));
        assert!(matches!(v.set("k", ""), Err(Error::EnvValue { .. })));
        v.set("k", "multi\nline ok").unwrap();
        assert_eq!(v.unset("k").as_deref(), Some("multi\nline ok"));
        assert_eq!(v.unset("k"), None);

        v.set("big", &"x".repeat(20)).unwrap();
        // 5 header + "big=" 4 + 20 + NUL + terminator = 31 > 30.
        assert!(matches!(
            encode_copy(&v, 30, 0),
            Err(Error::EnvFull {
                needed: 26,
                available: 25
            })
        ));
        assert!(encode_copy(&v, 31, 0).is_ok());

        let limits = Limits {
            max_size: 64,
            max_vars: 2,
        };
        assert!(matches!(
            RedundantEnv::blank(65, &limits),
            Err(Error::EnvSize { size: 65, .. })
        ));
        assert!(matches!(
            RedundantEnv::blank(5, &limits),
            Err(Error::EnvSize { .. })
        ));
        let three = encode_copy(&vars(&[("a", "1"), ("b", "2"), ("c", "3")]), 64, 0).unwrap();
        assert!(matches!(
            RedundantEnv::parse(&three, &three, &limits),
            Err(Error::EnvMalformed { .. })
        ));
        let short = vec![0u8; 32];
        assert!(matches!(
            RedundantEnv::parse(&three, &short, &limits),
            Err(Error::EnvCopyLength {
                got: 32,
                expected: 64
            })
        ));
    }

    #[test]
    fn store_alternates_copies_and_survives_power_cuts() {
        let mem = MemStorage::new(vec![0u8; 2 * SIZE]);
        let areas = || {
            (
                Area::new(mem.clone(), 0),
                Area::new(mem.clone(), SIZE as u64),
            )
        };
        let (a, b) = areas();
        let mut store =
            EnvStore::format(a, b, SIZE, Limits::default(), vars(&[("n", "0")])).unwrap();
        assert_eq!(store.env().active(), Some(EnvCopy::Second));
        store.update(|v| v.set("n", "1")).unwrap();
        assert_eq!(store.env().active(), Some(EnvCopy::First));
        assert_eq!(store.env().flags(), 2);

        // Cut the power after each possible number of sectors of the next write.
        let sectors = SIZE / MemStorage::SECTOR;
        for order in [PersistOrder::Forward, PersistOrder::Reverse] {
            for n in 0..=sectors {
                let trial = MemStorage::new(mem.bytes());
                let (a, b) = (
                    Area::new(trial.clone(), 0),
                    Area::new(trial.clone(), SIZE as u64),
                );
                let mut s = EnvStore::open(a, b, SIZE, Limits::default()).unwrap();
                trial.cut_power_after(n, order);
                let result = s.update(|v| v.set("n", "2"));
                assert_eq!(result.is_ok(), n >= sectors, "{order:?} {n}");
                let after = MemStorage::new(trial.bytes());
                let (a, b) = (Area::new(after.clone(), 0), Area::new(after, SIZE as u64));
                let s = EnvStore::open(a, b, SIZE, Limits::default()).unwrap();
                let got = s.vars().get("n").unwrap();
                assert!(got == "1" || got == "2", "{order:?} {n}: {got}");
                if n == 0 {
                    assert_eq!(got, "1");
                }
                if n == sectors {
                    assert_eq!(got, "2");
                }
            }
        }
    }

    #[test]
    fn format_overwrites_an_existing_environment_through_the_inactive_copy() {
        let mut image = encode_copy(&vars(&[("old", "1")]), SIZE, 5).unwrap();
        image.extend(vec![0u8; SIZE]);
        let mem = MemStorage::new(image.clone());
        let area = |o| Area::new(mem.clone(), o);
        let store = EnvStore::format(
            area(0),
            area(SIZE as u64),
            SIZE,
            Limits::default(),
            vars(&[("new", "1")]),
        )
        .unwrap();
        assert_eq!(
            (store.env().active(), store.env().flags()),
            (Some(EnvCopy::Second), 6)
        );
        assert_eq!(
            &mem.bytes()[..SIZE],
            &image[..SIZE],
            "active copy untouched"
        );
        let reread = EnvStore::open(area(0), area(SIZE as u64), SIZE, Limits::default()).unwrap();
        assert_eq!(reread.vars(), &vars(&[("new", "1")]));
    }

    #[test]
    fn parses_fw_env_config_like_libubootenv() {
        let cfg = FwEnvConfig::parse(
            "# comment\n\n/dev/mmcblk0\t0x3fc000 0x4000\n/dev/mmcblk0  4177920  4000 0x200 1\n",
            "fw_env.config",
        )
        .unwrap();
        assert_eq!(cfg.size, 0x4000);
        assert_eq!(cfg.copies[0].offset, 0x3f_c000);
        assert_eq!(cfg.copies[1].offset, 4_177_920);
        assert_eq!(cfg.copies[1].device, PathBuf::from("/dev/mmcblk0"));
        let again = FwEnvConfig::parse(&cfg.render(), "x").unwrap();
        assert_eq!(again, cfg);
        assert_eq!(parse_c_integer("010"), Some(8));
        assert_eq!(parse_c_integer("-0x10"), Some(-16));

        for (text, needle) in [
            ("/dev/x 0 0x4000\n", "found 1"),
            ("/dev/x 0 0x4000\n/dev/x 0x4000 0x2000\n", "differs"),
            ("/dev/x -0x4000 0x4000\n/dev/x 0 0x4000\n", "device end"),
            ("/dev/x 0\n", "expected"),
            ("/dev/x 0 zz\n", "not hexadecimal"),
            ("/a 0 1\n/a 1 1\n/a 2 1\n", "exactly two"),
        ] {
            let err = FwEnvConfig::parse(text, "cfg").unwrap_err().to_string();
            assert!(err.starts_with("cfg line "), "{err}");
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
