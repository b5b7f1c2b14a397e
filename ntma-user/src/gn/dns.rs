//! DNS interception on the router address (UDP 53).
//!
//! Names under the NTM suffix are resolved by the control side through the
//! DC ([`GnAction::Resolve`] → [`Gn::answer`]): an A record with the peer's
//! VIP, an empty NOERROR for other types, NXDOMAIN for NOT_FOUND, SERVFAIL
//! on time-out. Every other query is forwarded to the upstream resolver
//! with a fresh DNS id and the reply relayed back unchanged except for the
//! id. Both pending tables are bounded and expire by time.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Instant;

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::wire::{build_udp_frame, EthView, Ipv4View, MacAddr, UdpEnds, UdpView};
use super::{Gn, GnAction, GnDrop, GnStat};

/// DNS port.
pub(super) const PORT: u16 = 53;
/// Largest query accepted (plain DNS over UDP, RFC 1035 §4.2.1).
pub const MAX_QUERY_LEN: usize = 512;
/// Queries for one name that may wait on one resolution.
const MAX_WAITERS_PER_NAME: usize = 16;
/// Largest pending table (keeps fresh-id search short).
pub(super) const MAX_PENDING_LIMIT: usize = 4096;
const HEADER_LEN: usize = 12;

/// Key of one resolution the control side is working on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PendingId(u64);

impl PendingId {
    /// The raw number, for logs and maps on the control side.
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
    /// ROUTE_DIR OK: the peer's VIP.
    Vip(Ipv4Addr),
    /// The DC answered NOT_FOUND.
    NotFound,
    /// The DC did not answer in time.
    Timeout,
}

/// Who asked, for the answer's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer {
    mac: MacAddr,
    ip: Ipv4Addr,
    port: u16,
}

/// One query waiting for an answer of ours.
#[derive(Debug, Clone)]
struct Waiter {
    peer: Peer,
    id: u16,
    query: Query,
    rd: bool,
    edns: bool,
}

#[derive(Debug)]
struct PendingResolve {
    id: PendingId,
    fqdn: String,
    deadline: Instant,
    waiters: Vec<Waiter>,
}

#[derive(Debug)]
struct PendingForward {
    peer: Peer,
    orig_id: u16,
    question: Vec<u8>,
    deadline: Instant,
}

#[derive(Debug)]
pub(super) struct DnsState {
    suffix: Name,
    suffix_labels: usize,
    resolves: Vec<PendingResolve>,
    waiters: usize,
    forwards: HashMap<u16, PendingForward>,
    next_pending: u64,
    rng: u64,
}

