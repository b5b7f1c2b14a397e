//! Loss on the WAN path (issue 13): the fault injector of `ntm-faults` drops one IPv4
//! frame in N in both directions between the adapter and the internet (XDP on nat1's
//! `lan` and `wan`). Signaling must get through on its retransmissions (§5
//! "Retransmission"), TCP through the tunnel must deliver every byte, and a ping sees
//! about the loss the injector makes. No delay: this kernel has neither netem nor the
//! `fq` qdisc an earliest-departure-time delay needs (`docs/testbed-extras.md` "Faults").
//!
//! Figures are printed with `MEASURED`, never asserted tightly:
//! `cargo test -p ntm-world --test wan_loss -- --nocapture`.

use std::time::Duration;

use ntm_faults::Loss;
use ntm_testbed::ifname;
use ntm_world::{Role, World, CN_FQDN, GN_FQDN, NTMA_LAN_ADDR};

/// Heavy loss while signaling: one frame in 3 (per CPU, each way), so that some of
/// the registration's and the set-up's messages are lost for certain. The drops are
/// never two in a row on one CPU, so every retransmission chain gets through.
const SETUP_ONE_IN: u32 = 3;
/// The loss under traffic: one frame in 20 each way.
const ONE_IN: u32 = 20;
/// Bytes iperf3 sends (a whole number of its 128 KiB blocks).
const IPERF_BYTES: u64 = 8 << 20;
/// Pings (10 ms apart).
const PINGS: u32 = 400;

#[test]
fn a_lossy_wan_sets_tunnels_up_and_carries_every_byte() {
    let w = World::up("wloss").expect("these integration tests need root and a working testbed");
    let nat1 = w.tb.ns(Role::Nat1);
    eprintln!(
        "MEASURED fq qdisc (needed for a delay injector): {}",
        if ntm_faults::has_fq(&nat1) {
            "present (delay not implemented yet)"
        } else {
            "absent on this kernel: no delay injected"
        }
    );
    let mut loss = Loss::attach(&nat1, &[ifname::NAT_LAN, ifname::NAT_WAN], SETUP_ONE_IN)
        .expect("attach the fault injector to nat1");

    // (a) Registration and a tunnel set up by one DNS query, through the loss.
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let cn_vip = cn.registered().unwrap();
    let gn_vip = ntma.registered().unwrap();
    assert_eq!(w.dhclient().unwrap(), gn_vip);
    let d = w
        .dig(Role::Gn, &NTMA_LAN_ADDR.to_string(), CN_FQDN)
        .unwrap();
    assert_eq!(
        (d.status.as_str(), d.a.clone()),
        ("NOERROR", vec![cn_vip]),
        "one DNS query through the loss: {d:?}"
    );
    ntma.wait("tunnel to cn up", |s| {
        s.tunnel_between(GN_FQDN, CN_FQDN).is_some_and(|t| t.up)
    })
    .unwrap();
    cn.wait("cn's tunnel to the GN up", |s| {
        s.tunnel_to(GN_FQDN).is_some()
    })
    .unwrap();
    let setup = loss.counts().unwrap();
    eprintln!(
        "MEASURED signaling under 1/{SETUP_ONE_IN} loss: {} of {} IPv4 frames dropped, DNS answer {:?} ms",
        setup.dropped, setup.seen, d.query_ms
    );
    assert!(setup.dropped > 0, "the injector dropped nothing: {setup:?}");

    // (b) TCP through the tunnel under 1/N loss each way: the transfer completes, and
    // every byte arrives intact (iperf3 stops counting at the receiver when the sender
    // ends the test, so the exact count is checked with a byte-compared transfer).
    loss.set_one_in(ONE_IN).unwrap();
    let before = loss.counts().unwrap();
    let i = w
        .iperf3_with(Role::Cn, cn_vip, Role::Gn, &format!("-n {IPERF_BYTES}"))
        .unwrap();
    // iperf3 sends whole blocks: the last may go past -n.
    assert!(i.sent_bytes >= IPERF_BYTES, "{i:?}");
    assert!(i.received_bytes > 0, "{i:?}");
    w.tcp_both_ways((gn_vip, cn_vip), 1 << 20, 7, 5007)
        .expect("1 MiB each way, byte for byte, through the loss");
    let during = loss.counts().unwrap();
    eprintln!(
        "MEASURED iperf3 gn -> cn under 1/{ONE_IN} loss: {} bytes sent, {} received before the end, {:.1} Mbit/s, {:?} retransmits; with 1 MiB each way by nc, the injector dropped {} of {} frames ({:.2}%)",
        i.sent_bytes,
        i.received_bytes,
        i.received_bps / 1e6,
        i.retransmits,
        during.dropped - before.dropped,
        during.seen - before.seen,
        ratio(before, during) * 100.0
    );
    assert!(during.dropped > before.dropped, "the transfers met no loss");

    // (c) Ping: each round trip crosses the injector twice, so about 2/N is lost.
    let p = w
        .ping_every(Role::Gn, cn_vip, PINGS, Duration::from_millis(10))
        .unwrap();
    let after = loss.counts().unwrap();
    let lost = f64::from(p.sent - p.received) / f64::from(p.sent.max(1));
    eprintln!(
        "MEASURED ping gn -> cn under 1/{ONE_IN} loss each way: {} of {} answered ({:.1}% lost; expected about {:.1}%), rtt {:?}; injector {:.2}%",
        p.received,
        p.sent,
        lost * 100.0,
        (1.0 - (1.0 - 1.0 / f64::from(ONE_IN)).powi(2)) * 100.0,
        p.rtt,
        ratio(during, after) * 100.0
    );
    assert_eq!(p.sent, PINGS, "{}", p.output);
    assert!(
        p.received < p.sent && p.received > p.sent / 2,
        "some but not most pings lost: {}",
        p.output
    );

    // Without loss, the same tunnel is clean again.
    loss.set_one_in(0).unwrap();
    let p = w.ping(Role::Gn, cn_vip, 5).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
}

/// The share of IPv4 frames the injector dropped between two readings.
fn ratio(a: ntm_faults::LossCounts, b: ntm_faults::LossCounts) -> f64 {
    ntm_faults::LossCounts {
        seen: b.seen - a.seen,
        dropped: b.dropped - a.dropped,
    }
    .ratio()
}
