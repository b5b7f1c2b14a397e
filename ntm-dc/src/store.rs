//! Everything the DC keeps beyond one datagram, behind [`DcStore`]:
//! registrations and VIP leases, the high-water mark of every peer key's
//! signaling, and the counters the DC reserves ahead of use (its own
//! sequence numbers, tunnel ids). [`MemoryStore`] keeps them for the life
//! of the process (tests, and the adapter's tests); [`RedbStore`] keeps a
//! durable copy in a [redb](https://docs.rs/redb) file so that a restarted
//! DC carries on where it stopped.
//!
//! # Registrations
//!
//! A [`Registration`] is a lease (FQDN → VIP, until `lease_until`) that is
//! *active* while the node keeps alive (`alive_until`). When the node goes
//! quiet for three keep-alive intervals, or deregisters, the registration
//! *lapses*: the node is no longer reachable (DIR_REQ for it gets
//! NOT_FOUND) but its VIP stays reserved for its FQDN until the lease ends,
//! so the node gets the same VIP back when it re-registers.
//!
//! # Commits
//!
//! Changes go to the store's memory at once (lookups stay hash-map fast)
//! and become durable at [`DcStore::commit`] or [`DcStore::commit_all`],
//! which write every change made since the last successful commit in one
//! transaction. The coordinator commits before it answers the datagram
//! that caused a change, so nothing a node was told is lost on a crash. A
//! failed commit keeps its changes pending for the next one.
//!
//! Two kinds of change are cheap on purpose and wait for the next write:
//!
//! - *liveness*: a registration whose only change is `alive_until` moving
//!   later (every KEEPALIVE). A restarted DC gives every active
//!   registration a fresh three intervals anyway (it could not hear
//!   keep-alives while it was down), so the durable copy needs no exact
//!   `alive_until`.
//! - *replay marks* ([`Mark`]): see below.
//!
//! # Replay marks across a restart
//!
//! Each receiver's replay window (§2, §5 "Replay") lives in memory; a DC
//! that restarted with empty windows would accept once more every
//! datagram recorded before, until the sender's next one. So the store
//! keeps, per peer key (each node's `K_node`, each RS's `K_rs`), the
//! highest seq the DC accepted: its [`Mark`]. A restarted DC opens each
//! window as `ReplayWindow::above(mark)`: everything at or below the mark
//! is refused as a replay, everything above is new.
//!
//! Why the exact mark and not something cheaper:
//!
//! - *A time-based floor* ("refuse every seq below the wall clock at my
//!   restart") refuses live nodes. A signaling sender's seq starts at the
//!   Unix time in ns *when the sender started* and then counts up by one
//!   per datagram, so a node running since yesterday sends seqs near
//!   yesterday's time for ever: all of them below the DC's restart time.
//! - *A ceiling reserved ahead* (record mark + N, refuse up to it) works
//!   for one's own counter but not for someone else's: the node's next N
//!   datagrams, REG_REQ included, would be refused and the node locked out
//!   until its counter passed the ceiling.
//!
//! So the mark is the highest accepted seq itself, and it is made cheap by
//! *when* it is written, not by what:
//!
//! - A datagram that starts or changes something (REG_REQ, DEREG, DIR_REQ,
//!   a KEEPALIVE from a new address) commits its key's mark in the same
//!   transaction as its change, before it is answered: a recorded one of
//!   these is refused after any restart, even a crash right after it.
//! - Other accepted datagrams (a KEEPALIVE from the same address, ROUTE_ACK,
//!   RELAY_ACK, ERROR) move the mark in memory only. Every write carries
//!   all moved marks along, the coordinator writes the moved marks once a
//!   sweep (every second), and [`RedbStore`] writes them when it is dropped
//!   (a clean stop). So after a clean stop nothing can be replayed; after
//!   a crash, only such a datagram from the last second before the crash
//!   can be accepted once more, and it can do nothing: a KEEPALIVE from the
//!   same address extends by three intervals the liveness of a node that
//!   was alive a second before, and ROUTE_ACK and RELAY_ACK find no
//!   set-up, as set-ups do not survive a restart.
//!
//! Marks are per key: each carries a fingerprint of the key it was seen
//! with (an HMAC of a fixed label under that key, which reveals nothing of
//! the key), and a mark whose key changed while the DC was stopped is
//! dropped, as a re-keyed node's window starts afresh on a reload.
//!
//! # Reserved counters
//!
//! [`Reserved`] holds the values the DC must never hand out twice and that
//! move too often to write on every use: its own signaling seq (which
//! starts at the Unix time in ns, §2, but would repeat if the clock were
//! stepped back across a restart) and the tunnel id counter. The DC records
//! a ceiling ahead of use and starts a new run above the last ceiling.

