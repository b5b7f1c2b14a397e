//! The Direction Coordinator as a sans-IO state machine.
//!
//! Drive it like a quinn-proto endpoint: [`Coordinator::handle`] every
//! datagram received on the DC's port, [`Coordinator::handle_timeout`] when
//! [`Coordinator::poll_timeout`]'s deadline passes, and after each of them
//! [`Coordinator::poll_transmit`] until it returns `None`. It reads no clock
//! and does no I/O; tunnel ids and keys come from a seeded RNG.
//!
//! # Group commit
//!
//! [`Coordinator::handle`] commits the store for every datagram: one fsync
//! each on a durable store. A driver that reads datagrams in bursts calls
//! [`Coordinator::receive`] for each of a burst and then
//! [`Coordinator::commit`] once, so a burst costs one write. Answers the
//! burst produced are *held*: [`Coordinator::poll_transmit`] does not give
//! them out until the commit that made their changes durable has
//! succeeded, and a failed commit drops them (the senders retransmit), as
//! [`Coordinator::handle`] does for one datagram. Whatever the driver does,
//! nothing leaves that the store did not take.
//!
//! # Replay protection (§5 "Replay")
//!
//! Every DC-bound datagram is signaling and must be suite 1. The DC keeps one
//! [`ReplayWindow`] per configured node (`K_node`, keyed by the FQDN's slot,
//! so it covers REG_REQ as well as everything else and survives every
//! re-registration of that FQDN for the life of the process) and one per RS
//! (`K_rs`). A datagram is checked against its window after its tag verified
//! and before anything in it is acted on; a replay is dropped and counted as
//! `replay`. Everything the DC sends is built at [`Coordinator::poll_transmit`]
//! with the next sequence number (they start at the Unix time in ns), so a
//! retransmitted ROUTE_DIR or RELAY_DIR is sealed anew and passes the
//! receiver's window.
//!
//! # What survives a restart
//!
//! Everything that outlives a datagram and must not be forgotten lives in
//! the [`DcStore`]: registrations and leases (VIPs stay reserved), each
//! window's high-water mark (a restarted DC refuses everything recorded
//! before; the reasoning is in the [store docs](crate::store)), and the
//! DC's own seq and the tunnel id counter, reserved ahead so that neither
//! repeats. The coordinator commits the store before it answers the
//! datagram that changed it. Direction set-ups (pending and remembered
//! directions, their retransmissions) are not stored: they live seconds,
//! and a DIR_REQ retransmitted across a restart is simply directed again,
//! under a new tunnel id. Relay bindings are the RS's; the DC keeps none.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ntm_proto::retransmit::{Retransmit, RetransmitAction};
use ntm_proto::wire::{
    ErrorMsg, Fqdn, Header, KeepaliveAck, Lease, Message, Packet, RegReq, RegResp, RelayDir, Repr,
    Route, RouteDir, Vip,
};
use ntm_proto::{
    Authenticator, Error, Key, MessageType, Path, ReplayWindow, Role, Status, Suite, WrapLabel,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Config, ConfigError, NodeCred, RelayCred, Settings};
use crate::counters::{DropReason, Drops, Stats};
use crate::store::{
    DcStore, Expiry, Handoff, Mark, MemoryStore, Peer, Registration, RemoteRoute, Reserved,
    StoreError,
};

/// How often registrations, leases and old directions are expired.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long a direction is remembered, so that a retransmitted DIR_REQ gets
/// the same answer. Longer than a node's whole DIR_REQ schedule (7.75 s).
/// A direction whose tunnel is still being set up (pending) is kept until it
/// is not, whatever its age.
pub const DIRECTION_RETENTION: Duration = Duration::from_secs(30);
/// Most directions (pending or remembered) one requesting node may hold
/// (§5): a DIR_REQ beyond gets ROUTE_DIR STATUS EXHAUSTED, for that node
/// alone.
///
/// Remembered directions still age out after [`DIRECTION_RETENTION`], and
/// pending ones stop being pending within seconds (every retransmission
/// schedule is finite), so a node that hits the bound is refused for at
/// most about that long after its burst, and a long-running node is never
/// locked out: it may start 256 new directions per 30 s. We keep refusing (as §5 says) rather than replace
/// the node's oldest remembered direction: replacing would make the bound
/// no bound at all for a node whose directions complete quickly, and would
/// make a retransmitted DIR_REQ of the evicted one create a second tunnel.
/// Nor do we keep directions for the tunnel lifetime (180 s): the memory
/// only serves retransmitted DIR_REQs, which stop after 7.75 s, and a
/// longer memory would only make the bound bite six times harder.
pub const MAX_DIRECTIONS_PER_NODE: usize = 256;
/// A registration lapses after this many missed keep-alive intervals (§5).
pub const MISSED_INTERVALS: u32 = 3;
/// RELAY_DIR transmissions before the RS counts as unreachable. One fewer
/// than the §5 maximum, so that the failure (at 3.75 s) comes while the
/// requesting node still waits for its DIR_REQ (its schedule ends at
/// 7.75 s) and it hears UNREACHABLE instead of timing out.
pub const RELAY_DIR_TRIES: u32 = 4;
/// CN's ROUTE_DIR transmissions on DIRECT and RELAY paths, where MN is the
/// initiator and its answer waits for CN's ROUTE_ACK (see
/// `TunnelState::AwaitingCnAck`). With the §5 maximum of 5 the failure
/// would come 7.75 s after CN's first copy, never before MN's DIR_REQ gives
/// up at 7.75 s. With 4 it comes 3.75 s after CN's first copy: on DIRECT
/// that copy goes out with the DIR_REQ, so MN hears UNREACHABLE by about
/// 3.75 s; on RELAY it follows RELAY_ACK, which itself comes before 3.75 s
/// ([`RELAY_DIR_TRIES`]), so by 7.5 s in the worst case and by about 3.75 s
/// when the RS answers at once.
pub const CN_FIRST_ROUTE_DIR_TRIES: u32 = 4;
/// How far ahead of use the DC reserves its signaling seq in the store.
/// Each restart skips what the last run left unused, about 4 s worth of
/// nanoseconds: nothing, next to the Unix-time start.
pub const SEQ_RESERVE: u64 = 1 << 32;
/// How many tunnel ids the DC reserves in the store at a time; a restart
/// skips what the last run left unused.
pub const TUNNEL_ID_BLOCK: u64 = 4096;
/// How often a DC on a shared store reads what other DCs handed it (the
/// watch delivers into memory; this bounds the delay it adds).
pub const HANDOFF_POLL: Duration = Duration::from_millis(10);
/// The label whose HMAC under a peer key identifies the key in the store
/// (see [`Mark::key_id`]).
const KEY_ID_LABEL: &[u8] = b"ntm-dc replay mark key id";
/// REASON of the ERROR sent to nodes the DC does not know.
const NOT_REGISTERED_REASON: &str = "not registered: send REG_REQ";

/// Where to send a datagram that [`Coordinator::poll_transmit`] wrote (one
/// type for every party of the protocol).
pub use ntm_proto::Transmit;

/// The two ends of a direction request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// The node that sent DIR_REQ.
    Mn,
    /// The node it asked for.
    Cn,
}

/// The path table of §5 applied to two registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPlan {
    /// The path.
    pub path: Path,
    /// Who sends TUN_REQ.
    pub initiator: End,
    /// The ENDPOINT told to MN and to CN; `None` on RELAY, where both get
    /// the RS's address.
    pub endpoints: Option<(SocketAddrV4, SocketAddrV4)>,
}

/// Decide how `mn` reaches `cn` (§5):
///
/// | MN | CN | path | TUN_REQ |
/// |---|---|---|---|
/// | any | not behind NAT | DIRECT | MN → CN's observed address |
/// | not behind NAT | behind NAT | REVERSE | CN → MN's observed address |
/// | behind NAT | same NAT (observed IP) | DIRECT | MN → CN's LOCAL_ADDR |
/// | behind NAT | another NAT | RELAY | both → RS |
pub fn plan_path(mn: &Registration, cn: &Registration) -> PathPlan {
    if !cn.behind_nat() {
        PathPlan {
            path: Path::Direct,
            initiator: End::Mn,
            endpoints: Some((cn.observed, mn.observed)),
        }
    } else if !mn.behind_nat() {
        PathPlan {
            path: Path::Reverse,
            initiator: End::Cn,
            endpoints: Some((cn.observed, mn.observed)),
        }
    } else if mn.observed.ip() == cn.observed.ip() {
        PathPlan {
            path: Path::Direct,
            initiator: End::Mn,
            endpoints: Some((cn.local, mn.local)),
        }
    } else {
        PathPlan {
            path: Path::Relay,
            initiator: End::Mn,
            endpoints: None,
        }
    }
}

/// A snapshot of one directed tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    /// Tunnel id.
    pub tunnel_id: u32,
    /// Its path.
    pub path: Path,
    /// The requester's FQDN.
    pub mn_fqdn: String,
    /// The target's FQDN.
    pub cn_fqdn: String,
    /// Who sends TUN_REQ.
    pub initiator: End,
    /// The RS id on RELAY paths.
    pub relay_id: Option<u32>,
    /// Whether both ROUTE_DIRs went out: at once on REVERSE; on DIRECT
    /// MN's after CN's ROUTE_ACK; on RELAY CN's after RELAY_ACK and MN's
    /// after CN's ROUTE_ACK.
    pub directed: bool,
    /// Whether CN acknowledged its ROUTE_DIR.
    pub acked: bool,
}

#[derive(Debug)]
struct NodeSlot {
    fqdn: String,
    node_id: u32,
    vip: Option<Ipv4Addr>,
    auth: Authenticator,
    /// The fingerprint of its key for its [`Mark`].
    key_id: [u8; 8],
    /// Signaling from the node (REG_REQ included), across registrations of
    /// its FQDN (§2: per sender and key); opened above the stored mark.
    window: ReplayWindow,
    /// Directions it requested that are pending or remembered
    /// ([`MAX_DIRECTIONS_PER_NODE`]).
    directions: usize,
    /// Whether its refusal at the bound was logged (once per episode).
    limit_logged: bool,
}

#[derive(Debug)]
struct RelaySlot {
    id: u32,
    addr: SocketAddrV4,
    auth: Authenticator,
    key_id: [u8; 8],
    window: ReplayWindow,
}

/// The fingerprint of a key in the store: an HMAC under it, so it tells
/// keys apart without telling anything about them.
fn key_id(auth: &Authenticator) -> [u8; 8] {
    let t = auth.tag(KEY_ID_LABEL);
    let mut id = [0; 8];
    id.copy_from_slice(&t[..8]);
    id
}

impl NodeSlot {
    /// A configured node's slot, before it ever registered.
    fn new(n: &NodeCred) -> NodeSlot {
        let auth = Authenticator::new(&n.key);
        NodeSlot {
            fqdn: n.fqdn.clone(),
            node_id: n.node_id,
            vip: n.vip,
            key_id: key_id(&auth),
            auth,
            window: ReplayWindow::new(),
            directions: 0,
            limit_logged: false,
        }
    }
}

