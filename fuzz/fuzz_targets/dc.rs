//! The DC's coordinator (`ntm_dc::Coordinator::handle`, memory store) fed datagrams:
//! raw bytes, arbitrary bodies behind a header the harness seals with a configured
//! node's `K_node` or the RS's `K_rs` (so they pass the tag and reach the parser), and
//! well-formed messages built as `ntm_proto` `Repr`s and sealed with the right key:
//! REG_REQ (public or behind NAT, either node, with fuzzer-chosen REQ_ID, caps and
//! local address), KEEPALIVE, DEREG, DIR_REQ (to a configured, unknown or own name),
//! ROUTE_ACK and RELAY_ACK for tunnels the DC directed (or any id), ERROR; seqs move
//! forward by fuzzer-chosen steps (or back: replays), from the node's address or
//! elsewhere; time steps with `handle_timeout`; a reload. Every transmit is drained
//! after each step and must be a datagram that parses. Nothing may panic.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ntm_dc::{Config, Coordinator, NodeEntry, RelayEntry};
use ntm_proto::wire::{
    Caps, DirReq, ErrorMsg, Fqdn, Header, Message, MessageType, Packet, RegReq, RelayAck, Repr,
    RouteAck, MAX_SIGNALING_LEN, VERSION,
};
use ntm_proto::{Authenticator, Key, Status, Suite};

const DC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const RS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 3), 7720);
const RS_ID: u32 = 9;
const FQDNS: [&str; 3] = ["mn.ntm.test", "cn.ntm.test", "nat.ntm.test"];
/// Where each node sends from (the last one's NAT maps it elsewhere).
const HOMES: [SocketAddrV4; 3] = [
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 20), 7700),
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 21), 7700),
    SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 5), 40001),
];
const LOCALS: [SocketAddrV4; 3] = [
    HOMES[0],
    HOMES[1],
    SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), 7700),
];

fn node_key(i: usize) -> Key {
    Key::from_bytes([0x10 + i as u8; 32])
}

fn rs_key() -> Key {
    Key::from_bytes([0x5e; 32])
}

fn config(suite: u8) -> Config {
    Config {
        listen: DC,
        nodes: FQDNS
            .iter()
            .enumerate()
            .map(|(i, f)| NodeEntry::new(f, &node_key(i)))
            .collect(),
        relays: vec![RelayEntry::new(RS_ID, RS, &rs_key())],
        tunnel_suite: suite,
        max_registrations: 8,
        max_directions: 16,
        ..Config::default()
    }
}

#[derive(Debug, Arbitrary)]
enum Sender {
    Node(u8),
    Rs,
    /// A key no one configured.
    Stranger,
}

#[derive(Debug, Arbitrary)]
enum Name {
    Node(u8),
    Unknown,
    Bad(String),
}

#[derive(Debug, Arbitrary)]
enum Msg {
    RegReq {
        req_id: u32,
        name: Name,
        natted: bool,
        caps: u32,
    },
    Keepalive,
    Dereg,
    DirReq {
        req_id: u32,
        name: Name,
    },
    /// For a tunnel the DC directed (index), or `any`.
    RouteAck {
        tunnel: u8,
        any: Option<u32>,
    },
    RelayAck {
        tunnel: u8,
        any: Option<u32>,
    },
    Error {
        status: u8,
        reason: Option<String>,
    },
    /// Any type code and TLV body (sealed all the same).
    Body {
        msg_type: u8,
        body: Vec<u8>,
    },
}

#[derive(Debug, Arbitrary)]
enum Op {
    Raw {
        from_home: Option<u8>,
        bytes: Vec<u8>,
    },
    Sealed {
        sender: Sender,
        msg: Msg,
        /// Seq step: forward (0 repeats the last one: a replay), or back.
        seq_step: i16,
        /// Header id: the right one (node id, RS id, 0 for REG_REQ) or this.
        id: Option<u32>,
        response_required: bool,
        /// From another address than the sender's own.
        elsewhere: Option<u16>,
        suite: Option<u8>,
    },
    Time(u16),
    Reload {
        suite: u8,
    },
}

struct Harness {
    dc: Coordinator,
    now: Instant,
    /// Last seq per sender: nodes, RS, stranger.
    seq: [u64; 5],
    tunnels: Vec<u32>,
}

impl Harness {
    fn drain(&mut self) {
        let mut buf = vec![0u8; MAX_SIGNALING_LEN];
        for _ in 0..10_000 {
            let Some(t) = self.dc.poll_transmit(self.now, &mut buf) else {
                return;
            };
            let d = &buf[..t.len];
            let p = Packet::new_checked(d).expect("the DC sent a short datagram");
            Repr::parse(&p).expect("the DC sent a datagram that does not parse");
        }
        panic!("poll_transmit never ends");
    }

    fn note_tunnels(&mut self) {
        for t in self.dc.tunnels() {
            if !self.tunnels.contains(&t.tunnel_id) {
                self.tunnels.push(t.tunnel_id);
            }
        }
        if self.tunnels.len() > 64 {
            self.tunnels.drain(..32);
        }
    }

    fn pick(&self, i: u8, any: Option<u32>) -> u32 {
        match any {
            Some(a) => a,
            None if self.tunnels.is_empty() => 1,
            None => self.tunnels[usize::from(i) % self.tunnels.len()],
        }
    }
}

