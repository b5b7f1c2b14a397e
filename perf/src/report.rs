//! The results as text tables (stdout, README), JSON and SVG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::bench::Direction;
use crate::cost::PAPER_NS;
use crate::run::{fmt_secs, Results};

/// Busy percentages per CPU: `98/41%`.
pub fn cpu_text(busy: &[f64]) -> String {
    if busy.is_empty() {
        return "-".into();
    }
    let v: Vec<String> = busy.iter().map(|b| format!("{:.0}", b * 100.0)).collect();
    format!("{}%", v.join("/"))
}

/// All tables as Markdown (readable on a terminal too).
pub fn tables(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ntm-bench: {} ({}), {} run(s) of {:.1} s per point after {:.1} s warm-up; took {}\n",
        r.host,
        if r.started_unix > 0 {
            format!("unix {}", r.started_unix)
        } else {
            "-".into()
        },
        r.timing.as_ref().map_or(0, |t| t.reps),
        r.timing.as_ref().map_or(0.0, |t| t.window.as_secs_f64()),
        r.timing.as_ref().map_or(0.0, |t| t.warmup.as_secs_f64()),
        fmt_secs(r.seconds),
    );
    s.push_str(&throughput_table(r));
    s.push('\n');
    s.push_str(&latency_table(r));
    s.push('\n');
    s.push_str(&cost_table(r));
    s.push('\n');
    s.push_str(&scaling_table(r));
    if !r.skipped.is_empty() {
        let _ = writeln!(s, "\nLeft out:\n");
        for k in &r.skipped {
            let _ = writeln!(s, "- {} ({}): {}", k.datapath, k.what, k.why);
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\nDatapath counters after the runs:\n");
        for (d, n) in &r.notes {
            let _ = writeln!(s, "- {d}: {n}");
        }
    }
    s
}

/// Throughput: offered and delivered load per datapath, direction and size.
pub fn throughput_table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Throughput (inner IPv4 packet sizes; Mpps median ± half the range of the runs; Mbit/s of inner packets; CPU busy per CPU during the window, source pinned to CPU 0)\n"
    );
    let _ = writeln!(
        s,
        "| datapath | direction | size | offered Mpps | delivered Mpps | delivered Mbit/s | loss | CPU busy | samples checked |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for p in &r.throughput {
        let (ok, bad) = p.checked();
        let sampled: u64 = p.samples.iter().map(|x| x.sampled).sum();
        let checked = if ok + bad + sampled == 0 {
            "-".to_owned()
        } else if bad > 0 {
            format!("{ok} ok, {bad} BAD")
        } else {
            format!("{ok} ok")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.3} ±{:.0}% | {:.0} | {:.1}% | {} | {} |",
            p.datapath,
            p.direction.as_str(),
            p.size,
            p.offered_pps.median / 1e6,
            p.delivered_pps.median / 1e6,
            p.delivered_pps.spread_pct(),
            p.delivered_mbps(),
            p.loss() * 100.0,
            cpu_text(&p.cpu_busy()),
            checked
        );
    }
    s
}

/// Latency: RTT percentiles of the ping-pong.
pub fn latency_table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Latency (UDP ping-pong gn ⇄ cn, one request in flight, 1 ms apart)\n"
    );
    let _ = writeln!(
        s,
        "| datapath | RTT p50 µs | RTT p99 µs | min µs | answered |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for l in &r.latency {
        match &l.rtt {
            Some(x) => {
                let _ = writeln!(
                    s,
                    "| {} | {:.0} | {:.0} | {:.0} | {}/{} |",
                    l.datapath, x.p50_us, x.p99_us, x.min_us, x.answered, x.sent
                );
            }
            None => {
                let _ = writeln!(s, "| {} | - | - | - | 0 |", l.datapath);
            }
        }
    }
    s
}

/// Per-packet cost from criterion, against the paper's 424.2 ns.
pub fn cost_table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Per-packet cost (criterion medians, one core; the paper's adapter: {PAPER_NS} ns)\n"
    );
    if r.cost.is_empty() {
        let _ = writeln!(
            s,
            "(no criterion results found: run `cargo bench -p perf --bench datapath` and \
             `cargo bench -p ntma-user --bench fastpath`, or `cargo xtask bench`)"
        );
        return s;
    }
    let _ = writeln!(
        s,
        "| operation | size | tunnels | ns/packet | × paper | Mpps/core |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for c in &r.cost {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} |",
            c.op,
            c.size.map_or("-".into(), |n| n.to_string()),
            c.tunnels.map_or("-".into(), |n| n.to_string()),
            c.ns,
            c.ratio(),
            c.mpps()
        );
    }
    s
}

