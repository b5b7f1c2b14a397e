//! The one error type of the crate: every reason a datagram is dropped or an
//! operation refused. It is a fieldless `Copy` enum so that callers can keep a
//! counter array indexed by [`Error::index`] and count every drop by reason.

crate::reasons! {
    /// Why a datagram was dropped or an operation refused.
    pub enum Error {
        /// The datagram is shorter than header plus tag (32 bytes).
        Truncated => "truncated": "datagram shorter than header plus tag",
        /// The header's version is not 2 (docs/protocol.md §2).
        BadVersion => "bad_version": "unknown protocol version",
        /// The header's message type is not one of §4.
        UnknownType => "unknown_type": "unknown message type",
        /// The header's suite is not one this party accepts (1 or 2, and the tunnel's own for DATA).
        UnsupportedSuite => "unsupported_suite": "unsupported suite",
        /// No tunnel with the header's id is known.
        UnknownTunnel => "unknown_tunnel": "unknown tunnel id",
        /// The tag does not verify.
        BadTag => "bad_tag": "tag does not verify",
        /// The sequence number was seen before or is behind the replay window.
        Replay => "replay": "replayed or too old sequence number",
        /// The body of a DATA message is not an IPv4 packet.
        BadInner => "bad_inner": "inner packet is not a well-formed IPv4 packet",
        /// The inner source is not the peer's VIP or the destination not ours.
        InnerAddr => "inner_addr": "inner addresses do not match the tunnel's VIPs",
        /// A TLV's length runs past the end of the body.
        TlvOverrun => "tlv_overrun": "TLV length runs past the body",
        /// A TLV type of 0x80 or more that this implementation does not know.
        UnknownCriticalTlv => "unknown_critical_tlv": "unknown critical TLV",
        /// A TLV type appears twice.
        DuplicateTlv => "duplicate_tlv": "duplicate TLV",
        /// A TLV that the message type requires is absent.
        MissingTlv => "missing_tlv": "required TLV missing",
        /// A fixed-size TLV has the wrong length.
        BadTlvLength => "bad_tlv_length": "TLV has the wrong length",
        /// A TLV value is out of range (unknown PATH or ROLE, TUNNEL_ID 0, prefix > 32, bad UTF-8).
        BadTlvValue => "bad_tlv_value": "TLV value out of range",
        /// An FQDN breaks the rules of §4 (lower-case `a-z 0-9 -` labels of 1-63, 1-253 bytes).
        BadFqdn => "bad_fqdn": "invalid FQDN",
        /// The caller's buffer cannot hold the datagram.
        BufferTooSmall => "buffer_too_small": "buffer too small for the datagram",
        /// A body longer than a TLV or UDP datagram can carry.
        TooLong => "too_long": "message too long",
        /// A valid message of a type this party never receives.
        UnexpectedType => "unexpected_type": "message type not expected by this party",
        /// Signaling from an address other than the DC's.
        UnexpectedSource => "unexpected_source": "signaling from an unexpected source address",
        /// A DC message addressed to another node id.
        WrongId => "wrong_id": "message for another node id",
        /// A valid message that the current state has no use for (e.g. an answer
        /// to a request that is not outstanding).
        Stale => "stale": "message not expected in the current state",
        /// No tunnel to the inner packet's destination.
        NoTunnel => "no_tunnel": "no tunnel to that destination",
        /// The endpoint is not registered with the DC.
        NotRegistered => "not_registered": "not registered with the DC",
    }
}

/// Result with the crate's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

/// Per-reason drop counters, indexed by [`Error::index`].
pub type DropCounters = crate::counters::Counters<Error, { Error::COUNT }>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_all_order() {
        for (i, e) in Error::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "{e:?}");
        }
        let mut names: Vec<_> = Error::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Error::COUNT);
    }

    #[test]
    fn counters_count_by_reason() {
        let mut c = DropCounters::default();
        c.count(Error::Replay);
        c.count(Error::Replay);
        c.count(Error::BadTag);
        assert_eq!(c.get(Error::Replay), 2);
        assert_eq!(c.get(Error::BadTag), 1);
        assert_eq!(c.total(), 3);
        assert_eq!(c.iter().count(), 2);
    }
}
