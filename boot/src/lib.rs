//! The A/B slot model and the bootloaders' native formats for it.
//!
//! Cairn keeps slot state in the bootloader's own format so that the real bootloader acts on it
//! without Cairn running. This crate owns those formats: systemd-boot's Boot Loader
//! Specification (Type #1) entries with boot counting in their file names, and U-Boot's redundant
//! environment with RAUC-style slot variables.

pub mod bls;
mod error;
pub mod slot;
pub mod uboot;

pub use error::Error;
pub use slot::Slot;
