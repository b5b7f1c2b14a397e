//! The two per-packet functions of the fast path, on plain byte slices (so they are
//! tested and benchmarked without AF_XDP): [`uplink`] encapsulates a GN frame in place
//! and seals it with the tunnel's send direction key (suite 2 encrypts the inner packet
//! where it lies), [`downlink`] opens a tunnel frame in place with the receive direction
//! key (suite 2 decrypts it where it lies), checks it and strips it. Neither allocates,
//! copies the packet, locks or makes a system call. Both decide before writing whether
//! a frame is theirs, so a frame sent to the slow path leaves unchanged; a dropped
//! frame may have been changed (decrypted) and is only recycled. Headers are read and
//! written through [`crate::wire`].
//!
//! Frame layouts (offsets in bytes):
//!
//! ```text
//! uplink in:   [44 free][Ethernet 14][inner IPv4 ...][padding][16 free]
//! uplink out:  [Ethernet 14][IPv4 20][UDP 8][NTM header 16][inner IPv4 ...][tag 16]
//! downlink in: [Ethernet 14][IPv4 20+][UDP 8][NTM header 16][inner IPv4 ...][tag 16][padding]
//! downlink out:                  [Ethernet 14][inner IPv4 ...]  (at `offset`)
//! ```

use std::ops::Range;
use std::sync::atomic::Ordering;

use ntm_proto::{
    data::{decap_verified, encap_in_place, encap_in_place_but_tag, Decapped, Rx},
    wire::{HEADER_LEN, OVERHEAD, TAG_LEN},
    AtomicReplayWindow, Error, ReplayCheck,
};

use super::table::{pack_addr, pair_key, PreparedLink, Snapshot, Tunnel};
use crate::wire::outer::OUTER_LEN;
use crate::wire::tcp::{clamp_mss, IPV4_TCP_LEN};
use crate::wire::{ethernet, ipv4, udp};

/// Ethernet header length.
pub const ETH_LEN: usize = ethernet::HEADER_LEN;
/// How far uplink grows a frame at the front (the GN frame's Ethernet header is reused):
/// the outer IPv4 and UDP headers and the NTM header (44).
pub const ENCAP_GROW: usize = OUTER_LEN + HEADER_LEN - ETH_LEN;
/// How far uplink grows a frame at the back (the tag).
pub const ENCAP_TAIL: usize = TAG_LEN;
/// Inner MTU on a 1500-byte uplink (§5 "MTU": the uplink's MTU − 60): the default
/// when nothing else is configured. The fast path uses [`Snapshot`]'s `inner_mtu`.
pub const INNER_MTU: usize = 1440;
/// What the tunnel adds to an inner packet: outer IPv4 20, UDP 8, NTM header 16, tag 16.
pub const TUNNEL_OVERHEAD: u16 = (OUTER_LEN - ETH_LEN + OVERHEAD) as u16;

ntm_proto::reasons! {
    /// Why the fast path dropped a frame; counted per worker.
    pub enum FastDrop {
        /// From the GN: not a well-formed IPv4 packet (short, bad IHL, total length
        /// outside the frame).
        LanMalformed => "lan_malformed",
        /// From the GN side: inner source is no GN's VIP, to a VIP a tunnel leads to
        /// (spoofing, or a stale address).
        LanBadSource => "lan_bad_source",
        /// From a GN: to another GN's VIP. GNs reach each other on the LAN; the frame
        /// is a copy the raw path's socket saw (the kernel has the original), or one
        /// XDP redirected before it learnt the new GN set.
        LanToGn => "lan_to_gn",
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
        /// Inner source not the peer's VIP, or inner destination not the VIP of the
        /// tunnel's GN.
        InnerAddr => "inner_addr",
        /// Authentic DATA while the link is not set up, or the tunnel's GN is not in
        /// the GN set or its MAC is unknown.
        NotReady => "not_ready",
        /// The slow queue was full: a frame for the control thread was dropped.
        SlowQueueFull => "slow_queue_full",
    }
}

