//! `ntma run`: the adapter daemon.
//!
//! The main thread is the slow-path/control thread: a tokio current-thread
//! runtime pumping [`Control`] between
//!
//! * the tunnel socket (UDP on the uplink's NTM port, bound to the uplink's
//!   address and device, so that nothing on the GN side reaches it through
//!   the router address; bound anew when the uplink's address changes): DC
//!   signaling and TUN_REQ/TUN_RESP, which the XDP program passes to the
//!   kernel;
//! * a raw AF_PACKET socket on the GN-facing NIC: ARP, DHCP, DNS and
//!   everything else the XDP program passes, and the slow path's frames to
//!   the GN;
//! * the datapath's slow queue (its eventfd): packets to VIPs without a tunnel
//!   (and, with the raw datapath, the signaling its worker read);
//! * one socket per query forwarded to the upstream resolver, each bound to
//!   a random port and connected to the resolver, closed once the query is
//!   answered or given up (a TCP connection, run by a task of its own, for a
//!   query that came over TCP); a reload may point new queries at another
//!   resolver, those in flight stay with theirs;
//! * a TCP listener on the router address's port 53 (DNS over TCP, RFC
//!   7766) and a task per accepted connection, which reports what it reads
//!   and writes the answers queued for it; the control decides which
//!   connections are taken and when they close;
//! * UDP sockets on the router address's port 53 and the NIC's port 67, only
//!   so the kernel never answers the GN's DNS and DHCP with ICMP port
//!   unreachable (the raw socket already has the frames);
//! * the status socket, for `ntma status` (`daemon/sockets.rs` holds all these);
//! * timers: the protocol's, the datapath's activity (every 250 ms), the
//!   uplink's address and next hop (every 250 ms), a statistics log line.
//!
//! The datapath ([`Datapath`]: AF_XDP or raw) runs its own pinned worker
//! threads. [`Daemon::open`] sets everything up; [`Daemon::run`] waits for the
//! next input (`Wake`) and hands it to a small handler. SIGINT or SIGTERM
//! deregisters (DEREG), removes every tunnel and detaches the XDP programs;
//! the NAT table (`non_vip = "nat"`) and the status socket go too.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket, UnixListener};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{Attach, Bind, DatapathKind, NonVip, Settings};
use crate::control::{Boot, Control};
use crate::datapath::{Datapath, SlowWaker};
use crate::fastpath::{AfXdp, AfXdpConfig, AttachMode, BindMode, UmemConfig};
use crate::gn::{Transport, MAX_FRAME_LEN};
use crate::os::nat::NatGuard;
use crate::os::packet::readiness;
use crate::os::sys;
use crate::rawpath::{Classify, RawConfig, RawPath};
use crate::status::{DatapathStatus, Status};
use ntma_common::XdpConfig;

mod ops;
mod sockets;

use sockets::{
    on_tcp_event, open_sockets, recv_upstream, status_listener, tokio_udp, tunnel_socket, DnsTcp,
    Sinks, SocketFile, Sockets, TcpEvent, MAX_DATAGRAM,
};

/// How often the datapath's per-tunnel counters are read.
pub const ACTIVITY_EVERY: Duration = Duration::from_millis(250);
/// How often the uplink's address and next hop are read.
pub const LINK_EVERY: Duration = Duration::from_millis(250);

/// OS randomness for the protocol endpoint.
fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(seed)
}

/// The Unix time in nanoseconds (signaling sequence numbers start there).
fn unix_nanos() -> Result<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .context("the system clock is before 1970: set the time")
}

/// The AF_XDP datapath's configuration from the settings.
fn afxdp_config(s: &Settings, net: Ipv4Addr) -> AfXdpConfig {
    let d = &s.datapath;
    let xdp = XdpConfig::new(
        u32::from(net),
        s.gn.vip_prefix_len,
        u32::from(s.gn.router),
        s.port,
    );
    let mut cfg = AfXdpConfig::new(&s.lan_if, &s.wan_if, xdp);
    cfg.queues = d.queues;
    cfg.cores = d.cores.clone();
    cfg.umem = UmemConfig {
        frame_size: d.frame_size,
        frame_count: d.frame_count,
        fill_size: d.fill_ring,
        completion_size: d.completion_ring,
        ..UmemConfig::default()
    };
    cfg.rx_ring = d.rx_ring;
    cfg.tx_ring = d.tx_ring;
    cfg.batch = d.batch as usize;
    cfg.busy_poll = d.busy_poll;
    cfg.spin_turns = d.spin_turns;
    cfg.attach = match d.attach {
        Attach::Native => AttachMode::Native,
        Attach::Generic => AttachMode::Generic,
    };
    cfg.bind = match d.bind {
        Bind::Auto => BindMode::Auto,
        Bind::Copy => BindMode::Copy,
        Bind::ZeroCopy => BindMode::ZeroCopy,
    };
    cfg.inner_mtu = s.inner_mtu();
    cfg
}