impl RelaySlot {
    /// A configured relay's slot.
    fn new(r: &RelayCred) -> RelaySlot {
        let auth = Authenticator::new(&r.key);
        RelaySlot {
            id: r.id,
            addr: r.addr,
            key_id: key_id(&auth),
            auth,
            window: ReplayWindow::new(),
        }
    }
}

#[derive(Debug)]
struct Party {
    node_id: u32,
    fqdn: String,
    vip: Ipv4Addr,
    role: Role,
    endpoint: SocketAddrV4,
}

impl Party {
    fn of(reg: &Registration, role: Role, endpoint: SocketAddrV4) -> Party {
        Party {
            node_id: reg.node_id,
            fqdn: reg.fqdn.clone(),
            vip: reg.vip,
            role,
            endpoint,
        }
    }
}

#[derive(Debug)]
enum TunnelState {
    /// RELAY_DIR outstanding.
    AwaitingRelay { retx: Retransmit },
    /// DIRECT and RELAY (MN is the initiator, CN the responder): CN's
    /// ROUTE_DIR retransmitted until ROUTE_ACK, MN's held back until then,
    /// so that nothing drops MN's first TUN_REQ, each drop costing MN a
    /// 250 ms TUN_REQ retransmission. On DIRECT CN drops a TUN_REQ for a
    /// tunnel it has no ROUTE_DIR for (§5), and with both copies sent at
    /// once MN's TUN_REQ can overtake CN's copy; CN acks only once it has
    /// the tunnel. On RELAY CN sends RELAY_BIND before ROUTE_ACK, so its
    /// binding reaches the RS before MN's TUN_REQ, which the RS would drop
    /// while the tunnel is half bound.
    AwaitingCnAck { retx: Retransmit },
    /// Both ROUTE_DIRs sent. On REVERSE CN's copy is retransmitted until
    /// ROUTE_ACK (`cn_retx`, `None` once acknowledged or given up); on
    /// DIRECT and RELAY CN had acked before (always `None`).
    Directing { cn_retx: Option<Retransmit> },
    /// The RS, or on DIRECT and RELAY the CN, never acknowledged; MN got
    /// UNREACHABLE.
    Failed,
}

#[derive(Debug)]
struct Tunnel {
    id: u32,
    path: Path,
    mn: Party,
    cn: Party,
    /// Where MN's latest DIR_REQ for it came from.
    mn_dst: SocketAddrV4,
    req_id: u32,
    k_tun: Key,
    relay: Option<(usize, Key)>,
    state: TunnelState,
    expires: Instant,
}

impl Tunnel {
    fn pending(&self) -> bool {
        matches!(
            self.state,
            TunnelState::AwaitingRelay { .. }
                | TunnelState::AwaitingCnAck { .. }
                | TunnelState::Directing { cn_retx: Some(_) }
        )
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.state {
            TunnelState::AwaitingRelay { retx } | TunnelState::AwaitingCnAck { retx } => {
                Some(retx.deadline())
            }
            TunnelState::Directing { cn_retx: Some(r) } => Some(r.deadline()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Direction {
    outcome: Result<u32, Status>,
    expires: Instant,
}

/// Datagrams to build at [`Coordinator::poll_transmit`]; built only then so
/// that each carries a fresh sequence number (and a key wrapped for it).
#[derive(Debug, Clone, Copy)]
enum Out {
    RegResp {
        node_id: u32,
        req_id: u32,
        dst: SocketAddrV4,
        result: Result<Lease, Status>,
    },
    KeepaliveAck {
        node_id: u32,
        dst: SocketAddrV4,
    },
    NotRegistered {
        node_id: u32,
        dst: SocketAddrV4,
    },
    RouteDir {
        tunnel_id: u32,
        end: End,
    },
    RouteDirStatus {
        node_id: u32,
        req_id: u32,
        dst: SocketAddrV4,
        status: Status,
    },
    RelayDir {
        tunnel_id: u32,
    },
    /// A ROUTE_DIR another DC directs, for a node registered here.
    RemoteRouteDir {
        tunnel_id: u32,
    },
}

/// A ROUTE_DIR another DC asked this one to send (see [`Handoff`]).
#[derive(Debug)]
struct RemoteDir {
    /// The DC that directs the tunnel (it gets the ROUTE_ACK).
    from: String,
    route: RemoteRoute,
    expires: Instant,
}

impl Out {
    /// A node's answer that needs no tunnel state: the node, where it goes
    /// and the message; `None` for `RouteDir` and `RelayDir`, which are
    /// built from their tunnel.
    fn to_node(self) -> Option<(u32, SocketAddrV4, Message<'static>)> {
        Some(match self {
            Out::RegResp {
                node_id,
                req_id,
                dst,
                result,
            } => (node_id, dst, Message::RegResp(RegResp { req_id, result })),
            Out::KeepaliveAck { node_id, dst } => (
                node_id,
                dst,
                Message::KeepaliveAck(KeepaliveAck { observed: dst }),
            ),
            Out::NotRegistered { node_id, dst } => (
                node_id,
                dst,
                Message::Error(ErrorMsg {
                    status: Status::NotFound,
                    reason: Some(NOT_REGISTERED_REASON),
                }),
            ),
            Out::RouteDirStatus {
                node_id,
                req_id,
                dst,
                status,
            } => (
                node_id,
                dst,
                Message::RouteDir(RouteDir {
                    req_id,
                    result: Err(status),
                }),
            ),
            Out::RouteDir { .. } | Out::RelayDir { .. } | Out::RemoteRouteDir { .. } => {
                return None
            }
        })
    }
}

/// The header of a datagram the DC sends.
fn header(id: u32, seq: u64, response_required: bool) -> Header {
    Header {
        id,
        seq,
        response_required,
    }
}

/// What [`Coordinator::reload`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Nodes added.
    pub added: Vec<String>,
    /// Nodes removed.
    pub removed: Vec<String>,
    /// Nodes whose key (or fixed VIP) changed.
    pub rekeyed: Vec<String>,
    /// Registrations that ended (of removed and re-keyed nodes).
    pub registrations_ended: usize,
    /// Relay ids added.
    pub relays_added: Vec<u32>,
    /// Relay ids removed.
    pub relays_removed: Vec<u32>,
    /// Relay ids whose address or key changed.
    pub relays_rekeyed: Vec<u32>,
    /// Tunnel set-ups forgotten because a node or relay of theirs went.
    pub tunnels_forgotten: usize,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(",")
            }
        };
        let ids = |v: &[u32]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            }
        };
        write!(
            f,
            "nodes added={} removed={} rekeyed={} (registrations ended: {}); relays added={} removed={} rekeyed={}; set-ups forgotten: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.rekeyed),
            self.registrations_ended,
            ids(&self.relays_added),
            ids(&self.relays_removed),
            ids(&self.relays_rekeyed),
            self.tunnels_forgotten
        )
    }
}

/// Why [`Coordinator::reload`] refused a configuration (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It changes settings that only a restart can change.
    #[error("the new configuration changes {0}, which needs a restart (systemctl restart ntm-dc); nothing was reloaded")]
    NeedsRestart(String),
}

/// Why [`Coordinator::with_store`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Coordinator::with_store`] found in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Registrations kept, active and lapsed.
    pub registrations: usize,
    /// Of them, active ones (given a fresh three keep-alive intervals).
    pub active: usize,
    /// Registrations dropped: their node left the configuration, changed
    /// key or fixed VIP, or their VIP is no longer in the pool.
    pub dropped: usize,
    /// Replay windows opened above a stored mark.
    pub marks: usize,
}

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} registrations ({} active), {} dropped, {} replay marks",
            self.registrations, self.active, self.dropped, self.marks
        )
    }
}

/// The DC's protocol state. See the [module docs](self).
#[derive(Debug)]
pub struct Coordinator<S: DcStore = MemoryStore> {
    settings: Settings,
    nodes: Vec<NodeSlot>,
    by_fqdn: HashMap<String, usize>,
    by_id: HashMap<u32, usize>,
    fixed_vips: HashSet<Ipv4Addr>,
    relays: Vec<RelaySlot>,
    next_relay: usize,
    store: S,
    rng: StdRng,
    seq: u64,
    /// The store's reserved counters, as last set.
    reserved: Reserved,
    /// The next tunnel id counter value (below `reserved.tunnel_ids`).
    next_tunnel: u64,
    /// Set by a datagram whose replay mark must be durable before its
    /// answer (REG_REQ, DEREG, DIR_REQ).
    sync_marks: bool,
    /// Whether the last commit failed (logged once per episode).
    store_failing: bool,
    /// How many entries at the back of `queue` answer datagrams whose
    /// changes are not committed yet: [`Coordinator::poll_transmit`]
    /// leaves them until [`Coordinator::commit`].
    held: usize,
    /// Datagrams accepted since the last commit (each counts as a `store`
    /// drop if the commit fails).
    held_ok: u64,
    /// Whether a datagram was received since the last commit.
    uncommitted: bool,
    /// What the store held at start.
    restored: Restored,
    tunnels: HashMap<u32, Tunnel>,
    /// ROUTE_DIRs other DCs direct for nodes registered here, by tunnel.
    remote_dirs: HashMap<u32, RemoteDir>,
    /// When to read the shared store's handoffs next.
    next_handoffs: Instant,
    directions: HashMap<(u32, u32), Direction>,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    next_sweep: Instant,
    queue: VecDeque<Out>,
    drops: Drops,
    stats: Stats,
}

impl Coordinator<MemoryStore> {
    /// A coordinator with registrations in memory. `unix_nanos` is the
    /// current Unix time in nanoseconds (the DC's sequence numbers start
    /// there, §2); `rng_seed` seeds tunnel ids and keys.
    pub fn new(
        config: &Config,
        now: Instant,
        unix_nanos: u64,
        rng_seed: [u8; 32],
    ) -> Result<Self, ConfigError> {
        Self::assemble(config, MemoryStore::new(), now, unix_nanos, rng_seed)
    }
}

impl<S: DcStore> Coordinator<S> {
    /// A coordinator on another [`DcStore`], carrying on from what it
    /// holds (see the [module docs](self), "What survives a restart"):
    /// registrations of nodes still configured with the same key, VIP
    /// rules and pool are kept (active ones get a fresh three keep-alive
    /// intervals: the DC could not hear keep-alives while it was down),
    /// windows open above their marks, and the DC's seq and tunnel ids
    /// continue above what the last run reserved. Writes the store once
    /// before it returns.
    pub fn with_store(
        config: &Config,
        store: S,
        now: Instant,
        unix_nanos: u64,
        rng_seed: [u8; 32],
    ) -> Result<Self, StartError> {
        let mut dc = Self::assemble(config, store, now, unix_nanos, rng_seed)?;
        dc.store.commit_all()?;
        Ok(dc)
    }

