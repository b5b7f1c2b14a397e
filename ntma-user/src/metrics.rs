//! The adapter's metrics, built when scraped from the same [`Status`]
//! snapshot `ntma status` shows (the fast-path workers do nothing for
//! them), plus the set-up latency histogram the control side keeps.
//!
//! Every series of a GN carries its FQDN as `gn`; tunnels are labelled by
//! peer FQDN, at most `metrics.max_tunnel_labels` of them: the rest are
//! summed under `peer="_other"`.

use std::collections::BTreeMap;

use ntm_ops::metrics::{labels, Labels, Scrape, SetupHistograms, OTHER_PEERS};

use crate::status::Status;

/// The scrape of a status snapshot and the set-up histograms.
pub fn scrape(st: &Status, setup: &SetupHistograms, max_tunnel_labels: usize) -> Scrape {
    let mut m = Scrape::new();
    adapter_series(&mut m, st);
    datapath_series(&mut m, st);
    slow_path_series(&mut m, st);
    tunnel_series(&mut m, st, max_tunnel_labels);
    m.metric(
        "ntma_tunnel_setup_seconds",
        "From the GN's request (DNS query or packet) to the tunnel being up.",
        setup.clone(),
    );
    m.gauge(
        "ntma_capabilities_kept",
        "Capabilities the control thread kept after set-up (see ntma status).",
        st.capabilities.len() as f64,
    );
    m
}

/// The adapter: what it is, whether each GN is registered and holds a lease.
fn adapter_series(m: &mut Scrape, st: &Status) {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    m.gauges(
        "ntma_info",
        "The adapter: its name, datapath mode and version (always 1).",
        [(
            labels([
                ("name", &st.name),
                ("mode", &st.datapath.mode),
                ("version", env!("CARGO_PKG_VERSION")),
            ]),
            1.0,
        )],
    );
    m.gauge(
        "ntma_uptime_seconds",
        "Seconds since start.",
        st.uptime_secs,
    );
    m.gauges(
        "ntma_registered",
        "Whether the GN holds a registration with the DC (1) or not (0).",
        st.gns.iter().map(|g| {
            let l = labels([("gn", &g.registration.fqdn)]);
            (l, flag(g.registration.registered))
        }),
    );
    m.counters(
        "ntma_dc_failovers",
        "Moves of the GN's registration from an unanswering DC to the next configured one.",
        st.gns.iter().map(|g| {
            let l = labels([("gn", &g.registration.fqdn)]);
            (l, g.registration.dc_failovers)
        }),
    );
    m.gauges(
        "ntma_gn_lease_bound",
        "Whether the GN holds a DHCP lease of its VIP (1) or not (0).",
        st.gns.iter().map(|g| {
            let l = labels([("gn", &g.registration.fqdn)]);
            (l, flag(g.gn.lease_bound))
        }),
    );
    m.gauge(
        "ntma_link_ready",
        "Whether the fast path can forward (the uplink's gateway MAC known).",
        flag(st.datapath.link_ready),
    );
}

