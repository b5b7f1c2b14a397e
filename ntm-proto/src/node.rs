//! The node side of NTMobile as a sans-IO state machine: everything a node
//! (a software node, or an adapter acting for its general node) does on its
//! one UDP port.
//!
//! [`Endpoint`] registers with the DC and keeps the registration alive,
//! resolves names through DIR_REQ, follows ROUTE_DIR in both roles, sets up
//! tunnels (TUN_REQ/TUN_RESP, RELAY_BIND), keeps them alive, expires them and
//! follows the peer when it roams, and directs a tunnel again when its DATA
//! goes unanswered (the liveness of `docs/architecture.md`: a restarted
//! peer or RS loses tunnels silently). It never reads the clock and does no I/O;
//! drive it like a quinn-proto connection:
//!
//! * push in: [`Endpoint::handle`] for every datagram received on the port,
//!   [`Endpoint::handle_timeout`] when [`Endpoint::poll_timeout`]'s deadline
//!   passes, and the calls that start things ([`Endpoint::connect`],
//!   [`Endpoint::handle_local_addr_change`], [`Endpoint::close`]);
//! * pull out, after each push: [`Endpoint::poll_transmit`] until `None`
//!   (send each datagram from the same socket), [`Endpoint::poll_event`]
//!   until `None`, then [`Endpoint::poll_timeout`] for the next wake-up.
//!
//! The data plane may stay outside: take the tunnel's direction keys, suite,
//! id, endpoint and shared sequence counter from [`Event::TunnelAdded`] (sent
//! as soon as the DC's ROUTE_DIR is accepted, before any tunnel message goes
//! out, so that a data plane knows the tunnel before the peer's first DATA
//! can arrive) and start sending at [`Event::TunnelUp`]; run
//! [`crate::data::decap`]/[`crate::data::encap_in_place`] on worker threads,
//! and report receive activity with [`Endpoint::note_rx`] (expiry, roaming)
//! and, optionally, send activity with [`Endpoint::note_tx`] (keep-alives are
//! then sent only when the tunnel is idle). Single-threaded users can instead
//! hand DATA and TUN_KEEPALIVE to [`Endpoint::handle`] and send with
//! [`Endpoint::send_data`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data::{self, Decapped, RxTunnel, SeqCounter};
use crate::replay::ReplayWindow;
use crate::retransmit::{Retransmit, RetransmitAction};
use crate::wire::{
    Caps, DirReq, Fqdn, Header, Message, MessageType, Packet, RegReq, RelayBind, Repr, RouteAck,
    TunReq, TunResp, Vip, HEADER_LEN, OVERHEAD, VERSION,
};
pub use crate::Transmit;
use crate::{
    Authenticator, Cipher, DirectionKeys, DropCounters, Error, Key, Path, Result, Role, Status,
    Suite, WrapLabel,
};

/// Idle tunnels send TUN_KEEPALIVE this often (§5).
pub const TUNNEL_KEEPALIVE: Duration = Duration::from_secs(20);
/// A tunnel end that received DATA and sent nothing since sends a
/// TUN_KEEPALIVE this much later, so that a one-way flow still hears from a
/// live peer every few seconds (the liveness of `docs/architecture.md`).
pub const DATA_ACK_AFTER: Duration = Duration::from_secs(2);
/// A tunnel end that has sent DATA and received nothing for this long asks
/// the DC for a new direction to the peer: the peer lost the tunnel
/// (restarted), or the path did (a restarted RS, a NAT that forgot the
/// mapping). Four [`DATA_ACK_AFTER`]s: a live peer's answer may
/// be lost three times before a tunnel is replaced needlessly.
pub const REDIRECT_AFTER: Duration = Duration::from_secs(8);
/// A responder drops a tunnel whose TUN_REQ has not come this long after its ROUTE_DIR.
/// Longer than the initiator's whole retransmission schedule (7.75 s).
pub const RESPONDER_SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed registration, try again this much later.
pub const REGISTER_RETRY: Duration = Duration::from_secs(10);
/// The DC drops a registration after 3 missed keep-alive intervals; the node
/// re-registers when it heard nothing from the DC for this many intervals
/// (a restarted DC does not know the node any more).
const MISSED_INTERVALS: u32 = 3;
/// Keep-alive interval used if the DC sends 0.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);
/// DCs an endpoint fails over between (the first one and its fallbacks).
pub const MAX_DCS: usize = 8;

/// How the endpoint is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The FQDN this endpoint registers (a valid FQDN, see [`Fqdn`]).
    pub fqdn: String,
    /// `K_node` of that FQDN.
    pub key: Key,
    /// The DC's address (port 7710 by default); further DCs to fail over
    /// to come from [`Endpoint::with_fallback_dcs`].
    pub dc: SocketAddrV4,
    /// Our own address:port as we see it (LOCAL_ADDR).
    pub local_addr: SocketAddrV4,
    /// What we are (CAPS).
    pub caps: Caps,
}

/// Identifies one [`Endpoint::connect`] call in [`Event::DirectionResolved`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReqId(pub u32);

/// Why registration failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// No REG_RESP after 5 tries: check that the DC runs and is reachable.
    #[error("the DC did not answer 5 registration requests")]
    TimedOut,
    /// The DC refused (DENIED: wrong key or unknown FQDN; EXHAUSTED: VIP pool full).
    #[error("the DC refused the registration: {0:?}")]
    Status(Status),
}

/// Why a direction request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirError {
    /// The DC answered with this status (NOT_FOUND for an unknown name).
    #[error("the DC answered {0:?}")]
    Status(Status),
    /// No ROUTE_DIR after 5 tries.
    #[error("the DC did not answer 5 direction requests")]
    TimedOut,
    /// The DC chose a suite or role this implementation does not support.
    #[error("the DC chose an unsupported suite")]
    UnsupportedSuite,
    /// The endpoint was closed.
    #[error("the endpoint was closed")]
    Closed,
}

/// Why a tunnel went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Nothing received for the tunnel's lifetime.
    Expired,
    /// Set-up did not complete (no TUN_RESP after 5 tries, or no TUN_REQ in time).
    SetupTimedOut,
    /// The responder answered TUN_RESP with this status.
    Refused(Status),
    /// The peer sent ERROR with this status.
    PeerError(Status),
    /// A new ROUTE_DIR for the same peer replaced it.
    Replaced,
    /// Our VIP changed on re-registration.
    VipChanged,
    /// [`Endpoint::close`].
    Closed,
}

