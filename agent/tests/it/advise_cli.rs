//! `podflow advise network-policy` against a collector's stream: the binary reads the flows of
//! a window, writes one policy per workload with its report, and the policies allow what the
//! records show and nothing else (the evaluator decides).
use std::{net::IpAddr, process::Command, time::Duration};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use podflow::{
    export,
    policy::{Connection, Endpoint, NamespaceLabels, PodEndpoint, PolicySet, Protocol},
    proto::{self, flow_event::Event},
};

use crate::support::{
    clickhouse::ClickHouse,
    export::{ChildCollector, InProcess, fast_config, free_port, loopback_args, wait_stats},
};

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
            end_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
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

/// The window: web -> api through its Service and the answer, and two ports neither side is
/// known to listen on (reported, not allowed).
fn window() -> Vec<proto::FlowEvent> {
    vec![
        flow(web(), WEB, 40_000, api(), API, 8080, Some(false)),
        flow(api(), API, 8080, web(), WEB, 40_000, Some(true)),
        flow(web(), WEB, 5000, api(), API, 6000, None),
    ]
}

/// Runs `podflow advise network-policy` with `args`; its stderr and the YAML written.
/// With `kubeconfig`, the Kubernetes API is the one it names (never an in-cluster one).
async fn advise(args: Vec<String>, kubeconfig: Option<std::path::PathBuf>) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("policies.yaml");
    let arg_out = out.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_podflow"));
        cmd.args(["advise", "network-policy"])
            .args(&args)
            .arg("-o")
            .arg(&arg_out)
            .env_remove("KUBERNETES_SERVICE_HOST");
        if let Some(kubeconfig) = kubeconfig {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "{stderr}");
    (stderr, std::fs::read_to_string(out).unwrap())
}

/// What the window's advice must be, whatever its source.
fn check(stderr: &str, yaml: &str) {
    assert!(
        stderr.contains("3 flow records, 1 connections, 2 policies; 1 connection(s)"),
        "{stderr}"
    );
    assert!(
        yaml.starts_with(
            "# podflow advise network-policy: 3 flow records, 1 connections.\n# Report (not \
             allowed by these policies):\n#   not allowed: shop/Deployment/api port 6000 <-> \
             shop/Deployment/web port 5000 TCP (1 records): which end initiated is unknown"
        ),
        "{yaml}"
    );
    let policies: Vec<NetworkPolicy> = serde_yaml::Deserializer::from_str(yaml)
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advise_writes_policies_from_a_stream() {
    let collector = InProcess::start(loopback_args()).await;
    collector.hub.publish(window());
    let (stderr, yaml) = advise(
        vec![
            "--server".into(),
            collector.addr.to_string(),
            "--for".into(),
            "1s".into(),
            "--last".into(),
            "100".into(),
        ],
        None,
    )
    .await;
    check(&stderr, &yaml);
    tokio::time::timeout(Duration::from_secs(10), collector.stop())
        .await
        .unwrap();
}

/// The same window stored in ClickHouse by a real collector, read back aggregated (`--since`):
/// the same advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advise_reads_a_window_from_clickhouse() {
    if !crate::clickhouse_store::available() {
        return;
    }
    let server = ClickHouse::start();
    let port = free_port();
    let url = server.http_url();
    let _collector =
        ChildCollector::start(port, &["--clickhouse", &url, "--clickhouse-linger", "20ms"]);
    let exporter = export::spawn(fast_config(&format!("127.0.0.1:{port}"), "node-a")).unwrap();
    exporter.send(window());
    wait_stats(&exporter, Duration::from_secs(30), "acks", |s| {
        s.acked_records == 3
    })
    .await;
    exporter.shutdown(Duration::from_secs(5)).await;
    let (stderr, yaml) = advise(
        vec![
            "--clickhouse".into(),
            server.http_url(),
            "--since".into(),
            "1h".into(),
        ],
        None,
    )
    .await;
    check(&stderr, &yaml);
}

