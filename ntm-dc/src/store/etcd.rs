//! [`EtcdStore`]: the DC's state in memory, shared with other DCs through
//! etcd (`[store] kind = "etcd"`).
//!
//! # Records
//!
//! Under the configured prefix `P` (default `/ntm`):
//!
//! | key | value | lives |
//! |---|---|---|
//! | `P/reg/<node id, 8 hex>` | the registration (as [`super::RedbStore`] encodes it) and its *home*: the DC it registered at | until released |
//! | `P/alive/<node id>` | the home DC's name, while the node keeps alive there | under the home DC's etcd lease |
//! | `P/vip/<a.b.c.d>` | the node id holding the VIP | claimed with a compare-and-set |
//! | `P/mark/<peer, 16 hex>` | replay mark: seq and key fingerprint | shared by every DC |
//! | `P/dc/<name>/seq` | the DC's reserved signaling seq | per DC |
//! | `P/live/<name>` | present while the DC runs | under its lease |
//! | `P/tunnels/next`, `P/tunnels/salt` | the tunnel id counter every DC reserves blocks of, and its salt | compare-and-set |
//! | `P/inbox/<to>/<from>/<n>` | a [`Handoff`] (JSON) | under the sender's lease |
//!
//! Each DC holds one etcd lease whose TTL is three keep-alive intervals,
//! refreshed once an interval by a keep-alive stream: one refresh keeps
//! every registration of the DC alive, instead of one per node. A node's
//! liveness within that is the DC's own (as with the other stores): a
//! lapse deletes its `alive` key, a KEEPALIVE writes nothing. If the DC
//! dies, its lease ends and every other DC sees its nodes lapse three
//! intervals later, when the nodes have moved on (their VIPs stay claimed
//! until the lease of the registration ends).
//!
//! # Several DCs
//!
//! Every DC loads the whole prefix at start and then follows it with one
//! etcd watch, so that lookups stay in memory ([`DcStore::cached`]); a
//! broken watch starts again where it stopped, and one that lost its
//! place (etcd compacted past it) reads the prefix again. A
//! registration belongs to its home DC, the one the node talks to: only
//! that DC writes it; a datagram from the node at another DC (a failover)
//! makes that DC its home, and the VIP stays (the claim is the node's).
//! The failover DC opens the node's window above the shared mark, and
//! sends above the previous home's reserved seq
//! ([`DcStore::takeover_seq`]): the node keeps one window for its DC.
//!
//! # Directions across DCs
//!
//! A node's NAT mapping points at its home DC, so a ROUTE_DIR for it must
//! come from there. The DC that directs a tunnel (the requester's) posts
//! [`Handoff::RouteDir`] into the target's home DC's inbox; that DC seals
//! and sends it, and posts the node's ROUTE_ACK back
//! ([`Handoff::RouteAck`]). The directing DC keeps the set-up's state and
//! retransmissions, as for its own nodes. The inbox is read through the
//! same watch: there is no second messaging system.
//!
//! # Commits
//!
//! A commit is a few etcd transactions sent at once: one per new VIP claim
//! (the claim, the record and its `alive` key, or, when another DC claimed
//! the VIP first, nothing: the registration is dropped and the commit
//! fails, so that the node's retransmitted REG_REQ gets another VIP), and
//! batches of at most [`TXN_OPS`] plain writes for everything else.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use super::disk::{decode, encode, Clock};
use super::{
    DcStore, Dirty, Expiry, Handoff, Mark, MemoryStore, Peer, Registration, Reserved, StoreError,
};

/// Most operations in one etcd transaction (etcd's `--max-txn-ops` is 128
/// by default).
pub const TXN_OPS: usize = 100;
/// Transactions of one commit in flight at once.
const IN_FLIGHT: usize = 64;
/// Keys read per request at load.
const PAGE: i64 = 2000;
/// How long one commit, reservation or load request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The first byte of a registration record.
const REC_V1: u8 = 1;
/// How long a restarted DC waits for the lease of its previous run (a
/// crash leaves it) before it refuses to start, beyond the lease's TTL.
const LIVE_GRACE: Duration = Duration::from_secs(2);

/// Where the shared store is and who this DC is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// etcd's client URLs (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// The key prefix (`/ntm`): DCs sharing a prefix share a world.
    pub prefix: String,
    /// This DC's name, unique among the DCs of the prefix.
    pub dc_name: String,
    /// The TTL of this DC's lease: three keep-alive intervals.
    pub ttl: Duration,
}

/// Keys under the prefix.
#[derive(Debug, Clone)]
struct Keys {
    p: String,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Reg(u32),
    Alive(u32),
    Vip(Ipv4Addr),
    Mark(Peer),
    DcSeq(String),
    Live(String),
    TunnelsNext,
    TunnelSalt,
    Inbox { to: String, from: String },
    Other,
}

impl Keys {
    fn reg(&self, id: u32) -> String {
        format!("{}/reg/{id:08x}", self.p)
    }
    fn alive(&self, id: u32) -> String {
        format!("{}/alive/{id:08x}", self.p)
    }
    fn vip(&self, vip: Ipv4Addr) -> String {
        format!("{}/vip/{vip}", self.p)
    }
    fn mark(&self, peer: Peer) -> String {
        format!("{}/mark/{:016x}", self.p, peer.to_u64())
    }
    fn dc_seq(&self, name: &str) -> String {
        format!("{}/dc/{name}/seq", self.p)
    }
    fn live(&self, name: &str) -> String {
        format!("{}/live/{name}", self.p)
    }
    fn tunnels_next(&self) -> String {
        format!("{}/tunnels/next", self.p)
    }
    fn tunnel_salt(&self) -> String {
        format!("{}/tunnels/salt", self.p)
    }
    fn post(&self, to: &str, from: &str, n: u64) -> String {
        format!("{}/inbox/{to}/{from}/{n:016x}", self.p)
    }
    /// Everything of the prefix (with its trailing slash).
    fn all(&self) -> String {
        format!("{}/", self.p)
    }

