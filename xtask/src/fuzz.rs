//! `cargo xtask fuzz [--time S] [TARGET...]`: runs the cargo-fuzz targets of `fuzz/`
//! one after the other for S seconds each and prints a table of what libFuzzer
//! reported. Any crash fails the command and names its reproducer under
//! `fuzz/artifacts/<target>/`.
//!
//! Each target starts from the committed corpus `fuzz/corpus/<target>` (and
//! `fuzz/seeds/<target>` and `fuzz/regressions/<target>`, if present) but writes what it finds to a working corpus
//! under the target directory (`<target>/fuzz-corpus/<target>`), so that runs build
//! on each other without dirtying the tree; `fuzz/README.md` says how to fold a
//! working corpus back with `cargo fuzz cmin`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// What one run reported.
#[derive(Debug, Default, Clone, PartialEq)]
struct Report {
    execs: Option<u64>,
    exec_per_sec: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<u64>,
    crashes: Vec<PathBuf>,
    seconds: f64,
}

/// How `cargo xtask fuzz` runs the targets.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Seconds per run (with `execs`: the most a run may take).
    pub time: u64,
    /// Top each target up to this many executions in the ledger.
    pub execs: Option<u64>,
    /// Targets run side by side.
    pub jobs: usize,
    /// AddressSanitizer on.
    pub asan: bool,
}

impl Plan {
    fn sanitizer(&self) -> &'static str {
        if self.asan {
            "address"
        } else {
            "none"
        }
    }
}

pub fn run(plan: Plan, targets: Vec<String>) -> Result<()> {
    crate::setup::run(false, crate::setup::Need::Core)?;
    cargo_fuzz()?;
    let root = crate::workspace_root();
    let fuzz_dir = root.join("fuzz");
    let chosen = choose(&fuzz_dir, targets)?;
    let ledger = Ledger::read(&fuzz_dir.join(LEDGER))?;
    // With --execs, only what is short of the goal runs, for what it lacks.
    let todo: Vec<(String, Option<u64>)> = chosen
        .into_iter()
        .filter_map(|t| match plan.execs {
            None => Some((t, None)),
            Some(goal) => {
                let have = ledger.total(&t);
                (have < goal).then(|| (t, Some(goal - have)))
            }
        })
        .collect();
    if todo.is_empty() {
        eprintln!("fuzz: every chosen target already has its executions (fuzz/{LEDGER})");
        return print_totals(&fuzz_dir);
    }
    let work = target_dir(&root).join("fuzz-corpus");
    // One build before the runs, so that each starts at once. `cargo fuzz build`
    // takes one target or none (all).
    eprintln!(
        "fuzz: building the targets (sanitizer: {})",
        plan.sanitizer()
    );
    let mut build = nightly_cargo();
    build
        .current_dir(&fuzz_dir)
        .args(["fuzz", "build", "-s", plan.sanitizer()]);
    if let [(one, _)] = todo.as_slice() {
        build.arg(one);
    }
    crate::status(&mut build)?;
    let rows = run_all(&fuzz_dir, &work, &plan, &todo)?;
    print_table(&rows);
    print_totals(&fuzz_dir)?;
    let crashed: Vec<_> = rows.iter().flat_map(|(_, r)| &r.crashes).collect();
    if !crashed.is_empty() {
        for c in &crashed {
            eprintln!("fuzz: reproducer {}", c.display());
        }
        bail!(
            "{} crash(es); reproduce with `cd fuzz && cargo +nightly fuzz run <target> <reproducer>`",
            crashed.len()
        );
    }
    Ok(())
}

/// The named targets, checked against `cargo fuzz list` (all when none is named).
fn choose(fuzz_dir: &Path, targets: Vec<String>) -> Result<Vec<String>> {
    let all = list(fuzz_dir)?;
    if targets.is_empty() {
        return Ok(all);
    }
    let unknown: Vec<_> = targets.iter().filter(|t| !all.contains(t)).collect();
    if !unknown.is_empty() {
        bail!(
            "no fuzz target {}; the targets are: {}",
            join(unknown.iter().map(|s| s.as_str())),
            all.join(" ")
        );
    }
    Ok(targets)
}

