//! Letting go of the pages of init's binary that only the boot needed.
//!
//! init is the device's one binary (cairnd is the same file). By the ready line it has run
//! stage 1, stage 2's mounts and the module loader, and the kernel has mapped every page of the
//! binary it touched, with the pages around each (fault-around): about 2 MiB of its resident
//! memory are pages of the binary, against a few dozen KiB of heap and stacks. Supervising needs
//! a small part of that code. Once the boot work is done (ready, the late modules, containers),
//! [`release_boot_pages`] drops init's mappings of the binary's read-only pages
//! (`madvise(MADV_DONTNEED)`): the pages stay in the page cache, shared with cairnd's mappings of
//! the same file, what init runs again is faulted back in, and what it never runs again can be
//! reclaimed once no one else maps it.
//!
//! Only mappings of the binary that are not writable and hold no private copy (`Anonymous: 0 kB`
//! in `/proc/self/smaps`) are dropped: there a dropped page reads back identical from the file.
//! Writable data, and read-only data written before it was protected (relocations), keep
//! their pages, since dropping those would lose what was written.

use crate::log::Logger;
use crate::paths::{read_limited, Paths};

/// `/proc/self/smaps`, and the most of it read (a static binary has a few dozen mappings).
pub const PROC_SMAPS: &str = "proc/self/smaps";
const SMAPS_LIMIT: usize = 512 * 1024;

/// One mapping to drop: `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: usize,
    pub len: usize,
}

/// The mappings of `exe` in `smaps` that are read-only and hold no private page.
pub fn droppable(smaps: &str, exe: &str) -> Vec<Region> {
    let mut out = Vec::new();
    // The mapping being read, if it is one of the binary's read-only ones, and whether a
    // non-zero `Anonymous:` was seen for it.
    let mut current: Option<(Region, bool)> = None;
    let mut finish = |current: &mut Option<(Region, bool)>| {
        if let Some((region, false)) = current.take() {
            out.push(region);
        }
    };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((lo, hi)) = first.split_once('-') {
            let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            else {
                continue;
            };
            finish(&mut current);
            let perms = words.next().unwrap_or("");
            // offset, device, inode, then the path (which may hold spaces).
            let path = line
                .split_whitespace()
                .skip(5)
                .collect::<Vec<_>>()
                .join(" ");
            let read_only = perms.starts_with('r') && !perms.contains('w');
            if read_only && path == exe && hi > lo {
                current = Some((
                    Region {
                        start: lo,
                        len: hi - lo,
                    },
                    false,
                ));
            }
        } else if first == "Anonymous:" {
            if let Some((_, written)) = current.as_mut() {
                *written |= words.next().is_some_and(|kb| kb != "0");
            }
        }
    }
    finish(&mut current);
    out
}

/// Drops init's read-only mappings of its own binary (see the module doc); returns how many
/// bytes of address space were released. Problems are one debug line: nothing depends on this.
pub fn release_boot_pages(log: &Logger, paths: &Paths) -> usize {
    let exe = match std::fs::read_link(paths.at("proc/self/exe")) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) => {
            log.debug(format_args!(
                "not releasing boot pages: /proc/self/exe: {e}"
            ));
            return 0;
        }
    };
    let smaps = match read_limited(&paths.at(PROC_SMAPS), SMAPS_LIMIT) {
        Ok(t) => t,
        Err(e) => {
            log.debug(format_args!("not releasing boot pages: {e}"));
            return 0;
        }
    };
    let mut released = 0;
    for r in droppable(&smaps, &exe) {
        // SAFETY: the range is one whole mapping of this process's own binary, read-only and
        // without private pages (checked above); MADV_DONTNEED only unmaps its pages, which
        // fault back in unchanged from the file. No memory Rust code owns is affected.
        let rc = unsafe { libc::madvise(r.start as *mut libc::c_void, r.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += r.len;
        } else {
            log.debug(format_args!(
                "madvise({:#x}, {}) failed: {}",
                r.start,
                r.len,
                std::io::Error::last_os_error()
            ));
        }
    }
    released
}

/// `rss_kib=R anon_kib=A file_kib=F` from `/proc/self/status` (what of the resident memory is
/// heap and stacks, what pages of files), or `rss_kib=unknown`.
pub fn resident_words(paths: &Paths) -> String {
    let status = read_limited(
        &paths.at(crate::paths::PROC_STATUS),
        crate::paths::limits::PROC_STATUS,
    )
    .unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    match (kib("VmRSS:"), kib("RssAnon:"), kib("RssFile:")) {
        (Some(r), Some(a), Some(f)) => format!("rss_kib={r} anon_kib={a} file_kib={f}"),
        (Some(r), ..) => format!("rss_kib={r}"),
        _ => "rss_kib=unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00400000-00401000 r--p 00000000 fd:00 12 /sbin/init
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw
00401000-00700000 r-xp 00001000 fd:00 12 /sbin/init
Size:               3068 kB
Rss:                1900 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw
00700000-00740000 r--p 00300000 fd:00 12 /sbin/init
Size:                256 kB
Anonymous:            60 kB
VmFlags: rd mr mw me dw ac
00740000-00742000 rw-p 00340000 fd:00 12 /sbin/init
Size:                  8 kB
Anonymous:             8 kB
00742000-00750000 rw-p 00000000 00:00 0 [heap]
Anonymous:            20 kB
7ffd0000-7ffd1000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7ffe0000-7ffe2000 r--p 00000000 fd:00 99 /sbin/init (deleted)
Anonymous:             0 kB
";

    #[test]
    fn only_the_binarys_clean_read_only_mappings_are_dropped() {
        assert_eq!(
            droppable(SMAPS, "/sbin/init"),
            [
                Region {
                    start: 0x400000,
                    len: 0x1000
                },
                Region {
                    start: 0x401000,
                    len: 0x2ff000
                },
            ]
        );
        // Relocated read-only data (private pages), writable data, the heap, the vDSO and
        // another file are kept.
        assert_eq!(droppable(SMAPS, "/nothing"), []);
        assert_eq!(
            droppable(SMAPS, "/sbin/init (deleted)"),
            [Region {
                start: 0x7ffe0000,
                len: 0x2000
            }]
        );
        // A mapping whose Anonymous: line is missing counts as clean only if the kernel says
        // nothing: kernels print it for every mapping, so garbage lines change nothing.
        assert_eq!(droppable("garbage\n\n-\nzz-yy r-xp\n", "/sbin/init"), []);
    }

    #[test]
    fn dropping_this_test_binarys_pages_keeps_it_running() {
        // The real call on the test process: its read-only mappings of its own executable go,
        // and the code still runs (pages fault back in) and computes the same.
        let (log, _) = Logger::memory();
        let before: u64 = (1..=1000u64).map(|x| x * x % 7).sum();
        let released = release_boot_pages(&log, &Paths::under(std::path::Path::new("/")));
        assert!(released > 0, "nothing released");
        let after: u64 = (1..=1000u64).map(|x| x * x % 7).sum();
        assert_eq!(before, after);
    }

    #[test]
    fn resident_words_come_from_status() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        let paths = Paths::under(dir.path());
        assert_eq!(resident_words(&paths), "rss_kib=unknown");
        std::fs::write(
            dir.path().join("proc/self/status"),
            "Name:\tinit\nVmRSS:\t  612 kB\nRssAnon:\t  40 kB\nRssFile:\t 572 kB\n",
        )
        .unwrap();
        assert_eq!(
            resident_words(&paths),
            "rss_kib=612 anon_kib=40 file_kib=572"
        );
    }
}
