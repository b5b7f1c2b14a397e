//! The control side against a real DC ([`ntm_dc::Coordinator`]) and a real
//! peer ([`Endpoint`]) on a simulated network ([`ntm_proto::sim`]) in
//! virtual time: no sockets, no clock, recording
//! sockets and a recording fast path in front of a real [`DatapathState`], which
//! gets the tunnel DATA addressed to the adapter (as XDP would redirect it).

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path as FsPath;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use ntm_proto::node::{Config as NodeConfig, Endpoint, Received};
use ntm_proto::sim::{Datagram, HostId, NatKind, Network};
use ntm_proto::wire::{Caps, MAX_SIGNALING_LEN};
use ntm_proto::{Key, MessageType as NtmType, Packet, Suite};

use super::*;
use crate::config::Config;
use crate::fastpath::encap::{downlink, DownVerdict};
use crate::fastpath::{DatapathState, DatapathStateConfig};
use crate::gn::wire::{build_udp_frame, UdpEnds};
use crate::wire::checksum::internet as checksum;
use crate::wire::ethernet::ETHERTYPE_IPV4;

const DC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const NTMA: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 10, 2), 7700);
const CN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 20), 7700);
const CN_MOVED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 21), 7700);
const UPSTREAM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 5353);
const LAN_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
const WAN_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
const GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x03]);
const GN_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const LIFETIME_SECS: u32 = 30;

fn key(fqdn: &str) -> Key {
    let mut k = [0x11u8; 32];
    for (i, b) in fqdn.bytes().enumerate() {
        k[i % 32] ^= b;
    }
    Key::from_bytes(k)
}

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Link(Option<Link>),
    /// Installed for receiving: id, peer VIP, endpoint, suite.
    Add(u32, Ipv4Addr, SocketAddrV4, Suite),
    /// Sending.
    Up(u32, Ipv4Addr, SocketAddrV4),
    Remove(u32),
    Endpoint(u32, SocketAddrV4),
    /// The control sent a tunnel message (TUN_REQ, TUN_RESP, ...) of this tunnel.
    Sent(NtmType, u32),
}

/// One log of the fast path's calls and the tunnel messages sent, in order.
type Log = Rc<RefCell<Vec<Call>>>;

/// Records every call and passes it on to a real data plane.
struct FakePlane {
    calls: Log,
    dp: Arc<DatapathState>,
    activity: RefCell<Vec<TunnelStats>>,
}

impl Datapath for FakePlane {
    fn state(&self) -> &Arc<DatapathState> {
        &self.dp
    }
    fn kind(&self) -> crate::datapath::DatapathKind {
        crate::datapath::DatapathKind::AfXdp
    }
    fn mode(&self) -> String {
        "fake".into()
    }
    fn worker_thread(&self, _queue: usize) -> String {
        String::new()
    }
    fn stop(&mut self) {}
    fn set_link(&self, link: Option<Link>) {
        self.calls.borrow_mut().push(Call::Link(link));
        self.dp.set_link(link);
    }
    fn add_tunnel(&self, t: &TunnelParams) -> ntm_proto::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Add(t.tunnel_id, t.peer_vip, t.endpoint, t.suite));
        DatapathState::add_tunnel(&self.dp, t).unwrap();
        Ok(())
    }
    fn tunnel_up(&self, t: &TunnelParams) -> ntm_proto::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Up(t.tunnel_id, t.peer_vip, t.endpoint));
        DatapathState::tunnel_up(&self.dp, t).unwrap();
        Ok(())
    }
    fn remove_tunnel(&self, id: u32) {
        self.calls.borrow_mut().push(Call::Remove(id));
        self.dp.remove_tunnel(id);
    }
    fn set_endpoint(&self, id: u32, ep: SocketAddrV4) -> bool {
        self.calls.borrow_mut().push(Call::Endpoint(id, ep));
        self.dp.set_endpoint(id, ep)
    }
    fn tunnel_stats(&self) -> Vec<TunnelStats> {
        self.activity.borrow().clone()
    }
}

/// What the datapath reports for tunnel `id` after `n` packets each way of 100
/// bytes, the last from `from`.
fn activity(id: u32, n: u64, from: SocketAddrV4) -> TunnelStats {
    TunnelStats {
        tunnel_id: id,
        peer_vip: Ipv4Addr::UNSPECIFIED,
        endpoint: CN,
        path: ntm_proto::Path::Direct,
        suite: Suite::Aes256Gcm,
        sending: true,
        tx_packets: n,
        tx_bytes: 100 * n,
        rx_packets: n,
        rx_bytes: 100 * n,
        rx_keepalives: 0,
        last_rx: Some(Instant::now()),
        last_rx_from: Some(from),
        next_tx_seq: n + 1,
    }
}

#[derive(Default)]
struct RecIo {
    log: Log,
    wan: RefCell<Vec<(SocketAddrV4, Vec<u8>)>>,
    lan: RefCell<Vec<Vec<u8>>>,
    /// Queries by the port of their socket.
    upstream: RefCell<Vec<(u16, Vec<u8>)>>,
    /// Queries over TCP by the port of their connection.
    upstream_tcp: RefCell<Vec<(u16, Vec<u8>)>>,
    next_port: std::cell::Cell<u16>,
    closed: RefCell<Vec<u16>>,
    closed_tcp: RefCell<Vec<u16>>,
    /// Messages written on the GN's TCP connections.
    tcp: RefCell<Vec<(ConnId, Vec<u8>)>>,
    /// The GN's TCP connections closed.
    tcp_closed: RefCell<Vec<ConnId>>,
    /// Connections whose write queue is full.
    tcp_full: RefCell<Vec<ConnId>>,
}

impl Io for RecIo {
    fn send_wan(&self, dst: SocketAddrV4, d: &[u8]) -> bool {
        if let Ok(p) = Packet::new_checked(d) {
            if matches!(
                p.msg_type(),
                NtmType::TunReq | NtmType::TunResp | NtmType::Data | NtmType::TunKeepalive
            ) {
                self.log.borrow_mut().push(Call::Sent(p.msg_type(), p.id()));
            }
        }
        self.wan.borrow_mut().push((dst, d.to_vec()));
        true
    }
    fn send_lan(&self, f: &[u8]) -> bool {
        self.lan.borrow_mut().push(f.to_vec());
        true
    }
    fn send_upstream(&self, transport: Transport, q: &[u8]) -> Option<u16> {
        let port = 40_000 + self.next_port.get();
        self.next_port.set(self.next_port.get() + 1);
        match transport {
            Transport::Udp => self.upstream.borrow_mut().push((port, q.to_vec())),
            Transport::Tcp => self.upstream_tcp.borrow_mut().push((port, q.to_vec())),
        }
        Some(port)
    }
    fn close_upstream(&self, transport: Transport, port: u16) {
        match transport {
            Transport::Udp => self.closed.borrow_mut().push(port),
            Transport::Tcp => self.closed_tcp.borrow_mut().push(port),
        }
    }
    fn send_tcp(&self, conn: ConnId, message: &[u8]) -> bool {
        if self.tcp_full.borrow().contains(&conn) {
            return false;
        }
        self.tcp.borrow_mut().push((conn, message.to_vec()));
        true
    }
    fn close_tcp(&self, conn: ConnId) {
        self.tcp_closed.borrow_mut().push(conn);
    }
}

