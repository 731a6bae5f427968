//! `cargo xtask`: everything a fresh Debian machine needs to build, boot and test Cairn.
//!
//! - `setup`  installs the host packages, the arm64 dpkg architecture and the rustup targets
//!   (idempotent; apt runs only when something is missing).
//! - `device` builds the static device binary for both architectures.
//! - `images` builds the QEMU board images into target/cairn/images/<board>.
//! - `demo`   builds the qemu-aarch64 image, boots it, shows the console and a summary.
//! - `test`   setup, lints, device binaries, images, then every test including QEMU boots.
//! - `systests` only the system tests (QEMU boots), side by side, against the images and device
//!   binaries already built (by `test` or `images`); it builds cairnctl.
//! - `powercut --points N --seed S [--board B] [--install-every K] [--scenario S] [--jobs J]`
//!   cuts the power during updates at N points (systest/src/powercut.rs), booting J cut disks at
//!   once (default: one per core), and prints the table per phase.
//! - `soak --cycles N [--board B]` runs N update cycles on one machine (good, rollback,
//!   unhealthy, hanging; systest/src/soak.rs) and prints how they ended and cairnd's memory.
//! - `report` boots each QEMU board (and the Raspberry Pi 4 under raspi4b) five times per series
//!   and prints the footprint and boot-time figures; `report BOARD…` measures only those boards.
//! - `bench-containers [BOARD…]` host containers in the guest under QEMU: containerd's idle
//!   memory, cairnd's added memory, and a container's start through cairnd next to `ctr run`
//!   by hand (xtask/src/bench_containers.rs).

mod bench;
mod bench_containers;
mod cfgscan;
mod fuzz;
mod report;
mod setup;
mod systests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use cairn_board::{Arch, Board};

const ARCHES: [Arch; 2] = [Arch::Aarch64, Arch::X86_64];

fn main() -> ExitCode {
    xtask_build_secs();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("device") => device().map(|_| ()),
        Some("images") => setup::run().and_then(|_| images().map(|_| ())),
        Some("demo") => demo(),
        Some("test") => test(),
        Some("systests") => {
            let result = systests::run(&test_env(), systests::Selection::Suite);
            print_step_times();
            result
        }
        Some("matrix") => {
            let result = setup::run()
                .and_then(|_| images())
                .and_then(|_| systests::run(&test_env(), systests::Selection::Matrix));
            print_step_times();
            result
        }
        Some("report") => setup::run().and_then(|_| report::run(&report_images(&args[1..])?)),
        Some("fuzz") => fuzz::command(&args[1..]),
        Some("powercut") => powercut(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("bench-install") => bench::run_bench(),
        Some("bench-prep") => bench::prep(),
        Some("bench-net") => bench_net(),
        Some("bench-api") => bench_api(),
        Some("bench-containers") => {
            setup::run().and_then(|_| bench_containers::command(&args[1..]))
        }
        Some("fleet") => fleet(&args[1..]),
        Some("hawkbit-mock") => hawkbit_mock(),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|device|images|demo|test|systests|matrix|report|fuzz|powercut|soak|bench-install|bench-net|bench-api|bench-containers|fleet|hawkbit-mock>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("xtask: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

/// A staged rollout over simulated devices, each running cairnd's hawkBit agent, against the
/// DDI double on loopback (daemon/examples/fleet.rs; its options are passed on).
fn fleet(args: &[String]) -> Result<()> {
    step("fleet: a staged hawkBit rollout over simulated devices");
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "cairn-daemon",
            "--example",
            "fleet",
            "--",
        ])
        .args(args))
}

