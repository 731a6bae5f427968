//! Whether the firmware booted this machine with UEFI Secure Boot enforcing: the `SecureBoot`
//! variable of `EFI_GLOBAL_VARIABLE`, read through efivarfs (mounted read-only on
//! `/sys/firmware/efi/efivars` if nothing is there yet). Read once per boot: the firmware sets
//! it before the kernel starts and nothing changes it afterwards.

use std::path::Path;

/// Present when the kernel was started by UEFI firmware.
const EFI_DIR: &str = "/sys/firmware/efi";
const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// efivarfs names a variable `<name>-<vendor GUID>`.
const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// The firmware's Secure Boot state, as the Health API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureBoot {
    /// The firmware verifies every image it starts against db.
    On,
    /// UEFI without Secure Boot enforcing (setup mode, disabled, or no such variable).
    Off,
    /// Not started by UEFI firmware (a Raspberry Pi, or a kernel booted directly).
    NotUefi,
    /// The variable exists but could not be read or has an unexpected form.
    Unknown,
}

impl SecureBoot {
    pub fn as_str(self) -> &'static str {
        match self {
            SecureBoot::On => "on",
            SecureBoot::Off => "off",
            SecureBoot::NotUefi => "not-uefi",
            SecureBoot::Unknown => "unknown",
        }
    }
}

/// Parses an efivarfs file: 4 bytes of attributes, then the variable's one byte (1 = on).
pub fn parse(bytes: &[u8]) -> SecureBoot {
    match bytes {
        [_, _, _, _, 1] => SecureBoot::On,
        [_, _, _, _, 0] => SecureBoot::Off,
        _ => SecureBoot::Unknown,
    }
}

/// Reads the state on this machine.
pub fn read() -> SecureBoot {
    read_at(Path::new(EFI_DIR), Path::new(EFIVARS), || {
        crate::block::mount_efivarfs_ro(Path::new(EFIVARS))
    })
}

fn read_at(efi: &Path, efivars: &Path, mount: impl FnOnce() -> std::io::Result<()>) -> SecureBoot {
    if !efi.is_dir() {
        return SecureBoot::NotUefi;
    }
    let var = efivars.join(SECURE_BOOT_VAR);
    if !var.exists() && !crate::block::is_mount_point(efivars) {
        if let Err(e) = mount() {
            crate::log::say!("secure boot: cannot mount efivarfs: {e}");
            return SecureBoot::Unknown;
        }
    }
    match std::fs::read(&var) {
        Ok(bytes) => parse(&bytes),
        // Firmware without Secure Boot support has no such variable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecureBoot::Off,
        Err(_) => SecureBoot::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_efivarfs_form() {
        assert_eq!(parse(&[6, 0, 0, 0, 1]), SecureBoot::On);
        assert_eq!(parse(&[6, 0, 0, 0, 0]), SecureBoot::Off);
        assert_eq!(parse(&[6, 0, 0, 0]), SecureBoot::Unknown);
        assert_eq!(parse(&[6, 0, 0, 0, 2]), SecureBoot::Unknown);
    }

    #[test]
    fn reads_the_variable_or_says_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let (efi, vars) = (dir.path().join("efi"), dir.path().join("efi/efivars"));
        let never = || -> std::io::Result<()> { panic!("mounted") };
        assert_eq!(read_at(&efi, &vars, never), SecureBoot::NotUefi);
        std::fs::create_dir_all(&vars).unwrap();
        let failed = || Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(read_at(&efi, &vars, failed), SecureBoot::Unknown);
        assert_eq!(read_at(&efi, &vars, || Ok(())), SecureBoot::Off);
        std::fs::write(vars.join(SECURE_BOOT_VAR), [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(read_at(&efi, &vars, never), SecureBoot::On);
    }
}
