//! The Linux watchdog device (`linux/watchdog.h`): arm it, set its timeout, feed it.
//!
//! Opening `/dev/watchdog` starts the timer; from then on the machine resets unless someone
//! pings it within the timeout. Closing the device stops the timer only after the magic
//! character `V` was written (or for a driver without `WDIOF_MAGICCLOSE`): otherwise the
//! kernel logs `watchdog0: watchdog did not stop!`, pings once, and leaves the timer running
//! for whoever opens the device next. Cairn relies on exactly that: PID 1 calls
//! [`arm_and_release`] early, so that a hang anywhere between there and cairnd (which opens
//! the device with [`Watchdog::open`] and feeds it) resets the machine and, on a trial boot,
//! counts against the new slot. Only one process can hold the device open at a time (EBUSY).
//!
//! The request numbers are encoded here by hand ([`ioc`]), with the generic Linux ioctl
//! layout that x86_64 and aarch64 share.

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
compile_error!("this architecture does not use the generic ioctl encoding; extend `ioc`");

/// The watchdog device's usual path.
pub const DEFAULT_PATH: &str = "/dev/watchdog";
/// Longest timeout accepted; real hardware allows far less (i6300esb: 2046 s, bcm2835: 15 s).
pub const MAX_TIMEOUT_S: u32 = 65535;
/// Writing this before closing stops the timer (unless the driver was loaded with nowayout).
pub const MAGIC_CLOSE: u8 = b'V';

/// `_IOC_WRITE`: user space writes, the kernel reads.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: the kernel writes, user space reads.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` in the generic encoding (`asm-generic/ioctl.h`, used by x86,
/// arm64, arm and riscv): number in bits 0..8, type in 8..16, argument size in 16..30,
/// direction in 30..32.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < 1 << 14, "ioctl argument size must fit in 14 bits");
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `WATCHDOG_IOCTL_BASE`.
const WD: u8 = b'W';
const INT: usize = size_of::<c_int>();

pub const WDIOC_GETSUPPORT: u32 = ioc(IOC_READ, WD, 0, size_of::<RawInfo>());
pub const WDIOC_KEEPALIVE: u32 = ioc(IOC_READ, WD, 5, INT);
pub const WDIOC_SETTIMEOUT: u32 = ioc(IOC_READ | IOC_WRITE, WD, 6, INT);
pub const WDIOC_GETTIMEOUT: u32 = ioc(IOC_READ, WD, 7, INT);

/// `WDIOF_*` bits of [`WatchdogInfo::options`].
pub mod options {
    /// The timeout can be set.
    pub const SETTIMEOUT: u32 = 0x0080;
    /// Closing stops the timer only after the magic character.
    pub const MAGICCLOSE: u32 = 0x0100;
    /// WDIOC_KEEPALIVE works.
    pub const KEEPALIVEPING: u32 = 0x8000;
}

/// `struct watchdog_info`.
#[repr(C)]
struct RawInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

const _: () = assert!(size_of::<RawInfo>() == 40);

/// What the driver says about itself (`WDIOC_GETSUPPORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogInfo {
    /// `WDIOF_*` bits, see [`options`].
    pub options: u32,
    pub firmware_version: u32,
    /// The driver's name for the device, e.g. `Software Watchdog` or `i6300ESB timer`.
    pub identity: String,
}

impl WatchdogInfo {
    fn from_raw(raw: &RawInfo) -> Self {
        let len = raw.identity.iter().position(|&b| b == 0).unwrap_or(32);
        Self {
            options: raw.options,
            firmware_version: raw.firmware_version,
            identity: String::from_utf8_lossy(&raw.identity[..len]).into_owned(),
        }
    }

    pub fn has(&self, option: u32) -> bool {
        self.options & option == option
    }
}

/// An open, running watchdog. Dropping it closes the device without the magic character, so
/// the timer keeps running (see the module documentation); [`Watchdog::magic_close`] stops it.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    path: PathBuf,
    timeout_s: u32,
    info: WatchdogInfo,
}

