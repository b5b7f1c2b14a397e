//! The tokio driver: one task pumps the sans-IO [`Host`] (the protocol
//! [`Endpoint`] with its names and hold queue) and [`DnsStub`] between the
//! UDP socket, the TUN device and the DNS sockets (like quinn's
//! `ConnectionDriver` over quinn-proto).
//!
//! Every handler is synchronous and sends with `try_send*`: a full socket
//! or device buffer drops the packet (counted), as a router would, and
//! signaling loss is repaired by the protocol's retransmissions.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use ntm_ops::server::{Sig, Signals};
use ntm_proto::data::inner_destination;
use ntm_proto::dns::{DnsStub, Output, Transport};
use ntm_proto::host::{Host, HostEvent, NoWay, Way};
use ntm_proto::node::{self, Endpoint, Event, Received, TunnelParams};
use ntm_proto::wire::{Caps, MAX_SIGNALING_LEN, OVERHEAD};
use tokio::net::UdpSocket;
use tun_rs::AsyncDevice;

use crate::config::Settings;
use crate::hold::HoldQueue;
use crate::stats::{Counters, LocalDrop, Status, TunDeviceStatus, TunnelStatus};
use crate::tun::{self as tundev, TunRx, TunTx};

/// How often the route to the DC is checked for a new local address.
pub const ADDR_POLL: Duration = Duration::from_secs(1);
/// How often the status file is rewritten.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Largest datagram or packet handled (UDP payload limit).
const MAX_PACKET: usize = 65_535;

/// The sockets and the device.
struct Io {
    udp: UdpSocket,
    tun: AsyncDevice,
    dns: UdpSocket,
    upstream: UdpSocket,
    /// The device's name, queue length and offloads, and its interface
    /// index (to check that sysfs shows our namespace).
    tun_dev: (TunDeviceStatus, u32),
}

/// TUN reads handled per wake-up before the other inputs get a turn (each
/// read is up to 64 KiB with offload, one packet without).
const TUN_READS_PER_WAKE: usize = 16;
/// Datagrams handled per wake-up before the other inputs get a turn: one
/// batched TUN write's worth.
const DATAGRAMS_PER_WAKE: usize = tundev::BATCH;

/// The node's state, driven by [`run`].
struct Node {
    s: Settings,
    /// The endpoint with its names, hold queue and pending resolutions.
    host: Host,
    stub: DnsStub<SocketAddr>,
    c: Counters,
    /// The address on the TUN device.
    tun_addr: Option<(Ipv4Addr, u8)>,
    /// The TUN device for the status (counters read when it is written),
    /// and its interface index.
    tun_dev: (TunDeviceStatus, u32),
    /// Packets from tunnels waiting for one batched TUN write.
    tun_tx: TunTx,
    local_ip: Ipv4Addr,
    buf: Vec<u8>,
}

/// The source address the kernel picks towards `dst`: our LOCAL_ADDR.
/// A connected UDP socket sends nothing; it only asks the routing table.
pub fn route_source(dst: SocketAddrV4) -> Option<Ipv4Addr> {
    let s = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect(dst).ok()?;
    match s.local_addr().ok()? {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
        _ => None,
    }
}

fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(seed)
}

