//! `node::Endpoint` in a virtual-time world (quinn-proto's `Pair` idea):
//! nodes, NATs with address-and-port-restricted filtering, a minimal DC and
//! a minimal RS written here, latency, loss and duplication knobs. No
//! sockets, no clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ntm_proto::node::{
    Config, DirError, DownReason, Endpoint, Event, Received, RegistrationError, ReqId,
};
use ntm_proto::retransmit::{Retransmit, RetransmitAction};
use ntm_proto::wire::{
    Caps, Fqdn, Header, KeepaliveAck, Lease, Message, Packet, RegResp, Repr, Route, RouteDir, Vip,
};
use ntm_proto::{Authenticator, Error, Key, MessageType, Path, Role, Status, Suite, WrapLabel};
use rand::rngs::StdRng;
use rand::SeedableRng;

const DC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const RS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 3), 7720);
const LATENCY: Duration = Duration::from_millis(10);
const TUNNEL_LIFETIME: u32 = 180;

fn node_key(fqdn: &str) -> Key {
    let mut k = [0u8; 32];
    for (i, b) in fqdn.bytes().enumerate() {
        k[i % 32] ^= b;
    }
    k[31] ^= 0x5a;
    Key::from_bytes(k)
}

// ---------------------------------------------------------------- test DC

struct DcNode {
    fqdn: String,
    auth: Authenticator,
    vip: Ipv4Addr,
    observed: SocketAddrV4,
    local: SocketAddrV4,
}

struct TestDc {
    nodes: HashMap<u32, DcNode>,
    leases: HashMap<String, (u32, Ipv4Addr)>,
    next_node: u32,
    next_tunnel: u32,
    seq: u64,
    rng: StdRng,
    answered: HashMap<(u32, u32), Vec<u8>>,
    unacked: HashMap<(u32, u32), (SocketAddrV4, Vec<u8>, Retransmit)>,
    relay_keys: Vec<(u32, Key)>,
    out: Vec<(SocketAddrV4, Vec<u8>)>,
    received: Vec<(MessageType, u32)>,
    silent: bool,
}

