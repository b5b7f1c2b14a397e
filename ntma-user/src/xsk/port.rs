//! One AF_XDP socket bound to one (interface, queue), with its four rings, sharing the
//! UMEM of every other port.

use std::{
    ffi::CString,
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use xdpilone::{xdp::XdpDesc, DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig};

use super::{Frame, FramePool, Umem, XskError};

/// Which bind mode to ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, copy mode otherwise (veth).
    #[default]
    Auto,
    /// Copy mode, always.
    Copy,
    /// Zero-copy or fail.
    ZeroCopy,
}

/// The mode a socket obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XskMode {
    /// The kernel copies frames between driver buffers and the UMEM.
    Copy,
    /// The driver DMAs straight into the UMEM.
    ZeroCopy,
}

impl std::fmt::Display for XskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XskMode::Copy => "copy",
            XskMode::ZeroCopy => "zero-copy",
        })
    }
}

/// Where and how to bind a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Interface name, in the calling thread's network namespace.
    pub ifname: String,
    /// RX queue index (also the XskMap index the XDP program redirects to).
    pub queue: u32,
    /// RX ring entries (power of two).
    pub rx_size: u32,
    /// TX ring entries (power of two).
    pub tx_size: u32,
    /// Bind mode of the first port of a UMEM; later ports inherit the mode it got.
    pub bind: BindMode,
    /// In copy mode, raise the frames one TX system call sends to the most the kernel
    /// allows (see [`Port::tx_budget`]); false keeps the kernel's 32.
    pub raise_tx_budget: bool,
}

impl PortConfig {
    /// Queue `queue` of `ifname` with 2048-entry rings and automatic mode.
    pub fn new(ifname: &str, queue: u32) -> Self {
        Self {
            ifname: ifname.to_owned(),
            queue,
            rx_size: 2048,
            tx_size: 2048,
            bind: BindMode::Auto,
            raise_tx_budget: true,
        }
    }
}

/// Userspace counters of one port (plain integers: one thread owns the port).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames taken from the RX ring.
    pub rx: u64,
    /// Frames put on the TX ring.
    pub tx: u64,
    /// Frames put on the fill ring.
    pub filled: u64,
    /// Frames taken back from the completion ring.
    pub completed: u64,
    /// RX descriptors outside the UMEM (never seen with a sane kernel): skipped.
    pub rx_invalid: u64,
    /// Completion addresses outside the UMEM: skipped.
    pub completion_invalid: u64,
    /// TX wake-up syscalls (the kernel asked for them).
    pub tx_wakeups: u64,
    /// Fill-ring wake-up syscalls.
    pub fill_wakeups: u64,
}

/// The kernel's counters of one socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames dropped for lack of a fill-ring frame or RX-ring slot.
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the TX ring.
    pub tx_invalid_descs: u64,
    /// Times the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was empty on a wake-up.
    pub tx_ring_empty_descs: u64,
}

/// An AF_XDP socket on one (interface, queue): fill, completion, RX and TX rings.
/// Owned by one worker thread; every ring operation is batched.
pub struct Port {
    umem: Arc<Umem>,
    cfg: PortConfig,
    device: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
    mode: XskMode,
    stats: PortStats,
    /// Frames taken off RX and not yet replaced on the fill ring.
    fill_owed: u32,
    /// Frames one TX system call sends in copy mode, where the kernel lets us raise it.
    tx_budget: Option<u32>,
}

const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;
const SOL_XDP: libc::c_int = 283;
/// Linux 6.17+: how many frames one TX system call sends in copy mode (default 32).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

impl Port {
    /// Creates a socket for `cfg.ifname` queue `cfg.queue` on `umem` and binds it. The
    /// first port of a UMEM uses the UMEM's own socket and the requested mode; later
    /// ports (on the other NIC, or other queues) share the UMEM and inherit its mode.
    /// Call it in the network namespace of the interface.
    pub fn bind(umem: &Arc<Umem>, cfg: PortConfig) -> Result<Port, XskError> {
        let name = CString::new(cfg.ifname.as_str())
            .map_err(|_| XskError::Config("interface name contains NUL"))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name)
            .map_err(|e| XskError::socket("interface lookup", &cfg, &e))?;
        info.set_queue(cfg.queue);
        let rx_size = NonZeroU32::new(cfg.rx_size).filter(|n| n.is_power_of_two());
        let tx_size = NonZeroU32::new(cfg.tx_size).filter(|n| n.is_power_of_two());
        let (Some(rx_size), Some(tx_size)) = (rx_size, tx_size) else {
            return Err(XskError::Config(
                "rx_size and tx_size must be non-zero powers of two",
            ));
        };

