//! Drop reasons and activity counters.

use ntm_proto::counters::{Counters, Reason};
use ntm_proto::Error;

/// Why the coordinator dropped a datagram. Protocol-level reasons
/// (malformed, bad tag, replay, unexpected type…) come from
/// [`ntm_proto::Error`]; the rest are the DC's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    /// A reason of the wire protocol.
    #[error("{0}")]
    Proto(#[from] Error),
    /// REG_REQ for an FQDN that has no `[[node]]` entry.
    #[error("REG_REQ for an FQDN without a [[node]] entry")]
    UnknownFqdn,
    /// A node message whose id no `[[node]]` entry has.
    #[error("message from a node id that no [[node]] entry has")]
    UnknownNode,
    /// An RS message whose id no `[[relay]]` entry has.
    #[error("message from an RS id that no [[relay]] entry has")]
    UnknownRelay,
    /// A valid message from a node that is not registered (answered with ERROR).
    #[error("message from a node that is not registered")]
    Unregistered,
    /// ROUTE_ACK or RELAY_ACK for nothing outstanding (e.g. a second ack).
    #[error("acknowledgement for nothing outstanding")]
    StaleAck,
}

const OWN: usize = 5;

impl Reason for DropReason {
    const COUNT: usize = Error::COUNT + OWN;

    fn index(self) -> usize {
        match self {
            DropReason::Proto(e) => e.index(),
            DropReason::UnknownFqdn => Error::COUNT,
            DropReason::UnknownNode => Error::COUNT + 1,
            DropReason::UnknownRelay => Error::COUNT + 2,
            DropReason::Unregistered => Error::COUNT + 3,
            DropReason::StaleAck => Error::COUNT + 4,
        }
    }

    fn all() -> impl Iterator<Item = DropReason> {
        Error::ALL.into_iter().map(DropReason::Proto).chain([
            DropReason::UnknownFqdn,
            DropReason::UnknownNode,
            DropReason::UnknownRelay,
            DropReason::Unregistered,
            DropReason::StaleAck,
        ])
    }

    fn name(self) -> &'static str {
        match self {
            DropReason::Proto(e) => e.name(),
            DropReason::UnknownFqdn => "unknown_fqdn",
            DropReason::UnknownNode => "unknown_node",
            DropReason::UnknownRelay => "unknown_relay",
            DropReason::Unregistered => "unregistered",
            DropReason::StaleAck => "stale_ack",
        }
    }
}

/// Drops per [`DropReason`].
pub type Drops = Counters<DropReason, { <DropReason as Reason>::COUNT }>;

/// What the coordinator did, for the statistics log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handled.
    pub datagrams: u64,
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
