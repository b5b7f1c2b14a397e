//! Supervision of the datapath's worker threads (AF_XDP and raw).
//!
//! A worker runs its burst loop under [`supervise`]: a panic in the loop is
//! caught on the worker's own thread (`catch_unwind`), counted in its
//! [`Health`] and logged, and the loop is entered again after a back-off,
//! on the same sockets, rings and UMEM. The worker keeps them because the
//! thread has dropped every capability once set up: it could not bind new
//! ones, and queue 0's GN-side socket is the UMEM's own, which cannot be
//! bound twice. Before the loop starts again, the worker's `recover` gives
//! back what the interrupted burst held (the AF_XDP worker returns the
//! frames of its burst that reached neither a TX queue nor its pool).
//!
//! What the panic leaves in shared state: the workers read the tunnel table
//! as an `arc_swap` snapshot and update per-tunnel atomics, so there is no
//! lock to leave held. The only lock a worker takes is its slow queue's,
//! for a bounded copy that cannot panic; its users take it poisoned or not.
//!
//! A worker that panics again within [`Policy::quick`] of its restart waits
//! longer each time ([`Policy::delay`]); after [`Policy::max_quick`] such
//! panics in a row its queue is marked [`WorkerState::Failed`]: logged as an
//! error, shown by `ntma status`, and `ntma status --check` fails.
//!
//! This needs the default `panic = "unwind"`: a build with `panic = "abort"`
//! ends the whole process at the first panic (the workspace sets neither).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Longest panic message kept for the status.
const MAX_MESSAGE: usize = 200;
/// How often a worker waiting out its back-off looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Where a worker's loop is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerState {
    /// Forwarding.
    #[default]
    Running,
    /// It panicked and waits out its back-off: its queue forwards nothing.
    Restarting,
    /// It panicked too often in a row and was given up: its queue forwards
    /// nothing until ntma restarts.
    Failed,
    /// Stopped with the datapath.
    Stopped,
}

impl WorkerState {
    const ALL: [WorkerState; 4] = [
        WorkerState::Running,
        WorkerState::Restarting,
        WorkerState::Failed,
        WorkerState::Stopped,
    ];

    /// Its name in the status and the logs.
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Restarting => "restarting",
            WorkerState::Failed => "failed",
            WorkerState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One worker's health, shared with the control thread (status, metrics).
#[derive(Debug, Default)]
pub(crate) struct Health {
    panics: AtomicU64,
    state: AtomicU8,
    last_panic: Mutex<Option<String>>,
    /// A panic asked for by `ntma debug panic-worker` (debug builds only).
    #[cfg(debug_assertions)]
    inject: AtomicBool,
}

impl Health {
    /// Panics caught so far.
    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    pub(crate) fn state(&self) -> WorkerState {
        let i = self.state.load(Ordering::Relaxed) as usize;
        WorkerState::ALL.get(i).copied().unwrap_or_default()
    }

    fn set(&self, s: WorkerState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// The message of the last panic, if any.
    pub(crate) fn last_panic(&self) -> Option<String> {
        self.last_panic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn note_panic(&self, msg: &str) -> u64 {
        *self.last_panic.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.to_owned());
        self.panics.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Asks the worker to panic at its next frame (mid-burst).
    #[cfg(debug_assertions)]
    pub(crate) fn inject_panic(&self) {
        self.inject.store(true, Ordering::Relaxed);
    }

    /// Panics if a panic was asked for (the workers' fault point).
    #[cfg(debug_assertions)]
    #[inline]
    pub(crate) fn fault_point(&self, queue: usize) {
        if self.inject.load(Ordering::Relaxed) && self.inject.swap(false, Ordering::Relaxed) {
            panic!("injected panic in datapath worker {queue} (ntma debug panic-worker)");
        }
    }
}

/// When a panicked worker starts again, and when it is given up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Back-off after the first panic.
    pub first_delay: Duration,
    /// Longest back-off (it doubles per quick panic up to this).
    pub max_delay: Duration,
    /// A panic this soon after a (re)start is a quick one.
    pub quick: Duration,
    /// Quick panics in a row after which the queue is failed.
    pub max_quick: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            quick: Duration::from_secs(30),
            max_quick: 5,
        }
    }
}

impl Policy {
    /// The back-off after the `quick`-th quick panic in a row (from 1).
    pub fn delay(&self, quick: u32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << quick.saturating_sub(1).min(16));
        doubled.min(self.max_delay)
    }
}

/// A worker's loop, as [`supervise`] runs it.
pub(crate) trait Loop {
    /// The burst loop; returns when the worker's stop flag is set.
    fn run(&mut self);
    /// Repairs what a panic in [`Loop::run`] left, before it runs again.
    fn recover(&mut self);
}

