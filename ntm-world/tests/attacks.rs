//! The attacks that version 1 of the protocol fell to, on the testbed, with
//! the forged datagrams sent from another namespace with a spoofed source
//! (issue 8): an attacker on the path records datagrams and plays them back.
//!
//! - the adapter's own DATA and TUN_KEEPALIVE, reflected back to it (v1: they
//!   verified, pushed the peer out of the replay window, moved the endpoint);
//! - the DC's ROUTE_DIR, REG_RESP, KEEPALIVE_ACK and ERROR, recorded and
//!   replayed after the adapter registered again (v1: the ROUTE_DIR tore the
//!   live tunnel down and brought its old key back);
//! - a RELAY_DIR replayed to the RS and a RELAY_BIND replayed from another
//!   address (v1: the binding moved to the attacker).
//!
//! Each test builds its own testbed; they need root and fail without it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ntm_testbed::{wait_until, CN_ADDR, DC_ADDR, RS_ADDR};
use ntm_world::attack::{ntm_type, rs_drops, spoof};
use ntm_world::raw::{parse_udp, RawSocket, UdpFrame, PACKET_OUTGOING};
use ntm_world::{Role, World, CN2_FQDN, CN_FQDN, PATIENCE};

fn up(tag: &str) -> World {
    World::up(tag).expect("these integration tests need root and a working testbed")
}

