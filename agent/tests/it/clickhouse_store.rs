//! The collector's ClickHouse sink against a real server (Debian's clickhouse-server 18.16 on
//! loopback): designed records through a real exporter and the real `podflow collector`; every
//! saved query (`podflow query`) answers exactly, each packet counted once; the 2-shard cluster
//! holds the same totals through its Distributed tables; expired partitions are dropped.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use podflow::{
    export,
    proto::{self, flow_event::Event},
};
use serde_json::{Value, json};

use crate::support::{
    clickhouse::{self, ClickHouse},
    export::{ChildCollector, fast_config, free_port, wait_stats},
};

/// Whether the test can run (clickhouse-server installed; `cargo xtask setup` installs it).
pub fn available() -> bool {
    if clickhouse::installed() {
        return true;
    }
    assert!(
        std::env::var_os("PODFLOW_SKIP_CLICKHOUSE").is_some(),
        "clickhouse-server is not installed: run `cargo xtask setup` (or set \
         PODFLOW_SKIP_CLICKHOUSE=1 to skip)"
    );
    false
}

pub fn pod(namespace: &str, name: &str, kind: &str, workload: &str, node: &str) -> proto::Endpoint {
    proto::Endpoint {
        kind: "pod".into(),
        namespace: namespace.into(),
        pod: name.into(),
        uid: format!("uid-{name}"),
        workload_kind: kind.into(),
        workload: workload.into(),
        labels: [("app".to_owned(), workload.to_owned())]
            .into_iter()
            .collect(),
        node: node.into(),
        ..Default::default()
    }
}

/// A flow record as an agent on `node` makes it.
#[expect(
    clippy::too_many_arguments,
    reason = "a record's fields, named at the call"
)]
pub fn record(
    end: i64,
    (src, src_ip): (Option<proto::Endpoint>, [u8; 4]),
    (dst, dst_ip): (Option<proto::Endpoint>, [u8; 4]),
    bytes: u64,
    packets: u64,
    node: &str,
    reporter: &str,
    inter_node: bool,
) -> proto::FlowEvent {
    let same_node = src.as_ref().is_some_and(|e| e.node == node)
        && dst.as_ref().is_some_and(|e| e.node == node);
    proto::FlowEvent {
        event: Some(Event::Flow(proto::Flow {
            start_time: Some(prost_types::Timestamp {
                seconds: end - 1,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: end,
                nanos: 0,
            }),
            src_ip: src_ip.to_vec(),
            dst_ip: dst_ip.to_vec(),
            src_port: 40_000,
            dst_port: 8080,
            protocol: 17,
            packets,
            bytes,
            interfaces: vec!["veth0".into()],
            same_node,
            sampling_rate: 1,
            node: node.into(),
            reporter: reporter.into(),
            inter_node,
            plaintext_inter_node: inter_node,
            src: Some(src.unwrap_or_else(|| proto::Endpoint {
                kind: "external".into(),
                ..Default::default()
            })),
            dst,
            ..Default::default()
        })),
    }
}

fn loss(t: i64, node: &str, reason: &str, unit: &str, count: u64) -> proto::FlowEvent {
    proto::FlowEvent {
        event: Some(Event::Loss(proto::LossRecord {
            time: Some(prost_types::Timestamp {
                seconds: t,
                nanos: 0,
            }),
            node: node.into(),
            reason: reason.into(),
            count,
            unit: unit.into(),
            ..Default::default()
        })),
    }
}

/// A time 10 minutes ago, 10 s into its 5-minute window.
fn window_start() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from((now - 600) / 300 * 300).unwrap()
}

/// The designed traffic: node-a has web-1 and db-1 (shop) and job-1 (batch); node-b has api-1.
/// Returns each node's events.
pub fn designed(w: i64) -> (Vec<proto::FlowEvent>, Vec<proto::FlowEvent>) {
    let web = (
        Some(pod("shop", "web-1", "Deployment", "web", "node-a")),
        [10, 1, 0, 2],
    );
    let db = (
        Some(pod("shop", "db-1", "StatefulSet", "db", "node-a")),
        [10, 1, 0, 3],
    );
    let job = (
        Some(pod("batch", "job-1", "Job", "job", "node-a")),
        [10, 1, 0, 4],
    );
    let api = (
        Some(pod("shop", "api-1", "Deployment", "api", "node-b")),
        [10, 2, 0, 2],
    );
    let outside = (None, [203, 0, 113, 7]);
    let a = vec![
        // 1.2 GB web-1 -> db-1 within one 5-minute window (the big-transfer alert).
        record(
            w + 15,
            web.clone(),
            db.clone(),
            600_000_000,
            400_000,
            "node-a",
            "SRC",
            false,
        ),
        record(
            w + 110,
            web.clone(),
            db.clone(),
            600_000_000,
            400_000,
            "node-a",
            "SRC",
            false,
        ),
        // The destination's side of api-1 -> web-1: not counted (node-b reported it).
        record(
            w + 20,
            api.clone(),
            web.clone(),
            3_000,
            3,
            "node-a",
            "DEST",
            true,
        ),
        record(
            w + 30,
            outside,
            web.clone(),
            700,
            7,
            "node-a",
            "DEST",
            false,
        ),
        record(w + 40, job, db, 1_000, 10, "node-a", "SRC", false),
        loss(w + 50, "node-a", "lost_map_full", "packets", 5),
    ];
    let b = vec![
        record(w + 20, api, web, 3_000, 3, "node-b", "SRC", true),
        loss(w + 60, "node-b", "export_buffer_full", "records", 3),
    ];
    (a, b)
}

