//! Raw images like a freshly formatted USB stick: a GPT with one FAT32 partition holding files.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use cairn_image::formats::guid::Guid;
use cairn_image::formats::region::Region;
use cairn_image::formats::tree::Tree;
use cairn_image::formats::{fat, gpt};

/// GPT type of a FAT data partition ("Microsoft basic data"), what sticks formatted on any
/// desktop carry.
const BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
const MIB: u64 = 1 << 20;
/// FAT32 needs about 33 MiB for its minimum cluster count; leave room for the files' clusters.
const MIN_FAT_BYTES: u64 = 40 * MIB;

/// A file to put on a stick: its name at the root and where its bytes come from.
pub enum StickFile {
    Bytes(&'static str, Vec<u8>),
    Copy(&'static str, PathBuf),
}

/// Writes the stick image `path` (must not exist): GPT, one FAT32 partition labelled `label`
/// holding `files`, sized to fit them.
pub fn make_stick(path: &Path, label: &str, files: Vec<StickFile>) {
    let seed = b"cairn-systest-stick";
    let mut tree = Tree::new();
    let mut content = 0;
    for f in files {
        match f {
            StickFile::Bytes(name, bytes) => {
                content += bytes.len() as u64;
                tree.add_file(name, 0o644, bytes).unwrap();
            }
            StickFile::Copy(name, from) => {
                content += std::fs::metadata(&from).unwrap().len();
                tree.add_file(name, 0o644, from).unwrap();
            }
        }
    }
    let part_size = (MIN_FAT_BYTES + content * 11 / 10).div_ceil(MIB) * MIB;
    let disk_size = part_size + 2 * MIB;
    let mut file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    file.set_len(disk_size).unwrap();
    let (first, last) = gpt::layout(disk_size, &[(label.to_string(), part_size)]).unwrap()[0];
    let part = gpt::GptPartition {
        label: label.to_string(),
        type_guid: BASIC_DATA.parse().unwrap(),
        part_guid: Guid::derive(seed, "partition"),
        first_lba: first,
        last_lba: last,
        attributes: 0,
    };
    gpt::write(&mut file, disk_size, Guid::derive(seed, "disk"), &[part]).unwrap();
    let (offset, len) = (first * 512, (last + 1 - first) * 512);
    fat::write_fat32(
        Region::new(&mut file, label, offset, len),
        len,
        0x5717_c4a1,
        label,
        &tree,
    )
    .unwrap();
    file.sync_all().unwrap();
}
