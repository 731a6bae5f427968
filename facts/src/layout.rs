//! How a Cairn disk is laid out and what one slot is made of, as the image builder writes it,
//! init finds it and the updater fills it (docs/boot-slots.md, docs/bundle-format.md).
//!
//! A slot is one unit: its kernel and initramfs (on the ESP under `EFI/cairn/<slot>/`, or on the
//! slot's BOOT partition on a Raspberry Pi), its root partition, and the root's dm-verity root
//! hash, which travels on the slot's kernel command line ([`cmdline`]). An update bundle fills a
//! slot with payloads of the same names.

/// Largest kernel or initramfs accepted, from an image's ESP or from a bundle.
pub const MAX_BOOT_FILE: u64 = 256 * 1024 * 1024;
/// The kernel: its file name in the slot's boot directory, and its payload name in a bundle.
pub const KERNEL: &str = "vmlinuz";
/// The initramfs: its file name in the slot's boot directory, and its payload name in a bundle.
pub const INITRAMFS: &str = "initramfs.img";
/// The payload name of a slot's unified kernel image in a bundle (`uki-a.efi`, `uki-b.efi`):
/// its command line names the slot, so a bundle carries one per slot and the installer takes
/// the one for the slot it fills.
pub fn uki_payload(slot: &str) -> String {
    format!("uki-{slot}.efi")
}
/// Payload name of the root (squashfs and dm-verity tree) in a bundle. The updater goes by the
/// payload's role; the name is what the image builder gives it. `boot.json` is
/// [`crate::bootspec::PAYLOAD_NAME`].
pub const ROOTFS: &str = "rootfs";

/// GPT partition labels. init and cairnd find partitions by these names, never by number.
pub mod label {
    /// The EFI system partition (FAT32): systemd-boot, each slot's kernel, initramfs and boot
    /// entry.
    pub const ESP: &str = "ESP";
    /// Raspberry Pi: the firmware's FAT partition, with `autoboot.txt`.
    pub const BOOT: &str = "BOOT";
    /// Raspberry Pi: slot A's kernel, DTBs, initramfs, config.txt and cmdline.txt.
    pub const BOOT_A: &str = "BOOT-A";
    /// Raspberry Pi: slot B's, as [`BOOT_A`].
    pub const BOOT_B: &str = "BOOT-B";
    /// Slot A's root: squashfs, then its dm-verity hash tree.
    pub const ROOT_A: &str = "ROOT-A";
    /// Slot B's root, as [`ROOT_A`].
    pub const ROOT_B: &str = "ROOT-B";
    /// Machine config, PKI and updater state; LUKS2 once cairnd has encrypted it.
    pub const STATE: &str = "STATE";
    /// `/var`: containerd, Kubernetes and workload data; LUKS2 once cairnd has encrypted it.
    pub const DATA: &str = "DATA";
}

/// The kernel command-line words that tie a boot to its slot and its root. The image builder and
/// the installer write them; init reads them (init/src/cmdline.rs) to find `ROOT-<slot>` and put
/// dm-verity over it.
pub mod cmdline {
    /// `a` or `b`: the slot this kernel belongs to.
    pub const SLOT: &str = "cairn.slot";
    /// The root's dm-verity root hash, 64 lowercase hex digits.
    pub const ROOTHASH: &str = "cairn.roothash";
    /// Byte offset of the dm-verity superblock in the root partition.
    pub const HASHOFFSET: &str = "cairn.hashoffset";
    /// The keys that belong to a slot rather than to the image: a bundle's `boot.json` may not
    /// set them, and `cairnctl bundle create` strips them from the image's command line.
    pub const SLOT_KEYS: [&str; 3] = [SLOT, ROOTHASH, HASHOFFSET];

    /// The slot's own words: `cairn.slot=b cairn.roothash=… cairn.hashoffset=…`.
    pub fn slot_words(slot: &str, roothash: &str, hash_offset: u64) -> [String; 3] {
        [
            format!("{SLOT}={slot}"),
            format!("{ROOTHASH}={roothash}"),
            format!("{HASHOFFSET}={hash_offset}"),
        ]
    }

    /// The containers extension's dm-verity root hash, 64 lowercase hex digits. The extension's
    /// words belong to the image, not to the slot: both slots carry the same extension at the
    /// same place, so they travel in a bundle's `boot.json` like any other option.
    pub const EXT_ROOTHASH: &str = "cairn.ext.roothash";
    /// Byte offset of the extension (its squashfs) in the root partition, after the root's
    /// hash tree; a multiple of 4096.
    pub const EXT_OFFSET: &str = "cairn.ext.offset";
    /// Byte offset of the extension's verity superblock from the start of the extension.
    pub const EXT_HASHOFFSET: &str = "cairn.ext.hashoffset";

    /// The extension's words: `cairn.ext.roothash=… cairn.ext.offset=… cairn.ext.hashoffset=…`.
    pub fn ext_words(roothash: &str, offset: u64, hash_offset: u64) -> [String; 3] {
        [
            format!("{EXT_ROOTHASH}={roothash}"),
            format!("{EXT_OFFSET}={offset}"),
            format!("{EXT_HASHOFFSET}={hash_offset}"),
        ]
    }

    /// Whether `word` is one of the slot's own (`cairn.slot=…` and the like).
    pub fn is_slot_word(word: &str) -> bool {
        word.split_once('=')
            .is_some_and(|(key, _)| SLOT_KEYS.contains(&key))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn slot_words_are_what_init_reads() {
            assert_eq!(
                slot_words("b", "ab", 8192),
                ["cairn.slot=b", "cairn.roothash=ab", "cairn.hashoffset=8192"]
            );
            assert!(is_slot_word("cairn.slot=a"));
            assert!(is_slot_word("cairn.hashoffset="));
            assert!(!is_slot_word("cairn.slot"));
            assert!(!is_slot_word("cairn.slots=a"));
            assert!(!is_slot_word("console=cairn.slot=a"));
        }
    }
}