/// Runs `podflow query NAME -o json` against `url`; one JSON value per row.
pub fn query(url: &str, name: &str, extra: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["query", name, "--clickhouse", url, "-o", "json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podflow query {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sends both nodes' events through two exporters to a collector storing into `url`'s server.
async fn export_designed(collector_extra: &[&str], server: &ClickHouse, w: i64) -> ChildCollector {
    let port = free_port();
    let log = std::fs::File::create("/tmp/podflow-ch-collector.log").unwrap();
    let collector = ChildCollector::start_logged(port, collector_extra, log);
    let (a, b) = designed(w);
    for (node, events) in [("node-a", a), ("node-b", b)] {
        let n = events.len() as u64;
        let exporter = export::spawn(fast_config(&format!("127.0.0.1:{port}"), node)).unwrap();
        exporter.send(events);
        wait_stats(&exporter, Duration::from_secs(30), "acks", |s| {
            s.acked_records == n
        })
        .await;
        exporter.shutdown(Duration::from_secs(5)).await;
    }
    // Acknowledged means stored: no wait.
    assert_eq!(
        server
            .query("SELECT count(), sum(counted) FROM podflow.flows")
            .trim(),
        "6\t5"
    );
    collector
}

fn expect_answers(url: &str, server: &ClickHouse, w: i64) {
    let pair = |sn: &str, s: &str, dn: &str, d: &str, bytes: u64, packets: u64| json!({"src_namespace": sn, "src": s, "dst_namespace": dn, "dst": d, "bytes": bytes, "packets": packets});
    assert_eq!(
        query(url, "top_pod_pairs", &[]),
        [
            pair("shop", "web-1", "shop", "db-1", 1_200_000_000, 800_000),
            pair("shop", "api-1", "shop", "web-1", 3_000, 3),
            pair("batch", "job-1", "shop", "db-1", 1_000, 10),
            pair("", "203.0.113.7", "shop", "web-1", 700, 7),
        ]
    );
    assert_eq!(
        query(url, "top_pod_pairs", &["--limit", "1"]).len(),
        1,
        "--limit"
    );
    let wl =
        |sn: &str, sk: &str, s: &str, dn: &str, dk: &str, d: &str, bytes: u64, packets: u64| {
            json!({"src_namespace": sn, "src_workload_kind": sk, "src_workload": s,
               "dst_namespace": dn, "dst_workload_kind": dk, "dst_workload": d,
               "bytes": bytes, "packets": packets})
        };
    assert_eq!(
        query(url, "top_workload_pairs", &[]),
        [
            wl(
                "shop",
                "Deployment",
                "web",
                "shop",
                "StatefulSet",
                "db",
                1_200_000_000,
                800_000
            ),
            wl(
                "shop",
                "Deployment",
                "api",
                "shop",
                "Deployment",
                "web",
                3_000,
                3
            ),
            wl(
                "batch",
                "Job",
                "job",
                "shop",
                "StatefulSet",
                "db",
                1_000,
                10
            ),
            wl("", "", "", "shop", "Deployment", "web", 700, 7),
        ]
    );
    assert_eq!(
        query(url, "same_node_namespaces", &[]),
        [
            json!({"src_namespace": "shop", "dst_namespace": "shop", "bytes": 1_200_000_000u64, "packets": 800_000}),
            json!({"src_namespace": "batch", "dst_namespace": "shop", "bytes": 1_000, "packets": 10}),
        ]
    );
    let time = |t: i64| {
        server
            .query(&format!("SELECT toString(toDateTime({t}))"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        query(url, "plaintext_inter_node", &[]),
        [
            json!({"src_namespace": "shop", "src": "api-1", "dst_namespace": "shop", "dst": "web-1",
                "dst_port": 8080, "protocol": 17, "bytes": 3_000, "packets": 3,
                "first_seen": time(w + 19), "last_seen": time(w + 20)})
        ]
    );
    let big = json!({"window_start": time(w), "src_namespace": "shop", "src_pod": "web-1",
                     "dst_namespace": "shop", "dst_pod": "db-1", "bytes": 1_200_000_000u64,
                     "packets": 800_000});
    assert_eq!(query(url, "big_transfers", &[]), [big]);
    assert_eq!(
        query(url, "big_transfers", &["--threshold", "1200000000"]),
        [] as [Value; 0]
    );
    assert_eq!(
        query(url, "big_transfers", &["--threshold", "999"]).len(),
        3
    );
    assert_eq!(
        query(url, "losses", &[]),
        [
            json!({"node": "node-a", "reason": "lost_map_full", "unit": "packets", "count": 5, "records": 1}),
            json!({"node": "node-b", "reason": "export_buffer_full", "unit": "records", "count": 3, "records": 1}),
        ]
    );
    // Outside the range: nothing.
    assert!(query(url, "top_pod_pairs", &["--since", "1m"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_queries_answer_exactly_and_count_each_packet_once() {
    if !available() {
        return;
    }
    let server = ClickHouse::start();
    let url = server.http_url();
    let w = window_start();
    let _collector = export_designed(
        &["--clickhouse", &url, "--clickhouse-linger", "20ms"],
        &server,
        w,
    )
    .await;
    // No row twice: the idempotency key is unique.
    assert_eq!(
        server
            .query("SELECT count() - uniqExact(agent_id, seq, idx) FROM podflow.flows")
            .trim(),
        "0"
    );
    expect_answers(&url, &server, w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_shard_cluster_holds_the_same_answers() {
    if !available() {
        return;
    }
    let (one, two) = clickhouse::cluster2();
    let (u1, u2) = (one.http_url(), two.http_url());
    let w = window_start();
    let _collector = export_designed(
        &[
            "--clickhouse",
            &u1,
            "--clickhouse-cluster",
            clickhouse::CLUSTER,
            "--clickhouse-shard",
            &u1,
            "--clickhouse-shard",
            &u2,
            "--clickhouse-linger",
            "20ms",
        ],
        &one,
        w,
    )
    .await;
    // Two agents' batches: sharded by (agent_id, seq), the rows are spread over both shards,
    // each has its local part, and a query through either server sees the whole.
    let local = |s: &ClickHouse| -> u64 {
        s.query("SELECT count() FROM podflow.flows_local")
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(local(&one) + local(&two), 6);
    expect_answers(&u1, &one, w);
    expect_answers(&u2, &two, w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_partitions_are_dropped() {
    if !available() {
        return;
    }
    let server = ClickHouse::start();
    let url = server.http_url();
    let now = window_start() + 600;
    let port = free_port();
    let _collector = ChildCollector::start(
        port,
        &[
            "--clickhouse",
            &url,
            "--clickhouse-linger",
            "20ms",
            "--clickhouse-flows-days",
            "3",
        ],
    );
    let exporter = export::spawn(fast_config(&format!("127.0.0.1:{port}"), "node-a")).unwrap();
    let day = 86_400;
    let web = (
        Some(pod("shop", "web-1", "Deployment", "web", "node-a")),
        [10, 1, 0, 2],
    );
    let db = (
        Some(pod("shop", "db-1", "StatefulSet", "db", "node-a")),
        [10, 1, 0, 3],
    );
    let events: Vec<_> = [10 * day, 4 * day, 2 * day, 0]
        .into_iter()
        .map(|ago| {
            record(
                now - ago,
                web.clone(),
                db.clone(),
                100,
                1,
                "node-a",
                "SRC",
                false,
            )
        })
        .collect();
    exporter.send(events);
    wait_stats(&exporter, Duration::from_secs(30), "acks", |s| {
        s.acked_records == 4
    })
    .await;
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        server.query("SELECT count() FROM podflow.flows").trim(),
        "4"
    );
    // The retention task runs at start and hourly: a second collector start runs it now.
    drop(_collector);
    let _again = ChildCollector::start(
        port,
        &["--clickhouse", &url, "--clickhouse-flows-days", "3"],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = server
            .query("SELECT count() FROM podflow.flows")
            .trim()
            .to_owned();
        if left == "2" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{left} rows left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The roll-ups keep their own (longer) retention.
    assert_eq!(
        server
            .query("SELECT sum(records) FROM podflow.flows_5m")
            .trim(),
        "4"
    );
}
