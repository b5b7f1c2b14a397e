//! The node state machine on hostile input: `Endpoint::handle` with raw
//! datagrams, with arbitrary bodies sealed with the right `K_node` (so they
//! pass the tag and reach the parser and the state machine), with
//! well-formed ROUTE_DIRs built from fuzzer-chosen fields (path, role, suite,
//! wrapped key), with tunnel messages sealed with the peer's send direction
//! key of a tunnel the endpoint announced (`Event::TunnelAdded`), and with
//! timer steps. Nothing may panic, every poll must drain, and a tunnel
//! message the endpoint itself sent never verifies when it comes back
//! (reflection, §3).
#![no_main]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ntm_proto::node::{Config, Endpoint, Event};
use ntm_proto::wire::{
    Caps, Fqdn, Header, Lease, Message, MessageType, Packet, RegResp, Repr, Route, RouteDir,
    TunReq, TunResp, Vip, HEADER_LEN, VERSION,
};
use ntm_proto::{Authenticator, Cipher, Key, Path, Role, Status, Suite};

const DC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 21), 7700);
const ELSEWHERE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 40000);
const OUR_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const PEER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
const PEER_FQDN: &str = "cn.ntm.test";

/// What the harness learned from the endpoint's outputs.
#[derive(Default)]
struct Seen {
    /// Tunnel id → the peer's send cipher (our receive direction key).
    peer_tx: BTreeMap<u32, Cipher>,
    /// The last tunnel message the endpoint sent to a peer.
    last_tunnel_tx: Option<Vec<u8>>,
}

fn drain(ep: &mut Endpoint, now: Instant, seen: &mut Seen) {
    let mut buf = [0u8; 2048];
    for _ in 0..1000 {
        let Some(t) = ep.poll_transmit(now, &mut buf) else {
            break;
        };
        let d = &buf[..t.len];
        if t.dst != DC
            && d.len() > 1
            && matches!(
                MessageType::from(d[1]),
                MessageType::Data
                    | MessageType::TunKeepalive
                    | MessageType::TunReq
                    | MessageType::TunResp
            )
        {
            seen.last_tunnel_tx = Some(d.to_vec());
        }
    }
    while let Some(ev) = ep.poll_event() {
        if let Event::TunnelAdded(p) = ev {
            if let Ok(c) = Cipher::new(p.suite, &p.rx_key) {
                seen.peer_tx.insert(p.tunnel_id, c);
            }
        }
    }
    let _ = ep.poll_timeout();
}

fn byte(c: &[u8], i: usize) -> u8 {
    c.get(i).copied().unwrap_or(0)
}

fn u32_at(c: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([byte(c, i), byte(c, i + 1), byte(c, i + 2), byte(c, i + 3)])
}

/// An inner IPv4 packet from the peer's VIP to ours (or elsewhere).
fn inner(len: usize, to_us: bool) -> Vec<u8> {
    let len = len.clamp(20, 1400);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&PEER_VIP.octets());
    let dst = if to_us { OUR_VIP } else { PEER_VIP };
    p[16..20].copy_from_slice(&dst.octets());
    p
}

