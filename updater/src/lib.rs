//! The updater: everything between "a bundle arrived" and "the new slot is committed or rolled
//! back", as a library the device daemon (`cairnd`) drives and host tests run against files.
//!
//! - [`install`]: verify a bundle, check it against the device, and stream it into the inactive
//!   slot (root partition, kernel, initramfs, boot entry), ending with a trial boot armed.
//! - [`stream`]: the write path: chunks verified on one thread, written with large writes on
//!   another, read back and hashed on a third, in constant memory.
//! - [`state`]: what the updater keeps on STATE: the anti-rollback floor and the record of the
//!   last trial.
//! - [`health`]: the health window after a trial boot: checks retried until all pass together
//!   (commit) or the window closes (roll back).
//! - [`bootspec`]: the bundle's `boot.json`: how to boot the root it carries (defined in
//!   `cairn_facts`, which the image builder shares).

pub mod error;
pub mod health;
pub mod install;
pub mod state;
pub mod stream;

pub use cairn_facts::bootspec;
pub use error::{Error, Result};
