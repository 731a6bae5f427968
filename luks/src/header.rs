//! The LUKS2 binary header: 4096 bytes in front of each copy of the JSON area.
//!
//! There are two copies, the primary at offset 0 and the secondary at `hdr_size`; each is
//! checksummed (SHA-256 over the binary header with its checksum field zeroed, followed by its
//! JSON area) and carries a sequence id, so a reader takes the valid copy with the higher id.
//! All integers are big-endian.

use sha2::{Digest, Sha256};

/// Size of the binary part of a header.
pub const BIN_SIZE: usize = 4096;
/// The header size cryptsetup writes by default: 4 KiB binary header plus a 12 KiB JSON area.
pub const DEFAULT_HDR_SIZE: u64 = 16 * 1024;
/// The header sizes the specification allows (binary header plus JSON area).
pub const ALLOWED_HDR_SIZES: [u64; 7] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1024 << 10,
];
/// Sizes up to 4 MiB are allowed by the specification; cryptsetup writes at most the above.
pub const MAX_HDR_SIZE: u64 = 4 << 20;

pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
const VERSION: u16 = 2;
const CHECKSUM_ALG: &str = "sha256";

// Field offsets, from the specification's `struct luks2_hdr_disk`.
const OFF_VERSION: usize = 6;
const OFF_HDR_SIZE: usize = 8;
const OFF_SEQID: usize = 16;
const OFF_LABEL: usize = 24;
const LEN_LABEL: usize = 48;
const OFF_CSUM_ALG: usize = 72;
const LEN_CSUM_ALG: usize = 32;
const OFF_SALT: usize = 104;
pub const LEN_SALT: usize = 64;
const OFF_UUID: usize = 168;
const LEN_UUID: usize = 40;
const OFF_SUBSYSTEM: usize = 208;
const LEN_SUBSYSTEM: usize = 48;
const OFF_HDR_OFFSET: usize = 256;
const OFF_CSUM: usize = 448;
const LEN_CSUM: usize = 64;

/// The fields of one binary header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHeader {
    /// True for the secondary copy (magic "SKUL\xba\xbe").
    pub secondary: bool,
    /// Binary header plus JSON area, in bytes.
    pub hdr_size: u64,
    /// Incremented on every metadata update; both copies carry the same value.
    pub seqid: u64,
    pub label: String,
    pub salt: [u8; LEN_SALT],
    pub uuid: String,
    pub subsystem: String,
    /// Offset of this copy on the device: 0 for the primary, `hdr_size` for the secondary.
    pub hdr_offset: u64,
}

fn put_str(buf: &mut [u8], off: usize, len: usize, s: &str) {
    // One byte stays zero so the field is always NUL-terminated.
    let b = s.as_bytes();
    let n = b.len().min(len - 1);
    buf[off..off + n].copy_from_slice(&b[..n]);
}

fn get_str(buf: &[u8], off: usize, len: usize) -> Result<String, String> {
    let field = &buf[off..off + len];
    let end = field
        .iter()
        .position(|&c| c == 0)
        .ok_or("string field is not NUL-terminated")?;
    String::from_utf8(field[..end].to_vec()).map_err(|_| "string field is not UTF-8".to_string())
}

fn be64(buf: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

/// SHA-256 of a whole header copy (binary header and JSON area) with the checksum field zeroed.
pub fn checksum(area: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&area[..OFF_CSUM]);
    h.update([0u8; LEN_CSUM]);
    h.update(&area[OFF_CSUM + LEN_CSUM..]);
    h.finalize().into()
}

impl BinaryHeader {
    /// Serialises this header followed by `json` (padded with zeros to the JSON area size) and
    /// fills in the checksum. The result is `hdr_size` bytes long.
    pub fn encode(&self, json: &[u8]) -> Vec<u8> {
        let size = self.hdr_size as usize;
        assert!(
            json.len() < size - BIN_SIZE,
            "JSON must fit with a terminating NUL"
        );
        let mut out = vec![0u8; size];
        out[..6].copy_from_slice(if self.secondary {
            &MAGIC_SECONDARY
        } else {
            &MAGIC_PRIMARY
        });
        out[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&VERSION.to_be_bytes());
        out[OFF_HDR_SIZE..OFF_HDR_SIZE + 8].copy_from_slice(&self.hdr_size.to_be_bytes());
        out[OFF_SEQID..OFF_SEQID + 8].copy_from_slice(&self.seqid.to_be_bytes());
        put_str(&mut out, OFF_LABEL, LEN_LABEL, &self.label);
        put_str(&mut out, OFF_CSUM_ALG, LEN_CSUM_ALG, CHECKSUM_ALG);
        out[OFF_SALT..OFF_SALT + LEN_SALT].copy_from_slice(&self.salt);
        put_str(&mut out, OFF_UUID, LEN_UUID, &self.uuid);
        put_str(&mut out, OFF_SUBSYSTEM, LEN_SUBSYSTEM, &self.subsystem);
        out[OFF_HDR_OFFSET..OFF_HDR_OFFSET + 8].copy_from_slice(&self.hdr_offset.to_be_bytes());
        out[BIN_SIZE..BIN_SIZE + json.len()].copy_from_slice(json);
        let sum = checksum(&out);
        out[OFF_CSUM..OFF_CSUM + 32].copy_from_slice(&sum);
        out
    }

