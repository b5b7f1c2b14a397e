//! The DNS stub of a node or adapter (docs/protocol.md §6 "DNS"), sans-IO and at
//! message level: DNS payloads in, DNS payloads and work for the caller out.
//!
//! Names under the NTM suffix are resolved through the DC: the stub asks
//! for a resolution ([`Output::Resolve`]), the caller sends DIR_REQ and
//! reports the result with [`DnsStub::answer`], and every query waiting on
//! that name gets an A record with the peer's VIP (TTL at most 60 s), an
//! empty NOERROR for other types, NXDOMAIN for NOT_FOUND, SERVFAIL on
//! time-out. Every other query is forwarded to the upstream resolver
//! ([`Output::Upstream`]) with a fresh DNS id, over the transport it came
//! on, and the reply relayed back unchanged except for the id.
//!
//! The caller says how each query came ([`Transport`]). Over UDP, an
//! answer (ours or a relayed one) larger than the client can take — 512
//! bytes, or the UDP size of its EDNS option, and never more than
//! [`StubConfig::max_udp_payload`] (the inner MTU minus 28) — goes back
//! truncated: the same id and flags with TC set, the rcode kept, the
//! question only, and an OPT record if the client sent one; the client then
//! asks again over TCP. Over TCP (RFC 7766) every answer fits (up to 65535
//! bytes), several queries of one client may be pending at once and are
//! answered as each is ready, and a forwarded query that upstream never
//! answers gets SERVFAIL (a TCP client does not retransmit).
//!
//! The stub does no I/O and reads no clock. `C` names a client (a socket
//! address for the software node, MAC + IP + port for the adapter); replies
//! come out addressed to it. After every call, drain [`DnsStub::poll_output`]
//! until `None`; call [`DnsStub::handle_timeout`] when
//! [`DnsStub::poll_timeout`] is reached. Both pending tables are bounded and
//! expire by time; every refusal is a [`DnsDrop`] for the caller to count.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// DNS port.
pub const PORT: u16 = 53;
/// Largest query accepted over UDP (plain DNS over UDP, RFC 1035 §4.2.1).
pub const MAX_QUERY_LEN: usize = 512;
/// Largest message over TCP (its 2-byte length prefix, RFC 1035 §4.2.2).
pub const MAX_TCP_MESSAGE: usize = 65_535;
/// What every UDP client can take (RFC 1035 §4.2.1; RFC 6891 §6.2.5 treats
/// a smaller EDNS size as this).
pub const MIN_UDP_PAYLOAD: usize = 512;
/// Largest UDP payload in an IPv4 datagram.
pub const MAX_UDP_PAYLOAD_LIMIT: usize = 65_507;
/// IPv4 and UDP headers: the inner MTU minus this is the largest UDP answer.
pub const IPV4_UDP_HEADERS: usize = 28;
/// Queries for one name that may wait on one resolution.
pub const MAX_WAITERS_PER_NAME: usize = 16;
/// Largest pending table (keeps the search for a fresh forward id short).
pub const MAX_PENDING_LIMIT: usize = 4096;
/// Largest TTL of an A record for an NTM name (§6).
pub const MAX_TTL: u32 = 60;
/// DNS header length.
pub const HEADER_LEN: usize = 12;

/// Settings of a [`DnsStub`]. [`StubConfig::validate`] says what is wrong;
/// [`DnsStub::new`] clamps what it is given into range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubConfig {
    /// TTL of A records for NTM names (at most [`MAX_TTL`]).
    pub ttl: u32,
    /// Bound of each pending table (queries waiting for the DC, queries
    /// waiting for the upstream resolver), at most [`MAX_PENDING_LIMIT`].
    pub max_pending: usize,
    /// Queries waiting for the DC get SERVFAIL after this long.
    pub resolve_timeout: Duration,
    /// Forwarded queries are forgotten after this long (those that came
    /// over TCP get SERVFAIL).
    pub forward_timeout: Duration,
    /// Largest UDP answer ever sent, whatever the client's EDNS size: the
    /// inner MTU minus [`IPV4_UDP_HEADERS`] (1440 - 28 = 1412), so that no
    /// answer is fragmented on the way to the client. Larger answers go
    /// back truncated. [`MIN_UDP_PAYLOAD`]..=[`MAX_UDP_PAYLOAD_LIMIT`].
    pub max_udp_payload: usize,
    /// Seed of the forwarded-query ids; pass OS randomness.
    pub seed: u64,
}

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            ttl: 30,
            max_pending: 256,
            resolve_timeout: Duration::from_secs(5),
            forward_timeout: Duration::from_secs(5),
            max_udp_payload: 1440 - IPV4_UDP_HEADERS,
            seed: 0x6e74_6d2d_646e_7300,
        }
    }
}

/// A [`StubConfig`] value out of range; the message says what to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StubConfigError {
    /// TTL above the protocol's limit.
    #[error("DNS TTL {0} s for NTM names is above the 60 s limit: lower it")]
    Ttl(u32),
    /// `max_pending` out of range.
    #[error("DNS max_pending {0} is out of range: use 1..=4096")]
    MaxPending(usize),
    /// A zero time-out.
    #[error("DNS {0} must be greater than zero")]
    ZeroTimeout(&'static str),
    /// `max_udp_payload` out of range.
    #[error("DNS max_udp_payload {0} is out of range: use 512..=65507 (the inner MTU minus 28)")]
    MaxUdpPayload(usize),
}

impl StubConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), StubConfigError> {
        if self.ttl > MAX_TTL {
            return Err(StubConfigError::Ttl(self.ttl));
        }
        if !(1..=MAX_PENDING_LIMIT).contains(&self.max_pending) {
            return Err(StubConfigError::MaxPending(self.max_pending));
        }
        if self.resolve_timeout.is_zero() {
            return Err(StubConfigError::ZeroTimeout("resolve_timeout"));
        }
        if self.forward_timeout.is_zero() {
            return Err(StubConfigError::ZeroTimeout("forward_timeout"));
        }
        if !(MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD_LIMIT).contains(&self.max_udp_payload) {
            return Err(StubConfigError::MaxUdpPayload(self.max_udp_payload));
        }
        Ok(())
    }
}

/// How a query reached the stub; its answer goes back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One query per datagram; answers larger than the client can take are
    /// truncated (TC).
    Udp,
    /// RFC 7766: 2-byte length-prefixed messages on a connection, answered
    /// whole; other names are forwarded upstream over TCP too.
    Tcp,
}

impl Transport {
    /// Largest query accepted over this transport.
    pub const fn max_query(self) -> usize {
        match self {
            Transport::Udp => MAX_QUERY_LEN,
            Transport::Tcp => MAX_TCP_MESSAGE,
        }
    }

    /// `udp` or `tcp`, for logs and status output.
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Key of one resolution the caller is working on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PendingId(u64);

impl PendingId {
    /// The raw number, for logs and maps on the caller's side.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PendingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dns#{}", self.0)
    }
}

