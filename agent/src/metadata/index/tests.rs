//! Tests of the index: ownership over time, IP reuse, gaps, tombstones, ranges, owner chains.
use super::*;
use crate::metadata::records::{
    NodeInfo, OwnerInfo, PodInfo, PodPhase, ServiceInfo, ServicePort, TargetPort,
};
use std::collections::HashSet;
use std::time::UNIX_EPOCH;

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn pod(uid: &str, a: &str, since: u64, precise: bool) -> PodInfo {
    PodInfo {
        uid: uid.into(),
        namespace: "ns".into(),
        name: format!("web-{uid}"),
        node: "n1".into(),
        ips: vec![ip(a)],
        owner: Some(OwnerRef {
            kind: "ReplicaSet".into(),
            name: "web-h1".into(),
        }),
        labels: BTreeMap::from([
            ("pod-template-hash".into(), "h1".into()),
            ("uid".into(), uid.into()),
        ]),
        phase: PodPhase::Running,
        ip_since: Some(t(since)),
        ip_since_precise: precise,
        ..PodInfo::default()
    }
}
fn index() -> MetadataIndex {
    MetadataIndex::new(IndexConfig::default())
}

#[test]
fn two_live_owners_are_ambiguous_with_common_parts() {
    let mut idx = index();
    // Both first seen late (e.g. a first list) with imprecise starts: which one came first
    // cannot be told, and A's delete has not been seen.
    idx.apply_pod(Partition::Remote, pod("a", "10.0.0.5", 10, false), t(60));
    idx.apply_pod(Partition::Remote, pod("b", "10.0.0.5", 50, false), t(61));
    let ep = idx.lookup(ip("10.0.0.5"), t(62));
    assert!(ep.ambiguous);
    assert_eq!(
        (
            ep.kind,
            ep.namespace.as_str(),
            ep.uid.as_str(),
            ep.pod.as_str()
        ),
        (EndpointKind::Pod, "ns", "", "")
    );
    assert_eq!(
        (ep.workload_kind.as_str(), ep.workload.as_str()),
        ("Deployment", "web")
    );
    assert_eq!(ep.labels.len(), 1, "only the common label: {:?}", ep.labels);
    // Before B's start bound, A alone.
    assert_eq!(idx.lookup(ip("10.0.0.5"), t(30)).uid, "a");
    // A's delete arrives: the overlap ends there.
    idx.delete_pod(Partition::Remote, "a", t(70));
    assert!(idx.lookup(ip("10.0.0.5"), t(65)).ambiguous);
    assert_eq!(idx.lookup(ip("10.0.0.5"), t(71)).uid, "b");
}

#[test]
fn precise_start_cuts_the_previous_owner_in_any_order() {
    for b_first in [false, true] {
        let mut idx = index();
        let a = pod("a", "10.0.0.5", 10, true);
        let b = pod("b", "10.0.0.5", 50, true);
        if b_first {
            idx.apply_pod(Partition::Local, b.clone(), t(52));
            idx.apply_pod(Partition::Local, a.clone(), t(53)); // late event of the old owner
        } else {
            idx.apply_pod(Partition::Local, a.clone(), t(11));
            idx.apply_pod(Partition::Local, b.clone(), t(52)); // A's delete not seen yet
        }
        assert_eq!(
            idx.lookup(ip("10.0.0.5"), t(49)).uid,
            "a",
            "b_first={b_first}"
        );
        assert!(
            idx.lookup(ip("10.0.0.5"), t(50)).ambiguous,
            "the handover second"
        );
        assert_eq!(idx.lookup(ip("10.0.0.5"), t(51)).uid, "b");
        assert_eq!(idx.lookup(ip("10.0.0.5"), t(500)).uid, "b");
    }
}

#[test]
fn completed_pods_release_their_ip_for_good() {
    let mut idx = index();
    let mut p = pod("job", "10.0.0.9", 10, true);
    idx.apply_pod(Partition::Local, p.clone(), t(11));
    p.phase = PodPhase::Succeeded;
    idx.apply_pod(Partition::Local, p.clone(), t(13));
    assert_eq!(
        idx.lookup(ip("10.0.0.9"), t(12)).uid,
        "job",
        "flows while it ran"
    );
    assert_eq!(
        idx.lookup(ip("10.0.0.9"), t(14)).kind,
        EndpointKind::Unknown
    );
    // A stale Running event or list entry does not bring it back.
    p.phase = PodPhase::Running;
    idx.apply_pod(Partition::Local, p.clone(), t(15));
    idx.relist_pods(Partition::Local, vec![p], &HashSet::new(), t(16), None);
    assert_eq!(
        idx.lookup(ip("10.0.0.9"), t(17)).kind,
        EndpointKind::Unknown
    );
    assert_eq!(idx.stats().stale_ignored, 2);
}

