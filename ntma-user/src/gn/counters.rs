//! Counters of the GN-facing slow path: one array indexed by drop reason
//! ([`GnDrop`]) and one by event ([`GnStat`]), so `ntma status` can print
//! every reason with its name without knowing the list.

use std::ops::{Index, IndexMut};

ntm_proto::reasons! {
    /// Why the slow path dropped (or refused with an error reply) a frame,
    /// a datagram from the upstream resolver, an answer from the control
    /// side or one of its own outputs.
    pub enum GnDrop {
        /// Frame shorter than an Ethernet II header.
        FrameShort => "frame_short",
        /// EtherType other than ARP or IPv4 (IPv6, VLAN tags, LLC, ...).
        EtherTypeUnsupported => "ethertype_unsupported",
        /// Source MAC is multicast, broadcast or all-zero.
        SrcMacInvalid => "src_mac_invalid",
        /// IPv4 header: bad version, IHL or total length.
        Ipv4Malformed => "ipv4_malformed",
        /// IPv4 header checksum does not verify.
        Ipv4BadChecksum => "ipv4_bad_checksum",
        /// IPv4 fragment (the slow-path services never need fragments).
        Ipv4Fragment => "ipv4_fragment",
        /// UDP header short or its length field disagrees with IPv4.
        UdpMalformed => "udp_malformed",
        /// UDP checksum (with pseudo-header) does not verify.
        UdpBadChecksum => "udp_bad_checksum",
        /// UDP to the router address on a port the slow path does not serve.
        UdpPortUnserved => "udp_port_unserved",
        /// ARP that is not Ethernet/IPv4 or is truncated.
        ArpMalformed => "arp_malformed",
        /// ARP operation other than request or reply.
        ArpUnknownOp => "arp_unknown_op",
        /// ARP request for the VIP of one of our GNs (that GN answers for itself, or it is a duplicate-address check): never answered.
        ArpForGnVip => "arp_for_gn_vip",
        /// Gratuitous ARP (target = sender): nothing to answer.
        ArpGratuitous => "arp_gratuitous",
        /// ARP probe (sender 0.0.0.0): answering would fake an address conflict.
        ArpProbe => "arp_probe",
        /// ARP request for 0.0.0.0, broadcast, multicast or loopback.
        ArpBadTarget => "arp_bad_target",
        /// ARP reply not from the GN's VIP (the NTMA never asks).
        ArpUnsolicitedReply => "arp_unsolicited_reply",
        /// DHCP message that does not parse.
        DhcpMalformed => "dhcp_malformed",
        /// BOOTREPLY, or a server-side message type (OFFER/ACK/NAK/...).
        DhcpNotRequest => "dhcp_not_request",
        /// Hardware type not Ethernet or length not 6.
        DhcpBadHwAddr => "dhcp_bad_hw_addr",
        /// No DHCP message type option.
        DhcpNoMessageType => "dhcp_no_message_type",
        /// Relayed (giaddr set): the GN is always on-link.
        DhcpRelayed => "dhcp_relayed",
        /// No VIP assigned by the DC yet: nothing to offer.
        DhcpNoVip => "dhcp_no_vip",
        /// The VIP is leased (or offered) to another client.
        DhcpVipInUse => "dhcp_vip_in_use",
        /// DHCP from a MAC that matches no GN entry (every entry is bound to
        /// another MAC): no offer (§6).
        DhcpUnknownMac => "dhcp_unknown_mac",
        /// A frame from a GN's VIP or an ARP from it with a MAC other than the
        /// one configured for that GN: not learned.
        GnMacMismatch => "gn_mac_mismatch",
        /// An NTM name asked from an address that is no GN's VIP: only a GN
        /// can set up a tunnel (answered SERVFAIL).
        DnsNotFromGn => "dns_not_from_gn",
        /// RELEASE/DECLINE from a client that holds no lease here.
        DhcpReleaseUnknown => "dhcp_release_unknown",
        /// INIT-REBOOT request while no VIP is known: RFC 2131 says stay silent.
        DhcpRebootUnknown => "dhcp_reboot_unknown",
        /// DNS query shorter than its header.
        DnsShort => "dns_short",
        /// DNS query larger than 512 bytes over UDP.
        DnsTooBig => "dns_too_big",
        /// A DNS response sent to the router address.
        DnsNotQuery => "dns_not_query",
        /// Opcode other than QUERY (answered NOTIMP).
        DnsBadOpcode => "dns_bad_opcode",
        /// Question count other than one (answered FORMERR).
        DnsQuestionCount => "dns_question_count",
        /// Answer/authority records or more than one additional in a query (FORMERR).
        DnsBadCounts => "dns_bad_counts",
        /// Query that does not parse (FORMERR).
        DnsMalformed => "dns_malformed",
        /// Pending table (resolve or forward) full.
        DnsPendingFull => "dns_pending_full",
        /// Retransmission of a query that is already pending.
        DnsDuplicate => "dns_duplicate",
        /// Forwarded query got no upstream reply in time.
        DnsUpstreamTimeout => "dns_upstream_timeout",
        /// Datagram from the upstream resolver that does not parse.
        DnsUpstreamMalformed => "dns_upstream_malformed",
        /// Upstream reply for a query no longer pending (it timed out).
        DnsUpstreamUnknownId => "dns_upstream_unknown_id",
        /// Upstream reply on a port where no query waits (answered already, or
        /// not a port of ours): a spoof or a late duplicate.
        DnsUpstreamWrongPort => "dns_upstream_wrong_port",
        /// Upstream reply whose id is not the random id its query went out with
        /// from that port: a spoof.
        DnsUpstreamWrongId => "dns_upstream_wrong_id",
        /// Upstream reply whose question differs from the forwarded one.
        DnsUpstreamMismatch => "dns_upstream_mismatch",
        /// Control side answered a resolve that is no longer pending.
        DnsLateAnswer => "dns_late_answer",
        /// DNS over TCP: a connection from a source other than the GN's VIP
        /// (refused: closed at once).
        DnsTcpNotGn => "dns_tcp_not_gn",
        /// DNS over TCP: a connection beyond `dns.tcp_max_connections`
        /// (refused: closed at once).
        DnsTcpTooMany => "dns_tcp_too_many",
        /// DNS over TCP: a connection that failed (reset, write error) with
        /// answers still pending; they are lost.
        DnsTcpReset => "dns_tcp_reset",
        /// DNS over TCP: an answer for a connection that is already closed.
        DnsTcpGone => "dns_tcp_gone",
        /// ICMP error suppressed by the token bucket.
        IcmpRateLimited => "icmp_rate_limited",
        /// ICMP error not allowed for this packet (RFC 1812: about an ICMP
        /// error, a non-first fragment, a non-unicast source or destination).
        IcmpNotAllowed => "icmp_not_allowed",
        /// Packet given to the ICMP builder is not a valid IPv4 frame.
        IcmpBadOriginal => "icmp_bad_original",
        /// Transmit queue to the GN full.
        TxQueueFull => "tx_queue_full",
        /// Caller's buffer smaller than the next frame.
        TxBufferTooSmall => "tx_buffer_too_small",
        /// Action queue to the control side full.
        ActionQueueFull => "action_queue_full",
    }
}