struct World {
    now: Instant,
    dc: ntm_dc::Coordinator,
    dc_up: bool,
    ctl: Control<FakePlane>,
    io: RecIo,
    cn: Endpoint,
    cn_addr: SocketAddrV4,
    /// The adapter's address as others see it: behind a NAT when not `NTMA`.
    ntma_public: SocketAddrV4,
    /// The network, without latency: the DC ([`DC_HOST`]), the adapter
    /// ([`ADAPTER`], behind a NAT when `ntma_public` is not `NTMA`) and cn
    /// ([`CN_HOST`]); delivered one datagram at a time ([`World::step`]).
    net: Network,
    /// What cn's stack received through tunnels.
    cn_got: Vec<Vec<u8>>,
    /// Frames the adapter's fast path delivered to the GN.
    gn_got: Vec<Vec<u8>>,
    /// What the fast path did with the tunnel datagrams it got.
    fast: Vec<DownVerdict>,
    /// Signaling reaches the control through the slow queue as a WAN frame
    /// (the raw datapath reads the tunnel socket), not from the kernel socket.
    signaling_via_slow_queue: bool,
}

const DC_HOST: HostId = HostId(0);
const ADAPTER: HostId = HostId(1);
const CN_HOST: HostId = HostId(2);

fn settings(non_vip: NonVip) -> Settings {
    let mut c = Config::new("gn.ntm.test", &key("gn.ntm.test"), DC, UPSTREAM);
    c.non_vip = non_vip;
    c.hold.timeout_ms = 20_000;
    c.validate().unwrap()
}

impl World {
    fn new(non_vip: NonVip) -> World {
        World::with(non_vip, NTMA, 2)
    }

    /// The adapter seen from the internet at `ntma_public` (a NAT when it
    /// differs from its own address), tunnels in DC suite `suite`.
    fn with(non_vip: NonVip, ntma_public: SocketAddrV4, suite: u8) -> World {
        let s = settings(non_vip);
        World::build(s, ntma_public, suite, &["gn.ntm.test", "cn.ntm.test"])
    }

    /// An adapter with settings `s`, a DC that knows `known` (FQDNs).
    fn build(s: Settings, ntma_public: SocketAddrV4, suite: u8, known: &[&str]) -> World {
        let now = Instant::now();
        let dc_cfg = ntm_dc::Config {
            listen: DC,
            tunnel_lifetime_secs: LIFETIME_SECS,
            tunnel_suite: suite,
            nodes: known
                .iter()
                .map(|f| ntm_dc::NodeEntry::new(f, &key(f)))
                .collect(),
            ..ntm_dc::Config::default()
        };
        let dc =
            ntm_dc::Coordinator::new(&dc_cfg, now, 1_700_000_000_000_000_000, [3; 32]).unwrap();
        let boot = Boot {
            lan_mac: LAN_MAC,
            wan_mac: WAN_MAC,
            wan_ip: *NTMA.ip(),
            unix_nanos: 1_700_000_000_000_000_000,
            seed: [5; 32],
        };
        let log = Log::default();
        let plane = FakePlane {
            calls: Rc::clone(&log),
            dp: Arc::new(DatapathState::new(&DatapathStateConfig::default()).unwrap()),
            activity: RefCell::default(),
        };
        let ctl = Control::new(&s, boot, Box::new(plane), now).unwrap();
        let cn = Endpoint::new(
            NodeConfig {
                fqdn: "cn.ntm.test".into(),
                key: key("cn.ntm.test"),
                dc: DC,
                local_addr: CN,
                caps: Caps::NODE,
            },
            now,
            1_700_000_000_000_000_000,
            [7; 32],
        )
        .unwrap();
        let mut net = Network::new(now, Duration::ZERO);
        net.add_host(DC, None);
        // The NAT lets anyone in (only the mapping matters here).
        let nat = (ntma_public != NTMA).then(|| net.add_nat(NatKind::FullCone, *ntma_public.ip()));
        net.add_host(NTMA, nat);
        net.add_host(CN, None);
        let mut w = World {
            now,
            dc,
            dc_up: true,
            ctl,
            io: RecIo {
                log,
                ..RecIo::default()
            },
            cn,
            cn_addr: CN,
            ntma_public,
            net,
            cn_got: Vec::new(),
            gn_got: Vec::new(),
            fast: Vec::new(),
            signaling_via_slow_queue: false,
        };
        w.ctl.start(now, &w.io);
        w.collect();
        w.settle();
        assert_eq!(w.net.public(ADAPTER), ntma_public, "the NAT's mapping");
        w
    }

    /// Moves what everyone sent into the network.
    fn collect(&mut self) {
        for (dst, d) in self.io.wan.borrow_mut().drain(..) {
            self.net.send(ADAPTER, dst, d);
        }
        let mut buf = vec![0u8; 65_535];
        while let Some(t) = self.dc.poll_transmit(self.now, &mut buf) {
            self.net.send(DC_HOST, t.dst, buf[..t.len].to_vec());
        }
        while let Some(t) = self
            .cn
            .poll_transmit(self.now, &mut buf[..MAX_SIGNALING_LEN])
        {
            self.net.send(CN_HOST, t.dst, buf[..t.len].to_vec());
        }
        while self.cn.poll_event().is_some() {}
    }

    /// Delivers one datagram; false when none is in flight.
    fn step(&mut self) -> bool {
        let Some((
            to,
            Datagram {
                src: from,
                mut data,
                ..
            },
        )) = self.net.pop_due()
        else {
            return false;
        };
        let d = &mut data;
        if to == Some(DC_HOST) {
            if self.dc_up {
                let _ = self.dc.handle(self.now, from, d);
            }
        } else if to == Some(ADAPTER) {
            if is_tunnel_data(d) {
                self.fast_path(from, d);
            } else if self.signaling_via_slow_queue {
                let mut frame = wan_frame(from, d);
                self.ctl
                    .on_slow_frame(self.now, Side::Wan, &mut frame, &self.io);
            } else {
                self.ctl
                    .on_wan_datagram(self.now, SocketAddr::V4(from), d, &self.io);
            }
        } else if to == Some(CN_HOST) {
            if let Ok(Received::Data { inner, .. }) = self.cn.handle(self.now, from, d) {
                self.cn_got.push(inner.to_vec());
            }
        }
        self.collect();
        true
    }

    /// What XDP redirects: DATA and TUN_KEEPALIVE go through the fast path.
    fn fast_path(&mut self, from: SocketAddrV4, d: &[u8]) {
        let mut frame = wan_frame(from, d);
        let dp = &self.ctl.datapath().dp;
        let v = downlink(&dp.snapshot(), &mut frame, dp.now_nanos(self.now));
        if let DownVerdict::Tx { offset, len } = v {
            self.gn_got.push(frame[offset..offset + len].to_vec());
        }
        self.fast.push(v);
    }

    fn settle(&mut self) {
        let mut n = 0;
        while self.step() {
            n += 1;
            assert!(n < 10_000, "the world does not settle");
        }
    }

