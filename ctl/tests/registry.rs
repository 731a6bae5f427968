//! `cairnctl bundle push` and `bundle pull` against a real registry (Debian's docker-registry,
//! distribution 2.8, with token auth), started and stopped by the test; skipped with one line
//! when it is not installed.

use std::path::Path;
use std::process::Command;

use cairn_api::registry::{self, Client, Credentials, Reference};
use cairn_api::testing_registry::{Registry, PASSWORD, USER};

fn cairnctl(args: &[&str], password: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
    cmd.args(args).env_remove("CAIRN_REGISTRY_PASSWORD");
    if let Some(p) = password {
        cmd.env("CAIRN_REGISTRY_PASSWORD", p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A signed bundle of noise payloads, version 2.3.4 for qemu-x86_64.
fn bundle(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    let mut x = 0x9e37_79b9u32;
    let noise: Vec<u8> = (0..(2 << 20) + 777)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(&root, &noise).unwrap();
    let meta = cairn_bundle::ManifestMeta {
        compatible: vec!["qemu-x86_64".into()],
        arch: "x86_64".into(),
        version: cairn_bundle::Version::parse("2.3.4").unwrap(),
        security_version: 1,
        min_installed_version: cairn_bundle::Version::parse("0.0.0").unwrap(),
        created: 1_700_000_000,
    };
    let path = dir.join("release.cairn");
    let mut out = std::fs::File::create(&path).unwrap();
    cairn_bundle::create(
        &mut out,
        &meta,
        &[cairn_bundle::PayloadSource {
            name: "rootfs".into(),
            role: cairn_bundle::Role::Rootfs,
            path: root,
            chunk_size: 1 << 20,
        }],
        &cairn_bundle::SecretKey::from_bytes([9; 32]),
    )
    .unwrap();
    path
}

#[test]
fn a_bundle_pushed_with_cairnctl_pulls_back_byte_identical() {
    let Some(registry) = Registry::start(true) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = bundle(dir);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, registry.ca_pem()).unwrap();
    let ca = ca.to_str().unwrap();
    let reference = format!("oci://{}/cairn/x86:2.3.4", registry.host());

    let (ok, out, err) = cairnctl(
        &[
            "bundle",
            "push",
            file.to_str().unwrap(),
            &reference,
            "--ca",
            ca,
            "--username",
            USER,
        ],
        Some(PASSWORD),
    );
    assert!(ok, "{err}\n{}", registry.log());
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("digest "))
        .unwrap()
        .to_string();
    assert!(registry::is_digest(&digest), "{out}");

    // The artifact as the registry holds it.
    let client = Client::new(
        registry.roots(),
        Some(Credentials {
            username: USER.into(),
            password: PASSWORD.into(),
        }),
    )
    .unwrap();
    let (manifest, layer) = client
        .bundle(&Reference::parse(&reference).unwrap())
        .unwrap();
    assert_eq!(manifest.digest, digest);
    let annotations = &manifest.doc.annotations;
    assert_eq!(annotations[registry::ANNOTATION_BOARD], "qemu-x86_64");
    assert_eq!(annotations[registry::ANNOTATION_ARCH], "x86_64");
    assert_eq!(annotations[registry::ANNOTATION_VERSION], "2.3.4");
    assert_eq!(
        layer.annotations[registry::ANNOTATION_TITLE],
        "release.cairn"
    );
    assert_eq!(
        manifest.doc.config.as_ref().unwrap().media_type,
        registry::EMPTY_TYPE
    );

    // By tag and by digest, byte-identical.
    let by_digest = format!("{}/cairn/x86@{digest}", registry.host());
    for (n, r) in [reference.as_str(), by_digest.as_str()]
        .into_iter()
        .enumerate()
    {
        let out = dir.join(format!("pulled-{n}.cairn"));
        let (ok, stdout, err) = cairnctl(
            &[
                "bundle",
                "pull",
                r,
                "--out",
                out.to_str().unwrap(),
                "--ca",
                ca,
                "--username",
                USER,
            ],
            Some(PASSWORD),
        );
        assert!(ok, "{err}");
        assert!(stdout.contains("version 2.3.4"), "{stdout}");
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());
    }

    // What it refuses, one line each.
    let exists = dir.join("pulled-0.cairn");
    for (args, password, want) in [
        (
            vec![
                "bundle",
                "pull",
                &reference,
                "--out",
                exists.to_str().unwrap(),
                "--ca",
                ca,
                "--username",
                USER,
            ],
            Some(PASSWORD),
            "exists already",
        ),
        (
            vec![
                "bundle",
                "pull",
                &reference,
                "--out",
                "/tmp/never.cairn",
                "--ca",
                ca,
            ],
            None,
            "asks for credentials (Bearer) and none are configured",
        ),
        (
            vec![
                "bundle",
                "pull",
                &reference,
                "--out",
                "/tmp/never.cairn",
                "--ca",
                ca,
                "--username",
                USER,
            ],
            None,
            "needs the password in CAIRN_REGISTRY_PASSWORD",
        ),
        (
            vec![
                "bundle",
                "push",
                ca,
                &reference,
                "--ca",
                ca,
                "--username",
                USER,
            ],
            Some(PASSWORD),
            "is not a bundle",
        ),
        (
            vec![
                "bundle",
                "pull",
                "registry.example/x",
                "--out",
                "/tmp/never.cairn",
            ],
            None,
            "names no tag",
        ),
    ] {
        let (ok, _, err) = cairnctl(&args, password);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }
    assert!(!Path::new("/tmp/never.cairn").exists());
}

#[test]
fn upgrade_checks_an_oci_reference_before_it_connects() {
    let (ok, _, err) = cairnctl(&["upgrade", "oci://registry.example/Bad:1"], None);
    assert!(!ok, "{err}");
    assert_eq!(
        err.trim_end(),
        "cairnctl: \"oci://registry.example/Bad:1\" is not an OCI reference: the repository is not lower-case letters, digits and . _ - between slashes"
    );
    let (ok, _, err) = cairnctl(&["upgrade", "ftp://x/y"], None);
    assert!(!ok && err.contains("oci://registry/repo:tag"), "{err}");
}
