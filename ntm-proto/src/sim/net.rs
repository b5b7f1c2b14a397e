//! The simulated network: hosts with addresses, NATs, per-link latency,
//! seeded loss, and the datagrams in flight ordered by delivery time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::wire::{MessageType, Packet};

/// A host's index in its [`Network`] (in the order of [`Network::add_host`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub usize);

/// A NAT's index in its [`Network`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatId(pub usize);

/// How a NAT maps and filters (RFC 4787 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering: anyone may send to a mapping.
    FullCone,
    /// Endpoint-independent mapping; only addresses the host sent to may answer.
    AddressRestricted,
    /// Endpoint-independent mapping; only the address:ports the host sent to
    /// may answer (what the worlds use by default).
    PortRestricted,
    /// A mapping per destination, port-restricted filtering.
    Symmetric,
}

struct Nat {
    kind: NatKind,
    public_ip: Ipv4Addr,
    /// (local, destination for a symmetric NAT) -> public port.
    ports: HashMap<(SocketAddrV4, Option<SocketAddrV4>), u16>,
    next_port: u16,
    /// (local, remote) pairs the host sent to.
    allowed: HashSet<(SocketAddrV4, SocketAddrV4)>,
}

impl Nat {
    fn outbound(&mut self, local: SocketAddrV4, dst: SocketAddrV4) -> SocketAddrV4 {
        let key = (local, (self.kind == NatKind::Symmetric).then_some(dst));
        let next = &mut self.next_port;
        let port = *self.ports.entry(key).or_insert_with(|| {
            *next += 1;
            *next
        });
        self.allowed.insert((local, dst));
        SocketAddrV4::new(self.public_ip, port)
    }

    fn inbound(&self, public: SocketAddrV4, src: SocketAddrV4) -> Option<SocketAddrV4> {
        let (&(local, _), _) = self.ports.iter().find(|(_, &p)| p == public.port())?;
        let allowed = match self.kind {
            NatKind::FullCone => true,
            NatKind::AddressRestricted => self
                .allowed
                .iter()
                .any(|(l, r)| *l == local && r.ip() == src.ip()),
            NatKind::PortRestricted | NatKind::Symmetric => self.allowed.contains(&(local, src)),
        };
        allowed.then_some(local)
    }
}

struct Attachment {
    local: SocketAddrV4,
    nat: Option<NatId>,
    up: bool,
}

/// One datagram on the wire.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// When it was sent.
    pub sent: Instant,
    /// When it arrives.
    pub at: Instant,
    /// Source as seen on the wire (after NAT).
    pub src: SocketAddrV4,
    /// Destination.
    pub dst: SocketAddrV4,
    /// Sent inside this NAT's LAN, untranslated.
    pub lan: Option<NatId>,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Datagram {
    /// The NTMobile message type (`Unknown(0)` when it is not one).
    pub fn kind(&self) -> MessageType {
        Packet::new_checked(&self.data[..])
            .map(|p| p.msg_type())
            .unwrap_or(MessageType::Unknown(0))
    }

    /// Whether it is an NTMobile message of `kind`.
    pub fn is(&self, kind: MessageType) -> bool {
        Packet::new_checked(&self.data[..]).is_ok_and(|p| p.msg_type() == kind)
    }
}

/// Decides, per datagram, whether the network loses it.
pub type Filter = Box<dyn FnMut(&Datagram) -> bool>;

/// The network: addresses, NATs, the clock and the datagrams in flight.
pub struct Network {
    now: Instant,
    hosts: Vec<Attachment>,
    nats: Vec<Nat>,
    /// In flight, by (delivery time, order of sending).
    flights: BTreeMap<(Instant, u64), Datagram>,
    next_flight: u64,
    /// Latency of every link without its own ([`Network::set_latency`]).
    pub latency: Duration,
    links: HashMap<(SocketAddrV4, SocketAddrV4), Duration>,
    /// Returns true to lose a datagram (after it was recorded in `wire`).
    pub drop: Filter,
    /// Deliver every datagram twice.
    pub duplicate: bool,
    loss: Option<(f64, StdRng)>,
    /// Every datagram put on the wire, lost or not, as an attacker on the
    /// path records it ([`Network::inject`]ed ones excepted).
    pub wire: Vec<Datagram>,
}

