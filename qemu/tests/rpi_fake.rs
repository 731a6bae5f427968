//! The Raspberry Pi firmware the harness plays (`cairn_qemu::rpi::Pi4`), driven by a fake
//! "QEMU" (a shell script that records its arguments and prints what a kernel would before a
//! restart) on a small SD card made with Debian's sgdisk, mkfs.vfat, mcopy and dtc: which
//! partition each power-on boots, what the kernel gets, and how a reboot's argument carries to
//! exactly one next boot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_qemu::rpi::fdt::Fdt;
use cairn_qemu::rpi::{Pi4, PiOptions, Reset};
use cairn_qemu::Timeouts;

const MIB: u64 = 1 << 20;

fn tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (`cargo xtask setup` installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const DTS: &str =
    "/dts-v1/;\n/ {\n\tchosen {\n\t};\n\tsoc {\n\t\twatchdog@7e100000 {\n\t\t};\n\t};\n};\n";

/// An SD card: partition 1 with autoboot.txt, 2 and 3 each a slot's boot files.
fn sd_card(dir: &Path) -> PathBuf {
    let sd = dir.join("sd.img");
    fs::File::create(&sd).unwrap().set_len(60 * MIB).unwrap();
    tool(
        Command::new("sgdisk")
            .args([
                "-n",
                "1:2048:+16M",
                "-t",
                "1:0700",
                "-n",
                "2:0:+16M",
                "-t",
                "2:0700",
                "-n",
                "3:0:+16M",
                "-t",
                "3:0700",
            ])
            .arg(&sd),
    );
    let src = dir.join("dts");
    fs::write(&src, DTS).unwrap();
    let dtb = dir.join("bcm2711-rpi-4-b.dtb");
    tool(
        Command::new("dtc")
            .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
            .arg(&dtb)
            .arg(&src),
    );
    for (n, files) in [
        (
            1u64,
            vec![(
                "autoboot.txt",
                "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n".to_string(),
            )],
        ),
        (2, slot_files("a")),
        (3, slot_files("b")),
    ] {
        let offset = (2048 + (n - 1) * 16 * 2048) * 512;
        let at = format!("{}@@{offset}", sd.display());
        tool(
            Command::new("mkfs.vfat")
                .args(["-F", "16", "--offset", &(offset / 512).to_string()])
                .arg(&sd)
                .arg((16 * 1024).to_string()),
        );
        for (name, text) in files {
            let f = dir.join(name);
            fs::write(&f, text).unwrap();
            tool(
                Command::new("mcopy")
                    .args(["-o", "-i", &at])
                    .arg(&f)
                    .arg(format!("::{name}")),
            );
        }
        if n > 1 {
            tool(
                Command::new("mcopy")
                    .args(["-o", "-i", &at])
                    .arg(&dtb)
                    .arg("::bcm2711-rpi-4-b.dtb"),
            );
        }
    }
    sd
}

fn slot_files(slot: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "config.txt",
            "[all]\narm_64bit=1\nkernel=vmlinuz\ninitramfs initramfs.img followkernel\n".into(),
        ),
        ("vmlinuz", format!("kernel of slot {slot}")),
        ("initramfs.img", format!("initramfs of slot {slot}")),
        (
            "cmdline.txt",
            format!("console=ttyS1,115200 quiet cairn.slot={slot}\n"),
        ),
    ]
}