fn name(n: &Name) -> String {
    match n {
        Name::Node(i) => FQDNS[usize::from(*i) % 3].to_owned(),
        Name::Unknown => "nobody.ntm.test".to_owned(),
        Name::Bad(s) => s.chars().take(300).collect(),
    }
}

fn sealed_body(
    key: &Key,
    msg_type: u8,
    id: u32,
    seq: u64,
    rr: bool,
    suite: u8,
    body: &[u8],
) -> Vec<u8> {
    let body = &body[..body.len().min(1400)];
    let mut b = vec![0u8; 32 + body.len()];
    b[16..16 + body.len()].copy_from_slice(body);
    let mut p = Packet::new_unchecked(&mut b[..]);
    p.set_version(VERSION);
    p.set_msg_type(MessageType::from(msg_type));
    p.set_response_required(rr);
    p.set_suite(Suite::from(suite));
    p.set_id(id);
    p.set_seq(seq);
    Authenticator::new(key).seal(&mut b).unwrap();
    b
}

fuzz_target!(|ops: Vec<Op>| {
    let now = Instant::now();
    let dc = Coordinator::new(&config(2), now, 1_800_000_000_000_000_000, [7; 32]).unwrap();
    let mut h = Harness {
        dc,
        now,
        seq: [1_000_000; 5],
        tunnels: Vec::new(),
    };
    for op in ops.into_iter().take(48) {
        match op {
            Op::Raw { from_home, bytes } => {
                let from = from_home.map_or(RS, |i| HOMES[usize::from(i) % 3]);
                let _ = h.dc.handle(h.now, from, &bytes);
            }
            Op::Sealed {
                sender,
                msg,
                seq_step,
                id,
                response_required,
                elsewhere,
                suite,
            } => {
                let (slot, key, home, right_id) = match sender {
                    Sender::Node(i) => {
                        let i = usize::from(i) % 3;
                        let nid = h.dc.node_id(FQDNS[i]).unwrap_or(0);
                        (i, node_key(i), HOMES[i], nid)
                    }
                    Sender::Rs => (3, rs_key(), RS, RS_ID),
                    Sender::Stranger => (4, Key::from_bytes([0xee; 32]), HOMES[0], 5),
                };
                let seq = h.seq[slot].saturating_add_signed(i64::from(seq_step));
                h.seq[slot] = h.seq[slot].max(seq);
                let from = match elsewhere {
                    Some(port) => SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 77), port),
                    None => home,
                };
                let header = |default: u32| Header {
                    id: id.unwrap_or(default),
                    seq,
                    response_required,
                };
                let auth = Authenticator::new(&key);
                let seal = |repr: Repr<'_>| -> Option<Vec<u8>> {
                    let mut b = vec![0u8; repr.buffer_len()];
                    repr.emit_sealed(&mut b, &auth).ok()?;
                    Some(b)
                };
                let d = match &msg {
                    Msg::RegReq {
                        req_id,
                        name: n,
                        natted,
                        caps,
                    } => {
                        let n = name(n);
                        let Ok(fqdn) = Fqdn::new(&n) else { continue };
                        let local = if *natted { LOCALS[2] } else { home };
                        seal(Repr::new(
                            header(0),
                            Message::RegReq(RegReq {
                                req_id: *req_id,
                                fqdn,
                                local_addr: local,
                                caps: Caps(*caps % 4),
                            }),
                        ))
                    }
                    Msg::Keepalive => seal(Repr::new(header(right_id), Message::Keepalive)),
                    Msg::Dereg => seal(Repr::new(header(right_id), Message::Dereg)),
                    Msg::DirReq { req_id, name: n } => {
                        let n = name(n);
                        let Ok(fqdn) = Fqdn::new(&n) else { continue };
                        seal(Repr::new(
                            header(right_id),
                            Message::DirReq(DirReq {
                                req_id: *req_id,
                                fqdn,
                            }),
                        ))
                    }
                    Msg::RouteAck { tunnel, any } => seal(Repr::new(
                        header(right_id),
                        Message::RouteAck(RouteAck {
                            tunnel_id: h.pick(*tunnel, *any),
                        }),
                    )),
                    Msg::RelayAck { tunnel, any } => seal(Repr::new(
                        header(right_id),
                        Message::RelayAck(RelayAck {
                            tunnel_id: h.pick(*tunnel, *any),
                        }),
                    )),
                    Msg::Error { status, reason } => seal(Repr::new(
                        header(right_id),
                        Message::Error(ErrorMsg {
                            status: Status::from(*status),
                            reason: reason.as_deref(),
                        }),
                    )),
                    Msg::Body { msg_type, body } => Some(sealed_body(
                        &key,
                        *msg_type,
                        id.unwrap_or(right_id),
                        seq,
                        response_required,
                        suite.unwrap_or(1),
                        body,
                    )),
                };
                if let Some(d) = d {
                    let _ = h.dc.handle(h.now, from, &d);
                }
            }
            Op::Time(ms) => {
                h.now += Duration::from_millis(u64::from(ms) * 8);
                if h.dc.poll_timeout().is_some_and(|t| t <= h.now) {
                    h.dc.handle_timeout(h.now);
                }
            }
            Op::Reload { suite } => {
                let _ = h.dc.reload(&config(suite % 3));
            }
        }
        h.drain();
        h.note_tunnels();
    }
});
