//! cargo xtask: setup, build, test, testbed, run, demo and bench for ntma.
//!
//! Every command but `setup` runs `setup` first, so that a fresh clone needs nothing
//! installed by hand. `setup` is idempotent and returns in about a second when
//! everything is present.

mod setup;
mod testbed;

use std::{
    ffi::OsString,
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for ntma", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (Debian packages, nightly rust-src, bpf-linker,
    /// bpffs); quick when all is present.
    Setup,
    /// Build the workspace (the XDP object included).
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Run the unit and integration tests of the whole workspace (needs root).
    Test {
        /// Extra arguments for `cargo test`, after `--` (e.g. `-- -p ntma-user`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build, remove or inspect the network-namespace testbed of shared/TESTBED.md.
    Testbed {
        #[command(subcommand)]
        action: testbed::Action,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup::run(true),
        Cmd::Build { release } => {
            setup::run(false)?;
            let mut c = cargo();
            c.arg("build");
            if release {
                c.arg("--release");
            }
            status(&mut c)
        }
        Cmd::Test { args } => test(args),
        Cmd::Testbed { action } => {
            setup::run(false)?;
            testbed::run(action)
        }
    }
}

fn test(args: Vec<OsString>) -> Result<()> {
    // Checked before setup: without root nothing below can pass, so say so at once.
    if ntm_testbed::require_root().is_err() {
        bail!(
            "the integration tests need root (network namespaces, XDP, AF_XDP): \
             run `sudo -E cargo xtask test`"
        );
    }
    setup::run(false)?;
    // Testbeds left behind by a crashed run would only take up names and memory.
    match ntm_testbed::down_stale() {
        Ok(removed) if !removed.is_empty() => {
            eprintln!(
                "test: removed testbeds left by crashed runs: {}",
                removed.join(" ")
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("test: could not look for stale testbeds: {e}"),
    }
    let started = Instant::now();
    // Integration tests run the other crates' binaries (ntm-dc, ntm-rs, ntma…),
    // which `cargo test` builds only for the crate under test.
    status(cargo().args(["build", "--workspace", "--bins"]))?;
    let mut c = cargo();
    c.args(["test", "--workspace"]).args(args);
    let result = status(&mut c);
    eprintln!(
        "test: cargo test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    result
}

/// The cargo that runs us (`cargo xtask` sets `CARGO`), in the workspace root.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(ToOwned::to_owned).unwrap_or(manifest)
}

/// Runs `c` with inherited stdio; an error unless it exits with 0.
fn status(c: &mut Command) -> Result<()> {
    let s = c
        .status()
        .with_context(|| format!("could not start {}", describe(c)))?;
    if !s.success() {
        bail!("{} failed ({s})", describe(c));
    }
    Ok(())
}

fn describe(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
