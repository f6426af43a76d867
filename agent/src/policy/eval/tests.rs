//! The evaluator against the Kubernetes NetworkPolicy documentation's examples and the shapes of
//! the upstream conformance suite (test/e2e/network/netpol), with policies written as YAML.
//!
//! The e2e-shaped tests use the suite's model: namespaces x, y, z (labels: only the implied
//! `kubernetes.io/metadata.name`), pods a, b, c in each with the label `pod=<name>` and named
//! ports `serve-80-tcp`, `serve-81-tcp`, `serve-80-udp`, `serve-81-udp`, `serve-80-sctp`,
//! `serve-81-sctp`; a "denied" matrix lists the connections the policies deny (loopback left
//! out, as the suite does).
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ContainerPort;
use serde::Deserialize;

use super::*;
use crate::policy::SelectorError;

// ---- fixtures ----------------------------------------------------------------------------

fn parse(yaml: &str) -> Vec<NetworkPolicy> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| NetworkPolicy::deserialize(doc).expect("NetworkPolicy YAML"))
        .collect()
}

fn policy_set(yaml: &str) -> PolicySet {
    PolicySet::new(&parse(yaml)).expect("valid policies")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP address")
}

/// `"a=1,b=2"` → labels.
fn labels(spec: &str) -> Labels {
    spec.split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn pod(namespace: &str, pod_labels: &str, address: &str) -> Endpoint {
    Endpoint::Pod(PodEndpoint {
        namespace: namespace.to_owned(),
        labels: labels(pod_labels),
        ip: ip(address),
        ports: Vec::new(),
        node: None,
    })
}

fn with_ports(endpoint: Endpoint, ports: &[(&str, u16, Protocol)]) -> Endpoint {
    match endpoint {
        Endpoint::Pod(mut p) => {
            p.ports = ports
                .iter()
                .map(|(name, port, protocol)| NamedPort {
                    name: (*name).to_owned(),
                    port: *port,
                    protocol: *protocol,
                })
                .collect();
            Endpoint::Pod(p)
        }
        other => other,
    }
}

fn on_node(endpoint: Endpoint, node: &str) -> Endpoint {
    match endpoint {
        Endpoint::Pod(mut p) => {
            p.node = Some(node.to_owned());
            Endpoint::Pod(p)
        }
        other => other,
    }
}

fn external(address: &str) -> Endpoint {
    Endpoint::Address(AddressEndpoint {
        ip: ip(address),
        kind: AddressKind::External,
    })
}

fn node(name: &str, address: &str) -> Endpoint {
    Endpoint::Address(AddressEndpoint {
        ip: ip(address),
        kind: AddressKind::Node {
            name: Some(name.to_owned()),
        },
    })
}

fn host_network(node: &str, address: &str) -> Endpoint {
    Endpoint::Address(AddressEndpoint {
        ip: ip(address),
        kind: AddressKind::HostNetwork {
            node: Some(node.to_owned()),
        },
    })
}

/// `[("myproject", "project=myproject")]` → namespace labels.
fn namespaces(spec: &[(&str, &str)]) -> NamespaceLabels {
    spec.iter()
        .map(|(ns, l)| ((*ns).to_owned(), labels(l)))
        .collect()
}

fn policy(namespace: &str, name: &str) -> PolicyRef {
    PolicyRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn rule(
    namespace: &str,
    name: &str,
    direction: Direction,
    rule: usize,
    peer: Option<usize>,
) -> RuleId {
    RuleId {
        policy: policy(namespace, name),
        direction,
        rule,
        peer,
    }
}

/// Policies plus namespace labels: what a verdict depends on.
struct World {
    policies: PolicySet,
    namespaces: NamespaceLabels,
}

impl World {
    fn new(yaml: &str, namespace_labels: &[(&str, &str)]) -> Self {
        Self {
            policies: policy_set(yaml),
            namespaces: namespaces(namespace_labels),
        }
    }

    /// The e2e model's namespaces (x, y, z, with only their implied name label).
    fn e2e(yaml: &str) -> Self {
        Self::new(yaml, &[("x", ""), ("y", ""), ("z", "")])
    }

    fn verdict(&self, src: &Endpoint, dst: &Endpoint, protocol: Protocol, port: u16) -> Verdict {
        let connection = Connection {
            src: src.clone(),
            dst: dst.clone(),
            protocol,
            port,
        };
        self.policies.evaluate(&self.namespaces, &connection)
    }

    fn allows(&self, src: &Endpoint, dst: &Endpoint, port: u16) -> bool {
        self.verdict(src, dst, Protocol::Tcp, port).allowed()
    }

    /// The denied connections between the e2e model's `pods`, as `"x/a->y/b"` strings.
    fn denied(&self, pods: &[&str], protocol: Protocol, port: u16) -> Vec<String> {
        let mut out = Vec::new();
        for src in pods {
            for dst in pods {
                if src != dst
                    && !self
                        .verdict(&e2e_pod(src), &e2e_pod(dst), protocol, port)
                        .allowed()
                {
                    out.push(format!("{src}->{dst}"));
                }
            }
        }
        out
    }
}

const E2E_PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// A pod of the e2e model: `"x/a"` → namespace x, label pod=a, IP 10.244.1.1, the suite's
/// named ports.
fn e2e_pod(name: &str) -> Endpoint {
    let (namespace, pod_name) = name.split_once('/').expect("ns/pod");
    let ns_index = match namespace {
        "x" => 1,
        "y" => 2,
        _ => 3,
    };
    let pod_index = match pod_name {
        "a" => 1,
        "b" => 2,
        _ => 3,
    };
    let mut ports = Vec::new();
    for (suffix, protocol) in [
        ("tcp", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("sctp", Protocol::Sctp),
    ] {
        for port in [80u16, 81] {
            ports.push((format!("serve-{port}-{suffix}"), port, protocol));
        }
    }
    let ports: Vec<(&str, u16, Protocol)> = ports
        .iter()
        .map(|(n, p, pr)| (n.as_str(), *p, *pr))
        .collect();
    with_ports(
        pod(
            namespace,
            &format!("pod={pod_name}"),
            &format!("10.244.{ns_index}.{pod_index}"),
        ),
        &ports,
    )
}

/// Every ordered pair of `pods` (loopback left out) for which `deny(src, dst)` holds.
fn pairs_where(pods: &[&str], deny: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for src in pods {
        for dst in pods {
            if src != dst && deny(src, dst) {
                out.push(format!("{src}->{dst}"));
            }
        }
    }
    out
}

fn in_ns(pod: &str, namespace: &str) -> bool {
    pod.starts_with(&format!("{namespace}/"))
}

// ---- the documentation page's examples ---------------------------------------------------

#[test]
fn docs_default_deny_ingress() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: x
spec:
  podSelector: {}
  policyTypes:
  - Ingress
",
    );
    assert_eq!(
        world.denied(&E2E_PODS, Protocol::Tcp, 80),
        pairs_where(&E2E_PODS, |_, dst| in_ns(dst, "x"))
    );
    let v = world.verdict(&e2e_pod("y/a"), &e2e_pod("x/a"), Protocol::Tcp, 80);
    assert_eq!(v.egress, SideVerdict::NotIsolated);
    assert_eq!(
        v.ingress,
        SideVerdict::Denied {
            isolated_by: vec![policy("x", "default-deny-ingress")]
        }
    );
    assert!(!world.allows(&external("203.0.113.7"), &e2e_pod("x/a"), 80));
    assert!(world.allows(&e2e_pod("x/a"), &external("203.0.113.7"), 443));
}

#[test]
fn docs_allow_all_ingress() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-ingress
  namespace: x
spec:
  podSelector: {}
  ingress:
  - {}
  policyTypes:
  - Ingress
",
    );
    assert!(world.denied(&E2E_PODS, Protocol::Tcp, 80).is_empty());
    let v = world.verdict(
        &external("203.0.113.7"),
        &e2e_pod("x/b"),
        Protocol::Udp,
        5353,
    );
    assert_eq!(
        v.ingress,
        SideVerdict::Allowed {
            isolated_by: vec![policy("x", "allow-all-ingress")],
            matches: vec![RuleMatch {
                rule: rule("x", "allow-all-ingress", Direction::Ingress, 0, None),
                port: None
            }],
        }
    );
}

