//! The datapaths `ntm-bench dp` puts in the DUT namespace, and what each direction
//! sends, where it is counted and how samples are checked.
//!
//! | name | what forwards |
//! |---|---|
//! | `ntma` | the AF_XDP fast path, tunnel in suite 2 (AES-256-GCM) |
//! | `ntma-s1` | the same, suite 1 (HMAC-SHA256-128) |
//! | `ntma-base` | `ntma` without its run-time optimisations (`AfXdpConfig::baseline`, no spinning before poll): the before of the same run |
//! | `l2fwd` | the AF_XDP fast path's loop with `Forward::L2`: MACs rewritten, nothing else |
//! | `kernel-rps` | Linux IP forwarding, RPS of `lan0`/`wan0` to CPU 1, no encapsulation |
//! | `raw-b1`, `raw-b64` | the raw-socket datapath, 1 (the paper's relay) or 64 packets per system call |
//!
//! The tunnel is published by hand as in `gateways/tunnel.rs`: ntma is the initiator,
//! the peer (played in `dst`) seals with `K_r2i` and its samples are opened with `K_i2r`.

use std::net::{SocketAddrV4, UdpSocket};

use anyhow::{anyhow, Context, Result};
use ntm_proto::data::SeqCounter;
use ntm_proto::node::TunnelParams;
use ntm_proto::{Cipher, DirectionKeys, Key, Path, Suite};
use ntm_testbed::VIP_POOL;
use ntma_common::XdpConfig;
use ntma_user::datapath::{Datapath, DatapathKind, GnLink, Link};
use ntma_user::fastpath::{AfXdp, AfXdpConfig, FastDrop, Forward};
use ntma_user::gn::MacAddr;
use ntma_user::rawpath::{Classify, RawConfig, RawPath};
use serde::{Deserialize, Serialize};

use super::topo::{Side, Topo, DUT_LAN_ADDR, DUT_WAN_ADDR, PEER_ADDR};
use crate::bench::{Direction, CN_PORT, CN_VIP, GN_ADDR, GN_PORT, NTM_PORT};
use crate::check::Check;
use crate::packet::{ipv4_udp, write_eth, write_ipv4_udp, NtmDatagram, ETH_HLEN, IP_UDP_HLEN};

/// The CPU of the datapath's worker (and of RPS).
pub const WORKER_CPU: usize = 1;

/// A datapath of `ntm-bench dp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum DpKind {
    /// ntma's AF_XDP datapath, suite 2.
    Ntma,
    /// ntma's AF_XDP datapath, suite 1.
    NtmaS1,
    /// `Ntma` with the fast path's run-time optimisations off: per-packet processing,
    /// a TX wake-up every turn, the kernel's TX budget, no spinning before poll(2).
    NtmaBase,
    /// The AF_XDP loop forwarding at layer 2 only.
    L2fwd,
    /// Linux IP forwarding, RPS to CPU 1.
    KernelRps,
    /// The raw-socket datapath, one packet per system call.
    RawB1,
    /// The raw-socket datapath, 64 packets per system call.
    RawB64,
}

impl DpKind {
    /// Every datapath, in table order.
    pub const ALL: [DpKind; 7] = [
        DpKind::Ntma,
        DpKind::NtmaS1,
        DpKind::NtmaBase,
        DpKind::L2fwd,
        DpKind::KernelRps,
        DpKind::RawB1,
        DpKind::RawB64,
    ];

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            DpKind::Ntma => "ntma",
            DpKind::NtmaS1 => "ntma-s1",
            DpKind::NtmaBase => "ntma-base",
            DpKind::L2fwd => "l2fwd",
            DpKind::KernelRps => "kernel-rps",
            DpKind::RawB1 => "raw-b1",
            DpKind::RawB64 => "raw-b64",
        }
    }

    fn suite(self) -> Suite {
        match self {
            DpKind::NtmaS1 => Suite::HmacSha256_128,
            _ => Suite::Aes256Gcm,
        }
    }

    /// Whether the DUT terminates an NTM tunnel.
    pub fn tunnels(self) -> bool {
        matches!(
            self,
            DpKind::Ntma | DpKind::NtmaS1 | DpKind::NtmaBase | DpKind::RawB1 | DpKind::RawB64
        )
    }
}

