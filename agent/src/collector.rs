//! `podflow collector`: receives the agents' export streams, keeps a bounded window of recent
//! events, serves the same consumer API as an agent (so `podflow tail --server` works against
//! it, with the events of every node) and writes the records to rotated JSON-lines files.
//!
//! State: the window ([`Hub`]), per-agent counters and the last accepted sequence number of each
//! agent run (to drop retransmitted batches). Nothing else is kept, so several collectors can run
//! behind one Service; an agent that moves to another collector after a reconnect may have its
//! unacknowledged batches accepted by both (at-least-once across collectors and across a
//! collector crash, exactly-once otherwise).
//!
//! A batch is stored in ClickHouse (with `--clickhouse`, see [`store`]), written to the files,
//! published to the window and only then acknowledged.
pub mod admit;
pub mod sink;
mod state;
pub mod store;
mod stream;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use thiserror::Error;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
};
use tokio_rustls::rustls;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{codec::CompressionEncoding, transport::Server};
use tracing::info;

pub use self::{
    admit::{Refusal, RefusalReason, Refusals},
    sink::{RotatingWriter, Rotation},
    store::{Store, StoreArgs, StoreConfig, StoreStats},
};
use self::{
    state::{Inner, Sinks, State},
    stream::ExportApi,
};
use crate::{
    api::{FlowApi, Hub, SocketFile, bind_unix, serve_until},
    format::gke,
    proto::{
        collector_service_server::CollectorServiceServer, flow_service_server::FlowServiceServer,
    },
};

/// Default TCP address of the collector.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4246";

/// `--format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// The keys of `podflow tail -o json` (flows and loss records).
    Native,
    /// GKE VPC flow log field names (same-node flows only).
    Gke,
    /// Both, in separate files.
    #[default]
    Both,
}

/// `podflow collector`.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorArgs {
    /// TCP address agents export to and consumers (`podflow tail --server`) read from.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Also serve on this unix socket (mode 0600, plaintext).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Serve Prometheus metrics (GET /metrics) on this TCP address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve gRPC health checking (`grpc.health.v1.Health`, plaintext, nothing else) on this
    /// TCP address, for the kubelet's `grpc:` probes, which speak no TLS: the `--listen` port
    /// with TLS refuses them.
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    /// Recent events kept in memory for consumers.
    #[arg(long, default_value_t = 65_536)]
    pub buffer: usize,
    /// Server certificate (PEM); with --tls-key, serve TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA of the agents' client certificates: require mutual TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// Write the records to rotated JSON-lines files in this directory.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// File format(s).
    #[arg(long, value_enum, default_value_t = FileFormat::Both)]
    pub format: FileFormat,
    /// Cluster name put in the GKE format's src/dest_gke_details.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Cluster location (region or zone) for the GKE format.
    #[arg(long, requires = "cluster")]
    pub cluster_location: Option<String>,
    /// Start a new file when the current one would pass this size (e.g. 100MiB, 10M, 4096).
    #[arg(long, default_value = "100MiB", value_parser = parse_size)]
    pub max_file_size: u64,
    /// Start a new file when the current one is this old.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_file_age: Duration,
    /// Files kept per format (the oldest are deleted).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_files: u64,
    /// Store the records in ClickHouse too.
    #[command(flatten)]
    pub store: StoreArgs,
}

impl CollectorArgs {
    /// The defaults with `listen` as the address (as if parsed from `--listen ADDR`).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            socket: None,
            metrics_listen: None,
            health_listen: None,
            buffer: 65_536,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            insecure: false,
            output_dir: None,
            format: FileFormat::Both,
            cluster: None,
            cluster_location: None,
            max_file_size: 100 << 20,
            max_file_age: Duration::from_secs(3600),
            max_files: 10,
            store: StoreArgs::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum CollectorError {
    #[error("metrics endpoint failed")]
    Metrics {
        #[source]
        source: crate::metrics::MetricsError,
    },
    /// The health endpoint's address could not be bound, or serving it failed.
    #[error("health endpoint on {addr} failed")]
    Health {
        addr: SocketAddr,
        #[source]
        source: HealthError,
    },
    #[error(
        "refusing to serve plaintext on the non-loopback address {addr}: configure TLS \
         (--tls-cert/--tls-key) or allow plaintext explicitly (--insecure)"
    )]
    PlaintextRefused { addr: SocketAddr },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("failed to listen on tcp {addr}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("failed to serve on the unix socket")]
    Unix {
        #[source]
        source: crate::api::ApiError,
    },
    #[error("failed to open the output directory {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read the local address of the tcp listener")]
    LocalAddr {
        #[source]
        source: io::Error,
    },
    #[error("grpc server failed")]
    Serve {
        #[source]
        source: tonic::transport::Error,
    },
    #[error("installing signal handlers failed")]
    Signal {
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Parses a size: a number of bytes with an optional K/M/G (×1000) or KiB/MiB/GiB (×1024)
/// suffix.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {value:?}: expected e.g. 100MiB, 10M or 4096"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in {value:?}")),
    };
    number
        .checked_mul(multiplier)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid size {value:?}"))
}