#[test]
fn docs_default_deny_egress() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
  namespace: x
spec:
  podSelector: {}
  policyTypes:
  - Egress
",
    );
    assert_eq!(
        world.denied(&E2E_PODS, Protocol::Tcp, 80),
        pairs_where(&E2E_PODS, |src, _| in_ns(src, "x"))
    );
    assert!(!world.allows(&e2e_pod("x/a"), &external("8.8.8.8"), 53));
    assert!(world.allows(&external("8.8.8.8"), &e2e_pod("x/a"), 80));
}

#[test]
fn docs_allow_all_egress() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-egress
  namespace: x
spec:
  podSelector: {}
  egress:
  - {}
  policyTypes:
  - Egress
",
    );
    assert!(world.denied(&E2E_PODS, Protocol::Tcp, 80).is_empty());
    assert!(world.allows(&e2e_pod("x/a"), &external("8.8.8.8"), 53));
}

#[test]
fn docs_default_deny_all() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
  namespace: x
spec:
  podSelector: {}
  policyTypes:
  - Ingress
  - Egress
",
    );
    assert_eq!(
        world.denied(&E2E_PODS, Protocol::Tcp, 80),
        pairs_where(&E2E_PODS, |src, dst| in_ns(src, "x") || in_ns(dst, "x"))
    );
}

const TEST_NETWORK_POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
";

#[test]
fn docs_test_network_policy() {
    let world = World::new(
        TEST_NETWORK_POLICY,
        &[
            ("default", ""),
            ("myproject", "project=myproject"),
            ("other", "project=other"),
        ],
    );
    let db = pod("default", "role=db", "10.1.0.10");
    let frontend = pod("default", "role=frontend", "10.1.0.11");
    let myproject_pod = pod("myproject", "app=anything", "10.1.1.5");
    let other_frontend = pod("other", "role=frontend", "10.1.2.5");
    let allowed_by = |src: &Endpoint, peer: usize| {
        let v = world.verdict(src, &db, Protocol::Tcp, 6379);
        assert!(v.allowed(), "{v}");
        assert_eq!(
            v.ingress.matches(),
            [RuleMatch {
                rule: rule(
                    "default",
                    "test-network-policy",
                    Direction::Ingress,
                    0,
                    Some(peer)
                ),
                port: Some(0),
            }]
        );
    };
    allowed_by(&external("172.17.0.5"), 0);
    allowed_by(&myproject_pod, 1);
    allowed_by(&frontend, 2);

    // The except range, outside the block, a frontend of another namespace, another port.
    assert!(!world.allows(&external("172.17.1.5"), &db, 6379));
    assert!(!world.allows(&external("172.18.0.1"), &db, 6379));
    assert!(!world.allows(&other_frontend, &db, 6379));
    assert!(!world.allows(&frontend, &db, 6380));
    assert!(!world.verdict(&frontend, &db, Protocol::Udp, 6379).allowed());

    // Egress from db: only 10.0.0.0/24 on TCP 5978.
    let v = world.verdict(&db, &external("10.0.0.7"), Protocol::Tcp, 5978);
    assert!(v.allowed(), "{v}");
    assert_eq!(
        v.egress.matches(),
        [RuleMatch {
            rule: rule(
                "default",
                "test-network-policy",
                Direction::Egress,
                0,
                Some(0)
            ),
            port: Some(0),
        }]
    );
    assert!(!world.allows(&db, &external("10.0.0.7"), 5979));
    assert!(!world.allows(&db, &external("10.0.1.7"), 5978));
    assert!(
        !world
            .verdict(&db, &external("10.0.0.7"), Protocol::Udp, 5978)
            .allowed()
    );
    assert!(
        !world.allows(&db, &frontend, 80),
        "db's egress is isolated: pods are not in 10.0.0.0/24"
    );
    // Pods the policy does not select are not isolated.
    assert!(world.allows(&frontend, &other_frontend, 80));
    assert!(world.allows(&other_frontend, &frontend, 80));
}

