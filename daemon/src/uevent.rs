//! Kernel device events (uevents) over netlink, and the partitions sysfs lists for a disk.
//!
//! The kernel multicasts one datagram per device event on a `NETLINK_KOBJECT_UEVENT` socket,
//! group 1: a header `ACTION@DEVPATH`, then `KEY=value` pairs, each NUL-terminated
//! (`add@/devices/…/block/sdb/sdb1\0ACTION=add\0DEVPATH=…\0SUBSYSTEM=block\0DEVNAME=sdb1\0
//! DEVTYPE=partition\0SEQNUM=1234\0`). udev re-broadcasts its own, differently framed copies
//! (starting `libudev\0`) on group 2; there is no udev on a Cairn device, and such messages,
//! like any datagram whose sender is not the kernel (netlink port id 0), are dropped here.
//!
//! Messages are parsed with fixed bounds ([`MAX_MESSAGE`], [`MAX_KEYS`]). When events come
//! faster than the daemon reads them the socket overflows and the kernel drops some; that is
//! reported as [`Error::UeventOverflow`], after which the caller must rescan /sys, since it no
//! longer sees every change. A disk's `add` event comes before its partitions' events;
//! [`block_partitions_of`] reads what sysfs already knows about them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Largest datagram accepted. The kernel caps a uevent's variables at 2048 bytes
/// (`UEVENT_BUFFER_SIZE`); the header adds the action and the device path.
pub const MAX_MESSAGE: usize = 8192;
/// Most `KEY=value` pairs accepted in one message (the kernel sends at most 64).
pub const MAX_KEYS: usize = 128;
/// Receive buffer asked of the kernel, so a burst of events at boot (a USB hub with a disk
/// behind it sends dozens) does not overflow it.
pub const RECV_BUFFER: usize = 1 << 20;
/// Largest sysfs attribute read by [`block_partitions_of`].
const MAX_SYSFS_ATTR: u64 = 4096;
/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;
/// Prefix of udev's own re-broadcast messages.
const LIBUDEV_MAGIC: &[u8] = b"libudev\0";

/// What happened to the device (`enum kobject_action` in the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
    Change,
    Move,
    Online,
    Offline,
    Bind,
    Unbind,
    /// An action this code does not know, for kernels newer than it.
    Other(String),
}

impl Action {
    fn parse(s: &str) -> Self {
        match s {
            "add" => Self::Add,
            "remove" => Self::Remove,
            "change" => Self::Change,
            "move" => Self::Move,
            "online" => Self::Online,
            "offline" => Self::Offline,
            "bind" => Self::Bind,
            "unbind" => Self::Unbind,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
            Self::Change => "change",
            Self::Move => "move",
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Bind => "bind",
            Self::Unbind => "unbind",
            Self::Other(s) => s,
        }
    }
}

/// One kernel uevent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uevent {
    pub action: Action,
    /// Path under /sys, e.g. `/devices/pci0000:00/…/block/sdb/sdb1`.
    pub devpath: String,
    pub subsystem: Option<String>,
    /// Device node name relative to /dev (`sdb1`, `bus/usb/001/002`); see [`Uevent::dev_node`].
    pub devname: Option<String>,
    /// `disk` or `partition` for block devices.
    pub devtype: Option<String>,
    pub seqnum: Option<u64>,
    /// Every `KEY=value` pair of the message, including the ones above. Values that are not
    /// UTF-8 (a network interface name may be any bytes) are converted lossily.
    pub env: BTreeMap<String, String>,
}

