//! ntma's fast path, both directions (`fastpath::encap::uplink` and `downlink`), on
//! whole frames against a table with two GNs and four tunnels (two per GN, both suites,
//! one of them only added, not up), while the control side changes the table between
//! frames: the GN set (with or without MACs), the link, tunnels removed, added, brought
//! up, moved to another endpoint. The raw datapath runs the same two functions, so this
//! is its per-packet code too.
//!
//! The harness keeps a model of the table and checks every verdict against it:
//!
//! * nothing panics or reads out of bounds (ASan);
//! * a frame sent to the slow path (or too big) is unchanged;
//! * uplink sends only from a GN in the set, over a tunnel of that GN to the inner
//!   destination that is up, with the link set; what it sends is a well-formed frame to
//!   the tunnel's endpoint whose datagram the peer opens (with its receive key) to
//!   exactly the GN's packet (unless the MSS was clamped);
//! * downlink delivers only DATA sealed with the peer's send key of a tunnel in the
//!   table, to the MAC of that tunnel's GN (in the set, MAC known, link set), carrying
//!   exactly the sealed packet; the same frame twice is a replay.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ntm_proto::data::{decap, Decapped, RxTunnel, SeqCounter};
use ntm_proto::node::TunnelParams;
use ntm_proto::wire::{HEADER_LEN, OVERHEAD};
use ntm_proto::{Cipher, DirectionKeys, Key, Path, Role, Suite};
use ntma_user::datapath::{GnLink, Link};
use ntma_user::fastpath::encap::{
    downlink, uplink, DownVerdict, UpVerdict, ENCAP_GROW, ENCAP_TAIL, ETH_LEN,
};
use ntma_user::fastpath::{DatapathState, DatapathStateConfig, FastDrop};
use ntma_user::gn::MacAddr;
use ntma_user::wire::checksum::internet as ipv4_checksum;

const PORT: u16 = 7700;
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const GN_VIPS: [Ipv4Addr; 2] = [Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 3)];
const GN_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 3]];
const PEER_VIPS: [Ipv4Addr; 2] = [Ipv4Addr::new(100, 64, 0, 9), Ipv4Addr::new(100, 64, 0, 10)];
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 77);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
const WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 3, 1];
const INNER_MTU: u16 = 1400;

/// (id, GN index, peer index, suite, up at start).
const TUNNELS: [(u32, usize, usize, Suite, bool); 4] = [
    (0x101, 0, 0, Suite::Aes256Gcm, true),
    (0x102, 0, 1, Suite::HmacSha256_128, true),
    (0x103, 1, 0, Suite::HmacSha256_128, true),
    (0x104, 1, 1, Suite::Aes256Gcm, false),
];

fn peer_endpoint(i: usize, moved: u16) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(198, 18, 0, 21 + i as u8),
        PORT.wrapping_add(moved),
    )
}

fn keys(id: u32) -> DirectionKeys {
    let mut k = [0x44; 32];
    k[..4].copy_from_slice(&id.to_be_bytes());
    DirectionKeys::derive(&Key::from_bytes(k))
}

fn params(i: usize) -> TunnelParams {
    let (id, gn, peer, suite, _) = TUNNELS[i];
    let k = keys(id);
    let (tx, rx) = k.for_role(Role::Initiator).unwrap();
    TunnelParams {
        tunnel_id: id,
        peer_fqdn: format!("p{peer}.ntm.test"),
        peer_vip: PEER_VIPS[peer],
        endpoint: peer_endpoint(peer, 0),
        path: Path::Direct,
        role: Role::Initiator,
        suite,
        tx_key: tx.clone(),
        rx_key: rx.clone(),
        tx_seq: SeqCounter::starting_at(1),
        local_vip: GN_VIPS[gn],
    }
}

