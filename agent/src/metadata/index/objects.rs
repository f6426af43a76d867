//! Applying Services, Nodes and owners (ReplicaSets, Jobs).
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Holder, MetadataIndex, NodeRecord, OwnerEntry, SvcMeta, SvcRecord, close_claims};

/// Ports kept per Service (a Service has a handful; the API allows many).
const MAX_PORTS_PER_SERVICE: usize = 32;
use crate::{
    metadata::records::{NodeInfo, OwnerInfo, ServiceInfo},
    net::canonical,
};

impl MetadataIndex {
    // ---------------------------------------------------------------- services

    pub fn apply_service(&mut self, info: ServiceInfo, now: SystemTime) {
        let uid: Arc<str> = Arc::from(info.uid.as_str());
        if !self.services.contains_key(&uid) && self.services.len() >= self.cfg.limits.max_services
        {
            self.stats.services_rejected += 1;
            return;
        }
        let limit = self.cfg.limits.max_ips_per_object;
        let canonical_ips = |ips: &[IpAddr]| {
            let mut v: Vec<IpAddr> = ips.iter().copied().map(canonical).collect();
            v.sort();
            v.dedup();
            v.truncate(limit);
            v
        };
        let (ips, external_ips) = (canonical_ips(&info.ips), canonical_ips(&info.external_ips));
        if let Some(old) = self.forget_service(&uid) {
            for ip in old.ips.iter().filter(|ip| !ips.contains(ip)) {
                close_claims(&mut self.claims, *ip, &uid, now);
            }
            for ip in old
                .external_ips
                .iter()
                .filter(|ip| !external_ips.contains(ip))
            {
                close_claims(&mut self.claims, *ip, &uid, now);
            }
        }
        let mut ports = info.ports;
        ports.truncate(MAX_PORTS_PER_SERVICE);
        let meta = Arc::new(SvcMeta {
            namespace: info.namespace,
            name: info.name,
            selector: info.selector,
            ports,
        });
        let from = info.created.unwrap_or(now).min(now);
        let precise = info.created.is_some();
        for ip in &ips {
            self.add_claim(
                *ip,
                &uid,
                from,
                precise,
                now,
                Holder::Service(Arc::clone(&meta)),
            );
        }
        for ip in &external_ips {
            let holder = Holder::ServiceExternal(Arc::clone(&meta));
            self.add_claim(*ip, &uid, from, precise, now, holder);
        }
        for p in &meta.ports {
            if let Some(n) = p.node_port {
                self.node_ports.insert((n, p.protocol), Arc::clone(&meta));
            }
        }
        self.services_by_ns
            .entry(meta.namespace.clone())
            .or_default()
            .insert(Arc::clone(&uid), Arc::clone(&meta));
        let approx = 160
            + meta.namespace.len()
            + meta.name.len()
            + uid.len()
            + (meta.selector.iter())
                .map(|(k, v)| k.len() + v.len() + 64)
                .sum::<usize>()
            + (meta.ports.iter())
                .map(|p| p.name.len() + 48)
                .sum::<usize>()
            + 17 * (ips.len() + external_ips.len());
        self.services.insert(
            uid,
            SvcRecord {
                ips,
                external_ips,
                meta,
                approx,
            },
        );
    }

    /// Removes a Service's record and what is derived from it (claims stay, to be closed by the
    /// caller); returns the record.
    fn forget_service(&mut self, uid: &Arc<str>) -> Option<SvcRecord> {
        let old = self.services.remove(uid)?;
        if let Some(by_uid) = self.services_by_ns.get_mut(&old.meta.namespace) {
            by_uid.remove(uid);
            if by_uid.is_empty() {
                self.services_by_ns.remove(&old.meta.namespace);
            }
        }
        for p in &old.meta.ports {
            if let Some(n) = p.node_port
                && self
                    .node_ports
                    .get(&(n, p.protocol))
                    .is_some_and(|m| Arc::ptr_eq(m, &old.meta))
            {
                self.node_ports.remove(&(n, p.protocol));
            }
        }
        Some(old)
    }

    pub fn delete_service(&mut self, uid: &str, now: SystemTime) {
        let uid: Arc<str> = Arc::from(uid);
        if let Some(rec) = self.forget_service(&uid) {
            for ip in rec.ips.iter().chain(&rec.external_ips) {
                close_claims(&mut self.claims, *ip, &uid, now);
            }
        }
    }

    /// A complete list of the Services; those of `keep` (UIDs) are left as they are.
    pub fn relist_services(
        &mut self,
        infos: Vec<ServiceInfo>,
        keep: &HashSet<String>,
        now: SystemTime,
    ) {
        let seen: HashSet<String> = infos.iter().map(|s| s.uid.clone()).collect();
        let missing: Vec<Arc<str>> = self
            .services
            .keys()
            .filter(|u| !seen.contains(&***u) && !keep.contains(&***u))
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

    /// A complete list of the nodes; those of `keep` (UIDs) are left as they are.
    pub fn relist_nodes(&mut self, infos: Vec<NodeInfo>, keep: &HashSet<String>, now: SystemTime) {
        let seen: HashSet<String> = infos.iter().map(|n| n.uid.clone()).collect();
        let missing: Vec<Arc<str>> = self
            .nodes
            .keys()
            .filter(|u| !seen.contains(&***u) && !keep.contains(&***u))
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

    /// A complete list of the owners of `kind`; those of `keep` (namespace, name) are left as
    /// they are.
    pub fn relist_owners(
        &mut self,
        kind: &str,
        infos: Vec<OwnerInfo>,
        keep: &HashSet<(String, String)>,
        now: SystemTime,
    ) {
        let mut seen: HashSet<(String, String)> = infos
            .iter()
            .map(|o| (o.namespace.clone(), o.name.clone()))
            .collect();
        seen.extend(keep.iter().cloned());
        for ((k, ns, name), entry) in &mut self.owners {
            if k == kind && !seen.contains(&(ns.clone(), name.clone())) {
                entry.ended.get_or_insert(now);
            }
        }
        for info in infos {
            self.apply_owner(info);
        }
    }
}
