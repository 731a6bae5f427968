//! dm-verity hash trees, byte for byte what `veritysetup format --hash=sha256
//! --data-block-size=4096 --hash-block-size=4096 --hash-offset=N` writes (format type 1,
//! superblock version 1), appended to the data in the same partition: Cairn stores a root slot
//! as squashfs, then at a 4096-aligned offset the verity superblock, then the tree.
//!
//! The one idea: every 4096-byte data block is hashed as sha256(salt || block); 128 of those
//! 32-byte digests fill a hash block (zero-padded), and the blocks of one level are hashed the same
//! way into the next level up, until a level fits in one block. The root hash is the digest of that
//! top block, or, when there is a single data block and hence no level at all, the digest of the
//! data block itself. On disk the levels follow the superblock's 4096-byte block top level first,
//! so the kernel's `hash_start_block` (which names the top level) is the superblock's block + 1.
//!
//! References: cryptsetup `lib/verity/verity.c` (`struct verity_sb`) and `verity_hash.c`
//! (level geometry), Linux `Documentation/admin-guide/device-mapper/verity.rst` (table format).

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;

use sha2::{Digest, Sha256};

use super::error::FormatError;
use super::guid::Guid;

/// Data and hash block size; Cairn uses 4096 for both, the page size dm-verity requires.
pub const BLOCK_SIZE: u64 = BLOCK_BYTES as u64;
/// Longest salt the superblock can hold.
pub const MAX_SALT_BYTES: usize = 256;

const BLOCK_BYTES: usize = 4096;
const DIGEST_BYTES: usize = 32;
const SUPERBLOCK_BYTES: usize = 512;
/// Data is read this many blocks at a time: large enough for few syscalls, small enough that
/// memory does not grow with the data.
const READ_CHUNK_BLOCKS: usize = 64;

/// Fields of cryptsetup's `struct verity_sb`, all integers little-endian. The names are used in
/// error messages when a stored superblock differs from the expected one.
const SB_SIGNATURE: Range<usize> = 0..8;
const SB_VERSION: Range<usize> = 8..12;
const SB_HASH_TYPE: Range<usize> = 12..16;
const SB_UUID: Range<usize> = 16..32;
const SB_ALGORITHM: Range<usize> = 32..64;
const SB_DATA_BLOCK_SIZE: Range<usize> = 64..68;
const SB_HASH_BLOCK_SIZE: Range<usize> = 68..72;
const SB_DATA_BLOCKS: Range<usize> = 72..80;
const SB_SALT_SIZE: Range<usize> = 80..82;
const SB_SALT: Range<usize> = 88..344;
const SB_FIELDS: [(&str, Range<usize>); 10] = [
    ("signature", SB_SIGNATURE),
    ("superblock version", SB_VERSION),
    ("hash type", SB_HASH_TYPE),
    ("uuid", SB_UUID),
    ("hash algorithm", SB_ALGORITHM),
    ("data block size", SB_DATA_BLOCK_SIZE),
    ("hash block size", SB_HASH_BLOCK_SIZE),
    ("data block count", SB_DATA_BLOCKS),
    ("salt size", SB_SALT_SIZE),
    ("salt", SB_SALT),
];

/// What the caller chooses; everything else about the format is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Number of 4096-byte blocks at the start of the device that the tree protects.
    pub data_blocks: u64,
    /// Prepended to every hashed block; at most [`MAX_SALT_BYTES`], may be empty.
    pub salt: Vec<u8>,
    /// Stored in the superblock, in text (RFC 4122) byte order as `veritysetup --uuid` takes it.
    pub uuid: [u8; 16],
}

impl VerityParams {
    /// A reproducible superblock UUID for `name` (say, the slot label) within the build
    /// identified by `seed`. Prefixed so that it never equals a partition GUID derived from the
    /// same seed and name.
    pub fn derive_uuid(seed: &[u8], name: &str) -> [u8; 16] {
        *Guid::derive(seed, &format!("dm-verity/{name}")).as_bytes()
    }
}

