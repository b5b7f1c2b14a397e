//! ntm-dc: the NTMobile Direction Coordinator (`docs/protocol.md`, wire
//! protocol version 2, §5).
//!
//! The DC registers nodes and hands out VIPs from a pool, keeps the
//! registrations alive, detects NAT, and answers direction requests with
//! the path table of §5: it creates the tunnel id and keys, tells the relay
//! server (RELAY_DIR) when the path needs one, and sends ROUTE_DIR to both
//! ends.
//!
//! Version 2 in the DC:
//! - REG_RESP echoes the REG_REQ's REQ_ID (on refusals too).
//! - ROUTE_DIR names the tunnel's suite (SUITE TLV) from the configuration's
//!   `tunnel_suite`: 2 = AES-256-GCM by default, 1 = HMAC-SHA256-128. It
//!   still carries `K_tun` (WRAPPED_KEY); each end derives its two
//!   direction keys from it (§3).
//! - Everything the DC receives is signaling and must be suite 1; a replay
//!   window per node (`K_node`, for the life of the process, across
//!   re-registrations) and per RS (`K_rs`) drops replays after the tag and
//!   before anything is acted on, counted as `replay`. Everything it sends,
//!   retransmissions included, carries its next seq (from the Unix time in
//!   ns). See [`coordinator`].
//! - At most [`coordinator::MAX_DIRECTIONS_PER_NODE`] (256) directions per
//!   requesting node; beyond, that node gets EXHAUSTED.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`Config`] (serde, TOML), [`Config::validate`] → [`Settings`], [`ConfigError`] |
//! | [`coordinator`] | [`Coordinator`]: the sans-IO state machine; [`plan_path`] (the path table) |
//! | [`store`] | [`DcStore`]: registrations, replay marks and reserved counters, in memory ([`MemoryStore`]) or durable in a redb file ([`RedbStore`]) |
//! | [`pool`] | [`VipPool`]: CIDR pool, reserved addresses, stable preferred VIP per FQDN |
//! | [`counters`] | [`DropReason`], [`Drops`], [`Stats`] |
//! | [`status`] | [`Status`]: the snapshot `ntm-dc status` and the metrics are built from |
//!
//! The binary `ntm-dc` is a thin tokio driver around [`Coordinator`].
//!
//! # The order of the ROUTE_DIRs
//!
//! The TUN_REQ receiver must have its ROUTE_DIR before the TUN_REQ comes,
//! or it drops it and set-up waits 250 ms for the retransmission. When MN
//! initiates (DIRECT and RELAY) the DC sends CN's ROUTE_DIR first (on RELAY
//! after RELAY_ACK) and answers MN's DIR_REQ only on CN's ROUTE_ACK; if CN
//! never acknowledges, MN hears UNREACHABLE before its DIR_REQ times out.
//! On REVERSE, where CN initiates, MN's answer cannot be acknowledged, so
//! both copies go out at once (MN's first).
//!
//! # Node ids and DC restarts
//!
//! A node's id is derived from its FQDN ([`config::node_id_for`]), not
//! allocated, so a restarted DC still knows which `K_node` a node's
//! KEEPALIVE or DIR_REQ uses: it verifies the message and answers an
//! authenticated ERROR (STATUS NOT_FOUND), on which the node re-registers
//! at once. VIPs are chosen from a hash of the FQDN (or fixed in the
//! config), so the node gets the same VIP back and its tunnels, which never
//! pass through the DC, stay up.
//!
//! # Example
//!
//! ```
//! use std::time::Instant;
//! use ntm_dc::{Config, Coordinator, NodeEntry};
//! use ntm_proto::Key;
//!
//! let config = Config {
//!     nodes: vec![NodeEntry::new("cn.ntm.test", &Key::from_bytes([7; 32]))],
//!     ..Config::default()
//! };
//! let now = Instant::now();
//! let mut dc = Coordinator::new(&config, now, 1_700_000_000_000_000_000, [1; 32])?;
//! // A real driver loops: recv_from → dc.handle(now, from, bytes);
//! // deadline → dc.handle_timeout(now); then drain dc.poll_transmit.
//! let mut buf = [0u8; ntm_proto::wire::MAX_SIGNALING_LEN];
//! assert!(dc.poll_transmit(now, &mut buf).is_none());
//! assert!(dc.poll_timeout().is_some());
//! # Ok::<(), ntm_dc::ConfigError>(())
//! ```

pub mod config;
pub mod coordinator;
pub mod counters;
pub mod pool;
pub mod status;
pub mod store;

pub use config::{Config, ConfigError, NodeEntry, RelayEntry, Settings, DEFAULT_PORT};
pub use coordinator::{
    plan_path, Coordinator, End, PathPlan, ReloadError, Reloaded, Transmit, TunnelInfo,
};
pub use counters::{DropReason, Drops, Stats};
pub use pool::VipPool;
pub use status::Status;
pub use store::{
    DcStore, EtcdOptions, EtcdStore, Expiry, Handoff, Mark, MemoryStore, Peer, RedbStore,
    Registration, RemoteRoute, Reserved, StoreError,
};
