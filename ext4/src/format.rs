//! Writing the file system: the superblock and its backups, the group descriptors, bitmaps,
//! group 0's inode table (reserved inodes, the root, lost+found, the journal's inode), the two
//! directories and the journal's superblock. Every structure carries its crc32c checksum
//! (`metadata_csum`), chained from the seed the UUID gives.
//!
//! Field offsets are those of `struct ext4_super_block`, `ext4_group_desc`, `ext4_inode` and
//! `journal_superblock_t` (Documentation/filesystems/ext4/ in the kernel).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::crc32c::crc32c;
use crate::geometry::{
    Geometry, BLOCKS_PER_GROUP, BLOCK_SIZE, DESC_SIZE, FIRST_INODE, INODE_SIZE, LOST_FOUND_BLOCKS,
};
use crate::Error;

const BS: usize = BLOCK_SIZE as usize;

const SUPER_MAGIC: u16 = 0xEF53;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_DIR_INDEX: u32 = 0x20;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// `s_default_mount_opts`: user_xattr and acl, as mke2fs sets them.
const DEFAULT_MOUNT_OPTS: u32 = 0x4 | 0x8;
/// `s_flags`: directory hashes as signed chars compute them.
const FLAGS_SIGNED_HASH: u32 = 0x1;
/// `s_def_hash_version`: half MD4.
const HASH_HALF_MD4: u8 = 1;
/// `s_jnl_backup_type`: `s_jnl_blocks` holds a copy of the journal inode's block map.
const JNL_BACKUP_BLOCKS: u8 = 1;
/// `s_checksum_type`: crc32c.
const CSUM_CRC32C: u8 = 1;

const BG_INODE_UNINIT: u16 = 0x1;
const BG_INODE_ZEROED: u16 = 0x4;

const ROOT_INODE: u32 = 2;
const JOURNAL_INODE: u32 = 8;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const INODE_FLAG_EXTENTS: u32 = 0x8_0000;
/// `i_extra_isize`: the fields up to `i_projid`.
const EXTRA_ISIZE: u16 = 32;
const FT_DIR: u8 = 2;

const EXTENT_MAGIC: u16 = 0xF30A;
/// Blocks one initialised extent can cover.
const MAX_EXTENT: u32 = 32768;

const JBD2_MAGIC: u32 = 0xC03B_3998;
const JBD2_SUPERBLOCK_V2: u32 = 4;

/// What a file system is made with besides its size.
#[derive(Debug, Clone)]
pub struct Options {
    /// The volume label (`s_volume_name`), at most 16 bytes.
    pub label: String,
    /// The file system's UUID; random when `None`.
    pub uuid: Option<[u8; 16]>,
    /// Seconds since the epoch for the creation and inode times.
    pub now: u32,
}

impl Default for Options {
    fn default() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        Options {
            label: String::new(),
            uuid: None,
            now,
        }
    }
}

/// The file system's first MiB is assembled in memory and written last, after everything
/// beyond it is on the disk: a power cut before that leaves the start as it was (zeros on a
/// blank partition), so the caller's "is it blank?" still says yes and it can start over.
const HEAD: u64 = 1 << 20;

struct Writer<'a> {
    file: &'a File,
    head: Vec<u8>,
}

