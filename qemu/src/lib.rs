//! The QEMU harness: boots Cairn disk images under TCG for tests and `cairnctl`.
//!
//! A test builds [`LaunchOptions`] for a board and a built `disk.img`, calls [`Machine::launch`],
//! then waits for console lines ([`Machine::wait_for_line`]) and drives the machine over QMP
//! ([`Machine::powerdown`], [`Machine::quit`]). The image is never written (a qcow2 overlay takes
//! the writes) and the QEMU process never outlives its [`Machine`]. A running machine can have a
//! removable disk plugged in and out ([`Machine::attach_stick`], [`Machine::detach_stick`]), and
//! tests can wait for QMP events such as `WATCHDOG` or `RESET` ([`Machine::wait_for_event`]).

mod args;
mod console;
mod disk;
mod error;
mod machine;
mod net;
mod options;
mod qmp;
mod stick;
mod timeouts;

pub use args::qemu_args;
pub use console::MAX_LINE_BYTES;
pub use error::{Error, Result, SETUP_HINT};
pub use machine::{LineMatch, Machine, Shutdown};
pub use net::{forward_answer, free_local_port, ForwardAnswer};
pub use options::{LaunchOptions, PortForward, WorkPaths};
pub use stick::StickReads;
pub use timeouts::{Timeouts, TIMEOUT_SCALE_ENV};
