//! Host setup: Debian packages, the arm64 dpkg architecture, rustup targets.
//!
//! Idempotent and quiet when nothing is missing. apt runs non-interactively; nothing here ever
//! prompts. QEMU's system emulators and qemu-utils must come from the same Debian release (the
//! machine image may carry a newer qemu-utils from backports), so qemu-utils is pinned to the
//! version the emulators resolve to.
//!
//! QEMU's `raspi4b` machine (the Raspberry Pi 4 tests) needs QEMU 9.0 or later, newer than
//! bookworm's 7.2. Debian's backports suite builds QEMU 10 against the release's own libraries,
//! so setup fetches that package through a private apt configuration (its own sources list,
//! package lists and download cache), checks it against the signed index as the image builder
//! checks kernel packages, and unpacks it into a per-user prefix
//! ([`cairn_qemu::rpi::install_dir`]). Nothing is installed into the system from backports: the
//! libraries it links are ordinary packages of the release, installed like every other here.

use std::path::{Path, PathBuf};
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
    // e2fsck, dumpe2fs and debugfs check the ext4 file systems cairnd makes.
    "e2fsprogs",
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
    // sbverify: the independent check of Cairn's Authenticode signatures on systemd-boot and
    // the UKIs (image/tests/secureboot_interop.rs, systest/tests/secureboot.rs).
    "sbsigntool",
    // A software TPM 2.0 for the TPM sealing tests.
    "swtpm",
    "swtpm-tools",
    // systemd-measure (package systemd, installed everywhere) is the peer of the PCR 11
    // prediction and the PCR signature (tpm/tests/measure.rs); its `sign` computes the policy
    // in a TPM through these libraries, reaching swtpm with the swtpm TCTI.
    "systemd",
    "libtss2-esys-3.0.2-0",
    "libtss2-rc0",
    "libtss2-mu0",
    "libtss2-tcti-swtpm0",
    // dtc: the interop peer of the harness's device tree writer (Raspberry Pi 4 under QEMU).
    "device-tree-compiler",
    // The host containers test: a real containerd and runc, and the static busybox its images
    // carry (daemon/tests/containers.rs).
    "containerd",
    "runc",
    "busybox-static",
    // A real OCI registry (distribution 2.8) for the registry client's tests; the tests run
    // its binary themselves, never its systemd service.
    "docker-registry",
    // A second hawkBit DDI client (swupdate's suricatta) against the DDI double
    // (api/tests/ddi_swupdate.rs); openssl signs its .swu images there.
    "swupdate",
    "openssl",
];

/// The package with QEMU's Arm system emulators, fetched from `<codename>-backports`.
const RASPI_QEMU_PACKAGE: &str = "qemu-system-arm";

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
    raspi_qemu()?;
    eprintln!("    ok");
    Ok(())
}

/// Whether `binary` runs and offers the `raspi4b` machine.
fn has_raspi4b(binary: &Path) -> bool {
    let mut cmd = Command::new(binary);
    cmd.args(["-machine", "help"]);
    if let Some(dir) = binary.parent().and_then(Path::parent) {
        cmd.env("QEMU_MODULE_DIR", dir.join("lib/qemu-modules"));
    }
    cmd.output().is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(cairn_qemu::rpi::MACHINE))
    })
}

