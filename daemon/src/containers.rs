//! The host containers capability: the machine config's `containers:` run through containerd
//! ([`crate::containerd`]), each restarted by its policy, its output kept for
//! `cairnctl logs <name>`, listed with its memory in `cairnctl services`, and gating every
//! update's trial ([`Gate`]: `container <name>` is running and its probe passes).
//!
//! The one idea: each container is a [`Unit`] with a thread of its own that checks the image
//! archive (an archive that is not an OCI image, or is for another architecture, stops that
//! container with one line and touches nothing else), imports it, then runs `ctr run` and waits
//! for it, again and again as the restart policy says. Everything the API and the health gate
//! show is read from the units' state; nothing else drives containerd.
//!
//! Also here: the container runtime's writable state on DATA ([`prepare_state`]), which k3s
//! relies on too. The config's `containers:` section is read when cairnd starts; a change over
//! the API takes effect at cairnd's next start.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use cairn_api::proto;
use cairn_facts::containers::{
    name_problem, Container, ImageSource, Restart, Volume, ARCHIVE_DIR, PULLED_DIR,
};
use cairn_updater::health::Check;

use crate::block;
use crate::containerd::{self, refusal, runtime_present, Containerd, Paths, RunSpec};
use crate::health::Gate;
use crate::journal::Ring;
use crate::log::{say, unix_ms};
use crate::oci;

/// Lines of output kept per container.
pub const LOG_LINES: usize = 500;
/// Longest line kept; longer ones are cut (so a log holds at most 512 KiB of text).
const MAX_LINE: usize = 1024;
/// First wait before a restart; it doubles up to [`MAX_BACKOFF`] while the container keeps
/// exiting within [`STABLE`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE: Duration = Duration::from_secs(30);
/// How often a container whose archive is missing looks for it again.
const ARCHIVE_POLL: Duration = Duration::from_secs(2);
/// The pause after a registry could not be reached, doubling up to the second.
const PULL_RETRY: Duration = Duration::from_secs(5);
const PULL_RETRY_MAX: Duration = Duration::from_secs(300);
/// Largest archive copied from a stick.
pub const MAX_ARCHIVE: u64 = 4 << 30;
/// Under containerd's root: per container, the manifest digest last imported for it.
const IMPORTED: &str = "cairn-imported";
/// Stack of the threads per container (supervisor and two output readers): they hold little.
const STACK: usize = 128 * 1024;

/// The writable state of the container runtime on DATA, and the /etc paths bound to it:
/// (directory on DATA, where it is bound, whether programs run from it).
pub const STATE_DIRS: [(&str, Option<&str>, bool); 5] = [
    ("/var/lib/containerd", None, true),
    ("/var/lib/rancher", None, true),
    ("/var/lib/cni", None, false),
    ("/var/lib/cairn-etc/cni", Some("/etc/cni"), false),
    ("/var/lib/cairn-etc/rancher", Some("/etc/rancher"), false),
];

/// Makes the runtime's state directories on DATA and binds them where the runtime looks:
/// /var/lib/containerd and /var/lib/rancher onto themselves so images' programs may run (DATA
/// is mounted `noexec`), /etc/cni and /etc/rancher (read-only in the root) onto their copies
/// under /var/lib/cairn-etc. Both slots share them; they survive updates and rollbacks.
///
/// DATA must be mounted on /var (ext4, encrypted or not). On a DATA an older release made FAT
/// (no symlinks, owners or overlayfs upper directories), /var/lib/containerd and
/// /var/lib/rancher are memory (tmpfs) instead, said once: images are imported again from their
/// archives at every boot.
pub fn prepare_state() -> Result<(), String> {
    if !block::is_mount_point(Path::new("/var")) {
        return Err(
            "DATA is not mounted on /var (the console says why); host containers need it".into(),
        );
    }
    for (dir, bound_on, exec) in STATE_DIRS {
        fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
        match bound_on {
            Some(target) => block::bind_once(Path::new(dir), Path::new(target), exec)?,
            None if exec && block::is_fat(Path::new(dir)) => {
                say!("{dir}: DATA is FAT, which cannot hold container layers; kept in memory (tmpfs) instead");
                block::tmpfs_once(Path::new(dir))?
            }
            None if exec => block::bind_once(Path::new(dir), Path::new(dir), true)?,
            None => {}
        }
    }
    Ok(())
}