/// What the endpoint tells its driver.
#[derive(Debug, Clone)]
pub enum Event {
    /// A REG_RESP granted (or renewed) the registration.
    Registered {
        /// Our VIP.
        vip: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
        /// Our node id.
        node_id: u32,
        /// The address:port the DC saw.
        observed: SocketAddrV4,
        /// Whether `observed` differs from our LOCAL_ADDR.
        behind_nat: bool,
    },
    /// Registration failed; the endpoint tries again after [`REGISTER_RETRY`].
    RegistrationFailed {
        /// Why.
        reason: RegistrationError,
    },
    /// The answer to [`Endpoint::connect`].
    DirectionResolved {
        /// The request.
        req: ReqId,
        /// The name asked for.
        fqdn: String,
        /// The peer's VIP, or why not.
        result: core::result::Result<Ipv4Addr, DirError>,
    },
    /// The DC directed a tunnel and its keys are known: a data plane
    /// installs it now, so that it accepts the peer's DATA (which may follow
    /// the peer's TUN_RESP, or our own, closer than this endpoint's driver
    /// can react), and sends on it from [`Event::TunnelUp`] on.
    TunnelAdded(TunnelParams),
    /// A tunnel is up (TUN_RESP sent or received): DATA may flow both ways.
    TunnelUp(TunnelParams),
    /// A tunnel is gone.
    TunnelDown {
        /// Tunnel id.
        tunnel_id: u32,
        /// Why.
        reason: DownReason,
    },
    /// The current DC did not answer (REG_REQ retransmissions used up, or
    /// its keep-alives unanswered for 3 intervals): the endpoint registers
    /// with the next configured DC. Tunnels keep running: the DC is not on
    /// the data path, and a DC sharing the first one's store gives the same
    /// VIP again.
    DcChanged {
        /// The DC given up.
        from: SocketAddrV4,
        /// The DC registered with next.
        to: SocketAddrV4,
    },
    /// The peer of a DIRECT or REVERSE tunnel moved; send there from now on.
    EndpointChanged {
        /// Tunnel id.
        tunnel_id: u32,
        /// The new address.
        endpoint: SocketAddrV4,
    },
}

/// Everything a data plane needs to run one tunnel.
#[derive(Debug, Clone)]
pub struct TunnelParams {
    /// Tunnel id (the header id of its datagrams).
    pub tunnel_id: u32,
    /// The peer's FQDN.
    pub peer_fqdn: String,
    /// The peer's VIP.
    pub peer_vip: Ipv4Addr,
    /// Where to send the tunnel's datagrams.
    pub endpoint: SocketAddrV4,
    /// How the tunnel runs.
    pub path: Path,
    /// Our role.
    pub role: Role,
    /// The tunnel's suite (from the DC's ROUTE_DIR).
    pub suite: Suite,
    /// Our send direction key (`K_i2r` as initiator, `K_r2i` as responder).
    pub tx_key: Key,
    /// Our receive direction key (the other one).
    pub rx_key: Key,
    /// Our send counter for `tx_key`, shared with the endpoint (TUN_REQ or
    /// TUN_RESP, keep-alives): one sequence per key (§2).
    pub tx_seq: SeqCounter,
    /// Our VIP (the only inner destination to accept).
    pub local_vip: Ipv4Addr,
}

impl core::fmt::Display for TunnelParams {
    /// One line for logs: id, peer, path, role, suite and endpoint (no keys).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "#{} {} ({}) {} {} {} via {}",
            self.tunnel_id,
            self.peer_fqdn,
            self.peer_vip,
            self.path.name(),
            self.role.name(),
            self.suite.name(),
            self.endpoint
        )
    }
}

/// What [`Endpoint::handle`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received<'a> {
    /// Signaling, consumed.
    Signaling,
    /// An authenticated inner packet for our VIP: deliver it.
    Data {
        /// The tunnel it came through.
        tunnel_id: u32,
        /// The inner IPv4 packet.
        inner: &'a [u8],
    },
    /// An authenticated tunnel keep-alive.
    Keepalive {
        /// The tunnel.
        tunnel_id: u32,
    },
}

/// The registration currently held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// Our node id.
    pub node_id: u32,
    /// Our VIP.
    pub vip: Vip,
    /// The address:port the DC saw.
    pub observed: SocketAddrV4,
    /// Whether we are behind NAT.
    pub behind_nat: bool,
    keepalive: Duration,
    lifetime: Duration,
    granted_at: Instant,
    last_heard: Instant,
    next_keepalive: Instant,
}

impl Registration {
    fn renew_at(&self) -> Instant {
        // Re-register when three quarters of the lifetime are gone.
        self.granted_at + self.lifetime * 3 / 4
    }

    fn silent_deadline(&self) -> Instant {
        self.last_heard + self.keepalive * MISSED_INTERVALS + self.keepalive / 2
    }
}

/// A snapshot of one tunnel.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    /// What the tunnel is (as [`Event::TunnelAdded`] gave it, with the
    /// current endpoint).
    pub params: TunnelParams,
    /// Whether set-up completed.
    pub up: bool,
}

#[derive(Debug, Clone, Copy)]
enum TunState {
    /// Initiator: TUN_REQ (after RELAY_BIND on RELAY) outstanding.
    Initiating { retx: Retransmit },
    /// Responder: waiting for TUN_REQ; on RELAY re-sending RELAY_BIND meanwhile.
    AwaitingReq {
        bind: Option<Retransmit>,
        deadline: Instant,
    },
    /// Set up.
    Up,
}

#[derive(Debug)]
struct Tunnel {
    id: u32,
    peer_fqdn: String,
    endpoint: SocketAddrV4,
    path: Path,
    role: Role,
    /// `K_tun` as unwrapped, to recognise a retransmitted ROUTE_DIR.
    k_tun: Key,
    keys: DirectionKeys,
    rx: RxTunnel,
    tx: Cipher,
    tx_seq: SeqCounter,
    relay: Option<(Authenticator, u64)>,
    lifetime: Duration,
    last_rx: Instant,
    last_tx: Instant,
    /// When a TUN_KEEPALIVE answers DATA received since our last send.
    ack_due: Option<Instant>,
    /// Since when DATA we sent has had nothing back.
    unanswered_since: Option<Instant>,
    state: TunState,
}

impl Tunnel {
    fn info(&self) -> TunnelInfo {
        TunnelInfo {
            params: self.params(),
            up: matches!(self.state, TunState::Up),
        }
    }

    fn params(&self) -> TunnelParams {
        let (tx_key, rx_key) = self
            .keys
            .for_role(self.role)
            .expect("a tunnel is only created for a known role");
        TunnelParams {
            tunnel_id: self.id,
            peer_fqdn: self.peer_fqdn.clone(),
            peer_vip: self.rx.peer_vip,
            endpoint: self.endpoint,
            path: self.path,
            role: self.role,
            suite: self.tx.suite(),
            tx_key: tx_key.clone(),
            rx_key: rx_key.clone(),
            tx_seq: self.tx_seq.clone(),
            local_vip: self.rx.local_vip,
        }
    }

    fn up_event(&self) -> Event {
        Event::TunnelUp(self.params())
    }

    fn roams(&self) -> bool {
        matches!(self.path, Path::Direct | Path::Reverse)
    }

    fn next_deadline(&self) -> Instant {
        match self.state {
            TunState::Initiating { retx } => retx.deadline(),
            TunState::AwaitingReq { bind, deadline } => {
                bind.map_or(deadline, |b| b.deadline().min(deadline))
            }
            TunState::Up => [
                self.ack_due,
                self.unanswered_since.map(|t| t + REDIRECT_AFTER),
            ]
            .into_iter()
            .flatten()
            .fold(
                (self.last_tx + TUNNEL_KEEPALIVE).min(self.last_rx + self.lifetime),
                Instant::min,
            ),
        }
    }

