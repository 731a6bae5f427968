//! The Raspberry Pi firmware's boot decisions, as its documentation states them, for a machine
//! QEMU starts with `-kernel` instead of the firmware.
//!
//! What the firmware does before the kernel runs, and so what this module does:
//!
//! 1. Reads `autoboot.txt` from partition 1. Without it, partition 1 itself is the boot
//!    partition. With it, `boot_partition` names the partition; when the one-shot tryboot flag
//!    is set and `tryboot_a_b=1`, the `[tryboot]` section applies too, so its `boot_partition`
//!    wins. A reboot can also name a partition for the next boot only (`reboot "N"`; 0 means
//!    "as autoboot.txt says").
//! 2. Reads `config.txt` of that partition (`tryboot.txt` instead, when the flag is set and
//!    autoboot.txt did not use it for an A/B switch), with the sections that apply to a Pi 4:
//!    `[all]`, `[pi4]`, and `[tryboot]` while the flag is set. From it: `kernel`
//!    (default `kernel8.img`), `initramfs <file> followkernel`, `cmdline` (default
//!    `cmdline.txt`), `device_tree` (default `bcm2711-rpi-4-b.dtb`) and `os_prefix`.
//! 3. Reports what it did in the device tree, `/chosen/bootloader/{tryboot,partition}`.
//!
//! A line is `key=value` (`initramfs` takes a space); `#` starts a comment; a later line beats an
//! earlier one. Section filters are not combined: each `[...]` line replaces the previous one
//! (enough for what Cairn's images and the firmware's own examples write).
//!
//! The flag and the one-shot partition come from the argument of the reboot that ended the
//! previous boot (`reboot "0 tryboot"`), and live for one boot: [`OneShot`].

/// The most of autoboot.txt the firmware reads.
pub const AUTOBOOT_MAX_BYTES: usize = 512;
/// Largest config.txt / cmdline.txt read.
pub const CONFIG_MAX_BYTES: usize = 64 * 1024;

/// Why the firmware cannot boot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FirmwareError(pub String);

/// What a reboot passes to the next boot, and only to that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OneShot {
    pub tryboot: bool,
    /// A partition named by the reboot; `None` (or 0 on the wire) follows autoboot.txt.
    pub partition: Option<u32>,
}

impl OneShot {
    /// From the reboot's argument, `"<partition> [tryboot]"` (`"0 tryboot"`, `"2"`, `""`).
    pub fn from_reboot_argument(arg: &str) -> OneShot {
        let mut shot = OneShot::default();
        for word in arg.split_whitespace() {
            if word == "tryboot" {
                shot.tryboot = true;
            } else if let Ok(n) = word.parse::<u32>() {
                shot.partition = (n != 0).then_some(n);
            }
        }
        shot
    }

    /// The text kept in the harness's work folder between two boots.
    pub fn to_text(self) -> String {
        format!(
            "tryboot={}\npartition={}\n",
            u8::from(self.tryboot),
            self.partition.unwrap_or(0)
        )
    }

    pub fn from_text(text: &str) -> OneShot {
        let mut shot = OneShot::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("tryboot", v)) => shot.tryboot = v.trim() == "1",
                Some(("partition", v)) => {
                    shot.partition = v.trim().parse().ok().filter(|&n| n != 0)
                }
                _ => {}
            }
        }
        shot
    }
}

/// Which sections of a config file apply.
#[derive(Debug, Clone, Copy)]
struct Filter {
    tryboot: bool,
}

impl Filter {
    fn applies(self, section: &str) -> bool {
        match section.trim().to_ascii_lowercase().as_str() {
            "all" | "pi4" => true,
            "tryboot" => self.tryboot,
            _ => false,
        }
    }
}

/// The `key=value` lines that apply, in order (`initramfs a b` as key `initramfs`, value `a b`).
fn settings(text: &str, filter: Filter) -> Vec<(String, String)> {
    let mut on = true;
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            on = filter.applies(section);
            continue;
        }
        if !on {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) if !k.contains(' ') => (k, v),
            _ => line.split_once(' ').unwrap_or((line, "")),
        };
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

fn last<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The partition to boot and whether autoboot.txt's `[tryboot]` took part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub partition: u32,
    /// The flag switched the partition (`tryboot_a_b=1`); otherwise a set flag selects
    /// tryboot.txt over config.txt.
    pub a_b: bool,
}

