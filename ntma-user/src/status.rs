//! What `ntma status` shows: a running daemon's registration, GN, fast
//! path, tunnels and counters, as JSON over a Unix socket.
//!
//! The daemon listens on its status socket (`/run/ntma/<name>.sock` by
//! default); every connection gets one [`Status`] document as JSON and is
//! closed. [`query`] is the client side, [`Status::render`] the text view.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::datapath::{Datapath, Link, RingStats, WorkerStats};
pub use crate::fastpath::supervise::WorkerState;
use crate::fastpath::FrameUse;

/// The whole status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Adapter name.
    pub name: String,
    /// Daemon process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// Every GN: its registration with the DC and its lease.
    pub gns: Vec<GnView>,
    /// The AF_XDP fast path.
    pub datapath: DatapathStatus,
    /// Tunnels.
    pub tunnels: Vec<TunnelStatus>,
    /// Slow path and control counters.
    pub slow_path: SlowPathStatus,
    /// The capabilities the daemon's control thread kept after set-up (the
    /// fast-path workers keep none: [`WorkerStatus::capabilities`]).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// One GN: its registration with the DC (as its own node, §6) and its DHCP
/// lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GnView {
    /// Its registration.
    pub registration: RegistrationStatus,
    /// Its VIP, MAC and lease on the LAN.
    pub gn: GnStatus,
}

/// Registration with the DC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegistrationStatus {
    /// The GN's FQDN.
    pub fqdn: String,
    /// The DC registered with (or being tried) now, of those configured.
    pub dc: SocketAddrV4,
    /// Moves from an unanswering DC to the next configured one.
    #[serde(default)]
    pub dc_failovers: u64,
    /// Whether a registration is held.
    pub registered: bool,
    /// The VIP.
    pub vip: Option<Ipv4Addr>,
    /// Its prefix length.
    pub prefix_len: Option<u8>,
    /// Node id.
    pub node_id: Option<u32>,
    /// LOCAL_ADDR.
    pub local_addr: SocketAddrV4,
    /// The address the DC observed.
    pub observed: Option<SocketAddrV4>,
    /// Whether it differs from LOCAL_ADDR.
    pub behind_nat: Option<bool>,
}

/// The GN.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GnStatus {
    /// The VIP offered by DHCP.
    pub vip: Option<Ipv4Addr>,
    /// The GN's MAC: configured, or once learned.
    pub mac: Option<String>,
    /// Whether it has shown itself on the LAN (DHCP, ARP, a packet).
    #[serde(default)]
    pub seen: bool,
    /// Whether the GN holds a DHCP lease.
    pub lease_bound: bool,
    /// Seconds left on the lease (or offer).
    pub lease_remaining_secs: Option<u64>,
    /// Router/DNS address given to the GN.
    pub router: Ipv4Addr,
    /// Prefix length given to the GN.
    pub prefix_len: u8,
}

/// The fast path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DatapathStatus {
    /// AF_XDP mode: "copy" or "zero-copy".
    pub mode: String,
    /// GN-facing NIC.
    pub lan_if: String,
    /// Uplink NIC.
    pub wan_if: String,
    /// Queues served.
    pub queues: u32,
    /// Whether the link (GN MAC, gateway MAC, VIP) is complete.
    pub link_ready: bool,
    /// The uplink's next hop.
    pub gateway_mac: Option<String>,
    /// Per worker: counters and drops by reason.
    pub workers: Vec<WorkerStatus>,
    /// XDP verdicts by name, summed over CPUs.
    pub xdp: BTreeMap<String, u64>,
    /// The kernel's counters of every AF_XDP socket (`XDP_STATISTICS`).
    #[serde(default)]
    pub rings: Vec<RingStatus>,
    /// The kernel's drop and error counters of both interfaces
    /// ([`crate::os::ifstats`]).
    #[serde(default)]
    pub nics: Vec<NicStatus>,
    /// The unit of the workers' `cycles_*` counters, per second (the TSC's frequency,
    /// or 1e9 where the clock is the monotonic clock in nanoseconds).
    #[serde(default)]
    pub cycles_per_second: u64,
}

