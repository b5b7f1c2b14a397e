//! `cargo xtask setup`: installs every prerequisite, each only when it is missing, and
//! says what it does (a first run builds bpf-linker and takes minutes).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

/// Debian packages the tests and the demo use (and the benchmarks too).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "ethtool",
    "netsniff-ng",
    "iperf3",
    "isc-dhcp-client",
    "dnsutils",
    "iputils-ping",
    "netcat-openbsd",
    "tcpdump",
    // the DNS tests' upstream resolver: the binary only (the `dnsmasq`
    // package would also start a system resolver on the host's port 53)
    "dnsmasq-base",
    // the operations tests: `promtool check metrics` on every daemon's
    // scrape, `systemd-analyze verify` on the units
    "prometheus",
    "systemd",
    // the DC's shared store: etcd for its tests and `cargo xtask bench dc`,
    // protoc for the etcd client's build (ntm-dc only: xtask itself does
    // not need it)
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
];

/// Debian packages only the benchmarks use: userspace WireGuard as a gateway.
pub const BENCH_PACKAGES: &[&str] = &["wireguard-tools", "wireguard-go"];

/// What the command at hand needs: the tests and the demo do not wait for
/// the benchmarks' tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Building, the tests, the demo, the testbed, running the adapter.
    Core,
    /// The benchmarks (and `cargo xtask setup`, which installs everything):
    /// also userspace WireGuard (Debian's wireguard-go, boringtun-cli).
    Bench,
}

/// The bpf-linker this project is built and tested with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-deb, which `cargo xtask dist` packages with (`cargo install`, pinned;
/// only `dist` installs it, the tests never wait for it).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// boringtun-cli, the benchmarks' second userspace WireGuard (`cargo install`, pinned).
pub const BORINGTUN_VERSION: &str = "0.7.1";

const BPFFS: &str = "/sys/fs/bpf";

