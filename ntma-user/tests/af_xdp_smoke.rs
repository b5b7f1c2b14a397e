//! The whole XDP → AF_XDP chain on this kernel.
//!
//! * `xdp_programs_classify_with_prog_test_run`: both XDP programs run on crafted frames
//!   through BPF_PROG_TEST_RUN (aya's `TestRun`), checking the action and the per-CPU
//!   verdict counter of each.
//! * `af_xdp_echo_on_the_testbed`: `ntma_lan` attached natively to the ntma namespace's
//!   `lan0` redirects UDP from the gn namespace into an AF_XDP socket (xdpilone,
//!   registered in the XskMap through aya); the test answers every datagram through the
//!   TX ring and the sender must get every reply.
//! * `af_xdp_lan_rx_to_wan_tx_shares_one_umem`: frames received on `lan0` leave on
//!   `wan0`'s TX ring as the same UMEM frames (no copy in userspace), and a socket in
//!   nat1 receives every one.
//! * `af_xdp_wan_takes_data_and_keepalive_and_passes_signaling`: `ntma_wan` on `wan0`
//!   sends NTM DATA and TUN_KEEPALIVE from nat1 to the AF_XDP socket and signaling to
//!   the kernel's UDP socket on the NTM port.
//!
//! They need root (CAP_BPF, CAP_NET_ADMIN, network namespaces) and fail without it.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use ntm_testbed::{ifname, unique_prefix, Role, Testbed, NAT1_LAN_ADDR, NTMA_LAN_ADDR, VIP_POOL};
use ntma_common::{Verdict, XdpConfig, NTM_PORT};
use ntma_user::{
    ebpf::{AttachMode, Counters, Side, XdpPrograms},
    xsk::{Frame, FramePool, Port, PortConfig, Umem, UmemConfig, XskMode},
};

fn require_root() {
    if let Err(e) = ntm_testbed::require_root() {
        panic!("{e}");
    }
}

fn xdp_config() -> XdpConfig {
    XdpConfig::new(
        u32::from(VIP_POOL.0),
        VIP_POOL.1,
        u32::from(NTMA_LAN_ADDR),
        NTM_PORT,
    )
}

// ---------------------------------------------------------------- frames

const GN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const NTMA_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The Internet checksum over `chunks` in a row (each but the last of even length).
fn checksum(chunks: &[&[u8]]) -> u16 {
    use ntma_user::wire::checksum::{accumulate, fold};
    !fold(chunks.iter().map(|c| accumulate(c)).sum())
}

