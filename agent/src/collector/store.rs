//! The collector's ClickHouse sink: batches of every agent, inserted together, acknowledged to
//! the agents only once ClickHouse has them.
//!
//! ```text
//! export streams ──submit (waits for room: the bounded buffer)──▶ writer task
//!      ▲                                                          │ groups up to batch_rows rows
//!      └──────────── stored (then files, window, ack) ◀────────────┘ or linger, then INSERTs
//! ```
//!
//! Bounded: at most `buffer_records` events wait for ClickHouse; past that, `submit` waits, the
//! export streams stop reading, and the agents' own bounded buffers fill (their drops are counted
//! and reported as `export_buffer_full` loss records). Nothing is dropped here.
//!
//! Exactly once: rows carry their idempotency key `(agent_id, seq, idx)`. ClickHouse 18.16 has no
//! insert deduplication for non-replicated tables (`non_replicated_deduplication_window` and
//! `insert_deduplication_token` came in 20.x/22.x), and a `ReplacingMergeTree` would only remove
//! duplicates at some later merge, after the roll-up views had summed them; so the collector
//! makes a retry a no-op itself: after any failed attempt (which may have stored all, some or none
//! of the rows: a timeout, a reset connection, a shard that failed after another succeeded), and
//! for a batch an agent retransmits that this process has no record of (a previous collector may
//! have stored it and died before acknowledging), it first waits until no insert of its own still
//! runs on the server (`system.processes`, by query id), asks which keys of the group are stored,
//! and inserts only the others. Inserts into a cluster go through the `Distributed` tables with
//! `insert_distributed_sync=1`, so a success means the shard has the rows.
//!
//! Failures are retried with backoff (100 ms doubling to 5 s) for as long as the collector runs,
//! counted by cause (`disk_full`, `schema`, `timeout`, `connect`, ...) and logged with
//! ClickHouse's own message. A schema error (a dropped column or table) triggers the migration
//! again before the retry, which adds the column back.
mod retention;
mod rollups;
mod writer;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};

pub use self::retention::drop_expired;
use self::writer::Writer;
use crate::clickhouse::{
    self, ClickHouseError, Client, Endpoint,
    rows::BatchRows,
    schema::{Layout, Retention},
};

/// `podflow collector --clickhouse ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub connect: clickhouse::ConnectArgs,
    /// Name of a `remote_servers` cluster: write through `Distributed` tables over `*_local`
    /// tables on every shard (listed with --clickhouse-shard, where the collector creates them).
    #[arg(
        id = "clickhouse_cluster",
        long = "clickhouse-cluster",
        value_name = "NAME"
    )]
    pub cluster: Option<String>,
    /// HTTP URL of one shard of --clickhouse-cluster (repeat for every shard; the same login).
    #[arg(
        id = "clickhouse_shards",
        long = "clickhouse-shard",
        value_name = "URL",
        requires = "clickhouse_cluster",
        conflicts_with = "clickhouse_replicated"
    )]
    pub shards: Vec<String>,
    /// The cluster is the production layout (deploy/clickhouse/cluster.sql: Replicated tables,
    /// Keeper, 21.8 or later): the DDL runs once, ON CLUSTER, through --clickhouse, and the
    /// tables' TTL does the retention.
    #[arg(
        id = "clickhouse_replicated",
        long = "clickhouse-replicated",
        requires = "clickhouse_cluster"
    )]
    pub replicated: bool,
    /// Rows per INSERT at most.
    #[arg(
        long = "clickhouse-batch-rows",
        default_value_t = 100_000,
        value_name = "N"
    )]
    pub batch_rows: usize,
    /// How long a batch waits for more batches to share its INSERT.
    #[arg(long = "clickhouse-linger", default_value = "500ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub linger: Duration,
    /// Events waiting for ClickHouse at most (then the agents wait and, past their own buffers,
    /// drop and count).
    #[arg(
        long = "clickhouse-buffer",
        default_value_t = 500_000,
        value_name = "EVENTS"
    )]
    pub buffer_records: usize,
    /// Deadline of one request to ClickHouse.
    #[arg(long = "clickhouse-timeout", default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Days the raw flow records are kept.
    #[arg(
        long = "clickhouse-flows-days",
        default_value_t = 7,
        value_name = "DAYS"
    )]
    pub flows_days: u32,
    /// Days the loss records are kept.
    #[arg(
        long = "clickhouse-losses-days",
        default_value_t = 30,
        value_name = "DAYS"
    )]
    pub losses_days: u32,
    /// Days the 5-minute roll-up is kept.
    #[arg(long = "clickhouse-5m-days", default_value_t = 35, value_name = "DAYS")]
    pub rollup_5m_days: u32,
    /// Days the 1-hour roll-up is kept.
    #[arg(
        long = "clickhouse-1h-days",
        default_value_t = 400,
        value_name = "DAYS"
    )]
    pub rollup_1h_days: u32,
}

