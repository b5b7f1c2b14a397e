//! The testbed's fault injector: `ntm_loss`, an XDP program that drops one IPv4 frame
//! in N on the interfaces it is attached to.
//!
//! The drop is deterministic: a per-CPU counter of IPv4 frames, and the frame that
//! brings it to a multiple of N is dropped. So over any run of frames on one CPU the
//! loss is exactly 1/N, never two drops in a row (which is what lets a test assert
//! that retransmissions get through). Everything that is not IPv4 (ARP above all)
//! passes untouched and uncounted.
//!
//! Maps (userspace in `ntm-faults/src/lib.rs` mirrors them):
//! `NTM_LOSS_CONFIG[0]` = N (0: drop nothing);
//! `NTM_LOSS_COUNTERS` (per CPU) = [IPv4 frames seen, dropped].
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_DROP, XDP_PASS},
        macros::{map, xdp},
        maps::{Array, PerCpuArray},
        programs::XdpContext,
    };

    const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

    #[map(name = "NTM_LOSS_CONFIG")]
    static CONFIG: Array<u32> = Array::with_max_entries(1, 0);

    #[map(name = "NTM_LOSS_COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    /// Adds one to this CPU's counter `index`; returns the new value.
    #[inline(always)]
    fn bump(index: u32) -> u64 {
        match COUNTERS.get_ptr_mut(index) {
            Some(c) => {
                // SAFETY: this CPU's slot of a per-CPU array: valid, aligned for u64, and
                // written by nothing else while this program runs on this CPU.
                unsafe {
                    *c += 1;
                    *c
                }
            }
            None => 0,
        }
    }

    #[xdp]
    pub fn ntm_loss(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        if start + 14 > ctx.data_end() {
            return XDP_PASS;
        }
        // SAFETY: the 14-byte Ethernet header lies between data and data_end (checked
        // above), valid for the program's run; byte arrays have alignment 1.
        let ethertype = unsafe { ((start + 12) as *const [u8; 2]).read() };
        if ethertype != ETHERTYPE_IPV4 {
            return XDP_PASS;
        }
        let one_in = u64::from(CONFIG.get(0).copied().unwrap_or(0));
        let seen = bump(0);
        if one_in != 0 && seen % one_in == 0 {
            bump(1);
            return XDP_DROP;
        }
        XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any program that could reach a panic, so this never runs.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "ntm-faults-xdp is an eBPF object: ntm-faults/build.rs builds it for bpfel-unknown-none"
    );
    std::process::exit(2);
}
