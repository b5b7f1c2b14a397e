//! `ntm-dc`: a thin tokio driver around [`ntm_dc::Coordinator`].

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use ntm_dc::config::StoreKind;
use ntm_dc::store::{EtcdOptions, EtcdStore};
use ntm_dc::{Config, Coordinator, DcStore, MemoryStore, RedbStore, Status};
use ntm_ops::cli::{Identity, Loaded, ServerArgs, ServerCli};
use ntm_ops::metrics::Scrape;
use ntm_ops::server::{DriverStats, Endpoints, Machine};
use ntm_proto::wire::{MAX_DATAGRAM_LEN, MAX_SIGNALING_LEN};

/// Who the daemon is: its name, version and description (`--help`, the
/// man page).
const IDENTITY: Identity = Identity {
    name: "ntm-dc",
    version: env!("CARGO_PKG_VERSION"),
    status_socket: ntm_dc::config::DEFAULT_STATUS_SOCKET,
    about: "ntm-dc: the NTMobile Direction Coordinator.\n\n\
     Registers nodes, hands out VIPs from a pool, keeps registrations alive, \
     detects NAT and directs tunnels between nodes (directly, in reverse, or \
     through a relay server), as docs/protocol.md (wire version 2) §5 \
     describes. Every tunnel gets the configuration's `tunnel_suite`: \
     2 = AES-256-GCM (default), 1 = HMAC-SHA256-128 (authentication only). \
     Replayed signaling is dropped and counted (`replay` in the drops).\n\n\
     Logs go to stderr (--log-format json: one JSON object per line); choose \
     what with RUST_LOG (default `info`, e.g. RUST_LOG=ntm_dc=debug shows \
     every drop). `ntm-dc status` shows registrations, directions, relay \
     bindings and counters over the status socket; with `[metrics] listen` \
     set it serves Prometheus metrics on GET /metrics. SIGHUP reloads the \
     configuration: nodes and relays are added, removed and re-keyed while \
     unchanged nodes keep their registrations and tunnels. Under systemd \
     (Type=notify) it reports ready and reloading and pings the watchdog. \
     SIGUSR1 logs a statistics line; SIGTERM or SIGINT stops it. It needs no \
     privileges (run it as an unprivileged user).\n\n\
     Registrations, VIP leases, replay marks and its tunnel id and sequence \
     counters survive a restart in a redb file (`[store]`, by default \
     /var/lib/ntm-dc/dc.redb; the directory must exist and be writable): \
     nodes stay registered, and nothing recorded before the restart can be \
     replayed to it. With `[store] kind = \"etcd\"` several DCs share them \
     through etcd (docs/deploy.md, \"Several DCs on etcd\").",
};

type Args = ServerCli<Cmd>;

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a new random key (K_node or K_rs: 64 hex digits).
    Keygen,
    /// Provision a node: print the DC's [[node]] entry for FQDN with a new
    /// key, and the matching snippet for the node's (ntm-node) or the
    /// adapter's (ntma [[gn]]) configuration.
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
    let args: Args = ntm_ops::cli::parse::<Args, Config>(Some(&IDENTITY));
    let r = match args.command {
        Some(Cmd::Keygen) => ntm_ops::keys::generate().map(|k| println!("{k}")),
        Some(Cmd::AddNode {
            fqdn,
            dc,
            config,
            key_file,
        }) => add_node(&fqdn, dc, config, key_file),
        Some(Cmd::Status(a)) => a.run(&IDENTITY, |c: Config| c.status_socket, Status::render),
        None => start(&args.server),
    };
    ntm_ops::cli::exit(IDENTITY.name, r)
}

fn add_node(
    fqdn: &str,
    dc: Option<SocketAddrV4>,
    config: Option<PathBuf>,
    key_file: Option<PathBuf>,
) -> Result<()> {
    let cfg = (config.as_deref())
        .map(ntm_ops::config::parse_file::<Config>)
        .transpose()?;
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
    println!(
        "# 2b. Or an adapter (ntma) serving a GN with this FQDN: its [dc] table and a [[gn]] entry"
    );
    println!("[dc]\naddress = \"{dc}\"\n\n[[gn]]\nfqdn = \"{fqdn}\"\n{key_line}");
    if key_file.is_some() {
        println!("\n# The key file is mode 0600: copy it to the node as well (key_file paths are relative to the configuration's directory).");
    }
    Ok(())
}

fn start(args: &ServerArgs) -> Result<()> {
    let listen = args.listen;
    let loaded = args.daemon.start(
        "ntm-dc",
        |c| with_listen(c, listen),
        |s| {
            format!(
                "{} nodes, {} relays, VIP pool {}, listen {}, tunnel suite {} {}",
                s.nodes.len(),
                s.relays.len(),
                s.pool,
                s.listen,
                u8::from(s.tunnel_suite),
                s.tunnel_suite.name()
            )
        },
    )?;
    match loaded {
        Some(l) => ntm_ops::cli::block_on(run(l, listen)),
        None => Ok(()),
    }
}

