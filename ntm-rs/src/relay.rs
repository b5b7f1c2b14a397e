//! The relay server as a sans-IO state machine.
//!
//! * RELAY_DIR from the DC (`K_rs`, header id = this RS's id) opens a
//!   binding slot for a TUNNEL_ID with the unwrapped `K_relay` and an idle
//!   lifetime, and is answered RELAY_ACK (again for a retransmission, which
//!   changes nothing).
//! * RELAY_BIND (`K_relay`, header id = TUNNEL_ID) binds the sender's
//!   address to its ROLE.
//! * Every other datagram whose header id is a bound TUNNEL_ID, from one
//!   bound address, goes to the other bound address unchanged
//!   ([`Verdict::Forward`]); the RS holds neither `K_tun` nor the direction
//!   keys, so it checks no tag and forwards suite-1 and suite-2 (encrypted)
//!   tunnel traffic alike. Everything else is dropped and counted by
//!   [`DropReason`].
//! * Bindings with no traffic for their lifetime expire.
//!
//! Drive it like the DC's coordinator: [`Relay::handle`] per datagram
//! (sending the same bytes on when it says [`Verdict::Forward`]),
//! [`Relay::handle_timeout`] at [`Relay::poll_timeout`], and
//! [`Relay::poll_transmit`] until `None` after each.
//!
//! # Replay protection (§5 "Replay")
//!
//! RELAY_DIR and RELAY_BIND are signaling: suite 1 only. The RS keeps a
//! [`ReplayWindow`] (2048 wide) for the DC (`K_rs`, for the life of the
//! process) and one per ROLE of each binding (`K_relay`: each end counts its
//! own seq). A datagram is checked against its window after its tag
//! verified and before it is acted on; a replay is dropped and counted as
//! `replay`, so a recorded RELAY_DIR never re-opens or re-keys a binding and
//! a recorded RELAY_BIND never moves one; nor does a late (older) bind that
//! the window has not seen. RELAY_ACKs carry the RS's own seq, which starts
//! at the Unix time in ns.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use ntm_proto::counters::{Counters, Reason};
use ntm_proto::wire::{Header, Message, Packet, RelayAck, Repr};
use ntm_proto::{Authenticator, Error, Key, MessageType, ReplayWindow, Role, Suite, WrapLabel};

use crate::config::{Config, ConfigError, Settings};

/// How often idle bindings are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with a datagram that [`Relay::handle`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the datagram, unchanged, to this address.
    Forward(SocketAddrV4),
    /// Signaling, consumed (answers come from [`Relay::poll_transmit`]).
    Consumed,
}

/// Where to send a datagram that [`Relay::poll_transmit`] wrote (one
/// type for every party of the protocol).
pub use ntm_proto::Transmit;

ntm_proto::reasons! {
    /// Why the relay dropped a datagram. Protocol-level reasons (malformed,
    /// bad tag, replay, unknown tunnel, wrong RS id, unexpected type…) come
    /// from [`ntm_proto::Error`].
    pub enum DropReason extends Proto(Error) {
        /// Tunnel traffic from an address that is not bound to the tunnel.
        UnboundSource => "unbound_source": "tunnel traffic from an address not bound to the tunnel",
        /// Tunnel traffic while the other end has not bound yet.
        HalfBound => "half_bound": "tunnel traffic before the other end bound",
        /// RELAY_DIR while `max_bindings` tunnels are relayed.
        TableFull => "table_full": "binding table full",
    }
}

/// Drops per [`DropReason`].
pub type Drops = Counters<DropReason, { <DropReason as Reason>::COUNT }>;

/// What the relay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handled.
    pub datagrams: u64,
    /// RELAY_DIRs that opened (or re-keyed) a binding.
    pub relay_dirs: u64,
    /// Retransmitted RELAY_DIRs acknowledged again.
    pub relay_dir_repeats: u64,
    /// Valid RELAY_BINDs.
    pub binds: u64,
    /// Datagrams forwarded.
    pub forwarded: u64,
    /// Bytes forwarded (UDP payload).
    pub forwarded_bytes: u64,
    /// Bindings expired for idleness.
    pub expired: u64,
}

#[derive(Debug)]
struct Binding {
    key: Key,
    auth: Authenticator,
    lifetime: Duration,
    last_active: Instant,
    /// Bound addresses, indexed by role: initiator, responder.
    ends: [Option<SocketAddrV4>; 2],
    /// RELAY_BIND replay windows, indexed by role: each end is its own
    /// sender of `K_relay` with its own seq (§5 "Replay").
    windows: [ReplayWindow; 2],
}