#[test]
fn pod_missing_from_a_stale_list_is_revived_by_the_watch() {
    let mut idx = index();
    let p = pod("a", "10.0.0.5", 10, true);
    idx.apply_pod(Partition::Remote, p.clone(), t(11));
    idx.relist_pods(
        Partition::Remote,
        vec![],
        &HashSet::new(),
        t(20),
        Some(t(18)),
    );
    assert_eq!(
        idx.lookup(ip("10.0.0.5"), t(21)).kind,
        EndpointKind::Unknown
    );
    assert!(
        idx.lookup(ip("10.0.0.5"), t(19)).ambiguous,
        "its end fell into the gap"
    );
    assert_eq!(idx.lookup(ip("10.0.0.5"), t(17)).uid, "a");
    idx.apply_pod(Partition::Remote, p, t(22));
    assert_eq!(idx.lookup(ip("10.0.0.5"), t(23)).uid, "a");
    assert_eq!(idx.lookup(ip("10.0.0.5"), t(19)).uid, "a");
    assert_eq!(idx.stats().pod_tombstones, 0);
}

#[test]
fn deletes_only_affect_their_partition() {
    let mut idx = index();
    let mut p = pod("a", "10.0.0.5", 10, true);
    p.ips.clear();
    p.phase = PodPhase::Pending;
    idx.apply_pod(Partition::Remote, p.clone(), t(1)); // unscheduled: remote watch
    let p = pod("a", "10.0.0.5", 10, true);
    idx.apply_pod(Partition::Local, p, t(11)); // scheduled here: local watch
    idx.delete_pod(Partition::Remote, "a", t(12)); // left the remote selector
    idx.relist_pods(Partition::Remote, vec![], &HashSet::new(), t(13), None);
    assert_eq!(idx.lookup(ip("10.0.0.5"), t(14)).uid, "a");
}

#[test]
fn host_network_pods_node_addresses_and_ranges() {
    let mut idx = MetadataIndex::new(IndexConfig {
        cluster_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..IndexConfig::default()
    });
    idx.confirm(Instant::now());
    let mut hp = pod("kp", "192.168.0.10", 1, true);
    hp.host_network = true;
    hp.owner = Some(OwnerRef {
        kind: "DaemonSet".into(),
        name: "kube-proxy".into(),
    });
    idx.apply_pod(Partition::Local, hp.clone(), t(2));
    let ep = idx.lookup(ip("192.168.0.10"), t(3));
    assert_eq!(
        (ep.kind, ep.workload.as_str()),
        (EndpointKind::HostNetworkPod, "kube-proxy")
    );
    let mut hp2 = hp.clone();
    hp2.uid = "other".into();
    hp2.name = "other".into();
    idx.apply_pod(Partition::Local, hp2, t(2));
    let ep = idx.lookup(ip("192.168.0.10"), t(3));
    assert_eq!(
        (ep.kind, ep.ambiguous, ep.node.as_str()),
        (EndpointKind::HostNetworkPod, true, "n1")
    );
    idx.apply_node(
        NodeInfo {
            uid: "n1".into(),
            name: "n1".into(),
            ips: vec![ip("192.168.0.10")],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            created: Some(t(0)),
        },
        t(2),
    );
    let ep = idx.lookup(ip("192.168.0.10"), t(3));
    assert_eq!(
        (ep.kind, ep.ambiguous, ep.node.as_str()),
        (EndpointKind::Node, false, "n1")
    );
    assert_eq!(
        idx.lookup(ip("10.244.1.200"), t(3)).kind,
        EndpointKind::Unknown
    );
    assert_eq!(
        idx.lookup(ip("10.100.0.1"), t(3)).kind,
        EndpointKind::Unknown
    );
    assert_eq!(
        idx.lookup(ip("10.244.2.1"), t(3)).kind,
        EndpointKind::External
    );
    assert_eq!(
        idx.lookup(ip("::ffff:192.168.0.10"), t(3)).kind,
        EndpointKind::Node,
        "v4-mapped"
    );
}