#[test]
fn docs_namespace_and_pod_selector_in_one_peer_versus_two_peers() {
    let namespace_labels = [
        ("server", ""),
        ("alice-ns", "user=alice"),
        ("bob-ns", "user=bob"),
    ];
    let and = World::new(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: and
  namespace: server
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
      podSelector:
        matchLabels:
          role: client
",
        &namespace_labels,
    );
    let or = World::new(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: or
  namespace: server
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
    - podSelector:
        matchLabels:
          role: client
",
        &namespace_labels,
    );
    let web = pod("server", "app=web", "10.1.0.1");
    let sources = [
        pod("alice-ns", "role=client", "10.1.1.1"),
        pod("alice-ns", "role=other", "10.1.1.2"),
        pod("server", "role=client", "10.1.0.2"),
        pod("bob-ns", "role=client", "10.1.2.1"),
    ];
    let and_results: Vec<bool> = sources.iter().map(|s| and.allows(s, &web, 80)).collect();
    let or_results: Vec<bool> = sources.iter().map(|s| or.allows(s, &web, 80)).collect();
    assert_eq!(and_results, [true, false, false, false]);
    assert_eq!(or_results, [true, true, true, false]);
}

#[test]
fn docs_end_port_range() {
    let world = World::new(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
",
        &[],
    );
    let db = pod("default", "role=db", "10.1.0.10");
    let target = external("10.0.0.9");
    for (port, allowed) in [
        (31999, false),
        (32000, true),
        (32500, true),
        (32768, true),
        (32769, false),
    ] {
        assert_eq!(world.allows(&db, &target, port), allowed, "port {port}");
    }
    assert!(!world.verdict(&db, &target, Protocol::Udp, 32000).allowed());
}

#[test]
fn docs_named_ports_resolve_per_destination_pod() {
    let world = World::new(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-ports
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - ports:
    - port: http
    - port: dns
      protocol: UDP
",
        &[],
    );
    let client = pod("shop", "app=client", "10.1.0.1");
    let web = with_ports(
        pod("shop", "app=web", "10.1.0.2"),
        &[("http", 8080, Protocol::Tcp), ("dns", 53, Protocol::Udp)],
    );
    let web_v2 = with_ports(
        pod("shop", "app=web,version=2", "10.1.0.3"),
        &[("http", 9090, Protocol::Tcp)],
    );
    let unnamed = pod("shop", "app=web", "10.1.0.4");

    let v = world.verdict(&client, &web, Protocol::Tcp, 8080);
    assert_eq!(v.ingress.matches().first().and_then(|m| m.port), Some(0));
    let v = world.verdict(&client, &web, Protocol::Udp, 53);
    assert_eq!(v.ingress.matches().first().and_then(|m| m.port), Some(1));
    assert!(!world.allows(&client, &web, 80));
    assert!(
        !world.allows(&client, &web, 53),
        "dns is a UDP port: TCP 53 is not it"
    );
    assert!(world.allows(&client, &web_v2, 9090));
    assert!(
        !world.allows(&client, &web_v2, 8080),
        "each pod resolves http itself"
    );
    assert!(!world.allows(&client, &unnamed, 8080));
    let http_over_udp = with_ports(
        pod("shop", "app=web", "10.1.0.5"),
        &[("http", 8080, Protocol::Udp)],
    );
    assert!(
        !world.allows(&client, &http_over_udp, 8080),
        "the port entry is TCP: a UDP container port named http does not resolve it"
    );
}

#[test]
fn docs_policies_only_select_pods_in_their_own_namespace() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: y
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Ingress, Egress]
",
    );
    // x/a and z/a carry pod=a too, but the policy lives in y.
    let pods = ["x/a", "x/b", "y/a", "y/b", "z/a"];
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        pairs_where(&pods, |src, dst| src == "y/a" || dst == "y/a")
    );
}

// ---- the upstream conformance suite's shapes ---------------------------------------------

#[test]
fn e2e_default_deny_ingress_for_every_protocol() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: x
spec:
  podSelector: {}
  ingress: []
",
    );
    let pods = ["x/a", "x/b", "y/a", "y/b"];
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        assert_eq!(
            world.denied(&pods, protocol, 80),
            pairs_where(&pods, |_, dst| in_ns(dst, "x")),
            "{protocol}"
        );
    }
}

