//! Command-line front ends: `podflow tail`, `podflow status`, `podflow query` and `podflow
//! advise`.
//!
//! ```text
//! podflow tail                          # every buffered flow, then exit
//! podflow tail -f --protocol tcp        # new TCP flows as they come
//! podflow tail --last 20 --since 5m --ip 10.1.0.0/16 -o json
//! podflow tail --server 127.0.0.1:4245 -f
//! podflow tail --server https://collector:4246 --tls-ca ca.pem --tls-cert me.pem --tls-key me.key
//! ```
mod advise;
mod query;
mod status;

use std::{
    io::{self, Write as _},
    path::PathBuf,
    time::SystemTime,
};

use futures::StreamExt as _;
use thiserror::Error;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tonic::transport::{Channel, Endpoint, Uri};

pub use self::advise::{AdviseCommand, AdviseError, NetworkPolicyArgs, run_advise};
pub use self::query::{QueryArgs, QueryCliError, QueryOutput, run_query};
pub use self::status::{StatusArgs, run_status, status_json, status_text};
use crate::{
    filter::{CompiledFilter, FilterError},
    format,
    proto::{self, flow_service_client::FlowServiceClient},
    tls::TlsClientConfig,
};

/// `podflow tail`: show flows from an agent (or a collector), live with `-f`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Server: a unix socket path, unix:///path, or host:port / http://host:port /
    /// https://host:port for TCP (https, or host:port with --tls-ca: TLS).
    #[arg(long, default_value = crate::DEFAULT_SOCKET, value_parser = parse_server)]
    pub server: Server,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Keep printing new flows as they come (Ctrl-C to stop).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N buffered flows (default: all buffered ones; none with -f).
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
    /// Only flows that ended since then: a duration ago (30s, 5m, 2h, 1h30m) or an RFC 3339
    /// time (2026-11-23T13:05:01Z).
    #[arg(long, value_name = "WHEN", value_parser = parse_since_now)]
    pub since: Option<prost_types::Timestamp>,
    /// Source or destination IP address or CIDR prefix (repeatable: any of them).
    #[arg(long, value_name = "IP|CIDR")]
    pub ip: Vec<String>,
    /// Source IP address or CIDR prefix (repeatable).
    #[arg(long, value_name = "IP|CIDR")]
    pub src_ip: Vec<String>,
    /// Destination IP address or CIDR prefix (repeatable).
    #[arg(long, value_name = "IP|CIDR")]
    pub dst_ip: Vec<String>,
    /// Source or destination port (repeatable). For ICMP, the type or code.
    #[arg(long)]
    pub port: Vec<u16>,
    /// Source port (repeatable).
    #[arg(long)]
    pub src_port: Vec<u16>,
    /// Destination port (repeatable).
    #[arg(long)]
    pub dst_port: Vec<u16>,
    /// IP protocol: tcp, udp, icmp, icmpv6, sctp or a number (repeatable).
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Vec<u8>,
    /// Interface name (repeatable); matches flows seen on any of them.
    #[arg(long)]
    pub interface: Vec<String>,
    /// Kubernetes namespace of the source or destination (repeatable).
    #[arg(short = 'n', long)]
    pub namespace: Vec<String>,
    /// Pod of the source or destination, `name` or `namespace/name` (repeatable).
    #[arg(long)]
    pub pod: Vec<String>,
    /// Label of the source or destination pod, `key=value` or `key` (repeatable).
    #[arg(long)]
    pub label: Vec<String>,
    /// Workload of the source or destination, `name` or `Kind/name` (repeatable).
    #[arg(long)]
    pub workload: Vec<String>,
    /// Service the source or the destination was reached through (or is), `name` or
    /// `namespace/name` (repeatable).
    #[arg(long)]
    pub service: Vec<String>,
    /// Service the destination was reached through, `name` or `namespace/name` (repeatable).
    #[arg(long)]
    pub to_service: Vec<String>,
    /// Service the source was reached through (replies from a Service's backend), `name` or
    /// `namespace/name` (repeatable).
    #[arg(long)]
    pub from_service: Vec<String>,
    /// Flows with a DNS message for this name or a name under it (`example.com` matches
    /// `www.example.com`; case-insensitive; repeatable).
    #[arg(long)]
    pub dns_name: Vec<String>,
    /// TCP flows with a handshake at least this long (e.g. `10ms`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_rtt: Option<std::time::Duration>,
    /// Flows with packets the kernel dropped.
    #[arg(long)]
    pub dropped: bool,
    /// Only flows that went through WireGuard.
    #[arg(long, conflicts_with = "plaintext")]
    pub encrypted: bool,
    /// Only inter-node flows that did not go through WireGuard on a node that has it.
    #[arg(long)]
    pub plaintext: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Compact)]
    pub output: OutputFormat,
}

