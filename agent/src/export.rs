//! Export to a collector: batches of flow events over one long-lived, acknowledged, compressed
//! gRPC stream (`podflow.v1.CollectorService/Export`).
//!
//! The pipeline hands events to [`ExporterHandle::send`], which never blocks: it appends to a
//! bounded buffer (dropping the oldest *unsent* events when full, counted by reason) and wakes the
//! exporter task. The task forms batches (`batch_size` events, or fewer after `linger`), numbers
//! them 1, 2, 3, ... and keeps each one until the collector acknowledges it; after a reconnect it
//! sends every unacknowledged batch again, and the collector drops the ones it already has (it
//! deduplicates by `(agent_id, seq)`). Buffer losses are reported in-stream, in the next batch, as
//! `LossRecord { reason: "export_buffer_full", unit: "records" }`.
//!
//! Accounting: events are counted once when first sent (`sent_records`) and once when
//! acknowledged (`acked_records`); every event handed to `send` ends up acknowledged, dropped
//! (`dropped_records`, by reason) or still buffered (`queue_depth`). Loss records the exporter
//! makes itself are counted in `sent_records`/`acked_records` too, and in `loss_records_sent`.
//!
//! Failure handling: connect timeout, HTTP/2 keepalive (a dead or frozen peer is noticed within
//! `keepalive_interval + keepalive_timeout`), and an ack deadline (no ack for `ack_timeout` while
//! batches are outstanding tears the stream down), then reconnects with jittered exponential
//! backoff. Each attempt reuses nothing from the previous one (channel, connection, TLS
//! configuration), so memory, threads and fds stay flat through an outage.
//!
//! Security: TLS with server verification (`tls.ca`), mutual TLS with `tls.cert` + `tls.key`.
//! The certificate files are read again on every connection attempt and watched (mtime and size,
//! every `cert_check_interval`): a change closes the stream and reconnects with the new files.
//! Plaintext TCP is refused unless the collector is a loopback address or `insecure` is set; a
//! unix socket needs neither.
mod tls;

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use thiserror::Error;
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    codec::CompressionEncoding,
    transport::{Channel, Endpoint, Uri},
};
use tracing::{debug, info, warn};

pub use self::tls::TlsClientConfig;
use crate::proto::{
    self, ExportBatch, collector_service_client::CollectorServiceClient, flow_event::Event,
};
use crate::report::error_chain;

/// Reason of the records dropped because the buffer was full (collector slow or unreachable).
pub const EXPORT_BUFFER_FULL: &str = "export_buffer_full";
/// Reason of the records still unacknowledged when [`ExporterHandle::shutdown`] gave up.
pub const EXPORT_SHUTDOWN: &str = "export_shutdown";

/// Compression of the export stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    #[default]
    Zstd,
}

impl Compression {
    fn encoding(self) -> Option<CompressionEncoding> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some(CompressionEncoding::Gzip),
            Compression::Zstd => Some(CompressionEncoding::Zstd),
        }
    }
}

/// What [`spawn`] needs. [`ExporterConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    /// `http://host:port`, `https://host:port`, `host:port` (https when `tls` is set), or a unix
    /// socket: `unix:///path`, `unix:path`, or an absolute path.
    pub collector: String,
    /// This node's name (on the batches and the loss records the exporter makes).
    pub node: String,
    /// Events per batch at most (a batch may carry one loss record per reason on top).
    pub batch_size: usize,
    /// How long an event may wait for a batch to fill up.
    pub linger: Duration,
    /// Events buffered at most (unsent + sent but unacknowledged). Must be >= `batch_size`.
    pub buffer_records: usize,
    /// Batches sent and not yet acknowledged at most (clamped so that they fit in the buffer).
    pub max_in_flight: usize,
    pub tls: Option<TlsClientConfig>,
    /// Allow plaintext TCP to a non-loopback collector.
    pub insecure: bool,
    pub compression: Compression,
    pub connect_timeout: Duration,
    /// No ack for this long while batches are outstanding: the stream is torn down.
    pub ack_timeout: Duration,
    /// HTTP/2 PING interval and the time to wait for its answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Reconnect backoff: doubles from `backoff_initial` up to `backoff_max`, ±50% jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the TLS files are checked for changes.
    pub cert_check_interval: Duration,
    /// Identifies this exporter run to the collector (the dedup key of the sequence numbers).
    /// Default: `<node>/<pid>-<start time ns>`.
    pub agent_id: Option<String>,
}

