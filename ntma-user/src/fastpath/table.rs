//! The tunnel table: what the control thread publishes and the workers read.
//!
//! The control side keeps the authoritative set of tunnels behind a mutex (touched only
//! by control operations) and, after every change, publishes an immutable [`Snapshot`]
//! through an `ArcSwap`. A worker loads the snapshot once per burst (an `arc_swap::Cache`
//! hit is one pointer comparison) and looks tunnels up in it without any lock: by
//! tunnel id for downlink, by peer VIP for uplink, both FxHash maps.
//!
//! Everything that changes per packet lives in the shared [`Tunnel`] entry as atomics:
//! the send counter (shared with the control's TUN_KEEPALIVEs), the replay window, the
//! endpoint (so roaming needs no new snapshot) and the counters. An entry survives
//! snapshots: updating a tunnel with the same id, key and peer keeps its window and
//! counters.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
};

use ntm_proto::{data::SeqCounter, Authenticator, Key, Path};
use rustc_hash::FxHashMap;

use super::replay::AtomicReplayWindow;

/// A MAC address.
pub type Mac = [u8; 6];

/// Addresses the workers need to build frames; `None` in [`super::Dataplane::set_link`]
/// means "not ready" (no VIP yet, gateway MAC unknown): uplink frames then go to the
/// slow queue and downlink DATA is dropped as [`super::FastDrop::NotReady`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The GN's VIP: the only inner source accepted from the GN and the only inner
    /// destination accepted from a tunnel.
    pub gn_vip: Ipv4Addr,
    /// The GN's MAC (learnt from DHCP / its frames): destination of downlink frames.
    pub gn_mac: Mac,
    /// The NTMA's GN-facing MAC: source of downlink frames.
    pub lan_mac: Mac,
    /// The NTMA's WAN MAC: source of uplink frames.
    pub wan_mac: Mac,
    /// The NTMA's WAN address: outer source address.
    pub wan_ip: Ipv4Addr,
    /// The NTM UDP port the NTMA sends from (the signaling socket's port, so that the
    /// NAT mapping the DC observed is the one the tunnel uses).
    pub wan_port: u16,
    /// MAC of the WAN next hop (default gateway): destination of uplink frames.
    pub gateway_mac: Mac,
}

/// A tunnel as the control side hands it to the data plane (from
/// [`ntm_proto::node::Event::TunnelUp`]).
#[derive(Clone, Debug)]
pub struct TunnelSpec {
    /// Tunnel id (the header id of its datagrams).
    pub tunnel_id: u32,
    /// The peer's VIP: uplink packets to it use this tunnel; the only inner source
    /// accepted from it.
    pub peer_vip: Ipv4Addr,
    /// Where to send (the peer, or the RS on a RELAY path).
    pub endpoint: SocketAddrV4,
    /// `K_tun`.
    pub key: Key,
    /// The tunnel's send counter, shared with the control's endpoint (a clone of
    /// `Event::TunnelUp::tx_seq`; clones share one counter).
    pub tx_seq: SeqCounter,
    /// How the tunnel runs (shown in status).
    pub path: Path,
}

/// Per-tunnel counters and activity, as [`super::Dataplane::tunnel_stats`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelStats {
    /// Tunnel id.
    pub tunnel_id: u32,
    /// The peer's VIP.
    pub peer_vip: Ipv4Addr,
    /// Current endpoint.
    pub endpoint: SocketAddrV4,
    /// Path.
    pub path: Path,
    /// DATA sent (inner packets) and their inner bytes.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Authenticated DATA delivered to the GN and their inner bytes.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Authenticated TUN_KEEPALIVEs received.
    pub rx_keepalives: u64,
    /// When the last authenticated DATA or TUN_KEEPALIVE arrived (None: never).
    pub last_rx: Option<std::time::Instant>,
    /// Where it came from: differs from `endpoint` when the peer roamed (the control
    /// decides whether to follow with [`super::Dataplane::set_endpoint`]).
    pub last_rx_from: Option<SocketAddrV4>,
    /// The next sequence number this side sends.
    pub next_tx_seq: u64,
}

/// Keeps two groups of counters on separate cache lines, so that an uplink worker and
/// a downlink worker of the same tunnel do not bounce one line between them.
#[repr(align(64))]
#[derive(Default, Debug)]
pub(crate) struct Padded<T>(pub(crate) T);

#[derive(Default, Debug)]
pub(crate) struct TxCounters {
    pub(crate) packets: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

#[derive(Default, Debug)]
pub(crate) struct RxCounters {
    pub(crate) packets: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) keepalives: AtomicU64,
    /// Nanoseconds since the data plane's epoch, plus one (0: never).
    pub(crate) last_rx: AtomicU64,
    /// [`pack_addr`] of the last authenticated source (0: never).
    pub(crate) last_from: AtomicU64,
}

