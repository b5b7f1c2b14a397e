//! One benchmark run: every datapath on the same path, throughput per direction and
//! packet size (repeated), latency, then scaling and tuning of ntma's datapaths; with a
//! progress line on stderr per measurement.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::Result;
use ntm_testbed::Role;
use serde::{Deserialize, Serialize};

use crate::bench::{Bench, Direction, Flow, Sample, Timing, GN_ADDR};
use crate::gateways::node::NodeGateway;
use crate::gateways::plain::{Mode, Plain};
use crate::gateways::tunnel::{Tuning, TunnelSuite, Tunneled};
use crate::gateways::wg::{Impl, WireGuard};
use crate::gateways::Gateway;
use crate::latency::{ping_pong, Rtt};
use crate::stats::{mbps, Summary};

/// A datapath of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Kind {
    /// Linux IP forwarding, no encapsulation.
    Kernel,
    /// Linux IP forwarding with RPS to CPU 1.
    KernelRps,
    /// XDP redirect NIC to NIC, no encapsulation.
    XdpFwd,
    /// ntma's raw-socket datapath (the paper's method).
    Raw,
    /// ntma's AF_XDP datapath.
    Ntma,
    /// The software node (TUN + UDP) as a gateway.
    NtmNode,
    /// wireguard-go as a gateway, peer in cn.
    WireguardGo,
    /// boringtun-cli as a gateway, peer in cn.
    Boringtun,
}

impl Kind {
    /// Every datapath, in table order.
    pub const ALL: [Kind; 8] = [
        Kind::Kernel,
        Kind::KernelRps,
        Kind::XdpFwd,
        Kind::Raw,
        Kind::Ntma,
        Kind::NtmNode,
        Kind::WireguardGo,
        Kind::Boringtun,
    ];

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::KernelRps => "kernel-rps",
            Kind::XdpFwd => "xdp-fwd",
            Kind::Raw => "raw",
            Kind::Ntma => "ntma",
            Kind::NtmNode => "ntm-node",
            Kind::WireguardGo => "wireguard-go",
            Kind::Boringtun => "boringtun",
        }
    }

    /// Whether it encapsulates (and the sink verifies samples).
    pub fn tunnels(self) -> bool {
        !matches!(self, Kind::Kernel | Kind::KernelRps | Kind::XdpFwd)
    }

    fn start(self, bench: &Bench) -> Result<Box<dyn Gateway>> {
        Ok(match self {
            Kind::Kernel => Box::new(Plain::start(bench, Mode::Kernel)?),
            Kind::KernelRps => Box::new(Plain::start(bench, Mode::KernelRps)?),
            Kind::XdpFwd => Box::new(Plain::start(bench, Mode::Xdp)?),
            Kind::Raw => Box::new(Tunneled::raw(bench, Tuning::default())?),
            Kind::Ntma => Box::new(Tunneled::afxdp(bench, Tuning::default())?),
            Kind::NtmNode => Box::new(NodeGateway::start(bench)?),
            Kind::WireguardGo => Box::new(WireGuard::start(bench, Impl::Go)?),
            Kind::Boringtun => Box::new(WireGuard::start(bench, Impl::Boringtun)?),
        })
    }
}

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Testbed prefix.
    pub prefix: String,
    /// Datapaths, in order.
    pub datapaths: Vec<Kind>,
    /// Inner IPv4 packet sizes.
    pub sizes: Vec<usize>,
    /// Timing of each point.
    pub timing: Timing,
    /// Ping-pong rounds per datapath (0: no latency).
    pub latency_rounds: usize,
    /// Scaling and tuning runs.
    pub scaling: bool,
}

/// Throughput of one (datapath, direction, size).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    /// Datapath name.
    pub datapath: String,
    /// Direction.
    pub direction: Direction,
    /// Inner IPv4 packet size.
    pub size: usize,
    /// Every run.
    pub samples: Vec<Sample>,
    /// Offered packets per second.
    pub offered_pps: Summary,
    /// Delivered packets per second.
    pub delivered_pps: Summary,
}

