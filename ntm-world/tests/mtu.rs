//! MTU on the testbed (issue 9, item 2; docs/protocol.md §5 "MTU" and §6 "Data"): the
//! GN's link MTU is raised to 1500 after DHCP (as a GN that ignores the DHCP MTU
//! option, e.g. Windows, has it), and then
//!
//! - `ping -M do -s 1472` gets ICMP fragmentation needed from the adapter, and
//!   Linux's PMTU cache for the peer then holds the inner MTU;
//! - `ping -s 3000` (no DF) arrives at cn: the adapter sends the fragments it
//!   cannot carry whole as smaller fragments, each its own DATA;
//! - a TCP run through the tunnel has an MSS of at most the inner MTU − 40 on
//!   both ends (SYN and SYN-ACK clamped);
//!
//! on a 1500-byte uplink (inner MTU 1440), and again with the uplink's MTU lowered
//! to 1400 (`wan.mtu = 1400`, inner MTU 1340; the path behind it, and cn's TUN,
//! narrowed to match). Needs root, like every test here
//! (`cargo build --workspace --bins` first). What was seen is printed with
//! `OBSERVED` (`-- --nocapture`).

use std::process::Command;
use std::time::Duration;

use ntm_testbed::{ifname, wait_for, Role};
use ntm_world::{World, CN_FQDN, PATIENCE};

fn up(tag: &str) -> World {
    World::up(tag).expect("these integration tests need root and a working testbed")
}

/// The largest `mss:` that `ss -tin` in `role` shows for connections matching
/// `filter`, once one shows.
fn tcp_mss(w: &World, role: Role, filter: &str) -> u32 {
    wait_for(PATIENCE, || {
        let out = w
            .sh(role, &format!("ss -tin state established '{filter}'"))
            .ok()?;
        out.split_whitespace()
            .filter_map(|t| t.strip_prefix("mss:"))
            .filter_map(|v| v.parse::<u32>().ok())
            .max()
    })
    .unwrap_or_else(|| panic!("no established TCP connection ({filter}) in {role}"))
}

