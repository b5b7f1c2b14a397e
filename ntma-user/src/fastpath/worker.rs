//! One worker per NIC queue: the xsk_fwd burst loop over the queue's two AF_XDP
//! sockets (GN-facing and WAN), sharing one UMEM.
//!
//! Each iteration: load the table snapshot; reap both completion rings into the
//! worker's frame pool and give the fill rings what they are owed; take a burst from
//! the GN side, encapsulate and seal each frame in place and queue it on the WAN TX
//! ring; take a burst from the WAN side, load the snapshot again (so that it is at
//! least as new as the frames), open, check and strip each frame in place and queue it
//! on the GN TX ring; flush; publish counters. A frame received on one socket leaves on the
//! other as the same UMEM frame. The work on a burst's frames is [`super::burst`]'s,
//! over plain buffers (the benchmark drives the same code from memory). TX wake-ups
//! are made only when the kernel asks (`need_wakeup`): again while each takes frames
//! (copy mode sends a limited number per call), not again while the kernel has not
//! moved since the last. When both sides are idle the worker spins `spin_turns`
//! empty turns, then sleeps in poll(2) on both RX rings (or spins for ever with
//! `busy_poll`); the clock is read only for a WAN burst that came. The loop's time is
//! counted by kind ([`super::cycles`]). With [`Forward::L2`] the same loop only
//! rewrites each frame's MACs (the l2fwd reference of the benchmark).

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::ebpf::Side;
use crate::xsk::{Frame, FramePool, Port, PortConfig, Umem, XskMode};

use super::{
    burst::{self, Frames},
    cycles::Lap,
    encap::{self, DownVerdict, FastDrop, UpVerdict, ENCAP_GROW, ENCAP_TAIL},
    state::{DatapathState, LocalCounters, Stat},
    supervise::{supervise, Loop, Policy},
    table::Snapshot,
    FastpathError, Forward,
};

/// Longest sleep when idle: bounds how long [`super::AfXdp::stop`] waits.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Sleep while frames are still owed to the kernel (TX ring not drained, fill ring
/// owed frames): short, so that they move on soon.
const BUSY_WAIT: Duration = Duration::from_millis(1);

/// What a worker needs to start.
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) core: Option<usize>,
    pub(crate) lan: PortConfig,
    pub(crate) wan: PortConfig,
    pub(crate) umem: Arc<Umem>,
    pub(crate) frames: u32,
    pub(crate) batch: usize,
    pub(crate) busy_poll: bool,
    pub(crate) spin_turns: u32,
    pub(crate) forward: Forward,
    pub(crate) baseline: bool,
    pub(crate) dp: Arc<DatapathState>,
    pub(crate) stop: Arc<AtomicBool>,
}

/// The sockets a started worker bound, for the XskMaps.
pub(crate) struct Bound {
    pub(crate) lan_fd: RawFd,
    pub(crate) wan_fd: RawFd,
    pub(crate) mode: XskMode,
    /// The GN-side socket's frames per TX system call, where it could be raised.
    pub(crate) tx_budget: Option<u32>,
}