    /// An up tunnel's timers at `now`: its expiry, its keep-alive (when
    /// idle, or answering DATA, queued on `queue`) and the liveness check.
    fn up_timers(&mut self, now: Instant, queue: &mut VecDeque<Pending>) -> Option<UpDue> {
        if now >= self.last_rx + self.lifetime {
            return Some(UpDue::Expired);
        }
        if now >= self.last_tx + TUNNEL_KEEPALIVE || self.ack_due.is_some_and(|d| now >= d) {
            // Counted as sent now, so the timer does not fire again before
            // the keep-alive is polled out.
            self.sent(now, false);
            queue.push_back(Pending::TunKeepalive(self.id));
        }
        if self
            .unanswered_since
            .is_some_and(|t| now >= t + REDIRECT_AFTER)
        {
            // Once per silence: the next DATA starts the clock again.
            self.unanswered_since = None;
            return Some(UpDue::Redirect);
        }
        None
    }

    /// We sent on the tunnel at `now`; `data` for DATA (which wants an
    /// answer), not a keep-alive or set-up message.
    fn sent(&mut self, now: Instant, data: bool) {
        self.last_tx = self.last_tx.max(now);
        self.ack_due = None;
        if data && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
    }
}

/// What an up tunnel's timers found due, beyond a keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpDue {
    /// Nothing received for its lifetime: tear it down.
    Expired,
    /// Its DATA went unanswered: ask the DC for a new direction.
    Redirect,
}

#[derive(Debug)]
struct DirRequest {
    req_id: u32,
    fqdn: String,
    retx: Retransmit,
}

/// Datagrams waiting for [`Endpoint::poll_transmit`]; built only then, from
/// the current state, so that retransmissions carry fresh sequence numbers
/// and nothing stale is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    RegReq,
    Keepalive,
    Dereg,
    DirReq(u32),
    RouteAck(u32),
    TunReq(u32),
    /// The answer to a fresh TUN_REQ, to the address it came from (which
    /// does not move the tunnel's endpoint, §5).
    TunResp(u32, SocketAddrV4),
    TunKeepalive(u32),
    RelayBind(u32),
}

/// A node's protocol state on its one UDP port. See the [module docs](self).
#[derive(Debug)]
pub struct Endpoint {
    cfg: Config,
    /// `cfg.dc` and its fallbacks, in order; never empty.
    dcs: Vec<SocketAddrV4>,
    /// Index of the current DC in `dcs`: the only source of DC datagrams
    /// accepted, so that one replay window (reset at its REG_RESP) suffices.
    dc_at: usize,
    /// DCs given up in a row since the last REG_RESP; at `dcs.len()` the
    /// endpoint waits [`REGISTER_RETRY`] before the next round.
    dcs_failed: usize,
    failovers: u64,
    auth: Authenticator,
    sig_seq: u64,
    rng: StdRng,
    reg: Option<Registration>,
    registering: Option<Retransmit>,
    /// REQ_ID of the outstanding REG_REQ (kept by its retransmissions).
    reg_req_id: u32,
    /// Replay window for the DC's datagrams, reset above each accepted
    /// REG_RESP (§5 "Replay").
    dc_replay: ReplayWindow,
    retry_at: Option<Instant>,
    dirs: Vec<DirRequest>,
    tunnels: HashMap<u32, Tunnel>,
    queue: VecDeque<Pending>,
    events: VecDeque<Event>,
    drops: DropCounters,
    /// Direction requests sent because a tunnel's DATA went unanswered.
    redirects: u64,
    closed: bool,
}

impl Endpoint {
    /// A new endpoint; it sends its first REG_REQ at the first
    /// [`Endpoint::poll_transmit`]. `unix_nanos` is the current Unix time in
    /// nanoseconds (signaling sequence numbers start there, §2);
    /// `rng_seed` seeds request ids.
    pub fn new(cfg: Config, now: Instant, unix_nanos: u64, rng_seed: [u8; 32]) -> Result<Endpoint> {
        Fqdn::new(&cfg.fqdn)?;
        let auth = Authenticator::new(&cfg.key);
        let mut ep = Endpoint {
            dcs: vec![cfg.dc],
            dc_at: 0,
            dcs_failed: 0,
            failovers: 0,
            cfg,
            auth,
            sig_seq: unix_nanos,
            rng: StdRng::from_seed(rng_seed),
            reg: None,
            registering: None,
            reg_req_id: 0,
            dc_replay: ReplayWindow::new(),
            retry_at: None,
            dirs: Vec::new(),
            tunnels: HashMap::new(),
            queue: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            redirects: 0,
            closed: false,
        };
        ep.start_registration(now);
        Ok(ep)
    }

    /// Further DCs, in order, after `cfg.dc` (duplicates ignored, at most
    /// [`MAX_DCS`] in all): the endpoint registers with the first that
    /// answers, and moves to the next when REG_REQ or keep-alives go
    /// unanswered. Call right after [`Endpoint::new`]. The configurations
    /// refuse longer lists; beyond [`MAX_DCS`] the rest is ignored.
    pub fn with_fallback_dcs(mut self, fallbacks: &[SocketAddrV4]) -> Endpoint {
        for dc in fallbacks {
            if !self.dcs.contains(dc) && self.dcs.len() < MAX_DCS {
                self.dcs.push(*dc);
            }
        }
        self
    }

    /// The DC the endpoint registers with now.
    pub fn dc(&self) -> SocketAddrV4 {
        self.dcs[self.dc_at]
    }

    /// Every configured DC, in failover order.
    pub fn dcs(&self) -> &[SocketAddrV4] {
        &self.dcs
    }

    /// Moves from one DC to the next so far ([`Event::DcChanged`]).
    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    // ----- inputs -------------------------------------------------------