/// What the DC said about an NTM name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveOutcome {
    /// ROUTE_DIR OK: the peer's VIP (answered with an A record).
    Vip(Ipv4Addr),
    /// The DC answered NOT_FOUND (NXDOMAIN).
    NotFound,
    /// The DC did not answer in time (SERVFAIL).
    Timeout,
    /// Any other failure: another status, not registered, ... (SERVFAIL).
    Failed,
}

crate::reasons! {
    /// Why the stub refused a datagram or an answer. Count each by reason.
    pub enum DnsDrop {
        /// Query shorter than its header.
        Short => "dns_short": "DNS query shorter than its header",
        /// Query larger than 512 bytes over UDP (65535 over TCP).
        TooBig => "dns_too_big": "DNS query larger than its transport allows",
        /// A response sent to the stub (never answered: reflection loops).
        NotQuery => "dns_not_query": "DNS response sent to the stub",
        /// Opcode other than QUERY (answered NOTIMP).
        BadOpcode => "dns_bad_opcode": "DNS opcode other than QUERY",
        /// Question count other than one (answered FORMERR).
        QuestionCount => "dns_question_count": "DNS question count other than one",
        /// Answer/authority records or more than one additional (FORMERR).
        BadCounts => "dns_bad_counts": "DNS query with answer, authority or several additional records",
        /// Query that does not parse (FORMERR).
        Malformed => "dns_malformed": "DNS query does not parse",
        /// A pending table is full.
        PendingFull => "dns_pending_full": "DNS pending table full",
        /// Retransmission of a query that is already pending.
        Duplicate => "dns_duplicate": "DNS query already pending",
        /// A forwarded query got no upstream reply in time.
        UpstreamTimeout => "dns_upstream_timeout": "no upstream reply in time",
        /// Datagram from the upstream resolver that is not a DNS response.
        UpstreamMalformed => "dns_upstream_malformed": "upstream datagram is not a DNS response",
        /// Upstream reply with an id no pending query has.
        UpstreamUnknownId => "dns_upstream_unknown_id": "upstream reply with an unknown id",
        /// Upstream reply whose question differs from the forwarded one.
        UpstreamMismatch => "dns_upstream_mismatch": "upstream reply for another question",
        /// The caller answered a resolution that is no longer pending.
        LateAnswer => "dns_late_answer": "answer for a resolution no longer pending",
    }
}

/// What kind of reply an [`Output::Reply`] carries, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// NOERROR with the peer's A record.
    A,
    /// NOERROR without records (other types, the suffix itself).
    NoData,
    /// NXDOMAIN.
    NxDomain,
    /// SERVFAIL (time-out or failure).
    ServFail,
    /// Header-only FORMERR.
    FormErr,
    /// Header-only NOTIMP.
    NotImp,
    /// The upstream resolver's reply, relayed with the client's id.
    Relay,
}

/// How [`DnsStub::handle_query`] took a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Answered at once (an [`Output::Reply`] is queued).
    Answered,
    /// A new resolution started (an [`Output::Resolve`] is queued).
    Resolving,
    /// Joined the resolution already pending for the same name.
    Joined,
    /// Forwarded (an [`Output::Upstream`] is queued).
    Forwarded,
}

/// Work for the caller, from [`DnsStub::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<C> {
    /// Send `payload` to the client `to` (from the address it queried, or
    /// on the connection it queried on, with the 2-byte length prefix).
    Reply {
        /// The client.
        to: C,
        /// The DNS message.
        payload: Vec<u8>,
        /// What it is.
        kind: ReplyKind,
        /// Cut to the header, question and OPT with TC set: the answer did
        /// not fit what the UDP client can take (it asks again over TCP).
        truncated: bool,
    },
    /// Resolve the NTM name `fqdn` (lower-case, no trailing dot) through the
    /// DC (DIR_REQ); report the result with [`DnsStub::answer`].
    Resolve {
        /// The peer's FQDN.
        fqdn: String,
        /// Key for [`DnsStub::answer`].
        pending_id: PendingId,
        /// Who resolves it: the `asker` of its queries (an adapter resolves as
        /// the GN that asked, §6).
        asker: u32,
    },
    /// Send `payload` to the upstream resolver over `transport` (one UDP
    /// datagram, or one length-prefixed message on a TCP connection) and
    /// feed the answer to [`DnsStub::handle_upstream`]. `upstream_id` is the
    /// (rewritten, unique among pending forwards) DNS id it carries.
    Upstream {
        /// DNS id of the forwarded query.
        upstream_id: u16,
        /// The query, ready to send.
        payload: Vec<u8>,
        /// The transport the client's query came on.
        transport: Transport,
    },
}

/// One query waiting for an answer of ours.
#[derive(Debug, Clone)]
struct Waiter<C> {
    client: C,
    id: u16,
    query: Query,
    rd: bool,
    edns: bool,
    /// The largest answer the client takes.
    limit: usize,
}

#[derive(Debug)]
struct PendingResolve<C> {
    id: PendingId,
    fqdn: String,
    asker: u32,
    deadline: Instant,
    waiters: Vec<Waiter<C>>,
}

#[derive(Debug)]
struct PendingForward<C> {
    client: C,
    orig_id: u16,
    /// The query's third byte (QR, opcode, AA, TC, RD), for a SERVFAIL.
    flags: u8,
    question: Vec<u8>,
    transport: Transport,
    edns: bool,
    /// The largest answer the client takes.
    limit: usize,
    deadline: Instant,
}

/// Parses an NTM suffix: labels of letters, digits and '-', an optional
/// trailing dot.
pub fn parse_suffix(s: &str) -> Option<Name> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return None;
    }
    for label in s.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return None;
        }
    }
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// The docs/protocol.md §4 FQDN form of `name` (lower-case, no trailing dot, labels
/// of `a-z 0-9 -`), or None if it has none.
pub fn fqdn_of(name: &Name) -> Option<String> {
    let mut s = String::new();
    for label in name.iter() {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        if !s.is_empty() {
            s.push('.');
        }
        for &b in label {
            let b = b.to_ascii_lowercase();
            if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return None;
            }
            s.push(char::from(b));
        }
    }
    (!s.is_empty() && s.len() <= 253).then_some(s)
}

/// A header-only reply (FORMERR, NOTIMP) to the query whose header is `q`
/// (at least [`HEADER_LEN`] bytes).
fn header_reply(q: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN];
    h[..2].copy_from_slice(&q[..2]);
    // QR, the query's opcode and RD; RA since we recurse via upstream.
    h[2] = 0x80 | (q[2] & 0x79);
    h[3] = 0x80 | (u16::from(rcode) as u8 & 0x0f);
    h
}

