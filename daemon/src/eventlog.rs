//! The event log on STATE: the device's events kept across reboots, so that after a rollback
//! `cairnctl events` still tells the update from upload to rollback.
//!
//! The one idea: the file is a sequence of framed records that is only ever appended to, and a
//! reader stops at the first record that is not whole. A power cut can tear at most the record
//! being written; everything before it reads back. Opening the log cuts such a tail off, so later
//! appends are readable again. When the log outgrows its bounds, the newest records are written
//! to a temporary file, synced and renamed over it, so a power cut during that leaves the old or
//! the new file, never half of one.
//!
//! A record: the payload's length (`u32`, little endian, 1 to 16 KiB), the CRC-32 (IEEE) of the
//! payload (`u32`, little endian), the payload. The payload is opaque here; cairnd stores one
//! `cairn.v1.EventsResponse` message per record (docs/api.md).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes before a record's payload.
const HEADER: usize = 8;

/// How much the log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records kept at most; the oldest go first.
    pub records: usize,
    /// The file's size at most, headers included.
    pub bytes: u64,
    /// The largest payload accepted; a longer one is refused (and nothing is written).
    pub record: usize,
}

impl Limits {
    /// What cairnd keeps: the last 1,000 events, at most 1 MiB, 16 KiB per event.
    pub const EVENTS: Limits = Limits {
        records: 1000,
        bytes: 1 << 20,
        record: 16 << 10,
    };
}

/// What reading a log's bytes found.
#[derive(Debug, PartialEq, Eq)]
pub struct Contents {
    /// The whole records, oldest first.
    pub records: Vec<Vec<u8>>,
    /// Where the whole records end: the length the file should have.
    pub valid_len: u64,
    /// Bytes after the whole records (a torn or damaged tail).
    pub torn: u64,
}

/// Splits a log's bytes into its whole records, stopping at the first that is cut short, fails
/// its checksum, or claims a length of 0 or above `limits.record`.
pub fn parse(bytes: &[u8], limits: Limits) -> Contents {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        // An empty record is never written: zeros are what a file extended by a cut-short
        // write tends to hold.
        if len == 0 || len > limits.record {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        at += HEADER + len;
    }
    Contents {
        records,
        valid_len: at as u64,
        torn: (bytes.len() - at) as u64,
    }
}

/// One record as it goes into the file.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// An open log.
pub struct Log {
    path: PathBuf,
    file: File,
    limits: Limits,
    /// Sizes of the records in the file, oldest first (headers included).
    sizes: std::collections::VecDeque<u64>,
    len: u64,
}

/// What [`Log::open`] found besides the records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of a torn or damaged tail that were cut off.
    pub torn: u64,
    /// Old records left out to keep within the limits.
    pub dropped: usize,
}

