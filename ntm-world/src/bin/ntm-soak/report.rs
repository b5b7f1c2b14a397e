//! The soak's result: the curve as a table, the verdict of every judged
//! series, what the load did, and the JSON file under `perf/results/`.

use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::growth::{judge, Verdict};
use crate::load::{Counts, UdpRun};
use crate::sample::{Sample, JUDGED};
use crate::Args;

/// Everything the soak found.
pub struct Outcome<'a> {
    pub args: &'a Args,
    pub started_unix: u64,
    pub rate: u64,
    pub trials: &'a [(u64, UdpRun)],
    pub samples: &'a [Sample],
    pub counts: &'a Counts,
    pub ntma: ntma_user::status::Status,
    pub dc: ntm_dc::Status,
}

impl Outcome<'_> {
    /// Each judged series and its verdict (`None`: too few samples).
    fn verdicts(&self) -> Vec<(&'static str, Option<Verdict>)> {
        let warmup = self.args.warmup();
        JUDGED
            .iter()
            .map(|s| {
                let pts: Vec<(f64, f64)> = self
                    .samples
                    .iter()
                    .map(|x| (x.t, (s.value)(x) as f64))
                    .collect();
                (s.name, judge(&pts, warmup, s.tol))
            })
            .collect()
    }

    /// Prints the curve, the verdicts and the load; writes the JSON.
    /// Returns whether no series grew.
    pub fn print_and_write(&self) -> Result<bool> {
        let verdicts = self.verdicts();
        println!("\n=============== ntm-soak ===============");
        println!("{}", Sample::HEADER);
        for s in self.samples {
            println!("{}", s.row());
        }
        println!("\ngrowth after {:.0} s of warm-up:", self.args.warmup());
        let mut passed = true;
        for (name, v) in &verdicts {
            match v {
                Some(v) => {
                    passed &= !v.grows;
                    println!(
                        "  {name:<20} {}: trend {:+.1} over the judged span, median rise {:+.1}, allowed {:.1} ({} samples)",
                        if v.grows { "GROWS" } else { "flat" },
                        v.projected, v.rise, v.allowed, v.samples
                    );
                }
                None => {
                    passed = false;
                    println!("  {name:<20} too few samples after the warm-up: run longer");
                }
            }
        }
        self.print_load();
        let path = self.write(&verdicts, passed)?;
        println!("\nresults: {}", path.display());
        Ok(passed)
    }

    fn print_load(&self) {
        let c = self.counts;
        let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        println!(
            "\nload: {} Mbit/s each way; {} iperf3 runs ({} failed): gn -> cn lost {}/{} ({:.3} %), cn -> gn lost {}/{} ({:.3} %)",
            self.rate,
            v(&c.iperf_runs),
            v(&c.iperf_failed),
            v(&c.up_lost),
            v(&c.up_packets),
            Counts::loss(&c.up_packets, &c.up_lost),
            v(&c.down_lost),
            v(&c.down_packets),
            Counts::loss(&c.down_packets, &c.down_lost),
        );
        println!(
            "      gn2 tunnel cycles {} ({} failed), gn2 dhclient runs {}, ntma tunnels up {} down {}, DHCP ACKs {}",
            v(&c.churn_cycles),
            v(&c.churn_failed),
            v(&c.dhcp_runs),
            self.ntma.stat("tunnels_up"),
            self.ntma.stat("tunnels_down"),
            self.ntma.stat("dhcp_ack"),
        );
        println!(
            "      DNS queries answered {} ({} failed); forged datagrams: {} to ntma, {} to the DC",
            v(&c.dns_ok),
            v(&c.dns_failed),
            v(&c.forged_to_ntma),
            v(&c.forged_to_dc),
        );
        println!(
            "      ntma drops: {}",
            ntm_ops::cli::counts(&self.ntma.drops(), false)
        );
        println!(
            "      DC drops: {}",
            ntm_ops::cli::counts(&self.dc.drops, false)
        );
        for e in c.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            println!("      error: {e}");
        }
    }

    fn json(&self, verdicts: &[(&'static str, Option<Verdict>)], passed: bool) -> Value {
        let verdicts: Vec<Value> = verdicts
            .iter()
            .map(|(name, v)| match v {
                Some(v) => json!({"series": name, "grows": v.grows, "samples": v.samples,
                    "slope_per_sec": v.slope_per_sec, "projected": v.projected,
                    "median_rise": v.rise, "allowed": v.allowed}),
                None => json!({"series": name, "grows": null, "samples": 0}),
            })
            .collect();
        let trials: Vec<Value> = self
            .trials
            .iter()
            .map(|(rate, r)| json!({"mbps": rate, "gn_to_cn": [r.up.0, r.up.1], "cn_to_gn": [r.down.0, r.down.1]}))
            .collect();
        json!({
            "started_unix": self.started_unix,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "minutes": self.args.minutes,
            "interval_secs": self.args.interval_secs,
            "warmup_secs": self.args.warmup(),
            "passed": passed,
            "rate_mbps_each_way": self.rate,
            "rate_search": trials,
            "verdicts": verdicts,
            "samples": self.samples.iter().map(Sample::json).collect::<Vec<_>>(),
            "load": self.counts.json(),
            "ntma": {"drops": self.ntma.drops(), "slow_path_stats": self.ntma.slow_path.stats,
                "xdp": self.ntma.datapath.xdp, "kernel_losses": self.ntma.kernel_losses(),
                "frames": self.ntma.frames()},
            "dc": {"drops": self.dc.drops, "stats": self.dc.stats},
        })
    }

    /// Writes `soak-<unix>.json` and `soak-latest.json`; returns the first.
    fn write(
        &self,
        verdicts: &[(&'static str, Option<Verdict>)],
        passed: bool,
    ) -> Result<std::path::PathBuf> {
        let dir = &self.args.out;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_string_pretty(&self.json(verdicts, passed))? + "\n";
        let path = dir.join(format!("soak-{}.json", self.started_unix));
        for p in [&path, &dir.join("soak-latest.json")] {
            std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(path)
    }
}
