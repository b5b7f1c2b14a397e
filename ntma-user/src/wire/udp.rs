//! UDP datagrams (RFC 768).

use std::net::Ipv4Addr;

pub use ntma_common::net::udp::{field, HEADER_LEN};

use super::ipv4::PROTO_UDP;
use super::{be16, checksum, put16, Error};

view! {
    /// A view of a UDP datagram (the payload of an IPv4 packet).
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer holds the header ([`Packet::check_header_len`]) and the length
    /// field is at least the header and at most the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        self.check_header_len()?;
        let len = usize::from(self.length());
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > self.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Whether the buffer holds the header, so that the ports can be read.
    #[inline(always)]
    pub fn check_header_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Source port.
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    /// Destination port.
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Length of header and payload.
    #[inline(always)]
    pub fn length(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Checksum (0: none).
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Whether the checksum verifies with the pseudo-header of `src` and `dst` (on a
    /// checked datagram); a zero checksum means "none" (RFC 768) and verifies.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let dg = &self.buffer.as_ref()[..usize::from(self.length())];
        let sum =
            checksum::pseudo_header(src, dst, PROTO_UDP, self.length()) + checksum::accumulate(dg);
        checksum::fold(sum) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload, cut to the length field (on a checked datagram).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.length())]
    }
}

/// The ports of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl Repr {
    /// Writes the header of a datagram with `payload_len` bytes of payload and the
    /// given checksum (0: none, allowed over IPv4).
    #[inline]
    pub fn emit(&self, h: &mut [u8; HEADER_LEN], payload_len: u16, checksum: u16) {
        h[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        h[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        h[field::LENGTH].copy_from_slice(&(payload_len + HEADER_LEN as u16).to_be_bytes());
        h[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    /// Appends the header and `payload` to `out`, with the checksum over the
    /// pseudo-header of `src` and `dst`. The caller keeps the length within a u16.
    pub fn push(&self, out: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) {
        let len = (HEADER_LEN + payload.len()) as u16;
        let mut h = [0u8; HEADER_LEN];
        self.emit(&mut h, len - HEADER_LEN as u16, 0);
        let sum = checksum::pseudo_header(src, dst, PROTO_UDP, len)
            + checksum::accumulate(&h)
            + checksum::accumulate(payload);
        // A computed 0 is sent as all ones: 0 means "no checksum".
        let c = match !checksum::fold(sum) {
            0 => 0xffff,
            c => c,
        };
        put16(&mut h, field::CHECKSUM.start, c);
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_then_verify() {
        let (a, b) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
        let mut out = Vec::new();
        Repr {
            src_port: 53,
            dst_port: 40000,
        }
        .push(&mut out, a, b, b"hello");
        let p = Packet::new_checked(&out[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.length()), (53, 40000, 13));
        assert_eq!(p.payload(), b"hello");
        assert!(p.verify_checksum(a, b));
        assert!(!p.verify_checksum(a, Ipv4Addr::new(100, 64, 0, 3)));
        let mut long = out.clone();
        long[5] = 14;
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            Error::Truncated
        );
        long[5] = 7;
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            Error::Malformed
        );
        assert_eq!(
            Packet::new_checked(&out[..7]).unwrap_err(),
            Error::Truncated
        );
    }
}
