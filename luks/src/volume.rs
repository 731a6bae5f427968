//! A LUKS2 volume: reading both header copies, formatting, keyslots, tokens and unlocking.
//!
//! Every change rewrites both header copies with a higher sequence id; keyslot material is
//! written (or wiped) before the metadata that points at it (or no longer does), so an
//! interrupted update never leaves a keyslot that points at missing material. A format writes
//! a header with no keyslot before any keyslot material, so that from its first non-zero byte
//! on the device reads as a LUKS2 volume: a format that a power cut stopped is recognisable as
//! one (and may be done again), never mistaken for someone else's data.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde_json::Map;
use zeroize::Zeroizing;

use crate::af;
use crate::cipher;
use crate::error::{io, Error, Result};
use crate::header::{self, BinaryHeader, BIN_SIZE};
use crate::kdf::{self, Kdf, SALT_LEN};
use crate::metadata::{
    Af, Area, Config, DigestEntry, Keyslot, Metadata, Segment, Token, MAX_KEYSLOTS, MAX_TOKENS,
};

/// Offset of the data segment that cryptsetup uses by default for LUKS2: 16 MiB.
pub const DEFAULT_DATA_OFFSET: u64 = 16 << 20;
/// The data segment cipher this crate writes.
pub const SEGMENT_CIPHER: &str = "aes-xts-plain64";
/// Size of the volume key this crate generates: AES-256 in XTS mode takes two 256-bit keys.
pub const VOLUME_KEY_SIZE: usize = 64;
/// Largest keyslots area accepted from a header (cryptsetup's `LUKS2_MAX_KEYSLOTS_SIZE`).
pub const MAX_KEYSLOTS_SIZE: u64 = 128 << 20;
/// Largest volume key accepted from a header, in bytes; with 4000 stripes a keyslot's
/// material is then at most 2 MB.
pub const MAX_KEY_SIZE: usize = 512;
/// Keyslot areas are aligned to 4 KiB, as cryptsetup aligns them.
const AREA_ALIGN: u64 = 4096;

/// What writing a volume needs of its device: positioned writes and a flush. A `File` (a block
/// device or an image) is what the device uses; the tests also record what a format writes.
pub trait Disk {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    fn sync_data(&self) -> std::io::Result<()>;
    /// The device's size in bytes.
    fn size(&self) -> std::io::Result<u64>;
}

impl Disk for File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        File::sync_data(self)
    }

    fn size(&self) -> std::io::Result<u64> {
        // Seeking to the end works for block devices, whose metadata length is 0.
        let mut d = self;
        d.seek(SeekFrom::End(0))
    }
}

/// A volume key, wiped from memory when dropped.
pub struct VolumeKey(Zeroizing<Vec<u8>>);

impl VolumeKey {
    /// A fresh random 512-bit key.
    pub fn generate() -> VolumeKey {
        let mut k = Zeroizing::new(vec![0u8; VOLUME_KEY_SIZE]);
        OsRng.fill_bytes(&mut k);
        VolumeKey(k)
    }

    /// Wraps existing key bytes.
    pub fn from_bytes(bytes: &[u8]) -> VolumeKey {
        VolumeKey(Zeroizing::new(bytes.to_vec()))
    }

    /// The key bytes; keep copies in `Zeroizing` buffers.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeKey({} bytes)", self.0.len())
    }
}

/// How [`Luks2::format`] lays out a new volume.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// Key derivation of the first keyslot.
    pub kdf: Kdf,
    /// PBKDF2-SHA256 iterations of the volume-key digest.
    pub digest_iterations: u32,
    /// Data segment sector size: 512 or 4096.
    pub sector_size: u32,
    /// Label stored in both binary headers (at most 47 bytes are kept).
    pub label: String,
}

impl Default for FormatOptions {
    /// Argon2id with 4 passes over 40 MiB in one lane (an estimated 0.6 to 1.0 s on a
    /// Raspberry Pi 4, see docs/luks2.md), 50 000 digest iterations, 4096-byte sectors.
    fn default() -> Self {
        FormatOptions {
            kdf: Kdf::Argon2id {
                time: 4,
                memory_kib: 40 * 1024,
                cpus: 1,
            },
            digest_iterations: 50_000,
            sector_size: 4096,
            label: String::new(),
        }
    }
}

