//! The testbed on this machine: built, checked, repaired, torn down. These
//! tests need root; without it they fail and say so.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ntm_testbed::{
    down, in_netns, require_root, status, unique_prefix, wait_for, wait_until, Options, Role,
    Testbed, CN2_FQDN, CN_ADDR, CN_FQDN, DC2_ADDR, DC_ADDR, ETCD_ADDR, GN2_FQDN, GN_FQDN,
    NAT1_WAN_ADDR, NAT2_WAN_ADDR, NODE_FQDN, NTMA_LAN_ADDR, RS_ADDR,
};

const PATIENCE: Duration = Duration::from_secs(10);

fn root() {
    if let Err(e) = require_root() {
        panic!("{e}");
    }
}

/// Pings `to` from `role` until one answer comes back; panics with the
/// last failure otherwise.
fn ping(tb: &Testbed, role: Role, to: Ipv4Addr) {
    let to = to.to_string();
    let mut last = None;
    let ok = wait_until(PATIENCE, || {
        match tb.exec(role, ["ping", "-n", "-c1", "-W1", to.as_str()]) {
            Ok(()) => true,
            Err(e) => {
                last = Some(e);
                false
            }
        }
    });
    assert!(ok, "{role} cannot ping {to}: {last:?}");
}

/// Sends a datagram from `role` to a server in cn, which echoes it back;
/// returns the source address cn saw.
fn udp_echo_via_cn(tb: &Testbed, role: Role, port: u16) -> SocketAddr {
    let server = tb
        .in_netns(Role::Cn, || UdpSocket::bind((CN_ADDR, port)))
        .unwrap()
        .unwrap();
    let client = tb
        .in_netns(role, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    for s in [&server, &client] {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    let mut buf = [0u8; 64];
    let seen = wait_for(PATIENCE, || {
        client.send_to(b"hello cn", (CN_ADDR, port)).ok()?;
        let (n, from) = server.recv_from(&mut buf).ok()?;
        (&buf[..n] == b"hello cn").then_some(from)
    })
    .unwrap_or_else(|| panic!("nothing from {role} reached cn:{port}"));
    server.send_to(b"hello back", seen).unwrap();
    // One answer, sent once: wait for it as long as anything may take.
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let (n, from) = client
        .recv_from(&mut buf)
        .expect("cn's answer came back through the NAT");
    assert_eq!(&buf[..n], b"hello back");
    assert_eq!(from, SocketAddr::from((CN_ADDR, port)));
    seen
}

/// Packets counted by the masquerade rule of `role`'s NAT table.
fn masqueraded(tb: &Testbed, role: Role) -> u64 {
    let table = tb
        .output(
            role,
            ["nft", "list", "table", "ip", tb.nat_table().as_str()],
        )
        .unwrap();
    let line = table
        .lines()
        .find(|l| l.contains("masquerade"))
        .unwrap_or_else(|| panic!("no masquerade rule in {table}"));
    let mut words = line.split_whitespace();
    words.find(|w| *w == "packets");
    words
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// Asserts that nothing carrying `prefix` is left on the machine.
fn assert_gone(prefix: &str) {
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(netns.is_empty(), "namespaces left: {netns:?}");
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    let ours: Vec<&str> = links
        .lines()
        .filter(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|n| n.trim().starts_with(prefix))
        })
        .collect();
    assert!(ours.is_empty(), "host links left: {ours:?}");
    let etc: Vec<_> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(etc.is_empty(), "/etc/netns entries left: {etc:?}");
    assert!(
        !ntm_testbed::state_dir(prefix).exists(),
        "state directory left"
    );
    let st = status(prefix).unwrap();
    assert!(st.is_absent(), "{st}");
    assert!(!st.is_complete());
}

#[test]
fn up_builds_the_whole_topology_and_dropping_the_guard_removes_it() {
    root();
    let prefix = unique_prefix("up");
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let tb = Testbed::up(&prefix).unwrap();

    let st = tb.status().unwrap();
    assert!(st.is_complete(), "{st}");
    let shown = st.to_string();
    assert!(shown.contains("complete"), "{shown}");
    for role in Role::ALL {
        assert!(shown.contains(&tb.ns(role)), "{shown}");
    }
    assert!(
        shown.contains(&format!("nft table {} loaded", tb.nat_table())),
        "{shown}"
    );
    for role in [Role::Gn, Role::Gn2] {
        let gn = st.namespace(role).interface("eth0").unwrap();
        assert!(
            gn.addrs.is_empty(),
            "{role} has an address before DHCP: {gn:?}"
        );
        assert_eq!(gn.tx_csum_off, Some(true));
    }
    let lan = st.namespace(Role::Lan);
    assert_eq!(lan.interface("br0").unwrap().forwards_at_once, Some(true));
    // A switch: malformed IPv4 from a GN must reach lan0 (tests/bad_input.rs in ntm-world).
    assert!(!lan.bridge_nf_call);
    for port in ["gn", "gn2", "ntma"] {
        let i = lan.interface(port).unwrap();
        assert_eq!(i.master.as_deref(), Some("br0"), "{port}");
        assert_eq!(i.port_state.as_deref(), Some("forwarding"), "{port}");
        assert_eq!(i.tx_csum_off, Some(true), "{port}");
    }
    let routed = [Role::Ntma, Role::Cn2];
    for role in routed {
        assert!(st.namespace(role).default_route.is_some());
    }
    for role in Role::ALL.into_iter().filter(|r| !routed.contains(r)) {
        // No default route: nothing leads out of the testbed.
        assert_eq!(st.namespace(role).default_route, None, "{role}");
    }
    assert!(
        !st.namespace(Role::Ntma).ip_forward,
        "the adapter forwards on its own"
    );
    assert!(st.bpffs);

    // Through nat1 and the bridge, through nat2, and across the bridge.
    ping(&tb, Role::Ntma, CN_ADDR);
    ping(&tb, Role::Ntma, DC_ADDR);
    ping(&tb, Role::Cn2, CN_ADDR);
    ping(&tb, Role::Cn, RS_ADDR);
    // The second DC and the etcd namespace sit on the same bridge.
    ping(&tb, Role::Ntma, DC2_ADDR);
    ping(&tb, Role::Dc2, ETCD_ADDR);
    ping(&tb, Role::Dc, DC2_ADDR);
    ping(&tb, Role::Gn, Ipv4Addr::LOCALHOST);

    // gn, gn2 and lan0 share one Ethernet segment: with addresses set by
    // hand (no DHCP server runs here) they reach each other at once.
    for (role, addr) in [(Role::Gn, "100.64.9.2/10"), (Role::Gn2, "100.64.9.3/10")] {
        tb.exec(role, ["ip", "addr", "add", addr, "dev", "eth0"])
            .unwrap();
    }
    ping(&tb, Role::Gn, Ipv4Addr::new(100, 64, 9, 3));
    ping(&tb, Role::Gn2, Ipv4Addr::new(100, 64, 9, 2));
    ping(&tb, Role::Gn2, NTMA_LAN_ADDR);
    for role in [Role::Gn, Role::Gn2] {
        tb.exec(role, ["ip", "addr", "flush", "dev", "eth0"])
            .unwrap();
    }

    // Both NATs masquerade: cn sees their outside addresses, answers get back.
    let before = masqueraded(&tb, Role::Nat2);
    assert_eq!(udp_echo_via_cn(&tb, Role::Cn2, 4000).ip(), NAT2_WAN_ADDR);
    assert_eq!(udp_echo_via_cn(&tb, Role::Ntma, 4001).ip(), NAT1_WAN_ADDR);
    assert_eq!(udp_echo_via_cn(&tb, Role::Dc, 4002).ip(), DC_ADDR);
    assert!(masqueraded(&tb, Role::Nat2) > before);
    assert!(masqueraded(&tb, Role::Nat1) > 0);
    // The inside of a NAT is unreachable from the internet.
    let e = tb
        .exec(Role::Cn, ["ping", "-n", "-c1", "-W1", "192.168.20.2"])
        .unwrap_err();
    assert!(e.to_string().contains("ping"), "{e}");

    // Each namespace has its own resolver configuration; the host's is untouched.
    for role in [Role::Gn, Role::Gn2] {
        let resolv = tb.output(role, ["cat", "/etc/resolv.conf"]).unwrap();
        assert!(
            resolv.contains(&format!("nameserver {NTMA_LAN_ADDR}")),
            "{role}: {resolv}"
        );
    }
    let resolv = tb.output(Role::Cn, ["cat", "/etc/resolv.conf"]).unwrap();
    assert!(resolv.contains("nameserver 127.0.0.1"), "{resolv}");
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv);

    // Keys: one per node FQDN and one for the RS, all distinct, root-only file.
    let keys = tb.keys();
    let mut all: Vec<[u8; 32]> = [GN_FQDN, GN2_FQDN, CN_FQDN, CN2_FQDN, NODE_FQDN]
        .iter()
        .map(|f| keys.node(f).unwrap().0)
        .collect();
    all.push(keys.rs().0);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6);
    let file = tb.state_dir().join(ntm_testbed::KEYS_FILE);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(ntm_testbed::Keys::load(tb.state_dir()).unwrap(), *keys);

    // A second `up` takes the complete testbed over: same keys, nothing rebuilt.
    let ifindex = |tb: &Testbed| {
        tb.output(Role::Ntma, ["cat", "/sys/class/net/lan0/ifindex"])
            .unwrap()
    };
    let lan0 = ifindex(&tb);
    let again = Testbed::up(&prefix).unwrap();
    assert_eq!(again.keys(), tb.keys());
    assert_eq!(ifindex(&again), lan0);
    assert_eq!(again.keep(), prefix);
    assert!(tb.status().unwrap().is_complete());

    drop(tb);
    assert_gone(&prefix);
}

