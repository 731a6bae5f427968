//! The built images, checked from outside: reproducibility, the real partitioning, FAT, squashfs
//! and cpio tools, and bad input that must fail with one clear line and leave nothing behind.

use std::path::Path;
use std::process::Command;

use cairn_board::{Board, BootScheme, BOARDS};
use cairn_image::{build, BuildOptions};
use cairn_systest::release::dev_api_secrets;
use cairn_systest::{cache_dir, device_bin, image_dir, keys_dir, manifest, tool};

fn options(board: &'static Board, out: &Path) -> BuildOptions {
    let version = env!("CARGO_PKG_VERSION").to_string();
    BuildOptions {
        board,
        out: out.to_path_buf(),
        cache: cache_dir(),
        device_bin: device_bin(board.arch),
        seed: format!("cairn-{}-{}", board.name, version),
        version,
        // As `cargo xtask images` builds them: trusting the development key, with the
        // development API secrets on STATE.
        root: cairn_image::RootExtras {
            keyring: Some(std::fs::read_to_string(keys_dir().join("dev.pub")).unwrap()),
            api_secrets: Some(dev_api_secrets()),
            ..Default::default()
        },
        secure_boot: None,
        extension: Some(Default::default()),
    }
}

fn qemu_boards() -> impl Iterator<Item = &'static Board> {
    BOARDS.iter().filter(|b| b.qemu.is_some())
}

fn expected_partitions(board: &Board) -> Vec<&'static str> {
    let mut names = match board.boot {
        BootScheme::SystemdBoot { .. } => vec!["ESP"],
        BootScheme::RpiTryboot { .. } => vec!["BOOT", "BOOT-A", "BOOT-B"],
    };
    names.extend(["ROOT-A", "ROOT-B", "STATE", "DATA"]);
    names
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn two_builds_are_byte_identical() {
    for board in BOARDS {
        let tmp = tempfile::tempdir().unwrap();
        let again = build(&options(board, &tmp.path().join("again"))).unwrap();
        let first = manifest(board);
        assert_eq!(first["disk"]["sha256"], again.disk.sha256, "{}", board.name);
        let recomputed = cairn_image::deb::sha256_file(&tmp.path().join("again/disk.img")).unwrap();
        assert_eq!(recomputed, again.disk.sha256);
    }
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn partition_table_is_valid_for_sgdisk_and_sfdisk() {
    for board in BOARDS {
        let disk = image_dir(board).join("disk.img");
        let verify = tool(Command::new("sgdisk").arg("-v").arg(&disk));
        assert!(verify.contains("No problems found"), "{verify}");
        let json: serde_json::Value =
            serde_json::from_str(&tool(Command::new("sfdisk").arg("--json").arg(&disk))).unwrap();
        let parts = json["partitiontable"]["partitions"].as_array().unwrap();
        let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, expected_partitions(board), "{}", board.name);
        let recorded = manifest(board);
        for (p, r) in parts.iter().zip(recorded["partitions"].as_array().unwrap()) {
            assert_eq!(
                p["start"].as_u64().unwrap() * 512,
                r["offset"].as_u64().unwrap()
            );
            assert_eq!(
                p["size"].as_u64().unwrap() * 512,
                r["size"].as_u64().unwrap()
            );
            assert_eq!(
                p["type"].as_str().unwrap(),
                r["type_guid"].as_str().unwrap()
            );
            assert_eq!(p["uuid"].as_str().unwrap(), r["guid"].as_str().unwrap());
        }
    }
}

