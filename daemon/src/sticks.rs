//! The USB watcher: waits for block devices (kernel uevents), mounts each new one read-only in
//! a private place, and installs the newest `*.cairn` bundle at its root through the update
//! capability; then the machine reboots into the trial. Sticks already there when it starts
//! (plugged in before power-on: the kernel found them before anyone listened) are looked at
//! first, from sysfs ([`present`]), and again if the kernel ever drops events. OCI archives in
//! the stick's `containers/` folder are copied onto DATA first ([`containers::take_archives`]).
//!
//! A stick left in across reboots must not install the same thing again, nor a version whose
//! trial already failed ([`skip_reason`]).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_bundle::Version;
use cairn_updater::state::{Outcome, TrialRecord};

use crate::heartbeat::Heartbeat;
use crate::log::say;
use crate::system;
use crate::update::{ProgressReporter, Updates};
use crate::{block, containers, uevent};
use cairn_facts::containers::ARCHIVE_DIR;

const STICK_MOUNT: &str = "/run/cairn/stick";
/// How long a new device's node may take to appear under /dev.
const NODE_WAIT: Duration = Duration::from_secs(5);
/// Most `*.cairn` files looked at on one stick.
const MAX_BUNDLES: usize = 64;

/// Watches for sticks until one installs a bundle, then reboots into its trial.
pub fn watch(updates: &Updates, heart: &Heartbeat) -> Result<(), String> {
    let mut events = uevent::UeventSocket::open().map_err(|e| format!("uevent socket: {e}"))?;
    let boot_disk = block::find_partition("STATE")
        .ok()
        .and_then(|p| block::disk_of(&p));
    say!("waiting for update bundles on USB sticks and hot-plugged disks");
    // A stick plugged in before power-on, or while the system booted, sent its events before
    // anyone listened: look at what is there now, and again whenever the kernel had to drop
    // events. The box's own internal disks, there from the start, are left alone.
    let sys = Path::new(SYS_CLASS_BLOCK);
    let fixed = fixed_disks(sys);
    let mut rescan = true;
    loop {
        heart.beat();
        if std::mem::take(&mut rescan) {
            for dev in present(sys, boot_disk.as_deref(), &fixed) {
                take(updates, &dev);
            }
        }
        let event = match events.recv(Some(Duration::from_secs(5))) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(crate::error::Error::UeventOverflow) => {
                say!("reading uevents: the kernel dropped some; looking at the disks again");
                rescan = true;
                continue;
            }
            Err(e) => {
                say!("reading uevents: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if event.action != uevent::Action::Add || event.subsystem.as_deref() != Some("block") {
            continue;
        }
        let Some(dev) = event.devname.clone() else {
            continue;
        };
        let disk = block::disk_of_name(&dev);
        if boot_disk.as_deref() == Some(disk.as_str()) {
            continue;
        }
        if event.devtype.as_deref() == Some("disk")
            && uevent::block_partitions_of(sys, &dev).is_ok_and(|p| !p.is_empty())
        {
            continue; // its partitions arrive as their own events
        }
        take(updates, &dev);
    }
}

/// Installs from `/dev/<dev>` ([`install_from`]) and reboots into the trial when it did; a
/// problem is one line.
fn take(updates: &Updates, dev: &str) {
    match install_from(updates, dev) {
        Ok(true) => system::reboot(),
        Ok(false) => {}
        Err(e) => say!("{e}"),
    }
}

/// Where the kernel lists block devices.
const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// The disks under `sys_class_block` (by kernel name) that are a device's own: not removable,
/// not on a USB bus, and not virtual (loop, ram and device-mapper devices have no `device`
/// link). Read when cairnd starts: such a disk that is there from the start is the box's
/// (its boot disk, a second internal disk), never a stick. One that arrives later is a
/// hot-plugged disk and is looked at like a stick.
pub fn fixed_disks(sys_class_block: &Path) -> Vec<String> {
    disks(sys_class_block)
        .into_iter()
        .filter(|name| {
            let entry = sys_class_block.join(name);
            let removable =
                fs::read_to_string(entry.join("removable")).is_ok_and(|t| t.trim() == "1");
            let on_usb = fs::canonicalize(&entry).is_ok_and(|p| {
                p.components()
                    .any(|c| c.as_os_str().to_string_lossy().starts_with("usb"))
            });
            !removable && !on_usb
        })
        .collect()
}

/// The whole disks under `sys_class_block` with a device behind them, sorted by name.
fn disks(sys_class_block: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            let entry = sys_class_block.join(name);
            !entry.join("partition").exists() && entry.join("device").exists()
        })
        .collect();
    out.sort();
    out
}