/// The peer's side of the tunnel.
#[derive(Clone)]
pub struct Peer {
    /// ntma's receive tunnel id.
    pub tunnel_id: u32,
    /// The peer's send key (`K_r2i`).
    pub tx: Cipher,
    /// The peer's receive key (`K_i2r`).
    pub rx: Cipher,
    /// The peer's send counter: every frame it ever seals has a fresh number.
    pub seq: SeqCounter,
}

impl Peer {
    fn new(suite: Suite) -> Result<(Peer, TunnelParams)> {
        let mut b = [0u8; 36];
        getrandom::fill(&mut b).map_err(|e| anyhow!("no OS randomness: {e}"))?;
        let tunnel_id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(1);
        let key: [u8; 32] = b[4..].try_into().expect("32 bytes");
        let keys = DirectionKeys::derive(&Key::from_bytes(key));
        let (i2r, r2i) = keys
            .for_role(ntm_proto::Role::Initiator)
            .ok_or_else(|| anyhow!("no direction keys for the initiator"))?;
        let params = TunnelParams {
            tunnel_id,
            peer_fqdn: "cn.ntm.test".into(),
            peer_vip: CN_VIP,
            endpoint: SocketAddrV4::new(PEER_ADDR, NTM_PORT),
            path: Path::Direct,
            role: ntm_proto::Role::Initiator,
            suite,
            tx_key: i2r.clone(),
            rx_key: r2i.clone(),
            tx_seq: SeqCounter::starting_at(1),
            local_vip: GN_ADDR,
        };
        let cipher = |k: &Key| Cipher::new(suite, k).map_err(|e| anyhow!("{e}"));
        let peer = Peer {
            tunnel_id,
            tx: cipher(r2i)?,
            rx: cipher(i2r)?,
            seq: SeqCounter::starting_at(1),
        };
        Ok((peer, params))
    }
}

/// The datapath under test, set up in the DUT namespace; undone on drop.
pub struct Dut {
    /// Which.
    pub kind: DpKind,
    datapath: Option<Box<dyn Datapath>>,
    peer: Option<Peer>,
    undo: Option<(String, String)>,
}

pub(crate) fn xdp_config() -> XdpConfig {
    XdpConfig::new(
        u32::from(VIP_POOL.0),
        VIP_POOL.1,
        u32::from(DUT_LAN_ADDR),
        NTM_PORT,
    )
}

fn afxdp_config() -> AfXdpConfig {
    let mut cfg = AfXdpConfig::new("lan0", "wan0", xdp_config());
    cfg.cores = vec![WORKER_CPU];
    cfg
}

/// The l2fwd reference's configuration: MACs for frames leaving on each side.
fn l2_config(topo: &Topo) -> Result<AfXdpConfig> {
    let l = &topo.links;
    let mut to_wan = [0u8; 12];
    to_wan[..6].copy_from_slice(&l.dst.mac);
    to_wan[6..].copy_from_slice(&l.wan0.mac);
    let mut to_lan = [0u8; 12];
    to_lan[..6].copy_from_slice(&l.src.mac);
    to_lan[6..].copy_from_slice(&l.lan0.mac);
    let mut cfg = afxdp_config();
    cfg.forward = Forward::L2 { to_wan, to_lan };
    Ok(cfg)
}

