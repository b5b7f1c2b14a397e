//! The node's TOML configuration and its checks.
//!
//! ```toml
//! fqdn = "cn.ntm.test"
//! key = "<64 hex digits: K_node of this FQDN, as in the DC's [[node]] table>"
//! dc = "198.18.0.2:7710"
//! upstream = "198.18.0.2:53"
//! # optional, with their defaults:
//! listen_port = 7700
//! socket_buffer = 4194304
//! tun_name = "ntm0"
//! mtu = 1440
//! tun_queue_len = 1000
//! tun_offload = true
//! dns_listen = "127.0.0.1:53"
//! ntm_suffix = "ntm.test"
//! dns_ttl = 30
//! stats_interval_secs = 60
//! status_file = "/run/ntm-node/cn.json"
//! ```
//!
//! [`Config`] is the serde form (tests write one with [`Config::to_toml`]);
//! [`Config::validate`] turns it into [`Settings`] or names the wrong line.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use ntm_ops::config;
use ntm_proto::dns::{StubConfig, MAX_TTL};
use ntm_proto::wire::validate_fqdn;
use ntm_proto::Key;
use serde::{Deserialize, Serialize};

/// The node's UDP port (§1).
pub const DEFAULT_PORT: u16 = 7700;
/// Inner MTU: 1500 minus the 60 bytes of tunnel overhead (§2).
pub const DEFAULT_MTU: u16 = 1440;
/// SO_RCVBUF/SO_SNDBUF asked for on the UDP socket: 4 MiB holds about
/// 2,800 full-size datagrams, a few TCP windows of tunnel traffic arriving
/// while the one driver task is busy, where the kernel's default (about
/// 208 KiB) overflows under iperf3.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;
/// The TUN device's queue (txqueuelen), in packets: what the kernel holds
/// for the node while its one task is busy elsewhere. Linux gives a TUN
/// device 500; at 1 Gbit/s of 1440-byte packets 1000 is 11 ms of traffic,
/// and with `tun_offload` a slot holds a TCP super-packet of up to 64 KiB.
pub const DEFAULT_TUN_QUEUE_LEN: u32 = 1000;
/// Smallest `tun_queue_len` accepted.
pub const MIN_TUN_QUEUE_LEN: u32 = 64;
/// Largest `tun_queue_len` accepted: a full queue of 64 KiB super-packets
/// is then 1 GiB of kernel memory that no socket is charged for.
pub const MAX_TUN_QUEUE_LEN: u32 = 16_384;
/// Smallest `socket_buffer` accepted (64 KiB): less drops bursts.
pub const MIN_SOCKET_BUFFER: usize = 64 << 10;
/// Largest `socket_buffer` accepted (256 MiB), far below the kernel's int.
pub const MAX_SOCKET_BUFFER: usize = 256 << 20;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The FQDN this node registers.
    pub fqdn: String,
    /// `K_node` of that FQDN: 64 hex digits (or `key_file`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A file holding `K_node` (mode 0600), in place of `key`; relative to
    /// this file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `[metrics]`: the Prometheus endpoint (off unless `listen` is set).
    #[serde(
        default,
        skip_serializing_if = "ntm_ops::metrics::MetricsConfig::is_default"
    )]
    pub metrics: ntm_ops::metrics::MetricsConfig,
    /// The DC's address and port (or `dcs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dc: Option<SocketAddrV4>,
    /// Several DCs sharing one store, in failover order (in place of
    /// `dc`): the node registers with the first that answers and moves to
    /// the next when its keep-alives go unanswered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dcs: Vec<SocketAddrV4>,
    /// The resolver that names outside the NTM suffix are forwarded to.
    pub upstream: SocketAddr,
    /// The one UDP port for DC signaling and tunnels (bound on all addresses).
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// SO_RCVBUF and SO_SNDBUF of that socket, in bytes (the kernel caps
    /// them at net.core.rmem_max and wmem_max).
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer: usize,
    /// Name of the TUN device that carries the VIP.
    #[serde(default = "default_tun")]
    pub tun_name: String,
    /// MTU of the TUN device.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Packets the kernel queues on the TUN device for the node to read
    /// (its txqueuelen); packets that arrive while it is full are dropped
    /// (the device's tx_dropped).
    #[serde(default = "default_tun_queue_len")]
    pub tun_queue_len: u32,
    /// Open the TUN device with a virtio-net header and the kernel's
    /// segmentation offloads (TSO, USO; GRO on writes), as wireguard-go does.
    #[serde(default = "default_tun_offload")]
    pub tun_offload: bool,
    /// Where the DNS stub listens.
    #[serde(default = "default_dns_listen")]
    pub dns_listen: SocketAddr,
    /// Names under this suffix are resolved through the DC.
    #[serde(default = "default_suffix")]
    pub ntm_suffix: String,
    /// TTL of the A records the stub gives for NTM names (at most 60).
    #[serde(default = "default_ttl")]
    pub dns_ttl: u32,
    /// Seconds a DNS query for an NTM name waits for the DC before SERVFAIL.
    #[serde(default = "default_dns_timeout")]
    pub dns_timeout_secs: u64,
    /// Packets held per destination VIP while its tunnel is set up.
    #[serde(default = "default_hold_per_peer")]
    pub hold_per_peer: usize,
    /// Packets held in all.
    #[serde(default = "default_hold_total")]
    pub hold_total: usize,
    /// Held packets are dropped after this long.
    #[serde(default = "default_hold_timeout")]
    pub hold_timeout_ms: u64,
    /// Seconds between two statistics log lines; 0 turns them off (SIGUSR1
    /// still prints one).
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: u64,
    /// A JSON status file (registration, tunnels, counters), rewritten
    /// every second and on SIGUSR1. None: no file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_file: Option<PathBuf>,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_socket_buffer() -> usize {
    DEFAULT_SOCKET_BUFFER
}
fn default_tun() -> String {
    "ntm0".into()
}
fn default_mtu() -> u16 {
    DEFAULT_MTU
}
fn default_tun_queue_len() -> u32 {
    DEFAULT_TUN_QUEUE_LEN
}
fn default_tun_offload() -> bool {
    true
}
fn default_dns_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 53))
}
fn default_suffix() -> String {
    "ntm.test".into()
}
fn default_ttl() -> u32 {
    30
}
fn default_dns_timeout() -> u64 {
    // Longer than the 5-try DIR_REQ schedule (7.75 s), so the DC's own
    // answer or the endpoint's time-out decides first.
    9
}
fn default_hold_per_peer() -> usize {
    32
}
fn default_hold_total() -> usize {
    256
}
fn default_hold_timeout() -> u64 {
    // Tunnel set-up gives up after 7.75 s of TUN_REQ retransmissions.
    10_000
}
fn default_stats_interval() -> u64 {
    60
}

