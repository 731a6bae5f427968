//! GPT disks a reader must refuse (each file is a whole, small disk): no signature, a header
//! CRC that does not hold, sizes and counts that would make a reader allocate or read without
//! bound, an entry array outside the disk or with a bad CRC, a partition outside the usable
//! range, a name that is not UTF-16, and a header that claims to live elsewhere. Every damage
//! is made to both copies, so falling back to the backup cannot save it.

const SECTOR: usize = 512;
/// A 16-sector disk: MBR, header at 1, entries at 2, usable 3..=13, backup entries at 14 and
/// backup header at 15.
const SECTORS: u64 = 16;
const ENTRIES: u32 = 4;

/// What may be changed in one copy's header and entries before their CRCs are computed.
#[derive(Clone)]
struct Copy {
    header_size: u32,
    my_lba: Option<u64>,
    first_usable: u64,
    last_usable: u64,
    entries_lba: Option<u64>,
    count: u32,
    entry_size: u32,
    entries: Vec<u8>,
    /// XORed into the header CRC after it is computed.
    header_crc_flip: u32,
    /// XORed into the entries CRC after it is computed.
    entries_crc_flip: u32,
}

fn utf16(label: &str) -> Vec<u8> {
    label.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn entry(first: u64, last: u64, name: &[u8]) -> Vec<u8> {
    let mut e = vec![0u8; 128];
    e[0..16].copy_from_slice(&0x0FC6_3DAF_8483_4772_8E79_3D69_D847_7DE4u128.to_le_bytes());
    e[16..32].copy_from_slice(&0x1234u128.to_le_bytes());
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
    e[56..56 + name.len()].copy_from_slice(name);
    e
}

impl Copy {
    fn good() -> Copy {
        let mut entries = entry(3, 8, &utf16("ROOT-A"));
        entries.extend(entry(9, 13, &utf16("STATE")));
        entries.resize((ENTRIES * 128) as usize, 0);
        Copy {
            header_size: 92,
            my_lba: None,
            first_usable: 3,
            last_usable: 13,
            entries_lba: None,
            count: ENTRIES,
            entry_size: 128,
            entries,
            header_crc_flip: 0,
            entries_crc_flip: 0,
        }
    }

    fn header(&self, lba: u64, alternate: u64, entries_lba: u64) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        h[24..32].copy_from_slice(&self.my_lba.unwrap_or(lba).to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&0xca1eu128.to_le_bytes());
        h[72..80].copy_from_slice(&self.entries_lba.unwrap_or(entries_lba).to_le_bytes());
        h[80..84].copy_from_slice(&self.count.to_le_bytes());
        h[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        let entries_crc = crc32fast::hash(&self.entries) ^ self.entries_crc_flip;
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let covered = (self.header_size as usize).min(SECTOR);
        let crc = crc32fast::hash(&h[..covered]) ^ self.header_crc_flip;
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// A disk with `copy` as both its primary and its backup.
fn disk(copy: &Copy) -> Vec<u8> {
    let mut d = vec![0u8; SECTORS as usize * SECTOR];
    // Protective MBR: one 0xEE partition over the disk.
    d[446 + 4] = 0xee;
    d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    d[446 + 12..446 + 16].copy_from_slice(&(SECTORS as u32 - 1).to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xaa;
    let last = SECTORS - 1;
    let put = |d: &mut Vec<u8>, lba: u64, bytes: &[u8]| {
        let at = lba as usize * SECTOR;
        let n = bytes.len().min(d.len() - at);
        d[at..at + n].copy_from_slice(&bytes[..n]);
    };
    put(&mut d, 1, &copy.header(1, last, 2));
    put(&mut d, 2, &copy.entries);
    put(&mut d, last - 1, &copy.entries);
    put(&mut d, last, &copy.header(last, 1, last - 1));
    d
}

pub fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let with = |change: &dyn Fn(&mut Copy)| {
        let mut c = Copy::good();
        change(&mut c);
        disk(&c)
    };
    let mut no_signature = disk(&Copy::good());
    no_signature[SECTOR] = b'X';
    no_signature[(SECTORS as usize - 1) * SECTOR] = b'X';
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("no-signature.img", no_signature, "signature"),
        (
            "header-crc-bad.img",
            with(&|c| c.header_crc_flip = 1),
            "header CRC32",
        ),
        (
            "header-size-64k.img",
            with(&|c| c.header_size = 65536),
            "header size 65536",
        ),
        (
            "entry-size-100.img",
            with(&|c| c.entry_size = 100),
            "entry size 100",
        ),
        (
            "entry-count-4g.img",
            with(&|c| c.count = u32::MAX),
            "entry array of",
        ),
        (
            "entries-past-the-end.img",
            with(&|c| c.entries_lba = Some(u64::MAX / 256)),
            "outside the disk",
        ),
        (
            "entries-crc-bad.img",
            with(&|c| c.entries_crc_flip = 1),
            "entries CRC32",
        ),
        (
            "partition-over-the-header.img",
            with(&|c| c.entries[32..40].copy_from_slice(&1u64.to_le_bytes())),
            "outside",
        ),
        (
            "partition-past-the-end.img",
            with(&|c| c.entries[40..48].copy_from_slice(&u64::MAX.to_le_bytes())),
            "outside",
        ),
        (
            "name-lone-surrogate.img",
            with(&|c| c.entries[56..58].copy_from_slice(&0xd800u16.to_le_bytes())),
            "UTF-16",
        ),
        (
            "usable-past-the-end.img",
            with(&|c| c.last_usable = 1 << 40),
            "usable range",
        ),
        (
            "header-elsewhere.img",
            with(&|c| c.my_lba = Some(7)),
            "lives at LBA 7",
        ),
        ("too-small.img", vec![0; SECTOR * 2], "too small"),
    ];
    cases
        .into_iter()
        .map(|(n, b, e)| (n.to_string(), b, e))
        .collect()
}
