//! Exporter → collector over loopback in one process: exact totals, per-agent status, declared
//! buffer losses, and `podflow tail --server` showing the flows of two agents.
use std::{collections::BTreeMap, process::Command, time::Duration};

use crate::support::export::*;
use futures::StreamExt as _;
use podflow::{
    api::Query,
    export::{self, Compression, EXPORT_BUFFER_FULL},
    proto::{self, flow_event::Event, flow_service_client::FlowServiceClient},
};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn window(hub: &podflow::api::Hub) -> Vec<proto::FlowEvent> {
    hub.subscribe(Query::default()).collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_records_arrive_exactly_once() {
    for compression in [Compression::Zstd, Compression::Gzip] {
        let mut args = loopback_args();
        args.buffer = 200_000;
        let collector = InProcess::start(args).await;
        let mut cfg = fast_config(&format!("http://{}", collector.addr), "node-a");
        cfg.batch_size = 1000;
        cfg.compression = compression;
        let exporter = export::spawn(cfg).unwrap();
        const N: u64 = 100_000;
        for chunk in 0..N / 1000 {
            exporter.send(
                (chunk * 1000..(chunk + 1) * 1000)
                    .map(|i| flow(i, "node-a"))
                    .collect(),
            );
            tokio::task::yield_now().await;
        }
        let stats = wait_stats(&exporter, TIMEOUT, "all acked", |s| s.acked_records == N).await;
        assert_eq!(stats.sent_records, N);
        assert_eq!(stats.dropped_total(), 0);
        assert_eq!(stats.queue_depth, 0);
        assert!(stats.connected);

        let events = window(&collector.hub).await;
        let mut ids = std::collections::HashSet::new();
        let mut packets = 0;
        for event in &events {
            let Some(Event::Flow(flow)) = &event.event else {
                panic!("unexpected event {event:?}");
            };
            assert!(
                ids.insert(flow.start_time.unwrap().nanos),
                "duplicate {flow:?}"
            );
            packets += flow.packets;
        }
        assert_eq!(ids.len() as u64, N);
        assert_eq!(packets, packets_of(0..N));

        // Per-agent status over the consumer API.
        let mut client = FlowServiceClient::connect(format!("http://{}", collector.addr))
            .await
            .unwrap();
        let status = client
            .get_status(proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.agents.len(), 1);
        let agent = &status.agents[0];
        assert_eq!(
            (agent.node.as_str(), agent.connected, agent.records_received),
            ("node-a", true, N)
        );
        assert!(agent.last_batch_time.is_some());
        assert_eq!(status.buffered_events, N);

        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(stats.acked_records, N);
        assert_eq!(stats.dropped_total(), 0);
        collector.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_drops_the_oldest_and_declares_them() {
    // No collector yet: the exporter buffers 1000 records at most.
    let port = free_port();
    let mut cfg = fast_config(&format!("127.0.0.1:{port}"), "node-a");
    cfg.batch_size = 100;
    cfg.buffer_records = 1000;
    let exporter = export::spawn(cfg).unwrap();
    const N: u64 = 5000;
    for chunk in 0..N / 100 {
        exporter.send(
            (chunk * 100..(chunk + 1) * 100)
                .map(|i| flow(i, "node-a"))
                .collect(),
        );
    }
    let stats = exporter.stats();
    assert_eq!(stats.queue_depth, 1000);
    assert_eq!(
        stats.dropped_records.get(EXPORT_BUFFER_FULL),
        Some(&(N - 1000))
    );
    assert!(!stats.connected);

    let mut args = loopback_args();
    args.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let collector = InProcess::start(args).await;
    // The 1000 newest records + one loss record.
    let stats = wait_stats(&exporter, TIMEOUT, "all acked", |s| s.acked_records == 1001).await;
    assert_eq!(stats.loss_records_sent, 1);
    let events = window(&collector.hub).await;
    let mut flows = Vec::new();
    let mut lost = BTreeMap::new();
    for event in events {
        match event.event.unwrap() {
            Event::Flow(flow) => flows.push(u64::try_from(flow.start_time.unwrap().nanos).unwrap()),
            Event::Loss(loss) => {
                assert_eq!(
                    (loss.node.as_str(), loss.unit.as_str()),
                    ("node-a", "records")
                );
                *lost.entry(loss.reason).or_insert(0) += loss.count;
            }
        }
    }
    // The oldest went: what arrived is exactly the newest 1000.
    assert_eq!(flows, (N - 1000..N).collect::<Vec<_>>());
    assert_eq!(
        lost,
        BTreeMap::from([(EXPORT_BUFFER_FULL.to_owned(), N - 1000)])
    );
    assert_eq!(flows.len() as u64 + lost[EXPORT_BUFFER_FULL], N);
    exporter.shutdown(Duration::from_secs(5)).await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_against_the_collector_shows_both_agents() {
    let collector = InProcess::start(loopback_args()).await;
    let server = format!("127.0.0.1:{}", collector.addr.port());
    let a = export::spawn(fast_config(&server, "node-a")).unwrap();
    let b = export::spawn(fast_config(&server, "node-b")).unwrap();
    a.send((0..5).map(|i| flow(i, "node-a")).collect());
    b.send((100..103).map(|i| flow(i, "node-b")).collect());
    wait_stats(&a, TIMEOUT, "a acked", |s| s.acked_records == 5).await;
    wait_stats(&b, TIMEOUT, "b acked", |s| s.acked_records == 3).await;

    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["tail", "--server", &server, "-o", "json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut by_node: BTreeMap<String, u64> = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        *by_node
            .entry(value["node"].as_str().expect("node").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        by_node,
        BTreeMap::from([("node-a".to_owned(), 5), ("node-b".to_owned(), 3)])
    );

    // The compact output names the node too? (It shows the flow; the node is in -o json.)
    let mut client = FlowServiceClient::connect(format!("http://{}", collector.addr))
        .await
        .unwrap();
    let status = client
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let nodes: Vec<(&str, u64, bool)> = status
        .agents
        .iter()
        .map(|a| (a.node.as_str(), a.records_received, a.connected))
        .collect();
    assert_eq!(nodes, [("node-a", 5, true), ("node-b", 3, true)]);
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    // After the streams close, the agents show as disconnected.
    let start = std::time::Instant::now();
    loop {
        let status = client
            .get_status(proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.agents.iter().all(|a| !a.connected) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    collector.stop().await;
}

#[tokio::test]
async fn plaintext_is_refused_off_loopback() {
    let err =
        export::spawn(export::ExporterConfig::new("collector.podflow:4246", "n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "refusing to export flow records in plaintext to collector.podflow:4246: configure TLS \
         (a CA certificate) or allow plaintext explicitly (--insecure)"
    );
    let args = podflow::collector::CollectorArgs::new("0.0.0.0:0".parse().unwrap());
    let err = podflow::collector::Collector::bind(&args)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--insecure"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_needs_no_tls_nor_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("collector.sock");
    let mut args = loopback_args();
    args.socket = Some(socket.clone());
    let collector = InProcess::start(args).await;
    let exporter = export::spawn(fast_config(
        &format!("unix://{}", socket.display()),
        "node-u",
    ))
    .unwrap();
    exporter.send((0..1000).map(|i| flow(i, "node-u")).collect());
    let stats = exporter.shutdown(Duration::from_secs(10)).await;
    assert_eq!((stats.acked_records, stats.dropped_total()), (1000, 0));
    let flows = window(&collector.hub).await;
    assert_eq!(flows.len(), 1000);
    collector.stop().await;
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

/// The collector keeps a batch's events encoded and decodes each once: an event that is not a
/// `FlowEvent` ends the stream with `InvalidArgument` naming it (as a malformed message did when
/// the whole batch was decoded on receipt), and none of that batch's events is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_ends_the_stream_and_is_named() {
    use podflow::proto::{ExportBatch, collector_service_client::CollectorServiceClient};
    use prost::Message as _;
    use tokio_stream::wrappers::ReceiverStream;

    let collector = InProcess::start(loopback_args()).await;
    let flow = |port: u32| proto::FlowEvent {
        event: Some(Event::Flow(proto::Flow {
            src_port: port,
            ..Default::default()
        })),
    };
    let batch = |seq: u64, events: Vec<bytes::Bytes>| ExportBatch {
        agent_id: "node-x/1-1".into(),
        node: "node-x".into(),
        seq,
        events,
        ..Default::default()
    };
    let good = ExportBatch::encode_events(&[flow(1), flow(2)]);
    let mut bad = ExportBatch::encode_events(&[flow(3), flow(4)]);
    // Field 1 (the flow) claiming 127 bytes of the 1 that follow.
    bad[1] = bytes::Bytes::from_static(&[0x0a, 0x7f, 0x08]);
    assert!(proto::FlowEvent::decode(bad[1].as_ref()).is_err());

    let mut client = CollectorServiceClient::connect(format!("http://{}", collector.addr))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(batch(1, good)).await.unwrap();
    tx.send(batch(2, bad)).await.unwrap();
    let mut acks = client
        .export(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match acks.message().await {
                Ok(Some(ack)) => assert_eq!((ack.seq, ack.duplicate), (1, false)),
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("batch 2: event 1 of the batch: "),
        "{}",
        status.message()
    );
    let ports: Vec<u32> = window(&collector.hub)
        .await
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Flow(f)) => Some(f.src_port),
            _ => None,
        })
        .collect();
    assert_eq!(ports, [1, 2]);
    collector.stop().await;
}
