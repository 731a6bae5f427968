//! What the bootloader says about this boot: is the running slot on trial?
//!
//! Stage 2 mounts the bootloader's partition read-only at `/boot` (the ESP on UEFI boards,
//! partition 1 of a Raspberry Pi card) and asks the slot backend of `cairn-boot` for the status,
//! so the answer comes from the same state the bootloader acts on: on systemd-boot, whether the
//! running slot's entry still carries a boot counter; on the Raspberry Pi, the firmware's
//! `tryboot` flag in the device tree. The partition stays mounted read-only; whatever changes
//! the state later remounts it.
//!
//! Nothing here may stop a boot: a missing partition or unreadable state gives `trial=unknown`
//! and a warning.

use std::path::Path;
use std::time::Duration;

use cairn_boot::fs::DirFs;
use cairn_boot::sdboot::SdBoot;
use cairn_boot::tryboot::{Tryboot, TrybootConfig};
use cairn_boot::Bootloader;
use cairn_facts::layout::label;

use crate::cmdline::Slot;
use crate::log::Logger;
use crate::partition;
use crate::paths::{self, Paths};
use crate::sys::{Mount, MountFlags, Syscalls};

/// Where the bootloader's partition is mounted.
pub const BOOT_MOUNT: &str = "boot";
/// The bootloader partition is on the same disk as the root, so it is already there; this only
/// covers a slow udev-less enumeration.
const PARTITION_TIMEOUT: Duration = Duration::from_secs(2);

/// The bootloader named by `BOOTLOADER=` in the release file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SystemdBoot,
    RpiTryboot,
}

impl Kind {
    pub fn from_release(text: &str) -> Option<Kind> {
        match text
            .lines()
            .find_map(|l| l.trim().strip_prefix("BOOTLOADER="))?
            .trim()
        {
            "systemd-boot" => Some(Kind::SystemdBoot),
            "rpi-tryboot" => Some(Kind::RpiTryboot),
            _ => None,
        }
    }

    /// GPT label of the partition holding the bootloader's state.
    pub fn partition(self) -> &'static str {
        match self {
            Kind::SystemdBoot => label::ESP,
            Kind::RpiTryboot => label::BOOT,
        }
    }
}

/// Whether this boot is a trial, as the ready line spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trial {
    Yes { tries_left: Option<u32> },
    No,
    Unknown,
}

impl Trial {
    pub fn as_str(self) -> &'static str {
        match self {
            Trial::Yes { .. } => "yes",
            Trial::No => "no",
            Trial::Unknown => "unknown",
        }
    }
}

fn boot_slot(slot: Slot) -> cairn_boot::Slot {
    match slot {
        Slot::A => cairn_boot::Slot::A,
        Slot::B => cairn_boot::Slot::B,
    }
}

/// Mounts the bootloader partition and reads the trial state; logs one line either way.
pub fn inspect(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    slot: Slot,
    kind: Option<Kind>,
) -> Trial {
    let Some(kind) = kind else {
        log.warn(format_args!(
            "{} names no known BOOTLOADER=; trial state unknown",
            paths::RELEASE
        ));
        return Trial::Unknown;
    };
    match read(sys, log, paths, slot, kind) {
        Ok(trial) => {
            match trial {
                Trial::Yes { tries_left } => log.info(format_args!(
                    "booted slot {} as a trial ({}): it falls back unless marked good",
                    slot.as_str(),
                    match tries_left {
                        Some(n) => format!("tries left after this one: {n}"),
                        None => "a single try".to_string(),
                    }
                )),
                _ => log.info(format_args!(
                    "booted slot {} (committed, not a trial)",
                    slot.as_str()
                )),
            }
            trial
        }
        Err(e) => {
            log.warn(format_args!(
                "slot {}: cannot read the bootloader state: {e}",
                slot.as_str()
            ));
            Trial::Unknown
        }
    }
}