    fn parse(&self, key: &[u8]) -> Record {
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(self.p.as_str()))
            .and_then(|k| k.strip_prefix('/'))
        else {
            return Record::Other;
        };
        let hex32 = |s: &str| u32::from_str_radix(s, 16).ok();
        let parts: Vec<&str> = rest.split('/').collect();
        let r = match parts.as_slice() {
            ["reg", id] => hex32(id).map(Record::Reg),
            ["alive", id] => hex32(id).map(Record::Alive),
            ["vip", ip] => ip.parse().ok().map(Record::Vip),
            ["mark", p] => u64::from_str_radix(p, 16)
                .ok()
                .and_then(Peer::from_u64)
                .map(Record::Mark),
            ["dc", name, "seq"] => Some(Record::DcSeq((*name).to_owned())),
            ["live", name] => Some(Record::Live((*name).to_owned())),
            ["tunnels", "next"] => Some(Record::TunnelsNext),
            ["tunnels", "salt"] => Some(Record::TunnelSalt),
            ["inbox", to, from, _] => Some(Record::Inbox {
                to: (*to).to_owned(),
                from: (*from).to_owned(),
            }),
            _ => None,
        };
        r.unwrap_or(Record::Other)
    }
}

/// A registration record: version, home (length-prefixed), then the
/// registration as the redb store encodes it.
fn encode_reg(home: &str, r: &Registration, clock: Clock) -> Vec<u8> {
    let mut b = vec![REC_V1, home.len().min(255) as u8];
    b.extend_from_slice(&home.as_bytes()[..home.len().min(255)]);
    b.extend_from_slice(&encode(r, clock));
    b
}

/// Reads what [`encode_reg`] wrote; `None` for anything else.
fn decode_reg(b: &[u8], clock: Clock) -> Option<(String, Registration)> {
    let (&[v, n], rest) = b.split_first_chunk::<2>()?;
    if v != REC_V1 {
        return None;
    }
    let (home, rest) = rest.split_at_checked(n.into())?;
    let home = String::from_utf8(home.to_vec()).ok()?;
    Some((home, decode(rest, clock)?))
}

fn encode_mark(m: Mark) -> Vec<u8> {
    let mut b = m.seq.to_be_bytes().to_vec();
    b.extend_from_slice(&m.key_id);
    b
}

fn decode_mark(b: &[u8]) -> Option<Mark> {
    let (seq, key_id) = b.split_first_chunk::<8>()?;
    Some(Mark {
        seq: u64::from_be_bytes(*seq),
        key_id: key_id.try_into().ok()?,
    })
}

fn decode_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// One change the watch saw.
#[derive(Debug)]
struct Watched {
    put: bool,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// The writes of one commit.
#[derive(Default)]
struct Plan {
    /// Compare-and-delete of VIP claims this DC gave up: before the rest.
    unclaims: Vec<(Ipv4Addr, u32, Txn)>,
    /// New VIP claims, each with its registration.
    claims: Vec<(Ipv4Addr, u32, Txn)>,
    /// Everything else.
    ops: Vec<TxnOp>,
}

/// What a commit's claims came to.
#[derive(Debug, Default)]
struct Outcome {
    /// Claims made (vip, node).
    won: Vec<(Ipv4Addr, u32)>,
    /// Claims another node holds: (vip, node that asked, owner).
    lost: Vec<(Ipv4Addr, u32, Option<u32>)>,
}

/// The DC's state in memory, shared with other DCs through etcd (see the
/// [module docs](self)).
pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    opts: EtcdOptions,
    keys: Keys,
    /// This DC's etcd lease.
    lease: i64,
    lease_lost: Arc<AtomicBool>,
    clock: Clock,
    /// What `alive_until` a node registered and alive at another DC has.
    far: Instant,
    mem: MemoryStore,
    dirty: Dirty,
    /// Registrations whose home is another DC: node id -> home.
    foreign: HashMap<u32, String>,
    /// `alive` keys of other DCs: node id -> home.
    foreign_alive: HashMap<u32, String>,
    /// VIP claims in etcd as last seen.
    claims: HashMap<Ipv4Addr, u32>,
    /// Claims to give up (the node's VIP changed, or its lease ended).
    unclaim: HashMap<Ipv4Addr, u32>,
    /// Every DC's reserved seq.
    dc_seqs: HashMap<String, u64>,
    /// The DCs running now.
    live: HashSet<String>,
    /// Handoffs to write: key and value.
    outbox: Vec<(String, Vec<u8>)>,
    /// Inbox keys read, to delete.
    consumed: Vec<Vec<u8>>,
    inbox: Vec<(String, Handoff)>,
    posts: u64,
    watched: Arc<Mutex<Vec<Watched>>>,
    /// Set when the watch cannot go on from where it was (etcd compacted
    /// past it): the state is read again.
    resync: Arc<AtomicBool>,
    /// When to try that again after it failed.
    resync_at: Instant,
    writes: u64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.opts.endpoints)
            .field("prefix", &self.opts.prefix)
            .field("dc_name", &self.opts.dc_name)
            .field("registrations", &self.mem.index.len())
            .field("foreign", &self.foreign.len())
            .finish_non_exhaustive()
    }
}

/// Runs `f` on `rt` and waits for it from any thread, the driver's
/// runtime included (where `block_on` would panic).
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().ok()
}

