//! Installs into a device laid out in a temp dir (ESP folder, ROOT-A/B files), through the real
//! bundle writer and the real systemd-boot backend: a good bundle and each refusal.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cairn_boot::fs::DirFs;
use cairn_boot::sdboot::{self, SdBoot};
use cairn_boot::{Bootloader, Slot};
use cairn_bundle::{create, DeviceFacts, Keyring, ManifestMeta, PayloadSource, Role, SecretKey};
use cairn_updater::bootspec::BootSpec;
use cairn_updater::install::{Installer, Layout, Phase, Progress};
use cairn_updater::state::{Outcome, SlotRecord, SlotSource, StateDir};
use semver::Version;

const ROOT_SIZE: u64 = 4 * 1024 * 1024;
const CHUNK: u32 = 64 * 1024;

fn key() -> SecretKey {
    SecretKey::from_bytes([7; 32])
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed as usize * 7) % 253) as u8)
        .collect()
}

struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    /// A device on slot A of version 1.0.0: both UKIs good, A preferred.
    fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp");
        fs::create_dir_all(esp.join(sdboot::UKI_DIR)).unwrap();
        for (slot, name) in sdboot::initial_uki_names() {
            fs::write(
                esp.join(sdboot::UKI_DIR).join(name),
                format!("old uki {slot}"),
            )
            .unwrap();
            fs::write(
                dir.path().join(format!("root-{slot}")),
                vec![0xee; ROOT_SIZE as usize],
            )
            .unwrap();
        }
        fs::create_dir_all(esp.join("loader")).unwrap();
        fs::write(esp.join(sdboot::LOADER_CONF_PATH), sdboot::loader_conf()).unwrap();
        fs::create_dir_all(dir.path().join("state")).unwrap();
        Device { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn installer<'a>(&self, keyring: &'a Keyring) -> Installer<'a> {
        Installer {
            keyring,
            device: DeviceFacts {
                board: "qemu-aarch64".into(),
                arch: "aarch64".into(),
                installed_version: Version::new(1, 0, 0),
                security_floor: 0,
            },
            running: Slot::A,
            layout: Layout {
                roots: [self.path("root-a"), self.path("root-b")],
                esp: self.path("esp"),
            },
            state: StateDir::new(self.path("state")),
            tries: 2,
        }
    }

    /// Every file under the device dir with its contents.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path("esp").join(sdboot::UKI_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

struct Release {
    rootfs: Vec<u8>,
    uki_a: Vec<u8>,
    uki_b: Vec<u8>,
    spec: BootSpec,
    meta: ManifestMeta,
}

impl Release {
    fn new() -> Release {
        Release {
            rootfs: data(3 * 1024 * 1024 + 4096, 1),
            uki_a: data(200_000, 2),
            uki_b: data(200_001, 3),
            spec: BootSpec {
                format: 1,
                roothash: "5a".repeat(32),
                hash_offset: 3 * 1024 * 1024,
                options: vec!["console=ttyAMA0".into(), "quiet".into()],
            },
            meta: ManifestMeta {
                compatible: vec!["qemu-aarch64".into()],
                arch: "aarch64".into(),
                version: Version::new(1, 1, 0),
                security_version: 2,
                min_installed_version: Version::new(1, 0, 0),
                created: 1_760_000_000,
            },
        }
    }

    fn bundle(&self, key: &SecretKey) -> Vec<u8> {
        let spec = self.spec.to_json();
        self.bundle_of(
            key,
            &[
                ("boot.json", Role::BootFiles, spec.as_bytes()),
                ("rootfs", Role::Rootfs, &self.rootfs),
                ("uki-a.efi", Role::Uki, &self.uki_a),
                ("uki-b.efi", Role::Uki, &self.uki_b),
            ],
        )
    }

    fn bundle_of(&self, key: &SecretKey, files: &[(&str, Role, &[u8])]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let sources: Vec<PayloadSource> = files
            .iter()
            .map(|(name, role, bytes)| {
                let path = dir.path().join(name);
                fs::write(&path, bytes).unwrap();
                PayloadSource {
                    name: name.to_string(),
                    role: *role,
                    path,
                    chunk_size: CHUNK,
                }
            })
            .collect();
        let mut out = Vec::new();
        create(&mut out, &self.meta, &sources, key).unwrap();
        out
    }
}

fn keyring() -> Keyring {
    Keyring::from_keys([key().public()]).unwrap()
}

