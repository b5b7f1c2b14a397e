//! XDP programs of the ntma benchmarks.
//!
//! * `perf_sink`: counts IPv4 UDP frames to one port (packets and bytes, per CPU) and
//!   drops them, passing one in `sample_every` to the kernel so that userspace can check
//!   what arrives (tags, decryption); every other frame passes.
//! * `perf_fwd`: the machine's limit: forwards IPv4 from one NIC to another with no
//!   encapsulation (TTL decrement, Ethernet rewrite, redirect through a devmap), like the
//!   kernel's `xdp_fwd` sample but with a static next hop written by userspace.
//! * `perf_pass`: passes everything. On veth, a frame redirected into a device is only
//!   received if the peer runs an XDP program; this one changes nothing else.
//!
//! Map layouts (userspace in `perf/src/xdp.rs` mirrors them with plain integer arrays):
//! `PERF_SINK_CONFIG[0]` = UDP port (0: count nothing), `[1]` = sample_every (0: drop all);
//! `PERF_SINK_COUNTERS` = [packets, bytes, sampled, other];
//! `PERF_FWD_PORTS[i]` = dst MAC (6) + src MAC (6) + ingress ifindex (u32 LE) for frames
//! that leave through `PERF_FWD_DEVS[i]`; `PERF_FWD_COUNTERS` = [forwarded, passed].
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_DROP, XDP_PASS},
        macros::{map, xdp},
        maps::{Array, DevMap, PerCpuArray},
        programs::XdpContext,
    };

    const ETH_HLEN: usize = 14;
    const ETHERTYPE_IPV4: u16 = 0x0800;
    const IPPROTO_UDP: u8 = 17;

    #[map(name = "PERF_SINK_CONFIG")]
    static SINK_CONFIG: Array<u32> = Array::with_max_entries(2, 0);

    #[map(name = "PERF_SINK_COUNTERS")]
    static SINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

    #[map(name = "PERF_FWD_PORTS")]
    static FWD_PORTS: Array<[u8; 16]> = Array::with_max_entries(2, 0);

    #[map(name = "PERF_FWD_DEVS")]
    static FWD_DEVS: DevMap = DevMap::with_max_entries(2, 0);

    #[map(name = "PERF_FWD_COUNTERS")]
    static FWD_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    /// The frame is shorter than a header we need.
    struct Short;

    /// A pointer to `N` bytes at `offset`, if they lie inside the frame: every packet
    /// access goes through here, so this one check is what the verifier sees.
    #[inline(always)]
    fn ptr_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<*mut [u8; N], Short> {
        let start = ctx.data();
        if start + offset + N > ctx.data_end() {
            return Err(Short);
        }
        Ok((start + offset) as *mut [u8; N])
    }

    #[inline(always)]
    fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Short> {
        let p = ptr_at::<N>(ctx, offset)?;
        // SAFETY: `ptr_at` checked that the N bytes lie between data and data_end, valid
        // for the program's run; byte arrays have alignment 1.
        Ok(unsafe { p.read() })
    }

    #[inline(always)]
    fn add(counters: &PerCpuArray<u64>, index: u32, n: u64) -> u64 {
        match counters.get_ptr_mut(index) {
            Some(c) => {
                // SAFETY: this CPU's slot of a per-CPU array: valid, aligned for u64, and
                // written by nothing else while this program runs on this CPU.
                unsafe {
                    *c += n;
                    *c
                }
            }
            None => 0,
        }
    }

    #[xdp]
    pub fn perf_sink(ctx: XdpContext) -> u32 {
        try_sink(&ctx).unwrap_or(XDP_PASS)
    }

    fn try_sink(ctx: &XdpContext) -> Result<u32, Short> {
        let port = SINK_CONFIG.get(0).copied().unwrap_or(0);
        let sample_every = SINK_CONFIG.get(1).copied().unwrap_or(0);
        let eth = read::<14>(ctx, 0)?;
        let ip = read::<20>(ctx, ETH_HLEN)?;
        let is_udp = u16::from_be_bytes([eth[12], eth[13]]) == ETHERTYPE_IPV4
            && ip[0] >> 4 == 4
            && ip[9] == IPPROTO_UDP
            // fragments other than the first carry no UDP header
            && u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
        if port == 0 || !is_udp {
            add(&SINK_COUNTERS, 3, 1);
            return Ok(XDP_PASS);
        }
        let l4 = ETH_HLEN + usize::from(ip[0] & 0x0f) * 4;
        let dport = read::<4>(ctx, l4)?;
        if u32::from(u16::from_be_bytes([dport[2], dport[3]])) != port {
            add(&SINK_COUNTERS, 3, 1);
            return Ok(XDP_PASS);
        }
        let n = add(&SINK_COUNTERS, 0, 1);
        add(&SINK_COUNTERS, 1, (ctx.data_end() - ctx.data()) as u64);
        if sample_every != 0 && n % u64::from(sample_every) == 0 {
            add(&SINK_COUNTERS, 2, 1);
            return Ok(XDP_PASS);
        }
        Ok(XDP_DROP)
    }

    #[xdp]
    pub fn perf_fwd(ctx: XdpContext) -> u32 {
        let action = try_fwd(&ctx).unwrap_or(XDP_PASS);
        add(&FWD_COUNTERS, u32::from(action == XDP_PASS), 1);
        action
    }

    fn try_fwd(ctx: &XdpContext) -> Result<u32, Short> {
        let ingress = ctx.ingress_ifindex() as u32;
        let mut slot = None;
        for i in 0..2u32 {
            if let Some(p) = FWD_PORTS.get(i) {
                if u32::from_le_bytes([p[12], p[13], p[14], p[15]]) == ingress {
                    slot = Some((i, *p));
                }
            }
        }
        let Some((slot, port)) = slot else {
            return Ok(XDP_PASS);
        };
        let eth = ptr_at::<14>(ctx, 0)?;
        let ip = ptr_at::<20>(ctx, ETH_HLEN)?;
        // SAFETY: both pointers were bounds-checked by `ptr_at`, they do not overlap
        // (bytes 0..14 and 14..34), the frame is ours to rewrite for the whole run of the
        // program, and byte arrays need no alignment.
        let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
        if u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE_IPV4 || ip[0] >> 4 != 4 || ip[8] <= 1
        {
            return Ok(XDP_PASS);
        }
        // TTL - 1 with the incremental checksum update of the kernel's ip_decrease_ttl.
        ip[8] -= 1;
        let mut check = u32::from(u16::from_be_bytes([ip[10], ip[11]])) + 0x0100;
        check += check >> 16;
        let check = (check as u16).to_be_bytes();
        ip[10] = check[0];
        ip[11] = check[1];
        eth[..12].copy_from_slice(&port[..12]);
        Ok(FWD_DEVS.redirect(slot, 0).unwrap_or(XDP_PASS))
    }

    #[xdp]
    pub fn perf_pass(_ctx: XdpContext) -> u32 {
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
    eprintln!("perf-xdp is an eBPF object: perf/build.rs builds it for bpfel-unknown-none");
    std::process::exit(2);
}