/// The stick volumes present under `sys_class_block`: the partitions (or the whole disk, when
/// it has no partition table) of every disk other than `boot_disk` and the `fixed` ones.
pub fn present(sys_class_block: &Path, boot_disk: Option<&str>, fixed: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for disk in disks(sys_class_block) {
        if Some(disk.as_str()) == boot_disk || fixed.contains(&disk) {
            continue;
        }
        match uevent::block_partitions_of(sys_class_block, &disk) {
            Ok(parts) if !parts.is_empty() => out.extend(parts.into_iter().map(|p| p.name)),
            _ => out.push(disk),
        }
    }
    out
}

/// Mounts `/dev/<dev>` read-only and installs its newest bundle; true when installed.
fn install_from(updates: &Updates, dev: &str) -> Result<bool, String> {
    let path = PathBuf::from("/dev").join(dev);
    // The kernel's event can come before devtmpfs has the node (seen with USB sticks under
    // QEMU: the mount failed with ENOENT and the stick was never looked at again). Without it
    // the mount below says so.
    block::wait_for_path(&path, NODE_WAIT);
    let mount = Path::new(STICK_MOUNT);
    let fstype = block::mount_ro_private(&path, mount)?;
    say!(
        "{} ({fstype}) mounted read-only on {STICK_MOUNT}",
        path.display()
    );
    // Container images first: an update that runs them finds them on DATA.
    if block::is_mount_point(Path::new("/var")) {
        containers::take_archives(mount, Path::new(ARCHIVE_DIR));
    } else if mount.join("containers").is_dir() {
        say!("containers/ on the stick not copied: DATA is not mounted on /var (the console said why at boot)");
    }
    let result = install_newest(updates, mount);
    if let Err(e) = block::unmount(mount) {
        say!("unmounting {STICK_MOUNT}: {e}");
    }
    result
}

fn install_newest(updates: &Updates, dir: &Path) -> Result<bool, String> {
    let Some((bundle, version)) = newest_bundle(dir, &mut |path, why| {
        updates.refused(&path.display().to_string(), why)
    })?
    else {
        say!("no *.cairn bundle at the root of the stick");
        return Ok(false);
    };
    let installed_version = updates.running_version()?;
    // A stick left in across reboots must not install the same thing over and over.
    if let Some(why) = skip_reason(&version, &installed_version, updates.last_record()) {
        say!("{} not installed: {why}", bundle.display());
        return Ok(false);
    }
    say!("installing {} (version {version})", bundle.display());
    let file = fs::File::open(&bundle).map_err(|e| format!("opening {}: {e}", bundle.display()))?;
    let len = file.metadata().map(|m| m.len()).ok();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut reporter = ProgressReporter::default();
    let result = updates
        .install(&bundle.display().to_string(), &mut reader, len, &mut |p| {
            reporter.report(p)
        })
        .map_err(|e| e.message)?;
    say!(
        "installed version {} into slot {} ({} bytes); rebooting into the trial",
        result.version,
        result.slot,
        result.bytes
    );
    Ok(true)
}

