//! The topology of `docs/testbed.md` as data: roles, addresses, interface
//! names, and the links, addresses and routes that `up` builds and `status`
//! checks. One table drives both, so they cannot disagree.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The prefix used when none is given (`cargo xtask testbed up`).
pub const DEFAULT_PREFIX: &str = "ntm-";

/// The NTM domain.
pub const NTM_DOMAIN: &str = "ntm.test";
/// The general node behind the adapter.
pub const GN_FQDN: &str = "gn.ntm.test";
/// The second general node, on the same LAN as gn.
pub const GN2_FQDN: &str = "gn2.ntm.test";
/// The software node on the 198.18.0.0/24 "internet" (a global node).
pub const CN_FQDN: &str = "cn.ntm.test";
/// The software node behind nat2.
pub const CN2_FQDN: &str = "cn2.ntm.test";
/// A software node run in the ntma namespace (behind nat1), for tests that
/// need a node there instead of the adapter.
pub const NODE_FQDN: &str = "node.ntm.test";
/// Every FQDN that gets a `K_node` in the key store.
pub const NODE_FQDNS: [&str; 5] = [GN_FQDN, GN2_FQDN, CN_FQDN, CN2_FQDN, NODE_FQDN];

/// The VIP pool, 100.64.0.0/10: network address and prefix length.
pub const VIP_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
/// The "internet" behind the bridge, 198.18.0.0/24.
pub const INET_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 24);

/// ntma `lan0`: router, DNS and DHCP server address for the GNs (/10).
pub const NTMA_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// ntma `wan0` (/24), default route via [`NAT1_LAN_ADDR`].
pub const NTMA_WAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 2);
/// nat1 `lan` (/24).
pub const NAT1_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
/// nat1 `wan` (/24): what hosts on the internet see for ntma's traffic.
pub const NAT1_WAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The Direction Coordinator.
pub const DC_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The Relay Server.
pub const RS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The second Direction Coordinator (several DCs on one etcd store).
pub const DC2_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
/// The etcd cluster's namespace: every member listens here, each on
/// ports of its own.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
/// The global node cn.
pub const CN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
/// nat2 `wan` (/24): what hosts on the internet see for cn2's traffic.
pub const NAT2_WAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
/// nat2 `lan` (/24), cn2's default gateway.
pub const NAT2_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 1);
/// cn2 `eth0` (/24), default route via [`NAT2_LAN_ADDR`].
pub const CN2_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 2);

/// Interface names inside the namespaces. They carry no prefix: each
/// namespace has its own set of names.
pub mod ifname {
    /// gn's and gn2's only interface (no address until DHCP); also the one
    /// interface of dc, dc2, etcd, rs, cn and cn2.
    pub const ETH0: &str = "eth0";
    /// ntma towards the GNs (a port of the lan bridge).
    pub const NTMA_LAN: &str = "lan0";
    /// ntma towards nat1.
    pub const NTMA_WAN: &str = "wan0";
    /// nat1/nat2 inside interface.
    pub const NAT_LAN: &str = "lan";
    /// nat1/nat2 outside interface (on the bridge).
    pub const NAT_WAN: &str = "wan";
    /// The bridge in the lan and inet namespaces.
    pub const BRIDGE: &str = "br0";
}

/// One namespace of the testbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The general node: stock tools only, no address until DHCP.
    Gn,
    /// The second general node, beside gn on the lan bridge.
    Gn2,
    /// The bridge `br0` joining gn, gn2 and ntma's `lan0`: the GNs'
    /// Ethernet segment. No address; nothing runs there.
    Lan,
    /// The adapter.
    Ntma,
    /// Masquerading NAT between ntma and the internet.
    Nat1,
    /// The bridge `br0` joining every 198.18.0.0/24 host.
    Inet,
    /// Direction Coordinator.
    Dc,
    /// Relay Server.
    Rs,
    /// Global software node `cn.ntm.test`.
    Cn,
    /// Masquerading NAT in front of cn2.
    Nat2,
    /// Software node `cn2.ntm.test` behind nat2.
    Cn2,
    /// The second Direction Coordinator (idle unless a test starts one).
    Dc2,
    /// The etcd cluster the DCs share (idle unless a test starts one).
    Etcd,
}

