//! The byte layouts around the shared per-packet functions of the fast path
//! ([`crate::fastpath::packet::uplink`] and [`crate::fastpath::packet::downlink`]), which
//! work on whole Ethernet frames: the raw datapath sends the NTM datagram that `uplink`
//! built through a UDP socket (the kernel writes the outer headers again), and gives
//! `downlink` a datagram from a UDP socket behind headers written here.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::fastpath::packet::ipv4_checksum;

/// Ethernet + IPv4 + UDP in front of a datagram.
pub const OUTER: usize = 14 + 20 + 8;

/// The datagram and its destination in a frame `uplink` produced:
/// `[Ethernet 14][IPv4 20][UDP 8][datagram]`.
pub fn uplink_datagram(frame: &[u8]) -> Option<(SocketAddrV4, &[u8])> {
    if frame.len() < OUTER {
        return None;
    }
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    let port = u16::from_be_bytes([frame[36], frame[37]]);
    Some((SocketAddrV4::new(dst, port), &frame[OUTER..]))
}

/// Writes, in `buf[..OUTER]`, the Ethernet/IPv4/UDP headers of a `datagram_len`-byte
/// datagram from `from` to `to` (what the kernel stripped), so that `downlink` sees the
/// frame XDP would have given it: a valid IPv4 header checksum, UDP checksum 0.
/// False when the lengths do not fit a UDP datagram or `buf` is too short.
pub fn write_outer(
    buf: &mut [u8],
    from: SocketAddrV4,
    to: SocketAddrV4,
    datagram_len: usize,
) -> bool {
    let Some(h) = buf.get_mut(..OUTER) else {
        return false;
    };
    let (Ok(udp_len), Ok(ip_len)) = (
        u16::try_from(datagram_len + 8),
        u16::try_from(datagram_len + 28),
    ) else {
        return false;
    };
    h[..12].fill(0);
    h[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut h[14..34];
    ip.fill(0);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&from.ip().octets());
    ip[16..20].copy_from_slice(&to.ip().octets());
    let c = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut h[34..OUTER];
    udp[0..2].copy_from_slice(&from.port().to_be_bytes());
    udp[2..4].copy_from_slice(&to.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_headers_round_trip_through_the_uplink_parser() {
        let from: SocketAddrV4 = "198.18.0.20:7700".parse().unwrap();
        let to: SocketAddrV4 = "192.168.10.2:7700".parse().unwrap();
        let mut buf = vec![0xeeu8; OUTER + 100];
        assert!(write_outer(&mut buf, from, to, 100));
        assert_eq!(ipv4_checksum(&buf[14..34]), 0, "valid header checksum");
        assert_eq!(u16::from_be_bytes([buf[16], buf[17]]), 128);
        assert_eq!(u16::from_be_bytes([buf[38], buf[39]]), 108);
        let (dst, dg) = uplink_datagram(&buf).unwrap();
        assert_eq!(dst, to);
        assert_eq!(dg, &[0xee; 100][..]);
        assert_eq!(&buf[26..30], &from.ip().octets());
        assert!(!write_outer(&mut buf[..10], from, to, 1));
        assert!(!write_outer(&mut buf, from, to, 70_000));
        assert!(uplink_datagram(&buf[..OUTER - 1]).is_none());
    }
}
