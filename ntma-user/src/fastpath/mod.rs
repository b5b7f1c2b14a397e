//! The AF_XDP fast path: GN frames to tunnel DATA and back, in place, one pinned worker
//! per NIC queue.
//!
//! [`AfXdp::start`] loads and configures the XDP programs, maps one UMEM, starts one
//! worker per queue (each binds an AF_XDP socket on the queue of both NICs, sharing the
//! UMEM, zero-copy where the driver can and copy mode otherwise), registers the sockets
//! in the XskMaps and attaches the programs to both NICs. [`AfXdp::stop`] (or drop)
//! detaches both programs and stops the workers. [`AfXdp`] is a
//! [`crate::datapath::Datapath`].
//!
//! The control thread drives the workers through the shared [`DatapathState`]:
//! [`DatapathState::set_link`], [`DatapathState::set_gns`] (the GNs, which [`AfXdp`] also
//! writes to the XDP map `ntma_lan` reads) and [`DatapathState::add_tunnel`] (receive, from
//! `Event::TunnelAdded`) / [`DatapathState::tunnel_up`] (send too, from `Event::TunnelUp`)
//! / [`DatapathState::remove_tunnel`] / [`DatapathState::set_endpoint`] publish the table the
//! workers read without locks; [`DatapathState::pop_slow`] with [`DatapathState::slow_waker`]
//! takes the frames the fast path does not decide on (a GN and VIP without a tunnel, link not
//! ready, anything but DATA/TUN_KEEPALIVE); [`DatapathState::tunnel_stats`] and
//! [`DatapathState::worker_stats`] give the counters for `ntma status`, expiry and roaming.
//!
//! Per packet there is no lock, allocation, copy or system call: the table is an
//! `arc_swap` snapshot loaded once per burst, per-tunnel state is atomics
//! ([`ntm_proto::AtomicReplayWindow`] is the lock-free replay window), both direction
//! keys of a tunnel are prepared once ([`ntm_proto::Cipher`], suite 1
//! HMAC-SHA256-128 or suite 2 AES-256-GCM) and seal or open the datagram in place in
//! its UMEM frame, counters are plain integers published once per burst, and the only
//! system calls are the ring wake-ups the kernel asks for.
//!
//! Inner packets from the GN longer than the inner MTU (the uplink's MTU − 60;
//! [`INNER_MTU`] = 1440 on a 1500-byte uplink) go to the control thread, counted as
//! `too_big`: it answers ICMP fragmentation needed when DF is set and sends IPv4
//! fragments otherwise (§5 "MTU"). The MSS option of TCP SYNs and SYN-ACKs is clamped
//! to the inner MTU − 40 in both directions, counted as `mss_clamped`. Outer packets
//! carry DF.

pub mod burst;
mod cycles;
pub mod encap;
mod state;
pub mod supervise;
mod table;
mod worker;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

pub use state::{
    DatapathState, DatapathStateConfig, FrameUse, SlowFrame, SlowWaker, WakerError, WorkerStats,
    SLOW_SLOTS,
};
// The raw-socket datapath (crate::rawpath) publishes its counters the same way.
pub use cycles::cycles_per_second;
pub use encap::{FastDrop, INNER_MTU, TUNNEL_OVERHEAD};
pub(crate) use state::{LocalCounters, Stat};

/// Empty turns a worker spins before it sleeps, unless configured otherwise.
pub const SPIN_TURNS: u32 = 64;

/// Largest inner MTU: the GN's frames (Ethernet + 1500) are what every UMEM frame
/// holds (`UmemConfig::validate`), so a larger uplink MTU gains nothing.
pub const INNER_MTU_MAX: u16 = 1500;
pub use table::Snapshot;

pub use crate::ebpf::{AttachMode, Counters, Side};
pub use crate::xsk::{BindMode, UmemConfig, XskMode};

use crate::datapath::{limits, Datapath, DatapathKind, GnLink};
use crate::ebpf::{EbpfError, XdpPrograms};
use crate::xsk::{PortConfig, Umem, XskError};
use encap::{ENCAP_GROW, ENCAP_TAIL, ETH_LEN};
use ntma_common::XdpConfig;

// Every valid UMEM has room for the outer headers in front and, after the longest frame
// the GN may send (Ethernet + 1440), for the tag behind: UmemConfig::validate keeps
// headroom >= MIN_HEADROOM and room for a 1514-byte frame.
const _: () = assert!(crate::xsk::MIN_HEADROOM as usize >= ENCAP_GROW);
const _: () = assert!(ETH_LEN + INNER_MTU + ENCAP_TAIL <= 1514);

