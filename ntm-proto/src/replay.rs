//! The 2048-packet anti-replay window (§5), RFC 6479 style as in
//! wireguard-go's `replay/replay.go`: a ring of u64 bitmap words; moving the
//! window forward clears whole words instead of shifting bits.
//!
//! [`ReplayWindow::check`] answers without changing state (a cheap
//! pre-filter for callers that prefer to skip the crypto for old numbers);
//! [`ReplayWindow::validate`] checks and marks, and must run only after the
//! tag verified. [`crate::data::decap`] validates after the tag, the order
//! of §5, so that every drop is counted under its spec reason.
//!
//! [`AtomicReplayWindow`] keeps the same decisions for several threads at
//! once (the adapter's workers); [`ReplayCheck`] is what `decap` asks of
//! either.

mod atomic;

pub use atomic::{AtomicReplayWindow, MarkOnly};

const BLOCK_BITS_LOG: u32 = 6;
const BLOCK_BITS: u64 = 1 << BLOCK_BITS_LOG;
/// Ring words. A power of two; (RING_BLOCKS - 1) * 64 must be at least WINDOW
/// so that every number inside the window still has its bit.
const RING_BLOCKS: usize = 64;
const BLOCK_MASK: u64 = RING_BLOCKS as u64 - 1;
const BIT_MASK: u64 = BLOCK_BITS - 1;

/// Window size in packets: `seq` is accepted when it is new and
/// `last - seq < WINDOW`, where `last` is the highest number accepted so far.
pub const WINDOW: u64 = 2048;

const _: () = assert!((RING_BLOCKS as u64 - 1) * BLOCK_BITS >= WINDOW);

/// An anti-replay window as [`crate::data::decap`] uses it (§5 "Replay"):
/// `seq` is accepted when it is new and `last - seq <` [`WINDOW`], and
/// `u64::MAX` never is.
pub trait ReplayCheck {
    /// Whether `seq` would be accepted, without recording it.
    fn check(&self, seq: u64) -> bool;
    /// Accepts and records `seq`, or returns false if it is old or a
    /// duplicate. Call only after the datagram authenticated.
    fn update(&mut self, seq: u64) -> bool;
}

impl ReplayCheck for ReplayWindow {
    #[inline]
    fn check(&self, seq: u64) -> bool {
        ReplayWindow::check(self, seq)
    }

    #[inline]
    fn update(&mut self, seq: u64) -> bool {
        self.validate(seq)
    }
}

impl<W: ReplayCheck> ReplayCheck for &mut W {
    #[inline]
    fn check(&self, seq: u64) -> bool {
        (**self).check(seq)
    }

    #[inline]
    fn update(&mut self, seq: u64) -> bool {
        (**self).update(seq)
    }
}

