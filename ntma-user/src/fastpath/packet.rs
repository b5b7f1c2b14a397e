//! The two per-packet functions of the fast path, on plain byte slices (so they are
//! tested and benchmarked without AF_XDP): [`uplink`] encapsulates a GN frame in place
//! and seals it with the tunnel's send direction key (suite 2 encrypts the inner packet
//! where it lies), [`downlink`] opens a tunnel frame in place with the receive direction
//! key (suite 2 decrypts it where it lies), checks it and strips it. Neither allocates,
//! copies the packet, locks or makes a system call. Both decide before writing whether
//! a frame is theirs, so a frame sent to the slow path leaves unchanged; a dropped
//! frame may have been changed (decrypted) and is only recycled.
//!
//! Frame layouts (offsets in bytes):
//!
//! ```text
//! uplink in:   [44 free][Ethernet 14][inner IPv4 ...][padding][16 free]
//! uplink out:  [Ethernet 14][IPv4 20][UDP 8][NTM header 16][inner IPv4 ...][tag 16]
//! downlink in: [Ethernet 14][IPv4 20+][UDP 8][NTM header 16][inner IPv4 ...][tag 16][padding]
//! downlink out:                  [Ethernet 14][inner IPv4 ...]  (at `offset`)
//! ```

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use ntm_proto::{
    data::{check_inner_shape, encap_in_place},
    wire::{HEADER_LEN, OVERHEAD, TAG_LEN, VERSION},
    Error, MessageType, Packet,
};

use super::table::{pack_addr, Snapshot};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Outer headers in front of the inner packet: Ethernet, IPv4, UDP, NTM header (58).
pub const OUTER_LEN: usize = ETH_LEN + IPV4_LEN + UDP_LEN + HEADER_LEN;
/// How far uplink grows a frame at the front (the GN frame's Ethernet header is reused).
pub const ENCAP_GROW: usize = OUTER_LEN - ETH_LEN;
/// How far uplink grows a frame at the back (the tag).
pub const ENCAP_TAIL: usize = TAG_LEN;
/// Inner MTU on a 1500-byte uplink (§5 "MTU": the uplink's MTU − 60): the default
/// when nothing else is configured. The fast path uses [`Snapshot`]'s `inner_mtu`.
pub const INNER_MTU: usize = 1440;
/// What the tunnel adds to an inner packet: outer IPv4 20, UDP 8, NTM header 16, tag 16.
pub const TUNNEL_OVERHEAD: u16 = (IPV4_LEN + UDP_LEN + OVERHEAD) as u16;
/// IPv4 and TCP headers without options: the inner MTU minus this is the clamped MSS.
pub const IPV4_TCP_LEN: u16 = (IPV4_LEN + TCP_LEN) as u16;
const TCP_LEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCPOPT_END: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// Don't Fragment, in the IPv4 flags/fragment-offset word.
pub const IPV4_DF: u16 = 0x4000;
/// TTL of outer packets.
const OUTER_TTL: u8 = 64;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const IPPROTO_UDP: u8 = 17;

ntm_proto::reasons! {
    /// Why the fast path dropped a frame; counted per worker.
    pub enum FastDrop {
        /// From the GN: not a well-formed IPv4 packet (short, bad IHL, total length
        /// outside the frame).
        LanMalformed => "lan_malformed",
        /// From the GN: inner source is not the GN's VIP (spoofing, or a stale address).
        LanBadSource => "lan_bad_source",
        /// From the GN: a frame longer than any the datapath can take (the raw path's
        /// buffer: a GSO super-frame on veth). Packets merely longer than the inner MTU
        /// are not dropped: see [`UpVerdict::TooBig`].
        LanTooBig => "lan_too_big",
        /// The frame lacks headroom or tailroom for the outer headers (UMEM headroom too
        /// small: a configuration error, refused at start).
        NoRoom => "no_room",
        /// From the WAN: Ethernet/IPv4/UDP headers inconsistent (lengths, IHL) or IPv4
        /// header checksum wrong.
        WanMalformed => "wan_malformed",
        /// NTM datagram shorter than header plus tag.
        Truncated => "truncated",
        /// NTM version not 2.
        BadVersion => "bad_version",
        /// No tunnel with this id (not even one being set up).
        UnknownTunnel => "unknown_tunnel",
        /// Suite other than the tunnel's.
        UnsupportedSuite => "unsupported_suite",
        /// Tag does not verify with the tunnel's receive direction key (forged, changed,
        /// or one of our own datagrams sent back to us); with suite 2 the body does not
        /// decrypt.
        BadTag => "bad_tag",
        /// Sequence number seen before or older than the window.
        Replay => "replay",
        /// DATA body not one whole IPv4 packet: version 4, IHL at least 5, total length
        /// equal to the body length.
        BadInner => "bad_inner",
        /// Inner source not the peer's VIP, or inner destination not the GN's VIP.
        InnerAddr => "inner_addr",
        /// Authentic DATA while the GN link is not set up (no VIP / MAC yet).
        NotReady => "not_ready",
        /// The slow queue was full: a frame for the control thread was dropped.
        SlowQueueFull => "slow_queue_full",
    }
}