/// Provides the QEMU for `raspi4b` in the per-user prefix, unless a working one is there.
fn raspi_qemu() -> Result<()> {
    let binary = cairn_qemu::rpi::prefix().join("usr/bin/qemu-system-aarch64");
    if has_raspi4b(&binary) {
        return Ok(());
    }
    let dir = cairn_qemu::rpi::install_dir();
    let codename = codename();
    let suite = format!("{codename}-backports");
    eprintln!(
        "    fetching {RASPI_QEMU_PACKAGE} from {suite} (QEMU with raspi4b) into {}",
        dir.display()
    );
    let apt = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(apt.join(sub))
            .with_context(|| format!("creating {}", apt.join(sub).display()))?;
    }
    let sources = apt.join("sources.list");
    std::fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {suite} main\n",
            debian_archive_uri(&codename)
        ),
    )
    .with_context(|| format!("writing {}", sources.display()))?;
    let host_arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let options: Vec<String> = vec![
        format!("Dir::Etc::SourceList={}", sources.display()),
        format!(
            "Dir::Etc::SourceParts={}",
            apt.join("sources.list.d").display()
        ),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        format!("APT::Architectures={host_arch}"),
    ];
    let mut update = Command::new("apt-get");
    for o in &options {
        update.args(["-o", o]);
    }
    run_cmd(update.args(["update", "-q"]).stdin(Stdio::null()))
        .with_context(|| format!("reading the {suite} package index"))?;

    let cache = cairn_image::deb::Cache::with_apt_options(&dir, options);
    let fetched = cache
        .fetch(RASPI_QEMU_PACKAGE, &host_arch)
        .with_context(|| format!("fetching {RASPI_QEMU_PACKAGE} from {suite}"))?;
    let record = &fetched.record;
    eprintln!(
        "    {} {} (sha256 {}, as {suite}'s signed index says)",
        record.package, record.version, record.sha256
    );

    // Its libraries come from the release itself: install the ones missing.
    let missing: Vec<String> = record
        .depends
        .split(',')
        .filter_map(|d| d.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name).to_string())
        .filter(|name| !name.starts_with("qemu-") && !installed(name))
        .collect();
    if !missing.is_empty() {
        eprintln!("    installing its libraries: {}", missing.join(" "));
        privileged(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    // Point `current` at the unpacked tree: a new link, renamed over the old one.
    let link = cairn_qemu::rpi::prefix();
    let tmp = dir.join(format!(".current-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&fetched.root, &tmp)
        .with_context(|| format!("linking {}", tmp.display()))?;
    std::fs::rename(&tmp, &link).with_context(|| format!("replacing {}", link.display()))?;
    if !has_raspi4b(&binary) {
        bail!(
            "{} from {RASPI_QEMU_PACKAGE} {} does not run or has no {} machine",
            binary.display(),
            record.version,
            cairn_qemu::rpi::MACHINE
        );
    }
    Ok(())
}

/// The release's codename (`bookworm`).
fn codename() -> String {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".into())
}

/// The Debian archive the host's own apt sources use for `codename` (deb822 `.sources` files
/// or one-line `.list` entries), so the backports suite comes from the same mirror.
fn debian_archive_uri(codename: &str) -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let name = file.to_string_lossy();
        if !(name.ends_with(".list") || name.ends_with(".sources")) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(uri) = archive_uri_in(&text, codename) {
            return uri;
        }
    }
    "http://deb.debian.org/debian".into()
}

/// The URI of the first entry in `text` that lists suite `codename` with component main.
fn archive_uri_in(text: &str, codename: &str) -> Option<String> {
    // One-line style: deb [options] URI suite components...
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']'))?;
            rest.drain(..=end);
        }
        if rest.len() >= 3 && rest[1] == codename && rest[2..].contains(&"main") {
            return Some(rest[0].to_string());
        }
    }
    // deb822 style: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let listed = |name: &str, want: &str| {
            field(name).is_some_and(|v| v.split_whitespace().any(|w| w == want))
        };
        if listed("Types", "deb") && listed("Suites", codename) && listed("Components", "main") {
            if let Some(uri) =
                field("URIs").and_then(|u| u.split_whitespace().next().map(str::to_string))
            {
                return Some(uri);
            }
        }
    }
    None
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
    let codename = codename();
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

#[cfg(test)]
mod tests {
    use super::archive_uri_in;

    #[test]
    fn finds_the_hosts_archive() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            archive_uri_in(deb822, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "deb-src http://a/debian bookworm main\ndeb [arch=amd64 signed-by=/k] http://b/debian bookworm main contrib\n";
        assert_eq!(
            archive_uri_in(one_line, "bookworm").as_deref(),
            Some("http://b/debian")
        );
        assert_eq!(
            archive_uri_in("deb http://c/debian trixie main\n", "bookworm"),
            None
        );
        let firmware_only =
            "Types: deb\nURIs: http://d/debian\nSuites: bookworm\nComponents: non-free-firmware\n";
        assert_eq!(archive_uri_in(firmware_only, "bookworm"), None);
    }
}