/// Starts the configured datapath (`datapath.kind`). The raw one reads the tunnel
/// socket `wan` itself (signaling reaches the control through the slow queue).
fn open_datapath(s: &Settings, net: Ipv4Addr, wan: &StdUdpSocket) -> Result<Box<dyn Datapath>> {
    Ok(match s.datapath.kind {
        DatapathKind::AfXdp => {
            Box::new(AfXdp::start(afxdp_config(s, net)).context("starting the fast path")?)
        }
        DatapathKind::Raw => Box::new(
            RawPath::start(RawConfig {
                lan_if: s.lan_if.clone(),
                wan: wan.try_clone().context("duplicating the tunnel socket")?,
                classify: classify(s, net),
                core: s.datapath.cores.first().copied(),
                batch: s.datapath.batch as usize,
                busy_poll: s.datapath.busy_poll,
                slow_slots: crate::fastpath::SLOW_SLOTS,
                inner_mtu: s.inner_mtu(),
            })
            .context("starting the raw datapath")?,
        ),
    })
}

/// What the raw datapath takes from the GN: the XDP program's classification.
fn classify(s: &Settings, net: Ipv4Addr) -> Classify {
    Classify {
        vip_net: net,
        vip_prefix_len: s.gn.vip_prefix_len,
        router: s.gn.router,
    }
}

/// Runs the adapter until SIGINT or SIGTERM; SIGHUP reads `config` again
/// and applies what may change without a restart ([`crate::reload`]).
pub fn run(s: Settings, config: Option<PathBuf>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async {
        let daemon = Daemon::open(s, config).await?;
        daemon.run().await
    })
}

/// The NICs as the daemon found them at start.
struct Nics {
    lan: sys::Interface,
    wan: sys::Interface,
    /// The uplink's address.
    wan_ip: Ipv4Addr,
}

/// Checks the NICs (up, Ethernet, the router address on the GN side, an address on
/// the uplink) and reads the uplink's MTU when `wan.mtu` is not set.
fn check_nics(s: &mut Settings) -> Result<Nics> {
    let lan = sys::interface(&s.lan_if).context("lan.interface")?;
    let wan = sys::interface(&s.wan_if).context("wan.interface")?;
    if s.wan_mtu.is_none() {
        let m = sys::mtu(&s.wan_if)
            .with_context(|| format!("cannot read the MTU of {} (set wan.mtu)", s.wan_if))?;
        s.set_uplink_mtu(u16::try_from(m).unwrap_or(u16::MAX))
            .with_context(|| format!("the MTU of {} is {m}", s.wan_if))?;
    }
    tracing::info!(
        uplink_mtu = s.uplink_mtu,
        inner_mtu = s.inner_mtu(),
        gn_mtu = s.gn.mtu,
        "MTU (§5): inner = uplink − 60"
    );
    for i in [&lan, &wan] {
        if !i.up {
            bail!("interface {} is down: `ip link set {} up`", i.name, i.name);
        }
        if !i.mac.is_unicast() {
            bail!(
                "interface {} has no Ethernet address: use an Ethernet NIC",
                i.name
            );
        }
    }
    if !lan.ipv4.iter().any(|(a, _)| *a == s.gn.router) {
        bail!(
            "the router address {} is not on {}: `ip addr add {}/{} dev {}` (the GN's DNS and DHCP go there)",
            s.gn.router,
            lan.name,
            s.gn.router,
            s.gn.vip_prefix_len,
            lan.name
        );
    }
    let Some(&(wan_ip, _)) = wan.ipv4.first() else {
        bail!(
            "interface {} has no IPv4 address: give the uplink one (DHCP or static) first",
            wan.name
        );
    };
    Ok(Nics { lan, wan, wan_ip })
}

