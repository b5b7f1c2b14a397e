//! ntma: the NTMobile adapter daemon (AF_XDP fast path, DHCP/ARP/DNS slow path, DC signaling).

pub mod ebpf;
pub mod fastpath;
pub mod gn;
pub mod xsk;
