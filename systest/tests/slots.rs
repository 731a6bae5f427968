//! A/B slots on the real firmware and the real systemd-boot, in QEMU: each slot a unified kernel
//! image in `EFI/Linux/`, a trial boot of slot B with boot counting in its file name that the device's cairnd commits once healthy, a slot marked bad, and
//! dm-verity stopping a tampered root so that boot counting returns the machine to A by itself.
//! (Trials that fail their health checks or hang are in update.rs.)
//!
//! Between boots the test changes the ESP of a private copy of the image from the host, with
//! the same `SdBoot` backend the device uses, then lets the machine boot again with its UEFI
//! variables kept. Reboots are QEMU resets (a power cycle as far as the firmware can tell).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_boot::model::Bootloader;
use cairn_boot::sdboot::SdBoot;
use cairn_boot::Slot;
use cairn_image::formats::fat_fs::{partition_fs, FatPartitionFs};
use cairn_qemu::{LaunchOptions, Machine};
use cairn_systest::{image_dir, manifest, qemu_lock};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// A machine whose disk is a private, writable copy of the board's image.
struct Rig {
    board: &'static cairn_board::Board,
    _tmp: tempfile::TempDir,
    disk: PathBuf,
    work: PathBuf,
    launches: usize,
    /// Host ports forwarded to the guest at the next launch.
    forwards: Vec<cairn_qemu::PortForward>,
}

impl Rig {
    fn new(board_name: &str) -> Rig {
        let board = cairn_board::find(board_name).unwrap();
        let tmp = cairn_systest::rig_dir("cairn-slots-");
        let disk = tmp.path().join("disk.img");
        cairn_image::copy_sparse(&image_dir(board).join("disk.img"), &disk).unwrap();
        let work = tmp.path().join("work");
        Rig {
            board,
            _tmp: tmp,
            disk,
            work,
            launches: 0,
            forwards: Vec::new(),
        }
    }

    fn esp(&self) -> SdBoot<FatPartitionFs> {
        let fs = partition_fs(&image_dir(self.board), &self.disk, "ESP").unwrap();
        SdBoot::new(fs, None)
    }

    fn entries(&self) -> Vec<String> {
        use cairn_boot::fs::Fs;
        let mut names = self
            .esp()
            .into_fs()
            .list(cairn_boot::sdboot::UKI_DIR)
            .unwrap();
        names.sort();
        names
    }

    fn launch(&mut self) -> Machine {
        let mut opts = LaunchOptions::new(self.board, &self.disk, &self.work);
        opts.writable_image = true;
        opts.reuse_disk = self.launches > 0;
        opts.echo_console = true;
        opts.port_forwards = self.forwards.clone();
        self.launches += 1;
        Machine::launch(opts).unwrap()
    }

    fn stop(&self, mut m: Machine) {
        m.quit().unwrap();
        m.wait_exit(Duration::from_secs(60)).unwrap();
    }
}

/// Waits for the next ready line and returns (slot, trial).
fn ready(m: &mut Machine) -> (String, String) {
    let line = m.wait_for_line("cairn-init: ready ", BOOT_TIMEOUT).unwrap();
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_string()
    };
    (field("slot="), field("trial="))
}