/// What proves the right to add a keyslot.
pub enum Credential<'a> {
    Passphrase(&'a [u8]),
    VolumeKey(&'a VolumeKey),
}

/// A LUKS2 header read from (or written to) a device or image file.
#[derive(Debug, Clone)]
pub struct Luks2 {
    hdr: BinaryHeader,
    secondary_salt: [u8; header::LEN_SALT],
    meta: Metadata,
}

/// Positioned reads of a device, an image file, or an image in memory.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&o| o <= self.len());
        let src = start.and_then(|o| self.get(o..o.checked_add(buf.len())?));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

fn read_exact_at<R: ReadAt + ?Sized>(
    dev: &R,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<()> {
    dev.read_exact_at(buf, offset).map_err(io(what))
}

fn device_size(dev: &impl Disk) -> Result<u64> {
    dev.size().map_err(io("finding the device size"))
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn random_salt<const N: usize>() -> [u8; N] {
    let mut s = [0u8; N];
    OsRng.fill_bytes(&mut s);
    s
}

fn round_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

/// Bytes of key material a keyslot holds: the AF-split key, rounded up to whole sectors.
fn material_len(key_size: u32, stripes: u32) -> u64 {
    round_up(
        u64::from(key_size) * u64::from(stripes),
        cipher::AREA_SECTOR as u64,
    )
}

/// Reads one header copy at `offset`; returns it with its parsed metadata.
fn read_copy<R: ReadAt + ?Sized>(
    dev: &R,
    offset: u64,
) -> std::result::Result<(BinaryHeader, Metadata), String> {
    let mut bin = vec![0u8; BIN_SIZE];
    dev.read_exact_at(&mut bin, offset)
        .map_err(|e| format!("reading at {offset}: {e}"))?;
    let hdr = BinaryHeader::decode(&bin, offset)?;
    let mut area = vec![0u8; hdr.hdr_size as usize];
    dev.read_exact_at(&mut area, offset)
        .map_err(|e| format!("reading at {offset}: {e}"))?;
    BinaryHeader::verify(&area)?;
    let json = header::json_text(&area)?;
    let meta: Metadata = serde_json::from_str(json).map_err(|e| format!("JSON: {e}"))?;
    Ok((hdr, meta))
}

impl Luks2 {
    /// Reads the newer valid header copy. The secondary is looked for after the primary's
    /// size, or at every allowed header size when the primary is unreadable.
    pub fn open<R: ReadAt + ?Sized>(dev: &R) -> Result<Luks2> {
        let primary = read_copy(dev, 0);
        let secondary = match &primary {
            Ok((h, _)) => read_copy(dev, h.hdr_size),
            Err(_) => {
                let mut last = Err("no secondary header found".to_string());
                for off in header::ALLOWED_HDR_SIZES {
                    last = read_copy(dev, off);
                    if last.is_ok() {
                        break;
                    }
                }
                last
            }
        };
        let (hdr, meta, other_salt) = match (primary, secondary) {
            (Ok((p, pm)), Ok((s, sm))) => {
                if s.seqid > p.seqid {
                    (s, sm, p.salt)
                } else {
                    (p, pm, s.salt)
                }
            }
            (Ok((p, pm)), Err(_)) => (p, pm, random_salt()),
            (Err(_), Ok((s, sm))) => (s, sm, random_salt()),
            (Err(p), Err(s)) => {
                return Err(Error::NoValidHeader {
                    primary: p,
                    secondary: s,
                })
            }
        };
        let mut hdr = hdr;
        // Keep the salt of each copy with its copy, whichever one was read.
        let (primary_salt, secondary_salt) = if hdr.secondary {
            (other_salt, hdr.salt)
        } else {
            (hdr.salt, other_salt)
        };
        hdr.secondary = false;
        hdr.hdr_offset = 0;
        hdr.salt = primary_salt;
        let luks = Luks2 {
            hdr,
            secondary_salt,
            meta,
        };
        luks.validate()?;
        Ok(luks)
    }

    /// Checks the invariants this crate relies on before using metadata read from a device.
    fn validate(&self) -> Result<()> {
        let m = &self.meta;
        let bad = |s: String| Err(Error::BadMetadata(s));
        if m.config.json_size != self.hdr.hdr_size - BIN_SIZE as u64 {
            return bad(format!(
                "config.json_size {} does not match header size {}",
                m.config.json_size, self.hdr.hdr_size
            ));
        }
        if m.keyslots.len() > MAX_KEYSLOTS || m.tokens.len() > MAX_TOKENS {
            return bad("too many keyslots or tokens".into());
        }
        if m.config.keyslots_size > MAX_KEYSLOTS_SIZE {
            return bad(format!("keyslots_size {}", m.config.keyslots_size));
        }
        let area_start = 2 * self.hdr.hdr_size;
        let area_end = area_start
            .checked_add(m.config.keyslots_size)
            .ok_or_else(|| Error::BadMetadata("keyslots_size overflows".into()))?;
        for (id, ks) in &m.keyslots {
            if *id as usize >= MAX_KEYSLOTS {
                return bad(format!("keyslot id {id}"));
            }
            let a = &ks.area;
            let end = a.offset.checked_add(a.size);
            if a.offset < area_start || end.is_none_or(|e| e > area_end) {
                return bad(format!("keyslot {id} area lies outside the keyslots area"));
            }
            if ks.key_size == 0 || ks.key_size as usize > MAX_KEY_SIZE {
                return bad(format!("keyslot {id} key size {}", ks.key_size));
            }
            if ks.af.stripes != af::STRIPES {
                return bad(format!("keyslot {id} has {} AF stripes", ks.af.stripes));
            }
        }
        for (id, t) in &m.tokens {
            if *id as usize >= MAX_TOKENS {
                return bad(format!("token id {id}"));
            }
            for k in &t.keyslots {
                if k.parse::<u32>()
                    .ok()
                    .is_none_or(|k| !m.keyslots.contains_key(&k))
                {
                    return bad(format!("token {id} names keyslot {k:?}"));
                }
            }
        }
        Ok(())
    }

    /// Writes a new LUKS2 header with one keyslot for `passphrase` to `dev`. The first
    /// [`DEFAULT_DATA_OFFSET`] bytes (headers and keyslots area) are overwritten with zeros
    /// first; data beyond them is left as it is.
    pub fn format(
        dev: &impl Disk,
        volume_key: &VolumeKey,
        passphrase: &[u8],
        opts: &FormatOptions,
    ) -> Result<Luks2> {
        if opts.sector_size != 512 && opts.sector_size != 4096 {
            return Err(Error::Unsupported(format!(
                "data sector size {}",
                opts.sector_size
            )));
        }
        if volume_key.as_bytes().len() != VOLUME_KEY_SIZE {
            return Err(Error::Unsupported(format!(
                "a {}-byte volume key for {SEGMENT_CIPHER}",
                volume_key.as_bytes().len()
            )));
        }
        let size = device_size(dev)?;
        let needed = DEFAULT_DATA_OFFSET + u64::from(opts.sector_size);
        if size < needed {
            return Err(Error::DeviceTooSmall { size, needed });
        }
        let zeros = vec![0u8; 1 << 20];
        for i in 0..DEFAULT_DATA_OFFSET / zeros.len() as u64 {
            dev.write_all_at(&zeros, i * zeros.len() as u64)
                .map_err(io("wiping the header and keyslots area"))?;
        }
        let hdr_size = header::DEFAULT_HDR_SIZE;
        let digest_salt: [u8; SALT_LEN] = random_salt();
        let digest = kdf::volume_key_digest(
            "sha256",
            volume_key.as_bytes(),
            &digest_salt,
            opts.digest_iterations,
        )?;
        let meta = Metadata {
            keyslots: BTreeMap::new(),
            tokens: BTreeMap::new(),
            segments: BTreeMap::from([(
                0,
                Segment {
                    kind: "crypt".into(),
                    offset: DEFAULT_DATA_OFFSET,
                    size: "dynamic".into(),
                    iv_tweak: "0".into(),
                    encryption: SEGMENT_CIPHER.into(),
                    sector_size: opts.sector_size,
                    extra: Map::new(),
                },
            )]),
            digests: BTreeMap::from([(
                0,
                DigestEntry {
                    kind: "pbkdf2".into(),
                    keyslots: Vec::new(),
                    segments: vec!["0".into()],
                    hash: "sha256".into(),
                    iterations: opts.digest_iterations,
                    salt: B64.encode(digest_salt),
                    digest: B64.encode(digest),
                    extra: Map::new(),
                },
            )]),
            config: Config {
                json_size: hdr_size - BIN_SIZE as u64,
                keyslots_size: DEFAULT_DATA_OFFSET - 2 * hdr_size,
                extra: Map::new(),
            },
            extra: Map::new(),
        };
        let mut luks = Luks2 {
            hdr: BinaryHeader {
                secondary: false,
                hdr_size,
                seqid: 0,
                label: opts.label.clone(),
                salt: random_salt(),
                uuid: random_uuid(),
                subsystem: String::new(),
                hdr_offset: 0,
            },
            secondary_salt: random_salt(),
            meta,
        };
        // The headers first, with no keyslot yet: the keyslot's material, written next, would
        // otherwise sit on the device with nothing saying whose it is until the headers follow.
        luks.write_headers(dev)?;
        luks.add_keyslot_with_key(dev, volume_key, passphrase, opts.kdf)?;
        Ok(luks)
    }

    /// The volume's UUID, as in `/dev/disk/by-uuid`.
    pub fn uuid(&self) -> &str {
        &self.hdr.uuid
    }

    /// The label of the binary headers (empty when none was given).
    pub fn label(&self) -> &str {
        &self.hdr.label
    }

    /// Size of each header copy (binary header plus JSON area), in bytes.
    pub fn hdr_size(&self) -> u64 {
        self.hdr.hdr_size
    }

    /// The sequence id of the header copies last read or written.
    pub fn seqid(&self) -> u64 {
        self.hdr.seqid
    }

    /// The parsed JSON metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The data segment (segment 0).
    pub fn segment(&self) -> Result<&Segment> {
        self.meta
            .segments
            .get(&0)
            .ok_or_else(|| Error::BadMetadata("no segment 0".into()))
    }

    /// The numbers of the keyslots in use.
    pub fn keyslots(&self) -> Vec<u32> {
        self.meta.keyslots.keys().copied().collect()
    }

    /// Writes both header copies with the next sequence id.
    fn write_headers(&mut self, dev: &impl Disk) -> Result<()> {
        self.validate()?;
        let json = serde_json::to_vec(&self.meta).map_err(Error::Json)?;
        let available = (self.hdr.hdr_size as usize) - BIN_SIZE;
        if json.len() >= available {
            return Err(Error::MetadataTooLarge {
                needed: json.len() + 1,
                available,
            });
        }
        self.hdr.seqid += 1;
        let primary = self.hdr.encode(&json);
        let mut sec = self.hdr.clone();
        sec.secondary = true;
        sec.hdr_offset = self.hdr.hdr_size;
        sec.salt = self.secondary_salt;
        let secondary = sec.encode(&json);
        dev.write_all_at(&primary, 0)
            .map_err(io("writing the primary header"))?;
        dev.sync_data().map_err(io("syncing the primary header"))?;
        dev.write_all_at(&secondary, self.hdr.hdr_size)
            .map_err(io("writing the secondary header"))?;
        dev.sync_data()
            .map_err(io("syncing the secondary header"))?;
        Ok(())
    }

    /// The digest covering segment 0, which every keyslot is checked against.
    fn digest_id(&self) -> Result<u32> {
        self.meta
            .digests
            .iter()
            .find(|(_, d)| d.segments.iter().any(|s| s == "0"))
            .map(|(id, _)| *id)
            .ok_or_else(|| Error::BadMetadata("no digest covers segment 0".into()))
    }

    /// Checks a candidate volume key against the segment's digest.
    pub fn verify_volume_key(&self, key: &[u8]) -> Result<()> {
        let d = &self.meta.digests[&self.digest_id()?];
        if d.kind != "pbkdf2" {
            return Err(Error::Unsupported(format!("digest type {:?}", d.kind)));
        }
        let salt = kdf::decode_salt(&d.salt)?;
        let want = B64
            .decode(&d.digest)
            .map_err(|e| Error::BadMetadata(format!("digest is not base64: {e}")))?;
        let got = kdf::volume_key_digest(&d.hash, key, &salt, d.iterations)?;
        // cryptsetup stores the hash's full length; a shorter digest would check less.
        if want.len() != got.len() {
            return Err(Error::BadMetadata(format!(
                "digest of {} bytes, expected {}",
                want.len(),
                got.len()
            )));
        }
        let diff = want.iter().zip(&got).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(Error::WrongVolumeKey);
        }
        Ok(())
    }

    /// Tries `passphrase` on keyslot `id` only (a token names the keyslots its secret opens,
    /// so the others' KDFs need not run); returns the volume key if it opens it.
    pub fn try_keyslot<R: ReadAt + ?Sized>(
        &self,
        dev: &R,
        id: u32,
        passphrase: &[u8],
    ) -> Result<Option<VolumeKey>> {
        let ks = self
            .meta
            .keyslots
            .get(&id)
            .ok_or(Error::NoSuchKeyslot(id))?;
        if ks.kind != "luks2" || ks.af.kind != "luks1" || ks.area.kind != "raw" {
            return Err(Error::Unsupported(format!("keyslot {id} type")));
        }
        if ks.af.hash != "sha256" {
            return Err(Error::Unsupported(format!(
                "keyslot {id} AF hash {}",
                ks.af.hash
            )));
        }
        cipher::check(&ks.area.encryption, ks.area.key_size as usize)?;
        let len = material_len(ks.key_size, ks.af.stripes);
        if len > ks.area.size {
            return Err(Error::BadMetadata(format!(
                "keyslot {id} area is smaller than its key material"
            )));
        }
        let key = kdf::derive(&ks.kdf, passphrase, ks.area.key_size as usize)?;
        let mut material = Zeroizing::new(vec![0u8; len as usize]);
        read_exact_at(
            dev,
            &mut material,
            ks.area.offset,
            "reading keyslot material",
        )?;
        cipher::xts(&key, &mut material, false)?;
        let vk = af::merge(&material, ks.key_size as usize, ks.af.stripes);
        match self.verify_volume_key(&vk) {
            Ok(()) => Ok(Some(VolumeKey(vk))),
            Err(Error::WrongVolumeKey) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds the keyslot `passphrase` opens, trying high-priority slots first and skipping
    /// slots with priority 0, and returns its number and the volume key.
    pub fn unlock<R: ReadAt + ?Sized>(
        &self,
        dev: &R,
        passphrase: &[u8],
    ) -> Result<(u32, VolumeKey)> {
        let mut order: Vec<(u8, u32)> = self
            .meta
            .keyslots
            .iter()
            .map(|(id, ks)| (ks.priority.unwrap_or(1), *id))
            .filter(|(p, _)| *p != 0)
            .collect();
        order.sort_by_key(|&(p, id)| (std::cmp::Reverse(p), id));
        for (_, id) in order {
            if let Some(vk) = self.try_keyslot(dev, id, passphrase)? {
                return Ok((id, vk));
            }
        }
        Err(Error::WrongPassphrase)
    }

    /// Adds a keyslot for `new_passphrase`, proving access with an existing passphrase or
    /// the volume key. Returns the new keyslot's number.
    pub fn add_keyslot(
        &mut self,
        dev: &File,
        credential: Credential<'_>,
        new_passphrase: &[u8],
        kdf: Kdf,
    ) -> Result<u32> {
        let unlocked;
        let vk = match credential {
            Credential::Passphrase(p) => {
                unlocked = self.unlock(dev, p)?.1;
                &unlocked
            }
            Credential::VolumeKey(vk) => {
                self.verify_volume_key(vk.as_bytes())?;
                vk
            }
        };
        self.add_keyslot_with_key(dev, vk, new_passphrase, kdf)
    }

    /// First 4 KiB-aligned gap in the keyslots area that holds `len` bytes.
    fn free_area(&self, len: u64) -> Result<u64> {
        let start = 2 * self.hdr.hdr_size;
        let end = start + self.meta.config.keyslots_size;
        let mut used: Vec<(u64, u64)> = self
            .meta
            .keyslots
            .values()
            .map(|k| (k.area.offset, k.area.offset + k.area.size))
            .collect();
        used.sort_unstable();
        let mut candidate = start;
        for (s, e) in used {
            if candidate + len <= s {
                break;
            }
            candidate = candidate.max(round_up(e, AREA_ALIGN));
        }
        if candidate + len > end {
            return Err(Error::KeyslotAreaFull(len));
        }
        Ok(candidate)
    }

    fn add_keyslot_with_key(
        &mut self,
        dev: &impl Disk,
        vk: &VolumeKey,
        passphrase: &[u8],
        kdf: Kdf,
    ) -> Result<u32> {
        let id = (0..MAX_KEYSLOTS as u32)
            .find(|i| !self.meta.keyslots.contains_key(i))
            .ok_or(Error::KeyslotsFull(MAX_KEYSLOTS))?;
        let key_size = vk.as_bytes().len() as u32;
        let stripes = af::STRIPES;
        let len = material_len(key_size, stripes);
        let area_size = round_up(len, AREA_ALIGN);
        let offset = self.free_area(area_size)?;
        let area_key_size = 64usize;
        let salt: [u8; SALT_LEN] = random_salt();
        let (key, kdf_json) = kdf::derive_new(kdf, passphrase, &salt, area_key_size)?;
        // Sized once: growing a Vec would leave an unwiped copy of the split key behind.
        let mut material = Zeroizing::new(vec![0u8; len as usize]);
        let split = af::split(vk.as_bytes(), stripes);
        material[..split.len()].copy_from_slice(&split);
        cipher::xts(&key, &mut material, true)?;
        dev.write_all_at(&material, offset)
            .map_err(io("writing keyslot material"))?;
        dev.sync_data().map_err(io("syncing keyslot material"))?;
        self.meta.keyslots.insert(
            id,
            Keyslot {
                kind: "luks2".into(),
                key_size,
                af: Af {
                    kind: "luks1".into(),
                    stripes,
                    hash: "sha256".into(),
                },
                area: Area {
                    kind: "raw".into(),
                    offset,
                    size: area_size,
                    encryption: "aes-xts-plain64".into(),
                    key_size: area_key_size as u32,
                    extra: Map::new(),
                },
                kdf: kdf_json,
                priority: None,
                extra: Map::new(),
            },
        );
        let digest = self.digest_id()?;
        let slots = &mut self.meta.digests.get_mut(&digest).expect("found").keyslots;
        slots.push(id.to_string());
        self.write_headers(dev)?;
        Ok(id)
    }

    /// Removes keyslot `id`: its area is overwritten with random bytes, then it is dropped
    /// from the metadata, its digest and its tokens. The last keyslot is never removed.
    pub fn remove_keyslot(&mut self, dev: &impl Disk, id: u32) -> Result<()> {
        let ks = self
            .meta
            .keyslots
            .get(&id)
            .ok_or(Error::NoSuchKeyslot(id))?;
        if self.meta.keyslots.len() == 1 {
            return Err(Error::LastKeyslot(id));
        }
        let mut noise = vec![0u8; ks.area.size as usize];
        OsRng.fill_bytes(&mut noise);
        dev.write_all_at(&noise, ks.area.offset)
            .map_err(io("wiping keyslot material"))?;
        dev.sync_data().map_err(io("syncing the wiped keyslot"))?;
        self.meta.keyslots.remove(&id);
        let name = id.to_string();
        for d in self.meta.digests.values_mut() {
            d.keyslots.retain(|k| *k != name);
        }
        for t in self.meta.tokens.values_mut() {
            t.keyslots.retain(|k| *k != name);
        }
        self.write_headers(dev)
    }

    /// Stores `token` in the first free token number and returns it.
    pub fn add_token(&mut self, dev: &File, token: Token) -> Result<u32> {
        let id = (0..MAX_TOKENS as u32)
            .find(|i| !self.meta.tokens.contains_key(i))
            .ok_or_else(|| Error::BadMetadata(format!("all {MAX_TOKENS} tokens are in use")))?;
        for k in &token.keyslots {
            let slot = k
                .parse::<u32>()
                .map_err(|_| Error::BadMetadata(format!("token keyslot {k:?}")))?;
            if !self.meta.keyslots.contains_key(&slot) {
                return Err(Error::TokenKeyslot {
                    token: id,
                    keyslot: slot,
                });
            }
        }
        self.meta.tokens.insert(id, token);
        if let Err(e) = self.write_headers(dev) {
            self.meta.tokens.remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    /// Token `id`, if there is one.
    pub fn token(&self, id: u32) -> Option<&Token> {
        self.meta.tokens.get(&id)
    }

    /// All tokens, by number.
    pub fn tokens(&self) -> &BTreeMap<u32, Token> {
        &self.meta.tokens
    }

    /// Removes token `id` and returns it.
    pub fn remove_token(&mut self, dev: &File, id: u32) -> Result<Token> {
        let t = self.meta.tokens.remove(&id).ok_or(Error::NoSuchToken(id))?;
        self.write_headers(dev)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Kdf = Kdf::Pbkdf2 { iterations: 1000 };

    fn image() -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(DEFAULT_DATA_OFFSET + (1 << 20)).unwrap();
        f
    }

    fn opts(kdf: Kdf) -> FormatOptions {
        FormatOptions {
            kdf,
            digest_iterations: 1000,
            ..FormatOptions::default()
        }
    }

    /// A write (offset, bytes), or a flush (None).
    type Step = Option<(u64, Vec<u8>)>;

    /// A device in memory that keeps every write, in order, with the flushes between them.
    struct Recorder {
        len: u64,
        writes: std::cell::RefCell<Vec<Step>>,
    }

    impl Disk for Recorder {
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.writes.borrow_mut().push(Some((offset, buf.to_vec())));
            Ok(())
        }

        fn sync_data(&self) -> std::io::Result<()> {
            self.writes.borrow_mut().push(None);
            Ok(())
        }

        fn size(&self) -> std::io::Result<u64> {
            Ok(self.len)
        }
    }

    #[test]
    fn a_format_cut_short_anywhere_is_blank_or_reads_as_luks2() {
        // A power cut keeps what was flushed and may keep any of the writes after the last
        // flush; checked here at each write, with every earlier write kept. Before the first
        // non-zero byte the device must be blank; from then on it must open as LUKS2, so that
        // a first boot that finds it knows it as its own unfinished format.
        let dev = Recorder {
            len: DEFAULT_DATA_OFFSET + (1 << 20),
            writes: Default::default(),
        };
        let vk = VolumeKey::generate();
        Luks2::format(&dev, &vk, b"one", &opts(FAST)).unwrap();
        let writes: Vec<(u64, Vec<u8>)> = dev.writes.into_inner().into_iter().flatten().collect();
        let mut image = vec![0u8; 1 << 20];
        let mut seen_luks = false;
        for (n, (offset, data)) in writes.iter().enumerate() {
            let end = (offset + data.len() as u64).min(image.len() as u64);
            if *offset < end {
                image[*offset as usize..end as usize]
                    .copy_from_slice(&data[..(end - offset) as usize]);
            }
            let blank = image.iter().all(|&b| b == 0);
            let luks = Luks2::open(image.as_slice()).is_ok();
            assert!(
                blank || luks,
                "after write {n} ({} bytes at {offset}) the device is neither blank nor LUKS2",
                data.len()
            );
            seen_luks |= luks;
        }
        assert!(seen_luks);
        // And the end result opens with the passphrase.
        let l = Luks2::open(image.as_slice()).unwrap();
        assert_eq!(l.keyslots().len(), 1);
    }

    #[test]
    fn format_unlock_add_remove() {
        let dev = image();
        let vk = VolumeKey::generate();
        let mut l = Luks2::format(&dev, &vk, b"one", &opts(FAST)).unwrap();
        let argon = Kdf::Argon2id {
            time: 1,
            memory_kib: 64,
            cpus: 1,
        };
        let two = l
            .add_keyslot(&dev, Credential::Passphrase(b"one"), b"two", argon)
            .unwrap();
        assert_eq!(two, 1);
        let l2 = Luks2::open(&dev).unwrap();
        assert_eq!(l2.seqid(), l.seqid());
        assert_eq!(l2.uuid(), l.uuid());
        for (pass, slot) in [(&b"one"[..], 0), (b"two", 1)] {
            let (s, got) = l2.unlock(&dev, pass).unwrap();
            assert_eq!(s, slot);
            assert_eq!(got.as_bytes(), vk.as_bytes());
        }
        assert!(matches!(
            l2.unlock(&dev, b"bad"),
            Err(Error::WrongPassphrase)
        ));
        assert!(matches!(
            l.add_keyslot(&dev, Credential::Passphrase(b"bad"), b"x", FAST),
            Err(Error::WrongPassphrase)
        ));
        assert!(matches!(
            l.add_keyslot(
                &dev,
                Credential::VolumeKey(&VolumeKey::generate()),
                b"x",
                FAST
            ),
            Err(Error::WrongVolumeKey)
        ));
        l.remove_keyslot(&dev, 0).unwrap();
        let l3 = Luks2::open(&dev).unwrap();
        assert!(matches!(
            l3.unlock(&dev, b"one"),
            Err(Error::WrongPassphrase)
        ));
        assert_eq!(l3.unlock(&dev, b"two").unwrap().0, 1);
        assert!(matches!(
            l.remove_keyslot(&dev, 1),
            Err(Error::LastKeyslot(1))
        ));
        // The freed area is reused.
        let again = l
            .add_keyslot(&dev, Credential::VolumeKey(&vk), b"three", FAST)
            .unwrap();
        assert_eq!(again, 0);
        assert_eq!(l.metadata().keyslots[&0].area.offset, 32768);
    }

    #[test]
    fn opens_and_unlocks_an_image_in_memory() {
        let dev = image();
        let vk = VolumeKey::generate();
        Luks2::format(&dev, &vk, b"pw", &opts(FAST)).unwrap();
        let mut bytes = vec![0u8; DEFAULT_DATA_OFFSET as usize];
        FileExt::read_exact_at(&dev, &mut bytes, 0).unwrap();
        let l = Luks2::open(&bytes[..]).unwrap();
        assert_eq!(
            l.unlock(&bytes[..], b"pw").unwrap().1.as_bytes(),
            vk.as_bytes()
        );
        // Truncated images fail cleanly.
        assert!(
            Luks2::open(&bytes[..20000]).is_ok(),
            "the primary copy alone suffices"
        );
        assert!(Luks2::open(&bytes[..100]).is_err());
        assert!(l.unlock(&bytes[..40000], b"pw").is_err());
    }

    #[test]
    fn corrupt_primary_falls_back_to_secondary() {
        let dev = image();
        let vk = VolumeKey::generate();
        let l = Luks2::format(&dev, &vk, b"pw", &opts(FAST)).unwrap();
        FileExt::write_all_at(&dev, &[0xff; 64], 200).unwrap();
        let back = Luks2::open(&dev).unwrap();
        assert_eq!(back.uuid(), l.uuid());
        assert_eq!(
            back.unlock(&dev, b"pw").unwrap().1.as_bytes(),
            vk.as_bytes()
        );
        // Both copies gone: a clear error.
        FileExt::write_all_at(&dev, &[0xff; 64], header::DEFAULT_HDR_SIZE + 200).unwrap();
        assert!(matches!(
            Luks2::open(&dev),
            Err(Error::NoValidHeader { .. })
        ));
    }

    #[test]
    fn tokens_round_trip_and_follow_keyslots() {
        let dev = image();
        let vk = VolumeKey::generate();
        let mut l = Luks2::format(&dev, &vk, b"pw", &opts(FAST)).unwrap();
        l.add_keyslot(&dev, Credential::VolumeKey(&vk), b"pw2", FAST)
            .unwrap();
        let mut fields = Map::new();
        fields.insert("tpm2-pcrs".into(), serde_json::json!([7, 11]));
        let tok = Token {
            kind: "systemd-tpm2".into(),
            keyslots: vec!["1".into()],
            fields,
        };
        let id = l.add_token(&dev, tok.clone()).unwrap();
        assert_eq!(Luks2::open(&dev).unwrap().token(id), Some(&tok));
        let bad = Token {
            keyslots: vec!["9".into()],
            ..tok.clone()
        };
        assert!(matches!(
            l.add_token(&dev, bad),
            Err(Error::TokenKeyslot { keyslot: 9, .. })
        ));
        l.remove_keyslot(&dev, 1).unwrap();
        assert!(Luks2::open(&dev)
            .unwrap()
            .token(id)
            .unwrap()
            .keyslots
            .is_empty());
        assert_eq!(l.remove_token(&dev, id).unwrap().kind, "systemd-tpm2");
        assert!(Luks2::open(&dev).unwrap().tokens().is_empty());
    }

    #[test]
    fn oversized_token_is_refused_and_not_kept() {
        let dev = image();
        let mut l = Luks2::format(&dev, &VolumeKey::generate(), b"pw", &opts(FAST)).unwrap();
        let mut fields = Map::new();
        fields.insert("blob".into(), "x".repeat(13000).into());
        let tok = Token {
            kind: "big".into(),
            keyslots: vec![],
            fields,
        };
        assert!(matches!(
            l.add_token(&dev, tok),
            Err(Error::MetadataTooLarge { .. })
        ));
        assert!(l.tokens().is_empty());
    }

    #[test]
    fn too_small_device_is_refused() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        let e = Luks2::format(&f, &VolumeKey::generate(), b"pw", &opts(FAST)).unwrap_err();
        assert!(matches!(e, Error::DeviceTooSmall { .. }));
    }
}