impl ExporterConfig {
    /// The defaults: batches of 1000 events or 1 s, a 100 000-event buffer, zstd, 5 s connect
    /// timeout, 30 s ack deadline, 20 s/10 s keepalive, 0.5–30 s backoff.
    pub fn new(collector: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            collector: collector.into(),
            node: node.into(),
            batch_size: 1000,
            linger: Duration::from_secs(1),
            buffer_records: 100_000,
            max_in_flight: 16,
            tls: None,
            insecure: false,
            compression: Compression::Zstd,
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            cert_check_interval: Duration::from_secs(10),
            agent_id: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("invalid collector address {value:?}: {reason}")]
    InvalidCollector { value: String, reason: &'static str },
    #[error(
        "refusing to export flow records in plaintext to {collector}: configure TLS (a CA \
         certificate) or allow plaintext explicitly (--insecure)"
    )]
    PlaintextRefused { collector: String },
    #[error("{collector} asks for https but no TLS CA certificate is configured")]
    TlsWithoutCa { collector: String },
    #[error("invalid exporter configuration: {reason}")]
    InvalidConfig { reason: &'static str },
    #[error("failed to read {what} {}", path.display())]
    ReadTlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a client certificate needs its key and a key its certificate")]
    TlsIncompleteIdentity,
    #[error("failed to connect to the collector {collector}: {reason}")]
    Connect { collector: String, reason: String },
    #[error("the collector refused the export stream: {reason}")]
    Rpc { reason: String },
    #[error("the collector closed the export stream")]
    StreamClosed,
    #[error("no acknowledgement from the collector for {0:?}")]
    AckTimeout(Duration),
}

/// Counters of an exporter (see the module documentation for the accounting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Events buffered: not yet sent, or sent and not yet acknowledged.
    pub queue_depth: u64,
    /// Events sent (first transmissions).
    pub sent_records: u64,
    /// Events sent again after a reconnect.
    pub retransmitted_records: u64,
    /// Events the collector acknowledged.
    pub acked_records: u64,
    /// Batches the collector acknowledged as already received (retransmissions it dropped).
    pub duplicate_batches: u64,
    /// Events dropped, by reason ([`EXPORT_BUFFER_FULL`], [`EXPORT_SHUTDOWN`]).
    pub dropped_records: BTreeMap<String, u64>,
    /// Loss records the exporter sent to declare its drops.
    pub loss_records_sent: u64,
    /// A stream to the collector is established.
    pub connected: bool,
    /// Streams established so far.
    pub connections: u64,
    /// Failed connection attempts and streams torn down by an error.
    pub failures: u64,
    /// The last failure, readable (e.g. a TLS verification error).
    pub last_error: Option<String>,
}

impl ExportStats {
    /// Sum of `dropped_records` over the reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_records.values().sum()
    }
}

/// Starts the exporter task on the current tokio runtime. Fails on a configuration error
/// (address, plaintext policy, unreadable TLS files); connection errors are retried, not
/// returned (see [`ExportStats::last_error`]).
pub fn spawn(cfg: ExporterConfig) -> Result<ExporterHandle, ExportError> {
    let target = Target::parse(&cfg)?;
    if cfg.batch_size == 0 {
        return Err(ExportError::InvalidConfig {
            reason: "batch_size must be at least 1",
        });
    }
    if cfg.buffer_records < cfg.batch_size {
        return Err(ExportError::InvalidConfig {
            reason: "buffer_records must be at least batch_size",
        });
    }
    if let Some(tls) = &cfg.tls {
        // Fail early on unreadable files; they are read again on every connection attempt.
        tls.load()?;
    }
    let max_in_flight = cfg
        .max_in_flight
        .clamp(1, (cfg.buffer_records / cfg.batch_size).max(1));
    let agent_id = cfg.agent_id.clone().unwrap_or_else(|| {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{}/{}-{started}", cfg.node, std::process::id())
    });
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            next_seq: 1,
            ..State::default()
        }),
        wake: Notify::new(),
        buffer_records: cfg.buffer_records,
    });
    let (stop_tx, stop_rx) = watch::channel(None);
    let worker = Worker {
        shared: Arc::clone(&shared),
        cfg,
        target,
        agent_id,
        max_in_flight,
        stop: stop_rx,
    };
    let task = tokio::spawn(worker.run());
    Ok(ExporterHandle {
        shared,
        stop: stop_tx,
        task: Some(task),
    })
}

