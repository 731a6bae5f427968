//! Whether a verified bundle may be installed on this device.
//!
//! Policy: the board and architecture must match; the installed version must be at least the
//! bundle's `min_installed_version` (older systems may lack what the new one's first boot needs);
//! the bundle's `security_version` must not be below the device's anti-rollback floor. A lower
//! `version` with an acceptable `security_version` is allowed: an operator may roll back to an
//! earlier release that has every security fix the device has committed to. Versions are valid
//! semver by construction ([`crate::Manifest`] decoding refuses anything else).

use semver::Version;

use crate::error::Refusal;
use crate::manifest::Manifest;

/// What the device knows about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The board name, as in a manifest's `compatible`.
    pub board: String,
    /// The CPU architecture, as in a manifest's `arch`.
    pub arch: String,
    /// The running release.
    pub installed_version: Version,
    /// The anti-rollback floor currently committed on the device.
    pub security_floor: u32,
}

/// Checks `manifest` against `device`; the first rule broken is returned.
pub fn check_install(manifest: &Manifest, device: &DeviceFacts) -> Result<(), Refusal> {
    if !manifest.compatible.contains(&device.board) {
        return Err(Refusal::WrongBoard {
            board: device.board.clone(),
            compatible: manifest.compatible.clone(),
        });
    }
    if manifest.arch != device.arch {
        return Err(Refusal::WrongArch {
            bundle: manifest.arch.clone(),
            device: device.arch.clone(),
        });
    }
    if device
        .installed_version
        .cmp_precedence(&manifest.min_installed_version)
        .is_lt()
    {
        return Err(Refusal::InstalledTooOld {
            installed: device.installed_version.clone(),
            minimum: manifest.min_installed_version.clone(),
        });
    }
    if manifest.security_version < device.security_floor {
        return Err(Refusal::SecurityRollback {
            bundle: manifest.security_version,
            floor: device.security_floor,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    fn device() -> DeviceFacts {
        DeviceFacts {
            board: "pc".into(),
            arch: "x86_64".into(),
            installed_version: Version::parse("1.3.0").unwrap(),
            security_floor: 3,
        }
    }

    #[test]
    fn accepts_a_matching_device() {
        assert_eq!(check_install(&sample(), &device()), Ok(()));
    }

    #[test]
    fn refuses_other_boards_and_arches() {
        let d = DeviceFacts {
            board: "rpi4".into(),
            ..device()
        };
        let r = check_install(&sample(), &d).unwrap_err();
        assert!(matches!(r, Refusal::WrongBoard { .. }));
        assert_eq!(
            r.to_string(),
            "bundle is for boards qemu-x86_64, pc, not this board \"rpi4\""
        );
        let d = DeviceFacts {
            arch: "aarch64".into(),
            ..device()
        };
        assert!(matches!(
            check_install(&sample(), &d),
            Err(Refusal::WrongArch { .. })
        ));
    }

    #[test]
    fn installed_version_must_reach_the_minimum_by_semver_precedence() {
        // sample(): min_installed_version 1.2.0.
        for (installed, ok) in [
            ("1.2.0", true),
            ("1.2.0+build.5", true),
            ("1.10.0", true),
            ("1.2.0-rc.1", false),
            ("1.1.99", false),
            ("0.9.0", false),
        ] {
            let d = DeviceFacts {
                installed_version: Version::parse(installed).unwrap(),
                ..device()
            };
            let r = check_install(&sample(), &d);
            assert_eq!(r.is_ok(), ok, "installed {installed}: {r:?}");
            if !ok {
                assert!(matches!(r, Err(Refusal::InstalledTooOld { .. })));
            }
        }
    }

    #[test]
    fn security_floor_blocks_rollback_but_version_downgrade_is_allowed() {
        // sample(): security_version 3, version 1.4.0-rc.1.
        let d = DeviceFacts {
            security_floor: 4,
            ..device()
        };
        let r = check_install(&sample(), &d).unwrap_err();
        assert_eq!(
            r,
            Refusal::SecurityRollback {
                bundle: 3,
                floor: 4
            }
        );
        let d = DeviceFacts {
            installed_version: Version::parse("2.0.0").unwrap(),
            ..device()
        };
        assert_eq!(check_install(&sample(), &d), Ok(()));
    }
}
