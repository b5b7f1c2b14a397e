//! ntma's fast path downlink (`ntma_user::fastpath::encap::downlink`) on whole WAN
//! frames (Ethernet, IPv4, UDP, NTM datagram), against a tunnel table with one suite-2
//! and one suite-1 tunnel (ntma the initiator, the peer sealing with `K_r2i`).
//!
//! Raw frames, and structure-aware ones: fuzzer-chosen outer headers (IHL with options,
//! checksum, fragment bits, ports, UDP length), NTM header fields and inner packet
//! (IHL, total length, addresses), sealed with the peer's send key (or, to check
//! reflection, with ntma's own), then changed by fuzzer-controlled bit flips, byte sets
//! and truncation. Properties:
//!
//! * nothing panics or reads out of bounds (ASan);
//! * a frame sent to the slow path is unchanged;
//! * a frame delivered to the GN (`Tx`) carries exactly the inner packet that was
//!   sealed, in a well-formed Ethernet frame to the GN, from an authentic datagram of
//!   the peer: a changed datagram, a reflected one (sealed with ntma's own key) or a
//!   replayed one never passes;
//! * the same authentic frame a second time is a replay.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ntm_proto::data::{check_inner_shape, SeqCounter};
use ntm_proto::node::TunnelParams;
use ntm_proto::wire::{HEADER_LEN, OVERHEAD};
use ntm_proto::{Cipher, DirectionKeys, Key, Path, Role, Suite};
use ntma_user::datapath::{GnLink, Link};
use ntma_user::fastpath::encap::{downlink, DownVerdict, ETH_LEN};
use ntma_user::fastpath::{DatapathState, DatapathStateConfig, FastDrop};
use ntma_user::gn::MacAddr;
use ntma_user::wire::checksum::internet as ipv4_checksum;

const PORT: u16 = 7700;
const GN_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const PEER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 21), PORT);
const WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const GN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 3, 1];
/// Tunnel ids: suite 2 and suite 1.
const TUNNELS: [(u32, Suite); 2] = [(0x101, Suite::Aes256Gcm), (0x102, Suite::HmacSha256_128)];

fn keys(id: u32) -> DirectionKeys {
    let mut k = [0x33; 32];
    k[..4].copy_from_slice(&id.to_be_bytes());
    DirectionKeys::derive(&Key::from_bytes(k))
}

fn plane() -> DatapathState {
    let dp = DatapathState::new(&DatapathStateConfig {
        workers: 1,
        ntm_port: PORT,
        slow_slots: 1,
        slow_slot_len: 64,
        ..DatapathStateConfig::default()
    })
    .expect("an eventfd");
    dp.set_gns(&[GnLink {
        vip: GN_VIP,
        mac: Some(MacAddr(GN_MAC)),
    }]);
    dp.set_link(Some(Link {
        lan_mac: MacAddr(LAN_MAC),
        wan_mac: MacAddr(WAN_MAC),
        wan_ip: WAN_IP,
        wan_port: PORT,
        gateway_mac: MacAddr(GW_MAC),
    }));
    for (id, suite) in TUNNELS {
        let k = keys(id);
        let (tx, rx) = k.for_role(Role::Initiator).unwrap();
        dp.tunnel_up(&TunnelParams {
            tunnel_id: id,
            peer_fqdn: "cn.ntm.test".into(),
            peer_vip: PEER_VIP,
            endpoint: PEER,
            path: Path::Direct,
            role: Role::Initiator,
            suite,
            tx_key: tx.clone(),
            rx_key: rx.clone(),
            tx_seq: SeqCounter::starting_at(1),
            local_vip: GN_VIP,
        })
        .unwrap();
    }
    dp
}

#[derive(Debug, Arbitrary)]
enum Mutation {
    FlipBit { at: u16, bit: u8 },
    SetByte { at: u16, value: u8 },
    Truncate(u16),
}

#[derive(Debug, Arbitrary)]
struct Frame {
    /// Which tunnel (and suite) seals it; also tried with an unknown id.
    tunnel: u8,
    unknown_id: bool,
    /// Seal with ntma's own send key: a reflection.
    reflect: bool,
    keepalive: bool,
    seq: u64,
    /// Outer IPv4: option words (IHL 5 + n), checksum correct or not, flags/fragment.
    ip_options: u8,
    bad_checksum: bool,
    frag: u16,
    udp_sport: u16,
    udp_dport_other: Option<u16>,
    udp_len_delta: i8,
    /// Inner packet: IHL, total-length delta, addresses swapped or not, payload.
    inner_ihl: u8,
    inner_total_delta: i8,
    inner_wrong_addr: bool,
    payload: Vec<u8>,
    padding: u8,
    mutations: Vec<Mutation>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(Vec<u8>),
    Frame(Frame),
}

