//! The machine's UEFI variable store file, edited on the host between boots.
//!
//! The one job: put a SHA-256 hash into `dbx` (the forbidden-signatures database), which the
//! firmware measures into PCR 7 on every boot whether Secure Boot is on or not. A changed `dbx`
//! is the ordinary "Secure Boot configuration changed" event that makes a disk key sealed to
//! PCR 7 stop unsealing. Secure Boot itself stays off: no `PK` is written.
//!
//! The file is the pflash volume OVMF and AAVMF keep their variables in (EDK II's format, from
//! `MdeModulePkg/Include/Guid/VariableFormat.h` and `PiFirmwareVolume.h`):
//!
//! ```text
//! EFI_FIRMWARE_VOLUME_HEADER   FileSystemGuid = EFI_SYSTEM_NV_DATA_FV_GUID, FvLength @32,
//!                              "_FVH" @40, HeaderLength @48
//! VARIABLE_STORE_HEADER        (at HeaderLength, 28 bytes) Signature = authenticated-variable
//!                              GUID, Size (header included), Format 0x5A, State 0xFE
//! AUTHENTICATED_VARIABLE_HEADER (packed, 60 bytes) StartId 0x55AA, State, Attributes,
//!                              MonotonicCount, TimeStamp, PubKeyIndex, NameSize, DataSize,
//!                              VendorGuid; then the UTF-16LE name with its NUL, then the data;
//!                              the next header starts 4-byte aligned
//! ```
//!
//! The variables end at the first header without `StartId` 0x55AA; after them the store is
//! erased flash (0xFF). A variable is changed the way the firmware does it: the old copy is
//! marked deleted (`State &= 0xFD`) and a new one is appended.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// `EFI_SYSTEM_NV_DATA_FV_GUID`: the firmware volume holds non-volatile variables.
const NV_DATA_FV_GUID: [u8; 16] = guid(
    0xfff12b8d,
    0x7696,
    0x4c8b,
    [0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50],
);
/// `EFI_AUTHENTICATED_VARIABLE_GUID`: the store's variables carry authenticated headers.
const AUTH_STORE_GUID: [u8; 16] = guid(
    0xaaf32c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);
/// `EFI_VARIABLE_GUID`: a store with plain headers (firmware without authenticated variables).
const PLAIN_STORE_GUID: [u8; 16] = guid(
    0xddcf3616,
    0x3275,
    0x4164,
    [0x98, 0xb6, 0xfe, 0x85, 0x70, 0x7f, 0xfe, 0x7d],
);
/// `EFI_IMAGE_SECURITY_DATABASE_GUID`: the vendor of `db`, `dbx`, `dbt`.
pub const IMAGE_SECURITY_DATABASE_GUID: [u8; 16] = guid(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// `EFI_CERT_SHA256_GUID`: a signature list of SHA-256 hashes.
const CERT_SHA256_GUID: [u8; 16] = guid(
    0xc1c41626,
    0x504c,
    0x4092,
    [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28],
);
/// The `SignatureOwner` of the entries Cairn adds (cf397edc-f519-4834-a766-8b4a552f5eb5).
pub const CAIRN_SIGNATURE_OWNER: [u8; 16] = guid(
    0xcf397edc,
    0xf519,
    0x4834,
    [0xa7, 0x66, 0x8b, 0x4a, 0x55, 0x2f, 0x5e, 0xb5],
);

const FV_LENGTH_AT: usize = 32;
const FV_SIGNATURE_AT: usize = 40;
const FV_HEADER_LENGTH_AT: usize = 48;
/// The fixed part of `EFI_FIRMWARE_VOLUME_HEADER` plus the block map's terminating entry.
const FV_HEADER_MIN: usize = 56 + 8;
const STORE_HEADER_LEN: usize = 28;
const STORE_FORMATTED: u8 = 0x5a;
const STORE_HEALTHY: u8 = 0xfe;
const VAR_HEADER_LEN: usize = 60;
const VAR_START_ID: u16 = 0x55aa;
const VAR_ADDED: u8 = 0x3f;
const VAR_IN_DELETED_TRANSITION: u8 = 0xfe;
const VAR_DELETED: u8 = 0xfd;
/// NV | BS | RT | TIME_BASED_AUTHENTICATED_WRITE_ACCESS: how the firmware stores `dbx`.
const DBX_ATTRIBUTES: u32 = 0x27;
const SIGNATURE_LIST_HEADER_LEN: usize = 28;
const SHA256_SIGNATURE_LEN: usize = 16 + 32;

/// Limits on what is read from the file.
/// The largest firmware volume read (OVMF's is 528 KiB, AAVMF's 768 KiB).
const MAX_FV_LEN: u64 = 16 << 20;
/// How much is read to recognise the volume.
const PROBE_LEN: usize = 4096;
/// The longest variable name, in bytes (UTF-16 with its NUL).
const MAX_NAME_BYTES: usize = 1024;

/// A GUID in its on-disk (mixed-endian) byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// One variable record of the store, live or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The name without its NUL (unpaired UTF-16 surrogates replaced).
    pub name: String,
    /// The vendor GUID in on-disk byte order.
    pub vendor: [u8; 16],
    pub attributes: u32,
    /// The header's `State` byte: 0x3F added, 0x3D/0x3C deleted.
    pub state: u8,
    pub data: Vec<u8>,
}

