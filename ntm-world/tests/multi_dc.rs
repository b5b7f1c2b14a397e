//! Several DCs, one world (issue 12), on the testbed with a real
//! three-member etcd cluster (`ntm_world::multidc`): two DCs share it, cn
//! registers at DC1 and the adapter at DC2, and directions cross from one
//! DC to the other; DC1 killed under a running ping (cn moves to DC2, the
//! tunnel loses nothing, a new tunnel to cn comes up); one etcd member
//! killed (everything goes on). The failover timings are printed (run with
//! `--nocapture`). Needs root and etcd (`cargo xtask setup`):
//! `cargo xtask test -p ntm-world --test multi_dc`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ntm_testbed::{unique_prefix, wait_for, wait_until, Testbed};
use ntm_world::multidc::{
    wait_node_at, BackgroundPing, EtcdCluster, MultiDc, DC1, DC2, ETCD_MEMBERS, FAILOVER_PATIENCE,
};
use ntm_world::{
    Node, Ntma, Ping, Role, World, CN2_FQDN, CN_FQDN, GN2_FQDN, GN_FQDN, NTMA_LAN_ADDR, PATIENCE,
};

/// cn at DC1 (then DC2), the adapter at DC2 (then DC1), both registered,
/// and the tunnel gn -> cn up and pinged: cn's VIP and the GN's.
fn cn_at_dc1_adapter_at_dc2(m: &MultiDc) -> (Node, Ntma, Ipv4Addr, Ipv4Addr) {
    let mut cn = m.cn_with_dcs(&[DC1, DC2]).expect("start cn");
    let mut ntma = m.ntma_with_dcs(&[DC2, DC1]).expect("start ntma");
    let (cn_vip, _) = wait_node_at(&cn, DC1).unwrap();
    ntma.wait("every GN registered at DC2", |s| {
        s.gns
            .iter()
            .all(|g| g.registration.registered && g.registration.dc == DC2)
    })
    .unwrap();
    // The adapter's GN resolves cn and pings it: asked at DC2, handed to
    // DC1, which sends cn its ROUTE_DIR.
    let (gn_vip, resolved) = m.world.tunnel_to_cn(&mut cn, &mut ntma).unwrap();
    assert_eq!(resolved, cn_vip);
    (cn, ntma, cn_vip, gn_vip)
}

/// A new direction from `role` (asking the DNS server `dns`) to `vip`
/// (`fqdn`): resolved and pinged once, or `None`. The query waits 3 s at
/// most, so that a try after a failed one starts soon (a timing's
/// resolution).
fn resolve_and_ping(w: &World, role: Role, dns: &str, fqdn: &str, vip: Ipv4Addr) -> Option<()> {
    let dig = format!("dig @{dns} +short +tries=1 +time=3 +noedns {fqdn} A; true");
    let out = w.sh(role, &dig).ok()?;
    let a: Vec<Ipv4Addr> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if a != [vip] {
        return None;
    }
    let p = w.ping(role, vip, 1).ok()?;
    (p.received == 1).then_some(())
}

#[test]
fn the_etcd_cluster_comes_up_healthy_and_survives_a_member_kill() {
    let tb = Testbed::up(&unique_prefix("etcd3")).expect("these tests need root and a testbed");
    let mut etcd = EtcdCluster::start(&tb).expect("start etcd");
    let health = etcd.health(&tb).unwrap();
    assert_eq!(health.len(), ETCD_MEMBERS);
    assert!(health.iter().all(|m| m.healthy), "{health:?}");
    assert_eq!(etcd.put_get(&tb, 0, "/t/a", "1").unwrap(), "1");
    let leader = etcd.leader(&tb).unwrap();
    etcd.kill(leader).unwrap();
    let health = etcd.wait_healthy(&tb, ETCD_MEMBERS - 1).unwrap();
    assert!(!health[leader].healthy, "{health:?}");
    // The two left elect a leader and take writes.
    let other = (leader + 1) % ETCD_MEMBERS;
    let took = wait_for(FAILOVER_PATIENCE, || {
        etcd.put_get(&tb, other, "/t/b", "2")
            .ok()
            .filter(|v| v == "2")
    });
    assert!(took.is_some(), "no write after the kill");
    assert_ne!(etcd.leader(&tb).unwrap(), leader);
}

