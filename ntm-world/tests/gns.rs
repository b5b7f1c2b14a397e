//! One adapter, two GNs on its LAN (docs/protocol.md §6): gn (any MAC) and
//! gn2 (bound to its MAC) on the testbed's `lan` bridge, each registered as
//! its own node, each with its own VIP, DHCP lease and tunnels; the GNs
//! reach each other directly; a MAC that matches no GN gets nothing; a
//! lease runs out and comes back; a GN the DC does not know stays out while
//! the other works.

use std::time::Duration;

use ntm_testbed::wait_until;
use ntm_world::settle::tunnel_up_at_both_ends;
use ntm_world::{Role, World, CN_FQDN, GN2_FQDN, GNS, GN_FQDN, NTMA_LAN_ADDR, PATIENCE};

fn up(tag: &str) -> World {
    World::up(tag).expect("these integration tests need root and a working testbed")
}

const ROUTER: &str = "100.64.0.1";

#[test]
fn two_gns_get_their_own_vips_reach_cn_and_each_other_and_cn_reaches_both() {
    assert_eq!(NTMA_LAN_ADDR.to_string(), ROUTER);
    let w = up("gns");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let cn_vip = cn.registered().unwrap();
    let vip1 = ntma.registered_gn(GN_FQDN).unwrap();
    let vip2 = ntma.registered_gn(GN2_FQDN).unwrap();
    assert_ne!(vip1, vip2, "a VIP each");
    // gn2 asks first: its MAC binds it to its own entry, never gn's.
    assert_eq!(w.dhclient_in(Role::Gn2).unwrap(), vip2);
    assert_eq!(w.dhclient_in(Role::Gn).unwrap(), vip1);

    // Each GN resolves cn as itself and reaches it through its own tunnel.
    for (gn, fqdn) in GNS.into_iter().zip([GN_FQDN, GN2_FQDN]) {
        let d = w.dig(gn, ROUTER, CN_FQDN).unwrap();
        assert_eq!(d.a, vec![cn_vip], "{gn}: {d:?}");
        tunnel_up_at_both_ends(&mut ntma, fqdn, &mut cn).unwrap();
        let p = w.ping(gn, cn_vip, 3).unwrap();
        assert_eq!(p.received, p.sent, "{gn} -> cn: {}", p.output);
    }
    let st = ntma
        .wait("a tunnel to cn for each GN", |s| {
            [GN_FQDN, GN2_FQDN]
                .iter()
                .all(|g| s.tunnels.iter().any(|t| t.gn == *g && t.up))
        })
        .unwrap();
    let ids: Vec<u32> = st.tunnels.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 2, "{:?}", st.tunnels);
    assert_ne!(ids[0], ids[1]);

    // cn reaches each GN by name (over the tunnels the GNs opened).
    for (fqdn, vip) in [(GN_FQDN, vip1), (GN2_FQDN, vip2)] {
        let d = w.dig(Role::Cn, "127.0.0.1", fqdn).unwrap();
        assert_eq!(d.a, vec![vip], "{fqdn}: {d:?}");
        let p = w.ping(Role::Cn, vip, 3).unwrap();
        assert_eq!(p.received, p.sent, "cn -> {fqdn}: {}", p.output);
    }

    // gn and gn2 reach each other directly: the adapter answers the name at
    // once and sets up no tunnel between them.
    let d = w.dig(Role::Gn, ROUTER, GN2_FQDN).unwrap();
    assert_eq!(d.a, vec![vip2], "{d:?}");
    let d = w.dig(Role::Gn2, ROUTER, GN_FQDN).unwrap();
    assert_eq!(d.a, vec![vip1], "{d:?}");
    let p = w.ping(Role::Gn, vip2, 3).unwrap();
    assert_eq!(p.received, p.sent, "gn -> gn2: {}", p.output);
    let st = ntma.status().unwrap();
    assert_eq!(
        st.tunnels.len(),
        2,
        "no tunnel between the GNs: {:?}",
        st.tunnels
    );
    assert!(st.stat("dns_own_gn") >= 2, "{:?}", st.slow_path.stats);
    let neigh = w.sh(Role::Gn, &format!("ip neigh show {vip2}")).unwrap();
    let gn2_mac = w.mac(Role::Gn2, "eth0").unwrap();
    let gn2_mac = ntma_user::gn::MacAddr(gn2_mac).to_string();
    assert!(
        neigh.contains(&gn2_mac),
        "gn resolved gn2's VIP to gn2 itself, not the adapter: {neigh}"
    );
    // Both GNs in the status, each with its lease.
    for g in &st.gns {
        assert!(g.registration.registered && g.gn.lease_bound, "{g:?}");
    }
    w.down().unwrap();
}