/// Copies the OCI archives a stick carries (`<stick>/containers/<name>.tar`, `<name>` a
/// container-name-like label) to [`ARCHIVE_DIR`] on DATA, each through a temporary file renamed
/// into place, so a container never sees half an archive. Returns what was copied; a bad entry
/// is skipped with a line saying why.
pub fn take_archives(stick: &Path, into: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(stick.join("containers")) else {
        return Vec::new();
    };
    let mut copied = Vec::new();
    for entry in entries.flatten().take(64) {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let Some(stem) = file.strip_suffix(".tar") else {
            continue;
        };
        if let Some(why) = name_problem(stem) {
            say!("containers/{file} on the stick skipped: {why}");
            continue;
        }
        let result = (|| -> Result<(), String> {
            let len = entry.metadata().map_err(|e| e.to_string())?.len();
            if len > MAX_ARCHIVE {
                return Err(format!("larger than {MAX_ARCHIVE} bytes"));
            }
            fs::create_dir_all(into).map_err(|e| format!("creating {}: {e}", into.display()))?;
            let part = into.join(format!(".{file}.part"));
            fs::copy(entry.path(), &part).map_err(|e| e.to_string())?;
            fs::File::open(&part)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())?;
            fs::rename(&part, into.join(&*file)).map_err(|e| e.to_string())
        })();
        match result {
            Ok(()) => copied.push(file.to_string()),
            Err(e) => say!("containers/{file} on the stick not copied: {e}"),
        }
    }
    if !copied.is_empty() {
        say!(
            "container images copied to {}: {}",
            into.display(),
            copied.join(", ")
        );
    }
    copied
}

/// On the device, once DATA is mounted and workloads are allowed: the runtime's state
/// directories, containerd and the config's containers. Nothing (`None`) unless the config names
/// containers or the image carries k3s: containerd only runs when something uses it.
pub fn start_device(config: &[Container]) -> Option<Arc<Containers>> {
    let paths = Paths::device();
    if config.is_empty() && !paths.cri {
        return None;
    }
    if !runtime_present(&paths) {
        return Some(Containers::start(config, paths));
    }
    if let Err(e) = prepare_state() {
        let why = format!("container runtime state: {e}");
        say!("{why}");
        return Some(Containers::run_unavailable(config, why));
    }
    Some(Containers::start(config, paths))
}

/// The host containers capability.
pub struct Containers {
    containerd: Option<Arc<Containerd>>,
    /// Whether [`Containers::stop`] stops containerd too.
    owns_containerd: bool,
    /// Why no container can run (no runtime in the image, containerd would not start).
    unavailable: Option<String>,
    units: Vec<Arc<Unit>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// One container and its supervision.
struct Unit {
    spec: Container,
    log: Ring<(i64, String)>,
    state: Mutex<UnitState>,
    stopping: AtomicBool,
    wake: (Mutex<()>, Condvar),
}

#[derive(Debug, Clone)]
struct UnitState {
    phase: Phase,
    restarts: u32,
    since: SystemTime,
    last_exit: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Checking and importing its image.
    Starting,
    Running,
    /// Exited; started again after a pause.
    Backoff,
    /// Exited and not started again (its policy), or stopped.
    Stopped,
    /// Cannot run: the reason (a bad archive, no runtime).
    Failed(String),
}

impl Containers {
    /// Starts containerd and the config's containers. With no runtime in the image, or when
    /// containerd does not start, nothing runs and every container's check says why.
    pub fn start(config: &[Container], paths: Paths) -> Arc<Containers> {
        let mut unavailable = refusal(config, &paths);
        let mut containerd = None;
        if unavailable.is_none() && runtime_present(&paths) {
            // Not waited for here: cairnd's start (and the watchdog's feeding) goes on while
            // containerd comes up; each container waits for it.
            match Containerd::launch(paths) {
                Ok(c) => containerd = Some(c),
                Err(e) => unavailable = Some(format!("containerd: {e}")),
            }
        }
        Self::run(config, containerd, unavailable, true)
    }

