//! `dc_load`: a load generator for a real `ntm-dc` process, run by
//! `cargo xtask bench dc` (see docs/deploy.md, "Capacity of one DC").
//!
//! It writes a DC configuration with N nodes (`n<i>.ntm.test`, keys derived
//! from i), starts `ntm-dc` on it pinned to one core (`taskset`), on the redb
//! store, the memory store and the etcd store (a local single-member etcd
//! started for the run, from Debian's etcd-server) in turn, and simulates the N nodes from one
//! UDP socket on 127.0.0.1: every node has the same observed address, so
//! every direction is DIRECT and both ROUTE_DIRs come back to this socket,
//! told apart by their node id. It measures:
//!
//! - registrations per second (REG_REQ → REG_RESP for all N, at most
//!   `--window` outstanding), and the DC's resident memory before and after
//!   (per registered node);
//! - keep-alives at N nodes' rate (N / 20 s), paced, with the DC core's busy
//!   share, then the most it answers (closed loop, `--window` outstanding);
//! - directions (DIR_REQ → CN's ROUTE_DIR → our ROUTE_ACK as CN → MN's
//!   ROUTE_DIR), closed loop for the most per second, then paced at
//!   `--dir-rate`; latency from DIR_REQ sent to MN's ROUTE_DIR received.
//!
//! An example rather than a binary of the package: it is a tool for the
//! bench, not part of the DC, and needs nothing `ntm-dc` does not already
//! depend on (socket2 is a dev-dependency). It keeps its own work small:
//! DIR_REQs of the paced run are sealed before it starts, answers are parsed
//! without checking their tags, and it reports its own CPU share so that a
//! figure the generator bounds is visible as such.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use ntm_proto::wire::{Caps, DirReq, Fqdn, Header, Message, RegReq, RouteAck};
use ntm_proto::{Authenticator, Key, MessageType, Packet, Repr};

const USAGE: &str = "dc_load --dc-bin PATH [--nodes N] [--secs S] [--dir-rate R] [--window W] [--stores redb,memory,etcd] [--dc-core C] [--port P] [--dir DIR]";

/// The etcd process of the etcd store's run: the tests' helper.
#[allow(dead_code)]
#[path = "../tests/support/etcd.rs"]
mod etcd_process;

struct Opts {
    dc_bin: PathBuf,
    nodes: usize,
    secs: f64,
    dir_rate: f64,
    window: usize,
    stores: Vec<String>,
    dc_core: String,
    port: u16,
    dir: PathBuf,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        dc_bin: PathBuf::new(),
        nodes: 100_000,
        secs: 10.0,
        dir_rate: 20_000.0,
        window: 64,
        stores: vec!["redb".into(), "memory".into(), "etcd".into()],
        dc_core: "0".into(),
        port: 17710,
        dir: std::env::temp_dir().join(format!("ntm-dc-load-{}", std::process::id())),
    };
    let mut a = std::env::args().skip(1);
    while let Some(k) = a.next() {
        let mut v = || {
            a.next()
                .with_context(|| format!("{k} needs a value; {USAGE}"))
        };
        match k.as_str() {
            "--dc-bin" => o.dc_bin = v()?.into(),
            "--nodes" => o.nodes = v()?.parse()?,
            "--secs" => o.secs = v()?.parse()?,
            "--dir-rate" => o.dir_rate = v()?.parse()?,
            "--window" => o.window = v()?.parse()?,
            "--stores" => o.stores = v()?.split(',').map(str::to_owned).collect(),
            "--dc-core" => o.dc_core = v()?,
            "--port" => o.port = v()?.parse()?,
            "--dir" => o.dir = v()?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {k}; {USAGE}"),
        }
    }
    if o.dc_bin.as_os_str().is_empty() {
        bail!("--dc-bin is required; {USAGE}");
    }
    if o.nodes < 2 || o.window == 0 {
        bail!("--nodes must be at least 2 and --window at least 1");
    }
    Ok(o)
}

