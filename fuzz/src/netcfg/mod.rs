//! What the DHCP fuzz targets feed `cairn-netcfg`, and the seed corpus they start from.
//!
//! The one idea: not panicking is the least a parser of hostile input owes; [`check_reply`] also
//! holds [`parse`] to what its documentation promises (every list capped, every name a plain DNS
//! name, every OFFER and ACK usable, header fields read from where RFC 2131 puts them), and then
//! hands each accepted reply to the client's state machine in every phase where a reply
//! matters, so a reply that parses can never make the client misbehave either. Two targets:
//!
//! - `dhcp_reply`: the input is a DHCP message, the UDP payload a server sends.
//! - `dhcp_frame`: the input is an IPv4 packet as the link-layer socket reads it before the
//!   client has an address; its headers are read by `frame::datagram`, then its payload goes
//!   through [`check_reply`].
//!
//! - `rtnl_datagram` and `sntp_reply`: see [`rtnl`] and [`sntp`].
//!
//! A crash artifact of `dhcp_reply` is a DHCP message as it is; one of `dhcp_frame` is an IPv4
//! packet (write it to a pcap with any tool that takes raw IP, e.g. `text2pcap -l 101`).

pub mod rtnl;
pub mod sntp;

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn_netcfg::dhcp::frame;
use cairn_netcfg::dhcp::packet::{
    dns_name, is_usable, MAX_ADDRESSES, MAX_MESSAGE_LEN, MAX_SEARCH, MAX_SERVER_MESSAGE,
    MIN_LEASE_SECS, MIN_MTU,
};
use cairn_netcfg::dhcp::{parse, Action, Client, Options, Phase, Reply, ReplyKind};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::Encodable;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// Parses `bytes` as a server's reply; for an accepted one, checks the parser's promises and
/// drives the state machine with it. Panics (a finding) on any broken promise.
pub fn check_reply(bytes: &[u8]) {
    let Ok(reply) = parse(bytes) else {
        return;
    };
    assert_eq!(
        parse(bytes).as_ref(),
        Ok(&reply),
        "parse is not deterministic"
    );
    check_promises(bytes, &reply);
    drive_client(&reply);
}

/// Reads `packet` as the link-layer socket would, then checks its payload with
/// [`check_reply`].
pub fn check_frame(packet: &[u8]) {
    let verified = frame::datagram(packet, true);
    let Ok(d) = frame::datagram(packet, false) else {
        assert!(
            verified.is_err(),
            "a packet passed with the checksum checked but not without"
        );
        return;
    };
    let range = packet.as_ptr_range();
    assert!(
        range.contains(&d.payload.as_ptr()) || d.payload.is_empty(),
        "the payload is not inside the packet"
    );
    assert!(d.payload.len() + 28 <= packet.len());
    check_reply(d.payload);
}

fn check_promises(bytes: &[u8], r: &Reply) {
    assert!(bytes.len() <= MAX_MESSAGE_LEN);
    // Header fields come from where RFC 2131 puts them.
    assert_eq!(r.xid.to_be_bytes(), bytes[4..8]);
    assert_eq!(r.yiaddr.octets(), bytes[16..20]);
    assert_eq!(r.chaddr, bytes[28..34]);
    for list in [&r.routers, &r.dns, &r.ntp] {
        assert!(list.len() <= MAX_ADDRESSES);
        assert!(
            list.iter().all(|a| is_usable(*a)),
            "unusable address in {list:?}"
        );
    }
    assert!(r.search.len() <= MAX_SEARCH);
    let names = r.search.iter().chain(&r.domain).chain(&r.hostname);
    for name in names {
        assert_eq!(
            dns_name(name.as_bytes()).as_ref(),
            Some(name),
            "not a plain name"
        );
    }
    if let Some(text) = &r.message {
        assert!(text.len() <= MAX_SERVER_MESSAGE);
        assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)));
    }
    assert!(r.mtu.is_none_or(|m| m >= MIN_MTU));
    assert!(r.prefix.is_none_or(|p| (1..=32).contains(&p)));
    if r.kind != ReplyKind::Nak {
        assert!(is_usable(r.yiaddr));
        assert!(r.server_id.is_some_and(is_usable));
        assert!(r.lease_time.is_some_and(|l| l >= MIN_LEASE_SECS));
    }
}

