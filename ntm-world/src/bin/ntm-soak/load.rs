//! The soak's load, each kind on its own thread until told to stop: UDP
//! traffic both ways through the adapter (iperf3), tunnel churn with DHCP
//! for gn2, DNS queries from gn, and forged datagrams to the adapter and the
//! DC. Each counts what it did in [`Counts`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use ntm_testbed::wait_for;
use ntm_world::{Ntma, Role, World, CN2_FQDN, CN_FQDN, GN2_FQDN, NTMA_LAN_ADDR, PATIENCE};
use serde_json::{json, Value};

/// What the load did, counted as it goes.
#[derive(Default)]
pub struct Counts {
    pub iperf_runs: AtomicU64,
    pub iperf_failed: AtomicU64,
    /// gn -> cn: UDP datagrams sent, and lost as cn's iperf3 counted them.
    pub up_packets: AtomicU64,
    pub up_lost: AtomicU64,
    /// cn -> gn.
    pub down_packets: AtomicU64,
    pub down_lost: AtomicU64,
    /// gn2's reload cycles: each tears its tunnels down and sets one up.
    pub churn_cycles: AtomicU64,
    pub churn_failed: AtomicU64,
    /// dhclient runs of gn2 (INIT-REBOOT after each reload).
    pub dhcp_runs: AtomicU64,
    pub dns_ok: AtomicU64,
    pub dns_failed: AtomicU64,
    pub forged_to_ntma: AtomicU64,
    pub forged_to_dc: AtomicU64,
    pub forge_failed: AtomicU64,
    /// The first errors of every kind, for the report.
    pub errors: Mutex<Vec<String>>,
}

impl Counts {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a failure in `c` and keeps its message (the first 20).
    pub fn failed(&self, c: &AtomicU64, what: &str, e: &anyhow::Error) {
        Counts::add(c, 1);
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 20 {
            v.push(format!("{what}: {e:#}"));
        }
    }

    /// Loss in percent of one direction.
    pub fn loss(packets: &AtomicU64, lost: &AtomicU64) -> f64 {
        let p = packets.load(Ordering::Relaxed);
        if p == 0 {
            return 0.0;
        }
        100.0 * lost.load(Ordering::Relaxed) as f64 / p as f64
    }

