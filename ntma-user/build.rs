//! Builds the XDP programs of `ntma-ebpf` for `bpfel-unknown-none` (nightly, `-Z
//! build-std=core`, bpf-linker) with aya-build, into `OUT_DIR/ntma-xdp`, which
//! `src/ebpf.rs` embeds. A plain `cargo build` rebuilds the object whenever the eBPF
//! crate, the shared types or bpf-linker change.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const FIX: &str = "run `cargo xtask setup` to install them";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("ntma-user lives in the workspace root");
    let ebpf_dir = root.join("ntma-ebpf");
    // aya-build watches the eBPF crate's directory; the shared types live beside it.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("ntma-common").display()
    );

    match preflight() {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(missing) => {
            // One line, no backtrace: the operator only needs to know what to run.
            // `cargo::error` with a zero exit: cargo shows just this line and fails.
            println!("cargo::error=the eBPF build needs {missing}: {FIX}");
            return;
        }
    }

    let ebpf_dir = ebpf_dir.to_str().expect("workspace path is UTF-8");
    let package = aya_build::Package {
        name: "ntma-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        println!("cargo::error=building the XDP programs (ntma-ebpf) failed: {e:#}");
    }
}

/// Checks what aya-build needs, so that a missing piece gives one clear line instead of
/// a nested cargo failure. Returns the bpf-linker path (a rebuild trigger).
fn preflight() -> Result<PathBuf, String> {
    let mut missing = Vec::new();
    match nightly_sysroot() {
        None => missing.push("the nightly toolchain and its rust-src component"),
        Some(sysroot) => {
            let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
            if !core.is_file() {
                missing.push("the nightly rust-src component");
            }
        }
    }
    let linker = find_in_path("bpf-linker");
    let linker_runs = linker.as_deref().is_some_and(|l| {
        Command::new(l)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !linker_runs {
        missing.push("bpf-linker");
    }
    match (missing.is_empty(), linker) {
        (true, Some(linker)) => Ok(linker),
        _ => Err(missing.join(" and ")),
    }
}

fn nightly_sysroot() -> Option<PathBuf> {
    // `rustup toolchain list` never installs anything, unlike `rustup run` may.
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let listed = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.starts_with("nightly-") || l.starts_with("nightly "));
    if !listed {
        return None;
    }
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn find_in_path(exe: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(exe))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
