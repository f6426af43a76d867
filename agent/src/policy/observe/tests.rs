use super::*;
use crate::policy::{
    connection::{AddressEndpoint, AddressKind, Connection, Endpoint, PodEndpoint},
    eval::{NamespaceLabels, PolicySet},
    generate::{Options, generate},
};

fn pod(ns: &str, workload: &str, pod: &str, labels: &[(&str, &str)]) -> proto::Endpoint {
    proto::Endpoint {
        kind: "pod".into(),
        namespace: ns.into(),
        pod: pod.into(),
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

fn frontend_pod() -> proto::Endpoint {
    pod(
        "shop",
        "frontend",
        "frontend-5d9f-abcde",
        &[("app", "frontend"), ("pod-template-hash", "5d9f")],
    )
}

fn backend_pod(hash: &str, version: &str) -> proto::Endpoint {
    pod(
        "shop",
        "backend",
        &format!("backend-{hash}-x"),
        &[
            ("app", "backend"),
            ("pod-template-hash", hash),
            ("version", version),
        ],
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "a record is written field by field in the tests"
)]
fn record(
    src: Option<proto::Endpoint>,
    src_ip: [u8; 4],
    src_port: u32,
    dst: Option<proto::Endpoint>,
    dst_ip: [u8; 4],
    dst_port: u32,
    protocol: u32,
    translation: Option<proto::Translation>,
) -> proto::Flow {
    proto::Flow {
        start_time: Some(prost_types::Timestamp {
            seconds: 1_765_000_000,
            nanos: 0,
        }),
        end_time: Some(prost_types::Timestamp {
            seconds: 1_765_000_010,
            nanos: 0,
        }),
        src_ip: src_ip.to_vec(),
        dst_ip: dst_ip.to_vec(),
        src_port,
        dst_port,
        protocol,
        packets: 2,
        bytes: 100,
        src,
        dst,
        translation,
        reporter: "SRC".into(),
        ..Default::default()
    }
}

const FRONTEND: [u8; 4] = [10, 244, 1, 10];
const BACKEND: [u8; 4] = [10, 244, 1, 20];
const DB: [u8; 4] = [10, 244, 2, 30];
const DNS: [u8; 4] = [10, 244, 0, 53];

fn wk(ns: &str, kind: &str, name: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: ns.into(),
        kind: kind.into(),
        name: name.into(),
    }
}

/// The db pods declare 5432 (a named container port in the metadata).
fn declared(p: &Peer, port: u16, protocol: Protocol) -> bool {
    matches!(p, Peer::Workload(w) if w.name == "db") && port == 5432 && protocol == Protocol::Tcp
}

fn named_ports(w: &WorkloadKey) -> Vec<NamedPort> {
    if w.name == "db" {
        vec![NamedPort {
            name: "postgres".into(),
            port: 5432,
            protocol: Protocol::Tcp,
        }]
    } else {
        vec![]
    }
}

fn db_pod() -> proto::Endpoint {
    pod("data", "db", "db-0", &[("app", "db")])
}

fn dns_pod() -> proto::Endpoint {
    let mut p = pod(
        "kube-system",
        "coredns",
        "coredns-1",
        &[("k8s-app", "kube-dns")],
    );
    p.node = "node-b".into();
    p
}

/// Both directions of each kind of exchange: through a Service (translation), to a declared port,
/// to a well-known port, and back from an ephemeral one.
fn records() -> Vec<proto::Flow> {
    let via_service = |reply| {
        Some(proto::Translation {
            service_ip: vec![10, 96, 0, 10],
            service_port: 80,
            reply,
            ..Default::default()
        })
    };
    vec![
        // frontend -> backend through its Service (the backend's target port 8080), and back.
        record(
            Some(frontend_pod()),
            FRONTEND,
            45_000,
            Some(backend_pod("77c9", "v1")),
            BACKEND,
            8080,
            6,
            via_service(false),
        ),
        record(
            Some(backend_pod("77c9", "v1")),
            BACKEND,
            8080,
            Some(frontend_pod()),
            FRONTEND,
            45_000,
            6,
            via_service(true),
        ),
        // Another backend revision answering alone (its request record elsewhere).
        record(
            Some(backend_pod("8d1e", "v2")),
            [10, 244, 1, 21],
            8080,
            Some(frontend_pod()),
            FRONTEND,
            45_001,
            6,
            via_service(true),
        ),
        // backend -> db from a fixed port 5000: the declared 5432 decides; and the answer.
        record(
            Some(backend_pod("77c9", "v1")),
            BACKEND,
            5000,
            Some(db_pod()),
            DB,
            5432,
            6,
            None,
        ),
        record(
            Some(db_pod()),
            DB,
            5432,
            Some(backend_pod("77c9", "v1")),
            BACKEND,
            5000,
            6,
            None,
        ),
        // DNS: port 53 below 1024; only the answer of one exchange was seen.
        record(
            Some(frontend_pod()),
            FRONTEND,
            41_000,
            Some(dns_pod()),
            DNS,
            53,
            17,
            None,
        ),
        record(
            Some(dns_pod()),
            DNS,
            53,
            Some(backend_pod("77c9", "v1")),
            BACKEND,
            41_001,
            17,
            None,
        ),
        // An outside address on 443 from an ephemeral port.
        record(
            Some(backend_pod("77c9", "v1")),
            BACKEND,
            50_000,
            Some(proto::Endpoint {
                kind: "external".into(),
                ..Default::default()
            }),
            [203, 0, 113, 7],
            443,
            6,
            None,
        ),
    ]
}

#[test]
fn records_become_connections_by_their_initiator() {
    let mut o = Observer::new();
    for r in records() {
        o.add(&r, &declared);
    }
    let obs = o.finish(&named_ports);
    let got: Vec<String> = obs
        .observed
        .iter()
        .map(|o| {
            format!(
                "{} -> {} {}/{} x{}",
                o.src, o.dst, o.protocol, o.port, o.evidence.flows
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "shop/Deployment/backend -> data/Deployment/db TCP/5432 x2",
            "shop/Deployment/backend -> kube-system/Deployment/coredns UDP/53 x1",
            "shop/Deployment/backend -> external 203.0.113.7 TCP/443 x1",
            "shop/Deployment/frontend -> kube-system/Deployment/coredns UDP/53 x1",
            "shop/Deployment/frontend -> shop/Deployment/backend TCP/8080 x3",
        ]
    );
    assert!(obs.undirected.is_empty(), "{:?}", obs.undirected);
    // Labels common to the workload's records: the two revisions differ in version and hash.
    let backend = &obs.workloads[&wk("shop", "Deployment", "backend")];
    assert_eq!(
        backend.labels,
        [("app".to_string(), "backend".to_string())].into()
    );
    assert_eq!(
        obs.workloads[&wk("data", "Deployment", "db")].ports,
        named_ports(&wk("data", "Deployment", "db"))
    );
    let frontend = &obs.workloads[&wk("shop", "Deployment", "frontend")];
    assert_eq!(
        frontend.labels.len(),
        2,
        "the hash stays: the generator drops it"
    );
}

#[test]
fn what_cannot_be_directed_or_named_is_said() {
    let mut o = Observer::new();
    // Two pods on 5000 and 6000: nothing tells which listens.
    let p2p = record(
        Some(frontend_pod()),
        FRONTEND,
        5000,
        Some(backend_pod("77c9", "v1")),
        BACKEND,
        6000,
        17,
        None,
    );
    o.add(&p2p, &declared);
    // The other agent's copy of an inter-node flow from a pod: counted once.
    let mut copy = record(
        Some(frontend_pod()),
        FRONTEND,
        45_000,
        Some(dns_pod()),
        DNS,
        53,
        17,
        None,
    );
    copy.reporter = "DEST".into();
    copy.inter_node = true;
    o.add(&copy, &declared);
    // Two records of one conversation that disagree (a translation against the ports).
    let forward = record(
        Some(frontend_pod()),
        FRONTEND,
        45_002,
        Some(backend_pod("77c9", "v1")),
        BACKEND,
        8080,
        6,
        None,
    );
    o.add(&forward, &declared);
    let mut odd = forward.clone();
    odd.translation = Some(proto::Translation {
        service_ip: vec![10, 96, 0, 10],
        reply: true,
        ..Default::default()
    });
    o.add(&odd, &declared);
    // ICMP: no port to tell by; reported by the generator, not left undirected.
    o.add(
        &record(
            Some(frontend_pod()),
            FRONTEND,
            8,
            Some(backend_pod("77c9", "v1")),
            BACKEND,
            0,
            1,
            None,
        ),
        &declared,
    );
    let obs = o.finish(&named_ports);
    assert_eq!(
        obs.observed
            .iter()
            .map(|o| format!("{} -> {} {}", o.src, o.dst, o.protocol))
            .collect::<Vec<_>>(),
        [
            "shop/Deployment/frontend -> shop/Deployment/backend TCP",
            "shop/Deployment/frontend -> shop/Deployment/backend IP protocol 1"
        ]
    );
    assert_eq!(obs.duplicates, 1);
    assert_eq!(obs.contradictions, 1);
    assert_eq!(
        obs.undirected
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "not allowed: shop/Deployment/backend port 6000 <-> shop/Deployment/frontend port \
          5000 UDP (1 records): which end initiated is unknown (no translation, no declared \
          port, no telling port range)"
        ]
    );

    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    let with = |kind: &str, ambiguous: bool| proto::Endpoint {
        kind: kind.into(),
        node: "node-c".into(),
        ambiguous,
        ..Default::default()
    };
    let peers: Vec<String> = [
        Some(with("pod", true)),
        Some(with("pod", false)),
        Some(with("service", false)),
        Some(with("unknown", false)),
        Some(with("host_network_pod", false)),
        Some(with("node", false)),
        Some(with("external", false)),
        None,
    ]
    .iter()
    .map(|e| peer(e.as_ref(), Some(ip)).to_string())
    .collect();
    assert_eq!(
        peers,
        [
            "10.0.0.9 (ambiguous: several owners had this address)",
            "10.0.0.9 (a pod without namespace)",
            "10.0.0.9 (a Service address the node did not translate (no backend known))",
            "10.0.0.9 (no known owner)",
            "host-network pod on node node-c (10.0.0.9)",
            "node node-c (10.0.0.9)",
            "external 10.0.0.9",
            "10.0.0.9 (no metadata)",
        ]
    );
}

/// From records to policies: every observed exchange is allowed, the ones never observed are
/// denied, as the evaluator decides.
#[test]
fn policies_from_records_allow_what_was_seen() {
    let mut o = Observer::new();
    for r in records() {
        o.add(&r, &declared);
    }
    let obs = o.finish(&named_ports);
    let advice = generate(&obs.workloads, &obs.observed, Options::default());
    assert!(advice.findings.is_empty(), "{:?}", advice.findings);
    let set = PolicySet::new(advice.policies.iter().map(|g| &g.policy)).unwrap();
    let ep = |e: proto::Endpoint, ip: [u8; 4], ports: Vec<NamedPort>| {
        Endpoint::Pod(PodEndpoint {
            namespace: e.namespace,
            labels: e.labels,
            ip: IpAddr::from(ip),
            ports,
            node: Some(e.node),
        })
    };
    let frontend = || ep(frontend_pod(), FRONTEND, vec![]);
    let backend = || ep(backend_pod("99aa", "v3"), BACKEND, vec![]);
    let db = || ep(db_pod(), DB, named_ports(&wk("data", "Deployment", "db")));
    let dns = || ep(dns_pod(), DNS, vec![]);
    let allowed = |src: Endpoint, dst: Endpoint, protocol, port| {
        set.evaluate(
            &NamespaceLabels::new(),
            &Connection {
                src,
                dst,
                protocol,
                port,
            },
        )
        .allowed()
    };
    // A new backend revision (another hash and version) is still covered: the selector kept
    // only what every revision had.
    assert!(allowed(frontend(), backend(), Protocol::Tcp, 8080));
    assert!(allowed(backend(), db(), Protocol::Tcp, 5432));
    assert!(allowed(backend(), dns(), Protocol::Udp, 53));
    assert!(allowed(backend(), dns(), Protocol::Tcp, 53));
    assert!(allowed(frontend(), dns(), Protocol::Udp, 53));
    let outside = Endpoint::Address(AddressEndpoint {
        ip: "203.0.113.7".parse().unwrap(),
        kind: AddressKind::External,
    });
    assert!(allowed(backend(), outside.clone(), Protocol::Tcp, 443));
    // Never observed.
    assert!(!allowed(frontend(), db(), Protocol::Tcp, 5432));
    assert!(!allowed(db(), backend(), Protocol::Tcp, 5000));
    assert!(!allowed(backend(), frontend(), Protocol::Tcp, 45_000));
    assert!(!allowed(dns(), frontend(), Protocol::Udp, 41_000));
    assert!(!allowed(frontend(), outside, Protocol::Tcp, 443));
}
