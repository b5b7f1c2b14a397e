//! ARP for IPv4 over Ethernet (RFC 826).

use std::net::Ipv4Addr;

use super::ethernet::{MacAddr, ETHERTYPE_IPV4};
use super::{addr, be16, Error};

/// Byte ranges of the fields of an Ethernet/IPv4 ARP packet.
pub mod field {
    use std::ops::Range;
    /// Hardware type.
    pub const HTYPE: Range<usize> = 0..2;
    /// Protocol type.
    pub const PTYPE: Range<usize> = 2..4;
    /// Hardware address length.
    pub const HLEN: usize = 4;
    /// Protocol address length.
    pub const PLEN: usize = 5;
    /// Operation.
    pub const OPER: Range<usize> = 6..8;
    /// Sender hardware address.
    pub const SHA: Range<usize> = 8..14;
    /// Sender protocol address.
    pub const SPA: Range<usize> = 14..18;
    /// Target hardware address.
    pub const THA: Range<usize> = 18..24;
    /// Target protocol address.
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;
/// Hardware type Ethernet.
const HTYPE_ETHERNET: u16 = 1;

/// An Ethernet/IPv4 ARP packet as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// [`Repr::REQUEST`] or [`Repr::REPLY`] (others parse, for the caller to refuse).
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl Repr {
    /// ARP request.
    pub const REQUEST: u16 = 1;
    /// ARP reply.
    pub const REPLY: u16 = 2;

    /// Parses the ARP payload of an Ethernet frame (padding after it ignored): only
    /// Ethernet hardware addresses and IPv4 protocol addresses.
    pub fn parse(b: &[u8]) -> Result<Repr, Error> {
        if b.len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        if be16(b, field::HTYPE.start) != HTYPE_ETHERNET
            || be16(b, field::PTYPE.start) != ETHERTYPE_IPV4
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(Error::Malformed);
        }
        let mac = |r: std::ops::Range<usize>| {
            let mut m = [0; 6];
            m.copy_from_slice(&b[r]);
            MacAddr(m)
        };
        Ok(Repr {
            op: be16(b, field::OPER.start),
            sender_mac: mac(field::SHA),
            sender_ip: addr(b, field::SPA.start),
            target_mac: mac(field::THA),
            target_ip: addr(b, field::TPA.start),
        })
    }

    /// Appends the packet to `out`.
    pub fn push(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; PACKET_LEN];
        b[field::HTYPE].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        b[field::PTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        b[field::OPER].copy_from_slice(&self.op.to_be_bytes());
        b[field::SHA].copy_from_slice(&self.sender_mac.0);
        b[field::SPA].copy_from_slice(&self.sender_ip.octets());
        b[field::THA].copy_from_slice(&self.target_mac.0);
        b[field::TPA].copy_from_slice(&self.target_ip.octets());
        out.extend_from_slice(&b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = Repr {
            op: Repr::REPLY,
            sender_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            sender_ip: Ipv4Addr::new(100, 64, 0, 1),
            target_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            target_ip: Ipv4Addr::new(100, 64, 0, 2),
        };
        let mut b = Vec::new();
        r.push(&mut b);
        assert_eq!(Repr::parse(&b), Ok(r));
        assert_eq!(Repr::parse(&b[..27]), Err(Error::Truncated));
        b[1] = 6;
        assert_eq!(Repr::parse(&b), Err(Error::Malformed));
    }
}
