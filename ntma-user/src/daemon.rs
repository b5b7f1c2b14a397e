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
//! * the fast path's slow queue (its eventfd): packets to VIPs without a tunnel;
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
//! * the status socket, for `ntma status`;
//! * timers: the protocol's, the fast path's activity (every 250 ms), the
//!   uplink's address and next hop (every 250 ms), a statistics log line.
//!
//! The fast path ([`Datapath`]) runs its own pinned worker threads. SIGINT
//! or SIGTERM deregisters (DEREG), removes every tunnel and detaches the XDP
//! programs; the NAT table (`non_vip = "nat"`) and the status socket go too.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::config::{Attach, Bind, DatapathKind, NonVip, Settings};
use crate::control::nat::NatGuard;
use crate::control::packet::{readiness, PacketSocket};
use crate::control::{sys, Boot, Control, Io};
use crate::ebpf::{Counters, EbpfError};
use crate::fastpath::{
    AttachMode, BindMode, Datapath, DatapathConfig, Dataplane, SlowWaker, UmemConfig,
};
use crate::gn::{ConnId, Transport, MAX_FRAME_LEN};
use crate::rawpath::{Classify, RawConfig, RawPath};
use crate::status::{DatapathStatus, Status, WorkerStatus};
use ntma_common::XdpConfig;

/// How often the fast path's per-tunnel counters are read.
pub const ACTIVITY_EVERY: Duration = Duration::from_millis(250);
/// How often the uplink's address and next hop are read.
pub const LINK_EVERY: Duration = Duration::from_millis(250);
/// Largest datagram read from a UDP socket.
const MAX_DATAGRAM: usize = 65_535;
/// Answers queued on one of the GN's DNS TCP connections before the client
/// counts as not reading them (the connection is closed).
const TCP_WRITE_QUEUE: usize = 64;
/// Reports of the TCP tasks waiting for the control thread (a full queue
/// holds the tasks back: they stop reading).
const TCP_EVENTS: usize = 256;
/// One read from a GN's DNS TCP connection.
const TCP_READ: usize = 16 * 1024;

/// What the DNS TCP tasks tell the control thread.
#[derive(Debug)]
enum TcpEvent {
    /// Bytes from the GN on connection `conn`.
    Data(ConnId, Vec<u8>),
    /// The GN closed its side of the connection.
    Eof(ConnId),
    /// The connection failed (reset, read or write error); its task ended.
    Failed(ConnId),
    /// The answer (without its length prefix) on the upstream TCP
    /// connection from local port `.0`.
    Upstream(u16, Vec<u8>),
}

/// The sockets the control side sends on.
struct Sockets {
    /// Replaced when the uplink's address changes ([`follow_wan_address`]).
    wan: RefCell<Rc<UdpSocket>>,
    lan: PacketSocket,
    /// The upstream resolver of new queries (`dns.upstream`, changed by a
    /// reload; a query in flight stays with the resolver it went to).
    resolver: Cell<SocketAddrV4>,
    /// One socket per query in flight to the resolver, by local port.
    upstream: RefCell<HashMap<u16, UdpSocket>>,
    /// One task per TCP query in flight to the resolver, by local port.
    upstream_tcp: RefCell<HashMap<u16, AbortHandle>>,
    /// The GN's DNS TCP connections: the queue of answers each task writes.
    tcp: RefCell<HashMap<ConnId, mpsc::Sender<Vec<u8>>>>,
    /// Where the TCP tasks report.
    events: mpsc::Sender<TcpEvent>,
}

impl Sockets {
    fn wan(&self) -> Rc<UdpSocket> {
        Rc::clone(&self.wan.borrow())
    }
}

/// A socket for one upstream query: bound to port 0 (the kernel draws a random
/// ephemeral port), connected to the resolver (the kernel delivers nothing from
/// anywhere else), the query sent.
fn upstream_socket(resolver: SocketAddrV4, query: &[u8]) -> std::io::Result<(u16, UdpSocket)> {
    let s = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_nonblocking(true)?;
    s.connect(resolver)?;
    s.send(query)?;
    let port = s.local_addr()?.port();
    Ok((port, UdpSocket::from_std(s)?))
}

/// Whether there is a route to the upstream resolver `resolver` (at start,
/// and before a reload points new queries at it). Each forwarded query gets
/// a socket of its own; this one only checks the route.
fn check_upstream(resolver: SocketAddrV4) -> Result<()> {
    StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|u| u.connect(resolver))
        .with_context(|| format!("cannot reach the upstream resolver {resolver}"))
}

