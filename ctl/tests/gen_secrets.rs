//! `cairnctl gen secrets`: the files it writes, their modes, that they are what they claim, and
//! that it never overwrites a folder that has anything in it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use cairn_pki::client_config::ClientConfig;
use cairn_pki::{check_issued_by, pem_to_der, role_of, Role};

fn cairnctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gen(out: &Path) -> (bool, String, String) {
    cairnctl(&["gen", "secrets", "--out", out.to_str().unwrap()])
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn der(path: &Path) -> Vec<u8> {
    pem_to_der(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn writes_cas_role_certificates_device_part_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("secrets");
    let (ok, stdout, stderr) = gen(&out);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("client CA ") && stdout.contains("device CA "),
        "{stdout}"
    );
    assert_eq!(
        listing(&out),
        [
            "admin.crt",
            "admin.key",
            "cairnctl.yaml",
            "client-ca.crt",
            "client-ca.key",
            "device",
            "device-ca.crt",
            "operator.crt",
            "operator.key",
            "reader.crt",
            "reader.key",
        ]
    );
    assert_eq!(
        listing(&out.join("device")),
        ["client-ca.crt", "device-ca.crt", "device-ca.key"]
    );
    assert_eq!(
        listing(tmp.path()),
        ["secrets"],
        "no staging folder left behind"
    );
    assert_eq!(mode(&out), 0o700);
    for key in [
        "client-ca.key",
        "admin.key",
        "operator.key",
        "reader.key",
        "device/device-ca.key",
    ] {
        assert_eq!(mode(&out.join(key)), 0o600, "{key}");
    }
    let client_ca = der(&out.join("client-ca.crt"));
    let device_ca = der(&out.join("device-ca.crt"));
    assert_eq!(der(&out.join("device/client-ca.crt")), client_ca);
    assert_eq!(der(&out.join("device/device-ca.crt")), device_ca);
    let now = SystemTime::now();
    for role in Role::ALL {
        let cert = der(&out.join(format!("{}.crt", role.name())));
        assert_eq!(role_of(&cert).unwrap(), role);
        check_issued_by(&cert, &client_ca, now).unwrap();
        let err = check_issued_by(&cert, &device_ca, now)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("it was issued by CA "), "{err}");
    }
    // The config cairnctl --config reads resolves to the files just written.
    let config = ClientConfig::load(&out.join("cairnctl.yaml")).unwrap();
    assert_eq!(config.endpoint, "127.0.0.1:50000");
    assert_eq!(der(&config.ca), device_ca);
    assert_eq!(role_of(&der(&config.cert)).unwrap(), Role::Admin);
    assert_eq!(
        std::fs::read(&config.key).unwrap(),
        std::fs::read(out.join("admin.key")).unwrap()
    );
}

#[test]
fn an_empty_folder_is_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = gen(tmp.path());
    assert!(ok, "{stderr}");
    assert!(tmp.path().join("device/device-ca.key").is_file());
}

#[test]
fn refuses_to_overwrite_a_folder_with_anything_in_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("secrets");
    assert!(gen(&out).0);
    let before: Vec<Vec<u8>> = ["admin.key", "client-ca.key"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let (ok, stdout, stderr) = gen(&out);
    assert!(!ok);
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("already exists and is not an empty folder; refusing to overwrite secrets"),
        "{stderr}"
    );
    let after: Vec<Vec<u8>> = ["admin.key", "client-ca.key"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "the keys are untouched");

    // Any file counts, and so does a plain file at the path.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    assert!(!gen(&other).0);
    assert_eq!(listing(&other), ["notes.txt"]);
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(!gen(&file).0);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert_eq!(listing(tmp.path()), ["file", "other", "secrets"]);
}

#[test]
fn a_missing_parent_is_one_line_naming_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("no/such/secrets");
    let (ok, _, stderr) = gen(&out);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("cairnctl: cannot create {}: ", out.display())),
        "{stderr}"
    );
}
