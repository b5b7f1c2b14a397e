//! The real `ntm-dc` (and `ntm-rs`) binaries on the testbed, checked with a
//! small UDP client written here on ntm-proto: registration, NAT
//! detection, direction requests, a DC restart, and a relayed tunnel.
//!
//! Every test builds its own testbed, needs root and fails (never skips)
//! without it. Nothing asserts how long anything takes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ntm_proto::wire::{
    Caps, DirReq, Fqdn, Header, Lease, Message, Packet, RegReq, RelayBind, Repr, RouteAck,
    MAX_DATAGRAM_LEN,
};
use ntm_proto::{Authenticator, Key, Path as TunPath, Role as TunRole, Status, WrapLabel};
use ntm_testbed::{
    bin_path, require_root, unique_prefix, wait_until, Child, Role, Signal, Testbed, CN2_ADDR,
    CN2_FQDN, CN_ADDR, CN_FQDN, DC_ADDR, NAT1_WAN_ADDR, NAT2_WAN_ADDR, NODE_FQDN, NTMA_WAN_ADDR,
    RS_ADDR,
};

/// How long anything may take to come about (two cores, parallel tests).
const PATIENCE: Duration = Duration::from_secs(20);
const DC: SocketAddrV4 = SocketAddrV4::new(DC_ADDR, ntm_dc::DEFAULT_PORT);
const RS: SocketAddrV4 = SocketAddrV4::new(RS_ADDR, ntm_rs::DEFAULT_PORT);
const RS_ID: u32 = 1;

fn proto_key(k: &ntm_testbed::Key) -> Key {
    Key::from_bytes(*k.as_bytes())
}

fn testbed(tag: &str) -> Testbed {
    require_root()
        .expect("the ntm-dc testbed tests need root: run them with `sudo -E cargo xtask test`");
    Testbed::up(&unique_prefix(tag)).expect("testbed up")
}

/// The DC configuration for a testbed: every testbed node, the RS.
fn dc_config(tb: &Testbed) -> ntm_dc::Config {
    let mut c = ntm_dc::Config {
        listen: DC,
        stats_interval_secs: 0,
        ..ntm_dc::Config::default()
    };
    for (fqdn, k) in tb.keys().nodes() {
        c.nodes.push(ntm_dc::NodeEntry::new(fqdn, &proto_key(k)));
    }
    c.relays.push(ntm_dc::RelayEntry::new(
        RS_ID,
        RS,
        &proto_key(tb.keys().rs()),
    ));
    c
}

/// Starts `bin --config <file>` in `role` and waits for `ready` in its log.
fn start(tb: &Testbed, role: Role, bin: &Path, config: &Path, ready: &str) -> Child {
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(config).env("RUST_LOG", "debug");
    let child = tb.spawn(role, &cmd).expect("spawn");
    assert!(
        wait_until(PATIENCE, || child.log().contains(ready)),
        "{} did not log {ready:?}:\n{}",
        bin.display(),
        child.log()
    );
    child
}

fn start_dc(tb: &Testbed, config: &ntm_dc::Config) -> Child {
    let path = tb.state_dir().join("dc.toml");
    std::fs::write(&path, config.to_toml()).expect("write dc.toml");
    start(
        tb,
        Role::Dc,
        Path::new(env!("CARGO_BIN_EXE_ntm-dc")),
        &path,
        "ntm-dc listening",
    )
}

fn start_rs(tb: &Testbed) -> Child {
    let mut c = ntm_rs::Config::new(RS_ID, &proto_key(tb.keys().rs()));
    c.stats_interval_secs = 0;
    let path = tb.state_dir().join("rs.toml");
    std::fs::write(&path, c.to_toml()).expect("write rs.toml");
    let bin: PathBuf = bin_path("ntm-rs").expect("the ntm-rs binary");
    start(tb, Role::Rs, &bin, &path, "ntm-rs listening")
}

/// Asks a daemon for its statistics line and waits until it contains `what`.
fn stats_contain(child: &Child, what: &str) -> bool {
    child.signal(Signal::SIGUSR1).expect("SIGUSR1");
    wait_until(PATIENCE, || {
        child
            .log()
            .lines()
            .any(|l| l.contains("stats:") && l.contains(what))
    })
}

