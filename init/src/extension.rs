//! The containers extension: a second read-only image in the slot's root partition, after the
//! root's hash tree (docs/boot-slots.md), overlaid on the root before the switch.
//!
//! Stage 1, with the verified root mounted on `/newroot`: a `linear` device-mapper device
//! `ext-<slot>-data` maps the partition from `cairn.ext.offset` on (verity's data starts at
//! sector 0 of its device); a `verity` device `ext-<slot>` over it checks every block against
//! `cairn.ext.roothash`; its squashfs is mounted read-only on `/run/cairn/extension` (it moves
//! with `/run` into the new root); and an overlayfs with the extension above the root
//! (`lowerdir=/run/cairn/extension:/newroot`, no upper layer, so read-only) is mounted on
//! `/newroot`, so `/usr/bin/containerd` and its dynamic loader resolve in the running system.
//!
//! Nothing here is fatal: a missing, corrupt or unmountable extension is one console line and the
//! boot goes on without it (the containers capability then reports it missing). Unlike the root,
//! a corrupted block found later reads as an I/O error for the program that reads it, rather
//! than restarting the machine.

use std::path::Path;

use cairn_dm::{Flags, Target};

use crate::cmdline::{ExtVerity, Slot};
use crate::error::{chain, Error, Result};
use crate::log::Logger;
use crate::mounts::ensure_dir;
use crate::partition::Partition;
use crate::paths::{self, limits, read_limited, Paths};
use crate::sys::{Mount, MountFlags, Syscalls};
use crate::verity::{self, SysControl};

/// Where the extension's squashfs is mounted (below `/run`, so it moves into the new root).
pub const MOUNT_POINT: &str = "run/cairn/extension";

const SECTOR: u64 = 512;

/// Device-mapper names of the extension's devices.
pub fn dm_names(slot: Slot) -> (&'static str, &'static str) {
    match slot {
        Slot::A => ("ext-a-data", "ext-a"),
        Slot::B => ("ext-b-data", "ext-b"),
    }
}

/// A mounted extension, for the console line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    pub data_blocks: u64,
}

/// The console line of a mounted extension.
pub fn mounted_line(m: &Mounted, ext: &ExtVerity) -> String {
    format!(
        "containers extension mounted, {} MiB, verity {}",
        (m.data_blocks * verity::BLOCK_SIZE).div_ceil(1024 * 1024),
        &ext.verity.root_hash.to_string()[..12]
    )
}

/// Sets up and overlays the extension on `newroot` (the mounted root). Returns what it
/// mounted; on failure the devices it made are removed again and the root is as it was.
pub fn mount(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    partition: &Partition,
    slot: Slot,
    ext: &ExtVerity,
    newroot: &Path,
) -> Result<Mounted> {
    let (linear_name, verity_name) = dm_names(slot);
    let part_dev = verity::partition_dev(paths, partition)?;
    let size_path = partition.sysfs_dev(paths).with_file_name("size");
    let size_text = read_limited(&size_path, limits::SYSFS_ATTR)?;
    let sectors: u64 = size_text
        .trim()
        .parse()
        .map_err(|_| Error::BadPartitionSize {
            path: size_path.clone(),
            value: size_text.chars().take(40).collect(),
        })?;
    let start = ext.offset / SECTOR;
    if start >= sectors {
        return Err(Error::ExtensionOutside {
            offset: ext.offset,
            partition_bytes: sectors * SECTOR,
        });
    }
    let control_path = paths.at(paths::DEV_MAPPER_CONTROL);
    let control = SysControl {
        sys,
        path: &control_path,
    };
    let params = format!("{part_dev} {start}");
    let target = Target {
        sector_start: 0,
        length: sectors - start,
        target_type: "linear",
        params: &params,
    };
    let linear = cairn_dm::activate(&control, linear_name, Flags::READONLY, &[target])
        .map_err(|f| f.error)?;
    let linear_node = linear.node(&paths.at("dev"));
    let undo_linear = || {
        if let Err(e) = cairn_dm::remove(&control, linear_name) {
            log.warn(format_args!(
                "could not remove the device {linear_name}: {}",
                chain(&e)
            ));
        }
    };
    let verified = verity::wait_for_node(
        sys,
        &linear_node,
        "devtmpfs did not create the node of the new device",
    )
    .and_then(|()| {
        verity::open_on(
            sys,
            log,
            paths,
            (&linear_node, linear.dev),
            verity_name,
            &ext.verity,
            false,
        )
    });
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            undo_linear();
            return Err(e);
        }
    };
    let undo = || {
        if let Err(e) = cairn_dm::remove(&control, verity_name) {
            log.warn(format_args!(
                "could not remove the device {verity_name}: {}",
                chain(&e)
            ));
        }
        undo_linear();
    };
    let mount_point = paths.at(MOUNT_POINT);
    if let Err(e) = mount_layers(sys, &verified.node, &mount_point, newroot) {
        undo();
        return Err(e);
    }
    Ok(Mounted {
        data_blocks: verified.data_blocks,
    })
}

/// The extension's squashfs on `mount_point`, then the overlay of it and the root on `newroot`.
fn mount_layers(
    sys: &dyn Syscalls,
    device: &Path,
    mount_point: &Path,
    newroot: &Path,
) -> Result<()> {
    if let Some(parent) = mount_point.parent() {
        ensure_dir(sys, parent)?;
    }
    ensure_dir(sys, mount_point)?;
    let dev = device.to_string_lossy();
    let flags = MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID;
    sys.mount(&Mount {
        source: &dev,
        target: mount_point,
        fstype: "squashfs",
        flags,
        data: "",
    })
    .map_err(|source| Error::Mount {
        fstype: "squashfs".into(),
        source_name: dev.to_string(),
        target: mount_point.to_owned(),
        source,
    })?;
    let data = overlay_options(mount_point, newroot);
    let mounted = sys.mount(&Mount {
        source: "overlay",
        target: newroot,
        fstype: "overlay",
        flags,
        data: &data,
    });
    if let Err(source) = mounted {
        let _ = sys.umount(mount_point, crate::sys::Umount::Detach);
        return Err(Error::Mount {
            fstype: "overlay".into(),
            source_name: data,
            target: newroot.to_owned(),
            source,
        });
    }
    Ok(())
}

/// The overlay's options: the extension above the root, no upper layer (read-only).
pub fn overlay_options(extension: &Path, root: &Path) -> String {
    format!("lowerdir={}:{}", extension.display(), root.display())
}

/// Stage 1's part: mounts the extension if the command line names one, and says in one line
/// what happened. Never fails the boot.
pub fn mount_or_warn(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    partition: &Partition,
    slot: Slot,
    ext: Option<std::result::Result<ExtVerity, String>>,
    newroot: &Path,
) {
    match ext {
        None => log.info(format_args!("no containers extension in this slot")),
        Some(Err(why)) => log.warn(format_args!(
            "containers extension not mounted: {why}; booting without it"
        )),
        Some(Ok(ext)) => match mount(sys, log, paths, partition, slot, &ext, newroot) {
            Ok(m) => log.info(format_args!("{}", mounted_line(&m, &ext))),
            Err(e) => log.warn(format_args!(
                "containers extension not mounted: {}; booting without it",
                chain(&e)
            )),
        },
    }
}
