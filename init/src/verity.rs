//! The slot's root through dm-verity: the hash tree's superblock, the table, and the
//! device-mapper calls that turn the root partition into a verified `/dev/dm-N`.
//!
//! A root partition holds the squashfs, then, at the 4096-aligned byte `cairn.hashoffset`, one
//! 4096-byte block whose first 512 bytes are the verity superblock, then the hash tree: the
//! layout `veritysetup format --hash-offset` writes, which the image builder reproduces. The
//! root hash comes from the kernel command line (`cairn.roothash`), never from the partition.
//! [`open`] checks the superblock, has [`cairn_dm`] create the device-mapper device `root-<slot>`
//! with one read-only `verity` target over the partition and make it live (its requests go
//! through [`Syscalls::dm_ioctl`], so the tests fake the kernel), and waits for its node. From then
//! on the kernel checks every block read through the device against the tree, up to the root
//! hash; with `restart_on_corruption` a block that does not match restarts the machine, so a
//! tampered root never runs.
//!
//! The salt and the data block count are taken from the superblock, as `veritysetup open` does.
//! They are not trusted for that: the salt is hashed into every digest up to the root hash, and a
//! wrong block count changes the tree's shape so that the device either fails verification or
//! can only return blocks of the genuine tree.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_dm::{Command, DevT, Flags, Target, Transport};

use crate::cmdline::{RootVerity, Slot};
use crate::error::{chain, Error, Result};
use crate::log::Logger;
use crate::partition::{Partition, POLL_INTERVAL};
use crate::paths::{self, limits, read_limited, Paths};
use crate::sys::Syscalls;

/// Data and hash block size: the only one Cairn images use.
pub const BLOCK_SIZE: u64 = 4096;
/// Longest salt the superblock can hold.
pub const MAX_SALT_LEN: usize = 256;
/// How long to wait for `/dev/mapper/control` and for the new device's node.
pub const TIMEOUT: Duration = Duration::from_secs(5);

const BLOCK_BYTES: usize = BLOCK_SIZE as usize;
const SECTORS_PER_BLOCK: u64 = BLOCK_SIZE / 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
const ALGORITHM: &str = "sha256";

/// Fields of the superblock (cryptsetup's `struct verity_sb`), integers little-endian.
mod sb {
    use std::ops::Range;

    pub const SIGNATURE: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const HASH_TYPE: Range<usize> = 12..16;
    pub const ALGORITHM: Range<usize> = 32..64;
    pub const DATA_BLOCK_SIZE: Range<usize> = 64..68;
    pub const HASH_BLOCK_SIZE: Range<usize> = 68..72;
    pub const DATA_BLOCKS: Range<usize> = 72..80;
    pub const SALT_SIZE: Range<usize> = 80..82;
    pub const SALT: Range<usize> = 88..344;
}

/// A sha256 root hash, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RootHash([u8; 32]);

impl RootHash {
    /// Parses exactly 64 lowercase hex digits. Uppercase is refused rather than folded: the
    /// image builder writes lowercase, so anything else did not come from it.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let len = text.chars().count();
        if len != 64 {
            return Err(format!("it has {len} characters"));
        }
        let mut out = [0u8; 32];
        for (i, c) in text.chars().enumerate() {
            let nibble = match c {
                '0'..='9' => c as u8 - b'0',
                'a'..='f' => c as u8 - b'a' + 10,
                'A'..='F' => return Err(format!("{c:?} at position {} is uppercase", i + 1)),
                _ => return Err(format!("{c:?} at position {} is not a hex digit", i + 1)),
            };
            out[i / 2] |= nibble << if i % 2 == 0 { 4 } else { 0 };
        }
        Ok(Self(out))
    }

    /// The first 8 hex digits and an ellipsis, for log lines.
    pub fn short(&self) -> String {
        format!("{}…", &self.to_string()[..8])
    }
}

impl fmt::Display for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHash({self})")
    }
}

/// What the table needs from a valid superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// 4096-byte blocks at the start of the partition that the tree covers.
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

/// The superblock field that is not what Cairn writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadField {
    pub field: &'static str,
    pub found: String,
    pub expected: String,
}

