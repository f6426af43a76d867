//! The index's memory bound: counts per kind, claims per IP, label bytes; eviction oldest
//! tombstone first, then rejection (counted), pods of this node always admitted.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use podflow::metadata::{
    EndpointKind, IndexConfig, IndexLimits, MetadataIndex, Partition, PodInfo, PodPhase,
    ServiceInfo,
};

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + n)) // 10.244.x.y
}

fn pod(n: u32, since: u64) -> PodInfo {
    PodInfo {
        uid: format!("uid-{n}"),
        namespace: "ns".into(),
        name: format!("p-{n}"),
        node: "n2".into(),
        ips: vec![ip(n)],
        phase: PodPhase::Running,
        ip_since: Some(t(since)),
        ip_since_precise: true,
        ..PodInfo::default()
    }
}

fn limits() -> IndexLimits {
    IndexLimits {
        max_pods: 100,
        max_tombstones: 100,
        max_services: 10,
        max_nodes: 3,
        max_owners: 5,
        max_claims_per_ip: 4,
        max_ips_per_object: 2,
        max_label_bytes_per_pod: 64,
    }
}

#[test]
fn pods_bound_evicts_oldest_tombstones_then_rejects() {
    let mut idx = MetadataIndex::new(IndexConfig {
        limits: limits(),
        ..IndexConfig::default()
    });
    for n in 0..100 {
        idx.apply_pod(Partition::Remote, pod(n, 10), t(20));
    }
    assert_eq!(idx.stats().pods_live, 100);
    // 30 deletions at increasing times: tombstones 0 (oldest) .. 29 (newest).
    for n in 0..30u32 {
        idx.delete_pod(
            Partition::Remote,
            &format!("uid-{n}"),
            t(100 + u64::from(n)),
        );
    }
    // 10 new pods: the 10 oldest tombstones go.
    for n in 100..110 {
        idx.apply_pod(Partition::Remote, pod(n, 200), t(200));
    }
    let s = idx.stats();
    assert_eq!(
        (
            s.pods_live,
            s.pod_tombstones,
            s.tombstones_evicted,
            s.pods_rejected
        ),
        (80, 20, 10, 0)
    );
    for n in 0..10 {
        assert_eq!(
            idx.lookup(ip(n), t(50)).kind,
            EndpointKind::Unknown,
            "evicted tombstone {n}"
        );
    }
    for n in 10..30 {
        assert_eq!(
            idx.lookup(ip(n), t(50)).uid,
            format!("uid-{n}"),
            "kept tombstone {n}"
        );
    }
    // 40 more: the remaining 20 tombstones go, then 20 are rejected.
    for n in 110..150 {
        idx.apply_pod(Partition::Remote, pod(n, 300), t(300));
    }
    let s = idx.stats();
    assert_eq!(
        (
            s.pods_live,
            s.pod_tombstones,
            s.tombstones_evicted,
            s.pods_rejected
        ),
        (100, 0, 30, 20)
    );
    assert_eq!(
        idx.lookup(ip(149), t(400)).kind,
        EndpointKind::Unknown,
        "rejected pod unknown"
    );
    // Updates of admitted pods still apply at the bound.
    let mut p = pod(120, 300);
    p.labels.insert("v".into(), "2".into());
    idx.apply_pod(Partition::Remote, p, t(301));
    assert_eq!(
        idx.lookup(ip(120), t(400))
            .labels
            .get("v")
            .map(String::as_str),
        Some("2")
    );
    // Pods of this node are admitted beyond the bound (kubelet max-pods bounds them).
    for n in 1000..1005 {
        idx.apply_pod(Partition::Local, pod(n, 300), t(300));
    }
    let s = idx.stats();
    assert_eq!((s.pods_live, s.pods_rejected), (105, 20));
    assert_eq!(idx.lookup(ip(1004), t(400)).uid, "uid-1004");
}

