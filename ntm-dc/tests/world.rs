//! The coordinator against real `ntm_proto::node::Endpoint`s and the
//! `ntm_rs::Relay` core, in virtual time ([`ntm_proto::sim`]): nodes, NATs
//! with address-and-port-restricted filtering, latency, loss and
//! duplication. No sockets, no clock. Also direct tests of the coordinator
//! with hand-made datagrams, for exact drop reasons and expiry.

use std::collections::{HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use ntm_proto::node::{DirError, Event, RegistrationError, TunnelParams};
use ntm_proto::sim::{self, fqdn_key, Datagram, DcWorld, NodeWorld, World as _};
use ntm_proto::wire::{
    Caps, DirReq, ErrorMsg, Fqdn, Header, Message, Packet, RegReq, Repr, RouteAck,
    MAX_SIGNALING_LEN,
};
use ntm_proto::{Authenticator, Error, Key, MessageType, Path, Role, Status, Suite, WrapLabel};

use ntm_dc::coordinator::{CN_FIRST_ROUTE_DIR_TRIES, DIRECTION_RETENTION, RELAY_DIR_TRIES};
use ntm_dc::{
    Config, Coordinator, DcStore, DropReason, End, MemoryStore, NodeEntry, RedbStore, RelayEntry,
};

const DC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const RS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 3), 7720);
const RS_ID: u32 = 9;
const K_RS: [u8; 32] = [0x5e; 32];
const LATENCY: Duration = Duration::from_millis(10);
const FQDNS: [&str; 7] = [
    "mn.ntm.test",
    "cn.ntm.test",
    "a.ntm.test",
    "b.ntm.test",
    "c.ntm.test",
    "d.ntm.test",
    "e.ntm.test",
];

fn dc_config() -> Config {
    Config {
        listen: DC,
        nodes: FQDNS
            .iter()
            .map(|f| NodeEntry::new(f, &fqdn_key(f)))
            .collect(),
        relays: vec![RelayEntry::new(RS_ID, RS, &Key::from_bytes(K_RS))],
        ..Config::default()
    }
}

/// The coordinator of these tests: on any store (memory unless a test
/// restarts it on a redb file).
type Dcc = Coordinator<Box<dyn DcStore>>;

fn new_dc(cfg: &Config, now: Instant, seed: u8) -> Dcc {
    dc_on(cfg, Box::new(MemoryStore::new()), now, seed)
}

fn dc_on(cfg: &Config, store: Box<dyn DcStore>, now: Instant, seed: u8) -> Dcc {
    Coordinator::with_store(
        cfg,
        store,
        now,
        1_700_000_000_000_000_000 + u64::from(seed) * 1_000_000_000,
        [seed; 32],
    )
    .unwrap()
}

fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

// ---------------------------------------------------------------- world

/// The coordinator as a simulated host, with its configuration (to restart it).
struct Dc {
    dc: Dcc,
    cfg: Config,
}

impl Deref for Dc {
    type Target = Dcc;
    fn deref(&self) -> &Dcc {
        &self.dc
    }
}

impl DerefMut for Dc {
    fn deref_mut(&mut self) -> &mut Dcc {
        &mut self.dc
    }
}

impl sim::Party for Dc {
    fn handle(&mut self, now: Instant, from: SocketAddrV4, data: Vec<u8>) {
        let _ = self.dc.handle(now, from, &data);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddrV4, Vec<u8>)> {
        sim::pull(|buf| self.dc.poll_transmit(now, buf))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.dc.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.dc.handle_timeout(now);
    }
}

/// The relay core as a simulated host: what it forwards goes out unchanged.
struct Rs {
    relay: ntm_rs::Relay,
    forward: VecDeque<(SocketAddrV4, Vec<u8>)>,
}

impl Rs {
    fn new(now: Instant) -> Rs {
        let cfg = ntm_rs::Config::new(RS_ID, &Key::from_bytes(K_RS));
        Rs {
            relay: ntm_rs::Relay::new(&cfg, now, 1_700_000_000_000_000_000).unwrap(),
            forward: VecDeque::new(),
        }
    }
}

impl Deref for Rs {
    type Target = ntm_rs::Relay;
    fn deref(&self) -> &ntm_rs::Relay {
        &self.relay
    }
}

impl sim::Party for Rs {
    fn handle(&mut self, now: Instant, from: SocketAddrV4, data: Vec<u8>) {
        if let Ok(ntm_rs::Verdict::Forward(to)) = self.relay.handle(now, from, &data) {
            self.forward.push_back((to, data));
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddrV4, Vec<u8>)> {
        let forwarded = self.forward.pop_front();
        forwarded.or_else(|| sim::pull(|buf| self.relay.poll_transmit(now, buf)))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.relay.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.relay.handle_timeout(now);
    }
}

/// The DC, the RS, and the nodes.
type World = DcWorld<Dc, Rs>;

fn world() -> World {
    world_with(dc_config())
}

fn world_with(cfg: Config) -> World {
    world_on(cfg, Box::new(MemoryStore::new()))
}

fn world_on(cfg: Config, store: Box<dyn DcStore>) -> World {
    let now = Instant::now();
    let dc = Dc {
        dc: dc_on(&cfg, store, now, 1),
        cfg,
    };
    DcWorld::new(now, LATENCY, (DC, dc), (RS, Rs::new(now)))
}

/// Both ends came up on one tunnel with one key; returns (MN's, CN's) view.
fn one_tunnel(w: &World, mn: usize, cn: usize) -> (TunnelParams, TunnelParams) {
    let (a, b) = (w.tunnel_ups(mn), w.tunnel_ups(cn));
    assert_eq!(a.len(), 1, "MN tunnels: {a:?}");
    assert_eq!(b.len(), 1, "CN tunnels: {b:?}");
    let (a, b) = (a[0].clone(), b[0].clone());
    assert_eq!(a.tunnel_id, b.tunnel_id, "one tunnel id at both ends");
    assert!(
        a.tx_key == b.rx_key && a.rx_key == b.tx_key,
        "one K_tun at both ends: each end's send key is the other's receive key"
    );
    assert!(a.tx_key != a.rx_key, "a key per direction");
    assert_eq!(a.suite, b.suite);
    assert_eq!(a.suite, w.dc.settings().tunnel_suite, "the DC's suite");
    assert_eq!(a.path, b.path);
    assert_ne!(a.role, b.role);
    assert_eq!(a.peer_vip, w.vip(cn));
    assert_eq!(b.peer_vip, w.vip(mn));
    (a, b)
}

const MN_PUBLIC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 20), 7700);
const CN_PUBLIC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 21), 7700);
const NAT1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const NAT2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const MN_PRIVATE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 10, 2), 7700);
const CN_PRIVATE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 20, 2), 7700);
const CN_SAME_LAN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 10, 3), 7700);

/// mn (0) and cn (1), each public or behind its NAT, registered.
fn pair(mn_nat: bool, cn_nat: bool) -> World {
    pair_with(dc_config(), mn_nat, cn_nat)
}

/// [`pair`] with this DC configuration.
fn pair_with(cfg: Config, mn_nat: bool, cn_nat: bool) -> World {
    pair_on(cfg, Box::new(MemoryStore::new()), mn_nat, cn_nat)
}

/// [`pair_with`] on this store.
fn pair_on(cfg: Config, store: Box<dyn DcStore>, mn_nat: bool, cn_nat: bool) -> World {
    let mut w = world_on(cfg, store);
    let n1 = w.add_nat(NAT1);
    let n2 = w.add_nat(NAT2);
    if mn_nat {
        w.add_node("mn.ntm.test", MN_PRIVATE, Some(n1));
    } else {
        w.add_node("mn.ntm.test", MN_PUBLIC, None);
    }
    if cn_nat {
        w.add_node("cn.ntm.test", CN_PRIVATE, Some(n2));
    } else {
        w.add_node("cn.ntm.test", CN_PUBLIC, None);
    }
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.registered(0).len(), 1);
    assert_eq!(w.registered(1).len(), 1);
    w
}

// ---------------------------------------------------------------- registration

#[test]
fn two_nodes_register_with_distinct_vips_from_the_pool() {
    let w = pair(false, false);
    let pool = w.dc.settings().pool;
    let (va, vb) = (w.vip(0), w.vip(1));
    assert_ne!(va, vb);
    for v in [va, vb] {
        assert!(pool.is_assignable(v), "{v}");
        assert_ne!(v, pool.router());
    }
    assert_eq!(w.nodes[0].ep.vip().unwrap().prefix_len, 10);
    let reg = w.dc.registration("mn.ntm.test").unwrap();
    assert_eq!(reg.vip, va);
    assert_eq!(reg.observed, MN_PUBLIC);
    assert!(reg.is_active() && !reg.behind_nat());
    assert_eq!(w.registered(0), vec![(va, false)]);
    // Node ids are the DC's stable per-FQDN ids.
    assert_eq!(
        w.nodes[0].ep.registration().unwrap().node_id,
        w.dc.node_id("mn.ntm.test").unwrap()
    );
    assert_eq!(w.dc.stats().registrations, 2);
    assert_eq!(w.dc.drops().total(), 0);
}

#[test]
fn behind_nat_is_detected_from_observed_versus_local_addr() {
    let w = pair(true, false);
    assert_eq!(w.registered(0), vec![(w.vip(0), true)]);
    let reg = w.dc.registration("mn.ntm.test").unwrap();
    assert!(reg.behind_nat());
    assert_eq!(reg.local, MN_PRIVATE);
    assert_eq!(reg.observed, w.public(0));
    assert_eq!(*reg.observed.ip(), NAT1);
}

#[test]
fn keepalives_are_acknowledged_and_keep_the_registration() {
    let mut w = pair(true, false);
    w.run_for(Duration::from_secs(200));
    assert!(w.dc.stats().keepalives >= 9, "{}", w.dc.stats_line());
    assert_eq!(
        w.net.count_sent(MessageType::KeepaliveAck) as u64,
        w.dc.stats().keepalives
    );
    assert!(w.dc.registration("mn.ntm.test").unwrap().is_active());
    assert_eq!(w.dc.stats().lapsed, 0);
    // No re-registration was needed: one Registered event each.
    assert_eq!(w.registered(0).len(), 1);
}