    /// Runs every timer up to `until`, delivering as it goes.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let next = [
                self.ctl.next_deadline(),
                self.dc.poll_timeout(),
                self.cn.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .filter(|t| *t <= until)
            .min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            self.net.advance_to(self.now);
            self.ctl.on_timeout(self.now, &self.io);
            self.dc.handle_timeout(self.now);
            self.cn.handle_timeout(self.now);
            self.collect();
            self.settle();
        }
        self.now = until;
        self.net.advance_to(until);
    }

    fn gn_vip(&self) -> Ipv4Addr {
        self.ctl.gn().gns()[0].vip().expect("registered")
    }

    fn cn_vip(&self) -> Ipv4Addr {
        self.cn.vip().expect("cn registered").addr
    }

    fn calls(&self) -> Vec<Call> {
        self.ctl.datapath().calls.borrow().clone()
    }

    /// Delivers datagrams until cn's TUN_RESP to the adapter is in flight,
    /// and takes it out of the network.
    fn hold_back_tun_resp(&mut self) -> Datagram {
        loop {
            let cn = self.cn_addr;
            if let Some(d) = self.net.take(|d| d.src == cn && d.is(NtmType::TunResp)) {
                return d;
            }
            assert!(self.step(), "cn sent no TUN_RESP");
        }
    }

    /// The GN sends something, so the adapter learns its MAC; with the
    /// gateway's MAC, the fast path's link is complete.
    fn link_up(&mut self) {
        self.ctl.set_gateway_mac(Some(GW_MAC));
        let gn = self.gn_vip();
        self.ctl
            .on_lan_frame(self.now, &echo_frame(gn, ROUTER, 1), &self.io);
        assert!(self.ctl.link().is_some());
    }

    fn lan_frames(&self) -> Vec<Vec<u8>> {
        self.io.lan.borrow_mut().drain(..).collect()
    }

    /// The GN asks the router for `name` A; returns the answer frame's message.
    fn gn_dns(&mut self, name: &str) -> Message {
        let frame = dns_query_frame(self.gn_vip(), name);
        self.dns_answer(&frame)
    }

    /// The answer to the DNS query in `frame`.
    fn dns_answer(&mut self, frame: &[u8]) -> Message {
        self.ctl.on_lan_frame(self.now, frame, &self.io);
        self.collect();
        self.settle();
        let frames = self.lan_frames();
        let f = frames
            .iter()
            .find(|f| udp_of(f).is_some_and(|(from, _, _)| from.port() == 53))
            .expect("a DNS answer to the GN");
        Message::from_vec(udp_of(f).unwrap().2).unwrap()
    }
}

/// The frame of a datagram from `from` to the adapter's tunnel port.
fn wan_frame(from: SocketAddrV4, d: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    build_udp_frame(
        &mut frame,
        &UdpEnds {
            dst_mac: WAN_MAC,
            src_mac: GW_MAC,
            src_ip: *from.ip(),
            dst_ip: *NTMA.ip(),
            src_port: from.port(),
            dst_port: NTMA.port(),
        },
        d,
    )
    .unwrap();
    frame
}

fn is_tunnel_data(d: &[u8]) -> bool {
    d.len() >= 2
        && d[0] == ntma_common::ntm::VERSION
        && (d[1] == ntma_common::ntm::TYPE_DATA || d[1] == ntma_common::ntm::TYPE_TUN_KEEPALIVE)
}

fn dns_query_frame(src: Ipv4Addr, name: &str) -> Vec<u8> {
    dns_query_frame_from(src, GN_MAC, name)
}

fn dns_query_frame_from(src: Ipv4Addr, src_mac: MacAddr, name: &str) -> Vec<u8> {
    let mut q = Message::new(0x4242, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii(format!("{name}.")).unwrap(),
        RecordType::A,
    ));
    let mut f = Vec::new();
    build_udp_frame(
        &mut f,
        &UdpEnds {
            dst_mac: LAN_MAC,
            src_mac,
            src_ip: src,
            dst_ip: ROUTER,
            src_port: 40000,
            dst_port: 53,
        },
        &q.to_vec().unwrap(),
    )
    .unwrap();
    f
}

/// An ICMP echo request frame from the GN, `seq` in its payload.
fn echo_frame(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"ntma test payload");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&LAN_MAC.0);
    f.extend_from_slice(&GN_MAC.0);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// A TCP SYN frame from the GN with an MSS option of `mss`.
fn syn_frame(src: Ipv4Addr, dst: Ipv4Addr, mss: u16) -> Vec<u8> {
    let mut tcp = vec![
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff,
    ];
    tcp.extend_from_slice(&[0, 0, 0, 0, 2, 4]);
    tcp.extend_from_slice(&mss.to_be_bytes());
    let sum = crate::wire::checksum::pseudo_header(src, dst, 6, tcp.len() as u16)
        + crate::wire::checksum::accumulate(&tcp);
    let c = !crate::wire::checksum::fold(sum);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 2, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&LAN_MAC.0);
    f.extend_from_slice(&GN_MAC.0);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// ICMP destination unreachable frames to the GN, as (code, quoted destination).
fn unreachables(frames: &[Vec<u8>]) -> Vec<(u8, Ipv4Addr)> {
    frames
        .iter()
        .filter_map(|f| {
            let (_, _, ip) = ipv4_of(f)?;
            (ip[9] == 1 && ip[20] == 3).then(|| {
                let quoted = &ip[28..];
                (
                    ip[21],
                    Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]),
                )
            })
        })
        .collect()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn registers_and_publishes_the_link_when_complete() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let vip = w.gn_vip();
    let reg = &w.ctl.gn_status(w.now)[0].registration;
    assert!(reg.registered);
    assert_eq!(reg.behind_nat, Some(false));
    // The GN is known by its VIP; no gateway yet: no link.
    assert_eq!(w.ctl.published_gns(), [GnLink { vip, mac: None }]);
    assert!(w.ctl.link().is_none());
    w.ctl.set_gateway_mac(Some(GW_MAC));
    let link = w.ctl.link().expect("link complete");
    // A frame from the VIP teaches the GN's MAC.
    w.gn_dns("cn.ntm.test");
    assert_eq!(
        w.ctl.published_gns(),
        [GnLink {
            vip,
            mac: Some(GN_MAC)
        }]
    );
    assert_eq!(link.gateway_mac, GW_MAC);
    assert_eq!((link.wan_ip, link.wan_port), (*NTMA.ip(), 7700));
    assert!(w.calls().contains(&Call::Link(Some(link))));
}

#[test]
fn dns_sets_up_a_tunnel_and_held_packets_follow_it() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    w.ctl.set_gateway_mac(Some(GW_MAC));
    let (gn, cn) = (w.gn_vip(), w.cn_vip());
    // Hold back the tunnel set-up between the adapter and cn (not cn's
    // signaling with the DC, whose ROUTE_ACK the DC waits for before it
    // answers the DIR_REQ), so the tunnel is still being set up after the answer.
    let frame = dns_query_frame(gn, "cn.ntm.test");
    w.ctl.on_lan_frame(w.now, &frame, &w.io);
    w.collect();
    let mut held_back = Vec::new();
    loop {
        let between =
            |d: &Datagram| (d.dst == CN && d.src == NTMA) || (d.src == CN && d.dst == NTMA);
        while let Some(d) = w.net.take(between) {
            held_back.push(d);
        }
        if !w.step() {
            break;
        }
    }
    let answer = w.lan_frames();
    let m = answer
        .iter()
        .find_map(|f| udp_of(f).and_then(|(_, _, p)| Message::from_vec(p).ok()))
        .expect("DNS answer");
    assert_eq!(a_records(&m), vec![cn]);
    // A packet to cn now waits for the tunnel.
    w.ctl
        .on_slow_frame(w.now, Side::Lan, &mut echo_frame(gn, cn, 1), &w.io);
    w.ctl
        .on_slow_frame(w.now, Side::Lan, &mut echo_frame(gn, cn, 2), &w.io);
    // A SYN from the GN's 1500-byte link waits too, and leaves clamped (§6).
    w.ctl
        .on_slow_frame(w.now, Side::Lan, &mut syn_frame(gn, cn, 1460), &w.io);
    assert_eq!(w.ctl.counters().get_stat(CtlStat::Held), 3);
    assert!(w.cn_got.is_empty());
    for d in held_back {
        w.net.inject(d.src, d.dst, d.data);
    }
    w.settle();
    // Up: published to the fast path, and the held packets went through, in order.
    let ups: Vec<_> = w
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Up(_, v, ep) if *v == cn && *ep == CN))
        .collect();
    assert_eq!(ups.len(), 1, "{:?}", w.calls());
    let adds = w.calls().into_iter().filter(|c| matches!(c, Call::Add(..)));
    assert_eq!(adds.count(), 1, "{:?}", w.calls());
    assert_eq!(w.ctl.counters().get_stat(CtlStat::Released), 3);
    assert_eq!(w.cn_got.len(), 3);
    assert_eq!(w.cn_got[0], ipv4_of(&echo_frame(gn, cn, 1)).unwrap().2);
    assert_eq!(w.cn_got[1], ipv4_of(&echo_frame(gn, cn, 2)).unwrap().2);
    let syn = &w.cn_got[2];
    assert_eq!(u16::from_be_bytes([syn[42], syn[43]]), 1400, "MSS clamped");
    let tcp_sum = crate::wire::checksum::pseudo_header(gn, cn, 6, 24)
        + crate::wire::checksum::accumulate(&syn[20..]);
    assert_eq!(crate::wire::checksum::fold(tcp_sum), 0xffff, "TCP checksum");
    assert_eq!(w.ctl.counters().get_stat(CtlStat::MssClamped), 1);
    let t = w.ctl.tunnel_status(w.now);
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].role.as_str(), t[0].path.as_str(), t[0].suite.as_str()),
        ("initiator", "direct", "aes-256-gcm")
    );
    assert!(t[0].setup_ms.is_some());
}

