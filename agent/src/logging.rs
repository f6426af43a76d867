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
/// only names, indexes and types; three lines per link at start on a 6.x kernel), and
/// `netlink_packet_core` about messages it only partly decodes. Their errors still show;
/// `RUST_LOG` naming them overrides this.
const QUIET: &[&str] = &["netlink_packet_route=error", "netlink_packet_core=error"];

/// The filter for the value `env` of `RUST_LOG`: `info` when empty (or invalid), and [`QUIET`]'s
/// libraries at error unless `env` names them.
pub fn filter(env: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(if env.trim().is_empty() { "info" } else { env })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    for quiet in QUIET {
        let target = quiet.split('=').next().unwrap_or(quiet);
        if !env.contains(target)
            && let Ok(d) = quiet.parse()
        {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`). Logs go to
/// stderr so `podflow tail` output on stdout stays clean.
pub fn init(format: LogFormat) {
    let env = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    let filter = filter(&env);
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    /// What a JSON subscriber with `filter(env)` writes for: the `IFLA_INET6_CONF` warning as
    /// netlink_packet_route logs it (a `log` record bridged into tracing keeps its module path
    /// as the target), an error of that crate, a warning of netlink_packet_core, and one of
    /// podflow's.
    fn lines(env: &str) -> Vec<String> {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = {
            let buf = Arc::clone(&buf);
            move || Writer(Arc::clone(&buf))
        };
        let subscriber = tracing_subscriber::registry()
            .with(filter(env))
            .with(fmt::layer().json().with_writer(writer));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                target: "netlink_packet_route::link::buffer_tool",
                "Specified IFLA_INET6_CONF NLA attribute holds more(most likely new kernel) data"
            );
            tracing::error!(target: "netlink_packet_route::link", "a real error");
            tracing::warn!(target: "netlink_packet_core::message", "core noise");
            tracing::warn!(target: "podflow::capture", "ours");
            tracing::debug!(target: "podflow::capture", "our debug");
        });
        let text = String::from_utf8(buf.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default();
        text.lines().map(String::from).collect()
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn has(lines: &[String], needle: &str) -> bool {
        lines.iter().any(|l| l.contains(needle))
    }

    #[test]
    fn netlink_library_noise_is_filtered_unless_asked_for() {
        for env in ["", "info", "debug", "podflow=debug"] {
            let l = lines(env);
            assert!(!has(&l, "IFLA_INET6_CONF"), "RUST_LOG={env:?}: {l:?}");
            assert!(!has(&l, "core noise"), "RUST_LOG={env:?}: {l:?}");
            assert!(has(&l, "a real error"), "RUST_LOG={env:?}: {l:?}");
            assert!(has(&l, "ours"), "RUST_LOG={env:?}: {l:?}");
        }
        assert!(has(&lines("debug"), "our debug"));
        // RUST_LOG naming the crate gets its warnings back.
        let l = lines("info,netlink_packet_route=warn");
        assert!(has(&l, "IFLA_INET6_CONF"), "{l:?}");
        assert!(!has(&l, "core noise"), "{l:?}");
    }
}
