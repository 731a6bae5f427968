//! Harness behaviour driven by a fake "QEMU": a shell script that prints lines, sleeps and exits,
//! so console splitting, wait cursors, timeouts, exits and teardown are tested without QEMU.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_qemu::{Error, LaunchOptions, Machine, Shutdown, Timeouts};

/// Options that run `body` as the machine. The work directory already holds an overlay and a
/// variable store and `reuse_disk` is on, so no qemu-img or firmware is needed.
fn fake(dir: &Path, body: &str) -> LaunchOptions {
    let script = dir.join("fake-qemu");
    fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.join("work");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("overlay.qcow2"), b"").unwrap();
    fs::write(work.join("efivars.fd"), b"").unwrap();
    let board = cairn_board::find("qemu-x86_64").unwrap();
    let mut opts = LaunchOptions::new(board, dir.join("no-disk.img"), work);
    opts.binary_override = Some(script);
    opts.reuse_disk = true;
    opts.timeouts = Some(Timeouts::default());
    opts
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

const LONG: Duration = Duration::from_secs(20);

#[test]
fn consecutive_waits_see_consecutive_events() {
    let dir = tempfile::tempdir().unwrap();
    let opts = fake(
        dir.path(),
        r"printf 'boot 1\r\nready\r\n'
sleep 0.2
printf 'boot 2\nre'
sleep 0.2
printf 'ady\ndone'",
    );
    let mut m = Machine::launch(opts).unwrap();
    assert!(m.reused_disk());
    assert_eq!(m.wait_for_line("ready", LONG).unwrap(), "ready");
    // "boot 1" is before the cursor: the next "boot" is the second one.
    assert_eq!(m.wait_for_line("boot", LONG).unwrap(), "boot 2");
    // A line split across writes is one line.
    assert_eq!(m.wait_for_line("ready", LONG).unwrap(), "ready");
    // The unterminated last line counts once QEMU closes the console.
    let hit = m.wait_for_any(&["missing", "done"], LONG).unwrap();
    assert_eq!((hit.needle, hit.index, hit.line.as_str()), (1, 4, "done"));
    m.wait_exit(LONG).unwrap();
    assert_eq!(m.lines(), ["boot 1", "ready", "boot 2", "ready", "done"]);
    let log = fs::read(m.console_log_path()).unwrap();
    assert_eq!(log, b"boot 1\r\nready\r\nboot 2\nready\ndone");
}

#[test]
fn timeout_names_the_needle_log_and_tail_and_keeps_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Machine::launch(fake(dir.path(), "echo hello; exec sleep 60")).unwrap();
    let start = Instant::now();
    let err = m
        .wait_for_line("never", Duration::from_millis(300))
        .unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("timed out") && msg.contains("\"never\""),
        "{msg}"
    );
    assert!(
        msg.contains(&m.console_log_path().display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("| hello"), "{msg}");
    // A failed wait does not move the cursor.
    assert_eq!(m.wait_for_line("hello", LONG).unwrap(), "hello");
    let pid = m.pid();
    drop(m);
    assert!(!alive(pid), "fake qemu {pid} survived drop");
}

#[test]
fn exit_while_waiting_reports_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Machine::launch(fake(
        dir.path(),
        "echo one; echo two; echo 'qemu: boom' >&2; exit 3",
    ))
    .unwrap();
    let start = Instant::now();
    let err = m.wait_for_line("never", LONG).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "exit not noticed promptly"
    );
    assert!(matches!(err, Error::Exited { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("exit status: 3"), "{msg}");
    assert!(msg.contains("| two") && msg.contains("qemu: boom"), "{msg}");
    assert!(msg.contains("console.log"), "{msg}");
    // Lines printed before the exit are still found.
    assert_eq!(m.wait_for_line("one", LONG).unwrap(), "one");
}

#[test]
fn arguments_reach_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fake(dir.path(), r#"for a in "$@"; do echo "arg $a"; done"#);
    opts.extra_args = vec!["-no-reboot".into()];
    let work = fs::canonicalize(&opts.work_dir).unwrap();
    let mut m = Machine::launch(opts).unwrap();
    m.wait_exit(LONG).unwrap();
    let lines = m.lines();
    assert_eq!(lines.first().map(String::as_str), Some("arg -nodefaults"));
    assert_eq!(lines.last().map(String::as_str), Some("arg -no-reboot"));
    let qmp = format!("arg unix:{}/qmp.sock,server=on,wait=off", work.display());
    assert!(lines.contains(&qmp), "{lines:?}");
}

#[test]
fn escapes_and_invalid_utf8_are_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Machine::launch(fake(
        dir.path(),
        r"printf '\033[2J\033[01;01H\033[1mBdsDxe\033[0m: ok\r\n\377\376 raw\n'",
    ))
    .unwrap();
    assert_eq!(m.wait_for_line("BdsDxe", LONG).unwrap(), "BdsDxe: ok");
    assert_eq!(
        m.wait_for_line("raw", LONG).unwrap(),
        "\u{fffd}\u{fffd} raw"
    );
}

#[test]
fn timeouts_are_scaled() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fake(dir.path(), "exec sleep 60");
    opts.timeouts = Timeouts::with_factor(0.01);
    let mut m = Machine::launch(opts).unwrap();
    let start = Instant::now();
    let err = m.wait_for_line("x", Duration::from_secs(30)).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("300ms"), "{err}");
}

#[test]
fn wait_exit_returns_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Machine::launch(fake(dir.path(), "sleep 0.2; exit 7")).unwrap();
    assert_eq!(m.wait_exit(LONG).unwrap().code(), Some(7));
    let mut m = Machine::launch(fake(dir.path(), "exec sleep 60")).unwrap();
    let err = m.wait_exit(Duration::from_millis(100)).unwrap_err();
    assert!(err.to_string().contains("QEMU to exit"), "{err}");
}

#[test]
fn qmp_on_an_exited_machine_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Machine::launch(fake(dir.path(), "echo bye")).unwrap();
    let start = Instant::now();
    let err = m.powerdown().unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, Error::Exited { .. }), "{err:?}");
    assert!(err.to_string().contains("QMP"), "{err}");
}

#[test]
fn shutdown_falls_back_to_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fake(dir.path(), "exec sleep 60");
    opts.qmp_connect_timeout = Duration::from_millis(200);
    let m = Machine::launch(opts).unwrap();
    let pid = m.pid();
    let how = m.shutdown(Duration::from_millis(100)).unwrap();
    assert!(matches!(how, Shutdown::Killed(_)), "{how:?}");
    assert!(!alive(pid));
}

#[test]
fn fresh_launch_needs_the_disk_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fake(dir.path(), "exit 0");
    opts.reuse_disk = false;
    let err = Machine::launch(opts).unwrap_err();
    assert!(matches!(err, Error::DiskImage { .. }), "{err:?}");
    assert!(err.to_string().contains("no-disk.img"), "{err}");
}

#[test]
fn missing_binary_is_a_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fake(dir.path(), "exit 0");
    opts.binary_override = Some(dir.path().join("absent"));
    let err = Machine::launch(opts).unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}
