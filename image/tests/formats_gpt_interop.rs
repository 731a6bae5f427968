//! Checks our GPT against GPT fdisk's verifier (`sgdisk -v`) and util-linux's reader
//! (`sfdisk --json`): two independent implementations must see no problems and exactly the
//! labels, sizes, type GUIDs and partition GUIDs we wrote.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_image::formats::gpt::{self, GptPartition};
use cairn_image::formats::guid::Guid;

mod common;
use common::tool;

const MIB: u64 = 1024 * 1024;
const DISK_BYTES: u64 = 64 * MIB;

fn run(tool: &Path, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .expect("run peer tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{text}",
        tool.display(),
        out.status
    );
    text
}

fn partitions() -> Vec<GptPartition> {
    let sizes: Vec<(String, u64)> = [
        ("ESP", 8 * MIB),
        ("ROOT-A", 16 * MIB),
        ("ROOT-B", 16 * MIB),
        ("STATE", 4 * MIB),
        ("DATA", 17 * MIB),
    ]
    .into_iter()
    .map(|(l, s)| (l.to_string(), s))
    .collect();
    let root_type = Guid::parse("B921B045-1DF0-41C3-AF44-4C6F280D3FAE").unwrap();
    gpt::layout(DISK_BYTES, &sizes)
        .unwrap()
        .into_iter()
        .zip(sizes)
        .map(|((first_lba, last_lba), (label, _))| GptPartition {
            type_guid: match label.as_str() {
                "ESP" => Guid::EFI_SYSTEM,
                "ROOT-A" | "ROOT-B" => root_type,
                _ => Guid::LINUX_DATA,
            },
            part_guid: Guid::derive(b"interop", &label),
            attributes: if label == "ROOT-A" { 1 << 48 } else { 0 },
            label,
            first_lba,
            last_lba,
        })
        .collect()
}

fn disk(dir: &Path) -> (PathBuf, File) {
    let path = dir.join("disk.img");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(DISK_BYTES).unwrap();
    gpt::write(
        &mut file,
        DISK_BYTES,
        Guid::derive(b"interop", "disk"),
        &partitions(),
    )
    .unwrap();
    (path, file)
}

/// sgdisk prints "No problems found" even after silently falling back to the backup, so a
/// clean verdict also needs the absence of its cautions and warnings.
fn sgdisk_is_clean(out: &str) -> bool {
    let lower = out.to_lowercase();
    out.contains("No problems found")
        && !["caution", "corrupt", "warning", "problem:"]
            .iter()
            .any(|w| lower.contains(w))
}

#[test]
fn sgdisk_verifies_without_problems() {
    let sgdisk = tool("sgdisk", "gdisk");
    let dir = tempfile::tempdir().unwrap();
    let (path, _file) = disk(dir.path());
    let out = run(&sgdisk, &["-v", path.to_str().unwrap()]);
    assert!(sgdisk_is_clean(&out), "sgdisk -v:\n{out}");
}

#[test]
fn sgdisk_notices_a_corrupt_primary_header() {
    // Proves the previous test could fail: the same verifier on a damaged copy complains.
    let sgdisk = tool("sgdisk", "gdisk");
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = disk(dir.path());
    file.write_all_at(&[0xFF], 512 + 60).unwrap();
    let out = Command::new(&sgdisk)
        .args(["-v", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !sgdisk_is_clean(&text),
        "sgdisk -v accepted a bad header CRC:\n{text}"
    );
}

#[test]
fn sfdisk_reads_back_what_we_wrote() {
    let sfdisk = tool("sfdisk", "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let (path, _file) = disk(dir.path());
    let json = run(&sfdisk, &["--json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let table = &v["partitiontable"];
    assert_eq!(table["label"], "gpt");
    assert_eq!(table["id"], Guid::derive(b"interop", "disk").to_string());
    assert_eq!(table["sectorsize"], 512);
    assert_eq!(table["firstlba"], 34);
    assert_eq!(table["lastlba"], DISK_BYTES / 512 - 34);
    let seen = table["partitions"].as_array().unwrap();
    let expected = partitions();
    assert_eq!(seen.len(), expected.len());
    for (s, e) in seen.iter().zip(&expected) {
        assert_eq!(s["name"], e.label.as_str());
        assert_eq!(s["start"], e.first_lba, "{}", e.label);
        assert_eq!(s["size"], e.last_lba - e.first_lba + 1, "{}", e.label);
        assert_eq!(s["type"], e.type_guid.to_string(), "{}", e.label);
        assert_eq!(s["uuid"], e.part_guid.to_string(), "{}", e.label);
        assert_eq!(
            s["start"].as_u64().unwrap() % 2048,
            0,
            "{} is 1 MiB aligned",
            e.label
        );
    }
    assert_eq!(seen[1]["attrs"], "GUID:48", "ROOT-A attribute bit 48");
}

#[test]
fn our_reader_agrees_after_sfdisk_rewrites_the_table() {
    // sfdisk writes its own GPT from a dump of ours; reading that back checks our parser
    // against a writer that is not ours.
    let sfdisk = tool("sfdisk", "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let (path, _file) = disk(dir.path());
    let dump = run(&sfdisk, &["--dump", path.to_str().unwrap()]);
    let copy = dir.path().join("copy.img");
    File::create(&copy).unwrap().set_len(DISK_BYTES).unwrap();
    let mut child = Command::new(&sfdisk)
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            copy.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dump.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy)
        .unwrap();
    let table = gpt::read(&mut f).unwrap();
    assert_eq!(table.disk_guid, Guid::derive(b"interop", "disk"));
    assert_eq!(table.partitions, partitions());
}
