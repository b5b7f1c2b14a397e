//! `node::Endpoint` in a virtual-time world ([`ntm_proto::sim`]): nodes,
//! NATs with address-and-port-restricted filtering, a minimal DC and a
//! minimal RS written here, latency, loss and duplication knobs, and an
//! attacker on the path who records datagrams and plays them back (the
//! attacks that version 1 of the protocol fell to). No sockets, no clock.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ntm_proto::dns::ReplyKind;
use ntm_proto::hold::HoldQueue;
use ntm_proto::host::{Host, NoWay, Way};
use ntm_proto::node::{Config, DirError, DownReason, Endpoint, Event, Received, RegistrationError};
use ntm_proto::retransmit::{Retransmit, RetransmitAction};
use ntm_proto::sim::{self, fqdn_key, ipv4, DcWorld, HostNode, NatId, NodeWorld, World as _};
use ntm_proto::wire::{
    Caps, ErrorMsg, Fqdn, Header, KeepaliveAck, Lease, Message, Packet, RegResp, Repr, Route,
    RouteDir, Vip,
};
use ntm_proto::ReplayWindow;
use ntm_proto::{Authenticator, Error, Key, MessageType, Path, Role, Status, Suite, WrapLabel};
use rand::rngs::StdRng;
use rand::SeedableRng;

const DC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const RS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 3), 7720);
const LATENCY: Duration = Duration::from_millis(10);
const TUNNEL_LIFETIME: u32 = 180;

// ---------------------------------------------------------------- test DC

struct DcNode {
    fqdn: String,
    auth: Authenticator,
    vip: Ipv4Addr,
    observed: SocketAddrV4,
    local: SocketAddrV4,
}

/// One node's copy of a direction, kept to answer retransmissions: every
/// copy is sealed anew with the DC's next seq (and the key wrapped for it).
#[derive(Clone)]
struct Directed {
    to: u32,
    req_id: u32,
    dst: SocketAddrV4,
    result: Result<DirectedRoute, Status>,
}

#[derive(Clone)]
struct DirectedRoute {
    tunnel_id: u32,
    peer: u32,
    role: Role,
    endpoint: SocketAddrV4,
    path: Path,
    k_tun: Key,
    k_relay: Option<Key>,
}

struct TestDc {
    nodes: HashMap<u32, DcNode>,
    leases: HashMap<String, (u32, Ipv4Addr)>,
    next_node: u32,
    next_tunnel: u32,
    seq: u64,
    rng: StdRng,
    suite: Suite,
    answered: HashMap<(u32, u32), Directed>,
    unacked: HashMap<(u32, u32), (Directed, Retransmit)>,
    /// `K_relay` of each RELAY tunnel, handed to the test RS out of band
    /// (the real DC sends RELAY_DIR).
    relay_keys: RelayKeys,
    out: VecDeque<(SocketAddrV4, Vec<u8>)>,
    received: Vec<(MessageType, u32)>,
    silent: bool,
}

impl TestDc {
    fn new(first_node: u32, relay_keys: RelayKeys) -> TestDc {
        TestDc {
            nodes: HashMap::new(),
            leases: HashMap::new(),
            next_node: first_node,
            next_tunnel: 0x100,
            seq: 1_700_000_000_000_000_000,
            rng: StdRng::seed_from_u64(7),
            suite: Suite::Aes256Gcm,
            answered: HashMap::new(),
            unacked: HashMap::new(),
            relay_keys,
            out: VecDeque::new(),
            received: Vec::new(),
            silent: false,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Seals `message` for node `id` with the next seq and sends it to `dst`.
    fn send(&mut self, dst: SocketAddrV4, id: u32, message: Message<'_>, auth: &Authenticator) {
        let header = Header {
            id,
            seq: self.next_seq(),
            response_required: false,
        };
        let repr = Repr::new(header, message);
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit_sealed(&mut buf, auth).unwrap();
        self.out.push_back((dst, buf));
    }

    fn receive(&mut self, now: Instant, from: SocketAddrV4, d: &[u8]) {
        if self.silent {
            return;
        }
        let Ok(p) = Packet::new_checked(d) else {
            return;
        };
        if p.check_header().is_err() {
            return;
        }
        let Ok(repr) = Repr::parse(&p) else { return };
        self.received
            .push((repr.message.msg_type(), repr.header.id));
        if let Message::RegReq(r) = repr.message {
            let auth = Authenticator::new(&fqdn_key(r.fqdn.as_str()));
            if auth.verify(d).is_err() {
                return;
            }
            let fqdn = r.fqdn.as_str().to_owned();
            // VIPs are a function of the FQDN, so a restarted DC hands out
            // the same ones; node ids are not.
            let vip = Ipv4Addr::new(
                100,
                64,
                0,
                10 + fqdn
                    .bytes()
                    .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b))
                    % 200,
            );
            let (id, vip) = *self.leases.entry(fqdn.clone()).or_insert_with(|| {
                let id = self.next_node;
                self.next_node += 1;
                (id, vip)
            });
            self.nodes.insert(
                id,
                DcNode {
                    fqdn,
                    auth: auth.clone(),
                    vip,
                    observed: from,
                    local: r.local_addr,
                },
            );
            let lease = Lease {
                node_id: id,
                vip: Vip {
                    addr: vip,
                    prefix_len: 10,
                },
                observed: from,
                keepalive_secs: 20,
                lifetime_secs: 600,
            };
            let resp = RegResp {
                req_id: r.req_id,
                result: Ok(lease),
            };
            self.send(from, id, Message::RegResp(resp), &auth);
            return;
        }
        let id = repr.header.id;
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        if node.auth.verify(d).is_err() {
            return;
        }
        let auth = node.auth.clone();
        match repr.message {
            Message::Keepalive => {
                let ack = KeepaliveAck { observed: from };
                self.send(from, id, Message::KeepaliveAck(ack), &auth);
            }
            Message::DirReq(q) => {
                if let Some(d) = self.answered.get(&(id, q.req_id)).cloned() {
                    self.route_dir(&d);
                    return;
                }
                self.direction(now, id, q.req_id, q.fqdn.as_str());
            }
            Message::RouteAck(a) => {
                self.unacked.remove(&(a.tunnel_id, id));
            }
            Message::Dereg => {
                self.nodes.remove(&id);
            }
            _ => {}
        }
    }

