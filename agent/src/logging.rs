//! Logs with `tracing`, to stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber: `RUST_LOG` if set, else `default_filter`. Raft's own
/// chatter stays at `warn` unless the filter names `openraft` or asks for more detail.
pub fn init(default_filter: &str) {
    let quiet_raft = !default_filter.contains("openraft")
        && !default_filter.contains("debug")
        && !default_filter.contains("trace");
    let default_filter = if quiet_raft {
        format!("{default_filter},openraft=warn")
    } else {
        default_filter.to_string()
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
