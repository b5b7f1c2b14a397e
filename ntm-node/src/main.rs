//! `ntm-node`: a software NTMobile node. See the crate docs and
//! `ntm-node.example.toml`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use ntm_node::{Config, Settings};
use ntm_ops::cli::DaemonArgs;

/// A software NTMobile node: registers its FQDN with the DC, puts its VIP
/// on a TUN device, answers NTM names through its DNS stub and carries
/// packets to other nodes through authenticated (and, with suite 2,
/// encrypted) UDP tunnels.
///
/// Signals: SIGINT/SIGTERM deregister and stop; SIGUSR1 logs a statistics
/// line and rewrites the status file. Logs go to stderr (--log-format json:
/// one JSON object per line); RUST_LOG filters them (default "info"). With
/// `[metrics] listen` set it serves Prometheus metrics on GET /metrics;
/// under systemd (Type=notify) it reports ready and pings the watchdog. It
/// needs CAP_NET_ADMIN (its TUN device) and, for a DNS stub on port 53,
/// CAP_NET_BIND_SERVICE; nothing else.
#[derive(Debug, Parser)]
#[command(name = "ntm-node", version)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,
}

fn main() -> ExitCode {
    let args: Args = ntm_ops::cli::parse::<Args, Config>(None);
    ntm_ops::cli::exit("ntm-node", real_main(&args.daemon))
}

fn real_main(args: &DaemonArgs) -> Result<()> {
    let summary = |s: &Settings| {
        format!(
            "{} via DC {:?}, port {}, TUN {}, DNS stub {}",
            s.fqdn, s.dcs, s.listen_port, s.tun_name, s.dns_listen
        )
    };
    match args.start::<Config>("ntm-node", |_| {}, summary)? {
        Some(l) => ntm_ops::cli::block_on(ntm_node::run(l.settings)),
        None => Ok(()),
    }
}
