//! The workers' cycle counter: quanta's raw counter, the TSC where it is invariant
//! (else the monotonic clock in nanoseconds), read through a safe API. A worker
//! splits its loop's time into frame work, ring operations and system calls with
//! [`Lap`], one counter read per boundary, and adds it to its counters.

use std::sync::OnceLock;

use super::state::{LocalCounters, Stat};

/// One clock for the process: quanta calibrates it once (up to 200 ms, at the first use).
fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// The unit of the workers' `cycles_*` counters, per second.
pub fn cycles_per_second() -> u64 {
    const SPAN: u64 = 1 << 32;
    let ns = clock().delta_as_nanos(0, SPAN).max(1);
    (u128::from(SPAN) * 1_000_000_000 / u128::from(ns)) as u64
}

/// The time since the last boundary, charged to one kind of work.
pub(crate) struct Lap {
    clock: quanta::Clock,
    last: u64,
}

impl Lap {
    pub(crate) fn new() -> Lap {
        let clock = clock().clone();
        let last = clock.raw();
        Lap { clock, last }
    }

    /// Charges the cycles since the previous boundary to `kind`.
    #[inline]
    pub(crate) fn charge(&mut self, local: &mut LocalCounters, kind: Stat) {
        let now = self.clock.raw();
        local.add(kind, now.saturating_sub(self.last));
        self.last = now;
    }
}