/// `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One readable line per event.
    Compact,
    /// One JSON object per line.
    Json,
}

/// TLS towards a TCP server (a collector is mTLS-only when deployed).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ClientTlsArgs {
    /// CA certificate (PEM) that signed the server's certificate: speak TLS to --server.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --tls-key).
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS (with --tls-cert).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    fn config(&self) -> Option<TlsClientConfig> {
        self.tls_ca.as_ref().map(|ca| TlsClientConfig {
            ca: ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            domain: self.tls_server_name.clone(),
        })
    }
}

/// Where `tail` connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Unix(PathBuf),
    /// `host:port` (an IPv6 host in brackets) and the scheme the address named, if any.
    Tcp {
        host_port: String,
        scheme: Option<Scheme>,
    },
}

/// The scheme of a TCP `--server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Error)]
pub enum TailError {
    #[error("invalid --server {value:?}: {reason}")]
    InvalidServer { value: String, reason: &'static str },
    #[error(
        "invalid --since {value:?}: expected a duration (30s, 5m, 2h) or an RFC 3339 time \
         (2026-11-23T13:05:01Z)"
    )]
    InvalidSince { value: String },
    #[error("invalid --protocol {value:?}: expected tcp, udp, icmp, icmpv6, sctp or 0-255")]
    InvalidProtocol { value: String },
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("{server} asks for TLS: give the CA that signed its certificate (--tls-ca)")]
    HttpsWithoutCa { server: String },
    #[error("{server} asks for plaintext but TLS options are given: use https:// or host:port")]
    TlsOnHttp { server: String },
    #[error("TLS options apply to a TCP server, not to the unix socket {server}")]
    TlsOnUnix { server: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("failed to connect to {server}")]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the request to the server failed: {}", crate::report::status_text(.status))]
    Rpc { status: tonic::Status },
    #[error("the request to the server failed ({hint}): {}", crate::report::status_text(.status))]
    RefusedAfterTls {
        status: tonic::Status,
        hint: &'static str,
    },
    #[error("failed to encode an event as json")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to write to stdout")]
    Stdout {
        #[source]
        source: io::Error,
    },
}

