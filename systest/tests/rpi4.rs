//! The Raspberry Pi 4 SD image under QEMU's `raspi4b`, with the harness playing the Pi firmware
//! (`cairn_qemu::rpi::Pi4`): autoboot.txt, the one-shot tryboot flag, the boot partition's
//! kernel, initramfs, device tree and cmdline.txt. One SD card, four boots, chained so that no
//! boot is spent twice:
//!
//! 1. A trial of a slot B whose root does not match its hash: the firmware tries BOOT-B once,
//!    dm-verity stops the root and the kernel restarts without the tryboot argument.
//! 2. The next boot is A from BOOT-A, ROOT-A verified by dm-verity, committed, not a trial.
//! 3. B repaired and set on trial again from the host (`cairnctl image slots`): the firmware
//!    boots BOOT-B as a tryboot, and cairnd finds it healthy and commits it; autoboot.txt on
//!    the SD card then names B's partition in `[all]`.
//! 4. The next boot is B, not on trial.
//!
//! What the emulation does not cover is in docs/boot-slots.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_image::formats::fat_fs::manifest_partition_fs;
use cairn_qemu::rpi::firmware::{choose_partition, OneShot};
use cairn_qemu::rpi::{Pi4, PiBoot, PiOptions, Reset};
use cairn_systest::{cairnctl, image_dir, qemu_lock, tool};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The ready line's `slot=`, `trial=` and `boot_ms=`.
fn ready(pi: &mut Pi4) -> (String, String, u64) {
    let m = pi.machine().expect("the Pi is on");
    let line = m.wait_for_line("cairn-init: ready ", BOOT_TIMEOUT).unwrap();
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_string()
    };
    let boot_ms = field("boot_ms=").parse().unwrap();
    (field("slot="), field("trial="), boot_ms)
}

fn wait(pi: &mut Pi4, needle: &str) -> String {
    pi.machine()
        .expect("the Pi is on")
        .wait_for_line(needle, BOOT_TIMEOUT)
        .unwrap()
}

/// A private image folder: image.json and a sparse copy of disk.img, which the Pi boots in
/// place (padded) and the host changes between boots.
fn private_image(dir: &Path) -> PathBuf {
    let src = image_dir(cairn_board::find("rpi4").unwrap());
    let out = dir.join("image");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("image.json"), out.join("image.json")).unwrap();
    cairn_image::copy_sparse(&src.join("disk.img"), &out.join("disk.img")).unwrap();
    out
}

fn manifest(image: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(image.join("image.json")).unwrap()).unwrap()
}

