//! `ntm-rs`: a thin tokio driver around [`ntm_rs::Relay`].

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use ntm_ops::logging::LogFormat;
use ntm_proto::wire::{MAX_DATAGRAM_LEN, MAX_SIGNALING_LEN};
use ntm_rs::{Config, Relay, Status, Verdict};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Interval;

/// ntm-rs: the NTMobile Relay Server.
///
/// Carries tunnels between nodes behind different NATs: the DC opens a
/// binding per tunnel (RELAY_DIR), both ends bind (RELAY_BIND), and the
/// relay forwards the tunnel's datagrams between the two bound addresses,
/// unchanged, dropping everything else (shared/PROTOCOL.md, wire version 2,
/// §5). It holds no tunnel key: encrypted (suite 2) and authenticated-only
/// (suite 1) tunnels are relayed alike. Replayed RELAY_DIRs and RELAY_BINDs
/// are dropped and counted (`replay` in the drops).
///
/// Logs go to stderr (--log-format json: one JSON object per line); choose
/// what with RUST_LOG (default `info`, e.g. RUST_LOG=ntm_rs=trace shows
/// every drop). `ntm-rs status` shows the bindings and counters over the
/// status socket; with `[metrics] listen` set it serves Prometheus metrics
/// on GET /metrics. Under systemd (Type=notify) it reports ready and pings
/// the watchdog. SIGUSR1 logs a statistics line; SIGTERM or SIGINT stops it.
/// It needs no privileges (run it as an unprivileged user).
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// The configuration file (TOML; see ntm-rs/ntm-rs.example.toml).
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
    /// Show a running relay's bindings and counters (over its status socket).
    Status(ntm_ops::cli::StatusArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_man {
        return ntm_ops::cli::print_man(Args::command());
    }
    let r = match args.command {
        Some(Cmd::Status(a)) => status(&a),
        None => {
            ntm_ops::logging::init(args.log_format, "info");
            start(args)
        }
    };
    ntm_ops::cli::exit("ntm-rs", r)
}

/// `ntm-rs status`: the socket from `--socket`, the configuration (read
/// without its key) or the default.
fn status(a: &ntm_ops::cli::StatusArgs) -> Result<()> {
    let path = a.socket(ntm_rs::config::DEFAULT_STATUS_SOCKET, |c| {
        let text =
            std::fs::read_to_string(c).with_context(|| format!("cannot read {}", c.display()))?;
        Ok(Config::from_toml(&text)?.status_socket)
    })?;
    a.print(&path, "ntm-rs", Status::render)
}

fn start(args: Args) -> Result<()> {
    let path = args.config.context("--config is required")?;
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
            eprintln!("ntm-rs: warning: {e}; ntm-rs refuses to start with it");
        }
        println!(
            "{}: OK (RS id {}, listen {}, max_bindings {})",
            path.display(),
            settings.id,
            settings.listen,
            settings.max_bindings
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
        .block_on(run(config))
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

async fn run(config: Config) -> Result<()> {
    let mut rs = Relay::new(&config, Instant::now(), unix_nanos())?;
    let listen = rs.settings().listen;
    let socket = UdpSocket::bind(listen).await.with_context(|| {
        format!(
            "cannot listen on {listen}: is another ntm-rs running there, or is the address not on this host?"
        )
    })?;
    let status_path = rs.settings().status_socket.clone();
    let status_listener =
        tokio::net::UnixListener::from_std(ntm_ops::unix::bind(&status_path, "status_socket")?)
            .context("status socket")?;
    let _socket_file = ntm_ops::unix::SocketFile(status_path.clone());
    let metrics = match rs.settings().metrics.listen {
        Some(addr) => Some(ntm_ops::metrics::bind(addr).await?),
        None => None,
    };
    let started = Instant::now();
    tracing::info!(
        listen = %socket.local_addr()?,
        id = rs.settings().id,
        max_bindings = rs.settings().max_bindings,
        status = %status_path.display(),
        metrics = ?rs.settings().metrics.listen,
        "ntm-rs listening"
    );
    ntm_ops::notify::ready(&format!("relaying on {listen}"));
    let mut watchdog = ntm_ops::notify::watchdog_timer();
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut stats = rs
        .settings()
        .stats_interval
        .map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
    let mut rx = vec![0u8; MAX_DATAGRAM_LEN];
    let mut tx = vec![0u8; MAX_SIGNALING_LEN];
    let mut send_errors = 0u64;
    loop {
        while let Some(t) = rs.poll_transmit(Instant::now(), &mut tx) {
            if let Err(e) = socket.send_to(&tx[..t.len], t.dst).await {
                send_errors += 1;
                tracing::debug!(dst = %t.dst, error = %e, "send failed");
            }
        }
        let deadline = rs.poll_timeout();
        tokio::select! {
            r = socket.recv_from(&mut rx) => match r {
                Ok((n, SocketAddr::V4(from))) => {
                    if let Ok(Verdict::Forward(to)) = rs.handle(Instant::now(), from, &rx[..n]) {
                        if let Err(e) = socket.send_to(&rx[..n], to).await {
                            send_errors += 1;
                            tracing::debug!(dst = %to, error = %e, "forward failed");
                        }
                    }
                }
                // The socket is IPv4; nothing else arrives.
                Ok((_, SocketAddr::V6(_))) => {}
                Err(e) => tracing::warn!(error = %e, "receive failed"),
            },
            _ = sleep_until(deadline) => rs.handle_timeout(Instant::now()),
            _ = tick(&mut stats) => tracing::info!(send_errors, "stats: {}", rs.stats_line()),
            r = status_listener.accept() => match r {
                Ok((mut stream, _)) => {
                    let st = Status::of(&rs, started.elapsed().as_secs_f64(), send_errors);
                    let body = serde_json::to_vec(&st).unwrap_or_default();
                    tokio::spawn(async move {
                        let _ = stream.write_all(&body).await;
                        let _ = stream.shutdown().await;
                    });
                }
                Err(e) => tracing::debug!(error = %e, "status socket accept error"),
            },
            r = ntm_ops::metrics::accept(&metrics) => match r {
                Ok(stream) => {
                    let st = Status::of(&rs, started.elapsed().as_secs_f64(), send_errors);
                    ntm_ops::metrics::respond(stream, st.metrics());
                }
                Err(e) => tracing::debug!(error = %e, "metrics accept error"),
            },
            () = ntm_ops::notify::tick(&mut watchdog) => ntm_ops::notify::ping(),
            _ = usr1.recv() => tracing::info!(send_errors, "stats: {}", rs.stats_line()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    ntm_ops::notify::stopping();
    tracing::info!(send_errors, "stopping; stats: {}", rs.stats_line());
    Ok(())
}