#[test]
fn e2e_pod_selector_within_server_namespace() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: x-a-allows-x-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - podSelector:
        matchLabels:
          pod: b
",
    );
    let pods = ["x/a", "x/b", "x/c", "y/a", "y/b"];
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        ["x/c->x/a", "y/a->x/a", "y/b->x/a"],
        "y/b carries pod=b but lives in another namespace"
    );
}

#[test]
fn e2e_selectors_with_match_expressions() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-ns-y-match-selector
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - key: kubernetes.io/metadata.name
          operator: In
          values: [y]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: x-b-allows-pod-in-a-c
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: b
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - key: pod
          operator: In
          values: [a, c]
",
    );
    let pods = ["x/a", "x/b", "x/c", "y/a", "z/a"];
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        ["x/b->x/a", "x/c->x/a", "y/a->x/b", "z/a->x/a", "z/a->x/b"]
    );
}

#[test]
fn e2e_pod_selector_or_namespace_selector() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-ns-not-x-or-pod-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - key: kubernetes.io/metadata.name
          operator: NotIn
          values: [x]
    - podSelector:
        matchLabels:
          pod: b
",
    );
    let pods = ["x/a", "x/b", "x/c", "y/a"];
    assert_eq!(world.denied(&pods, Protocol::Tcp, 80), ["x/c->x/a"]);
}

#[test]
fn e2e_pod_selector_and_namespace_selector() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-ns-not-x-and-pod-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - key: kubernetes.io/metadata.name
          operator: NotIn
          values: [x]
      podSelector:
        matchLabels:
          pod: b
",
    );
    let pods = ["x/a", "x/b", "y/a", "y/b", "z/b"];
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        ["x/b->x/a", "y/a->x/a"]
    );
}

const ALLOW_Y_ON_81: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-y-on-81
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: y
    ports:
    - port: 81
      protocol: TCP
";

#[test]
fn e2e_ports() {
    let world = World::e2e(ALLOW_Y_ON_81);
    let pods = ["x/a", "x/b", "y/a", "y/b", "z/a"];
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 81),
        ["x/b->x/a", "z/a->x/a"]
    );
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        pairs_where(&pods, |_, dst| dst == "x/a")
    );
}

#[test]
fn e2e_stacked_policies_with_overlapping_pod_selectors() {
    let both = format!(
        "{ALLOW_Y_ON_81}---{}",
        ALLOW_Y_ON_81
            .replace("allow-y-on-81", "allow-y-on-80")
            .replace("port: 81", "port: 80")
    );
    let world = World::e2e(&both);
    let pods = ["x/a", "x/b", "y/a", "y/b", "z/a"];
    for port in [80, 81] {
        assert_eq!(
            world.denied(&pods, Protocol::Tcp, port),
            ["x/b->x/a", "z/a->x/a"],
            "port {port}"
        );
    }
    let v = world.verdict(&e2e_pod("z/a"), &e2e_pod("x/a"), Protocol::Tcp, 80);
    assert_eq!(
        v.ingress,
        SideVerdict::Denied {
            isolated_by: vec![policy("x", "allow-y-on-80"), policy("x", "allow-y-on-81")]
        }
    );
}

#[test]
fn e2e_allow_all() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all
  namespace: x
spec:
  podSelector: {}
  ingress:
  - {}
",
    );
    for port in [80, 81] {
        assert!(world.denied(&E2E_PODS, Protocol::Tcp, port).is_empty());
    }
}

#[test]
fn e2e_ingress_on_one_named_port() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-serve-81
  namespace: x
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: serve-81-tcp
",
    );
    let pods = ["x/a", "x/b", "y/a"];
    assert!(world.denied(&pods, Protocol::Tcp, 81).is_empty());
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        pairs_where(&pods, |_, dst| in_ns(dst, "x"))
    );
    assert!(
        world.denied(&pods, Protocol::Udp, 81).len() == 4,
        "serve-81-tcp names a TCP port"
    );
}

#[test]
fn e2e_egress_on_one_named_port() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-egress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports:
    - port: serve-80-tcp
",
    );
    let pods = ["x/a", "y/a"];
    assert!(world.denied(&pods, Protocol::Tcp, 80).is_empty());
    assert_eq!(world.denied(&pods, Protocol::Tcp, 81), ["x/a->y/a"]);
    assert!(
        !world.allows(&e2e_pod("x/a"), &external("203.0.113.7"), 80),
        "an address has no container ports to name"
    );
}

#[test]
fn e2e_egress_to_pod_in_other_namespace_by_pod_and_namespace_selector() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-to-ns-y-pod-a
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: y
      podSelector:
        matchLabels:
          pod: a
",
    );
    let pods = ["x/a", "x/b", "y/a", "y/b"];
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        ["x/a->x/b", "x/a->y/b"]
    );
}

#[test]
fn e2e_ingress_any_port_of_one_protocol() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-ingress-by-proto
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - ports:
    - protocol: TCP
",
    );
    let pods = ["x/a", "y/a"];
    assert!(world.denied(&pods, Protocol::Tcp, 80).is_empty());
    assert!(world.denied(&pods, Protocol::Tcp, 4444).is_empty());
    assert_eq!(world.denied(&pods, Protocol::Udp, 80), ["y/a->x/a"]);
}