    fn direction(&mut self, now: Instant, mn_id: u32, req_id: u32, target: &str) {
        let cn_id = self
            .nodes
            .iter()
            .find(|(_, n)| n.fqdn == target)
            .map(|(id, _)| *id);
        let mn = &self.nodes[&mn_id];
        let mn_obs = mn.observed;
        let Some(cn_id) = cn_id else {
            let d = Directed {
                to: mn_id,
                req_id,
                dst: mn_obs,
                result: Err(Status::NotFound),
            };
            self.route_dir(&d);
            self.answered.insert((mn_id, req_id), d);
            return;
        };
        let (mn, cn) = (&self.nodes[&mn_id], &self.nodes[&cn_id]);
        let mn_nat = mn.observed != mn.local;
        let cn_nat = cn.observed != cn.local;
        // (path, MN role, CN role, MN endpoint, CN endpoint)
        let (path, mn_role, cn_role, mn_ep, cn_ep) = if !cn_nat {
            (
                Path::Direct,
                Role::Initiator,
                Role::Responder,
                cn.observed,
                mn.observed,
            )
        } else if !mn_nat {
            (
                Path::Reverse,
                Role::Responder,
                Role::Initiator,
                cn.observed,
                mn.observed,
            )
        } else if mn.observed.ip() == cn.observed.ip() {
            (
                Path::Direct,
                Role::Initiator,
                Role::Responder,
                cn.local,
                mn.local,
            )
        } else {
            (Path::Relay, Role::Initiator, Role::Responder, RS, RS)
        };
        let tid = self.next_tunnel;
        self.next_tunnel += 1;
        let k_tun = Key::random(&mut self.rng);
        let k_relay = (path == Path::Relay).then(|| Key::random(&mut self.rng));
        if let Some(k) = &k_relay {
            self.relay_keys.borrow_mut().push((tid, k.clone()));
        }
        let parties = [
            (mn_id, req_id, mn_role, mn_ep, cn_id, mn.observed),
            (cn_id, 0, cn_role, cn_ep, mn_id, cn.observed),
        ];
        for (to, rid, role, endpoint, peer, dst) in parties {
            let d = Directed {
                to,
                req_id: rid,
                dst,
                result: Ok(DirectedRoute {
                    tunnel_id: tid,
                    peer,
                    role,
                    endpoint,
                    path,
                    k_tun: k_tun.clone(),
                    k_relay: k_relay.clone(),
                }),
            };
            self.route_dir(&d);
            if rid == 0 {
                self.unacked.insert((tid, to), (d, Retransmit::start(now)));
            } else {
                self.answered.insert((to, rid), d);
            }
        }
    }

    /// Seal and send one copy of a ROUTE_DIR with the next seq.
    fn route_dir(&mut self, d: &Directed) {
        let auth = self.nodes[&d.to].auth.clone();
        let seq = self.next_seq();
        let result = match &d.result {
            Err(status) => Err(*status),
            Ok(r) => Ok(Route {
                tunnel_id: r.tunnel_id,
                peer_fqdn: Fqdn::new(&self.nodes[&r.peer].fqdn).unwrap(),
                peer_vip: Vip {
                    addr: self.nodes[&r.peer].vip,
                    prefix_len: 10,
                },
                endpoint: r.endpoint,
                path: r.path,
                role: r.role,
                suite: self.suite,
                wrapped_key: auth.wrap_key(WrapLabel::TunnelKey, r.tunnel_id, seq, &r.k_tun),
                wrapped_relay_key: r
                    .k_relay
                    .as_ref()
                    .map(|k| auth.wrap_key(WrapLabel::RelayKey, r.tunnel_id, seq, k)),
                lifetime_secs: TUNNEL_LIFETIME,
            }),
        };
        let r = Repr::new(
            Header {
                id: d.to,
                seq,
                response_required: false,
            },
            Message::RouteDir(RouteDir {
                req_id: d.req_id,
                result,
            }),
        );
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit_sealed(&mut buf, &auth).unwrap();
        self.out.push_back((d.dst, buf));
    }
}

impl sim::Party for TestDc {
    fn handle(&mut self, now: Instant, from: SocketAddrV4, data: Vec<u8>) {
        self.receive(now, from, &data);
    }

    fn poll_transmit(&mut self, _: Instant) -> Option<(SocketAddrV4, Vec<u8>)> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.silent {
            return None;
        }
        self.unacked.values().map(|(_, r)| r.deadline()).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let mut resend = Vec::new();
        self.unacked.retain(|_, (d, r)| match r.on_timeout(now) {
            Some(RetransmitAction::Send) => {
                resend.push(d.clone());
                true
            }
            Some(RetransmitAction::Failed) => false,
            None => true,
        });
        for d in resend {
            self.route_dir(&d);
        }
    }
}

// ---------------------------------------------------------------- test RS

/// `K_relay`, the bound address of each end and each end's replay window.
type Binding = (Authenticator, [Option<SocketAddrV4>; 2], [ReplayWindow; 2]);

type RelayKeys = Rc<RefCell<Vec<(u32, Key)>>>;

#[derive(Default)]
struct TestRs {
    keys: RelayKeys,
    binds: HashMap<u32, Binding>,
    out: VecDeque<(SocketAddrV4, Vec<u8>)>,
    forwarded: usize,
}

impl TestRs {
    fn forward(&mut self, from: SocketAddrV4, d: &[u8]) -> Option<(SocketAddrV4, Vec<u8>)> {
        for (tid, k) in self.keys.borrow_mut().drain(..) {
            let bind = (Authenticator::new(&k), [None, None], Default::default());
            self.binds.insert(tid, bind);
        }
        let p = Packet::new_checked(d).ok()?;
        let (auth, slots, windows) = self.binds.get_mut(&p.id())?;
        if p.msg_type() == MessageType::RelayBind {
            auth.verify(d).ok()?;
            let repr = Repr::parse(&p).ok()?;
            let Message::RelayBind(b) = repr.message else {
                return None;
            };
            let end = usize::from(b.role == Role::Responder);
            windows[end].validate(repr.header.seq).then_some(())?;
            slots[end] = Some(from);
            return None;
        }
        let to = if slots[0] == Some(from) {
            slots[1]?
        } else if slots[1] == Some(from) {
            slots[0]?
        } else {
            return None;
        };
        self.forwarded += 1;
        Some((to, d.to_vec()))
    }
}

impl sim::Party for TestRs {
    fn handle(&mut self, _: Instant, from: SocketAddrV4, data: Vec<u8>) {
        if let Some(out) = self.forward(from, &data) {
            self.out.push_back(out);
        }
    }

    fn poll_transmit(&mut self, _: Instant) -> Option<(SocketAddrV4, Vec<u8>)> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _: Instant) {}
}

// ---------------------------------------------------------------- world

/// The test DC and RS, and the nodes.
type World = DcWorld<TestDc, TestRs>;

fn world() -> World {
    let rs = TestRs::default();
    let dc = TestDc::new(1, Rc::clone(&rs.keys));
    DcWorld::new(Instant::now(), LATENCY, (DC, dc), (RS, rs))
}

fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

/// One node, cn2, registered from behind a NAT; (world, NAT, node).
fn one_behind_nat() -> (World, NatId, usize) {
    let mut w = world();
    let n = w.add_nat(Ipv4Addr::new(198, 18, 0, 11));
    let a = w.add_node("cn2.ntm.test", addr(192, 168, 20, 2, 7700), Some(n));
    w.run_for(Duration::from_secs(1));
    (w, n, a)
}

/// Two registered public nodes, `a` (mn) and `b` (cn).
fn two_public() -> World {
    two_public_with(|_| {})
}

