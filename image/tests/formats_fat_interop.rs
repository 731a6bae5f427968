//! Checks our FAT32 ESP against dosfstools and mtools: `fsck.fat -n` must find nothing to fix,
//! and mtools (an independent FAT reader) must see our label, serial, directories and exact
//! file contents, including long names such as systemd-boot's `cairn-a+3-0.conf`.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::Command;

use cairn_image::formats::fat::write_fat32;
use cairn_image::formats::region::Region;
use cairn_image::formats::tree::Tree;

mod common;
use common::tool;

const MIB: u64 = 1024 * 1024;
const ESP_BYTES: u64 = 96 * MIB;

/// Runs an mtools command; returns (success, stdout bytes, stderr text).
fn mtools(name: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(tool(name, "mtools"))
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn files(host_dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let host = common::pseudo_random(300_000, 3);
    fs::write(host_dir.join("vmlinuz"), &host).unwrap();
    vec![
        (
            "EFI/BOOT/BOOTAA64.EFI",
            common::pseudo_random(5 * MIB as usize + 123, 1),
        ),
        (
            "EFI/systemd/systemd-bootaa64.efi",
            common::pseudo_random(90_000, 2),
        ),
        ("EFI/cairn/a/vmlinuz", host),
        (
            "loader/loader.conf",
            b"default cairn-a*\ntimeout 0\n".to_vec(),
        ),
        (
            "loader/entries/cairn-a+3-0.conf",
            b"title Cairn (slot A)\nlinux /EFI/cairn/a/vmlinuz\n".to_vec(),
        ),
        (
            "loader/entries/cairn-b+0-3.conf",
            b"title Cairn (slot B)\n".to_vec(),
        ),
        ("empty.txt", Vec::new()),
    ]
}

fn tree(host_dir: &Path) -> Tree {
    let mut t = Tree::new();
    for (path, content) in files(host_dir) {
        if path == "EFI/cairn/a/vmlinuz" {
            t.add_file(path, 0o644, host_dir.join("vmlinuz")).unwrap();
        } else {
            t.add_file(path, 0o644, content).unwrap();
        }
    }
    t.add_dir("loader/keys", 0o755).unwrap();
    t
}

/// Writes the ESP into `path` at `offset`, as the image builder does inside disk.img.
fn write_esp(path: &Path, offset: u64, tree: &Tree) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.set_len(offset + ESP_BYTES).unwrap();
    let region = Region::new(&mut file, "ESP", offset, ESP_BYTES);
    write_fat32(region, ESP_BYTES, 0xCA1F_0001, "CAIRN-ESP", tree).unwrap();
}

#[test]
fn fsck_fat_finds_nothing_to_fix() {
    let fsck = tool("fsck.fat", "dosfstools");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("esp.img");
    write_esp(&img, 0, &tree(dir.path()));
    let out = Command::new(&fsck)
        .args(["-n", "-v", img.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fsck.fat -n reported problems:\n{text}"
    );
    // fsck.fat -n can exit 0 yet describe fixes it declined to make.
    assert!(!text.contains("Leaving filesystem unchanged"), "{text}");
    assert!(text.contains("32 bit entries"), "not FAT32:\n{text}");
}

#[test]
fn mtools_reads_back_label_tree_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    // At 1 MiB inside a larger file, as in disk.img; mtools addresses it with @@offset.
    write_esp(&img, MIB, &tree(dir.path()));
    let drive = format!("{}@@{}", img.display(), MIB);

    let (ok, info, err) = mtools("minfo", &["-i", &drive, "::"]);
    assert!(ok, "minfo: {err}");
    let info = String::from_utf8_lossy(&info);
    assert!(info.contains("serial number: CA1F0001"), "{info}");
    assert!(info.contains("disk label=\"CAIRN-ESP  \""), "{info}");
    assert!(info.contains("disk type=\"FAT32   \""), "{info}");

    let (ok, listing, err) = mtools("mdir", &["-/", "-b", "-i", &drive, "::"]);
    assert!(ok, "mdir: {err}");
    let mut listed: Vec<String> = String::from_utf8_lossy(&listing)
        .lines()
        .map(|l| l.trim_start_matches("::/").trim_end_matches('/').to_owned())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = tree(dir.path()).iter().map(|(p, _)| p.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected);

    for (path, content) in files(dir.path()) {
        let (ok, got, err) = mtools("mtype", &["-i", &drive, &format!("::/{path}")]);
        assert!(ok, "mtype {path}: {err}");
        assert!(
            got == content,
            "{path}: {} bytes back, {} written",
            got.len(),
            content.len()
        );
    }

    let (ok, long, err) = mtools("mdir", &["-i", &drive, "::/loader/entries"]);
    assert!(ok, "mdir: {err}");
    let long = String::from_utf8_lossy(&long);
    assert!(long.contains("2020-01-01"), "fixed timestamp:\n{long}");
    assert!(long.contains("cairn-a+3-0.conf"), "long name kept:\n{long}");
}

#[test]
fn same_inputs_give_identical_bytes_anywhere_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    write_esp(&a, 0, &tree(dir.path()));
    // Garbage where the volume will go: quick-format leftovers must not reach the output.
    fs::write(&b, vec![0xA5u8; (3 * MIB) as usize]).unwrap();
    let mut file = OpenOptions::new().read(true).write(true).open(&b).unwrap();
    file.set_len(3 * MIB + ESP_BYTES).unwrap();
    write_fat32(
        Region::new(&mut file, "ESP", 2 * MIB, ESP_BYTES),
        ESP_BYTES,
        0xCA1F_0001,
        "CAIRN-ESP",
        &tree(dir.path()),
    )
    .unwrap();
    let a = fs::read(a).unwrap();
    let b = fs::read(b).unwrap();
    let start = (2 * MIB) as usize;
    assert!(
        a[..] == b[start..start + ESP_BYTES as usize],
        "volumes differ"
    );
    assert!(
        b[..(2 * MIB) as usize].iter().all(|&x| x == 0xA5),
        "wrote before the region"
    );
}

#[test]
fn too_small_volume_is_a_clear_error() {
    let mut file: File = tempfile::tempfile().unwrap();
    file.set_len(16 * MIB).unwrap();
    let err = write_fat32(
        Region::new(&mut file, "ESP", 0, 16 * MIB),
        16 * MIB,
        1,
        "ESP",
        &Tree::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
}
