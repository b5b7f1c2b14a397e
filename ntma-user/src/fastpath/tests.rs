//! Uplink and downlink on synthetic frames, for both suites: byte-exact against
//! ntm-proto's encoder and decoder, every drop reason, frames left unchanged when not
//! taken, reflected datagrams, receiving before the tunnel is up, activity only after
//! every check, random input.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ntm_proto::{
    data::{decap, emit_tun_keepalive, encap_in_place, Decapped, RxTunnel, SeqCounter},
    node::TunnelParams,
    wire::{HEADER_LEN, TAG_LEN},
    Cipher, DirectionKeys, Key, Path, Role, Suite,
};
use proptest::prelude::*;

use super::encap::{downlink, uplink, DownVerdict, UpVerdict, ENCAP_GROW, ENCAP_TAIL, ETH_LEN};
use super::*;
use crate::datapath::{GnLink, Link, TunnelStats};
use crate::gn::MacAddr;
use crate::wire::checksum::internet as ipv4_checksum;

/// Outer Ethernet/IPv4/UDP and NTM headers in front of the inner packet (58).
const OUTER_LEN: usize = ENCAP_GROW + ETH_LEN;
const GN_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const PEER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 77);
const WAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 2);
const GN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const WAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
const TUNNEL: u32 = 0x0102_0304;
/// `K_tun`.
const KEY: [u8; 32] = [0x5a; 32];
const SUITES: [Suite; 2] = [Suite::HmacSha256_128, Suite::Aes256Gcm];
/// Where the outer datagram starts in a frame (Ethernet, IPv4 without options, UDP).
const DG: usize = 42;

fn endpoint() -> SocketAddrV4 {
    "198.18.0.20:7700".parse().unwrap()
}

fn link() -> Link {
    Link {
        lan_mac: MacAddr(LAN_MAC),
        wan_mac: MacAddr(WAN_MAC),
        wan_ip: WAN_IP,
        wan_port: 7700,
        gateway_mac: MacAddr(GW_MAC),
    }
}

/// The GN of the tunnel [`params`] describes.
fn gn() -> GnLink {
    GnLink {
        vip: GN_VIP,
        mac: Some(MacAddr(GN_MAC)),
    }
}

/// Sets the link and the one GN.
fn ready(dp: &DatapathState) {
    dp.set_link(Some(link()));
    dp.set_gns(&[gn()]);
}

/// The direction keys of `role`'s end of the tunnel: (send, receive).
fn keys(role: Role) -> (Key, Key) {
    let d = DirectionKeys::derive(&Key::from_bytes(KEY));
    let (tx, rx) = d.for_role(role).unwrap();
    (tx.clone(), rx.clone())
}

/// What the endpoint hands the data plane for our end (the initiator) of the tunnel
/// to the peer.
fn params(suite: Suite, seq: &SeqCounter) -> TunnelParams {
    let (tx_key, rx_key) = keys(Role::Initiator);
    TunnelParams {
        tunnel_id: TUNNEL,
        peer_fqdn: "cn.ntm.test".into(),
        peer_vip: PEER_VIP,
        endpoint: endpoint(),
        path: Path::Direct,
        role: Role::Initiator,
        suite,
        tx_key,
        rx_key,
        tx_seq: seq.clone(),
        local_vip: GN_VIP,
    }
}

/// A data plane with the link and one tunnel (up) in `suite`, with the peer's end.
struct Fx {
    suite: Suite,
    dp: DatapathState,
    seq: SeqCounter,
}

fn plane(suite: Suite) -> Fx {
    let fx = plane_without_tunnel(suite);
    fx.dp.tunnel_up(&params(suite, &fx.seq)).unwrap();
    fx
}

fn plane_without_tunnel(suite: Suite) -> Fx {
    let dp = DatapathState::new(&DatapathStateConfig::default()).unwrap();
    ready(&dp);
    Fx {
        suite,
        dp,
        seq: SeqCounter::starting_at(1),
    }
}

impl Fx {
    /// The peer's send key: what DATA to us is sealed with.
    fn peer_tx(&self) -> Cipher {
        Cipher::new(self.suite, &keys(Role::Responder).0).unwrap()
    }

    /// Our send key: what our DATA is sealed with (and what a reflection carries).
    fn our_tx(&self) -> Cipher {
        Cipher::new(self.suite, &keys(Role::Initiator).0).unwrap()
    }

    /// The peer's receive state for our DATA.
    fn peer_rx(&self) -> RxTunnel {
        let rx = Cipher::new(self.suite, &keys(Role::Responder).1).unwrap();
        RxTunnel::new(rx, GN_VIP, PEER_VIP)
    }

    /// DATA from the peer to the GN, sealed by ntm-proto's own encoder.
    fn data(&self, seq: u64, inner: &[u8]) -> Vec<u8> {
        sealed(&self.peer_tx(), TUNNEL, seq, inner)
    }

    fn keepalive(&self, seq: u64) -> Vec<u8> {
        let mut buf = [0u8; 32];
        let n = emit_tun_keepalive(&mut buf, TUNNEL, seq, &self.peer_tx()).unwrap();
        buf[..n].to_vec()
    }

    fn tunnel(&self) -> Arc<table::Tunnel> {
        Arc::clone(&self.dp.snapshot().by_id[&TUNNEL])
    }

    fn stats(&self) -> TunnelStats {
        self.dp.tunnel_stats()[0].clone()
    }
}

/// A DATA datagram with `inner`, tunnel id `id`, sealed with `cipher`.
fn sealed(cipher: &Cipher, id: u32, seq: u64, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; inner.len() + 32];
    buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
    let n = encap_in_place(&mut buf, 0, inner.len(), id, seq, cipher).unwrap();
    buf.truncate(n);
    buf
}

/// An inner IPv4/UDP packet of exactly `len` bytes (at least 28).
fn inner_packet(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    assert!(len >= 28);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&[0x12, 0x34]);
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&6000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GN frame carrying `inner`.
fn gn_frame(inner: &[u8]) -> Vec<u8> {
    eth(LAN_MAC, GN_MAC, 0x0800, inner)
}

/// Runs uplink the way a worker does: the frame with ENCAP_GROW bytes in front and
/// ENCAP_TAIL behind. Returns the verdict and the whole buffer.
fn run_uplink(snap: &Snapshot, frame: &[u8]) -> (UpVerdict, Vec<u8>) {
    let mut buf = vec![0xee; ENCAP_GROW + frame.len() + ENCAP_TAIL];
    buf[ENCAP_GROW..ENCAP_GROW + frame.len()].copy_from_slice(frame);
    let v = uplink(snap, &mut buf, frame.len());
    (v, buf)
}

/// A WAN frame: IPv4/UDP from `from` to the NTMA's port 7700 carrying `datagram`.
fn wan_frame(from: SocketAddrV4, datagram: &[u8]) -> Vec<u8> {
    let udp_len = 8 + datagram.len();
    let mut ip = vec![0u8; 20 + udp_len];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[8] = 63;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&from.ip().octets());
    ip[16..20].copy_from_slice(&WAN_IP.octets());
    let c = ipv4_checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[20..22].copy_from_slice(&from.port().to_be_bytes());
    ip[22..24].copy_from_slice(&7700u16.to_be_bytes());
    ip[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    ip[28..].copy_from_slice(datagram);
    eth(WAN_MAC, GW_MAC, 0x0800, &ip)
}

fn peer() -> SocketAddrV4 {
    "198.18.0.10:40000".parse().unwrap()
}

/// Somewhere else: an attacker, or the peer after a move.
fn elsewhere() -> SocketAddrV4 {
    "203.0.113.66:5555".parse().unwrap()
}

/// Recomputes the outer IPv4 header checksum of a frame after a test changed it.
fn fix_ip(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].fill(0);
    let c = ipv4_checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

// ------------------------------------------------------------------ uplink

#[test]
fn uplink_writes_exact_outer_headers_and_the_proto_datagram() {
    for suite in SUITES {
        for len in [28, 64, 512, 1400, INNER_MTU] {
            let fx = plane(suite);
            let snap = fx.dp.snapshot();
            let inner = inner_packet(GN_VIP, PEER_VIP, len);
            let (v, buf) = run_uplink(&snap, &gn_frame(&inner));
            let UpVerdict::Tx(out_len) = v else {
                panic!("{suite:?} {len}: {v:?}")
            };
            assert_eq!(out_len, OUTER_LEN + len + 16, "{len}");
            let out = &buf[..out_len];
            // Ethernet: gateway ← wan.
            assert_eq!(out[0..6], GW_MAC);
            assert_eq!(out[6..12], WAN_MAC);
            assert_eq!(out[12..14], [0x08, 0x00]);
            // IPv4: valid checksum, lengths, addresses.
            let ip = &out[14..34];
            assert_eq!(ip[0], 0x45);
            assert_eq!(usize::from(be16(ip, 2)), out_len - 14);
            assert_eq!(ipv4_checksum(ip), 0, "IPv4 header checksum");
            assert_eq!(be16(ip, 4), 1, "identification from seq 1");
            assert_eq!(be16(ip, 6), 0x4000, "DF set, not a fragment");
            assert_eq!((ip[8], ip[9]), (64, 17));
            assert_eq!(ip[12..16], WAN_IP.octets());
            assert_eq!(ip[16..20], endpoint().ip().octets());
            // UDP: wan_port → endpoint, checksum 0.
            let udp = &out[34..42];
            assert_eq!(be16(udp, 0), 7700);
            assert_eq!(be16(udp, 2), endpoint().port());
            assert_eq!(usize::from(be16(udp, 4)), out_len - 34);
            assert_eq!(be16(udp, 6), 0);
            // The datagram is byte for byte what ntm-proto's encoder makes with our
            // send key: the suite byte, and suite 2 hides the inner packet.
            let ours = sealed(&fx.our_tx(), TUNNEL, 1, &inner);
            assert_eq!(out[DG..], ours[..], "{suite:?} {len}");
            assert_eq!(out[DG + 3], u8::from(suite));
            let clear = out[OUTER_LEN..OUTER_LEN + len] == inner[..];
            assert_eq!(clear, suite == Suite::HmacSha256_128, "{suite:?} {len}");
            // And ntm-proto's decoder at the peer accepts it, inner unchanged.
            let mut rx = fx.peer_rx();
            let mut wire = out[DG..].to_vec();
            match decap(&mut wire, |id| (id == TUNNEL).then_some(&mut rx)) {
                Ok(Decapped::Data {
                    tunnel_id,
                    seq: 1,
                    inner: got,
                }) => {
                    assert_eq!(tunnel_id, TUNNEL);
                    assert_eq!(got, &inner[..]);
                }
                other => panic!("{suite:?} {len}: {other:?}"),
            }
            assert_eq!(fx.seq.peek(), 2, "the shared counter moved");
            let st = fx.stats();
            assert_eq!((st.tx_packets, st.tx_bytes), (1, len as u64));
            assert_eq!((st.suite, st.sending), (suite, true));
        }
    }
}