/// Runs the collector until SIGTERM or SIGINT.
pub async fn run(args: CollectorArgs) -> Result<(), CollectorError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| CollectorError::Signal { source })?;
    let collector = Collector::bind(&args).await?;
    info!(addr = %collector.local_addr(), "collector listening");
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| CollectorError::Metrics {
                    source: crate::metrics::MetricsError::Bind { addr, source },
                })?;
            let hub = collector.hub();
            let refusals = collector.refusals();
            Some(tokio::spawn(crate::metrics::serve_exposition_on(
                listener,
                move || crate::metrics::collector_exposition(&hub.status(), &refusals.counts()),
                async move {
                    let _ = metrics_stopped.await;
                },
            )))
        }
        None => None,
    };
    let (stop_health, health_stopped) = tokio::sync::oneshot::channel::<()>();
    let health_task = match args.health_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| CollectorError::Health {
                    addr,
                    source: HealthError::Bind(source),
                })?;
            info!(%addr, "serving gRPC health checks");
            Some((
                addr,
                tokio::spawn(serve_health(listener, async move {
                    let _ = health_stopped.await;
                })),
            ))
        }
        None => None,
    };
    let served = collector
        .serve(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await;
    let _ = stop_metrics.send(());
    let _ = stop_health.send(());
    if let Some(task) = metrics_task
        && let Ok(Err(source)) = task.await
    {
        return Err(CollectorError::Metrics { source });
    }
    if let Some((addr, task)) = health_task
        && let Ok(Err(source)) = task.await
    {
        return Err(CollectorError::Health {
            addr,
            source: HealthError::Serve(source),
        });
    }
    served
}