impl Config {
    /// A configuration with every optional field at its default.
    pub fn new(fqdn: &str, key: &Key, dc: SocketAddrV4, upstream: SocketAddr) -> Config {
        Config {
            fqdn: fqdn.to_owned(),
            key: key.to_hex(),
            key_file: None,
            metrics: ntm_ops::metrics::MetricsConfig::default(),
            dc: Some(dc),
            dcs: Vec::new(),
            upstream,
            listen_port: default_port(),
            socket_buffer: default_socket_buffer(),
            tun_name: default_tun(),
            mtu: default_mtu(),
            tun_queue_len: default_tun_queue_len(),
            tun_offload: default_tun_offload(),
            dns_listen: default_dns_listen(),
            ntm_suffix: default_suffix(),
            dns_ttl: default_ttl(),
            dns_timeout_secs: default_dns_timeout(),
            hold_per_peer: default_hold_per_peer(),
            hold_total: default_hold_total(),
            hold_timeout_ms: default_hold_timeout(),
            stats_interval_secs: default_stats_interval(),
            status_file: None,
        }
    }
}

/// What is wrong with a configuration; each message names the setting and
/// says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `fqdn` breaks the FQDN rules.
    #[error("fqdn = {0:?} is not a valid FQDN: lower-case labels of 1-63 bytes of a-z, 0-9 and '-', at most 253 bytes, no trailing dot")]
    BadFqdn(String),
    /// `fqdn` is not under `ntm_suffix`.
    #[error("fqdn = {fqdn:?} is not under ntm_suffix = {suffix:?}: name it <host>.{suffix} or change ntm_suffix")]
    FqdnOutsideSuffix {
        /// The FQDN.
        fqdn: String,
        /// The suffix.
        suffix: String,
    },
    /// `key` is not 64 hex digits.
    #[error("key must be exactly 64 hex digits (32 bytes), the same as in the DC's [[node]] entry for this fqdn")]
    BadKey,
    /// `ntm_suffix` is not a DNS name.
    #[error("ntm_suffix = {0:?} is not a DNS name of letters, digits, '-' and '.': use e.g. \"ntm.test\"")]
    BadSuffix(String),
    /// An address that cannot be used.
    #[error("{field} = {value}: {why}")]
    BadAddr {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule.
        why: &'static str,
    },
    /// `tun_name` is not a usable interface name.
    #[error("tun_name = {0:?}: use 1-15 characters of letters, digits, '-', '_' and '.' (e.g. \"ntm0\")")]
    BadTunName(String),
    /// What every configuration can get wrong: the file, a key file, a number.
    #[error(transparent)]
    Common(#[from] config::Error),
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our FQDN.
    pub fqdn: String,
    /// `K_node`.
    pub key: Key,
    /// The DCs, in failover order (at least one).
    pub dcs: Vec<SocketAddrV4>,
    /// The upstream resolver.
    pub upstream: SocketAddr,
    /// Our UDP port.
    pub listen_port: u16,
    /// SO_RCVBUF and SO_SNDBUF asked for on it.
    pub socket_buffer: usize,
    /// TUN device name.
    pub tun_name: String,
    /// TUN MTU.
    pub mtu: u16,
    /// TUN queue length (txqueuelen), in packets.
    pub tun_queue_len: u32,
    /// TUN offloads (virtio-net header, TSO/USO, GRO).
    pub tun_offload: bool,
    /// DNS stub address.
    pub dns_listen: SocketAddr,
    /// NTM suffix, as configured.
    pub ntm_suffix: String,
    /// Settings of the DNS stub (its seed is filled in at start).
    pub dns: StubConfig,
    /// Hold queue bound per destination.
    pub hold_per_peer: usize,
    /// Hold queue bound in all.
    pub hold_total: usize,
    /// Hold time limit.
    pub hold_timeout: Duration,
    /// Statistics interval; None for none.
    pub stats_interval: Option<Duration>,
    /// Status file, if any.
    pub status_file: Option<PathBuf>,
    /// The metrics endpoint.
    pub metrics: ntm_ops::metrics::MetricsConfig,
}

