//! systemd `Type=notify`: READY=1 once a daemon serves, RELOADING=1 and
//! READY=1 around a SIGHUP reload, STOPPING=1, a STATUS= line, and
//! WATCHDOG=1 pings at half the unit's `WatchdogSec=`. Without systemd
//! (no NOTIFY_SOCKET) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// READY=1 with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// RELOADING=1 (with MONOTONIC_USEC, as `Type=notify-reload` wants).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// STOPPING=1.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// STATUS=<line>.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// WATCHDOG=1.
pub fn ping() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WatchdogSec=`, or `None` when
/// the unit has no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| (d / 2).max(Duration::from_millis(100)))
}

/// A tokio interval for the watchdog pings, if the unit wants them.
pub fn watchdog_timer() -> Option<tokio::time::Interval> {
    watchdog_interval().map(|every| {
        let mut i = tokio::time::interval(every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    })
}

/// The next tick of `timer` (never, without one): a `select!` arm that pings.
pub async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
