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
/// The per-datagram fields of the IPv4 header.
const IP_LEN: usize = IP_AT + 2;
const IP_IDENT: usize = IP_AT + 4;
const IP_CHECKSUM: usize = IP_AT + 10;
const IP_DST: usize = IP_AT + 16;

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

/// The outer headers of one link made once: everything [`Outer::emit`] writes but
/// the datagram's length, identification and destination, with the IPv4 header's
/// partial sum. [`OuterTemplate::emit`] copies it in front of a datagram, writes
/// those fields and the checksum from the partial sum plus theirs (no pass over the
/// header): the bytes of [`Outer::emit`].
#[derive(Debug, Clone, Copy)]
pub struct OuterTemplate {
    bytes: [u8; OUTER_LEN],
    /// One's-complement accumulator of the IPv4 header without the per-datagram
    /// fields (zero in `bytes`).
    sum: u32,
}

impl OuterTemplate {
    /// The headers from `from` with Ethernet header `eth`.
    pub fn new(eth: &[u8; ethernet::HEADER_LEN], from: SocketAddrV4) -> OuterTemplate {
        let mut bytes = [0u8; OUTER_LEN];
        let unset = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);
        let outer = Outer {
            eth,
            from,
            to: unset,
            ident: 0,
        };
        // An empty datagram always fits.
        let _ = outer.emit(&mut bytes, 0);
        for (at, len) in [(IP_LEN, 2), (IP_CHECKSUM, 2), (UDP_AT + 4, 2)] {
            bytes[at..at + len].fill(0);
        }
        let sum = super::checksum::accumulate(&bytes[IP_AT..UDP_AT]);
        OuterTemplate { bytes, sum }
    }

    /// [`Outer::emit`] of this link's headers to `to` with identification `ident`.
    #[inline]
    pub fn emit(&self, buf: &mut [u8], to: SocketAddrV4, ident: u16, datagram_len: usize) -> bool {
        let Some(h) = buf.first_chunk_mut::<OUTER_LEN>() else {
            return false;
        };
        let Some(ip_payload) = u16::try_from(datagram_len + udp::HEADER_LEN)
            .ok()
            .filter(|l| usize::from(*l) + ipv4::MIN_HEADER_LEN <= usize::from(u16::MAX))
        else {
            return false;
        };
        *h = self.bytes;
        let total = ip_payload + ipv4::MIN_HEADER_LEN as u16;
        let dst = u32::from(*to.ip());
        h[IP_LEN..IP_LEN + 2].copy_from_slice(&total.to_be_bytes());
        h[IP_IDENT..IP_IDENT + 2].copy_from_slice(&ident.to_be_bytes());
        h[IP_DST..IP_DST + 4].copy_from_slice(&dst.to_be_bytes());
        let sum = self.sum + u32::from(total) + u32::from(ident) + (dst >> 16) + (dst & 0xffff);
        let c = !super::checksum::fold(sum);
        h[IP_CHECKSUM..IP_CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
        h[UDP_AT + 2..UDP_AT + 4].copy_from_slice(&to.port().to_be_bytes());
        h[UDP_AT + 4..UDP_AT + 6].copy_from_slice(&ip_payload.to_be_bytes());
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

    #[test]
    fn the_template_writes_the_bytes_of_emit() {
        let from: SocketAddrV4 = "198.18.0.20:7700".parse().unwrap();
        let mut eth = [7u8; 14];
        eth[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
        let t = OuterTemplate::new(&eth, from);
        for (to, ident, len) in [
            ("192.168.10.2:7700", 9, 100),
            ("255.255.255.255:65535", 0xffff, 65_535 - 28),
            ("0.0.0.1:1", 0, 0),
            ("10.200.3.4:40000", 0x8001, 1472),
        ] {
            let to: SocketAddrV4 = to.parse().unwrap();
            let o = Outer {
                eth: &eth,
                from,
                to,
                ident,
            };
            let (mut a, mut b) = (vec![0xeeu8; OUTER_LEN + 8], vec![0x11u8; OUTER_LEN + 8]);
            assert!(o.emit(&mut a, len));
            assert!(t.emit(&mut b, to, ident, len));
            assert_eq!(a[..OUTER_LEN], b[..OUTER_LEN], "{to} {ident} {len}");
        }
        let mut buf = [0u8; OUTER_LEN];
        assert!(!t.emit(&mut buf[..10], from, 1, 1));
        assert!(!t.emit(&mut buf, from, 1, 65_535 - 28 + 1));
    }
}
