//! Counters of the node and the status it reports (log line and JSON file).
//!
//! Drops are counted by reason under one flat namespace of stable names:
//! the protocol's reasons ([`ntm_proto::Error::name`], e.g. `bad_tag`,
//! `replay`, `truncated`), the DNS stub's ([`DnsDrop::name`], `dns_*`) and
//! the node's own ([`LocalDrop::name`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use ntm_proto::dns::{DnsDrop, ReplyKind};
use ntm_proto::DropCounters;
use serde::{Deserialize, Serialize};

ntm_proto::reasons! {
    /// Drops of the node's own making (not a protocol check).
    pub enum LocalDrop {
        /// A packet from the TUN device that is not IPv4.
        NotIpv4 => "not_ipv4",
        /// A packet to an address that is no known peer VIP (never resolved).
        NoRoute => "no_route",
        /// The hold queue is full.
        HoldFull => "hold_full",
        /// A held packet waited too long for its tunnel.
        HoldExpired => "hold_expired",
        /// A held packet whose tunnel could not be set up.
        SetupFailed => "setup_failed",
        /// A packet while the node is not registered.
        NotRegistered => "not_registered_tx",
        /// The UDP socket refused a datagram (buffer full, no route).
        UdpSendFailed => "udp_send_failed",
        /// The TUN device refused a packet (with offload, every packet of
        /// the batched write that failed).
        TunWriteFailed => "tun_write_failed",
        /// A read from the TUN device that could not be split into packets
        /// (a bad virtio-net header, more segments than a batch holds).
        TunBadRead => "tun_bad_read",
        /// A datagram from an IPv6 source on the IPv4 tunnel socket.
        NotIpv4Source => "not_ipv4_source",
        /// The DNS socket refused a reply.
        DnsSendFailed => "dns_send_failed",
        /// The upstream socket refused a forwarded query.
        UpstreamSendFailed => "upstream_send_failed",
    }
}

/// Everything the node counts.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Packets read from the TUN device.
    pub tun_rx: u64,
    /// DATA datagrams sent.
    pub data_tx: u64,
    /// DATA datagrams accepted.
    pub data_rx: u64,
    /// Packets written to the TUN device.
    pub tun_tx: u64,
    /// Packets put in the hold queue.
    pub held: u64,
    /// Held packets sent once their tunnel came up.
    pub released: u64,
    /// Tunnel keep-alives accepted.
    pub keepalive_rx: u64,
    /// DNS queries received.
    pub dns_queries: u64,
    /// Successful registrations (REG_RESP OK), renewals included.
    pub registrations: u64,
    /// Tunnels that came up.
    pub tunnels_up: u64,
    /// Tunnels that went down.
    pub tunnels_down: u64,
    local: [u64; LocalDrop::COUNT],
    dns: [u64; DnsDrop::COUNT],
    replies: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// Count one drop of the node's own.
    pub fn drop_local(&mut self, why: LocalDrop) {
        self.local[why.index()] += 1;
    }

    /// Count `n` drops of the node's own.
    pub fn drop_local_n(&mut self, why: LocalDrop, n: usize) {
        self.local[why.index()] += n as u64;
    }

    /// Count one DNS drop.
    pub fn drop_dns(&mut self, why: DnsDrop) {
        self.dns[why.index()] += 1;
    }

    /// Count `n` DNS drops.
    pub fn drop_dns_n(&mut self, why: DnsDrop, n: usize) {
        self.dns[why.index()] += n as u64;
    }

    /// Count one DNS reply sent.
    pub fn reply(&mut self, kind: ReplyKind) {
        let name = match kind {
            ReplyKind::A => "dns_answer_a",
            ReplyKind::NoData => "dns_answer_nodata",
            ReplyKind::NxDomain => "dns_nxdomain",
            ReplyKind::ServFail => "dns_servfail",
            ReplyKind::FormErr => "dns_formerr",
            ReplyKind::NotImp => "dns_notimp",
            ReplyKind::Relay => "dns_relay",
        };
        *self.replies.entry(name).or_default() += 1;
    }

    /// Every non-zero drop by name, the protocol's (`proto`) included.
    pub fn drops(&self, proto: &DropCounters) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = proto
            .iter()
            .map(|(e, n)| (e.name().to_owned(), n))
            .collect();
        for d in LocalDrop::ALL {
            if self.local[d.index()] != 0 {
                m.insert(d.name().to_owned(), self.local[d.index()]);
            }
        }
        for d in DnsDrop::ALL {
            if self.dns[d.index()] != 0 {
                m.insert(d.name().to_owned(), self.dns[d.index()]);
            }
        }
        m
    }

    /// Packet and event counts by name.
    pub fn packets(&self) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = [
            ("tun_rx", self.tun_rx),
            ("data_tx", self.data_tx),
            ("data_rx", self.data_rx),
            ("tun_tx", self.tun_tx),
            ("held", self.held),
            ("released", self.released),
            ("keepalive_rx", self.keepalive_rx),
            ("dns_queries", self.dns_queries),
            ("registrations", self.registrations),
            ("tunnels_up", self.tunnels_up),
            ("tunnels_down", self.tunnels_down),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in &self.replies {
            m.insert((*k).to_owned(), *v);
        }
        m
    }
}