/// The kernel's drop and error counters of one interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct NicStatus {
    /// The interface.
    pub name: String,
    /// "lan" or "wan".
    pub side: String,
    /// By sysfs name: rx_dropped, tx_dropped, rx_missed_errors,
    /// rx_fifo_errors, rx_errors, tx_errors.
    pub counters: BTreeMap<String, u64>,
}

/// The kernel's counters of one AF_XDP socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RingStatus {
    /// Queue (worker).
    pub queue: u32,
    /// "lan" or "wan".
    pub side: String,
    /// By name: rx_dropped, rx_invalid_descs, tx_invalid_descs,
    /// rx_ring_full, rx_fill_ring_empty_descs, tx_ring_empty_descs.
    pub counters: BTreeMap<String, u64>,
}

/// One fast-path worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WorkerStatus {
    /// Worker (queue) index.
    pub queue: u32,
    /// Core it is pinned to.
    pub core: Option<usize>,
    /// Packet counters by name.
    pub counters: BTreeMap<String, u64>,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
    /// The worker thread's effective capabilities, as the kernel has them
    /// (none once it is set up); `None` when its thread was not found.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// "running", "restarting" (it panicked and waits to start again),
    /// "failed" (it panicked too often in a row: its queue forwards nothing
    /// until ntma restarts) or "stopped".
    #[serde(default)]
    pub state: WorkerState,
    /// Panics its supervisor caught.
    #[serde(default)]
    pub panics: u64,
    /// The message of its last panic.
    #[serde(default)]
    pub last_panic: Option<String>,
    /// Where its UMEM frames are (all zero for the raw datapath, which has none).
    #[serde(default)]
    pub frames: FrameUse,
}

impl DatapathStatus {
    /// The status of a running datapath: its mode, its workers' and the XDP
    /// programs' counters and its rings, with the link the control published.
    pub fn of(dp: &dyn Datapath, s: &Settings, link: Option<Link>) -> DatapathStatus {
        let xdp = match dp.xdp_counters() {
            Ok(c) => c.iter().map(|(v, n)| (v.name().to_owned(), n)).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the XDP counters");
                Default::default()
            }
        };
        let workers = dp
            .worker_stats()
            .iter()
            .map(|w| {
                let caps = crate::privs::of_thread(&dp.worker_thread(w.queue));
                WorkerStatus::new(w, caps)
            })
            .collect();
        DatapathStatus {
            mode: dp.mode(),
            lan_if: s.lan_if.clone(),
            wan_if: s.wan_if.clone(),
            queues: s.datapath.queues,
            link_ready: link.is_some(),
            gateway_mac: link.map(|l| l.gateway_mac.to_string()),
            workers,
            xdp,
            rings: dp.ring_stats().iter().map(RingStatus::from).collect(),
            nics: [("lan", &s.lan_if), ("wan", &s.wan_if)]
                .into_iter()
                .map(|(side, name)| NicStatus {
                    name: name.clone(),
                    side: side.to_owned(),
                    counters: crate::os::ifstats::of(name),
                })
                .collect(),
            cycles_per_second: crate::fastpath::cycles_per_second(),
        }
    }
}

