//! Cost of the GN-facing slow path per frame: one proxy ARP reply (the
//! paper measured 485.7 ns) and one intercepted DNS query answered with the
//! peer's VIP. Each iteration is handle_frame + poll_transmit, i.e. what the
//! slow-path thread does per frame, without the NIC.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use ntma_user::gn::wire::{build_arp_request, build_udp_frame, MacAddr, UdpEnds};
use ntma_user::gn::{Gn, GnAction, GnConfig, ResolveOutcome, MAX_FRAME_LEN};

const NTMA_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x0b]);
const GN_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x0a]);
const VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

fn gn() -> Gn {
    let mut g = Gn::new(GnConfig::new(NTMA_MAC)).expect("default config is valid");
    g.set_vip(0, Some(VIP)).expect("VIP inside the pool");
    g
}

fn arp(c: &mut Criterion) {
    let mut req = Vec::new();
    build_arp_request(&mut req, GN_MAC, VIP, Ipv4Addr::new(100, 64, 0, 20));
    let mut g = gn();
    let mut out = [0u8; MAX_FRAME_LEN];
    let now = Instant::now();
    let mut group = c.benchmark_group("gn");
    group.throughput(Throughput::Elements(1));
    group.bench_function("arp_reply", |b| {
        b.iter(|| {
            g.handle_frame(now, black_box(&req));
            black_box(g.poll_transmit(&mut out))
        })
    });
    group.finish();
    assert_eq!(g.counters().total_drops(), 0);
}

fn dns(c: &mut Criterion) {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_str("cn.ntm.test.").expect("valid name"),
        RecordType::A,
    ));
    let mut query = Vec::new();
    build_udp_frame(
        &mut query,
        &UdpEnds {
            dst_mac: NTMA_MAC,
            src_mac: GN_MAC,
            src_ip: VIP,
            dst_ip: ROUTER,
            src_port: 40000,
            dst_port: 53,
        },
        &m.to_vec().expect("query encodes"),
    )
    .expect("frame fits");
    let mut g = gn();
    let mut out = [0u8; MAX_FRAME_LEN];
    let now = Instant::now();
    let mut group = c.benchmark_group("gn");
    group.throughput(Throughput::Elements(1));
    // Query in, Resolve out, answer in, A record frame out.
    group.bench_function("dns_intercept_a", |b| {
        b.iter(|| {
            g.handle_frame(now, black_box(&query));
            if let Some(GnAction::Resolve { pending_id, .. }) = g.poll_action() {
                g.answer(
                    now,
                    pending_id,
                    ResolveOutcome::Vip(Ipv4Addr::new(100, 64, 0, 20)),
                );
            }
            black_box(g.poll_transmit(&mut out))
        })
    });
    // Query in, Upstream action out (id rewritten).
    let mut fwd = query.clone();
    let mut m2 = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m2.add_query(Query::query(
        Name::from_str("example.com.").expect("valid name"),
        RecordType::A,
    ));
    fwd.clear();
    build_udp_frame(
        &mut fwd,
        &UdpEnds {
            dst_mac: NTMA_MAC,
            src_mac: GN_MAC,
            src_ip: VIP,
            dst_ip: ROUTER,
            src_port: 40001,
            dst_port: 53,
        },
        &m2.to_vec().expect("query encodes"),
    )
    .expect("frame fits");
    let later = now + std::time::Duration::from_secs(3600);
    group.bench_function("dns_forward", |b| {
        b.iter(|| {
            g.handle_frame(now, black_box(&fwd));
            let a = g.poll_action();
            // Expire the entry so the table never fills.
            g.handle_timeout(later);
            black_box(a)
        })
    });
    group.finish();
}

criterion_group!(benches, arp, dns);
criterion_main!(benches);