/// §5 "MTU": a GN packet over the inner MTU without DF leaves as fragments, each
/// its own DATA, which cn reassembles into the original.
#[test]
fn oversize_packets_without_df_go_out_as_fragments() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    w.ctl.set_gateway_mac(Some(GW_MAC));
    let (gn, cn) = (w.gn_vip(), w.cn_vip());
    w.ctl
        .on_lan_frame(w.now, &dns_query_frame(gn, "cn.ntm.test"), &w.io);
    w.collect();
    w.settle();
    let mut big = echo_frame(gn, cn, 7);
    big.resize(14 + 3000, 0xab);
    big[16..18].copy_from_slice(&3000u16.to_be_bytes());
    big[20] = 0; // DF clear
    big[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&big[14..34]);
    big[24..26].copy_from_slice(&c.to_be_bytes());
    let original = big[14..].to_vec();
    w.ctl.on_slow_frame(w.now, Side::Lan, &mut big, &w.io);
    w.collect();
    w.settle();
    assert_eq!(w.ctl.counters().get_stat(CtlStat::Fragmented), 1);
    assert_eq!(w.ctl.counters().get_stat(CtlStat::FragmentsTx), 3);
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::TooBig), 0);
    assert_eq!(w.cn_got.len(), 3);
    let mut whole = original[..20].to_vec();
    for f in &w.cn_got {
        assert!(f.len() <= 1440);
        assert_eq!(checksum(&f[..20]), 0);
        let off = usize::from(u16::from_be_bytes([f[6], f[7]]) & 0x1fff) * 8;
        assert_eq!(whole.len() - 20, off);
        whole.extend_from_slice(&f[20..]);
    }
    assert_eq!(whole[20..], original[20..]);
}

#[test]
fn the_gn_is_reachable_as_a_responder() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let gn = w.gn_vip();
    w.cn.connect(w.now, "gn.ntm.test").unwrap();
    w.collect();
    w.settle();
    let t = w.ctl.tunnel_status(w.now);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].peer_fqdn, "cn.ntm.test");
    assert_eq!(t[0].role, "responder");
    assert_eq!(t[0].opened_by, "peer");
    assert!(t[0].setup_ms.is_none());
    assert!(t[0].up);
    assert!(w
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Up(id, _, ep) if *id == t[0].id && *ep == CN)));
    // cn can send to the GN's VIP now.
    let mut buf = vec![0u8; 2048];
    let inner = ipv4_of(&echo_frame(w.cn_vip(), gn, 1)).unwrap().2.to_vec();
    assert!(w.cn.send_data(w.now, &inner, &mut buf).is_ok());
}

#[test]
fn packets_to_unknown_vips_and_non_vips_are_answered_with_icmp() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let gn = w.gn_vip();
    let stranger = Ipv4Addr::new(100, 64, 9, 9);
    w.ctl
        .on_slow_frame(w.now, Side::Lan, &mut echo_frame(gn, stranger, 1), &w.io);
    assert_eq!(unreachables(&w.lan_frames()), vec![(1, stranger)]);
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::NoRoute), 1);
    let internet = Ipv4Addr::new(203, 0, 113, 5);
    w.ctl
        .on_lan_frame(w.now, &echo_frame(gn, internet, 1), &w.io);
    assert_eq!(unreachables(&w.lan_frames()), vec![(0, internet)]);
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::NonVip), 1);
    // Not from the GN's VIP, or too big for the tunnel: dropped, counted.
    let mut spoofed = echo_frame(Ipv4Addr::new(100, 64, 5, 5), stranger, 2);
    w.ctl.on_slow_frame(w.now, Side::Lan, &mut spoofed, &w.io);
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::BadSource), 1);
    let mut big = echo_frame(gn, stranger, 3);
    big.resize(14 + 1500, 0);
    big[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let c = {
        big[24..26].copy_from_slice(&[0, 0]);
        checksum(&big[14..34])
    };
    big[24..26].copy_from_slice(&c.to_be_bytes());
    w.ctl.on_slow_frame(w.now, Side::Lan, &mut big, &w.io);
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::TooBig), 1);
    // DF set (echo_frame sets it): ICMP fragmentation needed with the inner MTU.
    let icmp = w.lan_frames();
    assert_eq!(unreachables(&icmp), vec![(4, stranger)]);
    let ip = ipv4_of(&icmp[0]).unwrap().2;
    assert_eq!(u16::from_be_bytes([ip[26], ip[27]]), 1440, "next-hop MTU");
    // To the router: the kernel's business.
    w.ctl.on_lan_frame(w.now, &echo_frame(gn, ROUTER, 1), &w.io);
    assert!(w.lan_frames().is_empty());

    let mut w = World::new(NonVip::Nat);
    let gn = w.gn_vip();
    w.ctl
        .on_lan_frame(w.now, &echo_frame(gn, internet, 1), &w.io);
    assert!(w.lan_frames().is_empty(), "NAT leaves it to the kernel");
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::NonVip), 0);
}

#[test]
fn tunnel_data_on_the_kernel_socket_is_dropped() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let mut data = vec![0u8; 64];
    data[0] = 2;
    data[1] = ntma_common::ntm::TYPE_DATA;
    w.ctl
        .on_wan_datagram(w.now, SocketAddr::V4(CN), &mut data, &w.io);
    data[1] = ntma_common::ntm::TYPE_TUN_KEEPALIVE;
    w.ctl
        .on_wan_datagram(w.now, SocketAddr::V4(CN), &mut data, &w.io);
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::DataViaKernel), 2);
    // Garbage reaches the endpoint and is counted there.
    w.ctl
        .on_wan_datagram(w.now, SocketAddr::V4(CN), &mut [9, 9, 9], &w.io);
    assert_eq!(
        w.ctl
            .endpoint(0)
            .unwrap()
            .drops()
            .get(ntm_proto::Error::Truncated),
        1
    );
    // DATA of another protocol version is the endpoint's to count.
    data[0] = 1;
    w.ctl
        .on_wan_datagram(w.now, SocketAddr::V4(CN), &mut data, &w.io);
    let st = w.ctl.slow_path_status();
    assert_eq!(st.drops["data_via_kernel"], 2);
    assert_eq!(st.drops["proto_truncated"], 1);
    assert_eq!(st.drops["proto_bad_version"], 1);
}

