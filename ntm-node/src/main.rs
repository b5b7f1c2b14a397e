//! `ntm-node`: a software NTMobile node. See the crate docs and
//! `ntm-node.example.toml`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{CommandFactory, Parser};
use ntm_node::Config;
use ntm_ops::logging::LogFormat;

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
    /// The TOML configuration file (see ntm-node.example.toml).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "print_man"
    )]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the man page (roff) and exit.
    #[arg(long, hide = true)]
    print_man: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_man {
        return ntm_ops::cli::print_man(Args::command());
    }
    ntm_ops::cli::exit("ntm-node", real_main(&args))
}

fn real_main(args: &Args) -> Result<()> {
    ntm_ops::logging::init(args.log_format, "info");
    let path = args.config.as_deref().context("--config is required")?;
    let config = Config::load(path).context("bad configuration")?;
    let settings = config.validate().context("bad configuration")?;
    let private = if config.holds_inline_key() {
        ntm_ops::keys::check_private(path).err()
    } else {
        None
    };
    if args.check {
        if let Some(e) = &private {
            eprintln!("ntm-node: warning: {e}; ntm-node refuses to start with it");
        }
        println!("{}: configuration OK", path.display());
        return Ok(());
    }
    if let Some(e) = private {
        return Err(e.into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(ntm_node::run(settings))
}