impl Point {
    /// Delivered Mbit/s of inner packets (median).
    pub fn delivered_mbps(&self) -> f64 {
        mbps(self.delivered_pps.median, self.size)
    }

    /// Share of the offered load not delivered (medians), 0..1.
    pub fn loss(&self) -> f64 {
        if self.offered_pps.median > 0.0 {
            (1.0 - self.delivered_pps.median / self.offered_pps.median).max(0.0)
        } else {
            0.0
        }
    }

    /// Median busy share of each CPU over the runs (0..1).
    pub fn cpu_busy(&self) -> Vec<f64> {
        let n = self
            .samples
            .iter()
            .map(|s| s.cpu_busy.len())
            .max()
            .unwrap_or(0);
        (0..n)
            .map(|i| {
                let v: Vec<f64> = self
                    .samples
                    .iter()
                    .filter_map(|s| s.cpu_busy.get(i).copied())
                    .collect();
                Summary::of(&v).map_or(0.0, |x| x.median)
            })
            .collect()
    }

    /// Samples checked good and bad over all runs.
    pub fn checked(&self) -> (u64, u64) {
        self.samples
            .iter()
            .fold((0, 0), |(g, b), s| (g + s.checked.ok, b + s.checked.bad))
    }
}

/// Latency of one datapath.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyPoint {
    /// Datapath name.
    pub datapath: String,
    /// The RTTs, if any request was answered.
    pub rtt: Option<Rtt>,
}

/// One tuning variant of ntma's datapaths.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScalePoint {
    /// `ntma` or `raw`.
    pub datapath: String,
    /// The tuning.
    pub tuning: Tuning,
    /// UDP flows of the source.
    pub flows: u16,
    /// The measurement (gn → cn).
    pub point: Point,
}

impl ScalePoint {
    /// Delivered Mpps per worker core.
    pub fn mpps_per_core(&self) -> f64 {
        let cores = {
            let mut c = self.tuning.cores.clone();
            c.truncate(self.tuning.workers as usize);
            c.sort_unstable();
            c.dedup();
            c.len().max(1)
        };
        self.point.delivered_pps.median / 1e6 / cores as f64
    }
}

/// Why a datapath or a part of it is missing from the results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Skipped {
    /// Datapath name.
    pub datapath: String,
    /// Which part.
    pub what: String,
    /// The error.
    pub why: String,
}

/// Everything a run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// Unix time of the start, seconds.
    pub started_unix: u64,
    /// Seconds the run took.
    pub seconds: f64,
    /// CPUs and kernel.
    pub host: String,
    /// Timing of every point.
    pub timing: Option<Timing>,
    /// Throughput points.
    pub throughput: Vec<Point>,
    /// Latency per datapath.
    pub latency: Vec<LatencyPoint>,
    /// Scaling and tuning.
    pub scaling: Vec<ScalePoint>,
    /// Per-packet cost (criterion).
    pub cost: Vec<crate::cost::Cost>,
    /// What could not run.
    pub skipped: Vec<Skipped>,
    /// Counters each datapath reported after its runs.
    pub notes: Vec<(String, String)>,
}

impl Results {
    /// Records that `what` of `datapath` could not run, and why.
    fn skip(&mut self, datapath: &str, what: String, why: &anyhow::Error) {
        self.skipped.push(Skipped {
            datapath: datapath.into(),
            what,
            why: chain(why),
        });
    }
}

/// Progress on stderr: one line per measurement, with an estimate of the time left.
pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
}

impl Progress {
    /// A display for `total` steps.
    pub fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// One step done; prints `msg`.
    pub fn step(&mut self, msg: &str) {
        self.done += 1;
        let el = self.started.elapsed().as_secs_f64();
        let left = if self.done < self.total {
            let per = el / self.done as f64;
            format!(
                ", ~{} left",
                fmt_secs(per * (self.total - self.done) as f64)
            )
        } else {
            String::new()
        };
        eprintln!(
            "[{:>3}/{}] {msg} ({}{left})",
            self.done.min(self.total),
            self.total,
            fmt_secs(el)
        );
    }

