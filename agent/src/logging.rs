//! Logs with `tracing`, to stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber: `RUST_LOG` if set, else `default_filter`. The chatter of
/// Raft and of the DNS server stays at `warn` unless the filter names them or asks for
/// more detail.
pub fn init(default_filter: &str) {
    let detailed = default_filter.contains("debug") || default_filter.contains("trace");
    let mut filter_text = default_filter.to_string();
    for noisy in ["openraft", "hickory_server", "hickory_net", "hickory_proto"] {
        if !detailed && !default_filter.contains(noisy) {
            filter_text.push_str(&format!(",{noisy}=warn"));
        }
    }
    let default_filter = filter_text;
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
