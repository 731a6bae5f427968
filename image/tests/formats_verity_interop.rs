//! Checks our dm-verity hash trees against cryptsetup's veritysetup: it must verify our tree,
//! read our superblock back (UUID, salt, block count), and, formatting the same data with the
//! same salt and UUID itself, produce the same root hash and a byte-identical hash area. A
//! flipped data byte must make its verification fail.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_image::formats::verity::{append_hash_tree, verify, VerityParams};
use cairn_image::formats::FormatError;

mod common;

const BLOCK: u64 = 4096;

/// The peer tool is a hard requirement: if it is missing the test fails rather than skipping.
fn veritysetup() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join("veritysetup");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("veritysetup not found; it comes from Debian package cryptsetup-bin, which `cargo xtask setup` installs");
}

fn run(args: &[&str]) -> Output {
    Command::new(veritysetup())
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap()
}

fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "veritysetup {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of a `Key:   value` line of veritysetup's output.
fn field<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key:?} line in veritysetup output:\n{output}"))
        .trim()
}

struct Case {
    name: &'static str,
    data_blocks: u64,
    /// Blocks between the data's end and the hash area; veritysetup leaves them unprotected.
    gap_blocks: u64,
    salt: Vec<u8>,
}

fn check(dir: &Path, case: &Case) {
    let name = case.name;
    let data_bytes = (case.data_blocks + case.gap_blocks) * BLOCK;
    let data = common::pseudo_random(data_bytes as usize, case.data_blocks as u32);
    let ours = dir.join(format!("{name}.ours"));
    fs::write(&ours, &data).unwrap();
    let params = VerityParams {
        data_blocks: case.data_blocks,
        salt: case.salt.clone(),
        uuid: VerityParams::derive_uuid(b"interop", name),
    };
    let tree = {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ours)
            .unwrap();
        append_hash_tree(&mut file, data_bytes, &params).unwrap()
    };
    assert_eq!(tree.hash_offset, data_bytes);
    assert_eq!(
        fs::metadata(&ours).unwrap().len(),
        data_bytes + tree.hash_size
    );
    let ours_str = ours.to_str().unwrap();
    let offset_arg = format!("--hash-offset={}", tree.hash_offset);
    let root = tree.root_hash_hex();

    // (1) veritysetup accepts our tree. Its debug log names the hash start block it computed,
    // which must be the one our kernel table passes.
    let log = run_ok(&["verify", "--debug", ours_str, ours_str, &root, &offset_arg]);
    let their_start = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("# Hash verification sha256, ")?
                .rsplit_once(", offset ")
        })
        .and_then(|(_, n)| n.strip_suffix('.'))
        .unwrap_or_else(|| panic!("{name}: no hash offset in veritysetup's debug log:\n{log}"));
    let table = tree.kernel_table_args("/dev/vda3", "/dev/vda3");
    let table: Vec<&str> = table.split(' ').collect();
    assert_eq!(table[6], their_start, "{name}: hash_start_block");
    assert_eq!(table[5], case.data_blocks.to_string(), "{name}");
    assert_eq!(table[8], root, "{name}");
    assert_eq!(table[9], tree.salt_arg(), "{name}");

    // (2) It reads our superblock as we meant it.
    let dump = run_ok(&["dump", ours_str, &offset_arg]);
    assert_eq!(field(&dump, "UUID"), tree.uuid_text(), "{name}");
    assert_eq!(field(&dump, "Salt"), tree.salt_arg(), "{name}");
    assert_eq!(
        field(&dump, "Data blocks"),
        case.data_blocks.to_string(),
        "{name}"
    );
    assert_eq!(field(&dump, "Hash type"), "1", "{name}");
    assert_eq!(field(&dump, "Hash algorithm"), "sha256", "{name}");
    assert_eq!(field(&dump, "Data block size"), "4096", "{name}");
    assert_eq!(field(&dump, "Hash block size"), "4096", "{name}");
    assert_eq!(
        field(&dump, "Hash blocks"),
        (tree.hash_size / BLOCK - 1).to_string(),
        "{name}: tree blocks after the superblock"
    );

    // (3) veritysetup's own tree over the same data is the same, byte for byte.
    let theirs = dir.join(format!("{name}.theirs"));
    fs::write(&theirs, &data).unwrap();
    let theirs_str = theirs.to_str().unwrap();
    let formatted = run_ok(&[
        "format",
        theirs_str,
        theirs_str,
        &offset_arg,
        &format!("--data-blocks={}", case.data_blocks),
        "--hash=sha256",
        "--data-block-size=4096",
        "--hash-block-size=4096",
        "--format=1",
        &format!("--uuid={}", tree.uuid_text()),
        &format!("--salt={}", tree.salt_arg()),
    ]);
    assert_eq!(field(&formatted, "Root hash"), root, "{name}");
    let mut their_bytes = fs::read(&theirs).unwrap();
    // veritysetup writes only the 512-byte superblock into its 4096-byte block; on a fresh file
    // the rest reads as zeros, which is what we write explicitly.
    their_bytes.resize(
        their_bytes
            .len()
            .max((tree.hash_offset + tree.hash_size) as usize),
        0,
    );
    let our_bytes = fs::read(&ours).unwrap();
    assert_eq!(our_bytes.len(), their_bytes.len(), "{name}");
    if let Some(at) = (0..our_bytes.len()).find(|&i| our_bytes[i] != their_bytes[i]) {
        panic!("{name}: our file differs from veritysetup's first at byte {at}");
    }

    // (4) One flipped data byte makes verification fail, for veritysetup and for us.
    let flip_block = case.data_blocks / 2;
    let flip_at = flip_block * BLOCK + 123;
    let mut damaged = our_bytes;
    damaged[flip_at as usize] ^= 0x01;
    fs::write(&ours, &damaged).unwrap();
    let out = run(&["verify", ours_str, ours_str, &root, &offset_arg]);
    assert!(
        !out.status.success(),
        "{name}: veritysetup verified data with a flipped byte at {flip_at}"
    );
    match verify(&mut File::open(&ours).unwrap(), &tree).unwrap_err() {
        FormatError::VerityDataBlock { block, .. } => assert_eq!(block, flip_block, "{name}"),
        other => panic!("{name}: unexpected error {other}"),
    }
}

fn cases() -> Vec<Case> {
    let salt32 = common::pseudo_random(32, 99);
    vec![
        Case {
            name: "one-block",
            data_blocks: 1,
            gap_blocks: 0,
            salt: salt32.clone(),
        },
        Case {
            name: "one-full-hash-block",
            data_blocks: 128,
            gap_blocks: 0,
            salt: Vec::new(),
        },
        Case {
            name: "two-levels",
            data_blocks: 129,
            gap_blocks: 3,
            salt: vec![0xa5; 256],
        },
        Case {
            name: "five-mib",
            data_blocks: 5 * 256 + 7,
            gap_blocks: 0,
            salt: salt32,
        },
    ]
}

#[test]
fn veritysetup_agrees_with_our_hash_trees() {
    let dir = tempfile::tempdir().unwrap();
    for case in cases() {
        check(dir.path(), &case);
    }
}