/// Copies partition `label` out of the disk into `dest` using the offsets in image.json.
fn extract_partition(board: &Board, label: &str, dest: &Path) {
    let m = manifest(board);
    let p = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == label)
        .unwrap();
    let (offset, size) = (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap());
    let bytes = std::fs::read(image_dir(board).join("disk.img")).unwrap();
    std::fs::write(dest, &bytes[offset as usize..(offset + size) as usize]).unwrap();
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn esp_root_and_initramfs_read_back_with_debian_tools() {
    for board in qemu_boards() {
        let tmp = tempfile::tempdir().unwrap();
        let esp = tmp.path().join("esp.img");
        extract_partition(board, "ESP", &esp);
        let fsck = tool(Command::new("fsck.fat").arg("-n").arg(&esp));
        assert!(!fsck.contains("differ"), "{fsck}");
        let mtype = |path: &str| {
            tool(
                Command::new("mtype")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(&esp)
                    .arg(format!("::{path}")),
            )
        };
        let m = manifest(board);
        let mcopy = |path: &str, to: &std::path::Path| {
            tool(
                Command::new("mcopy")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(&esp)
                    .arg(format!("::{path}"))
                    .arg(to),
            )
        };
        // Each slot boots a UKI in EFI/Linux whose .cmdline names the slot and its root hash.
        let mut uki_a = None;
        for slot in m["slots"].as_array().unwrap() {
            let name = slot["slot"].as_str().unwrap();
            let path = slot["entry"].as_str().unwrap();
            assert!(path.starts_with("EFI/Linux/cairn-"), "{path}");
            let copy = tmp.path().join(format!("uki-{name}.efi"));
            mcopy(&format!("/{path}"), &copy);
            let uki = cairn_secureboot::Pe::parse(path, std::fs::read(&copy).unwrap()).unwrap();
            let cmdline = cairn_secureboot::uki::cmdline(&uki).unwrap();
            assert_eq!(cmdline, slot["cmdline"].as_str().unwrap());
            assert!(
                cmdline.contains(&format!("cairn.slot={name} ")),
                "{cmdline}"
            );
            let roothash = slot["roothash"].as_str().unwrap();
            assert!(
                cmdline.contains(&format!("cairn.roothash={roothash} ")),
                "{cmdline}"
            );
            let osrel = String::from_utf8_lossy(uki.section_data(".osrel").unwrap()).into_owned();
            assert!(
                osrel.contains("ID=cairn\n") && !osrel.contains("VERSION"),
                "{osrel}"
            );
            assert!(!uki.is_signed(), "built without --secure-boot");
            if name == "a" {
                uki_a = Some(uki);
            }
        }
        let loader = mtype("/loader/loader.conf");
        assert!(loader.contains("editor no"), "{loader}");
        assert!(loader.contains("default cairn-*"), "{loader}");
        let suffix = board.arch.efi_suffix().to_ascii_uppercase();
        let copy = tmp.path().join("boot.efi");
        tool(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&esp)
                .arg(format!("::/EFI/BOOT/BOOT{suffix}.EFI"))
                .arg(&copy),
        );
        assert_eq!(
            &std::fs::read(&copy).unwrap()[..2],
            b"MZ",
            "systemd-boot is a PE file"
        );

        // The initramfs, pulled out of slot A's UKI and listed by GNU cpio.
        let initrd = tmp.path().join("initramfs.img");
        std::fs::write(&initrd, uki_a.unwrap().section_data(".initrd").unwrap()).unwrap();
        let listing = tool(
            Command::new("cpio")
                .args(["-t", "--quiet", "-F"])
                .arg(&initrd),
        );
        let watchdog_driver = format!("lib/modules/{}.ko", board.watchdog_modules[0]);
        for expected in [
            "init",
            "etc/cairn/modules",
            "etc/cairn/modules-watchdog",
            "lib/modules/virtio_blk.ko",
            &watchdog_driver,
        ] {
            assert!(
                listing.lines().any(|l| l == expected),
                "{expected} in {listing}"
            );
        }

        // The squashfs root, listed by unsquashfs.
        let root = tmp.path().join("root.img");
        extract_partition(board, "ROOT-A", &root);
        let ls = tool(Command::new("unsquashfs").arg("-lln").arg(&root));
        assert!(ls.contains("squashfs-root/sbin/init"), "{ls}");
        let release = tool(
            Command::new("unsquashfs")
                .arg("-cat")
                .arg(&root)
                .arg("etc/cairn/release"),
        );
        assert!(release.contains(&format!("VERSION={}", env!("CARGO_PKG_VERSION"))));
        assert!(release.contains(&format!("BOARD={}", board.name)));
    }
}

