//! The real fast path behind [`Plane`]: the control side's types mapped
//! onto [`crate::fastpath::Dataplane`]'s.

use std::net::SocketAddrV4;
use std::sync::Arc;

use ntm_proto::node::TunnelParams;

use super::{Activity, Link, Plane};
use crate::fastpath::{Dataplane, LinkInfo};

impl Plane for Arc<Dataplane> {
    fn set_link(&self, link: Option<Link>) {
        Dataplane::set_link(
            self,
            link.map(|l| LinkInfo {
                gn_vip: l.gn_vip,
                gn_mac: l.gn_mac.0,
                lan_mac: l.lan_mac.0,
                wan_mac: l.wan_mac.0,
                wan_ip: l.wan_ip,
                wan_port: l.wan_port,
                gateway_mac: l.gateway_mac.0,
            }),
        );
    }

    fn add_tunnel(&self, t: &TunnelParams) {
        if let Err(e) = Dataplane::add_tunnel(self, t) {
            // The endpoint prepared the same keys for the same suite: not reached.
            tracing::error!(tunnel_id = t.tunnel_id, error = %e, "the fast path refused a tunnel");
        }
    }

    fn tunnel_up(&self, t: &TunnelParams) {
        if let Err(e) = Dataplane::tunnel_up(self, t) {
            tracing::error!(tunnel_id = t.tunnel_id, error = %e, "the fast path refused a tunnel");
        }
    }

    fn remove_tunnel(&self, tunnel_id: u32) {
        Dataplane::remove_tunnel(self, tunnel_id);
    }

    fn set_endpoint(&self, tunnel_id: u32, endpoint: SocketAddrV4) {
        if !Dataplane::set_endpoint(self, tunnel_id, endpoint) {
            tracing::debug!(
                tunnel_id,
                "roaming update for a tunnel the fast path no longer has"
            );
        }
    }

    fn activity(&self) -> Vec<Activity> {
        self.tunnel_stats()
            .into_iter()
            .map(|t| Activity {
                tunnel_id: t.tunnel_id,
                tx_packets: t.tx_packets,
                tx_bytes: t.tx_bytes,
                rx_packets: t.rx_packets,
                rx_bytes: t.rx_bytes,
                rx_keepalives: t.rx_keepalives,
                last_rx: t.last_rx,
                last_rx_from: t.last_rx_from,
            })
            .collect()
    }
}
