//! A removable disk plugged into a running machine, as an update stick would be, and the
//! watchdog driver each QEMU board loads.
//!
//! The harness plugs the stick in over QMP (a USB stick on qemu-x86_64, a hot-plugged virtio-blk
//! disk on qemu-aarch64, whose kernel has no USB storage). Two things show that the guest saw it:
//! QEMU's block statistics count the guest's reads of the stick (its kernel scanning the
//! partition table), and the kernel's own lines name the disk and its partition. The shipped
//! command line has `quiet`, which hides those lines, so the machine boots a private copy of the
//! image whose slot A UKI has `debug` in place of `quiet`; nothing else differs from the built
//! image.
//!
//! cairnd mounts each stick read-only and looks for a bundle (there is none). On qemu-x86_64
//! the stick then stays in across a reset: the kernel finds it before cairnd listens for new
//! disks, and cairnd must still take it (sticks present at its start are looked at too).

use std::path::Path;
use std::time::Duration;

use cairn_boot::fs::Fs;
use cairn_qemu::{LaunchOptions, Machine};
use cairn_systest::stick::{make_stick, StickFile};
use cairn_systest::{image_dir, manifest, qemu_lock};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The guest finds a new disk within a second or two under TCG.
const SEE_TIMEOUT: Duration = Duration::from_secs(60);
/// cairnd's lines for a stick with no bundle on it.
const MOUNTED: &str = "(vfat) mounted read-only on /run/cairn/stick";
const NO_BUNDLE: &str = "cairnd: no *.cairn bundle at the root of the stick";
/// A PCIe unplug waits for the guest's 5 s attention-button delay.
const DETACH_TIMEOUT: Duration = Duration::from_secs(60);

