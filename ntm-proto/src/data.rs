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

use crate::replay::ReplayCheck;
use crate::wire::{MessageType, Packet, HEADER_LEN, OVERHEAD, TAG_LEN, VERSION};
use crate::{Cipher, Error, ReplayWindow, Result};

/// Shortest IPv4 header.
const IPV4_MIN_HEADER: usize = 20;

/// Write a DATA header at `buf[hdr_offset..hdr_offset + 16]` in front of the
/// `inner_len`-byte packet at `buf[hdr_offset + 16..]`, and seal it with the
/// tunnel's send direction key (suite 2 encrypts the inner packet in place).
/// Returns the datagram length (`inner_len + 32`); the datagram is
/// `buf[hdr_offset..hdr_offset + len]`.
#[inline]
pub fn encap_in_place(
    buf: &mut [u8],
    hdr_offset: usize,
    inner_len: usize,
    tunnel_id: u32,
    seq: u64,
    cipher: &Cipher,
) -> Result<usize> {
    write_tunnel_datagram(
        buf,
        hdr_offset,
        inner_len,
        MessageType::Data,
        tunnel_id,
        seq,
        cipher,
    )
}

/// [`encap_in_place`], but a suite-1 tag is left to the caller, who computes
/// the tags of many datagrams at once ([`Authenticator::tag_many`]): returns
/// the datagram length and whether its last 16 bytes still wait for the tag
/// of the rest (suite 1: true; suite 2 is sealed here, false). Once that tag
/// is written the bytes are [`encap_in_place`]'s.
///
/// [`Authenticator::tag_many`]: crate::Authenticator::tag_many
#[inline]
pub fn encap_in_place_but_tag(
    buf: &mut [u8],
    hdr_offset: usize,
    inner_len: usize,
    tunnel_id: u32,
    seq: u64,
    cipher: &Cipher,
) -> Result<(usize, bool)> {
    let tag_later = cipher.authenticator().is_some();
    let len = write_header(
        buf,
        hdr_offset,
        inner_len,
        MessageType::Data,
        tunnel_id,
        seq,
        cipher,
    )?;
    if !tag_later {
        cipher.seal(&mut buf[hdr_offset..hdr_offset + len])?;
    }
    Ok((len, tag_later))
}

/// Write a TUN_KEEPALIVE (empty body) at the front of `buf`. Returns its length (32).
pub fn emit_tun_keepalive(
    buf: &mut [u8],
    tunnel_id: u32,
    seq: u64,
    cipher: &Cipher,
) -> Result<usize> {
    write_tunnel_datagram(buf, 0, 0, MessageType::TunKeepalive, tunnel_id, seq, cipher)
}

fn write_tunnel_datagram(
    buf: &mut [u8],
    hdr_offset: usize,
    inner_len: usize,
    msg_type: MessageType,
    tunnel_id: u32,
    seq: u64,
    cipher: &Cipher,
) -> Result<usize> {
    let len = write_header(buf, hdr_offset, inner_len, msg_type, tunnel_id, seq, cipher)?;
    cipher.seal(&mut buf[hdr_offset..hdr_offset + len])?;
    Ok(len)
}

/// Write the header of a tunnel datagram of `inner_len` bytes of body at
/// `buf[hdr_offset..]`; returns the datagram length (body + 32).
#[inline(always)]
fn write_header(
    buf: &mut [u8],
    hdr_offset: usize,
    inner_len: usize,
    msg_type: MessageType,
    tunnel_id: u32,
    seq: u64,
    cipher: &Cipher,
) -> Result<usize> {
    let len = inner_len.checked_add(OVERHEAD).ok_or(Error::TooLong)?;
    let end = hdr_offset.checked_add(len).ok_or(Error::BufferTooSmall)?;
    let out = buf.get_mut(hdr_offset..end).ok_or(Error::BufferTooSmall)?;
    let mut p = Packet::new_checked(&mut *out)?;
    p.set_version(VERSION);
    p.set_msg_type(msg_type);
    p.set_flags(0);
    p.set_suite(cipher.suite());
    p.set_id(tunnel_id);
    p.set_seq(seq);
    Ok(len)
}

