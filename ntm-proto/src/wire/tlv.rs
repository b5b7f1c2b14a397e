//! TLVs: `type u8, length u16, value` (§4).

use crate::{Error, Result};

mod field {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const LENGTH: Range<usize> = 1..3;
    pub const VALUE: usize = LENGTH.end;
}

/// Length of a TLV's type and length fields.
pub const TLV_HEADER_LEN: usize = field::VALUE;

/// A view of one TLV at the start of a buffer (the buffer may continue past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tlv<T> {
    /// Wrap a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Tlv<T> {
        Tlv { buffer }
    }

    /// Wrap a buffer and check that it holds the whole TLV.
    pub fn new_checked(buffer: T) -> Result<Tlv<T>> {
        let tlv = Self::new_unchecked(buffer);
        tlv.check_len()?;
        Ok(tlv)
    }

    /// Check that type, length and the whole value are inside the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < TLV_HEADER_LEN || len < TLV_HEADER_LEN + usize::from(self.length()) {
            Err(Error::TlvOverrun)
        } else {
            Ok(())
        }
    }

    /// The type code.
    pub fn tlv_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The length field.
    pub fn length(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Type, length and value.
    pub fn total_len(&self) -> usize {
        TLV_HEADER_LEN + usize::from(self.length())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Tlv<&'a T> {
    /// The value.
    pub fn value(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        &b[field::VALUE..field::VALUE + usize::from(self.length())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tlv<T> {
    /// Set the type code.
    pub fn set_tlv_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Set the length field.
    pub fn set_length(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes());
    }

    /// The value, as long as the length field says.
    pub fn value_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.length());
        &mut self.buffer.as_mut()[field::VALUE..field::VALUE + len]
    }
}

/// One TLV borrowed from a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlvRef<'a> {
    /// Type code.
    pub tlv_type: u8,
    /// Value.
    pub value: &'a [u8],
}

/// Iterator over the TLVs of a body. Yields `Err(Error::TlvOverrun)` once and
/// then stops if a TLV runs past the end. It checks only framing; the rules
/// about types and duplicates are [`super::Repr::parse`]'s.
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> TlvIter<'a> {
    /// Iterate over `body`.
    pub fn new(body: &'a [u8]) -> Self {
        TlvIter { rest: body }
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<TlvRef<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Tlv::new_checked(self.rest) {
            Ok(tlv) => {
                let item = TlvRef {
                    tlv_type: tlv.tlv_type(),
                    value: tlv.value(),
                };
                self.rest = &self.rest[tlv.total_len()..];
                Some(Ok(item))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Writes TLVs one after another into a buffer that the caller sized.
pub(crate) struct TlvWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> TlvWriter<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        TlvWriter { buf, pos: 0 }
    }

    /// Write one TLV. Panics if the buffer is too short or the value longer
    /// than a u16: callers size the buffer with the same computation.
    pub(crate) fn put(&mut self, tlv_type: u8, value: &[u8]) {
        let len = u16::try_from(value.len()).expect("TLV value longer than 65535 bytes");
        let mut tlv = Tlv::new_unchecked(&mut self.buf[self.pos..]);
        tlv.set_tlv_type(tlv_type);
        tlv.set_length(len);
        tlv.value_mut().copy_from_slice(value);
        self.pos += TLV_HEADER_LEN + value.len();
    }

    pub(crate) fn written(&self) -> usize {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_and_stops_on_overrun() {
        let body = [0x06, 0x00, 0x01, 0xaa, 0x01, 0x00, 0x05, b'a', b'b'];
        let mut it = TlvIter::new(&body);
        assert_eq!(
            it.next(),
            Some(Ok(TlvRef {
                tlv_type: 6,
                value: &[0xaa]
            }))
        );
        assert_eq!(it.next(), Some(Err(Error::TlvOverrun)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn short_header_is_overrun() {
        let mut it = TlvIter::new(&[0x06, 0x00]);
        assert_eq!(it.next(), Some(Err(Error::TlvOverrun)));
        assert_eq!(it.next(), None);
        assert_eq!(TlvIter::new(&[]).next(), None);
    }

    #[test]
    fn writer_round_trips() {
        let mut buf = [0u8; 9];
        let mut w = TlvWriter::new(&mut buf);
        w.put(5, &[0]);
        w.put(0x55, &[1, 2]);
        assert_eq!(w.written(), 9);
        let items: Vec<_> = TlvIter::new(&buf).collect::<Result<_>>().unwrap();
        assert_eq!(
            items,
            vec![
                TlvRef {
                    tlv_type: 5,
                    value: &[0]
                },
                TlvRef {
                    tlv_type: 0x55,
                    value: &[1, 2]
                }
            ]
        );
    }
}
