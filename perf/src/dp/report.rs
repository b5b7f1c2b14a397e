//! `ntm-bench dp`'s tables (stdout), JSON (`dp-<unix>.json`, `dp-latest.json`) and
//! plots (`dp-zero-loss.svg`, `dp-ns-per-packet.svg`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::measure::Trial;
use super::{DpPoint, DpResults};
use crate::bench::Direction;
use crate::report::{plot_err, COLORS};
use crate::run::fmt_secs;
use crate::stats::Summary;

/// Per-packet figures of a trial, over the frames it delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PerPacket {
    /// Worker thread + CPU 1 softirq, ns (see [`PerPacket::of`]).
    pub ns: Option<f64>,
    /// The worker thread alone, ns.
    pub worker_ns: Option<f64>,
    /// CPU 1 softirq (`/proc/stat`) alone, ns.
    pub softirq_ns: f64,
    /// `ksoftirqd/1` alone, ns.
    pub ksoftirqd_ns: Option<f64>,
    /// CPU 1 busy (whatever ran there), ns.
    pub cpu1_ns: f64,
    /// Frames per receiving burst of the worker.
    pub burst: Option<f64>,
    /// The worker's TX wake-ups (sendto) per frame (AF_XDP only).
    pub kicks: Option<f64>,
    /// The AF_XDP worker's loop time per frame, ns: frame work, ring operations,
    /// system calls (sleep included).
    pub split_ns: Option<[f64; 3]>,
}

