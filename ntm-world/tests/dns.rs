//! DNS at the router address with stock clients and a real upstream resolver
//! (issue 15): dnsmasq in the dc namespace, `dig`, `host` and glibc's
//! `getent` in the gn namespace (its resolv.conf names 100.64.0.1). DNS over
//! TCP (RFC 7766) for NTM and forwarded names, pipelined queries, answers
//! too big for UDP (truncated, then asked again over TCP), and the bounds on
//! TCP connections. Each test builds its own testbed with the real binaries
//! (`cargo build --workspace --bins` first; `cargo xtask test` does it).
//! They need root and dnsmasq (`cargo xtask setup`), and fail without.
//!
//! Timings are printed with `MEASURED`, never asserted:
//! `cargo test -p ntm-world --test dns -- --nocapture`.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use ntm_testbed::Child;
use ntm_world::dns::{query, Zone, DNSMASQ};
use ntm_world::{Node, Ntma, Role, World, CN_FQDN, NTMA_LAN_ADDR, PATIENCE};

/// A forwarded name with one A record.
const FWD: &str = "fwd.example.net";
const FWD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// A name with a 2.5 KB TXT record (10 strings of 250 bytes).
const TXT: &str = "txt.example.net";
/// A name with 120 A records (about 1970 bytes of answer).
const MANY: &str = "many.example.net";
const MANY_COUNT: u16 = 120;
/// The router address's DNS port.
const ROUTER_DNS: SocketAddrV4 = SocketAddrV4::new(NTMA_LAN_ADDR, 53);

fn txt_strings() -> Vec<String> {
    (0..10u8)
        .map(|i| char::from(b'a' + i).to_string().repeat(250))
        .collect()
}

/// The testbed, dnsmasq as the adapter's upstream, the adapter, the GN
/// leased (and cn, if asked). Fields drop in order: the world last.
struct Setup {
    ntma: Ntma,
    cn: Option<(Node, Ipv4Addr)>,
    _upstream: Child,
    w: World,
}

fn setup(tag: &str, with_cn: bool, tweak: impl FnOnce(&mut ntma_user::config::Config)) -> Setup {
    let w = World::up(tag).expect("these integration tests need root and a working testbed");
    let zone = Zone::default()
        .a(FWD, FWD_ADDR)
        .many_a(MANY, MANY_COUNT)
        .txt(TXT, &txt_strings());
    let upstream = w.dnsmasq(&zone).unwrap();
    let cn = with_cn.then(|| w.node(Role::Cn, CN_FQDN).unwrap());
    let mut ntma = w
        .ntma(|c| {
            c.dns.upstream = DNSMASQ;
            tweak(c);
        })
        .unwrap();
    let cn = cn.map(|mut cn| {
        let vip = cn.registered().unwrap();
        (cn, vip)
    });
    let gn_vip = ntma.registered().unwrap();
    assert_eq!(w.dhclient().unwrap(), gn_vip);
    Setup {
        ntma,
        cn,
        _upstream: upstream,
        w,
    }
}

/// A TCP connection to the router address's DNS kept open across queries.
struct OpenConn(TcpStream);

impl OpenConn {
    fn new(w: &World) -> OpenConn {
        OpenConn::timed(w).0
    }

    /// A new one, and how long its connect took (ms).
    fn timed(w: &World) -> (OpenConn, f64) {
        let (took, c) =
            w.tb.in_netns(Role::Gn, || {
                let t0 = Instant::now();
                let c = TcpStream::connect_timeout(&ROUTER_DNS.into(), PATIENCE);
                (t0.elapsed(), c)
            })
            .unwrap();
        let c = c.unwrap();
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        c.set_nodelay(true).unwrap();
        (OpenConn(c), took.as_secs_f64() * 1e3)
    }

