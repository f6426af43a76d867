//! The static metadata source: a realistic `kubectl get pods,services,nodes -A -o json` List,
//! owner chain, services, nodes, hostNetwork, and re-reading on change (atomic rename, removal).
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::wait_until;
use podflow::metadata::{
    EndpointKind, IndexConfig, MetadataError, SharedIndex, parse_kubectl_list, read_index,
    run_file_source_every, shared_index,
};
use serde_json::{Value, json};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kubectl-list.json"
);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ts(s: &str) -> SystemTime {
    let t: k8s_openapi::jiff::Timestamp = s.parse().unwrap();
    SystemTime::from(t)
}

fn write_atomically(path: &Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn parses_kubectl_list() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let snap = parse_kubectl_list(Path::new(FIXTURE), &bytes).unwrap();
    assert_eq!(snap.pods.len(), 6);
    assert_eq!(snap.services.len(), 3);
    assert_eq!(snap.nodes.len(), 2);
    assert_eq!(snap.skipped, 0);
    let db = snap.pods.iter().find(|p| p.name == "db-0").unwrap();
    assert_eq!(db.ips, vec![ip("10.244.2.7"), ip("fd00:10:244:2::7")]);
    assert!(db.ip_since_precise);
    assert_eq!(db.ip_since, Some(ts("2026-11-19T08:00:04Z")));
    let headless = snap.services.iter().find(|s| s.name == "db").unwrap();
    assert!(headless.ips.is_empty(), "ClusterIP None is not an address");
    let b = snap.nodes.iter().find(|n| n.name == "node-b").unwrap();
    assert_eq!(b.ips, vec![ip("192.168.0.11"), ip("2001:db8::11")]);
    assert_eq!(b.pod_cidrs.len(), 2);

    let err = parse_kubectl_list(Path::new("x.json"), b"{\"apiVersion\":\"v1\"}").unwrap_err();
    assert!(matches!(err, MetadataError::NotAList { .. }), "{err}");
    let err = parse_kubectl_list(Path::new("x.json"), b"{not json").unwrap_err();
    assert!(matches!(err, MetadataError::ParseFile { .. }), "{err}");
}

