//! [`Control::reload`]: a new configuration applied to the running control
//! side (see [`crate::reload`] for what may change).

use std::time::Instant;

use ntm_proto::hold::HoldQueue;

use super::{Control, Io, Slot};
use crate::config::{GnIdentity, Settings};
use crate::datapath::Datapath;
use crate::gn::Gn;
use crate::reload::Plan;

impl<D: Datapath + ?Sized> Control<D> {
    /// Applies `plan` with the settings `s`: a new identity deregisters the
    /// old one (its tunnels go down) and registers again; DNS and hold
    /// settings change in place. `unix_nanos` and `seed` start the new
    /// endpoint's sequence numbers and randomness.
    pub fn reload(
        &mut self,
        now: Instant,
        s: &Settings,
        plan: Plan,
        unix_nanos: u64,
        seed: [u8; 32],
        io: &impl Io,
    ) -> Result<(), String> {
        if plan.dns {
            self.gn
                .set_dns(&s.gn.ntm_suffix, s.gn.dns_ttl, s.gn.dns_resolve_timeout)
                .map_err(|e| format!("[dns]: {e}"))?;
            // Answers the old stub owed are gone with it.
            for slot in &mut self.slots {
                slot.host.forget_resolutions();
            }
        }
        if plan.hold {
            for slot in &mut self.slots {
                let hold = HoldQueue::new(s.hold_per_peer, s.hold_total, s.hold_timeout);
                let refused = slot.host.set_hold(now, hold);
                self.c.drop_n(super::CtlDrop::HoldFull, refused);
            }
        }
        if plan.identity {
            self.reload_gns(now, s, unix_nanos, seed, io)?;
        }
        self.pump(now, io);
        Ok(())
    }
}

impl<D: Datapath + ?Sized> Control<D> {
    /// The `[[gn]]` list or the DC changed: a GN whose identity (FQDN, key,
    /// MAC) and DC stay keeps its slot (registration, tunnels, hold queue);
    /// the others deregister with their tunnels, and new ones register.
    fn reload_gns(
        &mut self,
        now: Instant,
        s: &Settings,
        unix_nanos: u64,
        seed: [u8; 32],
        io: &impl Io,
    ) -> Result<(), String> {
        let same_dc = s.dcs == self.dcs;
        let keep: Vec<Option<usize>> = s
            .gns
            .iter()
            .map(|g| {
                let found = self.slots.iter().position(|o| o.id == *g);
                found.filter(|_| same_dc)
            })
            .collect();
        // Checked before anything changes.
        let specs: Vec<_> = s.gns.iter().map(GnIdentity::spec).collect();
        let mut check = self.gn.config().clone();
        check.gns = specs.clone();
        Gn::new(check).map_err(|e| format!("[[gn]]: {e}"))?;
        let mut fresh = Vec::new();
        for (i, g) in s.gns.iter().enumerate() {
            if keep[i].is_none() {
                let seed = super::slot_seed(seed, i);
                fresh.push((i, Slot::new(s, g, self.wan_ip, now, unix_nanos, seed)?));
            }
        }
        for (old, slot) in self.slots.iter_mut().enumerate() {
            if !keep.contains(&Some(old)) {
                tracing::info!(gn = %slot.fqdn(), "GN removed or changed: deregistering");
                // DEREG, and every tunnel down (out of the datapath too).
                slot.host.endpoint_mut().close(now);
            }
        }
        self.pump(now, io);
        let mut old: Vec<Option<Slot>> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(Some)
            .collect();
        for (i, slot) in old.iter_mut().enumerate() {
            if let Some(slot) = slot.as_ref().filter(|_| !keep.contains(&Some(i))) {
                for id in slot.tunnels.keys() {
                    self.datapath.remove_tunnel(*id);
                }
            }
        }
        let mut fresh = fresh.into_iter();
        for k in &keep {
            let slot = match k {
                Some(o) => old[*o].take().expect("each old slot is kept once"),
                None => fresh.next().expect("one fresh slot per new GN").1,
            };
            self.slots.push(slot);
        }
        for slot in &mut self.slots {
            // Their DNS answers are owed by a stub that is replaced.
            slot.host.forget_resolutions();
        }
        self.tunnel_gn = self
            .slots
            .iter()
            .enumerate()
            .flat_map(|(i, slot)| slot.tunnels.keys().map(move |id| (*id, i)))
            .collect();
        self.dcs = s.dcs.clone();
        self.gn.set_gns(specs).map_err(|e| format!("[[gn]]: {e}"))?;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Err(e) = self.gn.set_vip(i, slot.vip()) {
                tracing::warn!(gn = %slot.fqdn(), error = %e, "cannot give the GN its VIP");
            }
        }
        tracing::info!(gns = self.slots.len(), dcs = ?self.dcs, "GNs reloaded");
        Ok(())
    }
}
