//! Frame views and builders for what the GN-facing slow path handles:
//! Ethernet II, ARP, IPv4, UDP and ICMP.
//!
//! Parsing goes through `etherparse`'s slices, plus the checks the slow path
//! needs on top (header checksum, total length against the frame, UDP length
//! and checksum, fragments). Every parser takes untrusted bytes and returns
//! `Err(GnDrop)` instead of panicking. Builders append a whole frame to a
//! caller-owned `Vec` (reused between frames) with every checksum filled in.

use std::fmt;
use std::net::Ipv4Addr;

use etherparse::checksum::Sum16BitWords;
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacketSlice, EtherType, Ethernet2Header, Icmpv4Header,
    Icmpv4Type, IpNumber, Ipv4Header, Ipv4HeaderSlice, UdpHeader,
};

use super::counters::GnDrop;

/// Ethernet II header length.
pub const ETH_HEADER_LEN: usize = 14;
/// Shortest Ethernet frame without FCS; shorter frames are zero-padded so
/// that NICs that do not pad on AF_XDP transmit still send valid frames.
pub const ETH_MIN_FRAME_LEN: usize = 60;
/// IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;
/// TTL of every IPv4 packet the slow path originates.
pub const DEFAULT_TTL: u8 = 64;
/// EtherType values the slow path cares about.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP EtherType.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
/// UDP protocol number.
pub const IPPROTO_UDP: u8 = 17;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group bit set (multicast, including broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// All-zero address.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A valid source of a frame: unicast and not zero.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("MAC address {s:?} has fewer than 6 bytes"))?;
            if p.len() != 2 {
                return Err(format!(
                    "MAC address {s:?}: byte {p:?} is not two hex digits"
                ));
            }
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| format!("MAC address {s:?}: byte {p:?} is not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC address {s:?} has more than 6 bytes"));
        }
        Ok(MacAddr(out))
    }
}

/// An Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct EthView<'a> {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// EtherType (no VLAN tags: a tagged frame shows 0x8100).
    pub ether_type: u16,
    /// Everything after the header, Ethernet padding included.
    pub payload: &'a [u8],
}

impl<'a> EthView<'a> {
    /// Views `frame` as Ethernet II.
    pub fn parse(frame: &'a [u8]) -> Result<Self, GnDrop> {
        let (h, payload) = Ethernet2Header::from_slice(frame).map_err(|_| GnDrop::FrameShort)?;
        Ok(Self {
            dst: MacAddr(h.destination),
            src: MacAddr(h.source),
            ether_type: h.ether_type.0,
            payload,
        })
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpView {
    /// 1 = request, 2 = reply.
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpView {
    /// ARP request.
    pub const REQUEST: u16 = 1;
    /// ARP reply.
    pub const REPLY: u16 = 2;

    /// Parses the ARP payload of an Ethernet frame.
    pub fn parse(payload: &[u8]) -> Result<Self, GnDrop> {
        let slice = ArpPacketSlice::from_slice(payload).map_err(|_| GnDrop::ArpMalformed)?;
        let p = slice
            .to_packet()
            .try_eth_ipv4()
            .map_err(|_| GnDrop::ArpMalformed)?;
        Ok(Self {
            op: p.operation.0,
            sender_mac: MacAddr(p.sender_mac),
            sender_ip: p.sender_ipv4_addr(),
            target_mac: MacAddr(p.target_mac),
            target_ip: p.target_ipv4_addr(),
        })
    }
}

/// An IPv4 packet whose header was checked: version, IHL, total length
/// within the frame, and (when asked) the header checksum.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4View<'a> {
    /// Header including options.
    pub header: &'a [u8],
    /// Payload cut to the total length (Ethernet padding removed).
    pub payload: &'a [u8],
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub protocol: u8,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
}

impl<'a> Ipv4View<'a> {
    /// Parses the IPv4 payload of an Ethernet frame.
    pub fn parse(bytes: &'a [u8], verify_checksum: bool) -> Result<Self, GnDrop> {
        let h = Ipv4HeaderSlice::from_slice(bytes).map_err(|_| GnDrop::Ipv4Malformed)?;
        let hlen = h.slice().len();
        let total = usize::from(h.total_len());
        if total < hlen || total > bytes.len() {
            return Err(GnDrop::Ipv4Malformed);
        }
        if verify_checksum && !checksum_ok(h.slice()) {
            return Err(GnDrop::Ipv4BadChecksum);
        }
        Ok(Self {
            header: h.slice(),
            payload: &bytes[hlen..total],
            src: h.source_addr(),
            dst: h.destination_addr(),
            protocol: h.protocol().0,
            more_fragments: h.more_fragments(),
            frag_offset: h.fragments_offset().value(),
        })
    }

    /// Part of a fragmented datagram (first or later).
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }
}

/// A UDP datagram inside a checked IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct UdpView<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload cut to the UDP length.
    pub payload: &'a [u8],
}

