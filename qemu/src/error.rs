//! Errors of the QEMU harness.
//!
//! Every variant names the thing that failed (binary, file, socket, console log) so that a failing
//! VM test explains itself without re-running it; waits carry the tail of the console.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What the fix is when a host tool or firmware file is missing.
pub const SETUP_HINT: &str = "run `cargo xtask setup` to install QEMU and the UEFI firmware";

/// What the fix is when swtpm is missing.
pub const SWTPM_HINT: &str = "run `cargo xtask setup` to install swtpm";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("board {board} has no QEMU profile: it cannot be emulated")]
    NoQemuProfile { board: &'static str },

    #[error("board {board} has no Secure Boot firmware profile in the harness (qemu-x86_64 and qemu-aarch64 have)")]
    NoSecureBoot { board: &'static str },

    #[error("{binary} is not installed: {SETUP_HINT}")]
    NotInstalled {
        binary: String,
        #[source]
        source: std::io::Error,
    },

    #[error("UEFI firmware {} (package {package}) is missing: {SETUP_HINT}", path.display())]
    FirmwareMissing {
        path: PathBuf,
        package: &'static str,
    },

    #[error(
        "a write log needs `writable_image`: blklogwrites records writes to the raw image itself"
    )]
    WriteLogNeedsWritableImage,

    #[error("disk image {} cannot be used", path.display())]
    DiskImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("work directory {} cannot be prepared", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "QMP socket path {} is {len} bytes, longer than a unix socket allows ({max}): use a \
         shorter work directory",
        path.display()
    )]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },

    #[error("cannot copy UEFI variables {} to {}", from.display(), to.display())]
    CopyVars {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("qemu-img could not create overlay {} on {}: {status}: {stderr}", overlay.display(), backing.display())]
    QemuImg {
        overlay: PathBuf,
        backing: PathBuf,
        status: ExitStatus,
        stderr: String,
    },

    #[error("cannot start {}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "timed out after {timeout:?} waiting for {waiting_for}; console log {}; last console \
         lines:\n{tail}",
        log.display()
    )]
    Timeout {
        waiting_for: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "QEMU {} while waiting for {waiting_for}; console log {}; last console lines:\n{tail}\
         QEMU stderr:\n{stderr}",
        match status { Some(s) => format!("exited ({s})"), None => "closed its console".to_string() },
        log.display()
    )]
    Exited {
        waiting_for: String,
        status: Option<ExitStatus>,
        log: PathBuf,
        tail: String,
        stderr: String,
    },

    #[error("cannot wait for QEMU (pid {pid})")]
    Wait {
        pid: u32,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot connect to QMP socket {} within {timeout:?}", socket.display())]
    QmpConnect {
        socket: PathBuf,
        timeout: Duration,
        #[source]
        source: std::io::Error,
    },

    #[error("QMP command {command} failed on {}", socket.display())]
    QmpIo {
        command: String,
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("QMP command {command} was refused: {class}: {desc}")]
    QmpRefused {
        command: String,
        class: String,
        desc: String,
    },

    #[error("QMP protocol error during {command}: {detail}")]
    QmpProtocol { command: String, detail: String },

    #[error(
        "CAIRN_QEMU_TIMEOUT_SCALE={value:?} is not a positive number (example: \
         CAIRN_QEMU_TIMEOUT_SCALE=2.5)"
    )]
    TimeoutScale { value: String },

    #[error("cannot find a free local TCP port")]
    FreePort(#[source] std::io::Error),

    #[error("stick id {id:?} cannot name a QEMU device: {reason}")]
    StickId { id: String, reason: &'static str },

    #[error("Raspberry Pi firmware (played by the harness) cannot boot SD card {}: {reason}", sd.display())]
    RpiFirmware { sd: PathBuf, reason: String },

    #[error("this machine has no socket for a removable disk")]
    NoStickSocket,

    #[error("no stick {id:?} is plugged in: QEMU has no block node {id}-img")]
    NoStick { id: String },

    #[error("swtpm is not installed: {SWTPM_HINT}")]
    SwtpmNotInstalled(#[source] std::io::Error),

    #[error(
        "swtpm (state {}) did not come up: {detail}; swtpm log {}:\n{log_tail}",
        state_dir.display(),
        log.display()
    )]
    SwtpmStart {
        state_dir: PathBuf,
        detail: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("cannot read swtpm log {}", path.display())]
    SwtpmLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("UEFI variable store {}: {reason}", path.display())]
    VarStore { path: PathBuf, reason: String },

    #[error("cannot read or write UEFI variable store {}", path.display())]
    VarStoreIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
