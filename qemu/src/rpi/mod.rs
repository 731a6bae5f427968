//! A Raspberry Pi 4 under QEMU's `raspi4b` machine, with the harness in the firmware's place.
//!
//! QEMU cannot run the Pi's firmware (start4.elf runs on the VideoCore, which QEMU does not
//! emulate); it starts a kernel directly. So [`Pi4`] does, at each power-on, what the firmware
//! would ([`firmware`]): read autoboot.txt from the SD card's partition 1, pick the boot
//! partition (honouring the one-shot tryboot flag the previous reboot left), take that
//! partition's kernel, initramfs, device tree and cmdline.txt as its config.txt names them, and
//! report the choice in `/chosen/bootloader` of a patched copy of the device tree ([`dtb`]). A
//! reboot ends the QEMU process (the kernel's `reboot: Restarting system with command '…'` line
//! tells the harness the argument the firmware would have been handed) and the next power-on
//! decides again. The one-shot flag lives in the work folder between the two, as the firmware
//! keeps it across exactly one reset.
//!
//! The SD card is a private copy of the image (or the caller's own copy), padded to a power of
//! two as QEMU's SD card model requires; the shipped image is never written.
//!
//! `raspi4b` exists from QEMU 9.0 on; Debian bookworm has 7.2. `cargo xtask setup` unpacks
//! bookworm-backports' QEMU 10 into a private prefix ([`install_dir`]) and leaves the system's
//! QEMU alone.

pub mod dtb;
pub mod fdt;
pub mod firmware;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_boot::fs::Fs;
use cairn_image::formats::fat_fs::FatPartitionFs;

use crate::error::{Error, Result};
use crate::machine::{Machine, Start};
use crate::options::WorkPaths;
use crate::timeouts::Timeouts;
use firmware::{Choice, Config, OneShot};

/// QEMU's machine type.
pub const MACHINE: &str = "raspi4b";

/// Overrides where the raspi4b-capable `qemu-system-aarch64` is.
pub const QEMU_ENV: &str = "CAIRN_RPI_QEMU";

/// Console lines that end a boot: the kernel restarting or powering off, or a panic's reboot.
const RESET_LINES: [&str; 4] = [
    "reboot: Restarting system",
    "reboot: Power down",
    "reboot: System halted",
    "Rebooting in ",
];

/// Largest kernel, initramfs and device tree read from the boot partition.
const KERNEL_MAX: usize = 128 << 20;
const INITRAMFS_MAX: usize = 256 << 20;
const DTB_MAX: usize = 1 << 20;

/// How long QEMU gets to exit after `quit` before it is killed (before scaling).
const QUIT_GRACE: Duration = Duration::from_secs(10);

/// The per-user folder `cargo xtask setup` unpacks the newer QEMU into; shared by every
/// checkout, keyed inside by the package's sha256.
pub fn install_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("cairn/qemu-raspi4b")
}

/// The unpacked package setup points [`install_dir`]`/current` at.
pub fn prefix() -> PathBuf {
    install_dir().join("current")
}

/// The `qemu-system-aarch64` that has `raspi4b`: [`QEMU_ENV`] if set, else the private prefix.
pub fn qemu_binary() -> PathBuf {
    match std::env::var_os(QEMU_ENV) {
        Some(p) => PathBuf::from(p),
        None => prefix().join("usr/bin/qemu-system-aarch64"),
    }
}

/// How to start the Pi.
#[derive(Debug, Clone)]
pub struct PiOptions {
    /// The built `disk.img` (GPT: BOOT, BOOT-A, BOOT-B, …).
    pub image: PathBuf,
    /// The SD card copy, the one-shot flag, each boot's files and logs.
    pub work_dir: PathBuf,
    /// Boot `image` itself (the caller's private copy, which is padded in place) instead of a
    /// copy in the work folder.
    pub writable_image: bool,
    /// Keep the SD card copy an earlier run left in the work folder.
    pub reuse_disk: bool,
    pub echo_console: bool,
    /// Appended to each QEMU command line.
    pub extra_args: Vec<String>,
    /// Run this instead of [`qemu_binary`] (tests of the harness).
    pub binary_override: Option<PathBuf>,
    /// `None` reads `CAIRN_QEMU_TIMEOUT_SCALE`.
    pub timeouts: Option<Timeouts>,
}