#[test]
fn e2e_ingress_from_all_namespaces() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-another-ns
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - namespaceSelector: {}
",
    );
    let pods = ["x/a", "x/b", "y/a", "z/a"];
    assert!(world.denied(&pods, Protocol::Tcp, 80).is_empty());
    assert!(
        !world.allows(&external("203.0.113.7"), &e2e_pod("x/a"), 80),
        "selectors match pods only"
    );
}

#[test]
fn e2e_client_side_egress_denial_wins_over_server_allow() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-to-ns-y-pod-a
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: y
      podSelector:
        matchLabels:
          pod: a
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-xa-on-ya
  namespace: y
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: x
      podSelector:
        matchLabels:
          pod: a
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-xa-on-yb
  namespace: y
spec:
  podSelector:
    matchLabels:
      pod: b
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: x
      podSelector:
        matchLabels:
          pod: a
",
    );
    let pods = ["x/a", "y/a", "y/b"];
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        ["x/a->y/b", "y/a->y/b", "y/b->y/a"]
    );
    let v = world.verdict(&e2e_pod("x/a"), &e2e_pod("y/b"), Protocol::Tcp, 80);
    assert_eq!(
        v.egress,
        SideVerdict::Denied {
            isolated_by: vec![policy("x", "allow-to-ns-y-pod-a")]
        }
    );
    assert!(v.ingress.allows() && v.ingress.matches().len() == 1);
}

#[test]
fn e2e_except_clause_in_egress_cidr_and_an_overlapping_allow() {
    // 0.0.0.0/4 is the /4 around the pods' 10.244.1.x, as the suite's makeLargeCIDRForIP.
    let except = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-client-a-via-cidr-egress-rule
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 0.0.0.0/4
        except:
        - 10.244.1.2/32
";
    let pods = ["x/a", "x/b", "x/c"];
    let world = World::e2e(except);
    assert_eq!(world.denied(&pods, Protocol::Tcp, 80), ["x/a->x/b"]);

    let overlapping = format!(
        "{except}---{}",
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-client-a-to-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 10.244.1.2/32
"
    );
    let world = World::e2e(&overlapping);
    assert!(world.denied(&pods, Protocol::Tcp, 80).is_empty());
}

#[test]
fn e2e_ingress_and_egress_are_controlled_independently() {
    let egress = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-egress-for-target
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
  egress:
  - {}
";
    let pods = ["x/a", "x/b", "y/a"];
    assert!(
        World::e2e(egress)
            .denied(&pods, Protocol::Tcp, 80)
            .is_empty()
    );
    let both = format!(
        "{egress}---{}",
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress-via-label-selector
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Ingress]
"
    );
    assert_eq!(
        World::e2e(&both).denied(&pods, Protocol::Tcp, 80),
        ["x/b->x/a", "y/a->x/a"]
    );
}

#[test]
fn e2e_end_port_on_ingress_and_egress() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-y-80-to-81
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: y
    ports:
    - port: 80
      endPort: 81
  egress:
  - ports:
    - protocol: UDP
      port: 5000
      endPort: 5002
",
    );
    let (xa, ya, za) = (e2e_pod("x/a"), e2e_pod("y/a"), e2e_pod("z/a"));
    assert!(world.allows(&ya, &xa, 80) && world.allows(&ya, &xa, 81));
    assert!(!world.allows(&ya, &xa, 82) && !world.allows(&ya, &xa, 79));
    assert!(!world.allows(&za, &xa, 80));
    for (port, allowed) in [(4999, false), (5000, true), (5002, true), (5003, false)] {
        assert_eq!(
            world.verdict(&xa, &ya, Protocol::Udp, port).allowed(),
            allowed,
            "UDP {port}"
        );
    }
    assert!(!world.allows(&xa, &ya, 5000), "the range is UDP only");
}

#[test]
fn e2e_sctp_is_not_mistaken_for_tcp() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress
  namespace: x
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-only-sctp-ingress-on-port-81
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - ports:
    - port: 81
      protocol: SCTP
",
    );
    let (xa, xb, ya) = (e2e_pod("x/a"), e2e_pod("x/b"), e2e_pod("y/a"));
    assert!(!world.allows(&ya, &xa, 81));
    assert!(world.verdict(&ya, &xa, Protocol::Sctp, 81).allowed());
    assert!(!world.verdict(&ya, &xa, Protocol::Sctp, 80).allowed());
    assert!(!world.verdict(&ya, &xb, Protocol::Sctp, 81).allowed());
}

#[test]
fn e2e_udp_only_policy_does_not_allow_tcp() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-only-udp-ingress-on-port-81
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - ports:
    - port: 81
      protocol: UDP
",
    );
    let pods = ["x/a", "y/a"];
    assert_eq!(world.denied(&pods, Protocol::Tcp, 81), ["y/a->x/a"]);
    assert!(world.denied(&pods, Protocol::Udp, 81).is_empty());
}

#[test]
fn e2e_egress_namespace_selector_not_in_on_the_name_label() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-ns-not-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  egress:
  - to:
    - namespaceSelector:
        matchExpressions:
        - key: kubernetes.io/metadata.name
          operator: NotIn
          values: [y]
",
    );
    let pods = ["x/a", "x/b", "y/a", "z/a"];
    // policyTypes unset and egress rules present: Ingress and Egress, and no ingress rule.
    assert_eq!(
        world.denied(&pods, Protocol::Tcp, 80),
        ["x/a->y/a", "x/b->x/a", "y/a->x/a", "z/a->x/a"]
    );
}

// ---- semantics beyond the examples -------------------------------------------------------

