//! The DHCP client's I/O: its two sockets, and [`run`], the loop that drives a [`Client`].
//!
//! The one idea: which socket carries a message depends only on whether the client holds a
//! lease ([`Transmit::from`]).
//!
//! - Without one (SELECTING, REQUESTING, INIT-REBOOT) it uses an `AF_PACKET` datagram socket
//!   on the interface, writes the IPv4 and UDP headers itself and broadcasts from 0.0.0.0.
//!   Replies are read there too, whatever their IP destination, through a BPF filter that
//!   passes only UDP to port 68. A UDP socket can send such a broadcast, but cannot be relied
//!   on to receive the reply: with reverse-path filtering on (`rp_filter` 1 or 2, common on
//!   distributions and routers) the kernel drops a reply from a server it has no route back to,
//!   which is every server before the lease is applied; and a server that ignores the
//!   BROADCAST flag answers to the offered address, which is not yet the interface's.
//! - With a lease (RENEWING, REBINDING, RELEASE) the address is configured, so a UDP socket
//!   bound to 0.0.0.0:68 on the interface (`SO_BINDTODEVICE`) sends unicast to the server,
//!   which needs the kernel's ARP and routing, or broadcast (`SO_BROADCAST`).
//!
//! The loop waits in `poll` on the open socket, the deadline and a [`Stop`] (an eventfd), so an
//! idle client with a day-long lease does not wake until T1. Errors that the next
//! retransmission may not meet (the link went down, no route yet) are not fatal; failing to
//! open a socket is.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::client::{Action, Client, Destination, Lease, Options, OptionsError, Transmit};
use super::frame;
use super::packet::{self, CLIENT_PORT, MAX_MESSAGE_LEN, SERVER_PORT};

/// Receive buffer: a whole Ethernet frame's IP packet, so nothing acceptable is truncated.
const RECV_BUF: usize = 2048;
/// Datagrams read per wake-up, so a flood cannot keep the client from its timers.
const MAX_READS_PER_WAKE: usize = 32;
const ETH_P_IP: u16 = 0x0800;

/// What the caller does with leases: typically configure the address, routes and resolver
/// over rtnetlink.
pub trait LeaseSink {
    /// A lease was obtained; `took` runs from the first DISCOVER (or INIT-REBOOT REQUEST) of
    /// the exchange to the ACK.
    fn bound(&mut self, lease: &Lease, took: Duration);
    /// The lease was extended; its times and options may have changed, the address has not.
    fn renewed(&mut self, lease: &Lease);
    /// The lease ended (expired, refused, or released on stop): remove the address.
    fn lost(&mut self);
}

/// Asks a running [`run`] to release its lease and return. Shared between threads by
/// reference; wakes the client at once.
#[derive(Debug)]
pub struct Stop(OwnedFd);