/// The datapath: XDP verdicts, workers' frames and drops, AF_XDP rings.
fn datapath_series(m: &mut Scrape, st: &Status) {
    m.counters(
        "ntma_xdp_verdicts",
        "XDP programs' verdicts, summed over CPUs.",
        st.datapath
            .xdp
            .iter()
            .map(|(v, n)| (labels([("verdict", v)]), *n)),
    );
    m.counters(
        "ntma_worker_frames",
        "Fast-path worker frame counters: lan_rx/wan_rx (received), lan_tx/wan_tx (sent), slow (to the slow queue), keepalives, batches (non-empty RX bursts), lan_kicks/wan_kicks (TX wake-ups), polls, cycles_process/cycles_ring/cycles_syscall (loop time by kind, in ntma_worker_cycles_per_second units).",
        st.datapath.workers.iter().flat_map(|w| {
            let q = w.queue.to_string();
            w.counters
                .iter()
                .map(move |(k, v)| (labels([("queue", &q), ("counter", k)]), *v))
        }),
    );
    m.counters(
        "ntma_worker_drops",
        "Fast-path drops, by worker and reason (every reason).",
        st.datapath.workers.iter().flat_map(|w| {
            let q = w.queue.to_string();
            w.drops
                .iter()
                .map(move |(r, v)| (labels([("queue", &q), ("reason", r)]), *v))
        }),
    );
    worker_health_series(m, st);
    m.gauge(
        "ntma_worker_cycles_per_second",
        "The unit of the cycles_* worker counters, per second (the TSC frequency; 1e9 when the workers' clock is the monotonic clock in ns).",
        st.datapath.cycles_per_second as f64,
    );
    m.counters(
        "ntma_xsk_ring_events",
        "The kernel's AF_XDP ring counters (XDP_STATISTICS) by queue and NIC: rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs, tx_ring_empty_descs.",
        st.datapath.rings.iter().flat_map(|r| {
            let q = r.queue.to_string();
            r.counters.iter().map(move |(k, v)| {
                (
                    labels([("queue", &q), ("side", &r.side), ("counter", k)]),
                    *v,
                )
            })
        }),
    );
    m.counters(
        "ntma_nic_losses",
        "The kernel's drop and error counters of both interfaces (sysfs statistics) by NIC: rx_dropped, tx_dropped, rx_missed_errors, rx_fifo_errors, rx_errors, tx_errors.",
        st.datapath.nics.iter().flat_map(|n| {
            n.counters.iter().map(move |(k, v)| {
                (
                    labels([("side", &n.side), ("interface", &n.name), ("counter", k)]),
                    *v,
                )
            })
        }),
    );
}

/// Each worker's UMEM frames and its supervisor's view (panics, up).
fn worker_health_series(m: &mut Scrape, st: &Status) {
    m.gauges(
        "ntma_umem_frames",
        "Where each AF_XDP worker's UMEM frames are: free (its pool), fill (given to the kernel to receive into), tx (sent, not yet completed), held (between rings); they add up to its share of the UMEM.",
        st.datapath
            .workers
            .iter()
            .filter(|w| w.frames.total > 0)
            .flat_map(|w| {
                let q = w.queue.to_string();
                let f = w.frames;
                [
                    ("free", f.free),
                    ("fill", f.fill),
                    ("tx", f.tx),
                    ("held", f.held()),
                ]
                .map(|(k, v)| (labels([("queue", q.as_str()), ("where", k)]), v as f64))
            }),
    );
    m.counters(
        "ntma_worker_panics",
        "Panics of each datapath worker, caught by its supervisor (which restarts it).",
        st.datapath
            .workers
            .iter()
            .map(|w| (labels([("queue", &w.queue.to_string())]), w.panics)),
    );
    m.gauges(
        "ntma_worker_up",
        "Whether the datapath worker forwards (1), or is restarting, failed or stopped (0).",
        st.datapath.workers.iter().map(|w| {
            let up = w.state == crate::status::WorkerState::Running;
            (
                labels([("queue", &w.queue.to_string())]),
                if up { 1.0 } else { 0.0 },
            )
        }),
    );
}

/// The slow path and the control: drops, events, held packets.
fn slow_path_series(m: &mut Scrape, st: &Status) {
    m.counters(
        "ntma_slow_path_drops",
        "Slow-path drops by reason (GN services, proto_* for the protocol endpoint, the control's own).",
        st.slow_path
            .drops
            .iter()
            .map(|(r, v)| (labels([("reason", r)]), *v)),
    );
    m.counters(
        "ntma_slow_path_events",
        "What the slow path and the control did, by event.",
        st.slow_path
            .stats
            .iter()
            .filter(|(k, _)| k.as_str() != "held_now")
            .map(|(k, v)| (labels([("event", k)]), *v)),
    );
    m.gauge(
        "ntma_held_packets",
        "Packets waiting for a tunnel now.",
        st.slow_path.stats.get("held_now").copied().unwrap_or(0) as f64,
    );
}