//!
//! # Cost
//!
//! A commit is one redb transaction with an fsync: about 4 ms on a
//! virtual disk (`examples/store_cost.rs`), so a DC that committed per
//! datagram would take some 250 REG_REQs or DIR_REQs a second where memory
//! takes over 100,000; keep-alives cost what they cost in memory. So the
//! driver commits per burst (group commit, see the coordinator's docs): it
//! reads what the socket holds (up to `ntm_ops::server::BURST` datagrams),
//! hands each to `Coordinator::receive`, commits once and only then sends
//! the answers, which the coordinator holds until the commit succeeded. The
//! fsync is then shared by every datagram that arrived while the last one
//! ran; the figures are in docs/deploy.md, "Capacity of one DC"
//! (`cargo xtask bench dc`).
//!
//! # A shared store (etcd, several DCs)
//!
//! [`EtcdStore`] holds the same records in etcd for several DCs (the
//! layout and the rules are in its docs). What sharing adds to the trait,
//! with defaults that change nothing for the stores above:
//!
//! - Registrations: a VIP is claimed with a compare-and-set on the VIP
//!   (two DCs never lease one VIP); a node's liveness is an etcd key under
//!   its home DC's lease.
//! - Marks: one DC per node at a time (its home); a DC that takes a node
//!   over opens the node's window above the last durable mark any DC wrote
//!   (the coordinator's `catch_up_window`), exactly as a restart does.
//! - The DC's own seq: a node keeps one 2048-wide window for its DC, so
//!   only the home DC sends to a node, and a DC taking a node over sends
//!   above the previous home's reserved seq ([`DcStore::takeover_seq`]).
//! - Tunnel ids: blocks of [`crate::coordinator::TUNNEL_ID_BLOCK`] from a
//!   shared counter ([`DcStore::reserve_tunnel_ids`]), one salt for all.
//! - Directions: set-ups stay with the DC that directs them; a ROUTE_DIR
//!   for another DC's node is handed to that DC ([`Handoff`],
//!   [`DcStore::post`], [`DcStore::take_handoffs`]). A failover mid-set-up
//!   redoes it.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use ntm_proto::wire::Caps;

mod disk;
mod etcd;

pub use disk::RedbStore;
pub use etcd::{EtcdOptions, EtcdStore};

/// One node's registration and lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The node id (stable per FQDN).
    pub node_id: u32,
    /// The node's FQDN.
    pub fqdn: String,
    /// Its VIP.
    pub vip: Ipv4Addr,
    /// The source address:port its signaling comes from.
    pub observed: SocketAddrV4,
    /// The LOCAL_ADDR it reported.
    pub local: SocketAddrV4,
    /// Its CAPS.
    pub caps: Caps,
    /// Until when it counts as alive; `None` once lapsed.
    pub alive_until: Option<Instant>,
    /// Until when its VIP stays reserved.
    pub lease_until: Instant,
}

impl Registration {
    /// Whether the node is reachable (registered and keeping alive).
    pub fn is_active(&self) -> bool {
        self.alive_until.is_some()
    }

    /// NAT detection (§5): the observed address differs from LOCAL_ADDR.
    pub fn behind_nat(&self) -> bool {
        self.observed != self.local
    }

    /// Whether `new` differs from `self` only in liveness: both active and
    /// `alive_until` moved (see the [module docs](self), "Commits").
    pub fn only_liveness_differs(&self, new: &Registration) -> bool {
        self.alive_until.is_some()
            && new.alive_until.is_some()
            && Registration {
                alive_until: new.alive_until,
                ..self.clone()
            } == *new
    }
}

/// What [`DcStore::expire`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// The node stopped keeping alive; its VIP stays reserved.
    Lapsed(Registration),
    /// The lease ended: the VIP is free again.
    Released(Registration),
}