/// The buffers the daemon reads into.
struct Buffers {
    wan: Vec<u8>,
    lan: Vec<u8>,
    slow: Vec<u8>,
    upstream: Vec<u8>,
    dns_sink: Vec<u8>,
    dhcp_sink: Vec<u8>,
}

impl Buffers {
    fn new(s: &Settings) -> Buffers {
        Buffers {
            wan: vec![0u8; MAX_DATAGRAM],
            lan: vec![0u8; MAX_FRAME_LEN.max(2048)],
            slow: vec![0u8; MAX_FRAME_LEN.max(s.datapath.frame_size as usize)],
            upstream: vec![0u8; MAX_DATAGRAM],
            dns_sink: vec![0u8; MAX_DATAGRAM],
            dhcp_sink: vec![0u8; MAX_DATAGRAM],
        }
    }
}

/// The daemon's periodic work: when it is due next.
struct Timers {
    activity: Instant,
    link: Instant,
    stats: Option<Instant>,
    /// The uplink's default gateway as last read.
    gateway: Option<Ipv4Addr>,
}

/// The datapath's slow queue, as the runtime watches it.
struct SlowQueue {
    waker: SlowWaker,
    /// A second descriptor of the waker's eventfd, for tokio's readiness.
    ready: UdpSocket,
}

/// What woke the daemon up.
enum Wake {
    /// A datagram on the tunnel socket: (length, source).
    Wan(std::io::Result<(usize, SocketAddr)>),
    /// A frame on the GN-facing raw socket.
    Lan(std::io::Result<usize>),
    /// The datapath queued slow frames.
    Slow(std::io::Result<()>),
    /// An answer on the socket of an upstream query: (its port, length).
    Upstream(u16, std::io::Result<usize>),
    /// A DNS TCP connection from the GN.
    TcpAccept(std::io::Result<(TcpStream, SocketAddr)>),
    /// A DNS TCP task reported.
    Tcp(TcpEvent),
    /// A datagram on a socket that is only read.
    Sunk,
    /// `ntma status` connected.
    Status(std::io::Result<tokio::net::UnixStream>),
    /// A timer is due.
    Timer,
    /// A metrics scrape connected.
    Metrics(std::io::Result<TcpStream>),
    /// SIGHUP.
    Hup,
    /// systemd's watchdog is due a ping.
    Watchdog,
    /// SIGINT or SIGTERM.
    Stop,
}

/// The running adapter: [`Daemon::open`] sets everything up, [`Daemon::run`] serves
/// until SIGINT or SIGTERM and shuts down.
pub struct Daemon {
    s: Settings,
    started: Instant,
    /// The control side; it owns the datapath.
    ctl: Control,
    io: Sockets,
    sinks: Sinks,
    dns_tcp: DnsTcp,
    status: UnixListener,
    _status_file: SocketFile,
    ops: ops::Ops,
    /// `non_vip = "nat"`: removed when dropped.
    nat: Option<NatGuard>,
    slow: SlowQueue,
    sigint: Signal,
    sigterm: Signal,
    timers: Timers,
    bufs: Buffers,
}

