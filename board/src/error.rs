use thiserror::Error;

#[derive(Debug, Error)]
#[error("unknown board `{name}`: Cairn builds images for {known}")]
pub struct UnknownBoard {
    pub name: String,
    pub known: String,
}