/// The DDI double and cairnd's DDI JSON against the `hawkbit_mock` crate (interop/hawkbit-mock,
/// outside the workspace: its dependencies are a long build of their own).
fn hawkbit_mock() -> Result<()> {
    step("hawkBit: the DDI double against hawkbit_mock");
    run(cargo()
        .args(["test", "--manifest-path", "interop/hawkbit-mock/Cargo.toml"])
        .env("CARGO_TARGET_DIR", target_dir().join("hawkbit-mock")))
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("CAIRN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("cairn/cache"))
}

pub fn images_dir() -> PathBuf {
    target_dir().join("cairn/images")
}

pub fn device_bin(arch: Arch) -> PathBuf {
    target_dir().join(arch.rust_target()).join("device/cairn")
}

/// The host's target triple (`rustc -vV`).
pub fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV named no host")
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// The steps so far and when each began, for the timing table `cargo xtask test` ends with.
static STEPS: std::sync::Mutex<Vec<(String, Instant)>> = std::sync::Mutex::new(Vec::new());

pub fn step(title: &str) {
    eprintln!("\n==> {title}");
    STEPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((title.to_string(), Instant::now()));
}

/// Prints how long each step took (until the next began, the last until now), so the suite's
/// growth shows stage by stage.
fn print_step_times() {
    let steps = STEPS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(first) = steps.first().map(|s| s.1) else {
        return;
    };
    eprintln!("\n==> time per stage");
    let now = Instant::now();
    let built = xtask_build_secs();
    if let Some(secs) = built {
        eprintln!("    {secs:>7.1} s  (cargo building xtask, before the first stage)");
    }
    for (i, (title, began)) in steps.iter().enumerate() {
        let end = steps.get(i + 1).map_or(now, |s| s.1);
        eprintln!("    {:>7.1} s  {title}", (end - *began).as_secs_f64());
    }
    let all = (now - first).as_secs_f64();
    match built {
        Some(secs) => eprintln!(
            "    {:>7.1} s  in all, the build of xtask included",
            all + secs
        ),
        None => eprintln!("    {all:>7.1} s  in all"),
    }
}

/// How long this process ran before xtask's `main`: the time cargo took to build xtask, as
/// `cargo run` (which `cargo xtask` is) turns itself into the program it built, keeping its
/// pid and so its start time. Read once, at the start of `main`.
static BUILD_SECS: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();

fn xtask_build_secs() -> Option<f64> {
    *BUILD_SECS.get_or_init(|| {
        // Field 22 of /proc/self/stat, the start in clock ticks since boot; the fields after
        // the command name (which may hold spaces) are counted from its closing parenthesis.
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let started: u64 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()?;
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
        Some(uptime - started as f64 / ticks as f64).filter(|&s| s >= 0.0)
    })
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Builds the device binary for both musl targets; returns their paths.
fn device() -> Result<Vec<PathBuf>> {
    step("device binary (static musl, aarch64 + x86_64)");
    // One cargo for both targets: each link is one long single-threaded LTO step
    // (codegen-units = 1), and side by side the two keep both cores busy.
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--quiet",
        "--package",
        "cairn-device",
        "--profile",
        "device",
    ]);
    for arch in ARCHES {
        cmd.args(["--target", arch.rust_target()]);
    }
    run(&mut cmd)?;
    let mut out = Vec::new();
    for arch in ARCHES {
        let bin = device_bin(arch);
        let size = std::fs::metadata(&bin)
            .with_context(|| format!("reading {}", bin.display()))?
            .len();
        eprintln!("    {:<8} {:>8} bytes  {}", arch, size, bin.display());
        out.push(bin);
    }
    Ok(out)
}

/// Builds every board's image (device binaries first); returns (board, image dir).
fn images() -> Result<Vec<(&'static Board, PathBuf)>> {
    device()?;
    let mut out = Vec::new();
    for board in cairn_board::BOARDS {
        out.push((board, image(board)?));
    }
    Ok(out)
}

/// The images `report` measures: the boards named (all when none is), built first.
fn report_images(names: &[String]) -> Result<Vec<(&'static Board, PathBuf)>> {
    if names.is_empty() {
        return images();
    }
    let boards = names
        .iter()
        .map(|n| cairn_board::find(n))
        .collect::<Result<Vec<_>, _>>()?;
    device()?;
    boards.into_iter().map(|b| Ok((b, image(b)?))).collect()
}

/// Where the development signing key lives: `dev.key` and `dev.pub`, made once per checkout.
pub fn keys_dir() -> PathBuf {
    target_dir().join("cairn/keys")
}

