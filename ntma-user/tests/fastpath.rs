//! The fast path on the testbed: `Datapath` on ntma's lan0/wan0, a tunnel published by
//! hand, and a small NTM peer in cn written with ntm-proto.
//!
//! * gn → cn: gn sends UDP to the peer's VIP; the datagrams leave ntma as DATA through
//!   nat1's masquerade; cn opens every one with its receive direction key and checks
//!   the inner packet (suite 2: the inner packet is not on the wire in clear).
//! * cn → gn: cn answers to the address:port it observed (nat1's mapping, created by
//!   ntma's outbound packets); gn receives the inner packets.
//! * Forged, replayed, unknown-tunnel, wrong-inner-address, bad-inner-shape and
//!   truncated DATA from cn, and ntma's own DATA sent back to it, are dropped and
//!   counted by reason; none reaches gn; a TUN_KEEPALIVE is counted. Both suites.
//! * A packet to a VIP without a tunnel reaches the slow queue and wakes its eventfd;
//!   beyond the queue's size they are dropped and counted.
//! * From gn, a packet over the inner MTU goes to the slow queue; packets from an
//!   address other than its VIP are passed by XDP (`lan_from_non_gn`); none reaches cn.
//! * Two GNs, each with its own tunnel to cn: each GN's packets take its own tunnel,
//!   each tunnel's DATA reaches its own GN, DATA for the other GN or for a GN whose
//!   MAC is unknown is dropped and counted.
//! * After `stop`, no XDP program is left on either NIC.
//!
//! They need root (CAP_BPF, CAP_NET_ADMIN, network namespaces) and fail without it.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use ntm_proto::{
    data::{decap, emit_tun_keepalive, encap_in_place, Decapped, RxTunnel, SeqCounter},
    node::TunnelParams,
    wire::HEADER_LEN,
    Cipher, DirectionKeys, Key, Path, Role as TunnelRole, Suite,
};
use ntm_testbed::{
    ifname, unique_prefix, Options, Role, Testbed, CN_ADDR, NTMA_LAN_ADDR, NTMA_WAN_ADDR, VIP_POOL,
};
use ntma_common::{Verdict, XdpConfig, NTM_PORT};
use ntma_user::datapath::{Datapath, GnLink, Link};
use ntma_user::fastpath::{AfXdp, AfXdpConfig, DatapathState, FastDrop, Forward, Side, XskMode};
use ntma_user::gn::MacAddr;
use ntma_user::wire::checksum::internet as checksum;

const GN_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const PEER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
/// A VIP without a tunnel: its packets go to the slow queue.
const LONELY_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 77);
const TUNNEL: u32 = 0x00c0_ffee;
const GN_PORT: u16 = 5000;
const PEER_PORT: u16 = 6000;
/// Datagrams each way.
const N: usize = 64;
/// Bad datagrams of each kind.
const BAD: usize = 8;
const WAIT: Duration = Duration::from_secs(10);
/// Slots of the worker's slow queue in these tests.
const SLOW_SLOTS: usize = 16;
/// A second address on gn's NIC that is not its VIP.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 50);

fn require_root() {
    if let Err(e) = ntm_testbed::require_root() {
        panic!("{e}");
    }
}