/// `veritysetup verify` (cryptsetup) accepts each slot's root with the hash recorded in
/// image.json and rejects it once a single data byte is flipped.
#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn veritysetup_verifies_each_root_and_rejects_a_flipped_byte() {
    for board in BOARDS {
        let m = manifest(board);
        for slot in m["slots"].as_array().unwrap() {
            let tmp = tempfile::tempdir().unwrap();
            let label = slot["root_partition"].as_str().unwrap();
            let root = tmp.path().join("root.img");
            extract_partition(board, label, &root);
            let roothash = slot["roothash"].as_str().unwrap();
            let hash_offset = slot["hash_offset"].as_u64().unwrap();
            let verify = |expect_ok: bool| {
                let result = veritysetup_verify(&root, roothash, hash_offset);
                assert_eq!(
                    result.is_ok(),
                    expect_ok,
                    "{} {label}: {result:?}",
                    board.name
                );
            };
            verify(true);
            let dump = tool(
                Command::new("veritysetup")
                    .arg("dump")
                    .arg(format!("--hash-offset={hash_offset}"))
                    .arg(&root),
            );
            assert!(dump.contains(slot["salt"].as_str().unwrap()), "{dump}");
            assert!(
                dump.contains(slot["verity_uuid"].as_str().unwrap()),
                "{dump}"
            );

            // One bit in the middle of the squashfs.
            let mut bytes = std::fs::read(&root).unwrap();
            let at = (slot["root_size"].as_u64().unwrap() / 2) as usize;
            bytes[at] ^= 0x01;
            std::fs::write(&root, &bytes).unwrap();
            verify(false);
        }
        let hashes: Vec<&str> = m["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["roothash"].as_str().unwrap())
            .collect();
        assert_ne!(hashes[0], hashes[1], "each slot has its own salt");
    }
}

/// The Raspberry Pi 4 card: partition 1 holds the firmware and autoboot.txt naming BOOT-A
/// (partition 2) with BOOT-B (partition 3) as the tryboot partition; each slot's boot partition
/// holds the firmware, kernel, initramfs, device trees, config.txt and cmdline.txt.
#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn rpi4_card_has_firmware_autoboot_and_both_slots() {
    let board = cairn_board::find("rpi4").unwrap();
    let m = manifest(board);
    let tmp = tempfile::tempdir().unwrap();
    let mtype = |img: &Path, path: &str| {
        tool(
            Command::new("mtype")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(img)
                .arg(format!("::{path}")),
        )
    };
    let mdir = |img: &Path| {
        tool(
            Command::new("mdir")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-b", "-i"])
                .arg(img)
                .arg("::/"),
        )
    };
    let boot = tmp.path().join("boot.img");
    extract_partition(board, "BOOT", &boot);
    let fsck = tool(Command::new("fsck.fat").arg("-n").arg(&boot));
    assert!(!fsck.contains("differ"), "{fsck}");
    let autoboot = mtype(&boot, "/autoboot.txt");
    assert!(autoboot.contains("tryboot_a_b=1"), "{autoboot}");
    let parsed = cairn_boot::tryboot::Autoboot::parse(&autoboot, "autoboot.txt").unwrap();
    assert_eq!((parsed.committed(), parsed.tryboot()), (2, 3), "{autoboot}");
    assert!(mdir(&boot).contains("start4.elf"));

    for (slot, number) in m["slots"].as_array().unwrap().iter().zip([2u64, 3]) {
        let label = slot["boot_partition"].as_str().unwrap();
        let part = &m["partitions"].as_array().unwrap()[number as usize - 1];
        assert_eq!(part["label"], label);
        let img = tmp.path().join(format!("{label}.img"));
        extract_partition(board, label, &img);
        let fsck = tool(Command::new("fsck.fat").arg("-n").arg(&img));
        assert!(!fsck.contains("differ"), "{fsck}");
        let listing = mdir(&img).to_ascii_lowercase();
        for file in [
            "start4.elf",
            "fixup4.dat",
            "vmlinuz",
            "initramfs.img",
            "bcm2711-rpi-4-b.dtb",
            "config.txt",
            "cmdline.txt",
        ] {
            assert!(listing.contains(file), "{file} on {label}: {listing}");
        }
        let config = mtype(&img, "/config.txt");
        assert!(config.contains("arm_64bit=1"), "{config}");
        assert!(
            config.contains("initramfs initramfs.img followkernel"),
            "{config}"
        );
        let cmdline = mtype(&img, "/cmdline.txt");
        assert_eq!(cmdline.trim_end(), slot["cmdline"].as_str().unwrap());
        assert!(cmdline.contains("console=ttyS1,115200"), "{cmdline}");
        assert!(
            cmdline.contains(&format!(
                "cairn.roothash={} ",
                slot["roothash"].as_str().unwrap()
            )),
            "{cmdline}"
        );
    }
}

