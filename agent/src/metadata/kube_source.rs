//! The Kubernetes API source: kube-runtime watchers (list + watch, 410 Gone → re-list, default
//! backoff) feeding the index.
//!
//! Watches (all cluster-wide, each decoded and immediately trimmed to an index record, so no
//! full object is kept beyond the decode of one page/event):
//!
//! * pods of this node: `fieldSelector=spec.nodeName=<node>` ([`Partition::Local`]);
//! * pods of other nodes (and unscheduled ones): `spec.nodeName!=<node>` ([`Partition::Remote`]),
//!   to name remote endpoints; can be switched off;
//! * Services (ClusterIPs), Nodes (addresses, podCIDRs);
//! * ReplicaSets and Jobs as metadata only (`PartialObjectMetadata`: ownerReferences) for the
//!   owner chain ReplicaSet → Deployment, Job → CronJob.
//!
//! Each watcher's `Init`…`InitDone` is buffered and applied as one re-list (objects missing from
//! it end now; derived indexes — claims per IP, cluster ranges — are rebuilt from it).
//!
//! Freshness: the index is confirmed live once a second while every watcher is synced (its last
//! item was not an error and its initial list is done). A watcher error (API down, stream cut,
//! 410) stops confirmation, so `age()` grows while the index keeps serving the last known state.
//! Because a watch resumed from its resourceVersion emits nothing until an object changes, a
//! failing watcher is also cleared when the retry its backoff scheduled happened
//! [`KubeSourceConfig::quiet_after_error`] ago without a new error and a `GET /version` probe
//! succeeds.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::DefaultBackoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use std::sync::{Arc, Mutex, PoisonError};

use super::convert::{node_info, owner_info, pod_info, service_info};
use super::records::{NodeInfo, OwnerInfo, Partition, PodInfo, ServiceInfo};
use super::{MetadataError, MetadataIndex, PodRelist, SharedIndex, write_index};

/// Configuration of [`run_kube_source`].
#[derive(Clone)]
pub struct KubeSourceConfig {
    /// This node's name (`--node-name` / `NODE_NAME`); required.
    pub node_name: String,
    /// `None`: `kube::Config::infer()` (in-cluster config, else KUBECONFIG). Tests pass a
    /// hand-built config pointing at a loopback server.
    pub client_config: Option<kube::Config>,
    /// Also watch the pods of other nodes, to name remote endpoints (default true).
    pub watch_remote_pods: bool,
    /// Watch ReplicaSets and Jobs (metadata only) to resolve Deployments and CronJobs (default
    /// true; without them the `pod-template-hash` convention still names Deployments).
    pub watch_owners: bool,
    /// How often freshness is confirmed and tombstones are pruned.
    pub tick: Duration,
    /// A failing watcher whose backoff retry happened this long ago without a new error is
    /// considered resumed (confirmed by a `GET /version` probe).
    pub quiet_after_error: Duration,
}

impl KubeSourceConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            client_config: None,
            watch_remote_pods: true,
            watch_owners: true,
            tick: Duration::from_secs(1),
            quiet_after_error: Duration::from_secs(3),
        }
    }
}

impl std::fmt::Debug for KubeSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSourceConfig")
            .field("node_name", &self.node_name)
            .field(
                "client_config",
                &self
                    .client_config
                    .as_ref()
                    .map(|c| c.cluster_url.to_string()),
            )
            .field("watch_remote_pods", &self.watch_remote_pods)
            .field("watch_owners", &self.watch_owners)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    LocalPods,
    RemotePods,
    Services,
    Nodes,
    ReplicaSets,
    Jobs,
}

#[derive(Debug)]
enum Item {
    Pod(PodInfo),
    Service(ServiceInfo),
    Node(NodeInfo),
    Owner(OwnerInfo),
}