    fn run_unavailable(config: &[Container], why: String) -> Arc<Containers> {
        Self::run(config, None, Some(why), false)
    }

    /// Starts `config`'s containers on a containerd that runs already (and is not stopped by
    /// [`Containers::stop`]).
    pub fn start_on(containerd: Arc<Containerd>, config: &[Container]) -> Arc<Containers> {
        Self::run(config, Some(containerd), None, false)
    }

    fn run(
        config: &[Container],
        containerd: Option<Arc<Containerd>>,
        unavailable: Option<String>,
        owns_containerd: bool,
    ) -> Arc<Containers> {
        let units: Vec<Arc<Unit>> = config.iter().map(|c| Arc::new(Unit::new(c))).collect();
        if let Some(why) = &unavailable {
            say!("{why}");
            for u in &units {
                u.set_phase(Phase::Failed(why.clone()));
            }
        }
        let mut threads = Vec::new();
        if let Some(c) = &containerd {
            for u in &units {
                let name = u.spec.name.clone();
                let (u, c) = (u.clone(), c.clone());
                match thread::Builder::new()
                    .name(format!("container {name}"))
                    .stack_size(STACK)
                    .spawn(move || u.supervise(&c))
                {
                    Ok(t) => threads.push(t),
                    Err(e) => say!("container {name}: starting its thread: {e}"),
                }
            }
        }
        Arc::new(Containers {
            containerd,
            owns_containerd,
            unavailable,
            units,
            threads: Mutex::new(threads),
        })
    }

    /// containerd, when it runs.
    pub fn containerd(&self) -> Option<&Arc<Containerd>> {
        self.containerd.as_ref()
    }

    /// Why containers cannot run here, if they cannot.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// The containers as `cairnctl services` lists them, memory from their cgroup.
    pub fn services(&self) -> Vec<proto::ServiceInfo> {
        self.units
            .iter()
            .map(|u| {
                let st = u.state();
                let pid = self
                    .containerd
                    .as_ref()
                    .and_then(|c| c.task_pid(&u.spec.name));
                let state = match (&st.phase, pid) {
                    (Phase::Running, Some(_)) => proto::ServiceState::Running,
                    (Phase::Starting | Phase::Running | Phase::Backoff, _) => {
                        proto::ServiceState::Backoff
                    }
                    (Phase::Stopped | Phase::Failed(_), _) => proto::ServiceState::Stopped,
                };
                let last_exit = match &st.phase {
                    Phase::Failed(why) => why.clone(),
                    _ => st.last_exit.clone(),
                };
                proto::ServiceInfo {
                    name: u.spec.name.clone(),
                    state: state as i32,
                    pid: pid.unwrap_or(0),
                    restarts: st.restarts,
                    since_unix_ms: unix_ms(st.since),
                    last_exit,
                    rss_bytes: pid.and_then(containerd::cgroup_memory).unwrap_or(0),
                    open_fds: 0,
                }
            })
            .collect()
    }

    /// The output of container `name`, if there is one by that name.
    pub fn log(&self, name: &str) -> Option<&Ring<(i64, String)>> {
        self.units
            .iter()
            .find(|u| u.spec.name == name)
            .map(|u| &u.log)
    }

    /// The containers' names.
    pub fn names(&self) -> Vec<String> {
        self.units.iter().map(|u| u.spec.name.clone()).collect()
    }

