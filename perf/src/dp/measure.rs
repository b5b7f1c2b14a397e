//! One trial (the generator at a target rate for a window, then the path drained, every
//! counter read before and after) and the zero-loss search over trials.
//!
//! Loss is `sent − delivered`: frames the generator's kernel completed against frames
//! the sink counted, over the whole trial (the path is drained before the count is
//! taken, so nothing in flight counts as lost). Where it was lost comes from the
//! counters on the way: the veth ends' drop counters, the AF_XDP sockets' kernel
//! counters, the worker's drop reasons and refused sends, the kernel's backlog drops
//! (`/proc/net/softnet_stat`) and the DUT's UDP receive-buffer errors.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::dut::{Dut, DutCounters, FlowSpec, FrameSpec, WORKER_CPU};
use super::topo::{Side, Topo};
use super::xgen::{self, Frames, GenResult, GenRun};
use crate::check::{Checked, Checker};
use crate::xdp::SinkCounts;

/// Settings of every trial.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialSettings {
    /// How long the generator sends.
    pub window: Duration,
    /// One in this many frames the sink counts goes to the checker.
    pub sample_every: u32,
    /// Frames per generator burst.
    pub batch: usize,
    /// The generator's CPU.
    pub gen_cpu: Option<usize>,
    /// Largest pre-sealed pool, bytes.
    pub pool_bytes: usize,
    /// Loss share still counted as none (0: strictly zero).
    pub loss_tolerance: f64,
}

/// CPU time spent during a trial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// The worker thread's time on a CPU (schedstat), ns.
    pub worker_ns: Option<u64>,
    /// `ksoftirqd/1`'s time on a CPU (schedstat), ns: softirq work of CPU 1 that ran
    /// in no task's system call.
    #[serde(default)]
    pub ksoftirqd_ns: Option<u64>,
    /// CPU 1's softirq time (`/proc/stat`), ns: tick-sampled unless the kernel
    /// accounts IRQ time apart.
    pub softirq_ns: u64,
    /// CPU 1's busy time, whatever ran (`/proc/stat`), ns.
    pub busy_ns: u64,
    /// The wall time the readings span, ns.
    pub wall_ns: u64,
}

/// One trial.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trial {
    /// Target rate (`None`: as fast as the generator goes).
    pub target_pps: Option<f64>,
    /// What the generator sent.
    pub gen: GenResult,
    /// Frames the sink counted.
    pub delivered: u64,
    /// `sent − delivered`.
    pub lost: u64,
    /// Where frames were lost, by place (non-zero counts only).
    pub places: Vec<(String, u64)>,
    /// Samples passed to the checker, and its verdicts.
    pub sampled: u64,
    /// The checker's verdicts.
    pub checked: Checked,
    /// CPU time.
    pub cpu: CpuUse,
    /// The datapath's counters over the trial.
    pub dut: DutCounters,
}

impl Trial {
    /// Whether nothing (beyond the tolerance) was lost.
    pub fn passed(&self, tolerance: f64) -> bool {
        self.gen.sent > 0 && self.lost as f64 <= tolerance * self.gen.sent as f64
    }

    /// Delivered frames per second of sending.
    pub fn delivered_pps(&self) -> f64 {
        if self.gen.secs > 0.0 {
            self.delivered as f64 / self.gen.secs
        } else {
            0.0
        }
    }

    /// The place that lost most, with its count.
    pub fn main_place(&self) -> Option<&(String, u64)> {
        self.places.iter().max_by_key(|(_, n)| *n)
    }
}

/// Counters read at the start and the end of a trial.
#[derive(Clone, Debug, Default)]
struct Snap {
    sinks: [SinkCounts; 2],
    dut: DutCounters,
    /// (rx_dropped, tx_dropped) of src eth0, lan0, wan0, dst eth0.
    veth: [(u64, u64); 4],
    softnet_dropped: u64,
    udp_rcvbuf: u64,
    packet_drops: u64,
}

fn snap(topo: &mut Topo, dut: &Dut) -> Result<Snap> {
    let veth = [
        topo.drops(Side::Src, "eth0")?,
        topo.drops(Side::Dut, "lan0")?,
        topo.drops(Side::Dut, "wan0")?,
        topo.drops(Side::Dst, "eth0")?,
    ];
    // The DUT's UDP counters and its packet sockets' drops (the raw datapath's AF_PACKET
    // socket), in one process.
    let out = topo.sh(Side::Dut, "cat /proc/net/snmp; echo ---; ss -0 -a -m -n")?;
    let (snmp, packet) = out.split_once("---").unwrap_or((&out, ""));
    Ok(Snap {
        sinks: [
            topo.sink(Side::Src)?.counts()?,
            topo.sink(Side::Dst)?.counts()?,
        ],
        dut: dut.counters(),
        veth,
        softnet_dropped: softnet_dropped(
            &std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default(),
        ),
        udp_rcvbuf: snmp_value(snmp, "Udp:", "RcvbufErrors").unwrap_or(0),
        packet_drops: skmem_drops(packet),
    })
}

