//! Property tests: for every message type, emit → parse gives the same
//! `Repr`, and emitting the parsed `Repr` gives the same bytes.

use std::net::{Ipv4Addr, SocketAddrV4};

use ntm_proto::wire::{
    Caps, DirReq, ErrorMsg, ExtraTlvs, Fqdn, Header, KeepaliveAck, Lease, Message, Packet, RegReq,
    RegResp, RelayAck, RelayBind, RelayDir, Repr, Route, RouteAck, RouteDir, TlvRef, TunReq,
    TunResp, Vip,
};
use ntm_proto::{Authenticator, Key, Path, Role, Status, Suite};
use proptest::prelude::*;

/// Owned material a `Repr` borrows from.
#[derive(Debug, Clone)]
struct Parts {
    id: u32,
    seq: u64,
    rr: bool,
    fqdn: String,
    u: [u32; 4],
    addr: SocketAddrV4,
    vip: Vip,
    key: [u8; 32],
    key2: Option<[u8; 32]>,
    status: u8,
    path: Path,
    role: Role,
    suite: u8,
    payload: Vec<u8>,
    reason: Option<String>,
    extras: Vec<(u8, u8, Vec<u8>)>,
}

fn fqdn() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9-]{1,63}", 1..5)
        .prop_map(|labels| labels.join("."))
        .prop_filter("at most 253 bytes", |s| s.len() <= 253)
}

fn parts() -> impl Strategy<Value = Parts> {
    let a = (
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
        fqdn(),
        any::<[u32; 4]>(),
        any::<([u8; 4], u16)>(),
    );
    let b = (
        (any::<[u8; 4]>(), 0u8..=32),
        any::<[u8; 32]>(),
        prop::option::of(any::<[u8; 32]>()),
        0u8..=9,
        prop::sample::select(vec![Path::Direct, Path::Reverse, Path::Relay]),
        prop::sample::select(vec![Role::Initiator, Role::Responder]),
        any::<u8>(),
    );
    let c = (
        prop::collection::vec(any::<u8>(), 0..1500),
        prop::option::of("\\PC{0,50}".prop_filter("at most 200 bytes", |s| s.len() <= 200)),
        // Distinct unknown types below 0x80, positions sorted.
        prop::collection::btree_map(
            0x13u8..0x80,
            (0u8..14, prop::collection::vec(any::<u8>(), 0..20)),
            0..=4,
        ),
    );
    (a, b, c).prop_map(
        |(
            (id, seq, rr, fqdn, u, (ip, port)),
            (vip, key, key2, status, path, role, suite),
            (payload, reason, extras),
        )| {
            let mut extras: Vec<(u8, u8, Vec<u8>)> =
                extras.into_iter().map(|(t, (p, v))| (p, t, v)).collect();
            extras.sort_by_key(|e| e.0);
            Parts {
                id,
                seq,
                rr,
                fqdn,
                u,
                addr: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                vip: Vip {
                    addr: Ipv4Addr::from(vip.0),
                    prefix_len: vip.1,
                },
                key,
                key2,
                status,
                path,
                role,
                suite,
                payload,
                reason,
                extras,
            }
        },
    )
}

fn nonzero(x: u32) -> u32 {
    x.max(1)
}

