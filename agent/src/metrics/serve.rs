//! The `GET /metrics` endpoint.
use std::{future::Future, net::SocketAddr, sync::Arc};

use super::{Metrics, MetricsError, OPENMETRICS_CONTENT_TYPE};

/// Binds `addr` and serves `GET /metrics` until `shutdown` completes.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    serve_metrics_on(metrics, listener, shutdown).await
}

/// Serves `GET /metrics` on an already bound listener (tests bind `127.0.0.1:0` and read the
/// port first) until `shutdown` completes.
pub async fn serve_metrics_on(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    serve_exposition_on(listener, move || metrics.encode(), shutdown).await
}

/// Serves `GET /metrics` with whatever `render` returns at each scrape (the collector renders
/// its per-agent status this way).
pub async fn serve_exposition_on(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> Result<String, MetricsError> + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    use axum::{http::StatusCode, http::header::CONTENT_TYPE, routing::get};
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                match render() {
                    Ok(body) => (
                        StatusCode::OK,
                        [(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                        body,
                    ),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                        e.to_string(),
                    ),
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| MetricsError::Serve { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::sample_value;

    #[tokio::test]
    async fn serves_metrics_over_http() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let m = Metrics::new();
        m.set_export_queue_depth(7);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics_on(m, listener, async move {
            let _ = stopped.await;
        }));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            resp
        };
        let resp = get("/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{resp}"
        );
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(sample_value(body, "podflow_export_queue_depth"), Some(7.0));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
