//! The IP → owner index: per-IP claim histories with validity intervals (see the module docs of
//! [`crate::metadata`] for the rules).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::net::{IpNet, canonical};

use super::{Endpoint, EndpointKind};

/// Kubernetes timestamps have one-second granularity: a precise `from` may be up to this much
/// earlier than the real event.
const TIMESTAMP_GRANULARITY: Duration = Duration::from_secs(1);

/// Memory bound of the index. Worst-case bytes ≈ `max_pods` × (~600 B fixed + names +
/// `max_label_bytes_per_pod`) + claims × ~120 B; with the defaults and typical objects (~0.7 KiB
/// per pod with its claims) about 35 MB for 50 000 pods, at most ~150 MB if every pod carries the
/// full label budget. [`IndexStats::approx_bytes`] reports the running estimate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexLimits {
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
            max_pods: 50_000,
            max_services: 20_000,
            max_nodes: 5_000,
            max_owners: 50_000,
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

/// Which watch a pod came from. Deletes and re-lists only affect pods of their own partition,
/// so the node-local watch (`spec.nodeName=<node>`) and the remote one (`spec.nodeName!=<node>`)
/// never undo each other when a pod moves from one selector to the other (scheduling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Partition {
    Local,
    Remote,
    Static,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    #[default]
    Unknown,
}

impl PodPhase {
    pub fn parse(s: &str) -> Self {
        match s {
            "Pending" => PodPhase::Pending,
            "Running" => PodPhase::Running,
            "Succeeded" => PodPhase::Succeeded,
            "Failed" => PodPhase::Failed,
            _ => PodPhase::Unknown,
        }
    }

    /// A completed pod has released its IP for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// A controller reference (`ownerReferences[controller=true]`) or a resolved workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
}

/// The trimmed pod the index keeps (see [`super::pod_info`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub host_network: bool,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub owner: Option<OwnerRef>,
    pub phase: PodPhase,
    /// Since when the pod has had its IPs (see the module docs); `None`: first observation.
    pub ip_since: Option<SystemTime>,
    /// `ip_since` is the sandbox-ready time (not earlier than the IP assignment minus 1 s).
    pub ip_since_precise: bool,
}

/// A Service with its ClusterIPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub created: Option<SystemTime>,
}

/// A Node with its addresses and pod CIDRs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub uid: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    pub created: Option<SystemTime>,
}

/// A ReplicaSet or Job (metadata only) and its controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerInfo {
    pub uid: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub owner: Option<OwnerRef>,
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

#[derive(Debug)]
struct PodMeta {
    uid: String,
    namespace: String,
    name: String,
    node: String,
    labels: BTreeMap<String, String>,
    owner: Option<OwnerRef>,
    /// Deployment name from the `pod-template-hash` convention, if it applies.
    deployment_by_hash: Option<String>,
}

#[derive(Debug)]
struct SvcMeta {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug)]
enum Holder {
    Pod(Arc<PodMeta>),
    HostNetPod(Arc<PodMeta>),
    Service(Arc<SvcMeta>),
    Node(Arc<str>),
}