#[test]
fn up_repairs_a_half_built_testbed() {
    root();
    let prefix = unique_prefix("fix");
    // Stays armed until the end, so a failure anywhere cleans up.
    let first = Testbed::up(&prefix).unwrap();
    let old_keys = first.keys().clone();

    let ns = |r: Role| r.ns(&prefix);
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["-n", &ns(Role::Nat2), "link", "del", "lan"]);
    ip(&["-n", &ns(Role::Ntma), "route", "del", "default"]);
    let table = ntm_testbed::nat_table_name(&prefix);
    in_netns(&ns(Role::Nat1), || {
        let s = Command::new("nft")
            .args(["delete", "table", "ip", &table])
            .status();
        assert!(s.unwrap().success());
    })
    .unwrap();

    // A namespace file with no namespace behind it, as a killed `ip netns add` leaves.
    ip(&["netns", "del", &ns(Role::Rs)]);
    std::fs::write(Path::new("/run/netns").join(ns(Role::Rs)), "").unwrap();

    let st = status(&prefix).unwrap();
    assert!(!st.is_complete());
    let problems = st.problems.join("\n");
    for expected in [
        format!("{}: interface lan missing", ns(Role::Nat2)),
        format!("{}: default route via 192.168.10.1 missing", ns(Role::Ntma)),
        format!("{}: NAT table not loaded", ns(Role::Nat1)),
        // Deleting one end of a veth deletes its peer.
        format!("{}: interface eth0 missing", ns(Role::Cn2)),
        format!("{}: cannot enter network namespace", ns(Role::Rs)),
    ] {
        assert!(
            problems.contains(&expected),
            "{expected:?} not in\n{problems}"
        );
    }
    assert!(st.to_string().contains("INCOMPLETE"), "{st}");

    let tb = Testbed::up(&prefix).unwrap();
    assert!(tb.status().unwrap().is_complete());
    assert_ne!(tb.keys(), &old_keys, "a rebuilt testbed gets new keys");
    ping(&tb, Role::Cn2, CN_ADDR);
    ping(&tb, Role::Cn2, RS_ADDR);
    assert_eq!(udp_echo_via_cn(&tb, Role::Ntma, 4100).ip(), NAT1_WAN_ADDR);
    tb.down().unwrap();
    assert_gone(&prefix);
    drop(first);
}

