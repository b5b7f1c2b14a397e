//! An endpoint with several DCs (`Endpoint::with_fallback_dcs`): it
//! registers with the first that answers, moves to the next when REG_REQ
//! or keep-alives go unanswered, keeps its VIP when the DCs share a store,
//! and accepts DC datagrams only from the current DC. Virtual time, fake
//! DCs that answer REG_REQ and KEEPALIVE; no sockets.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ntm_proto::node::{Config, Endpoint, Event, RegistrationError, REGISTER_RETRY};
use ntm_proto::wire::{
    Caps, Header, KeepaliveAck, Lease, Message, Packet, RegResp, Repr, Vip, MAX_SIGNALING_LEN,
};
use ntm_proto::{Authenticator, Error, Key};

const DC1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 7710);
const DC2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 4), 7710);
const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 20), 7700);
const VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
const KEEPALIVE_SECS: u32 = 2;

fn key() -> Key {
    Key::from_bytes([7; 32])
}

/// A DC that answers REG_REQ (always the same VIP, as DCs sharing one
/// store do) and KEEPALIVE while `up`. Each has its own seq stream.
struct FakeDc {
    addr: SocketAddrV4,
    up: bool,
    seq: u64,
    node_id: u32,
    reg_reqs: usize,
}

impl FakeDc {
    fn new(addr: SocketAddrV4, seq: u64, node_id: u32) -> FakeDc {
        FakeDc {
            addr,
            up: true,
            seq,
            node_id,
            reg_reqs: 0,
        }
    }

    fn seal(&mut self, message: Message<'_>) -> Vec<u8> {
        self.seq += 1;
        let header = Header {
            id: self.node_id,
            seq: self.seq,
            response_required: false,
        };
        let repr = Repr::new(header, message);
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit_sealed(&mut buf, &Authenticator::new(&key()))
            .unwrap();
        buf
    }

    /// The answer to `d`, if the DC is up and it needs one.
    fn answer(&mut self, d: &[u8]) -> Option<Vec<u8>> {
        let p = Packet::new_checked(d).unwrap();
        match Repr::parse(&p).unwrap().message {
            Message::RegReq(r) => {
                self.reg_reqs += 1;
                let lease = Lease {
                    node_id: self.node_id,
                    vip: Vip {
                        addr: VIP,
                        prefix_len: 10,
                    },
                    observed: LOCAL,
                    keepalive_secs: KEEPALIVE_SECS,
                    lifetime_secs: 600,
                };
                let resp = RegResp {
                    req_id: r.req_id,
                    result: Ok(lease),
                };
                self.up.then(|| self.seal(Message::RegResp(resp)))
            }
            Message::Keepalive => {
                let ack = KeepaliveAck { observed: LOCAL };
                self.up.then(|| self.seal(Message::KeepaliveAck(ack)))
            }
            _ => None,
        }
    }
}

struct Rig {
    now: Instant,
    start: Instant,
    ep: Endpoint,
    dcs: Vec<FakeDc>,
    events: Vec<(Duration, Event)>,
}

impl Rig {
    fn new(dcs: &[SocketAddrV4]) -> Rig {
        let now = Instant::now();
        let cfg = Config {
            fqdn: "cn.ntm.test".into(),
            key: key(),
            dc: dcs[0],
            local_addr: LOCAL,
            caps: Caps::NODE,
        };
        let ep = Endpoint::new(cfg, now, 1_000, [1; 32])
            .unwrap()
            .with_fallback_dcs(&dcs[1..]);
        let fakes = dcs
            .iter()
            .enumerate()
            .map(|(i, a)| FakeDc::new(*a, 1_000_000 * (i as u64 + 1), 40 + i as u32))
            .collect();
        Rig {
            now,
            start: now,
            ep,
            dcs: fakes,
            events: Vec::new(),
        }
    }

    fn dc(&mut self, addr: SocketAddrV4) -> &mut FakeDc {
        self.dcs.iter_mut().find(|d| d.addr == addr).unwrap()
    }

