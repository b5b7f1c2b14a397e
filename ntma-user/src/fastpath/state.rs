//! [`DatapathState`]: the state the control thread and the workers share.
//!
//! * The tunnel table, published as an `ArcSwap<Snapshot>` (see [`super::table`]).
//! * One slow queue per worker: frames the fast path hands to the control thread,
//!   copied into preallocated slots (the UMEM frame goes straight back to the worker's
//!   pool, so the control thread never owns UMEM frames). A full queue drops and counts.
//! * One eventfd that a worker signals when it put frames into an empty queue, so the
//!   control thread can sleep on it (tokio `AsyncFd`, or [`SlowWaker::wait`]).
//! * Per-worker counters, published by each worker once per burst.

use std::{
    net::SocketAddrV4,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use nix::sys::eventfd::{EfdFlags, EventFd};
use ntm_proto::node::TunnelParams;

use super::{
    encap::FastDrop,
    supervise::{Health, WorkerState},
    table::{ControlTable, Snapshot},
};
use crate::datapath::{GnLink, Link, TunnelStats};
pub use crate::ebpf::Side;

/// Sizes of a [`DatapathState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathStateConfig {
    /// Number of workers (one slow queue and one counter set each).
    pub workers: usize,
    /// UDP port of tunnel traffic (frames to other ports go to the slow queue).
    pub ntm_port: u16,
    /// Inner MTU (§5 "MTU": the uplink's MTU − 60): longer GN packets go to the slow
    /// queue, and the MSS of TCP SYNs is clamped to it − 40.
    pub inner_mtu: u16,
    /// Slots of each worker's slow queue.
    pub slow_slots: usize,
    /// Bytes per slot: the longest frame (longer ones are truncated, see [`SlowFrame`]).
    pub slow_slot_len: usize,
}

/// Slots of each worker's slow queue unless configured otherwise: one burst of
/// frames the control thread has not taken yet, with room to spare.
pub const SLOW_SLOTS: usize = 256;

impl Default for DatapathStateConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            ntm_port: ntma_common::NTM_PORT,
            inner_mtu: super::INNER_MTU as u16,
            slow_slots: SLOW_SLOTS,
            slow_slot_len: 2048,
        }
    }
}

/// A frame [`DatapathState::pop_slow`] copied out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowFrame {
    /// The NIC it came from: [`Side::Lan`] (from the GN: a VIP without a tunnel, link
    /// not ready, or not IPv4) or [`Side::Wan`] (not DATA/TUN_KEEPALIVE, a fragment,
    /// another port).
    pub side: Side,
    /// Bytes written to the buffer (a whole Ethernet frame unless `truncated`).
    pub len: usize,
    /// The buffer was shorter than the frame; only `len` bytes were copied.
    pub truncated: bool,
    /// The worker (queue) that received it.
    pub worker: usize,
}

/// Counters of one worker, as [`DatapathState::worker_stats`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStats {
    /// Worker index = the NIC queue it serves.
    pub queue: usize,
    /// The core it is pinned to, if any.
    pub core: Option<usize>,
    /// Frames received from the GN-facing NIC / the WAN NIC.
    pub lan_rx: u64,
    pub wan_rx: u64,
    /// Frames put on the GN-facing NIC's / the WAN NIC's TX ring.
    pub lan_tx: u64,
    pub wan_tx: u64,
    /// RX bursts that received at least one frame (each NIC's burst counts), so the
    /// mean burst is `(lan_rx + wan_rx) / batches`.
    pub batches: u64,
    /// Frames handed to the slow queue.
    pub slow: u64,
    /// TUN_KEEPALIVEs verified and consumed.
    pub keepalives: u64,
    /// TCP SYNs and SYN-ACKs whose MSS option was clamped, both directions.
    pub mss_clamped: u64,
    /// GN packets longer than the inner MTU, handed to the control (which answers
    /// ICMP fragmentation needed or fragments them).
    pub too_big: u64,
    /// TX wake-ups (sendto) made on the GN-facing / the WAN socket.
    pub lan_kicks: u64,
    pub wan_kicks: u64,
    /// poll(2) calls made when idle.
    pub polls: u64,
    /// Where the loop's time went, in [`super::cycles_per_second`] units (AF_XDP
    /// workers; 0 on the raw path): frame work (lookup, crypto, headers), ring
    /// operations (RX, TX, completion, fill), system calls (TX wake-ups and
    /// poll(2), the time asleep included).
    pub cycles_process: u64,
    pub cycles_ring: u64,
    pub cycles_syscall: u64,
    /// Drops by reason, indexed by [`FastDrop::index`].
    pub drops: [u64; FastDrop::COUNT],
    /// Panics its supervisor caught (see [`super::supervise`]).
    pub panics: u64,
    /// Whether it forwards.
    pub state: WorkerState,
    /// The message of its last panic.
    pub last_panic: Option<String>,
    /// Where its UMEM frames are, as it last published them.
    pub frames: FrameUse,
}

