//! `ntm-demo`: the adapter's demo on the testbed (`cargo xtask demo` builds
//! the workspace in release mode and runs this).
//!
//! Testbed up; DC, RS, cn, cn2 and ntma started; in the gn namespace the
//! stock DHCP client obtains the VIP, a stock DNS tool resolves
//! cn.ntm.test through the adapter; the second GN, gn2, gets its own VIP
//! and tunnel, cn reaches it by name and gn talks to it directly on the LAN;
//! ping and iperf3 run through gn's tunnel
//! both ways while tcpdump on the internet bridge checks that none of
//! iperf3's known payload crosses it in clear (suite 2 encrypts), each run
//! with the counters that explain its TCP retransmissions (cn's TUN drops,
//! the adapter's drops, its AF_XDP rings' and NICs' kernel counters, every
//! other drop and TCP counter of the testbed); then cn, restarted so that it knows no tunnel, opens a TCP
//! connection to gn.ntm.test (the adapter is the target), and cn2 behind
//! another NAT pings the GN through the relay; a summary; teardown.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use ntm_world::capture::{contains, udp_payload_on_port, IPERF_PATTERN};
use ntm_world::counters::{describe, grown};
use ntm_world::{
    payload, require_root, Role, World, CN2_FQDN, CN_FQDN, GN2_FQDN, GN_FQDN, NTMA_LAN_ADDR,
};
use ntm_world::{Iperf, Node, Ntma, Ping};

/// The demo's testbed prefix.
const PREFIX: &str = "demo-";
/// Seconds per iperf3 run.
const IPERF_SECS: u32 = 5;

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nntm-demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn mbps(i: &Iperf) -> String {
    format!(
        "{:.0} Mbit/s ({} TCP retransmissions)",
        i.received_bps / 1e6,
        i.retransmits.map_or_else(|| "?".into(), |r| r.to_string())
    )
}

/// What the demo measured, for the summary.
struct Summary {
    gn_vip: Ipv4Addr,
    /// From the GN's DNS query to its answer (the tunnel's set-up).
    setup: Duration,
    /// The ping gn -> cn and its RTT min/avg/max.
    ping: (Ping, (f64, f64, f64)),
    suite: String,
    up: Throughput,
    down: Throughput,
    /// The "cn's TUN device" line.
    cn_tun: String,
    /// The payload checks of both directions.
    leak: String,
    relay_path: String,
    /// The second GN's lines.
    gn2: String,
    /// The "AF_XDP mode", drops and "XDP verdicts" lines.
    ntma_lines: String,
}

/// One iperf3 run and the counters that explain its retransmissions.
struct Throughput {
    bw: Iperf,
    why: String,
    /// The payload check of its captures.
    leak: String,
}

fn run() -> Result<()> {
    require_root()?;
    let t0 = Instant::now();
    let w = testbed_up()?;
    step("DC in dc, RS in rs, ntm-node cn.ntm.test in cn, cn2.ntm.test in cn2 (behind nat2)");
    let mut cn = w.node(Role::Cn, CN_FQDN)?;
    let mut cn2 = w.node(Role::Cn2, CN2_FQDN)?;
    let cn_vip = cn.registered()?;
    let cn2_vip = cn2.registered()?;
    eprintln!("    cn.ntm.test  has VIP {cn_vip}\n    cn2.ntm.test has VIP {cn2_vip}");

    let (mut ntma, gn_vip) = start_ntma(&w)?;
    dhcp(&w, gn_vip)?;
    let (setup, suite) = resolve_cn(&w, &mut ntma, cn_vip)?;
    let ping = pings(&w, cn_vip, gn_vip)?;
    let gn2 = second_gn(&w, &mut ntma, cn_vip, gn_vip)?;
    let (up, down, cn_tun) = throughput(&w, &cn, &ntma, cn_vip)?;

    drop(cn);
    let cn = cn_opens(&w, &mut ntma, gn_vip)?;
    let relay_path = relayed(&w, &mut ntma, gn_vip)?;
    let ntma_lines = stop_ntma(&w, &mut ntma)?;

    let leak = format!(
        "gn -> cn: {}\n                       cn -> gn: {}",
        up.leak, down.leak
    );
    print_summary(&Summary {
        gn_vip,
        setup,
        ping,
        suite,
        up,
        down,
        cn_tun,
        leak,
        relay_path,
        gn2,
        ntma_lines,
    });
    println!("demo time              {:.1} s", t0.elapsed().as_secs_f64());
    println!("====================================================");

    step("teardown");
    drop(cn);
    drop(cn2);
    let prefix = w.tb.prefix().to_owned();
    w.down()?;
    eprintln!("    testbed {prefix} removed");
    Ok(())
}