/// Each run prints the line of the next entry of `script` (by run number) and exits.
fn fake_qemu(dir: &Path, lines: &[&str]) -> PathBuf {
    let mut cases = String::new();
    for (i, line) in lines.iter().enumerate() {
        cases.push_str(&format!("{}) echo \"{line}\";;\n", i + 1));
    }
    let script = dir.join("fake-qemu");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(cat ../runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > ../runs\n\
             printf '%s\\n' \"$@\" > args.txt\ncase $n in\n{cases}esac\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn arg_after(work: &Path, boot: u32, flag: &str) -> String {
    let args = fs::read_to_string(work.join(format!("boot-{boot}/args.txt"))).unwrap();
    let lines: Vec<&str> = args.lines().collect();
    let i = lines.iter().position(|l| *l == flag).unwrap();
    lines[i + 1].to_string()
}

fn bootloader(work: &Path, boot: u32) -> (Vec<u8>, Vec<u8>) {
    let blob = fs::read(work.join(format!("boot-{boot}/device-tree.dtb"))).unwrap();
    let fdt = Fdt::parse(&blob).unwrap();
    let node = fdt.node("/chosen/bootloader").unwrap();
    (
        node.prop("tryboot").unwrap().to_vec(),
        node.prop("partition").unwrap().to_vec(),
    )
}

#[test]
fn reboots_carry_their_argument_to_exactly_one_boot() {
    let dir = tempfile::tempdir().unwrap();
    let image = sd_card(dir.path());
    let pristine = fs::read(&image).unwrap();
    let script = fake_qemu(
        dir.path(),
        &[
            "[    3.1] reboot: Restarting system with command '0 tryboot'",
            "[    3.2] reboot: Restarting system with command 'dm-verity device corrupted'",
            "[    3.3] reboot: Power down",
        ],
    );
    let work = dir.path().join("work");
    let mut pi = Pi4::new(PiOptions {
        binary_override: Some(script),
        timeouts: Some(Timeouts::default()),
        ..PiOptions::new(&image, &work)
    })
    .unwrap();
    assert_eq!(fs::metadata(pi.sd_path()).unwrap().len(), 64 * MIB);
    let long = Duration::from_secs(20);

    // An ordinary power-on: [all] → partition 2, slot a.
    let boot = pi.power_on().unwrap();
    assert_eq!((boot.partition, boot.tryboot), (2, false));
    assert_eq!(boot.cmdline, "console=ttyAMA0,115200 quiet cairn.slot=a");
    assert_eq!(bootloader(&work, 1), (vec![0, 0, 0, 0], vec![0, 0, 0, 2]));
    let reset = pi.wait_for_reset(long).unwrap();
    assert_eq!(
        reset,
        Reset::Restart {
            argument: Some("0 tryboot".into())
        }
    );
    // QEMU has run (and written what it was given) once the reset is seen.
    assert_eq!(arg_after(&work, 1, "-machine"), "raspi4b");
    assert_eq!(arg_after(&work, 1, "-append"), boot.cmdline);
    assert_eq!(
        fs::read_to_string(arg_after(&work, 1, "-kernel")).unwrap(),
        "kernel of slot a"
    );

    // The tryboot: [tryboot] → partition 3, reported in the device tree.
    let boot = pi.power_on().unwrap();
    assert_eq!((boot.partition, boot.tryboot), (3, true));
    assert_eq!(bootloader(&work, 2), (vec![0, 0, 0, 1], vec![0, 0, 0, 3]));
    let dtb = Fdt::parse(&fs::read(work.join("boot-2/device-tree.dtb")).unwrap()).unwrap();
    assert_eq!(
        dtb.node("/soc/watchdog@7e100000").unwrap().prop("status"),
        Some(&b"disabled\0"[..])
    );
    // A restart without "tryboot": back to [all], once the flag is spent.
    pi.wait_for_reset(long).unwrap();
    assert_eq!(
        fs::read_to_string(arg_after(&work, 2, "-initrd")).unwrap(),
        "initramfs of slot b"
    );
    let boot = pi.power_on().unwrap();
    assert_eq!((boot.partition, boot.tryboot), (2, false));
    assert_eq!(pi.wait_for_reset(long).unwrap(), Reset::PowerOff);

    // A flag left for the next boot is lost with the power.
    pi.set_reboot_argument("0 tryboot").unwrap();
    pi.power_off().unwrap();
    let boot = pi.power_on().unwrap();
    assert_eq!((boot.partition, boot.tryboot), (2, false));
    assert_eq!(pi.wait_for_reset(long).unwrap(), Reset::Exited);

    // The image the card was copied from is unchanged.
    assert_eq!(fs::read(&image).unwrap(), pristine);
}