impl Uevent {
    /// Parses one datagram. `Ok(None)` for udev's `libudev` messages, which are not kernel
    /// uevents and are ignored.
    pub fn parse(msg: &[u8]) -> Result<Option<Self>> {
        let bad = |reason: String| Err(Error::BadUevent { reason });
        if msg.starts_with(LIBUDEV_MAGIC) {
            return Ok(None);
        }
        if msg.len() > MAX_MESSAGE {
            return bad(format!(
                "{} bytes, more than the {MAX_MESSAGE}-byte limit",
                msg.len()
            ));
        }
        let mut fields = msg.split(|&b| b == 0);
        let header = fields.next().unwrap_or_default();
        let Some(at) = header.iter().position(|&b| b == b'@') else {
            return bad(format!("header {:?} is not ACTION@DEVPATH", lossy(header)));
        };
        let (action, devpath) = (lossy(&header[..at]), lossy(&header[at + 1..]));
        if action.is_empty() || !devpath.starts_with('/') {
            return bad(format!("header {:?} is not ACTION@DEVPATH", lossy(header)));
        }

        let mut env = BTreeMap::new();
        // The message ends with a NUL, which leaves an empty last field.
        for field in fields.filter(|f| !f.is_empty()) {
            if env.len() == MAX_KEYS {
                return bad(format!("more than {MAX_KEYS} variables"));
            }
            let Some(eq) = field.iter().position(|&b| b == b'=') else {
                return bad(format!("variable {:?} has no '='", lossy(field)));
            };
            let (key, value) = (&field[..eq], &field[eq + 1..]);
            if key.is_empty() || !key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_') {
                return bad(format!(
                    "variable name {:?} is not [A-Za-z0-9_]+",
                    lossy(key)
                ));
            }
            let key = lossy(key);
            if env.contains_key(&key) {
                return bad(format!("variable {key} appears twice"));
            }
            env.insert(key, lossy(value));
        }

        for (key, header_value) in [("ACTION", &action), ("DEVPATH", &devpath)] {
            match env.get(key) {
                Some(v) if v != header_value => {
                    return bad(format!(
                        "{key}={v:?} contradicts the header {:?}",
                        lossy(header)
                    ))
                }
                _ => {}
            }
        }
        let seqnum = match env.get("SEQNUM") {
            None => None,
            Some(s) => match s.parse() {
                Ok(n) => Some(n),
                Err(_) => return bad(format!("SEQNUM={s:?} is not a number")),
            },
        };
        Ok(Some(Self {
            action: Action::parse(&action),
            subsystem: env.get("SUBSYSTEM").cloned(),
            devname: env.get("DEVNAME").cloned(),
            devtype: env.get("DEVTYPE").cloned(),
            seqnum,
            devpath,
            env,
        }))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// `/dev/<DEVNAME>`, when the event names a device node and the name stays inside /dev.
    pub fn dev_node(&self) -> Option<PathBuf> {
        let name = Path::new(self.devname.as_deref()?);
        let plain = name.components().all(|c| matches!(c, Component::Normal(_)));
        (plain && name.components().next().is_some()).then(|| Path::new("/dev").join(name))
    }