/// What a ROUTE_DIR told one end.
#[derive(Debug, Clone)]
struct RouteInfo {
    req_id: u32,
    response_required: bool,
    tunnel_id: u32,
    path: TunPath,
    role: TunRole,
    endpoint: SocketAddrV4,
    peer_vip: Ipv4Addr,
    k_tun: Key,
    k_relay: Option<Key>,
}

/// A node's signaling, by hand: one UDP socket inside a testbed namespace.
struct Client {
    sock: UdpSocket,
    fqdn: &'static str,
    auth: Authenticator,
    local: SocketAddrV4,
    seq: u64,
    node_id: u32,
}

impl Client {
    fn new(tb: &Testbed, role: Role, fqdn: &'static str, local: SocketAddrV4) -> Client {
        let sock = tb
            .in_netns(role, move || UdpSocket::bind(local))
            .expect("enter the namespace")
            .expect("bind the client socket");
        let key = proto_key(tb.keys().node(fqdn).expect("a testbed node"));
        Client {
            sock,
            fqdn,
            auth: Authenticator::new(&key),
            local,
            seq: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
            node_id: 0,
        }
    }

    fn send_to(
        &mut self,
        dst: SocketAddrV4,
        id: u32,
        message: Message<'_>,
        auth: &Authenticator,
    ) -> Vec<u8> {
        self.seq += 1;
        let repr = Repr::new(
            Header {
                id,
                seq: self.seq,
                response_required: true,
            },
            message,
        );
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
        let n = repr.emit_sealed(&mut buf, auth).expect("emit");
        self.sock.send_to(&buf[..n], dst).expect("send");
        buf.truncate(n);
        buf
    }

    fn send(&mut self, message: Message<'_>) {
        let auth = self.auth.clone();
        self.send_to(DC, self.node_id, message, &auth);
    }

    /// KEEPALIVE until KEEPALIVE_ACK (its OBSERVED_ADDR) or ERROR (its STATUS).
    fn keepalive(&mut self) -> Result<SocketAddrV4, Status> {
        let id = self.node_id;
        self.exchange(
            |c| c.send(Message::Keepalive),
            |r| match r.message {
                _ if r.header.id != id => None,
                Message::KeepaliveAck(a) => Some(Ok(a.observed)),
                Message::Error(e) => Some(Err(e.status)),
                _ => None,
            },
        )
    }

    /// Waits for the unsolicited ROUTE_DIR (REQ_ID 0), without acking it.
    fn unsolicited_route(&mut self) -> RouteInfo {
        let me = Client::unwrapper(self.auth.clone());
        self.exchange(
            |_| {},
            |r| me(r).and_then(Result::ok).filter(|i| i.req_id == 0),
        )
    }

    fn ack_route(&mut self, tunnel_id: u32) {
        self.send(Message::RouteAck(RouteAck { tunnel_id }));
    }

    /// Whether a ROUTE_DIR from the DC arrives within `window`.
    fn route_dir_within(&self, window: Duration) -> bool {
        let until = Instant::now() + window;
        while let Some((from, d)) = self.recv(until.saturating_duration_since(Instant::now())) {
            let route_dir = Packet::new_checked(&d[..])
                .is_ok_and(|p| p.msg_type() == ntm_proto::MessageType::RouteDir);
            if from == DC && route_dir {
                return true;
            }
        }
        false
    }

    /// The next datagram within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<(SocketAddrV4, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) => return Some((from, buf[..n].to_vec())),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// Sends with `send` every 500 ms until a DC message (tag checked with
    /// K_node) makes `f` return `Some`.
    fn exchange<T>(
        &mut self,
        mut send: impl FnMut(&mut Client),
        mut f: impl FnMut(&Repr<'_>) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            send(self);
            let until = Instant::now() + Duration::from_millis(500);
            while let Some((from, d)) = self.recv(until.saturating_duration_since(Instant::now())) {
                if from != DC || self.auth.verify(&d).is_err() {
                    continue;
                }
                let Ok(p) = Packet::new_checked(&d[..]) else {
                    continue;
                };
                let Ok(repr) = Repr::parse(&p) else { continue };
                if let Some(t) = f(&repr) {
                    return t;
                }
            }
        }
        panic!("{}: no answer from the DC within {PATIENCE:?}", self.fqdn);
    }

