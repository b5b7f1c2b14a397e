//! The node's metrics, built from its [`Status`] snapshot when scraped
//! (the same snapshot as the status file and the statistics log line).

use ntm_ops::metrics::{labels, Scrape, OTHER_PEERS};
use ntm_proto::dns::DnsDrop;
use ntm_proto::Error;

use crate::stats::{LocalDrop, Status};

/// Every drop reason the node counts (protocol, DNS stub, its own).
pub fn drop_reasons() -> impl Iterator<Item = &'static str> {
    Error::ALL
        .iter()
        .map(|e| e.name())
        .chain(DnsDrop::ALL.iter().map(|d| d.name()))
        .chain(LocalDrop::ALL.iter().map(|d| d.name()))
}

/// The scrape of a status snapshot; at most `max_labels` tunnels get a
/// series of their own, the rest are summed under peer `_other`.
pub fn scrape(st: &Status, max_labels: usize) -> Scrape {
    let mut m = Scrape::new();
    m.gauges(
        "ntm_node_info",
        "The node: its FQDN and version (always 1).",
        [(
            labels([("fqdn", &st.fqdn), ("version", env!("CARGO_PKG_VERSION"))]),
            1.0,
        )],
    );
    m.gauge(
        "ntm_node_registered",
        "Whether the node holds a registration with the DC (1) or not (0).",
        if st.vip.is_some() { 1.0 } else { 0.0 },
    );
    let up = st.tunnels.iter().filter(|t| t.up).count();
    m.gauges(
        "ntm_node_tunnels",
        "Tunnels: up, or being set up.",
        [
            (labels([("state", "up")]), up as f64),
            (labels([("state", "setup")]), (st.tunnels.len() - up) as f64),
        ],
    );
    let mut per_peer: Vec<(ntm_ops::metrics::Labels, f64)> = st
        .tunnels
        .iter()
        .take(max_labels)
        .map(|t| {
            (
                labels([
                    ("peer", &t.peer_fqdn),
                    ("path", &t.path),
                    ("suite", &t.suite),
                ]),
                if t.up { 1.0 } else { 0.0 },
            )
        })
        .collect();
    let rest = st.tunnels.iter().skip(max_labels).filter(|t| t.up).count();
    if st.tunnels.len() > max_labels {
        per_peer.push((
            labels([("peer", OTHER_PEERS), ("path", "-"), ("suite", "-")]),
            rest as f64,
        ));
    }
    m.gauges(
        "ntm_node_tunnel_up",
        "Per tunnel (by peer FQDN, at most metrics.max_tunnel_labels): up (1) or being set up (0).",
        per_peer,
    );
    m.counters(
        "ntm_node_events",
        "Packets and events: tun_rx/tun_tx (TUN device), data_tx/data_rx (tunnel DATA), held/released (hold queue), keepalive_rx, dns_* (stub), registrations, dc_failovers (moves to the next DC), tunnels_up/down.",
        st.packets
            .iter()
            .map(|(k, v)| (labels([("event", k)]), *v)),
    );
    m.counters(
        "ntm_node_drops",
        "Packets and datagrams dropped, by reason.",
        drop_reasons().map(|r| (labels([("reason", r)]), st.drop_count(r))),
    );
    m
}
