//! cargo xtask: setup, build, test, testbed, run, demo, bench, dist, fuzz and soak for ntma.
//!
//! `run` and `demo` build and start binaries of the workspace (`ntma`,
//! `ntm-demo`) rather than linking them: xtask has to compile on a fresh
//! machine before `setup` has installed what the adapter's eBPF build needs.
//!
//! Every command but `setup` runs `setup` first, so that a fresh clone needs nothing
//! installed by hand. `setup` is idempotent and returns in about a second when
//! everything is present.

mod bench_dc;
mod dist;
mod fuzz;
mod setup;
mod soak;
mod testbed;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for ntma", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (Debian packages, nightly rust-src, bpf-linker,
    /// bpffs); quick when all is present.
    Setup,
    /// Build the workspace (the XDP object included).
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Run the unit and integration tests of the whole workspace (needs root).
    Test {
        /// Extra arguments for `cargo test`, after `--` (e.g. `-- -p ntma-user`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build, remove or inspect the network-namespace testbed of docs/testbed.md.
    Testbed {
        #[command(subcommand)]
        action: testbed::Action,
    },
    /// Build the adapter (release) and run it on this machine's NICs, as root:
    /// `cargo xtask run -- --config ntma.toml` runs `ntma run --config ntma.toml`;
    /// other `ntma` commands go through as given (`cargo xtask run -- status`).
    Run {
        /// Arguments for `target/release/ntma`, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// The adapter's demo on the testbed (root): DHCP, DNS, ping and iperf3
    /// through the tunnel both ways, the GN as a responder, then a summary.
    Demo,
    /// Debian packages of ntma, ntm-dc, ntm-rs and ntm-node (release build, systemd
    /// units, example configurations, man pages) under <target>/debian, with cargo-deb.
    Dist {
        /// Then, as root: install them with dpkg, check the installed configurations
        /// and units (systemd-analyze verify), run the demo's topology on the installed
        /// binaries, and remove them again.
        #[arg(long)]
        check: bool,
    },
    /// The benchmarks (root): per-packet cost (criterion), then every datapath on the
    /// same testbed path (throughput, latency, scaling), then each datapath alone on a
    /// reduced topology (`ntm-bench dp`: zero-loss rate, CPU per packet); tables on
    /// stdout, JSON and SVG plots under perf/results/.
    Bench {
        /// `dc`: the Direction Coordinator's capacity instead (no root).
        #[command(subcommand)]
        what: Option<BenchWhat>,
        /// Extra arguments for `ntm-bench`, after `--` (e.g. `-- --quick`,
        /// `-- --datapaths ntma,raw`; `-- --help` lists them). `--no-dp` leaves out
        /// `ntm-bench dp`, `--dp-only` runs only it (`--quick` applies to both).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// The fuzz targets of fuzz/ (nightly, cargo-fuzz: installed if missing), each for
    /// `--time` seconds from its committed corpus; a table of executions, coverage and
    /// corpus size; fails on a crash, naming the reproducer under fuzz/artifacts/.
    Fuzz {
        /// Seconds per target (with --execs: the most a run may take).
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Run each target until fuzz/ledger.tsv counts this many executions
        /// for it in total, across runs (targets already there are skipped).
        #[arg(long)]
        execs: Option<u64>,
        /// Targets run side by side (one core each).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Build with AddressSanitizer (about 2.5x slower). The targets are
        /// safe Rust; ASan only adds checks on the few unsafe blocks they
        /// reach and on the C of libFuzzer itself.
        #[arg(long)]
        asan: bool,
        /// Targets to run (all when none is named).
        targets: Vec<String>,
    },
    /// The soak (root): N minutes of traffic through the adapter at the rate it
    /// carries without loss, with tunnels torn down and set up every few seconds,
    /// DNS queries, DHCP renewals and forged datagrams; samples the RSS and
    /// descriptors of ntma and the DC and ntma's UMEM frames in use every 10 s and
    /// fails if any grows after the warm-up; JSON under perf/results/.
    Soak {
        /// How long the load runs.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Extra arguments for `ntm-soak`, after `--` (`-- --help` lists them).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// ntm-dc on one core against a load generator on loopback: registrations,
    /// keep-alives and directions per second, direction latency and memory per
    /// node, on the redb and the memory store.
    Dc(bench_dc::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup::run(true, setup::Need::Bench),
        Cmd::Build { release } => {
            setup::run(false, setup::Need::Core)?;
            let mut c = cargo();
            c.arg("build");
            if release {
                c.arg("--release");
            }
            status(&mut c)
        }
        Cmd::Test { args } => test(args),
        Cmd::Testbed { action } => {
            setup::run(false, setup::Need::Core)?;
            testbed::run(action)
        }
        Cmd::Run { args } => run_ntma(args),
        Cmd::Demo => demo(),
        Cmd::Bench {
            what: Some(BenchWhat::Dc(a)),
            ..
        } => bench_dc::run(&a),
        Cmd::Bench { what: None, args } => bench(args),
        Cmd::Dist { check } => dist::run(check),
        Cmd::Fuzz {
            time,
            execs,
            jobs,
            asan,
            targets,
        } => fuzz::run(
            fuzz::Plan {
                time,
                execs,
                jobs,
                asan,
            },
            targets,
        ),
        Cmd::Soak { minutes, args } => soak::run(minutes, args),
    }
}

/// `cargo xtask bench`: setup, release build, the criterion benches of the per-packet
/// cost (short measurement times; left out with `--quick`), then `ntm-bench`.
fn bench(args: Vec<OsString>) -> Result<()> {
    if ntm_testbed::require_root().is_err() {
        bail!("the benchmarks need root (network namespaces, XDP, AF_XDP): run `sudo -E cargo xtask bench`");
    }
    setup::run(false, setup::Need::Bench)?;
    let started = Instant::now();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    // A smoke run, the help, a report of old results or the dp part alone need no fresh
    // criterion runs.
    let quick = args
        .iter()
        .any(|a| a == "--quick" || a == "--help" || a == "-h" || a == "report" || a == "--dp-only");
    let benches = build_release(!quick)?;
    let target = release_bin("ntm-bench");
    let criterion = target
        .parent()
        .and_then(|release| release.parent())
        .map(|t| t.join("criterion"))
        .unwrap_or_else(|| workspace_root().join("target/criterion"));
    for (exe, dir) in &benches {
        // Short criterion runs: enough for stable medians of a ~µs operation.
        // criterion's report goes to stderr: stdout is ntm-bench's table.
        let r = status(
            Command::new(exe)
                .current_dir(dir)
                .env("CRITERION_HOME", &criterion)
                .args([
                    "--bench",
                    "--warm-up-time",
                    "0.5",
                    "--measurement-time",
                    "1.5",
                ])
                .stdout(std::process::Stdio::from(std::io::stderr())),
        );
        if let Err(e) = r {
            eprintln!(
                "bench: per-packet cost of {} left out: {e:#}",
                exe.display()
            );
        }
    }
    let (no_dp, dp_only) = (has("--no-dp"), has("--dp-only"));
    let args: Vec<OsString> = args
        .into_iter()
        .filter(|a| a != "--no-dp" && a != "--dp-only")
        .collect();
    let mut r = Ok(());
    if !dp_only {
        let mut c = Command::new(&target);
        // Two runs per point: the zero-loss searches of `ntm-bench dp` below are the
        // datapath's figures now, and three runs would take `bench` past 20 minutes.
        let reps_given = args
            .iter()
            .any(|a| a == "--reps" || a.to_string_lossy().starts_with("--reps="));
        c.current_dir(workspace_root())
            .arg("--criterion")
            .arg(&criterion)
            .args(["--out", "perf/results"])
            .args(if reps_given {
                &[][..]
            } else {
                &["--reps", "2"][..]
            })
            .args(&args);
        r = status(&mut c);
    }
    // Each datapath alone on the reduced topology (~5 min; --quick: ~1 min).
    let help_or_report = args
        .iter()
        .any(|a| a == "--help" || a == "-h" || a == "report");
    if !no_dp && !help_or_report {
        let mut c = Command::new(&target);
        c.current_dir(workspace_root())
            .args(["dp", "--out", "perf/results", "--criterion"])
            .arg(&criterion)
            .args(args.iter().filter(|a| *a == "--quick"));
        let dp = status(&mut c);
        r = r.and(dp);
    }
    eprintln!(
        "bench: took {:.1} min (build included)",
        started.elapsed().as_secs_f64() / 60.0
    );
    r
}

/// The criterion benches `cargo xtask bench` runs: (package, bench target).
const BENCHES: [(&str, &str); 3] = [
    ("perf", "datapath"),
    ("ntma-user", "fastpath"),
    ("ntma-user", "gn"),
];

/// Builds the release binaries and, with `benches`, the criterion benches in one
/// cargo call: built apart, every crate they share is compiled twice (the benches'
/// dev-dependencies unify other features), which with fat LTO costs minutes.
/// Returns each bench's executable and its package's directory.
fn build_release(benches: bool) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut c = cargo();
    c.args(["build", "--release", "--workspace", "--bins"]);
    if !benches {
        status(&mut c)?;
        return Ok(Vec::new());
    }
    for (_, name) in BENCHES {
        c.args(["--bench", name]);
    }
    c.args(["--message-format", "json-render-diagnostics"])
        .stdout(std::process::Stdio::piped());
    let out = c
        .spawn()
        .with_context(|| format!("could not start {}", describe(&c)))?
        .wait_with_output()?;
    if !out.status.success() {
        bail!("{} failed ({})", describe(&c), out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_bench = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bench"));
        let (Some(exe), Some(manifest)) = (v["executable"].as_str(), v["manifest_path"].as_str())
        else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && is_bench {
            let dir = Path::new(manifest).parent().unwrap_or(Path::new("."));
            found.push((PathBuf::from(exe), dir.to_owned()));
        }
    }
    if found.len() != BENCHES.len() {
        bail!(
            "cargo built {} of the {} criterion benches; see its output above",
            found.len(),
            BENCHES.len()
        );
    }
    Ok(found)
}

/// `target/release/<name>`, honouring CARGO_TARGET_DIR.
fn release_bin(name: &str) -> std::path::PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .map(|t| if t.is_relative() { root.join(t) } else { t })
        .unwrap_or_else(|| root.join("target"));
    target.join("release").join(name)
}

fn run_ntma(mut args: Vec<OsString>) -> Result<()> {
    setup::run(false, setup::Need::Core)?;
    status(cargo().args(["build", "--release", "-p", "ntma-user", "--bin", "ntma"]))?;
    // Options alone mean `ntma run <options>`.
    let options_only = args
        .first()
        .is_none_or(|a| a.to_string_lossy().starts_with('-'));
    if options_only
        && !args
            .iter()
            .any(|a| a == "--help" || a == "-h" || a == "--version")
    {
        args.insert(0, "run".into());
    }
    let mut c = Command::new(release_bin("ntma"));
    c.args(&args);
    eprintln!("run: {}", describe(&c));
    // Replace this process: SIGINT/SIGTERM go straight to the daemon, which
    // deregisters and detaches its XDP programs.
    let e = std::os::unix::process::CommandExt::exec(&mut c);
    Err(e).with_context(|| format!("could not start {}", describe(&c)))
}

fn demo() -> Result<()> {
    if ntm_testbed::require_root().is_err() {
        bail!(
            "the demo needs root (network namespaces, XDP, AF_XDP): run `sudo -E cargo xtask demo`"
        );
    }
    setup::run(false, setup::Need::Core)?;
    status(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    status(&mut Command::new(release_bin("ntm-demo")))
}

fn test(args: Vec<OsString>) -> Result<()> {
    // Checked before setup: without root nothing below can pass, so say so at once.
    if ntm_testbed::require_root().is_err() {
        bail!(
            "the integration tests need root (network namespaces, XDP, AF_XDP): \
             run `sudo -E cargo xtask test`"
        );
    }
    setup::run(false, setup::Need::Core)?;
    // Testbeds left behind by a crashed run would only take up names and memory.
    match ntm_testbed::down_stale() {
        Ok(removed) if !removed.is_empty() => {
            eprintln!(
                "test: removed testbeds left by crashed runs: {}",
                removed.join(" ")
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("test: could not look for stale testbeds: {e}"),
    }
    let started = Instant::now();
    // Integration tests run the other crates' binaries (ntm-dc, ntm-rs, ntma…),
    // which `cargo test` builds only for the crate under test.
    status(cargo().args(["build", "--workspace", "--bins"]))?;
    let mut c = cargo();
    c.arg("test");
    // `-p` narrows the run; cargo lets `--workspace` win over it, so only
    // the whole run names the workspace.
    let narrowed = |a: &OsString| a == "-p" || a.to_string_lossy().starts_with("--package");
    if !args.iter().any(narrowed) {
        c.arg("--workspace");
    }
    c.args(args);
    let result = status(&mut c);
    eprintln!(
        "test: cargo test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    result
}

/// The cargo that runs us (`cargo xtask` sets `CARGO`), in the workspace root.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(ToOwned::to_owned).unwrap_or(manifest)
}

/// Runs `c` with inherited stdio; an error unless it exits with 0.
fn status(c: &mut Command) -> Result<()> {
    let s = c
        .status()
        .with_context(|| format!("could not start {}", describe(c)))?;
    if !s.success() {
        bail!("{} failed ({s})", describe(c));
    }
    Ok(())
}

fn describe(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
