//! DNS interception on the router address (UDP and TCP 53): a thin wrapper
//! around [`ntm_proto::dns::DnsStub`], which holds the message-level logic
//! shared with the software node (suffix matching, pending resolutions with
//! their waiters, forward id rewriting, answer building, truncation for UDP
//! clients, bounds, expiry). Queries over UDP come as frames and are
//! answered with frames; queries over TCP come from the connections of
//! [`super::dns_tcp`] and are answered on them.
//!
//! Names under the NTM suffix are resolved by the control side through the
//! DC ([`GnAction::Resolve`] → [`Gn::answer`]): an A record with the peer's
//! VIP, an empty NOERROR for other types, NXDOMAIN for NOT_FOUND, SERVFAIL
//! on time-out. Every other query is forwarded to the upstream resolver
//! and the reply relayed back unchanged except for the id (a query that
//! came over TCP is forwarded over TCP; a UDP answer too big for the client
//! goes back truncated, and the client asks again over TCP). This wrapper
//! parses and builds the frames, turns the stub's outputs into frames and
//! actions, and counts every drop and reply by kind.
//!
//! Forwarding resists off-path spoofing of upstream answers (cache
//! poisoning of the GN): every query leaves from a fresh socket of its own
//! (a UDP socket, or a TCP connection), bound to a random port ([`GnAction::Upstream`], [`Gn::upstream_sent`]),
//! with an id drawn for it alone from a CSPRNG (rand's ChaCha `StdRng`,
//! seeded from the OS). An answer is relayed only when it comes to that
//! port ([`GnDrop::DnsUpstreamWrongPort`]), carries that id
//! ([`GnDrop::DnsUpstreamWrongId`]) and that question
//! ([`GnDrop::DnsUpstreamMismatch`], the stub's check); anything else is
//! dropped and counted while the query keeps waiting for the real answer.
//! The socket is closed ([`GnAction::UpstreamDone`]) once the answer is
//! relayed or the query timed out.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hickory_proto::rr::Name;
use ntm_proto::dns::{DnsDrop, DnsStub, Handled, Output, ReplyKind, Transport};
use rand::rngs::StdRng;
use rand::RngExt;

pub(super) use ntm_proto::dns::{parse_suffix, MAX_PENDING_LIMIT, PORT};
pub use ntm_proto::dns::{PendingId, ResolveOutcome};

use super::dns_tcp::ConnId;
use super::wire::{build_udp_frame, Eth, Ip, MacAddr, Udp, UdpEnds};
use super::{Gn, GnAction, GnConfig, GnDrop, GnIndex, GnStat};

/// The stub's asker for a query from an address that is no GN's VIP.
const NOT_A_GN: u32 = u32::MAX;

/// Who asked, for the answer's way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peer {
    /// Over UDP: the query frame's addresses.
    Udp {
        mac: MacAddr,
        ip: Ipv4Addr,
        port: u16,
    },
    /// On one of the GN's TCP connections.
    Tcp(ConnId),
}

/// One query forwarded upstream, as it went on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forward {
    /// The stub's id of the query (its key there, never on the wire).
    stub_id: u16,
    /// The id it went out with: drawn from the CSPRNG for this query alone.
    wire_id: u16,
    /// UDP, or TCP for a query that came over TCP.
    transport: Transport,
    /// The local port of its socket, once sent ([`Gn::upstream_sent`]).
    port: Option<u16>,
    /// The stub forgets it then as well.
    deadline: Instant,
}

pub(super) struct DnsState {
    stub: DnsStub<Peer>,
    /// At most `dns_max_pending`, like the stub's table.
    forwards: Vec<Forward>,
    /// Query ids; OS-seeded ChaCha.
    rng: StdRng,
    forward_timeout: Duration,
}

impl std::fmt::Debug for DnsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the generator: its state would predict the ids.
        f.debug_struct("DnsState")
            .field("stub", &self.stub)
            .field("forwards", &self.forwards.len())
            .finish_non_exhaustive()
    }
}

