//! `ntm-rs`: a thin tokio driver around [`ntm_rs::Relay`].

use std::io::IsTerminal;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use ntm_proto::wire::{MAX_DATAGRAM_LEN, MAX_SIGNALING_LEN};
use ntm_rs::{Config, Relay, Verdict};
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
/// Logs go to stderr; choose what with RUST_LOG (default `info`, e.g.
/// RUST_LOG=ntm_rs=trace shows every drop). SIGUSR1 logs a statistics
/// line; SIGTERM or SIGINT stops it.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The configuration file (TOML; see ntm-rs/ntm-rs.example.toml).
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
            eprintln!("ntm-rs: {e:#}");
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
            "{}: OK (RS id {}, listen {}, max_bindings {})",
            args.config.display(),
            settings.id,
            settings.listen,
            settings.max_bindings
        );
        return Ok(());
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
    tracing::info!(listen = %socket.local_addr()?, id = rs.settings().id, max_bindings = rs.settings().max_bindings, "ntm-rs listening");
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
            _ = usr1.recv() => tracing::info!(send_errors, "stats: {}", rs.stats_line()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(send_errors, "stopping; stats: {}", rs.stats_line());
    Ok(())
}
