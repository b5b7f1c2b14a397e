//! [`RedbStore`]: the DC's state in memory, with a durable copy in a redb
//! file that is read once at start and written at every commit.
//!
//! The file has three tables: `registrations` (node id → an encoded
//! [`Registration`], times as Unix nanoseconds), `marks` (peer → highest
//! seq and key fingerprint) and `meta` (the format version and the
//! [`Reserved`] counters). A record it cannot read refuses the start with
//! [`StoreError::Corrupt`] rather than guess.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ntm_proto::wire::Caps;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{DcStore, Dirty, Expiry, Mark, MemoryStore, Peer, Registration, Reserved, StoreError};

const REGISTRATIONS: TableDefinition<u32, &[u8]> = TableDefinition::new("registrations");
const MARKS: TableDefinition<u64, (u64, [u8; 8])> = TableDefinition::new("marks");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The layout this code writes; a file with another refuses to load.
const FORMAT: u64 = 1;
/// The first byte of an encoded registration.
const REG_V1: u8 = 1;

/// Instants of this process against Unix time, to store deadlines in a
/// form that means something to the next process.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub(super) now: Instant,
    pub(super) unix_nanos: u64,
}

impl Clock {
    pub(super) fn to_unix(self, t: Instant) -> u64 {
        match t.checked_duration_since(self.now) {
            Some(d) => self.unix_nanos.saturating_add(d.as_nanos() as u64),
            None => {
                let d = self.now.duration_since(t).as_nanos() as u64;
                self.unix_nanos.saturating_sub(d)
            }
        }
    }

    /// A deadline stored by an earlier process; one before anything this
    /// clock can show is "now" (it has passed).
    pub(super) fn instant_of(self, u: u64) -> Instant {
        if u >= self.unix_nanos {
            let ahead = Duration::from_nanos(u - self.unix_nanos);
            self.now.checked_add(ahead).unwrap_or(self.now)
        } else {
            let behind = Duration::from_nanos(self.unix_nanos - u);
            self.now.checked_sub(behind).unwrap_or(self.now)
        }
    }
}

