//! `podflow-bench`: podflow against the no-agent baseline, on a node built from network
//! namespaces (see `docs/BENCHMARKS.md`, run by `cargo xtask bench`).
//!
//! It builds a node namespace with two pods (`src`, `dst`) on veths ([`podflow_testbed`]), runs
//! the real `podflow agent` binary inside the node namespace, and measures with real tools:
//! iperf3 (TCP throughput, UDP 64-byte packet rate), bpftool (per-program run time with
//! `kernel.bpf_stats_enabled`, map memory), `/proc/<pid>/stat` and `/proc/<pid>/status` (agent
//! CPU and memory), the agent's status and metrics (records exported, loss counters) and an
//! in-process flow generator (UDP datagrams with rotating ports, sent from a thread inside the
//! source pod) that makes many distinct 5-tuples cheaply.
//!
//! Runs with and without the agent are interleaved (the order alternates from pair to pair), and
//! the ratios are medians of per-pair ratios.
//!
//! Safety: nothing is changed in the root namespace except `kernel.bpf_stats_enabled` (a global
//! sysctl), which is restored on every exit path (guard + SIGINT/SIGTERM handler). Traffic only
//! goes to addresses of the namespaces created here; every namespace is deleted on exit; every
//! wait is bounded.
//!
//! The collector figure runs apart from the node, on loopback in the root namespace: a real
//! `clickhouse-server` with its own temporary directory and ports, the real `podflow collector`
//! storing into it, and the agent's exporter (`podflow::export`) in this process as the agents.
//!
//! Layout: [`opts`] (the command line), [`harness`] (stop flag, sleep, guards), [`bed`] (the node,
//! iperf3, the flow generator), [`agent`] (the running agent), [`kernel`] (bpf programs and maps),
//! [`collector`] (the running collector, its ClickHouse and the exporters feeding it),
//! [`measure`] (one module per figure group, numbers only) and [`report`] (rows, the table,
//! docs/BENCHMARKS.md).
#![expect(
    clippy::cast_precision_loss,
    reason = "benchmark figures are reported as floats"
)]

mod agent;
mod bed;
mod collector;
mod harness;
mod kernel;
mod measure;
mod opts;
mod report;

use std::time::Instant;

use anyhow::ensure;

use crate::{
    bed::Bed,
    harness::{BpfStatsGuard, log},
    measure::Results,
    opts::{Group, Opts},
};

fn main() {
    harness::install_signal_handlers();
    let o = match Opts::from_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("podflow-bench: {e:#}");
            std::process::exit(2);
        }
    };
    let code = match run(&o) {
        Ok(true) => 0,
        Ok(false) if o.smoke => 0,
        Ok(false) => {
            eprintln!("podflow-bench: some targets were missed (see the table)");
            3
        }
        Err(e) => {
            eprintln!("podflow-bench: measurement failed: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Measures the figure groups in order (throughput, hook, churn, rss, map, collector; those
/// `--only` selects), prints the table and writes `--doc`. Returns whether every figure met its
/// target.
fn run(o: &Opts) -> anyhow::Result<bool> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "podflow-bench must run as root"
    );
    ensure!(
        o.podflow.exists(),
        "{} not found (build it: cargo build --release -p podflow --bins, or pass --podflow)",
        o.podflow.display()
    );
    let started = Instant::now();
    let mut results = Results::default();
    if o.wants_bed() {
        measure_on_bed(o, &mut results)?;
    }
    results.collector = o
        .wants(Group::Collector)
        .then(|| measure::collector::run(o))
        .transpose()?;

    let rows = report::rows(o, &results)?;
    let table = report::table(&rows, o.smoke);
    let elapsed = started.elapsed().as_secs_f64();
    println!("{table}");
    println!("machine: {}", report::machine());
    println!("command: {}", o.command);
    println!("elapsed: {elapsed:.0} s");
    if let Some(doc) = o.doc.as_ref().filter(|_| o.only.is_empty()) {
        report::write_doc(doc, o, &table, elapsed)?;
        log(format!("wrote {}", doc.display()));
    }
    Ok(rows.iter().all(|r| r.pass() == Some(true)))
}

/// The groups measured on the node of network namespaces (all but the collector), into
/// `results`.
fn measure_on_bed(o: &Opts, results: &mut Results) -> anyhow::Result<()> {
    let stats = BpfStatsGuard::enable()?;
    let bed = Bed::build()?;
    log(format!(
        "node {} with pods src {} and dst {}",
        bed.node_ns().name(),
        bed.src_ip,
        bed.dst_ip
    ));

    // Statistics off except in the kernel-cost windows (production runs without them: they add
    // two clock reads to every program run).
    stats.set(false)?;
    results.throughput = o
        .wants(Group::Throughput)
        .then(|| measure::throughput::run(o, &bed, &stats))
        .transpose()?;
    results.hooks = o
        .wants(Group::Hook)
        .then(|| measure::hook::run(o, &bed, &stats))
        .transpose()?;
    if o.wants(Group::Churn) {
        results.churn = measure::churn::run(o, &bed)?;
    }
    // At the low churn rate (10 000 new flows/s; the smoke run's first rate).
    results.service_churn = match o.churn_rates.first() {
        Some(&rate) if o.wants(Group::Churn) => Some((
            measure::churn::run_service(o, rate, false)?,
            measure::churn::run_service(o, rate, true)?,
        )),
        _ => None,
    };
    results.features = o
        .wants(Group::Features)
        .then(|| measure::features::run(o, &bed, &stats))
        .transpose()?;
    results.rss = o
        .wants(Group::Rss)
        .then(|| measure::rss::run(o, &bed))
        .transpose()?;
    results.map = o
        .wants(Group::Map)
        .then(|| measure::map::run(o, &bed))
        .transpose()?;
    Ok(())
}