fn trial_commit_and_mark_bad(board_name: &str) {
    let _serial = qemu_lock();
    let mut rig = Rig::new(board_name);
    assert_eq!(rig.entries(), ["cairn-0-b.efi", "cairn-1-a.efi"]);

    // 1. A fresh image boots A, not as a trial.
    let mut m = rig.launch();
    assert_eq!(ready(&mut m), ("a".into(), "no".into()));
    rig.stop(m);

    // 2. set_trial(B, 2) from the host: systemd-boot boots B and counts the try down on the
    //    ESP; cairnd finds the trial healthy and commits it (drops the counter).
    rig.esp().set_trial(Slot::B, 2).unwrap();
    assert_eq!(rig.entries(), ["cairn-1-a.efi", "cairn-2-b+2-0.efi"]);
    let mut m = rig.launch();
    assert_eq!(ready(&mut m), ("b".into(), "yes".into()));
    m.wait_for_line("cairnd: slot b healthy", BOOT_TIMEOUT)
        .unwrap();
    m.wait_for_line("cairnd: waiting for update bundles", BOOT_TIMEOUT)
        .unwrap();
    rig.stop(m);
    assert_eq!(rig.entries(), ["cairn-1-a.efi", "cairn-2-b.efi"]);

    // 3. Committed: B across resets, no longer a trial.
    let mut m = rig.launch();
    for _ in 0..2 {
        assert_eq!(ready(&mut m), ("b".into(), "no".into()));
        m.system_reset().unwrap();
    }
    assert_eq!(ready(&mut m), ("b".into(), "no".into()));
    rig.stop(m);

    // 4. Marked bad from the host: A is next, and boots.
    rig.esp().mark_bad(Slot::B).unwrap();
    let status = rig.esp().status().unwrap();
    assert_eq!(status.next, Some(Slot::A));
    assert!(!status.slot(Slot::B).bootable);
    let mut m = rig.launch();
    assert_eq!(ready(&mut m), ("a".into(), "no".into()));
    rig.stop(m);

    // 5. A file on the ESP that the bootloader's `cairn-*` glob matches but that is no entry
    //    Cairn writes (systemd-boot skips it: it is no UKI). cairnd cannot read the boot
    //    state; it stays up with the API, which names the file, rather than exiting into
    //    restarts and watchdog resets. The committed slot keeps running.
    {
        use cairn_boot::fs::Fs;
        let mut fs = rig.esp().into_fs();
        fs.write_new(
            &format!("{}/cairn-notes.efi", cairn_boot::sdboot::UKI_DIR),
            b"not a unified kernel image\n",
        )
        .unwrap();
    }
    let port = cairn_qemu::free_local_port().unwrap();
    rig.forwards = vec![cairn_qemu::PortForward::new(port, 50000)];
    let mut m = rig.launch();
    // init cannot tell a trial either, and says so.
    assert_eq!(ready(&mut m), ("a".into(), "unknown".into()));
    let unreadable = m
        .wait_for_line("cairnd: boot entries unreadable: ", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        unreadable.contains("EFI/Linux/cairn-notes.efi")
            && unreadable.ends_with("updates are off until they are mended"),
        "{unreadable}"
    );
    // The API's line comes from its own thread: it may come before or after.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !m
        .lines()
        .iter()
        .any(|l| l.contains("cairnd: management API on port 50000"))
    {
        assert!(std::time::Instant::now() < until, "the API never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let reader =
        cairn_systest::ctl::Ctl::for_role("reader", rig._tmp.path(), &format!("127.0.0.1:{port}"));
    assert_eq!(reader.version().1, "a");
    let (ok, _, stderr) = reader.run(&["slots"]);
    assert!(
        !ok && stderr.contains("reading the boot state")
            && stderr.contains("EFI/Linux/cairn-notes.efi"),
        "{stderr}"
    );
    // Past a watchdog timeout later, still the same boot with the same cairnd.
    std::thread::sleep(Duration::from_secs(35));
    assert_eq!(reader.version().1, "a");
    let lines = m.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("cairn-init: ready "))
            .count(),
        1,
        "the machine was reset"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("cairnd (pid ") && l.contains(" exited")),
        "cairnd exited"
    );
    rig.stop(m);
}

/// Flips one byte of ROOT-B's first data block, which every mount reads: the kernel's dm-verity
/// target rejects the block and restarts, systemd-boot spends B's tries, and A boots.
fn tampered_root_falls_back(board_name: &str) {
    let _serial = qemu_lock();
    let mut rig = Rig::new(board_name);
    let m = manifest(rig.board);
    let root_b = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "ROOT-B")
        .unwrap()["offset"]
        .as_u64()
        .unwrap();
    flip_byte(&rig.disk, root_b + 2048);

    rig.esp().set_trial(Slot::B, 2).unwrap();
    let mut m = rig.launch();
    for _ in 0..2 {
        let line = m
            .wait_for_any(&["is corrupted", "cairn-init: ready "], BOOT_TIMEOUT)
            .unwrap()
            .line;
        assert!(
            line.contains("device-mapper: verity") && line.contains("data block 0 is corrupted"),
            "B must be stopped by dm-verity, got: {line}"
        );
    }
    assert_eq!(ready(&mut m), ("a".into(), "no".into()));
    let lines = m.lines();
    rig.stop(m);
    assert!(
        !lines.iter().any(|l| l.contains("ready slot=b")),
        "the tampered root must never come up"
    );
    assert_eq!(rig.entries(), ["cairn-1-a.efi", "cairn-2-b+0-2.efi"]);
}

fn flip_byte(disk: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, at).unwrap();
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_trial_commit_and_mark_bad() {
    trial_commit_and_mark_bad("qemu-aarch64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_trial_commit_and_mark_bad() {
    trial_commit_and_mark_bad("qemu-x86_64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_tampered_root_falls_back_to_a() {
    tampered_root_falls_back("qemu-aarch64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_tampered_root_falls_back_to_a() {
    tampered_root_falls_back("qemu-x86_64");
}
