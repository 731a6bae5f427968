//! Putting the ESP's FAT32 back in order after a power cut, before anything mounts it.
//!
//! FAT has no journal. Linux writes a file's directory entry, its clusters and the FAT's chain
//! for it at different moments, so a cut while a slot's kernel is being written can leave a
//! directory entry whose size runs past its cluster chain, a chain that reaches a free
//! cluster, or clusters taken in the FAT that no file owns. The kernel's FAT driver trips over
//! such a chain the next time the file is truncated or deleted (`fat_free_clusters: deleting
//! FAT entry beyond EOF`) and turns the whole file system read-only, so the next update cannot
//! write its boot files: the box stays on its old slot for good. Found by the power-cut
//! harness (systest/src/powercut.rs).
//!
//! Linux marks a FAT32 volume dirty (bit 0 of the boot sector's byte 0x41) while it is mounted
//! read-write and clears the mark when it is unmounted or remounted read-only, so a dirty
//! volume is one that was being written when the power went. [`repair`] then does what
//! `fsck.fat -a` does for these cases and nothing else:
//! - every file's and directory's chain is followed from its directory entry; a chain that
//!   reaches a free, bad, out-of-range or already used cluster ends at the cluster before it;
//! - a file whose chain is shorter than its size is truncated to the chain, one whose chain is
//!   longer gives the surplus back;
//! - two names of one file (the same first cluster and size) are what a cut in a rename leaves:
//!   Linux writes the new name's entries and marks the old ones deleted in two sector writes, so
//!   both may stay, or the old short name may stay with its long name half overwritten (seen as
//!   `CAIRN-~1.EFI` beside `cairn-3-b.efi`, found by the power-cut harness). One name is
//!   removed: a name the cut broke before a whole one, a scratch name (`.name.tmp`, renamed
//!   over its target) before the target's, else the later one. What is left is the file under
//!   its old name or its new one, as if the rename had not started or had finished, where
//!   `fsck.fat` would keep both and cut the second to 0 bytes;
//! - clusters the FAT marks used that no file or directory reaches are freed;
//! - every FAT copy gets the result, FSInfo's free count is recomputed, the dirty mark cleared.
//!
//! A file whose chain and size agree is never changed, so the running slot's kernel, which
//! nothing wrote since it was installed, keeps every byte; only the files being written when
//! the power went (the other slot's, which the next install rewrites anyway) lose their tails.
//! Only FAT32 is handled: Cairn's ESPs are FAT32 (see image/src/formats/fat.rs).

use std::io::{Read, Seek, SeekFrom, Write};

/// The boot sector's byte Linux keeps its dirty mark in (FAT32).
const STATE_BYTE: u64 = 0x41;
const DIRTY: u8 = 0x01;
const FREE: u32 = 0;
const BAD: u32 = 0x0FFF_FFF7;
const EOC: u32 = 0x0FFF_FFFF;
const MASK: u32 = 0x0FFF_FFFF;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0F;

/// What [`repair`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// Files and directories whose chain or size was cut short, by path.
    pub truncated: Vec<String>,
    /// Clusters that were marked used but belonged to nothing.
    pub freed: u32,
    /// Second names of a file, left by a rename the power cut (removed), by path.
    pub renamed: Vec<String>,
}

impl std::fmt::Display for Repaired {
    /// `repaired: 1 file(s) cut short /EFI/X, 0 lost cluster(s) freed`, for the console.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "repaired: {} file(s) cut short", self.truncated.len())?;
        if !self.truncated.is_empty() {
            write!(f, " {}", self.truncated.join(" "))?;
        }
        write!(f, ", {} lost cluster(s) freed", self.freed)?;
        if !self.renamed.is_empty() {
            write!(
                f,
                ", {} second name(s) of a file removed {}",
                self.renamed.len(),
                self.renamed.join(" ")
            )?;
        }
        Ok(())
    }
}

