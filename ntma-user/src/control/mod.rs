//! The control side of the adapter: everything between the GN-facing
//! services ([`Gn`]), the GN's [`Host`] (its protocol [`Endpoint`] with the
//! names, hold queue and pending resolutions, shared with the software
//! node: [`ntm_proto::host`]) and the fast path, without I/O of its own.
//! The operating system's pieces it needs (interfaces, NAT, the AF_PACKET
//! socket) are in [`crate::os`].
//!
//! [`Control`] is pumped by the daemon's slow-path thread like a quinn
//! connection by its driver: every input (a frame from the GN-facing raw
//! socket, a frame from the fast path's slow queue, a datagram on the
//! tunnel socket, a datagram from the upstream resolver, a timer) goes in
//! through one `on_*` method, which then drains the host's events,
//! transmits and released packets and the GN services' frames and actions
//! until nothing more comes out. Sending goes through the [`Io`] the caller passes; what the
//! datapath must know is published through the [`Datapath`] it owns.
//!
//! The wiring (docs/protocol.md §6):
//!
//! * DNS queries for NTM names ([`GnAction::Resolve`]) go to
//!   [`Host::resolve`] (a DIR_REQ); its [`HostEvent::Answer`] answers them.
//!   Other names go to the upstream resolver ([`GnAction::Upstream`]), each
//!   from a fresh socket of its own ([`Io::send_upstream`], a random port;
//!   a TCP connection for a query that came over TCP) with a random id; only
//!   an answer on that port with that id and question is relayed
//!   ([`Control::on_upstream`]).
//! * DNS over TCP at the router address: the daemon's listener and
//!   connection tasks report through [`Control::on_tcp_accept`],
//!   [`Control::on_tcp_data`], [`Control::on_tcp_eof`] and
//!   [`Control::on_tcp_closed`]; answers go out with [`Io::send_tcp`],
//!   connections close with [`Io::close_tcp`].
//! * [`Event::Registered`] gives the GN its VIP ([`Gn::set_vip`]);
//!   [`Event::TunnelAdded`] installs a tunnel in the fast path for
//!   receiving before its TUN_REQ or TUN_RESP goes out (events are handled
//!   before the endpoint's transmits), so DATA the peer sends right after
//!   its TUN_RESP is never an unknown tunnel; [`Event::TunnelUp`] starts
//!   sending on it; [`Event::TunnelDown`]/[`Event::EndpointChanged`] are
//!   published too. The datapath reports receive and send activity back
//!   ([`Control::poll_activity`] reads [`Datapath::tunnel_stats`] →
//!   [`Endpoint::note_rx`] /
//!   [`Endpoint::note_tx`]: expiry, keep-alives, roaming), counting only
//!   datagrams that passed every check.
//! * Packets to a VIP without a tunnel (the fast path's slow queue, or the
//!   raw socket when no AF_XDP socket took them) wait in the host's bounded
//!   [`HoldQueue`] while the tunnel is set up ([`Host::route`]) — by name
//!   again if the VIP belonged to an expired tunnel — and then go through
//!   the tunnel ([`Host::poll_released`]), or are answered with ICMP host
//!   unreachable ([`HostEvent::SetupFailed`]).
//! * Packets to destinations outside the VIP prefix are answered with ICMP
//!   network unreachable, or left to the kernel's NAT ([`NonVip`]).
//! * DATA and TUN_KEEPALIVE belong to the fast path alone: on the kernel
//!   socket they are dropped ([`CtlDrop::DataViaKernel`]), so that one
//!   replay window sees every datagram of a tunnel.

mod counters;
pub mod names;
mod reload;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use std::ops::Range;

use ntm_proto::hold::HoldQueue;
use ntm_proto::host::{Host, HostEvent, NoWay, Way};
use ntm_proto::node::{self, DownReason, Endpoint, Event, TunnelParams};
use ntm_proto::wire::{Caps, MAX_SIGNALING_LEN, OVERHEAD};
use ntm_proto::Error;

pub use counters::{CtlCounters, CtlDrop, CtlStat};

use crate::config::{GnIdentity, NonVip, Settings};
use crate::datapath::{Datapath, GnLink, Link, TunnelStats};
use crate::ebpf::Side;
use crate::gn::wire::{fragment_ipv4, parse_eth, parse_ipv4, parse_udp, Ipv4Frame};
use crate::gn::GnDrop;
use crate::gn::{
    ConnId, Gn, GnAction, GnIndex, GnState, MacAddr, Transport, Unreachable, MAX_FRAME_LEN,
};
use crate::status::{GnStatus, GnView, RegistrationStatus, SlowPathStatus, TunnelStatus};
use crate::wire::tcp::{clamp_mss, is_syn, IPV4_TCP_LEN};
use crate::wire::{ethernet, ipv4, udp};

/// Largest inner packet (an IPv4 packet never exceeds this).
const MAX_INNER: usize = 65_535;

/// The sockets, as the control side uses them. Each says whether the
/// kernel took the data; a refusal is counted, never retried (signaling
/// loss is repaired by retransmissions, data loss by the GN's transport).
pub trait Io {
    /// A datagram from the tunnel port.
    fn send_wan(&self, dst: SocketAddrV4, datagram: &[u8]) -> bool;
    /// A frame to the GN.
    fn send_lan(&self, frame: &[u8]) -> bool;
    /// A query to the upstream resolver, from a new socket of its own bound
    /// to port 0 (the kernel draws a random port) and connected to the
    /// resolver: one UDP datagram, or over TCP one message with its 2-byte
    /// length prefix on a new connection. Returns that port, where the answer
    /// is awaited (it goes to [`Control::on_upstream`] with the transport and
    /// port), or `None` when no socket could be opened or the query was
    /// refused.
    fn send_upstream(&self, transport: Transport, query: &[u8]) -> Option<u16>;
    /// The query sent from `port` is answered or given up: close its socket.
    fn close_upstream(&self, transport: Transport, port: u16);
    /// `message` (a DNS answer with its length prefix) on the GN's TCP
    /// connection `conn`; false when its write queue is full (the client
    /// does not read) or it is gone.
    fn send_tcp(&self, conn: ConnId, message: &[u8]) -> bool;
    /// Closes the GN's TCP connection `conn` once what was queued on it is
    /// written.
    fn close_tcp(&self, conn: ConnId);
}

