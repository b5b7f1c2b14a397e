//! `ntma`: the NTMobile adapter. See the crate docs and `ntma.example.toml`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{CommandFactory, Parser, Subcommand};
use ntm_ops::logging::LogFormat;
use ntma_user::config::Config;

/// The NTMobile adapter: makes an unmodified general node (GN) on the
/// GN-facing NIC a full NTMobile node. It registers the GN's FQDN with the
/// Direction Coordinator, gives the GN its VIP by DHCP, answers its DNS
/// queries for NTM names by setting up tunnels, and forwards its packets
/// through them on AF_XDP.
#[derive(Debug, Parser)]
#[command(name = "ntma", version)]
struct Args {
    /// Log format on stderr (`run`): text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Print the man page (roff) and exit.
    #[arg(long, hide = true)]
    print_man: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the adapter until SIGINT or SIGTERM (as root; after set-up it
    /// keeps only CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF). Logs go to
    /// stderr; RUST_LOG filters them (default "info"). SIGHUP reloads the
    /// configuration (GN identity, DNS, hold and statistics settings; a
    /// change that needs a restart is refused and logged). With
    /// `[metrics] listen` set it serves Prometheus metrics on GET /metrics;
    /// under systemd (Type=notify) it reports ready and pings the watchdog.
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
        /// Health check: print nothing and exit 0 when the GN is registered
        /// and the link is ready; otherwise print one line saying why and
        /// exit 1 (2 when the daemon does not answer).
        #[arg(long, conflicts_with = "json")]
        check: bool,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        /// The TOML configuration.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Fault injection for tests (debug builds only): talks to the running
    /// adapter's debug socket beside its status socket.
    #[cfg(debug_assertions)]
    Debug {
        /// The configuration the adapter runs with (finds its status socket).
        #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The status socket itself (default /run/ntma/ntma.sock).
        #[arg(short, long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        what: DebugCommand,
    },
}

/// `ntma debug ...`.
#[cfg(debug_assertions)]
#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Make a datapath worker panic (its supervisor restarts it).
    PanicWorker {
        /// The worker's queue.
        #[arg(long, default_value_t = 0)]
        queue: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_man {
        let mut out = std::io::stdout().lock();
        return match ntm_ops::man::render(Args::command(), &mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    if let Some(Command::Status {
        config,
        socket,
        check: true,
        ..
    }) = &args.command
    {
        return health(config.as_deref(), socket.clone());
    }
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line, without a backtrace: it is for operators.
            eprintln!("ntma: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The status socket: `--socket`, the configuration's (read without its
/// key), or the default.
fn socket_path(config: Option<&std::path::Path>, socket: Option<PathBuf>) -> Result<PathBuf> {
    Ok(match (config, socket) {
        (Some(c), _) => {
            let text = std::fs::read_to_string(c)
                .with_context(|| format!("cannot read {}", c.display()))?;
            Config::from_toml(&text, c)
                .context("bad configuration")?
                .status_socket_path()
        }
        (None, Some(p)) => p,
        (None, None) => PathBuf::from(ntma_user::config::STATUS_DIR).join("ntma.sock"),
    })
}

/// `ntma status --check`.
fn health(config: Option<&std::path::Path>, socket: Option<PathBuf>) -> ExitCode {
    let st = socket_path(config, socket).and_then(|p| Ok(ntma_user::status::query(&p)?));
    match st {
        Ok(st) => match st.check() {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                println!("{why}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            println!("ntma does not answer: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(args: Args) -> Result<()> {
    let Some(command) = args.command else {
        anyhow::bail!("give a command: run, status or check-config (see --help)");
    };
    match command {
        Command::Run { config } => {
            ntm_ops::logging::init(args.log_format, "info");
            let loaded = Config::load(&config).context("bad configuration")?;
            let settings = loaded.validate().context("bad configuration")?;
            if loaded.holds_inline_key() {
                ntm_ops::keys::check_private(&config)?;
            }
            ntma_user::daemon::run(settings, Some(config))
        }
        Command::Status {
            config,
            socket,
            json,
            ..
        } => {
            let path = socket_path(config.as_deref(), socket)?;
            let st = ntma_user::status::query(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.render());
            }
            Ok(())
        }
        #[cfg(debug_assertions)]
        Command::Debug {
            config,
            socket,
            what: DebugCommand::PanicWorker { queue },
        } => {
            let path = socket_path(config.as_deref(), socket)?;
            ntma_user::debug::request(&path, &format!("panic-worker {queue}"))?;
            println!("worker {queue}: panic asked for");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config).context("bad configuration")?;
            let s = loaded.validate().context("bad configuration")?;
            if loaded.holds_inline_key() {
                if let Err(e) = ntm_ops::keys::check_private(&config) {
                    eprintln!("ntma: warning: {e}; `ntma run` refuses to start with it");
                }
            }
            println!(
                "{}: configuration OK ({} on {} / {}, status socket {})",
                config.display(),
                s.gns
                    .iter()
                    .map(|g| g.fqdn.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.lan_if,
                s.wan_if,
                s.status_socket.display()
            );
            Ok(())
        }
    }
}
