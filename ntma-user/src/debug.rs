//! Fault injection for the tests, in debug builds only (`cfg(debug_assertions)`:
//! this module, its socket and `ntma debug` do not exist in a release build).
//!
//! Beside the status socket, the daemon listens on `<status socket>.debug`
//! (mode 0660). A client writes one line and reads one line back:
//!
//! * `panic-worker <queue>` → `ok`: datapath worker `<queue>` panics at its
//!   next frame, mid-burst ([`DatapathState::inject_panic`]), and its
//!   supervisor restarts it ([`crate::fastpath::supervise`]).
//!
//! Anything else gets `error: ...`.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fastpath::DatapathState;

/// Longest request line.
const MAX_LINE: u64 = 128;

/// The debug socket of the daemon whose status socket is `status`.
pub fn socket_path(status: &Path) -> PathBuf {
    let mut p = status.as_os_str().to_owned();
    p.push(".debug");
    PathBuf::from(p)
}

/// Binds the debug socket beside `status` and serves it on a task of the
/// current tokio runtime, which removes the file when it ends.
pub fn serve(status: &Path, state: Arc<DatapathState>) -> Result<()> {
    let path = socket_path(status);
    let std = ntm_ops::unix::bind(&path, "status_socket")?;
    let listener =
        tokio::net::UnixListener::from_std(std).context("cannot watch the debug socket")?;
    tracing::warn!(socket = %path.display(), "debug build: fault injection enabled");
    tokio::spawn(async move {
        let _file = ntm_ops::unix::SocketFile(path);
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut line = String::new();
            let mut limited = (&mut stream).take(MAX_LINE);
            let read = limited.read_to_string(&mut line);
            let answer = match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(Ok(_)) => answer(&state, line.trim()),
                _ => "error: no request line".to_owned(),
            };
            let _ = stream.write_all(format!("{answer}\n").as_bytes()).await;
        }
    });
    Ok(())
}

fn answer(state: &DatapathState, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["panic-worker", q] => match q.parse::<usize>() {
            Ok(q) => match state.inject_panic(q) {
                Ok(()) => {
                    tracing::warn!(queue = q, "debug: a worker panic was asked for");
                    "ok".to_owned()
                }
                Err(e) => format!("error: {e}"),
            },
            Err(_) => format!("error: bad queue {q:?}"),
        },
        _ => format!("error: unknown request {line:?} (known: panic-worker <queue>)"),
    }
}

/// Sends one request line to the debug socket beside `status`; the answer.
pub fn request(status: &Path, line: &str) -> Result<()> {
    let path = socket_path(status);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot connect to {} (is a debug build of ntma running with this configuration?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(line.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.take(MAX_LINE).read_to_string(&mut answer)?;
    match answer.trim() {
        "ok" => Ok(()),
        other => bail!("ntma answered: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_and_refused_with_a_reason() {
        let st = DatapathState::new(&crate::fastpath::DatapathStateConfig::default()).unwrap();
        assert_eq!(answer(&st, "panic-worker 0"), "ok");
        assert!(answer(&st, "panic-worker 3").contains("no worker 3"));
        assert!(answer(&st, "panic-worker x").contains("bad queue"));
        assert!(answer(&st, "reboot").contains("unknown request"));
        assert_eq!(
            socket_path(Path::new("/run/ntma/a.sock")),
            Path::new("/run/ntma/a.sock.debug")
        );
    }
}
