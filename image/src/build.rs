//! The image build: fetch inputs, assemble the initramfs, root and ESP, lay out the disk.
//!
//! Everything is written into a hidden sibling of `--out` and renamed into place at the very end,
//! so an interrupted or failed build never leaves a half-written image where a finished one is
//! expected.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_board::{Arch, Board, BootScheme};
use cairn_boot::{sdboot, tryboot, Slot};
use cairn_facts::layout::{cmdline, label, INITRAMFS, KERNEL};
use serde::Serialize;

use cairn_secureboot::Pe;

use crate::deb::{sha256_file, Cache, FetchedPackage};
use crate::error::{Error, Result};
use crate::formats::guid::Guid;
use crate::formats::region::Region;
use crate::formats::tree::Tree;
use crate::formats::{cpio, fat, gpt, squashfs, verity};
use crate::kmod::ModuleTree;

/// Fixed timestamp of every file in the image (2020-01-01T00:00:00Z): FAT cannot go below 1980,
/// and a constant keeps builds reproducible.
pub const IMAGE_EPOCH: u32 = 1_577_836_800;

const MIB: u64 = 1024 * 1024;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// "Microsoft basic data": the FAT partitions of the Raspberry Pi image, which its bootloader
/// accepts on GPT disks as long as they come first.
const BASIC_DATA_TYPE: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub board: &'static Board,
    /// Output folder; created or replaced as a whole.
    pub out: PathBuf,
    /// Package cache folder (verified .debs and their unpacked trees).
    pub cache: PathBuf,
    /// The static device binary for the board's architecture.
    pub device_bin: PathBuf,
    /// Semantic version of the system in this image.
    pub version: String,
    /// Seed for every GUID and the FAT volume id.
    pub seed: String,
    /// What the root carries besides the system itself.
    pub root: RootExtras,
    /// The containers extension (and an operator's k3s in it); `None` leaves it out
    /// (`--no-containers`, or a board without container modules).
    pub extension: Option<crate::extension::ExtensionOptions>,
    /// A Secure Boot key folder (`cairnctl keys gen-secureboot`): systemd-boot and each slot's
    /// UKI are signed with its `db.key`/`db.crt`, and the command line gets
    /// `lockdown=integrity`. `None` builds the same UKIs unsigned.
    pub secure_boot: Option<PathBuf>,
}

/// Device configuration baked into the root filesystem.
#[derive(Debug, Clone, Default)]
pub struct RootExtras {
    /// `/etc/cairn/keyring`: the public keys whose bundles this system installs (text keyring,
    /// see docs/bundle-format.md). Without it, the device installs no bundles.
    pub keyring: Option<String>,
    /// `/etc/cairn/machine.yaml`: the machine config (health, update, network), already checked
    /// by the caller.
    pub machine_config: Option<String>,
    /// The anti-rollback level of this system (`SECURITY_VERSION=` in the release file); a device
    /// running it refuses bundles below the highest level it has committed.
    pub security_version: u32,
    /// A different program as the root's `/sbin/init`, for fault-injection tests (an init that
    /// hangs or exits). The initramfs keeps the real device binary.
    pub init_override: Option<PathBuf>,
    /// What the management API needs, written to the STATE partition's `api/` folder and not
    /// to the root: bundles made from this image do not carry the device CA's key.
    pub api_secrets: Option<ApiSecrets>,
    /// Words added to every slot's kernel command line, for tests and benchmarks
    /// (`cairn.bench=containers`: cairnd's host container benchmark, docs/containers.md).
    pub kernel_args: Vec<String>,
}

/// The management API's trust, PEM (`cairnctl gen secrets` writes them to `<out>/device/`).
#[derive(Debug, Clone)]
pub struct ApiSecrets {
    /// The CA client certificates must chain to (`client-ca.crt`).
    pub client_ca: String,
    /// The CA the device issues its server certificate from (`device-ca.crt`)...
    pub device_ca: String,
    /// ...and its key (`device-ca.key`).
    pub device_ca_key: String,
}

/// image.json.
#[derive(Debug, Clone, Serialize)]
pub struct ImageManifest {
    pub format: u32,
    pub board: String,
    pub arch: Arch,
    pub version: String,
    pub security_version: u32,
    pub seed: String,
    pub boot: BootScheme,
    pub disk: DiskInfo,
    pub partitions: Vec<PartitionInfo>,
    pub kernel: KernelInfo,
    pub slots: Vec<SlotInfo>,
    /// Whether systemd-boot and the UKIs are signed for Secure Boot.
    pub secure_boot: bool,
    /// The SHA-256 fingerprint of the PCR-signing key whose signature (`.pcrsig`) each UKI
    /// carries, when it does: the key a device's TPM seal then follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcr_signing_key: Option<String>,
    /// The containers extension, when the image has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<ExtensionInfo>,
    pub inputs: Vec<InputInfo>,
}

/// What the containers extension adds to each slot.
#[derive(Debug, Clone, Serialize)]
pub struct ExtensionInfo {
    /// Bytes of squashfs and hash tree in each slot.
    pub size: u64,
    pub squashfs_size: u64,
    /// sha256 of those bytes (the same in both slots).
    pub sha256: String,
    pub roothash: String,
    /// Files it carries (symlinks and folders aside).
    pub files: usize,
    /// The packages its files come from.
    pub packages: Vec<crate::extension::PackageEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k3s: Option<crate::extension::K3sEntry>,
    /// Whether this build took it from the package cache.
    pub cached: bool,
    /// The kernel modules for containers in the root, loaded after `ready`.
    pub modules: Vec<String>,
    /// Modules containers need that this board's kernel has neither built in nor as a module.
    pub modules_missing: Vec<String>,
}