/// [`two_public`], the world set up by `set` first.
fn two_public_with(set: impl FnOnce(&mut World)) -> World {
    let mut w = world();
    set(&mut w);
    w.add_node("mn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.add_node("cn.ntm.test", addr(198, 18, 0, 21, 7700), None);
    w.run_for(Duration::from_secs(1));
    w
}

// ---------------------------------------------------------------- tests

#[test]
fn registers_and_keeps_alive() {
    let mut w = world();
    let a = w.add_node("gn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.run_for(Duration::from_secs(1));
    let r = w.nodes[a].ep.registration().unwrap();
    assert_eq!((r.vip.prefix_len, r.node_id), (10, 1));
    assert_eq!(r.observed, addr(198, 18, 0, 20, 7700));
    assert!(!r.behind_nat);
    // The event said the same.
    let first = &w.events(a)[0];
    assert!(
        matches!(first, Event::Registered { vip, prefix_len: 10, node_id: 1, observed, behind_nat: false }
            if *vip == r.vip.addr && *observed == r.observed),
        "{first:?}"
    );
    // The first REG_REQ carries id 0.
    assert_eq!(w.dc.received[0], (MessageType::RegReq, 0));
    w.run_for(Duration::from_secs(130));
    let keepalives =
        w.dc.received
            .iter()
            .filter(|(t, id)| *t == MessageType::Keepalive && *id == 1)
            .count();
    assert_eq!(keepalives, 6, "one every 20 s");
    assert_eq!(
        w.registered(a).len(),
        1,
        "no re-registration while the DC answers"
    );
    assert_eq!(w.nodes[a].ep.drops().total(), 0);
}

#[test]
fn behind_nat_is_detected() {
    let (w, _, a) = one_behind_nat();
    let Event::Registered {
        observed,
        behind_nat,
        ..
    } = &w.events(a)[0]
    else {
        panic!()
    };
    assert!(*behind_nat);
    assert_eq!(*observed, w.public(a));
}

#[test]
fn registration_retransmits_after_loss() {
    let mut w = world();
    w.net.lose_first(2, |f| f.dst == DC);
    let a = w.add_node("gn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.net.count_sent(MessageType::RegReq), 3);
    assert_eq!(w.registered(a).len(), 1);
}

#[test]
fn registration_fails_after_five_tries_then_retries() {
    let mut w = world();
    w.dc.silent = true;
    let a = w.add_node("gn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.run_for(Duration::from_secs(9));
    assert_eq!(w.net.count_sent(MessageType::RegReq), 5);
    assert!(matches!(
        w.events(a),
        [Event::RegistrationFailed {
            reason: RegistrationError::TimedOut
        }]
    ));
    let now = w.now();
    assert_eq!(
        w.nodes[a].ep.connect(now, "cn.ntm.test"),
        Err(Error::NotRegistered)
    );
    // The DC comes back: the retry succeeds.
    w.dc.silent = false;
    w.run_for(Duration::from_secs(12));
    assert_eq!(w.registered(a).len(), 1);
}

#[test]
fn registration_refused() {
    let mut w = world();
    let a = w.add_node("gn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    // Wrong key: the test DC drops it silently, so this is a time-out.
    w.nodes[a].ep = Endpoint::new(
        Config {
            fqdn: "gn.ntm.test".into(),
            key: Key::from_bytes([0; 32]),
            dc: DC,
            local_addr: addr(198, 18, 0, 20, 7700),
            caps: Caps::ADAPTER,
        },
        w.now(),
        1,
        [1; 32],
    )
    .unwrap();
    w.run_for(Duration::from_secs(9));
    assert!(w.events(a).iter().any(|e| matches!(
        e,
        Event::RegistrationFailed {
            reason: RegistrationError::TimedOut
        }
    )));
}

#[test]
fn direct_tunnel_both_roles() {
    let mut w = two_public();
    let req = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let (ua, ub) = (w.tunnel_ups(0), w.tunnel_ups(1));
    assert_eq!(ua.len(), 1);
    assert_eq!(ub.len(), 1);
    assert_eq!(ua[0].tunnel_id, ub[0].tunnel_id, "same tunnel id");
    assert_eq!((ua[0].path, ua[0].role), (Path::Direct, Role::Initiator));
    assert_eq!((ub[0].path, ub[0].role), (Path::Direct, Role::Responder));
    assert_eq!(
        ua[0].tx_key, ub[0].rx_key,
        "initiator sends with what the responder receives"
    );
    assert_eq!(ua[0].rx_key, ub[0].tx_key, "and receives what it sends");
    assert_ne!(ua[0].tx_key, ua[0].rx_key, "a key per direction");
    // The TUN_REQ went from MN to CN's observed address.
    assert!(w
        .net
        .was_sent(w.public(0), w.public(1), MessageType::TunReq));
    // Only the responder's unsolicited copy is acknowledged.
    assert_eq!(w.net.count_sent(MessageType::RouteAck), 1);
    assert!(w.net.was_sent(w.public(1), DC, MessageType::RouteAck));
    w.assert_data_both_ways(0, 1);
    // Asking again resolves at once, without a DIR_REQ.
    let dir_reqs = w.net.count_sent(MessageType::DirReq);
    let again = w.connect(0, "cn.ntm.test");
    assert_eq!(w.resolved(0, again), Some(Ok(w.vip(1))));
    assert_eq!(w.net.count_sent(MessageType::DirReq), dir_reqs);
}

#[test]
fn not_found() {
    let mut w = two_public();
    let req = w.connect(0, "nobody.ntm.test");
    assert_eq!(
        w.resolved(0, req),
        Some(Err(DirError::Status(Status::NotFound)))
    );
    assert!(w.tunnel_ups(0).is_empty());
    let now = w.now();
    assert_eq!(w.nodes[0].ep.connect(now, "Bad..name"), Err(Error::BadFqdn));
}

#[test]
fn reverse_path_when_cn_behind_nat() {
    let mut w = world();
    let n = w.add_nat(Ipv4Addr::new(198, 18, 0, 11));
    let mn = w.add_node("mn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    let cn = w.add_node("cn2.ntm.test", addr(192, 168, 20, 2, 7700), Some(n));
    w.run_for(Duration::from_secs(1));
    let req = w.connect(mn, "cn2.ntm.test");
    assert_eq!(w.resolved(mn, req), Some(Ok(w.vip(cn))));
    assert_eq!(w.tunnel_ups(mn)[0].path, Path::Reverse);
    assert_eq!(w.tunnel_ups(mn)[0].role, Role::Responder);
    assert_eq!(w.tunnel_ups(cn)[0].role, Role::Initiator);
    // CN sent the TUN_REQ, to MN's observed address, through its NAT.
    assert!(w
        .net
        .was_sent(w.public(cn), w.public(mn), MessageType::TunReq));
    assert_eq!(w.net.count_sent_from(w.public(mn), MessageType::TunReq), 0);
    w.assert_data_both_ways(mn, cn);
}

#[test]
fn relay_path_when_both_behind_nat() {
    let mut w = world();
    let n1 = w.add_nat(Ipv4Addr::new(198, 18, 0, 10));
    let n2 = w.add_nat(Ipv4Addr::new(198, 18, 0, 11));
    let mn = w.add_node("gn.ntm.test", addr(192, 168, 10, 2, 7700), Some(n1));
    let cn = w.add_node("cn2.ntm.test", addr(192, 168, 20, 2, 7700), Some(n2));
    w.run_for(Duration::from_secs(1));
    let req = w.connect(mn, "cn2.ntm.test");
    assert_eq!(w.resolved(mn, req), Some(Ok(w.vip(cn))));
    assert_eq!(w.tunnel_ups(mn).len(), 1);
    assert_eq!(w.tunnel_ups(cn).len(), 1);
    assert_eq!(w.tunnel_ups(mn)[0].path, Path::Relay);
    // Both bound at the RS; every tunnel datagram went to the RS.
    assert!(w.net.was_sent(w.public(mn), RS, MessageType::RelayBind));
    assert!(w.net.was_sent(w.public(cn), RS, MessageType::RelayBind));
    let (pm, pc) = (w.public(mn), w.public(cn));
    assert!(!w.net.wire.iter().any(|d| d.src == pm && d.dst == pc));
    let before = w.rs.forwarded;
    w.assert_data_both_ways(mn, cn);
    assert_eq!(w.rs.forwarded, before + 2);
}

#[test]
fn responder_without_route_dir_drops_tun_req_and_initiator_retransmits() {
    let mut w = two_public();
    let cn_public = w.public(1);
    // Lose the DC's first two copies of the ROUTE_DIR for CN.
    w.net.lose_first(2, move |f| {
        f.dst == cn_public && f.is(MessageType::RouteDir)
    });
    w.connect(0, "cn.ntm.test");
    assert!(
        w.net.count_sent(MessageType::TunReq) >= 2,
        "TUN_REQ retransmitted"
    );
    assert!(
        w.nodes[1].ep.drops().get(Error::UnknownTunnel) >= 1,
        "early TUN_REQ dropped"
    );
    assert_eq!(w.tunnel_ups(0).len(), 1);
    assert_eq!(w.tunnel_ups(1).len(), 1);
    w.assert_data_both_ways(0, 1);
}

#[test]
fn duplicated_datagrams_are_idempotent() {
    let mut w = two_public_with(|w| w.net.duplicate = true);
    w.connect(0, "cn.ntm.test");
    assert_eq!(w.tunnel_ups(0).len(), 1, "no second tunnel");
    assert_eq!(w.tunnel_ups(1).len(), 1, "no second tunnel");
    assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
    w.net.duplicate = false;
    w.assert_data_both_ways(0, 1);
}

#[test]
fn dir_req_times_out_after_five_tries() {
    let mut w = two_public();
    w.dc.silent = true;
    let now = w.now();
    let req = w.nodes[0].ep.connect(now, "cn.ntm.test").unwrap();
    // A second ask for the same name shares the request.
    assert_eq!(w.nodes[0].ep.connect(now, "cn.ntm.test"), Ok(req));
    w.run_for(Duration::from_secs(9));
    assert_eq!(w.net.count_sent(MessageType::DirReq), 5);
    assert_eq!(w.resolved(0, req), Some(Err(DirError::TimedOut)));
}

#[test]
fn tunnel_setup_fails_when_peer_unreachable() {
    let mut w = two_public();
    let cn_public = w.public(1);
    w.net.drop = Box::new(move |f| f.dst == cn_public && f.src != DC);
    w.connect(0, "cn.ntm.test");
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.net.count_sent(MessageType::TunReq), 5);
    assert_eq!(w.downs(0), vec![DownReason::SetupTimedOut]);
    assert_eq!(w.downs(1), vec![DownReason::SetupTimedOut]);
    assert!(w.tunnel_ups(0).is_empty());
    // The next request sets it up again once the path works.
    w.net.drop = Box::new(|_| false);
    let req = w.connect(0, "cn.ntm.test");
    assert!(w.resolved(0, req).unwrap().is_ok());
    assert_eq!(w.tunnel_ups(0).len(), 1);
}

#[test]
fn idle_tunnel_keeps_alive_then_expires_when_cut() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    w.run_for(Duration::from_secs(65));
    let ka = w.net.count_sent(MessageType::TunKeepalive);
    assert!(
        (5..=7).contains(&ka),
        "about one per 20 s per side, got {ka}"
    );
    assert!(w.downs(0).is_empty());
    // Cut the path between the nodes (the DC still works).
    let (pa, pb) = (w.public(0), w.public(1));
    w.net.drop = Box::new(move |f| (f.src == pa && f.dst == pb) || (f.src == pb && f.dst == pa));
    w.run_for(Duration::from_secs(u64::from(TUNNEL_LIFETIME) + 5));
    assert_eq!(w.downs(0), vec![DownReason::Expired]);
    assert_eq!(w.downs(1), vec![DownReason::Expired]);
    let pkt = ipv4(w.vip(0), w.vip(1), b"x");
    let now = w.now();
    assert_eq!(
        w.nodes[0].ep.send_data(now, &pkt, &mut [0u8; 128]),
        Err(Error::NoTunnel)
    );
}

#[test]
fn data_plane_activity_postpones_keepalive() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    let tid = w.tunnel_ups(0)[0].tunnel_id;
    let before = w
        .net
        .count_sent_from(w.public(0), MessageType::TunKeepalive);
    for _ in 0..6 {
        w.run_for(Duration::from_secs(10));
        let now = w.now();
        w.nodes[0].ep.note_tx(tid, now);
        // A data plane that sends also hears back (else the DATA would be
        // unanswered and the tunnel directed again: the liveness of
        // docs/architecture.md).
        let peer = w.public(1);
        w.nodes[0].ep.note_rx(tid, now, peer);
    }
    let after = w
        .net
        .count_sent_from(w.public(0), MessageType::TunKeepalive);
    assert_eq!(before, after, "no keep-alive while the data plane sends");
}

#[test]
fn roaming_peer_moves_the_endpoint() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    let tid = w.tunnel_ups(0)[0].tunnel_id;
    // CN's address changes.
    let new = addr(198, 18, 0, 99, 7700);
    let id = w.nodes[1].id;
    w.net.set_local(id, new);
    let now = w.now();
    w.nodes[1].ep.handle_local_addr_change(now, new);
    w.run_for(Duration::from_secs(1));
    assert!(w
        .events(0)
        .iter()
        .any(|e| matches!(e, Event::EndpointChanged { tunnel_id, endpoint } if *tunnel_id == tid && *endpoint == new)));
    assert_eq!(w.nodes[0].ep.tunnel(tid).unwrap().params.endpoint, new);
    // CN re-registered (with its node id) and learned the new observed address.
    assert_eq!(w.registered(1).len(), 2);
    assert!(w
        .dc
        .received
        .iter()
        .filter(|(t, _)| *t == MessageType::RegReq)
        .any(|(_, id)| *id == 2));
    w.assert_data_both_ways(0, 1);
    assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
}

#[test]
fn nat_rebinding_seen_in_keepalive_ack_triggers_reregistration() {
    let (mut w, n, a) = one_behind_nat();
    // The NAT forgets the mapping and picks a new port.
    w.net.reset_nat(n);
    w.run_for(Duration::from_secs(21));
    assert_eq!(w.registered(a).len(), 2);
    let Some(Event::Registered { observed, .. }) = w.events(a).last() else {
        panic!()
    };
    assert_eq!(*observed, w.public(a));
}

#[test]
fn dc_restart_keeps_tunnels_and_reregisters() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    // A new DC process: no state (node ids start elsewhere).
    w.dc = TestDc::new(50, Rc::clone(&w.rs.keys));
    w.run_for(Duration::from_secs(80));
    assert_eq!(
        w.registered(0).len(),
        2,
        "re-registered after the DC went silent"
    );
    assert_eq!(w.registered(1).len(), 2);
    assert!(
        w.downs(0).is_empty() && w.downs(1).is_empty(),
        "tunnel survived"
    );
    w.assert_data_both_ways(0, 1);
}

#[test]
fn forged_replayed_and_truncated_data_are_dropped_and_counted() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    let pkt = ipv4(w.vip(0), w.vip(1), b"hello");
    let mut buf = vec![0u8; 256];
    let now = w.now();
    let t = w.nodes[0].ep.send_data(now, &pkt, &mut buf).unwrap();
    let good = buf[..t.len].to_vec();
    let from = w.public(0);
    let now = w.now();
    let recorded_dc = w
        .net
        .wire
        .iter()
        .find(|f| f.src == DC && f.dst == w.public(1))
        .unwrap()
        .data
        .clone();
    let cn = &mut w.nodes[1].ep;
    assert!(matches!(
        cn.handle(now, from, &mut good.clone()),
        Ok(Received::Data { .. })
    ));
    assert_eq!(cn.handle(now, from, &mut good.clone()), Err(Error::Replay));
    let mut forged = good.clone();
    forged[20] ^= 1;
    assert_eq!(cn.handle(now, from, &mut forged), Err(Error::BadTag));
    assert_eq!(
        cn.handle(now, from, &mut good[..20].to_vec()),
        Err(Error::Truncated)
    );
    assert_eq!(cn.drops().get(Error::Replay), 1);
    assert_eq!(cn.drops().get(Error::BadTag), 1);
    assert_eq!(cn.drops().get(Error::Truncated), 1);
    // Signaling from somewhere other than the DC is refused.
    assert_eq!(
        cn.handle(now, addr(198, 18, 0, 66, 7710), &mut recorded_dc.clone()),
        Err(Error::UnexpectedSource)
    );
}