#[test]
fn uplink_shares_the_send_counter_with_the_control() {
    let fx = plane(Suite::Aes256Gcm);
    let snap = fx.dp.snapshot();
    let frame = gn_frame(&inner_packet(GN_VIP, PEER_VIP, 100));
    assert!(matches!(run_uplink(&snap, &frame).0, UpVerdict::Tx(_)));
    // The control sends a TUN_KEEPALIVE with the next number...
    assert_eq!(fx.seq.next(), 2);
    // ...so the next DATA carries 3: no GCM nonce is used twice.
    let (_, buf) = run_uplink(&snap, &frame);
    let seq_at = DG + 8;
    assert_eq!(
        u64::from_be_bytes(buf[seq_at..seq_at + 8].try_into().unwrap()),
        3
    );
}

#[test]
fn uplink_trims_ethernet_padding_and_keeps_ip_options() {
    for suite in SUITES {
        let fx = plane(suite);
        let snap = fx.dp.snapshot();
        let mut rx = fx.peer_rx();
        let mut open = |buf: &[u8], n: usize| -> Vec<u8> {
            let mut wire = buf[DG..n].to_vec();
            match decap(&mut wire, |_| Some(&mut rx)) {
                Ok(Decapped::Data { inner, .. }) => inner.to_vec(),
                other => panic!("{other:?}"),
            }
        };
        // 28-byte inner packet in a 60-byte minimum frame: 18 bytes of padding.
        let inner = inner_packet(GN_VIP, PEER_VIP, 28);
        let mut frame = gn_frame(&inner);
        frame.resize(60, 0);
        let (v, buf) = run_uplink(&snap, &frame);
        assert_eq!(v, UpVerdict::Tx(OUTER_LEN + 28 + 16));
        assert_eq!(open(&buf, OUTER_LEN + 28 + 16), inner);

        // IHL 6 (4 bytes of options): forwarded unchanged.
        let mut opt = inner_packet(GN_VIP, PEER_VIP, 40);
        opt[0] = 0x46;
        let (v, buf) = run_uplink(&snap, &gn_frame(&opt));
        assert_eq!(v, UpVerdict::Tx(OUTER_LEN + 40 + 16));
        assert_eq!(open(&buf, OUTER_LEN + 40 + 16), opt);
    }
}

#[test]
fn uplink_drops_and_slow_path_leave_the_frame_unchanged() {
    let fx = plane(Suite::Aes256Gcm);
    let snap = fx.dp.snapshot();
    let good = gn_frame(&inner_packet(GN_VIP, PEER_VIP, 100));
    let mut cases: Vec<(&str, Vec<u8>, UpVerdict)> = Vec::new();
    let d = UpVerdict::Drop;
    cases.push(("short IPv4", good[..30].to_vec(), d(FastDrop::LanMalformed)));
    cases.push(("13 bytes", good[..13].to_vec(), d(FastDrop::LanMalformed)));
    let mut v6 = good.clone();
    v6[14] = 0x65;
    cases.push(("version 6 in IPv4", v6, d(FastDrop::LanMalformed)));
    let mut ihl = good.clone();
    ihl[14] = 0x44;
    cases.push(("IHL 4", ihl, d(FastDrop::LanMalformed)));
    let mut long = good.clone();
    long[16..18].copy_from_slice(&101u16.to_be_bytes());
    cases.push((
        "total length past the frame",
        long,
        d(FastDrop::LanMalformed),
    ));
    let mut below_ihl = good.clone();
    below_ihl[16..18].copy_from_slice(&19u16.to_be_bytes());
    cases.push((
        "total length below IHL",
        below_ihl,
        d(FastDrop::LanMalformed),
    ));
    cases.push((
        "spoofed source",
        gn_frame(&inner_packet(OTHER_VIP, PEER_VIP, 100)),
        d(FastDrop::LanBadSource),
    ));
    cases.push((
        "1441 bytes",
        gn_frame(&inner_packet(GN_VIP, PEER_VIP, INNER_MTU + 1)),
        UpVerdict::TooBig,
    ));
    cases.push((
        "VIP without a tunnel",
        gn_frame(&inner_packet(GN_VIP, OTHER_VIP, 100)),
        UpVerdict::Slow,
    ));
    cases.push((
        "ARP",
        eth([0xff; 6], GN_MAC, 0x0806, &[0u8; 28]),
        UpVerdict::Slow,
    ));
    cases.push((
        "short non-IPv4",
        eth([0xff; 6], GN_MAC, 0x86dd, &[]),
        UpVerdict::Slow,
    ));
    for (what, frame, want) in cases {
        let (v, buf) = run_uplink(&snap, &frame);
        assert_eq!(v, want, "{what}");
        assert_eq!(
            buf[ENCAP_GROW..ENCAP_GROW + frame.len()],
            frame[..],
            "{what}"
        );
        assert!(buf[..ENCAP_GROW].iter().all(|b| *b == 0xee), "{what}");
    }
    // No room for the tag.
    let mut buf = vec![0u8; ENCAP_GROW + good.len()];
    buf[ENCAP_GROW..].copy_from_slice(&good);
    assert_eq!(
        uplink(&snap, &mut buf, good.len()),
        UpVerdict::Drop(FastDrop::NoRoom)
    );
    // Link not ready: everything from the GN goes to the control thread.
    fx.dp.set_link(None);
    assert_eq!(run_uplink(&fx.dp.snapshot(), &good).0, UpVerdict::Slow);
    assert_eq!(fx.stats().tx_packets, 0);
    assert_eq!(fx.seq.peek(), 1, "no sequence number spent");
}

// ------------------------------------------------------------------ downlink

#[test]
fn downlink_strips_to_the_exact_inner_packet_towards_the_gn() {
    for suite in SUITES {
        for len in [28, 64, 512, 1400, INNER_MTU] {
            let fx = plane(suite);
            let snap = fx.dp.snapshot();
            let inner = inner_packet(PEER_VIP, GN_VIP, len);
            let datagram = fx.data(7, &inner);
            let clear = datagram[HEADER_LEN..HEADER_LEN + len] == inner[..];
            assert_eq!(clear, suite == Suite::HmacSha256_128);
            let mut frame = wan_frame(peer(), &datagram);
            let v = downlink(&snap, &mut frame, 1000);
            let DownVerdict::Tx { offset, len: n } = v else {
                panic!("{suite:?} {len}: {v:?}")
            };
            let out = &frame[offset..offset + n];
            assert_eq!(out[0..6], GN_MAC);
            assert_eq!(out[6..12], LAN_MAC);
            assert_eq!(out[12..14], [0x08, 0x00]);
            assert_eq!(out[14..], inner[..], "{suite:?} {len}: decrypted in place");
            let st = fx.stats();
            assert_eq!((st.rx_packets, st.rx_bytes), (1, len as u64));
            assert_eq!(st.last_rx_from, Some(peer()));
            assert!(st.last_rx.is_some());
        }
    }
}

