//! Bad input against the adapter on the testbed (issue 4, item 5): malformed
//! frames from the GN side (raw frames from gn: short, bad IPv4 lengths,
//! fragments, non-IPv4, spoofed sources, too big), a DHCP client asking for
//! an address it was not given, garbage and huge DNS queries, and forged,
//! truncated, replayed and unknown-tunnel DATA on the WAN side (from cn to
//! the adapter's observed address). Nothing crashes, nothing forged reaches
//! the GN, every drop is counted by its reason in `ntma status`.
//!
//! Each test builds its own testbed; they need root and fail without it.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use ntm_testbed::wait_until;
use ntm_world::raw::{
    icmp_echo, ipv4_frame, parse_udp, udp, with_udp_payload, Ipv4, RawSocket, PACKET_OUTGOING,
};
use ntm_world::{Ntma, Role, World, CN_FQDN, NTMA_LAN_ADDR, PATIENCE};
use ntma_user::status::Status;

fn up(tag: &str) -> World {
    World::up(tag).expect("these integration tests need root and a working testbed")
}

fn mac(w: &World, role: Role, ifname: &str) -> [u8; 6] {
    w.mac(role, ifname).unwrap()
}

/// Waits until `ntma`'s count for `reason` has grown by at least `n` since
/// `before`; returns the growth.
fn grows(ntma: &mut Ntma, reason: &str, before: &Status, n: u64) -> u64 {
    grows_sum(ntma, &[reason], before, n)
}

