//! Where everything goes: block groups, their bitmaps and inode tables, the root directory,
//! lost+found and the journal, all decided from the size alone.
//!
//! The layout is the classic one (no `flex_bg`, no `meta_bg`, no resize inode): every group
//! starts with a copy of the superblock and the group descriptors when `sparse_super` says so
//! (groups 0, 1 and powers of 3, 5 and 7), then its block bitmap, inode bitmap and inode table.
//! Group 0 then holds the root directory, lost+found and the journal, in that order.

use crate::Error;

/// Bytes per block: the encrypted volumes have 4096-byte sectors, and no block may be smaller.
pub const BLOCK_SIZE: u32 = 4096;
/// Blocks (and clusters) per group: one bitmap block's worth of bits.
pub const BLOCKS_PER_GROUP: u32 = BLOCK_SIZE * 8;
/// Bytes per inode: room for the extra fields (nanosecond times, the checksum's high half).
pub const INODE_SIZE: u32 = 256;
/// One inode for every this many bytes, as mke2fs's default.
const BYTES_PER_INODE: u64 = 16384;
/// Group descriptor size without the `64bit` feature.
pub const DESC_SIZE: u32 = 32;
/// The first inode that is not reserved; lost+found takes it.
pub const FIRST_INODE: u32 = 11;
/// Blocks of lost+found (16 KiB, as mke2fs makes it, so e2fsck rarely has to grow it).
pub const LOST_FOUND_BLOCKS: u32 = 4;
/// The smallest journal jbd2 accepts (and mke2fs makes), in blocks.
const MIN_JOURNAL: u32 = 1024;
/// Free blocks a file system must have besides its metadata to be worth making.
const MIN_FREE: u32 = 256;
/// A last group smaller than its own metadata plus this is dropped, as mke2fs does.
const MIN_LAST_GROUP_SLACK: u32 = 50;

/// The shape of a file system of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the file system (the tail of the device beyond them is unused).
    pub blocks: u32,
    pub groups: u32,
    pub inodes_per_group: u32,
    /// Blocks of each group's inode table.
    pub inode_table_blocks: u32,
    /// Blocks of the group descriptor table (and of each backup).
    pub gdt_blocks: u32,
    pub journal_blocks: u32,
}

impl Geometry {
    /// The geometry for a device of `size` bytes, or why none fits.
    pub fn for_size(size: u64) -> Result<Geometry, Error> {
        let total = size / u64::from(BLOCK_SIZE);
        let mut blocks = u32::try_from(total).map_err(|_| Error::TooLarge { size })?;
        loop {
            let g = Self::with_blocks(blocks);
            let last = g.groups - 1;
            if g.groups > 1 && g.group_blocks(last) < g.overhead(last) + MIN_LAST_GROUP_SLACK {
                blocks -= g.group_blocks(last);
                continue;
            }
            if !g.fits() {
                // More blocks bring more inodes (a bigger inode table): count up to the first
                // size that fits.
                let min = (blocks..)
                    .find(|&b| Self::with_blocks(b).fits())
                    .unwrap_or(blocks);
                return Err(Error::TooSmall {
                    size,
                    min: u64::from(min) * u64::from(BLOCK_SIZE),
                });
            }
            return Ok(g);
        }
    }

    /// Whether group 0 holds its metadata, the directories, the journal and some room.
    fn fits(&self) -> bool {
        let needed = self.overhead(0) + 1 + LOST_FOUND_BLOCKS + self.journal_blocks + MIN_FREE;
        self.group_blocks(0) >= needed
    }

    fn with_blocks(blocks: u32) -> Geometry {
        let blocks = blocks.max(1);
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let per_block = BLOCK_SIZE / INODE_SIZE;
        let inodes = (u64::from(blocks) * u64::from(BLOCK_SIZE) / BYTES_PER_INODE) as u32;
        let inodes_per_group = inodes.div_ceil(groups).next_multiple_of(per_block).clamp(
            per_block.max(FIRST_INODE.next_multiple_of(per_block)),
            BLOCKS_PER_GROUP,
        );
        Geometry {
            blocks,
            groups,
            inodes_per_group,
            inode_table_blocks: inodes_per_group / per_block,
            gdt_blocks: (groups * DESC_SIZE).div_ceil(BLOCK_SIZE),
            journal_blocks: journal_blocks(blocks),
        }
    }

    pub fn inodes(&self) -> u32 {
        self.inodes_per_group * self.groups
    }