#[test]
fn activity_keeps_tunnels_and_follows_roaming_peers() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let m = w.gn_dns("cn.ntm.test");
    assert_eq!(a_records(&m), vec![w.cn_vip()]);
    let id = w.ctl.tunnel_status(w.now)[0].id;
    // Traffic for longer than the lifetime: the fast path reports it, the tunnel stays.
    for i in 1..=4u64 {
        w.ctl.datapath().activity.replace(vec![activity(id, i, CN)]);
        w.ctl.poll_activity(w.now, &w.io);
        w.advance(Duration::from_secs(u64::from(LIFETIME_SECS) / 3));
    }
    assert_eq!(
        w.ctl.tunnel_status(w.now).len(),
        1,
        "kept alive by activity"
    );
    assert_eq!(w.ctl.tunnel_status(w.now)[0].rx_packets, 4);
    // The peer moves: an authenticated packet from a new address.
    w.ctl
        .datapath()
        .activity
        .replace(vec![activity(id, 5, CN_MOVED)]);
    w.ctl.poll_activity(w.now, &w.io);
    assert!(w.calls().contains(&Call::Endpoint(id, CN_MOVED)));
    assert_eq!(w.ctl.tunnel_status(w.now)[0].endpoint, CN_MOVED);
}

#[test]
fn a_tunnel_whose_data_goes_unanswered_is_directed_again() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    w.gn_dns("cn.ntm.test");
    let first = w.ctl.tunnel_status(w.now)[0].id;
    // The fast path sends to cn and hears nothing back (cn lost the tunnel).
    for i in 1..=40u64 {
        let mut a = activity(first, i, CN);
        a.rx_packets = 0;
        w.ctl.datapath().activity.replace(vec![a]);
        w.ctl.poll_activity(w.now, &w.io);
        w.collect();
        w.advance(Duration::from_millis(250));
    }
    w.settle();
    let t = w.ctl.tunnel_status(w.now);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_ne!(t[0].id, first, "a new direction replaced the tunnel");
    assert!(t[0].up);
    assert!(w.calls().contains(&Call::Remove(first)));
    assert_eq!(w.ctl.endpoint(0).unwrap().redirects(), 1);
}

/// Tunnel keep-alives the adapter sent so far.
fn keepalives_sent(w: &mut World) -> usize {
    w.collect();
    w.net
        .count_sent_from(w.net.public(ADAPTER), ntm_proto::MessageType::TunKeepalive)
}

#[test]
fn one_way_data_into_the_adapter_is_answered_by_a_keepalive() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    w.gn_dns("cn.ntm.test");
    let id = w.ctl.tunnel_status(w.now)[0].id;
    let before = keepalives_sent(&mut w);
    // DATA both ways within each poll: nothing to answer.
    for i in 1..=12u64 {
        w.ctl.datapath().activity.replace(vec![activity(id, i, CN)]);
        w.ctl.poll_activity(w.now, &w.io);
        w.advance(Duration::from_millis(250));
    }
    assert_eq!(keepalives_sent(&mut w), before);
    // Which came last within a poll is unknown: the peer's last DATA may
    // have come after ours, so it is answered once (else the peer would
    // take its DATA for unanswered).
    w.advance(Duration::from_secs(3));
    assert_eq!(keepalives_sent(&mut w), before + 1);
    // Only in: one keep-alive per DATA_ACK_AFTER (2 s).
    for i in 13..=28u64 {
        let mut a = activity(id, i, CN);
        a.tx_packets = 12;
        w.ctl.datapath().activity.replace(vec![a]);
        w.ctl.poll_activity(w.now, &w.io);
        w.advance(Duration::from_millis(250));
    }
    assert_eq!(keepalives_sent(&mut w), before + 3);
}

#[test]
fn an_expired_tunnel_comes_back_for_a_packet_or_fails_with_icmp() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    w.ctl.set_gateway_mac(Some(GW_MAC));
    let (gn, cn) = (w.gn_vip(), w.cn_vip());
    w.gn_dns("cn.ntm.test");
    let first = w.ctl.tunnel_status(w.now)[0].id;
    // Nothing received for the lifetime: gone, and gone from the fast path.
    w.advance(Duration::from_secs(u64::from(LIFETIME_SECS) + 5));
    assert!(w.ctl.tunnel_status(w.now).is_empty());
    assert!(w.calls().contains(&Call::Remove(first)));
    // The next packet to cn sets it up again by name and waits for it.
    w.ctl
        .on_slow_frame(w.now, Side::Lan, &mut echo_frame(gn, cn, 7), &w.io);
    w.collect();
    w.settle();
    let t = w.ctl.tunnel_status(w.now);
    assert_eq!(t.len(), 1);
    assert_ne!(t[0].id, first);
    assert_eq!(w.ctl.counters().get_stat(CtlStat::Released), 1);
    assert_eq!(
        w.cn_got.last().unwrap(),
        ipv4_of(&echo_frame(gn, cn, 7)).unwrap().2
    );
    // cn answers (through the fast path): the packet did not go unanswered.
    w.ctl
        .datapath()
        .activity
        .replace(vec![activity(t[0].id, 1, CN)]);
    w.ctl.poll_activity(w.now, &w.io);

    // Again, with the DC gone: the set-up fails and the packet is answered.
    w.advance(Duration::from_secs(u64::from(LIFETIME_SECS) + 5));
    assert!(w.ctl.tunnel_status(w.now).is_empty());
    w.dc_up = false;
    w.lan_frames();
    w.ctl
        .on_slow_frame(w.now, Side::Lan, &mut echo_frame(gn, cn, 8), &w.io);
    w.collect();
    w.advance(Duration::from_secs(10));
    assert_eq!(unreachables(&w.lan_frames()), vec![(1, cn)]);
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::SetupFailed), 1);
}

/// Issue 13: the peer names outlive the process. A run that learned cn's name
/// writes it down; a new run (a fresh control, as after SIGKILL) that reads the
/// file sets the tunnel up again for the GN's first packet, without DNS.
#[test]
fn peer_names_kept_in_a_file_set_tunnels_up_again_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("ntma-ctl-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ntma.peers");
    let mut w = World::new(NonVip::IcmpUnreachable);
    w.ctl.set_gateway_mac(Some(GW_MAC));
    w.ctl.keep_names(path.clone());
    let (gn, cn) = (w.gn_vip(), w.cn_vip());
    w.gn_dns("cn.ntm.test");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("gn.ntm.test {cn} cn.ntm.test\n"));

    let mut w = World::new(NonVip::IcmpUnreachable);
    w.ctl.set_gateway_mac(Some(GW_MAC));
    assert_eq!((w.gn_vip(), w.cn_vip()), (gn, cn), "the DC's VIPs again");
    // Without the file: no name, ICMP host unreachable.
    w.ctl
        .on_slow_frame(w.now, Side::Lan, &mut echo_frame(gn, cn, 1), &w.io);
    assert_eq!(w.ctl.counters().get_drop(CtlDrop::NoRoute), 1);
    w.ctl.keep_names(path.clone());
    w.ctl
        .on_slow_frame(w.now, Side::Lan, &mut echo_frame(gn, cn, 2), &w.io);
    w.collect();
    w.settle();
    assert_eq!(w.ctl.counters().get_stat(CtlStat::Connects), 1);
    assert_eq!(
        w.cn_got.last().unwrap(),
        ipv4_of(&echo_frame(gn, cn, 2)).unwrap().2
    );
    assert_eq!(w.ctl.tunnel_status(w.now).len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn close_deregisters_and_clears_the_fast_path() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    w.ctl.set_gateway_mac(Some(GW_MAC));
    w.gn_dns("cn.ntm.test");
    let id = w.ctl.tunnel_status(w.now)[0].id;
    w.ctl.close(w.now, &w.io);
    let sent: Vec<_> = w.io.wan.borrow().clone();
    assert!(sent.iter().any(|(dst, d)| *dst == DC
        && ntm_proto::Packet::new_checked(&d[..]).unwrap().msg_type()
            == ntm_proto::MessageType::Dereg));
    let calls = w.calls();
    assert!(calls.contains(&Call::Remove(id)));
    assert_eq!(calls.last(), Some(&Call::Link(None)));
    assert!(w.ctl.link().is_none());
}

