//! Traffic that runs while a test breaks something (issue 13, the fault
//! tests in `tests/faults.rs`): a background ping that records the time of
//! every reply, so that a test can tell what was lost and for how long, and
//! a background iperf3 TCP stream whose per-interval byte counts show a
//! stall. Also the restarts those tests need (the RS, a node).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use ntm_testbed::{wait_until, Child, Role, Signal};

use crate::{bin, Node, World, PATIENCE};

/// Seconds since the Unix epoch, as `ping -D` prints them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One echo reply: its sequence number and when it came (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply {
    /// `icmp_seq`.
    pub seq: u32,
    /// `ping -D`'s timestamp.
    pub at: f64,
}

/// The replies in `ping -D` output, each sequence number once (a
/// duplicate, `DUP!`, is not a second reply).
fn parse_replies(out: &str) -> Vec<Reply> {
    let mut seen = std::collections::BTreeMap::new();
    for line in out.lines().filter(|l| l.contains(" bytes from ")) {
        let at = line
            .strip_prefix('[')
            .and_then(|r| r.split(']').next())
            .and_then(|t| t.parse::<f64>().ok());
        let seq = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u32>().ok());
        if let (Some(at), Some(seq)) = (at, seq) {
            seen.entry(seq).or_insert(at);
        }
    }
    seen.into_iter()
        .map(|(seq, at)| Reply { seq, at })
        .collect()
}

/// A `ping -D -i interval` running in the background.
pub struct PingRun {
    child: Child,
    interval: Duration,
}

impl World {
    /// Starts pinging `dst` from `from` every `interval` until
    /// [`PingRun::stop`]; each reply is recorded with its time.
    pub fn ping_in_background(
        &self,
        from: Role,
        dst: Ipv4Addr,
        interval: Duration,
    ) -> Result<PingRun> {
        let mut cmd = Command::new("ping");
        cmd.args(["-n", "-D", "-W", "2", "-i"])
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .arg(dst.to_string());
        let child = self
            .tb
            .spawn(from, &cmd)
            .map_err(|e| anyhow!("start ping in {from}: {e}"))?;
        Ok(PingRun { child, interval })
    }

    /// Kills the RS (SIGKILL: its bindings are lost) and starts it again on
    /// its configuration.
    pub fn restart_rs(&mut self) -> Result<()> {
        self.rs
            .signal(Signal::SIGKILL)
            .map_err(|e| anyhow!("SIGKILL to ntm-rs: {e}"))?;
        self.rs
            .stop(Duration::from_secs(3))
            .map_err(|e| anyhow!("reap ntm-rs: {e}"))?;
        let mut cmd = Command::new(bin("ntm-rs")?);
        cmd.arg("--config")
            .arg(self.tb.state_dir().join("rs.toml"))
            .env("RUST_LOG", "info");
        self.rs = self
            .tb
            .spawn(Role::Rs, &cmd)
            .map_err(|e| anyhow!("start ntm-rs again: {e}"))?;
        Ok(())
    }

    /// Kills `node` (SIGKILL: its tunnels are lost) and starts the same
    /// node again; returns the new one once it registered.
    pub fn restart_node(&self, mut node: Node) -> Result<Node> {
        node.child
            .signal(Signal::SIGKILL)
            .map_err(|e| anyhow!("SIGKILL to {}: {e}", node.fqdn))?;
        node.child
            .stop(Duration::from_secs(3))
            .map_err(|e| anyhow!("reap {}: {e}", node.fqdn))?;
        let mut again = self.node(node.role, &node.fqdn)?;
        again.registered()?;
        Ok(again)
    }
}

impl PingRun {
    /// The replies so far.
    pub fn replies(&self) -> Vec<Reply> {
        parse_replies(&self.child.log())
    }