/// Errors of [`AfXdp::start`]; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum FastpathError {
    /// The configuration is not usable.
    #[error("invalid fast-path configuration: {0}")]
    Config(String),
    /// Loading, configuring or attaching the XDP programs failed.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// UMEM or AF_XDP socket set-up failed.
    #[error(transparent)]
    Xsk(#[from] XskError),
    /// The slow-queue eventfd could not be made.
    #[error(transparent)]
    Waker(#[from] WakerError),
    /// A worker could not be pinned.
    #[error("pinning fast-path worker {queue} to core {core} failed (is the core online and in this process's cpuset?)")]
    Pin { queue: usize, core: usize },
    /// A worker thread could not be started.
    #[error("starting fast-path worker {queue} failed: {source}")]
    Spawn {
        queue: usize,
        #[source]
        source: std::io::Error,
    },
    /// A worker thread died during set-up.
    #[error("fast-path worker {queue} panicked during set-up (see the log)")]
    WorkerPanicked { queue: usize },
    /// An XDP program of ntma is held on the interface by a live process, or the
    /// interface could not be checked for one a dead ntma left.
    #[error("XDP on {ifname}: {source}")]
    StaleXdp {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
}

/// Configuration of the AF_XDP datapath. [`AfXdpConfig::new`] fills in the defaults;
/// the sizes are checked against [`limits`], as the configuration file's are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfXdpConfig {
    /// GN-facing NIC (in the calling thread's network namespace).
    pub lan_if: String,
    /// WAN NIC.
    pub wan_if: String,
    /// Queues used on each NIC, from 0: one worker each.
    pub queues: u32,
    /// Cores to pin workers to: worker `i` runs on `cores[i % cores.len()]`; empty =
    /// not pinned.
    pub cores: Vec<usize>,
    /// The shared UMEM (its frames are split evenly between workers).
    pub umem: UmemConfig,
    /// RX ring entries per socket (power of two).
    pub rx_ring: u32,
    /// TX ring entries per socket (power of two).
    pub tx_ring: u32,
    /// Frames per RX burst.
    pub batch: usize,
    /// Workers spin instead of sleeping in poll(2) when idle (lower latency, one
    /// busy core per worker).
    pub busy_poll: bool,
    /// Empty turns a worker spins before it sleeps in poll(2) (without
    /// `busy_poll`): a burst that follows soon after costs no system call.
    pub spin_turns: u32,
    /// What the XDP programs redirect (VIP prefix, router address, NTM port).
    pub xdp: XdpConfig,
    /// How the XDP programs attach.
    pub attach: AttachMode,
    /// AF_XDP bind mode (zero-copy where supported by default).
    pub bind: BindMode,
    /// Slots of each worker's slow queue.
    pub slow_slots: usize,
    /// Inner MTU (§5 "MTU": the uplink's MTU − 60).
    pub inner_mtu: u16,
    /// What the workers do with a frame: the adapter's work, or the l2fwd reference.
    pub forward: Forward,
    /// Benchmarks only (`ntm-bench dp`'s `ntma-base`): the loop without its run-time
    /// optimisations, to measure them in the same run: each frame through the
    /// per-packet [`encap::uplink`] / [`encap::downlink`] (an atomic add per packet
    /// for its seq and counters, one pass, a MAC per packet) instead of
    /// [`burst`]; a TX wake-up on every turn with frames pending; the kernel's TX
    /// budget of 32 frames per call. (`spin_turns` is a setting of its own.)
    pub baseline: bool,
}

/// What the workers do with each frame they receive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forward {
    /// The adapter: GN frames are encapsulated and sealed, tunnel frames opened.
    #[default]
    Tunnel,
    /// The l2fwd reference for benchmarks: the same loop, UMEM, rings, kicks and
    /// counters, but each frame only gets its first 12 bytes (destination and source
    /// MAC) rewritten and leaves on the other NIC: `to_wan` for frames from the GN
    /// side, `to_lan` for frames from the WAN. No table lookup, no crypto.
    L2 { to_wan: [u8; 12], to_lan: [u8; 12] },
}

impl AfXdpConfig {
    /// Defaults: one queue, no pinning, the UMEM and rings `[datapath]` has
    /// by default, bursts of 64, sleeping when idle, native XDP, automatic bind mode,
    /// 256 slow slots per worker.
    pub fn new(lan_if: &str, wan_if: &str, xdp: XdpConfig) -> Self {
        Self {
            lan_if: lan_if.to_owned(),
            wan_if: wan_if.to_owned(),
            queues: 1,
            cores: Vec::new(),
            umem: UmemConfig {
                frame_count: 16384,
                fill_size: 4096,
                ..UmemConfig::default()
            },
            rx_ring: 4096,
            tx_ring: 2048,
            batch: 64,
            busy_poll: false,
            spin_turns: SPIN_TURNS,
            xdp,
            attach: AttachMode::Native,
            bind: BindMode::Auto,
            slow_slots: SLOW_SLOTS,
            inner_mtu: INNER_MTU as u16,
            baseline: false,
            forward: Forward::Tunnel,
        }
    }