impl Role {
    /// Every role, in the order `up` builds them.
    pub const ALL: [Role; 13] = [
        Role::Gn,
        Role::Gn2,
        Role::Lan,
        Role::Ntma,
        Role::Nat1,
        Role::Inet,
        Role::Dc,
        Role::Rs,
        Role::Cn,
        Role::Nat2,
        Role::Cn2,
        Role::Dc2,
        Role::Etcd,
    ];

    /// The namespace name without the prefix (`gn`, `ntma`, ...).
    pub const fn suffix(self) -> &'static str {
        match self {
            Role::Gn => "gn",
            Role::Gn2 => "gn2",
            Role::Lan => "lan",
            Role::Ntma => "ntma",
            Role::Nat1 => "nat1",
            Role::Inet => "inet",
            Role::Dc => "dc",
            Role::Rs => "rs",
            Role::Cn => "cn",
            Role::Nat2 => "nat2",
            Role::Cn2 => "cn2",
            Role::Dc2 => "dc2",
            Role::Etcd => "etcd",
        }
    }

    /// The namespace name for this role in the testbed with `prefix`.
    pub fn ns(self, prefix: &str) -> String {
        format!("{prefix}{}", self.suffix())
    }

    /// The address this role's programs use and others reach it at: ntma's
    /// WAN address, a NAT's outside address, a host's only address. `None`
    /// for the GNs (no address until DHCP) and the bridges lan and inet
    /// (no address).
    pub const fn addr(self) -> Option<Ipv4Addr> {
        match self {
            Role::Gn | Role::Gn2 | Role::Lan | Role::Inet => None,
            Role::Ntma => Some(NTMA_WAN_ADDR),
            Role::Nat1 => Some(NAT1_WAN_ADDR),
            Role::Dc => Some(DC_ADDR),
            Role::Rs => Some(RS_ADDR),
            Role::Cn => Some(CN_ADDR),
            Role::Nat2 => Some(NAT2_WAN_ADDR),
            Role::Cn2 => Some(CN2_ADDR),
            Role::Dc2 => Some(DC2_ADDR),
            Role::Etcd => Some(ETCD_ADDR),
        }
    }

    /// The address the rest of the internet sees for this role's traffic:
    /// the NAT's outside address for ntma and cn2, [`Role::addr`] otherwise.
    pub const fn public_addr(self) -> Option<Ipv4Addr> {
        match self {
            Role::Ntma => Some(NAT1_WAN_ADDR),
            Role::Cn2 => Some(NAT2_WAN_ADDR),
            other => other.addr(),
        }
    }

    /// The FQDN of the NTM node living in this namespace, if there is one
    /// by design (a node started in ntma uses [`NODE_FQDN`]).
    pub const fn fqdn(self) -> Option<&'static str> {
        match self {
            Role::Gn => Some(GN_FQDN),
            Role::Gn2 => Some(GN2_FQDN),
            Role::Cn => Some(CN_FQDN),
            Role::Cn2 => Some(CN2_FQDN),
            _ => None,
        }
    }

    /// The nameserver written into this namespace's resolv.conf. The GNs
    /// ask the adapter; everyone else gets a loopback address, so nothing
    /// ever queries a resolver outside the testbed.
    pub(crate) const fn nameserver(self) -> Ipv4Addr {
        match self {
            Role::Gn | Role::Gn2 => NTMA_LAN_ADDR,
            _ => Ipv4Addr::LOCALHOST,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.suffix() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Role::ALL.iter().map(|r| r.suffix()).collect();
                format!("unknown role {s:?}, expected one of {}", names.join(", "))
            })
    }
}