/// The development key's public half (generated on first use); images built here trust it.
fn dev_keyring() -> Result<String> {
    let dir = keys_dir();
    let (secret, public) = (dir.join("dev.key"), dir.join("dev.pub"));
    if !secret.is_file() || !public.is_file() {
        std::fs::create_dir_all(&dir)?;
        let key = cairn_bundle::SecretKey::generate()?;
        std::fs::write(&secret, key.to_text())?;
        std::fs::write(&public, key.public().to_text())?;
        eprintln!(
            "    new development signing key {} in {}",
            key.key_id(),
            dir.display()
        );
    }
    Ok(std::fs::read_to_string(&public)?)
}

/// The development API secrets (generated on first use, in `<keys>/secrets/`): images built
/// here trust its client CA, and `cairnctl --config <keys>/secrets/cairnctl.yaml` talks to them.
fn dev_api_secrets() -> Result<cairn_image::ApiSecrets> {
    let dir = keys_dir().join("secrets");
    if !dir.join(cairn_pki::secrets::CLIENT_CONFIG).is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(keys_dir())?;
        cairn_pki::secrets::Secrets::generate(&cairn_pki::secrets::Options {
            name: "cairn development".into(),
            client_days: 3650,
        })?
        .write_new(&dir)?;
        eprintln!("    new development API secrets in {}", dir.display());
    }
    let s = cairn_pki::secrets::DeviceSecrets::load(&dir)?;
    Ok(cairn_image::ApiSecrets {
        client_ca: s.client_ca,
        device_ca: s.device_ca,
        device_ca_key: s.device_ca_key,
    })
}

fn image(board: &'static Board) -> Result<PathBuf> {
    step(&format!("image {}", board.name));
    build_image(board, images_dir().join(board.name), None)
}

/// The development Secure Boot keys (`cairnctl keys gen-secureboot`'s set, made on first use
/// in `<keys>/secureboot/`).
pub fn dev_secure_boot_keys() -> Result<PathBuf> {
    let dir = keys_dir().join("secureboot");
    if !dir.join("db.key").is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        cairn_secureboot::keys::generate(&dir)?;
        eprintln!("    new development Secure Boot keys in {}", dir.display());
    }
    Ok(dir)
}

/// The board's image signed for Secure Boot with the keys in `keys` (its UKIs carry the PCR 11
/// signature too), without the containers extension, in `<images>/<board>-secureboot`.
pub fn signed_image(board: &'static Board, keys: &Path) -> Result<PathBuf> {
    step(&format!("image {}, signed for Secure Boot", board.name));
    let out = images_dir().join(format!("{}-secureboot", board.name));
    build_image(board, out, Some(keys.to_path_buf()))
}

fn build_image(
    board: &'static Board,
    out: PathBuf,
    secure_boot: Option<PathBuf>,
) -> Result<PathBuf> {
    let started = Instant::now();
    let signed = secure_boot.is_some();
    let version = env!("CARGO_PKG_VERSION").to_string();
    let manifest = cairn_image::build(&cairn_image::BuildOptions {
        board,
        out: out.clone(),
        cache: cache_dir(),
        device_bin: device_bin(board.arch),
        seed: format!("cairn-{}-{}", board.name, version),
        version,
        root: cairn_image::RootExtras {
            keyring: Some(dev_keyring()?),
            api_secrets: Some(dev_api_secrets()?),
            ..Default::default()
        },
        secure_boot,
        extension: (!signed).then(Default::default),
    })?;
    eprintln!(
        "    {} ({} MiB, sha256 {}, kernel {}) in {:.1} s",
        out.join("disk.img").display(),
        manifest.disk.size >> 20,
        &manifest.disk.sha256[..16],
        manifest.kernel.release,
        started.elapsed().as_secs_f64()
    );
    if let Some(ext) = &manifest.extension {
        eprintln!(
            "    containers extension {:.1} MiB per slot{}",
            ext.size as f64 / (1024.0 * 1024.0),
            if ext.cached { " (cached)" } else { "" }
        );
    }
    Ok(out)
}

