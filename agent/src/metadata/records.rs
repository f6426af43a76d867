//! What the metadata sources produce: trimmed pods, Services, Nodes and owners (ReplicaSets,
//! Jobs), and the watch a pod came from. The index ([`super::MetadataIndex`]) applies them.
use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use crate::net::IpNet;

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
