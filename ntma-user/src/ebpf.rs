//! The XDP programs of `ntma-ebpf`, embedded in the binary and loaded with aya.
//!
//! [`XdpPrograms::load`] loads the object; [`XdpPrograms::configure`] writes the
//! [`XdpConfig`] before [`XdpPrograms::attach`]; [`XdpPrograms::set_gn_vips`] keeps
//! the GNs' VIPs (the only sources `ntma_lan` redirects); AF_XDP sockets are registered
//! per RX queue with [`XdpPrograms::register_socket`]; [`XdpPrograms::counters`] sums the
//! per-CPU verdict counters. Dropping the value detaches every program it attached.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use aya::{
    maps::{Array, HashMap, MapError, PerCpuArray, XskMap},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use ntma_common::{maps, programs, Verdict, XdpConfig};

/// The eBPF object built by `build.rs` (aya-build), 8-byte aligned as the ELF parser wants.
pub static NTMA_XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ntma-xdp"));

/// Which NIC a program, XskMap or socket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The GN-facing NIC (`ntma_lan`).
    Lan,
    /// The WAN NIC (`ntma_wan`).
    Wan,
}

impl Side {
    /// Program name in the object.
    pub const fn program(self) -> &'static str {
        match self {
            Side::Lan => programs::LAN,
            Side::Wan => programs::WAN,
        }
    }

    /// XskMap name in the object.
    pub const fn xsk_map(self) -> &'static str {
        match self {
            Side::Lan => maps::LAN_XSKS,
            Side::Wan => maps::WAN_XSKS,
        }
    }
}

/// How to attach an XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (veth supports it); fails where the driver cannot.
    #[default]
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// Errors of the eBPF loader; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The embedded object did not load (kernel too old, no CAP_BPF, verifier).
    #[error("loading the XDP object failed (run as root on Linux >= 5.15): {0}")]
    Load(#[from] aya::EbpfError),
    /// The object lacks a program or map that this build expects.
    #[error("the XDP object has no {0} (rebuild ntma-user so build.rs rebuilds the object)")]
    Missing(&'static str),
    /// Loading into the kernel or attaching a program failed.
    #[error("XDP program {program} on {ifname}: {source} (is the interface up? for native mode on veth, the peer must not have more TX queues than this end has RX queues)")]
    Attach {
        program: &'static str,
        ifname: String,
        #[source]
        source: ProgramError,
    },
    /// A program operation other than attach failed.
    #[error("XDP program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// Reading or writing a map failed.
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Sum over all CPUs of each [`Verdict`] counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([u64; Verdict::COUNT as usize]);

impl Counters {
    /// The count of one verdict.
    pub fn get(&self, verdict: Verdict) -> u64 {
        self.0[verdict.index() as usize]
    }

    /// Every verdict with its count, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Verdict, u64)> + '_ {
        Verdict::ALL.iter().map(|v| (*v, self.get(*v)))
    }

    /// Counts since `earlier` (saturating, for counters read twice).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = *self;
        for (o, e) in out.0.iter_mut().zip(earlier.0.iter()) {
            *o = o.saturating_sub(*e);
        }
        out
    }
}

/// The loaded XDP object: programs, maps, and the interfaces they are attached to.
pub struct XdpPrograms {
    ebpf: Ebpf,
}

impl XdpPrograms {
    /// Loads the embedded object and both programs into the kernel (not attached yet).
    pub fn load() -> Result<Self, EbpfError> {
        let mut ebpf = Ebpf::load(NTMA_XDP_OBJECT)?;
        for side in [Side::Lan, Side::Wan] {
            let name = side.program();
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(EbpfError::Missing(name))?
                .try_into()
                .map_err(|source| EbpfError::Program {
                    program: name,
                    source,
                })?;
            prog.load().map_err(|source| EbpfError::Program {
                program: name,
                source,
            })?;
        }
        Ok(Self { ebpf })
    }

    /// Writes the configuration both programs read; until then they pass everything.
    pub fn configure(&mut self, config: &XdpConfig) -> Result<(), EbpfError> {
        let map = self
            .ebpf
            .map_mut(maps::CONFIG)
            .ok_or(EbpfError::Missing(maps::CONFIG))?;
        let mut array: Array<_, XdpConfig> =
            Array::try_from(map).map_err(|source| EbpfError::Map {
                map: maps::CONFIG,
                source,
            })?;
        array.set(0, *config, 0).map_err(|source| EbpfError::Map {
            map: maps::CONFIG,
            source,
        })
    }

    /// Attaches the program of `side` to `ifname` (in the calling thread's network
    /// namespace). It stays attached until `self` is dropped.
    pub fn attach(&mut self, side: Side, ifname: &str, mode: AttachMode) -> Result<(), EbpfError> {
        let name = side.program();
        let prog = self.program_mut(side)?;
        let flags = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        prog.attach(ifname, flags)
            .map_err(|source| EbpfError::Attach {
                program: name,
                ifname: ifname.to_owned(),
                source,
            })?;
        Ok(())
    }

