//! The ESP's FAT32 repair (cairn_boot::fat32) against Debian's dosfstools and mtools: volumes
//! made by mkfs.fat and filled by mcopy, damaged the way a power cut leaves them, repaired,
//! then checked by `fsck.fat -n`, which must find nothing, and read back by mtype.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_boot::fat32::{is_dirty, repair, Repaired};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `cargo xtask setup`)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

struct Vol {
    _dir: tempfile::TempDir,
    img: PathBuf,
}

/// A FAT32 volume of 80 MiB with 512-byte clusters: a kernel-sized file in the root, a few small
/// ones, and nested directories with long names, as on an ESP.
fn volume() -> Vol {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("esp.img");
    let (ok, out) = run(Command::new("mkfs.fat")
        .args(["-F", "32", "-S", "512", "-s", "1", "-n", "ESP", "-C"])
        .arg(&img)
        .arg("81920"));
    assert!(ok, "{out}");
    let put = |name: &str, bytes: Vec<u8>| {
        let src = dir.path().join("src");
        std::fs::write(&src, bytes).unwrap();
        let (ok, out) = run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .arg(&src)
            .arg(format!("::{name}")));
        assert!(ok, "{out}");
    };
    for d in [
        "EFI",
        "EFI/cairn",
        "EFI/cairn/a",
        "EFI/cairn/b",
        "loader",
        "loader/entries",
    ] {
        let (ok, out) = run(Command::new("mmd")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .arg(format!("::{d}")));
        assert!(ok, "{out}");
    }
    put("VMLINUZ", pattern(1, 3_000_000));
    put("INITRD", pattern(2, 700_000));
    put("EFI/cairn/a/vmlinuz", pattern(3, 2_000_000));
    put("EFI/cairn/a/initramfs.img", pattern(4, 500_000));
    put(
        "loader/entries/cairn-a+3-0.conf",
        b"title Cairn A\n".to_vec(),
    );
    put("loader/loader.conf", b"timeout 0\n".to_vec());
    Vol { _dir: dir, img }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn read_back(img: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i"])
        .arg(img)
        .arg(format!("::{name}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fsck_clean(img: &Path) -> (bool, String) {
    run(Command::new("fsck.fat").arg("-n").arg(img))
}

/// The geometry mkfs.fat chose, read from the boot sector.
struct Geo {
    fat: u64,
    fat_bytes: u64,
    data: u64,
}

fn geo(f: &mut File) -> Geo {
    let mut b = [0u8; 512];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut b).unwrap();
    let reserved = u64::from(u16::from_le_bytes([b[14], b[15]]));
    let fats = u64::from(b[16]);
    let fat_sectors = u64::from(u32::from_le_bytes(b[36..40].try_into().unwrap()));
    Geo {
        fat: reserved * 512,
        fat_bytes: fat_sectors * 512,
        data: (reserved + fats * fat_sectors) * 512,
    }
}

/// First cluster and size of a root directory entry (8.3 name, padded).
fn root_entry(f: &mut File, g: &Geo, name: &[u8; 11]) -> (u32, u32, u64) {
    // The root directory is cluster 2 on a fresh mkfs.fat volume; it may span several.
    let mut at = 2u32;
    loop {
        let mut buf = [0u8; 512];
        f.seek(SeekFrom::Start(g.data + u64::from(at - 2) * 512))
            .unwrap();
        f.read_exact(&mut buf).unwrap();
        for i in (0..512).step_by(32) {
            if &buf[i..i + 11] == name {
                let hi = u32::from(u16::from_le_bytes([buf[i + 20], buf[i + 21]]));
                let lo = u32::from(u16::from_le_bytes([buf[i + 26], buf[i + 27]]));
                let size = u32::from_le_bytes(buf[i + 28..i + 32].try_into().unwrap());
                return (
                    hi << 16 | lo,
                    size,
                    g.data + u64::from(at - 2) * 512 + i as u64,
                );
            }
        }
        at = fat_get(f, g, at);
        assert!(at < 0x0FFF_FFF8, "no entry {name:?}");
    }
}

fn fat_get(f: &mut File, g: &Geo, c: u32) -> u32 {
    let mut b = [0u8; 4];
    f.seek(SeekFrom::Start(g.fat + u64::from(c) * 4)).unwrap();
    f.read_exact(&mut b).unwrap();
    u32::from_le_bytes(b) & 0x0FFF_FFFF
}

/// Sets a FAT entry in the first FAT only, as a cut between the two FATs' writes leaves it.
fn fat_set(f: &mut File, g: &Geo, c: u32, v: u32) {
    f.seek(SeekFrom::Start(g.fat + u64::from(c) * 4)).unwrap();
    f.write_all(&v.to_le_bytes()).unwrap();
    let _ = g.fat_bytes;
}

fn set_dirty(f: &mut File) {
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(0x41)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(0x41)).unwrap();
    f.write_all(&[b[0] | 1]).unwrap();
}

