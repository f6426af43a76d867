//! Enrichment: name each record's endpoints with the metadata index, as it was when the packets
//! were seen, name the Services they were reached through, and derive `inter_node` (and refine
//! `reporter`) from where the endpoints live.
use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    flows::rules,
    metadata::{Endpoint, EndpointKind, MetadataIndex, ServiceRef},
    net::ip_from_bytes,
    proto,
};

/// What enrichment could not do, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnrichStats {
    /// Translated records whose Service address (the client's destination) names no Service the
    /// metadata knows: the backend is named, the Service not.
    pub service_unknown: u64,
}

/// Fills `src`, `dst` (with the Services they were reached through), `metadata_age` and
/// `inter_node` of every record, and sets `reporter` to the side of an end that lives on this
/// node (the source's first). `node` is this node.
pub fn enrich(records: &mut [proto::Flow], index: &MetadataIndex, node: &str) -> EnrichStats {
    let mut stats = EnrichStats::default();
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
        let (src_home, dst_home) = (src.as_ref().and_then(home), dst.as_ref().and_then(home));
        r.inter_node = match (src_home, dst_home) {
            (Some(a), Some(b)) => a != b && (a == node || b == node),
            _ => false,
        };
        // The side this node is on, when an end lives here; otherwise what the observation point
        // said (see flows::reporter).
        if src_home == Some(node) {
            rules::SRC.clone_into(&mut r.reporter);
        } else if dst_home == Some(node) {
            rules::DEST.clone_into(&mut r.reporter);
        }
        r.src = src.map(into_proto);
        r.dst = dst.map(into_proto);
        r.metadata_age = age;
        let protocol = u8::try_from(r.protocol).unwrap_or(0);
        match &r.translation {
            Some(t) if !t.service_ip.is_empty() => {
                let service = ip_from_bytes(&t.service_ip).and_then(|ip| {
                    index.service_at(ip, u16::try_from(t.service_port).ok()?, protocol, at)
                });
                let backend = if t.reply { &mut r.src } else { &mut r.dst };
                match (service, backend) {
                    (Some(s), Some(e)) => e.services.push(service_proto(&s)),
                    // Before the first sync every name is unknown: not a disagreement.
                    _ if index.age().is_some() => stats.service_unknown += 1,
                    _ => {}
                }
            }
            // Nothing translated: the Services that select each pod end on its port.
            _ => {
                for (end, port) in [(&mut r.src, r.src_port), (&mut r.dst, r.dst_port)] {
                    let Some(e) = end else { continue };
                    if matches!(e.kind.as_str(), "pod" | "host_network_pod")
                        && !e.uid.is_empty()
                        && let Ok(port) = u16::try_from(port)
                    {
                        let found = index.services_backed_by(&e.uid, port, protocol);
                        e.services.extend(found.iter().map(service_proto));
                    }
                }
            }
        }
    }
    stats
}