fn demo() -> Result<()> {
    setup::run()?;
    device()?;
    let board = cairn_board::find("qemu-aarch64")?;
    let dir = image(board)?;
    step("booting qemu-aarch64 (UEFI firmware -> systemd-boot -> kernel -> cairn init)");
    let work = target_dir().join("cairn/demo");
    let _ = std::fs::remove_dir_all(&work);
    let started = Instant::now();
    // A host port forwarded to a guest port nothing listens on: the guest's reset shows it holds
    // the address (see cairn_qemu::forward_answer).
    let forward = cairn_qemu::PortForward::new(cairn_qemu::free_local_port()?, 9);
    // And one to the management API.
    let api = cairn_qemu::PortForward::new(cairn_qemu::free_local_port()?, 50000);
    // A software TPM: the first boot encrypts STATE and DATA, the key sealed to PCR 7.
    let tpm = cairn_qemu::Swtpm::start(&work.join("tpm"), 0)?;
    let mut machine = cairn_qemu::Machine::launch(cairn_qemu::LaunchOptions {
        echo_console: true,
        port_forwards: vec![forward, api],
        tpm: Some(tpm.socket_path().to_path_buf()),
        ..cairn_qemu::LaunchOptions::new(board, dir.join("disk.img"), work)
    })?;
    let ready = machine.wait_for_line("cairn-init: ready", Duration::from_secs(180))?;
    let wall = started.elapsed();
    let stats = machine.wait_for_line("cairn-init: init_ms=", Duration::from_secs(30))?;
    let lease =
        machine.wait_for_line("cairnd: netcfg: eth0: DHCP lease", Duration::from_secs(60))?;
    machine.wait_for_line("cairnd: netcfg: applied", Duration::from_secs(30))?;
    let answer = cairn_qemu::forward_answer(forward.host, Duration::from_secs(3))?;
    machine.wait_for_line("cairnd: management API on port", Duration::from_secs(60))?;
    let storage = machine
        .lines()
        .into_iter()
        .find(|l| l.contains("cairnd: encrypted STATE and DATA") || l.contains("not encrypted"))
        .unwrap_or_else(|| "no word from cairnd on STATE and DATA".into());
    let config = keys_dir()
        .join("secrets")
        .join(cairn_pki::secrets::CLIENT_CONFIG);
    let cairnctl = |args: &[&str]| {
        step(&format!(
            "cairnctl --config {} --endpoint 127.0.0.1:{} {}",
            config.display(),
            api.host,
            args.join(" ")
        ));
        run(cargo()
            .args(["run", "--quiet", "--package", "cairnctl", "--", "--config"])
            .arg(&config)
            .args(["--endpoint", &format!("127.0.0.1:{}", api.host)])
            .args(args))
    };
    // recovery-key answers once: the device forgets the key as it answers.
    for args in [
        &["version"][..],
        &["health"],
        &["slots"],
        &["services"],
        &["recovery-key"],
    ] {
        cairnctl(args)?;
    }
    // The second boot opens STATE and DATA with the TPM alone.
    cairnctl(&["reboot"])?;
    let unlocked = machine.wait_for_line(
        "cairnd: unlocked STATE and DATA with the TPM",
        Duration::from_secs(240),
    )?;
    machine.wait_for_line("cairnd: management API on port", Duration::from_secs(60))?;
    cairnctl(&["version"])?;
    step("asking the guest to power off (ACPI power button)");
    machine.powerdown()?;
    let status = machine.wait_exit(Duration::from_secs(60))?;
    let fields = report::fields(&format!("{ready} {stats}"));
    step("summary");
    eprintln!("    board        qemu-aarch64 (TCG, no KVM)");
    for key in ["slot", "version", "boot_ms", "init_ms", "rss_kib"] {
        eprintln!(
            "    {key:<12} {}",
            fields.get(key).map(String::as_str).unwrap_or("?")
        );
    }
    eprintln!(
        "    wall clock   {:.1} s from QEMU start to ready",
        wall.as_secs_f64()
    );
    eprintln!(
        "    network      {}",
        lease.split("netcfg: ").nth(1).unwrap_or(&lease)
    );
    eprintln!(
        "    reachable    127.0.0.1:{} -> guest port 9: {}",
        forward.host,
        match answer {
            cairn_qemu::ForwardAnswer::GuestRefused =>
                "the guest answered (reset: nothing listens)",
            cairn_qemu::ForwardAnswer::Silent => "no answer",
            cairn_qemu::ForwardAnswer::Data => "the guest answered with data",
        }
    );
    eprintln!(
        "    storage      {} (docs/storage.md)",
        storage.split("cairnd: ").nth(1).unwrap_or(&storage)
    );
    eprintln!(
        "    reboot       {}, no input",
        unlocked.split("cairnd: ").nth(1).unwrap_or(&unlocked)
    );
    eprintln!("    powered off  QEMU exited ({status})");
    drop(tpm);
    eprintln!("    image        {}", dir.display());

    let boots = demo_update(board, &dir)?;
    step("update summary");
    eprintln!("    boots        {}", boots.join(" -> "));
    eprintln!(
        "    meaning      a signed bundle on a stick was installed into B; B booted on trial,"
    );
    eprintln!("                 passed its health checks, was committed, and stays");
    Ok(())
}