fn u16_at(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// Builds our answer to `w` with `rcode` and at most one A record.
fn build_answer<C>(w: &Waiter<C>, rcode: ResponseCode, a: Option<(Ipv4Addr, u32)>) -> Vec<u8> {
    let mut m = Message::response(w.id, OpCode::Query);
    m.metadata.authoritative = rcode != ResponseCode::ServFail;
    m.metadata.recursion_desired = w.rd;
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.add_query(w.query.clone());
    if let Some((vip, ttl)) = a {
        m.add_answer(Record::from_rdata(
            w.query.name().clone(),
            ttl,
            RData::A(A(vip)),
        ));
    }
    if w.edns {
        // RFC 6891 §6.1.1: answer an OPT with an OPT. We accept 512 bytes.
        m.set_edns(Edns::new());
    }
    // One question and one A record always encode (and fit 512 bytes);
    // an empty Vec would only make the client retry.
    m.to_vec().unwrap_or_default()
}

/// Where the one question of message `p` ends, if it parses.
fn question_end(p: &[u8]) -> Option<usize> {
    if p.len() < HEADER_LEN || u16_at(p, 4) != 1 {
        return None;
    }
    let mut d = BinDecoder::new(p);
    d.read_slice(HEADER_LEN).ok()?;
    Query::read(&mut d).ok()?;
    Some(d.index())
}

/// The OPT record of a truncated answer: the fields of `answer`'s own OPT
/// (UDP size, extended rcode, version, DO) without its options, or a plain
/// one (512 bytes, version 0) when it has none.
fn opt_record(answer: &[u8]) -> [u8; 11] {
    let edns = Message::from_vec(answer).ok().and_then(|m| m.edns);
    let (size, rcode_high, version, flags) = match &edns {
        Some(e) => (
            e.max_payload().max(MIN_UDP_PAYLOAD as u16),
            e.rcode_high(),
            e.version(),
            u16::from(*e.flags()),
        ),
        None => (MIN_UDP_PAYLOAD as u16, 0, 0, 0),
    };
    let mut r = [0u8; 11];
    // Owner: the root (0); TYPE OPT; CLASS: UDP size; TTL: extended rcode,
    // version, flags; RDLENGTH 0.
    r[1..3].copy_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
    r[3..5].copy_from_slice(&size.to_be_bytes());
    r[5] = rcode_high;
    r[6] = version;
    r[7..9].copy_from_slice(&flags.to_be_bytes());
    r
}

/// `answer` cut for a UDP client that cannot take it whole (§6): its header
/// (same id, flags and rcode) with TC set, its question, and an OPT record
/// when the client sent one; no answer, authority or other additional
/// records. At most 12 + 259 + 11 bytes, so it always fits 512.
pub fn truncate_answer(answer: &[u8], client_edns: bool) -> Vec<u8> {
    let mut t = Vec::with_capacity(MIN_UDP_PAYLOAD);
    t.extend_from_slice(&answer[..HEADER_LEN.min(answer.len())]);
    t.resize(HEADER_LEN, 0);
    t[2] |= 0x02;
    t[4..HEADER_LEN].fill(0);
    if let Some(end) = question_end(answer) {
        t[5] = 1;
        t.extend_from_slice(&answer[HEADER_LEN..end]);
    }
    if client_edns {
        t[11] = 1;
        t.extend_from_slice(&opt_record(answer));
    }
    t
}

/// SERVFAIL to a forwarded query that got no answer: its id, opcode and
/// RD, RA, and its question.
fn servfail_for<C>(f: &PendingForward<C>) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN + f.question.len());
    h.extend_from_slice(&f.orig_id.to_be_bytes());
    h.push(0x80 | (f.flags & 0x79));
    h.push(0x80 | (u16::from(ResponseCode::ServFail) as u8 & 0x0f));
    h.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    h.extend_from_slice(&f.question);
    h
}

/// The DNS stub. See the [module docs](self).
#[derive(Debug)]
pub struct DnsStub<C> {
    suffix: Name,
    suffix_labels: usize,
    cfg: StubConfig,
    resolves: Vec<PendingResolve<C>>,
    waiters: usize,
    forwards: HashMap<u16, PendingForward<C>>,
    next_pending: u64,
    rng: u64,
    out: VecDeque<Output<C>>,
}

impl<C: Clone + PartialEq> DnsStub<C> {
    /// A stub answering names under `suffix` (see [`parse_suffix`]). Values
    /// of `cfg` out of range are clamped (validate them first for errors).
    pub fn new(suffix: Name, mut cfg: StubConfig) -> Self {
        cfg.ttl = cfg.ttl.min(MAX_TTL);
        cfg.max_pending = cfg.max_pending.clamp(1, MAX_PENDING_LIMIT);
        cfg.resolve_timeout = cfg.resolve_timeout.max(Duration::from_millis(1));
        cfg.forward_timeout = cfg.forward_timeout.max(Duration::from_millis(1));
        cfg.max_udp_payload = cfg
            .max_udp_payload
            .clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD_LIMIT);
        Self {
            suffix_labels: suffix.iter().count(),
            suffix,
            rng: cfg.seed,
            cfg,
            resolves: Vec::new(),
            waiters: 0,
            forwards: HashMap::new(),
            next_pending: 1,
            out: VecDeque::new(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &StubConfig {
        &self.cfg
    }

    /// Whether `name` is under the NTM suffix (case-insensitively, on a
    /// label boundary).
    pub fn is_ntm_name(&self, name: &Name) -> bool {
        self.suffix.zone_of(name)
    }

    /// (queries waiting for the DC, queries waiting for upstream).
    pub fn pending(&self) -> (usize, usize) {
        (self.waiters, self.forwards.len())
    }

    /// When [`DnsStub::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let r = self.resolves.iter().map(|r| r.deadline);
        let f = self.forwards.values().map(|f| f.deadline);
        r.chain(f).min()
    }

    /// The next piece of work; call until `None` after every other call.
    pub fn poll_output(&mut self) -> Option<Output<C>> {
        self.out.pop_front()
    }

    /// splitmix64: ids need to be hard to guess for an off-path spoofer
    /// of upstream replies, not cryptographic.
    fn random_u16(&mut self) -> u16 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u16
    }

    fn reply(&mut self, w: &Waiter<C>, rcode: ResponseCode, a: Option<Ipv4Addr>) {
        let payload = build_answer(w, rcode, a.map(|v| (v, self.cfg.ttl)));
        let kind = match (rcode, a) {
            (ResponseCode::NoError, Some(_)) => ReplyKind::A,
            (ResponseCode::NoError, None) => ReplyKind::NoData,
            (ResponseCode::NXDomain, _) => ReplyKind::NxDomain,
            _ => ReplyKind::ServFail,
        };
        self.push_reply(w.client.clone(), payload, kind, w.limit, w.edns);
    }

    /// Queues `payload` for `to`, truncated if it exceeds `limit` (what the
    /// client takes; [`MAX_TCP_MESSAGE`] over TCP).
    fn push_reply(&mut self, to: C, payload: Vec<u8>, kind: ReplyKind, limit: usize, edns: bool) {
        let truncated = payload.len() > limit;
        let payload = if truncated {
            truncate_answer(&payload, edns)
        } else {
            payload
        };
        self.out.push_back(Output::Reply {
            to,
            payload,
            kind,
            truncated,
        });
    }

