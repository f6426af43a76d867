//! A small loopback Kubernetes API server for the metadata tests.
//!
//! It speaks the real list/watch protocol for the cluster-wide collections podflow watches
//! (`/api/v1/{pods,services,nodes}`, `/apis/apps/v1/replicasets`, `/apis/batch/v1/jobs`), and
//! those `podflow advise` lists (`/api/v1/namespaces`, `/apis/networking.k8s.io/v1/networkpolicies`):
//!
//! * list: the current objects matching `fieldSelector` (`a.b=v`, `a.b==v`, `a.b!=v`, comma
//!   separated), `metadata.resourceVersion` = the store's current RV; `limit`/`continue` paging
//!   over a snapshot; HTTP 410 for a list at an exact/not-older-than RV that was compacted away;
//!   `Accept: ...;as=PartialObjectMetadataList` answered with metadata-only items.
//! * watch (`?watch=1&resourceVersion=N[&allowWatchBookmarks=true][&timeoutSeconds=T]`): a
//!   chunked stream of newline-delimited `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR",
//!   "object":...}`: every change after N (from the event log), then live changes. A selector
//!   applies to the transition: an object leaving the selection is sent as DELETED, entering as
//!   ADDED. N older than the compaction point → one ERROR event with a 410 `Status` ("too old
//!   resource version") and the stream ends, as the real server does. Bookmarks every 200 ms.
//! * `GET /version`.
//! * outage: [`MockApi::set_down`] ends every watch stream, drops new connections at accept and
//!   answers requests on kept-alive connections with 503 + `Connection: close`.
//!
//! Every request is recorded ([`MockApi::queries`]) so tests can assert the selectors used.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub query: HashMap<String, String>,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("1" | "true")
        )
    }
    pub fn field_selector(&self) -> Option<&str> {
        self.query.get("fieldSelector").map(String::as_str)
    }
}

#[derive(Debug)]
struct LogEvent {
    rv: u64,
    resource: &'static str,
    kind: &'static str, // ADDED | MODIFIED | DELETED
    old: Option<Value>,
    new: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    compacted: u64,
    objects: HashMap<&'static str, BTreeMap<String, Value>>,
    log: Vec<Arc<LogEvent>>,
    queries: Vec<Recorded>,
    snapshots: HashMap<u64, (u64, Arc<Vec<Value>>)>,
    next_snapshot: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<LogEvent>>,
    down: AtomicBool,
    down_tx: watch::Sender<bool>,
    expire_tx: watch::Sender<u64>,
}

/// The running server; stopped when dropped.
pub struct MockApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct DroppingListener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for DroppingListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            if let Ok((s, a)) = self.inner.accept().await {
                if self.shared.down.load(Ordering::SeqCst) {
                    drop(s); // the API server is "down": the connection dies at once
                    continue;
                }
                return (s, a);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl MockApi {
    pub async fn start() -> MockApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener)
    }

    /// Serves on a listener bound elsewhere (e.g. inside a test's network namespace).
    pub async fn start_on(listener: std::net::TcpListener) -> MockApi {
        listener.set_nonblocking(true).expect("nonblocking");
        Self::serve(TcpListener::from_std(listener).expect("tokio listener"))
    }

    fn serve(listener: TcpListener) -> MockApi {
        let addr = listener.local_addr().expect("addr");
        let (events, _) = broadcast::channel(1 << 16);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 1,
                ..Inner::default()
            }),
            events,
            down: AtomicBool::new(false),
            down_tx: watch::channel(false).0,
            expire_tx: watch::channel(0).0,
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = DroppingListener {
            inner: listener,
            shared: Arc::clone(&shared),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockApi { addr, shared, task }
    }

    /// A kube config for this server: plain HTTP, no auth.
    pub fn kube_config(&self) -> kube::Config {
        let uri: Uri = format!("http://{}", self.addr).parse().expect("uri");
        kube::Config::new(uri)
    }

    /// Adds or replaces (by `metadata.uid`) an object; returns its resourceVersion.
    pub fn upsert(&self, resource: &'static str, mut obj: Value) -> u64 {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = obj["metadata"]["uid"].as_str().expect("uid").to_owned();
        let old = inner
            .objects
            .entry(resource)
            .or_default()
            .insert(uid, obj.clone());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        let ev = Arc::new(LogEvent {
            rv,
            resource,
            kind,
            old,
            new: obj,
        });
        inner.log.push(Arc::clone(&ev));
        let _ = self.shared.events.send(ev);
        rv
    }

    /// Deletes an object by UID (no-op when absent).
    pub fn delete(&self, resource: &'static str, uid: &str) {
        let mut inner = self.shared.inner.lock().unwrap();
        let Some(mut obj) = inner.objects.entry(resource).or_default().remove(uid) else {
            return;
        };
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ev = Arc::new(LogEvent {
            rv,
            resource,
            kind: "DELETED",
            old: None,
            new: obj,
        });
        inner.log.push(Arc::clone(&ev));
        let _ = self.shared.events.send(ev);
    }

    /// Forgets the event log: watches from any RV older than now get 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.compacted = inner.rv;
        inner.log.clear();
    }

    /// Compacts and sends a 410 ERROR event on every open watch, which then ends.
    pub fn expire_watches(&self) {
        self.compact();
        self.shared.expire_tx.send_modify(|g| *g += 1);
    }

    /// Outage on/off.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        let _ = self.shared.down_tx.send(down);
    }

    pub fn queries(&self) -> Vec<Recorded> {
        self.shared.inner.lock().unwrap().queries.clone()
    }
}