impl Variable {
    /// Whether the firmware reads this record (added, possibly mid-replacement), as opposed to
    /// an obsolete copy.
    pub fn is_live(&self) -> bool {
        is_live(self.state)
    }
}

fn is_live(state: u8) -> bool {
    state == VAR_ADDED || state == VAR_ADDED & VAR_IN_DELETED_TRANSITION
}

/// Every variable record in the store at `vars_file`, in store order, deleted ones included.
pub fn variables(vars_file: &Path) -> Result<Vec<Variable>> {
    let store = Store::read(vars_file)?;
    Ok(store
        .records
        .iter()
        .map(|r| Variable {
            name: String::from_utf16_lossy(&r.name_utf16()),
            vendor: r.vendor,
            attributes: r.attributes,
            state: r.state,
            data: store.image[r.data.clone()].to_vec(),
        })
        .collect())
}

/// The SHA-256 hashes in the live `dbx`, in order; empty when there is no `dbx`.
pub fn dbx_hashes(vars_file: &Path) -> Result<Vec<[u8; 32]>> {
    let store = Store::read(vars_file)?;
    match store.live_dbx().last() {
        Some(r) => sha256_entries(&store.image[r.data.clone()])
            .map_err(|reason| store.refuse(format!("dbx {reason}"))),
        None => Ok(Vec::new()),
    }
}

/// Adds `sha256` to `dbx` in the variable store at `vars_file`: a new `dbx` with one
/// `EFI_CERT_SHA256` entry if there is none, else a copy of the old one with the entry appended
/// (the old record is marked deleted). The next boot measures the new `dbx` into PCR 7. The file
/// must not be in use by a running machine, and must have been formatted (AAVMF's blank
/// template is formatted by the firmware on the machine's first boot).
pub fn add_dbx_hash(vars_file: &Path, sha256: [u8; 32]) -> Result<()> {
    let store = Store::read(vars_file)?;
    let old = store.live_dbx();
    let (data, attributes, timestamp) = match old.last() {
        Some(r) => {
            let data = with_sha256(&store.image[r.data.clone()], sha256)
                .map_err(|reason| store.refuse(format!("dbx {reason}")))?;
            (data, r.attributes, r.timestamp)
        }
        None => (
            with_sha256(&[], sha256).unwrap_or_default(),
            DBX_ATTRIBUTES,
            [0; 16],
        ),
    };
    let old: Vec<usize> = old.iter().map(|r| r.offset).collect();
    write_variables(
        &store,
        &[NewVariable {
            name: "dbx",
            vendor: IMAGE_SECURITY_DATABASE_GUID,
            attributes,
            timestamp,
            data,
        }],
        &old,
    )
}