/// Removes what a crashed demo left behind, then brings the testbed up.
fn testbed_up() -> Result<World> {
    step("testbed up (namespaces gn, gn2, lan, ntma, nat1, inet, dc, rs, cn, nat2, cn2; prefix demo-)");
    // A demo that crashed may have left its testbed and processes behind.
    ntm_testbed::down(PREFIX).map_err(|e| anyhow::anyhow!("removing an old demo testbed: {e}"))?;
    World::up_with(PREFIX, |_| {})
}

/// Starts ntma and waits for its registration and fast path; returns the
/// GN's VIP.
fn start_ntma(w: &World) -> Result<(Ntma, Ipv4Addr)> {
    step("ntma in the ntma namespace, serving gn.ntm.test and gn2.ntm.test on lan0, uplink wan0 behind nat1");
    let mut ntma = w.ntma(|_| {})?;
    let gn_vip = ntma.registered()?;
    let gn2_vip = ntma.registered_gn(GN2_FQDN)?;
    eprintln!("    registered gn2.ntm.test: VIP {gn2_vip}");
    let st = ntma.wait("fast path up", |s| !s.datapath.mode.is_empty())?;
    eprintln!(
        "    registered gn.ntm.test: VIP {gn_vip}, observed {} (behind NAT: {}), AF_XDP {} mode",
        st.gns[0]
            .registration
            .observed
            .map_or_else(|| "-".into(), |o| o.to_string()),
        st.gns[0].registration.behind_nat.unwrap_or(false),
        st.datapath.mode
    );
    Ok((ntma, gn_vip))
}

/// The GN obtains the VIP with the stock DHCP client.
fn dhcp(w: &World, gn_vip: Ipv4Addr) -> Result<()> {
    step("gn: dhclient eth0 (stock ISC DHCP client)");
    let got = w.dhclient()?;
    ensure!(got == gn_vip, "DHCP gave {got}, the DC gave {gn_vip}");
    let link = w.sh(Role::Gn, "ip -4 -o addr show dev eth0; ip -o link show dev eth0 | grep -o 'mtu [0-9]*'; ip route show default")?;
    eprint!("{}", indent(&link));
    Ok(())
}

/// The GN resolves cn.ntm.test through the adapter, which sets up the
/// tunnel; returns the set-up time and the tunnel's suite.
fn resolve_cn(w: &World, ntma: &mut Ntma, cn_vip: Ipv4Addr) -> Result<(Duration, String)> {
    step("gn: dig @100.64.0.1 cn.ntm.test (the query sets up the tunnel)");
    let dns = SocketAddrV4::new(NTMA_LAN_ADDR, 53);
    let (setup, a, rcode) = w.timed_a_query(Role::Gn, dns, CN_FQDN)?;
    ensure!(a == vec![cn_vip], "cn.ntm.test resolved to {a:?} ({rcode})");
    let d = w.dig(Role::Gn, "100.64.0.1", CN_FQDN)?;
    eprintln!(
        "    {CN_FQDN} -> {:?} ({}); first query answered in {:.2} ms",
        d.a,
        d.status,
        setup.as_secs_f64() * 1e3
    );
    let up = ntma.wait("tunnel to cn up", |s| {
        s.tunnel_between(GN_FQDN, CN_FQDN).is_some_and(|t| t.up)
    })?;
    let t = up.tunnel_between(GN_FQDN, CN_FQDN).expect("checked");
    eprintln!(
        "    tunnel #{} {} path, suite {}, ntma {} (DIR_REQ to tunnel up: {})",
        t.id,
        t.path,
        t.suite,
        t.role,
        t.setup_ms
            .map_or_else(|| "-".into(), |m| format!("{m:.2} ms"))
    );
    let other = w.dig(Role::Gn, "100.64.0.1", "example.org")?;
    eprintln!(
        "    example.org -> {:?} (forwarded to the upstream resolver)",
        other.a
    );
    Ok((setup, t.suite.clone()))
}

