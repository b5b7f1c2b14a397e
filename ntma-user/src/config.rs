//! The daemon's configuration: a TOML file (see `ntma.example.toml`) read
//! into [`Config`] with serde, then checked by [`Config::validate`] into
//! [`Settings`], the typed values the daemon runs with. Every error names
//! the setting and says what to put there instead.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ntm_ops::metrics::MetricsConfig;
use ntm_proto::dns::StubConfig;
use ntm_proto::wire::Fqdn;
use ntm_proto::Key;
use serde::{Deserialize, Serialize};

use crate::datapath::limits;
pub use crate::datapath::DatapathKind;
use crate::fastpath::{INNER_MTU, INNER_MTU_MAX, TUNNEL_OVERHEAD};
use crate::gn::{GnConfig, MacAddr, Unreachable};

/// Where status sockets live unless `status_socket` says otherwise.
pub const STATUS_DIR: &str = "/run/ntma";
/// Default UDP port of the adapter's tunnels and signaling (docs/protocol.md §1).
pub const DEFAULT_PORT: u16 = 7700;

/// The configuration file as written. Build one for tests with
/// [`Config::new`]; check it with [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this adapter: in logs and in the default status socket
    /// `/run/ntma/<name>.sock`. Letters, digits, `-` and `_`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Status socket path (default `/run/ntma/<name>.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_socket: Option<PathBuf>,
    /// What to do with GN packets to destinations outside the VIP prefix.
    #[serde(default)]
    pub non_vip: NonVip,
    /// A statistics log line this often (0: never).
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: u64,
    /// The GN-facing NIC and what the GN is told by DHCP.
    pub lan: Lan,
    /// The uplink NIC.
    pub wan: Wan,
    /// The Direction Coordinator.
    pub dc: Dc,
    /// DNS interception and forwarding.
    pub dns: Dns,
    /// The AF_XDP fast path.
    #[serde(default)]
    pub datapath: Datapath,
    /// Packets waiting for a tunnel.
    #[serde(default)]
    pub hold: Hold,
    /// `[metrics]`: the Prometheus endpoint (off unless `listen` is set).
    #[serde(default, skip_serializing_if = "MetricsConfig::is_default")]
    pub metrics: MetricsConfig,
    /// `[[gn]]`: the GNs this adapter serves, each registered as its own node
    /// (docs/protocol.md §6).
    #[serde(default)]
    pub gn: Vec<GnEntry>,
}

/// `[[gn]]`: one GN, its identity at the DC and how it is recognised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GnEntry {
    /// The GN's FQDN, registered with the DC on the GN's behalf.
    pub fqdn: String,
    /// `K_node` of that FQDN: 64 hex digits, the same as in the DC's entry
    /// (or `key_file`). Wiped from memory when dropped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A file holding `K_node` (mode 0600), in place of `key`; relative to
    /// the configuration's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The GN's MAC (`02:00:00:00:00:0a`): only that NIC gets this GN's VIP.
    /// Without it, the first unknown MAC that asks DHCP takes the entry and
    /// keeps it while its lease lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Drop for GnEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl GnEntry {
    /// An entry with an inline key and no MAC.
    pub fn new(fqdn: &str, key: &Key) -> GnEntry {
        GnEntry {
            fqdn: fqdn.to_owned(),
            key: key.to_hex(),
            key_file: None,
            mac: None,
        }
    }
}

/// `[lan]`: the NIC facing the GN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    /// Interface name (`lan0` on the testbed).
    pub interface: String,
    /// The router, DNS server and DHCP server address given to the GN: the
    /// VIP pool's first address (it must be on the interface too).
    #[serde(default = "default_router")]
    pub router: Ipv4Addr,
    /// Prefix length of the VIP pool: the GN's subnet mask, so every VIP is on-link.
    #[serde(default = "default_prefix_len")]
    pub vip_prefix_len: u8,
    /// Interface MTU handed to the GN by DHCP; default and maximum: the inner MTU
    /// (`wan.mtu` − 60, §5 "MTU").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// DHCP lease time, seconds.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
}

/// `[wan]`: the uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wan {
    /// Interface name (`wan0` on the testbed).
    pub interface: String,
    /// UDP port for tunnels and DC signaling.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The uplink's path MTU; the inner MTU is 60 less (§5 "MTU"). Default: the
    /// interface's MTU, read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// `[dc]`: who the GNs register with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dc {
    /// The DC's address:port (port 7710 by default on the DC), or
    /// `addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddrV4>,
    /// Several DCs sharing one store, in failover order (in place of
    /// `address`): each GN registers with the first that answers and moves
    /// to the next when its keep-alives go unanswered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddrV4>,
    /// Version 1 of this file named the one GN here: refused with a pointer
    /// to `[[gn]]`.
    #[serde(default, skip_serializing)]
    fqdn: Option<String>,
}

