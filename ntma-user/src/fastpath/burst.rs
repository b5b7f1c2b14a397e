//! What a worker does with one RX burst between taking it off the ring and queuing it
//! for TX, over plain buffers: the worker calls these on its UMEM frames, the
//! benchmark on buffers in memory (no ring, no system call), so both measure and run
//! the same code. Each pushes one verdict per frame, in order, on `out`; the caller
//! moves the frames accordingly.

use super::encap::{
    classify, l2_rewrite, open_down, parse_down, seal_up, DownVerdict, Found, UpVerdict,
};
use super::table::{PreparedLink, Snapshot, Tunnel};
use crate::wire::outer::OUTER_LEN;
use ntm_proto::data::tunnel_id_of;
use ntm_proto::replay::MarkOnly;
use ntm_proto::wire::TAG_LEN;
use ntm_proto::{Authenticator, Cipher};

#[cfg(doc)]
use super::encap::{downlink, uplink};

/// The frames of one burst, whatever holds them.
pub trait Frames {
    /// How many frames.
    fn count(&self) -> usize;
    /// Frame `i`'s bytes (what the packet view of its buffer is now).
    fn buf(&mut self, i: usize) -> &mut [u8];
    /// Frame `i`'s bytes, shared: a burst reads several at once (its suite-1 tags).
    fn bytes(&self, i: usize) -> &[u8];
}

/// A benchmark's or a test's frames.
impl Frames for [Vec<u8>] {
    fn count(&self) -> usize {
        self.len()
    }

    fn buf(&mut self, i: usize) -> &mut [u8] {
        &mut self[i]
    }