#[derive(Debug)]
enum Ev {
    Apply(Item),
    Delete(Item),
    Init,
    InitApply(Item),
    InitDone,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatchState {
    Listing,
    Synced,
    /// `was_synced`: the watcher had completed a list before failing (a probe may then clear it).
    Failing {
        last_error: Instant,
        was_synced: bool,
    },
}

type Msg = (usize, Result<Ev, watcher::Error>);

fn convert<K>(ev: Event<K>, f: impl Fn(&K) -> Option<Item>) -> Ev {
    match ev {
        Event::Apply(k) => f(&k).map_or(Ev::Skip, Ev::Apply),
        Event::Delete(k) => f(&k).map_or(Ev::Skip, Ev::Delete),
        Event::Init => Ev::Init,
        Event::InitApply(k) => f(&k).map_or(Ev::Skip, Ev::InitApply),
        Event::InitDone => Ev::InitDone,
    }
}

/// When a watcher's backoff lets it retry next (set by [`RecordingBackoff`]).
type RetryClock = Arc<Mutex<Option<Instant>>>;

/// kube-runtime's default backoff (exponential 0.8 s → 30 s with jitter, reset after 120 s
/// without errors) that records when the retry it schedules will happen.
struct RecordingBackoff {
    inner: DefaultBackoff,
    retry_at: RetryClock,
}

impl Iterator for RecordingBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let delay = self.inner.next();
        if let Some(d) = delay {
            *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Instant::now() + d);
        }
        delay
    }
}

impl Backoff for RecordingBackoff {
    fn reset(&mut self) {
        self.inner.reset();
    }
}

fn stream<K>(
    slot: usize,
    retry_at: RetryClock,
    api: Api<K>,
    cfg: watcher::Config,
    f: fn(&K) -> Option<Item>,
) -> BoxStream<'static, Msg>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, cfg)
        .backoff(RecordingBackoff {
            inner: DefaultBackoff::default(),
            retry_at,
        })
        .map_ok(move |ev| convert(ev, f))
        .map(move |r| (slot, r))
        .boxed()
}

