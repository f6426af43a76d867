//! The IP → owner index: per-IP claim histories with validity intervals (see the module docs of
//! [`crate::metadata`] for the rules). Here: limits, configuration, statistics, lookups and
//! upkeep; applying pods ([`pods`](self::pods)), Services, Nodes and owners
//! ([`objects`](self::objects)) and the claims they make ([`claims`](self::claims)) have rooms of
//! their own.
mod claims;
mod objects;
mod pods;
mod services;
#[cfg(test)]
mod tests;

pub use self::pods::PodRelist;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::net::{IpNet, canonical};

use super::{
    Endpoint, EndpointKind,
    records::{ContainerPort, OwnerRef, Partition, ServicePort},
};

/// Kubernetes timestamps have one-second granularity: a precise `from` may be up to this much
/// earlier than the real event.
const TIMESTAMP_GRANULARITY: Duration = Duration::from_secs(1);

/// Memory bound of the index. Worst-case bytes ≈ `max_pods` × (~600 B fixed + names +
/// `max_label_bytes_per_pod`) + claims × ~120 B; with the defaults and typical objects (~0.7 KiB
/// per pod with its claims) about 35 MB for 50 000 pods, at most ~150 MB if every pod carries the
/// full label budget. [`IndexStats::approx_bytes`] reports the running estimate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexLimits {
    /// Tombstones (ended pods kept for late records) at most; beyond, the oldest is evicted
    /// (`tombstones_evicted`) before its `tombstone_ttl` is up.
    pub max_tombstones: usize,
    /// Pods, live and tombstones together. When full, the oldest tombstone is evicted
    /// (`tombstones_evicted`); when there are none left, a new pod from another node is rejected
    /// (`pods_rejected`) while a pod of this node ([`Partition::Local`]) is still admitted (at
    /// most the kubelet's max-pods more).
    pub max_pods: usize,
    /// Services; new ones beyond are rejected (`services_rejected`).
    pub max_services: usize,
    /// Nodes; new ones beyond are rejected (`nodes_rejected`).
    pub max_nodes: usize,
    /// ReplicaSets + Jobs (for the owner chain); new ones beyond are rejected (`owners_rejected`).
    pub max_owners: usize,
    /// History length per IP; the claim that ended first is evicted (`claims_evicted`).
    pub max_claims_per_ip: usize,
    /// IPs kept per object (a dual-stack pod has 2).
    pub max_ips_per_object: usize,
    /// Label bytes (keys + values) kept per pod, in key order; the rest is dropped
    /// (`labels_truncated`).
    pub max_label_bytes_per_pod: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        Self {
            // Kubernetes' tested maximum is 150 000 pods per cluster.
            max_pods: 200_000,
            max_tombstones: 20_000,
            max_services: 20_000,
            max_nodes: 5_000,
            max_owners: 100_000,
            max_claims_per_ip: 16,
            max_ips_per_object: 4,
            max_label_bytes_per_pod: 2048,
        }
    }
}

/// Index configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// How long ended claims (deleted/completed pods, removed services) keep answering lookups.
    /// Must cover the flow table's flush delay.
    pub tombstone_ttl: Duration,
    /// The cluster's address ranges (pod and service CIDRs) besides the nodes' `podCIDRs`: an
    /// unowned IP inside them is `unknown`, outside `external`.
    pub cluster_cidrs: Vec<IpNet>,
    pub limits: IndexLimits,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            tombstone_ttl: Duration::from_secs(300),
            cluster_cidrs: Vec::new(),
            limits: IndexLimits::default(),
        }
    }
}

/// Counters and sizes of the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub pods_live: usize,
    pub pod_tombstones: usize,
    pub services: usize,
    pub nodes: usize,
    pub owners: usize,
    pub ips: usize,
    pub claims: usize,
    /// Estimated heap bytes held by the index.
    pub approx_bytes: usize,
    pub tombstones_evicted: u64,
    pub pods_rejected: u64,
    pub services_rejected: u64,
    pub nodes_rejected: u64,
    pub owners_rejected: u64,
    pub claims_evicted: u64,
    pub labels_truncated: u64,
    /// Events about a UID that was already deleted/completed (stale re-lists, late events).
    pub stale_ignored: u64,
}

