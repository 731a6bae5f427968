//! Sending requests to the kernel, and the one sequence Cairn needs on top: make a device live
//! with a table ([`activate`]), or take it away again ([`remove`]).
//!
//! The kernel sits behind [`Transport`]: [`Control`] is the real `/dev/mapper/control`, and a
//! caller with its own syscall seam (init's `Syscalls`) implements the trait with it, so that its
//! unit tests record the requests and script the kernel's replies without root. Everything here
//! above the one `ioctl` call is plain logic over [`crate::codec`] buffers: [`activate`] is
//! `DM_DEV_CREATE`, `DM_TABLE_LOAD`, then `DM_DEV_SUSPEND` without the suspend flag (a resume,
//! which makes the loaded table live), and `DM_DEV_REMOVE` of the half-made device when a step
//! after the create fails. Every reply is read back and checked, so a kernel answer that does not
//! describe the device asked for is an error rather than a node that never appears.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::codec::{Command, DevT, Flags, Reply, Request, Target, HEADER_SIZE, IOCTL_TYPE};
use crate::error::{Error, Result};

/// The control node device-mapper requests are sent to.
pub const CONTROL: &str = "/dev/mapper/control";

/// Where requests go: the kernel ([`Control`]) or a test's stand-in for it.
pub trait Transport {
    /// Sends `cmd` with `buf`, a request built by [`Request`]; the kernel's reply overwrites
    /// `buf`. A refused command is an `Err` with the kernel's errno. `buf` must hold at least the
    /// `data_size` its header declares.
    fn ioctl(&self, cmd: Command, buf: &mut [u8]) -> io::Result<()>;
}

/// The device-mapper control node, open for requests.
#[derive(Debug)]
pub struct Control {
    file: File,
}

impl Control {
    /// Opens the control node at `path`, normally [`CONTROL`]. (std opens with `O_CLOEXEC`, so
    /// the descriptor does not leak into the services PID 1 starts.)
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { file })
    }
}

impl From<File> for Control {
    /// A control node the caller opened (read-write) itself.
    fn from(file: File) -> Self {
        Self { file }
    }
}

impl Transport for Control {
    fn ioctl(&self, cmd: Command, buf: &mut [u8]) -> io::Result<()> {
        // The kernel reads, and writes back, as many bytes at `buf` as the header's `data_size`
        // says (after reading the header itself). Refuse a buffer that does not hold them, so
        // that the ioctl below stays inside `buf` whatever the caller passed.
        let declared = Reply::parse(buf).map(|r| r.data_size as usize);
        if !declared.is_some_and(|n| (HEADER_SIZE..=buf.len()).contains(&n)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "device-mapper buffer shorter than its header or its data_size",
            ));
        }
        let request = libc::_IOWR::<[u8; HEADER_SIZE]>(IOCTL_TYPE, cmd.nr());
        // SAFETY: `self.file` is an open descriptor that outlives the call. Every device-mapper
        // command takes a pointer to a `struct dm_ioctl` buffer, and the kernel accesses at most
        // `data_size` bytes of it (copy_from_user / copy_to_user, so no alignment is needed);
        // the check above guarantees `buf` is at least that long and at least the header, and
        // `buf` is exclusively borrowed for the duration of the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, buf.as_mut_ptr()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// A live device made by [`activate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub dev: DevT,
    /// The state the resume reported: live, running, read-only if asked for.
    pub flags: Flags,
}

impl Device {
    /// `<dev_dir>/dm-<minor>`, the node devtmpfs creates. No udev is assumed, so
    /// `/dev/mapper/<name>` may not exist.
    pub fn node(&self, dev_dir: &Path) -> PathBuf {
        dev_dir.join(format!("dm-{}", self.dev.minor))
    }
}

/// A failed [`activate`]: why, and whether the half-made device is left behind.
#[derive(Debug)]
pub struct ActivateError {
    pub error: Error,
    /// Why removing the half-made device failed too; `None` when it is gone, or was never made.
    pub left_behind: Option<Error>,
}

impl From<ActivateError> for Error {
    fn from(e: ActivateError) -> Self {
        e.error
    }
}