impl Stop {
    pub fn new() -> io::Result<Stop> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        Ok(Stop(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Requests the stop. Idempotent.
    pub fn request(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. It can only fail if the
        // counter would overflow, which takes 2^64 requests; the stop is requested either way.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// Why the client stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("DHCP on {iface}: no such interface")]
    NoInterface { iface: String },
    #[error("DHCP on {iface}: {what}")]
    Io {
        iface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Runs the DHCP client on `iface` (whose hardware address is `mac`) until `stop` is requested,
/// then releases the lease, if any, and returns. Call it on a thread of its own, in the network
/// namespace of the interface.
pub fn run(
    iface: &str,
    mac: [u8; 6],
    options: &Options,
    sink: &mut impl LeaseSink,
    stop: &Stop,
) -> Result<(), Error> {
    let mut io = Sockets::new(iface)?;
    let seed = random_seed().map_err(|e| io.error("reading a random seed", e))?;
    let mut client = Client::new(mac, options, seed, Instant::now())?;
    let mut pending = client.start(Instant::now());
    loop {
        for action in pending.drain(..) {
            io.perform(action, sink)?;
        }
        io.close_unneeded(client.lease().is_some());
        match io.wait(stop, client.deadline())? {
            Wake::Stop => {
                for action in client.release() {
                    io.perform(action, sink)?;
                }
                return Ok(());
            }
            Wake::Readable => {
                for bytes in io.receive()? {
                    let Ok(reply) = packet::parse(&bytes) else {
                        continue; // not a reply we can use; the filter lets others' through
                    };
                    if client.expects(&reply) {
                        pending.extend(client.on_reply(&reply, Instant::now()));
                    }
                }
            }
            Wake::Deadline => {}
        }
        pending.extend(client.on_timeout(Instant::now()));
    }
}

enum Wake {
    Stop,
    Readable,
    Deadline,
}

/// The interface and whichever of the two sockets the current phase needs, opened on first
/// use.
struct Sockets {
    iface: String,
    ifindex: u32,
    link: Option<OwnedFd>,
    udp: Option<UdpSocket>,
}

impl Sockets {
    fn new(iface: &str) -> Result<Sockets, Error> {
        let ifindex = std::ffi::CString::new(iface)
            .ok()
            // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
            .map(|name| unsafe { libc::if_nametoindex(name.as_ptr()) })
            .unwrap_or(0);
        if ifindex == 0 {
            return Err(Error::NoInterface {
                iface: iface.into(),
            });
        }
        Ok(Sockets {
            iface: iface.into(),
            ifindex,
            link: None,
            udp: None,
        })
    }

    fn error(&self, what: &'static str, source: io::Error) -> Error {
        Error::Io {
            iface: self.iface.clone(),
            what,
            source,
        }
    }

    fn perform(&mut self, action: Action, sink: &mut impl LeaseSink) -> Result<(), Error> {
        match action {
            Action::Send(transmit) => self.send(&transmit)?,
            Action::Bound { lease, took } => sink.bound(&lease, took),
            Action::Renewed(lease) => sink.renewed(&lease),
            Action::Lost => sink.lost(),
        }
        Ok(())
    }

    fn send(&mut self, t: &Transmit) -> Result<(), Error> {
        let sent = match (t.from, t.to) {
            (None, _) => {
                let link = self.link()?.as_raw_fd();
                send_link_broadcast(link, self.ifindex, &frame::broadcast(&t.bytes))
            }
            (Some(_), Destination::Broadcast) => self
                .udp()?
                .send_to(&t.bytes, (Ipv4Addr::BROADCAST, SERVER_PORT)),
            (Some(_), Destination::Unicast(server)) => {
                self.udp()?.send_to(&t.bytes, (server, SERVER_PORT))
            }
        };
        match sent {
            Err(e) if !is_transient(&e) => Err(self.error("sending", e)),
            _ => Ok(()),
        }
    }

    /// The link-layer socket, opened if needed.
    fn link(&mut self) -> Result<&OwnedFd, Error> {
        if self.link.is_none() {
            let fd = open_link_socket(self.ifindex)
                .map_err(|e| self.error("opening the link-layer (AF_PACKET) socket", e))?;
            self.link = Some(fd);
        }
        Ok(self.link.as_ref().expect("opened above"))
    }

    /// The UDP socket, opened if needed.
    fn udp(&mut self) -> Result<&UdpSocket, Error> {
        if self.udp.is_none() {
            let socket = open_udp_socket(&self.iface)
                .map_err(|e| self.error("opening the UDP socket on port 68", e))?;
            self.udp = Some(socket);
        }
        Ok(self.udp.as_ref().expect("opened above"))
    }

    /// Closes the socket the client no longer uses: the link-layer one once it holds a lease,
    /// the UDP one once it has lost it.
    fn close_unneeded(&mut self, has_lease: bool) {
        if has_lease {
            self.link = None;
        } else {
            self.udp = None;
        }
    }

    /// Waits for a datagram, the deadline or a stop request.
    fn wait(&self, stop: &Stop, deadline: Option<Instant>) -> Result<Wake, Error> {
        let mut fds = vec![pollfd(stop.0.as_raw_fd())];
        fds.extend(self.link.as_ref().map(|s| pollfd(s.as_raw_fd())));
        fds.extend(self.udp.as_ref().map(|s| pollfd(s.as_raw_fd())));
        let timeout = deadline.map_or(-1, |d| {
            let left = d.saturating_duration_since(Instant::now());
            // Rounded up, so the client never wakes just before its deadline.
            i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
        });
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Wake::Deadline); // on_timeout does nothing early
            }
            return Err(self.error("waiting in poll", e));
        }
        if fds[0].revents != 0 {
            return Ok(Wake::Stop);
        }
        if fds[1..].iter().any(|f| f.revents != 0) {
            return Ok(Wake::Readable);
        }
        Ok(Wake::Deadline)
    }

    /// The DHCP messages waiting on the open sockets.
    fn receive(&self) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        let mut buf = [0u8; RECV_BUF];
        if let Some(link) = &self.link {
            for _ in 0..MAX_READS_PER_WAKE {
                let read = recv_link(link.as_raw_fd(), &mut buf)
                    .map_err(|e| self.error("reading the link-layer socket", e))?;
                let (len, checksum_ready) = match read {
                    LinkRead::Empty => break,
                    LinkRead::Skip => continue,
                    LinkRead::Packet {
                        len,
                        checksum_ready,
                    } => (len, checksum_ready),
                };
                let Ok(d) = frame::datagram(&buf[..len], checksum_ready) else {
                    continue;
                };
                if d.destination_port == CLIENT_PORT && d.payload.len() <= MAX_MESSAGE_LEN {
                    out.push(d.payload.to_vec());
                }
            }
        }
        if let Some(udp) = &self.udp {
            while out.len() < MAX_READS_PER_WAKE {
                match udp.recv_from(&mut buf) {
                    Ok((n, _)) => out.push(buf[..n].to_vec()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_transient(&e) => break,
                    Err(e) => return Err(self.error("reading the UDP socket", e)),
                }
            }
        }
        Ok(out)
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Errors a later retransmission may not meet: the link is down or has no route yet, or a
/// buffer is full.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::ENOBUFS
                | libc::EAGAIN
                | libc::ENXIO
                | libc::EADDRNOTAVAIL
                | libc::ECONNREFUSED
                | libc::EINTR
        )
    )
}

fn random_seed() -> io::Result<u64> {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most `seed.len()` bytes into the live buffer.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(seed))
}

