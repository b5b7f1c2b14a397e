//! The ntma testbed: network namespaces, veths, bridge and NAT of docs/testbed.md, as a library with a teardown guard.
//!
//! ```text
//!  gn  eth0 ──┐
//!             ├─ lan (br0) ── lan0 ntma wan0 ── lan nat1 wan ──┐                 ┌── dc   198.18.0.2
//!  gn2 eth0 ──┘                                                │                 ├── rs   198.18.0.3
//!                                                              └── inet (br0) ───┼── cn   198.18.0.20
//!                                                                  198.18.0.0/24 └── nat2 198.18.0.11 ── cn2 192.168.20.2
//! ```
//!
//! Every namespace name is `<prefix><role>` (default prefix `ntm-`), so
//! testbeds with different prefixes live side by side. Nothing in a testbed
//! has a link, route or address towards the host's own network; the veths
//! are created directly inside their namespaces and never appear in the
//! host namespace.
//!
//! ```no_run
//! use ntm_testbed::{require_root, unique_prefix, wait_until, Role, Testbed};
//! use std::time::Duration;
//!
//! require_root().unwrap();
//! let tb = Testbed::up(&unique_prefix("demo")).unwrap();
//! tb.exec(Role::Ntma, ["ping", "-c1", "-W1", "198.18.0.20"]).unwrap();
//! let k = tb.keys().node("cn.ntm.test").unwrap().to_hex();
//! let cfg = tb.state_dir().join("cn.toml");
//! std::fs::write(&cfg, format!("key = \"{k}\"\n")).unwrap();
//! let mut cmd = std::process::Command::new("ntm-node");
//! cmd.arg("--config").arg(&cfg);
//! let node = tb.spawn(Role::Cn, &cmd).unwrap();
//! assert!(wait_until(Duration::from_secs(5), || node.log().contains("registered")));
//! // dropping `node` stops it, dropping `tb` removes the testbed
//! ```

mod child;
pub mod etcd;
mod keys;
mod status;
mod sys;
mod testbed;
mod topology;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

pub use child::{Child, GRACE};
pub use keys::{Key, Keys, KEYS_FILE};
pub use nix::sys::signal::Signal;
pub use status::{Interface, NamespaceStatus, Status};
pub use sys::{in_netns, require_root, BPFFS, STATE_ROOT};
pub use testbed::{
    check_prefix, down, down_stale, list, nat_table_name, state_dir, status, unique_prefix,
    Options, Testbed,
};
pub use topology::*;

/// What can go wrong; each message says what to do about it.
#[derive(thiserror::Error)]
pub enum Error {
    /// Not running as root.
    #[error(
        "the testbed needs root (network namespaces, veths, nftables), and so do the \
         integration tests: run them as root, e.g. `sudo -E cargo xtask test`"
    )]
    NotRoot,
    /// A prefix that could collide with other testbeds or is not a valid name.
    #[error("bad testbed prefix {prefix:?}: {why} (examples: ntm-, t1-, bench-)")]
    BadPrefix {
        /// The prefix given.
        prefix: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An option or argument out of range.
    #[error("bad testbed option: {0}")]
    BadOption(String),
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (its stdout when stderr was empty).
        stderr: String,
    },
    /// A command could not be started.
    #[error(
        "could not start `{cmd}`: {source}; is it installed? (`cargo xtask setup` installs \
         iproute2, nftables and ethtool)"
    )]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A namespace could not be entered.
    #[error(
        "cannot enter network namespace {ns}: {source}; is the testbed up? \
         (`cargo xtask testbed status`)"
    )]
    Netns {
        /// The namespace.
        ns: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `up` finished but the result does not match the topology.
    #[error(
        "testbed {prefix} is not complete after `up`: {problems}; \
         `cargo xtask testbed down --prefix {prefix}` and try again"
    )]
    Incomplete {
        /// The prefix.
        prefix: String,
        /// What differs.
        problems: String,
    },
    /// `down` could not remove everything.
    #[error(
        "`down` of testbed {prefix} left behind: {leftovers}; a process outside the testbed \
         may still use them (`ip netns pids`, `lsof`)"
    )]
    Leftovers {
        /// The prefix.
        prefix: String,
        /// What is still there.
        leftovers: String,
    },
    /// The key store is missing or damaged.
    #[error("key store {path}: {why}; `cargo xtask testbed down` then `up` makes a new one")]
    Keys {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A workspace binary that a test wants to run has not been built.
    #[error(
        "{} is missing: run `cargo build --workspace --bins` first (cargo xtask test does this)",
        path.display()
    )]
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A tool printed something this crate does not understand.
    #[error("cannot understand the output of `{cmd}`: {why}")]
    Parse {
        /// The command.
        cmd: String,
        /// What did not parse.
        why: String,
    },
}

// Debug shows the message, so that `.unwrap()` and `-> Result` in tests
// print what to do rather than a struct dump.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The path of the workspace binary `name`, built beside the running test
/// executable: `target/<profile>/<name>` for a test in
/// `target/<profile>/deps/`. For binaries of other crates than the one
/// under test (for its own, use `env!("CARGO_BIN_EXE_<name>")`).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    // NTM_BIN_DIR: binaries installed elsewhere (e.g. /usr/bin from the
    // packages, for `cargo xtask dist --check`).
    if let Some(dir) = std::env::var_os("NTM_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::MissingBinary { path })
        };
    }
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        what: "finding the running test executable".into(),
        source,
    })?;
    let dir = exe.parent().unwrap_or(std::path::Path::new("."));
    // target/<profile>/deps/<test> → target/<profile>
    let dir = match dir.file_name() {
        Some(d) if d == "deps" => dir.parent().unwrap_or(dir),
        _ => dir,
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary { path })
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it
/// held. Polling starts fast and backs off to 100 ms. For tests: assert on
/// the returned value, never on how long it took.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || cond().then_some(())).is_some()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_reports_whether_the_condition_came_true() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(10), || {
            n += 1;
            n == 3
        }));
        assert_eq!(n, 3);
        assert!(!wait_until(Duration::from_millis(20), || false));
        assert_eq!(wait_for(Duration::from_secs(1), || Some(7)), Some(7));
    }

    #[test]
    fn bin_path_finds_binaries_beside_the_test_and_explains_missing_ones() {
        let e = bin_path("no-such-binary-here").unwrap_err().to_string();
        assert!(e.contains("cargo build --workspace --bins"), "{e}");
        assert!(e.contains("no-such-binary-here"), "{e}");
        // The test executable's own directory is target/<profile>/deps;
        // bin_path looks one level up.
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        let e = bin_path(name).unwrap_err().to_string();
        assert!(!e.contains("/deps/"), "{e}");
    }

    #[test]
    fn errors_debug_as_their_message() {
        let e = Error::NotRoot;
        assert_eq!(format!("{e:?}"), e.to_string());
        assert!(e.to_string().contains("sudo -E cargo xtask test"));
    }
}
