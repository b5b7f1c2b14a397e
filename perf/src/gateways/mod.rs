//! The datapaths under test, each set up in the ntma namespace on the same path
//! gn → ntma → nat1 → cn, and removed again when dropped.
//!
//! | name | what forwards in the ntma namespace |
//! |---|---|
//! | `kernel` | Linux IP forwarding, no encapsulation |
//! | `kernel-rps` | the same, with receive packet steering to CPU 1 |
//! | `xdp-fwd` | an XDP program redirecting NIC to NIC, no encapsulation |
//! | `raw` | ntma's raw-socket datapath (the paper's method): AF_PACKET in, UDP out, NTM DATA |
//! | `ntma` | ntma's AF_XDP datapath, NTM DATA |
//! | `ntm-node` | the software node (TUN + UDP) as a masquerading gateway, NTM DATA |
//! | `wireguard-go`, `boringtun` | userspace WireGuard gateways, peer in cn |

use std::net::SocketAddrV4;
use std::process::Command;

use anyhow::Result;
use ntm_testbed::Role;

use crate::bench::{Bench, Direction, Flow, Source, GN_PORT};
use crate::check::Check;
use crate::latency::Echo;
use crate::net;

pub mod node;
pub mod plain;
pub mod tunnel;
pub mod wg;

/// A datapath set up on the bench.
pub trait Gateway {
    /// Its name in tables and plots.
    fn name(&self) -> String;

    /// The traffic of one direction through it; may send primers (to open NAT mappings,
    /// tunnels or handshakes) before returning.
    fn flow(&mut self, bench: &Bench, dir: Direction) -> Result<Flow>;

    /// The ping-pong of the latency measurement: gn's target and how cn answers.
    fn echo(&mut self, bench: &Bench) -> Result<Echo>;

    /// Counters of its own worth showing (drops by reason, ...), one line.
    fn notes(&self) -> Option<String> {
        None
    }
}

/// Shell steps that undo a set-up, run (last first) when dropped.
#[derive(Default)]
pub struct Undo {
    steps: Vec<(String, String)>,
}

impl Undo {
    /// Remembers `script` to run in namespace `ns` on drop.
    pub fn push(&mut self, bench: &Bench, role: Role, script: impl Into<String>) {
        self.steps.push((bench.tb.ns(role), script.into()));
    }
}

impl Undo {
    /// Turns IP forwarding on in the ntma namespace, and back to what it was on drop.
    pub fn ip_forward(&mut self, bench: &Bench) -> Result<()> {
        let old = net::sysctl(&bench.tb, Role::Ntma, "net.ipv4.ip_forward", "1")?;
        self.push(
            bench,
            Role::Ntma,
            format!("sysctl -q -w net.ipv4.ip_forward={old}"),
        );
        Ok(())
    }
}

/// The flow of a gateway tunnelling gn's traffic to `cn` (an address behind the
/// peer at cn's end). Up: gn sends to `cn`, the sink counts the tunnel's datagrams on
/// `tunnel_port`, and the peer must deliver the samples to `cn`. Down: cn sends to
/// gn as cn sees it (`gn_seen`), the offered load counted on cn's `eth0` since the
/// peer, not the source, puts it on the wire.
pub fn tunnel_flow(
    dir: Direction,
    gn: SocketAddrV4,
    cn: SocketAddrV4,
    gn_seen: SocketAddrV4,
    tunnel_port: u16,
) -> Flow {
    match dir {
        Direction::Up => Flow {
            from: Role::Gn,
            source: Source::Plain { bind: gn, dst: cn },
            sink_port: tunnel_port,
            check: Check::Delivered { bind: cn },
            offered_at: None,
        },
        Direction::Down => Flow {
            from: Role::Cn,
            source: Source::Plain {
                bind: cn,
                dst: gn_seen,
            },
            sink_port: GN_PORT,
            check: Check::None,
            offered_at: Some((Role::Cn, "eth0")),
        },
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((ns, script)) = self.steps.pop() {
            let r = Command::new("ip")
                .args(["netns", "exec", &ns, "sh", "-c", &script])
                .output();
            match r {
                Ok(o) if o.status.success() => {}
                Ok(o) => tracing::debug!(
                    %ns, script, stderr = %String::from_utf8_lossy(&o.stderr), "undo step failed"
                ),
                Err(e) => tracing::debug!(%ns, script, error = %e, "undo step failed"),
            }
        }
    }
}
