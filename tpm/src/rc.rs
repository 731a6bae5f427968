//! TPM 2.0 response codes (TPM_RC) turned into names and one-line descriptions.
//!
//! A code is either "format 1" (bit 7 set: an error number in bits 0..6 plus the handle, session
//! or parameter it concerns in bits 8..11) or "format 0" (a version-1 error or a warning in bits
//! 0..11). [`ResponseCode::base`] strips the location so codes compare by meaning.

use std::fmt;

/// `TPM_RC_SUCCESS`.
pub const SUCCESS: u32 = 0;
/// `TPM_RC_INITIALIZE`: the TPM has already been started (or not yet, for other commands).
pub const INITIALIZE: u32 = 0x100;
/// `TPM_RC_POLICY_FAIL`: a policy session's digest does not match the object's authPolicy.
pub const POLICY_FAIL: u32 = 0x09D;
/// `TPM_RC_PCR_CHANGED`: a PCR changed while a policy session was checking it.
pub const PCR_CHANGED: u32 = 0x128;
/// `TPM_RC_POLICY`: a PolicyNV comparison did not hold (the anti-rollback floor).
pub const POLICY: u32 = 0x126;
/// `TPM_RC_NV_UNINITIALIZED`: an NV index that was never written.
pub const NV_UNINITIALIZED: u32 = 0x14A;
/// `TPM_RC_SIGNATURE`: a signature does not verify with the key.
pub const SIGNATURE: u32 = 0x09B;

const YIELDED: u32 = 0x908;
const TESTING: u32 = 0x90A;
const RETRY: u32 = 0x922;

const FMT1: u32 = 0x080;
const FMT1_PARAMETER: u32 = 0x040;
const FMT1_SESSION: u32 = 0x800;

/// (code, name, description) for the codes a sealing client meets.
const NAMES: &[(u32, &str, &str)] = &[
    (
        0x081,
        "TPM_RC_ASYMMETRIC",
        "asymmetric algorithm not supported",
    ),
    (0x082, "TPM_RC_ATTRIBUTES", "inconsistent object attributes"),
    (0x083, "TPM_RC_HASH", "hash algorithm not supported"),
    (0x084, "TPM_RC_VALUE", "value is out of range or wrong"),
    (0x085, "TPM_RC_HIERARCHY", "hierarchy is disabled"),
    (0x087, "TPM_RC_KEY_SIZE", "key size not supported"),
    (0x089, "TPM_RC_MODE", "symmetric mode not supported"),
    (0x08A, "TPM_RC_TYPE", "wrong object type"),
    (0x08B, "TPM_RC_HANDLE", "handle is not loaded or not valid"),
    (0x08D, "TPM_RC_RANGE", "value out of range"),
    (0x08E, "TPM_RC_AUTH_FAIL", "authorization failed"),
    (0x08F, "TPM_RC_NONCE", "invalid nonce"),
    (0x092, "TPM_RC_SCHEME", "scheme not supported"),
    (0x095, "TPM_RC_SIZE", "structure is the wrong size"),
    (
        0x096,
        "TPM_RC_SYMMETRIC",
        "symmetric algorithm not supported",
    ),
    (0x097, "TPM_RC_TAG", "wrong structure tag"),
    (0x098, "TPM_RC_SELECTOR", "union selector is wrong"),
    (0x09A, "TPM_RC_INSUFFICIENT", "input is too short"),
    (SIGNATURE, "TPM_RC_SIGNATURE", "the signature is not valid"),
    (0x09C, "TPM_RC_KEY", "key is not valid"),
    (POLICY_FAIL, "TPM_RC_POLICY_FAIL", "policy check failed"),
    (
        0x09F,
        "TPM_RC_INTEGRITY",
        "integrity check failed: wrong parent key or damaged blob",
    ),
    (0x0A1, "TPM_RC_RESERVED_BITS", "reserved bits set"),
    (
        0x0A2,
        "TPM_RC_BAD_AUTH",
        "authorization failure without DA implications",
    ),
    (
        0x0A4,
        "TPM_RC_POLICY_CC",
        "policy does not allow this command",
    ),
    (0x0A6, "TPM_RC_CURVE", "curve not supported"),
    (
        INITIALIZE,
        "TPM_RC_INITIALIZE",
        "TPM not initialized or already started",
    ),
    (0x101, "TPM_RC_FAILURE", "TPM is in failure mode"),
    (
        0x103,
        "TPM_RC_SEQUENCE",
        "improper use of a sequence handle",
    ),
    (0x120, "TPM_RC_DISABLED", "command is disabled"),
    (
        0x124,
        "TPM_RC_AUTH_TYPE",
        "authorization type not allowed for this command",
    ),
    (
        0x125,
        "TPM_RC_AUTH_MISSING",
        "command needs an authorization session",
    ),
    (
        POLICY,
        "TPM_RC_POLICY",
        "policy failure in math operation or an invalid authPolicy value",
    ),
    (0x127, "TPM_RC_PCR", "PCR check failed"),
    (
        PCR_CHANGED,
        "TPM_RC_PCR_CHANGED",
        "PCRs changed during the policy session",
    ),
    (0x12E, "TPM_RC_TOO_MANY_CONTEXTS", "too many contexts"),
    (
        0x12F,
        "TPM_RC_AUTH_UNAVAILABLE",
        "authValue or authPolicy is not available",
    ),
    (0x130, "TPM_RC_REBOOT", "TPM needs a reset"),
    (0x142, "TPM_RC_COMMAND_SIZE", "command size does not match"),
    (0x143, "TPM_RC_COMMAND_CODE", "command not supported"),
    (0x144, "TPM_RC_AUTHSIZE", "authorization area size is wrong"),
    (
        0x145,
        "TPM_RC_AUTH_CONTEXT",
        "command does not allow an authorization session",
    ),
    (
        NV_UNINITIALIZED,
        "TPM_RC_NV_UNINITIALIZED",
        "NV index not written",
    ),
    (0x14B, "TPM_RC_NV_DEFINED", "NV index already defined"),
    (0x152, "TPM_RC_PARENT", "the parent is not a storage key"),
    (
        0x155,
        "TPM_RC_SENSITIVE",
        "sensitive area did not unmarshal",
    ),
    (0x902, "TPM_RC_OBJECT_MEMORY", "out of memory for objects"),
    (0x903, "TPM_RC_SESSION_MEMORY", "out of memory for sessions"),
    (0x904, "TPM_RC_MEMORY", "out of memory"),
    (0x905, "TPM_RC_SESSION_HANDLES", "out of session handles"),
    (0x906, "TPM_RC_OBJECT_HANDLES", "out of object handles"),
    (YIELDED, "TPM_RC_YIELDED", "TPM yielded"),
    (0x909, "TPM_RC_CANCELED", "command canceled"),
    (TESTING, "TPM_RC_TESTING", "TPM is self-testing"),
    (
        0x921,
        "TPM_RC_LOCKOUT",
        "TPM is in dictionary-attack lockout",
    ),
    (RETRY, "TPM_RC_RETRY", "TPM was busy, retry"),
    (0x923, "TPM_RC_NV_UNAVAILABLE", "NV is not available"),
];

