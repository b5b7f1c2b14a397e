//! The DC's TOML configuration: what an operator writes, and its checks.
//!
//! ```toml
//! listen = "0.0.0.0:7710"
//! domain = "ntm.test"
//! vip_pool = "100.64.0.0/10"
//! tunnel_suite = 2   # 2: AES-256-GCM (default), 1: HMAC-SHA256-128
//!
//! [[node]]
//! fqdn = "cn.ntm.test"
//! key = "<64 hex digits>"
//!
//! [[relay]]
//! id = 1
//! addr = "198.18.0.3:7720"
//! key = "<64 hex digits>"
//! ```
//!
//! [`Config`] is the serde form (tests and the demo build one and write it
//! with [`Config::to_toml`]); [`Config::validate`] turns it into
//! [`Settings`], or says exactly which line is wrong.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ntm_ops::config;
use ntm_ops::metrics::MetricsConfig;
use ntm_proto::wire::validate_fqdn;
use ntm_proto::{Key, Suite};
use serde::{Deserialize, Serialize};

use crate::pool::VipPool;

/// The DC's UDP port (§1).
pub const DEFAULT_PORT: u16 = 7710;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddrV4,
    /// The NTM domain: every node FQDN must lie under it.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// The VIP pool in CIDR form. Its network and broadcast addresses and its
    /// first address (the adapters' router address) are never assigned.
    #[serde(default = "default_pool")]
    pub vip_pool: String,
    /// KEEPALIVE interval told to nodes; a registration lapses after three
    /// missed intervals.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u32,
    /// Registration lifetime (LIFETIME_SECS of REG_RESP): nodes re-register
    /// before it ends, and a node's VIP stays reserved for its FQDN until it
    /// ends, even when the node went quiet.
    #[serde(default = "default_lease")]
    pub lease_secs: u32,
    /// Idle lifetime of a tunnel (LIFETIME_SECS of ROUTE_DIR and RELAY_DIR).
    #[serde(default = "default_tunnel_lifetime")]
    pub tunnel_lifetime_secs: u32,
    /// The suite of every tunnel this DC directs (the SUITE TLV of
    /// ROUTE_DIR, §2.1): 2 = AES-256-GCM (encrypted and authenticated, the
    /// default), 1 = HMAC-SHA256-128 (authenticated only, plaintext).
    /// Signaling with the DC and the RS is always suite 1.
    #[serde(default = "default_tunnel_suite")]
    pub tunnel_suite: u8,
    /// Most leases held at once; REG_REQ beyond gets EXHAUSTED.
    #[serde(default = "default_max_registrations")]
    pub max_registrations: usize,
    /// Most direction requests remembered at once (for idempotent answers
    /// and ROUTE_DIR retransmission); DIR_REQ beyond gets EXHAUSTED. Each
    /// requesting node is also held to
    /// [`crate::coordinator::MAX_DIRECTIONS_PER_NODE`] (§5, not configurable).
    #[serde(default = "default_max_directions")]
    pub max_directions: usize,
    /// The status socket (`ntm-dc status`), mode 0660.
    #[serde(default = "default_status_socket")]
    pub status_socket: PathBuf,
    /// Seconds between two statistics log lines; 0 turns them off (SIGUSR1
    /// still prints one).
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: u64,
    /// Provisioned nodes: `[[node]]` tables.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeEntry>,
    /// Relay servers: `[[relay]]` tables.
    #[serde(default, rename = "relay")]
    pub relays: Vec<RelayEntry>,
    /// `[metrics]`: the Prometheus endpoint (off unless `listen` is set).
    #[serde(default, skip_serializing_if = "MetricsConfig::is_default")]
    pub metrics: MetricsConfig,
    /// `[store]`: where registrations, replay marks and reserved counters
    /// survive a restart.
    #[serde(default, skip_serializing_if = "StoreConfig::is_default")]
    pub store: StoreConfig,
}

/// Which [`crate::store::DcStore`] the daemon runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// [`crate::store::RedbStore`]: durable in a file (the default).
    #[default]
    Redb,
    /// [`crate::store::MemoryStore`]: forgotten at every restart (nodes
    /// re-register, and what was recorded before may be replayed once).
    Memory,
    /// [`crate::store::EtcdStore`]: shared with other DCs through etcd
    /// (`endpoints`, `prefix`, `dc_name`).
    Etcd,
}

