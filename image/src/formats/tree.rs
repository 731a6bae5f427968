//! The in-memory description of a file tree that the cpio, FAT and squashfs writers all
//! consume. It deliberately records only what a reproducible image may depend on: the path, the
//! kind, the permission bits, and the content. Owners are always 0:0 and timestamps come from
//! the writer, so nothing about the build host leaks into the image.
//!
//! Paths are normalized relative paths ("a/b/c") kept in a `BTreeMap`, so iteration is sorted
//! and every parent comes before its children ("a" < "a/b" because a prefix sorts first).

use std::collections::btree_map::{self, BTreeMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::error::FormatError;

/// Mode given to directories created implicitly as parents of an added path.
pub const IMPLICIT_DIR_MODE: u32 = 0o755;
/// Symlink permissions are ignored by Linux; 0o777 is what `ln -s` produces.
pub const SYMLINK_MODE: u32 = 0o777;
/// Permission bits a node may carry (setuid, setgid, sticky, rwx × 3).
pub const PERMISSION_BITS: u32 = 0o7777;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    Bytes(Vec<u8>),
    /// Read when the image is written, not when the tree is built, so a tree can describe a
    /// large rootfs without holding it in memory.
    Host(PathBuf),
}

impl From<Vec<u8>> for FileContent {
    fn from(bytes: Vec<u8>) -> FileContent {
        FileContent::Bytes(bytes)
    }
}

impl From<&[u8]> for FileContent {
    fn from(bytes: &[u8]) -> FileContent {
        FileContent::Bytes(bytes.to_vec())
    }
}

impl From<&str> for FileContent {
    fn from(text: &str) -> FileContent {
        FileContent::Bytes(text.as_bytes().to_vec())
    }
}

impl From<PathBuf> for FileContent {
    fn from(path: PathBuf) -> FileContent {
        FileContent::Host(path)
    }
}

impl FileContent {
    /// Opens the content and measures it; `entry` is the tree path, for error messages.
    pub fn open(&self, entry: &str) -> Result<OpenContent<'_>, FormatError> {
        match self {
            FileContent::Bytes(bytes) => Ok(OpenContent {
                entry: entry.to_owned(),
                host: None,
                len: bytes.len() as u64,
                reader: Box::new(bytes.as_slice()),
            }),
            FileContent::Host(path) => {
                let host_err = |source| FormatError::HostFile {
                    entry: entry.to_owned(),
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(host_err)?;
                let len = file.metadata().map_err(host_err)?.len();
                Ok(OpenContent {
                    entry: entry.to_owned(),
                    host: Some(path),
                    len,
                    reader: Box::new(file),
                })
            }
        }
    }
}

/// File content opened for one copy, with its length fixed at open time because the writers
/// put the length in a header before the data.
pub struct OpenContent<'a> {
    entry: String,
    host: Option<&'a Path>,
    len: u64,
    reader: Box<dyn Read + 'a>,
}

impl OpenContent<'_> {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies exactly [`OpenContent::len`] bytes to `out`. Read failures carry the host path;
    /// write failures go through `write_err`, since only the calling writer knows what its
    /// destination is. A host file that grew or shrank since it was opened is an error, not a
    /// silently truncated or corrupt image.
    pub fn copy_to(
        mut self,
        out: &mut dyn Write,
        write_err: impl Fn(io::Error) -> FormatError,
    ) -> Result<(), FormatError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut done = 0u64;
        loop {
            let n = match self.reader.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(FormatError::HostFile {
                        entry: self.entry,
                        path: self.host.map(Path::to_path_buf).unwrap_or_default(),
                        source,
                    })
                }
            };
            if n == 0 {
                break;
            }
            done += n as u64;
            if done > self.len {
                break;
            }
            out.write_all(&buf[..n]).map_err(&write_err)?;
        }
        if done != self.len {
            return Err(FormatError::HostFileChanged {
                entry: self.entry,
                path: self.host.map(Path::to_path_buf).unwrap_or_default(),
                expected: self.len,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File(FileContent),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Permission bits only (masked with [`PERMISSION_BITS`]); the file type is in `kind`.
    pub mode: u32,
    pub kind: NodeKind,
}

impl Node {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Dir => "directory",
            NodeKind::File(_) => "file",
            NodeKind::Symlink(_) => "symlink",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds a regular file. Fails if `path` already exists.
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        content: impl Into<FileContent>,
    ) -> Result<(), FormatError> {
        self.insert(
            path,
            Node {
                mode: mode & PERMISSION_BITS,
                kind: NodeKind::File(content.into()),
            },
        )
    }

    /// Adds a directory, or sets the mode of one that exists (for example one created
    /// implicitly as a parent).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), FormatError> {
        let key = normalize(path)?;
        if let Some(node) = self.nodes.get_mut(&key) {
            if node.kind == NodeKind::Dir {
                node.mode = mode & PERMISSION_BITS;
                return Ok(());
            }
        }
        self.insert(
            path,
            Node {
                mode: mode & PERMISSION_BITS,
                kind: NodeKind::Dir,
            },
        )
    }

    /// Adds a symlink pointing at `target`, which is stored verbatim (it may be relative,
    /// absolute, or dangling; it is resolved on the device, not here).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), FormatError> {
        if target.is_empty() || target.contains('\0') {
            return Err(FormatError::TreePath {
                path: path.to_owned(),
                reason: "symlink target is empty or contains NUL",
            });
        }
        self.insert(
            path,
            Node {
                mode: SYMLINK_MODE,
                kind: NodeKind::Symlink(target.to_owned()),
            },
        )
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        normalize(path).ok().and_then(|key| self.nodes.get(&key))
    }

    /// Every node in sorted path order; parents come before their children.
    pub fn iter(&self) -> btree_map::Iter<'_, String, Node> {
        self.nodes.iter()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), FormatError> {
        let key = normalize(path)?;
        // Check every ancestor before creating any, so a failed add leaves the tree unchanged.
        let ancestors: Vec<&str> = key.match_indices('/').map(|(i, _)| &key[..i]).collect();
        for parent in &ancestors {
            if let Some(existing) = self.nodes.get(*parent) {
                if existing.kind != NodeKind::Dir {
                    return Err(FormatError::TreeParentNotDir {
                        path: key.clone(),
                        parent: (*parent).to_owned(),
                    });
                }
            }
        }
        if let Some(existing) = self.nodes.get(&key) {
            return Err(FormatError::TreeExists {
                path: key,
                existing: existing.kind_name(),
            });
        }
        for parent in ancestors {
            self.nodes.entry(parent.to_owned()).or_insert(Node {
                mode: IMPLICIT_DIR_MODE,
                kind: NodeKind::Dir,
            });
        }
        self.nodes.insert(key, node);
        Ok(())
    }
}

