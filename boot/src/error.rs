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
        "refusing to mark slot {0} bad: the other slot is not bootable, so nothing would boot"
    )]
    LastBootableSlot(Slot),

    #[error("`{path}` is not a relative path inside the file system: {reason}")]
    BadPath { path: String, reason: &'static str },

    #[error("{path} is larger than {limit} bytes; refusing to read it")]
    FileTooLarge { path: String, limit: usize },

    #[error("{file}: {reason}")]
    BadEntryFile { file: String, reason: String },

    #[error("slot {slot} has no boot entry in {dir}: install one first")]
    NoEntry { slot: Slot, dir: &'static str },

    #[error("refusing to replace the boot entry of slot {0}: it is the running slot")]
    RunningSlot(Slot),

    #[error("{dir}: entry generation {gen} is the largest possible; renumber the entries")]
    GenerationExhausted { dir: &'static str, gen: u32 },

    #[error("{path}: {reason}")]
    Autoboot { path: String, reason: String },

    #[error("{path}: {reason}")]
    DeviceTree { path: String, reason: String },

    #[error(
        "the kernel command line says slot {running}, whose boot partition is {expected}, but \
         the firmware booted partition {partition}: that partition's cmdline.txt names the \
         wrong slot"
    )]
    SlotMismatch {
        running: Slot,
        expected: u32,
        partition: u32,
    },
}