fn resource_of(path: &str) -> Option<&'static str> {
    match path {
        "/api/v1/pods" => Some("pods"),
        "/api/v1/services" => Some("services"),
        "/api/v1/nodes" => Some("nodes"),
        "/apis/apps/v1/replicasets" => Some("replicasets"),
        "/apis/batch/v1/jobs" => Some("jobs"),
        "/api/v1/namespaces" => Some("namespaces"),
        "/apis/networking.k8s.io/v1/networkpolicies" => Some("networkpolicies"),
        _ => None,
    }
}

fn list_meta(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "pods" => ("v1", "PodList"),
        "services" => ("v1", "ServiceList"),
        "nodes" => ("v1", "NodeList"),
        "replicasets" => ("apps/v1", "ReplicaSetList"),
        "namespaces" => ("v1", "NamespaceList"),
        "networkpolicies" => ("networking.k8s.io/v1", "NetworkPolicyList"),
        _ => ("batch/v1", "JobList"),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `a.b=v`, `a.b==v`, `a.b!=v`, comma separated (AND).
fn selector_matches(selector: Option<&str>, obj: &Value) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let (key, want, negate) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, v, false)
        } else {
            return false;
        };
        let mut cur = obj;
        for part in key.trim().split('.') {
            cur = &cur[part];
        }
        let have = cur.as_str().unwrap_or("");
        (have == want.trim()) != negate
    })
}

fn metadata_only(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let path = uri.path().to_owned();
    shared.inner.lock().unwrap().queries.push(Recorded {
        path: path.clone(),
        query: query.clone(),
    });
    if shared.down.load(Ordering::SeqCst) {
        let mut r = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &status(503, "ServiceUnavailable", "down"),
        );
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return r;
    }
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-mock", "gitCommit": "0", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        );
    }
    let Some(resource) = resource_of(&path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let meta_only = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
    let is_watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    if is_watch {
        watch_response(shared, resource, query, meta_only)
    } else {
        list_response(&shared, resource, &query, meta_only)
    }
}

fn list_response(
    shared: &Shared,
    resource: &'static str,
    query: &HashMap<String, String>,
    meta_only: bool,
) -> Response {
    let mut inner = shared.inner.lock().unwrap();
    let requested: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let exactish = matches!(
        query.get("resourceVersionMatch").map(String::as_str),
        Some("Exact" | "NotOlderThan")
    );
    if requested != 0 && exactish && requested < inner.compacted {
        let msg = format!(
            "too old resource version: {requested} ({})",
            inner.compacted
        );
        return json_response(StatusCode::GONE, &status(410, "Expired", &msg));
    }
    let selector = query.get("fieldSelector").map(String::as_str);
    let (rv, items, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (id, offset) = token.split_once(':').unwrap_or(("", "0"));
            let id: u64 = id.parse().unwrap_or(u64::MAX);
            let Some((rv, items)) = inner.snapshots.get(&id).cloned() else {
                return json_response(
                    StatusCode::GONE,
                    &status(410, "Expired", "continue token expired"),
                );
            };
            (rv, items, offset.parse::<usize>().unwrap_or(0))
        }
        None => {
            let items: Vec<Value> = inner
                .objects
                .get(resource)
                .map(|m| {
                    m.values()
                        .filter(|o| selector_matches(selector, o))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            // Shared by the pages of this list: a page costs its own items only.
            (inner.rv, Arc::new(items), 0)
        }
    };
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = offset.saturating_add(limit).min(items.len());
    let page: Vec<Value> = items[offset.min(end)..end]
        .iter()
        .map(|o| {
            if meta_only {
                metadata_only(o)
            } else {
                o.clone()
            }
        })
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        let id = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => token
                .split_once(':')
                .and_then(|(id, _)| id.parse().ok())
                .unwrap_or(0),
            None => {
                inner.next_snapshot += 1;
                let id = inner.next_snapshot;
                inner.snapshots.insert(id, (rv, Arc::clone(&items)));
                id
            }
        };
        metadata["continue"] = json!(format!("{id}:{end}"));
    }
    let (api_version, kind) = if meta_only {
        ("meta.k8s.io/v1", "PartialObjectMetadataList")
    } else {
        list_meta(resource)
    };
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": page}),
    )
}

fn line(kind: &str, object: &Value) -> Result<Bytes, Infallible> {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Ok(Bytes::from(s))
}

