//! The collector's ClickHouse sink through faults, against real servers (Debian's
//! clickhouse-server 18.16) and the real `podflow collector`: known flow records stream from
//! in-process exporters while the server is killed, frozen, out of disk, or loses a column, or
//! while the collector itself is killed; once healed and drained, ClickHouse holds every record
//! that was acknowledged exactly once (count, packets, one row per idempotency key, the roll-ups
//! agree), the exporters' drops (where a test forces them) are declared in `podflow.losses`, and
//! the collector's log and status name the cause of the failures.
//!
//! Each test has its own server, ports and temporary directory, so they run in parallel.
use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use podflow::{
    export::{self, EXPORT_BUFFER_FULL, ExportStats, ExporterHandle},
    proto::{
        self, ExportAck, ExportBatch, collector_service_client::CollectorServiceClient,
        flow_service_client::FlowServiceClient,
    },
};
use tokio::time::{MissedTickBehavior, sleep, timeout};
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{
    clickhouse::{ClickHouse, Options, Tmpfs, wait_threads},
    export::{ChildCollector, fast_config, flow, free_port, packets_of, send_flows, wait_stats},
};

/// `flow(id, ..)`'s start time is this many ns plus the id: the id of a stored row.
const ID_BASE_NS: u64 = 1_795_439_101_000_000_000;

/// Records sent per tick and exporter, and the tick: 5000 records/s per exporter.
const PER_TICK: u64 = 100;
const TICK: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// The rig: a collector child process storing into one server, its logs, its status.

/// A `podflow collector --clickhouse` child process (restartable on the same port) with its logs
/// in a temporary directory; on a failing test the logs are printed.
struct Rig {
    dir: tempfile::TempDir,
    port: u16,
    args: Vec<String>,
    collector: Option<ChildCollector>,
    logs: Vec<PathBuf>,
}

impl Rig {
    /// Starts a collector storing into `server`, batching for `linger`, with `extra` flags.
    fn start(server: &ClickHouse, linger: &str, extra: &[&str]) -> Rig {
        let mut args: Vec<String> = [
            "--clickhouse",
            &server.http_url(),
            "--clickhouse-linger",
            linger,
            // `flow()`'s records end on 2026-11-23: keep their partitions whatever today is (the
            // retention task runs at every start of a collector).
            "--clickhouse-flows-days",
            "36500",
            "--clickhouse-losses-days",
            "36500",
            "--clickhouse-5m-days",
            "36500",
            "--clickhouse-1h-days",
            "36500",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut rig = Rig {
            dir: tempfile::Builder::new()
                .prefix("podflow-ch-faults-")
                .tempdir()
                .unwrap(),
            port: free_port(),
            args,
            collector: None,
            logs: Vec::new(),
        };
        rig.spawn();
        rig
    }

    fn spawn(&mut self) {
        let path = self
            .dir
            .path()
            .join(format!("collector-{}.log", self.logs.len() + 1));
        let log = std::fs::File::create(&path).unwrap();
        self.logs.push(path);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.collector = Some(ChildCollector::start_logged(self.port, &args, log));
    }

    /// Where the exporters send.
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn collector(&self) -> &ChildCollector {
        self.collector.as_ref().unwrap()
    }

    fn pid(&self) -> u32 {
        self.collector().child.id()
    }

    /// SIGKILL (the collector may be stopped), waited for.
    fn kill9(&mut self) {
        self.collector.take().unwrap().kill9();
    }

    /// Every log of this rig's collectors, in order.
    fn log(&self) -> String {
        self.logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The collector's counters over GetStatus (what `podflow status` prints).
    async fn counters(&self) -> BTreeMap<String, u64> {
        let status = timeout(Duration::from_secs(10), async {
            let mut client = FlowServiceClient::connect(format!("http://{}", self.addr()))
                .await
                .unwrap();
            client
                .get_status(proto::GetStatusRequest {})
                .await
                .unwrap()
                .into_inner()
        })
        .await
        .expect("GetStatus within 10 s");
        status
            .counters
            .into_iter()
            .map(|c| (c.name, c.value))
            .collect()
    }

    /// The counters as `podflow status --server 127.0.0.1:PORT -o json` prints them.
    fn status_cli(&self) -> BTreeMap<String, u64> {
        let out = Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["status", "--server", &self.addr(), "-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podflow status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        status["counters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["value"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// The failures of `cause` are counted (`clickhouse_failures_<cause>` > 0 in `podflow status`)
    /// and logged with their cause; returns the count.
    fn assert_cause(&self, cause: &str, message: &str) -> u64 {
        let counters = self.status_cli();
        let n = counters
            .get(&format!("clickhouse_failures_{cause}"))
            .copied()
            .unwrap_or(0);
        assert!(n > 0, "no {cause} failure counted: {counters:#?}");
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("cause=\"{cause}\"")))
            .unwrap_or_else(|| panic!("no cause=\"{cause}\" in the collector's log"));
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("cause=\"{cause}\"")) && l.contains(message)),
            "no cause=\"{cause}\" line with {message:?} in the log; the first is:\n{line}"
        );
        n
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- collector log (last 60 lines of {}) ---\n{}",
                lines.len(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming known records.

/// Sends [`PER_TICK`] new records to each exporter every [`TICK`] until stopped.
struct Feeder {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl Feeder {
    fn start(exporters: &[(&Arc<ExporterHandle>, &str)]) -> Feeder {
        let stop = Arc::new(AtomicBool::new(false));
        let list: Vec<(Arc<ExporterHandle>, String)> = exporters
            .iter()
            .map(|(e, node)| (Arc::clone(e), (*node).to_owned()))
            .collect();
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut next = vec![0u64; list.len()];
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                for ((exporter, node), next) in list.iter().zip(&mut next) {
                    send_flows(exporter, node, next, PER_TICK);
                }
            }
            next
        });
        Feeder { stop, task }
    }

    /// Stops sending; the records sent to each exporter (ids `0..n`).
    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
    }
}

