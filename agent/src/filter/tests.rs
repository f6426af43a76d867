//! Tests of the flow filters: addresses and prefixes, ports, metadata, Services, flags.
use std::net::Ipv6Addr;

use super::*;

fn flow(src: &[u8], dst: &[u8], sport: u32, dport: u32, protocol: u32) -> proto::Flow {
    proto::Flow {
        src_ip: src.to_vec(),
        dst_ip: dst.to_vec(),
        src_port: sport,
        dst_port: dport,
        protocol,
        interfaces: vec!["veth1".into(), "eth0".into()],
        ..Default::default()
    }
}

fn v6(text: &str) -> Vec<u8> {
    text.parse::<Ipv6Addr>().unwrap().octets().to_vec()
}

fn compile(filter: proto::FlowFilter) -> CompiledFilter {
    CompiledFilter::new(&filter).unwrap()
}

fn ips(field: &str, values: &[&str]) -> CompiledFilter {
    let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let mut filter = proto::FlowFilter::default();
    match field {
        "ip" => filter.ip = values,
        "src_ip" => filter.src_ip = values,
        "dst_ip" => filter.dst_ip = values,
        _ => unreachable!(),
    }
    compile(filter)
}

const A: [u8; 4] = [10, 1, 0, 5];
const B: [u8; 4] = [10, 2, 0, 9];

#[test]
fn empty_filter_matches_everything() {
    let filter = compile(proto::FlowFilter::default());
    assert!(filter.is_empty());
    assert!(filter.matches_flow(&flow(&A, &B, 1, 2, 6)));
    assert!(filter.matches_flow(&proto::Flow::default()));
    assert!(!ips("ip", &["10.0.0.0/8"]).is_empty());
}

#[test]
fn ip_matches_either_end() {
    let filter = ips("ip", &["10.1.0.5"]);
    assert!(filter.matches_flow(&flow(&A, &B, 1, 2, 6)));
    assert!(filter.matches_flow(&flow(&B, &A, 1, 2, 6)));
    assert!(!filter.matches_flow(&flow(&B, &[10, 1, 0, 6], 1, 2, 6)));
}

#[test]
fn src_and_dst_ip_match_their_end_only() {
    let src = ips("src_ip", &["10.1.0.5"]);
    assert!(src.matches_flow(&flow(&A, &B, 1, 2, 6)));
    assert!(!src.matches_flow(&flow(&B, &A, 1, 2, 6)));
    let dst = ips("dst_ip", &["10.1.0.5"]);
    assert!(!dst.matches_flow(&flow(&A, &B, 1, 2, 6)));
    assert!(dst.matches_flow(&flow(&B, &A, 1, 2, 6)));
}

#[test]
fn values_within_a_field_are_ored() {
    let filter = ips("src_ip", &["192.168.0.1", "10.2.0.0/16"]);
    assert!(filter.matches_flow(&flow(&B, &A, 1, 2, 6)));
    assert!(filter.matches_flow(&flow(&[192, 168, 0, 1], &A, 1, 2, 6)));
    assert!(!filter.matches_flow(&flow(&A, &B, 1, 2, 6)));
}

#[test]
fn fields_are_anded() {
    let filter = compile(proto::FlowFilter {
        src_ip: vec!["10.1.0.0/16".into()],
        dst_port: vec![80],
        protocol: vec![6],
        ..Default::default()
    });
    assert!(filter.matches_flow(&flow(&A, &B, 40000, 80, 6)));
    assert!(!filter.matches_flow(&flow(&A, &B, 40000, 80, 17)));
    assert!(!filter.matches_flow(&flow(&A, &B, 40000, 443, 6)));
    assert!(!filter.matches_flow(&flow(&B, &A, 40000, 80, 6)));
}