impl Superblock {
    /// Checks the superblock at the start of `block`, read from byte `hash_offset`: format
    /// version 1, hash type 1, sha256, 4096-byte blocks, a salt that fits, and at least one data
    /// block, all of them before `hash_offset`.
    pub fn parse(
        block: &[u8; BLOCK_BYTES],
        hash_offset: u64,
    ) -> std::result::Result<Self, BadField> {
        let bad = |field, found: String, expected: String| {
            Err(BadField {
                field,
                found,
                expected,
            })
        };
        let le32 = |r: Range<usize>| u32::from_le_bytes(block[r].try_into().expect("4 bytes"));

        let signature = &block[sb::SIGNATURE];
        if signature != SIGNATURE {
            return bad(
                "signature",
                quoted(signature),
                format!(
                    "{} (is cairn.hashoffset={hash_offset} where this image's hash tree starts?)",
                    quoted(SIGNATURE)
                ),
            );
        }
        let version = le32(sb::VERSION);
        if version != 1 {
            return bad("superblock version", version.to_string(), "1".into());
        }
        let hash_type = le32(sb::HASH_TYPE);
        if hash_type != 1 {
            return bad("hash type", hash_type.to_string(), "1 (normal)".into());
        }
        let algorithm = &block[sb::ALGORITHM];
        let (name, padding) = algorithm.split_at(ALGORITHM.len());
        if name != ALGORITHM.as_bytes() || padding.iter().any(|&b| b != 0) {
            let end = algorithm.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            return bad(
                "hash algorithm",
                quoted(&algorithm[..end]),
                quoted(ALGORITHM.as_bytes()),
            );
        }
        for (field, range) in [
            ("data block size", sb::DATA_BLOCK_SIZE),
            ("hash block size", sb::HASH_BLOCK_SIZE),
        ] {
            let size = le32(range);
            if u64::from(size) != BLOCK_SIZE {
                return bad(field, size.to_string(), BLOCK_SIZE.to_string());
            }
        }
        let salt_size = usize::from(u16::from_le_bytes(
            block[sb::SALT_SIZE].try_into().expect("2 bytes"),
        ));
        if salt_size > MAX_SALT_LEN {
            return bad(
                "salt size",
                salt_size.to_string(),
                format!("at most {MAX_SALT_LEN}"),
            );
        }
        let data_blocks = u64::from_le_bytes(block[sb::DATA_BLOCKS].try_into().expect("8 bytes"));
        let room = hash_offset / BLOCK_SIZE;
        if data_blocks == 0 || data_blocks > room {
            return bad(
                "data block count",
                data_blocks.to_string(),
                format!(
                    "1 to {room} (the {BLOCK_SIZE}-byte blocks before the hash tree at byte \
                     {hash_offset})"
                ),
            );
        }
        Ok(Self {
            data_blocks,
            salt: block[sb::SALT][..salt_size].to_vec(),
        })
    }