fn mac_of(tb: &Testbed, role: Role, ifname: &str) -> [u8; 6] {
    let out = tb
        .output(role, ["cat", &format!("/sys/class/net/{ifname}/address")])
        .expect("read the MAC address");
    let bytes: Vec<u8> = out
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex MAC"))
        .collect();
    bytes.try_into().expect("6-byte MAC")
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// gn gets its VIP by hand (no DHCP server here) and static neighbour entries for the
/// VIPs it sends to (no proxy ARP either).
fn prepare_gn(tb: &Testbed, lan_mac: [u8; 6]) {
    tb.exec(
        Role::Gn,
        [
            "ip",
            "addr",
            "add",
            &format!("{GN_VIP}/10"),
            "dev",
            ifname::ETH0,
        ],
    )
    .unwrap();
    for vip in [PEER_VIP, LONELY_VIP] {
        tb.exec(
            Role::Gn,
            [
                "ip",
                "neigh",
                "replace",
                &vip.to_string(),
                "lladdr",
                &mac_text(lan_mac),
                "dev",
                ifname::ETH0,
                "nud",
                "permanent",
            ],
        )
        .unwrap();
    }
}

/// `K_tun`.
fn key() -> Key {
    Key::from_bytes(*b"ntma fast path integration test!")
}

/// (send, receive) direction keys of the end playing `role`; ntma is the initiator.
fn keys(role: TunnelRole) -> (Key, Key) {
    let d = DirectionKeys::derive(&key());
    let (tx, rx) = d.for_role(role).unwrap();
    (tx.clone(), rx.clone())
}

/// An IPv4/UDP packet (UDP checksum 0: "none", valid over IPv4).
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// The UDP payload of an IPv4/UDP packet.
fn udp_payload(p: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    let ihl = usize::from(*p.first()? & 0x0f) * 4;
    if p.len() < ihl + 8 || p[9] != 17 {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    let udp_len = usize::from(port(ihl + 4));
    let body = p.get(ihl + 8..ihl + udp_len)?;
    Some((
        SocketAddrV4::new(ip(12), port(ihl)),
        SocketAddrV4::new(ip(16), port(ihl + 2)),
        body,
    ))
}

/// The NTM peer in cn (the responder): its send key, counter and receive state.
struct Peer {
    sock: UdpSocket,
    tx: Cipher,
    seq: SeqCounter,
    rx: RxTunnel,
}

impl Peer {
    fn new(tb: &Testbed, suite: Suite) -> Peer {
        let sock = tb
            .in_netns(Role::Cn, || {
                UdpSocket::bind(SocketAddrV4::new(CN_ADDR, NTM_PORT))
            })
            .expect("enter cn")
            .expect("bind the peer in cn");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (tx, rx) = keys(TunnelRole::Responder);
        Peer {
            sock,
            rx: RxTunnel::new(Cipher::new(suite, &rx).unwrap(), GN_VIP, PEER_VIP),
            tx: Cipher::new(suite, &tx).unwrap(),
            seq: SeqCounter::starting_at(1),
        }
    }

    /// DATA with `inner`, sealed with tunnel id `id` and the next seq.
    fn data(&self, id: u32, inner: &[u8]) -> Vec<u8> {
        self.data_with_seq(id, self.seq.next(), inner)
    }

    fn data_with_seq(&self, id: u32, seq: u64, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; inner.len() + 32];
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        let n = encap_in_place(&mut buf, 0, inner.len(), id, seq, &self.tx).unwrap();
        buf.truncate(n);
        buf
    }

    fn to_gn(&self, payload: &[u8]) -> Vec<u8> {
        udp_packet(
            SocketAddrV4::new(PEER_VIP, PEER_PORT),
            SocketAddrV4::new(GN_VIP, GN_PORT),
            payload,
        )
    }
}

/// Receives on `sock` until `want` datagrams or `limit` passed.
fn recv_n(sock: &UdpSocket, want: usize, limit: Duration) -> Vec<(Vec<u8>, SocketAddrV4)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    while got.len() < want && Instant::now() < deadline {
        if let Ok((n, SocketAddr::V4(from))) = sock.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
    }
    got
}

fn xdp_config() -> XdpConfig {
    XdpConfig::new(
        u32::from(VIP_POOL.0),
        VIP_POOL.1,
        u32::from(NTMA_LAN_ADDR),
        NTM_PORT,
    )
}

fn xdp_attached(tb: &Testbed, ifname: &str) -> bool {
    let out = tb
        .output(Role::Ntma, ["ip", "-d", "link", "show", "dev", ifname])
        .expect("ip link show");
    out.contains("xdp")
}

struct World {
    suite: Suite,
    /// The first DATA cn received from ntma, to send back (a reflection).
    captured: Option<Vec<u8>>,
    tb: Testbed,
    datapath: Option<AfXdp>,
    dp: std::sync::Arc<DatapathState>,
    gn: UdpSocket,
    peer: Peer,
    nonce: u64,
}

