//! Checks our squashfs root images against squashfs-tools: `unsquashfs -lln` must list exactly
//! our entries with our modes, 0/0 owners, fixed mtime and symlink targets, `unsquashfs -cat`
//! must return our contents, and the image must be reproducible and 4 KiB-padded for
//! dm-verity.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use cairn_image::formats::region::Region;
use cairn_image::formats::squashfs::write_squashfs;
use cairn_image::formats::tree::Tree;

mod common;
use common::tool;

const MTIME: u32 = 1_600_000_000; // 2020-09-13 12:26:40 UTC

fn unsquashfs(args: &[&str]) -> Vec<u8> {
    let out = Command::new(tool("unsquashfs", "squashfs-tools"))
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Host files for the tree, so that their mtimes can be changed between writes.
fn host_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = vec![
        (dir.join("cairn"), common::pseudo_random(700_001, 7)),
        (dir.join("libc.so.6"), common::pseudo_random(20_000, 8)),
    ];
    for (path, content) in &files {
        fs::write(path, content).unwrap();
    }
    files
}

fn tree(dir: &Path) -> Tree {
    let host = host_files(dir);
    let mut t = Tree::new();
    t.add_file("sbin/init", 0o755, host[0].0.clone()).unwrap();
    t.add_file("usr/lib/libc.so.6", 0o644, host[1].0.clone())
        .unwrap();
    t.add_file("etc/cairn/release", 0o644, "version=1.0\n")
        .unwrap();
    t.add_file("etc/shadow", 0o600, "root:*:1::::::\n").unwrap();
    t.add_file("usr/bin/suid", 0o4755, "x").unwrap();
    t.add_file("empty", 0o444, Vec::new()).unwrap();
    t.add_dir("tmp", 0o1777).unwrap();
    t.add_dir("data", 0o700).unwrap();
    t.add_symlink("lib", "usr/lib").unwrap();
    t.add_symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .unwrap();
    t
}

/// Writes the image at `offset` inside `path`, as the image builder does in disk.img, and
/// returns the length reported.
fn write(path: &Path, offset: u64, tree: &Tree) -> u64 {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let capacity = 16 * 1024 * 1024;
    file.set_len(offset + capacity).unwrap();
    let mut region = Region::new(&mut file, "ROOT-A", offset, capacity);
    let len = write_squashfs(&mut region, tree, MTIME).unwrap();
    file.set_len(offset + len).unwrap();
    len
}

#[test]
fn unsquashfs_lists_exactly_our_entries() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root.img");
    write(&img, 0, &tree(dir.path()));
    let listing =
        String::from_utf8(unsquashfs(&["-lln", "-d", "", img.to_str().unwrap()])).unwrap();

    let date = "2020-09-13 12:26";
    let mut expected = vec![format!("drwxr-xr-x 0/0 {date} ")];
    let t = tree(dir.path());
    for (path, node) in t.iter() {
        use cairn_image::formats::tree::NodeKind;
        let (kind, suffix) = match &node.kind {
            NodeKind::Dir => ('d', String::new()),
            NodeKind::File(_) => ('-', String::new()),
            NodeKind::Symlink(target) => ('l', format!(" -> {target}")),
        };
        expected.push(format!(
            "{kind}{} 0/0 {date} /{path}{suffix}",
            rwx(node.mode)
        ));
    }
    // Columns: mode owner size date time name [-> target]; the size column is dropped because
    // directory sizes are squashfs-internal.
    let seen: Vec<String> = listing
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.get(5..).map(|rest| rest.join(" ")).unwrap_or_default();
            format!("{} {} {} {} {}", f[0], f[1], f[3], f[4], name)
        })
        .collect();
    assert_eq!(seen, expected, "full listing:\n{listing}");
}

fn rwx(mode: u32) -> String {
    let mut s: Vec<char> = "rwxrwxrwx".chars().collect();
    for (i, c) in s.iter_mut().enumerate() {
        if mode & (0o400 >> i) == 0 {
            *c = '-';
        }
    }
    if mode & 0o4000 != 0 {
        s[2] = if s[2] == 'x' { 's' } else { 'S' };
    }
    if mode & 0o1000 != 0 {
        s[8] = if s[8] == 'x' { 't' } else { 'T' };
    }
    s.into_iter().collect()
}

#[test]
fn unsquashfs_returns_our_contents_and_superblock_time() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root.img");
    write(&img, 0, &tree(dir.path()));
    let img = img.to_str().unwrap();
    for (path, content) in [
        ("sbin/init", common::pseudo_random(700_001, 7)),
        ("usr/lib/libc.so.6", common::pseudo_random(20_000, 8)),
        ("etc/cairn/release", b"version=1.0\n".to_vec()),
        ("empty", Vec::new()),
    ] {
        let got = unsquashfs(&["-cat", img, path]);
        assert!(
            got == content,
            "{path}: {} bytes back, {} written",
            got.len(),
            content.len()
        );
    }
    let stat = String::from_utf8(unsquashfs(&["-s", img])).unwrap();
    assert!(
        stat.contains("Creation or last append time Sun Sep 13 12:26:40 2020"),
        "{stat}"
    );
    assert!(stat.contains("Compression gzip"), "{stat}");
}

#[test]
fn reproducible_and_padded_for_verity() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let len_a = write(&a, 0, &tree(dir.path()));
    // Rewrite the host files with other mtimes (and write b at an offset): nothing may change.
    let t = tree(dir.path());
    for (path, _) in host_files(dir.path()) {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(42))
            .unwrap();
    }
    let len_b = write(&b, 8192, &t);
    assert_eq!(len_a, len_b);
    assert_eq!(len_a % 4096, 0, "image length {len_a} is not 4 KiB aligned");
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(a.len() as u64, len_a);
    assert!(a[..] == b[8192..], "images differ");
}
