//! `ntm-soak`: the adapter under a long mixed load on the testbed, watched
//! for growth (`cargo xtask soak --minutes N` builds the workspace in
//! release mode and runs this).
//!
//! It brings up the demo's world (DC, RS, cn, cn2, ntma serving gn and gn2),
//! finds the UDP rate the path carries without loss both ways (iperf3,
//! doubling then bisecting), and for N minutes runs, all at once: that
//! traffic gn <-> cn; gn2's tunnels torn down and set up again every few
//! seconds (a SIGHUP that changes gn2's entry, a DHCP INIT-REBOOT, DNS and
//! a ping through the relay to cn2); DNS queries from gn for NTM names,
//! unknown NTM names and upstream names; DHCP renewals (60 s leases);
//! forged datagrams to the adapter's uplink port and the DC (random bytes,
//! recorded datagrams with a broken tag, replays). Every interval it samples
//! the RSS and open descriptors of ntma and the DC and ntma's UMEM frames in
//! use, and at the end fails if any of them grew after the warm-up
//! (`growth`). The curve, the rates, what the load did and every drop
//! reason go to `<out>/soak-<unix>.json` and `<out>/soak-latest.json`.

mod forge;
mod growth;
mod load;
mod report;
mod sample;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;
use ntm_world::{require_root, Ntma, Role, World, CN2_FQDN, CN_FQDN, GN2_FQDN};

use crate::load::Counts;
use crate::sample::Sample;

/// The soak's testbed prefix.
const PREFIX: &str = "soak-";

#[derive(Parser, Debug)]
#[command(
    name = "ntm-soak",
    about = "The adapter under a long mixed load, watched for growth"
)]
pub struct Args {
    /// How long the load runs, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    interval_secs: u64,
    /// Seconds left out of the judgement at the start (default: a fifth of
    /// the run, at least 60 and at most 120, at most half the run).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// The traffic's rate in Mbit/s each way, instead of searching for it.
    #[arg(long)]
    rate_mbps: Option<u64>,
    /// Seconds between the starts of gn2's tunnel cycles.
    #[arg(long, default_value_t = 5)]
    churn_secs: u64,
    /// Where the JSON results go.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
}

impl Args {
    fn run_secs(&self) -> f64 {
        self.minutes * 60.0
    }