impl EtcdStore {
    /// Connects, claims `dc_name` (refused while another DC runs under
    /// it), and reads everything under the prefix. `now` and `unix_nanos`
    /// are one moment on the monotonic and the Unix clock.
    pub fn open(opts: EtcdOptions, now: Instant, unix_nanos: u64) -> Result<EtcdStore, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ntm-dc-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                endpoints: opts.endpoints.join(","),
                what: format!("starting its runtime: {e}"),
            })?;
        let endpoints = opts.endpoints.clone();
        let connect = async move {
            let o = ConnectOptions::new()
                .with_connect_timeout(REQUEST_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT)
                .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
            Client::connect(endpoints, Some(o)).await
        };
        let client = run_on(&rt, connect)
            .ok_or_else(|| etcd_err(&opts, "the runtime stopped"))?
            .map_err(|e| etcd_err(&opts, &format!("connecting: {e}")))?;
        let far = now
            .checked_add(Duration::from_secs(10 * 365 * 86_400))
            .unwrap_or(now);
        let mut s = EtcdStore {
            rt: Some(rt),
            client,
            keys: Keys {
                p: opts.prefix.trim_end_matches('/').to_owned(),
            },
            opts,
            lease: 0,
            lease_lost: Arc::new(AtomicBool::new(false)),
            clock: Clock { now, unix_nanos },
            far,
            mem: MemoryStore::default(),
            dirty: Dirty::default(),
            foreign: HashMap::new(),
            foreign_alive: HashMap::new(),
            claims: HashMap::new(),
            unclaim: HashMap::new(),
            dc_seqs: HashMap::new(),
            live: HashSet::new(),
            outbox: Vec::new(),
            consumed: Vec::new(),
            inbox: Vec::new(),
            posts: 0,
            watched: Arc::new(Mutex::new(Vec::new())),
            resync: Arc::new(AtomicBool::new(false)),
            resync_at: now,
            writes: 0,
        };
        s.start_lease()?;
        s.ensure_salt()?;
        let rev = s.load()?;
        s.spawn_watch(rev + 1);
        Ok(s)
    }

    /// This DC's name.
    pub fn dc_name(&self) -> &str {
        &self.opts.dc_name
    }

    /// Commits written since it was opened (each a few transactions).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Runs a request on the store's runtime, failing after
    /// [`REQUEST_TIMEOUT`].
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_within(REQUEST_TIMEOUT, what, f)
    }

    /// [`EtcdStore::call`] with a time limit of its own.
    fn call_within<T: Send + 'static>(
        &self,
        limit: Duration,
        what: &str,
        f: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| etcd_err(&self.opts, "the store is closed"))?;
        // The timer is made on the runtime (it needs its reactor).
        match run_on(rt, async move { tokio::time::timeout(limit, f).await }) {
            Some(Ok(Ok(v))) => Ok(v),
            Some(Ok(Err(e))) => Err(etcd_err(&self.opts, &format!("{what}: {e}"))),
            Some(Err(_)) => Err(etcd_err(
                &self.opts,
                &format!("{what}: no answer in {} s", limit.as_secs()),
            )),
            None => Err(etcd_err(
                &self.opts,
                &format!("{what}: the runtime stopped"),
            )),
        }
    }

    /// Grants this DC's lease, claims its name under it (waiting out the
    /// lease of a previous run that crashed), and keeps it alive.
    fn start_lease(&mut self) -> Result<(), StoreError> {
        let ttl = self.opts.ttl.as_secs().max(1) as i64;
        let mut c = self.client.clone();
        let lease = self.call("granting the DC's lease", async move {
            c.lease_grant(ttl, None).await.map(|r| r.id())
        })?;
        self.lease = lease;
        let live = self.keys.live(&self.opts.dc_name);
        let deadline = Instant::now() + self.opts.ttl + LIVE_GRACE;
        loop {
            let (mut c, key, name) = (self.client.clone(), live.clone(), self.opts.dc_name.clone());
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    name,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let won = self.call("claiming the DC's name", async move {
                c.txn(txn).await.map(|r| r.succeeded())
            })?;
            if won {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Refused(format!(
                    "another ntm-dc runs with [store] dc_name = {:?} on this etcd prefix {:?} (its key {live} is held): give every DC its own dc_name",
                    self.opts.dc_name, self.opts.prefix
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.live.insert(self.opts.dc_name.clone());
        self.spawn_keeper();
        Ok(())
    }

    /// Refreshes the lease once a keep-alive interval (a third of its
    /// TTL); marks it lost if etcd says it expired.
    fn spawn_keeper(&self) {
        let (client, lease, lost) = (self.client.clone(), self.lease, self.lease_lost.clone());
        let every = (self.opts.ttl / 3).max(Duration::from_millis(500));
        if let Some(rt) = &self.rt {
            rt.spawn(keep_lease(client, lease, every, lost));
        }
    }

    /// A lease that expired (etcd unreachable for its whole TTL): a new
    /// one, and every active registration of this DC written again under
    /// it.
    fn recover_lease(&mut self) -> Result<(), StoreError> {
        if !self.lease_lost.load(Ordering::Relaxed) {
            return Ok(());
        }
        tracing::warn!(dc = %self.opts.dc_name, "the DC's etcd lease expired (etcd was unreachable): taking a new one");
        self.lease_lost.store(false, Ordering::Relaxed);
        if let Err(e) = self.start_lease() {
            self.lease_lost.store(true, Ordering::Relaxed);
            return Err(e);
        }
        let local: Vec<u32> = (self.mem.index.iter())
            .filter(|r| r.is_active() && !self.foreign.contains_key(&r.node_id))
            .map(|r| r.node_id)
            .collect();
        self.dirty.regs.extend(local);
        Ok(())
    }

    /// Creates the tunnel ids' salt if no DC did yet.
    fn ensure_salt(&mut self) -> Result<(), StoreError> {
        let mut salt = 0u32;
        while salt == 0 {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| etcd_err(&self.opts, &format!("random: {e}")))?;
            salt = u32::from_be_bytes(b);
        }
        let key = self.keys.tunnel_salt();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, salt.to_be_bytes().to_vec(), None)]);
        let mut c = self.client.clone();
        self.call(
            "creating the tunnel id salt",
            async move { c.txn(txn).await },
        )?;
        Ok(())
    }

    /// Reads the whole prefix at one revision; gives the revision.
    fn load(&mut self) -> Result<i64, StoreError> {
        let (c, all) = (self.client.clone(), self.keys.all());
        let (rev, kvs) = self.call("loading the store", load_all(c, all))?;
        for (k, v) in kvs {
            self.apply(true, &k, &v, true);
        }
        self.mem.reserved.seq = self.dc_seqs.get(&self.opts.dc_name).copied().unwrap_or(0);
        Ok(rev)
    }

    fn spawn_watch(&self, from: i64) {
        let (c, all, sink) = (self.client.clone(), self.keys.all(), self.watched.clone());
        let resync = self.resync.clone();
        if let Some(rt) = &self.rt {
            rt.spawn(watch_loop(c, all, from, sink, resync));
        }
    }

    /// The whole prefix read again after the watch lost its place: other
    /// DCs' records as they are now (this DC's own in memory stand), and a
    /// new watch from there.
    fn resync(&mut self) {
        let (c, all) = (self.client.clone(), self.keys.all());
        let (rev, kvs) = match self.call("reading the store again", load_all(c, all)) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store again yet; trying again in a second");
                self.resync_at = Instant::now() + Duration::from_secs(1);
                self.resync.store(true, Ordering::Relaxed);
                return;
            }
        };
        let mut regs = HashSet::new();
        let mut alive = HashSet::new();
        for (k, v) in &kvs {
            match self.keys.parse(k) {
                Record::Reg(id) => {
                    regs.insert(id);
                }
                Record::Alive(id) => {
                    alive.insert(id);
                }
                _ => {}
            }
            self.apply(true, k, v, false);
        }
        let gone: Vec<u32> = (self.foreign.keys())
            .filter(|id| !regs.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.apply_reg(id, None, false);
        }
        let lapsed: Vec<u32> = (self.foreign_alive.keys())
            .filter(|id| !alive.contains(id))
            .copied()
            .collect();
        for id in lapsed {
            self.apply_alive(id, None);
        }
        tracing::info!(
            revision = rev,
            "the store was read again after the watch lost its place"
        );
        self.spawn_watch(rev + 1);
    }

    /// Takes what the watch saw since the last call into the state.
    fn apply_watched(&mut self) {
        let events = match self.watched.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        if self.resync.load(Ordering::Relaxed) {
            // What the old watch left is older than the new reading.
            if Instant::now() >= self.resync_at {
                self.resync.store(false, Ordering::Relaxed);
                self.resync();
            }
            return;
        }
        for e in events {
            self.apply(e.put, &e.key, &e.value, false);
        }
    }

    /// One key's new value (`put`) or deletion. At `load`, this DC's own
    /// records are taken as they stand; later they are this DC's echo,
    /// and ignored.
    fn apply(&mut self, put: bool, key: &[u8], value: &[u8], load: bool) {
        match self.keys.parse(key) {
            Record::Reg(id) => self.apply_reg(id, put.then_some(value), load),
            Record::Alive(id) => self.apply_alive(id, put.then_some(value)),
            Record::Vip(vip) => {
                let owner = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                match owner.filter(|_| put) {
                    Some(id) => self.claims.insert(vip, id),
                    None => self.claims.remove(&vip),
                };
            }
            Record::Mark(peer) => {
                if let Some(m) = decode_mark(value).filter(|_| put) {
                    let old = self.mem.marks.get(&peer);
                    if old.is_none_or(|o| o.seq < m.seq || o.key_id != m.key_id) {
                        self.mem.marks.insert(peer, m);
                    }
                }
            }
            Record::DcSeq(name) => {
                if let Some(v) = decode_u64(value).filter(|_| put) {
                    self.dc_seqs.insert(name, v);
                }
            }
            Record::Live(name) => {
                if put {
                    self.live.insert(name);
                } else if name != self.opts.dc_name {
                    self.live.remove(&name);
                }
            }
            Record::TunnelsNext => {
                self.mem.reserved.tunnel_ids = decode_u64(value).unwrap_or(0);
            }
            Record::TunnelSalt => {
                let salt = value.try_into().map_or(0, u32::from_be_bytes);
                self.mem.reserved.tunnel_salt = salt;
            }
            Record::Inbox { to, from } if to == self.opts.dc_name => {
                if put {
                    self.take_post(key, value, from, load);
                }
            }
            Record::Inbox { .. } | Record::Other => {}
        }
    }

    fn apply_reg(&mut self, id: u32, value: Option<&[u8]>, load: bool) {
        let Some(value) = value else {
            if self.foreign.remove(&id).is_some() {
                self.mem.index.remove(id);
            }
            return;
        };
        let Some((home, mut reg)) = decode_reg(value, self.clock).filter(|(_, r)| r.node_id == id)
        else {
            tracing::warn!(
                node_id = id,
                "unreadable registration record in etcd, ignored (written by another version?)"
            );
            return;
        };
        if home == self.opts.dc_name {
            if load {
                if reg.is_active() {
                    // Its `alive` key went with the last run's lease.
                    self.dirty.regs.insert(id);
                }
                self.mem.index.put(reg);
            }
            return;
        }
        let alive = self.foreign_alive.get(&id) == Some(&home);
        reg.alive_until = alive.then_some(self.far);
        self.dirty.regs.remove(&id);
        self.foreign.insert(id, home);
        self.mem.index.put(reg);
    }

    fn apply_alive(&mut self, id: u32, value: Option<&[u8]>) {
        let home = value.and_then(|v| String::from_utf8(v.to_vec()).ok());
        match home {
            Some(h) if h != self.opts.dc_name => {
                let mine = self.foreign.get(&id) == Some(&h);
                self.foreign_alive.insert(id, h);
                if mine {
                    self.set_foreign_alive(id, true);
                }
            }
            Some(_) => {}
            None => {
                if self.foreign_alive.remove(&id).is_some() {
                    self.set_foreign_alive(id, false);
                }
            }
        }
    }

    fn set_foreign_alive(&mut self, id: u32, alive: bool) {
        if !self.foreign.contains_key(&id) {
            return;
        }
        if let Some(mut r) = self.mem.index.get(id).cloned() {
            r.alive_until = alive.then_some(self.far);
            self.mem.index.put(r);
        }
    }

    /// A handoff in this DC's inbox: delivered (not at load: set-ups do
    /// not outlive a restart), and deleted at the next commit.
    fn take_post(&mut self, key: &[u8], value: &[u8], from: String, load: bool) {
        self.consumed.push(key.to_vec());
        if load {
            return;
        }
        match serde_json::from_slice::<Handoff>(value) {
            Ok(h) => self.inbox.push((from, h)),
            Err(e) => tracing::warn!(%from, error = %e, "unreadable handoff in the inbox, dropped"),
        }
    }

    /// Whether something other than marks is pending.
    fn pending(&self) -> bool {
        self.dirty.state()
            || !self.outbox.is_empty()
            || !self.consumed.is_empty()
            || !self.unclaim.is_empty()
    }

    /// The transactions of everything pending (marks too if `marks`).
    fn plan(&self, marks: bool) -> Plan {
        let mut plan = Plan::default();
        let me = self.opts.dc_name.as_str();
        for &id in &self.dirty.regs {
            match self.mem.index.get(id) {
                Some(_) if self.foreign.contains_key(&id) => {}
                Some(r) => {
                    let write = || self.reg_ops(me, r);
                    if self.claims.get(&r.vip) == Some(&id) {
                        plan.ops.extend(write());
                    } else {
                        let claim = claim_txn(self.keys.vip(r.vip), id, write(), write());
                        plan.claims.push((r.vip, id, claim));
                    }
                }
                None => {
                    plan.ops.push(TxnOp::delete(self.keys.reg(id), None));
                    plan.ops.push(TxnOp::delete(self.keys.alive(id), None));
                }
            }
        }
        for (&vip, &id) in &self.unclaim {
            let key = self.keys.vip(vip);
            let txn = Txn::new()
                .when([Compare::value(
                    key.clone(),
                    CompareOp::Equal,
                    id.to_string(),
                )])
                .and_then([TxnOp::delete(key, None)]);
            plan.unclaims.push((vip, id, txn));
        }
        if marks {
            for p in &self.dirty.marks {
                plan.ops.push(match self.mem.marks.get(p) {
                    Some(m) => TxnOp::put(self.keys.mark(*p), encode_mark(*m), None),
                    None => TxnOp::delete(self.keys.mark(*p), None),
                });
            }
        }
        if self.dirty.reserved {
            let seq = self.mem.reserved.seq.to_be_bytes().to_vec();
            plan.ops.push(TxnOp::put(self.keys.dc_seq(me), seq, None));
        }
        let leased = || Some(PutOptions::new().with_lease(self.lease));
        for (k, v) in &self.outbox {
            plan.ops.push(TxnOp::put(k.clone(), v.clone(), leased()));
        }
        for k in &self.consumed {
            plan.ops.push(TxnOp::delete(k.clone(), None));
        }
        plan
    }

    /// The record of a registration homed here and its `alive` key.
    fn reg_ops(&self, me: &str, r: &Registration) -> [TxnOp; 2] {
        let record = encode_reg(me, r, self.clock);
        let rec = TxnOp::put(self.keys.reg(r.node_id), record, None);
        let alive = if r.is_active() {
            let o = PutOptions::new().with_lease(self.lease);
            TxnOp::put(self.keys.alive(r.node_id), me, Some(o))
        } else {
            TxnOp::delete(self.keys.alive(r.node_id), None)
        };
        [rec, alive]
    }

    /// Writes everything pending; on success nothing is pending.
    fn write(&mut self, marks: bool) -> Result<(), StoreError> {
        self.recover_lease()?;
        let plan = self.plan(marks);
        // A large backlog (a restart's first write) gets time in proportion.
        let n = plan.ops.len() + plan.claims.len() + plan.unclaims.len();
        let limit = REQUEST_TIMEOUT + Duration::from_millis(n as u64 / 2);
        let c = self.client.clone();
        let out = self.call_within(limit, "writing", execute(c, plan))?;
        self.writes += 1;
        for (vip, id) in self.unclaim.drain() {
            if self.claims.get(&vip) == Some(&id) {
                self.claims.remove(&vip);
            }
        }
        for (vip, id) in out.won {
            self.claims.insert(vip, id);
        }
        let lost = self.forget_lost(&out.lost);
        self.dirty = Dirty::default();
        self.outbox.clear();
        self.consumed.clear();
        match lost {
            None => Ok(()),
            Some(msg) => Err(StoreError::Refused(msg)),
        }
    }

    /// Registrations whose VIP another DC claimed first: dropped, so that
    /// the node's next REG_REQ gets another VIP.
    fn forget_lost(&mut self, lost: &[(Ipv4Addr, u32, Option<u32>)]) -> Option<String> {
        let mut msg = None;
        for &(vip, id, owner) in lost {
            if self.mem.index.get(id).is_some_and(|r| r.vip == vip) {
                self.mem.index.remove(id);
            }
            if let Some(o) = owner {
                self.claims.insert(vip, o);
            }
            msg = Some(format!(
                "VIP {vip} was claimed by node id {} through another DC at the same moment; node id {id}'s registration is dropped and its retransmitted REG_REQ gets another VIP",
                owner.map_or("?".into(), |o| o.to_string())
            ));
        }
        msg
    }
}

