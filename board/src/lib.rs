//! Board definitions.
//!
//! A board is everything that differs between the machines Cairn runs on: CPU architecture, which
//! Debian kernel and bootloader packages go into the image, which kernel modules init must load to
//! reach the root, the console device, the partition sizes, and (for emulated boards) how QEMU
//! starts it. Everything else in the image is the same for every board.

use serde::Serialize;

mod error;
pub use error::UnknownBoard;

/// CPU architecture of a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Aarch64,
    X86_64,
}

impl Arch {
    /// The Rust target the device binary is built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
            Arch::X86_64 => "x86_64-unknown-linux-musl",
        }
    }

    /// Debian's name for the architecture (`dpkg --print-architecture`).
    pub fn deb_arch(self) -> &'static str {
        match self {
            Arch::Aarch64 => "arm64",
            Arch::X86_64 => "amd64",
        }
    }

    /// The suffix UEFI uses in removable-media boot paths (`/EFI/BOOT/BOOT<SUFFIX>.EFI`).
    pub fn efi_suffix(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aa64",
            Arch::X86_64 => "x64",
        }
    }

    /// GPT partition type of a root filesystem for this architecture, from the UAPI Discoverable
    /// Partitions Specification, so that generic tools label ROOT-A/ROOT-B correctly.
    pub fn root_type_guid(self) -> &'static str {
        match self {
            Arch::Aarch64 => "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
            Arch::X86_64 => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::X86_64 => "x86_64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sizes of the partitions on the disk image, in MiB. The order on disk is fixed: the boot
/// partition (the ESP, or the Raspberry Pi firmware partition), BOOT-A and BOOT-B when the board
/// has per-slot boot partitions, ROOT-A, ROOT-B, STATE, DATA.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Layout {
    pub esp_mib: u64,
    /// Size of each of BOOT-A and BOOT-B; 0 when the slots' kernels live on the ESP.
    pub boot_slot_mib: u64,
    pub root_mib: u64,
    pub state_mib: u64,
    pub data_mib: u64,
}

/// How a board's firmware picks a slot, and where each slot's kernel lives.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BootScheme {
    /// UEFI firmware starts systemd-boot from the ESP; each slot's kernel, initramfs and Boot
    /// Loader Specification entry live on the ESP, and boot counting is in the entry file names.
    SystemdBoot {
        /// Debian package carrying systemd-boot's EFI binary.
        package: &'static str,
    },
    /// The Raspberry Pi 4 EEPROM bootloader reads `autoboot.txt` from partition 1 and starts the
    /// firmware from BOOT-A or BOOT-B; a trial is a reboot with the `tryboot` flag.
    RpiTryboot {
        /// Debian package with start4.elf, fixup4.dat and friends.
        firmware_package: &'static str,
        /// Device tree blobs copied from the kernel package (`usr/lib/linux-image-*/<path>`).
        dtbs: &'static [&'static str],
    },
}

/// How an emulated board is started by the QEMU harness.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QemuProfile {
    /// The `qemu-system-*` binary.
    pub binary: &'static str,
    /// `-machine` argument.
    pub machine: &'static str,
    /// `-cpu` argument.
    pub cpu: &'static str,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Read-only UEFI code volume, from the firmware package installed on the host.
    pub firmware_code: &'static str,
    /// UEFI variable store template; the harness copies it per run so variables persist across
    /// reboots of one machine but never touch the host's template.
    pub firmware_vars: &'static str,
    /// Debian package that provides the two firmware files.
    pub firmware_package: &'static str,
    /// Devices besides the disk and the network card, as `-device` values: the watchdog and the
    /// socket a removable disk is plugged into while the machine runs.
    pub devices: &'static [&'static str],
    /// How the harness plugs a removable disk (the "USB stick" an update arrives on) into the
    /// running machine.
    pub removable: RemovableDisk,
}