impl Node {
    fn new(s: Settings, now: Instant, local_ip: Ipv4Addr) -> Result<Node> {
        let seed = random_seed()?;
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .context("the system clock is before 1970: set the time")?;
        let cfg = node::Config {
            fqdn: s.fqdn.clone(),
            key: s.key.clone(),
            dc: s.dcs[0],
            local_addr: SocketAddrV4::new(local_ip, s.listen_port),
            caps: Caps::NODE,
        };
        let ep = Endpoint::new(cfg, now, unix_nanos, seed)
            .map_err(|e| anyhow::anyhow!("cannot start the protocol endpoint: {e}"))?
            .with_fallback_dcs(&s.dcs[1..]);
        let suffix =
            ntm_proto::dns::parse_suffix(&s.ntm_suffix).context("ntm_suffix is not a DNS name")?;
        let mut dns_cfg = s.dns.clone();
        dns_cfg.seed = u64::from_le_bytes([
            seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7],
        ]) ^ unix_nanos;
        let hold = HoldQueue::new(s.hold_per_peer, s.hold_total, s.hold_timeout);
        Ok(Node {
            host: Host::new(ep, hold),
            stub: DnsStub::new(suffix, dns_cfg),
            s,
            c: Counters::default(),
            tun_addr: None,
            tun_dev: (TunDeviceStatus::default(), 0),
            tun_tx: TunTx::new(),
            local_ip,
            buf: vec![0u8; MAX_PACKET + OVERHEAD],
        })
    }

    fn send_udp(&mut self, io: &Io, dst: SocketAddrV4, len: usize) -> bool {
        match io.udp.try_send_to(&self.buf[..len], SocketAddr::V4(dst)) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%dst, error = %e, "UDP send failed");
                self.c.drop_local(LocalDrop::UdpSendFailed);
                false
            }
        }
    }

    // ----- inputs -------------------------------------------------------

    /// A datagram on the node's UDP port, opened in place (suite 2
    /// decrypts it where it lies).
    fn on_datagram(&mut self, io: &Io, now: Instant, from: SocketAddr, bytes: &mut [u8]) {
        let SocketAddr::V4(from) = from else {
            self.c.drop_local(LocalDrop::NotIpv4Source);
            return;
        };
        // Drops are counted by reason inside the endpoint (Endpoint::drops).
        // The endpoint runs every check of §5 (tag or decryption with the
        // receive direction key, replay window, inner shape and addresses)
        // before it notes the datagram as activity or follows a new source
        // (roaming): a dropped datagram moves nothing.
        match self.host.handle(now, from, bytes) {
            Ok(Received::Data { inner, .. }) => {
                self.c.data_rx += 1;
                if self.tun_tx.push(inner) {
                    self.flush_tun(io);
                }
            }
            Ok(Received::Keepalive { .. }) => self.c.keepalive_rx += 1,
            Ok(Received::Signaling) => {}
            Err(e) => tracing::trace!(%from, reason = e.name(), "dropped a datagram"),
        }
    }

    /// Writes the packets that tunnels delivered to the TUN device, in one
    /// batch (coalesced by GRO with offload). A failed write is counted;
    /// a device that is gone shows on the next read.
    fn flush_tun(&mut self, io: &Io) {
        match self.tun_tx.flush(&io.tun) {
            Ok(n) => self.c.tun_tx += n as u64,
            Err((e, n)) => {
                tracing::debug!(error = %e, packets = n, "TUN write failed");
                self.c.drop_local_n(LocalDrop::TunWriteFailed, n);
            }
        }
    }

    /// One read from the TUN device: its packets, or an error that is fatal
    /// only if the device failed (a read the offload code could not split
    /// is counted and skipped).
    fn on_tun_read(
        &mut self,
        io: &Io,
        now: Instant,
        read: std::io::Result<usize>,
        rx: &TunRx,
    ) -> Result<()> {
        match read {
            Ok(_) => {
                for pkt in rx.packets() {
                    self.on_tun_packet(io, now, pkt);
                }
                Ok(())
            }
            Err(e) if tundev::is_device_error(&e) => {
                Err(e).context("reading the TUN device failed")
            }
            Err(e) => {
                tracing::debug!(error = %e, "TUN read dropped");
                self.c.drop_local(LocalDrop::TunBadRead);
                Ok(())
            }
        }
    }

    /// A packet from the TUN device (our stack, to some VIP).
    fn on_tun_packet(&mut self, io: &Io, now: Instant, pkt: &[u8]) {
        self.c.tun_rx += 1;
        let Some(dst) = inner_destination(pkt) else {
            self.c.drop_local(LocalDrop::NotIpv4);
            return;
        };
        match self.host.route(now, dst) {
            Ok(Way::Send) => {
                if self.send_data(io, now, pkt).is_err() {
                    self.c.drop_local(LocalDrop::NotIpv4);
                }
            }
            Ok(Way::Hold | Way::Connected) => self.hold_packet(now, dst, pkt),
            Err(NoWay::NotRegistered) => self.c.drop_local(LocalDrop::NotRegistered),
            Err(NoWay::NoRoute) => self.c.drop_local(LocalDrop::NoRoute),
        }
    }

    fn send_data(&mut self, io: &Io, now: Instant, pkt: &[u8]) -> Result<(), ntm_proto::Error> {
        let t = self.host.send_data(now, pkt, &mut self.buf)?;
        if self.send_udp(io, t.dst, t.len) {
            self.c.data_tx += 1;
        }
        Ok(())
    }

    fn hold_packet(&mut self, now: Instant, dst: Ipv4Addr, pkt: &[u8]) {
        match self.host.hold(now, dst, pkt) {
            Ok(()) => self.c.held += 1,
            Err(_) => self.c.drop_local(LocalDrop::HoldFull),
        }
    }

    /// A query to the DNS stub.
    fn on_dns_query(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.c.dns_queries += 1;
        // UDP only: the node's stub has no TCP listener (truncated answers
        // cannot be asked again over TCP here).
        if let Err(d) = self.stub.handle_query(now, from, 0, Transport::Udp, bytes) {
            tracing::debug!(%from, reason = d.name(), "DNS query dropped");
            self.c.drop_dns(d);
        }
    }

    /// A datagram from the upstream resolver.
    fn on_upstream(&mut self, now: Instant, bytes: &[u8]) {
        if let Err(d) = self.stub.handle_upstream(now, bytes) {
            self.c.drop_dns(d);
        }
    }

    /// Timers of the endpoint, the stub and the hold queue.
    fn on_timeout(&mut self, now: Instant) {
        let n = self.host.handle_timeout(now);
        self.c.drop_local_n(LocalDrop::HoldExpired, n);
        let n = self.stub.handle_timeout(now);
        self.c
            .drop_dns_n(ntm_proto::dns::DnsDrop::UpstreamTimeout, n);
    }

    /// Checks the route to the DC for a new local address (roaming).
    fn check_local_addr(&mut self, now: Instant) {
        let Some(ip) = route_source(self.host.endpoint().dc()) else {
            return;
        };
        if ip != self.local_ip {
            tracing::info!(old = %self.local_ip, new = %ip, "local address changed: re-registering and telling peers");
            self.local_ip = ip;
            self.host
                .endpoint_mut()
                .handle_local_addr_change(now, SocketAddrV4::new(ip, self.s.listen_port));
        }
    }

    // ----- outputs ------------------------------------------------------

    /// Drains the host's events, transmits and released packets and the
    /// stub's outputs until nothing more comes out (events first: see
    /// [`ntm_proto::host`]).
    fn pump(&mut self, io: &Io, now: Instant) {
        loop {
            let mut busy = false;
            while let Some(ev) = self.host.poll_event(now) {
                self.on_event(io, now, ev);
                busy = true;
            }
            while let Some(t) = self
                .host
                .poll_transmit(now, &mut self.buf[..MAX_SIGNALING_LEN])
            {
                self.send_udp(io, t.dst, t.len);
                busy = true;
            }
            while let Some((_, packets)) = self.host.poll_released() {
                for pkt in packets {
                    match self.send_data(io, now, &pkt) {
                        Ok(()) => self.c.released += 1,
                        Err(_) => self.c.drop_local(LocalDrop::SetupFailed),
                    }
                }
                busy = true;
            }
            while let Some(out) = self.stub.poll_output() {
                self.on_dns_output(io, now, out);
                busy = true;
            }
            if !busy {
                break;
            }
        }
    }

    fn on_event(&mut self, io: &Io, now: Instant, ev: HostEvent) {
        match ev {
            HostEvent::Endpoint(ev) => self.on_endpoint_event(io, ev),
            HostEvent::Answer {
                pending_id,
                outcome,
            } => {
                if let Err(d) = self.stub.answer(now, pending_id, outcome) {
                    self.c.drop_dns(d);
                }
            }
            HostEvent::SetupFailed { packets, .. } => {
                self.c.drop_local_n(LocalDrop::SetupFailed, packets.len());
            }
        }
    }

    fn on_endpoint_event(&mut self, io: &Io, ev: Event) {
        match ev {
            // The host logged it.
            Event::Registered {
                vip, prefix_len, ..
            } => {
                self.c.registrations += 1;
                if self.tun_addr != Some((vip, prefix_len)) {
                    self.configure_tun(io, vip, prefix_len);
                }
            }
            Event::RegistrationFailed { reason } => {
                let dcs = format!("{:?}", self.s.dcs);
                tracing::warn!(%dcs, %reason, "registration failed with every DC; trying again in 10 s");
            }
            // The endpoint logged and counted it (`failovers`, in the status).
            Event::DcChanged { .. } => {}
            // The host logged it, answered the DNS and gave up the packets.
            Event::DirectionResolved { .. } => {}
            Event::TunnelAdded(p) => {
                // The endpoint accepts the peer's DATA from now on (the peer
                // may send right after its TUN_RESP); we send from TunnelUp.
                tracing::debug!(tunnel = %p, "tunnel added");
            }
            Event::TunnelUp(p) => self.on_tunnel_up(&p),
            Event::TunnelDown { tunnel_id, reason } => {
                self.c.tunnels_down += 1;
                tracing::info!(tunnel_id, ?reason, "tunnel down");
            }
            // The host logged it; the endpoint sends there from now on.
            Event::EndpointChanged { .. } => {}
        }
    }

    /// A tunnel is up; its held packets go after the pending transmits
    /// ([`Host::poll_released`]).
    fn on_tunnel_up(&mut self, p: &TunnelParams) {
        self.c.tunnels_up += 1;
        tracing::info!(tunnel = %p, "tunnel up");
    }

    fn configure_tun(&mut self, io: &Io, vip: Ipv4Addr, prefix_len: u8) {
        let r = io
            .tun
            .set_network_address(vip, prefix_len, None)
            .and_then(|()| io.tun.set_mtu(self.s.mtu))
            .and_then(|()| io.tun.enabled(true));
        match r {
            Ok(()) => {
                tracing::info!(tun = %self.s.tun_name, %vip, prefix_len, mtu = self.s.mtu, "VIP on the TUN device");
                self.tun_addr = Some((vip, prefix_len));
            }
            Err(e) => tracing::error!(
                tun = %self.s.tun_name,
                %vip,
                error = %e,
                "cannot put the VIP on the TUN device; packets to peers will not flow"
            ),
        }
    }

    fn on_dns_output(&mut self, io: &Io, now: Instant, out: Output<SocketAddr>) {
        match out {
            Output::Reply {
                to, payload, kind, ..
            } => match io.dns.try_send_to(&payload, to) {
                Ok(_) => self.c.reply(kind),
                Err(_) => self.c.drop_local(LocalDrop::DnsSendFailed),
            },
            Output::Resolve {
                fqdn, pending_id, ..
            } => {
                if let Err(e) = self.host.resolve(now, &fqdn, pending_id) {
                    // Answered with NXDOMAIN or SERVFAIL at the next poll.
                    tracing::debug!(peer = %fqdn, error = %e, "cannot ask the DC");
                }
            }
            Output::Upstream { payload, .. } => {
                if io.upstream.try_send(&payload).is_err() {
                    self.c.drop_local(LocalDrop::UpstreamSendFailed);
                }
            }
        }
    }

    // ----- status -------------------------------------------------------

    fn status(&self) -> Status {
        let ep = self.host.endpoint();
        let reg = ep.registration();
        let mut tunnels: Vec<TunnelStatus> = ep
            .tunnels()
            .map(|node::TunnelInfo { params: t, up }| TunnelStatus {
                id: t.tunnel_id,
                peer_fqdn: t.peer_fqdn,
                peer_vip: t.peer_vip,
                endpoint: t.endpoint,
                path: t.path.name().to_owned(),
                role: t.role.name().to_owned(),
                suite: t.suite.name().to_owned(),
                up,
            })
            .collect();
        tunnels.sort_by_key(|t| t.id);
        Status {
            fqdn: self.s.fqdn.clone(),
            vip: reg.map(|r| r.vip.addr),
            node_id: reg.map(|r| r.node_id),
            dc: Some(ep.dc()),
            local_addr: ep.local_addr(),
            observed: reg.map(|r| r.observed),
            behind_nat: reg.map(|r| r.behind_nat),
            tunnels,
            packets: {
                // The endpoint's own count: a status written between its move
                // to the next DC and this node's handling of the event still
                // shows both.
                let mut p = self.c.packets();
                p.insert("dc_failovers".into(), ep.failovers());
                p
            },
            drops: self.c.drops(ep.drops()),
            tun: self.tun_status(),
        }
    }

    /// The TUN device with the kernel's counters as they are now.
    fn tun_status(&self) -> TunDeviceStatus {
        let (dev, ifindex) = &self.tun_dev;
        let counters = tundev::read_counters(&dev.name, *ifindex).unwrap_or_else(|e| {
            tracing::debug!(tun = %dev.name, error = %e, "cannot read the TUN device's counters");
            Default::default()
        });
        TunDeviceStatus {
            counters,
            ..dev.clone()
        }
    }

    fn write_status(&self) {
        if let Some(path) = &self.s.status_file {
            if let Err(e) = self.status().store(path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot write the status file: check that its directory exists and is writable");
            }
        }
    }

    fn log_stats(&self) {
        tracing::info!(target: "ntm_node::stats", "stats {}", self.status().log_line());
    }

    fn next_deadline(&self) -> Option<Instant> {
        [self.host.poll_timeout(), self.stub.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Socket buffer sizes as the kernel reports them after SO_RCVBUF and
/// SO_SNDBUF (Linux doubles the value asked for, for its bookkeeping, and
/// caps it at net.core.rmem_max/wmem_max first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketBuffers {
    /// SO_RCVBUF.
    recv: usize,
    /// SO_SNDBUF.
    send: usize,
}

/// The node's UDP socket on `port` (all addresses), with SO_RCVBUF and
/// SO_SNDBUF of `buffer` bytes asked for before the bind, so that no
/// datagram arrives to the default-sized queue. Non-blocking, for tokio.
fn bind_udp(port: u16, buffer: usize) -> std::io::Result<(StdUdpSocket, SocketBuffers)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_recv_buffer_size(buffer)?;
    sock.set_send_buffer_size(buffer)?;
    sock.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    sock.set_nonblocking(true)?;
    let granted = SocketBuffers {
        recv: sock.recv_buffer_size()?,
        send: sock.send_buffer_size()?,
    };
    Ok((sock.into(), granted))
}

