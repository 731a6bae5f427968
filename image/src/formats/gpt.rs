//! GUID Partition Table with 512-byte sectors, as UEFI 2.10 §5.3 lays it out: a protective MBR
//! at LBA 0, the primary header at LBA 1 and its 128 × 128-byte entry array at LBA 2..=33, and
//! a mirror of both at the end of the disk (entries at `last - 32`, header at `last`). The idea
//! to hold on to: the two copies are the same table described from two places, differing only
//! in the header's own-LBA, alternate-LBA and entries-LBA fields, and each header's CRC32 covers
//! the entries CRC32, so one corrupt byte anywhere makes exactly one copy invalid and [`read`]
//! falls back to the other.
//!
//! [`read`] parses outside data (a disk someone else may have touched): every count and size
//! it takes from the header is bounded by the limits below before it is used.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::error::FormatError;
use super::guid::Guid;

pub const SECTOR_BYTES: u64 = 512;
/// Entries this writer emits; the UEFI minimum array size (16 KiB).
pub const ENTRY_COUNT: u32 = 128;
pub const ENTRY_BYTES: u32 = 128;
/// Sectors the entry array of [`ENTRY_COUNT`] × [`ENTRY_BYTES`] takes.
const ENTRY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_BYTES as u64) / SECTOR_BYTES;
/// Partitions start on 1 MiB boundaries, which suits every flash erase block and RAID stripe
/// anyone is likely to meet, and matches what sgdisk and sfdisk default to.
pub const ALIGN_LBA: u64 = (1024 * 1024) / SECTOR_BYTES;
pub const MAX_LABEL_UNITS: usize = 36;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION_1_0: u32 = 0x0001_0000;
const HEADER_BYTES: u32 = 92;

/// Bounds on what [`read`] accepts from a header before trusting it to size a read.
const MAX_HEADER_BYTES: u32 = SECTOR_BYTES as u32;
const MAX_ENTRY_BYTES: u32 = 1024;
const MAX_ENTRY_ARRAY_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub label: String,
    pub type_guid: Guid,
    pub part_guid: Guid,
    pub first_lba: u64,
    /// Inclusive, as in the on-disk entry.
    pub last_lba: u64,
    pub attributes: u64,
}

impl GptPartition {
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR_BYTES
    }
}

/// A table as read back from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    /// Used entries in entry-array order; unused slots (nil type GUID) are skipped.
    pub partitions: Vec<GptPartition>,
    /// True when the primary copy was damaged and this came from the backup at the disk's end.
    pub from_backup: bool,
}

/// Sector numbers that follow from the disk size alone.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    last_lba: u64,
    first_usable: u64,
    last_usable: u64,
}

impl Geometry {
    fn new(disk_bytes: u64) -> Result<Geometry, FormatError> {
        let err = |reason| FormatError::GptDiskSize { disk_bytes, reason };
        if !disk_bytes.is_multiple_of(SECTOR_BYTES) {
            return Err(err("size is not a multiple of 512-byte sectors"));
        }
        let sectors = disk_bytes / SECTOR_BYTES;
        // MBR + two headers + two entry arrays + at least one usable sector.
        if sectors < 3 + 2 * ENTRY_SECTORS + 1 {
            return Err(err("too small to hold two GPT copies and any partition"));
        }
        let last_lba = sectors - 1;
        Ok(Geometry {
            last_lba,
            first_usable: 2 + ENTRY_SECTORS,
            last_usable: last_lba - 1 - ENTRY_SECTORS,
        })
    }
}

/// Places partitions of the given sizes one after another, each starting on a 1 MiB boundary
/// (the first at 1 MiB). Sizes are rounded up to whole sectors. Returns inclusive
/// `(first_lba, last_lba)` pairs in input order.
pub fn layout(disk_bytes: u64, sizes: &[(String, u64)]) -> Result<Vec<(u64, u64)>, FormatError> {
    let geo = Geometry::new(disk_bytes)?;
    if sizes.len() > ENTRY_COUNT as usize {
        return Err(FormatError::GptTooManyPartitions { count: sizes.len() });
    }
    let mut placed = Vec::with_capacity(sizes.len());
    let mut next = ALIGN_LBA;
    for (label, bytes) in sizes {
        if *bytes == 0 {
            return Err(FormatError::GptBadPartition {
                label: label.clone(),
                reason: "size is zero".into(),
            });
        }
        let first = next;
        let last = first.checked_add(bytes.div_ceil(SECTOR_BYTES) - 1);
        let last = match last {
            Some(last) if last <= geo.last_usable => last,
            _ => {
                return Err(FormatError::GptDoesNotFit {
                    label: label.clone(),
                    last_lba: last.unwrap_or(u64::MAX),
                    last_usable_lba: geo.last_usable,
                    disk_bytes,
                })
            }
        };
        placed.push((first, last));
        next = (last + 1).next_multiple_of(ALIGN_LBA);
    }
    Ok(placed)
}

