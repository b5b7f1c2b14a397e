//! The adapter with `datapath.kind = "raw"` (the raw-socket fallback for hosts without
//! AF_XDP) on the testbed: DHCP, DNS, ping and TCP both ways through the tunnel, no XDP
//! program attached, the traffic counted by the raw worker, nothing dropped. Needs root
//! and the workspace binaries (`cargo build --workspace --bins`); fails without them.

use ntm_world::settle::tunnel_up_at_both_ends;
use ntm_world::{Role, World, CN_FQDN, GN_FQDN, NTMA_LAN_ADDR};
use ntma_user::config::DatapathKind;

#[test]
fn the_raw_datapath_carries_the_demo() {
    let w = World::up("araw").expect("these integration tests need root and a working testbed");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w
        .ntma(|c| {
            c.datapath.kind = DatapathKind::Raw;
            c.datapath.queues = 1;
        })
        .unwrap();
    let cn_vip = cn.registered().unwrap();
    let gn_vip = ntma.registered().unwrap();
    let st = ntma.status().unwrap();
    assert_eq!(st.datapath.mode, "raw");
    assert!(
        w.xdp_attached(Role::Ntma).unwrap().is_empty(),
        "no XDP in raw mode"
    );

    assert_eq!(w.dhclient().unwrap(), gn_vip);
    let d = w
        .dig(Role::Gn, &NTMA_LAN_ADDR.to_string(), CN_FQDN)
        .unwrap();
    assert_eq!((d.status.as_str(), d.a.clone()), ("NOERROR", vec![cn_vip]));
    // The answer comes with the direction, before the tunnel is up: the
    // pings below are about the raw datapath, not the hold queue.
    tunnel_up_at_both_ends(&mut ntma, GN_FQDN, &mut cn).unwrap();
    let p = w.ping(Role::Gn, cn_vip, 5).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    let p = w.ping(Role::Cn, gn_vip, 5).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);

    // A veth hands the raw socket gn's TSO segments whole (a wire never would, and
    // with XDP attached the kernel turns the peer's TSO off itself): MTU-sized frames.
    w.sh(Role::Gn, "ethtool -K eth0 tso off gso off").unwrap();
    w.tcp_both_ways((gn_vip, cn_vip), 256 << 10, 7, 5011)
        .unwrap();

    let st = ntma.status().unwrap();
    let t = st.tunnel_to(CN_FQDN).expect("a tunnel to cn");
    assert!(t.tx_packets > 100 && t.rx_packets > 100, "{t:?}");
    assert!(st.worker_counter("wan_tx") > 100 && st.worker_counter("lan_tx") > 100);
    for w in &st.datapath.workers {
        assert!(
            w.drops.values().all(|&n| n == 0),
            "raw datapath drops: {:?}",
            w.drops
        );
    }
    assert!(ntma.status_text().unwrap().contains("raw sockets"));
    let exit = ntma.stop().unwrap();
    assert!(exit.success(), "ntma exit: {exit}\n{}", ntma.child.log());
}