    /// Whether this is a whole block disk (not a partition).
    pub fn is_block_disk(&self) -> bool {
        self.subsystem.as_deref() == Some("block") && self.devtype.as_deref() == Some("disk")
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A netlink socket subscribed to the kernel's uevents.
#[derive(Debug)]
pub struct UeventSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    ignored: u64,
}

impl UeventSocket {
    /// Opens the socket and joins the kernel's group. Needs no privilege to receive. Asks for
    /// a [`RECV_BUFFER`]-byte receive buffer (beyond `net.core.rmem_max` only with
    /// CAP_NET_ADMIN; a smaller buffer is not an error, it only overflows sooner).
    pub fn open() -> Result<Self> {
        let sys = |op| move |source| Error::UeventSocket { op, source };
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(sys("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a descriptor socket(2) just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let size = RECV_BUFFER as libc::c_int;
        if setsockopt_int(&fd, libc::SO_RCVBUFFORCE, size).is_err() {
            // Unprivileged: as much as rmem_max allows.
            let _ = setsockopt_int(&fd, libc::SO_RCVBUF, size);
        }

        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_pid = 0; // The kernel picks our port id.
        addr.nl_groups = KERNEL_GROUP;
        // SAFETY: `addr` is a valid sockaddr_nl and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(sys("bind")(io::Error::last_os_error()));
        }
        Ok(Self {
            fd,
            buf: vec![0; MAX_MESSAGE],
            ignored: 0,
        })
    }

    /// Waits up to `timeout` (forever with `None`) for the next kernel uevent; `Ok(None)` when
    /// the time ran out. Datagrams not sent by the kernel and udev messages are skipped. A
    /// malformed message is returned as [`Error::BadUevent`] and an overflow as
    /// [`Error::UeventOverflow`]; the socket stays usable after both.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Uevent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let wait_ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up, so a short timeout does not become a busy loop of 0 ms polls.
                    left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd and the count passed is 1.
            let n = unsafe { libc::poll(&raw mut pfd, 1, wait_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::UeventSocket {
                    op: "poll",
                    source: e,
                });
            }
            if n == 0 {
                return Ok(None);
            }
            match self.recv_one()? {
                Some(Received::Kernel(len)) => match Uevent::parse(&self.buf[..len])? {
                    Some(event) => return Ok(Some(event)),
                    None => self.ignored += 1,
                },
                Some(Received::NotKernel) => self.ignored += 1,
                None => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Datagrams skipped so far because they were not the kernel's (another sender, or udev's
    /// format). On a Cairn device this stays 0; anything else is worth a log line.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Reads one datagram without blocking; `None` when there was none after all.
    fn recv_one(&mut self) -> Result<Option<Received>> {
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `buf` is valid for writes of its length and `from`/`from_len` describe a
        // writable sockaddr_nl; the kernel writes at most those lengths. MSG_TRUNC only changes
        // the return value to the datagram's full length.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                (&raw mut from).cast::<libc::sockaddr>(),
                &raw mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(None),
                Some(libc::ENOBUFS) => Err(Error::UeventOverflow),
                _ => Err(Error::UeventSocket {
                    op: "recvfrom",
                    source: e,
                }),
            };
        }
        let n = n as usize;
        // Port id 0 is the kernel; a user socket always has a non-zero one.
        if from.nl_pid != 0 {
            return Ok(Some(Received::NotKernel));
        }
        if n > self.buf.len() {
            return Err(Error::BadUevent {
                reason: format!("{n} bytes, more than the {MAX_MESSAGE}-byte limit"),
            });
        }
        Ok(Some(Received::Kernel(n)))
    }
}

enum Received {
    Kernel(usize),
    NotKernel,
}

impl AsFd for UeventSocket {
    /// For a caller that polls several descriptors itself, then calls
    /// [`UeventSocket::recv`] with a zero timeout.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn setsockopt_int(fd: &OwnedFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is one c_int, passed by pointer with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A device number, `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevNumber {
    pub major: u32,
    pub minor: u32,
}

/// One partition of a disk, as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Kernel name, which is also the node under /dev: `sdb1`, `nvme0n1p2`, `mmcblk0p1`.
    pub name: String,
    /// Partition number (the `partition` attribute).
    pub number: u32,
    /// From the `dev` attribute.
    pub dev: Option<DevNumber>,
    /// The GPT partition name (`PARTNAME` in the partition's `uevent`), if it has one.
    pub partname: Option<String>,
}

/// The partitions of `disk` (a kernel name like `sdb`) under `sys_class_block`
/// (`/sys/class/block` on a device), sorted by number. Empty when the disk has no partition
/// table, or the kernel has not scanned it yet.
///
/// sysfs puts each partition in a subdirectory of its disk's directory, holding a `partition`
/// attribute with its number; that attribute is what tells a partition from the disk's other
/// subdirectories (`queue`, `holders`, …).
pub fn block_partitions_of(sys_class_block: &Path, disk: &str) -> Result<Vec<Partition>> {
    if disk.is_empty() || disk == "." || disk == ".." || disk.contains(['/', '\0']) {
        return Err(Error::BadBlockName {
            name: disk.to_owned(),
        });
    }
    let dir = sys_class_block.join(disk);
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Sysfs { path, source }
    };
    let entries = std::fs::read_dir(&dir).map_err(read_err(&dir))?;
    let mut parts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_err(&dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        let number = match read_attr(&path.join("partition")) {
            Ok(text) => text.trim().parse::<u32>().ok(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue
            }
            Err(e) => return Err(read_err(&path.join("partition"))(e)),
        };
        // A partition that vanished between the listing and now is simply gone.
        let Some(number) = number else { continue };
        let dev = read_attr(&path.join("dev"))
            .ok()
            .and_then(|t| parse_dev(&t));
        let partname = read_attr(&path.join("uevent")).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PARTNAME=").map(str::to_owned))
        });
        parts.push(Partition {
            name,
            number,
            dev,
            partname,
        });
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

