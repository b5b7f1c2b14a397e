//! A deterministic, virtual-time network for testing sans-IO parties
//! together (quinn-proto's `Pair` idea, for more than two): hosts with
//! addresses, NATs ([`NatKind`]), per-link latency, seeded loss, an
//! attacker's recording of the wire, and a clock that jumps from one event
//! to the next. No sockets, no real clock. Enabled by the `sim` feature.
//!
//! # Use
//!
//! A test world owns a [`Network`] and its parties, and implements
//! [`World`]: [`World::net`]/[`World::net_mut`] give the network,
//! [`World::host`] the party at a [`HostId`] as a [`Party`] (`handle`,
//! `poll_transmit`, `poll_timeout`, `handle_timeout`: the calls every
//! sans-IO party here takes). [`World::run_for`] then drives everything:
//! it collects what the hosts send, delivers the datagrams in order of
//! arrival and fires the timers, advancing the clock to the next event.
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use std::time::{Duration, Instant};
//! use ntm_proto::sim::{Party, HostId, NatKind, Network, World};
//!
//! /// Answers every datagram with the same bytes.
//! #[derive(Default)]
//! struct Echo { out: Vec<(SocketAddrV4, Vec<u8>)>, got: usize }
//! impl Party for Echo {
//!     fn handle(&mut self, _: Instant, from: SocketAddrV4, data: Vec<u8>) {
//!         self.got += 1;
//!         self.out.push((from, data));
//!     }
//!     fn poll_transmit(&mut self, _: Instant) -> Option<(SocketAddrV4, Vec<u8>)> {
//!         self.out.pop()
//!     }
//!     fn poll_timeout(&self) -> Option<Instant> { None }
//!     fn handle_timeout(&mut self, _: Instant) {}
//! }
//!
//! struct Two { net: Network, hosts: [Echo; 2] }
//! impl World for Two {
//!     fn net(&self) -> &Network { &self.net }
//!     fn net_mut(&mut self) -> &mut Network { &mut self.net }
//!     fn host(&mut self, id: HostId) -> Option<&mut dyn Party> {
//!         self.hosts.get_mut(id.0).map(|h| h as &mut dyn Party)
//!     }
//! }
//!
//! let mut net = Network::new(Instant::now(), Duration::from_millis(10));
//! let nat = net.add_nat(NatKind::PortRestricted, Ipv4Addr::new(198, 18, 0, 10));
//! let server = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7);
//! let a = net.add_host(SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 5000), Some(nat));
//! let b = net.add_host(server, None);
//! let mut w = Two { net, hosts: [Echo::default(), Echo::default()] };
//! w.hosts[0].out.push((server, b"ping".to_vec()));
//! w.net.set_loss(0.0, 1);
//! w.run_for(Duration::from_millis(35));
//! // ping (10 ms), echo back through the NAT (20 ms), and again (30 ms).
//! assert_eq!((w.hosts[0].got, w.hosts[1].got), (1, 2));
//! assert_eq!(w.net.public(a).ip(), &Ipv4Addr::new(198, 18, 0, 10));
//! assert_eq!(w.net.public(b), server);
//! ```
//!
//! [`Node`] is the [`Party`] for a [`crate::node::Endpoint`] (its events and
//! received inner packets kept for the test to look at), and [`NodeWorld`]
//! adds the steps node tests share (connect, send data both ways);
//! [`DcWorld`] is the usual such world: a DC, an RS and nodes. [`HostNode`]
//! is the [`Party`] for a [`crate::host::Host`] and a DNS stub, driven the way
//! the software node and the adapter drive theirs.

mod host;
mod net;
mod node;
mod world;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

pub use host::{a_query, HostNode};
pub use net::{Datagram, Filter, HostId, NatId, NatKind, Network};
pub use node::{ipv4, Node, NodeWorld};
pub use world::{fqdn_key, DcWorld};