/// Feeds `reply`, addressed to the client's transaction, to a client in every phase that reads
/// replies, then runs each one's timers for a while.
fn drive_client(reply: &Reply) {
    let t0 = Instant::now();
    for mut c in clients_in_every_phase(t0) {
        let now = c.deadline().unwrap_or(t0).max(t0 + Duration::from_secs(1));
        check_actions(&c.on_reply(&addressed(reply, &c), now), reply);
        // Let its timers run. A timeout must always move the deadline past the time it was
        // handled at, or the socket loop would spin.
        let mut at = now;
        for _ in 0..8 {
            let Some(deadline) = c.deadline() else { break };
            at = at.max(deadline);
            check_actions(&c.on_timeout(at), reply);
            assert!(
                c.deadline().is_none_or(|d| d > at),
                "busy loop in {:?}",
                c.phase()
            );
        }
        c.release();
        assert_eq!(c.phase(), Phase::Stopped);
    }
}

/// Clients in SELECTING, INIT-REBOOT, REQUESTING, BOUND, RENEWING and REBINDING, in that order.
fn clients_in_every_phase(t0: Instant) -> Vec<Client> {
    let new = |previous| {
        let options = Options {
            previous,
            ..Options::default()
        };
        let mut c = Client::new(MAC, &options, 7, t0).expect("valid options");
        c.start(t0);
        c
    };
    let (offer, ack) = good_replies();
    let mut out = vec![new(None), new(Some(ADDR))];
    let mut requesting = new(None);
    requesting.on_reply(&addressed(offer, &requesting), t0);
    out.push(requesting);
    // The good lease is 1000 s with T1 at 500 s and T2 at 875 s.
    for secs in [0, 500, 900] {
        let mut c = new(None);
        c.on_reply(&addressed(offer, &c), t0);
        c.on_reply(&addressed(ack, &c), t0);
        c.on_timeout(t0 + Duration::from_secs(secs));
        out.push(c);
    }
    out
}

fn check_actions(actions: &[Action], reply: &Reply) {
    for action in actions {
        match action {
            Action::Bound { lease, .. } | Action::Renewed(lease) => {
                assert!(lease.renew_at() <= lease.rebind_at());
                assert!(lease.rebind_at() <= lease.expires_at());
                assert!(lease.t1 > Duration::ZERO);
                assert!(is_usable(lease.address));
                assert!((1..=32).contains(&lease.prefix));
                if lease.address == reply.yiaddr {
                    assert_eq!(lease.dns, reply.dns);
                }
            }
            Action::Send(t) => assert!(t.bytes.len() <= MAX_MESSAGE_LEN),
            Action::Lost => {}
        }
    }
}

/// `reply` with the xid and hardware address of the client's current transaction.
fn addressed(reply: &Reply, client: &Client) -> Reply {
    Reply {
        xid: client.xid(),
        chaddr: client.mac(),
        ..reply.clone()
    }
}

/// A parsed OFFER and ACK that take a client to BOUND, built once.
fn good_replies() -> &'static (Reply, Reply) {
    static GOOD: OnceLock<(Reply, Reply)> = OnceLock::new();
    GOOD.get_or_init(|| {
        let offer = parse(&qemu_like(MessageType::Offer, 1000)).expect("the good offer parses");
        let ack = parse(&qemu_like(MessageType::Ack, 1000)).expect("the good ACK parses");
        (offer, ack)
    })
}

/// A reply laid out as QEMU's user-mode server sends it: no T1 or T2, a day's lease.
fn qemu_like(kind: MessageType, lease: u32) -> Vec<u8> {
    let zero = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(0x0102_0304, zero, ADDR, SERVER, zero, &MAC);
    msg.set_opcode(Opcode::BootReply);
    let o = msg.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::Router(vec![SERVER]));
    o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
        10, 0, 2, 3,
    )]));
    o.insert(DhcpOption::AddressLeaseTime(lease));
    msg.to_vec().expect("a seed encodes")
}

