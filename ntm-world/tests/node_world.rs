//! The NTMobile world on the testbed (issue 3, item 5): DC in dc, RS in rs,
//! software nodes cn and cn2 (and node.ntm.test behind nat1 in the ntma
//! namespace), all real binaries. Each test builds its own testbed; they
//! need root and fail without it.
//!
//! Harness: [`ntm_world::World`] (real binaries: `cargo build --workspace
//! --bins` first; `cargo xtask test` does it) with the DC's keep-alive every
//! 2 s, so that a restarted DC is noticed quickly.
//!
//! Measurements (set-up time, RTTs) are printed with `MEASURED`, never
//! asserted: `cargo test -p ntm-world --test node_world -- --nocapture`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use ntm_testbed::{unique_prefix, wait_until, Role, Signal, CN2_FQDN, CN_FQDN, DC_ADDR, NODE_FQDN};
use ntm_world::capture::udp_payload_on_port;
use ntm_world::{payload, Dig, Node, Ping, World, PATIENCE, UPSTREAM_ANSWER};

/// The world of these tests: the DC sends keep-alives every 2 s.
fn up(tag: &str) -> World {
    up_with(tag, |_| {})
}

/// [`up`] with changes to the DC's configuration.
fn up_with(tag: &str, tweak: impl FnOnce(&mut ntm_dc::Config)) -> World {
    World::up_with(&unique_prefix(tag), |dc| {
        dc.keepalive_secs = 2;
        tweak(dc);
    })
    .expect("these integration tests need root and a working testbed")
}

/// Starts an `ntm-node` in `role`'s namespace registering `fqdn`.
fn start_node(w: &World, role: Role, fqdn: &str) -> Node {
    w.node(role, fqdn).expect("start ntm-node")
}

/// Starts cn's and cn2's nodes and waits for their registration: the nodes
/// and their VIPs.
fn cn_and_cn2(w: &World) -> (Node, Node, Ipv4Addr, Ipv4Addr) {
    let mut cn = start_node(w, Role::Cn, CN_FQDN);
    let mut cn2 = start_node(w, Role::Cn2, CN2_FQDN);
    let cn_vip = cn.registered().unwrap();
    let cn2_vip = cn2.registered().unwrap();
    (cn, cn2, cn_vip, cn2_vip)
}

