//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624): every
//! checksum of the wire layer is computed here.

use std::net::Ipv4Addr;

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The 32-bit accumulator of the 16-bit big-endian words of `bytes` (an odd last byte
/// is padded with zero).
#[inline(always)]
pub fn accumulate(bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    let mut sum: u32 = words
        .by_ref()
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The one's-complement sum of `bytes`, folded (not complemented). A header whose
/// checksum field is right sums to `0xffff`.
#[inline(always)]
pub fn data(bytes: &[u8]) -> u16 {
    fold(accumulate(bytes))
}

/// The checksum to write over `bytes` (whose checksum field is zero): the complement
/// of their sum.
#[inline(always)]
pub fn internet(bytes: &[u8]) -> u16 {
    !data(bytes)
}

/// Whether the checksum embedded in `bytes` verifies.
#[inline(always)]
pub fn verify(bytes: &[u8]) -> bool {
    data(bytes) == 0xffff
}

/// The accumulator of the IPv4 pseudo-header of UDP and TCP (RFC 768, RFC 793).
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u32 {
    accumulate(&src.octets()) + accumulate(&dst.octets()) + u32::from(protocol) + u32::from(length)
}

/// RFC 1624 eqn. 3: the checksum `hc` after one 16-bit word changed from `old` to
/// `new`: HC' = ~(~HC + ~m + m').
#[inline]
pub fn update(hc: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!hc) + u32::from(!old) + u32::from(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_and_odd_lengths() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&b), 0xddf2);
        assert_eq!(internet(&b), !0xddf2);
        assert_eq!(data(&[0x12]), 0x1200);
        assert_eq!(data(&[]), 0);
    }

    #[test]
    fn update_matches_a_full_recompute() {
        let mut b = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 172, 16, 10, 99, 172, 16, 10, 12,
        ];
        let c = internet(&b);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verify(&b));
        let old = u16::from_be_bytes([b[2], b[3]]);
        b[2..4].copy_from_slice(&1400u16.to_be_bytes());
        let c2 = update(c, old, 1400);
        b[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c2, internet(&b));
    }
}
