//! Applying pods: adds, updates, deletes, re-lists with their gaps, tombstones, admission.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Claim, Holder, MetadataIndex, PodMeta, PodRecord, close_claims};
use crate::{
    metadata::records::{Partition, PodInfo},
    net::canonical,
};

impl MetadataIndex {
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
        let meta = Arc::new(self.pod_meta(&uid, &info));
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
    /// so its claim answers `ambiguous` from `gap_since` on. `None`: no gap (first list). The
    /// pods of `keep` (UIDs) are left as they are: the list had them but could not read them.
    pub fn relist_pods(
        &mut self,
        partition: Partition,
        infos: Vec<PodInfo>,
        keep: &HashSet<String>,
        now: SystemTime,
        gap_since: Option<SystemTime>,
    ) {
        let mut relist = self.begin_relist_pods(partition);
        self.relist_pods_part(&mut relist, infos, now);
        self.finish_relist_pods(relist, keep, now, gap_since);
    }

    /// Starts a re-list of `partition`'s pods that arrives in parts ([`Self::relist_pods_part`],
    /// then [`Self::finish_relist_pods`]): a source can apply a long list while reading it,
    /// without holding all of it (and without holding the index's lock all along). Until the
    /// finish, no pod is ended for being missing.
    pub fn begin_relist_pods(&self, partition: Partition) -> PodRelist {
        PodRelist {
            partition,
            before: self
                .pods
                .iter()
                .filter(|(_, rec)| rec.partition == partition)
                .map(|(uid, rec)| (Arc::clone(uid), rec.ended.is_none()))
                .collect(),
            seen: HashSet::new(),
            new: Vec::new(),
        }
    }

    /// Applies one part of a re-list.
    pub fn relist_pods_part(
        &mut self,
        relist: &mut PodRelist,
        infos: Vec<PodInfo>,
        now: SystemTime,
    ) {
        for info in infos {
            let uid: Arc<str> = match self.pods.get_key_value(info.uid.as_str()) {
                Some((uid, _)) => Arc::clone(uid),
                None => Arc::from(info.uid.as_str()),
            };
            if !relist.before.contains_key(&uid) {
                relist.new.push(Arc::clone(&uid));
            }
            relist.seen.insert(uid);
            self.apply_pod(relist.partition, info, now);
        }
    }

    /// Ends the pods the re-list did not name (unless in `keep`) and marks what fell into the
    /// source's gap (see [`Self::relist_pods`]).
    pub fn finish_relist_pods(
        &mut self,
        relist: PodRelist,
        keep: &HashSet<String>,
        now: SystemTime,
        gap_since: Option<SystemTime>,
    ) {
        let PodRelist {
            partition,
            before,
            seen,
            new,
        } = relist;
        let missing: Vec<Arc<str>> = before
            .iter()
            .filter(|(uid, live)| **live && !seen.contains(*uid) && !keep.contains(&***uid))
            .map(|(uid, _)| Arc::clone(uid))
            .collect();
        drop(seen);
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
            let ended_now = self.pods.get(&uid).is_some_and(|r| r.ended.is_some());
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
                        c.uncertain = Some(Box::new((start, e)));
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
        // Bounded in count as well as in time: a mass deletion does not keep every pod.
        while self.tombstones.len() > self.cfg.limits.max_tombstones {
            let Some((_, oldest)) = self.tombstones.pop_first() else {
                break;
            };
            self.remove_pod(&oldest);
            self.stats.tombstones_evicted += 1;
        }
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

    pub(super) fn remove_pod(&mut self, uid: &Arc<str>) {
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

    fn pod_meta(&mut self, uid: &Arc<str>, info: &PodInfo) -> PodMeta {
        let mut labels = Vec::with_capacity(info.labels.len());
        let mut budget = self.cfg.limits.max_label_bytes_per_pod;
        let mut truncated = false;
        // BTreeMap order: sorted by key, as `PodMeta::label` needs.
        for (k, v) in &info.labels {
            let size = k.len() + v.len();
            if size > budget {
                truncated = true;
                continue;
            }
            budget -= size;
            labels.push((self.intern(k), self.intern(v)));
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
                .map(|d| self.intern(d)),
            _ => None,
        };
        PodMeta {
            uid: Arc::clone(uid),
            namespace: self.intern(&info.namespace),
            name: info.name.as_str().into(),
            node: self.intern(&info.node),
            labels: self.intern_labels(labels),
            owner: info
                .owner
                .as_ref()
                .map(|o| (self.intern(&o.kind), self.intern(&o.name))),
            deployment_by_hash,
            ports: info.ports.clone().into_boxed_slice(),
        }
    }
}

impl PodRelist {
    /// Pods the list named so far.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A re-list of one partition's pods in progress (see [`MetadataIndex::begin_relist_pods`]).
#[derive(Debug)]
pub struct PodRelist {
    partition: Partition,
    /// The partition's pods before, and whether they were live.
    before: HashMap<Arc<str>, bool>,
    seen: HashSet<Arc<str>>,
    /// Pods first seen in this list.
    new: Vec<Arc<str>>,
}