    fn assemble(
        config: &Config,
        store: S,
        now: Instant,
        unix_nanos: u64,
        rng_seed: [u8; 32],
    ) -> Result<Self, ConfigError> {
        let settings = config.validate()?;
        let mut dc = Coordinator {
            by_fqdn: HashMap::new(),
            by_id: HashMap::new(),
            fixed_vips: HashSet::new(),
            nodes: settings.nodes.iter().map(NodeSlot::new).collect(),
            relays: settings.relays.iter().map(RelaySlot::new).collect(),
            next_relay: 0,
            settings,
            store,
            rng: StdRng::from_seed(rng_seed),
            seq: unix_nanos,
            reserved: Reserved::default(),
            next_tunnel: 0,
            sync_marks: false,
            store_failing: false,
            held: 0,
            held_ok: 0,
            uncommitted: false,
            restored: Restored::default(),
            tunnels: HashMap::new(),
            remote_dirs: HashMap::new(),
            next_handoffs: now,
            directions: HashMap::new(),
            timers: BinaryHeap::new(),
            next_sweep: now + SWEEP_INTERVAL,
            queue: VecDeque::new(),
            drops: Drops::default(),
            stats: Stats::default(),
        };
        dc.index_nodes();
        dc.reserve_counters(unix_nanos);
        dc.restore(now);
        Ok(dc)
    }

    /// Continues the DC's seq and the tunnel id counter above what the
    /// store reserved, and reserves the next stretch.
    fn reserve_counters(&mut self, unix_nanos: u64) {
        let old = self.store.reserved();
        // A clock stepped back across a restart must not repeat a seq.
        self.seq = unix_nanos.max(old.seq);
        let mut salt = old.tunnel_salt;
        while salt == 0 {
            salt = self.rng.next_u32();
        }
        self.reserved = Reserved {
            seq: self.seq + SEQ_RESERVE,
            tunnel_ids: 0,
            tunnel_salt: salt,
        };
        self.store.set_reserved(Reserved {
            seq: self.reserved.seq,
            tunnel_salt: salt,
            ..old
        });
        self.reserve_tunnel_block();
    }

    /// The next block of tunnel ids from the store (on a shared store,
    /// a block no other DC gets); false if the store could not reserve.
    fn reserve_tunnel_block(&mut self) -> bool {
        match self.store.reserve_tunnel_ids(TUNNEL_ID_BLOCK) {
            Ok(first) => {
                self.next_tunnel = first;
                self.reserved.tunnel_ids = first + TUNNEL_ID_BLOCK;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reserve tunnel ids; directions are refused until the store answers");
                false
            }
        }
    }

    /// Moves the DC's seq up to `floor` (reserving ahead in the store,
    /// written with the current burst).
    fn raise_seq(&mut self, floor: u64) {
        if floor <= self.seq {
            return;
        }
        self.seq = floor;
        if self.seq >= self.reserved.seq {
            self.reserved.seq = self.seq + SEQ_RESERVE;
            let r = Reserved {
                seq: self.reserved.seq,
                ..self.store.reserved()
            };
            self.store.set_reserved(r);
        }
    }

    /// A node registered at another DC talks to this one (it failed over):
    /// what this DC sends it from now on goes above what that DC may have
    /// sent (the node keeps one replay window for its DC).
    fn take_over(&mut self, node_id: u32) {
        if let Some(floor) = self.store.takeover_seq(node_id) {
            self.stats.takeovers += 1;
            tracing::info!(node_id, from = ?self.store.remote_home(node_id), "node moved here from another DC");
            self.raise_seq(floor);
        }
    }

    /// On a shared store, opens node slot `i`'s window above the mark
    /// another DC recorded (the node talked to it since).
    fn catch_up_window(&mut self, i: usize) {
        if !self.store.shared() {
            return;
        }
        let slot = &mut self.nodes[i];
        if let Some(m) = self.store.mark(Peer::Node(slot.node_id)) {
            if m.key_id == slot.key_id && m.seq > slot.window.last() {
                slot.window = ReplayWindow::above(m.seq);
            }
        }
    }

    /// Keeps the stored registrations and marks that still fit the
    /// configuration (see [`Coordinator::with_store`]).
    fn restore(&mut self, now: Instant) {
        let mut r = Restored::default();
        let mut rekeyed = HashSet::new();
        for (peer, mark) in self.store.marks() {
            let slot_key = match peer {
                Peer::Node(id) => self.by_id.get(&id).map(|&i| {
                    let slot = &mut self.nodes[i];
                    (slot.key_id, &mut slot.window)
                }),
                Peer::Relay(id) => self
                    .relays
                    .iter_mut()
                    .find(|s| s.id == id)
                    .map(|s| (s.key_id, &mut s.window)),
            };
            match slot_key {
                Some((key_id, window)) if key_id == mark.key_id => {
                    *window = ReplayWindow::above(mark.seq);
                    r.marks += 1;
                }
                _ => {
                    // A key changed or left the configuration while the
                    // DC was stopped: its window starts afresh, as on a
                    // reload.
                    self.store.forget_mark(peer);
                    if let Peer::Node(id) = peer {
                        rekeyed.insert(id);
                    }
                }
            }
        }
        let alive_until = self.alive_until(now);
        for mut reg in self.store.registrations() {
            if self.store.remote_home(reg.node_id).is_some() {
                // Another DC's node: that DC keeps it.
                continue;
            }
            if let Some(why) = self.unfit(&reg, &rekeyed) {
                tracing::info!(fqdn = %reg.fqdn, vip = %reg.vip, "stored registration dropped: {why}");
                self.store.remove(reg.node_id);
                r.dropped += 1;
                continue;
            }
            r.registrations += 1;
            if let Some(t) = reg.alive_until {
                r.active += 1;
                reg.alive_until = Some(t.max(alive_until));
                reg.lease_until = reg.lease_until.max(alive_until);
                self.store.put(reg);
            }
        }
        self.restored = r;
    }