/// Where a hot-plugged removable disk goes on an emulated board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RemovableDisk {
    /// A USB mass-storage device (QEMU `usb-storage`) on a USB bus that is there from power-on,
    /// as a real stick in a real port.
    UsbStorage {
        /// The QEMU bus name: `<controller id>.0`.
        bus: &'static str,
    },
    /// A virtio-blk disk hot-plugged into an empty PCIe root port, for kernels without USB
    /// storage. The guest sees a new `vd*` disk; PCIe hot-plug (`pciehp`) must be in the kernel.
    VirtioBlkHotplug {
        /// The root port's `id`; it is also the bus name.
        root_port: &'static str,
    },
}

/// A supported machine.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Board {
    pub name: &'static str,
    pub arch: Arch,
    /// Debian package naming the kernel. Usually a metapackage that the image build resolves to
    /// the versioned `linux-image-<abi>-<flavour>` package, recorded in image.json.
    pub kernel_package: &'static str,
    pub boot: BootScheme,
    /// Serial console device the kernel and init log to.
    pub console: &'static str,
    /// Extra kernel command-line arguments for this board.
    pub kernel_args: &'static [&'static str],
    /// The watchdog's driver (and anything else it needs), by module name: init loads these
    /// first of all and starts the watchdog before it does anything else.
    pub watchdog_modules: &'static [&'static str],
    /// Kernel modules init loads before looking for the disk, by module name: only what it takes
    /// to mount the root and the bootloader's partition before `ready`. Their dependencies are
    /// resolved at image build time; modules the kernel has built in are skipped.
    pub modules: &'static [&'static str],
    /// Kernel modules stage 2 loads from the root right after `ready` (the rest of the machine:
    /// STATE and DATA, the TPM, the network, input, USB sticks). cairnd, started before
    /// `ready`, waits for them before it touches storage (init/src/late.rs).
    pub late_modules: &'static [&'static str],
    /// The kernel modules containers need, loaded from the root after `ready`; empty on a board
    /// that carries no containers extension. Those the kernel lacks are named at boot.
    pub container_modules: &'static [&'static str],
    pub layout: Layout,
    pub qemu: Option<QemuProfile>,
}

const QEMU_LAYOUT: Layout = Layout {
    esp_mib: 128,
    boot_slot_mib: 0,
    root_mib: 128,
    state_mib: 64,
    data_mib: 64,
};

/// What containerd, runc, the CNI plugins (bridge, portmap, firewall) and k3s's flannel need
/// from the kernel, as Debian's kernels name the modules: overlay for image layers, bridge and
/// veth for pod networks, br_netfilter so bridged traffic passes iptables, vxlan for flannel,
/// conntrack and NAT, nf_tables with the xtables compatibility layer that iptables-nft uses for
/// its matches and targets, and the legacy NAT tables some CNI versions still probe. crc32c comes
/// first: libcrc32c (under nf_conntrack) asks the crypto API for it, and without modprobe the
/// kernel cannot load it on demand (a soft dependency, not in `depends`).
pub const CONTAINER_MODULES: &[&str] = &[
    "crc32c_generic",
    "overlay",
    "bridge",
    "br_netfilter",
    "veth",
    "vxlan",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_compat",
    "nft_ct",
    "nft_masq",
    "nft_nat",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_comment",
    "xt_mark",
    "xt_multiport",
    "xt_nat",
    "iptable_nat",
    "iptable_filter",
    "ip6table_nat",
    "ip6table_filter",
];

