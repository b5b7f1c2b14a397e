//! A replay window that several workers can check and mark at once, without a lock.
//!
//! Same contract as the scalar [`super::ReplayWindow`] (2048 packets, RFC 6479 style ring of
//! words, `u64::MAX` refused), but every word is an atomic that carries the tag of the
//! block of 8 sequence numbers it currently holds next to their 8 "seen" bits:
//!
//! ```text
//!  word = tag (seq >> 12, bits 8..60) | seen bits (low 8 bits)
//!  ring index = (seq >> 3) & 511
//! ```
//!
//! The index supplies the block's low 9 bits, so the tag keeps all the others and two
//! blocks meeting in one word compare exactly, for every `u64` sequence number. An
//! earlier layout (32 seen bits, 32-bit truncated block number compared with serial
//! arithmetic) broke once seq passed 2^37 or jumped by 2^36 or more: serial arithmetic
//! is only exact for tags less than 2^31 apart, but a word left untouched across a
//! jump (or still at its initial tag 0) can hold any older block, which then compared
//! as newer (every later packet refused) or equal (stale bits taken for fresh ones).
//! 52 tag bits + 12 ring-and-block bits = 64 is why a word holds 8 bits, not 32.
//!
//! A worker marks `seq` with one compare-and-swap on its word: if the word holds
//! `seq`'s tag it sets the bit (refusing if already set); if it holds an older tag it
//! recycles the word for `seq`'s block; if it holds a newer tag, `seq` is too old.
//! A word's tag never goes backwards, so once `seq` is marked, every later attempt
//! either finds its bit or finds a newer tag: a sequence number is accepted at most
//! once, whatever the interleaving of workers. `last` (the highest accepted number) is
//! raised with `fetch_max` and only enforces the 2048-packet window; when a worker
//! reads a `last` that another is just raising, a number slightly older than the
//! window may still be accepted once, which is never a replay. Single-threaded, a
//! number inside the window never meets a newer tag (that would be a number at least
//! 4089 above it, so `last` would put it outside), and recycling only forgets numbers
//! at least 4089 below it, already outside: the decisions are the scalar window's.
//!
//! Why not per-tunnel windows owned by one worker: RSS keeps one tunnel on one queue
//! only while its 5-tuple stays the same, and veth picks the queue by the sending CPU,
//! so after roaming (or on veth always) two workers may see the same tunnel.

use core::sync::atomic::{AtomicU64, Ordering};

use super::{ReplayCheck, WINDOW};

const BLOCK_BITS_LOG: u32 = 3;
const BLOCK_BITS: u64 = 1 << BLOCK_BITS_LOG;
/// Ring words: a power of two covering twice the window, so that the word of a number
/// inside the window is never recycled by a newer block while that number is inside.
const RING_WORDS_LOG: u32 = 9;
const RING_WORDS: usize = 1 << RING_WORDS_LOG;
const RING_MASK: u64 = RING_WORDS as u64 - 1;
/// The tag is the sequence number without the bit index and the ring index.
const TAG_SHIFT: u32 = BLOCK_BITS_LOG + RING_WORDS_LOG;
/// Where the tag starts in a word: right above the seen bits.
const TAG_POS: u32 = BLOCK_BITS as u32;

const _: () = assert!(RING_WORDS as u64 * BLOCK_BITS >= 2 * WINDOW);
// The whole tag fits above the seen bits: no truncation, exact comparisons.
const _: () = assert!((64 - TAG_SHIFT) + TAG_POS <= 64);

/// Lock-free anti-replay window of one tunnel's receive direction.
pub struct AtomicReplayWindow {
    last: AtomicU64,
    ring: [AtomicU64; RING_WORDS],
}