    pub fn json(&self) -> Value {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "iperf_runs": v(&self.iperf_runs),
            "iperf_failed": v(&self.iperf_failed),
            "gn_to_cn": {"packets": v(&self.up_packets), "lost": v(&self.up_lost),
                "loss_percent": Counts::loss(&self.up_packets, &self.up_lost)},
            "cn_to_gn": {"packets": v(&self.down_packets), "lost": v(&self.down_lost),
                "loss_percent": Counts::loss(&self.down_packets, &self.down_lost)},
            "churn_cycles": v(&self.churn_cycles),
            "churn_failed": v(&self.churn_failed),
            "dhcp_runs": v(&self.dhcp_runs),
            "dns_ok": v(&self.dns_ok),
            "dns_failed": v(&self.dns_failed),
            "forged_to_ntma": v(&self.forged_to_ntma),
            "forged_to_dc": v(&self.forged_to_dc),
            "forge_failed": v(&self.forge_failed),
            "errors": *self.errors.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

/// Sleeps `d` in short steps; false when `stop` was set meanwhile.
pub fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

/// One bidirectional UDP iperf3 run: (packets, lost) each way as the
/// receivers counted them.
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpRun {
    pub up: (u64, u64),
    pub down: (u64, u64),
}

impl UdpRun {
    pub fn lossless(&self) -> bool {
        self.up.0 > 0 && self.down.0 > 0 && self.up.1 == 0 && self.down.1 == 0
    }
}

/// Datagram payload: with the inner headers well inside the tunnel's MTU.
const UDP_LEN: u32 = 1200;

/// iperf3 UDP at `mbps` both ways between gn (client) and cn's VIP, for `secs`.
pub fn udp_bidir(w: &World, cn_vip: Ipv4Addr, mbps: u64, secs: u32) -> Result<UdpRun> {
    let mut srv = Command::new("iperf3");
    srv.args(["-s", "-1", "-B", &cn_vip.to_string(), "-p", "5201"]);
    let mut srv =
        w.tb.spawn(Role::Cn, &srv)
            .map_err(|e| anyhow!("start iperf3 -s: {e}"))?;
    let cmd = format!("iperf3 -c {cn_vip} -p 5201 -u -b {mbps}M -l {UDP_LEN} -t {secs} --bidir -J");
    // The server is ready when its socket is: retry the client until then.
    let out = wait_for(PATIENCE, || {
        w.sh(Role::Gn, &cmd)
            .ok()
            .filter(|o| !o.contains("unable to connect"))
    });
    let done = srv.wait_timeout(Duration::from_secs(5));
    if !matches!(done, Ok(Some(_))) {
        let _ = srv.stop(Duration::from_secs(1));
    }
    let out = out.ok_or_else(|| anyhow!("`{cmd}` in gn never connected: {}", srv.log()))?;
    parse_bidir(&out)
}

fn parse_bidir(json: &str) -> Result<UdpRun> {
    let v: Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    let side = |k: &str| -> Result<(u64, u64)> {
        let s = &v["end"][k];
        let n = |f: &str| {
            s[f].as_u64()
                .with_context(|| format!("iperf3: no end.{k}.{f}"))
        };
        Ok((n("packets")?, n("lost_packets")?))
    };
    Ok(UdpRun {
        up: side("sum_received")?,
        down: side("sum_received_bidir_reverse")?,
    })
}

/// The highest rate (Mbit/s, both ways at once) of a short search that
/// iperf3 carried without loss: doubling from 25 Mbit/s until a run loses,
/// then bisecting; halving when even the first loses. The rate found must
/// then pass a longer run too, or a quarter less is tried (four runs at
/// most; the last one's rate stands). Returns the rate and every trial.
pub fn find_rate(w: &World, cn_vip: Ipv4Addr) -> Result<(u64, Vec<(u64, UdpRun)>)> {
    let mut trials = Vec::new();
    let mut trial = |rate: u64, secs: u32| -> Result<bool> {
        let r = udp_bidir(w, cn_vip, rate, secs)?;
        eprintln!(
            "    {rate:>5} Mbit/s each way, {secs} s: lost {}/{} up, {}/{} down",
            r.up.1, r.up.0, r.down.1, r.down.0
        );
        trials.push((rate, r));
        Ok(r.lossless())
    };
    let (mut pass, mut fail): (Option<u64>, Option<u64>) = (None, None);
    let mut rate = 25;
    for _ in 0..8 {
        if trial(rate, 3)? {
            pass = Some(rate);
        } else {
            fail = Some(rate);
        }
        rate = match (pass, fail) {
            (Some(p), None) if p >= 3200 => break,
            (Some(p), None) => p * 2,
            (None, Some(f)) if f <= 1 => break,
            (None, Some(f)) => f / 2,
            (Some(p), Some(f)) if f - p <= p / 4 => break,
            (Some(p), Some(f)) => (p + f) / 2,
            (None, None) => unreachable!("every trial passes or fails"),
        };
    }
    let mut rate = pass.unwrap_or(1);
    // The last try stands even if it lost: the soak reports its loss.
    for i in 0..4 {
        if trial(rate, 10)? || rate == 1 || i == 3 {
            break;
        }
        rate = (rate * 3 / 4).max(1);
    }
    Ok((rate, trials))
}

/// Traffic until `end` (or `stop`): iperf3 runs of up to 20 s at `mbps`, counted.
pub fn traffic(
    w: &World,
    cn_vip: Ipv4Addr,
    mbps: u64,
    end: Instant,
    stop: &AtomicBool,
    c: &Counts,
) {
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now()).as_secs();
        if left < 2 {
            return;
        }
        match udp_bidir(w, cn_vip, mbps, left.min(20) as u32) {
            Ok(r) => {
                Counts::add(&c.iperf_runs, 1);
                Counts::add(&c.up_packets, r.up.0);
                Counts::add(&c.up_lost, r.up.1);
                Counts::add(&c.down_packets, r.down.0);
                Counts::add(&c.down_lost, r.down.1);
            }
            Err(e) => {
                c.failed(&c.iperf_failed, "iperf3", &e);
                pause(stop, Duration::from_secs(1));
            }
        }
    }
}

/// DNS queries from gn until `stop`, one a second, round robin: cn and cn2
/// (NTM names with tunnels), a new upstream name each time, and a new NTM
/// name nobody registered (the DC says NXDOMAIN).
pub fn dns(w: &World, cn_vip: Ipv4Addr, cn2_vip: Ipv4Addr, stop: &AtomicBool, c: &Counts) {
    let server = SocketAddrV4::new(NTMA_LAN_ADDR, 53);
    let mut i = 0u64;
    while pause(stop, Duration::from_secs(1)) {
        let (name, want): (String, Option<Ipv4Addr>) = match i % 4 {
            0 => (CN_FQDN.into(), Some(cn_vip)),
            1 => (CN2_FQDN.into(), Some(cn2_vip)),
            2 => (
                format!("host{i}.example.org"),
                Some(ntm_world::UPSTREAM_ANSWER),
            ),
            _ => (format!("nosuch{i}.ntm.test"), None),
        };
        i += 1;
        let r = w
            .timed_a_query(Role::Gn, server, &name)
            .and_then(|(_, a, rcode)| {
                match want {
                    Some(v) => ensure!(a == vec![v], "{name}: {a:?} ({rcode}), not {v}"),
                    None => ensure!(
                        a.is_empty() && rcode.contains("NXDomain"),
                        "{name}: {a:?} {rcode}"
                    ),
                }
                Ok(())
            });
        match r {
            Ok(()) => Counts::add(&c.dns_ok, 1),
            Err(e) => c.failed(&c.dns_failed, "dns", &e),
        }
    }
}