async fn open_io(s: &Settings) -> Result<Io> {
    let (udp, granted) = bind_udp(s.listen_port, s.socket_buffer).with_context(|| {
        format!(
            "cannot bind UDP port {}: is another node running? (set listen_port)",
            s.listen_port
        )
    })?;
    let udp = UdpSocket::from_std(udp).context("cannot register the UDP socket with tokio")?;
    // Less than twice the request: the kernel capped it at the sysctl.
    let capped = granted.recv < 2 * s.socket_buffer || granted.send < 2 * s.socket_buffer;
    if capped {
        tracing::warn!(
            requested = s.socket_buffer,
            rcvbuf = granted.recv,
            sndbuf = granted.send,
            "the kernel granted smaller UDP socket buffers than socket_buffer asks for (tunnel traffic may overflow them): raise the caps with `sysctl -w net.core.rmem_max={0} net.core.wmem_max={0}`",
            s.socket_buffer
        );
    } else {
        tracing::info!(
            requested = s.socket_buffer,
            rcvbuf = granted.recv,
            sndbuf = granted.send,
            "UDP socket buffers (the kernel reports twice the size asked for)"
        );
    }
    let dns = UdpSocket::bind(s.dns_listen).await.with_context(|| {
        format!(
            "cannot bind the DNS stub on {}: is another resolver listening there? (set dns_listen)",
            s.dns_listen
        )
    })?;
    let any: SocketAddr = if s.upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = UdpSocket::bind(any)
        .await
        .context("cannot open the upstream resolver socket")?;
    // Connected: only the upstream resolver's replies come in.
    upstream
        .connect(s.upstream)
        .await
        .with_context(|| format!("cannot reach the upstream resolver {}", s.upstream))?;
    let (tun, tun_dev) = open_tun(s)?;
    // tokio's try_send* fail until the reactor has seen the sockets
    // writable once; wait for that here, so the first REG_REQ goes out.
    udp.writable().await.context("UDP socket")?;
    dns.writable().await.context("DNS socket")?;
    upstream.writable().await.context("upstream socket")?;
    tun.writable().await.context("TUN device")?;
    Ok(Io {
        udp,
        tun,
        dns,
        upstream,
        tun_dev,
    })
}

