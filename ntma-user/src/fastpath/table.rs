//! The tunnel table: what the control thread publishes and the workers read.
//!
//! The control side keeps the authoritative set of tunnels behind a mutex (touched only
//! by control operations) and, after every change, publishes an immutable [`Snapshot`]
//! through an `ArcSwap`. A worker loads the snapshot once per burst (an `arc_swap::Cache`
//! hit is one pointer comparison) and looks tunnels up in it without any lock: by
//! tunnel id for downlink, by the pair (GN VIP, peer VIP) for uplink, both FxHash maps.
//!
//! Every tunnel belongs to one GN, its `local_vip`. The snapshot also holds the GN set
//! ([`crate::datapath::GnLink`]) with the Ethernet header of frames to each GN, made
//! when the set or the link changes: downlink DATA goes to the MAC of its tunnel's GN.
//!
//! A tunnel enters the table for receiving as soon as the DC directed it
//! ([`ntm_proto::node::Event::TunnelAdded`]: only `by_id`), and for sending once it is up
//! ([`ntm_proto::node::Event::TunnelUp`]: `by_pair` too, while its GN is in the GN set),
//! so that DATA a peer sends right after its TUN_RESP is never an unknown tunnel here.
//!
//! Everything that changes per packet lives in the shared [`Tunnel`] entry as atomics:
//! the send counter (shared with the control's TUN_KEEPALIVEs), the replay window, the
//! endpoint (so roaming needs no new snapshot) and the counters. The two direction
//! keys are prepared once, when the entry is made ([`ntm_proto::Cipher`]: the HMAC
//! state or the AES-256-GCM key schedule), never per packet. An entry survives
//! snapshots: updating a tunnel with the same id, suite, keys and peer keeps its
//! window and counters.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
};

use ntm_proto::{data::SeqCounter, node::TunnelParams, AtomicReplayWindow, Cipher, Key, Path};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::datapath::{GnLink, Link, TunnelStats};
use crate::wire::outer::OuterTemplate;

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
    /// [`pack_addr`] of the source of the last datagram that passed every check
    /// (0: never).
    pub(crate) last_from: AtomicU64,
}

/// One tunnel's shared state. Workers reach it through a snapshot; the control side
/// keeps it across snapshots.
pub struct Tunnel {
    pub(crate) id: u32,
    pub(crate) peer_vip: Ipv4Addr,
    /// The VIP of the GN the tunnel belongs to: the only inner destination of its DATA.
    pub(crate) local_vip: Ipv4Addr,
    /// Our send direction key, prepared once for the tunnel's suite.
    pub(crate) tx: Cipher,
    /// Our receive direction key, prepared once for the tunnel's suite.
    pub(crate) rx: Cipher,
    pub(crate) tx_seq: SeqCounter,
    /// The keys as the endpoint gave them, only to recognise the same tunnel again
    /// ([`Key`] is zeroized when dropped).
    tx_key: Key,
    rx_key: Key,
    endpoint: AtomicU64,
    path: AtomicU8,
    pub(crate) replay: AtomicReplayWindow,
    pub(crate) tx_count: Padded<TxCounters>,
    pub(crate) rx_count: Padded<RxCounters>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("id", &self.id)
            .field("peer_vip", &self.peer_vip)
            .field("local_vip", &self.local_vip)
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
    /// A fresh entry: both direction keys prepared for the tunnel's suite
    /// ([`ntm_proto::Error::UnsupportedSuite`] for a suite other than 1 and 2).
    pub(crate) fn new(t: &TunnelParams) -> ntm_proto::Result<Tunnel> {
        Ok(Tunnel {
            id: t.tunnel_id,
            peer_vip: t.peer_vip,
            local_vip: t.local_vip,
            tx: Cipher::new(t.suite, &t.tx_key)?,
            rx: Cipher::new(t.suite, &t.rx_key)?,
            tx_seq: t.tx_seq.clone(),
            tx_key: t.tx_key.clone(),
            rx_key: t.rx_key.clone(),
            endpoint: AtomicU64::new(pack_addr(*t.endpoint.ip(), t.endpoint.port())),
            path: AtomicU8::new(t.path.into()),
            replay: AtomicReplayWindow::new(),
            tx_count: Padded::default(),
            rx_count: Padded::default(),
        })
    }