/// Writes the protective MBR and both GPT copies for a disk of `disk_bytes`. Partition `i` of
/// `parts` goes into entry slot `i`. Only the table's sectors are written; the file grows to
/// `disk_bytes` if it is shorter, because the backup lives in the last sector.
pub fn write(
    file: &mut File,
    disk_bytes: u64,
    disk_guid: Guid,
    parts: &[GptPartition],
) -> Result<(), FormatError> {
    let geo = Geometry::new(disk_bytes)?;
    validate(&geo, disk_bytes, parts)?;

    let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_BYTES) as usize];
    for (slot, part) in entries.chunks_exact_mut(ENTRY_BYTES as usize).zip(parts) {
        encode_entry(part, slot)?;
    }
    let entries_crc = crc32fast::hash(&entries);

    let backup_entries_lba = geo.last_lba - ENTRY_SECTORS;
    let primary = encode_header(&geo, disk_guid, 1, geo.last_lba, 2, entries_crc);
    let backup = encode_header(
        &geo,
        disk_guid,
        geo.last_lba,
        1,
        backup_entries_lba,
        entries_crc,
    );

    put(
        file,
        "writing the protective MBR",
        0,
        &protective_mbr(geo.last_lba),
    )?;
    put(
        file,
        "writing the primary GPT header",
        SECTOR_BYTES,
        &primary,
    )?;
    put(
        file,
        "writing the primary GPT entries",
        2 * SECTOR_BYTES,
        &entries,
    )?;
    put(
        file,
        "writing the backup GPT entries",
        backup_entries_lba * SECTOR_BYTES,
        &entries,
    )?;
    put(
        file,
        "writing the backup GPT header",
        geo.last_lba * SECTOR_BYTES,
        &backup,
    )?;
    Ok(())
}

fn validate(geo: &Geometry, disk_bytes: u64, parts: &[GptPartition]) -> Result<(), FormatError> {
    if parts.len() > ENTRY_COUNT as usize {
        return Err(FormatError::GptTooManyPartitions { count: parts.len() });
    }
    let bad = |p: &GptPartition, reason: String| FormatError::GptBadPartition {
        label: p.label.clone(),
        reason,
    };
    for p in parts {
        label_units(&p.label)?;
        if p.type_guid.is_nil() {
            return Err(bad(
                p,
                "type GUID is nil, which marks an unused entry".into(),
            ));
        }
        if p.first_lba > p.last_lba {
            return Err(bad(
                p,
                format!("first LBA {} is after last LBA {}", p.first_lba, p.last_lba),
            ));
        }
        if p.first_lba < geo.first_usable {
            return Err(bad(
                p,
                format!(
                    "first LBA {} overlaps the primary GPT (first usable: {})",
                    p.first_lba, geo.first_usable
                ),
            ));
        }
        if p.last_lba > geo.last_usable {
            return Err(FormatError::GptDoesNotFit {
                label: p.label.clone(),
                last_lba: p.last_lba,
                last_usable_lba: geo.last_usable,
                disk_bytes,
            });
        }
    }
    let mut sorted: Vec<&GptPartition> = parts.iter().collect();
    sorted.sort_by_key(|p| p.first_lba);
    for pair in sorted.windows(2) {
        if pair[1].first_lba <= pair[0].last_lba {
            return Err(bad(
                pair[1],
                format!("overlaps partition {:?}", pair[0].label),
            ));
        }
    }
    let mut guids: Vec<Guid> = parts.iter().map(|p| p.part_guid).collect();
    guids.sort();
    if let Some(dup) = guids.windows(2).find(|w| w[0] == w[1]) {
        let p = parts
            .iter()
            .find(|p| p.part_guid == dup[0])
            .unwrap_or(&parts[0]);
        return Err(bad(p, format!("partition GUID {} is used twice", dup[0])));
    }
    Ok(())
}

