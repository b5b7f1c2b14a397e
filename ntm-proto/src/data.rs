//! The DATA fast path (§5 "Data"): encapsulation and decapsulation in place,
//! without allocation, for the adapter's workers and the software node.
//!
//! Encapsulation writes the 16-byte header in front of an inner packet that
//! already sits in the frame buffer and the tag after it, so the packet is
//! never copied (like wireguard-go reading the TUN packet at an offset).
//! Decapsulation checks in the order of §5: length, version, a known tunnel
//! id, suite, tag, replay window, then the inner addresses.

use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::wire::{MessageType, Packet, Suite, HEADER_LEN, OVERHEAD, TAG_LEN, VERSION};
use crate::{Authenticator, Error, ReplayWindow, Result};

/// Shortest IPv4 header.
const IPV4_MIN_HEADER: usize = 20;

/// Write a DATA header at `buf[hdr_offset..hdr_offset + 16]` in front of the
/// `inner_len`-byte packet at `buf[hdr_offset + 16..]`, and seal the tag
/// after it. Returns the datagram length (`inner_len + 32`); the datagram is
/// `buf[hdr_offset..hdr_offset + len]`.
pub fn encap_in_place(
    buf: &mut [u8],
    hdr_offset: usize,
    inner_len: usize,
    tunnel_id: u32,
    seq: u64,
    auth: &Authenticator,
) -> Result<usize> {
    write_tunnel_datagram(
        buf,
        hdr_offset,
        inner_len,
        MessageType::Data,
        tunnel_id,
        seq,
        auth,
    )
}

/// Write a TUN_KEEPALIVE (empty body) at the front of `buf`. Returns its length (32).
pub fn emit_tun_keepalive(
    buf: &mut [u8],
    tunnel_id: u32,
    seq: u64,
    auth: &Authenticator,
) -> Result<usize> {
    write_tunnel_datagram(buf, 0, 0, MessageType::TunKeepalive, tunnel_id, seq, auth)
}

fn write_tunnel_datagram(
    buf: &mut [u8],
    hdr_offset: usize,
    inner_len: usize,
    msg_type: MessageType,
    tunnel_id: u32,
    seq: u64,
    auth: &Authenticator,
) -> Result<usize> {
    let len = inner_len.checked_add(OVERHEAD).ok_or(Error::TooLong)?;
    let end = hdr_offset.checked_add(len).ok_or(Error::BufferTooSmall)?;
    let out = buf.get_mut(hdr_offset..end).ok_or(Error::BufferTooSmall)?;
    let mut p = Packet::new_checked(&mut *out)?;
    p.set_version(VERSION);
    p.set_msg_type(msg_type);
    p.set_flags(0);
    p.set_suite(Suite::HmacSha256_128);
    p.set_id(tunnel_id);
    p.set_seq(seq);
    auth.seal(out)?;
    Ok(len)
}

/// Receive state of one tunnel: what [`decap`] needs.
#[derive(Debug, Clone)]
pub struct RxTunnel {
    /// `K_tun`, keyed.
    pub auth: Authenticator,
    /// Replay window of the peer's sequence numbers.
    pub replay: ReplayWindow,
    /// The peer's VIP: the only allowed inner source.
    pub peer_vip: Ipv4Addr,
    /// Our VIP: the only allowed inner destination.
    pub local_vip: Ipv4Addr,
}

impl RxTunnel {
    /// Fresh receive state.
    pub fn new(auth: Authenticator, peer_vip: Ipv4Addr, local_vip: Ipv4Addr) -> RxTunnel {
        RxTunnel {
            auth,
            replay: ReplayWindow::new(),
            peer_vip,
            local_vip,
        }
    }
}

/// What [`decap`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decapped<'a> {
    /// An authenticated DATA: the inner IPv4 packet (at offset 16 of the datagram).
    Data {
        /// The tunnel.
        tunnel_id: u32,
        /// The peer's sequence number.
        seq: u64,
        /// The inner packet.
        inner: &'a [u8],
    },
    /// An authenticated TUN_KEEPALIVE.
    Keepalive {
        /// The tunnel.
        tunnel_id: u32,
        /// The peer's sequence number.
        seq: u64,
    },
}

impl Decapped<'_> {
    /// The tunnel the datagram belongs to.
    pub fn tunnel_id(&self) -> u32 {
        match *self {
            Decapped::Data { tunnel_id, .. } | Decapped::Keepalive { tunnel_id, .. } => tunnel_id,
        }
    }
}