    /// Stops every container (their processes killed, not restarted), then containerd if it
    /// was started for them.
    pub fn stop(&self) {
        for u in &self.units {
            u.stopping.store(true, Ordering::Relaxed);
            u.wake.1.notify_all();
        }
        if let Some(c) = &self.containerd {
            for u in &self.units {
                if c.task_pid(&u.spec.name).is_some() {
                    let _ = c.kill(&u.spec.name);
                }
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        if let Some(c) = self.containerd.as_ref().filter(|_| self.owns_containerd) {
            c.stop();
        }
    }
}

impl Gate for Containers {
    fn checks(&self) -> Vec<Box<dyn Check>> {
        self.units
            .iter()
            .map(|u| {
                Box::new(ContainerCheck {
                    unit: u.clone(),
                    containerd: self.containerd.clone(),
                }) as Box<dyn Check>
            })
            .collect()
    }
}

/// `container <name>`: running, and its probe passing where it declares one.
struct ContainerCheck {
    unit: Arc<Unit>,
    containerd: Option<Arc<Containerd>>,
}

impl Check for ContainerCheck {
    fn name(&self) -> String {
        format!("container {}", self.unit.spec.name)
    }

    fn run(&self) -> Result<(), String> {
        let st = self.unit.state();
        let exited = |what: &str| {
            let mut why = what.to_string();
            if !st.last_exit.is_empty() {
                why += &format!(" (last exit: {})", st.last_exit);
            }
            if st.restarts > 0 {
                why += &format!(", {} restarts", st.restarts);
            }
            why
        };
        match &st.phase {
            Phase::Failed(why) => return Err(why.clone()),
            Phase::Starting => return Err("starting".into()),
            Phase::Backoff => return Err(exited("exited, restarting")),
            Phase::Stopped => return Err(exited("exited, not restarted by its policy")),
            Phase::Running => {}
        }
        let running = self
            .containerd
            .as_ref()
            .and_then(|c| c.task_pid(&self.unit.spec.name));
        if running.is_none() {
            return Err("starting".into());
        }
        match &self.unit.spec.probe {
            Some(p) => p.run().map_err(|f| format!("probe {p}: {}", f.reason)),
            None => Ok(()),
        }
    }
}

impl Unit {
    fn new(spec: &Container) -> Unit {
        Unit {
            spec: spec.clone(),
            log: Ring::new(LOG_LINES),
            state: Mutex::new(UnitState {
                phase: Phase::Starting,
                restarts: 0,
                since: SystemTime::now(),
                last_exit: String::new(),
            }),
            stopping: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
        }
    }

    fn state(&self) -> UnitState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_phase(&self, phase: Phase) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.phase = phase;
        st.since = SystemTime::now();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Sleeps `d` unless stopped meanwhile; true when stopping.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .wake
            .1
            .wait_timeout_while(guard, d, |_| !self.stopping());
        self.stopping()
    }

    /// The image name it is imported as.
    fn image(&self) -> String {
        format!("cairn.local/{}:current", self.spec.name)
    }

    /// Checks the image and imports it, unless containerd's store (on DATA, kept across boots,
    /// updates and rollbacks) already holds this archive's manifest under the container's image
    /// name; the error is the one line the container fails with.
    fn import(&self, c: &Containerd, path: &Path) -> Result<(), String> {
        let name = &self.spec.name;
        let arch = oci::machine_arch();
        let checked = oci::check_archive(path, arch)
            .map_err(|e| format!("image {} refused: {e}", path.display()))?;
        // The manifest last imported for this container, kept inside containerd's root, so a
        // store in memory (FAT DATA) forgets it with the store.
        let record = c.paths().root.join(IMPORTED).join(name);
        let digest = &checked.manifest;
        if fs::read_to_string(&record).ok().as_deref() == Some(digest.as_str())
            && c.has_image(&self.image())
        {
            say!(
                "container {name}: {} ({digest}) is in containerd's store already: not imported again",
                self.image()
            );
            return Ok(());
        }
        c.import(path, &self.image(), &format!("linux/{arch}"))
            .map_err(|e| format!("importing {}: {e}", path.display()))?;
        say!("container {name}: imported {} ({digest})", path.display());
        // The store on the disk first, then the note: a power cut between them imports again.
        // Only a later start reads the note, so the container starts meanwhile.
        let (root, digest, name) = (c.paths().root.clone(), digest.clone(), name.clone());
        let keep = move || {
            let kept = block::sync_fs(&root)
                .and_then(|()| record.parent().map_or(Ok(()), fs::create_dir_all))
                .and_then(|()| {
                    let f = fs::File::create(&record)?;
                    std::io::Write::write_all(&mut &f, digest.as_bytes())?;
                    f.sync_all()
                })
                .and_then(|()| record.parent().map_or(Ok(()), block::sync_fs));
            if let Err(e) = kept {
                say!("container {name}: keeping {}: {e}", record.display());
            }
        };
        if let Err(e) = thread::Builder::new()
            .name("keep".into())
            .stack_size(STACK)
            .spawn(keep)
        {
            say!(
                "container {}: keeping its import's note: {e}",
                self.spec.name
            );
        }
        Ok(())
    }

    /// Pulls a registry image into an archive, again with a growing pause while the registry
    /// cannot be reached; `None` when it cannot be run (said as the container's failure) or
    /// the unit is stopping.
    fn pull(&self, image: &cairn_facts::containers::RegistryImage) -> Option<PathBuf> {
        let name = &self.spec.name;
        let mut pause = PULL_RETRY;
        loop {
            match crate::registry::pull_archive(image, name, Path::new(PULLED_DIR)) {
                Ok(path) => return Some(path),
                Err((why, retry)) => {
                    let why = format!("image {} not pulled: {why}", image.reference);
                    say!("container {name}: {why}");
                    self.set_phase(Phase::Failed(why));
                    if !retry || self.sleep(pause) {
                        return None;
                    }
                    pause = (pause * 2).min(PULL_RETRY_MAX);
                }
            }
        }
    }

    fn supervise(self: &Arc<Unit>, c: &Containerd) {
        let name = &self.spec.name;
        // containerd may be slow to come up (or restarting): the container waits, saying why.
        while let Err(e) = c.wait_ready(containerd::START_TIMEOUT) {
            say!("container {name}: {e}");
            self.set_phase(Phase::Failed(e));
            if self.stopping() {
                return;
            }
        }
        let pulled;
        let path: &Path = match &self.spec.image {
            ImageSource::Archive(path) => path,
            ImageSource::Registry(image) => match self.pull(image) {
                Some(path) => {
                    pulled = path;
                    &pulled
                }
                None => return,
            },
        };
        // An archive a stick brings later starts the container then.
        if !path.exists() {
            let why = format!(
                "image {} is not there yet (a stick's containers/ folder is copied to {ARCHIVE_DIR})",
                path.display()
            );
            say!("container {name}: {why}");
            self.set_phase(Phase::Failed(why));
            while !path.exists() {
                if self.sleep(ARCHIVE_POLL) {
                    return;
                }
            }
        }
        let imported = self.import(c, path);
        if let Err(e) = imported {
            say!("container {name}: {e}");
            self.set_phase(Phase::Failed(e));
            return;
        }
        let spec = RunSpec {
            id: name.clone(),
            image: self.image(),
            args: self.spec.args.clone(),
            env: self
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            memory_limit: self.spec.memory_limit,
            volumes: self.spec.volumes.clone(),
        };
        if let Err(e) = make_volumes(&self.spec.volumes) {
            say!("container {name}: {e}");
            self.set_phase(Phase::Failed(e));
            return;
        }
        let mut backoff = FIRST_BACKOFF;
        // What the last run left goes before the next. Before the first, only when `ctr run`
        // meets a container of that name (an earlier cairnd's, or one a power cut left): each
        // removal is two `ctr` requests, which a container's first start need not wait for.
        let mut clean = false;
        let mut retried = false;
        loop {
            if std::mem::take(&mut clean) {
                c.remove(name);
            }
            if self.stopping() {
                self.set_phase(Phase::Stopped);
                return;
            }
            let mark = self.log.last_seq();
            let started = Instant::now();
            let status = match c.run(&spec) {
                Ok(mut child) => {
                    self.set_phase(Phase::Running);
                    let readers = [
                        child.stdout.take().map(|o| self.keep_output(o)),
                        child.stderr.take().map(|o| self.keep_output(o)),
                    ];
                    let status = child.wait();
                    for r in readers.into_iter().flatten().flatten() {
                        let _ = r.join();
                    }
                    status
                        .map(containerd::describe)
                        .map(|d| (d.clone(), d == "exit status 0"))
                }
                Err(e) => Err(e),
            };
            let (exit, success) = match status {
                Ok(s) => s,
                Err(e) => (format!("starting it: {e}"), false),
            };
            clean = true;
            if !success && !std::mem::take(&mut retried) && self.met_leftover(mark) {
                say!("container {name}: removing what an earlier run left, and starting it again");
                retried = true;
                continue;
            }
            let restart = !self.stopping()
                && match self.spec.restart {
                    Restart::Always => true,
                    Restart::OnFailure => !success,
                    Restart::Never => false,
                };
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.last_exit = exit.clone();
                st.since = SystemTime::now();
                st.phase = if restart {
                    Phase::Backoff
                } else {
                    Phase::Stopped
                };
            }
            if self.stopping() {
                return;
            }
            if !restart {
                say!("container {name} exited ({exit}); its policy does not restart it");
                return;
            }
            if started.elapsed() > STABLE {
                backoff = FIRST_BACKOFF;
            }
            say!("container {name} exited ({exit}); starting it again in {backoff:?}");
            if self.sleep(backoff) {
                self.set_phase(Phase::Stopped);
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restarts += 1;
        }
    }

    /// Whether `ctr run`'s output since log entry `mark` says a container of this name exists
    /// already.
    fn met_leftover(&self, mark: u64) -> bool {
        self.log
            .after(mark, usize::MAX, Duration::ZERO)
            .entries
            .iter()
            .any(|(_, (_, line))| line.contains("already exists"))
    }

    /// Copies one of the container's output streams into its log, a line at a time.
    fn keep_output(self: &Arc<Unit>, out: impl Read + Send + 'static) -> Option<JoinHandle<()>> {
        let unit = self.clone();
        thread::Builder::new()
            .stack_size(STACK)
            .name(format!("output {}", self.spec.name))
            .spawn(move || {
                copy_lines(out, &mut |line| {
                    unit.log.push((unix_ms(SystemTime::now()), line));
                })
            })
            .ok()
    }
}

/// Makes each volume's folder on DATA where it is missing, and checks that the folder, once
/// symbolic links are followed, is still where the config says (a container may have left a
/// link in a folder it shares): the error is the container's one line.
fn make_volumes(volumes: &[Volume]) -> Result<(), String> {
    for v in volumes {
        let host = &v.host;
        fs::create_dir_all(host)
            .map_err(|e| format!("volume {}: creating it: {e}", host.display()))?;
        let real = fs::canonicalize(host).map_err(|e| format!("volume {}: {e}", host.display()))?;
        if real != *host {
            return Err(format!(
                "volume {} refused: it leads to {} (a symbolic link on the way)",
                host.display(),
                real.display()
            ));
        }
    }
    Ok(())
}

/// Splits a stream into lines (cut at [`MAX_LINE`] bytes) and hands each to `line`.
fn copy_lines(mut out: impl Read, line: &mut dyn FnMut(String)) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match out.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                line(String::from_utf8_lossy(&buf).into_owned());
                buf.clear();
            } else if buf.len() < MAX_LINE {
                buf.push(b);
            }
        }
    }
    if !buf.is_empty() {
        line(String::from_utf8_lossy(&buf).into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sticks_archives_are_copied_whole_and_bad_names_skipped() {
        let stick = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let into = data.path().join("lib/cairn-images");
        assert!(take_archives(stick.path(), &into).is_empty());
        let dir = stick.path().join("containers");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("web.tar"), vec![5u8; 100_000]).unwrap();
        fs::write(dir.join("Web_2.tar"), b"x").unwrap();
        fs::write(dir.join("notes.txt"), b"x").unwrap();
        assert_eq!(take_archives(stick.path(), &into), ["web.tar"]);
        let mut names: Vec<String> = fs::read_dir(&into)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["web.tar"]);
        assert_eq!(fs::read(into.join("web.tar")).unwrap(), vec![5u8; 100_000]);
    }

    #[test]
    fn output_is_kept_line_by_line_and_long_lines_are_cut() {
        let mut lines = Vec::new();
        let mut text = b"one\ntwo\n".to_vec();
        text.extend(vec![b'x'; MAX_LINE + 10]);
        text.extend(b"\nlast");
        copy_lines(&text[..], &mut |l| lines.push(l));
        assert_eq!(lines.len(), 4);
        assert_eq!((lines[0].as_str(), lines[1].as_str()), ("one", "two"));
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "last");
    }
}
