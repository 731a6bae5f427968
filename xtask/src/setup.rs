//! Host setup: Debian packages, the arm64 dpkg architecture, rustup targets.
//!
//! Idempotent and quiet when nothing is missing. apt runs non-interactively; nothing here ever
//! prompts. QEMU's system emulators and qemu-utils must come from the same Debian release (the
//! machine image may carry a newer qemu-utils from backports), so qemu-utils is pinned to the
//! version the emulators resolve to.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::{run as run_cmd, step};

/// What the build, the QEMU harness and the interop tests need on the host.
pub const PACKAGES: &[&str] = &[
    // QEMU, both firmware packages, overlays.
    "qemu-system-arm",
    "qemu-system-x86",
    "qemu-utils",
    "qemu-efi-aarch64",
    "ovmf",
    // Unpacking Debian packages (dpkg-deb) and the interop peers of the image formats.
    "dpkg",
    "gdisk",
    "fdisk",
    "dosfstools",
    "mtools",
    "squashfs-tools",
    "cpio",
    // cryptsetup and veritysetup, for the LUKS2 and dm-verity interop tests.
    "cryptsetup-bin",
    // fw_printenv/fw_setenv and mkimage, for the U-Boot environment and boot script.
    "libubootenv-tool",
    "u-boot-tools",
    // Network namespaces and the networking peers: a real DHCP server and a real NTP server.
    "iproute2",
    "dnsmasq-base",
    "chrony",
    // The PKI interop tests: OpenSSL's command line verifies what `cairnctl gen secrets` makes.
    "openssl",
    // C compilers for ring (the API's TLS crypto) on the musl targets: gcc for x86_64, the aarch64
    // cross gcc and the arm64 libc headers its <stdint.h> includes (.cargo/config.toml names them).
    "gcc",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    // The management API's interop test: Python's gRPC (a client that is not ours) and protoc
    // with the gRPC Python plugin, which compile the shipped .proto files independently of protox.
    "python3",
    "python3-grpcio",
    "python3-protobuf",
    "protobuf-compiler",
    "protobuf-compiler-grpc",
    // A software TPM 2.0 for the TPM sealing tests.
    "swtpm",
    "swtpm-tools",
];

const TARGETS: &[&str] = &["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

pub fn run() -> Result<()> {
    step("setup (host packages, arm64 architecture, rustup targets)");
    let mut updated = false;

    let foreign = output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if !foreign.split_whitespace().any(|a| a == "arm64") {
        eprintln!("    adding the arm64 dpkg architecture");
        privileged(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
        apt_update()?;
        updated = true;
    }

    // The Raspberry Pi firmware is in Debian's non-free-firmware component, which minimal
    // installations do not list.
    if !apt_knows("raspi-firmware") {
        add_non_free_firmware()?;
        apt_update()?;
        updated = true;
    }

    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    let qemu_mismatch = qemu_utils_mismatch();
    if !missing.is_empty() || qemu_mismatch.is_some() {
        eprintln!("    installing {}", missing.join(" "));
        if !updated {
            apt_update()?;
            updated = true;
        }
        let mut args: Vec<String> = vec![
            "install".into(),
            "-y".into(),
            "-q".into(),
            "--no-install-recommends".into(),
            "--allow-downgrades".into(),
        ];
        for p in &missing {
            if *p != "qemu-utils" {
                args.push(p.to_string());
            }
        }
        args.push(match candidate("qemu-system-arm") {
            Some(v) => format!("qemu-utils={v}"),
            None => "qemu-utils".into(),
        });
        privileged(
            Command::new("apt-get")
                .args(&args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    // The arm64 package lists must be present for the aarch64 kernel.
    if !updated
        && !Command::new("apt-cache")
            .args(["show", "--no-all-versions", "linux-image-cloud-arm64:arm64"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        apt_update()?;
    }

    let have = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let want: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| !have.lines().any(|l| l.trim() == *t))
        .collect();
    if !want.is_empty() {
        run_cmd(Command::new("rustup").arg("target").arg("add").args(&want))?;
    }
    crate::fuzz::install()?;
    eprintln!("    ok");
    Ok(())
}

fn apt_knows(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const NON_FREE_FIRMWARE_LIST: &str = "/etc/apt/sources.list.d/cairn-non-free-firmware.sources";

/// Adds the release's non-free-firmware component as a separate deb822 source file, leaving the
/// existing sources untouched.
fn add_non_free_firmware() -> Result<()> {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".into());
    eprintln!("    adding Debian {codename} non-free-firmware ({NON_FREE_FIRMWARE_LIST})");
    let text = format!(
        "# Added by `cargo xtask setup`: the Raspberry Pi firmware (raspi-firmware).\n\
         Types: deb\n\
         URIs: http://deb.debian.org/debian\n\
         Suites: {codename}\n\
         Components: non-free-firmware\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
    let tmp = std::env::temp_dir().join(format!("cairn-nff-{}.sources", std::process::id()));
    std::fs::write(&tmp, text).context("writing a temporary apt source file")?;
    let result = privileged(
        Command::new("install")
            .args(["-m", "0644"])
            .arg(&tmp)
            .arg(NON_FREE_FIRMWARE_LIST),
    );
    let _ = std::fs::remove_file(&tmp);
    result
}

fn apt_update() -> Result<()> {
    eprintln!("    apt-get update");
    privileged(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

fn candidate(package: &str) -> Option<String> {
    let text = output(Command::new("apt-cache").args(["policy", package])).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| v != "(none)")
}

/// Some(version) when qemu-utils is installed at a version other than the emulators'.
fn qemu_utils_mismatch() -> Option<String> {
    let emulator = installed_version("qemu-system-common")?;
    let utils = installed_version("qemu-utils")?;
    (emulator != utils).then_some(emulator)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command as root: directly when we are root, through `sudo -n` otherwise.
fn privileged(cmd: &mut Command) -> Result<()> {
    cmd.stdin(Stdio::null());
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return run_cmd(cmd);
    }
    // sudo drops the environment, so pass it through env(1).
    let mut sudo = Command::new("sudo");
    sudo.args(["-n", "env"]);
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let mut kv = k.to_os_string();
            kv.push("=");
            kv.push(v);
            sudo.arg(kv);
        }
    }
    sudo.arg(cmd.get_program()).args(cmd.get_args());
    run_cmd(sudo.stdin(Stdio::null()))
        .context("setup needs root: run it as root or allow passwordless sudo")
}
