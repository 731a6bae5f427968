//! Builds flashable Cairn disk images.
//!
//! `build` turns a board definition, Debian's kernel and systemd-boot packages and the device
//! binary into `disk.img` (raw GPT: ESP, ROOT-A, ROOT-B, STATE, DATA) and `image.json`, which
//! records every input by sha256 and every partition by offset. The on-disk formats live in
//! `formats`; Debian packages in `deb`; kernel module resolution in `kmod`.
//!
//! The one idea: a build is a pure function of its inputs. Timestamps are fixed, entries sorted,
//! GUIDs derived from a seed, so two builds from the same inputs are byte-identical.

pub mod build;
pub mod bundle_input;
pub mod deb;
mod error;
pub mod extension;
pub mod formats;
pub mod kmod;

pub use build::{build, copy_sparse, ApiSecrets, BuildOptions, ImageManifest, RootExtras};
pub use error::{Error, Result};
