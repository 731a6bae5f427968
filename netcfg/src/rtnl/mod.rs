//! The kernel's links, addresses and routes over rtnetlink: read them, plan the way to a
//! desired state, apply the plan, and follow link events.
//!
//! The one idea: [`plan`] is a pure function from [`KernelState`] and [`Desired`] to a list of
//! [`Change`]s, and equality is judged on exactly what the kernel reports back, so applying a
//! plan and planning again yields nothing: re-applying an unchanged config sends the kernel no
//! change request at all. `plan` refuses a desired state it cannot reach before anything is
//! changed. [`Rtnl`] is the synchronous NETLINK_ROUTE socket that reads the state and applies
//! changes one request at a time, each acknowledged; [`Monitor`] follows link events.
//!
//! Only links named in [`Desired`] are touched. On them, the addresses and routes that are not
//! desired are removed, apart from what the kernel made itself and routes of other protocols
//! (see [`desired`]). Sockets act in the network namespace of the thread that opened them.

pub mod desired;
mod encode;
pub mod error;
pub mod kernel;
mod monitor;
mod plan;
pub use cairn_facts::network::prefix;
mod socket;
mod wire;

use std::collections::HashMap;

pub use desired::{Address, Desired, DesiredLink, Protocol, Route, VlanOf};
pub use error::{DecodeError, Error, PlanError, Refusal, Result};
pub use kernel::{
    AddrFlags, KernelAddress, KernelRoute, KernelState, Link, LinkKind, OperState, RouteProto,
};
pub use monitor::{LinkEvent, Monitor};
pub use plan::{plan, plan_flush, Change};

/// The decoder on datagrams in memory, for the fuzz targets in `fuzz/src/netcfg`; not part of the
/// API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// What one datagram holds as [`Rtnl::state`] and the monitor read it: the links, addresses
    /// and routes it describes, each message decoded as the socket decodes it, and the
    /// refusals (`NLMSG_ERROR` with an errno) and `NLMSG_DONE` codes it carries. The first
    /// malformed message ends the datagram with its error, as on the socket.
    pub fn read_datagram(
        datagram: &[u8],
    ) -> (KernelState, Vec<Refusal>, Vec<i32>, Option<DecodeError>) {
        let mut state = KernelState::default();
        let (mut refusals, mut done) = (Vec::new(), Vec::new());
        for msg in wire::messages(datagram) {
            let payload = match msg.and_then(|m| m.decode()) {
                Ok(p) => p,
                Err(e) => return (state, refusals, done, Some(e)),
            };
            match payload {
                Payload::Link(l) => state.links.extend(kernel::link_from(&l)),
                Payload::Address(a) => state.addresses.extend(kernel::address_from(&a)),
                Payload::Route(r) => state.routes.extend(kernel::route_from(&r)),
                Payload::Refused { errno, message } => refusals.push(Refusal { errno, message }),
                Payload::Done(code) => done.push(code),
                Payload::Ack | Payload::Other => {}
            }
        }
        (state, refusals, done, None)
    }
}

use socket::NlSocket;
use wire::{Payload, Request};

/// A NETLINK_ROUTE socket for reading and changing links, addresses and routes.
pub struct Rtnl {
    sock: NlSocket,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl> {
        Ok(Rtnl {
            sock: NlSocket::open(&[])?,
        })
    }

    /// Every link, every IPv4 and IPv6 address, and the main table's routes.
    pub fn state(&mut self) -> Result<KernelState> {
        let links = self.sock.dump(&encode::dump_links(), "the link dump")?;
        let addresses = self
            .sock
            .dump(&encode::dump_addresses(), "the address dump")?;
        let mut routes = self
            .sock
            .dump(&encode::dump_routes(wire::AF_INET), "the IPv4 route dump")?;
        routes.extend(
            self.sock
                .dump(&encode::dump_routes(wire::AF_INET6), "the IPv6 route dump")?,
        );
        Ok(KernelState {
            links: links
                .iter()
                .filter_map(|m| match m {
                    Payload::Link(l) => kernel::link_from(l),
                    _ => None,
                })
                .collect(),
            addresses: addresses
                .iter()
                .filter_map(|m| match m {
                    Payload::Address(a) => kernel::address_from(a),
                    _ => None,
                })
                .collect(),
            routes: routes
                .iter()
                .filter_map(|m| match m {
                    Payload::Route(r) => kernel::route_from(r),
                    _ => None,
                })
                .collect(),
        })
    }