/// The result of [`append_hash_tree`]: what the kernel table and `veritysetup` need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    pub root_hash: [u8; 32],
    /// Byte offset of the superblock on the device (`veritysetup --hash-offset`).
    pub hash_offset: u64,
    /// Bytes from `hash_offset` to the end of the tree, superblock block included.
    pub hash_size: u64,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
    pub uuid: [u8; 16],
}

impl VerityTree {
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    /// The salt as the kernel table and `veritysetup --salt` spell it: hex, or `-` when empty.
    pub fn salt_arg(&self) -> String {
        if self.salt.is_empty() {
            "-".to_owned()
        } else {
            hex::encode(&self.salt)
        }
    }

    /// Lowercase 8-4-4-4-12 text, as `veritysetup dump` prints it.
    pub fn uuid_text(&self) -> String {
        Guid::from_bytes(self.uuid).to_string().to_ascii_lowercase()
    }

    /// The table's `<hash_start_block>`: in 4096-byte blocks from the start of the hash device to
    /// the top level of the tree. The superblock occupies a whole hash block before it, so this is
    /// one more than the superblock's block (cryptsetup's `VERITY_hash_offset_block`).
    pub fn hash_start_block(&self) -> u64 {
        self.hash_offset / BLOCK_SIZE + 1
    }

    /// Length of the mapped device in 512-byte sectors: the `<length>` of the dm table line.
    pub fn data_sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE / 512)
    }

    /// The verity target's parameters, everything after `0 <data_sectors> verity` in a dm table:
    /// `1 <data_dev> <hash_dev> 4096 4096 <data_blocks> <hash_start_block> sha256 <root> <salt>`.
    pub fn kernel_table_args(&self, data_dev: &str, hash_dev: &str) -> String {
        format!(
            "1 {data_dev} {hash_dev} {BLOCK_SIZE} {BLOCK_SIZE} {} {} sha256 {} {}",
            self.data_blocks,
            self.hash_start_block(),
            self.root_hash_hex(),
            self.salt_arg(),
        )
    }
}

/// Bytes of superblock and tree that [`append_hash_tree`] writes for `data_blocks` data blocks,
/// so a caller can check the space before writing anything.
pub fn hash_size(data_blocks: u64, salt: &[u8]) -> Result<u64, FormatError> {
    let data_bytes =
        data_blocks
            .checked_mul(BLOCK_SIZE)
            .ok_or_else(|| FormatError::VerityParams {
                reason: format!("{data_blocks} data blocks overflow"),
            })?;
    Ok(Layout::new(data_bytes, data_blocks, salt)?.hash_size)
}

/// Hashes the first `params.data_blocks` blocks of `dev` and writes the superblock and the tree
/// at byte `data_bytes`, which must be a multiple of 4096 and at or past the end of the data.
///
/// The data is streamed; memory holds only the tree (1/128 of the data, plus padding).
pub fn append_hash_tree<D: Read + Write + Seek>(
    dev: &mut D,
    data_bytes: u64,
    params: &VerityParams,
) -> Result<VerityTree, FormatError> {
    let layout = Layout::new(data_bytes, params.data_blocks, &params.salt)?;
    let salted = salted_hasher(&params.salt);

    let mut digests = Vec::new();
    for_each_data_digest(dev, params.data_blocks, &salted, |_, digest| {
        digests.extend_from_slice(&digest);
        Ok(())
    })?;
    let (levels, root_hash) = build_levels(&salted, digests);
    debug_assert_eq!(
        levels
            .iter()
            .map(|l| (l.len() / BLOCK_BYTES) as u64)
            .collect::<Vec<_>>(),
        layout.level_blocks
    );

    let mut first = [0u8; BLOCK_BYTES];
    first[..SUPERBLOCK_BYTES].copy_from_slice(&superblock(
        params.data_blocks,
        &params.salt,
        &params.uuid,
    ));
    let mut offset = data_bytes;
    seek(dev, offset)?;
    for chunk in std::iter::once(&first[..]).chain(levels.iter().rev().map(Vec::as_slice)) {
        dev.write_all(chunk).map_err(|source| FormatError::Io {
            op: "writing the dm-verity hash tree",
            offset,
            source,
        })?;
        offset += chunk.len() as u64;
    }
    dev.flush().map_err(|source| FormatError::Io {
        op: "flushing the dm-verity hash tree",
        offset,
        source,
    })?;

    Ok(VerityTree {
        root_hash,
        hash_offset: data_bytes,
        hash_size: layout.hash_size,
        data_blocks: params.data_blocks,
        salt: params.salt.clone(),
        uuid: params.uuid,
    })
}