/// Sliding anti-replay window for one (tunnel, direction). The zero value
/// (`Default`) is ready: nothing seen yet.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    last: u64,
    ring: [u64; RING_BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            last: 0,
            ring: [0; RING_BLOCKS],
        }
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// A window that refuses every number up to and including `floor` and
    /// accepts the ones above it: a node's DC window after it accepted a
    /// REG_RESP with seq `floor` (§5 "Replay"), so that nothing recorded
    /// during an earlier registration plays back.
    pub fn above(floor: u64) -> Self {
        let mut ring = [u64::MAX; RING_BLOCKS];
        let (block, bit) = Self::slot(floor);
        // In floor's own word, only floor and the numbers below it are seen.
        ring[block] = bit | (bit - 1);
        ReplayWindow { last: floor, ring }
    }

    /// The highest sequence number accepted so far (0 before the first).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Whether `seq` would be accepted, without recording it. Call before the
    /// tag check to drop old and duplicate packets cheaply.
    pub fn check(&self, seq: u64) -> bool {
        if seq == u64::MAX {
            // Reserved so that the window can never be pushed to the end.
            return false;
        }
        if seq > self.last {
            return true;
        }
        if self.last - seq >= WINDOW {
            return false;
        }
        let (block, bit) = Self::slot(seq);
        self.ring[block] & bit == 0
    }

    /// Accept and record `seq`, or return false if it is old or a duplicate.
    /// Call only after the datagram authenticated.
    #[inline]
    pub fn validate(&mut self, seq: u64) -> bool {
        if seq == u64::MAX {
            return false;
        }
        if seq > self.last {
            let current = self.last >> BLOCK_BITS_LOG;
            let target = seq >> BLOCK_BITS_LOG;
            // Clear the words the window moves over; all of them at most.
            let diff = (target - current).min(RING_BLOCKS as u64);
            for i in 1..=diff {
                self.ring[((current + i) & BLOCK_MASK) as usize] = 0;
            }
            self.last = seq;
        } else if self.last - seq >= WINDOW {
            return false;
        }
        let (block, bit) = Self::slot(seq);
        let old = self.ring[block];
        self.ring[block] = old | bit;
        old & bit == 0
    }

    /// Same as [`ReplayWindow::validate`], named for the check-then-mark pair.
    pub fn mark(&mut self, seq: u64) -> bool {
        self.validate(seq)
    }

    fn slot(seq: u64) -> (usize, u64) {
        (
            ((seq >> BLOCK_BITS_LOG) & BLOCK_MASK) as usize,
            1u64 << (seq & BIT_MASK),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn above_refuses_the_floor_and_below() {
        for floor in [0, 1, 63, 64, 100, 5000, 1 << 40, u64::MAX - 2] {
            let mut w = ReplayWindow::above(floor);
            for old in [
                floor,
                floor.saturating_sub(1),
                floor.saturating_sub(64),
                floor.saturating_sub(3000),
                0,
            ] {
                assert!(!w.check(old), "floor {floor}: {old} accepted");
            }
            assert!(w.check(floor + 1), "floor {floor}");
            assert!(w.validate(floor + 1));
            assert!(!w.validate(floor + 1));
            if floor < u64::MAX - 70 {
                assert!(w.validate(floor + 70));
                assert!(!w.check(floor));
            }
        }
    }

    #[test]
    fn fresh_window_accepts_first() {
        let mut w = ReplayWindow::new();
        assert!(w.check(1));
        assert!(w.validate(1));
        assert_eq!(w.last(), 1);
    }

    #[test]
    fn duplicate_rejected() {
        let mut w = ReplayWindow::new();
        assert!(w.validate(5));
        assert!(!w.check(5));
        assert!(!w.validate(5));
        // Reordered but new is fine, once.
        assert!(w.check(3));
        assert!(w.validate(3));
        assert!(!w.validate(3));
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new();
        let top = 10_000;
        assert!(w.validate(top));
        // The oldest number still inside the window.
        assert!(w.check(top - (WINDOW - 1)));
        assert!(w.validate(top - (WINDOW - 1)));
        // One older is outside.
        assert!(!w.check(top - WINDOW));
        assert!(!w.validate(top - WINDOW));
        assert!(!w.validate(1));
    }

    #[test]
    fn slide_forgets_old_bits() {
        let mut w = ReplayWindow::new();
        for s in 1..=3000 {
            assert!(w.validate(s), "{s}");
        }
        for s in 3000 - WINDOW + 1..=3000 {
            assert!(!w.check(s), "{s} seen");
        }
        // Moving forward by exactly one word's worth keeps the window intact.
        assert!(w.validate(3064));
        for s in 3001..3064 {
            assert!(w.check(s), "{s} not seen yet");
        }
        assert!(!w.check(3000));
    }

    #[test]
    fn far_jump_clears_everything() {
        let mut w = ReplayWindow::new();
        for s in 1..=100 {
            w.validate(s);
        }
        let far = 1_000_000;
        assert!(w.validate(far));
        // Everything inside the new window but below `far` is unseen.
        for s in far - WINDOW + 1..far {
            assert!(w.check(s), "{s}");
        }
        assert!(!w.check(100));
        assert!(!w.check(far));
    }

    #[test]
    fn jump_within_ring_but_past_window() {
        let mut w = ReplayWindow::new();
        assert!(w.validate(64));
        assert!(w.validate(65));
        // Jump by 3000: more than the window, less than the ring.
        assert!(w.validate(3065));
        assert!(w.check(3065 - 1));
        assert!(w.check(3065 - (WINDOW - 1)));
        assert!(!w.check(65));
    }

    #[test]
    fn max_is_refused() {
        let mut w = ReplayWindow::new();
        assert!(!w.check(u64::MAX));
        assert!(!w.validate(u64::MAX));
        assert!(w.validate(u64::MAX - 1));
        assert!(!w.validate(u64::MAX - 1));
    }

    #[test]
    fn model_check() {
        // Compare with a set-based model on a pseudo-random walk.
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut last = 0u64;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = match x % 8 {
                0 => last + 1 + (x >> 8) % 5000,
                1..=4 => last + 1,
                _ => last.saturating_sub((x >> 8) % 2500),
            };
            let model = !(seen.contains(&seq) || (seq <= last && last - seq >= WINDOW));
            assert_eq!(w.check(seq), model, "check {seq} last {last}");
            assert_eq!(w.validate(seq), model, "validate {seq} last {last}");
            if model {
                seen.insert(seq);
                last = last.max(seq);
            }
        }
    }
}