/// Node i's key: distinct per node, reproducible.
fn key_of(i: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    let b = (i as u64).to_be_bytes();
    for (j, x) in k.iter_mut().enumerate() {
        *x = b[j % 8] ^ (j as u8).wrapping_mul(37) ^ 0x5a;
    }
    k
}

fn fqdn_of(i: usize) -> String {
    format!("n{i}.ntm.test")
}

/// The DC's configuration: N nodes, a pool and limits that fit them.
fn write_config(o: &Opts, store: &str, etcd: Option<&str>, dir: &Path) -> Result<PathBuf> {
    let path = dir.join("dc.toml");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(f, "listen = \"127.0.0.1:{}\"", o.port)?;
    writeln!(f, "domain = \"ntm.test\"\nvip_pool = \"100.64.0.0/10\"")?;
    writeln!(f, "keepalive_secs = 20\nlease_secs = 600")?;
    // Room for every node, and for every direction of a run kept for
    // DIRECTION_RETENTION (30 s).
    writeln!(f, "max_registrations = {}", o.nodes + 16)?;
    writeln!(f, "max_directions = 4000000")?;
    writeln!(f, "stats_interval_secs = 3600")?;
    writeln!(f, "status_socket = \"{}\"", dir.join("dc.sock").display())?;
    writeln!(f, "[store]\nkind = \"{store}\"")?;
    writeln!(f, "state_dir = \"{}\"", dir.display())?;
    if let Some(url) = etcd {
        writeln!(f, "endpoints = [\"{url}\"]\ndc_name = \"bench\"")?;
    }
    for i in 0..o.nodes {
        let hex: String = key_of(i).iter().map(|b| format!("{b:02x}")).collect();
        writeln!(f, "[[node]]\nfqdn = \"{}\"\nkey = \"{hex}\"", fqdn_of(i))?;
    }
    f.flush()?;
    drop(f);
    // Inline keys: the DC refuses a configuration others can read.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(path)
}

/// The DC under test; killed when dropped.
struct Dc {
    child: Child,
}

