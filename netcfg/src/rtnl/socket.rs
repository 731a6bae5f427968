//! One NETLINK_ROUTE socket and the request/reply discipline on it.
//!
//! Every request carries a fresh sequence number, and replies are read until the one that ends
//! it: `NLMSG_DONE` for a dump (whose parts may span many datagrams), the `NLMSG_ERROR` that
//! acknowledges (code 0) or refuses (a negative errno) anything else. A dump the kernel marks
//! `NLM_F_DUMP_INTR` (the table changed while it was being walked) is read to its end and then
//! asked for again. Replies to other sequence numbers (left over from a request that failed
//! half-way) are skipped.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::error::{Error, Refusal, Result};
use super::wire::{self, Payload, Request, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR};

/// Receive buffer. The kernel sizes dump datagrams to what the reader asks for, capped at
/// 32 KiB, so nothing it sends is larger.
pub const RECV_BUFFER: usize = 64 * 1024;
/// How long the kernel has to answer; it answers at once, so this only stops a bug hanging us.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Dumps interrupted by concurrent changes are retried this many times.
const DUMP_TRIES: u32 = 5;

/// A NETLINK_ROUTE socket in the calling thread's network namespace, connected to the kernel.
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// A socket for requests; `groups` are multicast groups to join (`RTNLGRP_*`) for events.
    pub fn open(groups: &[u32]) -> Result<Self> {
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(Error::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a descriptor socket(2) just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Port 0 in bind: the kernel picks ours. Port 0 in connect: the kernel is the peer, and
        // unicasts from anyone else are refused.
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` is a live sockaddr_nl and its size is passed with it.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })
            .map_err(Error::Open)?;
        // SAFETY: as above.
        check(unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) })
            .map_err(Error::Open)?;
        // Both are refinements (Linux 4.2+, 4.12+): a refusal then carries the kernel's reason,
        // and acks are not padded with a copy of the request. Older kernels just lack them.
        let _ = set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
        let _ = set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        for &group in groups {
            let group = libc::c_int::try_from(group)
                .map_err(|_| Error::Open(io::Error::from_raw_os_error(libc::EINVAL)))?;
            set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, group)
                .map_err(Error::Open)?;
        }
        Ok(NlSocket {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Sets the kernel's receive buffer for this socket, so bursts of events do not overflow.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<()> {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        set_option(&self.fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes).map_err(|source| Error::Io {
            op: "setting SO_RCVBUF",
            source,
        })
    }

    /// Every message of a dump of `request`'s kind; `what` names it in errors.
    pub fn dump(&mut self, request: &Request, what: &'static str) -> Result<Vec<Payload>> {
        for _ in 0..DUMP_TRIES {
            let seq = self.send(request, NLM_F_DUMP, what)?;
            let (messages, interrupted) = self.replies(seq, what)?;
            if !interrupted {
                return Ok(messages);
            }
        }
        Err(Error::DumpInterrupted {
            what,
            tries: DUMP_TRIES,
        })
    }

    /// Sends `request` with `NLM_F_ACK`, and waits for the ack; returns whatever the kernel
    /// answered before it. `what` reads as "the kernel refused to {what}".
    pub fn request(&mut self, request: &Request, what: &str) -> Result<Vec<Payload>> {
        let seq = self.send(request, NLM_F_ACK, what)?;
        Ok(self.replies(seq, what)?.0)
    }

    fn send(&mut self, request: &Request, flags: u16, what: &str) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = request.message(flags, self.seq);
        let sent = loop {
            // SAFETY: `bytes` is live for the call and its length is passed with it.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
            if n >= 0 {
                break n as usize;
            }
            let source = io::Error::last_os_error();
            if source.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Io { op: "send", source });
            }
        };
        if sent != bytes.len() {
            return Err(Error::Io {
                op: "send",
                source: io::Error::other(format!("sent {sent} of {} bytes of {what}", bytes.len())),
            });
        }
        Ok(self.seq)
    }

    /// Reads the replies to `seq` until the one that ends them; also says whether the kernel
    /// marked any as interrupted.
    fn replies(&mut self, seq: u32, what: &str) -> Result<(Vec<Payload>, bool)> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(self.fd.as_fd(), left)
                .map_err(|source| Error::Io { op: "poll", source })?
            {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    secs: REPLY_TIMEOUT.as_secs(),
                });
            }
            let len = recv(self.fd.as_fd(), &mut self.buf)?;
            for msg in wire::messages(&self.buf[..len]) {
                let decode = |source| Error::Decode {
                    what: what.to_owned(),
                    source,
                };
                let msg = msg.map_err(decode)?;
                if msg.header.seq != seq {
                    continue;
                }
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.decode().map_err(decode)? {
                    Payload::Done(code) if code < 0 => {
                        let refusal = Refusal {
                            errno: code.saturating_neg(),
                            message: None,
                        };
                        return Err(Error::Refused {
                            what: what.to_owned(),
                            source: refusal,
                        });
                    }
                    Payload::Done(_) | Payload::Ack => return Ok((out, interrupted)),
                    Payload::Refused { errno, message } => {
                        return Err(Error::Refused {
                            what: what.to_owned(),
                            source: Refusal { errno, message },
                        });
                    }
                    Payload::Other => {}
                    object => out.push(object),
                }
            }
        }
    }

    /// Reads one datagram into `buf` without blocking; see [`recv`].
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        recv(self.fd.as_fd(), buf)
    }
}

impl AsFd for NlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed with it; the kernel only reads it.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// Reads one datagram without blocking; 0 when there is none. ENOBUFS (events were dropped)
/// comes back as [`Error::Overflow`], and a datagram larger than `buf` as [`Error::Truncated`].
fn recv(fd: BorrowedFd, buf: &mut [u8]) -> Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
    // SAFETY: `buf` is live and writable for the call and its length is passed with it.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ if e.raw_os_error() == Some(libc::ENOBUFS) => Err(Error::Overflow),
            _ => Err(Error::Io {
                op: "recv",
                source: e,
            }),
        };
    }
    // With MSG_TRUNC, recv returns the datagram's real length.
    let len = n as usize;
    if len > buf.len() {
        return Err(Error::Truncated {
            len,
            max: buf.len(),
        });
    }
    Ok(len)
}

/// Waits until `fd` is readable; false when `timeout` passed first.
pub fn wait_readable(fd: BorrowedFd, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms =
            libc::c_int::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd that outlives the call, and nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            n if n > 0 => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_dumps_links_and_an_ack_ends_a_request() {
        // Unprivileged reads work in any namespace: the loopback link is always there.
        let mut sock = NlSocket::open(&[]).unwrap();
        let links = sock
            .dump(&super::super::encode::dump_links(), "the link dump")
            .unwrap();
        assert!(links.iter().any(|p| matches!(
            p,
            Payload::Link(l) if l.flags & wire::IFF_LOOPBACK != 0 && l.name.as_deref() == Some("lo")
        )));
        let replies = sock
            .request(&super::super::encode::get_link("lo"), "look up lo")
            .unwrap();
        assert!(matches!(&replies[..], [Payload::Link(l)] if l.name.as_deref() == Some("lo")));
        let err = sock
            .request(
                &super::super::encode::get_link("no-such-link0"),
                "look up no-such-link0",
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::Refused { source, .. } if source.errno == libc::ENODEV),
            "{err:?}"
        );
    }
}
