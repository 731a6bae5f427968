//! What the GPT fuzz target feeds `cairn-image`, and the seed corpus it starts from.
//!
//! `gpt`: the input is a whole disk (protective MBR, both GPT copies, whatever lies between),
//! written to a scratch file and read by [`gpt::read`], the reader the Raspberry Pi firmware
//! stand-in uses on an SD card image. Checked: a refusal is one line of bounded length; an
//! accepted table describes only partitions inside the disk's usable range, comes from the
//! backup copy only when the primary is refused on its own, and reads the same way twice.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cairn_image::formats::gpt::{self, GptPartition, SECTOR_BYTES};
use cairn_image::formats::guid::Guid;

/// Longest refusal accepted: one line an operator can read.
pub const MAX_REFUSAL: usize = 1024;

/// The scratch file each input is written to, one per process, unlinked as soon as it is
/// created so that no run leaves it behind.
fn scratch() -> &'static Mutex<File> {
    static FILE: OnceLock<Mutex<File>> = OnceLock::new();
    FILE.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("cairn-fuzz-gpt-{}.img", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("creating the scratch disk");
        std::fs::remove_file(&path).expect("unlinking the scratch disk");
        Mutex::new(file)
    })
}

/// Reads `disk` as a GPT disk; panics (a finding) on a broken promise.
pub fn check_disk(disk: &[u8]) {
    let mut file = scratch().lock().unwrap_or_else(|e| e.into_inner());
    file.set_len(0)
        .and_then(|()| file.write_all_at(disk, 0))
        .expect("writing the scratch disk");
    let file = &mut *file;
    let first = gpt::read(file);
    let again = gpt::read(file);
    let sectors = disk.len() as u64 / SECTOR_BYTES;
    match first {
        Err(e) => {
            let text = e.to_string();
            assert!(
                !text.chars().any(char::is_control),
                "not one line: {text:?}"
            );
            assert!(text.len() <= MAX_REFUSAL, "a {}-byte refusal", text.len());
            assert_eq!(again.map_err(|e| e.to_string()), Err(text));
        }
        Ok(table) => {
            assert_eq!(again.as_ref().ok(), Some(&table), "read differently twice");
            assert!(table.first_usable_lba <= table.last_usable_lba);
            assert!(table.last_usable_lba < sectors);
            for p in &table.partitions {
                assert!(!p.type_guid.is_nil());
                assert!(table.first_usable_lba <= p.first_lba && p.first_lba <= p.last_lba);
                assert!(p.last_lba <= table.last_usable_lba);
                assert!(p.label.encode_utf16().count() <= gpt::MAX_LABEL_UNITS);
            }
        }
    }
}

/// A 64 KiB disk with a Cairn image's partitions, 12 sectors each.
fn cairn_disk() -> Vec<u8> {
    const SECTORS: u64 = 128;
    let path = std::env::temp_dir().join(format!("cairn-gpt-seed-{}.img", std::process::id()));
    let mut file = File::create(&path).expect("creating a seed disk");
    let labels = ["ESP", "ROOT-A", "ROOT-B", "STATE", "DATA"];
    let parts: Vec<GptPartition> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| GptPartition {
            label: (*label).into(),
            type_guid: if i == 0 {
                Guid::EFI_SYSTEM
            } else {
                Guid::LINUX_DATA
            },
            part_guid: Guid::from_u128(0x1000 + i as u128),
            first_lba: 34 + 12 * i as u64,
            last_lba: 45 + 12 * i as u64,
            attributes: 0,
        })
        .collect();
    gpt::write(
        &mut file,
        SECTORS * SECTOR_BYTES,
        Guid::from_u128(0xca1e),
        &parts,
    )
    .expect("writing a seed disk");
    drop(file);
    let out = std::fs::read(&path).expect("reading a seed disk");
    std::fs::remove_file(&path).expect("removing a seed disk");
    out
}

/// The seed corpus, as (target, file name, bytes); libFuzzer takes its largest input size
/// from them.
pub fn seeds() -> Vec<crate::Seed> {
    let good = cairn_disk();
    let mut primary_torn = good.clone();
    primary_torn[512 + 40] ^= 1;
    vec![
        ("gpt", "cairn.img".into(), good),
        ("gpt", "primary-torn.img".into(), primary_torn),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass_the_oracle() {
        for (_, _, bytes) in seeds() {
            check_disk(&bytes);
        }
    }
}
