//! Smoke test of `ntm-bench dp`'s harness (needs root): the reduced topology comes up,
//! one short trial through ntma (suite 2), ntma-base and the l2fwd reference, 64 B, each
//! direction, delivers frames, and no sample checks BAD. Correctness only: no rate or
//! time is asserted (the trials run at a low fixed rate, the path is drained before
//! counting).

use std::time::Duration;

use perf::bench::Direction;
use perf::dp::dut::{DpKind, Dut};
use perf::dp::measure::{Point, TrialSettings};
use perf::dp::topo::Topo;

#[test]
fn dp_harness_forwards_and_checks_through_ntma_its_baseline_and_l2fwd() {
    ntm_testbed::require_root().expect("the dp harness builds namespaces");
    let settings = TrialSettings {
        window: Duration::from_millis(300),
        sample_every: 16,
        batch: 64,
        // A loaded machine: no pinning of the generator.
        gen_cpu: None,
        pool_bytes: 1 << 24,
        loss_tolerance: 1.0,
    };
    let mut topo = Topo::up(&ntm_testbed::unique_prefix("dp")).expect("topology");
    // Back-to-back restarts on the same queues: each bind waits out the kernel's
    // deferred release of the previous socket's queue instead of failing with EBUSY.
    for i in 0..5 {
        let dut = Dut::start(&topo, DpKind::Ntma)
            .unwrap_or_else(|e| panic!("restart {i} of ntma: {e:#}"));
        drop(dut);
    }
    for kind in [DpKind::Ntma, DpKind::NtmaBase, DpKind::L2fwd] {
        let dut = Dut::start(&topo, kind).unwrap_or_else(|e| panic!("{}: {e:#}", kind.name()));
        for dir in Direction::BOTH {
            let flow = dut.flow(&topo, dir, 64).expect("flow");
            let mut point = Point::new(&mut topo, &dut, flow, &settings);
            let t = point.trial(Some(20_000.0)).expect("trial");
            let what = format!("{} {}: {t:?}", kind.name(), dir.as_str());
            assert!(t.gen.sent > 0, "nothing sent: {what}");
            assert!(t.delivered > 0, "nothing delivered: {what}");
            assert!(
                t.delivered <= t.gen.sent,
                "more delivered than sent: {what}"
            );
            assert_eq!(t.checked.bad, 0, "BAD samples: {what}");
            assert!(t.sampled > 0, "no sample passed to the checker: {what}");
            assert!(t.checked.ok > 0, "no sample checked good: {what}");
        }
    }
}