/// One veth pair: `a_if` in `a`, `b_if` in `b`.
pub(crate) struct Veth {
    pub a: Role,
    pub a_if: &'static str,
    pub b: Role,
    pub b_if: &'static str,
    /// On the AF_XDP path: gets the configured queue count (both ends, so
    /// native XDP can attach); see [`TX_CSUM_OFF`] for the offloads.
    pub xdp_path: bool,
}

/// The veth pairs. A bridge's ports are the `b` ends in its namespace.
pub(crate) const VETHS: [Veth; 12] = [
    // Every pair on the GNs' segment has the AF_XDP path's queue count:
    // XDP on gn's eth0 (the benchmark's sink) keeps the queues it had as
    // lan0's direct peer.
    Veth {
        a: Role::Gn,
        a_if: ifname::ETH0,
        b: Role::Lan,
        b_if: "gn",
        xdp_path: true,
    },
    Veth {
        a: Role::Gn2,
        a_if: ifname::ETH0,
        b: Role::Lan,
        b_if: "gn2",
        xdp_path: true,
    },
    Veth {
        a: Role::Ntma,
        a_if: ifname::NTMA_LAN,
        b: Role::Lan,
        b_if: "ntma",
        xdp_path: true,
    },
    Veth {
        a: Role::Ntma,
        a_if: ifname::NTMA_WAN,
        b: Role::Nat1,
        b_if: ifname::NAT_LAN,
        xdp_path: true,
    },
    Veth {
        a: Role::Nat1,
        a_if: ifname::NAT_WAN,
        b: Role::Inet,
        b_if: "nat1",
        xdp_path: false,
    },
    Veth {
        a: Role::Dc,
        a_if: ifname::ETH0,
        b: Role::Inet,
        b_if: "dc",
        xdp_path: false,
    },
    Veth {
        a: Role::Rs,
        a_if: ifname::ETH0,
        b: Role::Inet,
        b_if: "rs",
        xdp_path: false,
    },
    Veth {
        a: Role::Cn,
        a_if: ifname::ETH0,
        b: Role::Inet,
        b_if: "cn",
        xdp_path: false,
    },
    Veth {
        a: Role::Nat2,
        a_if: ifname::NAT_WAN,
        b: Role::Inet,
        b_if: "nat2",
        xdp_path: false,
    },
    Veth {
        a: Role::Nat2,
        a_if: ifname::NAT_LAN,
        b: Role::Cn2,
        b_if: ifname::ETH0,
        xdp_path: false,
    },
    Veth {
        a: Role::Dc2,
        a_if: ifname::ETH0,
        b: Role::Inet,
        b_if: "dc2",
        xdp_path: false,
    },
    Veth {
        a: Role::Etcd,
        a_if: ifname::ETH0,
        b: Role::Inet,
        b_if: "etcd",
        xdp_path: false,
    },
];

/// Interfaces whose traffic AF_XDP (or a raw socket) sees: TX checksum
/// offload off, or the L4 checksums read there are partial. A GN's partial
/// checksum would cross the lan bridge unchanged (a bridge forwards the
/// skb as it is), so the GNs' eth0 compute it in software, and every
/// bridge port does too, so that no frame reaches lan0 partial whoever
/// sent it.
pub(crate) const TX_CSUM_OFF: [(Role, &str); 8] = [
    (Role::Gn, ifname::ETH0),
    (Role::Gn2, ifname::ETH0),
    (Role::Lan, "gn"),
    (Role::Lan, "gn2"),
    (Role::Lan, "ntma"),
    (Role::Ntma, ifname::NTMA_LAN),
    (Role::Ntma, ifname::NTMA_WAN),
    (Role::Nat1, ifname::NAT_LAN),
];

