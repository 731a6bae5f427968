//! A FAT partition inside a disk image, seen through [`cairn_boot::fs::Fs`], so that the host
//! can read and change a machine's bootloader state (say, systemd-boot's entries on the ESP)
//! between boots with the same code the device runs.
//!
//! Every call opens the image, mounts the volume with `fatfs`, does its one operation and
//! unmounts, which flushes and fsyncs: nothing is cached between calls, and the image is never
//! held open. Not for use while a machine runs from the same image.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use cairn_boot::fs::{check_path, Fs};
use cairn_boot::Error;
use fatfs::{FileSystem, FsOptions};

use super::region::Region;

/// The FAT volume at `[offset, offset + len)` of the image file `path`.
#[derive(Debug, Clone)]
pub struct FatPartitionFs {
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl FatPartitionFs {
    pub fn new(path: impl Into<PathBuf>, offset: u64, len: u64) -> Self {
        FatPartitionFs {
            path: path.into(),
            offset,
            len,
        }
    }

    fn with_volume<T>(
        &self,
        write: bool,
        action: &'static str,
        what: &str,
        op: impl FnOnce(&FileSystem<&mut Region<'_>>) -> io::Result<T>,
    ) -> Result<T, Error> {
        let err = |source: io::Error| Error::Io {
            action,
            what: format!(
                "{what} on the FAT volume at byte {} of {}",
                self.offset,
                self.path.display()
            ),
            source,
        };
        let mut file: File = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.path)
            .map_err(err)?;
        let mut region = Region::new(&mut file, "FAT", self.offset, self.len);
        // Files get the image's fixed, valid timestamp. fatfs would otherwise stamp 1980-00-00,
        // a date UEFI's FAT driver rejects when systemd-boot renames the file (SetInfo returns
        // EFI_INVALID_PARAMETER), which silently stops boot counting.
        let options = FsOptions::new().time_provider(&super::fat::FIXED_CLOCK);
        let fs = FileSystem::new(&mut region, options).map_err(err)?;
        let out = op(&fs).map_err(err)?;
        fs.unmount().map_err(err)?;
        if write {
            file.sync_all().map_err(err)?;
        }
        Ok(out)
    }
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl Fs for FatPartitionFs {
    fn read(&self, path: &str, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        check_path(path)?;
        self.with_volume(false, "read", path, |fs| {
            let mut file = match fs.root_dir().open_file(path) {
                Ok(f) => f,
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut bytes = Vec::new();
            (&mut file).take(limit as u64 + 1).read_to_end(&mut bytes)?;
            if bytes.len() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("larger than {limit} bytes"),
                ));
            }
            Ok(Some(bytes))
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, Error> {
        if !dir.is_empty() {
            check_path(dir)?;
        }
        self.with_volume(false, "list", dir, |fs| {
            let root = fs.root_dir();
            let dir = if dir.is_empty() {
                root
            } else {
                match root.open_dir(dir) {
                    Ok(d) => d,
                    Err(e) if not_found(&e) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                }
            };
            let mut names = Vec::new();
            for entry in dir.iter() {
                let entry = entry?;
                if entry.is_file() {
                    names.push(entry.file_name());
                }
            }
            Ok(names)
        })
    }

    fn write_new(&mut self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        check_path(path)?;
        self.with_volume(true, "write", path, |fs| {
            let mut file = fs.root_dir().create_file(path)?;
            file.truncate()?;
            file.write_all(bytes)?;
            file.flush()
        })
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        check_path(from)?;
        check_path(to)?;
        self.with_volume(true, "rename", from, |fs| {
            let root = fs.root_dir();
            match root.remove(to) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e),
            }
            root.rename(from, &root, to)
        })
    }

    fn remove(&mut self, path: &str) -> Result<(), Error> {
        check_path(path)?;
        self.with_volume(true, "remove", path, |fs| fs.root_dir().remove(path))
    }
}

/// The FAT partition labelled `label` in an image built by [`crate::build`], located through its
/// image.json.
pub fn partition_fs(image_dir: &Path, disk: &Path, label: &str) -> Result<FatPartitionFs, String> {
    let json = std::fs::read_to_string(image_dir.join("image.json"))
        .map_err(|e| format!("reading {}/image.json: {e}", image_dir.display()))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("parsing image.json: {e}"))?;
    manifest_partition_fs(&manifest, disk, label)
}

