//! A process started inside a testbed namespace, killed (with its whole
//! process group) when the guard is dropped.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::{Error, Result};

/// How long a child gets to exit after SIGTERM before it gets SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);

/// How much of a log a panicking test prints.
const LOG_TAIL: u64 = 8 * 1024;

/// A running program inside a testbed namespace, started by
/// [`crate::Testbed::spawn`]. Its stdout and stderr go to a log file in the
/// testbed's state directory. Dropping the guard sends SIGTERM to its
/// process group, then SIGKILL after [`GRACE`]; when the drop happens
/// during a panic, the log's tail is printed to stderr, so a failing test
/// shows what its daemons said.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    name: String,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Child {
    pub(crate) fn new(child: std::process::Child, name: String, log: PathBuf) -> Child {
        Child {
            child,
            name,
            log,
            exited: None,
        }
    }

    /// The process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// A short name: `role/program`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that collects its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().map_err(|source| Error::Io {
                what: format!("checking on {}", self.name),
                source,
            })?;
        }
        Ok(self.exited)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to its process group (e.g. SIGHUP to reload, SIGSTOP
    /// to freeze a DC in a test).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        killpg(Pid::from_raw(self.child.id() as i32), signal).map_err(|e| Error::Io {
            what: format!("sending {signal} to {}", self.name),
            source: e.into(),
        })
    }

    /// Stops it: SIGTERM to the process group, SIGKILL after `grace`.
    /// Returns its exit status; a program that exits cleanly on SIGTERM
    /// reports success or death by SIGTERM, depending on how it handles it.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            // Reaped earlier: its pid may be anyone's by now, signal nothing.
            return Ok(s);
        }
        // ESRCH only means the group is gone already.
        let _ = self.signal(Signal::SIGTERM);
        let status = match self.wait_timeout(grace)? {
            Some(s) => s,
            None => {
                tracing::warn!(child = %self.name, "did not exit on SIGTERM, killing");
                let _ = self.signal(Signal::SIGKILL);
                let s = self.child.wait().map_err(|source| Error::Io {
                    what: format!("waiting for {}", self.name),
                    source,
                })?;
                self.exited = Some(s);
                s
            }
        };
        self.reap_group();
        Ok(status)
    }

    /// Whatever the leader left behind in its group goes too.
    fn reap_group(&self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
    }

    fn print_log_tail(&self) {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(LOG_TAIL);
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(start)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            eprintln!(
                "----- {} ({}{}) -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                if start > 0 { ", tail" } else { "" },
                String::from_utf8_lossy(&buf).trim_end(),
                self.name
            );
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.stop(GRACE) {
            eprintln!("ntm-testbed: stopping {}: {e}", self.name);
        }
        if std::thread::panicking() {
            self.print_log_tail();
        }
    }
}