#[test]
fn cidr_v4_edges() {
    // /24 boundaries.
    let filter = ips("ip", &["10.1.0.0/24"]);
    assert!(filter.matches_flow(&flow(&[10, 1, 0, 0], &[1, 1, 1, 1], 0, 0, 6)));
    assert!(filter.matches_flow(&flow(&[10, 1, 0, 255], &[1, 1, 1, 1], 0, 0, 6)));
    assert!(!filter.matches_flow(&flow(&[10, 1, 1, 0], &[1, 1, 1, 1], 0, 0, 6)));
    assert!(!filter.matches_flow(&flow(&[10, 0, 255, 255], &[1, 1, 1, 1], 0, 0, 6)));
    // Host bits are ignored.
    assert_eq!(ips("ip", &["10.1.0.77/24"]), filter);
    // /0 matches every IPv4 address, and no IPv6 one.
    let all = ips("ip", &["0.0.0.0/0"]);
    assert!(all.matches_flow(&flow(&[255, 255, 255, 255], &[0, 0, 0, 0], 0, 0, 6)));
    assert!(!all.matches_flow(&flow(&v6("::1"), &v6("::2"), 0, 0, 6)));
    // /32 is the address itself; /31 its pair.
    assert_eq!(ips("ip", &["10.1.0.5/32"]), ips("ip", &["10.1.0.5"]));
    let pair = ips("src_ip", &["10.1.0.4/31"]);
    assert!(pair.matches_flow(&flow(&[10, 1, 0, 4], &B, 0, 0, 6)));
    assert!(pair.matches_flow(&flow(&[10, 1, 0, 5], &B, 0, 0, 6)));
    assert!(!pair.matches_flow(&flow(&[10, 1, 0, 6], &B, 0, 0, 6)));
    // Odd prefix length.
    let odd = ips("src_ip", &["10.128.0.0/9"]);
    assert!(odd.matches_flow(&flow(&[10, 255, 1, 1], &B, 0, 0, 6)));
    assert!(!odd.matches_flow(&flow(&[10, 127, 255, 255], &B, 0, 0, 6)));
}

#[test]
fn cidr_v6_edges() {
    let filter = ips("ip", &["fd00:10::/64"]);
    assert!(filter.matches_flow(&flow(&v6("fd00:10::1"), &v6("fd00:99::1"), 0, 0, 6)));
    assert!(filter.matches_flow(&flow(
        &v6("fd00:10::ffff:ffff:ffff:ffff"),
        &v6("::1"),
        0,
        0,
        6
    )));
    assert!(!filter.matches_flow(&flow(&v6("fd00:10:0:1::"), &v6("::1"), 0, 0, 6)));
    // IPv6 filters never match IPv4 flows.
    assert!(!ips("ip", &["::/0"]).matches_flow(&flow(&A, &B, 0, 0, 6)));
    assert!(ips("ip", &["::/0"]).matches_flow(&flow(&v6("::"), &v6("::"), 0, 0, 6)));
    // /128 and /127.
    assert_eq!(ips("ip", &["fd00::5/128"]), ips("ip", &["fd00::5"]));
    let pair = ips("dst_ip", &["fd00::4/127"]);
    assert!(pair.matches_flow(&flow(&A, &v6("fd00::5"), 0, 0, 6)));
    assert!(!pair.matches_flow(&flow(&A, &v6("fd00::6"), 0, 0, 6)));
    // Host bits ignored.
    assert_eq!(ips("ip", &["fd00:10::abcd/64"]), filter);
}

#[test]
fn ipv4_does_not_match_ipv4_mapped_ipv6() {
    let mapped = v6("::ffff:10.1.0.5");
    assert!(!ips("ip", &["10.1.0.5"]).matches_flow(&flow(&mapped, &mapped, 0, 0, 6)));
    assert!(!ips("ip", &["10.0.0.0/8"]).matches_flow(&flow(&mapped, &mapped, 0, 0, 6)));
    assert!(ips("ip", &["::ffff:10.1.0.5"]).matches_flow(&flow(&mapped, &mapped, 0, 0, 6)));
    assert!(ips("ip", &["::ffff:0:0/96"]).matches_flow(&flow(&mapped, &mapped, 0, 0, 6)));
    // And the other way round.
    assert!(!ips("ip", &["::ffff:10.1.0.5"]).matches_flow(&flow(&A, &A, 0, 0, 6)));
}

