//! SIGHUP: what a new configuration changes, and whether it can be applied
//! to the running adapter ([`plan`]); [`crate::control::Control::reload`]
//! applies it without touching what did not change.
//!
//! Applied in place:
//! * the GNs (`[[gn]]`) and the DC address: a GN removed, or whose key or
//!   MAC changed, deregisters (DEREG) with its tunnels; a GN added or
//!   changed registers as configured (its next DHCP renewal gets its VIP);
//!   every GN registers again when the DC address changes; the others go
//!   on untouched (a change of the list forgets DNS queries in flight);
//! * `[dns]`: suffix, TTL and time-out (queries in flight are forgotten;
//!   the GN's resolver asks again);
//! * `dns.upstream`: new forwarded queries, UDP and TCP, go to the new
//!   resolver (checked reachable first); those in flight keep their socket
//!   or connection to the old one and are answered or time out as before;
//! * `[hold]`: its bounds and time-out (held packets stay);
//! * `stats_interval_secs` and `metrics.max_tunnel_labels`.
//!
//! Refused, because only a restart can change them: the NICs and the
//! tunnel port, the datapath, the router address and VIP prefix, the MTU
//! and lease time handed out by DHCP, `non_vip`, the name and status
//! socket and `metrics.listen`.

use crate::config::Settings;

/// What a reload changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// The `[[gn]]` list or the DC: GNs added, removed or changed register
    /// (again); the others keep their registration, lease and tunnels.
    pub identity: bool,
    /// Suffix, TTL or time-out.
    pub dns: bool,
    /// The upstream resolver of new forwarded queries (the daemon's
    /// sockets: [`crate::control::Control::reload`] has nothing to do).
    pub upstream: bool,
    /// Hold queue bounds.
    pub hold: bool,
    /// Statistics interval.
    pub stats: bool,
    /// Metrics label cap.
    pub metrics: bool,
}

impl Plan {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<&str> = [
            (self.identity, "identity ([[gn]] or [dc]: register again)"),
            (self.dns, "dns"),
            (self.upstream, "dns.upstream"),
            (self.hold, "hold"),
            (self.stats, "stats_interval_secs"),
            (self.metrics, "metrics.max_tunnel_labels"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if parts.is_empty() {
            f.write_str("nothing changed")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Compares the running settings with new ones: what to apply, or the
/// settings that need a restart (then nothing is applied).
pub fn plan(old: &Settings, new: &Settings) -> Result<Plan, String> {
    let mut restart = Vec::new();
    let mut need = |changed: bool, what: &str| {
        if changed {
            restart.push(what.to_owned());
        }
    };
    need(old.name != new.name, "name");
    need(old.status_socket != new.status_socket, "status_socket");
    need(old.non_vip != new.non_vip, "non_vip");
    need(old.lan_if != new.lan_if, "lan.interface");
    need(old.wan_if != new.wan_if, "wan.interface");
    need(old.port != new.port, "wan.port");
    need(old.gn.router != new.gn.router, "lan.router");
    need(
        old.gn.vip_prefix_len != new.gn.vip_prefix_len,
        "lan.vip_prefix_len",
    );
    need(old.lan_mtu != new.lan_mtu, "lan.mtu");
    need(old.wan_mtu != new.wan_mtu, "wan.mtu");
    need(old.gn.lease_secs != new.gn.lease_secs, "lan.lease_secs");
    need(old.datapath != new.datapath, "[datapath]");
    need(old.metrics.listen != new.metrics.listen, "metrics.listen");
    if !restart.is_empty() {
        return Err(format!(
            "the new configuration changes {}, which needs a restart (systemctl restart ntma); nothing was reloaded",
            restart.join(", ")
        ));
    }
    Ok(Plan {
        identity: old.gns != new.gns || old.dcs != new.dcs,
        dns: old.gn.ntm_suffix != new.gn.ntm_suffix
            || old.gn.dns_ttl != new.gn.dns_ttl
            || old.gn.dns_resolve_timeout != new.gn.dns_resolve_timeout,
        upstream: old.upstream != new.upstream,
        hold: old.hold_per_peer != new.hold_per_peer
            || old.hold_total != new.hold_total
            || old.hold_timeout != new.hold_timeout,
        stats: old.stats_interval != new.stats_interval,
        metrics: old.metrics.max_tunnel_labels != new.metrics.max_tunnel_labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::base;
    use crate::config::{Attach, Config};

    fn plan_of(f: impl FnOnce(&mut Config)) -> Result<Plan, String> {
        let old = base().validate().unwrap();
        let mut c = base();
        f(&mut c);
        plan(&old, &c.validate().unwrap())
    }

    #[test]
    fn what_applies_in_place() {
        assert!(plan_of(|_| {}).unwrap().is_empty());
        let p = plan_of(|c| c.dns.ttl = 10).unwrap();
        assert_eq!(
            p,
            Plan {
                dns: true,
                ..Plan::default()
            }
        );
        let p = plan_of(|c| c.gn[0].fqdn = "gn2.ntm.test".into()).unwrap();
        assert!(p.identity && !p.dns);
        let p = plan_of(|c| c.gn[0].key = "11".repeat(32)).unwrap();
        assert!(p.identity);
        let p = plan_of(|c| {
            let mut g = c.gn[0].clone();
            g.fqdn = "gn2.ntm.test".into();
            c.gn.push(g);
        })
        .unwrap();
        assert!(p.identity);
        let p = plan_of(|c| {
            c.hold.per_peer = 8;
            c.stats_interval_secs = 5;
        })
        .unwrap();
        assert!(p.hold && p.stats && !p.identity);
        assert_eq!(p.to_string(), "hold, stats_interval_secs");
        let p = plan_of(|c| c.dns.upstream = "198.18.0.9:53".parse().unwrap()).unwrap();
        assert_eq!(
            p,
            Plan {
                upstream: true,
                ..Plan::default()
            }
        );
        assert_eq!(p.to_string(), "dns.upstream");
    }

    #[test]
    fn what_needs_a_restart_is_refused_by_name() {
        let e = plan_of(|c| c.datapath.attach = Attach::Generic).unwrap_err();
        assert!(
            e.contains("[datapath]") && e.contains("needs a restart"),
            "{e}"
        );
        let e = plan_of(|c| {
            c.lan.interface = "eth9".into();
            c.wan.port = 7701;
        })
        .unwrap_err();
        assert!(e.contains("lan.interface, wan.port"), "{e}");
        let e =
            plan_of(|c| c.metrics.listen = Some("127.0.0.1:9100".parse().unwrap())).unwrap_err();
        assert!(e.contains("metrics.listen"), "{e}");
    }
}
