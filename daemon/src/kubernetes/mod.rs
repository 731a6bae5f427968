//! The Kubernetes capability: a single-node k3s server on the device's containerd, started
//! from the machine config's `kubernetes:` section, restarted when it exits, and gating every
//! update through its health ([`health`]).
//!
//! Before the first start in a boot it protects the datastore from a k3s downgrade
//! ([`snapshot`]): the k3s that last ran (recorded on DATA, [`LAST_RUN`]) is compared with this
//! slot's (the system extension's manifest, or the binary's sha256). A trial slot bringing a
//! different k3s first snapshots the datastore as the old slot's k3s left it; a slot returning
//! after another slot's k3s ran restores the snapshot taken for it, or does not start k3s at
//! all (an older k3s on a newer datastore is what k3s does not support).
//!
//! Files it writes: `/etc/rancher/k3s/config.yaml` (generated, [`k3s_config`]), the configured
//! manifests copied from STATE into k3s's auto-deploy folder, links to the image's airgap image
//! tarballs in `agent/images`. k3s's own output goes to [`K3S_LOG`] on DATA.

pub mod client;
pub mod health;
pub mod snapshot;

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_facts::kubernetes::{self as spec, K3S_BIN, MANIFESTS_DIR};
use cairn_updater::health::Check;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::health::Gate;
use crate::log::say;
use client::{Client, ADMIN_KUBECONFIG};

/// k3s's config file; k3s reads it at start.
pub const K3S_CONFIG: &str = "/etc/rancher/k3s/config.yaml";
/// k3s's data folder (its default, written into the config).
pub const DATA_DIR: &str = "/var/lib/rancher/k3s";
/// The CRI socket k3s uses instead of its embedded containerd.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The system extension's manifest: what it carries, with versions and sha256.
pub const EXTENSION_MANIFEST: &str = "/usr/lib/cairn/extension.json";
/// Airgap image tarballs the image carries (read-only).
pub const IMAGES_DIR: &str = "/usr/lib/cairn/k3s/images";
/// cairnd's k3s records on DATA (not STATE: the snapshots are as large as the datastore).
pub const RECORDS_DIR: &str = "/var/lib/cairn-k3s";
/// The k3s that last ran on this DATA: `{slot, version, sha256}`.
pub const LAST_RUN: &str = "/var/lib/cairn-k3s/last-run.json";
/// Datastore snapshots, one folder each ([`snapshot`]).
pub const SNAPSHOTS_DIR: &str = "/var/lib/cairn-k3s/snapshots";
/// k3s's output (and the one before it, `.1`).
pub const K3S_LOG: &str = "/var/log/k3s.log";
const LOG_MAX: u64 = 16 * 1024 * 1024;

/// Where everything above is; [`Paths::device`] on a device, elsewhere in tests.
#[derive(Debug, Clone)]
pub struct Paths {
    pub k3s_bin: PathBuf,
    pub k3s_config: PathBuf,
    pub data_dir: PathBuf,
    pub containerd_socket: PathBuf,
    pub extension_manifest: PathBuf,
    pub images_dir: PathBuf,
    pub last_run: PathBuf,
    pub snapshots: PathBuf,
    pub log: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Paths {
    pub fn device() -> Paths {
        Paths {
            k3s_bin: K3S_BIN.into(),
            k3s_config: K3S_CONFIG.into(),
            data_dir: DATA_DIR.into(),
            containerd_socket: CONTAINERD_SOCKET.into(),
            extension_manifest: EXTENSION_MANIFEST.into(),
            images_dir: IMAGES_DIR.into(),
            last_run: LAST_RUN.into(),
            snapshots: SNAPSHOTS_DIR.into(),
            log: K3S_LOG.into(),
            kubeconfig: ADMIN_KUBECONFIG.into(),
        }
    }
}

/// A k3s binary: which release, and its sha256 (what tells two apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3s {
    pub version: String,
    pub sha256: String,
}

/// The k3s that ran, as recorded in [`LAST_RUN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub slot: String,
    pub k3s: K3s,
}

/// What must happen to the datastore before this slot's k3s starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// Nothing: the same k3s ran last, or none ever did.
    Start,
    /// An upgrade: keep the datastore as the previous k3s left it, under this name.
    Snapshot(String),
    /// A return to this slot after another k3s ran: put its snapshot back.
    Restore(String),
    /// A return with no snapshot to put back: starting would downgrade the datastore.
    Refuse(String),
}