/// The command line's `--listen` in place of the configuration's.
fn with_listen(c: &mut Config, listen: Option<SocketAddrV4>) {
    if let Some(l) = listen {
        c.listen = l;
    }
}

async fn run(loaded: Loaded<Config>, listen: Option<SocketAddrV4>) -> Result<()> {
    // The store first: a start that cannot keep state fails before it
    // takes the port.
    let s = &loaded.settings;
    match (s.store.kind, &s.store.path, &s.store.etcd) {
        (StoreKind::Redb, Some(path), _) => {
            let store = open_store(path)?;
            run_on(loaded, listen, store).await
        }
        (StoreKind::Etcd, _, Some(e)) => {
            let opts = EtcdOptions {
                endpoints: e.endpoints.clone(),
                prefix: e.prefix.clone(),
                dc_name: e.dc_name.clone(),
                ttl: s.keepalive * ntm_dc::coordinator::MISSED_INTERVALS,
            };
            tracing::info!(endpoints = ?e.endpoints, prefix = %e.prefix, dc_name = %e.dc_name, "opening the etcd store");
            let store = EtcdStore::open(opts, Instant::now(), ntm_ops::server::unix_nanos())?;
            run_on(loaded, listen, store).await
        }
        _ => {
            tracing::warn!("[store] kind = \"memory\": registrations and replay marks are lost at every restart");
            run_on(loaded, listen, MemoryStore::new()).await
        }
    }
}

/// The redb store at `path`, with the operator's fix in the error.
fn open_store(path: &std::path::Path) -> Result<RedbStore> {
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    if !dir.is_dir() {
        anyhow::bail!(
            "the store directory {} does not exist: create it, owned by the user ntm-dc runs as and mode 0700 (under systemd: StateDirectory=ntm-dc), or set [store] state_dir or path",
            dir.display()
        );
    }
    Ok(RedbStore::open(
        path,
        Instant::now(),
        ntm_ops::server::unix_nanos(),
    )?)
}

async fn run_on<S: DcStore>(
    loaded: Loaded<Config>,
    listen: Option<SocketAddrV4>,
    store: S,
) -> Result<()> {
    let s = &loaded.settings;
    let ends = Endpoints::bind("ntm-dc", s.listen, &s.status_socket, s.metrics.listen).await?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("reading random bytes for the tunnel-key RNG: {e}"))?;
    let now = Instant::now();
    let dc = Coordinator::with_store(
        &loaded.config,
        store,
        now,
        ntm_ops::server::unix_nanos(),
        seed,
    )?;
    tracing::info!(
        store = ?s.store.path,
        restored = %dc.restored(),
        "store opened"
    );
    tracing::info!(
        listen = %ends.socket.local_addr()?,
        nodes = s.nodes.len(),
        relays = s.relays.len(),
        pool = %s.pool,
        tunnel_suite = %s.tunnel_suite.name(),
        status = %s.status_socket.display(),
        metrics = ?s.metrics.listen,
        "ntm-dc listening"
    );
    let dc = Dc {
        dc,
        path: loaded.path,
        listen,
    };
    ntm_ops::server::serve(dc, ends, MAX_DATAGRAM_LEN, MAX_SIGNALING_LEN).await
}

/// The coordinator as the driver sees it, with what SIGHUP reloads from.
struct Dc<S: DcStore> {
    dc: Coordinator<S>,
    /// The configuration file.
    path: PathBuf,
    /// The command line's `--listen`, kept across reloads.
    listen: Option<SocketAddrV4>,
}

impl<S: DcStore> Machine for Dc<S> {
    type Status = Status;
    const RELOADS: bool = true;

    ntm_ops::delegate_to_machine!(dc);

    fn handle(&mut self, now: Instant, from: SocketAddrV4, d: &[u8]) -> Option<SocketAddrV4> {
        // Drops are counted by the coordinator; the answers wait for the
        // burst's commit.
        let _ = self.dc.receive(now, from, d);
        None
    }

    /// One store transaction for the whole burst (group commit); a failure
    /// is logged and counted by the coordinator.
    fn commit(&mut self) {
        let _ = self.dc.commit();
    }

    fn ready_status(&self) -> String {
        format!("coordinating on {}", self.dc.settings().listen)
    }

    fn status(&self, d: DriverStats) -> Status {
        Status::of(&self.dc, Instant::now(), d)
    }

    fn metrics(&self, status: &Status) -> Scrape {
        status.metrics(self.dc.settings().metrics.max_tunnel_labels)
    }

    /// SIGHUP: the configuration read again (with the command line's
    /// `--listen`), checked as at start, and applied.
    fn reload(&mut self) -> Result<String> {
        let mut config = Config::load(&self.path)?;
        with_listen(&mut config, self.listen);
        if let Some(e) = ntm_ops::config::exposed_key(&config, &self.path) {
            return Err(e.into());
        }
        Ok(self.dc.reload(&config)?.to_string())
    }
}