/// Runs `podflow tail`: prints one line per event to stdout, flushed per line. Ends when the
/// server ends the stream, on Ctrl-C, or when stdout is closed (`| head`).
pub async fn run_tail(args: TailArgs) -> Result<(), TailError> {
    let filter = proto::FlowFilter {
        ip: args.ip,
        src_ip: args.src_ip,
        dst_ip: args.dst_ip,
        port: args.port.into_iter().map(u32::from).collect(),
        src_port: args.src_port.into_iter().map(u32::from).collect(),
        dst_port: args.dst_port.into_iter().map(u32::from).collect(),
        protocol: args.protocol.into_iter().map(u32::from).collect(),
        interface: args.interface,
        namespace: args.namespace,
        pod: args.pod,
        label: args.label,
        workload: args.workload,
        encrypted: args.encrypted,
        plaintext: args.plaintext,
        service: args.service,
        to_service: args.to_service,
        from_service: args.from_service,
        dns_name: args.dns_name,
        min_rtt: args.min_rtt.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }),
        dropped: args.dropped,
    };
    // The server validates too; checking here gives the error before connecting.
    CompiledFilter::new(&filter)?;
    let request = proto::GetFlowsRequest {
        number: args.last.unwrap_or(0),
        follow: args.follow,
        since: args.since,
        filter: Some(filter),
    };
    let output = args.output;
    let work = async move {
        let mut client = FlowServiceClient::new(connect(&args.server, &args.tls).await?);
        let mut events = client
            .get_flows(request)
            .await
            .map_err(|status| rpc_error(status, &args.tls))?
            .into_inner();
        let mut stdout = io::stdout().lock();
        while let Some(event) = events.next().await {
            let event = event.map_err(|status| TailError::Rpc { status })?;
            let line = match output {
                OutputFormat::Compact => format::compact_line(&event),
                OutputFormat::Json => {
                    format::json_line(&event).map_err(|source| TailError::Json { source })?
                }
            };
            let Some(line) = line else { continue };
            match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(source) => return Err(TailError::Stdout { source }),
            }
        }
        Ok(())
    };
    tokio::select! {
        result = work => result,
        // Ctrl-C: a clean exit. If the handler cannot be installed, run until the stream ends.
        Ok(()) = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// A failed request; over TLS, a connection closed right after the handshake is explained.
fn rpc_error(status: tonic::Status, tls: &ClientTlsArgs) -> TailError {
    match crate::report::refused_after_tls_handshake(&status) {
        Some(hint) if tls.tls_ca.is_some() => TailError::RefusedAfterTls { status, hint },
        _ => TailError::Rpc { status },
    }
}

/// Opens a channel to `server`: plaintext, or TLS when `tls` names a CA (https:// needs one).
pub async fn connect(server: &Server, tls: &ClientTlsArgs) -> Result<Channel, TailError> {
    let tls = tls.config();
    match server {
        Server::Tcp { host_port, scheme } => {
            let use_tls = match (scheme, &tls) {
                (Some(Scheme::Https), None) => {
                    return Err(TailError::HttpsWithoutCa {
                        server: format!("https://{host_port}"),
                    });
                }
                (Some(Scheme::Http), Some(_)) => {
                    return Err(TailError::TlsOnHttp {
                        server: format!("http://{host_port}"),
                    });
                }
                (_, tls) => tls.is_some(),
            };
            let uri = format!("{}://{host_port}", if use_tls { "https" } else { "http" });
            let connect_error = |source| TailError::Connect {
                server: uri.clone(),
                source,
            };
            let mut endpoint = Endpoint::from_shared(uri.clone()).map_err(connect_error)?;
            if let Some(tls) = tls {
                endpoint = endpoint
                    .tls_config(tls.load()?.client_config())
                    .map_err(connect_error)?;
            }
            endpoint.connect().await.map_err(connect_error)
        }
        Server::Unix(path) => {
            if tls.is_some() {
                return Err(TailError::TlsOnUnix {
                    server: path.display().to_string(),
                });
            }
            crate::api::connect_unix(Endpoint::from_static("http://localhost"), path.clone())
                .await
                .map_err(|source| TailError::Connect {
                    server: path.display().to_string(),
                    source,
                })
        }
    }
}

/// Parses `--server`: a unix socket path (absolute, `./`/`../`-relative, or ending in `.sock`),
/// `unix:///path` (or `unix:path`), `http://host:port`, `https://host:port`, or `host:port`.
pub fn parse_server(value: &str) -> Result<Server, TailError> {
    let invalid = |reason| TailError::InvalidServer {
        value: value.to_owned(),
        reason,
    };
    if let Some(rest) = value.strip_prefix("unix:") {
        // unix:///run/x.sock (empty authority) and unix:/run/x.sock or unix:x.sock.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if rest.starts_with("//") && !path.starts_with('/') {
            return Err(invalid(
                "unix:// needs an absolute path, as in unix:///run/podflow/podflow.sock",
            ));
        }
        if path.is_empty() {
            return Err(invalid("missing socket path"));
        }
        return Ok(Server::Unix(PathBuf::from(path)));
    }
    if value.starts_with('/')
        || value.starts_with("./")
        || value.starts_with("../")
        || value.ends_with(".sock")
    {
        return Ok(Server::Unix(PathBuf::from(value)));
    }
    let (scheme, host_port) = if let Some(rest) = value.strip_prefix("https://") {
        (Some(Scheme::Https), rest)
    } else if let Some(rest) = value.strip_prefix("http://") {
        (Some(Scheme::Http), rest)
    } else {
        (None, value)
    };
    let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
    if host_port.contains("://") {
        return Err(invalid(
            "unsupported scheme: use unix://, http://, https:// or a socket path",
        ));
    }
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected a socket path or host:port"))?;
    let bracketed_v6 = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.is_empty() || (host.contains(':') && !bracketed_v6) || host.contains('/') {
        return Err(invalid(
            "expected a socket path or host:port (IPv6 as [addr]:port)",
        ));
    }
    port.parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?;
    format!("http://{host_port}")
        .parse::<Uri>()
        .map_err(|_| invalid("not a valid host:port"))?;
    Ok(Server::Tcp {
        host_port: host_port.to_owned(),
        scheme,
    })
}