impl Dut {
    /// Sets up `kind` in the DUT namespace of `topo`.
    pub fn start(topo: &Topo, kind: DpKind) -> Result<Dut> {
        let ns = topo.ns(Side::Dut);
        let mut dut = Dut {
            kind,
            datapath: None,
            peer: None,
            undo: None,
        };
        match kind {
            DpKind::Ntma | DpKind::NtmaS1 | DpKind::NtmaBase => {
                let mut cfg = afxdp_config();
                if kind == DpKind::NtmaBase {
                    cfg.baseline = true;
                    cfg.spin_turns = 0;
                }
                let dp = ntm_testbed::in_netns(&ns, || AfXdp::start(cfg))?
                    .context("starting ntma's AF_XDP datapath in the DUT namespace")?;
                dut.publish(topo, Box::new(dp))?;
            }
            DpKind::L2fwd => {
                let cfg = l2_config(topo)?;
                let dp = ntm_testbed::in_netns(&ns, || AfXdp::start(cfg))?
                    .context("starting the l2fwd reference in the DUT namespace")?;
                // The XDP program redirects only GN frames and NTM DATA: it must know
                // the GN.
                dp.set_gns(&[GnLink {
                    vip: GN_ADDR,
                    mac: Some(MacAddr(topo.links.src.mac)),
                }]);
                dut.datapath = Some(Box::new(dp));
                // l2fwd forwards whatever DATA arrives; the frames are sealed anyway.
                dut.peer = Some(Peer::new(Suite::Aes256Gcm)?.0);
            }
            DpKind::KernelRps => dut.kernel_rps(topo)?,
            DpKind::RawB1 | DpKind::RawB64 => {
                let batch = if kind == DpKind::RawB1 { 1 } else { 64 };
                let raw = ntm_testbed::in_netns(&ns, move || -> Result<RawPath> {
                    let wan = UdpSocket::bind(SocketAddrV4::new(DUT_WAN_ADDR, NTM_PORT))
                        .context("binding the tunnel socket in the DUT")?;
                    RawPath::start(RawConfig {
                        lan_if: "lan0".into(),
                        wan,
                        classify: Classify {
                            vip_net: VIP_POOL.0,
                            vip_prefix_len: VIP_POOL.1,
                            router: DUT_LAN_ADDR,
                        },
                        core: Some(WORKER_CPU),
                        batch,
                        busy_poll: false,
                        slow_slots: 256,
                        inner_mtu: ntma_user::fastpath::INNER_MTU as u16,
                    })
                    .context("starting ntma's raw datapath")
                })??;
                dut.publish(topo, Box::new(raw))?;
            }
        }
        Ok(dut)
    }

    fn kernel_rps(&mut self, topo: &Topo) -> Result<()> {
        let ns = topo.ns(Side::Dut);
        let rps = |v: u32| {
            format!(
                "sysctl -qw net.ipv4.ip_forward={}\n\
                 echo {v:x} > /sys/class/net/lan0/queues/rx-0/rps_cpus\n\
                 echo {v:x} > /sys/class/net/wan0/queues/rx-0/rps_cpus",
                u32::from(v != 0)
            )
        };
        self.undo = Some((ns, rps(0)));
        topo.sh(Side::Dut, &rps(1 << WORKER_CPU))?;
        Ok(())
    }

    fn publish(&mut self, topo: &Topo, datapath: Box<dyn Datapath>) -> Result<()> {
        let l = &topo.links;
        datapath.set_gns(&[GnLink {
            vip: GN_ADDR,
            mac: Some(MacAddr(l.src.mac)),
        }]);
        datapath.set_link(Some(Link {
            lan_mac: MacAddr(l.lan0.mac),
            wan_mac: MacAddr(l.wan0.mac),
            wan_ip: DUT_WAN_ADDR,
            wan_port: NTM_PORT,
            gateway_mac: MacAddr(l.dst.mac),
        }));
        let (peer, params) = Peer::new(self.kind.suite())?;
        datapath
            .tunnel_up(&params)
            .map_err(|e| anyhow!("publishing the bench's tunnel: {e}"))?;
        self.datapath = Some(datapath);
        self.peer = Some(peer);
        Ok(())
    }

    /// The running ntma datapath, if the DUT is one.
    pub fn datapath(&self) -> Option<&dyn Datapath> {
        self.datapath.as_deref()
    }

    /// The worker thread's id (its CPU time is the datapath's), if it has one.
    pub fn worker_tid(&self) -> Option<u32> {
        let name = self.datapath.as_ref()?.worker_thread(0);
        find_thread(&name)
    }

