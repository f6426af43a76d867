//! The collector's files: the GKE VPC flow log format validated against the schema in the
//! repository (deploy/schema/gke-flow-log.schema.json), the native format equal to
//! `podflow tail -o json`, and the rotation bounds (file size, number of files).
use std::{path::Path, time::Duration};

use crate::support::export::*;
use podflow::{
    collector::FileFormat,
    export,
    format::gke::{ClusterInfo, gke_line},
    proto::{self, flow_event::Event},
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

fn validator() -> jsonschema::Validator {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/schema/gke-flow-log.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn files(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    files.sort();
    files
}

fn with_pods(mut event: proto::FlowEvent, i: u64) -> proto::FlowEvent {
    if let Some(Event::Flow(flow)) = &mut event.event {
        flow.src = Some(proto::Endpoint {
            kind: "pod".into(),
            namespace: "shop".into(),
            pod: format!("frontend-{i}"),
            ..Default::default()
        });
        flow.dst = Some(proto::Endpoint {
            kind: "pod".into(),
            namespace: "shop".into(),
            pod: "cart-0".into(),
            ..Default::default()
        });
        flow.sampling_rate = 4;
    }
    event
}

#[test]
fn gke_lines_follow_the_schema_and_vpc_flow_log_types() {
    let validator = validator();
    let cluster = ClusterInfo {
        name: "prod".into(),
        location: Some("europe-west1".into()),
    };
    let line = gke_line(&with_pods(flow(3, "node-a"), 3), Some(&cluster))
        .unwrap()
        .unwrap();
    let value: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        value,
        json!({
            "connection": {"src_ip": "10.1.0.5", "dest_ip": "10.1.0.9", "src_port": 3,
                           "dest_port": 80, "protocol": 6},
            "bytes_sent": "1600", "packets_sent": "16",
            "start_time": "2026-11-23T13:05:01.000000003Z", "end_time": "2026-11-23T13:05:02.000000000Z",
            "reporter": "SRC",
            "src_gke_details": {"cluster": {"cluster_name": "prod", "cluster_location": "europe-west1"},
                                "pod": {"pod_name": "frontend-3", "pod_namespace": "shop"}},
            "dest_gke_details": {"cluster": {"cluster_name": "prod", "cluster_location": "europe-west1"},
                                 "pod": {"pod_name": "cart-0", "pod_namespace": "shop"}},
        })
    );
    assert!(
        validator.is_valid(&value),
        "{:?}",
        validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    // A flow to a Service's backend names the Service, as VPC flow logs do.
    let mut through = with_pods(flow(4, "node-a"), 4);
    if let Some(Event::Flow(f)) = &mut through.event
        && let Some(dst) = f.dst.as_mut()
    {
        dst.services.push(proto::ServiceRef {
            namespace: "shop".into(),
            name: "cart".into(),
            port_name: "http".into(),
            port: 80,
        });
    }
    let value: Value = serde_json::from_str(&gke_line(&through, None).unwrap().unwrap()).unwrap();
    assert_eq!(
        value["dest_gke_details"],
        json!({"pod": {"pod_name": "cart-0", "pod_namespace": "shop"},
               "service": [{"service_name": "cart", "service_namespace": "shop"}]})
    );
    assert!(validator.is_valid(&value));
    // Without metadata or cluster: no details at all, still valid.
    let bare: Value =
        serde_json::from_str(&gke_line(&flow(1, "n"), None).unwrap().unwrap()).unwrap();
    assert!(bare.get("src_gke_details").is_none());
    assert!(validator.is_valid(&bare));
    // Not written: loss records and flows that leave the node (VPC flow logs have those).
    let mut inter = flow(2, "n");
    if let Some(Event::Flow(f)) = &mut inter.event {
        f.same_node = false;
    }
    assert_eq!(gke_line(&inter, None).unwrap(), None);

    // The schema is not a rubber stamp: the mistakes it must catch.
    let mut wrong = value.clone();
    wrong["bytes_sent"] = json!(1600); // VPC flow logs carry int64 as strings
    assert!(!validator.is_valid(&wrong));
    let mut wrong = value.clone();
    wrong["connection"]["src_port"] = json!("3");
    assert!(!validator.is_valid(&wrong));
    let mut wrong = value.clone();
    wrong["reporter"] = json!("BOTH");
    assert!(!validator.is_valid(&wrong));
    let mut wrong = value.clone();
    wrong["connection"]["dest_ip"] = json!("10.1.0");
    assert!(!validator.is_valid(&wrong));
    let mut wrong = value.clone();
    wrong["src_gke_details"]["pod"] = json!({"name": "x"});
    assert!(!validator.is_valid(&wrong));
    let mut wrong = value;
    wrong.as_object_mut().unwrap().remove("end_time");
    assert!(!validator.is_valid(&wrong));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_files_are_valid_and_rotation_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = loopback_args();
    args.output_dir = Some(dir.path().to_path_buf());
    args.format = FileFormat::Both;
    args.cluster = Some("prod".into());
    args.cluster_location = Some("europe-west1".into());
    args.max_file_size = 16 * 1024;
    args.max_files = 3;
    let collector = InProcess::start(args).await;
    let exporter = export::spawn(fast_config(&collector.addr.to_string(), "node-a")).unwrap();
    const N: u64 = 2000;
    let events: Vec<_> = (0..N).map(|i| with_pods(flow(i, "node-a"), i)).collect();
    exporter.send(events.clone());
    wait_stats(&exporter, TIMEOUT, "acked", |s| s.acked_records == N).await;
    exporter.shutdown(Duration::from_secs(5)).await;
    collector.stop().await;

    let validator = validator();
    for prefix in ["flows-native-", "flows-gke-"] {
        let files = files(dir.path(), prefix);
        assert_eq!(files.len(), 3, "{prefix}: {files:?}");
        for file in &files {
            let len = std::fs::metadata(file).unwrap().len();
            assert!(len <= 16 * 1024, "{} is {len} bytes", file.display());
        }
    }
    // The newest lines are kept, each one valid and in order.
    let mut last_id = None;
    let mut gke_lines = 0;
    for file in files(dir.path(), "flows-gke-") {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            assert!(validator.is_valid(&value), "{line}");
            let id: u64 = value["connection"]["src_port"].as_u64().unwrap();
            if let Some(last) = last_id {
                assert_eq!(id, last + 1);
            }
            last_id = Some(id);
            gke_lines += 1;
        }
    }
    assert_eq!(last_id, Some(N - 1));
    assert!(gke_lines > 2 * 16 * 1024 / 600, "{gke_lines} lines kept");
    // Native lines are exactly `podflow tail -o json` lines.
    let native = files(dir.path(), "flows-native-");
    let text = std::fs::read_to_string(native.last().unwrap()).unwrap();
    let last_line = text.lines().last().unwrap();
    assert_eq!(
        last_line,
        podflow::format::json_line(events.last().unwrap())
            .unwrap()
            .unwrap()
    );
}
