//! CPU time during a measurement window, from `/proc/stat`: how busy each CPU was, so
//! that a datapath that keeps up with the source is told apart by what it costs.

/// Jiffies of one CPU: (busy, total).
pub type Ticks = (u64, u64);

/// Per-CPU (busy, total) jiffies from `/proc/stat` text: busy is user, nice, system,
/// irq, softirq and steal; total adds idle and iowait.
pub fn parse(stat: &str) -> Vec<Ticks> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| f.get(i).copied().unwrap_or(0);
            let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
            (busy, busy + at(3) + at(4))
        })
        .collect()
}

/// The current per-CPU ticks (empty if `/proc/stat` cannot be read).
pub fn now() -> Vec<Ticks> {
    std::fs::read_to_string("/proc/stat")
        .map(|s| parse(&s))
        .unwrap_or_default()
}

/// Busy share of each CPU between two readings, 0..1.
pub fn busy(before: &[Ticks], after: &[Ticks]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1);
            if total == 0 {
                0.0
            } else {
                a.0.saturating_sub(b.0) as f64 / total as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_busy_shares() {
        let a = "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 40 0 0 0 0 0 0\nintr 1 2\n";
        let b =
            "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 55 0 5 40 0 0 0 0 0 0\ncpu1 5 0 15 80 0 0 10 0 0 0\n";
        let (pa, pb) = (parse(a), parse(b));
        assert_eq!(pa, vec![(10, 50), (10, 50)]);
        assert_eq!(pb, vec![(60, 100), (30, 110)]);
        let u = busy(&pa, &pb);
        assert_eq!(u[0], 1.0);
        assert!((u[1] - 20.0 / 60.0).abs() < 1e-9);
        assert_eq!(busy(&pa, &pa), vec![0.0, 0.0]);
    }
}