    fn register(&mut self) -> Lease {
        let fqdn = self.fqdn;
        let local = self.local;
        let lease = self.exchange(
            |c| {
                c.send(Message::RegReq(RegReq {
                    fqdn: Fqdn::new(fqdn).unwrap(),
                    local_addr: local,
                    caps: Caps::NODE,
                }))
            },
            |r| match r.message {
                Message::RegResp(resp) => Some(resp.result),
                _ => None,
            },
        );
        let lease = lease.expect("REG_RESP OK");
        self.node_id = lease.node_id;
        lease
    }

    /// DIR_REQ until the ROUTE_DIR with this REQ_ID comes (keys unwrapped).
    fn direction(&mut self, req_id: u32, target: &'static str) -> Result<RouteInfo, Status> {
        let auth = self.auth.clone();
        let me = Client::unwrapper(auth);
        self.exchange(
            |c| c.send_dir_req(req_id, target),
            |r| me(r).filter(|x| x.as_ref().map_or(true, |i| i.req_id == req_id)),
        )
    }

    fn send_dir_req(&mut self, req_id: u32, target: &'static str) {
        self.send(Message::DirReq(DirReq {
            req_id,
            fqdn: Fqdn::new(target).unwrap(),
        }));
    }

    /// Waits, sending nothing, for the ROUTE_DIR answering REQ_ID `req_id`.
    fn answer(&mut self, req_id: u32) -> Result<RouteInfo, Status> {
        let me = Client::unwrapper(self.auth.clone());
        self.exchange(
            |_| {},
            |r| me(r).filter(|x| x.as_ref().map_or(true, |i| i.req_id == req_id)),
        )
    }

