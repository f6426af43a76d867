//! Exporter in this process, the real `podflow collector` binary in another, over loopback:
//! exact totals without faults, and through a SIGKILL + restart and a SIGSTOP/SIGCONT of the
//! collector, delivered + declared-lost = produced, while this process's fds and threads stay
//! flat. The fd/thread counts are per process: the test runs alone, in a child process.
use std::{process::Command, time::Duration};

use podflow::export::{self, EXPORT_BUFFER_FULL};

use crate::support::{export::*, one_test, this_binary};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Set in the child process that runs [`outages_in_a_process_of_their_own`].
const CHILD: &str = "PODFLOW_TEST_EXPORT_OUTAGE_CHILD";

#[test]
fn outages_lose_nothing_undeclared_and_leak_nothing() {
    let out = Command::new(this_binary())
        .args(one_test("export_outage::outages_in_a_process_of_their_own"))
        .env(CHILD, "1")
        .output()
        .expect("run the outage test in a child process");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the outage test failed: {text}");
    assert!(
        text.contains("1 passed"),
        "the outage test did not run: {text}"
    );
}

/// Not a test on its own: the body of [`outages_lose_nothing_undeclared_and_leak_nothing`], run
/// in a child process (with `PODFLOW_TEST_EXPORT_OUTAGE_CHILD` set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_in_a_process_of_their_own() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_owned();
    let port = free_port();
    let collector_args = ["--output-dir", out.as_str(), "--format", "native"];
    let collector = ChildCollector::start(port, &collector_args);

    let mut cfg = fast_config(&format!("127.0.0.1:{port}"), "node-a");
    cfg.batch_size = 500;
    cfg.buffer_records = 20_000;
    let exporter = export::spawn(cfg).unwrap();
    let mut produced = 0u64;
    let mut send = |n: u64| send_flows(&exporter, "node-a", &mut produced, n);

    // 1. No fault: 30k records, exactly.
    for _ in 0..30 {
        send(1000);
        // Paced so that the 20k buffer never fills up.
        wait_stats(&exporter, TIMEOUT, "room", |s| s.queue_depth <= 10_000).await;
    }
    wait_stats(&exporter, TIMEOUT, "phase 1 acked", |s| {
        s.acked_records == 30_000
    })
    .await;
    // Acknowledged means written: exactly these records, once each.
    let phase1 = read_native(dir.path());
    assert_eq!((phase1.flows, phase1.unique_flows), (30_000, 30_000));
    assert_eq!(phase1.unique_packets, packets_of(0..30_000));
    assert!(phase1.losses.is_empty());
    let before = fds_and_threads();

    // 2. kill -9 mid-stream: keep producing 40k (the buffer holds 20k), restart.
    for _ in 0..10 {
        send(1000);
    }
    collector.kill9();
    for _ in 0..30 {
        send(1000);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    wait_stats(&exporter, TIMEOUT, "failures seen", |s| {
        !s.connected && s.failures >= 3
    })
    .await;
    let collector = ChildCollector::start(port, &collector_args);
    wait_stats(&exporter, TIMEOUT, "phase 2 drained", |s| {
        s.queue_depth == 0 && s.connected
    })
    .await;

    // 3. SIGSTOP (a hung collector: only deadlines notice), 20k more, SIGCONT.
    collector.signal(libc::SIGSTOP);
    for _ in 0..20 {
        send(1000);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_stats(&exporter, TIMEOUT, "stall noticed", |s| !s.connected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    collector.signal(libc::SIGCONT);
    let stats = wait_stats(&exporter, TIMEOUT, "phase 3 drained", |s| {
        s.queue_depth == 0 && s.connected
    })
    .await;
    let after = fds_and_threads();
    println!("fds/threads before {before:?} after {after:?}; {stats:#?}");
    assert!(after.0 <= before.0, "fds grew: {before:?} -> {after:?}");
    assert!(
        after.1 <= before.1 + 1,
        "threads grew: {before:?} -> {after:?}"
    );

    let stats = exporter.shutdown(Duration::from_secs(10)).await;
    assert_eq!(stats.queue_depth, 0);
    let lost = stats
        .dropped_records
        .get(EXPORT_BUFFER_FULL)
        .copied()
        .unwrap_or(0);
    assert!(
        lost > 0,
        "the outage should have overflowed the buffer: {stats:#?}"
    );
    assert_eq!(stats.dropped_total(), lost, "{stats:#?}");
    // Every record was acknowledged or dropped (loss records are acknowledged events too).
    assert_eq!(
        stats.acked_records - stats.loss_records_sent + lost,
        produced
    );

    // What the collector wrote: distinct flows + declared losses = produced, exactly.
    drop(collector);
    let totals = read_native(dir.path());
    println!("{totals:?}");
    let declared: u64 = totals.losses.values().sum();
    assert_eq!(
        totals.losses.keys().collect::<Vec<_>>(),
        [&("node-a".to_owned(), EXPORT_BUFFER_FULL.to_owned())]
    );
    assert_eq!(declared, lost);
    assert_eq!(totals.unique_flows + declared, produced);
    // Which records were dropped is known only to the exporter, but the packet sum of what
    // arrived is that of distinct records: no record counted twice.
    assert!(totals.unique_packets <= packets_of(0..produced));
    // Duplicates only from the kill -9 (batches written but not acknowledged before the
    // crash), at most the in-flight window.
    assert!(
        totals.flows - totals.unique_flows <= 16 * 500,
        "{} duplicates",
        totals.flows - totals.unique_flows
    );
}
