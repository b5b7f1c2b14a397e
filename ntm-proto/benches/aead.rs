//! AES-256-GCM seal and open in place: `ring` 0.17 (`LessSafeKey`, what
//! [`ntm_proto::Cipher`] uses) against `aws-lc-rs` and RustCrypto's
//! `aes-gcm`, and [`ntm_proto::Cipher`] itself for suite 1 (HMAC-SHA256-128)
//! and suite 2 (AES-256-GCM) on whole datagrams, for a 64-byte and a
//! 1400-byte body with the 16-byte header as AAD (issue 8).
//!
//! The comparison crates are optional dependencies behind the `aead-bench`
//! feature, so the normal test suite never builds them:
//!
//! ```text
//! cargo bench -p ntm-proto --features aead-bench --bench aead -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Each key is prepared once (key schedule, GHASH table) outside the timed
//! loop, as the data path does per tunnel and direction. Seal runs in place
//! on one buffer; open runs on a fresh copy of a valid sealed body each time
//! (the copy is made outside the timing by `iter_batched_ref`), so every
//! timed open verifies and decrypts successfully.

use std::hint::black_box;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ntm_proto::wire::{Suite, HEADER_LEN, TAG_LEN};
use ntm_proto::{Cipher, Key};

const KEY: [u8; 32] = [0x42; 32];
const SIZES: [usize; 2] = [64, 1400];
/// The tunnel id and seq of the header: nonce = header bytes 4..16.
const TUNNEL_ID: u32 = 0x0102_0304;
const SEQ: u64 = 0x1122_3344_5566;

/// The 16-byte NTM header used as AAD (version 2, DATA, suite 2).
fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = 2;
    h[1] = 1;
    h[3] = 2;
    h[4..8].copy_from_slice(&TUNNEL_ID.to_be_bytes());
    h[8..16].copy_from_slice(&SEQ.to_be_bytes());
    h
}

fn nonce() -> [u8; 12] {
    let mut n = [0u8; 12];
    n.copy_from_slice(&header()[4..16]);
    n
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// A whole datagram: header, `len` bytes of body, room for the tag.
fn datagram(len: usize) -> Vec<u8> {
    let mut d = header().to_vec();
    d.extend_from_slice(&body(len));
    d.extend_from_slice(&[0; TAG_LEN]);
    d
}

/// One AES-256-GCM implementation, seal and open in place with a detached
/// tag (the datagram layout: body, then tag).
trait Gcm {
    const NAME: &'static str;
    fn seal(&self, nonce: [u8; 12], aad: &[u8; 16], body: &mut [u8]) -> [u8; 16];
    fn open(&self, nonce: [u8; 12], aad: &[u8; 16], body: &mut [u8], tag: &[u8; 16]) -> bool;
}

struct Ring(ring::aead::LessSafeKey);

impl Ring {
    fn new() -> Ring {
        let k = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &KEY).unwrap();
        Ring(ring::aead::LessSafeKey::new(k))
    }
}

impl Gcm for Ring {
    const NAME: &'static str = "ring";
    #[inline]
    fn seal(&self, nonce: [u8; 12], aad: &[u8; 16], body: &mut [u8]) -> [u8; 16] {
        use ring::aead::{Aad, Nonce};
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    #[inline]
    fn open(&self, nonce: [u8; 12], aad: &[u8; 16], body: &mut [u8], tag: &[u8; 16]) -> bool {
        use ring::aead::{Aad, Nonce, Tag};
        let tag = Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                tag,
                body,
                0..,
            )
            .is_ok()
    }
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);

impl AwsLc {
    fn new() -> AwsLc {
        let k = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap();
        AwsLc(aws_lc_rs::aead::LessSafeKey::new(k))
    }
}

impl Gcm for AwsLc {
    const NAME: &'static str = "aws-lc-rs";
    #[inline]
    fn seal(&self, nonce: [u8; 12], aad: &[u8; 16], body: &mut [u8]) -> [u8; 16] {
        use aws_lc_rs::aead::{Aad, Nonce};
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    #[inline]
    fn open(&self, nonce: [u8; 12], aad: &[u8; 16], body: &mut [u8], tag: &[u8; 16]) -> bool {
        use aws_lc_rs::aead::{Aad, Nonce};
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                tag,
                body,
            )
            .is_ok()
    }
}

struct RustCrypto(Aes256Gcm);

impl RustCrypto {
    fn new() -> RustCrypto {
        RustCrypto(Aes256Gcm::new_from_slice(&KEY).unwrap())
    }
}

impl Gcm for RustCrypto {
    const NAME: &'static str = "aes-gcm";
    #[inline]
    fn seal(&self, nonce: [u8; 12], aad: &[u8; 16], body: &mut [u8]) -> [u8; 16] {
        let tag = self
            .0
            .encrypt_inout_detached(&nonce.into(), aad, body.into())
            .unwrap();
        tag.into()
    }
    #[inline]
    fn open(&self, nonce: [u8; 12], aad: &[u8; 16], body: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0
            .decrypt_inout_detached(&nonce.into(), aad, body.into(), &(*tag).into())
            .is_ok()
    }
}