/// Every board Cairn builds images for.
pub const BOARDS: &[Board] = &[
    Board {
        name: "qemu-aarch64",
        arch: Arch::Aarch64,
        kernel_package: "linux-image-cloud-arm64",
        boot: BootScheme::SystemdBoot {
            package: "systemd-boot-efi",
        },
        console: "ttyAMA0",
        // Under TCG, init's concurrent module loading measured slower than one at a time.
        kernel_args: &["cairn.module_workers=1"],
        // This kernel has no USB and no driver for any watchdog QEMU's virt machine offers, so
        // softdog is the watchdog (a kernel timer: it catches a hung init or cairnd, not a hung
        // kernel; softlockup_panic and friends on the command line cover what they can of that).
        watchdog_modules: &["softdog"],
        // evdev exposes the ACPI power button (built into this kernel) to init as /dev/input/event*.
        // A hot-plugged stick is a virtio-blk disk: virtio_blk is here anyway and pciehp is built in.
        modules: &[
            "virtio_pci",
            "virtio_blk",
            "dm_mod",
            "dm_verity",
            "squashfs",
            "vfat",
            "nls_cp437",
            "nls_ascii",
        ],
        late_modules: &[
            // STATE and DATA are ext4 (with jbd2, mbcache and crc16 from modules.dep); its
            // metadata checksums ask the crypto API for crc32c, which without modprobe must be
            // loaded first.
            "crc32c_generic",
            "ext4",
            "evdev",
            // Networking: the NIC and 802.1Q for VLAN sub-interfaces.
            "virtio_net",
            "8021q",
            // Encrypted STATE and DATA: dm-crypt with aes-xts (xts over ecb(aes); the kernel
            // cannot load the templates itself: there is no modprobe), and the TIS driver for
            // the machine's tpm-tis-device (a module in this kernel).
            "dm_crypt",
            "ecb",
            "xts",
            "tpm_tis",
            // The firmware's variables (efivarfs), where cairnd reads whether Secure Boot is on.
            "efivarfs",
        ],
        container_modules: CONTAINER_MODULES,
        layout: QEMU_LAYOUT,
        qemu: Some(QemuProfile {
            binary: "qemu-system-aarch64",
            machine: "virt",
            cpu: "cortex-a57",
            memory_mib: 512,
            cpus: 2,
            firmware_code: "/usr/share/AAVMF/AAVMF_CODE.fd",
            firmware_vars: "/usr/share/AAVMF/AAVMF_VARS.fd",
            firmware_package: "qemu-efi-aarch64",
            // PCIe devices cannot be hot-plugged into the root complex itself: the stick needs
            // an empty root port from power-on, which the firmware gives bus numbers and windows.
            devices: &["pcie-root-port,id=hotplug0,chassis=1"],
            removable: RemovableDisk::VirtioBlkHotplug {
                root_port: "hotplug0",
            },
        }),
    },
    Board {
        name: "qemu-x86_64",
        arch: Arch::X86_64,
        kernel_package: "linux-image-amd64",
        boot: BootScheme::SystemdBoot {
            package: "systemd-boot-efi",
        },
        console: "ttyS0",
        kernel_args: &["cairn.module_workers=1"],
        // i6300esb drives the machine's watchdog (QEMU's `-device i6300esb`), a hardware timer
        // that resets the machine however it hangs.
        watchdog_modules: &["i6300esb"],
        // `button` is the ACPI power button driver, a module in this kernel; evdev exposes it to init.
        // xhci_pci, usb_storage and sd_mod make a USB stick plugged in later a disk with partitions
        // (they pull in usbcore, scsi_mod and t10-pi).
        modules: &[
            "virtio_pci",
            "virtio_blk",
            "dm_mod",
            "dm_verity",
            "squashfs",
            "vfat",
            "nls_cp437",
            "nls_ascii",
        ],
        late_modules: &[
            // STATE and DATA are ext4 (with jbd2, mbcache and crc16 from modules.dep); its
            // metadata checksums ask the crypto API for crc32c, which without modprobe must be
            // loaded first.
            "crc32c_generic",
            "ext4",
            "button",
            "evdev",
            "xhci_pci",
            "usb_storage",
            "sd_mod",
            // Networking: the NIC and 802.1Q for VLAN sub-interfaces.
            "virtio_net",
            "8021q",
            // Encrypted STATE and DATA: dm-crypt with aes-xts (xts over ecb(aes); no modprobe to
            // load the templates on demand). tpm_tis is built into this kernel.
            "dm_crypt",
            "ecb",
            "xts",
            // The firmware's variables (efivarfs), where cairnd reads whether Secure Boot is on.
            "efivarfs",
        ],
        container_modules: CONTAINER_MODULES,
        layout: QEMU_LAYOUT,
        qemu: Some(QemuProfile {
            binary: "qemu-system-x86_64",
            machine: "q35",
            cpu: "max",
            memory_mib: 512,
            cpus: 2,
            firmware_code: "/usr/share/OVMF/OVMF_CODE_4M.fd",
            firmware_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
            firmware_package: "ovmf",
            // The Intel 6300ESB watchdog (PCI) and an xHCI controller with free ports.
            devices: &["i6300esb", "qemu-xhci,id=xhci"],
            removable: RemovableDisk::UsbStorage { bus: "xhci.0" },
        }),
    },
    Board {
        name: "rpi4",
        arch: Arch::Aarch64,
        kernel_package: "linux-image-arm64",
        boot: BootScheme::RpiTryboot {
            firmware_package: "raspi-firmware",
            dtbs: &[
                "broadcom/bcm2711-rpi-4-b.dtb",
                "broadcom/bcm2711-rpi-400.dtb",
                "broadcom/bcm2711-rpi-cm4-io.dtb",
            ],
        },
        // The mini UART on GPIO 14/15 (enable_uart=1 in config.txt).
        console: "ttyS1,115200",
        kernel_args: &[],
        // bcm2835_wdt is the SoC's watchdog and also its restart handler: without it `reboot` (and
        // so a trial boot) cannot reset the board.
        watchdog_modules: &["bcm2835_wdt"],
        // The SD card sits behind the Arasan/iProc SDHCI controller; its 1.8 V switch goes through
        // the firmware's GPIO expander.
        modules: &[
            "gpio_raspberrypi_exp",
            "sdhci_iproc",
            "mmc_block",
            "dm_mod",
            "dm_verity",
            "squashfs",
            "vfat",
            "nls_cp437",
            "nls_ascii",
        ],
        late_modules: &[
            // STATE and DATA are ext4 (with jbd2, mbcache and crc16 from modules.dep); its
            // metadata checksums ask the crypto API for crc32c, which without modprobe must be
            // loaded first.
            "crc32c_generic",
            "ext4",
            "evdev",
            // Networking: GENET, its MDIO bus and PHY (soft dependencies, so named here), and
            // 802.1Q for VLAN sub-interfaces.
            "genet",
            "mdio_bcm_unimac",
            "broadcom",
            "8021q",
        ],
        container_modules: CONTAINER_MODULES,
        layout: Layout {
            esp_mib: 64,
            boot_slot_mib: 128,
            root_mib: 128,
            state_mib: 64,
            data_mib: 64,
        },
        qemu: None,
    },
];

