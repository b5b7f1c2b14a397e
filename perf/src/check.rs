//! What happens to the frames a sink passes to the kernel: checked here, so that a
//! datapath that delivers garbage at line rate does not score.
//!
//! * [`Check::NtmTags`]: a UDP socket on the NTM port checks each sample's header and
//!   opens it with the receiving peer's direction key in the tunnel's suite (ntm-proto's
//!   `Cipher`: suite 2 verifies the GCM tag and decrypts, suite 1 verifies the HMAC
//!   tag), as the peer would.
//! * [`Checker::delivered`]: where a real peer decapsulates or decrypts the samples (a
//!   software node, a WireGuard peer), a UDP socket counts the inner packets it delivers.

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use ntm_proto::wire::{MessageType, Packet};
use ntm_proto::Cipher;

/// What to do with samples.
#[derive(Clone)]
pub enum Check {
    /// Nothing beyond counting at the sink.
    None,
    /// Open NTM DATA with this key and check the tunnel id (a socket on `bind`).
    NtmTags {
        /// The socket address on the sink's host.
        bind: SocketAddrV4,
        /// The receiver's direction key (the sender's send key) in the tunnel's suite
        /// (boxed: a prepared AES-256-GCM key is large).
        cipher: Box<Cipher>,
        /// The receiver's tunnel id the datagrams must carry.
        tunnel_id: u32,
    },
    /// Count inner packets a peer delivers to `bind` after decapsulating the samples.
    Delivered {
        /// The inner destination, on the sink's host.
        bind: SocketAddrV4,
    },
    /// Datagrams to `bind` must carry `len` bytes of the counting pattern of
    /// [`crate::packet::ipv4_udp`] (what arrives unchanged, or decapsulated, from the
    /// dp generator).
    Pattern {
        /// The destination, on the sink's host.
        bind: SocketAddrV4,
        /// UDP payload length.
        len: usize,
    },
}

/// How a checker judges one datagram.
enum Verify {
    Nothing,
    Ntm(Box<Cipher>, u32),
    Pattern(usize),
}

impl Verify {
    fn ok(&self, datagram: &mut [u8]) -> bool {
        match self {
            Verify::Nothing => true,
            Verify::Ntm(cipher, id) => tag_ok(datagram, cipher, *id),
            Verify::Pattern(len) => {
                datagram.len() == *len && crate::packet::is_counting_pattern(datagram)
            }
        }
    }
}

/// Checked-sample counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checked {
    /// Samples that verified (or were delivered).
    pub ok: u64,
    /// Samples that failed verification.
    pub bad: u64,
}

/// A running checker.
pub struct Checker {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Checker {
    /// Starts checking per `check` inside namespace `ns`; `None` for [`Check::None`].
    pub fn start(ns: &str, check: &Check) -> Result<Option<Checker>> {
        let (bind, verify) = match check {
            Check::None => return Ok(None),
            Check::NtmTags {
                bind,
                cipher,
                tunnel_id,
            } => (*bind, Verify::Ntm(cipher.clone(), *tunnel_id)),
            Check::Delivered { bind } => (*bind, Verify::Nothing),
            Check::Pattern { bind, len } => (*bind, Verify::Pattern(*len)),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (s, o, b, ns2) = (stop.clone(), ok.clone(), bad.clone(), ns.to_owned());
        let thread = std::thread::Builder::new()
            .name("bench-check".into())
            .spawn(move || {
                let r = ntm_testbed::in_netns(&ns2, move || {
                    let sock = match UdpSocket::bind(bind).and_then(|s| {
                        s.set_read_timeout(Some(Duration::from_millis(50)))
                            .map(|()| s)
                    }) {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("checker socket on {bind}: {e}")));
                            return;
                        }
                    };
                    let mut buf = vec![0u8; 65536];
                    while !s.load(Ordering::Relaxed) {
                        let Ok(n) = sock.recv(&mut buf) else { continue };
                        let good = verify.ok(&mut buf[..n]);
                        if good { &o } else { &b }.fetch_add(1, Ordering::Relaxed);
                    }
                });
                if let Err(e) = r {
                    tracing::warn!("checker: {e}");
                }
            })
            .context("starting the checker thread")?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Some(Checker {
                stop,
                ok,
                bad,
                thread: Some(thread),
            })),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(anyhow!("the checker did not start in {ns}")),
        }
    }

    /// Counts so far.
    pub fn checked(&self) -> Checked {
        Checked {
            ok: self.ok.load(Ordering::Relaxed),
            bad: self.bad.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether `datagram` is NTM DATA of tunnel `tunnel_id` that opens with `cipher` (its
/// suite byte names the cipher's suite and its tag verifies; suite 2 decrypts the body
/// in place).
pub fn tag_ok(datagram: &mut [u8], cipher: &Cipher, tunnel_id: u32) -> bool {
    let Ok(p) = Packet::new_checked(&*datagram) else {
        return false;
    };
    p.check_header().is_ok()
        && p.msg_type() == MessageType::Data
        && p.id() == tunnel_id
        && cipher.open(datagram).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{ipv4_udp, NtmDatagram};
    use ntm_proto::{DirectionKeys, Key, Role, Suite};
    use std::net::Ipv4Addr;

    #[test]
    fn tags_verify_only_with_the_right_key_suite_and_tunnel() {
        let keys = DirectionKeys::derive(&Key::from_bytes([3; 32]));
        let (i2r, r2i) = keys.for_role(Role::Initiator).unwrap();
        let inner = ipv4_udp(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            1,
            2,
            64,
        );
        for suite in [Suite::Aes256Gcm, Suite::HmacSha256_128] {
            let tx = Cipher::new(suite, i2r).unwrap();
            let other_suite = match suite {
                Suite::Aes256Gcm => Suite::HmacSha256_128,
                _ => Suite::Aes256Gcm,
            };
            let mut d = NtmDatagram::new(12, &inner);
            let good = d.seal(1, &tx).to_vec();
            let ok = |c: &Cipher, id: u32, d: &[u8]| tag_ok(&mut d.to_vec(), c, id);
            assert!(ok(&tx, 12, &good));
            assert!(!ok(&tx, 13, &good));
            // The other direction's key, the same key in the other suite.
            assert!(!ok(&Cipher::new(suite, r2i).unwrap(), 12, &good));
            assert!(!ok(&Cipher::new(other_suite, i2r).unwrap(), 12, &good));
            let mut flipped = good.clone();
            flipped[40] ^= 1;
            assert!(!ok(&tx, 12, &flipped));
            assert!(!ok(&tx, 12, &good[..20]));
            // Opened in place: suite 2 leaves the plaintext inner packet behind.
            let mut opened = good.clone();
            assert!(tag_ok(&mut opened, &tx, 12));
            assert_eq!(opened[16..16 + 64], inner[..]);
        }
    }
}
