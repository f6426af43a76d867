//! Agent export → collector → ClickHouse: sustained flow records per second stored, and the CPU
//! per record of the collector, of ClickHouse and of the exporters, over several windows.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, ensure};
use podflow_testbed::{
    clickhouse::{self, ClickHouse, Options},
    wait_for,
};

use crate::{
    collector::{
        Collector,
        load::{Load, LoadConfig},
    },
    harness::{ChildGuard, check_stop, log, machine_cpu_ns, process_cpu_ns, sleep},
    opts::Opts,
};

/// The windows' figures (one sample per window) and the run's end-to-end check.
#[derive(Debug, Clone, Default)]
pub struct CollectorFigures {
    /// Flow rows that reached ClickHouse per second (Δ `count()` of `podflow.flows`).
    pub stored_per_s: Vec<f64>,
    /// Records the exporters had acknowledged per second (acknowledged means stored).
    pub acked_per_s: Vec<f64>,
    /// CPU µs per stored record: the collector, ClickHouse, the exporters (this process).
    pub collector_us: Vec<f64>,
    pub clickhouse_us: Vec<f64>,
    pub exporters_us: Vec<f64>,
    /// CPUs used on average (CPU seconds per second): the collector, ClickHouse, the exporters,
    /// and the whole machine (busy, of all its CPUs).
    pub collector_cpus: Vec<f64>,
    pub clickhouse_cpus: Vec<f64>,
    pub exporters_cpus: Vec<f64>,
    pub machine_busy_pct: Vec<f64>,
    /// CPUs the rest of the machine used (busy less the three above): other work competing.
    pub other_cpus: Vec<f64>,
    /// Rows per INSERT the collector made in the window.
    pub rows_per_insert: Vec<f64>,
    /// End of the run, after the exporters drained: rows in ClickHouse, records acknowledged,
    /// records the exporters dropped, rows stored twice.
    pub total_stored: u64,
    pub total_acked: u64,
    pub dropped: u64,
    pub duplicates: u64,
    /// What the windows were measured with.
    pub setup: String,
}

/// Readings at one instant.
struct Reading {
    at: Instant,
    stored: u64,
    acked: u64,
    collector_ns: u64,
    clickhouse_ns: u64,
    exporters_ns: u64,
    machine: (u64, u64),
    rows_inserted: u64,
    inserts: u64,
}

