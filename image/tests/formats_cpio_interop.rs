//! Checks our newc archives against GNU cpio: it must list exactly our entries with our modes
//! and owners, and extracting must give back the contents, modes, mtimes and symlink targets.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use cairn_image::formats::cpio::write_cpio;
use cairn_image::formats::tree::Tree;

mod common;
use common::tool;

const MTIME: u32 = 1_577_836_800; // 2020-01-01T00:00:00Z

/// Runs cpio in `cwd` with the archive on stdin and returns stdout.
fn cpio(archive: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = Command::new(tool("cpio", "cpio"))
        .args(args)
        .current_dir(cwd)
        .env("TZ", "UTC")
        .stdin(Stdio::from(fs::File::open(archive).unwrap()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cpio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sample(host_dir: &Path) -> (Tree, Vec<u8>) {
    let big: Vec<u8> = (0..200_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let host = host_dir.join("module.ko");
    fs::write(&host, &big).unwrap();
    let mut t = Tree::new();
    t.add_file("init", 0o755, "#!/bin/sh\nexec /sbin/cairn\n")
        .unwrap();
    t.add_file("etc/os-release", 0o644, "ID=cairn\n").unwrap();
    t.add_file("etc/empty", 0o600, Vec::new()).unwrap();
    t.add_file("lib/modules/6.1/kernel/drivers/virtio_blk.ko", 0o644, host)
        .unwrap();
    t.add_dir("root", 0o700).unwrap();
    t.add_symlink("bin", "usr/bin").unwrap();
    t.add_symlink("usr/bin/sh", "/sbin/cairn").unwrap();
    (t, big)
}

fn write(tree: &Tree, to: &Path) -> Vec<u8> {
    let mut f = fs::File::create(to).unwrap();
    write_cpio(&mut f, tree, MTIME).unwrap();
    fs::read(to).unwrap()
}

#[test]
fn gnu_cpio_lists_our_entries_modes_and_owners() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, _) = sample(dir.path());
    let archive = dir.path().join("initramfs.cpio");
    write(&tree, &archive);

    let names = cpio(&archive, dir.path(), &["-i", "--list", "--quiet"]);
    let expected: Vec<&str> = tree.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names.lines().collect::<Vec<_>>(), expected);

    let long = cpio(
        &archive,
        dir.path(),
        &["-i", "--list", "--verbose", "--numeric-uid-gid", "--quiet"],
    );
    let rows: Vec<Vec<&str>> = long
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.get(8) == Some(&name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{long}"))
    };
    for (mode, name) in [
        ("-rwxr-xr-x", "init"),
        ("-rw-r--r--", "etc/os-release"),
        ("-rw-------", "etc/empty"),
        ("drwx------", "root"),
        ("drwxr-xr-x", "usr/bin"),
        ("lrwxrwxrwx", "bin"),
    ] {
        let r = row(name);
        assert_eq!(r[0], mode, "{name}: {r:?}");
        assert_eq!((r[2], r[3]), ("0", "0"), "{name} owner: {r:?}");
        assert_eq!(&r[5..8], ["Jan", "1", "2020"], "{name} mtime: {r:?}");
    }
    assert_eq!(&row("bin")[9..], ["->", "usr/bin"]);
    assert_eq!(
        row("lib/modules/6.1/kernel/drivers/virtio_blk.ko")[4],
        "200003"
    );
}

#[test]
fn gnu_cpio_extracts_contents_modes_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, big) = sample(dir.path());
    let archive = dir.path().join("initramfs.cpio");
    write(&tree, &archive);
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    cpio(
        &archive,
        &out,
        &[
            "-i",
            "--make-directories",
            "--preserve-modification-time",
            "--quiet",
        ],
    );

    assert_eq!(
        fs::read(out.join("init")).unwrap(),
        b"#!/bin/sh\nexec /sbin/cairn\n"
    );
    assert_eq!(fs::read(out.join("etc/os-release")).unwrap(), b"ID=cairn\n");
    assert_eq!(fs::read(out.join("etc/empty")).unwrap(), b"");
    assert_eq!(
        fs::read(out.join("lib/modules/6.1/kernel/drivers/virtio_blk.ko")).unwrap(),
        big
    );
    assert_eq!(
        fs::read_link(out.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        fs::read_link(out.join("usr/bin/sh")).unwrap(),
        Path::new("/sbin/cairn")
    );
    for (path, mode) in [
        ("init", 0o755),
        ("etc/empty", 0o600),
        ("root", 0o700),
        ("lib", 0o755),
    ] {
        let meta = fs::symlink_metadata(out.join(path)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
    }
    assert_eq!(
        fs::metadata(out.join("init")).unwrap().mtime(),
        i64::from(MTIME)
    );
}

#[test]
fn two_writes_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, _) = sample(dir.path());
    let a = write(&tree, &dir.path().join("a.cpio"));
    // Touch the host file: its mtime must not leak into the archive.
    let host = dir.path().join("module.ko");
    fs::File::options()
        .write(true)
        .open(&host)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
        .unwrap();
    let b = write(&tree, &dir.path().join("b.cpio"));
    assert!(a == b, "archives differ");
    assert_eq!(a.len() % 4, 0);
}
