//! The kernel's counters of a network device (`/sys/class/net/<dev>/statistics`),
//! for the status of the daemons that own one: ntm-node's TUN device, the
//! adapter's two NICs.
//!
//! sysfs shows the network namespace it was mounted in, which is not the
//! caller's after a bare `setns`: [`counters`] checks the device's ifindex there
//! and otherwise reads `/proc/self/net/dev`, which always shows the caller's
//! namespace but sums some counters ([`parse_proc_net_dev`]).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// The `wanted` counters of the device `name` whose interface index is
/// `ifindex` in the caller's namespace, by their sysfs names. Counters the
/// kernel does not show are left out.
pub fn counters(name: &str, ifindex: u32, wanted: &[&str]) -> io::Result<BTreeMap<String, u64>> {
    // A name with a slash or a leading dot would leave /sys/class/net.
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an interface name: {name:?}"),
        ));
    }
    let dir = Path::new("/sys/class/net").join(name);
    let same = std::fs::read_to_string(dir.join("ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(ifindex);
    if same {
        return Ok(read_sysfs(&dir, wanted));
    }
    let text = std::fs::read_to_string("/proc/self/net/dev")?;
    let mut all = parse_proc_net_dev(&text).remove(name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no {name} in /proc/self/net/dev"),
        )
    })?;
    all.retain(|k, _| wanted.contains(&k.as_str()));
    Ok(all)
}

/// The `wanted` counters under `dir/statistics/` (`dir`: a device's sysfs
/// directory); unreadable or unparsable files are left out.
pub fn read_sysfs(dir: &Path, wanted: &[&str]) -> BTreeMap<String, u64> {
    let stats = dir.join("statistics");
    wanted
        .iter()
        .filter_map(|&name| {
            let text = std::fs::read_to_string(stats.join(name)).ok()?;
            Some((name.to_owned(), text.trim().parse().ok()?))
        })
        .collect()
}

/// Every device's counters in the text of `/proc/net/dev` (the calling
/// process's network namespace), by device and then by their sysfs names.
/// That file sums some counters: its rx `drop` is rx_dropped +
/// rx_missed_errors, its `frame` (here rx_frame_errors) adds length, over
/// and CRC errors, its tx `carrier` counts aborted, window and heartbeat
/// errors too. Lines that do not parse are left out.
pub fn parse_proc_net_dev(text: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    // Receive: bytes packets errs drop fifo frame compressed multicast;
    // transmit: bytes packets errs drop fifo colls carrier compressed.
    const FIELDS: [(usize, &str); 10] = [
        (1, "rx_packets"),
        (2, "rx_errors"),
        (3, "rx_dropped"),
        (4, "rx_fifo_errors"),
        (5, "rx_frame_errors"),
        (9, "tx_packets"),
        (10, "tx_errors"),
        (11, "tx_dropped"),
        (12, "tx_fifo_errors"),
        (14, "tx_carrier_errors"),
    ];
    text.lines()
        .filter_map(|l| {
            let (dev, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (v.len() >= 16).then(|| {
                let m = FIELDS.iter().map(|&(i, k)| (k.to_owned(), v[i])).collect();
                (dev.trim().to_owned(), m)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  ntm0: 9876543   12345    1    2    3     0          0         0 123456789   54321    4  650    5     0       6          0
";

    #[test]
    fn proc_net_dev_line_maps_to_sysfs_names() {
        let all = parse_proc_net_dev(PROC_NET_DEV);
        assert_eq!(all.keys().collect::<Vec<_>>(), ["lo", "ntm0"]);
        let m = &all["ntm0"];
        assert_eq!(m["rx_packets"], 12345);
        assert_eq!(m["rx_errors"], 1);
        assert_eq!(m["rx_dropped"], 2);
        assert_eq!(m["rx_fifo_errors"], 3);
        assert_eq!(m["rx_frame_errors"], 0);
        assert_eq!(m["tx_packets"], 54321);
        assert_eq!(m["tx_errors"], 4);
        assert_eq!(m["tx_dropped"], 650);
        assert_eq!(m["tx_fifo_errors"], 5);
        assert_eq!(m["tx_carrier_errors"], 6);
        assert!(parse_proc_net_dev("  ntm0: 1 2 3\n").is_empty());
    }

    #[test]
    fn loopback_counters_are_readable() {
        let wanted = ["tx_dropped", "rx_dropped", "rx_missed_errors"];
        // Every Linux namespace has lo; its index is 1.
        let m = counters("lo", 1, &wanted).unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        // A wrong index falls back to /proc/self/net/dev, which has lo too.
        let p = counters("lo", u32::MAX, &wanted).unwrap();
        assert!(p.contains_key("tx_dropped"), "{p:?}");
        assert!(!p.contains_key("rx_packets"), "only what was asked: {p:?}");
        assert!(counters("no-such-dev0", u32::MAX, &wanted).is_err());
        assert!(counters("../etc", 1, &wanted).is_err() && counters("", 1, &wanted).is_err());
    }

    #[test]
    fn sysfs_counters_skip_what_does_not_parse() {
        let dir = std::env::temp_dir().join(format!("ntm-ops-netdev-{}", std::process::id()));
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
        let wanted = [
            "rx_dropped",
            "tx_dropped",
            "rx_missed_errors",
            "rx_errors",
            "tx_errors",
        ];
        let c = read_sysfs(&dir, &wanted);
        std::fs::remove_dir_all(&dir).unwrap();
        let want: BTreeMap<String, u64> = [
            ("rx_dropped".to_owned(), 540),
            ("tx_dropped".to_owned(), 0),
            ("rx_missed_errors".to_owned(), 7),
        ]
        .into();
        assert_eq!(c, want);
        assert!(read_sysfs(&dir, &wanted).is_empty());
    }
}
