//! The NetworkPolicy advisor on real traffic (issue 14): a small application in network
//! namespaces (frontend → backend through a Service the node DNATs, backend → db, everything →
//! a DNS pod, the backend → an address outside the cluster through the node's masquerade), the
//! real agent naming it all from a metadata file, `podflow advise network-policy` reading the
//! agent's stream. The evaluator then shows that the generated policies allow every observed
//! exchange and deny the ones never observed (frontend → db directly, db → anything but DNS).
//! Privileged (root).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use podflow::policy::{
    AddressEndpoint, AddressKind, Connection, Endpoint, NamedPort, NamespaceLabels, PodEndpoint,
    PolicySet, Protocol,
};
use podflow_testbed::{
    Node,
    kube_proxy::{self, Mode, ServiceRule},
    outside_host, unique_prefix, wait_for,
};
use serde_json::{Value, json};

use crate::support::{
    agent::{Agent, tail},
    privileged,
    udp::{Servers, udp_flows},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const BACKEND_PORT: u16 = 8080;
const DB_PORT: u16 = 5432;
const DNS_PORT: u16 = 53;
const OUTSIDE_PORT: u16 = 443;

fn pod_json(name: &str, namespace: &str, app: &str, ip: Ipv4Addr, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{app}-5d4f-{name}"), "namespace": namespace,
                     "uid": format!("uid-{name}"),
                     "labels": {"app": app, "pod-template-hash": "5d4f"},
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                         "name": format!("{app}-5d4f"), "uid": format!("rs-{app}"),
                         "controller": true}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox",
                 "ports": [{"name": "main", "containerPort": port, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string(),
                   "podIPs": [{"ip": ip.to_string()}], "startTime": "2026-01-01T00:00:00Z"}
    })
}

