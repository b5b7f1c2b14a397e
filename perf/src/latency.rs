//! Latency through a datapath: a ping-pong at low rate between gn and cn (one request in
//! flight, a pause between requests), RTT percentiles.
//!
//! The client in gn sends a UDP request carrying a sequence number to the datapath's
//! target; an echo in cn answers it back the same way. Where cn is the tunnel's peer of
//! a tunnel the bench published itself, the echo speaks NTM DATA (decapsulates with
//! ntm-proto, swaps the inner addresses and ports, encapsulates the answer).

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ntm_proto::data::{decap, Decapped, RxTunnel, TxTunnel};
use ntm_proto::wire::{HEADER_LEN, OVERHEAD};
use serde::{Deserialize, Serialize};

use crate::stats::quantile;

/// How cn answers.
#[derive(Clone)]
pub enum EchoServer {
    /// A UDP socket on `bind` that sends every datagram back to its source.
    Udp {
        /// The echo's address in cn.
        bind: SocketAddrV4,
    },
    /// The peer's end of an NTM tunnel on `bind`: decapsulates (opens) with `rx`, sends
    /// the inner packet back with source and destination swapped, encapsulated (sealed)
    /// with `tx`: the peer's two direction keys in the tunnel's suite.
    Ntm {
        /// cn's NTM socket.
        bind: SocketAddrV4,
        /// Receive state (the adapter is the peer): the adapter's send direction key.
        rx: Box<RxTunnel>,
        /// Send state: the peer's send direction key and counter.
        tx: Box<TxTunnel>,
    },
}

/// The ping-pong of one datapath.
#[derive(Clone)]
pub struct Echo {
    /// Where gn sends its requests.
    pub target: SocketAddrV4,
    /// How cn answers.
    pub server: EchoServer,
}

impl Echo {
    /// gn's requests to `bind`, where cn answers over UDP.
    pub fn udp(bind: SocketAddrV4) -> Echo {
        Echo {
            target: bind,
            server: EchoServer::Udp { bind },
        }
    }
}

/// RTT percentiles of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    /// Requests sent.
    pub sent: usize,
    /// Answers received in time.
    pub answered: usize,
    /// Median RTT, µs.
    pub p50_us: f64,
    /// 99th percentile RTT, µs.
    pub p99_us: f64,
    /// Smallest RTT, µs.
    pub min_us: f64,
}

/// Summarises RTTs (µs) of `sent` requests; `None` when none was answered.
pub fn summarize(sent: usize, mut rtts_us: Vec<f64>) -> Option<Rtt> {
    rtts_us.sort_by(f64::total_cmp);
    Some(Rtt {
        sent,
        answered: rtts_us.len(),
        p50_us: quantile(&rtts_us, 0.5)?,
        p99_us: quantile(&rtts_us, 0.99)?,
        min_us: rtts_us[0],
    })
}

struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(ns: &str, server: EchoServer) -> Result<Server> {
    let bind = match &server {
        EchoServer::Udp { bind } | EchoServer::Ntm { bind, .. } => *bind,
    };
    let sock = ntm_testbed::in_netns(ns, || -> Result<UdpSocket> {
        let s = UdpSocket::bind(bind).with_context(|| format!("binding the echo to {bind}"))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(s)
    })??;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || echo_loop(&sock, server, &s))
        .context("starting the echo thread")?;
    Ok(Server {
        stop,
        thread: Some(thread),
    })
}

fn echo_loop(sock: &UdpSocket, server: EchoServer, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 65536];
    let (mut rx, tx) = match server {
        EchoServer::Udp { .. } => (None, None),
        EchoServer::Ntm { rx, tx, .. } => (Some(rx), Some(tx)),
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let (Some(rx), Some(tx)) = (rx.as_deref_mut(), tx.as_ref()) else {
            let _ = sock.send_to(&buf[..n], from);
            continue;
        };
        let Ok(Decapped::Data { inner, .. }) =
            decap(&mut buf[..n], |id| (id == tx.tunnel_id).then_some(&mut *rx))
        else {
            continue;
        };
        let len = inner.len();
        if len < 28 || len + OVERHEAD > out.len() {
            continue;
        }
        let body = &mut out[HEADER_LEN..HEADER_LEN + len];
        body.copy_from_slice(inner);
        // Swapping addresses and ports keeps both checksums valid (the sums commute).
        let ihl = usize::from(body[0] & 0x0f) * 4;
        if ihl < 20 || ihl + 8 > len {
            continue;
        }
        let (src, dst) = (
            [body[12], body[13], body[14], body[15]],
            [body[16], body[17], body[18], body[19]],
        );
        body[12..16].copy_from_slice(&dst);
        body[16..20].copy_from_slice(&src);
        let (sp, dp) = ([body[ihl], body[ihl + 1]], [body[ihl + 2], body[ihl + 3]]);
        body[ihl..ihl + 2].copy_from_slice(&dp);
        body[ihl + 2..ihl + 4].copy_from_slice(&sp);
        if let Ok(m) = tx.encap_in_place(&mut out, 0, len) {
            let _ = sock.send_to(&out[..m], from);
        }
    }
}

/// Runs `count` request/answer rounds from gn (bound to `bind`) to `echo.target`, with
/// `pause` between rounds and `timeout` per round; cn answers through `echo.server`.
pub fn ping_pong(
    gn_ns: &str,
    cn_ns: &str,
    bind: SocketAddrV4,
    echo: &Echo,
    count: usize,
    pause: Duration,
    timeout: Duration,
) -> Result<Option<Rtt>> {
    let _server = serve(cn_ns, echo.server.clone())?;
    let target = echo.target;
    let rtts = ntm_testbed::in_netns(gn_ns, move || -> Result<Vec<f64>> {
        let s = UdpSocket::bind(bind).with_context(|| format!("binding the client to {bind}"))?;
        s.connect(target)?;
        s.set_read_timeout(Some(timeout))?;
        let mut rtts = Vec::with_capacity(count);
        let mut buf = [0u8; 2048];
        for seq in 0..count as u64 {
            let mut req = [0u8; 36];
            req[..8].copy_from_slice(&seq.to_be_bytes());
            let t0 = Instant::now();
            if s.send(&req).is_err() {
                std::thread::sleep(pause);
                continue;
            }
            // Late answers to earlier rounds are skipped, not counted as this one's.
            let deadline = t0 + timeout;
            while Instant::now() < deadline {
                match s.recv(&mut buf) {
                    Ok(n) if n >= 8 && buf[..8] == seq.to_be_bytes() => {
                        rtts.push(t0.elapsed().as_secs_f64() * 1e6);
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            std::thread::sleep(pause);
        }
        Ok(rtts)
    })?
    .map_err(|e| anyhow!("ping-pong from gn: {e:#}"))?;
    Ok(summarize(count, rtts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_summary() {
        let r = summarize(200, (1..=100).rev().map(f64::from).collect()).unwrap();
        assert_eq!((r.sent, r.answered), (200, 100));
        assert_eq!((r.p50_us, r.p99_us, r.min_us), (50.0, 99.0, 1.0));
        assert_eq!(summarize(10, Vec::new()), None);
    }
}