/// The DNS answer frames the GN got, as messages.
fn dns_answers(frames: &[Vec<u8>]) -> Vec<Message> {
    frames
        .iter()
        .filter_map(|f| udp_of(f).and_then(|(_, _, p)| Message::from_vec(p).ok()))
        .collect()
}

#[test]
fn upstream_queries_are_forwarded_and_answers_relayed() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let gn = w.gn_vip();
    let frame = dns_query_frame(gn, "example.org");
    w.ctl.on_lan_frame(w.now, &frame, &w.io);
    let (port, q) = w.io.upstream.borrow_mut().pop().expect("forwarded");
    let mut reply = Message::from_vec(&q).unwrap();
    reply.metadata.message_type = MessageType::Response;
    w.ctl
        .on_upstream(w.now, Transport::Udp, port, &reply.to_vec().unwrap(), &w.io);
    let m = dns_answers(&w.lan_frames());
    assert_eq!(m.len(), 1, "relayed");
    assert_eq!(m[0].metadata.id, 0x4242);
    assert_eq!(*w.io.closed.borrow(), vec![port], "its socket closed");
}

/// Off-path spoofing of upstream answers: each query leaves from a socket of
/// its own with a random id; an answer with another id, for another question
/// or on another port is dropped and counted, and the query still waits for
/// the real answer.
#[test]
fn the_dns_forwarder_refuses_mismatching_answers() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let gn = w.gn_vip();
    w.ctl
        .on_lan_frame(w.now, &dns_query_frame(gn, "example.org"), &w.io);
    w.ctl
        .on_lan_frame(w.now, &dns_query_frame(gn, "example.net"), &w.io);
    let sent = w.io.upstream.borrow().clone();
    assert_eq!(sent.len(), 2);
    let (port, q) = sent[0].clone();
    let (other_port, _) = sent[1].clone();
    assert_ne!(port, other_port, "a socket per query");
    let id = u16::from_be_bytes([q[0], q[1]]);
    let answer = |id: u16, name: &str| {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii(format!("{name}.")).unwrap(),
            RecordType::A,
        ));
        m.to_vec().unwrap()
    };
    let drops = |w: &World, name: &str| w.ctl.slow_path_status().drops[name];
    w.ctl.on_upstream(
        w.now,
        Transport::Udp,
        port,
        &answer(id ^ 1, "example.org"),
        &w.io,
    );
    assert_eq!(drops(&w, "dns_upstream_wrong_id"), 1);
    w.ctl.on_upstream(
        w.now,
        Transport::Udp,
        port,
        &answer(id, "example.com"),
        &w.io,
    );
    assert_eq!(drops(&w, "dns_upstream_mismatch"), 1);
    w.ctl.on_upstream(
        w.now,
        Transport::Udp,
        53_535,
        &answer(id, "example.org"),
        &w.io,
    );
    assert_eq!(drops(&w, "dns_upstream_wrong_port"), 1);
    // The right answer on the other query's socket is not its answer either.
    w.ctl.on_upstream(
        w.now,
        Transport::Udp,
        other_port,
        &answer(id, "example.org"),
        &w.io,
    );
    assert!(
        drops(&w, "dns_upstream_wrong_id") + drops(&w, "dns_upstream_mismatch") >= 2,
        "{:?}",
        w.ctl.slow_path_status().drops
    );
    assert!(dns_answers(&w.lan_frames()).is_empty(), "nothing relayed");
    assert!(w.io.closed.borrow().is_empty());
    // The real one still gets through, once.
    w.ctl.on_upstream(
        w.now,
        Transport::Udp,
        port,
        &answer(id, "example.org"),
        &w.io,
    );
    let m = dns_answers(&w.lan_frames());
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].metadata.id, 0x4242);
    assert_eq!(*w.io.closed.borrow(), vec![port]);
    w.ctl.on_upstream(
        w.now,
        Transport::Udp,
        port,
        &answer(id, "example.org"),
        &w.io,
    );
    assert_eq!(drops(&w, "dns_upstream_wrong_port"), 2);
    assert!(dns_answers(&w.lan_frames()).is_empty());
    // The other query times out: its socket is closed too.
    w.advance(Duration::from_secs(10));
    assert_eq!(*w.io.closed.borrow(), vec![port, other_port]);
}

/// DNS over TCP through the control: a connection from the GN, a name
/// forwarded over TCP and its answer written on the connection with the
/// client's id; a connection from elsewhere refused; a client that does not
/// read its answers loses its connection. All counted.
#[test]
fn dns_over_tcp_is_forwarded_over_tcp_and_answered_on_the_connection() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let gn = w.gn_vip();
    let other = SocketAddrV4::new(Ipv4Addr::new(100, 64, 0, 99), 5000);
    assert!(!w.ctl.on_tcp_accept(w.now, 1, other, &w.io));
    assert!(w
        .ctl
        .on_tcp_accept(w.now, 2, SocketAddrV4::new(gn, 5000), &w.io));
    let framed = |name: &str, t: RecordType| {
        let mut q = Message::new(0x4242, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(
            Name::from_ascii(format!("{name}.")).unwrap(),
            t,
        ));
        let q = q.to_vec().unwrap();
        let mut f = (q.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(&q);
        f
    };
    w.ctl
        .on_tcp_data(w.now, 2, &framed("example.org", RecordType::A), &w.io);
    assert!(w.io.upstream.borrow().is_empty(), "not over UDP");
    let (port, q) = w.io.upstream_tcp.borrow_mut().pop().expect("over TCP");
    assert_ne!(u16::from_be_bytes([q[0], q[1]]), 0x4242, "a random id");
    let mut reply = Message::from_vec(&q).unwrap();
    reply.metadata.message_type = MessageType::Response;
    w.ctl
        .on_upstream(w.now, Transport::Tcp, port, &reply.to_vec().unwrap(), &w.io);
    let (conn, message) = w.io.tcp.borrow_mut().pop().expect("answered");
    assert_eq!(conn, 2);
    assert_eq!(
        usize::from(u16::from_be_bytes([message[0], message[1]])),
        message.len() - 2
    );
    assert_eq!(
        Message::from_vec(&message[2..]).unwrap().metadata.id,
        0x4242
    );
    assert_eq!(
        *w.io.closed_tcp.borrow(),
        vec![port],
        "its connection closed"
    );
    assert!(w.lan_frames().is_empty(), "nothing over UDP");
    // The client stops reading: the next answer closes its connection.
    w.io.tcp_full.borrow_mut().push(2);
    w.ctl
        .on_tcp_data(w.now, 2, &framed("cn.ntm.test", RecordType::AAAA), &w.io);
    assert_eq!(*w.io.tcp_closed.borrow(), vec![2]);
    let st = w.ctl.slow_path_status();
    assert_eq!(st.drops["dns_tcp_not_gn"], 1);
    assert_eq!(st.drops["dns_tcp_send_failed"], 1);
    assert_eq!(st.stats["dns_tcp_accepted"], 1);
    assert_eq!(st.stats["dns_forward_tcp"], 1);
    assert_eq!(st.stats["dns_tcp_open"], 0);
}

/// Query ids come from a CSPRNG: not the stub's sequence, not repeating.
#[test]
fn upstream_query_ids_are_random() {
    let mut w = World::new(NonVip::IcmpUnreachable);
    let gn = w.gn_vip();
    for i in 0..64 {
        w.ctl.on_lan_frame(
            w.now,
            &dns_query_frame(gn, &format!("n{i}.example.org")),
            &w.io,
        );
    }
    let ids: std::collections::HashSet<u16> =
        w.io.upstream
            .borrow()
            .iter()
            .map(|(_, q)| u16::from_be_bytes([q[0], q[1]]))
            .collect();
    // 64 draws of 16 bits: a repeat has probability ~3 %, two ~0.05 %.
    assert!(ids.len() >= 62, "{} distinct ids of 64", ids.len());
}