impl DnsState {
    /// `suffix` from [`parse_suffix`]; `cfg` already validated.
    pub(super) fn new(suffix: Name, cfg: &GnConfig) -> Self {
        let stub = DnsStub::new(suffix, cfg.stub_config());
        Self {
            forward_timeout: stub.config().forward_timeout,
            stub,
            forwards: Vec::new(),
            rng: rand::make_rng(),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.stub.poll_timeout()
    }
}

/// The adapter's counter for a stub drop.
fn gn_drop(d: DnsDrop) -> GnDrop {
    match d {
        DnsDrop::Short => GnDrop::DnsShort,
        DnsDrop::TooBig => GnDrop::DnsTooBig,
        DnsDrop::NotQuery => GnDrop::DnsNotQuery,
        DnsDrop::BadOpcode => GnDrop::DnsBadOpcode,
        DnsDrop::QuestionCount => GnDrop::DnsQuestionCount,
        DnsDrop::BadCounts => GnDrop::DnsBadCounts,
        DnsDrop::Malformed => GnDrop::DnsMalformed,
        DnsDrop::PendingFull => GnDrop::DnsPendingFull,
        DnsDrop::Duplicate => GnDrop::DnsDuplicate,
        DnsDrop::UpstreamTimeout => GnDrop::DnsUpstreamTimeout,
        DnsDrop::UpstreamMalformed => GnDrop::DnsUpstreamMalformed,
        DnsDrop::UpstreamUnknownId => GnDrop::DnsUpstreamUnknownId,
        DnsDrop::UpstreamMismatch => GnDrop::DnsUpstreamMismatch,
        DnsDrop::LateAnswer => GnDrop::DnsLateAnswer,
    }
}

fn reply_stat(kind: ReplyKind) -> GnStat {
    match kind {
        ReplyKind::A => GnStat::DnsAnswerA,
        ReplyKind::NoData => GnStat::DnsAnswerNoData,
        ReplyKind::NxDomain => GnStat::DnsNxDomain,
        ReplyKind::ServFail => GnStat::DnsServFail,
        ReplyKind::FormErr => GnStat::DnsFormErr,
        ReplyKind::NotImp => GnStat::DnsNotImp,
        ReplyKind::Relay => GnStat::DnsRelay,
    }
}

impl Gn {
    fn dns_send(&mut self, now: Instant, peer: &Peer, payload: &[u8]) -> Result<(), GnDrop> {
        match *peer {
            Peer::Udp { mac, ip, port } => {
                let ends = UdpEnds {
                    dst_mac: mac,
                    src_mac: self.cfg.ntma_mac,
                    src_ip: self.cfg.router,
                    dst_ip: ip,
                    src_port: PORT,
                    dst_port: port,
                };
                self.emit(|out| build_udp_frame(out, &ends, payload))
            }
            Peer::Tcp(conn) => self.tcp_reply(now, conn, payload),
        }
    }

    /// Turns the stub's outputs into frames to the GN and actions. Returns
    /// the first failure and counts the others.
    fn dns_flush(&mut self, now: Instant) -> Result<(), GnDrop> {
        let mut first = Ok(());
        while let Some(out) = self.dns.stub.poll_output() {
            let r = match out {
                Output::Reply {
                    to,
                    payload,
                    kind,
                    truncated,
                } => self.dns_reply(now, &to, &payload, kind, truncated),
                Output::Resolve {
                    fqdn,
                    pending_id,
                    asker,
                } => self.dns_resolve(now, fqdn, pending_id, asker),
                Output::Upstream {
                    upstream_id,
                    mut payload,
                    transport,
                } => {
                    // The stub's id is unique among its pending queries, not
                    // unpredictable: a fresh random one goes on the wire.
                    let wire_id: u16 = self.dns.rng.random();
                    payload[..2].copy_from_slice(&wire_id.to_be_bytes());
                    self.dns.forwards.retain(|f| f.stub_id != upstream_id);
                    self.dns.forwards.push(Forward {
                        stub_id: upstream_id,
                        wire_id,
                        transport,
                        port: None,
                        deadline: now + self.dns.forward_timeout,
                    });
                    if transport == Transport::Tcp {
                        self.counters.stat(GnStat::DnsForwardTcp);
                    }
                    self.push_action(GnAction::Upstream {
                        upstream_id,
                        payload,
                        transport,
                    });
                    Ok(())
                }
            };
            if let Err(why) = r {
                if first.is_ok() {
                    first = Err(why);
                } else {
                    self.counters.drop(why);
                }
            }
        }
        first
    }