    /// The largest answer a client that asked over `transport` with `edns`
    /// takes (§6).
    fn client_limit(&self, transport: Transport, edns: Option<&Edns>) -> usize {
        match transport {
            Transport::Tcp => MAX_TCP_MESSAGE,
            Transport::Udp => edns
                .map_or(MIN_UDP_PAYLOAD, |e| usize::from(e.max_payload()))
                .max(MIN_UDP_PAYLOAD)
                .min(self.cfg.max_udp_payload),
        }
    }

    /// Queues an error-only header to `client` and returns `why`.
    fn reject(&mut self, client: C, q: &[u8], rcode: ResponseCode, why: DnsDrop) -> DnsDrop {
        let kind = match rcode {
            ResponseCode::NotImp => ReplyKind::NotImp,
            ResponseCode::ServFail => ReplyKind::ServFail,
            _ => ReplyKind::FormErr,
        };
        self.out.push_back(Output::Reply {
            to: client,
            payload: header_reply(q, rcode),
            kind,
            truncated: false,
        });
        why
    }

    /// Handles one query from `client` that came over `transport` (a UDP
    /// payload, or one TCP message without its length prefix). Malformed
    /// queries are answered FORMERR/NOTIMP where a reply is safe and return
    /// the drop reason. Over TCP, a query refused for a full table gets
    /// SERVFAIL, so a client pipelining on its connection is never left
    /// waiting.
    ///
    /// `asker` names who resolves NTM names for this client: queries of
    /// different askers never join one resolution, since each sets up its own
    /// tunnel (an adapter passes the asking GN; a node, 0).
    pub fn handle_query(
        &mut self,
        now: Instant,
        client: C,
        asker: u32,
        transport: Transport,
        p: &[u8],
    ) -> Result<Handled, DnsDrop> {
        if p.len() > transport.max_query() {
            return Err(DnsDrop::TooBig);
        }
        if p.len() < HEADER_LEN {
            return Err(DnsDrop::Short);
        }
        if p[2] & 0x80 != 0 {
            // Never answer a response: that is how reflection loops start.
            return Err(DnsDrop::NotQuery);
        }
        if (p[2] >> 3) & 0x0f != 0 {
            return Err(self.reject(client, p, ResponseCode::NotImp, DnsDrop::BadOpcode));
        }
        // Counts first: hickory pre-allocates by them.
        if u16_at(p, 4) != 1 {
            return Err(self.reject(client, p, ResponseCode::FormErr, DnsDrop::QuestionCount));
        }
        if u16_at(p, 6) != 0 || u16_at(p, 8) != 0 || u16_at(p, 10) > 1 {
            return Err(self.reject(client, p, ResponseCode::FormErr, DnsDrop::BadCounts));
        }
        let mut d = BinDecoder::new(p);
        let question_end = d
            .read_slice(HEADER_LEN)
            .ok()
            .and_then(|_| Query::read(&mut d).ok())
            .map(|_| d.index());
        let msg = Message::from_vec(p).ok();
        let (Some(question_end), Some(msg)) = (question_end, msg) else {
            return Err(self.reject(client, p, ResponseCode::FormErr, DnsDrop::Malformed));
        };
        let Some(query) = msg.queries.first() else {
            return Err(self.reject(client, p, ResponseCode::FormErr, DnsDrop::Malformed));
        };
        let limit = self.client_limit(transport, msg.edns.as_ref());
        let r = if self.suffix.zone_of(query.name()) {
            let w = Waiter {
                client: client.clone(),
                id: msg.metadata.id,
                query: query.clone(),
                rd: msg.metadata.recursion_desired,
                edns: msg.edns.is_some(),
                limit,
            };
            self.intercept(now, asker, w)
        } else {
            let edns = msg.edns.is_some();
            self.forward(now, client.clone(), transport, edns, limit, p, question_end)
        };
        match r {
            Err(DnsDrop::PendingFull) if transport == Transport::Tcp => {
                Err(self.reject(client, p, ResponseCode::ServFail, DnsDrop::PendingFull))
            }
            r => r,
        }
    }

    fn intercept(&mut self, now: Instant, asker: u32, w: Waiter<C>) -> Result<Handled, DnsDrop> {
        let name = w.query.name();
        if name.iter().count() == self.suffix_labels {
            // The suffix itself names no node.
            self.reply(&w, ResponseCode::NoError, None);
            return Ok(Handled::Answered);
        }
        let Some(fqdn) = fqdn_of(name) else {
            // No node can have this name (docs/protocol.md §4 FQDN syntax).
            self.reply(&w, ResponseCode::NXDomain, None);
            return Ok(Handled::Answered);
        };
        if w.query.query_class() != DNSClass::IN || w.query.query_type() != RecordType::A {
            self.reply(&w, ResponseCode::NoError, None);
            return Ok(Handled::Answered);
        }
        let duplicate = self.resolves.iter().any(|r| {
            r.waiters
                .iter()
                .any(|o| o.client == w.client && o.id == w.id)
        });
        if duplicate {
            return Err(DnsDrop::Duplicate);
        }
        if self.waiters >= self.cfg.max_pending {
            return Err(DnsDrop::PendingFull);
        }
        if let Some(r) = self
            .resolves
            .iter_mut()
            .find(|r| r.fqdn == fqdn && r.asker == asker)
        {
            if r.waiters.len() >= MAX_WAITERS_PER_NAME {
                return Err(DnsDrop::PendingFull);
            }
            r.waiters.push(w);
            self.waiters += 1;
            return Ok(Handled::Joined);
        }
        let id = PendingId(self.next_pending);
        self.next_pending += 1;
        self.resolves.push(PendingResolve {
            id,
            fqdn: fqdn.clone(),
            asker,
            deadline: now + self.cfg.resolve_timeout,
            waiters: vec![w],
        });
        self.waiters += 1;
        self.out.push_back(Output::Resolve {
            fqdn,
            pending_id: id,
            asker,
        });
        Ok(Handled::Resolving)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        now: Instant,
        client: C,
        transport: Transport,
        edns: bool,
        limit: usize,
        p: &[u8],
        question_end: usize,
    ) -> Result<Handled, DnsDrop> {
        if self.forwards.len() >= self.cfg.max_pending {
            return Err(DnsDrop::PendingFull);
        }
        // The table holds at most MAX_PENDING_LIMIT of 65536 ids, so a free
        // one turns up within a few draws.
        let upstream_id = loop {
            let id = self.random_u16();
            if !self.forwards.contains_key(&id) {
                break id;
            }
        };
        let mut payload = p.to_vec();
        payload[..2].copy_from_slice(&upstream_id.to_be_bytes());
        self.forwards.insert(
            upstream_id,
            PendingForward {
                client,
                orig_id: u16_at(p, 0),
                flags: p[2],
                question: p[HEADER_LEN..question_end].to_vec(),
                transport,
                edns,
                limit,
                deadline: now + self.cfg.forward_timeout,
            },
        );
        self.out.push_back(Output::Upstream {
            upstream_id,
            payload,
            transport,
        });
        Ok(Handled::Forwarded)
    }

