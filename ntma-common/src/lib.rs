//! Types shared by the ntma XDP programs and userspace: map layouts, counters, constants (no_std).
//!
//! Everything here is plain data with a fixed `#[repr(C)]` layout, so that the eBPF
//! object (built for `bpfel-unknown-none`) and the daemon agree on the bytes of every
//! map value. With the `user` feature the types implement `aya::Pod`.
#![no_std]

/// Map names, as the eBPF object declares them and userspace looks them up.
pub mod maps {
    /// `Array<XdpConfig>` with one entry (index 0), written by userspace before attach.
    pub const CONFIG: &str = "NTMA_CONFIG";
    /// `PerCpuArray<u64>` of [`crate::Verdict::COUNT`] entries, indexed by [`crate::Verdict`].
    pub const COUNTERS: &str = "NTMA_COUNTERS";
    /// `XskMap` of the GN-facing NIC, indexed by RX queue.
    pub const LAN_XSKS: &str = "NTMA_LAN_XSKS";
    /// `XskMap` of the WAN NIC, indexed by RX queue.
    pub const WAN_XSKS: &str = "NTMA_WAN_XSKS";
    /// `HashMap<u32, u8>` of [`crate::MAX_GNS`] entries: the GNs' VIPs (host-order
    /// `u32`, value unused), written by userspace whenever the GN set changes.
    pub const GN_VIPS: &str = "NTMA_GN_VIPS";
}

/// Program names in the eBPF object.
pub mod programs {
    /// XDP program for the GN-facing NIC.
    pub const LAN: &str = "ntma_lan";
    /// XDP program for the WAN NIC.
    pub const WAN: &str = "ntma_wan";
}

/// Capacity of each `XskMap`: the most RX queues one NIC can use.
pub const MAX_QUEUES: u32 = 64;

/// Capacity of [`maps::GN_VIPS`]: the most GNs one adapter serves (at least the 254
/// hosts of a /24 LAN).
pub const MAX_GNS: u32 = 1024;

/// Default UDP port of a node / NTMA (docs/protocol.md §1).
pub const NTM_PORT: u16 = 7700;

/// NTM header and message constants the XDP program classifies on (docs/protocol.md §2, §4).
pub mod ntm {
    use core::ops::Range;

    /// Offsets into the common header, smoltcp style.
    pub mod field {
        use core::ops::Range;
        pub const VERSION: usize = 0;
        pub const TYPE: usize = 1;
        pub const FLAGS: usize = 2;
        pub const SUITE: usize = 3;
        pub const ID: Range<usize> = 4..8;
        pub const SEQ: Range<usize> = 8..16;
    }
    /// Length of the common header.
    pub const HEADER_LEN: usize = field::SEQ.end;
    /// Length of the authentication tag that ends every datagram.
    pub const TAG_LEN: usize = 16;
    /// The bytes of the header the XDP program must see to classify (version and type).
    pub const CLASSIFY: Range<usize> = 0..field::TYPE + 1;
    /// Protocol version 2 (docs/protocol.md §2): DATA and TUN_KEEPALIVE of any other
    /// version are not redirected.
    pub const VERSION: u8 = 2;
    /// Message type DATA.
    pub const TYPE_DATA: u8 = 0x01;
    /// Message type TUN_KEEPALIVE.
    pub const TYPE_TUN_KEEPALIVE: u8 = 0x02;
}

/// Ethernet, IPv4 and UDP layouts, smoltcp style (`field` ranges and lengths): the
/// XDP programs read them, and `ntma-user`'s wire layer builds its typed views on them.
pub mod net {
    /// Ethernet II (no VLAN tag).
    pub mod eth {
        /// Byte ranges of the header's fields.
        pub mod field {
            use core::ops::Range;
            /// Destination address.
            pub const DST: Range<usize> = 0..6;
            /// Source address.
            pub const SRC: Range<usize> = 6..12;
            /// EtherType.
            pub const ETHERTYPE: Range<usize> = 12..14;
        }
        /// Header length.
        pub const HEADER_LEN: usize = field::ETHERTYPE.end;
        /// Shortest frame without FCS; shorter ones are zero-padded.
        pub const MIN_FRAME_LEN: usize = 60;
        /// EtherType of IPv4.
        pub const ETHERTYPE_IPV4: u16 = 0x0800;
        /// EtherType of ARP.
        pub const ETHERTYPE_ARP: u16 = 0x0806;
    }

