//! DCs on real etcd processes: several DCs sharing one world (directions
//! handed from one DC to another, a failover that keeps the VIP), a DC
//! restarted on etcd, and an etcd member killed under a DC.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use ntm_dc::config::StoreConfig;
use ntm_dc::store::{EtcdOptions, EtcdStore};
use ntm_dc::{Config, Coordinator, DcStore, DropReason, NodeEntry, Peer, RelayEntry};
use ntm_proto::wire::{
    Caps, DirReq, Fqdn, Header, Message, Packet, RegReq, RelayAck, Repr, RouteAck,
    MAX_SIGNALING_LEN,
};
use ntm_proto::{Authenticator, Error, Key, Path, ReplayWindow};

#[allow(dead_code)]
#[path = "support/etcd.rs"]
mod process;
use process::Etcd;

const UNIX: u64 = 1_700_000_000_000_000_000;

/// One node as the DCs see it: its key, its seq and its one replay window
/// for "its DC", whichever DC that is.
struct Node {
    fqdn: String,
    key: Key,
    addr: SocketAddrV4,
    /// LOCAL_ADDR: `addr` unless behind NAT.
    local: SocketAddrV4,
    seq: u64,
    node_id: u32,
    dc_window: ReplayWindow,
}

/// What a node took from a DC's datagram.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    RegResp(std::net::Ipv4Addr),
    RouteDir {
        tunnel_id: u32,
        peer_vip: std::net::Ipv4Addr,
        path: Path,
    },
    Other,
}

impl Node {
    fn new(fqdn: &str, k: u8, addr: &str) -> Node {
        Node {
            fqdn: fqdn.into(),
            key: Key::from_bytes([k; 32]),
            addr: addr.parse().unwrap(),
            local: addr.parse().unwrap(),
            seq: UNIX + u64::from(k) * 1_000_000,
            node_id: 0,
            dc_window: ReplayWindow::new(),
        }
    }

    fn seal(&mut self, id: u32, message: Message<'_>) -> Vec<u8> {
        self.seq += 1;
        let header = Header {
            id,
            seq: self.seq,
            response_required: true,
        };
        let repr = Repr::new(header, message);
        let mut b = vec![0u8; repr.buffer_len()];
        repr.emit_sealed(&mut b, &Authenticator::new(&self.key))
            .unwrap();
        b
    }

    fn reg_req(&mut self) -> Vec<u8> {
        let fqdn = self.fqdn.clone();
        let m = Message::RegReq(RegReq {
            req_id: 1,
            fqdn: Fqdn::new(&fqdn).unwrap(),
            local_addr: self.local,
            caps: Caps::NODE,
        });
        self.seal(0, m)
    }

    fn dir_req(&mut self, target: &str, req_id: u32) -> Vec<u8> {
        let m = Message::DirReq(DirReq {
            req_id,
            fqdn: Fqdn::new(target).unwrap(),
        });
        self.seal(self.node_id, m)
    }

    fn route_ack(&mut self, tunnel_id: u32) -> Vec<u8> {
        self.seal(self.node_id, Message::RouteAck(RouteAck { tunnel_id }))
    }

    fn keepalive(&mut self) -> Vec<u8> {
        self.seal(self.node_id, Message::Keepalive)
    }

    /// A DC's datagram as the node takes it: its tag, then its one window
    /// for its DC (a datagram below what another DC sent is a replay).
    fn take(&mut self, d: &[u8]) -> Result<Got, Error> {
        Authenticator::new(&self.key).verify(d)?;
        let p = Packet::new_checked(d)?;
        let repr = Repr::parse(&p)?;
        if !self.dc_window.validate(repr.header.seq) {
            return Err(Error::Replay);
        }
        Ok(match repr.message {
            Message::RegResp(r) => {
                let lease = r.result.expect("a lease");
                self.node_id = lease.node_id;
                Got::RegResp(lease.vip.addr)
            }
            Message::RouteDir(r) => {
                let route = r.result.expect("a route");
                Got::RouteDir {
                    tunnel_id: route.tunnel_id,
                    peer_vip: route.peer_vip.addr,
                    path: route.path,
                }
            }
            _ => Got::Other,
        })
    }
}

fn config(e: &[&Etcd], name: &str, nodes: &[&Node]) -> Config {
    Config {
        nodes: nodes
            .iter()
            .map(|n| NodeEntry::new(&n.fqdn, &n.key))
            .collect(),
        relays: vec![RelayEntry::new(
            1,
            "198.18.0.99:7720".parse().unwrap(),
            &Key::from_bytes([99; 32]),
        )],
        store: StoreConfig::etcd(e.iter().map(|m| m.url.clone()).collect(), name),
        ..Config::default()
    }
}

