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
use std::path::Path;

/// The counters read, by their sysfs names.
pub const COUNTERS: [&str; 6] = [
    "rx_dropped",
    "tx_dropped",
    "rx_missed_errors",
    "rx_fifo_errors",
    "rx_errors",
    "tx_errors",
];

/// The [`COUNTERS`] of interface `ifname`; those the kernel does not show (or an
/// interface that is gone) are left out.
pub fn of(ifname: &str) -> BTreeMap<String, u64> {
    // A name with a slash or dots would leave /sys/class/net.
    if ifname.is_empty() || ifname.contains('/') || ifname.starts_with('.') {
        return BTreeMap::new();
    }
    read_in(&Path::new("/sys/class/net").join(ifname))
}

/// The [`COUNTERS`] under `dir/statistics/` (`dir` is an interface's sysfs
/// directory); unreadable or unparsable files are left out.
pub fn read_in(dir: &Path) -> BTreeMap<String, u64> {
    let stats = dir.join("statistics");
    COUNTERS
        .iter()
        .filter_map(|&name| {
            let text = std::fs::read_to_string(stats.join(name)).ok()?;
            Some((name.to_owned(), text.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_of_a_sysfs_directory() {
        let dir = std::env::temp_dir().join(format!("ntma-ifstats-{}", std::process::id()));
        let stats = dir.join("statistics");
        std::fs::create_dir_all(&stats).unwrap();
        for (name, text) in [
            ("rx_dropped", "540\n"),
            ("tx_dropped", "0\n"),
            ("rx_missed_errors", "7"),
            // Garbage and counters not asked for are ignored.
            ("rx_errors", "lots\n"),
            ("rx_packets", "99\n"),
        ] {
            std::fs::write(stats.join(name), text).unwrap();
        }
        let c = read_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let want: BTreeMap<String, u64> = [
            ("rx_dropped".to_owned(), 540),
            ("tx_dropped".to_owned(), 0),
            ("rx_missed_errors".to_owned(), 7),
        ]
        .into();
        assert_eq!(c, want);
        assert!(read_in(&dir).is_empty());
        assert!(of("../etc").is_empty() && of("").is_empty());
    }

    #[test]
    fn reads_loopback() {
        // Every Linux network namespace has lo, with all six counters.
        let c = of("lo");
        assert_eq!(c.len(), COUNTERS.len(), "{c:?}");
    }
}
