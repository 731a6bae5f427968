//! The PCR 11 prediction and the PCR signature against systemd 252's own `systemd-measure`
//! (Debian's systemd), on the real kernels and initramfs of the built images
//! (`cargo xtask images`; `CAIRN_IMAGES` names another folder).

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_tpm::pcrsig::{PcrSignature, PcrSigningKey};
use cairn_tpm::uki::{after_phases, predict_pcr11, systemd_phase_paths, UkiParts, SYSTEMD_PHASES};
use serde_json::Value;

mod common;

const MEASURE: &str = "/usr/lib/systemd/systemd-measure";

fn images() -> PathBuf {
    std::env::var_os("CAIRN_IMAGES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cairn/images"),
        PathBuf::from,
    )
}

/// A slot's parts, read from its UKI on the image's ESP: kernel, initramfs, command line, os-release.
struct Slot {
    dir: tempfile::TempDir,
    cmdline: String,
}

impl Slot {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

fn slot_a(board: &str) -> Slot {
    let dir = images().join(board);
    let meta: Value = serde_json::from_slice(
        &std::fs::read(dir.join("image.json"))
            .unwrap_or_else(|e| panic!("{board}: no image.json ({e}): run `cargo xtask images`")),
    )
    .unwrap();
    let esp = meta["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "ESP")
        .expect("an ESP")["offset"]
        .as_u64()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let disk = format!("{}@@{esp}", dir.join("disk.img").display());
    // Slot A's UKI (`EFI/Linux/cairn-<generation>-a[+left-done].efi`), its sections as the stub
    // measures them.
    let listed = Command::new("mdir")
        .args(["-b", "-i", &disk, "::/EFI/Linux"])
        .output()
        .expect("mdir (Debian package mtools)");
    assert!(listed.status.success(), "mdir ::/EFI/Linux: {listed:?}");
    let listed = String::from_utf8(listed.stdout).unwrap();
    let uki = listed
        .lines()
        .find(|l| {
            let name = l.rsplit('/').next().unwrap_or(l);
            name.starts_with("cairn-") && (name.contains("-a.") || name.contains("-a+"))
        })
        .unwrap_or_else(|| panic!("{board}: no slot A UKI in ::/EFI/Linux: {listed}"));
    let out = Command::new("mcopy")
        .args(["-n", "-i", &disk, uki])
        .arg(tmp.path().join("uki.efi"))
        .output()
        .unwrap();
    assert!(out.status.success(), "mcopy {uki}: {out:?}");
    let pe = cairn_secureboot::Pe::parse(uki, std::fs::read(tmp.path().join("uki.efi")).unwrap())
        .unwrap();
    for (section, to) in [
        (".linux", "linux"),
        (".initrd", "initrd"),
        (".cmdline", "cmdline"),
        (".osrel", "osrel"),
    ] {
        let data = pe
            .section_data(section)
            .unwrap_or_else(|| panic!("{uki}: no {section} section"));
        std::fs::write(tmp.path().join(to), data).unwrap();
    }
    let cmdline = String::from_utf8(std::fs::read(tmp.path().join("cmdline")).unwrap()).unwrap();
    assert!(
        cmdline.contains("cairn.slot=a"),
        "{uki}: the command line is slot A's: {cmdline}"
    );
    Slot { dir: tmp, cmdline }
}

/// A device tree for the `.dtb` section: any of the arm64 kernel package's.
fn some_dtb() -> Vec<u8> {
    let cache = images().join("../cache/unpacked");
    let out = Command::new("find")
        .arg(&cache)
        .args(["-name", "bcm2711-rpi-4-b.dtb", "-print", "-quit"])
        .output()
        .unwrap();
    let path = String::from_utf8(out.stdout).unwrap();
    let path = path.trim();
    assert!(
        !path.is_empty(),
        "no bcm2711-rpi-4-b.dtb under {}",
        cache.display()
    );
    std::fs::read(path).unwrap()
}

fn section_args(slot: &Slot, dtb: bool) -> Vec<String> {
    let mut args: Vec<String> = ["linux", "initrd", "cmdline", "osrel"]
        .iter()
        .map(|s| format!("--{s}={}", slot.path(s).display()))
        .collect();
    if dtb {
        args.push(format!("--dtb={}", slot.path("dtb").display()));
    }
    args.push("--bank=sha256".into());
    args
}

fn measure(args: &[String]) -> Value {
    let out = Command::new(MEASURE)
        .args(args)
        .arg("--json=short")
        .output()
        .unwrap_or_else(|e| panic!("{MEASURE}: {e} (Debian package systemd)"));
    assert!(out.status.success(), "systemd-measure: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check_board(board: &str, with_dtb: bool) {
    let slot = slot_a(board);
    let (linux, initrd, osrel) = (slot.read("linux"), slot.read("initrd"), slot.read("osrel"));
    let dtb = with_dtb.then(some_dtb);
    if let Some(d) = &dtb {
        std::fs::write(slot.path("dtb"), d).unwrap();
    }
    let parts = UkiParts {
        linux: &linux,
        osrel: Some(&osrel),
        cmdline: Some(slot.cmdline.as_bytes()),
        initrd: Some(&initrd),
        dtb: dtb.as_deref(),
        ..Default::default()
    };
    let pcr11 = predict_pcr11(&parts);

    // The default phase paths: enter-initrd, enter-initrd:leave-initrd, …
    let mut args = vec!["calculate".to_string()];
    args.extend(section_args(&slot, with_dtb));
    let theirs = measure(&args);
    let theirs: Vec<(String, String)> = theirs["sha256"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["pcr"], 11);
            (
                e["phase"].as_str().unwrap().into(),
                e["hash"].as_str().unwrap().into(),
            )
        })
        .collect();
    let ours: Vec<(String, String)> = systemd_phase_paths(&pcr11)
        .into_iter()
        .map(|(p, v)| (p, hex::encode(v)))
        .collect();
    assert_eq!(ours, theirs, "{board}: phase paths");
    assert_eq!(theirs.len(), SYSTEMD_PHASES.len());

    // No phase: the value right after the stub, which Cairn's unlock sees.
    args.push("--phase=".into());
    let bare = measure(&args);
    assert_eq!(
        bare["sha256"][0]["hash"].as_str().unwrap(),
        hex::encode(pcr11),
        "{board}: the stub's own value"
    );
    assert_eq!(after_phases(&pcr11, &[]), pcr11);
}

#[test]
fn pcr11_prediction_equals_systemd_measure_for_qemu_x86_64() {
    check_board("qemu-x86_64", false);
}

#[test]
fn pcr11_prediction_equals_systemd_measure_for_qemu_aarch64_with_a_dtb() {
    check_board("qemu-aarch64", true);
}

/// The signature JSON for the same RSA key is byte for byte what `systemd-measure sign`
/// prints (RSASSA-PKCS1-v1_5 is deterministic). systemd 252's sign computes the policy digest
/// in a TPM, so it talks to swtpm here (libtss2-tcti-swtpm0).
#[test]
fn pcr_signature_equals_systemd_measure_sign() {
    let slot = slot_a("qemu-x86_64");
    let key = slot.path("pcr-signing.key");
    let public = slot.path("pcr-signing.pem");
    let genrsa = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(genrsa.status.success(), "{genrsa:?}");
    let signer = PcrSigningKey::from_pem(&std::fs::read(&key).unwrap()).unwrap();
    // The public half as ours writes it; systemd checks it against the private key.
    std::fs::write(&public, signer.public_key().to_pem()).unwrap();
    let openssl_pub = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(openssl_pub.stdout).unwrap(),
        signer.public_key().to_pem(),
        "the PEM public key is openssl's"
    );

