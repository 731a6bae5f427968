//! FAT32 for the EFI System Partition, formatted and filled with the `fatfs` crate. The one idea:
//! the bytes must depend only on the arguments. fatfs would otherwise take the date from the
//! host clock and leave whatever was on the device in every sector it does not write (its
//! format is a "quick" format, and files' last clusters keep stale tails), so this module fixes
//! the clock at [`FAT_TIMESTAMP`] and zeroes the volume first.
//!
//! FAT32 (never FAT12/16) because UEFI firmware must read it and some only read FAT32 on fixed
//! disks; that needs at least 65525 clusters, so the cluster size is chosen to reach that count.
//! FAT has no owners, permission bits or symlinks: modes are dropped, symlinks are an error.

use std::io::{self, Read, Seek, SeekFrom, Write};

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

use super::error::FormatError;
use super::tree::{NodeKind, Tree};

/// Every created/modified/accessed stamp in the volume.
pub const FAT_TIMESTAMP: (u16, u16, u16) = (2020, 1, 1);

const SECTOR: u64 = 512;
const FAT32_MIN_CLUSTERS: u64 = 65525;
/// Kept well under FAT32's 0x0FFFFFF5 limit and the u32 sector count.
const MAX_BYTES: u64 = u32::MAX as u64 * SECTOR;
/// Reserved sectors fatfs puts before the FATs on FAT32 (boot, FSInfo, backup boot...).
const RESERVED_SECTORS: u64 = 32;
/// fatfs asks about cluster counts only after laying out the FATs; leave headroom so the
/// estimate below never picks a size fatfs then rejects.
const CLUSTER_MARGIN: u64 = 64;

#[derive(Debug)]
pub(crate) struct FixedClock;

