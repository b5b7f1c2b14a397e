//! Status sockets: every daemon answers `<daemon> status` on a Unix socket
//! with one JSON document per connection. The socket is mode 0660 whatever
//! the umask (the daemon's user and group, e.g. an `ntm` operators' group,
//! may ask; nobody else), and a file left by a daemon that died is replaced.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// The mode of every status socket.
pub const SOCKET_MODE: u32 = 0o660;
/// Largest status document a client accepts.
pub const MAX_STATUS: u64 = 16 << 20;

/// Binds a status socket at `path` (creating its directory), mode 0660,
/// replacing a stale socket file; non-blocking, for tokio's
/// `UnixListener::from_std`. `setting` names the configuration key that
/// moves it, for the error messages.
pub fn bind(path: &Path, setting: &str) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} for the status socket", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another daemon answers on {}: stop it, or give this one another {setting}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // bind(2) applies the umask, and the mode must not depend on it: bind
    // under a temporary name, set the mode, then rename into place, so that
    // the socket never appears at `path` with another mode.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).with_context(|| {
        format!(
            "cannot bind the status socket {} (set {setting})",
            path.display()
        )
    })?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| {
            format!(
                "cannot put the status socket in place at {} (mode 0660)",
                path.display()
            )
        })?;
    l.set_nonblocking(true)
        .context("cannot make the status socket non-blocking")?;
    Ok(l)
}

/// Removes the socket file when dropped (the daemon's status socket).
#[derive(Debug)]
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Connects to a status socket and reads its one document. `daemon` names
/// the daemon in the error (`ntm-dc`, …).
pub fn query(path: &Path, daemon: &str) -> Result<String> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to {}: is {daemon} running with this configuration, and are you in its group (the socket is mode 0660)?",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    (&mut stream)
        .take(MAX_STATUS)
        .read_to_string(&mut text)
        .with_context(|| format!("bad answer from {}", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{umask, Mode};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sockets_are_0660_whatever_the_umask_and_stale_files_go() {
        let dir = std::env::temp_dir().join(format!("ntm-ops-unix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("d.sock");
        for mask in [0o077, 0o000, 0o022] {
            let old = umask(Mode::from_bits_truncate(mask));
            let l = bind(&path, "status_socket");
            umask(old);
            let l = l.unwrap();
            let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o660, "umask {mask:03o}");
            // A live daemon is never replaced.
            let e = bind(&path, "status_socket").unwrap_err().to_string();
            assert!(e.contains("another daemon answers"), "{e}");
            // Once it is gone, its file is stale and replaced.
            drop(l);
        }
        let e = query(&dir.join("none.sock"), "ntm-dc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is ntm-dc running"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn query_reads_the_document() {
        let dir = std::env::temp_dir().join(format!("ntm-ops-query-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("q.sock");
        let l = bind(&path, "status_socket").unwrap();
        l.set_nonblocking(false).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            std::io::Write::write_all(&mut s, b"{\"ok\":true}").unwrap();
        });
        let guard = SocketFile(path.clone());
        assert_eq!(query(&path, "x").unwrap(), "{\"ok\":true}");
        t.join().unwrap();
        drop(guard);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
