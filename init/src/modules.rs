//! Loading the kernel modules listed in the initramfs's `/etc/cairn/modules` (and, before it,
//! the watchdog's in `/etc/cairn/modules-watchdog`).
//!
//! Format: one module per line, a path relative to `/` (a leading `/` is accepted), optionally
//! followed by whitespace and module parameters passed to the kernel verbatim
//! (`lib/modules/foo.ko opt=1`). Blank lines and lines starting with `#` are skipped. The image
//! builder writes the list in dependency order; init loads it in file order with
//! `finit_module(2)` and does not resolve dependencies itself. `EEXIST` (already loaded or built
//! in) is fine; any other failure, including a missing file, is fatal and names the module.
//! Files ending in `.xz`, `.zst` or `.gz` are handed to the kernel to decompress.

use std::io;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::log::Logger;
use crate::paths::{self, limits, read_limited, Paths};
use crate::sys::Syscalls;

/// One line of the module list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the root, without a leading `/`.
    pub path: String,
    pub params: String,
}

impl Entry {
    /// The module's name as the kernel knows it: file name without `.ko[.xz|.zst|.gz]`.
    pub fn name(&self) -> &str {
        let file = self.path.rsplit('/').next().unwrap_or(&self.path);
        let file = [".xz", ".zst", ".gz"]
            .iter()
            .find_map(|ext| file.strip_suffix(ext))
            .unwrap_or(file);
        file.strip_suffix(".ko").unwrap_or(file)
    }
}

/// Parses the module list. `path` is only for error messages.
pub fn parse_list(text: &str, path: &std::path::Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| Error::ModuleList {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        if out.len() == limits::MODULES {
            return Err(bad("too many modules"));
        }
        let (file, params) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(f, p)| (f, p.trim()));
        let file = file.trim_start_matches('/');
        if file.is_empty() || file.split('/').any(|c| c == "..") {
            return Err(bad("module path must be a file below / without `..`"));
        }
        out.push(Entry {
            path: file.to_owned(),
            params: params.to_owned(),
        });
    }
    Ok(out)
}

/// Loads every module of `/etc/cairn/modules` in order. A missing list means nothing to load.
/// Returns how many modules were newly loaded.
pub fn load_all(sys: &dyn Syscalls, log: &Logger, paths: &Paths) -> Result<usize> {
    load_list(sys, log, paths, paths::MODULE_LIST)
}

/// Loads every module of the list at `list` (relative to the root) in order.
pub fn load_list(sys: &dyn Syscalls, log: &Logger, paths: &Paths, list: &str) -> Result<usize> {
    let list_path = paths.at(list);
    let text = match read_limited(&list_path, limits::MODULE_LIST) {
        Ok(t) => t,
        Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            log.info(format_args!(
                "no {}; loading no modules",
                list_path.display()
            ));
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let entries = parse_list(&text, &list_path)?;
    let mut loaded = 0;
    for entry in &entries {
        let path: PathBuf = paths.at(&entry.path);
        match sys.load_module(&path, &entry.params) {
            Ok(()) => {
                loaded += 1;
                log.debug(format_args!("loaded module {}", entry.name()));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                log.debug(format_args!("module {} already present", entry.name()));
            }
            Err(source) => {
                return Err(Error::Module {
                    name: entry.name().to_owned(),
                    path,
                    source,
                })
            }
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};
    use std::path::Path;

    fn setup(list: &str) -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/cairn")).unwrap();
        std::fs::write(dir.path().join(paths::MODULE_LIST), list).unwrap();
        let p = Paths::under(dir.path());
        (dir, p)
    }

    #[test]
    fn parses_paths_params_comments() {
        let list = "# virtio first\nlib/modules/virtio.ko\n\n/lib/modules/virtio_ring.ko\n\
                    lib/modules/virtio_blk.ko.xz  queue_depth=64 x=y\n";
        let e = parse_list(list, Path::new("m")).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].path, "lib/modules/virtio_ring.ko");
        assert_eq!(e[2].name(), "virtio_blk");
        assert_eq!(e[2].params, "queue_depth=64 x=y");
        assert_eq!(e[0].params, "");
    }

    #[test]
    fn rejects_dotdot() {
        let err =
            parse_list("a.ko\nlib/../../x.ko\n", Path::new("/etc/cairn/modules")).unwrap_err();
        assert!(
            err.to_string().starts_with("/etc/cairn/modules line 2:"),
            "{err}"
        );
    }

    #[test]
    fn loads_in_order_and_accepts_eexist() {
        let (dir, paths) = setup("lib/modules/a.ko\nlib/modules/b.ko p=1\nlib/modules/c.ko\n");
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("b.ko")),
            libc::EEXIST,
        );
        let (log, _) = Logger::memory();
        assert_eq!(load_all(&sys, &log, &paths).unwrap(), 2);
        let m =
            |n: &str, p: &str| Call::LoadModule(dir.path().join("lib/modules").join(n), p.into());
        assert_eq!(
            sys.calls(),
            [m("a.ko", ""), m("b.ko", "p=1"), m("c.ko", "")]
        );
    }

    #[test]
    fn missing_module_is_fatal_and_stops() {
        let (_dir, paths) =
            setup("lib/modules/a.ko\nlib/modules/virtio_blk.ko\nlib/modules/c.ko\n");
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("virtio_blk.ko")),
            libc::ENOENT,
        );
        let (log, _) = Logger::memory();
        let err = load_all(&sys, &log, &paths).unwrap_err();
        let line = crate::error::chain(&err);
        assert!(
            line.starts_with("loading kernel module virtio_blk ("),
            "{line}"
        );
        assert!(
            line.ends_with("No such file or directory (os error 2)"),
            "{line}"
        );
        assert_eq!(sys.calls().len(), 2, "c.ko must not be tried");
    }

    #[test]
    fn failing_module_reports_errno() {
        let (_dir, paths) = setup("lib/modules/squashfs.ko\n");
        let sys = Fake::new();
        sys.fail_when(|c| matches!(c, Call::LoadModule(..)), libc::ENOEXEC);
        let (log, _) = Logger::memory();
        let err = crate::error::chain(&load_all(&sys, &log, &paths).unwrap_err());
        assert!(
            err.contains("squashfs") && err.contains("os error 8"),
            "{err}"
        );
    }

    #[test]
    fn no_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        assert_eq!(load_all(&sys, &log, &Paths::under(dir.path())).unwrap(), 0);
        assert!(sys.calls().is_empty());
    }
}
