//! What the adapter asks of the operating system outside the datapaths'
//! own sockets: the kernel's view of the NICs ([`sys`]: sysfs, getifaddrs,
//! `/proc`), the NAT rules for `non_vip = "nat"` ([`nat`]: nft, sysctl), the
//! GN-facing AF_PACKET socket ([`packet`]) and the NICs' own drop counters
//! ([`ifstats`]). The control side, the daemon, the status and the raw
//! datapath use it; it uses none of them.

pub mod ifstats;
pub mod nat;
pub mod packet;
pub mod sys;
pub mod xdp;