    /// Frames each worker gets from the UMEM.
    pub fn frames_per_worker(&self) -> u32 {
        self.umem.frame_count / self.queues.max(1)
    }

    /// The sizes, as `[datapath]` names them.
    pub fn sizes(&self) -> limits::Sizes<'_> {
        limits::Sizes {
            queues: self.queues,
            cores: &self.cores,
            frame_size: self.umem.frame_size,
            frame_count: self.umem.frame_count,
            fill_ring: self.umem.fill_size,
            completion_ring: self.umem.completion_size,
            rx_ring: self.rx_ring,
            tx_ring: self.tx_ring,
            batch: self.batch,
        }
    }

    /// Checks everything that can be checked before touching the kernel.
    pub fn validate(&self) -> Result<(), FastpathError> {
        let bad = |m: String| Err(FastpathError::Config(m));
        if self.lan_if.is_empty() || self.wan_if.is_empty() {
            return bad("lan and wan interface names must be set".into());
        }
        if self.lan_if == self.wan_if {
            return bad(format!(
                "the GN-facing and WAN interfaces must differ (both are {})",
                self.lan_if
            ));
        }
        if !self.xdp.enabled() {
            return bad(
                "the XDP configuration is not enabled (build it with XdpConfig::new)".into(),
            );
        }
        self.sizes()
            .validate()
            .map_err(|e| FastpathError::Config(e.to_string()))?;
        // What the sizes leave to the UMEM (its headroom).
        self.umem
            .validate()
            .map_err(|e| FastpathError::Config(e.to_string()))?;
        if !(576..=INNER_MTU_MAX).contains(&self.inner_mtu) {
            return bad(format!(
                "inner_mtu = {} (must be 576 to {INNER_MTU_MAX})",
                self.inner_mtu
            ));
        }
        if self.slow_slots == 0 {
            return bad("slow_slots must be at least 1".into());
        }
        Ok(())
    }
}

/// The running AF_XDP datapath. [`AfXdp::stop`] or drop detaches XDP from both NICs
/// and stops the workers.
pub struct AfXdp {
    progs: Option<Mutex<XdpPrograms>>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    state: Arc<DatapathState>,
    mode: XskMode,
    /// A second descriptor of every AF_XDP socket, (queue, side, fd): the
    /// kernel's ring counters are read through them at scrape time.
    sockets: Vec<(u32, Side, std::os::fd::OwnedFd)>,
}

/// The kernel's counters of one AF_XDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingStats {
    /// The queue (worker).
    pub queue: u32,
    /// Which NIC.
    pub side: Side,
    /// `XDP_STATISTICS`.
    pub stats: crate::xsk::KernelStats,
}

