//! The RS's relay (`ntm_rs::Relay::handle`) fed datagrams: raw bytes from anywhere;
//! RELAY_DIRs sealed with `K_rs` (header id = the RS id or another) that wrap one of a
//! few `K_relay`s for a few tunnel ids, with fuzzer-chosen lifetimes; RELAY_BINDs sealed
//! with the tunnel's `K_relay` (or another key) for either role from a few addresses;
//! arbitrary bodies behind a header sealed with either key; tunnel traffic (any type,
//! any bytes) from bound and unbound addresses; seqs forward or back (replays); time
//! steps with `handle_timeout`. Every transmit is drained and parses. A forwarded
//! datagram goes to an address that bound itself to the tunnel. Nothing may panic.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ntm_proto::wire::{
    Header, Message, MessageType, Packet, RelayBind, RelayDir, Repr, MAX_SIGNALING_LEN, VERSION,
};
use ntm_proto::{Authenticator, Key, Role, Suite, WrapLabel};
use ntm_rs::{Config, Relay, Verdict};

const RS_ID: u32 = 9;
const DC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const TUNNEL_IDS: [u32; 3] = [0x100, 0x200, 0x300];
const ADDRS: [SocketAddrV4; 4] = [
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 20), 7700),
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 21), 7700),
    SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 5), 40001),
    DC,
];

fn rs_key() -> Key {
    Key::from_bytes([0x5e; 32])
}

fn relay_key(k: u8) -> Key {
    Key::from_bytes([0x70 + k % 4; 32])
}

#[derive(Debug, Arbitrary)]
enum Op {
    Raw {
        from: u8,
        bytes: Vec<u8>,
    },
    RelayDir {
        tunnel: u8,
        key: u8,
        lifetime: u16,
        wrong_id: Option<u32>,
        seq_step: i16,
        from: u8,
    },
    RelayBind {
        tunnel: u8,
        key: u8,
        role: u8,
        from: u8,
        seq_step: i16,
        suite: u8,
    },
    /// A header of any type sealed with `K_rs` (`rs`) or the tunnel's `K_relay`.
    Sealed {
        rs: bool,
        tunnel: u8,
        key: u8,
        msg_type: u8,
        suite: u8,
        from: u8,
        body: Vec<u8>,
    },
    /// Tunnel traffic: a header of a tunnel type and any body, unsealed.
    Traffic {
        tunnel: u8,
        msg_type: u8,
        from: u8,
        body: Vec<u8>,
    },
    Time(u16),
}

fn tunnel_types(b: u8) -> MessageType {
    [
        MessageType::Data,
        MessageType::TunKeepalive,
        MessageType::TunReq,
        MessageType::TunResp,
        MessageType::Error,
    ][usize::from(b) % 5]
}

fn datagram(msg_type: MessageType, suite: u8, id: u32, seq: u64, body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(1400)];
    let mut b = vec![0u8; 32 + body.len()];
    b[16..16 + body.len()].copy_from_slice(body);
    let mut p = Packet::new_unchecked(&mut b[..]);
    p.set_version(VERSION);
    p.set_msg_type(msg_type);
    p.set_suite(Suite::from(suite));
    p.set_id(id);
    p.set_seq(seq);
    b
}

fn seal(key: &Key, header: Header, message: Message<'_>) -> Vec<u8> {
    let repr = Repr::new(header, message);
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit_sealed(&mut b, &Authenticator::new(key)).unwrap();
    b
}

