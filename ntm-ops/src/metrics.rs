//! Metrics: a [`Scrape`] is built from a daemon's status snapshot each time
//! it is scraped (nothing is counted twice, nothing runs on a fast path),
//! with `prometheus-client`, and served by a tiny HTTP/1.1 responder
//! ([`respond`]) on `metrics.listen`: `GET /metrics` answers OpenMetrics
//! text to a client that asks for it (Prometheus does), the Prometheus text
//! format 0.0.4 to everyone else (curl, `promtool check metrics`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Metric;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A label set: (name, value) pairs.
pub type Labels = Vec<(String, String)>;

/// Most tunnels labelled one by one unless `metrics.max_tunnel_labels` says otherwise.
pub const DEFAULT_MAX_TUNNEL_LABELS: usize = 1000;
/// The peer label of the tunnels beyond the cap, summed.
pub const OTHER_PEERS: &str = "_other";

/// `[metrics]` in every daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics` (HTTP); none: no metrics endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Most tunnels labelled by peer; the rest are summed under the peer
    /// label `_other` (so that a scrape stays small however many tunnels).
    #[serde(default = "default_max_tunnel_labels")]
    pub max_tunnel_labels: usize,
}

fn default_max_tunnel_labels() -> usize {
    DEFAULT_MAX_TUNNEL_LABELS
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            max_tunnel_labels: DEFAULT_MAX_TUNNEL_LABELS,
        }
    }
}

impl MetricsConfig {
    /// Whether the default: the `[metrics]` table can be left out of a file.
    pub fn is_default(&self) -> bool {
        *self == MetricsConfig::default()
    }
}

/// Tunnel-setup latency buckets, in seconds: 0.5 ms to about 8 s.
pub fn setup_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 15)
}

/// A set-up latency histogram (kept by the daemon, observed off the fast path).
pub fn setup_histogram() -> Histogram {
    Histogram::new(setup_buckets())
}

/// Set-up latency histograms by label set (the daemon keeps one; a
/// scrape registers a handle to it).
pub type SetupHistograms = Family<Labels, Histogram, fn() -> Histogram>;

/// An empty [`SetupHistograms`].
pub fn setup_histograms() -> SetupHistograms {
    Family::new_with_constructor(setup_histogram as fn() -> Histogram)
}

/// Labels from pairs of string slices.
pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// One scrape's metrics.
#[derive(Debug, Default)]
pub struct Scrape {
    registry: Registry,
}

impl Scrape {
    /// An empty scrape.
    pub fn new() -> Scrape {
        Scrape::default()
    }

    /// A counter without labels (`name` without `_total`: it is added).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help_text(help), c);
    }

    /// A counter family: one series per label set.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let f: Family<Labels, Counter> = Family::default();
        for (l, v) in series {
            f.get_or_create(&l).inc_by(v);
        }
        self.registry.register(name, help_text(help), f);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(value);
        self.registry.register(name, help_text(help), g);
    }

    /// A gauge family.
    pub fn gauges(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        let f: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
        for (l, v) in series {
            f.get_or_create(&l).set(v);
        }
        self.registry.register(name, help_text(help), f);
    }

    /// A gauge family by state: one series `{state="…"}` per entry (how
    /// many things are in each state).
    pub fn states<const N: usize>(&mut self, name: &str, help: &str, states: [(&str, usize); N]) {
        let series = states.map(|(state, n)| (labels([("state", state)]), n as f64));
        self.gauges(name, help, series);
    }

    /// A counter family from a status' `name → count` map, one series per
    /// entry with the name as `label` (drops by `reason`, events by `event`).
    pub fn counters_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        counts: impl IntoIterator<Item = (&'a String, &'a u64)>,
    ) {
        let series = counts.into_iter().map(|(k, n)| (labels([(label, k)]), *n));
        self.counters(name, help, series);
    }

    /// A metric the daemon keeps itself (a histogram, a histogram family).
    pub fn metric(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.registry.register(name, help_text(help), metric);
    }

    /// OpenMetrics text (`application/openmetrics-text; version=1.0.0`).
    pub fn openmetrics(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }

    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    pub fn text(&self) -> String {
        to_prometheus_text(&self.openmetrics())
    }
}

/// prometheus-client ends every help text with a full stop: one is enough.
fn help_text(help: &str) -> &str {
    help.trim_end_matches('.')
}

