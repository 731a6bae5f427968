//! The crate's errors: each names the TPM command or the token field it concerns.

use std::io;
use std::path::PathBuf;

use crate::rc::ResponseCode;

/// An error from talking to the TPM, sealing, unsealing or reading a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TPM character device could not be opened.
    #[error("cannot open TPM device {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The TCP connection to a TPM simulator could not be made.
    #[error("cannot connect to TPM simulator at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// Writing a command or reading its response failed.
    #[error("{command}: TPM I/O failed")]
    Io {
        command: &'static str,
        #[source]
        source: io::Error,
    },
    /// The TPM answered with an error response code.
    #[error("{command}: {rc}")]
    Tpm {
        command: &'static str,
        rc: ResponseCode,
    },
    /// The TPM's response did not parse.
    #[error("{command}: malformed TPM response: {what}")]
    Malformed { command: &'static str, what: String },
    /// A PCR selection names a PCR or a bank this crate does not handle.
    #[error("invalid PCR selection: {0}")]
    PcrSelection(String),
    /// A systemd-tpm2 token is malformed or uses a feature this crate does not implement.
    #[error("systemd-tpm2 token rejected: {0}")]
    Token(String),
    /// A PCR-signing public key (`.pcrpkey`, the token's `tpm2_pubkey`) does not parse.
    #[error("PCR public key rejected: {0}")]
    PublicKey(String),
    /// A PCR-signing private key does not parse.
    #[error("PCR signing key rejected: {0}")]
    PrivateKey(String),
    /// A `tpm2-pcr-signature.json` (`.pcrsig`) does not parse.
    #[error("PCR signature rejected: {0}")]
    Signature(String),
    /// The booted system carries no signature for its PCR 11 by the sealing key: its kernel,
    /// initrd or command line were not signed by the release key (or the signature is missing).
    #[error("not a signed release: {0}")]
    Unsigned(String),
    /// The booted release is signed but below the device's anti-rollback floor.
    #[error("release refused by the anti-rollback floor: {0}")]
    BelowFloor(String),
    /// The anti-rollback floor's NV index is not what Cairn defines.
    #[error("anti-rollback floor: {0}")]
    Floor(String),
    /// The host's random number generator failed.
    #[error("cannot read random bytes from the host")]
    Random(#[source] rand_core::Error),
}

impl Error {
    /// Whether the TPM refused because the policy did not hold: the PCRs no longer have the
    /// values the secret was sealed to, or the selection differs from the sealed one.
    /// A boot that is not a signed release, or is below the floor, counts as a policy failure too.
    pub fn is_policy_failure(&self) -> bool {
        match self {
            Error::Tpm { rc, .. } => rc.is_policy_failure(),
            Error::Unsigned(_) | Error::BelowFloor(_) => true,
            _ => false,
        }
    }

    /// The TPM response code, if the TPM answered with an error.
    pub fn response_code(&self) -> Option<ResponseCode> {
        match self {
            Error::Tpm { rc, .. } => Some(*rc),
            _ => None,
        }
    }
}