/// Testbed with `queues` queues on the AF_XDP path, the fast path started on ntma with
/// one worker per queue, the link and one tunnel to cn in `suite` published.
fn world(tag: &str, queues: u16, cores: Vec<usize>, suite: Suite) -> World {
    require_root();
    let tb = Testbed::up_with(
        &unique_prefix(tag),
        Options {
            queues,
            ..Options::default()
        },
    )
    .expect("testbed up");
    let lan_mac = mac_of(&tb, Role::Ntma, ifname::NTMA_LAN);
    let wan_mac = mac_of(&tb, Role::Ntma, ifname::NTMA_WAN);
    let gateway_mac = mac_of(&tb, Role::Nat1, ifname::NAT_LAN);
    let gn_mac = mac_of(&tb, Role::Gn, ifname::ETH0);
    prepare_gn(&tb, lan_mac);

    let mut cfg = AfXdpConfig::new(ifname::NTMA_LAN, ifname::NTMA_WAN, xdp_config());
    cfg.queues = u32::from(queues);
    cfg.cores = cores;
    // The default UMEM per worker (its fill rings and TX rings full at once).
    cfg.umem.frame_count *= u32::from(queues);
    cfg.slow_slots = SLOW_SLOTS;
    // Worker threads are spawned from this thread inside ntma's namespace: they stay there.
    let datapath = tb
        .in_netns(Role::Ntma, || AfXdp::start(cfg))
        .expect("enter ntma")
        .unwrap_or_else(|e| panic!("starting the fast path in ntma failed: {e}"));
    let dp = std::sync::Arc::clone(datapath.state());
    // Through the datapath: it writes the GN VIPs for XDP too.
    datapath.set_gns(&[GnLink {
        vip: GN_VIP,
        mac: Some(MacAddr(gn_mac)),
    }]);
    dp.set_link(Some(Link {
        lan_mac: MacAddr(lan_mac),
        wan_mac: MacAddr(wan_mac),
        wan_ip: NTMA_WAN_ADDR,
        wan_port: NTM_PORT,
        gateway_mac: MacAddr(gateway_mac),
    }));
    let (tx_key, rx_key) = keys(TunnelRole::Initiator);
    dp.tunnel_up(&TunnelParams {
        tunnel_id: TUNNEL,
        peer_fqdn: "cn.ntm.test".into(),
        peer_vip: PEER_VIP,
        endpoint: SocketAddrV4::new(CN_ADDR, NTM_PORT),
        path: Path::Direct,
        role: TunnelRole::Initiator,
        suite,
        tx_key,
        rx_key,
        tx_seq: SeqCounter::starting_at(1),
        local_vip: GN_VIP,
    })
    .expect("a supported suite");
    let gn = tb
        .in_netns(Role::Gn, || {
            UdpSocket::bind(SocketAddrV4::new(GN_VIP, GN_PORT))
        })
        .expect("enter gn")
        .expect("bind in gn");
    gn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let peer = Peer::new(&tb, suite);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    World {
        suite,
        captured: None,
        tb,
        datapath: Some(datapath),
        dp,
        gn,
        peer,
        nonce,
    }
}

impl World {
    /// gn → cn: N datagrams; cn verifies each. Returns the address:port cn saw (nat1's
    /// mapping of ntma's wan0:7700).
    fn uplink_exchange(&mut self) -> SocketAddrV4 {
        let to = SocketAddrV4::new(PEER_VIP, PEER_PORT);
        for i in 0..N {
            self.gn
                .send_to(format!("up {i} {}", self.nonce).as_bytes(), to)
                .expect("send from gn");
        }
        let got = recv_n(&self.peer.sock, N, WAIT);
        assert_eq!(got.len(), N, "cn received {} of {N} DATA", got.len());
        let mut seen = [false; N];
        let mut mapped = None;
        for (datagram, from) in &got {
            assert_eq!(from.ip(), &ntm_testbed::NAT1_WAN_ADDR, "through nat1");
            assert!(mapped.is_none_or(|m| m == *from), "one NAT mapping");
            mapped = Some(*from);
            if self.captured.is_none() {
                self.captured = Some(datagram.clone());
            }
            assert_eq!(datagram[3], u8::from(self.suite), "the tunnel's suite");
            let nonce = self.nonce.to_string();
            let in_clear = datagram.windows(nonce.len()).any(|w| w == nonce.as_bytes());
            assert_eq!(
                in_clear,
                self.suite == Suite::HmacSha256_128,
                "payload in clear"
            );
            let rx = &mut self.peer.rx;
            let mut datagram = datagram.clone();
            let d = decap(&mut datagram, |id| (id == TUNNEL).then_some(&mut *rx))
                .unwrap_or_else(|e| panic!("cn rejects the adapter's DATA: {e}"));
            let Decapped::Data { inner, seq, .. } = d else {
                panic!("not DATA: {d:?}")
            };
            assert!((1..=N as u64).contains(&seq), "seq {seq}");
            let (src, dst, body) = udp_payload(inner).expect("inner UDP");
            assert_eq!(src, SocketAddrV4::new(GN_VIP, GN_PORT));
            assert_eq!(dst, to);
            let text = std::str::from_utf8(body).unwrap();
            let mut w = text.split(' ');
            assert_eq!(w.next(), Some("up"));
            let i: usize = w.next().unwrap().parse().unwrap();
            assert_eq!(w.next(), Some(self.nonce.to_string().as_str()));
            assert!(!seen[i], "duplicate {i}");
            seen[i] = true;
        }
        mapped.expect("at least one datagram")
    }

    /// cn → gn through the mapping: N datagrams, all arrive.
    fn downlink_exchange(&self, mapped: SocketAddrV4) {
        for i in 0..N {
            let inner = self
                .peer
                .to_gn(format!("down {i} {}", self.nonce).as_bytes());
            self.peer
                .sock
                .send_to(&self.peer.data(TUNNEL, &inner), mapped)
                .expect("send from cn");
        }
        let got = recv_n(&self.gn, N, WAIT);
        let mut seen = [false; N];
        for (payload, from) in &got {
            assert_eq!(*from, SocketAddrV4::new(PEER_VIP, PEER_PORT));
            let text = std::str::from_utf8(payload).unwrap();
            let mut w = text.split(' ');
            assert_eq!(w.next(), Some("down"), "{text:?} reached gn");
            let i: usize = w.next().unwrap().parse().unwrap();
            assert_eq!(w.next(), Some(self.nonce.to_string().as_str()));
            assert!(!seen[i]);
            seen[i] = true;
        }
        assert_eq!(got.len(), N, "gn received {} of {N}", got.len());
    }

