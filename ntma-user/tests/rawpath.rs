//! The raw-socket datapath on the testbed: `RawPath` in ntma (AF_PACKET on lan0, a UDP
//! socket on wan0's NTM port), a tunnel published by hand, an NTM peer in cn written
//! with ntm-proto.
//!
//! * gn → cn: every datagram leaves ntma as DATA (suite 2: encrypted) that cn opens
//!   with its receive direction key.
//! * cn → gn: DATA to nat1's mapping reaches gn as the inner packet.
//! * Forged, replayed, unknown-tunnel and bad-inner DATA, and ntma's own DATA sent
//!   back to it, are dropped and counted; nothing reaches gn.
//! * A TUN_KEEPALIVE is consumed; a signaling datagram reaches the slow queue as a WAN
//!   frame carrying cn's address; a packet to a VIP without a tunnel reaches it as a
//!   GN frame.
//!
//! They need root (network namespaces, raw sockets) and fail without it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use ntm_proto::data::{decap, emit_tun_keepalive, encap_in_place, Decapped, RxTunnel, SeqCounter};
use ntm_proto::node::TunnelParams;
use ntm_proto::wire::HEADER_LEN;
use ntm_proto::{Cipher, DirectionKeys, Key, Path, Role as TunnelRole, Suite};
use ntm_testbed::{
    ifname, unique_prefix, Role, Testbed, CN_ADDR, NAT1_WAN_ADDR, NTMA_LAN_ADDR, NTMA_WAN_ADDR,
    VIP_POOL,
};
use ntma_user::datapath::{Datapath, GnLink, Link};
use ntma_user::fastpath::{FastDrop, Side};
use ntma_user::gn::MacAddr;
use ntma_user::rawpath::{Classify, RawConfig, RawPath};

const GN_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const PEER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
const LONELY_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 77);
const TUNNEL: u32 = 0x00ab_cdef;
const NTM_PORT: u16 = 7700;
const N: usize = 32;
const WAIT: Duration = Duration::from_secs(10);

