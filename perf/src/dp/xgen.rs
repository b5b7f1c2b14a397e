//! The AF_XDP TX generator of `ntm-bench dp`: one thread pinned to CPU 0, bound in copy
//! mode to queue 0 of a veth end (`src` or `dst` `eth0`) through ntma's own ring layer
//! ([`ntma_user::xsk`]), sending whole Ethernet frames at a target rate (a token bucket
//! checked per burst) for a fixed time.
//!
//! Frames are either one frame sent over and over ([`Frames::Repeat`]: written once into
//! every UMEM frame, so a send writes nothing) or a pool of pre-built frames sent once
//! each, in order ([`Frames::Pool`]: NTM DATA sealed with consecutive sequence numbers,
//! copied into a UMEM frame per send), which the caller builds anew for every run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ntma_user::xsk::{BindMode, Frame, FramePool, KernelStats, Port, PortConfig, Umem, UmemConfig};

/// What the generator sends.
pub enum Frames {
    /// The same frame every time.
    Repeat(Vec<u8>),
    /// `count` frames of `len` bytes back to back in `bytes`, each sent once, in order;
    /// the run ends early when they are used up.
    Pool {
        /// The frames.
        bytes: Arc<Vec<u8>>,
        /// Bytes per frame.
        len: usize,
    },
}

impl Frames {
    fn len(&self) -> usize {
        match self {
            Frames::Repeat(f) => f.len(),
            Frames::Pool { len, .. } => *len,
        }
    }

    fn count(&self) -> Option<u64> {
        match self {
            Frames::Repeat(_) => None,
            Frames::Pool { bytes, len } => Some((bytes.len() / (*len).max(1)) as u64),
        }
    }
}

/// One run of the generator.
pub struct GenRun {
    /// Namespace of the interface.
    pub ns: String,
    /// The interface (queue 0).
    pub ifname: String,
    /// CPU to pin the sending thread to.
    pub cpu: Option<usize>,
    /// What to send.
    pub frames: Frames,
    /// Target frames per second (`None`: as fast as the kernel takes them).
    pub rate_pps: Option<f64>,
    /// How long to send.
    pub duration: Duration,
    /// Frames per burst.
    pub batch: usize,
}

/// What a run sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenResult {
    /// Frames put on the TX ring.
    pub queued: u64,
    /// Frames the kernel took and completed (sent into the veth).
    pub sent: u64,
    /// Seconds from the first to the last frame queued.
    pub secs: f64,
    /// TX wake-ups (sendto calls).
    pub kicks: u64,
    /// The socket's `tx_invalid_descs` (the kernel refused the descriptor).
    pub tx_invalid: u64,
}

impl GenResult {
    /// Frames per second the generator achieved.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.sent as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// UMEM frames of the generator: enough for a full TX ring and the completion ring.
const UMEM_FRAMES: u32 = 4096;
const TX_RING: u32 = 2048;
/// Frames the kernel sends per TX wake-up in copy mode (`MAX_PER_SOCKET_BUDGET`).
const KICK_BUDGET: usize = 32;

/// Runs the generator to the end (blocking); `stop` ends it early.
pub fn run(cfg: GenRun, stop: &AtomicBool) -> Result<GenResult> {
    let ns = cfg.ns.clone();
    ntm_testbed::in_netns(&ns, || send(cfg, stop))?
}

struct Tx {
    umem: Arc<Umem>,
    port: Port,
    pool: FramePool,
    burst: Vec<Frame>,
}

fn bind(ifname: &str) -> Result<Tx> {
    let umem = Arc::new(
        Umem::new(UmemConfig {
            frame_count: UMEM_FRAMES,
            fill_size: 2048,
            completion_size: UMEM_FRAMES,
            ..UmemConfig::default()
        })
        .context("the generator's UMEM")?,
    );
    let port = Port::bind(
        &umem,
        PortConfig {
            ifname: ifname.to_owned(),
            queue: 0,
            rx_size: 64,
            tx_size: TX_RING,
            bind: BindMode::Copy,
            raise_tx_budget: true,
        },
    )
    .with_context(|| format!("binding the generator's AF_XDP socket on {ifname}"))?;
    let pool = umem.pool(UMEM_FRAMES)?;
    Ok(Tx {
        umem,
        port,
        pool,
        burst: Vec::with_capacity(1024),
    })
}

impl Tx {
    /// Writes `frame` into every UMEM frame once.
    fn prewrite(&mut self, frame: &[u8]) -> Result<()> {
        let mut all = Vec::with_capacity(self.pool.len());
        while let Some(mut f) = self.pool.alloc() {
            if !self.umem.set_len(&mut f, frame.len()) {
                self.pool.free(f);
                return Err(anyhow!(
                    "a {} byte frame does not fit a UMEM frame",
                    frame.len()
                ));
            }
            self.umem.packet_mut(&mut f).copy_from_slice(frame);
            all.push(f);
        }
        for f in all {
            self.pool.free(f);
        }
        Ok(())
    }