#[test]
fn close_deregisters_and_drops_tunnels() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    let now = w.now();
    w.nodes[0].ep.close(now);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.net.count_sent(MessageType::Dereg), 1);
    assert_eq!(w.downs(0), vec![DownReason::Closed]);
    assert!(!w.dc.nodes.contains_key(&1));
    assert_eq!(w.nodes[0].ep.poll_timeout(), None);
}

// ------------------------------------------------ attacks on version 1

/// An attacker's address on the path.
const MALLORY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 66), 7700);

/// Hand `data` to host `i` as if it came from `from`; returns what the
/// endpoint said.
fn inject(w: &mut World, i: usize, from: SocketAddrV4, data: &[u8]) -> Result<(), Error> {
    let now = w.now();
    let h = &mut w.nodes[i];
    let mut d = data.to_vec();
    match h.ep.handle(now, from, &mut d) {
        Ok(Received::Data { inner, .. }) => {
            h.inner_rx.push(inner.to_vec());
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The datagrams of `kind` recorded on the wire from `src` to `dst`.
fn recorded(w: &World, src: SocketAddrV4, dst: SocketAddrV4, kind: MessageType) -> Vec<Vec<u8>> {
    let recorded = w.net.recorded(src, dst, kind);
    recorded.into_iter().map(|d| d.data).collect()
}

/// The suite of node `i`'s first tunnel.
fn tunnel_suite(w: &World, i: usize) -> Suite {
    let tid = w.tunnel_ups(i)[0].tunnel_id;
    w.nodes[i].ep.tunnel(tid).unwrap().params.suite
}

#[test]
fn a_suite_1_tunnel_still_works() {
    let mut w = two_public_with(|w| w.dc.suite = Suite::HmacSha256_128);
    w.connect(0, "cn.ntm.test");
    assert_eq!(tunnel_suite(&w, 0), Suite::HmacSha256_128);
    w.assert_data_both_ways(0, 1);
    // Suite 1 carries the inner packet in clear; suite 2 (the other tests) does not.
    let data = recorded(&w, w.public(0), w.public(1), MessageType::Data);
    assert!(data[0][3] == 1 && data[0].windows(4).any(|x| x == b"ping"));
}

#[test]
fn suite_2_hides_the_inner_packet() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    assert_eq!(tunnel_suite(&w, 0), Suite::Aes256Gcm);
    w.assert_data_both_ways(0, 1);
    let mut tunnel = recorded(&w, w.public(0), w.public(1), MessageType::Data);
    tunnel.extend(recorded(&w, w.public(1), w.public(0), MessageType::Data));
    assert_eq!(tunnel.len(), 2);
    for d in tunnel {
        assert_eq!(d[3], 2, "suite 2 on the wire");
        assert!(!d.windows(4).any(|x| x == b"ping" || x == b"pong"));
        // Not even the inner addresses show.
        let vip = w.vip(0).octets();
        assert!(!d.windows(4).any(|x| x == vip));
    }
}

/// Version 1: a node's own DATA, sent back to it, verified (one K_tun for
/// both directions), and a high seq pushed the real peer's packets out of
/// the window; its own TUN_KEEPALIVE moved the tunnel's endpoint to the
/// attacker. Now each direction has its own key: neither verifies.
#[test]
fn reflected_data_and_keepalive_are_refused() {
    for suite in [Suite::Aes256Gcm, Suite::HmacSha256_128] {
        let mut w = two_public_with(|w| w.dc.suite = suite);
        w.connect(0, "cn.ntm.test");
        let tid = w.tunnel_ups(0)[0].tunnel_id;
        let (mn, cn) = (w.public(0), w.public(1));
        // MN sends 3000 packets, then one keep-alive goes out on each side.
        for _ in 0..3000 {
            w.send_inner(0, 1, b"bulk").unwrap();
        }
        w.run_for(Duration::from_secs(25));
        let own_data = recorded(&w, mn, cn, MessageType::Data).pop().unwrap();
        let own_keepalive = recorded(&w, mn, cn, MessageType::TunKeepalive)
            .pop()
            .expect("MN sent a TUN_KEEPALIVE");
        assert!(Packet::new_checked(&own_data[..]).unwrap().seq() >= 3000);

        // Reflected to MN from the attacker's address, and from CN's own.
        for from in [MALLORY, cn] {
            assert_eq!(
                inject(&mut w, 0, from, &own_data),
                Err(Error::BadTag),
                "{suite:?}"
            );
            assert_eq!(
                inject(&mut w, 0, from, &own_keepalive),
                Err(Error::BadTag),
                "{suite:?}"
            );
        }
        assert_eq!(
            w.nodes[0].ep.tunnel(tid).unwrap().params.endpoint,
            cn,
            "endpoint kept"
        );
        assert!(!w
            .events(0)
            .iter()
            .any(|e| matches!(e, Event::EndpointChanged { .. })));
        // CN's own low-seq packets still get through: the window did not move.
        w.assert_data_both_ways(0, 1);
        assert_eq!(w.nodes[0].ep.drops().get(Error::BadTag), 4, "{suite:?}");
    }
}

/// Version 1: a node kept no replay window for the DC. A recorded ROUTE_DIR
/// tore the live tunnel down and brought its old key back with an empty
/// window; recorded KEEPALIVE_ACK, ERROR and REG_RESP of an earlier
/// registration were acted on again. Now REG_RESP must echo the outstanding
/// REQ_ID and the DC window starts above each accepted REG_RESP.
#[test]
fn recorded_dc_messages_replayed_after_a_new_registration_are_refused() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    w.run_for(Duration::from_secs(25)); // a KEEPALIVE_ACK
    let mn = w.public(0);
    let route_dir = recorded(&w, DC, mn, MessageType::RouteDir);
    let reg_resp = recorded(&w, DC, mn, MessageType::RegResp);
    let keepalive_ack = recorded(&w, DC, mn, MessageType::KeepaliveAck);
    assert!(!route_dir.is_empty() && !reg_resp.is_empty() && !keepalive_ack.is_empty());
    // An ERROR the DC sealed during that registration (the test DC never
    // sends one by itself): seq below the next REG_RESP's.
    let node_id = w.nodes[0].ep.registration().unwrap().node_id;
    let error = {
        let seq = w.dc.next_seq();
        let r = Repr::new(
            Header {
                id: node_id,
                seq,
                response_required: false,
            },
            Message::Error(ErrorMsg {
                status: Status::NotFound,
                reason: None,
            }),
        );
        let mut b = vec![0u8; r.buffer_len()];
        r.emit_sealed(&mut b, &Authenticator::new(&fqdn_key("mn.ntm.test")))
            .unwrap();
        b
    };

    // A new registration (the address is the same; the node re-registers).
    let now = w.now();
    w.nodes[0].ep.handle_local_addr_change(now, mn);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.registered(0).len(), 2);
    let tid = w.tunnel_ups(0)[0].tunnel_id;
    let events_before = w.events(0).len();
    let registering_before = w.net.count_sent(MessageType::RegReq);

    for d in &route_dir {
        assert_eq!(inject(&mut w, 0, DC, d), Err(Error::Replay), "ROUTE_DIR");
    }
    for d in &reg_resp {
        assert_eq!(inject(&mut w, 0, DC, d), Err(Error::Stale), "REG_RESP");
    }
    for d in &keepalive_ack {
        assert_eq!(
            inject(&mut w, 0, DC, d),
            Err(Error::Replay),
            "KEEPALIVE_ACK"
        );
    }
    assert_eq!(inject(&mut w, 0, DC, &error), Err(Error::Replay), "ERROR");
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.events(0).len(), events_before, "nothing acted on");
    assert_eq!(
        w.net.count_sent(MessageType::RegReq),
        registering_before,
        "no re-registration"
    );
    assert!(w.downs(0).is_empty(), "the live tunnel stays");
    assert_eq!(w.nodes[0].ep.tunnel(tid).map(|t| t.up), Some(true));
    w.assert_data_both_ways(0, 1);

    // A REG_RESP recorded while a registration is outstanding carries the
    // old REQ_ID: refused too.
    let now = w.now();
    w.dc.silent = true;
    w.nodes[0].ep.handle_local_addr_change(now, mn);
    w.run_for(Duration::from_millis(100));
    for d in &reg_resp {
        assert_eq!(
            inject(&mut w, 0, DC, d),
            Err(Error::Stale),
            "REG_RESP, registering"
        );
    }
    assert_eq!(w.registered(0).len(), 2);
}