fn etcd_err(opts: &EtcdOptions, what: &str) -> StoreError {
    StoreError::Etcd {
        endpoints: opts.endpoints.join(","),
        what: what.to_owned(),
    }
}

/// The claim of `vip` for node `id` with its writes: made if the node
/// holds it already or nobody does; otherwise the owner is read.
fn claim_txn(vip_key: String, id: u32, held: [TxnOp; 2], new: [TxnOp; 2]) -> Txn {
    let idv = id.to_string();
    let mut create = vec![TxnOp::put(vip_key.clone(), idv.clone(), None)];
    create.extend(new);
    let inner = Txn::new()
        .when([Compare::version(vip_key.clone(), CompareOp::Equal, 0)])
        .and_then(create)
        .or_else([TxnOp::get(vip_key.clone(), None)]);
    Txn::new()
        .when([Compare::value(vip_key, CompareOp::Equal, idv)])
        .and_then(held)
        .or_else([TxnOp::txn(inner)])
}

/// The owner a failed claim read, if any.
fn claim_owner(resp: &etcd_client::TxnResponse) -> Result<(), Option<u32>> {
    if resp.succeeded() {
        return Ok(());
    }
    let inner = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Txn(t) => Some(t),
        _ => None,
    });
    let Some(inner) = inner else { return Err(None) };
    if inner.succeeded() {
        return Ok(());
    }
    let owner = inner.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok()),
        _ => None,
    });
    Err(owner)
}

