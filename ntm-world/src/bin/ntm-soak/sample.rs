//! What the soak samples every interval: the resident memory and open file
//! descriptors of ntma and the DC (from /proc), ntma's UMEM frames in use
//! (its status: the workers' own frame accounting), and, for the record,
//! the tunnels and the DC's remembered state.

use anyhow::{Context as _, Result};
use ntm_world::{Ntma, World};
use serde_json::{json, Value};

use crate::growth::Tolerance;

/// One sample.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the soak started.
    pub t: f64,
    pub ntma_rss_kib: u64,
    pub ntma_fds: u64,
    pub dc_rss_kib: u64,
    pub dc_fds: u64,
    /// UMEM frames out of the workers' free pools.
    pub frames_in_use: u64,
    /// Of those, in no ring (held by a worker between rings).
    pub frames_held: u64,
    /// ntma's tunnels.
    pub tunnels: u64,
    /// The DC's remembered directions and registrations.
    pub dc_directions: u64,
    pub dc_registrations: u64,
}

/// A series judged for growth.
pub struct Series {
    pub name: &'static str,
    pub value: fn(&Sample) -> u64,
    pub tol: Tolerance,
}

/// Memory: allocators keep some slack, so 1 MiB or 5 % of the level.
const MEMORY: Tolerance = Tolerance {
    abs: 1024.0,
    rel: 0.05,
};
/// Descriptors: a few sockets come and go (DNS queries forwarded upstream).
const FDS: Tolerance = Tolerance { abs: 2.0, rel: 0.0 };
/// Frames: those on the TX rings and held between rings vary with the
/// traffic by up to a few bursts (64 frames each) per ring.
const FRAMES: Tolerance = Tolerance {
    abs: 256.0,
    rel: 0.0,
};

/// What must not grow.
pub const JUDGED: [Series; 5] = [
    Series {
        name: "ntma_rss_kib",
        value: |s| s.ntma_rss_kib,
        tol: MEMORY,
    },
    Series {
        name: "ntma_fds",
        value: |s| s.ntma_fds,
        tol: FDS,
    },
    Series {
        name: "dc_rss_kib",
        value: |s| s.dc_rss_kib,
        tol: MEMORY,
    },
    Series {
        name: "dc_fds",
        value: |s| s.dc_fds,
        tol: FDS,
    },
    Series {
        name: "umem_frames_in_use",
        value: |s| s.frames_in_use,
        tol: FRAMES,
    },
];

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the process died?)"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Open file descriptors of `pid`.
pub fn fds(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64)
}

/// Takes a sample `t` seconds into the soak.
pub fn take(w: &World, ntma: &Ntma, t: f64) -> Result<Sample> {
    let st = ntma
        .status()
        .context("ntma does not answer on its status socket")?;
    let dc = w.dc_status().context("the DC's status")?;
    let frames = st.frames();
    Ok(Sample {
        t,
        ntma_rss_kib: rss_kib(st.pid)?,
        ntma_fds: fds(st.pid)?,
        dc_rss_kib: rss_kib(dc.pid)?,
        dc_fds: fds(dc.pid)?,
        frames_in_use: frames.in_use(),
        frames_held: frames.held(),
        tunnels: st.tunnels.len() as u64,
        dc_directions: dc.directions.len() as u64,
        dc_registrations: dc.registrations.len() as u64,
    })
}

impl Sample {
    /// The table's header.
    pub const HEADER: &'static str =
        "|   t s | ntma RSS KiB | ntma fds | DC RSS KiB | DC fds | frames in use | held | tunnels | DC dirs |";

    /// One row of the table.
    pub fn row(&self) -> String {
        format!(
            "| {:>5.0} | {:>12} | {:>8} | {:>10} | {:>6} | {:>13} | {:>4} | {:>7} | {:>7} |",
            self.t,
            self.ntma_rss_kib,
            self.ntma_fds,
            self.dc_rss_kib,
            self.dc_fds,
            self.frames_in_use,
            self.frames_held,
            self.tunnels,
            self.dc_directions
        )
    }

    /// As JSON.
    pub fn json(&self) -> Value {
        json!({
            "t_secs": self.t,
            "ntma_rss_kib": self.ntma_rss_kib,
            "ntma_fds": self.ntma_fds,
            "dc_rss_kib": self.dc_rss_kib,
            "dc_fds": self.dc_fds,
            "umem_frames_in_use": self.frames_in_use,
            "umem_frames_held": self.frames_held,
            "tunnels": self.tunnels,
            "dc_directions": self.dc_directions,
            "dc_registrations": self.dc_registrations,
        })
    }
}
