//! Bringing a network interface up, and asking whether it is up and has addresses.
//!
//! These are the two questions the daemon asks before anything else touches the network: `lo`
//! must be up for 127.0.0.1 to work (a fresh kernel, or a fresh network namespace, starts with
//! it down), and "does eth0 have an address yet" is a health check. Flags go through the old
//! `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctls on a throwaway AF_INET datagram socket; addresses come
//! from `getifaddrs(3)`, which musl answers over rtnetlink. Both act in the calling thread's
//! network namespace. (Configuring addresses and routes is netcfg's job, over rtnetlink.)

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// `SIOCGIFFLAGS` and `SIOCSIFFLAGS` (`linux/sockios.h`), as the `u32` every libc accepts.
const SIOCGIFFLAGS: u32 = 0x8913;
const SIOCSIFFLAGS: u32 = 0x8914;

/// Longest interface name (`IFNAMSIZ` less its NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// An interface's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Up and with a carrier (`IFF_RUNNING`).
    pub running: bool,
    pub loopback: bool,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl Status {
    pub fn has_address(&self) -> bool {
        !self.ipv4.is_empty() || !self.ipv6.is_empty()
    }

    /// Whether some address could reach beyond this link: not loopback, not link-local.
    pub fn has_routable_address(&self) -> bool {
        let v4 = self
            .ipv4
            .iter()
            .any(|a| !a.is_loopback() && !a.is_link_local() && !a.is_unspecified());
        let v6 = self
            .ipv6
            .iter()
            .any(|a| !a.is_loopback() && !a.is_unicast_link_local() && !a.is_unspecified());
        v4 || v6
    }

    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.ipv4.iter().map(|&a| IpAddr::V4(a));
        v4.chain(self.ipv6.iter().map(|&a| IpAddr::V6(a)))
    }
}

/// Sets `IFF_UP` on `name` (CAP_NET_ADMIN). Nothing changes if it already is up.
pub fn set_up(name: &str) -> Result<()> {
    let sock = Socket::new(name)?;
    let mut req = sock.request();
    sock.ioctl(SIOCGIFFLAGS, &mut req, "reading flags")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    sock.ioctl(SIOCSIFFLAGS, &mut req, "setting IFF_UP")
}

/// Whether `name` is administratively up (`IFF_UP`); addresses are not looked at.
pub fn is_up(name: &str) -> Result<bool> {
    Ok(flags(name)? & libc::IFF_UP != 0)
}

/// The interface's flags and addresses.
pub fn status(name: &str) -> Result<Status> {
    let flags = flags(name)?;
    let mut status = Status {
        up: flags & libc::IFF_UP != 0,
        running: flags & libc::IFF_RUNNING != 0,
        loopback: flags & libc::IFF_LOOPBACK != 0,
        ..Status::default()
    };
    for addr in addresses().map_err(|source| Error::Netif {
        name: name.to_owned(),
        op: "listing addresses (getifaddrs)",
        source,
    })? {
        match addr {
            (n, IpAddr::V4(a)) if n == name => status.ipv4.push(a),
            (n, IpAddr::V6(a)) if n == name => status.ipv6.push(a),
            _ => {}
        }
    }
    Ok(status)
}