/// Where a slot's extension is.
#[derive(Debug, Clone, Serialize)]
pub struct SlotExtension {
    /// Byte offset of the extension in the root partition.
    pub offset: u64,
    /// Bytes of squashfs and hash tree from `offset`.
    pub size: u64,
    /// Byte offset of its verity superblock from `offset`.
    pub hash_offset: u64,
    pub hash_size: u64,
    pub data_blocks: u64,
    pub roothash: String,
    pub salt: String,
    pub verity_uuid: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub guid: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    /// What the build put there: "fat32", "squashfs+verity" or "empty".
    pub content: &'static str,
    /// Bytes of content written at the start of the partition.
    pub content_size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelInfo {
    pub release: String,
    pub modules: Vec<String>,
    /// Bytes of the kernel image and of the initramfs, as each slot carries them.
    pub image_size: u64,
    pub initramfs_size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub slot: String,
    /// Where the slot's kernel command line lives: the boot entry on the ESP, or cmdline.txt on
    /// the slot's boot partition.
    pub entry: String,
    pub cmdline: String,
    /// BOOT-A/BOOT-B on boards with per-slot boot partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_partition: Option<String>,
    pub root_partition: String,
    /// Bytes of squashfs at the start of the root partition.
    pub root_size: u64,
    pub root_sha256: String,
    /// dm-verity root hash, hex.
    pub roothash: String,
    /// Byte offset of the verity superblock in the root partition (`veritysetup --hash-offset`).
    pub hash_offset: u64,
    /// Bytes of superblock plus tree from `hash_offset`.
    pub hash_size: u64,
    pub data_blocks: u64,
    pub salt: String,
    pub verity_uuid: String,
    /// The containers extension after the root's hash tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<SlotExtension>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum InputInfo {
    /// A Debian package, fetched through apt and pinned by the index's sha256.
    DebianPackage {
        #[serde(flatten)]
        package: crate::deb::PackageRecord,
        #[serde(skip_serializing_if = "Option::is_none")]
        requested: Option<String>,
        source: &'static str,
    },
    /// The device binary.
    DeviceBinary { file: String, sha256: String },
    /// An operator's k3s binary (and airgap images) in the containers extension.
    K3s {
        file: String,
        sha256: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        images: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        images_sha256: Option<String>,
    },
}

/// Builds the image described by `opts`.
pub fn build(opts: &BuildOptions) -> Result<ImageManifest> {
    // The disk image is sparse, so a full filesystem shows up wherever a write first needs a
    // block (inside the FAT or squashfs writer, say): any ENOSPC below becomes one message.
    build_staged(opts).map_err(|e| match e {
        Error::DiskFull { .. } => e,
        e if caused_by_enospc(&e) => Error::DiskFull {
            path: opts.out.clone(),
        },
        e => e,
    })
}

fn caused_by_enospc(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(crate::error::libc_enospc())
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn build_staged(opts: &BuildOptions) -> Result<ImageManifest> {
    validate_version(&opts.version)?;
    check_device_binary(&opts.device_bin, opts.board.arch)?;
    if opts.secure_boot.is_some() && !matches!(opts.board.boot, BootScheme::SystemdBoot { .. }) {
        return Err(Error::NoSecureBoot {
            board: opts.board.name,
        });
    }
    // Bad keys are refused before anything is fetched or written.
    let signer = secure_boot_signer(opts)?;
    let pcr_key = pcr_signing_key(opts)?;
    let containers = opts
        .extension
        .as_ref()
        .filter(|_| !opts.board.container_modules.is_empty());
    // A bad k3s is refused before anything is fetched or written.
    if let Some(k3s) = containers.and_then(|c| c.k3s.as_ref()) {
        crate::extension::check_k3s(k3s, opts.board.arch)?;
    }
    let staging = Staging::new(&opts.out)?;

    let cache = Cache::new(&opts.cache);
    let arch = opts.board.arch.deb_arch();
    let kernel_pkg = cache.fetch(opts.board.kernel_package, arch)?;
    let modules = ModuleTree::open(&kernel_pkg.root)?;
    let release = modules.release().to_string();
    // The watchdog's driver goes in a list of its own, loaded first; the rest leave it out.
    let watchdog_files = modules.resolve(opts.board.watchdog_modules)?;
    // The extension is overlaid on the root in the initramfs, which needs overlayfs there.
    let mut initramfs_modules = opts.board.modules.to_vec();
    if containers.is_some() {
        initramfs_modules.push("overlay");
    }
    let module_files: Vec<_> = modules
        .resolve(&initramfs_modules)?
        .into_iter()
        .filter(|m| watchdog_files.iter().all(|w| w.name != m.name))
        .collect();
    let kernel = kernel_pkg.root.join(format!("boot/vmlinuz-{release}"));
    if !kernel.is_file() {
        return Err(package_content(&kernel_pkg, "kernel image", &kernel));
    }
    let mut inputs = vec![package_input(&kernel_pkg)];

    // What the root needs after `ready`, less what the initramfs loaded already.
    let late_files: Vec<_> = modules
        .resolve(opts.board.late_modules)?
        .into_iter()
        .filter(|m| {
            let early = |w: &crate::kmod::ModuleFile| w.name == m.name;
            !watchdog_files.iter().any(early) && !module_files.iter().any(early)
        })
        .collect();

    let initramfs = initramfs(&opts.device_bin, &watchdog_files, &module_files)?;
    let seed = opts.seed.as_bytes();
    let mut root = root_tree(opts)?;
    add_late_modules(&mut root, &late_files)?;
    let extension = match containers {
        Some(ext_opts) => {
            let (found, missing) = container_modules(&modules, opts.board.container_modules)?;
            add_container_modules(&mut root, &found, &missing)?;
            let built = crate::extension::build(&cache, opts.board.arch, IMAGE_EPOCH, ext_opts)?;
            Some((built, found, missing))
        }
        None => None,
    };
    let ext_sha256 = match &extension {
        Some((built, ..)) => Some(sha256_file(&built.image)?),
        None => None,
    };

    // The partitions: fixed order, 1 MiB aligned, backup GPT in the last MiB.
    let layout = &opts.board.layout;
    let root_type = opts.board.arch.root_type_guid();
    let mut parts: Vec<(&str, &str, u64, &'static str)> = Vec::new();
    match opts.board.boot {
        BootScheme::SystemdBoot { .. } => {
            parts.push((label::ESP, ESP_TYPE, layout.esp_mib, "fat32"))
        }
        BootScheme::RpiTryboot { .. } => {
            parts.push((label::BOOT, BASIC_DATA_TYPE, layout.esp_mib, "fat32"));
            parts.push((
                label::BOOT_A,
                BASIC_DATA_TYPE,
                layout.boot_slot_mib,
                "fat32",
            ));
            parts.push((
                label::BOOT_B,
                BASIC_DATA_TYPE,
                layout.boot_slot_mib,
                "fat32",
            ));
        }
    }
    parts.push((label::ROOT_A, root_type, layout.root_mib, "squashfs+verity"));
    parts.push((label::ROOT_B, root_type, layout.root_mib, "squashfs+verity"));
    parts.push((label::STATE, LINUX_DATA_TYPE, layout.state_mib, "fat32"));
    parts.push((label::DATA, LINUX_DATA_TYPE, layout.data_mib, "empty"));

    let disk_size = MIB + parts.iter().map(|p| p.2 * MIB).sum::<u64>() + MIB;
    let sizes: Vec<(String, u64)> = parts.iter().map(|p| (p.0.to_string(), p.2 * MIB)).collect();
    let lbas = gpt::layout(disk_size, &sizes)?;
    let disk_guid = Guid::derive(seed, "disk");
    let gpt_parts: Vec<gpt::GptPartition> = parts
        .iter()
        .zip(&lbas)
        .map(|((label, type_guid, _, _), &(first_lba, last_lba))| {
            Ok(gpt::GptPartition {
                label: label.to_string(),
                type_guid: Guid::parse(type_guid)?,
                part_guid: Guid::derive(seed, label),
                first_lba,
                last_lba,
                attributes: 0,
            })
        })
        .collect::<Result<_>>()?;
    let index = |label: &str| {
        gpt_parts
            .iter()
            .position(|p| p.label == label)
            .unwrap_or(usize::MAX)
    };
    let offset = |i: usize| gpt_parts[i].first_lba * 512;
    let capacity = |i: usize| (gpt_parts[i].last_lba + 1 - gpt_parts[i].first_lba) * 512;

    let disk_path = staging.dir.join("disk.img");
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&disk_path)
        .map_err(|e| Error::io("creating", &disk_path, e))?;
    // Sparse: the empty space (slot B's tail, STATE, DATA) costs nothing on the host. A full disk
    // still shows up as DiskFull, on the write that hits it.
    disk.set_len(disk_size)
        .map_err(|e| Error::io("sizing", &disk_path, e))?;
    gpt::write(&mut disk, disk_size, disk_guid, &gpt_parts)?;

    // Roots first: their hashes go into the boot entries. Both slots carry the same system; each
    // gets its own salt and superblock UUID, hence its own root hash, so that one slot's hash never
    // verifies the other slot's root.
    let mut content_sizes = vec![0u64; gpt_parts.len()];
    let mut slots = Vec::new();
    for slot in Slot::ALL {
        let i = index(slot.root_label());
        let mut region = Region::new(&mut disk, slot.root_label(), offset(i), capacity(i));
        // The device binary is paged in from here by init and cairnd at every boot: stored,
        // its blocks are copied rather than inflated on each page fault.
        let root_size =
            squashfs::write_squashfs_storing(&mut region, &root, IMAGE_EPOCH, &["sbin/init"])?;
        let hash_offset = root_size.div_ceil(verity::BLOCK_SIZE) * verity::BLOCK_SIZE;
        let params = verity::VerityParams {
            data_blocks: hash_offset / verity::BLOCK_SIZE,
            salt: Guid::derive(seed, &format!("dm-verity-salt/{}", slot.root_label()))
                .as_bytes()
                .repeat(2),
            uuid: verity::VerityParams::derive_uuid(seed, slot.root_label()),
        };
        let needed = hash_offset + verity::hash_size(params.data_blocks, &params.salt)?;
        if needed > capacity(i) {
            return Err(Error::TooBig {
                what: format!("{} with its dm-verity hash tree", slot.root_label()),
                size: needed,
                capacity: capacity(i),
            });
        }
        let tree = verity::append_hash_tree(&mut region, hash_offset, &params)?;
        content_sizes[i] = tree.hash_offset + tree.hash_size;
        let mut slot_ext = None;
        if let Some((ext, ..)) = &extension {
            let ext_offset = content_sizes[i].div_ceil(verity::BLOCK_SIZE) * verity::BLOCK_SIZE;
            let end = ext_offset + ext.size();
            if end > capacity(i) {
                return Err(Error::TooBig {
                    what: format!(
                        "{} with its hash tree and the containers extension ({} bytes)",
                        slot.root_label(),
                        ext.size()
                    ),
                    size: end,
                    capacity: capacity(i),
                });
            }
            copy_into(&ext.image, &mut disk, offset(i) + ext_offset, ext.size())
                .map_err(|e| Error::io("copying the containers extension into", &disk_path, e))?;
            content_sizes[i] = end;
            slot_ext = Some(SlotExtension {
                offset: ext_offset,
                size: ext.size(),
                hash_offset: ext.tree.hash_offset,
                hash_size: ext.tree.hash_size,
                data_blocks: ext.tree.data_blocks,
                roothash: ext.tree.root_hash_hex(),
                salt: ext.tree.salt_arg(),
                verity_uuid: ext.tree.uuid_text(),
            });
        }
        let root_sha256 = sha256_region(&mut disk, offset(i), root_size)
            .map_err(|e| Error::io("reading", &disk_path, e))?;
        let mut cmdline = kernel_cmdline(opts.board, slot, &tree, slot_ext.as_ref());
        for word in &opts.root.kernel_args {
            if word.is_empty() || word.contains(char::is_whitespace) {
                return Err(Error::BadKernelArg(word.clone()));
            }
            cmdline = format!("{cmdline} {word}");
        }
        if opts.secure_boot.is_some() {
            // Under Secure Boot the kernel keeps root from changing the running kernel.
            cmdline = format!("{cmdline} {LOCKDOWN}");
        }
        slots.push(SlotInfo {
            slot: slot.to_string(),
            entry: String::new(),
            cmdline,
            boot_partition: None,
            root_partition: slot.root_label().into(),
            root_size,
            root_sha256,
            roothash: tree.root_hash_hex(),
            hash_offset: tree.hash_offset,
            hash_size: tree.hash_size,
            data_blocks: tree.data_blocks,
            salt: tree.salt_arg(),
            verity_uuid: tree.uuid_text(),
            extension: slot_ext,
        });
    }

    let volume_id = |name: &str| {
        u32::from_le_bytes(
            Guid::derive(seed, &format!("{name}-volume-id")).as_bytes()[..4]
                .try_into()
                .unwrap_or([0; 4]),
        )
    };
    let mut write_fat = |disk: &mut File, label: &str, tree: &Tree| -> Result<()> {
        let i = index(label);
        content_sizes[i] = capacity(i);
        fat::write_fat32(
            Region::new(disk, label, offset(i), capacity(i)),
            capacity(i),
            volume_id(label),
            label,
            tree,
        )
        .map_err(Error::from)
    };

    match opts.board.boot {
        BootScheme::SystemdBoot { package } => {
            let boot_pkg = cache.fetch(package, arch)?;
            let efi_name = format!("systemd-boot{}.efi", opts.board.arch.efi_suffix());
            let sd_boot = boot_pkg
                .root
                .join("usr/lib/systemd/boot/efi")
                .join(&efi_name);
            if !sd_boot.is_file() {
                return Err(package_content(
                    &boot_pkg,
                    "systemd-boot EFI binary",
                    &sd_boot,
                ));
            }
            inputs.push(package_input(&boot_pkg));
            let efi_dir = boot_pkg.root.join("usr/lib/systemd/boot/efi");
            let stub_path = efi_dir.join(format!("linux{}.efi.stub", opts.board.arch.efi_suffix()));
            if !stub_path.is_file() {
                return Err(package_content(&boot_pkg, "systemd-stub", &stub_path));
            }
            let read = |path: &Path| fs::read(path).map_err(|e| Error::io("reading", path, e));
            let sd_boot = read(&sd_boot)?;
            let sd_boot = match &signer {
                Some(signer) => signer.sign(Pe::parse(efi_name.clone(), sd_boot)?)?,
                None => sd_boot,
            };
            let mut esp = Tree::new();
            let suffix = opts.board.arch.efi_suffix().to_ascii_uppercase();
            esp.add_file(
                &format!("EFI/BOOT/BOOT{suffix}.EFI"),
                0o644,
                sd_boot.clone(),
            )?;
            esp.add_file(&format!("EFI/systemd/{efi_name}"), 0o644, sd_boot)?;
            let stub = read(&stub_path)?;
            let linux = read(&kernel)?;
            // The key with the public half every UKI carries.
            let pcr = pcr_key.as_ref().map(|k| (k, k.public_key().to_pem()));
            let make_uki = |slot: &str, cmdline: String, what: String| -> Result<Vec<u8>> {
                let parts = cairn_secureboot::uki::UkiParts {
                    osrel: cairn_secureboot::uki::osrel(&opts.version, slot),
                    cmdline,
                    linux: &linux,
                    initrd: &initramfs,
                    dtb: None,
                };
                let sig = pcr
                    .as_ref()
                    .map(|(key, pem)| pcr_signature(key, &parts, pem, opts.root.security_version));
                let extra: Vec<(&str, &[u8])> = match (&pcr, &sig) {
                    (Some((_, pem)), Some(sig)) => {
                        vec![(".pcrsig", sig.as_bytes()), (".pcrpkey", pem.as_bytes())]
                    }
                    _ => Vec::new(),
                };
                slot_uki(
                    Pe::parse(what, stub.clone())?,
                    &parts,
                    &extra,
                    signer.as_ref(),
                )
            };
            for (info, (_, name)) in slots.iter_mut().zip(sdboot::initial_uki_names()) {
                let what = format!("the UKI of slot {}", info.slot);
                let uki = make_uki(&info.slot, info.cmdline.clone(), what)?;
                info.entry = format!("{}/{name}", sdboot::UKI_DIR);
                esp.add_file(&info.entry, 0o644, uki)?;
            }
            // An update bundle carries slot A's root, which either slot may receive: its UKIs
            // both name that root (its hash and offset) and differ in `cairn.slot=`.
            for slot in ["a", "b"] {
                let cmdline = slots[0]
                    .cmdline
                    .split(' ')
                    .map(|w| match w.split_once('=') {
                        Some((cmdline::SLOT, _)) => format!("{}={slot}", cmdline::SLOT),
                        _ => w.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let what = format!("the update UKI for slot {slot}");
                let uki = make_uki(slot, cmdline, what)?;
                let name = cairn_facts::layout::uki_payload(slot);
                let path = staging.dir.join(&name);
                fs::write(&path, uki).map_err(|e| Error::io("writing", &path, e))?;
            }
            esp.add_file(
                "loader/loader.conf",
                0o644,
                sdboot::loader_conf().into_bytes(),
            )?;
            write_fat(&mut disk, label::ESP, &esp)?;
        }
        BootScheme::RpiTryboot {
            firmware_package,
            dtbs,
        } => {
            let fw_pkg = cache.fetch(firmware_package, arch)?;
            inputs.push(package_input(&fw_pkg));
            let fw_dir = fw_pkg.root.join("usr/lib/raspi-firmware");
            let mut firmware = Vec::new();
            for name in RPI4_FIRMWARE {
                let path = fw_dir.join(name);
                if !path.is_file() {
                    return Err(package_content(&fw_pkg, "Raspberry Pi 4 firmware", &path));
                }
                firmware.push((name, path));
            }
            let dtb_dir = kernel_pkg
                .root
                .join(format!("usr/lib/linux-image-{release}"));
            let mut boot = Tree::new();
            for (name, path) in &firmware {
                boot.add_file(name, 0o644, path.clone())?;
            }
            boot.add_file(
                tryboot::AUTOBOOT_PATH,
                0o644,
                tryboot::autoboot_txt(RPI_BOOT_A, RPI_BOOT_B).into_bytes(),
            )?;
            write_fat(&mut disk, label::BOOT, &boot)?;
            for info in slots.iter_mut() {
                let slot: Slot =
                    info.slot
                        .parse()
                        .map_err(|e: cairn_boot::Error| Error::ToolFailed {
                            command: "naming the slot".into(),
                            stderr: e.to_string(),
                        })?;
                let boot_label = match slot {
                    Slot::A => label::BOOT_A,
                    Slot::B => label::BOOT_B,
                };
                let mut tree = Tree::new();
                for (name, path) in &firmware {
                    tree.add_file(name, 0o644, path.clone())?;
                }
                for dtb in dtbs {
                    let path = dtb_dir.join(dtb);
                    if !path.is_file() {
                        return Err(package_content(&kernel_pkg, "device tree", &path));
                    }
                    let name = Path::new(dtb).file_name().unwrap_or_default();
                    tree.add_file(&name.to_string_lossy(), 0o644, path)?;
                }
                tree.add_file(KERNEL, 0o644, kernel.clone())?;
                tree.add_file(INITRAMFS, 0o644, initramfs.clone())?;
                tree.add_file(
                    "config.txt",
                    0o644,
                    rpi_config_txt(slot, &opts.version).into_bytes(),
                )?;
                tree.add_file(
                    "cmdline.txt",
                    0o644,
                    format!("{}\n", info.cmdline).into_bytes(),
                )?;
                write_fat(&mut disk, boot_label, &tree)?;
                info.entry = format!("{boot_label}/cmdline.txt");
                info.boot_partition = Some(boot_label.to_string());
            }
        }
    }
    // STATE: cairnd keeps the updater's state there; it starts empty but for the API's trust.
    let mut state = Tree::new();
    if let Some(api) = &opts.root.api_secrets {
        state.add_file(
            "api/client-ca.crt",
            0o644,
            api.client_ca.clone().into_bytes(),
        )?;
        state.add_file(
            "api/device-ca.crt",
            0o644,
            api.device_ca.clone().into_bytes(),
        )?;
        state.add_file(
            "api/device-ca.key",
            0o600,
            api.device_ca_key.clone().into_bytes(),
        )?;
    }
    write_fat(&mut disk, label::STATE, &state)?;

    disk.flush()
        .map_err(|e| Error::io("writing", &disk_path, e))?;
    disk.sync_all()
        .map_err(|e| Error::io("syncing", &disk_path, e))?;
    drop(disk);

    inputs.push(InputInfo::DeviceBinary {
        file: opts.device_bin.display().to_string(),
        sha256: sha256_file(&opts.device_bin)?,
    });
    let extension_info = match (&extension, ext_sha256) {
        (Some((ext, found, missing)), Some(sha256)) => {
            inputs.extend(ext.packages.iter().map(package_input));
            if let (Some(k3s), Some(entry)) = (
                containers.and_then(|c| c.k3s.as_ref()),
                ext.manifest.k3s.as_ref(),
            ) {
                inputs.push(InputInfo::K3s {
                    file: k3s.binary.display().to_string(),
                    sha256: entry.sha256.clone(),
                    images: k3s.images.as_ref().map(|p| p.display().to_string()),
                    images_sha256: entry.images.as_ref().map(|i| i.sha256.clone()),
                });
            }
            Some(ExtensionInfo {
                size: ext.size(),
                squashfs_size: ext.squashfs_size,
                sha256,
                roothash: ext.tree.root_hash_hex(),
                files: ext.manifest.files.len(),
                packages: ext.manifest.packages.clone(),
                k3s: ext.manifest.k3s.clone(),
                cached: ext.cached,
                modules: found.iter().map(|m| m.name.clone()).collect(),
                modules_missing: missing.clone(),
            })
        }
        _ => None,
    };
    let manifest = ImageManifest {
        format: 2,
        board: opts.board.name.to_string(),
        arch: opts.board.arch,
        version: opts.version.clone(),
        security_version: opts.root.security_version,
        seed: opts.seed.clone(),
        boot: opts.board.boot,
        disk: DiskInfo {
            file: "disk.img".into(),
            size: disk_size,
            sha256: sha256_file(&disk_path)?,
            guid: disk_guid.to_string(),
        },
        partitions: gpt_parts
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionInfo {
                number: i as u32 + 1,
                label: p.label.clone(),
                type_guid: p.type_guid.to_string(),
                guid: p.part_guid.to_string(),
                offset: offset(i),
                size: capacity(i),
                content: parts[i].3,
                content_size: content_sizes[i],
            })
            .collect(),
        kernel: KernelInfo {
            release,
            image_size: fs::metadata(&kernel)
                .map_err(|e| Error::io("reading", &kernel, e))?
                .len(),
            initramfs_size: initramfs.len() as u64,
            modules: watchdog_files
                .iter()
                .chain(&module_files)
                .map(|m| m.name.clone())
                .collect(),
        },
        slots,
        secure_boot: opts.secure_boot.is_some(),
        pcr_signing_key: pcr_key
            .as_ref()
            .map(|k| hex::encode(k.public_key().fingerprint())),
        extension: extension_info,
        inputs,
    };
    let json_path = staging.dir.join("image.json");
    let mut json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::ToolFailed {
        command: "serialising image.json".into(),
        stderr: e.to_string(),
    })?;
    json.push('\n');
    write_synced(&json_path, json.as_bytes())?;
    staging.commit()?;
    Ok(manifest)
}

/// Partition numbers of BOOT-A and BOOT-B on the Raspberry Pi image, as autoboot.txt names them.
pub const RPI_BOOT_A: u32 = 2;
pub const RPI_BOOT_B: u32 = 3;

/// The Raspberry Pi 4 firmware files: the VideoCore firmware and its memory split file, in the
/// standard, cut-down, debug and extended variants config.txt may select.
const RPI4_FIRMWARE: [&str; 8] = [
    "start4.elf",
    "fixup4.dat",
    "start4cd.elf",
    "fixup4cd.dat",
    "start4db.elf",
    "fixup4db.dat",
    "start4x.elf",
    "fixup4x.dat",
];

/// config.txt of one slot's boot partition: a 64-bit kernel and our initramfs from the same
/// partition, the mini UART as console, and the device tree the firmware picks for the model.
pub fn rpi_config_txt(slot: Slot, version: &str) -> String {
    format!(
        "# Cairn {version}, slot {slot}. Read by the Raspberry Pi firmware from BOOT-{upper}.\n\
         [all]\n\
         arm_64bit=1\n\
         enable_uart=1\n\
         upstream_kernel=1\n\
         disable_overscan=1\n\
         kernel={KERNEL}\n\
         initramfs {INITRAMFS} followkernel\n",
        upper = slot.name().to_ascii_uppercase(),
    )
}

/// The kernel command line of a slot: console, quiet, reboot on panic (and panic on the hangs
/// the kernel can see), and what init needs to mount the slot's root through dm-verity.
pub fn kernel_cmdline(
    board: &Board,
    slot: Slot,
    tree: &verity::VerityTree,
    extension: Option<&SlotExtension>,
) -> String {
    let mut args = vec![
        format!("console={}", board.console),
        // init writes its own lines to the console; the kernel's chatter only slows a serial boot.
        "quiet".to_string(),
    ];
    args.extend(RESET_ON_HANG.iter().map(|a| a.to_string()));
    args.extend(cmdline::slot_words(
        slot.name(),
        &tree.root_hash_hex(),
        tree.hash_offset,
    ));
    if let Some(ext) = extension {
        args.extend(cmdline::ext_words(
            &ext.roothash,
            ext.offset,
            ext.hash_offset,
        ));
    }
    args.extend(board.kernel_args.iter().map(|a| a.to_string()));
    args.join(" ")
}

/// The initramfs: init, the watchdog's modules (`etc/cairn/modules-watchdog`, loaded first) and
/// the others (`etc/cairn/modules`), each list in load order.
/// Kernel arguments that turn what the kernel itself sees going wrong into a panic, and a panic
/// into a reset, so that boot counting can act without a hand on the power switch:
/// - `panic=5`: reboot 5 s after a panic.
/// - `panic_on_oops=1`: an oops (a kernel bug that killed a task) leaves the kernel unsound.
/// - `softlockup_panic=1`: a CPU stuck in the kernel without scheduling for 20 s.
/// - `hung_task_panic=1` and `hung_task_timeout_secs=120`: a task blocked uninterruptibly for
///   two minutes (a dead disk or a deadlock); the kernel's default period, above any wait a
///   healthy SD card or virtual disk makes, even for the syncs of an install.
/// - `watchdog.open_timeout=120`: where the boot chain started a hardware watchdog before the
///   kernel, the kernel feeds it (`watchdog.handle_boot_enabled`, on in Debian's kernels) until
///   init opens it, but for two minutes at most, so a boot that hangs before init still resets.
///   The kernel applies it where the watchdog core is built in (Debian's generic arm64 kernel,
///   the rpi4's); where the core is a module, init loads it without parameters and the kernel's
///   default (feed until opened) holds, which matters only if firmware started the watchdog.
pub const RESET_ON_HANG: &[&str] = &[
    "panic=5",
    "panic_on_oops=1",
    "softlockup_panic=1",
    "hung_task_panic=1",
    "hung_task_timeout_secs=120",
    "watchdog.open_timeout=120",
];

/// The kernel command-line word a Secure Boot image adds: the kernel refuses what would let root
/// change the running kernel (unsigned modules, /dev/mem, kexec of unsigned kernels).
pub const LOCKDOWN: &str = "lockdown=integrity";

/// The db signer of `--secure-boot DIR`, if given.
fn secure_boot_signer(opts: &BuildOptions) -> Result<Option<cairn_secureboot::Signer>> {
    opts.secure_boot
        .as_deref()
        .map(|dir| cairn_secureboot::Signer::load(dir, "db"))
        .transpose()
        .map_err(Error::from)
}

/// The PCR-signing key of `--secure-boot DIR` (`pcr-signing.key`, which `cairnctl keys
/// gen-secureboot` makes), if the folder has one. Without it the UKIs carry no PCR signature
/// and the device seals to PCR 7 as an unsigned image does.
fn pcr_signing_key(opts: &BuildOptions) -> Result<Option<cairn_tpm::pcrsig::PcrSigningKey>> {
    let Some(dir) = opts.secure_boot.as_deref() else {
        return Ok(None);
    };
    let path = dir.join(format!("{}.key", cairn_secureboot::keys::PCR_SIGNING));
    let pem = match fs::read(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", &path, e)),
    };
    cairn_tpm::pcrsig::PcrSigningKey::from_pem(&pem)
        .map(Some)
        .map_err(|e| Error::PcrSigningKey {
            path,
            reason: match e {
                cairn_tpm::Error::PrivateKey(why) => why,
                other => other.to_string(),
            },
        })
}

/// The `.pcrsig` of a UKI made of `parts` that carries `pcrpkey`: the release's signature of
/// the PCR 11 value systemd's stub will measure for it, with the release's security version
/// (the TPM's anti-rollback floor must not be above it).
pub fn pcr_signature(
    key: &cairn_tpm::pcrsig::PcrSigningKey,
    parts: &cairn_secureboot::uki::UkiParts<'_>,
    pcrpkey: &str,
    security_version: u32,
) -> String {
    let measured = cairn_tpm::uki::UkiParts {
        linux: parts.linux,
        osrel: Some(parts.osrel.as_bytes()),
        cmdline: Some(parts.cmdline.as_bytes()),
        initrd: Some(parts.initrd),
        splash: None,
        dtb: parts.dtb,
        pcrpkey: Some(pcrpkey.as_bytes()),
    };
    key.sign_uki(&measured, u64::from(security_version))
        .to_json()
}

/// One slot's UKI: the stub with the slot's parts and `extra` sections, then signed when a
/// signer is given. `extra` is where sections computed from the others go before the
/// signature: `.pcrsig` and `.pcrpkey` (a PCR 11 policy signed for this very UKI).
pub fn slot_uki(
    stub: Pe,
    parts: &cairn_secureboot::uki::UkiParts<'_>,
    extra: &[(&str, &[u8])],
    signer: Option<&cairn_secureboot::Signer>,
) -> Result<Vec<u8>> {
    let uki = cairn_secureboot::uki::build(stub, parts, extra)?;
    Ok(match signer {
        Some(signer) => signer.sign(uki)?,
        None => uki.into_bytes(),
    })
}

fn initramfs(
    device_bin: &Path,
    watchdog: &[crate::kmod::ModuleFile],
    modules: &[crate::kmod::ModuleFile],
) -> Result<Vec<u8>> {
    let mut tree = Tree::new();
    tree.add_file("init", 0o755, device_bin.to_path_buf())?;
    tree.add_file("etc/cairn/initramfs", 0o644, Vec::<u8>::new())?;
    for (list_path, files) in [
        ("etc/cairn/modules-watchdog", watchdog),
        ("etc/cairn/modules", modules),
    ] {
        let mut list = String::new();
        for m in files {
            let dest = format!("lib/modules/{}.ko", m.name);
            list.push_str(&dest);
            list.push('\n');
            tree.add_file(&dest, 0o644, m.path.clone())?;
        }
        tree.add_file(list_path, 0o644, list.into_bytes())?;
        tree.add_file(&format!("{list_path}.dep"), 0o644, dep_file(files))?;
    }
    for dir in ["dev", "proc", "sys", "run", "newroot"] {
        tree.add_dir(dir, 0o755)?;
    }
    let mut out = Vec::new();
    cpio::write_cpio(&mut out, &tree, IMAGE_EPOCH)?;
    Ok(out)
}

/// The `.dep` file init reads next to a module list (init/src/modules.rs): `name: dep …` for
/// every module with dependencies, so init loads independent modules concurrently.
pub fn dep_file(files: &[crate::kmod::ModuleFile]) -> Vec<u8> {
    let mut out = String::new();
    for m in files.iter().filter(|m| !m.depends.is_empty()) {
        out.push_str(&m.name);
        out.push(':');
        for d in &m.depends {
            out.push(' ');
            out.push_str(d);
        }
        out.push('\n');
    }
    out.into_bytes()
}

fn root_tree(opts: &BuildOptions) -> Result<Tree> {
    let mut tree = Tree::new();
    let init = opts
        .root
        .init_override
        .clone()
        .unwrap_or_else(|| opts.device_bin.clone());
    tree.add_file("sbin/init", 0o755, init)?;
    if let Some(keyring) = &opts.root.keyring {
        tree.add_file("etc/cairn/keyring", 0o644, keyring.clone().into_bytes())?;
    }
    if let Some(config) = &opts.root.machine_config {
        tree.add_file("etc/cairn/machine.yaml", 0o644, config.clone().into_bytes())?;
    }
    let bootloader = match opts.board.boot {
        BootScheme::SystemdBoot { .. } => "systemd-boot",
        BootScheme::RpiTryboot { .. } => "rpi-tryboot",
    };
    let release = format!(
        "VERSION={}\nBOARD={}\nBOOTLOADER={bootloader}\nSECURITY_VERSION={}\n",
        opts.version, opts.board.name, opts.root.security_version
    );
    tree.add_file("etc/cairn/release", 0o644, release.into_bytes())?;
    // The root is read-only; cairnd's network code writes the resolver config under /run.
    tree.add_symlink("etc/resolv.conf", "../run/resolv.conf")?;
    // /boot is where init mounts the bootloader's partition (ESP or the Pi's partition 1);
    // /var/lib/cairn is where cairnd mounts STATE; /etc/cni and /etc/rancher are where it
    // binds their writable copies on DATA (daemon/src/containers.rs).
    for dir in [
        "etc/cni",
        "etc/rancher",
        "boot",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "var/lib",
        "var/lib/cairn",
    ] {
        tree.add_dir(dir, 0o755)?;
    }
    Ok(tree)
}

/// Where the root keeps the kernel modules for containers, and the lists init reads after
/// `ready` (init/src/containers.rs).
pub const CONTAINER_MODULE_DIR: &str = "usr/lib/cairn/modules";
pub const CONTAINER_MODULE_LIST: &str = "etc/cairn/modules-containers";
pub const CONTAINER_MODULES_MISSING: &str = "etc/cairn/modules-containers-missing";

/// Where the root keeps the kernel modules stage 2 loads right after `ready`, and their list
/// (with its `.dep` file, init/src/modules.rs; init/src/late.rs).
pub const LATE_MODULE_DIR: &str = "usr/lib/cairn/modules-late";
pub const LATE_MODULE_LIST: &str = "etc/cairn/modules-late";

fn add_late_modules(root: &mut Tree, files: &[crate::kmod::ModuleFile]) -> Result<()> {
    let mut list = String::new();
    for m in files {
        let dest = format!("{LATE_MODULE_DIR}/{}.ko", m.name);
        list.push_str(&dest);
        list.push('\n');
        root.add_file(&dest, 0o644, m.path.clone())?;
    }
    root.add_file(LATE_MODULE_LIST, 0o644, list.into_bytes())?;
    root.add_file(&format!("{LATE_MODULE_LIST}.dep"), 0o644, dep_file(files))?;
    Ok(())
}

/// Resolves the board's container modules one by one: those the kernel lacks are returned by
/// name rather than failing the build, so the device can say at boot what it is missing.
fn container_modules(
    tree: &ModuleTree,
    wanted: &[&str],
) -> Result<(Vec<crate::kmod::ModuleFile>, Vec<String>)> {
    let mut found: Vec<crate::kmod::ModuleFile> = Vec::new();
    let mut missing = Vec::new();
    for name in wanted {
        match tree.resolve(&[name]) {
            Ok(files) => {
                for f in files {
                    if found.iter().all(|m| m.name != f.name) {
                        found.push(f);
                    }
                }
            }
            Err(Error::ModuleNotFound { name, .. }) => missing.push(name),
            Err(e) => return Err(e),
        }
    }
    Ok((found, missing))
}

fn add_container_modules(
    root: &mut Tree,
    found: &[crate::kmod::ModuleFile],
    missing: &[String],
) -> Result<()> {
    let mut list = String::new();
    for m in found {
        let dest = format!("{CONTAINER_MODULE_DIR}/{}.ko", m.name);
        list.push_str(&dest);
        list.push('\n');
        root.add_file(&dest, 0o644, m.path.clone())?;
    }
    root.add_file(CONTAINER_MODULE_LIST, 0o644, list.into_bytes())?;
    let mut names = missing.join("\n");
    if !names.is_empty() {
        names.push('\n');
    }
    root.add_file(CONTAINER_MODULES_MISSING, 0o644, names.into_bytes())?;
    Ok(())
}

/// Copies `len` bytes of `from` into `disk` at `at`.
fn copy_into(from: &Path, disk: &mut File, at: u64, len: u64) -> std::io::Result<()> {
    use std::io::Read;
    let src = File::open(from)?;
    disk.seek(SeekFrom::Start(at))?;
    let copied = std::io::copy(&mut src.take(len), disk)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} ends after {copied} of {len} bytes", from.display()),
        ));
    }
    Ok(())
}

