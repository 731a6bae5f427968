use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("unknown slot `{0}`: a slot is `a` or `b`")]
    BadSlot(String),

    #[error("`{0}` is not a boot entry file name (expected <id>[+<left>[-<done>]].conf)")]
    BadEntryName(String),

    #[error("boot entry field `{field}` contains a line break")]
    BadField { field: &'static str },
}