/// Scaling and tuning, with the projection past the measured cores.
pub fn scaling_table(r: &Results) -> String {
    let mut s = String::new();
    if r.scaling.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "Scaling and tuning (gn → cn, {} B, {} flows)\n",
        r.scaling[0].point.size, r.scaling[0].flows
    );
    let _ = writeln!(
        s,
        "| datapath | suite | workers | batch | ring | busy poll | offered Mpps | delivered Mpps | Mpps/core | CPU busy |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|---:|---:|---:|---:|");
    for p in &r.scaling {
        let t = &p.tuning;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} ±{:.0}% | {:.3} | {} |",
            p.datapath,
            t.suite.name(),
            t.workers,
            t.batch,
            if p.datapath == "raw" {
                "-".into()
            } else {
                t.ring.to_string()
            },
            if t.busy_poll { "yes" } else { "no" },
            p.point.offered_pps.median / 1e6,
            p.point.delivered_pps.median / 1e6,
            p.point.delivered_pps.spread_pct(),
            p.mpps_per_core(),
            cpu_text(&p.point.cpu_busy())
        );
    }
    if let Some(proj) = projection(r) {
        let _ = writeln!(s, "\n{proj}");
    }
    s
}

/// Mpps with N cores: measured per-core rate × N, bounded by the compute-only rate the
/// per-packet cost allows; as text.
pub fn projection(r: &Results) -> Option<String> {
    let one = r.scaling.iter().find(|p| {
        p.datapath == "ntma"
            && p.tuning.workers == 1
            && p.tuning == crate::gateways::tunnel::Tuning::default()
    })?;
    let per_core = one.mpps_per_core();
    let two = r
        .scaling
        .iter()
        .find(|p| p.datapath == "ntma" && p.tuning.workers == 2)
        .map(|p| p.point.delivered_pps.median / 1e6);
    let uplink = r
        .cost
        .iter()
        .find(|c| c.op == "fastpath/uplink" && c.size == Some(64) && c.tunnels == Some(1));
    let mut s = String::new();
    let _ = writeln!(s, "Projection for ntma (gn → cn, 64 B):\n");
    let _ = writeln!(
        s,
        "| cores | measured Mpps | linear from 1 core | compute-only bound |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    for n in [1usize, 2, 4, 8] {
        let measured = match n {
            1 => format!("{per_core:.3}"),
            2 => two.map_or("-".into(), |v| format!("{v:.3}")),
            _ => "-".into(),
        };
        let bound = uplink.map_or("-".into(), |c| format!("{:.2}", c.mpps() * n as f64));
        let _ = writeln!(
            s,
            "| {n} | {measured} | {:.3} | {bound} |",
            per_core * n as f64
        );
    }
    if let (Some(two), Some(_)) = (two, uplink) {
        let eff = two / (2.0 * per_core) * 100.0;
        let _ = writeln!(
            s,
            "\nWith 2 workers the measured rate is {eff:.0}% of twice the 1-worker rate; on this \
             2-core machine the second worker shares a core with the traffic source."
        );
    }
    Some(s)
}

/// Writes the JSON under `dir` (`results-<unix>.json` and `latest.json`); returns the
/// paths.
pub fn write_json(r: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    write_json_as(r, dir, "results", r.started_unix, "latest.json")
}