    let (linux, initrd, osrel) = (slot.read("linux"), slot.read("initrd"), slot.read("osrel"));
    let pcr11 = predict_pcr11(&UkiParts {
        linux: &linux,
        osrel: Some(&osrel),
        cmdline: Some(slot.cmdline.as_bytes()),
        initrd: Some(&initrd),
        ..Default::default()
    });

    // swtpm serves one connection at a time: ours goes before systemd-measure connects.
    let (swtpm, tpm) = common::start_swtpm();
    drop(tpm);
    let sign = |phase: Option<&str>| {
        let mut cmd = Command::new(MEASURE);
        cmd.arg("sign")
            .arg(format!(
                "--tpm2-device=swtpm:host=127.0.0.1,port={}",
                swtpm.port
            ))
            .args(section_args(&slot, false))
            .arg(format!("--private-key={}", key.display()))
            .arg(format!("--public-key={}", public.display()));
        if let Some(p) = phase {
            cmd.arg(format!("--phase={p}"));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "systemd-measure sign: {} (libtss2-esys-3.0.2-0 and libtss2-tcti-swtpm0 installed?)",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let ours = PcrSignature {
        sha256: systemd_phase_paths(&pcr11)
            .iter()
            .map(|(_, v)| signer.sign_pcr11(v))
            .collect(),
    };
    assert_eq!(ours.to_json(), sign(None), "default phases");
    let bare = PcrSignature {
        sha256: vec![signer.sign_pcr11(&pcr11)],
    };
    assert_eq!(bare.to_json(), sign(Some("")), "no phase");
    // What we print reads back as it was.
    assert_eq!(
        PcrSignature::from_json(ours.to_json().as_bytes()).unwrap(),
        ours
    );
}
