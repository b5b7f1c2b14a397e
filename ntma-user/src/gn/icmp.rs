//! ICMP destination unreachable towards the GN, rate-limited by a token
//! bucket, with RFC 1812 §4.3.2.7's exceptions.

use std::net::Ipv4Addr;
use std::time::Instant;

use super::wire::{build_icmp_unreachable, Ipv4Frame, Unreachable};
use super::{Gn, GnDrop, GnStat};
use crate::wire::{icmp, ipv4};

/// Token bucket in exact integer arithmetic: `rate` tokens per second up to
/// `burst`, refilled from the `now` of each call.
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: u32,
    burst: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl TokenBucket {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        match self.last {
            None => self.last = Some(now),
            Some(last) if now > last && self.rate > 0 => {
                let elapsed = now - last;
                let new = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000;
                if new > 0 {
                    let new = u32::try_from(new).unwrap_or(u32::MAX);
                    self.tokens = self.tokens.saturating_add(new).min(self.burst);
                    // Keep the fraction of a token that has not yet accrued.
                    let used_nanos = u128::from(new) * 1_000_000_000 / u128::from(self.rate);
                    self.last = Some(if self.tokens == self.burst {
                        now
                    } else {
                        last + std::time::Duration::from_nanos(
                            u64::try_from(used_nanos).unwrap_or(u64::MAX),
                        )
                    });
                }
            }
            Some(_) => {}
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// ICMP types that are errors (never answered with an error).
fn unicast_host(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

impl Gn {
    pub(super) fn icmp_unreachable(
        &mut self,
        now: Instant,
        f: &Ipv4Frame<'_>,
        code: Unreachable,
    ) -> Result<(), GnDrop> {
        let (eth, ip) = (&f.eth, &f.ip);
        let about_error = ip.protocol() == ipv4::PROTO_ICMP
            && ip.payload().first().is_some_and(|&t| icmp::is_error(t));
        if about_error
            || ip.frag_offset() != 0
            || !eth.src_addr().is_unicast()
            || eth.dst_addr().is_multicast()
            || !unicast_host(ip.src_addr())
            || !unicast_host(ip.dst_addr())
        {
            return Err(GnDrop::IcmpNotAllowed);
        }
        if !self.icmp.take(now) {
            return Err(GnDrop::IcmpRateLimited);
        }
        let (ntma_mac, router, gn_mac) = (self.cfg.ntma_mac, self.cfg.router, eth.src_addr());
        self.emit(|out| build_icmp_unreachable(out, ntma_mac, gn_mac, router, code, ip))?;
        self.counters.stat(GnStat::IcmpUnreachable);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_util::*;
    use super::super::wire::{build_udp_frame, parse_eth, parse_ipv4, MacAddr, UdpEnds};
    use super::super::{Gn, GnConfig};
    use super::*;
    use crate::wire::checksum;
    use crate::wire::ipv4::PROTO_ICMP as IPPROTO_ICMP;

    fn packet_to(dst: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::new();
        build_udp_frame(
            &mut f,
            &UdpEnds {
                dst_mac: NTMA_MAC,
                src_mac: GN_MAC,
                src_ip: VIP,
                dst_ip: dst,
                src_port: 12345,
                dst_port: 5201,
            },
            b"0123456789abcdef",
        )
        .unwrap();
        f
    }

    #[test]
    fn host_unreachable_for_a_failed_tunnel() {
        let mut g = gn_with_vip();
        let f = packet_to(Ipv4Addr::new(100, 64, 0, 20));
        g.unreachable(Instant::now(), &f, Unreachable::Host)
            .unwrap();
        let out = frames(&mut g);
        assert_eq!(out.len(), 1);
        let eth = parse_eth(&out[0]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (NTMA_MAC, GN_MAC));
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.protocol()),
            (ROUTER, VIP, IPPROTO_ICMP)
        );
        assert_eq!((ip.payload()[0], ip.payload()[1]), (3, 1));
        assert!(checksum::verify(ip.payload()));
        // Quote: the 20-byte header and the UDP header (8 bytes).
        assert_eq!(&ip.payload()[8..], &f[14..14 + 28]);
        assert_eq!(g.counters()[GnStat::IcmpUnreachable], 1);
    }

    #[test]
    fn non_vip_uses_the_operator_code() {
        let mut c = GnConfig::new(NTMA_MAC);
        c.non_vip_unreachable = Unreachable::Host;
        let mut g = Gn::new(c).unwrap();
        let bytes = packet_to(Ipv4Addr::new(192, 0, 2, 1));
        let f = Ipv4Frame::parse(&bytes, GnDrop::IcmpBadOriginal).unwrap();
        g.unreachable_non_vip(Instant::now(), &f).unwrap();
        let out = frames(&mut g);
        assert_eq!(out[0][14 + 20 + 1], 1);
        let mut g = gn();
        g.unreachable_non_vip(Instant::now(), &f).unwrap();
        let out = frames(&mut g);
        assert_eq!(out[0][14 + 20 + 1], 0, "default: net unreachable");
    }

    #[test]
    fn rfc1812_exceptions() {
        let mut g = gn_with_vip();
        let now = Instant::now();
        // About an ICMP error.
        let mut f = packet_to(Ipv4Addr::new(100, 64, 0, 20));
        g.unreachable(now, &f, Unreachable::Host).unwrap();
        let icmp_err = frames(&mut g).pop().unwrap();
        assert_eq!(
            g.unreachable(now, &icmp_err, Unreachable::Host),
            Err(GnDrop::IcmpNotAllowed)
        );
        // To broadcast.
        let b = packet_to(Ipv4Addr::BROADCAST);
        assert_eq!(
            g.unreachable(now, &b, Unreachable::Host),
            Err(GnDrop::IcmpNotAllowed)
        );
        // A later fragment (offset 8, header checksum fixed up).
        f[14 + 6] = 0;
        f[14 + 7] = 1;
        f[14 + 10] = 0;
        f[14 + 11] = 0;
        let sum = checksum::internet(&f[14..34]);
        f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        assert!(checksum::verify(&f[14..34]));
        assert_eq!(
            g.unreachable(now, &f, Unreachable::Host),
            Err(GnDrop::IcmpNotAllowed)
        );
        // Not IPv4, or garbage.
        assert_eq!(
            g.unreachable(now, &[0u8; 10], Unreachable::Host),
            Err(GnDrop::IcmpBadOriginal)
        );
        let mut m = packet_to(Ipv4Addr::new(100, 64, 0, 20));
        m[6..12].copy_from_slice(&MacAddr::BROADCAST.0);
        assert_eq!(
            g.unreachable(now, &m, Unreachable::Host),
            Err(GnDrop::IcmpNotAllowed)
        );
        assert!(frames(&mut g).is_empty());
        assert_eq!(g.counters()[GnDrop::IcmpNotAllowed], 4);
    }

    #[test]
    fn rate_limited_by_token_bucket() {
        let mut c = GnConfig::new(NTMA_MAC);
        c.icmp_rate_per_sec = 10;
        c.icmp_burst = 3;
        let mut g = Gn::new(c).unwrap();
        let f = packet_to(Ipv4Addr::new(100, 64, 0, 20));
        let t0 = Instant::now();
        let sent = |g: &mut Gn, now| {
            (0..10)
                .filter(|_| g.unreachable(now, &f, Unreachable::Host).is_ok())
                .count()
        };
        assert_eq!(sent(&mut g, t0), 3);
        assert_eq!(g.counters()[GnDrop::IcmpRateLimited], 7);
        // 10/s: after 250 ms two tokens have accrued, the half stays.
        assert_eq!(sent(&mut g, t0 + Duration::from_millis(250)), 2);
        assert_eq!(sent(&mut g, t0 + Duration::from_millis(300)), 1);
        // Long idle refills only up to the burst.
        assert_eq!(sent(&mut g, t0 + Duration::from_secs(100)), 3);
        assert_eq!(frames(&mut g).len(), 9);
    }

    #[test]
    fn bucket_arithmetic() {
        let mut b = TokenBucket::new(1, 1);
        let t = Instant::now();
        assert!(b.take(t));
        assert!(!b.take(t + Duration::from_millis(999)));
        assert!(b.take(t + Duration::from_millis(1000)));
        // Time going backwards (caller bug) never panics or mints tokens.
        assert!(!b.take(t));
        let mut z = TokenBucket::new(0, 2);
        assert!(z.take(t));
        assert!(z.take(t + Duration::from_secs(5)));
        assert!(!z.take(t + Duration::from_secs(10)));
    }
}
