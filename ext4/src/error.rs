//! Why a file system could not be made.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{size} bytes is too small for ext4 with a journal: at least {min} bytes are needed")]
    TooSmall { size: u64, min: u64 },

    #[error("{size} bytes is too large: ext4 without the 64bit feature ends at 16 TiB")]
    TooLarge { size: u64 },

    #[error("the label {0:?} is longer than 16 bytes")]
    Label(String),

    #[error("{what} the file system")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}