/// The TUN device with `tun_queue_len` and, if `tun_offload`, the
/// offloads; a kernel that refuses them gets a device without (warned).
fn open_tun(s: &Settings) -> Result<(AsyncDevice, (TunDeviceStatus, u32))> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(&s.tun_name)
            .mtu(s.mtu)
            .tx_queue_len(s.tun_queue_len)
            .offload(offload)
            .build_async()
    };
    let tun = match build(s.tun_offload) {
        Err(e) if s.tun_offload => {
            tracing::warn!(tun = %s.tun_name, error = %e, "the kernel refused the TUN offloads (virtio-net header, TSO): reading one packet per system call (set tun_offload = false to silence this)");
            build(false)
        }
        r => r,
    }
    .with_context(|| {
        format!(
            "cannot create TUN device {}: run as root (CAP_NET_ADMIN) with /dev/net/tun present, and pick a tun_name not in use",
            s.tun_name
        )
    })?;
    let ifindex = tun
        .if_index()
        .context("the TUN device has no interface index")?;
    let dev = TunDeviceStatus {
        name: s.tun_name.clone(),
        queue_len: tun.tx_queue_len().unwrap_or(s.tun_queue_len),
        offload: tun.tcp_gso(),
        udp_offload: tun.udp_gso(),
        counters: Default::default(),
    };
    tracing::info!(
        tun = %dev.name,
        queue_len = dev.queue_len,
        tso = dev.offload,
        uso = dev.udp_offload,
        "TUN device open"
    );
    Ok((tun, (dev, ifindex)))
}

