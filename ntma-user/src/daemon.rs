//! `ntma run`: the adapter daemon.
//!
//! The main thread is the slow-path/control thread: a tokio current-thread
//! runtime pumping [`Control`] between
//!
//! * the tunnel socket (UDP on the uplink's NTM port): DC signaling and
//!   TUN_REQ/TUN_RESP, which the XDP program passes to the kernel;
//! * a raw AF_PACKET socket on the GN-facing NIC: ARP, DHCP, DNS and
//!   everything else the XDP program passes, and the slow path's frames to
//!   the GN;
//! * the fast path's slow queue (its eventfd): packets to VIPs without a tunnel;
//! * the upstream resolver socket;
//! * UDP sockets on the router address's port 53 and the NIC's port 67, only
//!   so the kernel never answers the GN's DNS and DHCP with ICMP port
//!   unreachable (the raw socket already has the frames);
//! * the status socket, for `ntma status`;
//! * timers: the protocol's, the fast path's activity (every 250 ms), the
//!   uplink's address and next hop (every 250 ms), a statistics log line.
//!
//! The fast path ([`Datapath`]) runs its own pinned worker threads. SIGINT
//! or SIGTERM deregisters (DEREG), removes every tunnel and detaches the XDP
//! programs; the NAT table (`non_vip = "nat"`) and the status socket go too.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UdpSocket, UnixListener};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Attach, Bind, DatapathKind, NonVip, Settings};
use crate::control::nat::NatGuard;
use crate::control::packet::{readiness, PacketSocket};
use crate::control::{sys, Boot, Control, Io};
use crate::ebpf::{Counters, EbpfError};
use crate::fastpath::{
    AttachMode, BindMode, Datapath, DatapathConfig, Dataplane, SlowWaker, UmemConfig,
};
use crate::gn::MAX_FRAME_LEN;
use crate::rawpath::{Classify, RawConfig, RawPath};
use crate::status::{DatapathStatus, Status, WorkerStatus};
use ntma_common::XdpConfig;

/// How often the fast path's per-tunnel counters are read.
pub const ACTIVITY_EVERY: Duration = Duration::from_millis(250);
/// How often the uplink's address and next hop are read.
pub const LINK_EVERY: Duration = Duration::from_millis(250);
/// Largest datagram read from a UDP socket.
const MAX_DATAGRAM: usize = 65_535;

/// The sockets the control side sends on.
struct Sockets {
    wan: UdpSocket,
    lan: PacketSocket,
    upstream: UdpSocket,
}

impl Io for Sockets {
    fn send_wan(&self, dst: SocketAddrV4, datagram: &[u8]) -> bool {
        match self.wan.try_send_to(datagram, SocketAddr::V4(dst)) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%dst, error = %e, "tunnel socket send failed");
                false
            }
        }
    }

    fn send_lan(&self, frame: &[u8]) -> bool {
        match self.lan.try_send(frame) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "raw socket send failed");
                false
            }
        }
    }

    fn send_upstream(&self, query: &[u8]) -> bool {
        self.upstream.try_send(query).is_ok()
    }
}

/// The sockets that are only read.
struct Sinks {
    dns: UdpSocket,
    dhcp: UdpSocket,
}

fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(seed)
}

fn unix_nanos() -> Result<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .context("the system clock is before 1970: set the time")
}

/// A UDP socket on `port` of every address, bound to `ifname` only.
fn udp_on_device(ifname: &str, port: u16) -> std::io::Result<StdUdpSocket> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    let addr = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(StdUdpSocket::from(fd))
}

fn tokio_udp(s: StdUdpSocket) -> std::io::Result<UdpSocket> {
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Binds the status socket, replacing a file left by a daemon that died.
fn status_listener(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} for the status socket", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another ntma answers on {}: stop it, or give this one another name",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| {
        format!(
            "cannot bind the status socket {} (set status_socket)",
            path.display()
        )
    })
}

