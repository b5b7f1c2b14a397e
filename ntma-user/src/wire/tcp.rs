//! TCP, as far as the fast path touches it: the MSS option of a SYN (§6).

use super::ipv4::{self, PROTO_TCP};
use super::{be16, checksum, put16};

/// Byte ranges of the header's fields the fast path reads.
pub mod field {
    use std::ops::Range;
    /// Data offset (high nibble), in 32-bit words.
    pub const DATA_OFF: usize = 12;
    /// Flags.
    pub const FLAGS: usize = 13;
    /// Checksum.
    pub const CHECKSUM: Range<usize> = 16..18;
}

/// Header length without options.
pub const HEADER_LEN: usize = 20;
/// IPv4 and TCP headers without options: the inner MTU minus this is the clamped MSS.
pub const IPV4_TCP_LEN: u16 = (ipv4::MIN_HEADER_LEN + HEADER_LEN) as u16;
/// SYN flag.
const SYN: u8 = 0x02;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// Clamps the MSS option of a TCP segment with SYN set (a SYN or a SYN-ACK) in the
/// IPv4 packet `ip` to `max` (§6: the inner MTU minus 40), and updates the TCP
/// checksum incrementally (RFC 1624). True when it changed the packet.
/// Everything else is left alone: not TCP, a fragment, no SYN, no MSS option, an MSS
/// of at most `max`, or options that do not parse.
pub fn clamp_mss(ip: &mut [u8], max: u16) -> bool {
    let Some(tcp) = syn_segment(ip) else {
        return false;
    };
    let tcp = &mut ip[tcp];
    let options_end = usize::from(tcp[field::DATA_OFF] >> 4) * 4;
    if options_end < HEADER_LEN || options_end > tcp.len() {
        return false;
    }
    match find_mss(&tcp[..options_end]) {
        Some(at) => set_mss(tcp, at, max),
        None => false,
    }
}

/// Whether the IPv4 packet `ip` is an unfragmented TCP segment with SYN set: the
/// only kind [`clamp_mss`] may change (the slow path copies just these).
pub fn is_syn(ip: &[u8]) -> bool {
    syn_segment(ip).is_some()
}

/// Where the TCP segment of `ip` lies, if `ip` is an unfragmented IPv4 TCP
/// segment with SYN set.
fn syn_segment(ip: &[u8]) -> Option<std::ops::Range<usize>> {
    let p = ipv4::Packet::new_unchecked(ip);
    if ip.len() < ipv4::MIN_HEADER_LEN || p.version() != 4 {
        return None;
    }
    let ihl = p.header_len();
    let total = usize::from(p.total_len()).min(ip.len());
    if p.protocol() != PROTO_TCP
        || p.is_fragment()
        || ihl < ipv4::MIN_HEADER_LEN
        || total < ihl + HEADER_LEN
    {
        return None;
    }
    (ip[ihl + field::FLAGS] & SYN != 0).then_some(ihl..total)
}

/// The offset of the value of a well-formed MSS option in `tcp` (header and options).
fn find_mss(tcp: &[u8]) -> Option<usize> {
    let mut at = HEADER_LEN;
    while at < tcp.len() {
        match tcp[at] {
            OPT_END => return None,
            OPT_NOP => at += 1,
            kind => {
                let len = usize::from(*tcp.get(at + 1)?);
                if len < 2 || at + len > tcp.len() {
                    return None;
                }
                if kind == OPT_MSS && len == 4 {
                    return Some(at + 2);
                }
                at += len;
            }
        }
    }
    None
}

/// Lowers the MSS at `tcp[at..at + 2]` to `max` if above, updating the checksum.
fn set_mss(tcp: &mut [u8], at: usize, max: u16) -> bool {
    let mss = be16(tcp, at);
    if mss <= max {
        return false;
    }
    put16(tcp, at, max);
    // A value at an odd offset adds to the sum with its bytes swapped.
    let (old, new) = if at.is_multiple_of(2) {
        (mss, max)
    } else {
        (mss.swap_bytes(), max.swap_bytes())
    };
    let sum = checksum::update(be16(tcp, field::CHECKSUM.start), old, new);
    put16(tcp, field::CHECKSUM.start, sum);
    true
}
