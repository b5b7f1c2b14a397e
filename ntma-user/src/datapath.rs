//! One vocabulary for ntma's two datapaths.
//!
//! * [`Datapath`]: the trait the AF_XDP datapath ([`crate::fastpath::AfXdp`]) and the
//!   raw-socket datapath ([`crate::rawpath::RawPath`]) implement. The control side
//!   ([`crate::control::Control`]), the daemon and perf speak to it, never to one
//!   datapath in particular. It carries control operations only (publish and remove
//!   tunnels, set the link and the GNs, read counters, take slow frames, stop): per packet, the
//!   workers read the [`DatapathState`]'s table snapshot directly, without dynamic dispatch.
//! * [`Link`]: the adapter's addresses a datapath builds frames with, and [`GnLink`]: one
//!   GN behind it (up to [`ntma_common::MAX_GNS`] of them, [`Datapath::set_gns`]).
//! * [`TunnelStats`]: one tunnel as a datapath carries it, with its counters.
//! * [`limits`]: the limits of the datapath's settings, named by their keys in the
//!   configuration file; the file ([`crate::config`]) and the programmatic constructors
//!   ([`crate::fastpath::AfXdpConfig`], [`crate::rawpath::RawConfig`]) are checked
//!   against the same ones.
//!
//! A tunnel enters a datapath as the endpoint's [`TunnelParams`] (at
//! [`ntm_proto::node::Event::TunnelAdded`] for receiving, at
//! [`ntm_proto::node::Event::TunnelUp`] for sending too) and comes back out as
//! [`TunnelStats`]; nothing in between copies it into another type.

pub mod limits;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use ntm_proto::node::TunnelParams;
use ntm_proto::{Path, Suite};
use serde::{Deserialize, Serialize};

use crate::ebpf::{Counters, EbpfError};
pub use crate::fastpath::{DatapathState, RingStats, SlowFrame, SlowWaker, WorkerStats};
use crate::gn::MacAddr;

/// Which datapath carries tunnel traffic (`datapath.kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatapathKind {
    /// AF_XDP workers, one per queue (`crate::fastpath`).
    #[default]
    AfXdp,
    /// AF_PACKET on the GN side, the UDP socket on the WAN side, one worker
    /// (`crate::rawpath`): for hosts whose kernel or NIC has no AF_XDP.
    Raw,
}

/// The adapter's own addresses a datapath needs to build frames on both NICs. Without
/// one ([`Datapath::set_link`] with `None`: a MAC unknown) uplink frames go to the slow
/// queue and downlink DATA is dropped as [`crate::fastpath::FastDrop::NotReady`]. The
/// GNs behind the adapter are set apart, with [`Datapath::set_gns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The GN-facing NIC's MAC: source of frames to the GNs.
    pub lan_mac: MacAddr,
    /// The uplink NIC's MAC: source of uplink frames.
    pub wan_mac: MacAddr,
    /// The uplink's IPv4 address: outer source address.
    pub wan_ip: Ipv4Addr,
    /// The NTM UDP port the adapter sends from (the signaling socket's port, so that
    /// the NAT mapping the DC observed is the one the tunnel uses).
    pub wan_port: u16,
    /// MAC of the uplink's next hop (the default gateway): destination of uplink frames.
    pub gateway_mac: MacAddr,
}

/// One GN behind the adapter, as [`Datapath::set_gns`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GnLink {
    /// The GN's VIP: accepted as the inner source of its uplink packets, and the inner
    /// destination of DATA on the tunnels whose `local_vip` it is.
    pub vip: Ipv4Addr,
    /// The GN's MAC (learnt from DHCP / its frames): destination of frames to it. While
    /// `None`, its uplink packets are carried but DATA to it is dropped as
    /// [`crate::fastpath::FastDrop::NotReady`].
    pub mac: Option<MacAddr>,
}

/// One tunnel as a datapath carries it, with its counters (cumulative since it was
/// installed), as [`Datapath::tunnel_stats`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelStats {
    /// Tunnel id.
    pub tunnel_id: u32,
    /// The peer's VIP.
    pub peer_vip: Ipv4Addr,
    /// Where its DATA goes now.
    pub endpoint: SocketAddrV4,
    /// Path.
    pub path: Path,
    /// The tunnel's suite.
    pub suite: Suite,
    /// Whether uplink packets to `peer_vip` use it (it is up), or it only receives so far.
    pub sending: bool,
    /// DATA sent (inner packets) and their inner bytes.
    pub tx_packets: u64,
    /// Inner bytes of the DATA sent.
    pub tx_bytes: u64,
    /// Authenticated DATA delivered to the GN.
    pub rx_packets: u64,
    /// Inner bytes of the DATA delivered.
    pub rx_bytes: u64,
    /// Authenticated TUN_KEEPALIVEs received.
    pub rx_keepalives: u64,
    /// When the last DATA or TUN_KEEPALIVE that passed every check arrived (None:
    /// never). A dropped datagram never counts as activity.
    pub last_rx: Option<Instant>,
    /// Where it came from: differs from `endpoint` when the peer roamed (the control
    /// decides whether to follow with [`Datapath::set_endpoint`]).
    pub last_rx_from: Option<SocketAddrV4>,
    /// The next sequence number this side sends.
    pub next_tx_seq: u64,
}

