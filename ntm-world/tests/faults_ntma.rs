//! Faults of the adapter itself (issue 13), under a continuous ping from
//! gn through the adapter to cn:
//!
//! * a datapath worker panics (debug builds' `ntma debug panic-worker`),
//!   AF_XDP or raw: its supervisor restarts it, the panic is counted in
//!   `ntma status`, and forwarding resumes;
//! * ntma is killed with SIGKILL and started again on the same
//!   configuration: its XDP programs went with the process, the GN keeps
//!   its VIP (the DC gives it again, DHCP confirms it), and the GN's next
//!   packet sets the tunnel up again by name, without a DNS query.
//!
//! The loss windows are printed with `MEASURED`, never asserted (a loaded
//! machine): `cargo xtask test -p ntm-world --test faults_ntma -- --nocapture`.
//! Needs root, like every world test.

use std::time::SystemTime;

use ntm_testbed::{ifname, wait_until, Role};
use ntm_world::fault::{unix_secs, PingReport, Pinger};
use ntm_world::{World, CN_FQDN, GN_FQDN, PATIENCE};
use ntma_user::config::DatapathKind;
use ntma_user::status::WorkerState;

fn up(tag: &str) -> World {
    World::up(tag).expect("these integration tests need root and a working testbed")
}

/// Waits for a few replies: the ping goes through before the fault.
fn flowing(p: &Pinger) {
    assert!(
        wait_until(PATIENCE, || p.replies().len() >= 3),
        "no replies before the fault: {:?}",
        p.replies()
    );
}

/// The loss window around the fault at `at`; `back` is when the adapter
/// was started again (the same moment for a worker panic).
fn print_outage(what: &str, r: &PingReport, at: f64, back: f64) {
    let o = r.outage_around(at).expect("replies after the fault");
    let first = r.outage_around(back).expect("replies after the restart");
    eprintln!(
        "MEASURED {what}: {} of {} pings lost in all ({} around the fault, every {} s); {:.2} s without replies; first reply {:.2} s after the (re)start",
        r.lost(),
        r.sent,
        o.lost,
        ntm_world::fault::PING_INTERVAL,
        o.gap_secs,
        first.to_first_reply_secs
    );
}

#[test]
fn a_panicking_worker_is_restarted_counted_and_forwards_again() {
    worker_panic(DatapathKind::AfXdp);
}

#[test]
fn a_panicking_raw_worker_is_restarted_counted_and_forwards_again() {
    worker_panic(DatapathKind::Raw);
}

/// Worker 0 of `kind` panics mid-burst under the ping.
fn worker_panic(kind: DatapathKind) {
    let w = up(match kind {
        DatapathKind::AfXdp => "pxdp",
        DatapathKind::Raw => "praw",
    });
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w
        .ntma(|c| {
            c.datapath.kind = kind;
            c.datapath.queues = 1;
        })
        .unwrap();
    let (_, cn_vip) = w.tunnel_to_cn(&mut cn, &mut ntma).unwrap();
    let pinger = w.pinger(Role::Gn, cn_vip).unwrap();
    flowing(&pinger);

    let at = unix_secs(SystemTime::now());
    w.panic_worker(&ntma, 0).unwrap();
    let st = ntma
        .wait("worker 0's panic counted, and it runs again", |s| {
            let w0 = &s.datapath.workers[0];
            w0.panics == 1 && w0.state == WorkerState::Running
        })
        .unwrap();
    let last = st.datapath.workers[0]
        .last_panic
        .clone()
        .unwrap_or_default();
    assert!(last.contains("injected panic"), "{last}");
    assert!(
        pinger.reply_after(at, PATIENCE).is_some(),
        "no reply after the panic:\n{}",
        ntma.child.log()
    );
    // Every queue forwards again: the check passes, and the text shows it.
    let (code, line) = ntma.check().unwrap();
    assert_eq!(code, 0, "{line}");
    let text = ntma.status_text().unwrap();
    assert!(text.contains("running, 1 panic(s)"), "{text}");
    assert!(
        ntma.child.log().contains("datapath worker panicked"),
        "the panic is logged"
    );
    let report = pinger.stop().unwrap();
    print_outage(&format!("{kind:?} worker panic"), &report, at, at);
    let log = ntma.child.log();
    let reclaimed = log
        .lines()
        .find(|l| l.contains("frames of the interrupted burst"));
    eprintln!(
        "MEASURED {kind:?} worker panic, recovery: {}",
        reclaimed.unwrap_or("-")
    );
    w.down().unwrap();
}

#[test]
fn a_killed_ntma_restarted_under_traffic_keeps_the_vip_and_sets_the_tunnel_up_again() {
    let w = up("ntmakill");
    let mut cn = w.node(Role::Cn, CN_FQDN).unwrap();
    let mut ntma = w.ntma(|_| {}).unwrap();
    let (gn_vip, cn_vip) = w.tunnel_to_cn(&mut cn, &mut ntma).unwrap();
    let attached = w.xdp_attached(Role::Ntma).unwrap();
    assert!(
        attached.contains(&ifname::NTMA_LAN.to_owned()),
        "{attached:?}"
    );
    let pinger = w.pinger(Role::Gn, cn_vip).unwrap();
    flowing(&pinger);

    let killed = unix_secs(SystemTime::now());
    w.kill_ntma(&mut ntma).unwrap();
    // The programs were attached through bpf_link descriptors: the kernel
    // detached them when the process died, nothing is left behind.
    assert!(
        wait_until(PATIENCE, || w
            .xdp_attached(Role::Ntma)
            .is_ok_and(|v| v.is_empty())),
        "XDP left attached by the dead ntma: {:?}",
        w.xdp_attached(Role::Ntma)
    );
    let at = unix_secs(SystemTime::now());
    let mut ntma = w.restart_ntma(&ntma).unwrap();

    // The same VIP from the DC.
    assert_eq!(ntma.registered().unwrap(), gn_vip);
    // The GN's packets set the tunnel up again by name: no DNS query.
    let reply = pinger.reply_after(at, PATIENCE);
    assert!(
        reply.is_some(),
        "no reply after the restart:\n{}",
        ntma.child.log()
    );
    let st = ntma
        .wait("the tunnel to cn up again", |s| {
            s.tunnel_between(GN_FQDN, CN_FQDN).is_some_and(|t| t.up)
        })
        .unwrap();
    assert!(st.stat("connects") >= 1, "{:?}", st.slow_path.stats);
    assert_eq!(st.stat("dns_resolve"), 0, "{:?}", st.slow_path.stats);
    let attached = w.xdp_attached(Role::Ntma).unwrap();
    assert!(
        attached.contains(&ifname::NTMA_LAN.to_owned()),
        "{attached:?}"
    );

    // The GN's DHCP client comes back for its address (INIT-REBOOT from its
    // lease file): the restarted adapter confirms the same VIP.
    let pid = w.dhclient_pid_file(Role::Gn);
    w.sh(
        Role::Gn,
        &format!("dhclient -x -pf {} eth0 2>&1; true", pid.display()),
    )
    .unwrap();
    assert_eq!(w.dhclient().unwrap(), gn_vip);
    ntma.wait("gn's lease bound again", |s| s.gns[0].gn.lease_bound)
        .unwrap();
    let report = pinger.stop().unwrap();
    print_outage("ntma SIGKILL and restart", &report, killed, at);
    w.down().unwrap();
}
