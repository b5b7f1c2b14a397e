//! The DNS stub (`ntm_proto::dns::DnsStub`): arbitrary client queries and
//! upstream replies never panic, the pending tables stay bounded, every
//! reply is addressed to a client that asked, and no reply to a UDP client
//! exceeds `max_udp_payload` (clients 0..4 ask over UDP, 4..8 over TCP).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ntm_proto::dns::{parse_suffix, DnsStub, Output, StubConfig, Transport};

fuzz_target!(|data: &[u8]| {
    let mut stub: DnsStub<u8> = DnsStub::new(
        parse_suffix("ntm.test").expect("valid suffix"),
        StubConfig {
            max_pending: 4,
            ..StubConfig::default()
        },
    );
    let now = Instant::now();
    // Each chunk: one selector byte, then a datagram up to the next 0xff 0xfe.
    for (i, chunk) in data.split(|&b| b == 0xfe).enumerate() {
        let Some((&sel, body)) = chunk.split_first() else {
            continue;
        };
        let client = (i % 8) as u8;
        let transport = if client < 4 {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        match sel % 3 {
            0 => {
                let _ = stub.handle_query(now, client, 0, transport, body);
            }
            1 => {
                let _ = stub.handle_upstream(now, body);
            }
            _ => {
                stub.handle_timeout(now + Duration::from_secs(u64::from(sel)));
            }
        }
        while let Some(out) = stub.poll_output() {
            match out {
                Output::Reply { to, payload, .. } => {
                    assert!(to < 8);
                    assert!(payload.len() >= 12);
                    if to < 4 {
                        assert!(payload.len() <= stub.config().max_udp_payload);
                    }
                }
                Output::Resolve { pending_id, .. } => {
                    let _ = stub.answer(now, pending_id, ntm_proto::dns::ResolveOutcome::NotFound);
                }
                Output::Upstream {
                    payload, transport, ..
                } => assert!(payload.len() <= transport.max_query()),
            }
        }
        let (w, f) = stub.pending();
        assert!(w <= 4 && f <= 4);
    }
});