// ---------------------------------------------------------------- the path table

#[test]
fn direct_when_cn_is_public() {
    for mn_nat in [false, true] {
        let mut w = pair(mn_nat, false);
        let req = w.connect(0, "cn.ntm.test");
        assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
        let (mn, cn) = one_tunnel(&w, 0, 1);
        assert_eq!(
            (mn.path, mn.role, cn.role),
            (Path::Direct, Role::Initiator, Role::Responder)
        );
        assert_eq!(mn.endpoint, CN_PUBLIC, "MN sends to CN's observed address");
        assert_eq!(cn.endpoint, w.public(0), "CN answers MN's address");
        let t = w.dc.tunnel(mn.tunnel_id).unwrap();
        assert_eq!(
            (t.path, t.initiator, t.acked),
            (Path::Direct, End::Mn, true)
        );
        assert_eq!(w.dc.stats().direct, 1);
        w.assert_data_both_ways(0, 1);
    }
}

#[test]
fn reverse_when_only_cn_is_behind_nat() {
    let mut w = pair(false, true);
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let (mn, cn) = one_tunnel(&w, 0, 1);
    assert_eq!(
        (mn.path, mn.role, cn.role),
        (Path::Reverse, Role::Responder, Role::Initiator)
    );
    assert_eq!(
        cn.endpoint, MN_PUBLIC,
        "CN sends TUN_REQ to MN's observed address"
    );
    assert_eq!(mn.endpoint, w.public(1));
    assert_eq!(w.dc.tunnel(mn.tunnel_id).unwrap().initiator, End::Cn);
    assert_eq!(w.dc.stats().reverse, 1);
    w.assert_data_both_ways(0, 1);
}

#[test]
fn direct_to_local_addr_behind_the_same_nat() {
    let mut w = same_lan_pair();
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let (mn, cn) = one_tunnel(&w, 0, 1);
    assert_eq!((mn.path, mn.role), (Path::Direct, Role::Initiator));
    assert_eq!(mn.endpoint, CN_SAME_LAN, "MN sends to CN's LOCAL_ADDR");
    assert_eq!(cn.endpoint, MN_PRIVATE);
    w.assert_data_both_ways(0, 1);
    assert_eq!(w.rs.stats().forwarded, 0);
}

#[test]
fn relay_behind_different_nats_with_the_rs_core_in_the_loop() {
    let mut w = pair(true, true);
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let (mn, cn) = one_tunnel(&w, 0, 1);
    assert_eq!(
        (mn.path, mn.role, cn.role),
        (Path::Relay, Role::Initiator, Role::Responder)
    );
    assert_eq!((mn.endpoint, cn.endpoint), (RS, RS));
    // RELAY_DIR/RELAY_ACK before any ROUTE_DIR.
    let first_ack = w.net.first_sent(None, None, MessageType::RelayAck).unwrap();
    let first_route = w.net.first_sent(None, None, MessageType::RouteDir).unwrap();
    assert!(first_ack < first_route);
    let t = w.dc.tunnel(mn.tunnel_id).unwrap();
    assert_eq!((t.relay_id, t.acked), (Some(RS_ID), true));
    let b = w.rs.binding(mn.tunnel_id).unwrap();
    assert_eq!(
        (b.initiator, b.responder),
        (Some(w.public(0)), Some(w.public(1)))
    );
    let before = w.rs.stats().forwarded;
    w.assert_data_both_ways(0, 1);
    assert_eq!(w.rs.stats().forwarded, before + 2);
    assert_eq!(w.dc.stats().relayed, 1);
    // The idle tunnel keeps itself and its binding alive with TUN_KEEPALIVEs.
    w.run_for(Duration::from_secs(400));
    assert!(w.rs.binding(mn.tunnel_id).is_some());
    assert!(w.downs(0).is_empty());
    w.assert_data_both_ways(0, 1);
}

#[test]
fn on_relay_mn_gets_its_route_dir_only_after_cn_route_ack() {
    let mut w = pair(true, true);
    let (mn_pub, cn_pub) = (w.public(0), w.public(1));
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let at = |kind, src, dst| w.net.first_sent(src, dst, kind).unwrap();
    let relay_ack = at(MessageType::RelayAck, Some(RS), Some(DC));
    let to_cn = at(MessageType::RouteDir, Some(DC), Some(cn_pub));
    let cn_bind = at(MessageType::RelayBind, Some(cn_pub), Some(RS));
    let cn_ack = at(MessageType::RouteAck, Some(cn_pub), Some(DC));
    let to_mn = at(MessageType::RouteDir, Some(DC), Some(mn_pub));
    let mn_tun_req = at(MessageType::TunReq, Some(mn_pub), Some(RS));
    assert!(relay_ack < to_cn, "RELAY_ACK before CN's ROUTE_DIR");
    assert!(cn_bind < cn_ack, "CN binds before it acknowledges");
    assert!(cn_ack < to_mn, "no ROUTE_DIR to MN before CN's ROUTE_ACK");
    assert!(to_mn < mn_tun_req);
    // CN is bound when MN's first TUN_REQ reaches the RS: no retransmission.
    assert_eq!(w.net.count_sent_to(RS, MessageType::TunReq), 1);
    assert_eq!(w.net.count_sent_to(mn_pub, MessageType::RouteDir), 1);
    let (mn, _) = one_tunnel(&w, 0, 1);
    let t = w.dc.tunnel(mn.tunnel_id).unwrap();
    assert!(t.directed && t.acked);
    w.assert_data_both_ways(0, 1);
}

/// Datagrams from the DC to `dst` take 30 ms longer than the others.
fn slow_from_dc(w: &mut World, dst: SocketAddrV4) {
    w.net
        .set_latency(DC, dst, LATENCY + Duration::from_millis(30));
}

/// mn (0) and cn (1) behind one NAT, registered.
fn same_lan_pair() -> World {
    let mut w = world();
    let n = w.add_nat(NAT1);
    w.add_node("mn.ntm.test", MN_PRIVATE, Some(n));
    w.add_node("cn.ntm.test", CN_SAME_LAN, Some(n));
    w.run_for(Duration::from_secs(1));
    w
}

#[test]
fn on_direct_mn_gets_its_route_dir_only_after_cn_route_ack() {
    // With the DC -> CN path slower, MN's TUN_REQ (DC -> MN -> CN, 20 ms)
    // would overtake CN's ROUTE_DIR (40 ms) if both went out at once, and
    // CN would drop it: a 250 ms TUN_REQ retransmission.
    for case in ["both public", "mn behind nat", "behind one nat"] {
        let mut w = match case {
            "both public" => pair(false, false),
            "mn behind nat" => pair(true, false),
            _ => same_lan_pair(),
        };
        let (mn_pub, cn_pub) = (w.public(0), w.public(1));
        slow_from_dc(&mut w, cn_pub);
        let req = w.connect(0, "cn.ntm.test");
        assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))), "{case}");
        // CN knew the tunnel when MN's first TUN_REQ came.
        assert_eq!(w.net.count_sent(MessageType::TunReq), 1, "{case}");
        let at = |kind, src, dst| w.net.first_sent(src, dst, kind).unwrap();
        let to_cn = at(MessageType::RouteDir, Some(DC), Some(cn_pub));
        let cn_ack = at(MessageType::RouteAck, Some(cn_pub), Some(DC));
        let to_mn = at(MessageType::RouteDir, Some(DC), Some(mn_pub));
        let tun_req = at(MessageType::TunReq, None, None);
        assert!(to_cn < cn_ack, "{case}");
        assert!(
            cn_ack < to_mn,
            "{case}: no ROUTE_DIR to MN before CN's ROUTE_ACK"
        );
        assert!(to_mn < tun_req, "{case}");
        assert_eq!(
            w.net.count_sent_to(mn_pub, MessageType::RouteDir),
            1,
            "{case}"
        );
        let (mn, _) = one_tunnel(&w, 0, 1);
        assert_eq!(mn.path, Path::Direct, "{case}");
        let t = w.dc.tunnel(mn.tunnel_id).unwrap();
        assert!(t.directed && t.acked, "{case}");
        w.assert_data_both_ways(0, 1);
    }
    // Even paths: one ROUTE_DIR each, nothing retransmitted.
    let mut w = pair(false, false);
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    assert_eq!(w.net.count_sent(MessageType::RouteDir), 2);
    assert_eq!(w.net.count_sent(MessageType::DirReq), 1);
    assert_eq!(w.net.count_sent(MessageType::TunReq), 1);
}

#[test]
fn on_reverse_both_route_dirs_go_out_at_once_mns_first() {
    let mut w = pair(false, true);
    let (mn_pub, cn_pub) = (w.public(0), w.public(1));
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let at = |kind, src, dst| w.net.first_sent(src, dst, kind).unwrap();
    let to_mn = at(MessageType::RouteDir, Some(DC), Some(mn_pub));
    let to_cn = at(MessageType::RouteDir, Some(DC), Some(cn_pub));
    let cn_ack = at(MessageType::RouteAck, Some(cn_pub), Some(DC));
    let tun_req = at(MessageType::TunReq, Some(cn_pub), Some(mn_pub));
    assert!(to_mn < to_cn, "MN's copy first");
    assert!(
        to_cn < cn_ack,
        "MN's answer does not wait for CN's ROUTE_ACK"
    );
    assert!(to_mn < tun_req);
    // CN's TUN_REQ, a hop behind MN's copy, finds MN ready.
    assert_eq!(w.net.count_sent(MessageType::TunReq), 1);
    let (mn, _) = one_tunnel(&w, 0, 1);
    assert_eq!(mn.path, Path::Reverse);
    w.assert_data_both_ways(0, 1);

    // Only a DC -> MN path slower than DC -> CN -> MN lets CN's TUN_REQ
    // come first: MN drops it and CN's retransmission sets the tunnel up
    // (MN never acknowledges its copy, so the DC has nothing to wait for).
    let mut w = pair(false, true);
    let mn_pub = w.public(0);
    slow_from_dc(&mut w, mn_pub);
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    assert_eq!(w.net.count_sent(MessageType::TunReq), 2);
    one_tunnel(&w, 0, 1);
    w.assert_data_both_ways(0, 1);
}

