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