impl Dc {
    /// `[dc]` with the DC at `address`.
    pub fn new(address: SocketAddrV4) -> Dc {
        Dc {
            address: Some(address),
            addresses: Vec::new(),
            fqdn: None,
        }
    }
}

/// `[dns]`: the resolver the GN talks to at the router address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Names under this suffix are resolved through the DC.
    #[serde(default = "default_suffix")]
    pub ntm_suffix: String,
    /// Every other name is forwarded here.
    pub upstream: SocketAddrV4,
    /// TTL of the A records for NTM names (at most 60 s).
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// A query waiting for the DC gets SERVFAIL after this long. Longer
    /// than the DIR_REQ retransmissions (7.75 s), so the DC's answer or
    /// its silence decides.
    #[serde(default = "default_dns_timeout")]
    pub timeout_secs: u64,
    /// DNS over TCP at the router address: connections open at once (more
    /// are refused and counted), 1 to 1024.
    #[serde(default = "default_tcp_max_connections")]
    pub tcp_max_connections: usize,
    /// DNS over TCP: a connection with no query pending is closed after
    /// this long without traffic, 1 to 300 s.
    #[serde(default = "default_tcp_idle_timeout")]
    pub tcp_idle_timeout_secs: u64,
}

/// `[datapath]`: AF_XDP workers, UMEM and rings (their limits:
/// [`crate::datapath::limits`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Datapath {
    /// Which datapath carries tunnel traffic: "af-xdp" (default) or "raw" (raw sockets,
    /// the fallback for hosts without AF_XDP: one worker, `cores[0]`, `batch` and
    /// `busy_poll` apply; the AF_XDP settings below do not).
    #[serde(default)]
    pub kind: DatapathKind,
    /// NIC queues to serve (one worker each); both NICs need at least this many.
    pub queues: u32,
    /// CPU cores the workers are pinned to, in queue order (reused round-robin).
    pub cores: Vec<usize>,
    /// UMEM frame size: a power of two from 2048 to 4096.
    pub frame_size: u32,
    /// UMEM frames in all, shared by both NICs.
    pub frame_count: u32,
    /// Fill ring entries per queue (power of two).
    pub fill_ring: u32,
    /// Completion ring entries per queue (power of two).
    pub completion_ring: u32,
    /// RX ring entries per socket (power of two).
    pub rx_ring: u32,
    /// TX ring entries per socket (power of two).
    pub tx_ring: u32,
    /// Frames handled per ring operation.
    pub batch: u32,
    /// Busy-poll the rings instead of sleeping in poll(2) when idle.
    pub busy_poll: bool,
    /// Without `busy_poll`: empty turns an AF_XDP worker spins before it sleeps in
    /// poll(2) (a burst soon after costs no system call).
    #[serde(default = "default_spin_turns")]
    pub spin_turns: u32,
    /// XDP attach mode: "native" (in the driver) or "generic".
    pub attach: Attach,
    /// AF_XDP bind mode: "auto" (zero-copy where the driver can), "copy" or "zero-copy".
    pub bind: Bind,
}

/// `[hold]`: packets to a VIP whose tunnel is being set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// At most this many per destination.
    pub per_peer: usize,
    /// At most this many in all.
    pub total: usize,
    /// Each for at most this long.
    pub timeout_ms: u64,
}

/// What happens to GN packets whose destination is not a VIP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonVip {
    /// Dropped, answered with ICMP destination unreachable (network unreachable).
    #[default]
    IcmpUnreachable,
    /// Forwarded by the kernel to the uplink, masqueraded with nftables.
    Nat,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attach {
    /// In the driver.
    #[default]
    Native,
    /// Generic (skb) mode: works on every NIC, slower.
    Generic,
}

/// AF_XDP bind mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bind {
    /// Zero-copy where the driver supports it, copy otherwise.
    #[default]
    Auto,
    /// Copy mode.
    Copy,
    /// Zero-copy or fail.
    ZeroCopy,
}

fn default_name() -> String {
    "ntma".into()
}
fn default_stats_interval() -> u64 {
    60
}
fn default_router() -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 1)
}
fn default_prefix_len() -> u8 {
    10
}
fn default_lease_secs() -> u32 {
    600
}
fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_suffix() -> String {
    "ntm.test".into()
}
fn default_ttl() -> u32 {
    30
}
fn default_dns_timeout() -> u64 {
    9
}
fn default_tcp_max_connections() -> usize {
    64
}
fn default_tcp_idle_timeout() -> u64 {
    10
}

fn default_spin_turns() -> u32 {
    crate::fastpath::SPIN_TURNS
}