/// Removes the status socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn datapath_config(s: &Settings, net: Ipv4Addr) -> DatapathConfig {
    let d = &s.datapath;
    let xdp = XdpConfig::new(
        u32::from(net),
        s.gn.vip_prefix_len,
        u32::from(s.gn.router),
        s.port,
    );
    let mut cfg = DatapathConfig::new(&s.lan_if, &s.wan_if, xdp);
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
    cfg.attach = match d.attach {
        Attach::Native => AttachMode::Native,
        Attach::Generic => AttachMode::Generic,
    };
    cfg.bind = match d.bind {
        Bind::Auto => BindMode::Auto,
        Bind::Copy => BindMode::Copy,
        Bind::ZeroCopy => BindMode::ZeroCopy,
    };
    cfg
}

/// The datapath the daemon runs (`datapath.kind`): AF_XDP workers, or the raw-socket
/// fallback. Both share the [`Dataplane`] type the control side drives.
enum Engine {
    AfXdp(Datapath),
    Raw(RawPath),
}

impl Engine {
    /// Starts the configured datapath. The raw one reads the tunnel socket `wan` itself
    /// (signaling reaches the control through the slow queue).
    fn start(s: &Settings, net: Ipv4Addr, wan: &StdUdpSocket) -> Result<Engine> {
        Ok(match s.datapath.kind {
            DatapathKind::AfXdp => Engine::AfXdp(
                Datapath::start(datapath_config(s, net)).context("starting the fast path")?,
            ),
            DatapathKind::Raw => Engine::Raw(
                RawPath::start(RawConfig {
                    lan_if: s.lan_if.clone(),
                    wan: wan.try_clone().context("duplicating the tunnel socket")?,
                    classify: classify(s, net),
                    core: s.datapath.cores.first().copied(),
                    batch: s.datapath.batch as usize,
                    busy_poll: s.datapath.busy_poll,
                    slow_slots: 256,
                })
                .context("starting the raw datapath")?,
            ),
        })
    }

    fn dataplane(&self) -> Arc<Dataplane> {
        match self {
            Engine::AfXdp(d) => d.dataplane(),
            Engine::Raw(r) => r.dataplane(),
        }
    }

    /// `copy` / `zero-copy` (AF_XDP) or `raw`.
    fn mode(&self) -> String {
        match self {
            Engine::AfXdp(d) => d.mode().to_string(),
            Engine::Raw(_) => "raw".into(),
        }
    }

    fn workers(&self) -> usize {
        match self {
            Engine::AfXdp(d) => d.workers(),
            Engine::Raw(r) => r.workers(),
        }
    }

    /// The XDP programs' verdicts (none without XDP).
    fn xdp_counters(&self) -> Result<Counters, EbpfError> {
        match self {
            Engine::AfXdp(d) => d.xdp_counters(),
            Engine::Raw(_) => Ok(Counters::default()),
        }
    }

    /// Whether the control reads the tunnel socket (the raw worker does otherwise).
    fn control_reads_wan(&self) -> bool {
        matches!(self, Engine::AfXdp(_))
    }

    fn stop(self) {
        match self {
            Engine::AfXdp(d) => d.stop(),
            Engine::Raw(r) => r.stop(),
        }
    }
}

/// What the raw datapath takes from the GN: the XDP program's classification.
fn classify(s: &Settings, net: Ipv4Addr) -> Classify {
    Classify {
        vip_net: net,
        vip_prefix_len: s.gn.vip_prefix_len,
        router: s.gn.router,
    }
}

/// Runs the adapter until SIGINT or SIGTERM.
pub fn run(s: Settings) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(run_async(s))
}