/// `message` with its 2-byte length prefix (RFC 1035 §4.2.2); at most 65535
/// bytes (the stub's queries and answers are).
fn framed(message: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(2 + message.len());
    f.extend_from_slice(&(message.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// A TCP connection for one upstream query: bound to port 0 first (the
/// kernel draws the port that names the query), then connected to the
/// resolver by a task that writes the query, reads one answer and reports it
/// ([`TcpEvent::Upstream`]). A failure is only logged: the query times out.
fn upstream_tcp(
    resolver: SocketAddrV4,
    query: &[u8],
    events: mpsc::Sender<TcpEvent>,
) -> std::io::Result<(u16, AbortHandle)> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    let port = sock.local_addr()?.port();
    let message = framed(query);
    let task = tokio::spawn(async move {
        let exchange = async {
            let mut s = sock.connect(SocketAddr::V4(resolver)).await?;
            s.set_nodelay(true)?;
            s.write_all(&message).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match exchange.await {
            Ok(answer) => {
                let _ = events.send(TcpEvent::Upstream(port, answer)).await;
            }
            Err(e) => tracing::debug!(%resolver, port, error = %e, "upstream TCP query failed"),
        }
    });
    Ok((port, task.abort_handle()))
}

/// The task of one of the GN's DNS TCP connections: reports what it reads,
/// writes the answers queued for it, and shuts the connection down once the
/// control drops its queue ([`Io::close_tcp`]).
async fn gn_connection(
    conn: ConnId,
    stream: TcpStream,
    mut answers: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<TcpEvent>,
) {
    // Each answer goes out as soon as it is written.
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; TCP_READ];
    let mut reading = true;
    loop {
        tokio::select! {
            r = rd.read(&mut buf), if reading => {
                let ev = match r {
                    Ok(0) => {
                        // The answers still pending go out before it closes.
                        reading = false;
                        TcpEvent::Eof(conn)
                    }
                    Ok(n) => TcpEvent::Data(conn, buf[..n].to_vec()),
                    Err(_) => TcpEvent::Failed(conn),
                };
                let failed = matches!(ev, TcpEvent::Failed(_));
                if events.send(ev).await.is_err() || failed {
                    return;
                }
            }
            m = answers.recv() => match m {
                Some(m) => {
                    if wr.write_all(&m).await.is_err() {
                        let _ = events.send(TcpEvent::Failed(conn)).await;
                        return;
                    }
                }
                None => {
                    let _ = wr.shutdown().await;
                    return;
                }
            },
        }
    }
}

/// The next datagram on any upstream query socket: (its local port, length).
fn recv_upstream<'a>(
    socks: &'a RefCell<HashMap<u16, UdpSocket>>,
    buf: &'a mut [u8],
) -> impl Future<Output = (u16, std::io::Result<usize>)> + 'a {
    std::future::poll_fn(move |cx| {
        for (port, sock) in socks.borrow().iter() {
            let mut rb = ReadBuf::new(buf);
            match sock.poll_recv(cx, &mut rb) {
                Poll::Ready(r) => return Poll::Ready((*port, r.map(|()| rb.filled().len()))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
}

impl Io for Sockets {
    fn send_wan(&self, dst: SocketAddrV4, datagram: &[u8]) -> bool {
        match self.wan().try_send_to(datagram, SocketAddr::V4(dst)) {
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

    fn send_upstream(&self, transport: Transport, query: &[u8]) -> Option<u16> {
        if transport == Transport::Tcp {
            let mut tasks = self.upstream_tcp.borrow_mut();
            if tasks.len() >= ntm_proto::dns::MAX_PENDING_LIMIT {
                tracing::debug!("too many upstream TCP queries in flight");
                return None;
            }
            return match upstream_tcp(self.resolver.get(), query, self.events.clone()) {
                Ok((port, task)) => {
                    tasks.insert(port, task);
                    Some(port)
                }
                Err(e) => {
                    tracing::debug!(resolver = %self.resolver.get(), error = %e, "upstream TCP query not sent");
                    None
                }
            };
        }
        let mut socks = self.upstream.borrow_mut();
        if socks.len() >= ntm_proto::dns::MAX_PENDING_LIMIT {
            tracing::debug!("too many upstream queries in flight");
            return None;
        }
        match upstream_socket(self.resolver.get(), query) {
            Ok((port, sock)) => {
                socks.insert(port, sock);
                Some(port)
            }
            Err(e) => {
                tracing::debug!(resolver = %self.resolver.get(), error = %e, "upstream query not sent");
                None
            }
        }
    }

    fn close_upstream(&self, transport: Transport, port: u16) {
        match transport {
            Transport::Udp => {
                self.upstream.borrow_mut().remove(&port);
            }
            Transport::Tcp => {
                if let Some(task) = self.upstream_tcp.borrow_mut().remove(&port) {
                    task.abort();
                }
            }
        }
    }

    fn send_tcp(&self, conn: ConnId, message: &[u8]) -> bool {
        self.tcp
            .borrow()
            .get(&conn)
            .is_some_and(|q| q.try_send(message.to_vec()).is_ok())
    }

    fn close_tcp(&self, conn: ConnId) {
        // Its task writes what is queued, then shuts the connection down.
        self.tcp.borrow_mut().remove(&conn);
    }
}

/// DNS over TCP at the router address: the listener, and the reports of the
/// connection and upstream tasks.
struct DnsTcp {
    listener: TcpListener,
    events: mpsc::Receiver<TcpEvent>,
    /// The next connection's number.
    next_conn: ConnId,
}

impl DnsTcp {
    /// A connection the listener accepted: the control takes it (a task
    /// serves it) or refuses it (closed at once).
    fn accept(
        &mut self,
        ctl: &mut Control<Arc<Dataplane>>,
        io: &Sockets,
        stream: TcpStream,
        from: SocketAddr,
    ) {
        let SocketAddr::V4(from) = from else {
            return;
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        if !ctl.on_tcp_accept(Instant::now(), conn, from, io) {
            tracing::debug!(%from, "DNS TCP connection refused");
            return;
        }
        let (tx, rx) = mpsc::channel(TCP_WRITE_QUEUE);
        io.tcp.borrow_mut().insert(conn, tx);
        tokio::spawn(gn_connection(conn, stream, rx, io.events.clone()));
    }
}

fn on_tcp_event(ctl: &mut Control<Arc<Dataplane>>, io: &Sockets, ev: TcpEvent) {
    let now = Instant::now();
    match ev {
        TcpEvent::Data(conn, bytes) => ctl.on_tcp_data(now, conn, &bytes, io),
        TcpEvent::Eof(conn) => ctl.on_tcp_eof(now, conn, io),
        TcpEvent::Failed(conn) => {
            io.tcp.borrow_mut().remove(&conn);
            ctl.on_tcp_closed(conn);
        }
        TcpEvent::Upstream(port, answer) => ctl.on_upstream(now, Transport::Tcp, port, &answer, io),
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

/// `IP_MTU_DISCOVER` (ip(7)), which nix does not name: `IP_PMTUDISC_DO` sets DF on
/// every datagram of the socket and refuses to fragment one locally.
#[derive(Clone, Copy, Debug)]
struct IpMtuDiscover;
nix::setsockopt_impl!(
    IpMtuDiscover,
    libc::IPPROTO_IP,
    libc::IP_MTU_DISCOVER,
    usize,
    nix::sys::socket::sockopt::SetUsize
);

/// The tunnel socket: UDP on the uplink's address and the NTM port, bound to the
/// uplink device too, so that neither the router address nor the uplink's address
/// reaches it from the GN side.
fn tunnel_socket(wan_if: &str, ip: Ipv4Addr, port: u16) -> std::io::Result<StdUdpSocket> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(wan_if),
    )?;
    // §5 "MTU": DF on every datagram, never fragmented here.
    setsockopt(&fd, IpMtuDiscover, &(libc::IP_PMTUDISC_DO as usize))?;
    let addr = SockaddrIn::from(SocketAddrV4::new(ip, port));
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(StdUdpSocket::from(fd))
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
    // Mode 0660 whatever the umask; a stale file is replaced.
    UnixListener::from_std(ntm_ops::unix::bind(path, "status_socket")?)
        .context("cannot watch the status socket")
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
    cfg.inner_mtu = s.inner_mtu();
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
                    inner_mtu: s.inner_mtu(),
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

    /// The name of worker `queue`'s thread (as fastpath/worker.rs and
    /// rawpath name them).
    fn worker_thread(&self, queue: usize) -> String {
        match self {
            Engine::AfXdp(_) => format!("ntma-fp{queue}"),
            Engine::Raw(_) => "ntma-raw".into(),
        }
    }

    fn workers(&self) -> usize {
        match self {
            Engine::AfXdp(d) => d.workers(),
            Engine::Raw(r) => r.workers(),
        }
    }

    /// The XDP programs' verdicts (none without XDP).
    /// The kernel's AF_XDP ring counters (none without AF_XDP).
    fn ring_stats(&self) -> Vec<crate::status::RingStatus> {
        let Engine::AfXdp(d) = self else {
            return Vec::new();
        };
        d.ring_stats()
            .into_iter()
            .map(|r| {
                let k = r.stats;
                crate::status::RingStatus {
                    queue: r.queue,
                    side: match r.side {
                        crate::ebpf::Side::Lan => "lan",
                        crate::ebpf::Side::Wan => "wan",
                    }
                    .to_owned(),
                    counters: [
                        ("rx_dropped", k.rx_dropped),
                        ("rx_invalid_descs", k.rx_invalid_descs),
                        ("tx_invalid_descs", k.tx_invalid_descs),
                        ("rx_ring_full", k.rx_ring_full),
                        ("rx_fill_ring_empty_descs", k.rx_fill_ring_empty_descs),
                        ("tx_ring_empty_descs", k.tx_ring_empty_descs),
                    ]
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v))
                    .collect(),
                }
            })
            .collect()
    }

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

mod ops;

/// Runs the adapter until SIGINT or SIGTERM; SIGHUP reads `config` again
/// and applies what may change without a restart ([`crate::reload`]).
pub fn run(s: Settings, config: Option<PathBuf>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(run_async(s, config))
}

async fn run_async(mut s: Settings, config: Option<PathBuf>) -> Result<()> {
    let started = Instant::now();
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

    // Sockets first: a port in use fails before anything is attached.
    let wan_std = tunnel_socket(&s.wan_if, wan_ip, s.port).with_context(|| {
        format!(
            "cannot bind UDP {wan_ip}:{} on {}: is another adapter or node running? (set wan.port)",
            s.port, s.wan_if
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
    let dns_tcp = TcpListener::bind((s.gn.router, 53))
        .await
        .with_context(|| {
            format!(
                "cannot bind TCP {}:53: is another DNS server running there?",
                s.gn.router
            )
        })?;
    check_upstream(s.upstream)?;
    let raw = PacketSocket::open(&lan).with_context(|| {
        format!(
            "cannot open a raw socket on {} (needs root / CAP_NET_RAW)",
            lan.name
        )
    })?;
    // tokio's try_send* fail until the reactor has seen a socket writable once.
    wan_sock.writable().await.context("tunnel socket")?;
    let listener = status_listener(&s.status_socket)?;
    let _socket_file = SocketFile(s.status_socket.clone());
    let (events_tx, events) = mpsc::channel(TCP_EVENTS);
    let io = Sockets {
        wan: RefCell::new(Rc::new(wan_sock)),
        lan: raw,
        resolver: Cell::new(s.upstream),
        upstream: RefCell::new(HashMap::new()),
        upstream_tcp: RefCell::new(HashMap::new()),
        tcp: RefCell::new(HashMap::new()),
        events: events_tx,
    };
    let dns_tcp = DnsTcp {
        listener: dns_tcp,
        events,
        next_conn: 1,
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
    let mut ops = ops::Ops::new(&s, config).await?;
    // Set up: keep only what is still needed (the workers, AF_XDP or raw,
    // dropped all of theirs).
    match crate::privs::drop_to(crate::privs::KEEP) {
        Ok(kept) => tracing::info!(kept = %kept.join(" "), "capabilities dropped"),
        Err(e) => tracing::warn!(error = %e, "cannot drop capabilities"),
    }
    ntm_ops::notify::ready(&format!("serving {} on {}", s.fqdn, s.lan_if));
    let result = drive(
        &s, &datapath, &dataplane, &mut ctl, &io, &sinks, listener, dns_tcp, started, &mut ops,
    )
    .await;
    ntm_ops::notify::stopping();

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
    mut dns_tcp: DnsTcp,
    started: Instant,
    ops: &mut ops::Ops,
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
    let mut next_stats = ops.stats_every().map(|d| started + d);
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
        let wan = io.wan();
        tokio::select! {
            r = wan.recv_from(&mut wan_buf), if datapath.control_reads_wan() => match r {
                Ok((n, from)) => ctl.on_wan_datagram(Instant::now(), from, &mut wan_buf[..n], io),
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
                        ctl.on_slow_frame(now, f.side, &mut slow_buf[..f.len], io);
                    }
                }
            },
            (port, r) = recv_upstream(&io.upstream, &mut up_buf) => match r {
                Ok(n) => ctl.on_upstream(Instant::now(), Transport::Udp, port, &up_buf[..n], io),
                // An ICMP error of the resolver (ECONNREFUSED): the query times out.
                Err(e) => tracing::debug!(port, error = %e, "upstream receive error"),
            },
            r = dns_tcp.listener.accept() => match r {
                Ok((stream, from)) => dns_tcp.accept(ctl, io, stream, from),
                Err(e) => tracing::debug!(error = %e, "DNS TCP accept error"),
            },
            Some(ev) = dns_tcp.events.recv() => on_tcp_event(ctl, io, ev),
            // The raw socket has these frames already; reading only empties the buffers.
            _ = sinks.dns.recv_from(&mut dns_sink) => {},
            _ = sinks.dhcp.recv_from(&mut dhcp_sink) => {},
            r = listener.accept() => match r {
                Ok((mut stream, _)) => {
                    // Fresh per-tunnel counters for the answer.
                    let now = Instant::now();
                    ctl.poll_activity(now, io);
                    let mut st = status(s, datapath, dataplane, ctl, started, now);
                    ops.annotate(&mut st);
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
                    follow_wan_address(s, datapath, io).await;
                    poll_link(s, ctl, &mut gateway, now, io);
                    next_link = now + LINK_EVERY;
                }
                if let (Some(at), Some(every)) = (next_stats, ops.stats_every()) {
                    if now >= at {
                        log_stats(&status(s, datapath, dataplane, ctl, started, now));
                        next_stats = Some(now + every);
                    }
                }
            },
            r = ntm_ops::metrics::accept(&ops.metrics) => match r {
                Ok(stream) => {
                    let now = Instant::now();
                    ctl.poll_activity(now, io);
                    let mut st = status(s, datapath, dataplane, ctl, started, now);
                    ops.annotate(&mut st);
                    ops.scrape(stream, &st, ctl);
                }
                Err(e) => tracing::debug!(error = %e, "metrics accept error"),
            },
            _ = ops.hup.recv() => {
                if ops.reload(ctl, io) {
                    next_stats = ops.stats_every().map(|d| Instant::now() + d);
                }
            },
            () = ntm_ops::notify::tick(&mut ops.watchdog) => ntm_ops::notify::ping(),
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}

/// Binds the tunnel socket to the uplink's new address when it changed (the old
/// address is gone, and with it everything the old socket could send or receive),
/// before the control re-registers from there.
async fn follow_wan_address(s: &Settings, datapath: &Engine, io: &Sockets) {
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
        if let Engine::Raw(raw) = datapath {
            raw.replace_wan(std.try_clone()?)
                .map_err(std::io::Error::other)?;
        }
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
                ("mss_clamped", w.mss_clamped),
                ("too_big", w.too_big),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            WorkerStatus {
                queue: w.queue as u32,
                core: w.core,
                counters,
                drops: w.drops().map(|(r, n)| (r.name().to_owned(), n)).collect(),
                capabilities: crate::privs::of_thread(&datapath.worker_thread(w.queue)),
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
            rings: datapath.ring_stats(),
        },
        tunnels: ctl.tunnel_status(now),
        slow_path: ctl.slow_path_status(),
        capabilities: crate::privs::effective(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug)]
    struct GetIpMtuDiscover;
    nix::getsockopt_impl!(
        GetIpMtuDiscover,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        usize,
        nix::sys::socket::sockopt::GetUsize
    );

    /// §5 "MTU": the tunnel socket (control signaling, held packets, fragments and
    /// the raw datapath's DATA) sends with DF and never fragments (needs root for
    /// SO_BINDTODEVICE, like the daemon).
    #[test]
    fn the_tunnel_socket_sets_df() {
        let s = tunnel_socket("lo", Ipv4Addr::LOCALHOST, 0).expect("tunnel socket on lo (root?)");
        let v = nix::sys::socket::getsockopt(&s, GetIpMtuDiscover).unwrap();
        assert_eq!(v, libc::IP_PMTUDISC_DO as usize);
    }

    /// Each upstream query gets a socket of its own on a kernel-drawn port,
    /// connected to the resolver: its answer comes back with that port, and a
    /// datagram from anywhere but the resolver never reaches it.
    #[test]
    fn upstream_queries_have_their_own_connected_sockets() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let resolver = StdUdpSocket::bind("127.0.0.1:0").unwrap();
            let SocketAddr::V4(resolver_addr) = resolver.local_addr().unwrap() else {
                panic!()
            };
            let socks = RefCell::new(HashMap::new());
            let mut ports = Vec::new();
            for q in [b"query one", b"query two"] {
                let (port, sock) = upstream_socket(resolver_addr, q).unwrap();
                socks.borrow_mut().insert(port, sock);
                ports.push(port);
            }
            assert_ne!(ports[0], ports[1]);
            let mut buf = [0u8; 64];
            let mut from_of = HashMap::new();
            for _ in 0..2 {
                let (n, from) = resolver.recv_from(&mut buf).unwrap();
                from_of.insert(buf[..n].to_vec(), from);
            }
            // A spoof from elsewhere to the second query's port: refused by the kernel.
            let spoofer = StdUdpSocket::bind("127.0.0.1:0").unwrap();
            let second = from_of[&b"query two"[..]];
            spoofer.send_to(b"spoofed", second).unwrap();
            resolver.send_to(b"answer two", second).unwrap();
            let mut rbuf = [0u8; 64];
            let (port, n) =
                tokio::time::timeout(Duration::from_secs(5), recv_upstream(&socks, &mut rbuf))
                    .await
                    .expect("an answer");
            assert_eq!(port, second.port());
            assert_eq!(port, ports[1]);
            assert_eq!(&rbuf[..n.unwrap()], b"answer two");
            // Nothing else is waiting (the spoof never arrived).
            let more =
                tokio::time::timeout(Duration::from_millis(100), recv_upstream(&socks, &mut rbuf))
                    .await;
            assert!(more.is_err(), "{more:?}");
        });
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A TCP query to the resolver: from its own connection, whose local
    /// port names it, length-prefixed both ways; the answer is reported
    /// with that port.
    #[test]
    fn upstream_tcp_queries_are_framed_and_reported_by_port() {
        rt().block_on(async {
            let resolver = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let SocketAddr::V4(addr) = resolver.local_addr().unwrap() else {
                panic!()
            };
            let (tx, mut rx) = mpsc::channel(4);
            let (port, _task) = upstream_tcp(addr, b"the query", tx).unwrap();
            let (mut s, from) = resolver.accept().await.unwrap();
            assert_eq!(from.port(), port);
            let mut q = [0u8; 11];
            s.read_exact(&mut q).await.unwrap();
            assert_eq!(&q, b"\x00\x09the query");
            s.write_all(b"\x00\x0aan answer!").await.unwrap();
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(TcpEvent::Upstream(p, a))) => {
                    assert_eq!((p, &a[..]), (port, &b"an answer!"[..]))
                }
                other => panic!("{other:?}"),
            }
        });
    }

    /// A GN connection's task: what it reads is reported, the answers
    /// queued are written, the client's FIN is reported and answers still
    /// go out after it; dropping the queue closes the connection.
    #[test]
    fn gn_connection_tasks_relay_both_ways_and_close_when_told() {
        rt().block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (server, _) = l.accept().await.unwrap();
            let (events_tx, mut events) = mpsc::channel(8);
            let (answers_tx, answers) = mpsc::channel(8);
            tokio::spawn(gn_connection(9, server, answers, events_tx));
            client.write_all(b"\x00\x02hi").await.unwrap();
            match next(&mut events).await {
                TcpEvent::Data(9, b) => assert_eq!(b, b"\x00\x02hi"),
                other => panic!("{other:?}"),
            }
            client.shutdown().await.unwrap();
            assert!(matches!(next(&mut events).await, TcpEvent::Eof(9)));
            answers_tx.try_send(b"\x00\x02ok".to_vec()).unwrap();
            drop(answers_tx);
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
                .await
                .expect("closed in time")
                .unwrap();
            assert_eq!(got, b"\x00\x02ok");
        });
    }

    async fn next(events: &mut mpsc::Receiver<TcpEvent>) -> TcpEvent {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .expect("open")
    }
}