/// A peer key the DC keeps a replay window for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// A node's `K_node`, by node id.
    Node(u32),
    /// An RS's `K_rs`, by RS id.
    Relay(u32),
}

impl Peer {
    /// One number per peer (the durable store's key).
    pub fn to_u64(self) -> u64 {
        match self {
            Peer::Node(id) => u64::from(id),
            Peer::Relay(id) => 1 << 32 | u64::from(id),
        }
    }

    /// The inverse of [`Peer::to_u64`]; `None` for a number it never gives.
    pub fn from_u64(v: u64) -> Option<Peer> {
        let id = v as u32;
        match v >> 32 {
            0 => Some(Peer::Node(id)),
            1 => Some(Peer::Relay(id)),
            _ => None,
        }
    }
}

/// The highest seq accepted from a peer key (see the
/// [module docs](self), "Replay marks across a restart").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The highest seq accepted.
    pub seq: u64,
    /// A fingerprint of the key it was accepted under.
    pub key_id: [u8; 8],
}

/// Values the DC reserves ahead of use (see the [module docs](self),
/// "Reserved counters"). Zero is "nothing reserved yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// The DC's signaling seq: every seq the DC used is below this.
    pub seq: u64,
    /// The tunnel id counter: every counter value used is below this.
    pub tunnel_ids: u64,
    /// The tunnel ids' salt (ids are the counter scrambled with it); 0
    /// until chosen.
    pub tunnel_salt: u32,
}

/// What one DC hands another through a shared store (see
/// [`EtcdStore`], "Directions across DCs"): a node's signaling goes out
/// from the DC the node registered at, where its NAT mapping points.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Handoff {
    /// Send this ROUTE_DIR to a node registered here (the sender directs
    /// the tunnel and retransmits by posting again).
    RouteDir(RemoteRoute),
    /// A node registered at the receiving DC's peer acknowledged the
    /// ROUTE_DIR of a tunnel the receiving DC directs.
    RouteAck {
        /// The tunnel.
        tunnel_id: u32,
        /// The node that acknowledged.
        node_id: u32,
    },
}

/// The contents of a ROUTE_DIR one DC asks another to send (keys in hex:
/// the store must be as private as the DC's configuration).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteRoute {
    /// The node it goes to.
    pub node_id: u32,
    /// The tunnel.
    pub tunnel_id: u32,
    /// The peer's FQDN.
    pub peer_fqdn: String,
    /// The peer's VIP.
    pub peer_vip: Ipv4Addr,
    /// ENDPOINT.
    pub endpoint: SocketAddrV4,
    /// PATH (wire value).
    pub path: u8,
    /// ROLE (wire value).
    pub role: u8,
    /// SUITE (wire value).
    pub suite: u8,
    /// `K_tun`, hex.
    pub k_tun: String,
    /// `K_relay` on RELAY paths, hex.
    pub k_relay: Option<String>,
    /// LIFETIME.
    pub lifetime_secs: u32,
}

/// Why the store could not load or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An etcd request failed.
    #[error("the etcd store at {endpoints} failed: {what} (check that etcd is running and reachable: etcdctl --endpoints {endpoints} endpoint health)")]
    Etcd {
        /// The endpoints.
        endpoints: String,
        /// What failed.
        what: String,
    },
    /// The shared store refused a change or a start (another DC holds
    /// what this one asked for).
    #[error("{0}")]
    Refused(String),
    /// Opening or creating the store file failed.
    #[error("cannot open the DC store {path}: {source} (check that the directory exists and is writable by the ntm-dc user, and that no other ntm-dc uses this file)")]
    Open {
        /// The file.
        path: String,
        /// What redb said.
        source: Box<redb::Error>,
    },
    /// A transaction failed.
    #[error("the DC store {path} failed: {source} (check free space and the disk)")]
    Io {
        /// The file.
        path: String,
        /// What redb said.
        source: Box<redb::Error>,
    },
    /// A record could not be read back.
    #[error("the DC store {path} holds a record it cannot read ({what}): it was written by another version or damaged; move the file away to start with an empty store (nodes re-register)")]
    Corrupt {
        /// The file.
        path: String,
        /// Which record.
        what: String,
    },
}

