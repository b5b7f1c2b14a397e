//! Fault injection for the testbed (`docs/testbed-extras.md` "Faults"): loss on a path, made by
//! an XDP program of its own (`ebpf/`, built by `build.rs`), never by ntma's production
//! object.
//!
//! [`Loss`] attaches `ntm_loss` to interfaces of one namespace (for the WAN path: nat1's
//! `lan` and `wan`, so that both directions lose) and drops one IPv4 frame in N, counted
//! per CPU: deterministic, never two drops in a row on one CPU, ARP untouched.
//!
//! Delay is not offered: this kernel has neither netem nor the `fq` qdisc (nor `etf`),
//! so an egress program that sets `skb->tstamp` (earliest departure time, as Cilium's
//! bandwidth manager does) has no qdisc to hold the packet until then; [`has_fq`] says
//! whether a kernel has it.
//!
//! ```no_run
//! let mut loss = ntm_faults::Loss::attach("ntm-x-nat1", &["lan", "wan"], 20)?;
//! // ... traffic ...
//! let c = loss.counts()?;
//! println!("{} of {} IPv4 frames dropped", c.dropped, c.seen);
//! loss.set_one_in(0)?; // stop dropping
//! # Ok::<(), ntm_faults::Error>(())
//! ```

use aya::{
    maps::{Array, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};

/// The injector's object built by `build.rs`, 8-byte aligned as the ELF parser wants.
pub static FAULTS_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ntm-faults-xdp"));

const PROGRAM: &str = "ntm_loss";
const CONFIG: &str = "NTM_LOSS_CONFIG";
const COUNTERS: &str = "NTM_LOSS_COUNTERS";

/// What can go wrong attaching or reading the injector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace could not be entered.
    #[error("entering namespace {ns}: {source} (is the testbed up?)")]
    Netns {
        /// The namespace.
        ns: String,
        /// Why.
        source: ntm_testbed::Error,
    },
    /// aya could not load the object, the program, or attach it.
    #[error("{what}: {source} (needs root and a kernel with XDP on veth)")]
    Load {
        /// What was being done.
        what: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The object lacks a program or map this crate expects (a build mismatch).
    #[error("the fault injector object has no {0}: rebuild ntm-faults")]
    Missing(&'static str),
}

fn load_err(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    let what = what.into();
    move |e| Error::Load {
        what,
        source: Box::new(e),
    }
}

fn map_err(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |e| Error::Load {
        what: what.to_owned(),
        source: Box::new(e),
    }
}

/// What the injector has counted since it was attached, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounts {
    /// IPv4 frames that reached the program.
    pub seen: u64,
    /// Of those, dropped.
    pub dropped: u64,
}

impl LossCounts {
    /// The share dropped (0 when nothing was seen).
    pub fn ratio(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            self.dropped as f64 / self.seen as f64
        }
    }
}

/// `ntm_loss` attached to interfaces of one namespace; dropping it detaches there.
pub struct Loss {
    ebpf: Option<Ebpf>,
    ns: String,
}

impl Loss {
    /// Attaches the injector to each of `ifnames` in namespace `ns` (native mode, which
    /// veth supports), dropping one IPv4 frame in `one_in` (0: none).
    pub fn attach(ns: &str, ifnames: &[&str], one_in: u32) -> Result<Loss, Error> {
        let netns = |source| Error::Netns {
            ns: ns.to_owned(),
            source,
        };
        let ebpf = ntm_testbed::in_netns(ns, || -> Result<Ebpf, Error> {
            let mut ebpf = Ebpf::load(FAULTS_XDP_OBJECT).map_err(|e| Error::Load {
                what: "loading the fault injector object".into(),
                source: Box::new(e),
            })?;
            set_one_in(&mut ebpf, one_in)?;
            let prog: &mut Xdp = ebpf
                .program_mut(PROGRAM)
                .ok_or(Error::Missing(PROGRAM))?
                .try_into()
                .map_err(load_err(PROGRAM))?;
            prog.load()
                .map_err(load_err(format!("loading {PROGRAM}")))?;
            for ifname in ifnames {
                prog.attach(ifname, XdpMode::Driver)
                    .map_err(load_err(format!("attaching {PROGRAM} to {ifname} in {ns}")))?;
            }
            Ok(ebpf)
        })
        .map_err(netns)??;
        Ok(Loss {
            ebpf: Some(ebpf),
            ns: ns.to_owned(),
        })
    }

    fn ebpf(&self) -> &Ebpf {
        self.ebpf.as_ref().expect("present until dropped")
    }

    /// Drops one IPv4 frame in `one_in` from now on (0: none).
    pub fn set_one_in(&mut self, one_in: u32) -> Result<(), Error> {
        set_one_in(self.ebpf.as_mut().expect("present until dropped"), one_in)
    }

    /// The counts so far.
    pub fn counts(&self) -> Result<LossCounts, Error> {
        let m = self.ebpf().map(COUNTERS).ok_or(Error::Missing(COUNTERS))?;
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(m).map_err(map_err(COUNTERS))?;
        let sum = |i: u32| -> Result<u64, Error> {
            Ok(a.get(&i, 0).map_err(map_err(COUNTERS))?.iter().sum())
        };
        Ok(LossCounts {
            seen: sum(0)?,
            dropped: sum(1)?,
        })
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            // Links are detached through netlink in the namespace they were made in; a
            // namespace already gone took its interfaces and their programs with it.
            let _ = ntm_testbed::in_netns(&self.ns, move || drop(ebpf));
        }
    }
}

fn set_one_in(ebpf: &mut Ebpf, one_in: u32) -> Result<(), Error> {
    let m = ebpf.map_mut(CONFIG).ok_or(Error::Missing(CONFIG))?;
    let mut a: Array<_, u32> = Array::try_from(m).map_err(map_err(CONFIG))?;
    a.set(0, one_in, 0).map_err(map_err(CONFIG))
}

/// Whether this kernel has the `fq` qdisc, which a delay injector would need (it holds
/// each packet until its `skb->tstamp`): tried on the loopback of namespace `ns` (any
/// testbed namespace), and removed again.
pub fn has_fq(ns: &str) -> bool {
    let tc = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns, "tc", "qdisc"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let added = tc(&["add", "dev", "lo", "root", "fq"]);
    if added {
        tc(&["del", "dev", "lo", "root"]);
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_has_the_program_and_maps() {
        assert_eq!(&FAULTS_XDP_OBJECT[..4], b"\x7fELF");
        let has = |n: &str| {
            FAULTS_XDP_OBJECT
                .windows(n.len())
                .any(|w| w == n.as_bytes())
        };
        for n in [PROGRAM, CONFIG, COUNTERS] {
            assert!(has(n), "{n}");
        }
    }

    #[test]
    fn the_ratio_of_nothing_is_zero() {
        assert_eq!(LossCounts::default().ratio(), 0.0);
        let c = LossCounts {
            seen: 40,
            dropped: 2,
        };
        assert_eq!(c.ratio(), 0.05);
    }
}
