//! First-boot encryption on each image variant users build, with a software TPM attached
//! (`storage.rs` covers the demo's variant, API secrets only, on both boards, with a power cut,
//! maintenance mode and the recovery key):
//!
//! - no API secrets and no machine config,
//! - a machine config only,
//! - both, first booted without a TPM under `storage.require_encryption: true`.
//!
//! Each first boot (with the TPM) encrypts STATE and DATA; a marker reaches cairnd's log on
//! `/var` (a machine config's hostname, or the name of a file on a plugged-in stick); the box
//! is powered off and on and unlocks with no input. Then, from the host: both partitions are
//! LUKS2 with a `systemd-tpm2` token (Debian's cryptsetup reads them), the marker is not in the
//! raw DATA partition, and DATA decrypted with the volume key cryptsetup derives from the
//! recovery key holds an ext4 file system (e2fsck finds it consistent, debugfs reads it) whose
//! log has the marker and the second boot's unlock line.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_image::RootExtras;
use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward, Swtpm};
use cairn_systest::ctl::Ctl;
use cairn_systest::release::build_release;
use cairn_systest::stick::{make_stick, StickFile};
use cairn_systest::{contains, extract_partition, keys_dir, partition, qemu_lock, rig_dir, tool};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Provisioning runs argon2id twice under TCG.
const SLOW_TIMEOUT: Duration = Duration::from_secs(600);
const API_PORT: u16 = 50000;

struct Variant {
    name: &'static str,
    api_secrets: bool,
    /// The machine config; `{marker}` is replaced by the run's marker.
    config: Option<&'static str>,
    /// Boot once without a TPM first (the config requires encryption).
    first_without_tpm: bool,
}

fn api_secrets() -> cairn_image::ApiSecrets {
    let s = cairn_pki::secrets::DeviceSecrets::load(&keys_dir().join("secrets")).unwrap();
    cairn_image::ApiSecrets {
        client_ca: s.client_ca,
        device_ca: s.device_ca,
        device_ca_key: s.device_ca_key,
    }
}

fn launch(
    board: &'static cairn_board::Board,
    disk: &Path,
    work: &Path,
    tpm: Option<&Swtpm>,
    port: u16,
) -> Machine {
    let mut opts = LaunchOptions::new(board, disk, work.to_path_buf());
    opts.writable_image = true;
    opts.reuse_disk = true;
    opts.echo_console = true;
    opts.tpm = tpm.map(|t| t.socket_path().to_path_buf());
    opts.port_forwards = vec![PortForward::new(port, API_PORT)];
    Machine::launch(opts).unwrap()
}

/// The number after `key:` on the first line of `dump` that has it (`offset: 16777216 [bytes]`).
fn dump_number(dump: &str, key: &str) -> u64 {
    dump.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(key)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key} in luksDump:\n{dump}"))
}

/// DATA's plaintext, decrypted here with the volume key Debian's cryptsetup derives from the
/// recovery key (aes-xts-plain64; LUKS2 counts the IV in 512-byte sectors whatever the segment's
/// sector size).
fn decrypt_with_cryptsetup(part: &Path, recovery_key: &Path, dir: &Path) -> Vec<u8> {
    use aes::cipher::KeyInit;
    use xts_mode::{get_tweak_default, Xts128};
    let dump = tool(Command::new("cryptsetup").arg("luksDump").arg(part));
    let key_file = dir.join("volume.key");
    tool(
        Command::new("cryptsetup")
            .args([
                "luksDump",
                "--batch-mode",
                "--dump-volume-key",
                "--volume-key-file",
            ])
            .arg(&key_file)
            .arg("--key-file")
            .arg(recovery_key)
            .arg(part),
    );
    let key = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    assert_eq!(key.len(), 64, "an aes-xts-plain64 key of 512 bits");
    assert!(dump.contains("cipher: aes-xts-plain64"), "{dump}");
    let offset = dump_number(&dump, "offset:") as usize;
    let sector = dump_number(&dump, "sector:") as usize;
    let mut data = std::fs::read(part).unwrap()[offset..].to_vec();
    data.truncate(data.len() / sector * sector);
    let xts = Xts128::new(
        aes::Aes256::new_from_slice(&key[..32]).unwrap(),
        aes::Aes256::new_from_slice(&key[32..]).unwrap(),
    );
    let per = (sector / 512) as u128;
    xts.decrypt_area(&mut data, sector, 0, |i| get_tweak_default(i * per));
    data
}

