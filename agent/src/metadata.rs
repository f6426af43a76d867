//! Pod metadata: sources (Kubernetes API, static file) and the IP → endpoint index.
//!
//! Data flows one way: a source ([`run_kube_source`] or [`run_file_source`]) converts objects into
//! compact records ([`PodInfo`], [`ServiceInfo`], [`NodeInfo`], [`OwnerInfo`]) and applies them to
//! the shared [`MetadataIndex`]; the flow pipeline asks [`MetadataIndex::lookup`] who owned an IP
//! when a flow's packets were seen.
//!
//! # Correctness under churn
//!
//! Every IP keeps a short history of *claims*: `[from, until)` intervals, each owned by one object
//! identified by its UID (never by name). `lookup(ip, at)` answers from the claims whose interval
//! contains `at`:
//!
//! * `from` of a pod claim is the `lastTransitionTime` of the pod's `PodReadyToStartContainers`
//!   condition (the sandbox, and so the IP, became ready: a *precise* lower bound), else
//!   `status.startTime` (earlier than the IP assignment: imprecise), else the time the source first
//!   saw the pod with that IP. Kubernetes timestamps have one-second granularity.
//! * `until` is the time the source observed the pod deleted, its phase become `Succeeded` /
//!   `Failed` (a completed pod releases its IP and never owns it again), its IP change, or its
//!   absence from a re-list. Observation is always after the real release: an upper bound.
//! * Each claim also has `start_by`, an upper bound of its real start: `from + 1 s` when precise,
//!   else the time it was first observed. An owner whose `start_by` is at or before another's
//!   `from` certainly came first, so it had released the IP before the other started: its claim
//!   is cut to the other's `start_by`, whatever order the events arrived in. Within that cut
//!   (one second for precise starts) both are possible and `lookup` answers `ambiguous`.
//! * Two different UIDs whose intervals both contain `at` (out-of-order events, a missed delete,
//!   imprecise timestamps) make the answer `ambiguous: true` rather than a guess; see
//!   [`MetadataIndex::lookup`] for what an ambiguous endpoint carries.
//! * Gaps (API outage, 410 Gone, a changed metadata file): a re-list ends the pods that are
//!   missing, but they ended somewhere in the gap, and pods that lived only inside the gap were
//!   never seen. So claims whose end (or imprecise start) falls into the gap are marked
//!   uncertain from the gap's start: lookups there answer `ambiguous` (kind kept, other fields
//!   empty). A pod missing from a re-list is not final: a stale list (served from a lagging
//!   watch cache) may omit a pod the watch then re-adds, and it is revived.
//! * A UID that was deleted (DELETE event) or completed is final: a stale re-list or a late
//!   MODIFIED event cannot bring it back to life.
//! * During an outage the index serves the last known state; [`MetadataIndex::age`] says how
//!   old it is. Lookups for times after the outage began may name the previous owner of an IP
//!   that changed hands meanwhile: that is what `age` qualifies.
//! * Ended claims stay as tombstones for [`IndexConfig::tombstone_ttl`] (default 5 min) so flows
//!   of short-lived pods (a 2-second Job) are still named when they are flushed later.
//!
//! # Kinds
//!
//! * `pod`: a claim by a pod with its own network namespace.
//! * `node`: a node address (`status.addresses`, InternalIP/ExternalIP). hostNetwork pods share
//!   the node's IP; without ports an IP cannot tell them apart from the node itself, so a node IP
//!   always maps to `node` (with the node name).
//! * `host_network_pod`: an IP claimed only by hostNetwork pods and by no known node (e.g. a
//!   metadata file without Node objects). One such pod: its metadata; several: `ambiguous` with
//!   their common parts (typically the node).
//! * `service`: a Service ClusterIP (`service = Some((namespace, name))`, `namespace` set too).
//! * `unknown`: nothing known owned the IP at that time but the IP is inside the cluster's known
//!   ranges (configured CIDRs plus the nodes' `spec.podCIDRs`), or the index never synced.
//! * `external`: nothing known owned it and it is outside every known cluster range.
//!
//! # Workloads
//!
//! The pod's controller ownerReference is followed: ReplicaSet → its Deployment, Job → its
//! CronJob (from the ReplicaSet/Job objects the source watches, metadata only). When the
//! ReplicaSet object is unknown but the pod carries the `pod-template-hash` label and the
//! ReplicaSet name is `<name>-<hash>`, the workload is `Deployment <name>` (the Deployment
//! controller's naming convention, checked against the label, not guessed). No such fallback for
//! Jobs: a CronJob's `<name>-<minutes>` suffix cannot be verified, so an unknown Job stays `Job`.
//! StatefulSet, DaemonSet and any other controller kind are reported as they are. A pod without a
//! controller is its own workload: `workload_kind = "Pod"`, `workload = <pod name>`.
//!
//! # Memory bound
//!
//! See [`IndexLimits`]: counts per kind (pods include tombstones, tombstones have a cap of their
//! own), claims per IP, IPs per object and label bytes per pod are capped; every eviction or
//! rejection is counted in [`IndexStats`]. A pod costs about 700 bytes of resident memory
//! (strings many pods share are interned, label sets shared by a workload's replicas), and lists
//! are applied a part at a time, so 150 000 pods take about 100 MiB and loading them at most
//! about twice that; when pods go, the tables shrink and the heap is trimmed.

