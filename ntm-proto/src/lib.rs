//! NTMobile wire protocol v2, sans-IO: typed packet views, the two suites
//! (HMAC-SHA256-128 and AES-256-GCM), direction keys, key wrap, replay
//! windows and signaling state machines.
//!
//! This crate does no I/O and reads no clock: callers hand it datagrams and
//! `Instant`s and take datagrams and deadlines back, so the same code runs
//! under the software node's tokio driver, the adapter's worker threads and
//! the virtual-time tests.
//!
//! | module | what |
//! |---|---|
//! | [`wire`] | [`Packet`] (zero-copy header/body/tag view with `new_unchecked`/`check_len`/`new_checked`), [`wire::TlvIter`]/[`wire::Tlv`], and [`Repr`] with one struct per message type of §4 ([`Repr::parse`], [`Repr::emit`], [`Repr::emit_sealed`]) |
//! | [`auth`] | [`Key`] (zeroized on drop), [`Authenticator`] (HMAC-SHA256-128 keyed once, cloned per datagram; constant-time [`Authenticator::verify`]; [`Authenticator::seal`]: every signaling message), [`DirectionKeys`] (`K_i2r`/`K_r2i` from `K_tun` by HKDF), key wrap ([`Authenticator::wrap_key`]/[`Authenticator::unwrap_key`] with a [`WrapLabel`]) |
//! | [`cipher`] | [`Cipher`]: a tunnel direction key prepared once for its suite (1 HMAC-SHA256-128, 2 AES-256-GCM on `ring`), sealing and opening whole datagrams in place |
//! | [`replay`] | the 2048-packet [`ReplayWindow`] (RFC 6479 ring of u64 words), kept by every receiver per (sender, key); [`AtomicReplayWindow`], the same decisions for several threads at once; [`ReplayCheck`], what `decap` asks of either |
//! | [`data`] | the DATA fast path: [`data::encap_in_place`], [`data::decap`] (spec order of checks, generic over the replay window through [`data::Rx`]), [`data::RxTunnel`], [`data::TxTunnel`], [`data::SeqCounter`] |
//! | [`retransmit`] | [`retransmit::Retransmit`]: 250 ms doubling, 5 tries, then failure |
//! | [`node`] | [`node::Endpoint`]: a node's registration, direction, tunnel set-up, keep-alive, expiry and roaming |
//! | [`dns`] | [`dns::DnsStub`]: the DNS stub (NTM names through DIR_REQ, other names forwarded upstream), message level |
//! | [`counters`] | [`counters::Counters`]: drop counters by [`counters::Reason`] (`name=count` display), [`DropCounters`] for [`Error`] |
//! | `sim` | (feature `sim`) a deterministic virtual-time network of hosts, NATs, latency and loss for tests |
//! | [`hold`] | [`hold::HoldQueue`]: packets to a VIP whose tunnel is being set up, bounded per peer and in all (software node and adapter) |
//! | [`host`] | [`host::Host`]: one node identity's endpoint with its names, hold queue, pending DNS resolutions and set-up times, sans-IO (the software node has one, the adapter one per GN) |
//!
//! Every drop has a reason: [`Error`] is a fieldless `Copy` enum with
//! [`Error::index`]/[`Error::COUNT`] for counter arrays ([`DropCounters`]).
//!
//! # Example: build, seal, verify and parse a DIR_REQ
//!
//! ```
//! use ntm_proto::wire::{DirReq, Fqdn, Header, Message, Packet, Repr, MAX_SIGNALING_LEN};
//! use ntm_proto::{Authenticator, Key};
//!
//! let k_node = Authenticator::new(&Key::from_bytes([7; 32]));
//! let repr = Repr::new(
//!     Header { id: 7, seq: 1, response_required: true },
//!     Message::DirReq(DirReq { req_id: 42, fqdn: Fqdn::new("cn.ntm.test")? }),
//! );
//! let mut buf = [0u8; MAX_SIGNALING_LEN];
//! let len = repr.emit_sealed(&mut buf, &k_node)?;
//!
//! // Receiving: check the header, verify the tag, only then parse and act.
//! let datagram = &buf[..len];
//! let packet = Packet::new_checked(datagram)?;
//! packet.check_header()?;
//! k_node.verify(datagram)?;
//! assert_eq!(Repr::parse(&packet)?, repr);
//! # Ok::<(), ntm_proto::Error>(())
//! ```
//!
//! # Example: the DATA fast path, in place, with suite 2
//!
//! ```
//! use std::net::Ipv4Addr;
//! use ntm_proto::data::{decap, encap_in_place, Decapped, RxTunnel};
//! use ntm_proto::wire::HEADER_LEN;
//! use ntm_proto::{Cipher, DirectionKeys, Key, Role, Suite};
//!
//! // Both ends derive the direction keys from the K_tun the DC sent them.
//! let keys = DirectionKeys::derive(&Key::from_bytes([0x20; 32]));
//! let (i_tx, _) = keys.for_role(Role::Initiator).unwrap();
//! let (_, r_rx) = keys.for_role(Role::Responder).unwrap();
//! let initiator_tx = Cipher::new(Suite::Aes256Gcm, i_tx)?;
//! let (peer, me) = (Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 3));
//! // An inner IPv4 packet already sits 16 bytes into the frame buffer.
//! let mut frame = [0u8; 2048];
//! let inner_len = 20;
//! frame[HEADER_LEN] = 0x45;
//! frame[HEADER_LEN + 3] = inner_len as u8;
//! frame[HEADER_LEN + 12..HEADER_LEN + 16].copy_from_slice(&peer.octets());
//! frame[HEADER_LEN + 16..HEADER_LEN + 20].copy_from_slice(&me.octets());
//! let len = encap_in_place(&mut frame, 0, inner_len, 257, 1, &initiator_tx)?;
//! assert_ne!(frame[HEADER_LEN], 0x45, "encrypted in place");
//!
//! let mut rx = RxTunnel::new(Cipher::new(Suite::Aes256Gcm, r_rx)?, peer, me);
//! let got = decap(&mut frame[..len], |id| (id == 257).then_some(&mut rx))?;
//! assert!(matches!(got, Decapped::Data { tunnel_id: 257, seq: 1, .. }));
//! # Ok::<(), ntm_proto::Error>(())
//! ```
//!
//! # Example: driving a node endpoint
//!
//! ```
//! use std::time::Instant;
//! use ntm_proto::node::{Config, Endpoint, Event};
//! use ntm_proto::wire::{Caps, Packet, MAX_SIGNALING_LEN};
//! use ntm_proto::MessageType;
//!
//! let now = Instant::now();
//! let cfg = Config {
//!     fqdn: "gn.ntm.test".into(),
//!     key: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".parse()?,
//!     dc: "198.18.0.2:7710".parse()?,
//!     local_addr: "192.168.10.2:7700".parse()?,
//!     caps: Caps::ADAPTER,
//! };
//! let unix_nanos = 1_700_000_000_000_000_000; // from SystemTime in a real driver
//! let mut ep = Endpoint::new(cfg, now, unix_nanos, [42; 32])?;
//!
//! // After every input: drain transmits, then events, then re-arm the timer.
//! let mut buf = [0u8; MAX_SIGNALING_LEN];
//! let t = ep.poll_transmit(now, &mut buf).expect("the first REG_REQ");
//! assert_eq!(t.dst, "198.18.0.2:7710".parse()?);
//! assert_eq!(Packet::new_checked(&buf[..t.len])?.msg_type(), MessageType::RegReq);
//! // socket.send_to(&buf[..t.len], t.dst) in a real driver.
//! assert!(ep.poll_transmit(now, &mut buf).is_none());
//! assert!(ep.poll_event().is_none());
//! let wake_at = ep.poll_timeout().expect("the REG_REQ retransmission timer");
//! assert!(wake_at > now);
//!
//! // A real driver loops:
//! //   select { datagram (from, bytes) => ep.handle(now, from, bytes),
//! //            sleep_until(wake_at)  => ep.handle_timeout(now) }
//! //   then poll_transmit / poll_event as above; on Event::TunnelUp hand
//! //   the key and endpoint to the data plane; call ep.connect(now, fqdn)
//! //   for DNS queries and wait for Event::DirectionResolved.
//! ep.handle_timeout(wake_at);
//! assert!(ep.poll_transmit(wake_at, &mut buf).is_some(), "retransmitted REG_REQ");
//! # let _ = Event::TunnelDown { tunnel_id: 1, reason: ntm_proto::node::DownReason::Closed };
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod auth;
pub mod cipher;
pub mod counters;
pub mod data;
pub mod dns;
mod error;
pub mod hold;
pub mod host;
pub mod node;
pub mod replay;
pub mod retransmit;
#[cfg(feature = "sim")]
pub mod sim;
pub mod wire;

pub use auth::{Authenticator, DirectionKeys, Key, ParseKeyError, WrapLabel, KEY_LEN, TAG_BATCH};
pub use cipher::Cipher;
pub use error::{DropCounters, Error, Result};
pub use replay::{AtomicReplayWindow, ReplayCheck, ReplayWindow};
pub use wire::{MessageType, Packet, Path, Repr, Role, Status, Suite};

/// Where to send a datagram that a `poll_transmit` (of
/// [`node::Endpoint`], the DC's coordinator, the RS's relay) wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dst: std::net::SocketAddrV4,
    /// Bytes written at the front of the caller's buffer.
    pub len: usize,
}
