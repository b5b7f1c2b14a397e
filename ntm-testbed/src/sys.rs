//! Running commands, entering namespaces, root checks and other contact
//! with the host.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};
use nix::sched::CloneFlags;

use crate::{Error, Result};

/// Where `ip netns` keeps its namespace files.
pub(crate) const NETNS_RUN_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds per-namespace files to bind over /etc.
pub(crate) const NETNS_ETC_DIR: &str = "/etc/netns";
/// Parent of every testbed's state directory.
pub const STATE_ROOT: &str = "/run/ntm-testbed";
/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Fails unless the process runs as root. Everything in this crate needs
/// it; integration tests call it first so that they fail with this message
/// instead of with a confusing one from `ip`.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`
/// (`setns`, the network namespace only) and returns its value. Sockets
/// created inside stay in that namespace when returned; processes spawned
/// inside start in it. Mount namespace and /etc/resolv.conf are the host's:
/// use [`crate::Testbed::spawn`] for programs that read or write resolver
/// configuration. A panic in `f` is resumed on the calling thread.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    let file = File::open(&path).map_err(|source| Error::Netns {
        ns: ns.to_owned(),
        source,
    })?;
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                ns: ns.to_owned(),
                source: e.into(),
            })?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// `program arg...` as the operator would type it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` to completion with `stdin` fed to it; returns its stdout, or
/// an error that carries its stderr when it fails.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let what = describe(cmd);
    tracing::debug!(cmd = %what, "run");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        cmd: what.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that fails early closes its stdin; its exit status and
        // stderr say more than the broken pipe would.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| Error::Io {
        what: format!("waiting for `{what}`"),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        Err(Error::Command {
            cmd: what,
            status: out.status,
            stderr,
        })
    }
}

/// `ip ARGS...` in the root namespace.
pub(crate) fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("ip").args(args), None)
}

/// `ip [-n ns] -batch -` with `script` on stdin. Stops at the first
/// failing line unless `force`.
pub(crate) fn ip_batch(ns: Option<&str>, script: &str, force: bool) -> Result<String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"]);
    run(&mut cmd, Some(script)).map_err(|e| match e {
        // The failing line is the useful part of a batch error.
        Error::Command {
            cmd,
            status,
            stderr,
        } => Error::Command {
            cmd: format!("{cmd} <<EOF\n{}EOF", script),
            status,
            stderr,
        },
        e => e,
    })
}

/// Network namespaces known to `ip netns`.
pub(crate) fn list_netns() -> Result<Vec<String>> {
    match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(dir) => Ok(dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Io {
            what: format!("listing {NETNS_RUN_DIR}"),
            source,
        }),
    }
}

/// Entries of `dir` whose names start with `prefix`.
pub(crate) fn entries_with_prefix(dir: &str, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Whether bpffs is mounted at [`BPFFS`].
pub(crate) fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let (_, mnt, fstype) = (f.next(), f.next(), f.next());
                mnt == Some(BPFFS) && fstype == Some("bpf")
            })
        })
        .unwrap_or(false)
}

/// Mounts bpffs at [`BPFFS`] unless it is there already.
pub(crate) fn ensure_bpffs() -> Result<()> {
    if bpffs_mounted() {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::Io {
        what: format!("mounting bpffs at {BPFFS} (mount -t bpf bpf {BPFFS})"),
        source: e.into(),
    })
}

/// An exclusive lock shared by every testbed on the machine, held while
/// namespaces are created: concurrent first `ip netns add`s race to set up
/// the /run/netns mount, and the loser's namespace files end up hidden.
pub(crate) fn netns_lock() -> Result<Flock<File>> {
    std::fs::create_dir_all(STATE_ROOT).map_err(|source| Error::Io {
        what: format!("creating {STATE_ROOT}"),
        source,
    })?;
    let path = Path::new(STATE_ROOT).join(".netns.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io {
            what: format!("opening {}", path.display()),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
        what: format!("locking {}", path.display()),
        source: e.into(),
    })
}

/// Writes a sysctl of the current thread's network namespace, e.g.
/// `net/ipv4/ip_forward`. Call inside [`in_netns`].
pub(crate) fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

/// Reads a sysctl of the current thread's network namespace.
pub(crate) fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key))
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_what_the_shell_would_split() {
        let mut c = Command::new("ip");
        c.args([
            "-n",
            "ntm-cn",
            "addr",
            "add",
            "1.2.3.4/24",
            "dev",
            "eth 0",
            "",
        ]);
        assert_eq!(
            describe(&c),
            r#"ip -n ntm-cn addr add 1.2.3.4/24 dev "eth 0" """#
        );
    }

    #[test]
    fn a_failing_command_reports_its_stderr() {
        let err = run(
            Command::new("sh").args(["-c", "echo out; echo boom >&2; exit 3"]),
            None,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("sh -c"), "{msg}");
        let ok = run(&mut Command::new("cat"), Some("fed\n")).unwrap();
        assert_eq!(ok, "fed\n");
    }

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let err = run(&mut Command::new("/nonexistent/ntm-tool"), None).unwrap_err();
        assert!(err.to_string().contains("cargo xtask setup"), "{err}");
    }
}