        // Set-up only: serialises binds of the same UMEM, never taken per packet.
        let mut setup = umem.setup.lock().unwrap_or_else(|p| p.into_inner());
        let owner = !setup.owner_bound;
        let xsk = &setup.xsk.0;
        let socket = if owner {
            Socket::with_shared(&info, xsk)
        } else {
            Socket::new(&info)
        }
        .map_err(|e| XskError::socket("socket", &cfg, &e))?;
        let device = xsk
            .fq_cq(&socket)
            .map_err(|e| XskError::socket("fill/completion ring set-up", &cfg, &e))?;
        // The kernel refuses mode flags on XDP_SHARED_UMEM binds: they inherit the owner's.
        let bind_flags = if owner {
            SocketConfig::XDP_BIND_NEED_WAKEUP
                | match cfg.bind {
                    BindMode::Auto => 0,
                    BindMode::Copy => SocketConfig::XDP_BIND_COPY,
                    BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
                }
        } else {
            0
        };
        let user = xsk
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: Some(rx_size),
                    tx_size: Some(tx_size),
                    bind_flags,
                },
            )
            .map_err(|e| XskError::socket("RX/TX ring set-up", &cfg, &e))?;
        let rx = user
            .map_rx()
            .map_err(|e| XskError::socket("RX ring mmap", &cfg, &e))?;
        let tx = user
            .map_tx()
            .map_err(|e| XskError::socket("TX ring mmap", &cfg, &e))?;
        bind_when_free(xsk, &user).map_err(|e| XskError::socket("bind", &cfg, &e))?;
        let mode = query_mode(rx.as_raw_fd()).map_err(|source| XskError::Os {
            op: "getsockopt(XDP_OPTIONS)",
            source,
        })?;
        if owner {
            setup.owner_bound = true;
            setup.mode = Some(mode);
        }
        drop(setup);
        // The most the kernel allows (half the TX ring): a burst then leaves in one
        // system call instead of one per 32 frames.
        let tx_budget = (mode == XskMode::Copy && cfg.raise_tx_budget)
            .then(|| raise_tx_budget(tx.as_raw_fd(), tx_size.get() / 2))
            .flatten();
        Ok(Port {
            umem: Arc::clone(umem),
            cfg,
            device,
            rx,
            tx,
            mode,
            stats: PortStats::default(),
            fill_owed: 0,
            tx_budget,
        })
    }

    /// The mode the socket obtained (shown in `ntma status`).
    pub fn mode(&self) -> XskMode {
        self.mode
    }

    /// Frames one TX system call sends in copy mode, when the kernel let it be raised
    /// (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17+); `None`: the kernel's default, 32.
    pub fn tx_budget(&self) -> Option<u32> {
        self.tx_budget
    }

    /// Where it is bound.
    pub fn config(&self) -> &PortConfig {
        &self.cfg
    }

    /// The UMEM it shares.
    pub fn umem(&self) -> &Arc<Umem> {
        &self.umem
    }

    /// Userspace counters.
    pub fn stats(&self) -> PortStats {
        self.stats
    }

    /// The kernel's counters for this socket.
    pub fn kernel_stats(&self) -> Result<KernelStats, XskError> {
        let s = self
            .device
            .statistics_v2()
            .map_err(|e| XskError::socket("XDP_STATISTICS", &self.cfg, &e))?;
        Ok(KernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Moves up to `max` frames from `pool` to the fill ring, so the kernel can receive
    /// into them. Returns how many.
    pub fn fill(&mut self, pool: &mut FramePool, max: u32) -> u32 {
        assert_eq!(
            pool.umem_id(),
            self.umem.area().id(),
            "pool of another UMEM"
        );
        let want = max.min(u32::try_from(pool.len()).unwrap_or(u32::MAX));
        if want == 0 {
            return 0;
        }
        let mut w = self.device.fill(want);
        let cap = w.capacity();
        // `take(cap)`: `insert` zips the source with the free slots and would drop an
        // item taken from the pool when it runs out of slots.
        let n = w.insert(std::iter::from_fn(|| pool.pop_base()).take(cap as usize));
        w.commit();
        drop(w);
        self.stats.filled += u64::from(n);
        if n > 0 && self.device.needs_wakeup() {
            self.device.wake();
            self.stats.fill_wakeups += 1;
        }
        n
    }

    /// Takes received frames into `out`, at most its spare capacity (so `out` never
    /// reallocates), then gives the fill ring as many frames from `pool` as it took, so
    /// the kernel keeps the same number to receive into. What the pool cannot give now
    /// is owed and given on later calls (see [`Port::refill`]). Returns how many frames
    /// were received.
    pub fn rx_burst(&mut self, pool: &mut FramePool, out: &mut Vec<Frame>) -> u32 {
        let room = (out.capacity() - out.len()).min(u32::MAX as usize) as u32;
        let mut taken = 0;
        if room > 0 {
            let area = self.umem.area();
            let mut r = self.rx.receive(room);
            while let Some(desc) = r.read() {
                taken += 1;
                match area.frame_from_desc(desc.addr, desc.len) {
                    Some(frame) => out.push(frame),
                    None => self.stats.rx_invalid += 1,
                }
            }
            r.release();
        }
        self.stats.rx += u64::from(taken);
        self.fill_owed += taken;
        self.refill(pool);
        taken
    }

    /// Gives the fill ring the frames owed to it since earlier bursts, as far as `pool`
    /// has them. Workers call it after reaping completions.
    pub fn refill(&mut self, pool: &mut FramePool) {
        if self.fill_owed > 0 {
            let n = self.fill(pool, self.fill_owed);
            self.fill_owed -= n;
        }
    }

    /// Frames the fill ring is owed (received, not yet replaced for want of free frames).
    pub fn fill_owed(&self) -> u32 {
        self.fill_owed
    }

    /// Puts frames from the front of `frames` on the TX ring, as many as fit, removing
    /// them from `frames`; wakes the kernel if it asks. Returns how many were queued.
    pub fn tx_burst(&mut self, frames: &mut Vec<Frame>) -> u32 {
        if frames.is_empty() {
            return 0;
        }
        let n = self.tx_queue(frames);
        self.kick_tx();
        n
    }

    /// [`Port::tx_burst`] without the wake-up, for a caller that decides when to make
    /// it ([`Port::kick_tx`]).
    pub fn tx_queue(&mut self, frames: &mut Vec<Frame>) -> u32 {
        if frames.is_empty() {
            return 0;
        }
        let id = self.umem.area().id();
        let want = frames.len().min(u32::MAX as usize) as u32;
        let mut w = self.tx.transmit(want);
        let cap = w.capacity() as usize;
        let n = w.insert(frames[..cap].iter().map(|f| {
            // A foreign frame would make the kernel read and later return one of ours.
            assert_eq!(f.umem_id(), id, "frame of another UMEM on the TX ring");
            XdpDesc {
                addr: f.addr(),
                len: f.desc_len(),
                options: 0,
            }
        }));
        w.commit();
        drop(w);
        // The kernel owns these frames until they come back on the completion ring.
        frames.drain(..n as usize);
        self.stats.tx += u64::from(n);
        n
    }

    /// Wakes the kernel's TX processing if it asked for it (copy mode always does).
    pub fn kick_tx(&mut self) {
        if self.tx.needs_wakeup() {
            self.tx.wake();
            self.stats.tx_wakeups += 1;
        }
    }

    /// Moves up to `max` transmitted frames from the completion ring back to `pool`.
    pub fn complete(&mut self, pool: &mut FramePool, max: u32) -> u32 {
        assert_eq!(
            pool.umem_id(),
            self.umem.area().id(),
            "pool of another UMEM"
        );
        let area = self.umem.area();
        let mut n = 0;
        let mut r = self.device.complete(max);
        while let Some(addr) = r.read() {
            if area.frame_from_desc(addr, 0).is_some() {
                pool.push_addr(addr);
                n += 1;
            } else {
                self.stats.completion_invalid += 1;
            }
        }
        r.release();
        drop(r);
        self.stats.completed += u64::from(n);
        n
    }

    /// Frames on the TX ring that the kernel has not taken yet.
    pub fn tx_pending(&self) -> u32 {
        self.tx.pending()
    }

    /// Blocks until the RX ring has frames or `timeout` passes (poll(2)); for workers
    /// that sleep when idle instead of busy-polling. Returns whether frames are ready.
    pub fn wait_rx(&self, timeout: Duration) -> Result<bool, XskError> {
        Port::wait_any_rx(&[self], timeout)
    }

    /// Blocks until the RX ring of any of `ports` has frames or `timeout` passes
    /// (one poll(2) over all of them); for a worker that serves two NICs and sleeps when
    /// both are idle. Returns whether frames are ready.
    pub fn wait_any_rx(ports: &[&Port], timeout: Duration) -> Result<bool, XskError> {
        const MAX: usize = 8;
        let mut pfds = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; MAX];
        let n = ports.len().min(MAX);
        for (pfd, port) in pfds.iter_mut().zip(ports) {
            pfd.fd = port.rx.as_raw_fd();
        }
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `n` initialised pollfds in a live array; their fds are owned by the
        // borrowed ports and stay open for the call.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(XskError::Os {
                op: "poll",
                source: e,
            });
        }
        Ok(pfds[..n].iter().any(|p| p.revents & libc::POLLIN != 0))
    }
}

