//! The Kubernetes source end to end through kube-rs against the loopback API server
//! (tests/kube_mock): list + watch with field selectors, owner chain through metadata-only
//! ReplicaSet/Job watches, IP reuse, a short-lived Job pod, an outage with 410 Gone on recovery,
//! and a 410 ERROR event on a live watch.
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::kube_mock::{MockApi, job, node, pod, replicaset, service};
use crate::support::wait_until;
use podflow::metadata::{
    Endpoint, EndpointKind, IndexConfig, KubeSourceConfig, MetadataError, SharedIndex, read_index,
    run_kube_source, shared_index,
};
use serde_json::json;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// RFC 3339 at second granularity (as the API server writes timestamps), floored.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap())
        .unwrap()
        .to_string()
}

fn lookup(index: &SharedIndex, a: &str, at: SystemTime) -> Endpoint {
    read_index(index).lookup(ip(a), at)
}

struct Source {
    index: SharedIndex,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), MetadataError>>,
}

impl Source {
    fn start(api: &MockApi, node: &str) -> Source {
        let index = shared_index(IndexConfig::default());
        let mut cfg = KubeSourceConfig::new(node);
        cfg.client_config = Some(api.kube_config());
        cfg.tick = Duration::from_millis(100);
        cfg.quiet_after_error = Duration::from_millis(300);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_kube_source(cfg, index.clone(), async move {
            let _ = rx.await;
        }));
        Source {
            index,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("source stops")
            .unwrap()
            .unwrap();
    }
}

