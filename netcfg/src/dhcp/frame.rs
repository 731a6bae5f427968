//! IPv4 and UDP headers around a DHCP message, for the link-layer socket the client uses while
//! it has no address.
//!
//! The kernel adds the Ethernet header (the socket is `SOCK_DGRAM`); this module writes and reads
//! what lies between it and the DHCP message. Reading is validation of outside data like
//! [`super::parse`]: every length is checked against the buffer, fragments are refused (a DHCP
//! reply fits one datagram), and both checksums are verified, except the UDP one when the kernel
//! says it has not been computed yet (a reply from a local veth or tap peer, whose checksum is
//! left to hardware that never saw it).

use std::net::Ipv4Addr;

use super::packet::{CLIENT_PORT, SERVER_PORT};

const IP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const PROTO_UDP: u8 = 17;
/// Low delay, as other clients send DHCP; some switches prioritise on it.
const TOS_LOW_DELAY: u8 = 0x10;
const TTL: u8 = 64;

/// A UDP datagram read from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub source_port: u16,
    pub destination_port: u16,
    pub payload: &'a [u8],
}

/// Why a frame is not a UDP datagram the client reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("IPv4 packet of {0} bytes is too short for its headers")]
    Truncated(usize),
    #[error("not IPv4 (version {0})")]
    NotIpv4(u8),
    #[error("IPv4 header length {0} is invalid")]
    BadHeaderLength(usize),
    #[error("IPv4 total length {total} does not fit the {len} bytes received")]
    BadTotalLength { total: usize, len: usize },
    #[error("IPv4 header checksum is wrong")]
    BadIpChecksum,
    #[error("IP protocol {0} is not UDP")]
    NotUdp(u8),
    #[error("IPv4 fragment")]
    Fragment,
    #[error("UDP length {udp} does not fit the {room} bytes after the IP header")]
    BadUdpLength { udp: usize, room: usize },
    #[error("UDP checksum is wrong")]
    BadUdpChecksum,
}

/// A DHCP message from 0.0.0.0:68 to 255.255.255.255:67, with its IPv4 and UDP headers.
pub fn broadcast(message: &[u8]) -> Vec<u8> {
    udp_packet(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        CLIENT_PORT,
        SERVER_PORT,
        message,
    )
}