/// The inner packet as the peer would send it (possibly malformed on purpose).
fn inner(f: &Frame) -> Vec<u8> {
    let ihl = usize::from(f.inner_ihl % 16);
    let hlen = (ihl * 4).max(20);
    let mut p = vec![0u8; hlen];
    p[0] = 0x40 | ihl as u8;
    p[8] = 64;
    p[9] = 17;
    let (src, dst) = if f.inner_wrong_addr {
        (GN_VIP, PEER_VIP)
    } else {
        (PEER_VIP, GN_VIP)
    };
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p.extend(f.payload.iter().take(1400));
    let total = (p.len() as i64 + i64::from(f.inner_total_delta)).clamp(0, 65535) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

/// A whole WAN frame around the sealed datagram; returns it with the plaintext inner.
fn build(f: &Frame) -> (Vec<u8>, Vec<u8>, u32, Suite) {
    let (id, suite) = TUNNELS[usize::from(f.tunnel) % TUNNELS.len()];
    let k = keys(id);
    let (ours, peers) = k.for_role(Role::Initiator).unwrap();
    let key = if f.reflect { ours } else { peers };
    let cipher = Cipher::new(suite, key).unwrap();
    let body = if f.keepalive { Vec::new() } else { inner(f) };
    let wire_id = if f.unknown_id { id ^ 0x8000 } else { id };
    // The NTM datagram.
    let mut dg = vec![0u8; body.len() + OVERHEAD];
    dg[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(&body);
    if f.keepalive {
        ntm_proto::data::emit_tun_keepalive(&mut dg, wire_id, f.seq, &cipher).unwrap();
    } else {
        ntm_proto::data::encap_in_place(&mut dg, 0, body.len(), wire_id, f.seq, &cipher).unwrap();
    }
    // Outer headers.
    let opts = usize::from(f.ip_options % 11) * 4;
    let ihl = 20 + opts;
    let udp_len = (8 + dg.len()) as i64 + i64::from(f.udp_len_delta);
    let total = ihl + 8 + dg.len();
    let mut fr = Vec::with_capacity(ETH_LEN + total + 64);
    fr.extend_from_slice(&LAN_MAC);
    fr.extend_from_slice(&GW_MAC);
    fr.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0u8; ihl];
    ip[0] = 0x40 | (ihl / 4) as u8;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&f.frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&PEER.ip().octets());
    ip[16..20].copy_from_slice(&WAN_IP.octets());
    let sum = ipv4_checksum(&ip);
    let sum = if f.bad_checksum { sum ^ 0x0101 } else { sum };
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    fr.extend_from_slice(&ip);
    fr.extend_from_slice(&f.udp_sport.to_be_bytes());
    fr.extend_from_slice(&f.udp_dport_other.unwrap_or(PORT).to_be_bytes());
    fr.extend_from_slice(&(udp_len.clamp(0, 65535) as u16).to_be_bytes());
    fr.extend_from_slice(&[0, 0]);
    fr.extend_from_slice(&dg);
    fr.extend(std::iter::repeat_n(0xee, usize::from(f.padding % 64)));
    (fr, body, id, suite)
}

fn check_tx(frame: &[u8], offset: usize, len: usize, want_inner: &[u8]) {
    let out = &frame[offset..offset + len];
    assert_eq!(out[..6], GN_MAC, "to the GN");
    assert_eq!(out[6..12], LAN_MAC, "from the NTMA's LAN MAC");
    assert_eq!(out[12..14], [0x08, 0x00]);
    let inner = &out[ETH_LEN..];
    assert_eq!(
        inner, want_inner,
        "delivered something else than was sealed"
    );
    assert!(check_inner_shape(inner).is_ok());
    assert_eq!(inner[12..16], PEER_VIP.octets());
    assert_eq!(inner[16..20], GN_VIP.octets());
}

fn raw(bytes: &[u8]) {
    let dp = plane();
    let snap = dp.snapshot();
    let mut fr = bytes.to_vec();
    match downlink(&snap, &mut fr, 1) {
        DownVerdict::Slow => assert_eq!(fr, bytes, "a slow-path frame was changed"),
        // Arbitrary bytes never carry a valid tag.
        v => assert!(matches!(v, DownVerdict::Drop(_)), "{v:?}"),
    }
}

fn frame(f: Frame) {
    let dp = plane();
    let snap = dp.snapshot();
    let (sealed, body, _id, _suite) = build(&f);
    let mut fr = sealed.clone();
    for m in f.mutations.iter().take(8) {
        let len = fr.len();
        match m {
            Mutation::FlipBit { at, bit } if len > 0 => {
                fr[usize::from(*at) % len] ^= 1 << (bit % 8);
            }
            Mutation::SetByte { at, value } if len > 0 => fr[usize::from(*at) % len] = *value,
            Mutation::Truncate(n) if len > 0 => fr.truncate(usize::from(*n) % len),
            _ => {}
        }
    }
    let before = fr.clone();
    let v = downlink(&snap, &mut fr, 1);
    match v {
        DownVerdict::Tx { offset, len } => {
            assert!(!f.reflect, "a reflected datagram was delivered");
            assert!(!f.unknown_id && !f.keepalive, "{f:?}");
            check_tx(&fr, offset, len, &body);
        }
        DownVerdict::TxClamped { offset, len } => {
            // A SYN whose MSS option was clamped: only that changed.
            assert!(!f.reflect, "a reflected datagram was delivered");
            assert!(!f.unknown_id && !f.keepalive, "{f:?}");
            assert_eq!(len, 14 + body.len());
            assert!(offset + len <= fr.len());
        }
        DownVerdict::Consumed => {
            assert!(!f.reflect, "a reflected keep-alive was accepted");
            assert!(f.keepalive, "{f:?}");
        }
        DownVerdict::Slow => assert_eq!(fr, before, "a slow-path frame was changed"),
        DownVerdict::Drop(_) => {}
    }
    if matches!(
        v,
        DownVerdict::Tx { .. } | DownVerdict::TxClamped { .. } | DownVerdict::Consumed
    ) {
        // The same frame again: a replay.
        let mut again = before.clone();
        assert_eq!(
            downlink(&snap, &mut again, 2),
            DownVerdict::Drop(FastDrop::Replay)
        );
    }
}

fuzz_target!(|input: Input| match input {
    Input::Raw(bytes) => raw(&bytes),
    Input::Frame(f) => frame(f),
});
