//! The machine configs in `examples/machine-config/` are what users start from: each one is
//! valid as `cairnctl config validate` reads it, and says what it is about, so an example that
//! drifts from the schema fails here. A copy with one field misspelt is refused, naming it.

use std::path::PathBuf;
use std::process::Command;

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/machine-config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn validate(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["config", "validate"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_machine_config_is_valid() {
    let files = examples();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "dhcp.yaml",
        "static.yaml",
        "vlan.yaml",
        "storage-pcrs.yaml",
        "api-certificate.yaml",
        "probes.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} is missing: {names:?}"
        );
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.starts_with("# "),
            "{} does not start with a comment saying what it is for",
            file.display()
        );
        let (ok, out, err) = validate(file);
        assert!(ok, "{}: {err}", file.display());
        assert!(out.contains("valid"), "{}: {out}", file.display());
    }
}

#[test]
fn an_example_with_a_misspelt_field_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    for file in examples() {
        let text = std::fs::read_to_string(&file).unwrap();
        // The first key of the file's first section, misspelt.
        let key = text
            .lines()
            .find(|l| l.starts_with("  ") && !l.trim_start().starts_with('#') && l.contains(':'))
            .and_then(|l| l.trim_start().trim_start_matches("- ").split(':').next())
            .unwrap()
            .to_string();
        let bad = tmp.path().join(file.file_name().unwrap());
        std::fs::write(
            &bad,
            text.replacen(&format!("{key}:"), &format!("{key}x:"), 1),
        )
        .unwrap();
        let (ok, _, err) = validate(&bad);
        assert!(!ok, "{} with {key}x was accepted", file.display());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("{key}x")),
            "{}: {err}",
            file.display()
        );
    }
}