    /// A line without a step.
    pub fn note(&self, msg: &str) {
        eprintln!("        {msg}");
    }

    /// Steps left undone (skipped datapaths) count as done.
    pub fn skip(&mut self, n: usize) {
        self.done += n;
    }
}

/// `75 s` or `3m05s`.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s < 100 {
        format!("{s} s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The scaling variants: (datapath, tuning, queues of the testbed).
pub fn scaling_variants(cpus: usize) -> Vec<(Kind, Tuning, u16)> {
    let base = Tuning::default();
    let mut v = vec![(Kind::Ntma, base.clone(), 1)];
    if cpus >= 2 {
        v.push((
            Kind::Ntma,
            Tuning {
                workers: 2,
                cores: vec![1, 0],
                ..base.clone()
            },
            2,
        ));
    }
    for batch in [16, 256] {
        v.push((
            Kind::Ntma,
            Tuning {
                batch,
                ..base.clone()
            },
            1,
        ));
    }
    for ring in [512, 8192] {
        v.push((
            Kind::Ntma,
            Tuning {
                ring,
                ..base.clone()
            },
            1,
        ));
    }
    v.push((
        Kind::Ntma,
        Tuning {
            busy_poll: true,
            ..base.clone()
        },
        1,
    ));
    // Authentication only (suite 1) against the default AES-256-GCM.
    v.push((
        Kind::Ntma,
        Tuning {
            suite: TunnelSuite::HmacSha256128,
            ..base.clone()
        },
        1,
    ));
    for batch in [1, 16, 64] {
        v.push((
            Kind::Raw,
            Tuning {
                batch,
                ..base.clone()
            },
            1,
        ));
    }
    v
}

/// Flows of the scaling runs: enough distinct 5-tuples for the veth to spread them
/// over two queues.
pub const SCALING_FLOWS: u16 = 8;
/// Packet size of the scaling runs: the smallest, where per-packet cost dominates.
pub const SCALING_SIZE: usize = 64;

/// Number of progress steps of `plan`.
pub fn steps(plan: &Plan) -> usize {
    let per_dp = 2 * plan.sizes.len() * plan.timing.reps + usize::from(plan.latency_rounds > 0);
    let scaling = if plan.scaling {
        scaling_variants(crate::net::cpus()).len() * plan.timing.reps
    } else {
        0
    };
    plan.datapaths.len() * per_dp + scaling
}

fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// One point to measure: which flow, direction, size, how many source flows, and the
/// names it is shown under.
struct Case<'a> {
    name: &'a str,
    label: &'a str,
    flow: &'a Flow,
    dir: Direction,
    size: usize,
    flows: u16,
}

/// Measures one point `reps` times.
fn point(bench: &mut Bench, c: &Case<'_>, progress: &mut Progress) -> Result<Point> {
    let Case {
        name,
        label,
        flow,
        dir,
        size,
        flows,
    } = *c;
    let reps = bench.timing.reps;
    let mut samples = Vec::with_capacity(reps);
    for rep in 1..=reps {
        let s = bench.measure(flow, size, flows)?;
        progress.step(&format!(
            "{label} {} {size} B run {rep}/{reps}: offered {:.3} Mpps, delivered {:.3} Mpps, CPU {}{}",
            dir.as_str(),
            s.offered_pps / 1e6,
            s.delivered_pps / 1e6,
            crate::report::cpu_text(&s.cpu_busy),
            if s.sampled > 0 || s.checked.ok + s.checked.bad > 0 {
                format!(", checked {}/{} samples", s.checked.ok, s.sampled)
            } else {
                String::new()
            }
        ));
        samples.push(s);
    }
    let off: Vec<f64> = samples.iter().map(|s| s.offered_pps).collect();
    let del: Vec<f64> = samples.iter().map(|s| s.delivered_pps).collect();
    Ok(Point {
        datapath: name.to_owned(),
        direction: dir,
        size,
        offered_pps: Summary::of(&off).unwrap_or(Summary {
            median: 0.0,
            min: 0.0,
            max: 0.0,
            n: 0,
        }),
        delivered_pps: Summary::of(&del).unwrap_or(Summary {
            median: 0.0,
            min: 0.0,
            max: 0.0,
            n: 0,
        }),
        samples,
    })
}

