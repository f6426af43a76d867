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
//! backoff, capped at 4 s so that a collector that is back is used within seconds (and the loss
//! records of the outage reach it with the first batches). Each attempt reuses nothing from the previous one (channel, connection, TLS
//! configuration), so memory, threads and fds stay flat through an outage.
//!
//! Security: TLS with server verification (`tls.ca`), mutual TLS with `tls.cert` + `tls.key`.
//! The certificate files are read again on every connection attempt and watched (mtime and size,
//! every `cert_check_interval`): a change closes the stream and reconnects with the new files.
//! Plaintext TCP is refused unless the collector is a loopback address or `insecure` is set; a
//! unix socket needs neither.
mod target;
mod worker;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use thiserror::Error;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};
use tonic::codec::CompressionEncoding;

use self::{target::Target, worker::Worker};
use crate::proto::{self, ExportBatch};
pub use crate::tls::TlsClientConfig;

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
    /// timeout, 30 s ack deadline, 20 s/10 s keepalive, 0.5–4 s backoff (±50 %: a collector
    /// that is back is used within 6 s; a connection refused costs a node next to nothing).
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
            backoff_max: Duration::from_secs(4),
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
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
    /// collector in the next batch). They are encoded here, outside the buffer's lock, and wait
    /// encoded (see [`ExporterHandle::send_encoded`]).
    pub fn send(&self, events: Vec<proto::FlowEvent>) {
        if !events.is_empty() {
            self.send_encoded(ExportBatch::encode_events(&events));
        }
    }

    /// [`ExporterHandle::send`] for events already encoded (each a `FlowEvent`, as
    /// [`ExportBatch::encode_events`] makes them): the agent encodes a flush's records once for
    /// its subscribers and its exporter. The buffer holds them as they are (a record is ~4 times
    /// smaller encoded than as a struct), and a batch is a list of them: kept for retransmission
    /// and sent without being encoded again.
    pub fn send_encoded(&self, events: Vec<Bytes>) {
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
    /// Encoded `FlowEvent`s.
    queue: VecDeque<Bytes>,
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
