//! Counters of the control side (not of the GN services, whose counters
//! live in [`crate::gn::GnCounters`], nor of the protocol endpoint, which
//! counts in [`ntm_proto::DropCounters`]): drops of its own making and
//! what it did.

ntm_proto::reasons! {
    /// Why the control side dropped a packet, frame or datagram.
    pub enum CtlDrop {
        /// The hold queue was full (per peer or in all).
        HoldFull => "hold_full",
        /// A held packet waited longer than `hold.timeout_ms`.
        HoldExpired => "hold_expired",
        /// A held packet whose tunnel could not be set up (answered with ICMP host unreachable).
        SetupFailed => "setup_failed",
        /// A packet to a VIP that no DNS answer or tunnel ever named (ICMP host unreachable).
        NoRoute => "no_route",
        /// A packet to a VIP while the adapter is not registered.
        NotRegistered => "not_registered_tx",
        /// A packet to a VIP whose source is not the GN's VIP (spoofed, or a stale address).
        BadSource => "slow_bad_source",
        /// A packet to a VIP longer than the inner MTU with DF set (or options
        /// that do not parse): answered with ICMP fragmentation needed (§5 "MTU").
        TooBig => "slow_too_big",
        /// A packet to a destination outside the VIP prefix (ICMP network unreachable).
        NonVip => "non_vip",
        /// DATA or TUN_KEEPALIVE on the kernel socket (a reassembled fragment, or a
        /// queue without AF_XDP socket): only the fast path accepts tunnel data, so
        /// that one replay window sees every datagram of a tunnel.
        DataViaKernel => "data_via_kernel",
        /// A datagram from an IPv6 source on the IPv4 tunnel socket.
        NotIpv4Source => "not_ipv4_source",
        /// A packet the control side had to send that is not a well-formed IPv4
        /// frame, or a slow-queue frame cut short.
        SlowFrameMalformed => "slow_frame_malformed",
        /// A frame from the fast path's slow queue off the uplink that is not
        /// signaling to the tunnel port.
        SlowFrameOther => "slow_frame_other",
        /// The tunnel socket refused a datagram.
        WanSendFailed => "wan_send_failed",
        /// The GN-facing raw socket refused a frame.
        LanSendFailed => "lan_send_failed",
        /// No socket for a query to the upstream resolver could be opened, or it
        /// refused the query.
        UpstreamSendFailed => "upstream_send_failed",
        /// An answer for the GN's TCP connection found its write queue full
        /// (the client does not read) or the connection gone: it is closed.
        DnsTcpSendFailed => "dns_tcp_send_failed",
    }
}

ntm_proto::reasons! {
    /// What the control side did.
    pub enum CtlStat {
        /// Successful registrations (renewals included).
        Registrations => "registrations",
        /// Direction requests started (DNS or packets).
        Connects => "connects",
        /// Tunnels the DC directed, installed in the fast path for receiving.
        TunnelsAdded => "tunnels_added",
        /// Tunnels that came up (the fast path sends on them).
        TunnelsUp => "tunnels_up",
        /// Tunnels that went down.
        TunnelsDown => "tunnels_down",
        /// Peers that moved (roaming).
        EndpointChanges => "endpoint_changes",
        /// Frames read from the GN-facing raw socket.
        LanFrames => "lan_frames",
        /// Frames taken from the fast path's slow queue.
        SlowFrames => "slow_frames",
        /// Datagrams read from the tunnel socket.
        WanDatagrams => "wan_datagrams",
        /// Packets put in the hold queue.
        Held => "held",
        /// Held packets sent once their tunnel came up.
        Released => "released",
        /// DATA sent by the control side (released or raced packets).
        DataTx => "data_tx_slow",
        /// TCP SYNs sent from the slow path whose MSS was clamped (§6).
        MssClamped => "mss_clamped_slow",
        /// GN packets longer than the inner MTU without DF, split into fragments.
        Fragmented => "fragmented",
        /// The fragments they were split into (each its own DATA, or held).
        FragmentsTx => "fragments",
    }
}

/// The control side's counters.
#[derive(Debug, Clone)]
pub struct CtlCounters {
    drops: [u64; CtlDrop::COUNT],
    stats: [u64; CtlStat::COUNT],
}

impl Default for CtlCounters {
    fn default() -> Self {
        CtlCounters {
            drops: [0; CtlDrop::COUNT],
            stats: [0; CtlStat::COUNT],
        }
    }
}

impl CtlCounters {
    /// Count `n` drops.
    pub fn drop_n(&mut self, why: CtlDrop, n: usize) {
        self.drops[why as usize] += n as u64;
    }

    /// Count one drop.
    pub fn drop(&mut self, why: CtlDrop) {
        self.drop_n(why, 1);
    }

    /// Count one event.
    pub fn stat(&mut self, what: CtlStat) {
        self.stats[what as usize] += 1;
    }

    /// The count of a drop reason.
    pub fn get_drop(&self, why: CtlDrop) -> u64 {
        self.drops[why as usize]
    }

    /// The count of an event.
    pub fn get_stat(&self, what: CtlStat) -> u64 {
        self.stats[what as usize]
    }

    /// Every drop reason with its count.
    pub fn drops(&self) -> impl Iterator<Item = (CtlDrop, u64)> + '_ {
        CtlDrop::ALL.iter().map(|&d| (d, self.drops[d as usize]))
    }

    /// Every event with its count.
    pub fn stats(&self) -> impl Iterator<Item = (CtlStat, u64)> + '_ {
        CtlStat::ALL.iter().map(|&s| (s, self.stats[s as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indices_dense() {
        let mut names: Vec<_> = CtlDrop::ALL.iter().map(|d| d.name()).collect();
        names.extend(CtlStat::ALL.iter().map(|s| s.name()));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        for (i, d) in CtlDrop::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
        let mut c = CtlCounters::default();
        c.drop_n(CtlDrop::HoldFull, 3);
        c.stat(CtlStat::Held);
        assert_eq!(c.get_drop(CtlDrop::HoldFull), 3);
        assert_eq!(c.get_stat(CtlStat::Held), 1);
    }
}