#[test]
fn downlink_ignores_ethernet_padding_and_outer_ip_options() {
    for suite in SUITES {
        let fx = plane(suite);
        let snap = fx.dp.snapshot();
        let inner = inner_packet(PEER_VIP, GN_VIP, 28);
        let mut frame = wan_frame(peer(), &fx.data(1, &inner));
        frame.extend_from_slice(&[0xaa; 6]);
        let DownVerdict::Tx { offset, len } = downlink(&snap, &mut frame, 0) else {
            panic!()
        };
        assert_eq!(frame[offset + 14..offset + len], inner[..]);

        // Outer IHL 6.
        let plain = wan_frame(peer(), &fx.data(2, &inner));
        let mut opt = plain[..34].to_vec();
        opt.extend_from_slice(&[1, 1, 1, 0]);
        opt.extend_from_slice(&plain[34..]);
        opt[14] = 0x46;
        let total = be16(&opt, 16) + 4;
        opt[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ip(&mut opt);
        let DownVerdict::Tx { offset, len } = downlink(&snap, &mut opt, 0) else {
            panic!()
        };
        assert_eq!(opt[offset + 14..offset + len], inner[..]);
    }
}

#[test]
fn downlink_keepalive_is_verified_recorded_and_consumed() {
    for suite in SUITES {
        let fx = plane(suite);
        let snap = fx.dp.snapshot();
        let mut frame = wan_frame(peer(), &fx.keepalive(3));
        assert_eq!(downlink(&snap, &mut frame, 5_000), DownVerdict::Consumed);
        let mut again = wan_frame(peer(), &fx.keepalive(3));
        assert_eq!(
            downlink(&snap, &mut again, 6_000),
            DownVerdict::Drop(FastDrop::Replay)
        );
        let mut forged = wan_frame(peer(), &fx.keepalive(4));
        let l = forged.len();
        forged[l - 1] ^= 0x80;
        assert_eq!(
            downlink(&snap, &mut forged, 6_000),
            DownVerdict::Drop(FastDrop::BadTag)
        );
        let st = fx.stats();
        assert_eq!((st.rx_keepalives, st.rx_packets), (1, 0));
        assert_eq!(st.last_rx_from, Some(peer()));
    }
}

#[test]
fn downlink_every_drop_reason_in_spec_order() {
    for suite in SUITES {
        every_drop_reason(suite);
    }
}

fn every_drop_reason(suite: Suite) {
    let fx = plane(suite);
    let snap = fx.dp.snapshot();
    let good_inner = inner_packet(PEER_VIP, GN_VIP, 64);
    let good = fx.data(100, &good_inner);
    let d = DownVerdict::Drop;
    let mut cases: Vec<(&str, Vec<u8>, DownVerdict)> = Vec::new();

    let frame = wan_frame(peer(), &good);
    cases.push((
        "13-byte frame",
        frame[..13].to_vec(),
        d(FastDrop::WanMalformed),
    ));
    cases.push((
        "no IPv4 header",
        frame[..30].to_vec(),
        d(FastDrop::WanMalformed),
    ));
    let mut ihl = frame.clone();
    ihl[14] = 0x43;
    cases.push(("IHL 3", ihl, d(FastDrop::WanMalformed)));
    let mut csum = frame.clone();
    csum[24] ^= 1;
    cases.push(("IPv4 checksum", csum, d(FastDrop::WanMalformed)));
    let mut src = frame.clone();
    src[26] ^= 1;
    cases.push((
        "source changed, checksum not",
        src,
        d(FastDrop::WanMalformed),
    ));
    let mut total = frame.clone();
    let t = be16(&total, 16) + 1;
    total[16..18].copy_from_slice(&t.to_be_bytes());
    fix_ip(&mut total);
    cases.push((
        "IPv4 total past the frame",
        total,
        d(FastDrop::WanMalformed),
    ));
    let mut tiny = frame.clone();
    tiny[16..18].copy_from_slice(&24u16.to_be_bytes());
    fix_ip(&mut tiny);
    cases.push(("IPv4 total below IP+UDP", tiny, d(FastDrop::WanMalformed)));
    let mut udp_long = frame.clone();
    let u = be16(&udp_long, 38) + 1;
    udp_long[38..40].copy_from_slice(&u.to_be_bytes());
    cases.push(("UDP length past IPv4", udp_long, d(FastDrop::WanMalformed)));
    let mut udp_short = frame.clone();
    udp_short[38..40].copy_from_slice(&7u16.to_be_bytes());
    cases.push(("UDP length 7", udp_short, d(FastDrop::WanMalformed)));

    cases.push((
        "31-byte datagram",
        wan_frame(peer(), &good[..31]),
        d(FastDrop::Truncated),
    ));
    let mut version = good.clone();
    version[0] = 1;
    cases.push((
        "version 1",
        wan_frame(peer(), &version),
        d(FastDrop::BadVersion),
    ));
    cases.push((
        "unknown tunnel",
        wan_frame(peer(), &sealed(&fx.peer_tx(), 7, 100, &good_inner)),
        d(FastDrop::UnknownTunnel),
    ));
    let other_suite = if suite == Suite::Aes256Gcm {
        Suite::HmacSha256_128
    } else {
        Suite::Aes256Gcm
    };
    let right_key_other_suite = Cipher::new(other_suite, &keys(Role::Responder).0).unwrap();
    cases.push((
        "the other suite",
        wan_frame(
            peer(),
            &sealed(&right_key_other_suite, TUNNEL, 100, &good_inner),
        ),
        d(FastDrop::UnsupportedSuite),
    ));
    let mut tag = good.clone();
    let l = tag.len();
    tag[l - 16] ^= 1;
    cases.push(("bad tag", wan_frame(peer(), &tag), d(FastDrop::BadTag)));
    let mut body = good.clone();
    body[HEADER_LEN + 30] ^= 1;
    cases.push((
        "changed body",
        wan_frame(peer(), &body),
        d(FastDrop::BadTag),
    ));
    let mut header = good.clone();
    header[2] ^= 0x80;
    cases.push((
        "changed flags",
        wan_frame(peer(), &header),
        d(FastDrop::BadTag),
    ));
    let other_key = Cipher::new(suite, &Key::from_bytes([1; 32])).unwrap();
    cases.push((
        "other key",
        wan_frame(peer(), &sealed(&other_key, TUNNEL, 100, &good_inner)),
        d(FastDrop::BadTag),
    ));
    cases.push((
        "K_tun itself",
        wan_frame(
            peer(),
            &sealed(
                &Cipher::new(suite, &Key::from_bytes(KEY)).unwrap(),
                TUNNEL,
                100,
                &good_inner,
            ),
        ),
        d(FastDrop::BadTag),
    ));
    cases.push((
        "our own DATA sent back",
        wan_frame(peer(), &sealed(&fx.our_tx(), TUNNEL, 100, &good_inner)),
        d(FastDrop::BadTag),
    ));
    cases.push((
        "not IPv4 inside",
        wan_frame(peer(), &fx.data(101, &[0x60; 40])),
        d(FastDrop::BadInner),
    ));
    cases.push((
        "19-byte inner",
        wan_frame(peer(), &fx.data(102, &[0x45; 19])),
        d(FastDrop::BadInner),
    ));
    cases.push((
        "inner source not the peer",
        wan_frame(peer(), &fx.data(103, &inner_packet(OTHER_VIP, GN_VIP, 64))),
        d(FastDrop::InnerAddr),
    ));
    cases.push((
        "inner destination not the GN",
        wan_frame(
            peer(),
            &fx.data(104, &inner_packet(PEER_VIP, OTHER_VIP, 64)),
        ),
        d(FastDrop::InnerAddr),
    ));
    // Accepted once, then the same seq is a replay.
    let tx = DownVerdict::Tx {
        offset: 44,
        len: 78,
    };
    cases.push(("valid", frame.clone(), tx));
    cases.push(("replayed", frame.clone(), d(FastDrop::Replay)));
    cases.push((
        "far ahead",
        wan_frame(peer(), &fx.data(100 + 2048 + 10, &good_inner)),
        tx,
    ));
    cases.push((
        "older than the window",
        wan_frame(peer(), &fx.data(110, &good_inner)),
        d(FastDrop::Replay),
    ));

    // Not for the fast path: handed over unchanged.
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    cases.push(("ARP", arp, DownVerdict::Slow));
    let mut frag = frame.clone();
    frag[20] = 0x20;
    fix_ip(&mut frag);
    cases.push(("fragment", frag, DownVerdict::Slow));
    let mut tcp = frame.clone();
    tcp[23] = 6;
    fix_ip(&mut tcp);
    cases.push(("TCP", tcp, DownVerdict::Slow));
    let mut port = frame.clone();
    port[36..38].copy_from_slice(&7710u16.to_be_bytes());
    cases.push(("another port", port, DownVerdict::Slow));
    let mut signaling = good.clone();
    signaling[1] = 0x30;
    cases.push(("TUN_REQ", wan_frame(peer(), &signaling), DownVerdict::Slow));

    for (what, frame, want) in cases {
        let mut buf = frame.clone();
        let v = downlink(&snap, &mut buf, 0);
        assert_eq!(v, want, "{suite:?}: {what}");
        // Decided before opening: unchanged. Suite 1 never changes a byte; suite 2
        // may leave a refused body decrypted (or wiped), but the frame is dropped.
        let before_open = matches!(
            v,
            DownVerdict::Slow
                | DownVerdict::Drop(
                    FastDrop::WanMalformed
                        | FastDrop::Truncated
                        | FastDrop::BadVersion
                        | FastDrop::UnknownTunnel
                        | FastDrop::UnsupportedSuite
                )
        );
        if before_open || (suite == Suite::HmacSha256_128 && v != tx) {
            assert_eq!(buf, frame, "{suite:?}: {what}: frame changed");
        }
    }
    // The forged copies of seq 100 came first and did not mark it: "valid" went through.
    assert_eq!(fx.stats().rx_packets, 2);

    // Authentic DATA while the link is down: nowhere to deliver it.
    fx.dp.set_link(None);
    let mut f = wan_frame(peer(), &fx.data(5000, &good_inner));
    assert_eq!(
        downlink(&fx.dp.snapshot(), &mut f, 0),
        DownVerdict::Drop(FastDrop::NotReady)
    );
}

/// Our own DATA and TUN_KEEPALIVE, captured and sent back to us from elsewhere (the
/// reflection attack on version 1, where both ends sealed with `K_tun`): the receive
/// direction key refuses them, so they neither move the replay window (a high seq
/// would push the peer's packets out of it) nor count as activity (a new source the
/// control would roam to).
#[test]
fn reflected_data_and_keepalive_are_bad_tag_and_move_nothing() {
    for suite in SUITES {
        let fx = plane(suite);
        let snap = fx.dp.snapshot();
        // The peer's first packet: the state the reflections must not change.
        let mut first = wan_frame(peer(), &fx.data(1, &inner_packet(PEER_VIP, GN_VIP, 64)));
        assert!(matches!(
            downlink(&snap, &mut first, 1_000),
            DownVerdict::Tx { .. }
        ));
        let before = fx.stats();
        // Our own DATA as the uplink produced it, with our counter far ahead.
        for _ in 0..5000 {
            fx.seq.next();
        }
        let (v, ours) = run_uplink(&snap, &gn_frame(&inner_packet(GN_VIP, PEER_VIP, 64)));
        let UpVerdict::Tx(n) = v else { panic!("{v:?}") };
        let reflected_data = ours[DG..n].to_vec();
        let mut ka = [0u8; 32];
        emit_tun_keepalive(&mut ka, TUNNEL, fx.seq.next(), &fx.our_tx()).unwrap();
        for (what, datagram) in [("DATA", &reflected_data[..]), ("TUN_KEEPALIVE", &ka[..])] {
            let mut f = wan_frame(elsewhere(), datagram);
            assert_eq!(
                downlink(&snap, &mut f, 2_000),
                DownVerdict::Drop(FastDrop::BadTag),
                "{suite:?}: reflected {what}"
            );
        }
        assert_eq!(fx.tunnel().replay.last(), 1, "{suite:?}: window moved");
        let after = fx.stats();
        assert_eq!(after.last_rx_from, Some(peer()), "{suite:?}: would roam");
        assert_eq!(
            after.last_rx, before.last_rx,
            "{suite:?}: counted as activity"
        );
        assert_eq!(
            (after.rx_packets, after.rx_keepalives),
            (before.rx_packets, 0)
        );
        // The peer's next packets still pass: seq 2 was not pushed out of the window.
        let mut next = wan_frame(peer(), &fx.data(2, &inner_packet(PEER_VIP, GN_VIP, 64)));
        assert!(matches!(
            downlink(&snap, &mut next, 3_000),
            DownVerdict::Tx { .. }
        ));
    }
}

/// §5: the body is one whole IPv4 packet. Version 1 delivered an inner header with
/// IHL 4, and an inner packet whose total length runs past the body, to the GN.
#[test]
fn bad_inner_packets_never_reach_the_gn() {
    for suite in SUITES {
        let fx = plane(suite);
        let snap = fx.dp.snapshot();
        let good = inner_packet(PEER_VIP, GN_VIP, 64);
        let mut ihl4 = good.clone();
        ihl4[0] = 0x44;
        let mut longer = good.clone();
        longer[2..4].copy_from_slice(&200u16.to_be_bytes());
        let mut shorter = good.clone();
        shorter[2..4].copy_from_slice(&40u16.to_be_bytes());
        let mut ihl_past_total = good.clone();
        ihl_past_total[0] = 0x4f;
        ihl_past_total[2..4].copy_from_slice(&40u16.to_be_bytes());
        ihl_past_total.truncate(40);
        let cases = [
            ("IHL 4", ihl4),
            ("total length > body", longer),
            ("total length < body", shorter),
            ("IHL past the total length", ihl_past_total),
        ];
        for (seq, (what, inner)) in (10..).zip(cases) {
            let mut f = wan_frame(peer(), &fx.data(seq, &inner));
            assert_eq!(
                downlink(&snap, &mut f, 1_000),
                DownVerdict::Drop(FastDrop::BadInner),
                "{suite:?}: {what}"
            );
        }
        let st = fx.stats();
        assert_eq!(st.rx_packets, 0, "{suite:?}: reached the GN");
        assert_eq!((st.last_rx, st.last_rx_from), (None, None));
    }
}

/// An authentic datagram that fails a later check (inner shape, inner addresses,
/// replay, link not ready) from a new source: it is dropped, so it is not activity,
/// and the control never sees a new source to roam to. Version 1 recorded receive time
/// and source before its inner-address checks.
#[test]
fn a_dropped_datagram_from_a_new_source_changes_nothing() {
    for suite in SUITES {
        let fx = plane(suite);
        let snap = fx.dp.snapshot();
        let mut first = wan_frame(peer(), &fx.data(1, &inner_packet(PEER_VIP, GN_VIP, 64)));
        assert!(matches!(
            downlink(&snap, &mut first, 1_000),
            DownVerdict::Tx { .. }
        ));
        let before = fx.stats();
        let mut ihl4 = inner_packet(PEER_VIP, GN_VIP, 64);
        ihl4[0] = 0x44;
        let cases = [
            (fx.data(2, &ihl4), FastDrop::BadInner),
            (
                fx.data(3, &inner_packet(OTHER_VIP, GN_VIP, 64)),
                FastDrop::InnerAddr,
            ),
            (
                fx.data(4, &inner_packet(PEER_VIP, OTHER_VIP, 64)),
                FastDrop::InnerAddr,
            ),
            (
                fx.data(1, &inner_packet(PEER_VIP, GN_VIP, 64)),
                FastDrop::Replay,
            ),
        ];
        for (datagram, why) in cases {
            let mut f = wan_frame(elsewhere(), &datagram);
            assert_eq!(
                downlink(&snap, &mut f, 9_000_000),
                DownVerdict::Drop(why),
                "{suite:?}"
            );
        }
        fx.dp.set_link(None);
        let mut f = wan_frame(
            elsewhere(),
            &fx.data(5, &inner_packet(PEER_VIP, GN_VIP, 64)),
        );
        assert_eq!(
            downlink(&fx.dp.snapshot(), &mut f, 9_000_000),
            DownVerdict::Drop(FastDrop::NotReady)
        );
        let after = fx.stats();
        assert_eq!(after.last_rx_from, Some(peer()), "{suite:?}");
        assert_eq!(after.last_rx, before.last_rx, "{suite:?}");
        assert_eq!(after.rx_packets, 1);
        assert_eq!(after.endpoint, endpoint());
    }
}

/// The set-up race: the peer sends DATA right after its TUN_RESP, before ours is
/// processed. A tunnel added for receiving (Event::TunnelAdded) delivers it; uplink
/// to the peer waits in the slow path until the tunnel is up (Event::TunnelUp).
#[test]
fn data_arriving_before_the_tunnel_is_up_is_delivered() {
    for suite in SUITES {
        let fx = plane_without_tunnel(suite);
        let inner = inner_packet(PEER_VIP, GN_VIP, 64);
        let up = gn_frame(&inner_packet(GN_VIP, PEER_VIP, 64));
        // Not directed yet: unknown.
        let mut f = wan_frame(peer(), &fx.data(1, &inner));
        assert_eq!(
            downlink(&fx.dp.snapshot(), &mut f, 0),
            DownVerdict::Drop(FastDrop::UnknownTunnel)
        );
        // Directed: it receives, and does not send yet.
        fx.dp.add_tunnel(&params(suite, &fx.seq)).unwrap();
        let snap = fx.dp.snapshot();
        let mut f = wan_frame(peer(), &fx.data(2, &inner));
        let DownVerdict::Tx { offset, len } = downlink(&snap, &mut f, 0) else {
            panic!("{suite:?}: DATA before TUN_RESP was not delivered")
        };
        assert_eq!(f[offset + ETH_LEN..offset + len], inner[..]);
        let mut ka = wan_frame(peer(), &fx.keepalive(3));
        assert_eq!(downlink(&snap, &mut ka, 0), DownVerdict::Consumed);
        assert_eq!(run_uplink(&snap, &up).0, UpVerdict::Slow);
        let st = fx.stats();
        assert!(!st.sending);
        assert_eq!((st.rx_packets, st.rx_keepalives), (1, 1));
        // Up: the same entry (window and counters) now sends too.
        fx.dp.tunnel_up(&params(suite, &fx.seq)).unwrap();
        let snap = fx.dp.snapshot();
        assert!(matches!(run_uplink(&snap, &up).0, UpVerdict::Tx(_)));
        let mut again = wan_frame(peer(), &fx.data(2, &inner));
        assert_eq!(
            downlink(&snap, &mut again, 0),
            DownVerdict::Drop(FastDrop::Replay)
        );
        let st = fx.stats();
        assert!(st.sending);
        assert_eq!((st.rx_packets, st.tx_packets), (1, 1));
    }
}

// ------------------------------------------------------------------ several GNs

const GN2_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
const GN2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// A VIP no tunnel leads to.
const LONELY_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 99);

