//! Reading bundles: [`inspect`] without trust, and [`open_verified`] / [`verify_all`] with it.
//!
//! Verification order matters: header bounds, then the signature over the raw manifest bytes, and
//! only then the manifest's contents. Payload bytes are released one whole verified chunk at a time,
//! so a consumer (the installer writing a slot) never sees a byte that failed its hash.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::cose;
use crate::error::{Error, Result};
use crate::format::{padding_after, Header, Source, HEADER_LEN};
use crate::keys::{KeyId, Keyring};
use crate::manifest::{Manifest, PayloadEntry};

/// Reads the header and the signed manifest's bytes, for [`cose::parse`].
fn read_envelope<R: Read>(src: &mut Source<R>) -> Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    src.read_exact(&mut header, &|| "the header".to_string())?;
    // decode() bounds the length, so this allocation is at most MAX_MANIFEST_LEN.
    let header = Header::decode(&header)?;
    let mut signed = vec![0u8; header.manifest_len as usize];
    src.read_exact(&mut signed, &|| "the manifest".to_string())?;
    Ok(signed)
}

fn check_key_id(manifest: &Manifest, kid: KeyId) -> Result<()> {
    if manifest.key_id != kid {
        return Err(Error::KeyIdMismatch {
            cose: kid,
            manifest: manifest.key_id,
        });
    }
    Ok(())
}

/// Reads the header and manifest and returns the manifest and signing key id, WITHOUT checking
/// the signature or the payloads. For display only; never act on the result.
pub fn inspect(reader: impl Read) -> Result<(Manifest, KeyId)> {
    let mut src = Source::new(reader);
    let signed = read_envelope(&mut src)?;
    let envelope = cose::parse(&signed)?;
    let manifest = Manifest::from_cbor(envelope.payload_unverified())?;
    check_key_id(&manifest, envelope.kid)?;
    Ok((manifest, envelope.kid))
}

/// Opens a bundle: verifies the manifest signature against `keyring`, then decodes and validates
/// the manifest, then reads the padding up to the first payload.
pub fn open_verified<R: Read>(reader: R, keyring: &Keyring) -> Result<VerifiedBundle<R>> {
    let mut src = Source::new(reader);
    let signed = read_envelope(&mut src)?;
    let envelope = cose::parse(&signed)?;
    let payload = envelope.verify(keyring)?;
    let manifest = Manifest::from_cbor(payload)?;
    check_key_id(&manifest, envelope.kid)?;
    let padding = padding_after(src.offset);
    src.skip_padding(padding, &|| {
        "the padding before the first payload".to_string()
    })?;
    Ok(VerifiedBundle {
        payloads_at: src.offset,
        src,
        manifest,
        key_id: envelope.kid,
        next: 0,
        current: None,
        chunk: Vec::new(),
        failed: false,
        at_end: false,
        defer_whole: false,
    })
}

/// Verifies a whole bundle (signature, every chunk, every payload hash, padding, no trailing
/// bytes) and returns its manifest. Payload bytes are discarded.
pub fn verify_all(reader: impl Read, keyring: &Keyring) -> Result<Manifest> {
    let mut bundle = open_verified(reader, keyring)?;
    while bundle.next_payload()?.is_some() {}
    Ok(bundle.manifest)
}

/// Progress through the payload being read.
struct Current {
    index: usize,
    /// Chunks loaded so far (the index of the next chunk).
    chunks_loaded: u64,
    /// Payload bytes loaded so far.
    loaded: u64,
    /// Bytes of the loaded chunk already handed out.
    pos: usize,
    whole: Sha256,
}

/// A bundle whose manifest signature has been verified; its payloads are read in order.
pub struct VerifiedBundle<R> {
    src: Source<R>,
    manifest: Manifest,
    key_id: KeyId,
    next: usize,
    current: Option<Current>,
    /// The verified chunk being handed out (at most 16 MiB).
    chunk: Vec<u8>,
    /// Set by any error: after one, the position in the input is no longer meaningful.
    failed: bool,
    /// Set once the input was seen to end right after the last payload.
    at_end: bool,
    /// Skip the whole-payload sha256 (see [`VerifiedBundle::defer_payload_hashes`]).
    defer_whole: bool,
    /// Byte offset of the first payload.
    payloads_at: u64,
}

impl<R: Read> VerifiedBundle<R> {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The id of the key that signed the manifest.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The exact length of this bundle as its manifest describes it. A caller that knows the
    /// length of its input (a file) can refuse a truncated or extended bundle with this before
    /// reading any payload.
    pub fn expected_len(&self) -> u64 {
        let payloads = &self.manifest.payloads;
        let mut end = self.payloads_at;
        for (i, p) in payloads.iter().enumerate() {
            if i > 0 {
                end += padding_after(end);
            }
            end += p.size;
        }
        end
    }

    /// Leaves each payload's whole sha256 to the caller: chunks are still checked one by one
    /// before release, but the reader no longer hashes every byte a second time. The installer
    /// uses this because it hashes the bytes it wrote, read back from the slot, and compares
    /// that with the manifest's `sha256`, which checks the write and the whole hash in one pass.
    /// A caller that sets this and skips that comparison has still verified every chunk.
    pub fn defer_payload_hashes(&mut self) {
        self.defer_whole = true;
    }

