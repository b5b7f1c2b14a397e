//! Proxy ARP: the NTMA answers every ARP request on the GNs' network for an
//! address other than one of its GNs' own VIPs with its own MAC, so a GN
//! sends everything (every VIP is on-link for it) to the NTMA, except what
//! goes to another GN of this NTMA: that GN answers for itself and the
//! traffic stays on the network (§6). The NTMA never asks: it learns the
//! GNs' MACs from DHCP and from their frames.

use std::net::Ipv4Addr;

use super::wire::{build_arp_reply, parse_arp, ArpRepr, Eth};
use super::{Gn, GnDrop, GnStat};

impl Gn {
    pub(super) fn handle_arp(&mut self, eth: &Eth<'_>) -> Result<(), GnDrop> {
        let arp = parse_arp(eth.payload())?;
        let sender_gn = self.gn_of_vip(arp.sender_ip);
        if !arp.sender_mac.is_unicast() {
            return Err(GnDrop::ArpMalformed);
        }
        match arp.op {
            ArpRepr::REQUEST => {}
            ArpRepr::REPLY => {
                // Unsolicited (we never ask), but a reply from the VIP still
                // tells us where the GN is.
                if let Some(gn) = sender_gn {
                    self.set_gn_mac(gn, arp.sender_mac);
                    return Ok(());
                }
                return Err(GnDrop::ArpUnsolicitedReply);
            }
            _ => return Err(GnDrop::ArpUnknownOp),
        }
        if let Some(gn) = sender_gn {
            self.set_gn_mac(gn, arp.sender_mac);
        }
        if arp.sender_ip.is_unspecified() {
            // RFC 5227 probe: the GN checks an address it wants to use;
            // answering would make it believe the address is taken.
            return Err(GnDrop::ArpProbe);
        }
        if self.is_gn_vip(arp.target_ip) {
            return Err(GnDrop::ArpForGnVip);
        }
        if arp.target_ip == arp.sender_ip {
            return Err(GnDrop::ArpGratuitous);
        }
        if !is_host(arp.target_ip) {
            return Err(GnDrop::ArpBadTarget);
        }
        let ntma_mac = self.cfg.ntma_mac;
        self.emit(|out| {
            build_arp_reply(out, ntma_mac, arp.target_ip, arp.sender_mac, arp.sender_ip);
            Ok(())
        })?;
        self.counters.stat(GnStat::ArpReply);
        Ok(())
    }
}