    /// Sends each change and waits for the kernel's ack; returns how many change requests were
    /// sent (`changes.len()`). Stops at the first refusal, which names the change.
    pub fn apply(&mut self, changes: &[Change]) -> Result<usize> {
        let mut indexes = HashMap::new();
        for change in changes {
            let request = self.encode(change, &mut indexes)?;
            self.sock.request(&request, &change.to_string())?;
        }
        Ok(changes.len())
    }

    /// Reads the state, plans, and applies: the whole reconcile. Nothing is changed when the
    /// plan is refused.
    pub fn reconcile(&mut self, desired: &Desired) -> Result<usize> {
        let changes = plan(&self.state()?, desired)?;
        self.apply(&changes)
    }

    /// Renews an address's lifetime (a DHCP renewal): `RTM_NEWADDR` with `NLM_F_REPLACE`.
    /// Adds the address when it is not there.
    pub fn refresh_address(&mut self, index: u32, address: Address) -> Result<()> {
        let request = encode::add_address(index, &address);
        let what = format!("refresh address {address} on interface #{index}");
        self.sock.request(&request, &what)?;
        Ok(())
    }

    /// Removes everything of ours from one link (a DHCP release or expiry): see
    /// [`plan_flush`]. Returns how many change requests were sent.
    pub fn flush(&mut self, index: u32) -> Result<usize> {
        let changes = plan_flush(&self.state()?, index)?;
        self.apply(&changes)
    }

    fn encode(&mut self, change: &Change, indexes: &mut HashMap<String, u32>) -> Result<Request> {
        Ok(match change {
            Change::CreateVlan {
                name,
                parent,
                id,
                mtu,
            } => {
                plan::check_name(name)?;
                let parent = self.index_of(parent, indexes)?;
                encode::create_vlan(name, parent, *id, *mtu)
            }
            Change::SetMtu { link, mtu } => encode::set_mtu(self.index_of(link, indexes)?, *mtu),
            Change::SetUp { link } => encode::set_up(self.index_of(link, indexes)?),
            Change::RemoveRoute { route, .. } => encode::remove_route(route),
            Change::RemoveAddress { link, addr, prefix } => {
                encode::remove_address(self.index_of(link, indexes)?, *addr, *prefix)
            }
            Change::AddAddress { link, address } => {
                encode::add_address(self.index_of(link, indexes)?, address)
            }
            Change::AddRoute { link, route } => {
                encode::add_route(self.index_of(link, indexes)?, route)
            }
        })
    }

    /// A link's index by name, asked of the kernel once per `apply` (a link created by an
    /// earlier change has one only from then on).
    fn index_of(&mut self, name: &str, indexes: &mut HashMap<String, u32>) -> Result<u32> {
        if let Some(&index) = indexes.get(name) {
            return Ok(index);
        }
        if plan::check_name(name).is_err() {
            return Err(Error::NoSuchLink(name.to_owned()));
        }
        let what = format!("look up interface {name}");
        let replies = match self.sock.request(&encode::get_link(name), &what) {
            Err(Error::Refused { source, .. }) if source.errno == libc::ENODEV => {
                return Err(Error::NoSuchLink(name.to_owned()))
            }
            other => other?,
        };
        let index = replies
            .iter()
            .find_map(|m| match m {
                Payload::Link(l) => Some(l.index),
                _ => None,
            })
            .ok_or_else(|| Error::NoSuchLink(name.to_owned()))?;
        indexes.insert(name.to_owned(), index);
        Ok(index)
    }
}