    /// The next payload, or `None` after the last one. Finishes (and verifies) any payload left
    /// partly read, and checks the zero padding before the next one. Returning `None` also checks
    /// that nothing follows the last payload.
    pub fn next_payload(&mut self) -> Result<Option<PayloadReader<'_, R>>> {
        self.guard(|b| b.advance())?;
        if self.current.is_some() {
            Ok(Some(PayloadReader { bundle: self }))
        } else {
            Ok(None)
        }
    }

    /// Runs `f`, making every later call fail if it fails.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.failed {
            return Err(Error::AlreadyFailed);
        }
        let result = f(self);
        self.failed = result.is_err();
        result
    }

    fn advance(&mut self) -> Result<()> {
        if let Some(current) = &self.current {
            let size = self.manifest.payloads[current.index].size;
            while self.current.as_ref().is_some_and(|c| c.loaded < size) {
                self.load_chunk()?;
            }
            self.current = None;
        }
        if self.next == self.manifest.payloads.len() {
            if !self.at_end {
                self.src.expect_end()?;
                self.at_end = true;
            }
            return Ok(());
        }
        if self.next > 0 {
            let name = self.manifest.payloads[self.next].name.clone();
            let padding = padding_after(self.src.offset);
            self.src
                .skip_padding(padding, &|| format!("the padding before payload {name:?}"))?;
        }
        // Leftovers of the previous payload's last chunk must not count as this one's bytes.
        self.chunk.clear();
        self.current = Some(Current {
            index: self.next,
            chunks_loaded: 0,
            loaded: 0,
            pos: 0,
            whole: Sha256::new(),
        });
        self.next += 1;
        Ok(())
    }

    /// Reads the next chunk of the current payload whole and checks it (and, for the last chunk,
    /// the whole-payload hash) before any of it can be handed out.
    fn load_chunk(&mut self) -> Result<()> {
        let current = self.current.as_mut().expect("a payload is being read");
        let entry: &PayloadEntry = &self.manifest.payloads[current.index];
        let remaining = entry.size - current.loaded;
        let len = remaining.min(u64::from(entry.chunk_size)) as usize;
        self.chunk.clear();
        current.pos = 0;
        self.chunk.resize(len, 0);
        let what = || format!("payload {:?}", entry.name);
        self.src
            .read_exact(&mut self.chunk, &what)
            .map_err(|e| match e {
                Error::Truncated { expected, what } => Error::Truncated {
                    expected: expected + (remaining - len as u64),
                    what,
                },
                e => e,
            })?;
        let index = current.chunks_loaded;
        let digest: [u8; 32] = Sha256::digest(&self.chunk).into();
        if digest != entry.chunk_hashes[index as usize] {
            self.chunk.clear();
            return Err(Error::ChunkMismatch {
                payload: entry.name.clone(),
                chunk: index,
                chunks: entry.chunk_hashes.len() as u64,
                start: current.loaded,
                end: current.loaded + len as u64,
            });
        }
        if !self.defer_whole {
            current.whole.update(&self.chunk);
        }
        current.chunks_loaded += 1;
        current.loaded += len as u64;
        if current.loaded == entry.size && !self.defer_whole {
            let whole: [u8; 32] = current.whole.clone().finalize().into();
            if whole != entry.sha256 {
                self.chunk.clear();
                return Err(Error::PayloadMismatch {
                    payload: entry.name.clone(),
                });
            }
        }
        Ok(())
    }

    fn read_current(&mut self, out: &mut [u8]) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let Some(current) = &self.current else {
            return Ok(0);
        };
        if current.pos == self.chunk.len() {
            if current.loaded == self.manifest.payloads[current.index].size {
                return Ok(0);
            }
            self.load_chunk()?;
        }
        let current = self.current.as_mut().expect("a payload is being read");
        let n = out.len().min(self.chunk.len() - current.pos);
        out[..n].copy_from_slice(&self.chunk[current.pos..current.pos + n]);
        current.pos += n;
        Ok(n)
    }
}

/// One payload's verified bytes. An error is an `io::Error` wrapping this crate's [`Error`]
/// (recover it with [`Error::from_io`]); after one, the bundle yields only errors.
pub struct PayloadReader<'a, R> {
    bundle: &'a mut VerifiedBundle<R>,
}

impl<R: Read> PayloadReader<'_, R> {
    /// The manifest entry of this payload.
    pub fn entry(&self) -> &PayloadEntry {
        let index = self
            .bundle
            .current
            .as_ref()
            .expect("a payload reader exists only while a payload is being read")
            .index;
        &self.bundle.manifest.payloads[index]
    }
}

impl<R: Read> PayloadReader<'_, R> {
    /// The next verified chunk of this payload without copying it: the chunk's buffer is
    /// swapped with `spare` (whose contents are discarded) and returned; `None` after the last
    /// chunk. Bytes of a chunk partly consumed through [`Read`] come first, as a shorter piece.
    pub fn take_chunk(&mut self, spare: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.bundle.guard(|b| {
            let Some(current) = &b.current else {
                return Ok(None);
            };
            if current.pos == b.chunk.len() {
                if current.loaded == b.manifest.payloads[current.index].size {
                    return Ok(None);
                }
                b.load_chunk()?;
            }
            let current = b.current.as_mut().expect("a payload is being read");
            let pos = std::mem::take(&mut current.pos);
            let mut out = std::mem::replace(&mut b.chunk, spare);
            b.chunk.clear();
            if pos > 0 {
                out.drain(..pos);
            }
            Ok(Some(out))
        })
    }
}

impl<R: Read> Read for PayloadReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.bundle
            .guard(|b| b.read_current(out))
            .map_err(io::Error::other)
    }
}
