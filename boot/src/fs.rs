//! The few file operations the file-based bootloader backends ([`crate::sdboot`],
//! [`crate::tryboot`]) need, behind a trait: a real implementation on a mounted directory and a
//! test double that loses power.
//!
//! The one promise every implementation makes: a mutating call is durable when it returns, so
//! mutations reach the disk in the order they were made. A backend's power-cut argument is then
//! a statement about prefixes of its sequence of calls, and [`MemFs`] checks it by keeping
//! exactly such a prefix.
//!
//! Paths are relative, `/`-separated and plain (`loader/entries/cairn-1-a.conf`): no leading
//! `/`, no `.` or `..`, no empty component. The trait is public so that other crates can
//! provide it over something else, such as a FAT image on the build host.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Error;

/// A file system holding bootloader state.
pub trait Fs {
    /// The contents of `path`, or `None` if there is no such file. Refuses a file larger than
    /// `limit` bytes without reading it whole.
    fn read(&self, path: &str, limit: usize) -> Result<Option<Vec<u8>>, Error>;

    /// The names of the regular files directly in `dir` (`""` is the root), in no particular
    /// order. A directory that does not exist has no files.
    fn list(&self, dir: &str) -> Result<Vec<String>, Error>;

    /// Creates `path` or truncates it, writes `bytes` and makes both durable.
    fn write_new(&mut self, path: &str, bytes: &[u8]) -> Result<(), Error>;

    /// Renames `from` to `to`, replacing `to` if it exists, and makes the change durable.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error>;

    /// Removes the file `path` and makes the removal durable.
    fn remove(&mut self, path: &str) -> Result<(), Error>;
}

impl<F: Fs + ?Sized> Fs for &mut F {
    fn read(&self, path: &str, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        (**self).read(path, limit)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, Error> {
        (**self).list(dir)
    }

    fn write_new(&mut self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        (**self).write_new(path, bytes)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        (**self).rename(from, to)
    }

    fn remove(&mut self, path: &str) -> Result<(), Error> {
        (**self).remove(path)
    }
}

/// Checks that `path` is a plain relative path (see the module documentation).
pub fn check_path(path: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::BadPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.starts_with('/') {
        return bad("it is absolute");
    }
    if path.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("it has an empty, `.` or `..` component");
    }
    Ok(())
}

fn check_dir(dir: &str) -> Result<(), Error> {
    if dir.is_empty() {
        Ok(())
    } else {
        check_path(dir)
    }
}

/// The directory part of a checked path, `""` for a file in the root.
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The real file system, rooted at a directory (the mount point of the ESP or of the boot
/// partition). Durability comes from fsync on the file and on its directory.
#[derive(Debug, Clone)]
pub struct DirFs {
    root: PathBuf,
}

impl DirFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn resolve(&self, path: &str) -> Result<PathBuf, Error> {
        check_path(path)?;
        Ok(self.root.join(path))
    }

    fn resolve_dir(&self, dir: &str) -> Result<PathBuf, Error> {
        check_dir(dir)?;
        Ok(if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        })
    }

    /// Makes the directory's entries durable: a new, renamed or removed name is only on disk
    /// once its directory is synced.
    fn sync_dir(&self, dir: &str) -> Result<(), Error> {
        let full = self.resolve_dir(dir)?;
        File::open(&full)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_error("sync", &full, source))
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        action,
        what: path.display().to_string(),
        source,
    }
}

impl Fs for DirFs {
    fn read(&self, path: &str, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        let full = self.resolve(path)?;
        let file = match File::open(&full) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open", &full, e)),
        };
        let too_large = || Error::FileTooLarge {
            path: full.display().to_string(),
            limit,
        };
        let len = file
            .metadata()
            .map_err(|e| io_error("stat", &full, e))?
            .len();
        if len > limit as u64 {
            return Err(too_large());
        }
        // The file may grow between stat and read; read one byte past the limit to notice.
        let mut bytes = Vec::new();
        file.take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("read", &full, e))?;
        if bytes.len() > limit {
            return Err(too_large());
        }
        Ok(Some(bytes))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, Error> {
        let full = self.resolve_dir(dir)?;
        let entries = match std::fs::read_dir(&full) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("list", &full, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &full, e))?;
            let is_file = entry
                .file_type()
                .map_err(|e| io_error("stat", &entry.path(), e))?
                .is_file();
            if is_file {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn write_new(&mut self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        let full = self.resolve(path)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&full)
            .map_err(|e| io_error("create", &full, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write", &full, e))?;
        self.sync_dir(parent(path))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        let (full_from, full_to) = (self.resolve(from)?, self.resolve(to)?);
        std::fs::rename(&full_from, &full_to).map_err(|source| Error::Io {
            action: "rename",
            what: format!("{} to {}", full_from.display(), full_to.display()),
            source,
        })?;
        // FAT keeps a file's size in its directory entry; Linux's vfat writes the new entry's
        // size only when the inode is written back, so a renamed file must be synced again or
        // a power cut can leave it empty under its new name.
        File::open(&full_to)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error("sync", &full_to, e))?;
        self.sync_dir(parent(to))?;
        if parent(from) != parent(to) {
            self.sync_dir(parent(from))?;
        }
        Ok(())
    }

    fn remove(&mut self, path: &str) -> Result<(), Error> {
        let full = self.resolve(path)?;
        std::fs::remove_file(&full).map_err(|e| io_error("remove", &full, e))?;
        self.sync_dir(parent(path))
    }
}

