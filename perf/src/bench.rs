//! The bench: a testbed with a source and a sink at each edge (gn and cn), and the
//! measurement of one point (datapath, direction, packet size).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ntm_proto::data::SeqCounter;
use ntm_proto::Cipher;
use ntm_testbed::{Options, Role, Testbed, CN_ADDR, NAT1_LAN_ADDR, NTMA_LAN_ADDR};
use serde::{Deserialize, Serialize};

use crate::check::{Check, Checked, Checker};
use crate::gen::{GenConfig, Generator, Payload};
use crate::net::{self, Link};
use crate::packet::ipv4_udp;
use crate::xdp::Sink;

/// gn's address (a VIP, as the adapter's DHCP server would give it).
pub const GN_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
/// The VIP of cn's end of the NTM tunnels the bench publishes itself.
pub const CN_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);
/// gn's UDP port (source of upstream, destination of downstream traffic).
pub const GN_PORT: u16 = 5000;
/// cn's UDP port for bench traffic.
pub const CN_PORT: u16 = 9000;
/// cn's UDP echo port for the latency ping-pong.
pub const ECHO_PORT: u16 = 9001;
/// The NTM port.
pub const NTM_PORT: u16 = 7700;

/// Which way traffic flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Direction {
    /// gn → cn: the adapter encapsulates.
    Up,
    /// cn → gn: the adapter decapsulates.
    Down,
}

impl Direction {
    /// Both, in table order.
    pub const BOTH: [Direction; 2] = [Direction::Up, Direction::Down];

    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "gn→cn",
            Direction::Down => "cn→gn",
        }
    }
}

/// What a source sends, before the packet size is chosen.
#[derive(Clone)]
pub enum Source {
    /// Plain UDP from `bind` to `dst`.
    Plain {
        /// Local address.
        bind: SocketAddrV4,
        /// Destination.
        dst: SocketAddrV4,
    },
    /// NTM DATA from `bind` to `dst`, as the tunnel's peer would send it.
    Ntm {
        /// Local address (the peer's NTM socket).
        bind: SocketAddrV4,
        /// The adapter's endpoint as the peer sees it.
        dst: SocketAddrV4,
        /// The adapter's receive tunnel id.
        tunnel_id: u32,
        /// The peer's send direction key in the tunnel's suite (boxed: a prepared
        /// AES-256-GCM key is large).
        cipher: Box<Cipher>,
        /// Inner source.
        inner_src: SocketAddrV4,
        /// Inner destination.
        inner_dst: SocketAddrV4,
        /// The peer's send counter of this tunnel.
        seq: SeqCounter,
    },
}

/// One direction through one datapath: who sends what, where it is counted and checked.
#[derive(Clone)]
pub struct Flow {
    /// The sending namespace.
    pub from: Role,
    /// What it sends.
    pub source: Source,
    /// The UDP port the sink at the other edge counts.
    pub sink_port: u16,
    /// What happens to samples.
    pub check: Check,
    /// Where offered load is counted when the source's own count would overstate it:
    /// the TX packets of this interface (e.g. cn `eth0` when a peer daemon in cn
    /// encapsulates what the source writes into its tunnel device). `None`: the source's
    /// count of datagrams the kernel accepted.
    pub offered_at: Option<(Role, &'static str)>,
}

impl Flow {
    /// The receiving edge.
    pub fn to(&self) -> Role {
        if self.from == Role::Gn {
            Role::Cn
        } else {
            Role::Gn
        }
    }
}

/// One measured run of a point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Packets per second the source put on the wire.
    pub offered_pps: f64,
    /// Packets per second the sink counted.
    pub delivered_pps: f64,
    /// Samples passed to the kernel for checking during the window.
    pub sampled: u64,
    /// Of those, checked good and bad.
    pub checked: Checked,
    /// Sends that failed.
    pub send_errors: u64,
    /// Busy share of each CPU during the window (0..1), whatever ran on it.
    #[serde(default)]
    pub cpu_busy: Vec<f64>,
}

/// Timing and sizes of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    /// Traffic before the window opens.
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
    /// Runs per point.
    pub reps: usize,
    /// One in this many counted frames goes to the checker.
    pub sample_every: u32,
    /// CPU of the source thread.
    pub source_cpu: Option<usize>,
    /// Datagrams per `sendmmsg` of the source.
    pub source_batch: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(2),
            reps: 3,
            sample_every: 64,
            source_cpu: Some(0),
            source_batch: 64,
        }
    }
}