/// The drop reason of a datagram [`decap`] refused.
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
        Error::BufferTooSmall | Error::TooLong => FastDrop::NoRoom,
        // Signaling and TLV reasons, which decap and encap of DATA never give; listed
        // one by one so that a new reason has to be placed here.
        Error::UnknownType
        | Error::TlvOverrun
        | Error::UnknownCriticalTlv
        | Error::DuplicateTlv
        | Error::MissingTlv
        | Error::BadTlvLength
        | Error::BadTlvValue
        | Error::BadFqdn
        | Error::UnexpectedType
        | Error::UnexpectedSource
        | Error::WrongId
        | Error::Stale
        | Error::NoTunnel
        | Error::NotRegistered => FastDrop::WanMalformed,
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
    /// Not for the fast path (no tunnel from that GN to that VIP, a source outside the
    /// GN set, link not ready, not IPv4, to the router): hand the unchanged frame to the
    /// control thread.
    Slow,
    /// Drop, counted by reason.
    Drop(FastDrop),
}

impl UpVerdict {
    /// Whether the frame goes out on the WAN.
    #[inline]
    pub fn sent(&self) -> bool {
        matches!(self, UpVerdict::Tx(_) | UpVerdict::TxClamped(_))
    }
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

/// Encapsulates the GN frame in `buf` in place.
///
/// `buf` is the frame's buffer grown by [`ENCAP_GROW`] bytes at the front and
/// [`ENCAP_TAIL`] at the back: `buf[ENCAP_GROW..ENCAP_GROW + frame_len]` is the frame as
/// received. On [`UpVerdict::Tx`] the outer Ethernet/IPv4/UDP/NTM headers are written in
/// front of the inner packet and the tag after it; nothing is written otherwise.
#[inline]
pub fn uplink(snap: &Snapshot, buf: &mut [u8], frame_len: usize) -> UpVerdict {
    match classify(snap, buf, frame_len) {
        Ok((link, t, inner_len)) => {
            let (v, _) = seal_up::<false>(snap, link, t, buf, inner_len, t.tx_seq.next());
            if v.sent() {
                t.count_tx(1, inner_len as u64);
            }
            v
        }
        Err(v) => v,
    }
}

/// What [`uplink`] decides before it writes: the link, the tunnel and the inner
/// packet's length of a frame the fast path sends, or the verdict on one it does not.
#[inline(always)]
pub(super) fn classify<'s>(
    snap: &'s Snapshot,
    buf: &[u8],
    frame_len: usize,
) -> Result<(&'s PreparedLink, &'s Tunnel, usize), UpVerdict> {
    if buf.len() < ENCAP_GROW + frame_len + ENCAP_TAIL {
        return Err(UpVerdict::Drop(FastDrop::NoRoom));
    }
    classify_up(snap, &buf[ENCAP_GROW..ENCAP_GROW + frame_len])
}

/// Decides whether the GN frame is the fast path's to send: an IPv4 packet from a GN's
/// VIP to the VIP of one of that GN's tunnels, within the inner MTU. Returns the link,
/// the tunnel and the inner packet's length.
#[inline(always)]
fn classify_up<'s>(
    snap: &'s Snapshot,
    frame: &[u8],
) -> Result<(&'s PreparedLink, &'s Tunnel, usize), UpVerdict> {
    let eth =
        ethernet::Frame::new_checked(frame).map_err(|_| UpVerdict::Drop(FastDrop::LanMalformed))?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(UpVerdict::Slow);
    }
    let ip = ipv4::Packet::new_checked(eth.payload())
        .map_err(|_| UpVerdict::Drop(FastDrop::LanMalformed))?;
    let link = snap.link.as_ref().ok_or(UpVerdict::Slow)?;
    let (src, dst) = (u32::from(ip.src_addr()), u32::from(ip.dst_addr()));
    // Only tunnels of GNs in the set are in `by_pair`: a hit means a GN's source.
    let Some(t) = snap.by_pair.get(&pair_key(src, dst)) else {
        return Err(snap.no_tunnel(src, dst));
    };
    let total = ip.total_len();
    if total > snap.inner_mtu {
        return Err(UpVerdict::TooBig);
    }
    Ok((link, t, usize::from(total)))
}