impl Writer<'_> {
    fn write(&mut self, block: u32, bytes: &[u8]) -> Result<(), Error> {
        let at = u64::from(block) * u64::from(BLOCK_SIZE);
        let end = at + bytes.len() as u64;
        if end <= HEAD {
            self.head[at as usize..end as usize].copy_from_slice(bytes);
            return Ok(());
        }
        let (before, after) = bytes.split_at(HEAD.saturating_sub(at) as usize);
        if !before.is_empty() {
            self.head[at as usize..].copy_from_slice(before);
        }
        self.file
            .write_all_at(after, at.max(HEAD))
            .map_err(|source| Error::Io {
                what: "writing",
                source,
            })
    }

    fn zero(&mut self, block: u32, count: u32) -> Result<(), Error> {
        let chunk = vec![0u8; 256 * BS];
        let mut done = 0;
        while done < count {
            let n = (count - done).min(256);
            self.write(block + done, &chunk[..n as usize * BS])?;
            done += n;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), Error> {
        let sync = |source| Error::Io {
            what: "syncing",
            source,
        };
        self.file.sync_all().map_err(sync)?;
        self.file
            .write_all_at(&self.head, 0)
            .map_err(|source| Error::Io {
                what: "writing",
                source,
            })?;
        self.file.sync_all().map_err(sync)
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put32_be(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The checksums of one file system: everything chains from crc32c over its UUID.
struct Csum {
    seed: u32,
}

impl Csum {
    fn inode_seed(&self, ino: u32, generation: u32) -> u32 {
        let s = crc32c(self.seed, &ino.to_le_bytes());
        crc32c(s, &generation.to_le_bytes())
    }

    /// Fills `i_checksum_lo` and `i_checksum_hi`, each skipped (as zeros) in the sum.
    fn inode(&self, ino: u32, raw: &mut [u8]) {
        raw[0x7C..0x7E].fill(0);
        raw[0x82..0x84].fill(0);
        let generation = u32::from_le_bytes(raw[0x64..0x68].try_into().expect("4 bytes"));
        let c = crc32c(self.inode_seed(ino, generation), raw);
        put16(raw, 0x7C, c as u16);
        put16(raw, 0x82, (c >> 16) as u16);
    }

    /// Fills a directory block's tail (the last 12 bytes) with its checksum.
    fn dir_block(&self, ino: u32, block: &mut [u8]) {
        let tail = block.len() - 12;
        block[tail..].fill(0);
        put16(block, tail + 4, 12);
        block[tail + 7] = 0xDE;
        let c = crc32c(self.inode_seed(ino, 0), &block[..tail]);
        put32(block, tail + 8, c);
    }

    fn group_desc(&self, g: u32, desc: &mut [u8]) {
        desc[0x1E..0x20].fill(0);
        let c = crc32c(crc32c(self.seed, &g.to_le_bytes()), desc);
        put16(desc, 0x1E, c as u16);
    }

    fn bitmap(&self, bits: &[u8]) -> u16 {
        crc32c(self.seed, bits) as u16
    }
}

/// Sets bits `from..to` of a bitmap.
fn set_bits(map: &mut [u8], from: u32, to: u32) {
    for bit in from..to {
        map[(bit / 8) as usize] |= 1 << (bit % 8);
    }
}

/// An inode with an extent tree of up to four extents held in `i_block`.
struct InodeSpec {
    mode: u16,
    links: u16,
    /// (first block, count) runs, in logical order.
    runs: Vec<(u32, u32)>,
}

fn extent_tree(runs: &[(u32, u32)]) -> [u8; 60] {
    let mut b = [0u8; 60];
    let mut extents = Vec::new();
    let mut logical = 0u32;
    for &(start, count) in runs {
        let mut done = 0;
        while done < count {
            let n = (count - done).min(MAX_EXTENT);
            extents.push((logical, n, start + done));
            logical += n;
            done += n;
        }
    }
    assert!(
        extents.len() <= 4,
        "an inline extent tree holds four extents"
    );
    put16(&mut b, 0, EXTENT_MAGIC);
    put16(&mut b, 2, extents.len() as u16);
    put16(&mut b, 4, 4);
    for (i, (logical, len, start)) in extents.into_iter().enumerate() {
        let at = 12 + 12 * i;
        put32(&mut b, at, logical);
        put16(&mut b, at + 4, len as u16);
        put32(&mut b, at + 8, start);
    }
    b
}

fn inode(spec: &InodeSpec, now: u32) -> Vec<u8> {
    let mut raw = vec![0u8; INODE_SIZE as usize];
    let blocks: u32 = spec.runs.iter().map(|r| r.1).sum();
    let size = u64::from(blocks) * u64::from(BLOCK_SIZE);
    put16(&mut raw, 0x0, spec.mode);
    put32(&mut raw, 0x4, size as u32);
    for at in [0x8, 0xC, 0x10] {
        put32(&mut raw, at, now);
    }
    put16(&mut raw, 0x1A, spec.links);
    // 512-byte sectors; an inline extent tree needs no blocks of its own.
    put32(&mut raw, 0x1C, blocks * (BLOCK_SIZE / 512));
    put32(&mut raw, 0x20, INODE_FLAG_EXTENTS);
    raw[0x28..0x64].copy_from_slice(&extent_tree(&spec.runs));
    put32(&mut raw, 0x6C, (size >> 32) as u32);
    put16(&mut raw, 0x80, EXTRA_ISIZE);
    put32(&mut raw, 0x90, now);
    raw
}

/// A directory entry; returns the offset after it.
fn dirent(block: &mut [u8], at: usize, ino: u32, rec_len: usize, name: &[u8]) -> usize {
    put32(block, at, ino);
    put16(block, at + 4, rec_len as u16);
    block[at + 6] = name.len() as u8;
    block[at + 7] = FT_DIR;
    block[at + 8..at + 8 + name.len()].copy_from_slice(name);
    at + rec_len
}

/// A directory's first block: `.`, `..`, and `children` (directories), the last entry taking
/// the room up to the checksum tail.
fn dir_block(csum: &Csum, ino: u32, parent: u32, children: &[(&[u8], u32)]) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    let end = BS - 12;
    let mut entries: Vec<(&[u8], u32)> = vec![(b".", ino), (b"..", parent)];
    entries.extend_from_slice(children);
    let mut at = 0;
    for (i, (name, child)) in entries.iter().enumerate() {
        let len = if i + 1 == entries.len() {
            end - at
        } else {
            (8 + name.len()).next_multiple_of(4)
        };
        at = dirent(&mut b, at, *child, len, name);
    }
    csum.dir_block(ino, &mut b);
    b
}

/// An empty directory block: one unused entry spanning it, then the tail.
fn empty_dir_block(csum: &Csum, ino: u32) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    put16(&mut b, 4, (BS - 12) as u16);
    csum.dir_block(ino, &mut b);
    b
}

fn journal_superblock(g: &Geometry, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    put32_be(&mut b, 0x0, JBD2_MAGIC);
    put32_be(&mut b, 0x4, JBD2_SUPERBLOCK_V2);
    put32_be(&mut b, 0xC, BLOCK_SIZE);
    put32_be(&mut b, 0x10, g.journal_blocks);
    put32_be(&mut b, 0x14, 1); // s_first: the log starts after this block
    put32_be(&mut b, 0x18, 1); // s_sequence: the first transaction's ID
                               // s_start = 0: the journal is empty, nothing to recover.
    b[0x30..0x40].copy_from_slice(uuid);
    put32_be(&mut b, 0x40, 1); // s_nr_users: this file system
    b
}

struct Super<'a> {
    g: &'a Geometry,
    uuid: [u8; 16],
    hash_seed: [u8; 16],
    label: [u8; 16],
    now: u32,
    journal_i_block: [u8; 60],
}

