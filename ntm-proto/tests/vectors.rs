//! Conformance vectors (§7): the project's copy of `shared/vectors/ntm2.json`
//! in `tests/data/ntm2.json`.

use std::net::Ipv4Addr;

use ntm_proto::data::{decap, Decapped, RxTunnel};
use ntm_proto::wire::{Message, Packet, Repr};
use ntm_proto::{Authenticator, Cipher, DirectionKeys, Error, Key, Role, Suite, WrapLabel};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ntm2.json");
    let text = std::fs::read_to_string(path)
        .expect("tests/data/ntm2.json is the project's copy of the vectors");
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

/// Tunnel messages (DATA, TUN_KEEPALIVE, TUN_REQ, TUN_RESP) are protected
/// with a direction key in the tunnel's suite; everything else is signaling,
/// always suite 1.
fn is_tunnel_type(t: u8) -> bool {
    matches!(t, 0x01 | 0x02 | 0x30 | 0x31)
}

/// The receive pipeline: header, then the tag (suite 2: decryption in
/// place) with the key the message type calls for, then parse.
fn receive<'a>(datagram: &'a mut [u8], key: &Key) -> Result<Repr<'a>, Error> {
    let packet = Packet::new_checked(&*datagram)?;
    let msg_type = packet.check_header()?;
    let suite = packet.suite();
    if is_tunnel_type(u8::from(msg_type)) {
        Cipher::new(suite, key)?.open(datagram)?;
    } else {
        if suite != Suite::HmacSha256_128 {
            return Err(Error::UnsupportedSuite);
        }
        Authenticator::new(key).verify(datagram)?;
    }
    let datagram: &'a [u8] = datagram;
    Repr::parse(&Packet::new_unchecked(datagram))
}