/// A TPM 2.0 response code as the TPM returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCode(pub u32);

/// What part of a command a format-1 code points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Handle(u32),
    Session(u32),
    Parameter(u32),
}

impl ResponseCode {
    /// The code with its handle, session or parameter number removed.
    pub fn base(self) -> u32 {
        if self.0 & FMT1 != 0 {
            FMT1 | (self.0 & 0x3F)
        } else {
            self.0 & 0xFFF
        }
    }

    /// The `TPM_RC_*` name, or `None` for a code this crate does not name.
    pub fn name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(c, ..)| *c == self.base())
            .map(|(_, n, _)| *n)
    }

    /// A short description of what went wrong.
    pub fn description(self) -> &'static str {
        NAMES
            .iter()
            .find(|(c, ..)| *c == self.base())
            .map_or("TPM error", |(.., d)| *d)
    }

    /// Whether this is the TPM's refusal of a policy session (see [`crate::Error::is_policy_failure`]).
    pub fn is_policy_failure(self) -> bool {
        matches!(self.base(), POLICY_FAIL | PCR_CHANGED)
    }

    /// Whether the TPM asks for the same command to be sent again (`TPM_RC_RETRY`,
    /// `TPM_RC_YIELDED`, `TPM_RC_TESTING`).
    pub fn is_transient(self) -> bool {
        matches!(self.base(), RETRY | YIELDED | TESTING)
    }

    fn location(self) -> Option<Location> {
        if self.0 & FMT1 == 0 {
            return None;
        }
        let n = (self.0 >> 8) & 0xF;
        if self.0 & FMT1_PARAMETER != 0 {
            Some(Location::Parameter(n))
        } else if self.0 & FMT1_SESSION != 0 {
            Some(Location::Session(n & 0x7))
        } else if n != 0 {
            Some(Location::Handle(n & 0x7))
        } else {
            None
        }
    }
}

impl fmt::Display for ResponseCode {
    /// `policy check failed (TPM_RC_POLICY_FAIL)`; a handle or parameter number is added when the
    /// TPM gives one, since it says which input was wrong.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name}", self.description())?,
            None => write!(f, "TPM error (TPM_RC {:#x}", self.0)?,
        }
        match self.location() {
            Some(Location::Handle(n)) => write!(f, ", handle {n})"),
            Some(Location::Parameter(n)) => write!(f, ", parameter {n})"),
            Some(Location::Session(_)) | None => f.write_str(")"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_fail_on_session_one() {
        let rc = ResponseCode(0x99D);
        assert_eq!(rc.base(), POLICY_FAIL);
        assert!(rc.is_policy_failure());
        assert_eq!(rc.to_string(), "policy check failed (TPM_RC_POLICY_FAIL)");
    }

    #[test]
    fn parameter_and_handle_numbers() {
        assert_eq!(
            ResponseCode(0x2C4).to_string(),
            "value is out of range or wrong (TPM_RC_VALUE, parameter 2)"
        );
        assert_eq!(
            ResponseCode(0x18B).to_string(),
            "handle is not loaded or not valid (TPM_RC_HANDLE, handle 1)"
        );
    }

    #[test]
    fn format_zero_and_unknown() {
        assert_eq!(ResponseCode(0x921).name(), Some("TPM_RC_LOCKOUT"));
        assert_eq!(ResponseCode(0x128).base(), PCR_CHANGED);
        assert_eq!(ResponseCode(0x17F).to_string(), "TPM error (TPM_RC 0x17f)");
    }
}
