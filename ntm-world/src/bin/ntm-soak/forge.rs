//! Forged datagrams: random bytes, recorded datagrams with their tag
//! broken, and plain replays of recorded datagrams, sent from the rs
//! namespace with the source of the datagrams they imitate (cn's tunnel
//! endpoint towards the adapter, the recorded sender towards the DC).

use std::net::SocketAddrV4;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use ntm_testbed::CN_ADDR;
use ntm_world::raw::{ipv4_frame, parse_udp, udp, Ipv4, RawSocket, UdpFrame, PACKET_OUTGOING};
use ntm_world::{payload, Role, World};

use crate::load::{pause, Counts};

/// cn's tunnel port.
const CN_PORT: u16 = 7700;

/// Recorded datagrams and the socket that plays them back.
pub struct Forger {
    /// cn's DATA to the adapter, as cn sent it.
    to_ntma: Vec<UdpFrame>,
    /// Signaling to the DC (keep-alives of the nodes and the adapter's GNs).
    to_dc: Vec<UdpFrame>,
    sock: RawSocket,
    seed: u64,
}

/// An NTM v2 datagram of type `ty` (DATA 1), or any type with `None`.
fn is_ntm(u: &UdpFrame, ty: Option<u8>) -> bool {
    u.payload.len() >= 32 && u.payload[0] == 2 && ty.is_none_or(|t| u.payload[1] == t)
}

impl Forger {
    /// Records cn's DATA to the adapter while gn pings cn (its echo
    /// replies), and what reaches the DC for up to 12 s.
    pub fn record(w: &World, cn_vip: std::net::Ipv4Addr, observed: SocketAddrV4) -> Result<Forger> {
        let open = |role: Role| -> Result<RawSocket> {
            w.tb.in_netns(role, || RawSocket::open("eth0"))
                .map_err(|e| anyhow!("{e}"))?
        };
        let cn = open(Role::Cn)?;
        w.ping(Role::Gn, cn_vip, 5)?;
        let to_ntma: Vec<UdpFrame> = cn
            .collect(Duration::from_secs(2), |_| true)?
            .into_iter()
            .filter(|r| r.pkttype == PACKET_OUTGOING)
            .filter_map(|r| parse_udp(&r.frame))
            .filter(|u| {
                (u.src, u.src_port) == (CN_ADDR, CN_PORT)
                    && u.dst == *observed.ip()
                    && is_ntm(u, Some(1))
            })
            .collect();
        ensure!(
            !to_ntma.is_empty(),
            "recorded none of cn's DATA to the adapter"
        );
        let dc = open(Role::Dc)?;
        let mut to_dc = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(12);
        while to_dc.len() < 4 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(r) = dc.recv(left)? else { break };
            let u = parse_udp(&r.frame).filter(|u| {
                r.pkttype != PACKET_OUTGOING
                    && u.dst_port == ntm_dc::DEFAULT_PORT
                    && is_ntm(u, None)
            });
            to_dc.extend(u);
        }
        ensure!(
            !to_dc.is_empty(),
            "recorded no signaling to the DC within 12 s"
        );
        Ok(Forger {
            to_ntma,
            to_dc,
            sock: open(Role::Rs)?,
            seed: 1,
        })
    }

    /// How many were recorded: (to the adapter, to the DC).
    pub fn recorded(&self) -> (usize, usize) {
        (self.to_ntma.len(), self.to_dc.len())
    }

    /// Sends `payload` as `orig` was sent (addresses and ports), from here.
    fn send_as(&self, orig: &UdpFrame, payload: &[u8]) -> Result<()> {
        let frame = ipv4_frame(
            orig.dst_mac,
            self.sock.mac(),
            Ipv4::new(orig.src, orig.dst, 17),
            &udp(orig.src_port, orig.dst_port, payload),
        );
        self.sock.send(&frame)
    }

    /// Four random, four with a broken tag and four replays to each of
    /// the adapter and the DC; returns how many went to each.
    fn batch(&mut self) -> Result<(u64, u64)> {
        let mut sent = [0u64; 2];
        for (i, target) in [&self.to_ntma, &self.to_dc].into_iter().enumerate() {
            for _ in 0..4 {
                self.seed += 1;
                let orig = &target[(self.seed as usize) % target.len()];
                let random = payload(1 + (self.seed as usize * 37) % 200, self.seed);
                let mut bad_tag = orig.payload.clone();
                if let Some(b) = bad_tag.last_mut() {
                    *b ^= 0x5a;
                }
                for p in [&random, &bad_tag, &orig.payload] {
                    self.send_as(orig, p)?;
                    sent[i] += 1;
                }
            }
        }
        Ok((sent[0], sent[1]))
    }

    /// A batch every 2 s until `stop`.
    pub fn run(mut self, stop: &AtomicBool, c: &Counts) {
        while pause(stop, Duration::from_secs(2)) {
            match self.batch() {
                Ok((n, d)) => {
                    Counts::add(&c.forged_to_ntma, n);
                    Counts::add(&c.forged_to_dc, d);
                }
                Err(e) => c.failed(&c.forge_failed, "forge", &e),
            }
        }
    }
}
