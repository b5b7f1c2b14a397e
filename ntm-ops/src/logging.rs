//! `--log-format text|json`: every daemon logs to stderr through tracing;
//! `json` gives one JSON object per line (tracing-subscriber's JSON layer),
//! for journald or a log shipper.

use std::io::IsTerminal;

/// The log format chosen on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields, message.
    Json,
}

/// Installs the global subscriber: stderr, filtered by RUST_LOG (default
/// `default_filter`, e.g. "info"), in `format`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // Plain text in log files, so that they can be searched.
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
