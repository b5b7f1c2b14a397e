//! ntma's two datapaths with a tunnel the bench publishes itself (no DC, no signaling:
//! the [`TunnelParams`] the control thread would hand the data plane at `TunnelUp`, ntma
//! as the initiator), the peer's end (the responder) played by the bench in cn with
//! ntm-proto. The tunnel runs in [`Tuning::suite`], AES-256-GCM (suite 2) by default,
//! with the direction keys derived from a random `K_tun`: ntma sends with `K_i2r` (the
//! sink in cn opens with it) and receives with `K_r2i` (the generator and the echo in cn
//! seal with it).
//!
//! * `ntma` — the AF_XDP fast path ([`ntma_user::fastpath::AfXdp`]);
//! * `raw` — the raw-socket datapath, the paper's method ([`ntma_user::rawpath::RawPath`]).
//!
//! Both are a [`Datapath`] (tunnel table, counters, drop reasons), so one set-up drives
//! either.

use std::net::{SocketAddrV4, UdpSocket};

use anyhow::{anyhow, Context, Result};
use ntm_proto::data::{RxTunnel, SeqCounter, TxTunnel};
use ntm_proto::node::TunnelParams;
use ntm_proto::{Cipher, DirectionKeys, Key, Path, Suite};
use ntm_testbed::{Role, CN_ADDR, NTMA_LAN_ADDR, NTMA_WAN_ADDR, VIP_POOL};
use ntma_common::XdpConfig;
use ntma_user::datapath::{Datapath, DatapathKind, GnLink, Link};
use ntma_user::fastpath::{AfXdp, AfXdpConfig, FastDrop};
use ntma_user::gn::MacAddr;
use ntma_user::rawpath::{Classify, RawConfig, RawPath};
use serde::{Deserialize, Serialize};

use super::Gateway;
use crate::bench::{
    Bench, Direction, Flow, Source, CN_PORT, CN_VIP, ECHO_PORT, GN_ADDR, GN_PORT, NTM_PORT,
};
use crate::check::Check;
use crate::latency::{Echo, EchoServer};

/// Tuning of ntma's datapaths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuning {
    /// Workers (AF_XDP: one per queue; the testbed must have at least as many queues).
    pub workers: u32,
    /// Cores, worker `i` on `cores[i % len]`.
    pub cores: Vec<usize>,
    /// Frames per burst.
    pub batch: usize,
    /// RX and TX ring entries per AF_XDP socket.
    pub ring: u32,
    /// Spin when idle instead of sleeping in poll(2).
    pub busy_poll: bool,
    /// The tunnel's suite (results written before suites existed read as suite 1).
    #[serde(default = "TunnelSuite::v1")]
    pub suite: TunnelSuite,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            workers: 1,
            cores: vec![1],
            batch: 64,
            ring: 2048,
            busy_poll: false,
            suite: TunnelSuite::default(),
        }
    }
}

impl Tuning {
    /// A short label: `2w b64 r2048 aes-256-gcm`.
    pub fn label(&self) -> String {
        format!(
            "{}w b{} r{}{} {}",
            self.workers,
            self.batch,
            self.ring,
            if self.busy_poll { " busy" } else { "" },
            self.suite.name()
        )
    }
}

/// The suite of the bench's tunnel (docs/protocol.md §2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelSuite {
    /// Suite 2, AES-256-GCM: the DC's default.
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// Suite 1, HMAC-SHA256-128 (authentication only).
    #[serde(rename = "hmac-sha256-128")]
    HmacSha256128,
}

impl TunnelSuite {
    /// ntm-proto's suite.
    pub fn suite(self) -> Suite {
        match self {
            TunnelSuite::Aes256Gcm => Suite::Aes256Gcm,
            TunnelSuite::HmacSha256128 => Suite::HmacSha256_128,
        }
    }

    /// `aes-256-gcm` or `hmac-sha256-128`.
    pub fn name(self) -> &'static str {
        self.suite().name()
    }

    fn v1() -> TunnelSuite {
        TunnelSuite::HmacSha256128
    }
}

/// ntma (AF_XDP or raw) in the ntma namespace with one published tunnel to cn.
pub struct Tunneled {
    datapath: Box<dyn Datapath>,
    tunnel_id: u32,
    /// The peer's (cn's) send direction key, `K_r2i`: ntma receives with it.
    peer_tx: Cipher,
    /// The peer's receive direction key, `K_i2r`: ntma sends with it.
    peer_rx: Cipher,
    /// The peer's send counter (cn → gn): the downlink generators and the echo share it.
    peer_seq: SeqCounter,
    tuning: Tuning,
}

