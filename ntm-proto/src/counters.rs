//! Drop counters by reason: one `u64` per reason in a fixed array, shared by
//! the protocol endpoint ([`crate::DropCounters`]), the DC and the RS, whose
//! reason enums extend [`crate::Error`] with their own.

use core::fmt;
use core::marker::PhantomData;

/// A fieldless reason with a dense index, for [`Counters`].
pub trait Reason: Copy + 'static {
    /// Number of distinct reasons.
    const COUNT: usize;

    /// Dense index in `0..COUNT`.
    fn index(self) -> usize;

    /// Short stable name, for logs and metrics.
    fn name(self) -> &'static str;

    /// Every reason, in index order.
    fn all() -> impl Iterator<Item = Self>;
}

/// Counts per reason `R`; `N` must be `R::COUNT` (checked at compile
/// time), since stable Rust cannot size an array by `R::COUNT` directly:
/// name it through an alias such as `Counters<Error, { Error::COUNT }>`.
pub struct Counters<R, const N: usize> {
    counts: [u64; N],
    _reason: PhantomData<fn() -> R>,
}

impl<R: Reason, const N: usize> Default for Counters<R, N> {
    fn default() -> Self {
        const { assert!(N == R::COUNT, "Counters<R, N> needs N == R::COUNT") };
        Counters {
            counts: [0; N],
            _reason: PhantomData,
        }
    }
}

impl<R, const N: usize> Clone for Counters<R, N> {
    fn clone(&self) -> Self {
        Counters {
            counts: self.counts,
            _reason: PhantomData,
        }
    }
}

impl<R, const N: usize> PartialEq for Counters<R, N> {
    fn eq(&self, other: &Self) -> bool {
        self.counts == other.counts
    }
}

impl<R, const N: usize> Eq for Counters<R, N> {}

impl<R: Reason, const N: usize> Counters<R, N> {
    /// Count one drop.
    pub fn count(&mut self, reason: R) {
        self.counts[reason.index()] += 1;
    }

    /// Drops counted for `reason`.
    pub fn get(&self, reason: R) -> u64 {
        self.counts[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(reason, count)` for every reason with a non-zero count, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (R, u64)> + '_ {
        R::all()
            .map(|r| (r, self.counts[r.index()]))
            .filter(|&(_, n)| n != 0)
    }
}

impl<R, const N: usize> fmt::Debug for Counters<R, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counters")
            .field("counts", &self.counts)
            .finish()
    }
}

impl<R: Reason, const N: usize> fmt::Display for Counters<R, N> {
    /// `name=count` pairs, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (r, n) in self.iter() {
            if any {
                f.write_str(" ")?;
            }
            write!(f, "{}={n}", r.name())?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{DropCounters, Error};

    #[test]
    fn counts_and_displays_in_index_order() {
        let mut c = DropCounters::default();
        assert_eq!(c.to_string(), "none");
        c.count(Error::Replay);
        c.count(Error::Truncated);
        c.count(Error::Replay);
        assert_eq!(c.total(), 3);
        assert_eq!(c.to_string(), "truncated=1 replay=2");
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            [(Error::Truncated, 1), (Error::Replay, 2)]
        );
    }
}