#[test]
fn a_good_bundle_fills_the_other_slot_and_arms_a_trial() {
    let dev = Device::new();
    let rel = Release::new();
    let ring = keyring();
    let mut seen: Vec<Progress> = Vec::new();
    let done = dev
        .installer(&ring)
        .install(&rel.bundle(&key())[..], None, &mut |p| seen.push(p.clone()))
        .unwrap();
    assert_eq!(
        (done.slot, done.version.as_str(), done.security_version),
        (Slot::B, "1.1.0", 2)
    );

    let root = fs::read(dev.path("root-b")).unwrap();
    assert_eq!(&root[..rel.rootfs.len()], &rel.rootfs[..]);
    assert_eq!(root.len() as u64, ROOT_SIZE, "the partition keeps its size");
    assert_eq!(
        fs::read(dev.path("root-a")).unwrap(),
        vec![0xee; ROOT_SIZE as usize]
    );
    // B's own UKI, renamed into place and counted; A's untouched; A's copy in the bundle
    // (whose command line names slot a) written nowhere.
    assert_eq!(dev.entries(), ["cairn-1-a.efi", "cairn-3-b+2-0.efi"]);
    assert_eq!(
        fs::read(dev.path("esp/EFI/Linux/cairn-3-b+2-0.efi")).unwrap(),
        rel.uki_b
    );
    assert_eq!(
        fs::read(dev.path("esp/EFI/Linux/cairn-1-a.efi")).unwrap(),
        b"old uki a"
    );
    let mut boot = SdBoot::new(DirFs::new(dev.path("esp")), Some(Slot::A));
    let status = boot.status().unwrap();
    assert_eq!(status.next, Some(Slot::B));
    assert_eq!(status.slot(Slot::B).tries_left, Some(2));

    let trial = StateDir::new(dev.path("state")).trial().unwrap().unwrap();
    assert_eq!(
        (trial.slot.as_str(), trial.outcome),
        ("b", Outcome::Installed)
    );
    let record = StateDir::new(dev.path("state"))
        .slot(Slot::B)
        .unwrap()
        .unwrap();
    assert_eq!(record.version, trial.version);
    assert_eq!(record.source, SlotSource::Bundle);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now - 600_000..=now).contains(&record.installed_unix_ms),
        "{record:?}"
    );
    assert_eq!(
        StateDir::new(dev.path("state")).slot(Slot::A).unwrap(),
        None
    );

    // Progress: verifying, then writing each payload with growing byte counts, then arming.
    assert_eq!(seen.first().unwrap().phase, Phase::Verifying);
    assert_eq!(seen.last().unwrap().phase, Phase::Arming);
    let total = seen.last().unwrap().total;
    assert_eq!(seen.last().unwrap().done, total);
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert!(seen
        .iter()
        .any(|p| p.phase == Phase::Writing && p.payload == "rootfs"));
}

/// Installs `bundle` and expects `want` in the error, with the device exactly as before.
fn refused(dev: &Device, ring: &Keyring, bundle: &[u8], want: &str) {
    let before = dev.snapshot();
    let err = dev
        .installer(ring)
        .install(bundle, Some(bundle.len() as u64), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains(want), "{err:?} does not say {want:?}");
    assert!(!err.contains('\n'), "one line: {err:?}");
    assert!(
        dev.snapshot() == before,
        "refusing {want:?} changed the device"
    );
}