/// Receive state of one tunnel: what [`decap`] needs.
#[derive(Debug, Clone)]
pub struct RxTunnel {
    /// The receive direction key in the tunnel's suite (`K_r2i` at the
    /// initiator, `K_i2r` at the responder).
    pub cipher: Cipher,
    /// Replay window of the peer's sequence numbers in this direction.
    pub replay: ReplayWindow,
    /// The peer's VIP: the only allowed inner source.
    pub peer_vip: Ipv4Addr,
    /// Our VIP: the only allowed inner destination.
    pub local_vip: Ipv4Addr,
}

impl RxTunnel {
    /// Fresh receive state.
    pub fn new(cipher: Cipher, peer_vip: Ipv4Addr, local_vip: Ipv4Addr) -> RxTunnel {
        RxTunnel {
            cipher,
            replay: ReplayWindow::new(),
            peer_vip,
            local_vip,
        }
    }
}

/// One tunnel's receive side as [`decap`] checks a datagram against it,
/// generic over the replay window: `&mut ReplayWindow` for an owned
/// [`RxTunnel`], `&AtomicReplayWindow` for a window that several workers
/// share (the adapter's fast path).
///
/// [`AtomicReplayWindow`]: crate::replay::AtomicReplayWindow
#[derive(Debug)]
pub struct Rx<'t, W> {
    /// The receive direction key.
    pub cipher: &'t Cipher,
    /// The replay window of this direction.
    pub replay: W,
    /// The only allowed inner source.
    pub peer_vip: Ipv4Addr,
    /// The only allowed inner destination.
    pub local_vip: Ipv4Addr,
}

impl<'t> From<&'t mut RxTunnel> for Rx<'t, &'t mut ReplayWindow> {
    #[inline]
    fn from(t: &'t mut RxTunnel) -> Self {
        Rx {
            cipher: &t.cipher,
            replay: &mut t.replay,
            peer_vip: t.peer_vip,
            local_vip: t.local_vip,
        }
    }
}

/// What [`decap`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decapped<'a> {
    /// An authenticated DATA: the inner IPv4 packet (at offset 16 of the
    /// datagram, decrypted in place with suite 2).
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