/// What one transaction of a commit came to: `None` for a plain one, a
/// claim's VIP, node and owner otherwise.
type Sent = Result<Option<(Ipv4Addr, u32, Result<(), Option<u32>>)>, etcd_client::Error>;

/// Sends a commit's transactions, at most [`IN_FLIGHT`] at once: the
/// unclaims, then everything else.
async fn execute(client: Client, plan: Plan) -> Result<Outcome, etcd_client::Error> {
    let mut out = Outcome::default();
    let unclaims = plan.unclaims.into_iter().map(|(_, _, txn)| {
        let mut c = client.clone();
        async move { c.txn(txn).await.map(|_| None) }
    });
    in_flight(unclaims, &mut out).await?;
    type Job = std::pin::Pin<Box<dyn Future<Output = Sent> + Send>>;
    let claims = plan.claims.into_iter().map(|(vip, id, txn)| {
        let mut c = client.clone();
        Box::pin(async move { c.txn(txn).await.map(|r| Some((vip, id, claim_owner(&r)))) }) as Job
    });
    let batches = plan
        .ops
        .chunks(TXN_OPS)
        .map(|b| b.to_vec())
        .collect::<Vec<_>>();
    let batches = batches.into_iter().map(|batch| {
        let mut c = client.clone();
        Box::pin(async move { c.txn(Txn::new().and_then(batch)).await.map(|_| None) }) as Job
    });
    in_flight(claims.chain(batches), &mut out).await?;
    Ok(out)
}

