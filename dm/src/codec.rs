//! The bytes of a device-mapper request and of the kernel's reply (`linux/dm-ioctl.h`, interface
//! version 4), encoded by hand.
//!
//! Every request on `/dev/mapper/control` is one buffer that the kernel reads and then rewrites
//! with its answer: a 312-byte `struct dm_ioctl` header (interface version, buffer size, flags,
//! the device's name; the kernel returns the device number and state in it), followed, for
//! `DM_TABLE_LOAD` only, by one `struct dm_target_spec` per target, each followed by its
//! NUL-terminated parameter string padded to 8 bytes. This module builds and reads those buffers
//! and does nothing else; [`crate::control`] sends them. All integers are in the machine's byte
//! order, which is little-endian on every board Cairn supports.

use std::fmt;
use std::ops::{BitOr, Deref, DerefMut, Range};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The ioctl "type" byte of device-mapper (`DM_IOCTL`).
pub const IOCTL_TYPE: u32 = 0xfd;
/// `sizeof(struct dm_ioctl)`: what the request numbers encode and what every buffer starts with.
pub const HEADER_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const TARGET_SPEC_SIZE: usize = 40;
/// Longest device name: `name[DM_NAME_LEN]` (128) including its NUL.
pub const MAX_NAME_LEN: usize = 127;
/// Longest target type: `target_type[DM_MAX_TYPE_NAME]` (16) including its NUL.
pub const MAX_TYPE_LEN: usize = 15;
/// Parameter strings are capped well below the kernel's own bound; a verity table is ~250 bytes,
/// a dm-crypt table with a 512-bit key ~200.
pub const MAX_PARAMS_LEN: usize = 4096;
/// Targets in one table. Cairn's tables have one; the cap keeps a request's size bounded.
pub const MAX_TARGETS: usize = 16;
/// The interface version we speak. The kernel accepts a request when the major number matches
/// and the minor is at most its own, so 4.0.0 runs on every kernel with the v4 interface.
pub const VERSION: [u32; 3] = [4, 0, 0];
/// Target specs (and so the whole buffer) are 8-byte aligned.
const ALIGN: usize = 8;

/// Byte ranges of the `struct dm_ioctl` fields.
pub mod header {
    use std::ops::Range;

    pub const VERSION: Range<usize> = 0..12;
    pub const DATA_SIZE: Range<usize> = 12..16;
    pub const DATA_START: Range<usize> = 16..20;
    pub const TARGET_COUNT: Range<usize> = 20..24;
    pub const OPEN_COUNT: Range<usize> = 24..28;
    pub const FLAGS: Range<usize> = 28..32;
    pub const EVENT_NR: Range<usize> = 32..36;
    pub const PADDING: Range<usize> = 36..40;
    pub const DEV: Range<usize> = 40..48;
    pub const NAME: Range<usize> = 48..176;
    pub const UUID: Range<usize> = 176..305;
    pub const DATA: Range<usize> = 305..312;
}

/// Byte ranges of the `struct dm_target_spec` fields, from the start of the spec.
pub mod spec {
    use std::ops::Range;

    pub const SECTOR_START: Range<usize> = 0..8;
    pub const LENGTH: Range<usize> = 8..16;
    pub const STATUS: Range<usize> = 16..20;
    pub const NEXT: Range<usize> = 20..24;
    pub const TARGET_TYPE: Range<usize> = 24..40;
}

/// The device-mapper commands Cairn uses; each is `_IOWR(0xfd, nr, struct dm_ioctl)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Version,
    DevCreate,
    DevRemove,
    /// Suspends with [`Flags::SUSPEND`]; without it, resumes, which makes a loaded table live.
    DevSuspend,
    TableLoad,
}

impl Command {
    /// The command number (`DM_*_CMD`), the low byte of the request number.
    pub fn nr(self) -> u32 {
        match self {
            Self::Version => 0,
            Self::DevCreate => 3,
            Self::DevRemove => 4,
            Self::DevSuspend => 6,
            Self::TableLoad => 9,
        }
    }