/// `SIOCGIFFLAGS`.
fn flags(name: &str) -> Result<libc::c_int> {
    let sock = Socket::new(name)?;
    let mut req = sock.request();
    sock.ioctl(SIOCGIFFLAGS, &mut req, "reading flags")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// Refuses what the kernel would refuse (`dev_valid_name`), so a bad name from config fails
/// with a reason rather than ENODEV.
fn check_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::BadInterfaceName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad("must have 1 to 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if name.contains(|c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace()) {
        return bad("must not contain '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// An AF_INET datagram socket to carry interface ioctls about one interface.
struct Socket<'a> {
    fd: OwnedFd,
    name: &'a str,
}

impl<'a> Socket<'a> {
    fn new(name: &'a str) -> Result<Self> {
        check_name(name)?;
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(Error::Netif {
                name: name.to_owned(),
                op: "opening a socket",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a descriptor socket(2) just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, name })
    }

    /// A zeroed `struct ifreq` naming the interface.
    fn request(&self) -> libc::ifreq {
        // SAFETY: ifreq is plain old data (a name array and a union of integers and plain
        // structs); all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // check_name bounded the length below IFNAMSIZ, so the name stays NUL-terminated.
        for (dst, &src) in req.ifr_name.iter_mut().zip(self.name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        req
    }

    fn ioctl(&self, request: u32, req: &mut libc::ifreq, op: &'static str) -> Result<()> {
        // SAFETY: the descriptor is open for the call; the SIOC[GS]IFFLAGS requests take a
        // pointer to one `struct ifreq`, which `req` is, exclusively borrowed.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as libc::Ioctl, &raw mut *req) };
        if rc < 0 {
            return Err(Error::Netif {
                name: self.name.to_owned(),
                op,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Every IPv4 and IPv6 address in this network namespace, with its interface's name.
fn addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`; it is freed below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family says its type;
        // read_unaligned because nothing promises the stricter alignment of the larger types.
        let ip = unsafe {
            match libc::c_int::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = ifa.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned();
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = ifa.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned();
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        // SAFETY: ifa_name is a non-null, NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        out.push((name.to_string_lossy().into_owned(), ip));
    }
    // SAFETY: `head` came from getifaddrs and is freed once; no reference into it survives.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn request_numbers_match_libc() {
        assert_eq!(libc::c_ulong::from(SIOCGIFFLAGS), libc::SIOCGIFFLAGS);
        assert_eq!(libc::c_ulong::from(SIOCSIFFLAGS), libc::SIOCSIFFLAGS);
    }

    #[test]
    fn interface_names_are_checked() {
        for ok in ["lo", "eth0", "enp0s31f6", "wlan0", "a234567890abcde"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "a234567890abcdef",
            ".",
            "..",
            "eth0:1",
            "a/b",
            "a b",
            "a\0",
        ] {
            let e = set_up(bad).unwrap_err();
            assert!(matches!(e, Error::BadInterfaceName { .. }), "{bad:?}: {e}");
            assert!(e.to_string().starts_with("network interface name"), "{e}");
        }
    }

    #[test]
    fn routable_addresses() {
        let mut s = Status {
            ipv4: vec![Ipv4Addr::LOCALHOST],
            ipv6: vec![Ipv6Addr::LOCALHOST, "fe80::1".parse().unwrap()],
            ..Status::default()
        };
        assert!(s.has_address());
        assert!(!s.has_routable_address());
        s.ipv4.push(Ipv4Addr::new(192, 168, 7, 2));
        assert!(s.has_routable_address());
        assert_eq!(s.addresses().count(), 4);
        assert!(!Status::default().has_address());
    }

    /// In a new network namespace, where the host's interfaces are out of reach: `lo` starts
    /// down without addresses; after `set_up` it is up, has 127.0.0.1, and TCP over it works.
    #[test]
    fn brings_loopback_up_in_a_fresh_namespace() {
        crate::testns::in_fresh_netns("loopback bring-up", || {
            let before = status("lo").unwrap();
            assert!(before.loopback);
            assert!(!before.up, "{before:?}");
            assert!(!is_up("lo").unwrap());
            assert!(!before.ipv4.contains(&Ipv4Addr::LOCALHOST), "{before:?}");
            let discard = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
            assert!(TcpStream::connect_timeout(&discard, Duration::from_secs(2)).is_err());

            set_up("lo").unwrap();
            set_up("lo").unwrap(); // Idempotent.
            let after = status("lo").unwrap();
            assert!(after.up && after.running, "{after:?}");
            assert!(is_up("lo").unwrap());
            assert!(after.ipv4.contains(&Ipv4Addr::LOCALHOST), "{after:?}");
            assert!(!after.has_routable_address());

            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
            let probe = crate::probe::Probe::Tcp {
                addr,
                timeout: Duration::from_secs(2),
            };
            probe.run().unwrap();

            let e = status("cairn-none0").unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("network interface cairn-none0: reading flags"),
                "{e}"
            );
            let Error::Netif { source, .. } = e else {
                panic!("{e:?}")
            };
            assert_eq!(source.raw_os_error(), Some(libc::ENODEV));
        });
    }
}