impl Default for StoreArgs {
    /// The flags' defaults (no ClickHouse).
    fn default() -> Self {
        StoreArgs {
            connect: clickhouse::ConnectArgs {
                database: "podflow".into(),
                user: "default".into(),
                ..Default::default()
            },
            cluster: None,
            shards: Vec::new(),
            replicated: false,
            batch_rows: 100_000,
            linger: Duration::from_millis(500),
            buffer_records: 500_000,
            timeout: Duration::from_secs(30),
            flows_days: 7,
            losses_days: 30,
            rollup_5m_days: 35,
            rollup_1h_days: 400,
        }
    }
}

impl StoreArgs {
    pub fn retention(&self) -> Retention {
        Retention {
            flows_days: self.flows_days,
            losses_days: self.losses_days,
            rollup_5m_days: self.rollup_5m_days,
            rollup_1h_days: self.rollup_1h_days,
        }
    }

    /// The store these flags configure (`None` without `--clickhouse`).
    pub fn config(&self) -> Result<Option<StoreConfig>, StoreError> {
        let Some(endpoint) = self.connect.endpoint().map_err(StoreError::Config)? else {
            return Ok(None);
        };
        let (layout, servers) = match &self.cluster {
            None => (Layout::Single, vec![endpoint.clone()]),
            Some(cluster) if self.replicated => (
                Layout::Replicated {
                    cluster: cluster.clone(),
                },
                vec![endpoint.clone()],
            ),
            Some(_) if self.shards.is_empty() => {
                return Err(StoreError::InvalidConfig(
                    "--clickhouse-cluster needs every shard (--clickhouse-shard URL, repeated) or \
                     --clickhouse-replicated",
                ));
            }
            Some(cluster) => (
                Layout::Sharded {
                    cluster: cluster.clone(),
                },
                self.shards
                    .iter()
                    .map(|url| endpoint.with_addr(url))
                    .collect::<Result<_, _>>()
                    .map_err(StoreError::Config)?,
            ),
        };
        if self.batch_rows == 0 || self.buffer_records == 0 {
            return Err(StoreError::InvalidConfig(
                "--clickhouse-batch-rows and --clickhouse-buffer must be positive",
            ));
        }
        Ok(Some(StoreConfig {
            endpoint,
            layout,
            servers,
            retention: self.retention(),
            batch_rows: self.batch_rows,
            linger: self.linger,
            buffer_records: self.buffer_records,
            timeout: self.timeout,
            retention_interval: Duration::from_secs(3600),
        }))
    }
}

