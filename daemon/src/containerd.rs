//! containerd, driven from cairnd without a gRPC client: the daemon itself runs as a child that
//! is started again when it dies, and everything else goes through `ctr`, run as a child process
//! per request (import an archive, run a container, kill a task).
//!
//! The one idea: a container is one `ctr run --rm` child, attached to the container's output.
//! Its exit is the container's exit (with its status); its stdout and stderr are the
//! container's. So supervising a container is supervising a process, as init does for services,
//! and there is no async runtime or gRPC client in cairnd.

use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cairn_facts::containers::Container;

use crate::log::say;

/// The containerd namespace cairnd's host containers live in (k3s uses `k8s.io`).
pub const NAMESPACE: &str = "cairn";
/// k3s, when the image carries it: containerd then serves the CRI it talks to.
pub const K3S: &str = "/usr/bin/k3s";
/// Longest wait for containerd's socket after starting it.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a `ctr` request other than `run` may take.
const CTR_TIMEOUT: &str = "120s";

/// Where containerd and its tools are, and where it keeps its state.
#[derive(Debug, Clone)]
pub struct Paths {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    /// `PATH` for containerd: where it finds `containerd-shim-runc-v2` and the shim `runc`.
    pub bin_path: String,
    /// Images, snapshots, content (on DATA on the device).
    pub root: PathBuf,
    /// Runtime state (under /run).
    pub state: PathBuf,
    pub socket: PathBuf,
    /// The generated config file.
    pub config: PathBuf,
    /// The cgroup (v2 path, or v1 path in every hierarchy) containers are put under.
    pub cgroup_parent: String,
    /// Whether containerd serves its CRI plugin (for k3s: on when the image carries k3s).
    pub cri: bool,
}

impl Paths {
    /// The device's: the binaries in the system extension, state on DATA and under /run.
    pub fn device() -> Paths {
        Paths {
            containerd: "/usr/bin/containerd".into(),
            ctr: "/usr/bin/ctr".into(),
            bin_path: "/usr/bin:/usr/sbin:/bin:/sbin".into(),
            root: "/var/lib/containerd".into(),
            state: "/run/containerd".into(),
            socket: "/run/containerd/containerd.sock".into(),
            config: "/run/cairn/containerd.toml".into(),
            cgroup_parent: "/cairn".into(),
            cri: Path::new(K3S).exists(),
        }
    }

    /// containerd's config: the paths above; warnings and errors only on the console; the
    /// snapshotters the device cannot use off; the CRI plugin (what k3s talks to) only with
    /// [`Paths::cri`], its CNI plugins in `/usr/lib/cni` and their config in `/etc/cni/net.d`.
    pub fn config_text(&self) -> String {
        let mut disabled = vec![
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.aufs",
            // Its /opt is not writable in the read-only root, and nothing here installs there.
            "io.containerd.internal.v1.opt",
        ];
        if !self.cri {
            disabled.push("io.containerd.grpc.v1.cri");
        }
        let mut text = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = {:?}\n\n[grpc]\n  address = {:?}\n\n[debug]\n  level = \"warn\"\n",
            self.root, self.state, disabled, self.socket
        );
        if self.cri {
            text += "\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"/etc/cni/net.d\"\n";
        }
        text
    }
}

/// The containerd daemon, started and restarted by a thread of its own.
pub struct Containerd {
    paths: Paths,
    pid: AtomicU32,
    stopping: AtomicBool,
    wake: (Mutex<()>, Condvar),
    /// Imports one at a time: containerd locks an archive's blobs while it writes them, and
    /// two imports of the same blob would fail on the lock.
    importing: Mutex<()>,
}

impl Containerd {
    /// [`Containerd::launch`], then waits until the socket answers.
    pub fn start(paths: Paths) -> Result<Arc<Containerd>, String> {
        let c = Self::launch(paths)?;
        c.wait_ready(START_TIMEOUT)?;
        Ok(c)
    }