/// The sum of the `dropped` column of `/proc/net/softnet_stat` (hex, one line per CPU).
pub fn softnet_dropped(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum()
}

/// The drops (`d<n>` of `skmem:(...)`) summed over the sockets `ss -m` lists.
pub fn skmem_drops(ss: &str) -> u64 {
    ss.split("skmem:(")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .flat_map(|m| m.split(','))
        .filter_map(|f| f.strip_prefix('d')?.parse::<u64>().ok())
        .sum()
}

/// A counter of `/proc/net/snmp`: the header line of `proto` names the columns, the
/// next line of `proto` holds the values.
pub fn snmp_value(text: &str, proto: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(proto));
    let head = lines.next()?;
    let vals = lines.next()?;
    let i = head.split_whitespace().position(|h| h == name)?;
    vals.split_whitespace().nth(i)?.parse().ok()
}

/// Where the difference between two snapshots says frames were lost; what no counter
/// shows (e.g. an AF_PACKET socket's own drops) as `not located`.
fn places(a: &Snap, b: &Snap, from: Side, lost: u64) -> Vec<(String, u64)> {
    let d = |x: u64, y: u64| y.saturating_sub(x);
    let veth = |i: usize| d(a.veth[i].0, b.veth[i].0) + d(a.veth[i].1, b.veth[i].1);
    // Index of the generator's end and the DUT end it feeds, then the other pair.
    let (inbound, outbound) = if from == Side::Src {
        (veth(0) + veth(1), veth(2) + veth(3))
    } else {
        (veth(3) + veth(2), veth(1) + veth(0))
    };
    let dut = b.dut.since(&a.dut);
    let drops: u64 = dut.drops.iter().sum();
    let mut v = vec![
        // A frame XDP could not redirect into a full AF_XDP socket counts as a drop of
        // the veth too: shown once, at the socket.
        (
            "veth in".to_owned(),
            inbound.saturating_sub(dut.xsk_rx_dropped),
        ),
        ("xsk rx".to_owned(), dut.xsk_rx_dropped),
        (
            "softnet".to_owned(),
            d(a.softnet_dropped, b.softnet_dropped),
        ),
        ("udp rcvbuf".to_owned(), d(a.udp_rcvbuf, b.udp_rcvbuf)),
        ("af_packet".to_owned(), d(a.packet_drops, b.packet_drops)),
        (
            if drops > 0 {
                format!("worker ({})", dut.drop_text().join(", "))
            } else {
                "worker".to_owned()
            },
            drops,
        ),
        ("slow path".to_owned(), dut.slow),
        ("tx refused".to_owned(), dut.tx_errors + dut.xsk_tx_invalid),
        ("veth out".to_owned(), outbound),
    ];
    let located: u64 = v.iter().map(|(_, n)| n).sum();
    v.push(("not located".to_owned(), lost.saturating_sub(located)));
    v.retain(|(_, n)| *n > 0);
    v
}

/// The worker thread's time on a CPU, ns (`/proc/self/task/<tid>/schedstat`).
pub fn thread_ns(tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (softirq, busy) ticks of CPU `cpu` from `/proc/stat` text.
pub fn cpu_ticks(stat: &str, cpu: usize) -> Option<(u64, u64)> {
    let tag = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(tag.as_str()))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Some((at(6), at(0) + at(1) + at(2) + at(5) + at(6) + at(7)))
}

struct CpuMark {
    worker: Option<u64>,
    ksoftirqd: Option<u64>,
    ticks: (u64, u64),
    at: Instant,
}

/// The process id of `ksoftirqd/<cpu>`, the kernel thread that runs the softirq work
/// of CPU `cpu` no task's system call ran.
pub fn ksoftirqd(cpu: usize) -> Option<u32> {
    let name = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
}

fn process_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpu_mark(tid: Option<u32>, ksoftirqd: Option<u32>) -> CpuMark {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    CpuMark {
        worker: tid.and_then(thread_ns),
        ksoftirqd: ksoftirqd.and_then(process_ns),
        ticks: cpu_ticks(&stat, WORKER_CPU).unwrap_or_default(),
        at: Instant::now(),
    }
}

/// `/proc/stat` counts in USER_HZ, 100 per second on Linux (a fixed ABI value).
const TICK_NS: u64 = 10_000_000;