#[test]
fn bound_holds_under_sustained_churn() {
    let mut limits = limits();
    limits.max_pods = 1_000;
    let mut idx = MetadataIndex::new(IndexConfig {
        limits,
        ..IndexConfig::default()
    });
    let mut live: Vec<u32> = Vec::new();
    for n in 0..20_000u32 {
        let now = u64::from(n / 10); // 10 pods a second: more tombstones than the bound
        let mut p = pod(n, now);
        p.ips = vec![ip(n % 3_000)];
        p.labels = (0..8)
            .map(|i| (format!("label-{i}"), "x".repeat(12)))
            .collect::<BTreeMap<_, _>>();
        idx.apply_pod(Partition::Remote, p, t(now));
        live.push(n);
        if live.len() > 600 {
            let victim = live.remove(0);
            idx.delete_pod(Partition::Remote, &format!("uid-{victim}"), t(now));
        }
        if n % 500 == 0 {
            idx.maintain(t(now));
            let s = idx.stats();
            assert!(s.pods_live + s.pod_tombstones <= 1_000, "{s:?}");
            assert!(s.claims <= 3_000 * 4);
            // ≤ ~1 KiB per pod with its claim at these label sizes.
            assert!(s.approx_bytes <= 1_000 * 1_024, "{s:?}");
        }
    }
    let s = idx.stats();
    eprintln!("{s:?}");
    assert!(
        s.tombstones_evicted > 10_000,
        "tombstones are what gets evicted: {s:?}"
    );
    assert_eq!(
        s.pods_rejected, 0,
        "live pods (600) fit: only tombstones evicted"
    );
    assert!(s.labels_truncated > 0);
}

#[test]
fn claims_per_ip_labels_and_other_kinds_are_bounded() {
    let mut idx = MetadataIndex::new(IndexConfig {
        limits: limits(),
        ..IndexConfig::default()
    });
    // One IP reused by 10 pods in a row: 4 claims kept, the ones that ended first evicted.
    for n in 0..10u32 {
        let mut p = pod(n, u64::from(n) * 10);
        p.ips = vec![ip(7)];
        idx.apply_pod(Partition::Remote, p, t(u64::from(n) * 10 + 1));
        idx.delete_pod(
            Partition::Remote,
            &format!("uid-{n}"),
            t(u64::from(n) * 10 + 5),
        );
    }
    let s = idx.stats();
    assert_eq!((s.claims, s.claims_evicted), (4, 6));
    assert_eq!(idx.lookup(ip(7), t(93)).uid, "uid-9");
    assert_eq!(idx.lookup(ip(7), t(63)).uid, "uid-6");
    assert_eq!(
        idx.lookup(ip(7), t(53)).kind,
        EndpointKind::Unknown,
        "evicted"
    );

    // Labels: 64 bytes of keys+values kept, in key order.
    let mut p = pod(500, 1);
    p.labels = (0..10)
        .map(|i| (format!("key-{i}"), "v".repeat(15)))
        .collect();
    idx.apply_pod(Partition::Remote, p, t(2));
    let ep = idx.lookup(ip(500), t(3));
    assert_eq!(ep.labels.len(), 3, "{:?}", ep.labels);
    assert!(ep.labels.contains_key("key-0") && ep.labels.contains_key("key-2"));
    assert_eq!(idx.stats().labels_truncated, 1);

    // IPs per object.
    let mut p = pod(600, 1);
    p.ips = (0..5).map(|i| ip(600 + i)).collect();
    idx.apply_pod(Partition::Remote, p, t(2));
    assert_eq!(idx.lookup(ip(601), t(3)).uid, "uid-600");
    assert_eq!(idx.lookup(ip(602), t(3)).kind, EndpointKind::Unknown);

    // Services.
    for n in 0..15u32 {
        idx.apply_service(
            ServiceInfo {
                uid: format!("svc-{n}"),
                namespace: "ns".into(),
                name: format!("s{n}"),
                ips: vec![ip(9_000 + n)],
                created: Some(t(1)),
                ..ServiceInfo::default()
            },
            t(2),
        );
    }
    let s = idx.stats();
    assert_eq!((s.services, s.services_rejected), (10, 5));
}

#[test]
fn tombstones_are_bounded_in_count_as_well_as_in_time() {
    let mut idx = MetadataIndex::new(IndexConfig {
        limits: IndexLimits {
            max_tombstones: 10,
            ..limits()
        },
        ..IndexConfig::default()
    });
    for n in 0..50 {
        idx.apply_pod(Partition::Remote, pod(n, 10), t(20));
    }
    // A mass deletion: only the 10 newest tombstones stay, well within their TTL.
    for n in 0..50u32 {
        idx.delete_pod(Partition::Remote, &format!("uid-{n}"), t(30 + u64::from(n)));
    }
    let s = idx.stats();
    assert_eq!((s.pods_live, s.pod_tombstones), (0, 10));
    assert_eq!(s.tombstones_evicted, 40);
    assert_eq!(s.ips, 10, "the evicted pods' claims are gone too");
    // The newest deleted pod still names its IP for late records; an evicted one does not.
    assert_eq!(idx.lookup(ip(49), t(70)).pod, "p-49");
    assert_eq!(idx.lookup(ip(0), t(25)).pod, "");
}
