//! Mapping a LUKS2 data segment through dm-crypt: the table line, which is LUKS2 knowledge,
//! handed to [`cairn_dm`] to become a block device.
//!
//! The table is the one `cryptsetup open` loads for a LUKS2 volume: `<cipher> <hex volume key>
//! <iv_tweak> <device> <offset in 512-byte sectors>`, plus `1 sector_size:4096` when the
//! segment uses 4096-byte sectors. LUKS2 counts the IV in 512-byte units whatever the sector
//! size (cryptsetup sets `iv_large_sectors` only for plain and BitLocker mappings), so that
//! option is never added. The table's string is zeroized, and it is loaded with
//! `DM_SECURE_DATA_FLAG`, which makes the kernel wipe its copies too; cairn-dm wipes the request
//! buffer that carried it.

use std::path::{Path, PathBuf};

use cairn_dm::{Control, Flags, Target};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::volume::{Luks2, VolumeKey};

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

/// Creates the device-mapper device `name` with `table` as its live table and returns its
/// `/dev/dm-<minor>` node (no udev is assumed, so `/dev/mapper/<name>` may not exist).
pub fn activate(name: &str, table: &CryptTable, read_only: bool) -> Result<PathBuf> {
    let control = Control::open(Path::new(cairn_dm::CONTROL))?;
    let flags = if read_only {
        Flags::SECURE_DATA | Flags::READONLY
    } else {
        Flags::SECURE_DATA
    };
    let target = Target {
        sector_start: 0,
        length: table.length,
        target_type: "crypt",
        params: &table.params,
    };
    // Should removing a half-made device fail too, it keeps its name until someone removes
    // it; the cause of the failure is what the caller needs, so only that is returned.
    let device = cairn_dm::activate(&control, name, flags, &[target]).map_err(|failed| {
        failed
            .error
            .with_hint(cairn_dm::Command::TableLoad, LOAD_HINT)
    })?;
    Ok(device.node(Path::new("/dev")))
}

/// Why the kernel most likely refused a crypt table: the modules dm-crypt needs for
/// `aes-xts-plain64` are not loaded (see docs/luks2.md).
const LOAD_HINT: &str = " (the kernel log says why; are dm_crypt, xts and ecb loaded?)";

/// Removes the device-mapper device `name`.
pub fn remove(name: &str) -> Result<()> {
    let control = Control::open(Path::new(cairn_dm::CONTROL))?;
    Ok(cairn_dm::remove(&control, name)?)
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
}
