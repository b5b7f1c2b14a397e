//! The raw-socket datapath: ntma's fallback for hosts without AF_XDP, and the method of
//! the original NTMA paper (a userspace relay between a raw socket and a UDP socket).
//!
//! One worker thread moves both directions:
//!
//! * GN → tunnel: an AF_PACKET socket on the GN-facing NIC receives (with a classic BPF
//!   filter, [`filter::fast_path`]) the frames the `ntma_lan` XDP program would redirect
//!   and those to VIPs from outside the GN set or between GNs, which
//!   [`crate::fastpath::encap::uplink`] sorts out as XDP does; it encapsulates the GNs'
//!   packets in place; the NTM datagram leaves through the tunnel's UDP socket
//!   (`sendmmsg`), whose kernel writes the outer IPv4/UDP headers.
//! * tunnel → GN: `recvmmsg` on the same UDP socket; each datagram gets the outer
//!   headers the kernel stripped back ([`Outer::emit`]) and goes through
//!   [`crate::fastpath::encap::downlink`] (the order of checks of §5); the inner packet
//!   leaves towards the GN as an Ethernet frame on the AF_PACKET socket.
//!
//! [`RawPath`] is a [`Datapath`] built on the fast path's [`DatapathState`]: the same tunnel
//! table, operations, counters and drop reasons. The control side drives it as it drives
//! the AF_XDP datapath, with two differences in what it reads: the UDP socket belongs to
//! this worker ([`Datapath::reads_tunnel_socket`]: signaling datagrams reach the control
//! through the slow queue as [`Side::Wan`] frames, which it already parses), and the
//! control's own raw socket on the GN side should carry [`filter::slow_path`] so that
//! it does not also see the fast path's frames.
//!
//! Per batch (not per packet) the worker makes one `recvmmsg` and one `sendmmsg` per
//! direction and builds the small I/O vectors nix wants; there is no lock per packet.
//! What it costs beyond the AF_XDP path — the kernel's socket layers on both sides and
//! a copy into and out of userspace per packet — is what `perf` measures.

pub mod filter;

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recvmmsg, sendmmsg, socket, AddressFamily, MsgFlags, MultiHeaders, SockFlag,
    SockProtocol, SockType, SockaddrIn,
};

use crate::datapath::{limits, Datapath, DatapathKind};
use crate::fastpath::encap::{downlink, uplink, DownVerdict, UpVerdict, ENCAP_GROW, ENCAP_TAIL};
use crate::fastpath::supervise::{supervise, Loop, Policy};
use crate::fastpath::{
    DatapathState, DatapathStateConfig, FastDrop, LocalCounters, Side, Snapshot, Stat, WakerError,
};
use crate::os::sys::{interface, IfaceError};
pub use filter::Classify;

use crate::wire::outer::{self, Outer, OUTER_LEN};

/// The Ethernet header of a frame rebuilt around a datagram from the UDP socket: no
/// addresses (`downlink` reads none), EtherType IPv4.
const REBUILT_ETH: [u8; 14] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];

/// Bytes per packet buffer: a GN frame of up to 1514 bytes with the headroom and
/// tailroom of encapsulation, or a tunnel datagram behind [`OUTER_LEN`] bytes of headers.
const BUF: usize = 2048;
/// The worker thread's name.
const THREAD: &str = "ntma-raw";
/// Longest sleep when idle: bounds how long [`RawPath::stop`] waits.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How long a full socket buffer may hold up a send before the rest of the batch is
/// given up (and counted in [`Datapath::tx_errors`]).
const TX_PATIENCE: Duration = Duration::from_millis(5);