#[test]
fn two_dcs_on_one_etcd_direct_across_each_other() {
    let m = MultiDc::up("mdcshare").expect("these tests need root, a testbed and etcd");
    let (mut cn, mut ntma, cn_vip, _) = cn_at_dc1_adapter_at_dc2(&m);
    // cn resolves a GN and connects to it: asked at DC1, handed to DC2,
    // which sends the adapter its ROUTE_DIR.
    let gn2_vip = ntma.registered_gn(GN2_FQDN).unwrap();
    assert_eq!(m.world.dhclient_in(Role::Gn2).unwrap(), gn2_vip);
    let d = m.world.dig(Role::Cn, "127.0.0.1", GN2_FQDN).unwrap();
    assert_eq!(d.a, vec![gn2_vip], "{d:?}");
    let p = m.world.ping(Role::Cn, gn2_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    // Each node stayed at its DC, with the VIP it got there.
    let s = cn.wait("at DC1", |s| s.dc == Some(DC1)).unwrap();
    assert_eq!(s.vip, Some(cn_vip));
    assert_eq!(s.packet_count("dc_failovers"), 0);
    let st = ntma.status().unwrap();
    assert!(st
        .gns
        .iter()
        .all(|g| g.registration.dc == DC2 && g.registration.dc_failovers == 0));
    // Both DCs run on the store with their own names.
    for role in [Role::Dc, Role::Dc2] {
        assert!(m.dc_status(role).is_ok(), "{role}");
    }
    m.down().unwrap();
}

/// RELAY tunnels directed by either DC go through one RS, which is given
/// both DCs (`dcs`) and keeps a replay window for each: each DC seals its
/// RELAY_DIRs with its own seq stream, far apart from the other's.
#[test]
fn relayed_tunnels_directed_by_either_dc_share_one_rs() {
    let m = MultiDc::up("mdcrelay").expect("these tests need root, a testbed and etcd");
    let mut ntma = m.ntma_with_dcs(&[DC2, DC1]).expect("start ntma");
    let cn2 = m.node_with_dcs(Role::Cn2, CN2_FQDN, &[DC1, DC2]).unwrap();
    let (cn2_vip, _) = wait_node_at(&cn2, DC1).unwrap();
    let gn_vip = ntma.registered().unwrap();
    assert_eq!(m.world.dhclient().unwrap(), gn_vip);
    let gn2_vip = ntma.registered_gn(GN2_FQDN).unwrap();
    assert_eq!(m.world.dhclient_in(Role::Gn2).unwrap(), gn2_vip);
    // cn2 (behind nat2) to gn2 (behind nat1): DC1 directs, RELAY_DIR
    // from DC1.
    let d = m.world.dig(Role::Cn2, "127.0.0.1", GN2_FQDN).unwrap();
    assert_eq!(d.a, vec![gn2_vip], "{d:?}");
    let p = m.world.ping(Role::Cn2, gn2_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    // gn to cn2: DC2 directs, RELAY_DIR from DC2, whose seqs lie far from
    // DC1's: an RS with one window for both refused it as too old (this
    // test failed so before the RS took `dcs`).
    let lan = NTMA_LAN_ADDR.to_string();
    let d = m.world.dig(Role::Gn, &lan, CN2_FQDN).unwrap();
    assert_eq!(d.a, vec![cn2_vip], "{d:?}");
    let p = m.world.ping(Role::Gn, cn2_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    let st = ntma.status().unwrap();
    for (gn, peer) in [(GN_FQDN, CN2_FQDN), (GN2_FQDN, CN2_FQDN)] {
        let t = st.tunnel_between(gn, peer).expect("a tunnel");
        assert_eq!((t.path.as_str(), t.up), ("relay", true), "{gn} -> {peer}");
    }
    assert!(st.gns.iter().all(|g| g.registration.dc == DC2));
    m.down().unwrap();
}

/// What a DC kill under a running ping gave.
struct Failover<T> {
    /// When the watch saw the nodes at the other DC, after the kill.
    moved: Duration,
    /// What the watch saw then.
    seen: T,
    /// When a new tunnel worked, after the kill.
    new_tunnel: Duration,
    /// The ping gn -> cn through the tunnel set up before.
    ping: Ping,
}

/// Kills the DC in `kill` while gn pings cn (`cn_vip`) through their
/// tunnel. `watch` runs on a thread from the kill on (given its instant)
/// until the nodes of that DC are seen at the other one; meanwhile this
/// thread tries `new_tunnel` again and again until it works.
fn kill_under_ping<T: Send + 'static>(
    m: &mut MultiDc,
    cn_vip: Ipv4Addr,
    kill: Role,
    watch: impl FnOnce(Instant) -> Option<(Duration, T)> + Send + 'static,
    mut new_tunnel: impl FnMut(&World) -> Option<()>,
) -> Failover<T> {
    // 200 pings, 0.2 s apart: 40 s, well past the failover.
    let mut ping = BackgroundPing::start(&m.world, Role::Gn, cn_vip, 200).unwrap();
    assert!(
        wait_until(PATIENCE, || ping.replies() >= 5),
        "no ping replies"
    );
    let killed = Instant::now();
    m.kill_dc(kill).unwrap();
    let watch = std::thread::spawn(move || watch(killed));
    let new_tunnel = wait_for(FAILOVER_PATIENCE, || {
        new_tunnel(&m.world).map(|()| killed.elapsed())
    });
    let (moved, seen) = watch.join().unwrap().expect("the nodes did not move");
    let new_tunnel = new_tunnel.expect("no new tunnel after the kill");
    assert!(
        ping.is_running(),
        "the ping ended before the failover was over: it proves nothing"
    );
    let ping = ping.finish().unwrap();
    assert!(ping.sent >= 100, "{}", ping.output);
    Failover {
        moved,
        seen,
        new_tunnel,
        ping,
    }
}

impl<T> Failover<T> {
    /// Prints the timings and the ping's loss, then checks it lost nothing.
    fn report(&self, what: &str, new_tunnel: &str) {
        let p = &self.ping;
        println!(
            "failover: {what} {:.1} s after the kill (nodes give a DC up after 3.5 keep-alive \
             intervals of {} s); a new tunnel {new_tunnel} worked {:.1} s after the kill; ping gn -> cn \
             through the existing tunnel: {} sent, {} received, {} lost",
            self.moved.as_secs_f64(),
            ntm_world::multidc::KEEPALIVE_SECS,
            self.new_tunnel.as_secs_f64(),
            p.sent,
            p.received,
            p.sent - p.received
        );
        assert_eq!(
            p.received, p.sent,
            "pings lost in the failover:\n{}",
            p.output
        );
    }
}

#[test]
fn dc1_killed_cn_moves_to_dc2_and_its_tunnel_loses_nothing() {
    let mut m = MultiDc::up("mdckill").expect("these tests need root, a testbed and etcd");
    let (cn, mut ntma, cn_vip, _) = cn_at_dc1_adapter_at_dc2(&m);
    let gn2_vip = ntma.registered_gn(GN2_FQDN).unwrap();
    assert_eq!(m.world.dhclient_in(Role::Gn2).unwrap(), gn2_vip);
    // cn's status file (written every second: 1 s resolution) is watched
    // while gn2 asks DC2 for cn, again and again, until the answer comes
    // and a ping through the new tunnel works.
    let status = cn.status.clone();
    let watch = move |killed: Instant| {
        wait_for(FAILOVER_PATIENCE, || {
            let s = ntm_node::Status::load(&status)?;
            (s.vip.is_some() && s.dc == Some(DC2)).then(|| (killed.elapsed(), s))
        })
    };
    let f = kill_under_ping(&mut m, cn_vip, Role::Dc, watch, |w| {
        resolve_and_ping(w, Role::Gn2, &NTMA_LAN_ADDR.to_string(), CN_FQDN, cn_vip)
    });
    assert_eq!(f.seen.vip, Some(cn_vip), "cn kept its VIP");
    assert_eq!(f.seen.packet_count("dc_failovers"), 1);
    f.report("cn re-registered at DC2", "gn2 -> cn");
    // The adapter never left DC2.
    let st = ntma.status().unwrap();
    assert!(st.gns.iter().all(|g| g.registration.dc == DC2));
    m.down().unwrap();
}

#[test]
fn dc2_killed_the_adapter_moves_to_dc1_and_its_tunnel_loses_nothing() {
    let mut m = MultiDc::up("mdckill2").expect("these tests need root, a testbed and etcd");
    let (mut cn, mut ntma, cn_vip, gn_vip) = cn_at_dc1_adapter_at_dc2(&m);
    let gn2_vip = ntma.registered_gn(GN2_FQDN).unwrap();
    assert_eq!(m.world.dhclient_in(Role::Gn2).unwrap(), gn2_vip);
    // The adapter's status (polled on its socket) is watched while cn asks
    // DC1 for gn2, again and again, until the answer comes and a ping
    // through the new tunnel works.
    let socket = ntma.socket.clone();
    let watch = move |killed: Instant| {
        wait_for(FAILOVER_PATIENCE, || {
            let s = ntma_user::status::query(&socket).ok()?;
            let all = s.gns.iter().all(|g| {
                let r = &g.registration;
                r.registered && r.dc == DC1 && r.dc_failovers == 1
            });
            all.then(|| (killed.elapsed(), s))
        })
    };
    let f = kill_under_ping(&mut m, cn_vip, Role::Dc2, watch, |w| {
        resolve_and_ping(w, Role::Cn, "127.0.0.1", GN2_FQDN, gn2_vip)
    });
    let vips: Vec<_> = f.seen.gns.iter().map(|g| g.registration.vip).collect();
    assert_eq!(
        vips,
        vec![Some(gn_vip), Some(gn2_vip)],
        "the GNs kept their VIPs"
    );
    f.report("both GNs of the adapter re-registered at DC1", "cn -> gn2");
    // cn never left DC1.
    let s = cn.wait("still at DC1", |s| s.dc == Some(DC1)).unwrap();
    assert_eq!(s.packet_count("dc_failovers"), 0);
    m.down().unwrap();
}

#[test]
fn one_etcd_member_killed_everything_goes_on() {
    let mut m = MultiDc::up("mdcetcd").expect("these tests need root, a testbed and etcd");
    let (mut cn, mut ntma, cn_vip, _) = cn_at_dc1_adapter_at_dc2(&m);
    let leader = m.etcd.leader(&m.world.tb).unwrap();
    m.etcd.kill(leader).unwrap();
    m.etcd.wait_healthy(&m.world.tb, ETCD_MEMBERS - 1).unwrap();
    // The tunnel runs on.
    let p = m.world.ping(Role::Gn, cn_vip, 5).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    // A new registration (cn2 behind nat2, at DC2) and new directions
    // across the DCs: gn2 (adapter, DC2) to cn (DC1), cn to cn2.
    let mut cn2 = m.node_with_dcs(Role::Cn2, CN2_FQDN, &[DC2, DC1]).unwrap();
    let (cn2_vip, _) = wait_node_at(&cn2, DC2).unwrap();
    ntma.registered_gn(GN2_FQDN).unwrap();
    m.world.dhclient_in(Role::Gn2).unwrap();
    let new_tunnel = wait_for(PATIENCE, || {
        resolve_and_ping(
            &m.world,
            Role::Gn2,
            &NTMA_LAN_ADDR.to_string(),
            CN_FQDN,
            cn_vip,
        )
    });
    assert!(
        new_tunnel.is_some(),
        "no tunnel gn2 -> cn with a member down"
    );
    let d = m.world.dig(Role::Cn, "127.0.0.1", CN2_FQDN).unwrap();
    assert_eq!(d.a, vec![cn2_vip], "{d:?}");
    let p = m.world.ping(Role::Cn, cn2_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    // Nobody left their DC: both kept their etcd leases alive.
    let s = cn.wait("still at DC1", |s| s.dc == Some(DC1)).unwrap();
    assert_eq!(s.packet_count("dc_failovers"), 0);
    cn2.wait("still at DC2", |s| s.dc == Some(DC2)).unwrap();
    let st = ntma.status().unwrap();
    assert!(st
        .gns
        .iter()
        .all(|g| g.registration.dc == DC2 && g.registration.dc_failovers == 0));
    m.down().unwrap();
}