pub fn run(verbose: bool, need: Need) -> Result<()> {
    VERBOSE.store(verbose, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut packages = DEBIAN_PACKAGES.to_vec();
    if need == Need::Bench {
        packages.extend_from_slice(BENCH_PACKAGES);
    }
    debian_packages(&packages)?;
    nightly()?;
    bpf_linker()?;
    let bench = if need == Need::Bench {
        boringtun()?;
        format!(", boringtun-cli {BORINGTUN_VERSION}")
    } else {
        String::new()
    };
    bpffs()?;
    eprintln!(
        "setup: prerequisites present: {} Debian packages, nightly + rust-src, \
         bpf-linker {BPF_LINKER_VERSION}{bench}, bpffs ({:.1} s)",
        packages.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn is_root() -> bool {
    ntm_testbed::require_root().is_ok()
}

/// Progress of a step that installs something: always shown, a first run takes minutes.
fn step(what: &str) {
    eprintln!("setup: {what}");
}

/// A step that found everything in place: shown by `cargo xtask setup` only.
fn present(what: &str) {
    if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("setup: {what}");
    }
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `c` with its output shown; an error unless it exits with 0.
fn run_shown(c: &mut Command) -> Result<()> {
    let what = crate::describe(c);
    eprintln!("setup: $ {what}");
    let s = c
        .status()
        .with_context(|| format!("could not start `{what}`"))?;
    if !s.success() {
        bail!("`{what}` failed ({s})");
    }
    Ok(())
}

/// Runs `c` quietly and returns its stdout, or None if it could not run or failed.
fn output(c: &mut Command) -> Option<String> {
    let out = c.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn debian_packages(packages: &[&str]) -> Result<()> {
    // dpkg-query answers for all packages at once; unknown ones go to stderr.
    let listed = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .stderr(Stdio::null())
        .output()
        .context("could not run dpkg-query: this setup expects Debian or Ubuntu")?;
    let text = String::from_utf8_lossy(&listed.stdout);
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{p} ")) && l.ends_with("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        present(&format!("Debian packages: {} present", packages.len()));
        return Ok(());
    }
    step(&format!(
        "Debian packages: installing {}",
        missing.join(" ")
    ));
    if !is_root() {
        bail!(
            "installing Debian packages needs root: run `sudo -E cargo xtask setup` \
             (missing: {})",
            missing.join(" ")
        );
    }
    run_shown(Command::new("apt-get").args(["update", "-q"]))?;
    run_shown(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context(
        "rustup is needed (the eBPF build uses the nightly toolchain): install it from rustup.rs",
    )?;
    if toolchains
        .lines()
        .any(|l| l.starts_with("nightly-") || l.starts_with("nightly "))
    {
        present("nightly toolchain: present");
    } else {
        step("nightly toolchain: installing (minimal profile)");
        run_shown(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if components.lines().any(|l| l.trim() == "rust-src") {
        present("nightly rust-src: present");
    } else {
        step("nightly rust-src: installing");
        run_shown(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker, built against the nightly toolchain's own LLVM (no LLVM of its own):
/// it must read the bitcode that this nightly's rustc writes.
fn bpf_linker() -> Result<()> {
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = which("bpf-linker");
    let version = found
        .as_deref()
        .and_then(|p| output(Command::new(p).arg("--version")))
        .map(|v| v.trim().to_owned());
    if version.as_deref() == Some(want.as_str()) {
        present(&format!("{want}: present"));
        return Ok(());
    }
    match (&found, &version) {
        (None, _) => step(&format!("{want}: not found, building it (a few minutes)")),
        (Some(p), None) => step(&format!(
            "{want}: {} does not run (nightly updated?), rebuilding it",
            p.display()
        )),
        (Some(_), Some(v)) => step(&format!("{want}: found {v}, building {BPF_LINKER_VERSION}")),
    }
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .map(|s| PathBuf::from(s.trim()))
            .context("cannot ask the nightly rustc for its sysroot")?;
    let lib = sysroot.join("lib");
    let (dylib, major) = llvm_dylib(&lib)?;
    let rustflags = format!(
        "-L {0} -l dylib={dylib} -C link-arg=-Wl,-rpath,{0}",
        lib.display()
    );
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ])
    .args(["--no-default-features", "--features"])
    .arg(format!("llvm-{major},no-llvm-linking"))
    .env("RUSTFLAGS", &rustflags)
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    eprintln!("setup: RUSTFLAGS=\"{rustflags}\"");
    run_shown(&mut c)?;
    let after = which("bpf-linker").and_then(|p| output(Command::new(p).arg("--version")));
    match after.map(|v| v.trim().to_owned()) {
        Some(v) if v == want => Ok(()),
        Some(v) => bail!("installed bpf-linker reports {v:?}, expected {want:?}: is another one earlier in PATH?"),
        None => bail!("bpf-linker was installed but is not in PATH: add ~/.cargo/bin to PATH"),
    }
}

/// The nightly's `libLLVM-<major>-rust-<version>.so`: the link name and LLVM major.
fn llvm_dylib(lib: &Path) -> Result<(String, String)> {
    let entries = std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so")) {
            if let Some(rest) = stem.strip_prefix("LLVM-") {
                let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if !major.is_empty() {
                    return Ok((stem.to_owned(), major));
                }
            }
        }
    }
    bail!(
        "no libLLVM-*.so in {}: reinstall the nightly toolchain (`rustup toolchain install nightly --profile minimal --force`)",
        lib.display()
    )
}

fn which(exe: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // Where `cargo install` puts it, in case PATH lacks it.
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
    }) {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    dirs.into_iter().map(|d| d.join(exe)).find(|p| p.is_file())
}

/// boringtun-cli for the benchmarks, from crates.io at a pinned version (it reports
/// itself as `boringtun <version>`).
fn boringtun() -> Result<()> {
    let found = which("boringtun-cli")
        .and_then(|p| output(Command::new(p).arg("--version")))
        .map(|v| v.trim().to_owned());
    let want = format!("boringtun {BORINGTUN_VERSION}");
    if found.as_deref() == Some(want.as_str()) {
        present(&format!("boringtun-cli {BORINGTUN_VERSION}: present"));
        return Ok(());
    }
    step(&format!(
        "boringtun-cli {BORINGTUN_VERSION}: {}, building it (a few minutes)",
        found.map_or("not found".to_owned(), |v| format!("found {v}"))
    ));
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.args([
        "install",
        "boringtun-cli",
        "--version",
        BORINGTUN_VERSION,
        "--locked",
        "--force",
    ])
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_shown(&mut c)
}

/// cargo-deb for `cargo xtask dist`, from crates.io at a pinned version
/// (`cargo-deb --version` prints `<version>`).
pub fn cargo_deb() -> Result<()> {
    let found = which("cargo-deb")
        .and_then(|p| output(Command::new(p).arg("--version")))
        .map(|v| v.trim().to_owned());
    if found
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION))
    {
        present(&format!("cargo-deb {CARGO_DEB_VERSION}: present"));
        return Ok(());
    }
    step(&format!(
        "cargo-deb {CARGO_DEB_VERSION}: {}, building it (a few minutes)",
        found.map_or("not found".to_owned(), |v| format!("found {v}"))
    ));
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
        "--force",
    ])
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_shown(&mut c)
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    });
    if mounted {
        present(&format!("bpffs at {BPFFS}: mounted"));
        return Ok(());
    }
    if !is_root() {
        step(&format!(
            "bpffs at {BPFFS}: not mounted (needs root; the tests mount it)"
        ));
        return Ok(());
    }
    step(&format!("bpffs at {BPFFS}: mounting"));
    run_shown(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_dylib_name_and_major() {
        let dir = std::env::temp_dir().join(format!("xtask-llvm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libLLVM.so.22.1-rust-1.97.0-nightly"), b"").unwrap();
        std::fs::write(dir.join("librustc_driver-1.so"), b"").unwrap();
        assert!(llvm_dylib(&dir).is_err());
        std::fs::write(dir.join("libLLVM-22-rust-1.97.0-nightly.so"), b"").unwrap();
        let (name, major) = llvm_dylib(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(name, "LLVM-22-rust-1.97.0-nightly");
        assert_eq!(major, "22");
    }
}