/// [`repair`] on the block device (or image file) at `path`, synced when anything changed.
pub fn repair_device(path: &std::path::Path) -> Result<Option<Repaired>, String> {
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let done = repair(&mut dev, false)?;
    if done.is_some() {
        dev.sync_all()
            .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    }
    Ok(done)
}

/// The volume's geometry, from its boot sector.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    sector: u64,
    cluster: u64,
    fat_start: u64,
    fat_bytes: u64,
    fats: u64,
    data_start: u64,
    /// Data clusters; valid cluster numbers are 2..clusters + 2.
    clusters: u32,
    root: u32,
    fsinfo: u64,
    backup_boot: u64,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn geometry(boot: &[u8]) -> Result<Geometry, String> {
    if boot[510..512] != [0x55, 0xAA] {
        return Err("no boot sector signature".into());
    }
    let sector = le16(boot, 11);
    let per_cluster = u64::from(boot[13]);
    let reserved = le16(boot, 14);
    let fats = u64::from(boot[16]);
    let root_entries = le16(boot, 17);
    let total16 = le16(boot, 19);
    let fat16_size = le16(boot, 22);
    let total = if total16 != 0 {
        total16
    } else {
        u64::from(le32(boot, 32))
    };
    let fat_sectors = u64::from(le32(boot, 36));
    if !matches!(sector, 512 | 1024 | 2048 | 4096)
        || !per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
    {
        return Err("not a FAT boot sector".into());
    }
    if root_entries != 0 || fat16_size != 0 || fat_sectors == 0 {
        return Err("not FAT32".into());
    }
    let data = reserved + fats * fat_sectors;
    let clusters = total
        .checked_sub(data)
        .ok_or("FATs larger than the volume")?
        / per_cluster;
    // Every data cluster needs a FAT entry.
    if clusters + 2 > fat_sectors * sector / 4 || !(65525..=0x0FFF_FFF4).contains(&clusters) {
        return Err(format!("{clusters} clusters do not make a FAT32 volume"));
    }
    Ok(Geometry {
        sector,
        cluster: per_cluster * sector,
        fat_start: reserved * sector,
        fat_bytes: fat_sectors * sector,
        fats,
        data_start: data * sector,
        clusters: clusters as u32,
        root: le32(boot, 44) & MASK,
        fsinfo: le16(boot, 48),
        backup_boot: le16(boot, 50),
    })
}

/// Whether the FAT32 volume on `dev` carries Linux's dirty mark.
pub fn is_dirty<D: Read + Seek>(dev: &mut D) -> Result<bool, String> {
    let mut boot = [0u8; 512];
    dev.seek(SeekFrom::Start(0))
        .and_then(|_| dev.read_exact(&mut boot))
        .map_err(|e| format!("reading the boot sector: {e}"))?;
    geometry(&boot)?;
    Ok(boot[STATE_BYTE as usize] & DIRTY != 0)
}

struct Volume<'a, D> {
    dev: &'a mut D,
    g: Geometry,
    fat: Vec<u32>,
    used: Vec<bool>,
    /// The file entry that took each chain, by first cluster.
    owners: std::collections::HashMap<u32, Owner>,
    out: Repaired,
}

/// Where a file's directory entry is, for a second name of the same file.
#[derive(Clone)]
struct Owner {
    /// The directory cluster and the entry's offset in it.
    cluster: u32,
    offset: usize,
    size: u32,
    /// [`name_rank`] of its name.
    rank: u8,
    path: String,
}