impl Default for Datapath {
    fn default() -> Self {
        Datapath {
            kind: DatapathKind::AfXdp,
            queues: 1,
            cores: vec![0],
            frame_size: 2048,
            frame_count: 16384,
            // 4096 frames to receive into, on a 4096-entry RX ring: with 2048, the
            // demo's TCP sender overran them whenever the worker lost its core for
            // a while (rx_fill_ring_empty_descs, wan0 rx_dropped).
            fill_ring: 4096,
            completion_ring: 2048,
            rx_ring: 4096,
            tx_ring: 2048,
            batch: 64,
            busy_poll: false,
            spin_turns: default_spin_turns(),
            attach: Attach::Native,
            bind: Bind::Auto,
        }
    }
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            per_peer: 32,
            total: 256,
            timeout_ms: 10_000,
        }
    }
}

/// A setting that cannot work, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or is not valid TOML for this configuration.
    #[error(transparent)]
    Load(#[from] ntm_ops::config::Error),
    /// A setting has a value that cannot work.
    #[error("{setting} = {value}: {fix}")]
    Invalid {
        /// The setting, as written in the file (`gn[0].key`).
        setting: String,
        /// Its value (secrets elided).
        value: String,
        /// What to put there instead.
        fix: String,
    },
}

fn invalid(
    setting: impl Into<String>,
    value: impl ToString,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        value: value.to_string(),
        fix: fix.into(),
    }
}

/// The validated settings the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Adapter name.
    pub name: String,
    /// Status socket path.
    pub status_socket: PathBuf,
    /// Non-VIP policy.
    pub non_vip: NonVip,
    /// Statistics log interval (None: never).
    pub stats_interval: Option<Duration>,
    /// GN-facing interface.
    pub lan_if: String,
    /// Uplink interface.
    pub wan_if: String,
    /// Tunnel/signaling port.
    pub port: u16,
    /// The DCs, in failover order (at least one).
    pub dcs: Vec<SocketAddrV4>,
    /// The GNs, in configuration order (their [`crate::gn::GnIndex`]).
    pub gns: Vec<GnIdentity>,
    /// Upstream resolver.
    pub upstream: SocketAddrV4,
    /// GN-facing services (DHCP, ARP, DNS); `ntma_mac` is set from the NIC at start.
    pub gn: GnConfig,
    /// DNS stub settings (also inside `gn`), kept for status output.
    pub dns: StubConfig,
    /// Fast path settings.
    pub datapath: Datapath,
    /// Hold queue bounds.
    pub hold_per_peer: usize,
    /// Hold queue bound in all.
    pub hold_total: usize,
    /// Hold time limit.
    pub hold_timeout: Duration,
    /// The metrics endpoint.
    pub metrics: MetricsConfig,
    /// `wan.mtu` as configured (None: the interface's, see [`Settings::set_uplink_mtu`]).
    pub wan_mtu: Option<u16>,
    /// `lan.mtu` as configured (None: the inner MTU).
    pub lan_mtu: Option<u16>,
    /// The uplink's MTU in use: `wan.mtu`, or the interface's (1500 until
    /// [`Settings::set_uplink_mtu`] says otherwise).
    pub uplink_mtu: u16,
}

/// One GN's identity, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GnIdentity {
    /// Its FQDN.
    pub fqdn: String,
    /// Its `K_node`.
    pub key: Key,
    /// The MAC that binds it, if configured.
    pub mac: Option<MacAddr>,
}

impl GnIdentity {
    /// What the GN services know of it.
    pub fn spec(&self) -> crate::gn::GnSpec {
        crate::gn::GnSpec {
            fqdn: self.fqdn.clone(),
            mac: self.mac,
        }
    }
}

/// The smallest uplink MTU: it leaves IPv4's minimum of 576 inside the tunnel.
pub const MIN_WAN_MTU: u16 = 576 + TUNNEL_OVERHEAD;