fn label_units(label: &str) -> Result<Vec<u16>, FormatError> {
    let units: Vec<u16> = label.encode_utf16().collect();
    if units.len() > MAX_LABEL_UNITS {
        return Err(FormatError::GptLabelTooLong {
            label: label.to_owned(),
            units: units.len(),
        });
    }
    Ok(units)
}

fn encode_entry(p: &GptPartition, out: &mut [u8]) -> Result<(), FormatError> {
    out[0..16].copy_from_slice(&p.type_guid.to_gpt_bytes());
    out[16..32].copy_from_slice(&p.part_guid.to_gpt_bytes());
    out[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
    out[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
    out[48..56].copy_from_slice(&p.attributes.to_le_bytes());
    for (i, unit) in label_units(&p.label)?.into_iter().enumerate() {
        out[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    Ok(())
}

fn encode_header(
    geo: &Geometry,
    disk_guid: Guid,
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; SECTOR_BYTES as usize];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_BYTES.to_le_bytes());
    // 16..20 CRC, filled below; 20..24 reserved, zero.
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&geo.first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&geo.last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_gpt_bytes());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_BYTES.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_BYTES as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One 0xEE partition from LBA 1 over the whole disk, so MBR-only tools see the disk as in
/// use. Its length field is 32 bits; larger disks are capped at 0xFFFFFFFF as the spec says.
fn protective_mbr(last_lba: u64) -> Vec<u8> {
    let mut mbr = vec![0u8; SECTOR_BYTES as usize];
    let sectors = u32::try_from(last_lba).unwrap_or(u32::MAX);
    let e = &mut mbr[446..462];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS "beyond addressable"
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

fn put(file: &File, op: &'static str, offset: u64, bytes: &[u8]) -> Result<(), FormatError> {
    file.write_all_at(bytes, offset)
        .map_err(|source| FormatError::Io { op, offset, source })
}

fn get(file: &File, op: &'static str, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|source| FormatError::Io { op, offset, source })?;
    Ok(buf)
}

/// Reads and validates the table, preferring the primary copy and falling back to the backup
/// in the disk's last sector when the primary is damaged.
pub fn read(file: &mut File) -> Result<Gpt, FormatError> {
    let disk_bytes = file
        .metadata()
        .map_err(|source| FormatError::Io {
            op: "reading the disk size",
            offset: 0,
            source,
        })?
        .len();
    let sectors = disk_bytes / SECTOR_BYTES;
    if sectors < 3 {
        return Err(FormatError::GptDiskSize {
            disk_bytes,
            reason: "too small to hold a GPT",
        });
    }
    match read_copy(file, "Primary", 1, sectors) {
        Ok(gpt) => Ok(gpt),
        Err(primary) => match read_copy(file, "Backup", sectors - 1, sectors) {
            Ok(gpt) => Ok(Gpt {
                from_backup: true,
                ..gpt
            }),
            Err(backup) => Err(FormatError::GptNoValidCopy {
                backup: backup.to_string(),
                primary: Box::new(primary),
            }),
        },
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Guid::from_gpt_bytes(a)
}

fn read_copy(file: &File, which: &'static str, lba: u64, sectors: u64) -> Result<Gpt, FormatError> {
    let invalid = |reason: String| FormatError::GptInvalid { which, lba, reason };
    let h = get(
        file,
        "reading a GPT header",
        lba * SECTOR_BYTES,
        SECTOR_BYTES as usize,
    )?;
    if &h[0..8] != SIGNATURE {
        return Err(invalid("no \"EFI PART\" signature".into()));
    }
    let header_bytes = le_u32(&h, 12);
    if !(HEADER_BYTES..=MAX_HEADER_BYTES).contains(&header_bytes) {
        return Err(invalid(format!(
            "header size {header_bytes} is outside 92..=512"
        )));
    }
    let stored_crc = le_u32(&h, 16);
    let mut zeroed = h[..header_bytes as usize].to_vec();
    zeroed[16..20].fill(0);
    let actual_crc = crc32fast::hash(&zeroed);
    if stored_crc != actual_crc {
        return Err(invalid(format!(
            "header CRC32 is {stored_crc:#010x}, computed {actual_crc:#010x}"
        )));
    }
    let my_lba = le_u64(&h, 24);
    if my_lba != lba {
        return Err(invalid(format!("header says it lives at LBA {my_lba}")));
    }
    let first_usable = le_u64(&h, 40);
    let last_usable = le_u64(&h, 48);
    if first_usable > last_usable || last_usable >= sectors {
        return Err(invalid(format!(
            "usable range {first_usable}..={last_usable} does not fit a disk of {sectors} sectors"
        )));
    }
    let disk_guid = guid_at(&h, 56);
    let entries_lba = le_u64(&h, 72);
    let count = le_u32(&h, 80);
    let entry_bytes = le_u32(&h, 84);
    let entries_crc = le_u32(&h, 88);
    if !(ENTRY_BYTES..=MAX_ENTRY_BYTES).contains(&entry_bytes) || !entry_bytes.is_power_of_two() {
        return Err(invalid(format!(
            "entry size {entry_bytes} is not 128 × 2^n up to {MAX_ENTRY_BYTES}"
        )));
    }
    let array_bytes = u64::from(count) * u64::from(entry_bytes);
    if array_bytes > MAX_ENTRY_ARRAY_BYTES {
        return Err(invalid(format!(
            "entry array of {array_bytes} bytes exceeds {MAX_ENTRY_ARRAY_BYTES}"
        )));
    }
    let array_end = entries_lba
        .checked_mul(SECTOR_BYTES)
        .and_then(|start| start.checked_add(array_bytes));
    if entries_lba < 2 || array_end.is_none_or(|end| end > sectors * SECTOR_BYTES) {
        return Err(invalid(format!(
            "entry array at LBA {entries_lba} lies outside the disk"
        )));
    }
    // Bounded by MAX_ENTRY_ARRAY_BYTES above.
    let array = get(
        file,
        "reading GPT entries",
        entries_lba * SECTOR_BYTES,
        array_bytes as usize,
    )?;
    let actual = crc32fast::hash(&array);
    if actual != entries_crc {
        return Err(invalid(format!(
            "entries CRC32 is {entries_crc:#010x}, computed {actual:#010x}"
        )));
    }

    let mut partitions = Vec::new();
    for (slot, e) in array.chunks_exact(entry_bytes as usize).enumerate() {
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|u| u16::from_le_bytes([u[0], u[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let label = String::from_utf16(&units).map_err(|_| {
            invalid(format!(
                "entry {} has a name that is not valid UTF-16",
                slot + 1
            ))
        })?;
        let (first_lba, last_lba) = (le_u64(e, 32), le_u64(e, 40));
        if first_lba > last_lba || first_lba < first_usable || last_lba > last_usable {
            return Err(invalid(format!(
                "entry {} ({label:?}) spans LBA {first_lba}..={last_lba}, outside {first_usable}..={last_usable}",
                slot + 1
            )));
        }
        partitions.push(GptPartition {
            label,
            type_guid,
            part_guid: guid_at(e, 16),
            first_lba,
            last_lba,
            attributes: le_u64(e, 48),
        });
    }
    Ok(Gpt {
        disk_guid,
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        partitions,
        from_backup: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn sample(disk_bytes: u64) -> Vec<GptPartition> {
        let sizes = vec![
            ("ESP".to_string(), 3 * MIB),
            ("ROOT-A".to_string(), 5 * MIB + 1),
        ];
        layout(disk_bytes, &sizes)
            .unwrap()
            .into_iter()
            .zip(sizes)
            .map(|((first_lba, last_lba), (label, _))| GptPartition {
                type_guid: if label == "ESP" {
                    Guid::EFI_SYSTEM
                } else {
                    Guid::LINUX_DATA
                },
                part_guid: Guid::derive(b"test", &label),
                label,
                first_lba,
                last_lba,
                attributes: 1 << 48 | 1 << 2,
            })
            .collect()
    }

    fn disk(disk_bytes: u64, parts: &[GptPartition]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(disk_bytes).unwrap();
        write(&mut f, disk_bytes, Guid::derive(b"test", "disk"), parts).unwrap();
        f
    }

    #[test]
    fn layout_aligns_to_mib_and_rounds_up_to_sectors() {
        let sizes = vec![
            ("A".to_string(), MIB),
            ("B".to_string(), 1),
            ("C".to_string(), MIB + 512),
        ];
        let placed = layout(16 * MIB, &sizes).unwrap();
        assert_eq!(placed, vec![(2048, 4095), (4096, 4096), (6144, 8192)]);
    }

    #[test]
    fn layout_rejects_what_does_not_fit() {
        // 4 MiB disk: usable up to LBA 8191 - 33 = 8158; a 3 MiB partition at 1 MiB ends at 8191.
        let err = layout(4 * MIB, &[("BIG".to_string(), 3 * MIB)]).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::GptDoesNotFit {
                    last_lba: 8191,
                    last_usable_lba: 8158,
                    ..
                }
            ),
            "{err}"
        );
        assert!(layout(4 * MIB, &[("Z".to_string(), 0)]).is_err());
        assert!(layout(4 * MIB + 1, &[]).is_err());
    }

    #[test]
    fn round_trip() {
        let size = 16 * MIB;
        let parts = sample(size);
        let mut f = disk(size, &parts);
        let gpt = read(&mut f).unwrap();
        assert_eq!(gpt.disk_guid, Guid::derive(b"test", "disk"));
        assert_eq!(gpt.partitions, parts);
        assert_eq!(gpt.first_usable_lba, 34);
        assert_eq!(gpt.last_usable_lba, size / 512 - 34);
        assert!(!gpt.from_backup);
        assert_eq!(gpt.partitions[1].size_bytes(), 5 * MIB + 512);
    }

    #[test]
    fn protective_mbr_covers_the_disk() {
        let f = disk(16 * MIB, &sample(16 * MIB));
        let mbr = get(&f, "test", 0, 512).unwrap();
        assert_eq!(mbr[446 + 4], 0xEE);
        assert_eq!(le_u32(&mbr, 446 + 8), 1);
        assert_eq!(le_u32(&mbr, 446 + 12), (16 * MIB / 512 - 1) as u32);
        assert_eq!(&mbr[510..], &[0x55, 0xAA]);
        assert_eq!(
            protective_mbr(u64::from(u32::MAX) + 10)[446 + 12..446 + 16],
            [0xFF; 4]
        );
    }

    #[test]
    fn bad_header_crc_falls_back_to_backup() {
        let size = 16 * MIB;
        let mut f = disk(size, &sample(size));
        // Flip a byte of the disk GUID in the primary header: its CRC no longer matches.
        let mut h = get(&f, "test", 512, 512).unwrap();
        h[60] ^= 0xFF;
        put(&f, "test", 512, &h).unwrap();
        let err = read_copy(&f, "Primary", 1, size / 512).unwrap_err();
        assert!(err.to_string().contains("header CRC32"), "{err}");
        let gpt = read(&mut f).unwrap();
        assert!(gpt.from_backup);
        assert_eq!(gpt.partitions, sample(size));
    }

    #[test]
    fn bad_entries_crc_in_both_copies_is_an_error() {
        let size = 16 * MIB;
        let mut f = disk(size, &sample(size));
        for offset in [2 * 512 + 60, (size / 512 - 33) * 512 + 60] {
            put(&f, "test", offset, &[0x41]).unwrap();
        }
        let err = read(&mut f).unwrap_err();
        let FormatError::GptNoValidCopy { backup, primary } = &err else {
            panic!("{err}")
        };
        assert!(backup.contains("entries CRC32"), "{backup}");
        assert!(primary.to_string().contains("entries CRC32"), "{primary}");
    }

    #[test]
    fn labels_longer_than_36_units_are_refused() {
        let mut parts = sample(16 * MIB);
        parts[0].label = "x".repeat(36);
        let mut f = disk(16 * MIB, &parts);
        assert_eq!(read(&mut f).unwrap().partitions[0].label.len(), 36);
        parts[0].label = "x".repeat(37);
        let err = write(&mut f, 16 * MIB, Guid::NIL, &parts).unwrap_err();
        assert!(
            matches!(err, FormatError::GptLabelTooLong { units: 37, .. }),
            "{err}"
        );
    }

    #[test]
    fn overlapping_or_out_of_range_partitions_are_refused() {
        let size = 16 * MIB;
        let mut f = tempfile::tempfile().unwrap();
        let mut parts = sample(size);
        parts[1].first_lba = parts[0].last_lba;
        assert!(write(&mut f, size, Guid::NIL, &parts).is_err());
        let mut parts = sample(size);
        parts[0].first_lba = 33;
        assert!(write(&mut f, size, Guid::NIL, &parts).is_err());
        let mut parts = sample(size);
        parts[1].last_lba = size / 512 - 33;
        assert!(matches!(
            write(&mut f, size, Guid::NIL, &parts),
            Err(FormatError::GptDoesNotFit { .. })
        ));
        let mut parts = sample(size);
        parts[1].part_guid = parts[0].part_guid;
        assert!(write(&mut f, size, Guid::NIL, &parts).is_err());
    }
}