fn open(img: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(img).unwrap()
}

#[test]
fn a_clean_volume_is_left_alone_and_a_forced_pass_changes_no_file() {
    let v = volume();
    let before = std::fs::read(&v.img).unwrap();
    let mut f = open(&v.img);
    assert!(!is_dirty(&mut f).unwrap());
    assert_eq!(repair(&mut f, false).unwrap(), None);
    assert_eq!(
        std::fs::read(&v.img).unwrap(),
        before,
        "not dirty: not touched"
    );
    let done = repair(&mut f, true).unwrap().unwrap();
    assert_eq!(done.truncated, Vec::<String>::new());
    assert_eq!(done.freed, 0);
    let (ok, out) = fsck_clean(&v.img);
    assert!(ok, "{out}");
    assert_eq!(
        read_back(&v.img, "EFI/cairn/a/vmlinuz"),
        pattern(3, 2_000_000)
    );
    assert_eq!(read_back(&v.img, "loader/loader.conf"), b"timeout 0\n");
}

#[test]
fn a_file_cut_while_written_is_truncated_and_the_rest_is_untouched() {
    // What the power-cut harness found: the kernel's directory entry has its final size, but
    // the FAT's chain for it reaches a cluster still marked free.
    let v = volume();
    let mut f = open(&v.img);
    let g = geo(&mut f);
    let (first, size, _) = root_entry(&mut f, &g, b"VMLINUZ    ");
    assert_eq!(size, 3_000_000);
    let mut c = first;
    for _ in 0..1000 {
        c = fat_get(&mut f, &g, c);
    }
    // The 1001st cluster's successor was never written: free.
    let next = fat_get(&mut f, &g, c);
    fat_set(&mut f, &g, next, 0);
    // A chain the FAT took for a file whose directory entry never came: lost clusters.
    for lost in 150_000..150_010u32 {
        fat_set(
            &mut f,
            &g,
            lost,
            if lost == 150_009 {
                0x0FFF_FFFF
            } else {
                lost + 1
            },
        );
    }
    set_dirty(&mut f);
    drop(f);
    let (ok, out) = fsck_clean(&v.img);
    assert!(!ok, "fsck.fat sees the damage first: {out}");

    let mut f = open(&v.img);
    assert!(is_dirty(&mut f).unwrap());
    let done = repair(&mut f, false).unwrap().unwrap();
    drop(f);
    assert_eq!(done.truncated, ["/VMLINUZ"]);
    // The clusters after the free one in the old chain are lost too.
    assert!(done.freed >= 10, "{done:?}");
    let (ok, out) = fsck_clean(&v.img);
    assert!(ok, "{out}");
    let kernel = read_back(&v.img, "VMLINUZ");
    assert_eq!(kernel.len(), 1001 * 512);
    assert_eq!(kernel, pattern(1, 3_000_000)[..1001 * 512]);
    for (name, want) in [
        ("INITRD", pattern(2, 700_000)),
        ("EFI/cairn/a/vmlinuz", pattern(3, 2_000_000)),
        ("EFI/cairn/a/initramfs.img", pattern(4, 500_000)),
    ] {
        assert_eq!(read_back(&v.img, name), want, "{name}");
    }
    let mut f = open(&v.img);
    assert!(!is_dirty(&mut f).unwrap());
    // The repaired volume takes new files where the old ones were.
    drop(f);
    let src = v.img.with_file_name("new");
    std::fs::write(&src, pattern(9, 3_000_000)).unwrap();
    let (ok, out) = run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i"])
        .arg(&v.img)
        .arg(&src)
        .arg("::VMLINUZ"));
    assert!(ok, "{out}");
    assert_eq!(read_back(&v.img, "VMLINUZ"), pattern(9, 3_000_000));
    let (ok, out) = fsck_clean(&v.img);
    assert!(ok, "{out}");
}

