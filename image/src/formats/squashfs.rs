//! squashfs (v4, gzip) for the read-only root slots, written with backhand's
//! `FilesystemWriter`. Reproducibility is the point: every inode is owned by 0:0, carries the
//! tree's mode and the caller's mtime, the superblock's mkfs time is that same mtime, and data
//! is written in the tree's sorted order. The image is padded to a multiple of 4096 bytes
//! because the dm-verity hash tree is appended right after it.
//!
//! backhand 0.25 offers no setter for the root directory's mtime (only mode/uid/gid), and its
//! default is 0. The only public way in is through a `FilesystemReader`, whose node list is
//! public: so a root-only image is written to memory, read back, its root header replaced, and
//! the real writer is built from that reader with `from_fs_reader`.

use std::io::{BufWriter, Cursor, Seek, Write};

use backhand::compression::Compressor;
use backhand::{
    FilesystemCompressor, FilesystemReader, FilesystemWriter, NodeHeader, DEFAULT_BLOCK_SIZE,
};

use super::error::FormatError;
use super::tree::{FileContent, NodeKind, Tree};

/// dm-verity's data block size; the image length is rounded up to it.
pub const PAD_BYTES: u64 = 4096;
/// The root directory has no node in a [`Tree`]; this is what `mksquashfs` gives it too.
pub const ROOT_MODE: u16 = 0o755;

fn gzip() -> Result<FilesystemCompressor, FormatError> {
    // No options: backhand then uses level 9, window 15 and writes no options block, which is
    // what mksquashfs -comp gzip does by default.
    FilesystemCompressor::new(Compressor::Gzip, None)
        .map_err(|source| FormatError::SquashfsWrite { source })
}

/// A filesystem that is just a root directory, used to smuggle the root's header into a
/// writer (see the module doc).
fn root_only_image() -> Result<Vec<u8>, FormatError> {
    let mut fs = FilesystemWriter::default();
    fs.set_compressor(gzip()?);
    let mut image = Cursor::new(Vec::new());
    fs.write(&mut image)
        .map_err(|source| FormatError::SquashfsWrite { source })?;
    Ok(image.into_inner())
}

/// Writes `tree` as a squashfs image starting at `out`'s current position and returns its
/// length, padding included (a multiple of [`PAD_BYTES`]).
pub fn write_squashfs<W: Write + Seek>(
    out: W,
    tree: &Tree,
    mtime: u32,
) -> Result<u64, FormatError> {
    write_squashfs_storing(out, tree, mtime, &[])
}

/// Gzip, except for the whole blocks of some files, which are stored as they are (squashfs
/// marks each block compressed or not; `mksquashfs -noD` stores every data block so). Reading
/// such a block is a copy instead of an inflate: for the binary every process of a device
/// starts from, paged in block by block through dm-verity at every boot, that is most of the
/// cost of its page faults (docs/boot-slots.md). A block is known by its content: backhand
/// hands the compressor bytes, not file names.
struct StoreSome {
    stored: std::collections::HashSet<[u8; 32]>,
}

impl StoreSome {
    fn digest(bytes: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).into()
    }
}

impl backhand::compression::CompressionAction for StoreSome {
    type Error = backhand::BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = backhand::SuperBlock;

    fn decompress(
        &self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        compressor: Self::Compressor,
    ) -> Result<(), Self::Error> {
        backhand::compression::DefaultCompressor.decompress(bytes, out, compressor)
    }

    fn compress(
        &self,
        bytes: &[u8],
        fc: Self::FilesystemCompressor,
        block_size: u32,
    ) -> Result<Vec<u8>, Self::Error> {
        if self.stored.contains(&Self::digest(bytes)) {
            // Longer than the input: backhand then writes the block as it is, flagged
            // uncompressed, exactly as for a block that does not compress.
            return Ok(vec![0; bytes.len() + 1]);
        }
        backhand::compression::DefaultCompressor.compress(bytes, fc, block_size)
    }