/// Where the DC's state lives. Lookups return copies, so that an
/// implementation may keep them anywhere; changes are durable only once
/// committed (see the [module docs](self), "Commits").
pub trait DcStore {
    /// The state as it stands, committed or not. Every store keeps it in
    /// memory (a durable one in front of its copy), and every lookup reads
    /// it: the lookups are written once, here.
    fn cached(&self) -> &MemoryStore;
    /// The registration of a node id, active or lapsed.
    fn get(&self, node_id: u32) -> Option<Registration> {
        self.cached().index.get(node_id).cloned()
    }
    /// The registration of an FQDN, active or lapsed.
    fn get_by_fqdn(&self, fqdn: &str) -> Option<Registration> {
        self.cached().index.get_by_fqdn(fqdn).cloned()
    }
    /// The node id holding a lease on `vip`.
    fn vip_owner(&self, vip: Ipv4Addr) -> Option<u32> {
        self.cached().index.vip_owner(vip)
    }
    /// Insert, or replace the registration with the same node id (and any
    /// other holding its FQDN or VIP).
    fn put(&mut self, reg: Registration);
    /// Remove a node's registration and lease.
    fn remove(&mut self, node_id: u32) -> Option<Registration>;
    /// Lapse registrations whose `alive_until` passed and release leases
    /// whose `lease_until` passed (and that are not alive).
    fn expire(&mut self, now: Instant) -> Vec<Expiry>;
    /// Every registration, active and lapsed, in no particular order.
    fn registrations(&self) -> Vec<Registration> {
        self.cached().index.iter().cloned().collect()
    }
    /// Leases held (active and lapsed).
    fn len(&self) -> usize {
        self.cached().index.len()
    }
    /// Whether no lease is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Active registrations.
    fn active(&self) -> usize {
        self.cached().index.active
    }

    /// A peer key's replay mark.
    fn mark(&self, peer: Peer) -> Option<Mark> {
        self.cached().marks.get(&peer).copied()
    }
    /// Every replay mark.
    fn marks(&self) -> Vec<(Peer, Mark)> {
        self.cached().marks.iter().map(|(p, m)| (*p, *m)).collect()
    }
    /// Record a peer key's replay mark (written with the next write, or
    /// the next [`DcStore::commit_all`]).
    fn set_mark(&mut self, peer: Peer, mark: Mark);
    /// Forget a peer key's mark (its key changed, or it is gone).
    fn forget_mark(&mut self, peer: Peer);

    /// The reserved counters.
    fn reserved(&self) -> Reserved {
        self.cached().reserved
    }
    /// Record new reserved counters (a change, written at the next commit).
    fn set_reserved(&mut self, r: Reserved);

    /// Make every change durable, replay marks along if anything is
    /// written; with only marks changed, write nothing.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Make every change durable, replay marks included.
    fn commit_all(&mut self) -> Result<(), StoreError>;
    /// The once-a-sweep write of the marks that moved (see "Replay marks
    /// across a restart"): [`DcStore::commit_all`], unless the store can
    /// write marks alone without holding the DC up (etcd does it in the
    /// background; anything else pending is written as by `commit_all`).
    fn commit_marks(&mut self) -> Result<(), StoreError> {
        self.commit_all()
    }

    /// Reserves `block` tunnel id counter values for this DC alone and
    /// gives the first: the counter goes on where the last reservation
    /// ended (written at the next commit; a shared store reserves at
    /// once, with a compare-and-set).
    fn reserve_tunnel_ids(&mut self, block: u64) -> Result<u64, StoreError> {
        let mut r = self.reserved();
        let first = r.tunnel_ids;
        r.tunnel_ids = first + block;
        self.set_reserved(r);
        Ok(first)
    }

    // ----- shared by several DCs (see [`EtcdStore`]) -------------------

