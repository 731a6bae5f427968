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
pub mod fs;
pub mod model;
pub mod sdboot;
pub mod slot;
pub mod tryboot;
pub mod uboot;

pub use error::Error;
pub use model::{Bootloader, SlotInfo, Status};
pub use slot::Slot;