#[test]
#[ignore = "needs the package cache: run `cargo xtask test`"]
fn cached_package_with_wrong_sha256_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = cairn_image::deb::Cache::new(tmp.path());
    let fetched = cache.fetch("systemd-boot-efi", "amd64").unwrap();
    std::fs::write(&fetched.deb, b"not the package").unwrap();
    let err = cache
        .fetch("systemd-boot-efi", "amd64")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sha256") && err.contains("delete it"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
#[ignore = "needs the package cache: run `cargo xtask test`"]
fn missing_package_fails_cleanly_without_output() {
    static BROKEN: Board = Board {
        kernel_package: "linux-image-cairn-no-such-flavour",
        ..BOARDS[1]
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let err = build(&options(&BROKEN, &out)).unwrap_err().to_string();
    assert!(err.contains("linux-image-cairn-no-such-flavour"), "{err}");
    assert!(err.contains("cargo xtask setup"), "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "left files behind"
    );
}

#[test]
#[ignore = "needs root and the package cache: run `cargo xtask test`"]
fn full_disk_fails_cleanly_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path();
    tool(
        Command::new("mount")
            // Smaller than what the image holds (it is sparse: only the data takes space).
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(mnt),
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt);
    let out = mnt.join("out");
    let err = build(&options(&BOARDS[1], &out)).unwrap_err().to_string();
    assert!(err.contains("no space left"), "{err}");
    assert!(err.contains("--out"), "{err}");
    assert_eq!(
        std::fs::read_dir(mnt).unwrap().count(),
        0,
        "left files behind"
    );
}