/// Runs `jobs` with at most [`IN_FLIGHT`] at once, noting claims in
/// `out`; the last error if any failed (all are tried).
async fn in_flight<F: Future<Output = Sent> + Send + 'static>(
    jobs: impl Iterator<Item = F>,
    out: &mut Outcome,
) -> Result<(), etcd_client::Error> {
    let mut set = tokio::task::JoinSet::new();
    let mut failed = None;
    let mut take = |r: Result<Sent, tokio::task::JoinError>| match r
        .map_err(|e| etcd_client::Error::Internal(e.to_string()))
    {
        Ok(Ok(Some((vip, id, Ok(()))))) => out.won.push((vip, id)),
        Ok(Ok(Some((vip, id, Err(owner))))) => out.lost.push((vip, id, owner)),
        Ok(Ok(None)) => {}
        Ok(Err(e)) | Err(e) => failed = Some(e),
    };
    for job in jobs {
        if set.len() >= IN_FLIGHT {
            if let Some(r) = set.join_next().await {
                take(r);
            }
        }
        set.spawn(job);
    }
    while let Some(r) = set.join_next().await {
        take(r);
    }
    failed.map_or(Ok(()), Err)
}

/// Every key under `prefix` at one revision, a page at a time.
async fn load_all(
    mut client: Client,
    prefix: String,
) -> Result<(i64, Vec<(Vec<u8>, Vec<u8>)>), etcd_client::Error> {
    let mut end = prefix.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut from = prefix.into_bytes();
    let (mut rev, mut out) = (0, Vec::new());
    loop {
        let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if rev > 0 {
            o = o.with_revision(rev);
        }
        let resp = client.get(from.clone(), Some(o)).await?;
        if rev == 0 {
            rev = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            out.push((kv.key().to_vec(), kv.value().to_vec()));
        }
        match resp.kvs().last() {
            Some(kv) if resp.more() => {
                from = kv.key().to_vec();
                from.push(0);
            }
            _ => return Ok((rev, out)),
        }
    }
}