fn seed(api: &MockApi) {
    api.upsert(
        "nodes",
        node("n1", "node-uid-1", "10.0.0.1", "10.244.1.0/24"),
    );
    api.upsert(
        "nodes",
        node("n2", "node-uid-2", "10.0.0.2", "10.244.2.0/24"),
    );
    api.upsert(
        "services",
        service("shop", "web", "svc-uid-1", "10.96.0.10"),
    );
    api.upsert("replicasets", replicaset("shop", "web-abc12", "web"));
    api.upsert("jobs", job("shop", "backup-2900", "backup"));
    let old = "2026-01-01T00:00:05Z";
    api.upsert(
        "pods",
        pod(
            "shop",
            "web-abc12-aaaaa",
            "pod-a",
            "n1",
            Some("10.244.1.5"),
            "Running",
            Some(old),
            Some(("ReplicaSet", "web-abc12")),
            json!({"app": "web", "pod-template-hash": "abc12"}),
        ),
    );
    api.upsert(
        "pods",
        pod(
            "shop",
            "backup-2900-q",
            "pod-b",
            "n2",
            Some("10.244.2.7"),
            "Running",
            Some(old),
            Some(("Job", "backup-2900")),
            json!({"job-name": "backup-2900"}),
        ),
    );
    let mut proxy = pod(
        "kube-system",
        "kube-proxy-n1",
        "pod-kp",
        "n1",
        Some("10.0.0.1"),
        "Running",
        Some(old),
        Some(("DaemonSet", "kube-proxy")),
        json!({"k8s-app": "kube-proxy"}),
    );
    proxy["spec"]["hostNetwork"] = json!(true);
    api.upsert("pods", proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_end_to_end_with_churn_and_outage() {
    let api = MockApi::start().await;
    seed(&api);
    let src = Source::start(&api, "n1");
    let index = src.index.clone();
    wait_until("initial sync", Duration::from_secs(15), || {
        read_index(&index).age().is_some()
    })
    .await;
    let now = SystemTime::now();

    // Enrichment.
    let a = lookup(&index, "10.244.1.5", now);
    assert_eq!(
        (a.kind, a.pod.as_str(), a.uid.as_str()),
        (EndpointKind::Pod, "web-abc12-aaaaa", "pod-a")
    );
    assert_eq!(
        (
            a.workload_kind.as_str(),
            a.workload.as_str(),
            a.node.as_str()
        ),
        ("Deployment", "web", "n1")
    );
    let b = lookup(&index, "10.244.2.7", now);
    assert_eq!(
        (
            b.workload_kind.as_str(),
            b.workload.as_str(),
            b.node.as_str()
        ),
        ("CronJob", "backup", "n2")
    );
    let n1 = lookup(&index, "10.0.0.1", now);
    assert_eq!(
        (n1.kind, n1.node.as_str()),
        (EndpointKind::Node, "n1"),
        "hostNetwork pod IP = node IP → node"
    );
    let svc = lookup(&index, "10.96.0.10", now);
    assert_eq!(
        (svc.kind, svc.service.clone()),
        (EndpointKind::Service, Some(("shop".into(), "web".into())))
    );
    assert_eq!(
        lookup(&index, "10.244.2.200", now).kind,
        EndpointKind::Unknown
    );
    assert_eq!(lookup(&index, "1.1.1.1", now).kind, EndpointKind::External);

    // The node's own pods were listed and watched with spec.nodeName=<node>, the others with !=.
    let q = api.queries();
    let pods_q = |sel: &str, watch: bool| {
        q.iter()
            .filter(|r| {
                r.path == "/api/v1/pods" && r.field_selector() == Some(sel) && r.is_watch() == watch
            })
            .count()
    };
    assert!(pods_q("spec.nodeName=n1", false) >= 1, "local list: {q:#?}");
    assert!(pods_q("spec.nodeName!=n1", false) >= 1, "remote list");
    wait_until("watches started", Duration::from_secs(5), || {
        let q = api.queries();
        ["spec.nodeName=n1", "spec.nodeName!=n1"].iter().all(|sel| {
            q.iter().any(|r| {
                r.path == "/api/v1/pods"
                    && r.is_watch()
                    && r.field_selector() == Some(*sel)
                    && r.query.get("allowWatchBookmarks").map(String::as_str) == Some("true")
                    && r.query.contains_key("resourceVersion")
            })
        })
    })
    .await;
    assert!(
        q.iter()
            .all(|r| r.path != "/api/v1/pods" || r.field_selector().is_some()),
        "no unselected pod watch"
    );
    for path in [
        "/api/v1/services",
        "/api/v1/nodes",
        "/apis/apps/v1/replicasets",
        "/apis/batch/v1/jobs",
    ] {
        assert!(q.iter().any(|r| r.path == path), "{path} listed");
    }

    // IP reuse through live watch events: A deleted, B takes 10.244.1.5.
    let before_delete = SystemTime::now();
    api.delete("pods", "pod-a");
    wait_until("A's delete", Duration::from_secs(5), || {
        lookup(&index, "10.244.1.5", SystemTime::now()).kind == EndpointKind::Unknown
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b_ready = SystemTime::now();
    api.upsert(
        "pods",
        pod(
            "shop",
            "web-abc12-bbbbb",
            "pod-new",
            "n1",
            Some("10.244.1.5"),
            "Running",
            Some(&rfc3339(b_ready)),
            Some(("ReplicaSet", "web-abc12")),
            json!({"app": "web", "pod-template-hash": "abc12"}),
        ),
    );
    wait_until("B's add", Duration::from_secs(5), || {
        lookup(&index, "10.244.1.5", SystemTime::now()).uid == "pod-new"
    })
    .await;
    let old = lookup(&index, "10.244.1.5", before_delete);
    assert_eq!(
        (old.uid.as_str(), old.ambiguous),
        ("pod-a", false),
        "flows before the delete stay A's"
    );
    let new = lookup(
        &index,
        "10.244.1.5",
        SystemTime::now() + Duration::from_secs(1),
    );
    assert_eq!((new.uid.as_str(), new.ambiguous), ("pod-new", false));

    // A 2-second Job pod: seen running, completed, deleted; its flows are still named.
    let started = SystemTime::now();
    let mut short = pod(
        "shop",
        "backup-2900-short",
        "pod-short",
        "n2",
        Some("10.244.2.50"),
        "Running",
        Some(&rfc3339(started)),
        Some(("Job", "backup-2900")),
        json!({}),
    );
    api.upsert("pods", short.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    short["status"]["phase"] = json!("Succeeded");
    api.upsert("pods", short);
    api.delete("pods", "pod-short");
    wait_until("short pod's end", Duration::from_secs(5), || {
        lookup(&index, "10.244.2.50", SystemTime::now()).kind == EndpointKind::Unknown
    })
    .await;
    let s = lookup(&index, "10.244.2.50", started + Duration::from_millis(200));
    assert_eq!(
        (
            s.pod.as_str(),
            s.workload_kind.as_str(),
            s.workload.as_str()
        ),
        ("backup-2900-short", "CronJob", "backup")
    );

    // Outage: streams cut, connections refused. The index keeps serving; age grows.
    let lists_before = api
        .queries()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
        .count();
    let before_outage = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.set_down(true);
    let down_at = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let idx = read_index(&index);
        let age = idx.age().unwrap();
        assert!(
            age >= Duration::from_secs(1),
            "age during the outage: {age:?}"
        );
        assert_eq!(
            idx.lookup(ip("10.244.1.5"), SystemTime::now()).uid,
            "pod-new",
            "last known state served"
        );
    }
    // What happens meanwhile: B deleted, D reuses the IP, the event history is compacted.
    api.delete("pods", "pod-new");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let d_ready = SystemTime::now();
    api.upsert(
        "pods",
        pod(
            "shop",
            "web-abc12-ddddd",
            "pod-d",
            "n1",
            Some("10.244.1.5"),
            "Running",
            Some(&rfc3339(d_ready)),
            Some(("ReplicaSet", "web-abc12")),
            json!({"app": "web", "pod-template-hash": "abc12"}),
        ),
    );
    api.compact();
    api.set_down(false);
    let up_at = Instant::now();
    wait_until(
        "convergence after the outage",
        Duration::from_secs(40),
        || {
            let idx = read_index(&index);
            idx.lookup(ip("10.244.1.5"), SystemTime::now() + Duration::from_secs(1))
                .uid
                == "pod-d"
                && idx.age().is_some_and(|a| a < Duration::from_millis(500))
        },
    )
    .await;
    eprintln!("converged {:?} after the API came back", up_at.elapsed());
    let lists_after = api
        .queries()
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
        .count();
    assert!(
        lists_after >= lists_before + 2,
        "410 Gone forced re-lists of both pod watches ({lists_before} → {lists_after})"
    );
    let q = api.queries();
    assert!(
        q.iter()
            .filter(|r| r.path == "/api/v1/pods" && !r.is_watch())
            .all(|r| r.field_selector().is_some())
    );
    // B's flows before the outage are still B's; inside the gap B's end is unknown: ambiguous.
    let pre = lookup(&index, "10.244.1.5", before_outage);
    assert_eq!((pre.uid.as_str(), pre.ambiguous), ("pod-new", false));
    let gap = lookup(&index, "10.244.1.5", down_at + Duration::from_millis(500));
    assert!(gap.ambiguous, "B's end fell into the outage: {gap:?}");
    assert_eq!(gap.uid, "");

    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_on_a_live_watch_relists_and_converges() {
    let api = MockApi::start().await;
    seed(&api);
    let src = Source::start(&api, "n1");
    let index = src.index.clone();
    wait_until("initial sync", Duration::from_secs(15), || {
        read_index(&index).age().is_some()
    })
    .await;
    wait_until("watches started", Duration::from_secs(5), || {
        api.queries()
            .iter()
            .filter(|r| r.path == "/api/v1/pods" && r.is_watch())
            .count()
            >= 2
    })
    .await;
    let lists_before = api.queries().iter().filter(|r| !r.is_watch()).count();
    // The server forgets its history and cuts every watch with a 410 ERROR event.
    api.upsert(
        "services",
        service("shop", "api", "svc-uid-2", "10.96.0.20"),
    );
    api.expire_watches();
    api.delete("services", "svc-uid-1");
    wait_until("re-list after 410", Duration::from_secs(30), || {
        let idx = read_index(&index);
        let now = SystemTime::now() + Duration::from_millis(10);
        let relisted = api.queries().iter().filter(|r| !r.is_watch()).count() >= lists_before + 6;
        relisted
            && idx.lookup(ip("10.96.0.20"), now).service == Some(("shop".into(), "api".into()))
            && idx.lookup(ip("10.96.0.10"), now).kind != EndpointKind::Service
    })
    .await;
    let lists_after = api.queries().iter().filter(|r| !r.is_watch()).count();
    assert!(
        lists_after >= lists_before + 6,
        "every watcher re-listed ({lists_before} → {lists_after})"
    );
    // The deleted service's address still answers for flows from before (tombstone).
    assert_eq!(
        lookup(
            &index,
            "10.96.0.10",
            SystemTime::now() - Duration::from_secs(30)
        )
        .kind,
        EndpointKind::Service
    );
    src.stop().await;
}

#[tokio::test]
async fn kube_source_needs_a_node_name() {
    let api = MockApi::start().await;
    let mut cfg = KubeSourceConfig::new("");
    cfg.client_config = Some(api.kube_config());
    let err = run_kube_source(cfg, shared_index(IndexConfig::default()), async {})
        .await
        .unwrap_err();
    assert!(matches!(err, MetadataError::MissingNodeName), "{err}");
}
