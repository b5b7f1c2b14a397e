//! The DC's durable store on the testbed (issue 12): ntm-dc killed (SIGKILL,
//! no clean stop) and started again on the same redb file. The nodes stay
//! registered (no round of re-registrations, same VIPs), a tunnel set up
//! before keeps carrying pings through the whole restart, and a new
//! direction after it gets a new tunnel id. Needs root, like every world
//! test (`cargo xtask test -p ntm-world --test dc_restart`).

use std::path::PathBuf;

use std::net::SocketAddrV4;

use ntm_proto::wire::MessageType;
use ntm_testbed::{
    unique_prefix, wait_until, Role, Signal, CN2_FQDN, CN_FQDN, DC_ADDR, NODE_FQDN, RS_ADDR,
};
use ntm_world::attack::{ntm_type, received_to, recorder, rs_drops, spoof};
use ntm_world::{Node, World, PATIENCE};

/// A directory for the DC's store, removed on drop.
struct StoreDir(PathBuf);

impl StoreDir {
    fn new(tag: &str) -> StoreDir {
        let dir = std::env::temp_dir().join(format!("ntm-world-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the store directory");
        StoreDir(dir)
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stat(w: &World, name: &str) -> u64 {
    w.dc_status()
        .ok()
        .and_then(|s| s.stats.get(name).copied())
        .unwrap_or(0)
}

fn registrations(n: &Node) -> u64 {
    n.status().map_or(0, |s| s.packet_count("registrations"))
}

#[test]
fn a_killed_dc_restarted_on_its_store_keeps_nodes_registered_and_tunnels_up() {
    let store = StoreDir::new("dcrestart");
    let mut w = World::up_with(&unique_prefix("dcstore"), |dc| {
        // Keep-alives every 2 s: the restarted DC hears from every node soon.
        dc.keepalive_secs = 2;
        dc.store = ntm_dc::config::StoreConfig::redb_in(&store.0);
    })
    .expect("these integration tests need root and a working testbed");
    let mut cn = w.node(Role::Cn, CN_FQDN).expect("start cn");
    let mut cn2 = w.node(Role::Cn2, CN2_FQDN).expect("start cn2");
    let cn_vip = cn.registered().unwrap();
    let cn2_vip = cn2.registered().unwrap();
    let d = w.dig(Role::Cn2, "127.0.0.1", CN_FQDN).unwrap();
    assert_eq!(d.a, vec![cn_vip], "{d:?}");
    let tunnel = cn2
        .wait("tunnel to cn", |s| s.tunnel_to(CN_FQDN).is_some())
        .unwrap()
        .tunnel_to(CN_FQDN)
        .unwrap()
        .id;
    let p = w.ping(Role::Cn2, cn_vip, 2).unwrap();
    assert!(p.received > 0, "{}", p.output);
    let (r1, r2) = (registrations(&cn), registrations(&cn2));

    // Killed: no clean stop, nothing written at exit.
    w.dc.as_ref()
        .expect("the DC runs")
        .signal(Signal::SIGKILL)
        .expect("SIGKILL");
    w.stop_dc().expect("reap ntm-dc");
    let down = w.ping(Role::Cn2, cn_vip, 3).unwrap();
    assert_eq!(down.received, down.sent, "{}", down.output);
    w.start_dc().expect("start ntm-dc again");

    // The restarted DC knows both nodes at once, and answers their next
    // keep-alives instead of telling them to register again.
    assert!(
        wait_until(PATIENCE, || stat(&w, "keepalives") >= 4),
        "no keep-alives answered after the restart:\n{}",
        w.dc_log()
    );
    let st = w.dc_status().unwrap();
    let vip_of = |f: &str| st.registrations.iter().find(|r| r.fqdn == f).map(|r| r.vip);
    assert_eq!(
        (vip_of(CN_FQDN), vip_of(CN2_FQDN)),
        (Some(cn_vip), Some(cn2_vip)),
        "{st:?}"
    );
    assert_eq!(st.stats.get("errors_sent"), Some(&0), "{st:?}");
    assert_eq!(st.stats.get("registrations"), Some(&0), "{st:?}");
    assert_eq!((registrations(&cn), registrations(&cn2)), (r1, r2));
    assert!(w.dc_log().contains("store opened"), "{}", w.dc_log());

    // The tunnel set up before carried everything, and still does.
    let after = w.ping(Role::Cn2, cn_vip, 5).unwrap();
    assert_eq!(after.received, after.sent, "{}", after.output);
    let now = cn2.status().unwrap();
    assert_eq!(now.tunnel_to(CN_FQDN).map(|t| t.id), Some(tunnel));

    // A new direction: a node behind nat1 to cn, under a new tunnel id.
    w.sh(Role::Ntma, "ip addr flush dev lan0").unwrap();
    let mut node = w.node(Role::Ntma, NODE_FQDN).expect("start node");
    node.registered().unwrap();
    let d = w.dig(Role::Ntma, "127.0.0.1", CN_FQDN).unwrap();
    assert_eq!(d.a, vec![cn_vip], "{d:?}");
    let fresh = node
        .wait("tunnel to cn", |s| s.tunnel_to(CN_FQDN).is_some())
        .unwrap()
        .tunnel_to(CN_FQDN)
        .unwrap()
        .id;
    assert_ne!(fresh, tunnel, "a tunnel id is never handed out again");
    let p = w.ping(Role::Ntma, cn_vip, 2).unwrap();
    assert!(p.received > 0, "{}", p.output);
    w.down().unwrap();
}

fn dc_drops(w: &World, reason: &str) -> u64 {
    w.dc_status()
        .ok()
        .and_then(|s| s.drops.get(reason).copied())
        .unwrap_or(0)
}

/// Recorded before a DC restart, played back after it (issue 12): the
/// adapter's REG_REQ and DIR_REQ to the DC, and the DC's RELAY_DIR to the
/// RS for the adapter's relayed tunnel to cn2. The restarted DC opens each
/// key's window above the mark its store kept, so both are replays; the RS
/// refuses the RELAY_DIR (the restarted DC's own seq went on above it, so
/// the RS's window is the one the live DC still uses). Nothing is acted on,
/// and the relayed tunnel goes on.
#[test]
fn recordings_from_before_a_dc_restart_are_refused_after_it() {
    let store = StoreDir::new("dcreplay");
    let mut w = World::up_with(&unique_prefix("dcreplay"), |dc| {
        dc.store = ntm_dc::config::StoreConfig::redb_in(&store.0);
    })
    .expect("these integration tests need root and a working testbed");
    let dc = SocketAddrV4::new(DC_ADDR, 7710);
    let rs = SocketAddrV4::new(RS_ADDR, 7720);
    let (at_dc, at_rs) = (recorder(&w, Role::Dc), recorder(&w, Role::Rs));
    let mut cn2 = w.node(Role::Cn2, CN2_FQDN).expect("start cn2");
    let cn2_vip = cn2.registered().unwrap();
    let mut ntma = w.ntma(|_| {}).expect("start ntma");
    let gn_vip = ntma.registered().unwrap();
    assert_eq!(w.dhclient().unwrap(), gn_vip);
    let d = w.dig(Role::Gn, "100.64.0.1", CN2_FQDN).unwrap();
    assert_eq!(d.a, vec![cn2_vip], "{d:?}");
    ntma.wait("relayed tunnel up", |s| {
        s.tunnel_to(CN2_FQDN)
            .is_some_and(|t| t.up && t.path == "relay")
    })
    .unwrap();
    let observed = ntma.status().unwrap().gns[0].registration.observed.unwrap();
    let of = |frames: &[ntm_world::raw::UdpFrame], t: MessageType, src: std::net::Ipv4Addr| {
        frames
            .iter()
            .rfind(|u| ntm_type(u) == u8::from(t) && u.src == src)
            .cloned()
            .unwrap_or_else(|| panic!("recorded a {t:?} from {src}"))
    };
    let to_dc = received_to(&at_dc, dc);
    let reg_req = of(&to_dc, MessageType::RegReq, *observed.ip());
    let dir_req = of(&to_dc, MessageType::DirReq, *observed.ip());
    let relay_dir = of(&received_to(&at_rs, rs), MessageType::RelayDir, DC_ADDR);

    w.dc.as_ref()
        .expect("the DC runs")
        .signal(Signal::SIGKILL)
        .expect("SIGKILL");
    w.stop_dc().expect("reap ntm-dc");
    w.start_dc().expect("start ntm-dc again");
    assert!(
        wait_until(PATIENCE, || w.dc_status().is_ok()),
        "the restarted DC answers on its status socket: {}",
        w.dc_log()
    );
    let rs_replays = rs_drops(&w, "replay").expect("the RS logs its stats");
    let registrations = stat(&w, "registrations") + stat(&w, "renewals");
    let dir_reqs = stat(&w, "dir_reqs");

    // From the cn namespace, on the same bridge, with the recorded sources.
    let src = |u: &ntm_world::raw::UdpFrame| SocketAddrV4::new(u.src, u.src_port);
    for u in [&reg_req, &dir_req] {
        spoof(&w, Role::Cn, u.dst_mac, src(u), dc, &u.payload);
    }
    spoof(&w, Role::Cn, relay_dir.dst_mac, dc, rs, &relay_dir.payload);
    assert!(
        wait_until(PATIENCE, || dc_drops(&w, "replay") >= 2),
        "the restarted DC refuses the recorded REG_REQ and DIR_REQ as replays: {:?}",
        w.dc_status().map(|s| s.drops)
    );
    assert!(
        wait_until(PATIENCE, || rs_drops(&w, "replay")
            .is_some_and(|n| n > rs_replays)),
        "the RS refuses the recorded RELAY_DIR: {}",
        w.rs.log()
    );
    assert_eq!(
        (
            stat(&w, "registrations") + stat(&w, "renewals"),
            stat(&w, "dir_reqs")
        ),
        (registrations, dir_reqs),
        "nothing recorded was acted on"
    );
    let p = w.ping(Role::Gn, cn2_vip, 3).unwrap();
    assert_eq!(
        p.received, p.sent,
        "the relayed tunnel goes on: {}",
        p.output
    );
}
