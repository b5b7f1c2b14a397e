//! The RS's TOML configuration.
//!
//! ```toml
//! listen = "0.0.0.0:7720"
//! id = 1
//! key = "<64 hex digits: K_rs, the same as in the DC's [[relay]] entry>"
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use ntm_ops::config;
use ntm_ops::metrics::MetricsConfig;
use ntm_proto::Key;
use serde::{Deserialize, Serialize};

/// The RS's UDP port (§1).
pub const DEFAULT_PORT: u16 = 7720;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on (nodes and the DC send here).
    #[serde(default = "default_listen")]
    pub listen: SocketAddrV4,
    /// The RS id: the header id of DC-RS messages, as in the DC's `[[relay]]` entry.
    pub id: u32,
    /// `K_rs`, 64 hex digits, shared with the DC (or `key_file`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A file holding `K_rs` (mode 0600), in place of `key`; relative to
    /// this file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The DCs that may send RELAY_DIR, when several DCs share one store:
    /// the RS then takes RELAY_DIR only from these addresses, with one
    /// replay window each (each DC has its own seq, §5 "Replay"). Empty:
    /// one DC, from any address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dcs: Vec<SocketAddrV4>,
    /// Most tunnels relayed at once; RELAY_DIR beyond is not acknowledged.
    #[serde(default = "default_max_bindings")]
    pub max_bindings: usize,
    /// Seconds between two statistics log lines; 0 turns them off (SIGUSR1
    /// still prints one).
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: u64,
    /// The status socket (`ntm-rs status`), mode 0660.
    #[serde(default = "default_status_socket")]
    pub status_socket: PathBuf,
    /// `[metrics]`: the Prometheus endpoint (off unless `listen` is set).
    #[serde(default, skip_serializing_if = "MetricsConfig::is_default")]
    pub metrics: MetricsConfig,
}

/// The status socket unless `status_socket` says otherwise.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/ntm-rs/ntm-rs.sock";

fn default_status_socket() -> PathBuf {
    PathBuf::from(DEFAULT_STATUS_SOCKET)
}

fn default_listen() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)
}
fn default_max_bindings() -> usize {
    65_536
}
fn default_stats_interval() -> u64 {
    60
}

impl Config {
    /// A configuration with the defaults and this id and key.
    pub fn new(id: u32, key: &Key) -> Config {
        Config {
            listen: default_listen(),
            id,
            key: key.to_hex(),
            key_file: None,
            dcs: Vec::new(),
            max_bindings: default_max_bindings(),
            stats_interval_secs: default_stats_interval(),
            status_socket: default_status_socket(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `key` is not 64 hex digits.
    #[error("key must be exactly 64 hex digits (32 bytes), the K_rs of the DC's [[relay]] entry with id = {0}; generate one with `ntm-dc keygen`")]
    BadKey(u32),
    /// What every configuration can get wrong: the file, a key file, a number.
    #[error(transparent)]
    Common(#[from] config::Error),
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddrV4,
    /// The RS id.
    pub id: u32,
    /// `K_rs`.
    pub key: Key,
    /// The DCs RELAY_DIR is taken from; empty for any.
    pub dcs: Vec<SocketAddrV4>,
    /// Binding bound.
    pub max_bindings: usize,
    /// Statistics interval; `None` for none.
    pub stats_interval: Option<Duration>,
    /// The status socket.
    pub status_socket: PathBuf,
    /// The metrics endpoint.
    pub metrics: MetricsConfig,
}

impl Config {
    /// Check everything.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let key: Key = self.key.parse().map_err(|_| ConfigError::BadKey(self.id))?;
        config::at_least_1("max_bindings", self.max_bindings as u64)?;
        let dcs = match self.dcs.as_slice() {
            [] => Vec::new(),
            many => config::dc_addresses(("dcs", None), ("dcs", many), ntm_proto::node::MAX_DCS)
                .map_err(config::Error::from)?,
        };
        Ok(Settings {
            listen: self.listen,
            id: self.id,
            key,
            dcs,
            max_bindings: self.max_bindings,
            stats_interval: config::interval(self.stats_interval_secs),
            status_socket: self.status_socket.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

ntm_ops::config_file!(
    Config,
    Settings,
    ConfigError,
    "ntm-rs/ntm-rs.example.toml",
    key of "ntm-rs"
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn round_trips_and_validates() {
        let c = Config::new(3, &Key::from_bytes([9; 32]));
        let s = c.validate().unwrap();
        assert_eq!(s.id, 3);
        assert_eq!(s.key, Key::from_bytes([9; 32]));
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn dcs_are_checked() {
        let mut c = Config::new(3, &Key::from_bytes([9; 32]));
        let dc: SocketAddrV4 = "198.18.0.2:7710".parse().unwrap();
        c.dcs = vec![dc, "198.18.0.4:7710".parse().unwrap()];
        assert_eq!(c.validate().unwrap().dcs, c.dcs);
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        c.dcs.push(dc);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("dcs") && e.contains("twice"), "{e}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ntm-rs.example.toml");
        Config::load(&path).unwrap().validate().unwrap();
    }

    #[test]
    fn key_file_in_place_of_key() {
        let dir = std::env::temp_dir().join(format!("ntm-rs-keyfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = Key::from_bytes([9; 32]);
        ntm_ops::keys::write_private(&dir.join("rs.key"), &format!("{}\n", key.to_hex())).unwrap();
        let cfg = dir.join("rs.toml");
        std::fs::write(&cfg, "id = 3\nkey_file = \"rs.key\"\n").unwrap();
        let c = Config::load(&cfg).unwrap();
        assert!(!c.holds_inline_key());
        assert_eq!(c.validate().unwrap().key, key);
        std::fs::set_permissions(
            dir.join("rs.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let e = Config::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let mut c = Config::new(3, &Key::from_bytes([9; 32]));
        c.key = "12".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("64 hex digits"));
        c.key = Key::from_bytes([9; 32]).to_hex();
        c.max_bindings = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_bindings"));
        // Neither key nor key_file: loading says so, validating too.
        let e = Config::from_toml("id = 1\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("key"), "{e}");
        let e = Config::load(Path::new("/nonexistent/rs.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/rs.toml"), "{e}");
    }
}