/// The node's periodic chores besides the endpoint's own timers: the
/// local-address check, the status file and the statistics line.
struct Chores {
    next_addr: Instant,
    next_status: Instant,
    next_stats: Option<Instant>,
    stats_every: Option<Duration>,
}

impl Chores {
    fn new(start: Instant, stats_every: Option<Duration>) -> Chores {
        Chores {
            next_addr: start + ADDR_POLL,
            next_status: start,
            next_stats: stats_every.map(|d| start + d),
            stats_every,
        }
    }

    /// When the node must next wake: the earliest chore or endpoint timer.
    fn wake(&self, node: &Node, now: Instant) -> Instant {
        [
            node.next_deadline(),
            Some(self.next_addr),
            Some(self.next_status),
            self.next_stats,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + ADDR_POLL)
    }

    /// The endpoint's timers and the chores that are due.
    fn run_due(&mut self, node: &mut Node, now: Instant) {
        node.on_timeout(now);
        if now >= self.next_addr {
            node.check_local_addr(now);
            self.next_addr = now + ADDR_POLL;
        }
        if now >= self.next_status {
            node.write_status();
            self.next_status = now + STATUS_EVERY;
        }
        if let (Some(at), Some(every)) = (self.next_stats, self.stats_every) {
            if now >= at {
                node.log_stats();
                self.next_stats = Some(now + every);
            }
        }
    }
}

