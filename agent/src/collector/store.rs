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
use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::BytesMut;
use thiserror::Error;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};
use tracing::{info, warn};

use crate::{
    clickhouse::{
        self, ClickHouseError, Client, Endpoint,
        rows::{self, Rows},
        schema::{self, Granularity, Layout, Retention},
    },
    proto::{self, flow_event::Event},
    report::error_chain,
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
    agent_id: String,
    seq: u64,
    events: Vec<proto::FlowEvent>,
    check: bool,
    /// When it was handed to the writer (its linger counts from then).
    queued: Instant,
    done: oneshot::Sender<Vec<proto::FlowEvent>>,
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

    /// Hands a batch to the writer, waiting while the buffer is full; the future resolves with
    /// the events once ClickHouse stored them. `check`: the batch may be stored already (see the
    /// module documentation).
    pub fn submit(
        &self,
        agent_id: String,
        seq: u64,
        events: Vec<proto::FlowEvent>,
        check: bool,
    ) -> impl std::future::Future<Output = Result<Vec<proto::FlowEvent>, StoreError>> + Send + 'static
    {
        let room = Arc::clone(&self.room);
        let tx = self.tx.clone();
        let stats = Arc::clone(&self.stats);
        let want = u32::try_from(events.len().clamp(1, self.max_permits)).unwrap_or(u32::MAX);
        async move {
            let permit = room
                .acquire_many_owned(want)
                .await
                .map_err(|_| StoreError::Stopped)?;
            lock(&stats).buffered_records += events.len() as u64;
            let (done, stored) = oneshot::channel();
            tx.send(Job {
                agent_id,
                seq,
                events,
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

struct Writer {
    cfg: StoreConfig,
    client: Client,
    rx: mpsc::UnboundedReceiver<Job>,
    stats: Arc<Mutex<StoreStats>>,
    insert_settings: Vec<(&'static str, &'static str)>,
    /// Prefix of this process's query ids.
    run: String,
    group: u64,
    /// The RowBinary buffers (flows, losses) of the last insert, empty, kept for the next one:
    /// once its request is done, `reserve` takes the allocation back instead of faulting in and
    /// zeroing fresh pages for every insert (tens of MB at the default --clickhouse-batch-rows).
    buffers: (BytesMut, BytesMut),
}

const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Writer {
    async fn run(mut self) {
        self.migrate_until_done().await;
        // Partitions are dropped once the tables exist (by their TTL in the replicated layout).
        if !matches!(self.cfg.layout, Layout::Replicated { .. }) {
            tokio::spawn(retention_task(self.cfg.clone(), Arc::clone(&self.stats)));
        }
        while let Some(first) = self.rx.recv().await {
            let mut rows = first.events.len();
            // From the first batch's arrival, not from now: batches that queued up during the
            // previous insert have waited already, and go at once with everything queued behind
            // them. (Lingering again after each insert made a cycle insert + linger, which bounds
            // the rate at the agents' unacknowledged batches ÷ that cycle: 64 000 records of 4
            // agents ÷ ~1 s, whatever the CPU left.)
            let deadline = first.queued + self.cfg.linger;
            let mut group = vec![first];
            while rows < self.cfg.batch_rows {
                tokio::select! {
                    // Queued batches first, the deadline once none is left.
                    biased;
                    job = self.rx.recv() => match job {
                        Some(job) => {
                            rows += job.events.len();
                            group.push(job);
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.store(&group).await;
            let mut stats = lock(&self.stats);
            for job in group {
                stats.buffered_records = stats
                    .buffered_records
                    .saturating_sub(job.events.len() as u64);
                let _ = job.done.send(job.events);
            }
        }
    }

    async fn migrate_until_done(&mut self) {
        let mut backoff = BACKOFF_INITIAL;
        while let Err(err) = self.migrate().await {
            self.failed("schema migration", err_cause(&err), &error_chain(&err));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn migrate(&mut self) -> Result<(), schema::SchemaError> {
        for server in self.cfg.servers.clone() {
            let mut client = Client::new(server.clone(), self.cfg.timeout)
                .map_err(|source| schema::SchemaError::Version { source })?;
            let migration =
                schema::migrate(&mut client, &self.cfg.layout, &self.cfg.retention).await?;
            if !migration.added_columns.is_empty() {
                warn!(server = %server.addr, columns = ?migration.added_columns, "clickhouse: added missing columns");
                lock(&self.stats).columns_added += migration.added_columns.len() as u64;
            }
        }
        info!(layout = ?self.cfg.layout, "clickhouse schema ready");
        Ok(())
    }

    fn failed(&self, what: &str, cause: &'static str, message: &str) {
        warn!(cause, error = %message, "clickhouse {what} failed, retrying");
        let mut stats = lock(&self.stats);
        *stats.failures.entry(cause).or_default() += 1;
        stats.last_error = Some(format!("{what}: {message}"));
    }

    /// Stores every job of the group, retrying until it succeeds.
    async fn store(&mut self, group: &[Job]) {
        self.group += 1;
        let mut uncertain = false;
        let mut backoff = BACKOFF_INITIAL;
        loop {
            match self.attempt(group, uncertain).await {
                Ok(()) => return,
                Err(err) => {
                    self.failed("insert", err.cause(), &error_chain(&err));
                    if err.is_schema() {
                        self.migrate_until_done().await;
                    }
                    uncertain |= !err.nothing_sent();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn attempt(&mut self, group: &[Job], uncertain: bool) -> Result<(), ClickHouseError> {
        let checked: Vec<&Job> = group.iter().filter(|j| uncertain || j.check).collect();
        let stored = if checked.is_empty() {
            HashSet::new()
        } else {
            self.wait_for_own_inserts().await?;
            self.stored_keys(&checked).await?
        };
        let mut rows = Rows {
            flows: std::mem::take(&mut self.buffers.0),
            losses: std::mem::take(&mut self.buffers.1),
            ..Rows::default()
        };
        for job in group {
            rows.push_batch(&job.agent_id, job.seq, &job.events, |idx| {
                stored.contains(&(job.agent_id.as_str(), job.seq, idx))
            });
        }
        if !stored.is_empty() {
            lock(&self.stats).rows_already_stored += stored.len() as u64;
            info!(
                rows = stored.len(),
                "clickhouse: rows already stored, not inserted again"
            );
        }
        // The buckets the rows found stored fall in: a previous attempt stored them in `flows`,
        // maybe without their roll-up rows (see `reconcile_rollups`).
        let stored_span = stored_span(group, &stored);
        let database = self.cfg.endpoint.database.clone();
        let group_id = self.group;
        for (table, data, count) in [
            ("flows", &mut rows.flows, rows.flow_rows),
            ("losses", &mut rows.losses, rows.loss_rows),
        ] {
            if count == 0 {
                continue;
            }
            let sql = rows::insert_sql(
                &database,
                table,
                if table == "flows" {
                    &schema::FLOW_COLUMNS
                } else {
                    &schema::LOSS_COLUMNS
                },
            );
            let query_id = format!("{}-{group_id}-{table}", self.run);
            let mut settings = self.insert_settings.clone();
            settings.push(("query_id", &query_id));
            // The rows leave `data` empty, on the same allocation (see `buffers`).
            self.client
                .query(&sql, Some(data.split().freeze()), &settings)
                .await?;
            let mut stats = lock(&self.stats);
            stats.rows_inserted += count as u64;
            stats.inserts += 1;
        }
        self.buffers = (rows.flows, rows.losses);
        if let Some((from, to)) = stored_span {
            self.reconcile_rollups(from, to).await?;
        }
        Ok(())
    }

    /// Brings the roll-ups of the buckets in `[from, to]` (seconds) back to the raw rows' sums.
    ///
    /// ClickHouse writes an INSERT's `flows` part before its materialized views' parts, not
    /// atomically: a server killed (or a disk filling up) in between keeps the raw rows and loses
    /// their roll-up rows, and the retry finds the raw rows stored and skips them. So after every
    /// check that found rows stored, the collector compares, per bucket and roll-up key, the raw
    /// counted sums with the roll-up's and inserts the difference (the roll-ups never hold more
    /// than the raw rows: every row is stored once). This writer inserts nothing meanwhile; an
    /// insert of another collector into the same buckets between its raw and its view parts
    /// (milliseconds) would be counted twice in the roll-up: a known limit with several
    /// collectors.
    async fn reconcile_rollups(&mut self, from: u32, to: u32) -> Result<(), ClickHouseError> {
        let database = self.cfg.endpoint.database.clone();
        let keys = schema::rollup_keys().collect::<Vec<_>>().join(", ");
        let mut added = 0u64;
        for (table, bucket, len) in schema::ROLLUP_BUCKETS {
            let lo = from / len * len;
            let hi = (to / len + 1).saturating_mul(len);
            let raw = self
                .client
                .query(
                    &format!(
                        "SELECT {bucket} AS t, {keys}, sum(packets * sampling_rate), \
                         sum(bytes * sampling_rate), count() FROM {database}.flows WHERE \
                         counted = 1 AND end_time >= toDateTime({lo}) AND end_time < \
                         toDateTime({hi}) GROUP BY t, {keys} FORMAT TabSeparated"
                    ),
                    None,
                    &[],
                )
                .await?;
            let rolled = self
                .client
                .query(
                    &format!(
                        "SELECT t, {keys}, sum(packets), sum(bytes), sum(records) FROM \
                         {database}.{table} WHERE t >= toDateTime({lo}) AND t < toDateTime({hi}) \
                         GROUP BY t, {keys} FORMAT TabSeparated"
                    ),
                    None,
                    &[],
                )
                .await?;
            let missing = rollup_deficit(
                &String::from_utf8_lossy(&raw),
                &String::from_utf8_lossy(&rolled),
            );
            if missing.rows == 0 {
                continue;
            }
            self.client
                .query(
                    &format!(
                        "INSERT INTO {database}.{table} (t, {keys}, packets, bytes, records) \
                         FORMAT TabSeparated"
                    ),
                    Some(bytes::Bytes::from(missing.tsv)),
                    &self.insert_settings.clone(),
                )
                .await?;
            // The same records' rows in each roll-up: counted once.
            added = added.max(missing.records);
            warn!(
                table,
                records = missing.records,
                "clickhouse: roll-up rows restored after a partial insert"
            );
        }
        lock(&self.stats).rollup_records_restored += added;
        Ok(())
    }

    /// Waits (bounded by the request deadline) until no insert of this process runs on the
    /// server: one that timed out on our side may still be executing there.
    async fn wait_for_own_inserts(&mut self) -> Result<(), ClickHouseError> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            let running = self
                .client
                .query(
                    &format!(
                        "SELECT count() FROM system.processes WHERE query_id LIKE '{}-%'",
                        self.run
                    ),
                    None,
                    &[],
                )
                .await?;
            if String::from_utf8_lossy(&running).trim() == "0" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClickHouseError::Timeout(self.cfg.timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The keys `(agent_id, seq, idx)` of `jobs` that are stored (flows and losses).
    async fn stored_keys<'a>(
        &mut self,
        jobs: &[&'a Job],
    ) -> Result<HashSet<(&'a str, u64, u32)>, ClickHouseError> {
        let database = self.cfg.endpoint.database.clone();
        let mut keys = String::new();
        let (mut min, mut max) = (u32::MAX, 0u32);
        for (i, job) in jobs.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(keys, "{sep}({}, {})", sql_string(&job.agent_id), job.seq);
            for event in &job.events {
                let t = match &event.event {
                    Some(Event::Flow(f)) => f.end_time.as_ref(),
                    Some(Event::Loss(l)) => l.time.as_ref(),
                    None => None,
                };
                let secs = t.map_or(0, |t| u32::try_from(t.seconds).unwrap_or(0));
                min = min.min(secs);
                max = max.max(secs);
            }
        }
        let mut stored = HashSet::new();
        for (table, time) in [("flows", "end_time"), ("losses", "time")] {
            // The time bounds prune the partitions a batch cannot be in.
            let sql = format!(
                "SELECT agent_id, seq, idx FROM {database}.{table} WHERE {time} >= \
                 toDateTime({min}) AND {time} <= toDateTime({max}) AND (agent_id, seq) IN \
                 ({keys}) FORMAT TabSeparated"
            );
            let answer = self.client.query(&sql, None, &[]).await?;
            for line in String::from_utf8_lossy(&answer).lines() {
                let mut fields = line.split('\t');
                let (Some(agent), Some(seq), Some(idx)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                let (Ok(seq), Ok(idx)) = (seq.parse::<u64>(), idx.parse::<u32>()) else {
                    continue;
                };
                let agent = unescape_tsv(agent);
                if let Some(job) = jobs.iter().find(|j| j.agent_id == agent && j.seq == seq) {
                    stored.insert((job.agent_id.as_str(), seq, idx));
                }
            }
        }
        Ok(stored)
    }
}

/// The smallest and largest time (seconds) of the rows of `group` found `stored`.
fn stored_span(group: &[Job], stored: &HashSet<(&str, u64, u32)>) -> Option<(u32, u32)> {
    let mut span: Option<(u32, u32)> = None;
    for job in group {
        for (idx, event) in job.events.iter().enumerate() {
            let idx = u32::try_from(idx).unwrap_or(u32::MAX);
            if !stored.contains(&(job.agent_id.as_str(), job.seq, idx)) {
                continue;
            }
            let Some(Event::Flow(f)) = &event.event else {
                continue;
            };
            let t = f
                .end_time
                .as_ref()
                .map_or(0, |t| u32::try_from(t.seconds).unwrap_or(0));
            span = Some(span.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
        }
    }
    span
}

/// The roll-up rows missing: per (bucket, key) line, raw sums less rolled-up sums.
#[derive(Debug, Default, PartialEq, Eq)]
struct Deficit {
    /// `t, keys..., packets, bytes, records` lines (TabSeparated, as the server wrote them).
    tsv: String,
    rows: usize,
    records: u64,
}

/// Compares two TabSeparated answers of `t, keys..., packets, bytes, records`.
fn rollup_deficit(raw: &str, rolled: &str) -> Deficit {
    let split = |line: &str| -> Option<(String, [u64; 3])> {
        let mut fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 4 {
            return None;
        }
        let sums = fields.split_off(fields.len() - 3);
        let mut out = [0u64; 3];
        for (o, v) in out.iter_mut().zip(sums) {
            *o = v.parse().ok()?;
        }
        Some((fields.join("\t"), out))
    };
    let have: std::collections::HashMap<String, [u64; 3]> =
        rolled.lines().filter_map(split).collect();
    let mut deficit = Deficit::default();
    for (key, sums) in raw.lines().filter_map(split) {
        let got = have.get(&key).copied().unwrap_or_default();
        let diff = [0, 1, 2].map(|i| sums[i].saturating_sub(got[i]));
        if diff.iter().any(|d| *d > 0) {
            let _ = writeln!(deficit.tsv, "{key}\t{}\t{}\t{}", diff[0], diff[1], diff[2]);
            deficit.rows += 1;
            deficit.records += diff[2];
        }
    }
    deficit
}

fn err_cause(err: &schema::SchemaError) -> &'static str {
    match err {
        schema::SchemaError::Version { source } | schema::SchemaError::Ddl { source, .. } => {
            source.cause()
        }
        schema::SchemaError::Drift { .. } => "schema",
    }
}

/// A string literal for ClickHouse SQL.
pub fn sql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A TabSeparated field as text.
fn unescape_tsv(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Drops expired partitions on every server, now and every `retention_interval`.
async fn retention_task(cfg: StoreConfig, stats: Arc<Mutex<StoreStats>>) {
    loop {
        for server in &cfg.servers {
            let Ok(mut client) = Client::new(server.clone(), cfg.timeout) else {
                continue;
            };
            let today = crate::time::realtime_ns() / 1_000_000_000 / 86_400;
            match drop_expired(&mut client, &cfg.layout, &cfg.retention, today).await {
                Ok(dropped) if !dropped.is_empty() => {
                    info!(server = %server.addr, ?dropped, "clickhouse: dropped expired partitions");
                    lock(&stats).partitions_dropped += dropped.len() as u64;
                }
                Ok(_) => {}
                Err(err) => {
                    warn!(server = %server.addr, error = %error_chain(&err), "clickhouse: dropping expired partitions failed");
                }
            }
        }
        tokio::time::sleep(cfg.retention_interval).await;
    }
}

/// Drops the partitions of `server` whose every day is older than the table's retention
/// (`today`: days since the epoch); returns `table/partition` of each.
pub async fn drop_expired(
    client: &mut Client,
    layout: &Layout,
    retention: &Retention,
    today: u64,
) -> Result<Vec<String>, ClickHouseError> {
    let database = client.endpoint().database.clone();
    let mut dropped = Vec::new();
    for (public, granularity, days) in schema::partitioned_tables() {
        let table = layout.local(public);
        let answer = client
            .query(
                &format!(
                    "SELECT DISTINCT partition FROM system.parts WHERE database = '{database}' \
                     AND table = '{table}' AND active FORMAT TabSeparated"
                ),
                None,
                &[],
            )
            .await?;
        let keep_from = today.saturating_sub(u64::from(days(retention)));
        for partition in String::from_utf8_lossy(&answer).lines() {
            let partition = partition.trim().trim_matches('\'');
            let Some(last_day) = partition_last_day(partition, granularity) else {
                continue;
            };
            if last_day < keep_from {
                client
                    .execute(&format!(
                        "ALTER TABLE {database}.{table} DROP PARTITION {partition}"
                    ))
                    .await?;
                dropped.push(format!("{table}/{partition}"));
            }
        }
    }
    Ok(dropped)
}

/// The last day (days since the epoch) of partition `20261207` (day) or `202612` (month).
fn partition_last_day(partition: &str, granularity: Granularity) -> Option<u64> {
    if !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = partition.parse().ok()?;
    let (year, month, day) = match granularity {
        Granularity::Day => (n / 10_000, (n / 100) % 100, Some(n % 100)),
        Granularity::Month => (n / 100, n % 100, None),
    };
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let year = i32::try_from(year).ok()?;
    let day = match day {
        Some(d) => u8::try_from(d).ok()?,
        None => time::util::days_in_month(month, year),
    };
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let epoch = time::Date::from_calendar_date(1970, time::Month::January, 1).ok()?;
    u64::try_from((date - epoch).whole_days()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_expire_after_their_last_day() {
        // 2026-12-07 is day 20794.
        assert_eq!(
            partition_last_day("20261207", Granularity::Day),
            Some(20_794)
        );
        assert_eq!(
            partition_last_day("202612", Granularity::Month),
            Some(20_818)
        );
        assert_eq!(
            partition_last_day("202602", Granularity::Month),
            Some(20_512)
        );
        assert_eq!(partition_last_day("tuple()", Granularity::Day), None);
        assert_eq!(partition_last_day("20261340", Granularity::Day), None);
    }

    #[test]
    fn rollup_deficits_are_raw_less_rolled_up() {
        let raw = "2026-12-07 10:00:00\tshop\tweb\t1\t100\t10000\t3\n\
                   2026-12-07 10:00:00\tshop\tdb\t0\t5\t500\t1\n";
        let rolled = "2026-12-07 10:00:00\tshop\tweb\t1\t60\t6000\t2\n";
        let d = rollup_deficit(raw, rolled);
        assert_eq!(
            d.tsv,
            "2026-12-07 10:00:00\tshop\tweb\t1\t40\t4000\t1\n\
             2026-12-07 10:00:00\tshop\tdb\t0\t5\t500\t1\n"
        );
        assert_eq!((d.rows, d.records), (2, 2));
        assert_eq!(rollup_deficit(raw, raw), Deficit::default());
    }

    #[test]
    fn sql_strings_round_trip() {
        assert_eq!(sql_string("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(unescape_tsv("node\\tone\\\\x"), "node\tone\\x");
    }
}