fn role_index(role: Role) -> Option<usize> {
    match role {
        Role::Initiator => Some(0),
        Role::Responder => Some(1),
        Role::Unknown(_) => None,
    }
}

/// A snapshot of one binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingInfo {
    /// The initiator's bound address.
    pub initiator: Option<SocketAddrV4>,
    /// The responder's bound address.
    pub responder: Option<SocketAddrV4>,
    /// The idle lifetime.
    pub lifetime: Duration,
}

/// The relay's state. See the [module docs](self).
#[derive(Debug)]
pub struct Relay {
    settings: Settings,
    auth: Authenticator,
    /// RELAY_DIRs from the DC (§2: per sender and key): one for any
    /// address, or one per configured DC.
    dc_window: ReplayWindow,
    dc_windows: HashMap<SocketAddrV4, ReplayWindow>,
    seq: u64,
    bindings: HashMap<u32, Binding>,
    acks: VecDeque<(SocketAddrV4, u32)>,
    next_sweep: Instant,
    drops: Drops,
    stats: Stats,
}

impl Relay {
    /// A relay. `unix_nanos` is the current Unix time in nanoseconds (its
    /// RELAY_ACK sequence numbers start there, §2).
    pub fn new(config: &Config, now: Instant, unix_nanos: u64) -> Result<Relay, ConfigError> {
        let settings = config.validate()?;
        let dc_windows = settings
            .dcs
            .iter()
            .map(|dc| (*dc, ReplayWindow::new()))
            .collect();
        Ok(Relay {
            auth: Authenticator::new(&settings.key),
            settings,
            dc_window: ReplayWindow::new(),
            dc_windows,
            seq: unix_nanos,
            bindings: HashMap::new(),
            acks: VecDeque::new(),
            next_sweep: now + SWEEP_INTERVAL,
            drops: Drops::default(),
            stats: Stats::default(),
        })
    }