impl Settings {
    /// Derives the inner MTU from the uplink's MTU (`wan.mtu`, or the interface's
    /// when it is not set): `wan_mtu` − 60, at most [`INNER_MTU_MAX`]. The GN's
    /// DHCP MTU becomes the inner MTU unless `lan.mtu` is set, which may not be
    /// larger.
    pub fn set_uplink_mtu(&mut self, wan_mtu: u16) -> Result<(), ConfigError> {
        if wan_mtu < MIN_WAN_MTU {
            return Err(invalid(
                "wan.mtu",
                wan_mtu,
                format!(
                    "use at least {MIN_WAN_MTU}: the tunnel takes 60 bytes and IPv4 needs 576 inside (1500 on Ethernet)"
                ),
            ));
        }
        let inner = (wan_mtu - TUNNEL_OVERHEAD).min(INNER_MTU_MAX);
        match self.lan_mtu {
            Some(m) if m > inner => {
                return Err(invalid(
                    "lan.mtu",
                    m,
                    format!(
                        "use at most {inner}, the inner MTU (the uplink's MTU {wan_mtu} minus 60 for the tunnel), or leave lan.mtu out to give the GN the inner MTU"
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.gn.mtu = inner;
                self.dns = self.gn.stub_config();
            }
        }
        self.uplink_mtu = wan_mtu;
        Ok(())
    }

    /// The inner MTU (§5 "MTU"): the uplink's MTU − 60, at most [`INNER_MTU_MAX`].
    pub fn inner_mtu(&self) -> u16 {
        (self.uplink_mtu - TUNNEL_OVERHEAD).min(INNER_MTU_MAX)
    }
}

impl Config {
    /// A configuration with the defaults for the testbed's adapter: `lan0`
    /// and `wan0`, router 100.64.0.1/10, suffix `ntm.test`.
    pub fn new(fqdn: &str, key: &Key, dc: SocketAddrV4, upstream: SocketAddrV4) -> Config {
        Config {
            name: default_name(),
            status_socket: None,
            non_vip: NonVip::default(),
            stats_interval_secs: default_stats_interval(),
            lan: Lan {
                interface: "lan0".into(),
                router: default_router(),
                vip_prefix_len: default_prefix_len(),
                mtu: None,
                lease_secs: default_lease_secs(),
            },
            wan: Wan {
                interface: "wan0".into(),
                port: DEFAULT_PORT,
                mtu: None,
            },
            dc: Dc::new(dc),
            gn: vec![GnEntry::new(fqdn, key)],
            dns: Dns {
                ntm_suffix: default_suffix(),
                upstream,
                ttl: default_ttl(),
                timeout_secs: default_dns_timeout(),
                tcp_max_connections: default_tcp_max_connections(),
                tcp_idle_timeout_secs: default_tcp_idle_timeout(),
            },
            datapath: Datapath::default(),
            hold: Hold::default(),
            metrics: MetricsConfig::default(),
        }
    }

    /// Parses TOML text (`origin` names it in errors).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let c = ntm_ops::config::parse(text, origin);
        Ok(c.map_err(ntm_ops::config::Error::Load)?)
    }

    /// Reads and parses a file (its text, which holds dc.key, is wiped),
    /// and `dc.key_file` into `dc.key`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        ntm_ops::config::load(path)
    }

    /// Whether a GN's key is written in the file itself (which must then be
    /// private: [`ntm_ops::keys::check_private`]).
    pub fn holds_inline_key(&self) -> bool {
        self.gn.iter().any(|g| g.key_file.is_none())
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        ntm_ops::config::to_toml(self)
    }

    /// The status socket path this configuration gives.
    pub fn status_socket_path(&self) -> PathBuf {
        self.status_socket
            .clone()
            .unwrap_or_else(|| Path::new(STATUS_DIR).join(format!("{}.sock", self.name)))
    }

    /// Checks every setting and returns the typed [`Settings`].
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.validate_names()?;
        let dcs = self.validate_dc()?;
        let gns = self.validate_gns()?;
        self.validate_dns()?;
        let gn = self.gn_config(&gns)?;
        self.validate_datapath()?;
        self.validate_hold()?;
        self.settings(dcs, gns, gn)
    }