    /// A resolution for the control side, except what is answered here: a
    /// name of one of our own GNs gets its VIP at once (GNs of one NTMA talk
    /// directly on their network, §6), and a name asked from an address
    /// that is no GN's gets SERVFAIL (only a GN has an identity to set up a
    /// tunnel with).
    fn dns_resolve(
        &mut self,
        now: Instant,
        fqdn: String,
        pending_id: PendingId,
        asker: u32,
    ) -> Result<(), GnDrop> {
        let own = self.gns.iter().find(|g| g.fqdn == fqdn);
        let outcome = match (
            usize::try_from(asker).ok().filter(|&a| a < self.gns.len()),
            own,
        ) {
            (None, _) => {
                self.counters.drop(GnDrop::DnsNotFromGn);
                ResolveOutcome::Failed
            }
            (Some(_), Some(g)) => {
                self.counters.stat(GnStat::DnsOwnGn);
                g.vip.map_or(ResolveOutcome::Failed, ResolveOutcome::Vip)
            }
            (Some(gn), None) => {
                self.push_action(GnAction::Resolve {
                    gn,
                    fqdn,
                    pending_id,
                });
                return Ok(());
            }
        };
        // Its reply is queued in the stub: the caller's loop sends it.
        self.dns
            .stub
            .answer(now, pending_id, outcome)
            .map_err(gn_drop)
    }

    /// Sends one of the stub's replies. The stub keeps every UDP reply
    /// within the MTU minus 28 ([`GnConfig::stub_config`]), so it fits a
    /// frame.
    fn dns_reply(
        &mut self,
        now: Instant,
        to: &Peer,
        payload: &[u8],
        kind: ReplyKind,
        truncated: bool,
    ) -> Result<(), GnDrop> {
        self.dns_send(now, to, payload)?;
        self.counters.stat(reply_stat(kind));
        if truncated {
            self.counters.stat(GnStat::DnsTruncated);
        }
        Ok(())
    }

    /// Flushes, counting every failure.
    fn dns_flush_counted(&mut self, now: Instant) {
        if let Err(why) = self.dns_flush(now) {
            self.counters.drop(why);
        }
    }

    pub(super) fn handle_dns_query(
        &mut self,
        now: Instant,
        eth: &Eth<'_>,
        ip: &Ip<'_>,
        udp: &Udp<'_>,
    ) -> Result<(), GnDrop> {
        let peer = Peer::Udp {
            mac: eth.src_addr(),
            ip: ip.src_addr(),
            port: udp.src_port(),
        };
        let gn = self
            .gn_of_vip(ip.src_addr())
            .filter(|&gn| self.gns[gn].may_be(eth.src_addr()));
        self.dns_query(now, peer, gn, Transport::Udp, udp.payload())
            .map(|_| ())
    }

    /// One query from `peer` (GN `gn`, or `None` for another host) over
    /// `transport` into the stub, its outputs out, counted.
    pub(super) fn dns_query(
        &mut self,
        now: Instant,
        peer: Peer,
        gn: Option<GnIndex>,
        transport: Transport,
        payload: &[u8],
    ) -> Result<Handled, GnDrop> {
        // Each GN resolves as itself (§6): its own resolution, never joined
        // with another GN's.
        let asker = gn.map_or(NOT_A_GN, |g| g as u32);
        let r = self
            .dns
            .stub
            .handle_query(now, peer, asker, transport, payload);
        self.dns_flush(now)?;
        let handled = r.map_err(gn_drop)?;
        match handled {
            Handled::Answered => {}
            Handled::Resolving => self.counters.stat(GnStat::DnsResolve),
            Handled::Joined => self.counters.stat(GnStat::DnsResolveJoined),
            Handled::Forwarded => self.counters.stat(GnStat::DnsForward),
        }
        Ok(handled)
    }

