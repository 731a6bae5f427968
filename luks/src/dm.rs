//! Mapping a LUKS2 data segment through dm-crypt: the table line, and the four
//! device-mapper ioctls (`DM_DEV_CREATE`, `DM_TABLE_LOAD`, `DM_DEV_SUSPEND` to resume,
//! `DM_DEV_REMOVE`) that make it a block device.
//!
//! The table is the one `cryptsetup open` loads for a LUKS2 volume: `<cipher> <hex volume key>
//! <iv_tweak> <device> <offset in 512-byte sectors>`, plus `1 sector_size:4096` when the
//! segment uses 4096-byte sectors. LUKS2 counts the IV in 512-byte units whatever the sector
//! size (cryptsetup sets `iv_large_sectors` only for plain and BitLocker mappings), so that
//! option is never added. Every buffer that carries the key is zeroized and sent with
//! `DM_SECURE_DATA_FLAG`, which makes the kernel wipe its copies too.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::volume::{Luks2, VolumeKey};

/// The control node device-mapper ioctls are sent to.
pub const CONTROL: &str = "/dev/mapper/control";

/// One dm-crypt target covering a LUKS2 data segment.
pub struct CryptTable {
    /// Length of the mapping in 512-byte sectors.
    pub length: u64,
    /// The target parameters; they contain the volume key in hex.
    pub params: Zeroizing<String>,
}

impl std::fmt::Debug for CryptTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CryptTable {{ length: {}, params: <secret> }}",
            self.length
        )
    }
}

impl CryptTable {
    /// The table for `luks`'s segment 0 on `device`, which is `device_size` bytes long.
    pub fn new(luks: &Luks2, key: &VolumeKey, device: &Path, device_size: u64) -> Result<Self> {
        let seg = luks.segment()?;
        if seg.kind != "crypt" {
            return Err(Error::Unsupported(format!("segment type {:?}", seg.kind)));
        }
        let sector = u64::from(seg.sector_size);
        if sector != 512 && sector != 4096 {
            return Err(Error::Unsupported(format!("sector size {sector}")));
        }
        let end = match seg.size.as_str() {
            "dynamic" => device_size,
            n => {
                let n: u64 = n
                    .parse()
                    .map_err(|_| Error::BadMetadata(format!("segment size {n:?}")))?;
                seg.offset.saturating_add(n).min(device_size)
            }
        };
        let bytes = end.saturating_sub(seg.offset) / sector * sector;
        if bytes == 0 {
            return Err(Error::DeviceTooSmall {
                size: device_size,
                needed: seg.offset + sector,
            });
        }
        let iv: u64 = seg
            .iv_tweak
            .parse()
            .map_err(|_| Error::BadMetadata(format!("iv_tweak {:?}", seg.iv_tweak)))?;
        let device = device
            .to_str()
            .filter(|d| !d.contains(char::is_whitespace))
            .ok_or_else(|| Error::Unsupported(format!("device path {device:?}")))?;
        let mut tail = format!(" {iv} {device} {}", seg.offset / 512);
        if sector != 512 {
            tail.push_str(&format!(" 1 sector_size:{sector}"));
        }
        let key_hex = Zeroizing::new(hex::encode(key.as_bytes()));
        // Sized once: growing the string would leave an unwiped copy of the key behind.
        let mut params = Zeroizing::new(String::with_capacity(
            seg.encryption.len() + 1 + key_hex.len() + tail.len(),
        ));
        params.push_str(&seg.encryption);
        params.push(' ');
        params.push_str(&key_hex);
        params.push_str(&tail);
        Ok(CryptTable {
            length: bytes / 512,
            params,
        })
    }
}

const HEADER_SIZE: usize = 312;
const SPEC_SIZE: usize = 40;
const NAME_LEN: usize = 128;
const READONLY_FLAG: u32 = 1 << 0;
const SECURE_DATA_FLAG: u32 = 1 << 15;
const BUFFER_FULL_FLAG: u32 = 1 << 8;

#[derive(Clone, Copy)]
enum Cmd {
    DevCreate = 3,
    DevRemove = 4,
    DevSuspend = 6,
    TableLoad = 9,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::DevCreate => "DM_DEV_CREATE",
            Cmd::DevRemove => "DM_DEV_REMOVE",
            Cmd::DevSuspend => "DM_DEV_SUSPEND",
            Cmd::TableLoad => "DM_TABLE_LOAD",
        }
    }

    /// `_IOWR(0xfd, nr, struct dm_ioctl)` in the generic encoding (x86_64, aarch64).
    fn request(self) -> u32 {
        (3 << 30) | ((HEADER_SIZE as u32) << 16) | (0xfd << 8) | self as u32
    }
}