#[test]
fn a_dir_req_retransmitted_while_cn_has_not_acked_gets_one_answer() {
    for (nat, path) in [(true, Path::Relay), (false, Path::Direct)] {
        let mut w = pair(nat, nat);
        let (mn_pub, cn_pub) = (w.public(0), w.public(1));
        // CN's first two copies are lost: it acks the third (~0.8 s), after
        // MN's DIR_REQ went out again at 0.25 and 0.75 s.
        w.net
            .lose_first(2, move |f| f.dst == cn_pub && f.is(MessageType::RouteDir));
        let req = w.connect(0, "cn.ntm.test");
        assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))), "{path:?}");
        assert_eq!(w.net.count_sent_to(DC, MessageType::DirReq), 3, "{path:?}");
        assert_eq!(w.dc.stats().dir_reqs, 1);
        assert_eq!(w.dc.stats().dir_req_repeats, 2);
        assert_eq!(w.dc.stats().relayed, u64::from(nat));
        assert_eq!(w.dc.stats().direct, u64::from(!nat));
        assert_eq!(w.dc.tunnels().count(), 1);
        assert_eq!(w.net.count_sent(MessageType::RelayDir), usize::from(nat));
        assert_eq!(w.net.count_sent_to(cn_pub, MessageType::RouteDir), 3);
        assert_eq!(
            w.net.count_sent_to(mn_pub, MessageType::RouteDir),
            1,
            "{path:?}: nothing to MN while waiting, then one ROUTE_DIR"
        );
        let cn_ack = w
            .net
            .first_sent(Some(cn_pub), Some(DC), MessageType::RouteAck);
        let to_mn = w
            .net
            .first_sent(Some(DC), Some(mn_pub), MessageType::RouteDir);
        assert!(cn_ack.unwrap() < to_mn.unwrap());
        let (mn, _) = one_tunnel(&w, 0, 1);
        assert_eq!(mn.path, path);
        assert_eq!(
            w.net.count_sent_from(mn_pub, MessageType::TunReq),
            1,
            "{path:?}"
        );
        w.assert_data_both_ways(0, 1);
        // A late repeat of the DIR_REQ gets the same tunnel again.
        let before = w.net.count_sent_to(mn_pub, MessageType::RouteDir);
        w.run_for(Duration::from_secs(10));
        assert_eq!(w.dc.tunnels().count(), 1);
        assert_eq!(w.net.count_sent_to(mn_pub, MessageType::RouteDir), before);
    }
}

#[test]
fn a_cn_that_never_acks_makes_the_direction_unreachable_in_time() {
    // On RELAY, RS losses delay RELAY_ACK to the last RELAY_DIR (1.75 s):
    // MN must still hear UNREACHABLE before its own DIR_REQ gives up
    // (7.75 s). On DIRECT CN's copies start with the DIR_REQ.
    let last_relay_dir = RELAY_DIR_TRIES - 1;
    for (relay, rs_lost) in [(true, 0), (true, last_relay_dir), (false, 0)] {
        let mut w = pair(relay, relay);
        let (mn_pub, cn_pub) = (w.public(0), w.public(1));
        let mut lost = 0;
        w.net.drop = Box::new(move |f| {
            if f.dst == RS && f.is(MessageType::RelayDir) && lost < rs_lost {
                lost += 1;
                return true;
            }
            f.dst == DC && f.is(MessageType::RouteAck)
        });
        let req = w.connect(0, "cn.ntm.test");
        w.run_for(Duration::from_secs(10));
        let case = format!("relay={relay} rs_lost={rs_lost}");
        assert_eq!(
            w.resolved(0, req),
            Some(Err(DirError::Status(Status::Unreachable))),
            "{case}: {}",
            w.dc.stats_line()
        );
        let relay_dirs = if relay { rs_lost as usize + 1 } else { 0 };
        assert_eq!(
            w.net.count_sent(MessageType::RelayDir),
            relay_dirs,
            "{case}"
        );
        assert_eq!(
            w.net.count_sent_to(cn_pub, MessageType::RouteDir),
            CN_FIRST_ROUTE_DIR_TRIES as usize,
            "{case}"
        );
        assert_eq!(
            w.net.count_sent_to(mn_pub, MessageType::RouteDir),
            1,
            "{case}: only the UNREACHABLE"
        );
        assert_eq!(w.dc.stats().route_dir_failures, 1);
        assert_eq!(w.dc.stats().route_acks, 0);
        assert_eq!(w.net.count_sent(MessageType::TunReq), 0);
        assert!(w.tunnel_ups(0).is_empty());
        let t = w.dc.tunnels().next().unwrap();
        assert!(!t.directed && !t.acked);
        // A DIR_REQ repeated after the failure hears the same, and makes
        // no second tunnel.
        let mn_id = w.dc.node_id("mn.ntm.test").unwrap();
        let again = seal(
            &fqdn_key("mn.ntm.test"),
            mn_id,
            u64::MAX / 2,
            Message::DirReq(DirReq {
                req_id: req.0,
                fqdn: Fqdn::new("cn.ntm.test").unwrap(),
            }),
        );
        let now = w.now();
        w.dc.handle(now, mn_pub, &again).unwrap();
        let out = drain(&mut w.dc, now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, mn_pub);
        let Message::RouteDir(rd) = parse(&out[0].1).message else {
            panic!("not a ROUTE_DIR")
        };
        assert_eq!(
            (rd.req_id, rd.result.err()),
            (req.0, Some(Status::Unreachable))
        );
        assert_eq!(w.dc.tunnels().count(), 1);
    }
}

#[test]
fn relay_without_any_rs_configured_is_unreachable() {
    let mut cfg = dc_config();
    cfg.relays.clear();
    let mut w = world_with(cfg);
    let n1 = w.add_nat(NAT1);
    let n2 = w.add_nat(NAT2);
    w.add_node("mn.ntm.test", MN_PRIVATE, Some(n1));
    w.add_node("cn.ntm.test", CN_PRIVATE, Some(n2));
    w.run_for(Duration::from_secs(1));
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(
        w.resolved(0, req),
        Some(Err(DirError::Status(Status::Unreachable)))
    );
    assert!(w.tunnel_ups(1).is_empty());
    assert_eq!(w.dc.stats().dir_refused, 1);
}

// ---------------------------------------------------------------- retransmission and idempotency

#[test]
fn relay_dir_is_retransmitted_until_acked_before_route_dirs_go_out() {
    let mut w = pair(true, true);
    w.net
        .lose_first(2, |f| f.dst == RS && f.is(MessageType::RelayDir));
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    assert_eq!(w.net.count_sent(MessageType::RelayDir), 3);
    assert_eq!(w.dc.stats().relay_acks, 1);
    let first_route = w.net.first_sent(None, None, MessageType::RouteDir).unwrap();
    let first_ack = w.net.first_sent(None, None, MessageType::RelayAck).unwrap();
    assert!(first_ack < first_route);
    one_tunnel(&w, 0, 1);
    w.assert_data_both_ways(0, 1);
}

#[test]
fn an_rs_that_never_acks_makes_the_direction_unreachable() {
    let mut w = pair(true, true);
    w.net.drop = Box::new(|f| f.dst == RS);
    let req = w.connect(0, "cn.ntm.test");
    w.run_for(Duration::from_secs(10));
    assert_eq!(
        w.resolved(0, req),
        Some(Err(DirError::Status(Status::Unreachable)))
    );
    assert_eq!(
        w.net.count_sent(MessageType::RelayDir),
        RELAY_DIR_TRIES as usize
    );
    assert!(
        w.net.count_sent_to(w.public(0), MessageType::RouteDir) >= 1,
        "MN's UNREACHABLE"
    );
    assert_eq!(
        w.net.count_sent_to(w.public(1), MessageType::RouteDir),
        0,
        "nothing to CN"
    );
    assert_eq!(w.dc.stats().relay_failures, 1);
    assert!(w.tunnel_ups(1).is_empty());
}

#[test]
fn cn_route_dir_is_retransmitted_until_route_ack() {
    let mut w = pair(false, false);
    w.net
        .lose_first(2, |f| f.dst == CN_PUBLIC && f.is(MessageType::RouteDir));
    let req = w.connect(0, "cn.ntm.test");
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    assert_eq!(w.net.count_sent_to(CN_PUBLIC, MessageType::RouteDir), 3);
    assert_eq!(w.net.count_sent(MessageType::RouteAck), 1);
    let (mn, _) = one_tunnel(&w, 0, 1);
    assert!(w.dc.tunnel(mn.tunnel_id).unwrap().acked);
    // Acknowledged: no further copies.
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.net.count_sent_to(CN_PUBLIC, MessageType::RouteDir), 3);
    w.assert_data_both_ways(0, 1);
}

#[test]
fn on_reverse_a_cn_that_never_acks_gets_five_copies_and_the_tunnel_comes_up() {
    // MN's answer never waited for the ack on REVERSE.
    let mut w = pair(false, true);
    let cn_pub = w.public(1);
    w.net.drop = Box::new(|f| f.dst == DC && f.is(MessageType::RouteAck));
    let req = w.connect(0, "cn.ntm.test");
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    assert_eq!(w.net.count_sent_to(cn_pub, MessageType::RouteDir), 5);
    assert_eq!(w.dc.stats().route_dir_failures, 1);
    let (mn, _) = one_tunnel(&w, 0, 1);
    assert_eq!(mn.path, Path::Reverse);
    w.assert_data_both_ways(0, 1);
}

#[test]
fn retransmitted_dir_req_gets_the_same_route_dir_and_no_second_tunnel() {
    let mut w = pair(false, false);
    w.net
        .lose_first(1, |f| f.dst == MN_PUBLIC && f.is(MessageType::RouteDir));
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    assert_eq!(w.net.count_sent(MessageType::DirReq), 2);
    assert_eq!(w.dc.stats().dir_reqs, 1);
    assert_eq!(w.dc.stats().dir_req_repeats, 1);
    assert_eq!(w.dc.tunnels().count(), 1);
    one_tunnel(&w, 0, 1);
    w.assert_data_both_ways(0, 1);
}