    /// Handles one answer from the upstream resolver (a UDP payload, or one
    /// TCP message without its length prefix): a reply to a pending forward
    /// is queued for its client ([`ReplyKind::Relay`]), truncated if the
    /// query came over UDP and the answer exceeds what that client takes.
    pub fn handle_upstream(&mut self, _now: Instant, p: &[u8]) -> Result<(), DnsDrop> {
        if p.len() < HEADER_LEN || p[2] & 0x80 == 0 {
            return Err(DnsDrop::UpstreamMalformed);
        }
        let id = u16_at(p, 0);
        let f = self.forwards.get(&id).ok_or(DnsDrop::UpstreamUnknownId)?;
        let rcode = p[3] & 0x0f;
        let question_ok = match u16_at(p, 4) {
            1 => p.get(HEADER_LEN..HEADER_LEN + f.question.len()) == Some(&f.question[..]),
            // Some servers drop the question from error replies.
            0 => rcode != 0,
            _ => false,
        };
        if !question_ok {
            // Keep waiting: the real reply may still come.
            return Err(DnsDrop::UpstreamMismatch);
        }
        let f = self
            .forwards
            .remove(&id)
            .ok_or(DnsDrop::UpstreamUnknownId)?;
        let mut payload = p.to_vec();
        payload[..2].copy_from_slice(&f.orig_id.to_be_bytes());
        self.push_reply(f.client, payload, ReplyKind::Relay, f.limit, f.edns);
        Ok(())
    }

    /// The caller's answer to [`Output::Resolve`]: queues a reply to every
    /// query waiting on that name.
    pub fn answer(
        &mut self,
        _now: Instant,
        id: PendingId,
        outcome: ResolveOutcome,
    ) -> Result<(), DnsDrop> {
        let idx = self
            .resolves
            .iter()
            .position(|r| r.id == id)
            .ok_or(DnsDrop::LateAnswer)?;
        let r = self.resolves.swap_remove(idx);
        self.waiters -= r.waiters.len();
        let (rcode, a) = match outcome {
            ResolveOutcome::Vip(v) => (ResponseCode::NoError, Some(v)),
            ResolveOutcome::NotFound => (ResponseCode::NXDomain, None),
            ResolveOutcome::Timeout | ResolveOutcome::Failed => (ResponseCode::ServFail, None),
        };
        for w in &r.waiters {
            self.reply(w, rcode, a);
        }
        Ok(())
    }

    /// Runs what is due at `now`: SERVFAIL to queries whose resolution
    /// timed out (queued as replies), forgetting forwards upstream never
    /// answered (SERVFAIL to those that came over TCP; a UDP client asks
    /// again). Returns how many forwards expired: count each as
    /// [`DnsDrop::UpstreamTimeout`]. Expired resolutions are forgotten, so
    /// a late [`DnsStub::answer`] is a [`DnsDrop::LateAnswer`].
    pub fn handle_timeout(&mut self, now: Instant) -> usize {
        let mut i = 0;
        while i < self.resolves.len() {
            if self.resolves[i].deadline <= now {
                let r = self.resolves.swap_remove(i);
                self.waiters -= r.waiters.len();
                for w in &r.waiters {
                    self.reply(w, ResponseCode::ServFail, None);
                }
            } else {
                i += 1;
            }
        }
        let mut expired: Vec<u16> = self
            .forwards
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        // Deterministic order for the replies.
        expired.sort_unstable();
        for id in &expired {
            let Some(f) = self.forwards.remove(id) else {
                continue;
            };
            if f.transport == Transport::Tcp {
                let payload = servfail_for(&f);
                self.push_reply(f.client, payload, ReplyKind::ServFail, f.limit, f.edns);
            }
        }
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::MessageType;
    use hickory_proto::rr::rdata::MX;

    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);

    fn stub() -> DnsStub<u16> {
        DnsStub::new(parse_suffix("ntm.test").unwrap(), StubConfig::default())
    }

    fn query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn outputs(s: &mut DnsStub<u16>) -> Vec<Output<u16>> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn one_reply(s: &mut DnsStub<u16>) -> (u16, Message, ReplyKind) {
        match outputs(s).as_slice() {
            [Output::Reply {
                to, payload, kind, ..
            }] => (*to, Message::from_vec(payload).unwrap(), *kind),
            other => panic!("expected one reply, got {other:?}"),
        }
    }

