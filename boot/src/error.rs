use std::io;

use thiserror::Error;

use crate::Slot;

#[derive(Debug, Error)]
pub enum Error {
    #[error("unknown slot `{0}`: a slot is `a` or `b`")]
    BadSlot(String),

    #[error("`{0}` is not a boot entry file name (expected <id>[+<left>[-<done>]].conf)")]
    BadEntryName(String),

    #[error("boot entry field `{field}` contains a line break")]
    BadField { field: &'static str },

    #[error("U-Boot environment size {size} is outside {min}..={max} bytes")]
    EnvSize { size: usize, min: usize, max: usize },

    #[error("U-Boot environment copy is {got} bytes, expected {expected}")]
    EnvCopyLength { got: usize, expected: usize },

    #[error("U-Boot environment variable name {key:?} is invalid: {reason}")]
    EnvKey { key: String, reason: &'static str },

    #[error("U-Boot environment variable `{key}` has an invalid value: {reason}")]
    EnvValue { key: String, reason: &'static str },

    #[error(
        "U-Boot environment needs {needed} bytes but its data area holds {available}: \
         remove variables or enlarge the environment"
    )]
    EnvFull { needed: usize, available: usize },

    #[error("U-Boot environment has more than {max} variables")]
    EnvTooManyVars { max: usize },

    #[error("U-Boot environment copy {copy} has a valid CRC but is malformed: {reason}")]
    EnvMalformed { copy: usize, reason: String },

    #[error(
        "no valid U-Boot environment in {location}: both copies fail their CRC \
         (write an initial environment first)"
    )]
    EnvNoValidCopy { location: String },

    #[error("{path} line {line}: {reason}")]
    FwEnvConfig {
        path: String,
        line: usize,
        reason: String,
    },

    #[error("cannot {action} {what}")]
    Io {
        action: &'static str,
        /// A path, or a path and an offset.
        what: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "BOOT_ORDER {value:?} is invalid: {reason} (expected slot names `A`/`B`, space-separated)"
    )]
    BootOrder { value: String, reason: &'static str },

    #[error("{key} {value:?} is not a hexadecimal try count")]
    BootTries { key: &'static str, value: String },

    #[error("a trial needs 1..={max} tries, not {tries}")]
    TrialTries { tries: u32, max: u32 },

    #[error(
        "refusing to mark slot {0} bad: it is the last slot in BOOT_ORDER, nothing would boot"
    )]
    LastBootableSlot(Slot),
}