/// Emit and seal `repr` the way a sender of that message type does.
fn reencode(repr: &Repr<'_>, suite: Suite, key: &Key) -> Vec<u8> {
    let mut out = vec![0u8; repr.buffer_len()];
    let n = if is_tunnel_type(u8::from(repr.message.msg_type())) {
        repr.emit_sealed_with(&mut out, &Cipher::new(suite, key).unwrap())
    } else {
        repr.emit_sealed(&mut out, &Authenticator::new(key))
    }
    .unwrap();
    out.truncate(n);
    out
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
fn direction_keys_derive() {
    let v = vectors();
    let d = &v["derived"];
    let k_tun: Key = d["k_tun_hex"].as_str().unwrap().parse().unwrap();
    let keys = DirectionKeys::derive(&k_tun);
    assert_eq!(keys.i2r, d["k_i2r_hex"].as_str().unwrap().parse().unwrap());
    assert_eq!(keys.r2i, d["k_r2i_hex"].as_str().unwrap().parse().unwrap());
    // The vectors that name a direction key use the derived one.
    for case in v["valid"].as_array().unwrap() {
        let want = match case["key"].as_str().unwrap() {
            "K_i2r" => &keys.i2r,
            "K_r2i" => &keys.r2i,
            _ => continue,
        };
        assert_eq!(&key(case), want, "{}", case["name"]);
    }
}

#[test]
fn valid_vectors_parse_verify_and_reencode() {
    let v = vectors();
    let valid = v["valid"].as_array().unwrap();
    assert_eq!(valid.len(), 13, "vector count changed: review this test");
    let mut unwrapped = 0;
    let mut decrypted = 0;
    for case in valid {
        let name = case["name"].as_str().unwrap();
        let datagram = hex(case["datagram_hex"].as_str().unwrap());
        let k = key(case);
        let suite = Suite::from(datagram[3]);
        let mut buf = datagram.clone();
        let repr = receive(&mut buf, &k).unwrap_or_else(|e| panic!("{name}: {e:?}"));

        // Re-encode byte for byte, tag (and ciphertext) included.
        assert_eq!(
            reencode(&repr, suite, &k),
            datagram,
            "{name}: re-encoding differs"
        );

        // Keys named in the note unwrap.
        let auth = Authenticator::new(&k);
        let note = case["note"].as_str().unwrap_or("");
        if let Some(expected) = expected_key_from_note(note) {
            let got = match repr.message {
                Message::RouteDir(d) => {
                    let r = d.result.expect("route_dir with a key is OK");
                    assert_eq!(r.suite, Suite::Aes256Gcm, "{name}: suite 2 tunnel");
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
        if suite == Suite::Aes256Gcm && datagram.len() > 32 {
            assert_ne!(buf, datagram, "{name}: suite 2 body decrypted in place");
            decrypted += 1;
        }
    }
    assert_eq!(unwrapped, 2, "route_dir and relay_dir keys");
    assert_eq!(decrypted, 4, "the suite-2 vectors with a body");
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
    let (d, _) = find("reg_req");
    let repr = Repr::parse(&Packet::new_checked(&d[..]).unwrap()).unwrap();
    let Message::RegReq(r) = repr.message else {
        panic!()
    };
    assert_eq!(r.req_id, 0x0bad_cafe);
    assert_eq!(r.fqdn.as_str(), "gn1.ntm.test");

    let (d, _) = find("reg_resp");
    let repr = Repr::parse(&Packet::new_checked(&d[..]).unwrap()).unwrap();
    let Message::RegResp(r) = repr.message else {
        panic!()
    };
    assert_eq!(r.req_id, 0x0bad_cafe, "REG_RESP echoes the REQ_ID");
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

fn data_case(v: &Value, name: &str) -> (Vec<u8>, Key) {
    let c = v["valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap();
    (hex(c["datagram_hex"].as_str().unwrap()), key(c))
}

#[test]
fn data_vectors_decap_with_their_direction_key_only() {
    let v = vectors();
    let initiator = Ipv4Addr::new(100, 64, 0, 2);
    let responder = Ipv4Addr::new(100, 64, 0, 3);
    for (name, suite, from_initiator) in [
        ("data_gcm_i2r", Suite::Aes256Gcm, true),
        ("data_gcm_r2i", Suite::Aes256Gcm, false),
        ("data_hmac_i2r", Suite::HmacSha256_128, true),
    ] {
        let (d, k) = data_case(&v, name);
        // The inner packet goes from the sender's VIP to the receiver's.
        let (src, dst) = if from_initiator {
            (initiator, responder)
        } else {
            (responder, initiator)
        };
        let mut rx = RxTunnel::new(Cipher::new(suite, &k).unwrap(), src, dst);
        let mut buf = d.clone();
        let got = decap(&mut buf, |id| (id == 257).then_some(&mut rx)).unwrap();
        let Decapped::Data {
            tunnel_id, inner, ..
        } = got
        else {
            panic!("{name}: {got:?}")
        };
        assert_eq!(tunnel_id, 257, "{name}");
        let payload: &[u8] = if from_initiator {
            b"hello ntmobile"
        } else {
            b"hello back"
        };
        assert!(inner.ends_with(payload), "{name}");
        assert_eq!(
            decap(&mut d.clone(), |_| Some(&mut rx)),
            Err(Error::Replay),
            "{name}"
        );

        // The end that sent it receives with the other direction key: its
        // own datagram, reflected, never verifies (§3).
        let keys =
            DirectionKeys::derive(&Key::from_bytes(core::array::from_fn(|i| 0x20 + i as u8)));
        let sender = if from_initiator {
            Role::Initiator
        } else {
            Role::Responder
        };
        let (tx, own_rx) = keys.for_role(sender).unwrap();
        assert_eq!(tx, &k, "{name}: sent with the sender's direction key");
        let mut own = RxTunnel::new(Cipher::new(suite, own_rx).unwrap(), dst, src);
        assert_eq!(
            decap(&mut d.clone(), |_| Some(&mut own)),
            Err(Error::BadTag),
            "{name} reflected"
        );
        assert_eq!(own.replay.last(), 0, "{name}: reflection moved the window");
    }
}

#[test]
fn invalid_vectors_rejected_for_stated_reason() {
    let expected = |name: &str| match name {
        "gcm_tag_flipped"
        | "gcm_ciphertext_flipped"
        | "gcm_header_flipped"
        | "reflected"
        | "hmac_tag_flipped" => Error::BadTag,
        "truncated" => Error::Truncated,
        "version_1" => Error::BadVersion,
        "unknown_suite" => Error::UnsupportedSuite,
        "unknown_critical_tlv" => Error::UnknownCriticalTlv,
        "tlv_overrun" => Error::TlvOverrun,
        "duplicate_tlv" => Error::DuplicateTlv,
        "bad_fqdn" => Error::BadFqdn,
        other => panic!("new invalid vector {other:?}: add its reason here"),
    };
    let v = vectors();
    let invalid = v["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 12, "vector count changed: review this test");
    for case in invalid {
        let name = case["name"].as_str().unwrap();
        let d = hex(case["datagram_hex"].as_str().unwrap());
        let k = key(case);
        let want = expected(name);
        assert_eq!(
            receive(&mut d.clone(), &k).map(|_| ()),
            Err(want),
            "{name} ({})",
            case["why"]
        );

        // DATA-typed ones fail the fast path for the same reason, with the
        // tunnel's suite named by the datagram (suite 2 where it names none).
        if d.len() > 3 && d[1] == 0x01 {
            let suite = match Suite::from(d[3]) {
                Suite::Unknown(_) => Suite::Aes256Gcm,
                s => s,
            };
            let mut rx = RxTunnel::new(
                Cipher::new(suite, &k).unwrap(),
                Ipv4Addr::new(100, 64, 0, 2),
                Ipv4Addr::new(100, 64, 0, 3),
            );
            assert_eq!(
                decap(&mut d.clone(), |_| Some(&mut rx)).map(|_| ()),
                Err(want),
                "{name} via decap"
            );
        }
    }
}

/// Every vector, valid and invalid, opened in one batch ([`Cipher::open_many`])
/// with a key of the suite its header names (suite 1 where it names none): the
/// same result and bytes as [`Cipher::open`] one by one; then the opened valid
/// ones sealed again in one batch ([`Cipher::seal_many`]) give the vectors back
/// byte for byte, tags (and suite-2 ciphertext) included.
#[test]
fn batches_open_and_seal_vectors_as_one_by_one() {
    let v = vectors();
    let cases: Vec<(bool, Vec<u8>, Cipher)> = ["valid", "invalid"]
        .iter()
        .flat_map(|kind| v[kind].as_array().unwrap().iter().map(move |c| (*kind, c)))
        .map(|(kind, c)| {
            let d = hex(c["datagram_hex"].as_str().unwrap());
            let suite = match d.get(3).map(|s| Suite::from(*s)) {
                Some(Suite::Aes256Gcm) => Suite::Aes256Gcm,
                _ => Suite::HmacSha256_128,
            };
            (kind == "valid", d, Cipher::new(suite, &key(c)).unwrap())
        })
        .collect();
    let mut one: Vec<Vec<u8>> = cases.iter().map(|(_, d, _)| d.clone()).collect();
    let want: Vec<Result<(), Error>> = one
        .iter_mut()
        .zip(&cases)
        .map(|(d, (_, _, c))| c.open(d))
        .collect();
    assert!(want.contains(&Err(Error::BadTag)) && want.contains(&Ok(())));

    let mut many: Vec<Vec<u8>> = cases.iter().map(|(_, d, _)| d.clone()).collect();
    let mut items: Vec<(&Cipher, &mut [u8])> = many
        .iter_mut()
        .zip(&cases)
        .map(|(d, (_, _, c))| (c, &mut d[..]))
        .collect();
    let mut got = vec![Ok(()); items.len()];
    Cipher::open_many(&mut items, &mut got);
    assert_eq!(got, want);
    for ((g, w), r) in many.iter().zip(&one).zip(&want) {
        if r.is_ok() {
            assert_eq!(g, w);
        }
    }
    for ((valid, _, _), r) in cases.iter().zip(&want) {
        // (Invalid ones refused later, by version or TLV, have a good tag.)
        assert!(!valid || r.is_ok(), "every valid vector opens");
    }

    let mut resealed: Vec<Vec<u8>> = Vec::new();
    let mut ciphers = Vec::new();
    for ((valid, _, c), d) in cases.iter().zip(&many) {
        if *valid {
            let mut p = d.clone();
            let n = p.len();
            p[n - 16..].fill(0);
            resealed.push(p);
            ciphers.push(c);
        }
    }
    let mut items: Vec<(&Cipher, &mut [u8])> = resealed
        .iter_mut()
        .zip(&ciphers)
        .map(|(d, c)| (*c, &mut d[..]))
        .collect();
    let mut out = vec![Err(Error::BadTag); items.len()];
    Cipher::seal_many(&mut items, &mut out);
    assert!(out.iter().all(|r| r.is_ok()));
    let originals: Vec<&Vec<u8>> = cases.iter().filter(|c| c.0).map(|c| &c.1).collect();
    assert_eq!(resealed.iter().collect::<Vec<_>>(), originals);
}
