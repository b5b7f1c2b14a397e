//! Faults of the adapter itself, for `tests/faults_ntma.rs`: a continuous
//! ping whose losses are measured ([`Pinger`]), ntma killed with SIGKILL
//! and started again on the same configuration, and a datapath worker made
//! to panic (debug builds' `ntma debug panic-worker`).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use ntm_testbed::{wait_for, Child, Role, Signal};

use crate::{bin, Ntma, World, PATIENCE};

/// Seconds between the pings of a [`Pinger`].
pub const PING_INTERVAL: f64 = 0.1;

/// `ping -D -O -i 0.1` running in a namespace until stopped: every reply is
/// in its log with its Unix time.
pub struct Pinger {
    child: Child,
}

/// One echo reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply {
    /// Its icmp_seq.
    pub seq: u32,
    /// When it arrived, Unix seconds.
    pub at: f64,
}

/// What a stopped [`Pinger`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PingReport {
    /// Echo requests sent.
    pub sent: u32,
    /// Replies.
    pub replies: Vec<Reply>,
}

/// The loss around one moment: what [`PingReport::outage_around`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    /// Requests between the last reply before the moment and the first one
    /// after it that got no reply.
    pub lost: u32,
    /// Seconds from the last reply before the moment to the first after it.
    pub gap_secs: f64,
    /// Seconds from the moment to the first reply after it.
    pub to_first_reply_secs: f64,
}

/// Unix seconds.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn parse_reply(line: &str) -> Option<Reply> {
    let at = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
    if !line.contains(" bytes from ") {
        return None;
    }
    let seq = line.split("icmp_seq=").nth(1)?.split_whitespace().next()?;
    Some(Reply {
        seq: seq.parse().ok()?,
        at,
    })
}

impl Pinger {
    /// The replies so far.
    pub fn replies(&self) -> Vec<Reply> {
        self.child.log().lines().filter_map(parse_reply).collect()
    }

    /// Waits for the first reply that arrived after `t` (Unix seconds);
    /// within `timeout`.
    pub fn reply_after(&self, t: f64, timeout: Duration) -> Option<Reply> {
        wait_for(timeout, || self.replies().into_iter().find(|r| r.at > t))
    }

    /// Stops it (SIGINT: it prints its summary) and reads what it saw.
    pub fn stop(self) -> Result<PingReport> {
        self.child
            .signal(Signal::SIGINT)
            .map_err(|e| anyhow!("{e}"))?;
        let log = || self.child.log();
        let summary = wait_for(PATIENCE, || {
            log()
                .lines()
                .find(|l| l.contains("packets transmitted"))
                .map(str::to_owned)
        })
        .with_context(|| format!("ping printed no summary:\n{}", log()))?;
        let sent = summary
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("ping summary {summary:?}"))?;
        Ok(PingReport {
            sent,
            replies: self.replies(),
        })
    }
}

impl PingReport {
    /// Requests that got no reply.
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.replies.len() as u32)
    }

    /// The loss around the moment `t` (Unix seconds): `None` when no reply
    /// came after it.
    pub fn outage_around(&self, t: f64) -> Option<Outage> {
        let after = self.replies.iter().find(|r| r.at > t)?;
        let before = self.replies.iter().rev().find(|r| r.at <= t);
        let (seq0, at0) = before.map_or((0, t), |r| (r.seq, r.at));
        Some(Outage {
            lost: after.seq.saturating_sub(seq0 + 1),
            gap_secs: after.at - at0,
            to_first_reply_secs: after.at - t,
        })
    }
}

impl World {
    /// Roaming: moves the adapter's uplink from 192.168.10.2 to
    /// 192.168.10.3 on nat1's inside network and waits until its first GN
    /// is registered again from the new address; its status then.
    pub fn roam_adapter(&self, ntma: &mut Ntma) -> Result<ntma_user::status::Status> {
        self.sh(
            Role::Ntma,
            "ip addr del 192.168.10.2/24 dev wan0 && ip addr add 192.168.10.3/24 dev wan0 && ip route replace default via 192.168.10.1",
        )?;
        ntma.wait("re-registered from the new address", |s| {
            s.gns[0].registration.local_addr.ip().octets() == [192, 168, 10, 3]
                && s.gns[0].registration.registered
        })
    }