/// What the harness believes the table holds.
struct Model {
    /// Per GN: in the set, and with its MAC.
    gn: [(bool, bool); 2],
    link: bool,
    /// Per tunnel: in the table, sending.
    tunnel: [(bool, bool); 4],
    endpoint: [SocketAddrV4; 4],
}

fn link() -> Link {
    Link {
        lan_mac: MacAddr(LAN_MAC),
        wan_mac: MacAddr(WAN_MAC),
        wan_ip: WAN_IP,
        wan_port: PORT,
        gateway_mac: MacAddr(GW_MAC),
    }
}

fn plane() -> (DatapathState, Model) {
    let dp = DatapathState::new(&DatapathStateConfig {
        workers: 1,
        ntm_port: PORT,
        inner_mtu: INNER_MTU,
        slow_slots: 1,
        slow_slot_len: 64,
    })
    .expect("an eventfd");
    dp.set_link(Some(link()));
    let mut m = Model {
        gn: [(true, true), (true, false)],
        link: true,
        tunnel: [(false, false); 4],
        endpoint: [peer_endpoint(0, 0); 4],
    };
    set_gns(&dp, &m);
    for (i, t) in TUNNELS.iter().enumerate() {
        let p = params(i);
        if t.4 {
            dp.tunnel_up(&p).unwrap();
        } else {
            dp.add_tunnel(&p).unwrap();
        }
        m.tunnel[i] = (true, t.4);
        m.endpoint[i] = p.endpoint;
    }
    (dp, m)
}

fn set_gns(dp: &DatapathState, m: &Model) {
    let gns: Vec<GnLink> = (0..2)
        .filter(|&g| m.gn[g].0)
        .map(|g| GnLink {
            vip: GN_VIPS[g],
            mac: m.gn[g].1.then_some(MacAddr(GN_MACS[g])),
        })
        .collect();
    dp.set_gns(&gns);
}

#[derive(Debug, Arbitrary)]
enum Addr {
    Gn(u8),
    Peer(u8),
    Router,
    Other,
    Outside,
    Any(u32),
}

impl Addr {
    fn ip(&self) -> Ipv4Addr {
        match self {
            Addr::Gn(i) => GN_VIPS[usize::from(*i) % 2],
            Addr::Peer(i) => PEER_VIPS[usize::from(*i) % 2],
            Addr::Router => ROUTER,
            Addr::Other => OTHER_VIP,
            Addr::Outside => OUTSIDE,
            Addr::Any(a) => Ipv4Addr::from(*a),
        }
    }
}

/// An inner IPv4 packet, well-formed unless the fuzzer bends it.
#[derive(Debug, Arbitrary)]
struct Inner {
    src: Addr,
    dst: Addr,
    ihl: u8,
    total_delta: i8,
    protocol: u8,
    /// A TCP SYN with an MSS option (the clamp), else `payload` as is.
    syn_mss: Option<u16>,
    flags_frag: u16,
    payload: Vec<u8>,
}

