//! Device-mapper from Rust: the ioctl interface (`linux/dm-ioctl.h`, version 4) without
//! libdevmapper, and the sequence that turns a table into a live `/dev/dm-N`.
//!
//! Two parts, split where the kernel is: [`codec`] builds request buffers and reads the
//! kernel's replies (pure, exhaustively unit-tested), and [`control`] sends them through a
//! [`Transport`] (the real `/dev/mapper/control`, or a test's fake) and checks each answer.
//! init uses it for the dm-verity root, cairnd (through `cairn-luks`) for dm-crypt volumes; the
//! callers own their tables, this crate only their encoding and delivery.

pub mod codec;
pub mod control;
mod error;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use codec::{
    Command, DevT, Flags, Reply, Request, Target, HEADER_SIZE, MAX_NAME_LEN, MAX_PARAMS_LEN,
    MAX_TARGETS, MAX_TYPE_LEN,
};
pub use control::{activate, remove, ActivateError, Control, Device, Transport, CONTROL};
pub use error::{Error, Result};