impl<'a> UdpView<'a> {
    /// Parses the UDP datagram carried by `ip`; a zero checksum means "none"
    /// (RFC 768) and is accepted.
    pub fn parse(ip: &Ipv4View<'a>, verify_checksum: bool) -> Result<Self, GnDrop> {
        let (h, _) = UdpHeader::from_slice(ip.payload).map_err(|_| GnDrop::UdpMalformed)?;
        let len = usize::from(h.length);
        if len < UDP_HEADER_LEN || len > ip.payload.len() {
            return Err(GnDrop::UdpMalformed);
        }
        let payload = &ip.payload[UDP_HEADER_LEN..len];
        if verify_checksum && h.checksum != 0 {
            let want = h
                .calc_checksum_ipv4_raw(ip.src.octets(), ip.dst.octets(), payload)
                .map_err(|_| GnDrop::UdpMalformed)?;
            if want != h.checksum {
                return Err(GnDrop::UdpBadChecksum);
            }
        }
        Ok(Self {
            src_port: h.source_port,
            dst_port: h.destination_port,
            payload,
        })
    }
}

/// True when the one's-complement sum over `bytes` (checksum field included)
/// is all ones, i.e. the embedded Internet checksum verifies.
pub fn checksum_ok(bytes: &[u8]) -> bool {
    Sum16BitWords::new().add_slice(bytes).ones_complement() == 0
}

fn push_eth(out: &mut Vec<u8>, dst: MacAddr, src: MacAddr, ether_type: u16) {
    out.extend_from_slice(
        &Ethernet2Header {
            destination: dst.0,
            source: src.0,
            ether_type: EtherType(ether_type),
        }
        .to_bytes(),
    );
}

fn pad_frame(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if len < ETH_MIN_FRAME_LEN {
        out.resize(start + ETH_MIN_FRAME_LEN, 0);
    }
}

fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
) -> Result<Ipv4Header, GnDrop> {
    let len = u16::try_from(payload_len).map_err(|_| GnDrop::TxBufferTooSmall)?;
    let mut ip = Ipv4Header::new(
        len,
        DEFAULT_TTL,
        IpNumber(protocol),
        src.octets(),
        dst.octets(),
    )
    .map_err(|_| GnDrop::TxBufferTooSmall)?;
    ip.header_checksum = ip.calc_header_checksum();
    Ok(ip)
}

/// Appends an ARP reply frame telling `requester` that `answered_ip` is at
/// `our_mac`.
pub fn build_arp_reply(
    out: &mut Vec<u8>,
    our_mac: MacAddr,
    answered_ip: Ipv4Addr,
    requester_mac: MacAddr,
    requester_ip: Ipv4Addr,
) {
    let start = out.len();
    push_eth(out, requester_mac, our_mac, ETHERTYPE_ARP);
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REPLY,
        sender_mac: our_mac.0,
        sender_ipv4: answered_ip.octets(),
        target_mac: requester_mac.0,
        target_ipv4: requester_ip.octets(),
    };
    out.extend_from_slice(&arp.to_bytes());
    pad_frame(out, start);
}