fn cpu_use(a: &CpuMark, b: &CpuMark) -> CpuUse {
    let t = TICK_NS;
    CpuUse {
        worker_ns: a.worker.zip(b.worker).map(|(x, y)| y.saturating_sub(x)),
        ksoftirqd_ns: a
            .ksoftirqd
            .zip(b.ksoftirqd)
            .map(|(x, y)| y.saturating_sub(x)),
        softirq_ns: b.ticks.0.saturating_sub(a.ticks.0) * t,
        busy_ns: b.ticks.1.saturating_sub(a.ticks.1) * t,
        wall_ns: b.at.duration_since(a.at).as_nanos() as u64,
    }
}

/// The rate a pool for an unbounded trial is sealed for: above what the copy-mode
/// generator reaches on veth.
pub const UNBOUNDED_PPS: f64 = 3e6;

/// The bench's state for one (datapath, direction, size): the topology, the DUT, the
/// flow, and the pre-sealed pool's buffer (reused from trial to trial).
pub struct Point<'a> {
    /// The namespaces.
    pub topo: &'a mut Topo,
    /// The datapath.
    pub dut: &'a Dut,
    /// The traffic.
    pub flow: FlowSpec,
    /// Trial settings.
    pub settings: &'a TrialSettings,
    pool: Vec<u8>,
}

impl<'a> Point<'a> {
    /// A point of `flow` through `dut`.
    pub fn new(
        topo: &'a mut Topo,
        dut: &'a Dut,
        flow: FlowSpec,
        settings: &'a TrialSettings,
    ) -> Point<'a> {
        Point {
            topo,
            dut,
            flow,
            settings,
            pool: Vec::new(),
        }
    }

    /// The frames of one trial at `target` pps: pre-sealed DATA is sealed now, enough
    /// for the window at that rate (at [`UNBOUNDED_PPS`] for the full rate), within the
    /// pool size. A generator faster than that ends the trial early, when the pool is
    /// used up (its rate counts the time it sent).
    fn frames(&mut self, target: Option<f64>) -> Frames {
        match &mut self.flow.frame {
            FrameSpec::Repeat(f) => Frames::Repeat(f.clone()),
            FrameSpec::Sealed(sealer) => {
                let len = sealer.frame_len();
                let cap = (self.settings.pool_bytes / len).max(4096);
                let rate = target.unwrap_or(UNBOUNDED_PPS);
                let want = (rate * self.settings.window.as_secs_f64() * 1.05) as usize + 4096;
                sealer.fill(&mut self.pool, want.min(cap));
                Frames::Pool {
                    bytes: Arc::new(std::mem::take(&mut self.pool)),
                    len,
                }
            }
        }
    }

    /// One trial at `target` pps (`None`: as fast as the generator goes).
    pub fn trial(&mut self, target: Option<f64>) -> Result<Trial> {
        let to = self.flow.to();
        let s = self.settings;
        let sample_every = s.sample_every;
        self.topo
            .sink(to)?
            .configure(self.flow.sink_port, sample_every)?;
        let checker = Checker::start(&self.topo.ns(to), &self.flow.check)?;
        let frames = self.frames(target);
        let pool = match &frames {
            Frames::Pool { bytes, .. } => Some(Arc::clone(bytes)),
            Frames::Repeat(_) => None,
        };
        let run = GenRun {
            ns: self.topo.ns(self.flow.from),
            ifname: "eth0".into(),
            cpu: s.gen_cpu,
            frames,
            rate_pps: target,
            duration: s.window,
            batch: s.batch,
        };
        let tid = self.dut.worker_tid();
        let ksoftirqd = ksoftirqd(WORKER_CPU);
        let a = snap(self.topo, self.dut)?;
        let c0 = cpu_mark(tid, ksoftirqd);
        let gen = xgen::run(run, &AtomicBool::new(false))?;
        self.drain(to)?;
        let c1 = cpu_mark(tid, ksoftirqd);
        let b = snap(self.topo, self.dut)?;
        if let Some(p) = pool.and_then(|p| Arc::try_unwrap(p).ok()) {
            self.pool = p;
        }
        let i = usize::from(to == Side::Dst);
        let sampled = b.sinks[i].sampled - a.sinks[i].sampled;
        // Let the checker judge the samples still queued (a sample the kernel dropped
        // never comes: at most two seconds).
        let judged = |c: &Checker| {
            let k = c.checked();
            k.ok + k.bad >= sampled
        };
        if let Some(c) = &checker {
            ntm_testbed::wait_until(Duration::from_secs(2), || judged(c));
        }
        let checked = checker.as_ref().map(Checker::checked).unwrap_or_default();
        drop(checker);
        self.topo.sink(to)?.configure(0, 0)?;
        let delivered = b.sinks[i].packets - a.sinks[i].packets;
        let lost = gen.sent.saturating_sub(delivered);
        Ok(Trial {
            target_pps: target,
            gen,
            delivered,
            lost,
            places: places(&a, &b, self.flow.from, lost),
            sampled,
            checked,
            cpu: cpu_use(&c0, &c1),
            dut: b.dut.since(&a.dut),
        })
    }

    /// Waits until the sink at `to` has counted nothing new for 60 ms (at most 2 s).
    fn drain(&mut self, to: Side) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(2);
        let mut last = self.topo.sink(to)?.counts()?.packets;
        let mut quiet = 0;
        while quiet < 3 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.topo.sink(to)?.counts()?.packets;
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
        Ok(())
    }
}