/// An exporter of `node` to the rig's collector: [`fast_config`], with (batch size, buffer) when
/// given.
fn exporter(rig: &Rig, node: &str, small: Option<(usize, usize)>) -> Arc<ExporterHandle> {
    let mut cfg = fast_config(&rig.addr(), node);
    if let Some((batch_size, buffer_records)) = small {
        cfg.batch_size = batch_size;
        cfg.buffer_records = buffer_records;
    }
    Arc::new(export::spawn(cfg).unwrap())
}

/// Waits until each of the `n` records handed to `exporter` is acknowledged or counted as
/// dropped, and every loss record it made for its drops is acknowledged too.
async fn wait_delivered(
    server: &ClickHouse,
    exporter: &ExporterHandle,
    node: &str,
    n: u64,
    within: Duration,
) -> ExportStats {
    let start = Instant::now();
    let delivered = |s: &ExportStats| {
        s.queue_depth == 0
            && s.acked_records == s.sent_records
            && s.sent_records + s.dropped_total() == n + s.loss_records_sent
    };
    let stats = wait_stats(exporter, within, "every record acknowledged", delivered).await;
    if stats.dropped_total() == 0 {
        return stats;
    }
    // The last drop's loss record may still be waiting for a batch: wait until the losses
    // table declares every drop, then for its ack.
    let dropped = stats.dropped_total();
    loop {
        let declared = one(
            server,
            &format!("SELECT sum(count) FROM podflow.losses WHERE node = '{node}'"),
        );
        if declared >= dropped {
            break;
        }
        assert!(
            start.elapsed() < within,
            "{node}: {declared} of {dropped} drops declared in podflow.losses"
        );
        sleep(Duration::from_millis(100)).await;
    }
    wait_stats(exporter, within, "the loss records acknowledged", delivered).await
}

// ---------------------------------------------------------------------------------------------
// What ClickHouse holds.

/// The numbers of the first row of `sql`'s answer.
fn row(server: &ClickHouse, sql: &str) -> Vec<u64> {
    server
        .query(sql)
        .split_whitespace()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{sql}: {v:?}")))
        .collect()
}

fn one(server: &ClickHouse, sql: &str) -> u64 {
    row(server, sql)[0]
}

