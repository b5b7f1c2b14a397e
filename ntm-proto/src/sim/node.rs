//! A node [`Endpoint`] as a simulated host, and the steps node tests share.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::{HostId, Party, World};
use crate::node::{DirError, DownReason, Endpoint, Event, Received, ReqId, TunnelParams};
use crate::Error;

/// An [`Endpoint`] on the network, with what it reported kept.
pub struct Node {
    /// Its host id.
    pub id: HostId,
    /// The endpoint.
    pub ep: Endpoint,
    /// Every event it raised, in order.
    pub events: Vec<Event>,
    /// The inner packets it received through tunnels.
    pub inner_rx: Vec<Vec<u8>>,
}

impl Node {
    /// `ep` at host `id`.
    pub fn new(id: HostId, ep: Endpoint) -> Node {
        Node {
            id,
            ep,
            events: Vec::new(),
            inner_rx: Vec::new(),
        }
    }

    /// The [`TunnelParams`] of each `TunnelUp` event.
    pub fn tunnel_ups(&self) -> Vec<TunnelParams> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::TunnelUp(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// The reason of each `TunnelDown` event.
    pub fn downs(&self) -> Vec<DownReason> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::TunnelDown { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    /// The (VIP, behind NAT) of each `Registered` event.
    pub fn registered(&self) -> Vec<(Ipv4Addr, bool)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Registered {
                    vip, behind_nat, ..
                } => Some((*vip, *behind_nat)),
                _ => None,
            })
            .collect()
    }

    /// The answer to `req`, once it came.
    pub fn resolved(&self, req: ReqId) -> Option<Result<Ipv4Addr, DirError>> {
        self.events.iter().find_map(|e| match e {
            Event::DirectionResolved { req: r, result, .. } if *r == req => Some(*result),
            _ => None,
        })
    }

    /// Our VIP (registered).
    pub fn vip(&self) -> Ipv4Addr {
        self.ep.vip().expect("registered").addr
    }
}

impl Party for Node {
    fn handle(&mut self, now: Instant, from: SocketAddrV4, mut data: Vec<u8>) {
        if let Ok(Received::Data { inner, .. }) = self.ep.handle(now, from, &mut data) {
            self.inner_rx.push(inner.to_vec());
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddrV4, Vec<u8>)> {
        let t = super::pull(|buf| self.ep.poll_transmit(now, buf));
        while let Some(e) = self.ep.poll_event() {
            self.events.push(e);
        }
        t
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ep.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
    }
}

/// A minimal IPv4 packet (UDP, no checksum) from `src` to `dst`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// A world whose nodes are numbered `0..`: the steps node tests share.
pub trait NodeWorld: World {
    /// Node `i`.
    fn node(&self, i: usize) -> &Node;
    /// Node `i`, to change.
    fn node_mut(&mut self, i: usize) -> &mut Node;

    /// Node `i`'s address as the internet sees it.
    fn public(&self, i: usize) -> SocketAddrV4 {
        self.net().public(self.node(i).id)
    }

    /// Node `i`'s VIP.
    fn vip(&self, i: usize) -> Ipv4Addr {
        self.node(i).vip()
    }

    /// Node `i`'s events.
    fn events(&self, i: usize) -> &[Event] {
        &self.node(i).events
    }

    /// Node `i`'s tunnels that came up.
    fn tunnel_ups(&self, i: usize) -> Vec<TunnelParams> {
        self.node(i).tunnel_ups()
    }

    /// Why node `i`'s tunnels went down.
    fn downs(&self, i: usize) -> Vec<DownReason> {
        self.node(i).downs()
    }

    /// Node `i`'s registrations: (VIP, behind NAT).
    fn registered(&self, i: usize) -> Vec<(Ipv4Addr, bool)> {
        self.node(i).registered()
    }

    /// The answer to node `i`'s request `req`.
    fn resolved(&self, i: usize, req: ReqId) -> Option<Result<Ipv4Addr, DirError>> {
        self.node(i).resolved(req)
    }

    /// Node `from` sends `payload` in an IPv4 packet to node `to`'s VIP
    /// through their tunnel ([`Endpoint::send_data`]).
    fn send_inner(&mut self, from: usize, to: usize, payload: &[u8]) -> Result<(), Error> {
        let pkt = ipv4(self.vip(from), self.vip(to), payload);
        let mut buf = vec![0u8; pkt.len() + 32];
        let now = self.now();
        let n = self.node_mut(from);
        let t = n.ep.send_data(now, &pkt, &mut buf)?;
        let id = n.id;
        self.net_mut().send(id, t.dst, buf[..t.len].to_vec());
        Ok(())
    }

    /// Node `from` asks for `fqdn`; runs 2 s.
    fn connect(&mut self, from: usize, fqdn: &str) -> ReqId {
        let now = self.now();
        let req = self.node_mut(from).ep.connect(now, fqdn).expect("connect");
        self.run_for(Duration::from_secs(2));
        req
    }

    /// "ping" goes from `a` to `b` and "pong" back, each arriving once.
    fn assert_data_both_ways(&mut self, a: usize, b: usize) {
        let (na, nb) = (self.node(a).inner_rx.len(), self.node(b).inner_rx.len());
        self.send_inner(a, b, b"ping").unwrap();
        self.send_inner(b, a, b"pong").unwrap();
        self.run_for(Duration::from_millis(100));
        let (ra, rb) = (&self.node(a).inner_rx, &self.node(b).inner_rx);
        assert_eq!(rb.len(), nb + 1, "a -> b");
        assert!(rb.last().unwrap().ends_with(b"ping"));
        assert_eq!(ra.len(), na + 1, "b -> a");
        assert!(ra.last().unwrap().ends_with(b"pong"));
    }
}