/// "a//b/./c/" → "a/b/c". Refuses absolute paths and `..`, which could point outside the
/// image, and NUL, which no filesystem can store.
fn normalize(path: &str) -> Result<String, FormatError> {
    let err = |reason| FormatError::TreePath {
        path: path.to_owned(),
        reason,
    };
    if path.starts_with('/') {
        return Err(err(
            "absolute paths are not allowed; use a path relative to the image root",
        ));
    }
    if path.contains('\0') {
        return Err(err("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(err("'..' is not allowed")),
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Err(err("names the image root itself"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_implicit_and_sorted_first() {
        let mut t = Tree::new();
        t.add_file("usr/lib/x.so", 0o644, "x").unwrap();
        t.add_symlink("lib", "usr/lib").unwrap();
        t.add_file("usr.txt", 0o600, "y").unwrap();
        let paths: Vec<&str> = t.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["lib", "usr", "usr.txt", "usr/lib", "usr/lib/x.so"]);
        assert_eq!(t.get("usr").unwrap().mode, IMPLICIT_DIR_MODE);
        assert_eq!(
            t.get("lib").unwrap().kind,
            NodeKind::Symlink("usr/lib".into())
        );
    }

    #[test]
    fn add_dir_sets_mode_of_implicit_parent() {
        let mut t = Tree::new();
        t.add_file("etc/ssl/cert.pem", 0o100644, "c").unwrap();
        t.add_dir("etc/ssl/", 0o700).unwrap();
        assert_eq!(t.get("etc/ssl").unwrap().mode, 0o700);
        assert_eq!(
            t.get("etc/ssl/cert.pem").unwrap().mode,
            0o644,
            "type bits are masked off"
        );
    }

    #[test]
    fn paths_are_normalized() {
        let mut t = Tree::new();
        t.add_file("./a//b/", 0o644, "x").unwrap();
        assert!(t.get("a/b").is_some());
        assert!(matches!(
            t.add_file("a/b", 0o644, "y"),
            Err(FormatError::TreeExists { .. })
        ));
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut t = Tree::new();
        for bad in ["/etc/passwd", "a/../b", "..", "", ".", "a/\0"] {
            assert!(
                matches!(t.add_dir(bad, 0o755), Err(FormatError::TreePath { .. })),
                "{bad:?}"
            );
        }
        assert!(t.is_empty());
    }

    #[test]
    fn paths_through_files_or_symlinks_are_refused() {
        let mut t = Tree::new();
        t.add_file("f", 0o644, "x").unwrap();
        t.add_symlink("s", "f").unwrap();
        let err = t.add_file("f/g/h", 0o644, "y").unwrap_err();
        assert!(
            matches!(&err, FormatError::TreeParentNotDir { parent, .. } if parent == "f"),
            "{err}"
        );
        assert!(t.add_dir("s/d", 0o755).is_err());
        assert!(t.add_dir("f", 0o755).is_err());
        assert_eq!(t.len(), 2, "failed adds leave no implicit parents behind");
    }

    #[test]
    fn host_content_is_read_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late");
        let mut t = Tree::new();
        t.add_file("late", 0o644, path.clone()).unwrap();
        std::fs::write(&path, b"written after add").unwrap();
        let NodeKind::File(content) = &t.get("late").unwrap().kind else {
            panic!()
        };
        let mut out = Vec::new();
        let open = content.open("late").unwrap();
        assert_eq!(open.len(), 17);
        open.copy_to(&mut out, |source| FormatError::CpioWrite {
            path: "late".into(),
            source,
        })
        .unwrap();
        assert_eq!(out, b"written after add");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            content.open("late"),
            Err(FormatError::HostFile { .. })
        ));
    }

    #[test]
    fn host_file_that_grows_after_open_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("growing");
        std::fs::write(&path, b"1234").unwrap();
        let content = FileContent::Host(path.clone());
        let open = content.open("growing").unwrap();
        std::fs::write(&path, b"123456789").unwrap();
        let err = open
            .copy_to(&mut Vec::new(), |source| FormatError::CpioWrite {
                path: "growing".into(),
                source,
            })
            .unwrap_err();
        assert!(
            matches!(err, FormatError::HostFileChanged { expected: 4, .. }),
            "{err}"
        );
    }
}