impl Default for AtomicReplayWindow {
    fn default() -> Self {
        Self {
            last: AtomicU64::new(0),
            ring: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl core::fmt::Debug for AtomicReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AtomicReplayWindow")
            .field("last", &self.last())
            .finish_non_exhaustive()
    }
}

impl AtomicReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest sequence number accepted so far (0 before the first).
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Whether `seq` would be accepted now, without recording it (another worker may
    /// record it before this one does: only [`AtomicReplayWindow::validate`] decides).
    pub fn check(&self, seq: u64) -> bool {
        if self.outside(seq) {
            return false;
        }
        let cur = self.word(seq).load(Ordering::Acquire);
        let cur_tag = cur >> TAG_POS;
        let tag = seq >> TAG_SHIFT;
        cur_tag < tag || (cur_tag == tag && cur & Self::bit(seq) == 0)
    }

    /// Refused whatever its word holds: reserved (as in the scalar window, so that the
    /// window can never reach the end), or older than the window.
    #[inline(always)]
    fn outside(&self, seq: u64) -> bool {
        let last = self.last.load(Ordering::Acquire);
        seq == u64::MAX || (seq < last && last - seq >= WINDOW)
    }

    #[inline]
    fn word(&self, seq: u64) -> &AtomicU64 {
        &self.ring[((seq >> BLOCK_BITS_LOG) & RING_MASK) as usize]
    }

    #[inline]
    fn bit(seq: u64) -> u64 {
        1u64 << (seq & (BLOCK_BITS - 1))
    }

    /// Accepts and records `seq`, or returns false if it is a duplicate or older than
    /// the window. Call only after the datagram authenticated (§5 order).
    #[inline]
    pub fn validate(&self, seq: u64) -> bool {
        if !self.mark(seq) {
            return false;
        }
        self.raise_last(seq);
        true
    }

    /// [`AtomicReplayWindow::validate`] without raising the window's top (`last`):
    /// for a caller that raises it once for several numbers
    /// ([`AtomicReplayWindow::raise_last`]), a worker's run of one tunnel's datagrams
    /// in a burst. Each number is still accepted at most once: the ring's words decide
    /// that whatever `last` says. Until the raise only the window's lower edge lags,
    /// so a number older than the window by less than the run's span may be accepted
    /// once (as with two workers racing), which is never a replay.
    #[inline]
    pub fn mark(&self, seq: u64) -> bool {
        if self.outside(seq) {
            return false;
        }
        let tag = seq >> TAG_SHIFT;
        let bit = Self::bit(seq);
        let word = self.word(seq);
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let cur_tag = cur >> TAG_POS;
            let new = if cur_tag == tag {
                if cur & bit != 0 {
                    return false;
                }
                cur | bit
            } else if cur_tag > tag {
                // The word already serves a newer block: seq left the ring long ago.
                return false;
            } else {
                (tag << TAG_POS) | bit
            };
            match word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Raises the window's top to `seq` if it is higher: after
    /// [`AtomicReplayWindow::mark`] accepted it (and maybe others below it).
    #[inline]
    pub fn raise_last(&self, seq: u64) {
        self.last.fetch_max(seq, Ordering::AcqRel);
    }
}

/// An [`AtomicReplayWindow`] whose top its user raises itself, once per run of
/// datagrams ([`AtomicReplayWindow::mark`]): what [`crate::data::decap`] checks
/// through [`ReplayCheck`] in a worker's burst.
#[derive(Debug, Clone, Copy)]
pub struct MarkOnly<'a>(pub &'a AtomicReplayWindow);

impl ReplayCheck for MarkOnly<'_> {
    #[inline]
    fn check(&self, seq: u64) -> bool {
        self.0.check(seq)
    }

    #[inline]
    fn update(&mut self, seq: u64) -> bool {
        self.0.mark(seq)
    }
}

/// Shared by the workers: `update` takes `&mut` of the reference only.
impl ReplayCheck for &AtomicReplayWindow {
    #[inline]
    fn check(&self, seq: u64) -> bool {
        AtomicReplayWindow::check(self, seq)
    }

