//! The errors of building, sending and checking device-mapper requests, each naming the device.

use std::io;
use std::path::PathBuf;

use crate::codec::Command;

/// What can go wrong talking to device-mapper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be built: a name or target the kernel would refuse anyway.
    #[error("device-mapper request for {name}: {reason}")]
    Request { name: String, reason: String },

    /// `/dev/mapper/control` is missing (no `dm_mod`) or cannot be opened.
    #[error("opening the device-mapper control node {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The kernel refused the command.
    #[error("device-mapper {cmd} for {name}{hint}")]
    Ioctl {
        cmd: Command,
        name: String,
        /// Empty, or a parenthesised pointer to the likely cause, with a leading space.
        hint: &'static str,
        #[source]
        source: io::Error,
    },

    /// The kernel accepted the command but answered something this crate does not expect.
    #[error("device-mapper {cmd} for {name}: unexpected reply: {problem}")]
    Reply {
        cmd: Command,
        name: String,
        problem: String,
    },
}

impl Error {
    /// Replaces the hint of a failed `cmd` (other errors are returned as they are): the caller
    /// knows better what a refusal most likely means, such as which module provides a target.
    pub fn with_hint(self, cmd: Command, hint: &'static str) -> Self {
        match self {
            Self::Ioctl {
                cmd: c,
                name,
                source,
                ..
            } if c == cmd => Self::Ioctl {
                cmd,
                name,
                hint,
                source,
            },
            other => other,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
