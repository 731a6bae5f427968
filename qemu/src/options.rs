//! What a test asks for when it starts a machine, and where the run's files live.
//!
//! A run owns one work directory: the copy-on-write overlay over the built disk image, the copy of
//! the UEFI variable store, the console log, QEMU's stderr and the QMP socket. Keeping them together
//! is what lets [`LaunchOptions::reuse_disk`] boot "the same machine" again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_board::Board;

use crate::timeouts::Timeouts;

/// A TCP port forward from `127.0.0.1:host` to the guest's `guest` port (user-mode networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
    /// The guest address QEMU connects to; `None` is the first address its DHCP server hands
    /// out (10.0.2.15). A guest with a static address needs it named here.
    pub guest_addr: Option<std::net::Ipv4Addr>,
}

impl PortForward {
    /// A forward to the guest's DHCP address.
    pub fn new(host: u16, guest: u16) -> Self {
        PortForward {
            host,
            guest,
            guest_addr: None,
        }
    }
}

/// How to start one machine.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The board to emulate; it must have a QEMU profile.
    pub board: &'static Board,
    /// The raw disk image built elsewhere. It is only ever a read-only backing file.
    pub disk_image: PathBuf,
    /// Directory for this machine's overlay, variable store, console log and QMP socket; created
    /// if missing.
    pub work_dir: PathBuf,
    pub port_forwards: Vec<PortForward>,
    /// Also print each console line (escape sequences removed) to our stderr. It goes through
    /// `eprintln!`, so the test harness shows it for failing tests or with `--nocapture`.
    pub echo_console: bool,
    /// Keep the overlay and variable store of an earlier launch in the same `work_dir`, so a test
    /// sees the disk and UEFI variables as the previous boot left them.
    pub reuse_disk: bool,
    /// Boot `disk_image` itself, read-write, instead of a qcow2 overlay over it. For tests that
    /// change the disk between boots with host-side code; the caller owns the file (a private
    /// copy), and nothing may open it while the machine runs.
    pub writable_image: bool,
    /// Appended verbatim to the QEMU command line.
    pub extra_args: Vec<String>,
    /// Run this program instead of the board's QEMU binary, with the same arguments. For tests of
    /// the harness itself; the firmware files are then not required to exist.
    pub binary_override: Option<PathBuf>,
    /// Timeout scaling; `None` reads `CAIRN_QEMU_TIMEOUT_SCALE`.
    pub timeouts: Option<Timeouts>,
    /// How long QMP may take to come up after launch, before scaling.
    pub qmp_connect_timeout: Duration,
    /// A software TPM's control socket ([`crate::Swtpm::socket_path`]): the machine gets a TPM
    /// 2.0 behind the board's TIS interface, which the firmware measures the boot into.
    pub tpm: Option<PathBuf>,
    /// With `writable_image`: every write, flush and discard that reaches the disk is also
    /// recorded in this file (QEMU's blklogwrites driver; [`crate::writelog`] reads it back),
    /// and the disk offers the guest neither discard nor write-zeroes, so that each entry
    /// carries the bytes it wrote.
    pub write_log: Option<PathBuf>,
    /// A Secure Boot key folder (`cairnctl keys gen-secureboot`): the machine starts the
    /// firmware's Secure Boot build ([`crate::secure_boot_profile`]) with `PK.crt`, `KEK.crt`
    /// and `db.crt` enrolled in a fresh variable store, so it boots only what `db.key` signed.
    pub secure_boot: Option<PathBuf>,
}

impl LaunchOptions {
    /// Options with no port forwards, no echo, a fresh disk, no TPM and no extra arguments.
    pub fn new(
        board: &'static Board,
        disk_image: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        LaunchOptions {
            board,
            disk_image: disk_image.into(),
            work_dir: work_dir.into(),
            port_forwards: Vec::new(),
            echo_console: false,
            reuse_disk: false,
            writable_image: false,
            extra_args: Vec::new(),
            binary_override: None,
            timeouts: None,
            qmp_connect_timeout: Duration::from_secs(10),
            tpm: None,
            write_log: None,
            secure_boot: None,
        }
    }
}

/// The files of one run inside its work directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkPaths {
    pub work_dir: PathBuf,
    pub overlay: PathBuf,
    pub vars: PathBuf,
    pub console_log: PathBuf,
    pub stderr_log: PathBuf,
    pub qmp_socket: PathBuf,
}

impl WorkPaths {
    pub fn new(work_dir: &Path) -> Self {
        WorkPaths {
            work_dir: work_dir.to_path_buf(),
            overlay: work_dir.join("overlay.qcow2"),
            vars: work_dir.join("efivars.fd"),
            console_log: work_dir.join("console.log"),
            stderr_log: work_dir.join("qemu-stderr.log"),
            qmp_socket: work_dir.join("qmp.sock"),
        }
    }
}
