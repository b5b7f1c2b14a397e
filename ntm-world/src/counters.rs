//! Where packets are lost on the testbed, and what TCP made of it: the
//! kernel's drop and error counters of every interface in every namespace
//! (`/proc/net/dev`), of UDP in every namespace (`/proc/net/snmp`: a
//! socket's full receive buffer is `RcvbufErrors`), of the host's per-CPU
//! input backlogs (`/proc/net/softnet_stat`, which veth pairs go through),
//! and TCP's own account in every namespace (`/proc/net/snmp` and
//! `/proc/net/netstat`: retransmitted segments, and why: fast retransmits,
//! tail loss probes, time-outs; the segments the receiver reported as
//! duplicates (D-SACK), i.e. retransmitted although nothing was lost; the
//! reordering it saw). Take a [`Snapshot`] before and after a transfer;
//! [`Snapshot::grown_since`] names each counter that moved, e.g.
//! `cn/ntm0 tx_dropped` or `gn/tcp TCPLossProbes`.
//!
//! Not here: what no kernel counter of these sees, such as an AF_XDP
//! socket's full rings (the adapter's own status).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use ntm_testbed::Role;

use crate::World;

/// The interface counters that count losses (`/proc/net/dev`, by their
/// sysfs names).
const LOSSES: &[&str] = &[
    "rx_dropped",
    "rx_errors",
    "rx_fifo_errors",
    "rx_frame_errors",
    "tx_dropped",
    "tx_errors",
    "tx_fifo_errors",
    "tx_carrier_errors",
];
/// The UDP counters of `/proc/net/snmp` that count losses.
const UDP_LOSSES: &[&str] = &[
    "InErrors",
    "NoPorts",
    "RcvbufErrors",
    "SndbufErrors",
    "InCsumErrors",
];
/// The IP counters of `/proc/net/snmp` that count losses.
const IP_LOSSES: &[&str] = &[
    "InHdrErrors",
    "InAddrErrors",
    "InDiscards",
    "OutDiscards",
    "OutNoRoutes",
    "ReasmFails",
    "FragFails",
];
/// The connection tracker's counters (`/proc/net/stat/nf_conntrack`) of
/// packets it dropped (NAT namespaces).
const CONNTRACK_LOSSES: &[&str] = &["drop", "early_drop", "insert_failed"];
/// TCP's counters (`Tcp:` in `/proc/net/snmp`, `TcpExt:` in
/// `/proc/net/netstat`) that say why segments were sent again, whether
/// they had been lost, and what a receiver had to queue or drop.
const TCP: &[&str] = &[
    // The sender: retransmitted segments and what triggered them.
    "RetransSegs",
    "TCPFastRetrans",
    "TCPSlowStartRetrans",
    "TCPLossProbes",
    "TCPTimeouts",
    "TCPSpuriousRTOs",
    // Duplicates the receiver reported (D-SACK): sent again, never lost.
    "TCPDSACKRecvSegs",
    // Reordering the sender detected (not loss).
    "TCPSACKReorder",
    "TCPTSReorder",
    // The receiver: segments with bad headers or checksums, out-of-order
    // arrivals, and segments it dropped.
    "InErrs",
    "InCsumErrors",
    "TCPOFOQueue",
    "TCPOFODrop",
    "TCPRcvQDrop",
    "TCPBacklogDrop",
];

/// Counters by `<role>/<interface> <counter>`, `<role>/udp <counter>`,
/// `<role>/tcp <counter>` and `host/softnet dropped`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<String, u64>);

impl Snapshot {
    /// The counters that grew since `before`, by how much.
    pub fn grown_since(&self, before: &Snapshot) -> BTreeMap<String, u64> {
        grown(&before.0, &self.0)
    }
}