/// Tunnel `id` of the GN `gn` to `peer`, our end the initiator (the keys of [`params`]).
fn gn_params(id: u32, gn: Ipv4Addr, peer: Ipv4Addr, suite: Suite) -> TunnelParams {
    TunnelParams {
        tunnel_id: id,
        peer_vip: peer,
        local_vip: gn,
        ..params(suite, &SeqCounter::starting_at(1))
    }
}

/// Uplink of a packet from `gn` (MAC `mac`) to the peer: the tunnel id on the wire, and
/// the peer opens it as a packet from `gn`.
fn uplink_from(snap: &Snapshot, suite: Suite, gn: Ipv4Addr, mac: [u8; 6]) -> u32 {
    let inner = inner_packet(gn, PEER_VIP, 64);
    let (v, buf) = run_uplink(snap, &eth(LAN_MAC, mac, 0x0800, &inner));
    let UpVerdict::Tx(n) = v else {
        panic!("{suite:?} from {gn}: {v:?}")
    };
    let rx = Cipher::new(suite, &keys(Role::Responder).1).unwrap();
    let mut rx = RxTunnel::new(rx, gn, PEER_VIP);
    let mut wire = buf[DG..n].to_vec();
    let Ok(Decapped::Data { inner: got, .. }) = decap(&mut wire, |_| Some(&mut rx)) else {
        panic!("{suite:?} from {gn}: the peer cannot open it")
    };
    assert_eq!(got, &inner[..]);
    u32::from_be_bytes(buf[DG + 4..DG + 8].try_into().unwrap())
}