/// Creates the device `name`, loads `targets` as its table with `flags` (such as
/// [`Flags::READONLY`], or [`Flags::SECURE_DATA`] for a table that holds a key) and makes it
/// live. On any failure after the create, the device is removed again.
pub fn activate(
    t: &dyn Transport,
    name: &str,
    flags: Flags,
    targets: &[Target<'_>],
) -> Result<Device, ActivateError> {
    let early = |error| ActivateError {
        error,
        left_behind: None,
    };
    // Every request is built first, so a table the kernel would refuse anyway creates nothing.
    let mut create = Request::new(name, Flags::NONE).map_err(early)?;
    let load = Request::table_load(name, flags, targets).map_err(early)?;
    let resume = Request::new(name, Flags::NONE).map_err(early)?;
    let created = call(t, Command::DevCreate, name, &mut create).map_err(early)?;
    go_live(t, name, flags, created, load, resume).map_err(|error| ActivateError {
        error,
        left_behind: remove(t, name).err(),
    })
}

/// After `DM_DEV_CREATE`: loads the table and resumes the device.
fn go_live(
    t: &dyn Transport,
    name: &str,
    flags: Flags,
    created: Reply,
    mut load: Request,
    mut resume: Request,
) -> Result<Device> {
    let dev = DevT::from_dm(created.dev)
        .filter(|d| d.major != 0)
        .ok_or_else(|| {
            unexpected(
                Command::DevCreate,
                name,
                format!("device number {:#x}", created.dev),
            )
        })?;
    call(t, Command::TableLoad, name, &mut load)?;
    // Wiped now rather than at the end: it may hold a key.
    drop(load);
    let live = call(t, Command::DevSuspend, name, &mut resume)?;
    let read_only = flags.contains(Flags::READONLY);
    let expected = if read_only {
        Flags::ACTIVE_PRESENT | Flags::READONLY
    } else {
        Flags::ACTIVE_PRESENT
    };
    if !live.flags.contains(expected) || live.flags.contains(Flags::SUSPEND) {
        return Err(unexpected(
            Command::DevSuspend,
            name,
            format!(
                "flags {:?}, expected a live, {}running device",
                live.flags,
                if read_only { "read-only, " } else { "" }
            ),
        ));
    }
    Ok(Device {
        dev,
        flags: live.flags,
    })
}

/// Removes the device `name`.
pub fn remove(t: &dyn Transport, name: &str) -> Result<()> {
    let mut req = Request::new(name, Flags::NONE)?;
    call(t, Command::DevRemove, name, &mut req).map(drop)
}

/// One ioctl and the checks every reply gets.
fn call(t: &dyn Transport, cmd: Command, name: &str, req: &mut Request) -> Result<Reply> {
    // The kernel's errno for a rejected table is nearly always EINVAL; the reason is in its log.
    let hint = match cmd {
        Command::TableLoad => " (the kernel log says why)",
        _ => "",
    };
    t.ioctl(cmd, req).map_err(|source| Error::Ioctl {
        cmd,
        name: name.to_owned(),
        hint,
        source,
    })?;
    let reply = req
        .reply()
        .ok_or_else(|| unexpected(cmd, name, "shorter than its header".into()))?;
    if reply.flags.contains(Flags::BUFFER_FULL) {
        return Err(unexpected(
            cmd,
            name,
            "the kernel found the buffer too small".into(),
        ));
    }
    Ok(reply)
}

fn unexpected(cmd: Command, name: &str, problem: String) -> Error {
    Error::Reply {
        cmd,
        name: name.to_owned(),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::testing::{write_reply, Decoded};

    /// Answers like the kernel: `DM_DEV_CREATE` numbers the device 253:4, a resume reports it
    /// live (and read-only when the table was loaded so). Records every request as sent and
    /// fails the commands in `fail` with their errno.
    #[derive(Default)]
    struct Kernel {
        sent: RefCell<Vec<(Command, Decoded)>>,
        fail: Vec<(Command, i32)>,
        /// Flags the resume reports instead of the kernel's.
        resume_flags: Option<Flags>,
    }

    impl Transport for Kernel {
        fn ioctl(&self, cmd: Command, buf: &mut [u8]) -> io::Result<()> {
            let request = Decoded::parse(buf);
            let loaded_ro = self
                .sent
                .borrow()
                .iter()
                .any(|(c, d)| *c == Command::TableLoad && d.flags.contains(Flags::READONLY));
            self.sent.borrow_mut().push((cmd, request));
            if let Some(&(_, errno)) = self.fail.iter().find(|(c, _)| *c == cmd) {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let dev = DevT {
                major: 253,
                minor: 4,
            };
            match cmd {
                Command::DevCreate => write_reply(buf, Flags::NONE, dev.to_dm()),
                Command::TableLoad => write_reply(buf, Flags::INACTIVE_PRESENT, dev.to_dm()),
                Command::DevSuspend => {
                    let ro = if loaded_ro {
                        Flags::READONLY
                    } else {
                        Flags::NONE
                    };
                    let flags = self.resume_flags.unwrap_or(Flags::ACTIVE_PRESENT | ro);
                    write_reply(buf, flags, dev.to_dm());
                }
                Command::DevRemove | Command::Version => {}
            }
            Ok(())
        }
    }

    impl Kernel {
        fn cmds(&self) -> Vec<Command> {
            self.sent.borrow().iter().map(|(c, _)| *c).collect()
        }
    }

    const PARAMS: &str = "aes-xts-plain64 00112233 0 8:3 32768";

    fn crypt() -> [Target<'static>; 1] {
        [Target {
            sector_start: 0,
            length: 64,
            target_type: "crypt",
            params: PARAMS,
        }]
    }

    #[test]
    fn activate_creates_loads_and_resumes() {
        let k = Kernel::default();
        let device = activate(&k, "cairn-data", Flags::SECURE_DATA, &crypt()).unwrap();
        assert_eq!(
            device,
            Device {
                dev: DevT {
                    major: 253,
                    minor: 4
                },
                flags: Flags::ACTIVE_PRESENT,
            }
        );
        assert_eq!(device.node(Path::new("/dev")), Path::new("/dev/dm-4"));
        let plain = |name: &str| Decoded {
            name: name.into(),
            flags: Flags::NONE,
            targets: vec![],
        };
        assert_eq!(
            *k.sent.borrow(),
            [
                (Command::DevCreate, plain("cairn-data")),
                (
                    Command::TableLoad,
                    Decoded {
                        name: "cairn-data".into(),
                        flags: Flags::SECURE_DATA,
                        targets: vec![(0, 64, "crypt".into(), PARAMS.into())],
                    }
                ),
                (Command::DevSuspend, plain("cairn-data")),
            ],
            "the secure flag goes with the table only"
        );
    }

    #[test]
    fn read_only_activation_checks_the_reported_state() {
        let k = Kernel::default();
        let device = activate(&k, "root-a", Flags::READONLY, &crypt()).unwrap();
        assert_eq!(device.flags, Flags::ACTIVE_PRESENT | Flags::READONLY);

        // A kernel that made the device writable after all.
        let k = Kernel {
            resume_flags: Some(Flags::ACTIVE_PRESENT),
            ..Kernel::default()
        };
        let failed = activate(&k, "root-a", Flags::READONLY, &crypt()).unwrap_err();
        assert_eq!(
            failed.error.to_string(),
            "device-mapper DM_DEV_SUSPEND for root-a: unexpected reply: flags ACTIVE_PRESENT, \
             expected a live, read-only, running device"
        );
        assert!(failed.left_behind.is_none());
        assert_eq!(k.cmds().last(), Some(&Command::DevRemove));

        // Still suspended after the resume.
        let k = Kernel {
            resume_flags: Some(Flags::ACTIVE_PRESENT | Flags::SUSPEND),
            ..Kernel::default()
        };
        let failed = activate(&k, "d", Flags::NONE, &crypt()).unwrap_err();
        assert_eq!(
            failed.error.to_string(),
            "device-mapper DM_DEV_SUSPEND for d: unexpected reply: flags SUSPEND | \
             ACTIVE_PRESENT, expected a live, running device"
        );
    }

    #[test]
    fn a_refused_table_removes_the_device() {
        let k = Kernel {
            fail: vec![(Command::TableLoad, libc::EINVAL)],
            ..Kernel::default()
        };
        let failed = activate(&k, "cairn-state", Flags::SECURE_DATA, &crypt()).unwrap_err();
        assert!(matches!(
            &failed.error,
            Error::Ioctl {
                cmd: Command::TableLoad,
                ..
            }
        ));
        assert_eq!(
            failed.error.to_string(),
            "device-mapper DM_TABLE_LOAD for cairn-state (the kernel log says why)"
        );
        assert!(failed.left_behind.is_none());
        assert_eq!(
            k.cmds(),
            [Command::DevCreate, Command::TableLoad, Command::DevRemove]
        );
        assert_eq!(k.sent.borrow()[2].1.name, "cairn-state", "removes by name");

        let hinted = failed
            .error
            .with_hint(Command::TableLoad, " (is dm_crypt loaded?)");
        assert_eq!(
            hinted.to_string(),
            "device-mapper DM_TABLE_LOAD for cairn-state (is dm_crypt loaded?)"
        );
        let other = Error::from(activate(&k, "", Flags::NONE, &[]).unwrap_err());
        assert_eq!(
            other.with_hint(Command::TableLoad, " (x)").to_string(),
            "device-mapper request for : the device name must have 1 to 127 bytes, not 0"
        );
    }

    #[test]
    fn a_failed_removal_is_reported_beside_the_cause() {
        let k = Kernel {
            fail: vec![
                (Command::DevSuspend, libc::EIO),
                (Command::DevRemove, libc::EBUSY),
            ],
            ..Kernel::default()
        };
        let failed = activate(&k, "d", Flags::NONE, &crypt()).unwrap_err();
        assert!(matches!(
            failed.error,
            Error::Ioctl {
                cmd: Command::DevSuspend,
                ..
            }
        ));
        let left = failed.left_behind.expect("the removal failed");
        assert!(
            matches!(&left, Error::Ioctl { cmd: Command::DevRemove, source, .. }
                if source.raw_os_error() == Some(libc::EBUSY)),
            "{left:?}"
        );
    }

    #[test]
    fn nothing_is_created_for_a_bad_request_and_nothing_removed_after_a_failed_create() {
        let k = Kernel::default();
        let long = "p".repeat(4097);
        let bad = [Target {
            params: &long,
            ..crypt()[0]
        }];
        let failed = activate(&k, "d", Flags::NONE, &bad).unwrap_err();
        assert!(matches!(failed.error, Error::Request { .. }));
        assert!(k.cmds().is_empty());

        let k = Kernel {
            fail: vec![(Command::DevCreate, libc::EBUSY)],
            ..Kernel::default()
        };
        let failed = activate(&k, "d", Flags::NONE, &crypt()).unwrap_err();
        assert_eq!(k.cmds(), [Command::DevCreate]);
        assert!(failed.left_behind.is_none());
    }

    #[test]
    fn replies_are_checked() {
        /// Answers every command with `flags` and `dev`, as a confused kernel might.
        struct Fixed(Flags, u64);
        impl Transport for Fixed {
            fn ioctl(&self, _: Command, buf: &mut [u8]) -> io::Result<()> {
                write_reply(buf, self.0, self.1);
                Ok(())
            }
        }
        let err = activate(&Fixed(Flags::NONE, 0), "d", Flags::NONE, &crypt())
            .unwrap_err()
            .error;
        assert_eq!(
            err.to_string(),
            "device-mapper DM_DEV_CREATE for d: unexpected reply: device number 0x0"
        );
        let err = activate(
            &Fixed(Flags::BUFFER_FULL, 0xfd00),
            "d",
            Flags::NONE,
            &crypt(),
        )
        .unwrap_err()
        .error;
        assert_eq!(
            err.to_string(),
            "device-mapper DM_DEV_CREATE for d: unexpected reply: the kernel found the buffer \
             too small"
        );
        let err = remove(&Fixed(Flags::BUFFER_FULL, 0), "d").unwrap_err();
        assert!(matches!(
            err,
            Error::Reply {
                cmd: Command::DevRemove,
                ..
            }
        ));
        assert!(remove(&Fixed(Flags::NONE, 0), "d").is_ok());
        assert!(matches!(
            remove(&Fixed(Flags::NONE, 0), "a/b"),
            Err(Error::Request { .. })
        ));
    }

    #[test]
    fn control_refuses_a_buffer_shorter_than_its_data_size() {
        // /dev/null takes any ioctl descriptor; the check must stop before the ioctl.
        let control = Control {
            file: File::open("/dev/null").unwrap(),
        };
        let mut req = Request::table_load("d", Flags::NONE, &crypt()).unwrap();
        let err = control
            .ioctl(Command::TableLoad, &mut req[..HEADER_SIZE])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = control
            .ioctl(Command::DevCreate, &mut [0u8; 100])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A whole request reaches the kernel, which refuses it for /dev/null.
        let err = control.ioctl(Command::TableLoad, &mut req).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn opening_a_missing_control_node_names_it() {
        let err = Control::open(Path::new("/nonexistent/mapper/control")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "opening the device-mapper control node /nonexistent/mapper/control"
        );
    }
}
