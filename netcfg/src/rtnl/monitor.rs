//! Link events: a socket in the `RTNLGRP_LINK` multicast group, for following a cable going
//! out and back in.
//!
//! The kernel sends an `RTM_NEWLINK` for every change to a link (flags, MTU, name, statistics
//! of some drivers), so events that change nothing this module reports (name, admin state,
//! carrier, operational state) are dropped. Like any multicast netlink socket it overflows when
//! not read for long; that is reported as [`Error::Overflow`], after which the caller must
//! re-read [`super::Rtnl::state`] since it no longer sees every change.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use super::kernel::{link_from, OperState};
use super::socket::{self, NlSocket};
use super::wire::{self, Payload};

/// `RTNLGRP_LINK`.
const RTNLGRP_LINK: u32 = 1;
/// Kernel receive buffer asked for, so a burst (a switch rebooting, a dozen VLANs coming up)
/// does not overflow it.
const RECV_BUFFER: usize = 1 << 20;

/// A link changed state, or went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The lower layer is up (`IFF_LOWER_UP`): a cable in, a peer up.
    pub carrier: bool,
    pub oper: OperState,
    /// The link was deleted (`RTM_DELLINK`); the other fields are its last state.
    pub removed: bool,
}

/// A subscription to link events in the calling thread's network namespace.
pub struct Monitor {
    sock: NlSocket,
    buf: Vec<u8>,
    pending: VecDeque<LinkEvent>,
    /// The last event reported for each index, to drop repeats.
    last: HashMap<u32, LinkEvent>,
}

impl Monitor {
    pub fn open() -> Result<Monitor> {
        let sock = NlSocket::open(&[RTNLGRP_LINK])?;
        sock.set_recv_buffer(RECV_BUFFER)?;
        Ok(Monitor {
            sock,
            buf: vec![0; socket::RECV_BUFFER],
            pending: VecDeque::new(),
            last: HashMap::new(),
        })
    }

    /// The next event, waiting at most `timeout`; `None` when none came.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<LinkEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = socket::wait_readable(self.sock.as_fd(), left)
                .map_err(|source| Error::Io { op: "poll", source })?;
            if !ready {
                return Ok(None);
            }
            self.read()?;
        }
    }

    /// Reads one datagram's events into `pending`.
    fn read(&mut self) -> Result<()> {
        let len = self.sock.recv(&mut self.buf)?;
        for msg in wire::messages(&self.buf[..len]) {
            let decode = |source| Error::Decode {
                what: "a link event".into(),
                source,
            };
            let msg = msg.map_err(decode)?;
            let removed = match msg.header.kind {
                wire::RTM_NEWLINK => false,
                wire::RTM_DELLINK => true,
                _ => continue,
            };
            let Payload::Link(m) = msg.decode().map_err(decode)? else {
                continue;
            };
            let Some(link) = link_from(&m) else { continue };
            let event = LinkEvent {
                index: link.index,
                name: link.name,
                up: link.up,
                carrier: link.carrier,
                oper: link.oper,
                removed,
            };
            if removed {
                self.last.remove(&event.index);
            } else if self.last.get(&event.index) == Some(&event) {
                continue;
            } else {
                self.last.insert(event.index, event.clone());
            }
            self.pending.push_back(event);
        }
        Ok(())
    }
}

/// For polling the monitor together with other descriptors. One datagram can hold several
/// events: once it is readable, call `next(Duration::ZERO)` until it returns `None`.
impl AsFd for Monitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
