//! Drop reasons and activity counters.

use ntm_proto::counters::{Counters, Reason};
use ntm_proto::Error;

ntm_proto::reasons! {
    /// Why the coordinator dropped a datagram. Protocol-level reasons
    /// (malformed, bad tag, replay, unexpected type…) come from
    /// [`ntm_proto::Error`]; the rest are the DC's own.
    pub enum DropReason extends Proto(Error) {
        /// REG_REQ for an FQDN that has no `[[node]]` entry.
        UnknownFqdn => "unknown_fqdn": "REG_REQ for an FQDN without a [[node]] entry",
        /// A node message whose id no `[[node]]` entry has.
        UnknownNode => "unknown_node": "message from a node id that no [[node]] entry has",
        /// An RS message whose id no `[[relay]]` entry has.
        UnknownRelay => "unknown_relay": "message from an RS id that no [[relay]] entry has",
        /// A valid message from a node that is not registered (answered with ERROR).
        Unregistered => "unregistered": "message from a node that is not registered",
        /// ROUTE_ACK or RELAY_ACK for nothing outstanding (e.g. a second ack).
        StaleAck => "stale_ack": "acknowledgement for nothing outstanding",
        /// The change a datagram made could not be written to the store, so
        /// it was not answered (the sender retransmits).
        Store => "store": "change not written to the store, not answered",
    }
}

/// Drops per [`DropReason`].
pub type Drops = Counters<DropReason, { <DropReason as Reason>::COUNT }>;

/// What the coordinator did, for the statistics log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handled.
    pub datagrams: u64,
    /// Store commits for received datagrams: one per datagram with
    /// [`crate::Coordinator::handle`], one per burst with
    /// [`crate::Coordinator::receive`] and [`crate::Coordinator::commit`].
    pub commits: u64,
    /// Registrations granted to a node without an active one.
    pub registrations: u64,
    /// Re-registrations of active nodes.
    pub renewals: u64,
    /// REG_REQs refused (EXHAUSTED).
    pub refused: u64,
    /// KEEPALIVEs answered.
    pub keepalives: u64,
    /// DEREGs.
    pub deregistrations: u64,
    /// Registrations lapsed for missed keep-alives.
    pub lapsed: u64,
    /// Leases ended.
    pub released: u64,
    /// New DIR_REQs.
    pub dir_reqs: u64,
    /// Retransmitted DIR_REQs answered again.
    pub dir_req_repeats: u64,
    /// Directions answered NOT_FOUND.
    pub not_found: u64,
    /// Directions answered with another non-OK status.
    pub dir_refused: u64,
    /// Of those, DIR_REQs answered EXHAUSTED because the requesting node
    /// already had [`crate::coordinator::MAX_DIRECTIONS_PER_NODE`] directions.
    pub dir_node_limit: u64,
    /// Tunnels directed on a DIRECT path.
    pub direct: u64,
    /// Tunnels directed on a REVERSE path.
    pub reverse: u64,
    /// Tunnels directed through an RS.
    pub relayed: u64,
    /// ROUTE_DIRs sent (both ends, retransmissions included).
    pub route_dirs: u64,
    /// ROUTE_ACKs received.
    pub route_acks: u64,
    /// Responder copies never acknowledged after every try.
    pub route_dir_failures: u64,
    /// RELAY_DIRs sent (retransmissions included).
    pub relay_dirs: u64,
    /// RELAY_ACKs received.
    pub relay_acks: u64,
    /// Relays that never acknowledged after every try.
    pub relay_failures: u64,
    /// ERRORs sent to unregistered nodes.
    pub errors_sent: u64,
    /// ERRORs received.
    pub errors_received: u64,
    /// Nodes registered at another DC that moved here (a shared store).
    pub takeovers: u64,
    /// Handoffs posted to other DCs (ROUTE_DIRs for their nodes, ROUTE_ACKs
    /// of their tunnels).
    pub handoffs_sent: u64,
    /// Handoffs taken from this DC's inbox.
    pub handoffs_received: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_names_distinct() {
        let all: Vec<_> = DropReason::all().collect();
        assert_eq!(all.len(), DropReason::COUNT);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut names: Vec<_> = all.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn counts_and_displays() {
        let mut d = Drops::default();
        assert_eq!(d.to_string(), "none");
        d.count(DropReason::Proto(Error::BadTag));
        d.count(DropReason::UnknownFqdn);
        d.count(DropReason::UnknownFqdn);
        assert_eq!(d.get(DropReason::UnknownFqdn), 2);
        assert_eq!(d.total(), 3);
        assert_eq!(d.to_string(), "bad_tag=1 unknown_fqdn=2");
    }
}