/// One tunnel in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// Tunnel id.
    pub id: u32,
    /// The peer's FQDN.
    pub peer_fqdn: String,
    /// The peer's VIP.
    pub peer_vip: Ipv4Addr,
    /// Where its datagrams go.
    pub endpoint: SocketAddrV4,
    /// `direct`, `reverse` or `relay`.
    pub path: String,
    /// `initiator` or `responder`.
    pub role: String,
    /// The tunnel's suite (§2.1), as the DC named it: `aes-256-gcm` or
    /// `hmac-sha256-128`.
    pub suite: String,
    /// Set-up completed.
    pub up: bool,
}

/// What the status file holds (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Our FQDN.
    pub fqdn: String,
    /// Our VIP, once registered.
    pub vip: Option<Ipv4Addr>,
    /// Our node id, once registered.
    pub node_id: Option<u32>,
    /// The DC registered with (or being tried) now, of those configured
    /// (absent from the files of older nodes).
    #[serde(default)]
    pub dc: Option<SocketAddrV4>,
    /// LOCAL_ADDR.
    pub local_addr: SocketAddrV4,
    /// The address the DC saw, once registered.
    pub observed: Option<SocketAddrV4>,
    /// Whether the DC saw us behind NAT.
    pub behind_nat: Option<bool>,
    /// Every tunnel.
    pub tunnels: Vec<TunnelStatus>,
    /// Packet and event counters by name.
    pub packets: BTreeMap<String, u64>,
    /// Drops by reason (non-zero only).
    pub drops: BTreeMap<String, u64>,
    /// The TUN device and the kernel's counters of it (absent from the
    /// files of older nodes).
    #[serde(default)]
    pub tun: TunDeviceStatus,
}

/// The TUN device as the kernel sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunDeviceStatus {
    /// Its name.
    pub name: String,
    /// Its queue length (txqueuelen), in packets.
    pub queue_len: u32,
    /// Opened with a virtio-net header and TCP segmentation offload.
    pub offload: bool,
    /// UDP segmentation offload too (Linux 6.2 and later).
    pub udp_offload: bool,
    /// The kernel's counters of the device, by their sysfs names
    /// (`/sys/class/net/<dev>/statistics`). The kernel's direction: `tx_*`
    /// is the stack to the node (what the node reads): `tx_dropped` counts
    /// packets lost because the node did not read the queue in time;
    /// `rx_*` is the node to the stack. Empty if they could not be read.
    pub counters: BTreeMap<String, u64>,
}

impl TunDeviceStatus {
    /// A counter by name (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Packets the device dropped either way: `tx_dropped + rx_dropped`.
    pub fn dropped(&self) -> u64 {
        self.counter("tx_dropped") + self.counter("rx_dropped")
    }
}

impl Status {
    /// Parse a status file.
    pub fn load(path: &Path) -> Option<Status> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Write it to `path` atomically (a reader never sees half a file).
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// A drop counter by name (0 when absent).
    pub fn drop_count(&self, reason: &str) -> u64 {
        self.drops.get(reason).copied().unwrap_or(0)
    }

    /// A packet counter by name (0 when absent).
    pub fn packet_count(&self, name: &str) -> u64 {
        self.packets.get(name).copied().unwrap_or(0)
    }

    /// The up tunnel to `peer_fqdn`, if any.
    pub fn tunnel_to(&self, peer_fqdn: &str) -> Option<&TunnelStatus> {
        self.tunnels
            .iter()
            .find(|t| t.up && t.peer_fqdn == peer_fqdn)
    }

