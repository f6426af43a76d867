//! tracing setup: human-readable logs on a terminal, JSON lines otherwise (the DaemonSet), and
//! aya-log's `log` records bridged into tracing.
use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Libraries whose warnings are not about podflow: `netlink_packet_route` warns, per link and per
/// re-sync, that a newer kernel's `IFLA_INET6_CONF` holds more than it decodes (podflow reads
/// only names, indexes and types). Their errors still show; `RUST_LOG` naming them overrides this.
const QUIET: &[&str] = &["netlink_packet_route=error"];

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`). Logs go to
/// stderr so `podflow tail` output on stdout stays clean.
pub fn init(format: LogFormat) {
    let env = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    let mut filter = EnvFilter::try_new(if env.trim().is_empty() { "info" } else { &env })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    for quiet in QUIET {
        let target = quiet.split('=').next().unwrap_or(quiet);
        if !env.contains(target)
            && let Ok(d) = quiet.parse()
        {
            filter = filter.add_directive(d);
        }
    }
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    // `try_init` also installs tracing-log's LogTracer, so aya-log (and any other `log` user)
    // ends up in tracing. Errors mean a subscriber is already set (tests): keep that one.
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    // Colours only on a terminal: not as escape codes in a file or `kubectl logs`.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
}
