//! ntma's GN slow path (`gn::Gn`) on hostile GN-side input: a `Gn` with two GN entries
//! (one bound to a MAC) that both have VIPs, fed a sequence of operations: frames to
//! `handle_frame` (raw, or "repaired": IPv4 header and UDP checksums recomputed, so
//! that mutated DHCP/DNS/ARP/ICMP payloads reach their parsers), `handle_lan` then
//! `unreachable_to`/`unreachable_non_vip`, `unreachable` on raw frames, upstream DNS
//! answers (`handle_upstream`, raw or the forwarded query echoed as an answer), the
//! control side's answers to resolutions, DNS over TCP (`tcp_accept`, `tcp_data`,
//! `tcp_eof`, `tcp_closed`), VIP changes, reloads of the GN list, and time steps.
//! Every poll is drained after each step. Nothing may panic; every frame for the GN
//! fits a `MAX_FRAME_LEN` buffer.
//!
//! Input: a list of `[op][len lo][len hi][len bytes]` records (short ones are padded
//! with zeros), so that the seeds are the captured frames in
//! `ntma-user/src/gn/testdata` behind a 3-byte prefix.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ntma_user::gn::{
    Gn, GnAction, GnConfig, GnSpec, MacAddr, PendingId, ResolveOutcome, Transport, Unreachable,
    MAX_FRAME_LEN,
};
use ntma_user::wire::checksum::internet as checksum;

const NTMA_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
const GN2_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0c]);
const VIPS: [Ipv4Addr; 2] = [Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 3)];

fn specs(second_bound: bool) -> Vec<GnSpec> {
    vec![
        GnSpec {
            fqdn: "gn.ntm.test".into(),
            mac: None,
        },
        GnSpec {
            fqdn: "gn2.ntm.test".into(),
            mac: second_bound.then_some(GN2_MAC),
        },
    ]
}

fn gn() -> Gn {
    let mut cfg = GnConfig::new(NTMA_MAC);
    cfg.gns = specs(true);
    // Small bounds, so that the fuzzer reaches "full" quickly.
    cfg.dns_max_pending = 4;
    cfg.dns_tcp_max_connections = 3;
    cfg.tx_queue_max = 16;
    cfg.action_queue_max = 16;
    let mut g = Gn::new(cfg).expect("a valid configuration");
    for (i, v) in VIPS.iter().enumerate() {
        g.set_vip(i, Some(*v)).unwrap();
    }
    g
}

/// Recomputes the IPv4 header checksum and a UDP checksum (if the frame is
/// Ethernet/IPv4/UDP and long enough), leaving everything else as the fuzzer made it.
fn repair(fr: &mut [u8]) {
    if fr.len() < 34 || fr[12..14] != [8, 0] {
        return;
    }
    let ihl = usize::from(fr[14] & 0x0f) * 4;
    if ihl < 20 || fr.len() < 14 + ihl {
        return;
    }
    fr[24..26].fill(0);
    let s = checksum(&fr[14..14 + ihl]);
    fr[24..26].copy_from_slice(&s.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([fr[16], fr[17]]));
    let end = (14 + total).min(fr.len());
    let udp_at = 14 + ihl;
    if fr[23] != 17 || end < udp_at + 8 {
        return;
    }
    // UDP checksum over the pseudo-header and the datagram as it lies.
    let udp_len = end - udp_at;
    fr[udp_at + 4..udp_at + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    fr[udp_at + 6..udp_at + 8].fill(0);
    let mut pseudo = Vec::with_capacity(12 + udp_len);
    pseudo.extend_from_slice(&fr[26..34]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&fr[udp_at..end]);
    let s = match checksum(&pseudo) {
        0 => 0xffff,
        s => s,
    };
    fr[udp_at + 6..udp_at + 8].copy_from_slice(&s.to_be_bytes());
}

#[derive(Default)]
struct Seen {
    resolves: Vec<PendingId>,
    /// Forwarded queries: (transport, the socket's port, the query).
    upstream: Vec<(Transport, u16, Vec<u8>)>,
    next_port: u16,
    conns: Vec<u64>,
}

fn drain(g: &mut Gn, seen: &mut Seen) {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    for _ in 0..10_000 {
        if g.poll_transmit(&mut buf).is_none() {
            break;
        }
    }
    while let Some(a) = g.poll_action() {
        match a {
            GnAction::Resolve { pending_id, .. } => seen.resolves.push(pending_id),
            GnAction::Upstream {
                upstream_id,
                payload,
                transport,
            } => {
                seen.next_port = seen.next_port.wrapping_add(1).max(1024);
                g.upstream_sent(upstream_id, transport, seen.next_port);
                seen.upstream.push((transport, seen.next_port, payload));
            }
            GnAction::UpstreamDone { port, .. } => seen.upstream.retain(|u| u.1 != port),
            GnAction::TcpClose { conn } => seen.conns.retain(|&c| c != conn),
            _ => {}
        }
    }
}

fn pick<T: Clone>(v: &[T], b: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[usize::from(b) % v.len()].clone())
}

