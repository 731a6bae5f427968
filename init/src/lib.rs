//! PID 1 of a Cairn device: from the kernel's hand-off to a supervised, shut-down-able system.
//!
//! The same binary runs twice as PID 1. **Stage 1** runs from the initramfs (marker file
//! `/etc/cairn/initramfs`): API filesystems, kernel modules, find `ROOT-<slot>`, put a dm-verity
//! device over it ([`verity`]), switch_root into that device, exec `/sbin/init`. **Stage 2** runs from the read-only root: `/tmp`, the ready line, then the
//! [`supervisor`] until a signal or the power key asks for a clean [`shutdown`]. Errors and panics
//! never exit: they log one line and reboot after `cairn.fatal_delay` seconds ([`entry`]).
//!
//! Every syscall goes through [`sys::Syscalls`] and every file path through [`paths::Paths`], so
//! the logic is unit-tested against a recording fake on a tempdir, without root.

pub mod bootstate;
pub mod cmdline;
pub mod containers;
pub mod entry;
pub mod error;
pub mod extension;
pub mod input;
pub mod late;
pub mod log;
pub mod modules;
pub mod mounts;
pub mod partition;
pub mod paths;
pub mod pcrsig;
pub mod services;
pub mod shutdown;
pub mod stage1;
pub mod stage2;
pub mod supervisor;
pub mod switch_root;
pub mod sys;
pub mod trim;
pub mod verity;

pub use entry::run;
pub use error::{Error, Result};
