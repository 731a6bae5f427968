//! The harness against the real QEMU 7.2 with the real UEFI firmware (TCG).
//!
//! These tests need `qemu-system-x86_64`, `qemu-system-aarch64`, `qemu-img`, OVMF and AAVMF. When
//! they are missing the tests fail, and the launch error says that `cargo xtask setup` installs
//! them: a skipped VM test would look like a passing one.

use std::fs;
use std::path::Path;
use std::time::Duration;

use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward, Shutdown};
use serde_json::json;

const FIRMWARE: Duration = Duration::from_secs(180);
const EXIT: Duration = Duration::from_secs(30);
const DISK_BYTES: usize = 4 << 20;

/// A raw disk with a recognisable, non-zero pattern, so a stray write to it would show.
fn pattern_disk(path: &Path) -> Vec<u8> {
    let bytes: Vec<u8> = (0..DISK_BYTES).map(|i| (i % 251) as u8 + 1).collect();
    fs::write(path, &bytes).unwrap();
    bytes
}

fn launch(opts: LaunchOptions) -> Machine {
    Machine::launch(opts).unwrap_or_else(|e| panic!("{e}"))
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs a qemu-io command on the machine's disk through the block layer, as the guest would see
/// it. QEMU 7.2 prints qemu-io's report on its stdout, which is our console, not in the QMP reply.
fn qemu_io(m: &mut Machine, cmd: &str) {
    let line = format!("qemu-io disk0 \"{cmd}\"");
    let reply = m
        .qmp(
            "human-monitor-command",
            Some(json!({ "command-line": line })),
        )
        .unwrap();
    assert_eq!(reply, json!(""), "qemu-io refused {cmd}");
}

/// Whether the first 64 KiB of the machine's disk read back as 0x5a.
fn first_64k_is_5a(m: &mut Machine) -> bool {
    qemu_io(m, "read -P 0x5a 0 64k");
    // On a mismatch qemu-io reports the failure before its summary line.
    let hit = m
        .wait_for_any(&["Pattern verification failed", "read 65536/65536"], EXIT)
        .unwrap();
    hit.needle == 1
}

#[test]
fn x86_64_writes_go_to_the_overlay_and_survive_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let pristine = pattern_disk(&disk);
    let board = cairn_board::find("qemu-x86_64").unwrap();
    let mut opts = LaunchOptions::new(board, &disk, dir.path().join("work"));
    opts.port_forwards = vec![PortForward::new(free_local_port().unwrap(), 22)];

    // First boot: OVMF reaches its boot manager on the serial console.
    let mut m = launch(opts.clone());
    assert!(!m.reused_disk());
    let line = m.wait_for_line("BdsDxe", FIRMWARE).unwrap();
    assert!(line.contains("BdsDxe"), "{line}");
    qemu_io(&mut m, "write -P 0x5a 0 64k");
    m.wait_for_line("wrote 65536/65536", EXIT).unwrap();
    assert!(first_64k_is_5a(&mut m));
    let pid = m.pid();
    m.quit().unwrap();
    assert!(m.wait_exit(EXIT).unwrap().success());
    assert!(gone(pid), "qemu {pid} still present after quit");
    assert!(m.qmp_events().iter().any(|e| e["event"] == "SHUTDOWN"));
    drop(m);
    assert!(
        fs::read(&disk).unwrap() == pristine,
        "the raw disk image was written"
    );

    // Second boot of the same machine: the write is still there.
    opts.reuse_disk = true;
    let mut m = launch(opts.clone());
    assert!(m.reused_disk());
    assert!(
        first_64k_is_5a(&mut m),
        "the write did not survive a relaunch"
    );
    let pid = m.pid();
    let how = m.shutdown(Duration::from_secs(2)).unwrap();
    eprintln!("x86_64 shutdown at the firmware: {how:?}");
    assert!(
        how.status().success() || matches!(how, Shutdown::Killed(_)),
        "{how:?}"
    );
    assert!(
        !matches!(how, Shutdown::Killed(_)),
        "QMP quit did not stop QEMU: {how:?}"
    );
    assert!(gone(pid));

    // A fresh launch starts again from the pristine image.
    opts.reuse_disk = false;
    let mut m = launch(opts);
    assert!(
        !first_64k_is_5a(&mut m),
        "a fresh launch kept the old overlay"
    );
    drop(m);
    assert!(
        fs::read(&disk).unwrap() == pristine,
        "the raw disk image was written"
    );
}

#[test]
fn dropping_a_running_machine_kills_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    pattern_disk(&disk);
    let board = cairn_board::find("qemu-x86_64").unwrap();
    let mut m = launch(LaunchOptions::new(board, &disk, dir.path().join("work")));
    let pid = m.pid();
    // It is really running: QMP answers.
    let status = m.qmp("query-status", None).unwrap();
    assert_eq!(status["running"], true, "{status}");
    drop(m);
    assert!(gone(pid), "qemu {pid} survived drop");
}

#[test]
fn aarch64_reaches_firmware_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    pattern_disk(&disk);
    let board = cairn_board::find("qemu-aarch64").unwrap();
    let mut m = launch(LaunchOptions::new(board, &disk, dir.path().join("work")));
    m.wait_for_line("BdsDxe", FIRMWARE).unwrap();
    let pid = m.pid();
    // AAVMF's shell ignores the ACPI power button, so this exercises the `quit` fallback.
    let how = m.shutdown(Duration::from_secs(3)).unwrap();
    assert!(matches!(how, Shutdown::Quit(s) if s.success()), "{how:?}");
    assert!(gone(pid));
}