    /// The salt as a verity table spells it: lowercase hex, or `-` when empty.
    pub fn salt_arg(&self) -> String {
        if self.salt.is_empty() {
            return "-".to_owned();
        }
        self.salt.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `"verity\x00\x00"`.
fn quoted(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// The `verity` target's parameters: format version 1, the partition as both data and hash
/// device, 4096-byte blocks, the data block count, the hash tree's first block (the one after the
/// superblock's), the algorithm, root hash and salt, and one optional argument: restart the
/// machine on a corrupted block.
pub fn table_params(dev: DevT, sb: &Superblock, hash_offset: u64, root_hash: &RootHash) -> String {
    format!(
        "{} 1 restart_on_corruption",
        table_params_eio(dev, sb, hash_offset, root_hash)
    )
}

/// [`table_params`] without the optional argument: a corrupted block reads as an I/O error
/// (the containers extension: a bad block fails the program that reads it, not the machine).
pub fn table_params_eio(
    dev: DevT,
    sb: &Superblock,
    hash_offset: u64,
    root_hash: &RootHash,
) -> String {
    format!(
        "1 {dev} {dev} {BLOCK_SIZE} {BLOCK_SIZE} {} {} {ALGORITHM} {root_hash} {}",
        sb.data_blocks,
        hash_offset / BLOCK_SIZE + 1,
        sb.salt_arg(),
    )
}

/// The device-mapper name of a slot's verified root.
pub fn dm_name(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "root-a",
        Slot::B => "root-b",
    }
}

/// A live dm-verity device over the root partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRoot {
    /// Device-mapper name, `root-<slot>`.
    pub name: &'static str,
    /// `/dev/dm-<minor>`.
    pub node: PathBuf,
    pub dev: DevT,
    pub data_blocks: u64,
}

/// Puts a dm-verity device over `partition` and returns it, live and with its node present.
/// On any failure after the device was created, the device is removed again.
pub fn open(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    partition: &Partition,
    slot: Slot,
    verity: &RootVerity,
) -> Result<VerifiedRoot> {
    let data_dev = partition_dev(paths, partition)?;
    open_on(
        sys,
        log,
        paths,
        (&partition.node, data_dev),
        dm_name(slot),
        verity,
        true,
    )
}

/// The device number of `partition`, from sysfs.
pub fn partition_dev(paths: &Paths, partition: &Partition) -> Result<DevT> {
    let dev_path = partition.sysfs_dev(paths);
    let text = read_limited(&dev_path, limits::SYSFS_ATTR)?;
    DevT::parse_sysfs(&text).ok_or_else(|| Error::BadDevNumber {
        path: dev_path.clone(),
        value: text.chars().take(40).collect(),
    })
}

/// Puts a dm-verity device named `name` over the device `data` (its node and number), whose
/// superblock is at `verity.hash_offset`. `restart` makes a corrupted block restart the machine
/// (the root) rather than read as an I/O error.
pub fn open_on(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    data: (&Path, DevT),
    name: &'static str,
    verity: &RootVerity,
    restart: bool,
) -> Result<VerifiedRoot> {
    let (node, data_dev) = data;
    let superblock = read_superblock(node, verity.hash_offset)?;
    let control = paths.at(paths::DEV_MAPPER_CONTROL);
    wait_for_node(sys, &control, "is dm_mod in /etc/cairn/modules?")?;
    let control = SysControl {
        sys,
        path: &control,
    };
    let params = if restart {
        table_params(data_dev, &superblock, verity.hash_offset, &verity.root_hash)
    } else {
        table_params_eio(data_dev, &superblock, verity.hash_offset, &verity.root_hash)
    };
    let length = superblock.data_blocks * SECTORS_PER_BLOCK;
    log.debug(format_args!("{name}: table 0 {length} verity {params}"));
    let target = Target {
        sector_start: 0,
        length,
        target_type: "verity",
        params: &params,
    };
    let left_behind = |e: &cairn_dm::Error| {
        log.warn(format_args!(
            "could not remove the unfinished device {name}: {}",
            chain(e)
        ))
    };
    let device = cairn_dm::activate(&control, name, Flags::READONLY, &[target]).map_err(|f| {
        if let Some(e) = &f.left_behind {
            left_behind(e);
        }
        f.error.with_hint(
            Command::TableLoad,
            " (the kernel log says why; is dm_verity in /etc/cairn/modules?)",
        )
    })?;
    let node = device.node(&paths.at("dev"));
    let appeared = wait_for_node(
        sys,
        &node,
        "devtmpfs did not create the node of the new device",
    );
    if let Err(e) = appeared {
        if let Err(removal) = cairn_dm::remove(&control, name) {
            left_behind(&removal);
        }
        return Err(e);
    }
    Ok(VerifiedRoot {
        name,
        node,
        dev: device.dev,
        data_blocks: superblock.data_blocks,
    })
}

/// The device-mapper control node as init reaches it: through [`Syscalls`].
pub(crate) struct SysControl<'a> {
    pub(crate) sys: &'a dyn Syscalls,
    pub(crate) path: &'a Path,
}

impl Transport for SysControl<'_> {
    fn ioctl(&self, cmd: Command, buf: &mut [u8]) -> io::Result<()> {
        self.sys.dm_ioctl(self.path, cmd, buf)
    }
}