/// The peer may send DATA as soon as it has sent TUN_RESP (§5): when the
/// TUN_RESP is late, that DATA is still delivered.
#[test]
fn data_before_the_tun_resp_is_delivered() {
    let mut w = two_public();
    let mn = w.public(0);
    w.net
        .lose_first(1, move |f| f.dst == mn && f.is(MessageType::TunResp));
    let now = w.now();
    w.nodes[0].ep.connect(now, "cn.ntm.test").unwrap();
    w.run_for(Duration::from_millis(100));
    // CN (responder) is up and sends; MN has not seen a TUN_RESP yet.
    assert_eq!(w.tunnel_ups(1).len(), 1);
    assert!(w.tunnel_ups(0).is_empty());
    assert!(w
        .events(0)
        .iter()
        .any(|e| matches!(e, Event::TunnelAdded(_))));
    w.send_inner(1, 0, b"early").unwrap();
    w.run_for(Duration::from_millis(50));
    assert!(w.nodes[0].inner_rx.last().unwrap().ends_with(b"early"));
    // The retransmitted TUN_REQ brings the answer, and the tunnel up.
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.tunnel_ups(0).len(), 1);
    w.assert_data_both_ways(0, 1);
}

/// Only authentic DATA and TUN_KEEPALIVE move an endpoint; a TUN_REQ from a
/// new address (a replay, or a retransmission through a rebinding NAT) is
/// answered there but moves nothing.
#[test]
fn a_tun_req_never_moves_the_endpoint() {
    let mut w = two_public();
    w.net.drop = Box::new(|_| false);
    w.connect(0, "cn.ntm.test");
    let tid = w.tunnel_ups(1)[0].tunnel_id;
    let (mn, cn) = (w.public(0), w.public(1));
    let tun_req = recorded(&w, mn, cn, MessageType::TunReq).pop().unwrap();
    // A replay is a replay, wherever it comes from.
    assert_eq!(inject(&mut w, 1, MALLORY, &tun_req), Err(Error::Replay));
    // A fresh, authentic TUN_REQ from a new address (MN's next retransmission
    // seen through a NAT that rebound): answered there, endpoint kept.
    let mn_tx = w.tunnel_ups(0)[0].tx_key.clone();
    let mut fresh = tun_req.clone();
    let cipher = ntm_proto::Cipher::new(Suite::Aes256Gcm, &mn_tx).unwrap();
    let mut plain = fresh.clone();
    // Open with the responder's receive key (= MN's send key), re-seal at seq 100.
    cipher.open(&mut plain).unwrap();
    plain[8..16].copy_from_slice(&100u64.to_be_bytes());
    cipher.seal(&mut plain).unwrap();
    fresh.copy_from_slice(&plain);
    assert_eq!(inject(&mut w, 1, MALLORY, &fresh), Ok(()));
    w.run_for(Duration::from_millis(1));
    assert!(w.net.was_sent(cn, MALLORY, MessageType::TunResp));
    assert_eq!(w.nodes[1].ep.tunnel(tid).unwrap().params.endpoint, mn);
    assert!(!w
        .events(1)
        .iter()
        .any(|e| matches!(e, Event::EndpointChanged { .. })));
    w.assert_data_both_ways(0, 1);
}