    /// The traffic of direction `dir` at inner packet size `size`.
    pub fn flow(&self, topo: &Topo, dir: Direction, size: usize) -> Result<FlowSpec> {
        let l = &topo.links;
        let inner_up = ipv4_udp(GN_ADDR, CN_VIP, GN_PORT, CN_PORT, size);
        let payload = size.saturating_sub(IP_UDP_HLEN);
        let gn_check = Check::Pattern {
            bind: SocketAddrV4::new(GN_ADDR, GN_PORT),
            len: payload,
        };
        Ok(match (dir, self.kind.tunnels()) {
            (Direction::Up, tunnels) => FlowSpec {
                from: Side::Src,
                frame: FrameSpec::Repeat(eth_frame(l.lan0.mac, l.src.mac, &inner_up)),
                sink_port: if tunnels { NTM_PORT } else { CN_PORT },
                check: match &self.peer {
                    Some(p) if tunnels => Check::NtmTags {
                        bind: SocketAddrV4::new(PEER_ADDR, NTM_PORT),
                        cipher: Box::new(p.rx.clone()),
                        tunnel_id: p.tunnel_id,
                    },
                    _ => Check::Pattern {
                        bind: SocketAddrV4::new(CN_VIP, CN_PORT),
                        len: payload,
                    },
                },
            },
            (Direction::Down, true) => FlowSpec {
                from: Side::Dst,
                frame: FrameSpec::Sealed(Box::new(self.sealer(topo, size)?)),
                sink_port: GN_PORT,
                check: gn_check,
            },
            (Direction::Down, false) if self.kind == DpKind::L2fwd => {
                let mut s = self.sealer(topo, size)?;
                let frame = s.seal_one();
                FlowSpec {
                    from: Side::Dst,
                    frame: FrameSpec::Repeat(frame),
                    sink_port: NTM_PORT,
                    // The frame reaches src unchanged but for its MACs; src holds the
                    // DUT's WAN address for this check.
                    check: Check::NtmTags {
                        bind: SocketAddrV4::new(DUT_WAN_ADDR, NTM_PORT),
                        cipher: Box::new(s.peer.tx.clone()),
                        tunnel_id: s.peer.tunnel_id,
                    },
                }
            }
            (Direction::Down, false) => {
                let inner = ipv4_udp(CN_VIP, GN_ADDR, CN_PORT, GN_PORT, size);
                FlowSpec {
                    from: Side::Dst,
                    frame: FrameSpec::Repeat(eth_frame(l.wan0.mac, l.dst.mac, &inner)),
                    sink_port: GN_PORT,
                    check: gn_check,
                }
            }
        })
    }

    fn sealer(&self, topo: &Topo, size: usize) -> Result<Sealer> {
        let peer = self
            .peer
            .clone()
            .ok_or_else(|| anyhow!("{} has no tunnel", self.kind.name()))?;
        let inner = ipv4_udp(CN_VIP, GN_ADDR, CN_PORT, GN_PORT, size);
        let mut head = [0u8; ETH_HLEN];
        write_eth(&mut head, topo.links.wan0.mac, topo.links.dst.mac);
        Ok(Sealer {
            datagram: NtmDatagram::new(peer.tunnel_id, &inner),
            peer,
            head,
        })
    }

    /// The datapath's counters now.
    pub fn counters(&self) -> DutCounters {
        let Some(dp) = &self.datapath else {
            return DutCounters::default();
        };
        let mut c = DutCounters {
            tx_errors: dp.tx_errors(),
            af_xdp: dp.kind() == DatapathKind::AfXdp,
            ..DutCounters::default()
        };
        for w in dp.state().worker_stats() {
            c.rx += w.lan_rx + w.wan_rx;
            c.tx += w.lan_tx + w.wan_tx;
            c.batches += w.batches;
            c.slow += w.slow + w.too_big;
            c.kicks += w.lan_kicks + w.wan_kicks;
            c.polls += w.polls;
            c.cycles_process += w.cycles_process;
            c.cycles_ring += w.cycles_ring;
            c.cycles_syscall += w.cycles_syscall;
            for r in FastDrop::ALL {
                c.drops[r.index()] += w.drops[r.index()];
            }
        }
        for r in dp.ring_stats() {
            c.xsk_rx_dropped += r.stats.rx_dropped;
            c.xsk_rx_ring_full += r.stats.rx_ring_full;
            c.xsk_fill_empty += r.stats.rx_fill_ring_empty_descs;
            c.xsk_tx_invalid += r.stats.tx_invalid_descs;
        }
        c
    }
}