/// The `[store]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `"redb"` (default) or `"memory"`.
    #[serde(default)]
    pub kind: StoreKind,
    /// The DC's state directory (absolute), where a relative `path` lies.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The redb file: absolute, or relative to `state_dir`.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// etcd: its client URLs (`http://host:2379`), every member's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// etcd: the key prefix; DCs with the same prefix share registrations.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// etcd: this DC's name, unique among the DCs sharing the prefix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dc_name: String,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            kind: StoreKind::default(),
            state_dir: default_state_dir(),
            path: default_store_path(),
            endpoints: Vec::new(),
            prefix: default_prefix(),
            dc_name: String::new(),
        }
    }
}

/// The etcd prefix unless `[store] prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "/ntm";

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

impl StoreConfig {
    /// Whether every field has its default (the table is then not written).
    pub fn is_default(&self) -> bool {
        *self == StoreConfig::default()
    }

    /// A redb store in `dir` (tests and the testbed: one file per DC).
    pub fn redb_in(dir: &Path) -> StoreConfig {
        StoreConfig {
            state_dir: dir.to_owned(),
            ..StoreConfig::default()
        }
    }

    /// An etcd store at `endpoints` for the DC named `dc_name` (default
    /// prefix).
    pub fn etcd(endpoints: Vec<String>, dc_name: &str) -> StoreConfig {
        StoreConfig {
            kind: StoreKind::Etcd,
            endpoints,
            dc_name: dc_name.to_owned(),
            ..StoreConfig::default()
        }
    }

    /// The etcd settings checked.
    fn check_etcd(&self) -> Result<EtcdSettings, ConfigError> {
        let bad = |field: &'static str, value: &str, why: &str| ConfigError::BadStore {
            field,
            value: value.to_owned(),
            why: why.to_owned(),
        };
        if self.endpoints.is_empty() {
            return Err(bad(
                "endpoints",
                "",
                "is empty: list etcd's client URLs (example: [\"http://127.0.0.1:2379\"])",
            ));
        }
        for e in &self.endpoints {
            let rest = e.strip_prefix("http://").unwrap_or("");
            if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
                return Err(bad("endpoints", e, "is not an etcd client URL http://host:port (TLS is not supported: reach etcd over a private network)"));
            }
        }
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 63
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.dc_name) {
            return Err(bad("dc_name", &self.dc_name, "must name this DC among those sharing the etcd prefix: 1 to 63 of a-z, 0-9, '-' and '_', unique per DC (example: \"dc1\")"));
        }
        let p = &self.prefix;
        if !p.starts_with('/') || p.ends_with('/') || p.contains("//") {
            return Err(bad(
                "prefix",
                p,
                "must start with '/' and not end with one (example: \"/ntm\")",
            ));
        }
        Ok(EtcdSettings {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            dc_name: self.dc_name.clone(),
        })
    }

    /// The store checked: its kind and, for redb, its file.
    fn check(&self) -> Result<StoreSettings, ConfigError> {
        let bad = |field: &'static str, value: &Path, why: &str| ConfigError::BadStore {
            field,
            value: value.display().to_string(),
            why: why.to_owned(),
        };
        match self.kind {
            StoreKind::Memory => {
                return Ok(StoreSettings {
                    kind: self.kind,
                    path: None,
                    etcd: None,
                })
            }
            StoreKind::Etcd => {
                return Ok(StoreSettings {
                    kind: self.kind,
                    path: None,
                    etcd: Some(self.check_etcd()?),
                })
            }
            StoreKind::Redb => {}
        }
        if !self.state_dir.is_absolute() {
            return Err(bad(
                "state_dir",
                &self.state_dir,
                "must be an absolute directory (example: \"/var/lib/ntm-dc\")",
            ));
        }
        if self.path.as_os_str().is_empty()
            || self.path.ends_with("..")
            || self.path.file_name().is_none()
        {
            return Err(bad(
                "path",
                &self.path,
                "must name a file, absolute or relative to state_dir (example: \"dc.redb\")",
            ));
        }
        Ok(StoreSettings {
            kind: self.kind,
            path: Some(self.state_dir.join(&self.path)),
            etcd: None,
        })
    }
}

/// The etcd store's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// This DC's name.
    pub dc_name: String,
}

