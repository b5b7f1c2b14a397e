//! Ethernet, ARP, IPv4, UDP, ICMP and TCP on byte slices, smoltcp style: one wire layer
//! for the fast path ([`crate::fastpath::encap`]), the raw path and the GN slow path.
//!
//! Each protocol has a typed view `Packet<T: AsRef<[u8]>>` (`Frame` for Ethernet):
//! `new_unchecked` wraps any buffer, `check_len` says whether every accessor is in
//! bounds, `new_checked` does both; getters read fields at the byte ranges of its
//! `field` module, setters write them when `T: AsMut<[u8]>`. A `Repr` (the header as
//! plain values) parses what the slow path needs and emits headers with their
//! checksums. Every checksum, full (RFC 1071) or updated (RFC 1624), is computed in
//! [`checksum`]. Parsers take untrusted bytes and never panic: a view that passed
//! `check_len` only reads inside its buffer.
//!
//! The Ethernet, IPv4 and UDP layouts are `ntma_common::net`'s, which the XDP
//! programs read too.

/// Declares a typed view `$name<T>` over a buffer, with `new_unchecked`,
/// `new_checked` (through the type's own `check_len`) and `into_inner`.
macro_rules! view {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<T> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wraps `buffer` without checking it.
            #[inline(always)]
            pub const fn new_unchecked(buffer: T) -> $name<T> {
                $name { buffer }
            }

            /// Wraps `buffer` after `check_len`.
            #[inline]
            pub fn new_checked(buffer: T) -> Result<$name<T>, $crate::wire::Error> {
                let v = Self::new_unchecked(buffer);
                v.check_len()?;
                Ok(v)
            }

            /// The buffer.
            #[inline]
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod outer;
pub mod tcp;
pub mod udp;

pub use ethernet::MacAddr;

/// Why a view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the header, or than the length a header field claims.
    #[error("truncated")]
    Truncated,
    /// A field that makes the packet unusable (version, header length, types).
    #[error("malformed")]
    Malformed,
}

/// The big-endian u16 at `at`.
#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Writes `v` big-endian at `at`.
#[inline(always)]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The IPv4 address at `at`.
#[inline(always)]
pub(crate) fn addr(b: &[u8], at: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}