/// Starts a worker thread (in the calling thread's network namespace, which it
/// inherits): it pins itself, binds its two sockets, fills their fill rings and
/// reports back before it enters its loop, which runs under
/// [`super::supervise`] (restarted after a panic). The sockets are made on the
/// worker thread because xdpilone's rings are not `Send`.
pub(crate) fn spawn(setup: WorkerSetup) -> Result<(JoinHandle<()>, Bound), FastpathError> {
    let index = setup.index;
    let (tx, rx) = mpsc::sync_channel::<Result<Bound, FastpathError>>(1);
    let handle = std::thread::Builder::new()
        .name(format!("ntma-fp{index}"))
        .spawn(move || match Worker::new(setup) {
            Ok((mut worker, bound)) => {
                let _ = tx.send(Ok(bound));
                drop(tx);
                // Bound and filled: the loop needs no privilege.
                crate::privs::drop_all();
                let (dp, stop) = (Arc::clone(&worker.dp), Arc::clone(&worker.stop));
                supervise(
                    dp.health(index),
                    index,
                    &stop,
                    &Policy::default(),
                    &mut worker,
                );
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|source| FastpathError::Spawn {
            queue: index,
            source,
        })?;
    match rx.recv() {
        Ok(Ok(bound)) => Ok((handle, bound)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            // The thread died before reporting: it panicked.
            let _ = handle.join();
            Err(FastpathError::WorkerPanicked { queue: index })
        }
    }
}

/// Frames each of a worker's two fill rings gets at start: the whole ring, as far as
/// `frames` leave enough for both TX rings (`limits::Sizes` makes them: frames >=
/// 2 x (fill ring + TX ring) per worker). Under load the kernel receives into at most
/// these frames before the worker takes them off the RX ring: fewer, and a burst that
/// the RX ring could hold is dropped for want of fill frames (`rx_fill_ring_empty_descs`,
/// the veth's `rx_dropped`).
fn fill_frames(frames: u32, fill_size: u32, tx_size: u32) -> u32 {
    fill_size.min(frames.saturating_sub(2 * tx_size) / 2)
}

/// Wakes `port`'s TX if the kernel asks and frames wait: again while each wake-up
/// takes some (copy mode sends a limited number per call), and not at all when the
/// last system call left the ring as it is now and nothing came back since (the
/// kernel has not moved: another call would only cost a system call). A wake-up the
/// kernel did not ask for (`need_wakeup` clear: zero-copy while the driver runs) is
/// no call and suppresses nothing.
fn kick(port: &mut Port, kicked: &mut Option<u32>, completed: bool) {
    let mut pending = port.tx_pending();
    if pending == 0 || (*kicked == Some(pending) && !completed) {
        return;
    }
    loop {
        let calls = port.stats().tx_wakeups;
        port.kick_tx();
        let called = port.stats().tx_wakeups != calls;
        let now = port.tx_pending();
        if now == 0 || now >= pending {
            *kicked = called.then_some(now);
            return;
        }
        pending = now;
    }
}

/// A worker's burst as [`Frames`]: its UMEM frames.
struct UmemFrames<'a> {
    umem: &'a Umem,
    frames: &'a mut [Frame],
}

impl Frames for UmemFrames<'_> {
    fn count(&self) -> usize {
        self.frames.len()
    }

    fn buf(&mut self, i: usize) -> &mut [u8] {
        self.umem.packet_mut(&mut self.frames[i])
    }

    fn bytes(&self, i: usize) -> &[u8] {
        self.umem.packet(&self.frames[i])
    }
}

struct Worker {
    index: usize,
    lan: Port,
    wan: Port,
    pool: FramePool,
    /// Frames the pool was given: the total of [`super::FrameUse`].
    frames: u32,
    umem: Arc<Umem>,
    dp: Arc<DatapathState>,
    stop: Arc<AtomicBool>,
    batch: usize,
    busy_poll: bool,
    spin_turns: u32,
    /// Empty turns since frames last came.
    empty_turns: u32,
    /// Per TX ring (GN side, WAN): what was still pending when the last wake-up
    /// returned, so that a wake-up that changed nothing is not repeated in vain.
    kicked: [Option<u32>; 2],
    forward: Forward,
    /// [`super::AfXdpConfig::baseline`].
    baseline: bool,
    rx: Vec<Frame>,
    lan_tx: Vec<Frame>,
    wan_tx: Vec<Frame>,
    local: LocalCounters,
    /// A slow frame went into an empty queue during this burst: wake the control.
    wake_slow: bool,
    /// Where the loop's time goes (`cycles_*` counters).
    lap: Lap,
    /// Per burst: the frames' lengths as received (uplink) and the verdicts.
    lens: Vec<usize>,
    up: Vec<UpVerdict>,
    down: Vec<DownVerdict>,
    l2: Vec<bool>,
    /// The addresses of the burst being handled: what a panic in its middle may
    /// have lost, for [`Worker::recover`].
    ledger: Vec<u64>,
}