impl PerPacket {
    /// The figures of `t`; `hz`: the unit of the workers' cycle counters; `irq_acct`:
    /// whether the kernel accounts IRQ time apart.
    ///
    /// The headline is the worker's time plus CPU 1's softirq time. Without IRQ time
    /// accounting the softirq work the worker's system calls run (on veth: the far
    /// end's receive) is in the worker's time already, and `/proc/stat`'s softirq column
    /// counts it again (tick-sampled): then the softirq time added is `ksoftirqd/1`'s,
    /// the softirq work no system call ran. Without a worker thread (kernel
    /// forwarding) it is `/proc/stat`'s softirq time alone.
    pub fn of(t: &Trial, hz: u64, irq_acct: Option<bool>) -> PerPacket {
        let n = t.delivered.max(1) as f64;
        let worker_ns = t.cpu.worker_ns.map(|w| w as f64 / n);
        let softirq_ns = t.cpu.softirq_ns as f64 / n;
        let ksoftirqd_ns = t.cpu.ksoftirqd_ns.map(|k| k as f64 / n);
        let d = &t.dut;
        let ns_of = |c: u64| c as f64 * 1e9 / hz.max(1) as f64 / n;
        let ns = match (worker_ns, irq_acct) {
            (Some(w), Some(true)) => w + softirq_ns,
            (Some(w), _) => w + ksoftirqd_ns.unwrap_or(0.0),
            (None, _) => softirq_ns,
        };
        PerPacket {
            ns: Some(ns),
            worker_ns,
            softirq_ns,
            ksoftirqd_ns,
            cpu1_ns: t.cpu.busy_ns as f64 / n,
            burst: (d.batches > 0).then(|| d.rx as f64 / d.batches as f64),
            kicks: d.af_xdp.then(|| d.kicks as f64 / n),
            split_ns: (d.af_xdp && hz > 0).then(|| {
                [
                    ns_of(d.cycles_process),
                    ns_of(d.cycles_ring),
                    ns_of(d.cycles_syscall),
                ]
            }),
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn header(r: &DpResults) -> String {
    let c = &r.conditions;
    let load = |l: &[f64]| {
        l.iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let vuln: Vec<String> = c
        .vulnerabilities
        .iter()
        .filter(|(_, s)| s != "Not affected")
        .map(|(n, s)| format!("{n}: {s}"))
        .collect();
    format!(
        "ntm-bench dp: {} ({} CPUs), Linux {}, load {} at the start, {} at the end; \
         {} trial(s) of {:.1} s per point; took {}\n\
         IRQ time accounting: {}; CPU vulnerabilities (other than not affected): {}\n",
        c.cpu_model,
        c.cpus,
        c.kernel,
        load(&c.load_start),
        load(&c.load_end),
        r.plan.steps,
        r.plan.trial.window.as_secs_f64(),
        fmt_secs(r.seconds),
        c.irq_time_accounting
            .map_or("unknown", |y| if y { "yes" } else { "no" }),
        if vuln.is_empty() {
            "none".into()
        } else {
            vuln.join("; ")
        },
    )
}

fn point_row(p: &DpPoint, hz: u64, irq_acct: Option<bool>) -> String {
    let s = &p.search;
    let best = s.best_trial();
    let pp = best.map(|t| PerPacket::of(t, hz, irq_acct));
    let place = if s.gen_limited {
        "none (generator-bound)".to_owned()
    } else {
        s.trials
            .first()
            .and_then(Trial::main_place)
            .map_or("-".into(), |(w, n)| format!("{w} {n}"))
    };
    let split = pp
        .and_then(|x| x.split_ns)
        .map_or("-".into(), |[a, b, c]| format!("{a:.0}/{b:.0}/{c:.0}"));
    let checked = s.checked();
    format!(
        "| {} | {} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ok{} |\n",
        p.datapath,
        p.direction.as_str(),
        p.size,
        s.zero_loss_pps() / 1e6,
        s.gen_max_pps / 1e6,
        opt(pp.and_then(|x| x.ns), 0),
        opt(pp.and_then(|x| x.worker_ns), 0),
        opt(pp.map(|x| x.softirq_ns), 0),
        opt(pp.and_then(|x| x.ksoftirqd_ns), 0),
        opt(pp.map(|x| x.cpu1_ns), 0),
        split,
        opt(pp.and_then(|x| x.kicks), 3),
        opt(pp.and_then(|x| x.burst), 1),
        place,
        checked.ok,
        if checked.bad > 0 {
            format!(", {} BAD", checked.bad)
        } else {
            String::new()
        },
    )
}

/// Every table as Markdown.
pub fn tables(r: &DpResults) -> String {
    let mut s = header(r);
    s.push_str(
        "\nZero-loss rate (binary search) and cost per packet at that rate (CPU 1: the \
         worker alone there; ns over the frames delivered)\n\n\
         | datapath | direction | size | zero-loss Mpps | generator max Mpps | ns/pkt \
         (worker + softirq) | worker ns/pkt | softirq ns/pkt | ksoftirqd/1 ns/pkt | \
         CPU 1 busy ns/pkt | process/ring/syscall ns/pkt | sendto/pkt | burst | \
         loss place at full rate | samples |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    let c = &r.conditions;
    for p in &r.points {
        s.push_str(&point_row(p, c.cycles_per_second, c.irq_time_accounting));
    }
    s.push_str(&targets(r));
    s.push_str(&compute_bound(r));
    s.push_str(&paper(r));
    if !r.classifier.is_empty() {
        s.push_str(
            "\nntma's XDP classifier alone (BPF_PROG_TEST_RUN)\n\n\
             | program | frame | runs | kernel ns/run | wall ns/run | action |\n\
             |---|---|---:|---:|---:|---:|\n",
        );
        for c in &r.classifier {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.1} | {} |",
                c.program, c.frame, c.repeat, c.kernel_ns, c.wall_ns, c.action
            );
        }
    }
    if !r.skipped.is_empty() {
        s.push_str("\nLeft out:\n\n");
        for k in &r.skipped {
            let _ = writeln!(s, "- {} ({}): {}", k.datapath, k.what, k.why);
        }
    }
    s
}

/// The zero-loss rates, pps, of every round of `datapath` at (`dir`, `size`).
fn rounds(r: &DpResults, datapath: &str, dir: Direction, size: usize) -> Vec<f64> {
    r.points
        .iter()
        .filter(|p| p.datapath == datapath && p.direction == dir && p.size == size)
        .map(|p| p.search.zero_loss_pps())
        .collect()
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &[f64]) -> Option<f64> {
    Summary::of(v).map(|s| s.median)
}

/// `median (min–max, n)` in Mpps.
fn spread(v: &[f64]) -> String {
    match Summary::of(v) {
        None => "-".into(),
        Some(s) if s.n == 1 => format!("{:.3}", s.median / 1e6),
        Some(s) => format!(
            "{:.3} ({:.3}–{:.3}, {})",
            s.median / 1e6,
            s.min / 1e6,
            s.max / 1e6,
            s.n
        ),
    }
}

/// The zero-loss targets: (datapath, reference, size, least ratio); a
/// ratio of 0 has no target (a comparison only).
const TARGETS: [(&str, &str, usize, f64); 9] = [
    ("ntma", "l2fwd", 64, 0.90),
    ("ntma-s1", "l2fwd", 64, 0.90),
    ("ntma", "l2fwd", 1400, 0.85),
    ("ntma-s1", "l2fwd", 1400, 0.70),
    ("ntma", "raw-b1", 64, 3.0),
    ("ntma", "raw-b1", 512, 3.0),
    ("ntma", "raw-b1", 1400, 3.0),
    ("ntma", "ntma-base", 64, 0.0),
    ("ntma", "ntma-base", 1400, 0.0),
];

/// The zero-loss targets against the medians of the rounds.
fn targets(r: &DpResults) -> String {
    let mut s = String::from(
        "
Zero-loss rate against the references (median of the rounds, Mpps;          min–max and how many searches in brackets)

         | datapath | reference | size | direction | datapath Mpps | reference Mpps |          ratio | target | met |
         |---|---|---:|---|---:|---:|---:|---:|---|
",
    );
    for (dp, reference, size, least) in TARGETS {
        for dir in Direction::BOTH {
            let (a, b) = (rounds(r, dp, dir, size), rounds(r, reference, dir, size));
            let (Some(ma), Some(mb)) = (median(&a), median(&b)) else {
                continue;
            };
            let ratio = if mb > 0.0 { ma / mb } else { f64::NAN };
            let (target, met) = if least == 0.0 {
                ("-".to_owned(), "-")
            } else if least < 1.0 {
                (
                    format!("≥ {:.0} %", least * 100.0),
                    if ratio >= least { "yes" } else { "no" },
                )
            } else {
                (
                    format!("≥ {least:.0}×"),
                    if ratio >= least { "yes" } else { "no" },
                )
            };
            let _ = writeln!(
                s,
                "| {dp} | {reference} | {size} | {} | {} | {} | {} | {target} | {met} |",
                dir.as_str(),
                spread(&a),
                spread(&b),
                if least >= 1.0 {
                    format!("{ratio:.1}×")
                } else {
                    format!("{:.0} %", ratio * 100.0)
                },
            );
        }
    }
    s
}

/// Frames per burst in criterion's `fastpath/burst` (its time is per burst).
const BURST: f64 = 64.0;

/// criterion's median for `op` at `size` with `tunnels`, ns.
fn cost(r: &DpResults, op: &str, size: usize, tunnels: Option<u32>) -> Option<f64> {
    r.costs
        .iter()
        .find(|c| c.op == op && c.size == Some(size) && c.tunnels == tunnels)
        .map(|c| c.ns)
}

/// ns per packet of a burst of `fastpath/burst/<dir>/<suite>`.
fn burst(r: &DpResults, dir: &str, suite: &str, size: usize, tunnels: u32) -> Option<f64> {
    cost(
        r,
        &format!("fastpath/burst/{dir}/{suite}"),
        size,
        Some(tunnels),
    )
    .map(|ns| ns / BURST)
}

fn ns(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

/// The compute bound (criterion, bursts from memory) against the targets;
/// beside it the per-packet functions of the same run (the code before the burst
/// work: an atomic add per packet, one tag at a time).
fn compute_bound(r: &DpResults) -> String {
    if r.costs.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nCompute bound against the targets (criterion, bursts of 64 from memory, ns per \
         packet; per-packet functions of the same run for comparison)\n\n\
         | measure | target | uplink | downlink | per-packet up / down | met |\n\
         |---|---:|---:|---:|---:|---|\n",
    );
    let (s1, s2) = ("suite1_hmac", "suite2_gcm");
    let seal = cost(r, &format!("fastpath/seal/{s2}"), 64, None);
    for (tunnels, target) in [(1, 25.0), (10_000, 40.0)] {
        let v = burst(r, "uplink", s2, 64, tunnels)
            .zip(seal)
            .map(|(b, s)| b - s);
        let pp = cost(r, &format!("fastpath/uplink/{s2}"), 64, Some(tunnels))
            .zip(seal)
            .map(|(b, s)| b - s);
        let _ = writeln!(
            s,
            "| without the cipher (suite 2 uplink − its seal), 64 B, {tunnels} tunnel(s) | ≤ {target:.0} | {} | - | {} | {} |",
            ns(v),
            ns(pp),
            met(v.map(|v| v <= target)),
        );
    }
    for (suite, name, size, target) in [
        (s1, "suite 1", 64, 100.0),
        (s1, "suite 1", 1400, 550.0),
        (s2, "suite 2", 64, 80.0),
        (s2, "suite 2", 1400, 300.0),
    ] {
        let (up, down) = (
            burst(r, "uplink", suite, size, 1),
            burst(r, "downlink", suite, size, 1),
        );
        let pp = |d: &str| cost(r, &format!("fastpath/{d}/{suite}"), size, Some(1));
        let _ = writeln!(
            s,
            "| {name}, {size} B, 1 tunnel | ≤ {target:.0} | {} | {} | {} / {} | {} |",
            ns(up),
            ns(down),
            ns(pp("uplink")),
            ns(pp("downlink")),
            met(up.zip(down).map(|(u, d)| u.max(d) <= target)),
        );
    }
    s
}

fn met(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

/// The paper's figures (raw sockets, its hardware) beside ours.
fn paper(r: &DpResults) -> String {
    let classify = r
        .classifier
        .iter()
        .find(|c| c.program == "ntma_lan")
        .map(|c| c.kernel_ns);
    // The main round's ntma, 64 B, uplink at its zero-loss rate.
    let worker = r
        .points
        .iter()
        .find(|p| {
            p.datapath == "ntma" && p.size == 64 && p.direction == Direction::Up && p.round == 0
        })
        .and_then(|p| p.search.best_trial())
        .map(|t| {
            PerPacket::of(
                t,
                r.conditions.cycles_per_second,
                r.conditions.irq_time_accounting,
            )
        });
    let rows = [
        ("classification of a GN frame (ntma_lan in XDP, BPF_PROG_TEST_RUN)", classify, 15.5),
        (
            "tunnel processing of a 64 B packet (suite 2 / the paper's HMAC: suite 1 uplink, in memory)",
            burst(r, "uplink", "suite1_hmac", 64, 1),
            408.7,
        ),
        (
            "worker CPU per relayed packet (ntma, 64 B, uplink, zero-loss rate, veth copy mode)",
            worker.and_then(|w| w.ns),
            424.2,
        ),
        (
            "of which frame work (the worker's cycle counter)",
            worker.and_then(|w| w.split_ns).map(|[p, _, _]| p),
            408.7,
        ),
        ("ARP reply (gn/arp_reply, in memory)", cost_any(r, "gn/arp_reply"), 485.7),
    ];
    if rows.iter().all(|(_, v, _)| v.is_none()) {
        return String::new();
    }
    let mut s = String::from(
        "\nBeside the paper (its raw-socket adapter on its hardware)\n\n\
         | measure | ns here | paper ns |\n|---|---:|---:|\n",
    );
    for (what, v, paper) in rows {
        let _ = writeln!(s, "| {what} | {} | {paper} |", ns(v));
    }
    s
}

/// criterion's median for `op` whatever its size and table, ns.
fn cost_any(r: &DpResults, op: &str) -> Option<f64> {
    r.costs.iter().find(|c| c.op == op).map(|c| c.ns)
}

/// Writes `dp-<unix>.json` and `dp-latest.json` under `dir`.
pub fn write_json(r: &DpResults, dir: &Path) -> Result<Vec<PathBuf>> {
    crate::report::write_json_as(r, dir, "dp", r.started_unix, "dp-latest.json")
}

/// A packet size and a point's values at it, one per round.
type SizeValues = (f64, Vec<f64>);

/// One line per (datapath, direction) of `value` against the packet size.
fn plot(
    r: &DpResults,
    path: &Path,
    title: &str,
    y: &str,
    value: &dyn Fn(&DpPoint) -> Option<f64>,
) -> Result<()> {
    // Each point's values over its rounds, then their median.
    let mut series: Vec<(String, Vec<SizeValues>)> = Vec::new();
    for p in &r.points {
        let Some(v) = value(p) else { continue };
        let name = format!("{} {}", p.datapath, p.direction.as_str());
        let x = p.size as f64;
        let i = match series.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                series.push((name, Vec::new()));
                series.len() - 1
            }
        };
        let pts = &mut series[i].1;
        match pts.iter_mut().find(|(px, _)| *px == x) {
            Some((_, vs)) => vs.push(v),
            None => pts.push((x, vec![v])),
        }
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = series
        .into_iter()
        .map(|(n, pts)| {
            let pts = pts
                .into_iter()
                .filter_map(|(x, vs)| median(&vs).map(|m| (x, m)))
                .collect();
            (n, pts)
        })
        .collect();
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1500f64, 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("inner IPv4 packet, bytes")
        .y_desc(y)
        .draw()
        .map_err(plot_err)?;
    for (i, (name, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = COLORS[(i / 2) % COLORS.len()];
        // Uplink solid, downlink thin.
        let style = color.stroke_width(if i % 2 == 0 { 3 } else { 1 });
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Writes both plots under `dir`.
pub fn write_plots(r: &DpResults, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let a = dir.join("dp-zero-loss.svg");
    plot(
        r,
        &a,
        "Zero-loss rate per datapath (reduced topology)",
        "zero-loss Mpps",
        &|p| Some(p.search.zero_loss_pps() / 1e6),
    )?;
    let b = dir.join("dp-ns-per-packet.svg");
    let irq_acct = r.conditions.irq_time_accounting;
    plot(
        r,
        &b,
        "CPU 1 per packet at the zero-loss rate (worker + softirq)",
        "ns per packet",
        &|p| {
            p.search
                .best_trial()
                .and_then(|t| PerPacket::of(t, 0, irq_acct).ns)
        },
    )?;
    Ok(vec![a, b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Direction;
    use crate::check::Checked;
    use crate::dp::dut::DutCounters;
    use crate::dp::measure::{CpuUse, Search};
    use crate::dp::xgen::GenResult;
    use crate::dp::{Conditions, DpPlan};

    fn trial(target: Option<f64>, sent: u64, delivered: u64) -> Trial {
        Trial {
            target_pps: target,
            gen: GenResult {
                queued: sent,
                sent,
                secs: 1.0,
                kicks: sent / 32,
                tx_invalid: 0,
            },
            delivered,
            lost: sent - delivered,
            places: if sent > delivered {
                vec![("xsk rx".into(), sent - delivered)]
            } else {
                vec![]
            },
            sampled: 10,
            checked: Checked { ok: 10, bad: 0 },
            cpu: CpuUse {
                worker_ns: Some(500_000_000),
                ksoftirqd_ns: Some(50_000_000),
                softirq_ns: 100_000_000,
                busy_ns: 700_000_000,
                wall_ns: 1_000_000_000,
            },
            dut: DutCounters {
                rx: delivered,
                tx: delivered,
                batches: delivered / 16,
                af_xdp: true,
                kicks: delivered / 16,
                cycles_process: delivered * 100,
                ..DutCounters::default()
            },
        }
    }

    #[test]
    fn compute_bound_divides_bursts_and_subtracts_the_seal() {
        let c = |id: &str, ns: f64| {
            let (op, size, tunnels) = crate::cost::parse_id(id);
            crate::cost::Cost {
                id: id.into(),
                op,
                size,
                tunnels,
                ns,
            }
        };
        let r = DpResults {
            started_unix: 0,
            seconds: 0.0,
            conditions: Conditions::default(),
            plan: DpPlan::quick("dp-"),
            points: vec![],
            classifier: vec![],
            skipped: vec![],
            costs: vec![
                c(
                    "fastpath/burst/uplink/suite2_gcm/64B/1_tunnels",
                    64.0 * 90.0,
                ),
                c(
                    "fastpath/burst/downlink/suite2_gcm/64B/1_tunnels",
                    64.0 * 70.0,
                ),
                c(
                    "fastpath/burst/uplink/suite2_gcm/64B/10000_tunnels",
                    64.0 * 130.0,
                ),
                c("fastpath/seal/suite2_gcm/64B", 75.0),
                c("fastpath/uplink/suite2_gcm/64B/1_tunnels", 110.0),
                c("gn/arp_reply", 40.0),
            ],
        };
        let t = tables(&r);
        // 90 − 75 = 15 ≤ 25; 130 − 75 = 55 > 40; per-packet 110 − 75 = 35.
        assert!(t.contains("| without the cipher (suite 2 uplink − its seal), 64 B, 1 tunnel(s) | ≤ 25 | 15 | - | 35 | yes |"), "{t}");
        assert!(
            t.contains("64 B, 10000 tunnel(s) | ≤ 40 | 55 | - | - | no |"),
            "{t}"
        );
        // Uplink 90 > 80: missed whatever the downlink.
        assert!(
            t.contains("| suite 2, 64 B, 1 tunnel | ≤ 80 | 90 | 70 | 110 / - | no |"),
            "{t}"
        );
        assert!(
            t.contains("| suite 1, 64 B, 1 tunnel | ≤ 100 | - | - | - / - | - |"),
            "{t}"
        );
        assert!(
            t.contains("| ARP reply (gn/arp_reply, in memory) | 40 | 485.7 |"),
            "{t}"
        );
    }

    #[test]
    fn tables_plots_and_json_show_the_search() {
        let r = DpResults {
            started_unix: 7,
            seconds: 12.0,
            conditions: Conditions {
                cycles_per_second: 1_000_000_000,
                irq_time_accounting: Some(true),
                ..Conditions::default()
            },
            plan: DpPlan::quick("dp-"),
            points: vec![DpPoint {
                datapath: "ntma".into(),
                direction: Direction::Up,
                size: 64,
                search: Search {
                    trials: vec![
                        trial(None, 2_000_000, 1_000_000),
                        trial(Some(1e6), 1_000_000, 1_000_000),
                    ],
                    gen_max_pps: 2e6,
                    gen_limited: false,
                    best: Some(1),
                },
                round: 0,
            }],
            classifier: vec![],
            skipped: vec![],
            costs: vec![],
        };
        let t = tables(&r);
        // 1 Mpps without loss; 600 ms of CPU 1 over 10^6 frames; 100 cycles at 1 GHz.
        assert!(
            t.contains("| ntma | gn→cn | 64 | 1.000 | 2.000 | 600 | 500 | 100 | 50 | 700 | 100/0/0 | 0.062 | 16.0 | xsk rx 1000000 | 20 ok |"),
            "{t}"
        );
        // No reference measured: no target row.
        assert!(!t.contains("| ntma | l2fwd |"), "{t}");
        let mut r2 = r.clone();
        for (round, (name, delivered)) in [
            ("l2fwd", 1_000_000),
            ("l2fwd", 1_200_000),
            ("l2fwd", 800_000),
        ]
        .into_iter()
        .enumerate()
        {
            let mut p = r.points[0].clone();
            p.datapath = name.into();
            p.round = round;
            p.search.trials[1] = trial(Some(delivered as f64), delivered, delivered);
            r2.points.push(p);
        }
        let t2 = tables(&r2);
        // ntma 1.0 against l2fwd's median of 0.8, 1.0 and 1.2 Mpps.
        assert!(
            t2.contains("| ntma | l2fwd | 64 | gn→cn | 1.000 | 1.000 (0.800–1.200, 3) | 100 % | ≥ 90 % | yes |"),
            "{t2}"
        );
        assert_eq!(median(&[3.0, 1.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        let t = &r.points[0].search.trials[1];
        let pp = PerPacket::of(t, 0, Some(false));
        assert_eq!(pp.split_ns, None);
        // Without IRQ time accounting: the worker and ksoftirqd/1.
        assert_eq!(pp.ns, Some(550.0));
        let mut kernel = t.clone();
        kernel.cpu.worker_ns = None;
        assert_eq!(PerPacket::of(&kernel, 0, Some(false)).ns, Some(100.0));
        let dir = std::env::temp_dir().join(format!("dp-report-{}", std::process::id()));
        let json = write_json(&r, &dir).unwrap();
        let back: DpResults =
            serde_json::from_str(&std::fs::read_to_string(&json[1]).unwrap()).unwrap();
        assert_eq!(back.points[0].search.zero_loss_pps(), 1e6);
        for p in write_plots(&r, &dir).unwrap() {
            assert!(std::fs::read_to_string(p).unwrap().contains("<svg"));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