/// Runs the comparison part of `plan` on one testbed.
pub fn comparison(plan: &Plan, progress: &mut Progress, results: &mut Results) -> Result<()> {
    let mut bench = Bench::up(&plan.prefix, 1, plan.timing.clone())?;
    let per_dp = 2 * plan.sizes.len() * plan.timing.reps + usize::from(plan.latency_rounds > 0);
    for kind in &plan.datapaths {
        let name = kind.name();
        let mut gw = match kind.start(&bench) {
            Ok(g) => g,
            Err(e) => {
                progress.note(&format!("{name}: left out: {}", chain(&e)));
                results.skip(name, "everything".into(), &e);
                progress.skip(per_dp);
                continue;
            }
        };
        for dir in Direction::BOTH {
            throughput(
                plan,
                &mut bench,
                (name, gw.as_mut()),
                dir,
                progress,
                results,
            );
        }
        if plan.latency_rounds > 0 {
            latency(plan, &bench, (name, gw.as_mut()), progress, results);
        }
        if let Some(n) = gw.notes() {
            progress.note(&format!("{name}: {n}"));
            results.notes.push((name.into(), n));
        }
    }
    Ok(())
}

/// The throughput points of datapath `name` in direction `dir`, one per
/// size.
fn throughput(
    plan: &Plan,
    bench: &mut Bench,
    (name, gw): (&str, &mut dyn Gateway),
    dir: Direction,
    progress: &mut Progress,
    results: &mut Results,
) {
    let flow = match gw.flow(bench, dir) {
        Ok(f) => f,
        Err(e) => {
            progress.note(&format!("{name} {}: left out: {}", dir.as_str(), chain(&e)));
            results.skip(name, format!("{} throughput", dir.as_str()), &e);
            progress.skip(plan.sizes.len() * plan.timing.reps);
            return;
        }
    };
    for &size in &plan.sizes {
        let case = Case {
            name,
            label: name,
            flow: &flow,
            dir,
            size,
            flows: 1,
        };
        match point(bench, &case, progress) {
            Ok(p) => results.throughput.push(p),
            Err(e) => results.skip(name, format!("{} {size} B", dir.as_str()), &e),
        }
    }
}

/// The ping-pong latency through datapath `name`.
fn latency(
    plan: &Plan,
    bench: &Bench,
    (name, gw): (&str, &mut dyn Gateway),
    progress: &mut Progress,
    results: &mut Results,
) {
    let rtt = gw.echo(bench).and_then(|echo| {
        ping_pong(
            &bench.tb.ns(Role::Gn),
            &bench.tb.ns(Role::Cn),
            SocketAddrV4::new(GN_ADDR, 5001),
            &echo,
            plan.latency_rounds,
            Duration::from_millis(1),
            Duration::from_millis(200),
        )
    });
    match rtt {
        Ok(rtt) => {
            progress.step(&match &rtt {
                Some(r) => format!(
                    "{name} latency: p50 {:.0} µs, p99 {:.0} µs ({}/{} answered)",
                    r.p50_us, r.p99_us, r.answered, r.sent
                ),
                None => format!("{name} latency: no answer"),
            });
            results.latency.push(LatencyPoint {
                datapath: name.into(),
                rtt,
            });
        }
        Err(e) => {
            progress.step(&format!("{name} latency: left out: {}", chain(&e)));
            results.skip(name, "latency".into(), &e);
        }
    }
}

