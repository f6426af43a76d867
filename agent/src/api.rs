//! The gRPC consumer API (`podflow.v1.FlowService`): a bounded ring of recent events, a broadcast
//! to followers, served on a unix socket (mode 0600) and optionally on TCP.
//!
//! The pipeline publishes into a [`Hub`]; [`serve`] serves it until a shutdown signal. Tests and
//! callers that need the bound addresses first (TCP port 0) use [`ApiListeners::bind`] and
//! [`ApiListeners::serve`], which is all [`serve`] does.
mod hub;
mod service;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use thiserror::Error;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;
use tracing::{info, warn};

pub use self::hub::{DEFAULT_BUFFER_BYTES, Hub, Query, SUBSCRIBER_LAGGED};
pub use self::service::FlowApi;
use crate::proto::flow_service_server::FlowServiceServer;

/// How long a shutdown waits for open streams and connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where the API is served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiConfig {
    /// Unix socket path (created mode 0600, its parent directory if missing).
    pub unix_socket: Option<PathBuf>,
    /// TCP address; port 0 picks a free port ([`ApiListeners::tcp_addr`] tells which).
    pub tcp: Option<SocketAddr>,
}

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("no listener configured: need a unix socket or a tcp address")]
    NoListener,
    #[error("failed to create the socket directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exists and is not a socket: refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("{} is in use: another agent is serving on it", path.display())]
    SocketInUse { path: PathBuf },
    #[error("failed to inspect or remove the stale socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to bind the unix socket {}", path.display())]
    BindUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to set mode 0600 on {}", path.display())]
    Chmod {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to listen on tcp {addr}")]
    BindTcp {
        addr: SocketAddr,
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
}

/// Serves `hub` as configured by `cfg` until `shutdown` completes, then stops accepting, ends
/// follow streams, waits (a few seconds at most) for connections to close, and removes the unix
/// socket file.
pub async fn serve(
    hub: Arc<Hub>,
    cfg: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    ApiListeners::bind(&cfg).await?.serve(hub, shutdown).await
}

/// Bound, not yet serving listeners. Dropping them removes the unix socket file.
#[derive(Debug)]
pub struct ApiListeners {
    unix: Option<(UnixListener, SocketFile)>,
    tcp: Option<TcpListener>,
}

impl ApiListeners {
    /// Binds what `cfg` asks for. The unix socket: its parent directory is created if missing, a
    /// stale socket file (nobody accepting on it) is replaced, and the socket is made mode 0600
    /// before anything is served. A live socket or a path that is not a socket is an error.
    pub async fn bind(cfg: &ApiConfig) -> Result<Self, ApiError> {
        if cfg.unix_socket.is_none() && cfg.tcp.is_none() {
            return Err(ApiError::NoListener);
        }
        let unix = match &cfg.unix_socket {
            Some(path) => Some(bind_unix(path)?),
            None => None,
        };
        let tcp = match cfg.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ApiError::BindTcp { addr, source })?,
            ),
            None => None,
        };
        Ok(Self { unix, tcp })
    }

    /// The unix socket path, when serving on one.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, file)| file.path.as_path())
    }

    /// The bound TCP address (with the actual port when asked for port 0).
    pub fn tcp_addr(&self) -> Result<Option<SocketAddr>, ApiError> {
        self.tcp
            .as_ref()
            .map(|listener| listener.local_addr())
            .transpose()
            .map_err(|source| ApiError::LocalAddr { source })
    }

    /// Serves `hub` on these listeners until `shutdown` completes (see [`serve`]).
    pub async fn serve(
        self,
        hub: Arc<Hub>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        let Self { unix, tcp } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let api = FlowApi::new(hub, stop_rx.clone());
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        };

        let (unix_listener, socket_file) = match unix {
            Some((listener, file)) => (Some(listener), Some(file)),
            None => (None, None),
        };
        if let Some(file) = &socket_file {
            info!(path = %file.path.display(), "serving the API on a unix socket");
        }
        let unix_server = {
            let api = api.clone();
            let stop = stopped(stop_rx.clone());
            async move {
                match unix_listener {
                    Some(listener) => Server::builder()
                        .add_service(FlowServiceServer::new(api))
                        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
                        .await
                        .map_err(|source| ApiError::Serve { source }),
                    None => Ok(()),
                }
            }
        };
        if let Some(Ok(addr)) = tcp.as_ref().map(TcpListener::local_addr) {
            info!(%addr, "serving the API on tcp");
        }
        let tcp_server = {
            let stop = stopped(stop_rx);
            async move {
                match tcp {
                    Some(listener) => Server::builder()
                        .add_service(FlowServiceServer::new(api))
                        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
                        .await
                        .map_err(|source| ApiError::Serve { source }),
                    None => Ok(()),
                }
            }
        };

        let servers = futures::future::try_join(unix_server, tcp_server);
        let result = serve_until(servers, shutdown, &stop_tx, "API").await;
        drop(socket_file);
        result
    }
}

/// Runs `servers` until they end (one failed) or `shutdown` completes. Either way it then tells
/// them to stop (follow streams end on `stop_tx`) and, on shutdown, waits at most
/// [`SHUTDOWN_GRACE`] for open connections before dropping them. `what` names them in the log.
pub(crate) async fn serve_until<T, E>(
    servers: impl Future<Output = Result<T, E>>,
    shutdown: impl Future<Output = ()>,
    stop_tx: &watch::Sender<bool>,
    what: &str,
) -> Result<(), E> {
    tokio::pin!(servers, shutdown);
    tokio::select! {
        result = &mut servers => {
            // A server failed (the others are dropped with `servers`).
            stop_tx.send_replace(true);
            result.map(|_| ())
        }
        () = &mut shutdown => {
            stop_tx.send_replace(true);
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                Ok(result) => result.map(|_| ()),
                Err(_) => {
                    warn!(
                        grace = ?SHUTDOWN_GRACE,
                        "{what} connections still open after the shutdown grace period; closing"
                    );
                    Ok(())
                }
            }
        }
    }
}

/// The socket file we created; removed on drop.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => warn!(path = %self.path.display(), %err, "failed to remove the API socket"),
        }
    }
}

/// Binds a unix socket at `path` with mode 0600: creates the parent directory, replaces a stale
/// socket left by a previous run, refuses anything else there or a socket still in use. The
/// agent's API and the collector both serve this way.
pub(crate) fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), ApiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| ApiError::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(|source| ApiError::BindUnix {
        path: path.to_path_buf(),
        source,
    })?;
    // From here on the file is ours: removed on any error below and on shutdown.
    let file = SocketFile {
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ApiError::Chmod {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok((listener, file))
}

/// Removes a socket file left by a previous run. Refuses to remove anything else, or a socket
/// that another process still accepts connections on.
fn remove_stale_socket(path: &Path) -> Result<(), ApiError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiError::RemoveStale {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ApiError::SocketInUse {
            path: path.to_path_buf(),
        });
    }
    std::fs::remove_file(path).map_err(|source| ApiError::RemoveStale {
        path: path.to_path_buf(),
        source,
    })
}

/// Connects a gRPC channel over the unix socket at `path`. `endpoint` carries the options
/// (timeouts, keepalive); its URI is required by tonic but unused.
pub async fn connect_unix(
    endpoint: tonic::transport::Endpoint,
    path: PathBuf,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
