//! The kernel modules of the rest of the machine, loaded by stage 2 right after `ready`.
//!
//! Stage 1 loads only what mounting the root and the bootloader's partition takes (the board's
//! `modules`); everything else (ext4 for STATE and DATA, dm-crypt, the TPM driver, the network
//! card, input, USB) is in the root, listed in `/etc/cairn/modules-late` with its `.dep` file
//! (the format of [`crate::modules`]), and loads here, independent modules concurrently, while
//! cairnd (started just before `ready`) pages itself in.
//!
//! When it is done, init writes [`DONE`] (`/run/cairn/modules-late`): `loaded=N` and
//! `failed=name,…`. cairnd waits for that file before it touches storage or the network
//! (`cairn_daemon::bringup::wait_for_late_modules`). It is written on every boot, also when the
//! list is missing (an image from before the split: stage 1 loaded everything) or unreadable, so
//! cairnd never waits for nothing. A module that fails is one console line naming it (and those
//! that needed it); the rest still load, and the boot goes on: what the module was for fails
//! later with its own message (cairnd's storage or network lines).

use crate::log::Logger;
use crate::modules::{self, Summary};
use crate::paths::{self, Paths};
use crate::sys::Syscalls;

/// The list, in the root.
pub const MODULE_LIST: &str = "etc/cairn/modules-late";
/// Written when the list has been loaded (see the module's doc); cairnd's copy of the path is
/// `cairn_daemon::bringup::LATE_MODULES_DONE`.
pub const DONE: &str = "run/cairn/modules-late";

/// Loads the late list with `workers` modules at once; writes [`DONE`] whatever happens.
pub fn load(sys: &dyn Syscalls, log: &Logger, paths: &Paths, workers: usize) -> Summary {
    let start = sys.boottime();
    let summary = match modules::read_graph(log, paths, MODULE_LIST) {
        Ok(Some(graph)) => {
            let status = match sys.shared() {
                Some(shared) => modules::load_graph(
                    &graph,
                    workers,
                    &|e: &modules::Entry| shared.load_module(&paths.at(&e.path), &e.params),
                    &mut |_| {},
                ),
                None => modules::load_graph_inline(
                    &graph,
                    &|e: &modules::Entry| sys.load_module(&paths.at(&e.path), &e.params),
                    &mut |_| {},
                ),
            };
            let summary = modules::report(log, paths, &graph, status);
            log.info(format_args!(
                "{} late kernel modules loaded ({workers} at a time) in {} ms{}",
                summary.loaded,
                sys.boottime().saturating_sub(start).as_millis(),
                if summary.failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({} not loaded)", summary.failed.join(", "))
                }
            ));
            summary
        }
        Ok(None) => Summary::default(),
        Err(e) => {
            log.error(format_args!("{}", crate::error::chain(&e)));
            Summary::default()
        }
    };
    let done = paths.at(DONE);
    let text = format!(
        "loaded={}\nfailed={}\n",
        summary.loaded,
        summary.failed.join(",")
    );
    let written = done
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&done, text));
    if let Err(e) = written {
        log.error(format_args!(
            "writing {}: {e}; cairnd waits for it in vain",
            done.display()
        ));
    }
    summary
}

/// Modules stage 2 loads at once: `cairn.module_workers` as stage 1 reads it, else one per CPU.
pub fn workers(paths: &Paths) -> usize {
    paths::read_limited(&paths.at(paths::PROC_CMDLINE), paths::limits::CMDLINE)
        .ok()
        .and_then(|text| crate::cmdline::Cmdline::parse(&text).module_workers)
        .unwrap_or_else(modules::workers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};

    fn root(list: Option<&str>, deps: &str) -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/cairn")).unwrap();
        if let Some(list) = list {
            std::fs::write(dir.path().join(MODULE_LIST), list).unwrap();
            std::fs::write(dir.path().join(format!("{MODULE_LIST}.dep")), deps).unwrap();
        }
        let paths = Paths::under(dir.path());
        (dir, paths)
    }

    #[test]
    fn loads_the_list_and_says_so_in_the_done_file() {
        let (dir, paths) = root(
            Some(
                "usr/lib/cairn/modules-late/crc16.ko\nusr/lib/cairn/modules-late/ext4.ko\n\
                 usr/lib/cairn/modules-late/tpm_tis.ko\n",
            ),
            "ext4: crc16\n",
        );
        let sys = Fake::new();
        let (log, mem) = Logger::memory();
        let summary = load(&sys, &log, &paths, 2);
        assert_eq!(summary.loaded, 3);
        let loads: Vec<_> = sys.loaded_modules();
        assert_eq!(loads.len(), 3);
        assert!(loads.iter().all(|p| p.starts_with(dir.path())), "{loads:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(DONE)).unwrap(),
            "loaded=3\nfailed=\n"
        );
        assert!(
            mem.text()
                .contains("3 late kernel modules loaded (2 at a time) in "),
            "{}",
            mem.text()
        );
    }

    #[test]
    fn a_failing_module_is_named_the_rest_loads_and_cairnd_is_told() {
        let (dir, paths) = root(
            Some(
                "usr/lib/cairn/modules-late/crc16.ko\nusr/lib/cairn/modules-late/ext4.ko\n\
                 usr/lib/cairn/modules-late/tpm_tis.ko\n",
            ),
            "ext4: crc16\n",
        );
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("crc16.ko")),
            libc::ENOEXEC,
        );
        let (log, mem) = Logger::memory();
        let summary = load(&sys, &log, &paths, 1);
        assert_eq!(summary.loaded, 1);
        assert_eq!(summary.failed, ["crc16", "ext4"]);
        let text = mem.text();
        assert!(
            text.contains("loading kernel module crc16 (")
                && text.contains("Exec format error (os error 8)"),
            "{text}"
        );
        assert!(
            text.contains("kernel module ext4 not loaded: it needs crc16, which did not load"),
            "{text}"
        );
        assert!(
            text.contains("1 late kernel modules loaded (1 at a time) in ")
                && text.contains(" ms (crc16, ext4 not loaded)"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(DONE)).unwrap(),
            "loaded=1\nfailed=crc16,ext4\n"
        );
    }

    #[test]
    fn without_a_list_or_with_a_bad_one_the_done_file_is_still_written() {
        let (dir, paths) = root(None, "");
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        assert_eq!(load(&sys, &log, &paths, 1), Summary::default());
        assert!(sys.calls().is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(DONE)).unwrap(),
            "loaded=0\nfailed=\n"
        );

        let (dir, paths) = root(Some("a.ko\nb.ko\n"), "a: b\n");
        let (log, mem) = Logger::memory();
        load(&sys, &log, &paths, 1);
        assert!(
            mem.text()
                .contains("line 1: a dependency must come earlier in the list"),
            "{}",
            mem.text()
        );
        assert!(dir.path().join(DONE).is_file());
    }
}
