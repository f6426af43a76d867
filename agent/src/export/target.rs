//! Where the collector is: a unix socket, or TCP with or without TLS (plaintext only to loopback
//! unless `insecure`).
use std::{net::IpAddr, path::PathBuf};

use tonic::transport::Uri;

use super::{ExportError, ExporterConfig};

/// Where the collector is.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Unix(PathBuf),
    Tcp { uri: String },
}

impl Target {
    pub(super) fn parse(cfg: &ExporterConfig) -> Result<Target, ExportError> {
        let value = cfg.collector.trim();
        let invalid = |reason| ExportError::InvalidCollector {
            value: cfg.collector.clone(),
            reason,
        };
        if let Some(rest) = value.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid("missing socket path"));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if value.starts_with('/') {
            return Ok(Target::Unix(PathBuf::from(value)));
        }
        let (scheme_tls, host_port) = if let Some(rest) = value.strip_prefix("https://") {
            (Some(true), rest)
        } else if let Some(rest) = value.strip_prefix("http://") {
            (Some(false), rest)
        } else if value.contains("://") {
            return Err(invalid(
                "unsupported scheme: use http://, https:// or unix://",
            ));
        } else {
            (None, value)
        };
        let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
        let (host, port) = host_port
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected host:port"))?;
        if host.is_empty() || port.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
            return Err(invalid("expected host:port with a port from 1 to 65535"));
        }
        let tls = match (scheme_tls, &cfg.tls) {
            (Some(true), None) => {
                return Err(ExportError::TlsWithoutCa {
                    collector: cfg.collector.clone(),
                });
            }
            (Some(false), Some(_)) => {
                return Err(invalid(
                    "http:// with TLS configured: use https:// or host:port",
                ));
            }
            (_, tls) => tls.is_some(),
        };
        if !tls && !cfg.insecure && !is_loopback(host) {
            return Err(ExportError::PlaintextRefused {
                collector: cfg.collector.clone(),
            });
        }
        let scheme = if tls { "https" } else { "http" };
        let uri = format!("{scheme}://{host_port}");
        uri.parse::<Uri>()
            .map_err(|_| invalid("not a valid host:port"))?;
        Ok(Target::Tcp { uri })
    }
}

/// `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(collector: &str, insecure: bool) -> Result<Target, ExportError> {
        let mut cfg = ExporterConfig::new(collector, "n");
        cfg.insecure = insecure;
        Target::parse(&cfg)
    }

    #[test]
    fn plaintext_only_on_loopback_unix_or_insecure() {
        assert!(matches!(
            target("127.0.0.1:4246", false),
            Ok(Target::Tcp { .. })
        ));
        assert!(matches!(
            target("http://[::1]:4246", false),
            Ok(Target::Tcp { .. })
        ));
        assert!(matches!(
            target("localhost:4246", false),
            Ok(Target::Tcp { .. })
        ));
        assert!(matches!(
            target("unix:///run/c.sock", false),
            Ok(Target::Unix(_))
        ));
        assert!(matches!(target("/run/c.sock", false), Ok(Target::Unix(_))));
        let err = target("collector.podflow:4246", false).unwrap_err();
        assert!(matches!(err, ExportError::PlaintextRefused { .. }), "{err}");
        assert!(err.to_string().contains("--insecure"));
        assert!(matches!(
            target("10.0.0.1:4246", true),
            Ok(Target::Tcp { .. })
        ));
        assert!(matches!(
            target("https://c:1", false),
            Err(ExportError::TlsWithoutCa { .. })
        ));
        assert!(target("c", true).is_err());
        assert!(target("grpc://c:1", true).is_err());
    }
}