/// Checks a libc return value: negative means errno.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed; the kernel only reads it.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn new_socket(
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket takes no pointers.
    let fd = check(unsafe { libc::socket(domain, kind | flags, protocol) })?;
    // SAFETY: `fd` was just returned by socket and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Classic BPF over the IPv4 packet (the socket is `SOCK_DGRAM`, so offset 0 is the IP header):
/// accept UDP to port 68 that is not a fragment, drop everything else in the kernel.
fn dhcp_client_filter() -> [libc::sock_filter; 9] {
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LD_H_IND: u16 = 0x48; // BPF_LD | BPF_H | BPF_IND
    const LDX_B_MSH: u16 = 0xb1; // BPF_LDX | BPF_B | BPF_MSH: X = 4 * (P[k] & 0xf)
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        op(LD_B_ABS, 0, 0, 9),                   // 0: A = protocol
        op(JEQ_K, 0, 6, 17),                     // 1: UDP, else drop
        op(LD_H_ABS, 0, 0, 6),                   // 2: A = flags and fragment offset
        op(JSET_K, 4, 0, 0x3fff),                // 3: a fragment: drop
        op(LDX_B_MSH, 0, 0, 0),                  // 4: X = IP header length
        op(LD_H_IND, 0, 0, 2),                   // 5: A = UDP destination port
        op(JEQ_K, 0, 1, u32::from(CLIENT_PORT)), // 6: port 68, else drop
        op(RET_K, 0, 0, RECV_BUF as u32),        // 7: accept
        op(RET_K, 0, 0, 0),                      // 8: drop
    ]
}

/// An `AF_PACKET` datagram socket for IPv4 on the interface, filtered to DHCP client traffic,
/// reporting whether each packet's checksum has been computed.
fn open_link_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let fd = new_socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from(ETH_P_IP.to_be()),
    )?;
    let filter = dhcp_client_filter();
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    set_option(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)?;
    set_option(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1i32)?;
    let addr = link_address(ifindex, [0; 6]);
    // SAFETY: `addr` is a live sockaddr_ll and its size is passed with it.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    // Packets that arrived between socket() and the filter's attachment were not filtered;
    // they are read and judged like any other, so there is nothing to drain.
    Ok(fd)
}

fn link_address(ifindex: u32, hw: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_IP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&hw);
    addr
}

fn send_link_broadcast(fd: RawFd, ifindex: u32, packet: &[u8]) -> io::Result<usize> {
    let addr = link_address(ifindex, [0xff; 6]);
    // SAFETY: `packet` and `addr` are live for the call and their sizes are passed with them.
    let n = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// What one read from the link-layer socket gave.
enum LinkRead {
    /// Nothing is waiting.
    Empty,
    /// A packet to ignore: one the host sent, or one too large for the buffer.
    Skip,
    /// A packet of `len` bytes; `checksum_ready` is false when the kernel left its UDP checksum
    /// to be computed by hardware (a local veth or tap peer), so it cannot be verified.
    Packet { len: usize, checksum_ready: bool },
}

fn recv_link(fd: RawFd, buf: &mut [u8]) -> io::Result<LinkRead> {
    // SAFETY: all-zero sockaddr_ll and msghdr are valid values, filled in below.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut control = [0u64; 16]; // aligned for cmsghdr; room for tpacket_auxdata
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` refers to a live local buffer of the recorded size.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(LinkRead::Empty),
            _ if is_transient(&e) => Ok(LinkRead::Empty),
            _ => Err(e),
        };
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(LinkRead::Skip);
    }
    let mut checksum_ready = true;
    // SAFETY: `msg` was filled in by recvmsg; CMSG_FIRSTHDR and CMSG_NXTHDR stay within
    // `control`, and a PACKET_AUXDATA message holds a tpacket_auxdata, read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                let aux: libc::tpacket_auxdata =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                checksum_ready = aux.tp_status & libc::TP_STATUS_CSUMNOTREADY == 0;
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok(LinkRead::Packet {
        len: n as usize,
        checksum_ready,
    })
}

/// A UDP socket on 0.0.0.0:68, on `iface` only, allowed to broadcast.
fn open_udp_socket(iface: &str) -> io::Result<UdpSocket> {
    let fd = new_socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    set_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)?;
    set_option(&fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &1i32)?;
    // SAFETY: the name's bytes are live for the call and their length is passed with them.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            iface.as_ptr().cast(),
            iface.len() as libc::socklen_t,
        )
    })?;
    // SAFETY: sockaddr_in is plain old data; all zeroes is INADDR_ANY.
    let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = CLIENT_PORT.to_be();
    // SAFETY: `addr` is a live sockaddr_in and its size is passed with it.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(UdpSocket::from(fd))
}