/// Runs the scaling and tuning variants, each on a testbed with the queues it needs.
pub fn scaling(plan: &Plan, progress: &mut Progress, results: &mut Results) -> Result<()> {
    let variants = scaling_variants(crate::net::cpus());
    let mut bench: Option<(u16, Bench)> = None;
    for (kind, tuning, queues) in variants {
        if bench.as_ref().is_none_or(|(q, _)| *q != queues) {
            // One testbed at a time: the old one goes before the new one comes.
            drop(bench.take());
            bench = Some((
                queues,
                Bench::up(&plan.prefix, queues, plan.timing.clone())?,
            ));
        }
        let (_, b) = bench.as_mut().expect("just made");
        let label = format!("{} {}", kind.name(), tuning.label());
        let run = |b: &mut Bench, progress: &mut Progress| -> Result<(Point, Option<String>)> {
            let mut gw = match kind {
                Kind::Raw => Tunneled::raw(b, tuning.clone())?,
                _ => Tunneled::afxdp(b, tuning.clone())?,
            };
            let flow = gw.flow(b, Direction::Up)?;
            let case = Case {
                name: kind.name(),
                label: &label,
                flow: &flow,
                dir: Direction::Up,
                size: SCALING_SIZE,
                flows: SCALING_FLOWS,
            };
            let p = point(b, &case, progress)?;
            Ok((p, gw.notes()))
        };
        match run(b, progress) {
            Ok((point, notes)) => {
                if let Some(n) = notes {
                    progress.note(&format!("{label}: {n}"));
                }
                results.scaling.push(ScalePoint {
                    datapath: kind.name().into(),
                    tuning,
                    flows: SCALING_FLOWS,
                    point,
                });
            }
            Err(e) => {
                progress.note(&format!("{label}: left out: {}", chain(&e)));
                results.skip(kind.name(), format!("scaling {label}"), &e);
                progress.skip(plan.timing.reps);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_short() {
        assert_eq!(fmt_secs(5.4), "5 s");
        assert_eq!(fmt_secs(185.0), "3m05s");
        assert_eq!(fmt_secs(-1.0), "0 s");
    }

    #[test]
    fn steps_count_every_run() {
        let plan = Plan {
            prefix: "b-".into(),
            datapaths: vec![Kind::Kernel, Kind::Ntma],
            sizes: vec![64, 1400],
            timing: Timing {
                reps: 3,
                ..Timing::default()
            },
            latency_rounds: 100,
            scaling: false,
        };
        assert_eq!(steps(&plan), 2 * (2 * 2 * 3 + 1));
    }

    #[test]
    fn scaling_covers_workers_batches_rings_and_the_paper() {
        let v = scaling_variants(2);
        assert!(v
            .iter()
            .any(|(k, t, q)| *k == Kind::Ntma && t.workers == 2 && *q == 2));
        assert!(v.iter().any(|(k, t, _)| *k == Kind::Raw && t.batch == 1));
        assert!(v.iter().any(|(_, t, _)| t.ring == 512));
        // Suite 2 by default, and suite 1 once for comparison.
        assert_eq!(Tuning::default().suite, TunnelSuite::Aes256Gcm);
        assert_eq!(
            v.iter()
                .filter(|(_, t, _)| t.suite == TunnelSuite::HmacSha256128)
                .count(),
            1
        );
        assert!(!scaling_variants(1).iter().any(|(_, t, _)| t.workers == 2));
    }

    #[test]
    fn per_core_rate_counts_distinct_cores() {
        let p = Point {
            datapath: "ntma".into(),
            direction: Direction::Up,
            size: 64,
            samples: vec![],
            offered_pps: Summary::of(&[2e6]).unwrap(),
            delivered_pps: Summary::of(&[1e6]).unwrap(),
        };
        let s = ScalePoint {
            datapath: "ntma".into(),
            tuning: Tuning {
                workers: 2,
                cores: vec![1, 0],
                ..Tuning::default()
            },
            flows: 8,
            point: p.clone(),
        };
        assert_eq!(s.mpps_per_core(), 0.5);
        assert!((p.loss() - 0.5).abs() < 1e-9);
        assert_eq!(p.delivered_mbps(), 512.0);
    }
}