#[test]
fn malformed_flow_addresses_never_match_ip_filters() {
    let filter = ips("ip", &["0.0.0.0/0", "::/0"]);
    assert!(!filter.matches_flow(&flow(&[], &[1, 2, 3], 0, 0, 6)));
    assert!(compile(proto::FlowFilter::default()).matches_flow(&flow(&[], &[], 0, 0, 6)));
}

#[test]
fn ports() {
    let port = compile(proto::FlowFilter {
        port: vec![53, 80],
        ..Default::default()
    });
    assert!(port.matches_flow(&flow(&A, &B, 53, 40000, 17)));
    assert!(port.matches_flow(&flow(&A, &B, 40000, 80, 6)));
    assert!(!port.matches_flow(&flow(&A, &B, 40000, 443, 6)));
    let src = compile(proto::FlowFilter {
        src_port: vec![53],
        ..Default::default()
    });
    assert!(src.matches_flow(&flow(&A, &B, 53, 1, 17)));
    assert!(!src.matches_flow(&flow(&A, &B, 1, 53, 17)));
    let dst = compile(proto::FlowFilter {
        dst_port: vec![53],
        ..Default::default()
    });
    assert!(!dst.matches_flow(&flow(&A, &B, 53, 1, 17)));
    assert!(dst.matches_flow(&flow(&A, &B, 1, 53, 17)));
    // Port 0 (unknown: fragments, portless protocols) can be asked for explicitly.
    let zero = compile(proto::FlowFilter {
        dst_port: vec![0],
        ..Default::default()
    });
    assert!(zero.matches_flow(&flow(&A, &B, 0, 0, 47)));
    // ICMP type 8 (echo request) code 0.
    let icmp = compile(proto::FlowFilter {
        src_port: vec![8],
        protocol: vec![1],
        ..Default::default()
    });
    assert!(icmp.matches_flow(&flow(&A, &B, 8, 0, 1)));
    assert!(!icmp.matches_flow(&flow(&A, &B, 0, 0, 1)));
}

#[test]
fn protocol() {
    let filter = compile(proto::FlowFilter {
        protocol: vec![17, 132],
        ..Default::default()
    });
    assert!(filter.matches_flow(&flow(&A, &B, 1, 2, 17)));
    assert!(filter.matches_flow(&flow(&A, &B, 1, 2, 132)));
    assert!(!filter.matches_flow(&flow(&A, &B, 1, 2, 6)));
}

#[test]
fn interface_matches_any_of_the_flow() {
    let filter = compile(proto::FlowFilter {
        interface: vec!["eth0".into(), "cilium_host".into()],
        ..Default::default()
    });
    // "eth0" is the flow's second interface.
    assert!(filter.matches_flow(&flow(&A, &B, 1, 2, 6)));
    let other = compile(proto::FlowFilter {
        interface: vec!["veth9".into()],
        ..Default::default()
    });
    assert!(!other.matches_flow(&flow(&A, &B, 1, 2, 6)));
    // Exact names, no prefix matching.
    let prefix = compile(proto::FlowFilter {
        interface: vec!["veth".into()],
        ..Default::default()
    });
    assert!(!prefix.matches_flow(&flow(&A, &B, 1, 2, 6)));
}

#[test]
fn loss_records_always_pass() {
    let filter = ips("ip", &["192.0.2.1"]);
    let loss = proto::FlowEvent {
        event: Some(Event::Loss(proto::LossRecord::default())),
    };
    assert!(filter.matches_event(&loss));
    let flow_event = proto::FlowEvent {
        event: Some(Event::Flow(flow(&A, &B, 1, 2, 6))),
    };
    assert!(!filter.matches_event(&flow_event));
    assert!(!filter.matches_event(&proto::FlowEvent::default()));
}