    /// The request number as `<linux/dm-ioctl.h>` defines it, for architectures with the
    /// generic ioctl encoding (x86, arm, arm64, riscv): direction 3 in bits 30..32, the header
    /// size in bits 16..30, the type in bits 8..16. [`crate::Control`] asks libc instead, which
    /// also knows the other encodings.
    pub fn generic_request(self) -> u32 {
        (3 << 30) | ((HEADER_SIZE as u32) << 16) | (IOCTL_TYPE << 8) | self.nr()
    }

    /// The C macro's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Version => "DM_VERSION",
            Self::DevCreate => "DM_DEV_CREATE",
            Self::DevRemove => "DM_DEV_REMOVE",
            Self::DevSuspend => "DM_DEV_SUSPEND",
            Self::TableLoad => "DM_TABLE_LOAD",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `flags` field of `struct dm_ioctl` (`DM_*_FLAG`), both request options and reply state.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u32);

impl Flags {
    pub const NONE: Self = Self(0);
    /// In: the table is read-only. Out: the device is read-only.
    pub const READONLY: Self = Self(1 << 0);
    /// In (`DM_DEV_SUSPEND`): suspend rather than resume. Out: the device is suspended.
    pub const SUSPEND: Self = Self(1 << 1);
    /// Out: a live table is present.
    pub const ACTIVE_PRESENT: Self = Self(1 << 5);
    /// Out: a loaded, not yet live, table is present.
    pub const INACTIVE_PRESENT: Self = Self(1 << 6);
    /// Out: the buffer was too small for the answer.
    pub const BUFFER_FULL: Self = Self(1 << 8);
    /// In: the request carries a secret (a dm-crypt key). The kernel wipes its copy of the
    /// buffer, and clears ours, once it has read it.
    pub const SECURE_DATA: Self = Self(1 << 15);

    const NAMES: [(Self, &'static str); 6] = [
        (Self::READONLY, "READONLY"),
        (Self::SUSPEND, "SUSPEND"),
        (Self::ACTIVE_PRESENT, "ACTIVE_PRESENT"),
        (Self::INACTIVE_PRESENT, "INACTIVE_PRESENT"),
        (Self::BUFFER_FULL, "BUFFER_FULL"),
        (Self::SECURE_DATA, "SECURE_DATA"),
    ];

    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Flags {
    /// `READONLY | ACTIVE_PRESENT | 0x2000`, or `0x0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut parts = Vec::new();
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                parts.push(name.to_owned());
                rest &= !flag.0;
            }
        }
        if rest != 0 || parts.is_empty() {
            parts.push(format!("{rest:#x}"));
        }
        f.write_str(&parts.join(" | "))
    }
}

/// A block device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevT {
    pub major: u32,
    pub minor: u32,
}

impl DevT {
    /// Decodes `dm_ioctl.dev`, which the kernel fills with `huge_encode_dev`: minor bits 0..8 in
    /// bits 0..8, the 12-bit major in bits 8..20, minor bits 8..20 in bits 20..32. `None` when
    /// bits above 32 are set, which that encoding never does.
    pub fn from_dm(dev: u64) -> Option<Self> {
        let dev = u32::try_from(dev).ok()?;
        Some(Self {
            major: (dev >> 8) & 0xfff,
            minor: (dev & 0xff) | ((dev >> 12) & 0xf_ff00),
        })
    }

    /// The inverse of [`DevT::from_dm`] (for majors below 4096 and minors below 2^20).
    pub fn to_dm(self) -> u64 {
        let (major, minor) = (u64::from(self.major), u64::from(self.minor));
        (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
    }

    /// Parses a sysfs `dev` attribute: `<major>:<minor>` and a newline, both decimal.
    pub fn parse_sysfs(text: &str) -> Option<Self> {
        let (major, minor) = text.strip_suffix('\n').unwrap_or(text).split_once(':')?;
        let num = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u32>().ok()
        };
        Some(Self {
            major: num(major)?,
            minor: num(minor)?,
        })
    }
}

impl fmt::Display for DevT {
    /// `major:minor`, as device-mapper tables name devices.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of a device-mapper table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// First sector (512 bytes) of the mapped device this target covers.
    pub sector_start: u64,
    /// Sectors it covers.
    pub length: u64,
    /// `linear`, `verity`, `crypt`, …
    pub target_type: &'a str,
    /// The target's constructor arguments, space-separated. For `crypt` they hold the key.
    pub params: &'a str,
}