    #[test]
    fn a_query_resolves_and_every_waiter_is_answered() {
        let mut s = stub();
        let now = Instant::now();
        assert_eq!(
            s.handle_query(
                now,
                1,
                0,
                Transport::Udp,
                &query("cn.ntm.test.", RecordType::A, 7)
            ),
            Ok(Handled::Resolving)
        );
        assert_eq!(
            s.handle_query(
                now,
                2,
                0,
                Transport::Udp,
                &query("CN.ntm.test.", RecordType::A, 8)
            ),
            Ok(Handled::Joined)
        );
        assert_eq!(
            s.handle_query(
                now,
                1,
                0,
                Transport::Udp,
                &query("cn.ntm.test.", RecordType::A, 7)
            ),
            Err(DnsDrop::Duplicate)
        );
        let pid = match outputs(&mut s).as_slice() {
            [Output::Resolve {
                fqdn, pending_id, ..
            }] if fqdn == "cn.ntm.test" => *pending_id,
            other => panic!("{other:?}"),
        };
        assert_eq!(s.pending(), (2, 0));
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(5)));
        s.answer(now, pid, ResolveOutcome::Vip(VIP)).unwrap();
        let out = outputs(&mut s);
        assert_eq!(out.len(), 2);
        for (o, (client, id)) in out.iter().zip([(1, 7), (2, 8)]) {
            let Output::Reply {
                to, payload, kind, ..
            } = o
            else {
                panic!("{o:?}")
            };
            assert_eq!((*to, *kind), (client, ReplyKind::A));
            let m = Message::from_vec(payload).unwrap();
            assert_eq!(m.metadata.id, id);
            assert_eq!(m.answers[0].data, RData::A(A(VIP)));
            assert!(m.answers[0].ttl <= MAX_TTL);
        }
        assert_eq!(s.pending(), (0, 0));
        assert_eq!(
            s.answer(now, pid, ResolveOutcome::Vip(VIP)),
            Err(DnsDrop::LateAnswer)
        );
    }

    #[test]
    fn askers_never_share_a_resolution() {
        let mut s = stub();
        let now = Instant::now();
        let q = |id| query("cn.ntm.test.", RecordType::A, id);
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Udp, &q(7)),
            Ok(Handled::Resolving)
        );
        assert_eq!(
            s.handle_query(now, 2, 1, Transport::Udp, &q(8)),
            Ok(Handled::Resolving)
        );
        let askers: Vec<_> = outputs(&mut s)
            .into_iter()
            .map(|o| match o {
                Output::Resolve { fqdn, asker, .. } => (fqdn, asker),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            askers,
            [("cn.ntm.test".to_owned(), 0), ("cn.ntm.test".to_owned(), 1)]
        );
    }

    #[test]
    fn outcomes_map_to_rcodes() {
        let now = Instant::now();
        for (outcome, rcode, kind) in [
            (
                ResolveOutcome::NotFound,
                ResponseCode::NXDomain,
                ReplyKind::NxDomain,
            ),
            (
                ResolveOutcome::Timeout,
                ResponseCode::ServFail,
                ReplyKind::ServFail,
            ),
            (
                ResolveOutcome::Failed,
                ResponseCode::ServFail,
                ReplyKind::ServFail,
            ),
        ] {
            let mut s = stub();
            s.handle_query(
                now,
                9,
                0,
                Transport::Udp,
                &query("x.ntm.test.", RecordType::A, 1),
            )
            .unwrap();
            let Some(Output::Resolve { pending_id, .. }) = s.poll_output() else {
                panic!()
            };
            s.answer(now, pending_id, outcome).unwrap();
            let (_, m, k) = one_reply(&mut s);
            assert_eq!((m.metadata.response_code, k), (rcode, kind));
        }
    }

    #[test]
    fn resolve_deadline_sends_servfail_and_forward_deadline_counts() {
        let mut s = stub();
        let now = Instant::now();
        s.handle_query(
            now,
            1,
            0,
            Transport::Udp,
            &query("slow.ntm.test.", RecordType::A, 1),
        )
        .unwrap();
        s.handle_query(
            now,
            2,
            0,
            Transport::Udp,
            &query("example.com.", RecordType::A, 2),
        )
        .unwrap();
        assert_eq!(outputs(&mut s).len(), 2);
        assert_eq!(s.handle_timeout(now + Duration::from_secs(4)), 0);
        assert!(outputs(&mut s).is_empty());
        assert_eq!(s.handle_timeout(now + Duration::from_secs(5)), 1);
        let (to, m, kind) = one_reply(&mut s);
        assert_eq!((to, kind), (1, ReplyKind::ServFail));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn other_types_and_names_answered_locally() {
        let mut s = stub();
        let now = Instant::now();
        assert_eq!(
            s.handle_query(
                now,
                1,
                0,
                Transport::Udp,
                &query("cn.ntm.test.", RecordType::AAAA, 1)
            ),
            Ok(Handled::Answered)
        );
        assert_eq!(one_reply(&mut s).2, ReplyKind::NoData);
        s.handle_query(
            now,
            1,
            0,
            Transport::Udp,
            &query("ntm.test.", RecordType::A, 2),
        )
        .unwrap();
        assert_eq!(one_reply(&mut s).2, ReplyKind::NoData);
        s.handle_query(
            now,
            1,
            0,
            Transport::Udp,
            &query("_x.ntm.test.", RecordType::A, 3),
        )
        .unwrap();
        assert_eq!(one_reply(&mut s).2, ReplyKind::NxDomain);
        assert!(s.is_ntm_name(&Name::from_str("a.NTM.test.").unwrap()));
        assert!(!s.is_ntm_name(&Name::from_str("xntm.test.").unwrap()));
    }

    #[test]
    fn forward_rewrites_id_and_relay_restores_it() {
        let mut s = stub();
        let now = Instant::now();
        let q = query("example.com.", RecordType::MX, 0x4242);
        assert_eq!(
            s.handle_query(now, 5, 0, Transport::Udp, &q),
            Ok(Handled::Forwarded)
        );
        let (uid, payload) = match outputs(&mut s).pop() {
            Some(Output::Upstream {
                upstream_id,
                payload,
                transport: Transport::Udp,
            }) => (upstream_id, payload),
            other => panic!("{other:?}"),
        };
        assert_eq!(&payload[2..], &q[2..]);
        let mut up = Message::from_vec(&payload).unwrap();
        up.metadata.message_type = MessageType::Response;
        up.add_answer(Record::from_rdata(
            Name::from_str("example.com.").unwrap(),
            300,
            RData::MX(MX::new(10, Name::from_str("mail.example.com.").unwrap())),
        ));
        let up = up.to_vec().unwrap();
        assert_eq!(u16_at(&up, 0), uid);
        // Same id, other question: a spoof; stays pending.
        let mut spoof = up.clone();
        spoof[HEADER_LEN + 1] ^= 0x20;
        assert_eq!(
            s.handle_upstream(now, &spoof),
            Err(DnsDrop::UpstreamMismatch)
        );
        assert_eq!(s.handle_upstream(now, &up), Ok(()));
        match outputs(&mut s).as_slice() {
            [Output::Reply {
                to: 5,
                payload,
                kind: ReplyKind::Relay,
                truncated: false,
            }] => {
                assert_eq!(u16_at(payload, 0), 0x4242);
                assert_eq!(&payload[2..], &up[2..]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.handle_upstream(now, &up), Err(DnsDrop::UpstreamUnknownId));
        assert_eq!(
            s.handle_upstream(now, &[0; 5]),
            Err(DnsDrop::UpstreamMalformed)
        );
    }

    #[test]
    fn bad_queries_are_rejected_by_reason() {
        let mut s = stub();
        let now = Instant::now();
        let good = query("cn.ntm.test.", RecordType::A, 0x4242);
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Udp, &good[..11]),
            Err(DnsDrop::Short)
        );
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Udp, &[0u8; 513]),
            Err(DnsDrop::TooBig)
        );
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Udp, &resp),
            Err(DnsDrop::NotQuery)
        );
        assert!(outputs(&mut s).is_empty(), "no reply to a response");
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Udp, &two),
            Err(DnsDrop::QuestionCount)
        );
        let (_, m, kind) = one_reply(&mut s);
        assert_eq!((m.metadata.id, kind), (0x4242, ReplyKind::FormErr));
        let mut op = good.clone();
        op[2] |= 2 << 3;
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Udp, &op),
            Err(DnsDrop::BadOpcode)
        );
        assert_eq!(one_reply(&mut s).2, ReplyKind::NotImp);
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Udp, &good[..15]),
            Err(DnsDrop::Malformed)
        );
        assert_eq!(one_reply(&mut s).2, ReplyKind::FormErr);
    }

    #[test]
    fn tables_are_bounded() {
        let mut s: DnsStub<u16> = DnsStub::new(
            parse_suffix("ntm.test.").unwrap(),
            StubConfig {
                max_pending: 2,
                ..StubConfig::default()
            },
        );
        let now = Instant::now();
        for i in 0..3u16 {
            let r = s.handle_query(
                now,
                i,
                0,
                Transport::Udp,
                &query(&format!("n{i}.ntm.test."), RecordType::A, i),
            );
            let f = s.handle_query(
                now,
                i,
                0,
                Transport::Udp,
                &query("example.net.", RecordType::A, i),
            );
            if i < 2 {
                assert!(r.is_ok() && f.is_ok());
            } else {
                assert_eq!(
                    (r, f),
                    (Err(DnsDrop::PendingFull), Err(DnsDrop::PendingFull))
                );
            }
        }
        // One name holds at most MAX_WAITERS_PER_NAME waiters.
        let mut s: DnsStub<u16> =
            DnsStub::new(parse_suffix("ntm.test").unwrap(), StubConfig::default());
        for i in 0..MAX_WAITERS_PER_NAME as u16 {
            assert!(s
                .handle_query(
                    now,
                    i,
                    0,
                    Transport::Udp,
                    &query("cn.ntm.test.", RecordType::A, 1)
                )
                .is_ok());
        }
        assert_eq!(
            s.handle_query(
                now,
                999,
                0,
                Transport::Udp,
                &query("cn.ntm.test.", RecordType::A, 1)
            ),
            Err(DnsDrop::PendingFull)
        );
    }

    /// A query with an EDNS option of UDP size `size`, if any.
    fn query_edns(name: &str, t: RecordType, id: u16, size: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = size {
            let mut e = Edns::new();
            e.set_max_payload(size);
            e.set_dnssec_ok(true);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// The upstream resolver's answer to the forwarded `payload`: `n` A
    /// records (16 bytes each, compressed owner), `rcode`, an OPT of 4096 if
    /// the query had one.
    fn upstream_answer(payload: &[u8], n: usize, rcode: ResponseCode) -> Vec<u8> {
        let mut m = Message::from_vec(payload).unwrap();
        m.metadata.message_type = MessageType::Response;
        m.metadata.recursion_available = true;
        m.metadata.response_code = rcode;
        let name = m.queries[0].name().clone();
        for i in 0..n {
            m.add_answer(Record::from_rdata(
                name.clone(),
                300,
                RData::A(A(Ipv4Addr::from(0x0a00_0000 + i as u32))),
            ));
        }
        if let Some(e) = m.edns.as_mut() {
            e.set_max_payload(4096);
        }
        m.to_vec().unwrap()
    }

    /// Forwards `q` from client 1 over `transport` and feeds back an answer
    /// of `n` A records: the reply (message, raw, truncated).
    fn relay_through(
        s: &mut DnsStub<u16>,
        transport: Transport,
        q: &[u8],
        n: usize,
    ) -> (Message, Vec<u8>, bool) {
        let now = Instant::now();
        assert_eq!(
            s.handle_query(now, 1, 0, transport, q),
            Ok(Handled::Forwarded)
        );
        let payload = match outputs(s).as_slice() {
            [Output::Upstream {
                payload,
                transport: t,
                ..
            }] if *t == transport => payload.clone(),
            other => panic!("{other:?}"),
        };
        s.handle_upstream(now, &upstream_answer(&payload, n, ResponseCode::NoError))
            .unwrap();
        match outputs(s).as_slice() {
            [Output::Reply {
                to: 1,
                payload,
                kind: ReplyKind::Relay,
                truncated,
            }] => (
                Message::from_vec(payload).unwrap(),
                payload.clone(),
                *truncated,
            ),
            other => panic!("{other:?}"),
        }
    }

    /// 512 bytes without EDNS or with a smaller EDNS size, the EDNS size
    /// above that, never more than max_udp_payload; over TCP everything.
    #[test]
    fn udp_answers_fit_what_the_client_takes() {
        // 40 A records: about 680 bytes; 120: about 1970.
        for (size, n, transport, whole) in [
            (None, 40, Transport::Udp, false),
            (Some(300), 40, Transport::Udp, false),
            (Some(512), 40, Transport::Udp, false),
            (Some(1232), 40, Transport::Udp, true),
            (Some(4096), 40, Transport::Udp, true),
            // 4096 asked, but the inner MTU caps it at 1412.
            (Some(4096), 120, Transport::Udp, false),
            (None, 120, Transport::Tcp, true),
            (Some(512), 120, Transport::Tcp, true),
            // About 55 KB: near the most one TCP message carries.
            (None, 2000, Transport::Tcp, true),
        ] {
            let mut s = stub();
            let q = query_edns("many.example.", RecordType::A, 0x0bad, size);
            let (m, raw, truncated) = relay_through(&mut s, transport, &q, n);
            let case = format!("{size:?} {n} {transport:?}: {} bytes", raw.len());
            assert_eq!(truncated, !whole, "{case}");
            assert_eq!(m.metadata.id, 0x0bad, "{case}");
            assert_eq!(m.metadata.truncation, !whole, "{case}");
            if whole {
                assert_eq!(m.answers.len(), n, "{case}");
            } else {
                assert!(m.answers.is_empty(), "{case}");
                assert!(raw.len() <= 512, "{case}");
            }
        }
    }

    #[test]
    fn max_udp_payload_caps_every_edns_size() {
        let mut s = DnsStub::new(
            parse_suffix("ntm.test").unwrap(),
            StubConfig {
                max_udp_payload: 1000,
                ..StubConfig::default()
            },
        );
        let q = query_edns("x.example.", RecordType::A, 1, Some(4096));
        // 55 records: about 900 bytes, fits; 65: about 1060, does not.
        let (_, raw, t) = relay_through(&mut s, Transport::Udp, &q, 55);
        assert!(!t && raw.len() <= 1000, "{}", raw.len());
        let (_, raw, t) = relay_through(&mut s, Transport::Udp, &q, 65);
        assert!(t && raw.len() <= 512);
    }

    /// §6's truncated answer: same id, flags with TC, rcode kept, the
    /// question only, the OPT record if the client sent one.
    #[test]
    fn truncated_answer_shape_parses() {
        for edns in [None, Some(1232)] {
            let mut s = stub();
            let q = query_edns("MiXed.Example.", RecordType::A, 0x7777, edns);
            let now = Instant::now();
            s.handle_query(now, 3, 0, Transport::Udp, &q).unwrap();
            let Some(Output::Upstream { payload, .. }) = s.poll_output() else {
                panic!()
            };
            let up = upstream_answer(&payload, 200, ResponseCode::NXDomain);
            s.handle_upstream(now, &up).unwrap();
            let (to, m, kind) = one_reply(&mut s);
            assert_eq!((to, kind), (3, ReplyKind::Relay));
            assert_eq!(m.metadata.id, 0x7777);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert!(m.metadata.truncation);
            assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
            assert_eq!(m.queries.len(), 1);
            assert_eq!(m.queries[0].name().to_ascii(), "MiXed.Example.");
            assert!(m.answers.is_empty() && m.authorities.is_empty());
            assert_eq!(m.edns.is_some(), edns.is_some());
            if let Some(e) = &m.edns {
                // The upstream's OPT, without options.
                assert_eq!(e.max_payload(), 4096);
                assert!(e.flags().dnssec_ok);
            }
        }
        // Our own answers go through the same cut (header-only input too).
        let t = truncate_answer(&[0x12, 0x34, 0x81, 0x83, 0, 0, 0, 0, 0, 0, 0, 0], true);
        let m = Message::from_vec(&t).unwrap();
        assert!(m.metadata.truncation && m.queries.is_empty() && m.edns.is_some());
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    /// Several queries on one TCP connection (one client): each answered as
    /// it is ready, in any order, with its own id; names forwarded over TCP.
    #[test]
    fn tcp_queries_pipeline_on_one_connection() {
        let mut s = stub();
        let now = Instant::now();
        let conn = 42;
        let qa = query("cn.ntm.test.", RecordType::A, 101);
        let qb = query("b.example.", RecordType::A, 102);
        let qc = query("c.example.", RecordType::TXT, 103);
        let qd = query("cn.ntm.test.", RecordType::AAAA, 104);
        assert_eq!(
            s.handle_query(now, conn, 0, Transport::Tcp, &qa),
            Ok(Handled::Resolving)
        );
        assert_eq!(
            s.handle_query(now, conn, 0, Transport::Tcp, &qb),
            Ok(Handled::Forwarded)
        );
        assert_eq!(
            s.handle_query(now, conn, 0, Transport::Tcp, &qc),
            Ok(Handled::Forwarded)
        );
        let mut pid = None;
        let mut up = Vec::new();
        for o in outputs(&mut s) {
            match o {
                Output::Resolve { pending_id, .. } => pid = Some(pending_id),
                Output::Upstream {
                    payload, transport, ..
                } => {
                    assert_eq!(transport, Transport::Tcp);
                    up.push(payload);
                }
                other => panic!("{other:?}"),
            }
        }
        // Answered at once, before the others.
        assert_eq!(
            s.handle_query(now, conn, 0, Transport::Tcp, &qd),
            Ok(Handled::Answered)
        );
        let mut ids = vec![one_reply(&mut s).1.metadata.id];
        // c's answer first (large: whole over TCP), then the DC, then b.
        s.handle_upstream(now, &upstream_answer(&up[1], 300, ResponseCode::NoError))
            .unwrap();
        let (to, m, _) = one_reply(&mut s);
        assert_eq!((to, m.answers.len()), (conn, 300));
        ids.push(m.metadata.id);
        s.answer(now, pid.unwrap(), ResolveOutcome::Vip(VIP))
            .unwrap();
        ids.push(one_reply(&mut s).1.metadata.id);
        s.handle_upstream(now, &upstream_answer(&up[0], 1, ResponseCode::NoError))
            .unwrap();
        ids.push(one_reply(&mut s).1.metadata.id);
        assert_eq!(ids, vec![104, 103, 101, 102]);
        assert_eq!(s.pending(), (0, 0));
    }

    /// A TCP client does not retransmit: a forward upstream never answers
    /// and a full table get SERVFAIL; over UDP they stay silent.
    #[test]
    fn tcp_queries_always_get_an_answer() {
        let mut s: DnsStub<u16> = DnsStub::new(
            parse_suffix("ntm.test").unwrap(),
            StubConfig {
                max_pending: 1,
                ..StubConfig::default()
            },
        );
        let now = Instant::now();
        let q1 = query("one.example.", RecordType::A, 1);
        let q2 = query("two.example.", RecordType::MX, 2);
        s.handle_query(now, 7, 0, Transport::Tcp, &q1).unwrap();
        assert!(matches!(
            outputs(&mut s).as_slice(),
            [Output::Upstream { .. }]
        ));
        assert_eq!(
            s.handle_query(now, 8, 0, Transport::Udp, &q2),
            Err(DnsDrop::PendingFull)
        );
        assert!(outputs(&mut s).is_empty());
        assert_eq!(
            s.handle_query(now, 7, 0, Transport::Tcp, &q2),
            Err(DnsDrop::PendingFull)
        );
        let (to, m, kind) = one_reply(&mut s);
        assert_eq!((to, m.metadata.id, kind), (7, 2, ReplyKind::ServFail));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(s.handle_timeout(now + Duration::from_secs(5)), 1);
        let (to, m, kind) = one_reply(&mut s);
        assert_eq!((to, m.metadata.id, kind), (7, 1, ReplyKind::ServFail));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries[0].name().to_ascii(), "one.example.");
    }

    #[test]
    fn tcp_accepts_queries_above_512_bytes() {
        let mut s = stub();
        let now = Instant::now();
        let mut m = Message::new(9, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_str("pad.example.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                12,
                vec![0; 600],
            ));
        m.set_edns(e);
        let q = m.to_vec().unwrap();
        assert!(q.len() > 512);
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Udp, &q),
            Err(DnsDrop::TooBig)
        );
        assert_eq!(
            s.handle_query(now, 1, 0, Transport::Tcp, &q),
            Ok(Handled::Forwarded)
        );
    }

    #[test]
    fn config_validation_and_names() {
        assert_eq!(StubConfig::default().validate(), Ok(()));
        let bad = StubConfig {
            ttl: 61,
            ..StubConfig::default()
        };
        assert_eq!(bad.validate(), Err(StubConfigError::Ttl(61)));
        let bad = StubConfig {
            max_pending: 0,
            ..StubConfig::default()
        };
        assert_eq!(bad.validate(), Err(StubConfigError::MaxPending(0)));
        let bad = StubConfig {
            forward_timeout: Duration::ZERO,
            ..StubConfig::default()
        };
        assert!(bad.validate().is_err());
        for bad_size in [511, 65_508] {
            let bad = StubConfig {
                max_udp_payload: bad_size,
                ..StubConfig::default()
            };
            assert_eq!(
                bad.validate(),
                Err(StubConfigError::MaxUdpPayload(bad_size))
            );
        }
        // Clamped when not validated.
        let s: DnsStub<u16> = DnsStub::new(
            parse_suffix("ntm.test").unwrap(),
            StubConfig {
                ttl: 3600,
                ..StubConfig::default()
            },
        );
        assert_eq!(s.config().ttl, MAX_TTL);
        for (i, d) in DnsDrop::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
            assert!(d.name().starts_with("dns_"));
        }
        let n = |s: &str| Name::from_str(s).unwrap();
        assert_eq!(fqdn_of(&n("Cn.NTM.test.")).as_deref(), Some("cn.ntm.test"));
        assert_eq!(fqdn_of(&n("_x.ntm.test.")), None);
        assert!(parse_suffix("a..b").is_none());
        assert!(parse_suffix("ntm_test").is_none());
    }
}

#[cfg(test)]
mod prop {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Untrusted bytes from clients and from upstream never panic, and
        /// every output stays bounded by the tables.
        #[test]
        fn arbitrary_bytes_never_panic(
            datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..20)
        ) {
            let mut s: DnsStub<u8> = DnsStub::new(parse_suffix("ntm.test").unwrap(), StubConfig::default());
            let now = Instant::now();
            for (i, d) in datagrams.iter().enumerate() {
                let transport = if i % 2 == 0 { Transport::Udp } else { Transport::Tcp };
                let _ = s.handle_query(now, i as u8, 0, transport, d);
                let _ = s.handle_upstream(now, d);
                while s.poll_output().is_some() {}
            }
            let (w, f) = s.pending();
            prop_assert!(w <= 256 && f <= 256);
            s.handle_timeout(now + Duration::from_secs(10));
            prop_assert_eq!(s.pending(), (0, 0));
        }
    }
}
