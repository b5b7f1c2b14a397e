//! A [`crate::host::Host`] with a DNS stub as a simulated party: what the
//! software node and the adapter do around their hosts, without sockets, a
//! TUN device or GNs (their users are the test, which asks names and sends
//! packets).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

use super::{HostId, Party};
use crate::data::inner_destination;
use crate::dns::{DnsDrop, DnsStub, Handled, Output, ReplyKind, StubConfig, Transport};
use crate::host::{self, HostEvent, NoWay, Way};
use crate::node::{Event, Received};
use crate::wire::OVERHEAD;

/// A host on the network, with what it reported kept.
pub struct HostNode {
    /// Its host id.
    pub id: HostId,
    /// The host.
    pub host: host::Host,
    /// Its DNS stub (suffix `ntm.test`), clients numbered by the test.
    pub stub: DnsStub<u16>,
    /// Every endpoint event, in order.
    pub events: Vec<Event>,
    /// Every DNS reply: (client, kind).
    pub replies: Vec<(u16, ReplyKind)>,
    /// Held packets given up: (peer VIP, how many).
    pub given_up: Vec<(Ipv4Addr, usize)>,
    /// Held packets sent once their tunnel came up.
    pub released: usize,
    /// Held packets that waited too long.
    pub expired: usize,
    /// Packets held ([`HostNode::send_packet`]).
    pub held: usize,
    /// The inner packets it received through tunnels.
    pub inner_rx: Vec<Vec<u8>>,
    out: VecDeque<(SocketAddrV4, Vec<u8>)>,
}

/// An A query for `name` with DNS id `id`.
pub fn a_query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let name = Name::from_str(name).expect("a DNS name");
    m.add_query(Query::query(name, RecordType::A));
    m.to_vec().expect("a small query")
}

impl HostNode {
    /// `host` at host `id`.
    pub fn new(id: HostId, host: host::Host) -> HostNode {
        let suffix = crate::dns::parse_suffix("ntm.test").expect("a suffix");
        HostNode {
            id,
            host,
            stub: DnsStub::new(suffix, StubConfig::default()),
            events: Vec::new(),
            replies: Vec::new(),
            given_up: Vec::new(),
            released: 0,
            expired: 0,
            held: 0,
            inner_rx: Vec::new(),
            out: VecDeque::new(),
        }
    }

    /// Client `client` asks the stub for the A record of `name`.
    pub fn ask(&mut self, now: Instant, client: u16, name: &str) -> Result<Handled, DnsDrop> {
        let r = self
            .stub
            .handle_query(now, client, 0, Transport::Udp, &a_query(name, client));
        self.pump(now);
        r
    }

    /// The user sends the IPv4 packet `pkt` to a peer: sent, held, or why not.
    pub fn send_packet(&mut self, now: Instant, pkt: &[u8]) -> Result<Way, NoWay> {
        let dst = inner_destination(pkt).expect("an IPv4 packet");
        let route = self.host.route(now, dst)?;
        match route {
            Way::Send => self.send_data(now, pkt),
            Way::Hold | Way::Connected => {
                if self.host.hold(now, dst, pkt).is_ok() {
                    self.held += 1;
                }
            }
        }
        self.pump(now);
        Ok(route)
    }

    /// The reply kinds client `client` got.
    pub fn replies_to(&self, client: u16) -> Vec<ReplyKind> {
        self.replies
            .iter()
            .filter(|(c, _)| *c == client)
            .map(|(_, k)| *k)
            .collect()
    }

    fn send_data(&mut self, now: Instant, pkt: &[u8]) {
        let mut buf = vec![0u8; pkt.len() + OVERHEAD];
        if let Ok(t) = self.host.send_data(now, pkt, &mut buf) {
            buf.truncate(t.len);
            self.out.push_back((t.dst, buf));
        }
    }

    /// What a driver does after every input: events, transmits, released
    /// packets, the stub's outputs, until nothing more comes.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut busy = false;
            while let Some(ev) = self.host.poll_event(now) {
                self.on_event(now, ev);
                busy = true;
            }
            while let Some(t) = super::pull(|buf| self.host.poll_transmit(now, buf)) {
                self.out.push_back(t);
                busy = true;
            }
            while let Some((_, packets)) = self.host.poll_released() {
                for p in packets {
                    self.send_data(now, &p);
                    self.released += 1;
                }
                busy = true;
            }
            while let Some(out) = self.stub.poll_output() {
                match out {
                    Output::Reply { to, kind, .. } => self.replies.push((to, kind)),
                    Output::Resolve {
                        fqdn, pending_id, ..
                    } => {
                        let _ = self.host.resolve(now, &fqdn, pending_id);
                    }
                    Output::Upstream { .. } => {}
                }
                busy = true;
            }
            if !busy {
                break;
            }
        }
    }

    fn on_event(&mut self, now: Instant, ev: HostEvent) {
        match ev {
            HostEvent::Endpoint(e) => self.events.push(e),
            HostEvent::Answer {
                pending_id,
                outcome,
            } => {
                // Late answers (the stub gave up first) are refused: fine.
                let _ = self.stub.answer(now, pending_id, outcome);
            }
            HostEvent::SetupFailed { vip, packets } => self.given_up.push((vip, packets.len())),
        }
    }
}

impl Party for HostNode {
    fn handle(&mut self, now: Instant, from: SocketAddrV4, mut data: Vec<u8>) {
        if let Ok(Received::Data { inner, .. }) = self.host.handle(now, from, &mut data) {
            self.inner_rx.push(inner.to_vec());
        }
        self.pump(now);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddrV4, Vec<u8>)> {
        self.pump(now);
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.host.poll_timeout(), self.stub.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.expired += self.host.handle_timeout(now);
        self.stub.handle_timeout(now);
        self.pump(now);
    }
}
