//! The A/B slot model every bootloader backend speaks: what the device asks of its bootloader
//! and what it learns from it, independent of where the bootloader keeps its state.
//!
//! An update goes: write the inactive slot, [`Bootloader::set_trial`] it, reboot. The
//! bootloader boots the slot a limited number of times; if the new system marks itself good
//! ([`Bootloader::mark_good`]) it becomes the committed slot, otherwise the bootloader falls back
//! to the other slot on its own, without Cairn running. [`Bootloader::mark_bad`] takes a slot
//! out of automatic booting until the next trial.
//!
//! Backends: [`crate::sdboot::SdBoot`] (systemd-boot on UEFI), [`crate::tryboot::Tryboot`]
//! (the Raspberry Pi firmware's tryboot) and [`crate::uboot::backend::UBoot`] (U-Boot with
//! Cairn's boot script).

use crate::{Error, Slot};

/// One slot as the bootloader's state describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: Slot,
    /// The bootloader may pick this slot by itself on an ordinary reboot.
    pub bootable: bool,
    /// Higher is preferred. Only the comparison between the two slots means anything; the
    /// values are backend-specific.
    pub priority: u32,
    /// Boots left before the bootloader gives up on the slot; `None` when the bootloader does
    /// not count boots of this slot.
    pub tries_left: Option<u32>,
    /// The slot was marked good (or never put on trial) and has not been marked bad since.
    pub successful: bool,
}

/// The bootloader's state as it bears on the two slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The slot this boot came from (`cairn.slot=` on the kernel command line), if known.
    pub running: Option<Slot>,
    /// The running boot is a trial: its slot has not been marked good yet.
    pub trial: bool,
    /// The slot an ordinary reboot starts, according to the state on disk.
    pub next: Option<Slot>,
    /// Indexed by [`Slot::index`].
    pub slots: [SlotInfo; 2],
}

impl Status {
    pub fn slot(&self, slot: Slot) -> &SlotInfo {
        &self.slots[slot.index()]
    }
}

/// A bootloader's A/B state, changed only through these operations, each of which leaves the
/// state bootable even if the power fails in the middle of it.
pub trait Bootloader {
    /// Reads the state again from where the bootloader keeps it.
    fn status(&mut self) -> Result<Status, Error>;

    /// Boots `slot` next, at most `tries` times (backends may give fewer; see theirs), after
    /// which the bootloader returns to the other slot by itself unless `slot` was marked good.
    fn set_trial(&mut self, slot: Slot, tries: u32) -> Result<(), Error>;

    /// `slot` works: boot it from now on, without counting.
    fn mark_good(&mut self, slot: Slot) -> Result<(), Error>;

    /// Never boot `slot` automatically again, until the next [`Bootloader::set_trial`] of it.
    fn mark_bad(&mut self, slot: Slot) -> Result<(), Error>;

    /// The argument the next reboot must pass to reboot(2) (`LINUX_REBOOT_CMD_RESTART2`) for
    /// a pending trial to happen, if any. Only the Raspberry Pi's tryboot needs one.
    fn reboot_argument(&self) -> Option<&'static str> {
        None
    }
}
