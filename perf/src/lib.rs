//! ntma benchmarks: datapaths side by side on the testbed.
//!
//! `ntm-bench` (run by `cargo xtask bench`) builds its own testbed, puts a UDP source and
//! a counting XDP sink at the edges (gn and cn), and measures each datapath on the same
//! path gn → ntma → nat1 → cn: offered and delivered load per packet size and direction,
//! latency, scaling. Results go to stdout (table), `perf/results/` (JSON, SVG plots).

pub mod bench;
pub mod check;
pub mod cost;
pub mod cpu;
pub mod dp;
pub mod gateways;
pub mod gen;
pub mod latency;
pub mod net;
pub mod packet;
pub mod report;
pub mod run;
pub mod stats;
pub mod xdp;