// ------------------------------------------------- hosts (ntm_proto::host)

/// The test DC and RS with [`HostNode`]s: hosts as the software node and the
/// adapter drive them (DNS stub, hold queue, names).
struct HostWorld {
    net: sim::Network,
    dc: TestDc,
    rs: TestRs,
    hosts: Vec<HostNode>,
}

impl sim::World for HostWorld {
    fn net(&self) -> &sim::Network {
        &self.net
    }

    fn net_mut(&mut self) -> &mut sim::Network {
        &mut self.net
    }

    fn host(&mut self, id: sim::HostId) -> Option<&mut dyn sim::Party> {
        match id.0 {
            0 => Some(&mut self.dc),
            1 => Some(&mut self.rs),
            n => self.hosts.get_mut(n - 2).map(|h| h as &mut dyn sim::Party),
        }
    }
}

impl HostWorld {
    /// mn (host 0) and cn (host 1), public, registered; packets held at
    /// most `hold_for`.
    fn two(hold_for: Duration) -> HostWorld {
        let rs = TestRs::default();
        let dc = TestDc::new(1, Rc::clone(&rs.keys));
        let mut net = sim::Network::new(Instant::now(), LATENCY);
        net.add_host(DC, None);
        net.add_host(RS, None);
        let mut w = HostWorld {
            net,
            dc,
            rs,
            hosts: Vec::new(),
        };
        w.add("mn.ntm.test", addr(198, 18, 0, 20, 7700), hold_for);
        w.add("cn.ntm.test", addr(198, 18, 0, 21, 7700), hold_for);
        w.run_for(Duration::from_secs(1));
        w
    }