/// Why the health endpoint failed.
#[derive(Debug, Error)]
pub enum HealthError {
    /// Its address could not be bound.
    #[error("binding failed")]
    Bind(#[source] io::Error),
    /// The gRPC server failed.
    #[error("serving failed")]
    Serve(#[source] tonic::transport::Error),
}

/// `grpc.health.v1.Health` alone on `listener`, overall status `SERVING` while the collector
/// runs (it serves once bound), until `shutdown`.
async fn serve_health(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

/// A bound, not yet serving collector.
#[derive(Debug)]
pub struct Collector {
    state: Arc<State>,
    tcp: TcpListener,
    addr: SocketAddr,
    unix: Option<(UnixListener, SocketFile)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    refusals: Arc<Refusals>,
}

impl Collector {
    /// Checks the configuration, opens the output files' directory, binds the listeners.
    pub async fn bind(args: &CollectorArgs) -> Result<Collector, CollectorError> {
        let tls = server_tls(args)?;
        if tls.is_none() && !args.insecure && !args.listen.ip().is_loopback() {
            return Err(CollectorError::PlaintextRefused { addr: args.listen });
        }
        let sinks = match &args.output_dir {
            None => Sinks::default(),
            Some(dir) => {
                let rotation = Rotation {
                    max_file_size: args.max_file_size,
                    max_file_age: args.max_file_age,
                    max_files: usize::try_from(args.max_files).unwrap_or(usize::MAX),
                };
                let open = |prefix| {
                    RotatingWriter::new(dir, prefix, rotation).map_err(|source| {
                        CollectorError::Output {
                            path: dir.clone(),
                            source,
                        }
                    })
                };
                Sinks {
                    native: matches!(args.format, FileFormat::Native | FileFormat::Both)
                        .then(|| open("flows-native"))
                        .transpose()?,
                    gke: matches!(args.format, FileFormat::Gke | FileFormat::Both)
                        .then(|| open("flows-gke"))
                        .transpose()?,
                    cluster: args.cluster.clone().map(|name| gke::ClusterInfo {
                        name,
                        location: args.cluster_location.clone(),
                    }),
                }
            }
        };
        let tcp =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| CollectorError::BindTcp {
                    addr: args.listen,
                    source,
                })?;
        let addr = tcp
            .local_addr()
            .map_err(|source| CollectorError::LocalAddr { source })?;
        let unix = args
            .socket
            .as_deref()
            .map(bind_unix)
            .transpose()
            .map_err(|source| CollectorError::Unix { source })?;
        let store = args.store.config()?.map(Store::spawn).transpose()?;
        let hub = Hub::new(args.buffer);
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "collector".to_owned());
        let state = Arc::new(State {
            hub,
            store,
            node,
            start_time: prost_types::Timestamp::from(SystemTime::now()),
            inner: Mutex::new(Inner {
                agents: HashMap::new(),
                sinks,
                counters: BTreeMap::new(),
            }),
        });
        state.publish_status(&state.lock());
        if state.store.is_some() {
            // The store's counters move while nothing is accepted (an outage): keep the status
            // current.
            let weak = Arc::downgrade(&state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(state) = weak.upgrade() else { break };
                    state.publish_status(&state.lock());
                }
            });
        }
        Ok(Collector {
            state,
            tcp,
            addr,
            unix,
            tls,
            refusals: Arc::default(),
        })
    }

    /// The bound TCP address (the actual port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connections refused so far (see [`admit`]).
    pub fn refusals(&self) -> Arc<Refusals> {
        Arc::clone(&self.refusals)
    }

    /// The window of recent events (also served by GetFlows).
    pub fn hub(&self) -> Arc<Hub> {
        Arc::clone(&self.state.hub)
    }

    /// Serves until `shutdown` completes, then ends the streams and waits a few seconds at most.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CollectorError> {
        let Self {
            state,
            tcp,
            addr: _,
            unix,
            tls,
            refusals,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        };
        let export = ExportApi {
            state: Arc::clone(&state),
            stop: stop_rx.clone(),
        };
        let consumer = FlowApi::new(Arc::clone(&state.hub), stop_rx.clone());
        let services = |export: ExportApi, consumer: FlowApi| {
            let export = CollectorServiceServer::new(export)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(256 << 20);
            (export, FlowServiceServer::new(consumer))
        };
        // TLS and the HTTP/2 preface are checked by `admit`, which says every refusal.
        let tcp_server = {
            let (export, consumer) = services(export.clone(), consumer.clone());
            let router = Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(export)
                .add_service(consumer);
            let stop = stopped(stop_rx.clone());
            async move {
                match tls {
                    Some(config) => {
                        router
                            .serve_with_incoming_shutdown(
                                admit::tls_incoming(tcp, config, refusals),
                                stop,
                            )
                            .await
                    }
                    None => {
                        router
                            .serve_with_incoming_shutdown(
                                admit::plain_incoming(tcp, refusals),
                                stop,
                            )
                            .await
                    }
                }
            }
        };
        let (unix_listener, socket_file) = match unix {
            Some((listener, file)) => (Some(listener), Some(file)),
            None => (None, None),
        };
        let unix_server = {
            let stop = stopped(stop_rx);
            async move {
                match unix_listener {
                    Some(listener) => {
                        let (export, consumer) = services(export, consumer);
                        Server::builder()
                            .add_service(export)
                            .add_service(consumer)
                            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
                            .await
                    }
                    None => Ok(()),
                }
            }
        };
        let servers = futures::future::try_join(tcp_server, unix_server);
        let result = serve_until(servers, shutdown, &stop_tx, "collector").await;
        drop(socket_file);
        result.map_err(|source| CollectorError::Serve { source })
    }
}

fn server_tls(args: &CollectorArgs) -> Result<Option<Arc<rustls::ServerConfig>>, CollectorError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    Ok(Some(crate::tls::server_config(
        cert,
        key,
        args.tls_client_ca.as_ref(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10M").unwrap(), 10_000_000);
        assert_eq!(parse_size("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in ["", "MiB", "0", "10 parsecs", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