impl Worker {
    fn new(s: WorkerSetup) -> Result<(Worker, Bound), FastpathError> {
        if let Some(core) = s.core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                return Err(FastpathError::Pin {
                    queue: s.index,
                    core,
                });
            }
        }
        s.dp.set_core(s.index, s.core);
        let fill = fill_frames(s.frames, s.umem.config().fill_size, s.lan.tx_size);
        let mut pool = s.umem.pool(s.frames)?;
        let mut lan = Port::bind(&s.umem, s.lan)?;
        let mut wan = Port::bind(&s.umem, s.wan)?;
        lan.fill(&mut pool, fill);
        wan.fill(&mut pool, fill);
        let bound = Bound {
            lan_fd: lan.as_raw_fd(),
            wan_fd: wan.as_raw_fd(),
            mode: lan.mode(),
            tx_budget: lan.tx_budget(),
        };
        let batch = s.batch;
        Ok((
            Worker {
                index: s.index,
                lan,
                wan,
                pool,
                frames: s.frames,
                umem: s.umem,
                dp: s.dp,
                stop: s.stop,
                batch,
                busy_poll: s.busy_poll,
                spin_turns: s.spin_turns,
                empty_turns: 0,
                kicked: [None; 2],
                forward: s.forward,
                baseline: s.baseline,
                rx: Vec::with_capacity(batch),
                // Bursts are taken only while at most `batch` frames wait, so these
                // never grow past their capacity.
                lan_tx: Vec::with_capacity(2 * batch),
                wan_tx: Vec::with_capacity(2 * batch),
                local: LocalCounters::default(),
                wake_slow: false,
                lap: Lap::new(),
                lens: Vec::with_capacity(batch),
                up: Vec::with_capacity(batch),
                down: Vec::with_capacity(batch),
                l2: Vec::with_capacity(batch),
                ledger: Vec::with_capacity(batch),
            },
            bound,
        ))
    }

    fn run(&mut self) {
        let mut cache = arc_swap::Cache::new(Arc::clone(self.dp.table()));
        let complete_max = self.umem.config().completion_size;
        self.lap = Lap::new();
        while !self.stop.load(Ordering::Relaxed) {
            // One snapshot per burst: tunnels published meanwhile apply to the next one.
            let snap = Arc::clone(cache.load());

            let completed = [
                self.lan.complete(&mut self.pool, complete_max) > 0,
                self.wan.complete(&mut self.pool, complete_max) > 0,
            ];
            self.lan.refill(&mut self.pool);
            self.wan.refill(&mut self.pool);
            self.lap.charge(&mut self.local, Stat::CyclesRing);

            let mut received = 0;
            if self.wan_tx.len() <= self.batch {
                received += match self.forward {
                    Forward::Tunnel => self.uplink_burst(&snap),
                    Forward::L2 { to_wan, .. } => self.l2_burst(Side::Lan, &to_wan),
                };
            }
            self.transmit(Side::Wan);

            if self.lan_tx.len() <= self.batch {
                received += match self.forward {
                    Forward::Tunnel => self.downlink_burst(|| Arc::clone(cache.load())),
                    Forward::L2 { to_lan, .. } => self.l2_burst(Side::Wan, &to_lan),
                };
            }
            self.transmit(Side::Lan);
            self.kick_pending(completed);
            self.publish_frames();

            if received > 0 {
                self.empty_turns = 0;
                self.dp.publish_counters(self.index, &self.local);
                self.lap.charge(&mut self.local, Stat::CyclesRing);
            } else {
                self.lap.charge(&mut self.local, Stat::CyclesRing);
                self.idle();
            }
        }
        self.dp.publish_counters(self.index, &self.local);
    }

    /// Puts `side`'s TX queue on its ring ([`Worker::kick_pending`] wakes the kernel).
    fn transmit(&mut self, side: Side) {
        let (port, frames, stat) = match side {
            Side::Lan => (&mut self.lan, &mut self.lan_tx, Stat::LanTx),
            Side::Wan => (&mut self.wan, &mut self.wan_tx, Stat::WanTx),
        };
        if frames.is_empty() {
            return;
        }
        let n = port.tx_queue(frames);
        self.local.add(stat, u64::from(n));
        self.lap.charge(&mut self.local, Stat::CyclesRing);
    }

    /// Wakes the kernel's TX on both NICs where it asks (`need_wakeup`), then the
    /// control if a slow frame went into an empty queue. `completed`: frames came
    /// back on the completion ring this turn (GN side, WAN).
    fn kick_pending(&mut self, completed: [bool; 2]) {
        for (i, port) in [&mut self.lan, &mut self.wan].into_iter().enumerate() {
            if self.baseline {
                if port.tx_pending() > 0 {
                    port.kick_tx();
                }
            } else {
                kick(port, &mut self.kicked[i], completed[i]);
            }
        }
        if std::mem::take(&mut self.wake_slow) {
            self.dp.wake_control();
        }
        self.local.set(Stat::LanKicks, self.lan.stats().tx_wakeups);
        self.local.set(Stat::WanKicks, self.wan.stats().tx_wakeups);
        self.lap.charge(&mut self.local, Stat::CyclesSyscall);
    }

    /// Nothing came on either NIC: spin (`busy_poll`) or sleep in poll(2) until
    /// frames come, briefly while frames are still owed to the kernel.
    fn idle(&mut self) {
        if self.busy_poll || self.empty_turns < self.spin_turns {
            self.empty_turns += 1;
            std::hint::spin_loop();
            return;
        }
        let owed = !self.lan_tx.is_empty()
            || !self.wan_tx.is_empty()
            || self.lan.tx_pending() > 0
            || self.wan.tx_pending() > 0
            || self.lan.fill_owed() > 0
            || self.wan.fill_owed() > 0;
        let wait = if owed { BUSY_WAIT } else { IDLE_WAIT };
        // After the sleep, wake the kernel again even if nothing changed: a lost
        // wake-up costs at most one sleep.
        self.kicked = [None; 2];
        self.local.add(Stat::Polls, 1);
        // Fresh counters for whoever reads them while the worker sleeps.
        self.dp.publish_counters(self.index, &self.local);
        // A failed poll (EBADF and the like cannot happen on our own fds) only
        // costs a spin; the loop goes on.
        let _ = Port::wait_any_rx(&[&self.lan, &self.wan], wait);
        self.lap.charge(&mut self.local, Stat::CyclesSyscall);
    }

    /// After an RX burst of `n` frames: counted (a non-empty one as a batch), and the
    /// time so far charged to the rings.
    fn took(&mut self, rx: Stat, n: u32) {
        self.local.add(rx, u64::from(n));
        if n > 0 {
            self.local.add(Stat::Batches, 1);
        }
        self.lap.charge(&mut self.local, Stat::CyclesRing);
    }

    /// Debug builds: where `ntma debug panic-worker` makes the worker panic
    /// (release builds have nothing here).
    #[inline(always)]
    fn fault_point(&self) {
        #[cfg(debug_assertions)]
        self.dp.health(self.index).fault_point(self.index);
    }

    /// GN side: one burst, each frame encapsulated and queued on `wan_tx`.
    fn uplink_burst(&mut self, snap: &Snapshot) -> u32 {
        let n = self.lan.rx_burst(&mut self.pool, &mut self.rx);
        self.took(Stat::LanRx, n);
        let (mut rx, mut lens, mut up) = (
            std::mem::take(&mut self.rx),
            std::mem::take(&mut self.lens),
            std::mem::take(&mut self.up),
        );
        self.note_burst(&rx);
        // Room for the outer headers in front and the tag behind; a frame that has
        // none keeps a buffer too short for uplink, which drops it as `NoRoom`.
        for frame in rx.iter_mut() {
            let len = frame.len();
            let _ = self.umem.push_front(frame, ENCAP_GROW)
                && self.umem.set_len(frame, ENCAP_GROW + len + ENCAP_TAIL);
            lens.push(len);
        }
        let mut frames = UmemFrames {
            umem: &self.umem,
            frames: &mut rx,
        };
        if self.baseline {
            for (i, len) in lens.iter().enumerate() {
                up.push(encap::uplink(snap, frames.buf(i), *len));
            }
        } else {
            burst::uplink_burst(snap, &mut frames, &lens, &mut up);
        }
        for ((frame, verdict), len) in rx.drain(..).zip(up.drain(..)).zip(lens.drain(..)) {
            self.uplink_done(frame, verdict, len);
        }
        // Every frame is queued or free now, and TX may take them.
        self.ledger.clear();
        (self.rx, self.lens, self.up) = (rx, lens, up);
        self.lap.charge(&mut self.local, Stat::CyclesProcess);
        n
    }

    /// WAN side: one burst, each frame opened, checked, stripped and queued on
    /// `lan_tx`.
    fn downlink_burst(&mut self, fresh: impl FnOnce() -> Arc<Snapshot>) -> u32 {
        let n = self.wan.rx_burst(&mut self.pool, &mut self.rx);
        self.took(Stat::WanRx, n);
        if n == 0 {
            return 0;
        }
        // The clock only for a burst that came (activity times).
        let now = self.dp.now_nanos(Instant::now());
        // The snapshot again, after the frames were taken off the ring: a
        // tunnel the control published before sending its TUN_REQ or TUN_RESP
        // is in it for every DATA that answers them.
        let snap = fresh();
        let (mut rx, mut down) = (std::mem::take(&mut self.rx), std::mem::take(&mut self.down));
        self.note_burst(&rx);
        let mut frames = UmemFrames {
            umem: &self.umem,
            frames: &mut rx,
        };
        if self.baseline {
            for i in 0..frames.count() {
                down.push(encap::downlink(&snap, frames.buf(i), now));
            }
        } else {
            burst::downlink_burst(&snap, &mut frames, now, &mut down);
        }
        for (frame, verdict) in rx.drain(..).zip(down.drain(..)) {
            self.downlink_done(frame, verdict);
        }
        self.ledger.clear();
        (self.rx, self.down) = (rx, down);
        self.lap.charge(&mut self.local, Stat::CyclesProcess);
        n
    }

    /// l2fwd ([`Forward::L2`]): one burst from `from`'s NIC, each frame's MACs
    /// rewritten to `macs` and queued for the other NIC. Nothing in it can panic, so
    /// it keeps no ledger.
    fn l2_burst(&mut self, from: Side, macs: &[u8; 12]) -> u32 {
        let n = match from {
            Side::Lan => self.lan.rx_burst(&mut self.pool, &mut self.rx),
            Side::Wan => self.wan.rx_burst(&mut self.pool, &mut self.rx),
        };
        let (rx_stat, malformed) = match from {
            Side::Lan => (Stat::LanRx, FastDrop::LanMalformed),
            Side::Wan => (Stat::WanRx, FastDrop::WanMalformed),
        };
        self.took(rx_stat, n);
        let mut frames = UmemFrames {
            umem: &self.umem,
            frames: &mut self.rx,
        };
        burst::l2_burst(&mut frames, macs, &mut self.l2);
        let tx = match from {
            Side::Lan => &mut self.wan_tx,
            Side::Wan => &mut self.lan_tx,
        };
        for (frame, ok) in self.rx.drain(..).zip(self.l2.drain(..)) {
            if ok {
                tx.push(frame);
            } else {
                self.local.drop(malformed);
                self.pool.free(frame);
            }
        }
        self.lap.charge(&mut self.local, Stat::CyclesProcess);
        n
    }

    /// Records the addresses of a burst about to be handled (no allocation: the
    /// ledger holds a burst). It is cleared once the burst is handled, before any
    /// of its frames can reach a ring: [`Worker::recover`] never takes back a
    /// frame the kernel holds.
    fn note_burst(&mut self, rx: &[Frame]) {
        self.ledger.clear();
        self.ledger.extend(rx.iter().map(Frame::addr));
    }

    /// Where the worker's frames are now (a few relaxed stores to its own counters'
    /// cache line: cheap enough for every turn, so the gauge is fresh when idle too).
    fn publish_frames(&self) {
        let (lan, wan) = (self.lan.stats(), self.wan.stats());
        let outstanding = |given: u64, back: u64| given.saturating_sub(back);
        self.dp.publish_frames(
            self.index,
            super::FrameUse {
                total: u64::from(self.frames),
                free: self.pool.len() as u64,
                fill: outstanding(lan.filled, lan.rx) + outstanding(wan.filled, wan.rx),
                tx: outstanding(lan.tx, lan.completed) + outstanding(wan.tx, wan.completed),
            },
        );
    }

    /// Where an uplink frame goes after its verdict.
    fn uplink_done(&mut self, mut frame: Frame, verdict: UpVerdict, frame_len: usize) {
        // Debug builds: `ntma debug panic-worker` panics here, mid-burst.
        self.fault_point();
        match verdict {
            UpVerdict::TxClamped(len) => {
                self.local.add(Stat::MssClamped, 1);
                self.umem.set_len(&mut frame, len);
                self.wan_tx.push(frame);
            }
            UpVerdict::Tx(len) => {
                // Shrinking: cannot fail.
                self.umem.set_len(&mut frame, len);
                self.wan_tx.push(frame);
            }
            UpVerdict::Slow | UpVerdict::TooBig => {
                if verdict == UpVerdict::TooBig {
                    self.local.add(Stat::TooBig, 1);
                }
                // uplink wrote nothing: undo the growth and hand the frame over as received.
                self.umem.pull_front(&mut frame, ENCAP_GROW);
                self.umem.set_len(&mut frame, frame_len);
                self.hand_to_slow(Side::Lan, frame);
            }
            UpVerdict::Drop(why) => {
                self.local.drop(why);
                self.pool.free(frame);
            }
        }
    }

    /// Where a downlink frame goes after its verdict.
    fn downlink_done(&mut self, mut frame: Frame, verdict: DownVerdict) {
        self.fault_point();
        match verdict {
            DownVerdict::Tx { offset, len } | DownVerdict::TxClamped { offset, len } => {
                if matches!(verdict, DownVerdict::TxClamped { .. }) {
                    self.local.add(Stat::MssClamped, 1);
                }
                self.umem.pull_front(&mut frame, offset);
                self.umem.set_len(&mut frame, len);
                self.lan_tx.push(frame);
            }
            DownVerdict::Consumed => {
                self.local.add(Stat::Keepalives, 1);
                self.pool.free(frame);
            }
            DownVerdict::Slow => self.hand_to_slow(Side::Wan, frame),
            DownVerdict::Drop(why) => {
                self.local.drop(why);
                self.pool.free(frame);
            }
        }
    }

    fn hand_to_slow(&mut self, side: Side, frame: Frame) {
        let (queued, was_empty) = self
            .dp
            .push_slow(self.index, side, self.umem.packet(&frame));
        if queued {
            self.local.add(Stat::Slow, 1);
            self.wake_slow |= was_empty;
        } else {
            self.local.drop(FastDrop::SlowQueueFull);
        }
        self.pool.free(frame);
    }
}

