//! Loading the kernel modules listed in the initramfs's `/etc/cairn/modules` (and, before it,
//! the watchdog's in `/etc/cairn/modules-watchdog`), independent modules concurrently.
//!
//! Format: one module per line, a path relative to `/` (a leading `/` is accepted), optionally
//! followed by whitespace and module parameters passed to the kernel verbatim
//! (`lib/modules/foo.ko opt=1`). Blank lines and lines starting with `#` are skipped. The image
//! builder writes the list in dependency order.
//!
//! Next to a list, `<list>.dep` names each module's dependencies, one module a line:
//! `dm_verity: dm_mod dm_bufio` (from each module's `.modinfo`, resolved at image build time).
//! A dependency must come earlier in the list; one that is not in the list at all (built into
//! the kernel, or loaded by another list) is not waited for. Without a `.dep` file every module
//! waits for the one before it, so the list loads in file order as it always did.
//!
//! [`load_graph`] loads every module whose dependencies are in as soon as they are, several at a
//! time (each `finit_module(2)` runs the module's init and usually its driver's probe, which for
//! a disk controller can take tens of milliseconds under emulation), so a module never starts
//! before its dependencies have finished. `EEXIST` (already loaded or built in) is fine. A module
//! that fails is named on the console with its error; the modules that depend on it are not tried
//! and are named too; everything else still loads, so a board whose root does not need the module
//! boots on (one that does fails later, waiting for its root partition). Files ending in `.xz`,
//! `.zst` or `.gz` are handed to the kernel to decompress.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::error::{Error, Result};
use crate::log::Logger;
use crate::paths::{self, limits, read_limited, Paths};
use crate::sys::Syscalls;

/// Modules loading at once unless `cairn.module_workers` says otherwise: one per CPU. Under
/// QEMU's TCG, loading one at a time measured faster (module loading is CPU work there, and
/// the page-table and TLB changes every CPU must take part in stall a busy second CPU), so the
/// QEMU boards set `cairn.module_workers=1` (board/src/lib.rs).
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Stack of a loader thread: it only makes one syscall.
const WORKER_STACK: usize = 64 * 1024;

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

/// The modules of one list and what each waits for (indices into `entries`, always smaller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    pub entries: Vec<Entry>,
    pub deps: Vec<Vec<usize>>,
}

impl Graph {
    /// Every module waits for the one before it: the list's own order.
    pub fn chain(entries: Vec<Entry>) -> Self {
        let deps = (0..entries.len())
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        Self { entries, deps }
    }

    /// The graph of `entries` with the dependencies of a `.dep` file's `text` (`path` is for
    /// error messages). A dependency listed later than its dependent is an error (the builder
    /// writes dependency order, so that would be a cycle or a broken list).
    pub fn with_deps(entries: Vec<Entry>, text: &str, path: &Path) -> Result<Self> {
        let index = |name: &str| entries.iter().position(|e| same_name(e.name(), name));
        let mut deps = vec![Vec::new(); entries.len()];
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
            let (name, rest) = line
                .split_once(':')
                .ok_or_else(|| bad("expected `module: dependency …`"))?;
            let Some(me) = index(name.trim()) else {
                return Err(bad("names a module that is not in the list"));
            };
            for dep in rest.split_whitespace() {
                match index(dep) {
                    Some(d) if d < me => deps[me].push(d),
                    Some(_) => return Err(bad("a dependency must come earlier in the list")),
                    // Built in, or loaded by another list before this one.
                    None => {}
                }
            }
        }
        Ok(Self { entries, deps })
    }
}

/// `-` and `_` are the same in module names.
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (x == b'-' || x == b'_') && (y == b'-' || y == b'_'))
}

/// What became of one module.
#[derive(Debug)]
pub enum Status {
    Loaded,
    /// `EEXIST`: loaded before, or built in.
    Present,
    Failed(io::Error),
    /// Not tried: the module it names (by index) failed or was not tried either.
    Skipped(usize),
}

/// Which module may start next; fed with each finished one. Of the modules whose dependencies
/// are in, the one listed first starts first: the list's order is its priority (the image
/// builder lists the root's disk driver and dm-verity first).
struct Plan {
    waiting_on: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    ready: BinaryHeap<Reverse<usize>>,
    status: Vec<Option<Status>>,
}