fuzz_target!(|ops: Vec<Op>| {
    let mut now = Instant::now();
    let mut cfg = Config::new(RS_ID, &rs_key());
    cfg.max_bindings = 2;
    let mut rs = Relay::new(&cfg, now, 1_800_000_000_000_000_000).unwrap();
    let mut seq = 1_000_000u64;
    // Addresses a valid RELAY_BIND came from, per tunnel id.
    let mut bound: Vec<(u32, SocketAddrV4)> = Vec::new();
    let step = |s: i16, seq: &mut u64| -> u64 {
        let v = seq.saturating_add_signed(i64::from(s));
        *seq = (*seq).max(v);
        v
    };
    for op in ops.into_iter().take(48) {
        let addr = |i: u8| ADDRS[usize::from(i) % ADDRS.len()];
        let tid = |i: u8| TUNNEL_IDS[usize::from(i) % TUNNEL_IDS.len()];
        let (from, d) = match op {
            Op::Raw { from, bytes } => (addr(from), bytes),
            Op::RelayDir {
                tunnel,
                key,
                lifetime,
                wrong_id,
                seq_step,
                from,
            } => {
                let s = step(seq_step, &mut seq);
                let t = tid(tunnel);
                let wrapped = Authenticator::new(&rs_key()).wrap_key(
                    WrapLabel::RelayKey,
                    t,
                    s,
                    &relay_key(key),
                );
                let header = Header {
                    id: wrong_id.unwrap_or(RS_ID),
                    seq: s,
                    response_required: true,
                };
                let d = seal(
                    &rs_key(),
                    header,
                    Message::RelayDir(RelayDir {
                        tunnel_id: t,
                        wrapped_relay_key: wrapped,
                        lifetime_secs: u32::from(lifetime),
                    }),
                );
                (addr(from), d)
            }
            Op::RelayBind {
                tunnel,
                key,
                role,
                from,
                seq_step,
                suite,
            } => {
                let s = step(seq_step, &mut seq);
                let t = tid(tunnel);
                let header = Header {
                    id: t,
                    seq: s,
                    response_required: false,
                };
                let role = Role::from(role % 4);
                let mut d = seal(
                    &relay_key(key),
                    header,
                    Message::RelayBind(RelayBind { role }),
                );
                if suite % 4 == 0 {
                    d[3] = suite;
                }
                (addr(from), d)
            }
            Op::Sealed {
                rs: to_rs,
                tunnel,
                key,
                msg_type,
                suite,
                from,
                body,
            } => {
                let t = tid(tunnel);
                let (k, id) = if to_rs {
                    (rs_key(), RS_ID)
                } else {
                    (relay_key(key), t)
                };
                let s = step(1, &mut seq);
                let mut d = datagram(MessageType::from(msg_type), suite, id, s, &body);
                Authenticator::new(&k).seal(&mut d).unwrap();
                (addr(from), d)
            }
            Op::Traffic {
                tunnel,
                msg_type,
                from,
                body,
            } => {
                let s = step(1, &mut seq);
                (
                    addr(from),
                    datagram(tunnel_types(msg_type), 2, tid(tunnel), s, &body),
                )
            }
            Op::Time(ms) => {
                now += Duration::from_millis(u64::from(ms) * 16);
                if rs.poll_timeout().is_some_and(|t| t <= now) {
                    rs.handle_timeout(now);
                }
                continue;
            }
        };
        let r = rs.handle(now, from, &d);
        if let Ok(Verdict::Forward(to)) = r {
            let id = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
            assert!(
                bound.contains(&(id, to)),
                "forwarded to an address that never bound"
            );
            assert!(
                bound.contains(&(id, from)),
                "forwarded from an address that never bound"
            );
        }
        if r.is_ok() && d.len() > 1 && d[1] == u8::from(MessageType::RelayBind) {
            let id = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
            bound.push((id, from));
        }
        let mut buf = vec![0u8; MAX_SIGNALING_LEN];
        let mut n = 0;
        while let Some(t) = rs.poll_transmit(now, &mut buf) {
            let p = Packet::new_checked(&buf[..t.len]).expect("a short datagram");
            Repr::parse(&p).expect("the RS sent a datagram that does not parse");
            n += 1;
            assert!(n < 10_000, "poll_transmit never ends");
        }
    }
});