impl Loop for Worker {
    fn run(&mut self) {
        Worker::run(self);
    }

    /// After a panic: the frames of the interrupted burst that reached neither a
    /// TX queue nor the pool go back to the pool (the rest of the burst was dropped
    /// with its vector, the frame in hand with the call). Frames on the TX queues
    /// stay and go out; the rings are the kernel's and were not touched mid-way
    /// (the loop panics in packet handling, between ring operations).
    fn recover(&mut self) {
        let held = self.lan_tx.iter().chain(&self.wan_tx).chain(&self.rx);
        let back = self
            .pool
            .reclaim(&self.ledger, held.map(Frame::addr).collect::<Vec<_>>());
        self.ledger.clear();
        // The burst's vectors went with the unwinding: their room again, so the
        // loop does not allocate.
        self.rx.reserve(self.batch);
        self.lens.reserve(self.batch);
        self.up.reserve(self.batch);
        self.down.reserve(self.batch);
        // Frames it queued for the control may not have woken it.
        self.wake_slow = true;
        tracing::info!(
            queue = self.index,
            frames = back,
            "frames of the interrupted burst back in the pool"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_rings_get_their_size_in_frames_when_the_budget_allows() {
        // The defaults: each fill ring gets as many frames as the RX ring can hold.
        let cfg = super::super::AfXdpConfig::new("lan0", "wan0", ntma_common::XdpConfig::default());
        let fill = fill_frames(cfg.frames_per_worker(), cfg.umem.fill_size, cfg.tx_ring);
        assert_eq!(fill, cfg.umem.fill_size);
        assert!(
            fill >= cfg.rx_ring,
            "{fill} fill frames, RX ring {}",
            cfg.rx_ring
        );
        // The fewest frames limits::Sizes accepts still fill both rings whole.
        assert_eq!(fill_frames(2 * (4096 + 2048), 4096, 2048), 4096);
        // Fewer frames (several queues): what is left after both TX rings.
        assert_eq!(fill_frames(8192, 4096, 2048), 2048);
        assert_eq!(fill_frames(100, 4096, 2048), 0);
    }
}