/// The receive buffers of the driver loop.
struct Buffers {
    net: Vec<u8>,
    tun: TunRx,
    dns: Vec<u8>,
    upstream: Vec<u8>,
}

/// What one wake of the driver loop found.
enum Wake {
    Datagram(std::io::Result<(usize, SocketAddr)>),
    Tun(std::io::Result<usize>),
    DnsQuery(std::io::Result<(usize, SocketAddr)>),
    Upstream(std::io::Result<usize>),
    Timer,
    Metrics(std::io::Result<tokio::net::TcpStream>),
    Watchdog,
    Signal(Sig),
}

impl Node {
    /// Opens the sockets and the device and sets the node up on them.
    async fn start(s: Settings) -> Result<(Node, Io)> {
        let io = open_io(&s).await?;
        let local_ip = route_source(s.dcs[0]).unwrap_or_else(|| {
            tracing::warn!(dc = %s.dcs[0], "no route to the DC yet; registering once one appears");
            Ipv4Addr::UNSPECIFIED
        });
        let mut node = Node::new(s, Instant::now(), local_ip)?;
        node.tun_dev = io.tun_dev.clone();
        tracing::info!(
            fqdn = %node.s.fqdn,
            dcs = ?node.s.dcs,
            local = %SocketAddrV4::new(local_ip, node.s.listen_port),
            dns = %node.s.dns_listen,
            tun = %node.s.tun_name,
            "ntm-node started"
        );
        Ok((node, io))
    }

