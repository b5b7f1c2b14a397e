//! What the daemon does for operators besides forwarding: the metrics
//! endpoint, SIGHUP reloads and systemd's watchdog (the daemon's handlers
//! call in here).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::sockets::{check_upstream, Sockets};
use crate::config::{Config, Settings};
use crate::control::Control;
use crate::status::Status;

/// The operators' side of the running daemon.
pub(super) struct Ops {
    /// The configuration file, read again on SIGHUP.
    config: Option<PathBuf>,
    /// The settings in force (changed by reloads).
    current: Settings,
    /// `metrics.listen`.
    pub(super) metrics: Option<TcpListener>,
    /// systemd's watchdog pings.
    pub(super) watchdog: Option<tokio::time::Interval>,
    /// SIGHUP.
    pub(super) hup: Signal,
    /// Reloads applied and refused.
    reloads: u64,
    refused: u64,
}

impl Ops {
    pub(super) async fn new(s: &Settings, config: Option<PathBuf>) -> Result<Ops> {
        let metrics = match s.metrics.listen {
            Some(addr) => Some(ntm_ops::metrics::bind(addr).await?),
            None => None,
        };
        Ok(Ops {
            config,
            current: s.clone(),
            metrics,
            watchdog: ntm_ops::notify::watchdog_timer(),
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
            reloads: 0,
            refused: 0,
        })
    }

    /// The statistics interval in force.
    pub(super) fn stats_every(&self) -> Option<Duration> {
        self.current.stats_interval
    }

    /// Adds the reload counters to a status.
    pub(super) fn annotate(&self, st: &mut Status) {
        st.slow_path.stats.insert("reloads".into(), self.reloads);
        st.slow_path
            .stats
            .insert("reloads_refused".into(), self.refused);
    }

    /// Answers a scrape with the metrics of `st`.
    pub(super) fn scrape(&self, stream: TcpStream, st: &Status, ctl: &Control) {
        let m = crate::metrics::scrape(
            st,
            ctl.setup_histograms(),
            self.current.metrics.max_tunnel_labels,
        );
        ntm_ops::metrics::respond(stream, m);
    }

    /// SIGHUP: reads the configuration again and applies what may change
    /// ([`crate::reload`]); logs what it did or why it refused. Returns
    /// whether the statistics interval changed.
    pub(super) fn reload(&mut self, ctl: &mut Control, io: &Sockets) -> bool {
        ntm_ops::notify::reloading();
        let r = self.try_reload(ctl, io);
        let stats_changed = match r {
            Ok((plan, stats_changed)) => {
                self.reloads += 1;
                tracing::info!("configuration reloaded: {plan}");
                stats_changed
            }
            Err(e) => {
                self.refused += 1;
                tracing::error!("reload refused, running on unchanged: {e:#}");
                false
            }
        };
        ntm_ops::notify::ready(&format!("serving {} GN(s)", ctl.endpoints().count()));
        stats_changed
    }

    fn try_reload(
        &mut self,
        ctl: &mut Control,
        io: &Sockets,
    ) -> Result<(crate::reload::Plan, bool)> {
        let path = self
            .config
            .clone()
            .context("the daemon was started without a configuration file")?;
        let config = Config::load(&path).context("bad configuration")?;
        if config.holds_inline_key() {
            ntm_ops::keys::check_private(&path)?;
        }
        let mut new = config.validate().context("bad configuration")?;
        if new.wan_mtu.is_none() {
            // The interface's MTU as read at start (a new one needs a restart).
            new.set_uplink_mtu(self.current.uplink_mtu)
                .context("bad configuration")?;
        }
        let plan = crate::reload::plan(&self.current, &new).map_err(anyhow::Error::msg)?;
        if plan.upstream {
            // Refused before anything changes.
            check_upstream(new.upstream).context("dns.upstream")?;
        }
        ctl.reload(
            Instant::now(),
            &new,
            plan,
            super::unix_nanos()?,
            super::random_seed()?,
            io,
        )
        .map_err(anyhow::Error::msg)?;
        if plan.upstream {
            // New queries, UDP and TCP, go there; those in flight keep their
            // socket or connection to the old one and end as they would have.
            let old = io.resolver.replace(new.upstream);
            tracing::info!(%old, new = %new.upstream, "upstream resolver changed");
        }
        self.current = new;
        Ok((plan, plan.stats))
    }
}
