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
    /// The containers' named ports (what a Service's named `targetPort` refers to).
    pub ports: Vec<ContainerPort>,
}

/// A named port of a pod's container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
}

/// A Service with its ClusterIPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// ClusterIPs.
    pub ips: Vec<IpAddr>,
    pub created: Option<SystemTime>,
    /// `spec.selector`; empty: the Service selects no pods itself (its EndpointSlices are
    /// managed by someone else).
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs` and the LoadBalancer's ingress IPs: other addresses clients reach the
    /// Service at.
    pub external_ips: Vec<IpAddr>,
}

/// A port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Empty when the Service does not name it.
    pub name: String,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    pub port: u16,
    /// Where the Service sends it on the selected pods.
    pub target: TargetPort,
    /// The port on every node's addresses (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
}

/// A Service port's `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(String),
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