    #[inline]
    fn update(&mut self, seq: u64) -> bool {
        self.validate(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ReplayWindow;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basics_and_edges() {
        let w = AtomicReplayWindow::new();
        assert!(w.validate(1));
        assert!(!w.validate(1));
        assert!(w.validate(5));
        assert!(w.validate(3));
        assert!(!w.validate(3));
        let top = 10_000;
        assert!(w.validate(top));
        assert!(w.validate(top - (WINDOW - 1)));
        assert!(!w.validate(top - WINDOW));
        assert!(!w.validate(1));
        assert!(!w.validate(u64::MAX));
        assert_eq!(w.last(), top);
        // A far jump forgets everything behind the window.
        assert!(w.validate(1_000_000));
        assert!(w.validate(1_000_000 - 1));
        assert!(!w.validate(top));
    }

    #[test]
    fn seq_zero_is_accepted_once_like_the_scalar_window() {
        let w = AtomicReplayWindow::new();
        let mut s = ReplayWindow::new();
        assert_eq!(w.check(0), s.check(0));
        assert_eq!(w.validate(0), s.validate(0));
        assert_eq!(w.check(0), s.check(0));
        assert_eq!(w.validate(0), s.validate(0));
    }

    /// In-order traffic from `from` on: each number accepted once, replays (the number
    /// itself and, once this walk passed it, one a little behind) refused.
    fn in_order_accepted_once(w: &AtomicReplayWindow, from: u64, count: u64) {
        for seq in from..from + count {
            assert!(w.validate(seq), "seq {seq:#x} refused");
            assert!(!w.validate(seq), "seq {seq:#x} accepted twice");
            let behind = seq - 100;
            assert!(
                behind < from || !w.validate(behind),
                "seq {behind:#x} accepted twice"
            );
            assert_eq!(w.last(), seq);
        }
    }

    #[test]
    fn crossing_2_pow_37_and_2_pow_38_in_order() {
        for boundary in [1u64 << 37, 1 << 38, 1 << 52, 1 << 63] {
            let w = AtomicReplayWindow::new();
            let start = boundary - 3 * WINDOW;
            // Fill the window behind the start, then walk across the boundary.
            for seq in start - 200..start {
                assert!(w.validate(seq), "seq {seq:#x} refused");
            }
            in_order_accepted_once(&w, start, 6 * WINDOW);
            assert!(
                !w.validate(boundary - 1),
                "{boundary:#x}: old number accepted"
            );
        }
    }

    #[test]
    fn forward_jump_of_2_pow_40_then_in_order_traffic() {
        let w = AtomicReplayWindow::new();
        in_order_accepted_once(&w, 200, 5000);
        let jump = 5199 + (1u64 << 40);
        assert!(w.validate(jump));
        assert!(!w.validate(jump));
        // Behind the jump but inside the window: accepted once; before the jump: refused.
        assert!(w.validate(jump - 1));
        assert!(!w.validate(jump - 1));
        assert!(!w.validate(5199));
        in_order_accepted_once(&w, jump + 1, 6 * WINDOW);
        // And at the very top of the sequence space.
        assert!(w.validate(u64::MAX - 1));
        assert!(!w.validate(u64::MAX - 1));
        assert!(w.validate(u64::MAX - 2));
        assert!(!w.validate(u64::MAX));
    }

    proptest! {
        /// Single-threaded, it decides exactly as ntm-proto's scalar window, also far
        /// up the sequence space.
        #[test]
        fn same_decisions_as_the_scalar_window(
            start in proptest::sample::select(vec![
                1u64, (1 << 37) - 3000, (1 << 38) - 1000, 1 << 40, (1 << 52) - 10, 1 << 62,
            ]),
            steps in proptest::collection::vec((0u8..4, 0u64..5000), 1..400)
        ) {
            let w = AtomicReplayWindow::new();
            let mut s = ReplayWindow::new();
            let mut base = start;
            for (kind, n) in steps {
                let seq = match kind {
                    0 => { base += n % 70; base }           // forward, small steps
                    1 => base.saturating_sub(n % 2200),     // behind, around the edge
                    2 => { base += n * 7; base }            // jumps past the ring
                    _ => base,                              // duplicate of the top
                };
                prop_assert_eq!(w.check(seq), s.check(seq), "check {}", seq);
                prop_assert_eq!(w.validate(seq), s.validate(seq), "seq {}", seq);
                prop_assert_eq!(w.last(), s.last());
            }
        }
    }

    /// Marked in runs with the top raised after each run: every number accepted once,
    /// duplicates in and across runs refused, and once raised the same window as
    /// [`AtomicReplayWindow::validate`] leaves.
    #[test]
    fn runs_marked_then_raised_accept_each_number_once() {
        let (w, v) = (AtomicReplayWindow::new(), AtomicReplayWindow::new());
        let runs: [&[u64]; 4] = [
            &[1, 2, 3, 2],
            &[3, 10, 9, 64, 5000],
            &[4999, 5000, 1],
            &[7000, 6999],
        ];
        for run in runs {
            let mut top = 0;
            for &seq in run {
                let marked = MarkOnly(&w).update(seq);
                if marked {
                    top = top.max(seq);
                }
                assert_eq!(marked, v.validate(seq), "{seq}");
            }
            w.raise_last(top);
            assert_eq!(w.last(), v.last());
        }
        for seq in [1, 2, 3, 9, 10, 64, 4999, 5000, 6999, 7000] {
            assert!(!w.validate(seq), "{seq} again");
        }
        // Within a run the lower edge lags: 6960 is behind 9100 by more than the
        // window, yet new and inside the window the top last raised (7000): accepted,
        // once.
        assert!(MarkOnly(&w).update(9100));
        assert!(MarkOnly(&w).update(6960));
        assert!(!MarkOnly(&w).update(6960));
        w.raise_last(9100);
        assert!(!w.validate(6961), "outside once raised");
    }

    /// Two threads race to mark the same numbers in different orders: each number is
    /// accepted exactly once in total.
    #[test]
    fn concurrent_workers_accept_each_number_once() {
        use std::sync::Arc;
        const N: u64 = 200_000;
        for round in 0..4u64 {
            let w = Arc::new(AtomicReplayWindow::new());
            let run = |stride: u64| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    let mut accepted = Vec::new();
                    // Both walk forward (as packets arrive) but interleave in chunks of
                    // different sizes, so each sees the other's numbers out of order.
                    let mut s = 1;
                    while s <= N {
                        let end = (s + stride).min(N + 1);
                        for seq in (s..end).rev() {
                            if w.validate(seq) {
                                accepted.push(seq);
                            }
                        }
                        s = end;
                    }
                    accepted
                })
            };
            let a = run(7 + round);
            let b = run(13 + 2 * round);
            let mut all = a.join().unwrap();
            all.extend(b.join().unwrap());
            let total = all.len();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), total, "a number was accepted twice");
        }
    }
}