/// Checks `dev` against `tree` the way the kernel would, but all at once: the superblock must be
/// the one [`append_hash_tree`] writes, every tree block must match its parent digest (the top
/// block the root hash), and every data block its level-0 digest. The first mismatch is
/// reported, data blocks by index.
pub fn verify<D: Read + Seek>(dev: &mut D, tree: &VerityTree) -> Result<(), FormatError> {
    let layout = Layout::new(tree.hash_offset, tree.data_blocks, &tree.salt)?;
    if tree.hash_size != layout.hash_size {
        return Err(FormatError::VerityParams {
            reason: format!(
                "hash area of {} bytes given, but {} data blocks need {} bytes",
                tree.hash_size, tree.data_blocks, layout.hash_size
            ),
        });
    }
    // Checked before the tree is read into memory, so a bogus size cannot make us allocate it.
    let needed = tree.hash_offset + layout.hash_size;
    let len = dev
        .seek(SeekFrom::End(0))
        .map_err(|source| FormatError::Io {
            op: "finding the device size",
            offset: 0,
            source,
        })?;
    if len < needed {
        return Err(FormatError::VerityDeviceTooShort { len, needed });
    }

    let mut sb = [0u8; SUPERBLOCK_BYTES];
    read_at(
        dev,
        tree.hash_offset,
        &mut sb,
        "reading the dm-verity superblock",
    )?;
    let expected = superblock(tree.data_blocks, &tree.salt, &tree.uuid);
    if let Some((field, _)) = SB_FIELDS
        .iter()
        .find(|(_, r)| sb[r.clone()] != expected[r.clone()])
    {
        let reason = if *field == "signature" {
            "no \"verity\" signature".to_owned()
        } else {
            format!("the {field} differs")
        };
        return Err(FormatError::VeritySuperblock {
            offset: tree.hash_offset,
            reason,
        });
    }

    let salted = salted_hasher(&tree.salt);
    let mut stored: Vec<Vec<u8>> = Vec::with_capacity(layout.level_blocks.len());
    for (level, &blocks) in layout.level_blocks.iter().enumerate() {
        let mut bytes = vec![0u8; blocks as usize * BLOCK_BYTES];
        let offset = tree.hash_offset + layout.level_offset(level);
        read_at(dev, offset, &mut bytes, "reading the dm-verity hash tree")?;
        stored.push(bytes);
    }
    for level in (0..stored.len()).rev() {
        let (parent, name) = match stored.get(level + 1) {
            Some(above) => (above.as_slice(), "its digest in the level above"),
            None => (&tree.root_hash[..], "the root hash"),
        };
        for (index, block) in stored[level].chunks_exact(BLOCK_BYTES).enumerate() {
            if salted_digest(&salted, block)[..] != parent[index * DIGEST_BYTES..][..DIGEST_BYTES] {
                return Err(FormatError::VerityHashBlock {
                    level,
                    index: index as u64,
                    offset: tree.hash_offset
                        + layout.level_offset(level)
                        + index as u64 * BLOCK_SIZE,
                    parent: name,
                });
            }
        }
    }

    let (parent, name) = match stored.first() {
        Some(level0) => (level0.as_slice(), "its digest in level 0 of the tree"),
        None => (&tree.root_hash[..], "the root hash"),
    };
    for_each_data_digest(dev, tree.data_blocks, &salted, |block, digest| {
        let at = block as usize * DIGEST_BYTES;
        if digest[..] != parent[at..at + DIGEST_BYTES] {
            return Err(FormatError::VerityDataBlock {
                block,
                offset: block * BLOCK_SIZE,
                parent: name,
            });
        }
        Ok(())
    })
}

