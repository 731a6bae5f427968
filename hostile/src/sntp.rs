//! SNTP replies a device must refuse. The client only listens to a datagram that echoes the
//! random cookie it sent, so each file holds [`ORIGIN_MARK`] where the origin timestamp goes,
//! which the test's server replaces with the request's cookie before answering; the files
//! without it (too short, a forged origin) are ignored by the client, which then gives up
//! after its timeout and says how many it ignored.

/// Stands in for the request's transmit timestamp in the origin field (bytes 24..32).
pub const ORIGIN_MARK: [u8; 8] = *b"ORIGIN!!";

/// A server reply with these first-byte fields (leap, version, mode), stratum, reference id,
/// and receive/transmit timestamps.
fn reply(li_vn_mode: u8, stratum: u8, id: [u8; 4], receive: u64, transmit: u64) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = li_vn_mode;
    p[1] = stratum;
    p[2] = 6;
    p[3] = 0xe8;
    p[12..16].copy_from_slice(&id);
    p[16..24].copy_from_slice(&(0xed00_0000u64 << 32).to_be_bytes());
    p[24..32].copy_from_slice(&ORIGIN_MARK);
    p[32..40].copy_from_slice(&receive.to_be_bytes());
    p[40..48].copy_from_slice(&transmit.to_be_bytes());
    p
}

const T: u64 = 0xed10_0000_8000_0000;

/// leap 0, version 4, mode 4.
const SERVER_V4: u8 = 0x24;

pub fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let mut forged = reply(SERVER_V4, 2, [10, 0, 0, 1], T, T);
    forged[24..32].copy_from_slice(&[0x11; 8]);
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        (
            "short.ntp",
            reply(SERVER_V4, 2, [10, 0, 0, 1], T, T)[..40].to_vec(),
            "were ignored",
        ),
        ("forged-origin.ntp", forged, "were ignored"),
        (
            "client-mode.ntp",
            reply(0x23, 2, [10, 0, 0, 1], T, T),
            "mode 3",
        ),
        (
            "version-2.ntp",
            reply(0x14, 2, [10, 0, 0, 1], T, T),
            "version 2",
        ),
        (
            "kiss-of-death-rate.ntp",
            reply(SERVER_V4, 0, *b"RATE", T, T),
            "RATE",
        ),
        (
            "kiss-of-death-deny.ntp",
            reply(SERVER_V4, 0, *b"DENY", T, T),
            "DENY",
        ),
        (
            "unsynchronised.ntp",
            reply(0xe4, 2, [10, 0, 0, 1], T, T),
            "not synchronised",
        ),
        (
            "stratum-16.ntp",
            reply(SERVER_V4, 16, [10, 0, 0, 1], T, T),
            "stratum 16",
        ),
        (
            "no-transmit-time.ntp",
            reply(SERVER_V4, 2, [10, 0, 0, 1], T, 0),
            "transmit timestamp is zero",
        ),
        (
            "no-receive-time.ntp",
            reply(SERVER_V4, 2, [10, 0, 0, 1], 0, T),
            "receive timestamp is zero",
        ),
    ];
    cases
        .into_iter()
        .map(|(n, b, e)| (n.to_string(), b, e))
        .collect()
}