/// The pipeline's side of a running exporter.
///
/// Dropping it without [`ExporterHandle::shutdown`] stops the exporter at once (what is buffered
/// is lost).
#[derive(Debug)]
pub struct ExporterHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<Option<Instant>>,
    /// `None` once shut down.
    task: Option<JoinHandle<()>>,
}

impl Drop for ExporterHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl ExporterHandle {
    /// Queues `events` for export. Never blocks on the network: when the buffer is full the
    /// oldest unsent events are dropped (counted as [`EXPORT_BUFFER_FULL`] and declared to the
    /// collector in the next batch).
    pub fn send(&self, events: Vec<proto::FlowEvent>) {
        if events.is_empty() {
            return;
        }
        {
            let mut state = self.shared.lock();
            state.queue.extend(events);
            let limit = self.shared.buffer_records;
            let mut dropped = 0u64;
            while state.queue.len() + state.unacked_records > limit {
                if state.queue.pop_front().is_none() {
                    break;
                }
                dropped += 1;
            }
            if dropped > 0 {
                *state.pending_loss.entry(EXPORT_BUFFER_FULL).or_default() += dropped;
                *state
                    .stats
                    .dropped_records
                    .entry(EXPORT_BUFFER_FULL.to_owned())
                    .or_default() += dropped;
            }
        }
        self.shared.wake.notify_one();
    }

    /// The current counters.
    pub fn stats(&self) -> ExportStats {
        self.shared.stats()
    }

    /// Sends what is buffered (ignoring `linger`) and waits, up to `deadline`, for the collector
    /// to acknowledge it; then closes the stream. Events still unacknowledged are counted as
    /// dropped ([`EXPORT_SHUTDOWN`]). Returns the final counters.
    pub async fn shutdown(mut self, deadline: Duration) -> ExportStats {
        self.stop.send_replace(Some(Instant::now() + deadline));
        self.shared.wake.notify_one();
        if let Some(mut task) = self.task.take() {
            // The worker honours the deadline itself; the margin covers a stuck connect call.
            let margin = deadline + Duration::from_secs(1);
            if tokio::time::timeout(margin, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
                self.shared.drop_leftovers();
            }
        }
        self.shared.stats()
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    buffer_records: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<proto::FlowEvent>,
    /// When the oldest queued event arrived.
    queue_since: Option<Instant>,
    unacked: VecDeque<ExportBatch>,
    unacked_records: usize,
    next_seq: u64,
    /// Drops not yet declared to the collector.
    pending_loss: BTreeMap<&'static str, u64>,
    stats: ExportStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> ExportStats {
        let state = self.lock();
        let mut stats = state.stats.clone();
        stats.queue_depth = (state.queue.len() + state.unacked_records) as u64;
        stats
    }

    /// Counts everything still buffered as dropped at shutdown.
    fn drop_leftovers(&self) {
        let mut state = self.lock();
        let left = (state.queue.len() + state.unacked_records) as u64;
        state.queue.clear();
        state.unacked.clear();
        state.unacked_records = 0;
        state.stats.connected = false;
        if left > 0 {
            *state
                .stats
                .dropped_records
                .entry(EXPORT_SHUTDOWN.to_owned())
                .or_default() += left;
        }
    }
}

/// Where the collector is.
#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tcp { uri: String },
}

