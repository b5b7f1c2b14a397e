//! What every NTMobile daemon (`ntma`, `ntm-dc`, `ntm-rs`, `ntm-node`) needs
//! to be operated like a production gateway, in one place:
//!
//! | module | what |
//! |---|---|
//! | [`metrics`] | a scrape of OpenMetrics built from a status snapshot with `prometheus-client`, a Prometheus text rendering, a tiny HTTP responder for `GET /metrics` |
//! | [`keys`] | `key_file`: reading a key from a file, refusing key files and configs readable by group or others (with the `chmod` that fixes it), new random keys |
//! | [`unix`] | status sockets: bound mode 0660 whatever the umask, replacing a stale file; the client side |
//! | [`notify`] | systemd `Type=notify`: READY, RELOADING, STOPPING, STATUS and watchdog pings |
//! | [`logging`] | `--log-format text|json` (tracing-subscriber's JSON layer) |
//! | [`man`] | `--print-man`: a man page from the clap definition (clap_mangen) |
//! | [`cli`] | what the daemons' command lines share: `--print-man`, the one-line error exit, `status` arguments and printing |
//!
//! Nothing here runs on a fast path: the daemons build their metrics from
//! the same snapshots as their status, at scrape time.

pub mod cli;
pub mod keys;
pub mod logging;
pub mod man;
pub mod metrics;
pub mod notify;
pub mod unix;