/// Runs a command in `role`'s namespace and returns its stdout; panics
/// with its stderr on failure.
fn sh(w: &World, role: Role, script: &str) -> String {
    w.sh(role, script).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `dig @<server> name A` in `role`'s namespace, one try.
fn dig(w: &World, role: Role, server: &str, name: &str) -> Dig {
    w.dig(role, server, name)
        .unwrap_or_else(|e| panic!("dig {name} in {role}: {e:#}"))
}

/// `ping -c count` from `role` to `dst`; panics when nothing came back.
fn ping(w: &World, role: Role, dst: Ipv4Addr, count: u32) -> Ping {
    let p = w
        .ping(role, dst, count)
        .unwrap_or_else(|e| panic!("ping {dst} from {role}: {e:#}"));
    assert!(
        p.received > 0,
        "no ping reply from {dst} in {role}: {}",
        p.output
    );
    p
}

/// Resolves `peer_fqdn` from `node`'s namespace through its stub and waits
/// until the tunnel is up at `node`; returns (peer VIP, dig answer).
fn connect(w: &World, node: &mut Node, peer_fqdn: &str) -> (Ipv4Addr, Dig) {
    let d = dig(w, node.role, "127.0.0.1", peer_fqdn);
    assert_eq!(d.status, "NOERROR", "{peer_fqdn}: {d:?}");
    assert_eq!(d.a.len(), 1, "{peer_fqdn}: {d:?}");
    let vip = d.a[0];
    node.wait(&format!("tunnel to {peer_fqdn} up"), |s| {
        s.tunnel_to(peer_fqdn).is_some()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    (vip, d)
}

/// One A query for `name` to the stub at 127.0.0.1:53 in `role`'s
/// namespace, timed to the microsecond (dig prints whole ms). Returns
/// (time from query to answer, the A records).
fn timed_a_query(w: &World, role: Role, name: &str) -> (Duration, Vec<Ipv4Addr>) {
    let (took, a, _rcode) = w
        .timed_a_query(role, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53), name)
        .unwrap_or_else(|e| panic!("A query for {name} in {role}: {e:#}"));
    (took, a)
}

/// The `skmem` fields (rb, tb, d, ...) of the UDP socket on `port` in
/// `role`'s namespace, as `ss -m` shows them.
fn udp_skmem(w: &World, role: Role, port: u16) -> std::collections::HashMap<String, usize> {
    let out = sh(w, role, &format!("ss -uamnH 'sport = :{port}'"));
    let fields = out
        .split_once("skmem:(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(f, _)| f)
        .unwrap_or_else(|| panic!("no skmem for UDP port {port}: {out}"));
    fields
        .split(',')
        .filter_map(|f| {
            let digits = f.find(|c: char| c.is_ascii_digit())?;
            let (name, value) = f.split_at(digits);
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// nc transfer of `data` from `from` to `to_vip` (listening in `to`).
fn nc_transfer(w: &World, to: Role, to_vip: Ipv4Addr, from: Role, data: &[u8], tag: &str) {
    let got = w
        .nc_transfer(to, to_vip, from, 5001, data, tag)
        .unwrap_or_else(|e| panic!("{tag}: {e:#}"));
    assert_eq!(got.len(), data.len(), "{tag}: bytes received");
    assert!(got == data, "{tag}: payload differs");
}

/// cn and cn2 register; a stock DNS client in cn2 resolves cn.ntm.test to
/// cn's VIP through cn2's stub; ping and nc run through the tunnel both
/// ways; names outside the NTM suffix are forwarded upstream; unknown NTM
/// names get NXDOMAIN.
#[test]
fn resolve_ping_and_tcp_both_ways() {
    let w = up("nodedns");
    let (mut cn, mut cn2, cn_vip, cn2_vip) = cn_and_cn2(&w);
    assert_ne!(cn_vip, cn2_vip);
    let st = cn2.wait("behind NAT", |s| s.behind_nat.is_some()).unwrap();
    assert_eq!(st.behind_nat, Some(true), "cn2 sits behind nat2");
    assert_eq!(cn.status().and_then(|s| s.behind_nat), Some(false));

    // The VIP is on the TUN device with its prefix route and MTU 1440.
    let addr = sh(
        &w,
        Role::Cn2,
        "ip -o -4 addr show dev ntm0; ip -o link show dev ntm0",
    );
    assert!(addr.contains(&format!("{cn2_vip}/10")), "{addr}");
    assert!(addr.contains("mtu 1440"), "{addr}");
    let route = sh(&w, Role::Cn2, "ip -4 route show 100.64.0.0/10");
    assert!(route.contains("dev ntm0"), "{route}");

    // Set-up: the DNS query triggers DIR_REQ; its answer is the peer's VIP.
    let (vip, d) = connect(&w, &mut cn2, CN_FQDN);
    assert_eq!(vip, cn_vip);
    let first = ping(&w, Role::Cn2, cn_vip, 1);
    let p = ping(&w, Role::Cn2, cn_vip, 10);
    eprintln!(
        "MEASURED tunnel set-up (cn2 -> cn, DNS query to answer, dig): {:?} ms; first ping right after (TUN_REQ/TUN_RESP done by then): {:?}",
        d.query_ms, first.rtt
    );
    eprintln!(
        "MEASURED ping RTT direct tunnel cn2 -> cn (min/avg/max ms): {:?}, {}/{} received",
        p.rtt, p.received, p.sent
    );
    let path = cn2
        .status()
        .unwrap()
        .tunnel_to(CN_FQDN)
        .unwrap()
        .path
        .clone();
    assert!(path == "direct" || path == "reverse", "{path}");

    // The other way: cn resolves cn2 (the tunnel exists: answered at once).
    let (vip, d2) = connect(&w, &mut cn, CN2_FQDN);
    assert_eq!(vip, cn2_vip);
    let p2 = ping(&w, Role::Cn, cn2_vip, 5);
    eprintln!(
        "MEASURED cn -> cn2 over the existing tunnel: dig {:?} ms, ping {:?}",
        d2.query_ms, p2.rtt
    );

    // A third node behind nat1 (ntma namespace) to cn: a DIRECT path,
    // set up from scratch and timed to the microsecond.
    sh(&w, Role::Ntma, "ip addr flush dev lan0"); // no adapter here: free the VIP prefix
    let mut node = start_node(&w, Role::Ntma, NODE_FQDN);
    node.registered().unwrap();
    let (took, a) = timed_a_query(&w, Role::Ntma, CN_FQDN);
    assert_eq!(a, vec![cn_vip]);
    let first = ping(&w, Role::Ntma, cn_vip, 1);
    eprintln!(
        "MEASURED tunnel set-up (direct, node -> cn): DNS query to answer {:.3} ms; first ping RTT right after the answer {:?} ms",
        took.as_secs_f64() * 1e3,
        first.rtt.map(|r| r.0)
    );
    let st = node
        .wait("tunnel to cn", |s| s.tunnel_to(CN_FQDN).is_some())
        .unwrap();
    assert_eq!(st.tunnel_to(CN_FQDN).unwrap().path, "direct");

    // TCP both ways.
    let data = payload(1 << 20, 7);
    nc_transfer(&w, Role::Cn, cn_vip, Role::Cn2, &data, "cn2-to-cn");
    let data = payload(1 << 20, 8);
    nc_transfer(&w, Role::Cn2, cn2_vip, Role::Cn, &data, "cn-to-cn2");

    // The tunnel sockets got socket_buffer (Linux reports it doubled),
    // unless the kernel's caps are lower. Their drops are only printed.
    let want = ntm_node::config::DEFAULT_SOCKET_BUFFER;
    for role in [Role::Cn, Role::Cn2] {
        let m = udp_skmem(&w, role, ntm_node::config::DEFAULT_PORT);
        let cap = |name: &str| -> usize {
            let v = sh(&w, role, &format!("cat /proc/sys/net/core/{name}"));
            v.trim().parse().expect("a number")
        };
        assert_eq!(m.get("rb"), Some(&(2 * want.min(cap("rmem_max")))), "{m:?}");
        assert_eq!(m.get("tb"), Some(&(2 * want.min(cap("wmem_max")))), "{m:?}");
        eprintln!(
            "MEASURED {role:?} UDP socket after 2 MiB of TCP both ways: {:?} datagrams dropped (skmem {m:?})",
            m.get("d")
        );
    }

    // Other names go upstream and the answer comes back.
    let fwd = dig(&w, Role::Cn2, "127.0.0.1", "www.example.org");
    assert_eq!(fwd.status, "NOERROR", "{fwd:?}");
    assert_eq!(fwd.a, vec![UPSTREAM_ANSWER], "{fwd:?}");
    // Unknown NTM names: the DC says NOT_FOUND.
    let nx = dig(&w, Role::Cn2, "127.0.0.1", "nobody.ntm.test");
    assert_eq!(nx.status, "NXDOMAIN", "{nx:?}");

    let st = cn2
        .wait("counters", |s| {
            s.packet_count("dns_relay") >= 1 && s.packet_count("dns_nxdomain") >= 1
        })
        .unwrap();
    assert!(st.packet_count("data_tx") > 0 && st.packet_count("data_rx") > 0);
    assert_eq!(st.drop_count("inner_addr"), 0);

    // SIGTERM: DEREG, a clean exit, and the DC forgets the registration.
    let status = cn2.child.stop(PATIENCE).expect("stop cn2");
    assert!(
        status.success(),
        "ntm-node exits cleanly on SIGTERM: {status}"
    );
    assert!(cn2.child.log().contains("deregistering"));
    let dc = w.dc.as_ref().expect("DC runs");
    assert!(
        wait_until(PATIENCE, || dc.log().contains("deregistered")
            && dc.log().contains(CN2_FQDN)),
        "the DC saw no DEREG"
    );
}

/// A tunnel that expired (nothing received for its lifetime, 3 s here)
/// is set up again by the next packet to its peer, which waits in the hold
/// queue meanwhile.
#[test]
fn expired_tunnel_comes_back_for_a_packet() {
    let w = up_with("nodeexp", |dc| dc.tunnel_lifetime_secs = 3);
    let (mut cn, mut cn2, cn_vip, _) = cn_and_cn2(&w);
    connect(&w, &mut cn2, CN_FQDN);
    ping(&w, Role::Cn2, cn_vip, 1);
    // Idle for longer than the lifetime (keep-alives come every 20 s).
    cn2.wait("tunnel expired", |s| {
        s.tunnels.is_empty() && s.packet_count("tunnels_down") >= 1
    })
    .unwrap();
    cn.wait("tunnel expired", |s| s.tunnels.is_empty()).unwrap();
    let before = cn2.status().unwrap().packet_count("released");
    let p = ping(&w, Role::Cn2, cn_vip, 3);
    assert!(p.received > 0);
    let st = cn2
        .wait("tunnel back", |s| s.tunnel_to(CN_FQDN).is_some())
        .unwrap();
    assert!(
        st.packet_count("released") > before,
        "the first packet waited for the new tunnel: {:?}",
        st.packets
    );
    assert!(st.packet_count("tunnels_up") >= 2);
    assert_eq!(st.drop_count("no_route"), 0);
}

/// A node behind nat1 (in the ntma namespace) and cn2 behind nat2 talk
/// through the RS.
#[test]
fn relay_between_two_nats() {
    let w = up("noderelay");
    // The adapter is not running here: its lan0 holds the VIP prefix
    // (100.64.0.1/10), which would take the node's return traffic.
    sh(&w, Role::Ntma, "ip addr flush dev lan0");
    let mut node = start_node(&w, Role::Ntma, NODE_FQDN);
    let mut cn2 = start_node(&w, Role::Cn2, CN2_FQDN);
    let node_vip = node.registered().unwrap();
    let cn2_vip = cn2.registered().unwrap();
    node.wait("behind NAT", |s| s.behind_nat == Some(true))
        .unwrap();
    cn2.wait("behind NAT", |s| s.behind_nat == Some(true))
        .unwrap();

    // Timed to the microsecond: DNS query to answer (DIR_REQ, RELAY_DIR,
    // ROUTE_DIR), then the first ping, which waits in the hold queue for
    // RELAY_BIND and TUN_REQ/TUN_RESP through the RS.
    let (took, a) = timed_a_query(&w, Role::Cn2, NODE_FQDN);
    assert_eq!(a, vec![node_vip]);
    let first = ping(&w, Role::Cn2, node_vip, 1);
    eprintln!(
        "MEASURED tunnel set-up (relay, cn2 -> node): DNS query to answer {:.3} ms; first ping RTT right after the answer {:?} ms",
        took.as_secs_f64() * 1e3,
        first.rtt.map(|r| r.0)
    );
    let (vip, _) = connect(&w, &mut cn2, NODE_FQDN);
    assert_eq!(vip, node_vip);
    let t = cn2.status().unwrap();
    let t = t.tunnel_to(NODE_FQDN).unwrap();
    assert_eq!(t.path, "relay");
    assert_eq!(t.endpoint.ip(), &ntm_testbed::RS_ADDR);
    let p = ping(&w, Role::Cn2, node_vip, 10);
    eprintln!(
        "MEASURED ping RTT relayed tunnel cn2 -> node (min/avg/max ms): {:?}, {}/{} received",
        p.rtt, p.received, p.sent
    );
    node.wait("relay tunnel up at the responder", |s| {
        s.tunnel_to(CN2_FQDN).is_some_and(|t| t.path == "relay")
    })
    .unwrap();
    let p = ping(&w, Role::Ntma, cn2_vip, 5);
    assert!(p.received > 0);
    let data = payload(256 << 10, 9);
    nc_transfer(&w, Role::Ntma, node_vip, Role::Cn2, &data, "relay-tcp");
}

/// A forged, a replayed and a truncated DATA datagram are each dropped and
/// counted by reason; the tunnel keeps working.
#[test]
fn forged_replayed_truncated_data_are_dropped_by_reason() {
    let w = up("nodedrops");
    let (mut cn, mut cn2, cn_vip, _) = cn_and_cn2(&w);
    connect(&w, &mut cn2, CN_FQDN);

    // Capture genuine DATA from cn2 to cn on cn's side.
    let dump = w
        .capture(
            Role::Cn,
            "eth0",
            "udp dst port 7700 and src host 198.18.0.11",
            3,
            "nodedrops",
        )
        .expect("start tcpdump");
    ping(&w, Role::Cn2, cn_vip, 3);
    // It stops by itself after three datagrams.
    let captured: Vec<Vec<u8>> = dump
        .finish_when_full()
        .expect("tcpdump saw the DATA")
        .iter()
        .filter_map(|f| udp_payload_on_port(f, 7700).map(<[u8]>::to_vec))
        .collect();
    let data = captured
        .iter()
        .find(|p| p.len() > 32 + 20 && p[0] == 2 && p[1] == 0x01)
        .expect("a DATA datagram was captured")
        .clone();
    assert_eq!(data[3], 2, "suite 2 by default");

    let before = cn.wait("status", |_| true).unwrap();
    let count = |s: &ntm_node::Status| {
        (
            s.drop_count("bad_tag"),
            s.drop_count("replay"),
            s.drop_count("truncated"),
        )
    };
    let base = count(&before);

    // Sent from the dc namespace (an off-path attacker's address).
    let sock =
        w.tb.in_netns(Role::Dc, || UdpSocket::bind((DC_ADDR, 0)))
            .expect("enter dc")
            .expect("bind");
    let cn_port = SocketAddr::from((ntm_testbed::CN_ADDR, 7700));
    let mut forged = data.clone();
    forged[16 + 20] ^= 0x55; // inner payload changed, tag kept
    sock.send_to(&forged, cn_port).unwrap();
    sock.send_to(&data, cn_port).unwrap(); // replayed: cn took this seq already
    sock.send_to(&data[..20], cn_port).unwrap(); // truncated
    let after = cn
        .wait("drops counted", |s| {
            let c = count(s);
            c.0 > base.0 && c.1 > base.1 && c.2 > base.2
        })
        .unwrap();
    assert_eq!(count(&after), (base.0 + 1, base.1 + 1, base.2 + 1));
    // The SIGUSR1 log line carries them too.
    cn.child.signal(Signal::SIGUSR1).expect("SIGUSR1");
    assert!(wait_until(PATIENCE, || {
        let log = cn.child.log();
        log.contains("bad_tag=1") && log.contains("replay=1") && log.contains("truncated=1")
    }));
    // Nothing moved: the peer's endpoint is still nat2, the tunnel still works.
    let t = after.tunnel_to(CN2_FQDN).unwrap();
    assert_eq!(t.endpoint.ip(), &ntm_testbed::NAT2_WAN_ADDR);
    ping(&w, Role::Cn2, cn_vip, 2);
}

/// Restarting the DC does not break established tunnels: ping keeps
/// working while it is down, and the nodes register again.
#[test]
fn dc_restart_keeps_tunnels() {
    // A DC that lost its state (memory store): the nodes are told to
    // register again (tests/dc_restart.rs: one that kept it).
    let mut w = up_with("nodedcre", |dc| {
        dc.store.kind = ntm_dc::config::StoreKind::Memory;
    });
    let (mut cn, mut cn2, cn_vip, cn2_vip) = cn_and_cn2(&w);
    connect(&w, &mut cn2, CN_FQDN);
    ping(&w, Role::Cn2, cn_vip, 2);
    let tunnel = cn2.status().unwrap().tunnel_to(CN_FQDN).unwrap().id;
    let regs = |n: &Node| n.status().map_or(0, |s| s.packet_count("registrations"));
    let (r1, r2) = (regs(&cn), regs(&cn2));

    w.stop_dc().expect("stop ntm-dc");
    let p = ping(&w, Role::Cn2, cn_vip, 5);
    assert_eq!(
        p.received,
        p.sent,
        "the tunnel does not need the DC: {}\ncn2: {:?}\ncn: {:?}",
        p.output,
        cn2.status(),
        cn.status()
    );
    // A new name cannot be resolved without the DC: SERVFAIL once the
    // DIR_REQ retransmissions (7.75 s) are exhausted.
    let sf = dig(&w, Role::Cn2, "127.0.0.1", NODE_FQDN);
    assert_eq!(sf.status, "SERVFAIL", "{sf:?}");
    w.start_dc().expect("start ntm-dc");
    cn.wait("registered again", |s| {
        s.packet_count("registrations") > r1 && s.vip == Some(cn_vip)
    })
    .unwrap();
    cn2.wait("registered again", |s| {
        s.packet_count("registrations") > r2 && s.vip == Some(cn2_vip)
    })
    .unwrap();
    let p = ping(&w, Role::Cn2, cn_vip, 5);
    assert!(p.received > 0);
    let st = cn2.status().unwrap();
    assert_eq!(
        st.tunnel_to(CN_FQDN).map(|t| t.id),
        Some(tunnel),
        "same tunnel"
    );
    // And new directions work with the restarted DC.
    let (vip, _) = connect(&w, &mut cn, CN2_FQDN);
    assert_eq!(vip, cn2_vip);
}

/// Changing cn2's real address keeps an open TCP connection alive: cn2
/// re-registers and tells cn its new address with an authenticated
/// keep-alive, and cn follows it (roaming).
#[test]
fn roaming_keeps_tcp_open() {
    let w = up("noderoam");
    let (mut cn, mut cn2, cn_vip, _) = cn_and_cn2(&w);
    connect(&w, &mut cn2, CN_FQDN);

    let listener =
        w.tb.in_netns(Role::Cn, || TcpListener::bind((cn_vip, 5002)))
            .expect("enter cn")
            .expect("listen on cn's VIP");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    });
    let mut client =
        w.tb.in_netns(Role::Cn2, || {
            TcpStream::connect_timeout(&SocketAddr::from((cn_vip, 5002)), PATIENCE)
        })
        .expect("enter cn2")
        .expect("connect to cn's VIP");
    client.set_write_timeout(Some(PATIENCE)).unwrap();
    let data = payload(512 << 10, 11);
    let (first, second) = data.split_at(data.len() / 2);
    client.write_all(first).expect("first half");

    let old = cn
        .wait("tunnel", |s| s.tunnel_to(CN2_FQDN).is_some())
        .unwrap()
        .tunnel_to(CN2_FQDN)
        .unwrap()
        .endpoint;
    // cn2 moves to another address on its LAN; nat2 maps it anew.
    sh(
        &w,
        Role::Cn2,
        "ip addr del 192.168.20.2/24 dev eth0 && ip addr add 192.168.20.3/24 dev eth0 \
         && ip route replace default via 192.168.20.1",
    );
    cn2.wait("new local address", |s| {
        s.local_addr.ip() == &Ipv4Addr::new(192, 168, 20, 3)
    })
    .unwrap();
    let moved = cn
        .wait("peer followed", |s| {
            s.tunnel_to(CN2_FQDN).is_some_and(|t| t.endpoint != old)
        })
        .unwrap();
    client
        .write_all(second)
        .expect("second half, after the move");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let got = server.join().expect("server thread").expect("read to EOF");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "payload differs");
    eprintln!(
        "roaming: cn saw cn2 move from {old} to {}",
        moved.tunnel_to(CN2_FQDN).unwrap().endpoint
    );
    cn2.wait("registered from the new address", |s| {
        s.packet_count("registrations") >= 2
    })
    .unwrap();
}
