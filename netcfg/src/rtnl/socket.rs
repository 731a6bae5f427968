//! One NETLINK_ROUTE socket and the request/reply discipline on it.
//!
//! Every request carries a fresh sequence number, and replies are read until the one that ends
//! it: `NLMSG_DONE` for a dump (whose parts may span many datagrams), the `NLMSG_ERROR` that
//! acknowledges (code 0) or refuses (a negative errno) anything else. A dump the kernel marks
//! `NLM_F_DUMP_INTR` (the table changed while it was being walked) is read to its end and then
//! asked for again. Replies to other sequence numbers (left over from a request that failed
//! half-way) are skipped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::error::{Error, Refusal, Result};

/// Receive buffer. The kernel sizes dump datagrams to what the reader asks for, capped at
/// 32 KiB, so nothing it sends is larger.
pub const RECV_BUFFER: usize = 64 * 1024;
/// How long the kernel has to answer; it answers at once, so this only stops a bug hanging us.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Dumps interrupted by concurrent changes are retried this many times.
const DUMP_TRIES: u32 = 5;
/// `NLM_F_CAPPED` and `NLM_F_ACK_TLVS` in an `NLMSG_ERROR`'s own header.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Longest extended-ack message kept.
const MAX_EXT_ACK: usize = 512;
const NLMSG_HDRLEN: usize = 16;

pub type Message = NetlinkMessage<RouteNetlinkMessage>;

/// A NETLINK_ROUTE socket in the calling thread's network namespace, connected to the kernel.
pub struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// A socket for requests; `groups` are multicast groups to join (`RTNLGRP_*`) for events.
    pub fn open(groups: &[u32]) -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(Error::Open)?;
        sock.bind_auto().map_err(Error::Open)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(Error::Open)?;
        // Both are refinements (Linux 4.2+, 4.12+): a refusal then carries the kernel's reason,
        // and acks are not padded with a copy of the request. Older kernels just lack them.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        for &group in groups {
            sock.add_membership(group).map_err(Error::Open)?;
        }
        Ok(NlSocket {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    pub fn raw(&self) -> &Socket {
        &self.sock
    }

    /// Sets the kernel's receive buffer for this socket, so bursts of events do not overflow.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<()> {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        self.sock.set_rx_buf_sz(bytes).map_err(|source| Error::Io {
            op: "setting SO_RCVBUF",
            source,
        })
    }

    /// Every message of a dump of `request`'s kind; `what` names it in errors.
    pub fn dump(
        &mut self,
        request: RouteNetlinkMessage,
        what: &'static str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_TRIES {
            let seq = self.send(request.clone(), NLM_F_DUMP, what)?;
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

    /// Sends `request` with `flags` and `NLM_F_ACK`, and waits for the ack; returns whatever
    /// the kernel answered before it. `what` reads as "the kernel refused to {what}".
    pub fn request(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(request, flags | NLM_F_ACK, what)?;
        Ok(self.replies(seq, what)?.0)
    }

    fn send(&mut self, request: RouteNetlinkMessage, flags: u16, what: &str) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(request));
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let sent = self
            .sock
            .send(&bytes, 0)
            .map_err(|source| Error::Io { op: "send", source })?;
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
    fn replies(&mut self, seq: u32, what: &str) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(self.sock.as_fd(), left)
                .map_err(|source| Error::Io { op: "poll", source })?
            {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    secs: REPLY_TIMEOUT.as_secs(),
                });
            }
            let len = recv(&self.sock, &mut self.buf)?;
            for msg in split(&self.buf[..len]) {
                let msg = msg.map_err(|source| Error::Decode {
                    what: what.to_owned(),
                    source,
                })?;
                if msg.header.sequence_number != seq {
                    continue;
                }
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        let refusal = Refusal {
                            errno: -done.code,
                            message: None,
                        };
                        return Err(Error::Refused {
                            what: what.to_owned(),
                            source: refusal,
                        });
                    }
                    NetlinkPayload::Done(_) => return Ok((out, interrupted)),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok((out, interrupted)),
                    NetlinkPayload::Error(e) => {
                        let refusal = Refusal {
                            errno: e.raw_code().saturating_abs(),
                            message: ext_ack_message(msg.header.flags, &e.header),
                        };
                        return Err(Error::Refused {
                            what: what.to_owned(),
                            source: refusal,
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

impl AsFd for NlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Reads one datagram without blocking; 0 when there is none. ENOBUFS (events were dropped)
/// comes back as [`Error::Overflow`].
pub fn recv(sock: &Socket, buf: &mut [u8]) -> Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
    match sock.recv(&mut &mut buf[..], flags) {
        Ok(len) if len > buf.len() => Err(Error::Truncated {
            len,
            max: buf.len(),
        }),
        Ok(len) => Ok(len),
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted =>
        {
            Ok(0)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(Error::Overflow),
        Err(source) => Err(Error::Io { op: "recv", source }),
    }
}

/// The netlink messages in one datagram.
pub fn split(
    datagram: &[u8],
) -> impl Iterator<Item = Result<Message, netlink_packet_core::DecodeError>> + '_ {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(format!("a netlink message claims {len} bytes").into()));
        }
        let msg = Message::deserialize(&rest[..len]);
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some(msg)
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The kernel's extended-ack text in an `NLMSG_ERROR`, whose payload after the error code is
/// the request's header (and, unless capped, its body), then the attributes.
fn ext_ack_message(flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || after_code.len() < NLMSG_HDRLEN {
        return None;
    }
    let request_len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32::from_ne_bytes(after_code[..4].try_into().ok()?) as usize
    };
    let mut tlvs = after_code.get(align(request_len)..)?;
    while tlvs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([tlvs[0], tlvs[1]]));
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            let text = String::from_utf8_lossy(&text[..text.len().min(MAX_EXT_ACK)]);
            return Some(text.trim().to_owned()).filter(|t| !t.is_empty());
        }
        tlvs = tlvs.get(align(len)..).unwrap_or_default();
    }
    None
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
    fn ext_ack_text_is_found_after_a_capped_header() {
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        let text = b"Nexthop has invalid gateway\0";
        let len = 4 + text.len();
        payload.extend_from_slice(&(len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        let flags = NLM_F_CAPPED | NLM_F_ACK_TLVS;
        assert_eq!(
            ext_ack_message(flags, &payload).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &payload), None);
    }

    #[test]
    fn split_refuses_a_length_past_the_datagram() {
        let mut bytes = vec![0u8; 20];
        bytes[..4].copy_from_slice(&64u32.to_ne_bytes());
        let all: Vec<_> = split(&bytes).collect();
        assert_eq!(all.len(), 1);
        assert!(all[0].is_err());
    }
}