    /// Process one datagram received from `from` on the node's port.
    /// Errors are drops (already counted in [`Endpoint::drops`]); the caller
    /// may count them too.
    /// The datagram is opened in place (suite 2 decrypts tunnel messages),
    /// hence `&mut`.
    pub fn handle<'a>(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &'a mut [u8],
    ) -> Result<Received<'a>> {
        let r = self.handle_inner(now, from, datagram);
        if let Err(e) = r {
            self.drops.count(e);
        }
        r
    }

    /// Whether `datagram` from `from` is addressed to this endpoint, for a
    /// driver with several endpoints on one socket (an adapter's GNs, §6).
    /// It reads only what chooses the key (§2): the tunnel id of tunnel
    /// messages, the node id of the DC's, and the REQ_ID of a REG_RESP to
    /// our outstanding REG_REQ (its node id is not ours yet). Nothing is
    /// verified or counted: [`Endpoint::handle`] does that.
    pub fn claims(&self, from: SocketAddrV4, datagram: &[u8]) -> bool {
        let Ok(packet) = Packet::new_checked(datagram) else {
            return false;
        };
        if packet.version() != VERSION || self.closed {
            return false;
        }
        let id = packet.id();
        let from_dc = from == self.dc();
        match packet.msg_type() {
            // Ours by our node id (a recorded one is then refused as stale by
            // the key that made it), or, before we have one, by the REQ_ID.
            MessageType::RegResp if from_dc => {
                self.reg.as_ref().is_some_and(|r| r.node_id == id)
                    || self.registering.is_some()
                        && matches!(Repr::parse(&packet),
                            Ok(Repr { message: Message::RegResp(r), .. }) if r.req_id == self.reg_req_id)
            }
            MessageType::KeepaliveAck | MessageType::RouteDir | MessageType::Error if from_dc => {
                self.reg.as_ref().is_some_and(|r| r.node_id == id)
            }
            MessageType::Data
            | MessageType::TunKeepalive
            | MessageType::TunReq
            | MessageType::TunResp
            | MessageType::Error => self.tunnels.contains_key(&id),
            _ => false,
        }
    }

    fn handle_inner<'a>(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &'a mut [u8],
    ) -> Result<Received<'a>> {
        if self.closed {
            return Err(Error::Stale);
        }
        let packet = Packet::new_checked(&*datagram)?;
        if packet.version() != VERSION {
            return Err(Error::BadVersion);
        }
        match packet.msg_type() {
            MessageType::Data | MessageType::TunKeepalive => self.handle_data(now, from, datagram),
            MessageType::TunReq | MessageType::TunResp => {
                self.handle_tunnel_signaling(now, from, datagram)
            }
            MessageType::RegResp | MessageType::KeepaliveAck | MessageType::RouteDir => {
                self.handle_dc(now, from, datagram)
            }
            MessageType::Error if from == self.dc() => self.handle_dc(now, from, datagram),
            MessageType::Error => self.handle_tunnel_signaling(now, from, datagram),
            MessageType::Unknown(_) => Err(Error::UnknownType),
            _ => Err(Error::UnexpectedType),
        }
    }

    fn handle_data<'a>(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &'a mut [u8],
    ) -> Result<Received<'a>> {
        // Any tunnel whose keys are known: the peer may send DATA right after
        // its TUN_RESP, before that answer reaches us.
        let got = data::decap(datagram, |id| self.tunnels.get_mut(&id).map(|t| &mut t.rx))?;
        self.note_rx(got.tunnel_id(), now, from);
        if matches!(got, Decapped::Data { .. }) {
            self.note_data_rx(got.tunnel_id(), now);
        }
        Ok(match got {
            Decapped::Data {
                tunnel_id, inner, ..
            } => Received::Data { tunnel_id, inner },
            Decapped::Keepalive { tunnel_id, .. } => Received::Keepalive { tunnel_id },
        })
    }

    fn handle_tunnel_signaling<'a>(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &'a mut [u8],
    ) -> Result<Received<'a>> {
        Packet::new_unchecked(&*datagram).check_header()?;
        let id = Packet::new_unchecked(&*datagram).id();
        let t = self.tunnels.get_mut(&id).ok_or(Error::UnknownTunnel)?;
        // The receive direction key in the tunnel's suite: our own TUN_REQ
        // or TUN_RESP sent back to us never opens (§3).
        t.rx.cipher.open(datagram)?;
        let packet = Packet::new_unchecked(&*datagram);
        let repr = Repr::parse(&packet)?;
        // Every retransmission carries a fresh seq, so a seen one is a replay.
        if !t.rx.replay.validate(repr.header.seq) {
            return Err(Error::Replay);
        }
        match repr.message {
            Message::TunReq(req) => {
                if t.role != Role::Responder {
                    return Err(Error::UnexpectedType);
                }
                if req.fqdn.as_str() != t.peer_fqdn || req.vip.addr != t.rx.peer_vip {
                    return Err(Error::BadTlvValue);
                }
                // A TUN_REQ never moves the endpoint (§5): only authentic
                // DATA and TUN_KEEPALIVE do. The answer goes where it came from.
                t.last_rx = now;
                if !matches!(t.state, TunState::Up) {
                    t.state = TunState::Up;
                    t.last_tx = now;
                    self.events.push_back(t.up_event());
                }
                self.queue.push_back(Pending::TunResp(id, from));
                Ok(Received::Signaling)
            }
            Message::TunResp(resp) => {
                if t.role != Role::Initiator {
                    return Err(Error::UnexpectedType);
                }
                if !matches!(t.state, TunState::Initiating { .. }) {
                    // A second answer to a retransmitted TUN_REQ.
                    t.last_rx = now;
                    return Ok(Received::Signaling);
                }
                if resp.status != Status::Ok {
                    self.remove_tunnel(id, DownReason::Refused(resp.status));
                    return Ok(Received::Signaling);
                }
                if resp.fqdn.as_str() != t.peer_fqdn || resp.vip.addr != t.rx.peer_vip {
                    return Err(Error::BadTlvValue);
                }
                t.state = TunState::Up;
                t.last_rx = now;
                t.last_tx = now;
                self.events.push_back(t.up_event());
                if t.roams() {
                    // At once, so that the responder follows us (roaming) when
                    // our NAT mapped the TUN_REQ elsewhere than the address
                    // the DC observed (a mapping per destination, or a port
                    // taken since): the TUN_REQ's source does not move it.
                    self.queue.push_back(Pending::TunKeepalive(id));
                }
                Ok(Received::Signaling)
            }
            Message::Error(e) => {
                self.remove_tunnel(id, DownReason::PeerError(e.status));
                Ok(Received::Signaling)
            }
            _ => Err(Error::UnexpectedType),
        }
    }

    fn handle_dc<'a>(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &'a [u8],
    ) -> Result<Received<'a>> {
        let packet = Packet::new_unchecked(datagram);
        packet.check_header()?;
        // Only the current DC: a DC given up may still answer late, and
        // its seq stream is not the one the window was reset to.
        if from != self.dc() {
            return Err(Error::UnexpectedSource);
        }
        if packet.suite() != Suite::HmacSha256_128 {
            // Signaling is always suite 1 (§2).
            return Err(Error::UnsupportedSuite);
        }
        self.auth.verify(datagram)?;
        let repr = Repr::parse(&packet)?;
        let seq = repr.header.seq;
        if let Message::RegResp(resp) = repr.message {
            // Only the answer to the outstanding REG_REQ (its REQ_ID): a
            // recorded REG_RESP of an earlier registration never matches.
            if self.registering.is_none() || resp.req_id != self.reg_req_id {
                return Err(Error::Stale);
            }
            self.registering = None;
            self.dcs_failed = 0;
            // From now on only DC datagrams newer than this one (§5 "Replay").
            self.dc_replay = ReplayWindow::above(seq);
            match resp.result {
                Ok(lease) => self.on_registered(now, lease),
                Err(status) => {
                    self.retry_at = Some(now + REGISTER_RETRY);
                    self.events.push_back(Event::RegistrationFailed {
                        reason: RegistrationError::Status(status),
                    });
                }
            }
            return Ok(Received::Signaling);
        }
        let reg = self.reg.as_mut().ok_or(Error::NotRegistered)?;
        if repr.header.id != reg.node_id {
            return Err(Error::WrongId);
        }
        if !self.dc_replay.validate(seq) {
            return Err(Error::Replay);
        }
        reg.last_heard = now;
        match repr.message {
            Message::KeepaliveAck(ack) => {
                if ack.observed != reg.observed {
                    // Our NAT mapping changed: re-register (§5).
                    self.start_registration(now);
                }
            }
            Message::RouteDir(dir) => self.on_route_dir(now, repr.header.seq, dir)?,
            Message::Error(_) => {
                // The DC does not know us (restarted, or our registration expired).
                self.start_registration(now);
            }
            _ => return Err(Error::UnexpectedType),
        }
        Ok(Received::Signaling)
    }

    fn on_registered(&mut self, now: Instant, lease: crate::wire::Lease) {
        let keepalive = match lease.keepalive_secs {
            0 => DEFAULT_KEEPALIVE,
            s => Duration::from_secs(u64::from(s)),
        };
        let lifetime = Duration::from_secs(u64::from(lease.lifetime_secs)).max(keepalive);
        let old_vip = self.reg.map(|r| r.vip.addr);
        let behind_nat = lease.observed != self.cfg.local_addr;
        self.reg = Some(Registration {
            node_id: lease.node_id,
            vip: lease.vip,
            observed: lease.observed,
            behind_nat,
            keepalive,
            lifetime,
            granted_at: now,
            last_heard: now,
            next_keepalive: now + keepalive,
        });
        self.retry_at = None;
        if old_vip.is_some_and(|v| v != lease.vip.addr) {
            let ids: Vec<u32> = self.tunnels.keys().copied().collect();
            for id in ids {
                self.remove_tunnel(id, DownReason::VipChanged);
            }
        }
        self.events.push_back(Event::Registered {
            vip: lease.vip.addr,
            prefix_len: lease.vip.prefix_len,
            node_id: lease.node_id,
            observed: lease.observed,
            behind_nat,
        });
    }

    fn on_route_dir(
        &mut self,
        now: Instant,
        seq: u64,
        dir: crate::wire::RouteDir<'_>,
    ) -> Result<()> {
        let pending = self
            .dirs
            .iter()
            .position(|d| dir.req_id != 0 && d.req_id == dir.req_id);
        let route = match dir.result {
            Ok(route) => route,
            Err(status) => {
                let i = pending.ok_or(Error::Stale)?;
                self.resolve_pending(Some(i), Err(DirError::Status(status)));
                return Ok(());
            }
        };
        let id = route.tunnel_id;
        let key = self
            .auth
            .unwrap_key(WrapLabel::TunnelKey, id, seq, &route.wrapped_key);
        if let Some(t) = self.tunnels.get(&id) {
            if t.k_tun == key && t.peer_fqdn == route.peer_fqdn.as_str() {
                // A retransmitted ROUTE_DIR: acknowledge again, change nothing.
                self.answer_route_dir(dir.req_id, id, pending, route.peer_vip.addr);
                return Ok(());
            }
            // Same id, different tunnel: a restarted DC reused the id.
            self.remove_tunnel(id, DownReason::Replaced);
        }
        let tunnel = match self.directed_tunnel(now, seq, &route, key) {
            Ok(t) => t,
            Err(Error::UnsupportedSuite) => {
                self.resolve_pending(pending, Err(DirError::UnsupportedSuite));
                return Err(Error::UnsupportedSuite);
            }
            Err(e) => return Err(e),
        };
        // One tunnel per peer: a new direction replaces the old tunnel.
        let old: Vec<u32> = self
            .tunnels
            .values()
            .filter(|t| t.peer_fqdn == tunnel.peer_fqdn)
            .map(|t| t.id)
            .collect();
        for old_id in old {
            self.remove_tunnel(old_id, DownReason::Replaced);
        }
        if tunnel.relay.is_some() {
            self.queue.push_back(Pending::RelayBind(id));
        }
        if tunnel.role == Role::Initiator {
            self.queue.push_back(Pending::TunReq(id));
        }
        // Before anything of the tunnel goes out (§5 "Tunnel" lets the peer
        // send DATA as soon as it has sent TUN_RESP).
        self.events.push_back(Event::TunnelAdded(tunnel.params()));
        self.tunnels.insert(id, tunnel);
        self.answer_route_dir(dir.req_id, id, pending, route.peer_vip.addr);
        Ok(())
    }

    /// Only the unsolicited copy (REQ_ID 0) of a ROUTE_DIR is acknowledged
    /// (§5); ours answers our DIR_REQ, and a DC that keys acks by tunnel id
    /// alone must not take our ack for the peer's.
    fn answer_route_dir(&mut self, req_id: u32, id: u32, pending: Option<usize>, vip: Ipv4Addr) {
        if req_id == 0 {
            self.queue.push_back(Pending::RouteAck(id));
        }
        self.resolve_pending(pending, Ok(vip));
    }

    /// The tunnel a ROUTE_DIR directs, its keys unwrapped and set-up
    /// started (nothing queued yet).
    fn directed_tunnel(
        &self,
        now: Instant,
        seq: u64,
        route: &crate::wire::Route<'_>,
        k_tun: Key,
    ) -> Result<Tunnel> {
        let id = route.tunnel_id;
        let keys = DirectionKeys::derive(&k_tun);
        let ciphers = keys.for_role(route.role).and_then(|(tx, rx)| {
            Some((
                Cipher::new(route.suite, tx).ok()?,
                Cipher::new(route.suite, rx).ok()?,
            ))
        });
        let (tx, rx_cipher) = ciphers.ok_or(Error::UnsupportedSuite)?;
        let local_vip = self.reg.map(|r| r.vip.addr).ok_or(Error::NotRegistered)?;
        let relay = route
            .wrapped_relay_key
            .filter(|_| route.path == Path::Relay)
            .map(|w| {
                let k_relay = self.auth.unwrap_key(WrapLabel::RelayKey, id, seq, &w);
                (Authenticator::new(&k_relay), 1u64)
            });
        let state = match route.role {
            Role::Initiator => TunState::Initiating {
                retx: Retransmit::start(now),
            },
            _ => TunState::AwaitingReq {
                bind: relay.as_ref().map(|_| Retransmit::start(now)),
                deadline: now + RESPONDER_SETUP_TIMEOUT,
            },
        };
        Ok(Tunnel {
            id,
            peer_fqdn: route.peer_fqdn.as_str().to_owned(),
            endpoint: route.endpoint,
            path: route.path,
            role: route.role,
            rx: RxTunnel::new(rx_cipher, route.peer_vip.addr, local_vip),
            tx,
            k_tun,
            keys,
            tx_seq: SeqCounter::starting_at(1),
            relay,
            lifetime: Duration::from_secs(u64::from(route.lifetime_secs.max(1))),
            last_rx: now,
            last_tx: now,
            ack_due: None,
            unanswered_since: None,
            state,
        })
    }

    /// Answers the outstanding direction request at `pending`, if any.
    fn resolve_pending(
        &mut self,
        pending: Option<usize>,
        result: core::result::Result<Ipv4Addr, DirError>,
    ) {
        if let Some(i) = pending {
            let d = self.dirs.remove(i);
            self.resolve(d, result);
        }
    }

    fn resolve(&mut self, d: DirRequest, result: core::result::Result<Ipv4Addr, DirError>) {
        self.events.push_back(Event::DirectionResolved {
            req: ReqId(d.req_id),
            fqdn: d.fqdn,
            result,
        });
    }

    fn remove_tunnel(&mut self, id: u32, reason: DownReason) {
        if self.tunnels.remove(&id).is_some() {
            self.events.push_back(Event::TunnelDown {
                tunnel_id: id,
                reason,
            });
        }
    }

    /// Ask the DC for `fqdn` (DIR_REQ). The answer comes as
    /// [`Event::DirectionResolved`] with the returned id; the tunnel then
    /// comes up by itself ([`Event::TunnelUp`]). A name that already has a
    /// tunnel resolves at once; a name already being asked for shares the
    /// pending request's id.
    pub fn connect(&mut self, now: Instant, fqdn: &str) -> Result<ReqId> {
        Fqdn::new(fqdn)?;
        if self.closed || self.reg.is_none() {
            return Err(Error::NotRegistered);
        }
        if let Some(d) = self.dirs.iter().find(|d| d.fqdn == fqdn) {
            return Ok(ReqId(d.req_id));
        }
        let req_id = self.fresh_req_id();
        let existing = self
            .tunnels
            .values()
            .find(|t| t.peer_fqdn == fqdn)
            .map(|t| t.rx.peer_vip);
        let d = DirRequest {
            req_id,
            fqdn: fqdn.to_owned(),
            retx: Retransmit::start(now),
        };
        if let Some(vip) = existing {
            self.resolve(d, Ok(vip));
        } else {
            self.dirs.push(d);
            self.queue.push_back(Pending::DirReq(req_id));
        }
        Ok(ReqId(req_id))
    }

    fn fresh_req_id(&mut self) -> u32 {
        loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.dirs.iter().any(|d| d.req_id == id) {
                return id;
            }
        }
    }

    /// Our own address changed (new DHCP lease, interface moved): re-register
    /// with the new LOCAL_ADDR and send a keep-alive on every roaming tunnel
    /// so that peers learn the new source address at once.
    pub fn handle_local_addr_change(&mut self, now: Instant, local_addr: SocketAddrV4) {
        self.cfg.local_addr = local_addr;
        if self.closed {
            return;
        }
        self.start_registration(now);
        let ids: Vec<u32> = self
            .tunnels
            .values()
            .filter(|t| t.roams() && matches!(t.state, TunState::Up))
            .map(|t| t.id)
            .collect();
        for id in ids {
            self.queue.push_back(Pending::TunKeepalive(id));
        }
    }

    /// The data plane received a DATA or TUN_KEEPALIVE of `tunnel_id` from
    /// `from` that passed every check of §5 (call it for nothing else: a
    /// dropped datagram is never activity): refresh the tunnel's lifetime,
    /// and on DIRECT and REVERSE paths follow the peer to a new source
    /// address (roaming).
    pub fn note_rx(&mut self, tunnel_id: u32, now: Instant, from: SocketAddrV4) {
        let Some(t) = self.tunnels.get_mut(&tunnel_id) else {
            return;
        };
        t.last_rx = now;
        t.unanswered_since = None;
        if t.roams() && matches!(t.state, TunState::Up) && from != t.endpoint {
            t.endpoint = from;
            self.events.push_back(Event::EndpointChanged {
                tunnel_id,
                endpoint: from,
            });
        }
    }

    /// Of what [`Endpoint::note_rx`] reported, DATA (not a keep-alive)
    /// came: unless we send on the tunnel within [`DATA_ACK_AFTER`], a
    /// TUN_KEEPALIVE tells the peer that we hear it.
    pub fn note_data_rx(&mut self, tunnel_id: u32, now: Instant) {
        if let Some(t) = self.tunnels.get_mut(&tunnel_id) {
            if matches!(t.state, TunState::Up) && t.ack_due.is_none() {
                t.ack_due = Some(now + DATA_ACK_AFTER);
            }
        }
    }

    /// The data plane sent DATA on `tunnel_id`: postpones that tunnel's
    /// keep-alive, and starts the liveness clock unless it runs (DATA
    /// unanswered for [`REDIRECT_AFTER`] asks the DC for a new direction).
    pub fn note_tx(&mut self, tunnel_id: u32, now: Instant) {
        if let Some(t) = self.tunnels.get_mut(&tunnel_id) {
            t.sent(now, true);
        }
    }

    /// How many direction requests unanswered DATA caused.
    pub fn redirects(&self) -> u64 {
        self.redirects
    }

    /// Deregister (DEREG) and drop every tunnel. The endpoint ignores
    /// everything afterwards; flush [`Endpoint::poll_transmit`] once more.
    pub fn close(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        if self.reg.is_some() {
            self.queue.retain(|p| *p == Pending::Dereg);
            self.queue.push_back(Pending::Dereg);
        } else {
            self.queue.clear();
        }
        let ids: Vec<u32> = self.tunnels.keys().copied().collect();
        for id in ids {
            self.remove_tunnel(id, DownReason::Closed);
        }
        for d in std::mem::take(&mut self.dirs) {
            self.resolve(d, Err(DirError::Closed));
        }
        self.registering = None;
        self.retry_at = None;
        self.closed = true;
    }

    fn start_registration(&mut self, now: Instant) {
        self.retry_at = None;
        if self.registering.is_none() {
            self.registering = Some(Retransmit::start(now));
            self.reg_req_id = loop {
                let id = self.rng.next_u32();
                if id != 0 && id != self.reg_req_id {
                    break id;
                }
            };
            self.queue.push_back(Pending::RegReq);
        }
    }

    // ----- timers -------------------------------------------------------

    /// The next instant at which [`Endpoint::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(r) = &self.registering {
            at(r.deadline());
        }
        if let Some(t) = self.retry_at {
            at(t);
        }
        if let (Some(reg), None) = (&self.reg, &self.registering) {
            at(reg.next_keepalive);
            at(reg.silent_deadline());
            at(reg.renew_at());
        }
        for d in &self.dirs {
            at(d.retx.deadline());
        }
        for t in self.tunnels.values() {
            at(t.next_deadline());
        }
        next
    }

    /// Run every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.registration_timers(now);
        self.direction_timers(now);
        self.tunnel_timers(now);
    }

    fn registration_timers(&mut self, now: Instant) {
        if let Some(retx) = &mut self.registering {
            match retx.on_timeout(now) {
                Some(RetransmitAction::Send) => self.queue.push_back(Pending::RegReq),
                Some(RetransmitAction::Failed) => self.registration_timed_out(now),
                None => {}
            }
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.start_registration(now);
        }
        if self.registering.is_some() {
            return;
        }
        let Some(reg) = &mut self.reg else { return };
        if now >= reg.silent_deadline() {
            // The DC lost us (restarted) or is gone: with more DCs, the
            // next one; alone, the same one again.
            self.dcs_failed += 1;
            self.fail_over(now, "keep-alives unanswered");
            self.start_registration(now);
            return;
        }
        if now >= reg.renew_at() {
            self.start_registration(now);
            return;
        }
        if now >= reg.next_keepalive {
            reg.next_keepalive = now + reg.keepalive;
            self.queue.push_back(Pending::Keepalive);
        }
    }

    /// The current DC did not answer 5 REG_REQs: the next DC at once,
    /// or, when every DC failed in a row, the next round after
    /// [`REGISTER_RETRY`].
    fn registration_timed_out(&mut self, now: Instant) {
        self.registering = None;
        self.dcs_failed += 1;
        tracing::warn!(dc = %self.dc(), "registration failed: no REG_RESP after 5 tries");
        self.fail_over(now, "REG_REQ unanswered");
        if self.dcs_failed < self.dcs.len() {
            self.start_registration(now);
            return;
        }
        self.dcs_failed = 0;
        self.retry_at = Some(now + REGISTER_RETRY);
        self.events.push_back(Event::RegistrationFailed {
            reason: RegistrationError::TimedOut,
        });
    }

    /// Makes the next configured DC the current one (nothing with one DC).
    fn fail_over(&mut self, now: Instant, why: &str) {
        if self.dcs.len() < 2 {
            return;
        }
        let from = self.dc();
        self.dc_at = (self.dc_at + 1) % self.dcs.len();
        let to = self.dc();
        self.failovers += 1;
        // A REG_REQ under way went to the DC given up: start afresh.
        self.registering = None;
        // Outstanding direction requests go on to the new DC (their next
        // retransmission, after our REG_REQ) with a fresh schedule, so that
        // they do not fail for the old DC's silence.
        for d in &mut self.dirs {
            d.retx = Retransmit::start(now);
        }
        let fqdn = &self.cfg.fqdn;
        tracing::warn!(%fqdn, %from, %to, why, "DC did not answer: registering with the next one");
        self.events.push_back(Event::DcChanged { from, to });
    }

    fn direction_timers(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.dirs.len() {
            match self.dirs[i].retx.on_timeout(now) {
                Some(RetransmitAction::Send) => {
                    self.queue.push_back(Pending::DirReq(self.dirs[i].req_id));
                    i += 1;
                }
                Some(RetransmitAction::Failed) => {
                    let d = self.dirs.remove(i);
                    tracing::warn!(fqdn = %d.fqdn, "direction request failed: no ROUTE_DIR after 5 tries");
                    self.resolve(d, Err(DirError::TimedOut));
                }
                None => i += 1,
            }
        }
    }

    fn tunnel_timers(&mut self, now: Instant) {
        let mut down = Vec::new();
        let mut redirect = Vec::new();
        for t in self.tunnels.values_mut() {
            match &mut t.state {
                TunState::Initiating { retx } => match retx.on_timeout(now) {
                    Some(RetransmitAction::Send) => {
                        if t.relay.is_some() {
                            self.queue.push_back(Pending::RelayBind(t.id));
                        }
                        self.queue.push_back(Pending::TunReq(t.id));
                    }
                    Some(RetransmitAction::Failed) => down.push((t.id, DownReason::SetupTimedOut)),
                    None => {}
                },
                TunState::AwaitingReq { bind, deadline } => {
                    if now >= *deadline {
                        down.push((t.id, DownReason::SetupTimedOut));
                        continue;
                    }
                    if let Some(b) = bind {
                        match b.on_timeout(now) {
                            Some(RetransmitAction::Send) => {
                                self.queue.push_back(Pending::RelayBind(t.id))
                            }
                            // Stop binding; the deadline decides.
                            Some(RetransmitAction::Failed) => *bind = None,
                            None => {}
                        }
                    }
                }
                TunState::Up => match t.up_timers(now, &mut self.queue) {
                    Some(UpDue::Expired) => down.push((t.id, DownReason::Expired)),
                    Some(UpDue::Redirect) => redirect.push((t.id, t.peer_fqdn.clone())),
                    None => {}
                },
            }
        }
        for (id, reason) in down {
            if reason == DownReason::SetupTimedOut {
                tracing::warn!(tunnel_id = id, "tunnel set-up failed");
            }
            self.remove_tunnel(id, reason);
        }
        for (id, fqdn) in redirect {
            self.redirect(now, id, fqdn);
        }
    }

    /// Asks the DC for a new direction to the peer of tunnel `id`, whose
    /// DATA has had no answer for [`REDIRECT_AFTER`]. The old tunnel keeps
    /// working until the new ROUTE_DIR replaces it.
    fn redirect(&mut self, now: Instant, id: u32, fqdn: String) {
        if self.reg.is_none() || self.dirs.iter().any(|d| d.fqdn == fqdn) {
            return;
        }
        tracing::info!(tunnel_id = id, peer = %fqdn, after_secs = REDIRECT_AFTER.as_secs(), "DATA sent but nothing received on the tunnel: asking the DC for a new direction");
        let req_id = self.fresh_req_id();
        self.dirs.push(DirRequest {
            req_id,
            fqdn,
            retx: Retransmit::start(now),
        });
        self.queue.push_back(Pending::DirReq(req_id));
        self.redirects += 1;
    }

    // ----- outputs ------------------------------------------------------

    /// The next datagram to send, written to the front of `buf` (give it at
    /// least [`crate::wire::MAX_SIGNALING_LEN`] bytes). Call until `None`
    /// after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(p) = self.queue.pop_front() {
            match self.build(now, p, buf) {
                Ok(Some(t)) => return Some(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "dropping an outgoing datagram: give poll_transmit a larger buffer");
                }
            }
        }
        None
    }

    /// Seals `msg` for the DC with the next signaling seq. Takes the fields
    /// it needs, not `self`, so that `msg` may borrow from the config.
    fn to_dc(
        auth: &Authenticator,
        sig_seq: &mut u64,
        dc: SocketAddrV4,
        buf: &mut [u8],
        header: (u32, bool),
        msg: Message,
    ) -> Result<Option<Transmit>> {
        *sig_seq += 1;
        let (id, response_required) = header;
        let header = Header {
            id,
            seq: *sig_seq,
            response_required,
        };
        let len = Repr::new(header, msg).emit_sealed(buf, auth)?;
        Ok(Some(Transmit { dst: dc, len }))
    }

    fn build(&mut self, now: Instant, p: Pending, buf: &mut [u8]) -> Result<Option<Transmit>> {
        match p {
            Pending::RegReq
            | Pending::Keepalive
            | Pending::Dereg
            | Pending::DirReq(_)
            | Pending::RouteAck(_) => self.build_to_dc(p, buf),
            Pending::TunReq(_) | Pending::TunResp(..) => self.build_tun_setup(now, p, buf),
            Pending::TunKeepalive(id) => self.build_tun_keepalive(now, id, buf),
            Pending::RelayBind(id) => self.build_relay_bind(id, buf),
        }
    }

    /// REG_REQ, KEEPALIVE, DEREG, DIR_REQ or ROUTE_ACK, if still wanted.
    fn build_to_dc(&mut self, p: Pending, buf: &mut [u8]) -> Result<Option<Transmit>> {
        let node_id = self.reg.map_or(0, |r| r.node_id);
        let dir_fqdn;
        let (msg, response_required) = match p {
            Pending::RegReq if self.registering.is_some() => {
                let msg = Message::RegReq(RegReq {
                    req_id: self.reg_req_id,
                    fqdn: Fqdn::new(&self.cfg.fqdn)?,
                    local_addr: self.cfg.local_addr,
                    caps: self.cfg.caps,
                });
                (msg, true)
            }
            Pending::Keepalive if self.reg.is_some() => (Message::Keepalive, true),
            Pending::Dereg if self.reg.is_some() => (Message::Dereg, false),
            Pending::DirReq(req_id) => {
                let Some(d) = self.dirs.iter().find(|d| d.req_id == req_id) else {
                    return Ok(None);
                };
                dir_fqdn = d.fqdn.clone();
                let fqdn = Fqdn::new(&dir_fqdn)?;
                (Message::DirReq(DirReq { req_id, fqdn }), true)
            }
            Pending::RouteAck(tunnel_id) => (Message::RouteAck(RouteAck { tunnel_id }), false),
            _ => return Ok(None),
        };
        let header = (node_id, response_required);
        let dc = self.dc();
        Self::to_dc(&self.auth, &mut self.sig_seq, dc, buf, header, msg)
    }

    /// TUN_REQ (while initiating) or TUN_RESP, sealed with the tunnel's send key.
    fn build_tun_setup(
        &mut self,
        now: Instant,
        p: Pending,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>> {
        let (Pending::TunReq(id) | Pending::TunResp(id, _)) = p else {
            return Ok(None);
        };
        let Some(vip) = self.reg.map(|r| r.vip) else {
            return Ok(None);
        };
        let Some(t) = self.tunnels.get_mut(&id) else {
            return Ok(None);
        };
        let fqdn = Fqdn::new(&self.cfg.fqdn)?;
        let (msg, response_required, dst) = match p {
            Pending::TunResp(_, to) => {
                let resp = TunResp {
                    status: Status::Ok,
                    fqdn,
                    vip,
                };
                (Message::TunResp(resp), false, to)
            }
            _ if matches!(t.state, TunState::Initiating { .. }) => {
                (Message::TunReq(TunReq { fqdn, vip }), true, t.endpoint)
            }
            _ => return Ok(None),
        };
        let header = Header {
            id,
            seq: t.tx_seq.next(),
            response_required,
        };
        let len = Repr::new(header, msg).emit_sealed_with(buf, &t.tx)?;
        t.sent(now, false);
        Ok(Some(Transmit { dst, len }))
    }

    /// TUN_KEEPALIVE on an up tunnel.
    fn build_tun_keepalive(
        &mut self,
        now: Instant,
        id: u32,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>> {
        let Some(t) = self.tunnels.get_mut(&id) else {
            return Ok(None);
        };
        if !matches!(t.state, TunState::Up) {
            return Ok(None);
        }
        let len = data::emit_tun_keepalive(buf, id, t.tx_seq.next(), &t.tx)?;
        t.sent(now, false);
        Ok(Some(Transmit {
            dst: t.endpoint,
            len,
        }))
    }

    /// RELAY_BIND (with `K_relay`) of a RELAY tunnel not yet up.
    fn build_relay_bind(&mut self, id: u32, buf: &mut [u8]) -> Result<Option<Transmit>> {
        let Some(t) = self.tunnels.get_mut(&id) else {
            return Ok(None);
        };
        if matches!(t.state, TunState::Up) {
            return Ok(None);
        }
        let role = t.role;
        let Some((auth, seq)) = &mut t.relay else {
            return Ok(None);
        };
        let header = Header {
            id,
            seq: *seq,
            response_required: false,
        };
        *seq += 1;
        let msg = Message::RelayBind(RelayBind { role });
        let len = Repr::new(header, msg).emit_sealed(buf, auth)?;
        Ok(Some(Transmit {
            dst: t.endpoint,
            len,
        }))
    }

    /// The next event, if any. Call until `None` after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- single-threaded data plane -----------------------------------

    /// Encapsulate an inner IPv4 packet for the tunnel to its destination VIP
    /// and write the DATA datagram to the front of `buf` (which needs
    /// `inner.len() + 32` bytes). [`Error::NoTunnel`] when no tunnel to that
    /// VIP is up: ask [`Endpoint::connect`] first.
    pub fn send_data(&mut self, now: Instant, inner: &[u8], buf: &mut [u8]) -> Result<Transmit> {
        let dst = data::inner_destination(inner).ok_or(Error::BadInner)?;
        let t = self
            .tunnels
            .values_mut()
            .find(|t| t.rx.peer_vip == dst && matches!(t.state, TunState::Up))
            .ok_or(Error::NoTunnel)?;
        let room = buf
            .get_mut(..inner.len() + OVERHEAD)
            .ok_or(Error::BufferTooSmall)?;
        room[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
        let len = data::encap_in_place(room, 0, inner.len(), t.id, t.tx_seq.next(), &t.tx)?;
        t.sent(now, true);
        Ok(Transmit {
            dst: t.endpoint,
            len,
        })
    }

    // ----- state --------------------------------------------------------

    /// The registration held, if any.
    pub fn registration(&self) -> Option<Registration> {
        self.reg
    }

    /// Our VIP once registered.
    pub fn vip(&self) -> Option<Vip> {
        self.reg.map(|r| r.vip)
    }

    /// Our FQDN.
    pub fn fqdn(&self) -> &str {
        &self.cfg.fqdn
    }

    /// Our LOCAL_ADDR.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.cfg.local_addr
    }

    /// Snapshot of one tunnel.
    pub fn tunnel(&self, tunnel_id: u32) -> Option<TunnelInfo> {
        self.tunnels.get(&tunnel_id).map(Tunnel::info)
    }

    /// The tunnel to a peer VIP, if any.
    pub fn tunnel_for_vip(&self, vip: Ipv4Addr) -> Option<TunnelInfo> {
        self.tunnels
            .values()
            .find(|t| t.rx.peer_vip == vip)
            .map(Tunnel::info)
    }

    /// Snapshots of all tunnels.
    pub fn tunnels(&self) -> impl Iterator<Item = TunnelInfo> + '_ {
        self.tunnels.values().map(Tunnel::info)
    }

    /// Drops counted by [`Endpoint::handle`], by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn driver_can_move_it_to_a_thread() {
        assert_send::<Endpoint>();
        assert_send::<Event>();
        assert_send_sync::<Authenticator>();
        assert_send_sync::<Key>();
        assert_send_sync::<SeqCounter>();
    }

    #[test]
    fn rejects_an_invalid_own_fqdn() {
        let cfg = Config {
            fqdn: "Not Valid".into(),
            key: Key::from_bytes([0; 32]),
            dc: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7710),
            local_addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7700),
            caps: Caps::NODE,
        };
        assert_eq!(
            Endpoint::new(cfg, Instant::now(), 0, [0; 32]).unwrap_err(),
            Error::BadFqdn
        );
    }
}