impl Plan {
    fn new(graph: &Graph) -> Self {
        let n = graph.entries.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, deps) in graph.deps.iter().enumerate() {
            for &d in deps {
                dependents[d].push(i);
            }
        }
        let waiting_on: Vec<usize> = graph.deps.iter().map(Vec::len).collect();
        let ready = (0..n)
            .filter(|&i| waiting_on[i] == 0)
            .map(Reverse)
            .collect();
        Self {
            waiting_on,
            dependents,
            ready,
            status: (0..n).map(|_| None).collect(),
        }
    }

    fn next(&mut self) -> Option<usize> {
        self.ready.pop().map(|Reverse(i)| i)
    }

    fn finish(&mut self, i: usize, result: io::Result<()>) {
        let status = match result {
            Ok(()) => Status::Loaded,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Status::Present,
            Err(e) => Status::Failed(e),
        };
        let failed = matches!(status, Status::Failed(_));
        self.status[i] = Some(status);
        if failed {
            self.skip_dependents_of(i, i);
            return;
        }
        for k in 0..self.dependents[i].len() {
            let d = self.dependents[i][k];
            if self.status[d].is_some() {
                continue;
            }
            self.waiting_on[d] -= 1;
            if self.waiting_on[d] == 0 {
                self.ready.push(Reverse(d));
            }
        }
    }

    /// Marks everything that needs `i` (directly or not) as skipped because of `cause`.
    fn skip_dependents_of(&mut self, i: usize, cause: usize) {
        for k in 0..self.dependents[i].len() {
            let d = self.dependents[i][k];
            if self.status[d].is_none() {
                self.status[d] = Some(Status::Skipped(cause));
                self.skip_dependents_of(d, cause);
            }
        }
    }

    fn into_status(self) -> Vec<Status> {
        // Every module ends up finished or skipped: dependencies always point backwards.
        self.status
            .into_iter()
            .map(|s| s.unwrap_or(Status::Skipped(usize::MAX)))
            .collect()
    }
}

/// Loads `graph` with up to `workers` modules at once, each through `load` on a thread of its
/// own, a module only once all its dependencies have loaded. `done` runs on the calling thread
/// after each module has finished (with its index), once the modules that could start then have
/// started: the others go on loading while it runs (stage 1 sets up dm-verity in it).
pub fn load_graph(
    graph: &Graph,
    workers: usize,
    load: &(dyn Fn(&Entry) -> io::Result<()> + Sync),
    done: &mut dyn FnMut(usize),
) -> Vec<Status> {
    let mut plan = Plan::new(graph);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let mut in_flight = 0;
        let mut finished = None;
        loop {
            while in_flight < workers.max(1) {
                let Some(i) = plan.next() else { break };
                let entry = &graph.entries[i];
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .stack_size(WORKER_STACK)
                    .spawn_scoped(scope, move || {
                        let _ = tx.send((i, load(entry)));
                    });
                match spawned {
                    Ok(_) => in_flight += 1,
                    // No thread to be had: load it here and now.
                    Err(_) => {
                        plan.finish(i, load(entry));
                        done(i);
                    }
                }
            }
            if let Some(i) = finished.take() {
                done(i);
            }
            if in_flight == 0 {
                break;
            }
            // `tx` is still held here, so this waits for a worker rather than failing.
            let Ok((i, result)) = rx.recv() else { break };
            in_flight -= 1;
            plan.finish(i, result);
            finished = Some(i);
        }
    });
    plan.into_status()
}

/// [`load_graph`] one module at a time on this thread, for a loader that cannot be shared.
pub fn load_graph_inline(
    graph: &Graph,
    load: &dyn Fn(&Entry) -> io::Result<()>,
    done: &mut dyn FnMut(usize),
) -> Vec<Status> {
    let mut plan = Plan::new(graph);
    while let Some(i) = plan.next() {
        let result = load(&graph.entries[i]);
        plan.finish(i, result);
        done(i);
    }
    plan.into_status()
}

/// What loading a list came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub loaded: usize,
    /// Names of the modules that failed to load, and of those not tried because of them.
    pub failed: Vec<String>,
}

/// Loads every module of `/etc/cairn/modules`. A missing list means nothing to load.
pub fn load_all(sys: &dyn Syscalls, log: &Logger, paths: &Paths) -> Result<Summary> {
    load_list(sys, log, paths, paths::MODULE_LIST)
}

/// The graph of the list at `list` (relative to the root) and its `.dep` file, `None` without a
/// list.
pub fn read_graph(log: &Logger, paths: &Paths, list: &str) -> Result<Option<Graph>> {
    let list_path = paths.at(list);
    let text = match read_limited(&list_path, limits::MODULE_LIST) {
        Ok(t) => t,
        Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            log.info(format_args!(
                "no {}; loading no modules",
                list_path.display()
            ));
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let entries = parse_list(&text, &list_path)?;
    let dep_path = paths.at(&format!("{list}.dep"));
    match read_limited(&dep_path, limits::MODULE_LIST) {
        Ok(deps) => Graph::with_deps(entries, &deps, &dep_path).map(Some),
        Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(Some(Graph::chain(entries)))
        }
        Err(e) => Err(e),
    }
}