#[test]
fn duplicated_datagrams_everywhere_are_idempotent() {
    for (mn_nat, cn_nat) in [(false, false), (false, true), (true, true)] {
        let mut w = pair(mn_nat, cn_nat);
        w.net.duplicate = true;
        let req = w.connect(0, "cn.ntm.test");
        assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
        assert_eq!(w.dc.tunnels().count(), 1);
        one_tunnel(&w, 0, 1);
        assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
        w.net.duplicate = false;
        w.assert_data_both_ways(0, 1);
        // Duplicates are replays at the DC: dropped and counted, never acted on twice.
        assert!(w.dc.drops().get(Error::Replay.into()) > 0);
    }
}

// ---------------------------------------------------------------- NOT_FOUND, leases, expiry

#[test]
fn unknown_and_unregistered_targets_are_not_found() {
    let mut w = pair(false, false);
    let r1 = w.connect(0, "nobody.ntm.test");
    let r2 = w.connect(0, "a.ntm.test"); // configured, never registered
    let r3 = w.connect(0, "mn.ntm.test"); // itself
    assert_eq!(
        w.resolved(0, r1),
        Some(Err(DirError::Status(Status::NotFound)))
    );
    assert_eq!(
        w.resolved(0, r2),
        Some(Err(DirError::Status(Status::NotFound)))
    );
    assert_eq!(
        w.resolved(0, r3),
        Some(Err(DirError::Status(Status::BadRequest)))
    );
    assert_eq!(w.dc.stats().not_found, 2);
    assert_eq!(w.dc.tunnels().count(), 0);
    assert!(w.tunnel_ups(1).is_empty());
}

#[test]
fn a_lapsed_node_keeps_its_vip_until_the_lease_ends() {
    // A /29 pool has 5 VIPs, so another node would take a freed one.
    let mut cfg = dc_config();
    cfg.vip_pool = "100.64.0.0/29".into();
    cfg.lease_secs = 120;
    let mut w = world_with(cfg);
    let hosts: Vec<usize> = (0..5)
        .map(|i| w.add_node(FQDNS[i], addr(198, 18, 0, 30 + i as u8, 7700), None))
        .collect();
    w.run_for(Duration::from_secs(1));
    let vips: HashSet<Ipv4Addr> = hosts.iter().map(|&i| w.vip(i)).collect();
    assert_eq!(vips.len(), 5);
    // The pool is full: a sixth node is refused.
    let f = w.add_node(FQDNS[5], addr(198, 18, 0, 40, 7700), None);
    w.run_for(Duration::from_secs(1));
    assert!(w.events(f).iter().any(|e| matches!(
        e,
        Event::RegistrationFailed {
            reason: RegistrationError::Status(Status::Exhausted)
        }
    )));
    w.set_running(f, false);

    // Node 0 goes quiet: lapsed after three missed intervals, VIP kept.
    let v0 = w.vip(0);
    w.set_running(0, false);
    w.run_for(Duration::from_secs(80));
    let reg = w.dc.registration(FQDNS[0]).unwrap();
    assert!(!reg.is_active());
    assert_eq!(w.dc.store().vip_owner(v0), Some(reg.node_id));
    assert_eq!(w.dc.stats().lapsed, 1);
    let req = w.connect(1, FQDNS[0]);
    assert_eq!(
        w.resolved(1, req),
        Some(Err(DirError::Status(Status::NotFound)))
    );

    // It comes back within the lease: the same VIP.
    w.set_running(0, true);
    w.run_for(Duration::from_secs(20));
    assert_eq!(w.registered(0).last().unwrap().0, v0);
    assert!(w.dc.registration(FQDNS[0]).unwrap().is_active());

    // Gone for good: after the lease the VIP is free and the sixth node gets it.
    w.set_running(0, false);
    w.run_for(Duration::from_secs(200));
    assert_eq!(w.dc.registration(FQDNS[0]), None);
    assert_eq!(w.dc.stats().released, 1);
    w.set_running(f, true);
    w.run_for(Duration::from_secs(15));
    assert_eq!(w.registered(f).last().unwrap().0, v0);
}

#[test]
fn deregistration_makes_a_node_unreachable() {
    let mut w = pair(false, false);
    let v1 = w.vip(1);
    let now = w.now();
    w.nodes[1].ep.close(now);
    w.run_for(Duration::from_secs(1));
    w.set_running(1, false);
    assert_eq!(w.dc.stats().deregistrations, 1);
    let reg = w.dc.registration("cn.ntm.test").unwrap();
    assert!(!reg.is_active());
    assert_eq!(reg.vip, v1, "the VIP stays reserved");
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(
        w.resolved(0, req),
        Some(Err(DirError::Status(Status::NotFound)))
    );
}

#[test]
fn dc_restart_keeps_tunnels_and_nodes_reregister_on_error() {
    for (mn_nat, cn_nat) in [(false, false), (true, true)] {
        let mut w = pair(mn_nat, cn_nat);
        let (v0, v1) = (w.vip(0), w.vip(1));
        w.connect(0, "cn.ntm.test");
        one_tunnel(&w, 0, 1);
        // A new DC process: no state, another seed, a later clock.
        *w.dc = new_dc(&w.dc.cfg, w.now(), 2);
        // The next keep-alive (within one 20 s interval) gets ERROR, and the
        // node re-registers at once instead of waiting out its 70 s time-out.
        w.run_for(Duration::from_secs(25));
        assert!(w.dc.stats().errors_sent >= 2, "{}", w.dc.stats_line());
        assert_eq!(w.registered(0).len(), 2, "re-registered");
        assert_eq!(w.registered(1).len(), 2);
        assert_eq!((w.vip(0), w.vip(1)), (v0, v1), "same VIPs from a fresh DC");
        assert!(
            w.downs(0).is_empty() && w.downs(1).is_empty(),
            "tunnels survived"
        );
        w.assert_data_both_ways(0, 1);
        // And the new DC directs new tunnels.
        let a = w.add_node("a.ntm.test", addr(198, 18, 0, 60, 7700), None);
        w.run_for(Duration::from_secs(1));
        let req = w.connect(0, "a.ntm.test");
        assert_eq!(w.resolved(0, req), Some(Ok(w.vip(a))));
        w.assert_data_both_ways(0, a);
    }
}

// ---------------------------------------------------------------- hand-made datagrams

const T0_NANOS: u64 = 1_800_000_000_000_000_000;

fn seal(key: &Key, id: u32, seq: u64, message: Message<'_>) -> Vec<u8> {
    let repr = Repr::new(
        Header {
            id,
            seq,
            response_required: true,
        },
        message,
    );
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit_sealed(&mut b, &Authenticator::new(key)).unwrap();
    b
}

/// A REG_REQ whose REQ_ID is the low half of its seq.
fn reg_req(fqdn: &str, key: &Key, seq: u64, local: SocketAddrV4) -> Vec<u8> {
    reg_req_with(fqdn, key, seq, local, seq as u32)
}

fn reg_req_with(fqdn: &str, key: &Key, seq: u64, local: SocketAddrV4, req_id: u32) -> Vec<u8> {
    seal(
        key,
        0,
        seq,
        Message::RegReq(RegReq {
            req_id,
            fqdn: Fqdn::new(fqdn).unwrap(),
            local_addr: local,
            caps: Caps::NODE,
        }),
    )
}

/// Everything the DC sends now, verified with `key` and parsed into (dst, type, status-ish).
fn drain(dc: &mut Dcc, now: Instant) -> Vec<(SocketAddrV4, Vec<u8>)> {
    let mut buf = [0u8; MAX_SIGNALING_LEN];
    let mut out = Vec::new();
    while let Some(t) = dc.poll_transmit(now, &mut buf) {
        out.push((t.dst, buf[..t.len].to_vec()));
    }
    out
}

fn parse(d: &[u8]) -> Repr<'_> {
    Repr::parse(&Packet::new_checked(d).unwrap()).unwrap()
}

#[test]
fn registration_lapses_after_three_missed_keepalive_intervals() {
    let t0 = Instant::now();
    let mut dc = new_dc(&dc_config(), t0, 3);
    let k = fqdn_key("a.ntm.test");
    let from = addr(198, 18, 0, 50, 7700);
    dc.handle(t0, from, &reg_req("a.ntm.test", &k, T0_NANOS, from))
        .unwrap();
    let out = drain(&mut dc, t0);
    assert_eq!(out.len(), 1);
    let Message::RegResp(resp) = parse(&out[0].1).message else {
        panic!("not a REG_RESP")
    };
    let lease = resp.result.unwrap();
    assert_eq!(lease.keepalive_secs, 20);
    let id = lease.node_id;

    // Keep-alive at 15 s: alive until 15 + 60 s.
    let t1 = t0 + Duration::from_secs(15);
    dc.handle(t1, from, &seal(&k, id, T0_NANOS + 1, Message::Keepalive))
        .unwrap();
    let out = drain(&mut dc, t1);
    assert!(matches!(parse(&out[0].1).message, Message::KeepaliveAck(a) if a.observed == from));
    Authenticator::new(&k).verify(&out[0].1).unwrap();

    let mut now = t1;
    while now < t1 + Duration::from_secs(59) {
        now = dc.poll_timeout().unwrap();
        dc.handle_timeout(now);
        if now < t1 + Duration::from_secs(60) {
            assert!(
                dc.registration("a.ntm.test").unwrap().is_active(),
                "lapsed early at {:?}",
                now - t1
            );
        }
    }
    while dc.registration("a.ntm.test").unwrap().is_active() {
        now = dc.poll_timeout().unwrap();
        dc.handle_timeout(now);
        assert!(now <= t1 + Duration::from_secs(62), "never lapsed");
    }
    assert!(now >= t1 + Duration::from_secs(60));

    // A keep-alive now gets an authenticated ERROR: re-register.
    dc.handle(now, from, &seal(&k, id, T0_NANOS + 2, Message::Keepalive))
        .unwrap_err();
    let out = drain(&mut dc, now);
    assert_eq!(out.len(), 1);
    Authenticator::new(&k).verify(&out[0].1).unwrap();
    let repr = parse(&out[0].1);
    assert_eq!(repr.header.id, id);
    assert!(matches!(
        repr.message,
        Message::Error(ErrorMsg {
            status: Status::NotFound,
            ..
        })
    ));
    assert_eq!(dc.drops().get(DropReason::Unregistered), 1);
}

