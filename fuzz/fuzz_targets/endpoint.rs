//! The node state machine on hostile input: `Endpoint::handle` with raw
//! datagrams, and with arbitrary bodies sealed with the right `K_node` (so
//! they pass the tag and reach the parser and the state machine), mixed with
//! timer steps. Nothing may panic, and every poll must drain.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ntm_proto::node::{Config, Endpoint};
use ntm_proto::wire::{Caps, Header, Lease, Message, Packet, RegResp, Repr, Vip, HEADER_LEN};
use ntm_proto::{Authenticator, Key, Suite};

const DC: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 21), 7700);

fn drain(ep: &mut Endpoint, now: Instant) {
    let mut buf = [0u8; 2048];
    for _ in 0..1000 {
        if ep.poll_transmit(now, &mut buf).is_none() {
            break;
        }
    }
    while ep.poll_event().is_some() {}
    let _ = ep.poll_timeout();
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
    drain(&mut ep, now);
    // Register, so that ROUTE_DIR and friends are reachable.
    let lease = Lease {
        node_id: 7,
        vip: Vip {
            addr: Ipv4Addr::new(100, 64, 0, 2),
            prefix_len: 10,
        },
        observed: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 40001),
        keepalive_secs: 20,
        lifetime_secs: 600,
    };
    let mut buf = [0u8; 512];
    let n = Repr::new(
        Header {
            id: 7,
            seq: 1,
            response_required: false,
        },
        Message::RegResp(RegResp { result: Ok(lease) }),
    )
    .emit_sealed(&mut buf, &auth)
    .unwrap();
    ep.handle(now, DC, &buf[..n]).unwrap();
    drain(&mut ep, now);

    let mut seq = 2u64;
    let mut rest = data;
    while rest.len() >= 3 {
        let op = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let chunk = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match op % 5 {
            0 => {
                let _ = ep.handle(now, DC, chunk);
            }
            1 => {
                let _ = ep.handle(now, PEER, chunk);
            }
            2 | 3 => {
                // chunk = type byte, id (4), body; sealed with K_node from the DC.
                if chunk.len() < 5 {
                    continue;
                }
                let mut d = vec![0u8; HEADER_LEN + (chunk.len() - 5) + 16];
                d[HEADER_LEN..HEADER_LEN + chunk.len() - 5].copy_from_slice(&chunk[5..]);
                let mut p = Packet::new_unchecked(&mut d[..]);
                p.set_version(1);
                p.set_msg_type(chunk[0].into());
                p.set_suite(Suite::HmacSha256_128);
                p.set_id(u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]));
                p.set_seq(seq);
                seq += 1;
                if auth.seal(&mut d).is_ok() {
                    let _ = ep.handle(now, DC, &d);
                }
            }
            _ => {
                let step =
                    Duration::from_millis(u64::from(chunk.first().copied().unwrap_or(0)) * 250);
                now += step;
                ep.handle_timeout(now);
            }
        }
        drain(&mut ep, now);
        if op == 0xff {
            ep.close(now);
            drain(&mut ep, now);
        }
    }
});
