//! UEFI Secure Boot on qemu-x86_64, end to end: keys from `cairnctl keys gen-secureboot`, an
//! image whose systemd-boot and UKIs are signed with the db key, and Debian's Secure Boot OVMF
//! (`OVMF_CODE_4M.secboot.fd`, q35 with SMM) with PK, KEK and db enrolled by the harness.
//!
//! One machine, one OS boot: slot B's UKI has one byte changed and is on trial; the firmware
//! refuses to load it (systemd-boot spent B's try before the attempt), comes back to
//! systemd-boot by itself, and slot A boots to `ready` with Secure Boot enforcing (the kernel says so, the command line carries
//! `lockdown=integrity`, and cairnd reports `secure_boot=on` over the API).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_boot::fs::Fs;
use cairn_boot::sdboot::{SdBoot, UKI_DIR};
use cairn_boot::{Bootloader, Slot};
use cairn_image::formats::fat_fs::partition_fs;
use cairn_image::{build, BuildOptions, RootExtras};
use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward};
use cairn_systest::ctl::Ctl;
use cairn_systest::{cache_dir, cairnctl, device_bin, keys_dir, qemu_lock, rig_dir};

const API_PORT: u16 = 50000;
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn ready(m: &mut Machine) -> String {
    m.wait_for_line("cairn-init: ready ", BOOT_TIMEOUT).unwrap()
}

fn sbverify(cert: &Path, file: &Path) -> bool {
    Command::new("sbverify")
        .arg("--cert")
        .arg(cert)
        .arg(file)
        .output()
        .expect("sbverify (Debian package sbsigntool, which `cargo xtask setup` installs)")
        .status
        .success()
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_secure_boot_boots_signed_ukis_and_refuses_a_changed_one() {
    let _serial = qemu_lock();
    let board = cairn_board::find("qemu-x86_64").unwrap();
    let tmp = rig_dir("cairn-secureboot-");
    let keys = tmp.path().join("sbkeys");
    let out = Command::new(cairnctl())
        .args(["keys", "gen-secureboot", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let secrets = cairn_pki::secrets::DeviceSecrets::load(&keys_dir().join("secrets")).unwrap();
    let image = tmp.path().join("image");
    let started = Instant::now();
    build(&BuildOptions {
        board,
        out: image.clone(),
        cache: cache_dir(),
        device_bin: device_bin(board.arch),
        version: env!("CARGO_PKG_VERSION").into(),
        seed: "systest-secureboot".into(),
        root: RootExtras {
            keyring: Some(std::fs::read_to_string(keys_dir().join("dev.pub")).unwrap()),
            api_secrets: Some(cairn_image::ApiSecrets {
                client_ca: secrets.client_ca,
                device_ca: secrets.device_ca,
                device_ca_key: secrets.device_ca_key,
            }),
            ..Default::default()
        },
        secure_boot: Some(keys.clone()),
        extension: None,
    })
    .unwrap();
    eprintln!(
        "secure boot image built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let disk = image.join("disk.img");
    let esp = || partition_fs(&image, &disk, "ESP").unwrap();

    // Every EFI binary on the ESP is signed with the db key.
    let db = keys.join("db.crt");
    let mut checked = 0;
    for dir in ["EFI/BOOT", "EFI/systemd", UKI_DIR] {
        for name in esp().list(dir).unwrap() {
            let bytes = esp()
                .read(&format!("{dir}/{name}"), 1 << 30)
                .unwrap()
                .unwrap();
            let file = tmp.path().join(&name);
            std::fs::write(&file, &bytes).unwrap();
            assert!(sbverify(&db, &file), "sbverify refused {dir}/{name}");
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "BOOTX64.EFI, systemd-bootx64.efi and two UKIs");

    // Before the machine's first boot, slot B's UKI gets one byte changed (inside its kernel)
    // and B is put on trial.
    let name = format!("{UKI_DIR}/cairn-0-b.efi");
    let mut uki = esp().read(&name, 1 << 30).unwrap().unwrap();
    let at = uki.len() - 4096;
    uki[at] ^= 0x01;
    esp().write_new(&name, &uki).unwrap();
    let changed = tmp.path().join("changed.efi");
    std::fs::write(&changed, &uki).unwrap();
    assert!(!sbverify(&db, &changed), "sbverify took the changed UKI");
    SdBoot::new(esp(), None).set_trial(Slot::B, 1).unwrap();

    // 1. The firmware refuses B's UKI. systemd-boot spent B's try before asking for it.
    let port = free_local_port().unwrap();
    let mut opts = LaunchOptions::new(board, &disk, tmp.path().join("work"));
    opts.writable_image = true;
    opts.echo_console = true;
    opts.secure_boot = Some(keys.clone());
    opts.port_forwards = vec![PortForward::new(port, API_PORT)];
    let launched = Instant::now();
    let mut m = Machine::launch(opts).unwrap();
    let refused = m
        .wait_for_any(
            &["Security Violation", "Access Denied", "cairn-init: ready "],
            BOOT_TIMEOUT,
        )
        .unwrap()
        .line;
    assert!(
        refused.contains("cairn-2-b") || refused.contains("Error loading"),
        "the firmware must refuse B's UKI, got: {refused}"
    );
    eprintln!(
        "secure boot: B refused {:.1} s after launch",
        launched.elapsed().as_secs_f64()
    );
    // systemd-boot 252 hands the error back to the firmware. OVMF's boot manager goes on to
    // its next boot option (its built-in shell, which Secure Boot refuses too), then round
    // to the disk again: systemd-boot, B now bad, boots A. Nobody resets the machine.
    let line = ready(&mut m);
    eprintln!(
        "secure boot on: A ready {:.1} s after launch, B refused on the way ({line})",
        launched.elapsed().as_secs_f64()
    );
    let lines = m.lines();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} on the console"))
    };
    assert!(
        at("Error loading \\EFI\\Linux\\cairn-2-b+0-1.efi: Access Denied")
            < at("cairn-init: ready "),
        "B's refusal comes before A's boot"
    );

    // 2. Secure Boot enforcing: the signed slot A boots.
    assert!(line.contains("slot=a trial=no"), "{line}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image.join("image.json")).unwrap()).unwrap();
    for slot in json["slots"].as_array().unwrap() {
        let cmdline = slot["cmdline"].as_str().unwrap();
        assert!(cmdline.ends_with(" lockdown=integrity"), "{cmdline}");
    }
    let lines = m.lines();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(!has("ready slot=b"), "the changed UKI must never boot");
    m.wait_for_line("cairnd: management API on port 50000", BOOT_TIMEOUT)
        .unwrap();
    let ctl = Ctl::for_role("reader", tmp.path(), &format!("127.0.0.1:{port}"));
    let (text, health) = ctl.health();
    assert_eq!(health["secure_boot"], "on", "{text}");
    m.quit().unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap();

    let mut names = esp().list(UKI_DIR).unwrap();
    names.sort();
    assert_eq!(names, ["cairn-1-a.efi", "cairn-2-b+0-1.efi"]);
    let status = SdBoot::new(esp(), None).status().unwrap();
    assert_eq!(status.next, Some(Slot::A));
}
