//! Host containers against a real containerd and runc (Debian's `containerd` and `runc`,
//! installed by `cargo xtask setup`): the test starts its own containerd (root, state and socket
//! in a temporary folder; stopped by its pid at the end, also on a panic), builds OCI archives
//! holding the host's static busybox (Debian's `busybox-static`), and drives cairnd's
//! containers capability over it.
//!
//! Needs root (containers need namespaces and cgroups); prints one line and passes otherwise.

#[path = "../../systest/src/oci.rs"]
mod oci_writer;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::proto;
use cairn_daemon::containerd::{Containerd, Paths};
use cairn_daemon::containers::Containers;
use cairn_daemon::health::Gate;
use cairn_daemon::probe::Probe;
use cairn_facts::containers::{Container, ImageSource, Restart, Volume};

const BUSYBOX: &str = "/bin/busybox";

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    for bin in ["/usr/bin/containerd", "/usr/bin/ctr", BUSYBOX] {
        if !Path::new(bin).exists() {
            return Some(format!(
                "{bin} is missing (apt-get install containerd runc busybox-static)"
            ));
        }
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn paths(dir: &Path, tag: &str) -> Paths {
    Paths {
        containerd: "/usr/bin/containerd".into(),
        ctr: "/usr/bin/ctr".into(),
        bin_path: "/usr/bin:/usr/sbin:/bin:/sbin".into(),
        root: dir.join("root"),
        state: dir.join("state"),
        socket: dir.join("state/containerd.sock"),
        config: dir.join("containerd.toml"),
        cgroup_parent: format!("/cairn-test-{}-{tag}", std::process::id()),
        cri: false,
    }
}

/// Stops the containers and the test's containerd when the test ends, however it ends.
struct Stop(Vec<Arc<Containers>>, Option<Arc<Containerd>>);

impl Drop for Stop {
    fn drop(&mut self) {
        for c in &self.0 {
            c.stop();
        }
        if let Some(c) = &self.1 {
            c.stop();
            // The (empty) cgroups runc made for the containers' parent.
            let parent = c.paths().cgroup_parent.trim_start_matches('/').to_string();
            for root in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(root.path().join(&parent));
            }
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&parent));
        }
    }
}

/// An archive of a busybox image for `arch` serving "hello from <name>" on `port`, after
/// printing a line and writing its name into `/data/starts` and `/ro/starts` (the volumes of
/// the containers that have them).
fn web_archive(dir: &Path, name: &str, arch: &str, port: u16) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let busybox = std::fs::read(BUSYBOX).unwrap();
    let page = format!("hello from {name}\n");
    let script = format!(
        "echo {name} starting; for v in /data /ro; do echo {name} >> $v/starts; done 2>/dev/null; \
         exec httpd -f -p 127.0.0.1:{port} -h /www"
    );
    let image = oci_writer::busybox_image(busybox, arch, &page, &["/bin/sh", "-c", &script]);
    let path = dir.join(format!("{name}.tar"));
    std::fs::write(&path, image.archive().unwrap()).unwrap();
    path
}

fn container(name: &str, archive: &Path, probe: Option<&str>) -> Container {
    Container {
        name: name.into(),
        image: ImageSource::Archive(archive.to_path_buf()),
        args: Vec::new(),
        env: Default::default(),
        restart: Restart::Always,
        probe: probe.map(|p| Probe::from_json(&serde_json::from_str(p).unwrap()).unwrap()),
        memory_limit: Some(64 << 20),
        volumes: Vec::new(),
    }
}

/// `container` with a writable volume `vol` at /data and a read-only one `ro` at /ro, in `dir`.
fn with_volumes(mut c: Container, dir: &Path) -> Container {
    c.volumes = vec![
        Volume {
            host: dir.join("vol"),
            path: "/data".into(),
            read_only: false,
        },
        Volume {
            host: dir.join("ro"),
            path: "/ro".into(),
            read_only: true,
        },
    ];
    c
}

/// The body of `GET /` on `port`, if it answers.
fn get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_results(c: &Containers) -> Vec<(String, Result<(), String>)> {
    c.checks().iter().map(|k| (k.name(), k.run())).collect()
}

