//! TPM 2.0 sealing: a random secret sealed to the current values of a set of PCRs.
//!
//! The secret lives in a keyed-hash object under the owner hierarchy's storage primary key, and
//! its only authorisation is a PolicyPCR policy: the TPM releases it while the selected PCRs hold
//! the values they held at sealing time and refuses it (`TPM_RC_POLICY_FAIL`) once any of them
//! has been extended. The sealed object is stored as a systemd-tpm2 LUKS2 token, so the layout
//! on disk is the one `systemd-cryptenroll` writes. Commands are marshalled by hand (a dozen
//! big-endian TPM 2.0 structures); the TPM is reached through a character device or, for tests,
//! swtpm's TCP port ([`transport`]).

mod error;
pub mod floor;
mod marshal;
pub mod pcrsig;
mod policy;
mod rc;
mod salted;
mod seal;
mod token;
mod tpm;
pub mod transport;
pub mod uki;

pub use error::Error;
pub use pcrsig::{PcrPublicKey, PcrSignature, SignedPolicy};
pub use policy::{policy_pcr_digest, policy_pcr_digest_from, PcrBank, PcrSelection, PCR_COUNT};
pub use rc::ResponseCode;
pub use seal::{
    seal, seal_signed, trial_policy_digest, unseal, unseal_signed, PrimaryAlg, SealedBlob,
    SECRET_LEN,
};
pub use token::{Token, TOKEN_TYPE};
pub use tpm::{Handle, Tpm, HT_LOADED_SESSION, HT_TRANSIENT};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
