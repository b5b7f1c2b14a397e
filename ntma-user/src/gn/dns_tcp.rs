//! DNS over TCP at the router address (RFC 7766), sans-IO.
//!
//! The daemon owns the kernel listener on the router address's TCP port 53
//! and one task per connection; this module decides what they mean:
//!
//! * which connections are taken ([`Gn::tcp_accept`]): only from the GN's
//!   VIP (the GN is known by its source address: the kernel gives no MAC),
//!   and at most `dns_tcp_max_connections` at once;
//! * the 2-byte length framing of what they carry ([`Gn::tcp_data`]):
//!   queries pipelined on one connection go to the stub one by one and are
//!   answered as each is ready, in any order ([`GnAction::TcpReply`]);
//! * when they end: the client closes its side ([`Gn::tcp_eof`]; the
//!   connection closes once every answer still pending went out), the
//!   connection fails ([`Gn::tcp_closed`]), or it stays idle — no query
//!   pending, nothing received or sent — for `dns_tcp_idle_timeout`
//!   ([`GnAction::TcpClose`]).
//!
//! Every refusal and every close is counted ([`GnDrop`], [`GnStat`]).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::Instant;

use ntm_proto::dns::{truncate_answer, Transport};

use super::dns::Peer;
use super::{Gn, GnAction, GnDrop, GnIndex, GnStat};

/// Largest `dns_tcp_max_connections`.
pub const MAX_TCP_CONNECTIONS: usize = 1024;

/// Names one TCP connection of the GN (the daemon numbers them, never
/// reusing a number).
pub type ConnId = u64;

#[derive(Debug)]
struct Conn {
    /// The start of a message not complete yet (under 2 + 65535 bytes
    /// between calls).
    rx: Vec<u8>,
    /// Queries taken and not answered yet.
    pending: usize,
    /// Answers sent on it.
    answers: u64,
    /// The client closed its side: close once `pending` is zero.
    eof: bool,
    /// When a query came or an answer went last.
    last: Instant,
    /// The GN it came from (its VIP): it resolves NTM names as that GN.
    gn: GnIndex,
}

/// The GN's open DNS connections.
#[derive(Debug, Default)]
pub(super) struct TcpConns {
    conns: HashMap<ConnId, Conn>,
}

impl Gn {
    /// A connection the kernel accepted on the router address's TCP port 53
    /// from `from`, numbered `conn` by the caller. `Err`: refused (counted
    /// by reason); close it at once.
    pub fn tcp_accept(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: SocketAddrV4,
    ) -> Result<(), GnDrop> {
        let gn = self.gn_of_vip(*from.ip());
        let r = match gn {
            None => Err(GnDrop::DnsTcpNotGn),
            Some(_) if self.tcp.conns.len() >= self.cfg.dns_tcp_max_connections => {
                Err(GnDrop::DnsTcpTooMany)
            }
            Some(gn) => {
                self.tcp.conns.insert(
                    conn,
                    Conn {
                        rx: Vec::new(),
                        pending: 0,
                        answers: 0,
                        eof: false,
                        last: now,
                        gn,
                    },
                );
                self.counters.stat(GnStat::DnsTcpAccepted);
                Ok(())
            }
        };
        if let Err(why) = r {
            self.counters.drop(why);
        }
        r
    }

    /// Moves each connection to its GN's new index (`kept[new] = Some(old)`);
    /// returns the connections of GNs that are gone, forgotten here.
    pub(super) fn remap_tcp(&mut self, kept: &[Option<GnIndex>]) -> Vec<ConnId> {
        let mut gone = Vec::new();
        self.tcp
            .conns
            .retain(|&id, c| match kept.iter().position(|k| *k == Some(c.gn)) {
                Some(new) => {
                    c.gn = new;
                    true
                }
                None => {
                    gone.push(id);
                    false
                }
            });
        gone
    }