fn service_proto(s: &ServiceRef) -> proto::ServiceRef {
    proto::ServiceRef {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        port_name: s.port_name.clone(),
        port: u32::from(s.port),
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

/// The record's form of an endpoint (its strings and labels moved, not copied).
pub fn into_proto(e: Endpoint) -> proto::Endpoint {
    proto::Endpoint {
        kind: e.kind.as_str().to_string(),
        namespace: e.namespace,
        pod: e.pod,
        uid: e.uid,
        workload_kind: e.workload_kind,
        workload: e.workload,
        labels: e.labels,
        node: e.node,
        service: e
            .service
            .map(|(ns, name)| format!("{ns}/{name}"))
            .unwrap_or_default(),
        ambiguous: e.ambiguous,
        services: Vec::new(),
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
        let p = into_proto(e);
        assert_eq!(
            (p.kind.as_str(), p.service.as_str()),
            ("service", "shop/cart")
        );
    }

    mod services {
        use std::{
            collections::BTreeMap,
            time::{Duration, Instant},
        };

        use super::*;
        use crate::metadata::{
            ContainerPort, IndexConfig, Partition, PodInfo, PodPhase, ServiceInfo, ServicePort,
            TargetPort,
        };

        const BACKEND: [u8; 4] = [10, 44, 0, 3];
        const CLIENT: [u8; 4] = [10, 44, 0, 2];
        const VIP: [u8; 4] = [10, 96, 0, 10];

        fn index() -> MetadataIndex {
            let mut idx = MetadataIndex::new(IndexConfig::default());
            idx.confirm(Instant::now());
            let since = SystemTime::now() - Duration::from_secs(60);
            for (uid, addr, app) in [("b", BACKEND, "web"), ("c", CLIENT, "client")] {
                idx.apply_pod(
                    Partition::Local,
                    PodInfo {
                        uid: uid.into(),
                        namespace: "shop".into(),
                        name: format!("pod-{uid}"),
                        node: "n1".into(),
                        ips: vec![IpAddr::from(addr)],
                        labels: BTreeMap::from([("app".into(), app.into())]),
                        phase: PodPhase::Running,
                        ip_since: Some(since),
                        ip_since_precise: true,
                        ports: vec![ContainerPort {
                            name: "http".into(),
                            port: 8080,
                            protocol: 6,
                        }],
                        ..PodInfo::default()
                    },
                    since,
                );
            }
            idx.apply_service(
                ServiceInfo {
                    uid: "s".into(),
                    namespace: "shop".into(),
                    name: "web".into(),
                    ips: vec![IpAddr::from(VIP)],
                    created: Some(since),
                    selector: BTreeMap::from([("app".into(), "web".into())]),
                    ports: vec![ServicePort {
                        name: "http".into(),
                        protocol: 6,
                        port: 80,
                        target: TargetPort::Name("http".into()),
                        node_port: None,
                    }],
                    external_ips: Vec::new(),
                },
                since,
            );
            idx
        }

        fn record(src: [u8; 4], sport: u32, dst: [u8; 4], dport: u32) -> proto::Flow {
            proto::Flow {
                src_ip: src.to_vec(),
                dst_ip: dst.to_vec(),
                src_port: sport,
                dst_port: dport,
                protocol: 6,
                ..Default::default()
            }
        }

        fn services(e: Option<&proto::Endpoint>) -> Vec<String> {
            e.map(|e| {
                e.services
                    .iter()
                    .map(|s| format!("{}/{}:{}:{}", s.namespace, s.name, s.port_name, s.port))
                    .collect()
            })
            .unwrap_or_default()
        }

        #[test]
        fn translated_flows_name_the_service_the_client_used() {
            let idx = index();
            let translation = |reply: bool, vip: [u8; 4]| proto::Translation {
                service_ip: vip.to_vec(),
                service_port: 80,
                reply,
                ..Default::default()
            };
            let mut request = record(CLIENT, 40000, BACKEND, 8080);
            request.translation = Some(translation(false, VIP));
            let mut reply = record(BACKEND, 8080, CLIENT, 40000);
            reply.translation = Some(translation(true, VIP));
            let mut unknown = record(CLIENT, 40001, BACKEND, 8080);
            unknown.translation = Some(translation(false, [10, 96, 0, 99]));
            let mut recs = [request, reply, unknown];
            let stats = enrich(&mut recs, &idx, "n1");
            assert_eq!(services(recs[0].dst.as_ref()), ["shop/web:http:80"]);
            assert!(services(recs[0].src.as_ref()).is_empty());
            assert_eq!(services(recs[1].src.as_ref()), ["shop/web:http:80"]);
            assert!(services(recs[1].dst.as_ref()).is_empty());
            assert_eq!(recs[1].src.as_ref().map(|e| e.pod.as_str()), Some("pod-b"));
            // The backend is named, the unknown Service is counted, not guessed.
            assert!(services(recs[2].dst.as_ref()).is_empty());
            assert_eq!(recs[2].dst.as_ref().map(|e| e.pod.as_str()), Some("pod-b"));
            assert_eq!(stats.service_unknown, 1);
        }

        #[test]
        fn reporter_is_the_side_of_the_end_that_lives_here() {
            let idx = index();
            const EXTERNAL: [u8; 4] = [192, 0, 2, 1];
            let with = |src, dst, reporter: &str| proto::Flow {
                reporter: reporter.into(),
                ..record(src, 40000, dst, 8080)
            };
            let sides = |recs: &[proto::Flow]| -> Vec<String> {
                recs.iter().map(|r| r.reporter.clone()).collect()
            };
            // On the pods' node: the source's end lives here (first), else the destination's.
            let mut recs = [
                with(CLIENT, BACKEND, "DEST"),
                with(EXTERNAL, BACKEND, "SRC"),
                with(BACKEND, EXTERNAL, "DEST"),
                with(EXTERNAL, EXTERNAL, "DEST"),
            ];
            enrich(&mut recs, &idx, "n1");
            assert_eq!(sides(&recs), ["SRC", "DEST", "SRC", "DEST"]);
            // On another node no end lives: the observation point's side stays.
            let mut recs = [with(CLIENT, BACKEND, "DEST"), with(CLIENT, BACKEND, "SRC")];
            enrich(&mut recs, &idx, "n2");
            assert_eq!(sides(&recs), ["DEST", "SRC"]);
        }

        #[test]
        fn untranslated_flows_name_the_services_selecting_the_pod_on_its_port() {
            let idx = index();
            let mut recs = [
                record(CLIENT, 40000, BACKEND, 8080),
                record(BACKEND, 8080, CLIENT, 40000),
                record(CLIENT, 40000, BACKEND, 9090),
            ];
            let stats = enrich(&mut recs, &idx, "n1");
            assert_eq!(services(recs[0].dst.as_ref()), ["shop/web:http:80"]);
            assert_eq!(services(recs[1].src.as_ref()), ["shop/web:http:80"]);
            assert!(services(recs[2].dst.as_ref()).is_empty());
            assert!(
                services(recs[0].src.as_ref()).is_empty(),
                "the client backs nothing"
            );
            assert_eq!(stats, EnrichStats::default());
        }
    }
}