/// One tunnel's shared state. Workers reach it through a snapshot; the control side
/// keeps it across snapshots.
pub struct Tunnel {
    pub(crate) id: u32,
    pub(crate) peer_vip: Ipv4Addr,
    /// Keyed once; every tag clones this state.
    pub(crate) auth: Authenticator,
    pub(crate) tx_seq: SeqCounter,
    key: Key,
    endpoint: AtomicU64,
    path: AtomicU8,
    pub(crate) replay: AtomicReplayWindow,
    pub(crate) tx: Padded<TxCounters>,
    pub(crate) rx: Padded<RxCounters>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("id", &self.id)
            .field("peer_vip", &self.peer_vip)
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

/// `ip:port` in one u64 (never 0 for a real address: bit 48 is set).
pub(crate) fn pack_addr(ip: Ipv4Addr, port: u16) -> u64 {
    (1 << 48) | (u64::from(u32::from(ip)) << 16) | u64::from(port)
}

pub(crate) fn unpack_addr(v: u64) -> Option<SocketAddrV4> {
    (v != 0).then(|| SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), v as u16))
}

impl Tunnel {
    pub(crate) fn new(spec: TunnelSpec) -> Tunnel {
        Tunnel {
            id: spec.tunnel_id,
            peer_vip: spec.peer_vip,
            auth: Authenticator::new(&spec.key),
            tx_seq: spec.tx_seq,
            key: spec.key,
            endpoint: AtomicU64::new(pack_addr(*spec.endpoint.ip(), spec.endpoint.port())),
            path: AtomicU8::new(spec.path.into()),
            replay: AtomicReplayWindow::new(),
            tx: Padded::default(),
            rx: Padded::default(),
        }
    }

    /// Whether `spec` describes this same tunnel (so its window and counters carry on).
    pub(crate) fn same_tunnel(&self, spec: &TunnelSpec) -> bool {
        self.id == spec.tunnel_id && self.peer_vip == spec.peer_vip && self.key == spec.key
    }

    /// Where uplink DATA goes.
    #[inline]
    pub(crate) fn endpoint(&self) -> SocketAddrV4 {
        unpack_addr(self.endpoint.load(Ordering::Relaxed))
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }

    pub(crate) fn set_endpoint(&self, endpoint: SocketAddrV4) {
        self.endpoint.store(
            pack_addr(*endpoint.ip(), endpoint.port()),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn set_path(&self, path: Path) {
        self.path.store(path.into(), Ordering::Relaxed);
    }

    /// Records an authenticated arrival.
    #[inline]
    pub(crate) fn note_rx(&self, now_nanos: u64, from: u64) {
        self.rx.0.last_rx.store(now_nanos + 1, Ordering::Relaxed);
        self.rx.0.last_from.store(from, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self, epoch: std::time::Instant) -> TunnelStats {
        let rx = &self.rx.0;
        let last = rx.last_rx.load(Ordering::Relaxed);
        TunnelStats {
            tunnel_id: self.id,
            peer_vip: self.peer_vip,
            endpoint: self.endpoint(),
            path: Path::from(self.path.load(Ordering::Relaxed)),
            tx_packets: self.tx.0.packets.load(Ordering::Relaxed),
            tx_bytes: self.tx.0.bytes.load(Ordering::Relaxed),
            rx_packets: rx.packets.load(Ordering::Relaxed),
            rx_bytes: rx.bytes.load(Ordering::Relaxed),
            rx_keepalives: rx.keepalives.load(Ordering::Relaxed),
            last_rx: (last != 0).then(|| epoch + std::time::Duration::from_nanos(last - 1)),
            last_rx_from: unpack_addr(rx.last_from.load(Ordering::Relaxed)),
            next_tx_seq: self.tx_seq.peek(),
        }
    }
}

/// Link addresses with the Ethernet headers the workers copy into every frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    pub(crate) info: LinkInfo,
    /// gateway ← wan, IPv4: the outer Ethernet header of uplink frames.
    pub(crate) wan_eth: [u8; 14],
    /// gn ← lan, IPv4: the Ethernet header of downlink frames.
    pub(crate) lan_eth: [u8; 14],
}

impl Link {
    pub(crate) fn new(info: LinkInfo) -> Link {
        let eth = |dst: Mac, src: Mac| {
            let mut h = [0u8; 14];
            h[0..6].copy_from_slice(&dst);
            h[6..12].copy_from_slice(&src);
            h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            h
        };
        Link {
            info,
            wan_eth: eth(info.gateway_mac, info.wan_mac),
            lan_eth: eth(info.gn_mac, info.lan_mac),
        }
    }
}

/// An immutable view of the table, loaded by each worker once per burst.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(crate) link: Option<Link>,
    pub(crate) ntm_port: u16,
    pub(crate) by_id: FxHashMap<u32, Arc<Tunnel>>,
    /// Keyed by the VIP as a host-order u32 (what the packet bytes give directly).
    pub(crate) by_vip: FxHashMap<u32, Arc<Tunnel>>,
}

impl Snapshot {
    /// Number of tunnels.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no tunnels.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The link addresses, if set.
    pub fn link(&self) -> Option<LinkInfo> {
        self.link.map(|l| l.info)
    }
}

/// The control side's authoritative state (behind a mutex, never touched per packet).
#[derive(Default)]
pub(crate) struct ControlTable {
    pub(crate) link: Option<Link>,
    /// Tunnels with the order they were last upserted in: when two tunnels lead to
    /// the same VIP (a new one set up before the old one expired), the newer carries
    /// the uplink.
    pub(crate) tunnels: FxHashMap<u32, (Arc<Tunnel>, u64)>,
    pub(crate) generation: u64,
}

impl ControlTable {
    pub(crate) fn upsert(&mut self, spec: TunnelSpec) {
        self.generation += 1;
        let generation = self.generation;
        match self.tunnels.get_mut(&spec.tunnel_id) {
            Some((t, g)) if t.same_tunnel(&spec) => {
                t.set_endpoint(spec.endpoint);
                t.set_path(spec.path);
                *g = generation;
            }
            _ => {
                self.tunnels
                    .insert(spec.tunnel_id, (Arc::new(Tunnel::new(spec)), generation));
            }
        }
    }

