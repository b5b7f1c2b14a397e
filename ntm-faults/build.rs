//! Builds the fault injector (`ebpf/`, package `ntm-faults-ebpf`) for `bpfel-unknown-none`
//! with aya-build, the way `ntma-user/build.rs` builds `ntma-ebpf`, into
//! `OUT_DIR/ntm-faults-xdp`, which `src/lib.rs` embeds. ntma-user's build checks the
//! toolchain first with clear messages; every build of the workspace's tests runs that
//! one too, so this one only says what to run when aya-build fails.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let ebpf_dir = format!("{manifest_dir}/ebpf");
    let package = aya_build::Package {
        name: "ntm-faults-ebpf",
        root_dir: &ebpf_dir,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        println!(
            "cargo::error=building the fault injector (ntm-faults/ebpf) failed: {e:#}; \
             missing nightly rust-src or bpf-linker? run `cargo xtask setup`"
        );
    }
}
