//! `ntm-node`: a software NTMobile node. See the crate docs and
//! `ntm-node.example.toml`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use ntm_node::Config;

/// A software NTMobile node: registers its FQDN with the DC, puts its VIP
/// on a TUN device, answers NTM names through its DNS stub and carries
/// packets to other nodes through authenticated (and, with suite 2,
/// encrypted) UDP tunnels.
///
/// Signals: SIGINT/SIGTERM deregister and stop; SIGUSR1 logs a statistics
/// line and rewrites the status file. Logs go to stderr; RUST_LOG filters
/// them (default "info").
#[derive(Debug, Parser)]
#[command(name = "ntm-node", version)]
struct Args {
    /// The TOML configuration file (see ntm-node.example.toml).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line, without a backtrace: it is for operators.
            eprintln!("ntm-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: &Args) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = Config::load(&args.config)
        .and_then(|c| c.validate())
        .context("bad configuration")?;
    if args.check {
        println!("{}: configuration OK", args.config.display());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(ntm_node::run(settings))
}
