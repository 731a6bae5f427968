use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PE/COFF image that Cairn cannot read or change; `what` names it (a path, or the UKI).
    #[error("{what}: {reason}")]
    BadPe { what: String, reason: String },
    #[error("{what} {reason}")]
    BadKey { what: String, reason: String },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("key generation failed: {0}")]
    KeyGen(String),
    #[error(
        "{path} already exists; refusing to overwrite a key (move it away or choose another --out)"
    )]
    KeyExists { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