/// gn2's tunnels torn down and set up again until `stop`, about every
/// `period`: see [`churn_once`].
pub fn churn(
    w: &World,
    ntma: &Ntma,
    cfg: ntma_user::config::Config,
    period: Duration,
    stop: &AtomicBool,
    c: &Counts,
) {
    let mut cfg = cfg;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        match churn_once(w, ntma, &mut cfg, c) {
            Ok(()) => Counts::add(&c.churn_cycles, 1),
            Err(e) => c.failed(&c.churn_failed, "churn", &e),
        }
        pause(stop, period.saturating_sub(t0.elapsed()));
    }
}

/// One cycle: gn2's entry changes identity (bound to its MAC, or to any
/// MAC, in turn), and SIGHUP makes ntma deregister it with its tunnels and
/// register it again; gn2's DHCP client asks again for its address
/// (INIT-REBOOT), gn2 resolves cn2 and pings it, which sets up a new
/// tunnel through the relay.
fn churn_once(
    w: &World,
    ntma: &Ntma,
    cfg: &mut ntma_user::config::Config,
    c: &Counts,
) -> Result<()> {
    let st = ntma.status().context("ntma status")?;
    let old: Vec<u32> = gn2_tunnels(&st).map(|t| t.id).collect();
    let reloads = st.stat("reloads");
    let gn2 = cfg
        .gn
        .iter_mut()
        .find(|g| g.fqdn == GN2_FQDN)
        .context("gn2 entry")?;
    gn2.mac = match gn2.mac.take() {
        Some(_) => None,
        None => Some(ntma_user::gn::MacAddr(w.mac(Role::Gn2, "eth0")?).to_string()),
    };
    ntm_world::write_private(&ntma.config, &cfg.to_toml()).context("write ntma.toml")?;
    ntma.reload()?;
    wait_status(ntma, "the reload applied, gn2 registered again", |s| {
        s.stat("reloads") > reloads
            && s.gn(GN2_FQDN).is_some_and(|g| g.registration.registered)
            && !gn2_tunnels(s).any(|t| old.contains(&t.id))
    })?;
    w.sh(
        Role::Gn2,
        &format!(
            "dhclient -x -pf {pf} eth0 2>&1; dhclient -4 -1 -lf {lf} -pf {pf} eth0 2>&1",
            pf = w.dhclient_pid_file(Role::Gn2).display(),
            lf = w.lease_file(Role::Gn2).display()
        ),
    )?;
    Counts::add(&c.dhcp_runs, 1);
    ensure!(
        w.gn_addr_in(Role::Gn2)?.is_some(),
        "gn2 has no address after dhclient"
    );
    let d = w.dig(Role::Gn2, &NTMA_LAN_ADDR.to_string(), CN2_FQDN)?;
    ensure!(d.a.len() == 1, "gn2 resolved cn2 to {d:?}");
    // Right after dhclient, gn2's route may not be there yet: a few tries.
    let mut p = w.ping(Role::Gn2, d.a[0], 2)?;
    for _ in 0..3 {
        if p.received > 0 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        p = w.ping(Role::Gn2, d.a[0], 2)?;
    }
    ensure!(p.received > 0, "gn2 -> cn2: {}", p.output.trim());
    wait_status(ntma, "gn2's new tunnel to cn2 up", |s| {
        gn2_tunnels(s).any(|t| t.up && t.peer_fqdn == CN2_FQDN && !old.contains(&t.id))
    })?;
    Ok(())
}

fn gn2_tunnels(
    s: &ntma_user::status::Status,
) -> impl Iterator<Item = &ntma_user::status::TunnelStatus> {
    s.tunnels.iter().filter(|t| t.gn == GN2_FQDN)
}

/// Waits until ntma's status satisfies `pred`.
pub fn wait_status(
    ntma: &Ntma,
    what: &str,
    mut pred: impl FnMut(&ntma_user::status::Status) -> bool,
) -> Result<ntma_user::status::Status> {
    wait_for(PATIENCE, || ntma.status().filter(|s| pred(s)))
        .ok_or_else(|| anyhow!("ntma: {what}: not within {PATIENCE:?}"))
}