impl Dc {
    fn start(o: &Opts, config: &Path) -> Result<Dc> {
        let child = Command::new("taskset")
            .args(["-c", &o.dc_core])
            .arg(&o.dc_bin)
            .arg("--config")
            .arg(config)
            // One log line per registration would be part of the figure.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(config.with_file_name("dc.log"))?)
            .spawn()
            .context("starting ntm-dc under taskset")?;
        Ok(Dc { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS in kB.
    fn rss_kb(&self) -> Result<u64> {
        rss_of(self.pid())
    }

    /// CPU time (user + system) in seconds.
    fn cpu_secs(&self) -> Result<f64> {
        cpu_of(&format!("/proc/{}/stat", self.pid()))
    }
}

impl Drop for Dc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process in kB.
fn rss_of(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The local etcd of the etcd store's run, and its CPU time at the start.
struct EtcdRun {
    etcd: etcd_process::Etcd,
    pid: u32,
    cpu0: f64,
    start: Instant,
}

impl EtcdRun {
    fn start() -> Result<EtcdRun> {
        let etcd = etcd_process::Etcd::start();
        let pid = etcd.pid().context("etcd is not running")?;
        let cpu0 = cpu_of(&format!("/proc/{pid}/stat"))?;
        eprintln!("dc_load: etcd pid {pid} at {}", etcd.url);
        Ok(EtcdRun {
            etcd,
            pid,
            cpu0,
            start: Instant::now(),
        })
    }

    /// etcd's RSS (kB) now and its CPU share since the start.
    fn finish(self) -> Result<(u64, f64)> {
        let cpu = cpu_of(&format!("/proc/{}/stat", self.pid))? - self.cpu0;
        Ok((rss_of(self.pid)?, cpu / self.start.elapsed().as_secs_f64()))
    }
}

/// utime + stime of /proc/<pid>/stat, in seconds (USER_HZ is 100 on Linux).
fn cpu_of(stat: &str) -> Result<f64> {
    let s = std::fs::read_to_string(stat)?;
    let rest = &s[s.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

struct Node {
    auth: Authenticator,
    fqdn: String,
    id: u32,
}

/// The simulated nodes on one socket.
struct Sim {
    sock: UdpSocket,
    local: SocketAddrV4,
    dc: SocketAddr,
    nodes: Vec<Node>,
    by_id: HashMap<u32, usize>,
    seq: u64,
    rx: Vec<u8>,
}

impl Sim {
    fn new(o: &Opts) -> Result<Sim> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        // Bursts of answers must not overflow it (capped by rmem_max).
        let _ = s.set_recv_buffer_size(16 << 20);
        let _ = s.set_send_buffer_size(16 << 20);
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let sock: UdpSocket = s.into();
        sock.set_read_timeout(Some(Duration::from_micros(200)))?;
        let SocketAddr::V4(local) = sock.local_addr()? else {
            bail!("not IPv4");
        };
        let nodes = (0..o.nodes)
            .map(|i| Node {
                auth: Authenticator::new(&Key::from_bytes(key_of(i))),
                fqdn: fqdn_of(i),
                id: 0,
            })
            .collect();
        Ok(Sim {
            sock,
            local,
            dc: SocketAddr::from(([127, 0, 0, 1], o.port)),
            nodes,
            by_id: HashMap::new(),
            // Signaling seqs start at the Unix time in ns (§2).
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64,
            rx: vec![0u8; 2048],
        })
    }

    /// One message from node i, sealed with its key. One seq counter for
    /// all nodes keeps each node's strictly increasing.
    fn seal(&mut self, i: usize, id: u32, message: Message<'_>) -> Vec<u8> {
        self.seq += 1;
        let repr = Repr::new(
            Header {
                id,
                seq: self.seq,
                response_required: true,
            },
            message,
        );
        let mut b = vec![0u8; repr.buffer_len()];
        repr.emit_sealed(&mut b, &self.nodes[i].auth)
            .expect("sized buffer");
        b
    }

    fn reg_req(&mut self, i: usize) -> Vec<u8> {
        let fqdn = self.nodes[i].fqdn.clone();
        let local = self.local;
        self.seal(
            i,
            0,
            Message::RegReq(RegReq {
                req_id: i as u32 + 1,
                fqdn: Fqdn::new(&fqdn).expect("valid FQDN"),
                local_addr: local,
                caps: Caps::NODE,
            }),
        )
    }

    fn keepalive(&mut self, i: usize) -> Vec<u8> {
        let id = self.nodes[i].id;
        self.seal(i, id, Message::Keepalive)
    }

    fn dir_req(&mut self, mn: usize, cn: usize, req_id: u32) -> Vec<u8> {
        let fqdn = self.nodes[cn].fqdn.clone();
        let id = self.nodes[mn].id;
        self.seal(
            mn,
            id,
            Message::DirReq(DirReq {
                req_id,
                fqdn: Fqdn::new(&fqdn).expect("valid FQDN"),
            }),
        )
    }

    fn send(&self, d: &[u8]) {
        // A full send buffer loses the datagram: counted as unanswered.
        let _ = self.sock.send_to(d, self.dc);
    }

    /// The next datagram (or `None` after the read time-out), parsed
    /// without checking its tag: what the DC sends is not what is measured.
    fn recv(&mut self) -> Option<Got> {
        let (n, _) = self.sock.recv_from(&mut self.rx).ok()?;
        let p = Packet::new_checked(&self.rx[..n]).ok()?;
        let kind = p.check_header().ok()?;
        let id = p.id();
        let repr = Repr::parse(&p).ok()?;
        Some(match (kind, repr.message) {
            (MessageType::RegResp, Message::RegResp(r)) => Got::RegResp {
                req_id: r.req_id,
                node_id: r.result.ok().map(|l| l.node_id),
            },
            (MessageType::KeepaliveAck, _) => Got::KeepaliveAck,
            (MessageType::RouteDir, Message::RouteDir(r)) => Got::RouteDir {
                node_id: id,
                req_id: r.req_id,
                tunnel_id: r.result.ok().map(|t| t.tunnel_id),
            },
            _ => Got::Other,
        })
    }

    /// CN's side of a direction: ROUTE_ACK for CN's ROUTE_DIR.
    fn ack(&mut self, node_id: u32, tunnel_id: u32) {
        if let Some(&i) = self.by_id.get(&node_id) {
            let d = self.seal(i, node_id, Message::RouteAck(RouteAck { tunnel_id }));
            self.send(&d);
        }
    }
}

enum Got {
    RegResp {
        req_id: u32,
        node_id: Option<u32>,
    },
    KeepaliveAck,
    RouteDir {
        node_id: u32,
        req_id: u32,
        tunnel_id: Option<u32>,
    },
    Other,
}

/// Our own CPU time, to show when the generator is the bound.
fn own_cpu() -> f64 {
    cpu_of("/proc/self/stat").unwrap_or(0.0)
}

#[derive(Default, Clone)]
struct Run {
    rate: f64,
    done: u64,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    dc_busy: f64,
    gen_busy: f64,
}

impl Run {
    /// The DC's CPU time per operation, in µs: what one core's capacity
    /// follows from, however busy the machine's other tenants keep it.
    fn us_per_op(&self) -> f64 {
        self.dc_busy * 1e6 / self.rate
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// How long after its registration (or last keep-alive) a node sends a
/// keep-alive while the others register: a slow store's registration run
/// outlasts the three 20 s intervals after which a node lapses.
const REG_KEEPALIVE: Duration = Duration::from_secs(20);

/// Register every node, `window` outstanding, retransmitting after 1 s;
/// registered nodes keep alive meanwhile.
fn register(sim: &mut Sim, window: usize) -> Result<Run> {
    let n = sim.nodes.len();
    let start = Instant::now();
    let mut next = 0usize;
    let mut outstanding: VecDeque<(Instant, usize)> = VecDeque::new();
    let mut alive: VecDeque<(Instant, usize)> = VecDeque::new();
    let mut done = 0usize;
    let mut retx = 0u64;
    while done < n {
        while let Some(&(at, i)) = alive.front() {
            if at.elapsed() < REG_KEEPALIVE {
                break;
            }
            alive.pop_front();
            let d = sim.keepalive(i);
            sim.send(&d);
            alive.push_back((Instant::now(), i));
        }
        while outstanding.len() < window && next < n {
            let d = sim.reg_req(next);
            sim.send(&d);
            outstanding.push_back((Instant::now(), next));
            next += 1;
        }
        if let Some(Got::RegResp {
            req_id,
            node_id: Some(id),
        }) = sim.recv()
        {
            let i = req_id as usize - 1;
            if i < n && sim.nodes[i].id == 0 {
                sim.nodes[i].id = id;
                sim.by_id.insert(id, i);
                alive.push_back((Instant::now(), i));
                done += 1;
            }
        }
        // Answered ones leave the front; the oldest unanswered is resent.
        while let Some(&(at, i)) = outstanding.front() {
            if sim.nodes[i].id != 0 {
                outstanding.pop_front();
            } else if at.elapsed() > Duration::from_secs(1) {
                outstanding.pop_front();
                let d = sim.reg_req(i);
                sim.send(&d);
                outstanding.push_back((Instant::now(), i));
                retx += 1;
            } else {
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("registration stalled at {done} of {n}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Run {
        rate: n as f64 / secs,
        done: n as u64,
        lost: retx,
        ..Run::default()
    })
}

/// Keep-alives round-robin over all nodes: paced at `rate` per second, or
/// (rate `None`) as fast as answered with `window` outstanding.
fn keepalives(sim: &mut Sim, dc: &Dc, rate: Option<f64>, window: usize, secs: f64) -> Result<Run> {
    let n = sim.nodes.len();
    let (cpu0, gen0) = (dc.cpu_secs()?, own_cpu());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut acked, mut next) = (0u64, 0u64, 0usize);
    while Instant::now() < end {
        let due = match rate {
            Some(r) => (start.elapsed().as_secs_f64() * r) as u64,
            None => acked + window as u64,
        };
        while sent < due {
            let d = sim.keepalive(next);
            sim.send(&d);
            next = (next + 1) % n;
            sent += 1;
        }
        if let Some(Got::KeepaliveAck) = sim.recv() {
            acked += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (dc_busy, gen_busy) = ((dc.cpu_secs()? - cpu0) / secs, (own_cpu() - gen0) / secs);
    // Late answers.
    let grace = Instant::now() + Duration::from_millis(300);
    while Instant::now() < grace {
        if let Some(Got::KeepaliveAck) = sim.recv() {
            acked += 1;
        }
    }
    Ok(Run {
        rate: acked as f64 / secs,
        done: acked,
        lost: sent.saturating_sub(acked),
        dc_busy,
        gen_busy,
        ..Run::default()
    })
}

/// Takes one answer: CN's ROUTE_DIR is acknowledged at once (false); MN's
/// ends a direction (true), measured from `sent_at` unless it carries a
/// status instead of a tunnel.
fn take_route_dir(
    sim: &mut Sim,
    first_req: u32,
    sent_at: &[Instant],
    lat: &mut Vec<Duration>,
) -> bool {
    match sim.recv() {
        Some(Got::RouteDir {
            node_id,
            req_id: 0,
            tunnel_id: Some(t),
        }) => {
            sim.ack(node_id, t);
            false
        }
        Some(Got::RouteDir {
            req_id, tunnel_id, ..
        }) if req_id >= first_req => {
            if let (Some(at), Some(_)) = (sent_at.get((req_id - first_req) as usize), tunnel_id) {
                lat.push(at.elapsed());
            }
            true
        }
        _ => false,
    }
}

/// Directions between pairs (2k, 2k+1) of nodes: paced at `rate`, or
/// closed loop with `window` outstanding. CN's ROUTE_DIR is acknowledged
/// at once; latency is DIR_REQ sent → MN's ROUTE_DIR received.
fn directions(
    sim: &mut Sim,
    dc: &Dc,
    rate: Option<f64>,
    window: usize,
    secs: f64,
    first_req: u32,
) -> Result<Run> {
    let n = sim.nodes.len();
    let pair = |k: usize| ((2 * k) % n, (2 * k + 1) % n);
    // The paced run's DIR_REQs are sealed before the clock starts.
    let pre: Vec<Vec<u8>> = match rate {
        Some(r) => (0..(r * secs) as usize)
            .map(|k| {
                let (mn, cn) = pair(k);
                sim.dir_req(mn, cn, first_req + k as u32)
            })
            .collect(),
        None => Vec::new(),
    };
    let (cpu0, gen0) = (dc.cpu_secs()?, own_cpu());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut lat: Vec<Duration> = Vec::new();
    let mut outstanding = 0usize;
    let got = |sim: &mut Sim, sent_at: &[Instant], lat: &mut Vec<Duration>| {
        take_route_dir(sim, first_req, sent_at, lat)
    };
    while Instant::now() < end {
        let k = sent_at.len();
        let due = match rate {
            Some(r) => ((start.elapsed().as_secs_f64() * r) as usize).min(pre.len()),
            None => k + window.saturating_sub(outstanding),
        };
        while sent_at.len() < due {
            let k = sent_at.len();
            sent_at.push(Instant::now());
            match rate {
                Some(_) => sim.send(&pre[k]),
                None => {
                    let (mn, cn) = pair(k);
                    let d = sim.dir_req(mn, cn, first_req + k as u32);
                    sim.send(&d);
                }
            }
            outstanding += 1;
        }
        if got(sim, &sent_at, &mut lat) {
            outstanding = outstanding.saturating_sub(1);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (dc_busy, gen_busy) = ((dc.cpu_secs()? - cpu0) / secs, (own_cpu() - gen0) / secs);
    let grace = Instant::now() + Duration::from_millis(500);
    while Instant::now() < grace {
        got(sim, &sent_at, &mut lat);
    }
    let done = lat.len() as u64;
    lat.sort_unstable();
    Ok(Run {
        rate: done as f64 / secs,
        done,
        lost: sent_at.len() as u64 - done,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        dc_busy,
        gen_busy,
    })
}

struct Report {
    store: String,
    /// Lines the DC logged at WARN or above (overload shows there).
    warnings: usize,
    reg: Run,
    rss_before_kb: u64,
    rss_after_kb: u64,
    /// etcd's resident memory and CPU share over the whole run (etcd only).
    etcd: Option<(u64, f64)>,
    ka_target: Run,
    ka_max: Run,
    dir_max: Run,
    dir_paced: Run,
}

fn wait_for_dc(sim: &mut Sim, dc: &mut Dc) -> Result<()> {
    // The DC answers a REG_REQ once it listens; node 0's registration
    // counts as done then.
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = dc.child.try_wait()? {
            bail!("ntm-dc exited: {status}");
        }
        let d = sim.reg_req(0);
        sim.send(&d);
        let t = Instant::now() + Duration::from_millis(200);
        while Instant::now() < t {
            if let Some(Got::RegResp {
                req_id: 1,
                node_id: Some(id),
            }) = sim.recv()
            {
                sim.nodes[0].id = id;
                sim.by_id.insert(id, 0);
                return Ok(());
            }
        }
        if Instant::now() > give_up {
            bail!("ntm-dc did not answer within 120 s");
        }
    }
}

fn one_store(o: &Opts, store: &str) -> Result<Report> {
    let dir = o.dir.join(store);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let etcd = (store == "etcd").then(EtcdRun::start).transpose()?;
    let url = etcd.as_ref().map(|e| e.etcd.url.clone());
    let config = write_config(o, store, url.as_deref(), &dir)?;
    let mut sim = Sim::new(o)?;
    let mut dc = Dc::start(o, &config)?;
    eprintln!(
        "dc_load: {store}: ntm-dc pid {} on core {}, {} nodes",
        dc.pid(),
        o.dc_core,
        o.nodes
    );
    wait_for_dc(&mut sim, &mut dc)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before_kb = dc.rss_kb()?;
    // Node 0 registered while waiting; register the rest (0 again too).
    sim.nodes[0].id = 0;
    let reg = register(&mut sim, o.window)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_after_kb = dc.rss_kb()?;
    eprintln!(
        "dc_load: {store}: registered {} nodes at {:.0}/s",
        reg.done, reg.rate
    );
    let ka_target = keepalives(&mut sim, &dc, Some(o.nodes as f64 / 20.0), o.window, o.secs)?;
    let ka_max = keepalives(&mut sim, &dc, None, o.window, o.secs)?;
    eprintln!("dc_load: {store}: keep-alives {:.0}/s at most", ka_max.rate);
    let dir_max = directions(&mut sim, &dc, None, o.window, o.secs, 1)?;
    eprintln!("dc_load: {store}: directions {:.0}/s at most", dir_max.rate);
    let dir_paced = directions(&mut sim, &dc, Some(o.dir_rate), o.window, o.secs, 1 << 30)?;
    drop(dc);
    let etcd = etcd.map(|e| e.finish()).transpose()?;
    let log = std::fs::read_to_string(dir.join("dc.log")).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| {
            (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("kind = \"memory\"")
        })
        .count();
    if std::env::var_os("DC_LOAD_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Report {
        store: store.to_owned(),
        warnings,
        reg,
        rss_before_kb,
        rss_after_kb,
        etcd,
        ka_target,
        ka_max,
        dir_max,
        dir_paced,
    })
}

fn print(o: &Opts, reports: &[Report]) {
    let ka_rate = o.nodes as f64 / 20.0;
    println!(
        "\nntm-dc on one core (taskset -c {}), {} nodes, {} s per run, window {}\n",
        o.dc_core, o.nodes, o.secs, o.window
    );
    println!(
        "| measure | target | {} |",
        reports
            .iter()
            .map(|r| r.store.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|{}", "---|".repeat(reports.len()));
    let row = |name: &str, target: &str, f: &dyn Fn(&Report) -> String| {
        let cells: Vec<String> = reports.iter().map(f).collect();
        println!("| {name} | {target} | {} |", cells.join(" | "));
    };
    row("registrations/s (all N)", "-", &|r| {
        format!("{:.0} ({} resent)", r.reg.rate, r.reg.lost)
    });
    row("RSS before → after registering", "-", &|r| {
        format!(
            "{:.1} → {:.1} MiB",
            r.rss_before_kb as f64 / 1024.0,
            r.rss_after_kb as f64 / 1024.0
        )
    });
    row("RSS per registered node", "report", &|r| {
        format!(
            "{:.0} B",
            (r.rss_after_kb.saturating_sub(r.rss_before_kb) * 1024) as f64 / o.nodes as f64
        )
    });
    row(
        "etcd: RSS at the end, CPU share over the run",
        "-",
        &|r| match r.etcd {
            Some((kb, busy)) => format!("{:.0} MiB, {:.0}%", kb as f64 / 1024.0, busy * 100.0),
            None => "-".into(),
        },
    );
    // Rate, losses, and the DC's CPU: its busy share and µs per operation.
    let load = |r: &Run| {
        format!(
            "{:.0}/s, {} lost; DC core {:.0}% busy, {:.1} µs/op; generator {:.0}%",
            r.rate,
            r.lost,
            r.dc_busy * 100.0,
            r.us_per_op(),
            r.gen_busy * 100.0
        )
    };
    row(
        &format!("keep-alives paced at {ka_rate:.0}/s (N / 20 s)"),
        &format!("{ka_rate:.0}/s"),
        &|r| load(&r.ka_target),
    );
    row("keep-alives, most (closed loop)", "-", &|r| load(&r.ka_max));
    row("directions, most (closed loop)", "≥ 20000/s", &|r| {
        load(&r.dir_max)
    });
    row("  latency p50 / p99 (closed loop)", "p99 ≤ 5 ms", &|r| {
        format!("{:.2} / {:.2} ms", r.dir_max.p50_ms, r.dir_max.p99_ms)
    });
    row(
        &format!("directions paced at {:.0}/s", o.dir_rate),
        "≥ 20000/s",
        &|r| load(&r.dir_paced),
    );
    row("  latency p50 / p99 (paced)", "p99 ≤ 5 ms", &|r| {
        format!("{:.2} / {:.2} ms", r.dir_paced.p50_ms, r.dir_paced.p99_ms)
    });
    row("DC warnings (e.g. CN never acknowledged)", "0", &|r| {
        r.warnings.to_string()
    });
}

fn main() -> Result<()> {
    let o = opts()?;
    std::fs::create_dir_all(&o.dir)?;
    let mut reports = Vec::new();
    for store in &o.stores {
        reports.push(one_store(&o, store).with_context(|| format!("the {store} store run"))?);
    }
    if std::env::var_os("DC_LOAD_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&o.dir);
    }
    print(&o, &reports);
    Ok(())
}
