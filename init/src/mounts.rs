//! What init mounts, and reading back what is mounted (`/proc/self/mountinfo`).
//!
//! Stage 1 mounts the API filesystems ([`early`]) into the initramfs and later moves them into
//! the root; stage 2 adds a tmpfs on `/tmp` ([`tmp`]). Shutdown unmounts in the reverse order of
//! `mountinfo` (see [`crate::shutdown`]).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::sys::{Mount, MountFlags, Syscalls};

/// One planned mount; `target` is relative to the [`Paths`] root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static str,
}

/// The API filesystems, in mount order: proc, sysfs, devtmpfs, and a tmpfs for `/run`.
pub fn early() -> [Planned; 4] {
    let nse = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    [
        Planned {
            source: "proc",
            target: "proc",
            fstype: "proc",
            flags: nse,
            data: "",
        },
        Planned {
            source: "sysfs",
            target: "sys",
            fstype: "sysfs",
            flags: nse,
            data: "",
        },
        Planned {
            source: "devtmpfs",
            target: "dev",
            fstype: "devtmpfs",
            flags: MountFlags::NOSUID,
            data: "mode=0755",
        },
        Planned {
            source: "tmpfs",
            target: "run",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: "mode=0755",
        },
    ]
}

/// Stage 2's `/tmp`.
pub fn tmp() -> Planned {
    Planned {
        source: "tmpfs",
        target: "tmp",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID | MountFlags::NODEV,
        data: "mode=1777",
    }
}

/// Creates each target directory if missing, then mounts, in order.
pub fn apply(sys: &dyn Syscalls, paths: &Paths, plan: &[Planned]) -> Result<()> {
    for p in plan {
        let target = paths.at(p.target);
        ensure_dir(sys, &target)?;
        sys.mount(&Mount {
            source: p.source,
            target: &target,
            fstype: p.fstype,
            flags: p.flags,
            data: p.data,
        })
        .map_err(|source| Error::Mount {
            fstype: p.fstype.into(),
            source_name: p.source.into(),
            target: target.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `mkdir -m 0755`, accepting an existing directory (including on a read-only filesystem).
pub fn ensure_dir(sys: &dyn Syscalls, path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    match sys.mkdir(path, 0o755) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::Mkdir {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// True if `path` is on a different filesystem than its parent (so something is mounted there).
pub fn is_mount_point(path: &Path) -> bool {
    match (std::fs::metadata(path), std::fs::metadata(path.join(".."))) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Mount points from `/proc/self/mountinfo`, in mount order, with `\NNN` escapes decoded.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// Decodes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(s: &str) -> String {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::ffi::OsString::from_vec(out)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};

    #[test]
    fn early_plan_order_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Fake::new();
        apply(&sys, &Paths::under(dir.path()), &early()).unwrap();
        let calls = sys.calls();
        let mounts: Vec<(&str, String, MountFlags, &str)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    fstype,
                    target,
                    flags,
                    data,
                    ..
                } => Some((
                    fstype.as_str(),
                    target
                        .strip_prefix(dir.path())
                        .unwrap()
                        .display()
                        .to_string(),
                    *flags,
                    data.as_str(),
                )),
                _ => None,
            })
            .collect();
        let nse = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        assert_eq!(
            mounts,
            [
                ("proc", "proc".into(), nse, ""),
                ("sysfs", "sys".into(), nse, ""),
                ("devtmpfs", "dev".into(), MountFlags::NOSUID, "mode=0755"),
                (
                    "tmpfs",
                    "run".into(),
                    MountFlags::NOSUID | MountFlags::NODEV,
                    "mode=0755"
                ),
            ]
        );
        // Each mount point is created right before its mount.
        assert_eq!(calls[0], Call::Mkdir(dir.path().join("proc"), 0o755));
        assert!(matches!(&calls[1], Call::Mount { fstype, .. } if fstype == "proc"));
        assert_eq!(calls.len(), 8);
    }

    #[test]
    fn existing_dirs_are_not_recreated_and_mount_errors_name_the_target() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("proc")).unwrap();
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::Mount { fstype, .. } if fstype == "sysfs"),
            libc::ENODEV,
        );
        let err = apply(&sys, &Paths::under(dir.path()), &early()).unwrap_err();
        assert!(!sys
            .calls()
            .contains(&Call::Mkdir(dir.path().join("proc"), 0o755)));
        let line = crate::error::chain(&err);
        assert!(line.starts_with("mounting sysfs sysfs on "), "{line}");
        assert!(line.contains("/sys: No such device"), "{line}");
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Mount { fstype, .. } if fstype == "devtmpfs")));
    }

    #[test]
    fn mountinfo_with_escaped_spaces() {
        let text = "22 1 0:21 / / ro,relatime - squashfs /dev/vda2 ro\n\
            23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,mode=755\n\
            24 22 0:22 / /proc rw - proc proc rw\n\
            30 22 0:30 / /run/my\\040disk rw - tmpfs tmpfs rw\n\
            31 22 0:31 / /a\\134b\\011c rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountinfo(text),
            [
                PathBuf::from("/"),
                "/dev".into(),
                "/proc".into(),
                "/run/my disk".into(),
                "/a\\b\tc".into()
            ]
        );
    }

    #[test]
    fn unescape_leaves_non_escapes() {
        assert_eq!(unescape("\\04"), "\\04");
        assert_eq!(unescape("a\\x40b"), "a\\x40b");
        assert_eq!(unescape("\\040\\040"), "  ");
    }
}