fn read_superblock(device: &Path, offset: u64) -> Result<Superblock> {
    let read_err = |source| Error::ReadVeritySuperblock {
        device: device.to_owned(),
        offset,
        source,
    };
    let mut block = [0u8; BLOCK_BYTES];
    let file = File::open(device).map_err(read_err)?;
    file.read_exact_at(&mut block, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            read_err(io::Error::new(
                e.kind(),
                format!("the partition ends before byte {}", offset + BLOCK_SIZE),
            ))
        } else {
            read_err(e)
        }
    })?;
    Superblock::parse(&block, offset).map_err(|bad| Error::VeritySuperblock {
        device: device.to_owned(),
        offset,
        field: bad.field,
        found: bad.found,
        expected: bad.expected,
    })
}

/// Polls until `path` exists (devtmpfs creates nodes just after the kernel registers the
/// device), for at most [`TIMEOUT`].
pub(crate) fn wait_for_node(sys: &dyn Syscalls, path: &Path, hint: &'static str) -> Result<()> {
    let start = sys.boottime();
    loop {
        if path.exists() {
            return Ok(());
        }
        let waited = sys.boottime().saturating_sub(start);
        if waited >= TIMEOUT {
            return Err(Error::NodeTimeout {
                path: path.to_owned(),
                waited_ms: waited.as_millis(),
                hint,
            });
        }
        sys.sleep(POLL_INTERVAL);
    }
}