    pub(crate) fn snapshot(&self, ntm_port: u16) -> Snapshot {
        let mut by_id = FxHashMap::with_capacity_and_hasher(self.tunnels.len(), Default::default());
        let mut by_vip: FxHashMap<u32, (Arc<Tunnel>, u64)> =
            FxHashMap::with_capacity_and_hasher(self.tunnels.len(), Default::default());
        for (id, (t, g)) in &self.tunnels {
            by_id.insert(*id, Arc::clone(t));
            let vip = u32::from(t.peer_vip);
            match by_vip.get(&vip) {
                Some((_, newer)) if newer > g => {}
                _ => {
                    by_vip.insert(vip, (Arc::clone(t), *g));
                }
            }
        }
        Snapshot {
            link: self.link,
            ntm_port,
            by_id,
            by_vip: by_vip.into_iter().map(|(k, (t, _))| (k, t)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u32, vip: [u8; 4], key: u8) -> TunnelSpec {
        TunnelSpec {
            tunnel_id: id,
            peer_vip: Ipv4Addr::from(vip),
            endpoint: "198.18.0.20:7700".parse().unwrap(),
            key: Key::from_bytes([key; 32]),
            tx_seq: SeqCounter::starting_at(1),
            path: Path::Direct,
        }
    }

    #[test]
    fn addresses_pack_and_unpack() {
        let a: SocketAddrV4 = "0.0.0.0:0".parse().unwrap();
        assert_eq!(unpack_addr(pack_addr(*a.ip(), a.port())), Some(a));
        let b: SocketAddrV4 = "255.255.255.255:65535".parse().unwrap();
        assert_eq!(unpack_addr(pack_addr(*b.ip(), b.port())), Some(b));
        assert_eq!(unpack_addr(0), None);
    }

    #[test]
    fn upsert_keeps_state_of_the_same_tunnel_and_newest_wins_the_vip() {
        let mut t = ControlTable::default();
        t.upsert(spec(1, [100, 64, 0, 9], 1));
        let first = Arc::clone(&t.tunnels[&1].0);
        assert!(first.replay.validate(5));
        // Same id, key and peer: the same entry, new endpoint.
        let mut moved = spec(1, [100, 64, 0, 9], 1);
        moved.endpoint = "198.18.0.99:1234".parse().unwrap();
        t.upsert(moved);
        assert!(Arc::ptr_eq(&first, &t.tunnels[&1].0));
        assert_eq!(first.endpoint(), "198.18.0.99:1234".parse().unwrap());
        assert!(!first.replay.validate(5), "window kept");
        // Same id, other key: a fresh entry.
        t.upsert(spec(1, [100, 64, 0, 9], 2));
        assert!(!Arc::ptr_eq(&first, &t.tunnels[&1].0));
        // A second tunnel to the same VIP takes the uplink; removing it gives it back.
        t.upsert(spec(2, [100, 64, 0, 9], 3));
        let s = t.snapshot(7700);
        assert_eq!(s.len(), 2);
        assert_eq!(s.by_vip[&u32::from(Ipv4Addr::new(100, 64, 0, 9))].id, 2);
        t.tunnels.remove(&2);
        let s = t.snapshot(7700);
        assert_eq!(s.by_vip[&u32::from(Ipv4Addr::new(100, 64, 0, 9))].id, 1);
        // Re-upserting the older one makes it the newest.
        t.upsert(spec(2, [100, 64, 0, 9], 3));
        t.upsert(spec(1, [100, 64, 0, 9], 2));
        let s = t.snapshot(7700);
        assert_eq!(s.by_vip[&u32::from(Ipv4Addr::new(100, 64, 0, 9))].id, 1);
    }
}