impl Watchdog {
    /// Opens (and so starts) the watchdog at `path`. With `Some(timeout_s)` the timeout is set
    /// (the driver may round it, and a driver that cannot set it keeps its own); with `None` it
    /// is left as it is, e.g. as PID 1 set it in [`arm_and_release`]. The timeout in force is
    /// [`Watchdog::timeout`]; feed the watchdog well within it.
    ///
    /// If a step after opening fails the device is closed again without the magic character: a
    /// timer that was started stays running with its previous timeout.
    pub fn open(path: &Path, timeout_s: Option<u32>) -> Result<Self> {
        if let Some(t) = timeout_s {
            check_timeout(path, t)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| Error::Watchdog {
                path: path.to_owned(),
                op: "opening".into(),
                source,
            })?;
        let mut wd = Self {
            file,
            path: path.to_owned(),
            timeout_s: 0,
            info: WatchdogInfo {
                options: 0,
                firmware_version: 0,
                identity: String::new(),
            },
        };
        match timeout_s {
            Some(t) => {
                wd.set_timeout(t)?;
            }
            None => {
                wd.timeout_s = wd.get_timeout()?;
                if wd.timeout_s == 0 {
                    return Err(wd.error(
                        "reading the timeout".into(),
                        io::Error::other("the driver reports a timeout of 0 s"),
                    ));
                }
            }
        }
        wd.info = wd.read_info()?;
        Ok(wd)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The timeout in force: the machine resets this long after the last ping.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s.into())
    }

    /// The driver's identity and capabilities, read when the device was opened.
    pub fn info(&self) -> &WatchdogInfo {
        &self.info
    }

    /// The driver's name for the device (`Software Watchdog`, `i6300ESB timer`, …).
    pub fn identity(&self) -> &str {
        &self.info.identity
    }

    /// Sets the timeout (which also pings) and returns the effective one.
    pub fn set_timeout(&mut self, timeout_s: u32) -> Result<u32> {
        check_timeout(&self.path, timeout_s)?;
        let effective = match self.ioctl_int(WDIOC_SETTIMEOUT, timeout_s as c_int) {
            Ok(t) => t,
            // The driver has a fixed timeout (no WDIOF_SETTIMEOUT): report the one it has.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.get_timeout()? as c_int,
            Err(source) => {
                return Err(self.error(
                    format!(
                        "setting the timeout to {timeout_s} s (the timer was started by \
                         opening the device and keeps its previous timeout)"
                    ),
                    source,
                ))
            }
        };
        self.timeout_s = u32::try_from(effective).unwrap_or(0);
        if self.timeout_s == 0 {
            return Err(self.error(
                format!("setting the timeout to {timeout_s} s"),
                io::Error::other(format!("the driver reports a timeout of {effective} s")),
            ));
        }
        Ok(self.timeout_s)
    }

    /// The timeout the driver reports (`WDIOC_GETTIMEOUT`).
    pub fn get_timeout(&self) -> Result<u32> {
        let t = self
            .ioctl_int(WDIOC_GETTIMEOUT, 0)
            .map_err(|e| self.error("reading the timeout".into(), e))?;
        Ok(u32::try_from(t).unwrap_or(0))
    }

    /// Pings the watchdog, restarting its countdown.
    pub fn keepalive(&self) -> Result<()> {
        match self.ioctl_int(WDIOC_KEEPALIVE, 0) {
            Ok(_) => Ok(()),
            // No WDIOF_KEEPALIVEPING: any write pings too.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => (&self.file)
                .write_all(&[0])
                .map_err(|e| self.error("writing a keepalive".into(), e)),
            Err(e) => Err(self.error("keepalive".into(), e)),
        }
    }

    /// `WDIOC_GETSUPPORT`.
    fn read_info(&self) -> Result<WatchdogInfo> {
        let mut raw = RawInfo {
            options: 0,
            firmware_version: 0,
            identity: [0; 32],
        };
        // SAFETY: the descriptor is open for the call; WDIOC_GETSUPPORT copies one
        // `struct watchdog_info` (40 bytes, the size encoded in the request) to the pointer,
        // which points at an exclusively borrowed `RawInfo` of that layout.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                WDIOC_GETSUPPORT as libc::Ioctl,
                &raw mut raw,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(self.error("reading its identity (WDIOC_GETSUPPORT)".into(), e));
        }
        Ok(WatchdogInfo::from_raw(&raw))
    }

    /// Writes the magic character and closes the device, which stops the timer unless the
    /// driver was loaded with `nowayout` (then it keeps running and nothing can stop it).
    pub fn magic_close(self) -> Result<()> {
        (&self.file)
            .write_all(&[MAGIC_CLOSE])
            .map_err(|e| self.error("writing the magic close character".into(), e))
    }

    /// An ioctl whose argument is one `int`, read and/or written by the kernel; returns the
    /// value the kernel left in it.
    fn ioctl_int(&self, request: u32, value: c_int) -> io::Result<c_int> {
        let mut arg = value;
        // SAFETY: the descriptor is open for the call; every request passed here is encoded
        // with an argument size of one c_int, and `arg` is an exclusively borrowed c_int.
        let rc =
            unsafe { libc::ioctl(self.file.as_raw_fd(), request as libc::Ioctl, &raw mut arg) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(arg)
        }
    }

    fn error(&self, op: String, source: io::Error) -> Error {
        Error::Watchdog {
            path: self.path.clone(),
            op,
            source,
        }
    }
}

