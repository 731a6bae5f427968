//! Bundles a device must refuse: signed by a key it does not trust, for another board or
//! architecture, below the security floor, cut short or with bytes after the end,
//! too big for the slot, without a root filesystem, with a 4 GiB envelope length, one that is not a bundle at all, and one
//! whose payload was changed after signing.

use std::fs;

use cairn_bundle::{create, ManifestMeta, PayloadSource, Role, SecretKey};
use cairn_facts::bootspec::BootSpec;
use semver::Version;

/// The device the bundles are made for (tests/corpus.rs lays it out).
pub const BOARD: &str = "qemu-x86_64";
pub const ARCH: &str = "x86_64";
/// Size of each root partition of the test device.
pub const ROOT_SIZE: u64 = 64 * 1024;
const CHUNK: u32 = 64 * 1024;

/// The key the test device trusts.
pub fn device_key() -> SecretKey {
    SecretKey::from_bytes([0x5a; 32])
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed as usize * 7) % 251) as u8)
        .collect()
}

struct Release {
    meta: ManifestMeta,
    rootfs: Vec<u8>,
    with_rootfs: bool,
    key: SecretKey,
}

impl Release {
    fn good() -> Release {
        Release {
            meta: ManifestMeta {
                compatible: vec![BOARD.into()],
                arch: ARCH.into(),
                version: Version::new(1, 1, 0),
                security_version: 2,
                min_installed_version: Version::new(1, 0, 0),
                created: 1_780_000_000,
            },
            rootfs: data(8192, 1),
            with_rootfs: true,
            key: device_key(),
        }
    }

    fn bundle(&self) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let spec = BootSpec {
            format: 1,
            roothash: "5a".repeat(32),
            hash_offset: 4096,
            options: vec!["console=ttyS0".into()],
        }
        .to_json();
        let mut files: Vec<(&str, Role, Vec<u8>)> = vec![
            ("boot.json", Role::BootFiles, spec.into_bytes()),
            ("uki-a.efi", Role::Uki, data(1500, 2)),
            ("uki-b.efi", Role::Uki, data(700, 3)),
        ];
        if self.with_rootfs {
            files.insert(1, ("rootfs", Role::Rootfs, self.rootfs.clone()));
        }
        let sources: Vec<PayloadSource> = files
            .iter()
            .map(|(name, role, bytes)| {
                let path = dir.path().join(name);
                fs::write(&path, bytes).expect("writing a payload");
                PayloadSource {
                    name: name.to_string(),
                    role: *role,
                    path,
                    chunk_size: CHUNK,
                }
            })
            .collect();
        let mut out = Vec::new();
        create(&mut out, &self.meta, &sources, &self.key).expect("a bundle");
        out
    }
}

/// A bundle the test device accepts: what the hostile ones are changed from.
pub fn good() -> Vec<u8> {
    Release::good().bundle()
}

pub fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let good = Release::good().bundle();
    let with = |change: &dyn Fn(&mut Release)| {
        let mut r = Release::good();
        change(&mut r);
        r.bundle()
    };
    let mut out: Vec<(&str, Vec<u8>, &'static str)> = vec![
        (
            "untrusted-key.cairn",
            with(&|r| r.key = SecretKey::from_bytes([0x77; 32])),
            "does not trust",
        ),
        (
            "other-board.cairn",
            with(&|r| r.meta.compatible = vec!["rpi4".into()]),
            "rpi4",
        ),
        (
            "other-arch.cairn",
            with(&|r| r.meta.arch = "aarch64".into()),
            "aarch64",
        ),
        (
            "below-security-floor.cairn",
            with(&|r| r.meta.security_version = 0),
            "security",
        ),
        (
            "needs-newer-installed.cairn",
            with(&|r| r.meta.min_installed_version = Version::new(1, 0, 5)),
            "1.0.5",
        ),
        (
            "rootfs-too-big.cairn",
            with(&|r| r.rootfs = data(ROOT_SIZE as usize + 4096, 1)),
            "ROOT-B",
        ),
        (
            "no-rootfs.cairn",
            with(&|r| r.with_rootfs = false),
            "rootfs",
        ),
        (
            "truncated.cairn",
            good[..good.len() - 100].to_vec(),
            "truncated",
        ),
        (
            "trailing-byte.cairn",
            [&good[..], &[0]].concat(),
            "unexpected bytes after",
        ),
        (
            "not-a-bundle.cairn",
            b"#!/bin/sh\nrm -rf /\n".to_vec(),
            "not a Cairn bundle",
        ),
        (
            "envelope-length-4gib.cairn",
            {
                let mut b = good.clone();
                b[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
                b
            },
            "manifest length",
        ),
    ];
    // The rootfs payload with one byte changed after signing: found by the chunk hash. The
    // manifest is good, so the install has begun: the other slot is marked not bootable and its
    // record cleared before payloads stream in (docs/updates.md); the running slot, its boot
    // entry and DATA must stay as they were.
    let mut tampered = good.clone();
    let at = tampered
        .windows(64)
        .position(|w| w == &Release::good().rootfs[..64])
        .expect("the rootfs payload is in the bundle");
    tampered[at + 5000] ^= 1;
    out.push((
        "rootfs-tampered.cairn",
        tampered,
        "[releases B] does not match its hash",
    ));
    out.into_iter()
        .map(|(n, b, e)| (n.to_string(), b, e))
        .collect()
}
