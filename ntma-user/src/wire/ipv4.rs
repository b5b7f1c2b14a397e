//! IPv4 packets (RFC 791).

use std::net::Ipv4Addr;

pub use ntma_common::net::ipv4::{
    field, DF, MF, MIN_HEADER_LEN, OFFSET_MASK, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

use super::{addr, be16, checksum, put16, Error};

/// TTL of every IPv4 packet the adapter originates (outer packets, slow-path replies).
pub const DEFAULT_TTL: u8 = 64;

view! {
    /// A view of an IPv4 packet.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer holds a whole IPv4 packet: the fixed header, version 4, a
    /// header length of at least 20 within the total length, and the total length
    /// within the buffer (which may be longer: Ethernet padding).
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let (ihl, total) = (self.header_len(), usize::from(self.total_len()));
        if self.version() != 4 || ihl < MIN_HEADER_LEN || total < ihl {
            return Err(Error::Malformed);
        }
        if total > b.len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Version (4).
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Total length.
    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT.start)
    }

    /// The flags and fragment offset word.
    #[inline(always)]
    pub fn flags_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLG_OFF.start)
    }

    /// Don't Fragment.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags_offset() & DF != 0
    }

    /// More Fragments.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flags_offset() & MF != 0
    }

    /// Fragment offset in 8-byte units.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        self.flags_offset() & OFFSET_MASK
    }

    /// Part of a fragmented datagram (first or later).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.flags_offset() & (MF | OFFSET_MASK) != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol number.
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Source address.
    #[inline(always)]
    pub fn src_addr(&self) -> Ipv4Addr {
        addr(self.buffer.as_ref(), field::SRC.start)
    }

    /// Destination address.
    #[inline(always)]
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(self.buffer.as_ref(), field::DST.start)
    }

    /// Whether the header checksum verifies (on a checked packet).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(&self.buffer.as_ref()[..self.header_len()])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The header, options included (on a checked packet).
    #[inline]
    pub fn header(&self) -> &'a [u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload, cut to the total length (on a checked packet).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    /// Header and payload, cut to the total length (on a checked packet).
    #[inline]
    pub fn packet(&self) -> &'a [u8] {
        &self.buffer.as_ref()[..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 4 and a header length of `header_len` bytes.
    #[inline]
    pub fn set_version_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | (header_len / 4) as u8;
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::LENGTH.start, v);
    }

    /// Sets the flags and fragment offset word.
    #[inline]
    pub fn set_flags_offset(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::FLG_OFF.start, v);
    }

    /// Sets the header checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    /// Computes and writes the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::internet(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(c);
    }

    /// The payload, cut to the total length (on a checked packet).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (at, end) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[at..end]
    }
}

/// An IPv4 header without options, as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub protocol: u8,
    /// Payload length.
    pub payload_len: u16,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// Time to live.
    pub ttl: u8,
}

impl Repr {
    /// A header of `protocol` with `payload_len` bytes after it, as the adapter sends
    /// them: identification 0, DF set, TTL [`DEFAULT_TTL`]. `None` when the packet
    /// would exceed 65535 bytes.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) -> Option<Repr> {
        let payload_len = u16::try_from(payload_len)
            .ok()
            .filter(|l| usize::from(*l) + MIN_HEADER_LEN <= usize::from(u16::MAX))?;
        Some(Repr {
            src,
            dst,
            protocol,
            payload_len,
            ident: 0,
            dont_frag: true,
            ttl: DEFAULT_TTL,
        })
    }

    /// Writes the 20-byte header with its checksum into `h`.
    #[inline]
    pub fn emit(&self, h: &mut [u8; MIN_HEADER_LEN]) {
        h[field::VER_IHL] = 0x45;
        h[field::DSCP_ECN] = 0;
        h[field::LENGTH].copy_from_slice(&(self.payload_len + MIN_HEADER_LEN as u16).to_be_bytes());
        h[field::IDENT].copy_from_slice(&self.ident.to_be_bytes());
        let flags = if self.dont_frag { DF } else { 0 };
        h[field::FLG_OFF].copy_from_slice(&flags.to_be_bytes());
        h[field::TTL] = self.ttl;
        h[field::PROTOCOL] = self.protocol;
        h[field::CHECKSUM].copy_from_slice(&[0, 0]);
        h[field::SRC].copy_from_slice(&self.src.octets());
        h[field::DST].copy_from_slice(&self.dst.octets());
        let c = checksum::internet(h);
        h[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// Appends the header to `out`.
    pub fn push(&self, out: &mut Vec<u8>) {
        let mut h = [0u8; MIN_HEADER_LEN];
        self.emit(&mut h);
        out.extend_from_slice(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_view() {
        let r = Repr {
            ident: 7,
            ..Repr::new(
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                PROTO_UDP,
                4,
            )
            .unwrap()
        };
        let mut b = [0u8; 24 + 6];
        r.emit((&mut b[..20]).try_into().unwrap());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!((p.src_addr(), p.dst_addr()), (r.src, r.dst));
        assert_eq!((p.protocol(), p.ident(), p.ttl()), (PROTO_UDP, 7, 64));
        assert!(p.dont_frag() && !p.is_fragment());
        assert_eq!(p.payload().len(), 4, "cut to the total length");
        assert_eq!(p.packet().len(), 24);
        assert!(Repr::new(r.src, r.dst, 1, 65_516).is_none());
    }

    #[test]
    fn check_len_refuses_what_cannot_be_read() {
        let mut b = [0u8; 40];
        b[0] = 0x45;
        b[3] = 40;
        assert!(Packet::new_checked(&b[..]).is_ok());
        assert_eq!(Packet::new_checked(&b[..19]).unwrap_err(), Error::Truncated);
        assert_eq!(Packet::new_checked(&b[..39]).unwrap_err(), Error::Truncated);
        for (i, v) in [(0, 0x65), (0, 0x44), (0, 0x4f), (3, 19)] {
            let mut c = b;
            c[i] = v;
            assert!(Packet::new_checked(&c[..]).is_err(), "{i} {v}");
        }
    }
}