#[test]
fn down_removes_a_crashed_testbed_and_its_processes() {
    root();
    let prefix = unique_prefix("crash");
    let tb = Testbed::up(&prefix).unwrap();
    // What a crashed run leaves: daemons still running inside (one of them
    // in a namespace a benchmark added), and no guard.
    let extra = format!("{prefix}sink");
    let out = Command::new("ip")
        .args(["netns", "add", &extra])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut orphans: Vec<std::process::Child> = [tb.ns(Role::Cn), tb.ns(Role::Gn), extra.clone()]
        .iter()
        .map(|ns| {
            Command::new("ip")
                .args(["netns", "exec", ns, "sleep", "600"])
                .process_group(0)
                .spawn()
                .unwrap()
        })
        .collect();
    let prefix = tb.keep();
    assert!(wait_until(PATIENCE, || {
        let out = Command::new("ip")
            .args(["netns", "pids", &extra])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    }));

    down(&prefix).unwrap();
    for o in &mut orphans {
        let status = o.wait().unwrap();
        assert!(
            !status.success(),
            "the orphan was killed, not finished: {status}"
        );
    }
    assert_gone(&prefix);
    // Nothing left is not an error.
    down(&prefix).unwrap();
}

#[test]
fn down_stale_removes_testbeds_whose_owner_died() {
    root();
    let prefix = unique_prefix("stale");
    let tb = Testbed::up(&prefix).unwrap();
    assert!(ntm_testbed::list().unwrap().contains(&prefix));
    assert!(
        !ntm_testbed::down_stale().unwrap().contains(&prefix),
        "its owner (this process) is alive"
    );
    // Pretend the owner was a test process that got SIGKILLed.
    let mut dead = Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    std::fs::write(tb.state_dir().join("owner"), format!("{}\n", dead.id())).unwrap();
    assert!(ntm_testbed::down_stale().unwrap().contains(&prefix));
    assert_gone(&prefix);
    assert!(!ntm_testbed::list().unwrap().contains(&prefix));
    drop(tb);
}