impl std::fmt::Debug for AfXdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdp")
            .field("workers", &self.workers.len())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl AfXdp {
    /// Starts the fast path in the calling thread's network namespace (the workers
    /// inherit it). Nothing is left attached or running when it fails.
    pub fn start(cfg: AfXdpConfig) -> Result<AfXdp, FastpathError> {
        cfg.validate()?;
        let state = Arc::new(DatapathState::new(&DatapathStateConfig {
            workers: cfg.queues as usize,
            ntm_port: cfg.xdp.ntm_port,
            inner_mtu: cfg.inner_mtu,
            slow_slots: cfg.slow_slots,
            slow_slot_len: cfg.umem.frame_size as usize,
        })?);
        let mut progs = XdpPrograms::load()?;
        progs.configure(&cfg.xdp)?;
        let umem = Arc::new(Umem::new(cfg.umem.clone())?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut dp = AfXdp {
            progs: None,
            workers: Vec::with_capacity(cfg.queues as usize),
            stop: Arc::clone(&stop),
            state: Arc::clone(&state),
            mode: XskMode::Copy,
            sockets: Vec::new(),
        };
        // From here on, an early return drops `dp` (stops the workers started so far)
        // and `progs` (detaches what was attached).
        for q in 0..cfg.queues {
            let port = |ifname: &str| PortConfig {
                ifname: ifname.to_owned(),
                queue: q,
                rx_size: cfg.rx_ring,
                tx_size: cfg.tx_ring,
                bind: cfg.bind,
                raise_tx_budget: !cfg.baseline,
            };
            let core = (!cfg.cores.is_empty()).then(|| cfg.cores[q as usize % cfg.cores.len()]);
            let (handle, bound) = worker::spawn(worker::WorkerSetup {
                index: q as usize,
                core,
                lan: port(&cfg.lan_if),
                wan: port(&cfg.wan_if),
                umem: Arc::clone(&umem),
                frames: cfg.frames_per_worker(),
                batch: cfg.batch,
                busy_poll: cfg.busy_poll,
                spin_turns: cfg.spin_turns,
                forward: cfg.forward,
                baseline: cfg.baseline,
                dp: Arc::clone(&state),
                stop: Arc::clone(&stop),
            })?;
            dp.workers.push(handle);
            if q == 0 {
                dp.mode = bound.mode;
                match bound.tx_budget {
                    Some(n) => tracing::debug!(frames = n, "copy-mode TX: one system call sends up to this many frames"),
                    None => tracing::debug!("copy-mode TX: the kernel's own budget per system call (zero-copy, or before Linux 6.17)"),
                }
            }
            progs.register_socket(Side::Lan, q, &bound.lan_fd)?;
            progs.register_socket(Side::Wan, q, &bound.wan_fd)?;
            for (side, fd) in [(Side::Lan, bound.lan_fd), (Side::Wan, bound.wan_fd)] {
                match crate::xsk::dup_socket(fd) {
                    Ok(fd) => dp.sockets.push((q, side, fd)),
                    Err(e) => {
                        tracing::warn!(queue = q, ?side, error = %e, "cannot keep the AF_XDP socket for its ring counters")
                    }
                }
            }
        }
        for ifname in [&cfg.lan_if, &cfg.wan_if] {
            clear_stale_xdp(ifname)?;
        }
        progs.attach(Side::Lan, &cfg.lan_if, cfg.attach)?;
        progs.attach(Side::Wan, &cfg.wan_if, cfg.attach)?;
        dp.progs = Some(Mutex::new(progs));
        Ok(dp)
    }

    /// The AF_XDP mode the sockets obtained (copy on veth, zero-copy on capable NICs).
    pub fn xsk_mode(&self) -> XskMode {
        self.mode
    }

    /// Detaches XDP from both NICs (their traffic goes to the kernel again), then stops
    /// and joins the workers, which close their sockets.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.sockets.clear();
        // Detach first: from then on nothing is redirected to sockets about to close.
        // The programs are attached through bpf_link fds, so this works from any thread
        // and network namespace.
        drop(self.progs.take());
        self.stop.store(true, Ordering::Relaxed);
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// An XDP program a dead ntma left on `ifname` goes, so that ours takes its place
/// ([`crate::os::xdp::clear_stale`]).
fn clear_stale_xdp(ifname: &str) -> Result<(), FastpathError> {
    let err = |source| FastpathError::StaleXdp {
        ifname: ifname.to_owned(),
        source,
    };
    let index = nix::net::if_::if_nametoindex(ifname).map_err(|e| err(e.into()))?;
    crate::os::xdp::clear_stale(ifname, index).map_err(err)?;
    Ok(())
}

impl Datapath for AfXdp {
    fn state(&self) -> &Arc<DatapathState> {
        &self.state
    }

    fn kind(&self) -> DatapathKind {
        DatapathKind::AfXdp
    }

    fn mode(&self) -> String {
        self.mode.to_string()
    }

    /// As the workers name their threads (worker.rs).
    fn worker_thread(&self, queue: usize) -> String {
        format!("ntma-fp{queue}")
    }

    fn stop(&mut self) {
        self.shutdown();
    }

    /// The table first, so that a frame XDP redirects from a new GN finds it. A GN the
    /// XDP map cannot take (more than [`ntma_common::MAX_GNS`]) is logged; its frames
    /// then pass to the kernel and reach the control's socket.
    fn set_gns(&self, gns: &[GnLink]) {
        self.state.set_gns(gns);
        if let Some(p) = &self.progs {
            let vips: Vec<_> = gns.iter().map(|g| g.vip).collect();
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = p.set_gn_vips(&vips) {
                tracing::warn!(gns = vips.len(), error = %e, "cannot write the GN VIPs for XDP");
            }
        }
    }

    /// Summed over CPUs.
    fn xdp_counters(&self) -> Result<Counters, EbpfError> {
        match &self.progs {
            Some(p) => p.lock().unwrap_or_else(|e| e.into_inner()).counters(),
            None => Ok(Counters::default()),
        }
    }

    /// Read now, by the caller's thread (the workers do nothing for them).
    fn ring_stats(&self) -> Vec<RingStats> {
        self.sockets
            .iter()
            .filter_map(|(queue, side, fd)| {
                let stats = crate::xsk::kernel_stats_of(std::os::fd::AsFd::as_fd(fd)).ok()?;
                Some(RingStats {
                    queue: *queue,
                    side: *side,
                    stats,
                })
            })
            .collect()
    }
}

impl Drop for AfXdp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests;
