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