/// Reflection: the adapter's own DATA and TUN_KEEPALIVE sent back to its
/// observed address with cn's address as source (from the rs namespace:
/// nat1 only lets in what looks like the peer). Each is dropped as bad_tag
/// by the fast path; the tunnel's endpoint stays, and traffic goes on.
#[test]
fn reflected_data_and_keepalive_are_dropped() {
    let w = up("areflect");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    cn.registered().unwrap();
    let cap =
        w.tb.in_netns(Role::Cn, || RawSocket::open("eth0"))
            .unwrap()
            .unwrap();
    let (_, cn_vip) = w.leased_with_tunnel(&mut ntma).unwrap();
    let st = ntma.status().unwrap();
    let observed = st.gns[0].registration.observed.expect("observed address");
    let cn_ep = SocketAddrV4::new(CN_ADDR, 7700);
    assert_eq!(st.tunnel_to(CN_FQDN).unwrap().endpoint, cn_ep);

    // The adapter's DATA (the set-up pings) and, once the tunnel has been
    // idle for 20 s, its TUN_KEEPALIVE, as cn receives them.
    let from_adapter = |r: &ntm_world::raw::Received| -> Option<UdpFrame> {
        let u = parse_udp(&r.frame)?;
        (r.pkttype != PACKET_OUTGOING && u.src == *observed.ip() && u.dst_port == 7700).then_some(u)
    };
    let mut data = None;
    let mut keepalive = None;
    let found = wait_until(Duration::from_secs(45), || {
        while let Ok(Some(r)) = cap.recv(Duration::from_millis(200)) {
            if let Some(u) = from_adapter(&r) {
                match ntm_type(&u) {
                    1 if data.is_none() => data = Some(u),
                    2 if keepalive.is_none() => keepalive = Some(u),
                    _ => {}
                }
            }
        }
        data.is_some() && keepalive.is_some()
    });
    assert!(found, "cn saw the adapter's DATA and TUN_KEEPALIVE");
    let (data, keepalive) = (data.unwrap(), keepalive.unwrap());
    assert_eq!(data.payload[3], 2, "suite 2 by default");

    let before = ntma.status().unwrap();
    for u in [&data, &keepalive] {
        // Back to the adapter, as if cn sent it: src_mac of the captured
        // frame is nat1's, which the rs namespace reaches over the bridge.
        spoof(&w, Role::Rs, u.src_mac, cn_ep, observed, &u.payload);
    }
    assert_eq!(ntma.grows(&["bad_tag"], &before, 2).unwrap(), 2);
    let st = ntma.status().unwrap();
    assert_eq!(
        st.tunnel_to(CN_FQDN).unwrap().endpoint,
        cn_ep,
        "endpoint kept"
    );
    assert_eq!(st.drop_count("replay"), before.drop_count("replay"));
    // cn's own (low) sequence numbers still pass: the window did not move.
    let p = w.ping(Role::Gn, cn_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    assert!(ntma.child.is_running());
}

/// The DC's datagrams to the adapter, recorded in the dc namespace, then
/// replayed from the rs namespace with the DC's address as source after the
/// adapter registered again (the DC restarted, answered its keep-alive with
/// ERROR and registered it anew): every one is refused (proto_replay, or
/// proto_stale for a REG_RESP whose REQ_ID is not outstanding), the live
/// tunnel stays, and there is no further registration.
#[test]
fn recorded_dc_messages_replayed_after_a_new_registration_are_refused() {
    // A DC that lost its state (memory store), so that it registers the
    // adapter anew.
    let mut w = World::up_with(&ntm_testbed::unique_prefix("areplaydc"), |dc| {
        dc.store.kind = ntm_dc::config::StoreKind::Memory;
    })
    .expect("these integration tests need root and a working testbed");
    let rec =
        w.tb.in_netns(Role::Dc, || RawSocket::open("eth0"))
            .unwrap()
            .unwrap();
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    cn.registered().unwrap();
    let (gn_vip, cn_vip) = w.leased_with_tunnel(&mut ntma).unwrap();
    let st = ntma.status().unwrap();
    let observed = st.gns[0].registration.observed.expect("observed address");
    let tunnel_id = st.tunnel_to(CN_FQDN).unwrap().id;
    // A KEEPALIVE_ACK (the world's DC asks for keep-alives every 5 s).
    let registrations = st.stat("registrations");
    let mut recorded: Vec<UdpFrame> = Vec::new();
    let drain = |recorded: &mut Vec<UdpFrame>| {
        while let Ok(Some(r)) = rec.recv(Duration::from_millis(100)) {
            if let Some(u) = parse_udp(&r.frame) {
                if r.pkttype == PACKET_OUTGOING
                    && u.src == DC_ADDR
                    && u.dst == *observed.ip()
                    && u.dst_port == observed.port()
                {
                    recorded.push(u);
                }
            }
        }
    };
    assert!(wait_until(PATIENCE, || {
        drain(&mut recorded);
        recorded.iter().any(|u| ntm_type(u) == 0x13)
    }));

    // The DC restarts: it knows no node, answers the next KEEPALIVE with
    // ERROR, and the adapter registers again.
    w.stop_dc().unwrap();
    w.start_dc().unwrap();
    ntma.wait("registered again", |s| {
        s.stat("registrations") > registrations && s.gns[0].registration.vip.is_some()
    })
    .unwrap();
    assert!(wait_until(PATIENCE, || {
        drain(&mut recorded);
        recorded.iter().filter(|u| ntm_type(u) == 0x11).count() >= 2
    }));
    // The tunnel's set-up ROUTE_DIR and the restart's ERROR are in it too.
    for (kind, name) in [
        (0x21, "ROUTE_DIR"),
        (0x11, "REG_RESP"),
        (0x13, "KEEPALIVE_ACK"),
        (0x7f, "ERROR"),
    ] {
        assert!(
            recorded.iter().any(|u| ntm_type(u) == kind),
            "recorded no {name}"
        );
    }

    // Replayed from the rs namespace, with the DC's address: nat1 lets them in.
    let wanted = [0x21, 0x11, 0x13, 0x7f];
    let replays: Vec<&UdpFrame> = recorded
        .iter()
        .filter(|u| wanted.contains(&ntm_type(u)))
        .collect();
    let before = ntma.status().unwrap();
    let dc = SocketAddrV4::new(DC_ADDR, 7710);
    for u in &replays {
        // dst_mac of a frame the DC sent is nat1's.
        spoof(&w, Role::Rs, u.dst_mac, dc, observed, &u.payload);
    }
    // At least these (a REG_RESP that the DC sent twice may add one more).
    let n = replays.len() as u64;
    assert!(
        ntma.grows(&["proto_replay", "proto_stale"], &before, n)
            .unwrap()
            >= n,
        "every replayed DC datagram is refused"
    );
    let st = ntma.status().unwrap();
    assert_eq!(
        st.stat("registrations"),
        before.stat("registrations"),
        "no new registration"
    );
    let t = st.tunnel_to(CN_FQDN).expect("the live tunnel stays");
    assert_eq!((t.id, t.up), (tunnel_id, true));
    let p = w.ping(Role::Gn, cn_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    let p = w.ping(Role::Cn, gn_vip, 1).unwrap();
    assert_eq!(p.received, 1, "{}", p.output);
}

/// A relayed tunnel (the adapter behind nat1, cn2 behind nat2): the DC's
/// RELAY_DIR, replayed to the RS from the cn namespace with the DC's
/// address, and the adapter's RELAY_BIND, replayed from cn's own address,
/// are both refused as replays; the binding does not move and the relayed
/// pings go on.
#[test]
fn replayed_relay_dir_and_relay_bind_are_refused() {
    let w = up("areplayrs");
    let rs_rec =
        w.tb.in_netns(Role::Rs, || RawSocket::open("eth0"))
            .unwrap()
            .unwrap();
    let mut cn2 = w.node(Role::Cn2, CN2_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let cn2_vip = cn2.registered().unwrap();
    let gn_vip = ntma.registered().unwrap();
    assert_eq!(w.dhclient().unwrap(), gn_vip);
    let d = w.dig(Role::Gn, "100.64.0.1", CN2_FQDN).unwrap();
    assert_eq!(d.a, vec![cn2_vip], "{d:?}");
    ntma.wait("relayed tunnel up", |s| {
        s.tunnel_to(CN2_FQDN)
            .is_some_and(|t| t.up && t.path == "relay")
    })
    .unwrap();
    let p = w.ping(Role::Gn, cn2_vip, 2).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    let observed = ntma.status().unwrap().gns[0].registration.observed.unwrap();

    let rs = SocketAddrV4::new(RS_ADDR, 7720);
    let mut relay_dir = None;
    let mut bind = None;
    while let Ok(Some(r)) = rs_rec.recv(Duration::from_millis(200)) {
        let Some(u) = parse_udp(&r.frame) else {
            continue;
        };
        if r.pkttype == PACKET_OUTGOING || u.dst != *rs.ip() || u.dst_port != rs.port() {
            continue;
        }
        match ntm_type(&u) {
            0x40 if u.src == DC_ADDR => relay_dir = Some(u),
            0x42 if u.src == *observed.ip() => bind = Some(u),
            _ => {}
        }
    }
    let relay_dir = relay_dir.expect("the RS received the RELAY_DIR");
    let bind = bind.expect("the RS received the adapter's RELAY_BIND");
    let replays_before = rs_drops(&w, "replay").unwrap();

    // RELAY_DIR as if from the DC, from the cn namespace (same bridge).
    spoof(
        &w,
        Role::Cn,
        relay_dir.dst_mac,
        SocketAddrV4::new(DC_ADDR, 7710),
        rs,
        &relay_dir.payload,
    );
    // RELAY_BIND from cn's own address: v1 moved the adapter's end there.
    spoof(
        &w,
        Role::Cn,
        bind.dst_mac,
        SocketAddrV4::new(CN_ADDR, 7700),
        rs,
        &bind.payload,
    );
    assert!(
        wait_until(PATIENCE, || rs_drops(&w, "replay")
            .is_some_and(|n| n >= replays_before + 2)),
        "the RS counts both replays: {}",
        w.rs.log()
    );
    // The binding stayed: the relayed pings go on both ways.
    let p = w.ping(Role::Gn, cn2_vip, 3).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    let p = w.ping(Role::Cn2, gn_vip, 2).unwrap();
    assert_eq!(p.received, p.sent, "{}", p.output);
    let _: Ipv4Addr = cn2_vip;
}
