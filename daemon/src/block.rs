//! Block devices and mounts for cairnd: partitions found by GPT label through sysfs (the kernel
//! puts `PARTNAME=` in each partition's uevent file), and the few mounts the daemon makes.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const SYS_BLOCK: &str = "/sys/class/block";

/// `/dev/<name>` of the partition whose GPT label is `label`, searched under `sys_block`;
/// the first in name order when several disks carry it.
pub fn find_partition_in(sys_block: &Path, label: &str) -> Result<PathBuf, String> {
    let entries =
        fs::read_dir(sys_block).map_err(|e| format!("listing {}: {e}", sys_block.display()))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let Ok(uevent) = fs::read_to_string(sys_block.join(&name).join("uevent")) else {
            continue;
        };
        if uevent
            .lines()
            .any(|l| l.strip_prefix("PARTNAME=") == Some(label))
        {
            return Ok(PathBuf::from("/dev").join(name));
        }
    }
    Err(format!("no partition labelled {label}"))
}

pub fn find_partition(label: &str) -> Result<PathBuf, String> {
    find_partition_in(Path::new(SYS_BLOCK), label)
}

/// The whole disk a block device name belongs to (`vda1` → `vda`, `sda` → `sda`).
pub fn disk_of_name_in(sys_block: &Path, name: &str) -> String {
    let entry = sys_block.join(name);
    if entry.join("partition").exists() {
        if let Some(parent) = fs::canonicalize(&entry).ok().and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        }) {
            return parent;
        }
    }
    name.to_string()
}

pub fn disk_of_name(name: &str) -> String {
    disk_of_name_in(Path::new(SYS_BLOCK), name)
}

/// The whole disk of a `/dev/...` path.
pub fn disk_of(dev: &Path) -> Option<String> {
    let name = dev.file_name()?.to_str()?;
    Some(disk_of_name(name))
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn mount(source: &Path, target: &Path, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    mount_with(source, target, fstype, flags, None)
}

fn mount_with(
    source: &Path,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let (src, dst) = (cstr(source)?, cstr(target)?);
    let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let fstype = CString::new(fstype).map_err(invalid)?;
    let data = data.map(CString::new).transpose().map_err(invalid)?;
    // SAFETY: all pointers are NUL-terminated strings (or null for no data) that outlive the
    // call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts efivarfs (the firmware's variables) read-only on `target`.
pub fn mount_efivarfs_ro(target: &Path) -> io::Result<()> {
    mount(
        Path::new("efivarfs"),
        target,
        "efivarfs",
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )
}

/// Whether `target` is a mount point (its device differs from its parent's).
pub fn is_mount_point(target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(target), target.parent().map(fs::metadata)) {
        (Ok(t), Some(Ok(p))) => t.dev() != p.dev(),
        _ => false,
    }
}

/// Mounts `dev` read-write on `target` unless something is mounted there already (cairnd
/// restarted).
pub fn mount_rw_once(dev: &Path, target: &Path, fstype: &str) -> Result<(), String> {
    if is_mount_point(target) {
        return Ok(());
    }
    // ext4 without delayed allocation: a file's blocks are allocated as it is written, so the
    // journal commit that any fsync forces (containerd's database after it unpacked a layer)
    // writes the data first. With delayed allocation, a power cut within half a minute of an
    // unpack left committed snapshots holding empty files.
    let data = (fstype == "ext4").then_some("nodelalloc");
    if fstype == "vfat" {
        repair_fat(dev);
    }
    mount_with(
        dev,
        target,
        fstype,
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data,
    )
    .map_err(|e| {
        format!(
            "mounting {} ({fstype}) on {}: {e}",
            dev.display(),
            target.display()
        )
    })
}

/// A FAT32 volume the power went off under while it was mounted read-write (Linux's dirty mark)
/// is put in order before it is mounted again (`cairn_boot::fat32`); otherwise the kernel turns
/// it read-only at the first damaged file it meets and every later write fails. Found on a plain
/// STATE by the power-cut harness. A clean volume is only read (one sector).
fn repair_fat(dev: &Path) {
    match cairn_boot::fat32::repair_device(dev) {
        Ok(None) => {}
        Ok(Some(done)) => crate::log::log(format_args!(
            "{} was being written when the power went; {done}",
            dev.display()
        )),
        Err(e) => crate::log::log(format_args!(
            "{}: not checked after a power cut: {e}",
            dev.display()
        )),
    }
}

/// The file system `dev` holds, as mount(2) names it: ext4 (what Cairn makes on STATE and DATA)
/// or vfat (the image's plain STATE, and volumes older releases made), told apart by their
/// on-disk signatures, so nothing is tried (and no kernel complaint printed) in vain.
pub fn fs_type(dev: &Path) -> Result<&'static str, String> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(dev).map_err(|e| format!("opening {}: {e}", dev.display()))?;
    if cairn_ext4::probe(&f).map_err(|e| format!("reading {}: {e}", dev.display()))? {
        return Ok("ext4");
    }
    let mut boot = [0u8; 512];
    f.read_exact_at(&mut boot, 0)
        .map_err(|e| format!("reading {}: {e}", dev.display()))?;
    // FAT12/16 name their type at 0x36, FAT32 at 0x52; both end the boot sector with 55 AA.
    let fat =
        boot[510..] == [0x55, 0xAA] && (&boot[0x36..0x39] == b"FAT" || &boot[0x52..0x55] == b"FAT");
    if fat {
        return Ok("vfat");
    }
    Err(format!("{} holds neither ext4 nor FAT", dev.display()))
}

