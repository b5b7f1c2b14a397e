//! Per-packet cost of the fast path without the NIC, for each suite (1:
//! HMAC-SHA256-128, 2: AES-256-GCM): `uplink` (GN frame → DATA in place: lookup by
//! VIP, seq, seal with the send direction key — suite 2 encrypts the inner packet
//! where it lies —, outer headers) and `downlink` (DATA → GN frame in place: header
//! checks, lookup by id, open with the receive direction key — suite 2 decrypts in
//! place —, replay window, inner shape and addresses, Ethernet rewrite), for inner
//! packets of 64 and 1400 bytes, with 1 and 10,000 tunnels in the table. With 10,000
//! tunnels successive packets go to different tunnels (each with its own keys), so
//! table and key state come from cache misses as they would under real load. The
//! paper's adapter took 424.2 ns per packet.
//!
//! Each iteration is one call on a frame prepared outside the timing (restoring the
//! frame for uplink; a fresh sequence number, sealed by the peer, for downlink).
//! `fastpath/seal` is the suite's sealing alone, for scale.
//!
//! `fastpath/burst` is the compute bound of a worker: a burst of 64 frames through the
//! functions the worker calls per burst (`fastpath::burst`: uplink, downlink and the
//! l2fwd reference, with their per-burst bookkeeping), from buffers in memory, without
//! rings or system calls; inner packets of 64, 512 and 1400 bytes. Criterion's time is
//! per burst: divide by 64 for ns per packet (its throughput line gives packets/s).
//! With 10,000 tunnels each frame of a burst goes to another tunnel (the worst case
//! for per-run bookkeeping), with 1 all go to the same.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ntm_proto::{
    data::{encap_in_place, SeqCounter},
    node::TunnelParams,
    wire::{HEADER_LEN, TAG_LEN},
    Cipher, DirectionKeys, Key, Path, Role, Suite,
};
use ntma_user::fastpath::{
    burst::{downlink_burst, l2_burst, uplink_burst},
    encap::{downlink, uplink, DownVerdict, UpVerdict, ENCAP_GROW, ENCAP_TAIL},
    DatapathState, DatapathStateConfig,
};
use ntma_user::wire::checksum::internet as ipv4_checksum;
use ntma_user::{
    datapath::{GnLink, Link},
    gn::MacAddr,
};

const GN_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const SIZES: [usize; 2] = [64, 1400];
const TABLES: [u32; 2] = [1, 10_000];
const SUITES: [Suite; 2] = [Suite::HmacSha256_128, Suite::Aes256Gcm];

fn suite_name(suite: Suite) -> &'static str {
    match suite {
        Suite::HmacSha256_128 => "suite1_hmac",
        _ => "suite2_gcm",
    }
}

fn peer_vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 65, 0, 0)) + i)
}

/// The direction keys of tunnel `i`.
fn keys(i: u32) -> DirectionKeys {
    let mut k = [0x42u8; 32];
    k[..4].copy_from_slice(&i.to_be_bytes());
    DirectionKeys::derive(&Key::from_bytes(k))
}

fn tunnel_id(i: u32) -> u32 {
    0x1000_0000 + i
}

/// A data plane with `tunnels` tunnels up in `suite`; ours is the initiator's end.
fn state(tunnels: u32, suite: Suite) -> DatapathState {
    let dp = DatapathState::new(&DatapathStateConfig::default()).expect("eventfd");
    dp.set_gns(&[GnLink {
        vip: GN_VIP,
        mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
    }]);
    dp.set_link(Some(Link {
        lan_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        wan_mac: MacAddr([2, 0, 0, 0, 0, 0x11]),
        wan_ip: Ipv4Addr::new(192, 168, 10, 2),
        wan_port: 7700,
        gateway_mac: MacAddr([2, 0, 0, 0, 0, 0x21]),
    }));
    for i in 0..tunnels {
        let k = keys(i);
        dp.tunnel_up(&TunnelParams {
            tunnel_id: tunnel_id(i),
            peer_fqdn: format!("p{i}.ntm.test"),
            peer_vip: peer_vip(i),
            endpoint: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, (i % 250) as u8), 7700),
            path: Path::Direct,
            role: Role::Initiator,
            suite,
            tx_key: k.i2r.clone(),
            rx_key: k.r2i.clone(),
            tx_seq: SeqCounter::starting_at(1),
            local_vip: GN_VIP,
        })
        .expect("a supported suite");
    }
    dp
}

