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

pub fn run(time: u64, targets: Vec<String>) -> Result<()> {
    crate::setup::run(false, crate::setup::Need::Core)?;
    cargo_fuzz()?;
    let root = crate::workspace_root();
    let fuzz_dir = root.join("fuzz");
    let all = list(&fuzz_dir)?;
    let chosen = if targets.is_empty() {
        all.clone()
    } else {
        let unknown: Vec<_> = targets.iter().filter(|t| !all.contains(t)).collect();
        if !unknown.is_empty() {
            bail!(
                "no fuzz target {}; the targets are: {}",
                join(unknown.iter().map(|s| s.as_str())),
                all.join(" ")
            );
        }
        targets
    };
    let work = target_dir(&root).join("fuzz-corpus");
    // One build before the runs, so that each starts at once. `cargo fuzz build`
    // takes one target or none (all).
    eprintln!("fuzz: building the targets");
    let mut build = nightly_cargo();
    build.current_dir(&fuzz_dir).args(["fuzz", "build"]);
    if let [one] = chosen.as_slice() {
        build.arg(one);
    }
    crate::status(&mut build)?;
    let mut rows = Vec::new();
    for t in &chosen {
        let r = run_one(&fuzz_dir, &work, t, time)?;
        rows.push((t.clone(), r));
    }
    print_table(&rows);
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

fn run_one(fuzz_dir: &Path, work: &Path, target: &str, time: u64) -> Result<Report> {
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
        .args(["fuzz", "run", target])
        .arg(&corpus);
    // The committed corpus, seeds and reproducers of fixed crashes are read, never
    // written: every run replays the regressions first.
    for extra in ["corpus", "seeds", "regressions"] {
        let d = fuzz_dir.join(extra).join(target);
        if d.is_dir() {
            c.arg(d);
        }
    }
    c.arg("--")
        .arg(format!("-max_total_time={time}"))
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
    fn nothing_to_parse() {
        assert_eq!(parse("error: could not compile\n"), Report::default());
    }
}
