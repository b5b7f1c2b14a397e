//! The benchmarks' XDP programs (`perf/ebpf`, embedded by `build.rs`): the counting sink,
//! the NIC-to-NIC forwarder (the machine's limit) and a pass program for veth peers.
//!
//! Each attachment loads its own copy of the object inside the namespace of its
//! interface and is detached there when dropped.

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, DevMap, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};

use crate::net::Link;

/// The eBPF object built by `build.rs`, 8-byte aligned as the ELF parser wants.
pub static PERF_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/perf-xdp"));

const SINK_CONFIG: &str = "PERF_SINK_CONFIG";
const SINK_COUNTERS: &str = "PERF_SINK_COUNTERS";
const FWD_PORTS: &str = "PERF_FWD_PORTS";
const FWD_DEVS: &str = "PERF_FWD_DEVS";
const FWD_COUNTERS: &str = "PERF_FWD_COUNTERS";

/// An object loaded and attached in one namespace; dropping it detaches there.
struct Loaded {
    ebpf: Option<Ebpf>,
    ns: String,
}

impl Loaded {
    /// Loads the object and attaches `program` to each of `ifnames` in namespace `ns`
    /// (native mode: veth supports it), after `configure` has written its maps.
    fn attach(
        ns: &str,
        program: &str,
        ifnames: &[&str],
        configure: impl FnOnce(&mut Ebpf) -> Result<()> + Send,
    ) -> Result<Loaded> {
        let ebpf = ntm_testbed::in_netns(ns, || -> Result<Ebpf> {
            let mut ebpf = Ebpf::load(PERF_XDP_OBJECT).context("loading the perf-xdp object")?;
            configure(&mut ebpf)?;
            let prog: &mut Xdp = ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("perf-xdp has no program {program}"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading XDP program {program}"))?;
            for ifname in ifnames {
                prog.attach(ifname, XdpMode::Driver).with_context(|| {
                    format!("attaching {program} to {ifname} in {ns} (native mode)")
                })?;
            }
            Ok(ebpf)
        })??;
        Ok(Loaded {
            ebpf: Some(ebpf),
            ns: ns.to_owned(),
        })
    }

    fn ebpf(&self) -> &Ebpf {
        self.ebpf.as_ref().expect("present until dropped")
    }

    fn ebpf_mut(&mut self) -> &mut Ebpf {
        self.ebpf.as_mut().expect("present until dropped")
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            // Links are detached through netlink in the namespace they were made in.
            if ntm_testbed::in_netns(&self.ns, move || drop(ebpf)).is_err() {
                tracing::warn!(ns = %self.ns, "namespace gone before the XDP program was detached");
            }
        }
    }
}

fn per_cpu_sum(ebpf: &Ebpf, map: &str, index: u32) -> Result<u64> {
    let m = ebpf
        .map(map)
        .ok_or_else(|| anyhow!("perf-xdp has no map {map}"))?;
    let a: PerCpuArray<_, u64> = PerCpuArray::try_from(m)?;
    Ok(a.get(&index, 0)?.iter().sum())
}

/// What a sink has counted since it was attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// UDP frames to the sink's port.
    pub packets: u64,
    /// Their bytes (whole frames).
    pub bytes: u64,
    /// Of those, passed to the kernel for checking.
    pub sampled: u64,
}

/// `perf_sink` on one interface: counts UDP frames to one port and drops them, passing
/// one in `sample_every` to the kernel.
pub struct Sink {
    loaded: Loaded,
}

impl Sink {
    /// Attaches the sink to `ifname` in `ns`, counting UDP to `port`.
    pub fn attach(ns: &str, ifname: &str, port: u16, sample_every: u32) -> Result<Sink> {
        let loaded = Loaded::attach(ns, "perf_sink", &[ifname], |ebpf| {
            set_sink(ebpf, port, sample_every)
        })?;
        Ok(Sink { loaded })
    }

    /// Changes the port and the sampling (0: drop everything counted).
    pub fn configure(&mut self, port: u16, sample_every: u32) -> Result<()> {
        set_sink(self.loaded.ebpf_mut(), port, sample_every)
    }

    /// The counts so far, summed over CPUs.
    pub fn counts(&self) -> Result<SinkCounts> {
        let e = self.loaded.ebpf();
        Ok(SinkCounts {
            packets: per_cpu_sum(e, SINK_COUNTERS, 0)?,
            bytes: per_cpu_sum(e, SINK_COUNTERS, 1)?,
            sampled: per_cpu_sum(e, SINK_COUNTERS, 2)?,
        })
    }
}

