//! UKIs and Authenticode signatures against their real peers: Debian's systemd-stub and
//! systemd-boot (from `systemd-boot-efi`, fetched like an image build fetches it) and
//! `sbverify` (sbsigntool), which must accept what Cairn signs with the db key and refuse it
//! once one byte changes or when given another certificate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_image::deb::Cache;
use cairn_secureboot::{keys, uki, Pe, Signer};

fn cache() -> Cache {
    let dir = std::env::var_os("CAIRN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cairn/cache"));
    Cache::new(dir)
}

fn sbverify(cert: &Path, file: &Path) -> (bool, String) {
    let out = Command::new(common::tool("sbverify", "sbsigntool"))
        .arg("--cert")
        .arg(cert)
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn sbverify_accepts_signed_ukis_and_systemd_boot_and_refuses_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let written = keys::generate(&keys_dir).unwrap();
    assert_eq!(written.len(), 8);
    for path in &written {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let is_key = path.extension().is_some_and(|e| e == "key");
        assert_eq!(
            mode,
            if is_key { 0o600 } else { 0o644 },
            "{}",
            path.display()
        );
    }
    let err = keys::generate(&keys_dir).unwrap_err().to_string();
    assert!(err.contains("PK.key already exists"), "{err}");
    let signer = Signer::load(&keys_dir, "db").unwrap();
    let db = keys_dir.join("db.crt");

    for (arch, suffix, machine) in [("amd64", "x64", 0x8664u16), ("arm64", "aa64", 0xaa64)] {
        let pkg = cache().fetch("systemd-boot-efi", arch).unwrap();
        let efi = pkg.root.join("usr/lib/systemd/boot/efi");
        let stub = std::fs::read(efi.join(format!("linux{suffix}.efi.stub"))).unwrap();
        let stub = Pe::parse("stub", stub).unwrap();
        assert_eq!(stub.machine(), machine);
        let linux = common::pseudo_random(3_000_000, 11);
        let initrd = common::pseudo_random(1_000_001, 12);
        let parts = uki::UkiParts {
            osrel: uki::osrel("0.2.0", "b"),
            cmdline: "console=ttyS0 cairn.slot=b".into(),
            linux: &linux,
            initrd: &initrd,
            dtb: None,
        };
        let built = uki::build(stub, &parts, &[(".pcrpkey", b"public key")]).unwrap();
        assert_eq!(built.section_data(".linux").unwrap(), &linux[..]);
        assert_eq!(built.section_data(".initrd").unwrap(), &initrd[..]);
        assert_eq!(built.section_data(".pcrpkey").unwrap(), b"public key");
        assert_eq!(uki::cmdline(&built).unwrap(), "console=ttyS0 cairn.slot=b");
        // objdump (binutils) reads the same sections at the same places.
        if arch == "amd64" {
            let unsigned = dir.path().join("unsigned.efi");
            std::fs::write(&unsigned, built.bytes()).unwrap();
            let out = Command::new("objdump")
                .arg("-h")
                .arg(&unsigned)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            for s in built.sections() {
                let line = text
                    .lines()
                    .find(|l| l.split_whitespace().nth(1) == Some(s.name.as_str()))
                    .unwrap_or_else(|| panic!("objdump lacks {}: {text}", s.name));
                let vma = u64::from_str_radix(line.split_whitespace().nth(3).unwrap(), 16).unwrap();
                assert_eq!(vma, s.virtual_address as u64, "{line}");
            }
        }

        let signed = signer.sign(built).unwrap();
        let path = dir.path().join(format!("uki-{arch}.efi"));
        std::fs::write(&path, &signed).unwrap();
        let (ok, text) = sbverify(&db, &path);
        assert!(ok, "sbverify refused the {arch} UKI: {text}");
        let (ok, _) = sbverify(&keys_dir.join("PK.crt"), &path);
        assert!(!ok, "sbverify took another certificate for the {arch} UKI");
        let again = Pe::parse("signed", signed.clone()).unwrap();
        assert!(again.is_signed());
        assert_eq!(again.checksum(), again.compute_checksum());

        // One byte changed inside the kernel, the command line, or the headers.
        for at in [signed.len() / 2, 0x90] {
            let mut changed = signed.clone();
            changed[at] ^= 0x01;
            let bad = dir.path().join("changed.efi");
            std::fs::write(&bad, &changed).unwrap();
            let (ok, text) = sbverify(&db, &bad);
            assert!(
                !ok,
                "sbverify took a changed {arch} UKI (byte {at:#x}): {text}"
            );
        }

        let sd_boot = std::fs::read(efi.join(format!("systemd-boot{suffix}.efi"))).unwrap();
        let signed = signer
            .sign(Pe::parse("systemd-boot", sd_boot).unwrap())
            .unwrap();
        let path = dir.path().join(format!("systemd-boot{suffix}.efi"));
        std::fs::write(&path, &signed).unwrap();
        let (ok, text) = sbverify(&db, &path);
        assert!(ok, "sbverify refused systemd-boot{suffix}.efi: {text}");
        let err = signer.sign(Pe::parse("x", signed).unwrap()).unwrap_err();
        assert!(err.to_string().contains("already signed"), "{err}");
    }
}

