//! 16-byte GUIDs as GPT uses them. A [`Guid`] holds its bytes in the order they are written in
//! text (RFC 4122 order); GPT stores the first three fields little-endian, so conversion to and
//! from disk goes through [`Guid::to_gpt_bytes`] / [`Guid::from_gpt_bytes`] and nowhere else.
//! Builds must be reproducible, so disk and partition GUIDs are derived from a seed with
//! [`Guid::derive`] instead of drawn at random.

use std::fmt;

use sha2::{Digest, Sha256};

use super::error::FormatError;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The all-zero GUID; in a GPT entry's type field it marks the slot as unused.
    pub const NIL: Guid = Guid([0; 16]);
    /// EFI System Partition.
    pub const EFI_SYSTEM: Guid = Guid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
    /// Generic Linux filesystem data.
    pub const LINUX_DATA: Guid = Guid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);

    /// Builds a GUID from its canonical text read as one big-endian 128-bit number, so that
    /// constants can be written as `0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B`.
    pub const fn from_u128(value: u128) -> Guid {
        Guid(value.to_be_bytes())
    }

    /// Bytes in text (RFC 4122) order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// Bytes in text (RFC 4122) order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (either case, no braces).
    pub fn parse(text: &str) -> Result<Guid, FormatError> {
        let err = |reason| FormatError::GuidSyntax {
            text: text.to_owned(),
            reason,
        };
        let raw = text.as_bytes();
        if raw.len() != 36 {
            return Err(err("expected 36 characters (8-4-4-4-12 hex digits)"));
        }
        let mut bytes = [0u8; 16];
        let mut nibbles = 0;
        for (i, &c) in raw.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(err("expected '-' at positions 8, 13, 18 and 23"));
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(err("not a hexadecimal digit")),
            };
            bytes[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
            nibbles += 1;
        }
        Ok(Guid(bytes))
    }

    /// GPT's on-disk layout: time_low, time_mid and time_hi_and_version little-endian, the
    /// remaining eight bytes as in text.
    pub fn to_gpt_bytes(&self) -> [u8; 16] {
        swap_mixed_endian(self.0)
    }

    /// Inverse of [`Guid::to_gpt_bytes`].
    pub fn from_gpt_bytes(bytes: [u8; 16]) -> Guid {
        Guid(swap_mixed_endian(bytes))
    }

    /// A stable GUID for `name` within a build identified by `seed`:
    /// sha256(seed || 0x00 || name), truncated to 16 bytes and marked as an RFC 4122 version 4
    /// (random) GUID so tools that check the variant accept it. The 0x00 separator keeps
    /// ("ab", "c") and ("a", "bc") apart.
    pub fn derive(seed: &[u8], name: &str) -> Guid {
        let mut hasher = Sha256::new();
        hasher.update(seed);
        hasher.update([0u8]);
        hasher.update(name.as_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Guid(bytes)
    }
}

fn swap_mixed_endian(mut b: [u8; 16]) -> [u8; 16] {
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl std::str::FromStr for Guid {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Guid, FormatError> {
        Guid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESP_TEXT: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

    #[test]
    fn parse_and_display_round_trip_uppercase() {
        let g = Guid::parse(&ESP_TEXT.to_lowercase()).unwrap();
        assert_eq!(g.to_string(), ESP_TEXT);
        assert_eq!(g, Guid::EFI_SYSTEM);
    }

    #[test]
    fn esp_type_has_known_gpt_layout() {
        // As stored in every ESP's partition entry (UEFI spec, table 5.7 and `xxd` of a real disk).
        let expected = [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ];
        assert_eq!(Guid::EFI_SYSTEM.to_gpt_bytes(), expected);
        assert_eq!(Guid::from_gpt_bytes(expected), Guid::EFI_SYSTEM);
    }

    #[test]
    fn parse_rejects_malformed_text() {
        for bad in [
            "",
            "C12A7328F81F11D2BA4B00A0C93EC93B",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93",
            "C12A7328-F81F-11D2-BA4B_00A0C93EC93B",
            "G12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "{12A7328-F81F-11D2-BA4B-00A0C93EC93B}",
        ] {
            assert!(Guid::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn derive_is_stable_and_marked_version_4() {
        let a = Guid::derive(b"build-1", "ROOT-A");
        assert_eq!(a, Guid::derive(b"build-1", "ROOT-A"));
        assert_ne!(a, Guid::derive(b"build-1", "ROOT-B"));
        assert_ne!(a, Guid::derive(b"build-2", "ROOT-A"));
        assert_ne!(Guid::derive(b"ab", "c"), Guid::derive(b"a", "bc"));
        let text = a.to_string();
        assert_eq!(&text[14..15], "4", "version nibble in {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "A" | "B"),
            "variant in {text}"
        );
    }

    #[test]
    fn derive_matches_sha256_prefix() {
        let digest = Sha256::digest(b"seed\0name");
        let g = Guid::derive(b"seed", "name");
        let b = g.as_bytes();
        assert_eq!(b[..6], digest[..6]);
        assert_eq!(b[6] & 0x0F, digest[6] & 0x0F);
        assert_eq!(b[7], digest[7]);
        assert_eq!(b[8] & 0x3F, digest[8] & 0x3F);
        assert_eq!(b[9..], digest[9..16]);
    }
}
