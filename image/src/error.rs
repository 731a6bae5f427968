use std::path::PathBuf;

use thiserror::Error;

use crate::formats::FormatError;

/// Everything that can stop an image build. Each message names the thing and, where there is
/// one, the fix; the cause chain follows it.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    UnknownBoard(#[from] cairn_board::UnknownBoard),

    /// A unified kernel image, a signature or a Secure Boot key.
    #[error(transparent)]
    SecureBoot(#[from] cairn_secureboot::Error),

    #[error("PCR-signing key {}: {reason}", path.display())]
    PcrSigningKey { path: PathBuf, reason: String },

    #[error("board {board} does not boot through UEFI: --secure-boot is for the UEFI boards")]
    NoSecureBoot { board: &'static str },

    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no space left on the filesystem holding {}: free some space or pass another --out", path.display())]
    DiskFull { path: PathBuf },

    #[error("could not run `{command}`: {source} (run `cargo xtask setup` to install it)")]
    ToolMissing {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed: {stderr}")]
    ToolFailed { command: String, stderr: String },

    #[error("package `{package}` ({arch}) is not in the apt sources: run `cargo xtask setup` (it adds the {arch} architecture and runs apt-get update)")]
    PackageNotFound { package: String, arch: String },

    #[error("apt's record of `{package}` has no {field} field")]
    PackageRecord {
        package: String,
        field: &'static str,
    },

    #[error("cached package {} has sha256 {actual}, but the apt index says {expected}: delete it and build again", path.display())]
    CacheMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("downloaded package {} has sha256 {actual}, but the apt index says {expected}: run apt-get update and build again", path.display())]
    DownloadMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("package {package} has no {what} at {path}")]
    PackageContent {
        package: String,
        what: &'static str,
        path: String,
    },

    #[error(
        "kernel module `{name}` is neither built into kernel {kernel} nor shipped as a module"
    )]
    ModuleNotFound { name: String, kernel: String },

    #[error("kernel module {}: {reason}", path.display())]
    ModuleInfo { path: PathBuf, reason: String },

    #[error("kernel modules depend on each other in a cycle through `{name}`")]
    ModuleCycle { name: String },

    #[error("device binary {} not found: build it with `cargo xtask device` or pass --device-bin", path.display())]
    DeviceBinaryMissing { path: PathBuf },

    #[error("device binary {} is not a static {expected} ELF executable ({found}): build it for {target}", path.display())]
    DeviceBinaryWrongArch {
        path: PathBuf,
        expected: &'static str,
        found: String,
        target: &'static str,
    },

    #[error("{what} is {size} bytes but its partition holds only {capacity}: enlarge it in the board layout")]
    TooBig {
        what: String,
        size: u64,
        capacity: u64,
    },

    #[error("k3s {}: {reason}", path.display())]
    BadK3s { path: PathBuf, reason: String },

    #[error("containers extension: /{path}: {reason}")]
    ExtensionContent { path: String, reason: String },

    #[error("invalid version `{0}`: use a semantic version such as 1.2.3")]
    BadVersion(String),

    #[error("kernel argument {0:?} is empty or holds white space")]
    BadKernelArg(String),

    #[error("--out {} is not a usable output folder: {reason}", path.display())]
    BadOut { path: PathBuf, reason: &'static str },

    #[error(transparent)]
    Format(#[from] FormatError),
}

impl Error {
    /// Wraps an I/O error, turning ENOSPC into the one message a user can act on.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc_enospc()) {
            return Error::DiskFull { path };
        }
        Error::Io { what, path, source }
    }
}

/// ENOSPC is 28 on every Linux architecture Cairn builds on.
pub(crate) const fn libc_enospc() -> i32 {
    28
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