/// Downlink of DATA on tunnel `id` to `gn`: the MAC it is sent to.
fn downlink_to(snap: &Snapshot, peer_tx: &Cipher, id: u32, seq: u64, gn: Ipv4Addr) -> [u8; 6] {
    let inner = inner_packet(PEER_VIP, gn, 64);
    let mut f = wan_frame(peer(), &sealed(peer_tx, id, seq, &inner));
    let v = downlink(snap, &mut f, 0);
    let DownVerdict::Tx { offset, len } = v else {
        panic!("tunnel {id} to {gn}: {v:?}")
    };
    assert_eq!(f[offset + ETH_LEN..offset + len], inner[..]);
    assert_eq!(f[offset + 6..offset + 12], LAN_MAC);
    f[offset..offset + 6].try_into().unwrap()
}

/// Two GNs, each with its own tunnel to the same peer VIP: each GN's packets go
/// through its own tunnel, each tunnel's DATA to its own GN, and a tunnel cannot
/// reach the other GN.
#[test]
fn two_gns_use_their_own_tunnels_to_one_peer() {
    const T2: u32 = TUNNEL + 2;
    for suite in SUITES {
        let fx = plane(suite);
        let gn2 = GnLink {
            vip: GN2_VIP,
            mac: Some(MacAddr(GN2_MAC)),
        };
        fx.dp.set_gns(&[gn(), gn2]);
        fx.dp
            .tunnel_up(&gn_params(T2, GN2_VIP, PEER_VIP, suite))
            .unwrap();
        let snap = fx.dp.snapshot();
        assert_eq!(snap.gns(), vec![gn(), gn2]);
        assert_eq!(uplink_from(&snap, suite, GN_VIP, GN_MAC), TUNNEL);
        assert_eq!(uplink_from(&snap, suite, GN2_VIP, GN2_MAC), T2);
        let peer_tx = fx.peer_tx();
        assert_eq!(downlink_to(&snap, &peer_tx, TUNNEL, 1, GN_VIP), GN_MAC);
        assert_eq!(downlink_to(&snap, &peer_tx, T2, 1, GN2_VIP), GN2_MAC);
        // GN1's tunnel carrying a packet for GN2 (and the other way): the inner
        // destination is not the tunnel's GN.
        for (id, to) in [(TUNNEL, GN2_VIP), (T2, GN_VIP)] {
            let inner = inner_packet(PEER_VIP, to, 64);
            let mut f = wan_frame(peer(), &sealed(&peer_tx, id, 2, &inner));
            assert_eq!(
                downlink(&snap, &mut f, 0),
                DownVerdict::Drop(FastDrop::InnerAddr),
                "{suite:?}: tunnel {id} to {to}"
            );
        }
        // GN to GN: they meet on the LAN, not here.
        let (v, _) = run_uplink(&snap, &gn_frame(&inner_packet(GN_VIP, GN2_VIP, 64)));
        assert_eq!(v, UpVerdict::Drop(FastDrop::LanToGn));
        // A GN to a VIP without a tunnel of its own, outside the GN set to anywhere.
        for (src, dst, want) in [
            (GN_VIP, LONELY_VIP, UpVerdict::Slow),
            (OTHER_VIP, LONELY_VIP, UpVerdict::Slow),
            (OTHER_VIP, PEER_VIP, UpVerdict::Drop(FastDrop::LanBadSource)),
            (OTHER_VIP, GN_VIP, UpVerdict::Slow),
        ] {
            let frame = gn_frame(&inner_packet(src, dst, 64));
            let (v, buf) = run_uplink(&snap, &frame);
            assert_eq!(v, want, "{suite:?}: {src} to {dst}");
            assert_eq!(buf[ENCAP_GROW..ENCAP_GROW + frame.len()], frame[..]);
        }
        let stats = fx.dp.tunnel_stats();
        assert_eq!(
            stats.iter().map(|t| t.tx_packets).collect::<Vec<_>>(),
            [1, 1]
        );
        assert_eq!(
            stats.iter().map(|t| t.rx_packets).collect::<Vec<_>>(),
            [1, 1]
        );
    }
}

/// A GN known by its VIP only: its packets go up, DATA to it waits for its MAC (and
/// is not activity meanwhile). A GN that leaves the set takes its tunnels' uplink with
/// it.
#[test]
fn a_gn_without_a_mac_sends_but_receives_only_once_its_mac_is_known() {
    for suite in SUITES {
        let fx = plane(suite);
        fx.dp.set_gns(&[GnLink {
            vip: GN_VIP,
            mac: None,
        }]);
        let snap = fx.dp.snapshot();
        assert_eq!(uplink_from(&snap, suite, GN_VIP, GN_MAC), TUNNEL);
        let inner = inner_packet(PEER_VIP, GN_VIP, 64);
        let mut f = wan_frame(peer(), &fx.data(1, &inner));
        assert_eq!(
            downlink(&snap, &mut f, 0),
            DownVerdict::Drop(FastDrop::NotReady)
        );
        let st = fx.stats();
        assert_eq!((st.rx_packets, st.last_rx), (0, None));
        fx.dp.set_gns(&[gn()]);
        assert_eq!(
            downlink_to(&fx.dp.snapshot(), &fx.peer_tx(), TUNNEL, 2, GN_VIP),
            GN_MAC
        );
        // Gone from the set: its packets are no GN's (slow: no tunnel of a GN leads
        // to the peer), DATA to it is not ready.
        fx.dp.set_gns(&[]);
        let snap = fx.dp.snapshot();
        let up = gn_frame(&inner_packet(GN_VIP, PEER_VIP, 64));
        assert_eq!(run_uplink(&snap, &up).0, UpVerdict::Slow);
        let mut f = wan_frame(peer(), &fx.data(3, &inner));
        assert_eq!(
            downlink(&snap, &mut f, 0),
            DownVerdict::Drop(FastDrop::NotReady)
        );
        // The set given again: the same tunnel carries on.
        fx.dp.set_gns(&[gn()]);
        assert_eq!(
            uplink_from(&fx.dp.snapshot(), suite, GN_VIP, GN_MAC),
            TUNNEL
        );
        assert_eq!(fx.stats().tx_packets, 2);
    }
}

/// Each of two GNs has its own newest tunnel to one peer: a newer tunnel of one GN
/// does not take the other's uplink.
#[test]
fn the_newest_tunnel_wins_per_gn_and_peer() {
    let suite = Suite::Aes256Gcm;
    let fx = plane(suite);
    fx.dp.set_gns(&[
        gn(),
        GnLink {
            vip: GN2_VIP,
            mac: Some(MacAddr(GN2_MAC)),
        },
    ]);
    fx.dp
        .tunnel_up(&gn_params(20, GN2_VIP, PEER_VIP, suite))
        .unwrap();
    fx.dp
        .tunnel_up(&gn_params(11, GN_VIP, PEER_VIP, suite))
        .unwrap();
    fx.dp
        .tunnel_up(&gn_params(21, GN2_VIP, PEER_VIP, suite))
        .unwrap();
    let snap = fx.dp.snapshot();
    assert_eq!(uplink_from(&snap, suite, GN_VIP, GN_MAC), 11);
    assert_eq!(uplink_from(&snap, suite, GN2_VIP, GN2_MAC), 21);
    fx.dp.remove_tunnel(21);
    fx.dp.remove_tunnel(11);
    let snap = fx.dp.snapshot();
    assert_eq!(uplink_from(&snap, suite, GN_VIP, GN_MAC), TUNNEL);
    assert_eq!(uplink_from(&snap, suite, GN2_VIP, GN2_MAC), 20);
}

/// 254 GNs (a /24 of them), each with a tunnel to the same peer VIP: every lookup
/// finds the GN's own tunnel and MAC.
#[test]
fn two_hundred_fifty_four_gns_each_with_a_tunnel() {
    let suite = Suite::Aes256Gcm;
    let dp = DatapathState::new(&DatapathStateConfig::default()).unwrap();
    dp.set_link(Some(link()));
    let gns: Vec<GnLink> = (1..=254u8)
        .map(|i| GnLink {
            vip: Ipv4Addr::new(100, 64, 1, i),
            mac: Some(MacAddr([0x02, 0, 0, 1, 0, i])),
        })
        .collect();
    dp.set_gns(&gns);
    let id = |i: usize| 0x1000 + i as u32;
    for (i, g) in gns.iter().enumerate() {
        dp.tunnel_up(&gn_params(id(i), g.vip, PEER_VIP, suite))
            .unwrap();
    }
    let snap = dp.snapshot();
    assert_eq!((snap.len(), snap.gns().len()), (254, 254));
    let peer_tx = Cipher::new(suite, &keys(Role::Responder).0).unwrap();
    for (i, g) in gns.iter().enumerate() {
        let mac = g.mac.unwrap().0;
        assert_eq!(uplink_from(&snap, suite, g.vip, mac), id(i), "{}", g.vip);
        assert_eq!(downlink_to(&snap, &peer_tx, id(i), 1, g.vip), mac);
    }
    // One GN's tunnel cannot reach its neighbour.
    let inner = inner_packet(PEER_VIP, gns[1].vip, 64);
    let mut f = wan_frame(peer(), &sealed(&peer_tx, id(0), 2, &inner));
    assert_eq!(
        downlink(&snap, &mut f, 0),
        DownVerdict::Drop(FastDrop::InnerAddr)
    );
}

