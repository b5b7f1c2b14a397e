//! The traffic source: a thread inside a namespace that sends UDP as fast as it can with
//! `sendmmsg` on one or more connected sockets, plain or as NTM DATA sealed per packet
//! (the peer's side of a tunnel), and counts what the kernel accepted.

use std::io::IoSlice;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders};
use ntm_proto::data::SeqCounter;
use ntm_proto::Cipher;

use crate::packet::{udp_payload_len, NtmDatagram};

/// What each datagram carries.
#[derive(Clone)]
pub enum Payload {
    /// A plain UDP payload that makes IPv4 packets of `packet_len` bytes.
    Plain {
        /// IPv4 packet length (header included).
        packet_len: usize,
    },
    /// NTM DATA of tunnel `tunnel_id` around `inner`, sealed with the next number of
    /// `seq` per packet (shared with every other sender of this tunnel direction, so
    /// that consecutive runs never look like replays, and a suite-2 nonce never repeats).
    Ntm {
        /// The receiver's tunnel id.
        tunnel_id: u32,
        /// The sender's direction key in the tunnel's suite (suite 2 by default; boxed:
        /// a prepared AES-256-GCM key is large).
        cipher: Box<Cipher>,
        /// The inner IPv4 packet.
        inner: Vec<u8>,
        /// The tunnel direction's send counter.
        seq: SeqCounter,
    },
}

/// A traffic source.
#[derive(Clone)]
pub struct GenConfig {
    /// Namespace to send from.
    pub ns: String,
    /// CPU to pin the sending thread to.
    pub cpu: Option<usize>,
    /// Local address of the first socket; flow `i` binds port `bind.port() + i`
    /// (port 0: ephemeral ports).
    pub bind: SocketAddrV4,
    /// Number of sockets (UDP flows), sent to in turn.
    pub flows: u16,
    /// Where to send.
    pub dst: SocketAddrV4,
    /// What to send.
    pub payload: Payload,
    /// Datagrams per `sendmmsg`.
    pub batch: usize,
}

/// A running source; [`Generator::stop`] ends it.
pub struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Generator {
    /// Opens the sockets and starts sending; returns once the sockets are ready, or with
    /// the error that kept them from opening.
    pub fn start(cfg: GenConfig) -> Result<Generator> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (s, n, e) = (stop.clone(), sent.clone(), errors.clone());
        let thread = std::thread::Builder::new()
            .name("bench-gen".into())
            .spawn(move || {
                let ns = cfg.ns.clone();
                ntm_testbed::in_netns(&ns, move || run(cfg, &s, &n, &e, ready_tx))?
            })
            .context("starting the generator thread")?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Generator {
                stop,
                sent,
                errors,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                match thread.join() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(anyhow!("the generator did not start within 10 s")),
                }
            }
        }
    }

    /// Datagrams the kernel has accepted so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends that failed so far (e.g. ICMP errors reported on the connected socket).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Stops the source; returns what it sent in all.
    pub fn stop(mut self) -> Result<u64> {
        self.halt()?;
        Ok(self.sent())
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow!("the generator thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            tracing::warn!("generator: {e:#}");
        }
    }
}

fn open(cfg: &GenConfig) -> Result<Vec<UdpSocket>> {
    let mut socks = Vec::new();
    for i in 0..cfg.flows.max(1) {
        let port = match cfg.bind.port() {
            0 => 0,
            p => p
                .checked_add(i)
                .ok_or_else(|| anyhow!("flow ports past 65535"))?,
        };
        let local = SocketAddrV4::new(*cfg.bind.ip(), port);
        let s = UdpSocket::bind(local)
            .with_context(|| format!("binding the generator socket to {local} in {}", cfg.ns))?;
        s.connect(cfg.dst)
            .with_context(|| format!("connecting the generator socket to {}", cfg.dst))?;
        socks.push(s);
    }
    Ok(socks)
}

fn run(
    cfg: GenConfig,
    stop: &AtomicBool,
    sent: &AtomicU64,
    errors: &AtomicU64,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    let socks = match cfg
        .cpu
        .map_or(Ok(()), crate::net::pin)
        .and_then(|()| open(&cfg))
    {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let batch = cfg.batch.clamp(1, 1024);
    let mut burst = Burst {
        // Connected sockets: no addresses (`()`), nothing for nix to read back.
        headers: MultiHeaders::<()>::preallocate(batch, None),
        addrs: vec![None; batch],
        sent,
        errors,
    };
    match cfg.payload {
        Payload::Plain { packet_len } => {
            let buf = vec![0x5au8; udp_payload_len(packet_len)];
            let iovs: Vec<[IoSlice<'_>; 1]> = (0..batch).map(|_| [IoSlice::new(&buf)]).collect();
            while !stop.load(Ordering::Relaxed) {
                for s in &socks {
                    burst.send(s, &iovs);
                }
            }
        }
        Payload::Ntm {
            tunnel_id,
            cipher,
            inner,
            seq,
        } => {
            let mut dgs: Vec<NtmDatagram> = (0..batch)
                .map(|_| NtmDatagram::new(tunnel_id, &inner))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                for s in &socks {
                    // One reservation per burst: consecutive numbers, one atomic add.
                    let first = seq.reserve(dgs.len() as u64);
                    for (i, d) in dgs.iter_mut().enumerate() {
                        d.seal(first + i as u64, &cipher);
                    }
                    let iovs: Vec<[IoSlice<'_>; 1]> =
                        dgs.iter().map(|d| [IoSlice::new(d.bytes())]).collect();
                    burst.send(s, &iovs);
                }
            }
        }
    }
    Ok(())
}

/// One `sendmmsg` per burst on a connected socket, counted.
struct Burst<'c> {
    headers: MultiHeaders<()>,
    addrs: Vec<Option<()>>,
    sent: &'c AtomicU64,
    errors: &'c AtomicU64,
}

impl Burst<'_> {
    fn send(&mut self, s: &UdpSocket, iovs: &[[IoSlice<'_>; 1]]) {
        let r = sendmmsg(
            s.as_raw_fd(),
            &mut self.headers,
            iovs,
            &self.addrs,
            [],
            MsgFlags::empty(),
        )
        .map(Iterator::count);
        match r {
            Ok(n) => {
                self.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