/// One variable to append to the store.
struct NewVariable<'a> {
    name: &'a str,
    vendor: [u8; 16],
    attributes: u32,
    timestamp: [u8; 16],
    data: Vec<u8>,
}

impl NewVariable<'_> {
    fn record(&self) -> Vec<u8> {
        let name: Vec<u8> = format!("{}\0", self.name)
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let mut record = Vec::with_capacity(VAR_HEADER_LEN + name.len() + self.data.len());
        record.extend_from_slice(&VAR_START_ID.to_le_bytes());
        record.push(VAR_ADDED);
        record.push(0);
        record.extend_from_slice(&self.attributes.to_le_bytes());
        record.extend_from_slice(&0u64.to_le_bytes()); // MonotonicCount
        record.extend_from_slice(&self.timestamp);
        record.extend_from_slice(&0u32.to_le_bytes()); // PubKeyIndex
        record.extend_from_slice(&(name.len() as u32).to_le_bytes());
        record.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        record.extend_from_slice(&self.vendor);
        record.extend_from_slice(&name);
        record.extend_from_slice(&self.data);
        record
    }
}

/// Appends `new` after the last record (each 4-byte aligned), then marks the records at
/// `replaced` (offsets) deleted: the firmware's order, so a cut leaves the old or both copies.
fn write_variables(store: &Store<'_>, new: &[NewVariable<'_>], replaced: &[usize]) -> Result<()> {
    let mut bytes = Vec::new();
    for v in new {
        bytes.extend_from_slice(&v.record());
        bytes.resize(align4(bytes.len()), 0xff);
    }
    let at = store.free;
    let room = store.end - at;
    if bytes.len() > room {
        return Err(store.refuse(format!(
            "no room for {} bytes of new variables ({room} bytes free)",
            bytes.len()
        )));
    }
    if store.image[at..at + bytes.len()].iter().any(|&b| b != 0xff) {
        return Err(store.refuse(format!(
            "the space after the last variable (offset {at:#x}) is not erased flash"
        )));
    }
    let file = OpenOptions::new()
        .write(true)
        .open(store.path)
        .map_err(|source| store.io(source))?;
    file.write_all_at(&bytes, at as u64)
        .map_err(|source| store.io(source))?;
    for &offset in replaced {
        let state = store.image[offset + 2];
        file.write_all_at(&[state & VAR_DELETED], (offset + 2) as u64)
            .map_err(|source| store.io(source))?;
    }
    file.sync_all().map_err(|source| store.io(source))
}

/// `EFI_GLOBAL_VARIABLE`: the vendor of `PK`, `KEK`, `SecureBoot`, `SetupMode`.
pub const GLOBAL_VARIABLE_GUID: [u8; 16] = guid(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);

/// Enrolls Secure Boot keys into the variable store at `vars_file`: `PK`, `KEK` and `db` each
/// become one `EFI_SIGNATURE_LIST` holding the given X.509 certificate (DER), owned by
/// [`CAIRN_SIGNATURE_OWNER`], with the attributes the firmware gives them (NV, BS, RT,
/// time-based authenticated write). Live copies of these three are marked deleted. Written
/// straight into the store as the firmware keeps it, the way virt-firmware's `ovmfctl` does:
/// no authenticated update is needed because the firmware is not running. With a `PK` the
/// firmware starts in user mode, and EDK II then turns Secure Boot on (`SecureBoot` = 1). The
/// file must not be in use by a running machine, and must have been formatted.
pub fn enroll_secure_boot(vars_file: &Path, pk: &[u8], kek: &[u8], db: &[u8]) -> Result<()> {
    let store = Store::read(vars_file)?;
    let new = [
        ("PK", GLOBAL_VARIABLE_GUID, pk),
        ("KEK", GLOBAL_VARIABLE_GUID, kek),
        ("db", IMAGE_SECURITY_DATABASE_GUID, db),
    ]
    .map(|(name, vendor, cert)| NewVariable {
        name,
        vendor,
        attributes: DBX_ATTRIBUTES,
        timestamp: [0; 16],
        data: cairn_secureboot::siglist::x509(CAIRN_SIGNATURE_OWNER, cert),
    });
    let replaced: Vec<usize> = new
        .iter()
        .flat_map(|v| store.live(v.name, v.vendor))
        .map(|r| r.offset)
        .collect();
    write_variables(&store, &new, &replaced)
}