async fn run_async(s: Settings) -> Result<()> {
    let started = Instant::now();
    let lan = sys::interface(&s.lan_if).context("lan.interface")?;
    let wan = sys::interface(&s.wan_if).context("wan.interface")?;
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

    // Sockets first: a port in use fails before anything is attached.
    let wan_std = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, s.port)).with_context(|| {
        format!(
            "cannot bind UDP port {}: is another adapter or node running? (set wan.port)",
            s.port
        )
    })?;
    // The raw datapath reads the tunnel socket through a descriptor of its own.
    let wan_for_raw = wan_std
        .try_clone()
        .context("duplicating the tunnel socket")?;
    let wan_sock = tokio_udp(wan_std).context("tunnel socket")?;
    let dns = UdpSocket::bind((s.gn.router, 53)).await.with_context(|| {
        format!(
            "cannot bind {}:53: is another DNS server running there?",
            s.gn.router
        )
    })?;
    let dhcp = udp_on_device(&s.lan_if, 67)
        .and_then(tokio_udp)
        .with_context(|| {
            format!(
                "cannot bind UDP port 67 on {}: is another DHCP server running there?",
                s.lan_if
            )
        })?;
    let upstream = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .context("cannot open the upstream resolver socket")?;
    upstream
        .connect(s.upstream)
        .await
        .with_context(|| format!("cannot reach the upstream resolver {}", s.upstream))?;
    let raw = PacketSocket::open(&lan).with_context(|| {
        format!(
            "cannot open a raw socket on {} (needs root / CAP_NET_RAW)",
            lan.name
        )
    })?;
    // tokio's try_send* fail until the reactor has seen a socket writable once.
    wan_sock.writable().await.context("tunnel socket")?;
    upstream.writable().await.context("upstream socket")?;
    let listener = status_listener(&s.status_socket)?;
    let _socket_file = SocketFile(s.status_socket.clone());
    let io = Sockets {
        wan: wan_sock,
        lan: raw,
        upstream,
    };
    let sinks = Sinks { dns, dhcp };

    let net = Ipv4Addr::from(u32::from(s.gn.router) & u32::from(s.gn.netmask()));
    let nat = match s.non_vip {
        NonVip::Nat => Some(
            NatGuard::install(&s.name, &s.lan_if, &s.wan_if, net, s.gn.vip_prefix_len)
                .map_err(|e| anyhow::anyhow!("non_vip = \"nat\": {e}"))?,
        ),
        NonVip::IcmpUnreachable => None,
    };

    let datapath = Engine::start(&s, net, &wan_for_raw)?;
    drop(wan_for_raw);
    if !datapath.control_reads_wan() {
        // The raw datapath's socket takes the fast-path frames: the control's raw
        // socket gets the rest, as with XDP.
        crate::rawpath::attach_slow_path_filter(&io.lan, &classify(&s, net))
            .context("filtering the GN-side raw socket")?;
    }
    tracing::info!(
        name = %s.name,
        fqdn = %s.fqdn,
        dc = %s.dc,
        lan = %s.lan_if,
        wan = %format!("{}:{}", wan_ip, s.port),
        mode = %datapath.mode(),
        workers = datapath.workers(),
        status = %s.status_socket.display(),
        "ntma started"
    );
    let dataplane = datapath.dataplane();
    let boot = Boot {
        lan_mac: lan.mac,
        wan_mac: wan.mac,
        wan_ip,
        unix_nanos: unix_nanos()?,
        seed: random_seed()?,
    };
    let mut ctl =
        Control::new(&s, boot, Arc::clone(&dataplane), started).map_err(|e| anyhow::anyhow!(e))?;
    let result = drive(
        &s, &datapath, &dataplane, &mut ctl, &io, &sinks, listener, started,
    )
    .await;

    let now = Instant::now();
    tracing::info!("shutting down: deregistering and detaching XDP");
    ctl.close(now, &io);
    log_stats(&status(&s, &datapath, &dataplane, &ctl, started, now));
    datapath.stop();
    drop(nat);
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    s: &Settings,
    datapath: &Engine,
    dataplane: &Arc<Dataplane>,
    ctl: &mut Control<Arc<Dataplane>>,
    io: &Sockets,
    sinks: &Sinks,
    listener: UnixListener,
    started: Instant,
) -> Result<()> {
    let waker: SlowWaker = dataplane.slow_waker();
    // A second descriptor of the same eventfd, for tokio's readiness.
    let slow_ready = std::os::fd::AsFd::as_fd(&waker)
        .try_clone_to_owned()
        .and_then(readiness)
        .context("cannot watch the fast path's slow queue")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;

    let mut wan_buf = vec![0u8; MAX_DATAGRAM];
    let mut lan_buf = vec![0u8; MAX_FRAME_LEN.max(2048)];
    let mut slow_buf = vec![0u8; MAX_FRAME_LEN.max(s.datapath.frame_size as usize)];
    let mut up_buf = vec![0u8; MAX_DATAGRAM];
    let mut dns_sink = vec![0u8; MAX_DATAGRAM];
    let mut dhcp_sink = vec![0u8; MAX_DATAGRAM];
    let mut next_activity = started;
    let mut next_link = started;
    let mut next_stats = s.stats_interval.map(|d| started + d);
    let mut gateway: Option<Ipv4Addr> = None;

    ctl.start(started, io);
    loop {
        let now = Instant::now();
        let wake = [
            ctl.next_deadline(),
            Some(next_activity),
            Some(next_link),
            next_stats,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + ACTIVITY_EVERY);
        tokio::select! {
            r = io.wan.recv_from(&mut wan_buf), if datapath.control_reads_wan() => match r {
                Ok((n, from)) => ctl.on_wan_datagram(Instant::now(), from, &wan_buf[..n], io),
                // ICMP errors of earlier sends surface here (ECONNREFUSED): not fatal.
                Err(e) => tracing::debug!(error = %e, "tunnel socket receive error"),
            },
            r = io.lan.recv(&mut lan_buf) => match r {
                Ok(n) => ctl.on_lan_frame(Instant::now(), &lan_buf[..n], io),
                Err(e) => return Err(e).context("reading the GN-facing raw socket failed"),
            },
            r = slow_ready.readable() => {
                r.context("waiting on the slow queue")?;
                // Reset the eventfd; readiness is cleared when it reads empty.
                let _ = slow_ready.try_io(Interest::READABLE, || {
                    let mut b = [0u8; 8];
                    nix::unistd::read(&waker, &mut b).map_err(std::io::Error::from)
                });
                let now = Instant::now();
                while let Some(f) = dataplane.pop_slow(&mut slow_buf) {
                    if f.truncated {
                        ctl.on_slow_truncated();
                    } else {
                        ctl.on_slow_frame(now, f.side, &slow_buf[..f.len], io);
                    }
                }
            },
            r = io.upstream.recv(&mut up_buf) => match r {
                Ok(n) => ctl.on_upstream(Instant::now(), &up_buf[..n], io),
                Err(e) => tracing::debug!(error = %e, "upstream receive error"),
            },
            // The raw socket has these frames already; reading only empties the buffers.
            _ = sinks.dns.recv_from(&mut dns_sink) => {},
            _ = sinks.dhcp.recv_from(&mut dhcp_sink) => {},
            r = listener.accept() => match r {
                Ok((mut stream, _)) => {
                    // Fresh per-tunnel counters for the answer.
                    let now = Instant::now();
                    ctl.poll_activity(now, io);
                    let st = status(s, datapath, dataplane, ctl, started, now);
                    let body = serde_json::to_vec(&st).unwrap_or_default();
                    tokio::spawn(async move {
                        let _ = stream.write_all(&body).await;
                        let _ = stream.shutdown().await;
                    });
                }
                Err(e) => tracing::debug!(error = %e, "status socket accept error"),
            },
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let now = Instant::now();
                ctl.on_timeout(now, io);
                if now >= next_activity {
                    ctl.poll_activity(now, io);
                    next_activity = now + ACTIVITY_EVERY;
                }
                if now >= next_link {
                    poll_link(s, ctl, &mut gateway, now, io);
                    next_link = now + LINK_EVERY;
                }
                if let (Some(at), Some(every)) = (next_stats, s.stats_interval) {
                    if now >= at {
                        log_stats(&status(s, datapath, dataplane, ctl, started, now));
                        next_stats = Some(now + every);
                    }
                }
            },
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}

/// The uplink's address (roaming) and the next hop's MAC, which the kernel
/// learns once the first signaling datagram went out through it.
fn poll_link(
    s: &Settings,
    ctl: &mut Control<Arc<Dataplane>>,
    gateway: &mut Option<Ipv4Addr>,
    now: Instant,
    io: &Sockets,
) {
    if let Ok(wan) = sys::interface(&s.wan_if) {
        if let Some(&(ip, _)) = wan.ipv4.first() {
            ctl.set_wan_ip(now, ip, io);
        }
    }
    let gw = sys::default_gateway(&s.wan_if);
    let changed = gw != *gateway;
    if changed {
        match gw {
            Some(g) => tracing::info!(gateway = %g, wan = %s.wan_if, "uplink default gateway"),
            None => {
                tracing::warn!(wan = %s.wan_if, "no default route through the uplink: tunnels cannot carry data (add one)")
            }
        }
        *gateway = gw;
    }
    match gw.map(|g| sys::neighbour(g, &s.wan_if)) {
        Some(Some(mac)) => ctl.set_gateway_mac(Some(mac)),
        // The kernel's entry may lapse while only the fast path talks to the
        // gateway: keep the MAC learned for the same gateway.
        Some(None) if !changed => {}
        _ => ctl.set_gateway_mac(None),
    }
}

fn status(
    s: &Settings,
    datapath: &Engine,
    dataplane: &Dataplane,
    ctl: &Control<Arc<Dataplane>>,
    started: Instant,
    now: Instant,
) -> Status {
    let xdp = match datapath.xdp_counters() {
        Ok(c) => c.iter().map(|(v, n)| (v.name().to_owned(), n)).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the XDP counters");
            Default::default()
        }
    };
    let workers = dataplane
        .worker_stats()
        .into_iter()
        .map(|w| {
            let counters = [
                ("lan_rx", w.lan_rx),
                ("wan_rx", w.wan_rx),
                ("lan_tx", w.lan_tx),
                ("wan_tx", w.wan_tx),
                ("batches", w.batches),
                ("slow", w.slow),
                ("keepalives", w.keepalives),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            WorkerStatus {
                queue: w.queue as u32,
                core: w.core,
                counters,
                drops: w.drops().map(|(r, n)| (r.name().to_owned(), n)).collect(),
            }
        })
        .collect();
    let link = ctl.link();
    Status {
        name: s.name.clone(),
        pid: std::process::id(),
        uptime_secs: now.saturating_duration_since(started).as_secs_f64(),
        registration: ctl.registration_status(),
        gn: ctl.gn_status(now),
        datapath: DatapathStatus {
            mode: datapath.mode(),
            lan_if: s.lan_if.clone(),
            wan_if: s.wan_if.clone(),
            queues: s.datapath.queues,
            link_ready: link.is_some(),
            gateway_mac: link.map(|l| l.gateway_mac.to_string()),
            workers,
            xdp,
        },
        tunnels: ctl.tunnel_status(now),
        slow_path: ctl.slow_path_status(),
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
        registered = st.registration.registered,
        tunnels = st.tunnels.len(),
        lan_redirect = st.xdp("lan_redirect"),
        wan_redirect = st.xdp("wan_redirect"),
        drops = %if drops.is_empty() { "none".to_owned() } else { drops.join(" ") },
        "stats"
    );
}