/// A set of labels, sorted by key.
type Labels = Arc<[(Arc<str>, Arc<str>)]>;

/// A pod as the index keeps it: about 300 bytes beside its name and UID. Strings many pods share
/// (namespace, node, label keys and values, owner) are interned ([`MetadataIndex::intern`]).
#[derive(Debug)]
struct PodMeta {
    uid: Arc<str>,
    namespace: Arc<str>,
    name: Box<str>,
    node: Arc<str>,
    /// Sorted by key; one shared set for all pods with the same labels (a workload's replicas).
    labels: Labels,
    /// The controller: (kind, name).
    owner: Option<(Arc<str>, Arc<str>)>,
    /// Deployment name from the `pod-template-hash` convention, if it applies.
    deployment_by_hash: Option<Arc<str>>,
    /// Named container ports (for Services' named target ports).
    ports: Box<[ContainerPort]>,
}

impl PodMeta {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.labels[i].1)
    }

    fn labels_map(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[derive(Debug)]
struct SvcMeta {
    namespace: String,
    name: String,
    selector: BTreeMap<String, String>,
    ports: Vec<ServicePort>,
}

#[derive(Clone, Debug)]
enum Holder {
    Pod(Arc<PodMeta>),
    HostNetPod(Arc<PodMeta>),
    /// A ClusterIP.
    Service(Arc<SvcMeta>),
    /// An external or LoadBalancer IP of a Service (several Services may share one, on
    /// different ports).
    ServiceExternal(Arc<SvcMeta>),
    Node(Arc<str>),
}

impl Holder {
    /// Claims of the same category exclude each other in time (one pod IP, one ClusterIP).
    fn exclusive_category(&self) -> Option<u8> {
        match self {
            Holder::Pod(_) => Some(0),
            Holder::Service(_) => Some(1),
            Holder::HostNetPod(_) | Holder::ServiceExternal(_) | Holder::Node(_) => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Claim {
    uid: Arc<str>,
    from: SystemTime,
    /// `from` is a lower bound of the real start within [`TIMESTAMP_GRANULARITY`].
    precise: bool,
    /// Upper bound of the real start: `from` + granularity when precise, else the time the
    /// claim was first observed. A claim whose `start_by` is at or before another's `from`
    /// certainly started first.
    start_by: SystemTime,
    until: Option<SystemTime>,
    /// `[start, end)` in which another, unseen owner may have held the IP: the claim's edge
    /// fell into a gap of the source (ended, or started with an imprecise `from`, somewhere
    /// between the last complete state and a re-list).
    /// Boxed: rare, and a claim per pod IP is kept.
    uncertain: Option<Box<(SystemTime, SystemTime)>>,
    holder: Holder,
}

impl Claim {
    fn covers(&self, at: SystemTime) -> bool {
        self.from <= at && self.until.is_none_or(|u| at < u)
    }
}

#[derive(Debug)]
struct PodRecord {
    meta: Arc<PodMeta>,
    host_network: bool,
    partition: Partition,
    ips: Vec<IpAddr>,
    ended: Option<SystemTime>,
    /// Ended by a delete event or a terminal phase (final), not by a missing re-list entry
    /// (a stale list served from a lagging cache may omit a pod that the watch then re-adds).
    final_end: bool,
}

/// A Service and what it claims beyond its ClusterIPs.
#[derive(Debug)]
struct SvcRecord {
    ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    meta: Arc<SvcMeta>,
    approx: usize,
}

#[derive(Debug)]
struct NodeRecord {
    ips: Vec<IpAddr>,
    name: Arc<str>,
    pod_cidrs: Vec<IpNet>,
}

#[derive(Debug)]
struct OwnerEntry {
    owner: Option<OwnerRef>,
    ended: Option<SystemTime>,
}

type OwnerKey = (String, String, String); // kind, namespace, name

/// The IP → owner index. Writers are the sources; readers call [`MetadataIndex::lookup`].
#[derive(Debug)]
pub struct MetadataIndex {
    cfg: IndexConfig,
    pods: HashMap<Arc<str>, PodRecord>,
    /// Ended pods, oldest first.
    tombstones: BTreeSet<(SystemTime, Arc<str>)>,
    services: HashMap<Arc<str>, SvcRecord>,
    /// Services by namespace and UID: the ones a pod may back.
    services_by_ns: HashMap<String, HashMap<Arc<str>, Arc<SvcMeta>>>,
    /// Node ports (port, protocol) → their Service.
    node_ports: HashMap<(u16, u8), Arc<SvcMeta>>,
    nodes: HashMap<Arc<str>, NodeRecord>,
    owners: HashMap<OwnerKey, OwnerEntry>,
    claims: HashMap<IpAddr, Vec<Claim>>,
    /// Derived from `cfg.cluster_cidrs` and the nodes' pod CIDRs; rebuilt on node changes.
    ranges: Vec<IpNet>,
    confirmed: Option<Instant>,
    stats: IndexStats,
    /// Strings shared by many objects, kept once; dropped by [`MetadataIndex::maintain`] when no
    /// object uses them any more.
    interner: std::collections::HashSet<Arc<str>>,
    /// Label sets, likewise.
    label_sets: std::collections::HashSet<Labels>,
}

impl MetadataIndex {
    pub fn new(cfg: IndexConfig) -> Self {
        let ranges = cfg.cluster_cidrs.clone();
        Self {
            cfg,
            pods: HashMap::new(),
            tombstones: BTreeSet::new(),
            services: HashMap::new(),
            services_by_ns: HashMap::new(),
            node_ports: HashMap::new(),
            nodes: HashMap::new(),
            owners: HashMap::new(),
            claims: HashMap::new(),
            ranges,
            confirmed: None,
            stats: IndexStats::default(),
            interner: std::collections::HashSet::new(),
            label_sets: std::collections::HashSet::new(),
        }
    }

    pub fn config(&self) -> &IndexConfig {
        &self.cfg
    }

    /// The shared copy of a label set.
    fn intern_labels(&mut self, labels: Vec<(Arc<str>, Arc<str>)>) -> Labels {
        if let Some(a) = self.label_sets.get(labels.as_slice()) {
            return Arc::clone(a);
        }
        let a: Labels = Arc::from(labels);
        self.label_sets.insert(Arc::clone(&a));
        a
    }

    /// The shared copy of `s`.
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interner.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.interner.insert(Arc::clone(&a));
        a
    }

    // ---------------------------------------------------------------- freshness

    /// The source is synced and its connection confirmed live at `at`.
    pub fn confirm(&mut self, at: Instant) {
        self.confirmed = Some(self.confirmed.map_or(at, |c| c.max(at)));
    }

    /// How old the index's knowledge is: the time since the source was last confirmed synced
    /// and live. Grows during an API outage or while the metadata file is unreadable. `None`:
    /// never synced.
    pub fn age(&self) -> Option<Duration> {
        self.age_at(Instant::now())
    }

    pub fn age_at(&self, now: Instant) -> Option<Duration> {
        self.confirmed.map(|c| now.saturating_duration_since(c))
    }

    // ---------------------------------------------------------------- lookup

    /// Who owned `ip` at wall-clock time `at` (the time of the flow's packets).
    ///
    /// Answers from the claims whose `[from, until)` contains `at`. One owner: its endpoint. A
    /// node address wins over hostNetwork pods on that IP (kind `node`). Several different
    /// owners (UIDs): `ambiguous: true`, and the endpoint holds only what all candidates share
    /// (kind if equal, else `unknown`; namespace, pod name, workload, node, service and the
    /// labels equal in all); `uid` is empty. No owner: `unknown` inside the cluster ranges or
    /// before the first sync, `external` outside.
    pub fn lookup(&self, ip: IpAddr, at: SystemTime) -> Endpoint {
        let ip = canonical(ip);
        let mut candidates: Vec<&Claim> = Vec::new();
        if let Some(list) = self.claims.get(&ip) {
            for c in list.iter().filter(|c| c.covers(at)) {
                if !candidates.iter().any(|o| o.uid == c.uid) {
                    candidates.push(c);
                }
            }
        }
        if candidates
            .iter()
            .any(|c| matches!(c.holder, Holder::Node(_)))
        {
            candidates.retain(|c| matches!(c.holder, Holder::Node(_)));
        }
        let uncertain = candidates.iter().any(|c| {
            c.uncertain
                .as_deref()
                .is_some_and(|&(a, b)| a <= at && at < b)
        });
        let mut ep = match candidates.as_slice() {
            [] => {
                let kind =
                    if self.confirmed.is_none() || self.ranges.iter().any(|r| r.contains(&ip)) {
                        EndpointKind::Unknown
                    } else {
                        EndpointKind::External
                    };
                Endpoint {
                    kind,
                    ..Endpoint::default()
                }
            }
            [one] => self.endpoint(&one.holder),
            many => {
                let mut eps = many.iter().map(|c| self.endpoint(&c.holder));
                let Some(mut common) = eps.next() else {
                    return Endpoint::default();
                };
                common.uid.clear();
                for ep in eps {
                    if ep.kind != common.kind {
                        common.kind = EndpointKind::Unknown;
                    }
                    keep_if_equal(&mut common.namespace, &ep.namespace);
                    keep_if_equal(&mut common.pod, &ep.pod);
                    if ep.workload_kind != common.workload_kind || ep.workload != common.workload {
                        common.workload_kind.clear();
                        common.workload.clear();
                    }
                    keep_if_equal(&mut common.node, &ep.node);
                    if ep.service != common.service {
                        common.service = None;
                    }
                    common.labels.retain(|k, v| ep.labels.get(k) == Some(v));
                }
                common.ambiguous = true;
                common
            }
        };
        if uncertain {
            // An unseen owner is possible: nothing is common with it but the kind.
            ep = Endpoint {
                kind: ep.kind,
                ambiguous: true,
                ..Endpoint::default()
            };
        }
        ep
    }

    fn endpoint(&self, holder: &Holder) -> Endpoint {
        match holder {
            Holder::Pod(meta) | Holder::HostNetPod(meta) => {
                let (workload_kind, workload) = self.workload(meta);
                Endpoint {
                    kind: if matches!(holder, Holder::Pod(_)) {
                        EndpointKind::Pod
                    } else {
                        EndpointKind::HostNetworkPod
                    },
                    namespace: meta.namespace.to_string(),
                    pod: meta.name.to_string(),
                    uid: meta.uid.to_string(),
                    workload_kind,
                    workload,
                    labels: meta.labels_map(),
                    node: meta.node.to_string(),
                    service: None,
                    ambiguous: false,
                }
            }
            Holder::Service(svc) | Holder::ServiceExternal(svc) => Endpoint {
                kind: EndpointKind::Service,
                namespace: svc.namespace.clone(),
                service: Some((svc.namespace.clone(), svc.name.clone())),
                ..Endpoint::default()
            },
            Holder::Node(name) => Endpoint {
                kind: EndpointKind::Node,
                node: name.to_string(),
                ..Endpoint::default()
            },
        }
    }

    /// Resolves the owner chain (see the module docs).
    fn workload(&self, meta: &PodMeta) -> (String, String) {
        let Some((kind, name)) = &meta.owner else {
            return ("Pod".to_owned(), meta.name.to_string());
        };
        let key = (
            kind.to_string(),
            meta.namespace.to_string(),
            name.to_string(),
        );
        let parent = self.owners.get(&key).map(|e| e.owner.as_ref());
        match (&**kind, parent) {
            ("ReplicaSet" | "Job", Some(Some(parent))) => {
                (parent.kind.clone(), parent.name.clone())
            }
            ("ReplicaSet", None) => match &meta.deployment_by_hash {
                Some(deployment) => ("Deployment".to_owned(), deployment.to_string()),
                None => (kind.to_string(), name.to_string()),
            },
            _ => (kind.to_string(), name.to_string()),
        }
    }
}

/// Shrinks a map that holds less than a quarter of its capacity; says whether it did.
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) -> bool {
    if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
        true
    } else {
        false
    }
}

impl MetadataIndex {
    // ---------------------------------------------------------------- upkeep

    /// Drops tombstones and ended claims older than the tombstone window. Sources call this
    /// about once a second.
    pub fn maintain(&mut self, now: SystemTime) {
        let Some(cutoff) = now.checked_sub(self.cfg.tombstone_ttl) else {
            return;
        };
        while let Some((ended, _)) = self.tombstones.first() {
            if *ended >= cutoff {
                break;
            }
            if let Some((_, uid)) = self.tombstones.pop_first() {
                self.remove_pod(&uid);
            }
        }
        self.claims.retain(|_, list| {
            list.retain(|c| c.until.is_none_or(|u| u >= cutoff));
            !list.is_empty()
        });
        self.owners
            .retain(|_, e| e.ended.is_none_or(|t| t >= cutoff));
        self.label_sets.retain(|s| Arc::strong_count(s) > 1);
        self.interner.retain(|s| Arc::strong_count(s) > 1);
        // After a mass deletion: give the tables' and the heap's memory back.
        let shrunk = shrink(&mut self.pods) | shrink(&mut self.claims) | shrink(&mut self.owners);
        if shrunk {
            super::release_free_memory();
        }
    }

    pub fn stats(&self) -> IndexStats {
        let mut s = self.stats.clone();
        s.pod_tombstones = self.tombstones.len();
        s.pods_live = self.pods.len() - s.pod_tombstones;
        s.services = self.services.len();
        s.nodes = self.nodes.len();
        s.owners = self.owners.len();
        s.ips = self.claims.len();
        s.claims = self.claims.values().map(Vec::len).sum();
        let pods: usize = self
            .pods
            .values()
            .map(|r| {
                let m = &r.meta;
                let labels: usize = m.labels.iter().map(|(k, v)| k.len() + v.len() + 64).sum();
                200 + 2 * m.uid.len()
                    + m.namespace.len()
                    + m.name.len()
                    + m.node.len()
                    + m.owner.as_ref().map_or(0, |_| 32)
                    + labels
                    + r.ips.len() * 17
            })
            .sum();
        let services: usize = self.services.values().map(|r| r.approx).sum();
        let nodes: usize = self
            .nodes
            .values()
            .map(|n| 96 + n.name.len() + n.ips.len() * 17)
            .sum();
        let owners: usize = self
            .owners
            .keys()
            .map(|(k, n, m)| 120 + k.len() + n.len() + m.len())
            .sum();
        s.approx_bytes = pods + services + nodes + owners + s.ips * 48 + s.claims * 72;
        s
    }
}

fn keep_if_equal(common: &mut String, other: &str) {
    if common != other {
        common.clear();
    }
}

fn close_claims(
    claims: &mut HashMap<IpAddr, Vec<Claim>>,
    ip: IpAddr,
    uid: &Arc<str>,
    now: SystemTime,
) {
    if let Some(list) = claims.get_mut(&ip) {
        for c in list
            .iter_mut()
            .filter(|c| c.uid == *uid && c.until.is_none())
        {
            c.until = Some(now.max(c.from));
        }
    }
}
