//! cairnctl: the operator's tool. Parses arguments and calls the libraries; nothing else. The
//! remote commands, cairnctl as the device API's client, are in [`remote`].

mod oci;
mod remote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairnctl",
    version,
    about = "Build, run and manage Cairn appliances"
)]
struct Cli {
    #[command(flatten)]
    global: remote::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Remote(remote::Command),
    /// Disk images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run images in QEMU.
    #[command(subcommand)]
    Qemu(QemuCommand),
    /// List the supported boards.
    Boards,
    /// Signing keys for update bundles.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Signed update bundles (*.cairn).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// The machine config (YAML): check a file, or print its JSON Schema.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate the management API's certificates.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Print a shell completion script, e.g. `cairnctl completions bash`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum GenCommand {
    /// Make a new folder with the client CA, a client certificate per role (admin, operator,
    /// reader), the device CA, device/ for the image build, and cairnctl.yaml.
    Secrets {
        /// The folder to create; refused if it exists and is not empty.
        #[arg(long)]
        out: PathBuf,
        /// Days the client certificates are valid (the CAs are valid for ten years).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Name in the CAs' subjects (`<name> client CA …`), to tell fleets apart.
        #[arg(long, default_value = "Cairn")]
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a machine config file; prints what it configures, or one line naming the problem.
    Validate {
        file: PathBuf,
        /// The image it is for has no k3s (built without --k3s): refuse a kubernetes section.
        #[arg(long)]
        no_k3s: bool,
    },
    /// Print the JSON Schema of the machine config.
    Schema,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate an Ed25519 signing key: <out>.key (secret, mode 0600) and <out>.pub.
    Gen {
        /// Path prefix of the two files; neither may exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate UEFI Secure Boot keys: PK, KEK and db (RSA-2048 .key, mode 0600, and
    /// self-signed .crt) and the PCR-signing key pair (pcr-signing.key, pcr-signing.pem).
    GenSecureboot {
        /// Folder for the files (created if missing); none of them may exist yet.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Show a bundle's manifest without checking its signature.
    Inspect { bundle: PathBuf },
    /// Check a bundle's signature against public keys and every payload byte against the manifest.
    Verify {
        /// A public key file (`cairnctl keys gen` writes <out>.pub) or a keyring file; repeatable.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        bundle: PathBuf,
    },
    /// Make a signed bundle of a built image (its slot A: root, kernel, initramfs, boot entry).
    Create {
        /// The board the image was built for; must match the image.
        #[arg(long)]
        board: String,
        /// Secret key file (`cairnctl keys gen` writes <out>.key).
        #[arg(long)]
        key: PathBuf,
        /// Image folder written by `cairnctl image build`.
        #[arg(long)]
        from: PathBuf,
        /// The bundle file to write; must not exist.
        #[arg(long)]
        out: PathBuf,
        /// The oldest installed version allowed to take the bundle.
        #[arg(long, default_value = "0.0.0")]
        min_installed_version: String,
    },
    /// Verify a bundle and write one payload into a file or block device in place, through the
    /// installer's write path (chunks checked before writing, read back and compared).
    Extract {
        /// A public key file or keyring file; repeatable.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        /// Payload name (see `cairnctl bundle inspect`).
        #[arg(long)]
        payload: String,
        /// Where to write it: a file (created if missing, not truncated) or a block device.
        #[arg(long)]
        to: PathBuf,
        bundle: PathBuf,
    },
    /// Upload a bundle to an OCI registry as an artifact (artifactType
    /// application/vnd.cairn.bundle.v1, one layer, board/arch/version annotations).
    Push {
        bundle: PathBuf,
        /// Where: registry/repository:tag (oci:// in front is optional).
        reference: String,
        #[command(flatten)]
        registry: oci::RegistryArgs,
    },
    /// Download a bundle pushed with `bundle push`, byte-identical, its digest checked.
    Pull {
        /// registry/repository:tag or registry/repository@sha256:….
        reference: String,
        /// The file to write; must not exist.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        registry: oci::RegistryArgs,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build <out>/disk.img and <out>/image.json for a board.
    Build(Box<BuildArgs>),
    /// Show or change an image's A/B slot state, in the bootloader's own format, offline.
    Slots(SlotsArgs),
}

#[derive(Args)]
struct SlotsArgs {
    /// Image folder written by `cairnctl image build` (disk.img and image.json).
    #[arg(long)]
    image: PathBuf,
    /// Boot this slot (a or b) next, for at most --tries boots, then fall back.
    #[arg(long, conflicts_with_all = ["mark_good", "mark_bad"])]
    set_trial: Option<String>,
    /// Tries for --set-trial.
    #[arg(long, default_value_t = 3, requires = "set_trial")]
    tries: u32,
    /// Make this slot (a or b) the committed one.
    #[arg(long, conflicts_with = "mark_bad")]
    mark_good: Option<String>,
    /// Never boot this slot (a or b) automatically until its next trial.
    #[arg(long)]
    mark_bad: Option<String>,
}

#[derive(Args)]
struct BuildArgs {
    /// Board to build for (see `cairnctl boards`).
    #[arg(long)]
    board: String,
    /// Output folder; replaced as a whole when the build succeeds.
    #[arg(long)]
    out: PathBuf,
    /// The static device binary [default: target/<musl target>/device/cairn].
    #[arg(long)]
    device_bin: Option<PathBuf>,
    /// Package cache [default: $CAIRN_CACHE, else ~/.cache/cairn].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// System version recorded in the image.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    version: String,
    /// Seed for GUIDs and volume ids [default: cairn-<board>-<version>].
    #[arg(long)]
    seed: Option<String>,
    /// Keyring (public keys, one per line, or a single .pub file) whose bundles the image
    /// installs. Without it the image installs no bundles.
    #[arg(long)]
    keyring: Option<PathBuf>,
    /// Machine config (YAML, see `cairnctl config schema`) baked into the image: health window,
    /// probes, network, storage.
    #[arg(long)]
    machine_config: Option<PathBuf>,
    /// Anti-rollback level of this system.
    #[arg(long, default_value_t = 0)]
    security_version: u32,
    /// The management API's trust: a folder `cairnctl gen secrets` wrote (or its `device/`
    /// folder). Written to the STATE partition, not the root. Without it the image has no API.
    #[arg(long)]
    api_secrets: Option<PathBuf>,
    /// Leave out the containers extension (containerd, runc, CNI plugins, iptables).
    #[arg(long, conflicts_with = "k3s")]
    no_containers: bool,
    /// Sign systemd-boot and the UKIs for UEFI Secure Boot with DIR/db.key and DIR/db.crt
    /// (`cairnctl keys gen-secureboot`); the command line gets `lockdown=integrity`. With
    /// DIR/pcr-signing.key, each UKI also carries the release's signed PCR 11 (`.pcrsig`), and
    /// the device seals its disks to what that key signs.
    #[arg(long, value_name = "DIR")]
    secure_boot: Option<PathBuf>,
    /// An operator's k3s binary for the board's CPU, added to the containers extension as
    /// /usr/bin/k3s.
    #[arg(long)]
    k3s: Option<PathBuf>,
    /// The sha256 (hex) the --k3s binary must have.
    #[arg(long, requires = "k3s")]
    k3s_sha256: Option<String>,
    /// k3s's airgap images tarball, added under /usr/lib/cairn/k3s/images/.
    #[arg(long, requires = "k3s")]
    k3s_images: Option<PathBuf>,
}

#[derive(Subcommand)]
enum QemuCommand {
    /// Boot an image folder under QEMU, console on the terminal, until the guest powers off.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Board the image was built for.
    #[arg(long)]
    board: String,
    /// Image folder written by `cairnctl image build`.
    #[arg(long)]
    image: PathBuf,
    /// Folder for the copy-on-write overlay (on a Raspberry Pi, the SD card copy and the
    /// firmware's one-shot flag), firmware variables and console log [default: <image>/run].
    /// Reused across runs, so the machine keeps its disk state.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Start from the pristine image instead of the overlay of an earlier run.
    #[arg(long)]
    fresh: bool,
    /// Forward a host port on 127.0.0.1 to a guest port: HOST:GUEST (repeatable).
    #[arg(long = "forward", value_parser = parse_forward)]
    forwards: Vec<(u16, u16)>,
    /// Stop the machine after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Raspberry Pi: make the first boot a tryboot, as after `reboot "0 tryboot"` (the trial
    /// `cairnctl image slots --set-trial` prepares).
    #[arg(long)]
    tryboot: bool,
    /// Boot without a TPM. By default a board with a TPM socket (the UEFI boards) gets a
    /// software TPM (Debian's swtpm) whose state is kept in <work>/tpm, so it encrypts STATE and
    /// DATA as a real box would. The Raspberry Pi 4 has none.
    #[arg(long)]
    no_tpm: bool,
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not HOST:GUEST"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| format!("`{p}` is not a port number (1-65535)"))
    };
    Ok((port(h)?, port(g)?))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // Printed with the checks already; monitoring tells it from a failed call by the status.
        Err(e) if e.is::<remote::Unhealthy>() => ExitCode::from(2),
        Err(e) => {
            eprintln!("cairnctl: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, outermost first.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.global.json;
    match cli.command {
        Command::Remote(command) => remote::run(&cli.global, command),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cairnctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Boards => {
            for b in cairn_board::BOARDS {
                println!("{:<14} {:<8} kernel {}", b.name, b.arch, b.kernel_package);
            }
            Ok(())
        }
        Command::Image(ImageCommand::Build(args)) => image_build(*args, json),
        Command::Image(ImageCommand::Slots(args)) => image_slots(args),
        Command::Qemu(QemuCommand::Run(args)) => qemu_run(args),
        Command::Keys(KeysCommand::Gen { out }) => keys_gen(&out),
        Command::Keys(KeysCommand::GenSecureboot { out }) => {
            for path in cairn_secureboot::keys::generate(&out)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Bundle(BundleCommand::Inspect { bundle }) => bundle_inspect(&bundle, json),
        Command::Bundle(BundleCommand::Create {
            board,
            key,
            from,
            out,
            min_installed_version,
        }) => bundle_create(&board, &key, &from, &out, &min_installed_version),
        Command::Bundle(BundleCommand::Extract {
            pubkeys,
            payload,
            to,
            bundle,
        }) => bundle_extract(&pubkeys, &payload, &to, &bundle),
        Command::Bundle(BundleCommand::Verify { pubkeys, bundle }) => {
            bundle_verify(&pubkeys, &bundle)
        }
        Command::Bundle(BundleCommand::Push {
            bundle,
            reference,
            registry,
        }) => oci::push(&bundle, &reference, &registry),
        Command::Bundle(BundleCommand::Pull {
            reference,
            out,
            registry,
        }) => oci::pull(&reference, &out, &registry),
        Command::Config(ConfigCommand::Validate { file, no_k3s }) => config_validate(&file, no_k3s),
        Command::Gen(GenCommand::Secrets { out, days, name }) => gen_secrets(&out, days, name),
        Command::Config(ConfigCommand::Schema) => {
            let schema = cairn_facts::config::schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}

fn image_slots(args: SlotsArgs) -> anyhow::Result<()> {
    use cairn_boot::{Bootloader, Slot};
    use cairn_facts::layout::label;
    use cairn_image::formats::fat_fs::manifest_partition_fs;

    let json_path = args.image.join("image.json");
    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("reading {}", json_path.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", json_path.display()))?;
    let kind = manifest["boot"]["kind"].as_str().unwrap_or_default();
    let disk = args.image.join("disk.img");
    let slot = |s: &str| s.parse::<Slot>().map_err(anyhow::Error::from);
    let mut backend: Box<dyn Bootloader> = match kind {
        "systemd-boot" => Box::new(cairn_boot::sdboot::SdBoot::new(
            manifest_partition_fs(&manifest, &disk, label::ESP).map_err(anyhow::Error::msg)?,
            None,
        )),
        "rpi-tryboot" => Box::new(cairn_boot::tryboot::Tryboot::new(
            manifest_partition_fs(&manifest, &disk, label::BOOT).map_err(anyhow::Error::msg)?,
            None,
            cairn_boot::tryboot::TrybootConfig::default(),
        )),
        other => anyhow::bail!(
            "{} names boot kind {other:?}; expected systemd-boot or rpi-tryboot",
            json_path.display()
        ),
    };
    // Read the state once before changing it: a state Cairn cannot read is never written to.
    backend.status()?;
    if let Some(s) = &args.set_trial {
        backend.set_trial(slot(s)?, args.tries)?;
        if let Some(arg) = backend.reboot_argument() {
            println!("note        the trial runs on the next reboot with the argument {arg:?}");
        }
    }
    if let Some(s) = &args.mark_good {
        backend.mark_good(slot(s)?)?;
    }
    if let Some(s) = &args.mark_bad {
        backend.mark_bad(slot(s)?)?;
    }
    let status = backend.status()?;
    let name = |s: Option<Slot>| s.map_or("none".to_string(), |s| s.to_string());
    println!("bootloader  {kind}");
    println!("next boot   {}", name(status.next));
    for info in &status.slots {
        println!(
            "slot {}      bootable={} successful={} priority={} tries_left={}",
            info.slot,
            if info.bootable { "yes" } else { "no" },
            if info.successful { "yes" } else { "no" },
            info.priority,
            info.tries_left
                .map_or("uncounted".to_string(), |n| n.to_string()),
        );
    }
    Ok(())
}

fn keys_gen(out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let with_ext = |ext: &str| {
        let mut p = out.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (secret_path, public_path) = (with_ext(".key"), with_ext(".pub"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            anyhow::bail!(
                "{} already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    let secret = cairn_bundle::SecretKey::generate()?;
    let write = |path: &PathBuf, text: String, mode: u32| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    };
    write(&secret_path, secret.to_text(), 0o600)?;
    if let Err(e) = write(&public_path, secret.public().to_text(), 0o644) {
        let _ = std::fs::remove_file(&secret_path);
        return Err(e);
    }
    println!(
        "key {}: secret {}, public {}",
        secret.key_id(),
        secret_path.display(),
        public_path.display()
    );
    Ok(())
}

fn gen_secrets(out: &std::path::Path, days: u32, name: String) -> anyhow::Result<()> {
    use cairn_pki::secrets::{self, Options, Secrets};
    let secrets = Secrets::generate(&Options {
        name,
        client_days: days,
    })?;
    secrets.write_new(out)?;
    println!("wrote {}", out.display());
    println!(
        "  client CA {}  client-ca.crt, client-ca.key (keep offline: it issues client certificates)",
        secrets.client_ca.fingerprint()
    );
    println!(
        "  device CA {}  device-ca.crt (cairnctl trusts it for the devices' server certificates)",
        secrets.device_ca.fingerprint()
    );
    for (role, issued) in &secrets.clients {
        println!(
            "  {:<9} {}  {}.crt, {}.key (O={}, {days} days)",
            role.name(),
            issued.fingerprint(),
            role.name(),
            role.name(),
            role.organization()
        );
    }
    println!(
        "  {}/  for the image build: client-ca.crt, device-ca.crt, device-ca.key",
        secrets::DEVICE_DIR
    );
    println!(
        "  {}  endpoint {} (edit it), admin certificate",
        secrets::CLIENT_CONFIG,
        secrets::PLACEHOLDER_ENDPOINT
    );
    Ok(())
}

fn open_bundle(path: &std::path::Path) -> anyhow::Result<std::io::BufReader<std::fs::File>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(std::io::BufReader::with_capacity(1 << 20, file))
}

fn manifest_json(m: &cairn_bundle::Manifest) -> serde_json::Value {
    serde_json::json!({
        "compatible": m.compatible,
        "arch": m.arch,
        "version": m.version.to_string(),
        "security_version": m.security_version,
        "min_installed_version": m.min_installed_version.to_string(),
        "created": m.created,
        "key_id": m.key_id.to_string(),
        "payloads": m.payloads.iter().map(|p| serde_json::json!({
            "name": p.name,
            "role": p.role.as_str(),
            "size": p.size,
            "sha256": hex_string(&p.sha256),
            "chunk_size": p.chunk_size,
            "chunks": p.chunk_hashes.len(),
        })).collect::<Vec<_>>(),
    })
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_manifest(m: &cairn_bundle::Manifest) {
    println!("version      {}", m.version);
    println!("boards       {} ({})", m.compatible.join(", "), m.arch);
    println!("security     {}", m.security_version);
    println!(
        "needs        installed version >= {}",
        m.min_installed_version
    );
    println!("created      {}", m.created);
    println!("key id       {}", m.key_id);
    for p in &m.payloads {
        println!(
            "payload      {:<12} {:<10} {:>12} bytes  sha256 {}",
            p.name,
            p.role.as_str(),
            p.size,
            hex_string(&p.sha256)
        );
    }
}

fn bundle_inspect(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let (manifest, _) = cairn_bundle::inspect(open_bundle(path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    if json {
        println!("{:#}", manifest_json(&manifest));
    } else {
        println!("signature    not checked (use `cairnctl bundle verify --pubkey ...`)");
        print_manifest(&manifest);
    }
    Ok(())
}

fn load_keyring(pubkeys: &[PathBuf]) -> anyhow::Result<cairn_bundle::Keyring> {
    let mut keys = Vec::new();
    let mut keyrings = Vec::new();
    for p in pubkeys {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let ring = cairn_bundle::Keyring::parse(&text)
            .with_context(|| format!("{} is not a public key or keyring", p.display()))?;
        keys.extend(ring.entries().iter().filter(|e| !e.revoked).map(|e| e.key));
        keyrings.push(ring);
    }
    Ok(if keyrings.len() == 1 {
        keyrings.remove(0)
    } else {
        cairn_bundle::Keyring::from_keys(keys)?
    })
}

fn bundle_verify(pubkeys: &[PathBuf], path: &std::path::Path) -> anyhow::Result<()> {
    let keyring = load_keyring(pubkeys)?;
    let manifest = cairn_bundle::verify_all(open_bundle(path)?, &keyring)
        .with_context(|| format!("{} failed verification", path.display()))?;
    println!("signature    good (key {})", manifest.key_id);
    print_manifest(&manifest);
    println!("payloads     every chunk matches the signed manifest");
    Ok(())
}

fn bundle_create(
    board: &str,
    key: &std::path::Path,
    from: &std::path::Path,
    out: &std::path::Path,
    min_installed: &str,
) -> anyhow::Result<()> {
    let key_text =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let key = cairn_bundle::SecretKey::from_text(&key_text)
        .with_context(|| format!("{} is not a secret key", key.display()))?;
    let min_installed_version = cairn_bundle::Version::parse(min_installed)
        .with_context(|| format!("--min-installed-version {min_installed:?} is not semver"))?;
    let work = tempfile::tempdir().context("creating a temporary folder")?;
    let input = cairn_image::bundle_input::bundle_input(from, work.path())
        .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    anyhow::ensure!(
        input.board == board,
        "{} is an image for {}, not {board}",
        from.display(),
        input.board
    );
    let meta = cairn_bundle::ManifestMeta {
        compatible: vec![input.board.clone()],
        arch: input.arch.clone(),
        version: cairn_bundle::Version::parse(&input.version)
            .with_context(|| format!("image version {:?} is not semver", input.version))?,
        security_version: input.security_version,
        min_installed_version,
        created: created_time(),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    let made = cairn_bundle::create(&mut writer, &meta, &input.payloads, &key).and_then(|m| {
        use std::io::Write as _;
        writer
            .flush()
            .and_then(|()| writer.get_ref().sync_all())
            .map_err(cairn_bundle::Error::from_io)?;
        Ok(m)
    });
    let manifest = match made {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(out);
            return Err(e).with_context(|| format!("writing {}", out.display()));
        }
    };
    println!("wrote {}", out.display());
    print_manifest(&manifest);
    Ok(())
}

/// `SOURCE_DATE_EPOCH` when set (reproducible bundles), else now.
fn created_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

fn bundle_extract(
    pubkeys: &[PathBuf],
    name: &str,
    to: &std::path::Path,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let keyring = load_keyring(pubkeys)?;
    let fail = || format!("{} failed verification", path.display());
    let mut bundle =
        cairn_bundle::open_verified(open_bundle(path)?, &keyring).with_context(fail)?;
    anyhow::ensure!(
        bundle.manifest().payloads.iter().any(|p| p.name == name),
        "{} has no payload {name:?}",
        path.display()
    );
    bundle.defer_payload_hashes();
    let target = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(to)
        .with_context(|| format!("opening {}", to.display()))?;
    while let Some(mut payload) = bundle.next_payload().with_context(fail)? {
        if payload.entry().name != name {
            continue;
        }
        let entry = payload.entry().clone();
        let written = cairn_updater::stream::write_checked(
            &target,
            &to.display().to_string(),
            name,
            entry.sha256,
            |spare| Ok(payload.take_chunk(spare)?),
            &mut |_| {},
        )?;
        println!(
            "wrote payload {name:?} ({} bytes) to {}: every chunk verified, read back and matched",
            written.bytes,
            to.display()
        );
        return Ok(());
    }
    unreachable!("the payload is in the manifest")
}

fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAIRN_CACHE") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("cairn");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/cairn"),
        None => PathBuf::from(".cairn-cache"),
    }
}

/// The machine config, checked as the device checks it: its certificates and keys too, with the
/// API's TLS stack.
type MachineConfig = cairn_facts::config::MachineConfig<cairn_api::TlsCheck>;

/// Reads and checks a machine config file: its text, and what it configures.
fn read_machine_config(file: &std::path::Path) -> anyhow::Result<(String, MachineConfig)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let config =
        MachineConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok((text, config))
}

fn config_validate(file: &std::path::Path, no_k3s: bool) -> anyhow::Result<()> {
    let (_, config) = read_machine_config(file)?;
    cairn_facts::kubernetes::require_k3s(config.kubernetes.as_ref(), !no_k3s, "the image")
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let net = &config.network;
    let interfaces = if net.interfaces.is_empty() {
        "DHCPv4 on every physical link with carrier".to_string()
    } else {
        let names: Vec<String> = net
            .interfaces
            .iter()
            .map(|i| i.select.to_string())
            .collect();
        format!("{} configured ({})", names.len(), names.join(", "))
    };
    println!(
        "{}: valid; health window {} s, {} probe(s), {} tries; network: {interfaces}",
        file.display(),
        config.health_window.as_secs(),
        config.probes.len(),
        config.tries
    );
    if let Some(k) = &config.kubernetes {
        println!(
            "kubernetes: k3s (the image must be built with --k3s), node {}, flannel {}, {} disabled, {} manifest(s), {} workload(s) gating updates",
            k.node_name.as_deref().unwrap_or("= hostname"),
            k.flannel_backend,
            k.disable.len(),
            k.manifests.len(),
            k.workloads.len()
        );
    }
    Ok(())
}

fn root_extras(
    keyring: Option<&std::path::Path>,
    machine_config: Option<&std::path::Path>,
    security_version: u32,
) -> anyhow::Result<cairn_image::RootExtras> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let keyring = match keyring {
        Some(p) => {
            let text = read(p)?;
            cairn_bundle::Keyring::parse(&text)
                .with_context(|| format!("{} is not a keyring", p.display()))?
                .require_trusted()
                .with_context(|| format!("{} cannot be the image's keyring", p.display()))?;
            Some(text)
        }
        None => None,
    };
    let machine_config = match machine_config {
        Some(p) => {
            let text = read(p)?;
            MachineConfig::parse(&text).map_err(|e| {
                anyhow::anyhow!("{} is not a valid machine config: {e}", p.display())
            })?;
            Some(text)
        }
        None => None,
    };
    Ok(cairn_image::RootExtras {
        keyring,
        machine_config,
        security_version,
        init_override: None,
        api_secrets: None,
        kernel_args: Vec::new(),
    })
}

/// The device part of a secrets folder, checked.
fn api_secrets(dir: &std::path::Path) -> anyhow::Result<cairn_image::ApiSecrets> {
    let s = cairn_pki::secrets::DeviceSecrets::load(dir)
        .with_context(|| format!("--api-secrets {}", dir.display()))?;
    Ok(cairn_image::ApiSecrets {
        client_ca: s.client_ca,
        device_ca: s.device_ca,
        device_ca_key: s.device_ca_key,
    })
}

fn image_build(args: BuildArgs, json: bool) -> anyhow::Result<()> {
    let board = cairn_board::find(&args.board)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let opts = cairn_image::BuildOptions {
        board,
        out: args.out.clone(),
        cache: args.cache.unwrap_or_else(default_cache),
        device_bin: args.device_bin.unwrap_or_else(|| {
            target_dir
                .join(board.arch.rust_target())
                .join("device/cairn")
        }),
        seed: args
            .seed
            .unwrap_or_else(|| format!("cairn-{}-{}", board.name, args.version)),
        version: args.version,
        root: cairn_image::RootExtras {
            api_secrets: args.api_secrets.as_deref().map(api_secrets).transpose()?,
            ..root_extras(
                args.keyring.as_deref(),
                args.machine_config.as_deref(),
                args.security_version,
            )?
        },
        secure_boot: args.secure_boot.clone(),
        extension: (!args.no_containers).then(|| cairn_image::extension::ExtensionOptions {
            k3s: args.k3s.map(|binary| cairn_image::extension::K3sInput {
                binary,
                sha256: args.k3s_sha256,
                images: args.k3s_images,
            }),
        }),
    };
    if let Some(text) = &opts.root.machine_config {
        let config = MachineConfig::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        cairn_facts::kubernetes::require_k3s(
            config.kubernetes.as_ref(),
            opts.extension.as_ref().is_some_and(|e| e.k3s.is_some()),
            "this image",
        )
        .map_err(|e| {
            let file = args
                .machine_config
                .as_deref()
                .unwrap_or(std::path::Path::new("--machine-config"));
            anyhow::anyhow!("{} cannot go into this image: {e}", file.display())
        })?;
    }
    let manifest = cairn_image::build(&opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    println!(
        "built Cairn {} for {} ({}) in {}",
        manifest.version,
        manifest.board,
        manifest.arch,
        args.out.display()
    );
    println!(
        "  disk.img  {} MiB  sha256 {}",
        manifest.disk.size / (1024 * 1024),
        manifest.disk.sha256
    );
    for p in &manifest.partitions {
        println!(
            "  {:<7} {:>5} MiB at {:>5} MiB  {}",
            p.label,
            p.size / (1024 * 1024),
            p.offset / (1024 * 1024),
            p.content
        );
    }
    println!(
        "  kernel {} with modules {}",
        manifest.kernel.release,
        manifest.kernel.modules.join(", ")
    );
    match &manifest.extension {
        Some(ext) => {
            println!(
                "  containers extension: {:.1} MiB in each slot ({} files, root hash {}{}{})",
                ext.size as f64 / (1024.0 * 1024.0),
                ext.files,
                &ext.roothash[..12],
                if ext.cached { ", from the cache" } else { "" },
                match &ext.k3s {
                    Some(k) => format!(", k3s sha256 {}", &k.sha256[..12]),
                    None => String::new(),
                }
            );
            if !ext.modules_missing.is_empty() {
                println!(
                    "  kernel {} lacks container modules: {}",
                    manifest.kernel.release,
                    ext.modules_missing.join(", ")
                );
            }
        }
        None => println!("  no containers extension"),
    }
    Ok(())
}

fn qemu_run(args: RunArgs) -> anyhow::Result<()> {
    let board = cairn_board::find(&args.board)?;
    let disk = args.image.join("disk.img");
    anyhow::ensure!(
        disk.is_file(),
        "{} has no disk.img: build one with `cairnctl image build --board {} --out {}`",
        args.image.display(),
        board.name,
        args.image.display()
    );
    let work = args.work.unwrap_or_else(|| args.image.join("run"));
    if matches!(board.boot, cairn_board::BootScheme::RpiTryboot { .. }) {
        anyhow::ensure!(
            args.forwards.is_empty(),
            "--forward needs a network card, and QEMU's raspi4b emulates none (no GENET)"
        );
        return run_pi(
            &args.image,
            disk,
            work,
            args.fresh,
            args.tryboot,
            args.timeout,
        );
    }
    anyhow::ensure!(
        !args.tryboot,
        "--tryboot is for Raspberry Pi boards; {} boots through UEFI",
        board.name
    );
    // Every UEFI board has a TPM socket; its state goes with the disk's overlay: a fresh
    // disk gets a fresh TPM, and a reused one the TPM that sealed its key.
    let tpm_dir = work.join("tpm");
    if args.fresh && tpm_dir.exists() {
        std::fs::remove_dir_all(&tpm_dir)
            .with_context(|| format!("removing the old TPM state {}", tpm_dir.display()))?;
    }
    let tpm = if args.no_tpm {
        None
    } else {
        Some(start_swtpm(&tpm_dir)?)
    };
    let launched = cairn_qemu::Machine::launch(cairn_qemu::LaunchOptions {
        reuse_disk: !args.fresh,
        echo_console: true,
        port_forwards: args
            .forwards
            .iter()
            .map(|&(host, guest)| cairn_qemu::PortForward::new(host, guest))
            .collect(),
        tpm: tpm.as_ref().map(|t| t.socket_path().to_path_buf()),
        ..cairn_qemu::LaunchOptions::new(board, disk, work)
    })
    .context("starting QEMU");
    let result = launched.and_then(|mut machine| {
        let status = machine.wait_exit(Duration::from_secs(args.timeout))?;
        eprintln!("cairnctl: QEMU exited ({status})");
        Ok(())
    });
    // swtpm ends with QEMU's data channel; stop it by its pid in case it did not.
    if let Some(tpm) = tpm {
        if let Err(e) = tpm.stop() {
            eprintln!("cairnctl: stopping swtpm: {e}");
        }
    }
    result
}

/// Starts swtpm on `dir`, or says how to do without it.
fn start_swtpm(dir: &Path) -> anyhow::Result<cairn_qemu::Swtpm> {
    cairn_qemu::Swtpm::start(dir, 1)
        .context("starting a software TPM for the machine (to boot without one: --no-tpm)")
}

/// A Raspberry Pi 4 image under QEMU's raspi4b, the harness playing the Pi firmware at each
/// power-on; reboots go through it, until the guest powers off or `timeout` runs out.
fn run_pi(
    image: &std::path::Path,
    disk: PathBuf,
    work: PathBuf,
    fresh: bool,
    tryboot: bool,
    timeout: u64,
) -> anyhow::Result<()> {
    use cairn_qemu::rpi::{Pi4, PiOptions, Reset};
    let mut pi = Pi4::new(PiOptions {
        reuse_disk: !fresh,
        echo_console: true,
        ..PiOptions::new(disk, work)
    })
    .with_context(|| format!("preparing the SD card of {}", image.display()))?;
    if tryboot {
        pi.set_reboot_argument("0 tryboot")?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let boot = pi.power_on().context("starting QEMU (raspi4b)")?;
        eprintln!(
            "cairnctl: firmware: boot {} from partition {}{} ({}, {})",
            boot.number,
            boot.partition,
            if boot.tryboot { " as a tryboot" } else { "" },
            boot.config.kernel,
            boot.config.device_tree
        );
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match pi.wait_for_reset(left) {
            Ok(Reset::Restart { argument }) => eprintln!(
                "cairnctl: the kernel restarted{}",
                argument.map_or(String::new(), |a| format!(" with {a:?}"))
            ),
            Ok(Reset::PowerOff) => {
                eprintln!("cairnctl: the kernel powered off");
                return Ok(());
            }
            Ok(Reset::Exited) => {
                eprintln!("cairnctl: QEMU exited");
                return Ok(());
            }
            Err(cairn_qemu::Error::Timeout { .. }) => {
                pi.power_off()?;
                eprintln!("cairnctl: stopped after {timeout} s");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse() {
        assert_eq!(parse_forward("8443:50000"), Ok((8443, 50000)));
        assert!(parse_forward("8443").is_err());
        assert!(parse_forward("0:1").is_err());
        assert!(parse_forward("a:1").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
