//! The fixed parts of the file layout: the 16-byte header, alignment and the format's limits.

use std::io::Read;

use crate::error::{Error, Result};

/// The first eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"CAIRNBDL";
/// The only format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header: magic, format version (u32 BE), manifest length (u32 BE).
pub const HEADER_LEN: usize = 16;
/// Every payload starts at a multiple of this many bytes from the start of the file.
pub const ALIGNMENT: u64 = 4096;
/// The largest signed manifest (the COSE_Sign1 bytes) a reader accepts.
pub const MAX_MANIFEST_LEN: u32 = 4 * 1024 * 1024;
/// The most payloads one bundle may carry.
pub const MAX_PAYLOADS: usize = 16;
/// The largest single payload.
pub const MAX_PAYLOAD_SIZE: u64 = 64 * 1024 * 1024 * 1024;
/// Smallest allowed chunk size (chunk sizes are powers of two).
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest allowed chunk size; also the most memory a reader holds for one chunk.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// The most chunks all payloads of one bundle may have together: 3.75 MiB of `chunk_hashes`,
/// which leaves room in the 4 MiB manifest for everything else. With 64 KiB chunks the payloads
/// total at most 7.5 GiB; a 64 GiB payload needs chunks of at least 1 MiB.
pub const MAX_CHUNKS: u64 = 122_880;
/// Longest payload name, board name, architecture or version string, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The `product` every manifest must name.
pub const PRODUCT: &str = "cairn";

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub manifest_len: u32,
}

impl Header {
    pub(crate) fn encode(manifest_len: u32) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[12..16].copy_from_slice(&manifest_len.to_be_bytes());
        out
    }

    /// Checks magic, version and the manifest length bound, so that a caller can allocate
    /// `manifest_len` bytes safely.
    pub(crate) fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[..8]);
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat { version });
        }
        let manifest_len = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
            return Err(Error::ManifestLength {
                len: manifest_len,
                max: MAX_MANIFEST_LEN,
            });
        }
        Ok(Header { manifest_len })
    }
}

/// Bytes of zero padding needed after `offset` to reach the next aligned offset.
pub(crate) fn padding_after(offset: u64) -> u64 {
    (ALIGNMENT - offset % ALIGNMENT) % ALIGNMENT
}

/// A reader that counts how far it has read and turns a short read into [`Error::Truncated`].
pub(crate) struct Source<R> {
    inner: R,
    pub offset: u64,
}

impl<R: Read> Source<R> {
    pub(crate) fn new(inner: R) -> Self {
        Source { inner, offset: 0 }
    }

    /// Fills `buf` completely; `what` names the part of the bundle for the truncation error.
    pub(crate) fn read_exact(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(Error::Truncated {
                        expected: (buf.len() - filled) as u64,
                        what: what(),
                    })
                }
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Error::Read { source }),
            }
        }
        Ok(())
    }

    /// Reads `len` bytes of padding and checks they are all zero.
    pub(crate) fn skip_padding(&mut self, len: u64, what: &dyn Fn() -> String) -> Result<()> {
        let mut buf = [0u8; 512];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            let start = self.offset;
            // Report the whole remaining padding as missing, not just this piece.
            self.read_exact(&mut buf[..n], what).map_err(|e| match e {
                Error::Truncated { expected, what } => Error::Truncated {
                    expected: expected + (left - n as u64),
                    what,
                },
                e => e,
            })?;
            if let Some(pos) = buf[..n].iter().position(|&b| b != 0) {
                return Err(Error::NonZeroPadding {
                    offset: start + pos as u64,
                });
            }
            left -= n as u64;
        }
        Ok(())
    }

    /// Succeeds only if the input has no more bytes.
    pub(crate) fn expect_end(&mut self) -> Result<()> {
        let mut byte = [0u8; 1];
        loop {
            match self.inner.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(Error::TrailingData {
                        offset: self.offset,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Error::Read { source }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_big_endian() {
        let bytes = Header::encode(0x0003_0201);
        assert_eq!(&bytes[..], b"CAIRNBDL\x00\x00\x00\x01\x00\x03\x02\x01");
        assert_eq!(Header::decode(&bytes).unwrap().manifest_len, 0x0003_0201);
    }

    #[test]
    fn padding_reaches_the_next_boundary() {
        assert_eq!(padding_after(0), 0);
        assert_eq!(padding_after(1), 4095);
        assert_eq!(padding_after(4096), 0);
        assert_eq!(padding_after(4097), 4095);
    }
}