/// gn2, the second GN on the LAN (bound to its MAC in ntma's configuration):
/// its own VIP by DHCP, its own tunnel to cn, reached by cn by name, and
/// talking to gn directly on the LAN. Returns the summary's lines.
fn second_gn(w: &World, ntma: &mut Ntma, cn_vip: Ipv4Addr, gn_vip: Ipv4Addr) -> Result<String> {
    step("gn2: dhclient eth0, dig cn.ntm.test, ping cn; cn -> gn2.ntm.test; gn <-> gn2 on the LAN");
    let vip = ntma.registered_gn(GN2_FQDN)?;
    let got = w.dhclient_in(Role::Gn2)?;
    ensure!(got == vip, "DHCP gave gn2 {got}, the DC gave it {vip}");
    let d = w.dig(Role::Gn2, "100.64.0.1", CN_FQDN)?;
    ensure!(d.a == vec![cn_vip], "gn2 resolved cn to {d:?}");
    let to_cn = w.ping(Role::Gn2, cn_vip, 5)?;
    let st = ntma.wait("gn2's tunnel to cn up", |s| {
        s.tunnels
            .iter()
            .any(|t| t.gn == GN2_FQDN && t.peer_fqdn == CN_FQDN && t.up)
    })?;
    let t = st
        .tunnels
        .iter()
        .find(|t| t.gn == GN2_FQDN)
        .context("checked")?;
    let d = w.dig(Role::Cn, "127.0.0.1", GN2_FQDN)?;
    ensure!(d.a == vec![vip], "cn resolved gn2 to {d:?}");
    let from_cn = w.ping(Role::Cn, vip, 5)?;
    let d = w.dig(Role::Gn, "100.64.0.1", GN2_FQDN)?;
    ensure!(d.a == vec![vip], "gn resolved gn2 to {d:?}");
    let direct = w.ping(Role::Gn, vip, 5)?;
    let back = w.ping(Role::Gn2, gn_vip, 5)?;
    let tunnels = ntma.status().context("ntma status")?.tunnels;
    ensure!(
        !tunnels
            .iter()
            .any(|t| t.peer_vip == gn_vip || t.peer_vip == vip),
        "a tunnel between the GNs: {tunnels:?}"
    );
    let lines = format!(
        "GN2 VIP by DHCP        {vip} (gn2.ntm.test, bound to gn2's MAC)\n\
         gn2 <-> cn             ping {}/{} to cn, {}/{} from cn (by name), over gn2's own tunnel #{} ({} path)\n\
         gn <-> gn2             ping {}/{} and {}/{} directly on the LAN (names answered by ntma, no tunnel)",
        to_cn.received,
        to_cn.sent,
        from_cn.received,
        from_cn.sent,
        t.id,
        t.path,
        direct.received,
        direct.sent,
        back.received,
        back.sent,
    );
    eprintln!("{}", indent(&lines));
    Ok(lines)
}

/// Pings through the tunnel both ways; returns gn -> cn's and its RTT.
fn pings(w: &World, cn_vip: Ipv4Addr, gn_vip: Ipv4Addr) -> Result<(Ping, (f64, f64, f64))> {
    step("gn -> cn: ping -c 20");
    let p = w.ping(Role::Gn, cn_vip, 20)?;
    ensure!(p.received > 0, "no ping reply: {}", p.output);
    let rtt = p.rtt.context("ping printed no RTT")?;
    eprintln!(
        "    {}/{} replies, rtt min/avg/max {:.3}/{:.3}/{:.3} ms",
        p.received, p.sent, rtt.0, rtt.1, rtt.2
    );
    step("cn -> gn: ping -c 5");
    let pb = w.ping(Role::Cn, gn_vip, 5)?;
    ensure!(pb.received > 0, "no ping reply: {}", pb.output);
    eprintln!("    {}/{} replies", pb.received, pb.sent);
    Ok((p, rtt))
}