    /// Process one datagram received from `from`. On
    /// [`Verdict::Forward`] send `datagram` unchanged to the address given.
    /// An error is a drop, already counted in [`Relay::drops`].
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &[u8],
    ) -> Result<Verdict, DropReason> {
        self.stats.datagrams += 1;
        let r = self.handle_inner(now, from, datagram);
        match r {
            Ok(Verdict::Forward(_)) => {
                self.stats.forwarded += 1;
                self.stats.forwarded_bytes += datagram.len() as u64;
            }
            Ok(Verdict::Consumed) => {}
            Err(reason) => {
                self.drops.count(reason);
                tracing::trace!(%from, reason = reason.name(), "dropped a datagram");
            }
        }
        r
    }

    fn handle_inner(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &[u8],
    ) -> Result<Verdict, DropReason> {
        let packet = Packet::new_checked(datagram)?;
        match packet.check_header()? {
            MessageType::Data
            | MessageType::TunKeepalive
            | MessageType::TunReq
            | MessageType::TunResp
            | MessageType::Error => self.forward(now, from, packet.id()),
            MessageType::RelayBind | MessageType::RelayDir
                if packet.suite() != Suite::HmacSha256_128 =>
            {
                // Signaling with the RS is always suite 1 (§2).
                Err(Error::UnsupportedSuite.into())
            }
            MessageType::RelayBind => self.on_bind(now, from, &packet),
            MessageType::RelayDir => self.on_relay_dir(now, from, &packet),
            _ => Err(Error::UnexpectedType.into()),
        }
    }

    fn forward(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        tunnel_id: u32,
    ) -> Result<Verdict, DropReason> {
        let b = self
            .bindings
            .get_mut(&tunnel_id)
            .ok_or(Error::UnknownTunnel)?;
        let [a, z] = b.ends;
        let to = match (a, z) {
            (Some(a), other) if a == from => other,
            (other, Some(z)) if z == from => other,
            _ => return Err(DropReason::UnboundSource),
        };
        let to = to.ok_or(DropReason::HalfBound)?;
        b.last_active = now;
        Ok(Verdict::Forward(to))
    }

    fn on_bind(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        packet: &Packet<&[u8]>,
    ) -> Result<Verdict, DropReason> {
        let tunnel_id = packet.id();
        let b = self
            .bindings
            .get_mut(&tunnel_id)
            .ok_or(Error::UnknownTunnel)?;
        b.auth.verify(packet.as_ref())?;
        let repr = Repr::parse(packet)?;
        let Message::RelayBind(bind) = repr.message else {
            return Err(Error::UnexpectedType.into());
        };
        let i = role_index(bind.role).ok_or(Error::BadTlvValue)?;
        let seq = repr.header.seq;
        let window = &mut b.windows[i];
        // Only a bind newer than every one accepted for this role may move
        // the end: an older one that the window still lets through (it came
        // late, out of order) refreshes the binding but never takes the end
        // back to an address the node has left.
        let newest = seq > window.last();
        if !window.validate(seq) {
            return Err(Error::Replay.into());
        }
        b.last_active = now;
        self.stats.binds += 1;
        let moved = b.ends[i].is_some_and(|a| a != from);
        if moved && !newest {
            tracing::debug!(tunnel_id, role = ?bind.role, addr = %from, "late RELAY_BIND from an older address: binding kept");
            return Ok(Verdict::Consumed);
        }
        b.ends[i] = Some(from);
        if moved {
            tracing::info!(tunnel_id, role = ?bind.role, addr = %from, "relay end re-bound to a new address");
        } else if b.ends.iter().all(Option::is_some) {
            tracing::debug!(tunnel_id, role = ?bind.role, addr = %from, "relay bound at both ends");
        }
        Ok(Verdict::Consumed)
    }

    fn on_relay_dir(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        packet: &Packet<&[u8]>,
    ) -> Result<Verdict, DropReason> {
        if packet.id() != self.settings.id {
            return Err(Error::WrongId.into());
        }
        let window = if self.settings.dcs.is_empty() {
            &mut self.dc_window
        } else {
            self.dc_windows
                .get_mut(&from)
                .ok_or(Error::UnexpectedSource)?
        };
        self.auth.verify(packet.as_ref())?;
        let repr = Repr::parse(packet)?;
        let Message::RelayDir(dir) = repr.message else {
            return Err(Error::UnexpectedType.into());
        };
        // After the tag (only the DC's own datagrams move its window) and
        // before anything is acted on: a recorded RELAY_DIR never re-opens
        // an expired binding or takes a re-keyed one back to its old key.
        if !window.validate(repr.header.seq) {
            return Err(Error::Replay.into());
        }
        let key = self.auth.unwrap_key(
            WrapLabel::RelayKey,
            dir.tunnel_id,
            repr.header.seq,
            &dir.wrapped_relay_key,
        );
        let lifetime = Duration::from_secs(dir.lifetime_secs.max(1).into());
        match self.bindings.get_mut(&dir.tunnel_id) {
            Some(b) if b.key == key => {
                // A retransmission: acknowledge again, keep the bindings.
                b.lifetime = lifetime;
                b.last_active = now;
                self.stats.relay_dir_repeats += 1;
            }
            existing => {
                if existing.is_none() && self.bindings.len() >= self.settings.max_bindings {
                    tracing::warn!(
                        tunnel_id = dir.tunnel_id,
                        max_bindings = self.settings.max_bindings,
                        "RELAY_DIR not acknowledged: the binding table is full; raise max_bindings"
                    );
                    return Err(DropReason::TableFull);
                }
                // New, or the same id with another key (a restarted DC): fresh slot.
                self.bindings.insert(
                    dir.tunnel_id,
                    Binding {
                        auth: Authenticator::new(&key),
                        key,
                        lifetime,
                        last_active: now,
                        ends: [None, None],
                        windows: [ReplayWindow::new(), ReplayWindow::new()],
                    },
                );
                self.stats.relay_dirs += 1;
                tracing::debug!(
                    tunnel_id = dir.tunnel_id,
                    lifetime_secs = dir.lifetime_secs,
                    "RELAY_DIR"
                );
            }
        }
        self.acks.push_back((from, dir.tunnel_id));
        Ok(Verdict::Consumed)
    }

    /// When [`Relay::handle_timeout`] must run next (`None` while nothing is relayed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.bindings.is_empty()).then_some(self.next_sweep)
    }

    /// Expire idle bindings.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let before = self.bindings.len();
        self.bindings
            .retain(|_, b| now < b.last_active + b.lifetime);
        let expired = (before - self.bindings.len()) as u64;
        if expired > 0 {
            self.stats.expired += expired;
            tracing::debug!(expired, "idle relay bindings expired");
        }
    }

    /// The next datagram to send (RELAY_ACK), written to the front of `buf`
    /// (give it [`ntm_proto::wire::MAX_SIGNALING_LEN`] bytes). Call until
    /// `None` after every input.
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some((dst, tunnel_id)) = self.acks.pop_front() {
            self.seq += 1;
            let repr = Repr::new(
                Header {
                    id: self.settings.id,
                    seq: self.seq,
                    response_required: false,
                },
                Message::RelayAck(RelayAck { tunnel_id }),
            );
            match repr.emit_sealed(buf, &self.auth) {
                Ok(len) => return Some(Transmit { dst, len }),
                Err(e) => {
                    tracing::warn!(error = %e, "dropping an outgoing datagram: give poll_transmit a larger buffer")
                }
            }
        }
        None
    }

    /// The checked configuration.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A binding.
    pub fn binding(&self, tunnel_id: u32) -> Option<BindingInfo> {
        self.bindings.get(&tunnel_id).map(|b| BindingInfo {
            initiator: b.ends[0],
            responder: b.ends[1],
            lifetime: b.lifetime,
        })
    }

    /// Every binding with its tunnel id, in no particular order.
    pub fn bindings(&self) -> impl Iterator<Item = (u32, BindingInfo)> + '_ {
        self.bindings.iter().map(|(id, b)| {
            (
                *id,
                BindingInfo {
                    initiator: b.ends[0],
                    responder: b.ends[1],
                    lifetime: b.lifetime,
                },
            )
        })
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether nothing is relayed.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Activity counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Drops by reason.
    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    /// One line for the statistics log.
    pub fn stats_line(&self) -> String {
        let s = &self.stats;
        let both = self
            .bindings
            .values()
            .filter(|b| b.ends.iter().all(Option::is_some))
            .count();
        format!(
            "bindings={} bound_both={both} | datagrams={} relay_dirs={} relay_dir_repeats={} binds={} forwarded={} forwarded_bytes={} expired={} | drops: {}",
            self.bindings.len(),
            s.datagrams,
            s.relay_dirs,
            s.relay_dir_repeats,
            s.binds,
            s.forwarded,
            s.forwarded_bytes,
            s.expired,
            self.drops
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntm_proto::wire::{RelayBind, RelayDir, MAX_SIGNALING_LEN};

    const DC: &str = "198.18.0.2:7710";
    const A: &str = "198.18.0.10:40000";
    const Z: &str = "198.18.0.11:40001";
    const K_RS: [u8; 32] = [0x33; 32];
    const K_RELAY: [u8; 32] = [0x44; 32];

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn relay(now: Instant) -> Relay {
        let mut c = Config::new(1, &Key::from_bytes(K_RS));
        c.max_bindings = 2;
        Relay::new(&c, now, 1_000).unwrap()
    }

    fn relay_dir(tunnel_id: u32, seq: u64, k_relay: [u8; 32], rs_id: u32) -> Vec<u8> {
        let auth = Authenticator::new(&Key::from_bytes(K_RS));
        let repr = Repr::new(
            Header {
                id: rs_id,
                seq,
                response_required: true,
            },
            Message::RelayDir(RelayDir {
                tunnel_id,
                wrapped_relay_key: auth.wrap_key(
                    WrapLabel::RelayKey,
                    tunnel_id,
                    seq,
                    &Key::from_bytes(k_relay),
                ),
                lifetime_secs: 10,
            }),
        );
        let mut b = vec![0; MAX_SIGNALING_LEN];
        let n = repr.emit_sealed(&mut b, &auth).unwrap();
        b.truncate(n);
        b
    }

    fn bind(tunnel_id: u32, seq: u64, role: Role, k_relay: [u8; 32]) -> Vec<u8> {
        let repr = Repr::new(
            Header {
                id: tunnel_id,
                seq,
                response_required: false,
            },
            Message::RelayBind(RelayBind { role }),
        );
        let mut b = vec![0; MAX_SIGNALING_LEN];
        let n = repr
            .emit_sealed(&mut b, &Authenticator::new(&Key::from_bytes(k_relay)))
            .unwrap();
        b.truncate(n);
        b
    }

    /// A tunnel datagram: header with the id, some (suite-2, encrypted)
    /// body, a tag the RS never checks.
    fn data(tunnel_id: u32) -> Vec<u8> {
        let mut d = vec![0u8; 60];
        let mut p = Packet::new_unchecked(&mut d[..]);
        p.set_version(ntm_proto::wire::VERSION);
        p.set_msg_type(MessageType::Data);
        p.set_suite(Suite::Aes256Gcm);
        p.set_id(tunnel_id);
        p.set_seq(1);
        d
    }

    fn acks(r: &mut Relay, now: Instant) -> Vec<(SocketAddrV4, u32)> {
        let auth = Authenticator::new(&Key::from_bytes(K_RS));
        let mut buf = [0u8; MAX_SIGNALING_LEN];
        let mut out = Vec::new();
        while let Some(t) = r.poll_transmit(now, &mut buf) {
            let d = &buf[..t.len];
            auth.verify(d).unwrap();
            let p = Packet::new_checked(d).unwrap();
            let repr = Repr::parse(&p).unwrap();
            assert_eq!(repr.header.id, 1);
            let Message::RelayAck(a) = repr.message else {
                panic!("not an ack")
            };
            out.push((t.dst, a.tunnel_id));
        }
        out
    }

    /// With several DCs, RELAY_DIR comes only from a listed DC, and each
    /// DC's seq is checked in a window of its own: DC2's stream, far below
    /// DC1's, still passes, and a replay of either is refused.
    #[test]
    fn several_dcs_have_a_window_each() {
        const DC2: &str = "198.18.0.4:7710";
        let now = Instant::now();
        let mut c = Config::new(1, &Key::from_bytes(K_RS));
        c.dcs = vec![addr(DC), addr(DC2)];
        let mut r = Relay::new(&c, now, 1_000).unwrap();
        let from_dc1 = relay_dir(77, 1_000_000, K_RELAY, 1);
        assert_eq!(r.handle(now, addr(DC), &from_dc1), Ok(Verdict::Consumed));
        assert_eq!(
            r.handle(now, addr(DC2), &relay_dir(78, 10, K_RELAY, 1)),
            Ok(Verdict::Consumed)
        );
        assert_eq!(acks(&mut r, now), vec![(addr(DC), 77), (addr(DC2), 78)]);
        assert_eq!(
            r.handle(now, addr(DC), &from_dc1),
            Err(Error::Replay.into())
        );
        assert_eq!(
            r.handle(now, addr("198.18.0.9:7710"), &relay_dir(79, 20, K_RELAY, 1)),
            Err(Error::UnexpectedSource.into())
        );
        // One DC from any address, as before: DC2's far lower seq is stale.
        let mut one = relay(now);
        assert!(one.handle(now, addr(DC), &from_dc1).is_ok());
        assert_eq!(
            one.handle(now, addr(DC2), &relay_dir(78, 10, K_RELAY, 1)),
            Err(Error::Replay.into())
        );
    }

    #[test]
    fn relay_dir_is_acked_idempotently_and_binds_forward() {
        let now = Instant::now();
        let mut r = relay(now);
        assert_eq!(
            r.handle(now, addr(DC), &relay_dir(77, 10, K_RELAY, 1)),
            Ok(Verdict::Consumed)
        );
        assert_eq!(acks(&mut r, now), vec![(addr(DC), 77)]);
        // Retransmission (fresh seq, same key): acked again, still one binding.
        assert_eq!(
            r.handle(now, addr(DC), &relay_dir(77, 11, K_RELAY, 1)),
            Ok(Verdict::Consumed)
        );
        assert_eq!(acks(&mut r, now), vec![(addr(DC), 77)]);
        assert_eq!(
            (r.len(), r.stats().relay_dirs, r.stats().relay_dir_repeats),
            (1, 1, 1)
        );

        // Half bound: the initiator's traffic has nowhere to go yet.
        assert_eq!(
            r.handle(now, addr(A), &bind(77, 1, Role::Initiator, K_RELAY)),
            Ok(Verdict::Consumed)
        );
        assert_eq!(
            r.handle(now, addr(A), &data(77)),
            Err(DropReason::HalfBound)
        );
        assert_eq!(
            r.handle(now, addr(Z), &bind(77, 1, Role::Responder, K_RELAY)),
            Ok(Verdict::Consumed)
        );
        assert_eq!(
            r.handle(now, addr(A), &data(77)),
            Ok(Verdict::Forward(addr(Z)))
        );
        assert_eq!(
            r.handle(now, addr(Z), &data(77)),
            Ok(Verdict::Forward(addr(A)))
        );
        assert_eq!(r.stats().forwarded, 2);
        assert_eq!(
            r.binding(77),
            Some(BindingInfo {
                initiator: Some(addr(A)),
                responder: Some(addr(Z)),
                lifetime: Duration::from_secs(10)
            })
        );
        // A retransmitted RELAY_DIR keeps both bindings.
        r.handle(now, addr(DC), &relay_dir(77, 12, K_RELAY, 1))
            .unwrap();
        assert_eq!(
            r.handle(now, addr(A), &data(77)),
            Ok(Verdict::Forward(addr(Z)))
        );
    }

    #[test]
    fn everything_else_is_dropped_by_reason() {
        let now = Instant::now();
        let mut r = relay(now);
        r.handle(now, addr(DC), &relay_dir(77, 10, K_RELAY, 1))
            .unwrap();
        let other = addr("198.18.0.99:1");
        // Unknown tunnel, for data and for binds.
        assert_eq!(
            r.handle(now, addr(A), &data(78)),
            Err(Error::UnknownTunnel.into())
        );
        assert_eq!(
            r.handle(now, addr(A), &bind(78, 1, Role::Initiator, K_RELAY)),
            Err(Error::UnknownTunnel.into())
        );
        // Bind with the wrong key.
        assert_eq!(
            r.handle(now, addr(A), &bind(77, 1, Role::Initiator, [0x55; 32])),
            Err(Error::BadTag.into())
        );
        r.handle(now, addr(A), &bind(77, 5, Role::Initiator, K_RELAY))
            .unwrap();
        r.handle(now, addr(Z), &bind(77, 5, Role::Responder, K_RELAY))
            .unwrap();
        // A replayed bind from elsewhere does not hijack the end.
        assert_eq!(
            r.handle(now, other, &bind(77, 5, Role::Initiator, K_RELAY)),
            Err(Error::Replay.into())
        );
        assert_eq!(
            r.handle(now, other, &data(77)),
            Err(DropReason::UnboundSource)
        );
        // RELAY_DIR with a bad tag, the wrong RS id, a replayed seq.
        let mut forged = relay_dir(79, 20, K_RELAY, 1);
        forged[20] ^= 1;
        assert_eq!(r.handle(now, addr(DC), &forged), Err(Error::BadTag.into()));
        assert_eq!(
            r.handle(now, addr(DC), &relay_dir(79, 21, K_RELAY, 2)),
            Err(Error::WrongId.into())
        );
        assert_eq!(
            r.handle(now, addr(DC), &relay_dir(79, 10, K_RELAY, 1)),
            Err(Error::Replay.into())
        );
        // Malformed.
        assert_eq!(
            r.handle(now, addr(A), &[1, 1, 0]),
            Err(Error::Truncated.into())
        );
        let mut v1 = data(77);
        v1[0] = 1;
        assert_eq!(r.handle(now, addr(A), &v1), Err(Error::BadVersion.into()));
        // A node message type has no business here.
        let mut reg = data(77);
        reg[1] = 0x12;
        assert_eq!(
            r.handle(now, addr(A), &reg),
            Err(Error::UnexpectedType.into())
        );
        // Table bound (2): a third tunnel is not acknowledged.
        acks(&mut r, now);
        r.handle(now, addr(DC), &relay_dir(80, 30, K_RELAY, 1))
            .unwrap();
        assert_eq!(
            r.handle(now, addr(DC), &relay_dir(81, 31, K_RELAY, 1)),
            Err(DropReason::TableFull)
        );
        assert_eq!(acks(&mut r, now), vec![(addr(DC), 80)]);

        let d = r.drops();
        assert_eq!(d.get(Error::UnknownTunnel.into()), 2);
        assert_eq!(d.get(Error::BadTag.into()), 2);
        assert_eq!(d.get(Error::Replay.into()), 2);
        assert_eq!(d.get(DropReason::UnboundSource), 1);
        assert_eq!(d.get(DropReason::TableFull), 1);
        assert_eq!(d.total(), 12);
        assert!(
            r.stats_line().contains("table_full=1"),
            "{}",
            r.stats_line()
        );
    }

    /// Regression (issue 8, replay of DC-RS signaling): a RELAY_DIR recorded
    /// on the DC-RS path and played back is dropped as a replay. Without the
    /// DC window it would take a binding that a restarted DC re-keyed back to
    /// the old `K_relay` (unbinding both ends), and re-open a binding that
    /// had expired.
    #[test]
    fn a_recorded_relay_dir_played_back_is_refused() {
        const K_NEW: [u8; 32] = [0x66; 32];
        let t0 = Instant::now();
        let mut r = relay(t0);
        let recorded = relay_dir(77, 10, K_RELAY, 1);
        r.handle(t0, addr(DC), &recorded).unwrap();
        assert_eq!(acks(&mut r, t0), vec![(addr(DC), 77)]);
        // The DC directs the id again with a new key; both ends bind with it.
        r.handle(t0, addr(DC), &relay_dir(77, 11, K_NEW, 1))
            .unwrap();
        assert_eq!(acks(&mut r, t0), vec![(addr(DC), 77)]);
        r.handle(t0, addr(A), &bind(77, 1, Role::Initiator, K_NEW))
            .unwrap();
        r.handle(t0, addr(Z), &bind(77, 1, Role::Responder, K_NEW))
            .unwrap();

        // Played back from the DC's address and from anywhere else.
        for from in [addr(DC), addr("198.18.0.99:7710")] {
            assert_eq!(r.handle(t0, from, &recorded), Err(Error::Replay.into()));
        }
        assert!(acks(&mut r, t0).is_empty(), "nothing acknowledged");
        let b = r.binding(77).unwrap();
        assert_eq!((b.initiator, b.responder), (Some(addr(A)), Some(addr(Z))));
        assert_eq!(
            r.handle(t0, addr(A), &data(77)),
            Ok(Verdict::Forward(addr(Z)))
        );
        // Still the new key.
        assert_eq!(
            r.handle(t0, addr(A), &bind(77, 2, Role::Initiator, K_NEW)),
            Ok(Verdict::Consumed)
        );
        assert_eq!((r.stats().relay_dirs, r.stats().relay_dir_repeats), (2, 0));

        // Once the binding expired, the recording does not re-open it.
        let mut now = t0;
        while let Some(t) = r.poll_timeout() {
            now = now.max(t);
            r.handle_timeout(now);
            assert!(now < t0 + Duration::from_secs(60), "never expired");
        }
        assert!(r.is_empty());
        assert_eq!(
            r.handle(now, addr(DC), &recorded),
            Err(Error::Replay.into())
        );
        assert!(r.is_empty() && acks(&mut r, now).is_empty());
        assert_eq!(r.drops().get(Error::Replay.into()), 3);
        assert_eq!(r.drops().total(), 3);
    }

    /// Regression (issue 8, relay hijack): a RELAY_BIND recorded and played
    /// back from another address never moves the bound end; nor does an
    /// older bind that the window has not seen. Each role has its own window.
    #[test]
    fn a_recorded_relay_bind_played_back_from_another_address_does_not_move_the_binding() {
        let now = Instant::now();
        let mut r = relay(now);
        r.handle(now, addr(DC), &relay_dir(77, 10, K_RELAY, 1))
            .unwrap();
        let recorded = bind(77, 5, Role::Initiator, K_RELAY);
        r.handle(now, addr(A), &recorded).unwrap();
        // The responder counts its own seq: the same number is no replay.
        r.handle(now, addr(Z), &bind(77, 5, Role::Responder, K_RELAY))
            .unwrap();
        let x = addr("198.18.0.99:40000");
        assert_eq!(r.handle(now, x, &recorded), Err(Error::Replay.into()));
        // Also after newer binds of the real end.
        r.handle(now, addr(A), &bind(77, 6, Role::Initiator, K_RELAY))
            .unwrap();
        assert_eq!(r.handle(now, x, &recorded), Err(Error::Replay.into()));
        assert_eq!(r.binding(77).unwrap().initiator, Some(addr(A)));
        assert_eq!(
            r.handle(now, addr(A), &data(77)),
            Ok(Verdict::Forward(addr(Z)))
        );
        assert_eq!(r.handle(now, x, &data(77)), Err(DropReason::UnboundSource));

        // A late bind the RS never saw (older than the newest, inside the
        // window) keeps the binding alive but does not move it.
        assert_eq!(
            r.handle(now, x, &bind(77, 3, Role::Initiator, K_RELAY)),
            Ok(Verdict::Consumed)
        );
        assert_eq!(r.binding(77).unwrap().initiator, Some(addr(A)));
        // A newer one from a new address (the node moved) does move it, and
        // its recording played back from the old address does not move it back.
        let moved = addr("198.18.0.12:40002");
        let roam = bind(77, 7, Role::Initiator, K_RELAY);
        r.handle(now, moved, &roam).unwrap();
        assert_eq!(r.binding(77).unwrap().initiator, Some(moved));
        assert_eq!(r.handle(now, addr(A), &roam), Err(Error::Replay.into()));
        assert_eq!(r.binding(77).unwrap().initiator, Some(moved));
        assert_eq!(
            r.handle(now, addr(Z), &data(77)),
            Ok(Verdict::Forward(moved))
        );
        assert_eq!(r.drops().get(Error::Replay.into()), 3);
    }

    #[test]
    fn signaling_to_the_rs_must_be_suite_1() {
        let now = Instant::now();
        let mut r = relay(now);
        let as_suite_2 = |mut d: Vec<u8>, key: [u8; 32]| {
            d[3] = Suite::Aes256Gcm.into();
            Authenticator::new(&Key::from_bytes(key))
                .seal(&mut d)
                .unwrap();
            d
        };
        assert_eq!(
            r.handle(
                now,
                addr(DC),
                &as_suite_2(relay_dir(77, 10, K_RELAY, 1), K_RS)
            ),
            Err(Error::UnsupportedSuite.into())
        );
        assert!(r.is_empty() && acks(&mut r, now).is_empty());
        r.handle(now, addr(DC), &relay_dir(77, 11, K_RELAY, 1))
            .unwrap();
        assert_eq!(
            r.handle(
                now,
                addr(A),
                &as_suite_2(bind(77, 1, Role::Initiator, K_RELAY), K_RELAY)
            ),
            Err(Error::UnsupportedSuite.into())
        );
        assert_eq!(r.binding(77).unwrap().initiator, None);
        assert_eq!(r.drops().get(Error::UnsupportedSuite.into()), 2);
    }

    #[test]
    fn a_new_key_for_a_known_id_starts_a_fresh_binding() {
        let now = Instant::now();
        let mut r = relay(now);
        r.handle(now, addr(DC), &relay_dir(77, 10, K_RELAY, 1))
            .unwrap();
        r.handle(now, addr(A), &bind(77, 1, Role::Initiator, K_RELAY))
            .unwrap();
        r.handle(now, addr(DC), &relay_dir(77, 11, [0x66; 32], 1))
            .unwrap();
        assert_eq!(r.binding(77).unwrap().initiator, None);
        assert_eq!(
            r.handle(now, addr(A), &bind(77, 2, Role::Initiator, K_RELAY)),
            Err(Error::BadTag.into())
        );
        r.handle(now, addr(A), &bind(77, 1, Role::Initiator, [0x66; 32]))
            .unwrap();
    }

    #[test]
    fn idle_bindings_expire_and_traffic_keeps_them() {
        let t0 = Instant::now();
        let mut r = relay(t0);
        assert_eq!(r.poll_timeout(), None);
        r.handle(t0, addr(DC), &relay_dir(77, 10, K_RELAY, 1))
            .unwrap();
        r.handle(t0, addr(A), &bind(77, 1, Role::Initiator, K_RELAY))
            .unwrap();
        r.handle(t0, addr(Z), &bind(77, 1, Role::Responder, K_RELAY))
            .unwrap();
        let mut now = t0;
        // Traffic every 5 s for 30 s keeps the 10 s binding alive.
        for _ in 0..6 {
            now += Duration::from_secs(5);
            r.handle_timeout(now);
            assert_eq!(
                r.handle(now, addr(A), &data(77)),
                Ok(Verdict::Forward(addr(Z)))
            );
        }
        // Then silence.
        while let Some(t) = r.poll_timeout() {
            now = now.max(t);
            r.handle_timeout(now);
            assert!(now < t0 + Duration::from_secs(60), "never expired");
        }
        assert!(r.is_empty());
        assert_eq!(r.stats().expired, 1);
        assert!(now >= t0 + Duration::from_secs(40));
        assert_eq!(
            r.handle(now, addr(A), &data(77)),
            Err(Error::UnknownTunnel.into())
        );
    }

    #[test]
    fn random_and_mutated_datagrams_never_panic_and_every_drop_is_counted() {
        let now = Instant::now();
        let mut r = relay(now);
        r.handle(now, addr(DC), &relay_dir(77, 10, K_RELAY, 1))
            .unwrap();
        let valid = [
            relay_dir(78, 11, K_RELAY, 1),
            bind(77, 1, Role::Initiator, K_RELAY),
            data(77),
        ];
        // xorshift: deterministic and dependency-free.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut errors = 0u64;
        let mut buf = [0u8; MAX_SIGNALING_LEN];
        for i in 0..20_000u64 {
            let d: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 600) as usize;
                let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if len >= 4 && i % 4 == 0 {
                    d[0] = ntm_proto::wire::VERSION;
                    d[3] = 1;
                    d[1] = [0x01, 0x02, 0x30, 0x31, 0x40, 0x42, 0x7f][(next() % 7) as usize];
                }
                d
            } else {
                let mut d = valid[(i as usize / 2) % valid.len()].clone();
                for _ in 0..1 + next() % 3 {
                    let at = (next() as usize) % d.len();
                    d[at] ^= 1 << (next() % 8);
                }
                d
            };
            if r.handle(now, addr(A), &d).is_err() {
                errors += 1;
            }
            while r.poll_transmit(now, &mut buf).is_some() {}
        }
        assert!(errors > 19_000, "{errors}");
        assert_eq!(r.drops().total(), errors);
        assert!(r.len() <= 2);
    }
}