/// Step 1: the boot partition from autoboot.txt (`None` when partition 1 has none).
pub fn choose_partition(autoboot: Option<&str>, shot: OneShot) -> Result<Choice, FirmwareError> {
    let Some(text) = autoboot else {
        return Ok(Choice {
            partition: shot.partition.unwrap_or(1),
            a_b: false,
        });
    };
    if text.len() > AUTOBOOT_MAX_BYTES {
        return Err(FirmwareError(format!(
            "autoboot.txt is {} bytes; the firmware reads only {AUTOBOOT_MAX_BYTES}",
            text.len()
        )));
    }
    let plain = settings(text, Filter { tryboot: false });
    let a_b = last(&plain, "tryboot_a_b") == Some("1");
    let used = if shot.tryboot && a_b {
        settings(text, Filter { tryboot: true })
    } else {
        plain
    };
    let partition = match shot.partition {
        Some(n) => n,
        None => {
            let value = last(&used, "boot_partition").ok_or_else(|| {
                FirmwareError("autoboot.txt names no boot_partition for this boot".into())
            })?;
            value.parse().map_err(|_| {
                FirmwareError(format!(
                    "autoboot.txt: boot_partition={value} is not a number"
                ))
            })?
        }
    };
    Ok(Choice {
        partition,
        a_b: shot.tryboot && a_b,
    })
}

/// Step 2: what config.txt (or tryboot.txt) asks the firmware to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub kernel: String,
    pub initramfs: Option<String>,
    pub cmdline: String,
    pub device_tree: String,
}

/// The config file the firmware reads on this boot.
pub fn config_file(tryboot: bool, choice: Choice) -> &'static str {
    if tryboot && !choice.a_b {
        "tryboot.txt"
    } else {
        "config.txt"
    }
}

impl Config {
    pub fn parse(text: &str, tryboot: bool) -> Config {
        let s = settings(text, Filter { tryboot });
        let prefix = last(&s, "os_prefix").unwrap_or("");
        let with_prefix = |name: &str| format!("{prefix}{name}");
        let initramfs = last(&s, "initramfs").map(|v| {
            // `initramfs <file> followkernel` (or an address): the file is the first word.
            with_prefix(v.split_whitespace().next().unwrap_or(v))
        });
        Config {
            kernel: with_prefix(last(&s, "kernel").unwrap_or("kernel8.img")),
            initramfs,
            cmdline: with_prefix(last(&s, "cmdline").unwrap_or("cmdline.txt")),
            device_tree: with_prefix(last(&s, "device_tree").unwrap_or("bcm2711-rpi-4-b.dtb")),
        }
    }
}