#[test]
fn invalid_filters_are_rejected_with_readable_errors() {
    let err = |filter: proto::FlowFilter| CompiledFilter::new(&filter).unwrap_err().to_string();
    assert_eq!(
        err(proto::FlowFilter {
            ip: vec!["10.1.0.300".into()],
            ..Default::default()
        }),
        "invalid ip filter \"10.1.0.300\": expected an IP address or a CIDR prefix"
    );
    assert_eq!(
        err(proto::FlowFilter {
            src_ip: vec!["10.0.0.0/33".into()],
            ..Default::default()
        }),
        "invalid src_ip filter \"10.0.0.0/33\": the prefix length must be a number from 0 to 32"
    );
    assert_eq!(
        err(proto::FlowFilter {
            dst_ip: vec!["fd00::/129".into()],
            ..Default::default()
        }),
        "invalid dst_ip filter \"fd00::/129\": the prefix length must be a number from 0 to 128"
    );
    for bad in ["10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/x", "", "host.example"] {
        assert!(
            CompiledFilter::new(&proto::FlowFilter {
                ip: vec![bad.into()],
                ..Default::default()
            })
            .is_err(),
            "{bad:?} accepted"
        );
    }
    assert_eq!(
        err(proto::FlowFilter {
            dst_port: vec![65536],
            ..Default::default()
        }),
        "invalid dst_port filter 65536: ports range from 0 to 65535"
    );
    assert_eq!(
        err(proto::FlowFilter {
            protocol: vec![256],
            ..Default::default()
        }),
        "invalid protocol filter 256: IP protocol numbers range from 0 to 255"
    );
    assert_eq!(
        err(proto::FlowFilter {
            interface: vec![String::new()],
            ..Default::default()
        }),
        "invalid interface filter: the interface name is empty"
    );
    // Boundaries that are valid.
    compile(proto::FlowFilter {
        ip: vec!["0.0.0.0/0".into(), "::/0".into(), " 10.0.0.1 ".into()],
        port: vec![0, 65535],
        protocol: vec![0, 255],
        ..Default::default()
    });
}

fn with_endpoints(src: proto::Endpoint, dst: proto::Endpoint) -> proto::Flow {
    proto::Flow {
        src: Some(src),
        dst: Some(dst),
        ..Default::default()
    }
}

