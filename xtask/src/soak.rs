//! `cargo xtask soak`: the adapter under a long mixed load, watched for
//! growth (`ntm-world/src/bin/ntm-soak`).
//!
//! Release build: the soak is about what a deployed adapter does over time,
//! and only the optimised daemons forward at rates near those of
//! deployment; it is the build `demo` and `bench` use too, so one build
//! serves all three.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{bail, Result};

use super::{cargo, release_bin, setup, status, workspace_root};

/// Builds the workspace in release mode and runs `ntm-soak` for `minutes`,
/// its results under perf/results/.
pub fn run(minutes: f64, args: Vec<OsString>) -> Result<()> {
    if ntm_testbed::require_root().is_err() {
        bail!(
            "the soak needs root (network namespaces, XDP, AF_XDP): run `sudo -E cargo xtask soak`"
        );
    }
    if minutes.is_nan() || minutes <= 0.0 {
        bail!("--minutes must be more than 0");
    }
    setup::run(false, setup::Need::Core)?;
    status(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    let mut c = Command::new(release_bin("ntm-soak"));
    // In the workspace root, its default `--out` is perf/results.
    c.current_dir(workspace_root())
        .arg("--minutes")
        .arg(minutes.to_string())
        .args(&args);
    status(&mut c)
}