fn package_input(p: &FetchedPackage) -> InputInfo {
    InputInfo::DebianPackage {
        package: p.record.clone(),
        requested: p.requested.clone(),
        source: "apt",
    }
}

fn package_content(p: &FetchedPackage, what: &'static str, path: &Path) -> Error {
    Error::PackageContent {
        package: format!("{} {}", p.record.package, p.record.version),
        what,
        path: path
            .strip_prefix(&p.root)
            .unwrap_or(path)
            .display()
            .to_string(),
    }
}

fn validate_version(v: &str) -> Result<()> {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadVersion(v.to_string()))
    }
}

/// Refuses a device binary that is missing, dynamically linked or built for another CPU: such an
/// image would build fine and then fail to boot.
fn check_device_binary(path: &Path, arch: Arch) -> Result<()> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::DeviceBinaryMissing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    let (expected, machine) = match arch {
        Arch::Aarch64 => ("aarch64", 0xB7u16),
        Arch::X86_64 => ("x86_64", 0x3Eu16),
    };
    let wrong = |found: String| Error::DeviceBinaryWrongArch {
        path: path.to_path_buf(),
        expected,
        found,
        target: arch.rust_target(),
    };
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) {
        return Err(wrong("not an ELF64 file".into()));
    }
    match u16_at(0x12) {
        Some(m) if m == machine => {}
        Some(0xB7) => return Err(wrong("built for aarch64".into())),
        Some(0x3E) => return Err(wrong("built for x86_64".into())),
        other => return Err(wrong(format!("ELF machine {other:?}"))),
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err(wrong("truncated ELF header".into()));
    };
    const PT_INTERP: u32 = 3;
    for i in 0..phnum as usize {
        let at = phoff + i * phentsize as usize;
        let p_type = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])));
        if p_type == Some(PT_INTERP) {
            return Err(wrong("dynamically linked".into()));
        }
    }
    Ok(())
}

