//! The host container benchmark, run by cairnd itself on an image built for it: the kernel
//! command line carries `cairn.bench=containers` (`cargo xtask bench-containers` builds such an
//! image; no release has it, and the device has no shell to start `ctr` any other way).
//!
//! The one idea: the baseline is measured in the same guest, on the same containerd, in the
//! same boot as cairnd's own path, round after round in alternating order: `ctr images import`
//! then `ctr run -d` in the host's network (`--with-ns network:…`, as cairnd runs containers:
//! `--net-host` needs an /etc/hosts the root does not have), as someone would type them, against
//! [`Containers::start_on`] (the archive checked, imported, `ctr run` supervised). Each is timed
//! from the request to the container answering HTTP on its port; the store is emptied of both
//! images between rounds, so every round imports. The figures are console lines that
//! `cargo xtask bench-containers` reads:
//!
//! - `bench containers: containerd idle rss_kib=N` (containerd up, nothing imported this boot);
//! - `bench containers: round R cairnd_ms=A ctr_ms=B added_kib=C` (C: cairnd's own resident
//!   memory while it supervises the container, less before it started it; also each path's
//!   time to its image imported, `cairnd_import_ms` and `ctr_import_ms`), after a `warm-up`
//!   round of the same shape that is not counted;
//! - `bench containers: done`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use cairn_facts::containers::{Container, ImageSource, Restart, ARCHIVE_DIR};

use crate::containerd::{Containerd, Paths};
use crate::containers::{self, Containers};
use crate::log::{say, unix_ms};
use crate::remote::rss_bytes;

/// The kernel command-line word that asks for the benchmark.
pub const WORD: &str = "cairn.bench=containers";
/// The archive the benchmark runs (an image whose `sh` and `httpd` serve `/www`), brought by a
/// stick's `containers/bench.tar`.
const ARCHIVE: &str = "bench.tar";
const ROUNDS: u32 = 5;
/// Longest wait for the archive, and for a container to answer.
const WAIT: Duration = Duration::from_secs(900);
const PORT: u16 = 8090;

/// Whether this boot's kernel command line asks for the benchmark.
pub fn requested() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.split_whitespace().any(|w| w == WORD))
}

/// Runs the benchmark on a thread of its own, on `containerd` when cairnd runs one already.
pub fn spawn(containerd: Option<Arc<Containerd>>) {
    let run = move || match run(containerd) {
        Ok(()) => say!("bench containers: done"),
        Err(e) => say!("bench containers: failed: {e}"),
    };
    if let Err(e) = thread::Builder::new().name("bench".into()).spawn(run) {
        say!("bench containers: failed: {e}");
    }
}

fn run(containerd: Option<Arc<Containerd>>) -> Result<(), String> {
    let containerd = match containerd {
        Some(c) => c,
        None => {
            containers::prepare_state()?;
            Containerd::start(Paths::device())?
        }
    };
    containerd.wait_ready(Duration::from_secs(300))?;
    let archive = Path::new(ARCHIVE_DIR).join(ARCHIVE);
    say!("bench containers: waiting for {}", archive.display());
    let deadline = Instant::now() + WAIT;
    while !archive.exists() {
        if Instant::now() > deadline {
            return Err(format!("{} never came", archive.display()));
        }
        thread::sleep(Duration::from_secs(1));
    }
    thread::sleep(Duration::from_secs(5));
    let idle = rss_bytes(containerd.pid()).ok_or("containerd's memory is unreadable")?;
    say!("bench containers: containerd idle rss_kib={}", idle >> 10);
    let path = archive.to_str().ok_or("the archive path is not UTF-8")?;
    // Round 0 warms up (the first `ctr`, runc and shim of the boot load from the disk); it is
    // said but not counted.
    for round in 0..=ROUNDS {
        let port = PORT + round as u16;
        let cmd = |name: &str| {
            vec![
                "/bin/sh".to_string(),
                "-c".into(),
                format!("exec httpd -f -p 127.0.0.1:{port} -h /www # {name}"),
            ]
        };
        // Alternating which goes first, so neither always meets a warmer page cache.
        let mut cairnd = None;
        let mut by_hand = None;
        for step in 0..2 {
            if (step + round) % 2 == 0 {
                cairnd = Some(through_cairnd(
                    &containerd,
                    round,
                    path,
                    cmd("cairnd"),
                    port,
                )?);
            } else {
                by_hand = Some(by_hand_with_ctr(
                    &containerd,
                    round,
                    path,
                    cmd("ctr"),
                    port,
                )?);
            }
        }
        let (Some((cairnd_ms, added, cairnd_import)), Some((ctr_ms, ctr_import))) =
            (cairnd, by_hand)
        else {
            return Err("a round missed a run".into());
        };
        let what = match round {
            0 => "warm-up".to_string(),
            r => format!("round {r}"),
        };
        say!(
            "bench containers: {what} cairnd_ms={cairnd_ms} ctr_ms={ctr_ms} added_kib={} cairnd_import_ms={cairnd_import} ctr_import_ms={ctr_import}",
            added >> 10
        );
    }
    Ok(())
}