fn mac(tb: &Testbed, role: Role, ifname: &str) -> [u8; 6] {
    let out = tb
        .output(role, ["cat", &format!("/sys/class/net/{ifname}/address")])
        .expect("read a MAC address");
    let v: Vec<u8> = out
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let c = ntma_user::wire::checksum::internet(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn data(cipher: &Cipher, id: u32, seq: u64, inner: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; inner.len() + 32];
    b[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
    let n = encap_in_place(&mut b, 0, inner.len(), id, seq, cipher).expect("sized");
    b.truncate(n);
    b
}

fn recv_n(s: &UdpSocket, want: usize) -> Vec<(Vec<u8>, SocketAddrV4)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + WAIT;
    while got.len() < want && Instant::now() < deadline {
        if let Ok((n, SocketAddr::V4(from))) = s.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
    }
    got
}

#[test]
fn raw_datapath_carries_verifies_and_counts() {
    if let Err(e) = ntm_testbed::require_root() {
        panic!("{e}");
    }
    let tb = Testbed::up(&unique_prefix("raw")).expect("testbed up");
    let lan_mac = mac(&tb, Role::Ntma, ifname::NTMA_LAN);
    tb.exec(
        Role::Gn,
        ["ip", "addr", "add", &format!("{GN_VIP}/10"), "dev", "eth0"],
    )
    .unwrap();
    for vip in [PEER_VIP, LONELY_VIP] {
        let m = lan_mac.map(|b| format!("{b:02x}")).join(":");
        tb.exec(
            Role::Gn,
            [
                "ip",
                "neigh",
                "replace",
                &vip.to_string(),
                "lladdr",
                &m,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
    }
    let raw = tb
        .in_netns(Role::Ntma, || {
            let wan =
                UdpSocket::bind(SocketAddrV4::new(NTMA_WAN_ADDR, NTM_PORT)).expect("bind wan");
            RawPath::start(RawConfig {
                lan_if: ifname::NTMA_LAN.into(),
                wan,
                classify: Classify {
                    vip_net: VIP_POOL.0,
                    vip_prefix_len: VIP_POOL.1,
                    router: NTMA_LAN_ADDR,
                },
                core: None,
                batch: 16,
                busy_poll: false,
                slow_slots: 64,
                inner_mtu: ntma_user::fastpath::INNER_MTU as u16,
            })
        })
        .expect("enter ntma")
        .unwrap_or_else(|e| panic!("raw datapath: {e}"));
    let dp = std::sync::Arc::clone(raw.state());
    raw.set_gns(&[GnLink {
        vip: GN_VIP,
        mac: Some(MacAddr(mac(&tb, Role::Gn, "eth0"))),
    }]);
    dp.set_link(Some(Link {
        lan_mac: MacAddr(lan_mac),
        wan_mac: MacAddr(mac(&tb, Role::Ntma, ifname::NTMA_WAN)),
        wan_ip: NTMA_WAN_ADDR,
        wan_port: NTM_PORT,
        gateway_mac: MacAddr(mac(&tb, Role::Nat1, ifname::NAT_LAN)),
    }));
    // ntma is the initiator: it sends with K_i2r, cn (the responder) with K_r2i.
    let keys = DirectionKeys::derive(&Key::from_bytes(*b"ntma raw datapath integration!!!"));
    let suite = Suite::Aes256Gcm;
    dp.tunnel_up(&TunnelParams {
        tunnel_id: TUNNEL,
        peer_fqdn: "cn.ntm.test".into(),
        peer_vip: PEER_VIP,
        endpoint: SocketAddrV4::new(CN_ADDR, NTM_PORT),
        path: Path::Direct,
        role: TunnelRole::Initiator,
        suite,
        tx_key: keys.i2r.clone(),
        rx_key: keys.r2i.clone(),
        tx_seq: SeqCounter::starting_at(1),
        local_vip: GN_VIP,
    })
    .expect("a supported suite");
    let auth = Cipher::new(suite, &keys.r2i).unwrap();
    let gn = tb
        .in_netns(Role::Gn, || {
            UdpSocket::bind(SocketAddrV4::new(GN_VIP, 5000))
        })
        .unwrap()
        .unwrap();
    gn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cn = tb
        .in_netns(Role::Cn, || {
            UdpSocket::bind(SocketAddrV4::new(CN_ADDR, NTM_PORT))
        })
        .unwrap()
        .unwrap();
    cn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // gn → cn
    let peer = SocketAddrV4::new(PEER_VIP, 6000);
    for i in 0..N {
        gn.send_to(format!("up {i}").as_bytes(), peer).unwrap();
    }
    let got = recv_n(&cn, N);
    assert_eq!(got.len(), N, "cn received {} of {N} DATA", got.len());
    let mut rx = RxTunnel::new(Cipher::new(suite, &keys.i2r).unwrap(), GN_VIP, PEER_VIP);
    let mapped = got[0].1;
    let reflected = got[0].0.clone();
    assert_eq!(mapped.ip(), &NAT1_WAN_ADDR, "through nat1");
    for (dg, from) in &got {
        assert_eq!(*from, mapped, "one NAT mapping");
        assert!(
            !dg.windows(3).any(|w| w == b"up "),
            "suite 2 hides the payload"
        );
        let mut dg = dg.clone();
        match decap(&mut dg, |id| (id == TUNNEL).then_some(&mut rx)) {
            Ok(Decapped::Data { inner, .. }) => {
                assert!(inner[28..].starts_with(b"up "), "{inner:?}");
                assert_eq!(&inner[12..16], &GN_VIP.octets());
            }
            other => panic!("cn rejects the raw datapath's DATA: {other:?}"),
        }
    }

    // cn → gn, then bad DATA that must not arrive
    let to_gn = |i: usize| {
        udp_packet(
            peer,
            SocketAddrV4::new(GN_VIP, 5000),
            format!("down {i}").as_bytes(),
        )
    };
    for i in 0..N {
        cn.send_to(&data(&auth, TUNNEL, 1 + i as u64, &to_gn(i)), mapped)
            .unwrap();
    }
    let got = recv_n(&gn, N);
    assert_eq!(got.len(), N, "gn received {} of {N}", got.len());
    assert!(got
        .iter()
        .all(|(p, from)| p.starts_with(b"down ") && *from == peer));
    let mut forged = data(&auth, TUNNEL, 1000, &to_gn(0));
    let l = forged.len();
    forged[l - 1] ^= 1;
    let replayed = data(&auth, TUNNEL, 1, &to_gn(0));
    let unknown = data(&auth, TUNNEL + 1, 1001, &to_gn(0));
    let mut ka = [0u8; 32];
    let n = emit_tun_keepalive(&mut ka, TUNNEL, 1002, &auth).unwrap();
    // A signaling type (TUN_REQ, 0x30): not the data path's.
    let mut signaling = data(&auth, TUNNEL, 1003, b"");
    signaling[1] = 0x30;
    // Inner IHL 4: not one whole IPv4 packet.
    let mut ihl4 = to_gn(0);
    ihl4[0] = 0x44;
    let bad_inner = data(&auth, TUNNEL, 1004, &ihl4);
    for d in [
        &forged[..],
        &replayed,
        &unknown,
        &ka[..n],
        &signaling,
        &reflected,
        &bad_inner,
    ] {
        cn.send_to(d, mapped).unwrap();
    }
    // A packet to a VIP without a tunnel: the slow path's.
    gn.send_to(b"lonely", SocketAddrV4::new(LONELY_VIP, 6000))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let want = |t: [u64; FastDrop::COUNT]| {
        t[FastDrop::BadTag.index()] == 2
            && t[FastDrop::Replay.index()] == 1
            && t[FastDrop::UnknownTunnel.index()] == 1
            && t[FastDrop::BadInner.index()] == 1
    };
    while !want(dp.drop_totals()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(want(dp.drop_totals()), "drops: {:?}", dp.drop_totals());
    let mut buf = [0u8; 64];
    assert!(gn.recv(&mut buf).is_err(), "nothing bad reaches gn");
    let mut slow = Vec::new();
    let mut frame = vec![0u8; 2048];
    let deadline = Instant::now() + WAIT;
    while slow.len() < 2 && Instant::now() < deadline {
        match dp.pop_slow(&mut frame) {
            Some(f) => slow.push((f.side, frame[..f.len].to_vec())),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let wan = slow
        .iter()
        .find(|(s, _)| *s == Side::Wan)
        .expect("signaling in the slow queue");
    // Ethernet 14, IPv4 20: source address and port are cn's as nat1 shows them.
    assert_eq!(&wan.1[26..30], &CN_ADDR.octets());
    assert_eq!(u16::from_be_bytes([wan.1[34], wan.1[35]]), NTM_PORT);
    assert_eq!(wan.1[42 + 1], 0x30);
    let lan = slow
        .iter()
        .find(|(s, _)| *s == Side::Lan)
        .expect("the lonely packet in the slow queue");
    assert_eq!(&lan.1[30..34], &LONELY_VIP.octets());
    let w = &dp.worker_stats()[0];
    assert_eq!(w.keepalives, 1);
    assert_eq!(w.total_drops(), 5, "{w:?}");
    let t = &dp.tunnel_stats()[0];
    assert_eq!(t.rx_packets, N as u64);
    assert_eq!(t.last_rx_from, Some(SocketAddrV4::new(CN_ADDR, NTM_PORT)));
    assert!(
        w.lan_rx > N as u64 && w.wan_tx >= N as u64 && w.lan_tx >= N as u64,
        "{w:?}"
    );
    assert_eq!(raw.tx_errors(), 0);
    raw.stop();
}
