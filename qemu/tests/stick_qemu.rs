//! Plugging a stick in and out, and waiting for QMP events, against the real QEMU 7.2.
//!
//! No guest OS is needed: QEMU adds and removes a USB device by itself, so these run in
//! seconds while the firmware idles. That the guest kernel then sees the disk is the system
//! test's job (systest/tests/stick.rs), on built images.

use std::fs;
use std::path::Path;
use std::time::Duration;

use cairn_qemu::{Error, LaunchOptions, Machine};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn machine(board: &str, dir: &Path) -> Machine {
    let disk = dir.join("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let board = cairn_board::find(board).unwrap();
    Machine::launch(LaunchOptions::new(board, &disk, dir.join("work")))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn usb_stick_goes_in_and_out_and_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick.img");
    fs::write(&stick, vec![0u8; 4 << 20]).unwrap();
    let mut m = machine("qemu-x86_64", dir.path());

    assert!(matches!(m.stick_reads("s1"), Err(Error::NoStick { .. })));
    m.attach_stick(&stick, "s1").unwrap();
    m.stick_reads("s1").unwrap();
    // The same id twice is refused by QEMU, and the refusal leaves the first stick in place.
    let err = m.attach_stick(&stick, "s1").unwrap_err();
    assert!(matches!(err, Error::QmpRefused { .. }), "{err:?}");
    m.stick_reads("s1").unwrap();

    // A USB unplug needs no guest: QEMU confirms it at once.
    m.detach_stick("s1", WAIT).unwrap();
    assert!(matches!(m.stick_reads("s1"), Err(Error::NoStick { .. })));
    let deleted = m.wait_for_event("DEVICE_DELETED", WAIT).unwrap();
    assert_eq!(deleted["event"], "DEVICE_DELETED", "{deleted}");

    // Nothing was left behind: the same id plugs in again.
    m.attach_stick(&stick, "s1").unwrap();
    m.detach_stick("s1", WAIT).unwrap();
}

#[test]
fn stick_arguments_are_checked_before_qemu_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = machine("qemu-x86_64", dir.path());
    let err = m
        .attach_stick(&dir.path().join("missing.img"), "s1")
        .unwrap_err();
    assert!(matches!(err, Error::DiskImage { .. }), "{err:?}");
    let stick = dir.path().join("stick.img");
    fs::write(&stick, [0u8; 512]).unwrap();
    let err = m.attach_stick(&stick, "s,1").unwrap_err();
    assert!(matches!(err, Error::StickId { .. }), "{err:?}");
}

#[test]
fn aarch64_stick_goes_into_the_root_port() {
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick.img");
    fs::write(&stick, vec![0u8; 4 << 20]).unwrap();
    let mut m = machine("qemu-aarch64", dir.path());
    m.attach_stick(&stick, "s1").unwrap();
    // QEMU put it behind the root port (a bus that did not exist would have been refused); the
    // firmware never enumerates it, so only QOM, not `query-pci`, shows it.
    let kind = m
        .qmp(
            "qom-get",
            Some(json!({ "path": "/machine/peripheral/s1", "property": "type" })),
        )
        .unwrap();
    assert_eq!(kind, "virtio-blk-pci");
    assert!(m.stick_reads("s1").is_ok());
}

#[test]
fn waits_for_qmp_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = machine("qemu-x86_64", dir.path());
    m.system_reset().unwrap();
    let first = m.wait_for_event("RESET", WAIT).unwrap();
    m.system_reset().unwrap();
    let second = m.wait_for_event("RESET", WAIT).unwrap();
    // The second wait did not return the first event again.
    assert_ne!(first["timestamp"], second["timestamp"]);
    let err = m
        .wait_for_event("WATCHDOG", Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}
