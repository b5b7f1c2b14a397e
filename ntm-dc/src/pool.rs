//! The VIP pool: a CIDR block minus its network address, its broadcast
//! address and its first address (the adapters' router and DNS address,
//! §6), with a stable preferred address per FQDN.

use std::fmt;
use std::net::Ipv4Addr;

/// A CIDR block of VIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipPool {
    base: u32,
    prefix_len: u8,
}

/// Offset of the first assignable address (network +2: +0 is the network,
/// +1 the router).
const FIRST: u64 = 2;

impl VipPool {
    /// Parse `a.b.c.d/len`. The block needs room for at least one VIP
    /// besides the reserved three, so `len` is at most 30.
    pub fn parse(s: &str) -> Result<VipPool, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| "is not in CIDR form address/prefix-length".to_owned())?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        if prefix_len > 30 {
            return Err(format!(
                "/{prefix_len} is too small: the pool needs room for its network, router and broadcast addresses and at least one VIP (at most /30)"
            ));
        }
        if prefix_len < 8 {
            return Err(format!(
                "/{prefix_len} is larger than any sensible VIP pool (at least /8)"
            ));
        }
        let mask = u32::MAX << (32 - u32::from(prefix_len));
        let bits = u32::from(addr);
        if bits & !mask != 0 {
            return Err(format!(
                "has host bits set; did you mean \"{}/{prefix_len}\"?",
                Ipv4Addr::from(bits & mask)
            ));
        }
        Ok(VipPool {
            base: bits,
            prefix_len,
        })
    }

    /// The prefix length (the VIP TLV's, so that every VIP is on-link).
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// The first address: the adapters' router, never assigned.
    pub fn router(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// How many VIPs can be assigned.
    pub fn usable(&self) -> u64 {
        self.size() - 3
    }

    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip >= self.base && u64::from(ip - self.base) < self.size()
    }

    /// Whether `ip` may be assigned to a node.
    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && {
            let off = u64::from(u32::from(ip) - self.base);
            (FIRST..self.size() - 1).contains(&off)
        }
    }

    fn at(&self, index: u64) -> Ipv4Addr {
        // index < usable, so the offset stays inside the block.
        Ipv4Addr::from(self.base + (FIRST + index) as u32)
    }

    /// The address `fqdn` gets when it is free: a hash of the name, so that
    /// a restarted DC hands every node the VIP it had.
    pub fn preferred(&self, fqdn: &str) -> Ipv4Addr {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in fqdn.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.at(h % self.usable())
    }

    /// The first free address from `fqdn`'s preferred one onwards
    /// (wrapping). `taken` says whether an address is in use and `in_use`
    /// how many are, which bounds the search. `None` when the pool is full.
    pub fn allocate(
        &self,
        fqdn: &str,
        in_use: u64,
        mut taken: impl FnMut(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        if in_use >= self.usable() {
            return None;
        }
        let start = u64::from(u32::from(self.preferred(fqdn)) - self.base) - FIRST;
        // At most `in_use` addresses are taken, so one of the first
        // `in_use + 1` candidates is free.
        (0..=in_use)
            .map(|i| self.at((start + i) % self.usable()))
            .find(|ip| !taken(*ip))
    }
}

impl fmt::Display for VipPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn parses_and_reserves_network_router_broadcast() {
        let p = VipPool::parse("100.64.0.0/10").unwrap();
        assert_eq!(p.prefix_len(), 10);
        assert_eq!(p.router(), Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(p.usable(), (1 << 22) - 3);
        assert!(!p.is_assignable(Ipv4Addr::new(100, 64, 0, 0)));
        assert!(!p.is_assignable(Ipv4Addr::new(100, 64, 0, 1)));
        assert!(p.is_assignable(Ipv4Addr::new(100, 64, 0, 2)));
        assert!(p.is_assignable(Ipv4Addr::new(100, 127, 255, 254)));
        assert!(!p.is_assignable(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(!p.contains(Ipv4Addr::new(100, 128, 0, 0)));
        assert!(!p.contains(Ipv4Addr::new(100, 63, 255, 255)));
        assert_eq!(p.to_string(), "100.64.0.0/10");
        for bad in [
            "100.64.0.0",
            "100.64.0.0/33",
            "100.64.0.0/31",
            "x/10",
            "1.0.0.0/4",
            "100.64.0.1/10",
        ] {
            assert!(VipPool::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn preferred_is_stable_and_allocation_probes_past_taken() {
        let p = VipPool::parse("10.0.0.0/29").unwrap(); // 5 usable: .2 to .6
        assert_eq!(p.usable(), 5);
        let a = p.preferred("a.ntm.test");
        assert_eq!(a, p.preferred("a.ntm.test"));
        assert!(p.is_assignable(a));
        let mut taken = HashSet::new();
        for _ in 0..5 {
            let ip = p
                .allocate("a.ntm.test", taken.len() as u64, |ip| taken.contains(&ip))
                .unwrap();
            assert!(p.is_assignable(ip), "{ip}");
            assert!(taken.insert(ip));
        }
        assert_eq!(taken.len(), 5);
        assert_eq!(p.allocate("a.ntm.test", 5, |ip| taken.contains(&ip)), None);
    }
}
