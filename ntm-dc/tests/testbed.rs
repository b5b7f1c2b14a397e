//! The real `ntm-dc` (and `ntm-rs`) binaries on the testbed, checked with a
//! small UDP client written here on ntm-proto: registration, NAT
//! detection, direction requests, the tunnel suite, a DC restart, a relayed
//! tunnel, and recorded signaling played back to the DC and the RS from
//! another namespace with a spoofed source (protocol version 2 replay
//! windows).
//!
//! Every test builds its own testbed, needs root and fails (never skips)
//! without it. Nothing asserts how long anything takes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ntm_proto::wire::{
    Caps, DirReq, Fqdn, Header, Lease, Message, Packet, RegReq, RelayAck, RelayBind, RelayDir,
    Repr, RouteAck, MAX_DATAGRAM_LEN,
};
use ntm_proto::{
    Authenticator, Cipher, DirectionKeys, Key, MessageType, Path as TunPath, Role as TunRole,
    Status, Suite, WrapLabel,
};
use ntm_testbed::{
    bin_path, require_root, unique_prefix, wait_for, wait_until, Child, Role, Signal, Testbed,
    CN2_ADDR, CN2_FQDN, CN_ADDR, CN_FQDN, DC_ADDR, NAT1_WAN_ADDR, NAT2_WAN_ADDR, NODE_FQDN,
    NTMA_WAN_ADDR, RS_ADDR,
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
    let mut config = config.clone();
    config.status_socket = tb.state_dir().join("dc.sock");
    // One store per testbed: testbeds run in parallel.
    if config.store.kind == ntm_dc::config::StoreKind::Redb {
        config.store = ntm_dc::config::StoreConfig::redb_in(tb.state_dir());
    }
    // Private: the DC refuses a configuration with keys others can read.
    ntm_ops::keys::write_private(&path, &config.to_toml()).expect("write dc.toml");
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
    c.status_socket = tb.state_dir().join("rs.sock");
    let path = tb.state_dir().join("rs.toml");
    ntm_ops::keys::write_private(&path, &c.to_toml()).expect("write rs.toml");
    let bin: PathBuf = bin_path("ntm-rs").expect("the ntm-rs binary");
    start(tb, Role::Rs, &bin, &path, "ntm-rs listening")
}

/// Asks a daemon for a fresh statistics line and returns it.
fn stats(child: &Child) -> String {
    let lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("stats:"))
            .map(str::to_owned)
            .collect()
    };
    let before = lines(&child.log()).len();
    child.signal(Signal::SIGUSR1).expect("SIGUSR1");
    wait_for(PATIENCE, || lines(&child.log()).into_iter().nth(before))
        .unwrap_or_else(|| panic!("no statistics line on SIGUSR1:\n{}", child.log()))
}

/// The value of `name=` in a statistics line (0 when a drop reason is absent).
fn counter(line: &str, name: &str) -> u64 {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().expect("a number"))
}

/// Asks for statistics lines until `name` reaches `value`; returns that line.
fn stats_until(child: &Child, name: &str, value: u64) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = stats(child);
        if counter(&line, name) >= value || Instant::now() > deadline {
            assert_eq!(counter(&line, name), value, "{line}\n{}", child.log());
            return line;
        }
    }
}

/// Sends UDP datagrams with any source address from inside one namespace
/// (a raw IPv4 socket, the IP header written here): an attacker on the
/// internet playing back what it recorded.
struct Spoofer {
    sock: socket2::Socket,
}

impl Spoofer {
    fn new(tb: &Testbed, role: Role) -> Spoofer {
        use socket2::{Domain, Protocol, Socket, Type};
        // IPPROTO_RAW: the caller writes the IP header (IP_HDRINCL).
        let sock = tb
            .in_netns(role, || {
                Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))
            })
            .expect("enter the namespace")
            .expect("a raw socket");
        Spoofer { sock }
    }

    fn send(&self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let udp_len = (8 + payload.len()) as u16;
        let total = 20 + udp_len;
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        // id 0 and checksum 0: the kernel fills them in; DF; TTL 64; UDP.
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&src.ip().octets());
        p.extend_from_slice(&dst.ip().octets());
        p.extend_from_slice(&src.port().to_be_bytes());
        p.extend_from_slice(&dst.port().to_be_bytes());
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed on IPv4)
        p.extend_from_slice(payload);
        let to = SocketAddr::V4(SocketAddrV4::new(*dst.ip(), 0));
        let n = self
            .sock
            .send_to(&p, &to.into())
            .expect("send a spoofed datagram");
        assert_eq!(n, p.len());
    }
}