fn service(c: &Containers, name: &str) -> proto::ServiceInfo {
    c.services().into_iter().find(|s| s.name == name).unwrap()
}

/// A process's resident memory in KiB (`VmRSS`).
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kib() -> u64 {
    rss_of(std::process::id()).unwrap()
}

fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

fn other_arch() -> &'static str {
    match host_arch() {
        "x86_64" => "aarch64",
        _ => "x86_64",
    }
}

#[test]
fn host_containers_run_restart_gate_health_and_refuse_bad_images() {
    if let Some(why) = missing() {
        println!("skipped host containers against containerd: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let web = web_archive(dir.path(), "web", host_arch(), port);
    let probe = format!(r#"{{"http": "http://127.0.0.1:{port}/", "status": 200}}"#);

    let containerd = Containerd::start(paths(dir.path(), "a")).unwrap();
    let mut stop = Stop(Vec::new(), Some(containerd.clone()));
    std::thread::sleep(Duration::from_millis(500));
    let containerd_idle = rss_of(containerd.pid()).unwrap_or(0);

    // cairnd's request to the container answering.
    let rss_before = rss_kib();
    let t0 = Instant::now();
    let set = Containers::start_on(
        containerd.clone(),
        &[with_volumes(
            container("web", &web, Some(&probe)),
            dir.path(),
        )],
    );
    stop.0.push(set.clone());
    let body = wait_for("the container to answer", Duration::from_secs(60), || {
        get(port)
    });
    let cairnd_start = t0.elapsed();
    assert_eq!(body, "hello from web\n");
    let supervision_kib = rss_kib().saturating_sub(rss_before);

    // It is listed running with its memory, its health check passes, its output is kept.
    let s = service(&set, "web");
    assert_eq!(s.state, proto::ServiceState::Running as i32, "{s:?}");
    assert!(s.pid > 0 && s.rss_bytes > 0, "{s:?}");
    let checks = wait_for("the check to pass", Duration::from_secs(10), || {
        let r = check_results(&set);
        r.iter().all(|(_, r)| r.is_ok()).then_some(r)
    });
    assert_eq!(checks[0].0, "container web");
    let log = set.log("web").unwrap();
    wait_for("its output in the log", Duration::from_secs(10), || {
        let b = log.after(0, 100, Duration::ZERO);
        b.entries
            .iter()
            .any(|(_, (_, l))| l == "web starting")
            .then_some(())
    });

    // Killing its process: it is started again (restart: always) and answers again.
    let first = s.pid;
    // SAFETY: kill takes no pointers; the pid is the container's, started by this test.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    let again = wait_for("the restart", Duration::from_secs(60), || {
        let s = service(&set, "web");
        (s.restarts >= 1 && s.pid != 0 && s.pid != first && get(port).is_some()).then_some(s)
    });
    assert!(
        again.last_exit.contains("signal 9") || again.last_exit.contains("137"),
        "{again:?}"
    );

    // Bad images beside it: refused with one line each, and the running container is left
    // alone (same process, still answering).
    let wrong_arch = web_archive(dir.path(), "foreign", other_arch(), free_port());
    let malformed = dir.path().join("broken.tar");
    let bytes = std::fs::read(&web).unwrap();
    std::fs::write(&malformed, &bytes[..bytes.len() / 3]).unwrap();
    let sick_port = free_port();
    let sick_archive = web_archive(dir.path(), "sick", host_arch(), free_port());
    let never_probe = format!(r#"{{"tcp": "127.0.0.1:{sick_port}", "timeout_s": 1}}"#);
    let mut quits = container("quits", &sick_archive, None);
    quits.args = vec!["/bin/sh".into(), "-c".into(), "exit 3".into()];
    quits.restart = Restart::OnFailure;
    let mut once = quits.clone();
    once.name = "once".into();
    once.restart = Restart::Never;
    // A volume whose folder is a symbolic link (as a container sharing its parent could leave).
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("link")).unwrap();
    let mut linked = container("linked", &sick_archive, None);
    linked.volumes = vec![Volume {
        host: dir.path().join("link"),
        path: "/data".into(),
        read_only: false,
    }];
    let bad = Containers::start_on(
        containerd.clone(),
        &[
            container("foreign", &wrong_arch, None),
            container("broken", &malformed, None),
            container("sick", &sick_archive, Some(&never_probe)),
            quits,
            once,
            linked,
        ],
    );
    stop.0.push(bad.clone());
    let results = wait_for(
        "the bad containers' verdicts",
        Duration::from_secs(60),
        || {
            let r = check_results(&bad);
            let settled = r.iter().all(|(n, r)| match r {
                Err(e) => {
                    !e.starts_with("starting") && (n != "container quits" || e.contains("restarts"))
                }
                Ok(()) => false,
            });
            settled.then_some(r)
        },
    );
    let find = |name: &str| {
        results
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .clone()
            .unwrap_err()
    };
    let foreign = find("container foreign");
    let other = oci_writer::oci_arch(other_arch());
    let mine = oci_writer::oci_arch(host_arch());
    assert!(
        foreign.ends_with(&format!(
            "refused: the image is for linux/{other}, not this machine's linux/{mine}"
        )),
        "{foreign}"
    );
    let broken = find("container broken");
    assert!(broken.contains("broken.tar refused: truncated"), "{broken}");
    let sick = find("container sick");
    assert!(
        sick.starts_with(&format!("probe tcp 127.0.0.1:{sick_port}:")),
        "{sick}"
    );
    let quits = find("container quits");
    assert!(
        quits.contains("exit status 3") && quits.contains("restarting"),
        "{quits}"
    );
    let once = find("container once");
    assert!(
        once.contains("not restarted by its policy (last exit: exit status 3)"),
        "{once}"
    );
    let linked = find("container linked");
    assert!(
        linked.starts_with(&format!(
            "volume {}/link refused: it leads to {}/elsewhere",
            dir.path().display(),
            dir.path().display()
        )),
        "{linked}"
    );
    for (n, r) in &results {
        assert!(!r.as_ref().unwrap_err().contains('\n'), "{n}: {r:?}");
    }
    assert_eq!(
        service(&bad, "foreign").state,
        proto::ServiceState::Stopped as i32
    );
    // Nothing of the refused images reached containerd.
    let images = Command::new("/usr/bin/ctr")
        .args(["--address"])
        .arg(dir.path().join("state/containerd.sock"))
        .args(["--namespace", "cairn", "images", "ls", "-q"])
        .output()
        .unwrap();
    let images = String::from_utf8_lossy(&images.stdout);
    assert!(
        !images.contains("foreign") && !images.contains("broken"),
        "{images}"
    );
    assert!(images.contains("cairn.local/web:current"), "{images}");
    assert_eq!(service(&set, "web").pid, again.pid);
    assert_eq!(get(port).as_deref(), Some("hello from web\n"));

    // An archive that is not there yet: the container waits for it, and runs once it comes.
    let late_port = free_port();
    let late_path = dir.path().join("late.tar");
    let late = Containers::start_on(containerd.clone(), &[container("late", &late_path, None)]);
    stop.0.push(late.clone());
    let waiting = wait_for("the wait for the archive", Duration::from_secs(10), || {
        check_results(&late)[0]
            .1
            .clone()
            .err()
            .filter(|e| e != "starting")
    });
    assert!(waiting.contains("late.tar is not there yet"), "{waiting}");
    let staged = web_archive(dir.path(), "staged", host_arch(), late_port);
    std::fs::rename(staged, &late_path).unwrap();
    wait_for("the late container", Duration::from_secs(60), || {
        get(late_port)
    });
    assert_eq!(check_results(&late)[0].1, Ok(()));

    // The baseline: the same image imported and started by hand with ctr.
    let hand_port = free_port();
    let hand = web_archive(dir.path(), "hand", host_arch(), hand_port);
    let ctr = |args: &[&str]| {
        let out = Command::new("/usr/bin/ctr")
            .arg("--address")
            .arg(dir.path().join("state/containerd.sock"))
            .args(["--namespace", "by-hand"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let t0 = Instant::now();
    ctr(&[
        "images",
        "import",
        "--index-name",
        "by-hand/web:1",
        hand.to_str().unwrap(),
    ]);
    ctr(&["run", "-d", "--net-host", "by-hand/web:1", "hand"]);
    wait_for(
        "the container started by hand",
        Duration::from_secs(60),
        || get(hand_port),
    );
    let by_hand = t0.elapsed();
    ctr(&["tasks", "kill", "-s", "SIGKILL", "hand"]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("/usr/bin/ctr")
        .arg("--address")
        .arg(dir.path().join("state/containerd.sock"))
        .args([
            "--namespace",
            "by-hand",
            "tasks",
            "delete",
            "--force",
            "hand",
        ])
        .output();
    // The next boot: containerd starts again on the same store (DATA), and cairnd finds the
    // image it imported before under the same manifest: it runs it without importing it again.
    for c in stop.0.drain(..) {
        c.stop();
    }
    containerd.stop();
    let containerd = Containerd::start(paths(dir.path(), "a")).unwrap();
    stop.1 = Some(containerd.clone());
    // A container record the last run left (as a power cut during it would): the first `ctr
    // run` meets it, and cairnd removes it and starts the container again.
    let leftover = Command::new("/usr/bin/ctr")
        .arg("--address")
        .arg(dir.path().join("state/containerd.sock"))
        .args([
            "--namespace",
            "cairn",
            "containers",
            "create",
            "cairn.local/web:current",
            "web",
        ])
        .output()
        .unwrap();
    assert!(
        leftover.status.success(),
        "{}",
        String::from_utf8_lossy(&leftover.stderr)
    );
    let seen = cairn_daemon::log::ring().after(0, usize::MAX, Duration::ZERO);
    let from = seen.entries.last().map_or(0, |(n, _)| *n);
    let reboot = Containers::start_on(
        containerd.clone(),
        &[with_volumes(
            container("web", &web, Some(&probe)),
            dir.path(),
        )],
    );
    stop.0.push(reboot.clone());
    wait_for(
        "the container after the restart",
        Duration::from_secs(60),
        || get(port),
    );
    let lines: Vec<String> = cairn_daemon::log::ring()
        .after(from, usize::MAX, Duration::ZERO)
        .entries
        .into_iter()
        .map(|(_, (_, l))| l)
        .filter(|l| l.starts_with("container web:"))
        .collect();
    assert!(
        lines.iter().any(
            |l| l.starts_with("container web: cairn.local/web:current (sha256:")
                && l.ends_with("is in containerd's store already: not imported again")
        ),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("imported /")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l == "container web: removing what an earlier run left, and starting it again"),
        "{lines:?}"
    );
    assert_eq!(service(&reboot, "web").restarts, 0);
    // Its volumes, made by cairnd: the writable one kept what each of its three starts wrote
    // (the first, the restart after the kill, and this one on the next containerd); the
    // read-only one took no write.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("vol/starts")).unwrap(),
        "web\nweb\nweb\n"
    );
    assert!(dir.path().join("ro").is_dir());
    assert!(!dir.path().join("ro/starts").exists());
    // A different archive under the same name is imported.
    reboot.stop();
    let other_port = free_port();
    let newer = web_archive(&dir.path().join("newer"), "web", host_arch(), other_port);
    let replaced = Containers::start_on(containerd.clone(), &[container("web", &newer, None)]);
    stop.0.push(replaced.clone());
    wait_for(
        "the replaced image to answer",
        Duration::from_secs(60),
        || get(other_port),
    );
    let imported = cairn_daemon::log::ring()
        .after(from, usize::MAX, Duration::ZERO)
        .entries
        .into_iter()
        .any(|(_, (_, l))| {
            l.starts_with("container web: imported ") && l.contains("newer/web.tar")
        });
    assert!(imported);

    println!(
        "host container start (request -> answering): cairnd {} ms, ctr by hand {} ms",
        cairnd_start.as_millis(),
        by_hand.as_millis()
    );
    println!(
        "resident memory added by supervising one container: {supervision_kib} KiB; containerd: {containerd_idle} KiB idle, {} KiB after the test's imports",
        rss_of(containerd.pid()).unwrap_or(0)
    );
    drop(stop);
}