#[test]
fn owner_chain() {
    let mut idx = index();
    let mut p = pod("a", "10.0.0.5", 10, true);
    p.labels.clear();
    idx.apply_pod(Partition::Local, p.clone(), t(11));
    assert_eq!(
        idx.lookup(ip("10.0.0.5"), t(12)).workload_kind,
        "ReplicaSet",
        "no hash label, no RS object"
    );
    idx.apply_owner(OwnerInfo {
        uid: "rs".into(),
        kind: "ReplicaSet".into(),
        namespace: "ns".into(),
        name: "web-h1".into(),
        owner: Some(OwnerRef {
            kind: "Deployment".into(),
            name: "frontend".into(),
        }),
    });
    let ep = idx.lookup(ip("10.0.0.5"), t(12));
    assert_eq!(
        (ep.workload_kind.as_str(), ep.workload.as_str()),
        ("Deployment", "frontend")
    );
    p.uid = "j".into();
    p.ips = vec![ip("10.0.0.6")];
    p.owner = Some(OwnerRef {
        kind: "Job".into(),
        name: "backup-29000".into(),
    });
    idx.apply_pod(Partition::Local, p.clone(), t(11));
    assert_eq!(
        idx.lookup(ip("10.0.0.6"), t(12)).workload,
        "backup-29000",
        "unknown Job: not guessed"
    );
    idx.apply_owner(OwnerInfo {
        uid: "job".into(),
        kind: "Job".into(),
        namespace: "ns".into(),
        name: "backup-29000".into(),
        owner: Some(OwnerRef {
            kind: "CronJob".into(),
            name: "backup".into(),
        }),
    });
    let ep = idx.lookup(ip("10.0.0.6"), t(12));
    assert_eq!(
        (ep.workload_kind.as_str(), ep.workload.as_str()),
        ("CronJob", "backup")
    );
    p.uid = "bare".into();
    p.name = "debug".into();
    p.ips = vec![ip("10.0.0.7")];
    p.owner = None;
    idx.apply_pod(Partition::Local, p, t(11));
    let ep = idx.lookup(ip("10.0.0.7"), t(12));
    assert_eq!(
        (ep.workload_kind.as_str(), ep.workload.as_str()),
        ("Pod", "debug")
    );
}

#[test]
fn age_and_tombstone_expiry() {
    let mut idx = index();
    assert_eq!(idx.age(), None);
    let start = Instant::now();
    idx.confirm(start);
    assert_eq!(
        idx.age_at(start + Duration::from_secs(7)),
        Some(Duration::from_secs(7))
    );
    idx.apply_pod(Partition::Local, pod("a", "10.0.0.5", 10, true), t(11));
    idx.delete_pod(Partition::Local, "a", t(20));
    idx.maintain(t(20 + 299));
    assert_eq!(idx.lookup(ip("10.0.0.5"), t(15)).uid, "a");
    idx.maintain(t(20 + 301));
    assert_eq!(
        idx.lookup(ip("10.0.0.5"), t(15)).kind,
        EndpointKind::External,
        "synced, no ranges known"
    );
    assert_eq!(idx.stats().pod_tombstones, 0);
}

fn service(uid: &str, name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> ServiceInfo {
    ServiceInfo {
        uid: uid.into(),
        namespace: "ns".into(),
        name: name.into(),
        ips: vec![ip(cluster_ip)],
        created: Some(t(1)),
        selector: BTreeMap::from([("app".into(), "web".into())]),
        ports,
        external_ips: Vec::new(),
    }
}

fn port(name: &str, port: u16, target: TargetPort, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: 6,
        port,
        target,
        node_port,
    }
}

fn svc_names(refs: &[crate::metadata::ServiceRef]) -> Vec<(String, String, u16)> {
    refs.iter()
        .map(|r| (r.name.clone(), r.port_name.clone(), r.port))
        .collect()
}

