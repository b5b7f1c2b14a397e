//! The 16-byte common header, body and 16-byte tag (§2).

use super::{MessageType, Suite};
use crate::{Error, Result};

// Byte offsets of the header fields: one definition, shared with the XDP
// program that classifies on them (`ntma_common::ntm`).
use ntma_common::ntm::field;

/// Length of the common header.
pub const HEADER_LEN: usize = ntma_common::ntm::HEADER_LEN;
/// Length of the tag at the end of every datagram.
pub const TAG_LEN: usize = ntma_common::ntm::TAG_LEN;
/// Header plus tag: the shortest valid datagram, and the per-datagram overhead.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM_LEN: usize = 65_507;
/// The largest body that fits in one datagram.
pub const MAX_BODY_LEN: usize = MAX_DATAGRAM_LEN - OVERHEAD;
/// The protocol version this crate speaks.
pub const VERSION: u8 = ntma_common::ntm::VERSION;

/// Flag bit 0: the sender wants an answer (signaling only).
const FLAG_RESPONSE_REQUIRED: u8 = 0x01;

/// A read/write view of one NTMobile datagram: header, body, tag.
///
/// Accessors do not panic once [`Packet::check_len`] succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap a buffer and check that it can hold header and tag.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Check that the buffer holds at least header plus tag and at most one
    /// UDP datagram. After this succeeds no accessor panics.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < OVERHEAD {
            Err(Error::Truncated)
        } else if len > MAX_DATAGRAM_LEN {
            Err(Error::TooLong)
        } else {
            Ok(())
        }
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Total length: header, body and tag.
    pub fn total_len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// Length of the body.
    pub fn body_len(&self) -> usize {
        self.total_len() - OVERHEAD
    }

    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// The message type field.
    pub fn msg_type(&self) -> MessageType {
        MessageType::from(self.buffer.as_ref()[field::TYPE])
    }

    /// The raw flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Flag bit 0, RESPONSE-REQUIRED.
    pub fn response_required(&self) -> bool {
        self.flags() & FLAG_RESPONSE_REQUIRED != 0
    }

    /// The suite field.
    pub fn suite(&self) -> Suite {
        Suite::from(self.buffer.as_ref()[field::SUITE])
    }

    /// The id field: tunnel id, node id or RS id depending on the type.
    pub fn id(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::ID];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        let b = &self.buffer.as_ref()[field::SEQ];
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    }

    /// The bytes the tag covers: header and body.
    pub fn authenticated(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..b.len() - TAG_LEN]
    }

    /// The tag.
    pub fn tag(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[b.len() - TAG_LEN..]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The body, borrowed for as long as the underlying buffer.
    pub fn body(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        &b[HEADER_LEN..b.len() - TAG_LEN]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the version field.
    pub fn set_version(&mut self, value: u8) {
        self.buffer.as_mut()[field::VERSION] = value;
    }

    /// Set the message type field.
    pub fn set_msg_type(&mut self, value: MessageType) {
        self.buffer.as_mut()[field::TYPE] = value.into();
    }

    /// Set the raw flags byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Set or clear RESPONSE-REQUIRED, clearing every other flag bit.
    pub fn set_response_required(&mut self, value: bool) {
        self.set_flags(if value { FLAG_RESPONSE_REQUIRED } else { 0 });
    }

    /// Set the suite field.
    pub fn set_suite(&mut self, value: Suite) {
        self.buffer.as_mut()[field::SUITE] = value.into();
    }

    /// Set the id field.
    pub fn set_id(&mut self, value: u32) {
        self.buffer.as_mut()[field::ID].copy_from_slice(&value.to_be_bytes());
    }

    /// Set the sequence number.
    pub fn set_seq(&mut self, value: u64) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&value.to_be_bytes());
    }

    /// The body, mutable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        let b = self.buffer.as_mut();
        let end = b.len() - TAG_LEN;
        &mut b[HEADER_LEN..end]
    }

    /// The tag, mutable.
    pub fn tag_mut(&mut self) -> &mut [u8] {
        let b = self.buffer.as_mut();
        let start = b.len() - TAG_LEN;
        &mut b[start..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tun_keepalive_gcm vector: suite 2, empty body.
    const KEEPALIVE: [u8; 32] = [
        0x02, 0x02, 0x00, 0x02, 0x00, 0x00, 0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x6f, 0xa2,
        0x58, 0xcb, 0xf8, 0x88, 0xf2, 0xc8, 0x3a, 0xe1, 0x8b, 0xf9, 0x29, 0x9f, 0x40, 0xee,
    ];

    #[test]
    fn test_deconstruct() {
        let p = Packet::new_checked(&KEEPALIVE[..]).unwrap();
        assert_eq!(p.version(), 2);
        assert_eq!(p.msg_type(), MessageType::TunKeepalive);
        assert_eq!(p.flags(), 0);
        assert!(!p.response_required());
        assert_eq!(p.suite(), Suite::Aes256Gcm);
        assert_eq!(p.id(), 257);
        assert_eq!(p.seq(), 2);
        assert_eq!(p.body(), &[] as &[u8]);
        assert_eq!(p.tag(), &KEEPALIVE[16..]);
        assert_eq!(p.authenticated(), &KEEPALIVE[..16]);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 32];
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_version(2);
        p.set_msg_type(MessageType::TunKeepalive);
        p.set_response_required(false);
        p.set_suite(Suite::Aes256Gcm);
        p.set_id(257);
        p.set_seq(2);
        p.tag_mut().copy_from_slice(&KEEPALIVE[16..]);
        assert_eq!(bytes, KEEPALIVE);
    }

    #[test]
    fn check_len_bounds() {
        assert_eq!(
            Packet::new_checked(&[0u8; 31][..]).unwrap_err(),
            Error::Truncated
        );
        assert!(Packet::new_checked(&[0u8; 32][..]).is_ok());
        let big = vec![0u8; MAX_DATAGRAM_LEN + 1];
        assert_eq!(Packet::new_checked(&big[..]).unwrap_err(), Error::TooLong);
    }
}