    /// `name`, the interfaces and the port.
    fn validate_names(&self) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(invalid(
                "name",
                format!("{:?}", self.name),
                "use 1 to 32 letters, digits, '-' or '_' (it names the status socket)",
            ));
        }
        for (setting, ifname) in [
            ("lan.interface", &self.lan.interface),
            ("wan.interface", &self.wan.interface),
        ] {
            let ok =
                !ifname.is_empty() && ifname.len() <= 15 && !ifname.contains(['/', ' ', '\0', ':']);
            if !ok {
                return Err(invalid(
                    setting,
                    format!("{ifname:?}"),
                    "give the name of an existing network interface (at most 15 characters), as `ip link` shows it",
                ));
            }
        }
        if self.lan.interface == self.wan.interface {
            return Err(invalid(
                "wan.interface",
                format!("{:?}", self.wan.interface),
                "the uplink must be another NIC than lan.interface",
            ));
        }
        if self.wan.port == 0 {
            return Err(invalid("wan.port", 0, "use the NTM port, 7700"));
        }
        Ok(())
    }

    /// `[dc]`: the DCs in failover order.
    fn validate_dc(&self) -> Result<Vec<SocketAddrV4>, ConfigError> {
        if let Some(fqdn) = &self.dc.fqdn {
            return Err(invalid(
                "dc.fqdn",
                format!("{fqdn:?}"),
                "the GNs are listed in [[gn]] entries now: move fqdn, key and key_file from [dc] into a [[gn]] entry",
            ));
        }
        ntm_ops::config::dc_addresses(
            ("dc.address", self.dc.address),
            ("dc.addresses", &self.dc.addresses),
            ntm_proto::node::MAX_DCS,
        )
        .map_err(|e| invalid(e.field, e.value, e.why))
    }

    /// `[[gn]]`: each GN's identity (FQDN, `K_node`) and MAC.
    fn validate_gns(&self) -> Result<Vec<GnIdentity>, ConfigError> {
        if self.gn.is_empty() || self.gn.len() > crate::gn::MAX_GNS {
            return Err(invalid(
                "gn",
                self.gn.len(),
                format!(
                    "list 1 to {} [[gn]] entries, each with fqdn and key (or key_file)",
                    crate::gn::MAX_GNS
                ),
            ));
        }
        let mut out = Vec::with_capacity(self.gn.len());
        for (i, g) in self.gn.iter().enumerate() {
            let at = |field: &str| format!("gn[{i}].{field}");
            if Fqdn::new(&g.fqdn).is_err() {
                return Err(invalid(
                    at("fqdn"),
                    format!("{:?}", g.fqdn),
                    "give the GN's FQDN in lower case, e.g. \"gn.ntm.test\"",
                ));
            }
            let key: Key = g.key.parse().map_err(|_| {
                invalid(
                    at("key"),
                    "(hidden)",
                    "give K_node as 64 hex digits, the same as the DC's entry for this fqdn",
                )
            })?;
            let mac = match &g.mac {
                None => None,
                Some(m) => Some(m.parse::<MacAddr>().ok().filter(MacAddr::is_unicast).ok_or_else(|| {
                    invalid(at("mac"), format!("{m:?}"), "give the GN's unicast MAC as six hex pairs, e.g. \"02:00:00:00:00:0a\", or leave mac out")
                })?),
            };
            if out
                .iter()
                .any(|o: &GnIdentity| o.fqdn == g.fqdn || (mac.is_some() && o.mac == mac))
            {
                return Err(invalid(
                    at("fqdn"),
                    format!("{:?}", g.fqdn),
                    "another [[gn]] entry has this FQDN or MAC: each GN needs its own",
                ));
            }
            out.push(GnIdentity {
                fqdn: g.fqdn.clone(),
                key,
                mac,
            });
        }
        Ok(out)
    }

    /// `[dns]`.
    fn validate_dns(&self) -> Result<(), ConfigError> {
        if self.dns.upstream.ip().is_unspecified() || self.dns.upstream.port() == 0 {
            return Err(invalid(
                "dns.upstream",
                self.dns.upstream,
                "give the upstream resolver's IPv4 address and port, e.g. \"198.18.0.2:53\"",
            ));
        }
        if self.dns.timeout_secs == 0 || self.dns.timeout_secs > 60 {
            return Err(invalid(
                "dns.timeout_secs",
                self.dns.timeout_secs,
                "use 1 to 60 (9 outlasts the DC request's retransmissions)",
            ));
        }
        if !(1..=crate::gn::MAX_TCP_CONNECTIONS).contains(&self.dns.tcp_max_connections) {
            return Err(invalid(
                "dns.tcp_max_connections",
                self.dns.tcp_max_connections,
                "use 1 to 1024 (a GN's resolver opens a few at most; 64 is plenty)",
            ));
        }
        if !(1..=300).contains(&self.dns.tcp_idle_timeout_secs) {
            return Err(invalid(
                "dns.tcp_idle_timeout_secs",
                self.dns.tcp_idle_timeout_secs,
                "use 1 to 300 (RFC 7766 suggests seconds: 10 is the default)",
            ));
        }
        Ok(())
    }

    /// The GN services' configuration from `[lan]`, `[dns]` and the GNs, checked.
    fn gn_config(&self, gns: &[GnIdentity]) -> Result<GnConfig, ConfigError> {
        let mut gn = GnConfig::new(MacAddr([0x02, 0, 0, 0, 0, 1]));
        gn.gns = gns.iter().map(GnIdentity::spec).collect();
        gn.router = self.lan.router;
        gn.vip_prefix_len = self.lan.vip_prefix_len;
        gn.mtu = self.lan.mtu.unwrap_or(INNER_MTU as u16);
        gn.lease_secs = self.lan.lease_secs;
        gn.ntm_suffix = self.dns.ntm_suffix.clone();
        gn.dns_ttl = self.dns.ttl;
        gn.dns_resolve_timeout = Duration::from_secs(self.dns.timeout_secs);
        gn.dns_tcp_max_connections = self.dns.tcp_max_connections;
        gn.dns_tcp_idle_timeout = Duration::from_secs(self.dns.tcp_idle_timeout_secs);
        gn.non_vip_unreachable = Unreachable::Net;
        // The GnConfig checks say what to fix; name the section they came from.
        if let Err(e) = crate::gn::Gn::new(gn.clone()) {
            return Err(invalid("lan/dns", "(see message)", e.to_string()));
        }
        Ok(gn)
    }

    /// `[hold]`.
    fn validate_hold(&self) -> Result<(), ConfigError> {
        let h = &self.hold;
        if h.per_peer == 0 || h.per_peer > 4096 {
            return Err(invalid("hold.per_peer", h.per_peer, "use 1 to 4096"));
        }
        if h.total < h.per_peer || h.total > 65_536 {
            return Err(invalid(
                "hold.total",
                h.total,
                "use at least hold.per_peer and at most 65536",
            ));
        }
        if h.timeout_ms == 0 || h.timeout_ms > 60_000 {
            return Err(invalid(
                "hold.timeout_ms",
                h.timeout_ms,
                "use 1 to 60000 (a tunnel set-up takes at most about 8 s)",
            ));
        }
        Ok(())
    }

    /// The typed settings of a checked configuration.
    fn settings(
        &self,
        dcs: Vec<SocketAddrV4>,
        gns: Vec<GnIdentity>,
        gn: GnConfig,
    ) -> Result<Settings, ConfigError> {
        let h = &self.hold;
        let dns = gn.stub_config();
        let mut s = Settings {
            name: self.name.clone(),
            status_socket: self.status_socket_path(),
            non_vip: self.non_vip,
            stats_interval: (self.stats_interval_secs > 0)
                .then(|| Duration::from_secs(self.stats_interval_secs)),
            lan_if: self.lan.interface.clone(),
            wan_if: self.wan.interface.clone(),
            port: self.wan.port,
            dcs,
            gns,
            upstream: self.dns.upstream,
            gn,
            dns,
            datapath: self.datapath.clone(),
            hold_per_peer: h.per_peer,
            hold_total: h.total,
            hold_timeout: Duration::from_millis(h.timeout_ms),
            metrics: self.metrics.clone(),
            wan_mtu: self.wan.mtu,
            lan_mtu: self.lan.mtu,
            uplink_mtu: INNER_MTU as u16 + TUNNEL_OVERHEAD,
        };
        if let Some(m) = self.wan.mtu {
            s.set_uplink_mtu(m)?;
        }
        Ok(s)
    }

    fn validate_datapath(&self) -> Result<(), ConfigError> {
        let d = &self.datapath;
        if d.kind == DatapathKind::Raw && d.queues != 1 {
            return Err(invalid(
                "datapath.queues",
                d.queues,
                "the raw datapath has one worker: use 1 (or kind = \"af-xdp\" for more)",
            ));
        }
        if d.cores.is_empty() {
            return Err(invalid(
                "datapath.cores",
                "[]",
                "list at least one CPU core for the workers, e.g. [1]",
            ));
        }
        d.sizes().validate().map_err(|e| ConfigError::Invalid {
            setting: e.key.to_owned(),
            value: e.value,
            fix: e.fix,
        })
    }
}