fn stored_rows(server: &ClickHouse, node: &str) -> u64 {
    one(
        server,
        &format!("SELECT count() FROM podflow.flows WHERE node = '{node}'"),
    )
}

/// The ids of `node`'s stored flow records, as many times as each is stored.
fn stored_ids(server: &ClickHouse, node: &str) -> Vec<u64> {
    server
        .query(&format!(
            "SELECT start_time_ns - {ID_BASE_NS} FROM podflow.flows WHERE node = '{node}' \
             FORMAT TabSeparated"
        ))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// What one exporter was given: records `0..n` of `node`.
struct Sent<'a> {
    node: &'a str,
    n: u64,
    stats: &'a ExportStats,
}

/// ClickHouse holds each record of `sent` exactly once, except those the exporters dropped
/// (only when `drops_allowed`), which are declared in `podflow.losses`; no idempotency key
/// twice; the roll-ups have the raw totals.
fn assert_stored_exactly(server: &ClickHouse, sent: &[Sent], drops_allowed: bool) {
    let (mut rows, mut packets) = (0u64, 0u64);
    for s in sent {
        let ids = stored_ids(server, s.node);
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{}: {} records stored twice",
            s.node,
            ids.len() - unique.len()
        );
        assert!(
            ids.iter().all(|&id| id < s.n),
            "{}: a record that was never sent",
            s.node
        );
        let dropped = s.stats.dropped_total();
        let buffer_full = s
            .stats
            .dropped_records
            .get(EXPORT_BUFFER_FULL)
            .copied()
            .unwrap_or(0);
        assert_eq!(dropped, buffer_full, "{}: {:?}", s.node, s.stats);
        if !drops_allowed {
            assert_eq!(
                dropped, 0,
                "{}: the exporter dropped: {:?}",
                s.node, s.stats
            );
        }
        assert_eq!(
            ids.len() as u64 + dropped,
            s.n,
            "{}: sent = stored + dropped ({:?})",
            s.node,
            s.stats
        );
        assert_eq!(
            row(
                server,
                &format!(
                    "SELECT sum(count), count() FROM podflow.losses WHERE node = '{}' AND \
                     reason = '{EXPORT_BUFFER_FULL}' AND unit = 'records'",
                    s.node
                )
            ),
            [dropped, s.stats.loss_records_sent],
            "{}: the drops declared in podflow.losses",
            s.node
        );
        let p = packets_of(ids.iter().copied());
        if dropped == 0 {
            assert_eq!(p, packets_of(0..s.n));
        }
        rows += ids.len() as u64;
        packets += p;
    }
    assert_eq!(
        row(server, "SELECT count(), sum(packets) FROM podflow.flows"),
        [rows, packets],
        "podflow.flows: (rows, packets)"
    );
    for table in ["flows", "losses"] {
        assert_eq!(
            one(
                server,
                &format!("SELECT count() - uniqExact(agent_id, seq, idx) FROM podflow.{table}")
            ),
            0,
            "podflow.{table}: an idempotency key twice"
        );
    }
    assert_eq!(
        one(
            server,
            &format!("SELECT count() FROM podflow.losses WHERE reason != '{EXPORT_BUFFER_FULL}'")
        ),
        0,
        "only buffer-full losses"
    );
    // The roll-ups (filled by materialized views on every insert into flows) have the same
    // totals: `flow()`'s records have no reporter, so each one counts. Also after a failure in
    // the middle of an insert, which can keep the flows part and lose the views' parts: the
    // collector then restores the missing roll-up rows (`clickhouse_rollup_records_restored`).
    for rollup in ["flows_5m", "flows_1h"] {
        assert_eq!(
            row(
                server,
                &format!("SELECT sum(packets), sum(records) FROM podflow.{rollup}"),
            ),
            [packets, rows],
            "podflow.{rollup}: (packets, records) against the raw rows"
        );
    }
}

