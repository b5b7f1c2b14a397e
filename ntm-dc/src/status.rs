//! What `ntm-dc status` shows and what its metrics are built from: one
//! snapshot of the coordinator ([`Status::of`]): registrations, directions
//! (tunnels being set up or remembered), relay bindings and counters;
//! served as JSON on the status socket, rendered as text
//! ([`Status::render`]) and turned into a scrape ([`Status::metrics`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use ntm_ops::cli::StatusText;
use ntm_ops::metrics::{labels, Scrape};
use ntm_proto::counters::Reason;
use serde::{Deserialize, Serialize};

use crate::coordinator::{Coordinator, End};
use crate::counters::{DropReason, Stats};
use crate::store::DcStore;

/// What the driver adds to the coordinator's own state.
pub use ntm_ops::server::DriverStats;

/// The DC's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Where it listens.
    pub listen: SocketAddrV4,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// `[[node]]` entries.
    pub nodes_configured: usize,
    /// Relay servers, by id.
    pub relays: Vec<RelayStatus>,
    /// Every registration (active or lapsed), by FQDN.
    pub registrations: Vec<RegistrationStatus>,
    /// Directed tunnels still remembered, by id.
    pub directions: Vec<DirectionStatus>,
    /// What it did, by name (every counter).
    pub stats: BTreeMap<String, u64>,
    /// Drops by reason (every reason).
    pub drops: BTreeMap<String, u64>,
}

/// One relay server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Its id.
    pub id: u32,
    /// Its address.
    pub addr: SocketAddrV4,
    /// Remembered tunnels directed through it (relay bindings).
    pub bindings: usize,
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationStatus {
    /// FQDN.
    pub fqdn: String,
    /// Node id.
    pub node_id: u32,
    /// VIP.
    pub vip: Ipv4Addr,
    /// Where its signaling comes from.
    pub observed: SocketAddrV4,
    /// The LOCAL_ADDR it reported.
    pub local: SocketAddrV4,
    /// Behind NAT (observed differs from local).
    pub behind_nat: bool,
    /// Keeping alive (reachable); lapsed otherwise.
    pub active: bool,
    /// Seconds until the lease ends.
    pub lease_secs_left: u64,
    /// The DC it is registered at, when that is another DC sharing the
    /// store (etcd); absent for this DC's own nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}

/// One direction (a tunnel the DC set up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionStatus {
    /// Tunnel id.
    pub tunnel_id: u32,
    /// "direct", "reverse" or "relay".
    pub path: String,
    /// The requester.
    pub mn: String,
    /// The target.
    pub cn: String,
    /// "mn" or "cn": who sends TUN_REQ.
    pub initiator: String,
    /// The relay's id on RELAY paths.
    pub relay_id: Option<u32>,
    /// Both ROUTE_DIRs went out.
    pub directed: bool,
    /// CN acknowledged.
    pub acked: bool,
}