    /// This datagram and those queued behind it, up to a batch, then one
    /// batched TUN write of what they carried.
    fn on_datagrams(
        &mut self,
        io: &Io,
        first: std::io::Result<(usize, SocketAddr)>,
        buf: &mut [u8],
    ) {
        let now = Instant::now();
        let mut first = Some(first);
        for _ in 0..DATAGRAMS_PER_WAKE {
            let r = first.take().unwrap_or_else(|| io.udp.try_recv_from(buf));
            match r {
                Ok((n, from)) => self.on_datagram(io, now, from, &mut buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors of earlier sends surface here (ECONNREFUSED): not fatal.
                Err(e) => tracing::debug!(error = %e, "UDP receive error"),
            }
        }
        self.flush_tun(io);
    }

    /// This TUN read and those already queued, up to a budget.
    fn on_tun_reads(
        &mut self,
        io: &Io,
        first: std::io::Result<usize>,
        rx: &mut TunRx,
    ) -> Result<()> {
        let now = Instant::now();
        self.on_tun_read(io, now, first, rx)?;
        for _ in 1..TUN_READS_PER_WAKE {
            match rx.try_recv(&io.tun) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                r => self.on_tun_read(io, now, r, rx)?,
            }
        }
        Ok(())
    }

    /// Acts on one wake of the driver loop; false to stop.
    fn on_wake(&mut self, io: &Io, w: Wake, b: &mut Buffers, chores: &mut Chores) -> Result<bool> {
        match w {
            Wake::Datagram(r) => self.on_datagrams(io, r, &mut b.net),
            Wake::Tun(r) => self.on_tun_reads(io, r, &mut b.tun)?,
            Wake::DnsQuery(Ok((n, from))) => self.on_dns_query(Instant::now(), from, &b.dns[..n]),
            Wake::DnsQuery(Err(e)) => tracing::debug!(error = %e, "DNS receive error"),
            Wake::Upstream(Ok(n)) => self.on_upstream(Instant::now(), &b.upstream[..n]),
            Wake::Upstream(Err(e)) => tracing::debug!(error = %e, "upstream receive error"),
            Wake::Timer => chores.run_due(self, Instant::now()),
            Wake::Metrics(Ok(stream)) => ntm_ops::metrics::respond(
                stream,
                crate::metrics::scrape(&self.status(), self.s.metrics.max_tunnel_labels),
            ),
            Wake::Metrics(Err(e)) => tracing::debug!(error = %e, "metrics accept error"),
            Wake::Watchdog => ntm_ops::notify::ping(),
            Wake::Signal(Sig::Stats | Sig::Reload) => {
                self.log_stats();
                self.write_status();
            }
            Wake::Signal(Sig::Stop) => return Ok(false),
        }
        Ok(true)
    }

