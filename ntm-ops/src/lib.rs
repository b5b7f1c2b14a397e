//! What every NTMobile daemon (`ntma`, `ntm-dc`, `ntm-rs`, `ntm-node`) needs
//! to be operated like a production gateway, in one place:
//!
//! | module | what |
//! |---|---|
//! | [`netdev`] | the kernel's counters of a network device (sysfs, or `/proc/self/net/dev` from another namespace) |
//! | [`metrics`] | a scrape of OpenMetrics built from a status snapshot with `prometheus-client`, a Prometheus text rendering, a tiny HTTP responder for `GET /metrics` |
//! | [`config`] | configuration files: read, parsed, key files read relative to them, checked, written back; shared checks of settings |
//! | [`keys`] | `key_file`: reading a key from a file, refusing key files and configs readable by group or others (with the `chmod` that fixes it), new random keys |
//! | [`unix`] | status sockets: bound mode 0660 whatever the umask, replacing a stale file; the client side |
//! | [`notify`] | systemd `Type=notify`: READY, RELOADING, STOPPING, STATUS and watchdog pings |
//! | [`logging`] | `--log-format text|json` (tracing-subscriber's JSON layer) |
//! | [`man`] | `--print-man`: a man page from the clap definition (clap_mangen) |
//! | [`server`] | the tokio driver of a UDP server's state machine (the DC, the RS): status socket, metrics, systemd, signals |
//! | [`cli`] | what the daemons' command lines share: `--print-man`, the one-line error exit, `status` arguments and printing |
//! | `test_util` | (feature `test-util`) what the daemons' command-line tests share |
//!
//! Nothing here runs on a fast path: the daemons build their metrics from
//! the same snapshots as their status, at scrape time.

pub mod cli;
pub mod config;
pub mod keys;
pub mod logging;
pub mod man;
pub mod metrics;
pub mod netdev;
pub mod notify;
pub mod server;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod unix;