fn ep(ns: &str, pod: &str, kind: &str, workload: &str, labels: &[(&str, &str)]) -> proto::Endpoint {
    proto::Endpoint {
        kind: "pod".into(),
        namespace: ns.into(),
        pod: pod.into(),
        workload_kind: kind.into(),
        workload: workload.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn compiled(f: proto::FlowFilter) -> CompiledFilter {
    CompiledFilter::new(&f).unwrap()
}

#[test]
fn metadata_filters_match_either_endpoint() {
    let f = with_endpoints(
        ep(
            "shop",
            "frontend-7d9f",
            "Deployment",
            "frontend",
            &[("app", "frontend")],
        ),
        ep(
            "payments",
            "api-5c4b",
            "Deployment",
            "api",
            &[("app", "api"), ("tier", "be")],
        ),
    );
    let ns = |v: &[&str]| proto::FlowFilter {
        namespace: v.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert!(compiled(ns(&["shop"])).matches_flow(&f));
    assert!(compiled(ns(&["payments"])).matches_flow(&f));
    assert!(!compiled(ns(&["kube-system"])).matches_flow(&f));

    let pod = |v: &str| proto::FlowFilter {
        pod: vec![v.into()],
        ..Default::default()
    };
    assert!(compiled(pod("api-5c4b")).matches_flow(&f));
    assert!(compiled(pod("payments/api-5c4b")).matches_flow(&f));
    assert!(!compiled(pod("shop/api-5c4b")).matches_flow(&f));

    let label = |v: &str| proto::FlowFilter {
        label: vec![v.into()],
        ..Default::default()
    };
    assert!(compiled(label("app=frontend")).matches_flow(&f));
    assert!(compiled(label("tier")).matches_flow(&f));
    assert!(!compiled(label("app=db")).matches_flow(&f));

    let wl = |v: &str| proto::FlowFilter {
        workload: vec![v.into()],
        ..Default::default()
    };
    assert!(compiled(wl("frontend")).matches_flow(&f));
    assert!(compiled(wl("deployment/api")).matches_flow(&f));
    assert!(!compiled(wl("StatefulSet/api")).matches_flow(&f));

    // AND across fields.
    let both = proto::FlowFilter {
        namespace: vec!["shop".into()],
        label: vec!["app=db".into()],
        ..Default::default()
    };
    assert!(!compiled(both).matches_flow(&f));
}

#[test]
fn service_filters_match_the_end_reached_through_the_service() {
    let svc = |ns: &str, name: &str| proto::ServiceRef {
        namespace: ns.into(),
        name: name.into(),
        port_name: "http".into(),
        port: 80,
    };
    let client = proto::Endpoint {
        kind: "pod".into(),
        namespace: "shop".into(),
        pod: "client".into(),
        ..Default::default()
    };
    let backend = proto::Endpoint {
        services: vec![svc("shop", "web")],
        ..client.clone()
    };
    let request = proto::Flow {
        src: Some(client.clone()),
        dst: Some(backend.clone()),
        ..Default::default()
    };
    let reply = proto::Flow {
        src: Some(backend),
        dst: Some(client.clone()),
        ..Default::default()
    };
    // An untranslated record to the ClusterIP itself.
    let cluster_ip = proto::Flow {
        src: Some(client),
        dst: Some(proto::Endpoint {
            kind: "service".into(),
            namespace: "shop".into(),
            service: "shop/web".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let f = |field: &str, v: &str| {
        let mut filter = proto::FlowFilter::default();
        match field {
            "service" => filter.service = vec![v.into()],
            "to" => filter.to_service = vec![v.into()],
            _ => filter.from_service = vec![v.into()],
        }
        compiled(filter)
    };
    for flow in [&request, &reply, &cluster_ip] {
        assert!(f("service", "web").matches_flow(flow));
        assert!(f("service", "shop/web").matches_flow(flow));
        assert!(!f("service", "other/web").matches_flow(flow));
        assert!(!f("service", "db").matches_flow(flow));
    }
    assert!(f("to", "web").matches_flow(&request) && !f("from", "web").matches_flow(&request));
    assert!(f("from", "shop/web").matches_flow(&reply) && !f("to", "web").matches_flow(&reply));
    assert!(f("to", "web").matches_flow(&cluster_ip));
    assert!(!f("service", "web").matches_flow(&proto::Flow::default()));
}

#[test]
fn metadata_filters_never_match_unknown_endpoints() {
    let f = proto::Flow::default();
    let flt = proto::FlowFilter {
        namespace: vec!["shop".into()],
        ..Default::default()
    };
    assert!(!compiled(flt).matches_flow(&f));
    let empty_ns = with_endpoints(proto::Endpoint::default(), proto::Endpoint::default());
    let flt = proto::FlowFilter {
        workload: vec!["x".into()],
        ..Default::default()
    };
    assert!(!compiled(flt).matches_flow(&empty_ns));
}

#[test]
fn malformed_metadata_filters_are_rejected() {
    for f in [
        proto::FlowFilter {
            namespace: vec![String::new()],
            ..Default::default()
        },
        proto::FlowFilter {
            pod: vec!["ns/".into()],
            ..Default::default()
        },
        proto::FlowFilter {
            label: vec!["=v".into()],
            ..Default::default()
        },
        proto::FlowFilter {
            workload: vec!["/x".into()],
            ..Default::default()
        },
        proto::FlowFilter {
            pod: vec!["a/b/c".into()],
            ..Default::default()
        },
        proto::FlowFilter {
            to_service: vec!["ns/svc/x".into()],
            ..Default::default()
        },
        proto::FlowFilter {
            service: vec![String::new()],
            ..Default::default()
        },
    ] {
        assert!(matches!(
            CompiledFilter::new(&f),
            Err(FilterError::InvalidMetadata { .. })
        ));
    }
}

#[test]
fn encrypted_and_plaintext_filters() {
    let enc = proto::Flow {
        encrypted: true,
        inter_node: true,
        ..Default::default()
    };
    let plain = proto::Flow {
        inter_node: true,
        plaintext_inter_node: true,
        ..Default::default()
    };
    let local = proto::Flow::default();
    let e = compiled(proto::FlowFilter {
        encrypted: true,
        ..Default::default()
    });
    let p = compiled(proto::FlowFilter {
        plaintext: true,
        ..Default::default()
    });
    assert!(e.matches_flow(&enc) && !e.matches_flow(&plain) && !e.matches_flow(&local));
    assert!(p.matches_flow(&plain) && !p.matches_flow(&enc) && !p.matches_flow(&local));
}
