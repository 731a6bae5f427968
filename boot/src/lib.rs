//! The A/B slot model and the bootloaders' native formats for it.
//!
//! Cairn keeps slot state in the bootloader's own format so that the real bootloader acts on it
//! without Cairn running. [`model`] is the vocabulary the rest of Cairn uses (try a slot, mark
//! it good or bad, ask what boots next); each backend maps it onto one bootloader:
//! [`sdboot`] (systemd-boot's Boot Loader Specification entries with boot counting in their
//! file names, on a UEFI ESP), [`tryboot`] (the Raspberry Pi firmware's autoboot.txt and
//! one-shot tryboot flag) and [`uboot`] (U-Boot's redundant environment with RAUC-style slot
//! variables). [`fs`] is the file access the file-based backends share, with a test double
//! that loses power.

pub mod bls;
mod error;
pub mod fat32;
pub mod fs;
pub mod model;
pub mod sdboot;
pub mod slot;
pub mod tryboot;
pub mod uboot;

pub use error::Error;
pub use model::{Bootloader, SlotInfo, Status};
pub use slot::Slot;

#[cfg(test)]
mod tests {
    /// `update.tries` in the machine config is limited so that every backend takes it.
    #[test]
    fn every_backend_takes_the_tries_a_machine_config_may_ask_for() {
        let asked = cairn_facts::config::MAX_TRIES;
        assert_eq!(
            asked,
            crate::sdboot::MAX_TRIES,
            "systemd-boot's is the lowest limit"
        );
        assert!(asked <= crate::uboot::state::MAX_TRIES);
    }
}
