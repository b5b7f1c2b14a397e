//! `cargo xtask bench dc`: the Direction Coordinator's capacity on one
//! core. Builds `ntm-dc` and its load generator (`ntm-dc/examples/dc_load.rs`)
//! in release mode and runs the generator, which starts `ntm-dc` itself on
//! 127.0.0.1, on the redb, the memory and the etcd store in turn (for etcd
//! it starts a local single-member etcd, Debian's etcd-server, on a free
//! loopback port), and prints a table. No root needed: loopback only, no
//! namespaces.

use std::ffi::OsString;
use std::process::Command;

use anyhow::Result;

/// The generator's arguments, passed on (`--help` lists them).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated nodes (each registered, then kept alive at 20 s).
    #[arg(long, default_value_t = 100_000)]
    nodes: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Rate of the paced direction run (DIR_REQs per second).
    #[arg(long, default_value_t = 20_000.0)]
    dir_rate: f64,
    /// Requests outstanding in the closed-loop runs.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Stores to run on, comma-separated.
    #[arg(long, default_value = "redb,memory,etcd")]
    stores: String,
    /// The core ntm-dc is pinned to (taskset); the generator takes the
    /// next one, so that neither measures the other's work.
    #[arg(long, default_value_t = 0)]
    dc_core: usize,
}

pub fn run(a: &Args) -> Result<()> {
    super::status(super::cargo().args([
        "build",
        "--release",
        "-p",
        "ntm-dc",
        "--bin",
        "ntm-dc",
        "--example",
        "dc_load",
    ]))?;
    let dc = super::release_bin("ntm-dc");
    let load = super::release_bin("examples/dc_load");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let gen_core = (a.dc_core + 1) % cores;
    if gen_core == a.dc_core {
        eprintln!(
            "bench dc: one core only: the generator shares it with ntm-dc, so the figures are low"
        );
    }
    let mut c = Command::new("taskset");
    c.args(["-c", &gen_core.to_string()])
        .arg(load)
        .arg("--dc-bin")
        .arg(dc)
        .args(["--dc-core", &a.dc_core.to_string()])
        .args(pairs([
            ("--nodes", a.nodes.to_string()),
            ("--secs", a.secs.to_string()),
            ("--dir-rate", a.dir_rate.to_string()),
            ("--window", a.window.to_string()),
            ("--stores", a.stores.clone()),
        ]));
    super::status(&mut c)
}

fn pairs<const N: usize>(p: [(&str, String); N]) -> Vec<OsString> {
    p.into_iter()
        .flat_map(|(k, v)| [OsString::from(k), OsString::from(v)])
        .collect()
}