/// A `struct dm_ioctl` request for `name` with room for the kernel's answer.
fn request(name: &str, flags: u32, payload: &[u8], targets: u32) -> Zeroizing<Vec<u8>> {
    let mut buf = Zeroizing::new(vec![0u8; (HEADER_SIZE + payload.len()).max(16 * 1024)]);
    let size = buf.len() as u32;
    for (i, v) in [4u32, 0, 0].iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    buf[12..16].copy_from_slice(&size.to_ne_bytes());
    buf[16..20].copy_from_slice(&(HEADER_SIZE as u32).to_ne_bytes());
    buf[20..24].copy_from_slice(&targets.to_ne_bytes());
    buf[28..32].copy_from_slice(&flags.to_ne_bytes());
    buf[48..48 + name.len()].copy_from_slice(name.as_bytes());
    buf[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
    buf
}

/// One `struct dm_target_spec` with its parameter string, NUL-terminated and 8-byte padded.
fn target_spec(length: u64, target_type: &str, params: &str) -> Zeroizing<Vec<u8>> {
    let total = (SPEC_SIZE + params.len() + 1).next_multiple_of(8);
    let mut spec = Zeroizing::new(vec![0u8; total]);
    spec[8..16].copy_from_slice(&length.to_ne_bytes());
    spec[20..24].copy_from_slice(&(total as u32).to_ne_bytes());
    spec[24..24 + target_type.len()].copy_from_slice(target_type.as_bytes());
    spec[SPEC_SIZE..SPEC_SIZE + params.len()].copy_from_slice(params.as_bytes());
    spec
}

fn ioctl(control: &File, cmd: Cmd, name: &str, buf: &mut [u8]) -> Result<()> {
    let err = |source| Error::DeviceMapper {
        op: cmd.name(),
        name: name.to_owned(),
        source,
    };
    // SAFETY: `buf` is a live, writable allocation of at least HEADER_SIZE bytes whose
    // `data_size` field states its true length, so the kernel reads and writes inside it.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), cmd.request() as _, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let flags = u32::from_ne_bytes(buf[28..32].try_into().expect("4 bytes"));
    if flags & BUFFER_FULL_FLAG != 0 {
        return Err(err(io::Error::other("the reply did not fit the buffer")));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains('/') || name.contains('\0') {
        return Err(Error::Unsupported(format!("device-mapper name {name:?}")));
    }
    Ok(())
}

/// Creates the device-mapper device `name` with `table` as its live table and returns its
/// `/dev/dm-<minor>` node (no udev is assumed, so `/dev/mapper/<name>` may not exist).
pub fn activate(name: &str, table: &CryptTable, read_only: bool) -> Result<PathBuf> {
    check_name(name)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(|source| Error::DeviceMapper {
            op: "opening /dev/mapper/control",
            name: name.to_owned(),
            source,
        })?;
    let mut buf = request(name, 0, &[], 0);
    ioctl(&control, Cmd::DevCreate, name, &mut buf)?;
    let dev = u64::from_ne_bytes(buf[40..48].try_into().expect("8 bytes"));
    let minor = (dev & 0xff) | ((dev >> 12) & 0xf_ff00);
    let loaded = (|| {
        let flags = SECURE_DATA_FLAG | if read_only { READONLY_FLAG } else { 0 };
        let spec = target_spec(table.length, "crypt", &table.params);
        let mut buf = request(name, flags, &spec, 1);
        ioctl(&control, Cmd::TableLoad, name, &mut buf)?;
        let mut buf = request(name, 0, &[], 0);
        ioctl(&control, Cmd::DevSuspend, name, &mut buf)
    })();
    if let Err(e) = loaded {
        let mut buf = request(name, 0, &[], 0);
        let _ = ioctl(&control, Cmd::DevRemove, name, &mut buf);
        return Err(e);
    }
    Ok(PathBuf::from(format!("/dev/dm-{minor}")))
}

/// Removes the device-mapper device `name`.
pub fn remove(name: &str) -> Result<()> {
    check_name(name)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(|source| Error::DeviceMapper {
            op: "opening /dev/mapper/control",
            name: name.to_owned(),
            source,
        })?;
    let mut buf = request(name, 0, &[], 0);
    ioctl(&control, Cmd::DevRemove, name, &mut buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FormatOptions, Kdf, DEFAULT_DATA_OFFSET};

    fn volume(sector_size: u32) -> (Luks2, VolumeKey) {
        let f = tempfile::tempfile().unwrap();
        f.set_len(32 << 20).unwrap();
        let vk = VolumeKey::from_bytes(&[0xab; 64]);
        let opts = FormatOptions {
            kdf: Kdf::Pbkdf2 { iterations: 1000 },
            digest_iterations: 1000,
            sector_size,
            label: String::new(),
        };
        (Luks2::format(&f, &vk, b"pw", &opts).unwrap(), vk)
    }

    #[test]
    fn table_matches_cryptsetup() {
        let (luks, vk) = volume(4096);
        let size = (32 << 20) + 1000;
        let t = CryptTable::new(&luks, &vk, Path::new("/dev/loop0"), size).unwrap();
        assert_eq!(t.length, (16 << 20) / 512);
        let want = format!(
            "aes-xts-plain64 {} 0 /dev/loop0 32768 1 sector_size:4096",
            "ab".repeat(64)
        );
        assert_eq!(*t.params, want);
        let (luks, vk) = volume(512);
        let t = CryptTable::new(&luks, &vk, Path::new("/dev/sda3"), size).unwrap();
        assert_eq!(t.length, ((16 << 20) + 512) / 512);
        assert!(t.params.ends_with(" 0 /dev/sda3 32768"));
        assert!(CryptTable::new(&luks, &vk, Path::new("/dev/x"), DEFAULT_DATA_OFFSET).is_err());
    }

    #[test]
    fn request_layout() {
        assert_eq!(Cmd::DevCreate.request(), 0xc138_fd03);
        assert_eq!(Cmd::TableLoad.request(), 0xc138_fd09);
        let spec = target_spec(8, "crypt", "abc");
        assert_eq!(spec.len(), 48);
        assert_eq!(&spec[24..29], b"crypt");
        assert_eq!(&spec[40..44], b"abc\0");
        let buf = request("data", SECURE_DATA_FLAG, &spec, 1);
        assert_eq!(&buf[48..53], b"data\0");
        assert_eq!(u32::from_ne_bytes(buf[16..20].try_into().unwrap()), 312);
        assert_eq!(u32::from_ne_bytes(buf[20..24].try_into().unwrap()), 1);
        assert_eq!(&buf[312 + 40..312 + 43], b"abc");
    }
}