    fn stop(&mut self) {
        if let Some(d) = self.datapath.take() {
            d.stop();
        }
        for i in [ifname::NTMA_LAN, ifname::NTMA_WAN] {
            assert!(!xdp_attached(&self.tb, i), "XDP still attached to {i}");
        }
    }
}

#[test]
fn fastpath_carries_gn_traffic_through_the_tunnel_and_drops_forgeries() {
    carries_and_drops("fp1", Suite::Aes256Gcm);
}

#[test]
fn fastpath_carries_and_drops_with_suite_1() {
    carries_and_drops("fp1h", Suite::HmacSha256_128);
}

fn carries_and_drops(tag: &str, suite: Suite) {
    let mut w = world(tag, 1, Vec::new(), suite);
    let datapath = w.datapath.as_ref().unwrap();
    assert_eq!(
        datapath.xsk_mode(),
        XskMode::Copy,
        "veth runs AF_XDP in copy mode"
    );
    for i in [ifname::NTMA_LAN, ifname::NTMA_WAN] {
        assert!(xdp_attached(&w.tb, i), "XDP attached to {i}");
    }

    let mapped = w.uplink_exchange();
    w.downlink_exchange(mapped);

    // Bad DATA from cn (through nat1's mapping, so from the peer's own address:port),
    // each kind BAD times. Every inner packet says "forged", so gn would notice any
    // of them.
    let forged_inner = w.peer.to_gn(b"forged");
    let reflected = w.captured.clone().expect("a DATA of ntma");
    let mut bad: Vec<Vec<u8>> = Vec::new();
    for _ in 0..BAD {
        // ntma's own DATA, sent back to it.
        bad.push(reflected.clone());
        // Inner IHL 4, and an inner total length past the body.
        let mut ihl4 = forged_inner.clone();
        ihl4[0] = 0x44;
        bad.push(w.peer.data(TUNNEL, &ihl4));
        let mut long = forged_inner.clone();
        let l = u16::from_be_bytes([long[2], long[3]]) + 8;
        long[2..4].copy_from_slice(&l.to_be_bytes());
        bad.push(w.peer.data(TUNNEL, &long));
        let mut tag = w.peer.data(TUNNEL, &forged_inner);
        let l = tag.len();
        tag[l - 3] ^= 0x10;
        bad.push(tag);
        let mut body = w.peer.data(TUNNEL, &forged_inner);
        body[HEADER_LEN + 28] ^= 1;
        bad.push(body);
        bad.push(w.peer.data(TUNNEL + 1, &forged_inner));
        let spoofed = udp_packet(
            SocketAddrV4::new(LONELY_VIP, PEER_PORT),
            SocketAddrV4::new(GN_VIP, GN_PORT),
            b"forged",
        );
        bad.push(w.peer.data(TUNNEL, &spoofed));
        bad.push(w.peer.data(TUNNEL, &forged_inner)[..31].to_vec());
    }
    for b in &bad {
        w.peer.sock.send_to(b, mapped).unwrap();
    }
    // An authentic packet, then BAD replays of it, a TUN_KEEPALIVE, and a last good
    // packet: once gn has that one, the worker has processed everything before it.
    let barrier = |w: &World, seq: u64| {
        let inner = w.peer.to_gn(format!("barrier {seq}").as_bytes());
        w.peer.data_with_seq(TUNNEL, seq, &inner)
    };
    let seq = w.peer.seq.next();
    let first = barrier(&w, seq);
    for _ in 0..=BAD {
        w.peer.sock.send_to(&first, mapped).unwrap();
    }
    let mut ka = [0u8; 32];
    emit_tun_keepalive(&mut ka, TUNNEL, w.peer.seq.next(), &w.peer.tx).unwrap();
    w.peer.sock.send_to(&ka, mapped).unwrap();
    let last_seq = w.peer.seq.next();
    w.peer.sock.send_to(&barrier(&w, last_seq), mapped).unwrap();
    let got = recv_n(&w.gn, 2, WAIT);
    let texts: Vec<String> = got
        .iter()
        .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(
        texts,
        vec![format!("barrier {seq}"), format!("barrier {last_seq}")],
        "only the two authentic packets reach gn"
    );
    let more = recv_n(&w.gn, 1, Duration::from_millis(500));
    assert!(more.is_empty(), "something more reached gn: {more:?}");

    // A packet to a VIP without a tunnel goes to the control thread.
    let waker = w.dp.slow_waker();
    waker.clear();
    w.gn.send_to(b"hello?", SocketAddrV4::new(LONELY_VIP, PEER_PORT))
        .unwrap();
    assert!(waker.wait(WAIT), "the slow queue's eventfd was signalled");
    waker.clear();
    let mut buf = [0u8; 2048];
    let f = w.dp.pop_slow(&mut buf).expect("a slow frame");
    assert_eq!(f.side, Side::Lan);
    assert!(!f.truncated);
    let (src, dst, body) = udp_payload(&buf[14..f.len]).expect("UDP");
    assert_eq!(src.ip(), &GN_VIP);
    assert_eq!(dst, SocketAddrV4::new(LONELY_VIP, PEER_PORT));
    assert_eq!(body, b"hello?");
    assert!(w.dp.pop_slow(&mut buf).is_none());

    // Bad input from the GN side: a packet bigger than the inner MTU (ping's 1500-byte
    // packet, DF set: to the slow queue, whose control answers ICMP fragmentation
    // needed; none runs here, so it takes a slot), and datagrams from an address that
    // is not the GN's VIP (XDP passes those to the kernel: no GN's source).
    let _ = w.tb.output(
        Role::Gn,
        [
            "ping",
            "-c1",
            "-W1",
            "-s1472",
            "-Mdo",
            &PEER_VIP.to_string(),
        ],
    );
    w.tb.exec(
        Role::Gn,
        [
            "ip",
            "addr",
            "add",
            &format!("{SPOOFED}/10"),
            "dev",
            ifname::ETH0,
        ],
    )
    .unwrap();
    let spoofer =
        w.tb.in_netns(Role::Gn, || {
            UdpSocket::bind(SocketAddrV4::new(SPOOFED, GN_PORT))
        })
        .expect("enter gn")
        .expect("bind the second address in gn");
    for _ in 0..BAD {
        spoofer
            .send_to(b"spoofed", SocketAddrV4::new(PEER_VIP, PEER_PORT))
            .unwrap();
    }
    // The slow queue holds SLOW_SLOTS frames (one is the oversize ping's); the rest
    // are dropped and counted.
    for _ in 0..SLOW_SLOTS + BAD {
        w.gn.send_to(b"anyone?", SocketAddrV4::new(LONELY_VIP, PEER_PORT))
            .unwrap();
    }

    // Counters: workers publish after each burst; wait until these last frames are in.
    let done = |s: &ntma_user::fastpath::WorkerStats| {
        s.slow == 1 + SLOW_SLOTS as u64 && s.drop_count(FastDrop::SlowQueueFull) == BAD as u64 + 1
    };
    let mut stats = w.dp.worker_stats();
    let deadline = Instant::now() + WAIT;
    while !done(&stats[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        stats = w.dp.worker_stats();
    }
    let s = &stats[0];
    eprintln!(
        "worker 0: lan rx {} tx {}, wan rx {} tx {}, batches {}, keepalives {}, slow {}, drops {:?}",
        s.lan_rx,
        s.lan_tx,
        s.wan_rx,
        s.wan_tx,
        s.batches,
        s.keepalives,
        s.slow,
        s.drops().filter(|(_, n)| *n > 0).collect::<Vec<_>>()
    );
    assert_eq!(s.drop_count(FastDrop::BadTag), 3 * BAD as u64);
    assert_eq!(s.drop_count(FastDrop::BadInner), 2 * BAD as u64);
    assert_eq!(s.drop_count(FastDrop::UnknownTunnel), BAD as u64);
    assert_eq!(s.drop_count(FastDrop::InnerAddr), BAD as u64);
    assert_eq!(s.drop_count(FastDrop::Truncated), BAD as u64);
    assert_eq!(s.drop_count(FastDrop::Replay), BAD as u64);
    assert_eq!(s.too_big, 1);
    assert_eq!(s.drop_count(FastDrop::SlowQueueFull), BAD as u64 + 1);
    assert_eq!(s.slow, 1 + SLOW_SLOTS as u64);
    assert_eq!(s.total_drops(), (10 * BAD + 1) as u64, "no other drops");
    assert_eq!(s.keepalives, 1);
    assert_eq!(s.wan_tx, N as u64);
    assert_eq!(s.lan_tx, N as u64 + 2);
    let mut queued = 0;
    while w.dp.pop_slow(&mut buf).is_some() {
        queued += 1;
    }
    assert_eq!(queued, SLOW_SLOTS);
    // Nothing of the bad GN input left towards cn.
    let leaked = recv_n(&w.peer.sock, 1, Duration::from_millis(500));
    assert!(leaked.is_empty(), "bad GN input reached cn: {leaked:?}");
    let t = &w.dp.tunnel_stats()[0];
    assert_eq!(t.tx_packets, N as u64);
    assert_eq!(t.rx_packets, N as u64 + 2);
    assert_eq!(t.rx_keepalives, 1);
    assert_eq!(t.next_tx_seq, N as u64 + 1);
    assert_eq!(t.last_rx_from, Some(SocketAddrV4::new(CN_ADDR, NTM_PORT)));
    assert!(t.last_rx.is_some());
    let xdp = w.datapath.as_ref().unwrap().xdp_counters().unwrap();
    assert!(xdp.get(Verdict::LanRedirect) > N as u64);
    assert_eq!(xdp.get(Verdict::LanFromNonGn), BAD as u64);
    assert!(xdp.get(Verdict::WanRedirect) >= (N + 9 * BAD + 3) as u64);

    w.stop();
}

/// Two queues, two workers pinned to cores 0 and 1: traffic flows both ways whichever
/// queue carries it, and stop detaches everything.
#[test]
fn fastpath_with_two_pinned_workers() {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let cores: Vec<usize> = cores.iter().map(|c| c.id).take(2).collect();
    let mut w = world("fp2", 2, cores.clone(), Suite::Aes256Gcm);
    let mapped = w.uplink_exchange();
    w.downlink_exchange(mapped);
    let stats = w.dp.worker_stats();
    assert_eq!(stats.len(), 2);
    for (s, core) in stats.iter().zip(cores.iter().cycle()) {
        assert_eq!(s.core, Some(*core), "worker {} pinned", s.queue);
    }
    w.stop();
}

/// Two GNs behind one adapter (a second VIP on gn's NIC, so one MAC for both), each
/// with its own tunnel to cn's VIP: each GN's packets leave through its own tunnel and
/// each tunnel's DATA reaches its own GN; DATA on one GN's tunnel to the other GN is
/// dropped, and so is DATA to a GN whose MAC is not known yet (counted as not ready).
#[test]
fn fastpath_serves_two_gns() {
    const GN2_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 4);
    const TUNNEL2: u32 = TUNNEL + 1;
    let suite = Suite::Aes256Gcm;
    let mut w = world("fpgn", 1, Vec::new(), suite);
    let mapped = w.uplink_exchange();
    let gn_mac = MacAddr(mac_of(&w.tb, Role::Gn, ifname::ETH0));
    w.tb.exec(
        Role::Gn,
        [
            "ip",
            "addr",
            "add",
            &format!("{GN2_VIP}/10"),
            "dev",
            ifname::ETH0,
        ],
    )
    .unwrap();
    let gn1 = GnLink {
        vip: GN_VIP,
        mac: Some(gn_mac),
    };
    let datapath = w.datapath.as_ref().unwrap();
    datapath.set_gns(&[
        gn1,
        GnLink {
            vip: GN2_VIP,
            mac: None,
        },
    ]);
    let (tx_key, rx_key) = keys(TunnelRole::Initiator);
    w.dp.tunnel_up(&TunnelParams {
        tunnel_id: TUNNEL2,
        peer_fqdn: "cn.ntm.test".into(),
        peer_vip: PEER_VIP,
        endpoint: SocketAddrV4::new(CN_ADDR, NTM_PORT),
        path: Path::Direct,
        role: TunnelRole::Initiator,
        suite,
        tx_key,
        rx_key,
        tx_seq: SeqCounter::starting_at(1),
        local_vip: GN2_VIP,
    })
    .unwrap();
    let gn2 =
        w.tb.in_netns(Role::Gn, || {
            UdpSocket::bind(SocketAddrV4::new(GN2_VIP, GN_PORT))
        })
        .expect("enter gn")
        .expect("bind the second GN's VIP");
    gn2.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // Up from the second GN, whose MAC is not known yet: through its own tunnel.
    let to = SocketAddrV4::new(PEER_VIP, PEER_PORT);
    gn2.send_to(b"from gn2", to).unwrap();
    let got = recv_n(&w.peer.sock, 1, WAIT);
    assert_eq!(got.len(), 1, "cn received the second GN's DATA");
    let mut datagram = got[0].0.clone();
    let (_, r2i) = keys(TunnelRole::Responder);
    let mut rx2 = RxTunnel::new(Cipher::new(suite, &r2i).unwrap(), GN2_VIP, PEER_VIP);
    let d = decap(&mut datagram, |id| (id == TUNNEL2).then_some(&mut rx2))
        .unwrap_or_else(|e| panic!("not the second GN's tunnel: {e}"));
    let Decapped::Data { inner, .. } = d else {
        panic!("not DATA: {d:?}")
    };
    let (src, dst, body) = udp_payload(inner).expect("inner UDP");
    assert_eq!(
        (src, dst, body),
        (SocketAddrV4::new(GN2_VIP, GN_PORT), to, &b"from gn2"[..])
    );

    // Down to the second GN: not ready while its MAC is unknown, delivered after.
    let from = SocketAddrV4::new(PEER_VIP, PEER_PORT);
    let to_gn2 = |text: &[u8]| udp_packet(from, SocketAddrV4::new(GN2_VIP, GN_PORT), text);
    let send = |id: u32, inner: &[u8]| {
        w.peer
            .sock
            .send_to(&w.peer.data(id, inner), mapped)
            .expect("send from cn");
    };
    send(TUNNEL2, &to_gn2(b"too early"));
    // Workers publish their counters after each burst.
    let counted = |reason: FastDrop| {
        let deadline = Instant::now() + WAIT;
        let mut s = w.dp.worker_stats().remove(0);
        while s.drop_count(reason) == 0 && Instant::now() < deadline {
            std::thread::yield_now();
            s = w.dp.worker_stats().remove(0);
        }
        s
    };
    assert_eq!(
        counted(FastDrop::NotReady).drop_count(FastDrop::NotReady),
        1
    );
    datapath.set_gns(&[
        gn1,
        GnLink {
            vip: GN2_VIP,
            mac: Some(gn_mac),
        },
    ]);
    // The first GN's tunnel cannot reach the second GN.
    send(TUNNEL, &to_gn2(b"wrong tunnel"));
    send(TUNNEL2, &to_gn2(b"to gn2"));
    send(TUNNEL, &w.peer.to_gn(b"to gn1"));
    let got2 = recv_n(&gn2, 1, WAIT);
    assert_eq!(got2.len(), 1);
    assert_eq!((got2[0].0.as_slice(), got2[0].1), (&b"to gn2"[..], from));
    let got1 = recv_n(&w.gn, 1, WAIT);
    assert_eq!(got1.len(), 1);
    assert_eq!((got1[0].0.as_slice(), got1[0].1), (&b"to gn1"[..], from));
    assert!(recv_n(&gn2, 1, Duration::from_millis(300)).is_empty());

    let s = counted(FastDrop::InnerAddr);
    assert_eq!(s.drop_count(FastDrop::NotReady), 1);
    assert_eq!(s.drop_count(FastDrop::InnerAddr), 1);
    assert_eq!(s.total_drops(), 2, "no other drops");
    let t = w.dp.tunnel_stats();
    let of = |id: u32| t.iter().find(|t| t.tunnel_id == id).unwrap();
    assert_eq!(
        (of(TUNNEL).tx_packets, of(TUNNEL2).tx_packets),
        (N as u64, 1)
    );
    assert_eq!((of(TUNNEL2).rx_packets, of(TUNNEL).rx_packets), (1, 1));
    w.stop();
}