impl Network {
    /// An empty network at `now` with `latency` on every link.
    pub fn new(now: Instant, latency: Duration) -> Network {
        Network {
            now,
            hosts: Vec::new(),
            nats: Vec::new(),
            flights: BTreeMap::new(),
            next_flight: 0,
            latency,
            links: HashMap::new(),
            drop: Box::new(|_| false),
            duplicate: false,
            loss: None,
            wire: Vec::new(),
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Moves the clock forward to `t` (never back).
    pub fn advance_to(&mut self, t: Instant) {
        self.now = self.now.max(t);
    }

    /// A NAT with this public address; its ports start above 40000.
    pub fn add_nat(&mut self, kind: NatKind, public_ip: Ipv4Addr) -> NatId {
        self.nats.push(Nat {
            kind,
            public_ip,
            ports: HashMap::new(),
            next_port: 40000,
            allowed: HashSet::new(),
        });
        NatId(self.nats.len() - 1)
    }

    /// A host at `local`, on the internet or behind `nat`.
    pub fn add_host(&mut self, local: SocketAddrV4, nat: Option<NatId>) -> HostId {
        self.hosts.push(Attachment {
            local,
            nat,
            up: true,
        });
        HostId(self.hosts.len() - 1)
    }

    /// How many hosts there are (ids `0..host_count()`).
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// A host's own address.
    pub fn local(&self, id: HostId) -> SocketAddrV4 {
        self.hosts[id.0].local
    }

    /// The host moves to another address (its NAT, if any, stays).
    pub fn set_local(&mut self, id: HostId, local: SocketAddrV4) {
        self.hosts[id.0].local = local;
    }

    /// The address the internet sees for host `id`: its own, or the
    /// newest mapping its NAT made for it.
    pub fn public(&self, id: HostId) -> SocketAddrV4 {
        let h = &self.hosts[id.0];
        let Some(n) = h.nat else { return h.local };
        let nat = &self.nats[n.0];
        let port = nat
            .ports
            .iter()
            .filter(|((l, _), _)| *l == h.local)
            .map(|(_, p)| *p)
            .max()
            .expect("the host sent nothing through its NAT yet");
        SocketAddrV4::new(nat.public_ip, port)
    }

    /// A host that is down (crashed, unplugged) is not driven and gets nothing.
    pub fn set_up(&mut self, id: HostId, up: bool) {
        self.hosts[id.0].up = up;
    }

    /// Whether the host runs.
    pub fn is_up(&self, id: HostId) -> bool {
        self.hosts[id.0].up
    }

    /// The NAT forgets every mapping and filter (its next ports are new).
    pub fn reset_nat(&mut self, nat: NatId) {
        let n = &mut self.nats[nat.0];
        n.ports.clear();
        n.allowed.clear();
    }

    /// Latency of the datagrams from `src` to `dst` (wire addresses).
    pub fn set_latency(&mut self, src: SocketAddrV4, dst: SocketAddrV4, latency: Duration) {
        self.links.insert((src, dst), latency);
    }

    /// Lose each datagram with probability `rate`, from a generator seeded
    /// with `seed` (the same run loses the same datagrams).
    pub fn set_loss(&mut self, rate: f64, seed: u64) {
        self.loss = Some((rate, StdRng::seed_from_u64(seed)));
    }

    /// Loses the first `n` datagrams that `pred` matches, and no others
    /// (replaces [`Network::drop`]).
    pub fn lose_first(&mut self, n: usize, mut pred: impl FnMut(&Datagram) -> bool + 'static) {
        let mut lost = 0;
        self.drop = Box::new(move |d| {
            let lose = lost < n && pred(d);
            lost += usize::from(lose);
            lose
        });
    }

    /// Host `from` sends `data` to `dst`: through its NAT, unless `dst` is
    /// a host behind the same NAT; recorded, then maybe lost or duplicated.
    pub fn send(&mut self, from: HostId, dst: SocketAddrV4, data: Vec<u8>) {
        let (local, nat) = (self.hosts[from.0].local, self.hosts[from.0].nat);
        let lan = nat.filter(|&n| {
            self.hosts
                .iter()
                .any(|h| h.nat == Some(n) && h.local == dst)
        });
        let src = match (nat, lan) {
            (Some(n), None) => self.nats[n.0].outbound(local, dst),
            _ => local,
        };
        let latency = *self.links.get(&(src, dst)).unwrap_or(&self.latency);
        let d = Datagram {
            sent: self.now,
            at: self.now + latency,
            src,
            dst,
            lan,
            data,
        };
        self.wire.push(d.clone());
        if (self.drop)(&d) || self.lost() {
            return;
        }
        if self.duplicate {
            self.push(d.clone());
        }
        self.push(d);
    }

    fn lost(&mut self) -> bool {
        self.loss
            .as_mut()
            .is_some_and(|(rate, rng)| rng.random_bool(*rate))
    }

    /// A datagram from anywhere (an attacker's spoofed source, a replay),
    /// arriving after the default latency; not recorded in `wire`.
    pub fn inject(&mut self, src: SocketAddrV4, dst: SocketAddrV4, data: Vec<u8>) {
        let d = Datagram {
            sent: self.now,
            at: self.now + self.latency,
            src,
            dst,
            lan: None,
            data,
        };
        self.push(d);
    }

    fn push(&mut self, d: Datagram) {
        self.flights.insert((d.at, self.next_flight), d);
        self.next_flight += 1;
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.flights.keys().next().map(|(at, _)| *at)
    }

    /// Takes out the first datagram in flight that `pred` matches (to hold
    /// it back, or to reorder).
    pub fn take(&mut self, mut pred: impl FnMut(&Datagram) -> bool) -> Option<Datagram> {
        let key = *self.flights.iter().find(|(_, d)| pred(d))?.0;
        self.flights.remove(&key)
    }

    /// Removes the first datagram due by now, with the host it reaches
    /// (`None`: nobody there, or filtered by a NAT, or the host is down).
    pub fn pop_due(&mut self) -> Option<(Option<HostId>, Datagram)> {
        let (&key, _) = self
            .flights
            .iter()
            .next()
            .filter(|(k, _)| k.0 <= self.now)?;
        let d = self.flights.remove(&key)?;
        let to = self.route(&d).filter(|id| self.hosts[id.0].up);
        Some((to, d))
    }

    fn route(&self, d: &Datagram) -> Option<HostId> {
        self.hosts
            .iter()
            .position(|h| match (h.nat, d.lan) {
                (Some(n), Some(lan)) => n == lan && h.local == d.dst,
                (None, _) => h.local == d.dst,
                (Some(n), None) => {
                    let nat = &self.nats[n.0];
                    nat.public_ip == *d.dst.ip() && nat.inbound(d.dst, d.src) == Some(h.local)
                }
            })
            .map(HostId)
    }

    /// Index in [`Network::wire`] of the first datagram of `kind` from
    /// `src` to `dst` (`None` matches any address).
    pub fn first_sent(
        &self,
        src: Option<SocketAddrV4>,
        dst: Option<SocketAddrV4>,
        kind: MessageType,
    ) -> Option<usize> {
        self.wire.iter().position(|d| {
            d.is(kind) && src.is_none_or(|a| a == d.src) && dst.is_none_or(|a| a == d.dst)
        })
    }

    /// Whether a datagram of `kind` went from `src` to `dst`.
    pub fn was_sent(&self, src: SocketAddrV4, dst: SocketAddrV4, kind: MessageType) -> bool {
        self.first_sent(Some(src), Some(dst), kind).is_some()
    }

    /// How many datagrams of `kind` were sent.
    pub fn count_sent(&self, kind: MessageType) -> usize {
        self.wire.iter().filter(|d| d.is(kind)).count()
    }

    /// How many datagrams of `kind` `src` sent.
    pub fn count_sent_from(&self, src: SocketAddrV4, kind: MessageType) -> usize {
        self.wire
            .iter()
            .filter(|d| d.src == src && d.is(kind))
            .count()
    }

    /// How many datagrams of `kind` went to `dst`.
    pub fn count_sent_to(&self, dst: SocketAddrV4, kind: MessageType) -> usize {
        self.wire
            .iter()
            .filter(|d| d.dst == dst && d.is(kind))
            .count()
    }

    /// The datagrams of `kind` recorded from `src` to `dst`.
    pub fn recorded(
        &self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        kind: MessageType,
    ) -> Vec<Datagram> {
        self.wire
            .iter()
            .filter(|d| d.src == src && d.dst == dst && d.is(kind))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(d: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, d), port)
    }

    /// A host behind a NAT of `kind` sends to `addr(2, 1)`; returns the
    /// network, the host and the public address it got.
    fn behind(kind: NatKind) -> (Network, HostId, SocketAddrV4) {
        let mut net = Network::new(Instant::now(), Duration::ZERO);
        let nat = net.add_nat(kind, Ipv4Addr::new(198, 18, 0, 10));
        let local = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 5000);
        let h = net.add_host(local, Some(nat));
        net.add_host(addr(2, 1), None);
        net.send(h, addr(2, 1), vec![1]);
        let (to, d) = net.pop_due().unwrap();
        assert_eq!(to, Some(HostId(1)));
        (net, h, d.src)
    }