impl fmt::Debug for Target<'_> {
    /// Without the parameters, which may hold a key; callers log them when they are not secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Target {{ {} {} {}, {} bytes of parameters }}",
            self.sector_start,
            self.length,
            self.target_type,
            self.params.len()
        )
    }
}

/// A request buffer for one device, which the kernel reads and rewrites in place.
///
/// The buffer is wiped when dropped, whatever it carries: a `crypt` table's parameters are the
/// volume key in hex, and telling secret tables from others is not worth the risk for a few
/// hundred bytes.
pub struct Request(Zeroizing<Vec<u8>>);

impl Request {
    /// A request without targets (create, remove, suspend/resume, version) for the device `name`.
    pub fn new(name: &str, flags: Flags) -> Result<Self> {
        Self::table_load(name, flags, &[])
    }

    /// A `DM_TABLE_LOAD` request: the header, then each target's spec and parameter string.
    ///
    /// `next` in each spec is the distance to the following spec, as the kernel reads it for
    /// table loads; the last one points just past the end, as libdevmapper writes it.
    pub fn table_load(name: &str, flags: Flags, targets: &[Target<'_>]) -> Result<Self> {
        let bad = |reason: String| Error::Request {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "the device name must have 1 to {MAX_NAME_LEN} bytes, not {}",
                name.len()
            )));
        }
        if name.contains(['/', '\0']) {
            return Err(bad("the device name must not contain '/' or NUL".into()));
        }
        if targets.len() > MAX_TARGETS {
            return Err(bad(format!(
                "{} targets, more than the {MAX_TARGETS} a table may have",
                targets.len()
            )));
        }
        for t in targets {
            if t.target_type.is_empty() || t.target_type.len() > MAX_TYPE_LEN {
                return Err(bad(format!(
                    "target type {:?} must have 1 to {MAX_TYPE_LEN} bytes",
                    t.target_type
                )));
            }
            if t.params.len() > MAX_PARAMS_LEN || t.params.contains('\0') {
                return Err(bad(format!(
                    "{} target parameters must be at most {MAX_PARAMS_LEN} bytes without NUL",
                    t.target_type
                )));
            }
        }

        // Allocated once at its final size: growing the buffer would leave an unwiped copy of
        // the parameters written so far (a key) in the old allocation.
        let spec_len =
            |t: &Target<'_>| (TARGET_SPEC_SIZE + t.params.len() + 1).next_multiple_of(ALIGN);
        let total = HEADER_SIZE + targets.iter().map(spec_len).sum::<usize>();
        let mut buf = Zeroizing::new(vec![0u8; total]);
        let mut at = HEADER_SIZE;
        for t in targets {
            let next = spec_len(t);
            let s = &mut buf[at..at + next];
            put(s, spec::SECTOR_START, &t.sector_start.to_ne_bytes());
            put(s, spec::LENGTH, &t.length.to_ne_bytes());
            put(s, spec::NEXT, &(next as u32).to_ne_bytes());
            s[spec::TARGET_TYPE][..t.target_type.len()].copy_from_slice(t.target_type.as_bytes());
            s[TARGET_SPEC_SIZE..][..t.params.len()].copy_from_slice(t.params.as_bytes());
            at += next;
        }
        // At most 16 targets of at most 4 KiB each: both fit a u32 by far.
        let data_size = total as u32;
        let target_count = targets.len() as u32;

        for (i, v) in VERSION.iter().enumerate() {
            buf[header::VERSION][i * 4..][..4].copy_from_slice(&v.to_ne_bytes());
        }
        put(&mut buf, header::DATA_SIZE, &data_size.to_ne_bytes());
        put(
            &mut buf,
            header::DATA_START,
            &(HEADER_SIZE as u32).to_ne_bytes(),
        );
        put(&mut buf, header::TARGET_COUNT, &target_count.to_ne_bytes());
        put(&mut buf, header::FLAGS, &flags.bits().to_ne_bytes());
        buf[header::NAME][..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self(buf))
    }

    /// What the kernel wrote back into the header; `None` if it is shorter than one.
    pub fn reply(&self) -> Option<Reply> {
        Reply::parse(&self.0)
    }
}

