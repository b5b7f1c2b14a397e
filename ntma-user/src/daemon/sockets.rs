//! The daemon's sockets: the tunnel socket, the GN-facing raw socket, the
//! upstream queries (one socket or TCP connection each), DNS over TCP at the
//! router address and its tasks, the sockets that are only read, and the
//! status socket file. [`Sockets`] is the control side's [`Io`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use anyhow::{Context as _, Result};
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket, UnixListener};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::Nics;
use crate::config::Settings;
use crate::control::{Control, Io};
use crate::gn::{ConnId, Transport};
use crate::os::packet::PacketSocket;

/// Largest datagram read from a UDP socket.
pub(super) const MAX_DATAGRAM: usize = 65_535;
/// Answers queued on one of the GN's DNS TCP connections before the client
/// counts as not reading them (the connection is closed).
pub(super) const TCP_WRITE_QUEUE: usize = 64;
/// Reports of the TCP tasks waiting for the control thread (a full queue
/// holds the tasks back: they stop reading).
pub(super) const TCP_EVENTS: usize = 256;
/// One read from a GN's DNS TCP connection.
pub(super) const TCP_READ: usize = 16 * 1024;

/// What the DNS TCP tasks tell the control thread.
#[derive(Debug)]
pub(super) enum TcpEvent {
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
pub(super) struct Sockets {
    /// Replaced when the uplink's address changes ([`follow_wan_address`]).
    pub(super) wan: RefCell<Rc<UdpSocket>>,
    pub(super) lan: PacketSocket,
    /// The upstream resolver of new queries (`dns.upstream`, changed by a
    /// reload; a query in flight stays with the resolver it went to).
    pub(super) resolver: Cell<SocketAddrV4>,
    /// One socket per query in flight to the resolver, by local port.
    pub(super) upstream: RefCell<HashMap<u16, UdpSocket>>,
    /// One task per TCP query in flight to the resolver, by local port.
    pub(super) upstream_tcp: RefCell<HashMap<u16, AbortHandle>>,
    /// The GN's DNS TCP connections: the queue of answers each task writes.
    pub(super) tcp: RefCell<HashMap<ConnId, mpsc::Sender<Vec<u8>>>>,
    /// Where the TCP tasks report.
    pub(super) events: mpsc::Sender<TcpEvent>,
}

impl Sockets {
    pub(super) fn wan(&self) -> Rc<UdpSocket> {
        Rc::clone(&self.wan.borrow())
    }
}

/// A socket for one upstream query: bound to port 0 (the kernel draws a random
/// ephemeral port), connected to the resolver (the kernel delivers nothing from
/// anywhere else), the query sent.
pub(super) fn upstream_socket(
    resolver: SocketAddrV4,
    query: &[u8],
) -> std::io::Result<(u16, UdpSocket)> {
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
pub(super) fn check_upstream(resolver: SocketAddrV4) -> Result<()> {
    StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|u| u.connect(resolver))
        .with_context(|| format!("cannot reach the upstream resolver {resolver}"))
}

/// `message` with its 2-byte length prefix (RFC 1035 §4.2.2); at most 65535
/// bytes (the stub's queries and answers are).
pub(super) fn framed(message: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(2 + message.len());
    f.extend_from_slice(&(message.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// A TCP connection for one upstream query: bound to port 0 first (the
/// kernel draws the port that names the query), then connected to the
/// resolver by a task that writes the query, reads one answer and reports it
/// ([`TcpEvent::Upstream`]). A failure is only logged: the query times out.
pub(super) fn upstream_tcp(
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
pub(super) async fn gn_connection(
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
pub(super) fn recv_upstream<'a>(
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
pub(super) struct DnsTcp {
    pub(super) listener: TcpListener,
    pub(super) events: mpsc::Receiver<TcpEvent>,
    /// The next connection's number.
    pub(super) next_conn: ConnId,
}

impl DnsTcp {
    /// A connection the listener accepted: the control takes it (a task
    /// serves it) or refuses it (closed at once).
    pub(super) fn accept(
        &mut self,
        ctl: &mut Control,
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

pub(super) fn on_tcp_event(ctl: &mut Control, io: &Sockets, ev: TcpEvent) {
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
pub(super) struct Sinks {
    pub(super) dns: UdpSocket,
    pub(super) dhcp: UdpSocket,
}

/// `IP_MTU_DISCOVER` (ip(7)), which nix does not name: `IP_PMTUDISC_DO` sets DF on
/// every datagram of the socket and refuses to fragment one locally.
#[derive(Clone, Copy, Debug)]
pub(super) struct IpMtuDiscover;
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
pub(super) fn tunnel_socket(
    wan_if: &str,
    ip: Ipv4Addr,
    port: u16,
) -> std::io::Result<StdUdpSocket> {
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
pub(super) fn udp_on_device(ifname: &str, port: u16) -> std::io::Result<StdUdpSocket> {
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

pub(super) fn tokio_udp(s: StdUdpSocket) -> std::io::Result<UdpSocket> {
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Binds the status socket, replacing a file left by a daemon that died.
pub(super) fn status_listener(path: &Path) -> Result<UnixListener> {
    // Mode 0660 whatever the umask; a stale file is replaced.
    UnixListener::from_std(ntm_ops::unix::bind(path, "status_socket")?)
        .context("cannot watch the status socket")
}

/// Removes the status socket file when dropped.
pub(super) struct SocketFile(pub(super) PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The sockets the daemon binds before anything is attached (a port in use fails
/// first), and a descriptor of the tunnel socket for the raw datapath.
pub(super) async fn open_sockets(
    s: &Settings,
    nics: &Nics,
) -> Result<(Sockets, Sinks, DnsTcp, StdUdpSocket)> {
    let wan_std = tunnel_socket(&s.wan_if, nics.wan_ip, s.port).with_context(|| {
        format!(
            "cannot bind UDP {}:{} on {}: is another adapter or node running? (set wan.port)",
            nics.wan_ip, s.port, s.wan_if
        )
    })?;
    let wan_for_raw = wan_std
        .try_clone()
        .context("duplicating the tunnel socket")?;
    let wan_sock = tokio_udp(wan_std).context("tunnel socket")?;
    let in_use = |what: &str| format!("cannot bind {what}: is another DNS server running there?");
    let dns = UdpSocket::bind((s.gn.router, 53))
        .await
        .with_context(|| in_use(&format!("{}:53", s.gn.router)))?;
    let dhcp = udp_on_device(&s.lan_if, 67)
        .and_then(tokio_udp)
        .with_context(|| {
            format!(
                "cannot bind UDP port 67 on {}: is another DHCP server running there?",
                s.lan_if
            )
        })?;
    let listener = TcpListener::bind((s.gn.router, 53))
        .await
        .with_context(|| in_use(&format!("TCP {}:53", s.gn.router)))?;
    check_upstream(s.upstream)?;
    let lan = PacketSocket::open(&nics.lan).with_context(|| {
        format!(
            "cannot open a raw socket on {} (needs root / CAP_NET_RAW)",
            nics.lan.name
        )
    })?;
    // tokio's try_send* fail until the reactor has seen a socket writable once.
    wan_sock.writable().await.context("tunnel socket")?;
    let (events_tx, events) = mpsc::channel(TCP_EVENTS);
    let io = Sockets {
        wan: RefCell::new(Rc::new(wan_sock)),
        lan,
        resolver: Cell::new(s.upstream),
        upstream: RefCell::new(HashMap::new()),
        upstream_tcp: RefCell::new(HashMap::new()),
        tcp: RefCell::new(HashMap::new()),
        events: events_tx,
    };
    let dns_tcp = DnsTcp {
        listener,
        events,
        next_conn: 1,
    };
    Ok((io, Sinks { dns, dhcp }, dns_tcp, wan_for_raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