impl Holder {
    /// Claims of the same category exclude each other in time (one pod IP, one ClusterIP).
    fn exclusive_category(&self) -> Option<u8> {
        match self {
            Holder::Pod(_) => Some(0),
            Holder::Service(_) => Some(1),
            Holder::HostNetPod(_) | Holder::Node(_) => None,
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
    uncertain: Option<(SystemTime, SystemTime)>,
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

#[derive(Debug)]
struct ObjRecord {
    ips: Vec<IpAddr>,
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
    services: HashMap<Arc<str>, ObjRecord>,
    nodes: HashMap<Arc<str>, NodeRecord>,
    owners: HashMap<OwnerKey, OwnerEntry>,
    claims: HashMap<IpAddr, Vec<Claim>>,
    /// Derived from `cfg.cluster_cidrs` and the nodes' pod CIDRs; rebuilt on node changes.
    ranges: Vec<IpNet>,
    confirmed: Option<Instant>,
    stats: IndexStats,
}

impl MetadataIndex {
    pub fn new(cfg: IndexConfig) -> Self {
        let ranges = cfg.cluster_cidrs.clone();
        Self {
            cfg,
            pods: HashMap::new(),
            tombstones: BTreeSet::new(),
            services: HashMap::new(),
            nodes: HashMap::new(),
            owners: HashMap::new(),
            claims: HashMap::new(),
            ranges,
            confirmed: None,
            stats: IndexStats::default(),
        }
    }

    pub fn config(&self) -> &IndexConfig {
        &self.cfg
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
        let uncertain = candidates
            .iter()
            .any(|c| c.uncertain.is_some_and(|(a, b)| a <= at && at < b));
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
                    namespace: meta.namespace.clone(),
                    pod: meta.name.clone(),
                    uid: meta.uid.clone(),
                    workload_kind,
                    workload,
                    labels: meta.labels.clone(),
                    node: meta.node.clone(),
                    service: None,
                    ambiguous: false,
                }
            }
            Holder::Service(svc) => Endpoint {
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
        let Some(owner) = &meta.owner else {
            return ("Pod".to_owned(), meta.name.clone());
        };
        let key = (
            owner.kind.clone(),
            meta.namespace.clone(),
            owner.name.clone(),
        );
        let parent = self.owners.get(&key).map(|e| e.owner.as_ref());
        match (owner.kind.as_str(), parent) {
            ("ReplicaSet" | "Job", Some(Some(parent))) => {
                (parent.kind.clone(), parent.name.clone())
            }
            ("ReplicaSet", None) => match &meta.deployment_by_hash {
                Some(deployment) => ("Deployment".to_owned(), deployment.clone()),
                None => (owner.kind.clone(), owner.name.clone()),
            },
            _ => (owner.kind.clone(), owner.name.clone()),
        }
    }

    // ---------------------------------------------------------------- pods

    /// A pod was added or modified (or listed) at `now`.
    pub fn apply_pod(&mut self, partition: Partition, info: PodInfo, now: SystemTime) {
        let uid: Arc<str> = Arc::from(info.uid.as_str());
        if let Some(rec) = self.pods.get(&uid)
            && let Some(ended) = rec.ended
        {
            if rec.final_end || info.phase.is_terminal() {
                // Deleted or completed before: final, whatever a stale list says now.
                self.stats.stale_ignored += 1;
                return;
            }
            // Only missing from a (stale) re-list: alive after all. Rebuild its claims.
            self.tombstones.remove(&(ended, Arc::clone(&uid)));
            if let Some(rec) = self.pods.get_mut(&uid) {
                rec.ended = None;
                for ip in std::mem::take(&mut rec.ips) {
                    if let Some(list) = self.claims.get_mut(&ip) {
                        list.retain(|c| c.uid != uid);
                    }
                }
            }
        }
        let exists = self.pods.contains_key(&uid);
        if !exists && !self.admit_pod(partition) {
            self.stats.pods_rejected += 1;
            return;
        }
        let meta = Arc::new(self.pod_meta(&info));
        let mut ips = info.ips.iter().copied().map(canonical).collect::<Vec<_>>();
        ips.dedup();
        ips.truncate(self.cfg.limits.max_ips_per_object);
        let old_ips = match self.pods.get_mut(&uid) {
            Some(rec) => {
                rec.meta = Arc::clone(&meta);
                rec.partition = partition;
                rec.host_network = info.host_network;
                std::mem::take(&mut rec.ips)
            }
            None => {
                if info.phase.is_terminal() && info.ip_since.is_none() {
                    return; // completed before we ever saw it, no idea since when: nothing to add
                }
                self.pods.insert(
                    Arc::clone(&uid),
                    PodRecord {
                        meta: Arc::clone(&meta),
                        host_network: info.host_network,
                        partition,
                        ips: Vec::new(),
                        ended: None,
                        final_end: false,
                    },
                );
                Vec::new()
            }
        };
        let holder = if info.host_network {
            Holder::HostNetPod(meta)
        } else {
            Holder::Pod(meta)
        };
        for ip in old_ips.iter().filter(|ip| !ips.contains(ip)) {
            close_claims(&mut self.claims, *ip, &uid, now);
        }
        let from = info.ip_since.unwrap_or(now).min(now);
        for ip in &ips {
            self.add_claim(*ip, &uid, from, info.ip_since_precise, now, holder.clone());
        }
        if let Some(rec) = self.pods.get_mut(&uid) {
            rec.ips = ips;
        }
        if info.phase.is_terminal() {
            self.end_pod(&uid, now, true);
        }
    }

    /// A pod was deleted (observed at `now`). Ignored when the pod belongs to another partition
    /// (it left this watch's selector, e.g. it was scheduled onto this node).
    pub fn delete_pod(&mut self, partition: Partition, uid: &str, now: SystemTime) {
        self.remove_or_end(partition, uid, now, true);
    }

    fn remove_or_end(&mut self, partition: Partition, uid: &str, now: SystemTime, final_end: bool) {
        let Some((key, rec)) = self.pods.get_key_value(uid) else {
            return;
        };
        if rec.partition != partition {
            return;
        }
        let key = Arc::clone(key);
        let (ended, no_ips) = (rec.ended.is_some(), rec.ips.is_empty());
        if ended {
            if final_end && let Some(rec) = self.pods.get_mut(&key) {
                rec.final_end = true;
            }
        } else if no_ips {
            // Never owned an IP: nothing to remember, and no finality needed.
            self.pods.remove(&key);
        } else {
            self.end_pod(&key, now, final_end);
        }
    }

    /// A complete list of `partition`'s pods at `now` (InitDone / file re-read): applies every
    /// pod and ends the ones that are missing. `gap_since`: the previous state was last known
    /// complete at that time (the watch failed then / the previous file was read then); a
    /// missing pod ended somewhere in between, and another pod may have held its IP meanwhile,
    /// so its claim answers `ambiguous` from `gap_since` on. `None`: no gap (first list).
    pub fn relist_pods(
        &mut self,
        partition: Partition,
        infos: Vec<PodInfo>,
        now: SystemTime,
        gap_since: Option<SystemTime>,
    ) {
        let seen: HashSet<String> = infos.iter().map(|p| p.uid.clone()).collect();
        let before: HashMap<Arc<str>, bool> = self
            .pods
            .iter()
            .filter(|(_, rec)| rec.partition == partition)
            .map(|(uid, rec)| (Arc::clone(uid), rec.ended.is_none()))
            .collect();
        let new: Vec<String> = infos
            .iter()
            .filter(|p| !before.contains_key(p.uid.as_str()))
            .map(|p| p.uid.clone())
            .collect();
        for info in infos {
            self.apply_pod(partition, info, now);
        }
        let missing: Vec<Arc<str>> = before
            .iter()
            .filter(|(uid, live)| **live && !seen.contains(&***uid))
            .map(|(uid, _)| Arc::clone(uid))
            .collect();
        for uid in &missing {
            self.remove_or_end(partition, uid, now, false);
        }
        let Some(gap) = gap_since else { return };
        // Ends that happened in the gap: the tail of the claim is uncertain.
        for (uid, was_live) in &before {
            let ended_now = self.pods.get(uid).is_some_and(|r| r.ended.is_some());
            if *was_live && ended_now {
                self.mark_uncertain(uid, gap, |c| c.until.filter(|u| *u > gap));
            }
        }
        // Pods first seen now: an imprecise start lies anywhere up to now; a pod listed as
        // completed ended anywhere in the gap.
        for uid in new {
            let ended_now = self
                .pods
                .get(uid.as_str())
                .is_some_and(|r| r.ended.is_some());
            self.mark_uncertain(&uid, gap, |c| match (c.precise, ended_now) {
                (_, true) => c.until.filter(|u| *u > gap),
                (false, false) => Some(now),
                (true, false) => None,
            });
        }
    }

    fn mark_uncertain(
        &mut self,
        uid: &str,
        gap: SystemTime,
        end: impl Fn(&Claim) -> Option<SystemTime>,
    ) {
        let Some(rec) = self.pods.get(uid) else {
            return;
        };
        for ip in &rec.ips {
            if let Some(list) = self.claims.get_mut(ip) {
                for c in list.iter_mut().filter(|c| &*c.uid == uid) {
                    let start = gap.max(c.from);
                    if let Some(e) = end(c).filter(|e| *e > start) {
                        c.uncertain = Some((start, e));
                    }
                }
            }
        }
    }

    fn end_pod(&mut self, uid: &Arc<str>, now: SystemTime, final_end: bool) {
        let Some(rec) = self.pods.get_mut(uid) else {
            return;
        };
        rec.final_end |= final_end;
        if rec.ended.is_some() {
            return;
        }
        rec.ended = Some(now);
        for ip in &rec.ips {
            close_claims(&mut self.claims, *ip, uid, now);
        }
        self.tombstones.insert((now, Arc::clone(uid)));
    }

    fn admit_pod(&mut self, partition: Partition) -> bool {
        while self.pods.len() >= self.cfg.limits.max_pods {
            let Some((_, uid)) = self.tombstones.pop_first() else {
                return partition == Partition::Local;
            };
            self.remove_pod(&uid);
            self.stats.tombstones_evicted += 1;
        }
        true
    }

    fn remove_pod(&mut self, uid: &Arc<str>) {
        if let Some(rec) = self.pods.remove(uid) {
            for ip in &rec.ips {
                if let Some(list) = self.claims.get_mut(ip) {
                    list.retain(|c| c.uid != *uid);
                    if list.is_empty() {
                        self.claims.remove(ip);
                    }
                }
            }
        }
    }

    fn pod_meta(&mut self, info: &PodInfo) -> PodMeta {
        let mut labels = BTreeMap::new();
        let mut budget = self.cfg.limits.max_label_bytes_per_pod;
        let mut truncated = false;
        for (k, v) in &info.labels {
            let size = k.len() + v.len();
            if size > budget {
                truncated = true;
                continue;
            }
            budget -= size;
            labels.insert(k.clone(), v.clone());
        }
        if truncated {
            self.stats.labels_truncated += 1;
        }
        let deployment_by_hash = match (&info.owner, info.labels.get("pod-template-hash")) {
            (Some(owner), Some(hash)) if owner.kind == "ReplicaSet" && !hash.is_empty() => owner
                .name
                .strip_suffix(hash.as_str())
                .and_then(|s| s.strip_suffix('-'))
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            _ => None,
        };
        PodMeta {
            uid: info.uid.clone(),
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            node: info.node.clone(),
            labels,
            owner: info.owner.clone(),
            deployment_by_hash,
        }
    }

    /// Adds a claim from `from` (`precise`: the real start is within the timestamp
    /// granularity after it; otherwise somewhere before `now`, when it was first observed).
    fn add_claim(
        &mut self,
        ip: IpAddr,
        uid: &Arc<str>,
        from: SystemTime,
        precise: bool,
        now: SystemTime,
        holder: Holder,
    ) {
        let limit = self.cfg.limits.max_claims_per_ip.max(1);
        let list = self.claims.entry(ip).or_default();
        if let Some(i) = list
            .iter()
            .position(|c| c.uid == *uid && (c.until.is_none() || c.from == from))
        {
            if precise && !list[i].precise && list[i].until.is_none() {
                list.remove(i); // a precise start replaces an estimate; re-inserted below
            } else {
                list[i].holder = holder; // same claim: refresh metadata (labels may change)
                return;
            }
        }
        let start_by = if precise {
            from + TIMESTAMP_GRANULARITY
        } else {
            now.max(from)
        };
        let mut claim = Claim {
            uid: Arc::clone(uid),
            from,
            precise,
            start_by,
            until: None,
            uncertain: None,
            holder,
        };
        if let Some(category) = claim.holder.exclusive_category() {
            for other in list
                .iter_mut()
                .filter(|o| o.holder.exclusive_category() == Some(category))
            {
                // An owner that certainly started first had released the IP before the later
                // one started (by its `start_by` at the latest), whatever order we learnt it in.
                if other.start_by <= claim.from {
                    other.until = Some(
                        other
                            .until
                            .map_or(claim.start_by, |u| u.min(claim.start_by)),
                    );
                }
                if claim.start_by <= other.from {
                    claim.until = Some(
                        claim
                            .until
                            .map_or(other.start_by, |u| u.min(other.start_by)),
                    );
                }
            }
        }
        list.push(claim);
        while list.len() > limit {
            // Evict the claim that ended first (open claims last).
            let victim = list
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| (c.until.is_none(), c.until, c.from))
                .map(|(i, _)| i);
            if let Some(i) = victim {
                list.remove(i);
                self.stats.claims_evicted += 1;
            }
        }
    }

    // ---------------------------------------------------------------- services

    pub fn apply_service(&mut self, info: ServiceInfo, now: SystemTime) {
        let uid: Arc<str> = Arc::from(info.uid.as_str());
        if !self.services.contains_key(&uid) && self.services.len() >= self.cfg.limits.max_services
        {
            self.stats.services_rejected += 1;
            return;
        }
        let mut ips: Vec<IpAddr> = info.ips.iter().copied().map(canonical).collect();
        ips.dedup();
        ips.truncate(self.cfg.limits.max_ips_per_object);
        let old = self
            .services
            .remove(&uid)
            .map(|r| r.ips)
            .unwrap_or_default();
        for ip in old.iter().filter(|ip| !ips.contains(ip)) {
            close_claims(&mut self.claims, *ip, &uid, now);
        }
        let holder = Holder::Service(Arc::new(SvcMeta {
            namespace: info.namespace.clone(),
            name: info.name.clone(),
        }));
        let from = info.created.unwrap_or(now).min(now);
        for ip in &ips {
            self.add_claim(*ip, &uid, from, info.created.is_some(), now, holder.clone());
        }
        let approx = 96 + info.namespace.len() + info.name.len() + uid.len();
        self.services.insert(uid, ObjRecord { ips, approx });
    }

    pub fn delete_service(&mut self, uid: &str, now: SystemTime) {
        if let Some((uid, rec)) = self.services.remove_entry(uid) {
            for ip in &rec.ips {
                close_claims(&mut self.claims, *ip, &uid, now);
            }
        }
    }

    pub fn relist_services(&mut self, infos: Vec<ServiceInfo>, now: SystemTime) {
        let seen: HashSet<String> = infos.iter().map(|s| s.uid.clone()).collect();
        let missing: Vec<Arc<str>> = self
            .services
            .keys()
            .filter(|u| !seen.contains(&***u))
            .cloned()
            .collect();
        for uid in missing {
            self.delete_service(&uid, now);
        }
        for info in infos {
            self.apply_service(info, now);
        }
    }

    // ---------------------------------------------------------------- nodes

    pub fn apply_node(&mut self, info: NodeInfo, now: SystemTime) {
        self.apply_node_inner(info, now);
        self.rebuild_ranges();
    }

    fn apply_node_inner(&mut self, info: NodeInfo, now: SystemTime) {
        let uid: Arc<str> = Arc::from(info.uid.as_str());
        if !self.nodes.contains_key(&uid) && self.nodes.len() >= self.cfg.limits.max_nodes {
            self.stats.nodes_rejected += 1;
            return;
        }
        let mut ips: Vec<IpAddr> = info.ips.iter().copied().map(canonical).collect();
        ips.sort();
        ips.dedup();
        ips.truncate(self.cfg.limits.max_ips_per_object);
        let old = self.nodes.remove(&uid).map(|r| r.ips).unwrap_or_default();
        for ip in old.iter().filter(|ip| !ips.contains(ip)) {
            close_claims(&mut self.claims, *ip, &uid, now);
        }
        let name: Arc<str> = Arc::from(info.name.as_str());
        let from = info.created.unwrap_or(now).min(now);
        for ip in &ips {
            self.add_claim(*ip, &uid, from, false, now, Holder::Node(Arc::clone(&name)));
        }
        let mut pod_cidrs = info.pod_cidrs;
        pod_cidrs.truncate(self.cfg.limits.max_ips_per_object);
        self.nodes.insert(
            uid,
            NodeRecord {
                ips,
                name,
                pod_cidrs,
            },
        );
    }

    pub fn delete_node(&mut self, uid: &str, now: SystemTime) {
        if let Some((uid, rec)) = self.nodes.remove_entry(uid) {
            for ip in &rec.ips {
                close_claims(&mut self.claims, *ip, &uid, now);
            }
        }
        self.rebuild_ranges();
    }

    pub fn relist_nodes(&mut self, infos: Vec<NodeInfo>, now: SystemTime) {
        let seen: HashSet<String> = infos.iter().map(|n| n.uid.clone()).collect();
        let missing: Vec<Arc<str>> = self
            .nodes
            .keys()
            .filter(|u| !seen.contains(&***u))
            .cloned()
            .collect();
        for uid in missing {
            if let Some((uid, rec)) = self.nodes.remove_entry(&uid) {
                for ip in &rec.ips {
                    close_claims(&mut self.claims, *ip, &uid, now);
                }
            }
        }
        for info in infos {
            self.apply_node_inner(info, now);
        }
        self.rebuild_ranges();
    }

    fn rebuild_ranges(&mut self) {
        let mut ranges = self.cfg.cluster_cidrs.clone();
        ranges.extend(
            self.nodes
                .values()
                .flat_map(|n| n.pod_cidrs.iter().copied()),
        );
        ranges.sort();
        ranges.dedup();
        self.ranges = ranges;
    }

    // ---------------------------------------------------------------- owners

    pub fn apply_owner(&mut self, info: OwnerInfo) {
        let key = (info.kind, info.namespace, info.name);
        if !self.owners.contains_key(&key) && self.owners.len() >= self.cfg.limits.max_owners {
            self.stats.owners_rejected += 1;
            return;
        }
        self.owners.insert(
            key,
            OwnerEntry {
                owner: info.owner,
                ended: None,
            },
        );
    }

    /// The owner object was deleted; it is kept for the tombstone window so tombstoned pods
    /// still resolve their workload.
    pub fn delete_owner(&mut self, kind: &str, namespace: &str, name: &str, now: SystemTime) {
        let key = (kind.to_owned(), namespace.to_owned(), name.to_owned());
        if let Some(entry) = self.owners.get_mut(&key) {
            entry.ended.get_or_insert(now);
        }
    }

    /// A complete list of the owners of `kind`.
    pub fn relist_owners(&mut self, kind: &str, infos: Vec<OwnerInfo>, now: SystemTime) {
        let seen: HashSet<(String, String)> = infos
            .iter()
            .map(|o| (o.namespace.clone(), o.name.clone()))
            .collect();
        for ((k, ns, name), entry) in &mut self.owners {
            if k == kind && !seen.contains(&(ns.clone(), name.clone())) {
                entry.ended.get_or_insert(now);
            }
        }
        for info in infos {
            self.apply_owner(info);
        }
    }

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
                    + m.owner
                        .as_ref()
                        .map_or(0, |o| o.kind.len() + o.name.len() + 48)
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

#[cfg(test)]
mod tests {
    use super::*;
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
        idx.relist_pods(Partition::Local, vec![p], t(16), None);
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
        idx.relist_pods(Partition::Remote, vec![], t(20), Some(t(18)));
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
        idx.relist_pods(Partition::Remote, vec![], t(13), None);
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
}