impl Deref for Request {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Request {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl fmt::Debug for Request {
    /// The length only: the buffer may hold a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({} bytes)", self.0.len())
    }
}

/// What the kernel wrote back into the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The kernel's interface version.
    pub version: [u32; 3],
    pub data_size: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: Flags,
    pub event_nr: u32,
    /// Encoded as [`DevT::from_dm`] reads it.
    pub dev: u64,
}

impl Reply {
    /// Reads the header of `buf`; `None` if the buffer is shorter than one.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        if buf.len() < HEADER_SIZE {
            return None;
        }
        let u32_at = |r: Range<usize>| u32::from_ne_bytes(buf[r].try_into().expect("4 bytes"));
        Some(Self {
            version: [u32_at(0..4), u32_at(4..8), u32_at(8..12)],
            data_size: u32_at(header::DATA_SIZE),
            target_count: u32_at(header::TARGET_COUNT),
            open_count: u32_at(header::OPEN_COUNT) as i32,
            flags: Flags::from_bits(u32_at(header::FLAGS)),
            event_nr: u32_at(header::EVENT_NR),
            dev: u64::from_ne_bytes(buf[header::DEV].try_into().expect("8 bytes")),
        })
    }
}

pub(crate) fn put(buf: &mut [u8], at: Range<usize>, bytes: &[u8]) {
    buf[at].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{write_reply, Decoded};

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn request_numbers_match_the_uapi_header() {
        assert_eq!(Command::Version.generic_request(), 0xc138_fd00);
        assert_eq!(Command::DevCreate.generic_request(), 0xc138_fd03);
        assert_eq!(Command::DevRemove.generic_request(), 0xc138_fd04);
        assert_eq!(Command::DevSuspend.generic_request(), 0xc138_fd06);
        assert_eq!(Command::TableLoad.generic_request(), 0xc138_fd09);
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn libc_encodes_the_same_request_numbers() {
        for cmd in [
            Command::Version,
            Command::DevCreate,
            Command::DevRemove,
            Command::DevSuspend,
            Command::TableLoad,
        ] {
            let libc = libc::_IOWR::<[u8; HEADER_SIZE]>(IOCTL_TYPE, cmd.nr());
            assert_eq!(libc as u32, cmd.generic_request(), "{}", cmd.name());
        }
    }

    #[test]
    fn header_field_ranges_tile_the_struct() {
        let ranges = [
            header::VERSION,
            header::DATA_SIZE,
            header::DATA_START,
            header::TARGET_COUNT,
            header::OPEN_COUNT,
            header::FLAGS,
            header::EVENT_NR,
            header::PADDING,
            header::DEV,
            header::NAME,
            header::UUID,
            header::DATA,
        ];
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!((ranges[0].start, ranges[11].end), (0, HEADER_SIZE));
        assert_eq!(header::NAME.len(), 128);
        assert_eq!(header::UUID.len(), 129);
        let spec = [
            spec::SECTOR_START,
            spec::LENGTH,
            spec::STATUS,
            spec::NEXT,
            spec::TARGET_TYPE,
        ];
        for pair in spec.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!((spec[0].start, spec[4].end), (0, TARGET_SPEC_SIZE));
        assert_eq!(spec::TARGET_TYPE.len(), MAX_TYPE_LEN + 1);
    }

    #[test]
    fn plain_request_layout() {
        let b = Request::new("root-b", Flags::NONE).unwrap();
        assert_eq!(b.len(), 312);
        assert_eq!([le32(&b, 0), le32(&b, 4), le32(&b, 8)], [4, 0, 0]);
        assert_eq!(le32(&b, 12), 312, "data_size");
        assert_eq!(le32(&b, 16), 312, "data_start");
        assert_eq!(le32(&b, 20), 0, "target_count");
        assert_eq!(le32(&b, 24), 0, "open_count");
        assert_eq!(le32(&b, 28), 0, "flags");
        assert_eq!(le64(&b, 40), 0, "dev");
        assert_eq!(&b[48..55], b"root-b\0");
        assert!(b[55..].iter().all(|&c| c == 0), "rest of name, uuid, data");
    }

    #[test]
    fn table_load_layout() {
        let params = "1 254:3 254:3 4096 4096 5 9 sha256 ab -";
        let b = Request::table_load(
            "root-a",
            Flags::READONLY,
            &[Target {
                sector_start: 0,
                length: 40,
                target_type: "verity",
                params,
            }],
        )
        .unwrap();
        // 312 header + 40 spec + 39 params + NUL = 392, already a multiple of 8.
        assert_eq!(params.len(), 39);
        assert_eq!(b.len(), 392);
        assert_eq!(le32(&b, 12), 392, "data_size");
        assert_eq!(le32(&b, 16), 312, "data_start");
        assert_eq!(le32(&b, 20), 1, "target_count");
        assert_eq!(le32(&b, 28), 1, "flags: DM_READONLY_FLAG");
        assert_eq!(&b[48..55], b"root-a\0");
        assert_eq!(le64(&b, 312), 0, "sector_start");
        assert_eq!(le64(&b, 320), 40, "length");
        assert_eq!(le32(&b, 328), 0, "status");
        assert_eq!(le32(&b, 332), 80, "next: spec + params + NUL");
        assert_eq!(&b[336..352], b"verity\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&b[352..391], params.as_bytes());
        assert_eq!(b[391], 0);
    }

    #[test]
    fn secure_crypt_table_layout() {
        let b = Request::table_load(
            "data",
            Flags::SECURE_DATA,
            &[Target {
                sector_start: 0,
                length: 8,
                target_type: "crypt",
                params: "abc",
            }],
        )
        .unwrap();
        // 312 header + 40 spec + "abc" + NUL, padded to 48.
        assert_eq!(b.len(), 360);
        assert_eq!(le32(&b, 28), 0x8000, "flags: DM_SECURE_DATA_FLAG");
        assert_eq!(&b[48..53], b"data\0");
        assert_eq!(le32(&b, 16), 312, "data_start");
        assert_eq!(le32(&b, 20), 1, "target_count");
        assert_eq!(le64(&b, 320), 8, "length");
        assert_eq!(le32(&b, 332), 48, "next");
        assert_eq!(&b[336..342], b"crypt\0");
        assert_eq!(&b[352..356], b"abc\0");
        assert_eq!(format!("{b:?}"), "Request(360 bytes)");
    }

    #[test]
    fn params_are_nul_terminated_and_padded_to_8() {
        for (len, total) in [(0, 360), (6, 360), (7, 360), (8, 368), (15, 368), (16, 376)] {
            let params = "x".repeat(len);
            let b = Request::table_load(
                "d",
                Flags::NONE,
                &[Target {
                    sector_start: 0,
                    length: 8,
                    target_type: "linear",
                    params: &params,
                }],
            )
            .unwrap();
            assert_eq!(b.len(), total, "params of {len} bytes");
            assert_eq!(le32(&b, 12) as usize, total);
            assert_eq!(le32(&b, 332) as usize, total - 312, "next");
            assert!(b[352 + len..].iter().all(|&c| c == 0));
        }
    }

    #[test]
    fn second_target_starts_at_next() {
        let t = |start, params| Target {
            sector_start: start,
            length: 8,
            target_type: "linear",
            params,
        };
        let b = Request::table_load("two", Flags::NONE, &[t(0, "8:1 0"), t(8, "8:2 100")]).unwrap();
        assert_eq!(le32(&b, 20), 2);
        assert_eq!(le32(&b, 332), 48);
        assert_eq!(le64(&b, 312 + 48), 8, "second sector_start");
        assert_eq!(le32(&b, 12) as usize, b.len(), "data_size covers both");
        assert_eq!(
            Decoded::parse(&b).targets,
            [
                (0, 8, "linear".into(), "8:1 0".into()),
                (8, 8, "linear".into(), "8:2 100".into())
            ]
        );
    }

    #[test]
    fn bad_names_and_targets_are_refused() {
        let (too_long, longest) = ("p".repeat(MAX_PARAMS_LEN + 1), "p".repeat(MAX_PARAMS_LEN));
        for name in ["", "a/b", "nul\0", &"n".repeat(128)] {
            assert!(Request::new(name, Flags::NONE).is_err(), "{name:?}");
        }
        assert!(Request::new(&"n".repeat(127), Flags::NONE).is_ok());
        let t = |target_type, params| Target {
            sector_start: 0,
            length: 8,
            target_type,
            params,
        };
        let err = Request::table_load("d", Flags::NONE, &[t("a-very-long-type", "")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "device-mapper request for d: target type \"a-very-long-type\" must have 1 to 15 bytes"
        );
        assert!(Request::table_load("d", Flags::NONE, &[t("", "")]).is_err());
        assert!(Request::table_load("d", Flags::NONE, &[t("linear", "a\0b")]).is_err());
        assert!(Request::table_load("d", Flags::NONE, &[t("linear", &too_long)]).is_err());
        assert!(Request::table_load("d", Flags::NONE, &[t("linear", &longest)]).is_ok());
        let many = vec![t("linear", "8:1 0"); MAX_TARGETS + 1];
        assert!(Request::table_load("d", Flags::NONE, &many).is_err());
        assert!(Request::table_load("d", Flags::NONE, &many[1..]).is_ok());
    }

    #[test]
    fn reply_fields() {
        let mut b = Request::new("root-b", Flags::NONE).unwrap();
        b[0..12].copy_from_slice(&[4, 0, 0, 0, 48, 0, 0, 0, 1, 0, 0, 0]);
        b[24..28].copy_from_slice(&(-1i32).to_le_bytes());
        b[32..36].copy_from_slice(&7u32.to_le_bytes());
        write_reply(&mut b, Flags::ACTIVE_PRESENT | Flags::READONLY, 0xfd00);
        let r = b.reply().unwrap();
        assert_eq!(r.version, [4, 48, 1]);
        assert_eq!(r.data_size, 312);
        assert_eq!(r.open_count, -1);
        assert_eq!(r.event_nr, 7);
        assert_eq!(le32(&b, 28), 0x21);
        assert_eq!(r.flags, Flags::READONLY | Flags::ACTIVE_PRESENT);
        assert_eq!(r.dev, 0xfd00);
        assert_eq!(Reply::parse(&b[..311]), None);
    }

    #[test]
    fn dev_encoding() {
        let d = |major, minor| DevT { major, minor };
        assert_eq!(DevT::from_dm(0xfd00), Some(d(253, 0)));
        assert_eq!(DevT::from_dm(0xfe03), Some(d(254, 3)));
        // Minor 0x12345: low byte in bits 0..8, the rest from bit 20 up.
        assert_eq!(DevT::from_dm(0x1230_fd45), Some(d(253, 0x12345)));
        assert_eq!(d(253, 0x12345).to_dm(), 0x1230_fd45);
        assert_eq!(d(259, 7).to_dm(), 0x10307);
        assert_eq!(DevT::from_dm(1 << 32), None);
        assert_eq!(d(254, 3).to_string(), "254:3");
    }

    #[test]
    fn sysfs_dev_parsing() {
        let d = |major, minor| Some(DevT { major, minor });
        assert_eq!(DevT::parse_sysfs("254:3\n"), d(254, 3));
        assert_eq!(DevT::parse_sysfs("8:0"), d(8, 0));
        for bad in [
            "",
            "254",
            "254:",
            ":3",
            "254:3:1",
            " 254:3",
            "+254:3",
            "a:b",
            "254:3\n\n",
        ] {
            assert_eq!(DevT::parse_sysfs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn flags_debug_names_bits() {
        assert_eq!(format!("{:?}", Flags::NONE), "0x0");
        assert_eq!(
            format!("{:?}", Flags::READONLY | Flags::from_bits(0x2000)),
            "READONLY | 0x2000"
        );
        assert_eq!(
            format!("{:?}", Flags::SECURE_DATA | Flags::READONLY),
            "READONLY | SECURE_DATA"
        );
        assert!(Flags::from_bits(0x161).contains(Flags::BUFFER_FULL | Flags::READONLY));
        assert!(!Flags::READONLY.contains(Flags::SUSPEND));
    }

    #[test]
    fn debug_output_never_shows_parameters() {
        let t = Target {
            sector_start: 0,
            length: 8,
            target_type: "crypt",
            params: "aes-xts-plain64 abcdef 0 8:3 32768",
        };
        let shown = format!("{t:?}");
        assert_eq!(shown, "Target { 0 8 crypt, 34 bytes of parameters }");
    }
}