    /// Queues up to `n` frames (pool frames from `next` on); returns how many went on
    /// the TX ring.
    fn burst(&mut self, frames: &Frames, n: usize, next: u64) -> u64 {
        let len = frames.len();
        for i in 0..n {
            let Some(mut f) = self.pool.alloc() else {
                break;
            };
            self.umem.set_len(&mut f, len);
            if let Frames::Pool { bytes, len } = frames {
                let at = (next as usize + i) * len;
                self.umem
                    .packet_mut(&mut f)
                    .copy_from_slice(&bytes[at..at + len]);
            }
            self.burst.push(f);
        }
        let q = u64::from(self.port.tx_burst(&mut self.burst));
        // What the ring did not take goes back (pool frames are written again next time).
        for f in self.burst.drain(..) {
            self.pool.free(f);
        }
        q
    }

    fn reap(&mut self) {
        self.port.complete(&mut self.pool, UMEM_FRAMES);
    }

    /// Kicks until the kernel took and completed what is queued, at most `max`.
    fn drain(&mut self, max: Duration) {
        let until = Instant::now() + max;
        while Instant::now() < until {
            self.reap();
            if self.port.stats().completed >= self.port.stats().tx {
                return;
            }
            self.port.kick_tx();
            std::thread::yield_now();
        }
    }
}

fn send(cfg: GenRun, stop: &AtomicBool) -> Result<GenResult> {
    if let Some(cpu) = cfg.cpu {
        crate::net::pin(cpu)?;
    }
    let mut tx = bind(&cfg.ifname)?;
    if let Frames::Repeat(f) = &cfg.frames {
        tx.prewrite(f)?;
    }
    let limit = cfg.frames.count().unwrap_or(u64::MAX);
    let batch = cfg.batch.clamp(1, 1024);
    let mut queued = 0u64;
    let t0 = Instant::now();
    let mut last = t0;
    while !stop.load(Ordering::Relaxed) && queued < limit {
        tx.reap();
        let now = Instant::now();
        if now.duration_since(t0) >= cfg.duration {
            break;
        }
        let allowed = match cfg.rate_pps {
            // Tokens earned so far, less those spent; one burst at most per turn.
            Some(r) => {
                ((r * now.duration_since(t0).as_secs_f64()) as u64 + 1).saturating_sub(queued)
            }
            None => u64::MAX,
        };
        let n = (batch as u64).min(allowed).min(limit - queued) as usize;
        // Bursts of at least what one kick sends in copy mode (the kernel's 32 per
        // sendto), so that a bounded rate costs no more system calls per frame than
        // the full one; the last frames of a pool go as they are.
        let min_burst = batch.min(KICK_BUDGET).min((limit - queued) as usize);
        if n < min_burst.max(1) {
            if tx.port.tx_pending() > 0 {
                tx.port.kick_tx();
            }
            std::hint::spin_loop();
            continue;
        }
        let q = tx.burst(&cfg.frames, n, queued);
        if q > 0 {
            last = Instant::now();
        }
        queued += q;
    }
    tx.drain(Duration::from_secs(1));
    let kernel: KernelStats = tx.port.kernel_stats().unwrap_or_default();
    let stats = tx.port.stats();
    Ok(GenResult {
        queued,
        sent: stats.completed,
        secs: last.duration_since(t0).as_secs_f64(),
        kicks: stats.tx_wakeups,
        tx_invalid: kernel.tx_invalid_descs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_count_whole_frames_and_rates_need_time() {
        let f = Frames::Pool {
            bytes: Arc::new(vec![0; 10 * 64 + 3]),
            len: 64,
        };
        assert_eq!(f.count(), Some(10));
        assert_eq!(f.len(), 64);
        assert_eq!(Frames::Repeat(vec![1; 60]).count(), None);
        let r = GenResult {
            sent: 500,
            secs: 0.5,
            ..GenResult::default()
        };
        assert_eq!(r.rate(), 1000.0);
        assert_eq!(GenResult::default().rate(), 0.0);
    }
}
