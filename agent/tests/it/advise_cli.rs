//! `podflow advise network-policy` against a collector's stream: the binary reads the flows of
//! a window, writes one policy per workload with its report, and the policies allow what the
//! records show and nothing else (the evaluator decides).
use std::{net::IpAddr, process::Command, time::Duration};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use podflow::{
    policy::{Connection, Endpoint, NamespaceLabels, PodEndpoint, PolicySet, Protocol},
    proto::{self, flow_event::Event},
};

use crate::support::export::{InProcess, loopback_args};

fn pod(ns: &str, workload: &str, labels: &[(&str, &str)]) -> proto::Endpoint {
    proto::Endpoint {
        kind: "pod".into(),
        namespace: ns.into(),
        pod: format!("{workload}-abc12"),
        workload_kind: "Deployment".into(),
        workload: workload.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        node: "node-a".into(),
        ..Default::default()
    }
}

fn web() -> proto::Endpoint {
    pod(
        "shop",
        "web",
        &[("app", "web"), ("pod-template-hash", "5d9f")],
    )
}

fn api() -> proto::Endpoint {
    pod(
        "shop",
        "api",
        &[("app", "api"), ("pod-template-hash", "77c9")],
    )
}

fn flow(
    src: proto::Endpoint,
    src_ip: [u8; 4],
    src_port: u32,
    dst: proto::Endpoint,
    dst_ip: [u8; 4],
    dst_port: u32,
    reply: Option<bool>,
) -> proto::FlowEvent {
    proto::FlowEvent {
        event: Some(Event::Flow(proto::Flow {
            end_time: Some(prost_types::Timestamp {
                seconds: 1_765_000_000,
                nanos: 0,
            }),
            src_ip: src_ip.to_vec(),
            dst_ip: dst_ip.to_vec(),
            src_port,
            dst_port,
            protocol: 6,
            packets: 3,
            bytes: 300,
            src: Some(src),
            dst: Some(dst),
            translation: reply.map(|reply| proto::Translation {
                service_ip: vec![10, 96, 0, 20],
                service_port: 80,
                reply,
                ..Default::default()
            }),
            reporter: "SRC".into(),
            ..Default::default()
        })),
    }
}

const WEB: [u8; 4] = [10, 244, 1, 5];
const API: [u8; 4] = [10, 244, 1, 6];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advise_writes_policies_from_a_stream() {
    let collector = InProcess::start(loopback_args()).await;
    collector.hub.publish(vec![
        // web -> api through its Service (target port 8080), and the answer.
        flow(web(), WEB, 40_000, api(), API, 8080, Some(false)),
        flow(api(), API, 8080, web(), WEB, 40_000, Some(true)),
        // Two ports neither side is known to listen on: reported, not allowed.
        flow(web(), WEB, 5000, api(), API, 6000, None),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("policies.yaml");
    let addr = collector.addr;
    let result = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_podflow"))
            .args(["advise", "network-policy", "--server"])
            .arg(addr.to_string())
            .args(["--for", "1s", "--last", "100", "-o"])
            .arg(&out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 flow records, 1 connections, 2 policies; 1 connection(s)"),
        "{stderr}"
    );
    let yaml = std::fs::read_to_string(dir.path().join("policies.yaml")).unwrap();
    assert!(
        yaml.starts_with(
            "# podflow advise network-policy: 3 flow records, 1 connections.\n# Report (not \
         allowed by these policies):\n#   not allowed: shop/Deployment/api port 6000 <-> \
         shop/Deployment/web port 5000 TCP (1 records): which end initiated is unknown"
        ),
        "{yaml}"
    );
    let policies: Vec<NetworkPolicy> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(policies.len(), 2, "{yaml}");
    let set = PolicySet::new(&policies).unwrap();
    let endpoint = |e: proto::Endpoint, ip: [u8; 4]| {
        Endpoint::Pod(PodEndpoint {
            namespace: e.namespace,
            labels: e.labels,
            ip: IpAddr::from(ip),
            ports: vec![],
            node: Some(e.node),
        })
    };
    let allowed = |src, dst, port| {
        set.evaluate(
            &NamespaceLabels::new(),
            &Connection {
                src,
                dst,
                protocol: Protocol::Tcp,
                port,
            },
        )
        .allowed()
    };
    assert!(allowed(endpoint(web(), WEB), endpoint(api(), API), 8080));
    assert!(!allowed(endpoint(api(), API), endpoint(web(), WEB), 40_000));
    assert!(!allowed(endpoint(web(), WEB), endpoint(api(), API), 6000));
    tokio::time::timeout(Duration::from_secs(10), collector.stop())
        .await
        .unwrap();
}