    /// Whether a datagram from `src` to `public` reaches the host.
    fn reaches(net: &mut Network, h: HostId, src: SocketAddrV4, public: SocketAddrV4) -> bool {
        net.inject(src, public, vec![2]);
        net.advance_to(net.now() + net.latency);
        net.pop_due().unwrap().0 == Some(h)
    }

    #[test]
    fn nats_filter_by_their_kind() {
        // (kind, answer from the same address, same IP other port, other IP)
        let cases = [
            (NatKind::FullCone, [true, true, true]),
            (NatKind::AddressRestricted, [true, true, false]),
            (NatKind::PortRestricted, [true, false, false]),
            (NatKind::Symmetric, [true, false, false]),
        ];
        for (kind, expect) in cases {
            let (mut net, h, public) = behind(kind);
            assert_eq!(public, net.public(h), "{kind:?}");
            for (src, want) in [addr(2, 1), addr(2, 2), addr(3, 1)].into_iter().zip(expect) {
                assert_eq!(
                    reaches(&mut net, h, src, public),
                    want,
                    "{kind:?} from {src}"
                );
            }
        }
    }

    #[test]
    fn a_symmetric_nat_maps_each_destination_to_its_own_port() {
        for (kind, same) in [(NatKind::PortRestricted, true), (NatKind::Symmetric, false)] {
            let (mut net, h, first) = behind(kind);
            net.send(h, addr(3, 1), vec![1]);
            let (_, d) = net.pop_due().unwrap();
            assert_eq!(d.src == first, same, "{kind:?}");
            net.reset_nat(NatId(0));
            net.send(h, addr(2, 1), vec![1]);
            let (_, d) = net.pop_due().unwrap();
            assert_ne!(d.src, first, "{kind:?}: a new mapping after the reset");
        }
    }

