//! Exporter with its production defaults (backoff included) against the real `podflow
//! collector` binary: after a 20 s outage that overflowed the buffer, a restarted collector is
//! used within seconds, and the loss record reaches its files with the next batch — not at the
//! agent's shutdown.
use std::time::{Duration, Instant};

use podflow::export::{self, EXPORT_BUFFER_FULL, ExporterConfig};

use crate::support::export::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_collector_is_used_within_seconds_and_gets_the_loss_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_owned();
    let port = free_port();
    let collector_args = ["--output-dir", out.as_str(), "--format", "native"];
    let collector = ChildCollector::start(port, &collector_args);

    // The defaults, but a small buffer so that the outage overflows it, and a short linger.
    let mut cfg = ExporterConfig::new(format!("127.0.0.1:{port}"), "node-a");
    cfg.buffer_records = 500;
    cfg.batch_size = 100;
    cfg.linger = Duration::from_millis(100);
    let exporter = export::spawn(cfg).unwrap();
    let mut produced = 0u64;
    let mut send = |n: u64| send_flows(&exporter, "node-a", &mut produced, n);
    send(100);
    wait_stats(&exporter, Duration::from_secs(20), "first batch", |s| {
        s.acked_records == 100
    })
    .await;

    // 20 s without a collector, 100 records every 200 ms: the 500-record buffer overflows.
    collector.kill9();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(20) {
        send(100);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        exporter.stats().dropped_total() > 0,
        "{:#?}",
        exporter.stats()
    );
    let _collector = ChildCollector::start(port, &collector_args);
    let back = Instant::now();
    wait_stats(&exporter, Duration::from_secs(60), "reconnected", |s| {
        s.connected
    })
    .await;
    let reconnect = back.elapsed();
    // Backoff doubles from 0.5 s up to its cap of 4 s, ±50 %: at most 6 s after the collector is
    // back (plus the connect itself).
    assert!(
        reconnect < Duration::from_secs(8),
        "reconnected {reconnect:?} after the collector was back"
    );
    // The loss record goes with the first batches: in the collector's files within seconds,
    // while the exporter keeps running.
    let waited = Instant::now();
    let declared = loop {
        let files = read_native(dir.path());
        let declared = files
            .losses
            .get(&("node-a".to_owned(), EXPORT_BUFFER_FULL.to_owned()))
            .copied()
            .unwrap_or(0);
        if declared > 0 || waited.elapsed() > Duration::from_secs(5) {
            break declared;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        declared > 0,
        "no loss record {:?} after reconnecting: {:#?}",
        waited.elapsed(),
        exporter.stats()
    );
    println!(
        "reconnected {reconnect:?} after the collector came back; loss record in its files {:?} later",
        waited.elapsed()
    );
    exporter.shutdown(Duration::from_secs(5)).await;
}
