//! Faults under traffic (issue 13): while a ping (or a TCP stream) runs
//! through the adapter, something breaks: the DC is killed and restarted,
//! the peer node restarts, the RS restarts under a relayed tunnel, nat1
//! forgets its mappings, the adapter's uplink address changes. Each test
//! asserts what the protocol promises (no loss where the data path is
//! untouched, recovery within `PATIENCE` elsewhere) and prints one line per
//! fault: `fault X: lost N of M packets, loss window T s`. Timings are
//! printed, never asserted: `cargo xtask test -p ntm-world --test faults
//! -- --nocapture`. Needs root, like every world test.

use std::time::Duration;

use ntm_testbed::{unique_prefix, wait_until, Signal};
use ntm_world::traffic::{unix_now, PingRun};
use ntm_world::{Ntma, Role, World, CN2_FQDN, CN_FQDN, GN_FQDN, NTMA_LAN_ADDR, PATIENCE};

/// A ping every 50 ms: a loss window is measured to about that.
const EVERY: Duration = Duration::from_millis(50);

fn up(tag: &str) -> World {
    World::up(tag).expect("these integration tests need root and a working testbed")
}

/// Starts a background ping from the GN and waits for its first replies.
fn ping_from_gn(w: &World, dst: std::net::Ipv4Addr) -> PingRun {
    let ping = w.ping_in_background(Role::Gn, dst, EVERY).unwrap();
    ping.wait_replies_after(0.0, 10, "ping before the fault")
        .unwrap();
    ping
}

/// The GN's tunnel to `peer` (up), as the adapter reports it.
fn tunnel_id(ntma: &mut Ntma, peer: &str) -> u32 {
    ntma.wait(&format!("tunnel to {peer} up"), |s| {
        s.tunnel_between(GN_FQDN, peer).is_some_and(|t| t.up)
    })
    .unwrap()
    .tunnel_between(GN_FQDN, peer)
    .unwrap()
    .id
}