    /// Parses the binary part of a header (at least [`BIN_SIZE`] bytes). Returns the header; the
    /// checksum is verified separately by [`BinaryHeader::verify`] once the JSON area is read.
    pub fn decode(bin: &[u8], expect_offset: u64) -> Result<BinaryHeader, String> {
        if bin.len() < BIN_SIZE {
            return Err("short read".into());
        }
        let secondary = match bin[..6].try_into().expect("6 bytes") {
            MAGIC_PRIMARY => false,
            MAGIC_SECONDARY => true,
            _ => return Err("no LUKS2 magic".into()),
        };
        if secondary != (expect_offset != 0) {
            return Err("primary magic where a secondary header belongs, or the reverse".into());
        }
        let version = u16::from_be_bytes([bin[OFF_VERSION], bin[OFF_VERSION + 1]]);
        if version != VERSION {
            return Err(format!("version {version}, expected 2"));
        }
        let hdr_size = be64(bin, OFF_HDR_SIZE);
        if !(DEFAULT_HDR_SIZE..=MAX_HDR_SIZE).contains(&hdr_size) || !hdr_size.is_multiple_of(4096)
        {
            return Err(format!("header size {hdr_size} is out of range"));
        }
        let csum_alg = get_str(bin, OFF_CSUM_ALG, LEN_CSUM_ALG)?;
        if csum_alg != CHECKSUM_ALG {
            return Err(format!("checksum algorithm {csum_alg:?} is not supported"));
        }
        let hdr_offset = be64(bin, OFF_HDR_OFFSET);
        if hdr_offset != expect_offset {
            return Err(format!(
                "header says it is at {hdr_offset}, found at {expect_offset}"
            ));
        }
        Ok(BinaryHeader {
            secondary,
            hdr_size,
            seqid: be64(bin, OFF_SEQID),
            label: get_str(bin, OFF_LABEL, LEN_LABEL)?,
            salt: bin[OFF_SALT..OFF_SALT + LEN_SALT]
                .try_into()
                .expect("64 bytes"),
            uuid: get_str(bin, OFF_UUID, LEN_UUID)?,
            subsystem: get_str(bin, OFF_SUBSYSTEM, LEN_SUBSYSTEM)?,
            hdr_offset,
        })
    }

    /// Checks the stored checksum of a whole header copy (`hdr_size` bytes).
    pub fn verify(area: &[u8]) -> Result<(), String> {
        let stored = &area[OFF_CSUM..OFF_CSUM + 32];
        if checksum(area)[..] != stored[..] {
            return Err("checksum mismatch".into());
        }
        Ok(())
    }
}

/// The JSON text of a header copy: everything up to the first NUL of its JSON area.
pub fn json_text(area: &[u8]) -> Result<&str, String> {
    let json = &area[BIN_SIZE..];
    let end = json
        .iter()
        .position(|&c| c == 0)
        .ok_or("JSON area is not NUL-terminated")?;
    std::str::from_utf8(&json[..end]).map_err(|_| "JSON area is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secondary: bool) -> BinaryHeader {
        BinaryHeader {
            secondary,
            hdr_size: DEFAULT_HDR_SIZE,
            seqid: 7,
            label: "STATE".into(),
            salt: [0x5a; LEN_SALT],
            uuid: "0f0e0d0c-0b0a-4908-8706-050403020100".into(),
            subsystem: String::new(),
            hdr_offset: if secondary { DEFAULT_HDR_SIZE } else { 0 },
        }
    }

    #[test]
    fn encode_decode_round_trip_and_checksum() {
        for secondary in [false, true] {
            let h = sample(secondary);
            let area = h.encode(b"{\"a\":1}");
            assert_eq!(area.len(), DEFAULT_HDR_SIZE as usize);
            BinaryHeader::verify(&area).unwrap();
            let back = BinaryHeader::decode(&area, h.hdr_offset).unwrap();
            assert_eq!(back, h);
            assert_eq!(json_text(&area).unwrap(), "{\"a\":1}");
        }
    }

    #[test]
    fn checksum_is_sha256_with_field_zeroed() {
        let area = sample(false).encode(b"{}");
        let mut zeroed = area.clone();
        zeroed[OFF_CSUM..OFF_CSUM + LEN_CSUM].fill(0);
        let expect: [u8; 32] = Sha256::digest(&zeroed).into();
        assert_eq!(&area[OFF_CSUM..OFF_CSUM + 32], &expect);
        assert!(area[OFF_CSUM + 32..OFF_CSUM + LEN_CSUM]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn any_flipped_bit_fails_the_checksum() {
        let area = sample(false).encode(b"{}");
        for pos in [0, OFF_SEQID, OFF_SALT + 3, BIN_SIZE, BIN_SIZE + 100] {
            let mut bad = area.clone();
            bad[pos] ^= 0x10;
            assert!(BinaryHeader::verify(&bad).is_err(), "flip at {pos}");
        }
    }

    #[test]
    fn wrong_offset_or_magic_is_rejected() {
        let area = sample(true).encode(b"{}");
        assert!(BinaryHeader::decode(&area, 0).is_err());
        let primary = sample(false).encode(b"{}");
        assert!(BinaryHeader::decode(&primary, DEFAULT_HDR_SIZE).is_err());
        let mut bad = area.clone();
        bad[0] = b'X';
        assert!(BinaryHeader::decode(&bad, DEFAULT_HDR_SIZE).is_err());
    }
}