/// Runs `todo` on `plan.jobs` threads, each taking the next target; every
/// finished run is appended to the ledger at once (a later failure keeps it).
fn run_all(
    fuzz_dir: &Path,
    work: &Path,
    plan: &Plan,
    todo: &[(String, Option<u64>)],
) -> Result<Vec<(String, Report)>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let rows = std::sync::Mutex::new(Vec::new());
    let ledger = fuzz_dir.join(LEDGER);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..plan.jobs.clamp(1, todo.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((t, runs)) = todo.get(i) else {
                            return Ok(());
                        };
                        let r = run_one(fuzz_dir, work, t, plan, *runs)?;
                        Ledger::append(&ledger, t, plan.sanitizer(), &r)?;
                        rows.lock().expect("no panics hold it").push((t.clone(), r));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a fuzz runner thread panicked")?;
        }
        Ok(())
    })?;
    let mut rows = rows.into_inner().expect("no panics hold it");
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(rows)
}

/// Installs cargo-fuzz unless `cargo fuzz` already answers.
fn cargo_fuzz() -> Result<()> {
    let present = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("fuzz: cargo-fuzz not found, installing it (a few minutes)");
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.args(["install", "cargo-fuzz", "--locked"])
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    crate::status(&mut c)
}

/// `cargo` of the nightly toolchain (the sanitizer flags need it), without what the
/// outer stable cargo put in the environment.
fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"])
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    c
}

/// The fuzz targets, as `cargo fuzz list` names them.
fn list(fuzz_dir: &Path) -> Result<Vec<String>> {
    let out = nightly_cargo()
        .current_dir(fuzz_dir)
        .args(["fuzz", "list"])
        .output()
        .context("could not run `cargo fuzz list`")?;
    if !out.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { root.join(t) } else { t })
        .unwrap_or_else(|| root.join("fuzz/target"))
}

fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn run_one(
    fuzz_dir: &Path,
    work: &Path,
    target: &str,
    plan: &Plan,
    runs: Option<u64>,
) -> Result<Report> {
    let time = plan.time;
    let corpus = work.join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("could not create {}", corpus.display()))?;
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let before = files_in(&artifacts);
    let log_path = work.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("could not create {}", log_path.display()))?;
    let mut c = nightly_cargo();
    c.current_dir(fuzz_dir)
        .args(["fuzz", "run", "-s", plan.sanitizer(), target])
        .arg(&corpus);
    // The committed corpus, seeds and reproducers of fixed crashes are read, never
    // written: every run replays the regressions first.
    for extra in ["corpus", "seeds", "regressions"] {
        let d = fuzz_dir.join(extra).join(target);
        if d.is_dir() {
            c.arg(d);
        }
    }
    c.arg("--");
    if let Some(runs) = runs {
        c.arg(format!("-runs={runs}"));
    }
    c.arg(format!("-max_total_time={time}"))
        .arg("-print_final_stats=1")
        // A single input taking this long is a hang worth a reproducer.
        .arg("-timeout=30")
        .stdout(log.try_clone()?)
        .stderr(log);
    eprintln!(
        "fuzz: {target} for {time} s (libFuzzer's output: {})",
        log_path.display()
    );
    let started = Instant::now();
    let status = c
        .status()
        .with_context(|| format!("could not start {}", crate::describe(&c)))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut r = parse(&text);
    r.seconds = started.elapsed().as_secs_f64();
    r.crashes = files_in(&artifacts).difference(&before).cloned().collect();
    if r.corpus.is_none() {
        r.corpus = Some(files_in(&corpus).len() as u64);
    }
    if !status.success() && r.crashes.is_empty() {
        let tail: Vec<_> = text.lines().rev().take(20).collect();
        let tail: Vec<_> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({status}) without a reproducer:\n{}",
            tail.join("\n")
        );
    }
    Ok(r)
}

/// The committed record of every run, so that executions add up across runs
/// and machines (the issue asks for 10 million per target in total).
const LEDGER: &str = "ledger.tsv";
const LEDGER_HEADER: &str =
    "unix_time\ttarget\tsanitizer\tseconds\texecutions\tcov\tft\tcorpus\tcrashes";

/// One ledger line.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    target: String,
    execs: u64,
    cov: Option<u64>,
    ft: Option<u64>,
}

#[derive(Debug, Default)]
struct Ledger {
    entries: Vec<Entry>,
}

impl Ledger {
    fn read(path: &Path) -> Result<Ledger> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Ledger::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
        }
    }

    /// Lines that do not parse (the header, hand edits) are skipped.
    fn parse(text: &str) -> Ledger {
        let entries = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
                Some(Entry {
                    target: (*f.get(1)?).to_owned(),
                    execs: num(4)?,
                    cov: num(5),
                    ft: num(6),
                })
            })
            .collect();
        Ledger { entries }
    }

    fn total(&self, target: &str) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.target == target)
            .map(|e| e.execs)
            .sum()
    }

    fn append(path: &Path, target: &str, sanitizer: &str, r: &Report) -> Result<()> {
        use std::io::Write;
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("could not open {}", path.display()))?;
        let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if new {
            writeln!(f, "{LEDGER_HEADER}")?;
        }
        writeln!(
            f,
            "{unix}\t{target}\t{sanitizer}\t{:.0}\t{}\t{}\t{}\t{}\t{}",
            r.seconds,
            r.execs.unwrap_or(0),
            n(r.cov),
            n(r.ft),
            n(r.corpus),
            r.crashes.len()
        )
        .with_context(|| format!("could not write {}", path.display()))
    }
}

