//! The `sntp_reply` target: the input is a UDP datagram as an NTP server (or anyone who can
//! send to the client's port) answers. It is read as the client reads it (`Packet::parse`,
//! then `check_reply` against the cookie sent), and an accepted reply is measured at a local
//! clock near today's and near the NTP era rollover of 2036. Checked: the header round-trips,
//! a reply is accepted only with the cookie as its origin, the server time is read within 68
//! years of the local clock, the delay is never negative, and every refusal is one line.

use cairn_netcfg::sntp::{NtpTimestamp, Packet, Sample, PACKET_LEN};

/// The cookie the client sent: a reply must echo it as its origin. The seeds carry it.
pub const COOKIE: NtpTimestamp = NtpTimestamp(0x0123_4567_89ab_cdef);

const NANOS: i128 = 1_000_000_000;
/// Local clocks the reply is measured at: 2026-12-07, and a second before the 2036 rollover.
const LOCAL: [i128; 2] = [1_796_601_600 * NANOS, 2_085_978_495 * NANOS];
/// 2^31 seconds, the farthest a timestamp can be read from the local clock.
const HALF_ERA: i128 = (1 << 31) * NANOS;

/// Reads `datagram` as a reply to [`COOKIE`]; panics (a finding) on a broken promise.
pub fn check_reply(datagram: &[u8]) {
    let packet = match Packet::parse(datagram) {
        Ok(p) => p,
        Err(e) => {
            assert!(datagram.len() < PACKET_LEN);
            assert!(!e.to_string().contains('\n'));
            return;
        }
    };
    assert_eq!(
        packet.encode()[..],
        datagram[..PACKET_LEN],
        "not a round trip"
    );
    if let Err(e) = packet.check_reply(COOKIE) {
        assert!(!e.to_string().contains('\n'), "{e}");
        return;
    }
    assert_eq!(packet.origin, COOKIE, "accepted without the cookie");
    assert!((1..=15).contains(&packet.stratum) && packet.mode == 4);
    let server = "192.0.2.123:123".parse().expect("an address");
    for t1 in LOCAL {
        // The answer came 0 to 65 ms later, as the datagram's last byte says.
        let t4 = t1 + i128::from(datagram[PACKET_LEN - 1]) * 255_000;
        let sample = Sample::measure(server, &packet, t1, t4);
        assert!((packet.receive.to_unix_nanos(t1) - t1).abs() <= HALF_ERA + NANOS);
        assert!((packet.transmit.to_unix_nanos(t4) - t4).abs() <= HALF_ERA + NANOS);
        assert!(i128::from(sample.offset.as_nanos()).abs() <= HALF_ERA + NANOS);
        assert!(sample.delay.as_nanos() <= 2 * (HALF_ERA + NANOS) as u128);
    }
}

/// Replies as chrony and as a kiss-o'-death server send them, as (file name, bytes).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let stamp = |secs: u32| NtpTimestamp(u64::from(secs) << 32 | 0x8000_0000);
    let reply = |stratum: u8, id: [u8; 4]| Packet {
        leap: 0,
        version: 4,
        mode: 4,
        stratum,
        poll: 6,
        precision: -24,
        root_delay: 0x10,
        root_dispersion: 0x20,
        reference_id: id,
        reference: stamp(3_974_000_000),
        origin: COOKIE,
        receive: stamp(4_005_590_400),
        transmit: stamp(4_005_590_401),
    };
    let good = reply(2, [192, 0, 2, 1]);
    let mut with_extension = good.encode().to_vec();
    with_extension.extend_from_slice(&[0; 20]);
    vec![
        ("chrony.ntp".into(), good.encode().to_vec()),
        ("kiss-rate.ntp".into(), reply(0, *b"RATE").encode().to_vec()),
        ("extension.ntp".into(), with_extension),
    ]
}