/// Looks a board up by name.
pub fn find(name: &str) -> Result<&'static Board, UnknownBoard> {
    BOARDS
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| UnknownBoard {
            name: name.to_string(),
            known: BOARDS.iter().map(|b| b.name).collect::<Vec<_>>().join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_known_boards() {
        assert_eq!(find("qemu-aarch64").unwrap().arch, Arch::Aarch64);
        assert_eq!(find("qemu-x86_64").unwrap().arch, Arch::X86_64);
    }

    #[test]
    fn unknown_board_lists_the_known_ones() {
        let err = find("pi5").unwrap_err().to_string();
        assert!(err.contains("pi5"), "{err}");
        assert!(
            err.contains("qemu-aarch64") && err.contains("qemu-x86_64"),
            "{err}"
        );
    }

    #[test]
    fn removable_disks_plug_into_a_declared_device() {
        for board in BOARDS {
            let Some(q) = board.qemu else { continue };
            let id = match q.removable {
                RemovableDisk::UsbStorage { bus } => bus.strip_suffix(".0").unwrap(),
                RemovableDisk::VirtioBlkHotplug { root_port } => root_port,
            };
            assert!(
                q.devices
                    .iter()
                    .any(|d| d.split(',').any(|p| p == format!("id={id}"))),
                "{}: no device with id={id} in {:?}",
                board.name,
                q.devices
            );
        }
    }

    #[test]
    fn board_names_are_unique() {
        for (i, a) in BOARDS.iter().enumerate() {
            assert!(
                BOARDS[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
        }
    }
}