/// What [`Store::spawn`] needs.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where inserts and checks go (the entry server of a cluster).
    pub endpoint: Endpoint,
    pub layout: Layout,
    /// Where the DDL and the partition drops run: the server, or every shard.
    pub servers: Vec<Endpoint>,
    pub retention: Retention,
    pub batch_rows: usize,
    pub linger: Duration,
    pub buffer_records: usize,
    pub timeout: Duration,
    /// How often expired partitions are dropped.
    pub retention_interval: Duration,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid ClickHouse configuration")]
    Config(#[source] ClickHouseError),
    #[error("invalid ClickHouse configuration: {0}")]
    InvalidConfig(&'static str),
    /// The writer task ended (the collector is stopping).
    #[error("the ClickHouse writer stopped")]
    Stopped,
}

/// Counters of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Flow and loss rows ClickHouse accepted.
    pub rows_inserted: u64,
    /// INSERT statements that succeeded.
    pub inserts: u64,
    /// Rows a check found already stored (a retry or a retransmission that was not inserted
    /// again).
    pub rows_already_stored: u64,
    /// Failed requests by cause.
    pub failures: BTreeMap<&'static str, u64>,
    /// The last failure, with ClickHouse's message.
    pub last_error: Option<String>,
    /// Events waiting for ClickHouse.
    pub buffered_records: u64,
    /// Expired partitions dropped.
    pub partitions_dropped: u64,
    /// Columns the migrations added back or anew.
    pub columns_added: u64,
    /// Records whose roll-up rows a partial insert had lost and the collector restored.
    pub rollup_records_restored: u64,
}

impl StoreStats {
    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }
}

struct Job {
    rows: BatchRows,
    check: bool,
    /// When it was handed to the writer (its linger counts from then).
    queued: Instant,
    done: oneshot::Sender<()>,
    _permit: OwnedSemaphorePermit,
}

/// Handle of the writer task.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::UnboundedSender<Job>,
    room: Arc<Semaphore>,
    max_permits: usize,
    stats: Arc<Mutex<StoreStats>>,
}

impl Store {
    /// Starts the writer (which creates or migrates the schema first, retrying until ClickHouse
    /// answers) and the retention task.
    pub fn spawn(cfg: StoreConfig) -> Result<Store, StoreError> {
        let stats = Arc::new(Mutex::new(StoreStats::default()));
        let room = Arc::new(Semaphore::new(cfg.buffer_records));
        let (tx, rx) = mpsc::unbounded_channel();
        let client = Client::new(cfg.endpoint.clone(), cfg.timeout).map_err(StoreError::Config)?;
        let writer = Writer {
            insert_settings: match cfg.layout {
                Layout::Single => vec![],
                _ => vec![("insert_distributed_sync", "1")],
            },
            cfg: cfg.clone(),
            client,
            rx,
            stats: Arc::clone(&stats),
            run: format!(
                "podflow-{:x}-{}",
                crate::time::realtime_ns(),
                std::process::id()
            ),
            group: 0,
            buffers: Default::default(),
        };
        tokio::spawn(writer.run());
        Ok(Store {
            tx,
            max_permits: room.available_permits(),
            room,
            stats,
        })
    }

    /// Hands a batch's rows to the writer, waiting while the buffer is full; the future resolves
    /// once ClickHouse stored them. `check`: the batch may be stored already (see the
    /// module documentation).
    pub fn submit(
        &self,
        rows: BatchRows,
        check: bool,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let room = Arc::clone(&self.room);
        let tx = self.tx.clone();
        let stats = Arc::clone(&self.stats);
        let want = u32::try_from(rows.len().clamp(1, self.max_permits)).unwrap_or(u32::MAX);
        async move {
            let permit = room
                .acquire_many_owned(want)
                .await
                .map_err(|_| StoreError::Stopped)?;
            lock(&stats).buffered_records += rows.len() as u64;
            let (done, stored) = oneshot::channel();
            tx.send(Job {
                rows,
                check,
                queued: Instant::now(),
                done,
                _permit: permit,
            })
            .map_err(|_| StoreError::Stopped)?;
            stored.await.map_err(|_| StoreError::Stopped)
        }
    }

    pub fn stats(&self) -> StoreStats {
        lock(&self.stats).clone()
    }
}

fn lock(stats: &Mutex<StoreStats>) -> std::sync::MutexGuard<'_, StoreStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}