impl TimeProvider for FixedClock {
    fn get_current_date(&self) -> Date {
        let (year, month, day) = FAT_TIMESTAMP;
        Date { year, month, day }
    }

    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: self.get_current_date(),
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

pub(crate) static FIXED_CLOCK: FixedClock = FixedClock;

/// Clusters left for data with `cluster` bytes each, after the reserved sectors and two FATs
/// of 4 bytes per cluster (a slight overestimate of the FATs, so a safe underestimate here).
fn estimated_clusters(size_bytes: u64, cluster: u64) -> u64 {
    size_bytes.saturating_sub(RESERVED_SECTORS * SECTOR) / (cluster + 2 * 4)
}

/// The largest cluster size up to 4 KiB (the usual ESP choice, and what keeps the FAT small)
/// that still gives FAT32 its minimum cluster count.
fn cluster_bytes(size_bytes: u64) -> Result<u32, FormatError> {
    if size_bytes > MAX_BYTES {
        return Err(FormatError::FatTooLarge { size_bytes });
    }
    let mut cluster = 4096u32;
    loop {
        if estimated_clusters(size_bytes, u64::from(cluster)) >= FAT32_MIN_CLUSTERS + CLUSTER_MARGIN
        {
            return Ok(cluster);
        }
        if cluster == SECTOR as u32 {
            let min_bytes =
                RESERVED_SECTORS * SECTOR + (FAT32_MIN_CLUSTERS + CLUSTER_MARGIN) * (SECTOR + 8);
            return Err(FormatError::FatTooSmall {
                size_bytes,
                min_bytes,
            });
        }
        cluster /= 2;
    }
}

/// The 11-byte, space-padded label in the boot sector. Restricted to what every reader
/// displays the same way: uppercase ASCII letters, digits, space, `-` and `_`.
fn label_bytes(label: &str) -> Result<[u8; 11], FormatError> {
    let err = |reason| FormatError::FatLabel {
        label: label.to_owned(),
        reason,
    };
    if label.is_empty() || label.len() > 11 {
        return Err(err("must be 1 to 11 characters"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b" -_".contains(&b))
    {
        return Err(err(
            "use only A-Z, 0-9, space, '-' and '_' (FAT labels are uppercase)",
        ));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

/// Zeroes `[0, size_bytes)` of `dev`, writing only chunks that are not already zero so a
/// sparse `disk.img` stays sparse.
fn scrub<D: Read + Write + Seek>(dev: &mut D, size_bytes: u64) -> io::Result<()> {
    const CHUNK: u64 = 1024 * 1024;
    let zeros = vec![0u8; CHUNK as usize];
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < size_bytes {
        let n = CHUNK.min(size_bytes - at) as usize;
        dev.seek(SeekFrom::Start(at))?;
        dev.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            dev.seek(SeekFrom::Start(at))?;
            dev.write_all(&zeros[..n])?;
        }
        at += n as u64;
    }
    dev.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Formats the first `size_bytes` of `dev` (which must start at the volume's first byte, e.g.
/// a [`super::region::Region`]) as FAT32 with the given volume id and label, and copies `tree`
/// into it. Same arguments, same bytes.
pub fn write_fat32<D: Read + Write + Seek>(
    mut dev: D,
    size_bytes: u64,
    volume_id: u32,
    label: &str,
    tree: &Tree,
) -> Result<(), FormatError> {
    let label_raw = label_bytes(label)?;
    let cluster = cluster_bytes(size_bytes)?;
    let fat = |op: &'static str, path: &str| {
        let path = path.to_owned();
        move |source: io::Error| FormatError::Fat {
            op,
            path: path.clone(),
            source,
        }
    };

    scrub(&mut dev, size_bytes).map_err(fat("zeroing the volume", "/"))?;
    let options = FormatVolumeOptions::new()
        .fat_type(FatType::Fat32)
        .bytes_per_cluster(cluster)
        .total_sectors((size_bytes / SECTOR) as u32)
        .volume_id(volume_id)
        .volume_label(label_raw);
    fatfs::format_volume(&mut dev, options).map_err(fat("formatting", "/"))?;
    dev.seek(SeekFrom::Start(0)).map_err(fat("mounting", "/"))?;

    let fs = FileSystem::new(&mut dev, FsOptions::new().time_provider(&FIXED_CLOCK))
        .map_err(fat("mounting", "/"))?;
    if fs.fat_type() != FatType::Fat32 {
        return Err(FormatError::Fat {
            op: "formatting",
            path: "/".into(),
            source: io::Error::other(format!("fatfs produced {:?}, not FAT32", fs.fat_type())),
        });
    }
    let root = fs.root_dir();
    for (path, node) in tree.iter() {
        match &node.kind {
            NodeKind::Dir => {
                root.create_dir(path)
                    .map_err(fat("creating directory", path))?;
            }
            NodeKind::File(content) => {
                let open = content.open(path)?;
                let mut file = root.create_file(path).map_err(fat("creating file", path))?;
                open.copy_to(&mut file, fat("writing file", path))?;
                file.flush().map_err(fat("writing file", path))?;
            }
            NodeKind::Symlink(_) => return Err(FormatError::FatSymlink { path: path.clone() }),
        }
    }
    drop(root);
    // Counting free clusters stores the count in FSInfo; without it fsck.fat reports "free
    // cluster summary uninitialized".
    fs.stats().map_err(fat("counting free clusters", "/"))?;
    // unmount writes the FSInfo sector and clears the dirty flag; dropping would hide errors.
    fs.unmount().map_err(fat("unmounting", "/"))?;
    repair_dot_entries(&mut dev).map_err(fat("repairing '.' and '..' entries", "/"))?;
    Ok(())
}

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0F;
const ATTR_DIR: u8 = 0x10;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";

/// Geometry of a FAT32 volume, read back from the boot sector fatfs wrote.
struct Layout {
    fat_offset: u64,
    data_offset: u64,
    cluster_bytes: u64,
    root_cluster: u32,
    clusters: u32,
}

impl Layout {
    fn read<D: Read + Seek>(dev: &mut D) -> io::Result<Layout> {
        let mut bs = [0u8; 512];
        dev.seek(SeekFrom::Start(0))?;
        dev.read_exact(&mut bs)?;
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([bs[at], bs[at + 1]]));
        let u32_at = |at: usize| u32::from_le_bytes([bs[at], bs[at + 1], bs[at + 2], bs[at + 3]]);
        let sector = u16_at(0x0B);
        let cluster_bytes = sector * u64::from(bs[0x0D]);
        let fat_offset = u16_at(0x0E) * sector;
        let data_offset = fat_offset + u64::from(bs[0x10]) * u64::from(u32_at(0x24)) * sector;
        let total = u64::from(u32_at(0x20)) * sector;
        if cluster_bytes == 0 || data_offset >= total {
            return Err(io::Error::other("boot sector geometry is inconsistent"));
        }
        let clusters = u32::try_from((total - data_offset) / cluster_bytes).unwrap_or(u32::MAX);
        Ok(Layout {
            fat_offset,
            data_offset,
            cluster_bytes,
            root_cluster: u32_at(0x2C),
            clusters,
        })
    }

    fn cluster_offset(&self, cluster: u32) -> io::Result<u64> {
        if cluster < 2 || cluster - 2 >= self.clusters {
            return Err(io::Error::other(format!(
                "cluster {cluster} is outside the volume"
            )));
        }
        Ok(self.data_offset + u64::from(cluster - 2) * self.cluster_bytes)
    }

    fn chain<D: Read + Seek>(&self, dev: &mut D, first: u32) -> io::Result<Vec<u32>> {
        let mut chain = vec![first];
        let mut cluster = first;
        loop {
            let mut e = [0u8; 4];
            dev.seek(SeekFrom::Start(self.fat_offset + u64::from(cluster) * 4))?;
            dev.read_exact(&mut e)?;
            cluster = u32::from_le_bytes(e) & 0x0FFF_FFFF;
            if cluster >= 0x0FFF_FFF8 {
                return Ok(chain);
            }
            if chain.len() > self.clusters as usize {
                return Err(io::Error::other(format!(
                    "cluster chain from {first} loops"
                )));
            }
            self.cluster_offset(cluster)?;
            chain.push(cluster);
        }
    }
}

/// fatfs 0.3.6 (with `alloc`) writes a long-name entry in front of every directory's "." and
/// ".." entries, and points ".." of a top-level directory at the root's cluster instead of 0.
/// Firmware and fsck.fat expect "." and ".." as the first two slots, so each directory is
/// rewritten with those two long-name slots removed and the rest shifted up, which is the
/// layout mkfs.fat and the Linux driver produce.
fn repair_dot_entries<D: Read + Write + Seek>(dev: &mut D) -> io::Result<()> {
    let layout = Layout::read(dev)?;
    let mut pending = vec![(layout.root_cluster, 0u32)];
    while let Some((dir, parent)) = pending.pop() {
        let chain = layout.chain(dev, dir)?;
        let mut bytes = vec![0u8; chain.len() * layout.cluster_bytes as usize];
        for (cluster, buf) in chain
            .iter()
            .zip(bytes.chunks_mut(layout.cluster_bytes as usize))
        {
            dev.seek(SeekFrom::Start(layout.cluster_offset(*cluster)?))?;
            dev.read_exact(buf)?;
        }
        let is_root = dir == layout.root_cluster;
        let entry = |i: usize| &bytes[i * ENTRY..(i + 1) * ENTRY];
        let broken = !is_root
            && bytes.len() >= 4 * ENTRY
            && entry(0)[11] == ATTR_LFN
            && &entry(1)[..11] == DOT
            && entry(2)[11] == ATTR_LFN
            && &entry(3)[..11] == DOTDOT;
        if broken {
            let mut fixed = Vec::with_capacity(bytes.len());
            fixed.extend_from_slice(entry(1));
            fixed.extend_from_slice(entry(3));
            fixed.extend_from_slice(&bytes[4 * ENTRY..]);
            fixed.resize(bytes.len(), 0);
            // ".." of a directory whose parent is the root holds cluster 0, by the FAT spec.
            let up = if parent == layout.root_cluster {
                0
            } else {
                parent
            };
            fixed[ENTRY + 20..ENTRY + 22].copy_from_slice(&((up >> 16) as u16).to_le_bytes());
            fixed[ENTRY + 26..ENTRY + 28].copy_from_slice(&(up as u16).to_le_bytes());
            bytes = fixed;
            for (cluster, buf) in chain
                .iter()
                .zip(bytes.chunks(layout.cluster_bytes as usize))
            {
                dev.seek(SeekFrom::Start(layout.cluster_offset(*cluster)?))?;
                dev.write_all(buf)?;
            }
        }
        for e in bytes.chunks_exact(ENTRY) {
            if e[0] == 0 {
                break;
            }
            let attr = e[11];
            let special = e[0] == 0xE5 || attr == ATTR_LFN || &e[..11] == DOT || &e[..11] == DOTDOT;
            if !special && attr & ATTR_DIR != 0 {
                let child = u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
                    | u32::from(u16::from_le_bytes([e[26], e[27]]));
                pending.push((child, dir));
            }
        }
        if pending.len() > layout.clusters as usize {
            return Err(io::Error::other("directory tree loops"));
        }
    }
    dev.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1024 * 1024;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.add_file("EFI/BOOT/BOOTAA64.EFI", 0o644, vec![0xAB; 100_000])
            .unwrap();
        t.add_file("loader/entries/cairn-a+3-0.conf", 0o644, "title Cairn A\n")
            .unwrap();
        t.add_dir("loader/keys", 0o755).unwrap();
        t
    }

    fn format(tree: &Tree, size: u64, dev: &mut Cursor<Vec<u8>>) {
        write_fat32(&mut *dev, size, 0xCA1F_0001, "CAIRN-ESP", tree).unwrap();
    }

    #[test]
    fn cluster_size_keeps_fat32_valid() {
        assert_eq!(cluster_bytes(512 * MIB).unwrap(), 4096);
        assert_eq!(cluster_bytes(256 * MIB).unwrap(), 2048);
        assert_eq!(cluster_bytes(64 * MIB).unwrap(), 512);
        assert!(matches!(
            cluster_bytes(32 * MIB),
            Err(FormatError::FatTooSmall { .. })
        ));
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(&label_bytes("ESP").unwrap(), b"ESP        ");
        assert!(label_bytes("esp").is_err());
        assert!(label_bytes("TWELVE_CHARS").is_err());
        assert!(label_bytes("").is_err());
    }

    #[test]
    fn files_read_back_with_fatfs() {
        let size = 64 * MIB;
        let mut dev = Cursor::new(vec![0u8; size as usize]);
        format(&sample(), size, &mut dev);
        dev.set_position(0);
        let fs = FileSystem::new(&mut dev, FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        assert_eq!(fs.volume_id(), 0xCA1F_0001);
        assert_eq!(fs.volume_label(), "CAIRN-ESP");
        let mut content = String::new();
        fs.root_dir()
            .open_file("loader/entries/cairn-a+3-0.conf")
            .unwrap()
            .read_to_string(&mut content)
            .unwrap();
        assert_eq!(content, "title Cairn A\n");
        let f = fs
            .root_dir()
            .open_dir("EFI/BOOT")
            .unwrap()
            .iter()
            .find_map(|e| {
                let e = e.unwrap();
                (e.file_name() == "BOOTAA64.EFI").then_some(e)
            });
        let f = f.unwrap();
        assert_eq!(f.len(), 100_000);
        assert_eq!(
            f.modified().date,
            Date {
                year: 2020,
                month: 1,
                day: 1
            }
        );
    }

    #[test]
    fn output_is_reproducible_even_over_garbage() {
        let size = 64 * MIB;
        let mut a = Cursor::new(vec![0u8; size as usize]);
        let mut b = Cursor::new(vec![0x5Au8; size as usize]);
        format(&sample(), size, &mut a);
        format(&sample(), size, &mut b);
        assert!(a.get_ref() == b.get_ref(), "two writes differ");
    }

    #[test]
    fn symlinks_are_refused() {
        let mut t = Tree::new();
        t.add_symlink("EFI/link", "BOOT").unwrap();
        let size = 64 * MIB;
        let mut dev = Cursor::new(vec![0u8; size as usize]);
        let err = write_fat32(&mut dev, size, 1, "ESP", &t).unwrap_err();
        assert!(matches!(err, FormatError::FatSymlink { .. }), "{err}");
    }
}