#[test]
fn a_chain_that_runs_into_another_file_ends_before_it() {
    let v = volume();
    let mut f = open(&v.img);
    let g = geo(&mut f);
    let (kernel, _, _) = root_entry(&mut f, &g, b"VMLINUZ    ");
    let (initrd, _, _) = root_entry(&mut f, &g, b"INITRD     ");
    // INITRD's 10th cluster now points into VMLINUZ's chain (a cross-link).
    let mut c = initrd;
    for _ in 0..9 {
        c = fat_get(&mut f, &g, c);
    }
    let rest = fat_get(&mut f, &g, c);
    fat_set(&mut f, &g, c, kernel + 5);
    let _ = rest;
    set_dirty(&mut f);
    let done = repair(&mut f, false).unwrap().unwrap();
    drop(f);
    // The root lists VMLINUZ before INITRD, so the kernel keeps its clusters.
    assert_eq!(done.truncated, ["/INITRD"]);
    assert_eq!(
        done.to_string(),
        format!(
            "repaired: 1 file(s) cut short /INITRD, {} lost cluster(s) freed",
            done.freed
        )
    );
    let (ok, out) = fsck_clean(&v.img);
    assert!(ok, "{out}");
    assert_eq!(read_back(&v.img, "VMLINUZ"), pattern(1, 3_000_000));
    assert_eq!(read_back(&v.img, "INITRD"), pattern(2, 700_000)[..10 * 512]);
}

#[test]
fn other_file_systems_are_named_and_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat16.img");
    let (ok, out) = run(Command::new("mkfs.fat")
        .args(["-F", "16", "-C"])
        .arg(&img)
        .arg("32768"));
    assert!(ok, "{out}");
    let before = std::fs::read(&img).unwrap();
    let e = repair(&mut open(&img), true).unwrap_err();
    assert_eq!(e, "not FAT32");
    assert_eq!(std::fs::read(&img).unwrap(), before);
    let e = repair(&mut std::io::Cursor::new(vec![0u8; 4096]), true).unwrap_err();
    assert_eq!(e, "no boot sector signature");
}

/// Adds `bytes` as `name` with mcopy.
fn mcopy(img: &Path, name: &str, bytes: &[u8]) {
    let src = img.with_file_name("src");
    std::fs::write(&src, bytes).unwrap();
    let (ok, out) = run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(img)
        .arg(&src)
        .arg(format!("::{name}")));
    assert!(ok, "{out}");
}

/// The names mdir lists in the root (long names where there are).
fn root_names(img: &Path) -> String {
    run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(img)
        .arg("::"))
    .1
}

/// The byte offset of the root's short entry of the file that is `size` bytes long.
fn entry_of_size(f: &mut File, g: &Geo, size: u32) -> u64 {
    let mut at = 2u32;
    loop {
        let mut buf = [0u8; 512];
        let base = g.data + u64::from(at - 2) * 512;
        f.seek(SeekFrom::Start(base)).unwrap();
        f.read_exact(&mut buf).unwrap();
        for i in (0..512).step_by(32) {
            let e = &buf[i..i + 32];
            if e[0] != 0 && e[0] != 0xE5 && e[11] != 0x0F && le32(e, 28) == size {
                return base + i as u64;
            }
        }
        at = fat_get(f, g, at);
        assert!(at < 0x0FFF_FFF8, "no entry of {size} bytes");
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn read_at(f: &mut File, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b
}

fn write_at(f: &mut File, at: u64, bytes: &[u8]) {
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
}

/// Marks the volume dirty and repairs it; then fsck.fat finds nothing, `kept` reads back as
/// `bytes`, and the root lists `kept` and not `gone`.
fn repair_keeps(img: &Path, mut f: File, kept: &str, bytes: &[u8], gone: &str) -> Repaired {
    set_dirty(&mut f);
    let done = repair(&mut f, false).unwrap().unwrap();
    drop(f);
    let (ok, out) = fsck_clean(img);
    assert!(ok, "{out}");
    assert_eq!(read_back(img, kept), bytes);
    let names = root_names(img);
    assert!(names.contains(kept) && !names.contains(gone), "{names}");
    done
}

/// Points the root entry of the file of `size` at the clusters (and size) of the file of
/// `target_size`: a second name of that file; its own clusters are lost.
fn make_second_name(f: &mut File, g: &Geo, size: u32, target_size: u32) {
    let target_at = entry_of_size(f, g, target_size);
    let target = read_at(f, target_at, 32);
    let at = entry_of_size(f, g, size);
    let mut entry = read_at(f, at, 32);
    entry[20..22].copy_from_slice(&target[20..22]);
    entry[26..32].copy_from_slice(&target[26..32]);
    write_at(f, at, &entry);
}

/// The checksum of an 8.3 name in its long-name entries.
fn checksum(short: &[u8]) -> u8 {
    short[..11]
        .iter()
        .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b))
}

/// A short entry named `name` for the file whose entry is `of`: a second name of it.
fn alias(of: &[u8], name: &[u8; 11]) -> Vec<u8> {
    let mut e = of.to_vec();
    e[..11].copy_from_slice(name);
    e
}

