//! ntm-bench: ntma's datapaths against the machine's limit, the paper's method and the
//! alternatives, on the same testbed path (see perf/README.md). Run by `cargo xtask bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use perf::bench::Timing;
use perf::report;
use perf::run::{self, Kind, Plan, Progress, Results};

#[derive(Parser)]
#[command(
    name = "ntm-bench",
    version,
    about = "ntma benchmarks on the netns testbed (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the tables and redraw the plots of a results file.
    Report {
        /// A JSON file written by a run.
        json: PathBuf,
        /// Where to put the plots (default: beside the file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Each datapath alone on a reduced topology (src ─ dut ─ dst): zero-loss rate,
    /// CPU per packet, where frames are lost; the XDP classifier alone.
    Dp(DpArgs),
}

#[derive(clap::Args)]
struct DpArgs {
    /// Namespace prefix (namespaces of its own, removed at the end).
    #[arg(long, default_value = "dp-")]
    prefix: String,
    /// Datapaths, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = perf::dp::dut::DpKind::ALL)]
    datapaths: Vec<perf::dp::dut::DpKind>,
    /// Inner IPv4 packet sizes, bytes (default 64,512,1400; --quick: 64).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// criterion's output directory: the compute bound against the targets and
    /// the paper's figures come from its `fastpath` and `gn` results.
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// Trials per point, the first at the generator's full rate (default 7; --quick: 3).
    #[arg(long)]
    steps: Option<usize>,
    /// Searches of ntma, ntma-s1 and l2fwd at 64 and 1400 B, one datapath after the
    /// other in turn; the targets' table compares their medians (default 3; --quick: 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Window of each trial, ms (default 500; --quick: 300).
    #[arg(long)]
    window_ms: Option<u64>,
    /// Loss share still counted as none (default 0: strictly zero).
    #[arg(long, default_value_t = 0.0)]
    loss_tolerance: f64,
    /// Leave out the classifier's BPF_PROG_TEST_RUN.
    #[arg(long)]
    no_classify: bool,
    /// Where the JSON and the plots go.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// A smoke run: 64 B, 3 short trials per point.
    #[arg(long)]
    quick: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Testbed prefix (a testbed of its own, removed at the end).
    #[arg(long, default_value = "bench-")]
    prefix: String,
    /// Datapaths to compare, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Kind::ALL)]
    datapaths: Vec<Kind>,
    /// Inner IPv4 packet sizes, bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 512, 1400])]
    sizes: Vec<usize>,
    /// Runs per point.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Measured window per run, ms.
    #[arg(long, default_value_t = 2000)]
    window_ms: u64,
    /// Traffic before each window, ms.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Ping-pong rounds per datapath (0: no latency).
    #[arg(long, default_value_t = 1000)]
    latency_rounds: usize,
    /// Leave out the scaling and tuning runs.
    #[arg(long)]
    no_scaling: bool,
    /// criterion's output directory, for the per-packet cost table.
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// Where the JSON and the plots go.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// One short run per point, no scaling (a smoke run of the harness).
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::Report { json, out }) => report_only(&json, out),
        Some(Cmd::Dp(a)) => dp(a),
        None => bench(cli.run),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report_only(json: &PathBuf, out: Option<PathBuf>) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let r: Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    print!("{}", report::tables(&r));
    let dir = out.unwrap_or_else(|| json.parent().map(PathBuf::from).unwrap_or_default());
    for p in report::write_plots(&r, &dir)? {
        eprintln!("plot: {}", p.display());
    }
    Ok(())
}

fn dp(a: DpArgs) -> Result<()> {
    use perf::dp::{self, DpPlan};
    let mut plan = if a.quick {
        DpPlan::quick(&a.prefix)
    } else {
        DpPlan::full(&a.prefix)
    };
    plan.datapaths = a.datapaths;
    if let Some(s) = a.sizes {
        plan.sizes = s;
    }
    if let Some(s) = a.steps {
        plan.steps = s.max(1);
    }
    if let Some(n) = a.rounds {
        plan.rounds = n.max(1);
    }
    if let Some(w) = a.window_ms {
        plan.trial.window = Duration::from_millis(w.max(10));
    }
    plan.trial.loss_tolerance = a.loss_tolerance;
    if a.no_classify {
        plan.classify_repeat = 0;
    }
    let mut r = dp::run(&plan)?;
    if let Some(dir) = &a.criterion {
        r.costs = perf::cost::read(dir, &dp::COST_PREFIXES);
    }
    print!("{}", dp::report::tables(&r));
    for p in dp::report::write_json(&r, &a.out)? {
        eprintln!("results: {}", p.display());
    }
    for p in dp::report::write_plots(&r, &a.out)? {
        eprintln!("plot: {}", p.display());
    }
    Ok(())
}

fn host() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} CPUs, Linux {}, load {}",
        perf::net::cpus(),
        kernel.trim(),
        loadavg()
    )
}

/// The 1-minute load average: other work on the machine skews every number.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn bench(a: RunArgs) -> Result<()> {
    ntm_testbed::require_root().context("ntm-bench builds network namespaces")?;
    let started = Instant::now();
    let mut timing = Timing {
        warmup: Duration::from_millis(a.warmup_ms),
        window: Duration::from_millis(a.window_ms),
        reps: a.reps.max(1),
        ..Timing::default()
    };
    if perf::net::cpus() < 2 {
        // One CPU: source and datapath share it anyway.
        timing.source_cpu = None;
    }
    let mut plan = Plan {
        prefix: a.prefix,
        datapaths: a.datapaths,
        sizes: a.sizes,
        timing,
        latency_rounds: a.latency_rounds,
        scaling: !a.no_scaling,
    };
    if a.quick {
        plan.timing.reps = 1;
        plan.timing.window = Duration::from_millis(1000);
        plan.timing.warmup = Duration::from_millis(300);
        plan.latency_rounds = plan.latency_rounds.min(200);
        plan.scaling = false;
    }
    let mut results = Results {
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host: host(),
        timing: Some(plan.timing.clone()),
        ..Results::default()
    };
    if let Some(dir) = &a.criterion {
        results.cost = perf::cost::read(dir, &["proto/", "fastpath/uplink", "fastpath/downlink"]);
        eprintln!(
            "per-packet cost: {} criterion results from {}",
            results.cost.len(),
            dir.display()
        );
    }
    let mut progress = Progress::new(run::steps(&plan));
    eprintln!(
        "ntm-bench: {} datapaths × 2 directions × {} sizes × {} runs of {:.1} s{}",
        plan.datapaths.len(),
        plan.sizes.len(),
        plan.timing.reps,
        plan.timing.window.as_secs_f64(),
        if plan.scaling {
            ", then scaling and tuning"
        } else {
            ""
        }
    );
    run::comparison(&plan, &mut progress, &mut results)?;
    if plan.scaling {
        run::scaling(&plan, &mut progress, &mut results)?;
    }
    results.seconds = started.elapsed().as_secs_f64();
    results.host = format!("{} at the start, {} at the end", results.host, loadavg());
    print!("{}", report::tables(&results));
    for p in report::write_json(&results, &a.out)? {
        eprintln!("results: {}", p.display());
    }
    for p in report::write_plots(&results, &a.out)? {
        eprintln!("plot: {}", p.display());
    }
    Ok(())
}