impl Datapath {
    /// The sizes, checked against [`limits`] as the programmatic constructors' are.
    pub fn sizes(&self) -> limits::Sizes<'_> {
        limits::Sizes {
            queues: self.queues,
            cores: &self.cores,
            frame_size: self.frame_size,
            frame_count: self.frame_count,
            fill_ring: self.fill_ring,
            completion_ring: self.completion_ring,
            rx_ring: self.rx_ring,
            tx_ring: self.tx_ring,
            batch: self.batch as usize,
        }
    }
}

impl ntm_ops::config::ConfigFile for Config {
    const EXAMPLE: &'static str = "ntma-user/ntma.example.toml";
    type Settings = Settings;
    type Error = ConfigError;

    fn read_files(&mut self, base: &Path) -> Result<(), ConfigError> {
        for (i, g) in self.gn.iter_mut().enumerate() {
            let key_file = g.key_file.as_deref();
            let who = format!("[[gn]] {}", g.fqdn);
            let (key, _) = ntm_ops::keys::resolve(&who, &g.key, key_file, base).map_err(|e| {
                let file =
                    key_file.map_or_else(|| "(none)".to_owned(), |p| p.display().to_string());
                invalid(format!("gn[{i}].key_file"), file, e.to_string())
            })?;
            zeroize::Zeroize::zeroize(&mut g.key);
            g.key = key;
        }
        Ok(())
    }

    fn holds_inline_key(&self) -> bool {
        Config::holds_inline_key(self)
    }

