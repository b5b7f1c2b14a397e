//! Builds the benchmarks' XDP programs (`perf/ebpf`, binary `perf-xdp`) for
//! `bpfel-unknown-none` the way aya-build builds `ntma-ebpf` for ntma-user: nightly,
//! `-Z build-std=core`, bpf-linker, BTF. `perf/ebpf` is its own workspace (never built for
//! the host), so cargo runs inside it rather than with `--package` (what aya-build does).
//! The object lands in `OUT_DIR/perf-xdp`, which `src/xdp.rs` embeds.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const FIX: &str = "run `cargo xtask setup` to install them";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let ebpf_dir = manifest_dir.join("ebpf");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", ebpf_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("Cargo.toml").display()
    );
    let Some(linker) = find_in_path("bpf-linker") else {
        println!("cargo::error=the benchmarks' XDP build needs bpf-linker: {FIX}");
        return;
    };
    println!("cargo:rerun-if-changed={}", linker.display());

    let target_dir = out_dir.join("perf-ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        // The same flags aya-build passes: target arch cfg, full debug info, BTF.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The outer cargo's settings belong to the host build, not to this one.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            println!("cargo::error=could not run rustup for the XDP build ({e}): {FIX}");
            return;
        }
    };
    if !out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("cargo:warning={line}");
        }
        println!(
            "cargo::error=building the benchmarks' XDP programs (perf/ebpf) failed; \
             the lines above say why (missing nightly rust-src or bpf-linker: {FIX})"
        );
        return;
    }
    let built = target_dir.join("bpfel-unknown-none/release/perf-xdp");
    if let Err(e) = std::fs::copy(&built, out_dir.join("perf-xdp")) {
        println!("cargo::error=copying {}: {e}", built.display());
    }
}

fn find_in_path(exe: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(exe))
        .chain(env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin").join(exe)))
        .find(|p| p.is_file())
}