/// The testbed with the edges prepared: gn has an address and a route, a sink is
/// attached to gn `eth0` and to cn `eth0`.
pub struct Bench {
    /// Facts about the interfaces on the path.
    pub links: Links,
    /// Timing of every point.
    pub timing: Timing,
    sinks: Vec<(Role, Sink)>,
    /// Last: torn down after everything above.
    pub tb: Testbed,
}

/// The interfaces of the path gn → ntma → nat1 → cn.
#[derive(Clone, Debug)]
pub struct Links {
    /// gn `eth0`.
    pub gn: Link,
    /// ntma `lan0`.
    pub lan0: Link,
    /// ntma `wan0`.
    pub wan0: Link,
    /// nat1 `lan`.
    pub nat1_lan: Link,
    /// cn `eth0`.
    pub cn: Link,
}

impl Bench {
    /// Builds the testbed with `prefix` and `queues` queues on the AF_XDP path, and
    /// prepares the edges.
    pub fn up(prefix: &str, queues: u16, timing: Timing) -> Result<Bench> {
        let tb = Testbed::up_with(
            prefix,
            Options {
                queues,
                ..Options::default()
            },
        )?;
        let links = Links {
            gn: net::link(&tb, Role::Gn, "eth0")?,
            lan0: net::link(&tb, Role::Ntma, "lan0")?,
            wan0: net::link(&tb, Role::Ntma, "wan0")?,
            nat1_lan: net::link(&tb, Role::Nat1, "lan")?,
            cn: net::link(&tb, Role::Cn, "eth0")?,
        };
        // gn: the address the adapter's DHCP would give, the adapter as its router.
        net::sh(
            &tb,
            Role::Gn,
            &format!(
                "ip addr replace {GN_ADDR}/32 dev eth0\n\
                 ip route replace {NTMA_LAN_ADDR}/32 dev eth0\n\
                 ip route replace default via {NTMA_LAN_ADDR} dev eth0\n\
                 ip neigh replace {NTMA_LAN_ADDR} lladdr {} dev eth0 nud permanent",
                fmt_mac(&links.lan0.mac)
            ),
        )?;
        let mut sinks = Vec::new();
        for role in [Role::Gn, Role::Cn] {
            sinks.push((role, Sink::attach(&tb.ns(role), "eth0", 0, 0)?));
        }
        Ok(Bench {
            links,
            timing,
            sinks,
            tb,
        })
    }

    /// The sink of `role`'s edge.
    pub fn sink(&mut self, role: Role) -> Result<&mut Sink> {
        self.sinks
            .iter_mut()
            .find(|(r, _)| *r == role)
            .map(|(_, s)| s)
            .ok_or_else(|| anyhow!("no sink in {role}"))
    }

    /// The generator configuration of `flow` for IPv4 packets of `size` bytes.
    pub fn gen_config(&self, flow: &Flow, size: usize, flows: u16) -> GenConfig {
        let (bind, dst, payload) = match &flow.source {
            Source::Plain { bind, dst } => (*bind, *dst, Payload::Plain { packet_len: size }),
            Source::Ntm {
                bind,
                dst,
                tunnel_id,
                cipher,
                inner_src,
                inner_dst,
                seq,
            } => (
                *bind,
                *dst,
                Payload::Ntm {
                    tunnel_id: *tunnel_id,
                    cipher: cipher.clone(),
                    inner: ipv4_udp(
                        *inner_src.ip(),
                        *inner_dst.ip(),
                        inner_src.port(),
                        inner_dst.port(),
                        size,
                    ),
                    seq: seq.clone(),
                },
            ),
        };
        GenConfig {
            ns: self.tb.ns(flow.from),
            cpu: self.timing.source_cpu,
            bind,
            flows,
            dst,
            payload,
            batch: self.timing.source_batch,
        }
    }