    /// Whether `t` describes this same tunnel (so its window and counters carry on).
    pub(crate) fn same_tunnel(&self, t: &TunnelParams) -> bool {
        self.id == t.tunnel_id
            && self.peer_vip == t.peer_vip
            && self.local_vip == t.local_vip
            && self.tx.suite() == t.suite
            && self.tx_key == t.tx_key
            && self.rx_key == t.rx_key
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

    /// Counts `packets` sent with `bytes` of inner packets (one add each, for a run
    /// of a burst's frames).
    #[inline]
    pub(crate) fn count_tx(&self, packets: u64, bytes: u64) {
        let c = &self.tx_count.0;
        c.packets.fetch_add(packets, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `packets` DATA received with `bytes` of inner packets.
    #[inline]
    pub(crate) fn count_rx(&self, packets: u64, bytes: u64) {
        let c = &self.rx_count.0;
        c.packets.fetch_add(packets, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records an arrival that passed every check of §5 (never call it for a
    /// datagram that is dropped: that would be activity, and a source to roam to).
    #[inline]
    pub(crate) fn note_rx(&self, now_nanos: u64, from: u64) {
        self.rx_count
            .0
            .last_rx
            .store(now_nanos + 1, Ordering::Relaxed);
        self.rx_count.0.last_from.store(from, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self, epoch: std::time::Instant, sending: bool) -> TunnelStats {
        let rx = &self.rx_count.0;
        let last = rx.last_rx.load(Ordering::Relaxed);
        TunnelStats {
            tunnel_id: self.id,
            peer_vip: self.peer_vip,
            endpoint: self.endpoint(),
            path: Path::from(self.path.load(Ordering::Relaxed)),
            suite: self.tx.suite(),
            sending,
            tx_packets: self.tx_count.0.packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_count.0.bytes.load(Ordering::Relaxed),
            rx_packets: rx.packets.load(Ordering::Relaxed),
            rx_bytes: rx.bytes.load(Ordering::Relaxed),
            rx_keepalives: rx.keepalives.load(Ordering::Relaxed),
            last_rx: (last != 0).then(|| epoch + std::time::Duration::from_nanos(last - 1)),
            last_rx_from: unpack_addr(rx.last_from.load(Ordering::Relaxed)),
            next_tx_seq: self.tx_seq.peek(),
        }
    }
}

/// The key of the uplink map: the GN's VIP (the inner source) and the peer's VIP (the
/// inner destination), both host-order.
#[inline(always)]
pub(crate) fn pair_key(gn_vip: u32, peer_vip: u32) -> u64 {
    (u64::from(gn_vip) << 32) | u64::from(peer_vip)
}

/// The [`Link`] with the Ethernet header the workers copy into every uplink frame,
/// made once when the link is set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreparedLink {
    pub(crate) info: Link,
    /// The outer headers of uplink frames from the link's WAN address (Ethernet:
    /// gateway ← wan, IPv4).
    pub(crate) outer: OuterTemplate,
}

impl PreparedLink {
    pub(crate) fn new(info: Link) -> PreparedLink {
        use crate::wire::ethernet::{header, ETHERTYPE_IPV4};
        let wan_eth = header(info.gateway_mac, info.wan_mac, ETHERTYPE_IPV4);
        PreparedLink {
            info,
            outer: OuterTemplate::new(&wan_eth, SocketAddrV4::new(info.wan_ip, info.wan_port)),
        }
    }
}

/// One GN with the Ethernet header of frames to it, made when the GN set or the link
/// changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreparedGn {
    pub(crate) info: GnLink,
    /// gn ← lan, IPv4: the Ethernet header of downlink frames to this GN; `None` while
    /// its MAC or the link is unknown (its DATA is then not ready).
    pub(crate) lan_eth: Option<[u8; 14]>,
}

/// The GNs by VIP (host-order u32).
pub(crate) type GnMap = FxHashMap<u32, PreparedGn>;

fn prepare_gns(gns: &[GnLink], link: Option<&PreparedLink>) -> GnMap {
    use crate::wire::ethernet::{header, ETHERTYPE_IPV4};
    gns.iter()
        .map(|g| {
            let lan_eth = match (g.mac, link) {
                (Some(mac), Some(l)) => Some(header(mac, l.info.lan_mac, ETHERTYPE_IPV4)),
                _ => None,
            };
            (u32::from(g.vip), PreparedGn { info: *g, lan_eth })
        })
        .collect()
}

/// An immutable view of the table, loaded by each worker once per burst.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(crate) link: Option<PreparedLink>,
    pub(crate) ntm_port: u16,
    /// Inner packets longer than this go to the slow path; MSS is clamped to it − 40.
    pub(crate) inner_mtu: u16,
    pub(crate) by_id: FxHashMap<u32, Arc<Tunnel>>,
    /// Sending tunnels of the GNs in `gns`, keyed by [`pair_key`] (what the packet
    /// bytes give directly).
    pub(crate) by_pair: FxHashMap<u64, Arc<Tunnel>>,
    /// The peer VIPs of `by_pair`: a packet from outside the GN set to one of them is
    /// a wrong source, not one waiting for a tunnel.
    pub(crate) peers: FxHashSet<u32>,
    /// Shared by every snapshot until the GN set or the link changes.
    pub(crate) gns: Arc<GnMap>,
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
    pub fn link(&self) -> Option<Link> {
        self.link.map(|l| l.info)
    }

    /// The GN set, by VIP.
    pub fn gns(&self) -> Vec<GnLink> {
        let mut v: Vec<GnLink> = self.gns.values().map(|g| g.info).collect();
        v.sort_by_key(|g| g.vip);
        v
    }

    /// The uplink verdict on a packet from `src` to `dst` (host order) that no sending
    /// tunnel carries: from outside the GN set to a peer a tunnel leads to, a wrong
    /// source; from a GN to another GN, not ours (GNs meet on the LAN); else the slow
    /// path's (no tunnel yet, or a source the control decides on).
    #[inline]
    pub(crate) fn no_tunnel(&self, src: u32, dst: u32) -> super::encap::UpVerdict {
        use super::encap::{FastDrop, UpVerdict};
        if !self.gns.contains_key(&src) {
            if self.peers.contains(&dst) {
                return UpVerdict::Drop(FastDrop::LanBadSource);
            }
        } else if self.gns.contains_key(&dst) {
            return UpVerdict::Drop(FastDrop::LanToGn);
        }
        UpVerdict::Slow
    }
}

/// One tunnel in the control side's table.
pub(crate) struct Entry {
    pub(crate) tunnel: Arc<Tunnel>,
    /// Uplink packets from its GN to its peer VIP use it (the tunnel is up).
    pub(crate) sending: bool,
    /// When it last started sending: the newest sending tunnel of a (GN, peer) pair
    /// carries it.
    generation: u64,
}

/// The control side's authoritative state (behind a mutex, never touched per packet).
#[derive(Default)]
pub(crate) struct ControlTable {
    link: Option<PreparedLink>,
    /// The GN set as last given.
    gn_list: Vec<GnLink>,
    /// `gn_list` prepared for the current link.
    gns: Arc<GnMap>,
    /// Tunnels by id. When two sending tunnels of one GN lead to the same VIP (a new
    /// one set up before the old one expired), the one that started sending last
    /// carries the uplink.
    pub(crate) tunnels: FxHashMap<u32, Entry>,
    pub(crate) generation: u64,
}

impl ControlTable {
    pub(crate) fn set_link(&mut self, link: Option<Link>) {
        self.link = link.map(PreparedLink::new);
        self.gns = Arc::new(prepare_gns(&self.gn_list, self.link.as_ref()));
    }

    /// Replaces the GN set (a VIP given twice counts once, the last one wins).
    pub(crate) fn set_gns(&mut self, gns: &[GnLink]) {
        self.gn_list = gns.to_vec();
        self.gns = Arc::new(prepare_gns(&self.gn_list, self.link.as_ref()));
    }

    /// Adds `t`, or updates it when it is the same tunnel (endpoint and path; window,
    /// counters and whether it sends carry on). With `send`, uplink packets to its
    /// peer use it from the next snapshot on; without, it is left as it was (a new
    /// tunnel only receives).
    pub(crate) fn upsert(&mut self, t: &TunnelParams, send: bool) -> ntm_proto::Result<()> {
        self.generation += 1;
        let generation = self.generation;
        match self.tunnels.get_mut(&t.tunnel_id) {
            Some(e) if e.tunnel.same_tunnel(t) => {
                e.tunnel.set_endpoint(t.endpoint);
                e.tunnel.set_path(t.path);
                if send {
                    e.sending = true;
                    e.generation = generation;
                }
            }
            _ => {
                let tunnel = Arc::new(Tunnel::new(t)?);
                self.tunnels.insert(
                    t.tunnel_id,
                    Entry {
                        tunnel,
                        sending: send,
                        generation,
                    },
                );
            }
        }
        Ok(())
    }

    pub(crate) fn snapshot(&self, ntm_port: u16, inner_mtu: u16) -> Snapshot {
        let mut by_id = FxHashMap::with_capacity_and_hasher(self.tunnels.len(), Default::default());
        let mut by_pair: FxHashMap<u64, (Arc<Tunnel>, u64)> =
            FxHashMap::with_capacity_and_hasher(self.tunnels.len(), Default::default());
        for (id, e) in &self.tunnels {
            by_id.insert(*id, Arc::clone(&e.tunnel));
            let gn = u32::from(e.tunnel.local_vip);
            // A tunnel of a GN not (or no longer) in the set carries nothing up, so
            // that an uplink hit always comes from a GN's VIP.
            if !e.sending || !self.gns.contains_key(&gn) {
                continue;
            }
            let key = pair_key(gn, u32::from(e.tunnel.peer_vip));
            match by_pair.get(&key) {
                Some((_, newer)) if *newer > e.generation => {}
                _ => {
                    by_pair.insert(key, (Arc::clone(&e.tunnel), e.generation));
                }
            }
        }
        let peers = by_pair.keys().map(|k| *k as u32).collect();
        Snapshot {
            link: self.link,
            ntm_port,
            inner_mtu,
            by_id,
            by_pair: by_pair.into_iter().map(|(k, (t, _))| (k, t)).collect(),
            peers,
            gns: Arc::clone(&self.gns),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ntm_proto::{DirectionKeys, Role, Suite};

    /// The parameters the endpoint would give for tunnel `id` to `vip` with `K_tun` =
    /// `[key; 32]`, as the initiator.
    pub(crate) fn params(id: u32, vip: [u8; 4], key: u8, suite: Suite) -> TunnelParams {
        let keys = DirectionKeys::derive(&Key::from_bytes([key; 32]));
        let (tx, rx) = keys.for_role(Role::Initiator).unwrap();
        TunnelParams {
            tunnel_id: id,
            peer_fqdn: "cn.ntm.test".into(),
            peer_vip: Ipv4Addr::from(vip),
            endpoint: "198.18.0.20:7700".parse().unwrap(),
            path: Path::Direct,
            role: Role::Initiator,
            suite,
            tx_key: tx.clone(),
            rx_key: rx.clone(),
            tx_seq: SeqCounter::starting_at(1),
            local_vip: GN,
        }
    }

    const GN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

    /// A table whose GN set is the GN of [`params`].
    fn gn_table() -> ControlTable {
        let mut t = ControlTable::default();
        t.set_gns(&[GnLink { vip: GN, mac: None }]);
        t
    }

    fn spec(id: u32, vip: [u8; 4], key: u8) -> TunnelParams {
        params(id, vip, key, Suite::Aes256Gcm)
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
        let vip = pair_key(u32::from(GN), u32::from(Ipv4Addr::new(100, 64, 0, 9)));
        let mut t = gn_table();
        t.upsert(&spec(1, [100, 64, 0, 9], 1), true).unwrap();
        let first = Arc::clone(&t.tunnels[&1].tunnel);
        assert!(first.replay.validate(5));
        // Same id, keys and peer: the same entry, new endpoint.
        let mut moved = spec(1, [100, 64, 0, 9], 1);
        moved.endpoint = "198.18.0.99:1234".parse().unwrap();
        t.upsert(&moved, true).unwrap();
        assert!(Arc::ptr_eq(&first, &t.tunnels[&1].tunnel));
        assert_eq!(first.endpoint(), "198.18.0.99:1234".parse().unwrap());
        assert!(!first.replay.validate(5), "window kept");
        // Same id, other key, or the same keys in the other suite: a fresh entry.
        t.upsert(&spec(1, [100, 64, 0, 9], 2), true).unwrap();
        assert!(!Arc::ptr_eq(&first, &t.tunnels[&1].tunnel));
        let second = Arc::clone(&t.tunnels[&1].tunnel);
        t.upsert(&params(1, [100, 64, 0, 9], 2, Suite::HmacSha256_128), true)
            .unwrap();
        assert!(!Arc::ptr_eq(&second, &t.tunnels[&1].tunnel));
        assert_eq!(t.tunnels[&1].tunnel.rx.suite(), Suite::HmacSha256_128);
        t.upsert(&spec(1, [100, 64, 0, 9], 2), true).unwrap();
        // A second tunnel to the same VIP takes the uplink; removing it gives it back.
        t.upsert(&spec(2, [100, 64, 0, 9], 3), true).unwrap();
        let s = t.snapshot(7700, 1440);
        assert_eq!(s.len(), 2);
        assert_eq!(s.by_pair[&vip].id, 2);
        t.tunnels.remove(&2);
        let s = t.snapshot(7700, 1440);
        assert_eq!(s.by_pair[&vip].id, 1);
        // Re-upserting the older one makes it the newest.
        t.upsert(&spec(2, [100, 64, 0, 9], 3), true).unwrap();
        t.upsert(&spec(1, [100, 64, 0, 9], 2), true).unwrap();
        let s = t.snapshot(7700, 1440);
        assert_eq!(s.by_pair[&vip].id, 1);
    }

    #[test]
    fn an_added_tunnel_receives_and_sends_only_once_up() {
        let vip = pair_key(u32::from(GN), u32::from(Ipv4Addr::new(100, 64, 0, 9)));
        let mut t = gn_table();
        // The old tunnel to the VIP is up; a new one is added (set-up under way).
        t.upsert(&spec(1, [100, 64, 0, 9], 1), true).unwrap();
        t.upsert(&spec(2, [100, 64, 0, 9], 2), false).unwrap();
        let s = t.snapshot(7700, 1440);
        assert!(s.by_id.contains_key(&2), "the new one receives");
        assert_eq!(
            s.by_pair[&vip].id, 1,
            "the old one still carries the uplink"
        );
        // Added again (nothing changes), then up: it takes the uplink with its state.
        let entry = Arc::clone(&t.tunnels[&2].tunnel);
        assert!(entry.replay.validate(7));
        t.upsert(&spec(2, [100, 64, 0, 9], 2), false).unwrap();
        assert!(!t.tunnels[&2].sending);
        t.upsert(&spec(2, [100, 64, 0, 9], 2), true).unwrap();
        assert!(Arc::ptr_eq(&entry, &t.tunnels[&2].tunnel), "window kept");
        assert_eq!(t.snapshot(7700, 1440).by_pair[&vip].id, 2);
        // Added again after it is up: it keeps sending.
        t.upsert(&spec(2, [100, 64, 0, 9], 2), false).unwrap();
        assert_eq!(t.snapshot(7700, 1440).by_pair[&vip].id, 2);
        // Only receiving tunnels: no uplink.
        let mut t = gn_table();
        t.upsert(&spec(3, [100, 64, 0, 9], 1), false).unwrap();
        assert!(t.snapshot(7700, 1440).by_pair.is_empty());
        // An unknown suite is refused.
        assert_eq!(
            t.upsert(&params(4, [100, 64, 0, 8], 1, Suite::Unknown(9)), true),
            Err(ntm_proto::Error::UnsupportedSuite)
        );
        assert!(!t.tunnels.contains_key(&4));
    }
}