/// iperf3 both ways with the payload captures; returns both runs and the
/// summary's line about cn's TUN device.
fn throughput(
    w: &World,
    cn: &Node,
    ntma: &Ntma,
    cn_vip: Ipv4Addr,
) -> Result<(Throughput, Throughput, String)> {
    step(&format!(
        "iperf3 gn -> cn ({IPERF_SECS} s, --repeating-payload: a known payload), \
         tcpdump on the internet bridge (tunnel port 7700) and on gn's eth0"
    ));
    let up = iperf3_checked(w, cn, ntma, cn_vip, false)?;
    step(&format!(
        "iperf3 cn -> gn ({IPERF_SECS} s, -R), the same captures"
    ));
    let down = iperf3_checked(w, cn, ntma, cn_vip, true)?;
    let tun = cn.status().context("cn's status file")?.tun;
    let cn_tun = format!(
        "{}: queue {} packets, offload {}",
        tun.name,
        tun.queue_len,
        match (tun.offload, tun.udp_offload) {
            (true, true) => "TSO+USO/GRO",
            (true, false) => "TSO/GRO",
            _ => "none",
        }
    );
    Ok((up, down, cn_tun))
}

/// One iperf3 run (`reverse`: cn sends) under the captures, explained and
/// checked for payload in clear.
fn iperf3_checked(
    w: &World,
    cn: &Node,
    ntma: &Ntma,
    cn_vip: Ipv4Addr,
    reverse: bool,
) -> Result<Throughput> {
    let caps = captures(w, if reverse { "down" } else { "up" })?;
    let (bw, why) = iperf3_explained(w, cn, ntma, cn_vip, reverse)?;
    eprintln!("    {}\n    {why}", mbps(&bw));
    let leak = payload_check(caps)?;
    eprintln!("    {leak}");
    Ok(Throughput { bw, why, leak })
}

/// cn restarts (it forgets every tunnel) and opens a TCP connection to
/// gn.ntm.test: the adapter is the tunnel's target. Returns the new cn.
fn cn_opens(w: &World, ntma: &mut Ntma, gn_vip: Ipv4Addr) -> Result<Node> {
    step("cn restarts (it forgets every tunnel), then opens a TCP connection to gn.ntm.test");
    let mut cn = w.node(Role::Cn, CN_FQDN)?;
    cn.registered()?;
    let d = w.dig(Role::Cn, "127.0.0.1", GN_FQDN)?;
    ensure!(d.a == vec![gn_vip], "gn.ntm.test resolved to {d:?} in cn");
    let data = payload(256 * 1024, 42);
    let got = w.nc_transfer(Role::Gn, gn_vip, Role::Cn, 5001, &data, "demo-cn-gn")?;
    ensure!(got == data, "the TCP transfer cn -> gn differs");
    let st = ntma.wait("tunnel opened by cn", |s| {
        s.tunnel_between(GN_FQDN, CN_FQDN)
            .is_some_and(|t| t.up && t.opened_by == "peer")
    })?;
    let t = st.tunnel_between(GN_FQDN, CN_FQDN).expect("checked");
    eprintln!(
        "    cn resolved {GN_FQDN} -> {gn_vip}; 256 KiB over TCP arrived intact; tunnel #{} opened by cn, {} path",
        t.id, t.path
    );
    Ok(cn)
}

/// cn2, behind another NAT, pings the GN through the relay; returns the
/// tunnel's path.
fn relayed(w: &World, ntma: &mut Ntma, gn_vip: Ipv4Addr) -> Result<String> {
    step("cn2 (behind nat2) -> gn: ping -c 5 (both ends behind NAT: relayed by the RS)");
    let d2 = w.dig(Role::Cn2, "127.0.0.1", GN_FQDN)?;
    ensure!(
        d2.a == vec![gn_vip],
        "gn.ntm.test resolved to {d2:?} in cn2"
    );
    let p2 = w.ping(Role::Cn2, gn_vip, 5)?;
    ensure!(
        p2.received > 0,
        "no ping reply through the relay: {}",
        p2.output
    );
    let st = ntma.wait("tunnel to cn2", |s| {
        s.tunnel_between(GN_FQDN, CN2_FQDN).is_some()
    })?;
    let relay_path = st
        .tunnel_between(GN_FQDN, CN2_FQDN)
        .map(|t| t.path.clone())
        .unwrap_or_default();
    eprintln!(
        "    {}/{} replies over the {relay_path} path, rtt avg {:.3} ms",
        p2.received,
        p2.sent,
        p2.rtt.map_or(0.0, |r| r.1)
    );
    Ok(relay_path)
}