    /// Replaces the set of GN VIPs that `ntma_lan` reads: VIPs no longer in `vips` are
    /// removed first, then new ones inserted (at most [`ntma_common::MAX_GNS`]; beyond
    /// that the kernel refuses the insert and this fails, leaving the VIPs already
    /// written). Until a GN's VIP is here, its frames pass to the kernel
    /// ([`Verdict::LanFromNonGn`]), and frames to it are not redirected
    /// ([`Verdict::LanGnToGn`]).
    pub fn set_gn_vips(&mut self, vips: &[Ipv4Addr]) -> Result<(), EbpfError> {
        let map_err = |source| EbpfError::Map {
            map: maps::GN_VIPS,
            source,
        };
        let map = self
            .ebpf
            .map_mut(maps::GN_VIPS)
            .ok_or(EbpfError::Missing(maps::GN_VIPS))?;
        let mut gns: HashMap<_, u32, u8> = HashMap::try_from(map).map_err(map_err)?;
        let want: Vec<u32> = vips.iter().map(|v| u32::from(*v)).collect();
        let have = gns
            .keys()
            .collect::<Result<Vec<u32>, _>>()
            .map_err(map_err)?;
        for gone in have.iter().filter(|k| !want.contains(k)) {
            gns.remove(gone).map_err(map_err)?;
        }
        for new in want.iter().filter(|k| !have.contains(k)) {
            gns.insert(new, 1, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// Registers an AF_XDP socket for RX queue `queue` of `side`'s NIC.
    pub fn register_socket(
        &mut self,
        side: Side,
        queue: u32,
        socket: &impl AsRawFd,
    ) -> Result<(), EbpfError> {
        let name = side.xsk_map();
        let map = self.ebpf.map_mut(name).ok_or(EbpfError::Missing(name))?;
        let mut xsks =
            XskMap::try_from(map).map_err(|source| EbpfError::Map { map: name, source })?;
        xsks.set(queue, socket.as_raw_fd(), 0)
            .map_err(|source| EbpfError::Map { map: name, source })
    }

    /// The verdict counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, EbpfError> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or(EbpfError::Missing(maps::COUNTERS))?;
        let per_cpu: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| EbpfError::Map {
                map: maps::COUNTERS,
                source,
            })?;
        let mut out = Counters::default();
        for v in Verdict::ALL {
            let values = per_cpu
                .get(&v.index(), 0)
                .map_err(|source| EbpfError::Map {
                    map: maps::COUNTERS,
                    source,
                })?;
            out.0[v.index() as usize] = values.iter().sum();
        }
        Ok(out)
    }

    /// Runs the program of `side` once on `frame` with BPF_PROG_TEST_RUN and returns the
    /// XDP action. Redirects to AF_XDP are not performed by the kernel in this mode, but
    /// the verdict counters are updated, so this classifies frames without a NIC.
    pub fn test_run(&mut self, side: Side, frame: &[u8]) -> Result<u32, EbpfError> {
        let name = side.program();
        let prog = self.program_mut(side)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        prog.test_run(opts)
            .map(|r| r.return_value)
            .map_err(|source| EbpfError::Program {
                program: name,
                source,
            })
    }

    /// The descriptor of the program of `side` (tests attach it by hand).
    #[cfg(test)]
    pub(crate) fn program_fd(&mut self, side: Side) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        let prog = self.program_mut(side).expect("both programs are loaded");
        prog.fd().expect("loaded").as_fd().as_raw_fd()
    }

    fn program_mut(&mut self, side: Side) -> Result<&mut Xdp, EbpfError> {
        let name = side.program();
        self.ebpf
            .program_mut(name)
            .ok_or(EbpfError::Missing(name))?
            .try_into()
            .map_err(|source| EbpfError::Program {
                program: name,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_an_bpf_elf_with_both_programs() {
        // ELF magic, 64-bit, little-endian, machine EM_BPF (247).
        assert_eq!(&NTMA_XDP_OBJECT[..4], b"\x7fELF");
        assert_eq!(NTMA_XDP_OBJECT[4], 2);
        assert_eq!(NTMA_XDP_OBJECT[5], 1);
        assert_eq!(
            u16::from_le_bytes([NTMA_XDP_OBJECT[18], NTMA_XDP_OBJECT[19]]),
            247
        );
        let has = |needle: &[u8]| NTMA_XDP_OBJECT.windows(needle.len()).any(|w| w == needle);
        for name in [
            programs::LAN,
            programs::WAN,
            maps::CONFIG,
            maps::COUNTERS,
            maps::LAN_XSKS,
            maps::WAN_XSKS,
            maps::GN_VIPS,
        ] {
            assert!(has(name.as_bytes()), "{name} missing from the object");
        }
    }

    #[test]
    fn counters_since_saturates() {
        let mut a = Counters::default();
        let mut b = Counters::default();
        a.0[Verdict::LanRedirect.index() as usize] = 10;
        b.0[Verdict::LanRedirect.index() as usize] = 4;
        assert_eq!(a.since(&b).get(Verdict::LanRedirect), 6);
        assert_eq!(b.since(&a).get(Verdict::LanRedirect), 0);
        assert_eq!(a.iter().count(), Verdict::COUNT as usize);
    }
}
