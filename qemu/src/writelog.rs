//! Every write that reached a machine's disk, in order: QEMU's `blklogwrites` block driver
//! ([`crate::LaunchOptions::write_log`]) records them in the format of Linux's dm-log-writes,
//! and [`WriteLog`] reads them back so that a test can rebuild the disk as it stood after any
//! prefix of them: a power cut right before or right after the N-th write.
//!
//! The format (all integers little-endian): sector 0 holds the super block (`magic`
//! 0x6a736677736872, `version` 1, `nr_entries` u64, `sectorsize` u32); from sector 1 on, each
//! entry is one sector that starts with `sector`, `nr_sectors`, `flags` and `data_len` (u64
//! each), followed by `nr_sectors` sectors of the data written, except for discards, which
//! carry none. Flags: 1 flush, 2 FUA, 4 discard, 8 mark. Sector numbers and counts are in
//! units of `sectorsize`. QEMU records an entry once the write to the disk completed, so the
//! order of entries is the order in which writes became visible; the super block's count is
//! only brought up to date at flushes and every so many entries, so entries are read up to the
//! end of the file, and a count larger than what the file holds is an error.
//!
//! A prefix of the log is one state a power cut can leave (what the disk acknowledged, and
//! nothing after); it does not model a disk that reorders or drops writes it had not yet been
//! told to flush.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The super block's magic number.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
const FLUSH: u64 = 1;
const FUA: u64 = 2;
const DISCARD: u64 = 4;
const MARK: u64 = 8;

/// What one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Bytes written (FUA or not); `write zeroes` arrives as a write of zeros.
    Write,
    /// A cache flush: everything before it is on stable storage.
    Flush,
    /// A discard (TRIM): the range's contents are undefined afterwards; replays leave it as it was.
    Discard,
    /// A mark (never made by QEMU itself).
    Mark,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub op: Op,
    /// Where on the disk, in bytes.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
    /// Whether the write asked for FUA (on stable storage before it completes).
    pub fua: bool,
    /// Where the data starts in the log file (writes only).
    data_at: u64,
    /// Where the entry ends in the log file: the log holds it whole once the file is this long.
    end: u64,
}

/// A parsed write log.
#[derive(Debug)]
pub struct WriteLog {
    path: PathBuf,
    sector_size: u64,
    entries: Vec<Entry>,
}