#[test]
fn bad_datagrams_are_dropped_and_counted_by_reason() {
    let t0 = Instant::now();
    let mut dc = new_dc(&dc_config(), t0, 4);
    let k = fqdn_key("a.ntm.test");
    let from = addr(198, 18, 0, 50, 7700);
    let good = reg_req("a.ntm.test", &k, T0_NANOS, from);
    dc.handle(t0, from, &good).unwrap();
    let id = dc.node_id("a.ntm.test").unwrap();
    drain(&mut dc, t0);

    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (good.clone(), Error::Replay.into()),
        (good[..20].to_vec(), Error::Truncated.into()),
        (
            reg_req("z.ntm.test", &k, T0_NANOS + 5, from),
            DropReason::UnknownFqdn,
        ),
        (
            reg_req("a.ntm.test", &fqdn_key("b.ntm.test"), T0_NANOS + 6, from),
            Error::BadTag.into(),
        ),
        (
            seal(&k, 12345, T0_NANOS + 7, Message::Keepalive),
            DropReason::UnknownNode,
        ),
        (
            seal(
                &Key::from_bytes(K_RS),
                RS_ID + 1,
                T0_NANOS,
                Message::RelayAck(ntm_proto::wire::RelayAck { tunnel_id: 1 }),
            ),
            DropReason::UnknownRelay,
        ),
        (
            seal(
                &k,
                id,
                T0_NANOS + 8,
                Message::RouteAck(RouteAck { tunnel_id: 99 }),
            ),
            DropReason::StaleAck,
        ),
        (
            seal(&k, id, T0_NANOS + 9, Message::TunKeepalive),
            Error::UnexpectedType.into(),
        ),
        (
            {
                // Version 1 is gone.
                let mut v = seal(&k, id, T0_NANOS + 10, Message::Keepalive);
                v[0] = 1;
                Authenticator::new(&k).seal(&mut v).unwrap();
                v
            },
            Error::BadVersion.into(),
        ),
        (
            {
                // Signaling is suite 1 only, even when authentic (§2).
                let mut v = seal(&k, id, T0_NANOS + 11, Message::Keepalive);
                v[3] = Suite::Aes256Gcm.into();
                Authenticator::new(&k).seal(&mut v).unwrap();
                v
            },
            Error::UnsupportedSuite.into(),
        ),
        (
            {
                // A DIR_REQ whose FQDN TLV runs past the body: authentic but malformed.
                let mut v = seal(
                    &k,
                    id,
                    T0_NANOS + 12,
                    Message::DirReq(DirReq {
                        req_id: 1,
                        fqdn: Fqdn::new("b.ntm.test").unwrap(),
                    }),
                );
                v[16 + 7 + 2] = 0xff;
                Authenticator::new(&k).seal(&mut v).unwrap();
                v
            },
            Error::TlvOverrun.into(),
        ),
    ];
    for (d, reason) in &cases {
        assert_eq!(dc.handle(t0, from, d), Err(*reason), "{}", reason.name());
    }
    for (_, reason) in &cases {
        assert_eq!(dc.drops().get(*reason), 1, "{}", reason.name());
    }
    assert_eq!(dc.drops().total(), cases.len() as u64);
    assert!(drain(&mut dc, t0).is_empty(), "nothing answered");
    // The registration is untouched.
    assert_eq!(dc.registration("a.ntm.test").unwrap().observed, from);
}

#[test]
fn route_dirs_carry_keys_wrapped_for_each_end() {
    let t0 = Instant::now();
    let mut dc = new_dc(&dc_config(), t0, 5);
    let (ka, kb) = (fqdn_key("a.ntm.test"), fqdn_key("b.ntm.test"));
    let (fa, fb) = (addr(198, 18, 0, 50, 7700), addr(198, 18, 0, 51, 7700));
    dc.handle(t0, fa, &reg_req("a.ntm.test", &ka, T0_NANOS, fa))
        .unwrap();
    dc.handle(t0, fb, &reg_req("b.ntm.test", &kb, T0_NANOS, fb))
        .unwrap();
    drain(&mut dc, t0);
    let (ia, ib) = (
        dc.node_id("a.ntm.test").unwrap(),
        dc.node_id("b.ntm.test").unwrap(),
    );
    let dir = seal(
        &ka,
        ia,
        T0_NANOS + 1,
        Message::DirReq(DirReq {
            req_id: 42,
            fqdn: Fqdn::new("b.ntm.test").unwrap(),
        }),
    );
    dc.handle(t0, fa, &dir).unwrap();
    // DIRECT: CN's copy first, MN's on CN's ROUTE_ACK.
    let mut out = drain(&mut dc, t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, fb);
    let Message::RouteDir(rd) = parse(&out[0].1).message else {
        panic!("not a ROUTE_DIR")
    };
    let tunnel_id = rd.result.unwrap().tunnel_id;
    let ack = seal(
        &kb,
        ib,
        T0_NANOS + 1,
        Message::RouteAck(RouteAck { tunnel_id }),
    );
    dc.handle(t0, fb, &ack).unwrap();
    out.extend(drain(&mut dc, t0));
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].0, fa);
    let mut keys = Vec::new();
    for (dst, d) in &out {
        let (key, id, req, role) = if *dst == fa {
            (&ka, ia, 42, Role::Initiator)
        } else {
            (&kb, ib, 0, Role::Responder)
        };
        let auth = Authenticator::new(key);
        auth.verify(d).unwrap();
        let repr = parse(d);
        assert_eq!(repr.header.id, id);
        assert_eq!(
            repr.header.response_required,
            req == 0,
            "only CN's copy wants an ack"
        );
        let Message::RouteDir(rd) = repr.message else {
            panic!("not a ROUTE_DIR")
        };
        assert_eq!(rd.req_id, req);
        let route = rd.result.unwrap();
        assert_eq!((route.path, route.role), (Path::Direct, role));
        assert_eq!(route.wrapped_relay_key, None);
        assert_eq!(route.lifetime_secs, 180);
        keys.push(auth.unwrap_key(
            WrapLabel::TunnelKey,
            route.tunnel_id,
            repr.header.seq,
            &route.wrapped_key,
        ));
    }
    assert!(keys[0] == keys[1], "both ends unwrap the same K_tun");
    assert_eq!(dc.tunnels().count(), 1);
    // The directions are forgotten after their retention.
    let mut now = t0;
    let mut guard = 0;
    while dc.tunnels().count() > 0 {
        now = dc.poll_timeout().unwrap();
        dc.handle_timeout(now);
        drain(&mut dc, now);
        guard += 1;
        assert!(guard < 1000);
    }
    assert!(now >= t0 + DIRECTION_RETENTION);
}

#[test]
fn random_and_mutated_datagrams_never_panic_and_every_drop_is_counted() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let t0 = Instant::now();
    let mut dc = new_dc(&dc_config(), t0, 6);
    let k = fqdn_key("a.ntm.test");
    let from = addr(198, 18, 0, 50, 7700);
    dc.handle(t0, from, &reg_req("a.ntm.test", &k, T0_NANOS, from))
        .unwrap();
    let id = dc.node_id("a.ntm.test").unwrap();
    let valid = [
        reg_req("a.ntm.test", &k, T0_NANOS + 1, from),
        seal(&k, id, T0_NANOS + 2, Message::Keepalive),
        seal(
            &k,
            id,
            T0_NANOS + 3,
            Message::DirReq(DirReq {
                req_id: 5,
                fqdn: Fqdn::new("b.ntm.test").unwrap(),
            }),
        ),
    ];
    let mut rng = StdRng::seed_from_u64(42);
    let mut errors = 0u64;
    let mut buf = [0u8; MAX_SIGNALING_LEN];
    for i in 0..20_000u32 {
        let d: Vec<u8> = if i % 2 == 0 {
            let len = (rng.next_u32() % 600) as usize;
            let mut d = vec![0u8; len];
            rng.fill_bytes(&mut d);
            // Mostly well-formed headers, so that the deeper paths run too.
            if len >= 4 && i % 4 == 0 {
                d[0] = ntm_proto::wire::VERSION;
                d[3] = 1;
                d[1] = [0x10, 0x12, 0x14, 0x20, 0x22, 0x41, 0x7f][(rng.next_u32() % 7) as usize];
            }
            d
        } else {
            let mut d = valid[(i as usize / 2) % valid.len()].clone();
            let n = 1 + rng.next_u32() % 3;
            for _ in 0..n {
                let at = (rng.next_u32() as usize) % d.len();
                d[at] ^= 1 << (rng.next_u32() % 8);
            }
            d
        };
        if dc.handle(t0, from, &d).is_err() {
            errors += 1;
        }
        while dc.poll_transmit(t0, &mut buf).is_some() {}
    }
    assert!(errors > 19_000, "{errors}");
    assert_eq!(dc.drops().total(), errors);
    // Still working.
    dc.handle(t0, from, &seal(&k, id, T0_NANOS + 10, Message::Keepalive))
        .unwrap();
}

// ---------------------------------------------------------------- version 2: replay windows, REQ_IDs, suites, bounds

/// (REQ_ID, TUNNEL_ID or STATUS, SUITE) of a ROUTE_DIR.
fn route_dir(d: &[u8]) -> (u32, Result<(u32, Suite), Status>) {
    let Message::RouteDir(rd) = parse(d).message else {
        panic!("not a ROUTE_DIR")
    };
    (rd.req_id, rd.result.map(|r| (r.tunnel_id, r.suite)))
}