/// Appends an ARP request frame (used by tests to play the GN).
pub fn build_arp_request(
    out: &mut Vec<u8>,
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) {
    let start = out.len();
    push_eth(out, MacAddr::BROADCAST, sender_mac, ETHERTYPE_ARP);
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: sender_mac.0,
        sender_ipv4: sender_ip.octets(),
        target_mac: [0; 6],
        target_ipv4: target_ip.octets(),
    };
    out.extend_from_slice(&arp.to_bytes());
    pad_frame(out, start);
}

/// Both ends of a UDP datagram inside an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpEnds {
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// IPv4 source.
    pub src_ip: Ipv4Addr,
    /// IPv4 destination.
    pub dst_ip: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
}

/// Appends an Ethernet/IPv4/UDP frame carrying `payload`, with the IPv4
/// header checksum and the UDP checksum (pseudo-header) filled in.
pub fn build_udp_frame(out: &mut Vec<u8>, ends: &UdpEnds, payload: &[u8]) -> Result<(), GnDrop> {
    let ip = ipv4_header(
        ends.src_ip,
        ends.dst_ip,
        IPPROTO_UDP,
        UDP_HEADER_LEN + payload.len(),
    )?;
    let udp = UdpHeader::with_ipv4_checksum(ends.src_port, ends.dst_port, &ip, payload)
        .map_err(|_| GnDrop::TxBufferTooSmall)?;
    let start = out.len();
    push_eth(out, ends.dst_mac, ends.src_mac, ETHERTYPE_IPV4);
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&udp.to_bytes());
    out.extend_from_slice(payload);
    pad_frame(out, start);
    Ok(())
}

/// ICMP destination-unreachable codes the NTMA sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unreachable {
    /// Code 0: network unreachable.
    Net,
    /// Code 1: host unreachable.
    #[default]
    Host,
    /// Code 4: fragmentation needed and DF set, with the next-hop MTU (RFC 1191).
    FragmentationNeeded(u16),
}

/// Appends an ICMP destination-unreachable frame from `src_ip`/`src_mac` to
/// the sender of `original` (an IPv4 packet, header first), quoting its IP
/// header and the first 8 bytes of its payload (RFC 792).
pub fn build_icmp_unreachable(
    out: &mut Vec<u8>,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv4Addr,
    code: Unreachable,
    original: &Ipv4View<'_>,
) -> Result<(), GnDrop> {
    use etherparse::icmpv4::DestUnreachableHeader;
    let quote_payload = original.payload.len().min(8);
    let header_len = original.header.len();
    let kind = match code {
        Unreachable::Net => DestUnreachableHeader::Network,
        Unreachable::Host => DestUnreachableHeader::Host,
        Unreachable::FragmentationNeeded(next_hop_mtu) => {
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu }
        }
    };
    // Quote = the original header as received + 8 bytes of its payload.
    let mut quote = [0u8; 60 + 8];
    quote[..header_len].copy_from_slice(original.header);
    quote[header_len..header_len + quote_payload]
        .copy_from_slice(&original.payload[..quote_payload]);
    let quote = &quote[..header_len + quote_payload];
    let icmp = Icmpv4Header::with_checksum(Icmpv4Type::DestinationUnreachable(kind), quote);
    let icmp_bytes = icmp.to_bytes();
    let ip = ipv4_header(
        src_ip,
        original.src,
        IPPROTO_ICMP,
        icmp_bytes.len() + quote.len(),
    )?;
    let start = out.len();
    push_eth(out, dst_mac, src_mac, ETHERTYPE_IPV4);
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&icmp_bytes);
    out.extend_from_slice(quote);
    pad_frame(out, start);
    Ok(())
}