impl Log {
    /// Opens (or creates) the log at `path` and returns it with the records it holds, oldest
    /// first. A torn tail is cut off; a log beyond its limits is compacted.
    pub fn open(path: &Path, limits: Limits) -> io::Result<(Log, Vec<Vec<u8>>, Opened)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        // Never read more than a full log and one largest record: a longer file is damaged.
        let mut bytes = Vec::new();
        (&mut file)
            .take(limits.bytes + (HEADER + limits.record) as u64)
            .read_to_end(&mut bytes)?;
        let contents = parse(&bytes, limits);
        let file_len = file.metadata()?.len();
        let torn = file_len - contents.valid_len;
        if torn > 0 {
            file.set_len(contents.valid_len)?;
            file.sync_all()?;
        }
        let mut log = Log {
            path: path.to_path_buf(),
            file,
            limits,
            sizes: contents
                .records
                .iter()
                .map(|r| (HEADER + r.len()) as u64)
                .collect(),
            len: contents.valid_len,
        };
        let mut records = contents.records;
        let keep = log.fitting(0, 0);
        let dropped = records.len() - keep;
        if dropped > 0 {
            records.drain(..dropped);
            log.rewrite(&records)?;
        }
        Ok((log, records, Opened { torn, dropped }))
    }

    /// Appends one record and syncs it. When the log would outgrow its limits, it is first
    /// rewritten with its newest records that leave room (three quarters of the limits, so
    /// that rewrites stay rare).
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.is_empty() || payload.len() > self.limits.record {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "an event of {} bytes is outside the log's limits (1 to {})",
                    payload.len(),
                    self.limits.record
                ),
            ));
        }
        let size = (HEADER + payload.len()) as u64;
        if self.sizes.len() + 1 > self.limits.records || self.len + size > self.limits.bytes {
            let keep = self.fitting(self.limits.records / 4 + 1, self.limits.bytes / 4 + size);
            let mut bytes = Vec::new();
            File::open(&self.path)?
                .take(self.len)
                .read_to_end(&mut bytes)?;
            let mut records = parse(&bytes, self.limits).records;
            records.drain(..records.len().saturating_sub(keep));
            self.rewrite(&records)?;
        }
        self.file.write_all(&frame(payload))?;
        self.file.sync_data()?;
        self.sizes.push_back(size);
        self.len += size;
        Ok(())
    }

    /// How many of the newest records fit with `spare_records` and `spare_bytes` left free.
    fn fitting(&self, spare_records: usize, spare_bytes: u64) -> usize {
        let max_records = self.limits.records.saturating_sub(spare_records);
        let max_bytes = self.limits.bytes.saturating_sub(spare_bytes);
        let mut bytes = 0;
        let mut n = 0;
        for size in self.sizes.iter().rev() {
            if n == max_records || bytes + size > max_bytes {
                break;
            }
            bytes += size;
            n += 1;
        }
        n
    }

    /// Replaces the file with `records`: a temporary file, synced, renamed over the log, and
    /// the directory synced.
    fn rewrite(&mut self, records: &[Vec<u8>]) -> io::Result<()> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = self.path.with_file_name(format!(".{name}.tmp"));
        let mut out = File::create(&temp)?;
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend_from_slice(&frame(r));
        }
        out.write_all(&bytes)?;
        out.sync_all()?;
        drop(out);
        fs::rename(&temp, &self.path)?;
        // Synced again under its new name: FAT (STATE) keeps a file's size in its directory
        // entry, which Linux's vfat writes with the inode, not with the rename.
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.sizes = records.iter().map(|r| (HEADER + r.len()) as u64).collect();
        self.len = bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        records: 8,
        bytes: 200,
        record: 64,
    };

    fn payload(i: usize) -> Vec<u8> {
        format!("event number {i}").into_bytes()
    }

    fn append_all(log: &mut Log, kept: &mut Vec<Vec<u8>>, from: usize, to: usize) {
        for i in from..to {
            let p = payload(i);
            log.append(&p).unwrap();
            kept.push(p);
        }
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let (mut log, old, opened) = Log::open(&path, SMALL).unwrap();
        assert!(old.is_empty());
        assert_eq!(opened, Opened::default());
        let mut kept = Vec::new();
        append_all(&mut log, &mut kept, 0, 3);
        drop(log);
        let (_, old, opened) = Log::open(&path, SMALL).unwrap();
        assert_eq!(old, kept);
        assert_eq!(opened, Opened::default());
    }

    #[test]
    fn a_power_cut_in_the_last_record_loses_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let (mut log, _, _) = Log::open(&path, SMALL).unwrap();
        let mut kept = Vec::new();
        append_all(&mut log, &mut kept, 0, 4);
        drop(log);
        let whole = fs::read(&path).unwrap();
        let last = frame(&payload(3)).len();
        let before = whole.len() - last;
        // Every length the last record's write can have been cut at: the first three are intact.
        for cut in before..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let (mut log, old, opened) = Log::open(&path, SMALL).unwrap();
            assert_eq!(old, kept[..3], "cut at {cut}");
            assert_eq!(opened.torn, (cut - before) as u64, "cut at {cut}");
            assert_eq!(fs::metadata(&path).unwrap().len(), before as u64);
            // What comes next is readable after the torn tail was cut off.
            log.append(b"after").unwrap();
            drop(log);
            let (_, old, _) = Log::open(&path, SMALL).unwrap();
            assert_eq!(old.last().unwrap(), b"after", "cut at {cut}");
            assert_eq!(old.len(), 4);
        }
        // Uncut, all four.
        fs::write(&path, &whole).unwrap();
        assert_eq!(Log::open(&path, SMALL).unwrap().1, kept);
    }

    #[test]
    fn a_garbage_or_damaged_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let (mut log, _, _) = Log::open(&path, SMALL).unwrap();
        let mut kept = Vec::new();
        append_all(&mut log, &mut kept, 0, 3);
        drop(log);
        let whole = fs::read(&path).unwrap();
        let last = frame(&payload(2)).len();
        let tails: Vec<Vec<u8>> = vec![
            vec![0; 40],
            vec![0xff; 3],
            b"\xff\xff\xff\xff garbage that claims a huge length".to_vec(),
            // A well-formed header whose checksum does not match.
            {
                let mut f = frame(b"hello");
                f[4] ^= 1;
                f
            },
        ];
        for tail in tails {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(&tail);
            fs::write(&path, &bytes).unwrap();
            let (_, old, opened) = Log::open(&path, SMALL).unwrap();
            assert_eq!(old, kept);
            assert_eq!(opened.torn, tail.len() as u64);
        }
        // A flipped bit in the last record's payload: that record is lost, the others read.
        let mut bytes = whole.clone();
        let n = bytes.len();
        bytes[n - 2] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let (_, old, opened) = Log::open(&path, SMALL).unwrap();
        assert_eq!(old, kept[..2]);
        assert_eq!(opened.torn, last as u64);
    }

    #[test]
    fn the_oldest_go_first_and_the_file_stays_within_its_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let (mut log, _, _) = Log::open(&path, SMALL).unwrap();
        let mut kept = Vec::new();
        append_all(&mut log, &mut kept, 0, 50);
        let len = fs::metadata(&path).unwrap().len();
        assert!(len <= SMALL.bytes, "{len}");
        drop(log);
        let (_, old, _) = Log::open(&path, SMALL).unwrap();
        assert!(
            !old.is_empty() && old.len() <= SMALL.records,
            "{}",
            old.len()
        );
        // The newest, in order, ending with the last one written.
        assert_eq!(old[..], kept[kept.len() - old.len()..]);
        assert!(!dir.path().join(".events.log.tmp").exists());
    }

    #[test]
    fn a_log_over_its_limits_is_compacted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let bytes: Vec<u8> = (0..12).flat_map(|i| frame(&payload(i))).collect();
        fs::write(&path, bytes).unwrap();
        let (_, old, opened) = Log::open(&path, SMALL).unwrap();
        assert_eq!(old.len(), 8);
        assert_eq!(opened.dropped, 4);
        assert_eq!(old[0], payload(4));
        assert_eq!(Log::open(&path, SMALL).unwrap().1, old);
    }

    #[test]
    fn any_bytes_parse_into_whole_records_within_the_limits() {
        // Valid logs with bytes flipped, cut or appended, from a fixed xorshift sequence.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid: Vec<u8> = (0..6).flat_map(|i| frame(&payload(i))).collect();
        for _ in 0..5000 {
            let mut bytes = valid.clone();
            match next() % 3 {
                0 => {
                    let at = next() as usize % bytes.len();
                    bytes[at] ^= 1 << (next() % 8);
                }
                1 => bytes.truncate(next() as usize % bytes.len()),
                _ => bytes.extend((0..next() % 64).map(|_| next() as u8)),
            }
            let c = parse(&bytes, SMALL);
            let framed: u64 = c.records.iter().map(|r| (HEADER + r.len()) as u64).sum();
            assert_eq!(framed, c.valid_len);
            assert_eq!(c.valid_len + c.torn, bytes.len() as u64);
            assert!(c
                .records
                .iter()
                .all(|r| !r.is_empty() && r.len() <= SMALL.record));
            // What reads back is always a prefix of what was written.
            let written: Vec<Vec<u8>> = (0..6).map(payload).collect();
            let n = c.records.len().min(written.len());
            assert_eq!(c.records[..n], written[..n]);
        }
    }

    #[test]
    fn an_oversized_event_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let (mut log, _, _) = Log::open(&path, SMALL).unwrap();
        let err = log.append(&[b'x'; 65]).unwrap_err();
        assert!(err.to_string().contains("(1 to 64)"), "{err}");
        assert!(log.append(b"").is_err());
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }
}
