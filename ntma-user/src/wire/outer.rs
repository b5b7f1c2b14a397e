//! The outer Ethernet/IPv4/UDP headers of a tunnel datagram, written by one function
//! for both datapaths: the fast path's uplink in front of each datagram it seals, the
//! raw path in front of each datagram the kernel gave it (so that the downlink sees
//! the frame XDP would have given it).

use std::net::SocketAddrV4;

use super::{ethernet, ipv4, udp};

/// Ethernet + IPv4 (no options) + UDP in front of a datagram (42).
pub const OUTER_LEN: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;
/// Where the IPv4 header starts.
const IP_AT: usize = ethernet::HEADER_LEN;
/// Where the UDP header starts.
const UDP_AT: usize = IP_AT + ipv4::MIN_HEADER_LEN;

/// The headers of one datagram (§5 "Data"): DF set (outer packets are never
/// fragmented; the inner MTU leaves room), TTL 64, UDP checksum 0 (allowed over IPv4;
/// the tag protects the payload).
#[derive(Debug, Clone, Copy)]
pub struct Outer<'a> {
    /// The Ethernet header, ready made (destination, source, EtherType IPv4).
    pub eth: &'a [u8; ethernet::HEADER_LEN],
    /// Source address and port.
    pub from: SocketAddrV4,
    /// Destination address and port.
    pub to: SocketAddrV4,
    /// IPv4 identification.
    pub ident: u16,
}

impl Outer<'_> {
    /// Writes the headers of a `datagram_len`-byte datagram in `buf[..OUTER_LEN]`.
    /// False when `buf` is shorter or the datagram does not fit a UDP datagram.
    #[inline]
    pub fn emit(&self, buf: &mut [u8], datagram_len: usize) -> bool {
        let Some(h) = buf.first_chunk_mut::<OUTER_LEN>() else {
            return false;
        };
        let Some(ip_payload) = u16::try_from(datagram_len + udp::HEADER_LEN)
            .ok()
            .filter(|l| usize::from(*l) + ipv4::MIN_HEADER_LEN <= usize::from(u16::MAX))
        else {
            return false;
        };
        let (eth, rest) = h.split_at_mut(IP_AT);
        eth.copy_from_slice(self.eth);
        let (ip, udp_h) = rest.split_at_mut(ipv4::MIN_HEADER_LEN);
        let ip: &mut [u8; ipv4::MIN_HEADER_LEN] = ip.try_into().expect("20 bytes");
        let udp_h: &mut [u8; udp::HEADER_LEN] = udp_h.try_into().expect("8 bytes");
        ipv4::Repr {
            src: *self.from.ip(),
            dst: *self.to.ip(),
            protocol: ipv4::PROTO_UDP,
            payload_len: ip_payload,
            ident: self.ident,
            dont_frag: true,
            ttl: ipv4::DEFAULT_TTL,
        }
        .emit(ip);
        udp::Repr {
            src_port: self.from.port(),
            dst_port: self.to.port(),
        }
        .emit(udp_h, ip_payload - udp::HEADER_LEN as u16, 0);
        true
    }
}

/// The destination and the datagram of a frame [`Outer::emit`] wrote (the raw path
/// sends the datagram from a UDP socket, the kernel writing the headers again).
pub fn datagram(frame: &[u8]) -> Option<(SocketAddrV4, &[u8])> {
    if frame.len() < OUTER_LEN {
        return None;
    }
    let ip = ipv4::Packet::new_unchecked(&frame[IP_AT..]);
    let udp = udp::Packet::new_unchecked(&frame[UDP_AT..]);
    Some((
        SocketAddrV4::new(ip.dst_addr(), udp.dst_port()),
        &frame[OUTER_LEN..],
    ))
}

#[cfg(test)]
mod tests {
    use super::super::checksum;
    use super::*;

    #[test]
    fn outer_headers_round_trip() {
        let from: SocketAddrV4 = "198.18.0.20:7700".parse().unwrap();
        let to: SocketAddrV4 = "192.168.10.2:7700".parse().unwrap();
        let mut eth = [0u8; 14];
        eth[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
        let o = Outer {
            eth: &eth,
            from,
            to,
            ident: 9,
        };
        let mut buf = vec![0xeeu8; OUTER_LEN + 100];
        assert!(o.emit(&mut buf, 100));
        assert!(checksum::verify(&buf[14..34]), "valid header checksum");
        let ip = ipv4::Packet::new_checked(&buf[14..]).unwrap();
        assert_eq!((ip.total_len(), ip.ident(), ip.ttl()), (128, 9, 64));
        assert!(ip.dont_frag());
        assert_eq!(ip.src_addr(), *from.ip());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((u.src_port(), u.length(), u.checksum()), (7700, 108, 0));
        let (dst, dg) = datagram(&buf).unwrap();
        assert_eq!(dst, to);
        assert_eq!(dg, &[0xee; 100][..]);
        assert!(!o.emit(&mut buf[..10], 1));
        assert!(!o.emit(&mut buf, 70_000));
        assert!(!o.emit(&mut buf, 65_535 - 28 + 1));
        assert!(datagram(&buf[..OUTER_LEN - 1]).is_none());
    }
}