/// Watches the Kubernetes API into `index` until `shutdown` completes. Only client creation
/// fails; API errors are retried with kube-runtime's default backoff while the index keeps
/// serving.
pub async fn run_kube_source(
    cfg: KubeSourceConfig,
    index: SharedIndex,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MetadataError> {
    if cfg.node_name.is_empty() {
        return Err(MetadataError::MissingNodeName);
    }
    let client = match cfg.client_config.clone() {
        Some(c) => Client::try_from(c),
        None => Client::try_default().await,
    }
    .map_err(|source| MetadataError::KubeClient { source })?;

    let node = &cfg.node_name;
    let mut srcs = vec![Src::LocalPods];
    let mut streams: SelectAll<BoxStream<'static, Msg>> = SelectAll::new();
    let pod_fn: fn(&Pod) -> Option<Item> = |p| pod_info(p).map(Item::Pod);
    let mut retries: Vec<RetryClock> = vec![RetryClock::default()];
    streams.push(stream(
        0,
        Arc::clone(&retries[0]),
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        pod_fn,
    ));
    let mut add = |src: Src, s: Box<dyn FnOnce(usize, RetryClock) -> BoxStream<'static, Msg>>| {
        let retry = RetryClock::default();
        streams.push(s(srcs.len(), Arc::clone(&retry)));
        retries.push(retry);
        srcs.push(src);
    };
    if cfg.watch_remote_pods {
        let (c, n) = (client.clone(), node.clone());
        add(
            Src::RemotePods,
            Box::new(move |slot, retry| {
                stream(
                    slot,
                    retry,
                    Api::<Pod>::all(c),
                    watcher::Config::default().fields(&format!("spec.nodeName!={n}")),
                    pod_fn,
                )
            }),
        );
    }
    let c = client.clone();
    add(
        Src::Services,
        Box::new(move |slot, retry| {
            stream(
                slot,
                retry,
                Api::<Service>::all(c),
                watcher::Config::default(),
                |s| service_info(s).map(Item::Service),
            )
        }),
    );
    let c = client.clone();
    add(
        Src::Nodes,
        Box::new(move |slot, retry| {
            stream(
                slot,
                retry,
                Api::<Node>::all(c),
                watcher::Config::default(),
                |n| node_info(n).map(Item::Node),
            )
        }),
    );
    if cfg.watch_owners {
        let c = client.clone();
        add(
            Src::ReplicaSets,
            Box::new(move |slot, retry| {
                stream(
                    slot,
                    retry,
                    Api::<PartialObjectMeta<ReplicaSet>>::all(c),
                    watcher::Config::default(),
                    |o| owner_info("ReplicaSet", &o.metadata).map(Item::Owner),
                )
            }),
        );
        let c = client.clone();
        add(
            Src::Jobs,
            Box::new(move |slot, retry| {
                stream(
                    slot,
                    retry,
                    Api::<PartialObjectMeta<Job>>::all(c),
                    watcher::Config::default(),
                    |o| owner_info("Job", &o.metadata).map(Item::Owner),
                )
            }),
        );
    }

    let mut states = vec![WatchState::Listing; srcs.len()];
    let mut buffers: Vec<Vec<Item>> = srcs.iter().map(|_| Vec::new()).collect();
    // Per pod watcher: its initial list in progress, applied a part at a time.
    let mut relists: Vec<Option<PodRelist>> = srcs.iter().map(|_| None).collect();
    // Per watcher: since when events may have been missed (first error after being synced).
    let mut gap_since: Vec<Option<SystemTime>> = vec![None; srcs.len()];
    let mut tick = tokio::time::interval(cfg.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let msg = tokio::select! {
            () = &mut shutdown => return Ok(()),
            msg = streams.next() => msg,
            _ = tick.tick() => {
                on_tick(&cfg, &client, &index, &mut states, &retries).await;
                continue;
            }
        };
        let Some((slot, result)) = msg else {
            return Ok(());
        };
        let (Some(src), Some(state), Some(buffer), Some(pod_relist)) = (
            srcs.get(slot).copied(),
            states.get_mut(slot),
            buffers.get_mut(slot),
            relists.get_mut(slot),
        ) else {
            continue;
        };
        let now = SystemTime::now();
        match result {
            Err(e) => {
                if !matches!(state, WatchState::Failing { .. }) {
                    tracing::warn!(watch = ?src, error = %e, "kubernetes watch failed; serving the last known metadata");
                } else {
                    tracing::debug!(watch = ?src, error = %e, "kubernetes watch still failing");
                }
                let was_synced = matches!(
                    state,
                    WatchState::Synced
                        | WatchState::Failing {
                            was_synced: true,
                            ..
                        }
                );
                if let Some(g) = gap_since.get_mut(slot)
                    && g.is_none()
                    && was_synced
                {
                    *g = Some(now); // the state was complete until this error
                }
                *state = WatchState::Failing {
                    last_error: Instant::now(),
                    was_synced,
                };
            }
            Ok(Ev::Init) => {
                buffer.clear();
                // A list started again: the pods of the interrupted one were applied (they are
                // real); nothing is ended until a list completes.
                *pod_relist = None;
                *state = WatchState::Listing;
            }
            Ok(Ev::InitApply(item)) => {
                buffer.push(item);
                if is_pods(src) && buffer.len() >= APPLY_PART {
                    let items = std::mem::take(buffer);
                    apply_pod_part(&mut write_index(&index), src, pod_relist, items, now);
                }
            }
            Ok(Ev::InitDone) => {
                let items = std::mem::take(buffer);
                tracing::debug!(watch = ?src, objects = items.len(), "kubernetes list done");
                let gap = gap_since.get_mut(slot).and_then(Option::take);
                relist(&index, src, pod_relist, items, now, gap);
                *state = WatchState::Synced;
                confirm_if_synced(&index, &states);
            }
            Ok(ev @ (Ev::Apply(_) | Ev::Delete(_))) => {
                if matches!(state, WatchState::Failing { .. }) {
                    *state = WatchState::Synced;
                }
                let mut idx = write_index(&index);
                match ev {
                    Ev::Apply(Item::Pod(p)) => idx.apply_pod(partition(src), p, now),
                    Ev::Delete(Item::Pod(p)) => idx.delete_pod(partition(src), &p.uid, now),
                    Ev::Apply(Item::Service(s)) => idx.apply_service(s, now),
                    Ev::Delete(Item::Service(s)) => idx.delete_service(&s.uid, now),
                    Ev::Apply(Item::Node(n)) => idx.apply_node(n, now),
                    Ev::Delete(Item::Node(n)) => idx.delete_node(&n.uid, now),
                    Ev::Apply(Item::Owner(o)) => idx.apply_owner(o),
                    Ev::Delete(Item::Owner(o)) => {
                        idx.delete_owner(&o.kind, &o.namespace, &o.name, now)
                    }
                    _ => {}
                }
            }
            Ok(Ev::Skip) => {}
        }
    }
}