    fn validate(&self) -> Result<Settings, ConfigError> {
        // The inherent method (callers need no trait in scope).
        Config::validate(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    /// A valid configuration of the testbed's adapter (also the reload tests' base).
    pub(crate) fn base() -> Config {
        Config::new(
            "gn.ntm.test",
            &KEY.parse().unwrap(),
            "198.18.0.2:7710".parse().unwrap(),
            "198.18.0.2:5353".parse().unwrap(),
        )
    }

    fn err(c: &Config) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ntma.example.toml");
        let c = Config::load(&path).unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.gns.len(), 2, "the example serves two GNs");
        assert_eq!(s.gns[0].fqdn, "gn.ntm.test");
        assert_eq!(s.gns[1].mac, Some(MacAddr([2, 0, 0, 0, 0, 0x0c])));
        assert_eq!(s.gn.gns.len(), 2);
        assert_eq!(s.lan_if, "lan0");
        assert_eq!(s.status_socket, Path::new("/run/ntma/ntma.sock"));
        assert_eq!(s.non_vip, NonVip::IcmpUnreachable);
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = base();
        c.non_vip = NonVip::Nat;
        c.datapath.bind = Bind::ZeroCopy;
        c.status_socket = Some("/tmp/x.sock".into());
        let text = c.to_toml();
        assert!(text.contains("non_vip = \"nat\""), "{text}");
        assert!(text.contains("bind = \"zero-copy\""), "{text}");
        assert_eq!(Config::from_toml(&text, Path::new("x")).unwrap(), c);
        let s = c.validate().unwrap();
        assert_eq!(s.status_socket, Path::new("/tmp/x.sock"));
    }