/// Fixtures shared with the stage 1 tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    use cairn_dm::testing::write_reply;
    use cairn_dm::{Command, DevT, Flags};

    use crate::sys::fake::Fake;

    /// A 4096-byte block with a superblock as `veritysetup format` writes it, from literal
    /// offsets rather than this module's constants.
    pub fn superblock_block(data_blocks: u64, salt: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(b"verity\0\0");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[16..32].copy_from_slice(&[0x5a; 16]);
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&4096u32.to_le_bytes());
        b[68..72].copy_from_slice(&4096u32.to_le_bytes());
        b[72..80].copy_from_slice(&data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[88..88 + salt.len()].copy_from_slice(salt);
        b
    }

    /// A partition image: zeros up to `hash_offset`, then the superblock's block.
    pub fn write_partition(path: &Path, hash_offset: u64, data_blocks: u64, salt: &[u8]) {
        let mut image = vec![0u8; hash_offset as usize];
        image.extend(superblock_block(data_blocks, salt));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, image).unwrap();
    }

    /// Makes the fake answer device-mapper ioctls the way the kernel does: `DM_DEV_CREATE`
    /// returns `dev`, a resume reports a live read-only device and creates `node`.
    pub fn fake_kernel(sys: &Fake, dev: DevT, node: PathBuf) {
        sys.on_dm_ioctl(move |cmd, buf| match cmd {
            Command::DevCreate => write_reply(buf, Flags::NONE, dev.to_dm()),
            Command::TableLoad => {
                write_reply(buf, Flags::INACTIVE_PRESENT | Flags::READONLY, dev.to_dm())
            }
            Command::DevSuspend => {
                std::fs::write(&node, "").unwrap();
                write_reply(buf, Flags::ACTIVE_PRESENT | Flags::READONLY, dev.to_dm());
            }
            Command::DevRemove | Command::Version => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::sys::fake::{Call, Fake};
    use cairn_dm::testing::{write_reply, Decoded};

    const HASH: &str = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    const HASH_OFFSET: u64 = 16 * 4096;

    fn root_hash() -> RootHash {
        RootHash::parse(HASH).unwrap()
    }

    fn block(bytes: Vec<u8>) -> [u8; BLOCK_BYTES] {
        bytes.try_into().unwrap()
    }

    #[test]
    fn root_hash_parsing() {
        let h = root_hash();
        assert_eq!(h.to_string(), HASH);
        assert_eq!(h.0[0], 0x1a);
        assert_eq!(h.0[31], 0x09);
        assert_eq!(h.short(), "1a2b3c4d…");
        let err = |s: &str| RootHash::parse(s).unwrap_err();
        assert_eq!(err(&HASH[..63]), "it has 63 characters");
        assert_eq!(err(&format!("{HASH}0")), "it has 65 characters");
        assert_eq!(err(""), "it has 0 characters");
        assert_eq!(
            err(&HASH.replace('a', "A")),
            "'A' at position 2 is uppercase"
        );
        assert_eq!(
            err(&format!("{}g", &HASH[..63])),
            "'g' at position 64 is not a hex digit"
        );
        assert_eq!(
            err(&format!("é{}", &HASH[..63])),
            "'é' at position 1 is not a hex digit"
        );
    }

    #[test]
    fn valid_superblock() {
        let sb = Superblock::parse(&block(superblock_block(16, b"salt")), HASH_OFFSET).unwrap();
        assert_eq!(
            sb,
            Superblock {
                data_blocks: 16,
                salt: b"salt".to_vec()
            }
        );
        assert_eq!(sb.salt_arg(), "73616c74");
        let sb = Superblock::parse(&block(superblock_block(1, &[])), HASH_OFFSET).unwrap();
        assert_eq!(sb.salt_arg(), "-");
        let sb = Superblock::parse(&block(superblock_block(3, &[7; 256])), HASH_OFFSET).unwrap();
        assert_eq!(sb.salt.len(), 256);
    }

    /// Breaks one field of a valid superblock.
    type Damage = fn(&mut [u8]);

    #[test]
    fn each_bad_superblock_field_is_named() {
        let cases: [(&str, Damage, &str, &str); 12] = [
            (
                "signature",
                |b| b[..4].copy_from_slice(b"hsqs"),
                r#""hsqsty\x00\x00""#,
                concat!(
                    r#""verity\x00\x00" (is cairn.hashoffset=65536 where this image's hash "#,
                    "tree starts?)"
                ),
            ),
            ("superblock version", |b| b[8] = 2, "2", "1"),
            ("hash type", |b| b[12] = 0, "0", "1 (normal)"),
            (
                "hash algorithm",
                |b| b[32..38].copy_from_slice(b"sha1\0\0"),
                r#""sha1""#,
                r#""sha256""#,
            ),
            (
                "hash algorithm",
                |b| b[38] = b'x',
                r#""sha256x""#,
                r#""sha256""#,
            ),
            (
                "hash algorithm",
                |b| b[63] = b'!',
                concat!(
                    r#""sha256\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"#,
                    r#"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00!""#
                ),
                r#""sha256""#,
            ),
            (
                "data block size",
                |b| b[64..68].copy_from_slice(&512u32.to_le_bytes()),
                "512",
                "4096",
            ),
            (
                "hash block size",
                |b| b[68..72].copy_from_slice(&8192u32.to_le_bytes()),
                "8192",
                "4096",
            ),
            (
                "salt size",
                |b| b[80..82].copy_from_slice(&257u16.to_le_bytes()),
                "257",
                "at most 256",
            ),
            (
                "data block count",
                |b| b[72..80].copy_from_slice(&0u64.to_le_bytes()),
                "0",
                "1 to 16 (the 4096-byte blocks before the hash tree at byte 65536)",
            ),
            (
                "data block count",
                |b| b[72..80].copy_from_slice(&17u64.to_le_bytes()),
                "17",
                "1 to 16 (the 4096-byte blocks before the hash tree at byte 65536)",
            ),
            (
                "data block count",
                |b| b[72..80].copy_from_slice(&u64::MAX.to_le_bytes()),
                "18446744073709551615",
                "1 to 16 (the 4096-byte blocks before the hash tree at byte 65536)",
            ),
        ];
        for (field, damage, found, expected) in cases {
            let mut b = superblock_block(16, b"salt");
            damage(&mut b[..]);
            assert_eq!(
                Superblock::parse(&block(b), HASH_OFFSET),
                Err(BadField {
                    field,
                    found: found.into(),
                    expected: expected.into()
                })
            );
        }
    }

    #[test]
    fn table_params_exactly() {
        let dev = DevT {
            major: 254,
            minor: 3,
        };
        let sb = Superblock {
            data_blocks: 123,
            salt: vec![0xca, 0xfe],
        };
        assert_eq!(
            table_params(dev, &sb, 126 * 4096, &root_hash()),
            format!("1 254:3 254:3 4096 4096 123 127 sha256 {HASH} cafe 1 restart_on_corruption")
        );
        let sb = Superblock {
            data_blocks: 1,
            salt: vec![],
        };
        assert_eq!(
            table_params(dev, &sb, 4096, &root_hash()),
            format!("1 254:3 254:3 4096 4096 1 2 sha256 {HASH} - 1 restart_on_corruption")
        );
    }

    /// A root with ROOT-B as vda3 (254:3), its superblock at [`HASH_OFFSET`], and the control node.
    fn setup() -> (tempfile::TempDir, Paths, Partition, RootVerity) {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write_partition(&r.join("dev/vda3"), HASH_OFFSET, 14, b"salt");
        std::fs::create_dir_all(r.join("sys/class/block/vda3")).unwrap();
        std::fs::write(r.join("sys/class/block/vda3/dev"), "254:3\n").unwrap();
        std::fs::create_dir_all(r.join("dev/mapper")).unwrap();
        std::fs::write(r.join("dev/mapper/control"), "").unwrap();
        let paths = Paths::under(r);
        let partition = Partition {
            devname: "vda3".into(),
            node: r.join("dev/vda3"),
        };
        let verity = RootVerity {
            root_hash: root_hash(),
            hash_offset: HASH_OFFSET,
        };
        (dir, paths, partition, verity)
    }

    fn dm_calls(sys: &Fake) -> Vec<(PathBuf, Command, Decoded)> {
        sys.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::DmIoctl {
                    control,
                    cmd,
                    request,
                } => Some((control, cmd, Decoded::parse(&request))),
                _ => None,
            })
            .collect()
    }

    fn plain(name: &str, flags: Flags) -> Decoded {
        Decoded {
            name: name.into(),
            flags,
            targets: vec![],
        }
    }

    fn dev_0() -> DevT {
        DevT {
            major: 253,
            minor: 0,
        }
    }

    #[test]
    fn creates_loads_and_resumes() {
        let (dir, paths, partition, verity) = setup();
        let sys = Fake::new();
        fake_kernel(&sys, dev_0(), dir.path().join("dev/dm-0"));
        let (log, mem) = Logger::memory();
        let root = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap();
        assert_eq!(
            root,
            VerifiedRoot {
                name: "root-b",
                node: dir.path().join("dev/dm-0"),
                dev: dev_0(),
                data_blocks: 14,
            }
        );
        let control = dir.path().join("dev/mapper/control");
        let params =
            format!("1 254:3 254:3 4096 4096 14 17 sha256 {HASH} 73616c74 1 restart_on_corruption");
        assert_eq!(
            dm_calls(&sys),
            [
                (
                    control.clone(),
                    Command::DevCreate,
                    plain("root-b", Flags::NONE)
                ),
                (
                    control.clone(),
                    Command::TableLoad,
                    Decoded {
                        name: "root-b".into(),
                        flags: Flags::READONLY,
                        targets: vec![(0, 14 * 8, "verity".into(), params.clone())],
                    }
                ),
                (control, Command::DevSuspend, plain("root-b", Flags::NONE)),
            ]
        );
        assert!(sys
            .calls()
            .iter()
            .all(|c| matches!(c, Call::DmIoctl { .. })));
        assert!(mem.text().contains(&params), "{}", mem.text());
    }

    #[test]
    fn waits_for_control_and_node() {
        let (dir, paths, partition, verity) = setup();
        let r = dir.path().to_owned();
        std::fs::remove_file(r.join("dev/mapper/control")).unwrap();
        let sys = Fake::new();
        // The control node appears after 100 ms; device-mapper calls take no virtual time, so
        // the new device's node, at 120 ms, comes 20 ms after the resume.
        sys.on_dm_ioctl(|cmd, buf| {
            let flags = match cmd {
                Command::DevSuspend => Flags::ACTIVE_PRESENT | Flags::READONLY,
                _ => Flags::NONE,
            };
            write_reply(buf, flags, 0xfd07);
        });
        let start = sys.now();
        sys.on_sleep(move |now| {
            let t = now - start;
            if t >= Duration::from_millis(100) {
                std::fs::write(r.join("dev/mapper/control"), "").unwrap();
            }
            if t >= Duration::from_millis(120) {
                std::fs::write(r.join("dev/dm-7"), "").unwrap();
            }
        });
        let (log, _) = Logger::memory();
        let root = open(&sys, &log, &paths, &partition, Slot::A, &verity).unwrap();
        assert_eq!(root.node, dir.path().join("dev/dm-7"));
        assert_eq!(root.name, "root-a");
        let waited = sys.now() - start;
        assert!(
            waited >= Duration::from_millis(120) && waited < Duration::from_millis(140),
            "{waited:?}"
        );
    }

    #[test]
    fn missing_control_node_times_out_before_any_ioctl() {
        let (dir, paths, partition, verity) = setup();
        std::fs::remove_file(dir.path().join("dev/mapper/control")).unwrap();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} did not appear within 5000 ms (is dm_mod in /etc/cairn/modules?)",
                dir.path().join("dev/mapper/control").display()
            )
        );
        assert!(dm_calls(&sys).is_empty());
    }

    #[test]
    fn a_node_that_never_appears_removes_the_device() {
        let (dir, paths, partition, verity) = setup();
        let sys = Fake::new();
        // Live and read-only, but devtmpfs never makes /dev/dm-0.
        sys.on_dm_ioctl(|cmd, buf| {
            let flags = match cmd {
                Command::DevSuspend => Flags::ACTIVE_PRESENT | Flags::READONLY,
                _ => Flags::NONE,
            };
            write_reply(buf, flags, 0xfd00);
        });
        let (log, mem) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} did not appear within 5000 ms (devtmpfs did not create the node of the new \
                 device)",
                dir.path().join("dev/dm-0").display()
            )
        );
        let calls = dm_calls(&sys);
        let cmds: Vec<Command> = calls.iter().map(|(_, c, _)| *c).collect();
        assert_eq!(
            cmds,
            [
                Command::DevCreate,
                Command::TableLoad,
                Command::DevSuspend,
                Command::DevRemove
            ]
        );
        assert_eq!(calls[3].2, plain("root-b", Flags::NONE), "removes by name");
        assert!(!mem.text().contains("could not remove"));

        // The removal fails too: one warning, the timeout stays the error.
        let sys = Fake::new();
        sys.on_dm_ioctl(|cmd, buf| {
            let flags = match cmd {
                Command::DevSuspend => Flags::ACTIVE_PRESENT | Flags::READONLY,
                _ => Flags::NONE,
            };
            write_reply(buf, flags, 0xfd00);
        });
        sys.fail_when(
            |c| {
                matches!(
                    c,
                    Call::DmIoctl {
                        cmd: Command::DevRemove,
                        ..
                    }
                )
            },
            libc::EBUSY,
        );
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert!(matches!(err, Error::NodeTimeout { .. }), "{err}");
        assert!(
            mem.text().contains(
                "could not remove the unfinished device root-b: device-mapper DM_DEV_REMOVE for \
                 root-b: Device or resource busy"
            ),
            "{}",
            mem.text()
        );
    }

    #[test]
    fn table_load_failure_removes_the_device() {
        let (dir, paths, partition, verity) = setup();
        let sys = Fake::new();
        fake_kernel(&sys, dev_0(), dir.path().join("dev/dm-0"));
        sys.fail_when(
            |c| {
                matches!(
                    c,
                    Call::DmIoctl {
                        cmd: Command::TableLoad,
                        ..
                    }
                )
            },
            libc::EINVAL,
        );
        let (log, mem) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert_eq!(
            chain(&err),
            "device-mapper DM_TABLE_LOAD for root-b (the kernel log says why; is dm_verity in \
             /etc/cairn/modules?): Invalid argument (os error 22)"
        );
        let cmds: Vec<Command> = dm_calls(&sys).into_iter().map(|(_, c, _)| c).collect();
        assert_eq!(
            cmds,
            [Command::DevCreate, Command::TableLoad, Command::DevRemove]
        );
        assert_eq!(
            dm_calls(&sys)[2].2,
            plain("root-b", Flags::NONE),
            "removes by name"
        );
        assert!(!mem.text().contains("could not remove"));
    }

    #[test]
    fn resume_failure_removes_the_device_and_a_failed_removal_only_warns() {
        let (dir, paths, partition, verity) = setup();
        let sys = Fake::new();
        fake_kernel(&sys, dev_0(), dir.path().join("dev/dm-0"));
        sys.fail_when(
            |c| {
                matches!(
                    c,
                    Call::DmIoctl {
                        cmd: Command::DevSuspend,
                        ..
                    }
                )
            },
            libc::EIO,
        );
        sys.fail_when(
            |c| {
                matches!(
                    c,
                    Call::DmIoctl {
                        cmd: Command::DevRemove,
                        ..
                    }
                )
            },
            libc::EBUSY,
        );
        let (log, mem) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::A, &verity).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Dm(cairn_dm::Error::Ioctl {
                    cmd: Command::DevSuspend,
                    ..
                })
            ),
            "{err}"
        );
        assert_eq!(dm_calls(&sys).last().unwrap().1, Command::DevRemove);
        assert!(
            mem.text()
                .contains("could not remove the unfinished device root-a: device-mapper"),
            "{}",
            mem.text()
        );
    }

    #[test]
    fn create_failure_has_nothing_to_remove() {
        let (_dir, paths, partition, verity) = setup();
        let sys = Fake::new();
        sys.fail_when(|c| matches!(c, Call::DmIoctl { .. }), libc::EBUSY);
        let (log, _) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert_eq!(
            chain(&err),
            "device-mapper DM_DEV_CREATE for root-b: Device or resource busy (os error 16)"
        );
        assert_eq!(dm_calls(&sys).len(), 1);
    }

    #[test]
    fn unexpected_replies_are_refused_and_clean_up() {
        // No device number from DM_DEV_CREATE.
        let (_dir, paths, partition, verity) = setup();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert_eq!(
            err.to_string(),
            "device-mapper DM_DEV_CREATE for root-b: unexpected reply: device number 0x0"
        );
        let cmds: Vec<Command> = dm_calls(&sys).into_iter().map(|(_, c, _)| c).collect();
        assert_eq!(cmds, [Command::DevCreate, Command::DevRemove]);

        // A resumed device that is still suspended.
        let sys = Fake::new();
        sys.on_dm_ioctl(|cmd, buf| {
            let flags = match cmd {
                Command::DevSuspend => Flags::ACTIVE_PRESENT | Flags::READONLY | Flags::SUSPEND,
                _ => Flags::NONE,
            };
            write_reply(buf, flags, 0xfd00);
        });
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert_eq!(
            err.to_string(),
            "device-mapper DM_DEV_SUSPEND for root-b: unexpected reply: flags READONLY | \
             SUSPEND | ACTIVE_PRESENT, expected a live, read-only, running device"
        );
        assert_eq!(dm_calls(&sys).last().unwrap().1, Command::DevRemove);

        // A full buffer.
        let sys = Fake::new();
        sys.on_dm_ioctl(|_, buf| write_reply(buf, Flags::BUFFER_FULL, 0xfd00));
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert_eq!(
            err.to_string(),
            "device-mapper DM_DEV_CREATE for root-b: unexpected reply: the kernel found the \
             buffer too small"
        );
    }

    #[test]
    fn bad_superblock_names_the_device_and_stops_before_device_mapper() {
        let (dir, paths, partition, verity) = setup();
        let mut image = std::fs::read(&partition.node).unwrap();
        image[HASH_OFFSET as usize + 32..][..6].copy_from_slice(b"sha512");
        std::fs::write(&partition.node, image).unwrap();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "dm-verity superblock of {} at byte 65536: hash algorithm is \"sha512\", \
                 expected \"sha256\"",
                dir.path().join("dev/vda3").display()
            )
        );
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn hash_offset_past_the_partition() {
        let (_dir, paths, partition, mut verity) = setup();
        verity.hash_offset = HASH_OFFSET + 4096;
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        let line = chain(&err);
        assert!(
            line.ends_with("at byte 69632: the partition ends before byte 73728"),
            "{line}"
        );
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn bad_sysfs_dev() {
        let (dir, paths, partition, verity) = setup();
        std::fs::write(dir.path().join("sys/class/block/vda3/dev"), "vda3\n").unwrap();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = open(&sys, &log, &paths, &partition, Slot::B, &verity).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("sys/class/block/vda3/dev has \"vda3\\n\"; expected <major>:<minor>"),
            "{err}"
        );
        assert!(sys.calls().is_empty());
    }
}