/// Runs `worker`'s loop until it returns, restarting it after a panic as
/// the module docs say.
pub(crate) fn supervise(
    health: &Health,
    queue: usize,
    stop: &AtomicBool,
    policy: &Policy,
    worker: &mut impl Loop,
) {
    let mut quick = 0u32;
    loop {
        health.set(WorkerState::Running);
        let started = Instant::now();
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| worker.run())) else {
            health.set(WorkerState::Stopped);
            return;
        };
        let msg = message(payload.as_ref());
        let panics = health.note_panic(&msg);
        quick = if started.elapsed() < policy.quick {
            quick + 1
        } else {
            1
        };
        if quick >= policy.max_quick {
            health.set(WorkerState::Failed);
            tracing::error!(
                queue,
                panics,
                error = %msg,
                "datapath worker {queue} panicked {quick} times in a row: queue {queue} is FAILED and forwards nothing (`ntma status --check` fails); restart ntma and report the panic"
            );
            return;
        }
        health.set(WorkerState::Restarting);
        let delay = policy.delay(quick);
        tracing::error!(
            queue,
            panics,
            error = %msg,
            delay_ms = delay.as_millis() as u64,
            "datapath worker panicked: restarting it on the same sockets"
        );
        if !wait_unless_stopped(stop, delay) {
            health.set(WorkerState::Stopped);
            return;
        }
        worker.recover();
        tracing::warn!(queue, panics, "datapath worker restarted");
    }
}

/// Sleeps `delay`; false when `stop` was set meanwhile.
fn wait_unless_stopped(stop: &AtomicBool, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_POLL));
    }
}

/// A panic payload as text (`panic!` gives `&str` or `String`), bounded.
fn message(payload: &(dyn Any + Send)) -> String {
    let s = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    let mut end = s.len().min(MAX_MESSAGE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop that panics `panics` times, then returns.
    struct Panicky<'a> {
        health: &'a Health,
        stop: Option<&'a AtomicBool>,
        panics: u32,
        runs: u32,
        recovered: u32,
    }

    impl Loop for Panicky<'_> {
        fn run(&mut self) {
            self.runs += 1;
            assert_eq!(self.health.state(), WorkerState::Running);
            if let Some(stop) = self.stop {
                stop.store(true, Ordering::Relaxed);
                panic!("{}", String::from("owned message"));
            }
            if self.runs <= self.panics {
                panic!("boom {}", self.runs);
            }
        }

        fn recover(&mut self) {
            assert!(self.stop.is_none(), "no restart after stop");
            self.recovered += 1;
        }
    }

    fn panicky<'a>(health: &'a Health, panics: u32) -> Panicky<'a> {
        Panicky {
            health,
            stop: None,
            panics,
            runs: 0,
            recovered: 0,
        }
    }

    fn fast() -> Policy {
        Policy {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            quick: Duration::from_secs(60),
            max_quick: 3,
        }
    }

    #[test]
    fn a_panicking_loop_is_restarted_recovered_and_counted() {
        let h = Health::default();
        let stop = AtomicBool::new(false);
        let mut w = panicky(&h, 2);
        supervise(&h, 0, &stop, &fast(), &mut w);
        assert_eq!((w.runs, w.recovered), (3, 2));
        assert_eq!(h.panics(), 2);
        assert_eq!(h.last_panic().as_deref(), Some("boom 2"));
        assert_eq!(h.state(), WorkerState::Stopped);
    }

    #[test]
    fn quick_panics_in_a_row_fail_the_queue() {
        let h = Health::default();
        let stop = AtomicBool::new(false);
        let mut w = panicky(&h, u32::MAX);
        supervise(&h, 1, &stop, &fast(), &mut w);
        assert_eq!((w.runs, h.panics()), (3, 3));
        assert_eq!(h.state(), WorkerState::Failed);
    }

    #[test]
    fn stop_during_the_back_off_ends_it() {
        let h = Health::default();
        let stop = AtomicBool::new(false);
        let policy = Policy {
            first_delay: Duration::from_secs(3600),
            ..fast()
        };
        let mut w = panicky(&h, 1);
        w.stop = Some(&stop);
        supervise(&h, 0, &stop, &policy, &mut w);
        assert_eq!(h.state(), WorkerState::Stopped);
        assert_eq!(h.last_panic().as_deref(), Some("owned message"));
    }

    #[test]
    fn back_off_doubles_up_to_its_bound() {
        let p = Policy::default();
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(4), Duration::from_millis(800));
        assert_eq!(p.delay(40), p.max_delay);
    }

    #[cfg(debug_assertions)]
    #[test]
    fn an_injected_panic_fires_once() {
        let h = Health::default();
        h.fault_point(0);
        h.inject_panic();
        let r = std::panic::catch_unwind(|| h.fault_point(7));
        let msg = message(r.unwrap_err().as_ref());
        assert!(msg.contains("worker 7"), "{msg}");
        h.fault_point(7);
    }
}
