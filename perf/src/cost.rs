//! Per-packet cost: the results of the criterion benchmarks (`perf/benches/datapath.rs`:
//! ntm-proto encapsulation, decapsulation and HMAC; `ntma-user/benches/fastpath.rs`: the
//! fast path's `uplink`/`downlink` with 1 and 10,000 tunnels), read from criterion's
//! output directory, compared with the paper's 424.2 ns per packet.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The paper's adapter: 424.2 ns per packet.
pub const PAPER_NS: f64 = 424.2;

/// One benchmark's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// criterion's id, e.g. `fastpath/uplink/64B/10000_tunnels`.
    pub id: String,
    /// What was measured (`proto/encap`, `fastpath/uplink`, ...).
    pub op: String,
    /// Inner packet size, bytes.
    pub size: Option<usize>,
    /// Tunnels in the table, where the benchmark has a table.
    pub tunnels: Option<u32>,
    /// Median time per packet, ns.
    pub ns: f64,
}

impl Cost {
    /// Time per packet relative to the paper's.
    pub fn ratio(&self) -> f64 {
        self.ns / PAPER_NS
    }

    /// Packets per second one core manages at this cost, in millions.
    pub fn mpps(&self) -> f64 {
        if self.ns > 0.0 {
            1e3 / self.ns
        } else {
            0.0
        }
    }
}

#[derive(Deserialize)]
struct BenchmarkJson {
    full_id: String,
}

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct EstimatesJson {
    median: Estimate,
}

/// Splits a criterion id into (op, size, tunnels): the last components that look like
/// `64B` and `10000_tunnels` are taken out, the rest is the op.
pub fn parse_id(id: &str) -> (String, Option<usize>, Option<u32>) {
    let mut op = Vec::new();
    let (mut size, mut tunnels) = (None, None);
    for part in id.split('/') {
        if let Some(n) = part.strip_suffix('B').and_then(|n| n.parse().ok()) {
            size = Some(n);
        } else if let Some(n) = part.strip_suffix("_tunnels").and_then(|n| n.parse().ok()) {
            tunnels = Some(n);
        } else {
            op.push(part);
        }
    }
    (op.join("/"), size, tunnels)
}

/// Reads every benchmark under criterion's directory `dir` (`target/criterion`) whose
/// id starts with one of `prefixes`; sorted by op, tunnels, size.
pub fn read(dir: &Path, prefixes: &[&str]) -> Vec<Cost> {
    let mut out = Vec::new();
    walk(dir, 0, &mut |new_dir| {
        let Ok(b) = std::fs::read_to_string(new_dir.join("benchmark.json")) else {
            return;
        };
        let Ok(e) = std::fs::read_to_string(new_dir.join("estimates.json")) else {
            return;
        };
        let (Ok(b), Ok(e)) = (
            serde_json::from_str::<BenchmarkJson>(&b),
            serde_json::from_str::<EstimatesJson>(&e),
        ) else {
            return;
        };
        if !prefixes.iter().any(|p| b.full_id.starts_with(p)) {
            return;
        }
        let (op, size, tunnels) = parse_id(&b.full_id);
        out.push(Cost {
            id: b.full_id,
            op,
            size,
            tunnels,
            ns: e.median.point_estimate,
        });
    });
    out.sort_by(|a, b| {
        (&a.op, a.tunnels, a.size)
            .partial_cmp(&(&b.op, b.tunnels, b.size))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    out
}

/// Calls `f` on every directory named `new` below `dir` (criterion keeps the latest run
/// there), at most a few levels deep.
fn walk(dir: &Path, depth: usize, f: &mut impl FnMut(&Path)) {
    if depth > 6 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "new") {
                f(&p);
            } else {
                walk(&p, depth + 1, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_into_op_size_and_table() {
        assert_eq!(
            parse_id("fastpath/uplink/64B/10000_tunnels"),
            ("fastpath/uplink".into(), Some(64), Some(10_000))
        );
        assert_eq!(
            parse_id("proto/decap/1400B"),
            ("proto/decap".into(), Some(1400), None)
        );
        assert_eq!(parse_id("other"), ("other".into(), None, None));
    }

    #[test]
    fn reads_criterion_output() {
        let dir = std::env::temp_dir().join(format!("perf-cost-{}", std::process::id()));
        let new = dir.join("proto_encap/64B/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"proto/encap","function_id":"64B","value_str":null,"full_id":"proto/encap/64B","directory_name":"proto_encap/64B","title":"proto/encap/64B"}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":220.0},"median":{"point_estimate":212.1}}"#,
        )
        .unwrap();
        // An older run of another id, and something unrelated.
        let other = dir.join("x/new");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("benchmark.json"), r#"{"full_id":"x"}"#).unwrap();
        std::fs::write(
            other.join("estimates.json"),
            r#"{"median":{"point_estimate":1.0}}"#,
        )
        .unwrap();
        let got = read(&dir, &["proto/"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.len(), 1);
        let c = &got[0];
        assert_eq!(
            (c.op.as_str(), c.size, c.tunnels, c.ns),
            ("proto/encap", Some(64), None, 212.1)
        );
        assert!((c.ratio() - 0.5).abs() < 0.001);
        assert!((c.mpps() - 4.714).abs() < 0.01);
    }
}