/// `--check`: the same window against existing policies (a List, as `kubectl get networkpolicy
/// -A -o yaml` writes it) that isolate the api's ingress and allow only port 9090: the web -> api
/// connection would break, and the rule allowing 9090 is unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_connections_existing_policies_deny() {
    let collector = InProcess::start(loopback_args()).await;
    collector.hub.publish(window());
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("existing.yaml");
    std::fs::write(
        &policies,
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: \
         NetworkPolicy\n  metadata: {name: api-ingress, namespace: shop}\n  spec:\n    \
         podSelector: {matchLabels: {app: api}}\n    ingress:\n    - from:\n      - \
         podSelector: {matchLabels: {app: web}}\n      ports: [{port: 9090}]\n",
    )
    .unwrap();
    let (stderr, report) = advise(
        vec![
            "--server".into(),
            collector.addr.to_string(),
            "--for".into(),
            "1s".into(),
            "--last".into(),
            "100".into(),
            "--check".into(),
            policies.display().to_string(),
        ],
        None,
    )
    .await;
    assert!(
        stderr.contains("0 connection(s) allowed, 1 denied, 1 rule peer(s) unused"),
        "{stderr}"
    );
    let lines: Vec<&str> = report.lines().collect();
    assert!(
        lines[0].ends_with("3 flow records, 1 connections, 1 policies"),
        "{report}"
    );
    assert!(
        lines[2].starts_with(
            "denied: shop/Deployment/web -> shop/Deployment/api TCP/8080 (2 flows, 600 bytes,"
        ),
        "{report}"
    );
    assert!(
        lines[2].ends_with(
            "denied (egress: not isolated; ingress: denied: isolated by shop/api-ingress and no \
             rule allows it)"
        ),
        "{report}"
    );
    assert_eq!(lines[3], "unused: shop/api-ingress ingress[0].from[0]");
    assert!(lines[4].starts_with("not checked: not allowed: shop/Deployment/api port 6000"));
    tokio::time::timeout(Duration::from_secs(10), collector.stop())
        .await
        .unwrap();
}

/// `--kube` and `--check-cluster`: the pods (named ports), their owners, the namespaces' labels
/// and the NetworkPolicies from the Kubernetes API (the tests' loopback server, through a
/// kubeconfig). The rules name the api's port `http`; the cluster's policy, which allows the web
/// by a namespace label the API gives and by the port's name, allows the observed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_api_gives_named_ports_labels_and_policies() {
    use crate::support::kube_mock::{self, MockApi};
    use serde_json::json;

    let api_server = MockApi::start().await;
    for (name, app, hash, ip, port) in [
        ("web-5d9f-x1", "web", "5d9f", "10.244.1.5", None),
        ("api-77c9-y2", "api", "77c9", "10.244.1.6", Some(8080)),
    ] {
        let mut pod = kube_mock::pod(
            "shop",
            name,
            &format!("uid-{name}"),
            "node-a",
            Some(ip),
            "Running",
            None,
            Some(("ReplicaSet", &format!("{app}-{hash}"))),
            json!({"app": app, "pod-template-hash": hash}),
        );
        if let Some(port) = port {
            pod["spec"]["containers"][0]["ports"] =
                json!([{"name": "http", "containerPort": port, "protocol": "TCP"}]);
        }
        api_server.upsert("pods", pod);
        api_server.upsert(
            "replicasets",
            kube_mock::replicaset("shop", &format!("{app}-{hash}"), app),
        );
    }
    api_server.upsert(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "uid": "ns-shop",
                            "labels": {"kubernetes.io/metadata.name": "shop", "team": "shop"}}}),
    );
    api_server.upsert(
        "networkpolicies",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "api-ingress", "namespace": "shop", "uid": "np-1"},
               "spec": {"podSelector": {"matchLabels": {"app": "api"}},
                        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}],
                                     "ports": [{"port": "http"}]},
                                    {"from": [{"podSelector": {"matchLabels": {"app": "batch"}}}]}]}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster: {{server: \
             \"http://{}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: \
             {{cluster: mock, user: u}}\ncurrent-context: c\n",
            api_server.addr
        ),
    )
    .unwrap();

    let collector = InProcess::start(loopback_args()).await;
    collector.hub.publish(window());
    let args = |extra: &[&str]| {
        let mut args = vec![
            "--server".to_string(),
            collector.addr.to_string(),
            "--for".into(),
            "1s".into(),
            "--last".into(),
            "100".into(),
            "--kube".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_string()));
        args
    };
    let (_, yaml) = advise(args(&[]), Some(kubeconfig.clone())).await;
    assert!(yaml.contains("      port: \"http\"  # 2 flows,"), "{yaml}");
    let (_, report) = advise(args(&["--check-cluster"]), Some(kubeconfig)).await;
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines[1],
        "1 observed connection(s) allowed, 0 denied, 0 not checked; 1 rule peer(s) unused",
        "{report}"
    );
    assert_eq!(
        lines[2], "unused: shop/api-ingress ingress[1].from[0]",
        "{report}"
    );
    collector.stop().await;
}