    /// Whether other DCs share the store: the coordinator then calls
    /// [`DcStore::take_handoffs`] often.
    fn shared(&self) -> bool {
        false
    }
    /// The DC a node is registered at, when that is another DC.
    fn remote_home(&self, _node_id: u32) -> Option<&str> {
        None
    }
    /// For a node registered at another DC: that DC's reserved seq, which
    /// this DC must send above once it takes the node over (the node
    /// keeps one replay window for its DC).
    fn takeover_seq(&self, _node_id: u32) -> Option<u64> {
        None
    }
    /// Hands `h` to DC `dc` (written at the next commit).
    fn post(&mut self, _dc: &str, _h: Handoff) {}
    /// What other DCs handed this one since the last call, with the
    /// sender's name; other DCs' changes are taken into the state too.
    fn take_handoffs(&mut self) -> Vec<(String, Handoff)> {
        Vec::new()
    }
}

/// A boxed store is a store: one coordinator type over any of them.
impl<S: DcStore + ?Sized> DcStore for Box<S> {
    fn cached(&self) -> &MemoryStore {
        (**self).cached()
    }
    fn put(&mut self, reg: Registration) {
        (**self).put(reg);
    }
    fn remove(&mut self, node_id: u32) -> Option<Registration> {
        (**self).remove(node_id)
    }
    fn expire(&mut self, now: Instant) -> Vec<Expiry> {
        (**self).expire(now)
    }
    fn set_mark(&mut self, peer: Peer, mark: Mark) {
        (**self).set_mark(peer, mark);
    }
    fn forget_mark(&mut self, peer: Peer) {
        (**self).forget_mark(peer);
    }
    fn set_reserved(&mut self, r: Reserved) {
        (**self).set_reserved(r);
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        (**self).commit()
    }
    fn commit_all(&mut self) -> Result<(), StoreError> {
        (**self).commit_all()
    }
    fn commit_marks(&mut self) -> Result<(), StoreError> {
        (**self).commit_marks()
    }
    fn vip_owner(&self, vip: Ipv4Addr) -> Option<u32> {
        (**self).vip_owner(vip)
    }
    fn reserve_tunnel_ids(&mut self, block: u64) -> Result<u64, StoreError> {
        (**self).reserve_tunnel_ids(block)
    }
    fn shared(&self) -> bool {
        (**self).shared()
    }
    fn remote_home(&self, node_id: u32) -> Option<&str> {
        (**self).remote_home(node_id)
    }
    fn takeover_seq(&self, node_id: u32) -> Option<u64> {
        (**self).takeover_seq(node_id)
    }
    fn post(&mut self, dc: &str, h: Handoff) {
        (**self).post(dc, h);
    }
    fn take_handoffs(&mut self) -> Vec<(String, Handoff)> {
        (**self).take_handoffs()
    }
}

/// Registrations indexed by node id, FQDN and VIP: [`MemoryStore`] itself,
/// and [`RedbStore`]'s index in front of its file.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_id: HashMap<u32, Registration>,
    by_fqdn: HashMap<String, u32>,
    by_vip: HashMap<Ipv4Addr, u32>,
    active: usize,
}

impl Index {
    fn get(&self, node_id: u32) -> Option<&Registration> {
        self.by_id.get(&node_id)
    }

    fn get_by_fqdn(&self, fqdn: &str) -> Option<&Registration> {
        self.by_fqdn.get(fqdn).and_then(|id| self.by_id.get(id))
    }

    fn vip_owner(&self, vip: Ipv4Addr) -> Option<u32> {
        self.by_vip.get(&vip).copied()
    }

    /// Inserts `reg`; gives the node ids it displaced (its own included).
    fn put(&mut self, reg: Registration) -> Vec<u32> {
        let mut gone = Vec::new();
        gone.extend(self.remove(reg.node_id).map(|r| r.node_id));
        if let Some(other) = self.by_fqdn.get(&reg.fqdn).copied() {
            gone.extend(self.remove(other).map(|r| r.node_id));
        }
        if let Some(other) = self.by_vip.get(&reg.vip).copied() {
            gone.extend(self.remove(other).map(|r| r.node_id));
        }
        self.by_fqdn.insert(reg.fqdn.clone(), reg.node_id);
        self.by_vip.insert(reg.vip, reg.node_id);
        self.active += usize::from(reg.is_active());
        self.by_id.insert(reg.node_id, reg);
        gone
    }

    fn remove(&mut self, node_id: u32) -> Option<Registration> {
        let reg = self.by_id.remove(&node_id)?;
        self.by_fqdn.remove(&reg.fqdn);
        self.by_vip.remove(&reg.vip);
        self.active -= usize::from(reg.is_active());
        Some(reg)
    }

