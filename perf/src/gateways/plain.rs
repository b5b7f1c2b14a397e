//! The machine's limit: the same path forwarded with no encapsulation, by the kernel
//! (`kernel`) or by an XDP program redirecting NIC to NIC (`xdp-fwd`).
//!
//! `kernel-rps` is `kernel` with receive packet steering on `lan0` and `wan0` to CPU 1:
//! on veth, forwarding otherwise runs in the softirq of the sending CPU (the source's),
//! and the second CPU stays idle.
//!
//! The adapter's namespace forwards (ip_forward = 1) and nat1 masquerades gn's traffic as
//! it does the adapter's own. For the answers to find their way back, nat1 gets a route
//! to the VIP prefix through the adapter for as long as the datapath is set up (a
//! tunnel needs none: its outer address is the adapter's own).

use std::net::SocketAddrV4;

use anyhow::Result;
use ntm_testbed::{Role, CN_ADDR, NTMA_WAN_ADDR};

use super::{Gateway, Undo};
use crate::bench::{Bench, Direction, Flow, Source, CN_PORT, ECHO_PORT, GN_ADDR, GN_PORT};
use crate::check::Check;
use crate::latency::Echo;
use crate::net;
use crate::xdp::{Forwarder, FwdRoute};

/// How the ntma namespace forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Linux IP forwarding.
    Kernel,
    /// Linux IP forwarding, RPS on lan0 and wan0 to CPU 1.
    KernelRps,
    /// The perf_fwd XDP program.
    Xdp,
}

/// Kernel or XDP forwarding in the ntma namespace.
pub struct Plain {
    mode: Mode,
    xdp: Option<Forwarder>,
    _undo: Undo,
}

impl Plain {
    /// Sets up forwarding; for [`Mode::Xdp`] the forwarder program on `lan0` and `wan0`,
    /// for [`Mode::KernelRps`] receive packet steering.
    pub fn start(bench: &Bench, mode: Mode) -> Result<Plain> {
        let mut undo = Undo::default();
        undo.ip_forward(bench)?;
        net::sh(
            &bench.tb,
            Role::Nat1,
            &format!("ip route replace 100.64.0.0/10 via {NTMA_WAN_ADDR} dev lan"),
        )?;
        undo.push(bench, Role::Nat1, "ip route del 100.64.0.0/10");
        if mode == Mode::KernelRps {
            for ifname in ["lan0", "wan0"] {
                let path = format!("/sys/class/net/{ifname}/queues/rx-0/rps_cpus");
                // CPU 1's bit: where ntma's workers run too.
                net::sh(&bench.tb, Role::Ntma, &format!("echo 2 > {path}"))?;
                undo.push(bench, Role::Ntma, format!("echo 0 > {path}"));
            }
        }
        let xdp = if mode == Mode::Xdp {
            let l = &bench.links;
            let routes = [
                FwdRoute {
                    from: l.lan0.clone(),
                    to: l.wan0.clone(),
                    next_hop: l.nat1_lan.mac,
                },
                FwdRoute {
                    from: l.wan0.clone(),
                    to: l.lan0.clone(),
                    next_hop: l.gn.mac,
                },
            ];
            // A veth takes redirected frames only when its peer runs an XDP
            // program: lan0's peer is the lan bridge's port, wan0's is nat1's lan.
            let peers = [
                (bench.tb.ns(Role::Lan), "ntma".to_owned()),
                (bench.tb.ns(Role::Nat1), "lan".to_owned()),
            ];
            Some(Forwarder::attach(&bench.tb.ns(Role::Ntma), routes, &peers)?)
        } else {
            None
        };
        Ok(Plain {
            mode,
            xdp,
            _undo: undo,
        })
    }
}

impl Gateway for Plain {
    fn name(&self) -> String {
        match self.mode {
            Mode::Kernel => "kernel",
            Mode::KernelRps => "kernel-rps",
            Mode::Xdp => "xdp-fwd",
        }
        .into()
    }

    fn flow(&mut self, bench: &Bench, dir: Direction) -> Result<Flow> {
        let gn = SocketAddrV4::new(GN_ADDR, GN_PORT);
        let cn = SocketAddrV4::new(CN_ADDR, CN_PORT);
        Ok(match dir {
            Direction::Up => Flow {
                from: Role::Gn,
                source: Source::Plain { bind: gn, dst: cn },
                sink_port: CN_PORT,
                check: Check::None,
                offered_at: None,
            },
            Direction::Down => {
                // gn's flow through nat1 opens the mapping cn answers to.
                let mapped = bench.learn_mapping(Role::Gn, gn, cn, Role::Cn, cn)?;
                Flow {
                    from: Role::Cn,
                    source: Source::Plain {
                        bind: cn,
                        dst: mapped,
                    },
                    sink_port: GN_PORT,
                    check: Check::None,
                    offered_at: None,
                }
            }
        })
    }

    fn echo(&mut self, _bench: &Bench) -> Result<Echo> {
        Ok(Echo::udp(SocketAddrV4::new(CN_ADDR, ECHO_PORT)))
    }

    fn notes(&self) -> Option<String> {
        let (fwd, passed) = self.xdp.as_ref()?.counts().ok()?;
        Some(format!("XDP redirected {fwd}, passed {passed}"))
    }
}