/// A log that cannot be read; names the file and what is wrong.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl WriteLog {
    /// Reads the log at `path`: its super block and every whole entry the file holds.
    pub fn open(path: &Path) -> Result<WriteLog, Error> {
        let bad = |what: String| Error(format!("write log {}: {what}", path.display()));
        let mut file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        let mut sup = [0u8; 28];
        file.read_exact(&mut sup)
            .map_err(|_| bad("shorter than its super block".into()))?;
        if u64_at(&sup, 0) != MAGIC {
            return Err(bad("no dm-log-writes super block (wrong magic)".into()));
        }
        let version = u64_at(&sup, 8);
        if version != 1 {
            return Err(bad(format!("version {version}, not 1")));
        }
        let counted = u64_at(&sup, 16);
        let sector_size = u64::from(u32::from_le_bytes(sup[24..28].try_into().unwrap()));
        if !sector_size.is_power_of_two() || !(512..1 << 24).contains(&sector_size) {
            return Err(bad(format!("sector size {sector_size}")));
        }
        let mut entries = Vec::new();
        let mut at = sector_size;
        let mut head = [0u8; 32];
        while at + sector_size <= file_len {
            file.seek(SeekFrom::Start(at))
                .and_then(|_| file.read_exact(&mut head))
                .map_err(|e| bad(e.to_string()))?;
            let (sector, sectors, flags) = (u64_at(&head, 0), u64_at(&head, 8), u64_at(&head, 16));
            let n = entries.len();
            if flags & !(FLUSH | FUA | DISCARD | MARK) != 0 {
                return Err(bad(format!("entry {n}: unknown flags {flags:#x}")));
            }
            let op = if flags & DISCARD != 0 {
                Op::Discard
            } else if flags & MARK != 0 {
                Op::Mark
            } else if flags & FLUSH != 0 && sectors == 0 {
                Op::Flush
            } else {
                Op::Write
            };
            let data = if op == Op::Discard { 0 } else { sectors };
            let data_at = at + sector_size;
            let end = sectors
                .checked_mul(sector_size)
                .and_then(|len| data.checked_mul(sector_size).map(|d| (len, d)))
                .and_then(|(len, d)| data_at.checked_add(d).map(|e| (len, e)));
            let Some((len, end)) = end else {
                return Err(bad(format!("entry {n}: {sectors} sectors overflow")));
            };
            if end > file_len {
                // A last entry whose data did not all reach the file: the log ends before it.
                break;
            }
            entries.push(Entry {
                op,
                offset: sector * sector_size,
                len,
                fua: flags & FUA != 0,
                data_at,
                end,
            });
            at = end;
        }
        if (entries.len() as u64) < counted {
            return Err(bad(format!(
                "the super block counts {counted} entries, the file holds {}",
                entries.len()
            )));
        }
        Ok(WriteLog {
            path: path.to_path_buf(),
            sector_size,
            entries,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    /// How many entries the log held whole when its file was `file_len` bytes long: the disk's
    /// state at the instant the file had that length is this prefix of the log.
    pub fn entries_within(&self, file_len: u64) -> usize {
        self.entries.partition_point(|e| e.end <= file_len)
    }

    /// Applies entries `range` to `disk` (a copy of the disk as it was when the log began, with
    /// the entries before `range` already applied). Only writes change it.
    pub fn apply(&self, range: std::ops::Range<usize>, disk: &mut File) -> Result<(), Error> {
        let bad = |e: std::io::Error| Error(format!("replaying {}: {e}", self.path.display()));
        let mut log = File::open(&self.path).map_err(bad)?;
        let mut buf = Vec::new();
        for e in &self.entries[range] {
            if e.op != Op::Write {
                continue;
            }
            buf.resize(e.len as usize, 0);
            log.seek(SeekFrom::Start(e.data_at)).map_err(bad)?;
            log.read_exact(&mut buf).map_err(bad)?;
            disk.seek(SeekFrom::Start(e.offset)).map_err(bad)?;
            disk.write_all(&buf).map_err(bad)?;
        }
        Ok(())
    }

    /// The data of write `index` (empty for other entries).
    pub fn data(&self, index: usize) -> Result<Vec<u8>, Error> {
        let e = &self.entries[index];
        if e.op != Op::Write {
            return Ok(Vec::new());
        }
        let bad = |e: std::io::Error| Error(format!("reading {}: {e}", self.path.display()));
        let mut log = File::open(&self.path).map_err(bad)?;
        let mut buf = vec![0u8; e.len as usize];
        log.seek(SeekFrom::Start(e.data_at)).map_err(bad)?;
        log.read_exact(&mut buf).map_err(bad)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log as blklogwrites writes it, with 512-byte sectors.
    fn log(entries: &[(u64, u64, u64, Option<u8>)], counted: u64) -> Vec<u8> {
        let mut out = vec![0u8; 512];
        out[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&1u64.to_le_bytes());
        out[16..24].copy_from_slice(&counted.to_le_bytes());
        out[24..28].copy_from_slice(&512u32.to_le_bytes());
        for &(sector, sectors, flags, fill) in entries {
            let mut head = vec![0u8; 512];
            head[0..8].copy_from_slice(&sector.to_le_bytes());
            head[8..16].copy_from_slice(&sectors.to_le_bytes());
            head[16..24].copy_from_slice(&flags.to_le_bytes());
            out.extend(head);
            if let Some(b) = fill {
                out.extend(vec![b; sectors as usize * 512]);
            }
        }
        out
    }

    fn parse(bytes: &[u8]) -> Result<WriteLog, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, bytes).unwrap();
        let log = WriteLog::open(&path);
        // Keep the file for apply() in the test that needs it.
        std::mem::forget(dir);
        log
    }

    #[test]
    fn reads_writes_flushes_and_discards_and_replays_a_prefix() {
        let bytes = log(
            &[
                (2, 1, 0, Some(0xaa)),
                (0, 0, FLUSH, None),
                (4, 2, FUA, Some(0xbb)),
                (1, 8, DISCARD, None),
                (2, 1, 0, Some(0xcc)),
            ],
            2,
        );
        let log = parse(&bytes).unwrap();
        let ops: Vec<(Op, u64, u64, bool)> = log
            .entries()
            .iter()
            .map(|e| (e.op, e.offset, e.len, e.fua))
            .collect();
        assert_eq!(
            ops,
            [
                (Op::Write, 1024, 512, false),
                (Op::Flush, 0, 0, false),
                (Op::Write, 2048, 1024, true),
                (Op::Discard, 512, 4096, false),
                (Op::Write, 1024, 512, false),
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let disk_path = dir.path().join("disk");
        std::fs::write(&disk_path, vec![0u8; 4096]).unwrap();
        let mut disk = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk_path)
            .unwrap();
        // Right after the third entry: the first two writes, not the last one.
        log.apply(0..3, &mut disk).unwrap();
        let got = std::fs::read(&disk_path).unwrap();
        assert!(got[1024..1536].iter().all(|&b| b == 0xaa));
        assert!(got[2048..3072].iter().all(|&b| b == 0xbb));
        assert!(got[..1024].iter().all(|&b| b == 0));
        log.apply(3..5, &mut disk).unwrap();
        let got = std::fs::read(&disk_path).unwrap();
        assert!(got[1024..1536].iter().all(|&b| b == 0xcc));
        assert_eq!(log.data(4).unwrap(), vec![0xcc; 512]);
        // The file's length at an instant gives the entries whole by then: the first write
        // ends at 512 (super block) + 512 (head) + 512 (data); the flush is one head more, the
        // discard carries no data.
        let within: Vec<usize> = [0, 1535, 1536, 2047, 2048, 3584, 4096, 5119, 5120]
            .iter()
            .map(|&len| log.entries_within(len))
            .collect();
        assert_eq!(within, [0, 0, 1, 1, 2, 3, 4, 4, 5]);
    }

    #[test]
    fn a_cut_last_entry_ends_the_log_and_bad_logs_are_named() {
        let mut bytes = log(&[(0, 1, 0, Some(1)), (1, 4, 0, Some(2))], 1);
        bytes.truncate(bytes.len() - 512);
        assert_eq!(parse(&bytes).unwrap().entries().len(), 1);

        let short = log(&[(0, 1, 0, Some(1))], 3);
        let e = parse(&short).unwrap_err().to_string();
        assert!(e.contains("counts 3 entries, the file holds 1"), "{e}");

        let mut wrong = log(&[], 0);
        wrong[0] ^= 1;
        let e = parse(&wrong).unwrap_err().to_string();
        assert!(e.contains("wrong magic"), "{e}");

        let flags = log(&[(0, 1, 0x40, Some(1))], 0);
        let e = parse(&flags).unwrap_err().to_string();
        assert!(e.contains("entry 0: unknown flags 0x40"), "{e}");

        let e = parse(&[0u8; 10]).unwrap_err().to_string();
        assert!(e.contains("shorter than its super block"), "{e}");
    }
}