    /// Writes the config and starts containerd, restarting it whenever it exits (1 s, doubling
    /// to 30 s while it keeps dying within a minute). Returns at once: users wait for the
    /// socket with [`Containerd::wait_ready`].
    pub fn launch(paths: Paths) -> Result<Arc<Containerd>, String> {
        for dir in [&paths.root, &paths.state] {
            fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        if let Some(parent) = paths.config.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        fs::write(&paths.config, paths.config_text())
            .map_err(|e| format!("writing {}: {e}", paths.config.display()))?;
        let c = Arc::new(Containerd {
            paths,
            pid: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            importing: Mutex::new(()),
        });
        let first = c.spawn()?;
        let supervised = c.clone();
        thread::Builder::new()
            .name("containerd".into())
            .spawn(move || supervised.supervise(first))
            .map_err(|e| format!("starting containerd's supervisor: {e}"))?;
        Ok(c)
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// containerd's pid now (0 while it is being restarted).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Where the running containerd's pid is kept, for the next cairnd.
    fn pid_file(&self) -> PathBuf {
        self.paths.config.with_extension("pid")
    }

    /// Stops a containerd an earlier cairnd started (it holds the socket and the database).
    fn stop_earlier(&self) {
        let Some(pid) = fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            return;
        };
        let is_containerd = || {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == self.paths.containerd)
        };
        if !is_containerd() {
            return;
        }
        say!("stopping the containerd (pid {pid}) an earlier cairnd started");
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_containerd() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        if is_containerd() {
            signal(pid, libc::SIGKILL);
        }
    }

    fn spawn(&self) -> Result<Child, String> {
        self.stop_earlier();
        let _ = fs::remove_file(&self.paths.socket);
        let child = Command::new(&self.paths.containerd)
            .arg("--config")
            .arg(&self.paths.config)
            .env_clear()
            .env("PATH", &self.paths.bin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.paths.containerd.display()))?;
        self.pid.store(child.id(), Ordering::Relaxed);
        let _ = fs::write(self.pid_file(), child.id().to_string());
        Ok(child)
    }

    fn supervise(&self, mut child: Child) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let status = child.wait();
            self.pid.store(0, Ordering::Relaxed);
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            let why = match status {
                Ok(s) => describe(s),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            say!("containerd exited ({why}); starting it again in {backoff:?}");
            if self.sleep(backoff) {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            child = loop {
                match self.spawn() {
                    Ok(c) => break c,
                    Err(e) => {
                        say!("{e}");
                        if self.sleep(backoff) {
                            return;
                        }
                    }
                }
            };
        }
    }

    /// Sleeps `d` unless stopped meanwhile; true when stopping.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .wake
            .1
            .wait_timeout_while(guard, d, |_| !self.stopping.load(Ordering::Relaxed));
        self.stopping.load(Ordering::Relaxed)
    }

    /// Waits until containerd's socket accepts a connection.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while UnixStream::connect(&self.paths.socket).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not open {} within {timeout:?}",
                    self.paths.socket.display()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s) and its supervision; containers
    /// keep running in their shims.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.1.notify_all();
        let pid = self.pid();
        if pid == 0 {
            return;
        }
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pid() != 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if self.pid() != 0 {
            signal(pid, libc::SIGKILL);
        }
    }

    /// `ctr` with the socket and namespace.
    fn ctr(&self) -> Command {
        let mut c = Command::new(&self.paths.ctr);
        c.arg("--address")
            .arg(&self.paths.socket)
            .arg("--namespace")
            .arg(NAMESPACE)
            .env_clear()
            .env("PATH", &self.paths.bin_path)
            .stdin(Stdio::null());
        c
    }

    /// Runs a `ctr` request to its end; the error is ctr's last line.
    pub(crate) fn request(&self, args: &[&str]) -> Result<String, String> {
        let out: Output = self
            .ctr()
            .arg("--timeout")
            .arg(CTR_TIMEOUT)
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", self.paths.ctr.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .trim_start_matches("ctr: ");
            Err(if line.is_empty() {
                describe(out.status)
            } else {
                line.to_string()
            })
        }
    }

    /// Imports an OCI archive (already checked to be for `platform`, e.g. `linux/arm64`) as
    /// the image named `image`.
    pub fn import(&self, archive: &Path, image: &str, platform: &str) -> Result<(), String> {
        let archive = archive.to_str().ok_or("the archive path is not UTF-8")?;
        let _one = self.importing.lock().unwrap_or_else(|e| e.into_inner());
        self.request(&[
            "images",
            "import",
            "--platform",
            platform,
            "--index-name",
            image,
            archive,
        ])
        .map(drop)
    }

    /// Whether the store holds an image named `image` (in cairnd's namespace).
    pub fn has_image(&self, image: &str) -> bool {
        self.request(&["images", "ls", "-q"])
            .is_ok_and(|out| out.lines().any(|l| l.trim() == image))
    }

    /// Removes what an earlier run of container `id` left (its task and container, with the
    /// container's snapshot); nothing there is fine.
    pub fn remove(&self, id: &str) {
        let _ = self.request(&["tasks", "delete", "--force", id]);
        let _ = self.request(&["containers", "delete", id]);
    }

    /// Kills container `id`'s processes; its `ctr run` then returns.
    pub fn kill(&self, id: &str) -> Result<(), String> {
        self.request(&["tasks", "kill", "--all", "--signal", "SIGKILL", id])
            .map(drop)
    }

    /// Starts `ctr run --rm` for a container, attached to its stdout and stderr (piped).
    pub fn run(&self, spec: &RunSpec) -> io::Result<Child> {
        let mut c = self.ctr();
        // The host's network, as `--net-host` would give it, but without binding the root's
        // /etc/hosts and /etc/resolv.conf into the container (the root has no /etc/hosts, and
        // /etc/resolv.conf only exists once the network gave a name server): the image's own
        // are used.
        c.args(["run", "--rm", "--with-ns"]);
        c.arg(format!("network:/proc/{}/ns/net", std::process::id()));
        c.arg("--cgroup")
            .arg(format!("{}/{}", self.paths.cgroup_parent, spec.id));
        if let Some(limit) = spec.memory_limit {
            c.arg("--memory-limit").arg(limit.to_string());
        }
        for (k, v) in &spec.env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        for v in &spec.volumes {
            // Paths are checked plain (no comma or quote: ctr reads this as one CSV record).
            c.arg("--mount").arg(format!(
                "type=bind,src={},dst={},options=rbind:{}",
                v.host.display(),
                v.path.display(),
                if v.read_only { "ro" } else { "rw" }
            ));
        }
        c.arg(&spec.image).arg(&spec.id);
        c.args(&spec.args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()
    }

    /// The pid of container `id`'s first process, from the runc shim's state (none when it is
    /// not running).
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        let file = self
            .paths
            .state
            .join("io.containerd.runtime.v2.task")
            .join(NAMESPACE)
            .join(id)
            .join("init.pid");
        let pid: u32 = fs::read_to_string(file).ok()?.trim().parse().ok()?;
        // SAFETY: kill with signal 0 only checks that the process exists.
        (pid > 0 && unsafe { libc::kill(pid as i32, 0) } == 0).then_some(pid)
    }
}