    fn compression_options(
        &self,
        superblock: &mut Self::SuperBlock,
        kind: &backhand::kind::Kind,
        fs_compressor: Self::FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, Self::Error> {
        backhand::compression::DefaultCompressor.compression_options(
            superblock,
            kind,
            fs_compressor,
        )
    }
}

/// The digests of the whole [`DEFAULT_BLOCK_SIZE`] blocks of the files at `paths` in `tree`.
fn whole_blocks(tree: &Tree, paths: &[&str]) -> Result<StoreSome, FormatError> {
    let mut stored = std::collections::HashSet::new();
    for (path, node) in tree.iter() {
        if !paths.contains(&path.as_str()) {
            continue;
        }
        let NodeKind::File(content) = &node.kind else {
            continue;
        };
        let mut bytes = Vec::new();
        content
            .open(path)?
            .copy_to(&mut bytes, |source| FormatError::Io {
                op: "reading a file stored uncompressed",
                offset: 0,
                source,
            })?;
        for block in bytes.chunks_exact(DEFAULT_BLOCK_SIZE as usize) {
            // A block of zeros is a hole, never compressed or stored.
            if block.iter().any(|b| *b != 0) {
                stored.insert(StoreSome::digest(block));
            }
        }
    }
    Ok(StoreSome { stored })
}

/// [`write_squashfs`], with the whole blocks of the files at `stored` (paths in `tree`) not
/// compressed.
pub fn write_squashfs_storing<W: Write + Seek>(
    mut out: W,
    tree: &Tree,
    mtime: u32,
    stored: &[&str],
) -> Result<u64, FormatError> {
    let io_err = |op, offset| move |source| FormatError::Io { op, offset, source };
    let start = out
        .stream_position()
        .map_err(io_err("finding the image start", 0))?;

    let mut seed = FilesystemReader::from_reader(Cursor::new(root_only_image()?))
        .map_err(|source| FormatError::SquashfsWrite { source })?;
    if let Some(root) = seed.root.nodes.first_mut() {
        root.header = NodeHeader::new(ROOT_MODE, 0, 0, mtime);
    }
    let mut fs = FilesystemWriter::from_fs_reader(&seed)
        .map_err(|source| FormatError::SquashfsWrite { source })?;
    if !stored.is_empty() {
        // Leaked: backhand takes a 'static compressor; one small set per image written.
        let action: &'static StoreSome = Box::leak(Box::new(whole_blocks(tree, stored)?));
        fs.set_kind(backhand::kind::Kind::new_v4(action));
    }
    fs.set_compressor(gzip()?);
    fs.set_block_size(DEFAULT_BLOCK_SIZE);
    fs.set_time(mtime);
    fs.set_only_root_id();
    fs.set_no_duplicate_files(true);
    fs.set_kib_padding((PAD_BYTES / 1024) as u32);

    for (path, node) in tree.iter() {
        // Mode is masked to 0o7777 by the tree, so it fits squashfs's 16-bit permissions.
        let header = NodeHeader::new((node.mode & 0o7777) as u16, 0, 0, mtime);
        let added = match &node.kind {
            NodeKind::Dir => fs.push_dir(path, header),
            NodeKind::Symlink(target) => fs.push_symlink(target.as_str(), path, header),
            NodeKind::File(FileContent::Bytes(bytes)) => {
                fs.push_file(Cursor::new(bytes.as_slice()), path, header)
            }
            NodeKind::File(content @ FileContent::Host(host)) => {
                // backhand opens the file only at write time and then reports a bare I/O
                // error; opening it now turns a missing file into an error that names it.
                content.open(path)?;
                fs.push_file_from_path(host.clone(), path, header)
            }
        };
        added.map_err(|source| FormatError::SquashfsAdd {
            path: path.clone(),
            source,
        })?;
    }

    let mut buffered = BufWriter::with_capacity(1024 * 1024, &mut out);
    let (_, written) = fs
        .write_with_offset(&mut buffered, start)
        .map_err(|source| FormatError::SquashfsWrite { source })?;
    buffered
        .flush()
        .map_err(io_err("flushing the image", start))?;
    drop(buffered);

    // backhand pads to the next 4 KiB already; keep the guarantee even if that changes.
    let padded = written.next_multiple_of(PAD_BYTES);
    if padded != written {
        let end = start + written;
        out.seek(std::io::SeekFrom::Start(end))
            .map_err(io_err("padding the image", end))?;
        out.write_all(&vec![0u8; (padded - written) as usize])
            .map_err(io_err("padding the image", end))?;
    }
    out.seek(std::io::SeekFrom::Start(start + padded))
        .map_err(io_err("seeking past the image", start + padded))?;
    out.flush().map_err(io_err("flushing the image", start))?;
    Ok(padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.add_file("usr/bin/cairn", 0o755, vec![7u8; 300_000])
            .unwrap();
        t.add_file("etc/os-release", 0o644, "ID=cairn\n").unwrap();
        t.add_dir("var/empty", 0o700).unwrap();
        t.add_symlink("bin", "usr/bin").unwrap();
        t
    }

    #[test]
    fn reads_back_with_backhand() {
        let mut img = Cursor::new(Vec::new());
        let len = write_squashfs(&mut img, &sample(), 1_600_000_000).unwrap();
        assert_eq!(len % PAD_BYTES, 0);
        assert_eq!(len, img.get_ref().len() as u64);
        let fs = FilesystemReader::from_reader(Cursor::new(img.into_inner())).unwrap();
        assert_eq!(fs.mod_time, 1_600_000_000);
        let paths: Vec<String> = fs
            .files()
            .map(|n| n.fullpath.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "/",
                "/bin",
                "/etc",
                "/etc/os-release",
                "/usr",
                "/usr/bin",
                "/usr/bin/cairn",
                "/var",
                "/var/empty"
            ]
        );
        for node in fs.files() {
            let h = node.header;
            assert_eq!(
                (h.uid, h.gid, h.mtime),
                (0, 0, 1_600_000_000),
                "{:?}",
                node.fullpath
            );
        }
        let root = fs.files().next().unwrap();
        assert_eq!(root.header.permissions, ROOT_MODE);
    }