/// Where a worker's UMEM frames are: a gauge, published by the worker on every turn of
/// its loop from its own frame accounting (free pool, and the port counters of frames
/// given to and taken back from the kernel). A frame the worker lost would show as
/// `held` growing; a frame the kernel kept, as `fill` or `tx` growing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameUse {
    /// Frames the worker was given from the UMEM.
    pub total: u64,
    /// In its free pool.
    pub free: u64,
    /// Given to the kernel to receive into (fill rings) and not yet taken off the RX
    /// rings.
    pub fill: u64,
    /// Put on the TX rings and not yet back from the completion rings.
    pub tx: u64,
}

impl FrameUse {
    /// Frames out of the free pool: in the kernel's rings or held by the worker.
    pub fn in_use(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }

    /// Frames out of the pool and not in any ring: those the worker holds between
    /// taking them off an RX ring and putting them on a TX ring (or back in the pool).
    pub fn held(&self) -> u64 {
        self.in_use().saturating_sub(self.fill + self.tx)
    }
}

impl WorkerStats {
    /// The count of one drop reason.
    pub fn drop_count(&self, reason: FastDrop) -> u64 {
        self.drops[reason.index()]
    }

    /// Drops of every reason, in index order.
    pub fn drops(&self) -> impl Iterator<Item = (FastDrop, u64)> + '_ {
        FastDrop::ALL.iter().map(|r| (*r, self.drops[r.index()]))
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

ntm_proto::reasons! {
    /// Indexes of the plain counters a worker publishes (its drops follow them).
    pub(crate) enum Stat {
        LanRx => "lan_rx",
        WanRx => "wan_rx",
        LanTx => "lan_tx",
        WanTx => "wan_tx",
        Batches => "batches",
        Slow => "slow",
        Keepalives => "keepalives",
        MssClamped => "mss_clamped",
        TooBig => "too_big",
        LanKicks => "lan_kicks",
        WanKicks => "wan_kicks",
        Polls => "polls",
        CyclesProcess => "cycles_process",
        CyclesRing => "cycles_ring",
        CyclesSyscall => "cycles_syscall",
    }
}

pub(crate) const STATS: usize = Stat::COUNT;
pub(crate) const COUNTERS: usize = STATS + FastDrop::COUNT;

/// A worker's counters in plain integers, owned by the worker thread; published to
/// the shared atomics once per burst.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalCounters(pub(crate) [u64; COUNTERS]);

impl Default for LocalCounters {
    fn default() -> Self {
        Self([0; COUNTERS])
    }
}

impl LocalCounters {
    #[inline]
    pub(crate) fn add(&mut self, s: Stat, n: u64) {
        self.0[s as usize] += n;
    }

    /// Sets a counter kept elsewhere (the ports' wake-up counts).
    #[inline]
    pub(crate) fn set(&mut self, s: Stat, n: u64) {
        self.0[s as usize] = n;
    }