#[test]
fn reg_resp_echoes_the_req_id_also_when_refused() {
    let t0 = Instant::now();
    let mut cfg = dc_config();
    cfg.max_registrations = 1;
    let mut dc = new_dc(&cfg, t0, 9);
    let (ka, kb) = (fqdn_key("a.ntm.test"), fqdn_key("b.ntm.test"));
    let (fa, fb) = (addr(198, 18, 0, 50, 7700), addr(198, 18, 0, 51, 7700));
    dc.handle(
        t0,
        fa,
        &reg_req_with("a.ntm.test", &ka, T0_NANOS, fa, 0xa11ce),
    )
    .unwrap();
    let out = drain(&mut dc, t0);
    let Message::RegResp(resp) = parse(&out[0].1).message else {
        panic!("not a REG_RESP")
    };
    assert_eq!((resp.req_id, resp.result.is_ok()), (0xa11ce, true));
    // The DC is full: EXHAUSTED, with b's REQ_ID, for its first try and for
    // its retransmission (same REQ_ID, next seq), each sealed with a fresh seq.
    let mut seqs = Vec::new();
    for seq in [T0_NANOS, T0_NANOS + 1] {
        dc.handle(t0, fb, &reg_req_with("b.ntm.test", &kb, seq, fb, 0xb0b))
            .unwrap();
        let out = drain(&mut dc, t0);
        assert_eq!(out.len(), 1);
        Authenticator::new(&kb).verify(&out[0].1).unwrap();
        let repr = parse(&out[0].1);
        let Message::RegResp(resp) = repr.message else {
            panic!("not a REG_RESP")
        };
        assert_eq!((resp.req_id, resp.result), (0xb0b, Err(Status::Exhausted)));
        seqs.push(repr.header.seq);
    }
    assert!(seqs[0] < seqs[1], "{seqs:?}");
}

/// Regression (issue 8, replay of node signaling): a REG_REQ recorded on the
/// path and played back later, from anywhere, is dropped as a replay. The
/// node's window belongs to its FQDN for the life of the DC process, so it
/// outlives re-registration, DEREG and the end of the lease. Without it the
/// recording would re-register the node at the address it came from (the
/// attacker's, or one the node has left) and answer there.
#[test]
fn a_recorded_reg_req_played_back_is_refused_across_registrations() {
    let t0 = Instant::now();
    let mut dc = new_dc(&dc_config(), t0, 7);
    let k = fqdn_key("a.ntm.test");
    let (home, away) = (addr(198, 18, 0, 50, 7700), addr(198, 18, 0, 51, 7700));
    let attacker = addr(203, 0, 113, 9, 5555);
    let recorded = reg_req_with("a.ntm.test", &k, T0_NANOS, home, 0xfeed);
    dc.handle(t0, home, &recorded).unwrap();
    let out = drain(&mut dc, t0);
    let Message::RegResp(resp) = parse(&out[0].1).message else {
        panic!("not a REG_RESP")
    };
    assert_eq!(resp.req_id, 0xfeed);
    let id = resp.result.unwrap().node_id;
    // The node moves and registers again from there.
    dc.handle(
        t0,
        away,
        &reg_req_with("a.ntm.test", &k, T0_NANOS + 1, away, 0xbeef),
    )
    .unwrap();
    let out = drain(&mut dc, t0);
    assert!(matches!(parse(&out[0].1).message, Message::RegResp(r) if r.req_id == 0xbeef));
    let before = dc.stats().clone();

    for from in [home, attacker] {
        assert_eq!(dc.handle(t0, from, &recorded), Err(Error::Replay.into()));
    }
    assert!(drain(&mut dc, t0).is_empty(), "nothing answered");
    assert_eq!(dc.registration("a.ntm.test").unwrap().observed, away);
    assert_eq!(
        (dc.stats().registrations, dc.stats().renewals),
        (before.registrations, before.renewals)
    );

    // DEREG, then a new registration: the recording is still refused.
    dc.handle(t0, away, &seal(&k, id, T0_NANOS + 2, Message::Dereg))
        .unwrap();
    dc.handle(t0, away, &reg_req("a.ntm.test", &k, T0_NANOS + 3, away))
        .unwrap();
    drain(&mut dc, t0);
    assert_eq!(
        dc.handle(t0, attacker, &recorded),
        Err(Error::Replay.into())
    );
    // The node goes for good and its lease ends: still refused.
    let mut now = t0;
    while dc.registration("a.ntm.test").is_some() {
        now = dc.poll_timeout().unwrap();
        dc.handle_timeout(now);
        assert!(now < t0 + Duration::from_secs(1000), "never released");
    }
    assert_eq!(
        dc.handle(now, attacker, &recorded),
        Err(Error::Replay.into())
    );
    assert!(dc.registration("a.ntm.test").is_none());
    assert!(drain(&mut dc, now).is_empty());
    assert_eq!(dc.drops().get(Error::Replay.into()), 4);
    assert_eq!(dc.drops().total(), 4);
}

/// Regression (issue 8, replay of node signaling): the DIR_REQ, ROUTE_ACK
/// and REG_REQ of a real node, recorded on the wire and played back, are
/// dropped as replays: no ROUTE_DIR again, no second tunnel, no move. A
/// DIR_REQ that the DC took as new once it forgot the direction would
/// direct a second tunnel, whose ROUTE_DIR would replace CN's live one.
#[test]
fn recorded_dir_req_route_ack_and_reg_req_played_back_are_refused() {
    let mut w = pair(false, false);
    let (mn_pub, cn_pub) = (w.public(0), w.public(1));
    let attacker = addr(203, 0, 113, 9, 5555);
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    one_tunnel(&w, 0, 1);
    let dir_req = w.net.recorded(mn_pub, DC, MessageType::DirReq);
    let route_ack = w.net.recorded(cn_pub, DC, MessageType::RouteAck);
    let reg_req = w.net.recorded(mn_pub, DC, MessageType::RegReq);
    assert_eq!((dir_req.len(), route_ack.len(), reg_req.len()), (1, 1, 1));
    let route_dirs = w.net.count_sent(MessageType::RouteDir);

    // At once, while the DC remembers the direction (from MN's address, as
    // a verbatim copy), and after it forgot it (from the attacker's).
    for (wait, src) in [
        (Duration::ZERO, mn_pub),
        (DIRECTION_RETENTION + Duration::from_secs(5), attacker),
    ] {
        w.run_for(wait);
        w.net.inject(src, DC, dir_req[0].data.clone());
        w.net.inject(src, DC, route_ack[0].data.clone());
        w.run_for(Duration::from_secs(2));
    }
    assert_eq!(w.dc.drops().get(Error::Replay.into()), 4);
    assert_eq!(w.dc.drops().get(DropReason::StaleAck), 0);
    assert_eq!(
        (w.dc.stats().dir_reqs, w.dc.stats().dir_req_repeats),
        (1, 0)
    );
    assert_eq!(w.net.count_sent(MessageType::RouteDir), route_dirs);
    assert_eq!(w.dc.tunnels().count(), 0, "forgotten, not made again");
    assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
    assert_eq!(w.tunnel_ups(1).len(), 1);
    w.assert_data_both_ways(0, 1);

    // MN's REG_REQ from the attacker's address: MN stays registered where it is.
    w.net.inject(attacker, DC, reg_req[0].data.clone());
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.dc.drops().get(Error::Replay.into()), 5);
    assert_eq!(w.dc.registration("mn.ntm.test").unwrap().observed, mn_pub);
    assert_eq!(w.dc.stats().renewals, 0);
    assert!(
        w.net.wire.iter().all(|d| d.dst != attacker),
        "nothing to the attacker"
    );
}

/// Regression (issue 8, replay of RS signaling): a recorded RELAY_ACK played
/// back to the DC is a replay (not merely a stale ack); the DC's RELAY_DIRs
/// and CN's ROUTE_DIRs, retransmitted, each carry the DC's next seq, so the
/// receivers' windows let every retransmission through.
#[test]
fn every_retransmission_is_sealed_anew_with_the_next_seq() {
    let mut w = pair(true, true);
    let cn_pub = w.public(1);
    let (mut lost_relay_dirs, mut lost_route_dirs) = (0, 0);
    w.net.drop = Box::new(move |f| {
        if f.dst == RS && f.is(MessageType::RelayDir) && lost_relay_dirs < 2 {
            lost_relay_dirs += 1;
            return true;
        }
        if f.dst == cn_pub && f.is(MessageType::RouteDir) && lost_route_dirs < 2 {
            lost_route_dirs += 1;
            return true;
        }
        false
    });
    let req = w.connect(0, "cn.ntm.test");
    w.run_for(Duration::from_secs(3));
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let relay_dirs = w.net.recorded(DC, RS, MessageType::RelayDir);
    let to_cn = w.net.recorded(DC, cn_pub, MessageType::RouteDir);
    assert_eq!((relay_dirs.len(), to_cn.len()), (3, 3));
    let seq = |f: &Datagram| parse(&f.data).header.seq;
    for copies in [&relay_dirs, &to_cn] {
        let seqs: Vec<u64> = copies.iter().map(seq).collect();
        assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
    }
    // CN's three copies: one tunnel, one K_tun, each wrapped for its own seq.
    let auth = Authenticator::new(&fqdn_key("cn.ntm.test"));
    let keys: Vec<(u32, Key)> = to_cn
        .iter()
        .map(|f| {
            let repr = parse(&f.data);
            let Message::RouteDir(rd) = repr.message else {
                panic!("not a ROUTE_DIR")
            };
            let r = rd.result.unwrap();
            let k = auth.unwrap_key(
                WrapLabel::TunnelKey,
                r.tunnel_id,
                repr.header.seq,
                &r.wrapped_key,
            );
            (r.tunnel_id, k)
        })
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]));
    // Everything the DC sent: strictly increasing seqs from its start (Unix ns).
    let dc_seqs: Vec<u64> = w.net.wire.iter().filter(|f| f.src == DC).map(seq).collect();
    assert!(dc_seqs[0] > 1_700_000_000_000_000_000);
    assert!(dc_seqs.windows(2).all(|p| p[0] < p[1]));
    // Nobody saw a replay: each retransmission passed its receiver's window.
    assert_eq!(w.rs.drops().get(Error::Replay.into()), 0);
    assert_eq!(w.nodes[1].ep.drops().get(Error::Replay), 0);
    assert_eq!(w.dc.stats().relay_acks, 1);
    one_tunnel(&w, 0, 1);
    w.assert_data_both_ways(0, 1);

    // The RS's RELAY_ACK, played back to the DC: a replay, dropped.
    let relay_ack = w.net.recorded(RS, DC, MessageType::RelayAck);
    assert_eq!(relay_ack.len(), 1);
    w.net.inject(RS, DC, relay_ack[0].data.clone());
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.dc.drops().get(Error::Replay.into()), 1);
    assert_eq!(w.dc.drops().get(DropReason::StaleAck), 0);
    assert_eq!(w.dc.stats().relay_acks, 1);
}