/// Follows every change under `prefix` from revision `from`, starting
/// again where it stopped when a stream breaks (an etcd member went away).
async fn watch_loop(
    client: Client,
    prefix: String,
    mut from: i64,
    sink: Arc<Mutex<Vec<Watched>>>,
    resync: Arc<AtomicBool>,
) {
    loop {
        let o = WatchOptions::new().with_prefix().with_start_revision(from);
        match client.watch_client().watch(prefix.clone(), Some(o)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() => {
                        tracing::warn!(reason = resp.cancel_reason(), "the etcd watch was cancelled (compacted past revision {from}?): reading the store again");
                        resync.store(true, Ordering::Relaxed);
                        return;
                    }
                    Ok(Some(resp)) => {
                        let mut got = Vec::with_capacity(resp.events().len());
                        for e in resp.events() {
                            let Some(kv) = e.kv() else { continue };
                            from = from.max(kv.mod_revision() + 1);
                            got.push(Watched {
                                put: e.event_type() == EventType::Put,
                                key: kv.key().to_vec(),
                                value: kv.value().to_vec(),
                            });
                        }
                        if let Ok(mut w) = sink.lock() {
                            w.extend(got);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "etcd watch broke, watching again");
                        break;
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "cannot watch etcd yet"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps `lease` alive every `every`; sets `lost` if it expired.
async fn keep_lease(client: Client, lease: i64, every: Duration, lost: Arc<AtomicBool>) {
    loop {
        if let Ok((mut keeper, mut stream)) = client.lease_client().keep_alive(lease).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match stream.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => {
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    _ => break,
                }
                tokio::time::sleep(every).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Drop for EtcdStore {
    /// A clean stop writes the last marks and ends the lease: other DCs
    /// see this DC's nodes lapse at once (and the nodes move on).
    fn drop(&mut self) {
        if let Err(e) = self.commit_all() {
            tracing::warn!(error = %e, "the last replay marks were not written");
        }
        let (mut c, lease) = (self.client.clone(), self.lease);
        // No lease: the store never opened (the error was told already).
        if lease == 0 {
            if let Some(rt) = self.rt.take() {
                rt.shutdown_background();
            }
            return;
        }
        if let Err(e) = self.call("ending the DC's lease", async move {
            c.lease_revoke(lease).await
        }) {
            tracing::warn!(error = %e, "the DC's etcd lease was not ended: it expires by itself");
        }
        if let Some(rt) = self.rt.take() {
            // Inside the driver's runtime a blocking shutdown would panic.
            rt.shutdown_background();
        }
    }
}

impl DcStore for EtcdStore {
    fn cached(&self) -> &MemoryStore {
        &self.mem
    }

    fn vip_owner(&self, vip: Ipv4Addr) -> Option<u32> {
        // A claim whose record has not arrived yet counts too.
        let claim = self.claims.get(&vip).copied();
        let claim = claim.filter(|id| self.unclaim.get(&vip) != Some(id));
        self.mem.index.vip_owner(vip).or(claim)
    }

    fn put(&mut self, reg: Registration) {
        let id = reg.node_id;
        // A node that talks to this DC has it as its home (a failover).
        let takeover = self.foreign.remove(&id).is_some();
        let old = self.mem.index.get(id).cloned();
        let liveness = !takeover && old.as_ref().is_some_and(|o| o.only_liveness_differs(&reg));
        if let Some(o) = old.filter(|o| o.vip != reg.vip) {
            self.unclaim.insert(o.vip, id);
        }
        if self.unclaim.get(&reg.vip) == Some(&id) {
            self.unclaim.remove(&reg.vip);
        }
        let gone = self.mem.index.put(reg);
        if !liveness {
            for g in gone.into_iter().filter(|&g| g != id) {
                if self.foreign.remove(&g).is_none() {
                    self.dirty.regs.insert(g);
                }
            }
            self.dirty.regs.insert(id);
        }
    }

    fn remove(&mut self, node_id: u32) -> Option<Registration> {
        let r = self.mem.index.remove(node_id)?;
        if self.foreign.remove(&node_id).is_none() {
            self.dirty.regs.insert(node_id);
            self.unclaim.insert(r.vip, node_id);
        }
        Some(r)
    }

    fn expire(&mut self, now: Instant) -> Vec<Expiry> {
        self.apply_watched();
        let out = self.mem.index.expire(now);
        for e in &out {
            match e {
                Expiry::Lapsed(r) => {
                    self.dirty.regs.insert(r.node_id);
                }
                Expiry::Released(r) => {
                    // Another DC's: released by it, or by anyone once that
                    // DC is gone.
                    let home = self.foreign.remove(&r.node_id);
                    if home.is_none_or(|h| !self.live.contains(&h)) {
                        self.dirty.regs.insert(r.node_id);
                        self.unclaim.insert(r.vip, r.node_id);
                    }
                }
            }
        }
        out
    }

    fn set_mark(&mut self, peer: Peer, mark: Mark) {
        self.dirty.set_mark(&mut self.mem, peer, mark);
    }

    fn forget_mark(&mut self, peer: Peer) {
        self.dirty.forget_mark(&mut self.mem, peer);
    }

    /// Only the seq is this DC's; the tunnel counter is reserved with
    /// [`DcStore::reserve_tunnel_ids`] and the salt is shared.
    fn set_reserved(&mut self, r: Reserved) {
        if r.seq != self.mem.reserved.seq {
            self.mem.reserved.seq = r.seq;
            self.dirty.reserved = true;
        }
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.pending() || self.lease_lost.load(Ordering::Relaxed) {
            self.write(true)
        } else {
            Ok(())
        }
    }

    fn commit_all(&mut self) -> Result<(), StoreError> {
        if self.pending() || !self.dirty.marks.is_empty() {
            self.write(true)
        } else {
            Ok(())
        }
    }

    /// Marks alone go out in the background: a second's worth of
    /// keep-alive marks (5,000 at 100,000 nodes) would otherwise hold the
    /// DC up for as long as etcd takes. A failed background write is
    /// logged; each of those marks is written again when it next moves.
    fn commit_marks(&mut self) -> Result<(), StoreError> {
        if self.pending() || self.lease_lost.load(Ordering::Relaxed) {
            return self.commit_all();
        }
        let plan = Plan {
            ops: self.plan(true).ops,
            ..Plan::default()
        };
        self.dirty.marks.clear();
        if plan.ops.is_empty() {
            return Ok(());
        }
        let (c, endpoints) = (self.client.clone(), self.opts.endpoints.join(","));
        if let Some(rt) = &self.rt {
            rt.spawn(async move {
                if let Err(e) = execute(c, plan).await {
                    tracing::warn!(%endpoints, error = %e, "writing replay marks to etcd failed; each is written again when it next moves");
                }
            });
        }
        Ok(())
    }

    fn reserve_tunnel_ids(&mut self, block: u64) -> Result<u64, StoreError> {
        let key = self.keys.tunnels_next();
        for _ in 0..16 {
            let (mut c, k) = (self.client.clone(), key.clone());
            let got = self.call("reading the tunnel id counter", async move {
                c.get(k, None).await
            })?;
            let (first, rev) = got.kvs().first().map_or((0, 0), |kv| {
                (decode_u64(kv.value()).unwrap_or(0), kv.mod_revision())
            });
            let next = first.saturating_add(block);
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key.clone(), next.to_be_bytes().to_vec(), None)]);
            let mut c = self.client.clone();
            let won = self.call("reserving tunnel ids", async move {
                c.txn(txn).await.map(|r| r.succeeded())
            })?;
            if won {
                self.mem.reserved.tunnel_ids = next;
                return Ok(first);
            }
        }
        Err(StoreError::Refused(
            "the shared tunnel id counter kept changing under this DC (16 tries); the next direction tries again".into(),
        ))
    }

    fn shared(&self) -> bool {
        true
    }

    fn remote_home(&self, node_id: u32) -> Option<&str> {
        self.foreign.get(&node_id).map(String::as_str)
    }

    fn takeover_seq(&self, node_id: u32) -> Option<u64> {
        let home = self.foreign.get(&node_id)?;
        self.dc_seqs.get(home).copied()
    }

    fn post(&mut self, dc: &str, h: Handoff) {
        self.posts += 1;
        let key = self.keys.post(dc, &self.opts.dc_name, self.posts);
        match serde_json::to_vec(&h) {
            Ok(v) => self.outbox.push((key, v)),
            Err(e) => tracing::warn!(error = %e, "cannot encode a handoff"),
        }
    }

    fn take_handoffs(&mut self) -> Vec<(String, Handoff)> {
        self.apply_watched();
        std::mem::take(&mut self.inbox)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests as common;
    use super::*;

    fn keys() -> Keys {
        Keys { p: "/ntm".into() }
    }

    #[test]
    fn keys_round_trip() {
        let k = keys();
        let vip = Ipv4Addr::new(100, 64, 0, 9);
        for (key, rec) in [
            (k.reg(7), Record::Reg(7)),
            (k.alive(u32::MAX), Record::Alive(u32::MAX)),
            (k.vip(vip), Record::Vip(vip)),
            (k.mark(Peer::Relay(3)), Record::Mark(Peer::Relay(3))),
            (k.dc_seq("dc1"), Record::DcSeq("dc1".into())),
            (k.live("dc-2"), Record::Live("dc-2".into())),
            (k.tunnels_next(), Record::TunnelsNext),
            (k.tunnel_salt(), Record::TunnelSalt),
            (
                k.post("dc2", "dc1", 5),
                Record::Inbox {
                    to: "dc2".into(),
                    from: "dc1".into(),
                },
            ),
        ] {
            assert_eq!(k.parse(key.as_bytes()), rec, "{key}");
        }
        for other in [
            "/ntmx/reg/7",
            "/ntm/reg/zz",
            "/ntm/mark/300000000",
            "/other",
            "/ntm/reg",
        ] {
            assert_eq!(k.parse(other.as_bytes()), Record::Other, "{other}");
        }
        assert_eq!(k.all(), "/ntm/");
    }

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let now = Instant::now();
        let clock = Clock {
            now,
            unix_nanos: 1_700_000_000_000_000_000,
        };
        let r = common::reg(7, "a.ntm.test", 2, now);
        let b = encode_reg("dc1", &r, clock);
        let (home, back) = decode_reg(&b, clock).unwrap();
        assert_eq!(home, "dc1");
        assert_eq!(back.fqdn, r.fqdn);
        assert_eq!(back.vip, r.vip);
        for n in 0..b.len() {
            assert_eq!(decode_reg(&b[..n], clock), None, "cut at {n}");
        }
        let mut v2 = b;
        v2[0] = 2;
        assert_eq!(decode_reg(&v2, clock), None);
        let m = Mark {
            seq: 99,
            key_id: [4; 8],
        };
        assert_eq!(decode_mark(&encode_mark(m)), Some(m));
        assert_eq!(decode_mark(&[1, 2, 3]), None);
    }

    #[allow(dead_code)]
    mod process {
        include!("../../tests/support/etcd.rs");
    }
    use process::Etcd;

    fn options(e: &[&Etcd], name: &str, prefix: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: e.iter().map(|m| m.url.clone()).collect(),
            prefix: prefix.into(),
            dc_name: name.into(),
            ttl: Duration::from_secs(3),
        }
    }

    fn open(e: &Etcd, name: &str, prefix: &str) -> EtcdStore {
        EtcdStore::open(
            options(&[e], name, prefix),
            Instant::now(),
            1_700_000_000_000_000_000,
        )
        .unwrap()
    }

    /// Waits for a state another store's watch brings.
    fn wait(s: &mut EtcdStore, what: &str, mut ok: impl FnMut(&mut EtcdStore) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            s.take_handoffs();
            if ok(s) {
                return;
            }
            assert!(Instant::now() < deadline, "not reached: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn etcd_keeps_what_every_store_keeps_and_reloads_it() {
        let e = Etcd::start();
        common::lookups_by_id_fqdn_and_vip(&mut open(&e, "dc1", "/t1"));
        let s = open(&e, "dc1", "/t1");
        assert_eq!(s.registrations().len(), 1);
        assert_eq!(s.get(9).unwrap().fqdn, "c.ntm.test");
        assert_eq!(s.vip_owner(Ipv4Addr::new(100, 64, 0, 4)), Some(9));
        assert_eq!(s.remote_home(9), None, "its own");
        drop(s);
        common::expiry_lapses_then_releases(&mut open(&e, "dc1", "/t2"));
        assert!(open(&e, "dc1", "/t2").is_empty());
        let mut s = open(&e, "dc1", "/t3");
        let m = Mark {
            seq: 1_700_000_000_000_000_123,
            key_id: [1; 8],
        };
        s.set_mark(Peer::Node(7), m);
        s.set_reserved(Reserved {
            seq: 10,
            ..s.reserved()
        });
        assert_ne!(s.reserved().tunnel_salt, 0, "a shared salt from the start");
        s.commit_all().unwrap();
        drop(s);
        let s = open(&e, "dc1", "/t3");
        assert_eq!(s.mark(Peer::Node(7)), Some(m));
        assert_eq!(s.reserved().seq, 10);
    }

    #[test]
    fn other_dcs_see_registrations_marks_and_homes() {
        let e = Etcd::start();
        let (mut a, mut b) = (open(&e, "dc1", "/ntm"), open(&e, "dc2", "/ntm"));
        let now = Instant::now();
        a.put(common::reg(7, "a.ntm.test", 2, now));
        a.set_mark(
            Peer::Node(7),
            Mark {
                seq: 5,
                key_id: [1; 8],
            },
        );
        a.set_reserved(Reserved {
            seq: 77,
            ..a.reserved()
        });
        a.commit().unwrap();
        // The claim of the VIP and the other records are transactions of
        // their own, sent at once: dc2 may see them in any order.
        wait(
            &mut b,
            "dc1's node, its DC's seq and its mark at dc2",
            |b| {
                b.get(7).is_some_and(|r| r.is_active())
                    && b.takeover_seq(7) == Some(77)
                    && b.mark(Peer::Node(7)).is_some_and(|m| m.seq == 5)
            },
        );
        assert_eq!(b.remote_home(7), Some("dc1"));
        assert_eq!(b.vip_owner(Ipv4Addr::new(100, 64, 0, 2)), Some(7));
        // The node moves to dc2: dc2 is its home, and dc1 sees that.
        let r = b.get(7).unwrap();
        b.put(Registration {
            alive_until: Some(now + Duration::from_secs(60)),
            ..r
        });
        b.commit().unwrap();
        assert_eq!(b.remote_home(7), None);
        wait(&mut a, "the move at dc1", |a| {
            a.remote_home(7) == Some("dc2")
        });
        // A watch that lost its place: the store is read again, and a new
        // watch goes on from there.
        a.resync.store(true, Ordering::Relaxed);
        a.take_handoffs();
        assert_eq!(a.remote_home(7), Some("dc2"));
        assert!(a.get(7).unwrap().is_active());
        // dc2 stops: its lease ends, and dc1 sees the node lapse (the VIP
        // stays its).
        drop(b);
        wait(&mut a, "the lapse at dc1", |a| {
            a.get(7).is_some_and(|r| !r.is_active())
        });
        assert_eq!(a.vip_owner(Ipv4Addr::new(100, 64, 0, 2)), Some(7));
    }

    #[test]
    fn two_dcs_never_claim_one_vip_nor_share_tunnel_ids() {
        let e = Etcd::start();
        let now = Instant::now();
        let (a, b) = (open(&e, "dc1", "/ntm"), open(&e, "dc2", "/ntm"));
        let run = |mut s: EtcdStore, id: u32| {
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for _ in 0..20 {
                    ids.push(s.reserve_tunnel_ids(16).unwrap());
                }
                // Both take VIP .9 for another node at once.
                s.put(common::reg(id, &format!("n{id}.ntm.test"), 9, now));
                let won = s.commit().is_ok();
                (s, ids, won)
            })
        };
        let (ta, tb) = (run(a, 1), run(b, 2));
        let (mut a, ids_a, won_a) = ta.join().unwrap();
        let (mut b, ids_b, won_b) = tb.join().unwrap();
        let mut all: Vec<u64> = ids_a.iter().chain(&ids_b).copied().collect();
        all.sort_unstable();
        assert!(
            all.windows(2).all(|w| w[1] >= w[0] + 16),
            "blocks overlap: {all:?}"
        );
        assert!(won_a != won_b, "exactly one claim wins: {won_a} {won_b}");
        let (winner, loser) = if won_a { (1, &mut b) } else { (2, &mut a) };
        assert_eq!(
            loser.get(3 - winner),
            None,
            "the loser's registration is dropped"
        );
        assert_eq!(loser.vip_owner(Ipv4Addr::new(100, 64, 0, 9)), Some(winner));
        loser.commit().unwrap();
    }

    #[test]
    fn a_second_dc_with_the_same_name_is_refused() {
        let e = Etcd::start();
        let _first = open(&e, "dc1", "/ntm");
        let mut o = options(&[&e], "dc1", "/ntm");
        o.ttl = Duration::from_secs(1);
        let err = EtcdStore::open(o, Instant::now(), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dc_name = \"dc1\""), "{err}");
    }

    #[test]
    fn handoffs_round_trip_as_json() {
        let h = Handoff::RouteAck {
            tunnel_id: 5,
            node_id: 6,
        };
        let v = serde_json::to_vec(&h).unwrap();
        assert_eq!(serde_json::from_slice::<Handoff>(&v).unwrap(), h);
    }
}