    fn expire(&mut self, now: Instant) -> Vec<Expiry> {
        let mut out = Vec::new();
        let mut released = Vec::new();
        for reg in self.by_id.values_mut() {
            if reg.alive_until.is_some_and(|t| t <= now) {
                reg.alive_until = None;
                self.active -= 1;
                out.push(Expiry::Lapsed(reg.clone()));
            }
            if reg.alive_until.is_none() && reg.lease_until <= now {
                released.push(reg.node_id);
            }
        }
        for id in released {
            if let Some(reg) = self.remove(id) {
                out.push(Expiry::Released(reg));
            }
        }
        out
    }

    fn iter(&self) -> impl Iterator<Item = &Registration> {
        self.by_id.values()
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Everything in memory, for the life of the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    index: Index,
    marks: HashMap<Peer, Mark>,
    reserved: Reserved,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every registration, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Registration> {
        self.index.iter()
    }
}

impl DcStore for MemoryStore {
    fn cached(&self) -> &MemoryStore {
        self
    }

    fn put(&mut self, reg: Registration) {
        self.index.put(reg);
    }

    fn remove(&mut self, node_id: u32) -> Option<Registration> {
        self.index.remove(node_id)
    }

    fn expire(&mut self, now: Instant) -> Vec<Expiry> {
        self.index.expire(now)
    }

    fn set_mark(&mut self, peer: Peer, mark: Mark) {
        self.marks.insert(peer, mark);
    }

    fn forget_mark(&mut self, peer: Peer) {
        self.marks.remove(&peer);
    }