    /// Sends what the endpoint has and delivers the DCs' answers, until quiet.
    fn pump(&mut self) {
        let mut buf = vec![0u8; MAX_SIGNALING_LEN];
        while let Some(t) = self.ep.poll_transmit(self.now, &mut buf) {
            let answer = self.dc(t.dst).answer(&buf[..t.len]);
            if let Some(mut a) = answer {
                self.ep.handle(self.now, t.dst, &mut a).unwrap();
            }
        }
        while let Some(e) = self.ep.poll_event() {
            self.events.push((self.now - self.start, e));
        }
    }

    /// Runs the endpoint's timers up to `until` after the start.
    fn run_until(&mut self, until: Duration) {
        self.pump();
        while let Some(at) = self.ep.poll_timeout() {
            if at > self.start + until {
                break;
            }
            self.now = self.now.max(at);
            self.ep.handle_timeout(self.now);
            self.pump();
        }
        self.now = self.start + until;
    }

    fn changes(&self) -> Vec<(Duration, SocketAddrV4, SocketAddrV4)> {
        self.events
            .iter()
            .filter_map(|(at, e)| match e {
                Event::DcChanged { from, to } => Some((*at, *from, *to)),
                _ => None,
            })
            .collect()
    }

    fn registrations(&self) -> Vec<(Duration, Ipv4Addr)> {
        self.events
            .iter()
            .filter_map(|(at, e)| match e {
                Event::Registered { vip, .. } => Some((*at, *vip)),
                _ => None,
            })
            .collect()
    }

    fn failures(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::RegistrationFailed { .. }))
            .count()
    }
}

#[test]
fn registers_with_the_first_dc_that_answers() {
    let mut r = Rig::new(&[DC1, DC2]);
    r.dc(DC1).up = false;
    r.run_until(Duration::from_secs(9));
    // Five REG_REQs to DC1 (0 to 3.75 s), given up at 7.75 s, then DC2.
    assert_eq!(r.dc(DC1).reg_reqs, 5);
    assert_eq!(r.dc(DC2).reg_reqs, 1);
    assert_eq!(r.changes(), vec![(Duration::from_millis(7750), DC1, DC2)]);
    assert_eq!(r.registrations(), vec![(Duration::from_millis(7750), VIP)]);
    assert_eq!(r.ep.dc(), DC2);
    assert_eq!(r.ep.failovers(), 1);
    assert_eq!(r.failures(), 0, "a DC that answered was found");
}

#[test]
fn moves_to_the_next_dc_when_keepalives_go_unanswered() {
    let mut r = Rig::new(&[DC1, DC2]);
    r.run_until(Duration::from_secs(10));
    assert_eq!(r.ep.dc(), DC1);
    assert!(r.changes().is_empty(), "DC1 answers keep-alives");
    r.dc(DC1).up = false;
    r.run_until(Duration::from_secs(30));
    // The last answered keep-alive went at 10 s; 3.5 intervals later the
    // endpoint gives DC1 up and registers at DC2 at once.
    let changes = r.changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let (at, from, to) = changes[0];
    assert_eq!((from, to), (DC1, DC2));
    assert_eq!(at, Duration::from_secs(10 + 7));
    let regs = r.registrations();
    assert_eq!(regs.last(), Some(&(at, VIP)), "same VIP at DC2, at once");
    assert_eq!(r.ep.vip().map(|v| v.addr), Some(VIP));
    assert_eq!(r.ep.registration().unwrap().node_id, 41);
    // Keep-alives now go to DC2, and it answers them: no further move.
    assert_eq!(r.ep.dc(), DC2);
    assert_eq!(r.ep.failovers(), 1);
    assert!(!r
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::TunnelDown { .. })));
}