/// Check and open a DATA or TUN_KEEPALIVE datagram, in the order of §5:
/// length, version, (message type: anything else is [`Error::UnexpectedType`],
/// for the caller's slow path), a known tunnel id through `lookup`, suite,
/// tag, replay window, inner source = peer VIP and destination = local VIP.
/// The replay window is checked and marked only after the tag verified, so
/// each drop is counted under the reason §5's order gives it.
pub fn decap<'a, 't, F>(datagram: &'a [u8], lookup: F) -> Result<Decapped<'a>>
where
    F: FnOnce(u32) -> Option<&'t mut RxTunnel>,
{
    let packet = Packet::new_checked(datagram)?;
    if packet.version() != VERSION {
        return Err(Error::BadVersion);
    }
    let msg_type = packet.msg_type();
    if !matches!(msg_type, MessageType::Data | MessageType::TunKeepalive) {
        return Err(Error::UnexpectedType);
    }
    let tunnel_id = packet.id();
    let rx = lookup(tunnel_id).ok_or(Error::UnknownTunnel)?;
    if packet.suite() != Suite::HmacSha256_128 {
        return Err(Error::UnsupportedSuite);
    }
    let seq = packet.seq();
    // The tag before the window, as §5 orders it: a forged datagram counts as
    // BadTag whatever its seq, and only authentic ones move the window.
    rx.auth.verify(datagram)?;
    if !rx.replay.validate(seq) {
        return Err(Error::Replay);
    }
    if msg_type == MessageType::TunKeepalive {
        return Ok(Decapped::Keepalive { tunnel_id, seq });
    }
    let inner = &datagram[HEADER_LEN..datagram.len() - TAG_LEN];
    check_inner(inner, rx.peer_vip, rx.local_vip)?;
    Ok(Decapped::Data {
        tunnel_id,
        seq,
        inner,
    })
}

/// Check that `inner` is an IPv4 packet from `src` to `dst`.
pub fn check_inner(inner: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
    if inner.len() < IPV4_MIN_HEADER || inner[0] >> 4 != 4 {
        return Err(Error::BadInner);
    }
    let s = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
    let d = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
    if s != src || d != dst {
        return Err(Error::InnerAddr);
    }
    Ok(())
}

/// The inner destination address of an IPv4 packet, for routing it to a tunnel.
pub fn inner_destination(inner: &[u8]) -> Option<Ipv4Addr> {
    if inner.len() < IPV4_MIN_HEADER || inner[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]))
}

/// A tunnel's send sequence counter, shared between the signaling endpoint
/// (TUN_REQ, TUN_RESP, TUN_KEEPALIVE) and the data plane (DATA), because §2
/// wants one strictly increasing sequence per (sender, key). Cloning shares it.
#[derive(Debug, Clone)]
pub struct SeqCounter(Arc<AtomicU64>);

impl SeqCounter {
    /// A counter whose first number is `first` (tunnel senders start at 1).
    pub fn starting_at(first: u64) -> SeqCounter {
        SeqCounter(Arc::new(AtomicU64::new(first)))
    }

