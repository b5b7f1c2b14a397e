//! What `ntm-rs status` shows and what its metrics are built from: one
//! snapshot of the relay ([`Status::of`]), served as JSON on the status
//! socket, rendered as text ([`Status::render`]) and turned into a scrape
//! ([`Status::metrics`]) at the same moment.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use ntm_ops::cli::StatusText;
use ntm_ops::metrics::{labels, Scrape};
use ntm_proto::counters::Reason;
use serde::{Deserialize, Serialize};

use crate::relay::{DropReason, Relay};

/// The relay's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// RS id.
    pub id: u32,
    /// Where it listens.
    pub listen: SocketAddrV4,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// `max_bindings`.
    pub max_bindings: usize,
    /// Every binding, by tunnel id.
    pub bindings: Vec<BindingStatus>,
    /// What it did, by name.
    pub stats: BTreeMap<String, u64>,
    /// Drops by reason (every reason, zero included).
    pub drops: BTreeMap<String, u64>,
}

/// One relay binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingStatus {
    /// Tunnel id.
    pub tunnel_id: u32,
    /// The initiator's bound address.
    pub initiator: Option<SocketAddrV4>,
    /// The responder's bound address.
    pub responder: Option<SocketAddrV4>,
    /// Idle lifetime, seconds.
    pub lifetime_secs: u64,
}

impl Status {
    /// A snapshot of `rs`; `send_errors` and `uptime_secs` come from the driver.
    pub fn of(rs: &Relay, uptime_secs: f64, send_errors: u64) -> Status {
        let s = rs.stats();
        let mut bindings: Vec<BindingStatus> = rs
            .bindings()
            .map(|(tunnel_id, b)| BindingStatus {
                tunnel_id,
                initiator: b.initiator,
                responder: b.responder,
                lifetime_secs: b.lifetime.as_secs(),
            })
            .collect();
        bindings.sort_by_key(|b| b.tunnel_id);
        let stats = [
            ("datagrams", s.datagrams),
            ("relay_dirs", s.relay_dirs),
            ("relay_dir_repeats", s.relay_dir_repeats),
            ("binds", s.binds),
            ("forwarded", s.forwarded),
            ("forwarded_bytes", s.forwarded_bytes),
            ("expired", s.expired),
            ("send_errors", send_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let drops = DropReason::all()
            .map(|r| (r.name().to_owned(), rs.drops().get(r)))
            .collect();
        Status {
            id: rs.settings().id,
            listen: rs.settings().listen,
            pid: std::process::id(),
            uptime_secs,
            max_bindings: rs.settings().max_bindings,
            bindings,
            stats,
            drops,
        }
    }

    /// A statistic by name (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats.get(name).copied().unwrap_or(0)
    }

    /// Bindings bound at both ends.
    fn bound_at_both_ends(&self) -> usize {
        self.bindings
            .iter()
            .filter(|b| b.initiator.is_some() && b.responder.is_some())
            .count()
    }

    /// The text view.
    pub fn render(&self) -> String {
        let mut t = StatusText::new(format_args!(
            "ntm-rs id {} on {} (pid {}, up {:.0} s): {} binding(s), {} bound at both ends, at most {}",
            self.id,
            self.listen,
            self.pid,
            self.uptime_secs,
            self.bindings.len(),
            self.bound_at_both_ends(),
            self.max_bindings
        ));
        let opt = |a: Option<SocketAddrV4>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
        for b in &self.bindings {
            t.item(format_args!(
                "tunnel {}: initiator {} responder {} (idle lifetime {} s)",
                b.tunnel_id,
                opt(b.initiator),
                opt(b.responder),
                b.lifetime_secs
            ));
        }
        t.finish(&self.stats, &self.drops)
    }

    /// The scrape of this snapshot.
    pub fn metrics(&self) -> Scrape {
        let mut m = Scrape::new();
        let id = self.id.to_string();
        m.gauges(
            "ntm_rs_info",
            "The relay server: its id and version (always 1).",
            [(
                labels([("id", &id), ("version", env!("CARGO_PKG_VERSION"))]),
                1.0,
            )],
        );
        m.gauge(
            "ntm_rs_uptime_seconds",
            "Seconds since start.",
            self.uptime_secs,
        );
        m.counter(
            "ntm_rs_datagrams",
            "Datagrams received.",
            self.stat("datagrams"),
        );
        m.counter(
            "ntm_rs_forwarded_packets",
            "Tunnel datagrams forwarded between the two bound ends.",
            self.stat("forwarded"),
        );
        m.counter(
            "ntm_rs_forwarded_bytes",
            "Bytes (UDP payload) forwarded.",
            self.stat("forwarded_bytes"),
        );
        m.counters(
            "ntm_rs_events",
            "Signaling handled: relay_dir (bindings opened or re-keyed), relay_dir_repeat, bind (RELAY_BINDs), expired (idle bindings), send_error.",
            [
                ("relay_dir", "relay_dirs"),
                ("relay_dir_repeat", "relay_dir_repeats"),
                ("bind", "binds"),
                ("expired", "expired"),
                ("send_error", "send_errors"),
            ]
            .map(|(event, stat)| (labels([("event", event)]), self.stat(stat))),
        );
        m.counters_by(
            "ntm_rs_drops",
            "Datagrams dropped, by reason.",
            "reason",
            &self.drops,
        );
        let both = self.bound_at_both_ends();
        m.states(
            "ntm_rs_bindings",
            "Relay bindings: bound at both ends, or still waiting for one.",
            [("both", both), ("half", self.bindings.len() - both)],
        );
        m.gauge(
            "ntm_rs_max_bindings",
            "The binding table's size (max_bindings).",
            self.max_bindings as f64,
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use ntm_proto::Key;
    use std::time::Instant;

    #[test]
    fn snapshot_text_json_and_metrics_agree() {
        let now = Instant::now();
        let mut rs = Relay::new(&Config::new(4, &Key::from_bytes([3; 32])), now, 1).unwrap();
        let _ = rs.handle(now, "198.18.0.9:7700".parse().unwrap(), &[0u8; 40]);
        let st = Status::of(&rs, 2.0, 1);
        assert_eq!(st.stat("datagrams"), 1);
        assert_eq!(st.drops.values().sum::<u64>(), 1);
        let back: Status = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back, st);
        let text = st.render();
        assert!(text.contains("ntm-rs id 4"), "{text}");
        assert!(text.contains("send_errors=1"), "{text}");
        let m = st.metrics().text();
        assert!(m.contains("ntm_rs_datagrams_total 1"), "{m}");
        assert!(
            m.contains("ntm_rs_drops_total{reason=\"half_bound\"} 0"),
            "{m}"
        );
        assert!(
            m.contains("ntm_rs_events_total{event=\"send_error\"} 1"),
            "{m}"
        );
    }
}
