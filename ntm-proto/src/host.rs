//! What a party that carries its users' packets does around its protocol
//! [`Endpoint`]: one [`Host`] per node identity (the software node has one,
//! the adapter one per GN, §6), sans-IO like the endpoint it owns.
//!
//! The host keeps what the endpoint does not:
//!
//! * the names: peer VIP → FQDN, learned from direction answers and tunnels,
//!   so that a packet to the VIP of an expired tunnel sets it up again by
//!   name (§5 "Data");
//! * the DNS resolutions and the held packets waiting on each direction
//!   request, and the mapping of its result to a DNS outcome (§6 "DNS": an A
//!   record, NXDOMAIN for NOT_FOUND, SERVFAIL otherwise);
//! * the hold queue (§6 "Data": packets to a VIP without a tunnel wait while
//!   it is set up, then go through it or are given up);
//! * how long each tunnel took from our first request to being up.
//!
//! It has no sockets and no clock, like quinn-proto's connection: the
//! driver feeds it datagrams ([`Host::handle`]), packets to peers
//! ([`Host::route`], [`Host::hold`]), DNS resolutions ([`Host::resolve`]) and
//! time ([`Host::handle_timeout`]), then drains it in this order until
//! nothing more comes out:
//!
//! 1. [`Host::poll_event`]: the endpoint's events (after the host's own
//!    bookkeeping), DNS answers for the driver's stub, held packets given up;
//! 2. [`Host::poll_transmit`]: signaling datagrams to send;
//! 3. [`Host::poll_released`]: held packets whose tunnel came up, to send
//!    with [`Host::send_data`] (after the TUN_RESP that brought it up).
//!
//! and sleeps until [`Host::poll_timeout`]. The DNS stub stays with the
//! driver (the node's answers UDP clients, the adapter's GNs over UDP and
//! TCP): its resolutions come in through [`Host::resolve`] and their outcomes
//! go back as [`HostEvent::Answer`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::dns::{PendingId, ResolveOutcome};
use crate::hold::{HoldFull, HoldQueue};
use crate::node::{DirError, Endpoint, Event, Received, ReqId};
use crate::{Error, Status, Transmit};

/// Bound of the VIP → FQDN memory used to set expired tunnels up again.
pub const MAX_NAMES: usize = 4096;
/// Bound of the set-up timers (names asked for and not yet up).
pub const MAX_TIMERS: usize = 1024;

crate::reasons! {
    /// Why [`Host::route`] has no way to a peer VIP.
    pub enum NoWay {
        /// We are not registered with the DC.
        NotRegistered => "not_registered",
        /// No DNS answer or tunnel ever named this VIP, or the DC cannot be
        /// asked for its name.
        NoRoute => "no_route",
    }
}

/// What to do with a packet to a peer VIP ([`Host::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Its tunnel is up and nothing waits before it: [`Host::send_data`].
    Send,
    /// Its tunnel is being set up, or packets wait before it: [`Host::hold`].
    Hold,
    /// Its tunnel had expired and is being set up again by name (a new
    /// direction request): [`Host::hold`].
    Connected,
}

/// What the driver acts on ([`Host::poll_event`]).
#[derive(Debug, Clone)]
pub enum HostEvent {
    /// An event of the endpoint, after the host noted what it needs
    /// (names, answers, set-up times, packets to release).
    Endpoint(Event),
    /// The outcome of a resolution given to [`Host::resolve`]: for the DNS stub.
    Answer {
        /// The stub's pending resolution.
        pending_id: PendingId,
        /// Its outcome.
        outcome: ResolveOutcome,
    },
    /// Held packets to `vip` whose tunnel will not come: dropped (the
    /// adapter answers each with ICMP host unreachable).
    SetupFailed {
        /// The peer VIP.
        vip: Ipv4Addr,
        /// The packets, as given to [`Host::hold`], oldest first.
        packets: Vec<Vec<u8>>,
    },
}