    #[test]
    fn key_file_in_place_of_dc_key() {
        let dir = std::env::temp_dir().join(format!("ntma-keyfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ntm_ops::keys::write_private(&dir.join("gn.key"), &format!("{KEY}\n")).unwrap();
        let mut c = base();
        assert!(c.holds_inline_key());
        c.gn[0].key = String::new();
        c.gn[0].key_file = Some("gn.key".into());
        let path = dir.join("ntma.toml");
        std::fs::write(&path, c.to_toml()).unwrap();
        let loaded = Config::load(&path).unwrap();
        assert!(!loaded.holds_inline_key());
        assert_eq!(loaded.validate().unwrap().gns[0].key, KEY.parse().unwrap());
        std::fs::set_permissions(
            dir.join("gn.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("gn[0].key_file") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dc_takes_one_address_or_a_list() {
        let one: SocketAddrV4 = "198.18.0.2:7710".parse().unwrap();
        let two: SocketAddrV4 = "198.18.0.4:7710".parse().unwrap();
        assert_eq!(base().validate().unwrap().dcs, vec![one]);
        let list = "[dc]\naddresses = [\"198.18.0.2:7710\", \"198.18.0.4:7710\"]\n";
        let text = base()
            .to_toml()
            .replace("[dc]\naddress = \"198.18.0.2:7710\"\n", list);
        let c = Config::from_toml(&text, Path::new("x")).unwrap();
        assert_eq!(c.validate().unwrap().dcs, vec![one, two]);
        let mut both = c.clone();
        both.dc.address = Some(one);
        assert!(err(&both).contains("dc.address") && err(&both).contains("not both"));
        let mut none = c.clone();
        none.dc.addresses.clear();
        assert!(
            err(&none).contains("dc.address = (missing)"),
            "{}",
            err(&none)
        );
        let mut twice = c;
        twice.dc.addresses.push(one);
        assert!(err(&twice).contains("dc.addresses") && err(&twice).contains("twice"));
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let text = format!(
            "[lan]\ninterface = \"eth1\"\n[wan]\ninterface = \"eth0\"\n\
             [dc]\naddress = \"10.0.0.1:7710\"\n\
             [dns]\nupstream = \"10.0.0.53:53\"\n\
             [[gn]]\nfqdn = \"pc.ntm.test\"\nkey = \"{KEY}\"\n"
        );
        let s = Config::from_toml(&text, Path::new("m.toml"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.port, 7700);
        assert_eq!(s.gn.router, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(s.gn.vip_prefix_len, 10);
        assert_eq!(s.datapath.queues, 1);
        assert_eq!(s.hold_per_peer, 32);
        assert_eq!(s.stats_interval, Some(Duration::from_secs(60)));
    }

    #[test]
    fn the_raw_datapath_is_chosen_by_kind_and_has_one_worker() {
        let mut c = base();
        assert_eq!(c.datapath.kind, DatapathKind::AfXdp);
        c.datapath.kind = DatapathKind::Raw;
        let text = c.to_toml();
        assert!(text.contains("kind = \"raw\""), "{text}");
        let back = Config::from_toml(&text, Path::new("r.toml")).unwrap();
        assert_eq!(back.validate().unwrap().datapath.kind, DatapathKind::Raw);
        c.datapath.queues = 2;
        assert!(err(&c).contains("one worker"), "{}", err(&c));
        // Files written before the setting existed keep the AF_XDP datapath.
        let old = text.replace("kind = \"raw\"\n", "");
        assert_eq!(
            Config::from_toml(&old, Path::new("o.toml"))
                .unwrap()
                .datapath
                .kind,
            DatapathKind::AfXdp
        );
    }

    #[test]
    fn parse_errors_name_the_file_and_the_field() {
        let e = Config::from_toml("[lan]\ninterfce = \"x\"\n", Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("interfce"), "{e}");
        let e = Config::from_toml("non_vip = \"masquerade\"\n", Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("icmp-unreachable") && e.contains("nat"), "{e}");
    }

    #[test]
    fn the_inner_mtu_follows_wan_mtu_and_bounds_lan_mtu() {
        // Default: 1440 until the interface's MTU is known.
        let s = base().validate().unwrap();
        assert_eq!((s.inner_mtu(), s.gn.mtu), (1440, 1440));
        let mut s = s;
        s.set_uplink_mtu(1400).unwrap();
        assert_eq!(
            (s.inner_mtu(), s.gn.mtu),
            (1340, 1340),
            "the DHCP MTU follows"
        );
        assert_eq!(s.dns.max_udp_payload, 1340 - 28);
        // Configured.
        let mut c = base();
        c.wan.mtu = Some(1400);
        let s = c.validate().unwrap();
        assert_eq!((s.inner_mtu(), s.gn.mtu, s.uplink_mtu), (1340, 1340, 1400));
        c.lan.mtu = Some(1300);
        assert_eq!(c.validate().unwrap().gn.mtu, 1300);
        c.lan.mtu = Some(1440);
        let e = err(&c);
        assert!(e.contains("lan.mtu") && e.contains("at most 1340"), "{e}");
        c.wan.mtu = Some(9000);
        let s = c.validate().unwrap();
        assert_eq!(s.inner_mtu(), 1500, "capped at what a GN frame holds");
        c.wan.mtu = Some(600);
        assert!(err(&c).contains("wan.mtu"));
        // Round trip through TOML.
        let mut c = base();
        c.wan.mtu = Some(1400);
        let back = Config::from_toml(&c.to_toml(), Path::new("x")).unwrap();
        assert_eq!(back.wan.mtu, Some(1400));
    }

    #[test]
    fn invalid_settings_say_what_to_fix() {
        let mut c = base();
        c.gn[0].key = "abc".into();
        let e = err(&c);
        assert!(
            e.contains("gn[0].key") && e.contains("64 hex") && !e.contains("abc"),
            "{e}"
        );

        let mut c = base();
        c.gn[0].fqdn = "GN.ntm.test".into();
        assert!(err(&c).contains("gn[0].fqdn"));

        let mut c = base();
        c.gn.clear();
        assert!(err(&c).contains("[[gn]]"));

        let mut c = base();
        let second = c.gn[0].clone();
        c.gn.push(second);
        assert!(err(&c).contains("another [[gn]] entry"), "{}", err(&c));

        let mut c = base();
        c.gn[0].mac = Some("ff:ff:ff:ff:ff:ff".into());
        assert!(err(&c).contains("gn[0].mac"));

        let text = base()
            .to_toml()
            .replace("[dc]\n", "[dc]\nfqdn = \"gn.ntm.test\"\n");
        let old = Config::from_toml(&text, Path::new("x")).unwrap();
        assert!(
            err(&old).contains("move fqdn, key and key_file"),
            "{}",
            err(&old)
        );

        let mut c = base();
        c.wan.interface = "lan0".into();
        assert!(err(&c).contains("another NIC"));

        let mut c = base();
        c.lan.interface = "a-very-long-interface-name".into();
        assert!(err(&c).contains("lan.interface"));

        let mut c = base();
        c.lan.router = Ipv4Addr::new(100, 64, 0, 0);
        assert!(err(&c).contains("router address"), "{}", err(&c));

        let mut c = base();
        c.dns.ttl = 300;
        assert!(err(&c).contains("60 s"));

        let mut c = base();
        c.dns.upstream = "0.0.0.0:53".parse().unwrap();
        assert!(err(&c).contains("dns.upstream"));

        for n in [0, 1025] {
            let mut c = base();
            c.dns.tcp_max_connections = n;
            assert!(
                err(&c).contains("dns.tcp_max_connections = "),
                "{}",
                err(&c)
            );
        }
        for secs in [0, 301] {
            let mut c = base();
            c.dns.tcp_idle_timeout_secs = secs;
            assert!(
                err(&c).contains("dns.tcp_idle_timeout_secs = "),
                "{}",
                err(&c)
            );
        }

        let mut c = base();
        c.datapath.cores = vec![10_000];
        assert!(err(&c).contains("core 10000 does not exist"));

        let mut c = base();
        c.datapath.cores.clear();
        assert!(err(&c).contains("datapath.cores"));

        let mut c = base();
        c.datapath.rx_ring = 1000;
        assert!(err(&c).contains("datapath.rx_ring"));

        let mut c = base();
        c.datapath.frame_count = 100;
        // 2 x (fill_ring 4096 + tx_ring 2048).
        assert!(err(&c).contains("12288"), "{}", err(&c));

        let mut c = base();
        c.datapath.queues = 0;
        assert!(err(&c).contains("datapath.queues"));

        let mut c = base();
        c.hold.total = 1;
        assert!(err(&c).contains("hold.total"));

        let mut c = base();
        c.name = "../etc".into();
        assert!(err(&c).contains("name"));
    }
}