fn random_u32() -> Result<u32> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no OS randomness: {e}"))?;
    Ok(u32::from_be_bytes(b).max(1))
}

fn random_key() -> Result<Key> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no OS randomness: {e}"))?;
    Ok(Key::from_bytes(b))
}

impl Tunneled {
    /// Starts ntma's AF_XDP datapath with `tuning`.
    pub fn afxdp(bench: &Bench, tuning: Tuning) -> Result<Tunneled> {
        let xdp = XdpConfig::new(
            u32::from(VIP_POOL.0),
            VIP_POOL.1,
            u32::from(NTMA_LAN_ADDR),
            NTM_PORT,
        );
        let mut cfg = AfXdpConfig::new("lan0", "wan0", xdp);
        cfg.queues = tuning.workers;
        cfg.cores = tuning.cores.clone();
        cfg.batch = tuning.batch;
        cfg.rx_ring = tuning.ring;
        cfg.tx_ring = tuning.ring;
        cfg.busy_poll = tuning.busy_poll;
        cfg.umem.fill_size = tuning.ring.max(2048);
        cfg.umem.completion_size = tuning.ring.max(2048);
        // Enough frames for every ring of every worker to be full at once (the
        // datapath's limits ask for that much).
        cfg.umem.frame_count = 2 * (cfg.umem.fill_size + tuning.ring) * tuning.workers;
        let datapath = bench
            .tb
            .in_netns(Role::Ntma, || AfXdp::start(cfg))?
            .context("starting ntma's AF_XDP datapath in the ntma namespace")?;
        Tunneled::publish(bench, Box::new(datapath), tuning)
    }

    /// Starts ntma's raw-socket datapath with `tuning` (one worker; `batch` packets per
    /// system call).
    pub fn raw(bench: &Bench, tuning: Tuning) -> Result<Tunneled> {
        let core = tuning.cores.first().copied();
        let batch = tuning.batch;
        let busy_poll = tuning.busy_poll;
        let raw = bench.tb.in_netns(Role::Ntma, move || -> Result<RawPath> {
            let wan = UdpSocket::bind(SocketAddrV4::new(NTMA_WAN_ADDR, NTM_PORT))
                .context("binding the tunnel socket in ntma")?;
            RawPath::start(RawConfig {
                lan_if: "lan0".into(),
                wan,
                classify: Classify {
                    vip_net: VIP_POOL.0,
                    vip_prefix_len: VIP_POOL.1,
                    router: NTMA_LAN_ADDR,
                },
                core,
                batch,
                busy_poll,
                slow_slots: 256,
                inner_mtu: ntma_user::fastpath::INNER_MTU as u16,
            })
            .context("starting ntma's raw datapath")
        })??;
        Tunneled::publish(
            bench,
            Box::new(raw),
            Tuning {
                workers: 1,
                ..tuning
            },
        )
    }

    fn publish(bench: &Bench, datapath: Box<dyn Datapath>, tuning: Tuning) -> Result<Tunneled> {
        let l = &bench.links;
        datapath.set_gns(&[GnLink {
            vip: GN_ADDR,
            mac: Some(MacAddr(l.gn.mac)),
        }]);
        datapath.set_link(Some(Link {
            lan_mac: MacAddr(l.lan0.mac),
            wan_mac: MacAddr(l.wan0.mac),
            wan_ip: NTMA_WAN_ADDR,
            wan_port: NTM_PORT,
            gateway_mac: MacAddr(l.nat1_lan.mac),
        }));
        let tunnel_id = random_u32()?;
        let keys = DirectionKeys::derive(&random_key()?);
        let suite = tuning.suite.suite();
        // ntma is the initiator: it sends with K_i2r and receives with K_r2i.
        let (i2r, r2i) = keys
            .for_role(ntm_proto::Role::Initiator)
            .ok_or_else(|| anyhow!("no direction keys for the initiator"))?;
        let params = TunnelParams {
            tunnel_id,
            peer_fqdn: "cn.ntm.test".into(),
            peer_vip: CN_VIP,
            endpoint: bench.cn_ntm(),
            path: Path::Direct,
            role: ntm_proto::Role::Initiator,
            suite,
            tx_key: i2r.clone(),
            rx_key: r2i.clone(),
            tx_seq: SeqCounter::starting_at(1),
            local_vip: GN_ADDR,
        };
        datapath
            .tunnel_up(&params)
            .map_err(|e| anyhow!("publishing the bench's tunnel: {e}"))?;
        let cipher = |k: &Key| Cipher::new(suite, k).map_err(|e| anyhow!("{e}"));
        Ok(Tunneled {
            datapath,
            tunnel_id,
            peer_tx: cipher(r2i)?,
            peer_rx: cipher(i2r)?,
            peer_seq: SeqCounter::starting_at(1),
            tuning,
        })
    }

