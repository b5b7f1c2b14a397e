//! ICMPv4 messages (RFC 792): what the slow path reads of them and the destination
//! unreachable it sends.

use super::{be16, checksum, Error};

/// Byte ranges of the header's fields.
pub mod field {
    use std::ops::Range;
    /// Message type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum over the whole message.
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Next-hop MTU of "fragmentation needed" (RFC 1191); unused otherwise.
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
}

/// Header length (type, code, checksum and the 4 bytes that depend on the type).
pub const HEADER_LEN: usize = 8;
/// Type of destination unreachable.
pub const TYPE_DST_UNREACHABLE: u8 = 3;

/// Whether `t` is the type of an error message (RFC 1812 §4.3.2.7: never answered
/// with an error).
pub fn is_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

view! {
    /// A view of an ICMP message.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer holds the header.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Next-hop MTU of "fragmentation needed".
    pub fn next_hop_mtu(&self) -> u16 {
        be16(self.buffer.as_ref(), field::NEXT_HOP_MTU.start)
    }

    /// Whether the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.buffer.as_ref())
    }
}

/// The destination-unreachable codes the adapter sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unreachable {
    /// Code 0: network unreachable.
    Net,
    /// Code 1: host unreachable.
    #[default]
    Host,
    /// Code 4: fragmentation needed and DF set, with the next-hop MTU (RFC 1191).
    FragmentationNeeded(u16),
}

impl Unreachable {
    /// Appends the message quoting `quote` (the original's header and first 8 bytes of
    /// its payload, RFC 792) to `out`, checksum filled in.
    pub fn push(&self, out: &mut Vec<u8>, quote: &[u8]) {
        let (code, mtu) = match *self {
            Unreachable::Net => (0, 0),
            Unreachable::Host => (1, 0),
            Unreachable::FragmentationNeeded(mtu) => (4, mtu),
        };
        let mut h = [0u8; HEADER_LEN];
        h[field::TYPE] = TYPE_DST_UNREACHABLE;
        h[field::CODE] = code;
        h[field::NEXT_HOP_MTU].copy_from_slice(&mtu.to_be_bytes());
        let c = !checksum::fold(checksum::accumulate(&h) + checksum::accumulate(quote));
        h[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(quote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_round_trip() {
        let mut out = Vec::new();
        Unreachable::FragmentationNeeded(1340).push(&mut out, &[0x45, 0, 0, 20]);
        let p = Packet::new_checked(&out[..]).unwrap();
        assert_eq!((p.msg_type(), p.code(), p.next_hop_mtu()), (3, 4, 1340));
        assert!(p.verify_checksum());
        assert!(Packet::new_checked(&out[..7]).is_err());
        assert!(is_error(3) && !is_error(8));
    }
}