#[test]
fn settings_come_from_the_example() {
    let path = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("ntma.example.toml");
    let s = Config::load(&path).unwrap().validate().unwrap();
    let plane = FakePlane {
        calls: Log::default(),
        dp: Arc::new(DatapathState::new(&DatapathStateConfig::default()).unwrap()),
        activity: RefCell::default(),
    };
    assert!(Control::new(
        &s,
        Boot {
            lan_mac: LAN_MAC,
            wan_mac: WAN_MAC,
            wan_ip: *NTMA.ip(),
            unix_nanos: 1,
            seed: [0; 32],
        },
        Box::new(plane),
        Instant::now()
    )
    .is_ok());
}

/// The fast path knows a tunnel (for receiving) before the adapter sends the
/// TUN_REQ or TUN_RESP that brings it up, whichever role the adapter plays.
#[test]
fn the_fast_path_knows_a_tunnel_before_its_tun_req_or_tun_resp_leaves() {
    for initiator in [true, false] {
        let mut w = World::new(NonVip::IcmpUnreachable);
        if initiator {
            w.gn_dns("cn.ntm.test");
        } else {
            w.cn.connect(w.now, "gn.ntm.test").unwrap();
            w.collect();
            w.settle();
        }
        let t = &w.ctl.tunnel_status(w.now)[0];
        assert_eq!(t.role, if initiator { "initiator" } else { "responder" });
        assert!(t.up);
        let log = w.calls();
        let first = |want: &dyn Fn(&Call) -> bool| log.iter().position(want).unwrap_or(usize::MAX);
        let id = t.id;
        let added = first(&|c| matches!(c, Call::Add(i, ..) if *i == id));
        let sent =
            first(&|c| matches!(c, Call::Sent(NtmType::TunReq | NtmType::TunResp, i) if *i == id));
        let up = first(&|c| matches!(c, Call::Up(i, ..) if *i == id));
        assert!(added < sent, "initiator {initiator}: {log:?}");
        assert!(sent < usize::MAX && up < usize::MAX, "{log:?}");
        assert!(
            log.contains(&Call::Add(id, w.cn_vip(), CN, Suite::Aes256Gcm)),
            "{log:?}"
        );
    }
}

/// The set-up race of issue 8: the peer sends DATA right after its TUN_RESP,
/// and it arrives before the TUN_RESP. On a REVERSE path (the adapter behind
/// a NAT, cn asking for the GN: the adapter sends TUN_REQ, cn answers) and on
/// a DIRECT one (the GN asks for cn). The fast path delivers it to the GN.
#[test]
fn data_right_after_the_peers_tun_resp_reaches_the_gn() {
    let nat: SocketAddrV4 = "198.18.0.30:40001".parse().unwrap();
    for suite in [1u8, 2] {
        for reverse in [true, false] {
            let mut w = World::with(
                NonVip::IcmpUnreachable,
                if reverse { nat } else { NTMA },
                suite,
            );
            w.link_up();
            let gn = w.gn_vip();
            if reverse {
                w.cn.connect(w.now, "gn.ntm.test").unwrap();
                w.collect();
            } else {
                let q = dns_query_frame(gn, "cn.ntm.test");
                w.ctl.on_lan_frame(w.now, &q, &w.io);
                w.collect();
            }
            let resp = w.hold_back_tun_resp();
            let what = format!("suite {suite}, reverse {reverse}");
            let t = w.ctl.tunnel_status(w.now);
            assert_eq!(t.len(), 1, "{what}");
            assert!(!t[0].up, "{what}: up before the TUN_RESP");
            assert_eq!(t[0].role, "initiator", "{what}");
            assert_eq!(t[0].path, if reverse { "reverse" } else { "direct" });
            assert_eq!(t[0].suite, Suite::from(suite).name());
            // cn is up (it sent TUN_RESP) and sends at once.
            let inner = ipv4_of(&echo_frame(w.cn_vip(), gn, 9)).unwrap().2.to_vec();
            let mut buf = vec![0u8; 2048];
            let tx = w.cn.send_data(w.now, &inner, &mut buf).unwrap();
            assert_eq!(tx.dst, w.ntma_public);
            w.net.send(CN_HOST, tx.dst, buf[..tx.len].to_vec());
            w.settle();
            assert_eq!(
                w.fast.last(),
                Some(&DownVerdict::Tx {
                    offset: 44,
                    len: 14 + inner.len()
                }),
                "{what}: {:?}",
                w.fast
            );
            assert_eq!(w.gn_got.len(), 1, "{what}");
            assert_eq!(w.gn_got[0][14..], inner[..], "{what}");
            // Then the TUN_RESP: up, and the GN's answer goes out through the tunnel.
            w.net.inject(resp.src, resp.dst, resp.data);
            w.settle();
            assert!(w.ctl.tunnel_status(w.now)[0].up, "{what}");
            assert!(
                w.fast
                    .iter()
                    .all(|v| matches!(v, DownVerdict::Tx { .. } | DownVerdict::Consumed)),
                "{what}: {:?}",
                w.fast
            );
        }
    }
}

/// With the raw datapath, signaling comes through the slow queue as WAN
/// frames, opened in place there: tunnels come up either way, and carry
/// data both ways.
#[test]
fn signaling_through_the_slow_queue_sets_tunnels_up() {
    for initiator in [true, false] {
        let mut w = World::new(NonVip::IcmpUnreachable);
        w.signaling_via_slow_queue = true;
        w.link_up();
        let (gn, cn) = (w.gn_vip(), w.cn_vip());
        if initiator {
            w.gn_dns("cn.ntm.test");
        } else {
            w.cn.connect(w.now, "gn.ntm.test").unwrap();
            w.collect();
            w.settle();
        }
        let t = w.ctl.tunnel_status(w.now);
        assert!(t.len() == 1 && t[0].up, "initiator {initiator}: {t:?}");
        assert!(w.ctl.counters().get_stat(CtlStat::SlowFrames) > 0);
        let inner = ipv4_of(&echo_frame(cn, gn, 3)).unwrap().2.to_vec();
        let mut buf = vec![0u8; 2048];
        let tx = w.cn.send_data(w.now, &inner, &mut buf).unwrap();
        w.net.send(CN_HOST, tx.dst, buf[..tx.len].to_vec());
        w.settle();
        assert_eq!(w.gn_got.last().map(|f| &f[14..]), Some(&inner[..]));
    }
}

const GN2_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0c]);

/// An adapter serving gn (any MAC) and gn2 (at [`GN2_MAC`]).
fn two_gns() -> Settings {
    let mut c = Config::new("gn.ntm.test", &key("gn.ntm.test"), DC, UPSTREAM);
    let mut gn2 = crate::config::GnEntry::new("gn2.ntm.test", &key("gn2.ntm.test"));
    gn2.mac = Some(GN2_MAC.to_string());
    c.gn.push(gn2);
    c.hold.timeout_ms = 20_000;
    c.validate().unwrap()
}