/// `cairnctl --json health`: the text, the report, and its `storage` check.
fn storage_check(ctl: &Ctl) -> (String, serde_json::Value, serde_json::Value) {
    let (health, report) = ctl.health();
    let storage = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "storage")
        .unwrap_or_else(|| panic!("no storage check: {health}"))
        .clone();
    (health, report, storage)
}

/// Waits for `cairnctl events` (which follows the device's events) to show the storage event
/// with `state`, then stops it by its pid.
fn storage_event(ctl: &Ctl, state: &str) {
    use std::io::{BufRead, BufReader};
    let mut child = ctl
        .command(&["events", "-n", "50"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let hit = line.contains(" storage ") && line.contains(&format!(" {state}"));
                seen.push(line);
                if hit {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(found, "no storage {state} event in:\n{}", seen.join("\n"));
}

fn first_boot_encrypts(board_name: &str, v: Variant) {
    let board = cairn_board::find(board_name).unwrap();
    let rig = rig_dir("cairn-storage-variant-");
    let tmp = rig.path();
    let marker = format!(
        "m{:x}v{}",
        std::process::id() as u64 * 7919 + 0x5eed,
        v.name.len()
    );
    let config = v.config.map(|c| c.replace("{marker}", &marker));
    let image = build_release(
        board,
        &tmp.join("image"),
        "0.1.0",
        0,
        &format!("systest-storage-{}", v.name),
        RootExtras {
            machine_config: config.clone(),
            api_secrets: v.api_secrets.then(api_secrets),
            ..Default::default()
        },
    );
    let disk = tmp.join("disk.img");
    cairn_image::copy_sparse(&image.join("disk.img"), &disk).unwrap();
    let port = free_local_port().unwrap();
    let ctl = Ctl::for_role("admin", tmp, &format!("127.0.0.1:{port}"));
    let work = tmp.join("work");

    let _lock = qemu_lock();
    if v.first_without_tpm {
        // Required, and impossible: maintenance mode, said by the API too; nothing is formatted.
        let mut m = launch(board, &disk, &work, None, port);
        let line = m
            .wait_for_line(
                "cairnd: maintenance mode: encryption is required",
                BOOT_TIMEOUT,
            )
            .unwrap();
        assert!(line.contains("no TPM"), "{line}");
        m.wait_for_line("cairnd: management API on port", BOOT_TIMEOUT)
            .unwrap();
        let (health, report, storage) = storage_check(&ctl);
        assert_eq!(report["healthy"], false, "{health}");
        assert_eq!(storage["state"], "failing", "{health}");
        assert!(
            storage["detail"]
                .as_str()
                .unwrap()
                .contains("storage.require_encryption"),
            "{health}"
        );
        storage_event(&ctl, "refused");
        m.wait_for_line(
            "cairnd: maintenance mode: network and API only",
            BOOT_TIMEOUT,
        )
        .unwrap();
        assert!(
            !m.lines()
                .iter()
                .any(|l| l.contains("waiting for update bundles")),
            "a box that refused plain storage went on to its usual work"
        );
        m.powerdown().unwrap();
        m.wait_exit(Duration::from_secs(120)).unwrap();
        let raw = std::fs::read(&disk).unwrap();
        let (start, _) = partition(&disk, "DATA");
        assert!(
            raw[start as usize..start as usize + (1 << 20)]
                .iter()
                .all(|&b| b == 0),
            "DATA was written on a boot that could not encrypt it"
        );
    }

    // First boot with the TPM: encrypted, whatever STATE held.
    let tpm = Swtpm::start(&tmp.join("tpm"), 0).unwrap();
    let mut m = launch(board, &disk, &work, Some(&tpm), port);
    let line = m
        .wait_for_line("recovery key (shown once; keep it safe):", SLOW_TIMEOUT)
        .unwrap();
    let recovery = line
        .split("keep it safe):")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    m.wait_for_line("cairnd: encrypted STATE and DATA in", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        !m.lines().iter().any(|l| l.contains("not encrypted")),
        "first boot did not encrypt"
    );
    if config.is_some() {
        m.wait_for_line(&format!("cairnd: netcfg: hostname {marker}"), BOOT_TIMEOUT)
            .unwrap();
    }
    m.wait_for_line("cairnd: waiting for update bundles", BOOT_TIMEOUT)
        .unwrap();
    if config.is_none() {
        // No config to carry a marker: a file on a stick, whose name cairnd logs as it
        // refuses it (it is no bundle).
        let stick = tmp.join("stick.img");
        let name: &'static str = Box::leak(format!("{marker}.cairn").into_boxed_str());
        make_stick(
            &stick,
            "MARKER",
            vec![StickFile::Bytes(name, b"not a bundle".to_vec())],
        );
        m.attach_stick(&stick, "marker").unwrap();
        m.wait_for_line(&format!("{marker}.cairn refused"), BOOT_TIMEOUT)
            .unwrap();
    }
    if v.api_secrets {
        let (health, _, storage) = storage_check(&ctl);
        assert_eq!(storage["state"], "passing", "{health}");
        storage_event(&ctl, "encrypted");
    }
    m.powerdown().unwrap();
    m.wait_exit(Duration::from_secs(120)).unwrap();

    // Power on again: the TPM unlocks, nobody types anything.
    // swtpm ends with the machine it served; a new one carries on from the same state.
    drop(tpm);
    let tpm = Swtpm::start(&tmp.join("tpm"), 0).unwrap();
    let mut m = launch(board, &disk, &work, Some(&tpm), port);
    m.wait_for_line(
        "cairnd: unlocked STATE and DATA with the TPM in",
        BOOT_TIMEOUT,
    )
    .unwrap();
    m.wait_for_line("cairnd: waiting for update bundles", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        !m.lines()
            .iter()
            .any(|l| l.contains("maintenance mode") || l.contains("first boot")),
        "the second boot did not simply unlock"
    );
    m.powerdown().unwrap();
    m.wait_exit(Duration::from_secs(120)).unwrap();
    drop(tpm);

    // From the host.
    let key_file = tmp.join("recovery.key");
    std::fs::write(&key_file, &recovery).unwrap();
    for label in ["STATE", "DATA"] {
        let part = tmp.join(format!("{label}.img"));
        let raw = extract_partition(&disk, label, &part);
        let dump = tool(Command::new("cryptsetup").arg("luksDump").arg(&part));
        assert!(dump.contains("Version:       \t2"), "{label}: {dump}");
        assert_eq!(dump.matches("systemd-tpm2").count(), 1, "{label}: {dump}");
        assert!(
            !contains(&raw, marker.as_bytes()),
            "the marker is readable in the raw {label} partition"
        );
        if label == "DATA" {
            let plain = decrypt_with_cryptsetup(&part, &key_file, tmp);
            let fs = tmp.join("data-plain.img");
            std::fs::write(&fs, plain).unwrap();
            // The machine was powered off: e2fsck replays the journal, and finds nothing else
            // to fix (exit status 0, or 1 for the replay).
            let fsck = Command::new("e2fsck").arg("-fp").arg(&fs).output().unwrap();
            assert!(
                fsck.status.code().is_some_and(|c| c <= 1),
                "DATA's ext4 after the guest used it: {}{}",
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            );
            let log = tool(
                Command::new("debugfs")
                    .arg("-R")
                    .arg("cat /log/cairnd.log")
                    .arg(&fs),
            );
            assert!(
                log.contains(&marker),
                "the marker is not in DATA's log:\n{log}"
            );
            assert!(
                log.contains("unlocked STATE and DATA with the TPM"),
                "the second boot's lines are not in DATA's log:\n{log}"
            );
            std::fs::remove_file(&fs).unwrap();
        }
        std::fs::remove_file(&part).unwrap();
    }
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_first_boot_encrypts_without_api_secrets_or_config() {
    first_boot_encrypts(
        "qemu-aarch64",
        Variant {
            name: "bare",
            api_secrets: false,
            config: None,
            first_without_tpm: false,
        },
    );
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_first_boot_encrypts_with_a_machine_config_only() {
    first_boot_encrypts(
        "qemu-aarch64",
        Variant {
            name: "config",
            api_secrets: false,
            config: Some("network:\n  hostname: {marker}\n"),
            first_without_tpm: false,
        },
    );
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_encryption_required_then_done_with_secrets_and_config() {
    first_boot_encrypts(
        "qemu-aarch64",
        Variant {
            name: "both",
            api_secrets: true,
            config: Some("network:\n  hostname: {marker}\nstorage:\n  require_encryption: true\n"),
            first_without_tpm: true,
        },
    );
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_first_boot_encrypts_without_api_secrets_or_config() {
    first_boot_encrypts(
        "qemu-x86_64",
        Variant {
            name: "bare",
            api_secrets: false,
            config: None,
            first_without_tpm: false,
        },
    );
}