impl From<&RingStats> for RingStatus {
    fn from(r: &RingStats) -> RingStatus {
        let k = r.stats;
        RingStatus {
            queue: r.queue,
            side: match r.side {
                crate::ebpf::Side::Lan => "lan",
                crate::ebpf::Side::Wan => "wan",
            }
            .to_owned(),
            counters: [
                ("rx_dropped", k.rx_dropped),
                ("rx_invalid_descs", k.rx_invalid_descs),
                ("tx_invalid_descs", k.tx_invalid_descs),
                ("rx_ring_full", k.rx_ring_full),
                ("rx_fill_ring_empty_descs", k.rx_fill_ring_empty_descs),
                ("tx_ring_empty_descs", k.tx_ring_empty_descs),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect(),
        }
    }
}

impl WorkerStatus {
    /// A worker's counters by name, with its thread's `capabilities`.
    pub fn new(w: &WorkerStats, capabilities: Option<Vec<String>>) -> WorkerStatus {
        let counters = [
            ("lan_rx", w.lan_rx),
            ("wan_rx", w.wan_rx),
            ("lan_tx", w.lan_tx),
            ("wan_tx", w.wan_tx),
            ("batches", w.batches),
            ("slow", w.slow),
            ("keepalives", w.keepalives),
            ("mss_clamped", w.mss_clamped),
            ("too_big", w.too_big),
            ("lan_kicks", w.lan_kicks),
            ("wan_kicks", w.wan_kicks),
            ("polls", w.polls),
            ("cycles_process", w.cycles_process),
            ("cycles_ring", w.cycles_ring),
            ("cycles_syscall", w.cycles_syscall),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        WorkerStatus {
            queue: w.queue as u32,
            core: w.core,
            counters,
            drops: w.drops().map(|(r, n)| (r.name().to_owned(), n)).collect(),
            capabilities,
            state: w.state,
            panics: w.panics,
            last_panic: w.last_panic.clone(),
            frames: w.frames,
        }
    }
}

/// One tunnel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TunnelStatus {
    /// Tunnel id.
    pub id: u32,
    /// The FQDN of the GN it belongs to.
    pub gn: String,
    /// Peer FQDN.
    pub peer_fqdn: String,
    /// Peer VIP.
    pub peer_vip: Ipv4Addr,
    /// "direct", "reverse" or "relay".
    pub path: String,
    /// Our role: "initiator" or "responder".
    pub role: String,
    /// How its datagrams are protected: "aes-256-gcm" (suite 2, encrypted) or
    /// "hmac-sha256-128" (suite 1, authenticated only).
    pub suite: String,
    /// Where its datagrams go.
    pub endpoint: SocketAddrV4,
    /// Set-up complete.
    pub up: bool,
    /// DATA sent by the fast path.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// DATA and keep-alives accepted by the fast path.
    pub rx_packets: u64,
    /// Bytes accepted.
    pub rx_bytes: u64,
    /// Seconds since the last accepted datagram.
    pub last_rx_secs_ago: Option<f64>,
    /// From the direction request to the tunnel being up, when we asked.
    pub setup_ms: Option<f64>,
    /// Who asked the DC for the tunnel: "gn" (a DNS query or packet of the
    /// GN) or "peer" (the GN is the target); "-" while it is set up.
    pub opened_by: String,
}

/// Slow path and control counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SlowPathStatus {
    /// Drops by reason (GN services, `proto_*` for the protocol endpoint,
    /// and the control side's own).
    pub drops: BTreeMap<String, u64>,
    /// What it did.
    pub stats: BTreeMap<String, u64>,
}

impl Status {
    /// Drops counted under `reason` anywhere: the slow path plus every worker.
    pub fn drop_count(&self, reason: &str) -> u64 {
        self.slow_path.drops.get(reason).copied().unwrap_or(0)
            + self
                .datapath
                .workers
                .iter()
                .map(|w| w.drops.get(reason).copied().unwrap_or(0))
                .sum::<u64>()
    }

    /// A slow-path statistic.
    pub fn stat(&self, name: &str) -> u64 {
        self.slow_path.stats.get(name).copied().unwrap_or(0)
    }

    /// An XDP verdict count.
    pub fn xdp(&self, verdict: &str) -> u64 {
        self.datapath.xdp.get(verdict).copied().unwrap_or(0)
    }

    /// A fast-path counter summed over workers.
    pub fn worker_counter(&self, name: &str) -> u64 {
        self.datapath
            .workers
            .iter()
            .map(|w| w.counters.get(name).copied().unwrap_or(0))
            .sum()
    }

    /// The UMEM frames of every worker, summed.
    pub fn frames(&self) -> FrameUse {
        self.datapath
            .workers
            .iter()
            .fold(FrameUse::default(), |a, w| FrameUse {
                total: a.total + w.frames.total,
                free: a.free + w.frames.free,
                fill: a.fill + w.frames.fill,
                tx: a.tx + w.frames.tx,
            })
    }

    /// The kernel's counters of the AF_XDP rings and of both interfaces, by
    /// `xsk <queue> <side> <counter>` and `<interface> <counter>`: where a
    /// frame is lost that no drop reason counts. `tx_ring_empty_descs` is left
    /// out: it counts TX wake-ups that found nothing to send, not losses.
    pub fn kernel_losses(&self) -> BTreeMap<String, u64> {
        let d = &self.datapath;
        let rings = d.rings.iter().flat_map(|r| {
            r.counters
                .iter()
                .filter(|(k, _)| k.as_str() != "tx_ring_empty_descs")
                .map(move |(k, v)| (format!("xsk {} {} {k}", r.queue, r.side), *v))
        });
        let nics = d.nics.iter().flat_map(|n| {
            n.counters
                .iter()
                .map(move |(k, v)| (format!("{} {k}", n.name), *v))
        });
        rings.chain(nics).collect()
    }