    /// The query the stub knows as `upstream_id` left from the socket on
    /// `port`: its answer is awaited there.
    pub(super) fn forward_sent(&mut self, upstream_id: u16, transport: Transport, port: u16) {
        match self
            .dns
            .forwards
            .iter_mut()
            .find(|f| f.stub_id == upstream_id && f.transport == transport)
        {
            Some(f) => f.port = Some(port),
            // Timed out in between: nothing waits on that socket.
            None => self.push_action(GnAction::UpstreamDone { transport, port }),
        }
    }

    /// An answer that came to `port` of `transport`: relayed only if it is
    /// the answer to the query sent from there (its id, then the stub checks
    /// the question).
    pub(super) fn relay_upstream(
        &mut self,
        now: Instant,
        transport: Transport,
        port: u16,
        p: &[u8],
    ) -> Result<(), GnDrop> {
        if p.len() < 12 || p[2] & 0x80 == 0 {
            // Shorter than a DNS header, or not a response.
            return Err(GnDrop::DnsUpstreamMalformed);
        }
        let at = self
            .dns
            .forwards
            .iter()
            .position(|f| f.port == Some(port) && f.transport == transport)
            .ok_or(GnDrop::DnsUpstreamWrongPort)?;
        let f = self.dns.forwards[at];
        if p[..2] != f.wire_id.to_be_bytes() {
            return Err(GnDrop::DnsUpstreamWrongId);
        }
        // The stub keys it by its own id, and gives the client its id back.
        let mut answer = p.to_vec();
        answer[..2].copy_from_slice(&f.stub_id.to_be_bytes());
        match self.dns.stub.handle_upstream(now, &answer) {
            Ok(()) => {}
            // Another question: the real answer may still come on this port.
            Err(DnsDrop::UpstreamMismatch) => return Err(GnDrop::DnsUpstreamMismatch),
            Err(e) => {
                if e == DnsDrop::UpstreamUnknownId {
                    // The stub gave up on it: so do we.
                    self.dns.forwards.swap_remove(at);
                    self.push_action(GnAction::UpstreamDone { transport, port });
                }
                return Err(gn_drop(e));
            }
        }
        self.dns.forwards.swap_remove(at);
        self.push_action(GnAction::UpstreamDone { transport, port });
        self.dns_flush(now)
    }

    pub(super) fn answer_resolve(
        &mut self,
        now: Instant,
        id: PendingId,
        outcome: ResolveOutcome,
    ) -> Result<(), GnDrop> {
        self.dns.stub.answer(now, id, outcome).map_err(gn_drop)?;
        self.dns_flush_counted(now);
        Ok(())
    }

    pub(super) fn expire_dns(&mut self, now: Instant) {
        let expired = self.dns.stub.handle_timeout(now);
        self.dns_flush_counted(now);
        for _ in 0..expired {
            self.counters.drop(GnDrop::DnsUpstreamTimeout);
        }
        // Forgotten by the stub at the same deadline: close their sockets.
        let mut i = 0;
        while i < self.dns.forwards.len() {
            let f = self.dns.forwards[i];
            if f.deadline <= now {
                self.dns.forwards.swap_remove(i);
                if let Some(port) = f.port {
                    self.push_action(GnAction::UpstreamDone {
                        transport: f.transport,
                        port,
                    });
                }
            } else {
                i += 1;
            }
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
    use super::super::wire::{build_udp_frame, parse_eth, parse_ipv4, parse_udp, UdpEnds};
    use super::super::{Gn, GnAction, GnConfig, GnDrop, GnStat, Verdict};
    use super::*;
    use ntm_proto::dns::fqdn_of;

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
        let eth = parse_eth(&out[0]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (NTMA_MAC, GN_MAC));
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (ROUTER, VIP));
        let udp = parse_udp(&ip, true).unwrap();
        assert_eq!(udp.src_port(), 53);
        (
            udp.dst_port(),
            Message::from_vec(udp.payload()).unwrap(),
            udp.payload().to_vec(),
        )
    }

