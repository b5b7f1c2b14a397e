//! The tokio driver of a UDP server (the DC, the RS): one socket, a
//! sans-IO state machine ([`Machine`]) polled for what to send and when to
//! wake, its status socket and metrics endpoint answered from one snapshot,
//! systemd's readiness and watchdog, and the signals: SIGUSR1 logs a
//! statistics line, SIGHUP reloads (servers that can), SIGTERM and SIGINT
//! stop. The signals are shared with `ntm-node` ([`Signals`]).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Interval;

use crate::metrics::Scrape;

/// What the driver adds to the state machine's own statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriverStats {
    /// Seconds since start.
    pub uptime_secs: f64,
    /// Datagrams the socket refused.
    pub send_errors: u64,
    /// SIGHUP reloads applied.
    pub reloads: u64,
    /// SIGHUP reloads refused (nothing changed).
    pub reloads_refused: u64,
}

/// A server's sans-IO state machine, as [`serve`] drives it.
pub trait Machine {
    /// The status snapshot: served as JSON, and the metrics' source.
    type Status: Serialize;
    /// Whether SIGHUP reloads the configuration ([`Machine::reload`]);
    /// without, SIGHUP keeps its default action.
    const RELOADS: bool = false;

    /// The next datagram to send, written at the front of `buf`: its
    /// length and destination.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(usize, SocketAddrV4)>;
    /// A datagram from `from`; `Some(to)` forwards it unchanged to `to`.
    fn handle(&mut self, now: Instant, from: SocketAddrV4, datagram: &[u8])
        -> Option<SocketAddrV4>;
    /// The end of a burst of datagrams (at most [`BURST`], each given to
    /// [`Machine::handle`]): make durable what they changed, before
    /// [`Machine::poll_transmit`] gives out their answers. One commit per
    /// burst is what lets a server on a durable store answer more than
    /// one datagram per fsync (group commit).
    fn commit(&mut self) {}
    /// When [`Machine::handle_timeout`] is next due.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Timers that are due.
    fn handle_timeout(&mut self, now: Instant);
    /// One line of statistics for the log.
    fn stats_line(&self) -> String;
    /// How often to log it (`None`: only on SIGUSR1).
    fn stats_interval(&self) -> Option<Duration>;
    /// The systemd status line while serving.
    fn ready_status(&self) -> String;
    /// A snapshot of the state, with the driver's statistics.
    fn status(&self, driver: DriverStats) -> Self::Status;
    /// The metrics of a snapshot.
    fn metrics(&self, status: &Self::Status) -> Scrape;
    /// SIGHUP: reads the configuration again and applies it; says what
    /// changed. An error leaves the machine unchanged.
    fn reload(&mut self) -> Result<String> {
        Ok(String::new())
    }
}

/// The [`Machine`] methods that a driver's wrapper passes on to the
/// sans-IO state machine in its field `$m` unchanged: `poll_transmit`
/// (whose `Transmit` has `len` and `dst`), `poll_timeout`,
/// `handle_timeout`, `stats_line`, and `stats_interval` from its
/// `settings()`. Use it inside `impl Machine for ...`.
#[macro_export]
macro_rules! delegate_to_machine {
    ($m:tt) => {
        fn poll_transmit(
            &mut self,
            now: ::std::time::Instant,
            buf: &mut [u8],
        ) -> Option<(usize, ::std::net::SocketAddrV4)> {
            self.$m.poll_transmit(now, buf).map(|t| (t.len, t.dst))
        }

        fn poll_timeout(&self) -> Option<::std::time::Instant> {
            self.$m.poll_timeout()
        }

        fn handle_timeout(&mut self, now: ::std::time::Instant) {
            self.$m.handle_timeout(now);
        }

        fn stats_line(&self) -> String {
            self.$m.stats_line()
        }

        fn stats_interval(&self) -> Option<::std::time::Duration> {
            self.$m.settings().stats_interval
        }
    };
}

/// What a server listens on.
#[derive(Debug)]
pub struct Endpoints {
    /// The UDP socket of the protocol.
    pub socket: UdpSocket,
    status: UnixListener,
    _status_file: crate::unix::SocketFile,
    metrics: Option<TcpListener>,
}

impl Endpoints {
    /// Binds `daemon`'s UDP socket on `listen`, its status socket (mode
    /// 0660; the file goes when this is dropped) and, if set, its metrics
    /// endpoint.
    pub async fn bind(
        daemon: &str,
        listen: SocketAddrV4,
        status: &Path,
        metrics: Option<SocketAddr>,
    ) -> Result<Endpoints> {
        let socket = UdpSocket::bind(listen).await.with_context(|| {
            format!(
                "cannot listen on {listen}: is another {daemon} running there, or is the address not on this host?"
            )
        })?;
        grow_recv_buffer(&socket);
        let listener = UnixListener::from_std(crate::unix::bind(status, "status_socket")?)
            .context("status socket")?;
        Ok(Endpoints {
            socket,
            status: listener,
            _status_file: crate::unix::SocketFile(status.to_owned()),
            metrics: bind_metrics(metrics).await?,
        })
    }
}