impl Drop for Dut {
    fn drop(&mut self) {
        if let Some(mut dp) = self.datapath.take() {
            dp.stop();
        }
        if let Some((ns, script)) = self.undo.take() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "sh", "-c", &script])
                .output();
        }
    }
}

/// The id of this process's thread named `name`.
fn find_thread(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == name)
                .then(|| e.file_name().to_str()?.parse().ok())
                .flatten()
        })
}

/// An Ethernet frame around an IPv4 packet.
pub fn eth_frame(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; ETH_HLEN + ip.len()];
    write_eth(&mut f, dst, src);
    f[ETH_HLEN..].copy_from_slice(ip);
    f
}

/// Seals the peer's DATA frames (dst → DUT) with fresh sequence numbers.
pub struct Sealer {
    datagram: NtmDatagram,
    peer: Peer,
    head: [u8; ETH_HLEN],
}

impl Sealer {
    /// Bytes of each frame.
    pub fn frame_len(&self) -> usize {
        ETH_HLEN + IP_UDP_HLEN + self.datagram.bytes().len()
    }

    fn write(&mut self, seq: u64, out: &mut [u8]) {
        let dg = self.datagram.seal(seq, &self.peer.tx);
        out[..ETH_HLEN].copy_from_slice(&self.head);
        out[ETH_HLEN + IP_UDP_HLEN..].copy_from_slice(dg);
        write_ipv4_udp(
            &mut out[ETH_HLEN..],
            (PEER_ADDR, NTM_PORT),
            (DUT_WAN_ADDR, NTM_PORT),
        );
    }

    /// One frame.
    pub fn seal_one(&mut self) -> Vec<u8> {
        let mut f = vec![0u8; self.frame_len()];
        let seq = self.peer.seq.reserve(1);
        self.write(seq, &mut f);
        f
    }

    /// Fills `pool` with `count` frames of consecutive fresh sequence numbers.
    pub fn fill(&mut self, pool: &mut Vec<u8>, count: usize) {
        let len = self.frame_len();
        pool.resize(count * len, 0);
        let first = self.peer.seq.reserve(count as u64);
        for (i, out) in pool.chunks_exact_mut(len).enumerate() {
            self.write(first + i as u64, out);
        }
    }
}

/// What one direction sends.
pub enum FrameSpec {
    /// One frame over and over.
    Repeat(Vec<u8>),
    /// Sealed DATA, each frame once (boxed: a prepared AES-256-GCM key is large).
    Sealed(Box<Sealer>),
}

/// One direction through the DUT.
pub struct FlowSpec {
    /// The sending side.
    pub from: Side,
    /// What it sends.
    pub frame: FrameSpec,
    /// The UDP port the sink at the other end counts.
    pub sink_port: u16,
    /// How samples are checked.
    pub check: Check,
}

impl FlowSpec {
    /// The receiving side.
    pub fn to(&self) -> Side {
        if self.from == Side::Src {
            Side::Dst
        } else {
            Side::Src
        }
    }
}

/// A datapath's counters (summed over workers and sockets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DutCounters {
    /// Frames received on both sides.
    pub rx: u64,
    /// Frames sent on both sides.
    pub tx: u64,
    /// Bursts that received at least one frame.
    pub batches: u64,
    /// Frames handed to the control (slow path, too big).
    pub slow: u64,
    /// Drops by reason ([`FastDrop::index`]).
    pub drops: [u64; FastDrop::COUNT],
    /// Sends a socket refused (raw datapath).
    pub tx_errors: u64,
    /// AF_XDP: frames the kernel dropped for want of RX ring room or fill frames.
    pub xsk_rx_dropped: u64,
    /// AF_XDP: times the RX ring was full.
    pub xsk_rx_ring_full: u64,
    /// AF_XDP: times the fill ring was empty.
    pub xsk_fill_empty: u64,
    /// AF_XDP: invalid TX descriptors.
    pub xsk_tx_invalid: u64,
    /// Whether the datapath is AF_XDP (the kick and cycle counters below are its own;
    /// the raw datapath keeps none).
    pub af_xdp: bool,
    /// TX wake-ups (sendto) on both sides.
    pub kicks: u64,
    /// poll(2) calls when idle.
    pub polls: u64,
    /// Loop time on frame work, ring operations and system calls (sleep included), in
    /// `ntma_user::fastpath::cycles_per_second` units.
    pub cycles_process: u64,
    /// See `cycles_process`.
    pub cycles_ring: u64,
    /// See `cycles_process`.
    pub cycles_syscall: u64,
}