/// Tunnels: how many, and their traffic by peer (at most `max_tunnel_labels` peers).
fn tunnel_series(m: &mut Scrape, st: &Status, max_tunnel_labels: usize) {
    m.gauges(
        "ntma_tunnels",
        "Tunnels of each GN: up, or being set up.",
        st.gns.iter().flat_map(|g| {
            let gn = &g.registration.fqdn;
            let mine = st.tunnels.iter().filter(|t| &t.gn == gn);
            let up = mine.clone().filter(|t| t.up).count();
            let setup = mine.count() - up;
            [
                (labels([("gn", gn.as_str()), ("state", "up")]), up as f64),
                (
                    labels([("gn", gn.as_str()), ("state", "setup")]),
                    setup as f64,
                ),
            ]
        }),
    );
    // Per tunnel, by GN and peer, capped.
    let mut by_peer: BTreeMap<(String, String), [u64; 4]> = BTreeMap::new();
    for (i, t) in st.tunnels.iter().enumerate() {
        let peer = if i < max_tunnel_labels {
            t.peer_fqdn.clone()
        } else {
            OTHER_PEERS.to_owned()
        };
        let e = by_peer.entry((t.gn.clone(), peer)).or_default();
        e[0] += t.tx_packets;
        e[1] += t.tx_bytes;
        e[2] += t.rx_packets;
        e[3] += t.rx_bytes;
    }
    let series = |idx_tx: usize, idx_rx: usize| -> Vec<(Labels, u64)> {
        by_peer
            .iter()
            .flat_map(|((gn, peer), c)| {
                [("tx", c[idx_tx]), ("rx", c[idx_rx])]
                    .map(|(dir, v)| (labels([("gn", gn), ("peer", peer), ("direction", dir)]), v))
            })
            .collect()
    };
    m.counters(
        "ntma_tunnel_packets",
        "Tunnel DATA by peer (tx: sent, rx: accepted), counted by the fast path.",
        series(0, 2),
    );
    m.counters(
        "ntma_tunnel_bytes",
        "Tunnel bytes by peer (tx: sent, rx: accepted).",
        series(1, 3),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_the_status_becomes_a_series() {
        let st = crate::status::tests::sample();
        let h = ntm_ops::metrics::setup_histograms();
        h.get_or_create(&labels([("gn", "gn.ntm.test")]))
            .observe(0.0031);
        let text = scrape(&st, &h, 1000).text();
        for needle in [
            "ntma_registered{gn=\"gn.ntm.test\"} 1",
            "ntma_xdp_verdicts_total{verdict=\"lan_redirect\"} 5",
            "ntma_worker_drops_total{queue=\"0\",reason=\"bad_tag\"} 2",
            "ntma_worker_panics_total{queue=\"0\"} 0",
            "ntma_worker_up{queue=\"0\"} 1",
            "ntma_xsk_ring_events_total{queue=\"0\",side=\"lan\",counter=\"rx_dropped\"} 6",
            "ntma_nic_losses_total{side=\"wan\",interface=\"wan0\",counter=\"rx_dropped\"} 8",
            "ntma_tunnel_packets_total{gn=\"gn.ntm.test\",peer=\"cn.ntm.test\",direction=\"tx\"} 10",
            "ntma_tunnel_bytes_total{gn=\"gn.ntm.test\",peer=\"cn.ntm.test\",direction=\"rx\"} 900",
            "ntma_tunnel_setup_seconds_bucket{le=\"0.004\",gn=\"gn.ntm.test\"} 1",
            "ntma_slow_path_drops_total{reason=\"dns_too_big\"} 3",
            "ntma_umem_frames{queue=\"0\",where=\"fill\"} 2048",
            "ntma_umem_frames{queue=\"0\",where=\"held\"} 8",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        // Over the cap, tunnels are summed under _other.
        let text = scrape(&st, &h, 0).text();
        assert!(text.contains("peer=\"_other\""), "{text}");
        assert!(!text.contains("peer=\"cn.ntm.test\""), "{text}");
    }
}