fn build(kind: u8, p: &Parts) -> Repr<'_> {
    let fqdn = Fqdn::new(&p.fqdn).unwrap();
    let status = Status::from(p.status);
    let not_ok = if status == Status::Ok {
        Status::Denied
    } else {
        status
    };
    let message = match kind {
        0x01 => Message::Data {
            payload: &p.payload,
        },
        0x02 => Message::TunKeepalive,
        0x10 => Message::RegReq(RegReq {
            req_id: p.u[1],
            fqdn,
            local_addr: p.addr,
            caps: Caps(p.u[0]),
        }),
        0x11 => Message::RegResp(RegResp {
            req_id: p.u[3],
            result: if p.rr {
                Ok(Lease {
                    node_id: p.u[0],
                    vip: p.vip,
                    observed: p.addr,
                    keepalive_secs: p.u[1],
                    lifetime_secs: p.u[2],
                })
            } else {
                Err(not_ok)
            },
        }),
        0x12 => Message::Keepalive,
        0x13 => Message::KeepaliveAck(KeepaliveAck { observed: p.addr }),
        0x14 => Message::Dereg,
        0x20 => Message::DirReq(DirReq {
            req_id: p.u[0],
            fqdn,
        }),
        0x21 => Message::RouteDir(RouteDir {
            req_id: p.u[0],
            result: if p.rr {
                Ok(Route {
                    tunnel_id: nonzero(p.u[1]),
                    peer_fqdn: fqdn,
                    peer_vip: p.vip,
                    endpoint: p.addr,
                    path: p.path,
                    role: p.role,
                    suite: Suite::from(p.suite),
                    wrapped_key: p.key,
                    wrapped_relay_key: if p.path == Path::Relay {
                        Some(p.key2.unwrap_or([9; 32]))
                    } else {
                        p.key2
                    },
                    lifetime_secs: p.u[2],
                })
            } else {
                Err(not_ok)
            },
        }),
        0x22 => Message::RouteAck(RouteAck {
            tunnel_id: nonzero(p.u[0]),
        }),
        0x30 => Message::TunReq(TunReq { fqdn, vip: p.vip }),
        0x31 => Message::TunResp(TunResp {
            status,
            fqdn,
            vip: p.vip,
        }),
        0x40 => Message::RelayDir(RelayDir {
            tunnel_id: nonzero(p.u[0]),
            wrapped_relay_key: p.key,
            lifetime_secs: p.u[1],
        }),
        0x41 => Message::RelayAck(RelayAck {
            tunnel_id: nonzero(p.u[0]),
        }),
        0x42 => Message::RelayBind(RelayBind { role: p.role }),
        0x7f => Message::Error(ErrorMsg {
            status,
            reason: p.reason.as_deref(),
        }),
        _ => unreachable!(),
    };
    let mut repr = Repr::new(
        Header {
            id: p.id,
            seq: p.seq,
            response_required: p.rr,
        },
        message,
    );
    if kind != 0x01 {
        let mut extra = ExtraTlvs::default();
        for (pos, t, v) in &p.extras {
            assert!(extra.push(
                *pos,
                TlvRef {
                    tlv_type: *t,
                    value: v
                }
            ));
        }
        repr.extra = extra;
    }
    repr
}

fn round_trip(kind: u8, p: &Parts) -> Result<(), TestCaseError> {
    let auth = Authenticator::new(&Key::from_bytes([0x5a; 32]));
    let repr = build(kind, p);
    let mut first = vec![0u8; repr.buffer_len()];
    let n = repr.emit_sealed(&mut first, &auth).unwrap();
    prop_assert_eq!(n, first.len());
    prop_assert!(auth.verify(&first).is_ok());

    let packet = Packet::new_checked(&first[..]).unwrap();
    let parsed = Repr::parse(&packet).unwrap();
    prop_assert_eq!(parsed.header, repr.header);
    prop_assert_eq!(parsed.message, repr.message);
    let want: Vec<_> = repr.extra.iter().map(|(_, t)| t).collect();
    let got: Vec<_> = parsed.extra.iter().map(|(_, t)| t).collect();
    prop_assert_eq!(got, want);

    let mut second = vec![0u8; parsed.buffer_len()];
    parsed.emit_sealed(&mut second, &auth).unwrap();
    prop_assert_eq!(second, first);
    Ok(())
}

macro_rules! round_trip_tests {
    ($($name:ident = $kind:expr;)+) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            $(
                #[test]
                fn $name(p in parts()) {
                    round_trip($kind, &p)?;
                }
            )+
        }
    };
}

round_trip_tests! {
    round_trip_data = 0x01;
    round_trip_tun_keepalive = 0x02;
    round_trip_reg_req = 0x10;
    round_trip_reg_resp = 0x11;
    round_trip_keepalive = 0x12;
    round_trip_keepalive_ack = 0x13;
    round_trip_dereg = 0x14;
    round_trip_dir_req = 0x20;
    round_trip_route_dir = 0x21;
    round_trip_route_ack = 0x22;
    round_trip_tun_req = 0x30;
    round_trip_tun_resp = 0x31;
    round_trip_relay_dir = 0x40;
    round_trip_relay_ack = 0x41;
    round_trip_relay_bind = 0x42;
    round_trip_error = 0x7f;
}

proptest! {
    /// Arbitrary bytes never panic the parser, and whatever parses re-parses
    /// to the same meaning after emitting.
    #[test]
    fn arbitrary_bytes_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(packet) = Packet::new_checked(&bytes[..]) {
            if let Ok(repr) = Repr::parse(&packet) {
                let mut out = vec![0u8; repr.buffer_len()];
                repr.emit(&mut Packet::new_unchecked(&mut out[..]));
                let again = Repr::parse(&Packet::new_checked(&out[..]).unwrap()).unwrap();
                prop_assert_eq!(again.message, repr.message);
                prop_assert_eq!(again.header, repr.header);
            }
        }
    }
}