#[test]
fn two_testbeds_live_side_by_side() {
    root();
    let (pa, pb) = (unique_prefix("twoa"), unique_prefix("twob"));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Testbed::up(&pa));
        let two_queues = Options {
            queues: 2,
            ..Options::default()
        };
        let b = s.spawn(|| Testbed::up_with(&pb, two_queues));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_ne!(a.keys(), b.keys());
    for (tb, q) in [(&a, 1), (&b, 2)] {
        let st = tb.status().unwrap();
        assert!(st.is_complete(), "{st}");
        for (role, ifname) in [
            (Role::Gn, "eth0"),
            (Role::Gn2, "eth0"),
            (Role::Lan, "gn"),
            (Role::Lan, "ntma"),
            (Role::Ntma, "lan0"),
            (Role::Ntma, "wan0"),
            (Role::Nat1, "lan"),
        ] {
            let i = st.namespace(role).interface(ifname).unwrap();
            assert_eq!((i.rx_queues, i.tx_queues), (q, q), "{role} {ifname}");
        }
        let wan = st.namespace(Role::Nat1).interface("wan").unwrap();
        assert_eq!((wan.rx_queues, wan.tx_queues), (1, 1));
        ping(tb, Role::Ntma, CN_ADDR);
        assert_eq!(udp_echo_via_cn(tb, Role::Cn2, 4200).ip(), NAT2_WAN_ADDR);
    }
    // Same addresses, separate worlds: a's cn is not b's cn.
    let server = a
        .in_netns(Role::Cn, || UdpSocket::bind((CN_ADDR, 4300)))
        .unwrap()
        .unwrap();
    let probe = b
        .in_netns(Role::Cn, || UdpSocket::bind((CN_ADDR, 4300)))
        .unwrap();
    assert!(probe.is_ok(), "b's cn has its own port space");
    drop(server);

    // Asking for other options rebuilds with them.
    let b = Testbed::up(&pb).unwrap();
    let st = b.status().unwrap();
    assert_eq!(
        st.namespace(Role::Ntma)
            .interface("lan0")
            .unwrap()
            .rx_queues,
        1
    );

    drop(a);
    assert_gone(&pa);
    assert!(
        b.status().unwrap().is_complete(),
        "a's teardown left b alone"
    );
    drop(b);
    assert_gone(&pb);
}

