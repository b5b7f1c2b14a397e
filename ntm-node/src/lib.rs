//! ntm-node: a software NTMobile node for Linux (TUN + UDP).
//!
//! A thin tokio driver ([`run`]) around the sans-IO
//! [`ntm_proto::node::Endpoint`] and [`ntm_proto::dns::DnsStub`]:
//!
//! * one UDP socket (port 7700) for DC signaling and tunnels: registers,
//!   keeps alive, re-registers when the local address changes (the route
//!   to the DC is checked every second) and deregisters on SIGINT/SIGTERM;
//! * a TUN device carrying the VIP with its prefix route and MTU 1440:
//!   packets from it go out as DATA, DATA from tunnels goes into it after
//!   the checks of docs/protocol.md §5 (tag with the receive direction key, and
//!   for suite 2 AES-256-GCM decryption in place; replay window; one whole
//!   IPv4 packet; inner source = peer VIP, inner destination = own VIP);
//!   only a datagram that passed them all counts as activity or moves the
//!   peer's endpoint (roaming); packets to a VIP whose tunnel is being set
//!   up wait in a bounded [`hold::HoldQueue`]; the device is read and
//!   written in batches with the kernel's offloads (TSO/GRO over a
//!   virtio-net header, as wireguard-go does) and a queue length of
//!   `tun_queue_len`;
//! * a DNS stub answering names under the NTM suffix through DIR_REQ and
//!   forwarding the rest to the upstream resolver;
//! * counters of every packet and every drop by reason ([`stats`]), logged
//!   periodically and on SIGUSR1, and written to a JSON status file
//!   ([`Status`]) every second when `status_file` is set; each tunnel's
//!   suite is in both, and so are the kernel's counters of the TUN device
//!   ([`TunDeviceStatus`]: the packets it dropped because the node did not
//!   read them in time).
//!
//! Configuration: [`Config`] (TOML, see `ntm-node.example.toml`), checked
//! by [`Config::validate`] into [`Settings`].

pub mod config;
/// Metrics built from the status snapshot (`[metrics] listen`).
pub mod metrics;
/// The hold queue (`ntm_proto::hold`), re-exported for the node's users.
pub use ntm_proto::hold;
mod node;
pub mod stats;
mod tun;

pub use config::{Config, ConfigError, Settings};
pub use node::{route_source, run, ADDR_POLL, STATUS_EVERY};
pub use ntm_ops::netdev::parse_proc_net_dev;
pub use stats::{Status, TunDeviceStatus, TunnelStatus};