/// The coordinator's counters by name, in one order.
pub fn stats_by_name(s: &Stats) -> [(&'static str, u64); 28] {
    [
        ("datagrams", s.datagrams),
        ("registrations", s.registrations),
        ("renewals", s.renewals),
        ("refused", s.refused),
        ("keepalives", s.keepalives),
        ("deregistrations", s.deregistrations),
        ("lapsed", s.lapsed),
        ("released", s.released),
        ("dir_reqs", s.dir_reqs),
        ("dir_req_repeats", s.dir_req_repeats),
        ("not_found", s.not_found),
        ("dir_refused", s.dir_refused),
        ("dir_node_limit", s.dir_node_limit),
        ("direct", s.direct),
        ("reverse", s.reverse),
        ("relayed", s.relayed),
        ("route_dirs", s.route_dirs),
        ("route_acks", s.route_acks),
        ("route_dir_failures", s.route_dir_failures),
        ("relay_dirs", s.relay_dirs),
        ("relay_acks", s.relay_acks),
        ("relay_failures", s.relay_failures),
        ("errors_sent", s.errors_sent),
        ("errors_received", s.errors_received),
        ("store_commits", s.commits),
        ("takeovers", s.takeovers),
        ("handoffs_sent", s.handoffs_sent),
        ("handoffs_received", s.handoffs_received),
    ]
}

impl Status {
    /// A snapshot of `dc` at `now`.
    pub fn of<S: DcStore>(dc: &Coordinator<S>, now: Instant, d: DriverStats) -> Status {
        let mut registrations: Vec<RegistrationStatus> = dc
            .store()
            .registrations()
            .iter()
            .map(|r| RegistrationStatus {
                fqdn: r.fqdn.clone(),
                node_id: r.node_id,
                vip: r.vip,
                observed: r.observed,
                local: r.local,
                behind_nat: r.behind_nat(),
                active: r.is_active(),
                lease_secs_left: r.lease_until.saturating_duration_since(now).as_secs(),
                home: dc.store().remote_home(r.node_id).map(str::to_owned),
            })
            .collect();
        registrations.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        let mut directions: Vec<DirectionStatus> = dc
            .tunnels()
            .map(|t| DirectionStatus {
                tunnel_id: t.tunnel_id,
                path: t.path.name().to_owned(),
                mn: t.mn_fqdn,
                cn: t.cn_fqdn,
                initiator: match t.initiator {
                    End::Mn => "mn",
                    End::Cn => "cn",
                }
                .to_owned(),
                relay_id: t.relay_id,
                directed: t.directed,
                acked: t.acked,
            })
            .collect();
        directions.sort_by_key(|t| t.tunnel_id);
        let relays = dc
            .settings()
            .relays
            .iter()
            .map(|r| RelayStatus {
                id: r.id,
                addr: r.addr,
                bindings: directions
                    .iter()
                    .filter(|t| t.relay_id == Some(r.id))
                    .count(),
            })
            .collect();
        let mut stats: BTreeMap<String, u64> = stats_by_name(dc.stats())
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        stats.insert("send_errors".into(), d.send_errors);
        stats.insert("reloads".into(), d.reloads);
        stats.insert("reloads_refused".into(), d.reloads_refused);
        let drops = DropReason::all()
            .map(|r| (r.name().to_owned(), dc.drops().get(r)))
            .collect();
        Status {
            listen: dc.settings().listen,
            pid: std::process::id(),
            uptime_secs: d.uptime_secs,
            nodes_configured: dc.settings().nodes.len(),
            relays,
            registrations,
            directions,
            stats,
            drops,
        }
    }

    /// A statistic by name (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats.get(name).copied().unwrap_or(0)
    }

    /// The registration of `fqdn`.
    pub fn registration(&self, fqdn: &str) -> Option<&RegistrationStatus> {
        self.registrations.iter().find(|r| r.fqdn == fqdn)
    }

    /// Registrations keeping alive.
    fn active(&self) -> usize {
        self.registrations.iter().filter(|r| r.active).count()
    }

    /// The text view.
    pub fn render(&self) -> String {
        let mut t = StatusText::new(format_args!(
            "ntm-dc on {} (pid {}, up {:.0} s): {} node(s) configured, {} registered, {} lease(s)",
            self.listen,
            self.pid,
            self.uptime_secs,
            self.nodes_configured,
            self.active(),
            self.registrations.len()
        ));
        t.line(format_args!("registrations:"));
        for r in &self.registrations {
            t.item(format_args!(
                "{} vip {} id {} observed {} local {}{} {} (lease {} s left){}",
                r.fqdn,
                r.vip,
                r.node_id,
                r.observed,
                r.local,
                if r.behind_nat { " behind NAT" } else { "" },
                if r.active { "active" } else { "lapsed" },
                r.lease_secs_left,
                r.home
                    .as_ref()
                    .map_or(String::new(), |h| format!(" at DC {h}"))
            ));
        }
        t.line(format_args!("directions: {}", self.directions.len()));
        for d in &self.directions {
            t.item(format_args!(
                "tunnel {} {} {} -> {} (TUN_REQ from {}){}{}{}",
                d.tunnel_id,
                d.path,
                d.mn,
                d.cn,
                d.initiator,
                d.relay_id
                    .map_or_else(String::new, |r| format!(" via relay {r}")),
                if d.directed {
                    ", directed"
                } else {
                    ", directing"
                },
                if d.acked { ", acked" } else { "" }
            ));
        }
        t.line(format_args!("relays:"));
        for r in &self.relays {
            t.item(format_args!(
                "id {} at {}: {} binding(s)",
                r.id, r.addr, r.bindings
            ));
        }
        t.finish(&self.stats, &self.drops)
    }

    /// The scrape of this snapshot; at most `max_labels` nodes get a
    /// series of their own in `ntm_dc_node_registered`.
    pub fn metrics(&self, max_labels: usize) -> Scrape {
        let mut m = Scrape::new();
        m.gauges(
            "ntm_dc_info",
            "The Direction Coordinator and its version (always 1).",
            [(labels([("version", env!("CARGO_PKG_VERSION"))]), 1.0)],
        );
        m.gauge(
            "ntm_dc_uptime_seconds",
            "Seconds since start.",
            self.uptime_secs,
        );
        self.state_metrics(&mut m, max_labels);
        self.counter_metrics(&mut m);
        m
    }

    /// Gauges: nodes, registrations, directions and relay bindings.
    fn state_metrics(&self, m: &mut Scrape, max_labels: usize) {
        m.gauge(
            "ntm_dc_nodes_configured",
            "[[node]] entries in the configuration.",
            self.nodes_configured as f64,
        );
        let active = self.active();
        m.states(
            "ntm_dc_registrations",
            "Leases held: active (keeping alive) or lapsed (VIP still reserved).",
            [
                ("active", active),
                ("lapsed", self.registrations.len() - active),
            ],
        );
        m.gauges(
            "ntm_dc_node_registered",
            "Whether a node is registered and keeping alive (1) or not (0), by FQDN (at most metrics.max_tunnel_labels nodes).",
            self.registrations
                .iter()
                .take(max_labels)
                .map(|r| (labels([("fqdn", &r.fqdn)]), if r.active { 1.0 } else { 0.0 })),
        );
        let pending = self.directions.iter().filter(|t| !t.directed).count();
        m.states(
            "ntm_dc_directions",
            "Tunnels the DC remembers: directing (ROUTE_DIRs still going out) or directed.",
            [
                ("directing", pending),
                ("directed", self.directions.len() - pending),
            ],
        );
        m.gauges(
            "ntm_dc_relay_bindings",
            "Remembered tunnels directed through each relay server.",
            self.relays
                .iter()
                .map(|r| (labels([("relay", &r.id.to_string())]), r.bindings as f64)),
        );
    }

    /// Counters: datagrams, tunnels by path, events and drops.
    fn counter_metrics(&self, m: &mut Scrape) {
        m.counter(
            "ntm_dc_datagrams",
            "Datagrams received.",
            self.stat("datagrams"),
        );
        m.counters(
            "ntm_dc_tunnels_directed",
            "Tunnels directed, by path.",
            [
                ("direct", "direct"),
                ("reverse", "reverse"),
                ("relay", "relayed"),
            ]
            .map(|(path, stat)| (labels([("path", path)]), self.stat(stat))),
        );
        m.counters_by(
            "ntm_dc_events",
            "What the DC did, by event (registrations, renewals, keep-alives, direction requests, ROUTE_DIRs, RELAY_DIRs, errors, reloads…).",
            "event",
            self.stats.iter().filter(|(k, _)| {
                !matches!(k.as_str(), "datagrams" | "direct" | "reverse" | "relayed")
            }),
        );
        m.counters_by(
            "ntm_dc_drops",
            "Datagrams dropped, by reason.",
            "reason",
            &self.drops,
        );
    }
}