/// Parses `--since` relative to `now`: a duration ago (`30s`, `5m`, `2h`, `1h30m`) or an RFC
/// 3339 time.
pub fn parse_since(value: &str, now: SystemTime) -> Result<prost_types::Timestamp, TailError> {
    let invalid = || TailError::InvalidSince {
        value: value.to_owned(),
    };
    let value_trimmed = value.trim();
    if let Ok(time) = OffsetDateTime::parse(value_trimmed, &Rfc3339) {
        let nanos = time.unix_timestamp_nanos();
        let seconds = i64::try_from(nanos.div_euclid(1_000_000_000)).map_err(|_| invalid())?;
        let nanos = i32::try_from(nanos.rem_euclid(1_000_000_000)).map_err(|_| invalid())?;
        return Ok(prost_types::Timestamp { seconds, nanos });
    }
    // Only durations that start with a digit: humantime would take "" as an error anyway, and
    // this keeps a mistyped date from being read as something else.
    if !value_trimmed.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let ago = humantime::parse_duration(value_trimmed).map_err(|_| invalid())?;
    let then = now.checked_sub(ago).ok_or_else(invalid)?;
    Ok(prost_types::Timestamp::from(then))
}

fn parse_since_now(value: &str) -> Result<prost_types::Timestamp, TailError> {
    parse_since(value, SystemTime::now())
}

