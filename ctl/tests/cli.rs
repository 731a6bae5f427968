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

/// A k3s whose sha256 is not the pinned one is refused in one line before anything is built.
#[test]
fn a_k3s_with_another_sha256_is_refused_before_anything_is_built() {
    let device_bin = std::env::var_os("CAIRN_DEVICE_BIN_X86_64")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-musl/device/cairn")
        });
    if !device_bin.is_file() {
        println!("skipped: no device binary (cargo xtask device)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // Any x86_64 program stands in for the operator's k3s; its hash is not the one pinned.
    let (ok, _, err) = cairnctl(&[
        "image",
        "build",
        "--board",
        "qemu-x86_64",
        "--out",
        out.to_str().unwrap(),
        "--device-bin",
        device_bin.to_str().unwrap(),
        "--k3s",
        device_bin.to_str().unwrap(),
        "--k3s-sha256",
        &"ab".repeat(32),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("--k3s-sha256 says {}", "ab".repeat(32))),
        "{err}"
    );
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
fn help_names_the_machine_config_format_and_the_tpm_switch() {
    let (ok, out, _) = cairnctl(&["image", "build", "--help"]);
    assert!(ok);
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("Machine config (YAML"), "{out}");
    assert!(!flat.contains("config JSON"), "{out}");
    let (ok, out, _) = cairnctl(&["qemu", "run", "--help"]);
    assert!(ok);
    assert!(out.contains("--no-tpm"), "{out}");
    assert!(out.contains("swtpm"), "{out}");
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

/// An image folder with just what `image slots` reads: image.json and a disk whose ESP holds
/// a fresh image's two entries.
fn slot_image() -> tempfile::TempDir {
    let mut esp = cairn_image::formats::tree::Tree::new();
    for (name, slot) in [("cairn-1-a.conf", "a"), ("cairn-0-b.conf", "b")] {
        let text = format!(
            "title Cairn (slot {slot})\nlinux /EFI/cairn/{slot}/vmlinuz\noptions cairn.slot={slot}\n"
        );
        esp.add_file(&format!("loader/entries/{name}"), 0o644, text.into_bytes())
            .unwrap();
    }
    image_with_fat("systemd-boot", "ESP", &esp)
}

/// image.json naming `kind` and one FAT partition `label` holding `tree`, and its disk.img.
fn image_with_fat(
    kind: &str,
    label: &str,
    tree: &cairn_image::formats::tree::Tree,
) -> tempfile::TempDir {
    use cairn_image::formats::{fat, region::Region};
    let dir = tempfile::tempdir().unwrap();
    let (offset, len) = (1u64 << 20, 40u64 << 20);
    let disk = dir.path().join("disk.img");
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&disk)
        .unwrap();
    file.set_len(offset + len + (1 << 20)).unwrap();
    fat::write_fat32(
        Region::new(&mut file, label, offset, len),
        len,
        7,
        label,
        tree,
    )
    .unwrap();
    let json = format!(
        r#"{{"boot":{{"kind":"{kind}"}},"partitions":[{{"label":"{label}","offset":{offset},"size":{len}}}]}}"#
    );
    std::fs::write(dir.path().join("image.json"), json).unwrap();
    dir
}

#[test]
fn image_slots_trial_commit_and_bad_input() {
    let img = slot_image();
    let path = img.path().to_str().unwrap();
    let (ok, out, err) = cairnctl(&["image", "slots", "--image", path]);
    assert!(ok, "{err}");
    assert!(out.contains("next boot   a"), "{out}");

    let (ok, out, err) = cairnctl(&[
        "image",
        "slots",
        "--image",
        path,
        "--set-trial",
        "b",
        "--tries",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("next boot   b"), "{out}");
    assert!(
        out.contains("slot b      bootable=yes successful=no priority=2 tries_left=2"),
        "{out}"
    );

    let (ok, out, err) = cairnctl(&["image", "slots", "--image", path, "--mark-good", "b"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("slot b      bootable=yes successful=yes"),
        "{out}"
    );

    let (ok, out, err) = cairnctl(&["image", "slots", "--image", path, "--mark-bad", "a"]);
    assert!(ok, "{err}");
    assert!(out.contains("slot a      bootable=no"), "{out}");
    assert!(out.contains("next boot   b"), "{out}");

    // B is now the only bootable slot: marking it bad too is refused, and nothing changes.
    let (ok, _, err) = cairnctl(&["image", "slots", "--image", path, "--mark-bad", "b"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    let (_, out, _) = cairnctl(&["image", "slots", "--image", path]);
    assert!(out.contains("next boot   b"), "{out}");

    let (ok, _, err) = cairnctl(&["image", "slots", "--image", path, "--set-trial", "c"]);
    assert!(!ok);
    assert!(err.starts_with("cairnctl: unknown slot `c`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let (ok, _, err) = cairnctl(&["image", "slots", "--image", "/nonexistent/img"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/img/image.json"), "{err}");
}

#[test]
fn image_slots_on_a_raspberry_pi_card() {
    let mut boot = cairn_image::formats::tree::Tree::new();
    boot.add_file(
        "autoboot.txt",
        0o644,
        cairn_boot::tryboot::autoboot_txt(2, 3).into_bytes(),
    )
    .unwrap();
    let img = image_with_fat("rpi-tryboot", "BOOT", &boot);
    let path = img.path().to_str().unwrap();
    let (ok, out, err) = cairnctl(&["image", "slots", "--image", path, "--set-trial", "b"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"0 tryboot\""), "{out}");
    assert!(out.contains("next boot   a"), "{out}");
    let (ok, out, err) = cairnctl(&["image", "slots", "--image", path, "--mark-good", "b"]);
    assert!(ok, "{err}");
    assert!(out.contains("next boot   b"), "{out}");
}

#[test]
fn keys_gen_writes_a_private_secret_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("release");
    let p = prefix.to_str().unwrap();
    let (ok, out, err) = cairnctl(&["keys", "gen", "--out", p]);
    assert!(ok, "{err}");
    assert!(out.starts_with("key "), "{out}");
    let secret = tmp.path().join("release.key");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = std::fs::read_to_string(tmp.path().join("release.pub")).unwrap();
    assert!(public.starts_with("cairn-ed25519-public "), "{public}");
    let before = std::fs::read(&secret).unwrap();
    let (ok, _, err) = cairnctl(&["keys", "gen", "--out", p]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        before,
        "the key is untouched"
    );
}

/// A bundle signed with a key from `cairnctl keys gen`, made through the library.
fn signed_bundle(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let prefix = dir.join("k");
    let (ok, _, err) = cairnctl(&["keys", "gen", "--out", prefix.to_str().unwrap()]);
    assert!(ok, "{err}");
    let secret =
        cairn_bundle::SecretKey::from_text(&std::fs::read_to_string(dir.join("k.key")).unwrap())
            .unwrap();
    let payload = dir.join("root.img");
    std::fs::write(
        &payload,
        (0..300_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let meta = cairn_bundle::ManifestMeta {
        compatible: vec!["qemu-x86_64".into()],
        arch: "x86_64".into(),
        version: "1.2.3".parse().unwrap(),
        security_version: 1,
        min_installed_version: "0.1.0".parse().unwrap(),
        created: 1_700_000_000,
    };
    let sources = [cairn_bundle::PayloadSource {
        name: "rootfs".into(),
        role: cairn_bundle::Role::Rootfs,
        path: payload,
        chunk_size: 64 * 1024,
    }];
    let bundle = dir.join("x.cairn");
    let mut out = std::fs::File::create(&bundle).unwrap();
    cairn_bundle::create(&mut out, &meta, &sources, &secret).unwrap();
    (bundle, dir.join("k.pub"))
}

#[test]
fn bundle_inspect_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, public) = signed_bundle(tmp.path());
    let b = bundle.to_str().unwrap();

    let (ok, out, err) = cairnctl(&["bundle", "inspect", b]);
    assert!(ok, "{err}");
    assert!(out.contains("version      1.2.3"), "{out}");
    assert!(out.contains("signature    not checked"), "{out}");
    let (ok, out, err) = cairnctl(&["bundle", "inspect", "--json", b]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["payloads"][0]["size"], 300_000);
    assert_eq!(json["compatible"][0], "qemu-x86_64");

    let (ok, out, err) = cairnctl(&["bundle", "verify", "--pubkey", public.to_str().unwrap(), b]);
    assert!(ok, "{err}");
    assert!(out.contains("signature    good"), "{out}");

    // Another key: refused, one line.
    let other = tmp.path().join("other");
    assert!(cairnctl(&["keys", "gen", "--out", other.to_str().unwrap()]).0);
    let (ok, _, err) = cairnctl(&["bundle", "verify", "--pubkey", "/dev/null", b]);
    assert!(!ok, "an empty keyring trusts nothing");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (ok, _, err) = cairnctl(&[
        "bundle",
        "verify",
        "--pubkey",
        tmp.path().join("other.pub").to_str().unwrap(),
        b,
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("x.cairn failed verification"), "{err}");

    // One flipped payload byte (the payload starts on a 4096 boundary after the manifest).
    let mut bytes = std::fs::read(&bundle).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    std::fs::write(&bundle, &bytes).unwrap();
    let (ok, _, err) = cairnctl(&["bundle", "verify", "--pubkey", public.to_str().unwrap(), b]);
    assert!(!ok);
    assert!(err.contains("rootfs") && err.contains("chunk"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A file that is not a bundle at all.
    let junk = tmp.path().join("junk.cairn");
    std::fs::write(&junk, b"hello").unwrap();
    let (ok, _, err) = cairnctl(&["bundle", "inspect", junk.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn bundle_create_from_a_built_image_then_verify_and_extract() {
    let images = std::path::PathBuf::from(std::env::var_os("CAIRN_IMAGES").unwrap());
    let keys = std::path::PathBuf::from(std::env::var_os("CAIRN_KEYS").unwrap());
    let image = images.join("qemu-x86_64");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.cairn");
    let key = keys.join("dev.key");
    let create = |board: &str, from: &std::path::Path| {
        cairnctl(&[
            "bundle",
            "create",
            "--board",
            board,
            "--key",
            key.to_str().unwrap(),
            "--from",
            from.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let public = keys.join("dev.pub");
    let extract = |payload: &str, to: &std::path::Path| {
        cairnctl(&[
            "bundle",
            "extract",
            "--pubkey",
            public.to_str().unwrap(),
            "--payload",
            payload,
            "--to",
            to.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
    };
    let (s, _, err) = create("qemu-aarch64", &image);
    assert!(
        !s && err.contains("is an image for qemu-x86_64, not qemu-aarch64"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written on a refusal");
    let (s, _, err) = create("qemu-x86_64", dir.path());
    assert!(!s && err.contains("image.json"), "{err}");
    let (s, stdout, err) = create("qemu-x86_64", &image);
    assert!(s, "{err}");
    for name in ["boot.json", "rootfs", "uki-a.efi", "uki-b.efi"] {
        assert!(stdout.contains(name), "{stdout}");
    }
    let (s, stdout, err) = cairnctl(&[
        "bundle",
        "verify",
        "--pubkey",
        public.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(s && stdout.contains("every chunk matches"), "{err}");
    // The extracted rootfs is byte for byte ROOT-A's squashfs and hash tree, and the containers
    // extension after them when the image has one.
    let rootfs = dir.path().join("rootfs.img");
    let (s, _, err) = extract("rootfs", &rootfs);
    assert!(s, "{err}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image.join("image.json")).unwrap()).unwrap();
    let slot = &manifest["slots"][0];
    let part = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "ROOT-A")
        .unwrap();
    let len = match slot["extension"].as_object() {
        Some(ext) => ext["offset"].as_u64().unwrap() + ext["size"].as_u64().unwrap(),
        None => slot["hash_offset"].as_u64().unwrap() + slot["hash_size"].as_u64().unwrap(),
    };
    let disk = std::fs::read(image.join("disk.img")).unwrap();
    let offset = part["offset"].as_u64().unwrap() as usize;
    assert!(std::fs::read(&rootfs).unwrap() == disk[offset..offset + len as usize]);
    let (s, _, err) = extract("nope", &rootfs);
    assert!(!s && err.contains("has no payload \"nope\""), "{err}");
}

#[test]
fn the_published_schema_is_what_cairnctl_prints() {
    let (ok, out, err) = cairnctl(&["config", "schema"]);
    assert!(ok, "{err}");
    let published = include_str!("../../docs/machine-config.schema.json");
    assert_eq!(
        out, published,
        "docs/machine-config.schema.json is stale: regenerate it with \
         `cargo run -p cairnctl -- config schema > docs/machine-config.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    let props = schema["properties"].as_object().unwrap();
    for section in ["health", "update", "network"] {
        assert!(
            props.contains_key(section),
            "{section} missing from the schema"
        );
    }
}

#[test]
fn config_validate_accepts_good_files_and_names_the_bad_field() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.yaml");
    std::fs::write(
        &good,
        "network:\n  interfaces:\n    - name: eth0\n      addresses: [10.0.2.50/24]\n      \
         routes: [{to: 0.0.0.0/0, via: 10.0.2.2}]\n  nameservers: [10.0.2.3]\n",
    )
    .unwrap();
    let (ok, out, err) = cairnctl(&["config", "validate", good.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("valid") && out.contains("1 configured (eth0)"),
        "{out}"
    );

    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "network:\n  interfaces:\n    - name: eth0\n      addresses: [10.0.2.50/24]\n      \
         routes: [{to: 0.0.0.0/0, via: 10.9.9.1}]\n",
    )
    .unwrap();
    let (ok, _, err) = cairnctl(&["config", "validate", bad.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("network.interfaces[0].routes[0].via: gateway 10.9.9.1 is not on any link"),
        "{err}"
    );

    // A host container's volume must be a folder on DATA, not STATE.
    let volume = tmp.path().join("volume.yaml");
    std::fs::write(
        &volume,
        "containers:\n  - name: web\n    image: /var/lib/cairn-images/web.tar\n    \
         volumes: [{host: /var/lib/cairn/pki, path: /data}]\n",
    )
    .unwrap();
    let (ok, _, err) = cairnctl(&["config", "validate", volume.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("containers[0].volumes[0].host: \"/var/lib/cairn/pki\" overlaps /var/lib/cairn, which holds STATE (not DATA)"),
        "{err}"
    );
}

#[test]
fn a_kubernetes_section_needs_an_image_with_k3s() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("k8s.yaml");
    std::fs::write(
        &config,
        "kubernetes:\n  disable: [traefik]\n  workloads:\n    - {kind: Deployment, namespace: kube-system, name: coredns}\n",
    )
    .unwrap();
    let (ok, out, err) = cairnctl(&["config", "validate", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("kubernetes: k3s (the image must be built with --k3s)")
            && out.contains("1 workload(s) gating updates"),
        "{out}"
    );
    let (ok, _, err) = cairnctl(&["config", "validate", "--no-k3s", config.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("kubernetes: the image has no k3s (/usr/bin/k3s)"),
        "{err}"
    );

    // The image builder refuses it before building anything.
    let out_dir = tmp.path().join("image");
    let (ok, _, err) = cairnctl(&[
        "image",
        "build",
        "--board",
        "qemu-x86_64",
        "--out",
        out_dir.to_str().unwrap(),
        "--machine-config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot go into this image: kubernetes: this image has no k3s"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing was built");

    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "kubernetes: {flannel_backend: ipsec}\n").unwrap();
    let (ok, _, err) = cairnctl(&["config", "validate", bad.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("kubernetes.flannel_backend: \"ipsec\" is not one of vxlan, host-gw, wireguard-native, none"),
        "{err}"
    );
}