// ---------------------------------------------------------------- l2fwd reference

/// A raw socket receiving every frame that arrives in `role`'s namespace.
fn capture(tb: &Testbed, role: Role) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        setsockopt, socket, sockopt::ReceiveTimeout, AddressFamily, SockFlag, SockProtocol,
        SockType,
    };
    let fd = tb
        .in_netns(role, || {
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
        })
        .expect("enter the namespace")
        .expect("AF_PACKET socket");
    setsockopt(
        &fd,
        ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 200_000),
    )
    .unwrap();
    fd
}

/// The first 12 bytes (destination and source MAC) of each inbound frame on `fd` that
/// carries `marker` followed by a number below `want` and `nonce`, by that number;
/// until all `want` came or [`WAIT`] passed.
fn captured_macs(
    fd: &std::os::fd::OwnedFd,
    marker: &str,
    nonce: u64,
    want: usize,
) -> Vec<Option<[u8; 12]>> {
    use nix::sys::socket::{recvfrom, LinkAddr};
    use std::os::fd::AsRawFd;
    const PACKET_OUTGOING: u8 = 4;
    let mut got = vec![None; want];
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    while got.iter().any(Option::is_none) && Instant::now() < deadline {
        let Ok((n, addr)) = recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) else {
            continue;
        };
        if addr.is_some_and(|a| a.pkttype() == PACKET_OUTGOING) {
            continue;
        }
        let text = String::from_utf8_lossy(&buf[..n]);
        let Some(at) = text.find(marker) else {
            continue;
        };
        let mut w = text[at + marker.len()..].split(' ');
        let i: Option<usize> = w.next().and_then(|i| i.parse().ok());
        let same = w.next().is_some_and(|t| t.starts_with(&nonce.to_string()));
        if let (Some(i), true) = (i, same) {
            if i < want {
                got[i] = Some(buf[..12].try_into().unwrap());
            }
        }
    }
    got
}