/// Mounts `dev` read-write (no devices, setuid or exec) on `target` with the file system it
/// holds ([`fs_type`]), unless something is mounted there already; returns the type.
pub fn mount_rw_found(dev: &Path, target: &Path) -> Result<&'static str, String> {
    let fstype = fs_type(dev)?;
    mount_rw_once(dev, target, fstype)?;
    Ok(fstype)
}

/// Mounts `dev` read-only, without devices, setuid or exec, trying FAT then ext4; returns the
/// type that worked.
pub fn mount_ro_private(dev: &Path, target: &Path) -> Result<&'static str, String> {
    fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    if is_mount_point(target) {
        unmount(target).map_err(|e| format!("unmounting a stale {}: {e}", target.display()))?;
    }
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mut errors = Vec::new();
    for fstype in ["vfat", "ext4"] {
        match mount(dev, target, fstype, flags) {
            Ok(()) => return Ok(fstype),
            Err(e) => errors.push(format!("{fstype}: {e}")),
        }
    }
    Err(format!(
        "{} holds no FAT or ext4 filesystem ({})",
        dev.display(),
        errors.join(", ")
    ))
}

pub fn unmount(target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(t.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Flushes the file system `path` is on to its disk (`syncfs`).
pub fn sync_fs(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path)?;
    // SAFETY: `f` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bind-mounts `source` on `target` unless `target` is a mount point already (cairnd
/// restarted); with `exec`, the new mount allows executing programs and set-id bits though
/// the filesystem under it is mounted `noexec,nosuid` (container runtimes keep their images'
/// programs on DATA). Devices stay refused either way.
pub fn bind_once(source: &Path, target: &Path, exec: bool) -> Result<(), String> {
    if is_mount_point(target) {
        return Ok(());
    }
    let what = || format!("bind-mounting {} on {}", source.display(), target.display());
    mount(source, target, "", libc::MS_BIND).map_err(|e| format!("{}: {e}", what()))?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV;
    if !exec {
        flags |= libc::MS_NOEXEC | libc::MS_NOSUID;
    }
    mount(Path::new("none"), target, "", flags).map_err(|e| format!("{}: {e}", what()))
}

/// Whether the file system holding `path` is FAT (vfat).
pub fn is_fat(path: &Path) -> bool {
    const MSDOS_SUPER_MAGIC: i64 = 0x4d44;
    let Ok(p) = cstr(path) else {
        return false;
    };
    // SAFETY: statfs is plain data, written by the kernel; `p` outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is a NUL-terminated path and `st` a valid statfs to fill.
    if unsafe { libc::statfs(p.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == MSDOS_SUPER_MAGIC
}

/// Mounts a tmpfs (mode 0711, programs allowed, no devices) on `target` unless something is
/// mounted there already.
pub fn tmpfs_once(target: &Path) -> Result<(), String> {
    if is_mount_point(target) {
        return Ok(());
    }
    let (src, dst) = (
        cstr(Path::new("tmpfs")).map_err(|e| e.to_string())?,
        cstr(target).map_err(|e| e.to_string())?,
    );
    let data = CString::new("mode=0711").map_err(|e| e.to_string())?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "mounting a tmpfs on {}: {}",
            target.display(),
            io::Error::last_os_error()
        ))
    }
}

/// Remounts the filesystem on `target` read-only or read-write.
pub fn remount(target: &Path, read_only: bool) -> io::Result<()> {
    let mut flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(Path::new("none"), target, "", flags)
}

/// Waits until `path` exists (a device node devtmpfs has yet to make), up to `timeout`;
/// returns whether it does.
pub fn wait_for_path(path: &Path, timeout: std::time::Duration) -> bool {
    let until = std::time::Instant::now() + timeout;
    while !path.exists() {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/class/block: vda (vda1 ESP, vda2 STATE) and sda without partitions.
    fn sysfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("devices");
        let class = dir.path().join("class");
        fs::create_dir_all(&class).unwrap();
        for (disk, parts) in [
            ("vda", vec![("vda1", "ESP"), ("vda2", "STATE")]),
            ("sda", vec![]),
        ] {
            let d = devices.join(disk);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("uevent"), format!("DEVNAME={disk}\nDEVTYPE=disk\n")).unwrap();
            std::os::unix::fs::symlink(&d, class.join(disk)).unwrap();
            for (i, (p, label)) in parts.iter().enumerate() {
                let pd = d.join(p);
                fs::create_dir_all(&pd).unwrap();
                fs::write(pd.join("partition"), format!("{}\n", i + 1)).unwrap();
                fs::write(
                    pd.join("uevent"),
                    format!("DEVNAME={p}\nDEVTYPE=partition\nPARTNAME={label}\n"),
                )
                .unwrap();
                std::os::unix::fs::symlink(&pd, class.join(p)).unwrap();
            }
        }
        dir
    }

    #[test]
    fn finds_partitions_and_their_disks() {
        let dir = sysfs();
        let class = dir.path().join("class");
        assert_eq!(
            find_partition_in(&class, "STATE").unwrap(),
            PathBuf::from("/dev/vda2")
        );
        assert_eq!(
            find_partition_in(&class, "ROOT-A").unwrap_err(),
            "no partition labelled ROOT-A"
        );
        assert_eq!(disk_of_name_in(&class, "vda2"), "vda");
        assert_eq!(disk_of_name_in(&class, "sda"), "sda");
    }

    /// What cairnd mounts is told by signature: its own ext4, a FAT that dosfstools made (as
    /// the image's STATE seed and older releases' volumes are), and nothing on a blank one.
    #[test]
    fn file_systems_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let ext4 = dir.path().join("ext4");
        let f = fs::File::create(&ext4).unwrap();
        f.set_len(16 << 20).unwrap();
        let f = fs::File::options()
            .read(true)
            .write(true)
            .open(&ext4)
            .unwrap();
        cairn_ext4::format_all(&f, &cairn_ext4::Options::default()).unwrap();
        assert_eq!(fs_type(&ext4), Ok("ext4"));

        let blank = dir.path().join("blank");
        fs::File::create(&blank).unwrap().set_len(4 << 20).unwrap();
        let e = fs_type(&blank).unwrap_err();
        assert!(e.ends_with("blank holds neither ext4 nor FAT"), "{e}");

        let fat = dir.path().join("fat");
        fs::File::create(&fat).unwrap().set_len(64 << 20).unwrap();
        let Ok(out) = std::process::Command::new("mkfs.fat").arg(&fat).output() else {
            println!("skipped the FAT case: no mkfs.fat (apt-get install dosfstools)");
            return;
        };
        assert!(out.status.success());
        assert_eq!(fs_type(&fat), Ok("vfat"));
    }
}
