//! Per-packet cost of the protocol work alone: NTM encapsulation (header, sequence
//! number, HMAC-SHA256-128 tag over header and inner packet) and decapsulation (header
//! checks, tag check, replay window, inner addresses) with ntm-proto, per inner packet
//! size, compared with the 424.2 ns per packet of the paper's adapter.
//!
//! The fast path's own functions with 1 and 10,000 tunnels in the table (lookups, outer
//! headers, Ethernet rewrite on top of this) are measured by `ntma-user/benches/fastpath.rs`;
//! `ntm-bench` reports both.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ntm_proto::data::{decap, encap_in_place, RxTunnel};
use ntm_proto::wire::{HEADER_LEN, OVERHEAD};
use ntm_proto::{Authenticator, Key};
use perf::packet::ipv4_udp;

const SIZES: [usize; 3] = [64, 512, 1400];
const GN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const CN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);
const TUNNEL: u32 = 0x00be_0001;

fn auth() -> Authenticator {
    Authenticator::new(&Key::from_bytes([0x5a; 32]))
}

fn bench_encap(c: &mut Criterion) {
    let mut g = c.benchmark_group("proto/encap");
    g.throughput(Throughput::Elements(1));
    let auth = auth();
    for size in SIZES {
        let inner = ipv4_udp(GN, CN, 5000, 9000, size);
        let mut buf = vec![0u8; size + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + size].copy_from_slice(&inner);
        let mut seq = 0u64;
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                seq += 1;
                // Encapsulation leaves the inner packet in place: the buffer is reusable.
                let n = encap_in_place(black_box(&mut buf), 0, size, TUNNEL, seq, &auth);
                black_box(n)
            })
        });
    }
    g.finish();
}

fn bench_decap(c: &mut Criterion) {
    let mut g = c.benchmark_group("proto/decap");
    g.throughput(Throughput::Elements(1));
    let auth = auth();
    for size in SIZES {
        let inner = ipv4_udp(CN, GN, 9000, 5000, size);
        let mut rx = RxTunnel::new(auth.clone(), CN, GN);
        let mut seq = 0u64;
        g.bench_function(format!("{size}B"), |b| {
            b.iter_batched_ref(
                || {
                    // A fresh sequence number per datagram, sealed outside the timing.
                    seq += 1;
                    let mut d = vec![0u8; size + OVERHEAD];
                    d[HEADER_LEN..HEADER_LEN + size].copy_from_slice(&inner);
                    encap_in_place(&mut d, 0, size, TUNNEL, seq, &auth).expect("sized");
                    d
                },
                |d| {
                    let r = decap(black_box(d), |id| (id == TUNNEL).then_some(&mut rx));
                    debug_assert!(r.is_ok());
                    black_box(r.is_ok())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_tag(c: &mut Criterion) {
    let mut g = c.benchmark_group("proto/hmac");
    g.throughput(Throughput::Elements(1));
    let auth = auth();
    for size in SIZES {
        let data = vec![0xa5u8; size + HEADER_LEN];
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| black_box(auth.tag(black_box(&data))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_encap, bench_decap, bench_tag);
criterion_main!(benches);