#[test]
fn refusals_change_nothing() {
    let dev = Device::new();
    let rel = Release::new();
    let ring = keyring();
    let good = rel.bundle(&key());

    let mut bad_sig = good.clone();
    let sig_at = 16 + 40; // inside the signed manifest
    bad_sig[sig_at] ^= 1;
    refused(&dev, &ring, &bad_sig, "signature");
    refused(
        &dev,
        &ring,
        &rel.bundle(&SecretKey::from_bytes([9; 32])),
        "does not trust",
    );
    refused(&dev, &ring, &good[..good.len() / 2], "truncated");
    refused(
        &dev,
        &ring,
        b"PK\x03\x04 this is a zip file, not a bundle",
        "not a Cairn bundle",
    );
    refused(&dev, &ring, &[], "truncated");

    let mut other_board = Release::new();
    other_board.meta.compatible = vec!["rpi4".into()];
    refused(&dev, &ring, &other_board.bundle(&key()), "rpi4");

    let mut old = Release::new();
    old.meta.security_version = 1;
    fs::write(dev.path("state/security-floor"), "2\n").unwrap();
    refused(&dev, &ring, &old.bundle(&key()), "security");
    fs::remove_file(dev.path("state/security-floor")).unwrap();

    let mut huge = Release::new();
    huge.rootfs = data(ROOT_SIZE as usize + 4096, 4);
    huge.spec.hash_offset = ROOT_SIZE;
    refused(&dev, &ring, &huge.bundle(&key()), "holds only");

    // The layout before UKIs (a separate kernel and initramfs), and a UKI for one slot only.
    let spec = rel.spec.to_json();
    let old_layout = rel.bundle_of(
        &key(),
        &[
            ("boot.json", Role::BootFiles, spec.as_bytes()),
            ("rootfs", Role::Rootfs, &rel.rootfs),
            ("vmlinuz", Role::Kernel, &rel.uki_a),
            ("initramfs.img", Role::Initramfs, &rel.uki_b),
        ],
    );
    refused(&dev, &ring, &old_layout, "not a separate kernel payload");
    let one_uki = rel.bundle_of(
        &key(),
        &[
            ("boot.json", Role::BootFiles, spec.as_bytes()),
            ("rootfs", Role::Rootfs, &rel.rootfs),
            ("uki-b.efi", Role::Uki, &rel.uki_b),
        ],
    );
    refused(&dev, &ring, &one_uki, "needs exactly the uki payloads");

    // The running slot on trial: no install until it is committed.
    let mut boot = SdBoot::new(DirFs::new(dev.path("esp")), None);
    boot.set_trial(Slot::A, 3).unwrap();
    refused(&dev, &ring, &good, "slot a is on trial");
}

#[test]
fn a_flipped_payload_byte_leaves_the_target_unbootable_and_the_running_slot_alone() {
    let dev = Device::new();
    let rel = Release::new();
    let ring = keyring();
    let mut bundle = rel.bundle(&key());
    // The last byte of the rootfs payload: found only after most of it was written.
    let (m, _) = cairn_bundle::inspect(&bundle[..]).unwrap();
    let boot_len = m.payloads[0].size as usize;
    let header_and_manifest = bundle.len()
        - m.payloads
            .iter()
            .map(|p| p.size.div_ceil(4096) * 4096)
            .sum::<u64>() as usize;
    let rootfs_at = header_and_manifest + boot_len.div_ceil(4096) * 4096;
    bundle[rootfs_at + rel.rootfs.len() - 1] ^= 0x40;
    let a_before = fs::read(dev.path("root-a")).unwrap();
    // B held an earlier release: once the install starts writing over it, that is gone.
    StateDir::new(dev.path("state"))
        .set_slot(
            Slot::B,
            &SlotRecord {
                version: "0.0.9".into(),
                security_version: 0,
                installed_unix_ms: 1,
                source: SlotSource::Bundle,
            },
        )
        .unwrap();
    let err = dev
        .installer(&ring)
        .install(&bundle[..], None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("payload \"rootfs\"") && err.contains("chunk"),
        "{err}"
    );
    assert_eq!(fs::read(dev.path("root-a")).unwrap(), a_before);
    assert_eq!(dev.entries(), ["cairn-0-b+0-0.efi", "cairn-1-a.efi"]);
    let mut boot = SdBoot::new(DirFs::new(dev.path("esp")), Some(Slot::A));
    let status = boot.status().unwrap();
    assert_eq!(status.next, Some(Slot::A));
    assert!(!status.slot(Slot::B).bootable);
    assert_eq!(StateDir::new(dev.path("state")).trial().unwrap(), None);
    // What B held before is forgotten: it holds nothing usable now.
    assert_eq!(
        StateDir::new(dev.path("state")).slot(Slot::B).unwrap(),
        None
    );
}

#[test]
fn bad_boot_json_is_refused_before_the_entry_is_written() {
    let dev = Device::new();
    let mut rel = Release::new();
    rel.spec.options.push("cairn.roothash=00".into());
    let ring = keyring();
    let err = dev
        .installer(&ring)
        .install(&rel.bundle(&key())[..], None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("installer's to set"), "{err}");
    assert_eq!(dev.entries(), ["cairn-0-b+0-0.efi", "cairn-1-a.efi"]);
}