impl DutCounters {
    /// `self - before`, counter by counter.
    pub fn since(&self, before: &DutCounters) -> DutCounters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let mut drops = [0; FastDrop::COUNT];
        for (i, o) in drops.iter_mut().enumerate() {
            *o = d(self.drops[i], before.drops[i]);
        }
        DutCounters {
            rx: d(self.rx, before.rx),
            tx: d(self.tx, before.tx),
            batches: d(self.batches, before.batches),
            slow: d(self.slow, before.slow),
            drops,
            tx_errors: d(self.tx_errors, before.tx_errors),
            xsk_rx_dropped: d(self.xsk_rx_dropped, before.xsk_rx_dropped),
            xsk_rx_ring_full: d(self.xsk_rx_ring_full, before.xsk_rx_ring_full),
            xsk_fill_empty: d(self.xsk_fill_empty, before.xsk_fill_empty),
            xsk_tx_invalid: d(self.xsk_tx_invalid, before.xsk_tx_invalid),
            af_xdp: self.af_xdp,
            kicks: d(self.kicks, before.kicks),
            polls: d(self.polls, before.polls),
            cycles_process: d(self.cycles_process, before.cycles_process),
            cycles_ring: d(self.cycles_ring, before.cycles_ring),
            cycles_syscall: d(self.cycles_syscall, before.cycles_syscall),
        }
    }

    /// Drops by reason, the non-zero ones, as `reason count`.
    pub fn drop_text(&self) -> Vec<String> {
        FastDrop::ALL
            .iter()
            .filter(|r| self.drops[r.index()] > 0)
            .map(|r| format!("{r} {}", self.drops[r.index()]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ipv4_checksum_ok;
    use ntm_proto::data::{decap, Decapped, RxTunnel};

    #[test]
    fn sealed_pools_open_at_ntma_with_fresh_sequence_numbers() {
        for suite in [Suite::Aes256Gcm, Suite::HmacSha256_128] {
            let (peer, params) = Peer::new(suite).unwrap();
            let inner = ipv4_udp(CN_VIP, GN_ADDR, CN_PORT, GN_PORT, 64);
            let mut s = Sealer {
                datagram: NtmDatagram::new(peer.tunnel_id, &inner),
                peer: peer.clone(),
                head: [0; ETH_HLEN],
            };
            // ntma receives with K_r2i, from the peer's VIP to the GN's.
            let mut rx =
                RxTunnel::new(Cipher::new(suite, &params.rx_key).unwrap(), CN_VIP, GN_ADDR);
            let len = s.frame_len();
            let mut pool = Vec::new();
            let mut want = 1;
            for count in [3, 2] {
                s.fill(&mut pool, count);
                assert_eq!(pool.len(), count * len);
                for f in pool.chunks_exact(len) {
                    assert!(ipv4_checksum_ok(&f[ETH_HLEN..]));
                    let mut dg = f[ETH_HLEN + IP_UDP_HLEN..].to_vec();
                    match decap(&mut dg, |id| (id == peer.tunnel_id).then_some(&mut rx)) {
                        Ok(Decapped::Data {
                            seq, inner: got, ..
                        }) => {
                            assert_eq!(seq, want);
                            assert_eq!(got, &inner[..]);
                        }
                        other => panic!("{suite:?}: {other:?}"),
                    }
                    want += 1;
                }
            }
            // One more frame, on from the pools.
            let one = s.seal_one();
            assert_eq!(one.len(), len);
            assert_eq!(peer.seq.peek(), want + 1);
        }
    }
}