/// The store, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Which store.
    pub kind: StoreKind,
    /// The redb file; `None` for memory and etcd.
    pub path: Option<PathBuf>,
    /// The etcd settings, for etcd.
    pub etcd: Option<EtcdSettings>,
}

/// One `[[node]]` table: a node (or an adapter's GN) allowed to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Its FQDN, under `domain`.
    pub fqdn: String,
    /// `K_node`: 64 hex digits (or `key_file`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A file holding `K_node` (mode 0600), in place of `key`; relative to
    /// this file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A fixed VIP for this node (optional; otherwise one is chosen from the
    /// pool, the same one for the same FQDN across DC restarts unless the
    /// pool is crowded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
}

impl NodeEntry {
    /// An entry with the key in hex and no fixed VIP.
    pub fn new(fqdn: &str, key: &Key) -> NodeEntry {
        NodeEntry {
            fqdn: fqdn.to_owned(),
            key: key.to_hex(),
            key_file: None,
            vip: None,
        }
    }
}

/// One `[[relay]]` table: a relay server the DC may direct tunnels through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEntry {
    /// The RS id (the header id of DC-RS messages), as in the RS's own config.
    pub id: u32,
    /// Where nodes and the DC reach it (port 7720 by default).
    pub addr: SocketAddrV4,
    /// `K_rs`: 64 hex digits (or `key_file`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A file holding `K_rs` (mode 0600), in place of `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl RelayEntry {
    /// An entry with the key in hex.
    pub fn new(id: u32, addr: SocketAddrV4, key: &Key) -> RelayEntry {
        RelayEntry {
            id,
            addr,
            key: key.to_hex(),
            key_file: None,
        }
    }
}

/// The status socket unless `status_socket` says otherwise.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/ntm-dc/ntm-dc.sock";

fn default_status_socket() -> PathBuf {
    PathBuf::from(DEFAULT_STATUS_SOCKET)
}

/// The DC's state directory unless `[store] state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ntm-dc";

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_store_path() -> PathBuf {
    PathBuf::from("dc.redb")
}

fn default_listen() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)
}
fn default_domain() -> String {
    "ntm.test".into()
}
fn default_pool() -> String {
    "100.64.0.0/10".into()
}
fn default_keepalive() -> u32 {
    20
}
fn default_lease() -> u32 {
    600
}
fn default_tunnel_lifetime() -> u32 {
    180
}
fn default_tunnel_suite() -> u8 {
    Suite::Aes256Gcm.into()
}
fn default_max_registrations() -> usize {
    65_536
}
fn default_max_directions() -> usize {
    65_536
}
fn default_stats_interval() -> u64 {
    60
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: default_listen(),
            domain: default_domain(),
            vip_pool: default_pool(),
            keepalive_secs: default_keepalive(),
            lease_secs: default_lease(),
            tunnel_lifetime_secs: default_tunnel_lifetime(),
            tunnel_suite: default_tunnel_suite(),
            max_registrations: default_max_registrations(),
            max_directions: default_max_directions(),
            stats_interval_secs: default_stats_interval(),
            nodes: Vec::new(),
            relays: Vec::new(),
            status_socket: default_status_socket(),
            metrics: MetricsConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// What is wrong with a configuration; each message names the entry and
/// says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `vip_pool` is not a usable CIDR block.
    #[error("vip_pool = {pool:?}: {why} (example: \"100.64.0.0/10\")")]
    BadPool {
        /// The value.
        pool: String,
        /// What is wrong.
        why: String,
    },
    /// `domain` is not a valid DNS name.
    #[error("domain = {0:?} is not a valid name: lower-case labels of a-z, 0-9 and '-', separated by dots (example: \"ntm.test\")")]
    BadDomain(String),
    /// A node FQDN breaks the FQDN rules.
    #[error("[[node]] fqdn = {0:?} is not a valid FQDN: lower-case labels of 1-63 bytes of a-z, 0-9 and '-', at most 253 bytes, no trailing dot")]
    BadFqdn(String),
    /// A node FQDN is not under the domain.
    #[error("[[node]] fqdn = {fqdn:?} is not under domain {domain:?}: name it <host>.{domain} or change `domain`")]
    FqdnOutsideDomain {
        /// The FQDN.
        fqdn: String,
        /// The domain.
        domain: String,
    },
    /// Two node entries with one FQDN.
    #[error("[[node]] fqdn = {0:?} appears twice: keep one entry per node")]
    DuplicateFqdn(String),
    /// A key is not 64 hex digits.
    #[error("the key of {who} must be exactly 64 hex digits (32 bytes); generate one with `ntm-dc keygen`")]
    BadKey {
        /// Which entry.
        who: String,
    },
    /// A fixed VIP that cannot be assigned.
    #[error("[[node]] fqdn = {fqdn:?}: vip = {vip} {why}")]
    BadVip {
        /// The node.
        fqdn: String,
        /// The VIP.
        vip: Ipv4Addr,
        /// What is wrong.
        why: String,
    },
    /// Two relay entries with one id.
    #[error("[[relay]] id = {0} appears twice: every RS needs its own id")]
    DuplicateRelayId(u32),
    /// A relay entry that nobody could reach.
    #[error("[[relay]] id = {id}: {why}")]
    BadRelay {
        /// The RS id.
        id: u32,
        /// What is wrong.
        why: String,
    },
    /// A `[store]` setting that cannot work.
    #[error("[store] {field} = {value:?} {why}")]
    BadStore {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// No nodes at all.
    #[error(
        "no [[node]] entries: no node could register; add one [[node]] table (fqdn, key) per node"
    )]
    NoNodes,
    /// What every configuration can get wrong: the file, a key file, a number.
    #[error(transparent)]
    Common(#[from] config::Error),
}

