//! Updater errors. Each renders as one line naming the problem; the install errors say what was
//! (not) changed where that matters to an operator.

use std::io;
use std::path::PathBuf;

use cairn_boot::Slot;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bundle(#[from] cairn_bundle::Error),
    #[error(transparent)]
    Refused(#[from] cairn_bundle::Refusal),
    #[error("bundle refused: {0}")]
    Unsuitable(String),
    #[error("boot.json in the bundle is invalid: {0}")]
    BootSpec(String),
    #[error("slot {running} is on trial: it must be committed before another update is installed")]
    RunningOnTrial { running: Slot },
    #[error("payload {payload:?} is {size} bytes but {target} holds only {capacity}")]
    TooBig {
        payload: String,
        size: u64,
        target: String,
        capacity: u64,
    },
    #[error(
        "read-back of {target} does not match payload {payload:?}: the storage returned other bytes than were written"
    )]
    ReadBack { payload: String, target: String },
    #[error("boot state: {0}")]
    Boot(#[from] cairn_boot::Error),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is corrupt: {reason}", path.display())]
    State { path: PathBuf, reason: String },
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