struct Running {
    index: SharedIndex,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(path: PathBuf) -> Running {
    let index = shared_index(IndexConfig::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_file_source_every(
        path,
        index.clone(),
        Duration::from_millis(50),
        async move {
            let _ = rx.await;
        },
    ));
    let idx = index.clone();
    wait_until("first load", Duration::from_secs(5), || {
        read_index(&idx).age().is_some()
    })
    .await;
    Running {
        index,
        stop: Some(tx),
        task,
    }
}

#[tokio::test]
async fn file_source_enriches_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(FIXTURE).unwrap()).unwrap();
    write_atomically(&path, &doc);
    let mut src = start(path.clone()).await;
    let now = SystemTime::now();
    {
        let idx = read_index(&src.index);
        // ReplicaSet not in the file: Deployment by the pod-template-hash convention.
        let web = idx.lookup(ip("10.244.1.12"), now);
        assert_eq!(web.kind, EndpointKind::Pod);
        assert_eq!(
            (web.namespace.as_str(), web.pod.as_str()),
            ("shop", "web-7d4b9c6f5d-x2x7q")
        );
        assert_eq!(web.uid, "0a1b2c3d-0001-4000-8000-000000000001");
        assert_eq!(
            (web.workload_kind.as_str(), web.workload.as_str()),
            ("Deployment", "web")
        );
        assert_eq!(web.node, "node-a");
        assert_eq!(web.labels.get("tier").map(String::as_str), Some("frontend"));
        assert!(!web.ambiguous);
        // StatefulSet, dual stack.
        for a in ["10.244.2.7", "fd00:10:244:2::7"] {
            let db = idx.lookup(ip(a), now);
            assert_eq!(
                (
                    db.workload_kind.as_str(),
                    db.workload.as_str(),
                    db.pod.as_str()
                ),
                ("StatefulSet", "db", "db-0")
            );
        }
        // Bare pod.
        let debug = idx.lookup(ip("10.244.2.9"), now);
        assert_eq!(
            (debug.workload_kind.as_str(), debug.workload.as_str()),
            ("Pod", "debug")
        );
        // hostNetwork pod on the node's IP: the node.
        let node_a = idx.lookup(ip("192.168.0.10"), now);
        assert_eq!(
            (node_a.kind, node_a.node.as_str(), node_a.pod.as_str()),
            (EndpointKind::Node, "node-a", "")
        );
        assert_eq!(idx.lookup(ip("2001:db8::11"), now).node, "node-b");
        // Services; headless has no address.
        let svc = idx.lookup(ip("10.96.12.34"), now);
        assert_eq!(svc.kind, EndpointKind::Service);
        assert_eq!(svc.service, Some(("shop".to_owned(), "web".to_owned())));
        assert_eq!(
            idx.lookup(ip("10.96.0.1"), now).service,
            Some(("default".into(), "kubernetes".into()))
        );
        // Completed Job pod: named for flows while it ran, released now.
        let migrate = idx.lookup(ip("10.244.1.40"), ts("2026-11-22T23:00:05Z"));
        assert_eq!(
            (
                migrate.pod.as_str(),
                migrate.workload_kind.as_str(),
                migrate.workload.as_str()
            ),
            ("migrate-q8k2m", "Job", "migrate")
        );
        let freed = idx.lookup(ip("10.244.1.40"), now + Duration::from_secs(1));
        assert_eq!(
            freed.kind,
            EndpointKind::Unknown,
            "inside node-a's podCIDR, owned by nobody now"
        );
        // Outside every cluster range.
        assert_eq!(idx.lookup(ip("8.8.8.8"), now).kind, EndpointKind::External);
        assert_eq!(
            idx.lookup(ip("10.244.3.1"), now).kind,
            EndpointKind::External
        );
        assert_eq!(
            idx.lookup(ip("fd00:10:244:2::99"), now).kind,
            EndpointKind::Unknown
        );
    }

    // Atomic replace: web-…-x2x7q deleted, its IP reused by a new pod whose sandbox became
    // ready now; a Job owned by a CronJob is added (kubectl get ...,jobs output).
    let reuse_at = SystemTime::now();
    let ready = k8s_openapi::jiff::Timestamp::try_from(reuse_at)
        .unwrap()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap();
    let ready = k8s_openapi::jiff::Timestamp::from_second(ready.as_second() - 1)
        .unwrap()
        .to_string();
    let items = doc["items"].as_array_mut().unwrap();
    let old = items
        .iter()
        .position(|i| i["metadata"]["name"] == "web-7d4b9c6f5d-x2x7q")
        .unwrap();
    let mut new_pod = items.remove(old);
    new_pod["metadata"]["name"] = json!("web-7d4b9c6f5d-zzzzz");
    new_pod["metadata"]["uid"] = json!("0a1b2c3d-0007-4000-8000-000000000007");
    new_pod["status"]["conditions"][0]["lastTransitionTime"] = json!(ready);
    new_pod["status"]["startTime"] = json!(ready);
    let mut report = new_pod.clone();
    items.push(new_pod);
    report["metadata"]["name"] = json!("report-29400000-abcde");
    report["metadata"]["uid"] = json!("0a1b2c3d-0008-4000-8000-000000000008");
    report["metadata"]["labels"] = json!({"job-name": "report-29400000"});
    report["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "report-29400000", "uid": "j1", "controller": true}]);
    report["status"]["podIP"] = json!("10.244.1.77");
    report["status"]["podIPs"] = json!([{"ip": "10.244.1.77"}]);
    items.push(report);
    items.push(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "report-29400000", "namespace": "shop", "uid": "j1",
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "report", "uid": "cj1", "controller": true}]},
        "spec": {"template": {"spec": {"containers": []}}}}));
    write_atomically(&path, &doc);
    let idx_ref = src.index.clone();
    wait_until("reload after rename", Duration::from_secs(5), || {
        read_index(&idx_ref)
            .lookup(ip("10.244.1.12"), SystemTime::now())
            .pod
            == "web-7d4b9c6f5d-zzzzz"
    })
    .await;
    {
        let idx = read_index(&src.index);
        let later = SystemTime::now() + Duration::from_secs(2);
        let new = idx.lookup(ip("10.244.1.12"), later);
        assert_eq!(
            (new.uid.as_str(), new.ambiguous),
            ("0a1b2c3d-0007-4000-8000-000000000007", false)
        );
        // Flows of the old pod from before the reuse are still named (tombstone).
        let old = idx.lookup(ip("10.244.1.12"), ts("2026-11-21T00:00:00Z"));
        assert_eq!(
            (old.pod.as_str(), old.ambiguous),
            ("web-7d4b9c6f5d-x2x7q", false)
        );
        let report = idx.lookup(ip("10.244.1.77"), later);
        assert_eq!(
            (report.workload_kind.as_str(), report.workload.as_str()),
            ("CronJob", "report")
        );
        let stats = idx.stats();
        assert_eq!(
            stats.pod_tombstones, 2,
            "migrate (completed) and the replaced web pod: {stats:?}"
        );
    }

    // The file disappears: last content keeps serving, age grows; it comes back: fresh again.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    {
        let idx = read_index(&src.index);
        assert!(
            idx.age().unwrap() >= Duration::from_millis(300),
            "age {:?}",
            idx.age()
        );
        assert_eq!(
            idx.lookup(ip("10.96.12.34"), SystemTime::now()).kind,
            EndpointKind::Service
        );
    }
    write_atomically(&path, &doc);
    let idx_ref = src.index.clone();
    wait_until("fresh again", Duration::from_secs(5), || {
        read_index(&idx_ref).age().unwrap() < Duration::from_millis(200)
    })
    .await;

    // A half-written file (non-atomic writer) is not applied.
    std::fs::write(&path, b"{\"apiVersion\": \"v1\", \"items\": [").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        read_index(&src.index)
            .lookup(ip("10.244.1.12"), SystemTime::now())
            .pod,
        "web-7d4b9c6f5d-zzzzz"
    );

    if let Some(stop) = src.stop.take() {
        let _ = stop.send(());
    }
    src.task.await.unwrap();
}

