//! XDP programs of ntma: classify frames and redirect the fast-path ones into AF_XDP.
//!
//! * `ntma_lan` (GN-facing NIC): IPv4 to an address inside the VIP prefix other than
//!   the NTMA's router address goes to the AF_XDP socket of its RX queue; ARP, DHCP,
//!   DNS to the router and everything else pass to the kernel.
//! * `ntma_wan` (WAN NIC): UDP to the NTM port carrying DATA or TUN_KEEPALIVE of
//!   protocol version 2 goes to AF_XDP; signaling, other versions and everything else
//!   pass.
//!
//! Both count every verdict per CPU. They classify and redirect only: no packet is
//! modified here. Built for `bpfel-unknown-none` by `ntma-user/build.rs`; on the host it
//! compiles to an empty binary so that `cargo clippy --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never run.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "ntma-xdp is an eBPF object: it is built for bpfel-unknown-none by ntma-user's build.rs"
    );
    std::process::exit(2);
}
