//! The file systems this crate makes, checked by the real peer: e2fsprogs' `e2fsck -fn` must
//! find nothing, `dumpe2fs -h` must show the features and counts, `debugfs` must list the root,
//! and the host's kernel must mount one, write and read back (when loop devices are there).

use std::fs::File;
use std::path::Path;
use std::process::Command;

use cairn_ext4::{format, format_all, Geometry, Options};

fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{name} is missing: apt-get install e2fsprogs");
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool(cmd)).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Bytes of one ext4 block group with 4 KiB blocks (32768 blocks, one bitmap block's bits).
const GROUP: u64 = 128 << 20;
/// Bytes at the start of every group that can hold metadata: a superblock and descriptor
/// backup, two bitmaps and an inode table of at most 2 MiB (8192 inodes of 256 bytes).
const GROUP_HEAD: u64 = 4 << 20;

/// A file of `size` bytes that reads as noise wherever a file system keeps anything (a LUKS
/// mapping reads as noise, not zeros), formatted; returns it and the geometry. Group 0 (which
/// also holds the root, lost+found and the journal), the head of every other group and the
/// last MiB are written; the rest, free data blocks that nothing reads, stays a hole, so a
/// few GiB take a few hundred MiB of the host's disk.
fn made(dir: &Path, size: u64, label: &str) -> (std::path::PathBuf, Geometry) {
    let path = dir.join(format!("fs-{size}"));
    let f = File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let noise: Vec<u8> = (0..1u32 << 20)
        .map(|i| i.wrapping_mul(2654435761).to_le_bytes()[3] | 1)
        .collect();
    let fill = |from: u64, to: u64| {
        let mut at = from;
        while at < to.min(size) {
            let n = (to.min(size) - at).min(noise.len() as u64) as usize;
            std::os::unix::fs::FileExt::write_all_at(&f, &noise[..n], at)
                .unwrap_or_else(|e| panic!("writing {size} bytes of noise at {at}: {e}"));
            at += n as u64;
        }
    };
    fill(0, GROUP);
    for group in (GROUP..size).step_by(GROUP as usize) {
        fill(group, group + GROUP_HEAD);
    }
    fill(size.saturating_sub(1 << 20), size);
    let opts = Options {
        label: label.into(),
        ..Options::default()
    };
    let g = format_all(
        &File::options().read(true).write(true).open(&path).unwrap(),
        &opts,
    )
    .unwrap();
    (path, g)
}

fn field<'a>(dump: &'a str, name: &str) -> &'a str {
    dump.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim_start_matches(':').trim())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{dump}"))
}

#[test]
fn e2fsck_finds_nothing_to_fix_from_a_few_mib_to_a_few_gib() {
    let dir = tempfile::tempdir().unwrap();
    // One group; two groups with a short last one; many groups with backups in 1, 3, 5, 7, 9,
    // 25 and 27; past a GiB the journal is 64 MiB.
    for mib in [8u64, 130, 1000, 3 << 10] {
        let size = mib << 20;
        let (path, g) = made(dir.path(), size, "DATA");
        let p = path.to_str().unwrap();
        let (ok, fsck) = run("e2fsck", &["-fn", p]);
        assert!(ok, "{mib} MiB: e2fsck:\n{fsck}");
        assert!(
            !fsck.contains("Fix?") && !fsck.contains("WARNING"),
            "{fsck}"
        );
        let (ok, dump) = run("dumpe2fs", &["-h", p]);
        assert!(ok, "{dump}");
        let features = field(&dump, "Filesystem features");
        for f in [
            "has_journal",
            "ext_attr",
            "dir_index",
            "filetype",
            "extent",
            "sparse_super",
            "large_file",
            "huge_file",
            "dir_nlink",
            "extra_isize",
            "metadata_csum",
        ] {
            assert!(
                features.split(' ').any(|x| x == f),
                "{f} missing: {features}"
            );
        }
        assert_eq!(field(&dump, "Block count"), g.blocks.to_string());
        assert_eq!(field(&dump, "Inode count"), g.inodes().to_string());
        assert_eq!(field(&dump, "Block size"), "4096");
        assert_eq!(field(&dump, "Filesystem volume name"), "DATA");
        assert_eq!(field(&dump, "Filesystem state"), "clean");
        assert_eq!(field(&dump, "Checksum type"), "crc32c");
        assert_eq!(
            field(&dump, "Total journal blocks"),
            g.journal_blocks.to_string()
        );
        assert_eq!(field(&dump, "Journal start"), "0");
        assert_eq!(field(&dump, "Free blocks"), g.free_blocks().to_string());
        let (ok, ls) = run("debugfs", &["-R", "ls -l /", p]);
        assert!(ok, "{ls}");
        assert!(ls.contains("lost+found"), "{ls}");
        assert!(!ls.contains("checksum"), "{ls}");
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_size_too_small_is_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny");
    let f = File::create(&path).unwrap();
    f.set_len(2 << 20).unwrap();
    let e = format(&f, 2 << 20, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("2097152 bytes is too small for ext4"), "{e}");
    assert!(!e.contains('\n'));
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.iter().all(|&b| b == 0));
}

/// The kernel's own ext4 driver: mount through a loop device, write, unmount, check, mount
/// again and read back. Needs root and loop devices; says so in one line and passes otherwise.
#[test]
fn the_kernel_mounts_it_read_write() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = made(dir.path(), 64 << 20, "DATA");
    let p = path.to_str().unwrap();
    let Ok(out) = Command::new(tool("losetup"))
        .args(["--find", "--show", p])
        .output()
    else {
        println!("skipped: no losetup");
        return;
    };
    if !out.status.success() {
        println!(
            "skipped: no loop device ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    let result = std::panic::catch_unwind(|| {
        let mount = |opts: &str| {
            let out = Command::new("mount")
                .args(["-t", "ext4", "-o", opts, &dev, m])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "mount: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let umount = || assert!(Command::new("umount").arg(m).status().unwrap().success());
        mount("rw,nodelalloc");
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::create_dir_all(mnt.join("lib/containerd")).unwrap();
        std::fs::write(mnt.join("lib/containerd/blob"), &blob).unwrap();
        std::os::unix::fs::symlink("containerd/blob", mnt.join("lib/link")).unwrap();
        for i in 0..300 {
            std::fs::write(mnt.join(format!("lib/f{i}")), i.to_string()).unwrap();
        }
        umount();
        let (ok, fsck) = run("e2fsck", &["-fn", &dev]);
        assert!(ok, "after writing: {fsck}");
        mount("ro");
        assert_eq!(std::fs::read(mnt.join("lib/link")).unwrap(), blob);
        assert_eq!(
            std::fs::read_to_string(mnt.join("lib/f299")).unwrap(),
            "299"
        );
        umount();
    });
    let _ = Command::new("umount")
        .arg(m)
        .stderr(std::process::Stdio::null())
        .status();
    let _ = Command::new(tool("losetup")).args(["-d", &dev]).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