    fn unwrapper(auth: Authenticator) -> impl Fn(&Repr<'_>) -> Option<Result<RouteInfo, Status>> {
        move |repr| {
            let Message::RouteDir(rd) = repr.message else {
                return None;
            };
            let seq = repr.header.seq;
            Some(rd.result.map(|r| {
                RouteInfo {
                    req_id: rd.req_id,
                    response_required: repr.header.response_required,
                    tunnel_id: r.tunnel_id,
                    path: r.path,
                    role: r.role,
                    endpoint: r.endpoint,
                    peer_vip: r.peer_vip.addr,
                    k_tun: auth.unwrap_key(WrapLabel::TunnelKey, r.tunnel_id, seq, &r.wrapped_key),
                    k_relay: r
                        .wrapped_relay_key
                        .map(|w| auth.unwrap_key(WrapLabel::RelayKey, r.tunnel_id, seq, &w)),
                }
            }))
        }
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn registration_and_nat_detection() {
    let tb = testbed("dcreg");
    let dc = start_dc(&tb, &dc_config(&tb));
    let pool = ntm_dc::VipPool::parse("100.64.0.0/10").unwrap();

    let mut cn = Client::new(&tb, Role::Cn, CN_FQDN, SocketAddrV4::new(CN_ADDR, 7700));
    let lease = cn.register();
    assert!(pool.is_assignable(lease.vip.addr), "{lease:?}");
    assert_eq!(lease.vip.prefix_len, 10);
    assert_eq!(lease.observed, cn.local, "cn is not behind NAT");
    assert_eq!((lease.keepalive_secs, lease.lifetime_secs), (20, 600));
    assert_eq!(cn.keepalive(), Ok(cn.local));

    let mut cn2 = Client::new(&tb, Role::Cn2, CN2_FQDN, SocketAddrV4::new(CN2_ADDR, 7700));
    let lease2 = cn2.register();
    assert_eq!(*lease2.observed.ip(), NAT2_WAN_ADDR);
    assert_ne!(lease2.observed, cn2.local, "cn2 is behind nat2");
    assert_ne!(lease2.vip.addr, lease.vip.addr);
    let logged = |fqdn: &str, nat: bool| {
        let want = [format!("fqdn={fqdn} "), format!("behind_nat={nat}")];
        wait_until(PATIENCE, || {
            dc.log()
                .lines()
                .any(|l| l.contains(" registered ") && want.iter().all(|w| l.contains(w)))
        })
    };
    assert!(logged(CN2_FQDN, true), "{}", dc.log());
    assert!(logged(CN_FQDN, false), "{}", dc.log());

    // Registering again while the lease lives: the same VIP.
    assert_eq!(cn.register().vip, lease.vip);

    // A REG_REQ sealed with another node's key is dropped and counted.
    let wrong = Authenticator::new(&proto_key(tb.keys().node(NODE_FQDN).unwrap()));
    let local = cn.local;
    cn.send_to(
        DC,
        0,
        Message::RegReq(RegReq {
            fqdn: Fqdn::new(CN_FQDN).unwrap(),
            local_addr: local,
            caps: Caps::NODE,
        }),
        &wrong,
    );
    assert!(stats_contain(&dc, "bad_tag=1"), "{}", dc.log());
}

#[test]
fn directions_route_dirs_and_a_dc_restart() {
    let tb = testbed("dcdir");
    let config = dc_config(&tb);
    let mut dc = start_dc(&tb, &config);
    let mut cn = Client::new(&tb, Role::Cn, CN_FQDN, SocketAddrV4::new(CN_ADDR, 7700));
    let cn_lease = cn.register();
    let mut cn2 = Client::new(&tb, Role::Cn2, CN2_FQDN, SocketAddrV4::new(CN2_ADDR, 7700));
    let cn2_lease = cn2.register();

    // cn2 (behind nat2) asks for cn (public): DIRECT, cn2 sends TUN_REQ to
    // cn. The DC answers cn2's DIR_REQ only on cn's ROUTE_ACK, so that cn
    // knows the tunnel when cn2's TUN_REQ comes (the DC gives up, and
    // answers UNREACHABLE, 3.75 s after the DIR_REQ without it).
    cn2.send_dir_req(7, CN_FQDN);
    let resp = cn.unsolicited_route();
    assert!(
        !cn2.route_dir_within(Duration::from_millis(300)),
        "a ROUTE_DIR reached the initiator before the responder's ROUTE_ACK\n{}",
        dc.log()
    );
    cn.ack_route(resp.tunnel_id);
    let mn = cn2.answer(7).expect("ROUTE_DIR OK on cn's ROUTE_ACK");
    assert_eq!(
        (mn.path, mn.role, mn.endpoint, mn.peer_vip),
        (
            TunPath::Direct,
            TunRole::Initiator,
            cn.local,
            cn_lease.vip.addr
        )
    );
    assert!(!mn.response_required, "MN's copy answers its DIR_REQ");
    assert_eq!(mn.k_relay, None);
    assert_eq!(
        (resp.tunnel_id, resp.path, resp.role),
        (mn.tunnel_id, TunPath::Direct, TunRole::Responder)
    );
    assert_eq!(
        resp.endpoint, cn2_lease.observed,
        "cn answers cn2's public address"
    );
    assert_eq!(resp.peer_vip, cn2_lease.vip.addr);
    assert!(resp.response_required, "CN's copy wants ROUTE_ACK");
    assert!(resp.k_tun == mn.k_tun, "both ends unwrap one K_tun");

    // A retransmitted DIR_REQ (same REQ_ID): the same tunnel, no second one.
    let again = cn2.direction(7, CN_FQDN).expect("ROUTE_DIR OK");
    assert_eq!(again.tunnel_id, mn.tunnel_id);
    assert!(again.k_tun == mn.k_tun);
    assert_eq!(
        cn2.direction(8, "nobody.ntm.test").unwrap_err(),
        Status::NotFound
    );
    assert!(stats_contain(&dc, "route_acks=1 "), "{}", dc.log());
    assert!(
        stats_contain(&dc, "dir_reqs=2 repeats=1 not_found=1 "),
        "{}",
        dc.log()
    );

    // A restarted DC answers the next keep-alive with an authenticated
    // ERROR, and the node gets its VIP back when it re-registers.
    dc.stop(Duration::from_secs(3)).expect("stop ntm-dc");
    drop(dc);
    let dc = start_dc(&tb, &config);
    assert_eq!(cn.keepalive(), Err(Status::NotFound));
    assert_eq!(cn.register().vip, cn_lease.vip);
    assert_eq!(cn2.keepalive(), Err(Status::NotFound));
    assert_eq!(cn2.register().vip, cn2_lease.vip);
    assert_eq!(cn2.keepalive(), Ok(cn2_lease.observed));
    assert!(stats_contain(&dc, "errors_sent=2 "), "{}", dc.log());
}

/// Sends DATA from `from` to the RS (re-binding both ends, each with its
/// role, first) until `to` receives exactly those bytes from the RS.
fn through_rs(
    (from, from_role): (&mut Client, TunRole),
    (to, to_role): (&mut Client, TunRole),
    tunnel_id: u32,
    relay: &Authenticator,
    tun: &Authenticator,
    payload: &[u8],
) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        from.send_to(
            RS,
            tunnel_id,
            Message::RelayBind(RelayBind { role: from_role }),
            relay,
        );
        to.send_to(
            RS,
            tunnel_id,
            Message::RelayBind(RelayBind { role: to_role }),
            relay,
        );
        let sent = from.send_to(RS, tunnel_id, Message::Data { payload }, tun);
        let until = Instant::now() + Duration::from_millis(500);
        while let Some((src, d)) = to.recv(until.saturating_duration_since(Instant::now())) {
            if src == RS && d == sent {
                return;
            }
        }
    }
    panic!(
        "{} -> {}: nothing came through the RS within {PATIENCE:?}",
        from.fqdn, to.fqdn
    );
}