#[test]
fn removed_tunnel_is_unknown_and_its_vip_goes_slow() {
    let fx = plane(Suite::Aes256Gcm);
    fx.dp.remove_tunnel(TUNNEL);
    let snap = fx.dp.snapshot();
    let inner = inner_packet(PEER_VIP, GN_VIP, 64);
    let mut f = wan_frame(peer(), &fx.data(1, &inner));
    assert_eq!(
        downlink(&snap, &mut f, 0),
        DownVerdict::Drop(FastDrop::UnknownTunnel)
    );
    let up = gn_frame(&inner_packet(GN_VIP, PEER_VIP, 64));
    assert_eq!(run_uplink(&snap, &up).0, UpVerdict::Slow);
}

#[test]
fn set_endpoint_takes_effect_without_a_new_snapshot() {
    let fx = plane(Suite::Aes256Gcm);
    let snap = fx.dp.snapshot();
    let roamed: SocketAddrV4 = "198.18.0.11:41000".parse().unwrap();
    assert!(fx.dp.set_endpoint(TUNNEL, roamed));
    assert!(!fx.dp.set_endpoint(TUNNEL + 1, roamed));
    let (_, buf) = run_uplink(&snap, &gn_frame(&inner_packet(GN_VIP, PEER_VIP, 64)));
    assert_eq!(buf[30..34], roamed.ip().octets());
    assert_eq!(be16(&buf, 36), roamed.port());
    assert_eq!(fx.stats().endpoint, roamed);
}

/// Two adapters with mirrored tunnels (initiator and responder ends): what one
/// encapsulates, the other delivers, in both suites.
#[test]
fn round_trip_between_two_adapters() {
    for suite in SUITES {
        let a = plane(suite);
        let b = DatapathState::new(&DatapathStateConfig::default()).unwrap();
        b.set_link(Some(link()));
        b.set_gns(&[GnLink {
            vip: PEER_VIP,
            ..gn()
        }]);
        let (tx_key, rx_key) = keys(Role::Responder);
        b.tunnel_up(&TunnelParams {
            peer_vip: GN_VIP,
            role: Role::Responder,
            tx_key,
            rx_key,
            local_vip: PEER_VIP,
            ..params(suite, &SeqCounter::starting_at(1))
        })
        .unwrap();
        for len in [28, 700, INNER_MTU] {
            let inner = inner_packet(GN_VIP, PEER_VIP, len);
            let (v, buf) = run_uplink(&a.dp.snapshot(), &gn_frame(&inner));
            let UpVerdict::Tx(n) = v else { panic!() };
            let mut wire = buf[..n].to_vec();
            let DownVerdict::Tx { offset, len: m } = downlink(&b.snapshot(), &mut wire, 0) else {
                panic!("{suite:?} {len}")
            };
            assert_eq!(wire[offset + ETH_LEN..offset + m], inner[..]);
            // And a's own datagram never opens at a.
            let mut back = buf[..n].to_vec();
            assert_eq!(
                downlink(&a.dp.snapshot(), &mut back, 0),
                DownVerdict::Drop(FastDrop::BadTag)
            );
        }
    }
}

/// Workers race on one tunnel with the same datagrams: each is delivered exactly once.
#[test]
fn two_workers_deliver_each_datagram_once() {
    let fx = plane(Suite::Aes256Gcm);
    let inner = inner_packet(PEER_VIP, GN_VIP, 64);
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (1..=3000u64)
            .map(|s| wan_frame(peer(), &fx.data(s, &inner)))
            .collect(),
    );
    let dp = Arc::new(fx.dp);
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let dp = Arc::clone(&dp);
            let frames = Arc::clone(&frames);
            std::thread::spawn(move || {
                let snap = dp.snapshot();
                let (mut delivered, mut replays) = (0u64, 0u64);
                let order: Vec<usize> = if w == 0 {
                    (0..frames.len()).collect()
                } else {
                    (0..frames.len()).rev().collect()
                };
                for i in order {
                    let mut f = frames[i].clone();
                    match downlink(&snap, &mut f, 0) {
                        DownVerdict::Tx { .. } => delivered += 1,
                        DownVerdict::Drop(FastDrop::Replay) => replays += 1,
                        v => panic!("{v:?}"),
                    }
                }
                (delivered, replays)
            })
        })
        .collect();
    let (mut delivered, mut replays) = (0, 0);
    for w in workers {
        let (d, r) = w.join().unwrap();
        delivered += d;
        replays += r;
    }
    assert!(delivered <= 3000);
    assert_eq!(delivered + replays, 6000);
    assert_eq!(dp.tunnel_stats()[0].rx_packets, delivered);
}

fn any_suite() -> impl Strategy<Value = Suite> {
    prop_oneof![Just(Suite::HmacSha256_128), Just(Suite::Aes256Gcm)]
}

proptest! {
    /// Random frames never panic, in either direction.
    #[test]
    fn random_frames_never_panic(
        suite in any_suite(),
        bytes in proptest::collection::vec(any::<u8>(), 0..1600),
    ) {
        let fx = plane(suite);
        let snap = fx.dp.snapshot();
        let _ = run_uplink(&snap, &bytes);
        let mut b = bytes.clone();
        let _ = downlink(&snap, &mut b, 0);
    }

    /// Any change to the datagram of a valid DATA keeps it from the GN.
    #[test]
    fn changed_datagrams_never_reach_the_gn(suite in any_suite(), at in 0usize..96, bit in 0u8..8) {
        let fx = plane(suite);
        let snap = fx.dp.snapshot();
        let datagram = fx.data(9, &inner_packet(PEER_VIP, GN_VIP, 64));
        let mut changed = datagram.clone();
        changed[at] ^= 1 << bit;
        let mut f = wan_frame(peer(), &changed);
        let v = downlink(&snap, &mut f, 0);
        prop_assert!(!matches!(v, DownVerdict::Tx { .. }), "{:?}", v);
        prop_assert_eq!(fx.stats().rx_packets, 0);
        prop_assert_eq!(fx.stats().last_rx_from, None);
    }

    /// Valid GN frames of any length up to the MTU round-trip through ntm-proto decap.
    #[test]
    fn uplink_round_trips_any_length(suite in any_suite(), len in 28usize..=INNER_MTU) {
        let fx = plane(suite);
        let inner = inner_packet(GN_VIP, PEER_VIP, len);
        let (v, buf) = run_uplink(&fx.dp.snapshot(), &gn_frame(&inner));
        let UpVerdict::Tx(n) = v else { panic!("{v:?}") };
        prop_assert_eq!(n, OUTER_LEN + len + TAG_LEN);
        let mut rx = fx.peer_rx();
        let mut wire = buf[DG..n].to_vec();
        let got = decap(&mut wire, |_| Some(&mut rx));
        let same = matches!(got, Ok(Decapped::Data { inner: i, .. }) if i == &inner[..]);
        prop_assert!(same, "{:?}", got);
    }
}

#[test]
fn config_validation() {
    let xdp = ntma_common::XdpConfig::new(0x6440_0000, 10, 0x6440_0001, 7700);
    let ok = AfXdpConfig::new("lan0", "wan0", xdp);
    ok.validate().unwrap();
    let bad = |f: &dyn Fn(&mut AfXdpConfig)| {
        let mut c = ok.clone();
        f(&mut c);
        match c.validate() {
            Err(FastpathError::Config(m)) => m,
            other => panic!("{other:?}"),
        }
    };
    assert!(bad(&|c| c.wan_if = "lan0".into()).contains("differ"));
    assert!(bad(&|c| c.queues = 0).contains("queues"));
    assert!(bad(&|c| c.queues = 65).contains("queues"));
    assert!(bad(&|c| c.xdp = ntma_common::XdpConfig::default()).contains("XDP"));
    assert!(bad(&|c| c.rx_ring = 1000).contains("rx_ring"));
    assert!(bad(&|c| c.batch = 0).contains("batch"));
    // The configuration file's limits, named by its keys.
    assert!(bad(&|c| c.batch = 1025).contains("datapath.batch = 1025"));
    assert!(bad(&|c| c.rx_ring = 32).contains("datapath.rx_ring = 32"));
    assert!(bad(&|c| c.umem.frame_count = 64).contains("frame_count"));
    assert!(bad(&|c| c.slow_slots = 0).contains("slow_slots"));
    assert!(bad(&|c| c.cores = vec![100_000]).contains("core 100000"));
    assert!(bad(&|c| c.umem.headroom = 32).contains("headroom"));
}

#[test]
fn the_xdp_programs_and_the_proto_crate_agree_on_the_version() {
    assert_eq!(ntma_common::ntm::VERSION, ntm_proto::wire::VERSION);
    assert_eq!(ntma_common::ntm::VERSION, 2);
}

// ----- §5/§6 MTU: MSS clamp ---------------------------------------------------

/// An IPv4/TCP segment from `src` to `dst` with `flags` and the options `opts`
/// (padded to 4 bytes), a correct TCP checksum and 10 bytes of payload.
fn tcp_segment(src: Ipv4Addr, dst: Ipv4Addr, flags: u8, opts: &[u8]) -> Vec<u8> {
    let mut o = opts.to_vec();
    while !o.len().is_multiple_of(4) {
        o.push(0);
    }
    let tcp_len = 20 + o.len() + 10;
    let mut p = vec![0u8; 20 + tcp_len];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let o_len = o.len();
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    t[12] = (((20 + o_len) / 4) << 4) as u8;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..20 + o_len].copy_from_slice(&o);
    for (i, b) in t[20 + o_len..].iter_mut().enumerate() {
        *b = 0xa0 + i as u8;
    }
    let c = tcp_checksum(&p);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// The TCP checksum of the IPv4 packet `p`, computed from scratch (checksum field