fn read_attr(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?
        .take(MAX_SYSFS_ATTR)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// `8:17\n` → 8, 17.
fn parse_dev(text: &str) -> Option<DevNumber> {
    let (major, minor) = text.trim_end().split_once(':')?;
    Some(DevNumber {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(parts: &[&str]) -> Vec<u8> {
        let mut m = Vec::new();
        for p in parts {
            m.extend_from_slice(p.as_bytes());
            m.push(0);
        }
        m
    }

    const PART_DEVPATH: &str =
        "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1";

    #[test]
    fn parses_a_partition_add() {
        let header = format!("add@{PART_DEVPATH}");
        let devpath = format!("DEVPATH={PART_DEVPATH}");
        let m = msg(&[
            &header,
            "ACTION=add",
            &devpath,
            "SUBSYSTEM=block",
            "MAJOR=8",
            "MINOR=17",
            "DEVNAME=sdb1",
            "DEVTYPE=partition",
            "DISKSEQ=12",
            "PARTN=1",
            "PARTNAME=CAIRN-BUNDLE",
            "SEQNUM=5012",
        ]);
        let e = Uevent::parse(&m).unwrap().unwrap();
        assert_eq!(e.action, Action::Add);
        assert_eq!(e.devpath, PART_DEVPATH);
        assert_eq!(e.subsystem.as_deref(), Some("block"));
        assert_eq!(e.devname.as_deref(), Some("sdb1"));
        assert_eq!(e.devtype.as_deref(), Some("partition"));
        assert_eq!(e.seqnum, Some(5012));
        assert_eq!(e.get("PARTNAME"), Some("CAIRN-BUNDLE"));
        assert_eq!(e.get("MAJOR"), Some("8"));
        assert_eq!(e.env.len(), 11);
        assert_eq!(e.dev_node(), Some(PathBuf::from("/dev/sdb1")));
        assert!(!e.is_block_disk());
    }

    #[test]
    fn parses_other_subsystems_and_actions() {
        let m = msg(&[
            "remove@/devices/pci0000:00/0000:00:14.0/usb2/2-1",
            "ACTION=remove",
            "DEVPATH=/devices/pci0000:00/0000:00:14.0/usb2/2-1",
            "SUBSYSTEM=usb",
            "DEVNAME=bus/usb/002/003",
            "DEVTYPE=usb_device",
            "PRODUCT=781/5581/100",
            "SEQNUM=77",
        ]);
        let e = Uevent::parse(&m).unwrap().unwrap();
        assert_eq!(e.action, Action::Remove);
        assert_eq!(e.dev_node(), Some(PathBuf::from("/dev/bus/usb/002/003")));

        // No trailing NUL, no DEVNAME, an action from the future.
        let e = Uevent::parse(b"frobnicate@/module/loop\0ACTION=frobnicate\0SUBSYSTEM=module")
            .unwrap()
            .unwrap();
        assert_eq!(e.action, Action::Other("frobnicate".into()));
        assert_eq!(e.action.as_str(), "frobnicate");
        assert_eq!(e.dev_node(), None);
        assert_eq!(e.seqnum, None);

        let e = Uevent::parse(&msg(&[
            "add@/devices/virtual/block/loop0",
            "SUBSYSTEM=block",
            "DEVNAME=loop0",
            "DEVTYPE=disk",
        ]))
        .unwrap()
        .unwrap();
        assert!(e.is_block_disk());
    }

    #[test]
    fn ignores_libudev_messages() {
        let mut m = b"libudev\0".to_vec();
        m.extend_from_slice(&0xfeed_cafe_u32.to_be_bytes());
        m.extend_from_slice(&[0u8; 32]);
        m.extend_from_slice(b"ACTION=add\0SUBSYSTEM=block\0");
        assert_eq!(Uevent::parse(&m).unwrap(), None);
    }

    #[test]
    fn refuses_malformed_messages() {
        let many: Vec<String> = (0..=MAX_KEYS).map(|i| format!("K{i}=v")).collect();
        let mut many_parts = vec!["add@/devices/x".to_owned()];
        many_parts.extend(many);
        let many_refs: Vec<&str> = many_parts.iter().map(String::as_str).collect();
        let huge = vec![b'a'; MAX_MESSAGE + 1];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "not ACTION@DEVPATH"),
            (msg(&["add /devices/x", "ACTION=add"]), "not ACTION@DEVPATH"),
            (msg(&["@/devices/x"]), "not ACTION@DEVPATH"),
            (msg(&["add@devices/x"]), "not ACTION@DEVPATH"),
            (msg(&["add@/devices/x", "ACTION"]), "has no '='"),
            (msg(&["add@/devices/x", "=value"]), "is not [A-Za-z0-9_]+"),
            (
                msg(&["add@/devices/x", "BAD KEY=1"]),
                "is not [A-Za-z0-9_]+",
            ),
            (msg(&["add@/devices/x", "A=1", "A=2"]), "appears twice"),
            (
                msg(&["add@/devices/x", "ACTION=remove"]),
                "contradicts the header",
            ),
            (
                msg(&["add@/devices/x", "DEVPATH=/devices/y"]),
                "contradicts the header",
            ),
            (msg(&["add@/devices/x", "SEQNUM=12a"]), "not a number"),
            (msg(&many_refs), "more than 128 variables"),
            (huge, "more than the 8192-byte limit"),
        ];
        for (m, want) in cases {
            let got = Uevent::parse(&m).unwrap_err().to_string();
            assert!(got.starts_with("malformed kernel uevent: "), "{got}");
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        }
    }

    #[test]
    fn non_utf8_values_are_kept_lossily_and_dev_nodes_stay_in_dev() {
        let e = Uevent::parse(b"add@/devices/virtual/net/x\0INTERFACE=a\xffb\0DEVNAME=../etc/x\0")
            .unwrap()
            .unwrap();
        assert_eq!(e.get("INTERFACE"), Some("a\u{fffd}b"));
        assert_eq!(e.dev_node(), None);
        let e = Uevent::parse(b"add@/x\0DEVNAME=/etc/x\0").unwrap().unwrap();
        assert_eq!(e.dev_node(), None);
        let e = Uevent::parse(b"add@/x\0DEVNAME=\0").unwrap().unwrap();
        assert_eq!(e.dev_node(), None);
    }

    #[test]
    fn errors_quoting_the_message_stay_on_one_line() {
        // A line break in the header (or in SEQNUM) must not start a new log line.
        for m in [
            &b"add@/devices/a\nforged line\0DEVPATH=/devices/b\0"[..],
            b"add@/devices/a\0SEQNUM=1\nforged line\0",
        ] {
            let got = Uevent::parse(m).unwrap_err().to_string();
            assert!(!got.contains('\n'), "{got:?}");
            assert!(got.contains("\\nforged line"), "{got:?}");
        }
    }

    /// Builds sysfs as the kernel lays it out: the disk's directory under /sys/devices holds
    /// one directory per partition, and /sys/class/block has a symlink for each of them.
    fn fake_sysfs() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let disk = r.join("devices/pci0000:00/0000:00:04.0/virtio2/block/vda");
        let write = |p: PathBuf, s: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        write(disk.join("dev"), "254:0\n");
        write(
            disk.join("uevent"),
            "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        );
        std::fs::create_dir_all(disk.join("queue")).unwrap();
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        write(disk.join("size"), "2097152\n");
        for (n, label) in [(2, Some("ROOT-A")), (10, None), (1, Some("ESP"))] {
            let p = disk.join(format!("vda{n}"));
            write(p.join("partition"), &format!("{n}\n"));
            write(p.join("dev"), &format!("254:{n}\n"));
            let mut uevent = format!("MAJOR=254\nMINOR={n}\nDEVNAME=vda{n}\nDEVTYPE=partition\n");
            if let Some(l) = label {
                uevent.push_str(&format!("PARTN={n}\nPARTNAME={l}\n"));
            }
            write(p.join("uevent"), &uevent);
        }
        let class = r.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        let target = "../../devices/pci0000:00/0000:00:04.0/virtio2/block/vda";
        std::os::unix::fs::symlink(target, class.join("vda")).unwrap();
        for n in [1, 2, 10] {
            std::os::unix::fs::symlink(format!("{target}/vda{n}"), class.join(format!("vda{n}")))
                .unwrap();
        }
        // A disk without partitions.
        let loop0 = r.join("devices/virtual/block/loop0");
        write(loop0.join("dev"), "7:0\n");
        std::os::unix::fs::symlink("../../devices/virtual/block/loop0", class.join("loop0"))
            .unwrap();
        root
    }

    #[test]
    fn lists_a_disks_partitions_from_sysfs() {
        let root = fake_sysfs();
        let class = root.path().join("class/block");
        let parts = block_partitions_of(&class, "vda").unwrap();
        let dev = |minor| Some(DevNumber { major: 254, minor });
        assert_eq!(
            parts,
            [
                Partition {
                    name: "vda1".into(),
                    number: 1,
                    dev: dev(1),
                    partname: Some("ESP".into()),
                },
                Partition {
                    name: "vda2".into(),
                    number: 2,
                    dev: dev(2),
                    partname: Some("ROOT-A".into()),
                },
                Partition {
                    name: "vda10".into(),
                    number: 10,
                    dev: dev(10),
                    partname: None,
                },
            ]
        );
        assert_eq!(block_partitions_of(&class, "loop0").unwrap(), []);
        // A partition has no partitions.
        assert_eq!(block_partitions_of(&class, "vda1").unwrap(), []);

        let e = block_partitions_of(&class, "sdz").unwrap_err();
        assert!(
            e.to_string().starts_with("reading ") && e.to_string().ends_with("class/block/sdz"),
            "{e}"
        );
        for bad in ["", "..", "../vda", "a\0b"] {
            assert!(matches!(
                block_partitions_of(&class, bad),
                Err(Error::BadBlockName { .. })
            ));
        }
    }

    #[test]
    fn dev_numbers() {
        assert_eq!(
            parse_dev("8:17\n"),
            Some(DevNumber {
                major: 8,
                minor: 17
            })
        );
        assert_eq!(parse_dev("8"), None);
        assert_eq!(parse_dev("8:x"), None);
    }

    #[test]
    fn socket_times_out_when_nothing_happens() {
        // In the host's namespace other events may arrive; only the timeout bound is checked.
        let mut s = UeventSocket::open().unwrap();
        let started = Instant::now();
        let got = s.recv(Some(Duration::from_millis(50)));
        assert!(got.is_ok(), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Sends `payload` as a uevent into this thread's network namespace: the kernel appends
    /// SEQNUM and multicasts it from port 0 to the namespace's group 1, like its own events
    /// (`uevent_net_rcv`, Linux 4.18+; needs CAP_SYS_ADMIN).
    fn inject(payload: &[u8]) -> io::Result<()> {
        send_netlink(payload, 0, 0, true)
    }

    /// Sends a datagram from an ordinary user socket, to the kernel (`groups` 0) or to a group.
    fn send_netlink(payload: &[u8], pid: u32, groups: u32, framed: bool) -> io::Result<()> {
        // SAFETY: no pointers; checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor, owned only here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut data = Vec::new();
        if framed {
            // struct nlmsghdr: len, type (>= NLMSG_MIN_TYPE), flags (NLM_F_REQUEST), seq, pid.
            let len = (16 + payload.len()) as u32;
            data.extend_from_slice(&len.to_ne_bytes());
            data.extend_from_slice(&0x10u16.to_ne_bytes());
            data.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
            data.extend_from_slice(&1u32.to_ne_bytes());
            data.extend_from_slice(&0u32.to_ne_bytes());
        }
        data.extend_from_slice(payload);
        // SAFETY: all-zero sockaddr_nl is valid.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        to.nl_pid = pid;
        to.nl_groups = groups;
        // SAFETY: `data` and `to` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    #[test]
    fn receives_kernel_uevents_and_drops_spoofed_ones() {
        let outcome = crate::testns::in_fresh_netns("uevent socket", || {
            let mut s = UeventSocket::open().unwrap();
            // A user process multicasting to the kernel's group must not be believed.
            let spoof = msg(&["add@/devices/spoof", "ACTION=add", "SUBSYSTEM=block"]);
            send_netlink(&spoof, 0, KERNEL_GROUP, false).unwrap();
            let real = msg(&[
                "add@/devices/virtual/block/loop7",
                "ACTION=add",
                "DEVPATH=/devices/virtual/block/loop7",
                "SUBSYSTEM=block",
                "DEVNAME=loop7",
                "DEVTYPE=disk",
            ]);
            if let Err(e) = inject(&real) {
                return Err(format!("the kernel refused an injected uevent: {e}"));
            }
            let e = s
                .recv(Some(Duration::from_secs(5)))
                .unwrap()
                .expect("the injected uevent arrives");
            assert_eq!(e.devpath, "/devices/virtual/block/loop7");
            assert!(e.is_block_disk());
            assert!(e.seqnum.is_some(), "the kernel appends SEQNUM: {e:?}");
            // The spoofed datagram arrived first and was dropped, and nothing else came.
            assert_eq!(s.ignored(), 1);
            assert_eq!(s.recv(Some(Duration::from_millis(100))).unwrap(), None);
            Ok(())
        });
        if let Some(Err(why)) = outcome {
            println!("skipped: {why}");
        }
    }
}