#[test]
fn a_relayed_tunnel_through_ntm_rs() {
    let tb = testbed("dcrly");
    let rs = start_rs(&tb);
    let dc = start_dc(&tb, &dc_config(&tb));
    // node.ntm.test behind nat1 (in the ntma namespace), cn2 behind nat2.
    let mut a = Client::new(
        &tb,
        Role::Ntma,
        NODE_FQDN,
        SocketAddrV4::new(NTMA_WAN_ADDR, 7700),
    );
    let la = a.register();
    assert_eq!(*la.observed.ip(), NAT1_WAN_ADDR);
    let mut z = Client::new(&tb, Role::Cn2, CN2_FQDN, SocketAddrV4::new(CN2_ADDR, 7700));
    z.register();

    // On RELAY the DC answers the initiator's DIR_REQ only after the
    // responder's ROUTE_ACK, so that the responder is bound at the RS first.
    a.send_dir_req(1, CN2_FQDN);
    let rz = z.unsolicited_route();
    assert!(
        !a.route_dir_within(Duration::from_millis(300)),
        "a ROUTE_DIR reached the initiator before the responder's ROUTE_ACK\n{}",
        dc.log()
    );
    z.ack_route(rz.tunnel_id);
    let ra = a
        .answer(1)
        .expect("ROUTE_DIR OK on the responder's ROUTE_ACK");
    assert_eq!(
        (ra.path, ra.role, ra.endpoint),
        (TunPath::Relay, TunRole::Initiator, RS)
    );
    assert_eq!(
        (rz.tunnel_id, rz.path, rz.role, rz.endpoint),
        (ra.tunnel_id, TunPath::Relay, TunRole::Responder, RS)
    );
    let k_relay = ra.k_relay.clone().expect("K_relay on RELAY");
    assert!(
        rz.k_relay.as_ref() == Some(&k_relay),
        "both ends unwrap one K_relay"
    );
    assert!(rz.k_tun == ra.k_tun);
    assert!(stats_contain(&dc, "relay_acks=1 "), "{}", dc.log());

    let relay = Authenticator::new(&k_relay);
    let tun = Authenticator::new(&ra.k_tun);
    through_rs(
        (&mut a, TunRole::Initiator),
        (&mut z, TunRole::Responder),
        ra.tunnel_id,
        &relay,
        &tun,
        b"from node to cn2",
    );
    through_rs(
        (&mut z, TunRole::Responder),
        (&mut a, TunRole::Initiator),
        ra.tunnel_id,
        &relay,
        &tun,
        b"from cn2 to node",
    );

    // A third address with the tunnel id, and an unknown tunnel id: dropped.
    let mut x = Client::new(&tb, Role::Cn, CN_FQDN, SocketAddrV4::new(CN_ADDR, 7700));
    x.send_to(
        RS,
        ra.tunnel_id,
        Message::Data {
            payload: b"intruder",
        },
        &tun,
    );
    x.send_to(
        RS,
        ra.tunnel_id ^ 1,
        Message::Data { payload: b"lost" },
        &tun,
    );
    assert!(stats_contain(&rs, "unbound_source=1"), "{}", rs.log());
    assert!(stats_contain(&rs, "unknown_tunnel=1"), "{}", rs.log());
}