    fn set_reserved(&mut self, r: Reserved) {
        self.reserved = r;
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn commit_all(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Node ids whose registration records must be written or deleted, and
/// whether anything else changed: what [`RedbStore`] owes its file.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub(crate) regs: HashSet<u32>,
    pub(crate) marks: HashSet<Peer>,
    pub(crate) reserved: bool,
}

impl Dirty {
    /// Whether something other than marks is pending.
    pub(crate) fn state(&self) -> bool {
        !self.regs.is_empty() || self.reserved
    }

    /// Sets `peer`'s mark in `mem`, noted for the next write if it changed
    /// ([`DcStore::set_mark`] of the durable stores).
    pub(crate) fn set_mark(&mut self, mem: &mut MemoryStore, peer: Peer, mark: Mark) {
        if mem.marks.insert(peer, mark) != Some(mark) {
            self.marks.insert(peer);
        }
    }

    /// Forgets `peer`'s mark in `mem`, noted for the next write if it had one.
    pub(crate) fn forget_mark(&mut self, mem: &mut MemoryStore, peer: Peer) {
        if mem.marks.remove(&peer).is_some() {
            self.marks.insert(peer);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn reg(id: u32, fqdn: &str, vip: u8, now: Instant) -> Registration {
        let a: SocketAddrV4 = "198.18.0.20:7700".parse().unwrap();
        Registration {
            node_id: id,
            fqdn: fqdn.into(),
            vip: Ipv4Addr::new(100, 64, 0, vip),
            observed: a,
            local: a,
            caps: Caps::NODE,
            alive_until: Some(now + Duration::from_secs(60)),
            lease_until: now + Duration::from_secs(600),
        }
    }

    /// The behaviour every store shares, run on each backend.
    pub(crate) fn lookups_by_id_fqdn_and_vip<S: DcStore>(s: &mut S) {
        let now = Instant::now();
        s.put(reg(7, "a.ntm.test", 2, now));
        s.put(reg(8, "b.ntm.test", 3, now));
        s.commit().unwrap();
        assert_eq!(s.get(7).unwrap().fqdn, "a.ntm.test");
        assert_eq!(s.get_by_fqdn("b.ntm.test").unwrap().node_id, 8);
        assert_eq!(s.vip_owner(Ipv4Addr::new(100, 64, 0, 3)), Some(8));
        assert_eq!((s.len(), s.active()), (2, 2));
        // Replacing keeps the indexes consistent.
        let mut moved = reg(7, "a.ntm.test", 4, now);
        moved.alive_until = None;
        s.put(moved);
        assert_eq!(s.vip_owner(Ipv4Addr::new(100, 64, 0, 2)), None);
        assert_eq!(s.vip_owner(Ipv4Addr::new(100, 64, 0, 4)), Some(7));
        assert_eq!((s.len(), s.active()), (2, 1));
        // A registration taking another's VIP displaces it.
        s.put(reg(9, "c.ntm.test", 4, now));
        assert_eq!(s.get(7), None);
        assert_eq!(s.vip_owner(Ipv4Addr::new(100, 64, 0, 4)), Some(9));
        assert!(s.remove(8).is_some());
        assert_eq!(s.get_by_fqdn("b.ntm.test"), None);
        assert_eq!((s.len(), s.active()), (1, 1));
        assert_eq!(s.registrations().len(), 1);
        s.commit().unwrap();
    }

    pub(crate) fn expiry_lapses_then_releases<S: DcStore>(s: &mut S) {
        let now = Instant::now();
        s.put(reg(7, "a.ntm.test", 2, now));
        assert!(s.expire(now + Duration::from_secs(59)).is_empty());
        let e = s.expire(now + Duration::from_secs(60));
        assert!(matches!(&e[..], [Expiry::Lapsed(r)] if r.node_id == 7));
        assert_eq!((s.len(), s.active()), (1, 0));
        assert!(s.expire(now + Duration::from_secs(599)).is_empty());
        let e = s.expire(now + Duration::from_secs(600));
        assert!(matches!(&e[..], [Expiry::Released(r)] if r.node_id == 7));
        assert!(s.is_empty());
        assert_eq!(s.vip_owner(Ipv4Addr::new(100, 64, 0, 2)), None);
        s.commit().unwrap();
    }

    pub(crate) fn marks_and_reserved<S: DcStore>(s: &mut S) {
        assert_eq!(s.mark(Peer::Node(7)), None);
        assert_eq!(s.reserved(), Reserved::default());
        let m = Mark {
            seq: 1_700_000_000_000_000_123,
            key_id: [1; 8],
        };
        s.set_mark(Peer::Node(7), m);
        s.set_mark(Peer::Relay(7), Mark { seq: 5, ..m });
        assert_eq!(s.mark(Peer::Node(7)), Some(m));
        assert_eq!(s.mark(Peer::Relay(7)).unwrap().seq, 5);
        assert_eq!(s.marks().len(), 2);
        s.forget_mark(Peer::Relay(7));
        assert_eq!(s.mark(Peer::Relay(7)), None);
        let r = Reserved {
            seq: 10,
            tunnel_ids: 20,
            tunnel_salt: 30,
        };
        s.set_reserved(r);
        assert_eq!(s.reserved(), r);
        s.commit_all().unwrap();
    }

    #[test]
    fn memory_lookups_by_id_fqdn_and_vip() {
        lookups_by_id_fqdn_and_vip(&mut MemoryStore::new());
    }

    #[test]
    fn memory_expiry_lapses_then_releases() {
        expiry_lapses_then_releases(&mut MemoryStore::new());
    }

    #[test]
    fn memory_marks_and_reserved() {
        marks_and_reserved(&mut MemoryStore::new());
    }

    #[test]
    fn peers_round_trip_through_numbers() {
        for p in [Peer::Node(0), Peer::Node(u32::MAX), Peer::Relay(1)] {
            assert_eq!(Peer::from_u64(p.to_u64()), Some(p));
        }
        assert_eq!(Peer::from_u64(2 << 32), None);
    }

    #[test]
    fn liveness_alone_is_told_apart() {
        let now = Instant::now();
        let a = reg(7, "a.ntm.test", 2, now);
        let mut b = a.clone();
        b.alive_until = Some(now + Duration::from_secs(70));
        assert!(a.only_liveness_differs(&b));
        b.lease_until += Duration::from_secs(1);
        assert!(!a.only_liveness_differs(&b));
        let mut c = a.clone();
        c.observed = "198.18.0.21:7700".parse().unwrap();
        assert!(!a.only_liveness_differs(&c));
        let mut d = a.clone();
        d.alive_until = None;
        assert!(!a.only_liveness_differs(&d));
    }
}