/// §5: at most 256 directions per requesting node. The 257th gets
/// EXHAUSTED while another node still gets its direction, and the limited
/// node gets directions again once its old ones aged out.
#[test]
fn the_257th_direction_from_one_node_is_exhausted_while_another_node_still_gets_ok() {
    use ntm_dc::coordinator::{MAX_DIRECTIONS_PER_NODE, SWEEP_INTERVAL};
    let t0 = Instant::now();
    let mut dc = new_dc(&dc_config(), t0, 8);
    let names = ["a.ntm.test", "b.ntm.test", "c.ntm.test"];
    let from: Vec<SocketAddrV4> = (0..3).map(|i| addr(198, 18, 0, 50 + i, 7700)).collect();
    let mut seq = T0_NANOS;
    for (n, a) in names.iter().zip(&from) {
        seq += 1;
        dc.handle(t0, *a, &reg_req(n, &fqdn_key(n), seq, *a))
            .unwrap();
    }
    drain(&mut dc, t0);
    let ids: Vec<u32> = names.iter().map(|n| dc.node_id(n).unwrap()).collect();
    let dir_req = |seq: u64, i: usize, req_id: u32, target: &str| {
        seal(
            &fqdn_key(names[i]),
            ids[i],
            seq,
            Message::DirReq(DirReq {
                req_id,
                fqdn: Fqdn::new(target).unwrap(),
            }),
        )
    };
    let limit = MAX_DIRECTIONS_PER_NODE as u32;
    assert_eq!(limit, 256);

    // a asks for b 256 times: 256 tunnels, b's ROUTE_DIR OK for each.
    for req_id in 1..=limit {
        seq += 1;
        dc.handle(t0, from[0], &dir_req(seq, 0, req_id, "b.ntm.test"))
            .unwrap();
    }
    let out = drain(&mut dc, t0);
    assert_eq!(out.len(), 256);
    assert!(out
        .iter()
        .all(|(dst, d)| *dst == from[1] && route_dir(d).1.is_ok()));
    assert_eq!(dc.tunnels().count(), 256);

    // The 257th, for b or for anything else: EXHAUSTED to a, with its
    // REQ_ID, and nothing directed.
    for (req_id, target) in [(limit + 1, "b.ntm.test"), (limit + 2, "nobody.ntm.test")] {
        seq += 1;
        dc.handle(t0, from[0], &dir_req(seq, 0, req_id, target))
            .unwrap();
        let out = drain(&mut dc, t0);
        assert_eq!(out.len(), 1, "{target}");
        assert_eq!(out[0].0, from[0]);
        assert_eq!(route_dir(&out[0].1), (req_id, Err(Status::Exhausted)));
    }
    assert_eq!(dc.tunnels().count(), 256);
    assert_eq!(dc.stats().dir_node_limit, 2);
    // A retransmission of a direction it holds is no new one: not refused.
    seq += 1;
    dc.handle(t0, from[0], &dir_req(seq, 0, 1, "b.ntm.test"))
        .unwrap();
    assert!(drain(&mut dc, t0)
        .iter()
        .all(|(_, d)| route_dir(d).1 != Err(Status::Exhausted)));
    assert_eq!(dc.stats().dir_req_repeats, 1);

    // c, another node, gets its direction: b's copy, then (on b's
    // ROUTE_ACK) c's OK.
    seq += 1;
    dc.handle(t0, from[2], &dir_req(seq, 2, 7, "b.ntm.test"))
        .unwrap();
    let out = drain(&mut dc, t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, from[1]);
    let (_, Ok((tunnel_id, _))) = route_dir(&out[0].1) else {
        panic!("b's ROUTE_DIR for c is not OK")
    };
    seq += 1;
    dc.handle(
        t0,
        from[1],
        &seal(
            &fqdn_key(names[1]),
            ids[1],
            seq,
            Message::RouteAck(RouteAck { tunnel_id }),
        ),
    )
    .unwrap();
    let out = drain(&mut dc, t0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, from[2]);
    assert_eq!(route_dir(&out[0].1).0, 7);
    assert!(route_dir(&out[0].1).1.is_ok());

    // Not locked out: b never acknowledged a's 256 (they failed as
    // UNREACHABLE), and once they aged out a gets directions again.
    let mut now = t0;
    while now < t0 + DIRECTION_RETENTION + SWEEP_INTERVAL {
        now = dc.poll_timeout().unwrap();
        dc.handle_timeout(now);
        drain(&mut dc, now);
    }
    assert_eq!(dc.tunnels().count(), 0);
    seq += 1;
    dc.handle(now, from[0], &dir_req(seq, 0, limit + 3, "c.ntm.test"))
        .unwrap();
    let out = drain(&mut dc, now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, from[2], "c's copy: a's direction is under way");
    assert!(route_dir(&out[0].1).1.is_ok());
    assert_eq!(dc.stats().dir_node_limit, 2);
}

/// The DC's `tunnel_suite` is the SUITE of every ROUTE_DIR, and tunnels of
/// either suite work on every path. With suite 2 no DATA carries its
/// payload in clear; with suite 1 it does.
#[test]
fn tunnel_suite_1_and_2_configs_both_produce_working_route_dirs() {
    for (n, suite) in [(1u8, Suite::HmacSha256_128), (2, Suite::Aes256Gcm)] {
        for (mn_nat, cn_nat) in [(false, false), (false, true), (true, true)] {
            let case = format!("suite {n}, mn_nat={mn_nat} cn_nat={cn_nat}");
            let mut cfg = dc_config();
            cfg.tunnel_suite = n;
            let mut w = pair_with(cfg, mn_nat, cn_nat);
            assert_eq!(w.dc.settings().tunnel_suite, suite);
            let req = w.connect(0, "cn.ntm.test");
            assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))), "{case}");
            // Both ends run the DC's suite (one_tunnel checks it too).
            let (mn, cn) = one_tunnel(&w, 0, 1);
            assert_eq!((mn.suite, cn.suite), (suite, suite), "{case}");
            // The SUITE TLV of every ROUTE_DIR as sent (verified with K_node).
            let mut seen = 0;
            for i in [0, 1] {
                let auth = Authenticator::new(&fqdn_key(FQDNS[i]));
                for f in w.net.recorded(DC, w.public(i), MessageType::RouteDir) {
                    auth.verify(&f.data).unwrap();
                    assert_eq!(f.data[3], 1, "{case}: signaling stays suite 1");
                    assert_eq!(route_dir(&f.data).1.map(|r| r.1), Ok(suite), "{case}");
                    seen += 1;
                }
            }
            assert_eq!(seen, 2, "{case}");
            w.assert_data_both_ways(0, 1);
            let data: Vec<&Datagram> = w
                .net
                .wire
                .iter()
                .filter(|f| f.is(MessageType::Data))
                .collect();
            assert!(!data.is_empty(), "{case}");
            for f in data {
                assert_eq!(f.data[3], n, "{case}: DATA in the tunnel's suite");
                let clear = f.data.windows(4).any(|x| x == b"ping" || x == b"pong");
                assert_eq!(clear, suite == Suite::HmacSha256_128, "{case}");
            }
        }
    }
}

// ---------------------------------------------------------------- reload (SIGHUP)

#[test]
fn reload_keeps_unchanged_nodes_and_ends_removed_and_rekeyed_ones() {
    // Three nodes: mn stays, cn is re-keyed, a is removed; a new one is added.
    let mut w = pair(false, false);
    let a = w.add_node("a.ntm.test", addr(198, 18, 0, 30, 7700), None);
    w.run_for(Duration::from_secs(2));
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    w.assert_data_both_ways(0, 1);
    let mn_before = w.dc.registration("mn.ntm.test").unwrap();
    assert!(w.dc.registration("a.ntm.test").unwrap().is_active());

    let mut cfg = dc_config();
    cfg.nodes.retain(|n| n.fqdn != "a.ntm.test");
    cfg.nodes
        .push(NodeEntry::new("new.ntm.test", &fqdn_key("new.ntm.test")));
    for n in &mut cfg.nodes {
        if n.fqdn == "cn.ntm.test" {
            n.key = Key::from_bytes([0x77; 32]).to_hex();
        }
    }
    let r = w.dc.reload(&cfg).unwrap();
    assert_eq!(r.added, vec!["new.ntm.test".to_owned()]);
    assert_eq!(r.removed, vec!["a.ntm.test".to_owned()]);
    assert_eq!(r.rekeyed, vec!["cn.ntm.test".to_owned()]);
    assert_eq!(r.registrations_ended, 2, "{r}");
    assert!(r.relays_added.is_empty() && r.relays_removed.is_empty());
    assert_eq!(w.dc.registration("mn.ntm.test"), Some(mn_before.clone()));
    assert!(w.dc.registration("cn.ntm.test").is_none());
    assert!(w.dc.registration("a.ntm.test").is_none());
    assert!(w.dc.node_id("new.ntm.test").is_some());
    assert!(w.dc.node_id("a.ntm.test").is_none());

    // The tunnel never passed through the DC: it still carries data.
    w.assert_data_both_ways(0, 1);
    // mn keeps alive on its old registration (no REG_REQ again); a and the
    // old-keyed cn are refused from now on.
    w.run_for(Duration::from_secs(120));
    assert_eq!(w.registered(0).len(), 1, "mn did not register again");
    assert!(w.dc.registration("mn.ntm.test").unwrap().is_active());
    assert!(w.dc.registration("cn.ntm.test").is_none());
    assert!(w.dc.registration("a.ntm.test").is_none());
    assert!(w.dc.drops().get(DropReason::Proto(Error::BadTag)) > 0);
    assert!(
        w.dc.drops().get(DropReason::UnknownFqdn) > 0
            || w.dc.drops().get(DropReason::UnknownNode) > 0
    );
    let _ = a;
}

