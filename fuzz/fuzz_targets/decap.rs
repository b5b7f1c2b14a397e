//! The DATA fast path: `decap` against a known tunnel, in both suites.
//! Arbitrary input must be rejected cleanly; the fuzzer cannot forge tags,
//! so it also feeds correctly sealed datagrams built from the input (sealed
//! with the peer's send direction key) to reach the replay, inner-shape and
//! inner-address checks.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use ntm_proto::data::{check_inner, decap, encap_in_place, Decapped, RxTunnel};
use ntm_proto::{Cipher, DirectionKeys, Error, Key, Role, Suite};

const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let suite = if sel & 1 == 0 {
        Suite::Aes256Gcm
    } else {
        Suite::HmacSha256_128
    };
    // The peer is the initiator (sends with K_i2r); we are the responder.
    let keys = DirectionKeys::derive(&Key::from_bytes([0x20; 32]));
    let (peer_tx, _) = keys.for_role(Role::Initiator).unwrap();
    let (our_tx, our_rx) = keys.for_role(Role::Responder).unwrap();
    let peer = Cipher::new(suite, peer_tx).unwrap();
    let ours = Cipher::new(suite, our_tx).unwrap();
    let mut rx = RxTunnel::new(Cipher::new(suite, our_rx).unwrap(), PEER, ME);

    // Raw bytes: never accepted (no forgery), never move the window.
    let mut raw = data.to_vec();
    assert!(decap(&mut raw, |id| (id == 257).then_some(&mut rx)).is_err());
    assert_eq!(rx.replay.last(), 0);

    // Seal the input as the inner packet of tunnel 257 with a seq from its first bytes.
    if data.len() >= 8 && data.len() < 2000 {
        let seq = u64::from_be_bytes(data[..8].try_into().unwrap());
        let inner = &data[8..];
        let mut buf = vec![0u8; inner.len() + 32];
        buf[16..16 + inner.len()].copy_from_slice(inner);
        let n = encap_in_place(&mut buf, 0, inner.len(), 257, seq, &peer).unwrap();
        let sealed = buf[..n].to_vec();

        // Our own datagram reflected back never opens (§3).
        let mut mine = vec![0u8; inner.len() + 32];
        mine[16..16 + inner.len()].copy_from_slice(inner);
        let m = encap_in_place(&mut mine, 0, inner.len(), 257, seq, &ours).unwrap();
        let before = rx.replay.clone();
        assert_eq!(decap(&mut mine[..m], |_| Some(&mut rx)), Err(Error::BadTag));
        assert_eq!(rx.replay, before);

        let mut d = sealed.clone();
        let first = decap(&mut d, |_| Some(&mut rx));
        match first {
            Ok(Decapped::Data {
                tunnel_id,
                seq: s,
                inner: got,
            }) => {
                assert_eq!((tunnel_id, s), (257, seq));
                assert_eq!(got, inner);
                assert!(check_inner(got, PEER, ME).is_ok());
            }
            Ok(Decapped::Keepalive { .. }) => panic!("DATA came out as a keep-alive"),
            Err(e) => {
                // Authentic, so only the window or the inner packet can refuse it.
                assert!(
                    matches!(e, Error::Replay | Error::BadInner | Error::InnerAddr),
                    "{e:?}"
                );
                // u64::MAX is reserved: the window never reaches it.
                assert_eq!(e == Error::Replay, seq == u64::MAX, "{e:?} at seq {seq}");
            }
        }
        if seq != u64::MAX {
            // Authentic: the window took it, whatever the inner packet.
            assert_eq!(rx.replay.last(), seq);
            // The same datagram again is a replay.
            let mut again = sealed.clone();
            assert_eq!(decap(&mut again, |_| Some(&mut rx)), Err(Error::Replay));
        }
    }
});