ntm_proto::reasons! {
    /// What the slow path did (not drops): for `ntma status`.
    pub enum GnStat {
        /// Proxy ARP replies sent.
        ArpReply => "arp_reply",
        /// GN MAC learned or changed.
        GnMacLearned => "gn_mac_learned",
        /// DHCPOFFER sent.
        DhcpOffer => "dhcp_offer",
        /// DHCPACK sent for a lease.
        DhcpAck => "dhcp_ack",
        /// DHCPACK sent for an INFORM (no lease).
        DhcpInformAck => "dhcp_inform_ack",
        /// DHCPNAK: requested address is not the VIP.
        DhcpNakWrongAddress => "dhcp_nak_wrong_address",
        /// DHCPNAK: server identifier is not ours.
        DhcpNakWrongServer => "dhcp_nak_wrong_server",
        /// DHCPNAK: no VIP assigned (or it changed).
        DhcpNakNoVip => "dhcp_nak_no_vip",
        /// DHCPRELEASE accepted.
        DhcpRelease => "dhcp_release",
        /// DHCPDECLINE accepted (the GN saw an address conflict).
        DhcpDecline => "dhcp_decline",
        /// NTM names handed to the control side for resolution.
        DnsResolve => "dns_resolve",
        /// Queries that joined an already pending resolution of the same name.
        DnsResolveJoined => "dns_resolve_joined",
        /// Queries for the name of one of our own GNs, answered with its VIP
        /// without asking the DC.
        DnsOwnGn => "dns_own_gn",
        /// A records answered.
        DnsAnswerA => "dns_answer_a",
        /// Empty NOERROR (other types, the suffix apex).
        DnsAnswerNoData => "dns_answer_nodata",
        /// NXDOMAIN answered.
        DnsNxDomain => "dns_nxdomain",
        /// SERVFAIL answered (DC time-out or pending expiry).
        DnsServFail => "dns_servfail",
        /// FORMERR answered.
        DnsFormErr => "dns_formerr",
        /// NOTIMP answered.
        DnsNotImp => "dns_notimp",
        /// Queries forwarded to the upstream resolver.
        DnsForward => "dns_forward",
        /// Of those, forwarded over TCP (they came over TCP).
        DnsForwardTcp => "dns_forward_tcp",
        /// UDP answers (ours or relayed) cut to the question with TC set:
        /// larger than the client takes (512, its EDNS size, the MTU - 28).
        DnsTruncated => "dns_truncated",
        /// DNS over TCP: connections accepted.
        DnsTcpAccepted => "dns_tcp_accepted",
        /// DNS over TCP: queries received (every length-prefixed message).
        DnsTcpQueries => "dns_tcp_queries",
        /// DNS over TCP: connections the client closed (after their answers).
        DnsTcpClosedByClient => "dns_tcp_closed_by_client",
        /// DNS over TCP: connections closed after `dns.tcp_idle_timeout_secs`
        /// without a query.
        DnsTcpClosedIdle => "dns_tcp_closed_idle",
        /// Upstream replies relayed to the GN.
        DnsRelay => "dns_relay",
        /// ICMP destination unreachable sent.
        IcmpUnreachable => "icmp_unreachable",
    }
}

