//! cairnctl as a user meets it: bad input gives one line that names the problem and the fix.

use std::process::Command;

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

#[test]
fn unknown_board_is_one_line_naming_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (ok, _, err) = cairnctl(&[
        "image",
        "build",
        "--board",
        "pi9",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown board `pi9`"), "{err}");
    assert!(
        err.contains("qemu-aarch64") && err.contains("qemu-x86_64"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn missing_device_binary_says_how_to_build_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (ok, _, err) = cairnctl(&[
        "image",
        "build",
        "--board",
        "qemu-x86_64",
        "--out",
        out.to_str().unwrap(),
        "--device-bin",
        tmp.path().join("nope").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cargo xtask device"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn bad_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = cairnctl(&[
        "image",
        "build",
        "--board",
        "qemu-x86_64",
        "--out",
        tmp.path().join("out").to_str().unwrap(),
        "--version",
        "latest",
    ]);
    assert!(!ok);
    assert!(err.contains("invalid version `latest`"), "{err}");
}

#[test]
fn qemu_run_without_image_says_how_to_build_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = cairnctl(&[
        "qemu",
        "run",
        "--board",
        "qemu-aarch64",
        "--image",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("cairnctl image build --board qemu-aarch64"),
        "{err}"
    );
}

#[test]
fn boards_lists_both_qemu_boards() {
    let (ok, out, _) = cairnctl(&["boards"]);
    assert!(ok);
    assert!(
        out.contains("qemu-aarch64") && out.contains("qemu-x86_64"),
        "{out}"
    );
}