/// The DNS outcome of a direction request's result (§6 "DNS").
pub fn outcome(result: &Result<Ipv4Addr, DirError>) -> ResolveOutcome {
    match result {
        Ok(vip) => ResolveOutcome::Vip(*vip),
        Err(DirError::Status(Status::NotFound)) => ResolveOutcome::NotFound,
        Err(DirError::TimedOut) => ResolveOutcome::Timeout,
        Err(_) => ResolveOutcome::Failed,
    }
}

/// One node identity's endpoint and the state around it. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Host {
    ep: Endpoint,
    hold: HoldQueue,
    /// Peer VIP → FQDN (at most [`MAX_NAMES`]).
    names: HashMap<Ipv4Addr, String>,
    /// DNS resolutions waiting on a direction request.
    dns_by_req: HashMap<ReqId, Vec<PendingId>>,
    /// Direction requests started by a packet to a known VIP.
    pkt_by_req: HashMap<ReqId, Ipv4Addr>,
    /// When we first asked for a name not yet up.
    connect_at: HashMap<String, Instant>,
    /// From our request to the tunnel being up, by tunnel id.
    setup: HashMap<u32, Duration>,
    /// The VIP of the last registration (a renewal is only logged at debug).
    vip: Option<Ipv4Addr>,
    events: VecDeque<HostEvent>,
    /// Peer VIPs whose tunnel came up: their held packets go next.
    release: VecDeque<Ipv4Addr>,
}

impl Host {
    /// `ep`, with packets held in `hold`.
    pub fn new(ep: Endpoint, hold: HoldQueue) -> Host {
        Host {
            ep,
            hold,
            names: HashMap::new(),
            dns_by_req: HashMap::new(),
            pkt_by_req: HashMap::new(),
            connect_at: HashMap::new(),
            setup: HashMap::new(),
            vip: None,
            events: VecDeque::new(),
            release: VecDeque::new(),
        }
    }

    /// The endpoint (registration, tunnels, drop counters).
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// Whether `datagram` is for this host's endpoint ([`Endpoint::claims`]):
    /// how a driver with one host per GN on one socket picks the host.
    pub fn claims(&self, from: SocketAddrV4, datagram: &[u8]) -> bool {
        self.ep.claims(from, datagram)
    }