fn set_sink(ebpf: &mut Ebpf, port: u16, sample_every: u32) -> Result<()> {
    let m = ebpf
        .map_mut(SINK_CONFIG)
        .ok_or_else(|| anyhow!("perf-xdp has no map {SINK_CONFIG}"))?;
    let mut a: Array<_, u32> = Array::try_from(m)?;
    a.set(0, u32::from(port), 0)?;
    a.set(1, sample_every, 0)?;
    Ok(())
}

/// One direction of the forwarder: frames arriving on `from` leave through `to`, towards
/// the next hop's MAC `next_hop`.
#[derive(Clone, Debug)]
pub struct FwdRoute {
    /// The ingress interface.
    pub from: Link,
    /// The egress interface.
    pub to: Link,
    /// The next hop's MAC on `to`'s segment.
    pub next_hop: [u8; 6],
}

/// Encodes one `PERF_FWD_PORTS` entry: dst MAC, src MAC, ingress ifindex (LE).
pub fn fwd_entry(route: &FwdRoute) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[..6].copy_from_slice(&route.next_hop);
    e[6..12].copy_from_slice(&route.to.mac);
    e[12..].copy_from_slice(&route.from.ifindex.to_le_bytes());
    e
}

/// `perf_fwd` on two interfaces of one namespace, forwarding both ways with no
/// encapsulation, and `perf_pass` on the veth peers that receive its redirects.
pub struct Forwarder {
    fwd: Loaded,
    _peers: Vec<Loaded>,
}

impl Forwarder {
    /// Attaches the forwarder in `ns` for two routes (one per direction), and `perf_pass`
    /// on each `(namespace, interface)` in `peers` (veth peers of the egress interfaces
    /// that run no XDP program of their own).
    pub fn attach(
        ns: &str,
        routes: [FwdRoute; 2],
        peers: &[(String, String)],
    ) -> Result<Forwarder> {
        let ifnames: Vec<String> = routes.iter().map(|r| r.from.name.clone()).collect();
        let names: Vec<&str> = ifnames.iter().map(String::as_str).collect();
        let mut peer_progs = Vec::new();
        for (pns, pif) in peers {
            peer_progs.push(Loaded::attach(pns, "perf_pass", &[pif], |_| Ok(()))?);
        }
        let fwd = Loaded::attach(ns, "perf_fwd", &names, |ebpf| {
            {
                let m = ebpf
                    .map_mut(FWD_DEVS)
                    .ok_or_else(|| anyhow!("perf-xdp has no map {FWD_DEVS}"))?;
                let mut devs = DevMap::try_from(m)?;
                for (i, r) in routes.iter().enumerate() {
                    devs.set(i as u32, r.to.ifindex, None, 0)?;
                }
            }
            let m = ebpf
                .map_mut(FWD_PORTS)
                .ok_or_else(|| anyhow!("perf-xdp has no map {FWD_PORTS}"))?;
            let mut ports: Array<_, [u8; 16]> = Array::try_from(m)?;
            for (i, r) in routes.iter().enumerate() {
                ports.set(i as u32, fwd_entry(r), 0)?;
            }
            Ok(())
        })?;
        Ok(Forwarder {
            fwd,
            _peers: peer_progs,
        })
    }

    /// Frames redirected and frames passed to the kernel so far.
    pub fn counts(&self) -> Result<(u64, u64)> {
        let e = self.fwd.ebpf();
        Ok((
            per_cpu_sum(e, FWD_COUNTERS, 0)?,
            per_cpu_sum(e, FWD_COUNTERS, 1)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_has_the_programs_and_maps() {
        assert_eq!(&PERF_XDP_OBJECT[..4], b"\x7fELF");
        let has = |n: &str| PERF_XDP_OBJECT.windows(n.len()).any(|w| w == n.as_bytes());
        for n in [
            "perf_sink",
            "perf_fwd",
            "perf_pass",
            SINK_CONFIG,
            SINK_COUNTERS,
            FWD_PORTS,
            FWD_DEVS,
            FWD_COUNTERS,
        ] {
            assert!(has(n), "{n}");
        }
    }

    #[test]
    fn forwarder_entries_carry_macs_and_ingress() {
        let l = |ifindex, m| Link {
            name: "x".into(),
            ifindex,
            mac: [m; 6],
        };
        let e = fwd_entry(&FwdRoute {
            from: l(7, 1),
            to: l(9, 2),
            next_hop: [3; 6],
        });
        assert_eq!(&e[..6], &[3; 6]);
        assert_eq!(&e[6..12], &[2; 6]);
        assert_eq!(u32::from_le_bytes(e[12..].try_into().unwrap()), 7);
    }
}
