//! ntma: the NTMobile adapter daemon (AF_XDP fast path, DHCP/ARP/DNS slow path, DC signaling).

pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
#[cfg(debug_assertions)]
pub mod debug;
pub mod ebpf;
pub mod fastpath;
pub mod gn;
pub mod metrics;
pub mod os;
pub mod privs;
pub mod rawpath;
pub mod reload;
pub mod status;
pub mod wire;
pub mod xsk;