/// Turns OpenMetrics text into the Prometheus text format 0.0.4: a
/// counter family `x` is `x_total` in its HELP and TYPE lines, and the
/// UNIT lines and the closing `# EOF` go.
pub fn to_prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Binds `metrics.listen`.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on metrics.listen = {addr}: is the address on this host and the port free?")
    })
}

/// The next connection on the metrics listener (never, without one): a
/// `select!` arm.
pub async fn accept(l: &Option<TcpListener>) -> std::io::Result<TcpStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Largest request head read.
const MAX_REQUEST: usize = 8192;

/// Answers one HTTP request on `stream` with `scrape` (rendered after the
/// request says which format), in a task of its own; a slow or broken
/// client costs the daemon nothing.
pub fn respond(stream: TcpStream, scrape: Scrape) {
    tokio::spawn(async move {
        let r = tokio::time::timeout(Duration::from_secs(10), serve(stream, scrape)).await;
        if let Ok(Err(e)) = r {
            tracing::debug!(error = %e, "metrics request failed");
        }
    });
}

async fn serve(mut stream: TcpStream, scrape: Scrape) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let (status, ctype, body) = answer(&text, &scrape);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The status line, content type and body for a request head.
fn answer(head: &str, scrape: &Scrape) -> (&'static str, &'static str, String) {
    let mut lines = head.lines();
    let request = lines.next().unwrap_or("");
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let plain = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", plain, "GET /metrics\n".into());
    }
    if path != "/metrics" && path != "/" {
        return ("404 Not Found", plain, "metrics are at /metrics\n".into());
    }
    let openmetrics = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("accept:") && l.contains("application/openmetrics-text")
    });
    if openmetrics {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            scrape.openmetrics(),
        )
    } else {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            scrape.text(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Scrape {
        let mut s = Scrape::new();
        s.counter("demo_datagrams", "Datagrams handled.", 7);
        s.counters(
            "demo_drops",
            "Drops by reason.",
            [
                (labels([("reason", "bad_tag")]), 2),
                (labels([("reason", "replay")]), 0),
            ],
        );
        s.gauge("demo_registered", "Registered (1) or not (0).", 1.0);
        let h = setup_histogram();
        h.observe(0.003);
        s.metric("demo_setup_seconds", "Set-up latency.", h);
        s
    }

    #[test]
    fn openmetrics_and_text_formats() {
        let s = sample();
        let om = s.openmetrics();
        assert!(om.contains("# TYPE demo_drops counter"), "{om}");
        assert!(
            om.contains("demo_drops_total{reason=\"bad_tag\"} 2"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = s.text();
        assert!(text.contains("# TYPE demo_drops_total counter"), "{text}");
        assert!(
            text.contains("# HELP demo_datagrams_total Datagrams handled."),
            "{text}"
        );
        assert!(
            text.contains("demo_drops_total{reason=\"replay\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE demo_setup_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("demo_setup_seconds_bucket{le=\"0.004\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn http_answers_by_path_method_and_accept() {
        let s = sample();
        let (st, ct, body) = answer("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &s);
        assert_eq!(st, "200 OK");
        assert!(ct.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("demo_drops_total"));
        let (_, ct, body) = answer(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
            &s,
        );
        assert!(ct.starts_with("application/openmetrics-text"));
        assert!(body.ends_with("# EOF\n"));
        assert_eq!(answer("GET /nope HTTP/1.1\r\n\r\n", &s).0, "404 Not Found");
        assert_eq!(
            answer("POST /metrics HTTP/1.1\r\n\r\n", &s).0,
            "405 Method Not Allowed"
        );
    }

    #[test]
    fn served_over_tcp() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = Some(bind("127.0.0.1:0".parse().unwrap()).await.unwrap());
            let addr = l.as_ref().unwrap().local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                    .await
                    .unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).await.unwrap();
                out
            });
            let stream = accept(&l).await.unwrap();
            respond(stream, sample());
            let out = client.await.unwrap();
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            assert!(out.contains("demo_datagrams_total 7"), "{out}");
        });
    }

    #[test]
    fn config_defaults_and_toml() {
        let c: MetricsConfig = toml_like("listen = \"127.0.0.1:9100\"");
        assert_eq!(c.listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.max_tunnel_labels, DEFAULT_MAX_TUNNEL_LABELS);
        assert!(MetricsConfig::default().is_default());
    }

    fn toml_like(s: &str) -> MetricsConfig {
        // serde_json stands in for TOML here: the same derive.
        let (k, v) = s.split_once(" = ").unwrap();
        serde_json::from_str(&format!("{{\"{k}\": {v}}}")).unwrap()
    }
}