/// Configuration of the raw datapath.
#[derive(Debug)]
pub struct RawConfig {
    /// GN-facing NIC (in the calling thread's network namespace).
    pub lan_if: String,
    /// The tunnel socket, bound to the NTM port (the daemon's signaling socket, or a
    /// `try_clone` of it): this worker reads it; sends from other threads are fine.
    pub wan: UdpSocket,
    /// What counts as fast-path traffic from the GN.
    pub classify: Classify,
    /// Core to pin the worker to.
    pub core: Option<usize>,
    /// Packets per `recvmmsg`/`sendmmsg` (`datapath.batch`, checked against
    /// [`limits::batch`]).
    pub batch: usize,
    /// Spin instead of sleeping in poll(2) when idle.
    pub busy_poll: bool,
    /// Slots of the slow queue.
    pub slow_slots: usize,
    /// Inner MTU (§5 "MTU": the uplink's MTU − 60).
    pub inner_mtu: u16,
}

/// Why the raw datapath did not start; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The configuration is not usable.
    #[error("invalid raw datapath configuration: {0}")]
    Config(String),
    /// The GN-facing interface is missing.
    #[error(transparent)]
    Interface(#[from] IfaceError),
    /// A socket operation failed.
    #[error("raw datapath: {what}: {source} (needs root / CAP_NET_RAW)")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The slow-queue eventfd could not be made.
    #[error(transparent)]
    Waker(#[from] WakerError),
    /// The worker could not be pinned.
    #[error("pinning the raw datapath worker to core {0} failed (is the core online and in this process's cpuset?)")]
    Pin(usize),
    /// The worker thread could not be started.
    #[error("starting the raw datapath worker failed: {0}")]
    Spawn(std::io::Error),
}

fn sock_err(what: &'static str) -> impl FnOnce(Errno) -> RawError {
    move |e| RawError::Socket {
        what,
        source: e.into(),
    }
}

/// A running raw datapath; [`RawPath::stop`] or drop stops it.
pub struct RawPath {
    state: Arc<DatapathState>,
    stop: Arc<AtomicBool>,
    tx_errors: Arc<AtomicU64>,
    swap: Arc<WanSwap>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RawPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPath").finish_non_exhaustive()
    }
}