    /// IPv4 (RFC 791).
    pub mod ipv4 {
        /// Byte ranges of the header's fields.
        pub mod field {
            use core::ops::Range;
            /// Version (high nibble) and header length in 32-bit words (low nibble).
            pub const VER_IHL: usize = 0;
            /// DSCP and ECN.
            pub const DSCP_ECN: usize = 1;
            /// Total length.
            pub const LENGTH: Range<usize> = 2..4;
            /// Identification.
            pub const IDENT: Range<usize> = 4..6;
            /// Flags and fragment offset.
            pub const FLG_OFF: Range<usize> = 6..8;
            /// Time to live.
            pub const TTL: usize = 8;
            /// Protocol.
            pub const PROTOCOL: usize = 9;
            /// Header checksum.
            pub const CHECKSUM: Range<usize> = 10..12;
            /// Source address.
            pub const SRC: Range<usize> = 12..16;
            /// Destination address.
            pub const DST: Range<usize> = 16..20;
        }
        /// Header length without options.
        pub const MIN_HEADER_LEN: usize = field::DST.end;
        /// Don't Fragment, in the flags/fragment-offset word.
        pub const DF: u16 = 0x4000;
        /// More Fragments, in the flags/fragment-offset word.
        pub const MF: u16 = 0x2000;
        /// Fragment offset (8-byte units), in the flags/fragment-offset word.
        pub const OFFSET_MASK: u16 = 0x1fff;
        /// Protocol number of ICMP.
        pub const PROTO_ICMP: u8 = 1;
        /// Protocol number of TCP.
        pub const PROTO_TCP: u8 = 6;
        /// Protocol number of UDP.
        pub const PROTO_UDP: u8 = 17;
    }

    /// UDP (RFC 768).
    pub mod udp {
        /// Byte ranges of the header's fields.
        pub mod field {
            use core::ops::Range;
            /// Source port.
            pub const SRC_PORT: Range<usize> = 0..2;
            /// Destination port.
            pub const DST_PORT: Range<usize> = 2..4;
            /// Length of header and payload.
            pub const LENGTH: Range<usize> = 4..6;
            /// Checksum (0: none).
            pub const CHECKSUM: Range<usize> = 6..8;
        }
        /// Header length.
        pub const HEADER_LEN: usize = field::CHECKSUM.end;
    }
}

/// Configuration of the XDP programs (the single entry of [`maps::CONFIG`]).
///
/// Addresses and masks are host-order `u32` (`u32::from(Ipv4Addr)`); the programs
/// convert the packet's big-endian fields before comparing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// Network of the VIP prefix (e.g. 100.64.0.0).
    pub vip_net: u32,
    /// Mask of the VIP prefix (e.g. 0xffc0_0000 for /10).
    pub vip_mask: u32,
    /// The NTMA's own router address on the GN side (e.g. 100.64.0.1): never redirected.
    pub router_addr: u32,
    /// UDP port of the NTM tunnel on the WAN side (default [`NTM_PORT`]).
    pub ntm_port: u16,
    /// [`XdpConfig::ENABLED`] once userspace has written a valid configuration; until
    /// then both programs pass everything.
    pub flags: u16,
}

impl XdpConfig {
    /// Flag bit: the configuration is valid.
    pub const ENABLED: u16 = 1;

    /// A configuration for the VIP prefix `vip_net/prefix_len`, router address and NTM port.
    /// `prefix_len` above 32 is clamped to 32.
    pub const fn new(vip_net: u32, prefix_len: u8, router_addr: u32, ntm_port: u16) -> Self {
        let vip_mask = prefix_mask(prefix_len);
        Self {
            vip_net: vip_net & vip_mask,
            vip_mask,
            router_addr,
            ntm_port,
            flags: Self::ENABLED,
        }
    }

    /// Whether `addr` (host order) is inside the VIP prefix.
    #[inline(always)]
    pub const fn is_vip(&self, addr: u32) -> bool {
        addr & self.vip_mask == self.vip_net
    }

    /// Whether the programs should act at all.
    #[inline(always)]
    pub const fn enabled(&self) -> bool {
        self.flags & Self::ENABLED != 0
    }
}

/// Netmask of a prefix length, host order; lengths above 32 give /32.
pub const fn prefix_mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix_len as u32)
    }
}

/// Declares [`Verdict`] with its counter index, and derives `COUNT`, `ALL` and `name`
/// from the one list, so that a new variant is counted and named without more edits.
macro_rules! verdicts {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// All verdicts, in index order.
            pub const ALL: [$name; [$($name::$variant),+].len()] = [$($name::$variant),+];

            /// Number of verdicts, i.e. entries of the counter map.
            pub const COUNT: u32 = $name::ALL.len() as u32;

            /// A stable snake-case name, for status output and logs.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }
    };
}

