//! The QEMU harness: boots Cairn disk images under TCG for tests and `cairnctl`.
//!
//! A test builds [`LaunchOptions`] for a board and a built `disk.img`, calls [`Machine::launch`],
//! then waits for console lines ([`Machine::wait_for_line`]) and drives the machine over QMP
//! ([`Machine::powerdown`], [`Machine::quit`]). The image is never written (a qcow2 overlay takes
//! the writes) and the QEMU process never outlives its [`Machine`]. A running machine can have a
//! removable disk plugged in and out ([`Machine::attach_stick`], [`Machine::detach_stick`]), and
//! tests can wait for QMP events such as `WATCHDOG` or `RESET` ([`Machine::wait_for_event`]).
//!
//! A machine can have a TPM 2.0: start a [`Swtpm`] on a state directory and pass its socket as
//! [`LaunchOptions::tpm`]. [`efivars::add_dbx_hash`] changes what the firmware measures into
//! PCR 7 on the next boot, as a Secure Boot configuration update would; [`pcr_extends`] reads
//! back what was measured.
//!
//! A Raspberry Pi 4 image runs under QEMU's `raspi4b` machine through [`rpi::Pi4`], which plays
//! the Pi firmware's part (autoboot.txt, tryboot) at each power-on.

mod args;
mod console;
mod disk;
pub mod efivars;
mod error;
mod machine;
mod net;
mod options;
mod qmp;
pub mod rpi;
mod stick;
mod timeouts;
mod tpm;
pub mod writelog;

pub use args::qemu_args;
pub use console::MAX_LINE_BYTES;
pub use error::{Error, Result, SETUP_HINT, SWTPM_HINT};
pub use machine::{LineMatch, Machine, Shutdown};
pub use net::{forward_answer, free_local_port, ForwardAnswer};
pub use options::{LaunchOptions, PortForward, WorkPaths};
pub use stick::StickReads;
pub use timeouts::{Timeouts, TIMEOUT_SCALE_ENV};
pub use tpm::{pcr_extends, PcrExtend, Swtpm, SWTPM_LOG_COMMANDS, TPM_ALG_SHA256};

/// The machine profile and extra arguments for a board's Secure Boot firmware.
///
/// - qemu-x86_64: Debian's `OVMF_CODE_4M.secboot.fd`, whose variable store is only writable
///   from System Management Mode, so the machine is `q35,smm=on` and the flash is marked
///   secure (`-global driver=cfi.pflash01,property=secure,value=on`). The variable template
///   stays `OVMF_VARS_4M.fd`; the keys are enrolled into the run's copy.
/// - qemu-aarch64: `AAVMF_CODE.fd` as always (its one build turns Secure Boot on once a PK is
///   enrolled), with `AAVMF_VARS.snakeoil.fd` as the variable template: Debian's empty
///   `AAVMF_VARS.fd` is blank flash that only the firmware's first boot formats, while the
///   snakeoil one is formatted; its PK, KEK and db are replaced by the enrollment.
pub fn secure_boot_profile(
    board: &'static str,
    profile: &cairn_board::QemuProfile,
) -> Result<(cairn_board::QemuProfile, Vec<String>)> {
    match profile.machine {
        "q35" => Ok((
            cairn_board::QemuProfile {
                machine: "q35,smm=on",
                firmware_code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
                ..*profile
            },
            vec![
                "-global".into(),
                "driver=cfi.pflash01,property=secure,value=on".into(),
            ],
        )),
        // AAVMF's one build enforces Secure Boot once a PK is enrolled. Its empty template is
        // blank flash until the firmware's first boot formats it; the snakeoil template is
        // formatted (with Debian's test keys, which the enrollment replaces).
        "virt" => Ok((
            cairn_board::QemuProfile {
                firmware_vars: "/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd",
                ..*profile
            },
            Vec::new(),
        )),
        _ => Err(Error::NoSecureBoot { board }),
    }
}
