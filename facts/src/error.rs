//! Why a part of the device's description was refused. Each error is the reason alone, one line
//! in lower case; the caller that knows where the text came from adds that (`health.probes[0]: …`,
//! `boot.json in the bundle is invalid: …`). std only, like the rest of this crate.

use std::fmt;

/// Why a probe's JSON is not a valid probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpecError(pub(crate) String);

/// Why a `boot.json` is not a valid boot spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSpecError(pub(crate) String);

impl fmt::Display for ProbeSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeSpecError {}

impl fmt::Display for BootSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BootSpecError {}