fn partition_offset(image: &Path, label: &str) -> u64 {
    manifest(image)["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("no {label}"))["offset"]
        .as_u64()
        .unwrap()
}

fn autoboot_txt(image: &Path) -> String {
    use cairn_boot::fs::Fs;
    let fs = manifest_partition_fs(&manifest(image), &image.join("disk.img"), "BOOT").unwrap();
    String::from_utf8(fs.read("autoboot.txt", 4096).unwrap().unwrap()).unwrap()
}

/// `cairnctl image slots --image <image> --set-trial b`, as an operator would prepare a trial.
fn set_trial_b(image: &Path) {
    let out = tool(
        Command::new(cairnctl())
            .args(["image", "slots", "--image"])
            .arg(image)
            .args(["--set-trial", "b"]),
    );
    assert!(out.contains("\"0 tryboot\""), "{out}");
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

fn assert_boot(boot: &PiBoot, partition: u32, tryboot: bool, slot: &str) {
    assert_eq!(
        (boot.partition, boot.tryboot),
        (partition, tryboot),
        "boot {}",
        boot.number
    );
    assert!(
        boot.cmdline.contains(&format!("cairn.slot={slot}")),
        "boot {}: partition {partition} must carry slot {slot}'s command line: {}",
        boot.number,
        boot.cmdline
    );
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn rpi4_boots_tries_slot_b_and_falls_back() {
    let _serial = qemu_lock();
    let started = Instant::now();
    let tmp = cairn_systest::rig_dir("cairn-rpi4-");
    let image = private_image(tmp.path());
    let disk = image.join("disk.img");
    let shipped = image_dir(cairn_board::find("rpi4").unwrap()).join("disk.img");
    let shipped_len = std::fs::metadata(&shipped).unwrap().len();
    let mut pi = Pi4::new(PiOptions {
        writable_image: true,
        echo_console: true,
        ..PiOptions::new(&disk, tmp.path().join("work"))
    })
    .unwrap();
    assert!(std::fs::metadata(&disk).unwrap().len().is_power_of_two());
    let autoboot_a = autoboot_txt(&image);
    assert_eq!(
        choose_partition(Some(&autoboot_a), OneShot::default())
            .unwrap()
            .partition,
        2
    );
    let mut phase = Instant::now();
    let mut lap = |what: &str| {
        eprintln!("rpi4: {what}: {:.1} s", phase.elapsed().as_secs_f64());
        phase = Instant::now();
    };

    // 1. A B whose root does not match its hash, tried once: dm-verity stops it.
    let root_b = partition_offset(&image, "ROOT-B") + 2048;
    flip_byte(&disk, root_b);
    set_trial_b(&image);
    pi.set_reboot_argument("0 tryboot").unwrap();
    let boot = pi.power_on().unwrap();
    assert_boot(&boot, 3, true, "b");
    let line = pi
        .machine()
        .unwrap()
        .wait_for_any(&["is corrupted", "cairn-init: ready "], BOOT_TIMEOUT)
        .unwrap()
        .line;
    assert!(
        line.contains("device-mapper: verity") && line.contains("data block 0 is corrupted"),
        "B must be stopped by dm-verity, got: {line}"
    );
    let reset = pi.wait_for_reset(BOOT_TIMEOUT).unwrap();
    assert_eq!(
        reset,
        Reset::Restart {
            argument: Some("dm-verity device corrupted".into())
        }
    );
    lap("tampered B tried once and restarted");

    // 2. The restart carried no tryboot: A, from BOOT-A, ROOT-A verified, committed.
    let boot = pi.power_on().unwrap();
    assert_boot(&boot, 2, false, "a");
    wait(&mut pi, "slot a: ROOT-A verified by dm-verity as /dev/dm-");
    let (slot, trial, boot_ms_a) = ready(&mut pi);
    assert_eq!((slot.as_str(), trial.as_str()), ("a", "no"));
    wait(&mut pi, "cairnd: slot a committed");
    pi.power_off().unwrap();
    assert_eq!(
        autoboot_txt(&image),
        autoboot_a,
        "a fallback writes nothing"
    );
    lap("A after the fallback");

    // 3. B repaired and on trial again: booted as a tryboot, found healthy, committed.
    flip_byte(&disk, root_b);
    set_trial_b(&image);
    pi.set_reboot_argument("0 tryboot").unwrap();
    let boot = pi.power_on().unwrap();
    assert_boot(&boot, 3, true, "b");
    wait(&mut pi, "slot b: ROOT-B verified by dm-verity as /dev/dm-");
    let (slot, trial, boot_ms_b) = ready(&mut pi);
    assert_eq!((slot.as_str(), trial.as_str()), ("b", "yes"));
    wait(&mut pi, "cairnd: slot b healthy");
    pi.power_off().unwrap();
    let autoboot_b = autoboot_txt(&image);
    assert_eq!(
        choose_partition(Some(&autoboot_b), OneShot::default())
            .unwrap()
            .partition,
        3,
        "after the commit autoboot.txt must name B's partition in [all]:\n{autoboot_b}"
    );
    lap("B on trial, committed");

    // 4. An ordinary boot is now B, not a trial.
    let boot = pi.power_on().unwrap();
    assert_boot(&boot, 3, false, "b");
    let (slot, trial, _) = ready(&mut pi);
    assert_eq!((slot.as_str(), trial.as_str()), ("b", "no"));
    wait(&mut pi, "cairnd: slot b committed");
    pi.power_off().unwrap();
    lap("B committed");

    // The shipped image was never touched.
    assert_eq!(std::fs::metadata(&shipped).unwrap().len(), shipped_len);
    eprintln!(
        "rpi4: 4 boots in {:.1} s (boot_ms A {boot_ms_a}, B {boot_ms_b})",
        started.elapsed().as_secs_f64()
    );
}