/// Ethernet + IPv4 (+ options) + `l4` with protocol `proto`; fixes the IPv4 checksum.
fn ipv4_frame(
    ethertype: u16,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    options: &[u8],
    frag: u16,
    l4: &[u8],
) -> Vec<u8> {
    let ihl = 20 + options.len();
    let mut f = Vec::new();
    f.extend_from_slice(&NTMA_MAC);
    f.extend_from_slice(&GN_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    let total = (ihl + l4.len()) as u16;
    f.push(0x40 | (ihl / 4) as u8);
    f.push(0);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.push(64);
    f.push(proto);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(options);
    let c = checksum(&[&f[14..14 + ihl]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv4_frame(0x0800, 17, *src.ip(), *dst.ip(), &[], 0, &u)
}

fn arp_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GN_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GN_MAC);
    f.extend_from_slice(&[100, 64, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[100, 64, 0, 9]);
    f
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// NTM message with `msg_type`, padded to header + tag.
fn ntm(msg_type: u8) -> Vec<u8> {
    let mut m = vec![0u8; 32];
    m[0] = ntma_common::ntm::VERSION;
    m[1] = msg_type;
    m[3] = 2;
    m
}

/// [`ntm`] with another protocol version.
fn ntm_version(version: u8, msg_type: u8) -> Vec<u8> {
    let mut m = ntm(msg_type);
    m[0] = version;
    m
}

// ---------------------------------------------------------------- PROG_TEST_RUN

const XDP_PASS: u32 = 2;

#[test]
fn xdp_programs_classify_with_prog_test_run() {
    require_root();
    let mut progs = XdpPrograms::load().expect("load the XDP object");

    // Before userspace writes the configuration, everything passes and is counted so.
    let vip_frame = udp(sa([100, 64, 0, 2], 4000), sa([100, 64, 0, 9], 9000), b"x");
    assert_eq!(progs.test_run(Side::Lan, &vip_frame).unwrap(), XDP_PASS);
    assert_eq!(progs.counters().unwrap().get(Verdict::Unconfigured), 1);

    progs.configure(&xdp_config()).unwrap();
    // Two GNs; a set given again only changes what differs.
    let gn2 = sa([100, 64, 0, 3], 4000);
    progs.set_gn_vips(&[*gn2.ip()]).unwrap();
    progs.set_gn_vips(&[*gn2.ip(), GN_VIP]).unwrap();
    let gn = sa([100, 64, 0, 2], 4000);
    let wan_src = sa([198, 18, 0, 20], 7700);
    let wan_dst = sa([192, 168, 10, 2], 7700);
    let mut fragment = udp(wan_src, wan_dst, &ntm(0x01));
    fragment[20] = 0x20; // more fragments
    let mut short_ipv4 = udp(gn, sa([100, 64, 0, 9], 9000), b"");
    short_ipv4.truncate(14 + 10);
    let mut bad_ihl = udp(gn, sa([100, 64, 0, 9], 9000), b"");
    bad_ihl[14] = 0x44; // IHL 4: below the minimum
    let mut tcp = udp(wan_src, wan_dst, &ntm(0x01));
    tcp[23] = 6;

    let cases: Vec<(&str, Side, Vec<u8>, Verdict)> = vec![
        ("ARP request", Side::Lan, arp_frame(), Verdict::LanNotIpv4),
        (
            "DNS to the router",
            Side::Lan,
            udp(gn, sa([100, 64, 0, 1], 53), b"q"),
            Verdict::LanToRouter,
        ),
        (
            "DHCP DISCOVER",
            Side::Lan,
            udp(sa([0, 0, 0, 0], 68), sa([255, 255, 255, 255], 67), b"d"),
            Verdict::LanNotVip,
        ),
        (
            "to a non-VIP",
            Side::Lan,
            udp(gn, sa([198, 18, 0, 20], 80), b"w"),
            Verdict::LanNotVip,
        ),
        (
            "to a VIP, no socket",
            Side::Lan,
            vip_frame.clone(),
            Verdict::LanNoSocket,
        ),
        (
            "from the second GN to a VIP",
            Side::Lan,
            udp(gn2, sa([100, 64, 0, 9], 9000), b"2"),
            Verdict::LanNoSocket,
        ),
        (
            "GN to GN",
            Side::Lan,
            udp(gn, gn2, b"g"),
            Verdict::LanGnToGn,
        ),
        (
            "GN to GN, the other way",
            Side::Lan,
            udp(gn2, gn, b"g"),
            Verdict::LanGnToGn,
        ),
        (
            "from a VIP that is no GN",
            Side::Lan,
            udp(sa([100, 64, 0, 50], 4000), sa([100, 64, 0, 9], 9000), b"n"),
            Verdict::LanFromNonGn,
        ),
        (
            "from a non-VIP source",
            Side::Lan,
            udp(sa([192, 168, 1, 7], 4000), sa([100, 64, 0, 9], 9000), b"n"),
            Verdict::LanFromNonGn,
        ),
        (
            "from a non-GN to a GN",
            Side::Lan,
            udp(sa([100, 64, 0, 50], 4000), gn, b"n"),
            Verdict::LanFromNonGn,
        ),
        (
            "to the last VIP",
            Side::Lan,
            udp(gn, sa([100, 127, 255, 254], 1), b"v"),
            Verdict::LanNoSocket,
        ),
        (
            "to a VIP with IP options",
            Side::Lan,
            ipv4_frame(
                0x0800,
                17,
                *gn.ip(),
                Ipv4Addr::new(100, 64, 0, 9),
                &[1, 1, 1, 0],
                0,
                &[0; 8],
            ),
            Verdict::LanNoSocket,
        ),
        (
            "truncated IPv4",
            Side::Lan,
            short_ipv4,
            Verdict::LanMalformed,
        ),
        ("IHL below 5", Side::Lan, bad_ihl, Verdict::LanMalformed),
        (
            "DATA",
            Side::Wan,
            udp(wan_src, wan_dst, &ntm(0x01)),
            Verdict::WanNoSocket,
        ),
        (
            "TUN_KEEPALIVE",
            Side::Wan,
            udp(wan_src, wan_dst, &ntm(0x02)),
            Verdict::WanNoSocket,
        ),
        (
            "DATA of version 1",
            Side::Wan,
            udp(wan_src, wan_dst, &ntm_version(1, 0x01)),
            Verdict::WanOtherVersion,
        ),
        (
            "TUN_KEEPALIVE of version 3",
            Side::Wan,
            udp(wan_src, wan_dst, &ntm_version(3, 0x02)),
            Verdict::WanOtherVersion,
        ),
        (
            "TUN_REQ of version 1",
            Side::Wan,
            udp(wan_src, wan_dst, &ntm_version(1, 0x30)),
            Verdict::WanSignaling,
        ),
        (
            "TUN_REQ",
            Side::Wan,
            udp(wan_src, wan_dst, &ntm(0x30)),
            Verdict::WanSignaling,
        ),
        (
            "ROUTE_DIR",
            Side::Wan,
            udp(wan_src, wan_dst, &ntm(0x21)),
            Verdict::WanSignaling,
        ),
        (
            "DC port",
            Side::Wan,
            udp(wan_src, sa([192, 168, 10, 2], 7710), &ntm(0x01)),
            Verdict::WanOtherPort,
        ),
        ("TCP", Side::Wan, tcp, Verdict::WanNotUdp),
        ("fragment", Side::Wan, fragment, Verdict::WanFragment),
        (
            "1-byte NTM payload",
            Side::Wan,
            udp(wan_src, wan_dst, &[1]),
            Verdict::WanMalformed,
        ),
        ("ARP", Side::Wan, arp_frame(), Verdict::WanNotIpv4),
    ];

    for (what, side, frame, verdict) in cases {
        expect_verdict(&mut progs, what, side, &frame, verdict);
    }

    // The second GN goes: its frames are no GN's, and frames to it leave the LAN.
    progs.set_gn_vips(&[GN_VIP]).unwrap();
    let from_gone = udp(gn2, sa([100, 64, 0, 9], 9000), b"2");
    expect_verdict(
        &mut progs,
        "gone GN",
        Side::Lan,
        &from_gone,
        Verdict::LanFromNonGn,
    );
    let to_gone = udp(gn, gn2, b"g");
    expect_verdict(
        &mut progs,
        "to a gone GN",
        Side::Lan,
        &to_gone,
        Verdict::LanNoSocket,
    );

    // 254 GNs (a /24 of them) fit, each one recognised as a source and a destination.
    let many: Vec<Ipv4Addr> = (1..=254).map(|i| Ipv4Addr::new(100, 64, 1, i)).collect();
    progs.set_gn_vips(&many).unwrap();
    for (i, vip) in many.iter().enumerate().step_by(23) {
        let from = SocketAddrV4::new(*vip, 4000);
        let to = SocketAddrV4::new(many[(i + 1) % many.len()], 5000);
        let out = udp(from, sa([100, 64, 0, 9], 9000), b"m");
        expect_verdict(
            &mut progs,
            "one of 254",
            Side::Lan,
            &out,
            Verdict::LanNoSocket,
        );
        let between = udp(from, to, b"m");
        expect_verdict(
            &mut progs,
            "between two of 254",
            Side::Lan,
            &between,
            Verdict::LanGnToGn,
        );
    }
    let replaced = udp(gn, sa([100, 64, 0, 9], 9000), b"x");
    expect_verdict(
        &mut progs,
        "replaced GN",
        Side::Lan,
        &replaced,
        Verdict::LanFromNonGn,
    );
    // More than the map holds: refused.
    let too_many: Vec<Ipv4Addr> = (0..=ntma_common::MAX_GNS)
        .map(|i| Ipv4Addr::from(0x6441_0000 + i))
        .collect();
    assert!(progs.set_gn_vips(&too_many).is_err());
}

/// Runs `side`'s program on `frame`: it must pass it and count exactly `verdict`.
fn expect_verdict(progs: &mut XdpPrograms, what: &str, side: Side, frame: &[u8], verdict: Verdict) {
    let before = progs.counters().unwrap();
    let action = progs.test_run(side, frame).unwrap();
    let delta = progs.counters().unwrap().since(&before);
    assert_eq!(action, XDP_PASS, "{what}: action");
    assert_eq!(
        delta.get(verdict),
        1,
        "{what}: expected {verdict:?}, counters moved: {delta:?}"
    );
    assert_eq!(
        delta.iter().map(|(_, n)| n).sum::<u64>(),
        1,
        "{what}: one verdict per frame"
    );
}

// ---------------------------------------------------------------- testbed helpers

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

/// The VIP the gn namespace sends to (no one owns it: only AF_XDP answers).
const PEER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
const GN_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const ECHO_PORT: u16 = 9000;
const DATAGRAMS: usize = 128;

/// gn gets a VIP by hand (no DHCP server runs here) and a static neighbour entry for
/// `dst` pointing at ntma's lan0 (no proxy ARP either).
fn prepare_gn(tb: &Testbed, lan_mac: [u8; 6], dst: Ipv4Addr) {
    let mac = lan_mac.map(|b| format!("{b:02x}")).join(":");
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
    tb.exec(
        Role::Gn,
        [
            "ip",
            "neigh",
            "replace",
            &dst.to_string(),
            "lladdr",
            &mac,
            "dev",
            ifname::ETH0,
            "nud",
            "permanent",
        ],
    )
    .unwrap();
}

/// Sends `DATAGRAMS` numbered datagrams from gn to `to` and returns every datagram
/// received back within the time limit, with its source.
fn send_from_gn(
    tb: &Testbed,
    to: SocketAddrV4,
    nonce: u64,
    expect_replies: bool,
) -> Vec<(Vec<u8>, SocketAddrV4)> {
    tb.in_netns(Role::Gn, || {
        let sock = UdpSocket::bind(SocketAddrV4::new(GN_VIP, 0)).expect("bind in gn");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        for i in 0..DATAGRAMS {
            sock.send_to(format!("ping {i} {nonce}").as_bytes(), to)
                .expect("send from gn");
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        while expect_replies && got.len() < DATAGRAMS && Instant::now() < deadline {
            if let Ok((n, std::net::SocketAddr::V4(from))) = sock.recv_from(&mut buf) {
                got.push((buf[..n].to_vec(), from));
            }
        }
        got
    })
    .expect("enter gn")
}

// ---------------------------------------------------------------- frame rewriting

/// Turns a received UDP request to ECHO_PORT into its reply in place: MACs, IPs and
/// ports swapped, "ping" → "pong", both checksums recomputed. False for other frames.
fn make_reply(p: &mut [u8]) -> bool {
    if p.len() < 14 + 20 + 8 || p[12..14] != [0x08, 0x00] || p[14] != 0x45 || p[23] != 17 {
        return false;
    }
    let udp_len = usize::from(u16::from_be_bytes([p[38], p[39]]));
    if u16::from_be_bytes([p[36], p[37]]) != ECHO_PORT || 34 + udp_len > p.len() || udp_len < 12 {
        return false;
    }
    if &p[42..46] != b"ping" {
        return false;
    }
    p[42..46].copy_from_slice(b"pong");
    let (dst_mac, src_mac) = (p[0..6].to_vec(), p[6..12].to_vec());
    p[0..6].copy_from_slice(&src_mac);
    p[6..12].copy_from_slice(&dst_mac);
    let (src_ip, dst_ip) = (p[26..30].to_vec(), p[30..34].to_vec());
    p[26..30].copy_from_slice(&dst_ip);
    p[30..34].copy_from_slice(&src_ip);
    let (sport, dport) = (p[34..36].to_vec(), p[36..38].to_vec());
    p[34..36].copy_from_slice(&dport);
    p[36..38].copy_from_slice(&sport);
    fix_checksums(p, udp_len);
    true
}

/// Recomputes the IPv4 header and UDP checksums of an IHL-5 UDP frame.
fn fix_checksums(p: &mut [u8], udp_len: usize) {
    p[24..26].fill(0);
    let c = checksum(&[&p[14..34]]);
    p[24..26].copy_from_slice(&c.to_be_bytes());
    p[40..42].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[0..8].copy_from_slice(&p[26..34]);
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let c = match checksum(&[&pseudo, &p[34..34 + udp_len]]) {
        0 => 0xffff,
        c => c,
    };
    p[40..42].copy_from_slice(&c.to_be_bytes());
}

/// Frames in flight from a worker: put on TX, waiting for completion.
struct Worker {
    umem: Arc<Umem>,
    pool: FramePool,
    rx: Vec<Frame>,
    tx: Vec<Frame>,
    total_frames: u32,
}

impl Worker {
    fn new(umem: &Arc<Umem>, frames: u32) -> Self {
        Self {
            umem: Arc::clone(umem),
            pool: umem.pool(frames).expect("frames for the worker"),
            rx: Vec::with_capacity(64),
            tx: Vec::with_capacity(64),
            total_frames: frames,
        }
    }

    /// Runs `rewrite` on every frame received on `rx_port` and transmits the frames it
    /// accepts on `tx_port` (which may be the same port), until `stop` or `want` frames
    /// went out. Returns (sent, ignored).
    fn forward(
        &mut self,
        rx_port: &mut Port,
        mut tx_port: Option<&mut Port>,
        stop: &AtomicBool,
        want: usize,
        mut rewrite: impl FnMut(&mut [u8]) -> bool,
    ) -> (usize, usize) {
        let (mut sent, mut ignored) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while sent < want && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let out: &mut Port = match tx_port.as_deref_mut() {
                Some(p) => p,
                None => &mut *rx_port,
            };
            out.complete(&mut self.pool, 64);
            if rx_port.rx_burst(&mut self.pool, &mut self.rx) == 0 && self.tx.is_empty() {
                rx_port.wait_rx(Duration::from_millis(20)).expect("poll");
                continue;
            }
            for mut frame in self.rx.drain(..) {
                if rewrite(self.umem.packet_mut(&mut frame)) {
                    self.tx.push(frame);
                } else {
                    ignored += 1;
                    self.pool.free(frame);
                }
            }
            let out: &mut Port = match tx_port.as_deref_mut() {
                Some(p) => p,
                None => &mut *rx_port,
            };
            sent += out.tx_burst(&mut self.tx) as usize;
        }
        (sent, ignored)
    }

    /// Waits until every transmitted frame has come back through `port`'s completion
    /// ring; returns whether all frames are accounted for (pool + fill rings).
    fn drain_completions(&mut self, port: &mut Port, in_fill_rings: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            port.kick_tx();
            port.complete(&mut self.pool, 256);
            let accounted = self.pool.len() as u64 + in_fill_rings;
            if accounted == u64::from(self.total_frames) {
                return true;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "frames: pool {} + fill rings {in_fill_rings} != {}",
                    self.pool.len(),
                    self.total_frames
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Tells this run's datagrams from any other.
fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id())
}

fn in_fill_ring(port: &Port) -> u64 {
    let s = port.stats();
    s.filled - s.rx
}

struct EchoResult {
    mode: XskMode,
    sent: usize,
    ignored: usize,
    counters: Counters,
    frames_accounted: bool,
}

// ---------------------------------------------------------------- echo through AF_XDP

#[test]
fn af_xdp_echo_on_the_testbed() {
    require_root();
    let tb = Testbed::up(&unique_prefix("xsk")).expect("testbed up");
    let lan_mac = mac_of(&tb, Role::Ntma, ifname::NTMA_LAN);
    prepare_gn(&tb, lan_mac, PEER_VIP);

    let stop = AtomicBool::new(false);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let nonce = nonce();

    let (result, replies) = std::thread::scope(|s| {
        let ntma = s.spawn(|| {
            tb.in_netns(Role::Ntma, || -> Result<EchoResult, String> {
                let setup = || -> Result<_, String> {
                    let mut progs = XdpPrograms::load().map_err(|e| e.to_string())?;
                    progs.configure(&xdp_config()).map_err(|e| e.to_string())?;
                    progs.set_gn_vips(&[GN_VIP]).map_err(|e| e.to_string())?;
                    let umem = Arc::new(
                        Umem::new(UmemConfig {
                            frame_count: 1024,
                            ..UmemConfig::default()
                        })
                        .map_err(|e| e.to_string())?,
                    );
                    let mut worker = Worker::new(&umem, 1024);
                    let mut port = Port::bind(&umem, PortConfig::new(ifname::NTMA_LAN, 0))
                        .map_err(|e| e.to_string())?;
                    port.fill(&mut worker.pool, 512);
                    progs
                        .register_socket(Side::Lan, 0, &port)
                        .map_err(|e| e.to_string())?;
                    progs
                        .attach(Side::Lan, ifname::NTMA_LAN, AttachMode::Native)
                        .map_err(|e| e.to_string())?;
                    Ok((progs, worker, port))
                };
                let (progs, mut worker, mut port) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let (sent, ignored) = worker.forward(&mut port, None, &stop, DATAGRAMS, make_reply);
                let in_fill = in_fill_ring(&port);
                let frames_accounted = worker.drain_completions(&mut port, in_fill);
                Ok(EchoResult {
                    mode: port.mode(),
                    sent,
                    ignored,
                    counters: progs.counters().map_err(|e| e.to_string())?,
                    frames_accounted,
                })
            })
            .expect("enter ntma")
        });
        let ready = ready_rx.recv_timeout(Duration::from_secs(30));
        let replies = match ready {
            Ok(Ok(())) => send_from_gn(&tb, SocketAddrV4::new(PEER_VIP, ECHO_PORT), nonce, true),
            _ => Vec::new(),
        };
        stop.store(true, Ordering::Relaxed);
        (ntma.join().expect("ntma thread"), replies)
    });

    let r = result.unwrap_or_else(|e| panic!("AF_XDP set-up in the ntma namespace failed: {e}"));
    eprintln!(
        "AF_XDP on lan0: mode {}, {} replies sent, {} other frames, counters {:?}",
        r.mode,
        r.sent,
        r.ignored,
        r.counters
            .iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    );
    let mut seen = [false; DATAGRAMS];
    for (payload, from) in &replies {
        assert_eq!(
            *from,
            SocketAddrV4::new(PEER_VIP, ECHO_PORT),
            "reply source"
        );
        let text = std::str::from_utf8(payload).expect("UTF-8 reply");
        let mut words = text.split(' ');
        assert_eq!(words.next(), Some("pong"), "reply {text:?}");
        let i: usize = words
            .next()
            .and_then(|w| w.parse().ok())
            .expect("sequence number");
        assert_eq!(
            words.next(),
            Some(nonce.to_string().as_str()),
            "reply {text:?} is from this run"
        );
        assert!(
            i < DATAGRAMS && !seen[i],
            "reply {i} duplicated or out of range"
        );
        seen[i] = true;
    }
    let missing: Vec<usize> = (0..DATAGRAMS).filter(|i| !seen[*i]).collect();
    assert!(
        missing.is_empty(),
        "{} of {DATAGRAMS} replies missing: {missing:?}",
        missing.len()
    );
    assert_eq!(r.sent, DATAGRAMS);
    assert_eq!(
        r.counters.get(Verdict::LanRedirect),
        DATAGRAMS as u64,
        "every datagram was redirected"
    );
    assert_eq!(r.counters.get(Verdict::LanNoSocket), 0);
    assert!(
        r.frames_accounted,
        "every transmitted frame came back through the completion ring"
    );
}

// ---------------------------------------------------------------- LAN RX → WAN TX

/// What the ntma side of the two-socket test saw: both modes, frames sent, the XDP
/// counters, whether every frame came back, both TX budgets.
type Forwarded = (XskMode, XskMode, usize, Counters, bool, [Option<u32>; 2]);

#[test]
fn af_xdp_lan_rx_to_wan_tx_shares_one_umem() {
    require_root();
    let tb = Testbed::up(&unique_prefix("xsk2")).expect("testbed up");
    let lan_mac = mac_of(&tb, Role::Ntma, ifname::NTMA_LAN);
    let wan_mac = mac_of(&tb, Role::Ntma, ifname::NTMA_WAN);
    let nat1_mac = mac_of(&tb, Role::Nat1, ifname::NAT_LAN);
    prepare_gn(&tb, lan_mac, PEER_VIP);
    let sink_port = 9100;
    let nonce = nonce();

    // nat1 listens on its lan address; the frames arrive there from ntma's wan0.
    let sink = tb
        .in_netns(Role::Nat1, || {
            UdpSocket::bind(SocketAddrV4::new(NAT1_LAN_ADDR, sink_port))
        })
        .expect("enter nat1")
        .expect("bind the sink in nat1");
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let stop = AtomicBool::new(false);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let wan_src = u32::from(ntm_testbed::NTMA_WAN_ADDR).to_be_bytes();
    let nat1 = NAT1_LAN_ADDR.octets();
    // Readdress each request to nat1's sink: new MACs, addresses and port.
    let to_wan = move |p: &mut [u8]| -> bool {
        if p.len() < 46
            || p[12..14] != [0x08, 0x00]
            || p[14] != 0x45
            || p[23] != 17
            || &p[42..46] != b"ping"
        {
            return false;
        }
        let udp_len = usize::from(u16::from_be_bytes([p[38], p[39]]));
        if 34 + udp_len > p.len() {
            return false;
        }
        p[0..6].copy_from_slice(&nat1_mac);
        p[6..12].copy_from_slice(&wan_mac);
        p[26..30].copy_from_slice(&wan_src);
        p[30..34].copy_from_slice(&nat1);
        p[36..38].copy_from_slice(&sink_port.to_be_bytes());
        fix_checksums(p, udp_len);
        true
    };

    let (result, received) = std::thread::scope(|s| {
        let ntma = s.spawn(|| {
            tb.in_netns(Role::Ntma, || -> Result<Forwarded, String> {
                let setup = || -> Result<_, String> {
                    let mut progs = XdpPrograms::load().map_err(|e| e.to_string())?;
                    progs.configure(&xdp_config()).map_err(|e| e.to_string())?;
                    progs.set_gn_vips(&[GN_VIP]).map_err(|e| e.to_string())?;
                    let umem = Arc::new(
                        Umem::new(UmemConfig {
                            frame_count: 1024,
                            ..UmemConfig::default()
                        })
                        .map_err(|e| e.to_string())?,
                    );
                    let mut worker = Worker::new(&umem, 1024);
                    // One UMEM, two NICs: lan0 owns the UMEM socket, wan0 shares it.
                    let mut lan = Port::bind(&umem, PortConfig::new(ifname::NTMA_LAN, 0))
                        .map_err(|e| e.to_string())?;
                    let mut wan = Port::bind(&umem, PortConfig::new(ifname::NTMA_WAN, 0))
                        .map_err(|e| e.to_string())?;
                    lan.fill(&mut worker.pool, 256);
                    wan.fill(&mut worker.pool, 256);
                    progs
                        .register_socket(Side::Lan, 0, &lan)
                        .map_err(|e| e.to_string())?;
                    progs
                        .attach(Side::Lan, ifname::NTMA_LAN, AttachMode::Native)
                        .map_err(|e| e.to_string())?;
                    Ok((progs, worker, lan, wan))
                };
                let (progs, mut worker, mut lan, mut wan) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let (sent, _) = worker.forward(&mut lan, Some(&mut wan), &stop, DATAGRAMS, to_wan);
                let in_fill = in_fill_ring(&lan) + in_fill_ring(&wan);
                let accounted = worker.drain_completions(&mut wan, in_fill);
                Ok((
                    lan.mode(),
                    wan.mode(),
                    sent,
                    progs.counters().map_err(|e| e.to_string())?,
                    accounted,
                    [lan.tx_budget(), wan.tx_budget()],
                ))
            })
            .expect("enter ntma")
        });
        let ready = ready_rx.recv_timeout(Duration::from_secs(30));
        let mut received = Vec::new();
        if let Ok(Ok(())) = ready {
            send_from_gn(&tb, SocketAddrV4::new(PEER_VIP, ECHO_PORT), nonce, false);
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 2048];
            while received.len() < DATAGRAMS && Instant::now() < deadline {
                if let Ok((n, _)) = sink.recv_from(&mut buf) {
                    received.push(buf[..n].to_vec());
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        (ntma.join().expect("ntma thread"), received)
    });

    let (lan_mode, wan_mode, sent, counters, accounted, budgets) =
        result.unwrap_or_else(|e| panic!("AF_XDP set-up in the ntma namespace failed: {e}"));
    eprintln!("lan0 {lan_mode}, wan0 {wan_mode}: {sent} frames moved from lan0 RX to wan0 TX, TX budgets {budgets:?}");
    assert_eq!(
        lan_mode, wan_mode,
        "a shared UMEM gives both sockets one mode"
    );
    // Copy mode on a kernel with XDP_MAX_TX_SKB_BUDGET (6.17+): half the 2048-entry
    // TX ring per system call, the most the kernel takes.
    if lan_mode == XskMode::Copy && kernel_at_least(6, 17) {
        assert_eq!(budgets, [Some(1024); 2], "the TX budget was not raised");
    }
    let mut seen = [false; DATAGRAMS];
    for payload in &received {
        let text = std::str::from_utf8(payload).expect("UTF-8");
        let mut words = text.split(' ');
        assert_eq!(words.next(), Some("ping"));
        let i: usize = words
            .next()
            .and_then(|w| w.parse().ok())
            .expect("sequence number");
        assert_eq!(words.next(), Some(nonce.to_string().as_str()));
        assert!(i < DATAGRAMS && !seen[i]);
        seen[i] = true;
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(
        missing, 0,
        "{missing} of {DATAGRAMS} datagrams did not reach nat1"
    );
    assert_eq!(counters.get(Verdict::LanRedirect), DATAGRAMS as u64);
    assert!(
        accounted,
        "every frame came back through wan0's completion ring"
    );
}

// ---------------------------------------------------------------- WAN: DATA to AF_XDP, signaling to the kernel

/// The NTM message type of a frame's UDP payload, if it is UDP to `port`.
/// Whether the running kernel is `major.minor` or newer.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

fn ntm_type(p: &[u8], port: u16) -> Option<u8> {
    let ihl = usize::from(*p.get(14)? & 0x0f) * 4;
    let l4 = 14 + ihl;
    if p.get(12..14)? != [0x08, 0x00] || *p.get(23)? != 17 {
        return None;
    }
    (u16::from_be_bytes([*p.get(l4 + 2)?, *p.get(l4 + 3)?]) == port).then_some(*p.get(l4 + 9)?)
}

#[test]
fn af_xdp_wan_takes_data_and_keepalive_and_passes_signaling() {
    require_root();
    let tb = Testbed::up(&unique_prefix("xsk3")).expect("testbed up");
    const EACH: usize = 32;
    let wan_addr = SocketAddrV4::new(ntm_testbed::NTMA_WAN_ADDR, NTM_PORT);
    let stop = AtomicBool::new(false);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();

    type WanResult = (usize, usize, usize, Counters);
    let (result, sent) = std::thread::scope(|s| {
        let ntma = s.spawn(|| {
            tb.in_netns(Role::Ntma, || -> Result<WanResult, String> {
                let setup = || -> Result<_, String> {
                    let mut progs = XdpPrograms::load().map_err(|e| e.to_string())?;
                    progs.configure(&xdp_config()).map_err(|e| e.to_string())?;
                    let umem = Arc::new(
                        Umem::new(UmemConfig {
                            frame_count: 512,
                            ..UmemConfig::default()
                        })
                        .map_err(|e| e.to_string())?,
                    );
                    let worker = Worker::new(&umem, 512);
                    // The kernel's socket on the NTM port: where signaling must land.
                    let kernel = UdpSocket::bind(wan_addr).map_err(|e| e.to_string())?;
                    kernel.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let mut port = Port::bind(&umem, PortConfig::new(ifname::NTMA_WAN, 0))
                        .map_err(|e| e.to_string())?;
                    let mut worker = worker;
                    port.fill(&mut worker.pool, 256);
                    progs
                        .register_socket(Side::Wan, 0, &port)
                        .map_err(|e| e.to_string())?;
                    progs
                        .attach(Side::Wan, ifname::NTMA_WAN, AttachMode::Native)
                        .map_err(|e| e.to_string())?;
                    Ok((progs, worker, port, kernel))
                };
                let (progs, mut worker, mut port, kernel) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let (mut xsk_tunnel, mut xsk_other, mut kernel_got) = (0, 0, 0);
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut buf = [0u8; 2048];
                while (xsk_tunnel < 2 * EACH || kernel_got < EACH)
                    && !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                {
                    while let Ok((n, _)) = kernel.recv_from(&mut buf) {
                        if n >= 2 && buf[1] == 0x11 {
                            kernel_got += 1;
                        }
                    }
                    if port.rx_burst(&mut worker.pool, &mut worker.rx) == 0 {
                        port.wait_rx(Duration::from_millis(10)).expect("poll");
                        continue;
                    }
                    for frame in worker.rx.drain(..) {
                        match ntm_type(worker.umem.packet(&frame), NTM_PORT) {
                            Some(0x01 | 0x02) => xsk_tunnel += 1,
                            _ => xsk_other += 1,
                        }
                        worker.pool.free(frame);
                    }
                }
                let counters = progs.counters().map_err(|e| e.to_string())?;
                Ok((xsk_tunnel, xsk_other, kernel_got, counters))
            })
            .expect("enter ntma")
        });
        let mut sent = 0;
        if let Ok(Ok(())) = ready_rx.recv_timeout(Duration::from_secs(30)) {
            sent = tb
                .in_netns(Role::Nat1, || {
                    let sock = UdpSocket::bind(SocketAddrV4::new(NAT1_LAN_ADDR, NTM_PORT))
                        .expect("bind in nat1");
                    let mut n = 0;
                    for _ in 0..EACH {
                        for t in [0x01, 0x02, 0x11] {
                            sock.send_to(&ntm(t), wan_addr).expect("send from nat1");
                            n += 1;
                        }
                    }
                    n
                })
                .expect("enter nat1");
        }
        // The worker stops on its own once it has everything; this ends a failed run.
        let r = ntma.join().expect("ntma thread");
        stop.store(true, Ordering::Relaxed);
        (r, sent)
    });

    let (xsk_tunnel, xsk_other, kernel_got, counters) =
        result.unwrap_or_else(|e| panic!("AF_XDP set-up in the ntma namespace failed: {e}"));
    assert_eq!(sent, 3 * EACH);
    assert_eq!(
        xsk_tunnel,
        2 * EACH,
        "DATA and TUN_KEEPALIVE reach the AF_XDP socket"
    );
    assert_eq!(xsk_other, 0, "nothing else reaches the AF_XDP socket");
    assert_eq!(kernel_got, EACH, "signaling reaches the kernel's socket");
    assert_eq!(counters.get(Verdict::WanRedirect), 2 * EACH as u64);
    assert_eq!(counters.get(Verdict::WanSignaling), EACH as u64);
}