    /// Pings `dst` from `role` every [`PING_INTERVAL`] until stopped.
    pub fn pinger(&self, role: Role, dst: Ipv4Addr) -> Result<Pinger> {
        let mut cmd = Command::new("stdbuf");
        // Line-buffered, so that the log shows each reply as it comes.
        cmd.args(["-oL", "ping", "-D", "-O", "-n", "-W", "1", "-i"])
            .arg(PING_INTERVAL.to_string())
            .arg(dst.to_string());
        let child = self
            .tb
            .spawn(role, &cmd)
            .map_err(|e| anyhow!("start ping in {role}: {e}"))?;
        Ok(Pinger { child })
    }

    /// Kills ntma with SIGKILL (no clean stop: nothing detached, deregistered
    /// or removed) and waits until it is gone.
    pub fn kill_ntma(&self, ntma: &mut Ntma) -> Result<()> {
        ntma.child
            .signal(Signal::SIGKILL)
            .map_err(|e| anyhow!("SIGKILL to ntma: {e}"))?;
        match ntma.child.wait_timeout(PATIENCE) {
            Ok(Some(_)) => Ok(()),
            other => bail!("ntma did not die on SIGKILL: {other:?}"),
        }
    }

    /// Starts `ntma run` again with the configuration file of `old`.
    pub fn restart_ntma(&self, old: &Ntma) -> Result<Ntma> {
        let mut cmd = Command::new(bin("ntma")?);
        cmd.arg("run")
            .arg("--config")
            .arg(&old.config)
            .env("RUST_LOG", "info,ntma_user=debug");
        let child = self
            .tb
            .spawn(Role::Ntma, &cmd)
            .map_err(|e| anyhow!("start ntma again: {e}"))?;
        Ok(Ntma {
            child,
            socket: old.socket.clone(),
            config: old.config.clone(),
        })
    }

    /// `ntma debug panic-worker --queue <queue>` (debug builds of ntma).
    pub fn panic_worker(&self, ntma: &Ntma, queue: u32) -> Result<()> {
        let out = Command::new(bin("ntma")?)
            .args(["debug", "--config"])
            .arg(&ntma.config)
            .args(["panic-worker", "--queue", &queue.to_string()])
            .output()?;
        if !out.status.success() {
            bail!(
                "ntma debug panic-worker: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_outages_are_read_from_ping_output() {
        let log = "PING 100.64.0.3 (100.64.0.3) 56(84) bytes of data.\n\
            [100.000000] 64 bytes from 100.64.0.3: icmp_seq=1 ttl=63 time=0.5 ms\n\
            [100.100000] 64 bytes from 100.64.0.3: icmp_seq=2 ttl=63 time=0.5 ms\n\
            [101.000000] no answer yet for icmp_seq=3\n\
            [100.800000] From 100.64.0.1 icmp_seq=9 Destination Host Unreachable\n\
            [101.500000] 64 bytes from 100.64.0.3: icmp_seq=16 ttl=63 time=0.7 ms\n";
        let replies: Vec<Reply> = log.lines().filter_map(parse_reply).collect();
        assert_eq!(replies.len(), 3);
        let r = PingReport { sent: 17, replies };
        assert_eq!(r.lost(), 14);
        let o = r.outage_around(100.5).unwrap();
        assert_eq!(o.lost, 13);
        assert!((o.gap_secs - 1.4).abs() < 1e-6, "{o:?}");
        assert!((o.to_first_reply_secs - 1.0).abs() < 1e-6, "{o:?}");
        assert_eq!(r.outage_around(102.0), None);
    }
}
