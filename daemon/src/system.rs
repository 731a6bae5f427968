//! What this boot is and how cairnd talks to init: the release file, the running slot, the
//! ESP's boot state, init's service list, and the signals that make init reboot, power off or
//! restart cairnd. Everything here is read once or is a single call; no state is kept.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use cairn_boot::fs::DirFs;
use cairn_boot::sdboot::SdBoot;
use cairn_boot::tryboot::{Tryboot, TrybootConfig};
use cairn_boot::{Bootloader, Slot};

use crate::block;
use crate::log::say;

pub const RELEASE: &str = "/etc/cairn/release";
/// Where init mounts the ESP (read-only but while the boot state changes).
pub const ESP: &str = "/boot";
/// init's status file: a line per service, `<name> running <pid>` or another state.
pub const SERVICES_STATUS: &str = "/run/cairn/services";
/// The port the management API listens on (and maintenance mode's), on every address.
pub const API_PORT: u16 = 50000;

/// What this boot runs: the release, the slot it came from, and when.
#[derive(Debug, Clone)]
pub struct Boot {
    pub release: Release,
    pub running: Slot,
    pub booted: SystemTime,
}

impl Boot {
    /// Reads `/etc/cairn/release` and the slot on the kernel command line.
    pub fn read() -> Result<Boot, String> {
        let release = Release::parse(
            &fs::read_to_string(RELEASE).map_err(|e| format!("reading {RELEASE}: {e}"))?,
        )?;
        let cmdline = fs::read_to_string("/proc/cmdline")
            .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
        let running = cmdline_slot(&cmdline).ok_or("no cairn.slot= on the kernel command line")?;
        Ok(Boot {
            release,
            running,
            booted: boot_time(),
        })
    }
}

/// `/etc/cairn/release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    pub board: String,
    pub bootloader: String,
    pub security_version: u32,
}

impl Release {
    pub fn parse(text: &str) -> Result<Release, String> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().to_string())
        };
        let need = |key: &str| get(key).ok_or_else(|| format!("{RELEASE} has no {key}= line"));
        Ok(Release {
            version: need("VERSION")?,
            board: need("BOARD")?,
            bootloader: need("BOOTLOADER")?,
            security_version: match get("SECURITY_VERSION") {
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{RELEASE}: SECURITY_VERSION={v} is not a number"))?,
                None => 0,
            },
        })
    }
}

/// The slot on the kernel command line.
pub fn cmdline_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.slot="))
        .and_then(|s| match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        })
}

/// The ESP, remounted read-write only while the bootloader state is changed.
pub fn with_esp_rw<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    block::remount(Path::new(ESP), false)
        .map_err(|e| format!("remounting {ESP} read-write: {e}"))?;
    let out = f();
    if let Err(e) = block::remount(Path::new(ESP), true) {
        say!("remounting {ESP} read-only: {e}");
    }
    out
}

/// The boot state on the bootloader's partition mounted on `/boot`: systemd-boot's entries and
/// their counters on the ESP, or the Raspberry Pi firmware's autoboot.txt (with the tryboot flag
/// read from the device tree the firmware passed), as the release names the bootloader.
pub fn bootloader(boot: &Boot) -> Box<dyn Bootloader> {
    let running = Some(boot.running);
    match boot.release.bootloader.as_str() {
        TRYBOOT => Box::new(Tryboot::new(
            DirFs::new(ESP),
            running,
            TrybootConfig::default(),
        )),
        _ => Box::new(SdBoot::new(DirFs::new(ESP), running)),
    }
}

/// The release's name for the Raspberry Pi firmware's tryboot.
pub const TRYBOOT: &str = "rpi-tryboot";

/// When the machine booted: now minus `/proc/uptime`.
pub fn boot_time() -> SystemTime {
    let up = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    SystemTime::now() - Duration::from_secs_f64(up)
}

/// init's status file: each service and its pid when running.
pub fn services() -> Result<Vec<(String, Option<u32>)>, String> {
    let text = fs::read_to_string(SERVICES_STATUS).map_err(|e| unlisted(&e))?;
    Ok(parse_services(&text))
}

/// The error for init's status file that could not be read: missing just after a boot, before
/// init wrote it the first time.
fn unlisted(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "init has not listed its services yet (the machine has just started): ask again in a \
         moment"
            .to_string()
    } else {
        format!("reading {SERVICES_STATUS}: {e}")
    }
}

pub fn parse_services(text: &str) -> Vec<(String, Option<u32>)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            let pid = match (w.next(), w.next()) {
                (Some("running"), Some(pid)) => pid.parse().ok(),
                _ => None,
            };
            Some((name, pid))
        })
        .collect()
}

/// The kernel's hostname (netcfg sets it from the machine config).
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && h != "(none)")
        .unwrap_or_else(|| "cairn".into())
}

/// Asks init to reboot (it stops every service first) and waits for it.
pub fn reboot() -> ! {
    signal_init(libc::SIGTERM);
    // init stops every service as part of the reboot; wait for it.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Reboots after a second, on a thread of its own, so that an answer still reaches the client.
pub fn reboot_soon() {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(1));
        reboot();
    });
}

/// Powers off after a second.
pub fn power_off_soon() {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(1));
        signal_init(libc::SIGUSR2);
    });
}

/// Exits after a second; init starts cairnd again.
pub fn restart_soon() {
    say!("restarting over the API");
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(1));
        std::process::exit(0);
    });
}

fn signal_init(signal: libc::c_int) {
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    unsafe {
        libc::kill(1, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_file_not_yet_written_says_so() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(unlisted(&missing).starts_with("init has not listed its services yet"));
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(unlisted(&other).starts_with("reading /run/cairn/services: "));
    }

    #[test]
    fn release_and_cmdline() {
        let r = Release::parse(
            "VERSION=0.2.0\nBOARD=qemu-x86_64\nBOOTLOADER=systemd-boot\nSECURITY_VERSION=3\n",
        )
        .unwrap();
        assert_eq!(
            (r.version.as_str(), r.board.as_str(), r.security_version),
            ("0.2.0", "qemu-x86_64", 3)
        );
        assert_eq!(
            Release::parse("VERSION=1\nBOARD=x\nBOOTLOADER=y\n")
                .unwrap()
                .security_version,
            0
        );
        assert!(Release::parse("BOARD=x\n")
            .unwrap_err()
            .contains("no VERSION="));
        assert!(Release::parse("VERSION=1\nBOARD=x\nBOOTLOADER=y\nSECURITY_VERSION=x\n").is_err());
        assert_eq!(cmdline_slot("quiet cairn.slot=b panic=5"), Some(Slot::B));
        assert_eq!(cmdline_slot("cairn.slot=c"), None);
    }
}
