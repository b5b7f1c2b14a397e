//! Per-packet cost of the protocol work alone, per suite: NTM encapsulation (header,
//! sequence number, then suite 2 AES-256-GCM encryption and tag, or suite 1
//! HMAC-SHA256-128 tag, over header and inner packet) and decapsulation (header checks,
//! suite, tag check and decryption, replay window, inner packet shape and addresses) with
//! ntm-proto, per inner packet size, compared with the 424.2 ns per packet of the paper's
//! adapter. Ids: `proto/encap/<suite>/<size>B`, `proto/decap/<suite>/<size>B`, with the
//! suites' names (`aes-256-gcm`, `hmac-sha256-128`); `proto/hmac/<size>B` is the suite-1
//! tag alone.
//!
//! The fast path's own functions with 1 and 10,000 tunnels in the table (lookups, outer
//! headers, Ethernet rewrite on top of this) are measured by `ntma-user/benches/fastpath.rs`;
//! `ntm-bench` reports both.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ntm_proto::data::{decap, encap_in_place, RxTunnel};
use ntm_proto::wire::{HEADER_LEN, OVERHEAD};
use ntm_proto::{Authenticator, Cipher, DirectionKeys, Key, Role, Suite};
use perf::packet::ipv4_udp;

const SIZES: [usize; 3] = [64, 512, 1400];
const SUITES: [Suite; 2] = [Suite::Aes256Gcm, Suite::HmacSha256_128];
const GN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const CN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);
const TUNNEL: u32 = 0x00be_0001;
const K_TUN: [u8; 32] = [0x5a; 32];

/// The initiator's send key and the responder's receive key of one direction: the same
/// direction key (`K_i2r`) on both ends, as a tunnel has it.
fn direction(suite: Suite) -> (Cipher, Cipher) {
    let keys = DirectionKeys::derive(&Key::from_bytes(K_TUN));
    let (tx, _) = keys.for_role(Role::Initiator).expect("a role");
    let (_, rx) = keys.for_role(Role::Responder).expect("a role");
    (
        Cipher::new(suite, tx).expect("a supported suite"),
        Cipher::new(suite, rx).expect("a supported suite"),
    )
}

fn bench_encap(c: &mut Criterion) {
    for suite in SUITES {
        let mut g = c.benchmark_group(format!("proto/encap/{}", suite.name()));
        g.throughput(Throughput::Elements(1));
        let (tx, _) = direction(suite);
        for size in SIZES {
            let inner = ipv4_udp(GN, CN, 5000, 9000, size);
            let mut buf = vec![0u8; size + OVERHEAD];
            buf[HEADER_LEN..HEADER_LEN + size].copy_from_slice(&inner);
            let mut seq = 0u64;
            g.bench_function(format!("{size}B"), |b| {
                b.iter(|| {
                    seq += 1;
                    // Sealing works in place; with suite 2 the body is then ciphertext,
                    // which the next iteration encrypts again: same work per byte.
                    let n = encap_in_place(black_box(&mut buf), 0, size, TUNNEL, seq, &tx);
                    black_box(n)
                })
            });
        }
        g.finish();
    }
}

fn bench_decap(c: &mut Criterion) {
    for suite in SUITES {
        let mut g = c.benchmark_group(format!("proto/decap/{}", suite.name()));
        g.throughput(Throughput::Elements(1));
        let (tx, rx_cipher) = direction(suite);
        for size in SIZES {
            let inner = ipv4_udp(CN, GN, 9000, 5000, size);
            let mut rx = RxTunnel::new(rx_cipher.clone(), CN, GN);
            let mut seq = 0u64;
            g.bench_function(format!("{size}B"), |b| {
                b.iter_batched_ref(
                    || {
                        // A fresh sequence number per datagram, sealed outside the timing.
                        seq += 1;
                        let mut d = vec![0u8; size + OVERHEAD];
                        d[HEADER_LEN..HEADER_LEN + size].copy_from_slice(&inner);
                        encap_in_place(&mut d, 0, size, TUNNEL, seq, &tx).expect("sized");
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
}

fn bench_tag(c: &mut Criterion) {
    let mut g = c.benchmark_group("proto/hmac");
    g.throughput(Throughput::Elements(1));
    let auth = Authenticator::new(&Key::from_bytes(K_TUN));
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