/// The whole check, for an uplink of `uplink_mtu` (None: the testbed's 1500).
fn oversize_packets_and_tcp(tag: &str, uplink_mtu: Option<u16>) {
    let w = up(tag);
    let inner = uplink_mtu.unwrap_or(1500) - 60;
    if let Some(m) = uplink_mtu {
        // The uplink and the path behind it (nat1's side of the link).
        w.sh(
            Role::Ntma,
            &format!("ip link set dev {} mtu {m}", ifname::NTMA_WAN),
        )
        .unwrap();
        w.sh(
            Role::Nat1,
            &format!("ip link set dev {} mtu {m}", ifname::NAT_LAN),
        )
        .unwrap();
    }
    // cn is a software node without path MTU discovery of its own: its TUN gets
    // the same inner MTU, so that its outer packets fit the narrower path too.
    let mut cn = w
        .node_with(Role::Cn, CN_FQDN, |c| c.mtu = c.mtu.min(inner))
        .unwrap();
    cn.registered().unwrap();
    let mut ntma = w.ntma(|c| c.wan.mtu = uplink_mtu).unwrap();
    let (_gn_vip, cn_vip) = w.leased_with_tunnel(&mut ntma).unwrap();
    let link = w.sh(Role::Gn, "ip -o link show dev eth0").unwrap();
    assert!(
        link.contains(&format!("mtu {inner} ")),
        "DHCP gave the inner MTU: {link}"
    );
    w.sh(Role::Gn, "ip link set dev eth0 mtu 1500").unwrap();

    // No DF, 3000 bytes (first: the GN's kernel knows no smaller path MTU yet): the
    // GN's 1500-byte fragments are split again by the adapter; cn reassembles and
    // answers.
    let before = ntma.status().unwrap();
    let out = w
        .sh(
            Role::Gn,
            &format!("ping -n -c 3 -i 0.2 -W 3 -M dont -s 3000 {cn_vip} 2>&1; true"),
        )
        .unwrap();
    assert!(out.contains("3 received"), "{out}");
    let st = ntma
        .wait("fragments counted", |s| {
            s.stat("fragmented") > before.stat("fragmented")
        })
        .unwrap();
    eprintln!(
        "OBSERVED uplink {uplink_mtu:?}: ping -s 3000 without DF: 3/3 replies; {} packets split into {} fragments",
        st.stat("fragmented") - before.stat("fragmented"),
        st.stat("fragments") - before.stat("fragments"),
    );

    // TCP through the tunnel (before the GN's kernel learns a smaller path MTU,
    // which would make it advertise a smaller MSS itself): both ends see an MSS of
    // at most inner − 40.
    let mut srv = Command::new("iperf3");
    srv.args(["-s", "-1", "-B", &cn_vip.to_string(), "-p", "5201"]);
    let mut srv = w.tb.spawn(Role::Cn, &srv).unwrap();
    // The client connects once the server listens (a SYN before that is
    // refused, and iperf3 -J then exits 0 with the error in its JSON).
    wait_for(PATIENCE, || {
        w.sh(Role::Cn, "ss -Hltn 'sport = :5201'")
            .ok()
            .filter(|o| o.contains(":5201"))
    })
    .unwrap_or_else(|| panic!("iperf3 -s never listened in cn: {}", srv.log()));
    // Long enough to be read on both ends; stopped once it has been. Retried
    // while the answer is "unable to connect" (whatever iperf3's exit status).
    let cmd = format!("iperf3 -c {cn_vip} -p 5201 -t 60 -J");
    let mut client = Command::new("sh");
    client.args([
        "-c",
        &format!("while {cmd} | grep -q 'unable to connect'; do sleep 0.1; done"),
    ]);
    let mut client = w.tb.spawn(Role::Gn, &client).unwrap();
    let gn_mss = tcp_mss(&w, Role::Gn, &format!("dst {cn_vip}:5201"));
    let cn_mss = tcp_mss(&w, Role::Cn, "sport = :5201");
    let _ = client.stop(Duration::from_secs(5));
    let _ = srv.stop(Duration::from_secs(5));
    eprintln!("OBSERVED uplink {uplink_mtu:?}: TCP MSS gn {gn_mss}, cn {cn_mss}");
    let max = u32::from(inner) - 40;
    assert!(gn_mss <= max, "gn's MSS {gn_mss} > {max}");
    assert!(cn_mss <= max, "cn's MSS {cn_mss} > {max}");
    // gn's SYNs (MSS 1460 on its 1500-byte link) were clamped, by the fast
    // path or, for a SYN held while the tunnel came up, the slow path. How
    // many depends on how far iperf3 got (control and data connections)
    // and on cn's MSS: at least one.
    let clamps = |s: &ntma_user::status::Status| {
        s.worker_counter("mss_clamped") + s.stat("mss_clamped_slow")
    };
    ntma.wait("MSS clamps counted", |s| clamps(s) >= 1).unwrap();
    // DF set, 1500 bytes: ICMP fragmentation needed with the inner MTU, and the
    // kernel's PMTU cache for cn's VIP takes it.
    let before = ntma.status().unwrap();
    let out = w
        .sh(
            Role::Gn,
            &format!("ping -n -c 1 -W 2 -M do -s 1472 {cn_vip} 2>&1; true"),
        )
        .unwrap();
    let icmp_line = out
        .lines()
        .find(|l| l.contains("Frag needed") || l.contains("mtu ="))
        .unwrap_or_else(|| panic!("no fragmentation-needed answer: {out}"))
        .to_owned();
    assert!(icmp_line.contains(&format!("mtu = {inner}")), "{icmp_line}");
    eprintln!("OBSERVED uplink {uplink_mtu:?}: {icmp_line}");
    let route = w.sh(Role::Gn, &format!("ip route get {cn_vip}")).unwrap();
    assert!(
        route.contains(&format!("mtu {inner}")),
        "PMTU cache: {route}"
    );
    eprintln!(
        "OBSERVED uplink {uplink_mtu:?}: {}",
        route.replace('\n', " ")
    );
    let st = ntma
        .wait("too_big and slow_too_big counted", |s| {
            s.worker_counter("too_big") > before.worker_counter("too_big")
                && s.drop_count("slow_too_big") > before.drop_count("slow_too_big")
        })
        .unwrap();
    assert!(st.gns[0].gn.mac.is_some());
    // Now the kernel knows: the same ping, fragmented by the GN itself, goes through.
    let p = w.sh(
        Role::Gn,
        &format!("ping -n -c 2 -i 0.2 -W 3 -s 1472 {cn_vip} 2>&1; true"),
    );
    let p = p.unwrap();
    assert!(p.contains(" 0% packet loss"), "{p}");

    let _ = (ntma.stop(), w.down());
}

#[test]
fn oversize_packets_and_tcp_on_a_1500_byte_uplink() {
    oversize_packets_and_tcp("mtu15", None);
}

#[test]
fn oversize_packets_and_tcp_on_a_1400_byte_uplink() {
    oversize_packets_and_tcp("mtu14", Some(1400));
}
