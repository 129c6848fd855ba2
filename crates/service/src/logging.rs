//! Logging: `tracing` to stderr (journald adds the timestamps and the unit), colours only
//! on a terminal, the filter from `RUST_LOG` (default `info`).

/// Installs the process's global subscriber. Call once, first thing in `main`.
pub fn init_tracing() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter(std::env::var("RUST_LOG").ok().as_deref()))
        .init();
}

/// The filter `RUST_LOG` asks for, or `info` when it is unset or does not parse.
fn filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    rust_log
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"))
}

#[cfg(test)]
mod tests {
    use super::filter;

    #[test]
    fn filter_defaults_to_info() {
        assert_eq!(filter(None).to_string(), "info");
        assert_eq!(
            filter(Some("debug,hyper=warn")).to_string(),
            "hyper=warn,debug"
        );
        // a typo in RUST_LOG must not silence the service
        assert_eq!(filter(Some("gateway=[")).to_string(), "info");
    }
}