/// Prints ntma's status, stops it and checks the DEREG and the XDP
/// detach; returns the summary's lines about its datapath.
fn stop_ntma(w: &World, ntma: &mut Ntma) -> Result<String> {
    step("ntma status");
    let text = ntma.status_text()?;
    eprint!("{}", indent(&text));
    let st = ntma.status().context("ntma status")?;

    step("stop ntma (SIGTERM): DEREG, XDP detached");
    let exit = ntma.stop()?;
    ensure!(exit.success(), "ntma exited with {exit}");
    let attached = w.xdp_attached(Role::Ntma)?;
    ensure!(attached.is_empty(), "XDP still attached to {attached:?}");
    let dereg =
        ntm_testbed::wait_until(ntm_world::PATIENCE, || w.dc_log().contains("deregistered"));
    eprintln!(
        "    exit {exit}; XDP attached to: none; DC saw the DEREG: {}",
        if dereg { "yes" } else { "no" }
    );

    let mut lines = format!("AF_XDP mode            {}\n", st.datapath.mode);
    let drops = st.drops();
    if drops.is_empty() {
        lines.push_str("drops by reason        none\n");
    } else {
        lines.push_str("drops by reason        (slow path and fast path)\n");
        for (k, v) in drops {
            lines.push_str(&format!("    {k:<24} {v}\n"));
        }
    }
    let kernel: BTreeMap<String, u64> = st
        .kernel_losses()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    lines.push_str(&format!(
        "AF_XDP rings and NICs  {} (the kernel's counters: ntma status)\n",
        describe(&kernel)
    ));
    let verdicts: Vec<String> = st
        .datapath
        .xdp
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    lines.push_str(&format!("XDP verdicts           {}", verdicts.join(" ")));
    Ok(lines)
}

fn print_summary(s: &Summary) {
    let (p, rtt) = &s.ping;
    println!("\n================ ntma demo summary ================");
    println!("GN VIP by DHCP         {} (gn.ntm.test)", s.gn_vip);
    println!(
        "tunnel set-up          {:.2} ms from the GN's DNS query to its answer (cn.ntm.test)",
        s.setup.as_secs_f64() * 1e3
    );
    println!(
        "RTT gn -> cn           min/avg/max {:.3}/{:.3}/{:.3} ms ({}/{} replies)",
        rtt.0, rtt.1, rtt.2, p.received, p.sent
    );
    println!(
        "throughput gn -> cn    {} (iperf3 TCP, {IPERF_SECS} s)",
        mbps(&s.up.bw)
    );
    println!("                       {}", s.up.why);
    println!(
        "throughput cn -> gn    {} (iperf3 TCP -R, {IPERF_SECS} s)",
        mbps(&s.down.bw)
    );
    println!("                       {}", s.down.why);
    println!("cn's TUN device        {}", s.cn_tun);
    println!("tunnel suite           {} (cn.ntm.test)", s.suite);
    println!("payload on the wire    {}", s.leak);
    println!(
        "responder side         cn -> gn.ntm.test TCP 256 KiB intact; cn2 -> gn via {}",
        s.relay_path
    );
    println!("{}", s.gn2);
    println!("{}", s.ntma_lines);
}

/// Frames each capture keeps: a few seconds of a bulk transfer.
const CAPTURE_FRAMES: usize = 4000;

