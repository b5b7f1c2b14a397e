//! `ntm-rs`: a thin tokio driver around [`ntm_rs::Relay`].

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Subcommand;
use ntm_ops::cli::{Identity, Loaded, ServerArgs, ServerCli};
use ntm_ops::metrics::Scrape;
use ntm_ops::server::{DriverStats, Endpoints, Machine};
use ntm_proto::wire::{MAX_DATAGRAM_LEN, MAX_SIGNALING_LEN};
use ntm_rs::{Config, Relay, Status, Verdict};

/// Who the daemon is: its name, version and description (`--help`, the
/// man page).
const IDENTITY: Identity = Identity {
    name: "ntm-rs",
    version: env!("CARGO_PKG_VERSION"),
    status_socket: ntm_rs::config::DEFAULT_STATUS_SOCKET,
    about: "ntm-rs: the NTMobile Relay Server.\n\n\
     Carries tunnels between nodes behind different NATs: the DC opens a \
     binding per tunnel (RELAY_DIR), both ends bind (RELAY_BIND), and the \
     relay forwards the tunnel's datagrams between the two bound addresses, \
     unchanged, dropping everything else (docs/protocol.md, wire version 2, \
     §5). It holds no tunnel key: encrypted (suite 2) and authenticated-only \
     (suite 1) tunnels are relayed alike. Replayed RELAY_DIRs and RELAY_BINDs \
     are dropped and counted (`replay` in the drops).\n\n\
     Logs go to stderr (--log-format json: one JSON object per line); choose \
     what with RUST_LOG (default `info`, e.g. RUST_LOG=ntm_rs=trace shows \
     every drop). `ntm-rs status` shows the bindings and counters over the \
     status socket; with `[metrics] listen` set it serves Prometheus metrics \
     on GET /metrics. Under systemd (Type=notify) it reports ready and pings \
     the watchdog. SIGUSR1 logs a statistics line; SIGTERM or SIGINT stops it. \
     It needs no privileges (run it as an unprivileged user).",
};

type Args = ServerCli<Cmd>;

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show a running relay's bindings and counters (over its status socket).
    Status(ntm_ops::cli::StatusArgs),
}

fn main() -> ExitCode {
    let args: Args = ntm_ops::cli::parse::<Args, Config>(Some(&IDENTITY));
    let r = match args.command {
        Some(Cmd::Status(a)) => a.run(&IDENTITY, |c: Config| c.status_socket, Status::render),
        None => start(&args.server),
    };
    ntm_ops::cli::exit(IDENTITY.name, r)
}

fn start(args: &ServerArgs) -> Result<()> {
    let loaded = args.daemon.start(
        "ntm-rs",
        |c: &mut Config| {
            if let Some(l) = args.listen {
                c.listen = l;
            }
        },
        |s| {
            format!(
                "RS id {}, listen {}, max_bindings {}",
                s.id, s.listen, s.max_bindings
            )
        },
    )?;
    match loaded {
        Some(l) => ntm_ops::cli::block_on(run(l)),
        None => Ok(()),
    }
}

async fn run(loaded: Loaded<Config>) -> Result<()> {
    let rs = Relay::new(
        &loaded.config,
        Instant::now(),
        ntm_ops::server::unix_nanos(),
    )?;
    let s = rs.settings();
    let ends = Endpoints::bind("ntm-rs", s.listen, &s.status_socket, s.metrics.listen).await?;
    tracing::info!(
        listen = %ends.socket.local_addr()?,
        id = s.id,
        max_bindings = s.max_bindings,
        status = %s.status_socket.display(),
        metrics = ?s.metrics.listen,
        "ntm-rs listening"
    );
    ntm_ops::server::serve(Rs(rs), ends, MAX_DATAGRAM_LEN, MAX_SIGNALING_LEN).await
}

/// The relay as the driver sees it.
struct Rs(Relay);

impl Machine for Rs {
    type Status = Status;

    ntm_ops::delegate_to_machine!(0);

    fn handle(&mut self, now: Instant, from: SocketAddrV4, d: &[u8]) -> Option<SocketAddrV4> {
        match self.0.handle(now, from, d) {
            Ok(Verdict::Forward(to)) => Some(to),
            _ => None,
        }
    }

    fn ready_status(&self) -> String {
        format!("relaying on {}", self.0.settings().listen)
    }

    fn status(&self, d: DriverStats) -> Status {
        Status::of(&self.0, d.uptime_secs, d.send_errors)
    }

    fn metrics(&self, status: &Status) -> Scrape {
        status.metrics()
    }
}