#[test]
fn services_by_address_port_and_node_port() {
    let mut idx = index();
    let mut web = service(
        "s1",
        "web",
        "10.96.0.10",
        vec![
            port("http", 80, TargetPort::Name("http".into()), Some(30080)),
            port("", 443, TargetPort::Number(8443), None),
        ],
    );
    web.external_ips = vec![ip("203.0.113.5")];
    idx.apply_service(web, t(2));
    // A second Service on the same external IP, another port.
    let mut admin = service(
        "s2",
        "admin",
        "10.96.0.11",
        vec![port("a", 9000, TargetPort::Number(9000), None)],
    );
    admin.external_ips = vec![ip("203.0.113.5")];
    idx.apply_service(admin, t(2));
    let at = |a: &str, p: u16| idx.service_at(ip(a), p, 6, t(3));
    assert_eq!(
        at("10.96.0.10", 80).map(|s| (s.name, s.port_name, s.port)),
        Some(("web".into(), "http".into(), 80))
    );
    assert_eq!(
        at("10.96.0.10", 443).map(|s| s.port_name),
        Some(String::new())
    );
    assert_eq!(
        at("203.0.113.5", 9000).map(|s| s.name),
        Some("admin".into())
    );
    assert_eq!(at("203.0.113.5", 443).map(|s| s.name), Some("web".into()));
    // A node port, on any node address.
    assert_eq!(
        at("192.168.9.1", 30080).map(|s| (s.name, s.port)),
        Some(("web".into(), 30080))
    );
    assert!(
        idx.service_at(ip("10.96.0.10"), 80, 17, t(3)).is_none(),
        "UDP is another port"
    );
    assert!(at("10.96.0.10", 81).is_none());
    // Before the Service existed, and after it was deleted (its tombstone still answers).
    assert!(at("10.96.0.99", 80).is_none());
    idx.delete_service("s1", t(10));
    assert!(idx.service_at(ip("10.96.0.10"), 80, 6, t(9)).is_some());
    assert!(idx.service_at(ip("10.96.0.10"), 80, 6, t(11)).is_none());
    assert!(idx.service_at(ip("192.168.9.1"), 30080, 6, t(11)).is_none());
}

#[test]
fn services_a_pod_backs_by_selector_and_target_port() {
    let mut idx = index();
    let mut p = pod("a", "10.0.0.5", 1, true);
    p.labels.insert("app".into(), "web".into());
    p.ports = vec![crate::metadata::ContainerPort {
        name: "http".into(),
        port: 8080,
        protocol: 6,
    }];
    idx.apply_pod(Partition::Local, p.clone(), t(2));
    idx.apply_service(
        service(
            "s1",
            "web",
            "10.96.0.10",
            vec![port("http", 80, TargetPort::Name("http".into()), None)],
        ),
        t(2),
    );
    idx.apply_service(
        service(
            "s2",
            "web-direct",
            "10.96.0.11",
            vec![port("p", 8080, TargetPort::Number(8080), None)],
        ),
        t(2),
    );
    // Selects other pods only.
    let mut other = service(
        "s3",
        "db",
        "10.96.0.12",
        vec![port("", 8080, TargetPort::Number(8080), None)],
    );
    other.selector = BTreeMap::from([("app".into(), "db".into())]);
    idx.apply_service(other, t(2));
    // No selector: selects nothing by itself.
    let mut manual = service(
        "s4",
        "manual",
        "10.96.0.13",
        vec![port("", 8080, TargetPort::Number(8080), None)],
    );
    manual.selector.clear();
    idx.apply_service(manual, t(2));
    assert_eq!(
        svc_names(&idx.services_backed_by("a", 8080, 6)),
        [
            ("web".to_owned(), "http".to_owned(), 80),
            ("web-direct".to_owned(), "p".to_owned(), 8080)
        ]
    );
    assert!(idx.services_backed_by("a", 8080, 17).is_empty());
    assert!(idx.services_backed_by("a", 9999, 6).is_empty());
    assert!(idx.services_backed_by("nobody", 8080, 6).is_empty());
    // Another namespace's Service with the same selector does not count.
    let mut elsewhere = service(
        "s5",
        "web",
        "10.96.0.14",
        vec![port("", 8080, TargetPort::Number(8080), None)],
    );
    elsewhere.namespace = "other".into();
    idx.apply_service(elsewhere, t(2));
    assert_eq!(idx.services_backed_by("a", 8080, 6).len(), 2);
}