/// The receive buffer a server's UDP socket asks for. Datagrams that
/// arrive while the server is busy wait there: a commit of the DC's store
/// (an fsync, some milliseconds) or its once-a-second sweep, at tens of
/// thousands of datagrams a second, would overflow the kernel's default
/// (about 200 KiB, a few hundred small datagrams). The kernel grants at most
/// `net.core.rmem_max` (docs/deploy.md, "Capacity of one DC").
pub const RECV_BUFFER: usize = 2 << 20;

/// Asks for [`RECV_BUFFER`]; says at debug level if the kernel granted less.
fn grow_recv_buffer(socket: &UdpSocket) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt::RcvBuf};
    if let Err(e) = setsockopt(socket, RcvBuf, &RECV_BUFFER) {
        tracing::debug!(error = %e, "cannot set the UDP receive buffer");
    }
    // Linux reports twice what it grants (its bookkeeping included).
    if let Ok(got) = getsockopt(socket, RcvBuf) {
        if got / 2 < RECV_BUFFER {
            tracing::debug!(
                granted = got / 2,
                asked = RECV_BUFFER,
                "UDP receive buffer capped by net.core.rmem_max"
            );
        }
    }
}

/// Binds the metrics endpoint if `listen` is set.
pub async fn bind_metrics(listen: Option<SocketAddr>) -> Result<Option<TcpListener>> {
    match listen {
        Some(addr) => Ok(Some(crate::metrics::bind(addr).await?)),
        None => Ok(None),
    }
}

/// A signal a daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM or SIGINT: stop.
    Stop,
    /// SIGUSR1: log statistics (and write a status file).
    Stats,
    /// SIGHUP: reload the configuration.
    Reload,
}

/// The signals a daemon watches: SIGTERM, SIGINT, SIGUSR1 and, for daemons
/// that reload, SIGHUP.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
    hup: Option<Signal>,
}

impl Signals {
    /// Installs the handlers (SIGHUP's only if `reload`).
    pub fn new(reload: bool) -> Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            usr1: install(SignalKind::user_defined1(), "SIGUSR1")?,
            hup: reload
                .then(|| install(SignalKind::hangup(), "SIGHUP"))
                .transpose()?,
        })
    }

    /// The next signal: a `select!` arm.
    pub async fn next(&mut self) -> Sig {
        let Signals {
            term,
            int,
            usr1,
            hup,
        } = self;
        let hup = async {
            match hup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => Sig::Stop,
            _ = int.recv() => Sig::Stop,
            _ = usr1.recv() => Sig::Stats,
            _ = hup => Sig::Reload,
        }
    }
}

/// Nanoseconds since the Unix epoch (the protocol's replay timestamps seed).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sleeps until `deadline` (forever without one): a `select!` arm.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// The statistics timer: a tick every `every`, the first after one period.
pub fn stats_timer(every: Option<Duration>) -> Option<Interval> {
    every.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d))
}

/// Most datagrams read in one burst before [`Machine::commit`]: bounds
/// how long the first of a burst waits for its answer behind the others
/// (256 signaling datagrams are 1–3 ms of the DC's work) while letting one
/// commit serve everything that arrived during the last one.
pub const BURST: usize = 256;

/// What one wake of the driver found.
enum Event {
    Datagram(std::io::Result<(usize, SocketAddr)>),
    Timeout,
    Stats,
    Status(std::io::Result<tokio::net::UnixStream>),
    Metrics(std::io::Result<tokio::net::TcpStream>),
    Watchdog,
    Signal(Sig),
}

/// The driver of one server: its machine, endpoints and statistics.
struct Driver<M> {
    m: M,
    ends: Endpoints,
    stats: DriverStats,
    started: Instant,
    stats_timer: Option<Interval>,
}