/// Copies an image's disk into the fresh folder `work` and opens the copy's systemd-boot state,
/// for runs that change slots between boots without touching the built image.
pub fn private_copy(
    image_dir: &Path,
    work: &Path,
) -> Result<(PathBuf, Box<dyn cairn_boot::Bootloader>)> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let disk = work.join("disk.img");
    cairn_image::copy_sparse(&image_dir.join("disk.img"), &disk)?;
    let json = std::fs::read_to_string(image_dir.join("image.json"))?;
    let manifest: serde_json::Value = serde_json::from_str(&json)?;
    let fs = |label: &str| {
        cairn_image::formats::fat_fs::manifest_partition_fs(&manifest, &disk, label)
            .map_err(anyhow::Error::msg)
    };
    let backend: Box<dyn cairn_boot::Bootloader> = match manifest["boot"]["kind"].as_str() {
        Some("rpi-tryboot") => Box::new(cairn_boot::tryboot::Tryboot::new(
            fs("BOOT")?,
            None,
            cairn_boot::tryboot::TrybootConfig::default(),
        )),
        _ => Box::new(cairn_boot::sdboot::SdBoot::new(fs("ESP")?, None)),
    };
    Ok((disk, backend))
}

/// The update story on a copy of the image: build release 0.2.0, sign it with
/// `cairnctl bundle create`, put it on a stick, plug the stick into the running machine, and
/// watch cairnd install it, the trial boot, the health checks and the commit. Returns
/// "slot (trial)" per boot.
fn demo_update(board: &'static Board, image_dir: &Path) -> Result<Vec<String>> {
    let work = target_dir().join("cairn/demo-update");
    let (disk, _) = private_copy(image_dir, &work)?;
    let new_version = "0.2.0";
    step(&format!(
        "update: building release {new_version} and signing it as a bundle"
    ));
    let new_image = work.join(format!("image-{new_version}"));
    cairn_image::build(&cairn_image::BuildOptions {
        board,
        out: new_image.clone(),
        cache: cache_dir(),
        device_bin: device_bin(board.arch),
        seed: format!("cairn-{}-{new_version}", board.name),
        version: new_version.into(),
        root: cairn_image::RootExtras {
            keyring: Some(dev_keyring()?),
            security_version: 1,
            ..Default::default()
        },
        secure_boot: None,
        extension: Some(Default::default()),
    })?;
    let bundle = work.join(format!("cairn-{}-{new_version}.cairn", board.name));
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "cairnctl",
            "--",
            "bundle",
            "create",
        ])
        .arg("--board")
        .arg(board.name)
        .arg("--key")
        .arg(keys_dir().join("dev.key"))
        .arg("--from")
        .arg(&new_image)
        .arg("--out")
        .arg(&bundle))?;
    let stick = work.join("stick.img");
    cairn_systest::stick::make_stick(
        &stick,
        "UPDATE",
        vec![cairn_systest::stick::StickFile::Copy(
            "update.cairn",
            bundle,
        )],
    );

    step("update: booting the machine, then plugging in the stick");
    let mut opts = cairn_qemu::LaunchOptions::new(board, &disk, work.join("run"));
    opts.writable_image = true;
    opts.echo_console = true;
    let mut machine = cairn_qemu::Machine::launch(opts)?;
    let wait = Duration::from_secs(300);
    let mut boots = Vec::new();
    let mut ready = |m: &mut cairn_qemu::Machine| -> Result<()> {
        let line = m.wait_for_line("cairn-init: ready", wait)?;
        let f = report::fields(&line);
        let get = |k: &str| f.get(k).cloned().unwrap_or_else(|| "?".into());
        boots.push(format!(
            "{} {} (trial={})",
            get("slot"),
            get("version"),
            get("trial")
        ));
        Ok(())
    };
    ready(&mut machine)?;
    machine.wait_for_line("cairnd: waiting for update bundles", wait)?;
    machine.attach_stick(&stick, "stick")?;
    machine.wait_for_line("cairnd: installed version", wait)?;
    ready(&mut machine)?;
    machine.wait_for_line("cairnd: slot b healthy", wait)?;
    // A hard reset, as a power cut would be: cairnd says it put STATE back in order.
    step("update: committed; a hard reset (no clean shutdown) to show it stays");
    machine.system_reset()?;
    ready(&mut machine)?;
    machine.wait_for_line("cairnd: waiting for update bundles", wait)?;
    machine.quit()?;
    machine.wait_exit(Duration::from_secs(60))?;
    Ok(boots)
}