impl Inner {
    fn bytes(&self) -> Vec<u8> {
        let ihl = usize::from(self.ihl % 16);
        let hlen = (ihl * 4).max(20);
        let mut p = vec![0u8; hlen];
        p[0] = 0x40 | ihl as u8;
        p[6..8].copy_from_slice(&self.flags_frag.to_be_bytes());
        p[8] = 64;
        p[12..16].copy_from_slice(&self.src.ip().octets());
        p[16..20].copy_from_slice(&self.dst.ip().octets());
        if let Some(mss) = self.syn_mss {
            p[9] = 6;
            let mut tcp = vec![0u8; 24];
            tcp[12] = 6 << 4;
            tcp[13] = 0x02;
            tcp[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
            p.extend_from_slice(&tcp);
        } else {
            p[9] = self.protocol;
        }
        p.extend(self.payload.iter().take(1500));
        let total = (p.len() as i64 + i64::from(self.total_delta)).clamp(0, 65535) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let sum = ipv4_checksum(&p[..hlen]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }
}

#[derive(Debug, Arbitrary)]
struct DownFrame {
    /// Which tunnel seals it (index into TUNNELS; others: an unknown id).
    tunnel: u8,
    /// Seal with ntma's own send key (a reflection).
    reflect: bool,
    keepalive: bool,
    seq: u64,
    inner: Inner,
    /// Outer source: the tunnel's endpoint or anywhere.
    from: Option<SocketAddrV4Arb>,
    bad_checksum: bool,
    padding: u8,
    /// Bytes changed after sealing: (at, xor).
    flips: Vec<(u16, u8)>,
}

#[derive(Debug, Arbitrary)]
struct SocketAddrV4Arb(u32, u16);

#[derive(Debug, Arbitrary)]
enum Op {
    /// A GN frame around `inner` (uplink), or with another EtherType.
    Up {
        inner: Inner,
        ethertype: Option<u16>,
        padding: u8,
    },
    /// Arbitrary bytes as a GN frame.
    UpRaw(Vec<u8>),
    Down(DownFrame),
    /// Arbitrary bytes as a WAN frame.
    DownRaw(Vec<u8>),
    SetGn {
        gn: u8,
        present: bool,
        mac: bool,
    },
    SetLink(bool),
    Remove(u8),
    Add(u8),
    TunnelUp(u8),
    SetEndpoint {
        tunnel: u8,
        port_delta: u16,
    },
}

fn check_up(m: &Model, src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8], out: &[u8], clamped: bool) {
    // Who may send: a GN in the set, through its own tunnel to `dst` that is up.
    let g = GN_VIPS
        .iter()
        .position(|&v| v == src)
        .expect("sent from no GN");
    assert!(
        m.gn[g].0 && m.link,
        "sent without the GN in the set or a link"
    );
    let i = TUNNELS
        .iter()
        .position(|t| t.1 == g && PEER_VIPS[t.2] == dst)
        .expect("sent without a tunnel");
    assert!(m.tunnel[i].0 && m.tunnel[i].1, "sent on a tunnel not up");
    // The frame: Ethernet to the gateway, IPv4/UDP to the endpoint.
    assert_eq!(out[..6], GW_MAC);
    assert_eq!(out[6..12], WAN_MAC);
    assert_eq!(out[12..14], [8, 0]);
    let ip = &out[ETH_LEN..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        out.len() - ETH_LEN
    );
    assert_eq!(ipv4_checksum(&ip[..20]), 0, "outer IPv4 checksum");
    assert_eq!(ip[12..16], WAN_IP.octets());
    assert_eq!(ip[16..20], m.endpoint[i].ip().octets());
    let udp = &ip[20..];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), PORT);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), m.endpoint[i].port());
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    // The peer opens it with its receive key to the GN's packet.
    let (id, _, _, suite, _) = TUNNELS[i];
    let k = keys(id);
    let (_, peer_rx) = k.for_role(Role::Responder).unwrap();
    let mut rx = RxTunnel::new(Cipher::new(suite, peer_rx).unwrap(), src, dst);
    let mut dg = udp[8..].to_vec();
    match decap(&mut dg, |wire_id| (wire_id == id).then_some(&mut rx)) {
        Ok(Decapped::Data { inner: got, .. }) => {
            if !clamped {
                assert_eq!(got, inner, "the peer opened something else");
            } else {
                assert_eq!(got.len(), inner.len());
            }
        }
        other => panic!("the peer cannot open what uplink sent: {other:?}"),
    }
}