/// A reply laid out as dnsmasq sends it, with every option the client reads.
fn dnsmasq_like(kind: MessageType) -> Vec<u8> {
    let zero = Ipv4Addr::UNSPECIFIED;
    let server = Ipv4Addr::new(10, 77, 0, 1);
    let addr = Ipv4Addr::new(10, 77, 0, 120);
    let mut msg = Message::new_with_id(0xa1b2_c3d4, zero, addr, server, zero, &MAC);
    msg.set_opcode(Opcode::BootReply);
    let o = msg.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(server));
    o.insert(DhcpOption::AddressLeaseTime(120));
    o.insert(DhcpOption::Renewal(4));
    o.insert(DhcpOption::Rebinding(6));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 77, 0, 255)));
    o.insert(DhcpOption::Router(vec![server]));
    o.insert(DhcpOption::DomainNameServer(vec![
        Ipv4Addr::new(10, 77, 0, 53),
        Ipv4Addr::new(10, 77, 0, 54),
    ]));
    o.insert(DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 77, 0, 123)]));
    o.insert(DhcpOption::DomainName("cairn.test".into()));
    o.insert(DhcpOption::Hostname("cairn-dev".into()));
    o.insert(DhcpOption::InterfaceMtu(1400));
    o.insert(DhcpOption::DomainSearch(vec![
        "a.cairn.test.".parse().expect("a name"),
        "b.cairn.test.".parse().expect("a name"),
    ]));
    msg.to_vec().expect("a seed encodes")
}

/// QEMU's NAK: no server identifier, a message.
fn qemu_nak() -> Vec<u8> {
    let zero = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(0x0102_0304, zero, zero, zero, zero, &MAC);
    msg.set_opcode(Opcode::BootReply);
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Nak));
    msg.opts_mut().insert(DhcpOption::Message(
        "requested address not available".into(),
    ));
    msg.to_vec().expect("a seed encodes")
}

/// An ACK written byte by byte, with what encoders rarely produce: a router list split in two
/// (RFC 3396) around another option, pad bytes, and a search list with a compression pointer
/// (RFC 3397's own example).
fn hand_written_ack() -> Vec<u8> {
    let mut bytes = qemu_like(MessageType::Ack, 1000);
    bytes.truncate(240);
    bytes.extend_from_slice(&[53, 1, 5, 54, 4, 10, 0, 2, 2, 51, 4, 0, 0, 0x0e, 0x10]);
    bytes.extend_from_slice(&[3, 4, 10, 0, 2, 2, 0, 0, 26, 2, 5, 220, 3, 4, 10, 0, 2, 1]);
    let search = b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04";
    bytes.extend_from_slice(&[119, search.len() as u8]);
    bytes.extend_from_slice(search);
    bytes.push(255);
    bytes
}

/// The seed corpus, as (target, file name, bytes). Panics if a seed does not parse, since the
/// fuzzer would then start from the error paths only.
pub fn seeds() -> Vec<crate::Seed> {
    let replies = [
        ("dnsmasq-offer", dnsmasq_like(MessageType::Offer)),
        ("dnsmasq-ack", dnsmasq_like(MessageType::Ack)),
        ("qemu-ack", qemu_like(MessageType::Ack, 86_400)),
        ("qemu-nak", qemu_nak()),
        ("hand-written-ack", hand_written_ack()),
    ];
    let mut out = Vec::new();
    for (name, bytes) in replies {
        assert!(parse(&bytes).is_ok(), "seed {name} does not parse");
        let packet = frame::udp_packet(SERVER, Ipv4Addr::BROADCAST, 67, 68, &bytes);
        out.push(("dhcp_reply", format!("{name}.dhcp"), bytes));
        out.push(("dhcp_frame", format!("{name}.ip"), packet));
    }
    out.extend(
        rtnl::seeds()
            .into_iter()
            .map(|(n, b)| ("rtnl_datagram", n, b)),
    );
    out.extend(sntp::seeds().into_iter().map(|(n, b)| ("sntp_reply", n, b)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_and_pass_the_oracle() {
        for (target, name, bytes) in seeds() {
            match target {
                "dhcp_reply" => check_reply(&bytes),
                "rtnl_datagram" => rtnl::check_datagram(&bytes),
                "sntp_reply" => sntp::check_reply(&bytes),
                _ => {
                    let d = frame::datagram(&bytes, true).unwrap();
                    assert!(parse(d.payload).is_ok(), "{name}");
                    check_frame(&bytes);
                }
            }
        }
        let hand = parse(&hand_written_ack()).unwrap();
        assert_eq!(
            hand.routers,
            [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 1)]
        );
        assert_eq!(hand.search, ["eng.apple.com", "marketing.apple.com"]);
        assert_eq!(hand.mtu, Some(1500));
    }

    #[test]
    fn the_oracle_reaches_every_phase() {
        let phases: Vec<Phase> = clients_in_every_phase(Instant::now())
            .iter()
            .map(Client::phase)
            .collect();
        assert_eq!(
            phases,
            [
                Phase::Selecting,
                Phase::InitReboot,
                Phase::Requesting,
                Phase::Bound,
                Phase::Renewing,
                Phase::Rebinding
            ]
        );
    }
}
