//! DHCP replies (the UDP payload a server sends) a device must refuse: cut short or too long,
//! not a reply, not Ethernet, no magic cookie, options that run off the end or have the wrong
//! length, no or the wrong message type, an offer without its server, an address that is not
//! a host's, a mask with holes, an MTU or a lease too small to use.

const XID: u32 = 0x0102_0304;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A BOOTREPLY offering 10.0.2.15 with `options` (code, value) after the magic cookie.
fn reply(op: u8, htype: u8, yiaddr: [u8; 4], options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = op;
    m[1] = htype;
    m[2] = 6;
    m[4..8].copy_from_slice(&XID.to_be_bytes());
    m[16..20].copy_from_slice(&yiaddr);
    m[20..24].copy_from_slice(&[10, 0, 2, 2]);
    m[28..34].copy_from_slice(&MAC);
    m.extend_from_slice(&[99, 130, 83, 99]);
    for (code, value) in options {
        m.push(*code);
        m.push(value.len() as u8);
        m.extend_from_slice(value);
    }
    m.push(255);
    m
}

const OFFER: (u8, &[u8]) = (53, &[2]);
const SERVER: (u8, &[u8]) = (54, &[10, 0, 2, 2]);
const MASK: (u8, &[u8]) = (1, &[255, 255, 255, 0]);
const LEASE: (u8, &[u8]) = (51, &[0, 0, 0x0e, 0x10]);

fn offer(extra: &[(u8, &[u8])]) -> Vec<u8> {
    let mut options = vec![OFFER, SERVER, MASK, LEASE];
    options.extend_from_slice(extra);
    reply(2, 1, [10, 0, 2, 15], &options)
}

pub fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let good = offer(&[]);
    let mut long = good.clone();
    long.pop();
    long.resize(2000, 0);
    long.push(255);
    let mut past_end = good.clone();
    past_end.truncate(past_end.len() - 1);
    past_end.extend_from_slice(&[6, 200, 10, 0, 2, 3]);
    let mut no_cookie = good.clone();
    no_cookie[236] = 0;
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("short.dhcp", good[..100].to_vec(), "shorter than"),
        ("too-long.dhcp", long, "longer than"),
        (
            "a-request.dhcp",
            reply(1, 1, [10, 0, 2, 15], &[OFFER, SERVER, MASK, LEASE]),
            "not a reply",
        ),
        (
            "token-ring.dhcp",
            reply(2, 6, [10, 0, 2, 15], &[OFFER, SERVER, MASK, LEASE]),
            "not Ethernet",
        ),
        ("no-magic-cookie.dhcp", no_cookie, "magic cookie"),
        ("option-past-the-end.dhcp", past_end, "runs past the end"),
        (
            "mask-three-bytes.dhcp",
            reply(
                2,
                1,
                [10, 0, 2, 15],
                &[OFFER, SERVER, (1, &[255, 255, 0]), LEASE],
            ),
            "not a valid length",
        ),
        (
            "no-message-type.dhcp",
            reply(2, 1, [10, 0, 2, 15], &[SERVER, MASK, LEASE]),
            "no DHCP message type",
        ),
        (
            "a-discover.dhcp",
            reply(2, 1, [10, 0, 2, 15], &[(53, &[1]), SERVER, MASK, LEASE]),
            "not OFFER, ACK or NAK",
        ),
        (
            "offer-without-server.dhcp",
            reply(2, 1, [10, 0, 2, 15], &[OFFER, MASK, LEASE]),
            "option 54",
        ),
        (
            "broadcast-address.dhcp",
            reply(2, 1, [255, 255, 255, 255], &[OFFER, SERVER, MASK, LEASE]),
            "255.255.255.255",
        ),
        (
            "loopback-address.dhcp",
            reply(2, 1, [127, 0, 0, 1], &[OFFER, SERVER, MASK, LEASE]),
            "127.0.0.1",
        ),
        (
            "mask-with-holes.dhcp",
            reply(
                2,
                1,
                [10, 0, 2, 15],
                &[OFFER, SERVER, (1, &[255, 0, 255, 0]), LEASE],
            ),
            "not contiguous",
        ),
        ("mtu-100.dhcp", offer(&[(26, &[0, 100])]), "MTU 100"),
        (
            "lease-1s.dhcp",
            reply(
                2,
                1,
                [10, 0, 2, 15],
                &[OFFER, SERVER, MASK, (51, &[0, 0, 0, 1])],
            ),
            "lease time of 1 s",
        ),
    ];
    cases
        .into_iter()
        .map(|(n, b, e)| (n.to_string(), b, e))
        .collect()
}