    /// Query to answer (checked to carry `id`), in ms.
    fn ask(&mut self, q: &[u8], id: u16) -> f64 {
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(q);
        let t0 = Instant::now();
        self.0.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        self.0.read_exact(&mut len).unwrap();
        let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
        self.0.read_exact(&mut m).unwrap();
        let took = t0.elapsed().as_secs_f64() * 1e3;
        assert_eq!(u16::from_be_bytes([m[0], m[1]]), id);
        took
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `dig +tcp` of an NTM name (cn running) and of a forwarded name; several
/// queries pipelined on one connection, answered each with its own id; the
/// timings over TCP (and UDP, for comparison).
#[test]
fn tcp_answers_ntm_and_forwarded_names_and_pipelined_queries() {
    let mut s = setup("dnst", true, |_| {});
    let w = &s.w;
    let cn_vip = s.cn.as_ref().unwrap().1;

    // The first query for cn sets the tunnel up before it is answered.
    let (took, a) = w
        .tcp_queries(Role::Gn, ROUTER_DNS, &[query(CN_FQDN, RecordType::A, 9)])
        .unwrap();
    assert_eq!(a[0].metadata.id, 9);
    eprintln!(
        "MEASURED NTM name over TCP, tunnel set up by this query: {:.2} ms",
        took.as_secs_f64() * 1e3
    );
    let (d, out) = w
        .dig_with(Role::Gn, NTMA_LAN_ADDR, "+tcp", CN_FQDN, "A")
        .unwrap();
    assert_eq!(
        (d.status.as_str(), d.a.clone()),
        ("NOERROR", vec![cn_vip]),
        "{out}"
    );
    assert!(out.contains("(TCP)"), "{out}");
    let (d, out) = w
        .dig_with(Role::Gn, NTMA_LAN_ADDR, "+tcp", FWD, "A")
        .unwrap();
    assert_eq!(
        (d.status.as_str(), d.a.clone()),
        ("NOERROR", vec![FWD_ADDR]),
        "{out}"
    );
    s.ntma
        .wait("tunnel to cn up", |st| {
            st.tunnel_to(CN_FQDN).is_some_and(|t| t.up)
        })
        .unwrap();

    // Pipelined on one connection: an NTM name, a forwarded one, one too
    // big for UDP, one answered at once, one the DC says nothing about.
    let queries = [
        query(CN_FQDN, RecordType::A, 1),
        query(FWD, RecordType::A, 2),
        query(MANY, RecordType::A, 3),
        query(CN_FQDN, RecordType::AAAA, 4),
        query("nobody.ntm.test", RecordType::A, 5),
    ];
    let (took, answers) = w.tcp_queries(Role::Gn, ROUTER_DNS, &queries).unwrap();
    let order: Vec<u16> = answers.iter().map(|m| m.metadata.id).collect();
    let by_id: HashMap<u16, _> = answers.into_iter().map(|m| (m.metadata.id, m)).collect();
    assert_eq!(by_id.len(), 5, "one answer per query: {order:?}");
    let a_of = |id: u16| -> Vec<Ipv4Addr> {
        by_id[&id]
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    };
    assert_eq!(a_of(1), vec![cn_vip]);
    assert_eq!(a_of(2), vec![FWD_ADDR]);
    let many: BTreeSet<Ipv4Addr> = a_of(3).into_iter().collect();
    assert_eq!(many.len(), usize::from(MANY_COUNT), "whole over TCP");
    assert!(!by_id[&3].metadata.truncation);
    assert!(by_id[&4].answers.is_empty());
    assert_eq!(by_id[&4].metadata.response_code, ResponseCode::NoError);
    assert_eq!(by_id[&5].metadata.response_code, ResponseCode::NXDomain);
    eprintln!(
        "MEASURED 5 pipelined queries on one TCP connection: {:.1} ms, answers in the order {order:?}",
        took.as_secs_f64() * 1e3
    );

    // Timings, medians of 20: dig +tcp (its own whole-ms query time), and
    // timed here to the microsecond: a new TCP connection per query
    // (connect, query, answer), one query on a connection kept open, UDP.
    let mut open = OpenConn::new(w);
    let mut rows = Vec::new();
    for (name, what) in [(CN_FQDN, "NTM name (tunnel up)"), (FWD, "forwarded name")] {
        let (mut dig, mut fresh, mut kept, mut udp) = (vec![], vec![], vec![], vec![]);
        for i in 0..20u16 {
            let (d, out) = w
                .dig_with(Role::Gn, NTMA_LAN_ADDR, "+tcp", name, "A")
                .unwrap();
            assert_eq!(d.status, "NOERROR", "{out}");
            dig.push(d.query_ms.expect("dig's query time") as f64);
            let (t, a) = w
                .tcp_queries(Role::Gn, ROUTER_DNS, &[query(name, RecordType::A, 100 + i)])
                .unwrap();
            assert_eq!(a[0].metadata.id, 100 + i);
            fresh.push(t.as_secs_f64() * 1e3);
            kept.push(open.ask(&query(name, RecordType::A, 200 + i), 200 + i));
            let (t, a, rcode) = w.timed_a_query(Role::Gn, ROUTER_DNS, name).unwrap();
            assert!(!a.is_empty(), "{rcode}");
            udp.push(t.as_secs_f64() * 1e3);
        }
        rows.push((what, median(dig), median(fresh), median(kept), median(udp)));
    }
    eprintln!("MEASURED DNS at the router address from gn, medians of 20 (ms):");
    eprintln!(
        "MEASURED | name | dig +tcp (dig, whole ms) | TCP new connection | TCP open connection | UDP |"
    );
    for (what, dig, fresh, kept, udp) in rows {
        eprintln!("MEASURED | {what} | {dig:.0} | {fresh:.2} | {kept:.2} | {udp:.2} |");
    }
    // Where a new connection's time goes: the connect, then its first query.
    let (mut connect, mut first) = (vec![], vec![]);
    for i in 0..20u16 {
        let (mut c, t) = OpenConn::timed(w);
        connect.push(t);
        first.push(c.ask(&query(CN_FQDN, RecordType::A, 300 + i), 300 + i));
    }
    eprintln!(
        "MEASURED TCP connect alone {:.2} ms, then the first query on it {:.2} ms (medians of 20)",
        median(connect),
        median(first)
    );
    let st = s.ntma.status().unwrap();
    assert!(
        st.stat("dns_tcp_accepted") >= 43,
        "{:?}",
        st.slow_path.stats
    );
    assert!(st.stat("dns_forward_tcp") >= 22, "{:?}", st.slow_path.stats);
    for reason in [
        "dns_tcp_reset",
        "dns_tcp_gone",
        "dns_tcp_send_failed",
        "dns_upstream_timeout",
    ] {
        assert_eq!(st.drop_count(reason), 0, "{reason}: {:?}", st.drops());
    }
    let text = s.ntma.status_text().unwrap();
    assert!(text.contains("dns_tcp_accepted="), "{text}");
}

/// Answers too big for what the client takes over UDP come back truncated,
/// and the stock clients ask again over TCP: `host -t TXT` of a 2.5 KB
/// record, `getent ahostsv4` (glibc, no EDNS: 512 bytes) and
/// `dig +bufsize=4096` (4096 asked, capped at the MTU - 28 = 1412) of a name
/// with 120 A records.
#[test]
fn big_answers_come_truncated_over_udp_and_whole_over_tcp() {
    let mut s = setup("dnsbig", false, |_| {});
    let w = &s.w;
    let before = s.ntma.status().unwrap();

    let out = w.sh(Role::Gn, &format!("host -t TXT {TXT}")).unwrap();
    for t in txt_strings() {
        assert!(out.contains(&t), "every string of the TXT record: {out}");
    }

    let out = w.sh(Role::Gn, &format!("getent ahostsv4 {MANY}")).unwrap();
    let got: BTreeSet<Ipv4Addr> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let want: BTreeSet<Ipv4Addr> = (0..MANY_COUNT).map(Zone::many_addr).collect();
    assert_eq!(got, want, "{out}");

    let (d, out) = w
        .dig_with(Role::Gn, NTMA_LAN_ADDR, "+bufsize=4096", MANY, "A")
        .unwrap();
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert_eq!(d.status, "NOERROR", "{out}");
    let got: BTreeSet<Ipv4Addr> = d.a.into_iter().collect();
    assert_eq!(got, want, "{out}");

    // The adapter cut the 4096-byte client's answer itself (dnsmasq cut the
    // others at their 512 bytes), and every client came back over TCP.
    let st = s
        .ntma
        .wait("the TCP retries counted", |st| {
            st.stat("dns_tcp_queries") >= before.stat("dns_tcp_queries") + 3
        })
        .unwrap();
    assert!(
        st.stat("dns_truncated") > before.stat("dns_truncated"),
        "{:?}",
        st.slow_path.stats
    );
    assert!(st.stat("dns_forward_tcp") >= before.stat("dns_forward_tcp") + 3);
    assert_eq!(st.drop_count("dns_upstream_timeout"), 0, "{:?}", st.drops());
    eprintln!(
        "MEASURED dig +bufsize=4096 of {MANY_COUNT} A records, UDP then TCP: {:?} ms",
        d.query_ms
    );
}

/// Connections are bounded in number (2 here) and idle time (2 s here),
/// taken only from the GN's VIP, and each refusal and close is counted.
#[test]
fn tcp_connections_are_bounded_idle_closed_and_from_the_gn_only() {
    let mut s = setup("dnsconn", false, |c| {
        c.dns.tcp_max_connections = 2;
        c.dns.tcp_idle_timeout_secs = 2;
    });
    let w = &s.w;
    let connect = || {
        let c =
            w.tb.in_netns(Role::Gn, || {
                TcpStream::connect_timeout(&ROUTER_DNS.into(), PATIENCE)
            })
            .unwrap()
            .expect("the kernel accepts every connection");
        c.set_read_timeout(Some(PATIENCE)).unwrap();
        c
    };
    // Closed by the other end: the read sees the end (or a reset).
    let closed = |c: &mut TcpStream| -> Duration {
        let t0 = Instant::now();
        let mut b = [0u8; 16];
        loop {
            match c.read(&mut b) {
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                // The children other tests run signal this process.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => panic!("expected the adapter to close the connection: {other:?}"),
            }
        }
        t0.elapsed()
    };
    let mut a = connect();
    let mut b = connect();
    s.ntma
        .wait("two DNS TCP connections open", |st| {
            st.stat("dns_tcp_open") == 2
        })
        .unwrap();
    let mut third = connect();
    closed(&mut third);
    let st = s
        .ntma
        .wait("the third refused", |st| {
            st.drop_count("dns_tcp_too_many") == 1
        })
        .unwrap();
    assert_eq!(st.stat("dns_tcp_open"), 2);

    let idle_a = closed(&mut a);
    closed(&mut b);
    let st = s
        .ntma
        .wait("both closed as idle", |st| {
            st.stat("dns_tcp_closed_idle") == 2 && st.stat("dns_tcp_open") == 0
        })
        .unwrap();
    eprintln!(
        "MEASURED idle DNS TCP connection closed {:.2} s after the refused one (idle timeout 2 s)",
        idle_a.as_secs_f64()
    );
    assert_eq!(st.stat("dns_tcp_accepted"), 2);

    // Room again: a new connection is answered.
    let (_, a) = w
        .tcp_queries(Role::Gn, ROUTER_DNS, &[query(FWD, RecordType::A, 7)])
        .unwrap();
    assert_eq!(a[0].metadata.id, 7);

    // From another address on the GN's segment: refused.
    let other = Ipv4Addr::new(100, 64, 0, 99);
    w.sh(Role::Gn, &format!("ip addr add {other}/32 dev eth0"))
        .unwrap();
    let (d, out) = w
        .dig_with(
            Role::Gn,
            NTMA_LAN_ADDR,
            &format!("+tcp -b {other}"),
            FWD,
            "A",
        )
        .unwrap();
    assert!(d.a.is_empty(), "{out}");
    s.ntma
        .wait("the other source refused", |st| {
            st.drop_count("dns_tcp_not_gn") >= 1
        })
        .unwrap();
    w.sh(Role::Gn, &format!("ip addr del {other}/32 dev eth0"))
        .unwrap();
}
