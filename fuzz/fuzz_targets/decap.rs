//! The DATA fast path: `decap` against a known tunnel. Arbitrary input must
//! be rejected cleanly; the fuzzer cannot forge tags, so it also feeds
//! correctly sealed datagrams built from the input to reach the replay and
//! inner-address checks.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use ntm_proto::data::{decap, encap_in_place, RxTunnel};
use ntm_proto::{Authenticator, Key};

fuzz_target!(|data: &[u8]| {
    let auth = Authenticator::new(&Key::from_bytes([0x20; 32]));
    let mut rx = RxTunnel::new(
        auth.clone(),
        Ipv4Addr::new(100, 64, 0, 2),
        Ipv4Addr::new(100, 64, 0, 3),
    );
    let _ = decap(data, |id| (id == 257).then_some(&mut rx));

    // Seal the input as the inner packet of tunnel 257 with a seq from its first bytes.
    if data.len() >= 8 && data.len() < 2000 {
        let seq = u64::from_be_bytes(data[..8].try_into().unwrap());
        let inner = &data[8..];
        let mut buf = vec![0u8; inner.len() + 32];
        buf[16..16 + inner.len()].copy_from_slice(inner);
        let n = encap_in_place(&mut buf, 0, inner.len(), 257, seq, &auth).unwrap();
        let first = decap(&buf[..n], |_| Some(&mut rx));
        if first.is_ok() {
            // Accepted once: the same datagram again is a replay.
            assert_eq!(
                decap(&buf[..n], |_| Some(&mut rx)),
                Err(ntm_proto::Error::Replay)
            );
        }
    }
});
