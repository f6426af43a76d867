//! Which Service a flow went through: the one whose address a translated flow's client used,
//! or, without translation, the ones that select the pod on the flow's port.
use std::net::IpAddr;
use std::time::SystemTime;

use super::{Holder, MetadataIndex, PodMeta, SvcMeta};
use crate::{
    metadata::{
        ServiceRef,
        records::{ContainerPort, ServicePort, TargetPort},
    },
    net::canonical,
};

impl MetadataIndex {
    /// The Service a translated flow's client addressed at `ip:port` (`protocol`, an IP protocol
    /// number) at wall-clock time `at`: a ClusterIP or an external/LoadBalancer IP with that
    /// port, else the Service with that node port (kube-proxy DNATs a node port on every node
    /// address). `None` when no known Service matches.
    pub fn service_at(
        &self,
        ip: IpAddr,
        port: u16,
        protocol: u8,
        at: SystemTime,
    ) -> Option<ServiceRef> {
        let by_address = self
            .claims
            .get(&canonical(ip))
            .into_iter()
            .flatten()
            .filter(|c| c.covers(at))
            .find_map(|c| match &c.holder {
                Holder::Service(svc) | Holder::ServiceExternal(svc) => svc
                    .ports
                    .iter()
                    .find(|p| p.port == port && p.protocol == protocol)
                    .map(|p| service_ref(svc, p, p.port)),
                _ => None,
            });
        by_address.or_else(|| {
            let svc = self.node_ports.get(&(port, protocol))?;
            let p = svc
                .ports
                .iter()
                .find(|p| p.node_port == Some(port) && p.protocol == protocol)?;
            Some(service_ref(svc, p, port))
        })
    }

    /// The Services (sorted by namespace and name) that select the pod `uid` and send a port of
    /// theirs to `port` (`protocol`) on it: how a flow to the pod's address could have been
    /// meant for a Service when nothing was translated on the wire (socket load balancing).
    /// Selectors are matched against the labels the index keeps (see
    /// [`super::IndexLimits::max_label_bytes_per_pod`]).
    pub fn services_backed_by(&self, uid: &str, port: u16, protocol: u8) -> Vec<ServiceRef> {
        let Some(pod) = self.pods.get(uid).map(|r| &r.meta) else {
            return Vec::new();
        };
        let Some(services) = self.services_by_ns.get(&*pod.namespace) else {
            return Vec::new();
        };
        let mut out: Vec<ServiceRef> = services
            .values()
            .filter(|svc| selects(svc, pod))
            .flat_map(|svc| {
                svc.ports
                    .iter()
                    .filter(|p| p.protocol == protocol && target(p, &pod.ports) == Some(port))
                    .map(|p| service_ref(svc, p, p.port))
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name, a.port).cmp(&(&b.namespace, &b.name, b.port)));
        out
    }
}

fn service_ref(svc: &SvcMeta, p: &ServicePort, port: u16) -> ServiceRef {
    ServiceRef {
        namespace: svc.namespace.clone(),
        name: svc.name.clone(),
        port_name: p.name.clone(),
        port,
    }
}

/// A Service with a selector selects a pod whose labels include all of it.
fn selects(svc: &SvcMeta, pod: &PodMeta) -> bool {
    !svc.selector.is_empty()
        && svc
            .selector
            .iter()
            .all(|(k, v)| pod.label(k) == Some(v.as_str()))
}

/// The port a Service port goes to on a pod: its number, or the pod's container port of that name
/// and protocol.
fn target(p: &ServicePort, container_ports: &[ContainerPort]) -> Option<u16> {
    match &p.target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => container_ports
            .iter()
            .find(|c| &c.name == name && c.protocol == p.protocol)
            .map(|c| c.port),
    }
}