impl PiOptions {
    pub fn new(image: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> PiOptions {
        PiOptions {
            image: image.into(),
            work_dir: work_dir.into(),
            writable_image: false,
            reuse_disk: false,
            echo_console: false,
            extra_args: Vec::new(),
            binary_override: None,
            timeouts: None,
        }
    }
}

/// What the firmware decided for one power-on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiBoot {
    /// 1 for the first power-on of this [`Pi4`].
    pub number: u32,
    pub partition: u32,
    pub tryboot: bool,
    pub config: Config,
    /// The kernel command line passed (cmdline.txt with the console on the PL011).
    pub cmdline: String,
}

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reset {
    /// The kernel restarted, with the reboot argument if there was one.
    Restart { argument: Option<String> },
    /// The kernel powered off or halted.
    PowerOff,
    /// QEMU exited on its own.
    Exited,
}

/// One emulated Raspberry Pi 4: its SD card and, while powered, its QEMU process.
#[derive(Debug)]
pub struct Pi4 {
    opts: PiOptions,
    work_dir: PathBuf,
    sd: PathBuf,
    timeouts: Timeouts,
    boots: u32,
    machine: Option<Machine>,
}

impl Pi4 {
    /// Prepares the SD card (a padded copy unless `writable_image`); does not power on.
    pub fn new(opts: PiOptions) -> Result<Pi4> {
        let work_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::WorkDir { path, source }
        };
        fs::create_dir_all(&opts.work_dir).map_err(work_err(&opts.work_dir))?;
        let work_dir = fs::canonicalize(&opts.work_dir).map_err(work_err(&opts.work_dir))?;
        let timeouts = match opts.timeouts {
            Some(t) => t,
            None => Timeouts::from_env()?,
        };
        let sd = if opts.writable_image {
            opts.image.clone()
        } else {
            let sd = work_dir.join("sd.img");
            if !(opts.reuse_disk && sd.is_file()) {
                cairn_image::copy_sparse(&opts.image, &sd).map_err(|source| Error::DiskImage {
                    path: opts.image.clone(),
                    source,
                })?;
                // A fresh card: no reboot is pending.
                let _ = fs::remove_file(work_dir.join(ONE_SHOT_FILE));
            }
            sd
        };
        pad_to_power_of_two(&sd)?;
        Ok(Pi4 {
            opts,
            work_dir,
            sd,
            timeouts,
            boots: 0,
            machine: None,
        })
    }

    /// The SD card image QEMU runs from. Change it only while the Pi is off.
    pub fn sd_path(&self) -> &Path {
        &self.sd
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Leaves a one-shot reboot argument for the next power-on, as a reboot with `argument`
    /// (`"0 tryboot"`) would. For a trial set up from the host.
    pub fn set_reboot_argument(&self, argument: &str) -> Result<()> {
        self.store_one_shot(OneShot::from_reboot_argument(argument))
    }

    /// The running machine, if powered.
    pub fn machine(&mut self) -> Option<&mut Machine> {
        self.machine.as_mut()
    }

    /// Plays the firmware and starts QEMU. The Pi must be off.
    pub fn power_on(&mut self) -> Result<PiBoot> {
        if self.machine.is_some() {
            return Err(self.firmware_error("power_on while the machine runs".into()));
        }
        let shot = self.take_one_shot()?;
        self.boots += 1;
        let number = self.boots;
        let dir = self.work_dir.join(format!("boot-{number}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|source| Error::WorkDir {
            path: dir.clone(),
            source,
        })?;

        let partitions = self.partitions()?;
        let volume = |n: u32| -> Result<FatPartitionFs> {
            let &(offset, len) = partitions
                .get((n as usize).wrapping_sub(1))
                .ok_or_else(|| self.firmware_error(format!("the SD card has no partition {n}")))?;
            Ok(FatPartitionFs::new(&self.sd, offset, len))
        };
        let autoboot = read_text(
            &volume(1)?,
            "autoboot.txt",
            firmware::AUTOBOOT_MAX_BYTES + 1,
        )
        .map_err(|e| self.firmware_error(e))?;
        let choice: Choice = firmware::choose_partition(autoboot.as_deref(), shot)
            .map_err(|e| self.firmware_error(e.to_string()))?;
        let boot = volume(choice.partition)?;
        let config_name = firmware::config_file(shot.tryboot, choice);
        let config_text = read_text(&boot, config_name, firmware::CONFIG_MAX_BYTES)
            .map_err(|e| self.firmware_error(e))?
            .unwrap_or_default();
        let config = Config::parse(&config_text, shot.tryboot);
        let need = |name: &str, limit: usize| -> Result<Vec<u8>> {
            boot.read(name, limit)
                .map_err(|e| self.firmware_error(format!("partition {}: {e}", choice.partition)))?
                .ok_or_else(|| {
                    self.firmware_error(format!(
                        "partition {} has no {name} ({config_name} names it)",
                        choice.partition
                    ))
                })
        };
        let cmdline_txt =
            String::from_utf8_lossy(&need(&config.cmdline, firmware::CONFIG_MAX_BYTES)?)
                .into_owned();
        let cmdline = firmware::kernel_cmdline(&cmdline_txt);
        let dtb = dtb::for_emulator(
            &need(&config.device_tree, DTB_MAX)?,
            shot.tryboot,
            choice.partition,
        )
        .map_err(|e| self.firmware_error(format!("{}: {e}", config.device_tree)))?;

        let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
            let path = dir.join(name);
            fs::write(&path, bytes).map_err(|source| Error::WorkDir {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        };
        let kernel = write("kernel", &need(&config.kernel, KERNEL_MAX)?)?;
        let initrd = match &config.initramfs {
            Some(name) => Some(write("initramfs", &need(name, INITRAMFS_MAX)?)?),
            None => None,
        };
        let dtb_path = write("device-tree.dtb", &dtb)?;
        write("cmdline", cmdline.as_bytes())?;

        let paths = WorkPaths::new(&dir);
        let args = qemu_args(
            &paths,
            &kernel,
            initrd.as_deref(),
            &dtb_path,
            &cmdline,
            &self.sd,
            &self.opts.extra_args,
        );
        let binary = self
            .opts
            .binary_override
            .clone()
            .unwrap_or_else(qemu_binary);
        let env = module_dir(&binary)
            .map(|d| vec![("QEMU_MODULE_DIR".to_string(), d.into_os_string())])
            .unwrap_or_default();
        self.machine = Some(Machine::start(Start {
            is_board_binary: self.opts.binary_override.is_none(),
            binary,
            args,
            env,
            paths,
            echo_console: self.opts.echo_console,
            removable: None,
            timeouts: self.timeouts,
            qmp_connect_timeout: Duration::from_secs(10),
            reused_disk: number > 1 || self.opts.reuse_disk,
        })?);
        Ok(PiBoot {
            number,
            partition: choice.partition,
            tryboot: shot.tryboot,
            config,
            cmdline,
        })
    }

    /// Waits up to `timeout` for the running kernel to restart or power off (or QEMU to exit),
    /// then stops QEMU and keeps what a restart's argument asks of the next boot.
    pub fn wait_for_reset(&mut self, timeout: Duration) -> Result<Reset> {
        let machine = self.machine.as_mut().ok_or_else(|| Error::RpiFirmware {
            sd: self.sd.clone(),
            reason: "wait_for_reset while the machine is off".into(),
        })?;
        let reset = match machine.wait_for_any(&RESET_LINES, timeout) {
            Ok(m) if m.needle == 0 => Reset::Restart {
                argument: reboot_argument(&m.line),
            },
            Ok(m) if m.needle == 3 => Reset::Restart { argument: None },
            Ok(_) => Reset::PowerOff,
            Err(Error::Exited { .. }) => Reset::Exited,
            Err(e) => return Err(e),
        };
        self.stop()?;
        if let Reset::Restart {
            argument: Some(arg),
        } = &reset
        {
            self.store_one_shot(OneShot::from_reboot_argument(arg))?;
        }
        Ok(reset)
    }

    /// [`Pi4::wait_for_reset`], then the next power-on.
    pub fn reboot(&mut self, timeout: Duration) -> Result<(Reset, PiBoot)> {
        let reset = self.wait_for_reset(timeout)?;
        Ok((reset, self.power_on()?))
    }

    /// Cuts the power: QEMU is stopped at once, and a pending one-shot flag is lost with it.
    pub fn power_off(&mut self) -> Result<()> {
        self.stop()?;
        match fs::remove_file(self.work_dir.join(ONE_SHOT_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::WorkDir {
                path: self.work_dir.join(ONE_SHOT_FILE),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Stops QEMU by its pid: QMP `quit`, then `SIGKILL` if it does not go.
    fn stop(&mut self) -> Result<()> {
        let Some(mut machine) = self.machine.take() else {
            return Ok(());
        };
        if machine.try_exit()?.is_some() {
            return Ok(());
        }
        if machine.quit().is_ok() && machine.wait_exit(QUIT_GRACE).is_ok() {
            return Ok(());
        }
        machine.kill().map(drop)
    }

    /// (offset, length) of each GPT partition, by partition number - 1.
    fn partitions(&self) -> Result<Vec<(u64, u64)>> {
        let mut file = fs::File::open(&self.sd).map_err(|source| Error::DiskImage {
            path: self.sd.clone(),
            source,
        })?;
        let gpt = cairn_image::formats::gpt::read(&mut file)
            .map_err(|e| self.firmware_error(format!("partition table: {e}")))?;
        Ok(gpt
            .partitions
            .iter()
            .map(|p| (p.first_lba * 512, p.size_bytes()))
            .collect())
    }

    fn take_one_shot(&self) -> Result<OneShot> {
        let path = self.work_dir.join(ONE_SHOT_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                fs::remove_file(&path).map_err(|source| Error::WorkDir { path, source })?;
                Ok(OneShot::from_text(&text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OneShot::default()),
            Err(source) => Err(Error::WorkDir { path, source }),
        }
    }

    fn store_one_shot(&self, shot: OneShot) -> Result<()> {
        let path = self.work_dir.join(ONE_SHOT_FILE);
        if shot == OneShot::default() {
            let _ = fs::remove_file(&path);
            return Ok(());
        }
        fs::write(&path, shot.to_text()).map_err(|source| Error::WorkDir { path, source })
    }

    fn firmware_error(&self, reason: String) -> Error {
        Error::RpiFirmware {
            sd: self.sd.clone(),
            reason,
        }
    }
}

/// The file in the work folder that carries the reboot's argument to the next power-on.
const ONE_SHOT_FILE: &str = "firmware-one-shot";

/// `reboot: Restarting system with command '0 tryboot'` → `0 tryboot`.
fn reboot_argument(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("with command '")?;
    let end = rest.rfind('\'')?;
    Some(rest[..end].to_string())
}

fn read_text(
    volume: &FatPartitionFs,
    name: &str,
    limit: usize,
) -> std::result::Result<Option<String>, String> {
    volume
        .read(name, limit)
        .map(|o| o.map(|b| String::from_utf8_lossy(&b).into_owned()))
        .map_err(|e| format!("{name}: {e}"))
}

/// QEMU's SD card model takes only power-of-two sizes: grow the file (sparsely) to the next.
/// The GPT's backup header then is no longer in the last sector; the kernel warns and uses the
/// primary.
fn pad_to_power_of_two(sd: &Path) -> Result<()> {
    let err = |source| Error::DiskImage {
        path: sd.to_path_buf(),
        source,
    };
    let file = fs::OpenOptions::new().write(true).open(sd).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if !len.is_power_of_two() {
        file.set_len(len.next_power_of_two()).map_err(err)?;
    }
    Ok(())
}

/// The private prefix's module folder for a binary at `<prefix>/usr/bin/…`, so that the
/// system's QEMU modules (another version) are never loaded into it. `None` for a binary that
/// is not in such a prefix.
fn module_dir(binary: &Path) -> Option<PathBuf> {
    let usr = binary.parent()?.parent()?;
    (usr.file_name()? == "usr" && usr.parent()? != Path::new("/"))
        .then(|| usr.join("lib/qemu-modules"))
}

/// The command line of one power-on: direct kernel boot, the SD card, the PL011 on stdio, QMP.
/// `-no-reboot`: should the guest reset the machine by itself, QEMU exits instead of starting
/// the same kernel again, because the next boot is the harness's (the firmware's) decision.
fn qemu_args(
    paths: &WorkPaths,
    kernel: &Path,
    initrd: Option<&Path>,
    dtb: &Path,
    cmdline: &str,
    sd: &Path,
    extra: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut opt = |name: &str, value: OsString| {
        args.push(name.into());
        args.push(value);
    };
    opt("-machine", MACHINE.into());
    opt("-accel", "tcg".into());
    opt("-kernel", kernel.into());
    if let Some(initrd) = initrd {
        opt("-initrd", initrd.into());
    }
    opt("-dtb", dtb.into());
    opt("-append", cmdline.into());
    opt("-drive", with_path("if=sd,format=raw,file=", sd, ""));
    opt("-chardev", "stdio,id=con0,signal=off".into());
    opt("-serial", "chardev:con0".into());
    opt("-display", "none".into());
    opt("-monitor", "none".into());
    opt(
        "-qmp",
        with_path("unix:", &paths.qmp_socket, ",server=on,wait=off"),
    );
    args.push("-no-reboot".into());
    args.extend(extra.iter().map(OsString::from));
    args
}

/// `prefix`, `path` with commas doubled (QEMU's escape), `suffix`.
fn with_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str().to_string_lossy().replace(',', ",,"));
    s.push(suffix);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_lines() {
        assert_eq!(
            reboot_argument("[   12.1] reboot: Restarting system with command '0 tryboot'"),
            Some("0 tryboot".into())
        );
        assert_eq!(reboot_argument("reboot: Restarting system"), None);
    }

    #[test]
    fn command_line() {
        let paths = WorkPaths::new(Path::new("/w/boot-1"));
        let args = qemu_args(
            &paths,
            Path::new("/w/boot-1/kernel"),
            Some(Path::new("/w/boot-1/initramfs")),
            Path::new("/w/boot-1/device-tree.dtb"),
            "console=ttyAMA0,115200 cairn.slot=a",
            Path::new("/w/sd,1.img"),
            &[],
        );
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-machine",
                "raspi4b",
                "-accel",
                "tcg",
                "-kernel",
                "/w/boot-1/kernel",
                "-initrd",
                "/w/boot-1/initramfs",
                "-dtb",
                "/w/boot-1/device-tree.dtb",
                "-append",
                "console=ttyAMA0,115200 cairn.slot=a",
                "-drive",
                "if=sd,format=raw,file=/w/sd,,1.img",
                "-chardev",
                "stdio,id=con0,signal=off",
                "-serial",
                "chardev:con0",
                "-display",
                "none",
                "-monitor",
                "none",
                "-qmp",
                "unix:/w/boot-1/qmp.sock,server=on,wait=off",
                "-no-reboot",
            ]
        );
    }

    #[test]
    fn padding_reaches_a_power_of_two_and_keeps_one() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("sd.img");
        fs::write(&sd, vec![7u8; 3000]).unwrap();
        pad_to_power_of_two(&sd).unwrap();
        assert_eq!(fs::metadata(&sd).unwrap().len(), 4096);
        pad_to_power_of_two(&sd).unwrap();
        assert_eq!(fs::metadata(&sd).unwrap().len(), 4096);
        assert_eq!(&fs::read(&sd).unwrap()[..3000], &[7u8; 3000][..]);
    }

    #[test]
    fn modules_come_only_from_a_private_prefix() {
        assert_eq!(
            module_dir(Path::new("/c/qemu/current/usr/bin/qemu-system-aarch64")),
            Some(PathBuf::from("/c/qemu/current/usr/lib/qemu-modules"))
        );
        assert_eq!(module_dir(Path::new("/usr/bin/qemu-system-aarch64")), None);
    }
}