/// Clamps the MSS, seals the inner packet at `buf[ENCAP_GROW + ETH_LEN..]` with
/// sequence number `seq` (taken from the tunnel's counter by the caller) and writes
/// the outer headers over the front of the buffer. Counts nothing. With `TAG_LATER`
/// a suite-1 tag is left to the caller (a burst computes its tags together): the
/// second value says that the datagram at `buf[OUTER_LEN..len]` of a sent frame
/// still waits for it in its last 16 bytes.
#[inline(always)]
pub(super) fn seal_up<const TAG_LATER: bool>(
    snap: &Snapshot,
    link: &PreparedLink,
    t: &Tunnel,
    buf: &mut [u8],
    inner_len: usize,
    seq: u64,
) -> (UpVerdict, bool) {
    let inner_at = ENCAP_GROW + ETH_LEN;
    let clamped = clamp_mss(
        &mut buf[inner_at..inner_at + inner_len],
        snap.inner_mtu.saturating_sub(IPV4_TCP_LEN),
    );
    // The NTM header goes over the end of the GN's Ethernet header.
    let sealed = if TAG_LATER {
        encap_in_place_but_tag(buf, OUTER_LEN, inner_len, t.id, seq, &t.tx)
    } else {
        encap_in_place(buf, OUTER_LEN, inner_len, t.id, seq, &t.tx).map(|n| (n, false))
    };
    let (datagram_len, tag_later) = match sealed {
        Ok(n) => n,
        Err(e) => return (UpVerdict::Drop(drop_of(e)), false),
    };
    // Identification from the tunnel's seq: distinct across 65536 packets, no state.
    // (The UDP checksum is 0: the headers do not depend on the tag.)
    if !link.outer.emit(buf, t.endpoint(), seq as u16, datagram_len) {
        return (UpVerdict::Drop(FastDrop::NoRoom), false);
    }
    let len = OUTER_LEN + datagram_len;
    let v = if clamped {
        UpVerdict::TxClamped(len)
    } else {
        UpVerdict::Tx(len)
    };
    (v, tag_later)
}

/// The l2fwd reference ([`super::Forward::L2`]): writes `macs` (destination and
/// source MAC) over the first 12 bytes of the frame. False when the frame is shorter
/// than an Ethernet header (the worker drops it as malformed).
#[inline]
pub fn l2_rewrite(buf: &mut [u8], macs: &[u8; 12]) -> bool {
    if buf.len() < ETH_LEN {
        return false;
    }
    match buf.first_chunk_mut::<12>() {
        Some(h) => {
            *h = *macs;
            true
        }
        None => false,
    }
}

/// Opens, checks and strips the tunnel frame `buf` in place: the outer headers, then
/// [`decap`] in the order of §5: length, version, (type: DATA or TUN_KEEPALIVE, else
/// slow path), known tunnel id (one being set up counts), suite (the tunnel's), tag with
/// the receive direction key (suite 2: decryption in place), replay window, one whole
/// inner IPv4 packet, inner source = peer VIP and inner destination = the VIP of the
/// tunnel's GN (its `local_vip`); then that GN must be known with its MAC. Only a
/// datagram that passed every check is activity and names a source the control may
/// roam to. On [`DownVerdict::Tx`] the Ethernet header towards the GN has been written
/// in front of the inner packet. `now_nanos` is the data plane's clock (see
/// [`super::DatapathState::now_nanos`]), read once per burst.
#[inline]
pub fn downlink(snap: &Snapshot, buf: &mut [u8], now_nanos: u64) -> DownVerdict {
    let (dg, from) = match parse_down(snap, buf) {
        Ok(v) => v,
        Err(v) => return v,
    };
    let found = Found {
        dg,
        from,
        tunnel: |id| snap.by_id.get(&id).map(|t| &**t),
        opened: None,
    };
    open_down(snap, buf, found, |w| w, &mut |t, from, _seq, inner_len| {
        t.note_rx(now_nanos, from);
        if let Some(len) = inner_len {
            t.count_rx(1, len as u64);
        }
    })
}

/// What is known of a WAN frame before [`open_down`]: where its datagram lies and its
/// source ([`parse_down`]), how to find its tunnel from the id, and what its tunnel's
/// [`ntm_proto::Cipher::open`] gives, if that is known already (a burst's batch of
/// suite-1 tags).
pub(super) struct Found<L> {
    pub dg: Range<usize>,
    pub from: u64,
    pub tunnel: L,
    pub opened: Option<ntm_proto::Result<()>>,
}