/// The containers extension in each slot of each board: `veritysetup verify` accepts its region
/// with the root hash on the slot's command line and refuses a copy with one byte changed;
/// `unsquashfs -l` lists containerd, runc, the CNI plugins, iptables-nft, the loader and the
/// manifest; both slots carry the same bytes, and the bundle made from the image carries them too.
#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn containers_extension_verifies_lists_its_files_and_travels_in_the_bundle() {
    for board in BOARDS {
        let m = manifest(board);
        let ext = &m["extension"];
        let size = ext["size"].as_u64().expect("image.json has an extension");
        assert!(
            size <= cairn_image::extension::BUDGET,
            "{}: the extension is {size} bytes",
            board.name
        );
        let disk = std::fs::read(image_dir(board).join("disk.img")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut regions = Vec::new();
        for slot in m["slots"].as_array().unwrap() {
            let label = slot["root_partition"].as_str().unwrap();
            let part = m["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["label"] == label)
                .unwrap();
            let se = &slot["extension"];
            let (offset, len) = (se["offset"].as_u64().unwrap(), se["size"].as_u64().unwrap());
            assert_eq!(len, size);
            assert!(
                offset
                    >= slot["hash_offset"].as_u64().unwrap() + slot["hash_size"].as_u64().unwrap()
            );
            let start = (part["offset"].as_u64().unwrap() + offset) as usize;
            let region = disk[start..start + len as usize].to_vec();
            let roothash = se["roothash"].as_str().unwrap();
            let hash_offset = se["hash_offset"].as_u64().unwrap();
            let cmdline = slot["cmdline"].as_str().unwrap();
            for word in [
                format!("cairn.ext.roothash={roothash}"),
                format!("cairn.ext.offset={offset}"),
                format!("cairn.ext.hashoffset={hash_offset}"),
            ] {
                assert!(cmdline.split(' ').any(|w| w == word), "{word} in {cmdline}");
            }
            let file = tmp.path().join(format!("{label}-ext.img"));
            std::fs::write(&file, &region).unwrap();
            let verify = |expect_ok: bool| {
                let result = veritysetup_verify(&file, roothash, hash_offset);
                assert_eq!(
                    result.is_ok(),
                    expect_ok,
                    "{} {label} extension: {result:?}",
                    board.name
                );
            };
            verify(true);
            let listing = tool(Command::new("unsquashfs").arg("-l").arg(&file));
            let loader = match board.arch {
                cairn_board::Arch::X86_64 => "lib64/ld-linux-x86-64.so.2",
                cairn_board::Arch::Aarch64 => "lib/ld-linux-aarch64.so.1",
            };
            for path in cairn_image::extension::PROGRAMS
                .iter()
                .copied()
                .chain(["usr/sbin/iptables", "usr/sbin/ip6tables", loader])
                .chain([cairn_image::extension::MANIFEST_PATH])
            {
                assert!(
                    listing
                        .lines()
                        .any(|l| l == format!("squashfs-root/{path}")),
                    "{}: no /{path} in\n{listing}",
                    board.name
                );
            }
            assert!(
                !listing.contains("usr/share/doc"),
                "documentation is left out"
            );
            let manifest_json = tool(
                Command::new("unsquashfs")
                    .arg("-cat")
                    .arg(&file)
                    .arg(cairn_image::extension::MANIFEST_PATH),
            );
            let em: serde_json::Value = serde_json::from_str(&manifest_json).unwrap();
            for name in cairn_image::extension::PACKAGES {
                assert!(
                    em["packages"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["package"] == *name && p["sha256"].as_str().unwrap().len() == 64),
                    "{name} in {manifest_json}"
                );
            }

            // One byte changed in the middle of the squashfs.
            let mut bad = region.clone();
            bad[(hash_offset / 2) as usize] ^= 0x01;
            std::fs::write(&file, &bad).unwrap();
            verify(false);
            regions.push(region);
        }
        assert_eq!(
            regions[0], regions[1],
            "both slots carry the same extension"
        );
        assert_eq!(
            cairn_image::deb::sha256_file(&{
                let p = tmp.path().join("a.img");
                std::fs::write(&p, &regions[0]).unwrap();
                p
            })
            .unwrap(),
            ext["sha256"].as_str().unwrap()
        );

        // Bundles are made for systemd-boot boards: the rootfs payload ends with the extension,
        // and boot.json's options carry its words.
        if !matches!(board.boot, BootScheme::SystemdBoot { .. }) {
            continue;
        }
        let work = tempfile::tempdir().unwrap();
        let input =
            cairn_image::bundle_input::bundle_input(&image_dir(board), work.path()).unwrap();
        let rootfs = input
            .payloads
            .iter()
            .find(|p| p.role == cairn_bundle::Role::Rootfs)
            .unwrap();
        let bytes = std::fs::read(&rootfs.path).unwrap();
        let slot_a = &m["slots"][0]["extension"];
        let offset = slot_a["offset"].as_u64().unwrap() as usize;
        assert_eq!(bytes.len(), offset + size as usize);
        assert_eq!(&bytes[offset..], &regions[0][..]);
        let spec = input
            .payloads
            .iter()
            .find(|p| p.role == cairn_bundle::Role::BootFiles)
            .unwrap();
        let spec = std::fs::read_to_string(&spec.path).unwrap();
        assert!(
            spec.contains(&format!(
                "cairn.ext.roothash={}",
                slot_a["roothash"].as_str().unwrap()
            )),
            "{spec}"
        );
    }
}

/// Debian's `veritysetup verify` of `file` (data and hash tree in one file, the tree at
/// `hash_offset`) against `roothash`; its error output when it refuses.
fn veritysetup_verify(file: &Path, roothash: &str, hash_offset: u64) -> Result<(), String> {
    let out = Command::new("veritysetup")
        .arg("verify")
        .arg(file)
        .arg(file)
        .arg(roothash)
        .arg(format!("--hash-offset={hash_offset}"))
        .output()
        .expect("veritysetup (cryptsetup-bin) is installed by `cargo xtask setup`");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `cairnctl image build --no-containers` (no extension): image.json records none, no slot's
/// command line names one (init then mounts none), where the image with it does.
#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn an_image_without_the_containers_extension_names_none() {
    let board = cairn_board::find("qemu-x86_64").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plain");
    let built = build(&BuildOptions {
        secure_boot: None,
        extension: None,
        ..options(board, &out)
    })
    .unwrap();
    assert!(built.extension.is_none());
    let with = manifest(board);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("image.json")).unwrap()).unwrap();
    assert!(json.get("extension").is_none(), "{json}");
    for (slot, with_slot) in json["slots"]
        .as_array()
        .unwrap()
        .iter()
        .zip(with["slots"].as_array().unwrap())
    {
        assert!(slot.get("extension").is_none(), "{slot}");
        let cmdline = slot["cmdline"].as_str().unwrap();
        assert!(!cmdline.contains("cairn.ext."), "{cmdline}");
        let with_cmdline = with_slot["cmdline"].as_str().unwrap();
        assert!(
            with_cmdline.contains("cairn.ext.roothash="),
            "{with_cmdline}"
        );
        assert!(with_slot["extension"]["size"].as_u64().unwrap() > 0);
    }
}