    /// Runs one point once: source on, warm-up, then a window in which the source's
    /// sends, the sink's counts and the checker's verdicts are taken.
    pub fn measure(&mut self, flow: &Flow, size: usize, flows: u16) -> Result<Sample> {
        let to = flow.to();
        let sample_every = match flow.check {
            Check::None => 0,
            _ => self.timing.sample_every,
        };
        self.sink(to)?.configure(flow.sink_port, sample_every)?;
        let checker = Checker::start(&self.tb.ns(to), &flow.check)?;
        let gen = Generator::start(self.gen_config(flow, size, flows))?;
        std::thread::sleep(self.timing.warmup);
        let (s0, c0, g0, e0) = (
            self.sink(to)?.counts()?,
            checker.as_ref().map(Checker::checked).unwrap_or_default(),
            gen.sent(),
            gen.errors(),
        );
        let link0 = self.tx_packets(flow.offered_at)?;
        let t0 = Instant::now();
        let cpu0 = crate::cpu::now();
        std::thread::sleep(self.timing.window);
        let cpu1 = crate::cpu::now();
        let (s1, g1, e1) = (self.sink(to)?.counts()?, gen.sent(), gen.errors());
        let link1 = self.tx_packets(flow.offered_at)?;
        let secs = t0.elapsed().as_secs_f64();
        gen.stop()?;
        // Let checks of the last samples finish before the checker goes.
        std::thread::sleep(Duration::from_millis(50));
        let c_end = checker.as_ref().map(Checker::checked).unwrap_or_default();
        drop(checker);
        self.sink(to)?.configure(0, 0)?;
        Ok(Sample {
            offered_pps: crate::stats::rate(
                match (link0, link1) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => g1 - g0,
                },
                secs,
            ),
            delivered_pps: crate::stats::rate(s1.packets - s0.packets, secs),
            sampled: s1.sampled - s0.sampled,
            checked: Checked {
                ok: c_end.ok - c0.ok,
                bad: c_end.bad - c0.bad,
            },
            send_errors: e1 - e0,
            cpu_busy: crate::cpu::busy(&cpu0, &cpu1),
        })
    }

    /// The TX packet counter of `at`'s interface, if a place is given.
    fn tx_packets(&self, at: Option<(Role, &'static str)>) -> Result<Option<u64>> {
        let Some((role, ifname)) = at else {
            return Ok(None);
        };
        let path = format!("/sys/class/net/{ifname}/statistics/tx_packets");
        let out = self.tb.output(role, ["cat", &path])?;
        let n = out
            .trim()
            .parse()
            .with_context(|| format!("reading {path} in {role}: {out:?}"))?;
        Ok(Some(n))
    }

    /// Sends `n` datagrams from `from` (bound to `bind`) to `dst` and returns the source
    /// address under which they reached a socket bound to `listen` in `at`: how a NAT on
    /// the way maps `bind` (the address replies must go to), after the path is set up.
    pub fn learn_mapping(
        &self,
        from: Role,
        bind: SocketAddrV4,
        dst: SocketAddrV4,
        at: Role,
        listen: SocketAddrV4,
    ) -> Result<SocketAddrV4> {
        let rx = self.tb.in_netns(at, || -> Result<UdpSocket> {
            let s = UdpSocket::bind(listen).with_context(|| format!("binding {listen} in {at}"))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })??;
        let tx = self.tb.in_netns(from, || -> Result<UdpSocket> {
            let s = UdpSocket::bind(bind).with_context(|| format!("binding {bind} in {from}"))?;
            Ok(s)
        })??;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            // Errors (no route yet, ARP pending) only mean: try again.
            let _ = tx.send_to(b"ntm-bench primer", dst);
            if let Ok((_, from_addr)) = rx.recv_from(&mut buf) {
                match from_addr {
                    std::net::SocketAddr::V4(a) => return Ok(a),
                    std::net::SocketAddr::V6(a) => bail!("unexpected IPv6 source {a}"),
                }
            }
        }
        bail!("nothing sent from {bind} in {from} to {dst} reached {listen} in {at} within 20 s")
    }

    /// The sink-side facts every NTM datapath shares: where cn listens.
    pub fn cn_ntm(&self) -> SocketAddrV4 {
        SocketAddrV4::new(CN_ADDR, NTM_PORT)
    }

    /// nat1's `lan` address: the adapter's next hop.
    pub fn gateway(&self) -> Ipv4Addr {
        NAT1_LAN_ADDR
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_format_as_ip_wants_them() {
        assert_eq!(fmt_mac(&[2, 0, 0xa, 0xff, 0x10, 1]), "02:00:0a:ff:10:01");
        assert_eq!(crate::net::parse_mac(&fmt_mac(&[9; 6])), Some([9; 6]));
    }

    #[test]
    fn flows_go_to_the_other_edge() {
        let f = Flow {
            from: Role::Gn,
            source: Source::Plain {
                bind: SocketAddrV4::new(GN_ADDR, GN_PORT),
                dst: SocketAddrV4::new(CN_ADDR, CN_PORT),
            },
            sink_port: CN_PORT,
            check: Check::None,
            offered_at: None,
        };
        assert_eq!(f.to(), Role::Cn);
        let g = Flow {
            from: Role::Cn,
            ..f
        };
        assert_eq!(g.to(), Role::Gn);
    }
}