impl Daemon {
    /// Checks the NICs, binds every socket, installs the NAT table if asked, starts
    /// the datapath and the control side, then drops the capabilities not needed any
    /// more. Nothing is left attached when it fails.
    pub async fn open(mut s: Settings, config: Option<PathBuf>) -> Result<Daemon> {
        let started = Instant::now();
        let nics = check_nics(&mut s)?;
        let (io, sinks, dns_tcp, wan_for_raw) = open_sockets(&s, &nics).await?;
        let status = status_listener(&s.status_socket)?;
        let status_file = SocketFile(s.status_socket.clone());
        let net = Ipv4Addr::from(u32::from(s.gn.router) & u32::from(s.gn.netmask()));
        let nat = match s.non_vip {
            NonVip::Nat => Some(
                NatGuard::install(&s.name, &s.lan_if, &s.wan_if, net, s.gn.vip_prefix_len)
                    .map_err(|e| anyhow::anyhow!("non_vip = \"nat\": {e}"))?,
            ),
            NonVip::IcmpUnreachable => None,
        };
        let datapath = open_datapath(&s, net, &wan_for_raw)?;
        drop(wan_for_raw);
        if datapath.reads_tunnel_socket() {
            // The raw datapath's socket takes the fast-path frames: the control's raw
            // socket gets the rest, as with XDP.
            crate::rawpath::attach_slow_path_filter(&io.lan, &classify(&s, net))
                .context("filtering the GN-side raw socket")?;
        }
        tracing::info!(
            name = %s.name,
            gns = %s.gns.iter().map(|g| g.fqdn.as_str()).collect::<Vec<_>>().join(","),
            dcs = ?s.dcs,
            lan = %s.lan_if,
            wan = %format!("{}:{}", nics.wan_ip, s.port),
            mode = %datapath.mode(),
            workers = datapath.workers(),
            status = %s.status_socket.display(),
            "ntma started"
        );
        let slow = SlowQueue::of(datapath.as_ref())?;
        let boot = Boot {
            lan_mac: nics.lan.mac,
            wan_mac: nics.wan.mac,
            wan_ip: nics.wan_ip,
            unix_nanos: unix_nanos()?,
            seed: random_seed()?,
        };
        let mut ctl = Control::new(&s, boot, datapath, started).map_err(|e| anyhow::anyhow!(e))?;
        ctl.keep_names(crate::control::names::path_for(&s.status_socket));
        #[cfg(debug_assertions)]
        crate::debug::serve(
            &s.status_socket,
            std::sync::Arc::clone(ctl.datapath().state()),
        )?;
        let ops = ops::Ops::new(&s, config).await?;
        let daemon = Daemon {
            sigint: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            sigterm: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            timers: Timers {
                activity: started,
                link: started,
                stats: ops.stats_every().map(|d| started + d),
                gateway: None,
            },
            bufs: Buffers::new(&s),
            s,
            started,
            ctl,
            io,
            sinks,
            dns_tcp,
            status,
            _status_file: status_file,
            ops,
            nat,
            slow,
        };
        // Set up: keep only what is still needed (the workers, AF_XDP or raw,
        // dropped all of theirs).
        match crate::privs::drop_to(crate::privs::KEEP) {
            Ok(kept) => tracing::info!(kept = %kept.join(" "), "capabilities dropped"),
            Err(e) => tracing::warn!(error = %e, "cannot drop capabilities"),
        }
        Ok(daemon)
    }

    /// Serves until SIGINT or SIGTERM (or a fatal error), then deregisters, removes
    /// every tunnel and stops the datapath (detaching XDP); the NAT table and the
    /// status socket go too.
    pub async fn run(mut self) -> Result<()> {
        ntm_ops::notify::ready(&format!(
            "serving {} GN(s) on {}",
            self.s.gns.len(),
            self.s.lan_if
        ));
        self.ctl.start(self.started, &self.io);
        let result = loop {
            let wake = self.next_wake().await;
            match self.handle(wake).await {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        ntm_ops::notify::stopping();
        let now = Instant::now();
        tracing::info!("shutting down: deregistering and detaching XDP");
        self.ctl.close(now, &self.io);
        log_stats(&self.status(now));
        self.ctl.datapath_mut().stop();
        drop(self.nat.take());
        result
    }

    /// Waits for the next input, timer or signal.
    async fn next_wake(&mut self) -> Wake {
        let wake_at = [
            self.ctl.next_deadline(),
            Some(self.timers.activity),
            Some(self.timers.link),
            self.timers.stats,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + ACTIVITY_EVERY);
        let wan = self.io.wan();
        let reads_wan = !self.ctl.datapath().reads_tunnel_socket();
        let b = &mut self.bufs;
        tokio::select! {
            r = wan.recv_from(&mut b.wan), if reads_wan => Wake::Wan(r),
            r = self.io.lan.recv(&mut b.lan) => Wake::Lan(r),
            r = self.slow.ready.readable() => Wake::Slow(r),
            (port, r) = recv_upstream(&self.io.upstream, &mut b.upstream) => Wake::Upstream(port, r),
            r = self.dns_tcp.listener.accept() => Wake::TcpAccept(r),
            Some(ev) = self.dns_tcp.events.recv() => Wake::Tcp(ev),
            // The raw socket has these frames already; reading only empties the buffers.
            _ = self.sinks.dns.recv_from(&mut b.dns_sink) => Wake::Sunk,
            _ = self.sinks.dhcp.recv_from(&mut b.dhcp_sink) => Wake::Sunk,
            r = self.status.accept() => Wake::Status(r.map(|(stream, _)| stream)),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at)) => Wake::Timer,
            r = ntm_ops::metrics::accept(&self.ops.metrics) => Wake::Metrics(r),
            _ = self.ops.hup.recv() => Wake::Hup,
            () = ntm_ops::notify::tick(&mut self.ops.watchdog) => Wake::Watchdog,
            _ = self.sigint.recv() => Wake::Stop,
            _ = self.sigterm.recv() => Wake::Stop,
        }
    }