    /// The endpoint, for the inputs the host has nothing to add to
    /// (activity from a data plane, a new local address, closing).
    pub fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.ep
    }

    /// Packets held now.
    pub fn held(&self) -> usize {
        self.hold.len()
    }

    /// The FQDN last seen for a peer VIP.
    pub fn name_of(&self, vip: Ipv4Addr) -> Option<&str> {
        self.names.get(&vip).map(String::as_str)
    }

    /// Every peer VIP → FQDN remembered (at most [`MAX_NAMES`]), for a
    /// driver that keeps them across its own restart.
    pub fn names(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> + '_ {
        self.names.iter().map(|(v, f)| (*v, f.as_str()))
    }

    /// Remembers that `vip` was `fqdn`'s (what [`Host::names`] gave a
    /// previous run), so that a packet to `vip` sets a tunnel up by name
    /// (§5 "Data"). A name that is not a valid FQDN is refused; beyond
    /// [`MAX_NAMES`] it is not kept. A direction answer or tunnel naming the
    /// VIP later replaces it.
    pub fn learn_name(&mut self, vip: Ipv4Addr, fqdn: &str) -> crate::Result<()> {
        crate::wire::validate_fqdn(fqdn.as_bytes())?;
        self.remember(vip, fqdn);
        Ok(())
    }

    /// How long tunnel `tunnel_id` took from our first request for its peer
    /// to being up; `None` when the peer asked for it (or it is not up).
    pub fn setup_time(&self, tunnel_id: u32) -> Option<Duration> {
        self.setup.get(&tunnel_id).copied()
    }

    /// A new identity: `ep` replaces the endpoint (close the old one and
    /// drain it first), and what was learned or asked under the old one is
    /// forgotten. Held packets stay (given up at the next poll, their
    /// set-ups being gone).
    pub fn replace_endpoint(&mut self, ep: Endpoint) {
        self.ep = ep;
        self.vip = None;
        self.names.clear();
        self.dns_by_req.clear();
        self.pkt_by_req.clear();
        self.connect_at.clear();
        self.setup.clear();
    }

    /// The DNS stub was replaced: the answers the old one awaited are not
    /// owed any more.
    pub fn forget_resolutions(&mut self) {
        self.dns_by_req.clear();
    }

    /// New hold limits: what is held moves to `hold`, oldest first; returns
    /// how many packets it refused (dropped).
    pub fn set_hold(&mut self, now: Instant, mut hold: HoldQueue) -> usize {
        let mut refused = 0;
        for dst in self.hold.destinations() {
            for p in self.hold.take(dst) {
                if hold.push(now, dst, &p).is_err() {
                    refused += 1;
                }
            }
        }
        self.hold = hold;
        refused
    }

    // ----- inputs -------------------------------------------------------

    /// A datagram from the network ([`Endpoint::handle`]; drops are counted
    /// by reason in [`Endpoint::drops`]).
    pub fn handle<'a>(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        datagram: &'a mut [u8],
    ) -> crate::Result<Received<'a>> {
        self.ep.handle(now, from, datagram)
    }

    /// Runs the endpoint's timers; returns how many held packets waited too
    /// long and were dropped.
    pub fn handle_timeout(&mut self, now: Instant) -> usize {
        self.ep.handle_timeout(now);
        self.hold.expire(now)
    }

    /// A DNS resolution of `fqdn` for the stub's `pending_id`: a direction
    /// request, answered later as [`HostEvent::Answer`]. When the DC cannot be
    /// asked, the answer (NXDOMAIN for a name no node can have, SERVFAIL
    /// otherwise) is queued at once and the error returned.
    pub fn resolve(
        &mut self,
        now: Instant,
        fqdn: &str,
        pending_id: PendingId,
    ) -> Result<ReqId, Error> {
        match self.connect(now, fqdn) {
            Ok(req) => {
                self.dns_by_req.entry(req).or_default().push(pending_id);
                Ok(req)
            }
            Err(e) => {
                let outcome = if e == Error::BadFqdn {
                    ResolveOutcome::NotFound
                } else {
                    ResolveOutcome::Failed
                };
                self.events.push_back(HostEvent::Answer {
                    pending_id,
                    outcome,
                });
                Err(e)
            }
        }
    }

    /// What to do with a packet to the peer VIP `dst` (§5 "Data", §6
    /// "Data"): send it, hold it behind the packets already waiting (to keep
    /// their order) or while its tunnel is set up, or set an expired tunnel
    /// up again by the name last seen for `dst`.
    pub fn route(&mut self, now: Instant, dst: Ipv4Addr) -> Result<Way, NoWay> {
        if self.hold.holds(dst) {
            return Ok(Way::Hold);
        }
        match self.ep.tunnel_for_vip(dst) {
            Some(t) if t.up => return Ok(Way::Send),
            Some(_) => return Ok(Way::Hold),
            None => {}
        }
        if self.pkt_by_req.values().any(|v| *v == dst) {
            return Ok(Way::Hold);
        }
        if self.ep.registration().is_none() {
            return Err(NoWay::NotRegistered);
        }
        let fqdn = self.names.get(&dst).cloned().ok_or(NoWay::NoRoute)?;
        let req = self.connect(now, &fqdn).map_err(|_| NoWay::NoRoute)?;
        tracing::info!(peer = %fqdn, vip = %dst, "setting the tunnel up again for a packet");
        self.pkt_by_req.insert(req, dst);
        Ok(Way::Connected)
    }

    /// Holds a copy of `packet` for `dst` (after [`Way::Hold`] or
    /// [`Way::Connected`]).
    pub fn hold(&mut self, now: Instant, dst: Ipv4Addr, packet: &[u8]) -> Result<(), HoldFull> {
        self.hold.push(now, dst, packet)
    }

    /// Seals the inner packet as DATA on its tunnel ([`Endpoint::send_data`]).
    pub fn send_data(
        &mut self,
        now: Instant,
        inner: &[u8],
        buf: &mut [u8],
    ) -> crate::Result<Transmit> {
        self.ep.send_data(now, inner, buf)
    }

    // ----- outputs ------------------------------------------------------

    /// The next event (see [`HostEvent`]); call until `None` after every
    /// input, before [`Host::poll_transmit`].
    pub fn poll_event(&mut self, now: Instant) -> Option<HostEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if let Some(ev) = self.ep.poll_event() {
            self.note(now, &ev);
            return Some(HostEvent::Endpoint(ev));
        }
        // Packets for peers whose set-up failed or was never started.
        let vip = self
            .hold
            .destinations()
            .into_iter()
            .find(|d| !self.setup_pending(*d))?;
        Some(HostEvent::SetupFailed {
            vip,
            packets: self.hold.take(vip),
        })
    }

    /// The next signaling datagram, written to the front of `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.ep.poll_transmit(now, buf)
    }

    /// Packets held for a peer whose tunnel came up, oldest first: send each
    /// with [`Host::send_data`]. Call after [`Host::poll_transmit`].
    pub fn poll_released(&mut self) -> Option<(Ipv4Addr, Vec<Vec<u8>>)> {
        while let Some(vip) = self.release.pop_front() {
            let packets = self.hold.take(vip);
            if !packets.is_empty() {
                return Some((vip, packets));
            }
        }
        None
    }

    /// When [`Host::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.ep.poll_timeout(), self.hold.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    // ----- bookkeeping --------------------------------------------------

    fn connect(&mut self, now: Instant, fqdn: &str) -> Result<ReqId, Error> {
        let req = self.ep.connect(now, fqdn)?;
        if self.connect_at.len() < MAX_TIMERS {
            self.connect_at.entry(fqdn.to_owned()).or_insert(now);
        }
        Ok(req)
    }

    fn setup_pending(&self, dst: Ipv4Addr) -> bool {
        self.ep.tunnel_for_vip(dst).is_some() || self.pkt_by_req.values().any(|v| *v == dst)
    }

    fn remember(&mut self, vip: Ipv4Addr, fqdn: &str) {
        if self.names.len() < MAX_NAMES || self.names.contains_key(&vip) {
            self.names.insert(vip, fqdn.to_owned());
        }
    }

    /// What the host keeps of an endpoint event before the driver sees it.
    fn note(&mut self, now: Instant, ev: &Event) {
        match ev {
            Event::DirectionResolved { req, fqdn, result } => {
                self.on_resolved(*req, fqdn, result);
            }
            Event::TunnelAdded(t) => self.remember(t.peer_vip, &t.peer_fqdn),
            Event::TunnelUp(t) => {
                self.remember(t.peer_vip, &t.peer_fqdn);
                match self.connect_at.remove(&t.peer_fqdn) {
                    Some(at) => {
                        self.setup.insert(t.tunnel_id, now - at);
                    }
                    None => {
                        self.setup.remove(&t.tunnel_id);
                    }
                }
                self.release.push_back(t.peer_vip);
            }
            Event::TunnelDown { tunnel_id, .. } => {
                self.setup.remove(tunnel_id);
            }
            Event::Registered {
                vip,
                prefix_len,
                node_id,
                observed,
                behind_nat,
            } => {
                let fqdn = self.ep.fqdn();
                if self.vip != Some(*vip) {
                    tracing::info!(%fqdn, %vip, prefix_len, node_id, %observed, behind_nat, "registered");
                } else {
                    tracing::debug!(%fqdn, %vip, node_id, %observed, "registration renewed");
                }
                self.vip = Some(*vip);
            }
            Event::EndpointChanged {
                tunnel_id,
                endpoint,
            } => tracing::info!(tunnel_id, %endpoint, "peer moved (roaming)"),
            // The endpoint logged it, with why.
            Event::DcChanged { .. } => {}
            Event::RegistrationFailed { .. } => {}
        }
    }

    fn on_resolved(&mut self, req: ReqId, fqdn: &str, result: &Result<Ipv4Addr, DirError>) {
        match result {
            Ok(vip) => {
                tracing::info!(peer = %fqdn, %vip, "resolved");
                self.remember(*vip, fqdn);
                if self.ep.tunnel_for_vip(*vip).is_some_and(|t| t.up) {
                    // Answered from an existing tunnel: no set-up to time.
                    self.connect_at.remove(fqdn);
                }
            }
            Err(e) => {
                tracing::info!(peer = %fqdn, error = %e, "direction request failed");
                self.connect_at.remove(fqdn);
            }
        }
        let outcome = outcome(result);
        for pending_id in self.dns_by_req.remove(&req).unwrap_or_default() {
            self.events.push_back(HostEvent::Answer {
                pending_id,
                outcome,
            });
        }
        if let Some(vip) = self.pkt_by_req.remove(&req) {
            if result.is_err() {
                let packets = self.hold.take(vip);
                if !packets.is_empty() {
                    self.events
                        .push_back(HostEvent::SetupFailed { vip, packets });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Config;
    use crate::wire::Caps;
    use crate::Key;

    const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 7);

    fn unregistered(hold: HoldQueue) -> Host {
        let cfg = Config {
            fqdn: "mn.ntm.test".into(),
            key: Key::from_bytes([1; 32]),
            dc: "198.18.0.2:7710".parse().unwrap(),
            local_addr: "198.18.0.20:7700".parse().unwrap(),
            caps: Caps::NODE,
        };
        Host::new(
            Endpoint::new(cfg, Instant::now(), 1, [2; 32]).unwrap(),
            hold,
        )
    }

    #[test]
    fn direction_results_map_to_dns_outcomes() {
        let vip = Ok(PEER);
        assert_eq!(outcome(&vip), ResolveOutcome::Vip(PEER));
        let nf = Err(DirError::Status(Status::NotFound));
        assert_eq!(outcome(&nf), ResolveOutcome::NotFound);
        assert_eq!(outcome(&Err(DirError::TimedOut)), ResolveOutcome::Timeout);
        let other = Err(DirError::Status(Status::Denied));
        assert_eq!(outcome(&other), ResolveOutcome::Failed);
    }

    #[test]
    fn unregistered_refuses_and_gives_up_what_nothing_sets_up() {
        let now = Instant::now();
        let mut h = unregistered(HoldQueue::new(2, 2, Duration::from_secs(1)));
        assert_eq!(h.route(now, PEER), Err(NoWay::NotRegistered));
        // Held anyway (a driver that raced): nothing sets it up, so the
        // next poll gives it up.
        h.hold(now, PEER, &[1]).unwrap();
        assert_eq!(h.route(now, PEER), Ok(Way::Hold), "behind what waits");
        assert!(h.poll_timeout().unwrap() <= now + Duration::from_secs(1));
        let ev = std::iter::from_fn(|| h.poll_event(now)).last();
        assert!(
            matches!(&ev, Some(HostEvent::SetupFailed { vip: PEER, packets }) if packets == &[vec![1]]),
            "{ev:?}"
        );
        assert_eq!(h.held(), 0);
    }

    #[test]
    fn learned_names_are_checked_kept_and_listed() {
        let mut h = unregistered(HoldQueue::new(2, 2, Duration::from_secs(1)));
        h.learn_name(PEER, "cn.ntm.test").unwrap();
        assert_eq!(h.learn_name(PEER, "Not A Name"), Err(Error::BadFqdn));
        assert_eq!(h.name_of(PEER), Some("cn.ntm.test"));
        let all: Vec<_> = h.names().collect();
        assert_eq!(all, vec![(PEER, "cn.ntm.test")]);
    }

    #[test]
    fn new_hold_limits_keep_what_fits() {
        let now = Instant::now();
        let mut h = unregistered(HoldQueue::new(4, 4, Duration::from_secs(1)));
        for i in 0..3 {
            h.hold(now, PEER, &[i]).unwrap();
        }
        assert_eq!(
            h.set_hold(now, HoldQueue::new(2, 2, Duration::from_secs(1))),
            1
        );
        assert_eq!(h.held(), 2);
        assert_eq!(h.handle_timeout(now + Duration::from_secs(1)), 2, "expired");
    }
}