#[test]
fn each_gn_registers_as_its_own_node_and_sets_up_its_own_tunnels() {
    let known = ["gn.ntm.test", "gn2.ntm.test", "cn.ntm.test"];
    let mut w = World::build(two_gns(), NTMA, 2, &known);
    let st = w.ctl.gn_status(w.now);
    assert_eq!(st.len(), 2);
    let regs: Vec<_> = st.iter().map(|g| &g.registration).collect();
    assert!(regs.iter().all(|r| r.registered), "{regs:?}");
    assert_ne!(regs[0].vip, regs[1].vip, "a VIP each");
    assert_ne!(regs[0].node_id, regs[1].node_id, "a node each");
    let (vip1, vip2) = (regs[0].vip.unwrap(), regs[1].vip.unwrap());
    // gn2 is bound to its MAC from the start; both are in the datapath.
    assert_eq!(
        w.ctl.published_gns(),
        [
            GnLink {
                vip: vip1,
                mac: None
            },
            GnLink {
                vip: vip2,
                mac: Some(GN2_MAC)
            }
        ]
    );
    // Each resolves cn as itself: two directions, two tunnels.
    let cn_vip = w.cn_vip();
    assert_eq!(a_records(&w.gn_dns("cn.ntm.test")), [cn_vip]);
    let q = dns_query_frame_from(vip2, GN2_MAC, "cn.ntm.test");
    assert_eq!(a_records(&w.dns_answer(&q)), [cn_vip]);
    let tunnels = w.ctl.tunnel_status(w.now);
    let mut mine: Vec<_> = tunnels.iter().map(|t| (t.gn.as_str(), t.up)).collect();
    mine.sort();
    assert_eq!(mine, [("gn.ntm.test", true), ("gn2.ntm.test", true)]);
    assert_ne!(tunnels[0].id, tunnels[1].id);
    // Every datagram went to the endpoint it was for: nothing dropped.
    for ep in w.ctl.endpoints() {
        assert_eq!(ep.drops().total(), 0, "{:?}", ep.drops());
    }
    // Each tunnel is its own GN's: the datapath delivers it to that VIP.
    let locals: Vec<_> = w
        .ctl
        .endpoints()
        .flat_map(|ep| ep.tunnels().map(|t| t.params.local_vip))
        .collect();
    assert_eq!(locals, [vip1, vip2]);
    // cn's DATA to each GN goes through that GN's tunnel to its MAC.
    w.ctl.set_gateway_mac(Some(GW_MAC));
    let mut buf = vec![0u8; 2048];
    for (vip, mac) in [(vip1, GN_MAC), (vip2, GN2_MAC)] {
        let inner = ipv4_of(&echo_frame(cn_vip, vip, 1)).unwrap().2.to_vec();
        let tx = w.cn.send_data(w.now, &inner, &mut buf).unwrap();
        w.net.send(CN_HOST, tx.dst, buf[..tx.len].to_vec());
        w.settle();
        let got = w.gn_got.pop().expect("delivered to the GN");
        assert_eq!((&got[..6], &got[14..]), (&mac.0[..], &inner[..]));
    }
    // Names of our own GNs are answered at once, without the DC.
    let dirs = w.dc.stats().dir_reqs;
    let q = dns_query_frame(vip1, "gn2.ntm.test");
    assert_eq!(a_records(&w.dns_answer(&q)), [vip2]);
    assert_eq!(w.dc.stats().dir_reqs, dirs);
    // Proxy ARP leaves the GNs' VIPs to the GNs.
    w.ctl
        .on_lan_frame(w.now, &arp_request(GN_MAC, vip1, vip2), &w.io);
    assert!(w.lan_frames().is_empty(), "no proxy ARP for a GN's VIP");
    w.ctl
        .on_lan_frame(w.now, &arp_request(GN_MAC, vip1, cn_vip), &w.io);
    assert_eq!(w.lan_frames().len(), 1, "proxy ARP for a peer's VIP");
}

#[test]
fn a_gn_the_dc_refuses_stays_unregistered_while_the_other_works() {
    let mut w = World::build(two_gns(), NTMA, 2, &["gn.ntm.test", "cn.ntm.test"]);
    let st = w.ctl.gn_status(w.now);
    assert!(st[0].registration.registered);
    assert!(!st[1].registration.registered);
    assert_eq!(w.ctl.published_gns().len(), 1, "only the GN with a VIP");
    let cn_vip = w.cn_vip();
    assert_eq!(a_records(&w.gn_dns("cn.ntm.test")), [cn_vip]);
    assert!(w.ctl.tunnel_status(w.now)[0].up);
    // gn2 has no VIP: its DHCP gets nothing, counted.
    let before = w.ctl.gn().counters()[crate::gn::GnDrop::DhcpNoVip];
    w.ctl.on_lan_frame(w.now, &dhcp_discover(GN2_MAC), &w.io);
    assert!(w.lan_frames().is_empty());
    assert_eq!(
        w.ctl.gn().counters()[crate::gn::GnDrop::DhcpNoVip],
        before + 1
    );
}

fn arp_request(mac: MacAddr, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    crate::gn::wire::build_arp_request(&mut f, mac, sender, target);
    f
}

fn dhcp_discover(mac: MacAddr) -> Vec<u8> {
    use dhcproto::v4::{DhcpOption, Message as Dhcp, MessageType as DhcpType};
    use dhcproto::{Encodable, Encoder};
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut m = Dhcp::new_with_id(
        7,
        unspecified,
        unspecified,
        unspecified,
        unspecified,
        &mac.0,
    );
    m.opts_mut()
        .insert(DhcpOption::MessageType(DhcpType::Discover));
    let mut payload = Vec::new();
    m.encode(&mut Encoder::new(&mut payload)).unwrap();
    let mut f = Vec::new();
    build_udp_frame(
        &mut f,
        &UdpEnds {
            dst_mac: MacAddr::BROADCAST,
            src_mac: mac,
            src_ip: unspecified,
            dst_ip: Ipv4Addr::BROADCAST,
            src_port: 68,
            dst_port: 67,
        },
        &payload,
    )
    .unwrap();
    f
}

/// A reload that removes gn2 and adds gn3: gn keeps its registration and
/// tunnel, gn2 deregisters, gn3 registers (docs/deploy.md: what a reload
/// changes).
#[test]
fn a_reload_adds_and_removes_gns_and_keeps_the_others() {
    let known = ["gn.ntm.test", "gn2.ntm.test", "gn3.ntm.test", "cn.ntm.test"];
    let old = two_gns();
    let mut w = World::build(old.clone(), NTMA, 2, &known);
    let cn_vip = w.cn_vip();
    assert_eq!(a_records(&w.gn_dns("cn.ntm.test")), [cn_vip]);
    let before = w.ctl.gn_status(w.now);
    let tunnel = w.ctl.tunnel_status(w.now)[0].id;

    let mut c = Config::new("gn.ntm.test", &key("gn.ntm.test"), DC, UPSTREAM);
    c.gn.push(crate::config::GnEntry::new(
        "gn3.ntm.test",
        &key("gn3.ntm.test"),
    ));
    c.hold.timeout_ms = 20_000;
    let new = c.validate().unwrap();
    let plan = crate::reload::plan(&old, &new).unwrap();
    assert!(plan.identity);
    w.ctl
        .reload(w.now, &new, plan, 1_700_000_001_000_000_000, [9; 32], &w.io)
        .unwrap();
    w.collect();
    w.settle();

    let after = w.ctl.gn_status(w.now);
    let names: Vec<_> = after.iter().map(|g| g.registration.fqdn.as_str()).collect();
    assert_eq!(names, ["gn.ntm.test", "gn3.ntm.test"]);
    assert_eq!(
        after[0].registration, before[0].registration,
        "gn untouched"
    );
    assert!(after[1].registration.registered, "gn3 registered");
    let t = w.ctl.tunnel_status(w.now);
    assert_eq!(
        (t.len(), t[0].id, t[0].gn.as_str()),
        (1, tunnel, "gn.ntm.test")
    );
    // gn2 said goodbye; gn and gn3 are the DC's.
    assert!(w
        .dc
        .registration("gn2.ntm.test")
        .is_none_or(|r| !r.is_active()));
    for g in ["gn.ntm.test", "gn3.ntm.test"] {
        assert!(w.dc.registration(g).is_some_and(|r| r.is_active()), "{g}");
    }
    // gn's DNS still resolves as gn, over its tunnel.
    assert_eq!(a_records(&w.gn_dns("cn.ntm.test")), [cn_vip]);
    assert_eq!(w.ctl.tunnel_status(w.now).len(), 1);
}