/// One record's header fields and where its parts are in the image.
#[derive(Debug)]
struct Record {
    offset: usize,
    state: u8,
    attributes: u32,
    timestamp: [u8; 16],
    vendor: [u8; 16],
    name: std::ops::Range<usize>,
    data: std::ops::Range<usize>,
    /// The name's bytes, copied for comparisons.
    name_bytes: Vec<u8>,
}

impl Record {
    fn name_utf16(&self) -> Vec<u16> {
        let mut units: Vec<u16> = self
            .name_bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        if let Some(nul) = units.iter().position(|&u| u == 0) {
            units.truncate(nul);
        }
        units
    }
}

/// The firmware volume read into memory and its variable records.
struct Store<'p> {
    path: &'p Path,
    image: Vec<u8>,
    records: Vec<Record>,
    /// Offset of the first byte after the last record (4-byte aligned): where a new one goes.
    free: usize,
    /// Offset of the end of the variable store.
    end: usize,
}

impl<'p> Store<'p> {
    fn read(path: &'p Path) -> Result<Store<'p>> {
        let io = |source| Error::VarStoreIo {
            path: path.to_path_buf(),
            source,
        };
        let refuse = |reason: String| Error::VarStore {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut probe = Vec::with_capacity(PROBE_LEN);
        (&mut file)
            .take(PROBE_LEN as u64)
            .read_to_end(&mut probe)
            .map_err(io)?;
        if probe.len() < FV_HEADER_MIN {
            return Err(refuse(format!(
                "is {file_len} bytes, too short for a firmware volume: not a UEFI variable store"
            )));
        }
        if probe.iter().all(|&b| b == 0) || probe.iter().all(|&b| b == 0xff) {
            return Err(refuse(
                "is blank (AAVMF's template is: the firmware formats it on the machine's first \
                 boot): boot the machine once before changing its variables"
                    .into(),
            ));
        }
        if &probe[FV_SIGNATURE_AT..FV_SIGNATURE_AT + 4] != b"_FVH"
            || probe[16..32] != NV_DATA_FV_GUID
        {
            return Err(refuse(
                "has no firmware volume header for non-volatile variables (_FVH with \
                 EFI_SYSTEM_NV_DATA_FV_GUID): not a UEFI variable store"
                    .into(),
            ));
        }
        let fv_len = u64::from_le_bytes(probe[FV_LENGTH_AT..FV_LENGTH_AT + 8].try_into().unwrap());
        if fv_len > file_len || fv_len > MAX_FV_LEN {
            return Err(refuse(format!(
                "declares a {fv_len}-byte firmware volume in a {file_len}-byte file (at most \
                 {MAX_FV_LEN} read): damaged"
            )));
        }
        let mut image = vec![0; fv_len as usize];
        file.read_exact_at(&mut image, 0).map_err(io)?;
        let (store_start, end) = store_bounds(&image).map_err(refuse)?;
        let (records, free) = parse_records(&image, store_start, end).map_err(refuse)?;
        Ok(Store {
            path,
            image,
            records,
            free,
            end,
        })
    }

    /// The live `dbx` records (normally one; two only mid-replacement).
    fn live_dbx(&self) -> Vec<&Record> {
        self.live("dbx", IMAGE_SECURITY_DATABASE_GUID)
    }

    /// The live records of one variable.
    fn live(&self, name: &str, vendor: [u8; 16]) -> Vec<&Record> {
        let name: Vec<u8> = format!("{name}\0")
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        self.records
            .iter()
            .filter(|r| {
                is_live(r.state) && r.vendor == vendor && self.image[r.name.clone()] == name[..]
            })
            .collect()
    }

    fn refuse(&self, reason: String) -> Error {
        Error::VarStore {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::VarStoreIo {
            path: self.path.to_path_buf(),
            source,
        }
    }
}

/// Where the variable records start and the store ends, from the two headers.
fn store_bounds(image: &[u8]) -> Result<(usize, usize), String> {
    let header_len =
        u16::from_le_bytes([image[FV_HEADER_LENGTH_AT], image[FV_HEADER_LENGTH_AT + 1]]) as usize;
    if header_len < FV_HEADER_MIN || header_len + STORE_HEADER_LEN > image.len() {
        return Err(format!(
            "has a firmware volume header length of {header_len}: damaged"
        ));
    }
    let store = &image[header_len..header_len + STORE_HEADER_LEN];
    if store[..16] == PLAIN_STORE_GUID {
        return Err(
            "holds plain (not authenticated) variables: firmware without Secure Boot variables \
             has no dbx to change"
                .into(),
        );
    }
    if store[..16] != AUTH_STORE_GUID {
        return Err("has no authenticated variable store header: not a UEFI variable store".into());
    }
    let size = u32::from_le_bytes(store[16..20].try_into().unwrap()) as usize;
    if store[20] != STORE_FORMATTED || store[21] != STORE_HEALTHY {
        return Err(format!(
            "has a variable store marked format {:#04x} state {:#04x} (want {STORE_FORMATTED:#04x} \
             {STORE_HEALTHY:#04x}): not in a usable state",
            store[20], store[21]
        ));
    }
    let end = header_len + size;
    if size < STORE_HEADER_LEN || end > image.len() {
        return Err(format!(
            "declares a {size}-byte variable store that does not fit its firmware volume: damaged"
        ));
    }
    Ok((align4(header_len + STORE_HEADER_LEN), end))
}

/// The records from `start` to the first header without the start mark, and where that is.
fn parse_records(image: &[u8], start: usize, end: usize) -> Result<(Vec<Record>, usize), String> {
    let mut records = Vec::new();
    let mut at = start;
    while at + VAR_HEADER_LEN <= end
        && u16::from_le_bytes([image[at], image[at + 1]]) == VAR_START_ID
    {
        let h = &image[at..at + VAR_HEADER_LEN];
        let word = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap()) as usize;
        let (name_len, data_len) = (word(36), word(40));
        let damaged = |what: &str| format!("variable record at offset {at:#x} {what}: damaged");
        if name_len < 2 || name_len % 2 != 0 || name_len > MAX_NAME_BYTES {
            return Err(damaged(&format!("has a {name_len}-byte name")));
        }
        let name = at + VAR_HEADER_LEN..at + VAR_HEADER_LEN + name_len;
        let data_end = name
            .end
            .checked_add(data_len)
            .filter(|&e| e <= end)
            .ok_or_else(|| damaged("runs past the end of the store"))?;
        records.push(Record {
            offset: at,
            state: h[2],
            attributes: word(4) as u32,
            timestamp: h[16..32].try_into().unwrap(),
            vendor: h[44..60].try_into().unwrap(),
            name_bytes: image[name.clone()].to_vec(),
            data: name.end..data_end,
            name,
        });
        at = align4(data_end).min(end);
    }
    Ok((records, at))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The SHA-256 hashes in a list of `EFI_SIGNATURE_LIST`s (other kinds of entries skipped).
fn sha256_entries(data: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    let mut hashes = Vec::new();
    for list in signature_lists(data)? {
        if list.kind == CERT_SHA256_GUID {
            for sig in data[list.entries.clone()].chunks_exact(SHA256_SIGNATURE_LEN) {
                hashes.push(sig[16..].try_into().unwrap());
            }
        }
    }
    Ok(hashes)
}

/// `data` with `sha256` added: into its last list if that is a SHA-256 list, else as a new list.
fn with_sha256(data: &[u8], sha256: [u8; 32]) -> Result<Vec<u8>, String> {
    if sha256_entries(data)?.contains(&sha256) {
        return Err(format!(
            "already holds SHA-256 {}: it would not change",
            sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
    }
    let mut out = data.to_vec();
    let entry = [&CAIRN_SIGNATURE_OWNER[..], &sha256[..]].concat();
    match signature_lists(data)?.last() {
        Some(last) if last.kind == CERT_SHA256_GUID && last.header_len == 0 => {
            let size = (last.size + SHA256_SIGNATURE_LEN) as u32;
            out[last.start + 16..last.start + 20].copy_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&entry);
        }
        _ => {
            out.extend_from_slice(&CERT_SHA256_GUID);
            let size = (SIGNATURE_LIST_HEADER_LEN + SHA256_SIGNATURE_LEN) as u32;
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes()); // SignatureHeaderSize
            out.extend_from_slice(&(SHA256_SIGNATURE_LEN as u32).to_le_bytes());
            out.extend_from_slice(&entry);
        }
    }
    Ok(out)
}

/// One `EFI_SIGNATURE_LIST`: its type, where it starts, its size and where its entries are.
struct SignatureList {
    kind: [u8; 16],
    start: usize,
    size: usize,
    header_len: usize,
    entries: std::ops::Range<usize>,
}

fn signature_lists(data: &[u8]) -> Result<Vec<SignatureList>, String> {
    let mut lists = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let bad = |what: &str| format!("signature list at byte {at} {what}: damaged");
        let h = data
            .get(at..at + SIGNATURE_LIST_HEADER_LEN)
            .ok_or_else(|| bad("is cut short"))?;
        let word = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap()) as usize;
        let (size, header_len, sig_len) = (word(16), word(20), word(24));
        let entries_start = SIGNATURE_LIST_HEADER_LEN
            .checked_add(header_len)
            .filter(|&s| s <= size)
            .ok_or_else(|| bad("has a header longer than the list"))?;
        if at.checked_add(size).is_none_or(|e| e > data.len()) {
            return Err(bad("runs past the end of the variable"));
        }
        if sig_len <= 16 || (size - entries_start) % sig_len != 0 {
            return Err(bad(&format!("has {sig_len}-byte signatures")));
        }
        let kind: [u8; 16] = h[..16].try_into().unwrap();
        if kind == CERT_SHA256_GUID && sig_len != SHA256_SIGNATURE_LEN {
            return Err(bad(&format!("has {sig_len}-byte SHA-256 signatures")));
        }
        lists.push(SignatureList {
            kind,
            start: at,
            size,
            header_len,
            entries: at + entries_start..at + size,
        });
        at += size;
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
    const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
    const AAVMF_VARS_MS: &str = "/usr/share/AAVMF/AAVMF_VARS.ms.fd";

    /// A private copy of a firmware template (installed by `cargo xtask setup`).
    fn copy(template: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("efivars.fd");
        std::fs::copy(template, &path)
            .unwrap_or_else(|e| panic!("{template}: {e} (run `cargo xtask setup`)"));
        (dir, path)
    }

    fn live_dbx(path: &Path) -> Vec<Variable> {
        variables(path)
            .unwrap()
            .into_iter()
            .filter(|v| v.is_live() && v.name == "dbx")
            .collect()
    }

    #[test]
    fn guids_are_in_on_disk_order() {
        // The first bytes of OVMF's template: ZeroVector, then EFI_SYSTEM_NV_DATA_FV_GUID.
        assert_eq!(
            NV_DATA_FV_GUID,
            [
                0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b,
                0x4f, 0x50
            ]
        );
    }

    #[test]
    fn ovmf_template_gets_a_dbx_then_a_second_entry() {
        let (_dir, path) = copy(OVMF_VARS);
        let before = std::fs::read(&path).unwrap();
        assert!(live_dbx(&path).is_empty(), "the blank template has no dbx");
        assert_eq!(dbx_hashes(&path).unwrap(), Vec::<[u8; 32]>::new());

        add_dbx_hash(&path, [0x11; 32]).unwrap();
        let dbx = live_dbx(&path);
        assert_eq!(dbx.len(), 1);
        assert_eq!(dbx[0].attributes, 0x27);
        assert_eq!(dbx[0].state, VAR_ADDED);
        assert_eq!(dbx[0].vendor, IMAGE_SECURITY_DATABASE_GUID);
        assert_eq!(dbx[0].data.len(), 28 + 48);
        assert_eq!(dbx[0].data[..16], CERT_SHA256_GUID);
        assert_eq!(dbx_hashes(&path).unwrap(), vec![[0x11; 32]]);
        // Only the new record changed: the volume and store headers are as they were.
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), before.len());
        assert_eq!(after[..0x64], before[..0x64]);

        add_dbx_hash(&path, [0x22; 32]).unwrap();
        assert_eq!(dbx_hashes(&path).unwrap(), vec![[0x11; 32], [0x22; 32]]);
        let all = variables(&path).unwrap();
        let dbx: Vec<_> = all.iter().filter(|v| v.name == "dbx").collect();
        assert_eq!(dbx.len(), 2, "{all:?}");
        assert_eq!(dbx[0].state, VAR_ADDED & VAR_DELETED);
        assert!(!dbx[0].is_live());
        assert!(dbx[1].is_live());
        // One list that grew, not two.
        assert_eq!(dbx[1].data.len(), 28 + 2 * 48);
    }