verdicts! {
    /// Every verdict the XDP programs reach, each counted per CPU in [`maps::COUNTERS`].
    ///
    /// The discriminant (declaration order, from 0) is the counter index; `COUNT`,
    /// `ALL` and `name` follow from the list, so add a verdict by adding one line.
    pub enum Verdict {
        /// Programs loaded but not configured yet: everything passes.
        Unconfigured => "unconfigured",
        /// LAN: IPv4 from a GN's VIP to a VIP that is neither the router nor a GN,
        /// redirected to the queue's AF_XDP socket.
        LanRedirect => "lan_redirect",
        /// LAN: IPv4 to a VIP but no AF_XDP socket on this queue: passed.
        LanNoSocket => "lan_no_socket",
        /// LAN: not IPv4 (ARP and anything else): passed.
        LanNotIpv4 => "lan_not_ipv4",
        /// LAN: IPv4 to the router address (DHCP unicast, DNS, ping to the router): passed.
        LanToRouter => "lan_to_router",
        /// LAN: IPv4 to a non-VIP destination (DHCP broadcast, Internet): passed.
        LanNotVip => "lan_not_vip",
        /// LAN: IPv4 to a VIP from a source that is no GN's VIP (a host without its
        /// lease, spoofing): passed, the daemon decides.
        LanFromNonGn => "lan_from_non_gn",
        /// LAN: IPv4 from one GN to another GN's VIP: passed. GNs reach each other on
        /// the LAN directly (a frame seen here was flooded by a bridge).
        LanGnToGn => "lan_gn_to_gn",
        /// LAN: frame too short for the headers it claims: passed to the kernel, which drops it.
        LanMalformed => "lan_malformed",
        /// WAN: NTM DATA / TUN_KEEPALIVE redirected to the queue's AF_XDP socket.
        WanRedirect => "wan_redirect",
        /// WAN: NTM DATA / TUN_KEEPALIVE but no AF_XDP socket on this queue: passed.
        WanNoSocket => "wan_no_socket",
        /// WAN: not IPv4: passed.
        WanNotIpv4 => "wan_not_ipv4",
        /// WAN: IPv4 but not UDP: passed.
        WanNotUdp => "wan_not_udp",
        /// WAN: IPv4 fragment: passed, the kernel reassembles it.
        WanFragment => "wan_fragment",
        /// WAN: UDP to another port: passed.
        WanOtherPort => "wan_other_port",
        /// WAN: UDP to the NTM port with another message type (signaling): passed.
        WanSignaling => "wan_signaling",
        /// WAN: frame too short for the headers it claims: passed.
        WanMalformed => "wan_malformed",
        /// WAN: DATA / TUN_KEEPALIVE type with a protocol version other than
        /// [`ntm::VERSION`]: passed, the daemon's endpoint counts it (bad_version).
        WanOtherVersion => "wan_other_version",
    }
}

impl Verdict {
    /// The counter index.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `XdpConfig` is `#[repr(C)]`, `Copy`, made only of integers (u32, u32, u32,
    // u16, u16 = 16 bytes, no padding), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::XdpConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<XdpConfig>(), 16);
        assert_eq!(core::mem::align_of::<XdpConfig>(), 4);
    }

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(10), 0xffc0_0000);
        assert_eq!(prefix_mask(32), u32::MAX);
        assert_eq!(prefix_mask(40), u32::MAX);
    }

    #[test]
    fn vip_membership() {
        // 100.64.0.0/10, router 100.64.0.1
        let c = XdpConfig::new(0x6440_0000, 10, 0x6440_0001, NTM_PORT);
        assert!(c.enabled());
        assert!(c.is_vip(0x6440_0002));
        assert!(c.is_vip(0x647f_ffff));
        assert!(!c.is_vip(0x6480_0000));
        assert!(!c.is_vip(0xc612_0014));
        // A host address given as the network is masked down.
        assert_eq!(XdpConfig::new(0x6440_0005, 10, 0, 1).vip_net, 0x6440_0000);
        assert!(!XdpConfig::default().enabled());
    }

    #[test]
    fn verdicts_are_dense_and_named_uniquely() {
        assert_eq!(Verdict::COUNT, 18);
        assert_eq!(Verdict::ALL.len(), Verdict::COUNT as usize);
        assert_eq!(Verdict::WanOtherVersion.index() + 1, Verdict::COUNT);
        assert_eq!(Verdict::LanRedirect.name(), "lan_redirect");
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(v.index() as usize, i);
            for w in &Verdict::ALL[..i] {
                assert_ne!(v.name(), w.name());
            }
        }
    }

    #[test]
    fn ntm_header_fields() {
        assert_eq!(net::eth::HEADER_LEN, 14);
        assert_eq!(net::ipv4::MIN_HEADER_LEN, 20);
        assert_eq!(net::udp::HEADER_LEN, 8);
        assert_eq!(ntm::HEADER_LEN, 16);
        assert_eq!(ntm::CLASSIFY.end, 2);
        assert_eq!(ntm::VERSION, 2);
    }
}