#[test]
fn reload_refuses_what_needs_a_restart_and_bad_configs_and_changes_nothing() {
    let mut w = pair(false, false);
    let before = w.dc.registration("cn.ntm.test").unwrap();
    let mut cfg = dc_config();
    cfg.listen = addr(198, 18, 0, 99, 7710);
    cfg.nodes.clear();
    let e = w.dc.reload(&cfg).unwrap_err().to_string();
    assert!(e.contains("no [[node]]"), "{e}");
    cfg.nodes = dc_config().nodes;
    let e = w.dc.reload(&cfg).unwrap_err().to_string();
    assert!(e.contains("listen") && e.contains("needs a restart"), "{e}");
    cfg.listen = DC;
    cfg.vip_pool = "10.0.0.0/8".into();
    let e = w.dc.reload(&cfg).unwrap_err().to_string();
    assert!(e.contains("vip_pool"), "{e}");
    assert_eq!(w.dc.registration("cn.ntm.test"), Some(before));
    // Settings that need no restart apply at once.
    let mut cfg = dc_config();
    cfg.keepalive_secs = 7;
    cfg.relays[0].key = Key::from_bytes([0x12; 32]).to_hex();
    let r = w.dc.reload(&cfg).unwrap();
    assert_eq!(r.relays_rekeyed, vec![RS_ID]);
    assert_eq!(w.dc.settings().keepalive, Duration::from_secs(7));
    assert!(r.added.is_empty() && r.removed.is_empty() && r.rekeyed.is_empty());
    w.run_for(Duration::from_secs(30));
    assert!(w.dc.registration("cn.ntm.test").unwrap().is_active());
}

// ---------------------------------------------------------------- restart on a redb store

/// A directory of its own, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ntm-dc-world-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn redb(path: &std::path::Path, now: Instant, seed: u8) -> Box<dyn DcStore> {
    let unix = 1_700_000_000_000_000_000 + u64::from(seed) * 1_000_000_000;
    Box::new(RedbStore::open(path, now, unix).unwrap())
}

/// Stops the world's DC (its store written and closed, as at SIGTERM) and
/// starts a new one on the redb file `path`, with the same RNG seed and
/// clock base as the first: only the store tells it what came before.
fn restart_on(w: &mut World, path: &std::path::Path) {
    let now = w.now();
    let cfg = w.dc.cfg.clone();
    // The old one goes first: the file is locked while it is open.
    w.dc.dc = new_dc(&cfg, now, 9);
    w.dc.dc = dc_on(&cfg, redb(path, now, 1), now, 1);
}

#[test]
fn a_restarted_dc_keeps_registrations_refuses_replays_and_never_repeats_a_tunnel_id() {
    let dir = TempDir::new("restart");
    let file = dir.file("dc.redb");
    let mut w = pair_on(dc_config(), redb(&file, Instant::now(), 1), false, false);
    let (mn_pub, cn_pub) = (w.public(0), w.public(1));
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let (first, _) = one_tunnel(&w, 0, 1);
    let before: Vec<_> = ["mn.ntm.test", "cn.ntm.test"]
        .map(|f| w.dc.registration(f).unwrap())
        .into();
    let reg_req = w.net.recorded(mn_pub, DC, MessageType::RegReq);
    let dir_req = w.net.recorded(mn_pub, DC, MessageType::DirReq);
    let route_ack = w.net.recorded(cn_pub, DC, MessageType::RouteAck);
    assert_eq!((reg_req.len(), dir_req.len(), route_ack.len()), (1, 1, 1));

    restart_on(&mut w, &file);
    let r = w.dc.restored().clone();
    assert_eq!((r.registrations, r.active, r.dropped), (2, 2, 0), "{r}");
    assert!(r.marks >= 2, "{r}");
    for b in &before {
        let a = w.dc.registration(&b.fqdn).unwrap();
        assert!(a.is_active());
        assert_eq!(
            (a.node_id, a.vip, a.observed, a.local, a.caps),
            (b.node_id, b.vip, b.observed, b.local, b.caps),
            "{} as before",
            b.fqdn
        );
        assert_eq!(w.dc.node_id(&b.fqdn), Some(b.node_id));
    }

    // Played back, from the attacker's address and from the node's own:
    // every one a replay, nothing acted on, nothing sent.
    let attacker = addr(203, 0, 113, 9, 5555);
    let sent = w.net.wire.len();
    for src in [attacker, mn_pub] {
        w.net.inject(src, DC, reg_req[0].data.clone());
        w.net.inject(src, DC, dir_req[0].data.clone());
    }
    w.net.inject(cn_pub, DC, route_ack[0].data.clone());
    w.run_for(Duration::from_millis(100));
    assert_eq!(
        w.dc.drops().get(Error::Replay.into()),
        5,
        "{}",
        w.dc.stats_line()
    );
    let s = w.dc.stats();
    assert_eq!((s.registrations, s.renewals, s.dir_reqs), (0, 0, 0));
    assert_eq!(w.dc.registration("mn.ntm.test").unwrap().observed, mn_pub);
    assert!(
        w.net.wire[sent..].iter().all(|d| d.src != DC),
        "the DC answered nothing"
    );

    // The live nodes' next datagrams are new: their keep-alives are
    // answered (so the DC's own seq went on above the old one), nobody is
    // told to re-register, and the tunnel carries data throughout.
    w.run_for(Duration::from_secs(45));
    assert!(w.dc.stats().keepalives >= 4, "{}", w.dc.stats_line());
    assert_eq!(w.dc.stats().errors_sent, 0, "{}", w.dc.stats_line());
    assert_eq!((w.registered(0).len(), w.registered(1).len()), (1, 1));
    assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
    w.assert_data_both_ways(0, 1);

    // A fresh direction works and gets a new tunnel id, although the
    // restarted DC has the first one's RNG seed and clock.
    let a = w.add_node("a.ntm.test", addr(198, 18, 0, 60, 7700), None);
    w.run_for(Duration::from_secs(1));
    let req = w.connect(0, "a.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(a))));
    w.assert_data_both_ways(0, a);
    let second = w.tunnel_ups(a)[0].tunnel_id;
    assert_ne!(second, first.tunnel_id);
    assert_eq!(w.dc.stats().dir_reqs, 1);
}

#[test]
fn tunnel_ids_do_not_repeat_across_restarts() {
    let dir = TempDir::new("ids");
    let file = dir.file("dc.redb");
    let now = Instant::now();
    let mut seen = HashSet::new();
    for run in 0..3u32 {
        // The same seed and clock every run: only the store differs.
        let mut dc = dc_on(&dc_config(), redb(&file, now, 1), now, 1);
        let seq0 = T0_NANOS + u64::from(run) * 1_000_000_000;
        let (mn, cn) = (fqdn_key("mn.ntm.test"), fqdn_key("cn.ntm.test"));
        let (mn_addr, cn_addr) = (addr(198, 18, 0, 20, 7700), addr(198, 18, 0, 21, 7700));
        dc.handle(now, mn_addr, &reg_req("mn.ntm.test", &mn, seq0, mn_addr))
            .unwrap();
        dc.handle(now, cn_addr, &reg_req("cn.ntm.test", &cn, seq0, cn_addr))
            .unwrap();
        drain(&mut dc, now);
        let id = dc.node_id("mn.ntm.test").unwrap();
        for i in 0..100u32 {
            let d = seal(
                &mn,
                id,
                seq0 + 1 + u64::from(i),
                Message::DirReq(DirReq {
                    req_id: i,
                    fqdn: Fqdn::new("cn.ntm.test").unwrap(),
                }),
            );
            dc.handle(now, mn_addr, &d).unwrap();
            // DIRECT: CN's ROUTE_DIR goes out first, with the tunnel id.
            for (_, out) in drain(&mut dc, now) {
                if let (_, Ok((tunnel_id, _))) = route_dir(&out) {
                    assert!(
                        seen.insert(tunnel_id),
                        "tunnel id {tunnel_id:#x} again in run {run}"
                    );
                }
            }
        }
    }
    assert_eq!(seen.len(), 300);
}

#[test]
fn after_a_crash_what_was_answered_is_still_refused() {
    // The file as a crash right after the DIR_REQ's answer leaves it: a
    // copy taken while the DC runs (no clean stop, no sweep since).
    let dir = TempDir::new("crash");
    let (file, crashed) = (dir.file("dc.redb"), dir.file("crashed.redb"));
    let mut w = pair_on(dc_config(), redb(&file, Instant::now(), 1), false, false);
    let mn_pub = w.public(0);
    w.run_for(Duration::from_secs(2));
    let req = w.connect(0, "cn.ntm.test");
    // Stop as soon as MN has its answer: no sweep ran after the DIR_REQ.
    let dir_req = w.net.recorded(mn_pub, DC, MessageType::DirReq);
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    std::fs::copy(&file, &crashed).unwrap();
    let reg_req = w.net.recorded(mn_pub, DC, MessageType::RegReq);

    let now = w.now();
    let mut dc = dc_on(&w.dc.cfg, redb(&crashed, now, 1), now, 1);
    assert_eq!(dc.restored().registrations, 2, "{}", dc.restored());
    let attacker = addr(203, 0, 113, 9, 5555);
    for d in [&reg_req[0].data, &dir_req[0].data] {
        assert_eq!(dc.handle(now, attacker, d), Err(Error::Replay.into()));
    }
    assert!(drain(&mut dc, now).is_empty());
}