    #[test]
    fn an_existing_dbx_is_replaced_with_the_entry_appended() {
        for template in [OVMF_VARS_MS, AAVMF_VARS_MS] {
            let (_dir, path) = copy(template);
            let old = dbx_hashes(&path).unwrap();
            assert!(!old.is_empty(), "{template} ships Microsoft's dbx");
            let live_before = variables(&path)
                .unwrap()
                .into_iter()
                .filter(|v| v.is_live())
                .count();
            add_dbx_hash(&path, [0x33; 32]).unwrap();
            let mut want = old.clone();
            want.push([0x33; 32]);
            assert_eq!(dbx_hashes(&path).unwrap(), want, "{template}");
            assert_eq!(live_dbx(&path).len(), 1, "{template}");
            let live_after = variables(&path)
                .unwrap()
                .into_iter()
                .filter(|v| v.is_live())
                .count();
            assert_eq!(live_after, live_before, "{template}");
        }
    }

    #[test]
    fn the_same_hash_twice_is_refused() {
        let (_dir, path) = copy(OVMF_VARS);
        add_dbx_hash(&path, [0x44; 32]).unwrap();
        let err = add_dbx_hash(&path, [0x44; 32]).unwrap_err().to_string();
        assert!(err.contains("already holds SHA-256 4444"), "{err}");
        assert_eq!(dbx_hashes(&path).unwrap(), vec![[0x44; 32]]);
    }