/// The DC is not on the data path: killed (SIGKILL) and restarted on its
/// store while a ping runs through an adapter tunnel, nothing is lost; the
/// adapter stays registered and a new tunnel can be set up afterwards.
#[test]
fn fault_dc_killed_and_restarted_loses_nothing() {
    let mut w = World::up_with(&unique_prefix("fdc"), |dc| dc.keepalive_secs = 2)
        .expect("these integration tests need root and a working testbed");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut cn2 = w.node(Role::Cn2, CN2_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let cn2_vip = cn2.registered().unwrap();
    let (gn_vip, cn_vip) = w.tunnel_to_cn(&mut cn, &mut ntma).unwrap();
    let before = tunnel_id(&mut ntma, CN_FQDN);
    let ping = ping_from_gn(&w, cn_vip);

    w.dc.as_ref()
        .expect("the DC runs")
        .signal(Signal::SIGKILL)
        .unwrap();
    w.stop_dc().unwrap();
    ping.wait_replies_after(unix_now(), 20, "ping while the DC is down")
        .unwrap();
    w.start_dc().unwrap();
    // The restarted DC knows the GN (its store) and answers its keep-alives.
    let keepalives = |w: &World| {
        w.dc_status()
            .ok()
            .and_then(|s| s.stats.get("keepalives").copied())
            .unwrap_or(0)
    };
    assert!(
        wait_until(PATIENCE, || keepalives(&w) >= 2),
        "no keep-alive answered after the restart:\n{}",
        w.dc_log()
    );
    let st = w.dc_status().unwrap();
    let gn = st.registrations.iter().find(|r| r.fqdn == GN_FQDN);
    assert_eq!(gn.map(|r| r.vip), Some(gn_vip), "{st:?}");
    let st = ntma
        .wait("registered", |s| s.gns[0].registration.registered)
        .unwrap();
    assert_eq!(st.gns[0].registration.vip, Some(gn_vip));

    // A new tunnel set-up through the restarted DC: cn2, by name.
    let d = w
        .dig(Role::Gn, &NTMA_LAN_ADDR.to_string(), CN2_FQDN)
        .unwrap();
    assert_eq!(d.a, vec![cn2_vip], "{d:?}");
    let p = w.ping(Role::Gn, cn2_vip, 3).unwrap();
    assert!(p.received > 0, "{}", p.output);

    let report = ping.stop().unwrap();
    eprintln!("{}", report.line("DC killed and restarted"));
    assert_eq!(report.lost(), 0, "the DC is not on the data path");
    assert_eq!(tunnel_id(&mut ntma, CN_FQDN), before, "the same tunnel");
}

/// The peer node restarts and loses its tunnels; it drops the adapter's
/// DATA for the unknown tunnel without an answer (§5). The adapter's DATA
/// then goes unanswered and it asks the DC for a new direction (the
/// liveness of docs/architecture.md): traffic resumes over a new tunnel.
#[test]
fn fault_peer_node_restarted_gets_a_new_tunnel() {
    let w = up("fpeer");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let (_, cn_vip) = w.tunnel_to_cn(&mut cn, &mut ntma).unwrap();
    let before = tunnel_id(&mut ntma, CN_FQDN);
    let ping = ping_from_gn(&w, cn_vip);

    let _cn = w.restart_node(cn).unwrap();
    ping.wait_replies_after(unix_now(), 10, "ping after cn restarted")
        .unwrap();
    let report = ping.stop().unwrap();
    eprintln!("{}", report.line("peer node restarted"));
    let after = tunnel_id(&mut ntma, CN_FQDN);
    assert_ne!(after, before, "a new tunnel replaced the stale one");
}

/// The RS restarts under a relayed tunnel (GN <-> cn2, both behind NAT)
/// and forgets its bindings: the relayed DATA goes nowhere until an end
/// asks the DC again (the liveness of docs/architecture.md), which sets up a new relayed
/// tunnel.
#[test]
fn fault_rs_restarted_under_a_relayed_tunnel() {
    let mut w = up("frs");
    let mut cn2 = w.node(Role::Cn2, CN2_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let cn2_vip = cn2.registered().unwrap();
    let gn_vip = ntma.registered().unwrap();
    assert_eq!(w.dhclient().unwrap(), gn_vip);
    let d = w
        .dig(Role::Gn, &NTMA_LAN_ADDR.to_string(), CN2_FQDN)
        .unwrap();
    assert_eq!(d.a, vec![cn2_vip], "{d:?}");
    let before = tunnel_id(&mut ntma, CN2_FQDN);
    let st = ntma.status().unwrap();
    assert_eq!(st.tunnel_to(CN2_FQDN).unwrap().path, "relay");
    let ping = ping_from_gn(&w, cn2_vip);

    w.restart_rs().unwrap();
    ping.wait_replies_after(unix_now(), 10, "ping after the RS restarted")
        .unwrap();
    let report = ping.stop().unwrap();
    eprintln!("{}", report.line("RS killed and restarted"));
    let after = tunnel_id(&mut ntma, CN2_FQDN);
    assert_ne!(after, before, "a new relayed tunnel");
    let st = ntma.status().unwrap();
    assert_eq!(st.tunnel_to(CN2_FQDN).unwrap().path, "relay");
}

/// nat1 forgets every mapping (`conntrack -F`): the adapter's next DATA
/// and keep-alives make a new one, maybe on a new outside port, which cn
/// follows (roaming on authentic DATA, §5) and the DC reports.
#[test]
fn fault_nat_mappings_flushed_at_nat1() {
    let w = up("fnat");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let (gn_vip, cn_vip) = w.tunnel_to_cn(&mut cn, &mut ntma).unwrap();
    let before = tunnel_id(&mut ntma, CN_FQDN);
    let mapped = |cn: &mut ntm_world::Node| {
        cn.wait("cn's tunnel to the GN", |s| s.tunnel_to(GN_FQDN).is_some())
            .unwrap()
            .tunnel_to(GN_FQDN)
            .unwrap()
            .endpoint
    };
    let old = mapped(&mut cn);
    let ping = ping_from_gn(&w, cn_vip);

    w.sh(Role::Nat1, "conntrack -F 2>&1").unwrap();
    ping.wait_replies_after(unix_now(), 20, "ping after the flush")
        .unwrap();
    // cn's own traffic to the GN finds it too.
    let p = w.ping(Role::Cn, gn_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    let report = ping.stop().unwrap();
    let new = mapped(&mut cn);
    eprintln!(
        "{} (nat1 mapping {old} -> {new})",
        report.line("NAT mappings flushed at nat1")
    );
    assert_eq!(tunnel_id(&mut ntma, CN_FQDN), before, "the same tunnel");
    ntma.wait("registered", |s| s.gns[0].registration.registered)
        .unwrap();
}

/// nat1 forgets every mapping while the traffic comes from outside (cn
/// pings the GN): cn's DATA now ends at nat1 and the GN answers nothing, so
/// cn's DATA goes unanswered and cn asks the DC again (the liveness of docs/architecture.md); the
/// new tunnel's set-up from the adapter (REVERSE: the GN is behind NAT)
/// makes a new mapping.
#[test]
fn fault_nat_mappings_flushed_under_incoming_traffic() {
    let w = up("fnatin");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let (gn_vip, _) = w.tunnel_to_cn(&mut cn, &mut ntma).unwrap();
    let ping = w.ping_in_background(Role::Cn, gn_vip, EVERY).unwrap();
    ping.wait_replies_after(0.0, 10, "ping before the fault")
        .unwrap();

    w.sh(Role::Nat1, "conntrack -F 2>&1").unwrap();
    ping.wait_replies_after(unix_now(), 10, "ping after the flush")
        .unwrap();
    let report = ping.stop().unwrap();
    eprintln!(
        "{}",
        report.line("NAT mappings flushed at nat1, traffic from cn")
    );
    ntma.wait("registered", |s| s.gns[0].registration.registered)
        .unwrap();
}

/// The adapter's uplink address changes (a roaming adapter: wan0 gets a
/// new address) while TCP runs GN -> cn through the tunnel: the adapter
/// re-registers from the new address, cn follows its DATA to the new
/// mapping, and the TCP connection (between VIPs) survives.
#[test]
fn fault_uplink_address_changes_under_tcp() {
    let w = up("froam");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let (gn_vip, cn_vip) = w.tunnel_to_cn(&mut cn, &mut ntma).unwrap();
    let before = tunnel_id(&mut ntma, CN_FQDN);
    let secs = 12;
    let tcp = w.tcp_stream(Role::Cn, cn_vip, Role::Gn, secs).unwrap();
    let ping = ping_from_gn(&w, cn_vip);

    let st = w.roam_adapter(&mut ntma).unwrap();
    assert_eq!(st.gns[0].registration.vip, Some(gn_vip), "the same VIP");
    ping.wait_replies_after(unix_now(), 10, "ping after the move")
        .unwrap();
    let report = tcp
        .finish(PATIENCE + Duration::from_secs(u64::from(secs)))
        .unwrap();
    let pings = ping.stop().unwrap();
    eprintln!(
        "{}; TCP: {} bytes, stall {:.2} s, {} retransmits",
        pings.line("uplink address changed"),
        report.bytes,
        report.stall.as_secs_f64(),
        report.retransmits
    );
    assert!(report.bytes > 0);
    assert_eq!(tunnel_id(&mut ntma, CN_FQDN), before, "the same tunnel");
}