    /// Deregisters (DEREG) and writes the last statistics.
    fn shut_down(&mut self, io: &Io) {
        let now = Instant::now();
        ntm_ops::notify::stopping();
        tracing::info!("shutting down: deregistering");
        self.host.endpoint_mut().close(now);
        self.pump(io, now);
        self.log_stats();
        self.write_status();
    }
}

/// Runs the node until SIGINT or SIGTERM, then deregisters (DEREG).
/// Needs a current-thread or multi-thread tokio runtime with I/O and time.
pub async fn run(s: Settings) -> Result<()> {
    let (mut node, io) = Node::start(s).await?;
    let mut signals = Signals::new(false)?;
    // Metrics (`[metrics] listen`) from the status snapshot, and systemd's
    // readiness and watchdog (nothing without systemd).
    let metrics = ntm_ops::server::bind_metrics(node.s.metrics.listen).await?;
    let mut watchdog = ntm_ops::notify::watchdog_timer();
    ntm_ops::notify::ready(&format!("node {}", node.s.fqdn));
    let mut b = Buffers {
        net: vec![0u8; MAX_PACKET],
        tun: TunRx::new(node.s.mtu),
        dns: vec![0u8; MAX_PACKET],
        upstream: vec![0u8; MAX_PACKET],
    };
    let start = Instant::now();
    let mut chores = Chores::new(start, node.s.stats_interval);
    node.pump(&io, start);
    loop {
        let wake = chores.wake(&node, Instant::now());
        let w = tokio::select! {
            r = io.udp.recv_from(&mut b.net) => Wake::Datagram(r),
            r = b.tun.recv(&io.tun) => Wake::Tun(r),
            r = io.dns.recv_from(&mut b.dns) => Wake::DnsQuery(r),
            r = io.upstream.recv(&mut b.upstream) => Wake::Upstream(r),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => Wake::Timer,
            r = ntm_ops::metrics::accept(&metrics) => Wake::Metrics(r),
            () = ntm_ops::notify::tick(&mut watchdog) => Wake::Watchdog,
            s = signals.next() => Wake::Signal(s),
        };
        if !node.on_wake(&io, w, &mut b, &mut chores)? {
            break;
        }
        node.pump(&io, Instant::now());
    }
    node.shut_down(&io);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_sysctl(name: &str) -> usize {
        let path = format!("/proc/sys/net/core/{name}");
        let text = std::fs::read_to_string(&path).unwrap();
        text.trim().parse().unwrap()
    }

    #[test]
    fn the_udp_socket_gets_its_buffers_up_to_the_kernel_caps() {
        let ask = 1 << 20;
        let (sock, got) = bind_udp(0, ask).unwrap();
        // Linux caps the request at the sysctl, then doubles it.
        assert_eq!(got.recv, 2 * ask.min(core_sysctl("rmem_max")));
        assert_eq!(got.send, 2 * ask.min(core_sysctl("wmem_max")));
        let port = sock.local_addr().unwrap().port();
        assert_ne!(port, 0);
        // Non-blocking, for tokio.
        let mut b = [0u8; 8];
        let e = sock.recv_from(&mut b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        // No SO_REUSEADDR/SO_REUSEPORT: a second node on the port fails.
        let e = bind_udp(port, ask).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}
