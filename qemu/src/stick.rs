//! The QMP messages that plug a removable disk (a "USB stick") into a running machine and take
//! it out again, as pure functions of the board and the stick's id.
//!
//! A stick is two QEMU objects with the same id: a read-only block node over the raw image file
//! (`blockdev-add`) and the device the guest sees (`device_add`). The device kind comes from the
//! board: a `usb-storage` device on the USB bus, or a `virtio-blk-pci` disk in an empty PCIe root
//! port for kernels without USB storage. Taking it out is `device_del`, then, once QEMU reports
//! `DEVICE_DELETED`, `blockdev-del`.

use std::path::Path;

use cairn_board::RemovableDisk;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// QEMU keeps node names in 32 bytes including the NUL; the node name is the id plus
/// [`NODE_SUFFIX`].
const MAX_ID_LEN: usize = 31 - NODE_SUFFIX.len();
const NODE_SUFFIX: &str = "-img";

/// How much the guest has read from a stick, from QEMU's block statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StickReads {
    /// Read requests the guest completed.
    pub operations: u64,
    pub bytes: u64,
}

/// Checks that `id` can name both a QEMU device and a block node: a letter, then letters,
/// digits, `-` and `_`.
pub(crate) fn check_id(id: &str) -> Result<()> {
    let bad = |reason: &'static str| {
        Err(Error::StickId {
            id: id.to_string(),
            reason,
        })
    };
    if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return bad("it must start with a letter");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad("only letters, digits, `-` and `_` are allowed");
    }
    if id.len() > MAX_ID_LEN {
        return bad("it is longer than 27 characters");
    }
    Ok(())
}

/// The block node's name for stick `id`.
pub(crate) fn node_name(id: &str) -> String {
    format!("{id}{NODE_SUFFIX}")
}

/// `blockdev-add` arguments: the raw image `path` (absolute), read-only.
pub(crate) fn blockdev_add(id: &str, path: &Path) -> Value {
    json!({
        "driver": "raw",
        "node-name": node_name(id),
        "read-only": true,
        "file": {
            "driver": "file",
            "filename": path.to_string_lossy(),
            "read-only": true,
        },
    })
}

/// `device_add` arguments for the board's kind of removable disk.
pub(crate) fn device_add(removable: RemovableDisk, id: &str) -> Value {
    match removable {
        // `removable` sets the SCSI RMB bit, as on a real stick ("Attached SCSI removable disk").
        RemovableDisk::UsbStorage { bus } => json!({
            "driver": "usb-storage",
            "id": id,
            "bus": bus,
            "drive": node_name(id),
            "removable": true,
        }),
        RemovableDisk::VirtioBlkHotplug { root_port } => json!({
            "driver": "virtio-blk-pci",
            "id": id,
            "bus": root_port,
            "drive": node_name(id),
        }),
    }
}

/// Whether a QMP event is QEMU's confirmation that device `id` is gone.
pub(crate) fn is_deleted(event: &Value, id: &str) -> bool {
    event["event"] == "DEVICE_DELETED" && event["data"]["device"] == id
}

/// Whether a refused `device_del` only means "not yet": QEMU's PCIe slot refuses an unplug
/// while the guest is still powering the slot on or off (`Hot-unplug failed: guest is busy
/// (power indicator blinking)`).
pub(crate) fn is_busy(desc: &str) -> bool {
    desc.contains("guest is busy")
}

/// The read statistics of stick `id` in a `query-blockstats` reply, if it is there.
pub(crate) fn reads(blockstats: &Value, id: &str) -> Option<StickReads> {
    let node = node_name(id);
    let entry = blockstats
        .as_array()?
        .iter()
        .find(|e| e["node-name"] == node.as_str())?;
    let stats = &entry["stats"];
    Some(StickReads {
        operations: stats["rd_operations"].as_u64()?,
        bytes: stats["rd_bytes"].as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blinking_slot_is_busy_and_other_refusals_are_not() {
        assert!(is_busy(
            "Hot-unplug failed: guest is busy (power indicator blinking)"
        ));
        assert!(!is_busy("Device 'stick0' not found"));
        assert!(!is_busy("Bus 'hotplug0' does not support hotplugging"));
    }

    #[test]
    fn ids_name_devices_and_nodes() {
        for good in [
            "stick0",
            "s",
            "update-stick_2",
            "a23456789012345678901234567",
        ] {
            check_id(good).unwrap();
        }
        for bad in [
            "",
            "0stick",
            "-s",
            "st ick",
            "st,ick",
            "st.ick",
            "a234567890123456789012345678",
        ] {
            let err = check_id(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(node_name("a23456789012345678901234567").len() <= 31);
    }

    #[test]
    fn usb_stick_messages() {
        let usb = RemovableDisk::UsbStorage { bus: "xhci.0" };
        assert_eq!(
            blockdev_add("stick0", Path::new("/tmp/a,b.img")),
            json!({"driver": "raw", "node-name": "stick0-img", "read-only": true,
                   "file": {"driver": "file", "filename": "/tmp/a,b.img", "read-only": true}})
        );
        assert_eq!(
            device_add(usb, "stick0"),
            json!({"driver": "usb-storage", "id": "stick0", "bus": "xhci.0",
                   "drive": "stick0-img", "removable": true})
        );
    }

    #[test]
    fn hotplug_disk_messages() {
        let pcie = RemovableDisk::VirtioBlkHotplug {
            root_port: "hotplug0",
        };
        assert_eq!(
            device_add(pcie, "stick0"),
            json!({"driver": "virtio-blk-pci", "id": "stick0", "bus": "hotplug0",
                   "drive": "stick0-img"})
        );
    }

    #[test]
    fn recognises_deletion_and_reads() {
        let child = json!({"event": "DEVICE_DELETED",
                           "data": {"path": "/machine/peripheral/stick0/virtio-backend"}});
        let device = json!({"event": "DEVICE_DELETED",
                            "data": {"device": "stick0", "path": "/machine/peripheral/stick0"}});
        assert!(!is_deleted(&child, "stick0"));
        assert!(is_deleted(&device, "stick0"));
        assert!(!is_deleted(&device, "stick1"));

        let stats = json!([
            {"device": "", "node-name": "disk0-fmt", "stats": {"rd_operations": 900, "rd_bytes": 1}},
            {"device": "", "qdev": "/machine/peripheral/stick0/virtio-backend",
             "node-name": "stick0-img", "stats": {"rd_operations": 3, "rd_bytes": 12288}},
        ]);
        assert_eq!(
            reads(&stats, "stick0"),
            Some(StickReads {
                operations: 3,
                bytes: 12288
            })
        );
        assert_eq!(reads(&stats, "stick1"), None);
    }
}