/// Serves `m` on `ends` until SIGTERM or SIGINT; `rx_len` and `tx_len` size
/// the receive and send buffers.
pub async fn serve<M: Machine>(m: M, ends: Endpoints, rx_len: usize, tx_len: usize) -> Result<()> {
    let mut signals = Signals::new(M::RELOADS)?;
    let mut watchdog = crate::notify::watchdog_timer();
    crate::notify::ready(&m.ready_status());
    let mut d = Driver {
        stats_timer: stats_timer(m.stats_interval()),
        m,
        ends,
        stats: DriverStats::default(),
        started: Instant::now(),
    };
    let mut rx = vec![0u8; rx_len];
    let mut tx = vec![0u8; tx_len];
    loop {
        d.send_pending(&mut tx).await;
        let deadline = d.m.poll_timeout();
        let event = tokio::select! {
            r = d.ends.socket.recv_from(&mut rx) => Event::Datagram(r),
            () = sleep_until(deadline) => Event::Timeout,
            () = crate::notify::tick(&mut d.stats_timer) => Event::Stats,
            r = d.ends.status.accept() => Event::Status(r.map(|(s, _)| s)),
            r = crate::metrics::accept(&d.ends.metrics) => Event::Metrics(r),
            () = crate::notify::tick(&mut watchdog) => Event::Watchdog,
            s = signals.next() => Event::Signal(s),
        };
        if let Event::Datagram(r) = event {
            d.burst(r, &mut rx).await;
            continue;
        }
        if !d.on(event).await {
            break;
        }
    }
    crate::notify::stopping();
    let send_errors = d.stats.send_errors;
    tracing::info!(send_errors, "stopping; stats: {}", d.m.stats_line());
    Ok(())
}

impl<M: Machine> Driver<M> {
    /// Sends what the machine has to send.
    async fn send_pending(&mut self, tx: &mut [u8]) {
        while let Some((len, dst)) = self.m.poll_transmit(Instant::now(), tx) {
            self.send(&tx[..len], dst, "send failed").await;
        }
    }

    async fn send(&mut self, datagram: &[u8], dst: SocketAddrV4, what: &str) {
        if let Err(e) = self.ends.socket.send_to(datagram, dst).await {
            self.stats.send_errors += 1;
            tracing::debug!(dst = %dst, error = %e, "{what}");
        }
    }

    /// The datagram that woke the driver, then whatever else the socket
    /// holds (up to [`BURST`] in all, without waiting), then one commit;
    /// the answers go out at the top of the loop.
    async fn burst(&mut self, first: std::io::Result<(usize, SocketAddr)>, rx: &mut [u8]) {
        self.on_datagram(first, rx).await;
        for _ in 1..BURST {
            match self.ends.socket.try_recv_from(rx) {
                Ok(r) => self.on_datagram(Ok(r), rx).await,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.on_datagram(Err(e), rx).await;
                    break;
                }
            }
        }
        self.m.commit();
    }

    /// Acts on one event other than a datagram; false to stop.
    async fn on(&mut self, event: Event) -> bool {
        match event {
            // Taken by `burst`.
            Event::Datagram(_) => {}
            Event::Timeout => self.m.handle_timeout(Instant::now()),
            Event::Stats | Event::Signal(Sig::Stats) => self.log_stats(),
            Event::Status(r) => match r {
                Ok(stream) => self.answer_status(stream),
                Err(e) => tracing::debug!(error = %e, "status socket accept error"),
            },
            Event::Metrics(r) => match r {
                Ok(stream) => {
                    let st = self.m.status(self.snapshot());
                    crate::metrics::respond(stream, self.m.metrics(&st));
                }
                Err(e) => tracing::debug!(error = %e, "metrics accept error"),
            },
            Event::Watchdog => crate::notify::ping(),
            Event::Signal(Sig::Reload) => self.reload(),
            Event::Signal(Sig::Stop) => return false,
        }
        true
    }

    async fn on_datagram(&mut self, r: std::io::Result<(usize, SocketAddr)>, rx: &[u8]) {
        match r {
            Ok((n, SocketAddr::V4(from))) => {
                if let Some(to) = self.m.handle(Instant::now(), from, &rx[..n]) {
                    self.send(&rx[..n], to, "forward failed").await;
                }
            }
            // The socket is IPv4; nothing else arrives.
            Ok((_, SocketAddr::V6(_))) => {}
            Err(e) => tracing::warn!(error = %e, "receive failed"),
        }
    }

    fn snapshot(&self) -> DriverStats {
        DriverStats {
            uptime_secs: self.started.elapsed().as_secs_f64(),
            ..self.stats
        }
    }

    fn log_stats(&self) {
        let send_errors = self.stats.send_errors;
        tracing::info!(send_errors, "stats: {}", self.m.stats_line());
    }

    /// One JSON document on the connection, written by a task of its own.
    fn answer_status(&self, mut stream: tokio::net::UnixStream) {
        let body = serde_json::to_vec(&self.m.status(self.snapshot())).unwrap_or_default();
        tokio::spawn(async move {
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }

    fn reload(&mut self) {
        crate::notify::reloading();
        match self.m.reload() {
            Ok(what) => {
                self.stats.reloads += 1;
                self.stats_timer = stats_timer(self.m.stats_interval());
                tracing::info!("configuration reloaded: {what}");
            }
            Err(e) => {
                self.stats.reloads_refused += 1;
                tracing::error!("reload refused, running on unchanged: {e:#}");
            }
        }
        crate::notify::ready(&self.m.ready_status());
    }
}
