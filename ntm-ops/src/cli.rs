//! The command-line plumbing every daemon shares: `--print-man`, the exit
//! with a one-line error, and the `status` subcommand's arguments and
//! printing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `<daemon> --print-man`: the roff man page of `cmd` on stdout.
pub fn print_man(cmd: clap::Command) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match crate::man::render(cmd, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// The process exit for `result`: an error goes to stderr as
/// `<daemon>: <whole chain on one line>` (for operators: no backtrace).
pub fn exit(daemon: &str, result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{daemon}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `name=count` pairs of a status' counters, space-separated, for its text
/// form; with `all` false only the non-zero ones. `none` when nothing is left.
pub fn counts(m: &std::collections::BTreeMap<String, u64>, all: bool) -> String {
    let v: Vec<String> = m
        .iter()
        .filter(|(_, n)| all || **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(" ")
    }
}

/// The arguments of `<daemon> status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The configuration the daemon runs with (names its status socket).
    #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The status socket (default /run/<daemon>/<daemon>.sock).
    #[arg(short, long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    /// The socket: `--socket`, else the one `socket_of` reads from
    /// `--config`, else `default`.
    pub fn socket(
        &self,
        default: &str,
        socket_of: impl FnOnce(&Path) -> Result<PathBuf>,
    ) -> Result<PathBuf> {
        match (&self.socket, &self.config) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(c)) => socket_of(c),
            (None, None) => Ok(PathBuf::from(default)),
        }
    }

    /// Asks `daemon`'s status socket at `path` and prints the answer: as
    /// JSON with `--json`, else as `render` makes it.
    pub fn print<S: DeserializeOwned + Serialize>(
        &self,
        path: &Path,
        daemon: &str,
        render: impl FnOnce(&S) -> String,
    ) -> Result<()> {
        let text = crate::unix::query(path, daemon)?;
        let st: S = serde_json::from_str(&text)
            .with_context(|| format!("bad answer from {}", path.display()))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            print!("{}", render(&st));
        }
        Ok(())
    }
}