impl Super<'_> {
    /// The superblock as group `group` keeps it, checksum included.
    fn encode(&self, group: u32) -> Vec<u8> {
        let g = self.g;
        let mut b = vec![0u8; 1024];
        let free_inodes = g.inodes() - FIRST_INODE;
        put32(&mut b, 0x0, g.inodes());
        put32(&mut b, 0x4, g.blocks);
        put32(&mut b, 0xC, g.free_blocks() as u32);
        put32(&mut b, 0x10, free_inodes);
        put32(&mut b, 0x14, 0); // s_first_data_block: 0 with blocks over 1 KiB
        put32(&mut b, 0x18, 2); // s_log_block_size: 1024 << 2
        put32(&mut b, 0x1C, 2); // s_log_cluster_size
        put32(&mut b, 0x20, BLOCKS_PER_GROUP);
        put32(&mut b, 0x24, BLOCKS_PER_GROUP);
        put32(&mut b, 0x28, g.inodes_per_group);
        put32(&mut b, 0x30, self.now); // s_wtime
        put16(&mut b, 0x36, 0xFFFF); // s_max_mnt_count: no forced checks
        put16(&mut b, 0x38, SUPER_MAGIC);
        put16(&mut b, 0x3A, 1); // s_state: cleanly unmounted
        put16(&mut b, 0x3C, 1); // s_errors: continue
        put32(&mut b, 0x40, self.now); // s_lastcheck
        put32(&mut b, 0x4C, 1); // s_rev_level: dynamic
        put32(&mut b, 0x54, FIRST_INODE);
        put16(&mut b, 0x58, INODE_SIZE as u16);
        put16(&mut b, 0x5A, group as u16);
        put32(
            &mut b,
            0x5C,
            COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_DIR_INDEX,
        );
        put32(&mut b, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS);
        put32(
            &mut b,
            0x64,
            RO_COMPAT_SPARSE_SUPER
                | RO_COMPAT_LARGE_FILE
                | RO_COMPAT_HUGE_FILE
                | RO_COMPAT_DIR_NLINK
                | RO_COMPAT_EXTRA_ISIZE
                | RO_COMPAT_METADATA_CSUM,
        );
        b[0x68..0x78].copy_from_slice(&self.uuid);
        b[0x78..0x88].copy_from_slice(&self.label);
        put32(&mut b, 0xE0, JOURNAL_INODE);
        b[0xEC..0xFC].copy_from_slice(&self.hash_seed);
        b[0xFC] = HASH_HALF_MD4;
        b[0xFD] = JNL_BACKUP_BLOCKS;
        put16(&mut b, 0xFE, DESC_SIZE as u16);
        put32(&mut b, 0x100, DEFAULT_MOUNT_OPTS);
        put32(&mut b, 0x108, self.now); // s_mkfs_time
                                        // s_jnl_blocks: the journal inode's i_block, then its size (high, low).
        b[0x10C..0x148].copy_from_slice(&self.journal_i_block);
        let journal_size = u64::from(g.journal_blocks) * u64::from(BLOCK_SIZE);
        put32(&mut b, 0x148, (journal_size >> 32) as u32);
        put32(&mut b, 0x14C, journal_size as u32);
        put16(&mut b, 0x15C, EXTRA_ISIZE); // s_min_extra_isize
        put16(&mut b, 0x15E, EXTRA_ISIZE); // s_want_extra_isize
        put32(&mut b, 0x160, FLAGS_SIGNED_HASH);
        b[0x175] = CSUM_CRC32C;
        let c = crc32c(!0, &b[..0x3FC]);
        put32(&mut b, 0x3FC, c);
        b
    }
}

