//! The writer task: groups the batches of every agent into INSERTs, retries until ClickHouse
//! has them, and makes a retry a no-op (check which idempotency keys are stored, insert the
//! others).
use std::{
    collections::HashSet,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{sync::mpsc, time::Instant};
use tracing::{info, warn};

use super::{Job, StoreConfig, StoreStats, lock, retention::retention_task};
use crate::{
    clickhouse::{
        ClickHouseError, Client,
        rows::{self, Rows},
        schema::{self, Layout},
    },
    report::error_chain,
};

pub(super) struct Writer {
    pub(super) cfg: StoreConfig,
    pub(super) client: Client,
    pub(super) rx: mpsc::UnboundedReceiver<Job>,
    pub(super) stats: Arc<Mutex<StoreStats>>,
    pub(super) insert_settings: Vec<(&'static str, &'static str)>,
    /// Prefix of this process's query ids.
    pub(super) run: String,
    pub(super) group: u64,
    /// The RowBinary buffers (flows, losses) of the last insert, empty, kept for the next one:
    /// once its request is done, `reserve` takes the allocation back instead of faulting in and
    /// zeroing fresh pages for every insert (tens of MB at the default --clickhouse-batch-rows).
    pub(super) buffers: (BytesMut, BytesMut),
}

const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Writer {
    pub(super) async fn run(mut self) {
        self.migrate_until_done().await;
        // Partitions are dropped once the tables exist (by their TTL in the replicated layout).
        if !matches!(self.cfg.layout, Layout::Replicated { .. }) {
            tokio::spawn(retention_task(self.cfg.clone(), Arc::clone(&self.stats)));
        }
        while let Some(first) = self.rx.recv().await {
            let mut rows = first.rows.len();
            // The linger counts from the first batch's arrival, not from now: a batch that queued
            // up during the previous insert has waited already, and goes with everything queued
            // behind it (it used to wait for the insert and then a whole linger more, against
            // --clickhouse-linger's meaning).
            let deadline = first.queued + self.cfg.linger;
            let mut group = vec![first];
            while rows < self.cfg.batch_rows {
                tokio::select! {
                    // Queued batches first, the deadline once none is left.
                    biased;
                    job = self.rx.recv() => match job {
                        Some(job) => {
                            rows += job.rows.len();
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
                stats.buffered_records =
                    stats.buffered_records.saturating_sub(job.rows.len() as u64);
                let _ = job.done.send(());
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
            let (agent, seq) = (job.rows.agent_id.as_str(), job.rows.seq);
            rows.push_batch(&job.rows, |idx| stored.contains(&(agent, seq, idx)));
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
            let _ = write!(
                keys,
                "{sep}({}, {})",
                sql_string(&job.rows.agent_id),
                job.rows.seq
            );
            for m in job.rows.marks() {
                min = min.min(m.time);
                max = max.max(m.time);
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
                if let Some(job) = jobs
                    .iter()
                    .find(|j| j.rows.agent_id == agent && j.rows.seq == seq)
                {
                    stored.insert((job.rows.agent_id.as_str(), seq, idx));
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
        let (agent, seq) = (job.rows.agent_id.as_str(), job.rows.seq);
        for m in &job.rows.flow_marks {
            if stored.contains(&(agent, seq, m.idx)) {
                let t = m.time;
                span = Some(span.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
            }
        }
    }
    span
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_strings_round_trip() {
        assert_eq!(sql_string("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(unescape_tsv("node\\tone\\\\x"), "node\tone\\x");
    }
}