/// Counters of the GN-facing slow path, indexable by [`GnDrop`] and [`GnStat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GnCounters {
    drops: [u64; GnDrop::COUNT],
    stats: [u64; GnStat::COUNT],
}

impl Default for GnCounters {
    fn default() -> Self {
        Self {
            drops: [0; GnDrop::COUNT],
            stats: [0; GnStat::COUNT],
        }
    }
}

impl GnCounters {
    pub(crate) fn drop(&mut self, why: GnDrop) {
        self.drops[why as usize] += 1;
    }

    pub(crate) fn stat(&mut self, what: GnStat) {
        self.stats[what as usize] += 1;
    }

    /// Every drop reason with its count, in index order.
    pub fn drops(&self) -> impl Iterator<Item = (GnDrop, u64)> + '_ {
        GnDrop::ALL.iter().map(|&d| (d, self.drops[d as usize]))
    }

    /// Every event with its count, in index order.
    pub fn stats(&self) -> impl Iterator<Item = (GnStat, u64)> + '_ {
        GnStat::ALL.iter().map(|&s| (s, self.stats[s as usize]))
    }

    /// Sum of all drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

impl Index<GnDrop> for GnCounters {
    type Output = u64;
    fn index(&self, why: GnDrop) -> &u64 {
        &self.drops[why as usize]
    }
}

impl IndexMut<GnDrop> for GnCounters {
    fn index_mut(&mut self, why: GnDrop) -> &mut u64 {
        &mut self.drops[why as usize]
    }
}

impl Index<GnStat> for GnCounters {
    type Output = u64;
    fn index(&self, what: GnStat) -> &u64 {
        &self.stats[what as usize]
    }
}

impl IndexMut<GnStat> for GnCounters {
    fn index_mut(&mut self, what: GnStat) -> &mut u64 {
        &mut self.stats[what as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn indices_match_all_order_and_names_are_unique() {
        for (i, d) in GnDrop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
        for (i, s) in GnStat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
        let names: HashSet<_> = GnDrop::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names.len(), GnDrop::COUNT);
        let names: HashSet<_> = GnStat::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names.len(), GnStat::COUNT);
    }

    #[test]
    fn counting_and_iteration() {
        let mut c = GnCounters::default();
        c.drop(GnDrop::DnsTooBig);
        c.drop(GnDrop::DnsTooBig);
        c.stat(GnStat::ArpReply);
        assert_eq!(c[GnDrop::DnsTooBig], 2);
        assert_eq!(c[GnDrop::FrameShort], 0);
        assert_eq!(c[GnStat::ArpReply], 1);
        assert_eq!(c.total_drops(), 2);
        let listed: Vec<_> = c.drops().filter(|(_, n)| *n > 0).collect();
        assert_eq!(listed, vec![(GnDrop::DnsTooBig, 2)]);
        assert_eq!(GnDrop::DnsTooBig.to_string(), "dns_too_big");
    }
}