fn sha256_region(file: &mut File, offset: u64, len: u64) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    file.seek(SeekFrom::Start(offset))?;
    let mut hasher = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = buf.len().min(left as usize);
        file.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io("creating", path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("writing", path, e))
}

/// The hidden folder a build writes into; removed on drop unless committed.
struct Staging {
    dir: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(out: &Path) -> Result<Self> {
        let name = out.file_name().ok_or_else(|| Error::BadOut {
            path: out.to_path_buf(),
            reason: "it has no folder name",
        })?;
        if out.exists() && !out.is_dir() {
            return Err(Error::BadOut {
                path: out.to_path_buf(),
                reason: "it exists and is not a folder",
            });
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
        let dir = parent.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
            committed: false,
        })
    }

    /// Moves the finished build into place, replacing an earlier one as a whole.
    fn commit(mut self) -> Result<()> {
        let old = self.dir.with_extension("old");
        if self.out.exists() {
            fs::rename(&self.out, &old).map_err(|e| Error::io("moving aside", &self.out, e))?;
        }
        fs::rename(&self.dir, &self.out)
            .map_err(|e| Error::io("moving into place", &self.out, e))?;
        self.committed = true;
        let _ = fs::remove_dir_all(&old);
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Copies `from` to `to` leaving holes where `from` has blocks of zeros, as `cp --sparse=always`
/// does. Disk images are mostly empty; copying them this way takes a tenth of the space.
pub fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    const BLOCK: usize = 64 * 1024;
    let mut src = File::open(from)?;
    let len = src.metadata()?.len();
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)?;
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let n = BLOCK.min((len - pos) as usize);
        src.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(pos))?;
            dst.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    dst.set_len(len)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sparse_keeps_bytes_and_leaves_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        // 8 MiB of zeros with data at the start, in the middle (unaligned) and in the last byte.
        let mut bytes = vec![0u8; 8 << 20];
        bytes[..5].copy_from_slice(b"cairn");
        bytes[3_000_001] = 7;
        *bytes.last_mut().unwrap() = 9;
        fs::write(&from, &bytes).unwrap();
        assert_eq!(copy_sparse(&from, &to).unwrap(), bytes.len() as u64);
        assert_eq!(fs::read(&to).unwrap(), bytes);
        // Three 64 KiB blocks hold data; the rest are holes.
        let allocated = fs::metadata(&to).unwrap().blocks() * 512;
        assert!(allocated <= 1 << 20, "{allocated} bytes allocated");
        // Copying over a longer file leaves no tail behind.
        fs::write(&from, b"short").unwrap();
        copy_sparse(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"short");
    }

    #[test]
    fn versions() {
        for ok in ["0.1.0", "1.22.333", "1.0.0-rc.1", "1.0.0+build.5"] {
            assert!(validate_version(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1.0", "1.0.x", "1.0.0 ", "v1.0.0", "1.0.0;rm"] {
            assert!(validate_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cmdline_names_console_and_slot() {
        let board = cairn_board::find("qemu-x86_64").unwrap();
        let tree = verity::VerityTree {
            root_hash: [0xab; 32],
            hash_offset: 8192,
            hash_size: 4096,
            data_blocks: 2,
            salt: vec![1],
            uuid: [0; 16],
        };
        let c = kernel_cmdline(board, Slot::B, &tree, None);
        assert!(c.starts_with("console=ttyS0 "), "{c}");
        assert!(c.contains(" cairn.slot=b "), "{c}");
        assert!(
            c.contains(&format!(" cairn.roothash={} ", "ab".repeat(32))),
            "{c}"
        );
        assert!(c.contains(" cairn.hashoffset=8192"), "{c}");
        assert!(c.ends_with(&board.kernel_args.join(" ")), "{c}");
        for arg in [
            "panic=5",
            "panic_on_oops=1",
            "softlockup_panic=1",
            "hung_task_panic=1",
            "hung_task_timeout_secs=120",
        ] {
            assert!(c.split(' ').any(|w| w == arg), "{arg} missing: {c}");
        }
    }

    #[test]
    fn device_binary_checks() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = check_device_binary(&missing, Arch::X86_64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo xtask device"), "{err}");
        let garbage = dir.path().join("garbage");
        fs::write(&garbage, b"#!/bin/sh\n").unwrap();
        assert!(check_device_binary(&garbage, Arch::X86_64).is_err());
        // The test binary itself is an x86_64 (or other host) ELF with an interpreter.
        let me = std::env::current_exe().unwrap();
        let err = check_device_binary(&me, Arch::Aarch64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("aarch64"), "{err}");
    }

    #[test]
    fn failed_build_leaves_no_partial_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        {
            let staging = Staging::new(&out).unwrap();
            fs::write(staging.dir.join("disk.img"), b"half").unwrap();
        }
        assert!(!out.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_replaces_previous_output_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("stale"), b"old").unwrap();
        let staging = Staging::new(&out).unwrap();
        fs::write(staging.dir.join("disk.img"), b"new").unwrap();
        staging.commit().unwrap();
        assert!(!out.join("stale").exists());
        assert_eq!(fs::read(out.join("disk.img")).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
