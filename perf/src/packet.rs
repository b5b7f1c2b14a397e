//! Packets the generators send: inner IPv4/UDP packets and NTM DATA datagrams around them.

use std::net::Ipv4Addr;

use ntm_proto::wire::{HEADER_LEN, OVERHEAD};
use ntm_proto::Cipher;

/// IPv4 + UDP header bytes.
pub const IP_UDP_HLEN: usize = 28;

/// The Internet checksum of `data` (RFC 1071), folded, not yet inverted, added to `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A complete IPv4/UDP packet of `total_len` bytes (at least [`IP_UDP_HLEN`]), with
/// valid IPv4 and UDP checksums; the payload is a counting byte pattern.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, total_len: usize) -> Vec<u8> {
    let total_len = total_len.clamp(IP_UDP_HLEN, usize::from(u16::MAX));
    let mut p = vec![0u8; total_len];
    for (i, b) in p[IP_UDP_HLEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    write_ipv4_udp(&mut p, (src, sport), (dst, dport));
    p
}

/// Whether `payload` is the counting pattern [`ipv4_udp`] fills packets with.
pub fn is_counting_pattern(payload: &[u8]) -> bool {
    payload.iter().enumerate().all(|(i, b)| *b == i as u8)
}

/// Writes the IPv4 and UDP headers (checksums included) in front of the payload already
/// at `p[IP_UDP_HLEN..]`: the packet is all of `p` (at most 65535 bytes).
pub fn write_ipv4_udp(p: &mut [u8], (src, sport): (Ipv4Addr, u16), (dst, dport): (Ipv4Addr, u16)) {
    let total_len = p.len().min(usize::from(u16::MAX));
    p[..IP_UDP_HLEN].fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = !fold(sum16(0, &p[..20]));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let udp_len = (total_len - 20) as u16;
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&udp_len.to_be_bytes());
    let mut pseudo = sum16(0, &p[12..20]);
    pseudo += 17 + u32::from(udp_len);
    let udp_sum = match !fold(sum16(pseudo, &p[20..total_len])) {
        0 => 0xffff,
        s => s,
    };
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
}

/// Ethernet header bytes.
pub const ETH_HLEN: usize = 14;

/// Writes an Ethernet header (IPv4) to `dst` from `src` at the start of `frame`.
pub fn write_eth(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
}

/// Whether the IPv4 header checksum of `packet` verifies.
pub fn ipv4_checksum_ok(packet: &[u8]) -> bool {
    packet.len() >= 20 && fold(sum16(0, &packet[..20])) == 0xffff
}

/// The UDP payload length that makes an IPv4/UDP packet `total_len` bytes long.
pub fn udp_payload_len(total_len: usize) -> usize {
    total_len.saturating_sub(IP_UDP_HLEN)
}

/// A buffer holding one NTM DATA datagram around `inner`, re-sealed in place with a new
/// sequence number for every send.
#[derive(Clone)]
pub struct NtmDatagram {
    buf: Vec<u8>,
    /// The plaintext inner packet: suite 2 encrypts the body in place, so it is put back
    /// before every seal.
    inner: Vec<u8>,
    tunnel_id: u32,
}

impl NtmDatagram {
    /// A datagram of tunnel `tunnel_id` carrying `inner`.
    pub fn new(tunnel_id: u32, inner: &[u8]) -> NtmDatagram {
        let mut buf = vec![0u8; inner.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        NtmDatagram {
            buf,
            inner: inner.to_vec(),
            tunnel_id,
        }
    }

    /// Writes the header with `seq` and seals the datagram with `cipher` (the sender's
    /// direction key in the tunnel's suite: suite 2 encrypts the inner packet, suite 1
    /// only writes the tag); returns the datagram.
    pub fn seal(&mut self, seq: u64, cipher: &Cipher) -> &[u8] {
        let len = self.inner.len();
        if cipher.suite() != ntm_proto::Suite::HmacSha256_128 {
            // The last seal left ciphertext there.
            self.buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&self.inner);
        }
        let n = ntm_proto::data::encap_in_place(&mut self.buf, 0, len, self.tunnel_id, seq, cipher)
            .expect("the buffer was sized for this inner packet");
        &self.buf[..n]
    }

    /// The datagram as last sealed.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntm_proto::data::{decap, Decapped, RxTunnel};
    use ntm_proto::{Key, Suite};

    const A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);

    #[test]
    fn udp_packets_have_the_asked_length_and_valid_checksums() {
        for len in [28, 64, 512, 1400] {
            let p = ipv4_udp(A, B, 1000, 9000, len);
            assert_eq!(p.len(), len);
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), len);
            assert!(ipv4_checksum_ok(&p));
            // The UDP checksum over pseudo-header and datagram folds to all ones.
            let mut s = sum16(0, &p[12..20]);
            s += 17 + u32::from(u16::from_be_bytes([p[24], p[25]]));
            assert_eq!(fold(sum16(s, &p[20..])), 0xffff, "len {len}");
            assert_eq!(udp_payload_len(len), len - 28);
        }
        assert_eq!(ipv4_udp(A, B, 1, 2, 3).len(), 28);
        let mut bad = ipv4_udp(A, B, 1, 2, 64);
        bad[8] = 1;
        assert!(!ipv4_checksum_ok(&bad));
    }

    #[test]
    fn ntm_datagrams_decap_with_fresh_sequence_numbers() {
        for suite in [Suite::Aes256Gcm, Suite::HmacSha256_128] {
            let key = Key::from_bytes([9; 32]);
            let tx = Cipher::new(suite, &key).unwrap();
            let mut rx = RxTunnel::new(Cipher::new(suite, &key).unwrap(), A, B);
            let inner = ipv4_udp(A, B, 1000, 9000, 64);
            let mut d = NtmDatagram::new(77, &inner);
            for seq in 1..=3 {
                let mut dg = d.seal(seq, &tx).to_vec();
                assert_eq!(dg.len(), 64 + OVERHEAD);
                assert_eq!(dg[3], u8::from(suite));
                // Suite 2 carries the inner packet encrypted, suite 1 in clear.
                assert_eq!(
                    dg[HEADER_LEN..HEADER_LEN + 64] == inner[..],
                    suite == Suite::HmacSha256_128
                );
                match decap(&mut dg, |id| (id == 77).then_some(&mut rx)).unwrap() {
                    Decapped::Data {
                        seq: s, inner: i, ..
                    } => {
                        assert_eq!(s, seq);
                        assert_eq!(i, &inner[..]);
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(d.bytes().len(), 64 + OVERHEAD);
        }
    }
}