/// `cargo xtask bench-net`: link up to DHCP lease against dnsmasq in network namespaces
/// (median of 10), and the netlink change requests a re-applied config sends. Needs root.
fn bench_net() -> Result<()> {
    setup::run()?;
    step("DHCP and reconcile figures (netcfg/examples/dhcp_bench.rs)");
    run(cargo().args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "cairn-netcfg",
        "--example",
        "dhcp_bench",
        "--",
        "10",
    ]))
}

/// `cargo xtask bench-api`: the management API's Version latency over mutual TLS, upload
/// throughput against a plain TCP copy, and the idle server's memory, on loopback.
fn bench_api() -> Result<()> {
    step("management API figures (api/examples/api_bench.rs)");
    run(cargo().args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "cairn-api",
        "--example",
        "api_bench",
    ]))
}

/// Checks that every crate `cargo xtask` builds gets the features `cargo test --workspace` gives
/// it, so that the suite's test build reuses what building xtask compiled (the comment above
/// xtask's feature-only dependencies in xtask/Cargo.toml says why). A crate whose features
/// differ is compiled twice, with every crate that depends on it: several minutes on 2 cores.
fn shared_features() -> Result<()> {
    // A crate built both for the host's build scripts and for the target is listed with each
    // set of features. With the host named as the target, cargo tree keeps the two apart as
    // the builds do (without it, it lists a build script's crates with features they do not
    // get, and xtask's own tree seemed to differ where the builds agree: a test build after
    // `cargo build -p xtask` rebuilt none of these crates).
    let host = host_triple()?;
    let resolved = |args: &[&str]| -> Result<BTreeMap<String, BTreeSet<String>>> {
        let out = cargo()
            .args([
                "tree",
                "--quiet",
                "--prefix",
                "none",
                "--format",
                "{p} [{f}]",
                "--target",
                &host,
            ])
            .args(args)
            .output()
            .context("running cargo tree")?;
        if !out.status.success() {
            bail!(
                "cargo tree {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut crates: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (id, features) in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(tree_line)
        {
            crates.entry(id).or_default().insert(features);
        }
        Ok(crates)
    };
    let xtask = resolved(&["--package", "xtask", "--edges", "normal,build"])?;
    let workspace = resolved(&["--workspace"])?;
    let differ: Vec<String> = xtask
        .iter()
        .filter(|(crate_, features)| workspace.get(*crate_) != Some(*features))
        .map(|(crate_, features)| {
            let sets = |s: &BTreeSet<String>| {
                s.iter()
                    .map(|f| format!("[{f}]"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            format!(
                "{crate_}: xtask {}, the test build {}",
                sets(features),
                workspace.get(crate_).map_or(String::new(), sets)
            )
        })
        .collect();
    if xtask.is_empty() || workspace.is_empty() {
        bail!("cargo tree listed no crates");
    }
    if !differ.is_empty() {
        bail!(
            "xtask builds {} crates with other features than `cargo test --workspace` (add the \
             missing ones to xtask/Cargo.toml's feature-only dependencies, [build-dependencies] \
             for build scripts' and procedural macros' crates): {}",
            differ.len(),
            differ.join("; ")
        );
    }
    eprintln!("    {} crates, the same features", xtask.len());
    Ok(())
}

/// `name vX.Y.Z (path) (proc-macro) [features] (*)`, a line of `cargo tree --format "{p} [{f}]"`,
/// as ("name vX.Y.Z", "features").
fn tree_line(line: &str) -> Option<(String, String)> {
    let line = line.trim().trim_end_matches(" (*)");
    let (head, features) = line.strip_suffix(']')?.rsplit_once(" [")?;
    let mut words = head.split_whitespace();
    let id = format!("{} {}", words.next()?, words.next()?);
    Some((id, features.to_string()))
}

/// Source files of the workspace's crates that compile differently for `target` than for the
/// host (xtask/src/cfgscan.rs). Every crate is looked at, not only the device binary's, so a
/// new dependency of it cannot slip by.
fn target_specific_code(host: &cfgscan::Target, target: &cfgscan::Target) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root()).context("listing the workspace")? {
        let crate_dir = entry?.path();
        // xtask runs on the host only (and its scanner's tests name target options).
        if crate_dir.join("Cargo.toml").is_file()
            && crate_dir.join("src").is_dir()
            && !crate_dir.ends_with("xtask")
        {
            dirs.push(crate_dir.join("src"));
        }
    }
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if cfgscan::differs(&text, host, target) {
                    found.push(
                        path.strip_prefix(root())
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                    );
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

fn test() -> Result<()> {
    setup::run()?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("xtask is built with the features the workspace's test build uses");
    shared_features()?;
    step("clippy (host, all targets)");
    run(cargo().args([
        "clippy",
        "--quiet",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The host clippy above (x86_64, glibc) lints every line that is compiled the same way
    // for a musl target; a target's own pass is needed where a cfg attribute keeps or drops
    // code for it (xtask/src/cfgscan.rs).
    let host = cfgscan::Target::from_triple(&host_triple()?);
    for arch in ARCHES {
        let target = cfgscan::Target::from_triple(arch.rust_target());
        let files = target_specific_code(&host, &target)?;
        if files.is_empty() {
            step(&format!(
                "clippy (device crates, {}): the host pass covered it",
                arch.rust_target()
            ));
            eprintln!("    no cfg attribute keeps or drops code for this target alone");
            continue;
        }
        step(&format!("clippy (device crates, {})", arch.rust_target()));
        eprintln!("    compiled otherwise here: {}", files.join(", "));
        run(cargo().args([
            "clippy",
            "--quiet",
            "--package",
            "cairn-device",
            "--package",
            "cairn-init",
            "--package",
            "cairn-facts",
            "--package",
            "cairn-daemon",
            "--package",
            "cairn-updater",
            "--package",
            "cairn-netcfg",
            "--package",
            "cairn-api",
            "--package",
            "cairn-pki",
            "--package",
            "cairn-luks",
            "--package",
            "cairn-tpm",
            "--package",
            "cairn-dm",
            "--target",
            arch.rust_target(),
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    fuzz::run_brief()?;
    images()?;
    let result = tests();
    print_step_times();
    result
}

/// `cargo xtask powercut`: the power-cut sweep of systest/tests/powercut.rs with the points, seed,
/// board and scenarios given; the table is printed and kept in target/cairn/powercut-<board>.txt.
fn powercut(args: &[String]) -> Result<()> {
    // Every run unless told otherwise (the suite's sample leaves out the slow `encrypt`).
    let mut args = args.to_vec();
    if !args.iter().any(|a| a == "--scenario") {
        args.extend(["--scenario".to_string(), "stick,api,encrypt".to_string()]);
    }
    // One booting cut per core unless told otherwise (QEMU's TCG keeps a core busy).
    if !args.iter().any(|a| a == "--jobs") {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        args.extend(["--jobs".to_string(), cores.min(8).to_string()]);
    }
    long_run(
        "powercut",
        "CAIRN_POWERCUT",
        &[
            ("--points", "POINTS"),
            ("--seed", "SEED"),
            ("--board", "BOARD"),
            ("--install-every", "INSTALL_EVERY"),
            ("--scenario", "SCENARIOS"),
            ("--jobs", "JOBS"),
        ],
        &args,
        "usage: cargo xtask powercut [--points N] [--seed S] [--board B] [--install-every K] \
         [--scenario stick|api|encrypt|stick,api,…] [--jobs N]",
    )
}

/// `cargo xtask soak`: the update cycles of systest/tests/soak.rs on one machine; the table is
/// printed and kept in target/cairn/soak-<board>.txt.
fn soak(args: &[String]) -> Result<()> {
    long_run(
        "soak",
        "CAIRN_SOAK",
        &[
            ("--cycles", "CYCLES"),
            ("--board", "BOARD"),
            ("--sample-every", "SAMPLE_EVERY"),
        ],
        args,
        "usage: cargo xtask soak [--cycles N] [--board B] [--sample-every K]",
    )
}

/// A long run of its own: the system test `test` with its flags turned into `<prefix>_<NAME>`
/// variables (checked here, so that a typo fails before anything is built), after the images
/// are built; the table the test writes is printed and kept in target/cairn/<test>-<board>.txt.
fn long_run(
    test: &str,
    prefix: &str,
    flags: &[(&str, &str)],
    args: &[String],
    usage: &str,
) -> Result<()> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut board = "qemu-aarch64".to_string();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some((_, name)) = flags.iter().find(|(f, _)| f == flag) else {
            bail!("unknown argument {flag:?}; {usage}");
        };
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value; {usage}"))?;
        match *name {
            "BOARD" => board = value.clone(),
            "SCENARIOS" => {
                if let Some(bad) = value
                    .split(',')
                    .find(|s| !["stick", "api", "encrypt"].contains(&s.trim()))
                {
                    bail!("--scenario {bad:?}: the scenarios are stick, api and encrypt (or a list: stick,api)");
                }
            }
            "SEED" => {
                value
                    .parse::<u64>()
                    .map_err(|_| anyhow::anyhow!("{flag} {value:?}: want a whole number"))?;
            }
            _ => {
                if value.parse::<u64>().map_or(true, |n| n == 0) {
                    bail!("{flag} {value:?}: want a positive whole number");
                }
            }
        }
        env.push((format!("{prefix}_{name}"), value.clone()));
    }
    if cairn_board::find(&board)
        .ok()
        .and_then(|b| b.qemu.as_ref())
        .is_none()
    {
        bail!("--board {board:?}: not a board QEMU boots here (qemu-aarch64, qemu-x86_64)");
    }
    setup::run()?;
    images()?;
    let table = target_dir().join(format!("cairn/{test}-{board}.txt"));
    step(&format!("{test} on {board}"));
    build_cairnctl()?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--quiet",
        "--package",
        "cairn-systest",
        "--test",
        test,
        "--",
        "--include-ignored",
        "--nocapture",
    ])
    .env(format!("{prefix}_TABLE"), &table);
    for (k, v) in test_env().iter() {
        cmd.env(k, v);
    }
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let result = run(&mut cmd);
    if let Ok(text) = std::fs::read_to_string(&table) {
        eprintln!("\n{text}(kept in {})", table.display());
    }
    print_step_times();
    result
}

/// The host CLI the system tests drive the machines with (target/debug/cairnctl, where
/// `cairn_systest::cairnctl` looks): `cargo test -p cairn-systest` alone does not build it.
pub fn build_cairnctl() -> Result<()> {
    run(cargo().args(["build", "--quiet", "--package", "cairnctl"]))
}

/// What every test is told: the image, key and cache folders and the device binaries.
fn test_env() -> [(&'static str, PathBuf); 5] {
    [
        ("CAIRN_IMAGES", images_dir()),
        ("CAIRN_KEYS", keys_dir()),
        ("CAIRN_CACHE", cache_dir()),
        ("CAIRN_DEVICE_BIN_AARCH64", device_bin(Arch::Aarch64)),
        ("CAIRN_DEVICE_BIN_X86_64", device_bin(Arch::X86_64)),
    ]
}

/// The tests: every crate's unit and interop tests, then the system tests (QEMU boots), a few
/// side by side (xtask/src/systests.rs).
fn tests() -> Result<()> {
    let env = test_env();
    let test = |args: &[&str]| -> Result<()> {
        let mut cmd = cargo();
        cmd.arg("test").args(args).args(["--", "--include-ignored"]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    step("cargo test (unit and interop tests, every crate but systest)");
    test(&["--workspace", "--exclude", "cairn-systest"])?;
    // systest's own unit tests run with the system tests (its library's test harness is one
    // of the binaries the runner takes).
    systests::run(&env, systests::Selection::Suite)
}