/// Addresses: (namespace, interface, address, prefix length).
pub(crate) const ADDRS: [(Role, &str, Ipv4Addr, u8); 12] = [
    (Role::Ntma, ifname::NTMA_LAN, NTMA_LAN_ADDR, 10),
    (Role::Ntma, ifname::NTMA_WAN, NTMA_WAN_ADDR, 24),
    (Role::Nat1, ifname::NAT_LAN, NAT1_LAN_ADDR, 24),
    (Role::Nat1, ifname::NAT_WAN, NAT1_WAN_ADDR, 24),
    (Role::Dc, ifname::ETH0, DC_ADDR, 24),
    (Role::Rs, ifname::ETH0, RS_ADDR, 24),
    (Role::Cn, ifname::ETH0, CN_ADDR, 24),
    (Role::Nat2, ifname::NAT_WAN, NAT2_WAN_ADDR, 24),
    (Role::Nat2, ifname::NAT_LAN, NAT2_LAN_ADDR, 24),
    (Role::Cn2, ifname::ETH0, CN2_ADDR, 24),
    (Role::Dc2, ifname::ETH0, DC2_ADDR, 24),
    (Role::Etcd, ifname::ETH0, ETCD_ADDR, 24),
];

/// Default routes. Nobody else gets one: nothing leads out of the testbed.
pub(crate) const DEFAULT_ROUTES: [(Role, Ipv4Addr); 2] =
    [(Role::Ntma, NAT1_LAN_ADDR), (Role::Cn2, NAT2_LAN_ADDR)];

/// Masquerading NATs. They forward; nobody else does (the adapter forwards
/// on its own, through AF_XDP).
pub(crate) const NATS: [Role; 2] = [Role::Nat1, Role::Nat2];

/// The namespaces holding a bridge [`ifname::BRIDGE`], with STP off and
/// no forward delay, so that a port forwards as soon as it is up.
pub(crate) const BRIDGES: [Role; 2] = [Role::Lan, Role::Inet];

/// br_netfilter's per-namespace switches (present when the kernel has
/// it). Each is 0 in the bridges' namespaces: with them on, the bridge
/// hands IPv4 and ARP frames to the IP hooks, which drop malformed
/// headers, so a GN's bad frames would never reach lan0. A switch does
/// not look at IP.
pub(crate) const BRIDGE_NF_CALL: [&str; 3] = [
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/bridge/bridge-nf-call-arptables",
];

/// The interfaces `up` creates in `role`'s namespace, besides `lo`.
pub(crate) fn interfaces(role: Role) -> Vec<&'static str> {
    let mut v = Vec::new();
    if BRIDGES.contains(&role) {
        v.push(ifname::BRIDGE);
    }
    for l in &VETHS {
        if l.a == role {
            v.push(l.a_if);
        }
        if l.b == role {
            v.push(l.b_if);
        }
    }
    v
}

/// The queue count of `role`'s interface `ifname` with `queues` configured.
pub(crate) fn queues_of(role: Role, ifname: &str, queues: u16) -> Option<u16> {
    VETHS.iter().find_map(|l| {
        let ours = (l.a == role && l.a_if == ifname) || (l.b == role && l.b_if == ifname);
        ours.then_some(if l.xdp_path { queues } else { 1 })
    })
}