/// Executions per target over every run in the ledger.
fn print_totals(fuzz_dir: &Path) -> Result<()> {
    let ledger = Ledger::read(&fuzz_dir.join(LEDGER))?;
    let mut targets: Vec<&str> = ledger.entries.iter().map(|e| e.target.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    println!("\ntotals over fuzz/{LEDGER}");
    println!(
        "{:<16} {:>5} {:>14} {:>7} {:>8}",
        "target", "runs", "executions", "cov", "ft"
    );
    for t in targets {
        let runs: Vec<&Entry> = ledger.entries.iter().filter(|e| e.target == t).collect();
        let last = runs.last().expect("a target listed has a run");
        let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        println!(
            "{:<16} {:>5} {:>14} {:>7} {:>8}",
            t,
            runs.len(),
            ledger.total(t),
            n(last.cov),
            n(last.ft)
        );
    }
    Ok(())
}

/// The numbers of libFuzzer's last status line (`#N DONE cov: C ft: F corp: K/..`)
/// and of its final stats (`stat::number_of_executed_units: N`).
fn parse(text: &str) -> Report {
    let mut r = Report::default();
    let field = |line: &str, name: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        let v = words.next()?;
        v.split('/').next()?.parse().ok()
    };
    for line in text.lines() {
        if line.starts_with('#') && line.contains("cov:") {
            r.cov = field(line, "cov:").or(r.cov);
            r.ft = field(line, "ft:").or(r.ft);
            r.corpus = field(line, "corp:").or(r.corpus);
            r.exec_per_sec = field(line, "exec/s:").or(r.exec_per_sec);
            let n = line[1..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
            r.execs = n.or(r.execs);
        } else if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            r.execs = v.trim().parse().ok().or(r.execs);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            r.exec_per_sec = v.trim().parse().ok().or(r.exec_per_sec);
        }
    }
    r
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn print_table(rows: &[(String, Report)]) {
    let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    println!(
        "{:<16} {:>12} {:>9} {:>7} {:>8} {:>7} {:>8} {:>7}",
        "target", "executions", "exec/s", "cov", "ft", "corpus", "crashes", "secs"
    );
    for (t, r) in rows {
        println!(
            "{:<16} {:>12} {:>9} {:>7} {:>8} {:>7} {:>8} {:>7.0}",
            t,
            n(r.execs),
            n(r.exec_per_sec),
            n(r.cov),
            n(r.ft),
            n(r.corpus),
            r.crashes.len(),
            r.seconds
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_output() {
        let text = "\
INFO: Seed: 1
#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb
#65536\tpulse  cov: 120 ft: 300 corp: 40/2Kb lim: 100 exec/s: 21845 rss: 60Mb
#1234567\tDONE   cov: 130 ft: 333 corp: 45/3Kb lim: 4096 exec/s: 20576 rss: 70Mb
Done 1234567 runs in 61 second(s)
stat::number_of_executed_units: 1234567
stat::average_exec_per_sec:     20238
stat::new_units_added:          44
";
        let r = parse(text);
        assert_eq!(r.execs, Some(1_234_567));
        assert_eq!(r.exec_per_sec, Some(20_238));
        assert_eq!((r.cov, r.ft, r.corpus), (Some(130), Some(333), Some(45)));
    }

    #[test]
    fn the_ledger_adds_up_runs_per_target() {
        let text = format!(
            "{LEDGER_HEADER}\n\
             1\tdc\tnone\t60\t1000\t10\t20\t5\t0\n\
             2\tgn\tnone\t60\t7\t-\t-\t-\t0\n\
             garbage\n\
             3\tdc\taddress\t60\t500\t12\t25\t6\t0\n"
        );
        let l = Ledger::parse(&text);
        assert_eq!(l.total("dc"), 1500);
        assert_eq!(l.total("gn"), 7);
        assert_eq!(l.total("rs"), 0);
        assert_eq!(l.entries.len(), 3);
    }

    #[test]
    fn nothing_to_parse() {
        assert_eq!(parse("error: could not compile\n"), Report::default());
    }
}
