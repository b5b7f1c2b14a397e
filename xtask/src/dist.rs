//! `cargo xtask dist`: Debian packages of the four daemons, built with
//! cargo-deb from a release build (the adapter's XDP object is inside the
//! `ntma` binary, so the target host needs neither nightly Rust nor
//! bpf-linker), with their systemd units, example configurations, man pages
//! (generated from the clap definitions: `<daemon> --print-man`) and
//! docs/deploy.md.
//!
//! `--check` (root) then installs them on this machine with `dpkg -i`,
//! checks example configurations with the installed binaries, runs
//! `systemd-analyze verify` on the installed units, runs the demo's
//! topology on the installed binaries (`ntm-demo` with NTM_BIN_DIR=/usr/bin),
//! and removes the packages again (`dpkg --purge`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, describe, release_bin, status, workspace_root};

/// (crate, package, binary).
pub const PACKAGES: [(&str, &str, &str); 4] = [
    ("ntma-user", "ntma", "ntma"),
    ("ntm-dc", "ntm-dc", "ntm-dc"),
    ("ntm-rs", "ntm-rs", "ntm-rs"),
    ("ntm-node", "ntm-node", "ntm-node"),
];

pub fn run(check: bool) -> Result<()> {
    if check && ntm_testbed::require_root().is_err() {
        bail!("`cargo xtask dist --check` installs packages: run it as root");
    }
    crate::setup::run(false, crate::setup::Need::Core)?;
    crate::setup::cargo_deb()?;
    let mut build = cargo();
    build.args(["build", "--release", "--bins"]);
    for (krate, _, _) in PACKAGES {
        build.args(["-p", krate]);
    }
    if check {
        // The demo runs from the workspace; only the daemons come from the packages.
        build.args(["-p", "ntm-world"]);
    }
    status(&mut build)?;
    let release = release_bin("");
    let man = release.join("man");
    std::fs::create_dir_all(&man)?;
    for (_, _, bin) in PACKAGES {
        let out = Command::new(release.join(bin))
            .arg("--print-man")
            .output()
            .with_context(|| format!("running {bin} --print-man"))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "{bin} --print-man failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let page = man.join(format!("{bin}.1"));
        std::fs::write(&page, &out.stdout)?;
        let _ = std::fs::remove_file(man.join(format!("{bin}.1.gz")));
        status(Command::new("gzip").args(["-9n"]).arg(&page))?;
    }
    let out_dir = release.parent().unwrap_or(&release).join("debian");
    std::fs::create_dir_all(&out_dir)?;
    let mut debs = Vec::new();
    for (krate, pkg, _) in PACKAGES {
        let mut c = cargo();
        c.args(["deb", "--no-build", "--no-strip", "-p", krate, "--output"])
            .arg(&out_dir);
        let out = c
            .output()
            .with_context(|| format!("could not start {}", describe(&c)))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                describe(&c),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        eprintln!("dist: {pkg}: {}", deb.display());
        debs.push(deb);
    }
    if check {
        install_and_check(&debs)?;
    }
    Ok(())
}

fn install_and_check(debs: &[PathBuf]) -> Result<()> {
    // The packages create the `ntm` system user; this machine gets rid of
    // it again if it had none before.
    let had_user = Command::new("getent")
        .args(["passwd", "ntm"])
        .output()
        .is_ok_and(|o| o.status.success());
    status(Command::new("dpkg").arg("-i").args(debs))?;
    let r = checks();
    let mut purge = Command::new("dpkg");
    purge.arg("--purge");
    for (_, pkg, _) in PACKAGES {
        purge.arg(pkg);
    }
    let removed = status(&mut purge);
    if !had_user {
        let _ = Command::new("deluser")
            .args(["--system", "--quiet", "ntm"])
            .status();
    }
    r.and(removed)
}

fn checks() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("ntm-dist-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    check_examples(&tmp)?;
    verify_units()?;
    for (_, _, bin) in PACKAGES {
        status(Command::new("man").args(["-w", bin]))?;
    }
    // The demo's topology on the installed daemons.
    let mut demo = Command::new(release_bin("ntm-demo"));
    demo.env("NTM_BIN_DIR", "/usr/bin")
        .current_dir(workspace_root());
    eprintln!("dist: $ NTM_BIN_DIR=/usr/bin {}", describe(&demo));
    status(&mut demo)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Each installed binary checks its installed example configuration (copied
/// to `tmp` and made private: they hold example keys).
fn check_examples(tmp: &Path) -> Result<()> {
    for (bin, check) in [
        ("ntma", "check-config"),
        ("ntm-dc", "--check"),
        ("ntm-rs", "--check"),
        ("ntm-node", "--check"),
    ] {
        let file = format!("{bin}.example.toml");
        let src = Path::new("/usr/share/doc")
            .join(bin)
            .join("examples")
            .join(&file);
        let dst = tmp.join(&file);
        std::fs::copy(&src, &dst).with_context(|| format!("{} installed?", src.display()))?;
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let mut c = Command::new(Path::new("/usr/bin").join(bin));
        c.args([check, "--config"]).arg(&dst);
        eprintln!("dist: $ {}", describe(&c));
        status(&mut c)?;
    }
    Ok(())
}

/// `systemd-analyze verify` of the installed units: no complaint at all.
fn verify_units() -> Result<()> {
    let units: Vec<PathBuf> = PACKAGES
        .iter()
        .map(|(_, _, bin)| PathBuf::from(format!("/lib/systemd/system/{bin}.service")))
        .collect();
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").args(&units);
    eprintln!("dist: $ {}", describe(&verify));
    let out = verify
        .output()
        .context("systemd-analyze (package systemd)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "dist: systemd-analyze verify: {} {}",
        out.status,
        said.trim()
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify of the installed units: {said}");
    }
    Ok(())
}