/// A sans-IO party on the network.
pub trait Party {
    /// A datagram from `from` arrived.
    fn handle(&mut self, now: Instant, from: SocketAddrV4, data: Vec<u8>);
    /// The next datagram to send, if any: (destination, bytes).
    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddrV4, Vec<u8>)>;
    /// When [`Party::handle_timeout`] is due.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The deadline passed.
    fn handle_timeout(&mut self, now: Instant);
}

/// One datagram from a `poll_transmit(now, buf)` of this crate's parties
/// (or the DC's and RS's), as [`Party::poll_transmit`] returns it.
pub fn pull(
    poll_transmit: impl FnOnce(&mut [u8]) -> Option<crate::Transmit>,
) -> Option<(SocketAddrV4, Vec<u8>)> {
    let mut buf = [0u8; 2048];
    let t = poll_transmit(&mut buf)?;
    Some((t.dst, buf[..t.len].to_vec()))
}

/// A network and the parties on it, driven in virtual time.
pub trait World {
    /// The network.
    fn net(&self) -> &Network;
    /// The network, to change.
    fn net_mut(&mut self) -> &mut Network;
    /// The party at `id`; `None` for an address nobody drives.
    fn host(&mut self, id: HostId) -> Option<&mut dyn Party>;

    /// The virtual time.
    fn now(&self) -> Instant {
        self.net().now()
    }

    /// Puts what every running host has to send on the wire.
    fn flush(&mut self) {
        let now = self.now();
        for id in (0..self.net().host_count()).map(HostId) {
            if !self.net().is_up(id) {
                continue;
            }
            let mut out = Vec::new();
            if let Some(h) = self.host(id) {
                while let Some(t) = h.poll_transmit(now) {
                    out.push(t);
                }
            }
            for (dst, data) in out {
                self.net_mut().send(id, dst, data);
            }
        }
    }

    /// The next arrival or timer of a running host.
    fn next_wakeup(&mut self) -> Option<Instant> {
        let mut next = self.net().next_arrival();
        for id in (0..self.net().host_count()).map(HostId) {
            if !self.net().is_up(id) {
                continue;
            }
            let t = self.host(id).and_then(|h| h.poll_timeout());
            next = next.into_iter().chain(t).min();
        }
        next
    }

    /// Delivers every datagram due by now (those sent meanwhile wait).
    fn deliver_due(&mut self) {
        let mut due = Vec::new();
        while let Some(d) = self.net_mut().pop_due() {
            due.push(d);
        }
        let now = self.now();
        for (to, d) in due {
            if let Some(h) = to.and_then(|id| self.host(id)) {
                h.handle(now, d.src, d.data);
            }
        }
    }

    /// Delivers the first datagram due by now, then flushes; false when
    /// none is due.
    fn step(&mut self) -> bool {
        let Some((to, d)) = self.net_mut().pop_due() else {
            return false;
        };
        let now = self.now();
        if let Some(h) = to.and_then(|id| self.host(id)) {
            h.handle(now, d.src, d.data);
        }
        self.flush();
        true
    }

    /// Fires the timers of the running hosts that are due by now.
    fn fire_timers(&mut self) {
        let now = self.now();
        for id in (0..self.net().host_count()).map(HostId) {
            if !self.net().is_up(id) {
                continue;
            }
            if let Some(h) = self.host(id) {
                if h.poll_timeout().is_some_and(|t| t <= now) {
                    h.handle_timeout(now);
                }
            }
        }
    }

    /// Runs the world for `d` of virtual time: flush, jump to the next
    /// event, deliver what arrives, fire the timers, again.
    fn run_for(&mut self, d: Duration) {
        let end = self.now() + d;
        loop {
            self.flush();
            match self.next_wakeup() {
                Some(t) if t <= end => {
                    self.net_mut().advance_to(t);
                    self.deliver_due();
                    self.fire_timers();
                }
                _ => {
                    self.net_mut().advance_to(end);
                    self.flush();
                    return;
                }
            }
        }
    }
}
