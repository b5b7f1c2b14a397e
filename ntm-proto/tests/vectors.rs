//! Conformance vectors (§7): the project's copy of `shared/vectors/ntm1.json`
//! in `tests/data/ntm1.json`.

use std::net::Ipv4Addr;

use ntm_proto::data::{decap, Decapped, RxTunnel};
use ntm_proto::wire::{Message, Packet, Repr};
use ntm_proto::{Authenticator, Error, Key, WrapLabel};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ntm1.json");
    let text = std::fs::read_to_string(path)
        .expect("tests/data/ntm1.json is the project's copy of the vectors");
    serde_json::from_str(&text).expect("vectors file is JSON")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn key(v: &Value) -> Key {
    v["key_hex"].as_str().unwrap().parse().unwrap()
}

/// The receive pipeline for signaling: header, tag, then parse.
fn receive<'a>(datagram: &'a [u8], auth: &Authenticator) -> Result<Repr<'a>, Error> {
    let packet = Packet::new_checked(datagram)?;
    packet.check_header()?;
    auth.verify(datagram)?;
    Repr::parse(&Packet::new_unchecked(datagram))
}

/// "bytes 0x20..0x3f" in a note names the expected unwrapped key.
fn expected_key_from_note(note: &str) -> Option<Key> {
    let at = note.find("bytes 0x")?;
    let rest = &note[at + "bytes 0x".len()..];
    let start = u8::from_str_radix(&rest[..2], 16).ok()?;
    let end = u8::from_str_radix(rest.get(4..)?.strip_prefix("0x")?.get(..2)?, 16).ok()?;
    assert_eq!(
        usize::from(end - start) + 1,
        32,
        "note names a 32-byte range"
    );
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = start + i as u8;
    }
    Some(Key::from_bytes(k))
}

#[test]
fn valid_vectors_parse_verify_and_reencode() {
    let v = vectors();
    let valid = v["valid"].as_array().unwrap();
    assert_eq!(valid.len(), 11, "vector count changed: review this test");
    let mut unwrapped = 0;
    for case in valid {
        let name = case["name"].as_str().unwrap();
        let datagram = hex(case["datagram_hex"].as_str().unwrap());
        let auth = Authenticator::new(&key(case));
        let repr = receive(&datagram, &auth).unwrap_or_else(|e| panic!("{name}: {e:?}"));

        // Re-encode byte for byte, tag included.
        let mut out = vec![0u8; repr.buffer_len()];
        let n = repr.emit_sealed(&mut out, &auth).unwrap();
        assert_eq!(out[..n], datagram[..], "{name}: re-encoding differs");

        // Keys named in the note unwrap.
        let note = case["note"].as_str().unwrap_or("");
        if let Some(expected) = expected_key_from_note(note) {
            let got = match repr.message {
                Message::RouteDir(d) => {
                    let r = d.result.expect("route_dir with a key is OK");
                    auth.unwrap_key(
                        WrapLabel::TunnelKey,
                        r.tunnel_id,
                        repr.header.seq,
                        &r.wrapped_key,
                    )
                }
                Message::RelayDir(r) => auth.unwrap_key(
                    WrapLabel::RelayKey,
                    r.tunnel_id,
                    repr.header.seq,
                    &r.wrapped_relay_key,
                ),
                other => panic!("{name}: note names a key but message is {other:?}"),
            };
            assert_eq!(got, expected, "{name}: unwrapped key");
            unwrapped += 1;
        }
    }
    assert_eq!(unwrapped, 2, "route_dir and relay_dir keys");
}

#[test]
fn valid_vector_contents() {
    let v = vectors();
    let find = |n: &str| {
        let c = v["valid"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap()
            .clone();
        (hex(c["datagram_hex"].as_str().unwrap()), key(&c))
    };
    let (d, _) = find("reg_resp");
    let repr = Repr::parse(&Packet::new_checked(&d[..]).unwrap()).unwrap();
    let Message::RegResp(r) = repr.message else {
        panic!()
    };
    let lease = r.result.unwrap();
    assert_eq!(lease.node_id, 7);
    assert_eq!(lease.vip.addr, Ipv4Addr::new(100, 64, 0, 2));
    assert_eq!(lease.vip.prefix_len, 10);
    assert_eq!(lease.keepalive_secs, 20);
    assert_eq!(lease.lifetime_secs, 600);

    let (d, _) = find("unknown_tlv_skipped");
    let repr = Repr::parse(&Packet::new_checked(&d[..]).unwrap()).unwrap();
    assert!(matches!(repr.message, Message::KeepaliveAck(_)));
    assert_eq!(repr.extra.len(), 1);
}

#[test]
fn data_vector_decaps() {
    let v = vectors();
    let case = &v["valid"][0];
    assert_eq!(case["name"], "data");
    let d = hex(case["datagram_hex"].as_str().unwrap());
    let mut rx = RxTunnel::new(
        Authenticator::new(&key(case)),
        Ipv4Addr::new(100, 64, 0, 2),
        Ipv4Addr::new(100, 64, 0, 3),
    );
    let got = decap(&d, |id| (id == 257).then_some(&mut rx)).unwrap();
    let Decapped::Data {
        tunnel_id,
        seq,
        inner,
    } = got
    else {
        panic!("{got:?}")
    };
    assert_eq!((tunnel_id, seq), (257, 1));
    assert!(inner.ends_with(b"hello ntmobile"));
    assert_eq!(decap(&d, |_| Some(&mut rx)), Err(Error::Replay));
}

#[test]
fn invalid_vectors_rejected_for_stated_reason() {
    let expected = |name: &str| match name {
        "tag_flipped" => Error::BadTag,
        "truncated" => Error::Truncated,
        "version_2" => Error::BadVersion,
        "unknown_critical_tlv" => Error::UnknownCriticalTlv,
        "tlv_overrun" => Error::TlvOverrun,
        "duplicate_tlv" => Error::DuplicateTlv,
        "bad_fqdn" => Error::BadFqdn,
        other => panic!("new invalid vector {other:?}: add its reason here"),
    };
    let v = vectors();
    let invalid = v["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 7, "vector count changed: review this test");
    for case in invalid {
        let name = case["name"].as_str().unwrap();
        let d = hex(case["datagram_hex"].as_str().unwrap());
        let auth = Authenticator::new(&key(case));
        let want = expected(name);
        assert_eq!(
            receive(&d, &auth).map(|_| ()),
            Err(want),
            "{name} ({})",
            case["why"]
        );

        // DATA-typed ones fail the fast path for the same reason.
        if d.len() > 1 && d[1] == 0x01 {
            let mut rx = RxTunnel::new(
                auth.clone(),
                Ipv4Addr::new(100, 64, 0, 2),
                Ipv4Addr::new(100, 64, 0, 3),
            );
            assert_eq!(
                decap(&d, |_| Some(&mut rx)).map(|_| ()),
                Err(want),
                "{name} via decap"
            );
        }
    }
}