    fn bytes(&self, i: usize) -> &[u8] {
        &self[i]
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
/// each frame, but in three passes over each chunk of 64: every frame's tunnel first
/// (the table's cache misses of one burst overlap), then the headers and bodies (suite
/// 2 sealed there), where each run of consecutive frames to one tunnel takes its
/// sequence numbers with one atomic add and counts with one more, then the suite-1
/// tags of the chunk in one batch ([`Authenticator::tag_many`]: SHA-256 of several
/// datagrams side by side). (No software prefetch between the passes: stable Rust has
/// none without `unsafe`.)
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
    // The datagram length of each sent frame whose suite-1 tag is still to write.
    let mut untagged = [0usize; CHUNK];
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
                let (v, tag_later) =
                    seal_up::<true>(snap, link, t, buf, inner_len, first + j as u64);
                if let (UpVerdict::Tx(len) | UpVerdict::TxClamped(len), true) = (v, tag_later) {
                    untagged[k + j] = len - OUTER_LEN;
                }
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
    tag_up(frames, base, class, &untagged);
}

/// Writes the suite-1 tags of the chunk's datagrams that wait for one (`untagged[k]`
/// is the length of frame `k`'s datagram at [`OUTER_LEN`], 0 for none), computed
/// together.
fn tag_up<F: Frames + ?Sized>(
    frames: &mut F,
    base: usize,
    class: &[UpClass<'_>],
    untagged: &[usize; CHUNK],
) {
    let auth = |k: usize| match class[k] {
        Ok((_, t, _)) => t.tx.authenticator(),
        Err(_) => None,
    };
    let Some(first) = (0..class.len()).find(|&k| untagged[k] > 0) else {
        return;
    };
    let Some(a0) = auth(first) else { return };
    let mut items: [(&Authenticator, &[u8]); CHUNK] = [(a0, &[]); CHUNK];
    let mut at = [0usize; CHUNK];
    let mut m = 0;
    for k in (first..class.len()).filter(|&k| untagged[k] > 0) {
        if let Some(a) = auth(k) {
            let covered = OUTER_LEN..OUTER_LEN + untagged[k] - TAG_LEN;
            items[m] = (a, &frames.bytes(base + k)[covered]);
            at[m] = k;
            m += 1;
        }
    }
    let mut tags = [[0u8; TAG_LEN]; CHUNK];
    Authenticator::tag_many(&items[..m], &mut tags[..m]);
    for (&k, tag) in at[..m].iter().zip(&tags) {
        let end = OUTER_LEN + untagged[k];
        frames.buf(base + k)[end - TAG_LEN..end].copy_from_slice(tag);
    }
}

/// What the first pass of [`downlink_burst`] learnt of a frame that is a datagram to
/// our port: where the datagram lies, its source, and its tunnel if [`decap`] gets as
/// far as looking it up and it exists.
///
/// [`decap`]: ntm_proto::data::decap
#[derive(Clone, Copy)]
struct Parsed<'s> {
    at: usize,
    end: usize,
    from: u64,
    tunnel: Option<&'s Tunnel>,
}

/// [`downlink`] over a burst; `now_nanos` is read once per burst. The same verdicts
/// and bytes as [`downlink`] on each frame, in three passes over each chunk of 64:
/// every frame's outer headers and tunnel first, then the suite-1 tags of the chunk
/// in one batch ([`Cipher::verify_many`]), then each frame's checks in the order of
/// §5 with its tag's result (so the replay window still moves only after an
/// authentic tag). What it records per tunnel (activity, source, counters, the
/// replay window's top) is written once per run of consecutive datagrams of one
/// tunnel ([`MarkOnly`]: the window's lower edge lags by at most the run, never
/// letting a number through twice; the top of a datagram refused after the window,
/// such as one with a bad inner packet, is raised by the next one).
pub fn downlink_burst<F: Frames + ?Sized>(
    snap: &Snapshot,
    frames: &mut F,
    now_nanos: u64,
    out: &mut Vec<DownVerdict>,
) {
    let mut run = RxRun::default();
    let n = frames.count();
    let mut base = 0;
    while base < n {
        let end = (base + CHUNK).min(n);
        let mut parsed: [Result<Parsed<'_>, DownVerdict>; CHUNK] = [Err(DownVerdict::Slow); CHUNK];
        let parsed = &mut parsed[..end - base];
        for (k, p) in parsed.iter_mut().enumerate() {
            *p = parse(snap, frames.bytes(base + k));
        }
        let opened = verify_down(frames, base, parsed);
        for (k, (p, opened)) in parsed.iter().zip(opened).enumerate() {
            let v = match *p {
                Err(v) => v,
                Ok(p) => {
                    let found = Found {
                        dg: p.at..p.end,
                        from: p.from,
                        tunnel: |_| p.tunnel,
                        opened,
                    };
                    open_down(
                        snap,
                        frames.buf(base + k),
                        found,
                        MarkOnly,
                        &mut |t, from, seq, len| run.add(t, from, seq, len, now_nanos),
                    )
                }
            };
            out.push(v);
        }
        base = end;
    }
    run.flush(now_nanos);
}

/// The first pass of [`downlink_burst`] on one frame.
#[inline(always)]
fn parse<'s>(snap: &'s Snapshot, frame: &[u8]) -> Result<Parsed<'s>, DownVerdict> {
    let (dg, from) = parse_down(snap, frame)?;
    let tunnel = tunnel_id_of(&frame[dg.clone()])
        .and_then(|id| snap.by_id.get(&id))
        .map(|t| &**t);
    Ok(Parsed {
        at: dg.start,
        end: dg.end,
        from,
        tunnel,
    })
}

/// The second pass of [`downlink_burst`]: what [`Cipher::open`] gives for each frame
/// of the chunk whose tunnel has a suite-1 receive key, checked together (`None` for
/// the others, opened one by one in the third pass).
fn verify_down<F: Frames + ?Sized>(
    frames: &F,
    base: usize,
    parsed: &[Result<Parsed<'_>, DownVerdict>],
) -> [Option<ntm_proto::Result<()>>; CHUNK] {
    let mut opened = [None; CHUNK];
    let hmac = |k: usize| match parsed[k] {
        Ok(Parsed {
            at,
            end,
            tunnel: Some(t),
            ..
        }) if t.rx.authenticator().is_some() => Some((&t.rx, at..end)),
        _ => None,
    };
    let Some((c0, _)) = (0..parsed.len()).find_map(hmac) else {
        return opened;
    };
    let mut items: [(&Cipher, &[u8]); CHUNK] = [(c0, &[]); CHUNK];
    let mut at = [0usize; CHUNK];
    let mut m = 0;
    for k in 0..parsed.len() {
        if let Some((c, dg)) = hmac(k) {
            items[m] = (c, &frames.bytes(base + k)[dg]);
            at[m] = k;
            m += 1;
        }
    }
    let mut checked = [None; CHUNK];
    Cipher::verify_many(&items[..m], &mut checked[..m]);
    for (&k, c) in at[..m].iter().zip(checked) {
        opened[k] = c;
    }
    opened
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
