//! `ntm-bench dp`: each datapath measured on its own on a reduced topology
//! (`src ─veth─ lan0 [dut] wan0 ─veth─ dst`, [`topo`]), with an AF_XDP generator
//! ([`xgen`]) at a target rate, counting XDP sinks at both ends, and a zero-loss binary
//! search per datapath × packet size × direction ([`measure`]). Per point it reports the
//! zero-loss rate, the worker's CPU time (and CPU 1's softirq time) per packet at that
//! rate, the mean burst, and where frames were lost above it; beside them, the cost of
//! ntma's XDP classifier alone ([`classify`]). See perf/README.md, "Datapath on a reduced
//! topology".

pub mod classify;
pub mod dut;
pub mod measure;
pub mod report;
pub mod topo;
pub mod xgen;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::bench::Direction;
use dut::{DpKind, Dut};
use measure::{Point, Search, TrialSettings};
use topo::Topo;

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpPlan {
    /// Namespace prefix.
    pub prefix: String,
    /// Datapaths, in order.
    pub datapaths: Vec<DpKind>,
    /// Inner IPv4 packet sizes.
    pub sizes: Vec<usize>,
    /// Directions.
    pub directions: Vec<Direction>,
    /// Trials per point (the first at the generator's full rate).
    pub steps: usize,
    /// Trial settings.
    pub trial: TrialSettings,
    /// Runs of the classifier per frame (0: not measured).
    pub classify_repeat: u32,
    /// Searches of each point of `round_datapaths` × `round_sizes`: the first in the
    /// main pass, the others after it, one datapath after the other in turn, so that
    /// the ratios of the targets (against `l2fwd`) compare medians of searches
    /// made over the same minutes rather than two single searches.
    #[serde(default = "one")]
    pub rounds: usize,
    /// The datapaths searched `rounds` times.
    #[serde(default)]
    pub round_datapaths: Vec<DpKind>,
    /// The sizes searched `rounds` times.
    #[serde(default)]
    pub round_sizes: Vec<usize>,
}

fn one() -> usize {
    1
}

impl DpPlan {
    /// The full plan: every datapath, 64/512/1400 B, both directions, 7 trials of
    /// 0.5 s; `ntma`, `ntma-s1` and `l2fwd` at 64 and 1400 B three times.
    pub fn full(prefix: &str) -> DpPlan {
        DpPlan {
            prefix: prefix.into(),
            datapaths: DpKind::ALL.to_vec(),
            sizes: vec![64, 512, 1400],
            directions: Direction::BOTH.to_vec(),
            steps: 7,
            trial: TrialSettings {
                window: Duration::from_millis(500),
                sample_every: 1024,
                batch: 64,
                gen_cpu: Some(0),
                pool_bytes: 1 << 30,
                loss_tolerance: 0.0,
            },
            classify_repeat: 10_000_000,
            rounds: 3,
            round_datapaths: vec![DpKind::Ntma, DpKind::NtmaS1, DpKind::L2fwd],
            round_sizes: vec![64, 1400],
        }
    }

    /// A smoke run: 64 B only, 3 trials of 0.3 s.
    pub fn quick(prefix: &str) -> DpPlan {
        let mut p = DpPlan::full(prefix);
        p.sizes = vec![64];
        p.steps = 3;
        p.trial.window = Duration::from_millis(300);
        p.trial.sample_every = 256;
        p.trial.pool_bytes = 1 << 27;
        p.classify_repeat = 1_000_000;
        p.rounds = 1;
        p
    }

    /// The points of round `round` (0: the main pass) of `kind`.
    fn round_points(&self, kind: DpKind, round: usize) -> Vec<(Direction, usize)> {
        let sizes: Vec<usize> = if round == 0 {
            self.sizes.clone()
        } else if self.round_datapaths.contains(&kind) {
            self.sizes
                .iter()
                .copied()
                .filter(|s| self.round_sizes.contains(s))
                .collect()
        } else {
            Vec::new()
        };
        self.directions
            .iter()
            .flat_map(|d| sizes.iter().map(move |s| (*d, *s)))
            .collect()
    }
}