fuzz_target!(|data: &[u8]| {
    let key = Key::from_bytes([3; 32]);
    let auth = Authenticator::new(&key);
    let mut now = Instant::now();
    let cfg = Config {
        fqdn: "gn.ntm.test".into(),
        key,
        dc: DC,
        local_addr: SocketAddrV4::new(Ipv4Addr::new(192, 168, 10, 2), 7700),
        caps: Caps::ADAPTER,
    };
    let mut ep = Endpoint::new(cfg, now, 1, [0; 32]).unwrap();
    // The REG_REQ: its REQ_ID must come back in the REG_RESP.
    let mut buf = [0u8; 2048];
    let t = ep.poll_transmit(now, &mut buf).expect("a REG_REQ at start");
    let req_id = match Repr::parse(&Packet::new_checked(&buf[..t.len]).unwrap())
        .unwrap()
        .message
    {
        Message::RegReq(r) => r.req_id,
        m => panic!("first transmit is {m:?}"),
    };
    let mut seen = Seen::default();
    drain(&mut ep, now, &mut seen);
    // Register, so that ROUTE_DIR and friends are reachable.
    let lease = Lease {
        node_id: 7,
        vip: Vip {
            addr: OUR_VIP,
            prefix_len: 10,
        },
        observed: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 40001),
        keepalive_secs: 20,
        lifetime_secs: 600,
    };
    let n = Repr::new(
        Header {
            id: 7,
            seq: 1,
            response_required: false,
        },
        Message::RegResp(RegResp {
            req_id,
            result: Ok(lease),
        }),
    )
    .emit_sealed(&mut buf, &auth)
    .unwrap();
    ep.handle(now, DC, &mut buf[..n]).unwrap();
    drain(&mut ep, now, &mut seen);

    let mut dc_seq = 2u64;
    let mut peer_seq = 1u64;
    let mut rest = data;
    while rest.len() >= 3 {
        let op = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let chunk = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match op % 8 {
            0 => {
                let _ = ep.handle(now, DC, &mut chunk.to_vec());
            }
            1 => {
                let _ = ep.handle(now, PEER, &mut chunk.to_vec());
            }
            2 => {
                // chunk = type byte, id (4), body; sealed with K_node from the DC.
                if chunk.len() < 5 {
                    continue;
                }
                let mut d = vec![0u8; HEADER_LEN + (chunk.len() - 5) + 16];
                d[HEADER_LEN..HEADER_LEN + chunk.len() - 5].copy_from_slice(&chunk[5..]);
                let mut p = Packet::new_unchecked(&mut d[..]);
                p.set_version(VERSION);
                p.set_msg_type(chunk[0].into());
                p.set_suite(Suite::HmacSha256_128);
                p.set_id(u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]));
                p.set_seq(dc_seq);
                dc_seq += 1;
                if auth.seal(&mut d).is_ok() {
                    let _ = ep.handle(now, DC, &mut d);
                }
            }
            3 => {
                // A well-formed ROUTE_DIR from the DC with fuzzer-chosen fields.
                let tunnel_id = u32_at(chunk, 0) % 8;
                let mut wrapped = [0u8; 32];
                for (i, w) in wrapped.iter_mut().enumerate() {
                    *w = byte(chunk, 12 + i);
                }
                let relay = (byte(chunk, 8) & 0x80 != 0).then_some(wrapped);
                let seq = dc_seq;
                dc_seq += 1;
                let route = Route {
                    tunnel_id,
                    peer_fqdn: Fqdn::new(PEER_FQDN).unwrap(),
                    peer_vip: Vip {
                        addr: PEER_VIP,
                        prefix_len: 10,
                    },
                    endpoint: PEER,
                    path: Path::from(byte(chunk, 4) % 4),
                    role: Role::from(byte(chunk, 5) % 3),
                    suite: Suite::from(byte(chunk, 6) % 4),
                    wrapped_key: wrapped,
                    wrapped_relay_key: relay,
                    lifetime_secs: u32::from(byte(chunk, 7)),
                };
                let result = match byte(chunk, 9) % 8 {
                    0 => Err(Status::from(byte(chunk, 10))),
                    _ => Ok(route),
                };
                let req_id = if byte(chunk, 11) & 1 == 0 {
                    0
                } else {
                    u32_at(chunk, 44)
                };
                let msg = Message::RouteDir(RouteDir { req_id, result });
                let hdr = Header {
                    id: 7,
                    seq,
                    response_required: byte(chunk, 11) & 2 != 0,
                };
                if let Ok(n) = Repr::new(hdr, msg).emit_sealed(&mut buf, &auth) {
                    let _ = ep.handle(now, DC, &mut buf[..n]);
                }
            }
            4 | 5 => {
                // A tunnel message from the peer, sealed with its send
                // direction key in the tunnel's suite.
                if seen.peer_tx.is_empty() {
                    continue;
                }
                let i = usize::from(byte(chunk, 0)) % seen.peer_tx.len();
                let (&id, cipher) = seen.peer_tx.iter().nth(i).unwrap();
                let seq = if byte(chunk, 1) & 0x80 != 0 {
                    u64::from(u32_at(chunk, 2))
                } else {
                    peer_seq += 1;
                    peer_seq
                };
                let from = if byte(chunk, 1) & 0x40 != 0 {
                    ELSEWHERE
                } else {
                    PEER
                };
                let hdr = Header {
                    id,
                    seq,
                    response_required: false,
                };
                let vip = Vip {
                    addr: PEER_VIP,
                    prefix_len: 10,
                };
                let fqdn = Fqdn::new(PEER_FQDN).unwrap();
                let data_pkt;
                let msg = match byte(chunk, 1) % 6 {
                    0 => Message::TunReq(TunReq { fqdn, vip }),
                    1 => Message::TunResp(TunResp {
                        status: Status::from(byte(chunk, 6) % 8),
                        fqdn,
                        vip,
                    }),
                    2 => Message::TunKeepalive,
                    3 => {
                        data_pkt = inner(usize::from(byte(chunk, 6)), byte(chunk, 7) & 1 == 0);
                        Message::Data { payload: &data_pkt }
                    }
                    4 => Message::Data {
                        payload: chunk.get(6..).unwrap_or(&[]),
                    },
                    _ => Message::Error(ntm_proto::wire::ErrorMsg {
                        status: Status::from(byte(chunk, 6) % 8),
                        reason: None,
                    }),
                };
                if let Ok(n) = Repr::new(hdr, msg).emit_sealed_with(&mut buf, cipher) {
                    let _ = ep.handle(now, from, &mut buf[..n]);
                }
            }
            6 => {
                // Reflection: the endpoint's own tunnel message sent back to it.
                if let Some(mut d) = seen.last_tunnel_tx.clone() {
                    let r = ep.handle(now, ELSEWHERE, &mut d);
                    assert!(r.is_err(), "a reflected tunnel message was accepted: {r:?}");
                }
            }
            _ => {
                let step =
                    Duration::from_millis(u64::from(chunk.first().copied().unwrap_or(0)) * 250);
                now += step;
                ep.handle_timeout(now);
            }
        }
        drain(&mut ep, now, &mut seen);
        if op == 0xff {
            ep.close(now);
            drain(&mut ep, now, &mut seen);
        }
    }
});