    /// Why a stored registration no longer fits the configuration.
    fn unfit(&self, reg: &Registration, rekeyed: &HashSet<u32>) -> Option<&'static str> {
        let Some(&i) = self.by_id.get(&reg.node_id) else {
            return Some("its node is no longer configured");
        };
        let slot = &self.nodes[i];
        if slot.fqdn != reg.fqdn {
            return Some("its node id now belongs to another FQDN");
        }
        if rekeyed.contains(&reg.node_id) {
            return Some("its node's key changed");
        }
        let pool = &self.settings.pool;
        if !pool.contains(reg.vip) || !pool.is_assignable(reg.vip) {
            return Some("its VIP is no longer assignable in vip_pool");
        }
        match slot.vip {
            Some(fixed) if fixed != reg.vip => Some("its node has another fixed VIP"),
            None if self.fixed_vips.contains(&reg.vip) => {
                Some("its VIP is now another node's fixed VIP")
            }
            _ => None,
        }
    }

    /// What the store held at start.
    pub fn restored(&self) -> &Restored {
        &self.restored
    }

    /// Indexes the node slots by FQDN and node id, and their fixed VIPs.
    fn index_nodes(&mut self) {
        let slots = self.nodes.iter().enumerate();
        self.by_fqdn = slots.clone().map(|(i, n)| (n.fqdn.clone(), i)).collect();
        self.by_id = slots.map(|(i, n)| (n.node_id, i)).collect();
        self.fixed_vips = self.nodes.iter().filter_map(|n| n.vip).collect();
    }

    // ----- inputs -------------------------------------------------------

    /// Process one datagram received from `from` and commit the store
    /// ([`Coordinator::receive`] then [`Coordinator::commit`]). An error is
    /// a drop, already counted in [`Coordinator::drops`].
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &[u8],
    ) -> Result<(), DropReason> {
        let r = self.receive(now, from, datagram);
        // A failed commit is counted by `commit` for a datagram that was
        // otherwise fine; one dropped for its own reason keeps it.
        let c = self.commit();
        r.and(c)
    }

    /// Process one datagram of a burst without committing: its answers are
    /// held until [`Coordinator::commit`] (see the [module docs](self),
    /// "Group commit"). An error is a drop, already counted.
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &[u8],
    ) -> Result<(), DropReason> {
        self.stats.datagrams += 1;
        self.uncommitted = true;
        let queued = self.queue.len();
        let r = self.handle_inner(now, from, datagram);
        // Only pushes happen while handling a datagram.
        self.held += self.queue.len().saturating_sub(queued);
        match r {
            Ok(()) => self.held_ok += 1,
            Err(reason) => {
                self.drops.count(reason);
                tracing::debug!(%from, reason = reason.name(), "dropped a datagram");
            }
        }
        r
    }

    /// Make durable what the datagrams received since the last commit
    /// changed, in one store transaction, and release their answers to
    /// [`Coordinator::poll_transmit`]. On failure their answers are
    /// dropped and each of them counts as a `store` drop; the changes stay
    /// in memory for the next commit, and the senders retransmit: the
    /// error is [`DropReason::Store`].
    pub fn commit(&mut self) -> Result<(), DropReason> {
        // Durable before answered (see the store docs on marks).
        let all = std::mem::take(&mut self.sync_marks);
        let held = std::mem::take(&mut self.held);
        let accepted = std::mem::take(&mut self.held_ok);
        if !std::mem::take(&mut self.uncommitted) {
            return Ok(());
        }
        let committed = if all {
            self.store.commit_all()
        } else {
            self.store.commit()
        };
        self.stats.commits += 1;
        let r = self.store_result(committed);
        if r.is_err() {
            self.queue.truncate(self.queue.len().saturating_sub(held));
            for _ in 0..accepted {
                self.drops.count(DropReason::Store);
            }
        }
        r.map_err(|()| DropReason::Store)
    }

    fn handle_inner(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &[u8],
    ) -> Result<(), DropReason> {
        let packet = Packet::new_checked(datagram)?;
        let kind = packet.check_header()?;
        if packet.suite() != Suite::HmacSha256_128 {
            // Everything the DC receives is signaling: suite 1 (§2).
            return Err(Error::UnsupportedSuite.into());
        }
        match kind {
            MessageType::RegReq => self.on_reg_req(now, from, &packet),
            MessageType::Keepalive
            | MessageType::Dereg
            | MessageType::DirReq
            | MessageType::RouteAck => self.on_node_message(now, from, &packet),
            MessageType::RelayAck => self.on_relay_message(now, &packet),
            MessageType::Error => {
                let from_rs = self
                    .relays
                    .iter()
                    .any(|r| r.id == packet.id() && r.addr == from);
                if from_rs {
                    self.on_relay_message(now, &packet)
                } else {
                    self.on_node_message(now, from, &packet)
                }
            }
            _ => Err(Error::UnexpectedType.into()),
        }
    }

    /// Logs a failing store once per episode, and its recovery.
    fn store_result(&mut self, r: Result<(), StoreError>) -> Result<(), ()> {
        match r {
            Ok(()) => {
                if std::mem::replace(&mut self.store_failing, false) {
                    tracing::info!("the store is written again");
                }
                Ok(())
            }
            Err(e) => {
                if !std::mem::replace(&mut self.store_failing, true) {
                    tracing::error!(error = %e, "cannot write the store: changes are held in memory and datagrams that made them are not answered until it works again");
                }
                Err(())
            }
        }
    }

    fn alive_until(&self, now: Instant) -> Instant {
        now + self.settings.keepalive * MISSED_INTERVALS
    }

    fn on_reg_req(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        packet: &Packet<&[u8]>,
    ) -> Result<(), DropReason> {
        // The FQDN chooses the key, so this one message is parsed before its
        // tag is checked (§2); nothing is acted on before.
        let repr = Repr::parse(packet)?;
        let Message::RegReq(req) = repr.message else {
            return Err(Error::UnexpectedType.into());
        };
        let i = self.authenticate_reg(&req, repr.header.seq, packet)?;
        let node_id = self.nodes[i].node_id;
        let existing = self.store.get(node_id);
        let vip = match &existing {
            Some(r) => Some(r.vip),
            None if self.store.len() >= self.settings.max_registrations => None,
            None => self.allocate(i),
        };
        let Some(vip) = vip else {
            self.refuse_registration(&req, node_id, from);
            return Ok(());
        };
        let alive_until = self.alive_until(now);
        let reg = Registration {
            node_id,
            fqdn: req.fqdn.as_str().to_owned(),
            vip,
            observed: from,
            local: req.local_addr,
            caps: req.caps,
            alive_until: Some(alive_until),
            lease_until: (now + self.settings.lease).max(alive_until),
        };
        self.count_registration(existing.as_ref(), &reg);
        self.store.put(reg);
        self.queue.push_back(Out::RegResp {
            node_id,
            req_id: req.req_id,
            dst: from,
            result: Ok(self.lease(node_id, vip, from)),
        });
        Ok(())
    }

    /// The slot of REG_REQ's FQDN, once its tag verified with that node's
    /// key and its sequence number passed the node's replay window.
    fn authenticate_reg(
        &mut self,
        req: &RegReq<'_>,
        seq: u64,
        packet: &Packet<&[u8]>,
    ) -> Result<usize, DropReason> {
        let i = *self
            .by_fqdn
            .get(req.fqdn.as_str())
            .ok_or(DropReason::UnknownFqdn)?;
        self.nodes[i].auth.verify(packet.as_ref())?;
        self.catch_up_window(i);
        let slot = &mut self.nodes[i];
        if !slot.window.validate(seq) {
            return Err(Error::Replay.into());
        }
        let mark = Mark {
            seq: slot.window.last(),
            key_id: slot.key_id,
        };
        let node_id = slot.node_id;
        self.store.set_mark(Peer::Node(node_id), mark);
        self.sync_marks = true;
        self.take_over(node_id);
        Ok(i)
    }

    /// REG_RESP EXHAUSTED: no VIP or no room for another lease.
    fn refuse_registration(&mut self, req: &RegReq<'_>, node_id: u32, from: SocketAddrV4) {
        self.stats.refused += 1;
        tracing::warn!(
            fqdn = %req.fqdn,
            pool = %self.settings.pool,
            leases = self.store.len(),
            "registration refused (EXHAUSTED): the VIP pool or max_registrations is full; enlarge vip_pool or max_registrations"
        );
        self.queue.push_back(Out::RegResp {
            node_id,
            req_id: req.req_id,
            dst: from,
            result: Err(Status::Exhausted),
        });
    }

    /// Counts and logs a registration: new, or the renewal of an active one.
    fn count_registration(&mut self, existing: Option<&Registration>, reg: &Registration) {
        let (fqdn, vip, from, local) = (&reg.fqdn, reg.vip, reg.observed, reg.local);
        let behind_nat = reg.behind_nat();
        match existing {
            Some(old) if old.is_active() => {
                self.stats.renewals += 1;
                if old.observed != from || old.local != local {
                    tracing::info!(%fqdn, %vip, observed = %from, %local, behind_nat, "re-registered from a new address");
                } else {
                    tracing::debug!(%fqdn, %vip, "registration renewed");
                }
            }
            _ => {
                self.stats.registrations += 1;
                let node_id = reg.node_id;
                tracing::info!(%fqdn, node_id, %vip, observed = %from, %local, behind_nat, "registered");
            }
        }
    }

    /// The lease REG_RESP gives a node registered from `from`.
    fn lease(&self, node_id: u32, vip: Ipv4Addr, from: SocketAddrV4) -> Lease {
        Lease {
            node_id,
            vip: Vip {
                addr: vip,
                prefix_len: self.settings.pool.prefix_len(),
            },
            observed: from,
            keepalive_secs: self.settings.keepalive.as_secs() as u32,
            lifetime_secs: self.settings.lease.as_secs() as u32,
        }
    }

    /// A VIP for node slot `i`: its fixed one, or the first free one from
    /// its FQDN's preferred address (never another node's fixed VIP).
    fn allocate(&self, i: usize) -> Option<Ipv4Addr> {
        let slot = &self.nodes[i];
        if let Some(vip) = slot.vip {
            return match self.store.vip_owner(vip) {
                Some(owner) if owner != slot.node_id => None,
                _ => Some(vip),
            };
        }
        let in_use = (self.store.len() + self.fixed_vips.len()) as u64;
        self.settings.pool.allocate(&slot.fqdn, in_use, |ip| {
            self.fixed_vips.contains(&ip) || self.store.vip_owner(ip).is_some()
        })
    }

    fn on_node_message(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        packet: &Packet<&[u8]>,
    ) -> Result<(), DropReason> {
        let node_id = packet.id();
        let i = *self.by_id.get(&node_id).ok_or(DropReason::UnknownNode)?;
        self.nodes[i].auth.verify(packet.as_ref())?;
        let repr = Repr::parse(packet)?;
        self.catch_up_window(i);
        let slot = &mut self.nodes[i];
        if !slot.window.validate(repr.header.seq) {
            return Err(Error::Replay.into());
        }
        let mark = Mark {
            seq: slot.window.last(),
            key_id: slot.key_id,
        };
        self.store.set_mark(Peer::Node(node_id), mark);
        self.take_over(node_id);
        // `|=`: an earlier datagram of the same burst may have set it.
        self.sync_marks |= matches!(repr.message, Message::Dereg | Message::DirReq(_));
        let Some(mut reg) = self.store.get(node_id).filter(Registration::is_active) else {
            // A restarted DC, or a lapsed registration: tell the node, so it
            // re-registers at once instead of after its own time-out.
            if !matches!(repr.message, Message::Dereg | Message::Error(_)) {
                self.stats.errors_sent += 1;
                tracing::info!(fqdn = %self.nodes[i].fqdn, %from, "message from an unregistered node, answering ERROR so that it re-registers");
                self.queue
                    .push_back(Out::NotRegistered { node_id, dst: from });
            }
            return Err(DropReason::Unregistered);
        };
        // Any authenticated message shows the node is alive.
        let alive_until = self.alive_until(now);
        reg.alive_until = Some(alive_until);
        reg.lease_until = reg.lease_until.max(alive_until);
        match repr.message {
            Message::Keepalive => {
                self.stats.keepalives += 1;
                if reg.observed != from {
                    tracing::info!(fqdn = %reg.fqdn, old = %reg.observed, new = %from, "keep-alive from a new address (NAT mapping changed)");
                    reg.observed = from;
                }
                self.store.put(reg);
                self.queue
                    .push_back(Out::KeepaliveAck { node_id, dst: from });
                Ok(())
            }
            Message::Dereg => {
                self.stats.deregistrations += 1;
                tracing::info!(fqdn = %reg.fqdn, vip = %reg.vip, "deregistered (VIP reserved until the lease ends)");
                reg.alive_until = None;
                self.store.put(reg);
                Ok(())
            }
            Message::DirReq(q) => {
                self.store.put(reg.clone());
                self.on_dir_req(now, from, &reg, q.req_id, q.fqdn.as_str());
                Ok(())
            }
            Message::RouteAck(a) => {
                self.store.put(reg);
                self.on_route_ack(node_id, a.tunnel_id)
            }
            Message::Error(e) => {
                self.store.put(reg);
                self.stats.errors_received += 1;
                tracing::warn!(fqdn = %self.nodes[i].fqdn, status = ?e.status, reason = e.reason.unwrap_or(""), "ERROR from a node");
                Ok(())
            }
            _ => Err(Error::UnexpectedType.into()),
        }
    }

    fn on_dir_req(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        mn: &Registration,
        req_id: u32,
        target: &str,
    ) {
        let key = (mn.node_id, req_id);
        if let Some(d) = self.directions.get(&key).copied() {
            // A retransmitted DIR_REQ: the same answer, no second tunnel.
            self.stats.dir_req_repeats += 1;
            self.answer_again(from, mn, req_id, d.outcome);
            return;
        }
        self.stats.dir_reqs += 1;
        if self.directions_exhausted(mn) {
            self.stats.dir_refused += 1;
            self.route_dir_status(mn.node_id, req_id, from, Status::Exhausted);
            return;
        }
        let outcome = self.direct(now, from, mn, req_id, target);
        if let Err(status) = outcome {
            if status == Status::NotFound {
                self.stats.not_found += 1;
            } else {
                self.stats.dir_refused += 1;
            }
            self.route_dir_status(mn.node_id, req_id, from, status);
        }
        self.directions.insert(
            key,
            Direction {
                outcome,
                expires: now + DIRECTION_RETENTION,
            },
        );
        self.nodes[self.by_id[&mn.node_id]].directions += 1;
    }

    /// A retransmitted DIR_REQ from `from`: the answer of its direction again.
    fn answer_again(
        &mut self,
        from: SocketAddrV4,
        mn: &Registration,
        req_id: u32,
        outcome: Result<u32, Status>,
    ) {
        match outcome {
            Ok(tunnel_id) => {
                if let Some(t) = self.tunnels.get_mut(&tunnel_id) {
                    t.mn_dst = from;
                    if matches!(t.state, TunnelState::Directing { .. }) {
                        self.queue.push_back(Out::RouteDir {
                            tunnel_id,
                            end: End::Mn,
                        });
                    }
                    // Awaiting the RS or CN's ROUTE_ACK: the answer
                    // goes out then, to this latest address.
                }
            }
            Err(status) => self.route_dir_status(mn.node_id, req_id, from, status),
        }
    }

    /// Whether a new direction for `mn` must be refused (EXHAUSTED): the
    /// node holds [`MAX_DIRECTIONS_PER_NODE`], or the DC `max_directions`.
    fn directions_exhausted(&mut self, mn: &Registration) -> bool {
        let slot = &mut self.nodes[self.by_id[&mn.node_id]];
        if slot.directions >= MAX_DIRECTIONS_PER_NODE {
            self.stats.dir_node_limit += 1;
            if !std::mem::replace(&mut slot.limit_logged, true) {
                tracing::warn!(
                    fqdn = %mn.fqdn,
                    limit = MAX_DIRECTIONS_PER_NODE,
                    retention_secs = DIRECTION_RETENTION.as_secs(),
                    "direction refused (EXHAUSTED): this node already has {MAX_DIRECTIONS_PER_NODE} pending or recent directions; it is refused until some age out"
                );
            }
            return true;
        }
        if self.directions.len() >= self.settings.max_directions {
            tracing::warn!(
                max_directions = self.settings.max_directions,
                "direction refused (EXHAUSTED): too many recent directions; raise max_directions"
            );
            return true;
        }
        false
    }

    /// Queues ROUTE_DIR with `status` (no tunnel) for DIR_REQ `req_id`.
    fn route_dir_status(&mut self, node_id: u32, req_id: u32, dst: SocketAddrV4, status: Status) {
        self.queue.push_back(Out::RouteDirStatus {
            node_id,
            req_id,
            dst,
            status,
        });
    }

    /// Create the tunnel for a new DIR_REQ and queue what it needs.
    fn direct(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        mn: &Registration,
        req_id: u32,
        target: &str,
    ) -> Result<u32, Status> {
        let cn = self.direction_target(mn, target)?;
        let plan = plan_path(mn, &cn);
        let relay = self.choose_relay(&plan, mn, &cn)?;
        let Some(tunnel_id) = self.fresh_tunnel_id() else {
            return Err(Status::Internal);
        };
        let k_tun = Key::random(&mut self.rng);
        let relay = relay.map(|r| (r, Key::random(&mut self.rng)));
        let (mn_endpoint, cn_endpoint) = match (&relay, plan.endpoints) {
            (Some((r, _)), _) => (self.relays[*r].addr, self.relays[*r].addr),
            (None, Some(e)) => e,
            (None, None) => unreachable!("plan_path gives endpoints for every path but RELAY"),
        };
        let (mn_role, cn_role) = match plan.initiator {
            End::Mn => (Role::Initiator, Role::Responder),
            End::Cn => (Role::Responder, Role::Initiator),
        };
        let state = self.queue_first_messages(now, tunnel_id, relay.is_some(), plan.initiator);
        match plan.path {
            Path::Direct => self.stats.direct += 1,
            Path::Reverse => self.stats.reverse += 1,
            _ => self.stats.relayed += 1,
        }
        tracing::info!(
            tunnel_id,
            mn = %mn.fqdn,
            cn = %cn.fqdn,
            path = ?plan.path,
            mn_endpoint = %mn_endpoint,
            cn_endpoint = %cn_endpoint,
            relay = relay.as_ref().map(|(r, _)| self.relays[*r].id),
            "directing a tunnel"
        );
        let tunnel = Tunnel {
            id: tunnel_id,
            path: plan.path,
            mn: Party::of(mn, mn_role, mn_endpoint),
            cn: Party::of(&cn, cn_role, cn_endpoint),
            mn_dst: from,
            req_id,
            k_tun,
            relay,
            state,
            expires: now + DIRECTION_RETENTION,
        };
        if let Some(d) = tunnel.deadline() {
            self.timers.push(Reverse((d, tunnel_id)));
        }
        self.tunnels.insert(tunnel_id, tunnel);
        Ok(tunnel_id)
    }

    /// The active registration `mn` asks a tunnel to: NOT_FOUND without
    /// one, BAD_REQUEST for `mn` itself.
    fn direction_target(&self, mn: &Registration, target: &str) -> Result<Registration, Status> {
        let Some(cn) = self
            .store
            .get_by_fqdn(target)
            .filter(Registration::is_active)
        else {
            tracing::info!(mn = %mn.fqdn, target, "direction request for an unknown or unregistered name: NOT_FOUND");
            return Err(Status::NotFound);
        };
        if cn.node_id == mn.node_id {
            tracing::info!(mn = %mn.fqdn, "direction request for the node itself: BAD_REQUEST");
            return Err(Status::BadRequest);
        }
        Ok(cn)
    }

    /// The relay a RELAY path goes through (round robin), `None` on the
    /// other paths; UNREACHABLE when none is configured.
    fn choose_relay(
        &mut self,
        plan: &PathPlan,
        mn: &Registration,
        cn: &Registration,
    ) -> Result<Option<usize>, Status> {
        match plan.path {
            Path::Relay if self.relays.is_empty() => {
                tracing::warn!(mn = %mn.fqdn, cn = %cn.fqdn, "both nodes are behind different NATs and no [[relay]] is configured: UNREACHABLE");
                Err(Status::Unreachable)
            }
            Path::Relay => {
                let r = self.next_relay % self.relays.len();
                self.next_relay = self.next_relay.wrapping_add(1);
                Ok(Some(r))
            }
            _ => Ok(None),
        }
    }

    /// Queues a new tunnel's first messages and gives its state.
    fn queue_first_messages(
        &mut self,
        now: Instant,
        tunnel_id: u32,
        relayed: bool,
        initiator: End,
    ) -> TunnelState {
        if relayed {
            self.queue.push_back(Out::RelayDir { tunnel_id });
            TunnelState::AwaitingRelay {
                retx: Retransmit::start(now),
            }
        } else if initiator == End::Mn {
            // DIRECT: the responder (CN) first, MN on its ROUTE_ACK.
            self.queue.push_back(Out::RouteDir {
                tunnel_id,
                end: End::Cn,
            });
            TunnelState::AwaitingCnAck {
                retx: Retransmit::start(now),
            }
        } else {
            // REVERSE: the responder is MN, whose copy answers its DIR_REQ
            // and is never acknowledged, so there is nothing to wait for;
            // holding CN's copy for a guessed time would delay every
            // set-up. Both go out at once, MN's first: CN's TUN_REQ then
            // travels DC -> CN -> MN, a hop and CN's processing longer
            // than MN's copy (DC -> MN), so it rarely arrives first, and
            // if it does (or MN's copy is lost) MN drops it as §5 says and
            // CN retransmits it, as it would for any loss.
            self.queue.push_back(Out::RouteDir {
                tunnel_id,
                end: End::Mn,
            });
            self.queue.push_back(Out::RouteDir {
                tunnel_id,
                end: End::Cn,
            });
            TunnelState::Directing {
                cn_retx: Some(Retransmit::start(now)),
            }
        }
    }

    /// The next tunnel id: the counter, scrambled with the store's salt
    /// (a bijection, so no id comes twice before the counter wraps at
    /// 2^32, and ids do not show how many tunnels the DC directed). A new
    /// block is reserved in the store, written with the DIR_REQ's commit,
    /// before the counter leaves the reserved one.
    fn fresh_tunnel_id(&mut self) -> Option<u32> {
        loop {
            if self.next_tunnel >= self.reserved.tunnel_ids && !self.reserve_tunnel_block() {
                return None;
            }
            let n = self.next_tunnel as u32;
            self.next_tunnel += 1;
            let id = n.wrapping_mul(0x9e37_79b9) ^ self.reserved.tunnel_salt;
            // After a wrap, skip ids still remembered.
            if id != 0 && !self.tunnels.contains_key(&id) {
                return Some(id);
            }
        }
    }

    fn on_route_ack(&mut self, node_id: u32, tunnel_id: u32) -> Result<(), DropReason> {
        if !self.tunnels.contains_key(&tunnel_id) {
            if let Some(d) =
                (self.remote_dirs.get(&tunnel_id)).filter(|d| d.route.node_id == node_id)
            {
                // Another DC directs this tunnel: the ack is its.
                let from = d.from.clone();
                self.store
                    .post(&from, Handoff::RouteAck { tunnel_id, node_id });
                self.stats.handoffs_sent += 1;
                self.stats.route_acks += 1;
                return Ok(());
            }
        }
        let t = self
            .tunnels
            .get_mut(&tunnel_id)
            .filter(|t| t.cn.node_id == node_id)
            .ok_or(DropReason::StaleAck)?;
        match &mut t.state {
            TunnelState::Directing { cn_retx } if cn_retx.is_some() => {
                *cn_retx = None;
                self.stats.route_acks += 1;
                tracing::debug!(tunnel_id, cn = %t.cn.fqdn, "ROUTE_ACK");
                Ok(())
            }
            TunnelState::AwaitingCnAck { .. } => {
                // CN knows the tunnel (on RELAY it has sent its RELAY_BIND
                // too): now MN may send TUN_REQ.
                t.state = TunnelState::Directing { cn_retx: None };
                self.stats.route_acks += 1;
                tracing::debug!(tunnel_id, cn = %t.cn.fqdn, "ROUTE_ACK, answering MN");
                self.queue.push_back(Out::RouteDir {
                    tunnel_id,
                    end: End::Mn,
                });
                Ok(())
            }
            _ => Err(DropReason::StaleAck),
        }
    }

    fn on_relay_message(&mut self, now: Instant, packet: &Packet<&[u8]>) -> Result<(), DropReason> {
        let r = self
            .relays
            .iter()
            .position(|r| r.id == packet.id())
            .ok_or(DropReason::UnknownRelay)?;
        let slot = &mut self.relays[r];
        slot.auth.verify(packet.as_ref())?;
        let repr = Repr::parse(packet)?;
        if !slot.window.validate(repr.header.seq) {
            return Err(Error::Replay.into());
        }
        let mark = Mark {
            seq: slot.window.last(),
            key_id: slot.key_id,
        };
        self.store.set_mark(Peer::Relay(slot.id), mark);
        match repr.message {
            Message::RelayAck(a) => {
                let t = self
                    .tunnels
                    .get_mut(&a.tunnel_id)
                    .filter(|t| t.relay.as_ref().is_some_and(|(i, _)| *i == r))
                    .ok_or(DropReason::StaleAck)?;
                if !matches!(t.state, TunnelState::AwaitingRelay { .. }) {
                    return Err(DropReason::StaleAck);
                }
                self.stats.relay_acks += 1;
                let retx = Retransmit::start(now);
                self.timers.push(Reverse((retx.deadline(), t.id)));
                // MN's copy waits for CN's ROUTE_ACK (see AwaitingCnAck).
                t.state = TunnelState::AwaitingCnAck { retx };
                tracing::debug!(tunnel_id = t.id, rs = repr.header.id, "RELAY_ACK");
                self.queue.push_back(Out::RouteDir {
                    tunnel_id: a.tunnel_id,
                    end: End::Cn,
                });
                Ok(())
            }
            Message::Error(e) => {
                self.stats.errors_received += 1;
                tracing::warn!(rs = repr.header.id, status = ?e.status, reason = e.reason.unwrap_or(""), "ERROR from a relay server");
                Ok(())
            }
            _ => Err(Error::UnexpectedType.into()),
        }
    }

    // ----- timers -------------------------------------------------------

    /// When [`Coordinator::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.timers.peek().map(|Reverse((t, _))| *t);
        let mut at = next.map_or(self.next_sweep, |t| t.min(self.next_sweep));
        if self.store.shared() {
            at = at.min(self.next_handoffs);
        }
        Some(at)
    }

    /// Run what is due at `now`: retransmissions, expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        // A burst the driver did not commit: commit it now, so that what
        // the timers queue is not mixed with held answers.
        let _ = self.commit();
        if self.store.shared() && now >= self.next_handoffs {
            self.next_handoffs = now + HANDOFF_POLL;
            // What the last poll_transmit posted, then what others posted.
            let r = self.store.commit();
            let _ = self.store_result(r);
            self.on_handoffs(now);
        }
        while let Some(&Reverse((at, tunnel_id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.tunnel_timer(now, tunnel_id);
        }
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + SWEEP_INTERVAL;
        }
    }

    /// What other DCs handed this one through the shared store.
    fn on_handoffs(&mut self, now: Instant) {
        for (from, h) in self.store.take_handoffs() {
            self.stats.handoffs_received += 1;
            match h {
                Handoff::RouteDir(route) => {
                    let id = route.node_id;
                    let here = self.by_id.contains_key(&id)
                        && self.store.remote_home(id).is_none()
                        && self.store.get(id).is_some_and(|r| r.is_active());
                    if !here {
                        tracing::debug!(%from, node_id = id, "ROUTE_DIR handed for a node not registered here; the directing DC retransmits to its new home");
                        continue;
                    }
                    let tunnel_id = route.tunnel_id;
                    let expires = now + DIRECTION_RETENTION;
                    let d = RemoteDir {
                        from,
                        route,
                        expires,
                    };
                    self.remote_dirs.insert(tunnel_id, d);
                    self.queue.push_back(Out::RemoteRouteDir { tunnel_id });
                }
                Handoff::RouteAck { tunnel_id, node_id } => {
                    if let Err(r) = self.on_route_ack(node_id, tunnel_id) {
                        tracing::debug!(%from, tunnel_id, reason = r.name(), "ROUTE_ACK handed by another DC not taken");
                    }
                }
            }
        }
    }

    fn tunnel_timer(&mut self, now: Instant, tunnel_id: u32) {
        let Some(t) = self.tunnels.get_mut(&tunnel_id) else {
            return;
        };
        match &mut t.state {
            TunnelState::AwaitingRelay { retx } => match retx.on_timeout(now) {
                Some(RetransmitAction::Send) if retx.tries() <= RELAY_DIR_TRIES => {
                    self.timers.push(Reverse((retx.deadline(), tunnel_id)));
                    self.queue.push_back(Out::RelayDir { tunnel_id });
                }
                Some(_) => {
                    self.stats.relay_failures += 1;
                    let rs = t.relay.as_ref().map(|(r, _)| self.relays[*r].id);
                    tracing::warn!(tunnel_id, ?rs, mn = %t.mn.fqdn, cn = %t.cn.fqdn, "the RS did not acknowledge RELAY_DIR after {RELAY_DIR_TRIES} tries; answering UNREACHABLE (is ntm-rs running, with this id and key?)");
                    self.fail_unreachable(tunnel_id);
                }
                None => {}
            },
            TunnelState::AwaitingCnAck { retx } => match retx.on_timeout(now) {
                Some(RetransmitAction::Send) if retx.tries() <= CN_FIRST_ROUTE_DIR_TRIES => {
                    self.timers.push(Reverse((retx.deadline(), tunnel_id)));
                    self.queue.push_back(Out::RouteDir {
                        tunnel_id,
                        end: End::Cn,
                    });
                }
                Some(_) => {
                    self.stats.route_dir_failures += 1;
                    tracing::warn!(tunnel_id, path = ?t.path, mn = %t.mn.fqdn, cn = %t.cn.fqdn, "the responder did not acknowledge ROUTE_DIR after {CN_FIRST_ROUTE_DIR_TRIES} tries; answering UNREACHABLE (is it still running, and its keep-alive mapping open?)");
                    self.fail_unreachable(tunnel_id);
                }
                None => {}
            },
            TunnelState::Directing {
                cn_retx: Some(retx),
            } => match retx.on_timeout(now) {
                Some(RetransmitAction::Send) => {
                    self.timers.push(Reverse((retx.deadline(), tunnel_id)));
                    self.queue.push_back(Out::RouteDir {
                        tunnel_id,
                        end: End::Cn,
                    });
                }
                Some(RetransmitAction::Failed) => {
                    t.state = TunnelState::Directing { cn_retx: None };
                    self.stats.route_dir_failures += 1;
                    tracing::warn!(tunnel_id, cn = %t.cn.fqdn, "the REVERSE initiator did not acknowledge ROUTE_DIR after 5 tries (MN already had its answer)");
                }
                None => {}
            },
            _ => {}
        }
    }

    /// The tunnel failed before MN got its ROUTE_DIR: MN, and any
    /// retransmission of its DIR_REQ, gets UNREACHABLE instead.
    fn fail_unreachable(&mut self, tunnel_id: u32) {
        let Some(t) = self.tunnels.get_mut(&tunnel_id) else {
            return;
        };
        t.state = TunnelState::Failed;
        let (node_id, req_id, dst) = (t.mn.node_id, t.req_id, t.mn_dst);
        if let Some(d) = self.directions.get_mut(&(node_id, req_id)) {
            d.outcome = Err(Status::Unreachable);
        }
        self.route_dir_status(node_id, req_id, dst, Status::Unreachable);
    }

    fn sweep(&mut self, now: Instant) {
        self.expire(now);
        // Lapses, releases and the marks the last second moved.
        let r = self.store.commit_marks();
        let _ = self.store_result(r);
    }

    fn expire(&mut self, now: Instant) {
        for e in self.store.expire(now) {
            match e {
                Expiry::Lapsed(r) => {
                    self.stats.lapsed += 1;
                    tracing::info!(fqdn = %r.fqdn, vip = %r.vip, "registration lapsed: no keep-alive for three intervals (VIP reserved until the lease ends)");
                }
                Expiry::Released(r) => {
                    self.stats.released += 1;
                    tracing::info!(fqdn = %r.fqdn, vip = %r.vip, "lease ended, VIP free");
                }
            }
        }
        let (tunnels, nodes, by_id) = (&self.tunnels, &mut self.nodes, &self.by_id);
        self.directions.retain(|&(node_id, _), d| {
            let pending = d
                .outcome
                .is_ok_and(|id| tunnels.get(&id).is_some_and(Tunnel::pending));
            let keep = d.expires > now || pending;
            if !keep {
                if let Some(&i) = by_id.get(&node_id) {
                    let slot = &mut nodes[i];
                    slot.directions = slot.directions.saturating_sub(1);
                    if slot.directions < MAX_DIRECTIONS_PER_NODE {
                        slot.limit_logged = false;
                    }
                }
            }
            keep
        });
        self.tunnels.retain(|_, t| t.expires > now || t.pending());
        self.remote_dirs.retain(|_, d| d.expires > now);
    }

    // ----- outputs ------------------------------------------------------

    /// The next datagram to send, written to the front of `buf` (give it
    /// [`ntm_proto::wire::MAX_SIGNALING_LEN`] bytes). Call until `None`
    /// after every input.
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        // Held answers wait for their commit (see "Group commit").
        while self.queue.len() > self.held {
            let out = self.queue.pop_front()?;
            match self.build(out, buf) {
                Ok(Some(t)) => return Some(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "dropping an outgoing datagram: give poll_transmit a larger buffer");
                }
            }
        }
        None
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        if self.seq >= self.reserved.seq {
            // Only after 2^32 datagrams in one run.
            self.reserved.seq = self.seq + SEQ_RESERVE;
            let r = Reserved {
                seq: self.reserved.seq,
                ..self.store.reserved()
            };
            self.store.set_reserved(r);
            let r = self.store.commit_all();
            let _ = self.store_result(r);
        }
        self.seq
    }

    fn node_auth(&self, node_id: u32) -> &Authenticator {
        &self.nodes[self.by_id[&node_id]].auth
    }

    fn build(&mut self, out: Out, buf: &mut [u8]) -> Result<Option<Transmit>, Error> {
        let seq = self.next_seq();
        let sent = match out {
            Out::RouteDir { tunnel_id, end } => self.build_route_dir(tunnel_id, end, seq, buf)?,
            Out::RelayDir { tunnel_id } => self.build_relay_dir(tunnel_id, seq, buf)?,
            Out::RemoteRouteDir { tunnel_id } => {
                self.build_remote_route_dir(tunnel_id, seq, buf)?
            }
            answer => match answer.to_node() {
                Some((node_id, dst, message)) => {
                    let repr = Repr::new(header(node_id, seq, false), message);
                    Some((dst, repr.emit_sealed(buf, self.node_auth(node_id))?))
                }
                None => None,
            },
        };
        Ok(sent.map(|(dst, len)| Transmit { dst, len }))
    }

    /// ROUTE_DIR with a route to one end of a tunnel being directed:
    /// where it goes and its length; `None` when it is no longer due.
    fn build_route_dir(
        &mut self,
        tunnel_id: u32,
        end: End,
        seq: u64,
        buf: &mut [u8],
    ) -> Result<Option<(SocketAddrV4, usize)>, Error> {
        let Some(t) = self.tunnels.get(&tunnel_id) else {
            return Ok(None);
        };
        let sendable = match t.state {
            TunnelState::Directing { .. } => true,
            TunnelState::AwaitingCnAck { .. } => end == End::Cn,
            _ => false,
        };
        if !sendable {
            return Ok(None);
        }
        let (me, peer, dst, req_id) = match end {
            End::Mn => (&t.mn, &t.cn, t.mn_dst, t.req_id),
            End::Cn => {
                // Through CN's keep-alive mapping, as it is now.
                let Some(reg) = self.store.get(t.cn.node_id).filter(|r| r.is_active()) else {
                    return Ok(None);
                };
                if let Some(home) = self.store.remote_home(t.cn.node_id) {
                    // That mapping points at CN's DC: it sends the copy.
                    let home = home.to_owned();
                    let route = self.remote_route(t);
                    self.store.post(&home, Handoff::RouteDir(route));
                    self.stats.handoffs_sent += 1;
                    return Ok(None);
                }
                (&t.cn, &t.mn, reg.observed, 0)
            }
        };
        let auth = &self.nodes[self.by_id[&me.node_id]].auth;
        let route = Route {
            tunnel_id,
            peer_fqdn: Fqdn::new(&peer.fqdn)?,
            peer_vip: Vip {
                addr: peer.vip,
                prefix_len: self.settings.pool.prefix_len(),
            },
            endpoint: me.endpoint,
            path: t.path,
            role: me.role,
            suite: self.settings.tunnel_suite,
            wrapped_key: auth.wrap_key(WrapLabel::TunnelKey, tunnel_id, seq, &t.k_tun),
            wrapped_relay_key: t
                .relay
                .as_ref()
                .map(|(_, k)| auth.wrap_key(WrapLabel::RelayKey, tunnel_id, seq, k)),
            lifetime_secs: self.settings.tunnel_lifetime_secs,
        };
        let repr = Repr::new(
            header(me.node_id, seq, end == End::Cn),
            Message::RouteDir(RouteDir {
                req_id,
                result: Ok(route),
            }),
        );
        let len = repr.emit_sealed(buf, auth)?;
        self.stats.route_dirs += 1;
        Ok(Some((dst, len)))
    }

    /// CN's ROUTE_DIR of `t` as another DC is to send it.
    fn remote_route(&self, t: &Tunnel) -> RemoteRoute {
        RemoteRoute {
            node_id: t.cn.node_id,
            tunnel_id: t.id,
            peer_fqdn: t.mn.fqdn.clone(),
            peer_vip: t.mn.vip,
            endpoint: t.cn.endpoint,
            path: t.path.into(),
            role: t.cn.role.into(),
            suite: self.settings.tunnel_suite.into(),
            k_tun: t.k_tun.to_hex(),
            k_relay: t.relay.as_ref().map(|(_, k)| k.to_hex()),
            lifetime_secs: self.settings.tunnel_lifetime_secs,
        }
    }

    /// A ROUTE_DIR another DC handed for a node registered here, sealed
    /// with this DC's seq; `None` when the node is no longer here.
    fn build_remote_route_dir(
        &mut self,
        tunnel_id: u32,
        seq: u64,
        buf: &mut [u8],
    ) -> Result<Option<(SocketAddrV4, usize)>, Error> {
        let Some(d) = self.remote_dirs.get(&tunnel_id) else {
            return Ok(None);
        };
        let r = &d.route;
        let reg = self.store.get(r.node_id).filter(Registration::is_active);
        let (Some(reg), Some(&i)) = (reg, self.by_id.get(&r.node_id)) else {
            return Ok(None);
        };
        let keys = (
            r.k_tun.parse::<Key>(),
            r.k_relay.as_deref().map(str::parse::<Key>),
        );
        let (Ok(k_tun), k_relay) = keys else {
            tracing::warn!(tunnel_id, from = %d.from, "handed ROUTE_DIR with an unreadable key, dropped");
            return Ok(None);
        };
        let auth = &self.nodes[i].auth;
        let route = Route {
            tunnel_id,
            peer_fqdn: Fqdn::new(&r.peer_fqdn)?,
            peer_vip: Vip {
                addr: r.peer_vip,
                prefix_len: self.settings.pool.prefix_len(),
            },
            endpoint: r.endpoint,
            path: r.path.into(),
            role: r.role.into(),
            suite: r.suite.into(),
            wrapped_key: auth.wrap_key(WrapLabel::TunnelKey, tunnel_id, seq, &k_tun),
            wrapped_relay_key: k_relay
                .and_then(Result::ok)
                .map(|k| auth.wrap_key(WrapLabel::RelayKey, tunnel_id, seq, &k)),
            lifetime_secs: r.lifetime_secs,
        };
        let repr = Repr::new(
            header(r.node_id, seq, true),
            Message::RouteDir(RouteDir {
                req_id: 0,
                result: Ok(route),
            }),
        );
        let len = repr.emit_sealed(buf, auth)?;
        self.stats.route_dirs += 1;
        Ok(Some((reg.observed, len)))
    }

    /// RELAY_DIR to a tunnel's RS; `None` when it is no longer due.
    fn build_relay_dir(
        &mut self,
        tunnel_id: u32,
        seq: u64,
        buf: &mut [u8],
    ) -> Result<Option<(SocketAddrV4, usize)>, Error> {
        let Some(t) = self.tunnels.get(&tunnel_id) else {
            return Ok(None);
        };
        let (TunnelState::AwaitingRelay { .. }, Some((r, k_relay))) = (&t.state, &t.relay) else {
            return Ok(None);
        };
        let rs = &self.relays[*r];
        let repr = Repr::new(
            header(rs.id, seq, true),
            Message::RelayDir(RelayDir {
                tunnel_id,
                wrapped_relay_key: rs
                    .auth
                    .wrap_key(WrapLabel::RelayKey, tunnel_id, seq, k_relay),
                lifetime_secs: self.settings.tunnel_lifetime_secs,
            }),
        );
        let len = repr.emit_sealed(buf, &rs.auth)?;
        self.stats.relay_dirs += 1;
        Ok(Some((rs.addr, len)))
    }

    // ----- state --------------------------------------------------------

    /// The checked configuration.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The registration store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The registration of `fqdn`, active or lapsed.
    pub fn registration(&self, fqdn: &str) -> Option<Registration> {
        self.store.get_by_fqdn(fqdn)
    }

    /// The node id of a configured FQDN.
    pub fn node_id(&self, fqdn: &str) -> Option<u32> {
        self.by_fqdn.get(fqdn).map(|&i| self.nodes[i].node_id)
    }

    /// A directed tunnel still remembered.
    pub fn tunnel(&self, tunnel_id: u32) -> Option<TunnelInfo> {
        self.tunnels.get(&tunnel_id).map(|t| self.info(t))
    }

    /// Every directed tunnel still remembered.
    pub fn tunnels(&self) -> impl Iterator<Item = TunnelInfo> + '_ {
        self.tunnels.values().map(|t| self.info(t))
    }

    fn info(&self, t: &Tunnel) -> TunnelInfo {
        TunnelInfo {
            tunnel_id: t.id,
            path: t.path,
            mn_fqdn: t.mn.fqdn.clone(),
            cn_fqdn: t.cn.fqdn.clone(),
            initiator: if t.mn.role == Role::Initiator {
                End::Mn
            } else {
                End::Cn
            },
            relay_id: t.relay.as_ref().map(|(r, _)| self.relays[*r].id),
            directed: matches!(t.state, TunnelState::Directing { .. }),
            acked: matches!(t.state, TunnelState::Directing { cn_retx: None }),
        }
    }

    /// Activity counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Drops by reason.
    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    // ----- reload -----------------------------------------------------

    /// Applies a new configuration (SIGHUP) without dropping what did not
    /// change: a `[[node]]` with the same FQDN, key and fixed VIP keeps its
    /// registration, its replay window and its tunnels; a removed or
    /// re-keyed node's registration ends (its lease and VIP too), and the
    /// set-ups still in progress that involve it are forgotten. Relays
    /// likewise, by id, address and key. Every other setting takes effect
    /// at once, except those that need a restart (`listen`, `vip_pool`,
    /// `status_socket`, `metrics.listen`): a change there refuses the
    /// whole reload and nothing changes.
    pub fn reload(&mut self, config: &Config) -> Result<Reloaded, ReloadError> {
        let new = config.validate()?;
        // Held answers first: the reload below filters the queue.
        let _ = self.commit();
        self.refuse_restart_changes(&new)?;
        let old = std::mem::replace(&mut self.settings, new);
        let mut r = Reloaded::default();
        let ended = self.reload_nodes(&old, &mut r);
        let moved = self.reload_relays(&old, &mut r);
        self.forget_set_ups(&ended, &moved, &mut r);
        if !self.relays.is_empty() {
            self.next_relay %= self.relays.len();
        }
        // Ended registrations; should this fail, the next commit takes them.
        let c = self.store.commit_all();
        let _ = self.store_result(c);
        Ok(r)
    }

    /// Refuses a reload that changes a setting only a restart applies.
    fn refuse_restart_changes(&self, new: &Settings) -> Result<(), ReloadError> {
        let old = &self.settings;
        let mut restart = Vec::new();
        if new.listen != old.listen {
            restart.push(format!("listen ({} -> {})", old.listen, new.listen));
        }
        if new.pool != old.pool {
            restart.push(format!("vip_pool ({} -> {})", old.pool, new.pool));
        }
        if new.status_socket != old.status_socket {
            restart.push("status_socket".to_owned());
        }
        if new.metrics.listen != old.metrics.listen {
            restart.push("metrics.listen".to_owned());
        }
        if new.store != old.store {
            restart.push("[store]".to_owned());
        }
        if restart.is_empty() {
            Ok(())
        } else {
            Err(ReloadError::NeedsRestart(restart.join(", ")))
        }
    }

    /// The new settings' nodes, by FQDN: unchanged ones keep their slot,
    /// the registrations of removed and re-keyed ones end. Gives the node
    /// ids that ended.
    fn reload_nodes(&mut self, old: &Settings, r: &mut Reloaded) -> HashSet<u32> {
        let mut slots: HashMap<String, NodeSlot> =
            self.nodes.drain(..).map(|n| (n.fqdn.clone(), n)).collect();
        let mut ended: HashSet<u32> = HashSet::new();
        let mut nodes = Vec::with_capacity(self.settings.nodes.len());
        for cred in &self.settings.nodes {
            let before = old.nodes.iter().find(|o| o.fqdn == cred.fqdn);
            match (slots.remove(&cred.fqdn), before) {
                (Some(slot), Some(o))
                    if o.key == cred.key && o.vip == cred.vip && o.node_id == cred.node_id =>
                {
                    nodes.push(slot);
                    continue;
                }
                (Some(slot), _) => {
                    r.rekeyed.push(cred.fqdn.clone());
                    ended.insert(slot.node_id);
                }
                (None, _) => r.added.push(cred.fqdn.clone()),
            }
            nodes.push(NodeSlot::new(cred));
        }
        for (fqdn, slot) in slots {
            r.removed.push(fqdn);
            ended.insert(slot.node_id);
        }
        for id in &ended {
            self.store.forget_mark(Peer::Node(*id));
            if let Some(reg) = self.store.remove(*id) {
                r.registrations_ended += 1;
                tracing::info!(fqdn = %reg.fqdn, vip = %reg.vip, "registration ended by a reload (node removed or re-keyed)");
            }
        }
        self.nodes = nodes;
        self.index_nodes();
        ended
    }

    /// The new settings' relays, by id; unchanged ones keep their slot.
    /// Gives where each kept slot moved (old index -> new index).
    fn reload_relays(&mut self, old: &Settings, r: &mut Reloaded) -> HashMap<usize, usize> {
        let mut old_relays: Vec<Option<RelaySlot>> = self.relays.drain(..).map(Some).collect();
        let mut moved: HashMap<usize, usize> = HashMap::new();
        for (i, cred) in self.settings.relays.iter().enumerate() {
            let before = old.relays.iter().position(|o| o.id == cred.id);
            let kept = before.filter(|&j| {
                let o = &old.relays[j];
                o.addr == cred.addr && o.key == cred.key
            });
            match (kept, before) {
                (Some(j), _) => {
                    if let Some(slot) = old_relays[j].take() {
                        moved.insert(j, i);
                        self.relays.push(slot);
                        continue;
                    }
                }
                (None, Some(_)) => {
                    self.store.forget_mark(Peer::Relay(cred.id));
                    r.relays_rekeyed.push(cred.id);
                }
                (None, None) => r.relays_added.push(cred.id),
            }
            self.relays.push(RelaySlot::new(cred));
        }
        for o in &old.relays {
            if !self.settings.relays.iter().any(|c| c.id == o.id) {
                r.relays_removed.push(o.id);
            }
        }
        moved
    }

    /// Set-ups that involve what went: forgotten (their tunnels, if up,
    /// never passed through the DC; a removed node's peer sees its tunnel
    /// expire), with what was queued for them. Tunnels keep indexes into
    /// the new relay list.
    fn forget_set_ups(
        &mut self,
        ended: &HashSet<u32>,
        moved: &HashMap<usize, usize>,
        r: &mut Reloaded,
    ) {
        let before = self.tunnels.len();
        self.tunnels.retain(|_, t| {
            let nodes_ok = !ended.contains(&t.mn.node_id) && !ended.contains(&t.cn.node_id);
            match &mut t.relay {
                Some((idx, _)) => match moved.get(idx) {
                    Some(&new_idx) if nodes_ok => {
                        *idx = new_idx;
                        true
                    }
                    _ => false,
                },
                None => nodes_ok,
            }
        });
        r.tunnels_forgotten = before - self.tunnels.len();
        let (by_id, tunnels) = (&self.by_id, &self.tunnels);
        self.queue.retain(|o| match *o {
            Out::RegResp { node_id, .. }
            | Out::KeepaliveAck { node_id, .. }
            | Out::NotRegistered { node_id, .. }
            | Out::RouteDirStatus { node_id, .. } => by_id.contains_key(&node_id),
            Out::RouteDir { tunnel_id, .. } | Out::RelayDir { tunnel_id } => {
                tunnels.contains_key(&tunnel_id)
            }
            Out::RemoteRouteDir { .. } => true,
        });
    }

    /// One line for the statistics log.
    pub fn stats_line(&self) -> String {
        let s = &self.stats;
        format!(
            "registered={} leases={} tunnels_pending={} | datagrams={} commits={} registrations={} renewals={} refused={} keepalives={} deregs={} lapsed={} released={} dir_reqs={} repeats={} not_found={} dir_refused={} node_limit={} direct={} reverse={} relayed={} route_dirs={} route_acks={} route_dir_failures={} relay_dirs={} relay_acks={} relay_failures={} errors_sent={} errors_received={} | drops: {}",
            self.store.active(),
            self.store.len(),
            self.tunnels.values().filter(|t| t.pending()).count(),
            s.datagrams,
            s.commits,
            s.registrations,
            s.renewals,
            s.refused,
            s.keepalives,
            s.deregistrations,
            s.lapsed,
            s.released,
            s.dir_reqs,
            s.dir_req_repeats,
            s.not_found,
            s.dir_refused,
            s.dir_node_limit,
            s.direct,
            s.reverse,
            s.relayed,
            s.route_dirs,
            s.route_acks,
            s.route_dir_failures,
            s.relay_dirs,
            s.relay_acks,
            s.relay_failures,
            s.errors_sent,
            s.errors_received,
            self.drops
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeEntry;

    /// A store whose commits fail while `fail` is set.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: MemoryStore,
        fail: bool,
        commits: usize,
    }

    impl Flaky {
        fn result(&mut self) -> Result<(), StoreError> {
            self.commits += 1;
            if self.fail {
                Err(StoreError::Corrupt {
                    path: "test".into(),
                    what: "disk on fire".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    impl DcStore for Flaky {
        fn cached(&self) -> &MemoryStore {
            self.inner.cached()
        }
        fn put(&mut self, reg: Registration) {
            self.inner.put(reg);
        }
        fn remove(&mut self, node_id: u32) -> Option<Registration> {
            self.inner.remove(node_id)
        }
        fn expire(&mut self, now: Instant) -> Vec<Expiry> {
            self.inner.expire(now)
        }
        fn set_mark(&mut self, peer: Peer, mark: Mark) {
            self.inner.set_mark(peer, mark);
        }
        fn forget_mark(&mut self, peer: Peer) {
            self.inner.forget_mark(peer);
        }
        fn set_reserved(&mut self, r: Reserved) {
            self.inner.set_reserved(r);
        }
        fn commit(&mut self) -> Result<(), StoreError> {
            self.result()
        }
        fn commit_all(&mut self) -> Result<(), StoreError> {
            self.result()
        }
    }

    fn reg_req(key: &Key, seq: u64, from: SocketAddrV4) -> Vec<u8> {
        reg_req_of("a.ntm.test", key, seq, from)
    }

    fn reg_req_of(fqdn: &str, key: &Key, seq: u64, from: SocketAddrV4) -> Vec<u8> {
        let repr = Repr::new(
            header(0, seq, true),
            Message::RegReq(RegReq {
                req_id: 1,
                fqdn: Fqdn::new(fqdn).unwrap(),
                local_addr: from,
                caps: ntm_proto::wire::Caps::NODE,
            }),
        );
        let mut b = vec![0u8; repr.buffer_len()];
        repr.emit_sealed(&mut b, &Authenticator::new(key)).unwrap();
        b
    }

    #[test]
    fn nothing_is_answered_that_the_store_did_not_take() {
        let key = Key::from_bytes([1; 32]);
        let config = Config {
            nodes: vec![NodeEntry::new("a.ntm.test", &key)],
            ..Config::default()
        };
        let now = Instant::now();
        let mut dc = Coordinator::with_store(&config, Flaky::default(), now, 1, [7; 32]).unwrap();
        let from: SocketAddrV4 = "198.18.0.20:7700".parse().unwrap();
        let mut buf = [0u8; ntm_proto::wire::MAX_SIGNALING_LEN];
        dc.store.fail = true;
        assert_eq!(
            dc.handle(now, from, &reg_req(&key, 10, from)),
            Err(DropReason::Store)
        );
        assert!(dc.poll_transmit(now, &mut buf).is_none(), "not answered");
        assert_eq!(dc.drops().get(DropReason::Store), 1);
        // The retransmission (a new seq) once the store works again: the
        // registration made before is written and answered.
        dc.store.fail = false;
        let commits = dc.store.commits;
        dc.handle(now, from, &reg_req(&key, 11, from)).unwrap();
        assert_eq!(dc.store.commits, commits + 1);
        assert!(dc.poll_transmit(now, &mut buf).is_some(), "answered");
        assert_eq!(dc.store.active(), 1);
        // A datagram dropped for its own reason keeps that reason.
        dc.store.fail = true;
        let e = dc.handle(now, from, &reg_req(&key, 11, from));
        assert_eq!(e, Err(Error::Replay.into()));
    }

    /// K nodes, node `i` with FQDN `n{i}.ntm.test` and key `[i + 1; 32]`.
    fn nodes(k: u8) -> (Config, Vec<(String, Key)>) {
        let nodes: Vec<_> = (0..k)
            .map(|i| (format!("n{i}.ntm.test"), Key::from_bytes([i + 1; 32])))
            .collect();
        let config = Config {
            nodes: nodes.iter().map(|(f, k)| NodeEntry::new(f, k)).collect(),
            ..Config::default()
        };
        (config, nodes)
    }

    fn drain(dc: &mut Coordinator<impl DcStore>, now: Instant) -> usize {
        let mut buf = [0u8; ntm_proto::wire::MAX_SIGNALING_LEN];
        std::iter::from_fn(|| dc.poll_transmit(now, &mut buf)).count()
    }

    #[test]
    fn a_burst_is_one_commit_and_its_answers_wait_for_it() {
        let (config, nodes) = nodes(5);
        let now = Instant::now();
        let mut dc = Coordinator::with_store(&config, Flaky::default(), now, 1, [7; 32]).unwrap();
        let from: SocketAddrV4 = "198.18.0.20:7700".parse().unwrap();
        let commits = dc.store.commits;
        for (fqdn, key) in &nodes {
            dc.receive(now, from, &reg_req_of(fqdn, key, 10, from))
                .unwrap();
        }
        assert_eq!(dc.store.active(), 5, "changed in memory at once");
        assert_eq!(dc.store.commits, commits, "not committed yet");
        assert_eq!(drain(&mut dc, now), 0, "nothing answered before the commit");
        dc.commit().unwrap();
        assert_eq!(dc.store.commits, commits + 1, "one commit for the burst");
        assert_eq!(dc.stats().commits, 1);
        assert_eq!(drain(&mut dc, now), 5, "every answer after it");
        // A commit with nothing received since writes nothing.
        dc.commit().unwrap();
        assert_eq!(dc.store.commits, commits + 1);
        // A burst the driver leaves uncommitted is committed by the
        // timers before they queue anything.
        let (fqdn, key) = &nodes[0];
        dc.receive(now, from, &reg_req_of(fqdn, key, 11, from))
            .unwrap();
        assert_eq!(drain(&mut dc, now), 0);
        dc.handle_timeout(now);
        assert_eq!(dc.store.commits, commits + 2);
        assert_eq!(drain(&mut dc, now), 1);
    }

    #[test]
    fn a_failed_group_commit_answers_none_of_its_burst() {
        let (config, nodes) = nodes(3);
        let now = Instant::now();
        let mut dc = Coordinator::with_store(&config, Flaky::default(), now, 1, [7; 32]).unwrap();
        let from: SocketAddrV4 = "198.18.0.20:7700".parse().unwrap();
        // One answered before, still waiting to be sent: not the burst's.
        dc.handle(now, from, &reg_req_of(&nodes[0].0, &nodes[0].1, 10, from))
            .unwrap();
        dc.store.fail = true;
        for (fqdn, key) in &nodes[1..] {
            dc.receive(now, from, &reg_req_of(fqdn, key, 10, from))
                .unwrap();
        }
        // A replay in the burst keeps its own reason.
        let replay = reg_req_of(&nodes[0].0, &nodes[0].1, 10, from);
        assert_eq!(dc.receive(now, from, &replay), Err(Error::Replay.into()));
        assert_eq!(dc.commit(), Err(DropReason::Store));
        assert_eq!(dc.drops().get(DropReason::Store), 2);
        assert_eq!(dc.drops().get(DropReason::Proto(Error::Replay)), 1);
        assert_eq!(drain(&mut dc, now), 1, "only the answer committed before");
    }

    #[test]
    fn a_burst_on_redb_is_one_write() {
        let dir = std::env::temp_dir().join(format!("ntm-dc-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (config, nodes) = nodes(8);
        let now = Instant::now();
        let store = crate::RedbStore::open(&dir.join("dc.redb"), now, 1).unwrap();
        let mut dc = Coordinator::with_store(&config, store, now, 1, [7; 32]).unwrap();
        let from: SocketAddrV4 = "198.18.0.20:7700".parse().unwrap();
        let writes = dc.store().writes();
        for (fqdn, key) in &nodes {
            dc.receive(now, from, &reg_req_of(fqdn, key, 10, from))
                .unwrap();
        }
        dc.commit().unwrap();
        assert_eq!(dc.store().writes(), writes + 1);
        assert_eq!(drain(&mut dc, now), 8);
        drop(dc);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tunnel_ids_cross_reserved_blocks_without_repeating() {
        let config = Config {
            nodes: vec![NodeEntry::new("a.ntm.test", &Key::from_bytes([1; 32]))],
            ..Config::default()
        };
        let mut dc = Coordinator::new(&config, Instant::now(), 1, [7; 32]).unwrap();
        let first = dc.store.reserved();
        assert_eq!(first.tunnel_ids, TUNNEL_ID_BLOCK);
        assert_ne!(first.tunnel_salt, 0);
        let n = 2 * TUNNEL_ID_BLOCK as usize + 3;
        let ids: HashSet<u32> = (0..n).map(|_| dc.fresh_tunnel_id().unwrap()).collect();
        assert_eq!(ids.len(), n);
        assert!(!ids.contains(&0));
        assert_eq!(dc.store.reserved().tunnel_ids, 3 * TUNNEL_ID_BLOCK);
    }

    #[test]
    fn the_seq_goes_on_above_the_reservation_even_with_the_clock_stepped_back() {
        let config = Config {
            nodes: vec![NodeEntry::new("a.ntm.test", &Key::from_bytes([1; 32]))],
            ..Config::default()
        };
        let now = Instant::now();
        let mut store = MemoryStore::new();
        store.set_reserved(Reserved {
            seq: 5_000,
            tunnel_ids: 0,
            tunnel_salt: 0,
        });
        let mut dc = Coordinator::assemble(&config, store, now, 1_000, [7; 32]).unwrap();
        assert_eq!(dc.next_seq(), 5_001, "above what the last run reserved");
        assert_eq!(dc.store.reserved().seq, 5_000 + SEQ_RESERVE);
        dc.seq = dc.reserved.seq - 1;
        let s = dc.next_seq();
        assert_eq!(dc.store.reserved().seq, s + SEQ_RESERVE, "reserved again");
    }
}
