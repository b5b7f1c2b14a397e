//! `ntm-dc`: a thin tokio driver around [`ntm_dc::Coordinator`].

use std::io::IsTerminal;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use ntm_dc::{Config, Coordinator, Settings};
use ntm_proto::wire::{MAX_DATAGRAM_LEN, MAX_SIGNALING_LEN};
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
/// Logs go to stderr; choose what with RUST_LOG (default `info`, e.g.
/// RUST_LOG=ntm_dc=debug shows every drop). SIGUSR1 logs a statistics line;
/// SIGTERM or SIGINT stops it.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The configuration file (TOML; see ntm-dc/ntm-dc.example.toml).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Listen on this address instead of the configuration's `listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddrV4>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Plain text in log files, so that they can be searched.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole chain on one line, no backtrace.
            eprintln!("ntm-dc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> Result<()> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let settings = config
        .validate()
        .with_context(|| format!("invalid configuration {}", args.config.display()))?;
    if args.check {
        println!(
            "{}: OK ({} nodes, {} relays, VIP pool {}, listen {}, tunnel suite {} {})",
            args.config.display(),
            settings.nodes.len(),
            settings.relays.len(),
            settings.pool,
            settings.listen,
            u8::from(settings.tunnel_suite),
            settings.tunnel_suite.name()
        );
        return Ok(());
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(config, settings))
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

async fn run(config: Config, settings: Settings) -> Result<()> {
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
            _ = usr1.recv() => tracing::info!(send_errors, "stats: {}", dc.stats_line()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(send_errors, "stopping; stats: {}", dc.stats_line());
    Ok(())
}