    /// Handles one wake-up; false: stop.
    async fn handle(&mut self, wake: Wake) -> Result<bool> {
        let now = Instant::now();
        let io = &self.io;
        match wake {
            Wake::Wan(Ok((n, from))) => {
                self.ctl
                    .on_wan_datagram(now, from, &mut self.bufs.wan[..n], io);
            }
            // ICMP errors of earlier sends surface here (ECONNREFUSED): not fatal.
            Wake::Wan(Err(e)) => tracing::debug!(error = %e, "tunnel socket receive error"),
            Wake::Lan(r) => {
                let n = r.context("reading the GN-facing raw socket failed")?;
                self.ctl.on_lan_frame(now, &self.bufs.lan[..n], io);
            }
            Wake::Slow(r) => {
                r.context("waiting on the slow queue")?;
                self.drain_slow(now);
            }
            Wake::Upstream(port, Ok(n)) => {
                let answer = &self.bufs.upstream[..n];
                self.ctl.on_upstream(now, Transport::Udp, port, answer, io);
            }
            // An ICMP error of the resolver (ECONNREFUSED): the query times out.
            Wake::Upstream(port, Err(e)) => {
                tracing::debug!(port, error = %e, "upstream receive error")
            }
            Wake::TcpAccept(Ok((stream, from))) => {
                self.dns_tcp.accept(&mut self.ctl, io, stream, from)
            }
            Wake::TcpAccept(Err(e)) => tracing::debug!(error = %e, "DNS TCP accept error"),
            Wake::Tcp(ev) => on_tcp_event(&mut self.ctl, io, ev),
            Wake::Sunk => {}
            Wake::Status(Ok(stream)) => self.answer_status(stream),
            Wake::Status(Err(e)) => tracing::debug!(error = %e, "status socket accept error"),
            Wake::Timer => self.on_timers().await,
            Wake::Metrics(Ok(stream)) => {
                let st = self.fresh_status();
                self.ops.scrape(stream, &st, &self.ctl);
            }
            Wake::Metrics(Err(e)) => tracing::debug!(error = %e, "metrics accept error"),
            Wake::Hup => {
                if self.ops.reload(&mut self.ctl, &self.io) {
                    self.timers.stats = self.ops.stats_every().map(|d| Instant::now() + d);
                }
            }
            Wake::Watchdog => ntm_ops::notify::ping(),
            Wake::Stop => return Ok(false),
        }
        Ok(true)
    }

    /// Takes every frame the datapath queued for the control.
    fn drain_slow(&mut self, now: Instant) {
        // Reset the eventfd; readiness is cleared when it reads empty.
        let waker = &self.slow.waker;
        let _ = self.slow.ready.try_io(Interest::READABLE, || {
            let mut b = [0u8; 8];
            nix::unistd::read(waker, &mut b).map_err(std::io::Error::from)
        });
        while let Some(f) = self.ctl.datapath().pop_slow(&mut self.bufs.slow) {
            if f.truncated {
                self.ctl.on_slow_truncated();
            } else {
                let frame = &mut self.bufs.slow[..f.len];
                self.ctl.on_slow_frame(now, f.side, frame, &self.io);
            }
        }
    }

    /// The timers that are due: the protocol's, the datapath's activity, the
    /// uplink's address and next hop, the statistics line.
    async fn on_timers(&mut self) {
        let now = Instant::now();
        self.ctl.on_timeout(now, &self.io);
        if now >= self.timers.activity {
            self.ctl.poll_activity(now, &self.io);
            self.timers.activity = now + ACTIVITY_EVERY;
        }
        if now >= self.timers.link {
            follow_wan_address(&self.s, self.ctl.datapath(), &self.io).await;
            self.poll_link(now);
            self.timers.link = now + LINK_EVERY;
        }
        if let (Some(at), Some(every)) = (self.timers.stats, self.ops.stats_every()) {
            if now >= at {
                log_stats(&self.status(now));
                self.timers.stats = Some(now + every);
            }
        }
    }

