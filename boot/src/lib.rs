//! The A/B slot model and the bootloaders' native formats for it.
//!
//! Cairn keeps slot state in the bootloader's own format so that the real bootloader acts on it
//! without Cairn running. This crate owns those formats; for now, systemd-boot's Boot Loader
//! Specification (Type #1) entries with boot counting in their file names.

pub mod bls;
mod error;
pub mod slot;

pub use error::Error;
pub use slot::Slot;