/// Opens the watchdog, sets its timeout, pings it once and closes it without the magic
/// character, so the timer keeps running until the next opener feeds it (the kernel logs
/// `watchdog did not stop!`, which is expected here). Returns the effective timeout: the next
/// opener must open the device within it. Refuses a driver without `WDIOF_MAGICCLOSE`, which
/// would stop the timer on close.
pub fn arm_and_release(path: &Path, timeout_s: u32) -> Result<Duration> {
    let wd = Watchdog::open(path, Some(timeout_s))?;
    if !wd.info.has(options::MAGICCLOSE) {
        // Closing stops this driver; that is also what happens when `wd` drops here.
        return Err(Error::WatchdogStopsOnClose {
            path: path.to_owned(),
            identity: wd.info.identity.clone(),
        });
    }
    wd.keepalive()?;
    Ok(wd.timeout())
}

fn check_timeout(path: &Path, timeout_s: u32) -> Result<()> {
    if (1..=MAX_TIMEOUT_S).contains(&timeout_s) {
        Ok(())
    } else {
        Err(Error::WatchdogTimeout {
            path: path.to_owned(),
            timeout_s,
            max: MAX_TIMEOUT_S,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values `<linux/watchdog.h>` yields on x86_64 and aarch64 (checked with a C program
    /// against the Debian kernel headers).
    #[test]
    fn request_numbers_match_the_uapi_header() {
        assert_eq!(WDIOC_GETSUPPORT, 0x8028_5700);
        assert_eq!(WDIOC_KEEPALIVE, 0x8004_5705);
        assert_eq!(WDIOC_SETTIMEOUT, 0xc004_5706);
        assert_eq!(WDIOC_GETTIMEOUT, 0x8004_5707);
        // And libc's own encoder agrees for the target being built.
        assert_eq!(
            WDIOC_SETTIMEOUT as libc::Ioctl,
            libc::_IOWR::<c_int>(WD.into(), 6)
        );
        assert_eq!(
            WDIOC_GETSUPPORT as libc::Ioctl,
            libc::_IOR::<RawInfo>(WD.into(), 0)
        );
        assert_eq!(ioc(0, 0xfd, 3, 0), 0xfd03);
    }

    #[test]
    fn identity_is_read_up_to_its_nul() {
        let mut raw = RawInfo {
            options: options::SETTIMEOUT | options::MAGICCLOSE | options::KEEPALIVEPING,
            firmware_version: 0,
            identity: [0; 32],
        };
        raw.identity[..17].copy_from_slice(b"Software Watchdog");
        let info = WatchdogInfo::from_raw(&raw);
        assert_eq!(info.identity, "Software Watchdog");
        assert!(info.has(options::MAGICCLOSE));
        raw.identity = [b'x'; 32];
        raw.options = options::SETTIMEOUT;
        let info = WatchdogInfo::from_raw(&raw);
        assert_eq!(info.identity.len(), 32);
        assert!(!info.has(options::MAGICCLOSE));
    }

    #[test]
    fn a_missing_device_is_named_in_the_error() {
        let e = Watchdog::open(Path::new("/nonexistent/watchdog"), Some(30)).unwrap_err();
        let Error::Watchdog { op, source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(e.to_string(), "watchdog /nonexistent/watchdog: opening");
        assert_eq!(op, "opening");
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(arm_and_release(Path::new("/nonexistent/watchdog"), 30).is_err());
    }

    #[test]
    fn timeouts_are_range_checked_before_opening() {
        for t in [0, MAX_TIMEOUT_S + 1] {
            let e = Watchdog::open(Path::new("/nonexistent/watchdog"), Some(t)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "watchdog /nonexistent/watchdog: timeout {t} s is out of range (1 to 65535 s)"
                )
            );
        }
    }

    #[test]
    fn a_file_that_is_not_a_watchdog_is_refused() {
        // A regular file answers every ioctl with ENOTTY; nothing here can start a timer.
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = Watchdog::open(f.path(), Some(30)).unwrap_err();
        let Error::Watchdog { op, source, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(op.starts_with("setting the timeout to 30 s"), "{op}");
        assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
        let e = Watchdog::open(f.path(), None).unwrap_err();
        let Error::Watchdog { op, source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(op, "reading the timeout");
        assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
    }
}