    /// The uplink's address (roaming) and the next hop's MAC, which the kernel
    /// learns once the first signaling datagram went out through it.
    fn poll_link(&mut self, now: Instant) {
        let s = &self.s;
        if let Ok(wan) = sys::interface(&s.wan_if) {
            if let Some(&(ip, _)) = wan.ipv4.first() {
                self.ctl.set_wan_ip(now, ip, &self.io);
            }
        }
        let gw = sys::default_gateway(&s.wan_if);
        let changed = gw != self.timers.gateway;
        if changed {
            match gw {
                Some(g) => tracing::info!(gateway = %g, wan = %s.wan_if, "uplink default gateway"),
                None => {
                    tracing::warn!(wan = %s.wan_if, "no default route through the uplink: tunnels cannot carry data (add one)")
                }
            }
            self.timers.gateway = gw;
        }
        match gw.map(|g| sys::neighbour(g, &s.wan_if)) {
            Some(Some(mac)) => self.ctl.set_gateway_mac(Some(mac)),
            // The kernel's entry may lapse while only the fast path talks to the
            // gateway: keep the MAC learned for the same gateway.
            Some(None) if !changed => {}
            _ => self.ctl.set_gateway_mac(None),
        }
    }

    /// `ntma status`: one status document, then the connection closes.
    fn answer_status(&mut self, mut stream: tokio::net::UnixStream) {
        let body = serde_json::to_vec(&self.fresh_status()).unwrap_or_default();
        tokio::spawn(async move {
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }

    /// The status with fresh per-tunnel counters and the reload counters.
    fn fresh_status(&mut self) -> Status {
        let now = Instant::now();
        self.ctl.poll_activity(now, &self.io);
        let mut st = self.status(now);
        self.ops.annotate(&mut st);
        st
    }

    fn status(&self, now: Instant) -> Status {
        let s = &self.s;
        Status {
            name: s.name.clone(),
            pid: std::process::id(),
            uptime_secs: now.saturating_duration_since(self.started).as_secs_f64(),
            gns: self.ctl.gn_status(now),
            datapath: DatapathStatus::of(self.ctl.datapath(), s, self.ctl.link()),
            tunnels: self.ctl.tunnel_status(now),
            slow_path: self.ctl.slow_path_status(),
            capabilities: crate::privs::effective(),
        }
    }
}

impl SlowQueue {
    fn of(datapath: &dyn Datapath) -> Result<SlowQueue> {
        let waker = datapath.slow_waker();
        let ready = std::os::fd::AsFd::as_fd(&waker)
            .try_clone_to_owned()
            .and_then(readiness)
            .context("cannot watch the fast path's slow queue")?;
        Ok(SlowQueue { waker, ready })
    }
}

/// Binds the tunnel socket to the uplink's new address when it changed (the old
/// address is gone, and with it everything the old socket could send or receive),
/// before the control re-registers from there.
async fn follow_wan_address(s: &Settings, datapath: &dyn Datapath, io: &Sockets) {
    let Ok(wan) = sys::interface(&s.wan_if) else {
        return;
    };
    let Some(&(ip, _)) = wan.ipv4.first() else {
        return;
    };
    let bound = match io.wan().local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => Ipv4Addr::UNSPECIFIED,
    };
    if bound == ip {
        return;
    }
    let sock = tunnel_socket(&s.wan_if, ip, s.port).and_then(|std| {
        datapath.replace_tunnel_socket(&std)?;
        tokio_udp(std)
    });
    match sock {
        Ok(sock) => {
            if let Err(e) = sock.writable().await {
                tracing::warn!(error = %e, "new tunnel socket not writable");
            }
            tracing::info!(old = %bound, new = %ip, port = s.port, "tunnel socket bound to the uplink's new address");
            *io.wan.borrow_mut() = Rc::new(sock);
        }
        Err(e) => {
            tracing::warn!(%ip, port = s.port, error = %e, "cannot bind the tunnel socket to the uplink's new address; trying again");
        }
    }
}

fn log_stats(st: &Status) {
    let drops: Vec<String> = st
        .drops()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::info!(
        target: "ntma::stats",
        registered = st.gns.iter().filter(|g| g.registration.registered).count(),
        gns = st.gns.len(),
        tunnels = st.tunnels.len(),
        lan_redirect = st.xdp("lan_redirect"),
        wan_redirect = st.xdp("wan_redirect"),
        drops = %if drops.is_empty() { "none".to_owned() } else { drops.join(" ") },
        "stats"
    );
}