/// The snapshot name for a slot's k3s: `<slot>-<version>`.
pub fn snapshot_name(slot: &str, k3s: &K3s) -> String {
    let version: String = k3s
        .version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{slot}-{version}")
}

/// Decides [`Before`] from the last k3s that ran, this slot's, and whether this boot is a trial.
pub fn before_start(
    last: Option<&Ran>,
    me: &Ran,
    trial: bool,
    has_snapshot: &dyn Fn(&str) -> bool,
) -> Before {
    let Some(last) = last else {
        return Before::Start;
    };
    if last.k3s.sha256 == me.k3s.sha256 {
        return Before::Start;
    }
    if trial {
        return Before::Snapshot(snapshot_name(&last.slot, &last.k3s));
    }
    if last.slot == me.slot {
        // The same slot with another k3s: written anew from an image, not an update.
        return Before::Start;
    }
    let mine = snapshot_name(&me.slot, &me.k3s);
    match has_snapshot(&mine) {
        true => Before::Restore(mine),
        false => Before::Refuse(format!(
            "k3s {} from slot {} last ran on this datastore, and there is no snapshot {mine} for slot {}'s k3s {} to restore: k3s does not support downgrades",
            last.k3s.version, last.slot, me.slot, me.k3s.version
        )),
    }
}

/// k3s's config file for a section.
pub fn k3s_config(k: &spec::Kubernetes, node_name: &str) -> String {
    let mut out = String::from(
        "# Written by cairnd from the machine config's kubernetes section; edits are overwritten.\n",
    );
    let q = |s: &str| serde_json::to_string(s).expect("a string");
    out.push_str(&format!("node-name: {}\n", q(node_name)));
    out.push_str(&format!("data-dir: {}\n", q(DATA_DIR)));
    out.push_str(&format!(
        "container-runtime-endpoint: {}\n",
        q(&format!("unix://{CONTAINERD_SOCKET}"))
    ));
    out.push_str(&format!("write-kubeconfig-mode: {}\n", q("0600")));
    out.push_str(&format!("flannel-backend: {}\n", q(&k.flannel_backend)));
    if !k.disable.is_empty() {
        out.push_str("disable:\n");
        for c in &k.disable {
            out.push_str(&format!("  - {}\n", q(c)));
        }
    }
    out
}

/// The k3s this image carries: from the extension's manifest (an object under `k3s`, or an
/// entry named `k3s` in a list), else the binary's own sha256; without a version, it is named
/// by its sha256.
pub fn this_k3s(manifest: Option<&Value>, bin: &Path) -> Result<K3s, String> {
    fn entry(v: &Value) -> Option<&Value> {
        if let Some(k) = v.get("k3s").filter(|k| k.is_object()) {
            return Some(k);
        }
        match v {
            Value::Array(items) => items.iter().find_map(entry),
            Value::Object(map) => {
                if map.get("name").and_then(Value::as_str) == Some("k3s") {
                    return Some(v);
                }
                map.values().filter(|x| x.is_array()).find_map(entry)
            }
            _ => None,
        }
    }
    if let Some(k) = manifest.and_then(entry) {
        if let Some(sha) = k.get("sha256").and_then(Value::as_str) {
            // The image builder records no version (an operator's binary says its own only
            // when run): the sha256 names it, as for a binary with no manifest.
            let version = match k.get("version").and_then(Value::as_str) {
                Some(v) => v.to_string(),
                None => format!("sha256-{}", sha.get(..12).unwrap_or(sha)),
            };
            return Ok(K3s {
                version,
                sha256: sha.to_string(),
            });
        }
    }
    let mut f = fs::File::open(bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let sha256 = hex::encode(hash.finalize());
    Ok(K3s {
        version: format!("sha256-{}", &sha256[..12]),
        sha256,
    })
}

fn read_last_run(path: &Path) -> Option<Ran> {
    let v: Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    Some(Ran {
        slot: v.get("slot")?.as_str()?.to_string(),
        k3s: K3s {
            version: v.get("version")?.as_str()?.to_string(),
            sha256: v.get("sha256")?.as_str()?.to_string(),
        },
    })
}

fn write_last_run(path: &Path, ran: &Ran) -> Result<(), String> {
    let text = json!({"slot": ran.slot, "version": ran.k3s.version, "sha256": ran.k3s.sha256});
    write_atomic(
        path,
        serde_json::to_string_pretty(&text)
            .expect("JSON")
            .as_bytes(),
        0o644,
    )
}

/// Writes a file whole or not at all (a temporary beside it, synced, renamed), making its folder
/// first.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let dir = path.parent().expect("an absolute path");
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    cairn_updater::state::replace_with_mode(path, data, mode).map_err(|e| e.to_string())
}