#[test]
fn policy_types_default_from_the_egress_list() {
    let (xa, ya) = (e2e_pod("x/a"), e2e_pod("y/a"));
    let header = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";
    let isolation = |spec: &str| {
        let world = World::e2e(&format!("{header}spec:\n{spec}"));
        let egress = world.verdict(&xa, &ya, Protocol::Tcp, 80).egress;
        let ingress = world.verdict(&ya, &xa, Protocol::Tcp, 80).ingress;
        (
            egress != SideVerdict::NotIsolated,
            ingress != SideVerdict::NotIsolated,
        )
    };
    // (egress isolated, ingress isolated)
    assert_eq!(
        isolation("  podSelector: {}\n  ingress: [{}]\n"),
        (false, true)
    );
    assert_eq!(
        isolation("  podSelector: {}\n  egress: []\n"),
        (false, true),
        "an empty egress list is no egress section"
    );
    assert_eq!(
        isolation("  podSelector: {}\n  egress: [{}]\n"),
        (true, true)
    );
    assert_eq!(
        isolation("  podSelector: {}\n  policyTypes: []\n  egress: [{}]\n"),
        (true, true),
        "an empty policyTypes list is defaulted too"
    );
    assert_eq!(
        isolation("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n"),
        (true, false),
        "ingress rules of an egress-only policy are ignored"
    );
    assert_eq!(isolation("  podSelector: {}\n"), (false, true));
    // An absent podSelector selects the whole namespace, like an empty one.
    assert_eq!(
        isolation("  policyTypes: [Ingress, Egress]\n"),
        (true, true)
    );
}

#[test]
fn ingress_from_the_pods_own_node_is_always_allowed() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    );
    let xa = on_node(e2e_pod("x/a"), "n1");
    let v = world.verdict(&node("n1", "192.168.0.1"), &xa, Protocol::Tcp, 8080);
    assert_eq!(
        v.ingress,
        SideVerdict::FromOwnNode {
            isolated_by: vec![policy("x", "default-deny-all")]
        }
    );
    assert!(v.allowed());
    assert!(world.allows(&host_network("n1", "192.168.0.1"), &xa, 10250));
    assert!(!world.allows(&node("n2", "192.168.0.2"), &xa, 8080));
    let nameless = Endpoint::Address(AddressEndpoint {
        ip: ip("192.168.0.1"),
        kind: AddressKind::Node { name: None },
    });
    assert!(!world.allows(&nameless, &xa, 8080));
    assert!(
        !world.allows(&on_node(e2e_pod("y/a"), "n1"), &xa, 80),
        "a pod on the node is not the node"
    );
    assert!(
        !world.allows(&xa, &node("n1", "192.168.0.1"), 80),
        "no node exception for the pod's egress, even to its own node"
    );
    assert!(
        !world.allows(&node("n1", "192.168.0.1"), &e2e_pod("x/a"), 80),
        "a pod whose node is unknown gets no exception"
    );
}

#[test]
fn ip_block_scope_decides_which_endpoints_a_block_can_match() {
    let set = policy_set(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: to-ten
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/8
",
    );
    let xa = e2e_pod("x/a");
    let targets = [
        e2e_pod("y/a"),
        node("n1", "10.0.0.5"),
        host_network("n1", "10.0.0.5"),
        external("10.1.2.3"),
    ];
    let namespace_labels = namespaces(&[("x", ""), ("y", "")]);
    let results = |scope: IpBlockScope| -> Vec<bool> {
        let set = set.clone().with_ip_block_scope(scope);
        targets
            .iter()
            .map(|dst| {
                let connection = Connection {
                    src: xa.clone(),
                    dst: dst.clone(),
                    protocol: Protocol::Tcp,
                    port: 80,
                };
                set.evaluate(&namespace_labels, &connection).allowed()
            })
            .collect()
    };
    assert_eq!(
        results(IpBlockScope::AllAddresses),
        [true, true, true, true]
    );
    assert_eq!(
        results(IpBlockScope::NonPodAddresses),
        [false, true, true, true]
    );
    assert_eq!(
        results(IpBlockScope::ExternalOnly),
        [false, false, false, true]
    );
}

#[test]
fn ipv6_blocks_and_families() {
    let world = World::new(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: v6
  namespace: x
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: fd00::/64
        except:
        - fd00::/120
",
        &[],
    );
    let target = pod("x", "app=a", "fd00:1::1");
    assert!(world.allows(&external("fd00::1:0"), &target, 80));
    assert!(!world.allows(&external("fd00::ff"), &target, 80));
    assert!(!world.allows(&external("fd00:0:0:1::1"), &target, 80));
    assert!(
        !world.allows(&external("10.0.0.1"), &target, 80),
        "an IPv6 block never matches IPv4"
    );
}

#[test]
fn other_protocols_need_a_rule_without_ports() {
    let icmp = Protocol::from_number(1);
    assert_eq!(icmp, Protocol::Other(1));
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: tcp-only
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - ports:
    - protocol: TCP
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: anything-from-y
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: b
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: y
",
    );
    let (xa, xb, xc, ya) = (
        e2e_pod("x/a"),
        e2e_pod("x/b"),
        e2e_pod("x/c"),
        e2e_pod("y/a"),
    );
    assert!(!world.verdict(&ya, &xa, icmp, 0).allowed());
    assert!(world.verdict(&ya, &xb, icmp, 0).allowed());
    assert!(world.verdict(&ya, &xc, icmp, 0).allowed(), "not isolated");
}