#[test]
fn advised_policies_allow_what_ran_and_deny_the_rest() {
    if !privileged() {
        return;
    }
    // Interface names are at most 15 bytes: a one-letter tag (the prefix is then ≤ 9).
    let p = unique_prefix("a");
    let mut node = Node::new(&p, 91).expect("node");
    for (name, tag) in [
        ("frontend", 'f'),
        ("backend", 'b'),
        ("db", 'd'),
        ("dns", 'n'),
    ] {
        // `veth` for the agent's default interface patterns; ≤ 15 bytes in all.
        node.add_pod(name, &format!("veth{p}{tag}")).expect("pod");
    }
    let (outside, node_ext, ext) = outside_host(&node.ns, &p, 3).expect("outside host");
    let ip = |name: &str| node.pod(name).expect("pod").ipv4;
    kube_proxy::install(
        &node.ns,
        Mode::Iptables,
        &[ServiceRule {
            name: "backend".into(),
            cluster_ip: VIP,
            protocol: "udp",
            port: 80,
            node_port: None,
            endpoints: vec![(ip("backend"), BACKEND_PORT)],
        }],
        Some((&node.pod_cidr_v4(), &format!("ex{p}a"))),
    )
    .expect("kube-proxy rules");

    let dir = tempfile::tempdir().expect("tempdir");
    let metadata = dir.path().join("cluster.json");
    let items = vec![
        pod_json("1", "shop", "frontend", ip("frontend"), 8000),
        pod_json("2", "shop", "backend", ip("backend"), BACKEND_PORT),
        pod_json("3", "data", "db", ip("db"), DB_PORT),
        pod_json("4", "kube-system", "dns", ip("dns"), DNS_PORT),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "backend", "namespace": "shop", "uid": "uid-svc-backend",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "ClusterIP", "clusterIP": VIP.to_string(),
                     "clusterIPs": [VIP.to_string()], "selector": {"app": "backend"},
                     "ports": [{"name": "main", "port": 80, "targetPort": "main",
                                "protocol": "UDP"}]}
        }),
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "uid": "uid-node-a"},
            "spec": {"podCIDR": node.pod_cidr_v4(), "podCIDRs": [node.pod_cidr_v4()]},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ext.to_string()}]}
        }),
    ];
    std::fs::write(
        &metadata,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .expect("metadata file");
    let agent = Agent::start_named(
        &node,
        "node-a",
        &[
            "--metadata-file",
            &metadata.to_string_lossy(),
            "--conntrack",
            "on",
        ],
    );
    let veths: Vec<String> = node.pods.iter().map(|p| p.host_veth.clone()).collect();
    let veth_refs: Vec<&str> = veths.iter().map(String::as_str).collect();
    agent.wait_attached(&veth_refs, Duration::from_secs(10));
    // Until the metadata is loaded, records would carry bare addresses.
    let loaded = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        agent
            .log_text()
            .contains("metadata file loaded")
            .then_some(())
    });
    assert!(
        loaded.is_some(),
        "metadata not loaded:\n{}",
        agent.log_text()
    );

    let pod_ns = |name: &str| &node.pod(name).expect("pod").ns;
    let _backend = Servers::start(pod_ns("backend"), &[(BACKEND_PORT, true)]);
    let _db = Servers::start(pod_ns("db"), &[(DB_PORT, true)]);
    let _dns = Servers::start(pod_ns("dns"), &[(DNS_PORT, true)]);
    let _outside = Servers::start(&outside, &[(OUTSIDE_PORT, true)]);
    let at = |name: &str, port| SocketAddr::from((ip(name), port));
    let mut expected = 0;
    for (from, to, n) in [
        ("frontend", SocketAddr::from((VIP, 80)), 3),
        ("backend", at("db", DB_PORT), 2),
        ("frontend", at("dns", DNS_PORT), 2),
        ("backend", at("dns", DNS_PORT), 2),
        ("db", at("dns", DNS_PORT), 1),
        ("backend", SocketAddr::from((ext, OUTSIDE_PORT)), 2),
    ] {
        assert_eq!(
            udp_flows(pod_ns(from), to, n, true),
            n as u64,
            "{from} -> {to} answered"
        );
        expected += 2 * n;
    }
    // Every exchange's two records flushed (1 s flushes) before advising.
    let flushed = wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        let n = tail(&agent.sock, &[]).len();
        (n >= expected).then_some(n)
    });
    assert!(flushed.is_some(), "the records did not all arrive");

    let out = dir.path().join("policies.yaml");
    let result = Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["advise", "network-policy", "--server"])
        .arg(&agent.sock)
        .args(["--for", "1s", "--last", "100000", "--metadata-file"])
        .arg(&metadata)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run podflow advise");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let yaml = std::fs::read_to_string(&out).expect("policies");
    let policies: Vec<NetworkPolicy> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("a NetworkPolicy"))
        .collect();
    let names: Vec<String> = policies
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "podflow-deployment-db",
            "podflow-deployment-dns",
            "podflow-deployment-backend",
            "podflow-deployment-frontend"
        ],
        "{yaml}"
    );
    // Everything the application did could be allowed. The namespaces' own IPv6 control
    // traffic (neighbour discovery, MLD: ICMPv6 between link-local and multicast addresses) may
    // be reported, never allowed, and never names a workload.
    for line in yaml.lines().filter(|l| l.starts_with("#   ")) {
        assert!(
            (line.contains("fe80::") || line.contains("ff02::")) && !line.contains("Deployment"),
            "a report line about the application: {line}\n{yaml}"
        );
    }

    // The pod specs name their ports (from --metadata-file): the rules use the names.
    assert!(
        yaml.contains("      port: \"main\"  # 6 flows,"),
        "backend's port by name:\n{yaml}"
    );
    let set = PolicySet::new(&policies).expect("valid policies");
    let pod = |name: &str, namespace: &str, port: u16| {
        Endpoint::Pod(PodEndpoint {
            namespace: namespace.into(),
            labels: [
                ("app".to_string(), name.to_string()),
                ("pod-template-hash".to_string(), "5d4f".to_string()),
            ]
            .into(),
            ip: IpAddr::V4(ip(name)),
            ports: vec![NamedPort {
                name: "main".into(),
                port,
                protocol: Protocol::Udp,
            }],
            node: Some("node-a".into()),
        })
    };
    let (frontend, backend, db, dns) = (
        pod("frontend", "shop", 8000),
        pod("backend", "shop", BACKEND_PORT),
        pod("db", "data", DB_PORT),
        pod("dns", "kube-system", DNS_PORT),
    );
    let outside_addr = Endpoint::Address(AddressEndpoint {
        ip: IpAddr::V4(ext),
        kind: AddressKind::External,
    });
    let allowed = |src: &Endpoint, dst: &Endpoint, port: u16| {
        set.evaluate(
            &NamespaceLabels::new(),
            &Connection {
                src: src.clone(),
                dst: dst.clone(),
                protocol: Protocol::Udp,
                port,
            },
        )
        .allowed()
    };
    for (src, dst, port, what) in [
        (&frontend, &backend, BACKEND_PORT, "frontend -> backend"),
        (&backend, &db, DB_PORT, "backend -> db"),
        (&frontend, &dns, DNS_PORT, "frontend -> dns"),
        (&backend, &dns, DNS_PORT, "backend -> dns"),
        (&db, &dns, DNS_PORT, "db -> dns"),
        (&backend, &outside_addr, OUTSIDE_PORT, "backend -> outside"),
    ] {
        assert!(
            allowed(src, dst, port),
            "observed but denied: {what}\n{yaml}"
        );
    }
    for (src, dst, port, what) in [
        (&frontend, &db, DB_PORT, "frontend -> db"),
        (&db, &backend, BACKEND_PORT, "db -> backend"),
        (&db, &frontend, 8000, "db -> frontend"),
        (&db, &outside_addr, OUTSIDE_PORT, "db -> outside"),
        (
            &frontend,
            &outside_addr,
            OUTSIDE_PORT,
            "frontend -> outside",
        ),
        (&backend, &frontend, 8000, "backend -> frontend"),
        (&dns, &db, DB_PORT, "dns -> db"),
    ] {
        assert!(
            !allowed(src, dst, port),
            "never observed but allowed: {what}\n{yaml}"
        );
    }
    drop(agent);
}