/// Copies the configured manifests from STATE into k3s's auto-deploy folder; returns the ones
/// missing on STATE.
pub fn copy_manifests(names: &[String], from: &Path, to: &Path) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for name in names {
        match fs::read(from.join(name)) {
            Ok(data) => write_atomic(&to.join(name), &data, 0o600)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(name.clone()),
            Err(e) => return Err(format!("reading {}: {e}", from.join(name).display())),
        }
    }
    Ok(missing)
}

/// Links each airgap tarball of the image into k3s's `agent/images` folder.
fn link_images(from: &Path, to: &Path) -> Result<usize, String> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(0);
    };
    fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let mut n = 0;
    for entry in entries.flatten() {
        let link = to.join(entry.file_name());
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(entry.path(), &link)
            .map_err(|e| format!("linking {}: {e}", link.display()))?;
        n += 1;
    }
    Ok(n)
}

/// The Node name a section gives: its `node_name`, else the hostname (lower case).
pub fn node_name(k: &spec::Kubernetes, hostname: Option<&str>) -> String {
    match &k.node_name {
        Some(n) => n.clone(),
        None => hostname
            .map(str::to_string)
            .or_else(|| fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    }
}

/// The running capability.
pub struct Kubernetes {
    section: spec::Kubernetes,
    node_name: String,
    client: Arc<Client>,
    /// What the `kubernetes k3s` check reads every round.
    status: Arc<K3sStatus>,
    paths: Paths,
}

/// Whether k3s runs as configured, as the supervisor sees it.
#[derive(Default)]
struct K3sStatus {
    /// What stops it for good in this boot (a refused downgrade, no config written) or keeps
    /// it from running as configured (a missing manifest).
    problems: Mutex<Vec<String>>,
    /// What it waits for now (containerd, a restart); `None` while it runs.
    waiting: Mutex<Option<String>>,
    /// Set by [`Kubernetes::stop`].
    stop: std::sync::atomic::AtomicBool,
}

impl K3sStatus {
    fn wait(&self, why: Option<String>) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

impl Kubernetes {
    /// Starts k3s's supervisor, which waits for containerd, then writes k3s's files and
    /// starts it. `state` is STATE's mount point; `slot` the running slot; `trial` whether
    /// this boot is one.
    pub fn start(
        section: spec::Kubernetes,
        hostname: Option<&str>,
        state: &Path,
        slot: &str,
        trial: bool,
    ) -> Arc<Kubernetes> {
        Kubernetes::start_with(Paths::device(), section, hostname, state, slot, trial)
    }

    /// [`Kubernetes::start`] with its files elsewhere.
    pub fn start_with(
        paths: Paths,
        section: spec::Kubernetes,
        hostname: Option<&str>,
        state: &Path,
        slot: &str,
        trial: bool,
    ) -> Arc<Kubernetes> {
        let node_name = node_name(&section, hostname);
        let me = Arc::new(Kubernetes {
            node_name: node_name.clone(),
            client: Arc::new(Client::new(&paths.kubeconfig)),
            status: Arc::new(K3sStatus::default()),
            section,
            paths,
        });
        me.status.wait(Some("not started yet".into()));
        let runner = Arc::clone(&me);
        let (state, slot) = (state.to_path_buf(), slot.to_string());
        std::thread::spawn(move || runner.run(&state, slot, trial));
        me
    }

    /// Waits for containerd (the containers capability makes /etc/rancher and /var/lib/rancher
    /// writable before it starts it), writes k3s's files, guards the datastore, then keeps k3s
    /// running.
    fn run(&self, state: &Path, slot: String, trial: bool) {
        let started = Instant::now();
        let mut told = false;
        let socket = self.paths.containerd_socket.display();
        self.status
            .wait(Some(format!("waiting for containerd ({socket})")));
        while !self.paths.containerd_socket.exists() {
            if self.stopped() {
                return;
            }
            if !told && started.elapsed() > Duration::from_secs(30) {
                say!("k3s: waiting for containerd ({socket})");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match self.prepare(state) {
            Ok(problems) => problems.into_iter().for_each(|p| self.problem(p)),
            Err(e) => {
                // Without its config k3s would start with its own defaults (its embedded
                // containerd, another node name): not at all is better.
                return self.problem(format!("k3s not started: {e}"));
            }
        }
        let manifest: Option<Value> = fs::read(&self.paths.extension_manifest)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let k3s = match this_k3s(manifest.as_ref(), &self.paths.k3s_bin) {
            Ok(k) => k,
            Err(e) => return self.problem(format!("k3s not started: {e}")),
        };
        let me = Ran { slot, k3s };
        if let Err(e) = guard_datastore(&self.paths, &me, trial) {
            return self.problem(format!("k3s not started: {e}"));
        }
        self.supervise(&me);
    }

    fn problem(&self, line: String) {
        say!("{line}");
        self.status
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    /// k3s's config, the manifests and the airgap images.
    fn prepare(&self, state: &Path) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        write_atomic(
            &self.paths.k3s_config,
            k3s_config(&self.section, &self.node_name).as_bytes(),
            0o600,
        )?;
        let missing = copy_manifests(
            &self.section.manifests,
            &state.join(MANIFESTS_DIR),
            &self.paths.data_dir.join("server/manifests"),
        )?;
        if !missing.is_empty() {
            problems.push(format!(
                "manifests missing on STATE ({}): {}",
                state.join(MANIFESTS_DIR).display(),
                missing.join(", ")
            ));
        }
        let images = link_images(
            &self.paths.images_dir,
            &self.paths.data_dir.join("agent/images"),
        )?;
        if images > 0 {
            say!("k3s: {images} airgap image tarball(s) linked");
        }
        Ok(problems)
    }

    /// Runs `k3s server`, and again whenever it exits.
    fn supervise(&self, me: &Ran) {
        if let Err(e) = write_last_run(&self.paths.last_run, me) {
            say!("k3s: recording the k3s that runs: {e}");
        }
        let mut backoff = Duration::from_secs(1);
        while !self.stopped() {
            let log = open_log(&self.paths.log);
            let (out, err) = match log {
                Ok(f) => match f.try_clone() {
                    Ok(g) => (Stdio::from(f), Stdio::from(g)),
                    Err(_) => (Stdio::null(), Stdio::null()),
                },
                Err(_) => (Stdio::null(), Stdio::null()),
            };
            let mut command = Command::new(&self.paths.k3s_bin);
            command
                .arg("server")
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", "/var/lib/rancher")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            // SAFETY: prctl with PR_SET_PDEATHSIG takes no pointers and is async-signal-safe;
            // it only asks the kernel to send SIGTERM to k3s if this thread goes away (cairnd
            // exited), so a restarted cairnd never finds a second k3s running.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let run = Instant::now();
            match command.spawn() {
                Ok(mut child) => {
                    self.status.wait(None);
                    say!(
                        "k3s {} started (pid {}), node {}; its output is in {}",
                        me.k3s.version,
                        child.id(),
                        self.node_name,
                        self.paths.log.display()
                    );
                    let status = self.wait_for(&mut child);
                    if self.stopped() {
                        return;
                    }
                    let line = format!(
                        "k3s exited ({status:?}); starting it again in {} s",
                        backoff.as_secs()
                    );
                    say!("{line}");
                    self.status.wait(Some(line));
                }
                Err(e) => {
                    let line = format!("cannot start {}: {e}", self.paths.k3s_bin.display());
                    say!("k3s: {line}");
                    self.status.wait(Some(line));
                }
            }
            if run.elapsed() > Duration::from_secs(300) {
                backoff = Duration::from_secs(1);
            }
            let slept = Instant::now();
            while slept.elapsed() < backoff && !self.stopped() {
                std::thread::sleep(Duration::from_millis(100));
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// The admin kubeconfig k3s wrote, as it is (its server is `https://127.0.0.1:6443`).
    pub fn kubeconfig(&self) -> Result<String, String> {
        let path = self.paths.kubeconfig.display();
        fs::read_to_string(&self.paths.kubeconfig).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("{path} does not exist yet: k3s writes it once its API server is up")
            }
            _ => format!("reading {path}: {e}"),
        })
    }

    /// k3s's output file.
    pub fn log_path(&self) -> &Path {
        &self.paths.log
    }

    fn stopped(&self) -> bool {
        self.status.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops supervising: k3s gets SIGTERM (from the supervisor, within 100 ms) and is not
    /// started again.
    pub fn stop(&self) {
        self.status
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits for k3s to exit, sending it SIGTERM once [`Kubernetes::stop`] is called.
    fn wait_for(
        &self,
        child: &mut std::process::Child,
    ) -> std::io::Result<std::process::ExitStatus> {
        let mut told = false;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if self.stopped() && !told {
                // SAFETY: kill takes no pointers; try_wait just said the child has not been
                // reaped, so its pid is still ours.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                told = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Snapshots or restores the datastore as [`before_start`] decides, and says what it did.
fn guard_datastore(paths: &Paths, me: &Ran, trial: bool) -> Result<(), String> {
    let db = paths.data_dir.join("server/db");
    let root = paths.snapshots.as_path();
    if snapshot::resume(&db)? {
        say!("k3s: finished a datastore restore that was cut short");
    }
    let last = read_last_run(&paths.last_run);
    match before_start(last.as_ref(), me, trial, &|name| {
        snapshot::find(root, name).is_some()
    }) {
        Before::Start => Ok(()),
        Before::Snapshot(name) => {
            if !db.join(snapshot::FILES[0]).exists() {
                return Ok(());
            }
            let t = Instant::now();
            let at = snapshot::take(&db, root, &name)?;
            say!(
                "k3s changes from {} to {}: datastore saved as {} in {} ms",
                last.map_or_else(String::new, |l| l.k3s.version),
                me.k3s.version,
                at.display(),
                t.elapsed().as_millis()
            );
            Ok(())
        }
        Before::Restore(name) => {
            let at = snapshot::find(root, &name).ok_or("the snapshot went away")?;
            snapshot::restore(&at, &db)?;
            say!(
                "k3s datastore restored from {} (the state before slot {} left this k3s)",
                at.display(),
                me.slot
            );
            Ok(())
        }
        Before::Refuse(why) => Err(why),
    }
}

fn open_log(path: &Path) -> std::io::Result<fs::File> {
    if fs::metadata(path).is_ok_and(|m| m.len() > LOG_MAX) {
        let _ = fs::rename(path, PathBuf::from(format!("{}.1", path.display())));
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new().create(true).append(true).open(path)
}

/// A follower of k3s's log file: the last lines, then what is appended (from the start of a
/// new file after a rotation). Only whole lines are handed out.
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
}

impl LogFollower {
    /// The last `tail` lines of `path` (from its last MiB), and a follower from its end.
    pub fn tail(path: &Path, tail: usize) -> (Vec<String>, LogFollower) {
        let len = fs::metadata(path).map_or(0, |m| m.len());
        let from = len.saturating_sub(1024 * 1024);
        let mut f = LogFollower {
            path: path.to_path_buf(),
            offset: from,
        };
        let mut lines = f.next_lines();
        if from > 0 && !lines.is_empty() {
            // The first line read may be the end of a longer one.
            lines.remove(0);
        }
        let skip = lines.len().saturating_sub(tail);
        (lines.split_off(skip), f)
    }

    /// The whole lines appended since the last call.
    pub fn next_lines(&mut self) -> Vec<String> {
        use std::io::{Seek, SeekFrom};
        let Ok(mut file) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            self.offset = 0;
        }
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += whole as u64;
        String::from_utf8_lossy(&buf[..whole])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Gate for Kubernetes {
    fn checks(&self) -> Vec<Box<dyn Check>> {
        let mut checks: Vec<Box<dyn Check>> = vec![Box::new(Supervised(self.status.clone()))];
        checks.extend(health::checks(
            &self.client,
            &self.node_name,
            Duration::from_secs(self.section.heartbeat_max_age_s),
            &self.section.workloads,
        ));
        checks
    }
}

/// k3s runs as configured: nothing stops it, it is not waiting for anything.
struct Supervised(Arc<K3sStatus>);

impl Check for Supervised {
    fn name(&self) -> String {
        "kubernetes k3s".into()
    }
    fn run(&self) -> Result<(), String> {
        let problems = self.0.problems.lock().unwrap_or_else(|e| e.into_inner());
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        match &*self.0.waiting.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn k(v: &str, sha: &str) -> K3s {
        K3s {
            version: v.into(),
            sha256: sha.into(),
        }
    }
    fn ran(slot: &str, k3s: K3s) -> Ran {
        Ran {
            slot: slot.into(),
            k3s,
        }
    }

    #[test]
    fn the_datastore_is_saved_before_an_upgrade_and_put_back_on_a_return() {
        let old = k("v1.30.6+k3s1", "aa");
        let new = k("v1.31.2+k3s1", "bb");
        let none = |_: &str| false;
        let some = |n: &str| n == "a-v1.30.6+k3s1";
        // First k3s ever, or the same one again: nothing to do.
        assert_eq!(
            before_start(None, &ran("a", old.clone()), false, &none),
            Before::Start
        );
        let last = ran("a", old.clone());
        assert_eq!(
            before_start(Some(&last), &ran("b", old.clone()), true, &none),
            Before::Start
        );
        // Slot b's first (trial) boot brings another k3s: save slot a's datastore.
        assert_eq!(
            before_start(Some(&last), &ran("b", new.clone()), true, &none),
            Before::Snapshot("a-v1.30.6+k3s1".into())
        );
        // Back on slot a after b's k3s ran: restore a's snapshot, or refuse without one.
        let last = ran("b", new.clone());
        assert_eq!(
            before_start(Some(&last), &ran("a", old.clone()), false, &some),
            Before::Restore("a-v1.30.6+k3s1".into())
        );
        match before_start(Some(&last), &ran("a", old.clone()), false, &none) {
            Before::Refuse(why) => assert!(why.contains("does not support downgrades"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Slot b committed and booting normally: its own k3s ran last.
        assert_eq!(
            before_start(Some(&last), &ran("b", new), false, &none),
            Before::Start
        );
    }

    #[test]
    fn the_k3s_config_carries_the_section() {
        let section: spec::Kubernetes = cairn_facts::config::MachineConfig::<Fake>::parse(
            "kubernetes: {disable: [traefik, servicelb], flannel_backend: host-gw}",
        )
        .unwrap()
        .kubernetes
        .unwrap();
        let text = k3s_config(&section, "edge-01");
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            [
                "node-name: \"edge-01\"",
                "data-dir: \"/var/lib/rancher/k3s\"",
                "container-runtime-endpoint: \"unix:///run/containerd/containerd.sock\"",
                "write-kubeconfig-mode: \"0600\"",
                "flannel-backend: \"host-gw\"",
                "disable:",
                "  - \"traefik\"",
                "  - \"servicelb\"",
            ]
        );
        // k3s reads it as YAML: the values come back as written.
        let v: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(v["write-kubeconfig-mode"], "0600");
        assert_eq!(v["disable"][1], "servicelb");
    }

    struct Fake;
    impl cairn_facts::config::CertCheck for Fake {
        fn trust_anchors(_: &str) -> Result<(), String> {
            Ok(())
        }
        fn server_identity(_: &str, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn the_k3s_comes_from_the_manifest_or_its_own_hash() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("k3s");
        fs::write(&bin, b"not really k3s").unwrap();
        let listed = json!({"components": [{"name": "containerd", "version": "1.6", "sha256": "cc"},
                                           {"name": "k3s", "version": "v1.31.2+k3s1", "sha256": "dd"}]});
        assert_eq!(
            this_k3s(Some(&listed), &bin).unwrap(),
            k("v1.31.2+k3s1", "dd")
        );
        let keyed = json!({"k3s": {"version": "v1.30.6+k3s1", "sha256": "ee"}});
        assert_eq!(
            this_k3s(Some(&keyed), &bin).unwrap(),
            k("v1.30.6+k3s1", "ee")
        );
        let own = this_k3s(None, &bin).unwrap();
        assert_eq!(own.sha256, hex::encode(Sha256::digest(b"not really k3s")));
        assert!(own.version.starts_with("sha256-"));
    }

    #[test]
    fn the_log_is_tailed_then_followed_across_a_rotation() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("k3s.log");
        fs::write(&log, "one\ntwo\nthree\npart").unwrap();
        let (lines, mut follow) = LogFollower::tail(&log, 2);
        assert_eq!(lines, ["two", "three"]);
        assert!(follow.next_lines().is_empty(), "half a line waits");
        fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"ial\nfour\n")
            .unwrap();
        assert_eq!(follow.next_lines(), ["partial", "four"]);
        fs::rename(&log, t.path().join("k3s.log.1")).unwrap();
        fs::write(&log, "new\n").unwrap();
        assert_eq!(follow.next_lines(), ["new"]);
    }

    #[test]
    fn the_k3s_check_reads_the_supervisor_every_round() {
        let status = Arc::new(K3sStatus::default());
        let check = Supervised(status.clone());
        assert_eq!(check.name(), "kubernetes k3s");
        status.wait(Some(
            "waiting for containerd (/run/containerd/containerd.sock)".into(),
        ));
        assert_eq!(
            check.run(),
            Err("waiting for containerd (/run/containerd/containerd.sock)".into())
        );
        status.wait(None);
        assert_eq!(check.run(), Ok(()));
        // A refusal found after the trial's checks were made still fails them.
        status
            .problems
            .lock()
            .unwrap()
            .push("k3s not started: no snapshot".into());
        assert_eq!(check.run(), Err("k3s not started: no snapshot".into()));
    }

    /// The capability on the host with a stand-in k3s (a shell script): config and manifests
    /// written, k3s run only once "containerd" is there, restarted when it exits, stopped by
    /// pid; across starts as slots a and b with two k3s releases, the datastore saved before
    /// the upgrade and put back on the return, and a return without a snapshot refused
    /// without running k3s.
    #[test]
    fn the_capability_runs_k3s_and_guards_its_datastore_across_slots() {
        use std::os::unix::fs::PermissionsExt as _;
        let t = tempfile::tempdir().unwrap();
        let p = |rel: &str| t.path().join(rel);
        let paths = Paths {
            k3s_bin: p("usr/bin/k3s"),
            k3s_config: p("etc/rancher/k3s/config.yaml"),
            data_dir: p("var/lib/rancher/k3s"),
            containerd_socket: p("run/containerd/containerd.sock"),
            extension_manifest: p("usr/lib/cairn/extension.json"),
            images_dir: p("usr/lib/cairn/k3s/images"),
            last_run: p("var/lib/cairn-k3s/last-run.json"),
            snapshots: p("var/lib/cairn-k3s/snapshots"),
            log: p("var/log/k3s.log"),
            kubeconfig: p("etc/rancher/k3s/k3s.yaml"),
        };
        fs::create_dir_all(p("usr/bin")).unwrap();
        // Says it ran, then exits at once, so the supervisor has to start it again.
        fs::write(
            &paths.k3s_bin,
            "#!/bin/sh\necho \"stand-in k3s $*\"\nexit 3\n",
        )
        .unwrap();
        fs::set_permissions(&paths.k3s_bin, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(p("usr/lib/cairn/k3s/images")).unwrap();
        fs::write(p("usr/lib/cairn/k3s/images/airgap.tar.zst"), "images").unwrap();
        fs::create_dir_all(p("state").join(MANIFESTS_DIR)).unwrap();
        fs::write(
            p("state").join(MANIFESTS_DIR).join("app.yaml"),
            "kind: Namespace\n",
        )
        .unwrap();
        let section = cairn_facts::config::MachineConfig::<Fake>::parse(
            "kubernetes: {manifests: [app.yaml]}",
        )
        .unwrap()
        .kubernetes
        .unwrap();
        let runs = || {
            fs::read_to_string(&paths.log)
                .unwrap_or_default()
                .matches("stand-in k3s server")
                .count()
        };
        let until = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !f() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let start = |slot: &str, trial: bool, version: &str, sha: &str| {
            fs::write(
                &paths.extension_manifest,
                json!({"k3s": {"version": version, "sha256": sha}}).to_string(),
            )
            .unwrap();
            Kubernetes::start_with(
                paths.clone(),
                section.clone(),
                Some("Edge-01"),
                &p("state"),
                slot,
                trial,
            )
        };
        let stop = |k: Arc<Kubernetes>| {
            k.stop();
            // The supervisor sees it within 100 ms.
            std::thread::sleep(Duration::from_millis(400));
        };
        let last = || read_last_run(&paths.last_run);
        let k3s_check = |k: &Kubernetes| k.checks()[0].run();
        let db = paths.data_dir.join("server/db");

        // Slot a, first k3s ever: nothing runs until containerd's socket is there.
        let kube = start("a", false, "v1.30.6+k3s1", "aa");
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(runs(), 0);
        assert!(k3s_check(&kube)
            .unwrap_err()
            .starts_with("waiting for containerd"));
        fs::create_dir_all(p("run/containerd")).unwrap();
        fs::write(&paths.containerd_socket, "").unwrap();
        until("k3s to be started again after it exited", &|| runs() >= 2);
        stop(kube);
        let config = fs::read_to_string(&paths.k3s_config).unwrap();
        assert!(config.contains("node-name: \"edge-01\""), "{config}");
        assert_eq!(
            fs::read_to_string(paths.data_dir.join("server/manifests/app.yaml")).unwrap(),
            "kind: Namespace\n"
        );
        assert!(paths.data_dir.join("agent/images/airgap.tar.zst").exists());
        assert_eq!(last().unwrap().slot, "a");

        // Slot b's trial brings another k3s: a's datastore is saved first.
        fs::create_dir_all(&db).unwrap();
        fs::write(db.join("state.db"), "as k3s 1.30 left it").unwrap();
        fs::write(db.join("state.db-wal"), "its last transactions").unwrap();
        let kube = start("b", true, "v1.31.2+k3s1", "bb");
        until("slot b's k3s to run", &|| {
            last().is_some_and(|l| l.slot == "b")
        });
        stop(kube);
        let saved = paths.snapshots.join("a-v1.30.6+k3s1");
        assert_eq!(
            fs::read_to_string(saved.join("state.db")).unwrap(),
            "as k3s 1.30 left it"
        );
        // k3s 1.31 migrates the datastore.
        fs::write(db.join("state.db"), "migrated by k3s 1.31").unwrap();
        fs::remove_file(db.join("state.db-wal")).unwrap();

        // Back on slot a (a rollback): the datastore is a's again before its k3s starts.
        let kube = start("a", false, "v1.30.6+k3s1", "aa");
        until("slot a's k3s to run", &|| {
            last().is_some_and(|l| l.slot == "a")
        });
        stop(kube);
        assert_eq!(
            fs::read_to_string(db.join("state.db")).unwrap(),
            "as k3s 1.30 left it"
        );
        assert_eq!(
            fs::read_to_string(db.join("state.db-wal")).unwrap(),
            "its last transactions"
        );

        // A return with no snapshot to restore: k3s is not started, and the check says why.
        write_last_run(&paths.last_run, &ran("b", k("v1.31.2+k3s1", "bb"))).unwrap();
        fs::remove_dir_all(&paths.snapshots).unwrap();
        let before = runs();
        let kube = start("a", false, "v1.30.6+k3s1", "aa");
        until("the refusal", &|| {
            k3s_check(&kube).is_err_and(|e| e.contains("does not support downgrades"))
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(runs(), before, "k3s must not run on a newer datastore");
        assert_eq!(
            fs::read_to_string(db.join("state.db")).unwrap(),
            "as k3s 1.30 left it"
        );
        stop(kube);
    }

    #[test]
    fn manifests_are_copied_and_missing_ones_named() {
        let t = tempfile::tempdir().unwrap();
        let (from, to) = (t.path().join("state"), t.path().join("manifests"));
        fs::create_dir_all(&from).unwrap();
        fs::write(from.join("app.yaml"), "kind: Namespace\n").unwrap();
        let missing = copy_manifests(&["app.yaml".into(), "gone.yaml".into()], &from, &to).unwrap();
        assert_eq!(missing, ["gone.yaml"]);
        assert_eq!(
            fs::read_to_string(to.join("app.yaml")).unwrap(),
            "kind: Namespace\n"
        );
    }
}
