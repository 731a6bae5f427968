//! Encrypted STATE and DATA end to end, with a software TPM (Debian's swtpm) attached to the
//! machine: tpm-tis-device on qemu-aarch64's virt, tpm-tis on qemu-x86_64's q35.
//!
//! 0. First boot, cut short (QEMU killed) while STATE is being wiped and encrypted, after DATA
//!    took a copy of the seed.
//! 1. The next boot finishes from DATA's copy and shows the recovery key on the console; an
//!    admin fetches it once over the API (a second fetch fails), with the certificates the
//!    image's seed carried. A config with a marker
//!    hostname goes to STATE and the marker into cairnd's log on DATA. The config also names a
//!    host container after the marker, whose page holds it, from an OCI archive a stick brings
//!    onto DATA (containers start from cairnd's next start).
//! 2. Second boot: unlocked by the TPM with no input; the log kept on DATA still has the
//!    marker line from the first boot. The container is imported into containerd's store on
//!    the encrypted DATA and answers on a forwarded port. The unlock time is printed as a
//!    figure.
//! 3. The firmware's Secure Boot configuration changes (a hash added to `dbx` in the machine's
//!    variable store, so the firmware measures a different PCR 7): the box comes up in
//!    maintenance mode; a malformed and a wrong key are refused; the recovery key unlocks and
//!    re-seals, and the boot goes on to the usual API.
//! 4. The next boot is silent again, and the container answers from the store it was imported
//!    into at the second boot.
//! 5. From the host: the disk holds the marker nowhere (not in the config, the log, the image
//!    archive or containerd's unpacked layers), and Debian's cryptsetup reads both headers and
//!    accepts the recovery key on DATA.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward, Swtpm};
use cairn_systest::ctl::Ctl;
use cairn_systest::stick::{make_stick, StickFile};
use cairn_systest::{
    busybox_archive, contains, cryptsetup_takes_key, extract_partition, http_get, image_dir,
    keys_dir, qemu_lock, rig_dir, value_after,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Provisioning and the recovery unlock run argon2id twice each under TCG.
const SLOW_TIMEOUT: Duration = Duration::from_secs(600);
const API_PORT: u16 = 50000;
/// Where the host container answers in the guest.
const WEB_PORT: u16 = 8080;

/// The body the host container serves at `/` on the host's `port`, waiting up to 2 minutes for
/// it to start.
fn answer(port: u16) -> Option<String> {
    (0..60).find_map(|_| {
        http_get(port, "/").or_else(|| {
            std::thread::sleep(Duration::from_secs(2));
            None
        })
    })
}

struct Rig {
    board: &'static cairn_board::Board,
    dir: tempfile::TempDir,
    disk: PathBuf,
    port: u16,
    /// The host port forwarded to the guest's [`WEB_PORT`].
    web_port: u16,
}

impl Rig {
    fn new(board: &str) -> Rig {
        let board = cairn_board::find(board).unwrap();
        let dir = rig_dir("cairn-storage-");
        let disk = dir.path().join("disk.img");
        cairn_image::copy_sparse(&image_dir(board).join("disk.img"), &disk).unwrap();
        Rig {
            board,
            dir,
            disk,
            port: free_local_port().unwrap(),
            web_port: free_local_port().unwrap(),
        }
    }

    /// A machine with the rig's TPM; the disk and variable store carry over between launches.
    fn launch(&self, tpm: &Swtpm) -> Machine {
        let mut opts = LaunchOptions::new(self.board, &self.disk, self.dir.path().join("work"));
        opts.writable_image = true;
        opts.reuse_disk = true;
        opts.echo_console = true;
        opts.tpm = Some(tpm.socket_path().to_path_buf());
        opts.port_forwards = vec![
            PortForward::new(self.port, API_PORT),
            PortForward::new(self.web_port, WEB_PORT),
        ];
        Machine::launch(opts).unwrap()
    }

    fn swtpm(&self) -> Swtpm {
        Swtpm::start(&self.dir.path().join("tpm"), 0).unwrap()
    }
}

fn encrypted_state_and_data(board: &str) {
    let rig = Rig::new(board);
    let tmp = rig.dir.path();
    let endpoint = format!("127.0.0.1:{}", rig.port);
    let ctl = Ctl::for_role("admin", tmp, &endpoint);
    let marker = format!("m{:x}", std::process::id() as u64 * 7919 + 0x5eed);

    let _lock = qemu_lock();
    // 0. A power cut in the middle of the first boot's encryption: STATE's seed is wiped (and
    // synced), STATE is being formatted, DATA holds the only copy of the seed.
    let tpm = rig.swtpm();
    let mut m = rig.launch(&tpm);
    m.wait_for_line("cairnd: STATE wiped; encrypting it", BOOT_TIMEOUT)
        .unwrap();
    m.kill().unwrap();
    drop(tpm);

    // 1. The next boot finishes the job from DATA's copy; the seed's API secrets survive.
    let tpm = rig.swtpm();
    let mut m = rig.launch(&tpm);
    let resumed = m
        .wait_for_any(
            &[
                "cairnd: finishing the encryption of STATE",
                "cairnd: first boot: encrypting STATE and DATA",
            ],
            BOOT_TIMEOUT,
        )
        .unwrap();
    eprintln!("after the power cut: {}", resumed.line);
    assert_eq!(
        resumed.needle, 0,
        "the cut came before STATE was touched, so the test proved nothing: {}",
        resumed.line
    );
    let shown = value_after(
        &mut m,
        "recovery key (shown once; keep it safe):",
        SLOW_TIMEOUT,
    );
    m.wait_for_line("cairnd: management API on port 50000", BOOT_TIMEOUT)
        .unwrap();
    let fetched = ctl.until_ok(&["recovery-key"]);
    assert_eq!(
        fetched.trim(),
        shown,
        "the API's recovery key is the console's"
    );
    let (ok, _, stderr) = ctl.run(&["recovery-key"]);
    assert!(!ok && stderr.contains("fetched already"), "{stderr}");
    // The container's archive comes on a stick, onto DATA.
    let archive = busybox_archive(
        rig.board,
        tmp,
        &marker,
        &format!("exec httpd -f -p 0.0.0.0:{WEB_PORT} -h /www"),
    );
    let stick = tmp.join("stick.img");
    make_stick(
        &stick,
        "UPDATE",
        vec![StickFile::Copy("containers/web.tar", archive)],
    );
    m.attach_stick(&stick, "stick").unwrap();
    m.wait_for_line(
        "container images copied to /var/lib/cairn-images: web.tar",
        BOOT_TIMEOUT,
    )
    .unwrap();
    let config = tmp.join("machine.yaml");
    std::fs::write(
        &config,
        format!(
            "network:\n  hostname: {marker}\ncontainers:\n  - name: {marker}\n    \
             image: /var/lib/cairn-images/web.tar\n    memory_mib: 32\n"
        ),
    )
    .unwrap();
    let (ok, _, stderr) = ctl.run(&["apply-config", config.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    m.wait_for_line(&format!("cairnd: netcfg: hostname {marker}"), BOOT_TIMEOUT)
        .unwrap();

    // 2. Second boot: the TPM unlocks, nobody types anything.
    let (ok, _, stderr) = ctl.run(&["reboot"]);
    assert!(ok, "{stderr}");
    let took = value_after(
        &mut m,
        "cairnd: unlocked STATE and DATA with the TPM in",
        BOOT_TIMEOUT,
    );
    eprintln!("figure: {board}: unlock at boot (TPM unseal + keyslots, under TCG): {took}");
    m.wait_for_line("cairnd: management API on port 50000", BOOT_TIMEOUT)
        .unwrap();
    let logs = ctl.until_ok(&["logs", "-n", "2000", "cairnd"]);
    assert!(
        logs.contains(&format!("hostname {marker}")),
        "the first boot's log lines, kept on DATA, are gone:\n{logs}"
    );
    assert!(
        !logs.contains(&shown),
        "the recovery key is in the log the API serves"
    );
    // The host container, imported into containerd's store on the encrypted DATA.
    let page = format!("hello from {marker}\n");
    assert_eq!(
        answer(rig.web_port).as_deref(),
        Some(page.as_str()),
        "the host container on the encrypted DATA answers"
    );
    let imported = format!("cairnd: container {marker}: imported");
    assert_eq!(
        m.lines().iter().filter(|l| l.contains(&imported)).count(),
        1,
        "the image is imported once"
    );
    assert!(
        !m.lines().iter().any(|l| l.contains("maintenance mode")),
        "a TPM unlock went to maintenance mode"
    );
    // Boards without a CPU random instruction (qemu-aarch64's Cortex-A57) start with an empty
    // pool; cairnd seeds it from the TPM so the unlock does not wait for it.
    if let Some(l) = m.lines().iter().find(|l| l.contains("random pool")) {
        eprintln!("{board}: {l}");
        assert!(l.contains("seeded it from the TPM"), "{l}");
    }
    m.quit().unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap();
    drop(tpm);

    // 3. The Secure Boot configuration changes: PCR 7 differs, the TPM refuses.
    let vars = tmp.join("work").join("efivars.fd");
    cairn_qemu::efivars::add_dbx_hash(&vars, [0x5a; 32]).unwrap();
    let tpm = rig.swtpm();
    let mut m = rig.launch(&tpm);
    m.wait_for_line(
        "cairnd: maintenance mode: network and API only",
        BOOT_TIMEOUT,
    )
    .unwrap();
    let fingerprint = value_after(&mut m, "its key's fingerprint is", BOOT_TIMEOUT);
    let key_file = tmp.join("recovery.key");
    std::fs::write(&key_file, &shown).unwrap();
    let key_arg = key_file.to_str().unwrap();
    let (ok, _, stderr) = ctl.run_with(
        &["unlock", "--expect-fingerprint", &fingerprint],
        Some("not-a-key\n"),
    );
    assert!(!ok && stderr.contains("not a recovery key"), "{stderr}");
    let wrong = ["cbdefghi"; 8].join("-");
    let (ok, _, stderr) = ctl.run_with(
        &["unlock", "--expect-fingerprint", &fingerprint],
        Some(&format!("{wrong}\n")),
    );
    assert!(!ok && stderr.contains("opens no keyslot"), "{stderr}");
    // Without the fingerprint the key is not sent to a device no CA vouches for.
    let (ok, _, stderr) = ctl.run(&["unlock", "--recovery-key-file", key_arg]);
    assert!(
        !ok && stderr.contains(&format!(
            "has key {fingerprint}, which `ca:` does not vouch for"
        )),
        "{stderr}"
    );
    let (ok, stdout, stderr) = ctl.run(&[
        "unlock",
        "--recovery-key-file",
        key_arg,
        "--expect-fingerprint",
        &fingerprint,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("sealed a new key to PCR 7"), "{stdout}");
    m.wait_for_line(
        "cairnd: management API on port 50000 (mutual TLS)",
        BOOT_TIMEOUT,
    )
    .unwrap();
    ctl.until_ok(&["version"]);

    // 4. The next boot is silent again.
    let (ok, _, stderr) = ctl.run(&["reboot"]);
    assert!(ok, "{stderr}");
    m.wait_for_line(
        "cairnd: unlocked STATE and DATA with the TPM in",
        BOOT_TIMEOUT,
    )
    .unwrap();
    m.wait_for_line("cairnd: management API on port 50000", BOOT_TIMEOUT)
        .unwrap();
    assert_eq!(
        answer(rig.web_port).as_deref(),
        Some(page.as_str()),
        "the host container answers from the store on DATA"
    );
    // This machine's boots (3 and 4) found the image in the store.
    assert!(
        !m.lines().iter().any(|l| l.contains(&imported)),
        "the image was imported again"
    );
    assert!(
        m.lines()
            .iter()
            .any(|l| l.contains(&format!("cairnd: container {marker}: cairn.local/"))),
        "the container did not start from containerd's store"
    );
    m.quit().unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap();
    drop(tpm);

    // 5. From the host.
    let raw = std::fs::read(&rig.disk).unwrap();
    assert!(
        !contains(&raw, marker.as_bytes()),
        "the marker is readable on the raw disk"
    );
    assert!(
        !contains(&raw, shown.as_bytes()),
        "the recovery key is readable on the raw disk"
    );
    // The image's seed STATE held the device CA key in the clear; the first boot wiped it.
    let ca_key = std::fs::read_to_string(keys_dir().join("secrets/device/device-ca.key")).unwrap();
    let body = ca_key
        .lines()
        .find(|l| l.len() >= 40 && !l.starts_with("-----"))
        .expect("a base64 line in the device CA key");
    assert!(
        !contains(&raw, body.as_bytes()),
        "the device CA key from the image's seed is still on the raw disk"
    );
    for label in ["STATE", "DATA"] {
        let part = tmp.join(format!("{label}.img"));
        extract_partition(&rig.disk, label, &part);
        let dump = Command::new("cryptsetup")
            .arg("luksDump")
            .arg(&part)
            .output()
            .expect("cryptsetup");
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.status.success(), "luksDump {label}: {text}");
        // After the re-seal: one TPM token and two keyslots (TPM and recovery), nothing stale.
        assert_eq!(text.matches("systemd-tpm2").count(), 1, "{label}: {text}");
        assert_eq!(text.matches(": luks2").count(), 2, "{label}: {text}");
        assert!(text.contains("argon2id"), "{label}: {text}");
        cryptsetup_takes_key(&part, &key_file, label);
        std::fs::remove_file(&part).unwrap();
    }
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_encrypted_state_and_data() {
    encrypted_state_and_data("qemu-aarch64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_encrypted_state_and_data() {
    encrypted_state_and_data("qemu-x86_64");
}