/// A long-name entry that starts a sequence of two for `short` (whose entry 1 is missing): what
/// is left of an old long name half overwritten by a rename.
fn orphan_fragment(short: &[u8]) -> Vec<u8> {
    let mut e = vec![0xFFu8; 32];
    e[0] = 0x42;
    e[11] = 0x0F;
    e[12] = 0;
    e[13] = checksum(short);
    e[26] = 0;
    e[27] = 0;
    for (k, at) in [1usize, 3, 5, 7, 9].into_iter().enumerate() {
        e[at] = b"+1-1."[k];
        e[at + 1] = 0;
    }
    e
}

#[test]
fn a_rename_cut_between_its_writes_leaves_one_name() {
    // What the power-cut harness found on qemu-aarch64: the committed UKI's new name written,
    // the old one's short entry still there, its long name half overwritten. Linux lists both
    // (one as CAIRN-~1.EFI), sharing the clusters; fsck.fat would cut the second to 0 bytes
    // and keep a name that Cairn's boot entries cannot parse.
    let v = volume();
    let uki = pattern(7, 100_000);
    mcopy(&v.img, "cairn-3-b.efi", &uki);
    let mut f = open(&v.img);
    let g = geo(&mut f);
    let at = entry_of_size(&mut f, &g, 100_000);
    let entry = read_at(&mut f, at, 32);
    assert_eq!(read_at(&mut f, at + 32, 1), [0], "the root's last entry");
    let old = alias(&entry, b"CAIRN-~9EFI");
    write_at(&mut f, at + 32, &orphan_fragment(&old));
    write_at(&mut f, at + 64, &old);
    drop(f);
    let (ok, out) = fsck_clean(&v.img);
    assert!(!ok && out.contains("share clusters"), "{out}");

    let done = repair_keeps(&v.img, open(&v.img), "cairn-3-b.efi", &uki, "CAIRN-~9");
    assert_eq!(done.renamed, ["/CAIRN-~9.EFI"], "{done}");
    assert_eq!(done.truncated, Vec::<String>::new());
    assert!(
        done.to_string()
            .ends_with(", 1 second name(s) of a file removed /CAIRN-~9.EFI"),
        "{done}"
    );
}

#[test]
fn two_whole_names_of_one_file_keep_the_first_and_an_alias_before_a_long_name_goes() {
    // Both names whole (the old one not yet marked deleted): the first stays.
    let v = volume();
    let uki = pattern(8, 90_000);
    mcopy(&v.img, "cairn-3-b+1-1.efi", &uki);
    mcopy(&v.img, "cairn-3-b.efi", &pattern(9, 90_001));
    let mut f = open(&v.img);
    let g = geo(&mut f);
    make_second_name(&mut f, &g, 90_001, 90_000);
    let done = repair_keeps(&v.img, f, "cairn-3-b+1-1.efi", &uki, "cairn-3-b.efi");
    assert_eq!(done.renamed.len(), 1, "{done}");
    assert!(done.freed > 0, "the second file's own clusters: {done}");

    // A short name only, before the long one: the short name goes, the long one stays.
    let v = volume();
    let uki = pattern(10, 80_000);
    mcopy(&v.img, "X", b"x");
    mcopy(&v.img, "cairn-3-b.efi", &uki);
    let mut f = open(&v.img);
    let g = geo(&mut f);
    let long_at = entry_of_size(&mut f, &g, 80_000);
    let long = read_at(&mut f, long_at, 32);
    let x_at = entry_of_size(&mut f, &g, 1);
    write_at(&mut f, x_at, &alias(&long, b"CAIRN-~9EFI"));
    let done = repair_keeps(&v.img, f, "cairn-3-b.efi", &uki, "CAIRN-~9");
    assert_eq!(done.renamed, ["/CAIRN-~9.EFI"], "{done}");
}

#[test]
fn a_scratch_file_renamed_over_its_target_leaves_the_target() {
    // `.server.key.tmp` renamed over `server.key`: Linux reuses the target's entry for the new
    // file, so a cut before the scratch entry is marked deleted leaves both names on the new
    // file. Listed first, the scratch name would win by order; the target's name stays.
    let v = volume();
    let new = pattern(11, 3_000);
    mcopy(&v.img, ".server.key.tmp", &new);
    mcopy(&v.img, "server.key", &pattern(12, 3_001));
    let mut f = open(&v.img);
    let g = geo(&mut f);
    make_second_name(&mut f, &g, 3_001, 3_000);
    let done = repair_keeps(&v.img, f, "server.key", &new, ".server.key.tmp");
    assert_eq!(done.renamed.len(), 1, "{done}");
}