/// An address a host on the link could own.
fn is_host(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use super::super::test_util::*;
    use super::super::wire::{build_arp_request, parse_eth};
    use super::super::{GnAction, Verdict};
    use super::*;
    use crate::wire::ethernet::ETHERTYPE_ARP;

    const ARP_REQ: &[u8] = include_bytes!("testdata/arp_request_router.bin");

    fn request(sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::new();
        build_arp_request(&mut f, GN_MAC, sender_ip, target_ip);
        f
    }

    #[test]
    fn captured_request_for_router_gets_our_mac() {
        let mut g = gn_with_vip();
        assert_eq!(g.handle_frame(Instant::now(), ARP_REQ), Verdict::Consumed);
        let out = frames(&mut g);
        assert_eq!(out.len(), 1);
        let eth = parse_eth(&out[0]).unwrap();
        assert_eq!(eth.dst_addr(), GN_MAC);
        assert_eq!(eth.src_addr(), NTMA_MAC);
        assert_eq!(eth.ethertype(), ETHERTYPE_ARP);
        let arp = parse_arp(eth.payload()).unwrap();
        assert_eq!(
            arp,
            ArpRepr {
                op: ArpRepr::REPLY,
                sender_mac: NTMA_MAC,
                sender_ip: ROUTER,
                target_mac: GN_MAC,
                target_ip: VIP,
            }
        );
        assert_eq!(g.counters()[GnStat::ArpReply], 1);
        // The request came from the VIP: the GN's MAC is learned from it.
        assert_eq!(g.gns()[0].mac(), Some(GN_MAC));
        assert_eq!(
            actions(&mut g),
            vec![GnAction::GnMac { gn: 0, mac: GN_MAC }]
        );
    }

    #[test]
    fn any_other_vip_or_address_is_answered() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        for target in [
            Ipv4Addr::new(100, 64, 0, 77),
            Ipv4Addr::new(100, 127, 1, 2),
            Ipv4Addr::new(192, 0, 2, 1),
        ] {
            assert_eq!(
                g.handle_frame(now, &request(VIP, target)),
                Verdict::Consumed
            );
            let out = frames(&mut g);
            let arp = parse_arp(parse_eth(&out[0]).unwrap().payload()).unwrap();
            assert_eq!(arp.sender_ip, target);
            assert_eq!(arp.sender_mac, NTMA_MAC);
        }
    }

    #[test]
    fn gn_own_vip_gratuitous_probe_and_bad_targets_get_no_answer() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        let other = Ipv4Addr::new(100, 64, 0, 50);
        let cases = [
            (request(other, VIP), GnDrop::ArpForGnVip),
            (request(VIP, VIP), GnDrop::ArpForGnVip),
            (request(other, other), GnDrop::ArpGratuitous),
            (request(Ipv4Addr::UNSPECIFIED, VIP), GnDrop::ArpProbe),
            (request(Ipv4Addr::UNSPECIFIED, other), GnDrop::ArpProbe),
            (request(VIP, Ipv4Addr::BROADCAST), GnDrop::ArpBadTarget),
            (
                request(VIP, Ipv4Addr::new(224, 0, 0, 1)),
                GnDrop::ArpBadTarget,
            ),
        ];
        for (f, why) in cases {
            assert_eq!(g.handle_frame(now, &f), Verdict::Dropped(why));
        }
        assert!(frames(&mut g).is_empty());
        assert_eq!(g.counters()[GnDrop::ArpForGnVip], 2);
    }

    #[test]
    fn before_a_vip_everything_but_probes_is_answered() {
        let mut g = gn();
        let now = Instant::now();
        assert_eq!(g.handle_frame(now, ARP_REQ), Verdict::Consumed);
        assert_eq!(frames(&mut g).len(), 1);
        // No VIP: the sender is not known to be the GN, nothing learned.
        assert_eq!(g.gns()[0].mac(), None);
    }

    #[test]
    fn replies_only_teach_the_mac() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        let mut f = request(VIP, ROUTER);
        f[14 + 7] = 2; // op = reply
        assert_eq!(g.handle_frame(now, &f), Verdict::Consumed);
        assert_eq!(g.gns()[0].mac(), Some(GN_MAC));
        let mut f = request(Ipv4Addr::new(100, 64, 0, 50), ROUTER);
        f[14 + 7] = 2;
        assert_eq!(
            g.handle_frame(now, &f),
            Verdict::Dropped(GnDrop::ArpUnsolicitedReply)
        );
        let mut f = request(VIP, ROUTER);
        f[14 + 7] = 9;
        assert_eq!(
            g.handle_frame(now, &f),
            Verdict::Dropped(GnDrop::ArpUnknownOp)
        );
        assert!(frames(&mut g).is_empty());
    }

    #[test]
    fn truncated_and_foreign_arp_is_malformed() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        for cut in [14, 20, 14 + 27] {
            assert_eq!(
                g.handle_frame(now, &ARP_REQ[..cut]),
                Verdict::Dropped(GnDrop::ArpMalformed),
                "cut at {cut}"
            );
        }
        let mut f = ARP_REQ.to_vec();
        f[14 + 1] = 6; // hardware type IEEE 802
        assert_eq!(
            g.handle_frame(now, &f),
            Verdict::Dropped(GnDrop::ArpMalformed)
        );
        let mut f = ARP_REQ.to_vec();
        f[14 + 8] = 0xff; // multicast sender hardware address
        assert_eq!(
            g.handle_frame(now, &f),
            Verdict::Dropped(GnDrop::ArpMalformed)
        );
    }
}
