//! The PCR 11 value systemd's UKI stub (systemd 252, Debian's `systemd-boot-efi`) leaves behind,
//! computed from the parts of a unified kernel image.
//!
//! The stub walks the UKI's PE sections in a fixed order (`.linux`, `.osrel`, `.cmdline`,
//! `.initrd`, `.splash`, `.dtb`, `.pcrsig`, `.pcrpkey`; systemd 253 added `.uname` after
//! `.dtb`, 252 does not know it) and, for each one present except `.pcrsig`, extends PCR 11
//! twice: with the SHA-256 of the section's name including its terminating NUL, then with the
//! SHA-256 of the section's contents (its `VirtualSize` bytes). PCR 11 starts at zero. Later
//! boot phases (systemd-pcrphase: `enter-initrd`, `leave-initrd`, `sysinit`, `ready`) extend it
//! with the SHA-256 of each word, without a NUL. This is what `systemd-measure calculate`
//! prints; `tests/measure.rs` compares both on the images' real kernels and initramfs.

use sha2::{Digest, Sha256};

/// The phases `systemd-measure` signs by default, each extending the one before.
pub const SYSTEMD_PHASES: [&str; 4] = ["enter-initrd", "leave-initrd", "sysinit", "ready"];

/// The sections of a UKI that the stub measures, as the bytes the image carries in each.
#[derive(Debug, Clone, Copy, Default)]
pub struct UkiParts<'a> {
    pub linux: &'a [u8],
    pub osrel: Option<&'a [u8]>,
    pub cmdline: Option<&'a [u8]>,
    pub initrd: Option<&'a [u8]>,
    pub splash: Option<&'a [u8]>,
    pub dtb: Option<&'a [u8]>,
    /// The PEM public key the image carries for PCR signatures.
    pub pcrpkey: Option<&'a [u8]>,
}

impl<'a> UkiParts<'a> {
    /// The measured sections, in the stub's order, as (name, contents).
    pub fn sections(&self) -> Vec<(&'static str, &'a [u8])> {
        [
            (".linux", Some(self.linux)),
            (".osrel", self.osrel),
            (".cmdline", self.cmdline),
            (".initrd", self.initrd),
            (".splash", self.splash),
            (".dtb", self.dtb),
            (".pcrpkey", self.pcrpkey),
        ]
        .into_iter()
        .filter_map(|(name, data)| data.map(|d| (name, d)))
        .collect()
    }
}

/// `PCR = SHA-256(PCR || SHA-256(data))`.
pub fn extend(pcr: &mut [u8; 32], data: &[u8]) {
    let measured = Sha256::digest(data);
    *pcr = Sha256::new()
        .chain_update(*pcr)
        .chain_update(measured)
        .finalize()
        .into();
}

/// PCR 11 right after the stub has measured `parts`, before any boot phase: the value Cairn's
/// unlock sees (nothing on the device extends PCR 11 before it).
pub fn predict_pcr11(parts: &UkiParts<'_>) -> [u8; 32] {
    let mut pcr = [0u8; 32];
    for (name, data) in parts.sections() {
        let mut named = name.as_bytes().to_vec();
        named.push(0);
        extend(&mut pcr, &named);
        extend(&mut pcr, data);
    }
    pcr
}

/// PCR 11 after `phases` were measured on top of `pcr11` (as systemd-pcrphase does).
pub fn after_phases(pcr11: &[u8; 32], phases: &[&str]) -> [u8; 32] {
    let mut pcr = *pcr11;
    for phase in phases {
        extend(&mut pcr, phase.as_bytes());
    }
    pcr
}

/// The values `systemd-measure calculate` prints by default: one per phase path
/// (`enter-initrd`, `enter-initrd:leave-initrd`, …), each with its PCR 11 value.
pub fn systemd_phase_paths(pcr11: &[u8; 32]) -> Vec<(String, [u8; 32])> {
    (1..=SYSTEMD_PHASES.len())
        .map(|n| {
            let path = &SYSTEMD_PHASES[..n];
            (path.join(":"), after_phases(pcr11, path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sections spelled out extend by extend.
    #[test]
    fn sections_are_measured_name_then_contents_in_the_stubs_order() {
        let parts = UkiParts {
            linux: b"kernel",
            cmdline: Some(b"ro"),
            ..Default::default()
        };
        let mut pcr = [0u8; 32];
        for data in [&b".linux\0"[..], b"kernel", b".cmdline\0", b"ro"] {
            let m: [u8; 32] = Sha256::digest(data).into();
            let mut cat = pcr.to_vec();
            cat.extend_from_slice(&m);
            pcr = Sha256::digest(&cat).into();
        }
        assert_eq!(predict_pcr11(&parts), pcr);
        // The order is the stub's, not the order of the fields set.
        let names: Vec<_> = UkiParts {
            linux: b"k",
            dtb: Some(b"d"),
            osrel: Some(b"o"),
            pcrpkey: Some(b"p"),
            ..Default::default()
        }
        .sections()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
        assert_eq!(names, [".linux", ".osrel", ".dtb", ".pcrpkey"]);
    }
}