/// A provisioned node, checked.
#[derive(Debug, Clone)]
pub struct NodeCred {
    /// Its FQDN.
    pub fqdn: String,
    /// `K_node`.
    pub key: Key,
    /// Its fixed VIP, if configured.
    pub vip: Option<Ipv4Addr>,
    /// Its node id: stable for the FQDN (see [`node_id_for`]), so
    /// that a restarted DC still knows which key a node's messages use.
    pub node_id: u32,
}

/// A relay server, checked.
#[derive(Debug, Clone)]
pub struct RelayCred {
    /// The RS id.
    pub id: u32,
    /// Its address.
    pub addr: SocketAddrV4,
    /// `K_rs`.
    pub key: Key,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddrV4,
    /// The NTM domain.
    pub domain: String,
    /// The VIP pool.
    pub pool: VipPool,
    /// KEEPALIVE interval.
    pub keepalive: Duration,
    /// Registration lifetime.
    pub lease: Duration,
    /// Tunnel idle lifetime, in seconds.
    pub tunnel_lifetime_secs: u32,
    /// The suite named in every ROUTE_DIR (1 or 2).
    pub tunnel_suite: Suite,
    /// Lease bound.
    pub max_registrations: usize,
    /// Direction bound.
    pub max_directions: usize,
    /// Statistics interval; `None` for none.
    pub stats_interval: Option<Duration>,
    /// Nodes, sorted by FQDN.
    pub nodes: Vec<NodeCred>,
    /// Relays, in configuration order.
    pub relays: Vec<RelayCred>,
    /// The status socket.
    pub status_socket: PathBuf,
    /// The metrics endpoint.
    pub metrics: MetricsConfig,
    /// The store.
    pub store: StoreSettings,
}

impl Config {
    /// Reads every `key_file` (relative to `base`, the configuration's
    /// directory) into its entry's `key`, refusing files others can read.
    fn read_key_files(&mut self, base: &Path) -> Result<(), ConfigError> {
        for n in &mut self.nodes {
            let who = format!("[[node]] fqdn = {:?}", n.fqdn);
            let key = ntm_ops::keys::resolve(&who, &n.key, n.key_file.as_deref(), base);
            n.key = key.map_err(config::Error::Key)?.0;
        }
        for r in &mut self.relays {
            let who = format!("[[relay]] id = {}", r.id);
            let key = ntm_ops::keys::resolve(&who, &r.key, r.key_file.as_deref(), base);
            r.key = key.map_err(config::Error::Key)?.0;
        }
        Ok(())
    }

    /// Whether some key is written in the file itself (which must then be
    /// private: [`ntm_ops::keys::check_private`]).
    pub fn holds_inline_key(&self) -> bool {
        self.nodes.iter().any(|n| n.key_file.is_none())
            || self.relays.iter().any(|r| r.key_file.is_none())
    }

