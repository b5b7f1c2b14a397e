//! `ntma`: the NTMobile adapter. See the crate docs and `ntma.example.toml`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use ntma_user::config::Config;

/// The NTMobile adapter: makes an unmodified general node (GN) on the
/// GN-facing NIC a full NTMobile node. It registers the GN's FQDN with the
/// Direction Coordinator, gives the GN its VIP by DHCP, answers its DNS
/// queries for NTM names by setting up tunnels, and forwards its packets
/// through them on AF_XDP.
#[derive(Debug, Parser)]
#[command(name = "ntma", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the adapter until SIGINT or SIGTERM (as root). Logs go to
    /// stderr; RUST_LOG filters them (default "info").
    Run {
        /// The TOML configuration (see ntma.example.toml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show a running adapter's registration, tunnels and counters.
    Status {
        /// The configuration the adapter runs with (finds its status socket).
        #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The status socket itself (default /run/ntma/ntma.sock).
        #[arg(short, long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print the JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        /// The TOML configuration.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line, without a backtrace: it is for operators.
            eprintln!("ntma: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: Args) -> Result<()> {
    match args.command {
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .init();
            let settings = Config::load(&config)
                .and_then(|c| c.validate())
                .context("bad configuration")?;
            ntma_user::daemon::run(settings)
        }
        Command::Status {
            config,
            socket,
            json,
        } => {
            let path = match (config, socket) {
                (Some(c), _) => Config::load(&c)
                    .context("bad configuration")?
                    .status_socket_path(),
                (None, Some(p)) => p,
                (None, None) => PathBuf::from(ntma_user::config::STATUS_DIR).join("ntma.sock"),
            };
            let st = ntma_user::status::query(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.render());
            }
            Ok(())
        }
        Command::CheckConfig { config } => {
            let s = Config::load(&config)
                .and_then(|c| c.validate())
                .context("bad configuration")?;
            println!(
                "{}: configuration OK ({} on {} / {}, status socket {})",
                config.display(),
                s.fqdn,
                s.lan_if,
                s.wan_if,
                s.status_socket.display()
            );
            Ok(())
        }
    }
}
