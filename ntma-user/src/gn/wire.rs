//! The GN slow path's use of [`crate::wire`]: parsers that map a refused frame to its
//! [`GnDrop`] and add the checks the slow path needs (header checksum, UDP checksum),
//! the parsed [`Ipv4Frame`] handed from the GN services to the control side, and
//! builders that append a whole frame to a caller-owned `Vec` (reused between frames)
//! with every checksum filled in. Every parser takes untrusted bytes and returns
//! `Err(GnDrop)` instead of panicking.

use std::net::Ipv4Addr;

pub use crate::wire::icmp::Unreachable;
pub use crate::wire::MacAddr;
use crate::wire::{arp, ethernet, icmp, ipv4, udp};

use super::counters::GnDrop;

/// A checked Ethernet II frame.
pub type Eth<'a> = ethernet::Frame<&'a [u8]>;
/// A checked IPv4 packet, its buffer cut to the total length (Ethernet padding removed).
pub type Ip<'a> = ipv4::Packet<&'a [u8]>;
/// A checked UDP datagram, its buffer cut to the UDP length.
pub type Udp<'a> = udp::Packet<&'a [u8]>;
/// An Ethernet/IPv4 ARP packet.
pub type ArpRepr = arp::Repr;

/// Views `frame` as Ethernet II.
pub fn parse_eth(frame: &[u8]) -> Result<Eth<'_>, GnDrop> {
    ethernet::Frame::new_checked(frame).map_err(|_| GnDrop::FrameShort)
}

/// Parses the ARP payload of an Ethernet frame.
pub fn parse_arp(payload: &[u8]) -> Result<ArpRepr, GnDrop> {
    arp::Repr::parse(payload).map_err(|_| GnDrop::ArpMalformed)
}

/// Checks the IPv4 payload of an Ethernet frame: version, IHL, total length within
/// the frame, and (when asked) the header checksum.
pub fn parse_ipv4(bytes: &[u8], verify_checksum: bool) -> Result<Ip<'_>, GnDrop> {
    let ip = ipv4::Packet::new_checked(bytes).map_err(|_| GnDrop::Ipv4Malformed)?;
    if verify_checksum && !ip.verify_checksum() {
        return Err(GnDrop::Ipv4BadChecksum);
    }
    Ok(ipv4::Packet::new_unchecked(ip.packet()))
}

/// Checks the UDP datagram carried by `ip`: its length within the packet and, when
/// asked, its checksum (a zero checksum means "none", RFC 768, and is accepted).
pub fn parse_udp<'a>(ip: &Ip<'a>, verify_checksum: bool) -> Result<Udp<'a>, GnDrop> {
    let udp = udp::Packet::new_checked(ip.payload()).map_err(|_| GnDrop::UdpMalformed)?;
    if verify_checksum && !udp.verify_checksum(ip.src_addr(), ip.dst_addr()) {
        return Err(GnDrop::UdpBadChecksum);
    }
    Ok(udp::Packet::new_unchecked(
        &ip.payload()[..usize::from(udp.length())],
    ))
}

/// An IPv4 frame from the GN, parsed once (header checksum verified): the GN services
/// hand it to the control side, which routes it and asks for ICMP errors about it
/// without parsing it again.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Frame<'a> {
    /// The whole frame, Ethernet padding included.
    pub eth: Eth<'a>,
    /// The IPv4 packet.
    pub ip: Ip<'a>,
}

impl<'a> Ipv4Frame<'a> {
    /// Parses an Ethernet frame carrying IPv4, with `drop` for any refusal.
    pub fn parse(frame: &'a [u8], drop: GnDrop) -> Result<Ipv4Frame<'a>, GnDrop> {
        let eth = parse_eth(frame).map_err(|_| drop)?;
        if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
            return Err(drop);
        }
        let ip = parse_ipv4(eth.payload(), true).map_err(|_| drop)?;
        Ok(Ipv4Frame { eth, ip })
    }

    /// The whole frame.
    pub fn frame(&self) -> &'a [u8] {
        self.eth.into_inner()
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        self.ip.src_addr()
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        self.ip.dst_addr()
    }

    /// The IPv4 packet, header first, cut to its total length.
    pub fn packet(&self) -> &'a [u8] {
        self.ip.into_inner()
    }
}

fn push_eth(out: &mut Vec<u8>, dst: MacAddr, src: MacAddr, ethertype: u16) {
    out.extend_from_slice(&ethernet::header(dst, src, ethertype));
}

fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
) -> Result<ipv4::Repr, GnDrop> {
    ipv4::Repr::new(src, dst, protocol, payload_len).ok_or(GnDrop::TxBufferTooSmall)
}

fn push_arp(out: &mut Vec<u8>, eth_dst: MacAddr, arp: &ArpRepr) {
    let start = out.len();
    push_eth(out, eth_dst, arp.sender_mac, ethernet::ETHERTYPE_ARP);
    arp.push(out);
    ethernet::pad(out, start);
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
    let arp = ArpRepr {
        op: ArpRepr::REPLY,
        sender_mac: our_mac,
        sender_ip: answered_ip,
        target_mac: requester_mac,
        target_ip: requester_ip,
    };
    push_arp(out, requester_mac, &arp);
}

/// Appends an ARP request frame (used by tests to play the GN).
pub fn build_arp_request(
    out: &mut Vec<u8>,
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) {
    let arp = ArpRepr {
        op: ArpRepr::REQUEST,
        sender_mac,
        sender_ip,
        target_mac: MacAddr([0; 6]),
        target_ip,
    };
    push_arp(out, MacAddr::BROADCAST, &arp);
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
        ipv4::PROTO_UDP,
        udp::HEADER_LEN + payload.len(),
    )?;
    let start = out.len();
    push_eth(out, ends.dst_mac, ends.src_mac, ethernet::ETHERTYPE_IPV4);
    ip.push(out);
    let ports = udp::Repr {
        src_port: ends.src_port,
        dst_port: ends.dst_port,
    };
    ports.push(out, ends.src_ip, ends.dst_ip, payload);
    ethernet::pad(out, start);
    Ok(())
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
    original: &Ip<'_>,
) -> Result<(), GnDrop> {
    // Quote = the original header as received + 8 bytes of its payload.
    let quote_len = original.header_len() + original.payload().len().min(8);
    let quote = &original.packet()[..quote_len];
    let ip = ipv4_header(
        src_ip,
        original.src_addr(),
        ipv4::PROTO_ICMP,
        icmp::HEADER_LEN + quote.len(),
    )?;
    let start = out.len();
    push_eth(out, dst_mac, src_mac, ethernet::ETHERTYPE_IPV4);
    ip.push(out);
    code.push(out, quote);
    ethernet::pad(out, start);
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
    use ipv4::{DF, MF, MIN_HEADER_LEN, OFFSET_MASK};
    let view = ipv4::Packet::new_unchecked(packet);
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet.len() < MIN_HEADER_LEN || ihl < MIN_HEADER_LEN || ihl > packet.len() {
        return None;
    }
    let flags_offset = view.flags_offset();
    if flags_offset & DF != 0 {
        return None;
    }
    let base_offset = usize::from(flags_offset & OFFSET_MASK) * 8;
    let was_more = flags_offset & MF != 0;
    // The header of later fragments: options with the copy bit only, padded to 4.
    let mut later = packet[..MIN_HEADER_LEN].to_vec();
    let mut at = MIN_HEADER_LEN;
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
        f.extend_from_slice(&payload[pos..end]);
        let total = u16::try_from(f.len()).ok()?;
        let offset = u16::try_from((base_offset + pos) / 8)
            .ok()
            .filter(|o| *o <= OFFSET_MASK)?;
        let more = if !last || was_more { MF } else { 0 };
        let mut p = ipv4::Packet::new_unchecked(&mut f[..]);
        p.set_version_header_len(header.len());
        p.set_total_len(total);
        p.set_flags_offset(offset | more);
        p.fill_checksum();
        out.push(f);
        pos = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;
    use crate::wire::ethernet::{ETHERTYPE_ARP, MIN_FRAME_LEN as ETH_MIN_FRAME_LEN};
    use crate::wire::ipv4::{PROTO_ICMP as IPPROTO_ICMP, PROTO_UDP as IPPROTO_UDP};

    const ARP_REQ: &[u8] = include_bytes!("testdata/arp_request_router.bin");
    const DIG_A: &[u8] = include_bytes!("testdata/dig_noedns_a.bin");

    #[test]
    fn parse_captured_arp_request() {
        let eth = parse_eth(ARP_REQ).unwrap();
        assert_eq!(eth.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(eth.src_addr().to_string(), "02:00:00:00:00:0a");
        assert_eq!(eth.ethertype(), ETHERTYPE_ARP);
        let arp = parse_arp(eth.payload()).unwrap();
        assert_eq!(arp.op, ArpRepr::REQUEST);
        assert_eq!(arp.sender_ip, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(arp.target_ip, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(arp.sender_mac, eth.src_addr());
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
        let eth = parse_eth(DIG_A).unwrap();
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        assert_eq!(ip.src_addr(), Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(ip.protocol(), IPPROTO_UDP);
        assert!(!ip.is_fragment());
        let udp = parse_udp(&ip, true).unwrap();
        assert_eq!(udp.dst_port(), 53);
        assert_eq!(udp.payload().len(), 29);

        // One flipped bit in the IPv4 header or UDP payload is caught.
        let mut bad = DIG_A.to_vec();
        bad[14 + 8] ^= 1; // TTL
        let eth = parse_eth(&bad).unwrap();
        assert_eq!(
            parse_ipv4(eth.payload(), true).unwrap_err(),
            GnDrop::Ipv4BadChecksum
        );
        let mut bad = DIG_A.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let eth = parse_eth(&bad).unwrap();
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        assert_eq!(parse_udp(&ip, true).unwrap_err(), GnDrop::UdpBadChecksum);
        assert!(parse_udp(&ip, false).is_ok());
    }

    #[test]
    fn truncated_and_bad_lengths() {
        assert_eq!(parse_eth(&DIG_A[..13]).unwrap_err(), GnDrop::FrameShort);
        let eth = parse_eth(&DIG_A[..14 + 19]).unwrap();
        assert_eq!(
            parse_ipv4(eth.payload(), true).unwrap_err(),
            GnDrop::Ipv4Malformed
        );
        // Total length beyond the frame.
        let eth = parse_eth(&DIG_A[..DIG_A.len() - 1]).unwrap();
        assert_eq!(
            parse_ipv4(eth.payload(), false).unwrap_err(),
            GnDrop::Ipv4Malformed
        );
        // UDP length larger than the IPv4 payload.
        let mut bad = DIG_A.to_vec();
        bad[14 + 20 + 4] = 0x01;
        let eth = parse_eth(&bad).unwrap();
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        assert_eq!(parse_udp(&ip, false).unwrap_err(), GnDrop::UdpMalformed);
        // Version 6 in an IPv4 EtherType.
        let mut bad = DIG_A.to_vec();
        bad[14] = 0x65;
        let eth = parse_eth(&bad).unwrap();
        assert_eq!(
            parse_ipv4(eth.payload(), false).unwrap_err(),
            GnDrop::Ipv4Malformed
        );
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut padded = DIG_A.to_vec();
        padded.extend_from_slice(&[0xee; 20]);
        let eth = parse_eth(&padded).unwrap();
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        let udp = parse_udp(&ip, true).unwrap();
        assert_eq!(udp.payload().len(), 29);
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
        let eth = parse_eth(&out).unwrap();
        assert_eq!(eth.dst_addr(), ends.dst_mac);
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        assert!(checksum::verify(ip.header()));
        let udp = parse_udp(&ip, true).unwrap();
        assert_eq!(udp.payload(), b"hello");
        assert_eq!((udp.src_port(), udp.dst_port()), (53, 40000));
        // The checksum is really present (not the "none" zero).
        assert_ne!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    }

    #[test]
    fn icmp_unreachable_quotes_header_and_8_bytes() {
        let eth = parse_eth(DIG_A).unwrap();
        let orig = parse_ipv4(eth.payload(), true).unwrap();
        let mut out = Vec::new();
        let router = Ipv4Addr::new(100, 64, 0, 1);
        build_icmp_unreachable(
            &mut out,
            MacAddr([2, 0, 0, 0, 0, 0x0b]),
            eth.src_addr(),
            router,
            Unreachable::Host,
            &orig,
        )
        .unwrap();
        let e = parse_eth(&out).unwrap();
        assert_eq!(e.dst_addr(), eth.src_addr());
        let ip = parse_ipv4(e.payload(), true).unwrap();
        assert_eq!(ip.protocol(), IPPROTO_ICMP);
        assert_eq!(ip.src_addr(), router);
        assert_eq!(ip.dst_addr(), orig.src_addr());
        let icmp = ip.payload();
        assert_eq!(icmp.len(), 8 + 20 + 8);
        assert_eq!((icmp[0], icmp[1]), (3, 1));
        assert!(checksum::verify(icmp));
        assert_eq!(&icmp[8..28], orig.header());
        assert_eq!(&icmp[28..36], &orig.payload()[..8]);
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
        let c = checksum::internet(&p[..ihl]);
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
                assert_eq!(checksum::internet(&f[..ffihl(f)]), 0);
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
        let ip = parse_ipv4(&p, true).unwrap();
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