    fn only_resolve(g: &mut Gn) -> (String, PendingId) {
        match actions(g).as_slice() {
            [GnAction::Resolve {
                fqdn, pending_id, ..
            }] => (fqdn.clone(), *pending_id),
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
                transport: Transport::Udp,
            }] => (*upstream_id, payload.clone()),
            other => panic!("{other:?}"),
        };
        let orig = &DIG_MX[42..];
        assert_eq!(&payload[2..], &orig[2..], "forwarded unchanged but the id");
        g.upstream_sent(upstream_id, Transport::Udp, 33_333);

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
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 33_333, &up),
            Verdict::Consumed
        );
        let (port, m, raw) = reply(&mut g);
        assert_eq!(port, 56436);
        assert_eq!(m.metadata.id, captured_id(DIG_MX));
        assert_eq!(&raw[2..], &up[2..], "relayed unchanged but the id");
        assert_eq!(
            actions(&mut g),
            vec![GnAction::UpstreamDone {
                transport: Transport::Udp,
                port: 33_333
            }],
            "its socket closes"
        );
        // A second copy finds nothing waiting on that port.
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 33_333, &up),
            Verdict::Dropped(GnDrop::DnsUpstreamWrongPort)
        );
        assert_eq!(g.poll_timeout(), None);
    }

    /// §6: an upstream answer larger than the GN takes (512 bytes, its
    /// EDNS size, the MTU - 28) goes back truncated, never dropped.
    #[test]
    fn oversize_upstream_answers_go_back_truncated() {
        let mut g = gn_ready();
        let now = Instant::now();
        // 40 A records: about 700 bytes; 120: about 1970.
        for (i, (edns, n, truncated)) in [
            (None, 40, true),
            (Some(4096), 40, false),
            (Some(4096), 120, true),
        ]
        .into_iter()
        .enumerate()
        {
            let mut q = Message::new(0x3131, MessageType::Query, OpCode::Query);
            q.add_query(Query::query(
                Name::from_str("many.example.").unwrap(),
                RecordType::A,
            ));
            if let Some(size) = edns {
                let mut e = hickory_proto::op::Edns::new();
                e.set_max_payload(size);
                q.set_edns(e);
            }
            g.handle_frame(now, &query_frame(&q.to_vec().unwrap(), 5353));
            let (upstream_id, payload) = match actions(&mut g).as_slice() {
                [GnAction::Upstream {
                    upstream_id,
                    payload,
                    transport: Transport::Udp,
                }] => (*upstream_id, payload.clone()),
                other => panic!("{other:?}"),
            };
            let port = 33_000 + i as u16;
            g.upstream_sent(upstream_id, Transport::Udp, port);
            let mut up = Message::from_vec(&payload).unwrap();
            up.metadata.message_type = MessageType::Response;
            for k in 0..n {
                up.add_answer(Record::from_rdata(
                    Name::from_str("many.example.").unwrap(),
                    60,
                    RData::A(A(Ipv4Addr::from(0x0a00_0000 + k))),
                ));
            }
            let up = up.to_vec().unwrap();
            assert_eq!(
                g.handle_upstream(now, Transport::Udp, port, &up),
                Verdict::Consumed
            );
            let (dst, m, raw) = reply(&mut g);
            assert_eq!(dst, 5353);
            assert_eq!(m.metadata.id, 0x3131);
            assert_eq!(m.metadata.truncation, truncated, "{edns:?} {n}");
            assert_eq!(m.answers.len(), if truncated { 0 } else { n as usize });
            assert_eq!(m.queries.len(), 1);
            assert_eq!(m.edns.is_some(), edns.is_some());
            assert!(raw.len() <= 1440 - 28);
            actions(&mut g);
        }
        assert_eq!(g.counters()[GnStat::DnsTruncated], 2);
        assert_eq!(g.counters()[GnStat::DnsRelay], 3);
    }

    #[test]
    fn upstream_garbage_mismatch_and_timeout() {
        let mut g = gn_ready();
        let now = Instant::now();
        g.handle_frame(now, DIG_MX);
        let (upstream_id, payload) = match actions(&mut g).pop() {
            Some(GnAction::Upstream {
                upstream_id,
                payload,
                ..
            }) => (upstream_id, payload),
            other => panic!("{other:?}"),
        };
        g.upstream_sent(upstream_id, Transport::Udp, 40_001);
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 40_001, &[1, 2, 3]),
            Verdict::Dropped(GnDrop::DnsUpstreamMalformed)
        );
        // Not a response (QR clear).
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 40_001, &payload),
            Verdict::Dropped(GnDrop::DnsUpstreamMalformed)
        );
        let mut answer = payload.clone();
        answer[2] |= 0x80;
        // The right answer on another port, or with another id: spoofs.
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 40_002, &answer),
            Verdict::Dropped(GnDrop::DnsUpstreamWrongPort)
        );
        let mut wrong_id = answer.clone();
        wrong_id[1] ^= 1;
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 40_001, &wrong_id),
            Verdict::Dropped(GnDrop::DnsUpstreamWrongId)
        );
        // Right id, other question: a spoof attempt; the query stays pending.
        let mut spoof = answer.clone();
        let last = spoof.len() - 5;
        spoof[last] ^= 0x20;
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 40_001, &spoof),
            Verdict::Dropped(GnDrop::DnsUpstreamMismatch)
        );
        assert!(frames(&mut g).is_empty(), "nothing relayed");
        assert!(actions(&mut g).is_empty(), "the socket stays open");
        assert!(g.poll_timeout().is_some());
        g.handle_timeout(now + Duration::from_secs(5));
        assert_eq!(g.counters()[GnDrop::DnsUpstreamTimeout], 1);
        assert_eq!(
            actions(&mut g),
            vec![GnAction::UpstreamDone {
                transport: Transport::Udp,
                port: 40_001
            }],
            "timed out: its socket closes"
        );
        assert_eq!(g.poll_timeout(), None);
        assert!(frames(&mut g).is_empty());
        // The real answer after that finds nothing waiting.
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 40_001, &answer),
            Verdict::Dropped(GnDrop::DnsUpstreamWrongPort)
        );
    }

    #[test]
    fn forwarded_ids_are_fresh_and_random_per_query() {
        let mut g = gn_ready();
        let now = Instant::now();
        let mut keys = std::collections::HashSet::new();
        let mut wire = std::collections::HashSet::new();
        let mut same = 0;
        for i in 0..100u16 {
            // All with the same client id: rewriting keeps them apart.
            g.handle_frame(
                now,
                &query_frame(&hickory_query("example.org.", RecordType::A, 9), 7000 + i),
            );
            if let Some(GnAction::Upstream {
                upstream_id,
                payload,
                ..
            }) = g.poll_action()
            {
                keys.insert(upstream_id);
                let id = u16::from_be_bytes([payload[0], payload[1]]);
                wire.insert(id);
                same += usize::from(id == upstream_id || id == 9);
            }
        }
        assert_eq!(keys.len(), 100);
        // 100 draws of 16 bits repeat twice with probability ~0.3 %.
        assert!(wire.len() >= 98, "{} distinct ids on the wire", wire.len());
        assert!(
            same <= 2,
            "{same} ids on the wire were the stub's or the client's"
        );
    }

    #[test]
    fn pending_tables_are_bounded() {
        let mut c = GnConfig::new(NTMA_MAC);
        c.dns_max_pending = 2;
        let mut g = Gn::new(c).unwrap();
        g.set_vip(0, Some(VIP)).unwrap();
        g.set_gn_mac(0, GN_MAC);
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
        let eth = parse_eth(&f).unwrap();
        let ip = parse_ipv4(eth.payload(), true).unwrap();
        let udp = parse_udp(&ip, true).unwrap();
        let payload = udp.payload().to_vec();
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