fn code(b: u8) -> Unreachable {
    match b % 3 {
        0 => Unreachable::Net,
        1 => Unreachable::Host,
        _ => Unreachable::FragmentationNeeded(u16::from(b) * 8),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut g = gn();
    let mut now = Instant::now();
    let mut seen = Seen::default();
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 3 && steps < 64 {
        steps += 1;
        let op = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let take = len.min(rest.len() - 3);
        let chunk = &rest[3..3 + take];
        rest = &rest[3 + take..];
        let b = |i: usize| chunk.get(i).copied().unwrap_or(0);
        match op % 12 {
            0 => {
                g.handle_frame(now, chunk);
            }
            1 => {
                let mut fr = chunk.to_vec();
                repair(&mut fr);
                g.handle_frame(now, &fr);
            }
            2 => {
                let mut fr = chunk.to_vec();
                repair(&mut fr);
                // The control side's own use: the frame parsed once, then an ICMP error.
                if let Some(f) = g.handle_lan(now, &fr) {
                    let _ = g.unreachable_to(now, &f, code(b(0)));
                    let _ = g.unreachable_non_vip(now, &f);
                }
            }
            3 => {
                let _ = g.unreachable(now, chunk, code(b(0)));
            }
            4 => {
                // An answer from upstream: raw bytes on a known socket, or on any port.
                match pick(&seen.upstream, b(0)) {
                    Some((t, port, _)) => {
                        g.handle_upstream(now, t, port, chunk.get(1..).unwrap_or(&[]))
                    }
                    None => g.handle_upstream(now, Transport::Udp, u16::from(b(0)), chunk),
                };
            }
            5 => {
                // The forwarded query echoed as an answer (QR set), with fuzzer bytes appended.
                if let Some((t, port, mut q)) = pick(&seen.upstream, b(0)) {
                    if q.len() > 2 {
                        q[2] |= 0x80;
                    }
                    q.extend_from_slice(chunk.get(1..).unwrap_or(&[]));
                    g.handle_upstream(now, t, port, &q);
                }
            }
            6 => {
                if let Some(id) = pick(&seen.resolves, b(0)) {
                    let outcome = match b(1) % 4 {
                        0 => ResolveOutcome::Vip(Ipv4Addr::new(100, 64, b(2), b(3))),
                        1 => ResolveOutcome::NotFound,
                        2 => ResolveOutcome::Timeout,
                        _ => ResolveOutcome::Failed,
                    };
                    g.answer(now, id, outcome);
                }
            }
            7 => {
                now += Duration::from_millis(u64::from(u16::from_le_bytes([b(0), b(1)])) * 16);
                if g.poll_timeout().is_some_and(|t| t <= now) || b(2) & 1 == 1 {
                    g.handle_timeout(now);
                }
            }
            8 => {
                let gn = usize::from(b(0) % 3);
                let vip = match b(1) % 3 {
                    0 => None,
                    1 => Some(VIPS[gn % 2]),
                    _ => Some(Ipv4Addr::new(100, 64, b(2), b(3))),
                };
                let _ = g.set_vip(gn, vip);
            }
            9 => {
                // DNS over TCP: accept from a GN's VIP (or not), then data.
                let conn = u64::from(b(0) % 8);
                let ip = match b(1) % 3 {
                    0 => VIPS[0],
                    1 => VIPS[1],
                    _ => Ipv4Addr::new(10, 0, 0, b(2)),
                };
                if g.tcp_accept(now, conn, SocketAddrV4::new(ip, 40000))
                    .is_ok()
                {
                    seen.conns.push(conn);
                }
                g.tcp_data(now, conn, chunk.get(3..).unwrap_or(&[]));
            }
            10 => {
                let conn = pick(&seen.conns, b(0)).unwrap_or(u64::from(b(0)));
                match b(1) % 3 {
                    0 => g.tcp_data(now, conn, chunk.get(2..).unwrap_or(&[])),
                    1 => g.tcp_eof(now, conn),
                    _ => {
                        g.tcp_closed(conn);
                        seen.conns.retain(|&c| c != conn);
                    }
                }
            }
            _ => {
                // A reload: the GN list (kept, reordered, one bound or not, one gone).
                let mut s = specs(b(0) & 1 == 1);
                if b(0) & 2 == 2 {
                    s.reverse();
                }
                if b(0) & 4 == 4 {
                    s.pop();
                }
                if g.set_gns(s).is_ok() {
                    seen.resolves.clear();
                }
            }
        }
        drain(&mut g, &mut seen);
    }
});