/// The FAT partition labelled `label`, located through an already parsed image.json.
pub fn manifest_partition_fs(
    manifest: &serde_json::Value,
    disk: &Path,
    label: &str,
) -> Result<FatPartitionFs, String> {
    let part = manifest["partitions"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["label"] == label))
        .ok_or_else(|| format!("image.json has no partition {label}"))?;
    match (part["offset"].as_u64(), part["size"].as_u64()) {
        (Some(offset), Some(size)) => Ok(FatPartitionFs::new(disk, offset, size)),
        _ => Err(format!("image.json partition {label} lacks offset/size")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::tree::Tree;

    #[test]
    fn reads_writes_renames_and_removes_inside_a_partition() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let (offset, len) = (1 << 20, 40 << 20);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&disk)
            .unwrap();
        file.set_len(offset + len + (1 << 20)).unwrap();
        let mut tree = Tree::new();
        tree.add_file(
            "loader/entries/cairn-1-a.conf",
            0o644,
            b"title A\n".to_vec(),
        )
        .unwrap();
        super::super::fat::write_fat32(
            Region::new(&mut file, "ESP", offset, len),
            len,
            1,
            "ESP",
            &tree,
        )
        .unwrap();
        drop(file);
        let before = std::fs::read(&disk).unwrap();

        let mut fs = FatPartitionFs::new(&disk, offset, len);
        assert_eq!(
            fs.read("loader/entries/cairn-1-a.conf", 100)
                .unwrap()
                .unwrap(),
            b"title A\n"
        );
        assert_eq!(fs.read("loader/nope.conf", 100).unwrap(), None);
        assert!(fs.read("loader/entries/cairn-1-a.conf", 3).is_err());
        assert_eq!(fs.list("loader/entries").unwrap(), ["cairn-1-a.conf"]);
        assert!(fs.list("missing").unwrap().is_empty());

        fs.write_new("loader/entries/.new", b"title B\n").unwrap();
        fs.rename("loader/entries/.new", "loader/entries/cairn-2-b+3-0.conf")
            .unwrap();
        fs.remove("loader/entries/cairn-1-a.conf").unwrap();
        let mut names = fs.list("loader/entries").unwrap();
        names.sort();
        assert_eq!(names, ["cairn-2-b+3-0.conf"]);
        assert_eq!(
            fs.read("loader/entries/cairn-2-b+3-0.conf", 100)
                .unwrap()
                .unwrap(),
            b"title B\n"
        );

        // Every directory entry carries a valid date (the one the image build uses).
        let mut file = File::options().read(true).write(true).open(&disk).unwrap();
        let mut region = Region::new(&mut file, "ESP", offset, len);
        let vol = FileSystem::new(&mut region, FsOptions::new()).unwrap();
        for entry in vol.root_dir().open_dir("loader/entries").unwrap().iter() {
            let entry = entry.unwrap();
            if entry.is_file() {
                let d = entry.modified().date;
                assert!(d.month >= 1 && d.day >= 1, "{}: {d:?}", entry.file_name());
                assert!(entry.created().date.month >= 1);
            }
        }
        drop(vol);

        // Nothing outside the partition changed.
        let after = std::fs::read(&disk).unwrap();
        assert_eq!(before[..offset as usize], after[..offset as usize]);
        assert_eq!(
            before[(offset + len) as usize..],
            after[(offset + len) as usize..]
        );
    }
}