/// Loads every module of the list at `list` (relative to the root): concurrently where the
/// system allows it, else in dependency order on this thread. Failures are console lines.
pub fn load_list(sys: &dyn Syscalls, log: &Logger, paths: &Paths, list: &str) -> Result<Summary> {
    let Some(graph) = read_graph(log, paths, list)? else {
        return Ok(Summary::default());
    };
    let status = match sys.shared() {
        Some(shared) => load_graph(
            &graph,
            workers(),
            &|e: &Entry| shared.load_module(&paths.at(&e.path), &e.params),
            &mut |_| {},
        ),
        None => load_graph_inline(
            &graph,
            &|e: &Entry| sys.load_module(&paths.at(&e.path), &e.params),
            &mut |_| {},
        ),
    };
    Ok(report(log, paths, &graph, status))
}

/// Says what failed, one console line a module; counts what loaded.
pub fn report(log: &Logger, paths: &Paths, graph: &Graph, status: Vec<Status>) -> Summary {
    let mut out = Summary::default();
    for (i, s) in status.into_iter().enumerate() {
        let entry = &graph.entries[i];
        match s {
            Status::Loaded => {
                out.loaded += 1;
                log.debug(format_args!("loaded module {}", entry.name()));
            }
            Status::Present => {
                log.debug(format_args!("module {} already present", entry.name()));
            }
            Status::Failed(source) => {
                let path: PathBuf = paths.at(&entry.path);
                let err = Error::Module {
                    name: entry.name().to_owned(),
                    path,
                    source,
                };
                log.error(format_args!("{}", crate::error::chain(&err)));
                out.failed.push(entry.name().to_owned());
            }
            Status::Skipped(cause) => {
                let cause = graph.entries.get(cause).map_or("?", Entry::name);
                log.error(format_args!(
                    "kernel module {} not loaded: it needs {cause}, which did not load",
                    entry.name()
                ));
                out.failed.push(entry.name().to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};
    use std::path::Path;

    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    fn entries(names: &[&str]) -> Vec<Entry> {
        names
            .iter()
            .map(|n| Entry {
                path: format!("lib/modules/{n}.ko"),
                params: String::new(),
            })
            .collect()
    }

    /// A fake kernel: records when each module's load starts and ends; some probe slowly; some
    /// fail.
    struct Recorder {
        t0: Instant,
        events: Mutex<Vec<(String, bool, Duration)>>,
        in_flight: Mutex<(usize, usize)>,
        slow: Vec<(&'static str, Duration)>,
        failing: Vec<&'static str>,
    }

    impl Recorder {
        fn new(slow: Vec<(&'static str, Duration)>, failing: Vec<&'static str>) -> Self {
            Self {
                t0: Instant::now(),
                events: Mutex::new(Vec::new()),
                in_flight: Mutex::new((0, 0)),
                slow,
                failing,
            }
        }

        fn load(&self, e: &Entry) -> io::Result<()> {
            let name = e.name().to_owned();
            {
                let mut f = self.in_flight.lock().unwrap();
                f.0 += 1;
                f.1 = f.1.max(f.0);
            }
            self.events
                .lock()
                .unwrap()
                .push((name.clone(), true, self.t0.elapsed()));
            let probe = self
                .slow
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Duration::from_millis(2), |(_, d)| *d);
            std::thread::sleep(probe);
            self.events
                .lock()
                .unwrap()
                .push((name.clone(), false, self.t0.elapsed()));
            self.in_flight.lock().unwrap().0 -= 1;
            if self.failing.contains(&name.as_str()) {
                return Err(io::Error::from_raw_os_error(libc::ENOEXEC));
            }
            Ok(())
        }

        fn at(&self, name: &str, start: bool) -> Option<Duration> {
            self.events
                .lock()
                .unwrap()
                .iter()
                .find(|(n, s, _)| n == name && *s == start)
                .map(|(_, _, t)| *t)
        }

        fn started(&self) -> Vec<String> {
            self.events
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s, _)| *s)
                .map(|(n, _, _)| n.clone())
                .collect()
        }
    }

    const DEPS: &str = "virtio_blk: virtio virtio_ring\nvirtio_ring: virtio\n\
                        dm_verity: dm_mod dm_bufio\ndm_bufio: dm_mod\nsquashfs:\n\
                        nls_ascii:\nvfat: fat\n";

    fn disk_graph() -> Graph {
        let e = entries(&[
            "virtio",
            "virtio_ring",
            "virtio_blk",
            "dm_mod",
            "dm_bufio",
            "dm_verity",
            "squashfs",
            "fat",
            "vfat",
            "nls_ascii",
        ]);
        Graph::with_deps(e, DEPS, Path::new("modules.dep")).unwrap()
    }

    #[test]
    fn dependencies_finish_before_dependents_start_even_when_concurrent() {
        // Slow probes on a module with dependents and on a dependency of a chain: whatever the
        // threads do, a module starts only after every module it needs has finished.
        let graph = disk_graph();
        let fake = Recorder::new(
            vec![
                ("virtio_ring", Duration::from_millis(60)),
                ("dm_mod", Duration::from_millis(40)),
                ("fat", Duration::from_millis(30)),
            ],
            vec![],
        );
        let status = load_graph(&graph, 8, &|e: &Entry| fake.load(e), &mut |_| {});
        assert!(
            status.iter().all(|s| matches!(s, Status::Loaded)),
            "{status:?}"
        );
        for (i, deps) in graph.deps.iter().enumerate() {
            let me = graph.entries[i].name();
            let start = fake.at(me, true).unwrap();
            for &d in deps {
                let dep = graph.entries[d].name();
                let end = fake.at(dep, false).unwrap();
                assert!(
                    end <= start,
                    "{me} started at {start:?}, before {dep} ended at {end:?}"
                );
            }
        }
        // And it was concurrent: independent modules ran side by side, squashfs did not wait for
        // the slow virtio_ring before it.
        assert!(fake.in_flight.lock().unwrap().1 >= 3);
        assert!(fake.at("squashfs", false).unwrap() < fake.at("virtio_ring", false).unwrap());
    }

    #[test]
    fn one_worker_loads_in_dependency_order() {
        let graph = disk_graph();
        let fake = Recorder::new(vec![], vec![]);
        load_graph(&graph, 1, &|e: &Entry| fake.load(e), &mut |_| {});
        assert_eq!(fake.in_flight.lock().unwrap().1, 1);
        let order = fake.started();
        for (i, deps) in graph.deps.iter().enumerate() {
            let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
            for &d in deps {
                assert!(pos(graph.entries[d].name()) < pos(graph.entries[i].name()));
            }
        }
    }

    #[test]
    fn the_list_order_is_the_priority_among_ready_modules() {
        // vfat's chain and nls are ready from the start, but listed after the disk's driver and
        // dm-verity: one worker loads in list order, so the root's modules are in first.
        let e = entries(&[
            "virtio",
            "virtio_blk",
            "dm_mod",
            "dm_verity",
            "fat",
            "vfat",
            "nls_ascii",
        ]);
        let deps = "virtio_blk: virtio\ndm_verity: dm_mod\nvfat: fat\n";
        let graph = Graph::with_deps(e, deps, Path::new("m.dep")).unwrap();
        let fake = Recorder::new(vec![], vec![]);
        load_graph(&graph, 1, &|e: &Entry| fake.load(e), &mut |_| {});
        assert_eq!(
            fake.started(),
            [
                "virtio",
                "virtio_blk",
                "dm_mod",
                "dm_verity",
                "fat",
                "vfat",
                "nls_ascii"
            ]
        );
    }

    #[test]
    fn done_runs_while_the_next_module_loads() {
        // What `done` does for a finished module (stage 1: set up dm-verity) overlaps the load
        // of the next one, even with one worker.
        let graph = Graph::with_deps(entries(&["a", "b"]), "", Path::new("m.dep")).unwrap();
        let fake = Recorder::new(vec![("b", Duration::from_millis(80))], vec![]);
        let mut done_a = None;
        load_graph(&graph, 1, &|e: &Entry| fake.load(e), &mut |i| {
            if i == 0 {
                std::thread::sleep(Duration::from_millis(60));
                done_a = Some(fake.t0.elapsed());
            }
        });
        let b_started = fake.at("b", true).unwrap();
        assert!(
            b_started < done_a.unwrap() - Duration::from_millis(40),
            "b started at {b_started:?}, done(a) ended at {done_a:?}"
        );
    }

    #[test]
    fn a_failed_module_skips_its_dependents_only() {
        let graph = disk_graph();
        let fake = Recorder::new(
            vec![("dm_bufio", Duration::from_millis(20))],
            vec!["dm_mod"],
        );
        let status = load_graph(&graph, 8, &|e: &Entry| fake.load(e), &mut |_| {});
        let by_name = |n: &str| {
            let i = graph.entries.iter().position(|e| e.name() == n).unwrap();
            &status[i]
        };
        assert!(matches!(by_name("dm_mod"), Status::Failed(_)));
        assert!(matches!(by_name("dm_bufio"), Status::Skipped(3)));
        assert!(matches!(by_name("dm_verity"), Status::Skipped(3)));
        for n in ["virtio_blk", "squashfs", "vfat", "nls_ascii"] {
            assert!(matches!(by_name(n), Status::Loaded), "{n}: {status:?}");
        }
        let started = fake.started();
        assert!(!started.iter().any(|n| n == "dm_bufio" || n == "dm_verity"));
    }

    #[test]
    fn a_failed_module_is_named_and_the_rest_loads() {
        let (dir, paths) = setup(
            "lib/modules/dm-mod.ko\nlib/modules/dm-verity.ko\nlib/modules/evdev.ko\n\
             lib/modules/squashfs.ko\n",
        );
        std::fs::write(
            dir.path().join("etc/cairn/modules.dep"),
            "dm_verity: dm_mod\n",
        )
        .unwrap();
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("evdev.ko")),
            libc::ENOENT,
        );
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("dm-mod.ko")),
            libc::ENOEXEC,
        );
        let (log, mem) = Logger::memory();
        let summary = load_all(&sys, &log, &paths).unwrap();
        assert_eq!(summary.loaded, 1);
        assert_eq!(summary.failed, ["dm-mod", "dm-verity", "evdev"]);
        let text = mem.text();
        assert!(
            text.contains("loading kernel module evdev (")
                && text.contains("No such file or directory (os error 2)"),
            "{text}"
        );
        assert!(
            text.contains(
                "kernel module dm-verity not loaded: it needs dm-mod, which did not load"
            ),
            "{text}"
        );
        // dm-verity was never tried; squashfs was.
        let tried: Vec<_> = sys
            .loaded_modules()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(tried, ["dm-mod.ko", "evdev.ko", "squashfs.ko"]);
    }

    #[test]
    fn dep_file_errors_name_the_line() {
        let e = entries(&["a", "b"]);
        let err = Graph::with_deps(e.clone(), "b: a\na: b\n", Path::new("/m.dep")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/m.dep line 2: a dependency must come earlier in the list"
        );
        let err = Graph::with_deps(e.clone(), "c: a\n", Path::new("/m.dep")).unwrap_err();
        assert!(err.to_string().contains("not in the list"), "{err}");
        let err = Graph::with_deps(e.clone(), "a b\n", Path::new("/m.dep")).unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
        // Dependencies outside the list (built in, or the watchdog's) are not waited for.
        let g = Graph::with_deps(e, "b: a softdog\n", Path::new("/m.dep")).unwrap();
        assert_eq!(g.deps, [vec![], vec![0]]);
    }

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
    fn without_a_dep_file_loads_in_list_order_and_accepts_eexist() {
        let (dir, paths) = setup("lib/modules/a.ko\nlib/modules/b.ko p=1\nlib/modules/c.ko\n");
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("b.ko")),
            libc::EEXIST,
        );
        let (log, _) = Logger::memory();
        assert_eq!(load_all(&sys, &log, &paths).unwrap().loaded, 2);
        let m =
            |n: &str, p: &str| Call::LoadModule(dir.path().join("lib/modules").join(n), p.into());
        assert_eq!(
            sys.calls(),
            [m("a.ko", ""), m("b.ko", "p=1"), m("c.ko", "")]
        );
    }

    #[test]
    fn without_a_dep_file_a_failure_stops_the_modules_after_it() {
        let (_dir, paths) =
            setup("lib/modules/a.ko\nlib/modules/virtio_blk.ko\nlib/modules/c.ko\n");
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("virtio_blk.ko")),
            libc::ENOENT,
        );
        let (log, mem) = Logger::memory();
        let summary = load_all(&sys, &log, &paths).unwrap();
        assert_eq!(summary.failed, ["virtio_blk", "c"]);
        assert!(
            mem.text().contains("loading kernel module virtio_blk ("),
            "{}",
            mem.text()
        );
        assert_eq!(sys.calls().len(), 2, "c.ko must not be tried");
    }

    #[test]
    fn no_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        assert_eq!(
            load_all(&sys, &log, &Paths::under(dir.path()))
                .unwrap()
                .loaded,
            0
        );
        assert!(sys.calls().is_empty());
    }
}
