//! What `cairnctl bundle create --from <image dir>` puts into a bundle: slot A's parts of a built
//! image, read back from its disk.img.
//!
//! | payload | role | from |
//! |---|---|---|
//! | `boot.json` | boot-files | slot A's root hash, hash offset and command line in image.json |
//! | `rootfs` | rootfs | ROOT-A: the squashfs and its dm-verity tree (`hash_offset + hash_size` bytes), then the containers extension if the image has one (up to its `offset + size`) |
//! | `uki-a.efi`, `uki-b.efi` | uki | the image folder's `uki-a.efi` and `uki-b.efi`, written by the build beside disk.img, signed if the image is |
//!
//! Slot A's root works in either slot: dm-verity checks the root hash, not the partition. The
//! two UKIs both carry slot A's root hash and offset and differ only in `cairn.slot=` on their
//! command line (which the signature covers, so the device cannot write it): the installer takes
//! the one for the slot it fills.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use cairn_bundle::{PayloadSource, Role};
use cairn_facts::bootspec::{self, BootSpec};
use cairn_facts::layout::{cmdline, uki_payload, ROOTFS};
use serde_json::Value;

/// Chunk size of the rootfs payload: large chunks keep the installer's writes large.
pub const ROOTFS_CHUNK: u32 = 4 * 1024 * 1024;
const BOOT_CHUNK: u32 = 1024 * 1024;

/// The release facts and payload files of an image, ready for `cairn_bundle::create`.
#[derive(Debug, Clone)]
pub struct BundleInput {
    pub board: String,
    pub arch: String,
    pub version: String,
    pub security_version: u32,
    pub payloads: Vec<PayloadSource>,
}

/// Extracts the payloads of the image in `image_dir` into `work` (which must exist).
pub fn bundle_input(image_dir: &Path, work: &Path) -> Result<BundleInput, String> {
    let json_path = image_dir.join("image.json");
    let text = std::fs::read_to_string(&json_path)
        .map_err(|e| format!("reading {}: {e}", json_path.display()))?;
    let m: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", json_path.display()))?;
    let field = |v: &Value, key: &str| -> Result<String, String> {
        v[key]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{} lacks {key:?}", json_path.display()))
    };
    let number = |v: &Value, key: &str| -> Result<u64, String> {
        v[key]
            .as_u64()
            .ok_or_else(|| format!("{} lacks {key:?}", json_path.display()))
    };
    if m["format"].as_u64() != Some(2) {
        return Err(format!(
            "{} is not an image.json of format 2 (rebuild the image with this cairnctl)",
            json_path.display()
        ));
    }
    let kind = field(&m["boot"], "kind")?;
    if kind != "systemd-boot" {
        return Err(format!(
            "bundles for {kind} boards are not supported yet (systemd-boot boards only)"
        ));
    }
    let disk = image_dir.join(field(&m["disk"], "file")?);
    let slot = m["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot"] == "a"))
        .ok_or_else(|| format!("{} has no slot a", json_path.display()))?;
    let root_label = field(slot, "root_partition")?;
    let part = m["partitions"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["label"] == root_label.as_str()))
        .ok_or_else(|| format!("{} has no partition {root_label}", json_path.display()))?;
    let hash_offset = number(slot, "hash_offset")?;
    // The slot's bytes: the root and its tree, then the containers extension when there is one
    // (its place and root hash travel in boot.json's options, from the command line).
    let root_len = match slot.get("extension").filter(|e| !e.is_null()) {
        Some(ext) => number(ext, "offset")? + number(ext, "size")?,
        None => hash_offset + number(slot, "hash_size")?,
    };
    if root_len > number(part, "size")? {
        return Err(format!("{root_label} is smaller than its recorded root"));
    }

    // rootfs: a byte range of disk.img.
    let rootfs = work.join(ROOTFS);
    let mut src = File::open(&disk).map_err(|e| format!("opening {}: {e}", disk.display()))?;
    src.seek(SeekFrom::Start(number(part, "offset")?))
        .map_err(|e| format!("reading {}: {e}", disk.display()))?;
    let mut out =
        File::create(&rootfs).map_err(|e| format!("creating {}: {e}", rootfs.display()))?;
    let copied = std::io::copy(&mut src.take(root_len), &mut out)
        .map_err(|e| format!("copying {root_label} out of {}: {e}", disk.display()))?;
    if copied != root_len {
        return Err(format!("{} ends inside {root_label}", disk.display()));
    }

    // The update UKIs the build wrote beside disk.img: both boot slot A's root.
    if !image_dir.join(uki_payload("a")).is_file() {
        return Err(format!(
            "{} has no {} (an image of the layout before UKIs): rebuild it with this cairnctl",
            image_dir.display(),
            uki_payload("a")
        ));
    }
    let mut ukis = Vec::new();
    for name in ["a", "b"] {
        let payload = uki_payload(name);
        let from = image_dir.join(&payload);
        let out = work.join(&payload);
        std::fs::copy(&from, &out).map_err(|e| format!("copying {}: {e}", from.display()))?;
        ukis.push((payload, out));
    }
    // boot.json: the command line minus the slot's own words.
    let options = field(slot, "cmdline")?
        .split(' ')
        .filter(|w| !cmdline::is_slot_word(w))
        .map(str::to_string)
        .collect();
    let spec = BootSpec {
        format: 1,
        roothash: field(slot, "roothash")?,
        hash_offset,
        options,
    };
    let spec_path = work.join(bootspec::PAYLOAD_NAME);
    std::fs::write(&spec_path, spec.to_json())
        .map_err(|e| format!("writing {}: {e}", spec_path.display()))?;

    let source = |name: &str, role, path, chunk_size| PayloadSource {
        name: name.to_string(),
        role,
        path,
        chunk_size,
    };
    Ok(BundleInput {
        board: field(&m, "board")?,
        arch: field(&m, "arch")?,
        version: field(&m, "version")?,
        security_version: number(&m, "security_version")? as u32,
        payloads: [
            source(bootspec::PAYLOAD_NAME, Role::BootFiles, spec_path, 65536),
            source(ROOTFS, Role::Rootfs, rootfs, ROOTFS_CHUNK),
        ]
        .into_iter()
        .chain(
            ukis.into_iter()
                .map(|(name, path)| source(&name, Role::Uki, path, BOOT_CHUNK)),
        )
        .collect(),
    })
}