/// The DC's state in memory, durable in a redb file (see the
/// [store docs](super)).
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    clock: Clock,
    /// The state as it stands; the file holds what was committed of it.
    mem: MemoryStore,
    dirty: Dirty,
    /// Transactions written (each one fsync).
    writes: u64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("registrations", &self.mem.index.len())
            .field("marks", &self.mem.marks.len())
            .field("reserved", &self.mem.reserved)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if there is none, and
    /// reads everything in it. `now` and `unix_nanos` are the same moment
    /// on the monotonic and the Unix clock (deadlines are stored as Unix
    /// time).
    pub fn open(path: &Path, now: Instant, unix_nanos: u64) -> Result<RedbStore, StoreError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: shown.clone(),
            source: Box::new(e.into()),
        })?;
        let mut s = RedbStore {
            db,
            path: path.to_owned(),
            clock: Clock { now, unix_nanos },
            mem: MemoryStore::default(),
            dirty: Dirty::default(),
            writes: 0,
        };
        s.init()?;
        s.load()?;
        Ok(s)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Transactions written since it was opened (each is one fsync).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    fn io(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            source: Box::new(e.into()),
        }
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.display().to_string(),
            what,
        }
    }

    /// Creates the tables and the format record of a new file, and checks
    /// the format of an old one.
    fn init(&mut self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        let format = {
            txn.open_table(REGISTRATIONS).map_err(|e| self.io(e))?;
            txn.open_table(MARKS).map_err(|e| self.io(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            let format = meta
                .get("format")
                .map_err(|e| self.io(e))?
                .map(|v| v.value());
            if format.is_none() {
                meta.insert("format", FORMAT).map_err(|e| self.io(e))?;
            }
            format
        };
        txn.commit().map_err(|e| self.io(e))?;
        match format {
            None | Some(FORMAT) => Ok(()),
            Some(other) => {
                Err(self.corrupt(format!("format {other}, this ntm-dc reads format {FORMAT}")))
            }
        }
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let regs = txn.open_table(REGISTRATIONS).map_err(|e| self.io(e))?;
        for row in regs.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let id = k.value();
            let reg = decode(v.value(), self.clock)
                .filter(|r| r.node_id == id)
                .ok_or_else(|| self.corrupt(format!("registration of node id {id}")))?;
            self.mem.index.put(reg);
        }
        let marks = txn.open_table(MARKS).map_err(|e| self.io(e))?;
        for row in marks.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let peer = Peer::from_u64(k.value())
                .ok_or_else(|| self.corrupt(format!("replay mark {:#x}", k.value())))?;
            let (seq, key_id) = v.value();
            self.mem.marks.insert(peer, Mark { seq, key_id });
        }
        let meta = txn.open_table(META).map_err(|e| self.io(e))?;
        let get = |name: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(name)
                .map_err(|e| self.io(e))?
                .map_or(0, |v| v.value()))
        };
        self.mem.reserved = Reserved {
            seq: get("seq")?,
            tunnel_ids: get("tunnel_ids")?,
            tunnel_salt: u32::try_from(get("tunnel_salt")?)
                .map_err(|_| self.corrupt("tunnel_salt".into()))?,
        };
        Ok(())
    }

    /// One transaction with everything pending.
    fn write(&mut self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut regs = txn.open_table(REGISTRATIONS).map_err(|e| self.io(e))?;
            for id in &self.dirty.regs {
                match self.mem.index.get(*id) {
                    Some(r) => regs.insert(*id, encode(r, self.clock).as_slice()).map(drop),
                    None => regs.remove(*id).map(drop),
                }
                .map_err(|e| self.io(e))?;
            }
            let mut marks = txn.open_table(MARKS).map_err(|e| self.io(e))?;
            for p in &self.dirty.marks {
                match self.mem.marks.get(p) {
                    Some(m) => marks.insert(p.to_u64(), (m.seq, m.key_id)).map(drop),
                    None => marks.remove(p.to_u64()).map(drop),
                }
                .map_err(|e| self.io(e))?;
            }
            if self.dirty.reserved {
                let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
                let r = self.mem.reserved;
                for (name, v) in [
                    ("seq", r.seq),
                    ("tunnel_ids", r.tunnel_ids),
                    ("tunnel_salt", r.tunnel_salt.into()),
                ] {
                    meta.insert(name, v).map_err(|e| self.io(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.io(e))?;
        self.writes += 1;
        self.dirty = Dirty::default();
        Ok(())
    }
}

impl Drop for RedbStore {
    /// A clean stop writes the marks the last second moved.
    fn drop(&mut self) {
        if let Err(e) = self.commit_all() {
            tracing::warn!(error = %e, "the last replay marks were not written");
        }
    }
}

impl DcStore for RedbStore {
    fn cached(&self) -> &MemoryStore {
        &self.mem
    }

    fn put(&mut self, reg: Registration) {
        let liveness = self
            .mem
            .index
            .get(reg.node_id)
            .is_some_and(|old| old.only_liveness_differs(&reg));
        let id = reg.node_id;
        let gone = self.mem.index.put(reg);
        if !liveness {
            self.dirty.regs.extend(gone);
            self.dirty.regs.insert(id);
        }
    }

    fn remove(&mut self, node_id: u32) -> Option<Registration> {
        let r = self.mem.index.remove(node_id)?;
        self.dirty.regs.insert(node_id);
        Some(r)
    }

    fn expire(&mut self, now: Instant) -> Vec<Expiry> {
        let out = self.mem.index.expire(now);
        for e in &out {
            let (Expiry::Lapsed(r) | Expiry::Released(r)) = e;
            self.dirty.regs.insert(r.node_id);
        }
        out
    }

    fn set_mark(&mut self, peer: Peer, mark: Mark) {
        self.dirty.set_mark(&mut self.mem, peer, mark);
    }

    fn forget_mark(&mut self, peer: Peer) {
        self.dirty.forget_mark(&mut self.mem, peer);
    }

    fn set_reserved(&mut self, r: Reserved) {
        if r != self.mem.reserved {
            self.mem.reserved = r;
            self.dirty.reserved = true;
        }
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.dirty.state() {
            self.write()
        } else {
            Ok(())
        }
    }

    fn commit_all(&mut self) -> Result<(), StoreError> {
        if self.dirty.state() || !self.dirty.marks.is_empty() {
            self.write()
        } else {
            Ok(())
        }
    }
}

/// A registration as stored: version, FQDN (length-prefixed), VIP,
/// observed and local address, caps, alive-until (flag and time), lease
/// end; integers big-endian, times in Unix ns.
pub(super) fn encode(r: &Registration, clock: Clock) -> Vec<u8> {
    let mut b = Vec::with_capacity(48 + r.fqdn.len());
    b.push(REG_V1);
    b.extend_from_slice(&r.node_id.to_be_bytes());
    // FQDNs are at most 253 bytes (validated at configuration).
    b.push(r.fqdn.len().min(255) as u8);
    b.extend_from_slice(&r.fqdn.as_bytes()[..r.fqdn.len().min(255)]);
    b.extend_from_slice(&r.vip.octets());
    for a in [r.observed, r.local] {
        b.extend_from_slice(&a.ip().octets());
        b.extend_from_slice(&a.port().to_be_bytes());
    }
    b.extend_from_slice(&r.caps.0.to_be_bytes());
    match r.alive_until {
        Some(t) => {
            b.push(1);
            b.extend_from_slice(&clock.to_unix(t).to_be_bytes());
        }
        None => {
            b.push(0);
            b.extend_from_slice(&0u64.to_be_bytes());
        }
    }
    b.extend_from_slice(&clock.to_unix(r.lease_until).to_be_bytes());
    b
}

/// Reads what [`encode`] wrote; `None` for anything else (never panics).
pub(super) fn decode(b: &[u8], clock: Clock) -> Option<Registration> {
    let mut r = Reader(b);
    if r.u8()? != REG_V1 {
        return None;
    }
    let node_id = u32::from_be_bytes(r.array()?);
    let n = r.u8()?;
    let fqdn = String::from_utf8(r.take(n.into())?.to_vec()).ok()?;
    let vip = Ipv4Addr::from(r.array::<4>()?);
    let mut addr = || -> Option<SocketAddrV4> {
        let ip = Ipv4Addr::from(r.array::<4>()?);
        Some(SocketAddrV4::new(ip, u16::from_be_bytes(r.array()?)))
    };
    let (observed, local) = (addr()?, addr()?);
    let caps = Caps(u32::from_be_bytes(r.array()?));
    let alive = r.u8()?;
    let alive_at = u64::from_be_bytes(r.array()?);
    let alive_until = match alive {
        0 => None,
        1 => Some(clock.instant_of(alive_at)),
        _ => return None,
    };
    let lease_until = clock.instant_of(u64::from_be_bytes(r.array()?));
    if !r.0.is_empty() {
        return None;
    }
    Some(Registration {
        node_id,
        fqdn,
        vip,
        observed,
        local,
        caps,
        alive_until,
        lease_until,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests as common;
    use super::*;

    /// A fresh file in a fresh directory, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ntm-dc-store-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn file(&self) -> PathBuf {
            self.0.join("dc.redb")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(dir: &TempDir) -> RedbStore {
        RedbStore::open(&dir.file(), Instant::now(), 1_700_000_000_000_000_000).unwrap()
    }

    #[test]
    fn redb_lookups_by_id_fqdn_and_vip() {
        let dir = TempDir::new("lookups");
        common::lookups_by_id_fqdn_and_vip(&mut open(&dir));
        // What the test left (one registration, c.ntm.test) is read back.
        let s = open(&dir);
        assert_eq!(s.registrations().len(), 1);
        assert_eq!(s.get(9).unwrap().fqdn, "c.ntm.test");
        assert_eq!(s.vip_owner(Ipv4Addr::new(100, 64, 0, 4)), Some(9));
        assert_eq!(s.get(7), None);
    }

    #[test]
    fn redb_expiry_lapses_then_releases() {
        let dir = TempDir::new("expiry");
        common::expiry_lapses_then_releases(&mut open(&dir));
        assert!(open(&dir).is_empty());
    }

    #[test]
    fn redb_marks_and_reserved() {
        let dir = TempDir::new("marks");
        common::marks_and_reserved(&mut open(&dir));
        let s = open(&dir);
        assert_eq!(
            s.mark(Peer::Node(7)).unwrap().seq,
            1_700_000_000_000_000_123
        );
        assert_eq!(s.mark(Peer::Relay(7)), None);
        assert_eq!(s.reserved().tunnel_ids, 20);
    }

    #[test]
    fn registrations_keep_their_deadlines_across_processes() {
        let dir = TempDir::new("deadlines");
        let t0 = Instant::now();
        let unix0 = 1_700_000_000_000_000_000u64;
        let mut r = common::reg(7, "a.ntm.test", 2, t0);
        {
            let mut s = RedbStore::open(&dir.file(), t0, unix0).unwrap();
            s.put(r.clone());
            s.commit().unwrap();
        }
        // A "later process": its Instant is another, its Unix time 5 s on.
        let t1 = Instant::now();
        let s = RedbStore::open(&dir.file(), t1, unix0 + 5_000_000_000).unwrap();
        let back = s.get(7).unwrap();
        let left = back.lease_until.duration_since(t1);
        assert!(left <= Duration::from_secs(595) && left > Duration::from_secs(594));
        r.alive_until = back.alive_until;
        r.lease_until = back.lease_until;
        assert_eq!(back, r);
    }

    #[test]
    fn liveness_alone_waits_for_the_next_write() {
        let dir = TempDir::new("liveness");
        let now = Instant::now();
        let mut s = open(&dir);
        let r = common::reg(7, "a.ntm.test", 2, now);
        s.put(r.clone());
        s.commit().unwrap();
        let mut later = r.clone();
        later.alive_until = Some(now + Duration::from_secs(80));
        s.put(later);
        assert!(!s.dirty.state(), "a keep-alive is not a write");
        s.set_mark(
            Peer::Node(7),
            Mark {
                seq: 9,
                key_id: [0; 8],
            },
        );
        assert!(!s.dirty.state(), "nor is a mark");
        let mut moved = r;
        moved.observed = "198.18.0.99:7700".parse().unwrap();
        s.put(moved);
        assert!(s.dirty.state(), "a new address is");
    }

    #[test]
    fn damaged_records_are_refused_not_guessed() {
        let now = Instant::now();
        let clock = Clock {
            now,
            unix_nanos: 1_700_000_000_000_000_000,
        };
        let good = encode(&common::reg(7, "a.ntm.test", 2, now), clock);
        assert!(decode(&good, clock).is_some());
        for n in 0..good.len() {
            assert_eq!(decode(&good[..n], clock), None, "cut at {n}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer, clock), None);
        let mut v2 = good;
        v2[0] = 2;
        assert_eq!(decode(&v2, clock), None);

        let dir = TempDir::new("corrupt");
        std::fs::write(dir.file(), b"not a database").unwrap();
        let e = RedbStore::open(&dir.file(), now, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot open the DC store"), "{e}");
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = TempDir::new("twice");
        let _first = open(&dir);
        let e = RedbStore::open(&dir.file(), Instant::now(), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no other ntm-dc"), "{e}");
    }
}