    /// Waits until `n` replies came after `since` (Unix seconds).
    pub fn wait_replies_after(&self, since: f64, n: usize, what: &str) -> Result<()> {
        let count = || self.replies().iter().filter(|r| r.at > since).count();
        if !wait_until(PATIENCE, || count() >= n) {
            bail!(
                "{what}: {} of {n} ping replies within {PATIENCE:?}; ping said:\n{}",
                count(),
                crate::tail(&self.child.log(), 20)
            );
        }
        Ok(())
    }

    /// Stops the ping (SIGINT) and reports what it saw.
    pub fn stop(mut self) -> Result<PingReport> {
        let _ = self.child.signal(Signal::SIGINT);
        self.child
            .wait_timeout(Duration::from_secs(5))
            .map_err(|e| anyhow!("{e}"))?
            .context("ping did not exit on SIGINT")?;
        let replies = self.replies();
        ensure!(
            !replies.is_empty(),
            "no ping reply at all:\n{}",
            self.child.log()
        );
        Ok(PingReport {
            replies,
            interval: self.interval,
        })
    }
}

/// What a background ping saw, up to its last reply (requests still in
/// flight when it stopped are not losses).
#[derive(Debug, Clone)]
pub struct PingReport {
    /// Every reply, by sequence number.
    pub replies: Vec<Reply>,
    /// The interval between requests.
    pub interval: Duration,
}

impl PingReport {
    /// Requests sent up to the last one answered.
    pub fn sent(&self) -> u32 {
        self.replies.last().map_or(0, |r| r.seq)
    }

    /// Requests among those without a reply.
    pub fn lost(&self) -> u32 {
        self.sent() - self.replies.len() as u32
    }

    /// The longest time without replies around lost requests: from the
    /// reply before a run of lost sequence numbers to the reply after it
    /// (zero when nothing was lost).
    pub fn loss_window(&self) -> Duration {
        let mut longest = 0.0f64;
        let mut prev: Option<Reply> = None;
        for r in &self.replies {
            let gap = match prev {
                Some(p) if r.seq > p.seq + 1 => r.at - p.at,
                None if r.seq > 1 => (r.seq - 1) as f64 * self.interval.as_secs_f64(),
                _ => 0.0,
            };
            longest = longest.max(gap);
            prev = Some(*r);
        }
        Duration::from_secs_f64(longest.max(0.0))
    }

    /// The one line a fault test prints.
    pub fn line(&self, fault: &str) -> String {
        format!(
            "fault {fault}: lost {} of {} packets, loss window {:.2} s",
            self.lost(),
            self.sent(),
            self.loss_window().as_secs_f64()
        )
    }
}

/// An iperf3 TCP stream running in the background, reporting every
/// [`TcpStream::INTERVAL`].
pub struct TcpStream {
    server: Child,
    client: Child,
}

impl TcpStream {
    /// The reporting interval.
    pub const INTERVAL: Duration = Duration::from_millis(250);
}

impl World {
    /// Starts an iperf3 TCP stream of `secs` seconds from `client` to a
    /// server on `server_addr` in `server`'s namespace; returns once the
    /// first bytes went through.
    pub fn tcp_stream(
        &self,
        server: Role,
        server_addr: Ipv4Addr,
        client: Role,
        secs: u32,
    ) -> Result<TcpStream> {
        let mut srv = Command::new("iperf3");
        srv.args(["-s", "-1", "-B", &server_addr.to_string(), "-p", "5202"]);
        let server = self
            .tb
            .spawn(server, &srv)
            .map_err(|e| anyhow!("start iperf3 -s: {e}"))?;
        // Until the server listens, the client fails at once: try again.
        for _ in 0..40 {
            let mut c = Command::new("iperf3");
            c.args(["-c", &server_addr.to_string(), "-p", "5202", "-J", "-i"])
                .arg(format!("{:.2}", TcpStream::INTERVAL.as_secs_f64()))
                .args(["-t", &secs.to_string()]);
            let mut client = self
                .tb
                .spawn(client, &c)
                .map_err(|e| anyhow!("start iperf3 -c: {e}"))?;
            if client
                .wait_timeout(Duration::from_millis(500))
                .map_err(|e| anyhow!("{e}"))?
                .is_none()
            {
                return Ok(TcpStream { server, client });
            }
        }
        bail!("iperf3 never connected to {server_addr}: {}", server.log())
    }
}

