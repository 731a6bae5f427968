//! The "newc" cpio format (magic `070701`) that the Linux kernel unpacks as an initramfs. Each
//! entry is a 110-byte ASCII header of thirteen 8-digit hex fields, the NUL-terminated name
//! padded so header+name is a multiple of 4, then the data padded to 4; a "TRAILER!!!" entry
//! ends the archive. For reproducibility every field that would normally come from `stat` is
//! fixed here: inode numbers count from 1 in the tree's sorted order, owners are 0:0, and every
//! mtime is the caller's.

use std::io::{self, Write};

use super::error::FormatError;
use super::tree::{NodeKind, Tree};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Counts bytes so padding can be computed from the archive offset.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Counting<W> {
    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write_all(&[0u8; 3][..pad])
    }
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    name: &'a str,
}

fn write_header<W: Write>(out: &mut Counting<W>, h: &Header<'_>) -> io::Result<()> {
    let namesize = h.name.len() + 1;
    // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
    // namesize check.
    write!(
        out,
        "{MAGIC}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        h.ino, h.mode, 0, 0, h.nlink, h.mtime, h.size, 0, 0, 0, 0, namesize, 0
    )?;
    out.write_all(h.name.as_bytes())?;
    out.write_all(&[0])?;
    out.pad4()
}

/// Writes `tree` as a newc archive to `out` and returns the number of bytes written. Every
/// entry gets `mtime`; the archive is byte-identical for identical trees and content.
pub fn write_cpio(out: impl Write, tree: &Tree, mtime: u32) -> Result<u64, FormatError> {
    let mut out = Counting {
        inner: out,
        written: 0,
    };
    for (ino, (path, node)) in (1u32..).zip(tree.iter()) {
        let werr = |source| FormatError::CpioWrite {
            path: path.clone(),
            source,
        };
        let too_large = |size: u64| FormatError::CpioTooLarge {
            path: path.clone(),
            size,
        };
        match &node.kind {
            NodeKind::Dir => {
                let h = Header {
                    ino,
                    mode: S_IFDIR | node.mode,
                    nlink: 2,
                    mtime,
                    size: 0,
                    name: path,
                };
                write_header(&mut out, &h).map_err(werr)?;
            }
            NodeKind::Symlink(target) => {
                let size =
                    u32::try_from(target.len()).map_err(|_| too_large(target.len() as u64))?;
                let h = Header {
                    ino,
                    mode: S_IFLNK | node.mode,
                    nlink: 1,
                    mtime,
                    size,
                    name: path,
                };
                write_header(&mut out, &h).map_err(werr)?;
                out.write_all(target.as_bytes()).map_err(werr)?;
                out.pad4().map_err(werr)?;
            }
            NodeKind::File(content) => {
                let open = content.open(path)?;
                let size = u32::try_from(open.len()).map_err(|_| too_large(open.len()))?;
                let h = Header {
                    ino,
                    mode: S_IFREG | node.mode,
                    nlink: 1,
                    mtime,
                    size,
                    name: path,
                };
                write_header(&mut out, &h).map_err(werr)?;
                open.copy_to(&mut out, werr)?;
                out.pad4().map_err(werr)?;
            }
        }
    }
    let werr = |source| FormatError::CpioWrite {
        path: TRAILER.into(),
        source,
    };
    let trailer = Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
        name: TRAILER,
    };
    write_header(&mut out, &trailer).map_err(werr)?;
    out.flush().map_err(werr)?;
    Ok(out.written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Parsed {
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        name: String,
        data: Vec<u8>,
    }

    /// A deliberately independent newc reader: fixed offsets, no shared code with the writer.
    fn parse(mut b: &[u8]) -> Vec<Parsed> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            let at = total - b.len();
            assert_eq!(at % 4, 0, "entry at unaligned offset {at}");
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (size, namesize) = (field(6) as usize, field(11) as usize);
            assert_eq!(b[110 + namesize - 1], 0, "name is NUL-terminated");
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = b[data_at..data_at + size].to_vec();
            let p = Parsed {
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                name,
                data,
            };
            let next = (data_at + size).next_multiple_of(4);
            let done = p.name == TRAILER;
            out.push(p);
            if done {
                assert_eq!(next, b.len(), "nothing after the trailer");
                return out;
            }
            b = &b[next..];
        }
    }

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.add_file("init", 0o755, "#!/bin/sh\n").unwrap();
        t.add_file("etc/os-release", 0o644, "ID=cairn\n").unwrap();
        t.add_dir("etc/secret", 0o700).unwrap();
        t.add_symlink("bin", "usr/bin").unwrap();
        t.add_file("empty", 0o600, Vec::new()).unwrap();
        t
    }

    #[test]
    fn entries_parse_back() {
        let mut buf = Vec::new();
        let n = write_cpio(&mut buf, &sample(), 1_700_000_000).unwrap();
        assert_eq!(n, buf.len() as u64);
        let entries = parse(&buf);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "empty",
                "etc",
                "etc/os-release",
                "etc/secret",
                "init",
                TRAILER
            ]
        );
        let inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 6, 0]);
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(
            (by("bin").mode, by("bin").data.as_slice()),
            (0o120777, &b"usr/bin"[..])
        );
        assert_eq!((by("etc").mode, by("etc").nlink), (0o040755, 2));
        assert_eq!(by("etc/secret").mode, 0o040700);
        assert_eq!((by("init").mode, by("init").nlink), (0o100755, 1));
        assert_eq!(by("init").data, b"#!/bin/sh\n");
        assert_eq!(by("empty").data, b"");
        for e in &entries[..entries.len() - 1] {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000), "{}", e.name);
        }
    }

    #[test]
    fn output_is_deterministic() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_cpio(&mut a, &sample(), 0).unwrap();
        write_cpio(&mut b, &sample(), 0).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn missing_host_file_names_entry_and_path() {
        let mut t = Tree::new();
        t.add_file(
            "lib/firmware.bin",
            0o644,
            std::path::PathBuf::from("/nonexistent/fw.bin"),
        )
        .unwrap();
        let err = write_cpio(Vec::new(), &t, 0).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("lib/firmware.bin") && text.contains("/nonexistent/fw.bin"),
            "{text}"
        );
    }
}