/// The kernel command line from cmdline.txt: its first line. `console=` on the mini UART (the
/// Pi's `serial0` with `enable_uart=1`, `ttyS1` to the kernel) moves to the PL011 (`ttyAMA0`):
/// QEMU's model of the mini UART raises interrupts without end, so the emulator's console is
/// the PL011, the one QEMU connects to `-serial`.
pub fn kernel_cmdline(cmdline_txt: &str) -> String {
    let first = cmdline_txt.lines().next().unwrap_or("").trim();
    first
        .split_whitespace()
        .map(|w| match w.strip_prefix("console=") {
            Some(dev)
                if ["ttyS1", "serial0", "serial1"]
                    .iter()
                    .any(|m| dev == *m || dev.starts_with(&format!("{m},"))) =>
            {
                let speed = dev.split_once(',').map(|(_, s)| s);
                match speed {
                    Some(s) => format!("console=ttyAMA0,{s}"),
                    None => "console=ttyAMA0".to_string(),
                }
            }
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAIRN: &str = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

    #[test]
    fn reboot_arguments() {
        assert_eq!(
            OneShot::from_reboot_argument("0 tryboot"),
            OneShot {
                tryboot: true,
                partition: None
            }
        );
        assert_eq!(
            OneShot::from_reboot_argument("3"),
            OneShot {
                tryboot: false,
                partition: Some(3)
            }
        );
        assert_eq!(
            OneShot::from_reboot_argument("dm-verity device corrupted"),
            OneShot::default()
        );
        let shot = OneShot {
            tryboot: true,
            partition: Some(5),
        };
        assert_eq!(OneShot::from_text(&shot.to_text()), shot);
        assert_eq!(OneShot::from_text(""), OneShot::default());
    }

    #[test]
    fn autoboot_picks_the_partition() {
        let normal = choose_partition(Some(CAIRN), OneShot::default()).unwrap();
        assert_eq!(
            normal,
            Choice {
                partition: 2,
                a_b: false
            }
        );
        let tried = OneShot::from_reboot_argument("0 tryboot");
        assert_eq!(
            choose_partition(Some(CAIRN), tried).unwrap(),
            Choice {
                partition: 3,
                a_b: true
            }
        );
        // Committed B: [all] names 3, [tryboot] 2.
        let b = "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=2\n";
        assert_eq!(
            choose_partition(Some(b), OneShot::default())
                .unwrap()
                .partition,
            3
        );
        // Without tryboot_a_b the flag does not switch partitions.
        let no_ab = "boot_partition=2\n[tryboot]\nboot_partition=3\n";
        assert_eq!(
            choose_partition(Some(no_ab), tried).unwrap(),
            Choice {
                partition: 2,
                a_b: false
            }
        );
        assert_eq!(
            config_file(
                true,
                Choice {
                    partition: 2,
                    a_b: false
                }
            ),
            "tryboot.txt"
        );
        assert_eq!(
            config_file(
                true,
                Choice {
                    partition: 3,
                    a_b: true
                }
            ),
            "config.txt"
        );
        // No autoboot.txt: partition 1; a reboot's partition wins over everything.
        assert_eq!(
            choose_partition(None, OneShot::default())
                .unwrap()
                .partition,
            1
        );
        let to5 = OneShot::from_reboot_argument("5");
        assert_eq!(choose_partition(Some(CAIRN), to5).unwrap().partition, 5);
        // Sections for other models and [none] never apply; comments are ignored.
        let other =
            "[pi5]\nboot_partition=7\n[none]\nboot_partition=8\n[all]\nboot_partition=2 # A\n";
        assert_eq!(
            choose_partition(Some(other), OneShot::default())
                .unwrap()
                .partition,
            2
        );
        assert!(choose_partition(Some("tryboot_a_b=1\n"), OneShot::default()).is_err());
        assert!(choose_partition(Some("boot_partition=x\n"), OneShot::default()).is_err());
        assert!(choose_partition(Some(&"#".repeat(600)), OneShot::default()).is_err());
    }

    #[test]
    fn config_names_the_files() {
        let cairn = "# slot a\n[all]\narm_64bit=1\nenable_uart=1\nupstream_kernel=1\nkernel=vmlinuz\ninitramfs initramfs.img followkernel\n";
        assert_eq!(
            Config::parse(cairn, false),
            Config {
                kernel: "vmlinuz".into(),
                initramfs: Some("initramfs.img".into()),
                cmdline: "cmdline.txt".into(),
                device_tree: "bcm2711-rpi-4-b.dtb".into(),
            }
        );
        let defaults = Config::parse("[pi5]\nkernel=other\n[tryboot]\nkernel=trial.img\n", false);
        assert_eq!(defaults.kernel, "kernel8.img");
        assert_eq!(defaults.initramfs, None);
        assert_eq!(
            Config::parse("[tryboot]\nkernel=trial.img\n", true).kernel,
            "trial.img"
        );
        let prefixed = Config::parse("os_prefix=b/\ncmdline=c.txt\ndevice_tree=x.dtb\n", false);
        assert_eq!(prefixed.cmdline, "b/c.txt");
        assert_eq!(prefixed.device_tree, "b/x.dtb");
    }

    #[test]
    fn console_moves_to_the_pl011() {
        assert_eq!(
            kernel_cmdline("console=ttyS1,115200 quiet cairn.slot=a\nignored second line\n"),
            "console=ttyAMA0,115200 quiet cairn.slot=a"
        );
        assert_eq!(kernel_cmdline("console=serial0 x"), "console=ttyAMA0 x");
        assert_eq!(
            kernel_cmdline("console=tty1 console=ttyS10"),
            "console=tty1 console=ttyS10"
        );
    }
}