impl Target {
    fn parse(cfg: &ExporterConfig) -> Result<Target, ExportError> {
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

struct Worker {
    shared: Arc<Shared>,
    cfg: ExporterConfig,
    target: Target,
    agent_id: String,
    max_in_flight: usize,
    /// The shutdown deadline, once asked for.
    stop: watch::Receiver<Option<Instant>>,
}

/// Why a stream ended without an error.
enum SessionEnd {
    /// Shutdown: everything acknowledged, or the deadline passed.
    Shutdown,
    /// The TLS files changed: reconnect at once.
    Reload,
}

impl Worker {
    async fn run(self) {
        let mut backoff = self.cfg.backoff_initial;
        loop {
            if self.shutdown_finished() {
                break;
            }
            let mut established = false;
            match self.session(&mut established).await {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Reload) => {
                    info!("collector TLS files changed: reconnecting");
                    backoff = self.cfg.backoff_initial;
                    continue;
                }
                Err(err) => {
                    {
                        let mut state = self.shared.lock();
                        state.stats.connected = false;
                        state.stats.failures += 1;
                        state.stats.last_error = Some(err.to_string());
                    }
                    warn!(collector = %self.cfg.collector, error = %err, "export stream failed");
                    if established {
                        backoff = self.cfg.backoff_initial;
                    }
                    let pause = jitter(backoff);
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                    let mut stop = self.stop.clone();
                    let deadline = async move {
                        match stop.wait_for(Option::is_some).await.ok().and_then(|d| *d) {
                            Some(deadline) => tokio::time::sleep_until(deadline).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = deadline => break,
                    }
                }
            }
        }
        self.shared.drop_leftovers();
    }

    /// Shutdown asked for, and nothing left or the deadline passed.
    fn shutdown_finished(&self) -> bool {
        match *self.stop.borrow() {
            None => false,
            Some(deadline) => {
                let state = self.shared.lock();
                (state.queue.is_empty()
                    && state.unacked.is_empty()
                    && state.pending_loss.is_empty())
                    || Instant::now() >= deadline
            }
        }
    }

    async fn connect(&self) -> Result<Channel, ExportError> {
        let connect_error = |err: tonic::transport::Error| ExportError::Connect {
            collector: self.cfg.collector.clone(),
            reason: error_chain(&err),
        };
        let endpoint = |uri: String| -> Result<Endpoint, ExportError> {
            Ok(Endpoint::from_shared(uri)
                .map_err(connect_error)?
                .connect_timeout(self.cfg.connect_timeout)
                .http2_keep_alive_interval(self.cfg.keepalive_interval)
                .keep_alive_timeout(self.cfg.keepalive_timeout)
                .keep_alive_while_idle(true)
                .tcp_keepalive(Some(self.cfg.keepalive_interval))
                .tcp_nodelay(true))
        };
        match &self.target {
            Target::Tcp { uri } => {
                let mut endpoint = endpoint(uri.clone())?;
                if let Some(tls) = &self.cfg.tls {
                    endpoint = endpoint
                        .tls_config(tls.load()?.client_config())
                        .map_err(connect_error)?;
                }
                endpoint.connect().await.map_err(connect_error)
            }
            Target::Unix(path) => {
                crate::api::connect_unix(endpoint("http://localhost".to_owned())?, path.clone())
                    .await
                    .map_err(connect_error)
            }
        }
    }

    /// One connection and export stream, until an error, a TLS file change or the shutdown.
    async fn session(&self, established: &mut bool) -> Result<SessionEnd, ExportError> {
        let tls_snapshot = self.cfg.tls.as_ref().map(TlsClientConfig::snapshot);
        let channel = tokio::time::timeout(self.cfg.connect_timeout, self.connect())
            .await
            .map_err(|_| ExportError::Connect {
                collector: self.cfg.collector.clone(),
                reason: format!("timed out after {:?}", self.cfg.connect_timeout),
            })??;
        let mut client = CollectorServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20);
        if let Some(encoding) = self.cfg.compression.encoding() {
            client = client.send_compressed(encoding).accept_compressed(encoding);
        }
        // Room for every batch that may be outstanding, so sending never waits.
        let (tx, rx) = mpsc::channel::<ExportBatch>(self.max_in_flight + 1);
        {
            let mut state = self.shared.lock();
            let mut resent = 0u64;
            for batch in &state.unacked {
                resent += batch.events.len() as u64;
                if tx.try_send(batch.clone()).is_err() {
                    break;
                }
            }
            state.stats.retransmitted_records += resent;
        }
        let response =
            tokio::time::timeout(self.cfg.ack_timeout, client.export(ReceiverStream::new(rx)))
                .await
                .map_err(|_| ExportError::AckTimeout(self.cfg.ack_timeout))?
                .map_err(|status| ExportError::Rpc {
                    reason: status_text(&status),
                })?;
        let mut acks = response.into_inner();
        *established = true;
        {
            let mut state = self.shared.lock();
            state.stats.connected = true;
            state.stats.connections += 1;
        }
        info!(collector = %self.cfg.collector, "export stream established");

        let mut stop = self.stop.clone();
        let mut ack_deadline: Option<Instant> = None;
        let mut cert_check = tokio::time::interval(self.cfg.cert_check_interval);
        cert_check.tick().await;
        loop {
            let (linger_until, outstanding, done) = self.fill(&tx)?;
            if done {
                // Everything acknowledged at shutdown: close our side.
                drop(tx);
                return Ok(SessionEnd::Shutdown);
            }
            if !outstanding {
                ack_deadline = None;
            } else if ack_deadline.is_none() {
                ack_deadline = Some(Instant::now() + self.cfg.ack_timeout);
            }
            let stop_at = *stop.borrow();
            tokio::select! {
                message = acks.message() => match message {
                    Ok(Some(ack)) => {
                        self.on_ack(&ack);
                        ack_deadline = None;
                    }
                    Ok(None) => return Err(ExportError::StreamClosed),
                    Err(status) => return Err(ExportError::Rpc { reason: status_text(&status) }),
                },
                () = self.shared.wake.notified() => {}
                () = sleep_until_opt(linger_until) => {}
                () = sleep_until_opt(ack_deadline) => {
                    return Err(ExportError::AckTimeout(self.cfg.ack_timeout));
                }
                () = sleep_until_opt(stop_at) => return Ok(SessionEnd::Shutdown),
                _ = stop.changed() => {}
                _ = cert_check.tick() => {
                    if let (Some(tls), Some(before)) = (&self.cfg.tls, &tls_snapshot)
                        && tls.snapshot() != *before
                    {
                        return Ok(SessionEnd::Reload);
                    }
                }
            }
        }
    }

    /// Forms and sends the batches that are due. Returns when the next linger expires, whether
    /// batches are outstanding, and whether a shutdown is complete.
    fn fill(
        &self,
        tx: &mpsc::Sender<ExportBatch>,
    ) -> Result<(Option<Instant>, bool, bool), ExportError> {
        let stopping = self.stop.borrow().is_some();
        let mut state = self.shared.lock();
        let now = Instant::now();
        if !state.queue.is_empty() && state.queue_since.is_none() {
            state.queue_since = Some(now);
        }
        while state.unacked.len() < self.max_in_flight {
            let lingered = state
                .queue_since
                .is_some_and(|since| now >= since + self.cfg.linger);
            let due = state.queue.len() >= self.cfg.batch_size
                || (!state.queue.is_empty() && (lingered || stopping))
                || !state.pending_loss.is_empty();
            if !due {
                break;
            }
            let take = state.queue.len().min(self.cfg.batch_size);
            let mut events: Vec<proto::FlowEvent> = Vec::with_capacity(take + 1);
            let time = prost_types::Timestamp::from(SystemTime::now());
            let losses = std::mem::take(&mut state.pending_loss);
            for (reason, count) in losses {
                events.push(proto::FlowEvent {
                    event: Some(Event::Loss(proto::LossRecord {
                        time: Some(time),
                        node: self.cfg.node.clone(),
                        reason: reason.to_owned(),
                        count,
                        unit: "records".to_owned(),
                    })),
                });
                state.stats.loss_records_sent += 1;
            }
            events.extend(state.queue.drain(..take));
            state.queue_since = if state.queue.is_empty() {
                None
            } else {
                Some(now)
            };
            let seq = state.next_seq;
            state.next_seq += 1;
            let batch = ExportBatch {
                agent_id: self.agent_id.clone(),
                node: self.cfg.node.clone(),
                version: crate::VERSION.to_owned(),
                seq,
                events,
                sent_time: Some(time),
            };
            let len = batch.events.len();
            if tx.try_send(batch.clone()).is_err() {
                // Cannot happen (the channel has room for max_in_flight batches) unless the
                // stream is gone; keep the batch for the next connection.
                state.unacked.push_back(batch);
                state.unacked_records += len;
                return Err(ExportError::StreamClosed);
            }
            debug!(seq, events = len, "batch sent");
            state.unacked.push_back(batch);
            state.unacked_records += len;
            state.stats.sent_records += len as u64;
        }
        let linger_until = state.queue_since.map(|since| since + self.cfg.linger);
        let outstanding = !state.unacked.is_empty();
        let done = stopping
            && state.queue.is_empty()
            && state.unacked.is_empty()
            && state.pending_loss.is_empty();
        Ok((linger_until, outstanding, done))
    }

    fn on_ack(&self, ack: &proto::ExportAck) {
        let mut state = self.shared.lock();
        // Acks come in order; an ack covers its batch and any earlier one.
        while state.unacked.front().is_some_and(|b| b.seq <= ack.seq) {
            if let Some(batch) = state.unacked.pop_front() {
                let len = batch.events.len();
                state.unacked_records -= len;
                state.stats.acked_records += len as u64;
            }
        }
        if ack.duplicate {
            state.stats.duplicate_batches += 1;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `base` ±50%.
fn jitter(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // A cheap, good-enough random factor in [0.5, 1.5): mixes the clock's nanoseconds.
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44; // 20 bits
    let factor = 0.5 + (mixed as f64) / f64::from(1u32 << 20);
    base.mul_f64(factor)
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
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

    #[test]
    fn jitter_stays_within_half() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(5) && d < Duration::from_secs(15),
                "{d:?}"
            );
        }
    }
}