    #[test]
    fn aavmf_blank_template_is_refused_with_the_fix() {
        let (_dir, path) = copy(AAVMF_VARS);
        let err = add_dbx_hash(&path, [0x55; 32]).unwrap_err().to_string();
        assert!(err.contains("is blank"), "{err}");
        assert!(err.contains("boot the machine once"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn aavmf_store_as_the_firmware_formats_it() {
        // What AAVMF writes over its blank template on the first boot: the same volume and
        // store headers as the Microsoft-keys template, with no variables.
        let (_dir, path) = copy(AAVMF_VARS_MS);
        let mut image = std::fs::read(&path).unwrap();
        let start = 0x64;
        let end = 0x48 + 0x3ffb8;
        image[start..end].fill(0xff);
        std::fs::write(&path, &image).unwrap();
        assert!(variables(&path).unwrap().is_empty());
        add_dbx_hash(&path, [0x66; 32]).unwrap();
        assert_eq!(dbx_hashes(&path).unwrap(), vec![[0x66; 32]]);
        let vars = variables(&path).unwrap();
        assert_eq!(vars.len(), 1);
        assert_eq!(vars[0].name, "dbx");
    }

    /// PK, KEK and db enrolled into OVMF's empty template and into AAVMF's snakeoil one (whose
    /// own PK, KEK and db are then marked deleted): one live copy each, holding the certificate.
    #[test]
    fn secure_boot_keys_are_enrolled_replacing_any_there() {
        for template in [OVMF_VARS, "/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd"] {
            let (_dir, path) = copy(template);
            for round in 0..2u8 {
                let cert = |tag: u8| vec![0x30, 3, tag, round, 0];
                enroll_secure_boot(&path, &cert(1), &cert(2), &cert(3)).unwrap();
                let vars = variables(&path).unwrap();
                for (name, vendor, tag) in [
                    ("PK", GLOBAL_VARIABLE_GUID, 1),
                    ("KEK", GLOBAL_VARIABLE_GUID, 2),
                    ("db", IMAGE_SECURITY_DATABASE_GUID, 3),
                ] {
                    let live: Vec<&Variable> = vars
                        .iter()
                        .filter(|v| v.name == name && v.vendor == vendor && v.is_live())
                        .collect();
                    assert_eq!(live.len(), 1, "{template} {name}");
                    assert_eq!(live[0].attributes, 0x27);
                    assert_eq!(
                        live[0].data,
                        cairn_secureboot::siglist::x509(CAIRN_SIGNATURE_OWNER, &cert(tag))
                    );
                }
            }
        }
    }

    #[test]
    fn a_full_store_is_refused() {
        let (_dir, path) = copy(OVMF_VARS);
        let mut image = std::fs::read(&path).unwrap();
        // Shrink the store to its header and 100 bytes.
        let size = (STORE_HEADER_LEN + 100) as u32;
        image[0x48 + 16..0x48 + 20].copy_from_slice(&size.to_le_bytes());
        std::fs::write(&path, &image).unwrap();
        let err = add_dbx_hash(&path, [0x77; 32]).unwrap_err().to_string();
        assert!(
            err.contains("no room for 144 bytes of new variables (100 bytes free)"),
            "{err}"
        );
    }

    #[test]
    fn other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, b"hello").unwrap();
        let err = add_dbx_hash(&short, [0; 32]).unwrap_err().to_string();
        assert!(err.contains("not a UEFI variable store"), "{err}");

        let code = dir.path().join("code.fd");
        let mut image = vec![0x5a; 8192];
        image[..4].copy_from_slice(b"MZ\0\0");
        std::fs::write(&code, &image).unwrap();
        let err = add_dbx_hash(&code, [0; 32]).unwrap_err().to_string();
        assert!(err.contains("not a UEFI variable store"), "{err}");

        let missing = dir.path().join("missing.fd");
        assert!(matches!(
            add_dbx_hash(&missing, [0; 32]),
            Err(Error::VarStoreIo { .. })
        ));
    }

    #[test]
    fn damaged_records_are_refused() {
        let (_dir, path) = copy(OVMF_VARS);
        add_dbx_hash(&path, [0x88; 32]).unwrap();
        let mut image = std::fs::read(&path).unwrap();
        // The dbx record's DataSize, made to run past the store.
        image[0x64 + 40..0x64 + 44].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        std::fs::write(&path, &image).unwrap();
        let err = variables(&path).unwrap_err().to_string();
        assert!(err.contains("runs past the end of the store"), "{err}");
    }

    #[test]
    fn signature_lists_are_checked() {
        let data = with_sha256(&[], [1; 32]).unwrap();
        assert_eq!(sha256_entries(&data).unwrap(), vec![[1; 32]]);
        assert!(sha256_entries(&data[..data.len() - 1])
            .unwrap_err()
            .contains("runs past the end"));
        let mut bad = data.clone();
        bad[24..28].copy_from_slice(&47u32.to_le_bytes());
        assert!(sha256_entries(&bad).is_err());
        // A list of another type is kept and followed by a new SHA-256 list.
        let mut x509 = data.clone();
        x509[..16].copy_from_slice(&[9; 16]);
        let grown = with_sha256(&x509, [2; 32]).unwrap();
        assert_eq!(grown.len(), 2 * (28 + 48));
        assert_eq!(sha256_entries(&grown).unwrap(), vec![[2; 32]]);
    }
}