/// The ports of the bridge in `role`'s namespace (none without one).
pub(crate) fn bridge_ports(role: Role) -> impl Iterator<Item = &'static str> {
    let bridged = BRIDGES.contains(&role);
    VETHS
        .iter()
        .filter(move |l| bridged && l.b == role)
        .map(|l| l.b_if)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_name() {
        for r in Role::ALL {
            assert_eq!(r.suffix().parse::<Role>(), Ok(r));
            assert_eq!(r.ns("ntm-"), format!("ntm-{r}"));
        }
        assert!("router".parse::<Role>().unwrap_err().contains("nat2"));
    }

    #[test]
    fn interface_names_fit_and_are_unique_per_namespace() {
        for r in Role::ALL {
            let ifs = interfaces(r);
            for (i, a) in ifs.iter().enumerate() {
                assert!(a.len() <= 15, "{a}");
                assert!(!ifs[i + 1..].contains(a), "{a} twice in {r}");
            }
        }
        assert_eq!(interfaces(Role::Gn), ["eth0"]);
        assert_eq!(interfaces(Role::Gn2), ["eth0"]);
        assert_eq!(interfaces(Role::Lan), ["br0", "gn", "gn2", "ntma"]);
        assert_eq!(interfaces(Role::Ntma), ["lan0", "wan0"]);
        assert_eq!(
            interfaces(Role::Inet),
            ["br0", "nat1", "dc", "rs", "cn", "nat2", "dc2", "etcd"]
        );
    }

    #[test]
    fn every_address_sits_on_an_interface_of_its_namespace() {
        for (role, ifname, _, _) in ADDRS {
            assert!(interfaces(role).contains(&ifname), "{role} {ifname}");
        }
        for (role, _) in TX_CSUM_OFF {
            assert_eq!(queues_of(role, "nope", 2), None);
        }
        assert_eq!(queues_of(Role::Gn, "eth0", 2), Some(2));
        assert_eq!(queues_of(Role::Gn2, "eth0", 2), Some(2));
        // Both ends of lan0's pair: native XDP on lan0 needs at least as
        // many RX queues as its peer has TX queues.
        assert_eq!(queues_of(Role::Ntma, "lan0", 2), Some(2));
        assert_eq!(queues_of(Role::Lan, "ntma", 2), Some(2));
        assert_eq!(queues_of(Role::Lan, "br0", 2), None);
        assert_eq!(queues_of(Role::Nat1, "lan", 2), Some(2));
        assert_eq!(queues_of(Role::Nat1, "wan", 2), Some(1));
    }

    #[test]
    fn the_gns_share_one_bridge_with_lan0() {
        assert_eq!(
            bridge_ports(Role::Lan).collect::<Vec<_>>(),
            ["gn", "gn2", "ntma"]
        );
        assert_eq!(
            bridge_ports(Role::Inet).collect::<Vec<_>>(),
            ["nat1", "dc", "rs", "cn", "nat2", "dc2", "etcd"]
        );
        assert_eq!(bridge_ports(Role::Ntma).count(), 0);
        // Every interface a frame crosses from a GN to lan0, and lan0.
        for hop in [
            (Role::Gn, "eth0"),
            (Role::Gn2, "eth0"),
            (Role::Lan, "gn"),
            (Role::Lan, "gn2"),
            (Role::Lan, "ntma"),
            (Role::Ntma, "lan0"),
        ] {
            assert!(TX_CSUM_OFF.contains(&hop), "{hop:?}");
        }
        for (role, ifname) in TX_CSUM_OFF {
            assert!(interfaces(role).contains(&ifname), "{role} {ifname}");
        }
    }

    #[test]
    fn roles_have_the_addresses_of_the_topology() {
        assert_eq!(Role::Cn.addr(), Some(Ipv4Addr::new(198, 18, 0, 20)));
        assert_eq!(Role::Dc2.addr(), Some(Ipv4Addr::new(198, 18, 0, 4)));
        assert_eq!(Role::Etcd.public_addr(), Some(ETCD_ADDR));
        assert_eq!(Role::Cn2.public_addr(), Some(NAT2_WAN_ADDR));
        assert_eq!(Role::Ntma.public_addr(), Some(NAT1_WAN_ADDR));
        for role in [Role::Gn, Role::Gn2, Role::Lan, Role::Inet] {
            assert_eq!(role.addr(), None, "{role}");
        }
        assert_eq!(Role::Gn.nameserver(), NTMA_LAN_ADDR);
        assert_eq!(Role::Gn2.nameserver(), NTMA_LAN_ADDR);
        assert_eq!(Role::Lan.nameserver(), Ipv4Addr::LOCALHOST);
        assert_eq!(Role::Gn2.fqdn(), Some(GN2_FQDN));
        assert!(NODE_FQDNS.contains(&GN2_FQDN));
    }
}