/// The group descriptor table, checksums included.
fn descriptors(g: &Geometry, csum: &Csum, bitmaps: &[(u16, u16)]) -> Vec<u8> {
    let mut table = vec![0u8; g.gdt_blocks as usize * BS];
    for grp in 0..g.groups {
        let d = &mut table[(grp * DESC_SIZE) as usize..((grp + 1) * DESC_SIZE) as usize];
        put32(d, 0x0, g.block_bitmap(grp));
        put32(d, 0x4, g.inode_bitmap(grp));
        put32(d, 0x8, g.inode_table(grp));
        put16(d, 0xC, (g.group_blocks(grp) - g.used_blocks(grp)) as u16);
        let (free_inodes, dirs, flags, unused) = if grp == 0 {
            let free = g.inodes_per_group - FIRST_INODE;
            (free, 2, BG_INODE_ZEROED, free)
        } else {
            // Never-used inode tables are not written: the kernel zeroes them in the
            // background (lazyinit) and reads none of an INODE_UNINIT group's until then.
            let n = g.inodes_per_group;
            (n, 0, BG_INODE_UNINIT, n)
        };
        put16(d, 0xE, free_inodes as u16);
        put16(d, 0x10, dirs);
        put16(d, 0x12, flags);
        put16(d, 0x18, bitmaps[grp as usize].0);
        put16(d, 0x1A, bitmaps[grp as usize].1);
        put16(d, 0x1C, unused as u16);
        csum.group_desc(grp, d);
    }
    table
}

