//! A unified kernel image: systemd's stub (`linuxx64.efi.stub`, `linuxaa64.efi.stub` from
//! Debian's `systemd-boot-efi`) with the kernel, initramfs, command line and os-release added as
//! PE sections, so that one file (and one signature) is the whole boot of a slot.
//!
//! Sections, in file order: `.osrel`, `.cmdline`, `.dtb` (when given), then the caller's extra
//! sections (where `.pcrsig` and `.pcrpkey` go), then `.initrd` and `.linux`, each placed by
//! [`Pe::add_sections`]. systemd-stub 252 measures `.linux`, `.osrel`, `.cmdline`, `.initrd`,
//! `.splash` and `.dtb` into PCR 11 in that fixed order whatever the file order, and never
//! measures `.pcrsig`; so the extra sections can be made from a prediction over the others.

use crate::error::Result;
use crate::pe::Pe;

/// What a UKI carries besides the stub.
#[derive(Debug, Clone)]
pub struct UkiParts<'a> {
    /// The `.osrel` text ([`osrel`]).
    pub osrel: String,
    /// The kernel command line, one line without newline.
    pub cmdline: String,
    pub linux: &'a [u8],
    pub initrd: &'a [u8],
    /// A device tree, for boards whose firmware does not provide one.
    pub dtb: Option<&'a [u8]>,
}

/// The os-release text of a Cairn UKI. It names the system and, in `PRETTY_NAME`, the version
/// and slot, but has no `VERSION`, `VERSION_ID`, `IMAGE_VERSION` or `BUILD_ID`: systemd-boot
/// sorts Type #2 entries of one `ID` by that version before their file names, and Cairn's
/// order must come from the file name alone (the generation; docs/boot-slots.md).
pub fn osrel(version: &str, slot: &str) -> String {
    format!("NAME=\"Cairn\"\nID=cairn\nPRETTY_NAME=\"Cairn {version} (slot {slot})\"\n")
}

/// Builds the UKI from the stub, the parts and `extra` sections (name, bytes), unsigned.
pub fn build(stub: Pe, parts: &UkiParts<'_>, extra: &[(&str, &[u8])]) -> Result<Pe> {
    let cmdline = parts.cmdline.as_bytes();
    let mut sections: Vec<(&str, &[u8])> =
        vec![(".osrel", parts.osrel.as_bytes()), (".cmdline", cmdline)];
    if let Some(dtb) = parts.dtb {
        sections.push((".dtb", dtb));
    }
    sections.extend_from_slice(extra);
    sections.push((".initrd", parts.initrd));
    sections.push((".linux", parts.linux));
    stub.add_sections(&sections)
}

/// The command line a UKI carries (its `.cmdline`, trailing NULs and newline dropped).
pub fn cmdline(uki: &Pe) -> Option<String> {
    let data = uki.section_data(".cmdline")?;
    let text = String::from_utf8_lossy(data);
    Some(text.trim_end_matches(['\0', '\n']).to_string())
}