/// IPv4/UDP packet of `len` bytes.
fn inner(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = vec![0xabu8; len];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6..8].copy_from_slice(&[0, 0]);
    p[8] = 64;
    p[9] = 17;
    p[10..12].copy_from_slice(&[0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

fn eth(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(payload);
    f
}

/// The uplink buffer: room in front, the GN frame, room behind.
fn uplink_buffer(frame: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; ENCAP_GROW + frame.len() + ENCAP_TAIL];
    b[ENCAP_GROW..ENCAP_GROW + frame.len()].copy_from_slice(frame);
    b
}

fn bench_uplink(c: &mut Criterion) {
    let mut group = c.benchmark_group("fastpath/uplink");
    group.throughput(Throughput::Elements(1));
    for (suite, tunnels) in SUITES
        .iter()
        .flat_map(|s| TABLES.iter().map(move |t| (*s, *t)))
    {
        let dp = state(tunnels, suite);
        let snap = dp.snapshot();
        for size in SIZES {
            // One template frame per destination tunnel (at most 1024 distinct, spread
            // over the whole table).
            let step = (tunnels / 1024).max(1);
            let frames: Vec<Vec<u8>> = (0..tunnels)
                .step_by(step as usize)
                .map(|i| uplink_buffer(&eth(&inner(GN_VIP, peer_vip(i), size))))
                .collect();
            let frame_len = frames[0].len() - ENCAP_GROW - ENCAP_TAIL;
            let mut next = 0usize;
            let name = format!("{}/{size}B/{tunnels}_tunnels", suite_name(suite));
            group.bench_function(name, |b| {
                b.iter_batched_ref(
                    || {
                        next = (next + 1) % frames.len();
                        frames[next].clone()
                    },
                    |buf| {
                        let v = uplink(&snap, black_box(buf), frame_len);
                        debug_assert!(matches!(v, UpVerdict::Tx(_)));
                        black_box(v)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        let drops: u64 = dp.drop_totals().iter().sum();
        assert_eq!(drops, 0);
    }
    group.finish();
}

fn bench_downlink(c: &mut Criterion) {
    let mut group = c.benchmark_group("fastpath/downlink");
    group.throughput(Throughput::Elements(1));
    for (suite, tunnels) in SUITES
        .iter()
        .flat_map(|s| TABLES.iter().map(move |t| (*s, *t)))
    {
        let dp = state(tunnels, suite);
        let snap = dp.snapshot();
        let step = (tunnels / 1024).max(1);
        // The peers' send keys (the responder sends with K_r2i).
        let peers: Vec<(u32, Cipher)> = (0..tunnels)
            .step_by(step as usize)
            .map(|i| (i, Cipher::new(suite, &keys(i).r2i).expect("suite")))
            .collect();
        for size in SIZES {
            // Per peer: the frame with everything but seq and tag in place.
            let templates: Vec<Vec<u8>> = peers
                .iter()
                .map(|(i, _)| wan_frame(&inner(peer_vip(*i), GN_VIP, size)))
                .collect();
            let mut seqs = vec![1u64; peers.len()];
            let mut next = 0usize;
            let name = format!("{}/{size}B/{tunnels}_tunnels", suite_name(suite));
            group.bench_function(name, |b| {
                b.iter_batched_ref(
                    || {
                        next = (next + 1) % peers.len();
                        let (i, auth) = &peers[next];
                        let mut f = templates[next].clone();
                        let dg = 14 + 20 + 8;
                        let n = size;
                        encap_in_place(&mut f[dg..], 0, n, tunnel_id(*i), seqs[next], auth)
                            .expect("room");
                        seqs[next] += 1;
                        f
                    },
                    |f| {
                        let v = downlink(&snap, black_box(f), 0);
                        debug_assert!(matches!(v, DownVerdict::Tx { .. }), "{v:?}");
                        black_box(v)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        // Nothing delivered when a filter left these out; never a drop.
        let drops: u64 = dp.drop_totals().iter().sum();
        assert_eq!(drops, 0);
    }
    group.finish();
}

/// Ethernet/IPv4/UDP to port 7700 with room for the NTM header and tag around `inner`.
fn wan_frame(inner: &[u8]) -> Vec<u8> {
    let udp_len = 8 + HEADER_LEN + inner.len() + 16;
    let mut f = vec![0u8; 14 + 20 + udp_len];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 20]);
    ip[16..20].copy_from_slice(&[192, 168, 10, 2]);
    let c = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&7700u16.to_be_bytes());
    udp[2..4].copy_from_slice(&7700u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    f[42 + HEADER_LEN..42 + HEADER_LEN + inner.len()].copy_from_slice(inner);
    f
}

/// Sealing alone, for scale: HMAC-SHA256-128 over header + inner, or AES-256-GCM
/// encryption of the inner packet in place with its tag.
fn bench_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("fastpath/seal");
    group.throughput(Throughput::Elements(1));
    for suite in SUITES {
        let cipher = Cipher::new(suite, &keys(0).i2r).expect("suite");
        for size in SIZES {
            let mut data = vec![0x5au8; HEADER_LEN + size + TAG_LEN];
            data[0] = 2;
            data[1] = 1;
            group.bench_function(format!("{}/{size}B", suite_name(suite)), |b| {
                b.iter(|| black_box(cipher.seal(black_box(&mut data))))
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

/// Frames per burst in `fastpath/burst` (the workers' default batch).
const BURST: usize = 64;
const BURST_SIZES: [usize; 3] = [64, 512, 1400];
/// Distinct bursts the burst benches rotate through: with 10,000 tunnels, 1024
/// tunnels in all, as in the per-packet benches.
const BURSTS: usize = 16;

/// The tunnel of frame `k` of burst `b`.
fn burst_tunnel(tunnels: u32, b: usize, k: usize) -> u32 {
    let step = (tunnels / 1024).max(1);
    ((b * BURST + k) as u32 * step) % tunnels
}

fn bench_burst_uplink(c: &mut Criterion) {
    let mut group = c.benchmark_group("fastpath/burst/uplink");
    group.throughput(Throughput::Elements(BURST as u64));
    for (suite, tunnels) in SUITES
        .iter()
        .flat_map(|s| TABLES.iter().map(move |t| (*s, *t)))
    {
        let dp = state(tunnels, suite);
        let snap = dp.snapshot();
        for size in BURST_SIZES {
            let bursts: Vec<Vec<Vec<u8>>> = (0..BURSTS)
                .map(|b| {
                    (0..BURST)
                        .map(|k| {
                            let peer = peer_vip(burst_tunnel(tunnels, b, k));
                            uplink_buffer(&eth(&inner(GN_VIP, peer, size)))
                        })
                        .collect()
                })
                .collect();
            let lens = vec![14 + size; BURST];
            let mut out = Vec::with_capacity(BURST);
            let mut next = 0usize;
            let name = format!("{}/{size}B/{tunnels}_tunnels", suite_name(suite));
            group.bench_function(name, |b| {
                b.iter_batched_ref(
                    || {
                        next = (next + 1) % BURSTS;
                        bursts[next].clone()
                    },
                    |frames| {
                        out.clear();
                        uplink_burst(&snap, black_box(&mut frames[..]), &lens, &mut out);
                        debug_assert!(out.iter().all(|v| matches!(v, UpVerdict::Tx(_))));
                        black_box(&out);
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        let drops: u64 = dp.drop_totals().iter().sum();
        assert_eq!(drops, 0);
    }
    group.finish();
}

fn bench_burst_downlink(c: &mut Criterion) {
    let mut group = c.benchmark_group("fastpath/burst/downlink");
    group.throughput(Throughput::Elements(BURST as u64));
    for (suite, tunnels) in SUITES
        .iter()
        .flat_map(|s| TABLES.iter().map(move |t| (*s, *t)))
    {
        let dp = state(tunnels, suite);
        let snap = dp.snapshot();
        // Burst b, frame k: its tunnel and the peer's send key.
        let peers: Vec<Vec<(u32, Cipher)>> = (0..BURSTS)
            .map(|b| {
                (0..BURST)
                    .map(|k| {
                        let i = burst_tunnel(tunnels, b, k);
                        (i, Cipher::new(suite, &keys(i).r2i).expect("suite"))
                    })
                    .collect()
            })
            .collect();
        let mut seqs = vec![1u64; tunnels as usize];
        for size in BURST_SIZES {
            let templates: Vec<Vec<Vec<u8>>> = peers
                .iter()
                .map(|p| {
                    p.iter()
                        .map(|(i, _)| wan_frame(&inner(peer_vip(*i), GN_VIP, size)))
                        .collect()
                })
                .collect();
            let mut out = Vec::with_capacity(BURST);
            let mut next = 0usize;
            let name = format!("{}/{size}B/{tunnels}_tunnels", suite_name(suite));
            group.bench_function(name, |b| {
                b.iter_batched_ref(
                    || {
                        next = (next + 1) % BURSTS;
                        let mut frames = templates[next].clone();
                        for (f, (i, auth)) in frames.iter_mut().zip(&peers[next]) {
                            let seq = &mut seqs[*i as usize];
                            encap_in_place(&mut f[42..], 0, size, tunnel_id(*i), *seq, auth)
                                .expect("room");
                            *seq += 1;
                        }
                        frames
                    },
                    |frames| {
                        out.clear();
                        downlink_burst(&snap, black_box(&mut frames[..]), 0, &mut out);
                        debug_assert!(
                            out.iter().all(|v| matches!(v, DownVerdict::Tx { .. })),
                            "{out:?}"
                        );
                        black_box(&out);
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        let drops: u64 = dp.drop_totals().iter().sum();
        assert_eq!(drops, 0);
    }
    group.finish();
}

/// The l2fwd reference: only the MACs of each frame rewritten.
fn bench_burst_l2fwd(c: &mut Criterion) {
    let mut group = c.benchmark_group("fastpath/burst/l2fwd");
    group.throughput(Throughput::Elements(BURST as u64));
    let macs = [2, 0, 0, 0, 0, 0x21, 2, 0, 0, 0, 0, 0x11];
    for size in BURST_SIZES {
        let mut frames: Vec<Vec<u8>> = (0..BURST)
            .map(|_| eth(&inner(GN_VIP, peer_vip(0), size)))
            .collect();
        let mut out = Vec::with_capacity(BURST);
        group.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                out.clear();
                l2_burst(black_box(&mut frames[..]), &macs, &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_uplink, bench_downlink, bench_seal, bench_burst_uplink,
        bench_burst_downlink, bench_burst_l2fwd
}
criterion_main!(benches);