/// Check and open a DATA or TUN_KEEPALIVE datagram in place, in the order of
/// §5: length, version, (message type: anything else is
/// [`Error::UnexpectedType`], for the caller's slow path, and leaves the
/// datagram unchanged), a known tunnel id through `lookup`, suite (the
/// tunnel's), tag (suite 2: decryption), replay window, one whole inner IPv4
/// packet, inner source = peer VIP and destination = local VIP. The replay
/// window is checked and marked only after the tag verified, so each drop is
/// counted under the reason §5's order gives it. `lookup` gives the tunnel's
/// receive side: an `&mut` [`RxTunnel`] or an [`Rx`] of any replay window.
#[inline]
pub fn decap<'a, 't, W, R, F>(datagram: &'a mut [u8], lookup: F) -> Result<Decapped<'a>>
where
    W: ReplayCheck,
    R: Into<Rx<'t, W>>,
    F: FnOnce(u32) -> Option<R>,
{
    decap_verified(datagram, lookup, None)
}

/// The tunnel id of a datagram [`decap`] gets as far as looking up: one long
/// enough, of version 2, DATA or TUN_KEEPALIVE. `None` for others, which
/// [`decap`] refuses before any lookup.
#[inline]
pub fn tunnel_id_of(datagram: &[u8]) -> Option<u32> {
    header_of(datagram).ok().map(|(_, id, _)| id)
}

/// Type, tunnel id and seq of a datagram [`decap`] goes on to look up.
#[inline(always)]
fn header_of(datagram: &[u8]) -> Result<(MessageType, u32, u64)> {
    let packet = Packet::new_checked(datagram)?;
    if packet.version() != VERSION {
        return Err(Error::BadVersion);
    }
    let msg_type = packet.msg_type();
    if !matches!(msg_type, MessageType::Data | MessageType::TunKeepalive) {
        return Err(Error::UnexpectedType);
    }
    Ok((msg_type, packet.id(), packet.seq()))
}

/// [`decap`] with the result of the tunnel's [`Cipher::open`] already known:
/// `opened` is `Some` of what [`Cipher::verify_many`] said of this datagram
/// with the receive key `lookup` gives (a burst checks the suite-1 tags of
/// all its datagrams first), `None` to open it here. Every other check, and
/// their order, is [`decap`]'s: the replay window is still checked only
/// after an authentic tag.
#[inline]
pub fn decap_verified<'a, 't, W, R, F>(
    datagram: &'a mut [u8],
    lookup: F,
    opened: Option<Result<()>>,
) -> Result<Decapped<'a>>
where
    W: ReplayCheck,
    R: Into<Rx<'t, W>>,
    F: FnOnce(u32) -> Option<R>,
{
    let (msg_type, tunnel_id, seq) = header_of(datagram)?;
    let mut rx: Rx<'t, W> = lookup(tunnel_id).ok_or(Error::UnknownTunnel)?.into();
    // Suite, then tag (and decryption) before the window, as §5 orders it: a
    // forged datagram counts as BadTag whatever its seq, and only authentic
    // ones move the window.
    opened.unwrap_or_else(|| rx.cipher.open(datagram))?;
    if !rx.replay.update(seq) {
        return Err(Error::Replay);
    }
    if msg_type == MessageType::TunKeepalive {
        return Ok(Decapped::Keepalive { tunnel_id, seq });
    }
    let datagram: &'a [u8] = datagram;
    let inner = &datagram[HEADER_LEN..datagram.len() - TAG_LEN];
    check_inner(inner, rx.peer_vip, rx.local_vip)?;
    Ok(Decapped::Data {
        tunnel_id,
        seq,
        inner,
    })
}

/// Check that `inner` is one whole IPv4 packet (version 4, IHL at least 5,
/// total length equal to `inner.len()`, §5 "Data"): [`Error::BadInner`]
/// otherwise.
#[inline]
pub fn check_inner_shape(inner: &[u8]) -> Result<()> {
    if inner.len() < IPV4_MIN_HEADER || inner[0] >> 4 != 4 || inner[0] & 0x0f < 5 {
        return Err(Error::BadInner);
    }
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
    if total != inner.len() || ihl > total {
        return Err(Error::BadInner);
    }
    Ok(())
}

/// Check that `inner` is one whole IPv4 packet ([`check_inner_shape`]) from
/// `src` to `dst` ([`Error::InnerAddr`] otherwise).
#[inline]
pub fn check_inner(inner: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
    check_inner_shape(inner)?;
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

/// A tunnel's send sequence counter for one direction key, shared between
/// the signaling endpoint (TUN_REQ or TUN_RESP, TUN_KEEPALIVE) and the data
/// plane (DATA), because §2 wants one strictly increasing sequence per
/// (sender, key): with suite 2 a repeated seq would repeat a GCM nonce.
/// Cloning shares it.
#[derive(Debug, Clone)]
pub struct SeqCounter(Arc<AtomicU64>);

impl SeqCounter {
    /// A counter whose first number is `first` (tunnel senders start at 1).
    pub fn starting_at(first: u64) -> SeqCounter {
        SeqCounter(Arc::new(AtomicU64::new(first)))
    }

    /// Take the next number.
    #[inline]
    pub fn next(&self) -> u64 {
        // Relaxed: only uniqueness and monotonicity per counter matter.
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    /// Take `n` consecutive numbers at once (a burst); returns the first.
    #[inline]
    pub fn reserve(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed)
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
    /// The send direction key in the tunnel's suite.
    pub cipher: Cipher,
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
            &self.cipher,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DirectionKeys, Key, Role, Suite};

    const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
    const SUITES: [Suite; 2] = [Suite::HmacSha256_128, Suite::Aes256Gcm];

    fn inner(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[1, 2, 3, 4]);
        p
    }

    /// The peer's send cipher and our receive state (the peer is the
    /// initiator, we are the responder).
    fn setup(suite: Suite) -> (Cipher, RxTunnel) {
        let keys = DirectionKeys::derive(&Key::from_bytes([0x20; 32]));
        let (peer_tx, _) = keys.for_role(Role::Initiator).unwrap();
        let (_, our_rx) = keys.for_role(Role::Responder).unwrap();
        (
            Cipher::new(suite, peer_tx).unwrap(),
            RxTunnel::new(Cipher::new(suite, our_rx).unwrap(), PEER, ME),
        )
    }

    fn encap(c: &Cipher, pkt: &[u8], seq: u64) -> Vec<u8> {
        let mut buf = vec![0u8; 64 + pkt.len() + 32];
        buf[64 + HEADER_LEN..64 + HEADER_LEN + pkt.len()].copy_from_slice(pkt);
        let n = encap_in_place(&mut buf, 64, pkt.len(), 257, seq, c).unwrap();
        buf[64..64 + n].to_vec()
    }

    #[test]
    fn round_trip_in_place() {
        for suite in SUITES {
            let (c, mut rx) = setup(suite);
            let pkt = inner(PEER, ME);
            let d = encap(&c, &pkt, 1);
            assert_eq!(d.len(), pkt.len() + OVERHEAD);
            assert_eq!(d[3], u8::from(suite));
            // Suite 2 hides the inner packet; suite 1 carries it in clear.
            assert_eq!(
                d[HEADER_LEN..HEADER_LEN + pkt.len()] == pkt[..],
                suite == Suite::HmacSha256_128
            );
            let mut buf = d.clone();
            let got = decap(&mut buf, |id| (id == 257).then_some(&mut rx)).unwrap();
            assert_eq!(
                got,
                Decapped::Data {
                    tunnel_id: 257,
                    seq: 1,
                    inner: &pkt
                }
            );
            // The same datagram again is a replay.
            assert_eq!(decap(&mut d.clone(), |_| Some(&mut rx)), Err(Error::Replay));
        }
    }

    #[test]
    fn the_atomic_window_decides_as_the_scalar_one() {
        use crate::replay::AtomicReplayWindow;
        for suite in SUITES {
            let (c, mut rx) = setup(suite);
            let shared = AtomicReplayWindow::new();
            fn atomic<'t>(
                rx: &'t RxTunnel,
                w: &'t AtomicReplayWindow,
            ) -> Rx<'t, &'t AtomicReplayWindow> {
                Rx {
                    cipher: &rx.cipher,
                    replay: w,
                    peer_vip: rx.peer_vip,
                    local_vip: rx.local_vip,
                }
            }
            let pkt = inner(PEER, ME);
            for seq in [3, 1, 3, 2000, 1] {
                let d = encap(&c, &pkt, seq);
                let scalar = decap(&mut d.clone(), |_| Some(&mut rx)).map(|_| ());
                let got = decap(&mut d.clone(), |_| Some(atomic(&rx, &shared))).map(|_| ());
                assert_eq!(got, scalar, "seq {seq}");
            }
            let mut t = encap(&c, &pkt, 5000);
            let l = t.len();
            t[l - 1] ^= 1;
            assert_eq!(
                decap(&mut t, |_| Some(atomic(&rx, &shared))),
                Err(Error::BadTag)
            );
            assert_eq!(shared.last(), 2000, "a forged datagram moved the window");
        }
    }

    #[test]
    fn a_reflected_datagram_never_verifies() {
        for suite in SUITES {
            // We are the initiator: we send with K_i2r and receive with K_r2i.
            let keys = DirectionKeys::derive(&Key::from_bytes([0x20; 32]));
            let (tx, rx) = keys.for_role(Role::Initiator).unwrap();
            let ours = Cipher::new(suite, tx).unwrap();
            let mut rx = RxTunnel::new(Cipher::new(suite, rx).unwrap(), PEER, ME);
            let mut d = encap(&ours, &inner(ME, PEER), 1_000_000);
            assert_eq!(decap(&mut d, |_| Some(&mut rx)), Err(Error::BadTag));
            assert_eq!(rx.replay.last(), 0, "a reflected datagram moved the window");
        }
    }

    #[test]
    fn drops_in_spec_order() {
        for suite in SUITES {
            let (c, mut rx) = setup(suite);
            let pkt = inner(PEER, ME);
            let good = encap(&c, &pkt, 5);
            assert_eq!(
                decap(&mut good[..31].to_vec(), |_| Some(&mut rx)),
                Err(Error::Truncated)
            );
            let mut v = good.clone();
            v[0] = 1;
            assert_eq!(
                decap(&mut v, |_| None::<&mut RxTunnel>),
                Err(Error::BadVersion)
            );
            assert_eq!(
                decap(&mut good.clone(), |_| None::<&mut RxTunnel>),
                Err(Error::UnknownTunnel)
            );
            let mut s = good.clone();
            s[3] = if suite == Suite::Aes256Gcm { 1 } else { 2 };
            assert_eq!(
                decap(&mut s, |_| Some(&mut rx)),
                Err(Error::UnsupportedSuite)
            );
            let mut t = good.clone();
            let l = t.len();
            t[l - 1] ^= 1;
            assert_eq!(decap(&mut t, |_| Some(&mut rx)), Err(Error::BadTag));
            // A forged packet must not have moved the window.
            assert_eq!(rx.replay.last(), 0);
            let mut sig = good.clone();
            sig[1] = 0x30;
            let before = sig.clone();
            assert_eq!(
                decap(&mut sig, |_| Some(&mut rx)),
                Err(Error::UnexpectedType)
            );
            assert_eq!(sig, before, "a slow-path datagram must leave unchanged");
            let mut spoofed = encap(&c, &inner(Ipv4Addr::new(100, 64, 0, 9), ME), 6);
            assert_eq!(
                decap(&mut spoofed, |_| Some(&mut rx)),
                Err(Error::InnerAddr)
            );
            let mut short = encap(&c, &[0x45, 0, 0], 7);
            assert_eq!(decap(&mut short, |_| Some(&mut rx)), Err(Error::BadInner));
        }
    }

    #[test]
    fn the_body_must_be_one_whole_ipv4_packet() {
        for suite in SUITES {
            let (c, mut rx) = setup(suite);
            let mut seq = 10;
            let mut bad = |pkt: Vec<u8>| {
                seq += 1;
                decap(&mut encap(&c, &pkt, seq), |_| Some(&mut rx)).map(|_| ())
            };
            // IHL 4: shorter than an IPv4 header can be.
            let mut ihl4 = inner(PEER, ME);
            ihl4[0] = 0x44;
            assert_eq!(bad(ihl4), Err(Error::BadInner));
            // Total length larger than the body.
            let mut long = inner(PEER, ME);
            long[3] = 200;
            assert_eq!(bad(long), Err(Error::BadInner));
            // Total length shorter than the body (trailing bytes).
            let mut trailing = inner(PEER, ME);
            trailing.extend_from_slice(&[0; 8]);
            assert_eq!(bad(trailing), Err(Error::BadInner));
            // IHL beyond the total length.
            let mut ihl15 = inner(PEER, ME);
            ihl15[0] = 0x4f;
            assert_eq!(bad(ihl15), Err(Error::BadInner));
            assert!(bad(inner(PEER, ME)).is_ok());
        }
    }

    #[test]
    fn keepalive() {
        for suite in SUITES {
            let (c, mut rx) = setup(suite);
            let mut buf = [0u8; 32];
            let n = emit_tun_keepalive(&mut buf, 257, 9, &c).unwrap();
            assert_eq!(
                decap(&mut buf[..n], |_| Some(&mut rx)),
                Ok(Decapped::Keepalive {
                    tunnel_id: 257,
                    seq: 9
                })
            );
            assert_eq!(
                emit_tun_keepalive(&mut [0u8; 31], 1, 1, &c),
                Err(Error::BufferTooSmall)
            );
        }
    }

    #[test]
    fn encap_checks_room() {
        let c = Cipher::new(Suite::Aes256Gcm, &Key::from_bytes([1; 32])).unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(
            encap_in_place(&mut buf, 50, 20, 1, 1, &c),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(encap_in_place(&mut buf, 48, 20, 1, 1, &c), Ok(52));
        assert_eq!(
            encap_in_place(&mut buf, usize::MAX, 20, 1, 1, &c),
            Err(Error::BufferTooSmall)
        );
    }

    #[test]
    fn tx_tunnel_counts() {
        let tx = TxTunnel {
            tunnel_id: 3,
            cipher: Cipher::new(Suite::Aes256Gcm, &Key::from_bytes([1; 32])).unwrap(),
            seq: SeqCounter::starting_at(1),
        };
        let mut buf = [0u8; 64];
        tx.encap_in_place(&mut buf, 0, 4).unwrap();
        assert_eq!(Packet::new_checked(&buf[..36]).unwrap().seq(), 1);
        tx.encap_in_place(&mut buf, 0, 4).unwrap();
        assert_eq!(Packet::new_checked(&buf[..36]).unwrap().seq(), 2);
        assert_eq!(tx.seq.peek(), 3);
        assert_eq!(tx.seq.reserve(4), 3);
        assert_eq!(tx.seq.peek(), 7);
        assert_eq!(inner_destination(&inner(PEER, ME)), Some(ME));
        assert_eq!(inner_destination(&[0x60; 40]), None);
    }
}