/// The checksum of an 8.3 name that each of its long-name entries carries (byte 13).
fn lfn_checksum(short: &[u8]) -> u8 {
    short[..11]
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// How much a name is worth keeping when one file has two: a name a cut broke (a short name with
/// the remains of a long one before it, or a `~N` alias whose long name is gone) least, then a
/// scratch name (a long name starting with `.`, as Cairn's `.name.tmp` files), then any other.
fn name_rank(dir: &[u8], at: usize) -> u8 {
    const BROKEN: u8 = 0;
    const SCRATCH: u8 = 1;
    const NAME: u8 = 2;
    let sum = lfn_checksum(&dir[at..at + 11]);
    // The long name's entries go backwards from the short one: 1, 2, …, the last marked 0x40.
    // A name that reaches back past the start of this cluster began in the cluster before.
    let mut first_char = None;
    let mut i = at;
    let mut ord = 1u8;
    loop {
        if i == 0 {
            break;
        }
        i -= 32;
        let e = &dir[i..i + 32];
        let ours = e[11] == ATTR_LFN && e[0] != 0xE5 && e[13] == sum;
        if !ours {
            if ord == 1 {
                // No long name: a plain 8.3 name, unless it is an alias (`CAIRN-~1.EFI`).
                return if dir[at..at + 8].contains(&b'~') {
                    BROKEN
                } else {
                    NAME
                };
            }
            return BROKEN;
        }
        if e[0] & 0x1F != ord {
            return BROKEN;
        }
        if ord == 1 {
            first_char = Some(u16::from_le_bytes([e[1], e[2]]));
        }
        if e[0] & 0x40 != 0 {
            break;
        }
        ord += 1;
    }
    if first_char == Some(u16::from(b'.')) {
        SCRATCH
    } else {
        NAME
    }
}

/// Marks the short entry at `at` in `dir` deleted, and the long-name entries before it that
/// carry its checksum.
fn delete_entry(dir: &mut [u8], at: usize) {
    let sum = lfn_checksum(&dir[at..at + 11]);
    dir[at] = 0xE5;
    let mut i = at;
    while i > 0 {
        i -= 32;
        if dir[i + 11] != ATTR_LFN || dir[i] == 0xE5 || dir[i + 13] != sum {
            break;
        }
        dir[i] = 0xE5;
    }
}

impl<D: Read + Write + Seek> Volume<'_, D> {
    fn io<T>(r: std::io::Result<T>, what: &str) -> Result<T, String> {
        r.map_err(|e| format!("{what}: {e}"))
    }

    fn valid(&self, c: u32) -> bool {
        (2..self.g.clusters + 2).contains(&c)
    }

    fn at(&self, c: u32) -> u64 {
        self.g.data_start + u64::from(c - 2) * self.g.cluster
    }

    /// Follows a chain from `first`, taking its clusters; returns them and whether it broke
    /// (and was ended at its last good cluster).
    fn take_chain(&mut self, first: u32) -> (Vec<u32>, bool) {
        let mut chain = Vec::new();
        if !self.valid(first) || self.used[first as usize] || self.fat[first as usize] == FREE {
            return (chain, first != 0);
        }
        let mut c = first;
        loop {
            self.used[c as usize] = true;
            chain.push(c);
            let next = self.fat[c as usize] & MASK;
            if next >= 0x0FFF_FFF8 {
                return (chain, false);
            }
            if !self.valid(next)
                || next == BAD
                || self.used[next as usize]
                || self.fat[next as usize] == FREE
            {
                self.fat[c as usize] = (self.fat[c as usize] & !MASK) | EOC;
                return (chain, true);
            }
            c = next;
        }
    }

    /// Gives back the clusters of `chain` after the first `keep`.
    fn shorten(&mut self, chain: &[u32], keep: usize) {
        for &c in &chain[keep..] {
            self.used[c as usize] = false;
        }
        if keep > 0 {
            let last = chain[keep - 1] as usize;
            self.fat[last] = (self.fat[last] & !MASK) | EOC;
        }
    }

    fn read_cluster(&mut self, c: u32) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; self.g.cluster as usize];
        let at = self.at(c);
        Self::io(
            self.dev
                .seek(SeekFrom::Start(at))
                .and_then(|_| self.dev.read_exact(&mut buf)),
            "reading a directory",
        )?;
        Ok(buf)
    }

    fn write_at(&mut self, at: u64, bytes: &[u8]) -> Result<(), String> {
        Self::io(
            self.dev
                .seek(SeekFrom::Start(at))
                .and_then(|_| self.dev.write_all(bytes)),
            "writing",
        )
    }

    /// Walks the directory whose chain starts at `first`; `path` names it.
    fn walk_dir(&mut self, path: &str, first: u32, depth: usize) -> Result<(), String> {
        if depth > 64 {
            return Err(format!("{path}: directories nested more than 64 deep"));
        }
        let (chain, broke) = self.take_chain(first);
        if broke {
            self.out.truncated.push(format!("{path}/"));
        }
        let mut subdirs = Vec::new();
        'clusters: for &c in &chain {
            let mut dir = self.read_cluster(c)?;
            let mut changed = false;
            for i in (0..dir.len()).step_by(32) {
                let e = &dir[i..i + 32];
                match e[0] {
                    0x00 => {
                        if changed {
                            let at = self.at(c);
                            self.write_at(at, &dir)?;
                        }
                        break 'clusters;
                    }
                    0xE5 => continue,
                    _ => {}
                }
                let attr = e[11];
                if attr == ATTR_LFN || attr & ATTR_VOLUME != 0 || e[0] == b'.' {
                    continue;
                }
                let name = short_name(e);
                let first = ((le16(e, 20) as u32) << 16 | le16(e, 26) as u32) & MASK;
                let child = format!("{path}/{name}");
                if attr & ATTR_DIR != 0 {
                    subdirs.push((child, first));
                    continue;
                }
                let size = u64::from(le32(e, 28));
                let here = Owner {
                    cluster: c,
                    offset: i,
                    size: size as u32,
                    rank: name_rank(&dir, i),
                    path: child.clone(),
                };
                let twin = self
                    .owners
                    .get(&first)
                    .filter(|o| self.valid(first) && u64::from(o.size) == size)
                    .cloned();
                if let Some(owner) = twin {
                    // Two names of one file: keep the better name, else the first.
                    if here.rank > owner.rank {
                        if owner.cluster == c {
                            delete_entry(&mut dir, owner.offset);
                        } else {
                            let mut other = self.read_cluster(owner.cluster)?;
                            delete_entry(&mut other, owner.offset);
                            let at = self.at(owner.cluster);
                            self.write_at(at, &other)?;
                        }
                        self.out.renamed.push(owner.path);
                        self.owners.insert(first, here);
                    } else {
                        delete_entry(&mut dir, i);
                        self.out.renamed.push(child);
                    }
                    changed = true;
                    continue;
                }
                // A later name of this file finds it here, unless its chain was cut short
                // (then the later entry is another file's that ran into it).
                let first_owner = self.valid(first) && !self.used[first as usize];
                let (chain, broke) = self.take_chain(first);
                let needed = size.div_ceil(self.g.cluster) as usize;
                let have = chain.len();
                if have > needed {
                    self.shorten(&chain, needed);
                    if needed == 0 {
                        dir[i + 20..i + 22].copy_from_slice(&[0, 0]);
                        dir[i + 26..i + 28].copy_from_slice(&[0, 0]);
                        changed = true;
                    }
                    self.out.truncated.push(child);
                } else if have < needed || broke {
                    let new_size = (have as u64 * self.g.cluster).min(size) as u32;
                    dir[i + 28..i + 32].copy_from_slice(&new_size.to_le_bytes());
                    if have == 0 {
                        dir[i + 20..i + 22].copy_from_slice(&[0, 0]);
                        dir[i + 26..i + 28].copy_from_slice(&[0, 0]);
                    }
                    changed = true;
                    self.out.truncated.push(child);
                } else if first_owner {
                    self.owners.insert(first, here);
                }
            }
            if changed {
                let at = self.at(c);
                self.write_at(at, &dir)?;
            }
        }
        for (child, first) in subdirs {
            self.walk_dir(&child, first, depth + 1)?;
        }
        Ok(())
    }
}

