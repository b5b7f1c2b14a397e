//! ntm-rs: the NTMobile Relay Server (`docs/protocol.md`, wire protocol
//! version 2, §5, RELAY).
//!
//! When both ends of a tunnel sit behind different NATs, the DC directs the
//! tunnel through a relay server: it opens a binding with RELAY_DIR, each
//! end binds its address with RELAY_BIND, and the RS then forwards every
//! datagram of that tunnel id from one bound address to the other,
//! unchanged (of either suite: the RS holds no tunnel key), and drops
//! everything else. RELAY_DIR and RELAY_BIND are suite-1 signaling, each
//! checked against a replay window (the DC's, and one per end of each
//! binding) after its tag and before it is acted on: see [`relay`].
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`Config`] (serde, TOML), [`Config::validate`] → [`Settings`], [`ConfigError`] |
//! | [`relay`] | [`Relay`]: the sans-IO core; [`Verdict`], [`DropReason`], [`Stats`] |
//! | [`status`] | [`Status`]: the snapshot `ntm-rs status` and the metrics are built from |
//!
//! The binary `ntm-rs` is a thin tokio driver around [`Relay`].
//!
//! # Example
//!
//! ```
//! use std::time::Instant;
//! use ntm_proto::Key;
//! use ntm_rs::{Config, Relay};
//!
//! let now = Instant::now();
//! let mut rs = Relay::new(&Config::new(1, &Key::from_bytes([3; 32])), now, 1_700_000_000_000_000_000)?;
//! // A datagram for a tunnel nobody set up is dropped and counted.
//! let junk = [0u8; 40];
//! assert!(rs.handle(now, "198.18.0.9:7700".parse().unwrap(), &junk).is_err());
//! assert_eq!(rs.drops().total(), 1);
//! # Ok::<(), ntm_rs::ConfigError>(())
//! ```

pub mod config;
pub mod relay;
pub mod status;

pub use config::{Config, ConfigError, Settings, DEFAULT_PORT};
pub use relay::{BindingInfo, DropReason, Drops, Relay, Stats, Transmit, Verdict};
pub use status::Status;