    #[inline]
    pub(crate) fn drop(&mut self, r: FastDrop) {
        self.0[STATS + r.index()] += 1;
    }
}

#[repr(align(64))]
struct SharedCounters {
    values: [AtomicU64; COUNTERS],
    core: AtomicUsize,
    /// [`FrameUse`]: total, free, fill, tx.
    frames: [AtomicU64; 4],
}

const NO_CORE: usize = usize::MAX;

/// One worker's slow queue: a ring of preallocated slots.
struct SlowRing {
    data: Box<[u8]>,
    /// (frame length, side) of each slot.
    meta: Box<[(usize, Side)]>,
    slot_len: usize,
    head: usize,
    count: usize,
}

impl SlowRing {
    fn new(slots: usize, slot_len: usize) -> Self {
        Self {
            data: vec![0; slots * slot_len].into_boxed_slice(),
            meta: vec![(0, Side::Lan); slots].into_boxed_slice(),
            slot_len,
            head: 0,
            count: 0,
        }
    }

    fn slots(&self) -> usize {
        self.meta.len()
    }

    /// Copies `frame` in; false when full.
    fn push(&mut self, side: Side, frame: &[u8]) -> bool {
        if self.count == self.slots() {
            return false;
        }
        let i = (self.head + self.count) % self.slots();
        let n = frame.len().min(self.slot_len);
        let at = i * self.slot_len;
        self.data[at..at + n].copy_from_slice(&frame[..n]);
        self.meta[i] = (frame.len(), side);
        self.count += 1;
        true
    }

    fn pop(&mut self, buf: &mut [u8]) -> Option<(Side, usize, bool)> {
        if self.count == 0 {
            return None;
        }
        let i = self.head;
        self.head = (self.head + 1) % self.slots();
        self.count -= 1;
        let (len, side) = self.meta[i];
        let stored = len.min(self.slot_len);
        let n = stored.min(buf.len());
        let at = i * self.slot_len;
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        Some((side, n, n < len))
    }
}

/// The control thread's handle on the slow queue's eventfd. Register it with tokio's
/// `AsyncFd` (it is `AsRawFd`/`AsFd`), or block with [`SlowWaker::wait`]. After a wake-up
/// call [`SlowWaker::clear`] first, then [`DatapathState::pop_slow`] until `None`: a frame
/// queued after the clear signals again.
#[derive(Clone)]
pub struct SlowWaker(Arc<EventFd>);

impl SlowWaker {
    /// Resets the eventfd (non-blocking).
    pub fn clear(&self) {
        // EAGAIN means it was clear already.
        let _ = self.0.read();
    }

    /// Blocks until a worker signals or `timeout` passes; true if signalled.
    pub fn wait(&self, timeout: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        matches!(poll(&mut fds, ms), Ok(n) if n > 0)
    }

    fn signal(&self) {
        // EAGAIN (counter at its maximum) still leaves it readable.
        let _ = self.0.write(1);
    }
}

impl AsRawFd for SlowWaker {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for SlowWaker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// State shared by the control thread and the workers of a datapath (AF_XDP or raw):
/// what [`crate::datapath::Datapath`]'s operations act on. Every method takes `&self`.
pub struct DatapathState {
    table: Arc<ArcSwap<Snapshot>>,
    control: Mutex<ControlTable>,
    ntm_port: u16,
    inner_mtu: u16,
    epoch: Instant,
    slow: Box<[Mutex<SlowRing>]>,
    slow_next: AtomicUsize,
    waker: SlowWaker,
    counters: Box<[SharedCounters]>,
    health: Box<[Health]>,
}

impl std::fmt::Debug for DatapathState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathState")
            .field("workers", &self.counters.len())
            .field("tunnels", &self.table.load().len())
            .finish_non_exhaustive()
    }
}

