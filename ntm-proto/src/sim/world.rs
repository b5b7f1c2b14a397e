//! The usual world of node tests: a DC, an RS and nodes.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::{HostId, NatId, NatKind, Network, Node, NodeWorld, Party, World};
use crate::node::{Config, Endpoint};
use crate::wire::Caps;
use crate::Key;

/// A test key for an FQDN (its bytes folded into 32).
pub fn fqdn_key(fqdn: &str) -> Key {
    let mut k = [0u8; 32];
    for (i, b) in fqdn.bytes().enumerate() {
        k[i % 32] ^= b;
    }
    k[31] ^= 0x5a;
    Key::from_bytes(k)
}

/// A DC (host 0), an RS (host 1) and nodes (hosts 2 on, numbered from 0
/// as nodes), of whatever implementations the test brings.
pub struct DcWorld<D, R> {
    /// The network.
    pub net: Network,
    /// The DC.
    pub dc: D,
    /// The RS.
    pub rs: R,
    /// The nodes, in the order of [`DcWorld::add_node`].
    pub nodes: Vec<Node>,
}

impl<D: Party, R: Party> DcWorld<D, R> {
    /// The DC at `dc_addr` and the RS at `rs_addr`, on the internet, with
    /// `latency` on every link.
    pub fn new(
        now: Instant,
        latency: Duration,
        (dc_addr, dc): (SocketAddrV4, D),
        (rs_addr, rs): (SocketAddrV4, R),
    ) -> Self {
        let mut net = Network::new(now, latency);
        net.add_host(dc_addr, None);
        net.add_host(rs_addr, None);
        DcWorld {
            net,
            dc,
            rs,
            nodes: Vec::new(),
        }
    }

    /// A NAT with address-and-port-restricted filtering.
    pub fn add_nat(&mut self, public_ip: Ipv4Addr) -> NatId {
        self.net.add_nat(NatKind::PortRestricted, public_ip)
    }

    /// A node registering `fqdn` (key [`fqdn_key`]) from `local`; its index.
    pub fn add_node(&mut self, fqdn: &str, local: SocketAddrV4, nat: Option<NatId>) -> usize {
        let cfg = Config {
            fqdn: fqdn.into(),
            key: fqdn_key(fqdn),
            dc: self.net.local(HostId(0)),
            local_addr: local,
            caps: Caps::NODE,
        };
        let n = self.nodes.len() as u64 + 1;
        let ep = Endpoint::new(cfg, self.now(), 1_000_000 * n, [n as u8; 32])
            .expect("a valid node configuration");
        let id = self.net.add_host(local, nat);
        self.nodes.push(Node::new(id, ep));
        self.nodes.len() - 1
    }

    /// A stopped node is not driven any more (a crashed or unplugged node).
    pub fn set_running(&mut self, i: usize, running: bool) {
        self.net.set_up(self.nodes[i].id, running);
    }
}

impl<D: Party, R: Party> World for DcWorld<D, R> {
    fn net(&self) -> &Network {
        &self.net
    }

    fn net_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    fn host(&mut self, id: HostId) -> Option<&mut dyn Party> {
        match id.0 {
            0 => Some(&mut self.dc),
            1 => Some(&mut self.rs),
            n => self.nodes.get_mut(n - 2).map(|h| h as &mut dyn Party),
        }
    }
}

impl<D: Party, R: Party> NodeWorld for DcWorld<D, R> {
    fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }
}