/// Copies the board's image into `dir` and makes slot A's kernel print informational messages
/// (`debug` in place of `quiet` in its UKI's `.cmdline`: the same length, so the PE layout stays
/// as it is; the test images are not signed), so the console shows what the kernel makes of the
/// stick.
fn verbose_copy(board: &cairn_board::Board, dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("disk.img");
    cairn_image::copy_sparse(&image_dir(board).join("disk.img"), &disk).unwrap();
    let slot = manifest(board)["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == "a")
        .unwrap()
        .clone();
    let entry = slot["entry"].as_str().unwrap().to_string();
    let cmdline = slot["cmdline"].as_str().unwrap().to_string();
    assert!(cmdline.contains(" quiet "), "{entry}: {cmdline}");
    let mut esp =
        cairn_image::formats::fat_fs::partition_fs(&image_dir(board), &disk, "ESP").unwrap();
    let mut uki = esp.read(&entry, 256 << 20).unwrap().unwrap();
    let at = uki
        .windows(cmdline.len())
        .position(|w| w == cmdline.as_bytes())
        .unwrap_or_else(|| panic!("{entry} holds no {cmdline:?}"));
    let verbose = cmdline.replacen(" quiet ", " debug ", 1);
    uki[at..at + verbose.len()].copy_from_slice(verbose.as_bytes());
    esp.write_new(&entry, &uki).unwrap();
    disk
}

/// Words of the kernel's lines for a new disk of `sectors` 512-byte sectors, in the order they
/// appear: its size, its partition, and on USB that it is removable.
fn disk_lines(board: &cairn_board::Board, sectors: u64) -> Vec<String> {
    match board.qemu.unwrap().removable {
        // `sd 0:0:0:0: [sda] <sectors> 512-byte logical blocks: (…)`, ` sda: sda1`,
        // `sd 0:0:0:0: [sda] Attached SCSI removable disk`.
        cairn_board::RemovableDisk::UsbStorage { .. } => vec![
            format!("[sda] {sectors} 512-byte logical blocks"),
            " sda: sda1".into(),
            "[sda] Attached SCSI removable disk".into(),
        ],
        // `virtio_blk virtio2: [vdb] <sectors> 512-byte logical blocks (…)`,
        // ` vdb: vdb1`.
        cairn_board::RemovableDisk::VirtioBlkHotplug { .. } => vec![
            format!("[vdb] {sectors} 512-byte logical blocks"),
            " vdb: vdb1".into(),
        ],
    }
}

/// Words of the line the kernel prints when the board's watchdog driver loads:
/// `i6300ESB timer 0000:00:03.0: initialized. heartbeat=30 sec (nowayout=0)` or
/// `softdog: initialized. soft_noboot=0 soft_margin=60 sec soft_panic=0 (nowayout=0)`.
fn watchdog_line(board: &cairn_board::Board) -> [&'static str; 2] {
    if board.watchdog_modules.contains(&"i6300esb") {
        ["i6300ESB timer ", ": initialized. heartbeat="]
    } else {
        assert!(
            board.watchdog_modules.contains(&"softdog"),
            "{}",
            board.name
        );
        ["softdog: ", "initialized. soft_noboot=0"]
    }
}

fn stick_seen_by_guest(board_name: &str) {
    let _serial = qemu_lock();
    let board = cairn_board::find(board_name).unwrap();
    let tmp = cairn_systest::rig_dir("cairn-stick-");
    let disk = verbose_copy(board, tmp.path());
    let stick = tmp.path().join("stick.img");
    make_stick(
        &stick,
        "CAIRN",
        vec![StickFile::Bytes("hello.txt", b"from the host\n".to_vec())],
    );
    let sectors = std::fs::metadata(&stick).unwrap().len() / 512;

    let mut opts = LaunchOptions::new(board, &disk, tmp.path().join("work"));
    opts.writable_image = true;
    opts.echo_console = true;
    let mut m = Machine::launch(opts).unwrap();
    m.wait_for_line("cairn-init: ready", BOOT_TIMEOUT).unwrap();
    let wd = watchdog_line(board);
    assert!(
        m.lines().iter().any(|l| wd.iter().all(|w| l.contains(w))),
        "no line with {wd:?} before ready: the watchdog driver did not load"
    );

    // Nothing is plugged in yet. The stick comes once cairnd listens for new disks (a virtio
    // disk already there when it starts is taken for one of the box's own).
    m.wait_for_line("cairnd: waiting for update bundles", BOOT_TIMEOUT)
        .unwrap();
    assert!(matches!(
        m.stick_reads("stick0"),
        Err(cairn_qemu::Error::NoStick { .. })
    ));
    m.attach_stick(&stick, "stick0").unwrap();
    let reads = m.wait_for_stick_read("stick0", SEE_TIMEOUT).unwrap();
    eprintln!("guest read the stick: {reads:?}");
    let lines = disk_lines(board, sectors);
    for line in &lines {
        m.wait_for_line(line, SEE_TIMEOUT).unwrap();
    }
    // cairnd takes it as it would a stick with an update: mounted read-only, looked at, and
    // nothing installed (whether its event came before or after the device's node).
    m.wait_for_line(MOUNTED, SEE_TIMEOUT).unwrap();
    m.wait_for_line(NO_BUNDLE, SEE_TIMEOUT).unwrap();
    assert!(
        reads.bytes >= 512,
        "the partition scan reads at least the first sector: {reads:?}"
    );

    // Out and in again: the unplug must leave nothing behind that blocks the same id.
    m.detach_stick("stick0", DETACH_TIMEOUT).unwrap();
    assert!(matches!(
        m.stick_reads("stick0"),
        Err(cairn_qemu::Error::NoStick { .. })
    ));
    m.attach_stick(&stick, "stick0").unwrap();
    m.wait_for_stick_read("stick0", SEE_TIMEOUT).unwrap();
    m.wait_for_line(&lines[1], SEE_TIMEOUT).unwrap();

    // A USB stick left in across a reset is there before cairnd listens for new disks (the
    // kernel finds it while the late modules load): cairnd looks at the disks present when it
    // starts, and mounts it.
    if matches!(
        board.qemu.unwrap().removable,
        cairn_board::RemovableDisk::UsbStorage { .. }
    ) {
        m.system_reset().unwrap();
        m.wait_for_line("cairn-init: ready", BOOT_TIMEOUT).unwrap();
        let watching = "cairnd: waiting for update bundles";
        let first = m
            .wait_for_any(&[&lines[1], watching], BOOT_TIMEOUT)
            .unwrap();
        let path = if first.needle == 0 {
            m.wait_for_line(watching, BOOT_TIMEOUT).unwrap();
            "found among the disks present (the kernel had it before cairnd listened)"
        } else {
            "announced by the kernel after cairnd listened"
        };
        m.wait_for_line(MOUNTED, SEE_TIMEOUT).unwrap();
        eprintln!("the stick left in across the reset: {path}");
        m.wait_for_line(NO_BUNDLE, SEE_TIMEOUT).unwrap();
    }

    assert!(
        !m.lines().iter().any(|l| l.contains("cairn-init: fatal")),
        "init reported a fatal error"
    );
    m.quit().unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap();
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_sees_a_usb_stick_and_loads_its_watchdog() {
    stick_seen_by_guest("qemu-x86_64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_sees_a_hotplugged_disk_and_loads_softdog() {
    stick_seen_by_guest("qemu-aarch64");
}
