//! Kubernetes objects → the trimmed records the index keeps. Everything else (managedFields,
//! annotations, most of spec and status) is dropped right after decoding.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use ipnet::IpNet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::records::{
    ContainerPort, NodeInfo, OwnerInfo, OwnerRef, PodInfo, PodPhase, ServiceInfo, ServicePort,
    TargetPort,
};

/// The pod's record; `None` without a UID.
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|p| p.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    let sandbox_ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodReadyToStartContainers" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .map(to_system_time);
    let start_time = status
        .and_then(|s| s.start_time.as_ref())
        .map(to_system_time);
    Some(PodInfo {
        uid,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips,
        labels: meta.labels.clone().unwrap_or_default(),
        owner: controller(meta.owner_references.as_deref()),
        phase: status
            .and_then(|s| s.phase.as_deref())
            .map_or(PodPhase::Unknown, PodPhase::parse),
        ip_since: sandbox_ready.or(start_time),
        ip_since_precise: sandbox_ready.is_some(),
        ports: spec
            .map(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|p| {
                        Some(ContainerPort {
                            name: p.name.clone().filter(|n| !n.is_empty())?,
                            port: u16::try_from(p.container_port).ok()?,
                            protocol: protocol_number(p.protocol.as_deref()),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// A Kubernetes protocol name as an IP protocol number (TCP when unset).
pub fn protocol_number(name: Option<&str>) -> u8 {
    match name {
        Some("UDP") => 17,
        Some("SCTP") => 132,
        _ => 6,
    }
}

/// The Service's ClusterIPs (headless `None` skipped); `None` without a UID.
pub fn service_info(svc: &Service) -> Option<ServiceInfo> {
    let meta = &svc.metadata;
    let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
    let spec = svc.spec.as_ref();
    let mut ips: Vec<IpAddr> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|ip| ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = spec
            .and_then(|s| s.cluster_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    let port = u16::try_from(p.port).ok()?;
                    Some(ServicePort {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: protocol_number(p.protocol.as_deref()),
                        port,
                        target: match &p.target_port {
                            Some(IntOrString::Int(n)) => {
                                TargetPort::Number(u16::try_from(*n).ok()?)
                            }
                            Some(IntOrString::String(n)) => match n.parse::<u16>() {
                                Ok(n) => TargetPort::Number(n),
                                Err(_) => TargetPort::Name(n.clone()),
                            },
                            // Unset: the same as the port.
                            None => TargetPort::Number(port),
                        },
                        node_port: p
                            .node_port
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|n| *n != 0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut external_ips: Vec<IpAddr> = spec
        .and_then(|s| s.external_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|ip| ip.parse().ok()).collect())
        .unwrap_or_default();
    external_ips.extend(
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_ref()?.parse::<IpAddr>().ok()),
    );
    Some(ServiceInfo {
        uid,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        ips,
        created: meta.creation_timestamp.as_ref().map(to_system_time),
        selector: spec.and_then(|s| s.selector.clone()).unwrap_or_default(),
        ports,
        external_ips,
    })
}

/// The Node's addresses (InternalIP, ExternalIP) and pod CIDRs; `None` without a UID.
pub fn node_info(node: &Node) -> Option<NodeInfo> {
    let meta = &node.metadata;
    let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
    let ips = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if cidrs.is_empty()
        && let Some(c) = spec.and_then(|s| s.pod_cidr.clone())
    {
        cidrs.push(c);
    }
    Some(NodeInfo {
        uid,
        name: meta.name.clone().unwrap_or_default(),
        ips,
        pod_cidrs: cidrs
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok())
            .collect(),
        created: meta.creation_timestamp.as_ref().map(to_system_time),
    })
}

/// A ReplicaSet's or Job's record from its metadata alone.
pub fn owner_info(kind: &str, meta: &ObjectMeta) -> Option<OwnerInfo> {
    Some(OwnerInfo {
        uid: meta.uid.clone().unwrap_or_default(),
        kind: kind.to_owned(),
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        owner: controller(meta.owner_references.as_deref()),
    })
}

/// The controller reference, else the first owner.
fn controller(refs: Option<&[OwnerReference]>) -> Option<OwnerRef> {
    let refs = refs?;
    let r = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    Some(OwnerRef {
        kind: r.kind.clone(),
        name: r.name.clone(),
    })
}

pub(crate) fn to_system_time(t: &Time) -> SystemTime {
    let ts = t.0;
    let secs = ts.as_second();
    let nanos = u32::try_from(ts.subsec_nanosecond()).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH
    }
}