    #[test]
    fn loss_is_seeded_and_lose_first_loses_only_the_first() {
        let lost = |seed| {
            let mut net = Network::new(Instant::now(), Duration::from_millis(5));
            let a = net.add_host(addr(1, 1), None);
            net.add_host(addr(2, 1), None);
            net.set_loss(0.5, seed);
            for i in 0..64u8 {
                net.send(a, addr(2, 1), vec![i]);
            }
            net.advance_to(net.now() + Duration::from_millis(5));
            let mut got = Vec::new();
            while let Some((_, d)) = net.pop_due() {
                got.push(d.data[0]);
            }
            assert_eq!(net.wire.len(), 64, "every datagram is recorded");
            got
        };
        assert_eq!(lost(7), lost(7));
        assert_ne!(lost(7), lost(8));
        assert!((8..56).contains(&lost(7).len()));

        let mut net = Network::new(Instant::now(), Duration::ZERO);
        let a = net.add_host(addr(1, 1), None);
        net.add_host(addr(2, 1), None);
        net.lose_first(2, |d| d.data[0] % 2 == 0);
        for i in 0..6u8 {
            net.send(a, addr(2, 1), vec![i]);
        }
        let mut got = Vec::new();
        while let Some((_, d)) = net.pop_due() {
            got.push(d.data[0]);
        }
        assert_eq!(got, [1, 3, 4, 5]);
    }
}