/// taken as zero).
fn tcp_checksum(p: &[u8]) -> u16 {
    let mut t = p[20..].to_vec();
    t[16..18].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&t);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    ipv4_checksum(&pseudo)
}

fn mss_of(p: &[u8]) -> Option<u16> {
    let t = &p[20..];
    let end = usize::from(t[12] >> 4) * 4;
    let mut at = 20;
    while at < end {
        match t[at] {
            0 => return None,
            1 => at += 1,
            2 => return Some(u16::from_be_bytes([t[at + 2], t[at + 3]])),
            _ => at += usize::from(t[at + 1]),
        }
    }
    None
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
/// MSS 1460, SACK permitted, timestamps, NOP, window scale: Linux's SYN options.
const LINUX_SYN_OPTS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

#[test]
fn clamp_mss_rewrites_only_larger_mss_of_syns_with_a_correct_checksum() {
    use crate::wire::tcp::clamp_mss;
    // Aligned (MSS first) and misaligned (after one NOP) options.
    for opts in [&LINUX_SYN_OPTS[..], &[1, 2, 4, 0x05, 0xb4, 1, 1, 1][..]] {
        for flags in [SYN, SYN_ACK] {
            let mut p = tcp_segment(GN_VIP, PEER_VIP, flags, opts);
            let before = p.clone();
            assert!(clamp_mss(&mut p, 1400), "{opts:?} {flags:#x}");
            assert_eq!(mss_of(&p), Some(1400));
            assert_eq!(
                u16::from_be_bytes([p[36], p[37]]),
                tcp_checksum(&p),
                "incremental checksum equals a full recomputation"
            );
            // Nothing else changed.
            let changed: Vec<usize> = (0..p.len()).filter(|&i| p[i] != before[i]).collect();
            assert!(
                changed.iter().all(|&i| (36..38).contains(&i) || i >= 40),
                "{changed:?}"
            );
        }
    }
    // Already small enough: untouched.
    let mut small = tcp_segment(GN_VIP, PEER_VIP, SYN, &[2, 4, 0x05, 0x00]);
    let before = small.clone();
    assert!(!clamp_mss(&mut small, 1400));
    assert_eq!(small, before);
    // Not a SYN, no MSS option, a fragment, not TCP, bad options: untouched.
    let mut cases = vec![
        tcp_segment(GN_VIP, PEER_VIP, ACK, &LINUX_SYN_OPTS),
        tcp_segment(GN_VIP, PEER_VIP, SYN, &[1, 1, 4, 2]),
        tcp_segment(GN_VIP, PEER_VIP, SYN, &[3, 9, 2, 4, 0x05, 0xb4]),
        tcp_segment(GN_VIP, PEER_VIP, SYN, &[0, 0, 2, 4, 0x05, 0xb4]),
    ];
    let mut frag = tcp_segment(GN_VIP, PEER_VIP, SYN, &LINUX_SYN_OPTS);
    frag[6] = 0x20;
    cases.push(frag);
    let mut udp = tcp_segment(GN_VIP, PEER_VIP, SYN, &LINUX_SYN_OPTS);
    udp[9] = 17;
    cases.push(udp);
    for mut p in cases {
        let before = p.clone();
        assert!(!clamp_mss(&mut p, 1400));
        assert_eq!(p, before);
    }
}

#[test]
fn uplink_and_downlink_clamp_syn_mss_to_the_inner_mtu_minus_40() {
    for suite in SUITES {
        for inner_mtu in [1440u16, 1340] {
            let dp = DatapathState::new(&DatapathStateConfig {
                inner_mtu,
                ..DatapathStateConfig::default()
            })
            .unwrap();
            ready(&dp);
            let seq = SeqCounter::starting_at(1);
            dp.tunnel_up(&params(suite, &seq)).unwrap();
            let fx = Fx { suite, dp, seq };
            let snap = fx.dp.snapshot();
            // Uplink: the GN's SYN.
            let syn = tcp_segment(GN_VIP, PEER_VIP, SYN, &LINUX_SYN_OPTS);
            let (v, buf) = run_uplink(&snap, &gn_frame(&syn));
            let UpVerdict::TxClamped(n) = v else {
                panic!("{v:?}")
            };
            let mut rx = fx.peer_rx();
            let mut wire = buf[DG..n].to_vec();
            let Ok(Decapped::Data { inner, .. }) = decap(&mut wire, |_| Some(&mut rx)) else {
                panic!("decap")
            };
            assert_eq!(mss_of(inner), Some(inner_mtu - 40));
            assert_eq!(
                u16::from_be_bytes([inner[36], inner[37]]),
                tcp_checksum(inner)
            );
            // Downlink: the peer's SYN-ACK.
            let syn_ack = tcp_segment(PEER_VIP, GN_VIP, SYN_ACK, &LINUX_SYN_OPTS);
            let mut frame = wan_frame(peer(), &fx.data(3, &syn_ack));
            let v = downlink(&snap, &mut frame, 1000);
            let DownVerdict::TxClamped { offset, len } = v else {
                panic!("{v:?}")
            };
            let got = &frame[offset + ETH_LEN..offset + len];
            assert_eq!(mss_of(got), Some(inner_mtu - 40));
            assert_eq!(u16::from_be_bytes([got[36], got[37]]), tcp_checksum(got));
            // Non-SYN segments and small MSS values pass untouched.
            let ack = tcp_segment(
                GN_VIP,
                PEER_VIP,
                ACK,
                &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            );
            assert!(matches!(
                run_uplink(&snap, &gn_frame(&ack)).0,
                UpVerdict::Tx(_)
            ));
            let small = tcp_segment(PEER_VIP, GN_VIP, SYN_ACK, &[2, 4, 0x04, 0x00]);
            let mut frame = wan_frame(peer(), &fx.data(4, &small));
            let v = downlink(&snap, &mut frame, 1000);
            let DownVerdict::Tx { offset, len } = v else {
                panic!("{v:?}")
            };
            assert_eq!(frame[offset + ETH_LEN..offset + len], small[..]);
        }
    }
}

#[test]
fn packets_over_the_inner_mtu_go_to_the_slow_path_unchanged() {
    let dp = DatapathState::new(&DatapathStateConfig {
        inner_mtu: 1340,
        ..DatapathStateConfig::default()
    })
    .unwrap();
    ready(&dp);
    let seq = SeqCounter::starting_at(1);
    dp.tunnel_up(&params(Suite::Aes256Gcm, &seq)).unwrap();
    let snap = dp.snapshot();
    let fits = gn_frame(&inner_packet(GN_VIP, PEER_VIP, 1340));
    assert!(matches!(run_uplink(&snap, &fits).0, UpVerdict::Tx(_)));
    let over = gn_frame(&inner_packet(GN_VIP, PEER_VIP, 1341));
    let (v, buf) = run_uplink(&snap, &over);
    assert_eq!(v, UpVerdict::TooBig);
    assert_eq!(buf[ENCAP_GROW..ENCAP_GROW + over.len()], over[..]);
}

// ------------------------------------------------------------------ bursts

/// A plane with the tunnel of [`plane`] and a second one from the GN to
/// [`OTHER_VIP`] (same keys, its own send counter).
fn plane_with_two_tunnels(suite: Suite) -> Fx {
    let fx = plane(suite);
    fx.dp
        .tunnel_up(&gn_params(TUNNEL + 1, GN_VIP, OTHER_VIP, suite))
        .unwrap();
    fx
}

/// What a tunnel's counters say, without the time of its last arrival (each plane
/// has its own epoch).
fn counted(dp: &DatapathState) -> Vec<TunnelStats> {
    let mut v = dp.tunnel_stats();
    for t in &mut v {
        assert_eq!(t.last_rx.is_some(), t.rx_accepted() > 0);
        t.last_rx = None;
    }
    v
}

/// The burst functions the workers call give every frame the verdict and bytes the
/// per-packet functions give it in the same order (with runs of one tunnel and
/// frames of others, slow and refused between them), and leave the same sequence
/// numbers, counters, activity and source per tunnel.
#[test]
fn bursts_give_the_bytes_and_counters_of_the_per_packet_functions() {
    use super::burst::{downlink_burst, uplink_burst};
    for suite in SUITES {
        let (a, b) = (plane_with_two_tunnels(suite), plane_with_two_tunnels(suite));
        let to = |dst| gn_frame(&inner_packet(GN_VIP, dst, 100));
        let up: Vec<Vec<u8>> = [
            PEER_VIP, PEER_VIP, OTHER_VIP, PEER_VIP, OTHER_VIP, OTHER_VIP, LONELY_VIP, PEER_VIP,
        ]
        .into_iter()
        .map(|dst| {
            let f = to(dst);
            let mut buf = vec![0xee; ENCAP_GROW + f.len() + ENCAP_TAIL];
            buf[ENCAP_GROW..ENCAP_GROW + f.len()].copy_from_slice(&f);
            buf
        })
        .collect();
        let lens = vec![14 + 100; up.len()];
        let (mut burst, mut one) = (up.clone(), up);
        let mut verdicts = Vec::new();
        uplink_burst(&a.dp.snapshot(), &mut burst[..], &lens, &mut verdicts);
        let snap = b.dp.snapshot();
        let each: Vec<UpVerdict> = one
            .iter_mut()
            .map(|buf| uplink(&snap, buf, 14 + 100))
            .collect();
        assert_eq!(verdicts, each, "{suite:?}");
        assert_eq!(verdicts[6], UpVerdict::Slow);
        assert_eq!(burst, one, "{suite:?}: the same bytes");
        assert_eq!(counted(&a.dp), counted(&b.dp));
        assert_eq!(a.stats().next_tx_seq, 5, "four DATA on the first tunnel");

        let data = |id, seq, src, from| {
            let inner = inner_packet(src, GN_VIP, 90);
            wan_frame(from, &sealed(&a.peer_tx(), id, seq, &inner))
        };
        let down = vec![
            data(TUNNEL, 1, PEER_VIP, peer()),
            data(TUNNEL, 2, PEER_VIP, peer()),
            data(TUNNEL + 1, 1, OTHER_VIP, peer()),
            wan_frame(peer(), &a.keepalive(3)),
            data(TUNNEL, 2, PEER_VIP, peer()),
            data(TUNNEL, 4, PEER_VIP, elsewhere()),
            data(TUNNEL + 1, 2, OTHER_VIP, peer()),
        ];
        let (mut burst, mut one) = (down.clone(), down);
        let mut verdicts = Vec::new();
        downlink_burst(&a.dp.snapshot(), &mut burst[..], 7, &mut verdicts);
        let each: Vec<DownVerdict> = one.iter_mut().map(|f| downlink(&snap, f, 7)).collect();
        assert_eq!(verdicts, each, "{suite:?}");
        assert_eq!(verdicts[4], DownVerdict::Drop(FastDrop::Replay));
        assert_eq!(burst, one, "{suite:?}: the same bytes");
        let (got, want) = (counted(&a.dp), counted(&b.dp));
        assert_eq!(got, want);
        assert_eq!(got[0].last_rx_from, Some(elsewhere()), "the last source");
        assert_eq!((got[0].rx_packets, got[0].rx_keepalives), (3, 1));
    }
}

/// A VIP the third tunnel of [`plane_of_mixed_suites`] leads to.
const THIRD_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 78);
const THIRD_KEY: [u8; 32] = [0x17; 32];