#[test]
fn accepts_dc_datagrams_only_from_the_current_dc() {
    let mut r = Rig::new(&[DC1, DC2]);
    r.run_until(Duration::from_secs(1));
    r.dc(DC1).up = false;
    r.run_until(Duration::from_secs(20));
    assert_eq!(r.ep.dc(), DC2);
    // DC1 comes back and its keep-alive answer (authentic, fresh seq, our
    // node id there) arrives: refused by its source.
    let ack = KeepaliveAck { observed: LOCAL };
    let dc1 = r.dc(DC1);
    dc1.up = true;
    let mut late = dc1.seal(Message::KeepaliveAck(ack));
    let now = r.now;
    assert_eq!(
        r.ep.handle(now, DC1, &mut late),
        Err(Error::UnexpectedSource)
    );
    assert!(!r.ep.claims(DC1, &late));
    // The same from an address no DC has.
    let mut other = late.clone();
    let stranger = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), 7710);
    assert_eq!(
        r.ep.handle(now, stranger, &mut other),
        Err(Error::UnexpectedSource)
    );
    // DC2's own stream still passes.
    let ack = KeepaliveAck { observed: LOCAL };
    let mut fresh = r.dc(DC2).seal(Message::KeepaliveAck(ack));
    assert!(r.ep.claims(DC2, &fresh));
    assert!(r.ep.handle(now, DC2, &mut fresh).is_ok());
}

#[test]
fn waits_between_rounds_when_every_dc_is_silent() {
    let mut r = Rig::new(&[DC1, DC2]);
    r.dc(DC1).up = false;
    r.dc(DC2).up = false;
    r.run_until(Duration::from_secs(20));
    // DC1 given up at 7.75 s, DC2 at 15.5 s: one failure for the round,
    // and the next round starts at DC1 after REGISTER_RETRY.
    assert_eq!(r.failures(), 1);
    assert_eq!(r.dc(DC1).reg_reqs, 5);
    assert_eq!(r.dc(DC2).reg_reqs, 5);
    assert_eq!(r.ep.dc(), DC1);
    assert!(r.ep.registration().is_none());
    r.dc(DC1).up = true;
    r.run_until(Duration::from_millis(15_500) + REGISTER_RETRY + Duration::from_secs(1));
    assert_eq!(
        r.registrations(),
        vec![(Duration::from_millis(15_500) + REGISTER_RETRY, VIP)]
    );
    let reason = r.events.iter().find_map(|(_, e)| match e {
        Event::RegistrationFailed { reason } => Some(*reason),
        _ => None,
    });
    assert_eq!(reason, Some(RegistrationError::TimedOut));
}

#[test]
fn one_dc_re_registers_with_the_same_dc() {
    let mut r = Rig::new(&[DC1]);
    r.run_until(Duration::from_secs(3));
    r.dc(DC1).up = false;
    r.run_until(Duration::from_secs(12));
    r.dc(DC1).up = true;
    r.run_until(Duration::from_secs(20));
    assert!(r.changes().is_empty());
    assert_eq!(r.ep.failovers(), 0);
    assert_eq!(r.ep.dcs(), &[DC1]);
    assert_eq!(r.registrations().len(), 2, "{:?}", r.registrations());
}

#[test]
fn fallbacks_are_deduplicated_and_bounded() {
    let now = Instant::now();
    let cfg = Config {
        fqdn: "cn.ntm.test".into(),
        key: key(),
        dc: DC1,
        local_addr: LOCAL,
        caps: Caps::NODE,
    };
    let many: Vec<SocketAddrV4> = (0..20)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, i), 7710))
        .collect();
    let ep = Endpoint::new(cfg.clone(), now, 1, [1; 32])
        .unwrap()
        .with_fallback_dcs(&[DC1, DC2, DC2]);
    assert_eq!(ep.dcs(), &[DC1, DC2]);
    let ep = Endpoint::new(cfg, now, 1, [1; 32])
        .unwrap()
        .with_fallback_dcs(&many);
    assert_eq!(ep.dcs().len(), ntm_proto::node::MAX_DCS);
}