/// Parses the configured suffix: labels of letters, digits and '-'.
pub(super) fn parse_suffix(s: &str) -> Option<Name> {
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

/// The PROTOCOL.md FQDN form of `name` (lower-case, no trailing dot, labels
/// of `a-z 0-9 -`), or None if it has none.
fn fqdn_of(name: &Name) -> Option<String> {
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

impl DnsState {
    pub(super) fn new(suffix: Name, seed: u64) -> Self {
        Self {
            suffix_labels: suffix.iter().count(),
            suffix,
            resolves: Vec::new(),
            waiters: 0,
            forwards: HashMap::new(),
            next_pending: 1,
            rng: seed,
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let r = self.resolves.iter().map(|r| r.deadline);
        let f = self.forwards.values().map(|f| f.deadline);
        r.chain(f).min()
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
}

/// A header-only reply (FORMERR, NOTIMP) to the query whose header is `q`.
fn header_reply(q: &[u8], rcode: ResponseCode) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
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
fn build_answer(w: &Waiter, rcode: ResponseCode, a: Option<(Ipv4Addr, u32)>) -> Vec<u8> {
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

impl Gn {
    fn dns_send(&mut self, peer: &Peer, payload: &[u8]) -> Result<(), GnDrop> {
        let ends = UdpEnds {
            dst_mac: peer.mac,
            src_mac: self.cfg.ntma_mac,
            src_ip: self.cfg.router,
            dst_ip: peer.ip,
            src_port: PORT,
            dst_port: peer.port,
        };
        self.emit(|out| build_udp_frame(out, &ends, payload))
    }

    /// Sends an error-only header and reports `why` as the drop reason.
    fn dns_reject(
        &mut self,
        peer: &Peer,
        q: &[u8],
        rcode: ResponseCode,
        why: GnDrop,
    ) -> Result<(), GnDrop> {
        self.dns_send(peer, &header_reply(q, rcode))?;
        self.counters.stat(if rcode == ResponseCode::NotImp {
            GnStat::DnsNotImp
        } else {
            GnStat::DnsFormErr
        });
        Err(why)
    }

    fn dns_reply(
        &mut self,
        w: &Waiter,
        rcode: ResponseCode,
        a: Option<Ipv4Addr>,
    ) -> Result<(), GnDrop> {
        let ttl = self.cfg.dns_ttl;
        let bytes = build_answer(w, rcode, a.map(|v| (v, ttl)));
        self.dns_send(&w.peer, &bytes)?;
        self.counters.stat(match (rcode, a) {
            (ResponseCode::NoError, Some(_)) => GnStat::DnsAnswerA,
            (ResponseCode::NoError, None) => GnStat::DnsAnswerNoData,
            (ResponseCode::NXDomain, _) => GnStat::DnsNxDomain,
            _ => GnStat::DnsServFail,
        });
        Ok(())
    }

    pub(super) fn handle_dns_query(
        &mut self,
        now: Instant,
        eth: &EthView<'_>,
        ip: &Ipv4View<'_>,
        udp: &UdpView<'_>,
    ) -> Result<(), GnDrop> {
        let p = udp.payload;
        if p.len() > MAX_QUERY_LEN {
            return Err(GnDrop::DnsTooBig);
        }
        if p.len() < HEADER_LEN {
            return Err(GnDrop::DnsShort);
        }
        let peer = Peer {
            mac: eth.src,
            ip: ip.src,
            port: udp.src_port,
        };
        if p[2] & 0x80 != 0 {
            // Never answer a response: that is how reflection loops start.
            return Err(GnDrop::DnsNotQuery);
        }
        if (p[2] >> 3) & 0x0f != 0 {
            return self.dns_reject(&peer, p, ResponseCode::NotImp, GnDrop::DnsBadOpcode);
        }
        // Counts first: hickory pre-allocates by them.
        if u16_at(p, 4) != 1 {
            return self.dns_reject(&peer, p, ResponseCode::FormErr, GnDrop::DnsQuestionCount);
        }
        if u16_at(p, 6) != 0 || u16_at(p, 8) != 0 || u16_at(p, 10) > 1 {
            return self.dns_reject(&peer, p, ResponseCode::FormErr, GnDrop::DnsBadCounts);
        }
        let mut d = BinDecoder::new(p);
        let question_end = d
            .read_slice(HEADER_LEN)
            .ok()
            .and_then(|_| Query::read(&mut d).ok())
            .map(|_| d.index());
        let msg = Message::from_vec(p).ok();
        let (Some(question_end), Some(msg)) = (question_end, msg) else {
            return self.dns_reject(&peer, p, ResponseCode::FormErr, GnDrop::DnsMalformed);
        };
        let Some(query) = msg.queries.first() else {
            return self.dns_reject(&peer, p, ResponseCode::FormErr, GnDrop::DnsMalformed);
        };
        if self.dns.suffix.zone_of(query.name()) {
            let w = Waiter {
                peer,
                id: msg.metadata.id,
                query: query.clone(),
                rd: msg.metadata.recursion_desired,
                edns: msg.edns.is_some(),
            };
            self.dns_intercept(now, w)
        } else {
            self.dns_forward(now, peer, p, question_end)
        }
    }

    fn dns_intercept(&mut self, now: Instant, w: Waiter) -> Result<(), GnDrop> {
        let name = w.query.name();
        if name.iter().count() == self.dns.suffix_labels {
            // The suffix itself names no node.
            return self.dns_reply(&w, ResponseCode::NoError, None);
        }
        let Some(fqdn) = fqdn_of(name) else {
            // No node can have this name (PROTOCOL.md FQDN syntax).
            return self.dns_reply(&w, ResponseCode::NXDomain, None);
        };
        if w.query.query_class() != DNSClass::IN || w.query.query_type() != RecordType::A {
            return self.dns_reply(&w, ResponseCode::NoError, None);
        }
        let duplicate = self.dns.resolves.iter().any(|r| {
            r.waiters
                .iter()
                .any(|o| o.peer.ip == w.peer.ip && o.peer.port == w.peer.port && o.id == w.id)
        });
        if duplicate {
            return Err(GnDrop::DnsDuplicate);
        }
        if self.dns.waiters >= self.cfg.dns_max_pending {
            return Err(GnDrop::DnsPendingFull);
        }
        if let Some(r) = self.dns.resolves.iter_mut().find(|r| r.fqdn == fqdn) {
            if r.waiters.len() >= MAX_WAITERS_PER_NAME {
                return Err(GnDrop::DnsPendingFull);
            }
            r.waiters.push(w);
            self.dns.waiters += 1;
            self.counters.stat(GnStat::DnsResolveJoined);
            return Ok(());
        }
        let id = PendingId(self.dns.next_pending);
        self.dns.next_pending += 1;
        self.dns.resolves.push(PendingResolve {
            id,
            fqdn: fqdn.clone(),
            deadline: now + self.cfg.dns_resolve_timeout,
            waiters: vec![w],
        });
        self.dns.waiters += 1;
        self.counters.stat(GnStat::DnsResolve);
        self.push_action(GnAction::Resolve {
            fqdn,
            pending_id: id,
        });
        Ok(())
    }

    fn dns_forward(
        &mut self,
        now: Instant,
        peer: Peer,
        p: &[u8],
        question_end: usize,
    ) -> Result<(), GnDrop> {
        if self.dns.forwards.len() >= self.cfg.dns_max_pending {
            return Err(GnDrop::DnsPendingFull);
        }
        // The table holds at most MAX_PENDING_LIMIT of 65536 ids, so a free
        // one turns up within a few draws.
        let upstream_id = loop {
            let id = self.dns.random_u16();
            if !self.dns.forwards.contains_key(&id) {
                break id;
            }
        };
        let mut payload = p.to_vec();
        payload[..2].copy_from_slice(&upstream_id.to_be_bytes());
        self.dns.forwards.insert(
            upstream_id,
            PendingForward {
                peer,
                orig_id: u16_at(p, 0),
                question: p[HEADER_LEN..question_end].to_vec(),
                deadline: now + self.cfg.dns_forward_timeout,
            },
        );
        self.counters.stat(GnStat::DnsForward);
        self.push_action(GnAction::Upstream {
            upstream_id,
            payload,
        });
        Ok(())
    }

    pub(super) fn relay_upstream(&mut self, _now: Instant, p: &[u8]) -> Result<(), GnDrop> {
        if p.len() < HEADER_LEN || p[2] & 0x80 == 0 {
            return Err(GnDrop::DnsUpstreamMalformed);
        }
        let id = u16_at(p, 0);
        let f = self
            .dns
            .forwards
            .get(&id)
            .ok_or(GnDrop::DnsUpstreamUnknownId)?;
        let rcode = p[3] & 0x0f;
        let question_ok = match u16_at(p, 4) {
            1 => p.get(HEADER_LEN..HEADER_LEN + f.question.len()) == Some(&f.question[..]),
            // Some servers drop the question from error replies.
            0 => rcode != 0,
            _ => false,
        };
        if !question_ok {
            // Keep waiting: the real reply may still come.
            return Err(GnDrop::DnsUpstreamMismatch);
        }
        let Some(f) = self.dns.forwards.remove(&id) else {
            return Err(GnDrop::DnsUpstreamUnknownId);
        };
        let max =
            usize::from(self.cfg.mtu) - super::wire::IPV4_HEADER_LEN - super::wire::UDP_HEADER_LEN;
        if p.len() > max {
            return Err(GnDrop::DnsUpstreamTooBig);
        }
        let mut reply = p.to_vec();
        reply[..2].copy_from_slice(&f.orig_id.to_be_bytes());
        self.dns_send(&f.peer, &reply)?;
        self.counters.stat(GnStat::DnsRelay);
        Ok(())
    }

    pub(super) fn answer_resolve(
        &mut self,
        _now: Instant,
        id: PendingId,
        outcome: ResolveOutcome,
    ) -> Result<(), GnDrop> {
        let idx = self
            .dns
            .resolves
            .iter()
            .position(|r| r.id == id)
            .ok_or(GnDrop::DnsLateAnswer)?;
        let r = self.dns.resolves.swap_remove(idx);
        self.dns.waiters -= r.waiters.len();
        let (rcode, a) = match outcome {
            ResolveOutcome::Vip(v) => (ResponseCode::NoError, Some(v)),
            ResolveOutcome::NotFound => (ResponseCode::NXDomain, None),
            ResolveOutcome::Timeout => (ResponseCode::ServFail, None),
        };
        for w in &r.waiters {
            if let Err(why) = self.dns_reply(w, rcode, a) {
                self.counters.drop(why);
            }
        }
        Ok(())
    }

    pub(super) fn expire_dns(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.dns.resolves.len() {
            if self.dns.resolves[i].deadline <= now {
                let r = self.dns.resolves.swap_remove(i);
                self.dns.waiters -= r.waiters.len();
                for w in &r.waiters {
                    if let Err(why) = self.dns_reply(w, ResponseCode::ServFail, None) {
                        self.counters.drop(why);
                    }
                }
            } else {
                i += 1;
            }
        }
        let before = self.dns.forwards.len();
        self.dns.forwards.retain(|_, f| f.deadline > now);
        for _ in self.dns.forwards.len()..before {
            self.counters.drop(GnDrop::DnsUpstreamTimeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::str::FromStr;
    use std::time::{Duration, Instant};

    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, MX};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::super::test_util::*;
    use super::super::wire::{build_udp_frame, EthView, Ipv4View, UdpEnds, UdpView};
    use super::super::{Gn, GnAction, GnConfig, GnDrop, GnStat, Verdict};
    use super::*;

    const DIG_A: &[u8] = include_bytes!("testdata/dig_noedns_a.bin");
    const DIG_AAAA: &[u8] = include_bytes!("testdata/dig_noedns_aaaa_mixedcase.bin");
    const DIG_MX: &[u8] = include_bytes!("testdata/dig_noedns_mx_example.bin");
    const DIG_EDNS_A: &[u8] = include_bytes!("testdata/dig_edns_a.bin");
    const PEER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);

    /// A DNS payload from the GN (VIP, `port`) to the router as a frame.
    fn query_frame(payload: &[u8], port: u16) -> Vec<u8> {
        let mut f = Vec::new();
        build_udp_frame(
            &mut f,
            &UdpEnds {
                dst_mac: NTMA_MAC,
                src_mac: GN_MAC,
                src_ip: VIP,
                dst_ip: ROUTER,
                src_port: port,
                dst_port: 53,
            },
            payload,
        )
        .unwrap();
        f
    }

    fn hickory_query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    /// The one DNS reply queued for the GN: (dst port, message, raw).
    fn reply(g: &mut Gn) -> (u16, Message, Vec<u8>) {
        let out = frames(g);
        assert_eq!(out.len(), 1, "expected exactly one reply");
        let eth = EthView::parse(&out[0]).unwrap();
        assert_eq!((eth.src, eth.dst), (NTMA_MAC, GN_MAC));
        let ip = Ipv4View::parse(eth.payload, true).unwrap();
        assert_eq!((ip.src, ip.dst), (ROUTER, VIP));
        let udp = UdpView::parse(&ip, true).unwrap();
        assert_eq!(udp.src_port, 53);
        (
            udp.dst_port,
            Message::from_vec(udp.payload).unwrap(),
            udp.payload.to_vec(),
        )
    }

    fn only_resolve(g: &mut Gn) -> (String, PendingId) {
        match actions(g).as_slice() {
            [GnAction::Resolve { fqdn, pending_id }] => (fqdn.clone(), *pending_id),
            other => panic!("expected one Resolve, got {other:?}"),
        }
    }

    fn captured_id(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[42], frame[43]])
    }

    #[test]
    fn captured_dig_a_resolves_through_the_dc() {
        let mut g = gn_ready();
        let now = Instant::now();
        assert_eq!(g.handle_frame(now, DIG_A), Verdict::Consumed);
        assert!(frames(&mut g).is_empty(), "no answer before the DC's");
        let (fqdn, pid) = only_resolve(&mut g);
        assert_eq!(fqdn, "cn.ntm.test");
        assert_eq!(g.poll_timeout(), Some(now + Duration::from_secs(5)));

        g.answer(now, pid, ResolveOutcome::Vip(PEER_VIP));
        let (port, m, _) = reply(&mut g);
        assert_eq!(port, 47378);
        assert_eq!(m.metadata.id, captured_id(DIG_A));
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name().to_ascii(), "cn.ntm.test.");
        assert_eq!(m.answers.len(), 1);
        let a = &m.answers[0];
        assert_eq!(a.data, RData::A(A(PEER_VIP)));
        assert_eq!(a.ttl, 30);
        assert!(a.ttl <= 60);
        assert!(m.edns.is_none(), "+noedns query gets no OPT");
        assert_eq!(g.poll_timeout(), None);
        assert_eq!(g.counters()[GnStat::DnsAnswerA], 1);
    }

    #[test]
    fn captured_edns_query_gets_opt_back() {
        let mut g = gn_ready();
        let now = Instant::now();
        g.handle_frame(now, DIG_EDNS_A);
        let (_, pid) = only_resolve(&mut g);
        g.answer(now, pid, ResolveOutcome::Vip(PEER_VIP));
        let (_, m, raw) = reply(&mut g);
        assert!(m.edns.is_some());
        assert!(raw.len() <= 512);
    }

    #[test]
    fn captured_aaaa_gets_empty_noerror_preserving_case() {
        let mut g = gn_ready();
        assert_eq!(g.handle_frame(Instant::now(), DIG_AAAA), Verdict::Consumed);
        assert!(actions(&mut g).is_empty(), "no DIR_REQ for AAAA");
        let (_, m, _) = reply(&mut g);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries[0].name().to_ascii(), "Cn.NTM.test.");
        assert_eq!(m.queries[0].query_type(), RecordType::AAAA);
    }

    #[test]
    fn not_found_and_timeouts() {
        let mut g = gn_ready();
        let now = Instant::now();
        let q = |name: &str, id| query_frame(&hickory_query(name, RecordType::A, id), 4000 + id);

        g.handle_frame(now, &q("nobody.ntm.test.", 1));
        let (_, pid) = only_resolve(&mut g);
        g.answer(now, pid, ResolveOutcome::NotFound);
        let (_, m, _) = reply(&mut g);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        g.handle_frame(now, &q("slow.ntm.test.", 2));
        let (_, pid) = only_resolve(&mut g);
        g.answer(now, pid, ResolveOutcome::Timeout);
        let (_, m, _) = reply(&mut g);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(!m.metadata.authoritative);

        // Nobody answers: our own deadline sends SERVFAIL.
        g.handle_frame(now, &q("silent.ntm.test.", 3));
        let (_, pid) = only_resolve(&mut g);
        g.handle_timeout(now + Duration::from_secs(4));
        assert!(frames(&mut g).is_empty());
        g.handle_timeout(now + Duration::from_secs(5));
        let (port, m, _) = reply(&mut g);
        assert_eq!(port, 4003);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        // The DC's answer arrives too late.
        g.answer(now, pid, ResolveOutcome::Vip(PEER_VIP));
        assert!(frames(&mut g).is_empty());
        assert_eq!(g.counters()[GnDrop::DnsLateAnswer], 1);
        assert_eq!(g.counters()[GnStat::DnsServFail], 2);
    }

    #[test]
    fn same_name_joins_one_resolution_and_retransmits_are_ignored() {
        let mut g = gn_ready();
        let now = Instant::now();
        let q1 = query_frame(&hickory_query("cn.ntm.test.", RecordType::A, 7), 5001);
        let q2 = query_frame(&hickory_query("CN.ntm.test.", RecordType::A, 8), 5002);
        g.handle_frame(now, &q1);
        g.handle_frame(now, &q2);
        assert_eq!(
            g.handle_frame(now, &q1),
            Verdict::Dropped(GnDrop::DnsDuplicate)
        );
        let (_, pid) = only_resolve(&mut g);
        assert_eq!(g.counters()[GnStat::DnsResolveJoined], 1);
        g.answer(now, pid, ResolveOutcome::Vip(PEER_VIP));
        let out = frames(&mut g);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn suffix_matches_on_label_boundary_case_insensitively() {
        let mut g = gn_ready();
        let now = Instant::now();
        for (i, (name, intercepted)) in [
            ("a.NTM.TEST.", true),
            ("deep.sub.ntm.test.", true),
            ("xntm.test.", false),
            ("ntm.test.example.com.", false),
            ("example.com.", false),
        ]
        .into_iter()
        .enumerate()
        {
            let port = 6100 + i as u16;
            g.handle_frame(
                now,
                &query_frame(&hickory_query(name, RecordType::A, 1), port),
            );
            let acts = actions(&mut g);
            match (&acts[..], intercepted) {
                ([GnAction::Resolve { .. }], true) | ([GnAction::Upstream { .. }], false) => {}
                _ => panic!("{name}: {acts:?}"),
            }
        }
        // The apex and names no node can have are answered locally.
        g.handle_frame(
            now,
            &query_frame(&hickory_query("ntm.test.", RecordType::A, 2), 6001),
        );
        assert!(actions(&mut g).is_empty());
        assert_eq!(
            reply(&mut g).1.metadata.response_code,
            ResponseCode::NoError
        );
        g.handle_frame(
            now,
            &query_frame(
                &hickory_query("_sip._udp.cn.ntm.test.", RecordType::SRV, 3),
                6002,
            ),
        );
        assert!(actions(&mut g).is_empty());
        assert_eq!(
            reply(&mut g).1.metadata.response_code,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn captured_mx_query_is_forwarded_and_the_reply_relayed() {
        let mut g = gn_ready();
        let now = Instant::now();
        assert_eq!(g.handle_frame(now, DIG_MX), Verdict::Consumed);
        let (upstream_id, payload) = match actions(&mut g).as_slice() {
            [GnAction::Upstream {
                upstream_id,
                payload,
            }] => (*upstream_id, payload.clone()),
            other => panic!("{other:?}"),
        };
        let orig = &DIG_MX[42..];
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), upstream_id);
        assert_eq!(&payload[2..], &orig[2..], "forwarded unchanged but the id");

        // The upstream resolver's answer, built with hickory.
        let mut up = Message::from_vec(&payload).unwrap();
        up.metadata.message_type = MessageType::Response;
        up.metadata.recursion_available = true;
        up.add_answer(Record::from_rdata(
            Name::from_str("example.com.").unwrap(),
            300,
            RData::MX(MX::new(10, Name::from_str("mail.example.com.").unwrap())),
        ));
        let up = up.to_vec().unwrap();
        assert_eq!(g.handle_upstream(now, &up), Verdict::Consumed);
        let (port, m, raw) = reply(&mut g);
        assert_eq!(port, 56436);
        assert_eq!(m.metadata.id, captured_id(DIG_MX));
        assert_eq!(&raw[2..], &up[2..], "relayed unchanged but the id");
        // A second copy finds nothing pending.
        assert_eq!(
            g.handle_upstream(now, &up),
            Verdict::Dropped(GnDrop::DnsUpstreamUnknownId)
        );
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn upstream_garbage_mismatch_and_timeout() {
        let mut g = gn_ready();
        let now = Instant::now();
        g.handle_frame(now, DIG_MX);
        let payload = match actions(&mut g).pop() {
            Some(GnAction::Upstream { payload, .. }) => payload,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            g.handle_upstream(now, &[1, 2, 3]),
            Verdict::Dropped(GnDrop::DnsUpstreamMalformed)
        );
        // Not a response (QR clear).
        assert_eq!(
            g.handle_upstream(now, &payload),
            Verdict::Dropped(GnDrop::DnsUpstreamMalformed)
        );
        // Right id, other question: a spoof attempt; the query stays pending.
        let mut spoof = payload.clone();
        spoof[2] |= 0x80;
        let last = spoof.len() - 5;
        spoof[last] ^= 0x20;
        assert_eq!(
            g.handle_upstream(now, &spoof),
            Verdict::Dropped(GnDrop::DnsUpstreamMismatch)
        );
        assert!(g.poll_timeout().is_some());
        g.handle_timeout(now + Duration::from_secs(5));
        assert_eq!(g.counters()[GnDrop::DnsUpstreamTimeout], 1);
        assert_eq!(g.poll_timeout(), None);
        assert!(frames(&mut g).is_empty());
    }

    #[test]
    fn forwarded_ids_are_fresh_per_query() {
        let mut g = gn_ready();
        let now = Instant::now();
        let mut ids = std::collections::HashSet::new();
        for i in 0..100u16 {
            // All with the same client id: rewriting keeps them apart.
            g.handle_frame(
                now,
                &query_frame(&hickory_query("example.org.", RecordType::A, 9), 7000 + i),
            );
            if let Some(GnAction::Upstream { upstream_id, .. }) = g.poll_action() {
                ids.insert(upstream_id);
            }
        }
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn pending_tables_are_bounded() {
        let mut c = GnConfig::new(NTMA_MAC);
        c.dns_max_pending = 2;
        let mut g = Gn::new(c).unwrap();
        g.set_vip(Some(VIP)).unwrap();
        g.set_gn_mac(GN_MAC);
        actions(&mut g);
        let now = Instant::now();
        for i in 0..3u16 {
            let name = format!("n{i}.ntm.test.");
            g.handle_frame(
                now,
                &query_frame(&hickory_query(&name, RecordType::A, i), 8000 + i),
            );
            g.handle_frame(
                now,
                &query_frame(&hickory_query("example.net.", RecordType::A, i), 9000 + i),
            );
        }
        assert_eq!(g.counters()[GnDrop::DnsPendingFull], 2);
        assert_eq!(actions(&mut g).len(), 4);
    }

    #[test]
    fn bad_queries_get_formerr_or_are_dropped_by_reason() {
        let mut g = gn_ready();
        let now = Instant::now();
        let good = hickory_query("cn.ntm.test.", RecordType::A, 0x4242);

        // Too big: dropped silently.
        let mut big = good.clone();
        big.resize(600, 0);
        assert_eq!(
            g.handle_frame(now, &query_frame(&big, 1)),
            Verdict::Dropped(GnDrop::DnsTooBig)
        );
        assert_eq!(
            g.handle_frame(now, &query_frame(&good[..11], 1)),
            Verdict::Dropped(GnDrop::DnsShort)
        );
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert_eq!(
            g.handle_frame(now, &query_frame(&resp, 1)),
            Verdict::Dropped(GnDrop::DnsNotQuery)
        );
        assert!(frames(&mut g).is_empty());

        let check = |g: &mut Gn, bytes: &[u8], why: GnDrop, rcode: ResponseCode| {
            assert_eq!(
                g.handle_frame(now, &query_frame(bytes, 2)),
                Verdict::Dropped(why)
            );
            let (_, m, raw) = reply(g);
            assert_eq!(m.metadata.id, 0x4242, "{why}");
            assert_eq!(m.metadata.response_code, rcode, "{why}");
            assert_eq!(raw.len(), 12);
        };
        let mut status = good.clone();
        status[2] |= 2 << 3;
        check(&mut g, &status, GnDrop::DnsBadOpcode, ResponseCode::NotImp);
        let mut two = good.clone();
        two[5] = 2;
        check(
            &mut g,
            &two,
            GnDrop::DnsQuestionCount,
            ResponseCode::FormErr,
        );
        let mut zero = good.clone();
        zero[5] = 0;
        check(
            &mut g,
            &zero,
            GnDrop::DnsQuestionCount,
            ResponseCode::FormErr,
        );
        let mut an = good.clone();
        an[7] = 1;
        check(&mut g, &an, GnDrop::DnsBadCounts, ResponseCode::FormErr);
        let mut ar = good.clone();
        ar[10] = 0xff;
        check(&mut g, &ar, GnDrop::DnsBadCounts, ResponseCode::FormErr);
        // Truncated question; a label pointing past the end.
        check(
            &mut g,
            &good[..15],
            GnDrop::DnsMalformed,
            ResponseCode::FormErr,
        );
        let mut ptr = good.clone();
        ptr[12] = 0xc0;
        ptr[13] = 0xff;
        check(&mut g, &ptr, GnDrop::DnsMalformed, ResponseCode::FormErr);
        // Announced additional record missing.
        let mut ar1 = good.clone();
        ar1[11] = 1;
        check(&mut g, &ar1, GnDrop::DnsMalformed, ResponseCode::FormErr);
        assert!(actions(&mut g).is_empty());
    }

    #[test]
    fn query_to_another_port_or_address_is_not_dns() {
        let mut g = gn_ready();
        let now = Instant::now();
        let mut f = DIG_A.to_vec();
        // Destination 100.64.0.9: data path (fix the checksums by rebuilding).
        let eth = EthView::parse(&f).unwrap();
        let ip = Ipv4View::parse(eth.payload, true).unwrap();
        let udp = UdpView::parse(&ip, true).unwrap();
        let payload = udp.payload.to_vec();
        f.clear();
        build_udp_frame(
            &mut f,
            &UdpEnds {
                dst_mac: NTMA_MAC,
                src_mac: GN_MAC,
                src_ip: VIP,
                dst_ip: Ipv4Addr::new(100, 64, 0, 9),
                src_port: 1000,
                dst_port: 53,
            },
            &payload,
        )
        .unwrap();
        assert_eq!(g.handle_frame(now, &f), Verdict::NotSlowPath);
        assert_eq!(
            g.handle_frame(now, &query_frame(&payload, 1000)),
            Verdict::Consumed
        );
    }

    #[test]
    fn fqdn_syntax() {
        let n = |s: &str| Name::from_str(s).unwrap();
        assert_eq!(fqdn_of(&n("Cn.NTM.test.")).as_deref(), Some("cn.ntm.test"));
        assert_eq!(fqdn_of(&n("a-1.ntm.test")).as_deref(), Some("a-1.ntm.test"));
        assert_eq!(fqdn_of(&n("_x.ntm.test.")), None);
        assert!(parse_suffix("ntm.test").is_some());
        assert!(parse_suffix("ntm.test.").is_some());
        assert!(parse_suffix("").is_none());
        assert!(parse_suffix("a..b").is_none());
        assert!(parse_suffix("ntm_test").is_none());
    }
}