/// The machine while it ran.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Conditions {
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// `/proc/loadavg` (1, 5, 15 min) at the start.
    pub load_start: Vec<f64>,
    /// ... and at the end.
    pub load_end: Vec<f64>,
    /// `/sys/devices/system/cpu/vulnerabilities/*`: (name, state).
    pub vulnerabilities: Vec<(String, String)>,
    /// Whether the kernel accounts IRQ time apart (`CONFIG_IRQ_TIME_ACCOUNTING`): without
    /// it, softirq time that runs in the worker's system calls is in its CPU time too, and
    /// `/proc/stat`'s softirq column is sampled at the tick.
    pub irq_time_accounting: Option<bool>,
    /// The unit of the AF_XDP workers' cycle counters, per second.
    pub cycles_per_second: u64,
}

/// The load average now.
pub fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

fn vulnerabilities() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let state = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        state.trim().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn irq_time_accounting() -> Option<bool> {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r)",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.is_empty() {
        return None;
    }
    Some(text.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
}

impl Conditions {
    /// The conditions now.
    pub fn now() -> Conditions {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Conditions {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
                .unwrap_or_default(),
            cpus: crate::net::cpus(),
            load_start: loadavg(),
            load_end: Vec::new(),
            vulnerabilities: vulnerabilities(),
            irq_time_accounting: irq_time_accounting(),
            cycles_per_second: ntma_user::fastpath::cycles_per_second(),
        }
    }
}

/// One (datapath, direction, size).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpPoint {
    /// Datapath name.
    pub datapath: String,
    /// Direction.
    pub direction: Direction,
    /// Inner IPv4 packet size.
    pub size: usize,
    /// The search.
    pub search: Search,
    /// Which of the plan's rounds (0: the main pass).
    #[serde(default)]
    pub round: usize,
}

/// Why something is missing from the results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpSkipped {
    /// Datapath (or `classifier`).
    pub datapath: String,
    /// Which part.
    pub what: String,
    /// The error.
    pub why: String,
}

/// Everything `ntm-bench dp` measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpResults {
    /// Unix time of the start.
    pub started_unix: u64,
    /// Seconds the run took.
    pub seconds: f64,
    /// The machine.
    pub conditions: Conditions,
    /// What ran.
    pub plan: DpPlan,
    /// The points.
    pub points: Vec<DpPoint>,
    /// The classifier alone.
    pub classifier: Vec<classify::Classified>,
    /// What could not run.
    pub skipped: Vec<DpSkipped>,
    /// The criterion results the compute-bound table uses (`--criterion`):
    /// `fastpath/burst`, `fastpath/seal`, the per-packet `fastpath/uplink` and
    /// `fastpath/downlink`, `gn/arp_reply`.
    #[serde(default)]
    pub costs: Vec<crate::cost::Cost>,
}

/// The criterion ids [`DpResults::costs`] keeps.
pub const COST_PREFIXES: [&str; 5] = [
    "fastpath/burst/",
    "fastpath/seal/",
    "fastpath/uplink/",
    "fastpath/downlink/",
    "gn/arp_reply",
];

impl DpResults {
    fn skip(&mut self, datapath: &str, what: String, e: &anyhow::Error) {
        eprintln!("        {datapath} {what}: left out: {e:#}");
        self.skipped.push(DpSkipped {
            datapath: datapath.into(),
            what,
            why: format!("{e:#}"),
        });
    }
}

/// One datapath's points of one round: (round, datapath, (direction, size)s).
type KindRun = (usize, DpKind, Vec<(Direction, usize)>);

