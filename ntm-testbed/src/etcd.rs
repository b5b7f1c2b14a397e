//! How the tests, the testbed and the DC's benchmark run an etcd member:
//! one command line for a member of a new cluster, and where the binary is.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The etcd binary (Debian's etcd-server), or an error that says how to
/// get it.
pub fn binary() -> Result<PathBuf, String> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            "etcd is not installed: run `cargo xtask setup` (it installs Debian's etcd-server and etcd-client)"
                .to_owned()
        })
}

/// One member of a new cluster.
pub struct Member<'a> {
    /// Its name, as `initial_cluster` lists it.
    pub name: &'a str,
    /// Its data directory.
    pub data_dir: &'a Path,
    /// The URL clients reach it at (listened on and advertised).
    pub client_url: &'a str,
    /// The URL the other members reach it at.
    pub peer_url: &'a str,
    /// Every member, `name=peer_url` joined by commas.
    pub initial_cluster: &'a str,
    /// The cluster's token (unique per cluster).
    pub token: &'a str,
}

/// The command that starts `m`, with tick settings for a loaded test
/// machine; the caller chooses how to spawn it and where its output goes.
pub fn member_command(etcd: &Path, m: &Member<'_>) -> Command {
    let mut cmd = Command::new(etcd);
    cmd.args(["--name", m.name, "--data-dir"])
        .arg(m.data_dir)
        .args(["--listen-client-urls", m.client_url])
        .args(["--advertise-client-urls", m.client_url])
        .args(["--listen-peer-urls", m.peer_url])
        .args(["--initial-advertise-peer-urls", m.peer_url])
        .args(["--initial-cluster", m.initial_cluster])
        .args(["--initial-cluster-token", m.token])
        .args(["--initial-cluster-state", "new"])
        // A loaded test machine must not lose its leader to a slow tick.
        .args(["--heartbeat-interval", "200", "--election-timeout", "2000"])
        .args(["--logger", "zap", "--log-level", "warn"]);
    cmd
}