    fn add(&mut self, fqdn: &str, local: SocketAddrV4, hold_for: Duration) {
        let cfg = Config {
            fqdn: fqdn.into(),
            key: fqdn_key(fqdn),
            dc: DC,
            local_addr: local,
            caps: Caps::NODE,
        };
        let n = self.hosts.len() as u64 + 1;
        let ep = Endpoint::new(cfg, self.now(), 1_000_000 * n, [n as u8; 32]).unwrap();
        let hold = HoldQueue::new(4, 16, hold_for);
        let id = self.net.add_host(local, None);
        self.hosts.push(HostNode::new(id, Host::new(ep, hold)));
    }

    fn vip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].host.endpoint().vip().unwrap().addr
    }

    /// Host `from` sends `payload` to `to`.
    fn send_to(&mut self, from: usize, to: Ipv4Addr, payload: &[u8]) -> Result<Way, NoWay> {
        let src = self.hosts[from]
            .host
            .endpoint()
            .vip()
            .map_or(Ipv4Addr::UNSPECIFIED, |v| v.addr);
        let now = self.now();
        self.hosts[from].send_packet(now, &ipv4(src, to, payload))
    }

    /// Host `from` sends `payload` to host `to`'s VIP.
    fn send(&mut self, from: usize, to: usize, payload: &[u8]) -> Result<Way, NoWay> {
        let to = self.vip(to);
        self.send_to(from, to, payload)
    }

    /// Client `client` of host `i` asks for `name`.
    fn ask(&mut self, i: usize, client: u16, name: &str) {
        let now = self.now();
        self.hosts[i].ask(now, client, name).unwrap();
    }

    /// mn asks for cn by DNS (client 100), then the path between them is
    /// cut until their tunnel expires, and mended.
    fn named_then_expired(&mut self) {
        self.ask(0, 100, "cn.ntm.test");
        self.run_for(Duration::from_secs(2));
        assert_eq!(self.hosts[0].replies_to(100), vec![ReplyKind::A]);
        let (pa, pb) = (
            self.net.public(self.hosts[0].id),
            self.net.public(self.hosts[1].id),
        );
        self.net.drop =
            Box::new(move |f| (f.src == pa && f.dst == pb) || (f.src == pb && f.dst == pa));
        self.run_for(Duration::from_secs(u64::from(TUNNEL_LIFETIME) + 5));
        let vip = self.vip(1);
        assert!(self.hosts[0].host.endpoint().tunnel_for_vip(vip).is_none());
        self.net.drop = Box::new(|_| false);
    }
}

#[test]
fn host_resolves_by_dns_then_sets_an_expired_tunnel_up_again_for_held_packets() {
    let mut w = HostWorld::two(Duration::from_secs(3));
    // A VIP nobody named: no way.
    assert_eq!(w.send(0, 1, b"early"), Err(NoWay::NoRoute));
    w.ask(0, 1, "cn.ntm.test");
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.hosts[0].replies_to(1), vec![ReplyKind::A]);
    let up = w.hosts[0].events.iter().find_map(|e| match e {
        Event::TunnelUp(t) => Some(t.clone()),
        _ => None,
    });
    let up = up.expect("the DNS answer brought the tunnel up");
    assert_eq!(w.hosts[0].host.name_of(up.peer_vip), Some("cn.ntm.test"));
    assert!(
        w.hosts[0].host.setup_time(up.tunnel_id).is_some(),
        "mn asked"
    );
    assert_eq!(
        w.hosts[1].host.setup_time(up.tunnel_id),
        None,
        "cn was asked"
    );
    assert_eq!(w.send(0, 1, b"now"), Ok(Way::Send));
    w.run_for(Duration::from_millis(100));
    assert!(w.hosts[1].inner_rx.last().unwrap().ends_with(b"now"));

    w.named_then_expired();
    // The name is remembered: the first packet sets the tunnel up again and
    // waits, the second waits behind it; both go once it is up, in order.
    assert_eq!(w.send(0, 1, b"one"), Ok(Way::Connected));
    assert_eq!(w.send(0, 1, b"two"), Ok(Way::Hold));
    assert_eq!(w.hosts[0].host.held(), 2);
    w.run_for(Duration::from_secs(2));
    assert_eq!((w.hosts[0].released, w.hosts[0].host.held()), (2, 0));
    let got = &w.hosts[1].inner_rx;
    assert!(got[got.len() - 2].ends_with(b"one") && got[got.len() - 1].ends_with(b"two"));
    assert!(w.hosts[0].given_up.is_empty() && w.hosts[0].expired == 0);
}

#[test]
fn host_answers_nxdomain_and_servfail_and_gives_up_held_packets() {
    let mut w = HostWorld::two(Duration::from_secs(30));
    w.ask(0, 1, "nobody.ntm.test");
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.hosts[0].replies_to(1), vec![ReplyKind::NxDomain]);
    // A name no node can have never reaches the DC.
    w.ask(0, 2, "cn_1.ntm.test");
    assert_eq!(w.hosts[0].replies_to(2), vec![ReplyKind::NxDomain]);
    // cn's tunnel expired, and the DC stops answering.
    w.named_then_expired();
    w.net.set_up(sim::HostId(0), false);
    assert_eq!(w.send(0, 1, b"lost"), Ok(Way::Connected));
    w.ask(0, 3, "cn.ntm.test");
    w.run_for(Duration::from_secs(10));
    // The stub gave up first (SERVFAIL); the DIR_REQ's time-out then gave
    // up the held packet.
    assert_eq!(w.hosts[0].replies_to(3), vec![ReplyKind::ServFail]);
    assert_eq!(w.hosts[0].given_up, vec![(w.vip(1), 1)]);
    assert_eq!((w.hosts[0].host.held(), w.hosts[0].expired), (0, 0));
}

#[test]
fn host_refuses_while_unregistered_and_expires_what_it_held() {
    let mut w = HostWorld::two(Duration::from_secs(1));
    // gn never registers: the DC is down.
    w.net.set_up(sim::HostId(0), false);
    w.add(
        "gn.ntm.test",
        addr(198, 18, 0, 22, 7700),
        Duration::from_secs(1),
    );
    w.run_for(Duration::from_secs(1));
    let cn = w.vip(1);
    assert_eq!(w.send_to(2, cn, b"x"), Err(NoWay::NotRegistered));
    w.ask(2, 1, "cn.ntm.test");
    assert_eq!(w.hosts[2].replies_to(1), vec![ReplyKind::ServFail]);
    // mn holds a packet for cn while the DC does not answer: it waits the
    // hold time-out, no longer.
    w.net.set_up(sim::HostId(0), true);
    w.named_then_expired();
    w.net.set_up(sim::HostId(0), false);
    assert_eq!(w.send(0, 1, b"late"), Ok(Way::Connected));
    let now = w.now();
    let wake = w.hosts[0].host.poll_timeout().unwrap();
    assert!(
        wake <= now + Duration::from_secs(1),
        "the hold time-out is a deadline"
    );
    w.run_for(Duration::from_secs(2));
    assert_eq!((w.hosts[0].expired, w.hosts[0].host.held()), (1, 0));
    assert!(w.hosts[0].given_up.is_empty());
}