/// Splits the IPv4 packet `packet` (header first, exactly its total length) into
/// fragments of at most `mtu` bytes (RFC 791, §3.2 "Fragmentation"): payloads in
/// multiples of 8 bytes, offsets in 8-byte units from the packet's own offset, MF on
/// every fragment but the last (and on the last too if the packet was a non-last
/// fragment itself), a fresh header checksum each; the first fragment keeps every
/// option, the others only those with the copy bit set. `None` when it cannot: DF
/// set, malformed options, or a header too long for `mtu`.
pub fn fragment_ipv4(packet: &[u8], mtu: usize) -> Option<Vec<Vec<u8>>> {
    const DF: u16 = 0x4000;
    const MF: u16 = 0x2000;
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet.len() < 20 || ihl < 20 || ihl > packet.len() {
        return None;
    }
    let flags_offset = u16::from_be_bytes([packet[6], packet[7]]);
    if flags_offset & DF != 0 {
        return None;
    }
    let base_offset = usize::from(flags_offset & 0x1fff) * 8;
    let was_more = flags_offset & MF != 0;
    // The header of later fragments: options with the copy bit only, padded to 4.
    let mut later = packet[..20].to_vec();
    let mut at = 20;
    while at < ihl {
        match packet[at] {
            0 => break,
            1 => at += 1,
            kind => {
                let len = usize::from(*packet.get(at + 1)?);
                if len < 2 || at + len > ihl {
                    return None;
                }
                if kind & 0x80 != 0 {
                    later.extend_from_slice(&packet[at..at + len]);
                }
                at += len;
            }
        }
    }
    while !later.len().is_multiple_of(4) {
        later.push(0);
    }
    let payload = &packet[ihl..];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < payload.len() || out.is_empty() {
        let header = if out.is_empty() {
            &packet[..ihl]
        } else {
            &later[..]
        };
        let room = mtu.checked_sub(header.len())? / 8 * 8;
        if room == 0 {
            return None;
        }
        let end = (pos + room).min(payload.len());
        let last = end == payload.len();
        let mut f = Vec::with_capacity(header.len() + end - pos);
        f.extend_from_slice(header);
        f[0] = 0x40 | (header.len() / 4) as u8;
        f.extend_from_slice(&payload[pos..end]);
        let total = u16::try_from(f.len()).ok()?;
        f[2..4].copy_from_slice(&total.to_be_bytes());
        let offset = u16::try_from((base_offset + pos) / 8)
            .ok()
            .filter(|o| *o <= 0x1fff)?;
        let more = if !last || was_more { MF } else { 0 };
        f[6..8].copy_from_slice(&(offset | more).to_be_bytes());
        f[10..12].copy_from_slice(&[0, 0]);
        let c = crate::fastpath::packet::ipv4_checksum(&f[..header.len()]);
        f[10..12].copy_from_slice(&c.to_be_bytes());
        out.push(f);
        pos = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP_REQ: &[u8] = include_bytes!("testdata/arp_request_router.bin");
    const DIG_A: &[u8] = include_bytes!("testdata/dig_noedns_a.bin");

    #[test]
    fn mac_parse_display_roundtrip() {
        let m: MacAddr = "02:00:00:00:00:0a".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(m.to_string(), "02:00:00:00:00:0a");
        assert!(m.is_unicast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!("02:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:0a:0b".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:zz".parse::<MacAddr>().is_err());
    }

    #[test]
    fn parse_captured_arp_request() {
        let eth = EthView::parse(ARP_REQ).unwrap();
        assert_eq!(eth.dst, MacAddr::BROADCAST);
        assert_eq!(eth.src.to_string(), "02:00:00:00:00:0a");
        assert_eq!(eth.ether_type, ETHERTYPE_ARP);
        let arp = ArpView::parse(eth.payload).unwrap();
        assert_eq!(arp.op, ArpView::REQUEST);
        assert_eq!(arp.sender_ip, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(arp.target_ip, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(arp.sender_mac, eth.src);
    }

    #[test]
    fn arp_reply_layout() {
        let us = MacAddr([2, 0, 0, 0, 0, 0x0b]);
        let them = MacAddr([2, 0, 0, 0, 0, 0x0a]);
        let mut out = Vec::new();
        build_arp_reply(
            &mut out,
            us,
            Ipv4Addr::new(100, 64, 0, 1),
            them,
            Ipv4Addr::new(100, 64, 0, 2),
        );
        assert_eq!(out.len(), ETH_MIN_FRAME_LEN);
        #[rustfmt::skip]
        let want: [u8; 42] = [
            2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x0b, 0x08, 0x06,
            0, 1, 0x08, 0, 6, 4, 0, 2,
            2, 0, 0, 0, 0, 0x0b, 100, 64, 0, 1,
            2, 0, 0, 0, 0, 0x0a, 100, 64, 0, 2,
        ];
        assert_eq!(&out[..42], &want);
        assert!(out[42..].iter().all(|&b| b == 0));
    }

    #[test]
    fn parse_captured_udp_and_checksums() {
        let eth = EthView::parse(DIG_A).unwrap();
        let ip = Ipv4View::parse(eth.payload, true).unwrap();
        assert_eq!(ip.src, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(ip.dst, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(ip.protocol, IPPROTO_UDP);
        assert!(!ip.is_fragment());
        let udp = UdpView::parse(&ip, true).unwrap();
        assert_eq!(udp.dst_port, 53);
        assert_eq!(udp.payload.len(), 29);

        // One flipped bit in the IPv4 header or UDP payload is caught.
        let mut bad = DIG_A.to_vec();
        bad[14 + 8] ^= 1; // TTL
        let eth = EthView::parse(&bad).unwrap();
        assert_eq!(
            Ipv4View::parse(eth.payload, true).unwrap_err(),
            GnDrop::Ipv4BadChecksum
        );
        let mut bad = DIG_A.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let eth = EthView::parse(&bad).unwrap();
        let ip = Ipv4View::parse(eth.payload, true).unwrap();
        assert_eq!(
            UdpView::parse(&ip, true).unwrap_err(),
            GnDrop::UdpBadChecksum
        );
        assert!(UdpView::parse(&ip, false).is_ok());
    }

    #[test]
    fn truncated_and_bad_lengths() {
        assert_eq!(
            EthView::parse(&DIG_A[..13]).unwrap_err(),
            GnDrop::FrameShort
        );
        let eth = EthView::parse(&DIG_A[..14 + 19]).unwrap();
        assert_eq!(
            Ipv4View::parse(eth.payload, true).unwrap_err(),
            GnDrop::Ipv4Malformed
        );
        // Total length beyond the frame.
        let eth = EthView::parse(&DIG_A[..DIG_A.len() - 1]).unwrap();
        assert_eq!(
            Ipv4View::parse(eth.payload, false).unwrap_err(),
            GnDrop::Ipv4Malformed
        );
        // UDP length larger than the IPv4 payload.
        let mut bad = DIG_A.to_vec();
        bad[14 + 20 + 4] = 0x01;
        let eth = EthView::parse(&bad).unwrap();
        let ip = Ipv4View::parse(eth.payload, true).unwrap();
        assert_eq!(
            UdpView::parse(&ip, false).unwrap_err(),
            GnDrop::UdpMalformed
        );
        // Version 6 in an IPv4 EtherType.
        let mut bad = DIG_A.to_vec();
        bad[14] = 0x65;
        let eth = EthView::parse(&bad).unwrap();
        assert_eq!(
            Ipv4View::parse(eth.payload, false).unwrap_err(),
            GnDrop::Ipv4Malformed
        );
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut padded = DIG_A.to_vec();
        padded.extend_from_slice(&[0xee; 20]);
        let eth = EthView::parse(&padded).unwrap();
        let ip = Ipv4View::parse(eth.payload, true).unwrap();
        let udp = UdpView::parse(&ip, true).unwrap();
        assert_eq!(udp.payload.len(), 29);
    }

    #[test]
    fn udp_builder_roundtrip_with_checksums() {
        let ends = UdpEnds {
            dst_mac: MacAddr([2, 0, 0, 0, 0, 0x0a]),
            src_mac: MacAddr([2, 0, 0, 0, 0, 0x0b]),
            src_ip: Ipv4Addr::new(100, 64, 0, 1),
            dst_ip: Ipv4Addr::new(100, 64, 0, 2),
            src_port: 53,
            dst_port: 40000,
        };
        let mut out = Vec::new();
        build_udp_frame(&mut out, &ends, b"hello").unwrap();
        assert_eq!(out.len(), ETH_MIN_FRAME_LEN);
        let eth = EthView::parse(&out).unwrap();
        assert_eq!(eth.dst, ends.dst_mac);
        let ip = Ipv4View::parse(eth.payload, true).unwrap();
        assert!(checksum_ok(ip.header));
        let udp = UdpView::parse(&ip, true).unwrap();
        assert_eq!(udp.payload, b"hello");
        assert_eq!((udp.src_port, udp.dst_port), (53, 40000));
        // The checksum is really present (not the "none" zero).
        assert_ne!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    }

    #[test]
    fn icmp_unreachable_quotes_header_and_8_bytes() {
        let eth = EthView::parse(DIG_A).unwrap();
        let orig = Ipv4View::parse(eth.payload, true).unwrap();
        let mut out = Vec::new();
        let router = Ipv4Addr::new(100, 64, 0, 1);
        build_icmp_unreachable(
            &mut out,
            MacAddr([2, 0, 0, 0, 0, 0x0b]),
            eth.src,
            router,
            Unreachable::Host,
            &orig,
        )
        .unwrap();
        let e = EthView::parse(&out).unwrap();
        assert_eq!(e.dst, eth.src);
        let ip = Ipv4View::parse(e.payload, true).unwrap();
        assert_eq!(ip.protocol, IPPROTO_ICMP);
        assert_eq!(ip.src, router);
        assert_eq!(ip.dst, orig.src);
        let icmp = ip.payload;
        assert_eq!(icmp.len(), 8 + 20 + 8);
        assert_eq!((icmp[0], icmp[1]), (3, 1));
        assert!(checksum_ok(icmp));
        assert_eq!(&icmp[8..28], orig.header);
        assert_eq!(&icmp[28..36], &orig.payload[..8]);
    }

    /// An IPv4 packet of `len` bytes with the given options (padded) and flags word.
    fn packet(len: usize, opts: &[u8], flags: u16) -> Vec<u8> {
        let mut o = opts.to_vec();
        while !o.len().is_multiple_of(4) {
            o.push(0);
        }
        let ihl = 20 + o.len();
        let mut p = vec![0u8; len];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&[0xbe, 0xef]);
        p[6..8].copy_from_slice(&flags.to_be_bytes());
        p[8] = 64;
        p[9] = 1;
        p[12..16].copy_from_slice(&[100, 64, 0, 2]);
        p[16..20].copy_from_slice(&[100, 64, 0, 9]);
        p[20..ihl].copy_from_slice(&o);
        for (i, b) in p[ihl..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let c = crate::fastpath::packet::ipv4_checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Reassembles fragments (RFC 815 in its simplest form: in any order, no gaps).
    fn reassemble(frags: &[Vec<u8>]) -> (Vec<u8>, bool) {
        let mut payload = Vec::new();
        let mut more = true;
        let mut sorted: Vec<&Vec<u8>> = frags.iter().collect();
        sorted.sort_by_key(|f| u16::from_be_bytes([f[6], f[7]]) & 0x1fff);
        for f in sorted {
            let ihl = usize::from(f[0] & 0x0f) * 4;
            let off = usize::from(u16::from_be_bytes([f[6], f[7]]) & 0x1fff) * 8;
            assert_eq!(off, payload.len(), "no gap, no overlap");
            payload.extend_from_slice(&f[ihl..]);
            more = f[6] & 0x20 != 0;
        }
        (payload, more)
    }

    #[test]
    fn fragments_fit_and_reassemble_to_the_original() {
        // Record route (not copied) and a copied option (security, type 130).
        let opts = [7, 7, 4, 0, 0, 0, 0, 130, 3, 0];
        for (len, mtu, opts) in [
            (3000, 1440, &[][..]),
            (1441, 1440, &[][..]),
            (3000, 1340, &[][..]),
            (2000, 576, &opts[..]),
        ] {
            let p = packet(len, opts, 0);
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frags = fragment_ipv4(&p, mtu).expect("fragments");
            assert!(frags.len() >= 2);
            for (i, f) in frags.iter().enumerate() {
                let fihl = usize::from(f[0] & 0x0f) * 4;
                assert!(f.len() <= mtu, "{len}/{mtu}: fragment {i} is {}", f.len());
                assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), f.len());
                assert_eq!(crate::fastpath::packet::ipv4_checksum(&f[..ffihl(f)]), 0);
                assert_eq!(f[4..6], p[4..6], "same identification");
                assert_eq!(f[12..20], p[12..20]);
                let last = i == frags.len() - 1;
                assert_eq!(f[6] & 0x20 != 0, !last, "MF on all but the last");
                if !last {
                    assert_eq!((f.len() - fihl) % 8, 0, "payloads in 8-byte units");
                }
                if i == 0 {
                    assert_eq!(f[20..fihl], p[20..ihl], "the first keeps every option");
                } else if !opts.is_empty() {
                    assert_eq!(f[20..fihl], [130, 3, 0, 0], "later: copied options only");
                }
            }
            let (payload, more) = reassemble(&frags);
            assert!(!more);
            assert_eq!(payload, p[ihl..], "{len}/{mtu}");
        }
    }

    fn ffihl(f: &[u8]) -> usize {
        usize::from(f[0] & 0x0f) * 4
    }

    #[test]
    fn fragments_of_a_fragment_keep_its_offset_and_more_fragments() {
        // The middle fragment of something bigger: offset 185 (1480 bytes), MF set.
        let p = packet(1500, &[], 0x2000 | 185);
        let frags = fragment_ipv4(&p, 1000).unwrap();
        assert_eq!(frags.len(), 2);
        assert_eq!(u16::from_be_bytes([frags[0][6], frags[0][7]]), 0x2000 | 185);
        let second = u16::from_be_bytes([frags[1][6], frags[1][7]]);
        assert_eq!(second, 0x2000 | (185 + (1000 - 20) / 8) as u16);
    }

    #[test]
    fn no_fragments_with_df_or_broken_options() {
        assert!(fragment_ipv4(&packet(3000, &[], 0x4000), 1440).is_none());
        assert!(fragment_ipv4(&packet(3000, &[7, 9, 4, 0], 0), 1440).is_none());
        assert!(fragment_ipv4(&packet(3000, &[], 0), 20).is_none());
    }

    #[test]
    fn icmp_fragmentation_needed_carries_the_next_hop_mtu() {
        let p = packet(1500, &[], 0x4000);
        let ip = Ipv4View::parse(&p, true).unwrap();
        let mut out = Vec::new();
        let ntma = MacAddr([2, 0, 0, 0, 0, 1]);
        let gn = MacAddr([2, 0, 0, 0, 0, 2]);
        build_icmp_unreachable(
            &mut out,
            ntma,
            gn,
            Ipv4Addr::new(100, 64, 0, 1),
            Unreachable::FragmentationNeeded(1340),
            &ip,
        )
        .unwrap();
        let icmp = &out[14 + 20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4), "type 3 code 4");
        assert_eq!(
            u16::from_be_bytes([icmp[6], icmp[7]]),
            1340,
            "RFC 1191 next-hop MTU"
        );
        assert_eq!(out[14 + 16..14 + 20], [100, 64, 0, 2], "to the GN");
        assert_eq!(icmp[8..8 + 28], p[..28], "quotes the header and 8 bytes");
    }
}
