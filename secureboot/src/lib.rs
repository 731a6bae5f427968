//! UEFI Secure Boot on the host side: unified kernel images (UKIs) made from systemd's stub,
//! Authenticode signatures on them and on systemd-boot, and the keys (PK, KEK, db, and the
//! PCR-signing key) that `cairnctl keys gen-secureboot` makes.
//!
//! Nothing here runs on the device: the device only ever reads what the firmware says about
//! Secure Boot. [`pe`] owns the PE/COFF format, [`uki`] what goes into a UKI, [`authenticode`]
//! the signature, [`keys`] the key files and [`siglist`] the `EFI_SIGNATURE_LIST`s the firmware
//! keeps the enrolled certificates in.

pub mod authenticode;
mod error;
pub mod keys;
pub mod pe;
pub mod siglist;
pub mod uki;

pub use authenticode::Signer;
pub use error::{Error, Result};
pub use pe::Pe;