/// The 8.3 name of a directory entry, for messages.
fn short_name(e: &[u8]) -> String {
    let base = String::from_utf8_lossy(&e[0..8]).trim_end().to_string();
    let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Repairs the FAT32 volume on `dev` (not mounted) if it carries the dirty mark, or always with
/// `force`; returns what changed, or `None` for a clean volume left alone.
pub fn repair<D: Read + Write + Seek>(
    dev: &mut D,
    force: bool,
) -> Result<Option<Repaired>, String> {
    let mut boot = vec![0u8; 512];
    Volume::<D>::io(
        dev.seek(SeekFrom::Start(0))
            .and_then(|_| dev.read_exact(&mut boot)),
        "reading the boot sector",
    )?;
    let g = geometry(&boot)?;
    if !force && boot[STATE_BYTE as usize] & DIRTY == 0 {
        return Ok(None);
    }
    // The active FAT: the first, unless mirroring is off (bit 7 of the flags), then the one
    // the low bits name.
    let flags = le16(&boot, 40);
    let active = if flags & 0x80 != 0 { flags & 0x0F } else { 0 };
    if active >= g.fats {
        return Err(format!("the active FAT {active} does not exist"));
    }
    let mut raw = vec![0u8; g.fat_bytes as usize];
    Volume::<D>::io(
        dev.seek(SeekFrom::Start(g.fat_start + active * g.fat_bytes))
            .and_then(|_| dev.read_exact(&mut raw)),
        "reading the FAT",
    )?;
    let fat: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let before = fat.clone();
    let clusters = g.clusters;
    let mut v = Volume {
        dev,
        g,
        fat,
        used: vec![false; clusters as usize + 2],
        owners: std::collections::HashMap::new(),
        out: Repaired::default(),
    };
    v.walk_dir("", g.root, 0)?;
    for c in 2..clusters + 2 {
        let e = v.fat[c as usize] & MASK;
        if e != FREE && e != BAD && !v.used[c as usize] {
            v.fat[c as usize] &= !MASK;
            v.out.freed += 1;
        }
    }
    let free = (2..clusters + 2)
        .filter(|&c| v.fat[c as usize] & MASK == FREE)
        .count() as u32;
    if v.fat != before || force || v.g.fats > 1 {
        let bytes: Vec<u8> = v.fat.iter().flat_map(|e| e.to_le_bytes()).collect();
        for n in 0..v.g.fats {
            let at = v.g.fat_start + n * v.g.fat_bytes;
            v.write_at(at, &bytes)?;
        }
    }
    // FSInfo: the free count, and "next free unknown".
    if v.g.fsinfo != 0 && v.g.fsinfo != 0xFFFF {
        let at = v.g.fsinfo * v.g.sector;
        let mut info = vec![0u8; 512];
        Volume::<D>::io(
            v.dev
                .seek(SeekFrom::Start(at))
                .and_then(|_| v.dev.read_exact(&mut info)),
            "reading FSInfo",
        )?;
        if le32(&info, 0) == 0x4161_5252 && le32(&info, 484) == 0x6141_7272 {
            info[488..492].copy_from_slice(&free.to_le_bytes());
            info[492..496].copy_from_slice(&u32::MAX.to_le_bytes());
            v.write_at(at, &info)?;
        }
    }
    // Last, the mark: a cut before here repairs again next time.
    boot[STATE_BYTE as usize] &= !DIRTY;
    v.write_at(0, &boot)?;
    if v.g.backup_boot != 0 && v.g.backup_boot != 0xFFFF {
        let at = v.g.backup_boot * v.g.sector + STATE_BYTE;
        let byte = [boot[STATE_BYTE as usize]];
        v.write_at(at, &byte)?;
    }
    Volume::<D>::io(v.dev.flush(), "flushing")?;
    Ok(Some(v.out))
}