/// Whether the image carries a container runtime (the system extension).
pub fn runtime_present(paths: &Paths) -> bool {
    paths.containerd.exists() && paths.ctr.exists()
}

/// Why a config's containers cannot run on this image, if they cannot (the one line cairnd
/// refuses such a config with).
pub fn refusal(containers: &[Container], paths: &Paths) -> Option<String> {
    (!containers.is_empty() && !runtime_present(paths)).then(|| {
        format!(
            "containers: this image has no container runtime ({} is missing); build it with the container extension",
            paths.containerd.display()
        )
    })
}

/// What `ctr run` is given for one container.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub id: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub memory_limit: Option<u64>,
    /// Folders bound into the container (made by then).
    pub volumes: Vec<cairn_facts::containers::Volume>,
}

/// The memory a process's cgroup uses: `memory.current` (cgroup v2), or
/// `memory.usage_in_bytes` where the memory controller is on cgroup v1.
pub fn cgroup_memory(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let read = |p: String| -> Option<u64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            if let Some(m) = read(format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")) {
                return Some(m);
            }
        }
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                if let Some(m) = read(format!("{root}{path}/memory.current")) {
                    return Some(m);
                }
            }
        }
    }
    None
}

/// `exit status 1`, `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill takes no pointers; `pid` is a child this module started.
    unsafe { libc::kill(pid as i32, sig) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_facts::containers::{ImageSource, Restart};

    /// An image built without the extension (`--no-containers`): a config naming containers is
    /// refused in one line (ApplyConfig says it, a baked-in one fails every container's check);
    /// one without is not.
    #[test]
    fn containers_need_the_runtime_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            containerd: dir.path().join("usr/bin/containerd"),
            ctr: dir.path().join("usr/bin/ctr"),
            ..Paths::device()
        };
        let web = Container {
            name: "web".into(),
            image: ImageSource::Archive("/var/lib/cairn-images/web.tar".into()),
            args: Vec::new(),
            env: Default::default(),
            restart: Restart::Always,
            probe: None,
            memory_limit: None,
            volumes: Vec::new(),
        };
        assert_eq!(refusal(&[], &paths), None);
        let why = refusal(std::slice::from_ref(&web), &paths).unwrap();
        assert_eq!(
            why,
            format!(
                "containers: this image has no container runtime ({}/usr/bin/containerd is missing); build it with the container extension",
                dir.path().display()
            )
        );
        for bin in [&paths.containerd, &paths.ctr] {
            fs::create_dir_all(bin.parent().unwrap()).unwrap();
            fs::write(bin, b"").unwrap();
        }
        assert_eq!(refusal(&[web], &paths), None);
    }
}