/// [`grows`] for the sum of several reasons.
fn grows_sum(ntma: &mut Ntma, reasons: &[&str], before: &Status, n: u64) -> u64 {
    ntma.grows(reasons, before, n)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The GN's VIP and cn's, with the GN leased and a tunnel gn -> cn up.
fn leased_with_tunnel(w: &World, ntma: &mut Ntma) -> (Ipv4Addr, Ipv4Addr) {
    w.leased_with_tunnel(ntma).unwrap()
}

/// Malformed frames from the GN, a DHCP REQUEST for a foreign address,
/// garbage and huge DNS queries: each counted by its reason, cn receives
/// none of the bad packets, and the adapter keeps serving.
#[test]
fn malformed_frames_from_the_gn_are_counted_and_go_nowhere() {
    let w = up("bgn");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    cn.registered().unwrap();
    let (gn_vip, cn_vip) = leased_with_tunnel(&w, &mut ntma);
    let gn_mac = mac(&w, Role::Gn, "eth0");
    let ntma_mac = mac(&w, Role::Ntma, "lan0");
    let before = ntma.status().unwrap();
    // The two pings of the set-up, once cn's status file shows them.
    let cn_rx_before = cn
        .wait("the set-up pings counted", |s| {
            s.packet_count("data_rx") >= 2
        })
        .unwrap()
        .packet_count("data_rx");
    let raw =
        w.tb.in_netns(Role::Gn, || RawSocket::open("eth0"))
            .unwrap()
            .unwrap();
    let echo = icmp_echo(0x4e54, 1, &[0x55; 64]);
    let frame = |ip: Ipv4, l4: &[u8]| ipv4_frame(ntma_mac, gn_mac, ip, l4);

    // To a VIP with a tunnel: the fast path judges them.
    let mut long = Ipv4::new(gn_vip, cn_vip, 1);
    long.total_len = Some(2000);
    let mut short_ihl = Ipv4::new(gn_vip, cn_vip, 1);
    short_ihl.ihl = Some(3);
    let mut short_total = Ipv4::new(gn_vip, cn_vip, 1);
    short_total.total_len = Some(10);
    for ip in [long, short_ihl, short_total] {
        raw.send(&frame(ip, &echo)).unwrap();
    }
    let spoofed = Ipv4::new(Ipv4Addr::new(100, 64, 77, 77), cn_vip, 1);
    raw.send(&frame(spoofed, &echo)).unwrap();
    // Over the 1440 the GN was given: raise its MTU to send it at all.
    w.sh(Role::Gn, "ip link set dev eth0 mtu 1500").unwrap();
    let big = icmp_echo(0x4e54, 2, &[0xaa; 1460 - 8]);
    // With DF (docs/protocol.md §5 "MTU"): handed to the slow path, dropped there and answered
    // with ICMP fragmentation needed (tests/mtu.rs follows the answer).
    let mut big_ip = Ipv4::new(gn_vip, cn_vip, 1);
    big_ip.frag = 0x4000;
    raw.send(&frame(big_ip, &big)).unwrap();
    w.sh(Role::Gn, "ip link set dev eth0 mtu 1440").unwrap();
    // A length the XDP program already finds wrong goes to the kernel (and
    // the slow path counts it); the fast path counts the others.
    let malformed = ["lan_malformed", "ipv4_malformed"];
    assert_eq!(grows_sum(&mut ntma, &malformed, &before, 3), 3);
    // A source that is no GN's VIP: XDP leaves it to the kernel
    // (lan_from_non_gn), and the slow path drops it.
    assert_eq!(grows(&mut ntma, "slow_bad_source", &before, 1), 1);
    assert!(ntma.status().unwrap().xdp("lan_from_non_gn") >= 1);
    assert_eq!(grows(&mut ntma, "slow_too_big", &before, 1), 1);
    let before = ntma.status().unwrap();

    // To the kernel and the slow path: not IPv4, truncated IPv4, fragments,
    // broken ARP.
    let mut v6 = Vec::new();
    v6.extend_from_slice(&ntma_mac);
    v6.extend_from_slice(&gn_mac);
    v6.extend_from_slice(&[0x86, 0xdd]);
    v6.extend_from_slice(&[0x60; 40]);
    raw.send(&v6).unwrap();
    let mut cut = frame(Ipv4::new(gn_vip, NTMA_LAN_ADDR, 17), &udp(5000, 53, b"x"));
    cut.truncate(14 + 8);
    raw.send(&cut).unwrap();
    let mut frag = Ipv4::new(gn_vip, NTMA_LAN_ADDR, 17);
    frag.frag = 0x2000;
    raw.send(&frame(frag, &udp(5000, 53, &[0; 64]))).unwrap();
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&gn_mac);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    raw.send(&arp).unwrap();
    // The shortest frame a kernel sends (it refuses less than an Ethernet
    // header): an IPv4 EtherType and nothing after it.
    let mut bare = ntma_mac.to_vec();
    bare.extend_from_slice(&gn_mac);
    bare.extend_from_slice(&[0x08, 0x00]);
    raw.send(&bare).unwrap();
    for (reason, n) in [
        ("ethertype_unsupported", 1),
        ("ipv4_malformed", 2),
        ("ipv4_fragment", 1),
        ("arp_malformed", 1),
    ] {
        assert!(grows(&mut ntma, reason, &before, n) >= n);
    }

    // DNS: garbage, a header alone, a huge query (fragmented on the way).
    let sock =
        w.tb.in_netns(Role::Gn, || UdpSocket::bind((gn_vip, 0)))
            .unwrap()
            .unwrap();
    let dns = SocketAddrV4::new(NTMA_LAN_ADDR, 53);
    sock.send_to(&[0x12, 0x34, 0x01], dns).unwrap();
    let mut garbage = vec![0u8; 40];
    garbage[..12].copy_from_slice(&[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    garbage[12..].fill(0xff);
    sock.send_to(&garbage, dns).unwrap();
    sock.send_to(&vec![0x41; 1200], dns).unwrap();
    sock.send_to(&vec![0x42; 4000], dns).unwrap();
    assert!(grows(&mut ntma, "dns_short", &before, 1) >= 1);
    assert!(grows(&mut ntma, "dns_too_big", &before, 1) >= 1);
    let st = ntma
        .wait("the garbage query answered FORMERR or dropped", |s| {
            s.stat("dns_formerr") + s.drop_count("dns_malformed") > 0
        })
        .unwrap();
    assert!(st.drop_count("ipv4_fragment") >= before.drop_count("ipv4_fragment") + 3);

    // DHCP: a client that asks for an address it was not given gets a NAK,
    // then the VIP.
    let dir = w.tb.state_dir().display().to_string();
    w.sh(
        Role::Gn,
        &format!("dhclient -x -pf {dir}/gn-dhclient.pid 2>/dev/null; ip -4 addr flush dev eth0"),
    )
    .unwrap();
    w.fake_lease(Ipv4Addr::new(100, 64, 99, 99)).unwrap();
    assert_eq!(w.dhclient().unwrap(), gn_vip);
    let st = ntma.status().unwrap();
    assert_eq!(
        st.stat("dhcp_nak_wrong_address"),
        1,
        "{:?}",
        st.slow_path.stats
    );

    // None of it reached cn; the adapter still serves.
    assert!(ntma.child.is_running());
    let d = w
        .dig(Role::Gn, &NTMA_LAN_ADDR.to_string(), CN_FQDN)
        .unwrap();
    assert_eq!(d.a, vec![cn_vip]);
    let p = w.ping(Role::Gn, cn_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    // cn received these three pings and nothing else since the baseline.
    let st = cn
        .wait("the last pings counted", |s| {
            s.packet_count("data_rx") >= cn_rx_before + 3
        })
        .unwrap();
    assert_eq!(
        st.packet_count("data_rx"),
        cn_rx_before + 3,
        "bad frames reached cn"
    );
}

/// DATA from cn to the adapter's observed address, made from a real DATA
/// datagram of the tunnel: replayed, with a flipped bit, cut short, and
/// with an unknown tunnel id. Each is dropped and counted exactly, and the
/// GN sees none of them.
#[test]
fn forged_replayed_truncated_and_unknown_data_never_reach_the_gn() {
    let w = up("bwan");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    cn.registered().unwrap();
    let (gn_vip, _) = leased_with_tunnel(&w, &mut ntma);
    let st = ntma.status().unwrap();
    let observed = st.gns[0].registration.observed.expect("observed address");
    let tunnel_id = st.tunnel_to(CN_FQDN).unwrap().id;

    // Capture one DATA datagram cn sends to the adapter (a ping to the GN),
    // and the inner packet as the GN receives it: the datagram is suite 2,
    // so the inner packet does not show in it.
    let cap =
        w.tb.in_netns(Role::Cn, || RawSocket::open("eth0"))
            .unwrap()
            .unwrap();
    let gn_cap =
        w.tb.in_netns(Role::Gn, || RawSocket::open("eth0"))
            .unwrap()
            .unwrap();
    let p = w.ping(Role::Cn, gn_vip, 1).unwrap();
    assert_eq!(p.received, 1, "{}", p.output);
    let data = cap
        .collect(Duration::from_secs(2), |r| {
            r.pkttype == PACKET_OUTGOING
                && parse_udp(&r.frame).is_some_and(|u| {
                    u.dst == *observed.ip()
                        && u.dst_port == observed.port()
                        && u.payload.len() > 32
                        && u.payload[1] == 1
                })
        })
        .unwrap()
        .into_iter()
        .next()
        .expect("cn sent a DATA datagram to the adapter");
    let orig = parse_udp(&data.frame).unwrap();
    assert_eq!(orig.payload[3], 2, "suite 2 (AES-256-GCM) by default");
    let delivered = gn_cap
        .collect(Duration::from_secs(1), |r| {
            r.frame.len() > 14 + 20 && r.frame[14 + 9] == 1 && r.frame[14 + 20] == 8
        })
        .unwrap()
        .into_iter()
        .next()
        .expect("the GN received cn's echo request");
    let inner = delivered.frame[14..].to_vec();
    assert_eq!(
        inner.len(),
        orig.payload.len() - 32,
        "one inner packet per DATA"
    );
    assert!(
        !orig
            .payload
            .windows(inner.len().min(28))
            .any(|w| w == &inner[..inner.len().min(28)]),
        "the inner packet crossed the WAN in clear"
    );

    let before = ntma.status().unwrap();
    let replayed = orig.payload.clone();
    let mut forged = orig.payload.clone();
    forged[20] ^= 0x01;
    let truncated = orig.payload[..20].to_vec();
    let mut unknown = orig.payload.clone();
    unknown[4..8].copy_from_slice(&(tunnel_id ^ 0x5a5a_5a5a).to_be_bytes());
    const N: u64 = 3;
    for _ in 0..N {
        for p in [&replayed, &forged, &truncated, &unknown] {
            cap.send(&with_udp_payload(&orig, p)).unwrap();
        }
    }
    for reason in ["replay", "bad_tag", "truncated", "unknown_tunnel"] {
        assert_eq!(grows(&mut ntma, reason, &before, N), N, "{reason}");
    }
    // Nothing more counted a moment later, and nothing reached the GN.
    let seen = gn_cap
        .collect(Duration::from_secs(1), |r| {
            r.frame.len() > 14 && r.frame[14..].starts_with(&inner)
        })
        .unwrap();
    assert!(
        seen.is_empty(),
        "a forged or replayed packet reached the GN"
    );
    let after = ntma.status().unwrap();
    for reason in ["replay", "bad_tag", "truncated", "unknown_tunnel"] {
        assert_eq!(
            after.drop_count(reason),
            before.drop_count(reason) + N,
            "{reason}"
        );
    }
    // The tunnel is unharmed.
    assert!(wait_until(PATIENCE, || w
        .ping(Role::Gn, cn.status().unwrap().vip.unwrap(), 1)
        .is_ok_and(|p| p.received == 1)));
    assert!(ntma.child.is_running());
}