impl RawPath {
    /// Opens the GN-side raw socket and starts the worker, in the calling thread's
    /// network namespace. Its data plane has no link and no tunnel yet.
    pub fn start(cfg: RawConfig) -> Result<RawPath, RawError> {
        limits::batch(cfg.batch, limits::MAX_BATCH)
            .and_then(|()| limits::cores(cfg.core.as_slice()))
            .map_err(|e| RawError::Config(e.to_string()))?;
        let wan_local = tunnel_socket_addr(&cfg.wan)?;
        let lan = open_lan(&cfg.lan_if, &cfg.classify)?;
        let state = Arc::new(DatapathState::new(&DatapathStateConfig {
            workers: 1,
            ntm_port: wan_local.port(),
            inner_mtu: cfg.inner_mtu,
            slow_slots: cfg.slow_slots.max(1),
            slow_slot_len: BUF,
        })?);
        let stop = Arc::new(AtomicBool::new(false));
        let tx_errors = Arc::new(AtomicU64::new(0));
        let swap = Arc::new(WanSwap::default());
        let mut worker = Worker {
            lan,
            wan: cfg.wan,
            wan_local,
            swap: Arc::clone(&swap),
            dp: Arc::clone(&state),
            batch: cfg.batch,
            busy_poll: cfg.busy_poll,
            up: vec![0; cfg.batch * BUF],
            down: vec![0; cfg.batch * BUF],
            lens: Vec::with_capacity(cfg.batch),
            froms: Vec::with_capacity(cfg.batch),
            wan_tx: Vec::with_capacity(cfg.batch),
            lan_tx: Vec::with_capacity(cfg.batch),
            local: LocalCounters::default(),
            tx_errors: Arc::clone(&tx_errors),
            wake_slow: false,
            stop: Arc::clone(&stop),
        };
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), RawError>>(1);
        let core = cfg.core;
        let thread = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || {
                if let Some(c) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                        let _ = ready_tx.send(Err(RawError::Pin(c)));
                        return;
                    }
                }
                worker.dp.set_core(0, core);
                // Its sockets are open and bound, it is pinned: the loop needs no
                // privilege (a new tunnel socket comes from the control). Dropped
                // before it reports, so that none is left once `start` returns.
                crate::privs::drop_all();
                let _ = ready_tx.send(Ok(()));
                drop(ready_tx);
                let (dp, stop) = (Arc::clone(&worker.dp), Arc::clone(&worker.stop));
                supervise(dp.health(0), 0, &stop, &Policy::default(), &mut worker);
            })
            .map_err(RawError::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(RawPath {
                state,
                stop,
                tx_errors,
                swap,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(RawError::Spawn(std::io::Error::other(
                    "the worker thread died during set-up",
                )))
            }
        }
    }

    /// Replaces the tunnel socket the worker reads and sends on (the uplink's address
    /// changed and the daemon bound a socket to the new one); the worker takes it at
    /// its next burst and closes its descriptor of the old one.
    pub fn replace_wan(&self, wan: UdpSocket) -> Result<(), RawError> {
        let local = tunnel_socket_addr(&wan)?;
        *self.swap.next.lock().unwrap_or_else(|p| p.into_inner()) = Some((wan, local));
        self.swap.pending.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops and joins the worker, which closes the raw socket (the tunnel socket is
    /// closed when its last descriptor is).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Datapath for RawPath {
    fn state(&self) -> &Arc<DatapathState> {
        &self.state
    }

    fn kind(&self) -> DatapathKind {
        DatapathKind::Raw
    }

    fn mode(&self) -> String {
        "raw".into()
    }

    fn worker_thread(&self, _queue: usize) -> String {
        THREAD.into()
    }

    fn stop(&mut self) {
        self.shutdown();
    }

    /// Packets a socket refused to send (no route, buffers full for longer than a few
    /// milliseconds): the one loss the data plane's drop reasons do not cover.
    fn tx_errors(&self) -> u64 {
        self.tx_errors.load(Ordering::Relaxed)
    }

    fn reads_tunnel_socket(&self) -> bool {
        true
    }

    fn replace_tunnel_socket(&self, wan: &UdpSocket) -> std::io::Result<()> {
        self.replace_wan(wan.try_clone()?)
            .map_err(std::io::Error::other)
    }
}

impl Drop for RawPath {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The address a tunnel socket is bound to: IPv4, the NTM port.
fn tunnel_socket_addr(wan: &UdpSocket) -> Result<SocketAddrV4, RawError> {
    match wan.local_addr() {
        Ok(SocketAddr::V4(a)) if a.port() != 0 => Ok(a),
        Ok(a) => Err(RawError::Config(format!(
            "the tunnel socket must be bound to an IPv4 address and the NTM port (it is bound to {a})"
        ))),
        Err(source) => Err(RawError::Socket {
            what: "reading the tunnel socket's address",
            source,
        }),
    }
}

/// Attaches [`filter::slow_path`] to a raw socket (e.g. the control's AF_PACKET socket
/// on the GN side), so that it no longer sees the frames the raw datapath takes.
pub fn attach_slow_path_filter(fd: &impl AsFd, c: &Classify) -> std::io::Result<()> {
    socket2::SockRef::from(fd).attach_filter(&filter::to_sock_filter(&filter::slow_path(c)))
}

/// An AF_PACKET socket on `ifname` that receives the fast path's frames only.
fn open_lan(ifname: &str, c: &Classify) -> Result<OwnedFd, RawError> {
    let iface = interface(ifname)?;
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .map_err(sock_err("opening the GN-side AF_PACKET socket"))?;
    // The filter goes on before the bind, so that from the bind on only our frames queue.
    socket2::SockRef::from(&fd)
        .attach_filter(&filter::to_sock_filter(&filter::fast_path(c)))
        .map_err(|source| RawError::Socket {
            what: "attaching the fast-path filter",
            source,
        })?;
    // getifaddrs' address of the interface: its index, protocol 0 (keeps EthAll).
    bind(fd.as_raw_fd(), &iface.link).map_err(sock_err("binding the AF_PACKET socket"))?;
    // Frames of other interfaces that queued before the bind.
    let mut junk = [0u8; 64];
    while nix::sys::socket::recv(fd.as_raw_fd(), &mut junk, MsgFlags::MSG_DONTWAIT).is_ok() {}
    Ok(fd)
}

/// A tunnel socket handed from the daemon to the worker (the uplink's address changed).
#[derive(Default)]
struct WanSwap {
    pending: AtomicBool,
    next: Mutex<Option<(UdpSocket, SocketAddrV4)>>,
}

struct Worker {
    lan: OwnedFd,
    wan: UdpSocket,
    wan_local: SocketAddrV4,
    swap: Arc<WanSwap>,
    dp: Arc<DatapathState>,
    batch: usize,
    busy_poll: bool,
    /// `batch` buffers of [`BUF`] bytes for each direction.
    up: Vec<u8>,
    down: Vec<u8>,
    /// Received lengths (None: truncated) and sources of the current burst.
    lens: Vec<Option<usize>>,
    froms: Vec<Option<SocketAddrV4>>,
    /// (buffer index, start, end, destination) of datagrams to send on the WAN.
    wan_tx: Vec<(usize, usize, usize, SocketAddrV4)>,
    /// (buffer index, start, end) of frames to send to the GN.
    lan_tx: Vec<(usize, usize, usize)>,
    local: LocalCounters,
    tx_errors: Arc<AtomicU64>,
    wake_slow: bool,
    stop: Arc<AtomicBool>,
}

/// Runs under [`supervise`]: restarted after a panic.
impl Loop for Worker {
    fn run(&mut self) {
        Worker::run(self);
    }

    /// Nothing to give back: each burst starts from its own buffers, and a
    /// datagram or frame of the interrupted burst is lost, as on a full ring.
    /// Frames it queued for the control may not have woken it: wake it.
    fn recover(&mut self) {
        self.wake_slow = true;
    }
}

impl Worker {
    fn run(&mut self) {
        let mut cache = arc_swap::Cache::new(Arc::clone(self.dp.table()));
        while !self.stop.load(Ordering::Relaxed) {
            if self.swap.pending.load(Ordering::Acquire) {
                self.take_new_wan();
            }
            let snap = Arc::clone(cache.load());
            let now = self.dp.now_nanos(Instant::now());
            let up = self.uplink_burst(&snap);
            let down = self.downlink_burst(|| Arc::clone(cache.load()), now);
            if std::mem::take(&mut self.wake_slow) {
                self.dp.wake_control();
            }
            if up + down > 0 {
                self.local.add(Stat::Batches, 1);
                self.dp.publish_counters(0, &self.local);
            } else if self.busy_poll {
                std::hint::spin_loop();
            } else {
                let mut fds = [
                    PollFd::new(self.lan.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.wan.as_fd(), PollFlags::POLLIN),
                ];
                let _ = poll(
                    &mut fds,
                    PollTimeout::try_from(IDLE_WAIT).unwrap_or(PollTimeout::MAX),
                );
            }
        }
        self.dp.publish_counters(0, &self.local);
    }

    /// Debug builds: where `ntma debug panic-worker` makes the worker panic
    /// (release builds have nothing here).
    #[inline(always)]
    fn fault_point(&self) {
        #[cfg(debug_assertions)]
        self.dp.health(0).fault_point(0);
    }

    /// GN → tunnel: one `recvmmsg` on the raw socket, encapsulation, one `sendmmsg`.
    fn uplink_burst(&mut self, snap: &Snapshot) -> usize {
        self.lens.clear();
        {
            let mut hdrs = MultiHeaders::<()>::preallocate(self.batch, None);
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                .up
                .chunks_mut(BUF)
                .map(|b| [IoSliceMut::new(&mut b[ENCAP_GROW..BUF - ENCAP_TAIL])])
                .collect();
            if let Ok(got) = recvmmsg(
                self.lan.as_raw_fd(),
                &mut hdrs,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                for m in got {
                    let whole = !m.flags.contains(MsgFlags::MSG_TRUNC);
                    self.lens.push(whole.then_some(m.bytes));
                }
            }
        }
        let n = self.lens.len();
        self.local.add(Stat::LanRx, n as u64);
        self.wan_tx.clear();
        for i in 0..n {
            // Debug builds: `ntma debug panic-worker` panics here, mid-burst.
            self.fault_point();
            let Some(len) = self.lens[i] else {
                // Longer than any frame the GN may send (a GSO super-frame on veth).
                self.local.drop(FastDrop::LanTooBig);
                continue;
            };
            let buf = &mut self.up[i * BUF..(i + 1) * BUF];
            match uplink(snap, &mut buf[..ENCAP_GROW + len + ENCAP_TAIL], len) {
                v @ (UpVerdict::Tx(m) | UpVerdict::TxClamped(m)) => {
                    if matches!(v, UpVerdict::TxClamped(_)) {
                        self.local.add(Stat::MssClamped, 1);
                    }
                    match outer::datagram(&buf[..m]) {
                        Some((dst, _)) => self.wan_tx.push((i, OUTER_LEN, m, dst)),
                        None => self.local.drop(FastDrop::NoRoom),
                    }
                }
                v @ (UpVerdict::Slow | UpVerdict::TooBig) => {
                    if v == UpVerdict::TooBig {
                        self.local.add(Stat::TooBig, 1);
                    }
                    let frame = &self.up[i * BUF + ENCAP_GROW..i * BUF + ENCAP_GROW + len];
                    self.hand_to_slow(Side::Lan, frame_copy(frame));
                }
                UpVerdict::Drop(why) => self.local.drop(why),
            }
        }
        if !self.wan_tx.is_empty() {
            let sent = send_all(&self.wan, &self.up, &self.wan_tx, self.batch);
            self.local.add(Stat::WanTx, sent as u64);
            self.count_unsent(self.wan_tx.len() - sent);
        }
        n
    }

    /// The tunnel socket the daemon handed over with [`RawPath::replace_wan`].
    fn take_new_wan(&mut self) {
        let next = self
            .swap
            .next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.swap.pending.store(false, Ordering::Release);
        if let Some((wan, local)) = next {
            self.wan = wan;
            self.wan_local = local;
        }
    }

    /// Tunnel → GN: one `recvmmsg` on the UDP socket, the table snapshot (taken after
    /// the datagrams, so that every tunnel published before they arrived is in it),
    /// opening and checks, one `sendmmsg` on the raw socket.
    fn downlink_burst(&mut self, snapshot: impl FnOnce() -> Arc<Snapshot>, now: u64) -> usize {
        self.lens.clear();
        self.froms.clear();
        {
            let mut hdrs = MultiHeaders::<SockaddrIn>::preallocate(self.batch, None);
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                .down
                .chunks_mut(BUF)
                .map(|b| [IoSliceMut::new(&mut b[OUTER_LEN..])])
                .collect();
            if let Ok(got) = recvmmsg(
                self.wan.as_raw_fd(),
                &mut hdrs,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                for m in got {
                    let whole = !m.flags.contains(MsgFlags::MSG_TRUNC);
                    self.lens.push(whole.then_some(m.bytes));
                    self.froms
                        .push(m.address.map(|a| SocketAddrV4::new(a.ip(), a.port())));
                }
            }
        }
        let n = self.lens.len();
        self.local.add(Stat::WanRx, n as u64);
        self.lan_tx.clear();
        if n == 0 {
            return 0;
        }
        let snap = snapshot();
        let snap = &*snap;
        for i in 0..n {
            self.fault_point();
            let (Some(len), Some(from)) = (self.lens[i], self.froms[i]) else {
                self.local.drop(FastDrop::WanMalformed);
                continue;
            };
            let buf = &mut self.down[i * BUF..(i + 1) * BUF];
            let headers = Outer {
                eth: &REBUILT_ETH,
                from,
                to: self.wan_local,
                ident: 0,
            };
            if !headers.emit(buf, len) {
                self.local.drop(FastDrop::WanMalformed);
                continue;
            }
            let frame_len = OUTER_LEN + len;
            match downlink(snap, &mut buf[..frame_len], now) {
                DownVerdict::Tx { offset, len } => self.lan_tx.push((i, offset, offset + len)),
                DownVerdict::TxClamped { offset, len } => {
                    self.local.add(Stat::MssClamped, 1);
                    self.lan_tx.push((i, offset, offset + len));
                }
                DownVerdict::Consumed => self.local.add(Stat::Keepalives, 1),
                // Signaling: the control parses the frame as the XDP path would give it.
                DownVerdict::Slow => {
                    let frame = frame_copy(&self.down[i * BUF..i * BUF + frame_len]);
                    self.hand_to_slow(Side::Wan, frame);
                }
                DownVerdict::Drop(why) => self.local.drop(why),
            }
        }
        if !self.lan_tx.is_empty() {
            let sent = send_frames(&self.lan, &self.down, &self.lan_tx);
            self.local.add(Stat::LanTx, sent as u64);
            self.count_unsent(self.lan_tx.len() - sent);
        }
        n
    }

    fn hand_to_slow(&mut self, side: Side, frame: SlowCopy) {
        let (queued, was_empty) = self.dp.push_slow(0, side, &frame.bytes[..frame.len]);
        if queued {
            self.local.add(Stat::Slow, 1);
            self.wake_slow |= was_empty;
        } else {
            self.local.drop(FastDrop::SlowQueueFull);
        }
    }

    fn count_unsent(&self, n: usize) {
        if n > 0 {
            self.tx_errors.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// A frame copied off a burst buffer, so that the buffer's borrow ends before the slow
/// queue's lock is taken (slow frames are rare: the copy is not on the fast path).
struct SlowCopy {
    bytes: [u8; BUF],
    len: usize,
}

fn frame_copy(frame: &[u8]) -> SlowCopy {
    let len = frame.len().min(BUF);
    let mut bytes = [0u8; BUF];
    bytes[..len].copy_from_slice(&frame[..len]);
    SlowCopy { bytes, len }
}

/// Sends the datagrams `list` names out of `bufs` on the UDP socket, each to its
/// destination; waits for buffer space up to [`TX_PATIENCE`]. Returns how many went.
fn send_all(
    sock: &UdpSocket,
    bufs: &[u8],
    list: &[(usize, usize, usize, SocketAddrV4)],
    batch: usize,
) -> usize {
    let mut hdrs = MultiHeaders::<SockaddrIn>::preallocate(batch, None);
    let addrs: Vec<Option<SockaddrIn>> = list.iter().map(|t| Some(SockaddrIn::from(t.3))).collect();
    let slices: Vec<[IoSlice<'_>; 1]> = list
        .iter()
        .map(|&(i, a, b, _)| [IoSlice::new(&bufs[i * BUF + a..i * BUF + b])])
        .collect();
    send_loop(sock.as_fd(), list.len(), |from| {
        sendmmsg(
            sock.as_raw_fd(),
            &mut hdrs,
            &slices[from..],
            &addrs[from..],
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map(Iterator::count)
    })
}

/// Sends the frames `list` names out of `bufs` on the bound raw socket.
fn send_frames(fd: &OwnedFd, bufs: &[u8], list: &[(usize, usize, usize)]) -> usize {
    let mut hdrs = MultiHeaders::<()>::preallocate(list.len(), None);
    let addrs: Vec<Option<()>> = vec![None; list.len()];
    let slices: Vec<[IoSlice<'_>; 1]> = list
        .iter()
        .map(|&(i, a, b)| [IoSlice::new(&bufs[i * BUF + a..i * BUF + b])])
        .collect();
    send_loop(fd.as_fd(), list.len(), |from| {
        sendmmsg(
            fd.as_raw_fd(),
            &mut hdrs,
            &slices[from..],
            &addrs[from..],
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map(Iterator::count)
    })
}

/// Calls `send(from)` until all `total` went: a full buffer waits for room (up to
/// [`TX_PATIENCE`]), any other error skips the message it stopped at.
fn send_loop(
    fd: std::os::fd::BorrowedFd<'_>,
    total: usize,
    mut send: impl FnMut(usize) -> nix::Result<usize>,
) -> usize {
    let (mut done, mut sent) = (0, 0);
    let deadline = Instant::now() + TX_PATIENCE;
    while done < total {
        match send(done) {
            Ok(0) => break,
            Ok(k) => {
                done += k;
                sent += k;
            }
            Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(
                    &mut fds,
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO),
                );
            }
            Err(Errno::EINTR) => {}
            // No route, ICMP error reported on the socket, ...: this one is lost.
            Err(_) => done += 1,
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_loop_retries_skips_and_gives_up() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Two go, then a refused one is skipped, then the rest.
        let mut calls = 0;
        let sent = send_loop(sock.as_fd(), 5, |from| {
            calls += 1;
            match from {
                0 => Ok(2),
                2 => Err(Errno::EHOSTUNREACH),
                _ => Ok(5 - from),
            }
        });
        assert_eq!((sent, calls), (4, 3));
        // A buffer that never drains: given up after TX_PATIENCE.
        let sent = send_loop(sock.as_fd(), 3, |_| Err(Errno::EAGAIN));
        assert_eq!(sent, 0);
        let sent = send_loop(sock.as_fd(), 3, |_| Ok(0));
        assert_eq!(sent, 0);
    }

    /// A raw datapath on `lo` with `wan` as its tunnel socket.
    fn lo_config(wan: UdpSocket, batch: usize) -> RawConfig {
        RawConfig {
            lan_if: "lo".into(),
            wan,
            classify: Classify {
                vip_net: "100.64.0.0".parse().unwrap(),
                vip_prefix_len: 10,
                router: "100.64.0.1".parse().unwrap(),
            },
            core: None,
            batch,
            busy_poll: false,
            slow_slots: 8,
            inner_mtu: crate::fastpath::INNER_MTU as u16,
        }
    }

    /// The real worker thread on `lo` (needs root): a panic in its loop is
    /// caught, counted and the loop runs again on the same sockets.
    #[cfg(debug_assertions)]
    #[test]
    fn a_panicking_worker_is_restarted_and_counted() {
        use crate::fastpath::supervise::WorkerState;
        let wan = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = wan.local_addr().unwrap();
        let dp = RawPath::start(lo_config(wan, 8))
            .expect("the raw datapath on lo needs root (CAP_NET_RAW)");
        let worker = || dp.worker_stats().remove(0);
        let wait = |what: &str, ok: &dyn Fn(&crate::fastpath::WorkerStats) -> bool| {
            let until = Instant::now() + Duration::from_secs(20);
            while !ok(&worker()) {
                assert!(Instant::now() < until, "{what}: {:?}", worker());
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        assert_eq!((worker().panics, worker().state), (0, WorkerState::Running));
        // It panics at the next datagram it handles: keep sending.
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        for n in 1..=2 {
            dp.state().inject_panic(0).unwrap();
            wait("panic counted", &|w| {
                let _ = peer.send_to(b"not ntm", to);
                w.panics == n
            });
            wait("running again", &|w| w.state == WorkerState::Running);
        }
        assert!(worker().last_panic.unwrap().contains("injected panic"));
        // The restarted loop still reads its socket.
        let rx = worker().wan_rx;
        wait("a datagram read after the restart", &|w| {
            let _ = peer.send_to(b"not ntm", to);
            w.wan_rx > rx
        });
        drop(dp);
    }

    #[test]
    fn bad_batches_are_refused_before_anything_opens() {
        let wan = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = RawPath::start(lo_config(wan, 0)).unwrap_err();
        assert!(e.to_string().contains("batch"), "{e}");
    }
}