/// Where the pieces of the hash area go, computed from the sizes alone.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    /// Blocks in each level, bottom-up: level 0 holds the data blocks' digests. Empty for a
    /// single data block, whose digest is the root hash itself.
    level_blocks: Vec<u64>,
    /// Superblock block plus all levels, in bytes.
    hash_size: u64,
}

impl Layout {
    /// Validates the parameters and computes the tree geometry as cryptsetup's `hash_levels`
    /// does: level i has ceil(data_blocks / 128^(i+1)) blocks, and levels are added until one
    /// block holds them all.
    fn new(hash_offset: u64, data_blocks: u64, salt: &[u8]) -> Result<Layout, FormatError> {
        let invalid = |reason: String| Err(FormatError::VerityParams { reason });
        if !hash_offset.is_multiple_of(BLOCK_SIZE) {
            return invalid(format!(
                "hash offset {hash_offset} is not a multiple of {BLOCK_SIZE} bytes"
            ));
        }
        if data_blocks == 0 {
            return invalid("no data blocks; dm-verity needs at least one".to_owned());
        }
        match data_blocks.checked_mul(BLOCK_SIZE) {
            Some(data_end) if data_end <= hash_offset => {}
            _ => {
                return invalid(format!(
                    "{data_blocks} data blocks of {BLOCK_SIZE} bytes do not end by the hash offset {hash_offset}"
                ))
            }
        }
        if salt.len() > MAX_SALT_BYTES {
            return invalid(format!(
                "salt is {} bytes; the superblock holds at most {MAX_SALT_BYTES}",
                salt.len()
            ));
        }

        let hashes_per_block = (BLOCK_BYTES / DIGEST_BYTES) as u64;
        let mut level_blocks = Vec::new();
        let mut below = data_blocks;
        while below > 1 {
            below = below.div_ceil(hashes_per_block);
            level_blocks.push(below);
        }
        // data_blocks * 4096 fits in u64, and the tree is far smaller than the data.
        let hash_size = (1 + level_blocks.iter().sum::<u64>()) * BLOCK_SIZE;
        if hash_offset.checked_add(hash_size).is_none() {
            return invalid(format!(
                "a {hash_size}-byte hash area at byte {hash_offset} overflows"
            ));
        }
        Ok(Layout {
            level_blocks,
            hash_size,
        })
    }

    /// Byte offset of `level`'s first block from the superblock: the levels above it come first.
    fn level_offset(&self, level: usize) -> u64 {
        (1 + self.level_blocks[level + 1..].iter().sum::<u64>()) * BLOCK_SIZE
    }
}

/// Builds the tree from the packed digests of the data blocks: each level is the digests of the
/// one below, zero-padded to whole blocks, until a single digest (the root hash) is left.
/// Returns the levels bottom-up.
fn build_levels(salted: &Sha256, mut digests: Vec<u8>) -> (Vec<Vec<u8>>, [u8; DIGEST_BYTES]) {
    let mut levels = Vec::new();
    while digests.len() > DIGEST_BYTES {
        digests.resize(digests.len().next_multiple_of(BLOCK_BYTES), 0);
        let above = digests
            .chunks_exact(BLOCK_BYTES)
            .flat_map(|block| salted_digest(salted, block))
            .collect();
        levels.push(std::mem::replace(&mut digests, above));
    }
    let root = digests
        .try_into()
        .expect("Layout::new rejects zero data blocks, so one digest is left");
    (levels, root)
}