    /// Check everything and produce the [`Settings`] the coordinator runs on.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let pool = VipPool::parse(&self.vip_pool).map_err(|why| ConfigError::BadPool {
            pool: self.vip_pool.clone(),
            why,
        })?;
        if validate_fqdn(self.domain.as_bytes()).is_err() {
            return Err(ConfigError::BadDomain(self.domain.clone()));
        }
        let tunnel_suite = self.check_timers_and_bounds()?;
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        let nodes = self.check_nodes(&pool)?;
        let relays = self.check_relays()?;
        let store = self.store.check()?;
        Ok(Settings {
            listen: self.listen,
            domain: self.domain.clone(),
            pool,
            keepalive: Duration::from_secs(self.keepalive_secs.into()),
            lease: Duration::from_secs(self.lease_secs.into()),
            tunnel_lifetime_secs: self.tunnel_lifetime_secs,
            tunnel_suite,
            max_registrations: self.max_registrations,
            max_directions: self.max_directions,
            stats_interval: config::interval(self.stats_interval_secs),
            nodes,
            relays,
            status_socket: self.status_socket.clone(),
            metrics: self.metrics.clone(),
            store,
        })
    }

    /// The intervals, the bounds and the tunnel suite.
    fn check_timers_and_bounds(&self) -> Result<Suite, ConfigError> {
        config::at_least_1("keepalive_secs", self.keepalive_secs.into())?;
        config::at_least_1("tunnel_lifetime_secs", self.tunnel_lifetime_secs.into())?;
        config::at_least_1("max_registrations", self.max_registrations as u64)?;
        config::at_least_1("max_directions", self.max_directions as u64)?;
        let tunnel_suite = Suite::from(self.tunnel_suite);
        if !matches!(tunnel_suite, Suite::HmacSha256_128 | Suite::Aes256Gcm) {
            return Err(config::Error::from(config::BadValue {
                field: "tunnel_suite",
                value: self.tunnel_suite.into(),
                why: "must be 2 (aes-256-gcm, the default) or 1 (hmac-sha256-128, authentication only)",
            })
            .into());
        }
        config::within(
            "lease_secs",
            self.lease_secs.into(),
            3 * u64::from(self.keepalive_secs)..=u64::MAX,
            "must be at least three keepalive_secs intervals",
        )?;
        Ok(tunnel_suite)
    }

    /// The `[[node]]` entries, sorted by FQDN, with their ids.
    fn check_nodes(&self, pool: &VipPool) -> Result<Vec<NodeCred>, ConfigError> {
        let suffix = format!(".{}", self.domain);
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut seen = HashSet::new();
        let mut fixed: HashMap<Ipv4Addr, &str> = HashMap::new();
        for n in &self.nodes {
            if validate_fqdn(n.fqdn.as_bytes()).is_err() {
                return Err(ConfigError::BadFqdn(n.fqdn.clone()));
            }
            if !n.fqdn.ends_with(&suffix) {
                return Err(ConfigError::FqdnOutsideDomain {
                    fqdn: n.fqdn.clone(),
                    domain: self.domain.clone(),
                });
            }
            if !seen.insert(n.fqdn.as_str()) {
                return Err(ConfigError::DuplicateFqdn(n.fqdn.clone()));
            }
            let key: Key = n.key.parse().map_err(|_| ConfigError::BadKey {
                who: format!("[[node]] fqdn = {:?}", n.fqdn),
            })?;
            if let Some(vip) = n.vip {
                check_fixed_vip(n, vip, pool, &mut fixed)?;
            }
            nodes.push(NodeCred {
                fqdn: n.fqdn.clone(),
                key,
                vip: n.vip,
                node_id: 0,
            });
        }
        if self.max_registrations as u64 > pool.usable() {
            tracing::debug!(
                max_registrations = self.max_registrations,
                usable = pool.usable(),
                "max_registrations exceeds the pool; the pool is the limit"
            );
        }
        nodes.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        assign_node_ids(&mut nodes);
        Ok(nodes)
    }

    /// The `[[relay]]` entries, in configuration order.
    fn check_relays(&self) -> Result<Vec<RelayCred>, ConfigError> {
        let mut relays = Vec::with_capacity(self.relays.len());
        let mut ids = HashSet::new();
        for r in &self.relays {
            if !ids.insert(r.id) {
                return Err(ConfigError::DuplicateRelayId(r.id));
            }
            if r.addr.ip().is_unspecified() || r.addr.port() == 0 {
                return Err(ConfigError::BadRelay {
                    id: r.id,
                    why: format!(
                        "addr = {} cannot be reached: give the address and port nodes send to (example: \"198.18.0.3:7720\")",
                        r.addr
                    ),
                });
            }
            let key: Key = r.key.parse().map_err(|_| ConfigError::BadKey {
                who: format!("[[relay]] id = {}", r.id),
            })?;
            relays.push(RelayCred {
                id: r.id,
                addr: r.addr,
                key,
            });
        }
        Ok(relays)
    }
}