fn up(dp: &DatapathState, m: &Model, frame: &[u8], parsed: Option<(Ipv4Addr, Ipv4Addr, &[u8])>) {
    let snap = dp.snapshot();
    let mut buf = vec![0u8; ENCAP_GROW + frame.len() + ENCAP_TAIL];
    buf[ENCAP_GROW..ENCAP_GROW + frame.len()].copy_from_slice(frame);
    let before = buf.clone();
    match uplink(&snap, &mut buf, frame.len()) {
        UpVerdict::Slow | UpVerdict::TooBig => assert_eq!(buf, before, "a slow frame changed"),
        v @ (UpVerdict::Tx(len) | UpVerdict::TxClamped(len)) => {
            let clamped = matches!(v, UpVerdict::TxClamped(_));
            let inner_at = ENCAP_GROW + ETH_LEN;
            let ip = &before[inner_at..ENCAP_GROW + frame.len()];
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            if let Some((s, d, _)) = parsed {
                assert_eq!((s, d), (src, dst));
            }
            check_up(m, src, dst, &ip[..total], &buf[..len], clamped);
        }
        UpVerdict::Drop(_) => {}
    }
}

fn down_check(dp: &DatapathState, m: &Model, frame: &[u8], sealed: Option<(usize, &[u8], bool)>) {
    let snap = dp.snapshot();
    let mut fr = frame.to_vec();
    let v = downlink(&snap, &mut fr, 1);
    match v {
        DownVerdict::Slow => assert_eq!(fr, frame, "a slow frame changed"),
        DownVerdict::Tx { offset, len } | DownVerdict::TxClamped { offset, len } => {
            let (i, inner, reflect) = sealed.expect("arbitrary bytes were delivered");
            assert!(!reflect, "a reflected datagram was delivered");
            assert!(m.tunnel[i].0, "delivered on a tunnel not in the table");
            let g = TUNNELS[i].1;
            assert!(
                m.link && m.gn[g].0 && m.gn[g].1,
                "delivered to a GN not ready"
            );
            let out = &fr[offset..offset + len];
            assert_eq!(out[..6], GN_MACS[g], "to another GN");
            assert_eq!(out[6..12], LAN_MAC);
            if matches!(v, DownVerdict::Tx { .. }) {
                assert_eq!(&out[ETH_LEN..], inner, "delivered something else");
            }
            let mut again = frame.to_vec();
            assert_eq!(
                downlink(&snap, &mut again, 2),
                DownVerdict::Drop(FastDrop::Replay)
            );
        }
        DownVerdict::Consumed => {
            let (i, _, reflect) = sealed.expect("arbitrary bytes were a keep-alive");
            assert!(!reflect && m.tunnel[i].0);
        }
        DownVerdict::Drop(_) => {}
    }
}