/// The zero-loss search of one point: one trial as fast as the generator goes, then
/// `steps − 1` trials bisecting between the highest rate without loss and the lowest
/// with (starting at the rate delivered under overload).
pub fn search(point: &mut Point<'_>, steps: usize, mut log: impl FnMut(&Trial)) -> Result<Search> {
    let tol = point.settings.loss_tolerance;
    let first = point.trial(None)?;
    log(&first);
    let gen_max = first.gen.rate();
    let mut out = Search {
        gen_max_pps: gen_max,
        gen_limited: first.passed(tol),
        best: first.passed(tol).then_some(0),
        trials: vec![first],
    };
    if out.gen_limited || gen_max <= 0.0 {
        return Ok(out);
    }
    let (mut lo, mut hi) = (0.0f64, gen_max);
    let mut rate = out.trials[0]
        .delivered_pps()
        .clamp(gen_max * 0.01, gen_max * 0.99);
    for _ in 1..steps.max(1) {
        let t = point.trial(Some(rate))?;
        log(&t);
        if t.passed(tol) {
            lo = rate;
            out.best = Some(out.trials.len());
        } else {
            hi = rate;
        }
        out.trials.push(t);
        rate = (lo + hi) / 2.0;
    }
    Ok(out)
}

/// The trials of one point and what they found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Search {
    /// Every trial, in order.
    pub trials: Vec<Trial>,
    /// The generator's rate when unbounded.
    pub gen_max_pps: f64,
    /// Nothing was lost at the generator's full rate: the generator, not the datapath,
    /// was the limit.
    pub gen_limited: bool,
    /// The trial at the highest rate without loss.
    pub best: Option<usize>,
}

impl Search {
    /// The zero-loss rate (what the generator achieved in the best trial), pps.
    pub fn zero_loss_pps(&self) -> f64 {
        self.best.map_or(0.0, |i| self.trials[i].gen.rate())
    }

    /// The best trial.
    pub fn best_trial(&self) -> Option<&Trial> {
        self.best.map(|i| &self.trials[i])
    }

    /// Samples checked good and bad over every trial.
    pub fn checked(&self) -> Checked {
        self.trials.iter().fold(Checked::default(), |c, t| Checked {
            ok: c.ok + t.checked.ok,
            bad: c.bad + t.checked.bad,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_counters_parse() {
        let softnet = "0000a000 00000003 00000000\n0000b000 00000010 00000001\n";
        assert_eq!(softnet_dropped(softnet), 0x13);
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 0 4 7 3\n";
        assert_eq!(snmp_value(snmp, "Udp:", "RcvbufErrors"), Some(3));
        assert_eq!(snmp_value(snmp, "Udp:", "Nope"), None);
        let ss = "p_raw UNCONN 0 0 *:lan0 *\n\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d17)\n\
                  p_raw UNCONN 0 0 *:wan0 *\n\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d3)\n";
        assert_eq!(skmem_drops(ss), 20);
        assert_eq!(skmem_drops("no sockets"), 0);
        let stat = "cpu  1 1 1 1 1 1 1 1\ncpu0 9 9 9 9 9 9 9 9\ncpu1 1 2 3 4 5 6 7 8\n";
        assert_eq!(cpu_ticks(stat, 1), Some((7, 1 + 2 + 3 + 6 + 7 + 8)));
        assert_eq!(cpu_ticks(stat, 2), None);
        assert!(thread_ns(std::process::id()).is_some());
        assert!(process_ns(std::process::id()).is_some());
    }

    #[test]
    fn a_trial_passes_only_without_loss() {
        let t = Trial {
            target_pps: None,
            gen: GenResult {
                sent: 1000,
                secs: 1.0,
                ..GenResult::default()
            },
            delivered: 999,
            lost: 1,
            places: vec![("xsk rx".into(), 1)],
            sampled: 0,
            checked: Checked::default(),
            cpu: CpuUse::default(),
            dut: DutCounters::default(),
        };
        assert!(!t.passed(0.0));
        assert!(t.passed(0.001));
        assert_eq!(t.delivered_pps(), 999.0);
        assert_eq!(t.main_place().map(|p| p.1), Some(1));
    }
}