mod convert;
mod file_source;
mod index;
mod kube_source;
mod records;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use convert::{node_info, owner_info, pod_info, service_info};
pub use file_source::{
    FILE_POLL_INTERVAL, FileSnapshot, apply_snapshot, parse_kubectl_list, run_file_source,
    run_file_source_every,
};
pub use index::{IndexConfig, IndexLimits, IndexStats, MetadataIndex, PodRelist};
pub use kube_source::{KubeSourceConfig, run_kube_source};
pub use records::{
    ContainerPort, NodeInfo, OwnerInfo, OwnerRef, Partition, PodInfo, PodPhase, ServiceInfo,
    ServicePort, TargetPort,
};

/// What the index knows about one flow endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: EndpointKind,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    /// Resolved owner: `Deployment`, `CronJob`, `StatefulSet`, `DaemonSet`, `ReplicaSet`, `Job`,
    /// another controller kind, or `Pod` for a pod without a controller. Empty when not a pod.
    pub workload_kind: String,
    pub workload: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's node, or the node itself for kind `node`.
    pub node: String,
    /// `(namespace, name)` of the Service for kind `service`.
    pub service: Option<(String, String)>,
    /// More than one owner is possible at that time; the other fields hold only what all the
    /// candidates have in common.
    pub ambiguous: bool,
}

/// A Service a flow endpoint was reached through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    /// The Service port's name; empty when unnamed.
    pub port_name: String,
    /// The port the client used: the Service port, or the node port.
    pub port: u16,
}

/// What kind of thing an endpoint is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    Pod,
    HostNetworkPod,
    Node,
    Service,
    External,
    #[default]
    Unknown,
}

impl EndpointKind {
    /// Stable snake_case name for records and output.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Pod => "pod",
            EndpointKind::HostNetworkPod => "host_network_pod",
            EndpointKind::Node => "node",
            EndpointKind::Service => "service",
            EndpointKind::External => "external",
            EndpointKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The index shared between a source (writer) and the flow pipeline (readers). Writers hold the
/// lock for one event or one re-list batch; readers for one lookup.
pub type SharedIndex = Arc<RwLock<MetadataIndex>>;

/// A new, empty shared index.
/// Gives the heap's free memory back to the system (glibc keeps freed memory in its arenas):
/// after a mass deletion or a re-list, a node's agent returns to its size.
pub(crate) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn shared_index(cfg: IndexConfig) -> SharedIndex {
    Arc::new(RwLock::new(MetadataIndex::new(cfg)))
}

/// Read access that survives a poisoned lock (a panicked writer leaves a usable index).
pub fn read_index(index: &SharedIndex) -> RwLockReadGuard<'_, MetadataIndex> {
    index.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write access that survives a poisoned lock.
pub fn write_index(index: &SharedIndex) -> RwLockWriteGuard<'_, MetadataIndex> {
    index.write().unwrap_or_else(PoisonError::into_inner)
}

/// Errors of the metadata sources.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("failed to build a kubernetes client (in-cluster config or KUBECONFIG)")]
    KubeClient {
        #[source]
        source: kube::Error,
    },
    #[error("the kubernetes source needs the node name (--node-name or NODE_NAME)")]
    MissingNodeName,
    #[error("failed to read metadata file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse metadata file {path}")]
    ParseFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("metadata file {path} is not a kubectl List (no `items` array)")]
    NotAList { path: PathBuf },
}