/// Every implementation produces the same ciphertext and tag, and
/// `Cipher` (suite 2) is exactly that GCM over (nonce = id||seq, AAD =
/// header, body): the comparison measures the same work.
fn cross_check() {
    let aad = header();
    for len in SIZES {
        let mut a = body(len);
        let ta = Ring::new().seal(nonce(), &aad, &mut a);
        let mut b = body(len);
        let tb = AwsLc::new().seal(nonce(), &aad, &mut b);
        let mut c = body(len);
        let tc = RustCrypto::new().seal(nonce(), &aad, &mut c);
        assert!(
            a == b && a == c && ta == tb && ta == tc,
            "implementations disagree at {len}"
        );
        assert!(a != body(len));
        let mut d = datagram(len);
        let cipher = Cipher::new(Suite::Aes256Gcm, &Key::from_bytes(KEY)).unwrap();
        cipher.seal(&mut d).unwrap();
        assert_eq!(d[..HEADER_LEN], aad);
        assert_eq!(d[HEADER_LEN..HEADER_LEN + len], a[..]);
        assert_eq!(d[HEADER_LEN + len..], ta);
        for (name, ok) in [
            ("ring", Ring::new().open(nonce(), &aad, &mut a.clone(), &ta)),
            (
                "aws-lc-rs",
                AwsLc::new().open(nonce(), &aad, &mut b.clone(), &tb),
            ),
            (
                "aes-gcm",
                RustCrypto::new().open(nonce(), &aad, &mut c.clone(), &tc),
            ),
        ] {
            assert!(ok, "{name} does not open its own seal");
        }
        cipher.open(&mut d).unwrap();
        assert_eq!(d[HEADER_LEN..HEADER_LEN + len], body(len)[..]);
    }
}

fn report_cpu() {
    #[cfg(target_arch = "x86_64")]
    {
        let f = [
            ("aes", std::arch::is_x86_feature_detected!("aes")),
            (
                "pclmulqdq",
                std::arch::is_x86_feature_detected!("pclmulqdq"),
            ),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("vaes", std::arch::is_x86_feature_detected!("vaes")),
            (
                "vpclmulqdq",
                std::arch::is_x86_feature_detected!("vpclmulqdq"),
            ),
        ];
        let f: Vec<String> = f.iter().map(|(n, on)| format!("{n}={on}")).collect();
        eprintln!("cpu: {}", f.join(" "));
        // RustCrypto picks its backend at run time: aes (AES-NI, VAES) and
        // polyval (PCLMULQDQ with AVX) through cpufeatures.
        eprintln!(
            "aes-gcm (RustCrypto): aes::hardware_accelerated()={}; polyval uses CLMUL intrinsics when avx+pclmulqdq={}",
            aes_gcm::aes::hardware_accelerated(),
            std::arch::is_x86_feature_detected!("avx")
                && std::arch::is_x86_feature_detected!("pclmulqdq"),
        );
    }
}

fn bench_gcm<G: Gcm>(c: &mut Criterion, g: &G) {
    let aad = header();
    for len in SIZES {
        let mut group = c.benchmark_group(format!("seal/{len}"));
        group.throughput(Throughput::Bytes(len as u64));
        let mut buf = body(len);
        group.bench_function(G::NAME, |b| {
            b.iter(|| black_box(g.seal(nonce(), &aad, black_box(&mut buf))))
        });
        group.finish();

        let mut sealed = body(len);
        let tag = g.seal(nonce(), &aad, &mut sealed);
        let mut group = c.benchmark_group(format!("open/{len}"));
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(G::NAME, |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| assert!(g.open(nonce(), &aad, black_box(buf), &tag)),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn bench_cipher(c: &mut Criterion, suite: Suite) {
    let name = match suite {
        Suite::HmacSha256_128 => "Cipher/suite1",
        _ => "Cipher/suite2",
    };
    let cipher = Cipher::new(suite, &Key::from_bytes(KEY)).unwrap();
    for len in SIZES {
        let mut group = c.benchmark_group(format!("seal/{len}"));
        group.throughput(Throughput::Bytes(len as u64));
        let mut d = datagram(len);
        group.bench_function(name, |b| b.iter(|| cipher.seal(black_box(&mut d)).unwrap()));
        group.finish();

        let mut sealed = datagram(len);
        cipher.seal(&mut sealed).unwrap();
        let mut group = c.benchmark_group(format!("open/{len}"));
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |d| cipher.open(black_box(d)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn aead(c: &mut Criterion) {
    report_cpu();
    cross_check();
    bench_gcm(c, &Ring::new());
    bench_gcm(c, &AwsLc::new());
    bench_gcm(c, &RustCrypto::new());
    bench_cipher(c, Suite::Aes256Gcm);
    bench_cipher(c, Suite::HmacSha256_128);
}

criterion_group!(benches, aead);
criterion_main!(benches);
