//! The cost of ntma's XDP classification alone: `ntma_lan` on a GN → VIP frame and
//! `ntma_wan` on a tunnel DATA frame, each run 10^7 times in the kernel with
//! `BPF_PROG_TEST_RUN` (what `bpftool prog run ... repeat N` does, here through aya on
//! the object ntma embeds, configured as ntma configures it). No socket is registered in
//! the XskMaps, so the redirect falls back to `XDP_PASS`; the map lookup of the redirect
//! is still done. The kernel reports the mean time per run in whole nanoseconds; the wall
//! time of the call over the repeat count is given beside it.

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use ntma_common::{maps, programs};
use serde::{Deserialize, Serialize};

use super::topo::{DUT_WAN_ADDR, PEER_ADDR};
use crate::bench::{CN_PORT, CN_VIP, GN_ADDR, GN_PORT, NTM_PORT};
use crate::packet::{ipv4_udp, write_eth, write_ipv4_udp, NtmDatagram, ETH_HLEN, IP_UDP_HLEN};

/// One program on one frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Classified {
    /// The program.
    pub program: String,
    /// The frame.
    pub frame: String,
    /// Runs.
    pub repeat: u32,
    /// The kernel's mean per run, ns (whole nanoseconds).
    pub kernel_ns: f64,
    /// Wall time of the call over the runs, ns.
    pub wall_ns: f64,
    /// The XDP action the program returned.
    pub action: u32,
}

fn frames() -> [(&'static str, &'static str, Vec<u8>); 2] {
    let mac = [2, 0, 0, 0, 0, 1];
    let up = super::dut::eth_frame(mac, mac, &ipv4_udp(GN_ADDR, CN_VIP, GN_PORT, CN_PORT, 64));
    let key = ntm_proto::Key::from_bytes([7; 32]);
    let cipher = ntm_proto::Cipher::new(ntm_proto::Suite::Aes256Gcm, &key)
        .expect("a 32-byte key makes a cipher");
    let inner = ipv4_udp(CN_VIP, GN_ADDR, CN_PORT, GN_PORT, 64);
    let mut dg = NtmDatagram::new(1, &inner);
    let sealed = dg.seal(1, &cipher).to_vec();
    let mut down = vec![0u8; ETH_HLEN + IP_UDP_HLEN + sealed.len()];
    write_eth(&mut down, mac, mac);
    down[ETH_HLEN + IP_UDP_HLEN..].copy_from_slice(&sealed);
    write_ipv4_udp(
        &mut down[ETH_HLEN..],
        (PEER_ADDR, NTM_PORT),
        (DUT_WAN_ADDR, NTM_PORT),
    );
    [
        (programs::LAN, "GN → VIP, 64 B", up),
        (programs::WAN, "DATA, 64 B inner", down),
    ]
}

/// Loads ntma's XDP object, configures it as the DUT's ntma is, and runs each program
/// `repeat` times on its frame.
pub fn run(repeat: u32) -> Result<Vec<Classified>> {
    let mut ebpf = Ebpf::load(ntma_user::ebpf::NTMA_XDP_OBJECT).context("loading ntma-xdp")?;
    {
        let m = ebpf
            .map_mut(maps::CONFIG)
            .ok_or_else(|| anyhow!("ntma-xdp has no map {}", maps::CONFIG))?;
        let mut a: Array<_, ntma_common::XdpConfig> = Array::try_from(m)?;
        a.set(0, super::dut::xdp_config(), 0)?;
    }
    {
        let m = ebpf
            .map_mut(maps::GN_VIPS)
            .ok_or_else(|| anyhow!("ntma-xdp has no map {}", maps::GN_VIPS))?;
        let mut gns: HashMap<_, u32, u8> = HashMap::try_from(m)?;
        gns.insert(u32::from(GN_ADDR), 1, 0)?;
    }
    let mut out = Vec::new();
    for (program, what, frame) in frames() {
        let prog: &mut Xdp = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("ntma-xdp has no program {program}"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading XDP program {program}"))?;
        }
        let t0 = Instant::now();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        let wall = t0.elapsed();
        out.push(Classified {
            program: program.into(),
            frame: what.into(),
            repeat,
            kernel_ns: r.duration.as_nanos() as f64,
            wall_ns: wall.as_nanos() as f64 / f64::from(repeat.max(1)),
            action: r.return_value,
        });
    }
    Ok(out)
}
