//! A window `[offset, offset + len)` of a file that behaves like a file of its own, so that
//! the FAT and squashfs writers, which think in terms of "the device starts at 0", can format a
//! partition in place inside `disk.img`. A write that would cross the window's end fails before
//! touching the file: a wrong size must not silently spill into the next partition.
//!
//! I/O is positional (`pread`/`pwrite`), so the underlying file's own cursor is never used and
//! several regions over the same file cannot disturb one another's position.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

#[derive(Debug)]
pub struct Region<'a> {
    file: &'a mut File,
    name: String,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<'a> Region<'a> {
    /// `name` appears in error messages (a partition label is a good choice).
    pub fn new(file: &'a mut File, name: impl Into<String>, offset: u64, len: u64) -> Region<'a> {
        Region {
            file,
            name: name.into(),
            offset,
            len,
            pos: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Byte offset of the window's start in the underlying file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn absolute(&self) -> io::Result<u64> {
        self.offset.checked_add(self.pos).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("region {}: offset overflow", self.name),
            )
        })
    }
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos == self.len {
            return Ok(0);
        }
        if self.pos > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read at byte {} of region {} is past its end ({} bytes)",
                    self.pos, self.name, self.len
                ),
            ));
        }
        let room = usize::try_from(self.len - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let n = self.file.read_at(&mut buf[..want], self.absolute()?)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Region<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = self.pos.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write of {} bytes at byte {} of region {} would pass its end ({} bytes)",
                    buf.len(),
                    self.pos,
                    self.name,
                    self.len
                ),
            ));
        }
        let n = self.file.write_at(buf, self.absolute()?)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Region<'_> {
    fn seek(&mut self, target: SeekFrom) -> io::Result<u64> {
        let new = match target {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        // Seeking past the end is allowed, as for files; the next read or write reports it.
        let new = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "seek to {target:?} in region {} lands before its start",
                    self.name
                ),
            )
        })?;
        self.pos = new;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn reads_and_writes_only_inside_the_window() {
        let mut f = file_with(&[0u8; 16]);
        {
            let mut r = Region::new(&mut f, "MID", 4, 8);
            r.write_all(b"abcdefgh").unwrap();
            let err = r.write(b"i").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WriteZero);
            assert!(err.to_string().contains("MID"), "{err}");
            r.seek(SeekFrom::Start(2)).unwrap();
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, b"cdefgh");
        }
        let mut all = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"\0\0\0\0abcdefgh\0\0\0\0");
    }

    #[test]
    fn straddling_write_fails_without_writing() {
        let mut f = file_with(&[0u8; 16]);
        let mut r = Region::new(&mut f, "ESP", 0, 4);
        r.seek(SeekFrom::Start(2)).unwrap();
        assert!(r.write(b"xyz").is_err());
        r.rewind().unwrap();
        let mut back = [1u8; 4];
        r.read_exact(&mut back).unwrap();
        assert_eq!(back, [0; 4]);
    }

    #[test]
    fn seek_end_and_past_end_read() {
        let mut f = file_with(&[7u8; 16]);
        let mut r = Region::new(&mut f, "R", 8, 4);
        assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), 3);
        assert!(r.seek(SeekFrom::Current(-10)).is_err());
        r.seek(SeekFrom::Start(9)).unwrap();
        let err = r.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        r.seek(SeekFrom::Start(4)).unwrap();
        assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0);
    }
}
