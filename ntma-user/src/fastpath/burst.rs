//! What a worker does with one RX burst between taking it off the ring and queuing it
//! for TX, over plain buffers: the worker calls these on its UMEM frames, the
//! benchmark on buffers in memory (no ring, no system call), so both measure and run
//! the same code. Each pushes one verdict per frame, in order, on `out`; the caller
//! moves the frames accordingly.

use super::encap::{downlink, l2_rewrite, uplink, DownVerdict, UpVerdict};
use super::table::Snapshot;

/// The frames of one burst, whatever holds them.
pub trait Frames {
    /// How many frames.
    fn count(&self) -> usize;
    /// Frame `i`'s bytes (what the packet view of its buffer is now).
    fn buf(&mut self, i: usize) -> &mut [u8];
}

/// A benchmark's or a test's frames.
impl Frames for [Vec<u8>] {
    fn count(&self) -> usize {
        self.len()
    }

    fn buf(&mut self, i: usize) -> &mut [u8] {
        &mut self[i]
    }
}

/// [`uplink`] over a burst: `lens[i]` is frame `i`'s length as received; its buffer
/// has [`super::encap::ENCAP_GROW`] bytes in front and
/// [`super::encap::ENCAP_TAIL`] behind.
pub fn uplink_burst<F: Frames + ?Sized>(
    snap: &Snapshot,
    frames: &mut F,
    lens: &[usize],
    out: &mut Vec<UpVerdict>,
) {
    for (i, len) in lens.iter().enumerate().take(frames.count()) {
        out.push(uplink(snap, frames.buf(i), *len));
    }
}

/// [`downlink`] over a burst; `now_nanos` is read once per burst.
pub fn downlink_burst<F: Frames + ?Sized>(
    snap: &Snapshot,
    frames: &mut F,
    now_nanos: u64,
    out: &mut Vec<DownVerdict>,
) {
    for i in 0..frames.count() {
        out.push(downlink(snap, frames.buf(i), now_nanos));
    }
}

/// The l2fwd reference ([`super::Forward::L2`]) over a burst: [`l2_rewrite`] on each
/// frame (false: shorter than an Ethernet header).
pub fn l2_burst<F: Frames + ?Sized>(frames: &mut F, macs: &[u8; 12], out: &mut Vec<bool>) {
    for i in 0..frames.count() {
        out.push(l2_rewrite(frames.buf(i), macs));
    }
}