impl AsRawFd for Port {
    /// The socket's fd, to register in an XskMap.
    fn as_raw_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }
}

/// How long a bind waits for the queue's previous socket to let go of it.
const QUEUE_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Binds `user`, waiting while the queue is still taken (EBUSY): the kernel clears a
/// closed socket's buffer pool from its queue in deferred work, so a datapath started
/// right after another stopped (a restart, the benchmark's next datapath) can find
/// the queue busy for a moment.
fn bind_when_free(xsk: &xdpilone::Umem, user: &xdpilone::User) -> Result<(), xdpilone::Errno> {
    let deadline = std::time::Instant::now() + QUEUE_RELEASE_WAIT;
    loop {
        match xsk.bind(user) {
            Err(e) if e.get_raw().abs() == libc::EBUSY && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

fn query_mode(fd: RawFd) -> std::io::Result<XskMode> {
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `struct xdp_options` is one u32; we pass a valid u32 and its size, and
    // the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(if flags & XDP_OPTIONS_ZEROCOPY != 0 {
        XskMode::ZeroCopy
    } else {
        XskMode::Copy
    })
}

/// Sets the socket's copy-mode TX budget to `budget` frames per system call; `None`
/// where the kernel has no such option (before 6.17) or refuses the value.
fn raise_tx_budget(fd: RawFd, budget: u32) -> Option<u32> {
    // SAFETY: the option's value is one u32; we pass a valid u32 and its size, and the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    (rc == 0).then_some(budget)
}

const XDP_STATISTICS: libc::c_int = 7;

/// `struct xdp_statistics` (linux/if_xdp.h), all six fields (kernel 5.9+).
#[repr(C)]
#[derive(Default)]
struct XdpStatistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

/// A second descriptor of the AF_XDP socket `fd`, so that another thread
/// (the control's, at scrape time) can read its [`KernelStats`] while the
/// worker owns the rings.
pub fn dup_socket(fd: RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes no pointer; on success the new
    // descriptor is ours alone, so wrapping it in an OwnedFd is sound.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor returned by fcntl above.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new) })
}

/// The kernel's counters of an AF_XDP socket (`XDP_STATISTICS`), from any
/// thread: the worker does nothing for them.
pub fn kernel_stats_of(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<KernelStats> {
    let mut s = XdpStatistics::default();
    let mut len = std::mem::size_of::<XdpStatistics>() as libc::socklen_t;
    // SAFETY: we pass a valid `struct xdp_statistics` and its size; the
    // kernel writes at most `len` bytes (fewer on older kernels, which
    // leaves the rest 0).
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            SOL_XDP,
            XDP_STATISTICS,
            (&mut s as *mut XdpStatistics).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(KernelStats {
        rx_dropped: s.rx_dropped,
        rx_invalid_descs: s.rx_invalid_descs,
        tx_invalid_descs: s.tx_invalid_descs,
        rx_ring_full: s.rx_ring_full,
        rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
        tx_ring_empty_descs: s.tx_ring_empty_descs,
    })
}
