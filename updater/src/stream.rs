//! The write path of an install: verified chunks in, bytes on the target, and proof that the
//! target now holds exactly the payload.
//!
//! Three threads overlap the work, so an install runs at about the speed of the slowest of
//! hashing and writing instead of their sum:
//!
//! ```text
//! caller's thread   next chunk from the bundle (read + sha256 against chunk_hashes)
//!        │ chunk buffers (a few in flight)
//! writer            pwrite(2) at its offset; every SEGMENT: fdatasync, drop the range from the
//!        │          page cache (POSIX_FADV_DONTNEED) so the read-back comes from the device
//! reader            read the synced range back and feed the whole-payload sha256
//! ```
//!
//! The whole-payload hash of the read-back bytes is compared with the manifest's `sha256`. That
//! one pass checks both that the storage returned what was written and the payload's whole hash,
//! which is why the bundle reader is told to defer it. Memory: `IN_FLIGHT` chunk buffers plus one
//! read-back buffer, whatever the payload size.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Bytes written between syncs; each synced segment is read back while the next is written.
pub const SEGMENT: u64 = 64 * 1024 * 1024;
/// Chunk buffers queued between the verifying and the writing thread.
pub const IN_FLIGHT: usize = 3;
const READ_BACK_BUF: usize = 4 * 1024 * 1024;

/// What a finished write reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
}

/// Writes the chunks `next` yields to `target` from offset 0, then checks the read-back sha256
/// against `expected`. `next` gets a spare buffer to fill (or swap) and returns `None` after the
/// last chunk. `progress` is called with the bytes written so far. `target_name` is for errors.
pub fn write_checked(
    target: &File,
    target_name: &str,
    payload: &str,
    expected: [u8; 32],
    mut next: impl FnMut(Vec<u8>) -> Result<Option<Vec<u8>>>,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    let written = AtomicU64::new(0);
    let io_err = |action, e| Error::io(action, target_name, e);
    std::thread::scope(|scope| {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let (range_tx, range_rx) = mpsc::channel::<(u64, u64)>();

        let reader = scope.spawn(move || -> Result<[u8; 32]> {
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; READ_BACK_BUF];
            for (start, end) in range_rx {
                let mut pos = start;
                while pos < end {
                    let len = ((end - pos) as usize).min(buf.len());
                    target
                        .read_exact_at(&mut buf[..len], pos)
                        .map_err(|e| io_err("reading back", e))?;
                    hash.update(&buf[..len]);
                    pos += len as u64;
                }
            }
            Ok(hash.finalize().into())
        });

        let written_ref = &written;
        let writer = scope.spawn(move || -> Result<()> {
            let mut offset = 0u64;
            let mut synced = 0u64;
            let flush = |from: u64, to: u64| -> Result<()> {
                target.sync_data().map_err(|e| io_err("syncing", e))?;
                drop_cached(target, from, to);
                range_tx.send((from, to)).ok();
                Ok(())
            };
            for chunk in chunk_rx {
                target
                    .write_all_at(&chunk, offset)
                    .map_err(|e| io_err("writing", e))?;
                offset += chunk.len() as u64;
                written_ref.store(offset, Ordering::Relaxed);
                free_tx.send(chunk).ok();
                if offset - synced >= SEGMENT {
                    flush(synced, offset)?;
                    synced = offset;
                }
            }
            if offset > synced {
                flush(synced, offset)?;
            }
            Ok(())
        });

        // This thread: verify chunks and hand them to the writer.
        let produced = (|| -> Result<()> {
            loop {
                let spare = free_rx.try_recv().unwrap_or_default();
                let Some(chunk) = next(spare)? else {
                    return Ok(());
                };
                if chunk_tx.send(chunk).is_err() {
                    // The writer stopped; its error is the one to report.
                    return Ok(());
                }
                progress(written.load(Ordering::Relaxed));
            }
        })();
        drop(chunk_tx);
        let wrote = writer.join().expect("writer thread panicked");
        let read_back = reader.join().expect("read-back thread panicked");
        produced?;
        wrote?;
        let digest = read_back?;
        let bytes = written.load(Ordering::Relaxed);
        progress(bytes);
        if digest != expected {
            return Err(Error::ReadBack {
                payload: payload.to_string(),
                target: target_name.to_string(),
            });
        }
        Ok(Written { bytes })
    })
}

/// Asks the kernel to forget the clean cached pages of a synced range, so reading it back goes to
/// the device. Only advice: on filesystems that keep pages (tmpfs) the read-back is from memory.
fn drop_cached(file: &File, from: u64, to: u64) {
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is open for the call.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            (to - from) as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(data: &[u8], size: usize) -> impl FnMut(Vec<u8>) -> Result<Option<Vec<u8>>> + '_ {
        let mut at = 0;
        move |mut spare: Vec<u8>| {
            if at == data.len() {
                return Ok(None);
            }
            let end = (at + size).min(data.len());
            spare.clear();
            spare.extend_from_slice(&data[at..end]);
            at = end;
            Ok(Some(spare))
        }
    }

    fn target() -> (tempfile::NamedTempFile, File) {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .open(t.path())
            .unwrap();
        (t, f)
    }

    #[test]
    fn writes_and_proves_the_bytes() {
        let data: Vec<u8> = (0..(3 * 1024 * 1024 + 17))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let expected: [u8; 32] = Sha256::digest(&data).into();
        let (t, f) = target();
        let mut seen = Vec::new();
        let w = write_checked(
            &f,
            "slot",
            "rootfs",
            expected,
            pieces(&data, 65536),
            &mut |b| seen.push(b),
        )
        .unwrap();
        assert_eq!(w.bytes, data.len() as u64);
        assert_eq!(std::fs::read(t.path()).unwrap(), data);
        assert_eq!(*seen.last().unwrap(), data.len() as u64);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_wrong_whole_hash_is_a_read_back_error() {
        let data = vec![5u8; 100_000];
        let (_t, f) = target();
        let err = write_checked(
            &f,
            "ROOT-B",
            "rootfs",
            [0; 32],
            pieces(&data, 4096),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("read-back of ROOT-B does not match payload \"rootfs\""),
            "{err}"
        );
    }

    #[test]
    fn a_source_error_stops_the_write_and_is_reported() {
        let (_t, f) = target();
        let mut n = 0;
        let err = write_checked(
            &f,
            "slot",
            "rootfs",
            [0; 32],
            |mut spare: Vec<u8>| {
                n += 1;
                if n == 3 {
                    return Err(Error::Unsuitable("chunk 2 is bad".into()));
                }
                spare.clear();
                spare.resize(4096, n as u8);
                Ok(Some(spare))
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "bundle refused: chunk 2 is bad");
    }

    #[test]
    fn a_write_error_names_the_target() {
        // Read-only file: every write fails.
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = File::open(t.path()).unwrap();
        let data = vec![1u8; 300_000];
        let err = write_checked(
            &f,
            "ROOT-B",
            "rootfs",
            [0; 32],
            pieces(&data, 65536),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("writing ROOT-B: "), "{err}");
    }
}