/// Calls `each(index, digest)` for the first `data_blocks` blocks of `dev`, in order, reading a
/// bounded chunk at a time.
fn for_each_data_digest<D: Read + Seek>(
    dev: &mut D,
    data_blocks: u64,
    salted: &Sha256,
    mut each: impl FnMut(u64, [u8; DIGEST_BYTES]) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    seek(dev, 0)?;
    let mut buf = vec![0u8; READ_CHUNK_BLOCKS * BLOCK_BYTES];
    let mut block = 0u64;
    while block < data_blocks {
        let count = (data_blocks - block).min(READ_CHUNK_BLOCKS as u64) as usize;
        let chunk = &mut buf[..count * BLOCK_BYTES];
        dev.read_exact(chunk).map_err(|source| FormatError::Io {
            op: "reading dm-verity data",
            offset: block * BLOCK_SIZE,
            source,
        })?;
        for data in chunk.chunks_exact(BLOCK_BYTES) {
            each(block, salted_digest(salted, data))?;
            block += 1;
        }
    }
    Ok(())
}

/// Format type 1 prepends the salt (type 0, Chrome OS, appends it); hashing it once and cloning
/// the state saves rehashing it for every block.
fn salted_hasher(salt: &[u8]) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher
}

fn salted_digest(salted: &Sha256, block: &[u8]) -> [u8; DIGEST_BYTES] {
    let mut hasher = salted.clone();
    hasher.update(block);
    hasher.finalize().into()
}

fn superblock(data_blocks: u64, salt: &[u8], uuid: &[u8; 16]) -> [u8; SUPERBLOCK_BYTES] {
    let mut sb = [0u8; SUPERBLOCK_BYTES];
    sb[SB_SIGNATURE].copy_from_slice(b"verity\0\0");
    sb[SB_VERSION].copy_from_slice(&1u32.to_le_bytes());
    // 1 is the "normal" format: salt first, digests padded to a power of two (32 already is).
    sb[SB_HASH_TYPE].copy_from_slice(&1u32.to_le_bytes());
    sb[SB_UUID].copy_from_slice(uuid);
    sb[SB_ALGORITHM][..6].copy_from_slice(b"sha256");
    sb[SB_DATA_BLOCK_SIZE].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[SB_HASH_BLOCK_SIZE].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[SB_DATA_BLOCKS].copy_from_slice(&data_blocks.to_le_bytes());
    sb[SB_SALT_SIZE].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[SB_SALT][..salt.len()].copy_from_slice(salt);
    sb
}

fn seek<D: Seek>(dev: &mut D, offset: u64) -> Result<(), FormatError> {
    dev.seek(SeekFrom::Start(offset))
        .map(drop)
        .map_err(|source| FormatError::Io {
            op: "seeking",
            offset,
            source,
        })
}