#[tokio::test]
async fn a_file_missing_or_invalid_at_start_is_loaded_once_it_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.json");
    let index = shared_index(IndexConfig::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_file_source_every(
        path.clone(),
        index.clone(),
        Duration::from_millis(50),
        async move {
            let _ = rx.await;
        },
    ));
    // Missing, then not JSON, then not a List: the source keeps polling, nothing is known.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&path, b"not json").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&path, b"{\"items\": 3}").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "the source gave up");
    assert_eq!(read_index(&index).age(), None, "nothing was loaded");
    // A valid file appears: loaded on the next poll.
    let doc: Value = serde_json::from_slice(&std::fs::read(FIXTURE).unwrap()).unwrap();
    write_atomically(&path, &doc);
    let idx = index.clone();
    wait_until("loaded", Duration::from_secs(5), || {
        read_index(&idx).age().is_some()
    })
    .await;
    assert_eq!(
        read_index(&index)
            .lookup(ip("10.244.1.12"), SystemTime::now())
            .pod,
        "web-7d4b9c6f5d-x2x7q"
    );
    let _ = tx.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn an_entry_that_does_not_decode_keeps_its_objects_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(FIXTURE).unwrap()).unwrap();
    write_atomically(&path, &doc);
    let src = start(path.clone()).await;
    let at = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .position(|i| i["kind"] == "Pod" && i["status"]["podIP"] == "10.244.1.12")
        .unwrap();
    let web = &mut doc["items"][at];
    let (namespace, name) = (
        web["metadata"]["namespace"].as_str().unwrap().to_owned(),
        web["metadata"]["name"].as_str().unwrap().to_owned(),
    );
    web["status"]["podIP"] = json!(42);
    // The parse names the entry ...
    let snap = parse_kubectl_list(&path, &serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(snap.unreadable.len(), 1, "{:?}", snap.unreadable);
    let u = &snap.unreadable[0];
    assert_eq!(
        (u.kind.as_str(), u.namespace.as_str(), u.name.as_str()),
        ("Pod", namespace.as_str(), name.as_str())
    );
    assert!(u.uid.is_some() && u.error.contains("invalid type"), "{u:?}");
    // ... and once the file says it, the pod keeps its name (its last good state), while the
    // rest of the file applies (a pod removed from it ends).
    let before = read_index(&src.index).stats().pods_live;
    let items = doc["items"].as_array_mut().unwrap();
    let gone = items
        .iter()
        .position(|i| i["kind"] == "Pod" && i["status"]["podIP"] != json!(42))
        .unwrap();
    items.remove(gone);
    write_atomically(&path, &doc);
    let idx = src.index.clone();
    wait_until("reloaded", Duration::from_secs(5), || {
        read_index(&idx).stats().pods_live == before - 1
    })
    .await;
    assert_eq!(
        read_index(&src.index)
            .lookup(ip("10.244.1.12"), SystemTime::now())
            .pod,
        name
    );
}
