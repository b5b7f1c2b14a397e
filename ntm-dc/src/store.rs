//! Registrations and VIP leases behind [`RegistrationStore`], so that a
//! persistent or shared store can replace [`MemoryStore`] later.
//!
//! A [`Registration`] is a lease (FQDN → VIP, until `lease_until`) that is
//! *active* while the node keeps alive (`alive_until`). When the node goes
//! quiet for three keep-alive intervals, or deregisters, the registration
//! *lapses*: the node is no longer reachable (DIR_REQ for it gets
//! NOT_FOUND) but its VIP stays reserved for its FQDN until the lease ends,
//! so the node gets the same VIP back when it re-registers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use ntm_proto::wire::Caps;

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
}

/// What [`RegistrationStore::expire`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// The node stopped keeping alive; its VIP stays reserved.
    Lapsed(Registration),
    /// The lease ended: the VIP is free again.
    Released(Registration),
}

/// Where registrations live. Lookups return copies, so that an
/// implementation may keep them anywhere.
pub trait RegistrationStore {
    /// The registration of a node id, active or lapsed.
    fn get(&self, node_id: u32) -> Option<Registration>;
    /// The registration of an FQDN, active or lapsed.
    fn get_by_fqdn(&self, fqdn: &str) -> Option<Registration>;
    /// The node id holding a lease on `vip`.
    fn vip_owner(&self, vip: Ipv4Addr) -> Option<u32>;
    /// Insert, or replace the registration with the same node id.
    fn put(&mut self, reg: Registration);
    /// Remove a node's registration and lease.
    fn remove(&mut self, node_id: u32) -> Option<Registration>;
    /// Lapse registrations whose `alive_until` passed and release leases
    /// whose `lease_until` passed (and that are not alive).
    fn expire(&mut self, now: Instant) -> Vec<Expiry>;
    /// Leases held (active and lapsed).
    fn len(&self) -> usize;
    /// Whether no lease is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Active registrations.
    fn active(&self) -> usize;
}

/// Registrations in memory, indexed by node id, FQDN and VIP.
#[derive(Debug, Default)]
pub struct MemoryStore {
    by_id: HashMap<u32, Registration>,
    by_fqdn: HashMap<String, u32>,
    by_vip: HashMap<Ipv4Addr, u32>,
    active: usize,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every registration, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Registration> {
        self.by_id.values()
    }
}

impl RegistrationStore for MemoryStore {
    fn get(&self, node_id: u32) -> Option<Registration> {
        self.by_id.get(&node_id).cloned()
    }

    fn get_by_fqdn(&self, fqdn: &str) -> Option<Registration> {
        self.by_fqdn.get(fqdn).and_then(|id| self.get(*id))
    }

    fn vip_owner(&self, vip: Ipv4Addr) -> Option<u32> {
        self.by_vip.get(&vip).copied()
    }

    fn put(&mut self, reg: Registration) {
        self.remove(reg.node_id);
        if let Some(other) = self.by_fqdn.get(&reg.fqdn).copied() {
            self.remove(other);
        }
        if let Some(other) = self.by_vip.get(&reg.vip).copied() {
            self.remove(other);
        }
        self.by_fqdn.insert(reg.fqdn.clone(), reg.node_id);
        self.by_vip.insert(reg.vip, reg.node_id);
        self.active += usize::from(reg.is_active());
        self.by_id.insert(reg.node_id, reg);
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

    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn active(&self) -> usize {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reg(id: u32, fqdn: &str, vip: u8, now: Instant) -> Registration {
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

    #[test]
    fn lookups_by_id_fqdn_and_vip() {
        let now = Instant::now();
        let mut s = MemoryStore::new();
        s.put(reg(7, "a.ntm.test", 2, now));
        s.put(reg(8, "b.ntm.test", 3, now));
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
        assert!(s.remove(8).is_some());
        assert_eq!(s.get_by_fqdn("b.ntm.test"), None);
        assert_eq!((s.len(), s.active()), (1, 0));
    }

    #[test]
    fn expiry_lapses_then_releases() {
        let now = Instant::now();
        let mut s = MemoryStore::new();
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
    }
}