/// What the control side knows about one tunnel (from its
/// [`Event::TunnelAdded`] on) beyond what the endpoint and the datapath do.
#[derive(Debug, Clone)]
struct TunnelRec {
    /// For the log line when it goes down (the endpoint has forgotten it then).
    peer_fqdn: String,
    /// The datapath's counters as last polled (activity is what grew since).
    stats: Option<TunnelStats>,
}

impl TunnelRec {
    fn new(peer_fqdn: String) -> TunnelRec {
        TunnelRec {
            peer_fqdn,
            stats: None,
        }
    }
}

/// One GN's protocol side (§6: its own node at the DC): its [`Host`] (the
/// endpoint with its registration, DC window and tunnels, the hold queue,
/// pending resolutions) and its tunnels as the control side tracks them.
/// Slot `i` is GN `i` of the GN services ([`Gn::gns`]).
struct Slot {
    host: Host,
    /// Its identity as configured (a reload keeps the slot while it stays).
    id: GnIdentity,
    tunnels: BTreeMap<u32, TunnelRec>,
}

impl Slot {
    fn new(
        s: &Settings,
        gn: &GnIdentity,
        wan_ip: Ipv4Addr,
        now: Instant,
        unix_nanos: u64,
        seed: [u8; 32],
    ) -> Result<Slot, String> {
        let cfg = node::Config {
            fqdn: gn.fqdn.clone(),
            key: gn.key.clone(),
            dc: s.dcs[0],
            local_addr: SocketAddrV4::new(wan_ip, s.port),
            caps: Caps::ADAPTER,
        };
        let ep = Endpoint::new(cfg, now, unix_nanos, seed)
            .map_err(|e| format!("cannot start the protocol endpoint of {}: {e}", gn.fqdn))?
            .with_fallback_dcs(&s.dcs[1..]);
        let hold = HoldQueue::new(s.hold_per_peer, s.hold_total, s.hold_timeout);
        Ok(Slot {
            host: Host::new(ep, hold),
            id: gn.clone(),
            tunnels: BTreeMap::new(),
        })
    }

    fn fqdn(&self) -> &str {
        &self.id.fqdn
    }

    /// The VIP the DC assigned (given to the GN by DHCP).
    fn vip(&self) -> Option<Ipv4Addr> {
        self.host.endpoint().registration().map(|r| r.vip.addr)
    }
}

/// Per-GN randomness from the boot seed (each endpoint draws its own
/// request ids).
fn slot_seed(seed: [u8; 32], gn: usize) -> [u8; 32] {
    let mut s = seed;
    for (b, x) in s.iter_mut().zip((gn as u64).to_le_bytes()) {
        *b ^= x;
    }
    s
}

/// What the daemon tells [`Control::new`] about the machine.
#[derive(Debug, Clone, Copy)]
pub struct Boot {
    /// The GN-facing NIC's MAC.
    pub lan_mac: MacAddr,
    /// The uplink NIC's MAC.
    pub wan_mac: MacAddr,
    /// The uplink's IPv4 address.
    pub wan_ip: Ipv4Addr,
    /// Current Unix time in nanoseconds (signaling sequence numbers start there).
    pub unix_nanos: u64,
    /// OS randomness.
    pub seed: [u8; 32],
}

/// The control side, driving the datapath `D` (any [`Datapath`] by default). See
/// the [module docs](self).
pub struct Control<D: Datapath + ?Sized = dyn Datapath> {
    datapath: Box<D>,
    /// One per GN, by [`GnIndex`].
    slots: Vec<Slot>,
    /// Which GN each tunnel belongs to.
    tunnel_gn: HashMap<u32, GnIndex>,
    gn: Gn,
    non_vip: NonVip,
    /// §5 "MTU": longer GN packets are answered with ICMP or fragmented.
    inner_mtu: u16,
    port: u16,
    dcs: Vec<SocketAddrV4>,
    // What the link is made of, learned at start and while running.
    lan_mac: MacAddr,
    wan_mac: MacAddr,
    wan_ip: Ipv4Addr,
    gateway_mac: Option<MacAddr>,
    /// The link last given to the datapath.
    published: Option<Link>,
    /// The GNs last given to the datapath.
    published_gns: Vec<GnLink>,
    c: CtlCounters,
    /// Set-up latency (`ntma_tunnel_setup_seconds`), by GN.
    setup: ntm_ops::metrics::SetupHistograms,
    buf: Vec<u8>,
    frame: Vec<u8>,
    /// Where the peer names are kept across restarts ([`Control::keep_names`]).
    names_file: Option<std::path::PathBuf>,
    /// What the file holds.
    names_stored: std::collections::BTreeSet<names::Entry>,
    /// A host may have learned a name since the last write.
    names_dirty: bool,
}
/// The source and destination port and payload of an unfragmented UDP
/// datagram in an Ethernet frame.
#[cfg(test)]
fn udp_of(frame: &[u8]) -> Option<(SocketAddrV4, u16, &[u8])> {
    let (from, port, at) = udp_in(frame)?;
    Some((from, port, &frame[at]))
}