// ------------------------------------------- liveness (docs/architecture.md)

/// Node `from` sends DATA to node `to` every 100 ms for `d` (virtual time),
/// ignoring a missing tunnel (it is being set up again).
fn stream(w: &mut World, from: usize, to: usize, d: Duration) {
    let end = w.now() + d;
    while w.now() < end {
        let _ = w.send_inner(from, to, b"one way");
        w.run_for(Duration::from_millis(100));
    }
}

#[test]
fn a_one_way_flow_is_answered_by_keepalives_and_never_redirected() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    let dir_reqs = w.net.count_sent(MessageType::DirReq);
    let from_cn = w
        .net
        .count_sent_from(w.public(1), MessageType::TunKeepalive);
    stream(&mut w, 0, 1, Duration::from_secs(40));
    let acks = w
        .net
        .count_sent_from(w.public(1), MessageType::TunKeepalive)
        - from_cn;
    // One keep-alive per DATA_ACK_AFTER of one-way DATA (not one per 20 s).
    assert!((15..=21).contains(&acks), "{acks} keep-alives from cn");
    assert_eq!(w.net.count_sent(MessageType::DirReq), dir_reqs);
    assert_eq!(w.nodes[0].ep.redirects(), 0);
    assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
    // Keep-alives answer DATA only: an idle tunnel is back to one per 20 s
    // per side, no keep-alive answering a keep-alive.
    let ka = w.net.count_sent(MessageType::TunKeepalive);
    w.run_for(Duration::from_secs(60));
    let idle = w.net.count_sent(MessageType::TunKeepalive) - ka;
    assert!((5..=7).contains(&idle), "{idle} keep-alives in 60 s idle");
}

#[test]
fn a_peer_that_lost_the_tunnel_is_found_again_through_the_dc() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    let first = w.tunnel_ups(0)[0].tunnel_id;
    // cn restarts: a new endpoint, no tunnels; it registers again.
    let cfg = Config {
        fqdn: "cn.ntm.test".into(),
        key: fqdn_key("cn.ntm.test"),
        dc: DC,
        local_addr: addr(198, 18, 0, 21, 7700),
        caps: Caps::NODE,
    };
    let now = w.now();
    let ep = Endpoint::new(cfg, now, 9_000_000, [9; 32]).unwrap();
    w.nodes[1] = sim::Node::new(w.nodes[1].id, ep);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.registered(1).len(), 1);
    let dir_reqs = w.net.count_sent(MessageType::DirReq);
    // The old tunnel's DATA is dropped by cn and nothing comes back: within
    // REDIRECT_AFTER mn asks the DC again and the new tunnel replaces it.
    stream(
        &mut w,
        0,
        1,
        ntm_proto::node::REDIRECT_AFTER + Duration::from_secs(1),
    );
    assert_eq!(w.net.count_sent(MessageType::DirReq), dir_reqs + 1);
    assert_eq!(w.nodes[0].ep.redirects(), 1);
    assert_eq!(w.downs(0), vec![DownReason::Replaced]);
    let ups = w.tunnel_ups(0);
    assert_eq!(ups.len(), 2);
    assert_ne!(ups[1].tunnel_id, first);
    w.assert_data_both_ways(0, 1);
    // Working again: no second re-direction.
    stream(&mut w, 0, 1, Duration::from_secs(20));
    assert_eq!(w.nodes[0].ep.redirects(), 1);
}

#[test]
fn a_relayed_tunnel_whose_relay_lost_its_state_is_directed_again() {
    let mut w = world();
    let n1 = w.add_nat(Ipv4Addr::new(198, 18, 0, 10));
    let n2 = w.add_nat(Ipv4Addr::new(198, 18, 0, 11));
    let mn = w.add_node("gn.ntm.test", addr(192, 168, 10, 2, 7700), Some(n1));
    let cn = w.add_node("cn2.ntm.test", addr(192, 168, 20, 2, 7700), Some(n2));
    w.run_for(Duration::from_secs(1));
    w.connect(mn, "cn2.ntm.test");
    w.assert_data_both_ways(mn, cn);
    // The RS restarts: every binding is gone; relayed DATA goes nowhere.
    w.rs.binds.clear();
    // Pings both ways: each end sends, neither hears; both may ask again.
    let end = w.now() + ntm_proto::node::REDIRECT_AFTER + Duration::from_secs(3);
    while w.now() < end {
        let _ = w.send_inner(mn, cn, b"echo request");
        let _ = w.send_inner(cn, mn, b"echo reply");
        w.run_for(Duration::from_millis(100));
    }
    let redirects = w.nodes[mn].ep.redirects() + w.nodes[cn].ep.redirects();
    assert!((1..=2).contains(&redirects), "{redirects} re-directions");
    w.run_for(Duration::from_secs(2));
    w.assert_data_both_ways(mn, cn);
    let last = |i: usize| w.tunnel_ups(i).last().unwrap().tunnel_id;
    assert_eq!(last(mn), last(cn), "both ends on the same new tunnel");
    assert_eq!(w.tunnel_ups(mn).last().unwrap().path, Path::Relay);
}

#[test]
fn a_reverse_tunnel_through_a_nat_mapping_per_destination_works_at_once() {
    let mut w = world();
    let cn = w.add_node("cn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    let n = w
        .net
        .add_nat(sim::NatKind::Symmetric, Ipv4Addr::new(198, 18, 0, 10));
    let gn = w.add_node("gn.ntm.test", addr(192, 168, 10, 2, 7700), Some(n));
    w.run_for(Duration::from_secs(1));
    w.connect(cn, "gn.ntm.test");
    let up = w.tunnel_ups(cn);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].path, Path::Reverse);
    // The TUN_REQ left the NAT on another mapping than the DC saw; the
    // initiator's first keep-alive moved cn there, so cn's DATA arrives.
    let id = up[0].tunnel_id;
    let to = w.nodes[cn].ep.tunnel(id).unwrap().params.endpoint;
    assert_ne!(to, up[0].endpoint, "cn follows the TUN_REQ's mapping");
    w.assert_data_both_ways(cn, gn);
}

#[test]
fn an_exchange_that_ends_with_the_answer_is_not_taken_for_a_lost_peer() {
    let mut w = two_public();
    w.connect(0, "cn.ntm.test");
    for _ in 0..10 {
        w.send_inner(0, 1, b"request").unwrap();
        w.run_for(Duration::from_millis(50));
        w.send_inner(1, 0, b"answer").unwrap();
        w.run_for(Duration::from_millis(150));
    }
    // The answer was the last DATA: mn acknowledges it with a keep-alive,
    // so cn does not ask the DC again.
    w.run_for(Duration::from_secs(30));
    assert_eq!(w.nodes[0].ep.redirects() + w.nodes[1].ep.redirects(), 0);
    assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
}