/// A suite-1 plane with the tunnels of [`plane_with_two_tunnels`], the second one in
/// suite 2, and a third one (suite 1, keys of its own) to [`THIRD_VIP`]: the peer's
/// send keys of the three.
fn plane_of_mixed_suites() -> (Fx, [Cipher; 3]) {
    let fx = plane(Suite::HmacSha256_128);
    let gcm = Suite::Aes256Gcm;
    fx.dp
        .tunnel_up(&gn_params(TUNNEL + 1, GN_VIP, OTHER_VIP, gcm))
        .unwrap();
    let third = DirectionKeys::derive(&Key::from_bytes(THIRD_KEY));
    fx.dp
        .tunnel_up(&TunnelParams {
            tx_key: third.i2r.clone(),
            rx_key: third.r2i.clone(),
            ..gn_params(TUNNEL + 2, GN_VIP, THIRD_VIP, Suite::HmacSha256_128)
        })
        .unwrap();
    let peer_tx = [
        fx.peer_tx(),
        Cipher::new(gcm, &keys(Role::Responder).0).unwrap(),
        Cipher::new(Suite::HmacSha256_128, &third.r2i).unwrap(),
    ];
    (fx, peer_tx)
}

/// Bursts longer than one chunk of frames to suite-1 and suite-2 tunnels of several
/// keys and lengths, with slow-path frames, bad tags, a wrong suite, replays (one of
/// the seq of a forged datagram before it, which must not have moved the window) and
/// bad inner packets among them: the verdicts, bytes and counters of the per-packet
/// functions.
#[test]
fn bursts_of_mixed_suites_and_refusals_are_the_per_packet_functions() {
    use super::burst::{downlink_burst, uplink_burst};
    let ((a, ciphers), (b, _)) = (plane_of_mixed_suites(), plane_of_mixed_suites());
    let vips = [PEER_VIP, OTHER_VIP, THIRD_VIP];
    let sizes = [28, 29, 63, 64, 65, 100, 1400, 1441, 555];
    let mut up = Vec::new();
    let mut lens = Vec::new();
    for i in 0..150 {
        let size = sizes[i % sizes.len()];
        let dst = if i % 17 == 5 {
            LONELY_VIP
        } else {
            vips[(i / 2) % 3]
        };
        let ethertype = if i % 23 == 7 { 0x86dd } else { 0x0800 };
        let f = eth(LAN_MAC, GN_MAC, ethertype, &inner_packet(GN_VIP, dst, size));
        let mut buf = vec![0xee; ENCAP_GROW + f.len() + ENCAP_TAIL];
        buf[ENCAP_GROW..ENCAP_GROW + f.len()].copy_from_slice(&f);
        up.push(buf);
        lens.push(f.len());
    }
    let (mut burst, mut one) = (up.clone(), up);
    let mut verdicts = Vec::new();
    uplink_burst(&a.dp.snapshot(), &mut burst[..], &lens, &mut verdicts);
    let snap = b.dp.snapshot();
    let each: Vec<UpVerdict> = one
        .iter_mut()
        .zip(&lens)
        .map(|(buf, len)| uplink(&snap, buf, *len))
        .collect();
    assert_eq!(verdicts, each);
    for v in [UpVerdict::Slow, UpVerdict::TooBig] {
        assert!(verdicts.contains(&v), "{v:?} among them");
    }
    assert!(verdicts.iter().filter(|v| v.sent()).count() > 100);
    assert_eq!(burst, one, "the same bytes");
    assert_eq!(counted(&a.dp), counted(&b.dp));

    let mut seqs = [1u64; 3];
    let mut down = Vec::new();
    let mut forged_seq = None;
    for i in 0..150usize {
        let t = (i / 3) % 3;
        let size = sizes[i % sizes.len()].min(1400);
        let mut seq = seqs[t];
        seqs[t] += 1;
        if i % 19 == 4 {
            seq -= 1; // a replay (or seq 0 at first: older than the window)
        }
        let inner = inner_packet(vips[t], GN_VIP, size);
        let mut dg = sealed(&ciphers[t], TUNNEL + t as u32, seq, &inner);
        match i % 13 {
            3 => *dg.last_mut().unwrap() ^= 1,
            5 => dg[20] ^= 0x80,
            8 => dg[3] = if t == 1 { 1 } else { 2 },
            _ => {}
        }
        if i % 29 == 11 {
            dg[HEADER_LEN + 2] ^= 1; // a bad inner length, sealed as such
            let n = dg.len();
            dg[n - TAG_LEN..].fill(0);
            ciphers[t].seal(&mut dg).unwrap();
        }
        if i == 20 {
            // Forged with a seq ahead; the authentic one of that seq comes later.
            let mut f = sealed(&ciphers[t], TUNNEL + t as u32, seqs[t] + 1, &inner);
            f[HEADER_LEN + 30] ^= 4;
            forged_seq = Some((t, seqs[t] + 1));
            down.push(wan_frame(peer(), &f));
        }
        down.push(wan_frame(
            if i % 7 == 0 { elsewhere() } else { peer() },
            &dg,
        ));
        if i % 31 == 9 {
            let mut slow = wan_frame(peer(), &dg);
            slow[14 + 9] = 6; // TCP: the kernel's
            fix_ip(&mut slow);
            down.push(slow);
            down.push(wan_frame(peer(), &sealed(&ciphers[t], 0x7777, seq, &inner)));
            down.push(wan_frame(peer(), &a.keepalive(seqs[0] + 40 + i as u64)));
        }
    }
    let (mut burst, mut one) = (down.clone(), down.clone());
    let mut verdicts = Vec::new();
    downlink_burst(&a.dp.snapshot(), &mut burst[..], 7, &mut verdicts);
    let each: Vec<DownVerdict> = one.iter_mut().map(|f| downlink(&snap, f, 7)).collect();
    assert_eq!(verdicts, each);
    for v in [
        DownVerdict::Slow,
        DownVerdict::Consumed,
        DownVerdict::Drop(FastDrop::BadTag),
        DownVerdict::Drop(FastDrop::Replay),
        DownVerdict::Drop(FastDrop::UnsupportedSuite),
        DownVerdict::Drop(FastDrop::UnknownTunnel),
        DownVerdict::Drop(FastDrop::BadInner),
    ] {
        assert!(verdicts.contains(&v), "{v:?} among them");
    }
    assert!(
        verdicts
            .iter()
            .filter(|v| matches!(v, DownVerdict::Tx { .. }))
            .count()
            > 80
    );
    // The authentic datagram of the forged one's seq went through.
    let (t, seq) = forged_seq.unwrap();
    let at = down_index_of(&down, TUNNEL + t as u32, seq);
    assert!(
        matches!(verdicts[at], DownVerdict::Tx { .. }),
        "{:?}",
        verdicts[at]
    );
    assert_eq!(burst, one, "the same bytes");
    assert_eq!(counted(&a.dp), counted(&b.dp));
}

/// The index of the last frame of `frames` with tunnel id `id` and seq `seq`.
fn down_index_of(frames: &[Vec<u8>], id: u32, seq: u64) -> usize {
    frames
        .iter()
        .rposition(|f| {
            f.len() >= DG + HEADER_LEN
                && f[DG + 4..DG + 8] == id.to_be_bytes()
                && f[DG + 8..DG + 16] == seq.to_be_bytes()
        })
        .expect("that datagram is in the burst")
}