fn read_at<D: Read + Seek>(
    dev: &mut D,
    offset: u64,
    buf: &mut [u8],
    op: &'static str,
) -> Result<(), FormatError> {
    seek(dev, offset)?;
    dev.read_exact(buf)
        .map_err(|source| FormatError::Io { op, offset, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const UUID: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];

    /// Block i is filled with the byte i mod 256.
    fn striped(blocks: u64) -> Vec<u8> {
        (0..blocks).flat_map(|i| [i as u8; BLOCK_BYTES]).collect()
    }

    fn sha(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    fn params(data_blocks: u64, salt: &[u8]) -> VerityParams {
        VerityParams {
            data_blocks,
            salt: salt.to_vec(),
            uuid: UUID,
        }
    }

    fn build(data: Vec<u8>, salt: &[u8]) -> (Cursor<Vec<u8>>, VerityTree) {
        let data_bytes = data.len() as u64;
        let mut dev = Cursor::new(data);
        let tree =
            append_hash_tree(&mut dev, data_bytes, &params(data_bytes / BLOCK_SIZE, salt)).unwrap();
        (dev, tree)
    }

    #[test]
    fn single_block_root_is_the_data_digest_and_there_is_no_level() {
        let data = vec![7u8; BLOCK_BYTES];
        let (dev, tree) = build(data.clone(), &[0xca, 0xfe]);
        assert_eq!(tree.root_hash, sha(&[&[0xca, 0xfe], &data]));
        // Pinned from `veritysetup format --salt=cafe` on the same block.
        assert_eq!(
            tree.root_hash_hex(),
            "e1f42ff08d8eddc682dbca3621e48273d07ca04228cd14638769309bc428f5a0"
        );
        assert_eq!(tree.hash_size, BLOCK_SIZE);
        assert_eq!(dev.get_ref().len(), 2 * BLOCK_BYTES);
        assert!(dev.get_ref()[BLOCK_BYTES + SUPERBLOCK_BYTES..]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn empty_salt_single_zero_block_is_plain_sha256() {
        let (_, tree) = build(vec![0; BLOCK_BYTES], &[]);
        assert_eq!(
            tree.root_hash_hex(),
            "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7"
        );
        assert_eq!(tree.salt_arg(), "-");
    }

    #[test]
    fn two_levels_for_129_blocks_laid_out_top_first() {
        let salt = [0x00, 0x11, 0x22, 0x33];
        let data = striped(129);
        let (dev, tree) = build(data.clone(), &salt);
        let disk = dev.into_inner();

        // By hand: level 0 is two blocks (128 digests, then 1 digest and zeros); level 1 is
        // one block holding their two digests; the root hashes level 1.
        let digest = |b: &[u8]| sha(&[&salt, b]);
        let mut level0 = vec![0u8; 2 * BLOCK_BYTES];
        for (i, block) in data.chunks(BLOCK_BYTES).enumerate() {
            level0[i * 32..][..32].copy_from_slice(&digest(block));
        }
        let mut level1 = vec![0u8; BLOCK_BYTES];
        level1[..32].copy_from_slice(&digest(&level0[..BLOCK_BYTES]));
        level1[32..64].copy_from_slice(&digest(&level0[BLOCK_BYTES..]));
        assert_eq!(tree.root_hash, digest(&level1));
        // Pinned from `veritysetup format --salt=00112233` on the same data.
        assert_eq!(
            tree.root_hash_hex(),
            "2d37f803a1877617fe97bd7685625064b812a6c281280d10f1cd48bb5bd2fc95"
        );

        let hash_area = &disk[data.len()..];
        assert_eq!(hash_area.len(), 4 * BLOCK_BYTES);
        assert_eq!(tree.hash_size, 4 * BLOCK_SIZE);
        assert_eq!(&hash_area[BLOCK_BYTES..2 * BLOCK_BYTES], &level1[..]);
        assert_eq!(&hash_area[2 * BLOCK_BYTES..], &level0[..]);
        assert_eq!(&disk[..data.len()], &data[..]);
    }

    #[test]
    fn superblock_fields() {
        let salt = [0xab; 40];
        let (dev, tree) = build(striped(3), &salt);
        let sb = &dev.get_ref()[tree.hash_offset as usize..][..SUPERBLOCK_BYTES];
        assert_eq!(&sb[..8], b"verity\0\0");
        assert_eq!(&sb[8..16], &[1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&sb[16..32], &UUID);
        assert_eq!(&sb[32..39], b"sha256\0");
        assert!(sb[38..64].iter().all(|&b| b == 0));
        assert_eq!(&sb[64..72], &[0, 0x10, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(&sb[72..80], &3u64.to_le_bytes());
        assert_eq!(&sb[80..82], &40u16.to_le_bytes());
        assert_eq!(&sb[88..128], &salt);
        assert!(sb[128..].iter().all(|&b| b == 0));
        assert_eq!(tree.uuid_text(), "01234567-89ab-4def-8123-456789abcdef");
    }

    #[test]
    fn salt_is_prepended_and_changes_every_hash() {
        let data = striped(2);
        let (_, unsalted) = build(data.clone(), &[]);
        let (_, salted) = build(data.clone(), &[1]);
        assert_ne!(unsalted.root_hash, salted.root_hash);
        // Prepended, not appended (type 0 appends): check one level by hand.
        let mut level0 = vec![0u8; BLOCK_BYTES];
        level0[..32].copy_from_slice(&sha(&[&[1], &data[..BLOCK_BYTES]]));
        level0[32..64].copy_from_slice(&sha(&[&[1], &data[BLOCK_BYTES..]]));
        assert_eq!(salted.root_hash, sha(&[&[1], &level0]));

        let (_, longest) = build(data, &[0x5a; MAX_SALT_BYTES]);
        assert_eq!(longest.salt.len(), MAX_SALT_BYTES);
    }

    #[test]
    fn geometry_matches_cryptsetup() {
        let blocks = |n| Layout::new(n * BLOCK_SIZE, n, &[]).unwrap().level_blocks;
        assert_eq!(blocks(1), Vec::<u64>::new());
        assert_eq!(blocks(2), vec![1]);
        assert_eq!(blocks(128), vec![1]);
        assert_eq!(blocks(129), vec![2, 1]);
        assert_eq!(blocks(128 * 128), vec![128, 1]);
        assert_eq!(blocks(128 * 128 + 1), vec![129, 2, 1]);
        let layout = Layout::new(0x1000_0000, 128 * 128 + 1, &[]).unwrap();
        assert_eq!(layout.hash_size, (1 + 129 + 2 + 1) * BLOCK_SIZE);
        assert_eq!(layout.level_offset(2), BLOCK_SIZE);
        assert_eq!(layout.level_offset(1), 2 * BLOCK_SIZE);
        assert_eq!(layout.level_offset(0), 4 * BLOCK_SIZE);
    }

    #[test]
    fn hash_offset_past_the_data_leaves_a_gap() {
        let data_blocks = 5;
        let data_bytes = 8 * BLOCK_SIZE;
        let mut dev = Cursor::new(striped(8));
        let tree = append_hash_tree(&mut dev, data_bytes, &params(data_blocks, b"salt")).unwrap();
        assert_eq!(tree.hash_start_block(), 9);
        assert_eq!(tree.data_sectors(), 40);
        assert_eq!(
            tree.kernel_table_args("/dev/vda3", "/dev/vda3"),
            format!(
                "1 /dev/vda3 /dev/vda3 4096 4096 5 9 sha256 {} 73616c74",
                tree.root_hash_hex()
            )
        );
        // Blocks 5..8 are not covered: the tree equals one built over the first five alone.
        let (_, five) = build(striped(5), b"salt");
        assert_eq!(tree.root_hash, five.root_hash);
        verify(&mut dev, &tree).unwrap();
    }

    #[test]
    fn rejects_bad_sizes_and_salts() {
        let mut dev = Cursor::new(striped(4));
        let err = |dev: &mut Cursor<Vec<u8>>, bytes, p: VerityParams| match append_hash_tree(
            dev, bytes, &p,
        )
        .unwrap_err()
        {
            FormatError::VerityParams { reason } => reason,
            other => panic!("unexpected error {other:?}"),
        };
        assert!(err(&mut dev, 4 * BLOCK_SIZE - 512, params(3, &[])).contains("multiple of 4096"));
        assert!(err(&mut dev, 4 * BLOCK_SIZE, params(0, &[])).contains("at least one"));
        assert!(err(&mut dev, 4 * BLOCK_SIZE, params(5, &[])).contains("do not end"));
        assert!(err(&mut dev, 4 * BLOCK_SIZE, params(4, &[0; 257])).contains("257 bytes"));
        // Nothing was written by the failed calls.
        assert_eq!(dev.get_ref(), &striped(4));

        // A device shorter than the data it claims fails with the offset of the missing block.
        let mut short = Cursor::new(vec![0u8; 3 * BLOCK_BYTES]);
        match append_hash_tree(&mut short, 4 * BLOCK_SIZE, &params(4, &[])).unwrap_err() {
            FormatError::Io { offset, .. } => assert_eq!(offset, 0),
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn verify_accepts_the_written_tree_and_names_the_first_bad_data_block() {
        let (mut dev, tree) = build(striped(300), b"pepper");
        verify(&mut dev, &tree).unwrap();

        dev.get_mut()[200 * BLOCK_BYTES + 17] ^= 1;
        dev.get_mut()[250 * BLOCK_BYTES] ^= 1;
        match verify(&mut dev, &tree).unwrap_err() {
            FormatError::VerityDataBlock { block, offset, .. } => {
                assert_eq!(block, 200);
                assert_eq!(offset, 200 * BLOCK_SIZE);
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn verify_single_block_checks_the_root_directly() {
        let (mut dev, tree) = build(vec![9; BLOCK_BYTES], &[]);
        verify(&mut dev, &tree).unwrap();
        dev.get_mut()[5] = 0;
        assert!(matches!(
            verify(&mut dev, &tree).unwrap_err(),
            FormatError::VerityDataBlock {
                block: 0,
                parent: "the root hash",
                ..
            }
        ));
    }

    #[test]
    fn verify_detects_damaged_tree_superblock_and_root() {
        let (dev, tree) = build(striped(129), &[3; 8]);
        let hash_offset = tree.hash_offset as usize;

        // Second block of level 0 (the third tree block after the superblock).
        let mut damaged = dev.clone();
        damaged.get_mut()[hash_offset + 3 * BLOCK_BYTES + 4000] ^= 0x80;
        match verify(&mut damaged, &tree).unwrap_err() {
            FormatError::VerityHashBlock {
                level,
                index,
                offset,
                ..
            } => {
                assert_eq!((level, index), (0, 1));
                assert_eq!(offset, tree.hash_offset + 3 * BLOCK_SIZE);
            }
            other => panic!("unexpected error {other:?}"),
        }

        let mut wrong_root = tree.clone();
        wrong_root.root_hash[31] ^= 1;
        assert!(matches!(
            verify(&mut dev.clone(), &wrong_root).unwrap_err(),
            FormatError::VerityHashBlock {
                level: 1,
                index: 0,
                parent: "the root hash",
                ..
            }
        ));

        let mut other_uuid = tree.clone();
        other_uuid.uuid[0] ^= 1;
        match verify(&mut dev.clone(), &other_uuid).unwrap_err() {
            FormatError::VeritySuperblock { reason, .. } => assert_eq!(reason, "the uuid differs"),
            other => panic!("unexpected error {other:?}"),
        }

        let mut truncated = dev.clone();
        truncated.get_mut().truncate(hash_offset + 2 * BLOCK_BYTES);
        assert!(matches!(
            verify(&mut truncated, &tree).unwrap_err(),
            FormatError::VerityDeviceTooShort { .. }
        ));
    }

    #[test]
    fn derived_uuid_is_stable_and_distinct_per_name() {
        let a = VerityParams::derive_uuid(b"build-1", "root-a");
        assert_eq!(a, VerityParams::derive_uuid(b"build-1", "root-a"));
        assert_ne!(a, VerityParams::derive_uuid(b"build-1", "root-b"));
        assert_ne!(a, VerityParams::derive_uuid(b"build-2", "root-a"));
        assert_ne!(&a, Guid::derive(b"build-1", "root-a").as_bytes());
        assert_eq!(a[6] >> 4, 4, "RFC 4122 version 4");
    }
}