#[test]
fn addresses_on_both_sides_are_outside_every_policy() {
    let world = World::new(TEST_NETWORK_POLICY, &[]);
    let v = world.verdict(
        &external("172.17.1.5"),
        &node("n1", "10.0.0.1"),
        Protocol::Udp,
        53,
    );
    assert_eq!(v.egress, SideVerdict::NotAPod);
    assert_eq!(v.ingress, SideVerdict::NotAPod);
    assert!(v.allowed());
}

#[test]
fn unknown_namespaces_are_reported_when_their_labels_mattered() {
    let world = World::new(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: from-blue-or-by-name
  namespace: x
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: blue
      podSelector:
        matchLabels:
          role: client
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: named
",
        &[("x", ""), ("blue-ns", "team=blue")],
    );
    let target = pod("x", "app=a", "10.1.0.1");
    let v = world.verdict(
        &pod("ghost", "role=client", "10.1.9.9"),
        &target,
        Protocol::Tcp,
        80,
    );
    assert!(!v.allowed());
    assert_eq!(v.unknown_namespaces, ["ghost"]);
    assert!(
        v.to_string()
            .ends_with("; labels unknown for namespaces ghost")
    );

    // The name label is implied: no doubt, and no report.
    let v = world.verdict(
        &pod("named", "role=server", "10.1.8.8"),
        &target,
        Protocol::Tcp,
        80,
    );
    assert!(v.allowed() && v.unknown_namespaces.is_empty());
    // A pod the podSelector rejects never needs its namespace's labels.
    let v = world.verdict(
        &pod("ghost", "role=server", "10.1.9.9"),
        &target,
        Protocol::Tcp,
        80,
    );
    assert!(!v.allowed() && v.unknown_namespaces.is_empty());
    assert!(world.allows(&pod("blue-ns", "role=client", "10.1.7.7"), &target, 80));
}

#[test]
fn verdicts_name_every_rule_that_allowed_and_read_as_sentences() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-b
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  ingress:
  - from:
    - podSelector:
        matchLabels:
          pod: c
    - podSelector:
        matchLabels:
          pod: b
    ports:
    - port: 81
    - port: 80
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all
  namespace: x
spec:
  podSelector: {}
  ingress:
  - {}
",
    );
    let v = world.verdict(&e2e_pod("x/b"), &e2e_pod("x/a"), Protocol::Tcp, 80);
    assert_eq!(
        v.ingress,
        SideVerdict::Allowed {
            isolated_by: vec![policy("x", "allow-all"), policy("x", "allow-b")],
            matches: vec![
                RuleMatch {
                    rule: rule("x", "allow-all", Direction::Ingress, 0, None),
                    port: None,
                },
                RuleMatch {
                    rule: rule("x", "allow-b", Direction::Ingress, 0, Some(1)),
                    port: Some(1),
                },
            ],
        }
    );
    assert_eq!(
        v.to_string(),
        "allowed (egress: not isolated; ingress: allowed by x/allow-all ingress[0] (any peer), \
         x/allow-b ingress[0].from[1] ports[1])"
    );
    let denied = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Egress]
",
    )
    .verdict(&e2e_pod("x/a"), &external("192.0.2.1"), Protocol::Tcp, 443);
    assert_eq!(
        denied.to_string(),
        "denied (egress: denied: isolated by x/deny and no rule allows it; ingress: not a pod)"
    );
}

