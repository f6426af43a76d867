//! Enrichment: name each record's endpoints with the metadata index, as it was when the packets
//! were seen, and derive `inter_node` from where the endpoints live.
use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    metadata::{Endpoint, EndpointKind, MetadataIndex},
    net::ip_from_bytes,
    proto,
};

/// Fills `src`, `dst`, `metadata_age` and `inter_node` of every record. `node` is this node.
pub fn enrich(records: &mut [proto::Flow], index: &MetadataIndex, node: &str) {
    let age = index.age().map(|a| prost_types::Duration {
        seconds: i64::try_from(a.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(a.subsec_nanos()).unwrap_or(0),
    });
    for r in records {
        // The owner at the time of the record's last packet (IPs are reused: see metadata).
        let at = r
            .end_time
            .as_ref()
            .and_then(|t| {
                let secs = u64::try_from(t.seconds).ok()?;
                let nanos = u32::try_from(t.nanos).ok()?;
                UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            })
            .unwrap_or_else(SystemTime::now);
        let lookup = |ip: &[u8]| -> Option<Endpoint> {
            let ip: IpAddr = ip_from_bytes(ip)?;
            Some(index.lookup(ip, at))
        };
        let src = lookup(&r.src_ip);
        let dst = lookup(&r.dst_ip);
        r.inter_node = match (src.as_ref().and_then(home), dst.as_ref().and_then(home)) {
            (Some(a), Some(b)) => a != b && (a == node || b == node),
            _ => false,
        };
        r.src = src.as_ref().map(to_proto);
        r.dst = dst.as_ref().map(to_proto);
        r.metadata_age = age;
    }
}

/// The node an endpoint lives on, for the endpoint kinds that live on one.
fn home(e: &Endpoint) -> Option<&str> {
    match e.kind {
        EndpointKind::Pod | EndpointKind::HostNetworkPod | EndpointKind::Node
            if !e.node.is_empty() && !e.ambiguous =>
        {
            Some(&e.node)
        }
        _ => None,
    }
}

pub fn to_proto(e: &Endpoint) -> proto::Endpoint {
    proto::Endpoint {
        kind: e.kind.as_str().to_string(),
        namespace: e.namespace.clone(),
        pod: e.pod.clone(),
        uid: e.uid.clone(),
        workload_kind: e.workload_kind.clone(),
        workload: e.workload.clone(),
        labels: e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        node: e.node.clone(),
        service: e
            .service
            .as_ref()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .unwrap_or_default(),
        ambiguous: e.ambiguous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(kind: EndpointKind, node: &str) -> Endpoint {
        Endpoint {
            kind,
            node: node.into(),
            ..Default::default()
        }
    }

    #[test]
    fn home_only_for_kinds_on_a_node() {
        assert_eq!(home(&ep(EndpointKind::Pod, "n1")), Some("n1"));
        assert_eq!(home(&ep(EndpointKind::Node, "n2")), Some("n2"));
        assert_eq!(home(&ep(EndpointKind::Service, "n1")), None);
        assert_eq!(home(&ep(EndpointKind::External, "")), None);
        let mut amb = ep(EndpointKind::Pod, "n1");
        amb.ambiguous = true;
        assert_eq!(home(&amb), None);
    }

    #[test]
    fn service_is_namespace_slash_name() {
        let e = Endpoint {
            kind: EndpointKind::Service,
            service: Some(("shop".into(), "cart".into())),
            ..Default::default()
        };
        let p = to_proto(&e);
        assert_eq!(
            (p.kind.as_str(), p.service.as_str()),
            ("service", "shop/cart")
        );
    }
}