/// Asks a daemon for its statistics line and waits until it contains `what`.
fn stats_contain(child: &Child, what: &str) -> bool {
    // SIGUSR1 can overtake the datagram the test sent just before it (the
    // DC reads a burst of datagrams and then the signal, or the signal
    // first): ask again until a stats line shows it.
    let give_up = Instant::now() + PATIENCE;
    while Instant::now() < give_up {
        child.signal(Signal::SIGUSR1).expect("SIGUSR1");
        let shown = wait_until(Duration::from_millis(250), || {
            child
                .log()
                .lines()
                .any(|l| l.contains("stats:") && l.contains(what))
        });
        if shown {
            return true;
        }
    }
    false
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
    suite: Suite,
    k_tun: Key,
    k_relay: Option<Key>,
}

/// How a datagram is sealed: signaling (suite 1) or a tunnel's cipher.
#[derive(Clone, Copy)]
enum Seal<'a> {
    Auth(&'a Authenticator),
    Cipher(&'a Cipher),
}

/// A node's signaling, by hand: one UDP socket inside a testbed namespace.
struct Client {
    sock: UdpSocket,
    fqdn: &'static str,
    auth: Authenticator,
    local: SocketAddrV4,
    seq: u64,
    node_id: u32,
    /// Every datagram sent, as an attacker on the path would record it.
    sent: Vec<Vec<u8>>,
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
            sent: Vec::new(),
        }
    }

    /// The datagrams of `kind` sent so far.
    fn sent_of(&self, kind: MessageType) -> Vec<Vec<u8>> {
        self.sent
            .iter()
            .filter(|d| Packet::new_checked(&d[..]).is_ok_and(|p| p.msg_type() == kind))
            .cloned()
            .collect()
    }

    fn send_to(
        &mut self,
        dst: SocketAddrV4,
        id: u32,
        message: Message<'_>,
        auth: &Authenticator,
    ) -> Vec<u8> {
        self.send_sealed(dst, id, message, Seal::Auth(auth))
    }

    fn send_sealed(
        &mut self,
        dst: SocketAddrV4,
        id: u32,
        message: Message<'_>,
        seal: Seal<'_>,
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
        let n = match seal {
            Seal::Auth(auth) => repr.emit_sealed(&mut buf, auth),
            Seal::Cipher(cipher) => repr.emit_sealed_with(&mut buf, cipher),
        }
        .expect("emit");
        self.sock.send_to(&buf[..n], dst).expect("send");
        buf.truncate(n);
        self.sent.push(buf.clone());
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
        // A fresh REQ_ID per registration, kept by its retransmissions; only
        // the REG_RESP echoing it answers it.
        let req_id = (self.seq as u32) | 1;
        let lease = self.exchange(
            |c| {
                c.send(Message::RegReq(RegReq {
                    req_id,
                    fqdn: Fqdn::new(fqdn).unwrap(),
                    local_addr: local,
                    caps: Caps::NODE,
                }))
            },
            |r| match r.message {
                Message::RegResp(resp) if resp.req_id == req_id => Some(resp.result),
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
                    suite: r.suite,
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
            req_id: 1,
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
    assert_eq!(
        (mn.suite, resp.suite),
        (Suite::Aes256Gcm, Suite::Aes256Gcm),
        "AES-256-GCM by default"
    );

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

    // A DC restarted on its store still knows both nodes: their next
    // keep-alives are answered as before.
    dc.stop(Duration::from_secs(3)).expect("stop ntm-dc");
    drop(dc);
    let mut dc = start_dc(&tb, &config);
    assert_eq!(cn.keepalive(), Ok(cn_lease.observed));
    assert_eq!(cn2.keepalive(), Ok(cn2_lease.observed));
    assert!(stats_contain(&dc, "errors_sent=0 "), "{}", dc.log());

    // One that lost its state (a memory store) answers the next keep-alive
    // with an authenticated ERROR, and the node gets its VIP back when it
    // re-registers. It now runs `tunnel_suite = 1`, which changes nothing
    // but new tunnels' suite.
    dc.stop(Duration::from_secs(3)).expect("stop ntm-dc");
    drop(dc);
    let mut config = ntm_dc::Config {
        tunnel_suite: 1,
        ..config
    };
    config.store.kind = ntm_dc::config::StoreKind::Memory;
    let dc = start_dc(&tb, &config);
    assert!(
        dc.log().contains("tunnel_suite=hmac-sha256-128"),
        "{}",
        dc.log()
    );
    assert_eq!(cn.keepalive(), Err(Status::NotFound));
    assert_eq!(cn.register().vip, cn_lease.vip);
    assert_eq!(cn2.keepalive(), Err(Status::NotFound));
    assert_eq!(cn2.register().vip, cn2_lease.vip);
    assert_eq!(cn2.keepalive(), Ok(cn2_lease.observed));
    assert!(stats_contain(&dc, "errors_sent=2 "), "{}", dc.log());
    cn2.send_dir_req(9, CN_FQDN);
    let resp = cn.unsolicited_route();
    cn.ack_route(resp.tunnel_id);
    let mn = cn2.answer(9).expect("ROUTE_DIR OK");
    assert_eq!(
        (mn.suite, resp.suite),
        (Suite::HmacSha256_128, Suite::HmacSha256_128)
    );
    assert!(mn.k_tun == resp.k_tun);
}

/// The (send, receive) ciphers of one end of a tunnel: its direction keys
/// derived from `K_tun` (§3), in the tunnel's suite.
fn tunnel_ciphers(k_tun: &Key, suite: Suite, role: TunRole) -> (Cipher, Cipher) {
    let keys = DirectionKeys::derive(k_tun);
    let (tx, rx) = keys.for_role(role).expect("initiator or responder");
    (
        Cipher::new(suite, tx).expect("a supported suite"),
        Cipher::new(suite, rx).expect("a supported suite"),
    )
}

/// Sends DATA (sealed with the sender's direction key in the tunnel's
/// suite) from `from` to the RS until `to` receives exactly those bytes
/// from the RS and opens them with its receive key. With `relay`, both ends
/// bind again (each with its role) before each try; without, the bindings
/// must already be in place.
#[allow(clippy::too_many_arguments)]
fn through_rs(
    (from, from_role): (&mut Client, TunRole),
    (to, to_role): (&mut Client, TunRole),
    tunnel_id: u32,
    relay: Option<&Authenticator>,
    k_tun: &Key,
    suite: Suite,
    payload: &[u8],
) {
    let (tx, _) = tunnel_ciphers(k_tun, suite, from_role);
    let (_, rx) = tunnel_ciphers(k_tun, suite, to_role);
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(relay) = relay {
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
        }
        let sent = from.send_sealed(RS, tunnel_id, Message::Data { payload }, Seal::Cipher(&tx));
        assert_eq!(sent[3], u8::from(suite));
        let until = Instant::now() + Duration::from_millis(500);
        while let Some((src, mut d)) = to.recv(until.saturating_duration_since(Instant::now())) {
            if src == RS && d == sent {
                rx.open(&mut d).expect("the receiver opens it with its key");
                let body = &d[16..d.len() - 16];
                assert_eq!(body, payload);
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
    assert_eq!((ra.suite, rz.suite), (Suite::Aes256Gcm, Suite::Aes256Gcm));
    assert!(stats_contain(&dc, "relay_acks=1 "), "{}", dc.log());

    let relay = Authenticator::new(&k_relay);
    through_rs(
        (&mut a, TunRole::Initiator),
        (&mut z, TunRole::Responder),
        ra.tunnel_id,
        Some(&relay),
        &ra.k_tun,
        ra.suite,
        b"from node to cn2",
    );
    through_rs(
        (&mut z, TunRole::Responder),
        (&mut a, TunRole::Initiator),
        ra.tunnel_id,
        Some(&relay),
        &ra.k_tun,
        ra.suite,
        b"from cn2 to node",
    );

    // A third address with the tunnel id, and an unknown tunnel id: dropped.
    let mut x = Client::new(&tb, Role::Cn, CN_FQDN, SocketAddrV4::new(CN_ADDR, 7700));
    let (tun, _) = tunnel_ciphers(&ra.k_tun, ra.suite, TunRole::Initiator);
    x.send_sealed(
        RS,
        ra.tunnel_id,
        Message::Data {
            payload: b"intruder",
        },
        Seal::Cipher(&tun),
    );
    x.send_sealed(
        RS,
        ra.tunnel_id ^ 1,
        Message::Data { payload: b"lost" },
        Seal::Cipher(&tun),
    );
    assert!(stats_contain(&rs, "unbound_source=1"), "{}", rs.log());
    assert!(stats_contain(&rs, "unknown_tunnel=1"), "{}", rs.log());
}

/// Regression (issue 8, replay of node signaling): cn2's REG_REQ and
/// DIR_REQ, recorded and played back from the cn namespace with spoofed
/// sources (the DIR_REQ verbatim from cn2's public address, the REG_REQ
/// from an address of the attacker's choosing), are dropped as replays by
/// the real ntm-dc: no registration moves, no direction is answered or
/// made again.
#[test]
fn recorded_reg_req_and_dir_req_played_back_from_spoofed_sources_are_refused() {
    let tb = testbed("dcrpl");
    let dc = start_dc(&tb, &dc_config(&tb));
    let mut cn = Client::new(&tb, Role::Cn, CN_FQDN, SocketAddrV4::new(CN_ADDR, 7700));
    cn.register();
    let mut cn2 = Client::new(&tb, Role::Cn2, CN2_FQDN, SocketAddrV4::new(CN2_ADDR, 7700));
    let lease2 = cn2.register();
    cn2.send_dir_req(7, CN_FQDN);
    let resp = cn.unsolicited_route();
    cn.ack_route(resp.tunnel_id);
    let mn = cn2.answer(7).expect("ROUTE_DIR OK");
    assert_eq!(mn.tunnel_id, resp.tunnel_id);
    let reg_req = cn2.sent_of(MessageType::RegReq).pop().unwrap();
    let dir_req = cn2.sent_of(MessageType::DirReq).pop().unwrap();
    let before = stats(&dc);
    assert_eq!(counter(&before, "replay"), 0, "{before}");

    let attacker = Spoofer::new(&tb, Role::Cn);
    let elsewhere = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 7700);
    attacker.send(lease2.observed, DC, &dir_req);
    attacker.send(elsewhere, DC, &reg_req);
    let after = stats_until(&dc, "replay", 2);
    for c in [
        "registrations",
        "renewals",
        "keepalives",
        "dir_reqs",
        "repeats",
        "route_dirs",
        "errors_sent",
    ] {
        assert_eq!(
            counter(&after, c),
            counter(&before, c),
            "{c}: {before}\n{after}"
        );
    }
    assert_eq!(counter(&after, "bad_tag"), 0, "{after}");
    // Nothing but the drop itself mentions the attacker's address.
    assert!(
        dc.log()
            .lines()
            .filter(|l| l.contains("198.18.0.99"))
            .all(|l| l.contains("dropped a datagram") && l.contains("reason=\"replay\"")),
        "{}",
        dc.log()
    );
    // cn2 is registered where it is, and its direction still stands.
    assert_eq!(cn2.keepalive(), Ok(lease2.observed));
    let again = cn2.direction(7, CN_FQDN).expect("the same ROUTE_DIR");
    assert_eq!(again.tunnel_id, mn.tunnel_id);
}

/// Regression (issue 8, replay of RS signaling): the real ntm-rs, driven by
/// this test as the DC (from the dc namespace, with K_rs). A RELAY_DIR
/// recorded before the DC re-keyed the tunnel, played back from the cn
/// namespace with the DC's address as source, and a RELAY_BIND recorded
/// from one end, played back from another (spoofed) address, are dropped
/// as replays: the binding keeps its key and both ends, and DATA still
/// flows between them without binding again.
#[test]
fn recorded_relay_dir_and_relay_bind_played_back_from_spoofed_sources_are_refused() {
    let tb = testbed("rsrpl");
    let rs = start_rs(&tb);
    let sock = tb
        .in_netns(Role::Dc, || UdpSocket::bind(DC))
        .expect("enter the dc namespace")
        .expect("bind the DC's address");
    let k_rs = Authenticator::new(&proto_key(tb.keys().rs()));
    let mut seq = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let tunnel_id = 0x5eed_0001;
    // RELAY_DIR sent once (a datagram on a veth is not lost), then RELAY_ACK.
    let mut relay_dir = |k_relay: &Key| -> Vec<u8> {
        seq += 1;
        let repr = Repr::new(
            Header {
                id: RS_ID,
                seq,
                response_required: true,
            },
            Message::RelayDir(RelayDir {
                tunnel_id,
                wrapped_relay_key: k_rs.wrap_key(WrapLabel::RelayKey, tunnel_id, seq, k_relay),
                lifetime_secs: 180,
            }),
        );
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
        let n = repr.emit_sealed(&mut buf, &k_rs).unwrap();
        buf.truncate(n);
        sock.send_to(&buf, RS).expect("send RELAY_DIR");
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rx = [0u8; MAX_DATAGRAM_LEN];
        let (n, from) = sock.recv_from(&mut rx).expect("RELAY_ACK");
        assert_eq!(from, SocketAddr::V4(RS));
        k_rs.verify(&rx[..n]).expect("RELAY_ACK sealed with K_rs");
        let p = Packet::new_checked(&rx[..n]).unwrap();
        let repr = Repr::parse(&p).unwrap();
        assert!(
            matches!(repr.message, Message::RelayAck(RelayAck { tunnel_id: t }) if t == tunnel_id)
        );
        buf
    };
    let (k_old, k_new) = (Key::from_bytes([0x11; 32]), Key::from_bytes([0x22; 32]));
    let recorded_dir = relay_dir(&k_old);
    // The DC directs the id again with a new K_relay (as a restarted DC may).
    relay_dir(&k_new);

    let mut a = Client::new(
        &tb,
        Role::Ntma,
        NODE_FQDN,
        SocketAddrV4::new(NTMA_WAN_ADDR, 7700),
    );
    let mut z = Client::new(&tb, Role::Cn2, CN2_FQDN, SocketAddrV4::new(CN2_ADDR, 7700));
    let relay = Authenticator::new(&k_new);
    let k_tun = Key::from_bytes([0x33; 32]);
    through_rs(
        (&mut a, TunRole::Initiator),
        (&mut z, TunRole::Responder),
        tunnel_id,
        Some(&relay),
        &k_tun,
        Suite::Aes256Gcm,
        b"bound",
    );
    let recorded_bind = a.sent_of(MessageType::RelayBind).pop().unwrap();
    let before = stats(&rs);
    assert_eq!(counter(&before, "replay"), 0, "{before}");

    let attacker = Spoofer::new(&tb, Role::Cn);
    attacker.send(DC, RS, &recorded_dir);
    attacker.send(
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 40000),
        RS,
        &recorded_bind,
    );
    let after = stats_until(&rs, "replay", 2);
    for c in [
        "bindings",
        "bound_both",
        "relay_dirs",
        "relay_dir_repeats",
        "binds",
    ] {
        assert_eq!(
            counter(&after, c),
            counter(&before, c),
            "{c}: {before}\n{after}"
        );
    }
    // Both ends still bound with the new key: DATA flows, no binding again.
    through_rs(
        (&mut a, TunRole::Initiator),
        (&mut z, TunRole::Responder),
        tunnel_id,
        None,
        &k_tun,
        Suite::Aes256Gcm,
        b"still bound, a to z",
    );
    through_rs(
        (&mut z, TunRole::Responder),
        (&mut a, TunRole::Initiator),
        tunnel_id,
        None,
        &k_tun,
        Suite::Aes256Gcm,
        b"still bound, z to a",
    );
    let last = stats(&rs);
    assert_eq!(counter(&last, "unbound_source"), 0, "{last}");
    assert_eq!(counter(&last, "half_bound"), 0, "{last}");
}
