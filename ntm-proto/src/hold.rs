//! Packets to a VIP whose tunnel is being set up wait here (§6 "Data":
//! "held, a small bounded queue"), then go out when the tunnel comes up or
//! are dropped (counted) when it fails, the queue is full or they waited
//! too long.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The hold queue. Bounded per destination and in all; no clock inside.
#[derive(Debug)]
pub struct HoldQueue {
    per_peer: usize,
    total: usize,
    max_age: Duration,
    len: usize,
    queues: HashMap<Ipv4Addr, VecDeque<(Instant, Vec<u8>)>>,
}

/// The queue refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldFull;

impl HoldQueue {
    /// At most `per_peer` packets per destination and `total` in all, each
    /// for at most `max_age`.
    pub fn new(per_peer: usize, total: usize, max_age: Duration) -> HoldQueue {
        HoldQueue {
            per_peer,
            total,
            max_age,
            len: 0,
            queues: HashMap::new(),
        }
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Holds a copy of `packet` for `dst`.
    pub fn push(&mut self, now: Instant, dst: Ipv4Addr, packet: &[u8]) -> Result<(), HoldFull> {
        if self.len >= self.total {
            return Err(HoldFull);
        }
        let q = self.queues.entry(dst).or_default();
        if q.len() >= self.per_peer {
            return Err(HoldFull);
        }
        q.push_back((now, packet.to_vec()));
        self.len += 1;
        Ok(())
    }

    /// Whether packets wait for `dst`.
    pub fn holds(&self, dst: Ipv4Addr) -> bool {
        self.queues.contains_key(&dst)
    }

    /// Every destination with packets waiting.
    pub fn destinations(&self) -> Vec<Ipv4Addr> {
        self.queues.keys().copied().collect()
    }

    /// Takes everything held for `dst`, oldest first.
    pub fn take(&mut self, dst: Ipv4Addr) -> Vec<Vec<u8>> {
        let q = self.queues.remove(&dst).unwrap_or_default();
        self.len -= q.len();
        q.into_iter().map(|(_, p)| p).collect()
    }

    /// Drops everything held for `dst`; returns how many.
    pub fn discard(&mut self, dst: Ipv4Addr) -> usize {
        self.take(dst).len()
    }

    /// Drops what waited longer than the limit; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let max_age = self.max_age;
        let mut dropped = 0;
        self.queues.retain(|_, q| {
            while q.front().is_some_and(|(t, _)| now >= *t + max_age) {
                q.pop_front();
                dropped += 1;
            }
            !q.is_empty()
        });
        self.len -= dropped;
        dropped
    }

    /// When [`HoldQueue::expire`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter_map(|q| q.front().map(|(t, _)| *t + self.max_age))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 5);
    const B: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 6);

    #[test]
    fn bounded_per_peer_and_in_all() {
        let now = Instant::now();
        let mut h = HoldQueue::new(2, 3, Duration::from_secs(1));
        assert_eq!(h.push(now, A, &[1]), Ok(()));
        assert_eq!(h.push(now, A, &[2]), Ok(()));
        assert_eq!(h.push(now, A, &[3]), Err(HoldFull));
        assert_eq!(h.push(now, B, &[4]), Ok(()));
        assert_eq!(h.push(now, B, &[5]), Err(HoldFull));
        assert_eq!(h.len(), 3);
        assert_eq!(h.take(A), vec![vec![1], vec![2]]);
        assert_eq!(h.len(), 1);
        assert!(!h.holds(A) && h.holds(B));
        assert_eq!(h.discard(B), 1);
        assert!(h.is_empty());
        assert_eq!(h.take(A), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn expires_oldest_first() {
        let t0 = Instant::now();
        let mut h = HoldQueue::new(8, 8, Duration::from_secs(1));
        h.push(t0, A, &[1]).unwrap();
        h.push(t0 + Duration::from_millis(500), A, &[2]).unwrap();
        h.push(t0 + Duration::from_millis(700), B, &[3]).unwrap();
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(h.expire(t0 + Duration::from_millis(999)), 0);
        assert_eq!(h.expire(t0 + Duration::from_secs(1)), 1);
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_millis(1500)));
        assert_eq!(h.expire(t0 + Duration::from_secs(5)), 2);
        assert!(h.is_empty());
        assert_eq!(h.next_deadline(), None);
        assert!(h.destinations().is_empty());
    }
}