/// The eventfd could not be made.
#[derive(Debug, thiserror::Error)]
#[error("creating the slow-queue eventfd failed: {0} (out of file descriptors?)")]
pub struct WakerError(#[from] nix::Error);

impl DatapathState {
    /// An empty data plane (no link, no tunnels) for `cfg.workers` workers.
    /// [`super::AfXdp::start`] and [`crate::rawpath::RawPath::start`] make one; tests and
    /// benches can make their own.
    pub fn new(cfg: &DatapathStateConfig) -> Result<DatapathState, WakerError> {
        let workers = cfg.workers.max(1);
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(DatapathState {
            table: Arc::new(ArcSwap::from_pointee(Snapshot {
                ntm_port: cfg.ntm_port,
                inner_mtu: cfg.inner_mtu,
                ..Snapshot::default()
            })),
            control: Mutex::new(ControlTable::default()),
            ntm_port: cfg.ntm_port,
            inner_mtu: cfg.inner_mtu,
            epoch: Instant::now(),
            slow: (0..workers)
                .map(|_| Mutex::new(SlowRing::new(cfg.slow_slots.max(1), cfg.slow_slot_len)))
                .collect(),
            slow_next: AtomicUsize::new(0),
            waker: SlowWaker(Arc::new(efd)),
            counters: (0..workers)
                .map(|_| SharedCounters {
                    values: std::array::from_fn(|_| AtomicU64::new(0)),
                    core: AtomicUsize::new(NO_CORE),
                    frames: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
            health: (0..workers).map(|_| Health::default()).collect(),
        })
    }

    fn control(&self) -> MutexGuard<'_, ControlTable> {
        // A panic elsewhere while holding it leaves a consistent table (each
        // operation publishes only after it is done).
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, t: &ControlTable) {
        self.table
            .store(Arc::new(t.snapshot(self.ntm_port, self.inner_mtu)));
    }

    /// Sets the adapter's link addresses; `None` = not ready (uplink frames go to the
    /// slow queue, downlink DATA is dropped as [`FastDrop::NotReady`]).
    pub fn set_link(&self, link: Option<Link>) {
        let mut t = self.control();
        t.set_link(link);
        self.publish(&t);
    }

    /// Replaces the whole GN set. Uplink takes packets only from these VIPs, each
    /// through its own tunnels (a tunnel belongs to the GN of its `local_vip`); DATA
    /// goes to the MAC of its tunnel's GN, and is dropped as [`FastDrop::NotReady`]
    /// while that GN is not in the set or its MAC is unknown. The Ethernet headers
    /// towards the GNs are made here, once.
    pub fn set_gns(&self, gns: &[GnLink]) {
        let mut t = self.control();
        t.set_gns(gns);
        self.publish(&t);
    }

    /// Installs a tunnel for receiving, at [`ntm_proto::node::Event::TunnelAdded`]
    /// (the DC's ROUTE_DIR accepted, before any TUN_REQ or TUN_RESP goes out): its
    /// DATA and TUN_KEEPALIVE are checked and delivered from the next burst on, while
    /// uplink packets to its peer still go to the slow queue (or to an older tunnel to
    /// the same VIP that is up). Both direction keys are prepared here, once. The same
    /// tunnel again (id, suite, keys and peer VIP) keeps its replay window, counters
    /// and whether it sends; only endpoint and path change. Anything else with this
    /// id replaces it. [`ntm_proto::Error::UnsupportedSuite`] for a suite other than 1
    /// and 2 (nothing changes then).
    pub fn add_tunnel(&self, tunnel: &TunnelParams) -> ntm_proto::Result<()> {
        self.upsert(tunnel, false)
    }

    /// Starts sending on a tunnel, at [`ntm_proto::node::Event::TunnelUp`]; installs
    /// it first when [`DatapathState::add_tunnel`] did not. Uplink packets to its peer VIP
    /// use it from the next burst on (from its GN, `local_vip`, while that GN is in the
    /// GN set); when two tunnels of one GN lead to one VIP, the one that came up last
    /// carries the uplink.
    pub fn tunnel_up(&self, tunnel: &TunnelParams) -> ntm_proto::Result<()> {
        self.upsert(tunnel, true)
    }

    fn upsert(&self, tunnel: &TunnelParams, send: bool) -> ntm_proto::Result<()> {
        let mut t = self.control();
        t.upsert(tunnel, send)?;
        self.publish(&t);
        Ok(())
    }

    /// Removes a tunnel (no-op when unknown). Its DATA then counts as
    /// [`FastDrop::UnknownTunnel`]; uplink to its VIP goes to the slow queue.
    pub fn remove_tunnel(&self, tunnel_id: u32) {
        let mut t = self.control();
        if t.tunnels.remove(&tunnel_id).is_some() {
            self.publish(&t);
        }
    }

    /// Moves a tunnel's endpoint (roaming, decided by the control side). Takes effect
    /// for the next packet, without a new snapshot. False when the tunnel is unknown.
    pub fn set_endpoint(&self, tunnel_id: u32, endpoint: SocketAddrV4) -> bool {
        let t = self.control();
        match t.tunnels.get(&tunnel_id) {
            Some(e) => {
                e.tunnel.set_endpoint(endpoint);
                true
            }
            None => false,
        }
    }

    /// Counters and activity of every tunnel, by tunnel id.
    pub fn tunnel_stats(&self) -> Vec<TunnelStats> {
        let t = self.control();
        let mut v: Vec<TunnelStats> = t
            .tunnels
            .values()
            .map(|e| e.tunnel.stats(self.epoch, e.sending))
            .collect();
        v.sort_by_key(|s| s.tunnel_id);
        v
    }

    /// Counters of every worker, by queue.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.counters
            .iter()
            .enumerate()
            .zip(self.health.iter())
            .map(|((queue, c), h)| {
                let v = |i: usize| c.values[i].load(Ordering::Relaxed);
                let core = c.core.load(Ordering::Relaxed);
                WorkerStats {
                    queue,
                    core: (core != NO_CORE).then_some(core),
                    lan_rx: v(Stat::LanRx as usize),
                    wan_rx: v(Stat::WanRx as usize),
                    lan_tx: v(Stat::LanTx as usize),
                    wan_tx: v(Stat::WanTx as usize),
                    batches: v(Stat::Batches as usize),
                    slow: v(Stat::Slow as usize),
                    keepalives: v(Stat::Keepalives as usize),
                    mss_clamped: v(Stat::MssClamped as usize),
                    too_big: v(Stat::TooBig as usize),
                    lan_kicks: v(Stat::LanKicks as usize),
                    wan_kicks: v(Stat::WanKicks as usize),
                    polls: v(Stat::Polls as usize),
                    cycles_process: v(Stat::CyclesProcess as usize),
                    cycles_ring: v(Stat::CyclesRing as usize),
                    cycles_syscall: v(Stat::CyclesSyscall as usize),
                    drops: std::array::from_fn(|i| v(STATS + i)),
                    panics: h.panics(),
                    state: h.state(),
                    last_panic: h.last_panic(),
                    frames: {
                        let f = |i: usize| c.frames[i].load(Ordering::Relaxed);
                        FrameUse {
                            total: f(0),
                            free: f(1),
                            fill: f(2),
                            tx: f(3),
                        }
                    },
                }
            })
            .collect()
    }

    /// Drops of each reason summed over workers.
    pub fn drop_totals(&self) -> [u64; FastDrop::COUNT] {
        let mut out = [0; FastDrop::COUNT];
        for w in self.worker_stats() {
            for (o, d) in out.iter_mut().zip(w.drops) {
                *o += d;
            }
        }
        out
    }

    /// Copies the next frame of the slow queues (round robin over workers) into `buf`.
    /// A buffer of [`DatapathStateConfig::slow_slot_len`] bytes never truncates.
    pub fn pop_slow(&self, buf: &mut [u8]) -> Option<SlowFrame> {
        let n = self.slow.len();
        let start = self.slow_next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let worker = (start + k) % n;
            let got = self.slow[worker]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop(buf);
            if let Some((side, len, truncated)) = got {
                return Some(SlowFrame {
                    side,
                    len,
                    truncated,
                    worker,
                });
            }
        }
        None
    }

    /// What the control thread waits on for slow frames.
    pub fn slow_waker(&self) -> SlowWaker {
        self.waker.clone()
    }

    /// The current table snapshot (what workers see now).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.table.load_full()
    }

    /// Nanoseconds since this data plane was made: the clock of [`super::encap::downlink`].
    pub fn now_nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.counters.len()
    }

    /// Makes worker `queue` panic at the next frame it handles (`ntma debug
    /// panic-worker`, debug builds only), to exercise its supervisor.
    #[cfg(debug_assertions)]
    pub fn inject_panic(&self, queue: usize) -> Result<(), String> {
        let h = self
            .health
            .get(queue)
            .ok_or_else(|| format!("no worker {queue}: the datapath has {}", self.health.len()))?;
        h.inject_panic();
        Ok(())
    }

    // ---- worker side

    pub(crate) fn health(&self, worker: usize) -> &Health {
        &self.health[worker]
    }

    pub(crate) fn table(&self) -> &Arc<ArcSwap<Snapshot>> {
        &self.table
    }

    /// Queues a frame for the control thread; returns (queued, queue was empty before).
    pub(crate) fn push_slow(&self, worker: usize, side: Side, frame: &[u8]) -> (bool, bool) {
        let mut q = self.slow[worker].lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = q.count == 0;
        (q.push(side, frame), was_empty)
    }

    pub(crate) fn wake_control(&self) {
        self.waker.signal();
    }

    pub(crate) fn publish_counters(&self, worker: usize, local: &LocalCounters) {
        let c = &self.counters[worker];
        for (a, v) in c.values.iter().zip(local.0.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
    }

    /// A worker's [`FrameUse`] (a gauge: stored as it is now).
    pub(crate) fn publish_frames(&self, worker: usize, f: FrameUse) {
        let c = &self.counters[worker].frames;
        for (a, v) in c.iter().zip([f.total, f.free, f.fill, f.tx]) {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_core(&self, worker: usize, core: Option<usize>) {
        self.counters[worker]
            .core
            .store(core.unwrap_or(NO_CORE), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_queue_is_bounded_fifo_and_wakes() {
        let dp = DatapathState::new(&DatapathStateConfig {
            workers: 2,
            slow_slots: 2,
            slow_slot_len: 8,
            ..DatapathStateConfig::default()
        })
        .unwrap();
        let w = dp.slow_waker();
        assert!(!w.wait(Duration::ZERO));
        assert_eq!(dp.push_slow(0, Side::Lan, b"one"), (true, true));
        assert_eq!(dp.push_slow(0, Side::Wan, b"two"), (true, false));
        assert_eq!(dp.push_slow(0, Side::Lan, b"three"), (false, false));
        assert_eq!(dp.push_slow(1, Side::Lan, b"0123456789"), (true, true));
        dp.wake_control();
        assert!(w.wait(Duration::ZERO));
        w.clear();
        assert!(!w.wait(Duration::ZERO));
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        while let Some(f) = dp.pop_slow(&mut buf) {
            got.push((f.worker, f.side, buf[..f.len].to_vec(), f.truncated));
        }
        got.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
        assert_eq!(
            got,
            vec![
                (0, Side::Lan, b"one".to_vec(), false),
                (0, Side::Wan, b"two".to_vec(), false),
                // Longer than a slot: stored truncated, and says so.
                (1, Side::Lan, b"01234567".to_vec(), true),
            ]
        );
        // A short buffer truncates too.
        dp.push_slow(1, Side::Wan, b"abcdef");
        let f = dp.pop_slow(&mut buf[..2]).unwrap();
        assert_eq!((f.len, f.truncated, &buf[..2]), (2, true, &b"ab"[..]));
    }

    #[test]
    fn counters_publish() {
        let dp = DatapathState::new(&DatapathStateConfig::default()).unwrap();
        let mut l = LocalCounters::default();
        l.add(Stat::WanRx, 3);
        l.add(Stat::CyclesRing, 7);
        l.set(Stat::LanKicks, 4);
        l.drop(FastDrop::BadTag);
        l.drop(FastDrop::BadTag);
        dp.publish_counters(0, &l);
        dp.set_core(0, Some(1));
        let frames = FrameUse {
            total: 100,
            free: 60,
            fill: 30,
            tx: 7,
        };
        dp.publish_frames(0, frames);
        let s = &dp.worker_stats()[0];
        assert_eq!((s.wan_rx, s.core), (3, Some(1)));
        assert_eq!((s.cycles_ring, s.lan_kicks, s.wan_kicks), (7, 4, 0));
        assert_eq!(s.frames, frames);
        assert_eq!((frames.in_use(), frames.held()), (40, 3));
        assert_eq!(s.drop_count(FastDrop::BadTag), 2);
        assert_eq!(s.total_drops(), 2);
        assert_eq!(dp.drop_totals()[FastDrop::BadTag.index()], 2);
    }
}