/// Pods of an initial list applied to the index at a time: the index's lock is held for one
/// part, and a 150 000-pod list is never held whole.
const APPLY_PART: usize = 1024;

fn is_pods(src: Src) -> bool {
    matches!(src, Src::LocalPods | Src::RemotePods)
}

/// Applies a part of a pod watcher's initial list.
fn apply_pod_part(
    idx: &mut MetadataIndex,
    src: Src,
    relist: &mut Option<PodRelist>,
    items: Vec<Item>,
    now: SystemTime,
) {
    let pods = items
        .into_iter()
        .filter_map(|i| if let Item::Pod(p) = i { Some(p) } else { None })
        .collect();
    let relist = relist.get_or_insert_with(|| idx.begin_relist_pods(partition(src)));
    idx.relist_pods_part(relist, pods, now);
}

fn partition(src: Src) -> Partition {
    if src == Src::LocalPods {
        Partition::Local
    } else {
        Partition::Remote
    }
}

/// A watcher's initial list is complete: applies what is left of it and ends what it no longer
/// names. Pods: the list's last part, then the finish of the re-list its parts began.
fn relist(
    index: &SharedIndex,
    src: Src,
    pod_relist: &mut Option<PodRelist>,
    items: Vec<Item>,
    now: SystemTime,
    gap_since: Option<SystemTime>,
) {
    let mut idx = write_index(index);
    match src {
        Src::LocalPods | Src::RemotePods => {
            apply_pod_part(&mut idx, src, pod_relist, items, now);
            let relist = pod_relist
                .take()
                .unwrap_or_else(|| idx.begin_relist_pods(partition(src)));
            tracing::info!(watch = ?src, pods = relist.len(), "kubernetes pods listed");
            idx.finish_relist_pods(relist, &HashSet::new(), now, gap_since);
        }
        Src::Services => {
            let s = items
                .into_iter()
                .filter_map(|i| {
                    if let Item::Service(s) = i {
                        Some(s)
                    } else {
                        None
                    }
                })
                .collect();
            idx.relist_services(s, &HashSet::new(), now);
        }
        Src::Nodes => {
            let n = items
                .into_iter()
                .filter_map(|i| if let Item::Node(n) = i { Some(n) } else { None })
                .collect();
            idx.relist_nodes(n, &HashSet::new(), now);
        }
        Src::ReplicaSets | Src::Jobs => {
            let kind = if src == Src::Jobs {
                "Job"
            } else {
                "ReplicaSet"
            };
            let o = items
                .into_iter()
                .filter_map(|i| {
                    if let Item::Owner(o) = i {
                        Some(o)
                    } else {
                        None
                    }
                })
                .collect();
            idx.relist_owners(kind, o, &HashSet::new(), now);
        }
    }
    drop(idx);
    // The listed objects are gone: return their memory.
    super::release_free_memory();
}

fn confirm_if_synced(index: &SharedIndex, states: &[WatchState]) {
    if states.iter().all(|s| *s == WatchState::Synced) {
        write_index(index).confirm(Instant::now());
    }
}

async fn on_tick(
    cfg: &KubeSourceConfig,
    client: &Client,
    index: &SharedIndex,
    states: &mut [WatchState],
    retries: &[RetryClock],
) {
    write_index(index).maintain(SystemTime::now());
    // A failing watcher whose scheduled retry happened `quiet_after_error` ago without a new
    // error has resumed its watch (a resumed watch emits nothing until something changes).
    let clearable = |s: &WatchState, retry: Option<&RetryClock>| {
        let retry_at = retry.and_then(|r| *r.lock().unwrap_or_else(PoisonError::into_inner));
        match (s, retry_at) {
            (
                WatchState::Failing {
                    last_error,
                    was_synced: true,
                },
                Some(r),
            ) => r > *last_error && r.elapsed() >= cfg.quiet_after_error,
            _ => false,
        }
    };
    if states
        .iter()
        .enumerate()
        .any(|(i, s)| clearable(s, retries.get(i)))
    {
        let probe = tokio::time::timeout(Duration::from_secs(2), client.apiserver_version()).await;
        if matches!(probe, Ok(Ok(_))) {
            for (i, s) in states.iter_mut().enumerate() {
                if clearable(s, retries.get(i)) {
                    *s = WatchState::Synced;
                }
            }
        }
    }
    confirm_if_synced(index, states);
}