/// cairnd's request to the container answering, cairnd's resident memory added meanwhile, and
/// the request to cairnd's `imported` line (ms, by the wall clock its log lines carry).
fn through_cairnd(
    containerd: &Arc<Containerd>,
    round: u32,
    archive: &str,
    args: Vec<String>,
    port: u16,
) -> Result<(u128, u64, i64), String> {
    let name = format!("bench-{round}");
    let me = std::process::id();
    let before = rss_bytes(me).unwrap_or(0);
    let asked = unix_ms(SystemTime::now());
    let started = Instant::now();
    let set = Containers::start_on(
        containerd.clone(),
        &[Container {
            name: name.clone(),
            image: ImageSource::Archive(archive.into()),
            args,
            env: Default::default(),
            restart: Restart::Never,
            probe: None,
            memory_limit: None,
            volumes: Vec::new(),
        }],
    );
    let answered = answer(port);
    let ms = started.elapsed().as_millis();
    let added = rss_bytes(me).unwrap_or(0).saturating_sub(before);
    set.stop();
    answered?;
    let _ = containerd.request(&[
        "images",
        "rm",
        "--sync",
        &format!("cairn.local/{name}:current"),
    ]);
    let _ = std::fs::remove_file(containerd.paths().root.join("cairn-imported").join(&name));
    let imported = format!("container {name}: imported ");
    let import_ms = crate::log::ring()
        .after(0, usize::MAX, Duration::ZERO)
        .entries
        .iter()
        .rev()
        .find(|(_, (_, line))| line.starts_with(&imported))
        .map_or(-1, |(_, (at, _))| at - asked);
    Ok((ms, added, import_ms))
}

/// `ctr images import` and `ctr run -d` to the container answering, and the import's share.
fn by_hand_with_ctr(
    containerd: &Containerd,
    round: u32,
    archive: &str,
    args: Vec<String>,
    port: u16,
) -> Result<(u128, u128), String> {
    let (image, id) = (
        format!("bench.local/hand-{round}:1"),
        format!("hand-{round}"),
    );
    let started = Instant::now();
    containerd.request(&["images", "import", "--index-name", &image, archive])?;
    let import_ms = started.elapsed().as_millis();
    // The host's network as cairnd gives it: `--net-host` would also bind the root's
    // /etc/hosts, which this read-only root does not have.
    let net = format!("network:/proc/{}/ns/net", std::process::id());
    let mut run = vec!["run", "-d", "--with-ns", &net, &image, &id];
    run.extend(args.iter().map(String::as_str));
    containerd.request(&run)?;
    let answered = answer(port);
    let ms = started.elapsed().as_millis();
    let _ = containerd.request(&["tasks", "kill", "--signal", "SIGKILL", &id]);
    containerd.remove(&id);
    let _ = containerd.request(&["images", "rm", "--sync", &image]);
    answered.map(|()| (ms, import_ms))
}

/// Waits until `GET /` on 127.0.0.1:`port` gets an answer.
fn answer(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = (|| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).ok()?;
            head.starts_with(b"HTTP/1.").then_some(())
        })();
        if got.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nothing answered on port {port}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}