    /// The first block of group `g`.
    pub fn group_start(&self, g: u32) -> u32 {
        g * BLOCKS_PER_GROUP
    }

    /// How many blocks group `g` has (the last one may be short).
    pub fn group_blocks(&self, g: u32) -> u32 {
        (self.blocks - self.group_start(g)).min(BLOCKS_PER_GROUP)
    }

    /// Whether group `g` carries a copy of the superblock and descriptors (`sparse_super`).
    pub fn has_super(&self, g: u32) -> bool {
        fn power_of(mut n: u32, base: u32) -> bool {
            while n > 1 && n.is_multiple_of(base) {
                n /= base;
            }
            n == 1
        }
        g <= 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
    }

    pub fn block_bitmap(&self, g: u32) -> u32 {
        let sb = if self.has_super(g) {
            1 + self.gdt_blocks
        } else {
            0
        };
        self.group_start(g) + sb
    }

    pub fn inode_bitmap(&self, g: u32) -> u32 {
        self.block_bitmap(g) + 1
    }

    pub fn inode_table(&self, g: u32) -> u32 {
        self.inode_bitmap(g) + 1
    }

    /// Blocks of group `g` taken by the metadata above.
    pub fn overhead(&self, g: u32) -> u32 {
        self.inode_table(g) + self.inode_table_blocks - self.group_start(g)
    }

    /// The root directory's one block.
    pub fn root_block(&self) -> u32 {
        self.inode_table(0) + self.inode_table_blocks
    }

    pub fn lost_found_block(&self) -> u32 {
        self.root_block() + 1
    }

    pub fn journal_block(&self) -> u32 {
        self.lost_found_block() + LOST_FOUND_BLOCKS
    }

    /// Blocks in use in group `g` once formatted.
    pub fn used_blocks(&self, g: u32) -> u32 {
        let mut used = self.overhead(g);
        if g == 0 {
            used += 1 + LOST_FOUND_BLOCKS + self.journal_blocks;
        }
        used
    }

    pub fn free_blocks(&self) -> u64 {
        (0..self.groups)
            .map(|g| u64::from(self.group_blocks(g) - self.used_blocks(g)))
            .sum()
    }
}

/// The journal's size, by the file system's (mke2fs's table, capped at 64 MiB: one extent run
/// that always fits in group 0).
fn journal_blocks(blocks: u32) -> u32 {
    match blocks {
        0..32768 => MIN_JOURNAL,
        32768..262144 => 4096,
        262144..524288 => 8192,
        _ => 16384,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let g = Geometry::with_blocks(BLOCKS_PER_GROUP * 60);
        let with: Vec<u32> = (0..60).filter(|&n| g.has_super(n)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn a_small_file_system_is_one_group() {
        let g = Geometry::for_size(16 << 20).unwrap();
        assert_eq!((g.blocks, g.groups), (4096, 1));
        assert_eq!(g.inodes(), 1024);
        assert_eq!(g.journal_blocks, 1024);
        // Superblock, descriptors, two bitmaps, then the inode table.
        assert_eq!(g.inode_table(0), 4);
        assert_eq!(g.root_block(), 4 + 64);
    }

    #[test]
    fn a_short_last_group_is_dropped() {
        let g = Geometry::for_size(u64::from(BLOCKS_PER_GROUP + 100) * 4096).unwrap();
        assert_eq!((g.groups, g.blocks), (1, BLOCKS_PER_GROUP));
        let g = Geometry::for_size(u64::from(BLOCKS_PER_GROUP + 2000) * 4096).unwrap();
        assert_eq!((g.groups, g.blocks), (2, BLOCKS_PER_GROUP + 2000));
    }

    #[test]
    fn too_small_is_refused_with_the_minimum() {
        let e = Geometry::for_size(2 << 20).unwrap_err();
        let Error::TooSmall { min, .. } = e else {
            panic!("{e}")
        };
        assert!(Geometry::for_size(min).is_ok());
        assert!(Geometry::for_size(min - 4096).is_err());
    }

    #[test]
    fn the_journal_fits_in_group_zero_at_every_size() {
        for mib in [8u64, 100, 129, 1024, 2047, 4096, 64 << 10] {
            let g = Geometry::for_size(mib << 20).unwrap();
            assert!(
                g.journal_block() + g.journal_blocks <= g.group_blocks(0),
                "{mib} MiB: {g:?}"
            );
            assert_eq!(g.inodes_per_group % 16, 0);
        }
    }
}