/// [`downlink`] after [`parse_down`], checking the replay window through what
/// `replay` makes of the tunnel's, and leaving what it records of an authentic
/// datagram to `carried`: its tunnel, its source, its seq, and the inner length of
/// DATA (`None` for a TUN_KEEPALIVE, which is counted here). [`downlink`] records
/// each at once, a burst once per run of one tunnel's datagrams
/// ([`super::burst::downlink_burst`]).
#[inline(always)]
pub(super) fn open_down<'s, W: ReplayCheck>(
    snap: &'s Snapshot,
    buf: &mut [u8],
    found: Found<impl FnOnce(u32) -> Option<&'s Tunnel>>,
    replay: impl FnOnce(&'s AtomicReplayWindow) -> W,
    carried: &mut impl FnMut(&'s Tunnel, u64, u64, Option<usize>),
) -> DownVerdict {
    let Found {
        dg,
        from,
        tunnel: lookup,
        opened,
    } = found;
    let mut tunnel = None;
    let opened = decap_verified(
        &mut buf[dg.clone()],
        |id| {
            let t = lookup(id)?;
            tunnel = Some(t);
            Some(Rx {
                cipher: &t.rx,
                replay: replay(&t.replay),
                peer_vip: t.peer_vip,
                local_vip: t.local_vip,
            })
        },
        opened,
    );
    let (inner_len, seq, t) = match (opened, tunnel) {
        (Ok(Decapped::Data { inner, seq, .. }), Some(t)) => (inner.len(), seq, t),
        (Ok(Decapped::Keepalive { seq, .. }), Some(t)) => {
            carried(t, from, seq, None);
            t.rx_count.0.keepalives.fetch_add(1, Ordering::Relaxed);
            return DownVerdict::Consumed;
        }
        (Err(Error::UnexpectedType), _) => return DownVerdict::Slow,
        (Err(e), _) => return DownVerdict::Drop(drop_of(e)),
        (Ok(_), None) => return DownVerdict::Drop(FastDrop::UnknownTunnel),
    };
    // The header is there only with the link, the GN in the set and its MAC known.
    let Some(lan_eth) = snap
        .gns
        .get(&u32::from(t.local_vip))
        .and_then(|g| g.lan_eth.as_ref())
    else {
        return DownVerdict::Drop(FastDrop::NotReady);
    };
    // Passed every check: now, and only now, it is activity from `from` (roaming).
    carried(t, from, seq, Some(inner_len));
    deliver(snap, lan_eth, buf, dg.start, inner_len)
}

/// Checks the outer Ethernet/IPv4/UDP headers of a WAN frame: returns where the NTM
/// datagram lies and its source (packed), or the verdict on a frame that is not a
/// well-formed datagram to our port.
#[inline(always)]
pub(super) fn parse_down(snap: &Snapshot, buf: &[u8]) -> Result<(Range<usize>, u64), DownVerdict> {
    const MALFORMED: DownVerdict = DownVerdict::Drop(FastDrop::WanMalformed);
    let eth = ethernet::Frame::new_checked(buf).map_err(|_| MALFORMED)?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(DownVerdict::Slow);
    }
    let ip = ipv4::Packet::new_checked(eth.payload()).map_err(|_| MALFORMED)?;
    // Nothing has checked the header before XDP; its source address becomes
    // `last_rx_from`, which the control may roam to.
    if !ip.verify_checksum() {
        return Err(MALFORMED);
    }
    if ip.protocol() != ipv4::PROTO_UDP || ip.is_fragment() {
        // Other protocols and fragments: the kernel's business (XDP passes them).
        return Err(DownVerdict::Slow);
    }
    let udp = udp::Packet::new_unchecked(ip.payload());
    udp.check_header_len().map_err(|_| MALFORMED)?;
    if udp.dst_port() != snap.ntm_port {
        return Err(DownVerdict::Slow);
    }
    udp.check_len().map_err(|_| MALFORMED)?;
    let from = pack_addr(ip.src_addr(), udp.src_port());
    let dg_at = ETH_LEN + ip.header_len() + udp::HEADER_LEN;
    let dg_end = dg_at + usize::from(udp.length()) - udp::HEADER_LEN;
    Ok((dg_at..dg_end, from))
}

/// Clamps the MSS of the DATA opened at `buf[dg_at..]` and writes the Ethernet header
/// towards its GN (`lan_eth`) in front of its inner packet.
#[inline(always)]
fn deliver(
    snap: &Snapshot,
    lan_eth: &[u8; ETH_LEN],
    buf: &mut [u8],
    dg_at: usize,
    inner_len: usize,
) -> DownVerdict {
    let offset = dg_at + HEADER_LEN - ETH_LEN;
    let clamped = clamp_mss(
        &mut buf[offset + ETH_LEN..offset + ETH_LEN + inner_len],
        snap.inner_mtu.saturating_sub(IPV4_TCP_LEN),
    );
    buf[offset..offset + ETH_LEN].copy_from_slice(lan_eth);
    let len = ETH_LEN + inner_len;
    if clamped {
        DownVerdict::TxClamped { offset, len }
    } else {
        DownVerdict::Tx { offset, len }
    }
}