/// The counters of `after` that are larger than in `before` (absent: 0),
/// by how much.
pub fn grown(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// `name=count` of each entry, comma separated; `none` when empty.
pub fn describe(grown: &BTreeMap<String, u64>) -> String {
    if grown.is_empty() {
        return "none".into();
    }
    grown
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An iperf3 run and the counters that grew during it.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// What iperf3 measured.
    pub iperf: crate::Iperf,
    /// Every counter that grew (see [`World::path_counters`]).
    pub grown: BTreeMap<String, u64>,
}

impl World {
    /// [`World::iperf3`] between two [`World::path_counters`] snapshots.
    pub fn iperf3_counted(
        &self,
        server: Role,
        server_addr: std::net::Ipv4Addr,
        client: Role,
        secs: u32,
        reverse: bool,
    ) -> Result<Transfer> {
        let before = self.path_counters()?;
        let iperf = self.iperf3(server, server_addr, client, secs, reverse)?;
        let grown = self.path_counters()?.grown_since(&before);
        Ok(Transfer { iperf, grown })
    }

    /// Every counter of the testbed that this module reads, now.
    pub fn path_counters(&self) -> Result<Snapshot> {
        let mut m = BTreeMap::new();
        for role in Role::ALL {
            let out = self.sh(
                role,
                "cat /proc/net/dev; echo '#snmp'; cat /proc/net/snmp /proc/net/netstat; \
                 echo '#conntrack'; cat /proc/net/stat/nf_conntrack 2>/dev/null; true",
            )?;
            let (dev, rest) = out
                .split_once("#snmp")
                .with_context(|| format!("/proc/net in {role}"))?;
            let (snmp, conntrack) = rest.split_once("#conntrack").unwrap_or((rest, ""));
            for (k, v) in parse_conntrack(conntrack) {
                if CONNTRACK_LOSSES.contains(&k.as_str()) {
                    m.insert(format!("{role}/conntrack {k}"), v);
                }
            }
            for (k, v) in parse_snmp(snmp, "Ip") {
                if IP_LOSSES.contains(&k.as_str()) {
                    m.insert(format!("{role}/ip {k}"), v);
                }
            }
            for (ifname, c) in ntm_node::parse_proc_net_dev(dev) {
                for &k in LOSSES {
                    if let Some(&v) = c.get(k) {
                        m.insert(format!("{role}/{ifname} {k}"), v);
                    }
                }
            }
            for (k, v) in parse_snmp(snmp, "Udp") {
                if UDP_LOSSES.contains(&k.as_str()) {
                    m.insert(format!("{role}/udp {k}"), v);
                }
            }
            for proto in ["Tcp", "TcpExt"] {
                for (k, v) in parse_snmp(snmp, proto) {
                    if TCP.contains(&k.as_str()) {
                        m.insert(format!("{role}/tcp {k}"), v);
                    }
                }
            }
        }
        let softnet =
            std::fs::read_to_string("/proc/net/softnet_stat").context("/proc/net/softnet_stat")?;
        m.insert("host/softnet dropped".into(), softnet_dropped(&softnet));
        Ok(Snapshot(m))
    }
}

/// The counters of `proto` in the text of `/proc/net/snmp` or
/// `/proc/net/netstat` (a line of names followed by a line of values).
fn parse_snmp(text: &str, proto: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return BTreeMap::new();
    };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// The per-CPU table of `/proc/net/stat/nf_conntrack` (a line of names,
/// then a line of hexadecimal values per CPU), summed over the CPUs.
fn parse_conntrack(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(names) = lines.next() else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = names.split_whitespace().collect();
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for l in lines {
        for (k, h) in names.iter().zip(l.split_whitespace()) {
            if let Ok(v) = u64::from_str_radix(h, 16) {
                *m.entry((*k).to_owned()).or_default() += v;
            }
        }
    }
    m
}

/// The sum over CPUs of the second column of `/proc/net/softnet_stat`
/// (hexadecimal): packets dropped because a CPU's input backlog was full
/// (net.core.netdev_max_backlog).
fn softnet_dropped(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_udp_counters_parse() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\nUdp: 100 1 7 90 7 0 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        let u = parse_snmp(t, "Udp");
        assert_eq!(
            parse_snmp("TcpExt: TCPLossProbes TCPTimeouts\nTcpExt: 5 1\n", "TcpExt")
                ["TCPLossProbes"],
            5
        );
        assert_eq!(u["InErrors"], 7);
        assert_eq!(u["RcvbufErrors"], 7);
        assert_eq!(u["InDatagrams"], 100);
        assert!(parse_snmp(t, "Tcp").is_empty());
    }

    #[test]
    fn conntrack_stats_sum_over_cpus() {
        let t = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n\
                 00000003  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 0000000a 00000000\n\
                 00000003  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000006 00000000\n";
        let c = parse_conntrack(t);
        assert_eq!(c["drop"], 16);
        assert_eq!(c["insert_failed"], 1);
        assert_eq!(c["entries"], 6);
        assert!(parse_conntrack("").is_empty());
    }

    #[test]
    fn softnet_drops_sum_over_cpus() {
        let t = "0000a000 00000002 00000000 00000000\n0000b000 00000010 00000001 00000000\n";
        assert_eq!(softnet_dropped(t), 18);
    }

    #[test]
    fn snapshots_compare() {
        let a = Snapshot([("cn/ntm0 tx_dropped".to_owned(), 5), ("x".to_owned(), 1)].into());
        let b = Snapshot([("cn/ntm0 tx_dropped".to_owned(), 9), ("x".to_owned(), 1)].into());
        let g = b.grown_since(&a);
        assert_eq!(g.len(), 1);
        assert_eq!(describe(&g), "cn/ntm0 tx_dropped=4");
        assert_eq!(describe(&BTreeMap::new()), "none");
    }
}
