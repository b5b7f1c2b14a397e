//! AF_XDP ring layer: one UMEM shared by the sockets of both NICs, frame ownership
//! tokens, a per-worker frame pool, and batched fill/RX/TX/completion operations.
//!
//! Design (after `xsk_fwd.c`): one worker per queue owns a [`FramePool`] and the
//! [`Port`]s of its queue on both NICs. A frame received on one port is handed to the
//! other port's TX ring as the same [`Frame`]: nothing is copied in userspace. Frames
//! come back through the completion ring into the worker's pool, and go from there to
//! a fill ring. No lock, allocation or syscall is needed per packet; the only syscalls
//! are wake-ups when the kernel asks for them (`need_wakeup`).
//!
//! Ownership: a [`Frame`] is a unique token for one UMEM chunk (it is not `Clone`). It is
//! created only from the pool, the RX ring or the completion ring, and consumed by the
//! fill ring, the TX ring or the pool, so holding `&mut Frame` is proof of exclusive
//! access to its bytes; [`Umem::packet_mut`] relies on this.
//!
//! `unsafe` in ntma-user lives in this module only (`umem.rs`, `port.rs`).

mod port;
mod umem;

pub use port::{
    dup_socket, kernel_stats_of, BindMode, KernelStats, Port, PortConfig, PortStats, XskMode,
};
pub use umem::{Frame, FramePool, Umem, UmemConfig, MIN_HEADROOM};

/// Bytes the kernel reserves in front of every received packet (`XDP_PACKET_HEADROOM`),
/// on top of the UMEM's own headroom.
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// Errors of the AF_XDP layer; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// The UMEM configuration is not usable.
    #[error("invalid UMEM configuration: {0}")]
    Config(&'static str),
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An AF_XDP operation failed (xdpilone reports errno).
    #[error("AF_XDP {op} on {ifname} queue {queue} failed: {errno} (does the interface exist in this network namespace, with that queue? is it up?)")]
    Socket {
        op: &'static str,
        ifname: String,
        queue: u32,
        errno: std::io::Error,
    },
    /// The pool has no frames left to give.
    #[error("UMEM has {available} unassigned frames, {requested} requested (raise frame_count)")]
    Exhausted { requested: u32, available: u32 },
}

impl XskError {
    fn os(op: &'static str) -> Self {
        XskError::Os {
            op,
            source: std::io::Error::last_os_error(),
        }
    }

    fn socket(op: &'static str, cfg: &PortConfig, errno: &xdpilone::Errno) -> Self {
        XskError::Socket {
            op,
            ifname: cfg.ifname.clone(),
            queue: cfg.queue,
            errno: std::io::Error::from_raw_os_error(errno.get_raw().abs()),
        }
    }
}
