//! [`Control::reload`]: a new configuration applied to the running control
//! side (see [`crate::reload`] for what may change).

use std::net::SocketAddrV4;
use std::time::Instant;

use ntm_proto::hold::HoldQueue;
use ntm_proto::node::{self, Endpoint};
use ntm_proto::wire::Caps;

use super::{Control, Io};
use crate::config::Settings;
use crate::datapath::Datapath;
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
            self.host.forget_resolutions();
        }
        if plan.hold {
            let hold = HoldQueue::new(s.hold_per_peer, s.hold_total, s.hold_timeout);
            let refused = self.host.set_hold(now, hold);
            self.c.drop_n(super::CtlDrop::HoldFull, refused);
        }
        if plan.identity {
            let cfg = node::Config {
                fqdn: s.fqdn.clone(),
                key: s.key.clone(),
                dc: s.dc,
                local_addr: SocketAddrV4::new(self.wan_ip, self.port),
                caps: Caps::ADAPTER,
            };
            let ep = Endpoint::new(cfg, now, unix_nanos, seed)
                .map_err(|e| format!("cannot start the protocol endpoint: {e}"))?;
            tracing::info!(old = %self.fqdn, new = %s.fqdn, dc = %s.dc, "GN identity changed: deregistering and registering again");
            // DEREG, and every tunnel down (out of the datapath too).
            self.host.endpoint_mut().close(now);
            self.pump(now, io);
            for id in self.tunnels.keys().copied().collect::<Vec<_>>() {
                self.datapath.remove_tunnel(id);
            }
            self.tunnels.clear();
            self.host.replace_endpoint(ep);
            self.fqdn = s.fqdn.clone();
            self.dc = s.dc;
            self.vip = None;
            if let Err(e) = self.gn.set_vip(None) {
                tracing::warn!(error = %e, "cannot withdraw the GN's VIP");
            }
        }
        self.pump(now, io);
        Ok(())
    }
}