fn read(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    slot: Slot,
    kind: Kind,
) -> Result<Trial, String> {
    let part = partition::wait_for(sys, paths, kind.partition(), PARTITION_TIMEOUT)
        .map_err(|e| e.to_string())?;
    repair_if_dirty(log, &part.node, kind.partition());
    let target = paths.at(BOOT_MOUNT);
    mount_ro(sys, &part.node, &target)?;
    let status = match kind {
        Kind::SystemdBoot => SdBoot::new(DirFs::new(&target), Some(boot_slot(slot))).status(),
        Kind::RpiTryboot => {
            let config = TrybootConfig {
                device_tree: paths.at(&cairn_boot::tryboot::DEVICE_TREE[1..]),
                ..TrybootConfig::default()
            };
            Tryboot::new(DirFs::new(&target), Some(boot_slot(slot)), config).status()
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(if status.trial {
        Trial::Yes {
            tries_left: status.slot(boot_slot(slot)).tries_left,
        }
    } else {
        Trial::No
    })
}

/// Puts the bootloader's FAT32 back in order when the power went while it was mounted
/// read-write (cairn_boot::fat32), before anything mounts it: otherwise the kernel turns it
/// read-only at the first damaged file an update touches, and no update can be installed.
/// A clean partition is only read (one sector).
fn repair_if_dirty(log: &Logger, node: &Path, name: &str) {
    match cairn_boot::fat32::repair_device(node) {
        Ok(None) => {}
        Ok(Some(done)) => log.warn(format_args!(
            "{name} was being written when the power went; {done}"
        )),
        Err(e) => log.warn(format_args!("{name}: not checked after a power cut: {e}")),
    }
}

fn mount_ro(sys: &dyn Syscalls, node: &Path, target: &Path) -> Result<(), String> {
    let source = node.display().to_string();
    sys.mount(&Mount {
        source: &source,
        target,
        fstype: "vfat",
        flags: MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        data: "",
    })
    .map_err(|e| format!("mounting {source} (vfat) on {}: {e}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};

    fn root(entries: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let w = |p: &str, s: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w(
            "sys/class/block/vda1/uevent",
            "DEVNAME=vda1\nPARTNAME=ESP\n",
        );
        w("dev/vda1", "");
        w("boot/loader/loader.conf", "default cairn-*\n");
        for e in entries {
            w(
                &format!("boot/loader/entries/{e}"),
                "title Cairn\nlinux /EFI/cairn/a/vmlinuz\n",
            );
        }
        dir
    }

    #[test]
    fn release_names_the_bootloader() {
        assert_eq!(
            Kind::from_release("VERSION=1.0.0\nBOOTLOADER=systemd-boot\n"),
            Some(Kind::SystemdBoot)
        );
        assert_eq!(
            Kind::from_release("BOOTLOADER=rpi-tryboot"),
            Some(Kind::RpiTryboot)
        );
        assert_eq!(Kind::from_release("BOOTLOADER=grub\n"), None);
        assert_eq!(Kind::from_release("VERSION=1.0.0\n"), None);
    }

    #[test]
    fn counted_entry_of_the_running_slot_is_a_trial() {
        let dir = root(&["cairn-1-a.conf", "cairn-2-b+1-1.conf"]);
        let sys = Fake::new();
        let (log, mem) = Logger::memory();
        let paths = Paths::under(dir.path());
        let trial = inspect(&sys, &log, &paths, Slot::B, Some(Kind::SystemdBoot));
        assert_eq!(
            trial,
            Trial::Yes {
                tries_left: Some(1)
            }
        );
        assert!(mem
            .text()
            .contains("booted slot b as a trial (tries left after this one: 1)"));
        assert!(sys.calls().contains(&Call::Mount {
            source: dir.path().join("dev/vda1").display().to_string(),
            target: dir.path().join("boot"),
            fstype: "vfat".into(),
            flags: MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            data: "".into(),
        }));
        assert_eq!(
            inspect(&sys, &log, &paths, Slot::A, Some(Kind::SystemdBoot)),
            Trial::No
        );
    }

    #[test]
    fn failures_give_unknown_and_never_stop_the_boot() {
        let dir = root(&["cairn-1-a.conf"]);
        let sys = Fake::new();
        sys.fail_when(|c| matches!(c, Call::Mount { .. }), libc::EINVAL);
        let (log, mem) = Logger::memory();
        let paths = Paths::under(dir.path());
        assert_eq!(
            inspect(&sys, &log, &paths, Slot::A, Some(Kind::SystemdBoot)),
            Trial::Unknown
        );
        assert!(mem
            .text()
            .contains("cannot read the bootloader state: mounting"));
        assert_eq!(
            inspect(&Fake::new(), &log, &paths, Slot::A, None),
            Trial::Unknown
        );
    }

    #[test]
    fn tryboot_flag_from_the_device_tree() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let w = |p: &str, s: &[u8]| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w(
            "sys/class/block/mmcblk0p1/uevent",
            b"DEVNAME=mmcblk0p1\nPARTNAME=BOOT\n",
        );
        w("dev/mmcblk0p1", b"");
        w(
            "boot/autoboot.txt",
            b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n",
        );
        w(
            "proc/device-tree/chosen/bootloader/tryboot",
            &1u32.to_be_bytes(),
        );
        w(
            "proc/device-tree/chosen/bootloader/partition",
            &3u32.to_be_bytes(),
        );
        let (log, _) = Logger::memory();
        let trial = inspect(
            &Fake::new(),
            &log,
            &Paths::under(r),
            Slot::B,
            Some(Kind::RpiTryboot),
        );
        assert!(matches!(trial, Trial::Yes { .. }), "{trial:?}");
    }
}
