//! The kernel's loss counters of the adapter's two interfaces, for `ntma status`
//! and the metrics: a frame the NIC (or veth) dropped before XDP saw it, or after
//! a worker sent it, is counted there and nowhere else.
//!
//! Read from sysfs (`/sys/class/net/<if>/statistics/`), in the daemon's network
//! namespace. On a veth, `rx_dropped` also counts the frames its XDP program
//! redirected to an AF_XDP socket that could not take them (the socket's RX ring
//! full or its fill ring empty: see the ring counters), and `tx_dropped` the frames
//! its peer could not queue.

use std::collections::BTreeMap;

/// The counters read, by their sysfs names.
pub const COUNTERS: [&str; 6] = [
    "rx_dropped",
    "tx_dropped",
    "rx_missed_errors",
    "rx_fifo_errors",
    "rx_errors",
    "tx_errors",
];

/// The [`COUNTERS`] of interface `ifname` ([`ntm_ops::netdev::counters`]);
/// those the kernel does not show (or an interface that is gone) are left out.
pub fn of(ifname: &str) -> BTreeMap<String, u64> {
    nix::net::if_::if_nametoindex(ifname)
        .ok()
        .and_then(|index| ntm_ops::netdev::counters(ifname, index, &COUNTERS).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_loopback() {
        // Every Linux network namespace has lo, with all six counters.
        let c = of("lo");
        assert_eq!(c.len(), COUNTERS.len(), "{c:?}");
        assert!(of("../etc").is_empty() && of("").is_empty());
    }
}