    /// Every non-zero drop reason with its total (slow path and workers).
    pub fn drops(&self) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        let sources = std::iter::once(&self.slow_path.drops)
            .chain(self.datapath.workers.iter().map(|w| &w.drops));
        for m in sources {
            for (k, v) in m {
                if *v > 0 {
                    *all.entry(k.clone()).or_default() += v;
                }
            }
        }
        all
    }

    /// For health checks (`ntma status --check`): why the adapter cannot
    /// carry the GN's traffic, in one line, or `Ok` when it can.
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = self
            .gns
            .iter()
            .map(|g| &g.registration)
            .find(|r| !r.registered)
        {
            return Err(format!(
                "{}: not registered with the DC {} (check [dc], this [[gn]] entry's fqdn and key, and that the DC runs)",
                r.fqdn, r.dc
            ));
        }
        if let Some(w) = self
            .datapath
            .workers
            .iter()
            .find(|w| w.state != WorkerState::Running)
        {
            return Err(format!(
                "datapath worker {} is {} after {} panic(s) (last: {}): its queue forwards nothing{}",
                w.queue,
                w.state,
                w.panics,
                w.last_panic.as_deref().unwrap_or("-"),
                if w.state == WorkerState::Failed {
                    " until ntma restarts: restart it and report the panic"
                } else {
                    " while it restarts"
                }
            ));
        }
        if !self.datapath.link_ready {
            return Err(
                "link not ready: the uplink's gateway is unknown (no default route or neighbour)"
                    .to_owned(),
            );
        }
        if !self.gns.iter().any(|g| g.gn.seen) {
            return Err(
                "link not ready: no GN has been seen on the LAN yet (no DHCP or ARP from any)"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// The GN with `fqdn`, if configured.
    pub fn gn(&self, fqdn: &str) -> Option<&GnView> {
        self.gns.iter().find(|g| g.registration.fqdn == fqdn)
    }

    /// A tunnel to `fqdn` (of any GN), if any.
    pub fn tunnel_to(&self, fqdn: &str) -> Option<&TunnelStatus> {
        self.tunnels.iter().find(|t| t.peer_fqdn == fqdn)
    }

    /// The GN `gn`'s tunnel to `peer`, if any.
    pub fn tunnel_between(&self, gn: &str, peer: &str) -> Option<&TunnelStatus> {
        self.tunnels
            .iter()
            .find(|t| t.gn == gn && t.peer_fqdn == peer)
    }

    /// The human-readable view.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_state(&mut s);
        self.render_tunnels(&mut s);
        self.render_counters(&mut s);
        s
    }

    /// Registration and lease lines of each GN, and the datapath line.
    fn render_state(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "ntma {} (pid {}, up {:.0} s), {} GN(s)",
            self.name,
            self.pid,
            self.uptime_secs,
            self.gns.len()
        );
        for g in &self.gns {
            render_gn(s, g);
        }
        let d = &self.datapath;
        let _ = writeln!(
            s,
            "datapath: {}, {} queue(s) on {} and {}, link {}, gateway {}",
            if d.mode == "raw" {
                "raw sockets".to_owned()
            } else {
                format!("AF_XDP {} mode", d.mode)
            },
            d.queues,
            d.lan_if,
            d.wan_if,
            if d.link_ready { "ready" } else { "not ready" },
            opt(d.gateway_mac.clone())
        );
    }

    /// One line per tunnel.
    fn render_tunnels(&self, s: &mut String) {
        let _ = writeln!(s, "tunnels: {}", self.tunnels.len());
        for t in &self.tunnels {
            let _ = writeln!(
                s,
                "  #{} {} → {} {} {} {} {} (opened by {}) via {}{}: tx {} pkts {} B, rx {} pkts {} B, last rx {}{}",
                t.id,
                t.gn,
                t.peer_fqdn,
                t.peer_vip,
                t.path,
                t.role,
                t.suite,
                t.opened_by,
                t.endpoint,
                if t.up { "" } else { " (setting up)" },
                t.tx_packets,
                t.tx_bytes,
                t.rx_packets,
                t.rx_bytes,
                t.last_rx_secs_ago
                    .map_or_else(|| "never".into(), |a| format!("{a:.1} s ago")),
                t.setup_ms
                    .map_or_else(String::new, |m| format!(", set up in {m:.1} ms")),
            );
        }
    }

    /// The non-zero counters: XDP, workers, rings, slow path.
    fn render_counters(&self, s: &mut String) {
        let d = &self.datapath;
        let nonzero = |m: &BTreeMap<String, u64>| ntm_ops::cli::counts(m, false);
        let _ = writeln!(s, "xdp verdicts: {}", nonzero(&d.xdp));
        for w in &d.workers {
            let _ = writeln!(
                s,
                "worker {} (core {}) {}, {} panic(s){}: {}",
                w.queue,
                opt(w.core.map(|c| c.to_string())),
                w.state,
                w.panics,
                w.last_panic
                    .as_ref()
                    .map_or_else(String::new, |m| format!(" (last: {m})")),
                nonzero(&w.counters)
            );
            let _ = writeln!(s, "  drops: {}", nonzero(&w.drops));
            let f = &w.frames;
            if f.total > 0 {
                let _ = writeln!(
                    s,
                    "  umem frames: {} in use of {} (fill {}, tx {}, held {})",
                    f.in_use(),
                    f.total,
                    f.fill,
                    f.tx,
                    f.held()
                );
            }
            let _ = writeln!(
                s,
                "  capabilities: {}",
                match &w.capabilities {
                    None => "unknown".to_owned(),
                    Some(c) if c.is_empty() => "none".to_owned(),
                    Some(c) => c.join(" "),
                }
            );
        }
        for r in &d.rings {
            let _ = writeln!(s, "ring {} {}: {}", r.queue, r.side, nonzero(&r.counters));
        }
        for n in &d.nics {
            let _ = writeln!(s, "nic {} {}: {}", n.side, n.name, nonzero(&n.counters));
        }
        let _ = writeln!(s, "slow path: {}", nonzero(&self.slow_path.stats));
        let _ = writeln!(s, "  drops: {}", nonzero(&self.slow_path.drops));
        let _ = writeln!(
            s,
            "capabilities kept: {}",
            if self.capabilities.is_empty() {
                "none".to_owned()
            } else {
                self.capabilities.join(" ")
            }
        );
    }
}