/// Makes the file system on the first `size` bytes of `file`; returns its geometry.
pub fn format(file: &File, size: u64, opts: &Options) -> Result<Geometry, Error> {
    let g = Geometry::for_size(size)?;
    if opts.label.len() > 16 {
        return Err(Error::Label(opts.label.clone()));
    }
    let mut label = [0u8; 16];
    label[..opts.label.len()].copy_from_slice(opts.label.as_bytes());
    let random = |b: &mut [u8; 16]| rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, b);
    let uuid = opts.uuid.unwrap_or_else(|| {
        let mut u = [0u8; 16];
        random(&mut u);
        // RFC 4122 version 4, variant 1.
        u[6] = (u[6] & 0x0F) | 0x40;
        u[8] = (u[8] & 0x3F) | 0x80;
        u
    });
    let mut hash_seed = [0u8; 16];
    random(&mut hash_seed);
    let csum = Csum {
        seed: crc32c(!0, &uuid),
    };
    let now = opts.now;
    let mut w = Writer {
        file,
        head: vec![0u8; HEAD.min(u64::from(g.blocks) * u64::from(BLOCK_SIZE)) as usize],
    };

    // Bitmaps first: the descriptors carry their checksums.
    let mut bitmap_sums = Vec::with_capacity(g.groups as usize);
    for grp in 0..g.groups {
        let mut blocks = vec![0u8; BS];
        set_bits(&mut blocks, 0, g.used_blocks(grp));
        // Past the end of a short last group: marked used, as the kernel expects.
        set_bits(&mut blocks, g.group_blocks(grp), BLOCKS_PER_GROUP);
        let mut inodes = vec![0u8; BS];
        if grp == 0 {
            set_bits(&mut inodes, 0, FIRST_INODE);
        }
        set_bits(&mut inodes, g.inodes_per_group, BLOCK_SIZE * 8);
        bitmap_sums.push((
            csum.bitmap(&blocks),
            csum.bitmap(&inodes[..(g.inodes_per_group / 8) as usize]),
        ));
        w.write(g.block_bitmap(grp), &blocks)?;
        w.write(g.inode_bitmap(grp), &inodes)?;
    }

    // Group 0's inode table: reserved inodes stay zeros, as mke2fs leaves them.
    w.zero(g.inode_table(0), g.inode_table_blocks)?;
    let journal_runs = vec![(g.journal_block(), g.journal_blocks)];
    let lost_found = FIRST_INODE;
    let inodes = [
        (
            ROOT_INODE,
            InodeSpec {
                mode: S_IFDIR | 0o755,
                links: 3,
                runs: vec![(g.root_block(), 1)],
            },
        ),
        (
            JOURNAL_INODE,
            InodeSpec {
                mode: S_IFREG | 0o600,
                links: 1,
                runs: journal_runs.clone(),
            },
        ),
        (
            lost_found,
            InodeSpec {
                mode: S_IFDIR | 0o700,
                links: 2,
                runs: vec![(g.lost_found_block(), LOST_FOUND_BLOCKS)],
            },
        ),
    ];
    let mut table = vec![0u8; 1 + (lost_found as usize * INODE_SIZE as usize) / BS];
    table.resize(table.len() * BS, 0);
    for (ino, spec) in &inodes {
        let mut raw = inode(spec, now);
        csum.inode(*ino, &mut raw);
        let at = (*ino as usize - 1) * INODE_SIZE as usize;
        table[at..at + INODE_SIZE as usize].copy_from_slice(&raw);
    }
    w.write(g.inode_table(0), &table)?;

    w.write(
        g.root_block(),
        &dir_block(
            &csum,
            ROOT_INODE,
            ROOT_INODE,
            &[(b"lost+found", lost_found)],
        ),
    )?;
    w.write(
        g.lost_found_block(),
        &dir_block(&csum, lost_found, ROOT_INODE, &[]),
    )?;
    for i in 1..LOST_FOUND_BLOCKS {
        w.write(
            g.lost_found_block() + i,
            &empty_dir_block(&csum, lost_found),
        )?;
    }

    // The journal: its superblock, then zeros, so no stale block can pass for a log record.
    w.zero(g.journal_block() + 1, g.journal_blocks - 1)?;
    w.write(g.journal_block(), &journal_superblock(&g, &uuid))?;

    let sb = Super {
        g: &g,
        uuid,
        hash_seed,
        label,
        now,
        journal_i_block: extent_tree(&journal_runs),
    };
    let gdt = descriptors(&g, &csum, &bitmap_sums);
    // Backups (groups 1, 3, 5, 7, 9, 25, ...) begin their group; the primary sits at byte 1024
    // of block 0, which is written whole, so nothing stale precedes it.
    for grp in (1..g.groups).filter(|&n| g.has_super(n)) {
        let mut block = sb.encode(grp);
        block.resize(BS, 0);
        w.write(g.group_start(grp), &block)?;
        w.write(g.group_start(grp) + 1, &gdt)?;
    }
    w.write(1, &gdt)?;
    let mut block0 = vec![0u8; BS];
    block0[1024..2048].copy_from_slice(&sb.encode(0));
    w.write(0, &block0)?;
    w.finish()?;
    Ok(g)
}