/// The event a watcher with `selector` sees for `ev`, if any.
fn translate(
    ev: &LogEvent,
    selector: Option<&str>,
    meta_only: bool,
) -> Option<(&'static str, Value)> {
    let new_match = selector_matches(selector, &ev.new);
    let old_match = ev.old.as_ref().map(|o| selector_matches(selector, o));
    let kind = match (ev.kind, old_match, new_match) {
        ("DELETED", _, true) => "DELETED",
        ("ADDED", _, true) => "ADDED",
        ("MODIFIED", Some(true), true) => "MODIFIED",
        ("MODIFIED", Some(false) | None, true) => "ADDED",
        ("MODIFIED", Some(true), false) => "DELETED",
        _ => return None,
    };
    Some((
        kind,
        if meta_only {
            metadata_only(&ev.new)
        } else {
            ev.new.clone()
        },
    ))
}

fn watch_response(
    shared: Arc<Shared>,
    resource: &'static str,
    query: HashMap<String, String>,
    meta_only: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let selector = query.get("fieldSelector").cloned();
    let bookmarks = matches!(
        query.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let mut live = shared.events.subscribe();
    let mut down_rx = shared.down_tx.subscribe();
    let mut expire_rx = shared.expire_tx.subscribe();
    let (backlog, too_old) = {
        let inner = shared.inner.lock().unwrap();
        let start = if from == 0 { inner.rv } else { from };
        if start < inner.compacted {
            (
                Vec::new(),
                Some(format!(
                    "too old resource version: {start} ({})",
                    inner.compacted
                )),
            )
        } else {
            (
                inner
                    .log
                    .iter()
                    .filter(|e| e.rv > start && e.resource == resource)
                    .cloned()
                    .collect::<Vec<_>>(),
                None,
            )
        }
    };
    let bookmark_kind = match resource {
        "pods" => ("v1", "Pod"),
        "services" => ("v1", "Service"),
        "nodes" => ("v1", "Node"),
        "replicasets" => ("apps/v1", "ReplicaSet"),
        "namespaces" => ("v1", "Namespace"),
        "networkpolicies" => ("networking.k8s.io/v1", "NetworkPolicy"),
        _ => ("batch/v1", "Job"),
    };
    tokio::spawn(async move {
        if let Some(msg) = too_old {
            let _ = tx.send(line("ERROR", &status(410, "Expired", &msg))).await;
            return;
        }
        let sel = selector.as_deref();
        let mut last = from;
        for ev in backlog {
            last = ev.rv;
            if let Some((k, obj)) = translate(&ev, sel, meta_only)
                && tx.send(line(k, &obj)).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut bm = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) if ev.rv > last && ev.resource == resource => {
                        last = ev.rv;
                        if let Some((k, obj)) = translate(&ev, sel, meta_only)
                            && tx.send(line(k, &obj)).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(line("ERROR", &status(410, "Expired", "too old resource version"))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = bm.tick(), if bookmarks => {
                    let rv = shared.inner.lock().unwrap().rv.max(last);
                    let obj = json!({"apiVersion": bookmark_kind.0, "kind": bookmark_kind.1,
                                     "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(line("BOOKMARK", &obj)).await.is_err() { return; }
                }
                r = down_rx.changed() => if r.is_err() || *down_rx.borrow() { return; },
                r = expire_rx.changed() => {
                    if r.is_ok() {
                        let _ = tx.send(line("ERROR", &status(410, "Expired", "too old resource version"))).await;
                    }
                    return;
                }
                () = &mut deadline => return,
                () = tx.closed() => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

// ------------------------------------------------------------------ object builders

/// A pod object as the API server would return it.
#[allow(clippy::too_many_arguments)]
pub fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
    ip: Option<&str>,
    phase: &str,
    sandbox_ready: Option<&str>,
    owner: Option<(&str, &str)>,
    labels: Value,
) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels,
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     "annotations": {"big": "x".repeat(64)},
                     "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase}
    });
    if let Some((kind, oname)) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": oname,
            "uid": format!("owner-{oname}"), "controller": true}]);
    }
    if let Some(ip) = ip {
        p["status"]["podIP"] = json!(ip);
        p["status"]["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(t) = sandbox_ready {
        p["status"]["startTime"] = json!(t);
        p["status"]["conditions"] = json!([{"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": t}]);
    }
    p
}

pub fn service(ns: &str, name: &str, uid: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]}})
}

pub fn node(name: &str, uid: &str, ip: &str, pod_cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}})
}

pub fn replicaset(ns: &str, name: &str, deployment: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
           "metadata": {"name": name, "namespace": ns, "uid": format!("owner-{name}"),
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                             "uid": format!("dep-{deployment}"), "controller": true}]},
           "spec": {"selector": {}}})
}

pub fn job(ns: &str, name: &str, cronjob: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": ns, "uid": format!("owner-{name}"),
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cronjob,
                                             "uid": format!("cj-{cronjob}"), "controller": true}]},
           "spec": {"template": {}}})
}