    fn warmup(&self) -> f64 {
        let run = self.run_secs();
        self.warmup_secs
            .unwrap_or_else(|| (run / 5.0).clamp(60.0, 120.0).min(run / 2.0))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("\nntm-soak: FAILED: a series grew after the warm-up (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("\nntm-soak failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Every party up and ready: ntma, the VIPs of cn and cn2, their running
/// nodes, and ntma's configuration (the churn rewrites it).
struct Ready {
    ntma: Ntma,
    cn_vip: std::net::Ipv4Addr,
    cn2_vip: std::net::Ipv4Addr,
    /// cn and cn2, running while this is alive.
    _nodes: Vec<ntm_world::Node>,
    config: ntma_user::config::Config,
}

/// gn's and gn2's leases: 60 s, the least ntma allows, so that the DHCP
/// clients renew every 30 s.
fn tweak(c: &mut ntma_user::config::Config) {
    c.lan.lease_secs = 60;
}

fn bring_up(w: &World) -> Result<Ready> {
    step("DC, RS, cn and cn2 (behind nat2); ntma serving gn and gn2 (60 s leases)");
    let mut cn = w.node(Role::Cn, CN_FQDN)?;
    let mut cn2 = w.node(Role::Cn2, CN2_FQDN)?;
    let cn2_vip = cn2.registered()?;
    let mut config = w.ntma_config()?;
    tweak(&mut config);
    let mut ntma = w.ntma(tweak)?;
    let (gn_vip, cn_vip) = w.tunnel_to_cn(&mut cn, &mut ntma)?;
    let gn2_vip = ntma.registered_gn(GN2_FQDN)?;
    let leased = w.dhclient_in(Role::Gn2)?;
    anyhow::ensure!(
        leased == gn2_vip,
        "gn2 leased {leased}, the DC gave {gn2_vip}"
    );
    eprintln!("    gn {gn_vip}, gn2 {gn2_vip}, cn {cn_vip}, cn2 {cn2_vip}");
    Ok(Ready {
        ntma,
        cn_vip,
        cn2_vip,
        _nodes: vec![cn, cn2],
        config,
    })
}

fn run(args: &Args) -> Result<bool> {
    require_root()?;
    anyhow::ensure!(args.interval_secs > 0, "--interval-secs must be at least 1");
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    step("testbed up (prefix soak-)");
    ntm_testbed::down(PREFIX).map_err(|e| anyhow!("removing an old soak testbed: {e}"))?;
    let w = World::up_with(PREFIX, |_| {})?;
    let ready = bring_up(&w)?;
    let observed = ready
        .ntma
        .status()
        .and_then(|s| s.gns[0].registration.observed)
        .context("ntma's observed address")?;
    step("recording datagrams to forge later (cn's DATA to ntma, signaling to the DC)");
    let forger = forge::Forger::record(&w, ready.cn_vip, observed)?;
    eprintln!("    recorded {:?} (to ntma, to the DC)", forger.recorded());
    let (rate, trials) = match args.rate_mbps {
        Some(r) => (r, Vec::new()),
        None => {
            step(
                "the rate gn <-> cn carries without loss (iperf3 UDP, both ways at once, 3 s runs)",
            );
            load::find_rate(&w, ready.cn_vip)?
        }
    };
    eprintln!("    soak rate: {rate} Mbit/s each way");
    let counts = Counts::default();
    let samples = soak(args, &w, &ready, rate, forger, &counts)?;
    let outcome = report::Outcome {
        args,
        started_unix,
        rate,
        trials: &trials,
        samples: &samples,
        counts: &counts,
        ntma: ready.ntma.status().context("ntma's final status")?,
        dc: w.dc_status().context("the DC's final status")?,
    };
    let passed = outcome.print_and_write()?;
    drop(ready);
    w.down()?;
    Ok(passed)
}

/// The load for the whole run, sampled every interval.
fn soak(
    args: &Args,
    w: &World,
    r: &Ready,
    rate: u64,
    forger: forge::Forger,
    counts: &Counts,
) -> Result<Vec<Sample>> {
    step(&format!(
        "soak: {:.1} min, a sample every {} s, judged after {:.0} s",
        args.minutes,
        args.interval_secs,
        args.warmup()
    ));
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(args.run_secs());
    let churn_period = Duration::from_secs(args.churn_secs);
    std::thread::scope(|s| {
        let stop = &stop;
        s.spawn(move || load::traffic(w, r.cn_vip, rate, end, stop, counts));
        s.spawn(move || load::dns(w, r.cn_vip, r.cn2_vip, stop, counts));
        s.spawn(move || load::churn(w, &r.ntma, r.config.clone(), churn_period, stop, counts));
        s.spawn(move || forger.run(stop, counts));
        let sampled = sample_until(w, &r.ntma, t0, end, args.interval_secs);
        stop.store(true, Ordering::Relaxed);
        sampled
    })
}

/// A sample now and every `interval` seconds until `end`, each printed.
fn sample_until(
    w: &World,
    ntma: &Ntma,
    t0: Instant,
    end: Instant,
    interval: u64,
) -> Result<Vec<Sample>> {
    eprintln!("{}", Sample::HEADER);
    let mut out = Vec::new();
    let mut next = t0;
    loop {
        let s = sample::take(w, ntma, t0.elapsed().as_secs_f64())?;
        eprintln!("{}", s.row());
        out.push(s);
        next += Duration::from_secs(interval);
        if next > end {
            return Ok(out);
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