/// `Forward::L2`: the workers carry every frame both ways with only its MACs
/// rewritten (no tunnel, no link, no crypto): GN frames leave on wan0 to nat1 as
/// nat1 ← wan0, frames from the WAN leave on lan0 to gn as gn ← lan0.
#[test]
fn l2fwd_rewrites_the_macs_both_ways() {
    require_root();
    let tb = Testbed::up(&unique_prefix("l2f")).expect("testbed up");
    let lan_mac = mac_of(&tb, Role::Ntma, ifname::NTMA_LAN);
    let wan_mac = mac_of(&tb, Role::Ntma, ifname::NTMA_WAN);
    let nat1_mac = mac_of(&tb, Role::Nat1, ifname::NAT_LAN);
    let gn_mac = mac_of(&tb, Role::Gn, ifname::ETH0);
    prepare_gn(&tb, lan_mac);
    let macs = |dst: [u8; 6], src: [u8; 6]| -> [u8; 12] {
        let mut m = [0; 12];
        m[..6].copy_from_slice(&dst);
        m[6..].copy_from_slice(&src);
        m
    };
    let (to_wan, to_lan) = (macs(nat1_mac, wan_mac), macs(gn_mac, lan_mac));
    let mut cfg = AfXdpConfig::new(ifname::NTMA_LAN, ifname::NTMA_WAN, xdp_config());
    cfg.forward = Forward::L2 { to_wan, to_lan };
    let datapath = tb
        .in_netns(Role::Ntma, || AfXdp::start(cfg))
        .expect("enter ntma")
        .unwrap_or_else(|e| panic!("starting the fast path in ntma failed: {e}"));
    // XDP redirects the GN's frames only from a GN's VIP.
    datapath.set_gns(&[GnLink {
        vip: GN_VIP,
        mac: Some(MacAddr(gn_mac)),
    }]);
    let (at_nat1, at_gn) = (capture(&tb, Role::Nat1), capture(&tb, Role::Gn));
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;

    let gn = tb
        .in_netns(Role::Gn, || {
            UdpSocket::bind(SocketAddrV4::new(GN_VIP, GN_PORT))
        })
        .expect("enter gn")
        .expect("bind in gn");
    for i in 0..N {
        gn.send_to(
            format!("l2up {i} {nonce}").as_bytes(),
            SocketAddrV4::new(PEER_VIP, PEER_PORT),
        )
        .expect("send from gn");
    }
    let up = captured_macs(&at_nat1, "l2up ", nonce, N);
    assert!(
        up.iter().all(|m| *m == Some(to_wan)),
        "at nat1, nat1 <- wan0 on every frame: {up:?}"
    );

    // DATA-shaped datagrams to ntma's NTM port: what ntma_wan redirects.
    let from_nat1 = tb
        .in_netns(Role::Nat1, || {
            UdpSocket::bind(SocketAddrV4::new(ntm_testbed::NAT1_LAN_ADDR, 0))
        })
        .expect("enter nat1")
        .expect("bind in nat1");
    for i in 0..N {
        let mut m = vec![0u8; 32];
        m[0] = ntma_common::ntm::VERSION;
        m[1] = 0x01;
        m[3] = 2;
        m.extend_from_slice(format!("l2down {i} {nonce}").as_bytes());
        from_nat1
            .send_to(&m, SocketAddrV4::new(NTMA_WAN_ADDR, NTM_PORT))
            .expect("send from nat1");
    }
    let down = captured_macs(&at_gn, "l2down ", nonce, N);
    assert!(
        down.iter().all(|m| *m == Some(to_lan)),
        "at gn, gn <- lan0 on every frame: {down:?}"
    );
    // The worker publishes its counters after the burst's frames left, and again
    // before it sleeps: wait for both directions and the sleep.
    let n = N as u64;
    let published = ntm_testbed::wait_until(WAIT, || {
        let s = &datapath.state().worker_stats()[0];
        s.lan_rx >= n && s.wan_tx >= n && s.wan_rx >= n && s.lan_tx >= n && s.polls > 0
    });
    let s = &datapath.state().worker_stats()[0];
    assert!(published, "{s:?}");
    assert_eq!(s.total_drops(), 0, "{s:?}");
    // The loop's instrumentation: every burst it took is counted, with the wake-ups
    // it made (copy mode on veth asks for every one) and where its time went.
    assert!(s.batches > 0 && s.batches <= s.lan_rx + s.wan_rx, "{s:?}");
    assert!(s.wan_kicks > 0 && s.lan_kicks > 0, "{s:?}");
    assert!(
        s.cycles_process > 0 && s.cycles_ring > 0 && s.cycles_syscall > 0,
        "{s:?}"
    );
    assert!(ntma_user::fastpath::cycles_per_second() > 0);
    datapath.stop();
}