/// tcpdump on the internet bridge (tunnel datagrams) and on gn's eth0
/// (iperf3's own TCP segments, in clear: the check's control).
fn captures(w: &World, tag: &str) -> Result<[ntm_world::capture::Capture; 2]> {
    Ok([
        w.capture(
            Role::Inet,
            "br0",
            "udp port 7700",
            CAPTURE_FRAMES,
            &format!("demo-inet-{tag}"),
        )?,
        w.capture(
            Role::Gn,
            "eth0",
            "tcp port 5201",
            CAPTURE_FRAMES,
            &format!("demo-gn-{tag}"),
        )?,
    ])
}

/// Looks for iperf3's known payload in every tunnel DATA datagram captured
/// on the internet bridge, and (to show that the check can see it) in the
/// GN's own TCP segments. Fails if any tunnel datagram carries it.
fn payload_check([inet, gn]: [ntm_world::capture::Capture; 2]) -> Result<String> {
    let (inet, gn) = (inet.finish()?, gn.finish()?);
    let data: Vec<&[u8]> = inet
        .iter()
        .filter_map(|f| udp_payload_on_port(f, 7700))
        .filter(|p| p.len() > 32 && p[0] == 2 && p[1] == 1)
        .collect();
    let leaked = data.iter().filter(|p| contains(p, IPERF_PATTERN)).count();
    let plain = gn.iter().filter(|f| contains(f, IPERF_PATTERN)).count();
    ensure!(
        !data.is_empty(),
        "the capture on the internet bridge saw no tunnel DATA"
    );
    ensure!(
        plain > 0,
        "the GN's own TCP segments do not show iperf3's payload: the check would see nothing"
    );
    ensure!(
        leaked == 0,
        "{leaked} of {} tunnel datagrams carry iperf3's payload in clear",
        data.len()
    );
    Ok(format!(
        "iperf3's known bytes in 0 of {} tunnel DATA datagrams on the internet bridge \
         (in clear in {plain} of the GN's {} TCP segments)",
        data.len(),
        gn.len()
    ))
}

/// iperf3 between gn and cn's VIP (`reverse`: cn sends), and the counters
/// that explain its TCP retransmissions: the drops of cn's TUN device
/// (ntm-node's status: `tx_dropped` is what cn's stack sent that the node
/// did not read in time, `rx_dropped` what the node wrote that the stack
/// refused), the adapter's drops by reason and the kernel's counters of its
/// AF_XDP rings and NICs (`ntma status`), and every other kernel drop
/// counter and TCP counter of the testbed that grew during the run
/// ([`ntm_world::counters`]: e.g. D-SACKs, retransmissions of segments that
/// had not been lost).
fn iperf3_explained(
    w: &World,
    cn: &Node,
    ntma: &Ntma,
    cn_vip: Ipv4Addr,
    reverse: bool,
) -> Result<(Iperf, String)> {
    let tun = |s: &ntm_node::Status| (s.tun.counter("tx_dropped"), s.tun.counter("rx_dropped"));
    let cn0 = cn.status().context("cn's status file")?;
    let tun0 = tun(&cn0);
    let st0 = ntma.status().context("ntma status")?;
    let (ntma0, kernel0) = (st0.drops(), st0.kernel_losses());
    let t = w.iperf3_counted(Role::Cn, cn_vip, Role::Gn, IPERF_SECS, reverse)?;
    // cn rewrites its status every second: read one written after the run.
    std::thread::sleep(2 * ntm_node::STATUS_EVERY);
    let cn1 = cn.status().context("cn's status file")?;
    let tun1 = tun(&cn1);
    let node_grown = grown(&cn0.drops, &cn1.drops);
    let st1 = ntma.status().context("ntma status")?;
    let ntma_grown = grown(&ntma0, &st1.drops());
    let kernel_grown = grown(&kernel0, &st1.kernel_losses());
    let why = format!(
        "retransmissions {}: cn's TUN drops tx {} rx {} and its own drops {} (ntm-node status); ntma drops {}; ntma's AF_XDP rings and NICs {}; kernel counters grown on the testbed: {}",
        t.iperf.retransmits.map_or_else(|| "?".into(), |r| r.to_string()),
        tun1.0.saturating_sub(tun0.0),
        tun1.1.saturating_sub(tun0.1),
        describe(&node_grown),
        describe(&ntma_grown),
        describe(&kernel_grown),
        describe(&t.grown)
    );
    Ok((t.iperf, why))
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}