    /// The tuning it runs with.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// Drops by reason summed over workers, non-zero ones only.
    pub fn drops(&self) -> Vec<(FastDrop, u64)> {
        let totals = self.datapath.state().drop_totals();
        FastDrop::ALL
            .iter()
            .map(|r| (*r, totals[r.index()]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl Drop for Tunneled {
    fn drop(&mut self) {
        self.datapath.stop();
    }
}

impl Gateway for Tunneled {
    fn name(&self) -> String {
        match self.datapath.kind() {
            DatapathKind::AfXdp => "ntma",
            DatapathKind::Raw => "raw",
        }
        .into()
    }

    fn flow(&mut self, bench: &Bench, dir: Direction) -> Result<Flow> {
        let gn = SocketAddrV4::new(GN_ADDR, GN_PORT);
        let peer = SocketAddrV4::new(CN_VIP, CN_PORT);
        let cn_ntm = bench.cn_ntm();
        Ok(match dir {
            Direction::Up => Flow {
                from: Role::Gn,
                source: Source::Plain {
                    bind: gn,
                    dst: peer,
                },
                sink_port: NTM_PORT,
                check: Check::NtmTags {
                    bind: cn_ntm,
                    cipher: Box::new(self.peer_rx.clone()),
                    tunnel_id: self.tunnel_id,
                },
                offered_at: None,
            },
            Direction::Down => {
                // gn's packets through the tunnel open nat1's mapping of ntma's port.
                let mapped = bench.learn_mapping(Role::Gn, gn, peer, Role::Cn, cn_ntm)?;
                Flow {
                    from: Role::Cn,
                    source: Source::Ntm {
                        bind: cn_ntm,
                        dst: mapped,
                        tunnel_id: self.tunnel_id,
                        cipher: Box::new(self.peer_tx.clone()),
                        inner_src: peer,
                        inner_dst: gn,
                        seq: self.peer_seq.clone(),
                    },
                    sink_port: GN_PORT,
                    check: Check::None,
                    offered_at: None,
                }
            }
        })
    }

    fn echo(&mut self, _bench: &Bench) -> Result<Echo> {
        Ok(Echo {
            target: SocketAddrV4::new(CN_VIP, ECHO_PORT),
            server: EchoServer::Ntm {
                bind: SocketAddrV4::new(CN_ADDR, NTM_PORT),
                rx: Box::new(RxTunnel::new(self.peer_rx.clone(), GN_ADDR, CN_VIP)),
                tx: Box::new(TxTunnel {
                    tunnel_id: self.tunnel_id,
                    cipher: self.peer_tx.clone(),
                    seq: self.peer_seq.clone(),
                }),
            },
        })
    }

    fn notes(&self) -> Option<String> {
        let drops = self.drops();
        let mut s = self.tuning.label();
        if self.datapath.kind() == DatapathKind::AfXdp {
            s.push_str(&format!(", AF_XDP {} mode", self.datapath.mode()));
        }
        if self.datapath.tx_errors() > 0 {
            s.push_str(&format!(", {} sends refused", self.datapath.tx_errors()));
        }
        if !drops.is_empty() {
            let d: Vec<String> = drops.iter().map(|(r, n)| format!("{r} {n}")).collect();
            s.push_str(&format!("; drops: {}", d.join(", ")));
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_runs_suite_2_by_default_and_old_results_read_as_suite_1() {
        let t = Tuning::default();
        assert_eq!(t.suite.suite(), Suite::Aes256Gcm);
        assert_eq!(t.label(), "1w b64 r2048 aes-256-gcm");
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains(r#""suite":"aes-256-gcm""#), "{json}");
        assert_eq!(serde_json::from_str::<Tuning>(&json).unwrap(), t);
        let old = r#"{"workers":1,"cores":[1],"batch":64,"ring":2048,"busy_poll":false}"#;
        let old: Tuning = serde_json::from_str(old).unwrap();
        assert_eq!(old.suite, TunnelSuite::HmacSha256128);
        assert_eq!(old.suite.name(), "hmac-sha256-128");
    }
}