    /// The one-line summary logged periodically and on SIGUSR1: tunnel
    /// counts, each tunnel as `tunnel<id>=<peer>/<suite>/<up|setup>`, the
    /// packet counters, the drops, and the TUN device's packet and drop
    /// counters (its other counters when not zero).
    pub fn log_line(&self) -> String {
        let up = self.tunnels.iter().filter(|t| t.up).count();
        let mut s = format!(
            "tunnels={} up={} vip={}",
            self.tunnels.len(),
            up,
            self.vip.map_or("-".to_owned(), |v| v.to_string())
        );
        for t in &self.tunnels {
            let state = if t.up { "up" } else { "setup" };
            let _ = write!(s, " tunnel{}={}/{}/{}", t.id, t.peer_fqdn, t.suite, state);
        }
        for (k, v) in &self.packets {
            let _ = write!(s, " {k}={v}");
        }
        s.push_str(" drops:");
        if self.drops.is_empty() {
            s.push_str(" none");
        }
        for (k, v) in &self.drops {
            let _ = write!(s, " {k}={v}");
        }
        let _ = write!(s, " {}:", self.tun.name);
        for (k, v) in &self.tun.counters {
            if k.ends_with("_packets") || k.ends_with("_dropped") || *v != 0 {
                let _ = write!(s, " {k}={v}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntm_proto::Error;

    #[test]
    fn drops_merge_every_source_by_name() {
        let mut c = Counters::default();
        c.drop_local(LocalDrop::HoldFull);
        c.drop_dns(DnsDrop::Duplicate);
        c.drop_dns_n(DnsDrop::UpstreamTimeout, 2);
        let mut p = DropCounters::default();
        p.count(Error::BadTag);
        p.count(Error::Replay);
        p.count(Error::Replay);
        let d = c.drops(&p);
        assert_eq!(d.get("bad_tag"), Some(&1));
        assert_eq!(d.get("replay"), Some(&2));
        assert_eq!(d.get("hold_full"), Some(&1));
        assert_eq!(d.get("dns_duplicate"), Some(&1));
        assert_eq!(d.get("dns_upstream_timeout"), Some(&2));
        assert_eq!(d.len(), 5);
        // No name is used twice across the three sources.
        let mut names: Vec<&str> = LocalDrop::ALL.iter().map(|d| d.name()).collect();
        names.extend(DnsDrop::ALL.iter().map(|d| d.name()));
        names.extend(Error::ALL.iter().map(|e| e.name()));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn status_round_trips_and_summarizes() {
        let mut c = Counters {
            tun_rx: 3,
            ..Counters::default()
        };
        c.reply(ReplyKind::A);
        let st = Status {
            fqdn: "cn.ntm.test".into(),
            vip: Some(Ipv4Addr::new(100, 64, 0, 7)),
            node_id: Some(3),
            dc: None,
            local_addr: "198.18.0.20:7700".parse().unwrap(),
            observed: Some("198.18.0.20:7700".parse().unwrap()),
            behind_nat: Some(false),
            tunnels: vec![TunnelStatus {
                id: 9,
                peer_fqdn: "cn2.ntm.test".into(),
                peer_vip: Ipv4Addr::new(100, 64, 0, 8),
                endpoint: "198.18.0.11:7700".parse().unwrap(),
                path: "direct".into(),
                role: "responder".into(),
                suite: "aes-256-gcm".into(),
                up: true,
            }],
            packets: c.packets(),
            drops: c.drops(&DropCounters::default()),
            tun: TunDeviceStatus {
                name: "ntm0".into(),
                queue_len: 1000,
                offload: true,
                udp_offload: true,
                counters: [
                    ("tx_dropped", 650),
                    ("rx_dropped", 2),
                    ("tx_packets", 9),
                    ("rx_errors", 0),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            },
        };
        let dir = std::env::temp_dir().join(format!("ntm-node-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        st.store(&path).unwrap();
        let back = Status::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.packet_count("tun_rx"), 3);
        assert_eq!(back.packet_count("dns_answer_a"), 1);
        assert_eq!(back.drop_count("bad_tag"), 0);
        assert!(back.tunnel_to("cn2.ntm.test").is_some());
        let line = back.log_line();
        assert!(line.contains("tunnels=1 up=1 vip=100.64.0.7"), "{line}");
        assert!(
            line.contains(" tunnel9=cn2.ntm.test/aes-256-gcm/up "),
            "{line}"
        );
        assert_eq!(back.tunnels[0].suite, "aes-256-gcm");
        assert!(line.contains("drops: none"), "{line}");
        assert!(
            line.ends_with(" ntm0: rx_dropped=2 tx_dropped=650 tx_packets=9"),
            "{line}"
        );
        assert_eq!(back.tun.dropped(), 652);
        // A status file of a node without the tun section still loads.
        let mut v: serde_json::Value = serde_json::to_value(&st).unwrap();
        v.as_object_mut().unwrap().remove("tun");
        let old: Status = serde_json::from_value(v).unwrap();
        assert_eq!(old.tun, TunDeviceStatus::default());
    }
}