type Files = BTreeMap<String, Vec<u8>>;

/// An in-memory file system for tests that can lose power.
///
/// Every mutation is a sequence of "writes" that reach the disk in order: `rename` and
/// `remove` are one write each; `write_new` is two, because a real file system makes the new
/// (or truncated) name and the data durable separately, so a cut between them leaves an empty
/// file. [`MemFs::cut_power_after`] lets a number of further writes reach the disk and drops
/// the rest silently, with every call still returning `Ok`, as a write cache would;
/// [`MemFs::persisted`] is then the disk as the next boot finds it. Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    inner: Arc<Mutex<MemFsState>>,
}

#[derive(Debug, Default)]
struct MemFsState {
    /// What the running process sees.
    live: Files,
    /// What is on the disk.
    disk: Files,
    /// Writes that may still reach the disk; `None` = no power cut planned.
    persist_budget: Option<usize>,
    /// Writes that may still succeed before every further one fails; `None` = no failure.
    fail_budget: Option<usize>,
    writes: usize,
}

impl MemFs {
    pub fn new() -> Self {
        MemFs::default()
    }

    /// A file system holding these files, all on disk.
    pub fn with_files<P, B>(files: impl IntoIterator<Item = (P, B)>) -> Self
    where
        P: Into<String>,
        B: Into<Vec<u8>>,
    {
        let files: Files = files
            .into_iter()
            .map(|(p, b)| (p.into(), b.into()))
            .collect();
        MemFs {
            inner: Arc::new(Mutex::new(MemFsState {
                disk: files.clone(),
                live: files,
                ..MemFsState::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemFsState> {
        // Poisoned only by a panicking test assertion; the files are still meaningful.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets `writes` more writes reach the disk; later ones are lost.
    pub fn cut_power_after(&self, writes: usize) {
        self.lock().persist_budget = Some(writes);
    }

    /// Lets `writes` more writes succeed; every later mutation fails with an I/O error and
    /// changes nothing.
    pub fn fail_writes_after(&self, writes: usize) {
        self.lock().fail_budget = Some(writes);
    }

    /// The disk after a reboot: the files that survived, with no cut or failure planned.
    pub fn persisted(&self) -> MemFs {
        MemFs::with_files(self.lock().disk.clone())
    }

    /// The files as the running process sees them.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock().live.clone()
    }

    /// Writes made so far, persisted or not.
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// One write: applied to the live view, and to the disk while the power lasts.
    fn write(
        &self,
        action: &'static str,
        what: &str,
        change: impl Fn(&mut Files),
    ) -> Result<(), Error> {
        let mut state = self.lock();
        if let Some(budget) = state.fail_budget.as_mut() {
            if *budget == 0 {
                return Err(Error::Io {
                    action,
                    what: what.to_string(),
                    source: io::Error::other("injected failure (MemFs)"),
                });
            }
            *budget -= 1;
        }
        change(&mut state.live);
        state.writes += 1;
        match state.persist_budget.as_mut() {
            Some(0) => {}
            Some(budget) => {
                *budget -= 1;
                change(&mut state.disk);
            }
            None => change(&mut state.disk),
        }
        Ok(())
    }

    fn require(&self, action: &'static str, path: &str) -> Result<(), Error> {
        if self.lock().live.contains_key(path) {
            Ok(())
        } else {
            Err(Error::Io {
                action,
                what: path.to_string(),
                source: io::ErrorKind::NotFound.into(),
            })
        }
    }
}

impl Fs for MemFs {
    fn read(&self, path: &str, limit: usize) -> Result<Option<Vec<u8>>, Error> {
        check_path(path)?;
        match self.lock().live.get(path) {
            None => Ok(None),
            Some(bytes) if bytes.len() > limit => Err(Error::FileTooLarge {
                path: path.to_string(),
                limit,
            }),
            Some(bytes) => Ok(Some(bytes.clone())),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, Error> {
        check_dir(dir)?;
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        Ok(self
            .lock()
            .live
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|name| !name.contains('/'))
            .map(str::to_string)
            .collect())
    }

    fn write_new(&mut self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        check_path(path)?;
        self.write("create", path, |files| {
            files.insert(path.to_string(), Vec::new());
        })?;
        self.write("write", path, |files| {
            files.insert(path.to_string(), bytes.to_vec());
        })
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        check_path(from)?;
        check_path(to)?;
        self.require("rename", from)?;
        self.write("rename", &format!("{from} to {to}"), |files| {
            if let Some(bytes) = files.remove(from) {
                files.insert(to.to_string(), bytes);
            }
        })
    }

    fn remove(&mut self, path: &str) -> Result<(), Error> {
        check_path(path)?;
        self.require("remove", path)?;
        self.write("remove", path, |files| {
            files.remove(path);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_paths() {
        for ok in ["a", "loader/entries/x.conf", ".hidden"] {
            check_path(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("a/../b", "`..`"),
            ("a//b", "empty, `.`"),
            ("./a", "`.`"),
            ("a/", "empty"),
        ] {
            let err = check_path(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn mem_fs_keeps_a_prefix_of_the_writes() {
        let mut fs = MemFs::with_files([("d/old", "x")]);
        fs.cut_power_after(2);
        fs.write_new("d/new", b"abc").unwrap(); // writes 1 and 2
        fs.rename("d/new", "d/renamed").unwrap(); // lost
        fs.remove("d/old").unwrap(); // lost
        let live = fs.files();
        assert_eq!(live.keys().collect::<Vec<_>>(), ["d/renamed"]);
        assert_eq!(fs.writes(), 4);
        let disk = fs.persisted().files();
        assert_eq!(disk.get("d/new").map(Vec::as_slice), Some(&b"abc"[..]));
        assert_eq!(disk.get("d/old").map(Vec::as_slice), Some(&b"x"[..]));
        assert_eq!(disk.len(), 2);

        let mut fs = MemFs::new();
        fs.cut_power_after(1);
        fs.write_new("f", b"data").unwrap();
        assert_eq!(
            fs.persisted().files().get("f").map(Vec::len),
            Some(0),
            "a cut inside write_new leaves an empty file"
        );
    }

    #[test]
    fn mem_fs_lists_one_level_and_reports_missing_files() {
        let mut fs = MemFs::with_files([("top", ""), ("d/a", ""), ("d/b", ""), ("d/e/deep", "")]);
        let mut names = fs.list("d").unwrap();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(fs.list("").unwrap(), ["top"]);
        assert!(fs.list("nope").unwrap().is_empty());
        assert_eq!(fs.read("nope", 10).unwrap(), None);
        let err = fs.remove("d/zz").unwrap_err().to_string();
        assert!(err.contains("remove") && err.contains("d/zz"), "{err}");
        let err = fs.rename("d/zz", "d/y").unwrap_err().to_string();
        assert!(err.contains("rename") && err.contains("d/zz"), "{err}");
        fs.write_new("big", &[0; 11]).unwrap();
        let err = fs.read("big", 10).unwrap_err().to_string();
        assert_eq!(err, "big is larger than 10 bytes; refusing to read it");
    }

    #[test]
    fn mem_fs_injected_failures_change_nothing() {
        let mut fs = MemFs::with_files([("a", "1")]);
        fs.fail_writes_after(1);
        fs.rename("a", "b").unwrap();
        let err = fs.remove("b").unwrap_err();
        assert_eq!(err.to_string(), "cannot remove b");
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("injected failure (MemFs)"));
        assert!(fs.files().contains_key("b"));
        assert_eq!(fs.persisted().files(), fs.files());
    }

    #[test]
    fn dir_fs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("loader/entries")).unwrap();
        std::fs::create_dir(dir.path().join("loader/entries/subdir")).unwrap();
        let mut fs = DirFs::new(dir.path());
        fs.write_new("loader/entries/.tmp", b"hello").unwrap();
        fs.rename("loader/entries/.tmp", "loader/entries/x.conf")
            .unwrap();
        assert_eq!(
            fs.read("loader/entries/x.conf", 5).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(fs.list("loader/entries").unwrap(), ["x.conf"]);
        let err = fs.read("loader/entries/x.conf", 4).unwrap_err().to_string();
        assert!(
            err.ends_with("x.conf is larger than 4 bytes; refusing to read it"),
            "{err}"
        );
        fs.write_new("loader/entries/x.conf", b"hi").unwrap();
        assert_eq!(
            fs.read("loader/entries/x.conf", 5).unwrap().as_deref(),
            Some(&b"hi"[..])
        );
        fs.remove("loader/entries/x.conf").unwrap();
        assert_eq!(fs.read("loader/entries/x.conf", 5).unwrap(), None);
        assert!(fs.list("missing").unwrap().is_empty());
        assert!(fs.read("../escape", 5).is_err());
        let err = fs.remove("loader/entries/x.conf").unwrap_err().to_string();
        assert!(
            err.starts_with("cannot remove ") && err.ends_with("x.conf"),
            "{err}"
        );
    }
}