fn down(dp: &DatapathState, m: &Model, f: &DownFrame) {
    let i = usize::from(f.tunnel);
    let (id, suite) = match TUNNELS.get(i) {
        Some(t) => (t.0, t.3),
        None => (0x1ff, Suite::Aes256Gcm),
    };
    let k = keys(id);
    let (ours, peers) = k.for_role(Role::Initiator).unwrap();
    let cipher = Cipher::new(suite, if f.reflect { ours } else { peers }).unwrap();
    let body = if f.keepalive {
        Vec::new()
    } else {
        f.inner.bytes()
    };
    let mut dg = vec![0u8; body.len() + OVERHEAD];
    dg[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(&body);
    if f.keepalive {
        ntm_proto::data::emit_tun_keepalive(&mut dg, id, f.seq, &cipher).unwrap();
    } else {
        ntm_proto::data::encap_in_place(&mut dg, 0, body.len(), id, f.seq, &cipher).unwrap();
    }
    let from = match &f.from {
        Some(a) => SocketAddrV4::new(Ipv4Addr::from(a.0), a.1),
        None => m.endpoint[i % 4],
    };
    let mut fr = Vec::with_capacity(ETH_LEN + 28 + dg.len());
    fr.extend_from_slice(&LAN_MAC);
    fr.extend_from_slice(&GW_MAC);
    fr.extend_from_slice(&[8, 0]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((28 + dg.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&from.ip().octets());
    ip[16..20].copy_from_slice(&WAN_IP.octets());
    let sum = ipv4_checksum(&ip) ^ if f.bad_checksum { 0x0101 } else { 0 };
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    fr.extend_from_slice(&ip);
    fr.extend_from_slice(&from.port().to_be_bytes());
    fr.extend_from_slice(&PORT.to_be_bytes());
    fr.extend_from_slice(&((8 + dg.len()) as u16).to_be_bytes());
    fr.extend_from_slice(&[0, 0]);
    fr.extend_from_slice(&dg);
    fr.extend(std::iter::repeat_n(0, usize::from(f.padding % 32)));
    for (at, x) in f.flips.iter().take(4) {
        let n = fr.len();
        fr[usize::from(*at) % n] ^= x;
    }
    // The tag covers the datagram: whatever the flips hit, a delivered frame carries
    // exactly what was sealed (flips in the outer headers may leave it deliverable).
    let sealed = (i < 4).then_some((i, &body[..], f.reflect));
    down_check(dp, m, &fr, sealed);
}

fn gn_frame(inner: &[u8], ethertype: u16, padding: u8, src_mac: [u8; 6]) -> Vec<u8> {
    let mut fr = Vec::with_capacity(ETH_LEN + inner.len() + 32);
    fr.extend_from_slice(&LAN_MAC);
    fr.extend_from_slice(&src_mac);
    fr.extend_from_slice(&ethertype.to_be_bytes());
    fr.extend_from_slice(inner);
    fr.extend(std::iter::repeat_n(0, usize::from(padding % 32)));
    fr
}

fuzz_target!(|ops: Vec<Op>| {
    let (dp, mut m) = plane();
    for op in ops.iter().take(32) {
        match op {
            Op::Up {
                inner,
                ethertype,
                padding,
            } => {
                let p = inner.bytes();
                let src_mac = match inner.src {
                    Addr::Gn(g) => GN_MACS[usize::from(g) % 2],
                    _ => [2, 9, 9, 9, 9, 9],
                };
                let fr = gn_frame(&p, ethertype.unwrap_or(0x0800), *padding, src_mac);
                let parsed =
                    ethertype
                        .is_none()
                        .then_some((inner.src.ip(), inner.dst.ip(), &p[..]));
                up(&dp, &m, &fr, parsed);
            }
            Op::UpRaw(bytes) => up(&dp, &m, bytes, None),
            Op::Down(f) => down(&dp, &m, f),
            Op::DownRaw(bytes) => down_check(&dp, &m, bytes, None),
            Op::SetGn { gn, present, mac } => {
                m.gn[usize::from(*gn) % 2] = (*present, *mac);
                set_gns(&dp, &m);
            }
            Op::SetLink(on) => {
                m.link = *on;
                dp.set_link(on.then(link));
            }
            Op::Remove(i) => {
                let i = usize::from(*i) % 4;
                dp.remove_tunnel(TUNNELS[i].0);
                m.tunnel[i] = (false, false);
            }
            Op::Add(i) => {
                let i = usize::from(*i) % 4;
                let mut p = params(i);
                p.endpoint = m.endpoint[i];
                dp.add_tunnel(&p).unwrap();
                // The same tunnel again keeps whether it sends.
                m.tunnel[i] = (true, m.tunnel[i].0 && m.tunnel[i].1);
            }
            Op::TunnelUp(i) => {
                let i = usize::from(*i) % 4;
                let mut p = params(i);
                p.endpoint = m.endpoint[i];
                dp.tunnel_up(&p).unwrap();
                m.tunnel[i] = (true, true);
            }
            Op::SetEndpoint { tunnel, port_delta } => {
                let i = usize::from(*tunnel) % 4;
                let e = peer_endpoint(TUNNELS[i].2, *port_delta);
                let known = dp.set_endpoint(TUNNELS[i].0, e);
                assert_eq!(known, m.tunnel[i].0);
                if known {
                    m.endpoint[i] = e;
                }
            }
        }
    }
});