type Dc = Coordinator<EtcdStore>;

fn dc_at(cfg: &Config, unix_nanos: u64) -> Dc {
    let s = cfg.validate().unwrap().store.etcd.unwrap();
    let opts = EtcdOptions {
        endpoints: s.endpoints,
        prefix: s.prefix,
        dc_name: s.dc_name,
        ttl: Duration::from_secs(60),
    };
    let store = EtcdStore::open(opts, Instant::now(), unix_nanos).unwrap();
    Coordinator::with_store(cfg, store, Instant::now(), unix_nanos, [3; 32]).unwrap()
}

/// What the DC sends now.
fn drain(dc: &mut Dc) -> Vec<(SocketAddrV4, Vec<u8>)> {
    let mut buf = [0u8; MAX_SIGNALING_LEN];
    let mut out = Vec::new();
    while let Some(t) = dc.poll_transmit(Instant::now(), &mut buf) {
        out.push((t.dst, buf[..t.len].to_vec()));
    }
    out
}

/// A datagram to the DC, and what it answers at once.
fn send(dc: &mut Dc, from: SocketAddrV4, d: &[u8]) -> Vec<(SocketAddrV4, Vec<u8>)> {
    let _ = dc.handle(Instant::now(), from, d);
    drain(dc)
}

/// Runs the timers of the DC and of its peer (which writes its handoffs
/// from its timer) until the DC sent something to `to`.
fn until_sent(dc: &mut Dc, peer: &mut Dc, to: SocketAddrV4) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        peer.handle_timeout(Instant::now());
        drain(peer);
        dc.handle_timeout(Instant::now());
        let sent = drain(dc).into_iter().find(|(dst, _)| *dst == to);
        if let Some((_, d)) = sent {
            return d;
        }
        assert!(Instant::now() < deadline, "the DC sent nothing to {to}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the DC's timers until `ok` holds for its state.
fn until(dc: &mut Dc, what: &str, mut ok: impl FnMut(&Dc) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok(dc) {
        assert!(Instant::now() < deadline, "not reached: {what}");
        dc.handle_timeout(Instant::now());
        drain(dc);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Registers `n` at `dc`; gives its VIP.
fn register(dc: &mut Dc, n: &mut Node) -> std::net::Ipv4Addr {
    let d = n.reg_req();
    let out = send(dc, n.addr, &d);
    let (_, resp) = out.iter().find(|(to, _)| *to == n.addr).expect("REG_RESP");
    match n.take(resp).unwrap() {
        Got::RegResp(vip) => vip,
        other => panic!("not a REG_RESP: {other:?}"),
    }
}

#[test]
fn a_direction_for_a_node_of_another_dc_is_sent_by_that_dc() {
    let e = Etcd::start();
    let mut mn = Node::new("mn.ntm.test", 1, "198.18.0.10:7700");
    let mut cn = Node::new("cn.ntm.test", 2, "198.18.0.20:7700");
    let mut dc1 = dc_at(&config(&[&e], "dc1", &[&mn, &cn]), UNIX);
    let mut dc2 = dc_at(&config(&[&e], "dc2", &[&mn, &cn]), UNIX);
    let mn_vip = register(&mut dc1, &mut mn);
    let cn_vip = register(&mut dc2, &mut cn);
    assert_ne!(mn_vip, cn_vip);
    let cn_id = cn.node_id;
    until(&mut dc1, "dc1 sees cn at dc2", |d| {
        d.store().get(cn_id).is_some_and(|r| r.is_active())
    });
    assert_eq!(dc1.store().remote_home(cn_id), Some("dc2"));
    let status = ntm_dc::Status::of(&dc1, Instant::now(), Default::default());
    let homes: Vec<_> = (status.registrations.iter())
        .map(|r| (r.fqdn.as_str(), r.home.as_deref()))
        .collect();
    assert!(homes.contains(&("cn.ntm.test", Some("dc2"))), "{homes:?}");
    assert!(homes.contains(&("mn.ntm.test", None)), "{homes:?}");

    // DIRECT (CN is public): CN's ROUTE_DIR first, from CN's DC.
    let d = mn.dir_req("cn.ntm.test", 7);
    assert!(
        send(&mut dc1, mn.addr, &d).is_empty(),
        "MN waits for CN's ROUTE_ACK"
    );
    assert_eq!(dc1.stats().handoffs_sent, 1);
    let to_cn = until_sent(&mut dc2, &mut dc1, cn.addr);
    let Got::RouteDir {
        tunnel_id,
        peer_vip,
        path,
    } = cn.take(&to_cn).unwrap()
    else {
        panic!("not a ROUTE_DIR")
    };
    assert_eq!((peer_vip, path), (mn_vip, Path::Direct));
    assert_eq!(dc1.tunnel(tunnel_id).unwrap().cn_fqdn, "cn.ntm.test");

    // CN's ROUTE_ACK goes to its DC, which hands it back: MN gets its copy.
    let ack = cn.route_ack(tunnel_id);
    send(&mut dc2, cn.addr, &ack);
    let to_mn = until_sent(&mut dc1, &mut dc2, mn.addr);
    assert_eq!(
        mn.take(&to_mn).unwrap(),
        Got::RouteDir {
            tunnel_id,
            peer_vip: cn_vip,
            path: Path::Direct
        }
    );
    assert!(dc1.tunnel(tunnel_id).unwrap().acked);
    assert_eq!(dc2.stats().handoffs_received, 1);
}

#[test]
fn a_reverse_direction_across_dcs_is_acknowledged_through_the_store() {
    let e = Etcd::start();
    let mut mn = Node::new("mn.ntm.test", 1, "198.18.0.10:7700");
    let mut cn = Node::new("cn.ntm.test", 2, "198.18.0.20:40000");
    cn.local = "192.168.1.20:7700".parse().unwrap();
    let mut dc1 = dc_at(&config(&[&e], "dc1", &[&mn, &cn]), UNIX);
    let mut dc2 = dc_at(&config(&[&e], "dc2", &[&mn, &cn]), UNIX);
    let mn_vip = register(&mut dc1, &mut mn);
    register(&mut dc2, &mut cn);
    let cn_id = cn.node_id;
    until(&mut dc1, "dc1 sees cn at dc2", |d| {
        d.store().get(cn_id).is_some_and(|r| r.is_active())
    });
    // REVERSE (only CN behind NAT): MN's answer at once, CN's from dc2.
    let d = mn.dir_req("cn.ntm.test", 8);
    let out = send(&mut dc1, mn.addr, &d);
    let (_, to_mn) = out
        .iter()
        .find(|(to, _)| *to == mn.addr)
        .expect("MN's ROUTE_DIR");
    let Got::RouteDir {
        tunnel_id, path, ..
    } = mn.take(to_mn).unwrap()
    else {
        panic!("not a ROUTE_DIR")
    };
    assert_eq!(path, Path::Reverse);
    assert!(!dc1.tunnel(tunnel_id).unwrap().acked);
    let to_cn = until_sent(&mut dc2, &mut dc1, cn.addr);
    assert_eq!(
        cn.take(&to_cn).unwrap(),
        Got::RouteDir {
            tunnel_id,
            peer_vip: mn_vip,
            path: Path::Reverse
        }
    );
    let ack = cn.route_ack(tunnel_id);
    send(&mut dc2, cn.addr, &ack);
    until(&mut dc1, "CN's ROUTE_ACK handed back", |d| {
        d.tunnel(tunnel_id).is_some_and(|t| t.acked)
    });
}

#[test]
fn a_node_that_fails_over_keeps_its_vip_and_its_replay_protection() {
    let e = Etcd::start();
    let mut n = Node::new("a.ntm.test", 1, "198.18.0.10:7700");
    // dc2's clock is behind dc1's: without the shared seq the node would
    // refuse everything dc2 sends as replays.
    let mut dc1 = dc_at(&config(&[&e], "dc1", &[&n]), UNIX + 1_000_000_000_000);
    let mut dc2 = dc_at(&config(&[&e], "dc2", &[&n]), UNIX);
    let recorded = n.reg_req();
    let out = send(&mut dc1, n.addr, &recorded);
    let Got::RegResp(vip) = n.take(&out[0].1).unwrap() else {
        panic!("no REG_RESP")
    };
    let id = n.node_id;
    let seen = n.seq;
    // The VIP's claim, dc1's seq and the mark are transactions of their
    // own: dc2 may see them in any order.
    until(&mut dc2, "dc2 sees the node, dc1's seq and its mark", |d| {
        d.store().get(id).is_some()
            && d.store().takeover_seq(id).is_some()
            && d.store()
                .mark(Peer::Node(id))
                .is_some_and(|m| m.seq >= seen)
    });
    // A recording of what dc1 accepted is refused at dc2.
    assert_eq!(
        dc2.handle(Instant::now(), n.addr, &recorded),
        Err(DropReason::Proto(Error::Replay))
    );
    // The node moves to dc2 (its keep-alives to dc1 failed), from another
    // NAT mapping: same VIP, and dc2's answers pass its window.
    n.addr = "198.18.0.11:7700".parse().unwrap();
    assert_eq!(register(&mut dc2, &mut n), vip);
    assert_eq!(dc2.store().remote_home(id), None);
    assert_eq!(dc2.stats().takeovers, 1);
    until(&mut dc1, "dc1 sees the move", |d| {
        d.store().remote_home(id) == Some("dc2")
    });
    let ka = n.keepalive();
    let out = send(&mut dc2, n.addr, &ka);
    assert_eq!(n.take(&out[0].1), Ok(Got::Other), "KEEPALIVE_ACK");
}

#[test]
fn a_dc_restarted_on_etcd_keeps_registrations_and_refuses_recordings() {
    let e = Etcd::start();
    let mut n = Node::new("a.ntm.test", 1, "198.18.0.10:7700");
    let cfg = config(&[&e], "dc1", &[&n]);
    let mut dc = dc_at(&cfg, UNIX);
    let reg = n.reg_req();
    let out = send(&mut dc, n.addr, &reg);
    let Got::RegResp(vip) = n.take(&out[0].1).unwrap() else {
        panic!("no REG_RESP")
    };
    let dir = n.dir_req("nobody.ntm.test", 3);
    assert_eq!(send(&mut dc, n.addr, &dir).len(), 1, "NOT_FOUND");
    // A RELAY_ACK from the RS (for no tunnel): its mark is kept too.
    let rs = Authenticator::new(&Key::from_bytes([99; 32]));
    let repr = Repr::new(
        Header {
            id: 1,
            seq: UNIX + 5,
            response_required: false,
        },
        Message::RelayAck(RelayAck { tunnel_id: 9 }),
    );
    let mut relay_ack = vec![0u8; repr.buffer_len()];
    repr.emit_sealed(&mut relay_ack, &rs).unwrap();
    let rs_addr: SocketAddrV4 = "198.18.0.99:7720".parse().unwrap();
    assert_eq!(
        dc.handle(Instant::now(), rs_addr, &relay_ack),
        Err(DropReason::StaleAck)
    );
    drop(dc);

    let mut dc = dc_at(&cfg, UNIX + 1);
    assert_eq!(dc.restored().registrations, 1);
    assert_eq!(dc.registration("a.ntm.test").unwrap().vip, vip);
    let replay = Err(DropReason::Proto(Error::Replay));
    assert_eq!(dc.handle(Instant::now(), n.addr, &reg), replay);
    assert_eq!(dc.handle(Instant::now(), n.addr, &dir), replay);
    assert_eq!(dc.handle(Instant::now(), rs_addr, &relay_ack), replay);
    // The node goes on where it was.
    let ka = n.keepalive();
    let out = send(&mut dc, n.addr, &ka);
    assert_eq!(n.take(&out[0].1), Ok(Got::Other), "KEEPALIVE_ACK");
}

/// Registers `n` at `dc`, retransmitting as a node would until answered.
fn register_retrying(dc: &mut Dc, n: &mut Node) -> std::net::Ipv4Addr {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = n.reg_req();
        let out = send(dc, n.addr, &d);
        if let Some((_, resp)) = out.iter().find(|(to, _)| *to == n.addr) {
            match n.take(resp).unwrap() {
                Got::RegResp(vip) => return vip,
                other => panic!("not a REG_RESP: {other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "{} never registered", n.fqdn);
        dc.handle_timeout(Instant::now());
        drain(dc);
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_dcs_go_on_when_one_etcd_member_of_three_is_killed() {
    let mut members = Etcd::cluster(3);
    let mut a = Node::new("a.ntm.test", 1, "198.18.0.10:7700");
    let mut b = Node::new("b.ntm.test", 2, "198.18.0.20:7700");
    let mut c = Node::new("c.ntm.test", 3, "198.18.0.30:7700");
    let all: Vec<&Etcd> = members.iter().collect();
    let mut dc1 = dc_at(&config(&all, "dc1", &[&a, &b, &c]), UNIX);
    let mut dc2 = dc_at(&config(&all, "dc2", &[&a, &b, &c]), UNIX);
    register(&mut dc1, &mut a);
    members[0].kill();
    // Writes go to the members left (the first tries may fail while the
    // client finds the dead one), and so do the watches.
    register_retrying(&mut dc1, &mut b);
    register_retrying(&mut dc2, &mut c);
    let c_id = c.node_id;
    until(&mut dc1, "dc1 sees dc2's new node", |d| {
        d.store().get(c_id).is_some_and(|r| r.is_active())
    });
    assert_eq!(dc1.store().active(), 3);
    let ka = a.keepalive();
    let out = send(&mut dc1, a.addr, &ka);
    assert_eq!(a.take(&out[0].1), Ok(Got::Other), "KEEPALIVE_ACK");
}
