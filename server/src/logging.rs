//! The server's logs (SPEC §11.1 `log_level`, §11.6): `tracing` events to stderr as text or JSON
//! lines, filtered by `log_level` or, when set, `RUST_LOG`; beside them the event log's layer
//! (`ledger_shard::events`), which records events whatever the level.

use crate::config::LogFormat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Installs the process's subscriber. `level` was checked by `Config::check`; of a `RUST_LOG`
/// only the directives that parse are used.
pub fn init(level: &str, format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder().parse_lossy(directives),
        // openraft logs every election and membership step at info: quiet below warn unless the
        // directives name it.
        _ if level.contains("openraft") => EnvFilter::builder().parse_lossy(level),
        _ => EnvFilter::builder().parse_lossy(format!("{level},openraft=warn")),
    };
    let stderr: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false).boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The level filter belongs to the stderr layer alone, so that it neither hides events from
    // the event log nor enables callsites for it (the event layer filters on its own target).
    let stderr = stderr.with_filter(filter);
    let installed =
        tracing_subscriber::registry().with(stderr).with(ledger_shard::events::layer()).try_init();
    if let Err(e) = installed {
        eprintln!("ledger-server: logging not set up: {e}");
    }
}
