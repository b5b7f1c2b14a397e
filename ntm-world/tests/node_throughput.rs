//! iperf3 both ways through the software node's TUN device (issue 15,
//! item 3): cn <-> gn through the adapter, and cn <-> cn2 (node to node,
//! cn2 behind nat2). Each run reports throughput, the sender's TCP
//! retransmissions, the TUN devices' drops from the nodes' status files and
//! every other drop and TCP counter of the testbed that grew
//! ([`ntm_world::counters`]), as `MEASURED` lines:
//! `cargo test -p ntm-world --test node_throughput -- --nocapture`.
//!
//! Asserted is only what must hold on any machine: the transfers complete,
//! the TUN device's counters are in the status, and they agree with the
//! node's own (the kernel counts one super-packet where the node counts
//! its segments, so the node never counts fewer). Never rates or times.
//!
//! Needs root and the workspace binaries (`cargo build --workspace --bins`).

use std::net::Ipv4Addr;

use ntm_testbed::{unique_prefix, Role, CN2_FQDN, CN_FQDN};
use ntm_world::counters::{describe, Transfer};
use ntm_world::{Node, World};

/// Seconds per iperf3 run.
const SECS: u32 = 3;

fn up(tag: &str) -> World {
    World::up_with(&unique_prefix(tag), |_| {})
        .expect("these integration tests need root and a working testbed")
}

/// The TUN device's counters in `node`'s status agree with the node's own
/// packet counters; returns its drops (`tx_dropped + rx_dropped`).
fn tun_drops_checked(node: &mut Node) -> u64 {
    // The status is rewritten every second: wait for one that counts the
    // packets that went through the device so far (a ping at least).
    let st = node
        .wait("TUN counters in the status", |s| {
            s.tun.counters.contains_key("tx_dropped")
                && s.tun.counters.contains_key("rx_dropped")
                && s.tun.counter("tx_packets") > 0
                && s.tun.counter("rx_packets") > 0
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let t = &st.tun;
    assert_eq!(t.name, "ntm0");
    assert!(t.queue_len >= ntm_node::config::MIN_TUN_QUEUE_LEN, "{t:?}");
    // Read and counted in the same task: the kernel's tx (to the node) and
    // rx (from the node) never exceed what the node counted, segments and
    // packets before GRO.
    let (kernel_tx, node_rx) = (t.counter("tx_packets"), st.packet_count("tun_rx"));
    let (kernel_rx, node_tx) = (t.counter("rx_packets"), st.packet_count("tun_tx"));
    assert!(
        node_rx >= kernel_tx,
        "{}: the node read {node_rx} packets, the kernel counts {kernel_tx} reads: {t:?}",
        node.fqdn
    );
    assert!(
        node_tx + st.drop_count("tun_write_failed") >= kernel_rx,
        "{}: the node wrote {node_tx} packets, the kernel counts {kernel_rx} writes: {t:?}",
        node.fqdn
    );
    if !t.offload {
        assert_eq!(node_rx, kernel_tx, "without offload one read is one packet");
    }
    t.dropped()
}

/// iperf3 from `client` to the server on `server_vip` in `server` (the
/// server sends if `reverse`), checked and reported with the TUN drops of
/// `nodes` during the run.
fn run(
    w: &World,
    what: &str,
    (server, server_vip): (Role, Ipv4Addr),
    client: Role,
    reverse: bool,
    nodes: &mut [&mut Node],
) -> Transfer {
    let before: Vec<u64> = nodes.iter_mut().map(|n| tun_drops_checked(n)).collect();
    let t = w
        .iperf3_counted(server, server_vip, client, SECS, reverse)
        .unwrap_or_else(|e| panic!("iperf3 {what}: {e:#}"));
    assert!(
        t.iperf.received_bytes > 0 && t.iperf.received_bps > 0.0,
        "iperf3 {what}: nothing arrived: {:?}",
        t.iperf
    );
    // The status file is rewritten every second: let one be written after
    // the run's last packets.
    std::thread::sleep(2 * ntm_node::STATUS_EVERY);
    let mut drops = Vec::new();
    for (n, b) in nodes.iter_mut().zip(before) {
        let after = tun_drops_checked(n);
        assert!(
            after >= b,
            "{}: TUN drops went down: {b} -> {after}",
            n.fqdn
        );
        drops.push(format!("{} ntm0 {}", n.role, after - b));
    }
    eprintln!(
        "MEASURED iperf3 {what}: {:.0} Mbit/s, {} TCP retransmissions; TUN drops (node status): {}; counters grown on the testbed: {}",
        t.iperf.received_bps / 1e6,
        t.iperf
            .retransmits
            .map_or_else(|| "?".into(), |r| r.to_string()),
        drops.join(", "),
        describe(&t.grown)
    );
    t
}

/// cn <-> gn through the adapter, as in the demo: gn -> cn, then cn -> gn
/// (`-R`, cn's node reads its TUN device at the sender's rate).
#[test]
fn iperf3_both_ways_between_a_node_and_a_gn() {
    let w = up("nodethru");
    let mut cn = w.node(Role::Cn, CN_FQDN).expect("start ntm-node");
    cn.registered().unwrap();
    let mut ntma = w.ntma(|_| {}).expect("start ntma");
    let (_gn_vip, cn_vip) = w
        .leased_with_tunnel(&mut ntma)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let server = (Role::Cn, cn_vip);
    run(&w, "gn -> cn", server, Role::Gn, false, &mut [&mut cn]);
    run(&w, "cn -> gn (-R)", server, Role::Gn, true, &mut [&mut cn]);
    let st = ntma.status().expect("ntma answers");
    eprintln!("MEASURED ntma drops after both runs: {:?}", st.drops());
}

/// cn <-> cn2, two software nodes (cn2 behind nat2): cn2 -> cn, then
/// cn -> cn2 (`-R`). Each node reads at the sender's rate one way and
/// writes the other.
#[test]
fn iperf3_both_ways_between_two_nodes() {
    let w = up("nodethru2");
    let mut cn = w.node(Role::Cn, CN_FQDN).expect("start ntm-node");
    let mut cn2 = w.node(Role::Cn2, CN2_FQDN).expect("start ntm-node");
    let cn_vip = cn.registered().unwrap();
    cn2.registered().unwrap();
    let d = w.dig(Role::Cn2, "127.0.0.1", CN_FQDN).expect("dig");
    assert_eq!(d.a, vec![cn_vip], "{d:?}");
    cn2.wait("tunnel to cn", |s| s.tunnel_to(CN_FQDN).is_some())
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Through both TUN devices once before the first counters are read.
    let p = w.ping(Role::Cn2, cn_vip, 2).expect("ping");
    assert!(p.received > 0, "{}", p.output);
    let server = (Role::Cn, cn_vip);
    run(
        &w,
        "cn2 -> cn",
        server,
        Role::Cn2,
        false,
        &mut [&mut cn, &mut cn2],
    );
    run(
        &w,
        "cn -> cn2 (-R)",
        server,
        Role::Cn2,
        true,
        &mut [&mut cn, &mut cn2],
    );
}