/// Writes `r` as `<stem>-<unix>.json` and `latest` under `dir`; returns the paths.
pub(crate) fn write_json_as<T: serde::Serialize>(
    r: &T,
    dir: &Path,
    stem: &str,
    unix: u64,
    latest: &str,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(r).context("serializing the results")?;
    let mut out = Vec::new();
    for name in [format!("{stem}-{unix}.json"), latest.to_owned()] {
        let p = dir.join(name);
        std::fs::write(&p, &text).with_context(|| format!("writing {}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}

pub(crate) const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn datapaths(r: &Results) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for p in &r.throughput {
        if !v.contains(&p.datapath) {
            v.push(p.datapath.clone());
        }
    }
    v
}

pub(crate) fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Delivered Mpps against packet size, one line per datapath, for `dir`.
pub fn plot_throughput(r: &Results, dir: Direction, path: &Path) -> Result<()> {
    let names = datapaths(r);
    let pts: Vec<_> = r.throughput.iter().filter(|p| p.direction == dir).collect();
    let ymax = pts
        .iter()
        .map(|p| p.delivered_pps.max.max(p.offered_pps.median) / 1e6)
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.15;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Delivered load, {} (inner packet size)", dir.as_str()),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1500f64, 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("inner IPv4 packet, bytes")
        .y_desc("delivered Mpps")
        .draw()
        .map_err(plot_err)?;
    for (i, name) in names.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut line: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| &p.datapath == name)
            .map(|p| (p.size as f64, p.delivered_pps.median / 1e6))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        if line.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                line.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(plot_err)?;
        // The spread of the runs as a vertical bar at each size.
        chart
            .draw_series(pts.iter().filter(|p| &p.datapath == name).map(|p| {
                PathElement::new(
                    vec![
                        (p.size as f64, p.delivered_pps.min / 1e6),
                        (p.size as f64, p.delivered_pps.max / 1e6),
                    ],
                    color.stroke_width(1),
                )
            }))
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

/// RTT p50 and p99 per datapath.
pub fn plot_latency(r: &Results, path: &Path) -> Result<()> {
    let rows: Vec<_> = r
        .latency
        .iter()
        .filter_map(|l| l.rtt.map(|x| (l.datapath.clone(), x)))
        .collect();
    let ymax = rows
        .iter()
        .map(|(_, x)| x.p99_us)
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let n = rows.len().max(1);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Round-trip time gn ⇄ cn (p50 bar, p99 mark)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
        .map_err(plot_err)?;
    let labels: Vec<String> = rows.iter().map(|(d, _)| d.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("RTT, µs")
        .draw()
        .map_err(plot_err)?;
    for (i, (_, x)) in rows.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let xi = i as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(xi - 0.3, 0.0), (xi + 0.3, x.p50_us)],
                c.filled(),
            )))
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(xi - 0.3, x.p99_us), (xi + 0.3, x.p99_us)],
                BLACK.stroke_width(3),
            )))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Writes every plot under `dir`; returns the paths.
pub fn write_plots(r: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for (d, name) in [
        (Direction::Up, "throughput-up.svg"),
        (Direction::Down, "throughput-down.svg"),
    ] {
        let p = dir.join(name);
        plot_throughput(r, d, &p)?;
        out.push(p);
    }
    if r.latency.iter().any(|l| l.rtt.is_some()) {
        let p = dir.join("latency.svg");
        plot_latency(r, &p)?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Sample;
    use crate::latency::Rtt;
    use crate::run::{LatencyPoint, Point};
    use crate::stats::Summary;

    fn results() -> Results {
        let point = |d: &str, dir, size, del: f64| Point {
            datapath: d.into(),
            direction: dir,
            size,
            samples: vec![Sample {
                offered_pps: 2e5,
                delivered_pps: del,
                cpu_busy: vec![1.0, 0.5],
                ..Sample::default()
            }],
            offered_pps: Summary::of(&[2e5]).unwrap(),
            delivered_pps: Summary::of(&[del * 0.9, del, del * 1.1]).unwrap(),
        };
        Results {
            host: "test".into(),
            throughput: vec![
                point("kernel", Direction::Up, 64, 1.5e5),
                point("kernel", Direction::Up, 1400, 1.2e5),
                point("ntma", Direction::Up, 64, 1e5),
                point("ntma", Direction::Down, 64, 0.9e5),
            ],
            latency: vec![
                LatencyPoint {
                    datapath: "kernel".into(),
                    rtt: Some(Rtt {
                        sent: 10,
                        answered: 10,
                        p50_us: 40.0,
                        p99_us: 90.0,
                        min_us: 30.0,
                    }),
                },
                LatencyPoint {
                    datapath: "raw".into(),
                    rtt: None,
                },
            ],
            ..Results::default()
        }
    }

    #[test]
    fn tables_show_every_point_and_the_loss() {
        let t = tables(&results());
        assert!(
            t.contains("| kernel | gn→cn | 64 | 0.200 | 0.150 ±10% | 77 | 25.0% | 100/50% | - |"),
            "{t}"
        );
        assert!(t.contains("| raw | - | - | - | 0 |"), "{t}");
        assert!(t.contains("no criterion results"), "{t}");
    }

    #[test]
    fn plots_and_json_are_written() {
        let dir = std::env::temp_dir().join(format!("perf-report-{}", std::process::id()));
        let r = results();
        let plots = write_plots(&r, &dir).unwrap();
        assert_eq!(plots.len(), 3);
        let svg = std::fs::read_to_string(&plots[0]).unwrap();
        assert!(svg.contains("<svg") && svg.contains("kernel"), "{svg}");
        let json = write_json(&r, &dir).unwrap();
        let back: Results =
            serde_json::from_str(&std::fs::read_to_string(&json[1]).unwrap()).unwrap();
        assert_eq!(back.throughput.len(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
