//! `ntm-dc`: a thin tokio driver around [`ntm_dc::Coordinator`].

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use ntm_dc::status::DriverStats;
use ntm_dc::{Config, Coordinator, Settings, Status};
use ntm_ops::logging::LogFormat;
use ntm_proto::wire::{MAX_DATAGRAM_LEN, MAX_SIGNALING_LEN};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Interval;

/// ntm-dc: the NTMobile Direction Coordinator.
///
/// Registers nodes, hands out VIPs from a pool, keeps registrations alive,
/// detects NAT and directs tunnels between nodes (directly, in reverse, or
/// through a relay server), as shared/PROTOCOL.md (wire version 2) §5
/// describes. Every tunnel gets the configuration's `tunnel_suite`:
/// 2 = AES-256-GCM (default), 1 = HMAC-SHA256-128 (authentication only).
/// Replayed signaling is dropped and counted (`replay` in the drops).
///
/// Logs go to stderr (--log-format json: one JSON object per line); choose
/// what with RUST_LOG (default `info`, e.g. RUST_LOG=ntm_dc=debug shows
/// every drop). `ntm-dc status` shows registrations, directions, relay
/// bindings and counters over the status socket; with `[metrics] listen`
/// set it serves Prometheus metrics on GET /metrics. SIGHUP reloads the
/// configuration: nodes and relays are added, removed and re-keyed while
/// unchanged nodes keep their registrations and tunnels. Under systemd
/// (Type=notify) it reports ready and reloading and pings the watchdog.
/// SIGUSR1 logs a statistics line; SIGTERM or SIGINT stops it. It needs no
/// privileges (run it as an unprivileged user).
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// The configuration file (TOML; see ntm-dc/ntm-dc.example.toml).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "print_man"
    )]
    config: Option<PathBuf>,
    /// Listen on this address instead of the configuration's `listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddrV4>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    check: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the man page (roff) and exit.
    #[arg(long, hide = true)]
    print_man: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a new random key (K_node or K_rs: 64 hex digits).
    Keygen,
    /// Provision a node: print the DC's [[node]] entry for FQDN with a new
    /// key, and the matching snippet for the node's (ntm-node) or the
    /// adapter's (ntma [dc]) configuration.
    AddNode {
        /// The node's FQDN (under the DC's domain).
        fqdn: String,
        /// The DC's address as nodes reach it (default: the configuration's
        /// `listen`, if it names one).
        #[arg(long, value_name = "ADDR:PORT")]
        dc: Option<SocketAddrV4>,
        /// The DC's configuration (for its domain and address).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Write the key to this file (mode 0600) and print `key_file`
        /// entries instead of the key itself.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Show a running DC's registrations, directions, relay bindings and
    /// counters (over its status socket).
    Status(ntm_ops::cli::StatusArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_man {
        return ntm_ops::cli::print_man(Args::command());
    }
    let r = match args.command {
        Some(Cmd::Keygen) => ntm_ops::keys::generate().map(|k| println!("{k}")),
        Some(Cmd::AddNode {
            fqdn,
            dc,
            config,
            key_file,
        }) => add_node(&fqdn, dc, config, key_file),
        Some(Cmd::Status(a)) => status(&a),
        None => {
            ntm_ops::logging::init(args.log_format, "info");
            start(args)
        }
    };
    ntm_ops::cli::exit("ntm-dc", r)
}

/// Reads a configuration without its keys (for `status` and `add-node`,
/// which may run as an operator who cannot read the key files).
fn config_text(path: &std::path::Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Config::from_toml(&text)?)
}