/// Waits until `node` has more than `n` rows stored.
async fn wait_rows_above(server: &ClickHouse, node: &str, n: u64, within: Duration) -> u64 {
    let start = Instant::now();
    loop {
        // Before the collector made the schema: no database yet.
        let rows = server
            .try_query(&format!(
                "SELECT count() FROM podflow.flows WHERE node = '{node}'"
            ))
            .map_or(0, |r| r.trim().parse().unwrap());
        if rows > n {
            return rows;
        }
        assert!(start.elapsed() < within, "{node}: {rows} rows stored");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Inserts into `podflow.flows` by a collector (its query ids end in `-flows`) running now.
fn flow_inserts_running(server: &ClickHouse) -> u64 {
    one(
        server,
        "SELECT count() FROM system.processes WHERE query_id LIKE 'podflow-%-flows'",
    )
}

/// Waits (≤ `within`) until a collector's insert into flows runs; whether one was seen.
async fn wait_insert_running(server: &ClickHouse, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if flow_inserts_running(server) > 0 {
            return true;
        }
        sleep(Duration::from_millis(2)).await;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_killed_and_restarted_mid_stream() {
    if !crate::clickhouse_store::available() {
        return;
    }
    let t0 = Instant::now();
    let mut server = ClickHouse::start();
    let rig = Rig::start(&server, "50ms", &[]);
    let exporter = exporter(&rig, "node-a", None);
    let feeder = Feeder::start(&[(&exporter, "node-a")]);
    wait_rows_above(&server, "node-a", 0, Duration::from_secs(30)).await;
    // Kill it while one of the collector's inserts runs, if one is seen within 2 s.
    let mid_insert = wait_insert_running(&server, Duration::from_secs(2)).await;
    server.kill9();
    let killed = t0.elapsed();
    sleep(Duration::from_secs(3)).await;
    server.restart();
    sleep(Duration::from_secs(2)).await;
    let n = feeder.stop().await[0];
    let stats = wait_delivered(&server, &exporter, "node-a", n, Duration::from_secs(60)).await;
    let drained = t0.elapsed();

    // A kill between the flows part and the roll-ups' parts of an insert loses the latter; the
    // collector restores them (see `assert_stored_exactly`).
    let found = rig.status_cli()["clickhouse_rows_already_stored"];
    let restored = rig.status_cli()["clickhouse_rollup_records_restored"];
    assert_stored_exactly(
        &server,
        &[Sent {
            node: "node-a",
            n,
            stats: &stats,
        }],
        false,
    );
    let connect = rig.assert_cause("connect", "failed to connect to ClickHouse");
    let counters = rig.status_cli();
    eprintln!(
        "killed_and_restarted: {n} records; killed at {killed:?} (mid-insert: {mid_insert}), \
         drained at {drained:?}; connect failures {connect}, http {:?}, rows found already \
         stored {found}, roll-up records restored {restored}",
        counters.get("clickhouse_failures_http"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_for_a_minute() {
    if !crate::clickhouse_store::available() {
        return;
    }
    const COLLECTOR_BUFFER: u64 = 2000;
    const BATCH: u64 = 100;
    let t0 = Instant::now();
    let server = ClickHouse::start();
    let rig = Rig::start(
        &server,
        "50ms",
        &[
            "--clickhouse-timeout",
            "10s",
            "--clickhouse-buffer",
            &COLLECTOR_BUFFER.to_string(),
        ],
    );
    // Two agents with small buffers (3000 records each, up to sixteen batches of 100 records in
    // flight: 3200 together): the collector's 2000 fill up, then the agents' own, which drop and
    // count.
    let a = exporter(&rig, "node-a", Some((BATCH as usize, 3000)));
    let b = exporter(&rig, "node-b", Some((BATCH as usize, 3000)));
    let feeder = Feeder::start(&[(&a, "node-a"), (&b, "node-b")]);
    for e in [&a, &b] {
        wait_stats(e, Duration::from_secs(30), "a first ack", |s| {
            s.acked_records > 0
        })
        .await;
    }

    server.stop_signal();
    let stopped_at = t0.elapsed();
    let (mut max_buffered, mut max_rss) = (0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let c = rig.counters().await;
        max_buffered = max_buffered.max(c["clickhouse_buffered_records"]);
        max_rss = max_rss.max(rss_kib(rig.pid()));
        sleep(Duration::from_millis(200)).await;
    }
    let during = rig.counters().await;
    server.cont_signal();
    sleep(Duration::from_secs(3)).await;
    let sent = feeder.stop().await;
    let within = Duration::from_secs(120);
    let sa = wait_delivered(&server, &a, "node-a", sent[0], within).await;
    let sb = wait_delivered(&server, &b, "node-b", sent[1], within).await;
    let drained = t0.elapsed();

    assert_stored_exactly(
        &server,
        &[
            Sent {
                node: "node-a",
                n: sent[0],
                stats: &sa,
            },
            Sent {
                node: "node-b",
                n: sent[1],
                stats: &sb,
            },
        ],
        true,
    );
    // The agents' buffers overflowed during the minute (and said so).
    assert!(
        sa.dropped_total() > 0 && sb.dropped_total() > 0,
        "{sa:?}\n{sb:?}"
    );
    // They gave up waiting for acks and sent their batches again; the collector waited for the
    // pending ones (acknowledged as duplicates) instead of storing them twice.
    for s in [&sa, &sb] {
        assert!(
            s.retransmitted_records > 0 && s.duplicate_batches > 0,
            "{s:?}"
        );
    }
    // The only rows a check may find stored are those of the insert in flight when the server
    // froze (which it may run once resumed): one group, within the buffer. (Were retransmissions
    // of pending batches stored again, their checks would find every one of them.)
    let found = rig.status_cli()["clickhouse_rows_already_stored"];
    assert!(
        found <= COLLECTOR_BUFFER,
        "{found} rows found already stored"
    );
    // The collector's buffer stayed within its bound, and reached it: the next batch (100
    // records and a loss record at most) did not fit.
    assert!(
        max_buffered <= COLLECTOR_BUFFER && max_buffered > COLLECTOR_BUFFER - 2 * BATCH,
        "clickhouse_buffered_records peaked at {max_buffered}"
    );
    assert!(max_rss < 256 << 10, "collector RSS peaked at {max_rss} KiB");
    // Timeouts, more than once (the insert, then the checks while the server stayed frozen).
    let timeouts = rig.assert_cause("timeout", "no answer from ClickHouse within 10s");
    assert!(timeouts >= 2, "{timeouts} timeouts counted");
    eprintln!(
        "stopped_for_a_minute: sent {sent:?}, dropped {} + {}, stored {} + {}; stopped at \
         {stopped_at:?}, drained at {drained:?}; buffered peak {max_buffered}, RSS peak {max_rss} \
         KiB, timeouts {timeouts}, rows found already stored {found}, during the stop: {:?}",
        sa.dropped_total(),
        sb.dropped_total(),
        sent[0] - sa.dropped_total(),
        sent[1] - sb.dropped_total(),
        during
            .iter()
            .filter(|(k, _)| k.starts_with("clickhouse_"))
            .collect::<BTreeMap<_, _>>(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_disk_full() {
    if !crate::clickhouse_store::available() {
        return;
    }
    let t0 = Instant::now();
    // Declared first, dropped last (after the server).
    let disk = Tmpfs::mount(256);
    let server = ClickHouse::start_with(Options {
        data_dir: Some(disk.path().join("data")),
        ..Options::default()
    });
    let rig = Rig::start(&server, "50ms", &[]);
    let exporter = exporter(&rig, "node-a", None);
    let feeder = Feeder::start(&[(&exporter, "node-a")]);
    wait_rows_above(&server, "node-a", 0, Duration::from_secs(30)).await;
    sleep(Duration::from_secs(1)).await;
    let used = du_kib(disk.path());
    disk.fill();
    let filled_at = t0.elapsed();
    sleep(Duration::from_secs(3)).await;
    disk.unfill();
    sleep(Duration::from_secs(2)).await;
    let n = feeder.stop().await[0];
    let stats = wait_delivered(&server, &exporter, "node-a", n, Duration::from_secs(60)).await;
    let drained = t0.elapsed();

    // The disk may fill up between the flows part and the roll-ups' parts of an insert: see
    // `assert_stored_exactly`.
    let found = rig.status_cli()["clickhouse_rows_already_stored"];
    let restored = rig.status_cli()["clickhouse_rollup_records_restored"];
    assert_stored_exactly(
        &server,
        &[Sent {
            node: "node-a",
            n,
            stats: &stats,
        }],
        false,
    );
    let full = rig.assert_cause("disk_full", "No space left on device");
    eprintln!(
        "disk_full: {n} records; {used} KiB used before the fill at {filled_at:?}, drained at \
         {drained:?}; disk_full failures {full}, rows found already stored {found}, roll-up \
         records restored {restored}"
    );
}

/// Disk use under `path`, KiB (`du -sk`).
fn du_kib(path: &std::path::Path) -> u64 {
    let out = Command::new("du").arg("-sk").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_drift_a_dropped_column_comes_back() {
    if !crate::clickhouse_store::available() {
        return;
    }
    let t0 = Instant::now();
    let server = ClickHouse::start();
    let rig = Rig::start(&server, "50ms", &[]);
    let exporter = exporter(&rig, "node-a", None);
    let feeder = Feeder::start(&[(&exporter, "node-a")]);
    wait_rows_above(&server, "node-a", 0, Duration::from_secs(30)).await;
    let has_column = || {
        one(
            &server,
            "SELECT count() FROM system.columns WHERE database = 'podflow' AND table = 'flows' \
             AND name = 'tcp_flags'",
        )
    };
    // 18.16 has no DROP COLUMN IF EXISTS.
    server.query("ALTER TABLE podflow.flows DROP COLUMN tcp_flags");
    let dropped_at = t0.elapsed();
    assert_eq!(has_column(), 0);
    sleep(Duration::from_secs(3)).await;
    let n = feeder.stop().await[0];
    let stats = wait_delivered(&server, &exporter, "node-a", n, Duration::from_secs(60)).await;
    let drained = t0.elapsed();

    assert_eq!(has_column(), 1, "tcp_flags was not added back");
    assert_stored_exactly(
        &server,
        &[Sent {
            node: "node-a",
            n,
            stats: &stats,
        }],
        false,
    );
    let schema = rig.assert_cause("schema", "No such column tcp_flags");
    let counters = rig.status_cli();
    assert!(
        counters["clickhouse_columns_added"] >= 1,
        "{:?}",
        counters["clickhouse_columns_added"]
    );
    assert!(
        rig.log().contains("flows.tcp_flags"),
        "the log does not name the column it added"
    );
    eprintln!(
        "schema_drift: {n} records; column dropped at {dropped_at:?}, drained at {drained:?}; \
         schema failures {schema}, columns added {}",
        counters["clickhouse_columns_added"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_after_storing_is_not_stored_twice() {
    if !crate::clickhouse_store::available() {
        return;
    }
    const ATTEMPTS: u32 = 40;
    let t0 = Instant::now();
    let server = ClickHouse::start();
    // Inserts of ~5000 rows (1 s of records) take long enough to be seen running.
    let mut rig = Rig::start(&server, "1s", &[]);
    let exporter = exporter(&rig, "node-a", None);
    let feeder = Feeder::start(&[(&exporter, "node-a")]);
    wait_stats(&exporter, Duration::from_secs(30), "a first ack", |s| {
        s.acked_records > 0
    })
    .await;

    // The window: rows ClickHouse stored that the agent has no ack for. Freeze the collector
    // (SIGSTOP) while one of its inserts runs, let the server finish it, and look: when stored >
    // acked, kill it there (SIGKILL of the frozen process: a crash at the moment it froze);
    // otherwise let it go on and try again.
    let mut hit = None;
    for attempt in 1..=ATTEMPTS {
        let running = wait_insert_running(&server, Duration::from_secs(3)).await;
        let pid = rig.pid();
        rig.collector().signal(libc::SIGSTOP);
        wait_threads(pid, &format!("pid {pid}"), "stopped", |s| s == 'T');
        let start = Instant::now();
        while flow_inserts_running(&server) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "insert never ended"
            );
            sleep(Duration::from_millis(5)).await;
        }
        // Acks the collector sent before it froze reach the agent.
        sleep(Duration::from_millis(200)).await;
        let stored = stored_rows(&server, "node-a");
        let acked = exporter.stats().acked_records;
        if stored > acked {
            hit = Some((attempt, running, stored, acked));
            break;
        }
        rig.collector().signal(libc::SIGCONT);
        wait_threads(pid, &format!("pid {pid}"), "resumed", |s| s != 'T');
        sleep(Duration::from_millis(100 + u64::from(attempt) * 37 % 400)).await;
    }
    rig.kill9();
    let killed_at = t0.elapsed();
    // Nothing more is acknowledged or stored for the dead collector.
    sleep(Duration::from_millis(300)).await;
    let stored_at_kill = stored_rows(&server, "node-a");
    let acked_at_kill = exporter.stats().acked_records;
    rig.spawn();
    sleep(Duration::from_secs(2)).await;
    let n = feeder.stop().await[0];
    let stats = wait_delivered(&server, &exporter, "node-a", n, Duration::from_secs(60)).await;
    let drained = t0.elapsed();

    assert_stored_exactly(
        &server,
        &[Sent {
            node: "node-a",
            n,
            stats: &stats,
        }],
        false,
    );
    // The agent sent its unacknowledged batches again, flagged; the new collector found the
    // stored ones in ClickHouse: exactly the rows stored and not acknowledged at the kill.
    assert!(stats.retransmitted_records > 0, "{stats:?}");
    let found = rig.status_cli()["clickhouse_rows_already_stored"];
    assert_eq!(
        found,
        stored_at_kill - acked_at_kill,
        "rows found already stored (stored {stored_at_kill}, acked {acked_at_kill} at the kill)"
    );
    match hit {
        Some((attempt, running, stored, acked)) => eprintln!(
            "collector_killed: window hit at attempt {attempt} (insert seen running: {running}): \
             {stored} rows stored, {acked} acked; killed at {killed_at:?}, drained at \
             {drained:?}; {n} records, {found} found already stored by the new collector"
        ),
        None => eprintln!(
            "collector_killed: window NOT hit in {ATTEMPTS} attempts; killed at {killed_at:?}, \
             drained at {drained:?}; {n} records"
        ),
    }
    assert!(
        hit.is_some(),
        "the stored-but-unacknowledged window was not hit"
    );
}

/// Sends `batch` on a stream of its own and returns its ack (the stream stays open until then:
/// the collector owes no ack on a closed stream).
async fn export_one(port: u16, batch: ExportBatch) -> ExportAck {
    timeout(Duration::from_secs(30), async {
        let mut client = CollectorServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(batch).await.unwrap();
        let mut acks = client
            .export(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let ack = acks.message().await.unwrap().unwrap();
        drop(tx);
        ack
    })
    .await
    .expect("an ack within 30 s")
}

/// An agent that does not flag its retransmissions (older than the `retransmission` field) and
/// resends a batch to a new collector after the previous one stored it: the new collector has
/// no record of the agent and the batch's sequence number is past 1, so it checks ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unflagged_resend_to_a_new_collector_is_checked() {
    if !crate::clickhouse_store::available() {
        return;
    }
    let server = ClickHouse::start();
    let mut rig = Rig::start(&server, "50ms", &[]);
    let batch = ExportBatch {
        agent_id: "node-old/1-1".into(),
        node: "node-old".into(),
        version: "0.0.1".into(),
        seq: 3,
        events: ExportBatch::encode_events(
            &(0..50).map(|id| flow(id, "node-old")).collect::<Vec<_>>(),
        ),
        sent_time: None,
        retransmission: false,
    };
    let ack = export_one(rig.port, batch.clone()).await;
    assert_eq!((ack.seq, ack.duplicate), (3, false));
    assert_eq!(stored_rows(&server, "node-old"), 50);
    rig.kill9();
    rig.spawn();
    let ack = export_one(rig.port, batch).await;
    assert_eq!(ack.seq, 3);
    let counters = rig.status_cli();
    assert_eq!(
        (
            stored_rows(&server, "node-old"),
            counters["clickhouse_rows_already_stored"]
        ),
        (50, 50),
        "stored rows, rows found already stored"
    );
}