/// What a background TCP stream saw.
#[derive(Debug, Clone)]
pub struct TcpReport {
    /// Bytes received at the server.
    pub bytes: u64,
    /// The sender's retransmissions.
    pub retransmits: u64,
    /// The longest run of reporting intervals without a byte sent.
    pub stall: Duration,
}

impl TcpStream {
    /// Waits for the stream to end; fails unless its one connection lasted
    /// to the end.
    pub fn finish(mut self, patience: Duration) -> Result<TcpReport> {
        let status = self
            .client
            .wait_timeout(patience)
            .map_err(|e| anyhow!("{e}"))?
            .context("iperf3 -c did not finish")?;
        let out = self.client.log();
        ensure!(status.success(), "iperf3 -c: {status}\n{out}");
        let _ = self.server.wait_timeout(Duration::from_secs(5));
        TcpReport::parse(&out)
    }
}

impl TcpReport {
    fn parse(json: &str) -> Result<TcpReport> {
        let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
        if let Some(e) = v.get("error") {
            bail!("iperf3: {e}");
        }
        let mut stall = 0.0f64;
        let mut run = 0.0f64;
        for i in v["intervals"].as_array().into_iter().flatten() {
            let s = &i["sum"];
            if s["bytes"].as_u64() == Some(0) {
                run += s["seconds"].as_f64().unwrap_or(0.0);
                stall = stall.max(run);
            } else {
                run = 0.0;
            }
        }
        let end = &v["end"];
        Ok(TcpReport {
            bytes: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            stall: Duration::from_secs_f64(stall),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: &str = "PING 100.64.0.3 (100.64.0.3) 56(84) bytes of data.
[1700000000.000100] 64 bytes from 100.64.0.3: icmp_seq=1 ttl=64 time=0.1 ms
[1700000000.050100] 64 bytes from 100.64.0.3: icmp_seq=2 ttl=64 time=0.1 ms
[1700000000.050200] 64 bytes from 100.64.0.3: icmp_seq=2 ttl=64 time=0.2 ms (DUP!)
[1700000001.000100] 64 bytes from 100.64.0.3: icmp_seq=21 ttl=64 time=0.1 ms
[1700000001.050100] 64 bytes from 100.64.0.3: icmp_seq=22 ttl=64 time=0.1 ms
";

    #[test]
    fn ping_replies_give_the_losses_and_the_window() {
        let r = PingReport {
            replies: parse_replies(PING),
            interval: Duration::from_millis(50),
        };
        assert_eq!(r.replies.len(), 4, "the duplicate counts once");
        assert_eq!((r.lost(), r.sent()), (18, 22));
        assert!((r.loss_window().as_secs_f64() - 0.95).abs() < 1e-6);
        assert_eq!(
            r.line("X"),
            "fault X: lost 18 of 22 packets, loss window 0.95 s"
        );
    }

    #[test]
    fn nothing_lost_is_a_zero_window() {
        let r = PingReport {
            replies: parse_replies(&PING.lines().take(3).collect::<Vec<_>>().join("\n")),
            interval: Duration::from_millis(50),
        };
        assert_eq!((r.lost(), r.sent()), (0, 2));
        assert_eq!(r.loss_window(), Duration::ZERO);
    }

    #[test]
    fn iperf_intervals_give_the_stall() {
        let j = r#"{"intervals":[{"sum":{"bytes":10,"seconds":0.25}},{"sum":{"bytes":0,"seconds":0.25}},{"sum":{"bytes":0,"seconds":0.25}},{"sum":{"bytes":5,"seconds":0.25}}],
            "end":{"sum_sent":{"retransmits":3},"sum_received":{"bytes":15}}}"#;
        let r = TcpReport::parse(j).unwrap();
        assert_eq!((r.bytes, r.retransmits), (15, 3));
        assert_eq!(r.stall, Duration::from_millis(500));
    }
}