#[test]
fn commands_and_processes_run_inside_the_namespaces() {
    root();
    let tb = Testbed::up(&unique_prefix("exec")).unwrap();

    let out = tb
        .output(Role::Cn, ["ip", "-o", "-4", "addr", "show", "eth0"])
        .unwrap();
    assert!(out.contains("198.18.0.20/24"), "{out}");
    let e = tb
        .exec(Role::Cn, ["ip", "link", "set", "nosuchif", "up"])
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("Cannot find device"),
        "stderr is in the error: {msg}"
    );
    assert!(
        msg.contains(&tb.ns(Role::Cn)),
        "the command is in the error: {msg}"
    );
    let e = tb.exec(Role::Cn, ["no-such-program-here"]).unwrap_err();
    assert!(e.to_string().contains("no-such-program-here"), "{e}");

    // A spawned program runs in its namespace, logs to a file, and takes
    // its whole process group along when the guard goes.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo \"started $GREETING\"; sleep 600 & echo \"bg $!\"; wait",
    ])
    .env("GREETING", "from cn");
    let mut child = tb.spawn(Role::Cn, &cmd).unwrap();
    let bg: i32 = wait_for(PATIENCE, || {
        let log = child.log();
        log.lines()
            .find_map(|l| l.strip_prefix("bg ")?.trim().parse().ok())
    })
    .unwrap_or_else(|| panic!("no output: {}", child.log()));
    assert!(child.log().contains("started from cn"), "{}", child.log());
    assert!(child.log_path().starts_with(tb.state_dir()));
    assert!(child.is_running());
    let netns_of = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino()
    };
    let cn_ns = std::fs::metadata(Path::new("/run/netns").join(tb.ns(Role::Cn)))
        .unwrap()
        .ino();
    assert_eq!(netns_of(child.id()), cn_ns);
    assert_eq!(netns_of(bg as u32), cn_ns);
    drop(child);
    assert!(
        wait_until(PATIENCE, || !Path::new(&format!("/proc/{bg}")).exists()
            || std::fs::read_to_string(format!("/proc/{bg}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "the background process outlived its group's guard"
    );

    // Entering only the network namespace keeps the host's mounts (bpffs).
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    let pinned = tb.spawn_keep_mounts(Role::Ntma, &cmd).unwrap();
    let mnt_of = |pid: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
            .unwrap()
            .ino()
    };
    let ntma_ns = std::fs::metadata(Path::new("/run/netns").join(tb.ns(Role::Ntma)))
        .unwrap()
        .ino();
    assert_eq!(netns_of(pinned.id()), ntma_ns);
    assert_eq!(mnt_of(&pinned.id().to_string()), mnt_of("self"));
    drop(pinned);

    // A program that exits by itself reports its status.
    let mut quick = tb
        .spawn(Role::Dc, Command::new("sh").args(["-c", "exit 3"]))
        .unwrap();
    let st = quick.wait_timeout(PATIENCE).unwrap().expect("sh exits");
    assert_eq!(st.code(), Some(3));

    // in_netns: a value back from inside, a panic carried out.
    let addr = tb
        .in_netns(Role::Rs, || {
            let s = UdpSocket::bind((RS_ADDR, 0)).unwrap();
            s.local_addr().unwrap().ip()
        })
        .unwrap();
    assert_eq!(addr, RS_ADDR);
    let not_here = tb.in_netns(Role::Gn, || UdpSocket::bind((RS_ADDR, 0)).is_err());
    assert!(not_here.unwrap(), "gn does not have rs's address");
    let panicked = std::panic::catch_unwind(|| tb.in_netns(Role::Gn, || panic!("inside")));
    assert!(panicked.is_err());
    let e = in_netns("ntm-no-such-namespace", || ()).unwrap_err();
    assert!(e.to_string().contains("ntm-no-such-namespace"), "{e}");
}

#[test]
fn native_xdp_attaches_on_the_af_xdp_path_with_two_queues() {
    root();
    let opts = Options {
        queues: 2,
        ..Options::default()
    };
    let tb = Testbed::up_with(&unique_prefix("xdp"), opts).unwrap();
    let prog = tb.state_dir().join("xdp_pass.o");
    std::fs::write(&prog, include_bytes!("fixtures/xdp_pass.o")).unwrap();
    let prog = prog.to_str().unwrap();
    let path = [
        (Role::Gn, "eth0"),
        (Role::Gn2, "eth0"),
        (Role::Ntma, "lan0"),
        (Role::Ntma, "wan0"),
        (Role::Nat1, "lan"),
    ];
    for (role, dev) in path {
        // Fails with "XDP expects number of rx queues not less than peer tx
        // queues" when the pair's queue counts differ.
        tb.exec(
            role,
            [
                "ip", "link", "set", "dev", dev, "xdpdrv", "obj", prog, "sec", "xdp",
            ],
        )
        .unwrap();
        let shown = tb.output(role, ["ip", "-d", "link", "show", dev]).unwrap();
        assert!(shown.contains("prog/xdp"), "{shown}");
    }
    // XDP_PASS everywhere: traffic still flows.
    ping(&tb, Role::Ntma, CN_ADDR);
    assert_eq!(udp_echo_via_cn(&tb, Role::Ntma, 4400).ip(), NAT1_WAN_ADDR);
    for (role, dev) in path {
        tb.exec(role, ["ip", "link", "set", "dev", dev, "xdpdrv", "off"])
            .unwrap();
    }
}

#[test]
fn a_panic_tears_the_testbed_down() {
    root();
    let prefix = unique_prefix("panic");
    let result = std::panic::catch_unwind(|| {
        let tb = Testbed::up(&prefix).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo daemon says hi; exec sleep 600"]);
        let daemon = tb.spawn(Role::Dc, &cmd).unwrap();
        assert!(wait_until(PATIENCE, || daemon.log().contains("hi")));
        panic!("a test fails with its testbed up");
    });
    assert!(result.is_err());
    assert_gone(&prefix);
}