/// Parses `--protocol`: a name (tcp, udp, icmp, icmpv6, sctp; any case) or a number 0-255.
pub fn parse_protocol(value: &str) -> Result<u8, TailError> {
    let number = match value.trim().to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" | "ipv6-icmp" => 58,
        "sctp" => 132,
        other => other
            .parse::<u8>()
            .map_err(|_| TailError::InvalidProtocol {
                value: value.to_owned(),
            })?,
    };
    Ok(number)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::*;

    #[test]
    fn server_forms() {
        let unix = |p: &str| Server::Unix(PathBuf::from(p));
        let tcp = |h: &str, scheme| Server::Tcp {
            host_port: h.to_owned(),
            scheme,
        };
        assert_eq!(
            parse_server("/run/podflow/podflow.sock").unwrap(),
            unix("/run/podflow/podflow.sock")
        );
        assert_eq!(
            parse_server("unix:///run/p.sock").unwrap(),
            unix("/run/p.sock")
        );
        assert_eq!(
            parse_server("unix:/run/p.sock").unwrap(),
            unix("/run/p.sock")
        );
        assert_eq!(parse_server("unix:rel/p.sock").unwrap(), unix("rel/p.sock"));
        assert_eq!(parse_server("./p.sock").unwrap(), unix("./p.sock"));
        assert_eq!(parse_server("p.sock").unwrap(), unix("p.sock"));
        assert_eq!(
            parse_server("127.0.0.1:4245").unwrap(),
            tcp("127.0.0.1:4245", None)
        );
        assert_eq!(
            parse_server("http://127.0.0.1:4245").unwrap(),
            tcp("127.0.0.1:4245", Some(Scheme::Http))
        );
        assert_eq!(
            parse_server("http://agent.local:4245/").unwrap(),
            tcp("agent.local:4245", Some(Scheme::Http))
        );
        assert_eq!(
            parse_server("https://collector.podflow:4246").unwrap(),
            tcp("collector.podflow:4246", Some(Scheme::Https))
        );
        assert_eq!(
            parse_server("localhost:4245").unwrap(),
            tcp("localhost:4245", None)
        );
        assert_eq!(parse_server("[::1]:4245").unwrap(), tcp("[::1]:4245", None));
        for bad in [
            "",
            "localhost",
            "localhost:0",
            "localhost:99999",
            "::1:4245",
            "https://a",
            "grpc://a:1",
            "unix://",
            "unix://relative.sock",
            ":4245",
        ] {
            assert!(parse_server(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_server("localhost").unwrap_err().to_string(),
            "invalid --server \"localhost\": expected a socket path or host:port"
        );
    }

    #[test]
    fn since_forms() {
        // 2026-11-23T13:05:01Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_439_101);
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(parse_since("30s", now).unwrap(), at(1_795_439_071, 0));
        assert_eq!(parse_since("5m", now).unwrap(), at(1_795_438_801, 0));
        assert_eq!(parse_since("2h", now).unwrap(), at(1_795_431_901, 0));
        assert_eq!(parse_since("1h30m", now).unwrap(), at(1_795_433_701, 0));
        assert_eq!(
            parse_since("1.5s", now).unwrap(),
            at(1_795_439_099, 500_000_000)
        );
        assert_eq!(
            parse_since("2026-11-23T13:05:01.25Z", now).unwrap(),
            at(1_795_439_101, 250_000_000)
        );
        assert_eq!(
            parse_since("2026-11-23T14:05:01+01:00", now).unwrap(),
            at(1_795_439_101, 0)
        );
        assert_eq!(
            parse_since("1969-12-31T23:59:59.5Z", now).unwrap(),
            at(-1, 500_000_000)
        );
        for bad in ["", "5", "soon", "-5m", "2026-11-23", "5 parsecs"] {
            assert!(parse_since(bad, now).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_since("soon", now).unwrap_err().to_string(),
            "invalid --since \"soon\": expected a duration (30s, 5m, 2h) or an RFC 3339 time \
             (2026-11-23T13:05:01Z)"
        );
    }

    #[test]
    fn protocol_forms() {
        assert_eq!(parse_protocol("tcp").unwrap(), 6);
        assert_eq!(parse_protocol("TCP").unwrap(), 6);
        assert_eq!(parse_protocol("Udp").unwrap(), 17);
        assert_eq!(parse_protocol("icmp").unwrap(), 1);
        assert_eq!(parse_protocol("ICMPv6").unwrap(), 58);
        assert_eq!(parse_protocol("sctp").unwrap(), 132);
        assert_eq!(parse_protocol("47").unwrap(), 47);
        assert_eq!(parse_protocol("0").unwrap(), 0);
        assert_eq!(parse_protocol("255").unwrap(), 255);
        for bad in ["256", "-1", "gre", ""] {
            assert!(parse_protocol(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        tail: TailArgs,
    }

    #[test]
    fn flags_read_like_hubble_observe() {
        let cli = Cli::try_parse_from([
            "tail",
            "-f",
            "--last",
            "20",
            "--ip",
            "10.0.0.0/8",
            "--ip",
            "fd00::/8",
            "--dst-port",
            "80",
            "--protocol",
            "tcp",
            "--protocol",
            "UDP",
            "--interface",
            "eth0",
            "-o",
            "json",
        ])
        .unwrap();
        let args = cli.tail;
        assert!(args.follow);
        assert_eq!(args.last, Some(20));
        assert_eq!(args.ip, ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(args.dst_port, [80]);
        assert_eq!(args.protocol, [6, 17]);
        assert_eq!(args.interface, ["eth0"]);
        assert_eq!(args.output, OutputFormat::Json);
        assert_eq!(
            args.server,
            Server::Unix(PathBuf::from(crate::DEFAULT_SOCKET))
        );
        let defaults = Cli::try_parse_from(["tail"]).unwrap().tail;
        assert_eq!(
            (defaults.follow, defaults.last, defaults.output),
            (false, None, OutputFormat::Compact)
        );
        assert!(Cli::try_parse_from(["tail", "--port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["tail", "--since", "later"]).is_err());
    }
}