/// Why a stick's newest bundle is not installed: its version is the one running, or it is the
/// version whose trial failed last time (a stick left in would otherwise loop: install, fail,
/// roll back, install).
pub fn skip_reason(
    bundle: &Version,
    running: &Version,
    last: Option<TrialRecord>,
) -> Option<String> {
    if bundle == running {
        return Some(format!("version {bundle} is already running"));
    }
    let last = last?;
    let failed = matches!(last.outcome, Outcome::RolledBack | Outcome::Abandoned);
    if failed && Version::parse(&last.version).is_ok_and(|v| v == *bundle) {
        return Some(format!(
            "version {bundle} failed its trial before ({}); bring a different version",
            last.reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    None
}

/// The `*.cairn` file at the root of `dir` with the highest manifest version (unverified: only
/// to choose; the install verifies). Files that are not readable bundles are reported as refused
/// (printed, and handed to `refused` with the reason) and skipped.
pub fn newest_bundle(
    dir: &Path,
    refused: &mut dyn FnMut(&Path, &str),
) -> Result<Option<(PathBuf, Version)>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    let mut best: Option<(PathBuf, Version)> = None;
    let mut looked = 0;
    for entry in entries.flatten().take(4096) {
        let path = entry.path();
        let is_bundle = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("cairn"))
            && entry.file_type().is_ok_and(|t| t.is_file());
        if !is_bundle {
            continue;
        }
        looked += 1;
        if looked > MAX_BUNDLES {
            say!(
                "more than {MAX_BUNDLES} bundles on the stick: looking at the first {MAX_BUNDLES}"
            );
            break;
        }
        let version = match fs::File::open(&path)
            .map_err(cairn_bundle::Error::from_io)
            .and_then(|f| cairn_bundle::inspect(std::io::BufReader::new(f).take(8 << 20)))
        {
            Ok((m, _)) => m.version,
            Err(e) => {
                say!("{} refused: {e}", path.display());
                refused(&path, &e.to_string());
                continue;
            }
        };
        let newer = match &best {
            None => true,
            Some((p, v)) => version > *v || (version == *v && path > *p),
        };
        if newer {
            best = Some((path, version));
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs of block devices as the kernel lays it out: each `class/block/<name>` a link into
    /// `devices/…/block/<disk>[/<partition>]`.
    fn fake_sysfs(root: &Path) -> PathBuf {
        let class = root.join("class/block");
        fs::create_dir_all(&class).unwrap();
        // (device path, disk, removable, has a `device` link, partitions)
        let disks: [(&str, &str, &str, bool, &[&str]); 6] = [
            ("pci0/virtio1", "vda", "0", true, &["vda1", "vda2"]),
            (
                "pci0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0",
                "sda",
                "0",
                true,
                &["sda1"],
            ),
            ("pci0/virtio2", "vdb", "0", true, &[]),
            ("pci0/mmc0/mmc0:0001", "mmcblk1", "1", true, &[]),
            ("virtual", "loop0", "0", false, &[]),
            (
                "pci0/usb2/2-1/2-1:1.0/host1/target1:0:0/1:0:0:0",
                "sdb",
                "1",
                true,
                &["sdb1", "sdb2"],
            ),
        ];
        for (path, disk, removable, device, parts) in disks {
            let dir = root.join("devices").join(path).join("block").join(disk);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("removable"), format!("{removable}\n")).unwrap();
            if device {
                fs::create_dir_all(dir.join("device")).unwrap();
            }
            std::os::unix::fs::symlink(&dir, class.join(disk)).unwrap();
            for (n, part) in parts.iter().enumerate() {
                fs::create_dir_all(dir.join(part)).unwrap();
                fs::write(dir.join(part).join("partition"), format!("{}\n", n + 1)).unwrap();
                std::os::unix::fs::symlink(dir.join(part), class.join(part)).unwrap();
            }
        }
        class
    }

    #[test]
    fn sticks_present_are_the_partitions_of_disks_that_are_not_the_boxs_own() {
        let tmp = tempfile::tempdir().unwrap();
        let class = fake_sysfs(tmp.path());
        // The boot disk, an internal disk, and a loop device are left alone; a USB disk that
        // says it is not removable is still a stick; a removable card without a partition
        // table is taken whole.
        let fixed = fixed_disks(&class);
        assert_eq!(fixed, ["vda", "vdb"]);
        assert_eq!(
            present(&class, Some("vda"), &fixed),
            ["mmcblk1", "sda1", "sdb1", "sdb2"]
        );
        // A disk that was not there at the start (hot-plugged while events were dropped) is
        // looked at too.
        assert_eq!(
            present(&class, Some("vda"), &["vda".to_string()]),
            ["mmcblk1", "sda1", "sdb1", "sdb2", "vdb"]
        );
        assert_eq!(
            present(&tmp.path().join("nothing"), Some("vda"), &[]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_running_version_and_a_failed_one_are_not_installed_again() {
        let v = |t: &str| Version::parse(t).unwrap();
        let record = |outcome| TrialRecord {
            slot: "b".into(),
            version: "0.3.0".into(),
            security_version: 0,
            outcome,
            reason: Some("probe failed".into()),
        };
        assert!(skip_reason(&v("0.2.0"), &v("0.2.0"), None)
            .unwrap()
            .contains("already running"));
        assert_eq!(skip_reason(&v("0.3.0"), &v("0.2.0"), None), None);
        assert!(
            skip_reason(&v("0.3.0"), &v("0.2.0"), Some(record(Outcome::RolledBack)))
                .unwrap()
                .contains("failed its trial before (probe failed)")
        );
        assert!(skip_reason(&v("0.3.0"), &v("0.2.0"), Some(record(Outcome::Abandoned))).is_some());
        assert_eq!(
            skip_reason(&v("0.3.0"), &v("0.2.0"), Some(record(Outcome::Committed))),
            None
        );
        // An install a power cut stopped before its trial: never booted, so not held against it.
        assert_eq!(
            skip_reason(&v("0.3.0"), &v("0.2.0"), Some(record(Outcome::Interrupted))),
            None
        );
        assert_eq!(
            skip_reason(&v("0.4.0"), &v("0.2.0"), Some(record(Outcome::RolledBack))),
            None
        );
    }

    #[test]
    fn newest_bundle_goes_by_manifest_version() {
        let dir = tempfile::tempdir().unwrap();
        let key = cairn_bundle::SecretKey::from_bytes([3; 32]);
        let payload = dir.path().join("p");
        fs::write(&payload, b"x").unwrap();
        let make = |name: &str, version: &str| {
            let mut out = fs::File::create(dir.path().join(name)).unwrap();
            cairn_bundle::create(
                &mut out,
                &cairn_bundle::ManifestMeta {
                    compatible: vec!["b".into()],
                    arch: "x86_64".into(),
                    version: Version::parse(version).unwrap(),
                    security_version: 0,
                    min_installed_version: Version::new(0, 0, 0),
                    created: 0,
                },
                &[cairn_bundle::PayloadSource {
                    name: "p".into(),
                    role: cairn_bundle::Role::Rootfs,
                    path: payload.clone(),
                    chunk_size: 65536,
                }],
                &key,
            )
            .unwrap();
        };
        make("a.cairn", "0.10.0");
        make("b.cairn", "0.9.0");
        fs::write(dir.path().join("c.cairn"), b"garbage").unwrap();
        fs::write(dir.path().join("d.txt"), b"x").unwrap();
        let mut refused = Vec::new();
        let (path, v) = newest_bundle(dir.path(), &mut |p, why| {
            refused.push((p.file_name().unwrap().to_owned(), why.to_string()))
        })
        .unwrap()
        .unwrap();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "c.cairn");
        assert!(refused[0].1.contains("truncated"), "{refused:?}");
        assert_eq!(
            (
                path.file_name().unwrap().to_str().unwrap(),
                v.to_string().as_str()
            ),
            ("a.cairn", "0.10.0")
        );
        fs::remove_file(dir.path().join("a.cairn")).unwrap();
        fs::remove_file(dir.path().join("b.cairn")).unwrap();
        assert_eq!(newest_bundle(dir.path(), &mut |_, _| {}).unwrap(), None);
    }
}
