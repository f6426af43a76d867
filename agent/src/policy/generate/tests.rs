use std::net::IpAddr;

use super::*;
use crate::policy::{
    connection::{AddressEndpoint, AddressKind, Connection, Endpoint, PodEndpoint},
    eval::{NamespaceLabels, PolicySet},
};

fn key(namespace: &str, kind: &str, name: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: namespace.into(),
        kind: kind.into(),
        name: name.into(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The test application: frontend → backend (through a Service: the backend's target port,
/// named `http`), backend → db, everything → cluster DNS, backend → one outside address, a
/// host-network agent on another node scraping the backend, plus what must only be reported.
struct App {
    workloads: BTreeMap<WorkloadKey, Workload>,
    /// Each workload's pods' full labels (volatile ones included) and address.
    pods: BTreeMap<WorkloadKey, (Labels, IpAddr)>,
    observed: Vec<Observed>,
}

fn frontend() -> WorkloadKey {
    key("shop", "Deployment", "frontend")
}
fn backend() -> WorkloadKey {
    key("shop", "Deployment", "backend")
}
fn db() -> WorkloadKey {
    key("data", "StatefulSet", "db")
}
fn dns() -> WorkloadKey {
    key("kube-system", "Deployment", "coredns")
}

fn evidence(flows: u64, first: i64) -> Evidence {
    Evidence {
        flows,
        bytes: flows * 1000,
        first,
        last: first + 60,
    }
}

fn obs(src: Peer, dst: Peer, protocol: Protocol, port: u16, flows: u64) -> Observed {
    Observed {
        src,
        dst,
        protocol,
        port,
        evidence: evidence(flows, 1_765_000_000 + i64::from(port)),
    }
}

fn app() -> App {
    let mut workloads = BTreeMap::new();
    let mut pods = BTreeMap::new();
    let mut add = |k: WorkloadKey, l: Labels, ports: Vec<NamedPort>, addr: &str| {
        pods.insert(k.clone(), (l.clone(), ip(addr)));
        workloads.insert(k, Workload { labels: l, ports });
    };
    add(
        frontend(),
        labels(&[("app", "frontend"), ("pod-template-hash", "5d9f8c6b")]),
        vec![],
        "10.244.1.10",
    );
    add(
        backend(),
        labels(&[
            ("app", "backend"),
            ("tier", "api"),
            ("pod-template-hash", "77c9"),
        ]),
        vec![NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        "10.244.1.20",
    );
    add(
        db(),
        labels(&[
            ("app", "db"),
            ("controller-revision-hash", "db-6b8"),
            ("statefulset.kubernetes.io/pod-name", "db-0"),
        ]),
        vec![],
        "10.244.2.30",
    );
    add(
        dns(),
        labels(&[("k8s-app", "kube-dns"), ("pod-template-hash", "abc")]),
        vec![NamedPort {
            name: "dns".into(),
            port: 53,
            protocol: Protocol::Udp,
        }],
        "10.244.0.53",
    );
    let w = Peer::Workload;
    let observed = vec![
        obs(w(frontend()), w(backend()), Protocol::Tcp, 8080, 40),
        obs(w(backend()), w(db()), Protocol::Tcp, 5432, 12),
        obs(w(frontend()), w(dns()), Protocol::Udp, 53, 30),
        obs(w(backend()), w(dns()), Protocol::Udp, 53, 20),
        obs(w(db()), w(dns()), Protocol::Udp, 53, 5),
        obs(
            w(backend()),
            Peer::External(ip("203.0.113.7")),
            Protocol::Tcp,
            443,
            3,
        ),
        obs(
            Peer::HostNetwork {
                ip: ip("192.168.0.12"),
                node: Some("node-b".into()),
            },
            w(backend()),
            Protocol::Tcp,
            8080,
            7,
        ),
        // Reported, never allowed.
        obs(
            w(frontend()),
            Peer::Unnamed {
                ip: Some(ip("10.244.9.9")),
                why: "no pod has this address".into(),
            },
            Protocol::Tcp,
            80,
            2,
        ),
        obs(w(frontend()), w(backend()), Protocol::Other(1), 0, 4),
    ];
    App {
        workloads,
        pods,
        observed,
    }
}

fn pod(app: &App, w: &WorkloadKey) -> Endpoint {
    let (labels, ip) = app.pods[w].clone();
    Endpoint::Pod(PodEndpoint {
        namespace: w.namespace.clone(),
        labels,
        ip,
        ports: app.workloads[w].ports.clone(),
        node: Some("node-a".into()),
    })
}

fn conn(src: Endpoint, dst: Endpoint, protocol: Protocol, port: u16) -> Connection {
    Connection {
        src,
        dst,
        protocol,
        port,
    }
}

fn allowed(advice: &Advice, c: &Connection) -> bool {
    let set = PolicySet::new(advice.policies.iter().map(|g| &g.policy)).unwrap();
    set.evaluate(&NamespaceLabels::new(), c).allowed()
}

#[test]
fn observed_connections_are_allowed_and_nothing_else() {
    let a = app();
    let advice = generate(&a.workloads, &a.observed, Options::default());
    let names: Vec<String> = advice
        .policies
        .iter()
        .map(|g| g.workload.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "data/StatefulSet/db",
            "kube-system/Deployment/coredns",
            "shop/Deployment/backend",
            "shop/Deployment/frontend"
        ]
    );
    let p = |w: &WorkloadKey| pod(&a, w);
    let external = Endpoint::Address(AddressEndpoint {
        ip: ip("203.0.113.7"),
        kind: AddressKind::External,
    });
    let scraper = Endpoint::Address(AddressEndpoint {
        ip: ip("192.168.0.12"),
        kind: AddressKind::HostNetwork {
            node: Some("node-b".into()),
        },
    });
    for c in [
        conn(p(&frontend()), p(&backend()), Protocol::Tcp, 8080),
        conn(p(&backend()), p(&db()), Protocol::Tcp, 5432),
        conn(p(&frontend()), p(&dns()), Protocol::Udp, 53),
        conn(p(&backend()), p(&dns()), Protocol::Udp, 53),
        conn(p(&db()), p(&dns()), Protocol::Udp, 53),
        // DNS over TCP: the fallback, allowed with UDP.
        conn(p(&db()), p(&dns()), Protocol::Tcp, 53),
        conn(p(&backend()), external.clone(), Protocol::Tcp, 443),
        conn(scraper.clone(), p(&backend()), Protocol::Tcp, 8080),
    ] {
        assert!(allowed(&advice, &c), "observed but denied: {c:?}");
    }
    let other_external = Endpoint::Address(AddressEndpoint {
        ip: ip("203.0.113.8"),
        kind: AddressKind::External,
    });
    for c in [
        // Never observed: the frontend straight to the database, the database initiating
        // anything but DNS, other ports, other addresses, the unnamed endpoint, ICMP.
        conn(p(&frontend()), p(&db()), Protocol::Tcp, 5432),
        conn(p(&db()), p(&backend()), Protocol::Tcp, 8080),
        conn(p(&db()), external.clone(), Protocol::Tcp, 443),
        conn(p(&backend()), p(&db()), Protocol::Tcp, 5433),
        conn(p(&backend()), p(&db()), Protocol::Udp, 5432),
        conn(p(&frontend()), p(&backend()), Protocol::Tcp, 9090),
        conn(p(&backend()), other_external, Protocol::Tcp, 443),
        conn(p(&frontend()), external.clone(), Protocol::Tcp, 443),
        conn(scraper.clone(), p(&frontend()), Protocol::Tcp, 8080),
        conn(p(&backend()), p(&frontend()), Protocol::Tcp, 8080),
        conn(p(&frontend()), p(&dns()), Protocol::Udp, 54),
        conn(
            p(&frontend()),
            Endpoint::Address(AddressEndpoint {
                ip: ip("10.244.9.9"),
                kind: AddressKind::External,
            }),
            Protocol::Tcp,
            80,
        ),
        conn(p(&frontend()), p(&backend()), Protocol::Other(1), 0),
    ] {
        assert!(!allowed(&advice, &c), "never observed but allowed: {c:?}");
    }
}

#[test]
fn selectors_drop_volatile_labels_and_name_ports() {
    let a = app();
    let advice = generate(&a.workloads, &a.observed, Options::default());
    let by_name = |w: WorkloadKey| {
        advice
            .policies
            .iter()
            .find(|g| g.workload == w)
            .unwrap()
            .clone()
    };
    let db_policy = by_name(db()).policy.spec.unwrap();
    assert_eq!(
        db_policy.pod_selector.unwrap().match_labels.unwrap(),
        labels(&[("app", "db")])
    );
    // The backend's ingress from the frontend is on its named port; the frontend's egress to
    // it names the backend's port too (named ports resolve against the destination).
    let backend_yaml = by_name(backend()).yaml;
    assert!(
        backend_yaml.contains("      port: \"http\"  # 40 flows,"),
        "{backend_yaml}"
    );
    let frontend_yaml = by_name(frontend()).yaml;
    assert!(frontend_yaml.contains("port: \"http\""), "{frontend_yaml}");
    // DNS: UDP observed (named by the DNS pods), TCP added and marked.
    assert!(frontend_yaml.contains("port: \"dns\"  # 30 flows"));
    assert!(frontend_yaml.contains(
        "port: 53  # DNS over TCP: not observed, allowed as the fallback of truncated answers"
    ));
    // Another namespace: namespaceSelector on the name AND the peer's podSelector.
    assert!(frontend_yaml.contains(
        "    - namespaceSelector:\n        matchLabels:\n          \
         \"kubernetes.io/metadata.name\": \"kube-system\"\n      podSelector:\n        \
         matchLabels:\n          \"k8s-app\": \"kube-dns\"\n"
    ));
    // The host-network scraper is an ipBlock of its node's address, said to be that.
    assert!(
        backend_yaml
            .contains("  # host-network pod on node node-b (192.168.0.12): 7 flows, 7000 bytes")
    );
    assert!(backend_yaml.contains("cidr: \"192.168.0.12/32\""));
    // Nothing observed reaching the frontend: all its ingress denied, and said so.
    assert!(frontend_yaml.contains("  # none observed: every ingress is denied\n  ingress: []\n"));
    for g in &advice.policies {
        for volatile in VOLATILE_LABELS {
            assert!(!g.yaml.contains(volatile), "{}", g.yaml);
        }
    }
}

#[test]
fn yaml_is_the_policy_and_deterministic() {
    let a = app();
    let advice = generate(&a.workloads, &a.observed, Options::default());
    for g in &advice.policies {
        let parsed: NetworkPolicy = serde_yaml::from_str(&g.yaml).unwrap();
        assert_eq!(parsed, g.policy, "{}", g.yaml);
    }
    // Any order of the same observations: the same bytes.
    let mut reversed = a.observed.clone();
    reversed.reverse();
    let again = generate(&a.workloads, &reversed, Options::default());
    assert_eq!(again.yaml(), advice.yaml());
    assert_eq!(again.findings, advice.findings);
    // One multi-document stream.
    let docs: Vec<NetworkPolicy> = serde_yaml::Deserializer::from_str(&advice.yaml())
        .map(|d| <NetworkPolicy as serde::Deserialize>::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 4);
}

/// The smallest case in full: the format a user reads.
#[test]
fn one_policy_in_full() {
    let mut workloads = BTreeMap::new();
    workloads.insert(
        key("shop", "Deployment", "web"),
        Workload {
            labels: labels(&[("app", "web"), ("pod-template-hash", "x1")]),
            ports: vec![],
        },
    );
    let observed = vec![Observed {
        src: Peer::External(ip("198.51.100.23")),
        dst: Peer::Workload(key("shop", "Deployment", "web")),
        protocol: Protocol::Tcp,
        port: 8443,
        evidence: Evidence {
            flows: 2,
            bytes: 3000,
            first: 1_765_000_000,
            last: 1_765_000_300,
        },
    }];
    let advice = generate(
        &workloads,
        &observed,
        Options {
            external_prefix_v4: 24,
            external_prefix_v6: 64,
        },
    );
    assert_eq!(
        advice.yaml(),
        r#"# Generated by podflow advise network-policy for shop/Deployment/web.
# Observed: 2 flows, 3000 bytes, first 2025-12-06T05:46:40Z, last 2025-12-06T05:51:40Z.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: "podflow-deployment-web"
  namespace: "shop"
  labels:
    "app.kubernetes.io/managed-by": "podflow"
spec:
  podSelector:
    matchLabels:
      "app": "web"
  policyTypes:
  - Ingress
  - Egress
  ingress:
  # external addresses: 2 flows, 3000 bytes, first 2025-12-06T05:46:40Z, last 2025-12-06T05:51:40Z
  - from:
    - ipBlock:
        cidr: "198.51.100.0/24"
    ports:
    - protocol: TCP
      port: 8443  # 2 flows, 3000 bytes, first 2025-12-06T05:46:40Z, last 2025-12-06T05:51:40Z
  # none observed: every egress is denied
  egress: []
"#
    );
    assert!(advice.findings.is_empty());
}

#[test]
fn what_cannot_be_allowed_is_reported() {
    let a = app();
    let advice = generate(&a.workloads, &a.observed, Options::default());
    let report: Vec<String> = advice.findings.iter().map(ToString::to_string).collect();
    assert_eq!(
        report,
        [
            "not allowed: shop/Deployment/frontend -> 10.244.9.9 (no pod has this address) \
             TCP/80 (2 flows): an end could not be named",
            "not allowed: shop/Deployment/frontend -> shop/Deployment/backend IP protocol 1 \
             (4 flows): NetworkPolicy can allow it only with a rule for every protocol and port",
        ]
    );

    // No window, no policy.
    let empty = generate(&a.workloads, &[], Options::default());
    assert!(empty.policies.is_empty());
    assert_eq!(empty.findings, [Finding::NoObservations]);

    // A workload with only volatile labels, and one whose labels select another's pods: no
    // policy for them, no rule naming them, both said.
    let mut workloads = a.workloads.clone();
    let bare = key("shop", "Pod", "debug");
    workloads.insert(
        bare.clone(),
        Workload {
            labels: labels(&[("pod-template-hash", "1")]),
            ports: vec![],
        },
    );
    let wide = key("shop", "Deployment", "backend-canary");
    workloads.insert(
        wide.clone(),
        Workload {
            labels: labels(&[("app", "backend")]),
            ports: vec![],
        },
    );
    let observed = vec![
        obs(
            Peer::Workload(bare.clone()),
            Peer::Workload(backend()),
            Protocol::Tcp,
            8080,
            1,
        ),
        obs(
            Peer::Workload(wide.clone()),
            Peer::Workload(db()),
            Protocol::Tcp,
            5432,
            1,
        ),
        obs(
            Peer::Workload(frontend()),
            Peer::Workload(backend()),
            Protocol::Tcp,
            8080,
            1,
        ),
    ];
    let advice = generate(&workloads, &observed, Options::default());
    let report: Vec<String> = advice.findings.iter().map(ToString::to_string).collect();
    assert_eq!(
        report,
        [
            "no policy for shop/Deployment/backend-canary: its labels select the pods of \
             shop/Deployment/backend too",
            "no policy for shop/Pod/debug: its pods carry no labels but volatile ones: a \
             selector would select every pod of the namespace",
            "not allowed: shop/Deployment/backend-canary -> data/StatefulSet/db TCP/5432 (1 \
             flows): an end has no selector of its own (see above)",
            "not allowed: shop/Pod/debug -> shop/Deployment/backend TCP/8080 (1 flows): an end \
             has no selector of its own (see above)",
        ]
    );
    let names: Vec<String> = advice
        .policies
        .iter()
        .map(|g| g.workload.to_string())
        .collect();
    assert_eq!(
        names,
        ["shop/Deployment/backend", "shop/Deployment/frontend"]
    );
}

/// `deploy/examples/network-policy-advice.yaml` is this test application's advice, as the
/// generator writes it; `cargo xtask test` validates it against the Kubernetes schemas (strict)
/// with the deploy manifests. Regenerate with
/// `PODFLOW_WRITE_EXAMPLES=1 cargo test -p podflow --lib shipped_advice`.
#[test]
fn shipped_advice_example_is_current() {
    let a = app();
    let advice = generate(&a.workloads, &a.observed, Options::default());
    let mut text = String::from(
        "# podflow advise network-policy: the example application of\n# \
         agent/src/policy/generate/tests.rs (frontend -> backend -> db, DNS, one outside \
         address,\n# a host-network scraper). Report (not allowed):\n",
    );
    for f in &advice.findings {
        text.push_str(&format!("#   {f}\n"));
    }
    text.push_str(&advice.yaml());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/network-policy-advice.yaml");
    if std::env::var_os("PODFLOW_WRITE_EXAMPLES").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == text,
        "{} is stale: PODFLOW_WRITE_EXAMPLES=1 cargo test -p podflow --lib shipped_advice",
        path.display()
    );
}