impl Config {
    /// Check everything and produce the [`Settings`] the node runs on.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let suffix = self.check_names()?;
        let key: Key = self.key.parse().map_err(|_| ConfigError::BadKey)?;
        let dcs = config::dc_addresses(
            ("dc", self.dc),
            ("dcs", &self.dcs),
            ntm_proto::node::MAX_DCS,
        )
        .map_err(config::Error::from)?;
        self.check_addrs()?;
        self.check_tun()?;
        self.check_limits()?;
        let dns = StubConfig {
            ttl: self.dns_ttl,
            resolve_timeout: Duration::from_secs(self.dns_timeout_secs),
            ..StubConfig::default()
        };
        Ok(Settings {
            fqdn: self.fqdn.clone(),
            key,
            dcs,
            upstream: self.upstream,
            listen_port: self.listen_port,
            socket_buffer: self.socket_buffer,
            tun_name: self.tun_name.clone(),
            mtu: self.mtu,
            tun_queue_len: self.tun_queue_len,
            tun_offload: self.tun_offload,
            dns_listen: self.dns_listen,
            ntm_suffix: suffix.to_owned(),
            dns,
            hold_per_peer: self.hold_per_peer,
            hold_total: self.hold_total,
            hold_timeout: Duration::from_millis(self.hold_timeout_ms),
            stats_interval: config::interval(self.stats_interval_secs),
            status_file: self.status_file.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// `fqdn` under `ntm_suffix`; gives the suffix without a trailing dot.
    fn check_names(&self) -> Result<&str, ConfigError> {
        if validate_fqdn(self.fqdn.as_bytes()).is_err() {
            return Err(ConfigError::BadFqdn(self.fqdn.clone()));
        }
        let suffix = self
            .ntm_suffix
            .strip_suffix('.')
            .unwrap_or(&self.ntm_suffix);
        if ntm_proto::dns::parse_suffix(suffix).is_none() {
            return Err(ConfigError::BadSuffix(self.ntm_suffix.clone()));
        }
        if !self
            .fqdn
            .strip_suffix(&suffix.to_ascii_lowercase())
            .is_some_and(|host| host.ends_with('.'))
        {
            return Err(ConfigError::FqdnOutsideSuffix {
                fqdn: self.fqdn.clone(),
                suffix: suffix.to_owned(),
            });
        }
        Ok(suffix)
    }

    /// The upstream resolver, the stub's address and our port.
    fn check_addrs(&self) -> Result<(), ConfigError> {
        let bad = |field, value: &dyn std::fmt::Display, why| ConfigError::BadAddr {
            field,
            value: value.to_string(),
            why,
        };
        if self.upstream.ip().is_unspecified() || self.upstream.port() == 0 {
            return Err(bad(
                "upstream",
                &self.upstream,
                "must be a resolver's address and port (e.g. \"192.0.2.53:53\")",
            ));
        }
        if self.upstream == self.dns_listen {
            return Err(bad(
                "upstream",
                &self.upstream,
                "is the stub's own dns_listen address: queries would loop; name the real resolver",
            ));
        }
        if self.dns_listen.port() == 0 {
            return Err(bad(
                "dns_listen",
                &self.dns_listen,
                "needs a port (53 for stock resolvers)",
            ));
        }
        config::within(
            "listen_port",
            self.listen_port.into(),
            1..=u16::MAX.into(),
            "must be a port number (7700 by default)",
        )?;
        Ok(())
    }

    /// The UDP socket's buffers and the TUN device's name, MTU and queue.
    fn check_tun(&self) -> Result<(), ConfigError> {
        config::within(
            "socket_buffer",
            self.socket_buffer as u64,
            MIN_SOCKET_BUFFER as u64..=MAX_SOCKET_BUFFER as u64,
            "use 65536..=268435456 bytes (4194304, 4 MiB, by default)",
        )?;
        let tun_ok = (1..=15).contains(&self.tun_name.len())
            && self
                .tun_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !tun_ok {
            return Err(ConfigError::BadTunName(self.tun_name.clone()));
        }
        config::within(
            "mtu",
            self.mtu.into(),
            576..=1500,
            "use 576..=1500 (1440 fits a 1500-byte path with the 60-byte tunnel overhead)",
        )?;
        config::within(
            "tun_queue_len",
            self.tun_queue_len.into(),
            MIN_TUN_QUEUE_LEN.into()..=MAX_TUN_QUEUE_LEN.into(),
            "use 64..=16384 packets (1000 by default; see the example configuration for sizing it)",
        )?;
        Ok(())
    }

    /// The DNS stub's TTL and time-out, and the hold queue's bounds.
    fn check_limits(&self) -> Result<(), ConfigError> {
        config::at_most(
            "dns_ttl",
            self.dns_ttl.into(),
            MAX_TTL.into(),
            "at most 60 s (docs/protocol.md §6)",
        )?;
        let limits = [
            ("dns_timeout_secs", self.dns_timeout_secs, 60),
            ("hold_per_peer", self.hold_per_peer as u64, 4096),
            ("hold_total", self.hold_total as u64, 65_536),
            ("hold_timeout_ms", self.hold_timeout_ms, 60_000),
        ];
        for (field, value, _) in limits {
            config::at_least_1(field, value)?;
        }
        for (field, value, max) in limits {
            config::at_most(
                field,
                value,
                max,
                "too large: see the example configuration for sensible values",
            )?;
        }
        Ok(())
    }
}

ntm_ops::config_file!(
    Config,
    Settings,
    ConfigError,
    "ntm-node/ntm-node.example.toml",
    key of "ntm-node"
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn minimal() -> String {
        format!(
            "fqdn = \"cn.ntm.test\"\nkey = \"{KEY}\"\ndc = \"198.18.0.2:7710\"\nupstream = \"198.18.0.2:53\"\n"
        )
    }

    fn err(extra: &str) -> String {
        let text = format!("{}{extra}", minimal());
        match Config::from_toml(&text).and_then(|c| c.validate()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = Config::from_toml(&minimal()).unwrap().validate().unwrap();
        assert_eq!(s.listen_port, 7700);
        assert_eq!(s.socket_buffer, 4 << 20);
        assert_eq!(s.mtu, 1440);
        assert_eq!(s.tun_queue_len, 1000);
        assert!(s.tun_offload);
        assert_eq!(s.tun_name, "ntm0");
        assert_eq!(s.dns_listen, "127.0.0.1:53".parse().unwrap());
        assert_eq!(s.ntm_suffix, "ntm.test");
        assert_eq!(s.dns.ttl, 30);
        assert_eq!(s.stats_interval, Some(Duration::from_secs(60)));
        assert!(s.status_file.is_none());
    }

    #[test]
    fn round_trips_through_toml() {
        let key: Key = KEY.parse().unwrap();
        let mut c = Config::new(
            "cn2.ntm.test",
            &key,
            "198.18.0.2:7710".parse().unwrap(),
            "198.18.0.2:5353".parse().unwrap(),
        );
        c.status_file = Some("/tmp/x.json".into());
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ntm-node.example.toml");
        let c = Config::load(&path).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        assert!(err("bogus = 1\n").contains("unknown field"));
        let bad_fqdn = minimal().replace("cn.ntm.test", "Cn.ntm.test");
        let e = Config::from_toml(&bad_fqdn)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("fqdn = \"Cn.ntm.test\""), "{e}");
        let outside = minimal().replace("cn.ntm.test", "cn.example.org");
        let e = Config::from_toml(&outside).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("not under ntm_suffix"), "{e}");
        let short_key = minimal().replace(KEY, "abcd");
        let e = Config::from_toml(&short_key)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        assert!(err("mtu = 9000\n").contains("mtu = 9000"));
        assert!(err("tun_queue_len = 63\n").contains("tun_queue_len = 63"));
        assert!(err("tun_queue_len = 16385\n").contains("tun_queue_len"));
        assert!(err("tun_offload = 1\n").contains("tun_offload"));
        assert!(err("dns_ttl = 300\n").contains("60"));
        assert!(err("tun_name = \"a-very-long-interface-name\"\n").contains("tun_name"));
        assert!(err("ntm_suffix = \"ntm_test\"\n").contains("ntm_suffix"));
        assert!(err("hold_total = 0\n").contains("hold_total"));
        assert!(err("listen_port = 0\n").contains("listen_port"));
        assert!(err("socket_buffer = 65535\n").contains("socket_buffer = 65535"));
        assert!(err("socket_buffer = 268435457\n").contains("socket_buffer"));
        assert!(err("socket_buffer = -1\n").contains("socket_buffer"));
        assert!(err("dns_listen = \"198.18.0.2:53\"\n").contains("loop"));
        let no_dc = minimal().replace("dc = \"198.18.0.2:7710\"\n", "");
        let e = Config::from_toml(&no_dc).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("dc = (missing)"), "{e}");
        let dc0 = minimal().replace("198.18.0.2:7710", "0.0.0.0:7710");
        let e = Config::from_toml(&dc0).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("dc = 0.0.0.0:7710"), "{e}");
    }

    #[test]
    fn several_dcs_in_failover_order() {
        let two = "dcs = [\"198.18.0.2:7710\", \"198.18.0.4:7710\"]\n";
        let text = minimal().replace("dc = \"198.18.0.2:7710\"\n", two);
        let c = Config::from_toml(&text).unwrap();
        let s = c.validate().unwrap();
        assert_eq!(
            s.dcs,
            vec![
                "198.18.0.2:7710".parse().unwrap(),
                "198.18.0.4:7710".parse().unwrap()
            ]
        );
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        let both = format!("{}{two}", minimal());
        let e = Config::from_toml(&both).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }
}
