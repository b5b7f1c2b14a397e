//! What a worker does with one RX burst between taking it off the ring and queuing it
//! for TX, over plain buffers: the worker calls these on its UMEM frames, the
//! benchmark on buffers in memory (no ring, no system call), so both measure and run
//! the same code. Each pushes one verdict per frame, in order, on `out`; the caller
//! moves the frames accordingly.

use super::encap::{classify, downlink_with, l2_rewrite, seal_up, DownVerdict, UpVerdict};
use super::table::{PreparedLink, Snapshot, Tunnel};
use ntm_proto::replay::MarkOnly;

#[cfg(doc)]
use super::encap::{downlink, uplink};

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

/// Frames a burst function handles in one go: its per-frame state lives on the
/// stack (a larger batch is taken in chunks of this many).
const CHUNK: usize = 64;

/// What [`classify`] said of one frame.
type UpClass<'s> = Result<(&'s PreparedLink, &'s Tunnel, usize), UpVerdict>;

/// [`uplink`] over a burst: `lens[i]` is frame `i`'s length as received; its buffer
/// has [`super::encap::ENCAP_GROW`] bytes in front and
/// [`super::encap::ENCAP_TAIL`] behind. The same verdicts and bytes as [`uplink`] on
/// each frame, but in two passes: every frame's tunnel first (the table's cache
/// misses of one burst overlap), then the sealing, where each run of consecutive
/// frames to one tunnel takes its sequence numbers with one atomic add and counts
/// with one more. (No software prefetch between the passes: stable Rust has none
/// without `unsafe`.)
pub fn uplink_burst<F: Frames + ?Sized>(
    snap: &Snapshot,
    frames: &mut F,
    lens: &[usize],
    out: &mut Vec<UpVerdict>,
) {
    let n = frames.count().min(lens.len());
    let mut base = 0;
    while base < n {
        let end = (base + CHUNK).min(n);
        uplink_chunk(snap, frames, base, &lens[base..end], out);
        base = end;
    }
}

fn uplink_chunk<F: Frames + ?Sized>(
    snap: &Snapshot,
    frames: &mut F,
    base: usize,
    lens: &[usize],
    out: &mut Vec<UpVerdict>,
) {
    let mut class: [UpClass<'_>; CHUNK] = [Err(UpVerdict::Slow); CHUNK];
    let class = &mut class[..lens.len()];
    for (k, (c, len)) in class.iter_mut().zip(lens).enumerate() {
        *c = classify(snap, frames.buf(base + k), *len);
    }
    let mut k = 0;
    while k < class.len() {
        let t = match class[k] {
            Ok((_, t, _)) => t,
            Err(v) => {
                out.push(v);
                k += 1;
                continue;
            }
        };
        let run = class[k..]
            .iter()
            .take_while(|c| matches!(c, Ok((_, u, _)) if std::ptr::eq(*u, t)))
            .count();
        // Unique numbers for the run's frames whatever other workers and the
        // control take meanwhile (a frame dropped below leaves a gap: allowed).
        let first = t.tx_seq.reserve(run as u64);
        let (mut packets, mut bytes) = (0, 0);
        for (j, c) in class[k..k + run].iter().enumerate() {
            if let Ok((link, _, inner_len)) = *c {
                let buf = frames.buf(base + k + j);
                let v = seal_up(snap, link, t, buf, inner_len, first + j as u64);
                if v.sent() {
                    packets += 1;
                    bytes += inner_len as u64;
                }
                out.push(v);
            }
        }
        t.count_tx(packets, bytes);
        k += run;
    }
}

/// [`downlink`] over a burst; `now_nanos` is read once per burst. The same verdicts
/// and bytes as [`downlink`] on each frame, but what it records per tunnel (activity,
/// source, counters, the replay window's top) is written once per run of consecutive
/// datagrams of one tunnel ([`MarkOnly`]: the window's lower edge lags by at most the
/// run, never letting a number through twice; the top of a datagram refused after
/// the window, such as one with a bad inner packet, is raised by the next one).
pub fn downlink_burst<F: Frames + ?Sized>(
    snap: &Snapshot,
    frames: &mut F,
    now_nanos: u64,
    out: &mut Vec<DownVerdict>,
) {
    let mut run = RxRun::default();
    for i in 0..frames.count() {
        let v = downlink_with(snap, frames.buf(i), MarkOnly, &mut |t, from, seq, len| {
            run.add(t, from, seq, len, now_nanos)
        });
        out.push(v);
    }
    run.flush(now_nanos);
}

/// Authentic datagrams of one tunnel in a row: recorded when another tunnel's
/// comes, or at the end of the burst, as the last of them would have left it.
#[derive(Default)]
struct RxRun<'s> {
    tunnel: Option<&'s Tunnel>,
    from: u64,
    /// The highest seq of the run.
    top: u64,
    packets: u64,
    bytes: u64,
}

impl<'s> RxRun<'s> {
    #[inline]
    fn add(&mut self, t: &'s Tunnel, from: u64, seq: u64, len: Option<usize>, now_nanos: u64) {
        if !self.tunnel.is_some_and(|u| std::ptr::eq(u, t)) {
            self.flush(now_nanos);
            self.tunnel = Some(t);
        }
        self.from = from;
        self.top = self.top.max(seq);
        if let Some(len) = len {
            self.packets += 1;
            self.bytes += len as u64;
        }
    }

    fn flush(&mut self, now_nanos: u64) {
        if let Some(t) = self.tunnel.take() {
            t.replay.raise_last(self.top);
            t.note_rx(now_nanos, self.from);
            if self.packets > 0 {
                t.count_rx(self.packets, self.bytes);
            }
        }
        (self.packets, self.bytes, self.top) = (0, 0, 0);
    }
}

/// The l2fwd reference ([`super::Forward::L2`]) over a burst: [`l2_rewrite`] on each
/// frame (false: shorter than an Ethernet header).
pub fn l2_burst<F: Frames + ?Sized>(frames: &mut F, macs: &[u8; 12], out: &mut Vec<bool>) {
    for i in 0..frames.count() {
        out.push(l2_rewrite(frames.buf(i), macs));
    }
}