/// A value, or `-` when there is none.
/// A GN's registration line and its LAN line.
fn render_gn(s: &mut String, view: &GnView) {
    let r = &view.registration;
    let _ = writeln!(
        s,
        "gn {}: {} with DC {} ({} failovers): vip {}/{} node id {} local {} observed {} behind NAT {}",
        r.fqdn,
        if r.registered {
            "registered"
        } else {
            "NOT registered"
        },
        r.dc,
        r.dc_failovers,
        opt(r.vip.map(|v| v.to_string())),
        opt(r.prefix_len.map(|v| v.to_string())),
        opt(r.node_id.map(|v| v.to_string())),
        r.local_addr,
        opt(r.observed.map(|v| v.to_string())),
        opt(r.behind_nat.map(|v| v.to_string())),
    );
    let g = &view.gn;
    let _ = writeln!(
        s,
        "  lan: vip {} mac {} lease {} (router {}/{})",
        opt(g.vip.map(|v| v.to_string())),
        opt(g.mac.clone()),
        if g.lease_bound {
            format!("bound, {} s left", g.lease_remaining_secs.unwrap_or(0))
        } else {
            "none".into()
        },
        g.router,
        g.prefix_len
    );
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// Why `ntma status` could not get a status.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing listens there.
    #[error("cannot connect to {path}: {source} (is `ntma run` running with this configuration? as root?)")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon did not answer properly.
    #[error("bad answer from {path}: {why}")]
    Answer {
        /// The socket.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// Largest status document accepted (a daemon with many tunnels).
const MAX_STATUS: u64 = 16 << 20;

/// Asks the daemon listening on `path` for its status.
pub fn query(path: &Path) -> Result<Status, QueryError> {
    let p = path.display().to_string();
    let mut stream = UnixStream::connect(path).map_err(|source| QueryError::Connect {
        path: p.clone(),
        source,
    })?;
    let timeout = Some(Duration::from_secs(5));
    let _ = stream.set_read_timeout(timeout);
    let mut text = String::new();
    (&mut stream)
        .take(MAX_STATUS)
        .read_to_string(&mut text)
        .map_err(|e| QueryError::Answer {
            path: p.clone(),
            why: e.to_string(),
        })?;
    serde_json::from_str(&text).map_err(|e| QueryError::Answer {
        path: p,
        why: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Status {
        let mut w = WorkerStatus {
            queue: 0,
            core: Some(1),
            capabilities: Some(vec![]),
            frames: FrameUse {
                total: 4096,
                free: 2000,
                fill: 2048,
                tx: 40,
            },
            ..WorkerStatus::default()
        };
        w.drops.insert("bad_tag".into(), 2);
        w.drops.insert("replay".into(), 0);
        w.counters.insert("uplink_tx".into(), 10);
        let mut slow = SlowPathStatus::default();
        slow.drops.insert("bad_tag".into(), 1);
        slow.drops.insert("dns_too_big".into(), 3);
        slow.stats.insert("held".into(), 4);
        Status {
            name: "ntma".into(),
            pid: 7,
            uptime_secs: 3.5,
            gns: vec![GnView {
                registration: RegistrationStatus {
                    fqdn: "gn.ntm.test".into(),
                    dc: "198.18.0.2:7710".parse().unwrap(),
                    dc_failovers: 0,
                    registered: true,
                    vip: Some(Ipv4Addr::new(100, 64, 0, 2)),
                    prefix_len: Some(10),
                    node_id: Some(9),
                    local_addr: "192.168.10.2:7700".parse().unwrap(),
                    observed: Some("198.18.0.10:7700".parse().unwrap()),
                    behind_nat: Some(true),
                },
                gn: GnStatus {
                    vip: Some(Ipv4Addr::new(100, 64, 0, 2)),
                    mac: Some("02:00:00:00:00:0a".into()),
                    seen: true,
                    lease_bound: true,
                    lease_remaining_secs: Some(590),
                    router: Ipv4Addr::new(100, 64, 0, 1),
                    prefix_len: 10,
                },
            }],
            datapath: DatapathStatus {
                mode: "copy".into(),
                lan_if: "lan0".into(),
                wan_if: "wan0".into(),
                queues: 1,
                link_ready: true,
                gateway_mac: Some("0a:00:00:00:00:01".into()),
                workers: vec![w],
                xdp: [("lan_redirect".to_owned(), 5)].into_iter().collect(),
                rings: vec![RingStatus {
                    queue: 0,
                    side: "lan".into(),
                    counters: [("rx_dropped".to_owned(), 6)].into_iter().collect(),
                }],
                nics: vec![NicStatus {
                    name: "wan0".into(),
                    side: "wan".into(),
                    counters: [("rx_dropped".to_owned(), 8), ("tx_dropped".to_owned(), 0)]
                        .into_iter()
                        .collect(),
                }],
                cycles_per_second: 2_000_000_000,
            },
            tunnels: vec![TunnelStatus {
                id: 3,
                gn: "gn.ntm.test".into(),
                peer_fqdn: "cn.ntm.test".into(),
                peer_vip: Ipv4Addr::new(100, 64, 0, 3),
                path: "direct".into(),
                role: "initiator".into(),
                suite: "aes-256-gcm".into(),
                endpoint: "198.18.0.20:7700".parse().unwrap(),
                up: true,
                tx_packets: 10,
                tx_bytes: 1000,
                rx_packets: 9,
                rx_bytes: 900,
                last_rx_secs_ago: Some(0.2),
                setup_ms: Some(3.1),
                opened_by: "gn".into(),
            }],
            slow_path: slow,
            capabilities: vec!["CAP_NET_ADMIN".into()],
        }
    }

    #[test]
    fn json_round_trip_and_lookups() {
        let s = sample();
        let text = serde_json::to_string(&s).unwrap();
        let back: Status = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.drop_count("bad_tag"), 3);
        assert_eq!(s.drop_count("nothing"), 0);
        assert_eq!(s.stat("held"), 4);
        assert_eq!(s.xdp("lan_redirect"), 5);
        assert_eq!(s.worker_counter("uplink_tx"), 10);
        assert_eq!((s.frames().in_use(), s.frames().held()), (2096, 8));
        let d = s.drops();
        assert_eq!(d.get("bad_tag"), Some(&3));
        assert!(!d.contains_key("replay"));
        assert!(s.tunnel_to("cn.ntm.test").is_some());
        let k = s.kernel_losses();
        assert_eq!(k.get("xsk 0 lan rx_dropped"), Some(&6));
        assert_eq!(k.get("wan0 rx_dropped"), Some(&8));
        assert_eq!(k.get("wan0 tx_dropped"), Some(&0));
    }

    #[test]
    fn every_xdp_statistic_is_shown() {
        let k = crate::xsk::KernelStats {
            rx_dropped: 1,
            rx_invalid_descs: 2,
            tx_invalid_descs: 3,
            rx_ring_full: 4,
            rx_fill_ring_empty_descs: 5,
            tx_ring_empty_descs: 6,
        };
        let r = RingStatus::from(&RingStats {
            queue: 1,
            side: crate::ebpf::Side::Wan,
            stats: k,
        });
        assert_eq!((r.queue, r.side.as_str()), (1, "wan"));
        let names: Vec<(&str, u64)> = r.counters.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            names,
            [
                ("rx_dropped", 1),
                ("rx_fill_ring_empty_descs", 5),
                ("rx_invalid_descs", 2),
                ("rx_ring_full", 4),
                ("tx_invalid_descs", 3),
                ("tx_ring_empty_descs", 6),
            ]
        );
    }

    #[test]
    fn render_shows_every_part() {
        let r = sample().render();
        for needle in [
            "gn gn.ntm.test: registered",
            "vip 100.64.0.2/10",
            "behind NAT true",
            "AF_XDP copy mode",
            "#3 gn.ntm.test → cn.ntm.test 100.64.0.3 direct initiator aes-256-gcm (opened by gn) via 198.18.0.20:7700",
            "set up in 3.1 ms",
            "bad_tag=2",
            "dns_too_big=3",
            "lan_redirect=5",
            "ring 0 lan: rx_dropped=6",
            "nic wan wan0: rx_dropped=8\n",
            "  umem frames: 2096 in use of 4096 (fill 2048, tx 40, held 8)",
            "  capabilities: none",
            "capabilities kept: CAP_NET_ADMIN",
        ] {
            assert!(r.contains(needle), "{needle:?} missing from:\n{r}");
        }
    }

    #[test]
    fn check_says_in_one_line_what_is_missing() {
        let mut s = sample();
        assert_eq!(s.check(), Ok(()));
        s.datapath.gateway_mac = None;
        s.datapath.link_ready = false;
        let e = s.check().unwrap_err();
        assert!(e.contains("link not ready") && e.contains("gateway"), "{e}");
        s.gns[0].registration.registered = false;
        let e = s.check().unwrap_err();
        assert!(e.contains("not registered") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn a_worker_that_is_not_running_fails_the_check_and_shows() {
        let mut s = sample();
        s.datapath.workers[0].panics = 2;
        s.datapath.workers[0].last_panic = Some("boom".into());
        assert_eq!(s.check(), Ok(()), "panics survived do not fail it");
        assert!(s
            .render()
            .contains("worker 0 (core 1) running, 2 panic(s) (last: boom)"));
        for (state, says) in [
            (WorkerState::Restarting, "while it restarts"),
            (WorkerState::Failed, "until ntma restarts"),
        ] {
            s.datapath.workers[0].state = state;
            let e = s.check().unwrap_err();
            assert!(
                e.contains(&format!(
                    "worker 0 is {state} after 2 panic(s) (last: boom)"
                )) && e.contains(says)
                    && !e.contains('\n'),
                "{e}"
            );
        }
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""state":"failed","panics":2"#), "{text}");
    }

    #[test]
    fn query_explains_a_missing_daemon() {
        let e = query(Path::new("/nonexistent/ntma.sock"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ntma run"), "{e}");
    }
}