impl TestDc {
    fn new(first_node: u32) -> TestDc {
        TestDc {
            nodes: HashMap::new(),
            leases: HashMap::new(),
            next_node: first_node,
            next_tunnel: 0x100,
            seq: 1_700_000_000_000_000_000,
            rng: StdRng::seed_from_u64(7),
            answered: HashMap::new(),
            unacked: HashMap::new(),
            relay_keys: Vec::new(),
            out: Vec::new(),
            received: Vec::new(),
            silent: false,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn send(&mut self, dst: SocketAddrV4, repr: Repr<'_>, auth: &Authenticator) -> Vec<u8> {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit_sealed(&mut buf, auth).unwrap();
        self.out.push((dst, buf.clone()));
        buf
    }

    fn handle(&mut self, now: Instant, from: SocketAddrV4, d: &[u8]) {
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
            let auth = Authenticator::new(&node_key(r.fqdn.as_str()));
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
            let seq = self.next_seq();
            let resp = Repr::new(
                Header {
                    id,
                    seq,
                    response_required: false,
                },
                Message::RegResp(RegResp { result: Ok(lease) }),
            );
            self.send(from, resp, &auth);
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
                let seq = self.next_seq();
                let ack = Repr::new(
                    Header {
                        id,
                        seq,
                        response_required: false,
                    },
                    Message::KeepaliveAck(KeepaliveAck { observed: from }),
                );
                self.send(from, ack, &auth);
            }
            Message::DirReq(q) => {
                if let Some(bytes) = self.answered.get(&(id, q.req_id)) {
                    self.out.push((from, bytes.clone()));
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
        let (mn_obs, mn_auth) = (mn.observed, mn.auth.clone());
        let Some(cn_id) = cn_id else {
            let seq = self.next_seq();
            let r = Repr::new(
                Header {
                    id: mn_id,
                    seq,
                    response_required: false,
                },
                Message::RouteDir(RouteDir {
                    req_id,
                    result: Err(Status::NotFound),
                }),
            );
            let bytes = self.send(mn_obs, r, &mn_auth);
            self.answered.insert((mn_id, req_id), bytes);
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
            self.relay_keys.push((tid, k.clone()));
        }
        let parties = [
            (mn_id, req_id, mn_role, mn_ep, cn_id, mn.observed),
            (cn_id, 0, cn_role, cn_ep, mn_id, cn.observed),
        ];
        for (to, rid, role, endpoint, peer, dst) in parties {
            let auth = self.nodes[&to].auth.clone();
            let peer_fqdn = self.nodes[&peer].fqdn.clone();
            let peer_vip = self.nodes[&peer].vip;
            let seq = self.next_seq();
            let route = Route {
                tunnel_id: tid,
                peer_fqdn: Fqdn::new(&peer_fqdn).unwrap(),
                peer_vip: Vip {
                    addr: peer_vip,
                    prefix_len: 10,
                },
                endpoint,
                path,
                role,
                suite: Suite::HmacSha256_128,
                wrapped_key: auth.wrap_key(WrapLabel::TunnelKey, tid, seq, &k_tun),
                wrapped_relay_key: k_relay
                    .as_ref()
                    .map(|k| auth.wrap_key(WrapLabel::RelayKey, tid, seq, k)),
                lifetime_secs: TUNNEL_LIFETIME,
            };
            let r = Repr::new(
                Header {
                    id: to,
                    seq,
                    response_required: false,
                },
                Message::RouteDir(RouteDir {
                    req_id: rid,
                    result: Ok(route),
                }),
            );
            let bytes = self.send(dst, r, &auth);
            if rid == 0 {
                self.unacked
                    .insert((tid, to), (dst, bytes, Retransmit::start(now)));
            } else {
                self.answered.insert((to, rid), bytes);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.silent {
            return None;
        }
        self.unacked.values().map(|(_, _, r)| r.deadline()).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let mut resend = Vec::new();
        self.unacked
            .retain(|_, (dst, bytes, r)| match r.on_timeout(now) {
                Some(RetransmitAction::Send) => {
                    resend.push((*dst, bytes.clone()));
                    true
                }
                Some(RetransmitAction::Failed) => false,
                None => true,
            });
        self.out.extend(resend);
    }
}

// ---------------------------------------------------------------- test RS

#[derive(Default)]
struct TestRs {
    binds: HashMap<u32, (Authenticator, [Option<SocketAddrV4>; 2])>,
    forwarded: usize,
}

impl TestRs {
    fn handle(&mut self, from: SocketAddrV4, d: &[u8]) -> Option<(SocketAddrV4, Vec<u8>)> {
        let p = Packet::new_checked(d).ok()?;
        let (auth, slots) = self.binds.get_mut(&p.id())?;
        if p.msg_type() == MessageType::RelayBind {
            auth.verify(d).ok()?;
            let repr = Repr::parse(&p).ok()?;
            let Message::RelayBind(b) = repr.message else {
                return None;
            };
            slots[usize::from(b.role == Role::Responder)] = Some(from);
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

// ---------------------------------------------------------------- world

struct Nat {
    public_ip: Ipv4Addr,
    ports: HashMap<SocketAddrV4, u16>,
    next_port: u16,
    allowed: HashSet<(SocketAddrV4, SocketAddrV4)>,
}

impl Nat {
    fn outbound(&mut self, local: SocketAddrV4, dst: SocketAddrV4) -> SocketAddrV4 {
        let next = &mut self.next_port;
        let port = *self.ports.entry(local).or_insert_with(|| {
            *next += 1;
            *next
        });
        self.allowed.insert((local, dst));
        SocketAddrV4::new(self.public_ip, port)
    }

    fn inbound(&self, public: SocketAddrV4, src: SocketAddrV4) -> Option<SocketAddrV4> {
        let (&local, _) = self.ports.iter().find(|(_, &p)| p == public.port())?;
        self.allowed.contains(&(local, src)).then_some(local)
    }
}

struct Host {
    ep: Endpoint,
    local: SocketAddrV4,
    nat: Option<usize>,
    events: Vec<Event>,
    inner_rx: Vec<Vec<u8>>,
}

#[derive(Clone)]
struct Flight {
    at: Instant,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    data: Vec<u8>,
}

type Filter = Box<dyn FnMut(&Flight) -> bool>;

struct World {
    now: Instant,
    hosts: Vec<Host>,
    nats: Vec<Nat>,
    dc: TestDc,
    rs: TestRs,
    flights: VecDeque<Flight>,
    /// Returns true to drop a datagram.
    drop: Filter,
    duplicate: bool,
    sent: Vec<(SocketAddrV4, SocketAddrV4, MessageType)>,
}

impl World {
    fn new() -> World {
        World {
            now: Instant::now(),
            hosts: Vec::new(),
            nats: Vec::new(),
            dc: TestDc::new(1),
            rs: TestRs::default(),
            flights: VecDeque::new(),
            drop: Box::new(|_| false),
            duplicate: false,
            sent: Vec::new(),
        }
    }

    fn add_nat(&mut self, public_ip: Ipv4Addr) -> usize {
        self.nats.push(Nat {
            public_ip,
            ports: HashMap::new(),
            next_port: 40000,
            allowed: HashSet::new(),
        });
        self.nats.len() - 1
    }

    fn add_host(&mut self, fqdn: &str, local: SocketAddrV4, nat: Option<usize>) -> usize {
        let cfg = Config {
            fqdn: fqdn.into(),
            key: node_key(fqdn),
            dc: DC,
            local_addr: local,
            caps: Caps::NODE,
        };
        let seed = [self.hosts.len() as u8 + 1; 32];
        let ep = Endpoint::new(
            cfg,
            self.now,
            1_000_000 * (self.hosts.len() as u64 + 1),
            seed,
        )
        .unwrap();
        self.hosts.push(Host {
            ep,
            local,
            nat,
            events: Vec::new(),
            inner_rx: Vec::new(),
        });
        self.hosts.len() - 1
    }

    fn public(&self, i: usize) -> SocketAddrV4 {
        let h = &self.hosts[i];
        match h.nat {
            None => h.local,
            Some(n) => SocketAddrV4::new(self.nats[n].public_ip, self.nats[n].ports[&h.local]),
        }
    }

    fn emit(
        &mut self,
        src_local: SocketAddrV4,
        nat: Option<usize>,
        dst: SocketAddrV4,
        data: Vec<u8>,
    ) {
        let src = match nat {
            Some(n) => self.nats[n].outbound(src_local, dst),
            None => src_local,
        };
        let kind = Packet::new_checked(&data[..])
            .map(|p| p.msg_type())
            .unwrap_or(MessageType::Unknown(0));
        self.sent.push((src, dst, kind));
        let f = Flight {
            at: self.now + LATENCY,
            src,
            dst,
            data,
        };
        if (self.drop)(&f) {
            return;
        }
        if self.duplicate {
            self.flights.push_back(f.clone());
        }
        self.flights.push_back(f);
    }

    fn flush(&mut self) {
        let mut buf = vec![0u8; 2048];
        for i in 0..self.hosts.len() {
            while let Some(t) = self.hosts[i].ep.poll_transmit(self.now, &mut buf) {
                let (local, nat) = (self.hosts[i].local, self.hosts[i].nat);
                self.emit(local, nat, t.dst, buf[..t.len].to_vec());
            }
            while let Some(e) = self.hosts[i].ep.poll_event() {
                self.hosts[i].events.push(e);
            }
        }
        for (dst, d) in std::mem::take(&mut self.dc.out) {
            self.emit(DC, None, dst, d);
        }
        for (tid, k) in self.dc.relay_keys.drain(..) {
            self.rs
                .binds
                .insert(tid, (Authenticator::new(&k), [None, None]));
        }
    }

    fn deliver(&mut self, f: Flight) {
        if f.dst == DC {
            self.dc.handle(self.now, f.src, &f.data);
            return;
        }
        if f.dst == RS {
            if let Some((to, d)) = self.rs.handle(f.src, &f.data) {
                self.emit(RS, None, to, d);
            }
            return;
        }
        let target = self.hosts.iter().position(|h| match h.nat {
            None => h.local == f.dst,
            Some(n) => {
                self.nats[n].public_ip == *f.dst.ip()
                    && self.nats[n].inbound(f.dst, f.src) == Some(h.local)
            }
        });
        let Some(i) = target else { return };
        let now = self.now;
        let h = &mut self.hosts[i];
        if let Ok(Received::Data { inner, .. }) = h.ep.handle(now, f.src, &f.data) {
            h.inner_rx.push(inner.to_vec());
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timers = self
            .hosts
            .iter()
            .filter_map(|h| h.ep.poll_timeout())
            .chain(self.dc.poll_timeout());
        timers.chain(self.flights.iter().map(|f| f.at)).min()
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.flush();
            match self.next_wakeup() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    let (due, later): (Vec<_>, Vec<_>) =
                        self.flights.drain(..).partition(|f| f.at <= now);
                    self.flights = later.into();
                    for f in due {
                        self.deliver(f);
                    }
                    for h in &mut self.hosts {
                        if h.ep.poll_timeout().is_some_and(|t| t <= now) {
                            h.ep.handle_timeout(now);
                        }
                    }
                    if self.dc.poll_timeout().is_some_and(|t| t <= now) {
                        self.dc.handle_timeout(now);
                    }
                }
                _ => {
                    self.now = end;
                    self.flush();
                    return;
                }
            }
        }
    }

    fn count_sent(&self, kind: MessageType) -> usize {
        self.sent.iter().filter(|(_, _, k)| *k == kind).count()
    }

    fn vip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].ep.vip().unwrap().addr
    }

    fn send_inner(&mut self, from: usize, to: usize, payload: &[u8]) -> Result<(), Error> {
        let pkt = ipv4(self.vip(from), self.vip(to), payload);
        let mut buf = vec![0u8; pkt.len() + 32];
        let t = self.hosts[from].ep.send_data(self.now, &pkt, &mut buf)?;
        let (local, nat) = (self.hosts[from].local, self.hosts[from].nat);
        self.emit(local, nat, t.dst, buf[..t.len].to_vec());
        Ok(())
    }

    fn events(&self, i: usize) -> &[Event] {
        &self.hosts[i].events
    }

    fn tunnel_ups(&self, i: usize) -> Vec<(u32, Path, Role, Key)> {
        self.events(i)
            .iter()
            .filter_map(|e| match e {
                Event::TunnelUp {
                    tunnel_id,
                    path,
                    role,
                    key,
                    ..
                } => Some((*tunnel_id, *path, *role, key.clone())),
                _ => None,
            })
            .collect()
    }

    fn downs(&self, i: usize) -> Vec<DownReason> {
        self.events(i)
            .iter()
            .filter_map(|e| match e {
                Event::TunnelDown { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn resolved(&self, i: usize, req: ReqId) -> Option<Result<Ipv4Addr, DirError>> {
        self.events(i).iter().find_map(|e| match e {
            Event::DirectionResolved { req: r, result, .. } if *r == req => Some(*result),
            _ => None,
        })
    }
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

fn registered(w: &World, i: usize) -> usize {
    w.events(i)
        .iter()
        .filter(|e| matches!(e, Event::Registered { .. }))
        .count()
}

/// Two registered public nodes, `a` (mn) and `b` (cn).
fn two_public() -> World {
    let mut w = World::new();
    w.add_host("mn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.add_host("cn.ntm.test", addr(198, 18, 0, 21, 7700), None);
    w.run_for(Duration::from_secs(1));
    w
}

fn connect(w: &mut World, from: usize, fqdn: &str) -> ReqId {
    let req = w.hosts[from].ep.connect(w.now, fqdn).unwrap();
    w.run_for(Duration::from_secs(2));
    req
}

fn assert_data_both_ways(w: &mut World, a: usize, b: usize) {
    let (na, nb) = (w.hosts[a].inner_rx.len(), w.hosts[b].inner_rx.len());
    w.send_inner(a, b, b"ping").unwrap();
    w.send_inner(b, a, b"pong").unwrap();
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.hosts[b].inner_rx.len(), nb + 1, "a -> b");
    assert!(w.hosts[b].inner_rx.last().unwrap().ends_with(b"ping"));
    assert_eq!(w.hosts[a].inner_rx.len(), na + 1, "b -> a");
    assert!(w.hosts[a].inner_rx.last().unwrap().ends_with(b"pong"));
}

// ---------------------------------------------------------------- tests

#[test]
fn registers_and_keeps_alive() {
    let mut w = World::new();
    let a = w.add_host("gn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.run_for(Duration::from_secs(1));
    match &w.events(a)[0] {
        Event::Registered {
            vip,
            prefix_len,
            node_id,
            observed,
            behind_nat,
        } => {
            assert_eq!((*prefix_len, *node_id), (10, 1));
            assert_eq!(*vip, w.hosts[a].ep.vip().unwrap().addr);
            assert_eq!(*observed, addr(198, 18, 0, 20, 7700));
            assert!(!behind_nat);
        }
        e => panic!("{e:?}"),
    }
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
        registered(&w, a),
        1,
        "no re-registration while the DC answers"
    );
    assert_eq!(w.hosts[a].ep.drops().total(), 0);
}

#[test]
fn behind_nat_is_detected() {
    let mut w = World::new();
    let n = w.add_nat(Ipv4Addr::new(198, 18, 0, 11));
    let a = w.add_host("cn2.ntm.test", addr(192, 168, 20, 2, 7700), Some(n));
    w.run_for(Duration::from_secs(1));
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
    let mut w = World::new();
    let mut dropped = 0;
    w.drop = Box::new(move |f| {
        if f.dst == DC && dropped < 2 {
            dropped += 1;
            return true;
        }
        false
    });
    let a = w.add_host("gn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.count_sent(MessageType::RegReq), 3);
    assert_eq!(registered(&w, a), 1);
}

#[test]
fn registration_fails_after_five_tries_then_retries() {
    let mut w = World::new();
    w.dc.silent = true;
    let a = w.add_host("gn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.run_for(Duration::from_secs(9));
    assert_eq!(w.count_sent(MessageType::RegReq), 5);
    assert!(matches!(
        w.events(a),
        [Event::RegistrationFailed {
            reason: RegistrationError::TimedOut
        }]
    ));
    assert_eq!(
        w.hosts[a].ep.connect(w.now, "cn.ntm.test"),
        Err(Error::NotRegistered)
    );
    // The DC comes back: the retry succeeds.
    w.dc.silent = false;
    w.run_for(Duration::from_secs(12));
    assert_eq!(registered(&w, a), 1);
}

#[test]
fn registration_refused() {
    let mut w = World::new();
    let a = w.add_host("gn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    // Wrong key: the test DC drops it silently, so this is a time-out.
    w.hosts[a].ep = Endpoint::new(
        Config {
            fqdn: "gn.ntm.test".into(),
            key: Key::from_bytes([0; 32]),
            dc: DC,
            local_addr: addr(198, 18, 0, 20, 7700),
            caps: Caps::ADAPTER,
        },
        w.now,
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
    let req = connect(&mut w, 0, "cn.ntm.test");
    assert_eq!(w.resolved(0, req), Some(Ok(w.vip(1))));
    let (ua, ub) = (w.tunnel_ups(0), w.tunnel_ups(1));
    assert_eq!(ua.len(), 1);
    assert_eq!(ub.len(), 1);
    assert_eq!(ua[0].0, ub[0].0, "same tunnel id");
    assert_eq!((ua[0].1, ua[0].2), (Path::Direct, Role::Initiator));
    assert_eq!((ub[0].1, ub[0].2), (Path::Direct, Role::Responder));
    assert_eq!(ua[0].3, ub[0].3, "both ends unwrapped the same K_tun");
    // The TUN_REQ went from MN to CN's observed address.
    assert!(w
        .sent
        .contains(&(w.public(0), w.public(1), MessageType::TunReq)));
    // Only the responder's unsolicited copy is acknowledged.
    assert_eq!(w.count_sent(MessageType::RouteAck), 1);
    assert!(w.sent.contains(&(w.public(1), DC, MessageType::RouteAck)));
    assert_data_both_ways(&mut w, 0, 1);
    // Asking again resolves at once, without a DIR_REQ.
    let dir_reqs = w.count_sent(MessageType::DirReq);
    let again = connect(&mut w, 0, "cn.ntm.test");
    assert_eq!(w.resolved(0, again), Some(Ok(w.vip(1))));
    assert_eq!(w.count_sent(MessageType::DirReq), dir_reqs);
}

#[test]
fn not_found() {
    let mut w = two_public();
    let req = connect(&mut w, 0, "nobody.ntm.test");
    assert_eq!(
        w.resolved(0, req),
        Some(Err(DirError::Status(Status::NotFound)))
    );
    assert!(w.tunnel_ups(0).is_empty());
    assert_eq!(
        w.hosts[0].ep.connect(w.now, "Bad..name"),
        Err(Error::BadFqdn)
    );
}

#[test]
fn reverse_path_when_cn_behind_nat() {
    let mut w = World::new();
    let n = w.add_nat(Ipv4Addr::new(198, 18, 0, 11));
    let mn = w.add_host("mn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    let cn = w.add_host("cn2.ntm.test", addr(192, 168, 20, 2, 7700), Some(n));
    w.run_for(Duration::from_secs(1));
    let req = connect(&mut w, mn, "cn2.ntm.test");
    assert_eq!(w.resolved(mn, req), Some(Ok(w.vip(cn))));
    assert_eq!(w.tunnel_ups(mn)[0].1, Path::Reverse);
    assert_eq!(w.tunnel_ups(mn)[0].2, Role::Responder);
    assert_eq!(w.tunnel_ups(cn)[0].2, Role::Initiator);
    // CN sent the TUN_REQ, to MN's observed address, through its NAT.
    assert!(w
        .sent
        .contains(&(w.public(cn), w.public(mn), MessageType::TunReq)));
    assert_eq!(
        w.sent
            .iter()
            .filter(|(s, _, k)| *s == w.public(mn) && *k == MessageType::TunReq)
            .count(),
        0
    );
    assert_data_both_ways(&mut w, mn, cn);
}

#[test]
fn relay_path_when_both_behind_nat() {
    let mut w = World::new();
    let n1 = w.add_nat(Ipv4Addr::new(198, 18, 0, 10));
    let n2 = w.add_nat(Ipv4Addr::new(198, 18, 0, 11));
    let mn = w.add_host("gn.ntm.test", addr(192, 168, 10, 2, 7700), Some(n1));
    let cn = w.add_host("cn2.ntm.test", addr(192, 168, 20, 2, 7700), Some(n2));
    w.run_for(Duration::from_secs(1));
    let req = connect(&mut w, mn, "cn2.ntm.test");
    assert_eq!(w.resolved(mn, req), Some(Ok(w.vip(cn))));
    assert_eq!(w.tunnel_ups(mn).len(), 1);
    assert_eq!(w.tunnel_ups(cn).len(), 1);
    assert_eq!(w.tunnel_ups(mn)[0].1, Path::Relay);
    // Both bound at the RS; every tunnel datagram went to the RS.
    assert!(w.sent.contains(&(w.public(mn), RS, MessageType::RelayBind)));
    assert!(w.sent.contains(&(w.public(cn), RS, MessageType::RelayBind)));
    assert!(!w
        .sent
        .iter()
        .any(|(s, d, _)| *s == w.public(mn) && *d == w.public(cn)));
    let before = w.rs.forwarded;
    assert_data_both_ways(&mut w, mn, cn);
    assert_eq!(w.rs.forwarded, before + 2);
}

#[test]
fn responder_without_route_dir_drops_tun_req_and_initiator_retransmits() {
    let mut w = two_public();
    let cn_public = w.public(1);
    // Lose the DC's first two copies of the ROUTE_DIR for CN.
    let mut lost = 0;
    w.drop = Box::new(move |f| {
        let route_dir =
            Packet::new_checked(&f.data[..]).map(|p| p.msg_type()) == Ok(MessageType::RouteDir);
        if route_dir && f.dst == cn_public && lost < 2 {
            lost += 1;
            return true;
        }
        false
    });
    connect(&mut w, 0, "cn.ntm.test");
    assert!(
        w.count_sent(MessageType::TunReq) >= 2,
        "TUN_REQ retransmitted"
    );
    assert!(
        w.hosts[1].ep.drops().get(Error::UnknownTunnel) >= 1,
        "early TUN_REQ dropped"
    );
    assert_eq!(w.tunnel_ups(0).len(), 1);
    assert_eq!(w.tunnel_ups(1).len(), 1);
    assert_data_both_ways(&mut w, 0, 1);
}

#[test]
fn duplicated_datagrams_are_idempotent() {
    let mut w = World::new();
    w.duplicate = true;
    w.add_host("mn.ntm.test", addr(198, 18, 0, 20, 7700), None);
    w.add_host("cn.ntm.test", addr(198, 18, 0, 21, 7700), None);
    w.run_for(Duration::from_secs(1));
    connect(&mut w, 0, "cn.ntm.test");
    assert_eq!(w.tunnel_ups(0).len(), 1, "no second tunnel");
    assert_eq!(w.tunnel_ups(1).len(), 1, "no second tunnel");
    assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
    w.duplicate = false;
    assert_data_both_ways(&mut w, 0, 1);
}

#[test]
fn dir_req_times_out_after_five_tries() {
    let mut w = two_public();
    w.dc.silent = true;
    let req = w.hosts[0].ep.connect(w.now, "cn.ntm.test").unwrap();
    // A second ask for the same name shares the request.
    assert_eq!(w.hosts[0].ep.connect(w.now, "cn.ntm.test"), Ok(req));
    w.run_for(Duration::from_secs(9));
    assert_eq!(w.count_sent(MessageType::DirReq), 5);
    assert_eq!(w.resolved(0, req), Some(Err(DirError::TimedOut)));
}

#[test]
fn tunnel_setup_fails_when_peer_unreachable() {
    let mut w = two_public();
    let cn_public = w.public(1);
    w.drop = Box::new(move |f| f.dst == cn_public && f.src != DC);
    connect(&mut w, 0, "cn.ntm.test");
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.count_sent(MessageType::TunReq), 5);
    assert_eq!(w.downs(0), vec![DownReason::SetupTimedOut]);
    assert_eq!(w.downs(1), vec![DownReason::SetupTimedOut]);
    assert!(w.tunnel_ups(0).is_empty());
    // The next request sets it up again once the path works.
    w.drop = Box::new(|_| false);
    let req = connect(&mut w, 0, "cn.ntm.test");
    assert!(w.resolved(0, req).unwrap().is_ok());
    assert_eq!(w.tunnel_ups(0).len(), 1);
}

#[test]
fn idle_tunnel_keeps_alive_then_expires_when_cut() {
    let mut w = two_public();
    connect(&mut w, 0, "cn.ntm.test");
    w.run_for(Duration::from_secs(65));
    let ka = w.count_sent(MessageType::TunKeepalive);
    assert!(
        (5..=7).contains(&ka),
        "about one per 20 s per side, got {ka}"
    );
    assert!(w.downs(0).is_empty());
    // Cut the path between the nodes (the DC still works).
    let (pa, pb) = (w.public(0), w.public(1));
    w.drop = Box::new(move |f| (f.src == pa && f.dst == pb) || (f.src == pb && f.dst == pa));
    w.run_for(Duration::from_secs(u64::from(TUNNEL_LIFETIME) + 5));
    assert_eq!(w.downs(0), vec![DownReason::Expired]);
    assert_eq!(w.downs(1), vec![DownReason::Expired]);
    let pkt = ipv4(w.vip(0), w.vip(1), b"x");
    let now = w.now;
    assert_eq!(
        w.hosts[0].ep.send_data(now, &pkt, &mut [0u8; 128]),
        Err(Error::NoTunnel)
    );
}

#[test]
fn data_plane_activity_postpones_keepalive() {
    let mut w = two_public();
    connect(&mut w, 0, "cn.ntm.test");
    let (tid, ..) = w.tunnel_ups(0)[0].clone();
    let before = w
        .sent
        .iter()
        .filter(|(s, _, k)| *s == w.public(0) && *k == MessageType::TunKeepalive)
        .count();
    for _ in 0..6 {
        w.run_for(Duration::from_secs(10));
        let now = w.now;
        w.hosts[0].ep.note_tx(tid, now);
    }
    let after = w
        .sent
        .iter()
        .filter(|(s, _, k)| *s == w.public(0) && *k == MessageType::TunKeepalive)
        .count();
    assert_eq!(before, after, "no keep-alive while the data plane sends");
}

#[test]
fn roaming_peer_moves_the_endpoint() {
    let mut w = two_public();
    connect(&mut w, 0, "cn.ntm.test");
    let tid = w.tunnel_ups(0)[0].0;
    // CN's address changes.
    let new = addr(198, 18, 0, 99, 7700);
    w.hosts[1].local = new;
    let now = w.now;
    w.hosts[1].ep.handle_local_addr_change(now, new);
    w.run_for(Duration::from_secs(1));
    assert!(w
        .events(0)
        .iter()
        .any(|e| matches!(e, Event::EndpointChanged { tunnel_id, endpoint } if *tunnel_id == tid && *endpoint == new)));
    assert_eq!(w.hosts[0].ep.tunnel(tid).unwrap().endpoint, new);
    // CN re-registered (with its node id) and learned the new observed address.
    assert_eq!(registered(&w, 1), 2);
    assert!(w
        .dc
        .received
        .iter()
        .filter(|(t, _)| *t == MessageType::RegReq)
        .any(|(_, id)| *id == 2));
    assert_data_both_ways(&mut w, 0, 1);
    assert!(w.downs(0).is_empty() && w.downs(1).is_empty());
}

#[test]
fn nat_rebinding_seen_in_keepalive_ack_triggers_reregistration() {
    let mut w = World::new();
    let n = w.add_nat(Ipv4Addr::new(198, 18, 0, 11));
    let a = w.add_host("cn2.ntm.test", addr(192, 168, 20, 2, 7700), Some(n));
    w.run_for(Duration::from_secs(1));
    // The NAT forgets the mapping and picks a new port.
    w.nats[n].ports.clear();
    w.nats[n].allowed.clear();
    w.run_for(Duration::from_secs(21));
    assert_eq!(registered(&w, a), 2);
    let Some(Event::Registered { observed, .. }) = w.events(a).last() else {
        panic!()
    };
    assert_eq!(*observed, w.public(a));
}

#[test]
fn dc_restart_keeps_tunnels_and_reregisters() {
    let mut w = two_public();
    connect(&mut w, 0, "cn.ntm.test");
    // A new DC process: no state (node ids start elsewhere).
    w.dc = TestDc::new(50);
    w.run_for(Duration::from_secs(80));
    assert_eq!(
        registered(&w, 0),
        2,
        "re-registered after the DC went silent"
    );
    assert_eq!(registered(&w, 1), 2);
    assert!(
        w.downs(0).is_empty() && w.downs(1).is_empty(),
        "tunnel survived"
    );
    assert_data_both_ways(&mut w, 0, 1);
}

#[test]
fn forged_replayed_and_truncated_data_are_dropped_and_counted() {
    let mut w = two_public();
    connect(&mut w, 0, "cn.ntm.test");
    let pkt = ipv4(w.vip(0), w.vip(1), b"hello");
    let mut buf = vec![0u8; 256];
    let t = w.hosts[0].ep.send_data(w.now, &pkt, &mut buf).unwrap();
    let good = buf[..t.len].to_vec();
    let from = w.public(0);
    let now = w.now;
    let cn = &mut w.hosts[1].ep;
    assert!(matches!(
        cn.handle(now, from, &good),
        Ok(Received::Data { .. })
    ));
    assert_eq!(cn.handle(now, from, &good), Err(Error::Replay));
    let mut forged = good.clone();
    forged[20] ^= 1;
    assert_eq!(cn.handle(now, from, &forged), Err(Error::BadTag));
    assert_eq!(cn.handle(now, from, &good[..20]), Err(Error::Truncated));
    assert_eq!(cn.drops().get(Error::Replay), 1);
    assert_eq!(cn.drops().get(Error::BadTag), 1);
    assert_eq!(cn.drops().get(Error::Truncated), 1);
    // Signaling from somewhere other than the DC is refused.
    assert_eq!(
        cn.handle(
            now,
            addr(198, 18, 0, 66, 7710),
            &w.dc.answered.values().next().unwrap().clone()
        ),
        Err(Error::UnexpectedSource)
    );
}

#[test]
fn close_deregisters_and_drops_tunnels() {
    let mut w = two_public();
    connect(&mut w, 0, "cn.ntm.test");
    let now = w.now;
    w.hosts[0].ep.close(now);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.count_sent(MessageType::Dereg), 1);
    assert_eq!(w.downs(0), vec![DownReason::Closed]);
    assert!(!w.dc.nodes.contains_key(&1));
    assert_eq!(w.hosts[0].ep.poll_timeout(), None);
}