fn drop_of(e: Error) -> FastDrop {
    match e {
        Error::Truncated => FastDrop::Truncated,
        Error::BadVersion => FastDrop::BadVersion,
        Error::UnknownTunnel => FastDrop::UnknownTunnel,
        Error::UnsupportedSuite => FastDrop::UnsupportedSuite,
        Error::BadTag => FastDrop::BadTag,
        Error::Replay => FastDrop::Replay,
        Error::BadInner => FastDrop::BadInner,
        Error::InnerAddr => FastDrop::InnerAddr,
        // encap_in_place's only failure: the frame is too small for what we checked.
        _ => FastDrop::NoRoom,
    }
}

/// What [`uplink`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpVerdict {
    /// Encapsulated: send the first `len` bytes of the buffer on the WAN.
    Tx(usize),
    /// As [`UpVerdict::Tx`], after clamping the MSS option of a TCP SYN (counted).
    TxClamped(usize),
    /// Longer than the inner MTU (§5 "MTU"): hand the unchanged frame to the control
    /// thread, which answers ICMP fragmentation needed (DF set) or sends it as
    /// fragments (DF clear). Counted.
    TooBig,
    /// Not for the fast path (no tunnel to that VIP, link not ready, not IPv4, to the
    /// router): hand the unchanged frame to the control thread.
    Slow,
    /// Drop, counted by reason.
    Drop(FastDrop),
}

/// What [`downlink`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownVerdict {
    /// Verified and stripped: send `buf[offset..offset + len]` to the GN.
    Tx { offset: usize, len: usize },
    /// As [`DownVerdict::Tx`], after clamping the MSS option of a TCP SYN-ACK or SYN
    /// (counted).
    TxClamped { offset: usize, len: usize },
    /// An authentic TUN_KEEPALIVE: recorded; recycle the frame.
    Consumed,
    /// Not tunnel traffic the fast path decides on (other port, fragment, signaling):
    /// hand the unchanged frame to the control thread.
    Slow,
    /// Drop, counted by reason.
    Drop(FastDrop),
}

