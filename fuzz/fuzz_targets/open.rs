//! The suite-2 (AES-256-GCM) open path: `Cipher::open` and `data::decap`.
//!
//! Structure-aware: the fuzzer picks the header fields and the body, the
//! datagram is sealed with a known key by `Cipher::seal` (so the fuzzer
//! starts from authentic datagrams it could never forge), then mutated by
//! fuzzer-controlled bit flips, byte sets, truncation and extension. An
//! untouched datagram must open to its plaintext; a changed one must never
//! open, never be accepted by `decap` and never move the replay window.
//! Raw bytes are fed to both as well.
#![no_main]

use std::net::Ipv4Addr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ntm_proto::data::{decap, Decapped, RxTunnel};
use ntm_proto::wire::{HEADER_LEN, TAG_LEN};
use ntm_proto::{Cipher, Error, Key, Suite};

const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
const KEY: [u8; 32] = [0x5a; 32];

#[derive(Debug, Arbitrary)]
enum Mutation {
    /// Flip one bit (position taken modulo the length).
    FlipBit { at: u16, bit: u8 },
    /// Set one byte.
    SetByte { at: u16, value: u8 },
    /// Cut the datagram to this length (modulo the length).
    Truncate(u16),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Swap two bytes.
    Swap(u16, u16),
}

#[derive(Debug, Arbitrary)]
struct Sealed {
    version: u8,
    msg_type: u8,
    flags: u8,
    id: u32,
    seq: u64,
    body: Vec<u8>,
    /// Also make the body a plausible inner IPv4 packet (PEER → ME).
    as_ipv4: bool,
    mutations: Vec<Mutation>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(Vec<u8>),
    Sealed(Sealed),
}

fn gcm() -> Cipher {
    Cipher::new(Suite::Aes256Gcm, &Key::from_bytes(KEY)).unwrap()
}

fn rx() -> RxTunnel {
    RxTunnel::new(gcm(), PEER, ME)
}

/// Raw bytes: no panic, never opened (the fuzzer cannot forge a GCM tag),
/// never accepted, the window untouched.
fn raw(bytes: &[u8]) {
    let c = gcm();
    let mut d = bytes.to_vec();
    assert!(c.open(&mut d).is_err());
    let mut t = rx();
    let mut d = bytes.to_vec();
    let id = if d.len() >= 8 {
        u32::from_be_bytes([d[4], d[5], d[6], d[7]])
    } else {
        0
    };
    // The lookup finds the tunnel whatever the id, to reach the tag check.
    assert!(decap(&mut d, |i| (i == id).then_some(&mut t)).is_err());
    assert_eq!(t.replay, rx().replay);
}

fn sealed(s: Sealed) {
    if s.body.len() > 1500 {
        return;
    }
    let mut body = s.body.clone();
    if s.as_ipv4 {
        // 20-byte header: version 4, IHL 5, total length = body length.
        body.resize(body.len().max(20), 0);
        let total = body.len() as u16;
        body[0] = 0x45;
        body[2..4].copy_from_slice(&total.to_be_bytes());
        body[12..16].copy_from_slice(&PEER.octets());
        body[16..20].copy_from_slice(&ME.octets());
    }
    let mut d = vec![0u8; HEADER_LEN + body.len() + TAG_LEN];
    d[0] = s.version;
    d[1] = s.msg_type;
    d[2] = s.flags;
    d[3] = 0xee; // seal sets the suite byte
    d[4..8].copy_from_slice(&s.id.to_be_bytes());
    d[8..16].copy_from_slice(&s.seq.to_be_bytes());
    d[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(&body);
    let c = gcm();
    c.seal(&mut d).unwrap();
    assert_eq!(d[3], 2, "seal must set suite 2");
    // Encrypted: the body on the wire is not the plaintext (for a body of
    // 16 bytes or more a collision is out of reach).
    if body.len() >= 16 {
        assert_ne!(d[HEADER_LEN..HEADER_LEN + body.len()], body[..]);
    }
    let sealed = d.clone();

    // The untouched datagram opens to the plaintext, and a suite-1 key (same
    // bytes) refuses it by its suite before any tag work.
    let mut o = sealed.clone();
    c.open(&mut o).unwrap();
    assert_eq!(o[HEADER_LEN..HEADER_LEN + body.len()], body[..]);
    let hmac = Cipher::new(Suite::HmacSha256_128, &Key::from_bytes(KEY)).unwrap();
    assert_eq!(hmac.open(&mut sealed.clone()), Err(Error::UnsupportedSuite));

    // decap of the untouched datagram: accepted only as what it is.
    let mut t = rx();
    let mut o = sealed.clone();
    match decap(&mut o, |i| (i == s.id).then_some(&mut t)) {
        Ok(Decapped::Data {
            tunnel_id,
            seq,
            inner,
        }) => {
            assert_eq!((s.version, s.msg_type), (2, 1));
            assert_eq!((tunnel_id, seq), (s.id, s.seq));
            assert_eq!(inner, &body[..]);
        }
        Ok(Decapped::Keepalive { tunnel_id, seq }) => {
            assert_eq!((s.version, s.msg_type), (2, 2));
            assert_eq!((tunnel_id, seq), (s.id, s.seq));
        }
        Err(e) => assert!(
            matches!(
                e,
                Error::BadVersion
                    | Error::UnexpectedType
                    | Error::Replay
                    | Error::BadInner
                    | Error::InnerAddr
            ),
            "an authentic datagram refused as {e:?}: {s:?}"
        ),
    }

    // Mutate.
    for m in s.mutations.iter().take(16) {
        let len = d.len();
        match m {
            Mutation::FlipBit { at, bit } if len > 0 => {
                d[usize::from(*at) % len] ^= 1 << (bit % 8);
            }
            Mutation::SetByte { at, value } if len > 0 => d[usize::from(*at) % len] = *value,
            Mutation::Truncate(n) if len > 0 => d.truncate(usize::from(*n) % len),
            Mutation::Extend(more) => d.extend(more.iter().take(64)),
            Mutation::Swap(a, b) if len > 0 => d.swap(usize::from(*a) % len, usize::from(*b) % len),
            _ => {}
        }
    }
    if d == sealed {
        return;
    }
    // Any change: never opens, never accepted, the window never moves.
    let mut o = d.clone();
    let r = c.open(&mut o);
    assert!(r.is_err(), "a changed datagram opened: {s:?}");
    let mut t = rx();
    let mut o = d.clone();
    let id = if o.len() >= 8 {
        u32::from_be_bytes([o[4], o[5], o[6], o[7]])
    } else {
        0
    };
    let r = decap(&mut o, |i| (i == id).then_some(&mut t));
    assert!(r.is_err(), "decap accepted a changed datagram: {s:?}");
    assert_eq!(t.replay, rx().replay, "a changed datagram moved the window");
}

fuzz_target!(|input: Input| match input {
    Input::Raw(bytes) => raw(&bytes),
    Input::Sealed(s) => sealed(s),
});
