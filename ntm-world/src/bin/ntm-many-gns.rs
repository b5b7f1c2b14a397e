//! `ntm-many-gns`: what each GN costs the adapter (docs/protocol.md §6 asks
//! for at least 254 GNs per adapter). For 1 GN and then for N (default 254),
//! it starts `ntma` on the testbed with that many `[[gn]]` entries against a
//! DC that knows them all, and prints the time from the start of the
//! process to every GN registered, and the daemon's resident memory then
//! (VmRSS, and its peak VmHWM). Run as root after `cargo xtask build`:
//! `target/release/ntm-many-gns [N]`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ntm_world::{require_root, World};

const PREFIX: &str = "many-";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntm-many-gns failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A key only this measurement uses (its DC and adapter get the same).
fn key(i: usize) -> ntm_proto::Key {
    let mut k = [0x5au8; 32];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    ntm_proto::Key::from_bytes(k)
}

fn fqdn(i: usize) -> String {
    format!("gn{i}.many.ntm.test")
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Starts ntma serving `n` GNs; the time until all are registered, and its memory then.
fn measure(w: &World, n: usize) -> Result<(Duration, u64, u64)> {
    let start = Instant::now();
    let mut ntma = w.ntma(|c| {
        c.gn = (0..n)
            .map(|i| ntma_user::config::GnEntry::new(&fqdn(i), &key(i)))
            .collect();
    })?;
    ntma.wait(&format!("{n} GNs registered"), |s| {
        s.gns.len() == n && s.gns.iter().all(|g| g.registration.registered)
    })?;
    let took = start.elapsed();
    let (rss, hwm) = memory(ntma.child.id())?;
    ntma.stop()?;
    Ok((took, rss, hwm))
}

fn run() -> Result<()> {
    require_root()?;
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().context("N: a number of GNs")?,
        None => 254,
    };
    ntm_testbed::down(PREFIX).map_err(|e| anyhow::anyhow!("removing an old testbed: {e}"))?;
    let w = World::up_with(PREFIX, |dc| {
        for i in 0..n {
            dc.nodes.push(ntm_dc::NodeEntry::new(&fqdn(i), &key(i)));
        }
    })?;
    let one = measure(&w, 1)?;
    let many = measure(&w, n)?;
    w.down()?;
    println!("| GNs | start to all registered | VmRSS | VmHWM |");
    println!("|---|---|---|---|");
    for (gns, (took, rss, hwm)) in [(1, one), (n, many)] {
        println!(
            "| {gns} | {:.0} ms | {:.1} MiB | {:.1} MiB |",
            took.as_secs_f64() * 1e3,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    let per_gn = (many.1.saturating_sub(one.1)) as f64 / (n.max(2) - 1) as f64;
    println!("\nper extra GN: {per_gn:.1} KiB resident");
    Ok(())
}