#[test]
fn a_mac_that_matches_no_gn_gets_no_offer() {
    let w = up("gnmac");
    let gn_mac = ntma_user::gn::MacAddr(w.mac(Role::Gn, "eth0").unwrap()).to_string();
    // One GN, bound to gn's MAC: gn2 is nobody's.
    let mut ntma = w
        .ntma(|c| {
            c.gn.truncate(1);
            c.gn[0].mac = Some(gn_mac);
        })
        .unwrap();
    let vip = ntma.registered().unwrap();
    let lease = w.lease_file(Role::Gn2);
    let pid = w.dhclient_pid_file(Role::Gn2);
    // dhclient would wait a minute for an offer: 5 s show that none comes.
    let out = w
        .sh(
            Role::Gn2,
            &format!(
                "timeout 5 dhclient -4 -v -1 -lf {} -pf {} eth0 2>&1; true",
                lease.display(),
                pid.display()
            ),
        )
        .unwrap();
    assert!(!out.contains("DHCPOFFER"), "{out}");
    assert_eq!(w.gn_addr_in(Role::Gn2).unwrap(), None);
    let st = ntma
        .wait("the unknown MAC counted", |s| {
            s.drop_count("dhcp_unknown_mac") >= 1
        })
        .unwrap();
    assert!(!st.gns[0].gn.lease_bound);
    // gn, whose MAC the entry names, gets its VIP.
    assert_eq!(w.dhclient().unwrap(), vip);
    w.down().unwrap();
}

#[test]
fn a_lease_runs_out_and_the_gn_gets_its_vip_back() {
    let w = up("gnlease");
    // The shortest lease the configuration allows.
    let mut ntma = w.ntma(|c| c.lan.lease_secs = 60).unwrap();
    let vip = ntma.registered().unwrap();
    assert_eq!(w.dhclient().unwrap(), vip);
    ntma.wait("gn's lease bound", |s| s.gns[0].gn.lease_bound)
        .unwrap();
    // gn goes away without a word: its client stops (no RELEASE) and the
    // address goes.
    let pid = w.dhclient_pid_file(Role::Gn);
    w.sh(
        Role::Gn,
        &format!(
            "dhclient -x -pf {} eth0 2>&1; ip -4 addr flush dev eth0",
            pid.display()
        ),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(60) + PATIENCE, || ntma
            .status()
            .is_some_and(|s| !s.gns[0].gn.lease_bound)),
        "the lease never ran out: {:?}",
        ntma.status().map(|s| s.gns[0].gn.clone())
    );
    // It comes back and asks for its address again (INIT-REBOOT): the same
    // VIP, a new lease, and it reaches the router.
    assert_eq!(w.dhclient().unwrap(), vip);
    ntma.wait("gn's lease bound again", |s| s.gns[0].gn.lease_bound)
        .unwrap();
    let p = w.ping(Role::Gn, NTMA_LAN_ADDR, 2).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    w.down().unwrap();
}

#[test]
fn a_gn_the_dc_does_not_know_stays_out_while_the_other_works() {
    let w = World::up_with(&ntm_testbed::unique_prefix("gndc"), |dc| {
        dc.nodes.retain(|n| n.fqdn != GN2_FQDN)
    })
    .expect("these integration tests need root and a working testbed");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let cn_vip = cn.registered().unwrap();
    let vip = ntma.registered().unwrap();
    assert_eq!(w.dhclient().unwrap(), vip);
    let d = w.dig(Role::Gn, ROUTER, CN_FQDN).unwrap();
    assert_eq!(d.a, vec![cn_vip], "{d:?}");
    tunnel_up_at_both_ends(&mut ntma, GN_FQDN, &mut cn).unwrap();
    let p = w.ping(Role::Gn, cn_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    // gn2 is refused by the DC: no VIP, so its DHCP gets nothing (counted).
    let st = ntma.status().unwrap();
    let gn2 = st.gn(GN2_FQDN).expect("gn2 in the status");
    assert!(
        !gn2.registration.registered && gn2.gn.vip.is_none(),
        "{gn2:?}"
    );
    let before = st.drop_count("dhcp_no_vip");
    w.sh(
        Role::Gn2,
        &format!(
            "timeout 5 dhclient -4 -1 -lf {} -pf {} eth0 2>&1; true",
            w.lease_file(Role::Gn2).display(),
            w.dhclient_pid_file(Role::Gn2).display()
        ),
    )
    .unwrap();
    assert_eq!(w.gn_addr_in(Role::Gn2).unwrap(), None);
    ntma.wait("gn2's DHCP counted", |s| {
        s.drop_count("dhcp_no_vip") > before
    })
    .unwrap();
    let (code, line) = ntma.check().unwrap();
    assert!(code == 1 && line.contains(GN2_FQDN), "{code} {line}");
    w.down().unwrap();
}
