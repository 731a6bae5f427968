//! `boot.json`, the bundle's `boot-files` payload: what the bootloader needs to boot the root the
//! bundle carries. The root hash is not in the root itself (dm-verity's superblock holds the salt
//! but not the hash), so it travels here, covered by the manifest's signature like every payload.
//!
//! ```json
//! {"format":1,"roothash":"<64 hex digits>","hash_offset":41943040,
//!  "options":["console=ttyAMA0","quiet","panic=5"]}
//! ```
//!
//! `options` are the kernel command-line words other than the slot's own (`cairn.slot`,
//! `cairn.roothash`, `cairn.hashoffset`: [`crate::layout::cmdline`]), which the installer adds
//! for the slot it writes. The image builder writes this file (`cairnctl bundle create`), the
//! updater reads it.

use serde::{Deserialize, Serialize};

pub use crate::error::BootSpecError;
use crate::layout::cmdline;

/// The payload name of the boot description in a bundle.
pub const PAYLOAD_NAME: &str = "boot.json";
/// Largest accepted `boot.json`.
pub const MAX_LEN: u64 = 64 * 1024;
const MAX_OPTIONS: usize = 64;
const MAX_OPTION_LEN: usize = 256;
/// dm-verity data and hash blocks are 4096 bytes.
const BLOCK: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    pub format: u32,
    /// dm-verity root hash of the rootfs payload, lowercase hex.
    pub roothash: String,
    /// Byte offset of the verity superblock within the rootfs payload.
    pub hash_offset: u64,
    pub options: Vec<String>,
}

impl BootSpec {
    /// Parses and checks `boot.json`; `rootfs_size` is the size of the bundle's rootfs payload.
    pub fn parse(bytes: &[u8], rootfs_size: u64) -> Result<BootSpec, BootSpecError> {
        let spec: BootSpec =
            serde_json::from_slice(bytes).map_err(|e| BootSpecError(e.to_string()))?;
        spec.check(rootfs_size)?;
        Ok(spec)
    }

    fn check(&self, rootfs_size: u64) -> Result<(), BootSpecError> {
        let bad = |m: String| Err(BootSpecError(m));
        if self.format != 1 {
            return bad(format!("format {} is not supported (1 is)", self.format));
        }
        if self.roothash.len() != 64
            || !self
                .roothash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return bad("roothash must be 64 lowercase hex digits".into());
        }
        if self.hash_offset == 0
            || !self.hash_offset.is_multiple_of(BLOCK)
            || self.hash_offset >= rootfs_size
        {
            return bad(format!(
                "hash_offset {} must be a non-zero multiple of {BLOCK} inside the {rootfs_size}-byte rootfs",
                self.hash_offset
            ));
        }
        if self.options.len() > MAX_OPTIONS {
            return bad(format!("more than {MAX_OPTIONS} options"));
        }
        for word in &self.options {
            if word.is_empty()
                || word.len() > MAX_OPTION_LEN
                || !word.bytes().all(|b| b.is_ascii_graphic())
            {
                return bad(format!(
                    "option {word:?} must be 1..={MAX_OPTION_LEN} printable characters without spaces"
                ));
            }
            let key = word.split('=').next().unwrap_or(word);
            if cmdline::SLOT_KEYS.contains(&key) {
                return bad(format!(
                    "option {word:?} is the installer's to set, not the bundle's"
                ));
            }
        }
        Ok(())
    }

    /// The kernel command-line words for the slot named `slot` (`a` or `b`, as
    /// `cairn_boot::Slot` displays).
    pub fn options_for(&self, slot: &str) -> Vec<String> {
        let mut words = self.options.clone();
        words.extend(cmdline::slot_words(slot, &self.roothash, self.hash_offset));
        words
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a BootSpec always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootSpec {
        BootSpec {
            format: 1,
            roothash: "ab".repeat(32),
            hash_offset: 8192,
            options: vec!["console=ttyAMA0".into(), "quiet".into()],
        }
    }

    #[test]
    fn round_trips_and_adds_the_slot_words() {
        let s = spec();
        assert_eq!(BootSpec::parse(s.to_json().as_bytes(), 20000).unwrap(), s);
        assert_eq!(
            s.options_for("b"),
            [
                "console=ttyAMA0".to_string(),
                "quiet".into(),
                "cairn.slot=b".into(),
                format!("cairn.roothash={}", "ab".repeat(32)),
                "cairn.hashoffset=8192".into()
            ]
        );
    }

    #[test]
    fn refuses_what_would_make_a_bad_entry() {
        let cases: Vec<(BootSpec, u64, &str)> = vec![
            (
                BootSpec {
                    format: 2,
                    ..spec()
                },
                20000,
                "format 2",
            ),
            (
                BootSpec {
                    roothash: "AB".repeat(32),
                    ..spec()
                },
                20000,
                "roothash",
            ),
            (
                BootSpec {
                    hash_offset: 100,
                    ..spec()
                },
                20000,
                "hash_offset 100",
            ),
            (spec(), 8192, "inside the 8192-byte rootfs"),
            (
                BootSpec {
                    options: vec!["a b".into()],
                    ..spec()
                },
                20000,
                "without spaces",
            ),
            (
                BootSpec {
                    options: vec!["cairn.slot=a".into()],
                    ..spec()
                },
                20000,
                "installer's to set",
            ),
        ];
        for (s, size, want) in cases {
            let err = BootSpec::parse(s.to_json().as_bytes(), size)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        let err = BootSpec::parse(br#"{"format":1,"extra":1}"#, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