/// The IPv4 packet of an Ethernet frame: (source, destination, the packet
/// cut to its total length).
#[cfg(test)]
fn ipv4_of(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, &[u8])> {
    let f = Ipv4Frame::parse(frame, GnDrop::Ipv4Malformed).ok()?;
    Some((f.src(), f.dst(), f.packet()))
}

/// [`udp_of`] with the payload as a range of `frame` (so that the caller
/// can open it in place).
fn udp_in(frame: &[u8]) -> Option<(SocketAddrV4, u16, Range<usize>)> {
    let eth = parse_eth(frame).ok()?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return None;
    }
    let ip = parse_ipv4(eth.payload(), true).ok()?;
    if ip.protocol() != ipv4::PROTO_UDP || ip.is_fragment() {
        return None;
    }
    let udp = parse_udp(&ip, true).ok()?;
    let at = ethernet::HEADER_LEN + ip.header_len() + udp::HEADER_LEN;
    Some((
        SocketAddrV4::new(ip.src_addr(), udp.src_port()),
        udp.dst_port(),
        at..at + udp.payload().len(),
    ))
}

fn is_unicast_host(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

impl<D: Datapath + ?Sized> Control<D> {
    /// Starts one endpoint per GN (their first REG_REQs go out at the first
    /// pump) and the GN services with the NIC's MAC.
    pub fn new(s: &Settings, boot: Boot, datapath: Box<D>, now: Instant) -> Result<Self, String> {
        let slots = s
            .gns
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let seed = slot_seed(boot.seed, i);
                Slot::new(s, g, boot.wan_ip, now, boot.unix_nanos, seed)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut gcfg = s.gn.clone();
        gcfg.gns = s.gns.iter().map(GnIdentity::spec).collect();
        gcfg.ntma_mac = boot.lan_mac;
        gcfg.seed =
            u64::from_le_bytes(boot.seed[8..16].try_into().expect("8 bytes")) ^ boot.unix_nanos;
        let gn = Gn::new(gcfg).map_err(|e| e.to_string())?;
        Ok(Control {
            datapath,
            slots,
            tunnel_gn: HashMap::new(),
            gn,
            non_vip: s.non_vip,
            inner_mtu: s.inner_mtu(),
            port: s.port,
            dcs: s.dcs.clone(),
            lan_mac: boot.lan_mac,
            wan_mac: boot.wan_mac,
            wan_ip: boot.wan_ip,
            gateway_mac: None,
            published: None,
            published_gns: Vec::new(),
            c: CtlCounters::default(),
            setup: ntm_ops::metrics::setup_histograms(),
            buf: vec![0u8; MAX_INNER + OVERHEAD],
            frame: vec![0u8; MAX_FRAME_LEN],
            names_file: None,
            names_stored: Default::default(),
            names_dirty: false,
        })
    }

    /// Keeps every GN's peer names in `path` from now on, and first learns
    /// those a previous run left there ([`names`]): a GN's packet to a peer's
    /// VIP then sets its tunnel up again without a DNS query. Call before
    /// [`Control::start`].
    pub fn keep_names(&mut self, path: std::path::PathBuf) {
        match names::load(&path) {
            Ok((entries, bad)) => {
                let mut learned = 0;
                for (gn, vip, peer) in entries {
                    let slot = self.slots.iter_mut().find(|s| s.fqdn() == gn);
                    if let Some(slot) = slot {
                        learned += usize::from(slot.host.learn_name(vip, &peer).is_ok());
                    }
                }
                if bad > 0 {
                    tracing::warn!(file = %path.display(), bad, "peer names file: lines skipped (not `<gn fqdn> <vip> <peer fqdn>`)");
                }
                tracing::info!(file = %path.display(), learned, "peer names of the previous run");
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the peer names of the previous run; packets to peers set tunnels up again only after a DNS query")
            }
        }
        self.names_stored = names::collect(self.slots.iter().map(|s| (s.fqdn(), &s.host)));
        self.names_file = Some(path);
    }

    /// Writes the peer names when they changed.
    fn store_names(&mut self) {
        let Some(path) = &self.names_file else {
            return;
        };
        if !std::mem::take(&mut self.names_dirty) {
            return;
        }
        let now = names::collect(self.slots.iter().map(|s| (s.fqdn(), &s.host)));
        if now == self.names_stored {
            return;
        }
        match names::store(path, &now) {
            Ok(()) => self.names_stored = now,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot keep the peer names (a restart will need DNS queries again)")
            }
        }
    }

    /// The datapath.
    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    /// The datapath, to stop it.
    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.datapath
    }

    /// The control side's own counters.
    pub fn counters(&self) -> &CtlCounters {
        &self.c
    }

    /// Tunnel set-up latencies (for the metrics).
    pub fn setup_histograms(&self) -> &ntm_ops::metrics::SetupHistograms {
        &self.setup
    }

    /// The GN services.
    pub fn gn(&self) -> &Gn {
        &self.gn
    }

    /// The protocol endpoint of GN `gn`.
    pub fn endpoint(&self, gn: GnIndex) -> Option<&Endpoint> {
        self.slots.get(gn).map(|s| s.host.endpoint())
    }

    /// Every GN's endpoint, by [`GnIndex`].
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        self.slots.iter().map(|s| s.host.endpoint())
    }

    /// The link published to the datapath, if complete.
    pub fn link(&self) -> Option<Link> {
        self.published
    }

    /// The GNs published to the datapath.
    pub fn published_gns(&self) -> &[GnLink] {
        &self.published_gns
    }

    // ----- inputs -------------------------------------------------------

    /// Sends the first REG_REQs; call once after [`Control::new`].
    pub fn start(&mut self, now: Instant, io: &impl Io) {
        self.pump(now, io);
    }

    /// A datagram on the tunnel port (signaling; DATA goes to the fast path).
    /// Tunnel signaling is opened in place (suite 2 decrypts it), hence `&mut`.
    /// It goes to the GN whose endpoint claims it ([`Host::claims`]: by tunnel
    /// id, node id, or the REQ_ID of its registration); one that no GN claims
    /// goes to the first GN's, which counts it by the reason it fails.
    pub fn on_wan_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &mut [u8],
        io: &impl Io,
    ) {
        self.c.stat(CtlStat::WanDatagrams);
        let SocketAddr::V4(from) = from else {
            self.c.drop(CtlDrop::NotIpv4Source);
            return;
        };
        let data_type =
            |t: u8| t == ntma_common::ntm::TYPE_DATA || t == ntma_common::ntm::TYPE_TUN_KEEPALIVE;
        if bytes.len() >= 2 && bytes[0] == ntma_common::ntm::VERSION && data_type(bytes[1]) {
            self.c.drop(CtlDrop::DataViaKernel);
            return;
        }
        let gn = self
            .slots
            .iter()
            .position(|s| s.host.claims(from, bytes))
            .unwrap_or(0);
        if let Err(e) = self.slots[gn].host.handle(now, from, bytes) {
            // Counted by reason in the endpoint's drop counters.
            tracing::trace!(%from, reason = e.name(), "dropped a datagram");
        }
        self.pump(now, io);
    }

    /// A frame from the GN-facing raw socket: what the XDP program passed
    /// to the kernel (ARP, DHCP, DNS, and everything not for a tunnel).
    pub fn on_lan_frame(&mut self, now: Instant, frame: &[u8], io: &impl Io) {
        self.c.stat(CtlStat::LanFrames);
        if let Some(f) = self.gn.handle_lan(now, frame) {
            self.kernel_frame(now, &f, io);
        }
        self.pump(now, io);
    }

    /// A frame from the fast path's slow queue. From a GN ([`Side::Lan`]):
    /// a packet to a VIP without a tunnel, or anything while the link is not
    /// ready; it goes the way of a frame from the raw socket (the GN
    /// services learn the GN's MAC from it). From the uplink
    /// ([`Side::Wan`]): a frame the XDP program redirected but the fast path
    /// does not carry; signaling to our port is handled (opened in place,
    /// hence `&mut`), the rest dropped.
    pub fn on_slow_frame(&mut self, now: Instant, side: Side, frame: &mut [u8], io: &impl Io) {
        self.c.stat(CtlStat::SlowFrames);
        match side {
            Side::Lan => {
                if let Some(f) = self.gn.handle_lan(now, frame) {
                    self.kernel_frame(now, &f, io);
                }
            }
            Side::Wan => match udp_in(frame) {
                Some((from, port, payload)) if port == self.port => {
                    self.on_wan_datagram(now, SocketAddr::V4(from), &mut frame[payload], io);
                }
                _ => self.c.drop(CtlDrop::SlowFrameOther),
            },
        }
        self.pump(now, io);
    }

    /// A frame from the slow queue that did not fit the caller's buffer.
    pub fn on_slow_truncated(&mut self) {
        self.c.stat(CtlStat::SlowFrames);
        self.c.drop(CtlDrop::SlowFrameMalformed);
    }

    /// An answer from the upstream resolver (a datagram, or one TCP message
    /// without its length prefix), received on the socket of the query sent
    /// from `port` of `transport` ([`Io::send_upstream`]).
    pub fn on_upstream(
        &mut self,
        now: Instant,
        transport: Transport,
        port: u16,
        bytes: &[u8],
        io: &impl Io,
    ) {
        self.gn.handle_upstream(now, transport, port, bytes);
        self.pump(now, io);
    }

    /// A connection to the router address's TCP port 53 from `from`,
    /// numbered `conn` (never reused). False: refused (counted); close it.
    pub fn on_tcp_accept(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: SocketAddrV4,
        io: &impl Io,
    ) -> bool {
        let taken = self.gn.tcp_accept(now, conn, from).is_ok();
        self.pump(now, io);
        taken
    }

    /// Bytes read from a GN's TCP connection `conn`.
    pub fn on_tcp_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8], io: &impl Io) {
        self.gn.tcp_data(now, conn, bytes);
        self.pump(now, io);
    }

    /// The GN closed its side of `conn`.
    pub fn on_tcp_eof(&mut self, now: Instant, conn: ConnId, io: &impl Io) {
        self.gn.tcp_eof(now, conn);
        self.pump(now, io);
    }

    /// The GN's TCP connection `conn` failed (reset, read or write error).
    pub fn on_tcp_closed(&mut self, conn: ConnId) {
        self.gn.tcp_closed(conn);
    }

    /// Runs the timers that are due.
    pub fn on_timeout(&mut self, now: Instant, io: &impl Io) {
        for slot in &mut self.slots {
            let n = slot.host.handle_timeout(now);
            self.c.drop_n(CtlDrop::HoldExpired, n);
        }
        self.gn.handle_timeout(now);
        self.pump(now, io);
    }

    /// When [`Control::on_timeout`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.host.poll_timeout())
            .chain(self.gn.poll_timeout())
            .min()
    }

    /// Reads the fast path's per-tunnel counters and tells each endpoint
    /// about receive activity (lifetime, roaming) and send activity
    /// (keep-alives only on idle tunnels). Call a few times a second.
    pub fn poll_activity(&mut self, now: Instant, io: &impl Io) {
        for s in self.datapath.tunnel_stats() {
            let Some(&gn) = self.tunnel_gn.get(&s.tunnel_id) else {
                continue;
            };
            let slot = &mut self.slots[gn];
            let Some(rec) = slot.tunnels.get_mut(&s.tunnel_id) else {
                continue;
            };
            let (rx_before, data_before, tx_before) = rec
                .stats
                .as_ref()
                .map_or((0, 0, 0), |b| (b.rx_accepted(), b.rx_packets, b.tx_packets));
            // Sending first: what came back within the same poll answers it
            // (the endpoint's liveness check).
            if s.tx_packets > tx_before {
                slot.host.endpoint_mut().note_tx(s.tunnel_id, now);
            }
            if s.rx_accepted() > rx_before {
                let from = s.last_rx_from.unwrap_or(s.endpoint);
                slot.host.endpoint_mut().note_rx(s.tunnel_id, now, from);
            }
            if s.rx_packets > data_before {
                // DATA, not only keep-alives: a keep-alive answers it unless
                // we send after this poll (what we sent within it may have
                // gone before the DATA came, so it does not count).
                slot.host.endpoint_mut().note_data_rx(s.tunnel_id, now);
            }
            rec.stats = Some(s);
        }
        self.pump(now, io);
    }

    /// The uplink's address, checked every second: a change re-registers
    /// every GN and tells peers (roaming).
    pub fn set_wan_ip(&mut self, now: Instant, ip: Ipv4Addr, io: &impl Io) {
        if ip != self.wan_ip {
            tracing::info!(old = %self.wan_ip, new = %ip, "uplink address changed: re-registering and telling peers");
            self.wan_ip = ip;
            for slot in &mut self.slots {
                slot.host
                    .endpoint_mut()
                    .handle_local_addr_change(now, SocketAddrV4::new(ip, self.port));
            }
        }
        self.pump(now, io);
    }

    /// The next hop's MAC on the uplink, from the kernel's neighbour table.
    pub fn set_gateway_mac(&mut self, mac: Option<MacAddr>) {
        if mac != self.gateway_mac {
            match mac {
                Some(m) => tracing::info!(gateway_mac = %m, "uplink next hop resolved"),
                None => tracing::warn!("uplink next hop unknown: tunnel data waits"),
            }
            self.gateway_mac = mac;
            self.publish_link();
        }
    }

    /// Deregisters every GN (DEREG) and removes every tunnel from the datapath.
    pub fn close(&mut self, now: Instant, io: &impl Io) {
        for slot in &mut self.slots {
            slot.host.endpoint_mut().close(now);
        }
        self.pump(now, io);
        self.datapath.set_link(None);
        self.datapath.set_gns(&[]);
        self.published = None;
        self.published_gns.clear();
    }

    // ----- packets ------------------------------------------------------

    /// An IPv4 frame that the XDP program passed to the kernel and the GN
    /// services did not take (parsed by them).
    fn kernel_frame(&mut self, now: Instant, frame: &Ipv4Frame<'_>, io: &impl Io) {
        let dst = frame.dst();
        let router = self.gn.config().router;
        if dst == router || !is_unicast_host(dst) || self.gn.is_gn_vip(dst) {
            // The kernel's own business (ping to the router, broadcasts), or
            // traffic between two GNs, which stays on their network (§6).
            return;
        }
        if self.gn.config().in_vip_prefix(dst) {
            // No AF_XDP socket took it (a queue without one): still ours.
            self.vip_packet(now, frame, io);
            return;
        }
        if self.non_vip == NonVip::IcmpUnreachable {
            self.c.drop(CtlDrop::NonVip);
            let _ = self.gn.unreachable_non_vip(now, frame);
        }
        // NonVip::Nat: the kernel forwards and masquerades it.
    }

    /// A packet from a GN to a VIP that the fast path could not send: it
    /// goes through that GN's own tunnel to the destination.
    fn vip_packet(&mut self, now: Instant, f: &Ipv4Frame<'_>, io: &impl Io) {
        // The fast path's checks, for what it handed over: only the GNs' own
        // packets, and none longer than the inner MTU (§5 "MTU").
        let Some(gn) = self.gn.gn_of_vip(f.src()) else {
            self.c.drop(CtlDrop::BadSource);
            return;
        };
        if f.packet().len() > usize::from(self.inner_mtu) {
            self.too_big(now, f, io);
            return;
        }
        let (dst, frame) = (f.dst(), f.frame());
        match self.slots[gn].host.route(now, dst) {
            // Up, but the fast path had not been told yet.
            Ok(Way::Send) => {
                self.send_through(now, gn, f, io);
            }
            Ok(Way::Hold) => self.hold_frame(now, gn, dst, frame),
            Ok(Way::Connected) => {
                self.c.stat(CtlStat::Connects);
                self.hold_frame(now, gn, dst, frame);
            }
            Err(why) => {
                self.c.drop(match why {
                    NoWay::NotRegistered => CtlDrop::NotRegistered,
                    NoWay::NoRoute => CtlDrop::NoRoute,
                });
                let _ = self.gn.unreachable_to(now, f, Unreachable::Host);
            }
        }
    }

    /// §5 "MTU": a GN packet longer than the inner MTU. With DF set it is dropped
    /// and answered with ICMP fragmentation needed carrying the inner MTU (RFC 1191);
    /// without, it is split into fragments that fit, each of which goes to its
    /// destination like any packet (sent as its own DATA, or held).
    fn too_big(&mut self, now: Instant, frame: &Ipv4Frame<'_>, io: &impl Io) {
        let fragments = if frame.ip.dont_frag() {
            None
        } else {
            fragment_ipv4(frame.packet(), usize::from(self.inner_mtu))
        };
        let Some(fragments) = fragments else {
            self.c.drop(CtlDrop::TooBig);
            let code = Unreachable::FragmentationNeeded(self.inner_mtu);
            let _ = self.gn.unreachable_to(now, frame, code);
            return;
        };
        self.c.stat(CtlStat::Fragmented);
        let eth = &frame.frame()[..ethernet::HEADER_LEN];
        let mut f = Vec::with_capacity(ethernet::HEADER_LEN + usize::from(self.inner_mtu));
        for ip in fragments {
            f.clear();
            f.extend_from_slice(eth);
            f.extend_from_slice(&ip);
            self.c.stat(CtlStat::FragmentsTx);
            match Ipv4Frame::parse(&f, GnDrop::Ipv4Malformed) {
                Ok(fragment) => self.vip_packet(now, &fragment, io),
                Err(_) => self.c.drop(CtlDrop::SlowFrameMalformed),
            }
        }
    }

    fn hold_frame(&mut self, now: Instant, gn: GnIndex, dst: Ipv4Addr, frame: &[u8]) {
        match self.slots[gn].host.hold(now, dst, frame) {
            Ok(()) => self.c.stat(CtlStat::Held),
            Err(_) => self.c.drop(CtlDrop::HoldFull),
        }
    }

    /// Sends the IPv4 packet of `frame` as GN `gn`'s DATA from the kernel socket.
    fn send_through(
        &mut self,
        now: Instant,
        gn: GnIndex,
        frame: &Ipv4Frame<'_>,
        io: &impl Io,
    ) -> bool {
        // §6: SYNs are clamped here too (a held SYN leaves from here).
        let mut packet = Cow::Borrowed(frame.packet());
        let max_mss = self.inner_mtu.saturating_sub(IPV4_TCP_LEN);
        if is_syn(&packet) && clamp_mss(packet.to_mut(), max_mss) {
            self.c.stat(CtlStat::MssClamped);
        }
        let host = &mut self.slots[gn].host;
        match host.send_data(now, &packet, &mut self.buf) {
            Ok(t) => {
                if io.send_wan(t.dst, &self.buf[..t.len]) {
                    self.c.stat(CtlStat::DataTx);
                    true
                } else {
                    self.c.drop(CtlDrop::WanSendFailed);
                    false
                }
            }
            Err(_) => {
                self.c.drop(CtlDrop::SetupFailed);
                let _ = self.gn.unreachable_to(now, frame, Unreachable::Host);
                false
            }
        }
    }

    /// Held packets whose tunnel will not come: ICMP host unreachable.
    fn fail_held(&mut self, now: Instant, frames: Vec<Vec<u8>>) {
        self.c.drop_n(CtlDrop::SetupFailed, frames.len());
        for f in frames {
            let _ = self.gn.unreachable(now, &f, Unreachable::Host);
        }
    }

    // ----- outputs ------------------------------------------------------

    /// Drains every output until nothing more comes. Each GN's endpoint
    /// events go first: a tunnel the DC directed is in the fast path before
    /// its TUN_REQ or TUN_RESP leaves, and a tunnel's held packets leave
    /// after the TUN_RESP that brought it up.
    fn pump(&mut self, now: Instant, io: &impl Io) {
        loop {
            let mut busy = false;
            for gn in 0..self.slots.len() {
                busy |= self.pump_host(now, gn, io);
            }
            while let Some(a) = self.gn.poll_action() {
                self.on_action(now, a, io);
                busy = true;
            }
            while let Some(n) = self.gn.poll_transmit(&mut self.frame) {
                if !io.send_lan(&self.frame[..n]) {
                    self.c.drop(CtlDrop::LanSendFailed);
                }
                busy = true;
            }
            if !busy {
                break;
            }
        }
        self.publish_link();
        self.store_names();
    }

    /// One GN's host outputs; whether there were any.
    fn pump_host(&mut self, now: Instant, gn: GnIndex, io: &impl Io) -> bool {
        let mut busy = false;
        while let Some(ev) = self.slots[gn].host.poll_event(now) {
            self.on_event(now, gn, ev);
            busy = true;
        }
        while let Some(t) = self.slots[gn]
            .host
            .poll_transmit(now, &mut self.buf[..MAX_SIGNALING_LEN])
        {
            if !io.send_wan(t.dst, &self.buf[..t.len]) {
                self.c.drop(CtlDrop::WanSendFailed);
            }
            busy = true;
        }
        while let Some((_, packets)) = self.slots[gn].host.poll_released() {
            for held in packets {
                // Held frames were parsed before; parsed again from the queue.
                let Ok(f) = Ipv4Frame::parse(&held, GnDrop::Ipv4Malformed) else {
                    self.c.drop(CtlDrop::SlowFrameMalformed);
                    continue;
                };
                if self.send_through(now, gn, &f, io) {
                    self.c.stat(CtlStat::Released);
                }
            }
            busy = true;
        }
        busy
    }

    fn on_event(&mut self, now: Instant, gn: GnIndex, ev: HostEvent) {
        match ev {
            HostEvent::Endpoint(ev) => self.on_endpoint_event(gn, ev),
            HostEvent::Answer {
                pending_id,
                outcome,
            } => self.gn.answer(now, pending_id, outcome),
            HostEvent::SetupFailed { packets, .. } => self.fail_held(now, packets),
        }
    }

    fn on_endpoint_event(&mut self, gn: GnIndex, ev: Event) {
        // The host learns names from these (Host::note).
        self.names_dirty |= matches!(
            ev,
            Event::DirectionResolved { .. } | Event::TunnelAdded(_) | Event::TunnelUp(_)
        );
        match ev {
            // The host logged it.
            Event::Registered { vip, .. } => {
                self.c.stat(CtlStat::Registrations);
                self.give_vip(gn, vip);
            }
            Event::RegistrationFailed { reason } => {
                let dcs = format!("{:?}", self.dcs);
                tracing::warn!(gn = %self.slots[gn].fqdn(), %dcs, %reason, "registration failed with every DC; trying again in 10 s (check [dc], and this [[gn]] entry's fqdn and key against the DC's configuration)");
            }
            // The endpoint logged it; its count is in the status.
            Event::DcChanged { .. } => {}
            // The host logged it, answered the DNS and gave up the packets.
            Event::DirectionResolved { .. } => {}
            Event::TunnelAdded(t) => self.on_tunnel_added(gn, t),
            Event::TunnelUp(t) => self.on_tunnel_up(gn, t),
            Event::TunnelDown { tunnel_id, reason } => self.on_tunnel_down(gn, tunnel_id, reason),
            Event::EndpointChanged {
                tunnel_id,
                endpoint,
            } => {
                self.c.stat(CtlStat::EndpointChanges);
                if !self.datapath.set_endpoint(tunnel_id, endpoint) {
                    tracing::debug!(
                        tunnel_id,
                        "roaming update for a tunnel the datapath no longer has"
                    );
                }
            }
        }
    }

    /// The DC gave GN `gn` its `vip`: the GN gets it by DHCP.
    fn give_vip(&mut self, gn: GnIndex, vip: Ipv4Addr) {
        if let Err(e) = self.gn.set_vip(gn, Some(vip)) {
            tracing::error!(gn = %self.slots[gn].fqdn(), error = %e, "cannot give the GN its VIP");
        }
    }

    /// The DC directed a tunnel: it receives from now on.
    fn on_tunnel_added(&mut self, gn: GnIndex, t: TunnelParams) {
        self.c.stat(CtlStat::TunnelsAdded);
        tracing::debug!(gn = %self.slots[gn].fqdn(), tunnel = %t, "tunnel directed: receiving");
        if let Err(e) = self.datapath.add_tunnel(&t) {
            // The endpoint prepared the same keys for the same suite: not reached.
            tracing::error!(tunnel_id = t.tunnel_id, error = %e, "the datapath refused a tunnel");
        }
        self.tunnel_gn.insert(t.tunnel_id, gn);
        self.slots[gn]
            .tunnels
            .insert(t.tunnel_id, TunnelRec::new(t.peer_fqdn));
    }

    /// A tunnel is up: it sends too, and the packets held for its peer go
    /// after the endpoint's transmits (a TUN_RESP first, then DATA).
    fn on_tunnel_up(&mut self, gn: GnIndex, t: TunnelParams) {
        self.c.stat(CtlStat::TunnelsUp);
        let slot = &mut self.slots[gn];
        let setup = slot.host.setup_time(t.tunnel_id);
        if let Some(d) = setup {
            self.setup
                .get_or_create(&ntm_ops::metrics::labels([("gn", slot.fqdn())]))
                .observe(d.as_secs_f64());
        }
        tracing::info!(
            gn = %slot.fqdn(),
            tunnel = %t,
            setup_ms = setup.map(|d| d.as_secs_f64() * 1e3),
            "tunnel up"
        );
        if let Err(e) = self.datapath.tunnel_up(&t) {
            tracing::error!(tunnel_id = t.tunnel_id, error = %e, "the datapath refused a tunnel");
        }
        self.tunnel_gn.insert(t.tunnel_id, gn);
        slot.tunnels
            .entry(t.tunnel_id)
            .or_insert_with(|| TunnelRec::new(t.peer_fqdn.clone()));
    }

    fn on_tunnel_down(&mut self, gn: GnIndex, tunnel_id: u32, reason: DownReason) {
        self.c.stat(CtlStat::TunnelsDown);
        self.datapath.remove_tunnel(tunnel_id);
        self.tunnel_gn.remove(&tunnel_id);
        let slot = &mut self.slots[gn];
        let rec = slot.tunnels.remove(&tunnel_id);
        let peer = rec.as_ref().map(|r| r.peer_fqdn.as_str()).unwrap_or("?");
        if matches!(reason, DownReason::Expired | DownReason::Closed) {
            tracing::info!(gn = %slot.fqdn(), tunnel_id, peer, ?reason, "tunnel down");
        } else {
            tracing::warn!(gn = %slot.fqdn(), tunnel_id, peer, ?reason, "tunnel down");
        }
    }

    fn on_action(&mut self, now: Instant, a: GnAction, io: &impl Io) {
        match a {
            GnAction::Resolve {
                gn,
                fqdn,
                pending_id,
            } => match self.slots[gn].host.resolve(now, &fqdn, pending_id) {
                Ok(_) => self.c.stat(CtlStat::Connects),
                // Answered with NXDOMAIN or SERVFAIL at the next poll.
                Err(e) => tracing::debug!(peer = %fqdn, error = %e, "cannot ask the DC"),
            },
            GnAction::Upstream {
                upstream_id,
                payload,
                transport,
            } => match io.send_upstream(transport, &payload) {
                Some(port) => self.gn.upstream_sent(upstream_id, transport, port),
                // The stub forgets the query at its time-out; the client asks again.
                None => self.c.drop(CtlDrop::UpstreamSendFailed),
            },
            GnAction::UpstreamDone { transport, port } => io.close_upstream(transport, port),
            GnAction::TcpReply { conn, message } => {
                if !io.send_tcp(conn, &message) {
                    // The client does not read its answers (or is gone).
                    self.c.drop(CtlDrop::DnsTcpSendFailed);
                    self.gn.tcp_closed(conn);
                    io.close_tcp(conn);
                }
            }
            GnAction::TcpClose { conn } => io.close_tcp(conn),
            // The link is published after the pump.
            GnAction::GnMac { gn, mac } => {
                tracing::info!(gn = %self.slots[gn].fqdn(), gn_mac = %mac, "GN MAC learned");
            }
            GnAction::LeaseBound { gn, vip, mac } => {
                tracing::info!(gn = %self.slots[gn].fqdn(), %vip, %mac, "the GN took its VIP (DHCPACK)");
            }
            GnAction::LeaseEnded { gn, vip } => {
                tracing::info!(gn = %self.slots[gn].fqdn(), %vip, "the GN's lease ended");
            }
        }
    }

    /// Gives the datapath the link (once the uplink's next hop is known) and
    /// every GN that has a VIP, with its MAC when known.
    fn publish_link(&mut self) {
        let link = self.gateway_mac.map(|gateway_mac| Link {
            lan_mac: self.lan_mac,
            wan_mac: self.wan_mac,
            wan_ip: self.wan_ip,
            wan_port: self.port,
            gateway_mac,
        });
        if link != self.published {
            if let Some(k) = &link {
                tracing::info!(wan = %SocketAddrV4::new(k.wan_ip, k.wan_port), gateway_mac = %k.gateway_mac, "datapath link ready");
            }
            self.datapath.set_link(link);
            self.published = link;
        }
        let gns = || {
            self.gn.gns().iter().filter_map(|g| {
                Some(GnLink {
                    vip: g.vip()?,
                    mac: g.mac(),
                })
            })
        };
        if !gns().eq(self.published_gns.iter().copied()) {
            self.published_gns = gns().collect();
            tracing::debug!(gns = self.published_gns.len(), "datapath GNs updated");
            self.datapath.set_gns(&self.published_gns);
        }
    }

    // ----- status -------------------------------------------------------

    /// Each GN: its registration and its lease.
    pub fn gn_status(&self, now: Instant) -> Vec<GnView> {
        self.slots
            .iter()
            .zip(self.gn.gns())
            .map(|(slot, st)| GnView {
                registration: self.registration_status(slot),
                gn: self.lease_status(st, now),
            })
            .collect()
    }

    fn registration_status(&self, slot: &Slot) -> RegistrationStatus {
        let ep = slot.host.endpoint();
        let reg = ep.registration();
        RegistrationStatus {
            fqdn: slot.fqdn().to_owned(),
            dc: ep.dc(),
            dc_failovers: ep.failovers(),
            registered: reg.is_some(),
            vip: reg.map(|r| r.vip.addr),
            prefix_len: reg.map(|r| r.vip.prefix_len),
            node_id: reg.map(|r| r.node_id),
            local_addr: ep.local_addr(),
            observed: reg.map(|r| r.observed),
            behind_nat: reg.map(|r| r.behind_nat),
        }
    }

    fn lease_status(&self, st: &GnState, now: Instant) -> GnStatus {
        let lease = st.active_lease(now);
        GnStatus {
            vip: st.vip(),
            mac: st.mac().map(|m| m.to_string()),
            seen: st.seen(),
            lease_bound: lease.is_some_and(|l| l.bound),
            lease_remaining_secs: lease.map(|l| (l.expires - now).as_secs()),
            router: self.gn.config().router,
            prefix_len: self.gn.config().vip_prefix_len,
        }
    }

    /// Every GN's tunnels, with the datapath's counters as last polled.
    pub fn tunnel_status(&self, now: Instant) -> Vec<TunnelStatus> {
        let mut v: Vec<TunnelStatus> = self
            .slots
            .iter()
            .flat_map(|slot| {
                slot.host
                    .endpoint()
                    .tunnels()
                    .map(move |info| Self::one_tunnel(slot, info, now))
            })
            .collect();
        v.sort_by_key(|t| t.id);
        v
    }

    fn one_tunnel(slot: &Slot, info: node::TunnelInfo, now: Instant) -> TunnelStatus {
        let node::TunnelInfo { params: t, up } = info;
        let rec = slot.tunnels.get(&t.tunnel_id);
        let a = rec.and_then(|r| r.stats.as_ref());
        let setup = rec.and(slot.host.setup_time(t.tunnel_id));
        TunnelStatus {
            id: t.tunnel_id,
            gn: slot.fqdn().to_owned(),
            peer_fqdn: t.peer_fqdn,
            peer_vip: t.peer_vip,
            path: t.path.name().to_owned(),
            role: t.role.name().to_owned(),
            suite: t.suite.name().to_owned(),
            endpoint: t.endpoint,
            up,
            tx_packets: a.map_or(0, |a| a.tx_packets),
            tx_bytes: a.map_or(0, |a| a.tx_bytes),
            rx_packets: a.map_or(0, |a| a.rx_packets),
            rx_bytes: a.map_or(0, |a| a.rx_bytes),
            last_rx_secs_ago: a
                .and_then(|a| a.last_rx)
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            setup_ms: setup.map(|d| d.as_secs_f64() * 1e3),
            opened_by: match rec {
                Some(_) if setup.is_some() => "gn",
                Some(_) if up => "peer",
                _ => "-",
            }
            .to_owned(),
        }
    }

    /// Slow-path counters: the GN services', the endpoints' (summed over
    /// the GNs) and our own.
    pub fn slow_path_status(&self) -> SlowPathStatus {
        let mut drops = BTreeMap::new();
        let mut stats = BTreeMap::new();
        for (d, n) in self.gn.counters().drops() {
            drops.insert(d.name().to_owned(), n);
        }
        for (s, n) in self.gn.counters().stats() {
            stats.insert(s.name().to_owned(), n);
        }
        for e in Error::ALL {
            let n = self.endpoints().map(|ep| ep.drops().get(e)).sum();
            drops.insert(format!("proto_{}", e.name()), n);
        }
        for (d, n) in self.c.drops() {
            drops.insert(d.name().to_owned(), n);
        }
        for (s, n) in self.c.stats() {
            stats.insert(s.name().to_owned(), n);
        }
        let held: usize = self.slots.iter().map(|s| s.host.held()).sum();
        stats.insert("held_now".into(), held as u64);
        stats.insert("dns_tcp_open".into(), self.gn.tcp_open() as u64);
        SlowPathStatus { drops, stats }
    }
}