#[test]
fn an_install_stopped_before_its_trial_is_armed_is_recorded_as_installing() {
    // What a power cut between the records and the boot entry leaves (found by the power-cut
    // harness): the slot's boot entry cannot be written here, as if the power went first.
    let dev = Device::new();
    let rel = Release::new();
    let ring = keyring();
    // A directory where the new entry's temporary file goes: the records are written, then
    // writing the entry fails, as if the power went first.
    let blocker = dev
        .path("esp")
        .join(sdboot::UKI_DIR)
        .join("cairn-2-b+0-0.efi");
    fs::create_dir(&blocker).unwrap();
    let e = dev
        .installer(&ring)
        .install(&rel.bundle(&key())[..], None, &mut |_| {})
        .unwrap_err();
    fs::remove_dir(&blocker).unwrap();
    assert!(!e.to_string().is_empty());
    let trial = StateDir::new(dev.path("state")).trial().unwrap().unwrap();
    // Not `installed`: the other slot's next boot must not take it for a trial that was
    // tried and abandoned, which would hold this version against the next install.
    assert_eq!(
        (trial.slot.as_str(), trial.version.as_str(), trial.outcome),
        ("b", "1.1.0", Outcome::Installing)
    );
    let mut boot = SdBoot::new(DirFs::new(dev.path("esp")), Some(Slot::A));
    assert_eq!(boot.status().unwrap().next, Some(Slot::A), "B is not armed");
}

/// The device's registry path as cairnd takes it for `upgrade oci://…`: the bundle artifact's
/// manifest checked, its layer streamed into the installer as it downloads. Against Debian's
/// docker-registry (skipped with one line when it is not installed).
#[test]
fn a_bundle_pulled_from_a_registry_installs_and_bad_artifacts_install_nothing() {
    use cairn_api::registry::{self, Client, Reference};
    use cairn_api::testing_registry::Registry;
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let rel = Release::new();
    let ring = keyring();
    let bytes = rel.bundle(&key());
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("1.1.0.cairn");
    fs::write(&file, &bytes).unwrap();
    let client = Client::new(reg.roots(), None).unwrap();
    let r = Reference::parse(&format!("oci://{}/cairn/qemu-aarch64:1.1.0", reg.host())).unwrap();
    client
        .push_bundle(
            &r,
            &mut fs::File::open(&file).unwrap(),
            "1.1.0.cairn",
            BTreeMap::new(),
        )
        .unwrap();

    let pull_and_install = |dev: &Device, r: &Reference| -> Result<String, String> {
        let (_, layer) = client.bundle(r).map_err(|e| e.to_string())?;
        let blob = client.blob(r, &layer).map_err(|e| e.to_string())?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, blob);
        dev.installer(&ring)
            .install(&mut reader, Some(layer.size), &mut |_| {})
            .map(|done| done.version)
            .map_err(|e| {
                // The error and its causes, as cairnd's event shows them.
                let mut text = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text = format!("{text}: {c}");
                    cause = c.source();
                }
                text
            })
    };

    let dev = Device::new();
    assert_eq!(pull_and_install(&dev, &r).unwrap(), "1.1.0");
    assert_eq!(
        &fs::read(dev.path("root-b")).unwrap()[..rel.rootfs.len()],
        &rel.rootfs[..]
    );
    assert_eq!(dev.entries(), ["cairn-1-a.efi", "cairn-3-b+2-0.efi"]);

    // An image that is not a bundle: refused before anything is touched.
    let image = Reference::parse(&format!("{}/cairn/app:1", reg.host())).unwrap();
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let config_digest = registry::digest_of(config);
    client
        .push_blob(
            &image,
            &mut std::io::Cursor::new(&config[..]),
            config.len() as u64,
            &config_digest,
        )
        .unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[]}}"#,
        registry::OCI_MANIFEST,
        config.len()
    );
    client
        .push_manifest(&image, registry::OCI_MANIFEST, manifest.as_bytes())
        .unwrap();
    let dev = Device::new();
    let before = dev.snapshot();
    let e = pull_and_install(&dev, &image).unwrap_err();
    assert!(e.contains("is not a Cairn bundle"), "{e}");
    assert_eq!(dev.snapshot(), before);

    // The registry's copy goes bad in its last byte: the layer's digest stops it before the
    // installer sees that byte, and no trial is armed.
    let (_, layer) = client.bundle(&r).unwrap();
    let path = reg.blob_path(&layer.digest);
    let mut stored = fs::read(&path).unwrap();
    *stored.last_mut().unwrap() ^= 0x01;
    fs::write(&path, &stored).unwrap();
    let dev = Device::new();
    let e = pull_and_install(&dev, &r).unwrap_err();
    assert!(e.contains("wrong digest"), "{e}");
    let mut boot = SdBoot::new(DirFs::new(dev.path("esp")), Some(Slot::A));
    assert_eq!(boot.status().unwrap().next, Some(Slot::A));
    assert_eq!(StateDir::new(dev.path("state")).trial().unwrap(), None);
}