fn add_node(
    fqdn: &str,
    dc: Option<SocketAddrV4>,
    config: Option<PathBuf>,
    key_file: Option<PathBuf>,
) -> Result<()> {
    let cfg = config.as_deref().map(config_text).transpose()?;
    if ntm_proto::wire::validate_fqdn(fqdn.as_bytes()).is_err() {
        anyhow::bail!("{fqdn:?} is not a valid FQDN: lower-case labels of a-z, 0-9 and '-', separated by dots");
    }
    if let Some(c) = &cfg {
        if !fqdn.ends_with(&format!(".{}", c.domain)) {
            anyhow::bail!("{fqdn:?} is not under the DC's domain {:?}", c.domain);
        }
        if c.nodes.iter().any(|n| n.fqdn == fqdn) {
            anyhow::bail!(
                "{fqdn:?} already has a [[node]] entry in {}",
                config.unwrap_or_default().display()
            );
        }
    }
    let dc = dc
        .or_else(|| {
            cfg.as_ref()
                .map(|c| c.listen)
                .filter(|l| !l.ip().is_unspecified())
        })
        .map_or_else(|| "<the DC's address>:7710".to_owned(), |a| a.to_string());
    let key = ntm_ops::keys::generate()?;
    let key_line = match &key_file {
        Some(path) => {
            ntm_ops::keys::write_private(path, &format!("{key}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            format!("key_file = {:?}", path.display().to_string())
        }
        None => format!("key = \"{key}\""),
    };
    println!("# 1. Add to the DC's configuration, then reload it (systemctl reload ntm-dc):");
    println!("[[node]]\nfqdn = \"{fqdn}\"\n{key_line}\n");
    println!("# 2a. A software node (ntm-node) registering this FQDN: in its configuration");
    println!("fqdn = \"{fqdn}\"\n{key_line}\ndc = \"{dc}\"\n");
    println!("# 2b. Or an adapter (ntma) serving a GN with this FQDN: its [dc] table");
    println!("[dc]\naddress = \"{dc}\"\nfqdn = \"{fqdn}\"\n{key_line}");
    if key_file.is_some() {
        println!("\n# The key file is mode 0600: copy it to the node as well (key_file paths are relative to the configuration's directory).");
    }
    Ok(())
}

/// `ntm-dc status`: the socket from `--socket`, the configuration or the default.
fn status(a: &ntm_ops::cli::StatusArgs) -> Result<()> {
    let path = a.socket(ntm_dc::config::DEFAULT_STATUS_SOCKET, |c| {
        Ok(config_text(c)?.status_socket)
    })?;
    a.print(&path, "ntm-dc", Status::render)
}

fn start(args: Args) -> Result<()> {
    let path = args.config.clone().context("--config is required")?;
    let mut config = Config::load(&path)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let settings = config
        .validate()
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    let private = if config.holds_inline_key() {
        ntm_ops::keys::check_private(&path).err()
    } else {
        None
    };
    if args.check {
        if let Some(e) = &private {
            eprintln!("ntm-dc: warning: {e}; ntm-dc refuses to start with it");
        }
        println!(
            "{}: OK ({} nodes, {} relays, VIP pool {}, listen {}, tunnel suite {} {})",
            path.display(),
            settings.nodes.len(),
            settings.relays.len(),
            settings.pool,
            settings.listen,
            u8::from(settings.tunnel_suite),
            settings.tunnel_suite.name()
        );
        return Ok(());
    }
    if let Some(e) = private {
        return Err(e.into());
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(config, settings, path, args.listen))
}

/// SIGHUP: the configuration read again (with the command line's
/// `--listen`), checked as at start, and applied.
fn reload(
    dc: &mut Coordinator,
    path: &std::path::Path,
    listen: Option<SocketAddrV4>,
) -> Result<ntm_dc::Reloaded> {
    let mut config = Config::load(path)?;
    if let Some(l) = listen {
        config.listen = l;
    }
    if config.holds_inline_key() {
        ntm_ops::keys::check_private(path)?;
    }
    Ok(dc.reload(&config)?)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn run(
    config: Config,
    settings: Settings,
    path: PathBuf,
    listen: Option<SocketAddrV4>,
) -> Result<()> {
    let socket = UdpSocket::bind(settings.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another ntm-dc running there, or is the address not on this host?",
            settings.listen
        )
    })?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("reading random bytes for the tunnel-key RNG: {e}"))?;
    let mut dc = Coordinator::new(&config, Instant::now(), unix_nanos(), seed)?;
    tracing::info!(
        listen = %socket.local_addr()?,
        nodes = settings.nodes.len(),
        relays = settings.relays.len(),
        pool = %settings.pool,
        tunnel_suite = %settings.tunnel_suite.name(),
        "ntm-dc listening"
    );
    let status_listener = tokio::net::UnixListener::from_std(ntm_ops::unix::bind(
        &settings.status_socket,
        "status_socket",
    )?)
    .context("status socket")?;
    let _socket_file = ntm_ops::unix::SocketFile(settings.status_socket.clone());
    let metrics = match settings.metrics.listen {
        Some(addr) => Some(ntm_ops::metrics::bind(addr).await?),
        None => None,
    };
    tracing::info!(status = %settings.status_socket.display(), metrics = ?settings.metrics.listen, "status and metrics");
    let started = Instant::now();
    let mut driver = DriverStats::default();
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut watchdog = ntm_ops::notify::watchdog_timer();
    ntm_ops::notify::ready(&format!("coordinating on {}", settings.listen));
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut stats = settings
        .stats_interval
        .map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
    let mut rx = vec![0u8; MAX_DATAGRAM_LEN];
    let mut tx = vec![0u8; MAX_SIGNALING_LEN];
    let mut send_errors = 0u64;
    loop {
        while let Some(t) = dc.poll_transmit(Instant::now(), &mut tx) {
            if let Err(e) = socket.send_to(&tx[..t.len], t.dst).await {
                send_errors += 1;
                tracing::debug!(dst = %t.dst, error = %e, "send failed");
            }
        }
        let deadline = dc.poll_timeout();
        tokio::select! {
            r = socket.recv_from(&mut rx) => match r {
                Ok((n, SocketAddr::V4(from))) => {
                    let _ = dc.handle(Instant::now(), from, &rx[..n]);
                }
                // The socket is IPv4; nothing else arrives.
                Ok((_, SocketAddr::V6(_))) => {}
                Err(e) => tracing::warn!(error = %e, "receive failed"),
            },
            _ = sleep_until(deadline) => dc.handle_timeout(Instant::now()),
            _ = tick(&mut stats) => tracing::info!(send_errors, "stats: {}", dc.stats_line()),
            r = status_listener.accept() => match r {
                Ok((mut stream, _)) => {
                    driver.uptime_secs = started.elapsed().as_secs_f64();
                    driver.send_errors = send_errors;
                    let body = serde_json::to_vec(&Status::of(&dc, Instant::now(), driver)).unwrap_or_default();
                    tokio::spawn(async move {
                        let _ = stream.write_all(&body).await;
                        let _ = stream.shutdown().await;
                    });
                }
                Err(e) => tracing::debug!(error = %e, "status socket accept error"),
            },
            r = ntm_ops::metrics::accept(&metrics) => match r {
                Ok(stream) => {
                    driver.uptime_secs = started.elapsed().as_secs_f64();
                    driver.send_errors = send_errors;
                    let st = Status::of(&dc, Instant::now(), driver);
                    ntm_ops::metrics::respond(stream, st.metrics(dc.settings().metrics.max_tunnel_labels));
                }
                Err(e) => tracing::debug!(error = %e, "metrics accept error"),
            },
            _ = hup.recv() => {
                ntm_ops::notify::reloading();
                match reload(&mut dc, &path, listen) {
                    Ok(r) => {
                        driver.reloads += 1;
                        stats = dc
                            .settings()
                            .stats_interval
                            .map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
                        tracing::info!("configuration reloaded: {r}");
                    }
                    Err(e) => {
                        driver.reloads_refused += 1;
                        tracing::error!("reload refused, running on unchanged: {e:#}");
                    }
                }
                ntm_ops::notify::ready(&format!("coordinating on {}", dc.settings().listen));
            },
            () = ntm_ops::notify::tick(&mut watchdog) => ntm_ops::notify::ping(),
            _ = usr1.recv() => tracing::info!(send_errors, "stats: {}", dc.stats_line()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    ntm_ops::notify::stopping();
    tracing::info!(send_errors, "stopping; stats: {}", dc.stats_line());
    Ok(())
}