    /// Bytes read from connection `conn`: every complete length-prefixed
    /// message in them is a query.
    pub fn tcp_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.tcp.conns.get_mut(&conn) else {
            // Closed here already: the caller closes it too.
            self.counters.drop(GnDrop::DnsTcpGone);
            return;
        };
        c.rx.extend_from_slice(bytes);
        c.last = now;
        let mut messages = Vec::new();
        let mut at = 0;
        while let Some(len) = c.rx.get(at..at + 2) {
            let end = at + 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            let Some(m) = c.rx.get(at + 2..end) else {
                break;
            };
            messages.push(m.to_vec());
            at = end;
        }
        c.rx.drain(..at);
        for m in messages {
            self.tcp_query(now, conn, &m);
        }
    }

    fn tcp_query(&mut self, now: Instant, conn: ConnId, m: &[u8]) {
        self.counters.stat(GnStat::DnsTcpQueries);
        let Some(c) = self.tcp.conns.get_mut(&conn) else {
            return;
        };
        // Pending from now; an answer given at once takes it back.
        c.pending += 1;
        let answers = c.answers;
        let gn = Some(c.gn);
        let r = self.dns_query(now, Peer::Tcp(conn), gn, Transport::Tcp, m);
        if let Err(why) = r {
            self.counters.drop(why);
        }
        // Dropped without an answer (the stub answers what it can): nothing
        // will come for it.
        match self.tcp.conns.get_mut(&conn) {
            Some(c) if r.is_err() && c.answers == answers => c.pending -= 1,
            _ => {}
        }
    }

    /// Queues `payload`, an answer of the stub, on connection `conn`.
    pub(super) fn tcp_reply(
        &mut self,
        now: Instant,
        conn: ConnId,
        payload: &[u8],
    ) -> Result<(), GnDrop> {
        let c = self.tcp.conns.get_mut(&conn).ok_or(GnDrop::DnsTcpGone)?;
        c.pending = c.pending.saturating_sub(1);
        c.answers += 1;
        c.last = now;
        let done = c.eof && c.pending == 0;
        // Answers to TCP queries come from TCP (at most 65535 bytes); were
        // one longer, its truncated form at least tells the client.
        let cut;
        let payload = if payload.len() > usize::from(u16::MAX) {
            cut = truncate_answer(payload, false);
            &cut[..]
        } else {
            payload
        };
        let mut message = Vec::with_capacity(2 + payload.len());
        message.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        message.extend_from_slice(payload);
        self.push_action(GnAction::TcpReply { conn, message });
        if done {
            self.tcp.conns.remove(&conn);
            self.counters.stat(GnStat::DnsTcpClosedByClient);
            self.push_action(GnAction::TcpClose { conn });
        }
        Ok(())
    }

    /// The client closed its side of `conn` (the read saw the end): the
    /// connection closes ([`GnAction::TcpClose`]) once the answers still
    /// pending went out.
    pub fn tcp_eof(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.tcp.conns.get_mut(&conn) else {
            return;
        };
        c.eof = true;
        c.last = now;
        if c.pending == 0 {
            self.tcp.conns.remove(&conn);
            self.counters.stat(GnStat::DnsTcpClosedByClient);
            self.push_action(GnAction::TcpClose { conn });
        }
    }

    /// Connection `conn` is gone (reset, a read or write error, or the
    /// caller could not write to it): forgotten; answers still pending for
    /// it are lost ([`GnDrop::DnsTcpReset`]).
    pub fn tcp_closed(&mut self, conn: ConnId) {
        if let Some(c) = self.tcp.conns.remove(&conn) {
            if c.pending > 0 {
                self.counters.drop(GnDrop::DnsTcpReset);
            } else {
                self.counters.stat(GnStat::DnsTcpClosedByClient);
            }
        }
    }

    /// The GN's TCP connections open now.
    pub fn tcp_open(&self) -> usize {
        self.tcp.conns.len()
    }

    /// When `c` is idle: `dns_tcp_idle_timeout` after its last query or
    /// answer, plus the stub's longest time-out while a query is pending
    /// (the stub answers every TCP query by then).
    fn tcp_idle_at(&self, c: &Conn) -> Instant {
        let mut at = c.last + self.cfg.dns_tcp_idle_timeout;
        if c.pending > 0 {
            at += self
                .cfg
                .dns_resolve_timeout
                .max(self.cfg.dns_forward_timeout);
        }
        at
    }

    pub(super) fn tcp_deadline(&self) -> Option<Instant> {
        self.tcp.conns.values().map(|c| self.tcp_idle_at(c)).min()
    }

    /// Closes the connections idle at `now`.
    pub(super) fn expire_tcp(&mut self, now: Instant) {
        let mut idle: Vec<ConnId> = self
            .tcp
            .conns
            .iter()
            .filter(|(_, c)| self.tcp_idle_at(c) <= now)
            .map(|(id, _)| *id)
            .collect();
        idle.sort_unstable();
        for conn in idle {
            self.tcp.conns.remove(&conn);
            self.counters.stat(GnStat::DnsTcpClosedIdle);
            self.push_action(GnAction::TcpClose { conn });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::str::FromStr;
    use std::time::{Duration, Instant};

    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::super::test_util::*;
    use super::super::{Gn, GnAction, GnConfig, GnDrop, GnStat, ResolveOutcome, Transport};

    const CN_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);

    fn from_gn(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(VIP, port)
    }

    fn framed_query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        let q = m.to_vec().unwrap();
        let mut f = (q.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(&q);
        f
    }

    /// The answers written on `conn` (length prefix checked) and whether
    /// it was closed, from the actions queued.
    fn written(g: &mut Gn, conn: u64) -> (Vec<Message>, bool) {
        let mut msgs = Vec::new();
        let mut closed = false;
        for a in actions(g) {
            match a {
                GnAction::TcpReply { conn: c, message } if c == conn => {
                    let len = usize::from(u16::from_be_bytes([message[0], message[1]]));
                    assert_eq!(len, message.len() - 2, "length prefix");
                    msgs.push(Message::from_vec(&message[2..]).unwrap());
                }
                GnAction::TcpClose { conn: c } if c == conn => closed = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        (msgs, closed)
    }

    #[test]
    fn only_the_gn_and_at_most_max_connections_are_taken() {
        let mut c = GnConfig::new(NTMA_MAC);
        c.dns_tcp_max_connections = 2;
        let mut g = Gn::new(c).unwrap();
        let now = Instant::now();
        // No VIP yet: nobody is the GN.
        assert_eq!(
            g.tcp_accept(now, 1, from_gn(1000)),
            Err(GnDrop::DnsTcpNotGn)
        );
        g.set_vip(0, Some(VIP)).unwrap();
        let other = SocketAddrV4::new(Ipv4Addr::new(100, 64, 0, 9), 1000);
        assert_eq!(g.tcp_accept(now, 2, other), Err(GnDrop::DnsTcpNotGn));
        assert_eq!(g.tcp_accept(now, 3, from_gn(1001)), Ok(()));
        assert_eq!(g.tcp_accept(now, 4, from_gn(1002)), Ok(()));
        assert_eq!(
            g.tcp_accept(now, 5, from_gn(1003)),
            Err(GnDrop::DnsTcpTooMany)
        );
        assert_eq!(g.tcp_open(), 2);
        assert_eq!(g.counters()[GnDrop::DnsTcpNotGn], 2);
        assert_eq!(g.counters()[GnDrop::DnsTcpTooMany], 1);
        assert_eq!(g.counters()[GnStat::DnsTcpAccepted], 2);
        // One closes: room for another.
        g.tcp_closed(3);
        assert_eq!(g.tcp_accept(now, 6, from_gn(1004)), Ok(()));
    }

    /// RFC 7766 §6.2.1.1: queries pipelined on one connection, in pieces
    /// that do not follow message boundaries, answered as each is ready
    /// with its own id; other names forwarded over TCP.
    #[test]
    fn pipelined_queries_in_pieces_are_answered_as_they_are_ready() {
        let mut g = gn_ready();
        let now = Instant::now();
        g.tcp_accept(now, 7, from_gn(40_000)).unwrap();
        let mut stream = framed_query("cn.ntm.test.", RecordType::A, 11);
        stream.extend(framed_query("example.org.", RecordType::TXT, 12));
        stream.extend(framed_query("cn.ntm.test.", RecordType::AAAA, 13));
        // A length prefix cut in two, then a message cut in two.
        for piece in [&stream[..1], &stream[1..20], &stream[20..]] {
            g.tcp_data(now, 7, piece);
        }
        assert_eq!(g.counters()[GnStat::DnsTcpQueries], 3);
        let mut pid = None;
        let mut up = None;
        let mut early = Vec::new();
        for a in actions(&mut g) {
            match a {
                GnAction::Resolve { pending_id, .. } => pid = Some(pending_id),
                GnAction::Upstream {
                    upstream_id,
                    payload,
                    transport: Transport::Tcp,
                } => up = Some((upstream_id, payload)),
                GnAction::TcpReply { message, .. } => {
                    early.push(Message::from_vec(&message[2..]).unwrap().metadata.id)
                }
                other => panic!("{other:?}"),
            }
        }
        // The AAAA is answered at once, ahead of the two before it.
        assert_eq!(early, vec![13]);
        assert_eq!(g.counters()[GnStat::DnsForwardTcp], 1);
        let (upstream_id, payload) = up.expect("forwarded over TCP");
        g.upstream_sent(upstream_id, Transport::Tcp, 50_000);
        let mut answer = Message::from_vec(&payload).unwrap();
        answer.metadata.message_type = MessageType::Response;
        for i in 0..150u32 {
            answer.add_answer(Record::from_rdata(
                Name::from_str("example.org.").unwrap(),
                60,
                RData::A(A(Ipv4Addr::from(0x0a00_0000 + i))),
            ));
        }
        let answer = answer.to_vec().unwrap();
        assert!(answer.len() > 1412, "bigger than any UDP answer");
        // On the UDP socket of that port: not its answer.
        assert_eq!(
            g.handle_upstream(now, Transport::Udp, 50_000, &answer),
            super::super::Verdict::Dropped(GnDrop::DnsUpstreamWrongPort)
        );
        g.handle_upstream(now, Transport::Tcp, 50_000, &answer);
        let acts = actions(&mut g);
        assert!(acts.contains(&GnAction::UpstreamDone {
            transport: Transport::Tcp,
            port: 50_000
        }));
        let msgs: Vec<Message> = acts
            .iter()
            .filter_map(|a| match a {
                GnAction::TcpReply { conn: 7, message } => {
                    Some(Message::from_vec(&message[2..]).unwrap())
                }
                _ => None,
            })
            .collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].metadata.id, 12);
        assert!(!msgs[0].metadata.truncation, "whole over TCP");
        assert_eq!(msgs[0].answers.len(), 150);
        g.answer(now, pid.unwrap(), ResolveOutcome::Vip(CN_VIP));
        let (msgs, _) = written(&mut g, 7);
        assert_eq!(msgs[0].metadata.id, 11);
        assert_eq!(msgs[0].answers[0].data, RData::A(A(CN_VIP)));
        assert_eq!(g.counters()[GnStat::DnsTruncated], 0);
    }

    #[test]
    fn the_client_closing_ends_the_connection_after_its_answers() {
        let mut g = gn_ready();
        let now = Instant::now();
        g.tcp_accept(now, 1, from_gn(1)).unwrap();
        g.tcp_data(now, 1, &framed_query("cn.ntm.test.", RecordType::A, 1));
        let Some(GnAction::Resolve { pending_id, .. }) = g.poll_action() else {
            panic!()
        };
        g.tcp_eof(now, 1);
        assert_eq!(g.tcp_open(), 1, "an answer is still due");
        g.answer(now, pending_id, ResolveOutcome::NotFound);
        let (msgs, closed) = written(&mut g, 1);
        assert_eq!(msgs[0].metadata.response_code, ResponseCode::NXDomain);
        assert!(closed);
        assert_eq!(g.tcp_open(), 0);
        assert_eq!(g.counters()[GnStat::DnsTcpClosedByClient], 1);

        // A reset with an answer due: counted, the answer dropped.
        g.tcp_accept(now, 2, from_gn(2)).unwrap();
        g.tcp_data(now, 2, &framed_query("cn2.ntm.test.", RecordType::A, 2));
        let Some(GnAction::Resolve { pending_id, .. }) = g.poll_action() else {
            panic!()
        };
        g.tcp_closed(2);
        assert_eq!(g.counters()[GnDrop::DnsTcpReset], 1);
        g.answer(now, pending_id, ResolveOutcome::Vip(CN_VIP));
        assert_eq!(g.counters()[GnDrop::DnsTcpGone], 1);
        assert!(actions(&mut g).is_empty());
        // Bytes on a connection closed here: counted, nothing else.
        g.tcp_data(now, 2, &[0, 1]);
        assert_eq!(g.counters()[GnDrop::DnsTcpGone], 2);
    }

    #[test]
    fn idle_connections_close_but_not_while_a_query_is_pending() {
        let mut c = GnConfig::new(NTMA_MAC);
        let idle = Duration::from_secs(3);
        c.dns_tcp_idle_timeout = idle;
        let mut g = Gn::new(c).unwrap();
        g.set_vip(0, Some(VIP)).unwrap();
        let t0 = Instant::now();
        let s = Duration::from_millis;
        g.tcp_accept(t0, 1, from_gn(1)).unwrap();
        g.tcp_accept(t0, 2, from_gn(2)).unwrap();
        assert_eq!(g.poll_timeout(), Some(t0 + idle));
        // Connection 2 asks something the DC takes a while to answer.
        g.tcp_data(
            t0 + s(1000),
            2,
            &framed_query("slow.ntm.test.", RecordType::A, 5),
        );
        let Some(GnAction::Resolve { pending_id, .. }) = g.poll_action() else {
            panic!()
        };
        g.handle_timeout(t0 + idle);
        assert_eq!(actions(&mut g), vec![GnAction::TcpClose { conn: 1 }]);
        assert_eq!(g.counters()[GnStat::DnsTcpClosedIdle], 1);
        // Past its own idle time, but the answer is still due.
        g.handle_timeout(t0 + s(4500));
        assert!(actions(&mut g).is_empty());
        g.answer(t0 + s(4800), pending_id, ResolveOutcome::Vip(CN_VIP));
        let (msgs, closed) = written(&mut g, 2);
        assert_eq!((msgs.len(), closed), (1, false));
        g.handle_timeout(t0 + s(7700));
        assert!(actions(&mut g).is_empty(), "idle since the answer only");
        g.handle_timeout(t0 + s(7800));
        assert_eq!(actions(&mut g), vec![GnAction::TcpClose { conn: 2 }]);
        assert_eq!(g.tcp_open(), 0);
        assert_eq!(g.poll_timeout(), None);
    }

    /// A query dropped without an answer (a duplicate) leaves nothing
    /// pending: the connection still idles out.
    #[test]
    fn queries_dropped_without_answer_are_not_pending() {
        let mut g = gn_ready();
        let t0 = Instant::now();
        g.tcp_accept(t0, 1, from_gn(1)).unwrap();
        let q = framed_query("cn.ntm.test.", RecordType::A, 9);
        g.tcp_data(t0, 1, &q);
        g.tcp_data(t0, 1, &q);
        assert_eq!(g.counters()[GnDrop::DnsDuplicate], 1);
        // An empty message: too short to be a query, no answer.
        g.tcp_data(t0, 1, &[0, 0]);
        assert_eq!(g.counters()[GnDrop::DnsShort], 1);
        let Some(GnAction::Resolve { pending_id, .. }) = g.poll_action() else {
            panic!()
        };
        g.answer(t0, pending_id, ResolveOutcome::Vip(CN_VIP));
        assert_eq!(written(&mut g, 1).0.len(), 1);
        g.handle_timeout(t0 + g.config().dns_tcp_idle_timeout);
        assert_eq!(actions(&mut g), vec![GnAction::TcpClose { conn: 1 }]);
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Arbitrary bytes on a connection never panic, and everything
            /// written carries a length prefix that matches.
            #[test]
            fn arbitrary_stream_bytes_never_panic(
                pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 1..8)
            ) {
                let mut g = gn_ready();
                let now = Instant::now();
                g.tcp_accept(now, 1, from_gn(1)).unwrap();
                for p in &pieces {
                    g.tcp_data(now, 1, p);
                }
                g.tcp_eof(now, 1);
                g.handle_timeout(now + Duration::from_secs(60));
                for a in actions(&mut g) {
                    if let GnAction::TcpReply { message, .. } = a {
                        let len = usize::from(u16::from_be_bytes([message[0], message[1]]));
                        prop_assert_eq!(len + 2, message.len());
                    }
                }
                prop_assert_eq!(g.tcp_open(), 0);
            }
        }
    }
}