impl TunnelStats {
    /// Datagrams accepted: DATA and TUN_KEEPALIVE (what keeps a tunnel alive).
    pub fn rx_accepted(&self) -> u64 {
        self.rx_packets + self.rx_keepalives
    }
}

/// A running datapath, as the control side, the daemon and perf drive it. See the
/// [module docs](self).
///
/// An implementation gives its [`DatapathState`] and says what it is; the control
/// operations are provided on top of the data plane (a test double overrides them to
/// record the calls).
pub trait Datapath {
    /// The state its workers share with the control: the tunnel table, the slow
    /// queues and the counters.
    fn state(&self) -> &Arc<DatapathState>;

    /// Which datapath it is.
    fn kind(&self) -> DatapathKind;

    /// How it moves packets: `copy` or `zero-copy` (AF_XDP), `raw`.
    fn mode(&self) -> String;

    /// The name of worker `queue`'s thread (to read its capabilities).
    fn worker_thread(&self, queue: usize) -> String;

    /// Stops the workers (the AF_XDP datapath detaches its XDP programs first). Dropping
    /// the datapath does it too.
    fn stop(&mut self);

    /// The XDP programs' verdict counters (none without XDP).
    fn xdp_counters(&self) -> Result<Counters, EbpfError> {
        Ok(Counters::default())
    }

    /// The kernel's counters of every AF_XDP socket (none without AF_XDP).
    fn ring_stats(&self) -> Vec<RingStats> {
        Vec::new()
    }

    /// Packets a socket refused to send, beyond the drop reasons (the raw datapath's
    /// sockets; none for AF_XDP).
    fn tx_errors(&self) -> u64 {
        0
    }

    /// Whether its worker reads the tunnel socket itself: signaling then reaches the
    /// control through the slow queue as [`crate::ebpf::Side::Wan`] frames, and the
    /// control must not read the socket.
    fn reads_tunnel_socket(&self) -> bool {
        false
    }

    /// The tunnel socket was bound anew (the uplink's address changed): a datapath
    /// that sends on it takes a descriptor of the new one.
    fn replace_tunnel_socket(&self, _wan: &UdpSocket) -> std::io::Result<()> {
        Ok(())
    }

    /// Number of workers.
    fn workers(&self) -> usize {
        self.state().workers()
    }

    /// Sets the link; `None` stops forwarding (see [`Link`]).
    fn set_link(&self, link: Option<Link>) {
        self.state().set_link(link);
    }

    /// Replaces the whole set of GNs (see [`GnLink`] and [`DatapathState::set_gns`]).
    /// Call it whenever a GN appears or goes, or its VIP or MAC changes.
    fn set_gns(&self, gns: &[GnLink]) {
        self.state().set_gns(gns);
    }

    /// Installs a tunnel for receiving ([`ntm_proto::node::Event::TunnelAdded`]); see
    /// [`DatapathState::add_tunnel`].
    fn add_tunnel(&self, tunnel: &TunnelParams) -> ntm_proto::Result<()> {
        self.state().add_tunnel(tunnel)
    }

    /// Starts sending on a tunnel ([`ntm_proto::node::Event::TunnelUp`]), installing it
    /// if [`Datapath::add_tunnel`] did not; see [`DatapathState::tunnel_up`].
    fn tunnel_up(&self, tunnel: &TunnelParams) -> ntm_proto::Result<()> {
        self.state().tunnel_up(tunnel)
    }

    /// Removes a tunnel (no-op when unknown).
    fn remove_tunnel(&self, tunnel_id: u32) {
        self.state().remove_tunnel(tunnel_id);
    }

    /// Moves a tunnel's endpoint (roaming); false when the tunnel is unknown.
    fn set_endpoint(&self, tunnel_id: u32, endpoint: SocketAddrV4) -> bool {
        self.state().set_endpoint(tunnel_id, endpoint)
    }

    /// Every tunnel with its counters, by tunnel id.
    fn tunnel_stats(&self) -> Vec<TunnelStats> {
        self.state().tunnel_stats()
    }

    /// Every worker's counters, by queue.
    fn worker_stats(&self) -> Vec<WorkerStats> {
        self.state().worker_stats()
    }

    /// The next frame the workers handed to the control; see [`DatapathState::pop_slow`].
    fn pop_slow(&self, buf: &mut [u8]) -> Option<SlowFrame> {
        self.state().pop_slow(buf)
    }

    /// What the control waits on for slow frames.
    fn slow_waker(&self) -> SlowWaker {
        self.state().slow_waker()
    }
}
