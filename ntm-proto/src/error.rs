//! The one error type of the crate: every reason a datagram is dropped or an
//! operation refused. It is a fieldless `Copy` enum so that callers can keep a
//! counter array indexed by [`Error::index`] and count every drop by reason.

/// Why a datagram was dropped or an operation refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[repr(u8)]
pub enum Error {
    /// The datagram is shorter than header plus tag (32 bytes).
    #[error("datagram shorter than header plus tag")]
    Truncated,
    /// The header's version is not 1.
    #[error("unknown protocol version")]
    BadVersion,
    /// The header's message type is not one of §4.
    #[error("unknown message type")]
    UnknownType,
    /// The header's suite is not HMAC-SHA256-128.
    #[error("unsupported suite")]
    UnsupportedSuite,
    /// No tunnel with the header's id is known.
    #[error("unknown tunnel id")]
    UnknownTunnel,
    /// The tag does not verify.
    #[error("tag does not verify")]
    BadTag,
    /// The sequence number was seen before or is behind the replay window.
    #[error("replayed or too old sequence number")]
    Replay,
    /// The body of a DATA message is not an IPv4 packet.
    #[error("inner packet is not a well-formed IPv4 packet")]
    BadInner,
    /// The inner source is not the peer's VIP or the destination not ours.
    #[error("inner addresses do not match the tunnel's VIPs")]
    InnerAddr,
    /// A TLV's length runs past the end of the body.
    #[error("TLV length runs past the body")]
    TlvOverrun,
    /// A TLV type of 0x80 or more that this implementation does not know.
    #[error("unknown critical TLV")]
    UnknownCriticalTlv,
    /// A TLV type appears twice.
    #[error("duplicate TLV")]
    DuplicateTlv,
    /// A TLV that the message type requires is absent.
    #[error("required TLV missing")]
    MissingTlv,
    /// A fixed-size TLV has the wrong length.
    #[error("TLV has the wrong length")]
    BadTlvLength,
    /// A TLV value is out of range (unknown PATH or ROLE, TUNNEL_ID 0, prefix > 32, bad UTF-8).
    #[error("TLV value out of range")]
    BadTlvValue,
    /// An FQDN breaks the rules of §4 (lower-case `a-z 0-9 -` labels of 1-63, 1-253 bytes).
    #[error("invalid FQDN")]
    BadFqdn,
    /// The caller's buffer cannot hold the datagram.
    #[error("buffer too small for the datagram")]
    BufferTooSmall,
    /// A body longer than a TLV or UDP datagram can carry.
    #[error("message too long")]
    TooLong,
    /// A valid message of a type this party never receives.
    #[error("message type not expected by this party")]
    UnexpectedType,
    /// Signaling from an address other than the DC's.
    #[error("signaling from an unexpected source address")]
    UnexpectedSource,
    /// A DC message addressed to another node id.
    #[error("message for another node id")]
    WrongId,
    /// A valid message that the current state has no use for (e.g. an answer
    /// to a request that is not outstanding).
    #[error("message not expected in the current state")]
    Stale,
    /// No tunnel to the inner packet's destination.
    #[error("no tunnel to that destination")]
    NoTunnel,
    /// The endpoint is not registered with the DC.
    #[error("not registered with the DC")]
    NotRegistered,
}

impl Error {
    /// Number of variants: the length of a per-reason counter array.
    pub const COUNT: usize = Error::ALL.len();

    /// Every variant, in `index` order.
    pub const ALL: [Error; 24] = [
        Error::Truncated,
        Error::BadVersion,
        Error::UnknownType,
        Error::UnsupportedSuite,
        Error::UnknownTunnel,
        Error::BadTag,
        Error::Replay,
        Error::BadInner,
        Error::InnerAddr,
        Error::TlvOverrun,
        Error::UnknownCriticalTlv,
        Error::DuplicateTlv,
        Error::MissingTlv,
        Error::BadTlvLength,
        Error::BadTlvValue,
        Error::BadFqdn,
        Error::BufferTooSmall,
        Error::TooLong,
        Error::UnexpectedType,
        Error::UnexpectedSource,
        Error::WrongId,
        Error::Stale,
        Error::NoTunnel,
        Error::NotRegistered,
    ];

    /// Dense index in `0..Error::COUNT`, for counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Short stable name, for metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::BadVersion => "bad_version",
            Error::UnknownType => "unknown_type",
            Error::UnsupportedSuite => "unsupported_suite",
            Error::UnknownTunnel => "unknown_tunnel",
            Error::BadTag => "bad_tag",
            Error::Replay => "replay",
            Error::BadInner => "bad_inner",
            Error::InnerAddr => "inner_addr",
            Error::TlvOverrun => "tlv_overrun",
            Error::UnknownCriticalTlv => "unknown_critical_tlv",
            Error::DuplicateTlv => "duplicate_tlv",
            Error::MissingTlv => "missing_tlv",
            Error::BadTlvLength => "bad_tlv_length",
            Error::BadTlvValue => "bad_tlv_value",
            Error::BadFqdn => "bad_fqdn",
            Error::BufferTooSmall => "buffer_too_small",
            Error::TooLong => "too_long",
            Error::UnexpectedType => "unexpected_type",
            Error::UnexpectedSource => "unexpected_source",
            Error::WrongId => "wrong_id",
            Error::Stale => "stale",
            Error::NoTunnel => "no_tunnel",
            Error::NotRegistered => "not_registered",
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

impl crate::counters::Reason for Error {
    const COUNT: usize = Error::COUNT;

    fn index(self) -> usize {
        Error::index(self)
    }

    fn name(self) -> &'static str {
        Error::name(self)
    }

    fn all() -> impl Iterator<Item = Error> {
        Error::ALL.into_iter()
    }
}

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
