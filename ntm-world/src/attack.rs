//! What the attack and restart tests share: recording NTM datagrams on a
//! namespace's `eth0` and playing them back with a spoofed source, and the
//! RS's drop counters (it has no status socket: its SIGUSR1 stats line).

use std::net::SocketAddrV4;
use std::time::Duration;

use ntm_testbed::{wait_for, Role, Signal};

use crate::raw::{ipv4_frame, parse_udp, udp, Ipv4, RawSocket, UdpFrame, PACKET_OUTGOING};
use crate::{World, PATIENCE};

/// Sends `payload` as a UDP datagram from `src` to `dst` out of `role`'s
/// `eth0`, to the Ethernet address `dst_mac`: a spoofed source, from
/// whichever namespace the attacker sits in.
pub fn spoof(
    w: &World,
    role: Role,
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) {
    let sock =
        w.tb.in_netns(role, || RawSocket::open("eth0"))
            .expect("enter the namespace")
            .expect("open a raw socket on eth0");
    let frame = ipv4_frame(
        dst_mac,
        sock.mac(),
        Ipv4::new(*src.ip(), *dst.ip(), 17),
        &udp(src.port(), dst.port(), payload),
    );
    sock.send(&frame).expect("send the spoofed frame");
}

/// The NTM message type of a UDP payload (0 when it is too short).
pub fn ntm_type(u: &UdpFrame) -> u8 {
    if u.payload.len() >= 32 && u.payload[0] == 2 {
        u.payload[1]
    } else {
        0
    }
}

/// A recorder on `role`'s `eth0`: it keeps every frame from when it is
/// opened, so open it before what it should see.
pub fn recorder(w: &World, role: Role) -> RawSocket {
    w.tb.in_netns(role, || RawSocket::open("eth0"))
        .expect("enter the namespace")
        .expect("open a raw socket on eth0")
}

/// Every UDP datagram `rec` received (not sent) so far to `dst`, in order.
pub fn received_to(rec: &RawSocket, dst: SocketAddrV4) -> Vec<UdpFrame> {
    let mut out = Vec::new();
    while let Ok(Some(r)) = rec.recv(Duration::from_millis(200)) {
        let Some(u) = parse_udp(&r.frame) else {
            continue;
        };
        if r.pkttype != PACKET_OUTGOING && u.dst == *dst.ip() && u.dst_port == dst.port() {
            out.push(u);
        }
    }
    out
}

/// One drop counter of the RS, from the stats line SIGUSR1 makes it log.
pub fn rs_drops(w: &World, reason: &str) -> Option<u64> {
    w.rs.signal(Signal::SIGUSR1).ok()?;
    let key = format!("{reason}=");
    wait_for(PATIENCE, || {
        let log = w.rs.log();
        let line = log.lines().rev().find(|l| l.contains("stats:"))?;
        let at = line.find(&key);
        Some(at.map_or(0, |at| {
            line[at + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0)
        }))
    })
}