/// RFC 1071 checksum of an IPv4 header.
#[inline]
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Encapsulates the GN frame in `buf` in place.
///
/// `buf` is the frame's buffer grown by [`ENCAP_GROW`] bytes at the front and
/// [`ENCAP_TAIL`] at the back: `buf[ENCAP_GROW..ENCAP_GROW + frame_len]` is the frame as
/// received. On [`UpVerdict::Tx`] the outer Ethernet/IPv4/UDP/NTM headers are written in
/// front of the inner packet and the tag after it; nothing is written otherwise.
pub fn uplink(snap: &Snapshot, buf: &mut [u8], frame_len: usize) -> UpVerdict {
    if buf.len() < ENCAP_GROW + frame_len + ENCAP_TAIL {
        return UpVerdict::Drop(FastDrop::NoRoom);
    }
    let frame = &buf[ENCAP_GROW..ENCAP_GROW + frame_len];
    if frame_len < ETH_LEN + IPV4_LEN {
        return if frame_len >= ETH_LEN && frame[12..14] != ETHERTYPE_IPV4 {
            UpVerdict::Slow
        } else {
            UpVerdict::Drop(FastDrop::LanMalformed)
        };
    }
    if frame[12..14] != ETHERTYPE_IPV4 {
        return UpVerdict::Slow;
    }
    let ip = &frame[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ip[0] >> 4 != 4 || ihl < IPV4_LEN || total < ihl || total > ip.len() {
        return UpVerdict::Drop(FastDrop::LanMalformed);
    }
    let Some(link) = snap.link.as_ref() else {
        return UpVerdict::Slow;
    };
    let dst = be32(ip, 16);
    let Some(t) = snap.by_vip.get(&dst) else {
        return UpVerdict::Slow;
    };
    if be32(ip, 12) != u32::from(link.info.gn_vip) {
        return UpVerdict::Drop(FastDrop::LanBadSource);
    }
    if total > usize::from(snap.inner_mtu) {
        return UpVerdict::TooBig;
    }

    // Decided: write. The NTM header goes over the end of the GN's Ethernet header.
    let inner_len = total;
    let inner_at = ENCAP_GROW + ETH_LEN;
    let clamped = clamp_mss(
        &mut buf[inner_at..inner_at + inner_len],
        snap.inner_mtu.saturating_sub(IPV4_TCP_LEN),
    );
    let seq = t.tx_seq.next();
    let hdr_at = ETH_LEN + IPV4_LEN + UDP_LEN;
    let datagram_len = match encap_in_place(buf, hdr_at, inner_len, t.id, seq, &t.tx) {
        Ok(n) => n,
        Err(e) => return UpVerdict::Drop(drop_of(e)),
    };
    let endpoint = t.endpoint();
    let udp_len = (UDP_LEN + datagram_len) as u16;
    let ip_total = IPV4_LEN as u16 + udp_len;

    buf[..ETH_LEN].copy_from_slice(&link.wan_eth);
    let ip = &mut buf[ETH_LEN..ETH_LEN + IPV4_LEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    // Identification from the tunnel's seq: distinct across 65536 packets, no state.
    // DF set (§5 "MTU"): outer packets are never fragmented; the inner MTU leaves room.
    ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
    ip[8] = OUTER_TTL;
    ip[9] = IPPROTO_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&link.info.wan_ip.octets());
    ip[16..20].copy_from_slice(&endpoint.ip().octets());
    let c = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut buf[ETH_LEN + IPV4_LEN..hdr_at];
    udp[0..2].copy_from_slice(&link.info.wan_port.to_be_bytes());
    udp[2..4].copy_from_slice(&endpoint.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    // UDP checksum 0: allowed over IPv4; the tag protects the payload.
    udp[6..8].copy_from_slice(&[0, 0]);

    t.tx_count.0.packets.fetch_add(1, Ordering::Relaxed);
    t.tx_count
        .0
        .bytes
        .fetch_add(inner_len as u64, Ordering::Relaxed);
    if clamped {
        UpVerdict::TxClamped(hdr_at + datagram_len)
    } else {
        UpVerdict::Tx(hdr_at + datagram_len)
    }
}

/// Opens, checks and strips the tunnel frame `buf` in place, in the order of §5:
/// length, version, (type: DATA or TUN_KEEPALIVE, else slow path), known tunnel id
/// (one being set up counts), suite (the tunnel's), tag with the receive direction key
/// (suite 2: decryption in place), replay window, one whole inner IPv4 packet, inner
/// source = peer VIP and inner destination = GN VIP. Only a datagram that passed every
/// check is activity and names a source the control may roam to. On
/// [`DownVerdict::Tx`] the Ethernet header towards the GN has been written in front of
/// the inner packet. `now_nanos` is the data plane's clock (see
/// [`super::Dataplane::now_nanos`]), read once per burst.
pub fn downlink(snap: &Snapshot, buf: &mut [u8], now_nanos: u64) -> DownVerdict {
    let len = buf.len();
    if len < ETH_LEN {
        return DownVerdict::Drop(FastDrop::WanMalformed);
    }
    if buf[12..14] != ETHERTYPE_IPV4 {
        return DownVerdict::Slow;
    }
    if len < ETH_LEN + IPV4_LEN {
        return DownVerdict::Drop(FastDrop::WanMalformed);
    }
    let ip = &buf[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ip[0] >> 4 != 4 || ihl < IPV4_LEN || total > ip.len() || total < ihl {
        return DownVerdict::Drop(FastDrop::WanMalformed);
    }
    // Nothing has checked the header before XDP; its source address becomes
    // `last_rx_from`, which the control may roam to.
    if ipv4_checksum(&ip[..ihl]) != 0 {
        return DownVerdict::Drop(FastDrop::WanMalformed);
    }
    if ip[9] != IPPROTO_UDP || be16(ip, 6) & 0x3fff != 0 {
        // Other protocols and fragments: the kernel's business (XDP passes them).
        return DownVerdict::Slow;
    }
    if total < ihl + UDP_LEN {
        return DownVerdict::Drop(FastDrop::WanMalformed);
    }
    let udp = &ip[ihl..total];
    if be16(udp, 2) != snap.ntm_port {
        return DownVerdict::Slow;
    }
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_LEN || udp_len > udp.len() {
        return DownVerdict::Drop(FastDrop::WanMalformed);
    }
    let from = pack_addr(Ipv4Addr::from(be32(ip, 12)), be16(udp, 0));
    let dg_at = ETH_LEN + ihl + UDP_LEN;
    let dg_end = dg_at + udp_len - UDP_LEN;

    if dg_end - dg_at < OVERHEAD {
        return DownVerdict::Drop(FastDrop::Truncated);
    }
    let packet = Packet::new_unchecked(&buf[dg_at..dg_end]);
    if packet.version() != VERSION {
        return DownVerdict::Drop(FastDrop::BadVersion);
    }
    let msg_type = packet.msg_type();
    if !matches!(msg_type, MessageType::Data | MessageType::TunKeepalive) {
        return DownVerdict::Slow;
    }
    let seq = packet.seq();
    let Some(t) = snap.by_id.get(&packet.id()) else {
        return DownVerdict::Drop(FastDrop::UnknownTunnel);
    };
    // Suite, then tag with the receive direction key; suite 2 decrypts the inner
    // packet where it lies. Our own datagrams, sent back to us, never open: they were
    // sealed with the other direction's key.
    let datagram = &mut buf[dg_at..dg_end];
    if let Err(e) = t.rx.open(datagram) {
        return DownVerdict::Drop(drop_of(e));
    }
    // Only authentic datagrams move the window.
    if !t.replay.validate(seq) {
        return DownVerdict::Drop(FastDrop::Replay);
    }
    if msg_type == MessageType::TunKeepalive {
        t.note_rx(now_nanos, from);
        t.rx_count.0.keepalives.fetch_add(1, Ordering::Relaxed);
        return DownVerdict::Consumed;
    }
    let inner = &datagram[HEADER_LEN..datagram.len() - TAG_LEN];
    if let Err(e) = check_inner_shape(inner) {
        return DownVerdict::Drop(drop_of(e));
    }
    let Some(link) = snap.link.as_ref() else {
        return DownVerdict::Drop(FastDrop::NotReady);
    };
    if be32(inner, 12) != u32::from(t.peer_vip) || be32(inner, 16) != u32::from(link.info.gn_vip) {
        return DownVerdict::Drop(FastDrop::InnerAddr);
    }
    // Passed every check: now, and only now, it is activity from `from` (roaming).
    t.note_rx(now_nanos, from);
    let inner_len = inner.len();
    t.rx_count.0.packets.fetch_add(1, Ordering::Relaxed);
    t.rx_count
        .0
        .bytes
        .fetch_add(inner_len as u64, Ordering::Relaxed);
    let offset = dg_at + HEADER_LEN - ETH_LEN;
    let clamped = clamp_mss(
        &mut buf[offset + ETH_LEN..offset + ETH_LEN + inner_len],
        snap.inner_mtu.saturating_sub(IPV4_TCP_LEN),
    );
    buf[offset..offset + ETH_LEN].copy_from_slice(&link.lan_eth);
    let len = ETH_LEN + inner_len;
    if clamped {
        DownVerdict::TxClamped { offset, len }
    } else {
        DownVerdict::Tx { offset, len }
    }
}

/// Clamps the MSS option of a TCP segment with SYN set (a SYN or a SYN-ACK) in the
/// IPv4 packet `ip` to `max` (§6: the inner MTU minus 40), and updates the TCP
/// checksum incrementally (RFC 1624, eqn. 3). True when it changed the packet.
/// Everything else is left alone: not TCP, a fragment, no SYN, no MSS option, an MSS
/// of at most `max`, or options that do not parse.
pub fn clamp_mss(ip: &mut [u8], max: u16) -> bool {
    if ip.len() < IPV4_LEN || ip[0] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2)).min(ip.len());
    if ip[9] != IPPROTO_TCP || be16(ip, 6) & 0x3fff != 0 || ihl < IPV4_LEN || total < ihl + TCP_LEN
    {
        return false;
    }
    let tcp = &mut ip[ihl..total];
    if tcp[13] & TCP_SYN == 0 {
        return false;
    }
    let options_end = usize::from(tcp[12] >> 4) * 4;
    if options_end < TCP_LEN || options_end > tcp.len() {
        return false;
    }
    let mut at = TCP_LEN;
    while at < options_end {
        match tcp[at] {
            TCPOPT_END => return false,
            TCPOPT_NOP => at += 1,
            kind => {
                let Some(&len) = tcp.get(at + 1).filter(|_| at + 1 < options_end) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || at + len > options_end {
                    return false;
                }
                if kind == TCPOPT_MSS && len == 4 {
                    let mss = be16(tcp, at + 2);
                    if mss <= max {
                        return false;
                    }
                    tcp[at + 2..at + 4].copy_from_slice(&max.to_be_bytes());
                    // A value at an odd offset adds to the sum with its bytes swapped.
                    let (old, new) = if at.is_multiple_of(2) {
                        (mss, max)
                    } else {
                        (mss.swap_bytes(), max.swap_bytes())
                    };
                    let sum = checksum_update(be16(tcp, 16), old, new);
                    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
                    return true;
                }
                at += len;
            }
        }
    }
    false
}

/// RFC 1624 eqn. 3: the checksum `hc` after one 16-bit word changed from `old` to
/// `new`: HC' = ~(~HC + ~m + m').
pub fn checksum_update(hc: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
