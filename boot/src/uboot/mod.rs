//! U-Boot: its environment block and the A/B slot state Cairn keeps in it.
//!
//! U-Boot chooses the slot itself, in a boot script (`boot/uboot/boot.cmd`, shipped here as
//! [`BOOT_SCRIPT`]) that reads RAUC-style variables from the environment, counts tries down and
//! saves before booting. Cairn's userspace changes the same variables through [`mod@env`], which
//! reads and writes the redundant environment exactly as U-Boot and `fw_setenv` do, and
//! [`state`], which turns "try slot B", "B is good", "B is bad" into single atomic writes;
//! [`backend`] offers that as a [`crate::Bootloader`].

pub mod backend;
pub mod env;
pub mod state;

/// Source of the boot script; compile it with
/// `mkimage -A arm64 -T script -C none -d boot.cmd boot.scr`.
pub const BOOT_SCRIPT: &str = include_str!("../../uboot/boot.cmd");