/// An IPv4 packet carrying one UDP datagram, both checksums filled in. `payload` must be
/// shorter than 65,508 bytes (DHCP messages are at most 1,500).
pub fn udp_packet(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    source_port: u16,
    destination_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let total = IP_HEADER_LEN + udp_len;
    let total16 = u16::try_from(total).expect("a DHCP message fits one IPv4 packet");
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, TOS_LOW_DELAY]);
    p.extend_from_slice(&total16.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, TTL, PROTO_UDP, 0, 0]); // id, flags+offset, ttl, proto, csum
    p.extend_from_slice(&source.octets());
    p.extend_from_slice(&destination.octets());
    let ip_sum = checksum(&[&p[..IP_HEADER_LEN]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    p.extend_from_slice(&source_port.to_be_bytes());
    p.extend_from_slice(&destination_port.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let mut udp_sum = udp_checksum(source, destination, &p[IP_HEADER_LEN..]);
    if udp_sum == 0 {
        udp_sum = 0xffff; // zero means "no checksum" in UDP over IPv4
    }
    p[IP_HEADER_LEN + 6..IP_HEADER_LEN + 8].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// Reads the UDP datagram in an IPv4 packet. `verify_udp_checksum` is false when the kernel
/// reports the checksum as not yet computed (`TP_STATUS_CSUMNOTREADY`).
pub fn datagram(packet: &[u8], verify_udp_checksum: bool) -> Result<Datagram<'_>, FrameError> {
    let len = packet.len();
    if len < IP_HEADER_LEN {
        return Err(FrameError::Truncated(len));
    }
    if packet[0] >> 4 != 4 {
        return Err(FrameError::NotIpv4(packet[0] >> 4));
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if header_len < IP_HEADER_LEN {
        return Err(FrameError::BadHeaderLength(header_len));
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    // Link layers pad short frames, so the packet may be longer than its total length.
    if total > len || total < header_len + UDP_HEADER_LEN {
        return Err(FrameError::BadTotalLength { total, len });
    }
    let packet = &packet[..total];
    if checksum(&[&packet[..header_len]]) != 0 {
        return Err(FrameError::BadIpChecksum);
    }
    if packet[9] != PROTO_UDP {
        return Err(FrameError::NotUdp(packet[9]));
    }
    // More-fragments flag, or a fragment offset.
    if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
        return Err(FrameError::Fragment);
    }
    let source = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let destination = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let udp = &packet[header_len..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER_LEN || udp_len > udp.len() {
        return Err(FrameError::BadUdpLength {
            udp: udp_len,
            room: udp.len(),
        });
    }
    let udp = &udp[..udp_len];
    let sent_sum = u16::from_be_bytes([udp[6], udp[7]]);
    if verify_udp_checksum && sent_sum != 0 && udp_checksum(source, destination, udp) != 0 {
        return Err(FrameError::BadUdpChecksum);
    }
    Ok(Datagram {
        source,
        destination,
        source_port: u16::from_be_bytes([udp[0], udp[1]]),
        destination_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: &udp[UDP_HEADER_LEN..],
    })
}

/// The UDP checksum over the IPv4 pseudo-header and `udp` (header and payload). Over a
/// datagram whose checksum field is filled in, it is 0 when the checksum is right.
fn udp_checksum(source: Ipv4Addr, destination: Ipv4Addr, udp: &[u8]) -> u16 {
    let len = (udp.len() as u16).to_be_bytes();
    let pseudo = [0, PROTO_UDP, len[0], len[1]];
    checksum(&[&source.octets(), &destination.octets(), &pseudo, udp])
}

/// The Internet checksum (RFC 1071) of the parts, taken as one byte string. Every part but the
/// last must have an even length.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for w in &mut words {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
        // Fold as we go so the sum never overflows, however many parts there are.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_packet_reads_back() {
        let message = b"a DHCP message of odd length";
        let p = broadcast(message);
        assert_eq!(p.len(), 20 + 8 + message.len());
        let d = datagram(&p, true).unwrap();
        assert_eq!(d.source, Ipv4Addr::UNSPECIFIED);
        assert_eq!(d.destination, Ipv4Addr::BROADCAST);
        assert_eq!((d.source_port, d.destination_port), (68, 67));
        assert_eq!(d.payload, message);
        // Ethernet padding after the packet is ignored.
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 18]);
        assert_eq!(datagram(&padded, true).unwrap().payload, message);
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // The example header from RFC 1071's companion texts (Wikipedia's IPv4 article).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&[&header]), 0xb861);
    }

    #[test]
    fn damaged_packets_are_refused() {
        let good = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            68,
            b"reply",
        );
        let with = |i: usize, v: u8| {
            let mut p = good.clone();
            p[i] = v;
            p
        };
        assert_eq!(datagram(&good[..10], true), Err(FrameError::Truncated(10)));
        assert_eq!(datagram(&with(0, 0x65), true), Err(FrameError::NotIpv4(6)));
        assert_eq!(
            datagram(&with(0, 0x44), true),
            Err(FrameError::BadHeaderLength(16))
        );
        assert!(matches!(
            datagram(&with(3, 0xff), true),
            Err(FrameError::BadTotalLength { .. })
        ));
        assert_eq!(datagram(&with(8, 1), true), Err(FrameError::BadIpChecksum));
        let mut payload_flipped = good.clone();
        *payload_flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            datagram(&payload_flipped, true),
            Err(FrameError::BadUdpChecksum)
        );
        // Unless the kernel says the checksum was never computed.
        assert!(datagram(&payload_flipped, false).is_ok());
    }

    #[test]
    fn fragments_and_other_protocols_are_refused() {
        let rebuild = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut p = broadcast(b"x");
            edit(&mut p);
            p[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum(&[&p[..20]]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p
        };
        assert_eq!(
            datagram(&rebuild(&|p| p[6] = 0x20), true),
            Err(FrameError::Fragment)
        );
        assert_eq!(
            datagram(&rebuild(&|p| p[9] = 6), true),
            Err(FrameError::NotUdp(6))
        );
        assert!(matches!(
            datagram(&rebuild(&|p| p[25] = 200), true),
            Err(FrameError::BadUdpLength { udp: 200, .. })
        ));
    }
}