/// Starts ClickHouse and the collector, feeds the exporters for a warm-up and `o.collector_windows`
/// windows of `o.collector_secs`, then drains them and checks every record arrived exactly once.
pub fn run(o: &Opts) -> anyhow::Result<CollectorFigures> {
    ensure!(
        clickhouse::installed(),
        "{} is not installed (`cargo xtask setup` installs it)",
        clickhouse::SERVER
    );
    let ch = ClickHouse::try_start(Options::default())
        .map_err(|e| anyhow!("starting clickhouse-server: {e}"))?;
    let mut collector = Collector::start(&o.podflow, &ch.http_url(), &o.collector_args)?;
    // The collector creates the schema once ClickHouse answers.
    let ready = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
        query(&ch, "EXISTS TABLE podflow.flows")
            .ok()
            .filter(|a| a.trim() == "1")
    });
    check_stop()?;
    ensure!(
        ready.is_some(),
        "the collector did not create podflow.flows within 30 s; log:\n{}",
        collector.log()
    );
    let cfg = LoadConfig {
        exporters: o.exporters,
        batch_size: o.export_batch,
        compression: o.export_compression,
    };
    let mut f = CollectorFigures {
        setup: format!(
            "{} exporters (batches of {}, {:?} compression, 100 000-record buffers), collector{}",
            cfg.exporters,
            cfg.batch_size,
            cfg.compression,
            if o.collector_args.is_empty() {
                " with its defaults".to_string()
            } else {
                format!(" {}", o.collector_args.join(" "))
            }
        )
        .to_lowercase(),
        ..CollectorFigures::default()
    };
    log(format!(
        "collector: {}; warm-up {} s",
        f.setup, o.collector_warmup_secs
    ));
    let load = Load::start(collector.addr(), cfg)?;
    sleep(Duration::from_secs(u64::from(o.collector_warmup_secs)))?;
    for w in 0..o.collector_windows {
        check_stop()?;
        let mut perf = perf_record(collector.pid(), w, o.collector_secs)?;
        let a = read(&ch, &collector, &load)?;
        sleep(Duration::from_secs(u64::from(o.collector_secs)))?;
        let b = read(&ch, &collector, &load)?;
        if let Some(c) = perf.as_mut().and_then(ChildGuard::get_mut) {
            let _ = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
                c.try_wait().ok().flatten()
            });
        }
        drop(perf);
        ensure!(
            collector.alive(),
            "the collector exited; log:\n{}",
            collector.log()
        );
        let secs = (b.at - a.at).as_secs_f64();
        let stored = b.stored.saturating_sub(a.stored);
        ensure!(
            stored > 0,
            "no rows reached ClickHouse in {secs:.1} s; collector log:\n{}\n{}",
            collector.log(),
            ch.log_tail(20)
        );
        let per = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / 1e3 / stored as f64;
        let cpus = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / 1e9 / secs;
        f.stored_per_s.push(stored as f64 / secs);
        f.acked_per_s
            .push(b.acked.saturating_sub(a.acked) as f64 / secs);
        f.collector_us.push(per(a.collector_ns, b.collector_ns));
        f.clickhouse_us.push(per(a.clickhouse_ns, b.clickhouse_ns));
        f.exporters_us.push(per(a.exporters_ns, b.exporters_ns));
        f.collector_cpus.push(cpus(a.collector_ns, b.collector_ns));
        f.clickhouse_cpus
            .push(cpus(a.clickhouse_ns, b.clickhouse_ns));
        f.exporters_cpus.push(cpus(a.exporters_ns, b.exporters_ns));
        let (busy, total) = (
            b.machine.0.saturating_sub(a.machine.0),
            b.machine.1.saturating_sub(a.machine.1),
        );
        f.machine_busy_pct
            .push(100.0 * busy as f64 / total.max(1) as f64);
        let ours = [
            (a.collector_ns, b.collector_ns),
            (a.clickhouse_ns, b.clickhouse_ns),
            (a.exporters_ns, b.exporters_ns),
        ]
        .iter()
        .map(|&(x, y)| cpus(x, y))
        .sum::<f64>();
        f.other_cpus
            .push((busy as f64 / 1e9 / secs - ours).max(0.0));
        let inserts = b.inserts.saturating_sub(a.inserts);
        f.rows_per_insert.push(if inserts > 0 {
            b.rows_inserted.saturating_sub(a.rows_inserted) as f64 / inserts as f64
        } else {
            f64::NAN
        });
        log(format!(
            "collector window {}/{}: {:.0} records/s stored ({:.0} acked/s), collector {:.2} µs, ClickHouse {:.2} µs, exporters {:.2} µs per record; machine {:.0} % busy, other processes {:.2} CPUs",
            w + 1,
            o.collector_windows,
            stored as f64 / secs,
            b.acked.saturating_sub(a.acked) as f64 / secs,
            per(a.collector_ns, b.collector_ns),
            per(a.clickhouse_ns, b.clickhouse_ns),
            per(a.exporters_ns, b.exporters_ns),
            100.0 * busy as f64 / total.max(1) as f64,
            f.other_cpus.last().copied().unwrap_or(0.0),
        ));
    }
    // Drain: every record handed to an exporter is acknowledged, hence stored, exactly once.
    let finals = load.finish(Duration::from_secs(60))?;
    f.total_acked = finals.iter().map(|s| s.acked_records).sum();
    f.dropped = finals.iter().map(|s| s.dropped_total()).sum();
    f.total_stored = query(&ch, "SELECT count() FROM podflow.flows")?
        .trim()
        .parse()
        .context("count()")?;
    f.duplicates = query(
        &ch,
        "SELECT count() - uniqExact(agent_id, seq, idx) FROM podflow.flows",
    )?
    .trim()
    .parse()
    .context("duplicates")?;
    ensure!(
        f.dropped == 0 && f.total_stored == f.total_acked && f.duplicates == 0,
        "records lost or stored twice: {} acknowledged, {} stored, {} dropped by the exporters, {} duplicates",
        f.total_acked,
        f.total_stored,
        f.dropped,
        f.duplicates
    );
    drop(collector);
    drop(ch);
    Ok(f)
}

/// `sql`'s answer, or an error with ClickHouse's.
fn query(ch: &ClickHouse, sql: &str) -> anyhow::Result<String> {
    ch.try_query(sql)
        .map_err(|e| anyhow!("ClickHouse query {sql:?}: {e}"))
}

/// The readings now.
fn read(ch: &ClickHouse, collector: &Collector, load: &Load) -> anyhow::Result<Reading> {
    let stored = query(ch, "SELECT count() FROM podflow.flows")?;
    Ok(Reading {
        at: Instant::now(),
        stored: stored.trim().parse().context("count()")?,
        acked: load.acked(),
        collector_ns: process_cpu_ns(collector.pid())?,
        clickhouse_ns: process_cpu_ns(ch.pid() as i32)?,
        exporters_ns: process_cpu_ns(std::process::id() as i32)?,
        machine: machine_cpu_ns()?,
        rows_inserted: collector.counter("clickhouse_rows_inserted")?,
        inserts: collector.counter("clickhouse_inserts")?,
    })
}

/// PODFLOW_BENCH_PERF=DIR: profiles the collector during each window (`perf record`, at
/// PODFLOW_BENCH_PERF_FREQ samples per second, default 499, call graphs by
/// PODFLOW_BENCH_PERF_CALL_GRAPH, default `fp`; `dwarf` for the release build without frame
/// pointers) into DIR/collector-N.data.
fn perf_record(pid: i32, window: usize, secs: u32) -> anyhow::Result<Option<ChildGuard>> {
    let Some(dir) = std::env::var_os("PODFLOW_BENCH_PERF") else {
        return Ok(None);
    };
    let freq = std::env::var("PODFLOW_BENCH_PERF_FREQ").unwrap_or_else(|_| "499".into());
    let graph = std::env::var("PODFLOW_BENCH_PERF_CALL_GRAPH").unwrap_or_else(|_| "fp".into());
    let child = Command::new("perf")
        .args(["record", "-q", "-F", &freq, "--call-graph", &graph])
        .args(["-p", &pid.to_string(), "-o"])
        .arg(PathBuf::from(dir).join(format!("collector-{}.data", window + 1)))
        .args(["--", "sleep", &secs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf record")?;
    Ok(Some(ChildGuard::new(child)))
}