#[test]
fn unused_rules_are_the_peers_no_connection_matched() {
    let world = World::e2e(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          pod: b
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: y
    ports:
    - port: 80
  - from:
    - ipBlock:
        cidr: 203.0.113.0/24
  egress:
  - to:
    - namespaceSelector: {}
  - {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: egress-only
  namespace: y
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress:
  - {}
  egress:
  - to:
    - ipBlock:
        cidr: 10.244.1.0/24
",
    );
    assert_eq!(
        world.policies.rules().len(),
        7,
        "{:?}",
        world.policies.rules()
    );
    let verdicts = [
        world.verdict(&e2e_pod("x/b"), &e2e_pod("x/a"), Protocol::Tcp, 80),
        // Denied (port 81), but the egress side of y/a used its rule.
        world.verdict(&e2e_pod("y/a"), &e2e_pod("x/a"), Protocol::Tcp, 81),
        world.verdict(&e2e_pod("x/a"), &external("192.0.2.1"), Protocol::Tcp, 443),
    ];
    assert!(verdicts[0].allowed() && !verdicts[1].allowed() && verdicts[2].allowed());
    let unused = world.policies.unused_rules(&verdicts);
    assert_eq!(
        unused,
        [
            rule("x", "web", Direction::Ingress, 0, Some(1)),
            rule("x", "web", Direction::Ingress, 1, Some(0)),
            rule("x", "web", Direction::Egress, 0, Some(0)),
            rule("y", "egress-only", Direction::Ingress, 0, None),
        ]
    );
    assert_eq!(unused[0].to_string(), "x/web ingress[0].from[1]");
    assert_eq!(unused[2].to_string(), "x/web egress[0].to[0]");
    assert_eq!(
        world.policies.unused_rules(&[]),
        world.policies.rules(),
        "with no traffic nothing is used"
    );
    let names: Vec<String> = world.policies.policies().map(ToString::to_string).collect();
    assert_eq!(names, ["x/web", "y/egress-only"]);
}

#[test]
fn invalid_policies_are_rejected_with_the_field() {
    let error = |spec: &str| {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n{spec}"
        );
        PolicySet::new(&parse(&yaml)).expect_err("invalid policy")
    };
    let p = policy("x", "p");
    assert_eq!(
        error("  policyTypes: [Ingres]\n"),
        PolicyError::UnknownPolicyType {
            policy: p.clone(),
            field: "spec.policyTypes[0]".into(),
            value: "Ingres".into()
        }
    );
    assert!(matches!(
        error("  podSelector: {matchExpressions: [{key: a, operator: In}]}\n"),
        PolicyError::Selector { field, source: SelectorError::MissingValues { .. }, .. }
            if field == "spec.podSelector"
    ));
    assert!(matches!(
        error("  ingress: [{from: [{podSelector: {}}, {namespaceSelector: {matchExpressions: [{key: a, operator: Is}]}}]}]\n"),
        PolicyError::Selector { field, source: SelectorError::UnknownOperator { .. }, .. }
            if field == "spec.ingress[0].from[1].namespaceSelector"
    ));
    assert_eq!(
        error("  ingress: [{from: [{}]}]\n"),
        PolicyError::EmptyPeer {
            policy: p.clone(),
            field: "spec.ingress[0].from[0]".into()
        }
    );
    assert_eq!(
        error("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n"),
        PolicyError::IpBlockWithSelector {
            policy: p.clone(),
            field: "spec.egress[0].to[0]".into()
        }
    );
    let invalid_cidr = error("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0}}]}]\n");
    assert!(matches!(
        &invalid_cidr,
        PolicyError::InvalidCidr { field, value, .. }
            if field == "spec.egress[0].to[0].ipBlock.cidr" && value == "10.0.0.0"
    ));
    assert_eq!(
        invalid_cidr.to_string(),
        "NetworkPolicy x/p: spec.egress[0].to[0].ipBlock.cidr \"10.0.0.0\" is not a CIDR prefix"
    );
    for except in ["11.0.0.0/16", "10.0.0.0/8", "fd00::/64"] {
        assert!(
            matches!(
                error(&format!(
                    "  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [\"{except}\"]}}}}]}}]\n"
                )),
                PolicyError::ExceptOutsideCidr { field, .. }
                    if field == "spec.egress[0].to[0].ipBlock.except[0]"
            ),
            "{except}"
        );
    }
    assert_eq!(
        error("  ingress: [{ports: [{protocol: tcp}]}]\n"),
        PolicyError::UnknownProtocol {
            policy: p.clone(),
            field: "spec.ingress[0].ports[0].protocol".into(),
            value: "tcp".into()
        }
    );
    assert_eq!(
        error("  ingress: [{ports: [{port: 80}, {port: 65536}]}]\n"),
        PolicyError::InvalidPort {
            policy: p.clone(),
            field: "spec.ingress[0].ports[1].port".into(),
            value: 65536
        }
    );
    assert_eq!(
        error("  ingress: [{ports: [{port: 80, endPort: 0}]}]\n"),
        PolicyError::InvalidPort {
            policy: p.clone(),
            field: "spec.ingress[0].ports[0].endPort".into(),
            value: 0
        }
    );
    for name in ["\"80\"", "HTTP", "-http", "a--b", "a-very-long-port-name"] {
        assert!(
            matches!(
                error(&format!("  ingress: [{{ports: [{{port: {name}}}]}}]\n")),
                PolicyError::InvalidPortName { .. }
            ),
            "{name}"
        );
    }
    for ports in ["{endPort: 90}", "{port: http, endPort: 90}"] {
        assert_eq!(
            error(&format!("  ingress: [{{ports: [{ports}]}}]\n")),
            PolicyError::EndPortWithoutNumber {
                policy: p.clone(),
                field: "spec.ingress[0].ports[0]".into()
            },
            "{ports}"
        );
    }
    assert_eq!(
        error("  ingress: [{ports: [{port: 90, endPort: 80}]}]\n"),
        PolicyError::EndPortBelowPort {
            policy: p.clone(),
            field: "spec.ingress[0].ports[0]".into(),
            start: 90,
            end: 80
        }
    );

    let no_namespace =
        parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n");
    assert_eq!(
        PolicySet::new(&no_namespace).expect_err("no namespace"),
        PolicyError::MissingNamespace { name: "p".into() }
    );
    let no_name =
        parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\n");
    assert_eq!(
        PolicySet::new(&no_name).expect_err("no name"),
        PolicyError::MissingName
    );
    let twice = parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n",
    );
    assert_eq!(
        PolicySet::new(&twice).expect_err("duplicate"),
        PolicyError::Duplicate { policy: p }
    );
}

#[test]
fn container_ports_and_protocol_numbers() {
    let port = |yaml: &str| {
        let parsed: ContainerPort = serde_yaml::from_str(yaml).expect("ContainerPort YAML");
        NamedPort::from_container_port(&parsed)
    };
    assert_eq!(
        port("{name: http, containerPort: 8080}"),
        Some(NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp
        })
    );
    assert_eq!(
        port("{name: dns, containerPort: 53, protocol: UDP}").map(|p| p.protocol),
        Some(Protocol::Udp)
    );
    assert_eq!(port("{containerPort: 8080}"), None);
    assert_eq!(port("{name: big, containerPort: 70000}"), None);
    assert_eq!(port("{name: odd, containerPort: 1, protocol: ICMP}"), None);
    assert_eq!(Protocol::from_number(6), Protocol::Tcp);
    assert_eq!(Protocol::from_number(17), Protocol::Udp);
    assert_eq!(Protocol::from_number(132), Protocol::Sctp);
    assert_eq!(Protocol::from_k8s("SCTP"), Some(Protocol::Sctp));
    assert_eq!(Protocol::from_k8s("sctp"), None);
}