    /// Take the next number.
    pub fn next(&self) -> u64 {
        // Relaxed: only uniqueness and monotonicity per counter matter.
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    /// The number the next call to `next` returns.
    pub fn peek(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Send state of one tunnel for the data plane.
#[derive(Debug, Clone)]
pub struct TxTunnel {
    /// The tunnel id.
    pub tunnel_id: u32,
    /// `K_tun`, keyed.
    pub auth: Authenticator,
    /// The shared send counter.
    pub seq: SeqCounter,
}

impl TxTunnel {
    /// [`encap_in_place`] with this tunnel's id, key and next sequence number.
    pub fn encap_in_place(
        &self,
        buf: &mut [u8],
        hdr_offset: usize,
        inner_len: usize,
    ) -> Result<usize> {
        encap_in_place(
            buf,
            hdr_offset,
            inner_len,
            self.tunnel_id,
            self.seq.next(),
            &self.auth,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;

    const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);

    fn inner(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[1, 2, 3, 4]);
        p
    }

    fn setup() -> (Authenticator, RxTunnel) {
        let auth = Authenticator::new(&Key::from_bytes([0x20; 32]));
        (auth.clone(), RxTunnel::new(auth, PEER, ME))
    }

    fn encap(auth: &Authenticator, pkt: &[u8], seq: u64) -> Vec<u8> {
        let mut buf = vec![0u8; 64 + pkt.len() + 32];
        buf[64 + HEADER_LEN..64 + HEADER_LEN + pkt.len()].copy_from_slice(pkt);
        let n = encap_in_place(&mut buf, 64, pkt.len(), 257, seq, auth).unwrap();
        buf[64..64 + n].to_vec()
    }

    #[test]
    fn round_trip_in_place() {
        let (auth, mut rx) = setup();
        let pkt = inner(PEER, ME);
        let d = encap(&auth, &pkt, 1);
        assert_eq!(d.len(), pkt.len() + OVERHEAD);
        let got = decap(&d, |id| (id == 257).then_some(&mut rx)).unwrap();
        assert_eq!(
            got,
            Decapped::Data {
                tunnel_id: 257,
                seq: 1,
                inner: &pkt
            }
        );
        // The same datagram again is a replay.
        assert_eq!(decap(&d, |_| Some(&mut rx)), Err(Error::Replay));
    }

    #[test]
    fn drops_in_spec_order() {
        let (auth, mut rx) = setup();
        let pkt = inner(PEER, ME);
        let good = encap(&auth, &pkt, 5);
        assert_eq!(decap(&good[..31], |_| Some(&mut rx)), Err(Error::Truncated));
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(decap(&v, |_| None), Err(Error::BadVersion));
        assert_eq!(decap(&good, |_| None), Err(Error::UnknownTunnel));
        let mut s = good.clone();
        s[3] = 2;
        assert_eq!(decap(&s, |_| Some(&mut rx)), Err(Error::UnsupportedSuite));
        let mut t = good.clone();
        let l = t.len();
        t[l - 1] ^= 1;
        assert_eq!(decap(&t, |_| Some(&mut rx)), Err(Error::BadTag));
        // A forged packet must not have moved the window.
        assert_eq!(rx.replay.last(), 0);
        let mut sig = good.clone();
        sig[1] = 0x30;
        assert_eq!(decap(&sig, |_| Some(&mut rx)), Err(Error::UnexpectedType));
        let spoofed = encap(&auth, &inner(Ipv4Addr::new(100, 64, 0, 9), ME), 6);
        assert_eq!(decap(&spoofed, |_| Some(&mut rx)), Err(Error::InnerAddr));
        let short = encap(&auth, &[0x45, 0, 0], 7);
        assert_eq!(decap(&short, |_| Some(&mut rx)), Err(Error::BadInner));
    }

    #[test]
    fn keepalive() {
        let (auth, mut rx) = setup();
        let mut buf = [0u8; 32];
        let n = emit_tun_keepalive(&mut buf, 257, 9, &auth).unwrap();
        assert_eq!(
            decap(&buf[..n], |_| Some(&mut rx)),
            Ok(Decapped::Keepalive {
                tunnel_id: 257,
                seq: 9
            })
        );
        assert_eq!(
            emit_tun_keepalive(&mut [0u8; 31], 1, 1, &auth),
            Err(Error::BufferTooSmall)
        );
    }

    #[test]
    fn encap_checks_room() {
        let auth = Authenticator::new(&Key::from_bytes([1; 32]));
        let mut buf = [0u8; 100];
        assert_eq!(
            encap_in_place(&mut buf, 50, 20, 1, 1, &auth),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(encap_in_place(&mut buf, 48, 20, 1, 1, &auth), Ok(52));
        assert_eq!(
            encap_in_place(&mut buf, usize::MAX, 20, 1, 1, &auth),
            Err(Error::BufferTooSmall)
        );
    }

    #[test]
    fn tx_tunnel_counts() {
        let auth = Authenticator::new(&Key::from_bytes([1; 32]));
        let tx = TxTunnel {
            tunnel_id: 3,
            auth,
            seq: SeqCounter::starting_at(1),
        };
        let mut buf = [0u8; 64];
        tx.encap_in_place(&mut buf, 0, 4).unwrap();
        assert_eq!(Packet::new_checked(&buf[..36]).unwrap().seq(), 1);
        tx.encap_in_place(&mut buf, 0, 4).unwrap();
        assert_eq!(Packet::new_checked(&buf[..36]).unwrap().seq(), 2);
        assert_eq!(tx.seq.peek(), 3);
        assert_eq!(inner_destination(&inner(PEER, ME)), Some(ME));
        assert_eq!(inner_destination(&[0x60; 40]), None);
    }
}
