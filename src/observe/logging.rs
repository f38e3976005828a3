//! Diagnostics on stderr through `tracing`; `RUST_LOG` overrides the config's `log_level`.
//! (The access log, one line per connection, goes to stdout: see `access_log`.)

use tracing_subscriber::EnvFilter;

pub fn init(config_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