/// A UKI made with a PCR-signing key carries `.pcrpkey` and a `.pcrsig` whose signed policy is
/// for the PCR 11 value `systemd-measure calculate` (Debian's systemd 252) prints for the UKI's
/// own sections, with the release's anti-rollback floor check; `openssl` accepts the signature
/// with the `.pcrpkey` it carries, and refuses it for another policy.
#[test]
fn a_ukis_pcr_signature_covers_what_systemd_measure_computes_for_it() {
    const MEASURE: &str = "/usr/lib/systemd/systemd-measure";
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    keys::generate(&keys_dir).unwrap();
    let pem = std::fs::read(keys_dir.join(format!("{}.key", keys::PCR_SIGNING))).unwrap();
    let key = cairn_tpm::pcrsig::PcrSigningKey::from_pem(&pem).unwrap();
    let pcrpkey = key.public_key().to_pem();
    let pkg = cache().fetch("systemd-boot-efi", "amd64").unwrap();
    let stub = std::fs::read(pkg.root.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub")).unwrap();
    let linux = common::pseudo_random(2_000_000, 21);
    let initrd = common::pseudo_random(700_001, 22);
    let parts = uki::UkiParts {
        osrel: uki::osrel("0.3.0", "a"),
        cmdline: "console=ttyS0 cairn.slot=a lockdown=integrity".into(),
        linux: &linux,
        initrd: &initrd,
        dtb: None,
    };
    let security_version = 7;
    let sig = cairn_image::build::pcr_signature(&key, &parts, &pcrpkey, security_version);
    let built = cairn_image::build::slot_uki(
        Pe::parse("stub", stub).unwrap(),
        &parts,
        &[
            (".pcrsig", sig.as_bytes()),
            (".pcrpkey", pcrpkey.as_bytes()),
        ],
        None,
    )
    .unwrap();
    let uki = Pe::parse("uki", built).unwrap();

    // systemd-measure, given the sections as the UKI holds them.
    let mut args = vec!["calculate".to_string()];
    for section in ["linux", "initrd", "cmdline", "osrel", "pcrpkey"] {
        let path = dir.path().join(section);
        std::fs::write(&path, uki.section_data(&format!(".{section}")).unwrap()).unwrap();
        args.push(format!("--{section}={}", path.display()));
    }
    args.extend([
        "--bank=sha256".into(),
        "--phase=".into(),
        "--json=short".into(),
    ]);
    let out = Command::new(MEASURE).args(&args).output().unwrap();
    assert!(out.status.success(), "systemd-measure: {out:?}");
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pcr11: [u8; 32] = hex::decode(theirs["sha256"][0]["hash"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();

    let carried = cairn_tpm::PcrSignature::from_json(uki.section_data(".pcrsig").unwrap()).unwrap();
    let public = cairn_tpm::PcrPublicKey::from_pem(uki.section_data(".pcrpkey").unwrap()).unwrap();
    let signed = carried
        .find(
            &public,
            &cairn_tpm::pcrsig::release_policy(&pcr11, security_version.into()),
        )
        .expect("the .pcrsig signs the PCR 11 systemd-measure computes, under its .pcrpkey");
    assert_eq!(signed.security_version, Some(u64::from(security_version)));
    assert_eq!(signed.pcrs, [11]);

    // The signature itself, checked by openssl over policy || policyRef.
    let openssl = |message: &[u8]| {
        let (msg, sig_file, pub_file) = (
            dir.path().join("msg"),
            dir.path().join("sig"),
            dir.path().join("pub.pem"),
        );
        std::fs::write(&msg, message).unwrap();
        std::fs::write(&sig_file, &signed.sig).unwrap();
        std::fs::write(&pub_file, uki.section_data(".pcrpkey").unwrap()).unwrap();
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pub_file)
            .arg("-signature")
            .arg(&sig_file)
            .arg(&msg)
            .output()
            .unwrap()
            .status
            .success()
    };
    let policy_ref = cairn_tpm::pcrsig::RELEASE_POLICY_REF;
    assert!(openssl(&[&signed.pol[..], policy_ref].concat()));
    let other = cairn_tpm::pcrsig::release_policy(&pcr11, u64::from(security_version) + 1);
    assert!(!openssl(&[&other[..], policy_ref].concat()));
}