/// A node's fixed VIP: in the pool, assignable, and no other node's.
fn check_fixed_vip<'a>(
    n: &'a NodeEntry,
    vip: Ipv4Addr,
    pool: &VipPool,
    fixed: &mut HashMap<Ipv4Addr, &'a str>,
) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError::BadVip {
        fqdn: n.fqdn.clone(),
        vip,
        why,
    };
    if !pool.contains(vip) {
        return Err(bad(format!("is outside vip_pool {pool}")));
    }
    if !pool.is_assignable(vip) {
        return Err(bad(format!(
            "is reserved: the pool's network, broadcast and first ({}, the adapters' router) addresses are never assigned",
            pool.router()
        )));
    }
    if let Some(other) = fixed.insert(vip, &n.fqdn) {
        return Err(bad(format!("is also the fixed VIP of {other:?}")));
    }
    Ok(())
}

ntm_ops::config_file!(Config, Settings, ConfigError, "ntm-dc/ntm-dc.example.toml");

/// A node id derived from the FQDN (FNV-1a over a label, the FQDN and an
/// attempt counter), never 0.
pub fn node_id_for(fqdn: &str, attempt: u8) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in b"ntm-dc node id\0"
        .iter()
        .chain(fqdn.as_bytes())
        .chain(&[attempt])
    {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Give each node (sorted by FQDN) its id; a collision moves the later FQDN
/// to its next attempt, so the result depends only on the set of FQDNs.
fn assign_node_ids(nodes: &mut [NodeCred]) {
    let mut used = HashSet::new();
    for n in nodes.iter_mut() {
        let mut attempt = 0u8;
        loop {
            let id = node_id_for(&n.fqdn, attempt);
            if used.insert(id) {
                n.node_id = id;
                break;
            }
            // 256 collisions in a row cannot happen with fewer than 2^32 nodes
            // in practice; wrapping keeps the loop total anyway.
            attempt = attempt.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn base() -> Config {
        Config {
            nodes: vec![
                NodeEntry {
                    fqdn: "cn.ntm.test".into(),
                    key: K1.into(),
                    key_file: None,
                    vip: None,
                },
                NodeEntry {
                    fqdn: "cn2.ntm.test".into(),
                    key: K2.into(),
                    key_file: None,
                    vip: Some(Ipv4Addr::new(100, 64, 0, 9)),
                },
            ],
            relays: vec![RelayEntry {
                id: 1,
                addr: "198.18.0.3:7720".parse().unwrap(),
                key: K2.into(),
                key_file: None,
            }],
            ..Config::default()
        }
    }

    fn err(c: &Config) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn valid_config_validates_and_round_trips_through_toml() {
        let c = base();
        let s = c.validate().unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.nodes[0].fqdn, "cn.ntm.test");
        assert_ne!(s.nodes[0].node_id, s.nodes[1].node_id);
        assert_eq!(s.relays[0].id, 1);
        assert_eq!(s.keepalive, Duration::from_secs(20));
        assert_eq!(s.tunnel_suite, Suite::Aes256Gcm, "AES-256-GCM by default");
        assert_eq!(
            s.store,
            StoreSettings {
                kind: StoreKind::Redb,
                path: Some("/var/lib/ntm-dc/dc.redb".into()),
                etcd: None,
            },
            "a redb file in the state directory by default"
        );
        let mut moved = c.clone();
        moved.store = StoreConfig::redb_in(Path::new("/srv/dc"));
        moved.store.path = "/data/dc.redb".into();
        assert_eq!(
            moved.validate().unwrap().store.path,
            Some("/data/dc.redb".into())
        );
        let text = moved.to_toml();
        assert!(text.contains("[store]"), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), moved);
        let text = c.to_toml();
        assert!(text.contains("tunnel_suite = 2"), "{text}");
        assert!(
            text.contains("[[node]]") && text.contains("[[relay]]"),
            "{text}"
        );
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn tunnel_suite_1_and_2_are_accepted_and_2_is_the_default() {
        let c = Config::from_toml("[[node]]\nfqdn = \"cn.ntm.test\"\nkey = \"00\"\n");
        assert_eq!(c.unwrap().tunnel_suite, 2);
        for (n, suite) in [(1u8, Suite::HmacSha256_128), (2, Suite::Aes256Gcm)] {
            let mut c = base();
            c.tunnel_suite = n;
            assert_eq!(c.validate().unwrap().tunnel_suite, suite);
            let text = c.to_toml();
            assert_eq!(Config::from_toml(&text).unwrap().tunnel_suite, n);
        }
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ntm-dc.example.toml");
        let c = Config::load(&path).unwrap();
        let s = c.validate().unwrap();
        assert!(!s.nodes.is_empty() && !s.relays.is_empty());
        assert_eq!(c.tunnel_suite, 2, "the example documents the default");
        assert_eq!(
            c,
            Config {
                nodes: c.nodes.clone(),
                relays: c.relays.clone(),
                ..Config::default()
            },
            "every top-level field has its default"
        );
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let mut c = base();
        c.vip_pool = "100.64.0.1/10".into();
        assert!(err(&c).contains("host bits"), "{}", err(&c));
        c.vip_pool = "100.64.0.0/31".into();
        assert!(err(&c).contains("vip_pool"));
        c.vip_pool = "100.64.0/10".into();
        assert!(err(&c).contains("vip_pool"));

        let mut c = base();
        c.nodes[0].key = "abcd".into();
        assert!(err(&c).contains("64 hex digits") && err(&c).contains("cn.ntm.test"));

        let mut c = base();
        c.relays[0].key = "zz".repeat(32);
        assert!(err(&c).contains("[[relay]] id = 1"));

        let mut c = base();
        c.nodes[1].fqdn = "cn.ntm.test".into();
        assert!(err(&c).contains("appears twice"));

        let mut c = base();
        c.nodes[0].fqdn = "cn.example.org".into();
        assert!(err(&c).contains("not under domain"));

        let mut c = base();
        c.nodes[0].fqdn = "CN.ntm.test".into();
        assert!(err(&c).contains("not a valid FQDN"));

        let mut c = base();
        c.domain = "ntm..test".into();
        assert!(err(&c).contains("domain"));

        let mut c = base();
        c.nodes[1].vip = Some(Ipv4Addr::new(100, 64, 0, 1));
        assert!(err(&c).contains("reserved"));
        c.nodes[1].vip = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert!(err(&c).contains("outside"));
        c.nodes[1].vip = Some(Ipv4Addr::new(100, 64, 0, 9));
        c.nodes[0].vip = Some(Ipv4Addr::new(100, 64, 0, 9));
        assert!(err(&c).contains("also the fixed VIP"));

        let mut c = base();
        c.relays.push(c.relays[0].clone());
        assert!(err(&c).contains("appears twice"));

        let mut c = base();
        c.relays[0].addr = "0.0.0.0:7720".parse().unwrap();
        assert!(err(&c).contains("cannot be reached"));

        let mut c = base();
        c.keepalive_secs = 0;
        assert!(err(&c).contains("keepalive_secs"));
        c.keepalive_secs = 20;
        c.lease_secs = 30;
        assert!(err(&c).contains("lease_secs"));

        let mut c = base();
        c.nodes.clear();
        assert!(err(&c).contains("no [[node]]"));

        for bad in [0u8, 3, 255] {
            let mut c = base();
            c.tunnel_suite = bad;
            let e = err(&c);
            assert!(
                e.contains(&format!("tunnel_suite = {bad}")) && e.contains("aes-256-gcm"),
                "{e}"
            );
        }

        let mut c = base();
        c.store.state_dir = "state".into();
        assert!(err(&c).contains("[store] state_dir") && err(&c).contains("absolute"));
        c.store.kind = StoreKind::Memory;
        assert!(c.validate().is_ok(), "memory needs no directory");
        let mut c = base();
        c.store.path = "".into();
        assert!(err(&c).contains("[store] path"), "{}", err(&c));
        let e = Config::from_toml("[store]\nkind = \"sqlite\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redb") && e.contains("etcd"), "{e}");

        let e = Config::from_toml("listen = 5\n").unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let e = Config::from_toml("colour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn etcd_store_settings_are_checked() {
        let mut c = base();
        c.store = StoreConfig::etcd(vec!["http://127.0.0.1:2379".into()], "dc1");
        let s = c.validate().unwrap().store;
        assert_eq!(s.kind, StoreKind::Etcd);
        let e = s.etcd.unwrap();
        assert_eq!((e.prefix.as_str(), e.dc_name.as_str()), ("/ntm", "dc1"));
        let text = c.to_toml();
        assert!(
            text.contains("kind = \"etcd\"") && text.contains("dc_name = \"dc1\""),
            "{text}"
        );
        assert_eq!(Config::from_toml(&text).unwrap(), c);
        let bad = |f: &dyn Fn(&mut StoreConfig), field: &str| {
            let mut c = c.clone();
            f(&mut c.store);
            let e = err(&c);
            assert!(e.contains(&format!("[store] {field}")), "{e}");
        };
        bad(&|s| s.dc_name.clear(), "dc_name");
        bad(&|s| s.dc_name = "DC 1".into(), "dc_name");
        bad(&|s| s.endpoints.clear(), "endpoints");
        bad(
            &|s| s.endpoints = vec!["127.0.0.1:2379".into()],
            "endpoints",
        );
        bad(
            &|s| s.endpoints = vec!["https://e:2379".into()],
            "endpoints",
        );
        bad(&|s| s.prefix = "ntm".into(), "prefix");
        bad(&|s| s.prefix = "/ntm/".into(), "prefix");
    }

    #[test]
    fn key_files_in_place_of_keys() {
        let dir = std::env::temp_dir().join(format!("ntm-dc-keyfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ntm_ops::keys::write_private(&dir.join("cn.key"), &format!("{K1}\n")).unwrap();
        ntm_ops::keys::write_private(&dir.join("rs.key"), K2).unwrap();
        let text = "[[node]]\nfqdn = \"cn.ntm.test\"\nkey_file = \"cn.key\"\n\n\
                    [[relay]]\nid = 1\naddr = \"198.18.0.3:7720\"\nkey_file = \"rs.key\"\n";
        let path = dir.join("dc.toml");
        std::fs::write(&path, text).unwrap();
        let c = Config::load(&path).unwrap();
        assert!(!c.holds_inline_key());
        let s = c.validate().unwrap();
        assert_eq!(s.nodes[0].key, K1.parse().unwrap());
        assert_eq!(s.relays[0].key, K2.parse().unwrap());
        std::fs::set_permissions(
            dir.join("cn.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("readable by group") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::write(
            &path,
            format!("[[node]]\nfqdn = \"cn.ntm.test\"\nkey = \"{K1}\"\nkey_file = \"cn.key\"\n"),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("cn.ntm.test") && e.contains("not both"), "{e}");
        assert!(base().holds_inline_key());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        let a = base().validate().unwrap();
        let mut reordered = base();
        reordered.nodes.reverse();
        let b = reordered.validate().unwrap();
        for (x, y) in a.nodes.iter().zip(&b.nodes) {
            assert_eq!((x.fqdn.as_str(), x.node_id), (y.fqdn.as_str(), y.node_id));
        }
        assert_eq!(a.nodes[0].node_id, node_id_for("cn.ntm.test", 0));

        // A forced collision moves the later name to its next attempt.
        let mut nodes = vec![
            NodeCred {
                fqdn: "a.ntm.test".into(),
                key: Key::from_bytes([1; 32]),
                vip: None,
                node_id: 0,
            },
            NodeCred {
                fqdn: "a.ntm.test".into(),
                key: Key::from_bytes([2; 32]),
                vip: None,
                node_id: 0,
            },
        ];
        assign_node_ids(&mut nodes);
        assert_eq!(nodes[0].node_id, node_id_for("a.ntm.test", 0));
        assert_eq!(nodes[1].node_id, node_id_for("a.ntm.test", 1));
    }
}