    #[test]
    fn writes_at_the_current_position() {
        let mut img = Cursor::new(vec![0xEEu8; 8192]);
        img.set_position(8192);
        let len = write_squashfs(&mut img, &sample(), 0).unwrap();
        assert_eq!(img.position(), 8192 + len);
        assert_eq!(&img.get_ref()[8192..8196], b"hsqs");
        assert!(img.get_ref()[..8192].iter().all(|&b| b == 0xEE));
    }

    #[test]
    fn output_is_deterministic() {
        let (mut a, mut b) = (Cursor::new(Vec::new()), Cursor::new(Vec::new()));
        write_squashfs(&mut a, &sample(), 42).unwrap();
        write_squashfs(&mut b, &sample(), 42).unwrap();
        assert!(a.get_ref() == b.get_ref());
    }

    #[test]
    fn a_stored_file_keeps_its_whole_blocks_uncompressed_and_reads_back() {
        // Compressible content: stored, it takes its full size; gzipped, almost nothing.
        let hot: Vec<u8> = (0..400_000u32).map(|i| (i / 1000) as u8 | 1).collect();
        let mut t = Tree::new();
        t.add_file("sbin/init", 0o755, hot.clone()).unwrap();
        t.add_file("etc/big", 0o644, vec![5u8; 300_000]).unwrap();
        let (mut plain, mut stored) = (Cursor::new(Vec::new()), Cursor::new(Vec::new()));
        let plain_len = write_squashfs(&mut plain, &t, 0).unwrap();
        let stored_len = write_squashfs_storing(&mut stored, &t, 0, &["sbin/init"]).unwrap();
        // Three whole blocks of sbin/init (3 × 128 KiB) are stored; its tail and etc/big are not.
        let whole = 3 * DEFAULT_BLOCK_SIZE as u64;
        assert!(plain_len < 64 * 1024, "{plain_len}");
        assert!(
            stored_len >= whole && stored_len < whole + 64 * 1024,
            "{stored_len}"
        );
        let fs = FilesystemReader::from_reader(Cursor::new(stored.into_inner())).unwrap();
        let read = |name: &str| {
            let node = fs
                .files()
                .find(|n| n.fullpath.to_str() == Some(name))
                .unwrap();
            let backhand::InnerNode::File(file) = &node.inner else {
                panic!("{name} is not a file")
            };
            let mut out = Vec::new();
            std::io::copy(&mut fs.file(file).reader(), &mut out).unwrap();
            out
        };
        assert!(read("/sbin/init") == hot);
        assert!(read("/etc/big") == vec![5u8; 300_000]);
    }
}