/// Runs `plan`: the topology, every datapath in turn, the classifier; the topology is
/// removed at the end, also on error.
pub fn run(plan: &DpPlan) -> Result<DpResults> {
    ntm_testbed::require_root().context("ntm-bench dp builds network namespaces")?;
    let started = Instant::now();
    let mut r = DpResults {
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        seconds: 0.0,
        conditions: Conditions::now(),
        plan: plan.clone(),
        points: Vec::new(),
        classifier: Vec::new(),
        skipped: Vec::new(),
        costs: Vec::new(),
    };
    warn_load(&r.conditions.load_start);
    if plan.classify_repeat > 0 {
        match classify::run(plan.classify_repeat) {
            Ok(c) => r.classifier = c,
            Err(e) => r.skip("classifier", "BPF_PROG_TEST_RUN".into(), &e),
        }
    }
    let mut topo = Topo::up(&plan.prefix)?;
    let runs: Vec<KindRun> = (0..plan.rounds.max(1))
        .flat_map(|round| {
            plan.datapaths
                .iter()
                .map(move |&kind| (round, kind, plan.round_points(kind, round)))
        })
        .filter(|(_, _, points)| !points.is_empty())
        .collect();
    let total: usize = runs.iter().map(|(_, _, p)| p.len()).sum();
    let mut done = 0;
    for (round, kind, points) in runs {
        // The datapath checks that its worker's CPU is among this thread's.
        set_cpus(None)?;
        let dut = Dut::start(&topo, kind);
        // This thread and every thread it starts (generator, checkers) stay on CPU 0;
        // the worker pinned itself to CPU 1.
        set_cpus(plan.trial.gen_cpu)?;
        let dut = match dut {
            Ok(d) => d,
            Err(e) => {
                r.skip(kind.name(), format!("round {}", round + 1), &e);
                done += points.len();
                continue;
            }
        };
        for (dir, size) in points {
            done += 1;
            eprintln!(
                "[{done:>2}/{total}] {} {} {size} B, round {} ({:.0} s so far)",
                kind.name(),
                dir.as_str(),
                round + 1,
                started.elapsed().as_secs_f64()
            );
            match point(&mut topo, &dut, plan, (dir, size)) {
                Ok(p) => r.points.push(DpPoint { round, ..p }),
                Err(e) => r.skip(kind.name(), format!("{} {size} B", dir.as_str()), &e),
            }
        }
    }
    drop(topo);
    r.conditions.load_end = loadavg();
    warn_load(&r.conditions.load_end);
    r.seconds = started.elapsed().as_secs_f64();
    Ok(r)
}

/// Lets the calling thread run on `cpu` only, or on every CPU.
fn set_cpus(cpu: Option<usize>) -> Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    let cpus = match cpu {
        Some(c) => c..c + 1,
        // The kernel keeps the CPUs that exist.
        None => 0..CpuSet::count(),
    };
    for c in cpus {
        set.set(c).context("CPU set")?;
    }
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("setting this thread's CPUs to {cpu:?}"))
}

fn warn_load(load: &[f64]) {
    if let Some(l) = load.first().filter(|l| **l > 0.5) {
        eprintln!(
            "WARNING: the 1-minute load average is {l:.2} (> 0.5): other work on this machine \
             will show in every number of ntm-bench dp; run it on a quiet machine"
        );
    }
}

fn point(
    topo: &mut Topo,
    dut: &Dut,
    plan: &DpPlan,
    (dir, size): (Direction, usize),
) -> Result<DpPoint> {
    let flow = dut.flow(topo, dir, size)?;
    let mut p = Point::new(topo, dut, flow, &plan.trial);
    let search = measure::search(&mut p, plan.steps, |t| {
        eprintln!(
            "        {}: sent {:.3} Mpps, delivered {:.3} Mpps, lost {}{}",
            t.target_pps.map_or("full rate".to_owned(), |r| format!(
                "target {:.3} Mpps",
                r / 1e6
            )),
            t.gen.rate() / 1e6,
            t.delivered_pps() / 1e6,
            t.lost,
            t.main_place()
                .map(|(w, n)| format!(" (most at {w}: {n})"))
                .unwrap_or_default()
        );
    })?;
    Ok(DpPoint {
        datapath: dut.kind.name().into(),
        direction: dir,
        size,
        search,
        round: 0,
    })
}
